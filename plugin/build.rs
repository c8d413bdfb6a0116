//! Generates the containerd Snapshots service (server and client) and the Kubernetes CRI clients
//! (for `kcache doctor --canary`) and NRI's messages (the NRI plugin) from the vendored, unchanged protos in `proto/` (see
//! proto/README.md). protoc and the Google well-known types come from
//! protoc-bin-vendored: no protoc needs to be installed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let well_known = protoc_bin_vendored::include_path()?;
    std::env::set_var("PROTOC", protoc);
    let snapshots = "proto/github.com/containerd/containerd/api/services/snapshots/v1/snapshots.proto";
    println!("cargo:rerun-if-changed=proto");
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_protos(
            &[std::path::PathBuf::from(snapshots)],
            &[std::path::PathBuf::from("proto"), well_known.clone()],
        )?;
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        .compile_protos(
            &[std::path::PathBuf::from(
                "proto/k8s.io/cri-api/pkg/apis/runtime/v1/api.proto",
            )],
            &[std::path::PathBuf::from("proto"), well_known.clone()],
        )?;
    // NRI's messages only: kcache speaks ttrpc over NRI's multiplexed socket itself
    // (src/nri), so no gRPC service code.
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(false)
        .compile_protos(
            &[std::path::PathBuf::from(
                "proto/github.com/containerd/nri/pkg/api/api.proto",
            )],
            &[std::path::PathBuf::from("proto"), well_known],
        )?;
    Ok(())
}

//! Generates the CRI RuntimeService and ImageService clients from the vendored, unchanged
//! `api.proto` (kept in plugin/proto, see plugin/proto/README.md). protoc comes from protoc-bin-vendored: no protoc needs to be
//! installed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let well_known = protoc_bin_vendored::include_path()?;
    std::env::set_var("PROTOC", protoc);
    println!("cargo:rerun-if-changed=../plugin/proto/k8s.io");
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        .compile_protos(
            &[std::path::PathBuf::from(
                "../plugin/proto/k8s.io/cri-api/pkg/apis/runtime/v1/api.proto",
            )],
            &[std::path::PathBuf::from("../plugin/proto"), well_known],
        )?;
    Ok(())
}

//! `kcache cache build --push` against a real docker-registry, read back through the cache
//! image reader; `kcache gpu` with a pinned inventory and without any GPU.

use std::process::Command;

use kcache_core::cache::{
    format::CacheImageMeta,
    meta::{Arch, Backend},
};
use kcache_tests::TestRegistry;

fn write_kernel(root: &std::path::Path, key: &str, name: &str, target: &str) {
    let dir = root.join(key);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join(format!("{name}.json")),
        format!(r#"{{"hash":"{key}","target":{target},"name":"{name}","num_warps":4,"num_stages":3}}"#),
    )
    .unwrap();
    std::fs::write(dir.join(format!("{name}.cubin")), vec![0x7f; 2048]).unwrap();
    std::fs::write(
        dir.join(format!("__grp__{name}.json")),
        format!(
            r#"{{"child_paths":{{"{name}.json":"{0}/{name}.json","{name}.cubin":"{0}/{name}.cubin"}}}}"#,
            dir.display()
        ),
    )
    .unwrap();
}

#[tokio::test]
async fn cache_build_push_round_trips_through_the_label_reader() {
    let reg = TestRegistry::start();
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("triton");
    write_kernel(
        &cache,
        "K4QWEXAMPLEKEY90",
        "add_kernel",
        r#"{"backend":"cuda","arch":90,"warp_size":32}"#,
    );
    write_kernel(
        &cache,
        "K4QWEXAMPLEKEY80",
        "add_kernel",
        r#"{"backend":"cuda","arch":80,"warp_size":32}"#,
    );
    write_kernel(
        &cache,
        "K4QWEXAMPLEKEYHIP",
        "mul_kernel",
        r#"{"backend":"hip","arch":"gfx942","warp_size":64}"#,
    );
    let image = format!("{}/caches/triton:v1", reg.host());
    let out = Command::new(env!("CARGO_BIN_EXE_kcache"))
        .args(["cache", "build"])
        .arg(&cache)
        .args(["--image", &image, "--push", "--insecure-registry", &reg.host(), "--out"])
        .arg(work.path().join("out"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("3 kernels"));

    let client = reg.client();
    let r = reg.reference("caches/triton:v1");
    let m = client.manifest(&r, "v1").await.unwrap();
    let v: serde_json::Value = serde_json::from_slice(&m.bytes).unwrap();
    assert_eq!(
        v["layers"][0]["mediaType"],
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );
    let cd = kcache_core::digest::Digest::parse(v["config"]["digest"].as_str().unwrap()).unwrap();
    let config = client.blob(&r, &cd, 1 << 20).await.unwrap();
    let meta = CacheImageMeta::from_config_json(&config).unwrap();
    let targets = &meta.summary.targets;
    assert_eq!(targets.len(), 3, "{targets:?}");
    assert!(targets
        .iter()
        .any(|t| t.backend == Backend::Cuda && t.arch == Arch::Cuda(90)));
    assert!(targets
        .iter()
        .any(|t| t.backend == Backend::Cuda && t.arch == Arch::Cuda(80)));
    assert!(targets
        .iter()
        .any(|t| t.backend == Backend::Hip && t.arch == Arch::Gfx("gfx942".into()) && t.warp_size == 64));
    assert_eq!(meta.entry_count, Some(3));
    let ld = kcache_core::digest::Digest::parse(v["layers"][0]["digest"].as_str().unwrap()).unwrap();
    assert!(
        client.blob(&r, &ld, 1 << 20).await.is_ok(),
        "the layer blob is in the registry"
    );
}

#[test]
fn gpu_reports_a_pinned_inventory_and_degrades_cleanly_without_a_driver() {
    let dir = tempfile::tempdir().unwrap();
    let pinned = dir.path().join("gpus.json");
    std::fs::write(
        &pinned,
        r#"{"source":"file","gpus":[{"id":"GPU-0000","index":0,"name":"NVIDIA H200","backend":"cuda","arch":90,"warp_size":32,"driver_version":"570.86.15"}]}"#,
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kcache"))
        .args(["gpu", "--output", "json", "--pinned"])
        .arg(&pinned)
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["source"], "file");
    assert_eq!(v["gpus"][0]["arch"], 90);

    let empty = dir.path().join("no-kfd");
    let out = Command::new(env!("CARGO_BIN_EXE_kcache"))
        .args(["gpu", "--output", "json", "--kfd-root"])
        .arg(&empty)
        .output()
        .unwrap();
    assert!(out.status.success(), "no GPU is not an error");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    if v["source"] == "none" {
        assert!(
            v["notes"].as_array().is_some_and(|n| !n.is_empty()),
            "says why nothing was found"
        );
    }
}

//! E2E of the whole warm-start path through containerd's CRI, the way the kubelet drives it:
//!
//! 1. a Triton cache image is built (`kcache cache build --push`) and signed with kcache's signer;
//! 2. caches.d approves it for the pod's namespace; kcached (enforce policy, a pinned sm_90 GPU)
//!    pulls it by verified digest into its store and reports it ready;
//! 3. `kcache install containerd --write` produces the base runtime spec with kcache-hook and
//!    `pod_annotations = ["kcache.dev/*"]`; a real containerd 1.6 runs with it;
//! 4. a pod annotated `kcache.dev/cache: triton` runs a busybox container whose
//!    `TRITON_CACHE_DIR` holds the cache: checked from inside (files, `__grp__` child paths
//!    resolved for the mount path, a write lands in the per-container upper dir, not the store);
//!    a pod without the annotation gets nothing; a required unknown cache fails the start with
//!    kcache's message; removing the pod leaves no container dir and no ref.
//!
//! Needs root, containerd, ctr, runc, containerd-shim-runc-v2 and busybox-static; under
//! `CI=true` a missing one fails the test.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use kcache_core::{cache::store::CacheState, cosign::sign::sign_and_push};
use kcache_plugin::api::Client as Api;
use kcache_tests::{
    containerd::{prerequisites, Containerd, ContainerdConfig, CriConfig},
    cri::{self, pb, Cri},
    images,
    kcached::{Kcached, KcachedConfig},
    warm::{write_kernel, KEY, TARGET},
    TestRegistry,
};

/// The kcache-hook binary, built fresh (it is another package of the workspace).
fn hook_binary() -> PathBuf {
    kcache_tests::warm::build_hook(Path::new(env!("CARGO_BIN_EXE_kcached")))
}

fn kcache(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_kcache")).args(args).output().unwrap()
}

async fn wait_ready(api: &Api, kcached: &Kcached) -> String {
    let start = Instant::now();
    loop {
        if let Ok(state) = api.caches().await {
            if let Some(c) = state.caches.iter().find(|c| c.name == "triton") {
                if c.state == CacheState::Ready {
                    assert_eq!(c.compatible_gpus, vec!["GPU-h100".to_string()], "{c:?}");
                    return c.digest.clone().unwrap().to_string();
                }
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "kcached did not make the cache ready:\n{}",
            kcached.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_annotated_pod_starts_warm_with_the_signed_cache() {
    let test = "an_annotated_pod_starts_warm_with_the_signed_cache";
    let Some(programs) = prerequisites(test, &["runc", "containerd-shim-runc-v2"]) else {
        return;
    };
    if !images::have_busybox_static() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true: {test}: busybox-static missing"
        );
        eprintln!("skipping {test}: busybox-static is not installed");
        return;
    }
    let hook = hook_binary();
    let reg = TestRegistry::start();
    let host = reg.host();
    let tmp = tempfile::Builder::new()
        .prefix("kc-crihook")
        .tempdir_in("/tmp")
        .unwrap();
    let dir = tmp.path();
    let key = kcache_tests::warm::signed_e2e_images(&reg, dir).await;

    // 1. The cache image, built at one path (its __grp__ files name that path).
    let build = dir.join("build/.triton/cache");
    write_kernel(&build, KEY, "add_kernel");
    let cache_image = format!("{host}/caches/triton:v1");
    let out = Command::new(env!("CARGO_BIN_EXE_kcache"))
        .args(["cache", "build"])
        .arg(&build)
        .args(["--image", &cache_image, "--push", "--insecure-registry", &host, "--out"])
        .arg(dir.join("cache-image"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    sign_and_push(&reg.client(), &key, &reg.reference("caches/triton:v1"), false)
        .await
        .unwrap();

    // 2. Approved for the pod namespace; kcached pulls it.
    let caches_d = dir.join("caches.d");
    std::fs::create_dir_all(&caches_d).unwrap();
    std::fs::write(
        caches_d.join("triton.yaml"),
        format!("name: triton\nnamespace: kcache-e2e\nimage: {cache_image}\n"),
    )
    .unwrap();
    std::fs::write(
        dir.join("gpus.json"),
        r#"{"source":"file","gpus":[{"id":"GPU-h100","index":0,"name":"NVIDIA H100","backend":"cuda","arch":90,"warp_size":32}]}"#,
    )
    .unwrap();
    let kdir = dir.join("kcached");
    let kcached = Kcached::start(
        Path::new(env!("CARGO_BIN_EXE_kcached")),
        &kdir,
        KcachedConfig {
            policy: Some(dir.join("policy.yaml")),
            insecure: vec![host.clone()],
            args: vec![
                "--caches-dir".into(),
                caches_d.to_string_lossy().into_owned(),
                "--gpu-inventory".into(),
                dir.join("gpus.json").to_string_lossy().into_owned(),
            ],
            ..KcachedConfig::default()
        },
    );
    let api = Api::new(kcached.api_socket());
    let digest = wait_ready(&api, &kcached).await;
    let (store, run) = (kdir.join("caches"), kdir.join("run"));

    // 3. containerd's config and base runtime spec from `kcache install containerd`.
    let base_spec = dir.join("base-spec.json");
    let out = kcache(&[
        "install",
        "containerd",
        "--write",
        "--containerd-version",
        "1.6",
        "--config",
        dir.join("installed.toml").to_str().unwrap(),
        "--base-spec",
        base_spec.to_str().unwrap(),
        "--hook-path",
        hook.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let installed = std::fs::read_to_string(dir.join("installed.toml")).unwrap();
    assert!(
        installed.contains("pod_annotations = [\"kcache.dev/*\"]"),
        "{installed}"
    );
    // This test's store and run dir instead of /var/lib/kcache and /run/kcache.
    let mut spec: serde_json::Value = serde_json::from_slice(&std::fs::read(&base_spec).unwrap()).unwrap();
    for stage in ["prestart", "poststop"] {
        for h in spec["hooks"][stage].as_array_mut().unwrap() {
            if h["path"] == hook.to_str().unwrap() {
                h["args"] = serde_json::json!([
                    "kcache-hook",
                    "--store",
                    store,
                    "--run-dir",
                    run,
                    "--log-file",
                    dir.join("hook.log"),
                    stage
                ]);
            }
        }
    }
    std::fs::write(&base_spec, serde_json::to_vec_pretty(&spec).unwrap()).unwrap();
    let containerd = Containerd::start(
        &programs,
        &dir.join("containerd"),
        &ContainerdConfig {
            kcache_socket: Some(kcached.snapshotter_socket()),
            cri: Some(CriConfig {
                sandbox_image: format!("{host}/e2e/pause:1"),
                snapshotter: "kcache".into(),
                plain_http: vec![host.clone()],
                base_runtime_spec: Some(base_spec.clone()),
                pod_annotations: vec!["kcache.dev/*".into()],
                hook: Some(hook.clone()),
                ..CriConfig::default()
            }),
            ..ContainerdConfig::default()
        },
    );
    let criapi = Cri::ready(&containerd).await;
    let logs = dir.join("pods");
    let app = format!("{host}/e2e/app:1");
    criapi.pull(&app, None).await.unwrap();

    let pod = |name: &str, annotations: &[(&str, &str)]| {
        let mut p = cri::host_network_pod(name, &logs.join(name));
        p.annotations = annotations
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        std::fs::create_dir_all(logs.join(name)).unwrap();
        p
    };
    let container = |name: &str, script: &str| {
        let mut c = cri::container(name, &app, &["/bin/sh", "-c", script]);
        c.envs = vec![pb::KeyValue {
            key: "TRITON_CACHE_DIR".into(),
            value: TARGET.into(),
        }];
        c
    };

    // 4a. Opted in: the cache is there, relocated, and writable through the upper dir only.
    let warm = pod("warm", &[("kcache.dev/cache", "triton")]);
    let warm_id = criapi.run_pod(&warm).await.unwrap();
    let script = format!(
        "set -e; cat {TARGET}/{KEY}/add_kernel.json; \
         grp=$(cat {TARGET}/{KEY}/__grp__add_kernel.json); echo \"$grp\"; \
         for p in $(echo \"$grp\" | tr '\"' '\\n' | grep '^/'); do test -f \"$p\"; echo \"child ok $p\"; done; \
         echo fresh > {TARGET}/{KEY}/new_kernel.cubin; grep -q ' {TARGET} overlay ' /proc/mounts; echo WARM-OK; sleep 60"
    );
    let id = run_until(
        &criapi,
        &warm_id,
        &warm,
        container("app", &script),
        "WARM-OK",
        &logs.join("warm/app.log"),
    )
    .await;
    let log = std::fs::read_to_string(logs.join("warm/app.log")).unwrap();
    assert!(
        log.contains(&format!("child ok {TARGET}/{KEY}/add_kernel.cubin")),
        "{log}"
    );
    let hex = digest.trim_start_matches("sha256:");
    let container_dir = run.join("containers").join(&id);
    assert!(
        std::fs::read_dir(&container_dir).unwrap().count() > 0,
        "per-container dir {}",
        container_dir.display()
    );
    assert!(
        store.join(hex).join("refs").join(&id).is_file(),
        "the running container holds a ref"
    );
    assert!(
        !store
            .join(hex)
            .join(format!("tree/io.triton.cache/{KEY}/new_kernel.cubin"))
            .exists(),
        "a write must land in the upper dir, never in the verified cache"
    );
    assert_eq!(
        std::fs::read_to_string(container_dir.join(format!("upper/{KEY}/new_kernel.cubin"))).unwrap(),
        "fresh\n",
        "the container's write is in its own upper dir"
    );

    // 4b. Not opted in: nothing mounted.
    let cold = pod("cold", &[]);
    let cold_id = criapi.run_pod(&cold).await.unwrap();
    let script = format!("if grep -q ' {TARGET} ' /proc/mounts; then echo MOUNTED; else echo COLD-OK; fi; sleep 60");
    run_until(
        &criapi,
        &cold_id,
        &cold,
        container("app", &script),
        "COLD-OK",
        &logs.join("cold/app.log"),
    )
    .await;

    // 4c. Required but not approved: the start fails with kcache's message.
    let bad = pod(
        "bad",
        &[("kcache.dev/cache", "mistral"), ("kcache.dev/cache-required", "true")],
    );
    let bad_id = criapi.run_pod(&bad).await.unwrap();
    let err = criapi
        .start_container(&bad_id, &bad, container("app", "echo should-not-run"))
        .await
        .unwrap_err();
    for part in [
        "cache \"mistral\" (namespace kcache-e2e) is required (kcache.dev/cache-required) but cannot be mounted",
        "no approved cache",
    ] {
        assert!(err.message().contains(part), "{part:?} missing in {}", err.message());
    }

    // 5. Removing the pods: poststop unmounts, removes the container dir and the ref.
    for p in [&warm_id, &cold_id, &bad_id] {
        criapi.remove_pod(p).await.unwrap();
    }
    assert!(!container_dir.exists(), "{} left behind", container_dir.display());
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&run.join("containers").to_string_lossy().into_owned()),
        "no overlay of a container dir is left on the host:\n{mounts}"
    );
    assert_eq!(
        std::fs::read_dir(store.join(hex).join("refs"))
            .map(|d| d.count())
            .unwrap_or(0),
        0
    );
    drop(containerd);
}

async fn run_until(
    c: &Cri,
    pod: &str,
    sandbox: &pb::PodSandboxConfig,
    config: pb::ContainerConfig,
    expect: &str,
    log: &Path,
) -> String {
    let id = c.start_container(pod, sandbox, config).await.unwrap();
    let start = Instant::now();
    loop {
        let logged = std::fs::read_to_string(log).unwrap_or_default();
        if logged.contains(expect) {
            return id;
        }
        let status = c.container_status(&id).await.unwrap();
        assert!(
            start.elapsed() < Duration::from_secs(30) && status.state != pb::ContainerState::ContainerExited as i32,
            "container state {} ({}), log {logged:?}, expected {expect:?}",
            status.state,
            status.message
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

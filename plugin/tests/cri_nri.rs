//! E2E of the NRI route for kcache-hook on a real containerd 1.7 / 2.x (`KCACHE_CONTAINERD`;
//! containerd 1.6 has no NRI, so this suite runs in `make test-containerd-matrix`):
//!
//! 1. `kcache install containerd --nri` (the harness runs the same install code): no base runtime
//!    spec hook; 1.7's NRI turned on; NRI's socket in the test's dir;
//! 2. kcached starts *before* containerd, with `[nri] socket` pointing at that socket: it retries
//!    until containerd is up, then registers;
//! 3. a pod annotated `kcache.dev/cache: triton` gets the signed cache mounted by the hook NRI
//!    added (checked inside the container, and in the task bundle's config.json); a pod without
//!    the annotation gets no kcache hook at all in its OCI spec;
//! 4. removing the pods runs the NRI-added poststop: no container dir, no ref left;
//! 5. containerd restarted (NRI's socket gone, then back): kcached registers again by itself and
//!    opted-in pods are warm again (kcached itself is not stopped here: it is also the CRI
//!    snapshotter, without which no container starts at all).
//!
//! Needs root, containerd 1.7+ (scripts/debian-peer.sh), runc, the shim and busybox-static;
//! under `CI=true` a missing one fails the test.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use kcache_tests::{
    containerd::{prerequisites, selected_version, Containerd},
    cri::{self, pb, Cri},
    images,
    warm::{Bins, Warm, KEY, TARGET},
};

/// The kcache-hook binary, built fresh (it is another package of the workspace).
fn hook_binary() -> PathBuf {
    kcache_tests::warm::build_hook(Path::new(env!("CARGO_BIN_EXE_kcached")))
}

/// The OCI spec runc ran the container with (the task bundle's config.json).
fn bundle_spec(containerd: &Containerd, id: &str) -> serde_json::Value {
    let path = containerd
        .state()
        .join("io.containerd.runtime.v2.task/k8s.io")
        .join(id)
        .join("config.json");
    serde_json::from_slice(&std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

/// The hooks of `phase` in `spec` that run `path`.
fn hooks_running(spec: &serde_json::Value, phase: &str, path: &Path) -> Vec<serde_json::Value> {
    spec["hooks"][phase]
        .as_array()
        .map(|hs| {
            hs.iter()
                .filter(|h| h["path"].as_str() == path.to_str())
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

async fn run_until(
    c: &Cri,
    pod: &str,
    sandbox: &pb::PodSandboxConfig,
    config: pb::ContainerConfig,
    expect: &str,
    log: &Path,
    diag: &dyn Fn() -> String,
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
            "container state {} ({}), log {logged:?}, expected {expect:?}\n{}",
            status.state,
            status.message,
            diag()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nri_mounts_the_cache_only_into_opted_in_pods_and_never_blocks_a_start() {
    let test = "nri_mounts_the_cache_only_into_opted_in_pods_and_never_blocks_a_start";
    if selected_version() == "1.6" {
        // Not a missing prerequisite: NRI (v0.2+) starts with containerd 1.7. CI runs this
        // suite with KCACHE_CONTAINERD=1.7 and 2.1 (make test-containerd-matrix).
        eprintln!("{test}: containerd 1.6 has no NRI; runs with KCACHE_CONTAINERD=1.7 or 2.1");
        return;
    }
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
    let started = Instant::now();
    let tmp = tempfile::Builder::new().prefix("kc-crinri").tempdir_in("/tmp").unwrap();
    let dir = tmp.path();
    let cdir = dir.join("containerd");
    let nri_socket = Containerd::nri_socket_in(&cdir);
    let bins = Bins {
        kcache: env!("CARGO_BIN_EXE_kcache").into(),
        kcached: env!("CARGO_BIN_EXE_kcached").into(),
        hook: hook_binary(),
    };
    // 2. kcached first: NRI's socket does not exist yet.
    let warm = Warm::start(
        dir,
        &bins,
        &format!(
            "[nri]\nsocket = \"{}\"\nhook = \"{}\"\n",
            nri_socket.display(),
            dir.join("kcache-hook").display()
        ),
    )
    .await;
    assert!(!nri_socket.exists());
    // 1. containerd, kcache installed with --nri.
    let containerd = Containerd::start(&programs, &cdir, &warm.containerd_config(true, vec![]));
    let config = std::fs::read_to_string(containerd.config()).unwrap();
    assert!(!config.contains("base_runtime_spec"), "{config}");
    assert!(!cdir.join("base-spec.json").exists());
    warm.wait_nri_registered(1).await;

    let criapi = Cri::ready(&containerd).await;
    criapi.pull(&warm.app, None).await.unwrap();
    let logs = dir.join("pods");
    let pod = |name: &str, annotations: &[(&str, &str)]| {
        let mut p = cri::host_network_pod(name, &logs.join(name));
        p.annotations = annotations
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        std::fs::create_dir_all(logs.join(name)).unwrap();
        p
    };
    let app = warm.app.clone();
    let container = |name: &str, script: &str| {
        let mut c = cri::container(name, &app, &["/bin/sh", "-c", script]);
        c.envs = vec![pb::KeyValue {
            key: "TRITON_CACHE_DIR".into(),
            value: TARGET.into(),
        }];
        c
    };
    let warm_script = format!(
        "set -e; cat {TARGET}/{KEY}/add_kernel.json; grep -q ' {TARGET} overlay ' /proc/mounts; echo WARM-OK; sleep 60"
    );
    let cold_script =
        format!("if grep -q ' {TARGET} ' /proc/mounts; then echo MOUNTED; else echo COLD-OK; fi; sleep 60");
    let wrapper = warm.hook_wrapper.clone();
    let diag = || {
        format!(
            "hook.log:\n{}\nkcached:\n{}",
            std::fs::read_to_string(&warm.hook_log).unwrap_or_default(),
            warm.kcached.log()
        )
    };

    // 3a. Opted in: the cache is mounted, by the hooks NRI added.
    let w = pod("warm", &[("kcache.dev/cache", "triton")]);
    let w_id = criapi.run_pod(&w).await.unwrap();
    let id = run_until(
        &criapi,
        &w_id,
        &w,
        container("app", &warm_script),
        "WARM-OK",
        &logs.join("warm/app.log"),
        &diag,
    )
    .await;
    let spec = bundle_spec(&containerd, &id);
    for phase in ["prestart", "poststop"] {
        let hs = hooks_running(&spec, phase, &wrapper);
        assert_eq!(hs.len(), 1, "{phase}: {}", spec["hooks"]);
        assert_eq!(hs[0]["args"], serde_json::json!(["kcache-hook", phase]));
        assert_eq!(hs[0]["timeout"], 10);
    }
    assert_eq!(spec["annotations"]["kcache.dev/cache"], "triton");
    let hex = warm.digest.trim_start_matches("sha256:").to_owned();
    let container_dir = warm.run.join("containers").join(&id);
    assert!(container_dir.is_dir(), "{}", container_dir.display());
    assert!(warm.store.join(&hex).join("refs").join(&id).is_file());

    // 3b. Not opted in: no kcache hook in the spec at all (and no mount).
    let c = pod("cold", &[]);
    let c_id = criapi.run_pod(&c).await.unwrap();
    let cold_id = run_until(
        &criapi,
        &c_id,
        &c,
        container("app", &cold_script),
        "COLD-OK",
        &logs.join("cold/app.log"),
        &diag,
    )
    .await;
    let spec = bundle_spec(&containerd, &cold_id);
    for phase in ["prestart", "poststop"] {
        assert!(hooks_running(&spec, phase, &wrapper).is_empty(), "{}", spec["hooks"]);
    }
    assert!(
        spec["hooks"]
            .as_object()
            .is_none_or(|h| h.values().all(|l| l.as_array().is_none_or(Vec::is_empty))),
        "{}",
        spec["hooks"]
    );
    // The sandboxes (pause containers) never get it either.
    for sandbox in [&w_id, &c_id] {
        let spec = bundle_spec(&containerd, sandbox);
        assert!(
            hooks_running(&spec, "prestart", &wrapper).is_empty(),
            "{}",
            spec["hooks"]
        );
    }

    // 4. Removing the pods runs the NRI-added poststop: no container dir, no ref left.
    for p in [&w_id, &c_id] {
        criapi.remove_pod(p).await.unwrap();
    }
    let refs = |store: &Path| {
        std::fs::read_dir(store.join(&hex).join("refs"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    assert!(!container_dir.exists(), "{} left behind", container_dir.display());
    assert_eq!(refs(&warm.store), 0);
    let hook_log = std::fs::read_to_string(&warm.hook_log).unwrap_or_default();
    assert!(
        !hook_log.contains(&cold_id),
        "the cold container never ran the hook:\n{hook_log}"
    );

    // 5. containerd restarts (NRI's socket gone, then back): kcached reconnects by itself, and
    //    opted-in pods are warm again; nothing waits on the plugin meanwhile.
    let mut containerd = containerd;
    containerd.stop();
    let containerd = Containerd::start_on(&programs, &cdir, &containerd.config(), &[]);
    warm.wait_nri_registered(2).await;
    let criapi = Cri::ready(&containerd).await;
    let b = pod("back", &[("kcache.dev/cache", "triton")]);
    let b_id = criapi.run_pod(&b).await.unwrap();
    let back_id = run_until(
        &criapi,
        &b_id,
        &b,
        container("app", &warm_script),
        "WARM-OK",
        &logs.join("back/app.log"),
        &diag,
    )
    .await;
    assert_eq!(
        hooks_running(&bundle_spec(&containerd, &back_id), "prestart", &wrapper).len(),
        1
    );
    criapi.remove_pod(&b_id).await.unwrap();
    assert!(!warm.run.join("containers").join(&back_id).exists());
    assert_eq!(refs(&warm.store), 0);
    drop(containerd);
    eprintln!("{test}: containerd {} in {:?}", programs.version, started.elapsed());
}

//! A node ready to start pods warm, for the NRI tests and the hook benchmark: a loopback
//! registry with signed busybox pause/app images and a signed Triton cache image built by
//! `kcache cache build`; kcached (enforce policy, a pinned sm_90 GPU) with the cache approved for
//! namespace `kcache-e2e` and ready in its store; a kcache-hook wrapper that runs the hook on
//! this fixture's store and run dir (what `--store`/`--run-dir` would say on a node).
//!
//! The same steps as plugin/tests/cri_hook.rs, packaged so that more than one test (and
//! bench/run) can start from them.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use kcache_core::{cache::store::CacheState, cosign::sign::sign_and_push, signing::PrivateKey};

use crate::{
    containerd::{ContainerdConfig, CriConfig},
    images::Image,
    kcached::{Kcached, KcachedConfig},
    TestRegistry,
};

/// The Triton cache key the image holds.
pub const KEY: &str = "K4QWEXAMPLEKEY90";
/// Where the pods' `TRITON_CACHE_DIR` points (the hook mounts the cache there).
pub const TARGET: &str = "/cache/triton";

/// The binaries the fixture runs.
#[derive(Clone, Debug)]
pub struct Bins {
    /// The kcache CLI (`cache build`).
    pub kcache: PathBuf,
    /// kcached.
    pub kcached: PathBuf,
    /// kcache-hook.
    pub hook: PathBuf,
}

/// The running fixture.
pub struct Warm {
    /// The registry (kept alive).
    pub reg: TestRegistry,
    /// Its `127.0.0.1:PORT`.
    pub host: String,
    /// kcached.
    pub kcached: Kcached,
    /// The pause image.
    pub pause: String,
    /// The app image (busybox).
    pub app: String,
    /// kcached's cache store.
    pub store: PathBuf,
    /// kcached's run dir (per-container dirs).
    pub run: PathBuf,
    /// The hook's log.
    pub hook_log: PathBuf,
    /// A script that runs kcache-hook on this store and run dir with the stage it is given.
    pub hook_wrapper: PathBuf,
    /// The approved cache's digest.
    pub digest: String,
}

/// A fake compiled Triton kernel `name` under `root/key` (json, cubin, and the `__grp__` file
/// naming the children at this path).
pub fn write_kernel(root: &Path, key: &str, name: &str) {
    let dir = root.join(key);
    std::fs::create_dir_all(&dir).expect("kernel dir");
    std::fs::write(
        dir.join(format!("{name}.json")),
        format!(
            r#"{{"hash":"{key}","target":{{"backend":"cuda","arch":90,"warp_size":32}},"name":"{name}","num_warps":4,"num_stages":3}}"#
        ),
    )
    .expect("kernel json");
    std::fs::write(dir.join(format!("{name}.cubin")), vec![0x7f; 4096]).expect("cubin");
    std::fs::write(
        dir.join(format!("__grp__{name}.json")),
        format!(
            r#"{{"child_paths":{{"{name}.json":"{0}/{name}.json","{name}.cubin":"{0}/{name}.cubin"}}}}"#,
            dir.display()
        ),
    )
    .expect("grp");
}

/// The signed world the warm-start tests share: a new key (`dir/cosign.pub`), an enforce policy
/// trusting it for `{host}/e2e/*` and `{host}/caches/*` (`dir/policy.yaml`), and busybox pause
/// and app images pushed as `e2e/pause:1` and `e2e/app:1` and signed. Returns the key, to sign
/// the cache image with.
pub async fn signed_e2e_images(reg: &TestRegistry, dir: &Path) -> PrivateKey {
    let host = reg.host();
    let key = PrivateKey::generate_p256();
    std::fs::write(dir.join("cosign.pub"), key.public_key().to_pem()).expect("cosign.pub");
    std::fs::write(
        dir.join("policy.yaml"),
        format!(
            "mode: enforce\ndefault: deny\nrules:\n  - name: e2e\n    images: [\"{host}/e2e/*\", \"{host}/caches/*\"]\n    authorities:\n      - key: {{path: cosign.pub}}\n    transparencyLog: off\n"
        ),
    )
    .expect("policy");
    for (tag, marker) in [("e2e/pause:1", "pause"), ("e2e/app:1", "app")] {
        Image::busybox(marker, &["/bin/busybox", "sleep", "3600"])
            .push(reg, tag)
            .await;
        sign_and_push(&reg.client(), &key, &reg.reference(tag), false)
            .await
            .expect("sign");
    }
    key
}

/// Builds kcache-hook (another package of the workspace) and returns it: it lands beside
/// `kcached`, the test's `CARGO_BIN_EXE_kcached`, in the same target dir.
pub fn build_hook(kcached: &Path) -> PathBuf {
    let out = Command::new(env!("CARGO"))
        .args(["build", "--locked", "-p", "kcache-hook", "--bin", "kcache-hook"])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()
        .expect("cargo build kcache-hook");
    assert!(
        out.status.success(),
        "building kcache-hook: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let hook = kcached.with_file_name("kcache-hook");
    assert!(hook.is_file(), "{} not built", hook.display());
    hook
}

impl Warm {
    /// containerd for this fixture: kcached as the CRI snapshotter, the pause image, the
    /// plain-HTTP registry and the hook wrapper; the NRI route on or off, and the pod
    /// annotations CRI passes to the OCI spec (what the base-spec route needs).
    pub fn containerd_config(&self, nri: bool, pod_annotations: Vec<String>) -> ContainerdConfig {
        ContainerdConfig {
            kcache_socket: Some(self.kcached.snapshotter_socket()),
            cri: Some(CriConfig {
                sandbox_image: self.pause.clone(),
                snapshotter: "kcache".into(),
                plain_http: vec![self.host.clone()],
                hook: Some(self.hook_wrapper.clone()),
                pod_annotations,
                nri,
                ..CriConfig::default()
            }),
            ..ContainerdConfig::default()
        }
    }

    /// Starts everything under `dir`; kcached's config.toml gets `kcached_toml`.
    pub async fn start(dir: &Path, bins: &Bins, kcached_toml: &str) -> Self {
        let reg = TestRegistry::start();
        let host = reg.host();
        let key = signed_e2e_images(&reg, dir).await;
        let build = dir.join("build/.triton/cache");
        write_kernel(&build, KEY, "add_kernel");
        let cache_image = format!("{host}/caches/triton:v1");
        let out = Command::new(&bins.kcache)
            .args(["cache", "build"])
            .arg(&build)
            .args(["--image", &cache_image, "--push", "--insecure-registry", &host, "--out"])
            .arg(dir.join("cache-image"))
            .output()
            .expect("kcache cache build");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        sign_and_push(&reg.client(), &key, &reg.reference("caches/triton:v1"), false)
            .await
            .expect("sign the cache");
        let caches_d = dir.join("caches.d");
        std::fs::create_dir_all(&caches_d).expect("caches.d");
        std::fs::write(
            caches_d.join("triton.yaml"),
            format!("name: triton\nnamespace: kcache-e2e\nimage: {cache_image}\n"),
        )
        .expect("caches.d entry");
        std::fs::write(
            dir.join("gpus.json"),
            r#"{"source":"file","gpus":[{"id":"GPU-h100","index":0,"name":"NVIDIA H100","backend":"cuda","arch":90,"warp_size":32}]}"#,
        )
        .expect("gpus.json");
        let kdir = dir.join("kcached");
        let (store, run, hook_log) = (kdir.join("caches"), kdir.join("run"), dir.join("hook.log"));
        let hook_wrapper = dir.join("kcache-hook");
        std::fs::write(
            &hook_wrapper,
            format!(
                "#!/bin/sh\nexec {} --store {} --run-dir {} --log-file {} \"$@\"\n",
                bins.hook.display(),
                store.display(),
                run.display(),
                hook_log.display()
            ),
        )
        .expect("hook wrapper");
        std::fs::set_permissions(&hook_wrapper, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let kcached = Kcached::start(
            &bins.kcached,
            &kdir,
            KcachedConfig {
                policy: Some(dir.join("policy.yaml")),
                insecure: vec![host.clone()],
                config_toml: kcached_toml.to_owned(),
                args: vec![
                    "--caches-dir".into(),
                    caches_d.to_string_lossy().into_owned(),
                    "--gpu-inventory".into(),
                    dir.join("gpus.json").to_string_lossy().into_owned(),
                ],
            },
        );
        let api = kcache_core::api::Client::new(kcached.api_socket());
        let start = Instant::now();
        let digest = loop {
            if let Ok(state) = api.caches().await {
                if let Some(c) = state.caches.iter().find(|c| c.name == "triton") {
                    if c.state == CacheState::Ready {
                        break c.digest.clone().expect("a ready cache has a digest").to_string();
                    }
                }
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "kcached did not make the cache ready:\n{}",
                kcached.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        Self {
            pause: format!("{host}/e2e/pause:1"),
            app: format!("{host}/e2e/app:1"),
            reg,
            host,
            kcached,
            store,
            run,
            hook_log,
            hook_wrapper,
            digest,
        }
    }

    /// Waits until kcached's log shows its `n`-th NRI registration.
    pub async fn wait_nri_registered(&self, n: usize) {
        let start = Instant::now();
        while self.kcached.log().matches("NRI: registered").count() < n {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "kcached did not register with NRI ({n}):\n{}",
                self.kcached.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

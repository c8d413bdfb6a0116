//! The cache manager and `kcache cache pull|ls|inspect|gc` against a real docker-registry:
//! cache images built from synthetic Triton caches (CUDA sm_90 and sm_80, HIP gfx942), signed
//! with kcache's own signer under a key policy.
//!
//! Covered: a signed cache pulls once (a second pull and a concurrent pull do no work); an
//! unsigned one is denied with image, digest and rule, leaving nothing in the store; a layer
//! the registry serves tampered is rejected before anything is visible (a same-length byte flip
//! in a plain-tar layer, which extracts cleanly and is caught only by the digest); kill -9
//! during extraction (the layer's download held half-way by the blob storage the registry
//! redirects to) leaves no entry and a later pull succeeds; reconcile writes state.json with
//! per-GPU compatibility and keeps the previous copy when a re-pull fails; GC honours refs/ and
//! approved digests; a tag moved to a new digest keeps the old copy while a container (a ref
//! written by the hook's own code) uses it; the CLI's exit codes and JSON.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use kcache_core::cache::refs::{self, ContainerRef};
use kcache_core::{
    cache::{
        approved::ApprovedCache,
        builder::{build_cache_layer, image_config_json, BuiltCache},
        extract::ExtractLimits,
        format::CacheKind,
        gc,
        manager::{self, CacheManager, PullError, PullOutcome},
        meta::GpuInventory,
        store::{CacheState, StoreLayout},
    },
    cosign::sign::{sign_and_push, OCI_MANIFEST},
    digest::Digest,
    policy::Policy,
    registry::RegistryError,
    signing::PrivateKey,
    verifier::Verifier,
};
use kcache_tests::{http_server::BlobStorage, TestRegistry};

const KEY_H100: &str = "QWJ3OZ3CR4HNZ6LOHG7LYCUUQYZFXAY6SY62SNYRVQHW3G4FOCLQ";
const KEY_A100: &str = "7CLRBQYZ4ZU6KQEBOGNPTWNT4HHLDPGUYOQXTRAEPSC5BQPWPUHA";
const KEY_MI300: &str = "CLGERUUZRLHT73J2VAUCCDR5ZG34VIZXGHFLZH6HGZRILMOKHGQQ";

fn cuda_meta(hash: &str, name: &str, arch: u32) -> String {
    format!(
        r#"{{"hash": "{hash}", "target": {{"backend": "cuda", "arch": {arch}, "warp_size": 32}}, "num_warps": 4, "num_ctas": 1, "num_stages": 3, "maxnreg": null, "cluster_dims": [1, 1, 1], "ptx_version": null, "enable_fp_fusion": true, "launch_cooperative_grid": false, "supported_fp8_dtypes": ["fp8e4b15", "fp8e4nv", "fp8e5"], "default_dot_input_precision": "tf32", "extern_libs": [["libdevice", "/usr/local/lib/python3.12/dist-packages/triton/backends/nvidia/lib/libdevice.10.bc"]], "debug": false, "backend_name": "cuda", "sanitize_overflow": true, "arch": "sm{arch}", "triton_version": "3.3.1", "shared": 0, "tmem_size": 0, "global_scratch_size": 0, "global_scratch_align": 1, "name": "{name}"}}"#
    )
}

fn hip_meta(hash: &str, name: &str) -> String {
    format!(
        r#"{{"hash": "{hash}", "target": {{"backend": "hip", "arch": "gfx942", "warp_size": 64}}, "num_warps": 4, "waves_per_eu": 1, "num_stages": 2, "num_ctas": 1, "extern_libs": [["ocml", "/opt/rocm/lib/ocml.bc"], ["ockl", "/opt/rocm/lib/ockl.bc"]], "cluster_dims": [1, 1, 1], "debug": false, "sanitize_overflow": true, "arch": "gfx942", "default_dot_input_precision": "ieee", "enable_fp_fusion": true, "matrix_instr_nonkdim": 0, "kpack": 1, "backend_name": "hip", "warp_size": 64, "shared": 0, "name": "{name}"}}"#
    )
}

/// One kernel as Triton writes it: the artifacts, the metadata JSON and the `__grp__` file
/// with absolute child paths. `binary`: the size of the cubin/hsaco.
fn kernel(root: &Path, key: &str, name: &str, meta: String, exts: &[&str], binary: usize, seed: u64) {
    let dir = root.join(key);
    std::fs::create_dir_all(&dir).unwrap();
    let mut children = serde_json::Map::new();
    for ext in exts {
        let file = format!("{name}.{ext}");
        let body = match *ext {
            "json" => meta.clone().into_bytes(),
            "cubin" | "hsaco" => noise(binary, seed),
            _ => format!("{ext} of {name}\n").into_bytes(),
        };
        std::fs::write(dir.join(&file), body).unwrap();
        children.insert(file.clone(), dir.join(&file).to_str().unwrap().into());
    }
    let grp = serde_json::json!({ "child_paths": children });
    std::fs::write(
        dir.join(format!("__grp__{name}.json")),
        serde_json::to_vec(&grp).unwrap(),
    )
    .unwrap();
}

/// Incompressible bytes (xorshift), so layer sizes are real.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

const CUDA_EXTS: &[&str] = &["ttir", "ttgir", "llir", "ptx", "cubin", "json"];
const HIP_EXTS: &[&str] = &["ttir", "ttgir", "llir", "amdgcn", "hsaco", "json"];

/// A cache with sm_90, sm_80 and gfx942 kernels.
fn all_targets(root: &Path) {
    kernel(
        root,
        KEY_H100,
        "matmul_kernel",
        cuda_meta("a1f3", "matmul_kernel", 90),
        CUDA_EXTS,
        4096,
        1,
    );
    kernel(
        root,
        KEY_A100,
        "add_kernel",
        cuda_meta("b2e4", "add_kernel", 80),
        CUDA_EXTS,
        4096,
        2,
    );
    kernel(
        root,
        KEY_MI300,
        "add_kernel",
        hip_meta("c3d5", "add_kernel"),
        HIP_EXTS,
        4096,
        3,
    );
}

/// A cache with one sm_90 kernel.
fn sm90_only(root: &Path, seed: u64) {
    kernel(
        root,
        KEY_H100,
        "matmul_kernel",
        cuda_meta("a1f3", "matmul_kernel", 90),
        CUDA_EXTS,
        4096,
        seed,
    );
}

fn gpus() -> GpuInventory {
    serde_json::from_value(serde_json::json!({
        "source": "file",
        "gpus": [
            {"id": "GPU-h100", "index": 0, "name": "NVIDIA H100 80GB HBM3", "backend": "cuda", "arch": 90, "warp_size": 32, "driver_version": "550.54.15"},
            {"id": "GPU-a100", "index": 1, "name": "NVIDIA A100-SXM4-80GB", "backend": "cuda", "arch": 80, "warp_size": 32, "driver_version": "550.54.15"},
            {"id": "amd-mi300", "index": 2, "name": "AMD Instinct MI300X", "backend": "hip", "arch": "gfx942", "warp_size": 64}
        ]
    }))
    .unwrap()
}

struct Env {
    reg: TestRegistry,
    dir: tempfile::TempDir,
    key: PrivateKey,
    policy: Policy,
}

struct Pushed {
    digest: Digest,
    built: BuiltCache,
    layer: Vec<u8>,
}

impl Env {
    fn new() -> Self {
        Self::with_registry(TestRegistry::start())
    }

    /// A registry that redirects blob GETs to a storage server the test controls (to hold a
    /// download part-way: [`BlobStorage::stall_next_get`]).
    fn with_blob_storage() -> (Self, BlobStorage) {
        let b = TestRegistry::builder();
        let storage = BlobStorage::start(&b.storage(), None);
        let reg = b.redirect_blobs(&storage.base_url()).start();
        (Self::with_registry(reg), storage)
    }

    fn with_registry(reg: TestRegistry) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let key = PrivateKey::generate_p256();
        std::fs::write(dir.path().join("cosign.pub"), key.public_key().to_pem()).unwrap();
        let policy_path = dir.path().join("policy.yaml");
        std::fs::write(
            &policy_path,
            format!(
                "mode: enforce\nrules:\n  - name: caches\n    images: [\"{}/caches/*\"]\n    authorities:\n      - key: {{path: cosign.pub}}\n    transparencyLog: off\n",
                reg.host()
            ),
        )
        .unwrap();
        let policy = Policy::load(&policy_path, None).unwrap();
        Self { reg, dir, key, policy }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn image(&self, repo_tag: &str) -> String {
        format!("{}/{repo_tag}", self.reg.host())
    }

    /// Builds the cache in `src` into an image and pushes it; `gzip: false` pushes the layer
    /// as a plain tar.
    async fn push(&self, repo_tag: &str, src: &Path, gzip: bool) -> Pushed {
        let mut gz = Vec::new();
        let built = build_cache_layer(src, CacheKind::Triton, &mut gz).unwrap();
        let (layer, media) = if gzip {
            (gz, "application/vnd.oci.image.layer.v1.tar+gzip")
        } else {
            let mut tar = Vec::new();
            std::io::Read::read_to_end(&mut flate2_free_gunzip(&gz), &mut tar).unwrap();
            (tar, "application/vnd.oci.image.layer.v1.tar")
        };
        let client = self.reg.client();
        let r = self.reg.reference(repo_tag);
        let layer_digest = client.push_blob(&r, &layer).await.unwrap();
        let config = image_config_json(&built);
        let config_digest = client.push_blob(&r, &config).await.unwrap();
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest.as_str(), "size": config.len()},
            "layers": [{"mediaType": media, "digest": layer_digest.as_str(), "size": layer.len()}],
        })
        .to_string();
        let digest = client
            .push_manifest(&r, &r.reference(), OCI_MANIFEST, manifest.as_bytes())
            .await
            .unwrap();
        Pushed { digest, built, layer }
    }

    async fn sign(&self, repo_tag: &str) {
        sign_and_push(&self.reg.client(), &self.key, &self.reg.reference(repo_tag), false)
            .await
            .unwrap();
    }

    fn manager(&self, store: &str) -> CacheManager {
        let client = self.reg.client();
        let verifier = Arc::new(Verifier::new(client.clone()));
        CacheManager::new(
            StoreLayout::new(self.path(store), self.path("run")),
            client,
            verifier,
            ExtractLimits::default(),
        )
    }

    fn kcache(&self, args: &[&str]) -> Output {
        self.kcache_cmd(args).output().unwrap()
    }

    fn kcache_cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_kcache"));
        c.args(args)
            .args(["--store", self.path("store").to_str().unwrap()])
            .current_dir(self.dir.path());
        c
    }

    fn registry_args(&self) -> Vec<String> {
        vec![
            "--policy".into(),
            self.path("policy.yaml").to_str().unwrap().into(),
            "--insecure-registry".into(),
            self.reg.host(),
        ]
    }
}

/// gunzip with `gzip -dc` (the plugin's tests do not link flate2).
fn flate2_free_gunzip(gz: &[u8]) -> std::io::Cursor<Vec<u8>> {
    use std::io::Write;
    let mut child = Command::new("gzip")
        .arg("-dc")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("gzip");
    let mut stdin = child.stdin.take().unwrap();
    let data = gz.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&data));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(out.status.success());
    std::io::Cursor::new(out.stdout)
}

/// Everything under `root` whose name is not a lock file, relative.
/// Regular files under `dir`, at any depth.
fn files_under(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => files_under(&e.path()),
            Ok(t) if t.is_file() => 1,
            _ => 0,
        })
        .sum()
}

fn visible(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(root) else { return out };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(".lock") {
            continue;
        }
        out.push(name.clone());
        if e.file_type().unwrap().is_dir() {
            out.extend(visible(&e.path()).into_iter().map(|n| format!("{name}/{n}")));
        }
    }
    out.sort();
    out
}

const NO_PROGRESS: &(dyn Fn(manager::Progress) + Sync) = &|_| {};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_cache_pulls_once_and_unsigned_is_denied() {
    let env = Env::new();
    let src = env.path("triton-cache");
    all_targets(&src);
    let pushed = env.push("caches/llama:v1", &src, true).await;
    env.sign("caches/llama:v1").await;
    let image = env.image("caches/llama:v1");

    let mgr = env.manager("store");
    let progress = std::sync::Mutex::new(Vec::new());
    let record_progress = |p: manager::Progress| progress.lock().unwrap().push(p.phase);
    let (record, outcome) = mgr
        .pull_with_outcome(&env.policy, 7, &image, &record_progress)
        .await
        .unwrap();
    assert_eq!(outcome, PullOutcome::Extracted);
    assert_eq!(record.digest, pushed.digest);
    assert_eq!(record.image, format!("{}@{}", env.image("caches/llama"), pushed.digest));
    assert_eq!(record.targets.len(), 3);
    assert_eq!(record.verification.rule, "caches");
    assert_eq!(record.verification.decision, "verified");
    assert!(record
        .verification
        .signer
        .as_deref()
        .unwrap()
        .starts_with("key SHA256:"));
    assert_eq!(record.verification.policy_generation, 7);
    assert!(
        record.bytes >= pushed.built.size_bytes,
        "{record:?} {}",
        pushed.built.size_bytes
    );
    assert_eq!(record.build_cache_root.as_deref(), Some(src.to_str().unwrap()));
    let phases = progress.lock().unwrap().clone();
    assert_eq!(phases.first(), Some(&manager::Phase::Resolving));
    assert_eq!(phases.last(), Some(&manager::Phase::Done));
    let layout = mgr.layout();
    let tree = layout.tree_dir(&pushed.digest);
    let cubin = tree.join("io.triton.cache").join(KEY_H100).join("matmul_kernel.cubin");
    assert_eq!(std::fs::read(&cubin).unwrap(), noise(4096, 1));
    assert!(tree.join("io.triton.manifest/manifest.json").exists());

    // Again: present, nothing downloaded.
    let (_, outcome) = mgr
        .pull_with_outcome(&env.policy, 7, &image, NO_PROGRESS)
        .await
        .unwrap();
    assert_eq!(outcome, PullOutcome::Present);
    assert_eq!(mgr.stats().downloads.load(std::sync::atomic::Ordering::Relaxed), 1);

    // Two concurrent pulls into a fresh store: one download, one extraction.
    let fresh = env.manager("store2");
    let (a, b) = tokio::join!(
        fresh.pull_with_outcome(&env.policy, 1, &image, NO_PROGRESS),
        fresh.pull_with_outcome(&env.policy, 1, &image, NO_PROGRESS)
    );
    let mut outcomes = vec![a.unwrap().1, b.unwrap().1];
    outcomes.sort_by_key(|o| *o == PullOutcome::Present);
    assert_eq!(outcomes, [PullOutcome::Extracted, PullOutcome::Present]);
    let s = fresh.stats();
    assert_eq!(s.downloads.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert_eq!(s.extractions.load(std::sync::atomic::Ordering::Relaxed), 1);

    // The __grp__ rewrite for another mount path.
    let grp = mgr
        .prepare_grp(&pushed.digest, "/root/.triton/cache")
        .unwrap()
        .expect("a rewrite");
    let g: serde_json::Value =
        serde_json::from_slice(&std::fs::read(grp.join(KEY_H100).join("__grp__matmul_kernel.json")).unwrap()).unwrap();
    assert_eq!(
        g["child_paths"]["matmul_kernel.cubin"],
        format!("/root/.triton/cache/{KEY_H100}/matmul_kernel.cubin")
    );

    // Unsigned: denied naming image, digest and rule; nothing in the store.
    let unsigned_src = env.path("unsigned-cache");
    sm90_only(&unsigned_src, 9);
    let unsigned = env.push("caches/unsigned:v1", &unsigned_src, true).await;
    let unsigned_image = env.image("caches/unsigned:v1");
    let err = mgr
        .pull(&env.policy, 7, &unsigned_image, NO_PROGRESS)
        .await
        .unwrap_err();
    assert!(err.is_denied(), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains(&unsigned_image) && msg.contains(unsigned.digest.as_str()) && msg.contains("rule caches"),
        "{msg}"
    );
    assert!(!layout.entry_dir(&unsigned.digest).exists());

    // The CLI: exit 1, the same message, and an untouched store.
    let mut args = vec!["cache".to_string(), "pull".into(), unsigned_image.clone()];
    args.extend(env.registry_args());
    let store = env.path("cli-store");
    let out = Command::new(env!("CARGO_BIN_EXE_kcache"))
        .args(&args)
        .args(["--store", store.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("denied by rule caches") && stderr.contains(unsigned.digest.as_str()),
        "{stderr}"
    );
    assert!(visible(&store).is_empty(), "{:?}", visible(&store));

    // kcached's `[cache]` limits bind the CLI too: a signed cache over max_entries is rejected
    // (exit 1, naming the limit) and nothing is visible; a broken section is an error (exit 2).
    let config = env.path("config.toml");
    std::fs::write(&config, "[cache]\nmax_entries = 5\n").unwrap();
    let pull_with = |config: &Path| {
        let mut args = vec!["cache".to_string(), "pull".into(), image.clone()];
        args.extend(env.registry_args());
        Command::new(env!("CARGO_BIN_EXE_kcache"))
            .args(&args)
            .args(["--store", store.to_str().unwrap()])
            .arg("--config")
            .arg(config)
            .output()
            .unwrap()
    };
    let out = pull_with(&config);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("more than 5 entries or inodes"), "{stderr}");
    assert!(visible(&store).is_empty(), "{:?}", visible(&store));
    std::fs::write(&config, "[cache]\nmax_entries = 0\n").unwrap();
    let out = pull_with(&config);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("cache.max_entries"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_layers_are_rejected_before_anything_is_visible() {
    let env = Env::new();
    // A plain-tar layer with one byte of a cubin flipped: same length, still a valid tar, so
    // only the digest check can catch it, and it must do so before the commit.
    let src = env.path("plain");
    all_targets(&src);
    let pushed = env.push("caches/plain:v1", &src, false).await;
    env.sign("caches/plain:v1").await;
    let mut tampered = pushed.layer.clone();
    let needle = noise(64, 1);
    let at = tampered
        .windows(needle.len())
        .position(|w| w == needle.as_slice())
        .expect("cubin data in the tar");
    tampered[at + 10] ^= 0xff;
    let layer_digest = Digest::sha256_of(&pushed.layer);
    env.reg.put_placeholder_blob("caches/plain", &layer_digest, &tampered);

    let mgr = env.manager("store");
    let err = mgr
        .pull(&env.policy, 1, &env.image("caches/plain:v1"), NO_PROGRESS)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, PullError::Registry { source, .. } if matches!(**source, RegistryError::DigestMismatch { .. })),
        "{err}"
    );
    assert!(err.to_string().contains(layer_digest.as_str()), "{err}");
    let entry = mgr.layout().entry_dir(&pushed.digest);
    assert!(!entry.exists(), "a failed pull leaves no entry: {:?}", visible(&entry));
    assert_eq!(mgr.stats().extractions.load(std::sync::atomic::Ordering::Relaxed), 0);

    // A gzip layer replaced by other bytes of another size: rejected too, by the CLI with exit 1.
    let src2 = env.path("gz");
    sm90_only(&src2, 5);
    let pushed2 = env.push("caches/gz:v1", &src2, true).await;
    env.sign("caches/gz:v1").await;
    let d2 = Digest::sha256_of(&pushed2.layer);
    let mut garbage = pushed2.layer.clone();
    garbage.truncate(garbage.len() / 2);
    env.reg.put_placeholder_blob("caches/gz", &d2, &garbage);
    let mut args = vec!["cache".to_string(), "pull".into(), env.image("caches/gz:v1")];
    args.extend(env.registry_args());
    let out = env.kcache(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let store = env.path("store");
    let entry2 = StoreLayout::new(&store, "/nonexistent").entry_dir(&pushed2.digest);
    assert!(!entry2.exists(), "{:?}", visible(&entry2));

    // With the right bytes back, the pull succeeds.
    env.reg
        .put_placeholder_blob("caches/plain", &layer_digest, &pushed.layer);
    let record = mgr
        .pull(&env.policy, 1, &env.image("caches/plain:v1"), NO_PROGRESS)
        .await
        .unwrap();
    assert_eq!(record.digest, pushed.digest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_writes_state_with_gpu_compat_and_gc_honours_refs() {
    let mut env = Env::new();
    let all = env.path("all");
    all_targets(&all);
    let all_pushed = env.push("caches/all:v1", &all, true).await;
    env.sign("caches/all:v1").await;
    let sm90 = env.path("sm90");
    sm90_only(&sm90, 4);
    let sm90_pushed = env.push("caches/sm90:v1", &sm90, true).await;
    env.sign("caches/sm90:v1").await;
    let unsigned = env.path("unsigned");
    sm90_only(&unsigned, 8);
    env.push("caches/unsigned:v1", &unsigned, true).await;

    let approved = |name: &str, ns: Option<&str>, image: String| ApprovedCache {
        name: name.into(),
        namespace: ns.map(Into::into),
        image,
        source: PathBuf::from("test.yaml"),
    };
    let list = vec![
        approved("all", None, env.image("caches/all:v1")),
        approved("sm90", Some("ml"), env.image("caches/sm90:v1")),
        approved("unsigned", None, env.image("caches/unsigned:v1")),
        approved("missing", None, env.image("caches/missing:v1")),
    ];
    let mgr = env.manager("store");
    let inv = gpus();
    let state = mgr.reconcile(&env.policy, 3, &list, &inv).await;
    assert_eq!(state.generation, 1);
    let by = |name: &str| state.caches.iter().find(|c| c.name == name).unwrap().clone();
    let all_s = by("all");
    assert_eq!(all_s.state, CacheState::Ready);
    assert_eq!(all_s.digest.as_ref(), Some(&all_pushed.digest));
    assert_eq!(all_s.compatible_gpus, ["GPU-h100", "GPU-a100", "amd-mi300"]);
    let sm90_s = by("sm90");
    assert_eq!(sm90_s.state, CacheState::Ready);
    assert_eq!(sm90_s.compatible_gpus, ["GPU-h100"]);
    let reasons: Vec<_> = sm90_s
        .incompatible_gpus
        .iter()
        .map(|m| format!("{}: {}", m.gpu, m.reason))
        .collect();
    assert_eq!(
        reasons,
        [
            "GPU-a100: cache has sm_90; GPU is sm_80",
            "amd-mi300: cache has cuda kernels only; GPU is hip"
        ]
    );
    let unsigned_s = by("unsigned");
    assert_eq!(unsigned_s.state, CacheState::Denied);
    assert!(unsigned_s.reason.as_deref().unwrap().contains("denied by rule caches"));
    assert_eq!(by("missing").state, CacheState::Failed);
    let on_disk = mgr.layout().read_state().unwrap();
    assert_eq!(on_disk, state);

    // The CLI reads the same state, and inspects with a GPU file.
    let gpus_file = env.path("gpus.json");
    std::fs::write(&gpus_file, serde_json::to_vec(&inv).unwrap()).unwrap();
    let out = env.kcache(&["cache", "ls", "--output", "json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ls: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(ls["state"]["caches"].as_array().unwrap().len(), 4);
    assert_eq!(ls["entries"].as_array().unwrap().len(), 2);
    let out = env.kcache(&["cache", "ls"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("sm90") && text.contains("ml") && text.contains("denied"),
        "{text}"
    );
    let out = env.kcache(&[
        "cache",
        "inspect",
        "sm90",
        "-n",
        "ml",
        "--gpus",
        gpus_file.to_str().unwrap(),
        "--output",
        "json",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ins: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(ins["record"]["digest"], sm90_pushed.digest.as_str());
    assert_eq!(ins["compatible_gpus"], serde_json::json!(["GPU-h100"]));
    assert_eq!(ins["incompatible_gpus"][1]["gpu"], "amd-mi300");

    // `kcache cache pull NAME` looks the name up in caches.d.
    let caches_d = env.path("caches.d");
    std::fs::create_dir_all(&caches_d).unwrap();
    std::fs::write(
        caches_d.join("all.yaml"),
        format!("name: all\nimage: {}\n", env.image("caches/all:v1")),
    )
    .unwrap();
    let mut args = vec!["cache".to_string(), "pull".into(), "all".into(), "--caches-dir".into()];
    args.push(caches_d.to_str().unwrap().into());
    args.extend(env.registry_args());
    args.extend(["--output".into(), "json".into()]);
    let out = env.kcache(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let pulled: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(pulled["outcome"], "present");
    assert_eq!(pulled["digest"], all_pushed.digest.as_str());
    args[2] = "nope".into();
    let out = env.kcache(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no approved cache nope"));

    // The registry goes away: the re-pull fails, the ready copies stay in use.
    env.reg.stop();
    let state2 = mgr.reconcile(&env.policy, 3, &list, &inv).await;
    assert_eq!(state2.generation, 2);
    let all2 = state2.caches.iter().find(|c| c.name == "all").unwrap();
    assert_eq!(all2.state, CacheState::Ready);
    assert_eq!(all2.digest.as_ref(), Some(&all_pushed.digest));
    assert!(
        all2.reason.as_deref().unwrap().contains("re-pull failed"),
        "{:?}",
        all2.reason
    );
    env.reg.restart();

    // GC: both entries are approved; drop sm90 from the state, give it a container ref.
    let report = mgr.gc(&state);
    assert!(
        report.removed.is_empty() && report.kept_approved.len() == 2,
        "{report:?}"
    );
    let mut without = state.clone();
    without.caches.retain(|c| c.name != "sm90");
    let refs = mgr.layout().refs_dir(&sm90_pushed.digest);
    std::fs::create_dir_all(&refs).unwrap();
    std::fs::write(refs.join("container-1"), b"").unwrap();
    let report = mgr.gc(&without);
    assert_eq!(report.kept_in_use, [(sm90_pushed.digest.to_string(), 1)]);
    assert!(mgr.layout().record_path(&sm90_pushed.digest).exists());
    std::fs::remove_file(refs.join("container-1")).unwrap();
    std::fs::write(mgr.layout().state_path(), serde_json::to_vec(&without).unwrap()).unwrap();
    let out = env.kcache(&["cache", "gc", "--dry-run", "--output", "json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let dry: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(dry["removed"], serde_json::json!([sm90_pushed.digest.as_str()]));
    assert!(mgr.layout().record_path(&sm90_pushed.digest).exists());
    let out = env.kcache(&["cache", "gc"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!mgr.layout().entry_dir(&sm90_pushed.digest).exists());
    assert!(mgr.layout().record_path(&all_pushed.digest).exists());
    let leftovers: Vec<_> = visible(mgr.layout().root())
        .into_iter()
        .filter(|n| n.starts_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// The layer's download is held half-way by the blob storage the registry redirects to: the
/// pull has extracted the first half and cannot finish, whatever the timing, when it is killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_during_extraction_leaves_nothing_and_concurrent_cli_pulls_extract_once() {
    let (env, storage) = Env::with_blob_storage();
    // 8 MiB of incompressible kernels.
    let big = env.path("big");
    for i in 0..16u64 {
        let key = format!("{KEY_H100}{i:02}");
        kernel(&big, &key, "k", cuda_meta("ff", "k", 90), CUDA_EXTS, 512 << 10, 100 + i);
    }
    let pushed = env.push("caches/big:v1", &big, true).await;
    env.sign("caches/big:v1").await;
    let image = env.image("caches/big:v1");
    let layout = StoreLayout::new(env.path("store"), env.path("run"));
    let entry = layout.entry_dir(&pushed.digest);

    let half = pushed.layer.len() / 2;
    let stall = storage.stall_next_get(&Digest::sha256_of(&pushed.layer), half);
    let mut args = vec!["cache".to_string(), "pull".into(), image.clone()];
    args.extend(env.registry_args());
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut child = env
        .kcache_cmd(&argv)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(env.path("pull.log")).unwrap())
        .spawn()
        .unwrap();
    // Mid-extraction: the first half of the layer was sent and nothing more will be, and files
    // of it are in the pull's temp tree.
    let deadline = Instant::now() + Duration::from_secs(60);
    let extracting = || {
        std::fs::read_dir(&entry)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(".tmp-tree-"))
            .any(|t| files_under(&t.path()) > 0)
    };
    while !(stall.reached() && extracting()) {
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "the pull ended ({status}) while its layer was held: {}",
                std::fs::read_to_string(env.path("pull.log")).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "the pull did not start extracting (stall reached: {}): {:?}",
            stall.reached(),
            visible(&entry)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    stall.release();
    assert!(!layout.tree_dir(&pushed.digest).exists(), "a partial tree is visible");
    assert!(layout.read_record(&pushed.digest).unwrap().is_none());
    assert_eq!(
        visible(&entry)
            .iter()
            .filter(|n| n.starts_with(".tmp-tree-") && !n.contains('/'))
            .count(),
        1,
        "{:?}",
        visible(&entry)
    );
    let out = env.kcache(&["cache", "ls", "--output", "json"]);
    let ls: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(ls["entries"][0]["complete"], false, "{ls}");

    // Two pulls at once now: both succeed, exactly one extracts.
    let mut json_args = argv.clone();
    json_args.extend(["--output", "json"]);
    let a = env.kcache_cmd(&json_args).stdout(Stdio::piped()).spawn().unwrap();
    let b = env.kcache_cmd(&json_args).stdout(Stdio::piped()).spawn().unwrap();
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert!(a.status.success() && b.status.success());
    let outcome = |o: &Output| serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()["outcome"].clone();
    let mut outcomes = vec![outcome(&a), outcome(&b)];
    outcomes.sort_by_key(|v| v.to_string());
    assert_eq!(outcomes, [serde_json::json!("extracted"), serde_json::json!("present")]);
    let record = layout.read_record(&pushed.digest).unwrap().unwrap();
    assert!(record.files > pushed.built.entry_count * 7, "{record:?}");
    assert!(record.bytes >= 16 * (512 << 10), "{record:?}");

    // GC sweeps the killed pull's temp dir.
    let state = kcache_core::cache::store::NodeCaches::default();
    let mut keep = state.clone();
    keep.caches.push(kcache_core::cache::store::CacheStatus {
        name: "big".into(),
        namespace: None,
        image,
        state: CacheState::Ready,
        digest: Some(pushed.digest.clone()),
        reason: None,
        compatible_gpus: vec![],
        incompatible_gpus: vec![],
        updated_at: 0,
    });
    let report = gc::gc(&layout, &keep, false);
    assert!(report.temp_removed >= 1, "{report:?}");
    assert!(
        !visible(&entry).iter().any(|n| n.starts_with(".tmp")),
        "{:?}",
        visible(&entry)
    );
}

/// A tag that moves to a new digest while a container still uses the old one: reconcile pulls
/// the new digest and points the state at it; GC (the store's, which kcached runs after every
/// round and `kcache cache gc` runs) keeps the old entry while the hook's ref is there, drops a
/// ref from an earlier boot, and removes the old entry once poststop dropped the last ref.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_digest_change_keeps_the_old_copy_until_its_last_container_stops() {
    let env = Env::new();
    let (v1, v2) = (env.path("v1"), env.path("v2"));
    sm90_only(&v1, 31);
    sm90_only(&v2, 32);
    let tag = "caches/moving:latest";
    let first = env.push(tag, &v1, true).await;
    env.sign(tag).await;
    let list = vec![ApprovedCache {
        name: "moving".into(),
        namespace: Some("ml".into()),
        image: env.image(tag),
        source: PathBuf::from("test.yaml"),
    }];
    let mgr = env.manager("store");
    let layout = mgr.layout().clone();
    let inv = gpus();
    let state = mgr.reconcile(&env.policy, 1, &list, &inv).await;
    let current = |s: &kcache_core::cache::store::NodeCaches| s.lookup(Some("ml"), "moving").unwrap().clone();
    assert_eq!(current(&state).state, CacheState::Ready);
    assert_eq!(current(&state).digest.as_ref(), Some(&first.digest));

    // A container starts on v1: its ref, as the hook's prestart writes it (this boot's id).
    let pid = std::process::id() as i32;
    let mounted = ContainerRef::now(
        "c-old",
        "moving",
        Some("ml"),
        &first.digest,
        "/root/.triton/cache",
        Some(pid),
    );
    drop(refs::add(&layout, &mounted).unwrap());
    // And one left by a container of an earlier boot (no container outlives a reboot).
    let mut stale = ContainerRef::now(
        "c-reboot",
        "moving",
        Some("ml"),
        &first.digest,
        "/root/.triton/cache",
        None,
    );
    stale.boot_id = Some("an-earlier-boot".into());
    drop(refs::add(&layout, &stale).unwrap());

    // The tag moves to v2.
    let second = env.push(tag, &v2, true).await;
    assert_ne!(first.digest, second.digest);
    env.sign(tag).await;
    let state = mgr.reconcile(&env.policy, 1, &list, &inv).await;
    assert_eq!(current(&state).state, CacheState::Ready);
    assert_eq!(current(&state).digest.as_ref(), Some(&second.digest));
    assert!(layout.record_path(&first.digest).exists() && layout.record_path(&second.digest).exists());
    assert_eq!(layout.read_state().unwrap(), state);

    // `kcache cache gc --dry-run` reads that state.json and changes nothing.
    let out = env.kcache(&["cache", "gc", "--dry-run", "--output", "json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let dry: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        dry["kept_in_use"],
        serde_json::json!([[first.digest.as_str(), 1]]),
        "{dry}"
    );
    assert_eq!(refs::list(&layout, &first.digest).unwrap(), ["c-old", "c-reboot"]);
    // `kcache cache ls` counts refs as GC does: the earlier boot's ref holds nothing.
    let out = env.kcache(&["cache", "ls", "--output", "json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ls: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let old = ls["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["digest"] == first.digest.as_str())
        .unwrap();
    assert_eq!((&old["refs"], &old["approved"]), (&1.into(), &false.into()), "{ls}");
    // The daemon's GC: the old copy is in use; the earlier boot's ref goes.
    let report = mgr.gc(&state);
    assert_eq!(report.kept_in_use, [(first.digest.to_string(), 1)], "{report:?}");
    assert_eq!(report.kept_approved, [second.digest.to_string()]);
    assert!(report.removed.is_empty() && report.errors.is_empty(), "{report:?}");
    assert_eq!(refs::list(&layout, &first.digest).unwrap(), ["c-old"]);
    assert!(layout.record_path(&first.digest).exists());

    // The container stops: poststop drops its ref; the next GC removes the old copy only.
    assert!(refs::remove(&layout, &first.digest, "c-old").unwrap());
    let out = env.kcache(&["cache", "gc", "--output", "json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        report["removed"],
        serde_json::json!([first.digest.as_str()]),
        "{report}"
    );
    assert_eq!(report["kept_approved"], serde_json::json!([second.digest.as_str()]));
    assert!(!layout.entry_dir(&first.digest).exists());
    assert!(layout.record_path(&second.digest).exists());
    let leftovers: Vec<_> = visible(layout.root())
        .into_iter()
        .filter(|n| n.starts_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

struct Held(Policy);

impl AsRef<Policy> for Held {
    fn as_ref(&self) -> &Policy {
        &self.0
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_loop_follows_caches_d() {
    let env = Env::new();
    let src = env.path("src");
    sm90_only(&src, 11);
    let pushed = env.push("caches/watched:v1", &src, true).await;
    env.sign("caches/watched:v1").await;
    let caches_d = env.path("caches.d");
    std::fs::create_dir_all(&caches_d).unwrap();
    std::fs::create_dir_all(env.path("run")).unwrap();
    std::fs::write(env.path("run/gpus.json"), serde_json::to_vec(&gpus()).unwrap()).unwrap();

    let mgr = Arc::new(env.manager("store"));
    let layout = mgr.layout().clone();
    let policy = Arc::new(Held(env.policy.clone()));
    let rounds = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let counter = rounds.clone();
    let task = tokio::spawn(Arc::clone(&mgr).watch(
        caches_d.clone(),
        Duration::from_secs(3600),
        Duration::from_millis(50),
        move || Arc::clone(&policy),
        move |_| {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        },
        async move {
            let _ = stop_rx.await;
        },
    ));
    let wait_for = |what: &str, cond: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_for("the first round", &|| {
        rounds.load(std::sync::atomic::Ordering::SeqCst) >= 1
    });
    assert!(layout.read_state().unwrap().caches.is_empty());

    std::fs::write(
        caches_d.join("watched.yaml"),
        format!(
            "- name: watched\n  namespace: ml\n  image: {}\n",
            env.image("caches/watched:v1")
        ),
    )
    .unwrap();
    wait_for("the cache to be ready", &|| {
        layout
            .read_state()
            .unwrap()
            .lookup(Some("ml"), "watched")
            .is_some_and(|c| c.state == CacheState::Ready)
    });
    let state = layout.read_state().unwrap();
    let c = state.lookup(Some("ml"), "watched").unwrap();
    assert_eq!(c.digest.as_ref(), Some(&pushed.digest));
    assert_eq!(c.compatible_gpus, ["GPU-h100"]);
    assert!(state.lookup(Some("other"), "watched").is_none());

    // Unapproved again: the next round drops it and GC removes the unused copy.
    std::fs::remove_file(caches_d.join("watched.yaml")).unwrap();
    wait_for("the copy to be collected", &|| {
        !layout.entry_dir(&pushed.digest).exists()
    });
    assert!(layout.read_state().unwrap().caches.is_empty());
    stop_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap();
}

/// A ustar header + data, by hand (the plugin's tests do not link the tar crate).
fn ustar_entry(name: &str, data: &[u8]) -> Vec<u8> {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[100..108].copy_from_slice(b"0000644\0");
    h[108..116].copy_from_slice(b"0000000\0");
    h[116..124].copy_from_slice(b"0000000\0");
    h[124..136].copy_from_slice(format!("{:011o}\0", data.len()).as_bytes());
    h[136..148].copy_from_slice(b"00000000000\0");
    h[156] = b'0';
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    let mut out = h.to_vec();
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_but_hostile_layers_are_rejected_and_indexes_resolve() {
    let env = Env::new();
    let client = env.reg.client();
    // A signed image whose layer climbs out of the store: the extractor's rules still hold.
    let src = env.path("src");
    sm90_only(&src, 21);
    let good = env.push("caches/good:v1", &src, true).await;
    let mut tar = ustar_entry("io.triton.cache/ok.json", b"{}");
    tar.extend(ustar_entry("../../escape.so", b"\x7fELF"));
    tar.extend([0u8; 1024]);
    let r = env.reg.reference("caches/hostile:v1");
    let layer = client.push_blob(&r, &tar).await.unwrap();
    let config = image_config_json(&good.built);
    let cd = client.push_blob(&r, &config).await.unwrap();
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd.as_str(), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer.as_str(), "size": tar.len()}],
    })
    .to_string();
    let hostile = client
        .push_manifest(&r, "v1", OCI_MANIFEST, manifest.as_bytes())
        .await
        .unwrap();
    env.sign("caches/hostile:v1").await;
    let mut args = vec!["cache".to_string(), "pull".into(), env.image("caches/hostile:v1")];
    args.extend(env.registry_args());
    let out = env.kcache(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("../../escape.so") && stderr.contains(hostile.as_str()),
        "{stderr}"
    );
    let store = env.path("store");
    assert!(
        visible(&StoreLayout::new(&store, "/r").entry_dir(&hostile)).is_empty(),
        "{:?}",
        visible(&store)
    );
    assert!(!store.join("escape.so").exists() && !env.dir.path().join("escape.so").exists());

    // An index listing the cache image, signed itself: pulled through to the platform manifest.
    let m = client
        .manifest(&env.reg.reference("caches/good:v1"), "v1")
        .await
        .unwrap();
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let index = serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": m.digest.as_str(), "size": m.bytes.len(),
                       "platform": {"os": "linux", "architecture": arch}}],
    })
    .to_string();
    let ir = env.reg.reference("caches/good:multi");
    let index_digest = client
        .push_manifest(
            &ir,
            "multi",
            "application/vnd.oci.image.index.v1+json",
            index.as_bytes(),
        )
        .await
        .unwrap();
    env.sign("caches/good:multi").await;
    let mgr = env.manager("store");
    let record = mgr
        .pull(&env.policy, 1, &env.image("caches/good:multi"), NO_PROGRESS)
        .await
        .unwrap();
    assert_eq!(record.digest, index_digest);
    assert_eq!(record.targets.len(), 1);
    assert!(mgr
        .layout()
        .tree_dir(&index_digest)
        .join("io.triton.cache")
        .join(KEY_H100)
        .join("matmul_kernel.cubin")
        .exists());
}

/// Not a test: a rough figure for a whole pull (download + sha256 + gunzip + checked extraction
/// + syncfs) of a ~200 MB cache from the loopback registry, against `curl | tar -xz` + `sync -f`
/// of the same blob. `cargo test -p kcache-plugin --test cli_cache_pull -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement, prints figures"]
async fn measure_pull_against_curl_and_tar() {
    let env = Env::new();
    let big = env.path("big");
    for i in 0..50u64 {
        let key = format!("{KEY_H100}{i:02}");
        kernel(&big, &key, "k", cuda_meta("ff", "k", 90), CUDA_EXTS, 4 << 20, 1000 + i);
    }
    let pushed = env.push("caches/measure:v1", &big, true).await;
    env.sign("caches/measure:v1").await;
    let layer_digest = Digest::sha256_of(&pushed.layer);
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    for run in 0..3 {
        let mgr = env.manager(&format!("store-{run}"));
        let t = Instant::now();
        mgr.pull(&env.policy, 1, &env.image("caches/measure:v1"), NO_PROGRESS)
            .await
            .unwrap();
        ours.push(t.elapsed().as_secs_f64());
        let out = env.path(&format!("tar-{run}"));
        std::fs::create_dir_all(&out).unwrap();
        let t = Instant::now();
        let sh = format!(
            "curl -sf http://{}/v2/caches/measure/blobs/{layer_digest} | tar -xz -C {} && sync -f {}",
            env.reg.host(),
            out.display(),
            out.display()
        );
        assert!(Command::new("sh").arg("-c").arg(&sh).status().unwrap().success());
        theirs.push(t.elapsed().as_secs_f64());
    }
    ours.sort_by(f64::total_cmp);
    theirs.sort_by(f64::total_cmp);
    println!(
        "layer {:.0} MB gz: kcache pull median {:.2} s, curl | tar -xz + sync -f median {:.2} s (ratio {:.2})",
        pushed.layer.len() as f64 / 1e6,
        ours[1],
        theirs[1],
        ours[1] / theirs[1]
    );
}

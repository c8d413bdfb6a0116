//! End to end on a real Kubernetes API server (upstream apiextensions-apiserver + etcd, see
//! scripts/kube-apiserver.sh), real kcached, a real loopback registry and signed cache images;
//! kcache-controller's `run` and `node` run as the binaries they ship as.
//!
//! The flow: CRDs applied → a TrustPolicy (the signer's key) and a KernelCache (a tag) → the
//! controller pins the digest and finds the policy valid → the agent writes policy.d and caches.d
//! → kcached pulls, verifies and extracts → the KernelCacheNode shows digest, rule, signer and the
//! compatible GPU (a pinned inventory) → the KernelCache counts it; an unsigned cache and a
//! signed cache whose layer was swapped in the registry fail with the reason on both objects; a
//! cache built for a GPU the node lacks is incompatible, with the reason per GPU, and counted so; an unanchored regexp is Valid=False and the node keeps the old
//! fragment; a TrustRoot is Valid, then Valid=False with the load error; a policy lowering the mode is refused by the node; deletes remove the files and
//! the admin's own file is never touched; the agent restarted converges without rewriting.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kcache_controller::crd::{
    ConditionStatus, KernelCache, KernelCacheNode, KernelCacheSpec, KeyAuthority, KeylessAuthority, PolicyAuthority,
    PolicyMode, PolicyRule, TrustPolicy, TrustPolicySpec, TrustPolicyState, TrustRoot, TrustRootSpec,
};
use kcache_core::{
    cache::{
        builder::{build_cache_layer, image_config_json},
        format::CacheKind,
    },
    cosign::sign::{sign_and_push, OCI_MANIFEST},
    digest::Digest,
    signing::PrivateKey,
};
use kcache_tests::{
    kcached::{Kcached, KcachedConfig},
    kube::KubeApiServer,
    TestRegistry,
};
use kube::{
    api::{DeleteParams, Patch, PatchParams, PostParams},
    runtime::wait::{await_condition, conditions},
    Api, Client,
};

/// A process killed (SIGTERM, then SIGKILL) on drop; its stderr goes to a file.
struct Proc {
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    fn spawn(mut cmd: Command, log: PathBuf) -> Self {
        let f = std::fs::File::create(&log).unwrap();
        let child = cmd.stdout(Stdio::null()).stderr(f).spawn().expect("spawn");
        Self {
            child: Some(child),
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM and wait: the graceful shutdown path.
    fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(s)) = c.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        c.wait().ok()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The kcached binary of this build: next to the test's target dir, built if missing.
fn kcached_bin() -> PathBuf {
    if let Ok(p) = std::env::var("KCACHED_BIN") {
        return p.into();
    }
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let bin = dir.join("kcached");
    if !bin.is_file() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut args = vec!["build", "-p", "kcache-plugin", "--bin", "kcached"];
        if !cfg!(debug_assertions) {
            args.push("--release");
        }
        let st = Command::new(cargo).args(args).status().unwrap();
        assert!(st.success(), "cargo build kcached");
    }
    bin
}

/// A one-kernel Triton cache for CUDA compute capability `arch` (90: H100, 80: A100).
fn cuda_kernel(root: &Path, seed: u8, arch: u32) {
    let key = "QWJ3OZ3CR4HNZ6LOHG7LYCUUQYZFXAY6SY62SNYRVQHW3G4FOCLQ";
    let dir = root.join(key);
    std::fs::create_dir_all(&dir).unwrap();
    let meta = format!(
        r#"{{"hash": "a1f3", "target": {{"backend": "cuda", "arch": {arch}, "warp_size": 32}}, "num_warps": 4, "num_ctas": 1, "num_stages": 3, "debug": false, "backend_name": "cuda", "arch": "sm{arch}", "triton_version": "3.3.1", "shared": 0, "name": "matmul_kernel"}}"#
    );
    let mut children = serde_json::Map::new();
    for ext in ["ttir", "ptx", "cubin", "json"] {
        let file = format!("matmul_kernel.{ext}");
        let body = if ext == "json" {
            meta.clone().into_bytes()
        } else {
            vec![seed; 512]
        };
        std::fs::write(dir.join(&file), body).unwrap();
        children.insert(file.clone(), dir.join(&file).to_str().unwrap().into());
    }
    std::fs::write(
        dir.join("__grp__matmul_kernel.json"),
        serde_json::to_vec(&serde_json::json!({ "child_paths": children })).unwrap(),
    )
    .unwrap();
}

/// A cache layer (gzip) from a synthetic Triton cache for `arch`.
fn cache_layer(dir: &Path, seed: u8, arch: u32) -> (Vec<u8>, kcache_core::cache::builder::BuiltCache) {
    let src = dir.join(format!("src-{seed}"));
    cuda_kernel(&src, seed, arch);
    let mut gz = Vec::new();
    let built = build_cache_layer(&src, CacheKind::Triton, &mut gz).unwrap();
    (gz, built)
}

/// What [`push_cache`] pushed.
struct Pushed {
    manifest: Digest,
    layer: Digest,
    layer_len: usize,
}

/// Builds a cache image from a synthetic Triton cache for `arch`, pushes it, signs it if `key`.
async fn push_cache(
    reg: &TestRegistry,
    dir: &Path,
    repo_tag: &str,
    seed: u8,
    arch: u32,
    key: Option<&PrivateKey>,
) -> Pushed {
    let (gz, built) = cache_layer(dir, seed, arch);
    let client = reg.client();
    let r = reg.reference(repo_tag);
    let layer = client.push_blob(&r, &gz).await.unwrap();
    let config = image_config_json(&built);
    let config_digest = client.push_blob(&r, &config).await.unwrap();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest.as_str(), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer.as_str(), "size": gz.len()}],
    })
    .to_string();
    let digest = client
        .push_manifest(&r, &r.reference(), OCI_MANIFEST, manifest.as_bytes())
        .await
        .unwrap();
    if let Some(k) = key {
        sign_and_push(&client, k, &r, false).await.unwrap();
    }
    Pushed {
        manifest: digest,
        layer,
        layer_len: gz.len(),
    }
}

/// Polls `f` until it gives `Some`, or fails with `what` and the logs.
async fn eventually<T, F, Fut>(what: &str, secs: u64, logs: &dyn Fn() -> String, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let t = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            t.elapsed() < Duration::from_secs(secs),
            "timed out waiting for {what}\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn client(kubeconfig: &Path) -> Client {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig).unwrap();
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    Client::try_from(cfg).unwrap()
}

fn key_rule(name: &str, images: &str, pem: String) -> PolicyRule {
    PolicyRule {
        name: name.into(),
        images: vec![images.into()],
        authorities: vec![PolicyAuthority {
            key: Some(KeyAuthority { data: pem }),
            keyless: None,
        }],
        transparency_log: Some(kcache_controller::crd::TlogSetting::Off),
        ..PolicyRule::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_objects_become_node_files_and_node_status_becomes_cluster_status() {
    let t0 = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let api_server = KubeApiServer::start(&dir.join("kube"));
    let kubeconfig = api_server.kubeconfig();
    let client = client(&kubeconfig).await;

    // The CRDs, as `kcache-controller crd` prints them, applied to the real server.
    let crds = Api::<CustomResourceDefinition>::all(client.clone());
    for crd in kcache_controller::crd::all() {
        let name = crd.metadata.name.clone().unwrap();
        crds.create(&PostParams::default(), &crd).await.unwrap();
        tokio::time::timeout(
            Duration::from_secs(20),
            await_condition(crds.clone(), &name, conditions::is_crd_established()),
        )
        .await
        .expect("CRD established")
        .unwrap();
    }

    // Registry, signer, cache images.
    let reg = TestRegistry::start();
    let key = PrivateKey::generate_p256();
    let signed = push_cache(&reg, dir, "caches/llama:v1", 1, 90, Some(&key))
        .await
        .manifest;
    let unsigned = push_cache(&reg, dir, "caches/rogue:v1", 2, 90, None).await.manifest;
    // Signed, for sm_80 only: the node's H100 cannot run it.
    let a100 = push_cache(&reg, dir, "caches/a100:v1", 3, 80, Some(&key))
        .await
        .manifest;
    // Signed, then tampered with in the registry: the layer blob's bytes are swapped for
    // another valid cache layer of the same length, so the manifest and its signature are
    // intact and only the layer no longer hashes to the digest the signed manifest names.
    let tampered = push_cache(&reg, dir, "caches/tampered:v1", 4, 90, Some(&key)).await;
    let swap = (5..40)
        .map(|seed| cache_layer(dir, seed, 90).0)
        .find(|gz| gz.len() == tampered.layer_len)
        .expect("a same-length replacement layer");
    let hex = tampered.layer.hex();
    let blob = reg
        .storage()
        .join(format!("docker/registry/v2/blobs/sha256/{}/{hex}/data", &hex[..2]));
    assert_eq!(std::fs::metadata(&blob).unwrap().len() as usize, tampered.layer_len);
    std::fs::write(&blob, &swap).unwrap();

    // The node: the admin's policy.yaml (enforce, deny, no rules) and one fragment of their own,
    // kcached's config.toml with a pinned H100 and the default [cluster] guard.
    let node = dir.join("node");
    let policy_d = node.join("policy.d");
    let caches_d = node.join("caches.d");
    std::fs::create_dir_all(&policy_d).unwrap();
    std::fs::create_dir_all(&caches_d).unwrap();
    std::fs::write(node.join("policy.yaml"), "mode: enforce\ndefault: deny\nrules: []\n").unwrap();
    let admin_fragment =
        "rules:\n  - name: admin-bootstrap\n    images: [\"registry.k8s.io/pause:*\"]\n    allow: true\n";
    std::fs::write(policy_d.join("00-admin.yaml"), admin_fragment).unwrap();
    let gpus = node.join("gpus-pinned.json");
    std::fs::write(
        &gpus,
        r#"{"source":"file","gpus":[{"id":"GPU-h100","index":0,"name":"NVIDIA H100 80GB HBM3","backend":"cuda","arch":90,"warp_size":32}]}"#,
    )
    .unwrap();
    let kdir = dir.join("kcached");
    let config_toml = format!(
        "caches_dir = \"{}\"\npolicy_reload_seconds = 1\ncache_resync_seconds = 2\n[gpu]\npinned_file = \"{}\"\nnvml = false\n[cluster]\nallow_lower_mode = false\n",
        caches_d.display(),
        gpus.display()
    );
    let mut kcached = Kcached::start(
        &kcached_bin(),
        &kdir,
        KcachedConfig {
            policy: Some(node.join("policy.yaml")),
            insecure: vec![reg.host()],
            config_toml,
            args: vec![],
        },
    );

    // KCACHE_CONTROLLER_BIN: another build of the binary (a release one, for measurements).
    let bin = std::env::var("KCACHE_CONTROLLER_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_kcache-controller").into());
    let bin = bin.as_str();
    let controller_cmd = || {
        let mut c = Command::new(bin);
        c.args([
            "run",
            "--resync-seconds",
            "1",
            "--stale-after-seconds",
            "60",
            "--registry-insecure",
        ])
        .arg(reg.host())
        .env("KUBECONFIG", &kubeconfig)
        .env("RUST_LOG", "info,kube=warn");
        c
    };
    let agent_cmd = || {
        let mut c = Command::new(bin);
        c.args([
            "node",
            "--node-name",
            "gpu-node-1",
            "--poll-seconds",
            "1",
            "--heartbeat-seconds",
            "30",
        ])
        .arg("--policy")
        .arg(node.join("policy.yaml"))
        .arg("--caches-d")
        .arg(&caches_d)
        .arg("--config")
        .arg(kdir.join("config.toml"))
        .arg("--kcached-socket")
        .arg(kcached.api_socket())
        .arg("--gpus-json")
        .arg(kdir.join("run/gpus.json"))
        .arg("--cache-root")
        .arg(kdir.join("caches"))
        .env("KUBECONFIG", &kubeconfig)
        .env("RUST_LOG", "info,kube=warn");
        c
    };
    let mut controller = Proc::spawn(controller_cmd(), dir.join("controller.log"));
    let mut agent = Proc::spawn(agent_cmd(), dir.join("agent.1.log"));
    let kcached_logs = kdir.clone();
    let api_log = dir.join("kube/apiserver.log");
    let logs = || {
        let read = |p: PathBuf| std::fs::read_to_string(p).unwrap_or_default();
        let tail = |s: String| {
            s.lines()
                .rev()
                .take(30)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n")
        };
        format!(
            "--- controller\n{}\n--- agent\n{}{}\n--- kcached\n{}\n--- apiserver (tail)\n{}",
            tail(read(dir.join("controller.log"))),
            tail(read(dir.join("agent.1.log"))),
            tail(read(dir.join("agent.2.log"))),
            tail(read(kcached_logs.join("kcached.1.log"))),
            tail(read(api_log.clone()))
        )
    };

    let tps = Api::<TrustPolicy>::all(client.clone());
    let kcs = Api::<KernelCache>::namespaced(client.clone(), "ml");
    let nodes = Api::<KernelCacheNode>::all(client.clone());
    let pp = PostParams::default();
    let caches_glob = format!("{}/caches/*", reg.host());
    tps.create(
        &pp,
        &TrustPolicy::new(
            "caches",
            TrustPolicySpec {
                rules: vec![key_rule("cluster-caches", &caches_glob, key.public_key().to_pem())],
                ..TrustPolicySpec::default()
            },
        ),
    )
    .await
    .unwrap();
    let image = format!("{}/caches/llama:v1", reg.host());
    let mut kc = KernelCache::new("llama", KernelCacheSpec { image: image.clone() });
    kc.metadata.namespace = Some("ml".into());
    kcs.create(&pp, &kc).await.unwrap();
    let t_created = Instant::now();
    let wall_created = std::time::SystemTime::now();

    // The controller pins the tag and finds the policy valid.
    let digest = signed.to_string();
    eventually("resolvedDigest", 30, &logs, || async {
        let kc = kcs.get("llama").await.ok()?;
        (kc.status?.resolved_digest? == digest).then_some(())
    })
    .await;
    // The agent renders; kcached pulls, verifies, extracts; the agent reports.
    let fragment = policy_d.join("kcache-cluster-trustpolicy-caches.yaml");
    let status = eventually("the node reports llama ready", 60, &logs, || async {
        let n = nodes.get("gpu-node-1").await.ok()?;
        let s = n.status?;
        let c = s.caches.iter().find(|c| c.name == "llama")?;
        (c.state == "ready").then_some(s)
    })
    .await;
    let propagation = t_created.elapsed();
    let text = std::fs::read_to_string(&fragment).unwrap();
    assert!(
        text.starts_with("# kcache-controller: TrustPolicy caches generation 1."),
        "{text}"
    );
    let cache_file = std::fs::read_to_string(caches_d.join("kcache-cluster-kernelcache-ml.llama.yaml")).unwrap();
    assert!(cache_file.contains(&format!("image: {image}@{digest}")), "{cache_file}");
    let c = status.caches.iter().find(|c| c.name == "llama").unwrap();
    assert_eq!(c.namespace.as_deref(), Some("ml"));
    assert_eq!(c.digest.as_deref(), Some(digest.as_str()));
    assert_eq!(c.rule.as_deref(), Some("cluster-caches"));
    assert_eq!(
        c.signer.as_ref().and_then(|s| s.key_fingerprint.clone()),
        Some(key.public_key().fingerprint())
    );
    assert_eq!(c.compatible_gpus, ["GPU-h100"]);
    assert_eq!(status.gpus.len(), 1);
    assert_eq!(status.gpus[0].arch, "90");
    assert_eq!(status.policy.as_ref().unwrap().mode, "enforce");
    assert_eq!(
        status.trust_policies[0].state,
        TrustPolicyState::Enforced,
        "{:?}",
        status.trust_policies
    );

    // The fleet view: counts on the cache, nodes enforcing on the policy.
    eventually("KernelCache counts", 30, &logs, || async {
        let s = kcs.get("llama").await.ok()?.status?;
        (s.nodes.ready == 1 && s.nodes.compatible == 1).then_some(())
    })
    .await;
    eventually("TrustPolicy Valid and enforced on 1 node", 30, &logs, || async {
        let s = tps.get("caches").await.ok()?.status?;
        let valid = s
            .conditions
            .iter()
            .any(|c| c.type_ == "Valid" && c.status == ConditionStatus::True);
        (valid && s.nodes_enforcing == 1).then_some(())
    })
    .await;
    // The pull itself, from kcached's store: the entry directory is made when the pull starts,
    // record.json written when it is verified and extracted.
    let entry = kdir.join("caches").join(signed.hex());
    let pull = std::fs::metadata(&entry)
        .and_then(|m| m.created())
        .ok()
        .zip(
            std::fs::metadata(entry.join("record.json"))
                .and_then(|m| m.modified())
                .ok(),
        )
        .and_then(|(start, end)| end.duration_since(start).ok());
    eprintln!(
        "propagation (KernelCache created -> node reports ready): {propagation:?}, the pull itself {pull:?} (observed every 200 ms)"
    );
    // Where the time went, from file times: the agent writing caches.d, kcached starting the
    // pull, kcached finishing it (the rest is the agent's report reaching the API server).
    let since = |t: Option<std::time::SystemTime>| {
        t.and_then(|t| t.duration_since(wall_created).ok())
            .map(|d| d.as_secs_f64() * 1e3)
    };
    let approved_at = since(
        std::fs::metadata(caches_d.join("kcache-cluster-kernelcache-ml.llama.yaml"))
            .and_then(|m| m.modified())
            .ok(),
    );
    let pull_started_at = since(std::fs::metadata(&entry).and_then(|m| m.created()).ok());
    let pulled_at = since(
        std::fs::metadata(entry.join("record.json"))
            .and_then(|m| m.modified())
            .ok(),
    );
    eprintln!("caches.d written at {approved_at:?} ms, pull started {pull_started_at:?} ms, pulled {pulled_at:?} ms");
    let mut bench = serde_json::json!({
        "approved_at_ms": approved_at,
        "pull_started_at_ms": pull_started_at,
        "pulled_at_ms": pulled_at,
        "propagation_ms": propagation.as_secs_f64() * 1e3,
        "pull_ms": pull.map(|p| p.as_secs_f64() * 1e3),
        "propagation_minus_pull_ms": pull.map(|p| propagation.saturating_sub(p).as_secs_f64() * 1e3),
        "agent_poll_s": 1,
        "agent_settle_poll_ms": 200,
        "kcached_caches_d_poll_ms": 250,
    });

    // An unsigned cache, a cache for a GPU the node lacks and a tampered cache, all at once.
    for name in ["rogue", "a100", "tampered"] {
        let image = format!("{}/caches/{name}:v1", reg.host());
        let mut kc = KernelCache::new(name, KernelCacheSpec { image });
        kc.metadata.namespace = Some("ml".into());
        kcs.create(&pp, &kc).await.unwrap();
    }
    // The unsigned one: failed on the node with the reason, and on the cache.
    let reason = eventually("rogue denied on the node", 60, &logs, || async {
        let s = nodes.get("gpu-node-1").await.ok()?.status?;
        let c = s.caches.iter().find(|c| c.name == "rogue")?;
        matches!(c.state.as_str(), "denied" | "failed").then(|| c.reason.clone().unwrap_or_default())
    })
    .await;
    assert!(
        reason.contains(unsigned.as_str()) || reason.contains("rogue"),
        "{reason}"
    );
    eventually("rogue Degraded with the node's reason", 30, &logs, || async {
        let s = kcs.get("rogue").await.ok()?.status?;
        let d = s.conditions.iter().find(|c| c.type_ == "Degraded")?;
        (s.nodes.failed == 1 && d.status == ConditionStatus::True && d.message.contains("gpu-node-1: ")).then_some(())
    })
    .await;

    // Built for sm_80 only: ready (signed, verified) but incompatible with the node's H100,
    // with the reason per GPU; the KernelCache counts it incompatible.
    let a100_node = eventually("a100 ready and incompatible on the node", 60, &logs, || async {
        let s = nodes.get("gpu-node-1").await.ok()?.status?;
        let c = s.caches.iter().find(|c| c.name == "a100")?;
        (c.state == "ready").then(|| c.clone())
    })
    .await;
    assert_eq!(a100_node.digest.as_deref(), Some(a100.as_str()));
    assert!(a100_node.compatible_gpus.is_empty(), "{a100_node:?}");
    assert_eq!(a100_node.incompatible_gpus.len(), 1, "{a100_node:?}");
    let why = &a100_node.incompatible_gpus[0];
    assert_eq!(why.gpu, "GPU-h100");
    assert!(why.reason.contains("80") && why.reason.contains("90"), "{}", why.reason);
    eventually("a100 counted incompatible", 30, &logs, || async {
        let s = kcs.get("a100").await.ok()?.status?;
        (s.nodes.ready == 1 && s.nodes.compatible == 0 && s.nodes.incompatible == 1).then_some(())
    })
    .await;

    // Tampered after signing: the signature verifies, the layer does not hash to its digest;
    // failed with the reason on the node and on the cache, nothing extracted.
    let reason = eventually("tampered failed on the node", 60, &logs, || async {
        let s = nodes.get("gpu-node-1").await.ok()?.status?;
        let c = s.caches.iter().find(|c| c.name == "tampered")?;
        (c.state == "failed").then(|| c.reason.clone().unwrap_or_default())
    })
    .await;
    eprintln!("tampered reason: {reason}");
    assert!(reason.contains(tampered.layer.as_str()), "{reason}");
    eventually("tampered Degraded with the node's reason", 30, &logs, || async {
        let s = kcs.get("tampered").await.ok()?.status?;
        let d = s.conditions.iter().find(|c| c.type_ == "Degraded")?;
        (s.nodes.failed == 1 && s.nodes.ready == 0 && d.status == ConditionStatus::True && d.message.contains(&reason))
            .then_some(())
    })
    .await;

    // A TrustRoot: Valid from kcache's trusted-root loader, at its generation; broken, the
    // load error.
    let roots = Api::<TrustRoot>::all(client.clone());
    let public_good = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/trusted-roots/sigstore-python-4.5.1/public-good/trusted_root.json"
    ))
    .unwrap();
    roots
        .create(
            &pp,
            &TrustRoot::new(
                "public-good",
                TrustRootSpec {
                    trusted_root: public_good,
                },
            ),
        )
        .await
        .unwrap();
    eventually("TrustRoot Valid=True", 30, &logs, || async {
        let s = roots.get("public-good").await.ok()?.status?;
        let v = s.conditions.iter().find(|c| c.type_ == "Valid")?;
        (v.status == ConditionStatus::True && s.observed_generation == Some(1)).then_some(())
    })
    .await;
    let patch = serde_json::json!({"spec": {"trustedRoot": "{\"tlogs\": 7}"}});
    roots
        .patch("public-good", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let msg = eventually("TrustRoot Valid=False", 30, &logs, || async {
        let s = roots.get("public-good").await.ok()?.status?;
        let v = s.conditions.iter().find(|c| c.type_ == "Valid")?;
        (v.status == ConditionStatus::False && s.observed_generation == Some(2) && v.observed_generation == Some(2))
            .then(|| v.message.clone())
    })
    .await;
    assert!(
        msg.starts_with("spec.trustedRoot: trusted root is not valid JSON at tlogs"),
        "{msg}"
    );
    roots.delete("public-good", &DeleteParams::default()).await.unwrap();

    // An unanchored regexp: Valid=False with the loader's words; the node keeps the old
    // fragment and reports the generation invalid.
    let mut broken = key_rule("cluster-caches", &caches_glob, key.public_key().to_pem());
    broken.authorities.push(PolicyAuthority {
        key: None,
        keyless: Some(KeylessAuthority {
            issuer: Some("https://token.actions.githubusercontent.com".into()),
            subject_regexp: Some("https://github.com/myorg/.*".into()),
            ..KeylessAuthority::default()
        }),
    });
    let patch = serde_json::json!({"spec": {"rules": [broken]}});
    tps.patch("caches", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let msg = eventually("Valid=False", 30, &logs, || async {
        let s = tps.get("caches").await.ok()?.status?;
        let v = s.conditions.iter().find(|c| c.type_ == "Valid")?;
        (v.status == ConditionStatus::False && s.observed_generation == Some(2)).then(|| v.message.clone())
    })
    .await;
    assert!(
        msg.contains("spec.rules[0].authorities[1].keyless.subjectRegExp: bad identity matcher"),
        "{msg}"
    );
    eventually("the node reports generation 2 invalid", 30, &logs, || async {
        let s = nodes.get("gpu-node-1").await.ok()?.status?;
        let tp = s.trust_policies.iter().find(|t| t.name == "caches")?;
        (tp.generation == 2 && tp.state == TrustPolicyState::Invalid).then_some(())
    })
    .await;
    assert_eq!(
        std::fs::read_to_string(&fragment).unwrap(),
        text,
        "the last good fragment stays"
    );

    // A cluster policy lowering the mode: refused by the node, counted on the policy.
    tps.create(
        &pp,
        &TrustPolicy::new(
            "lax",
            TrustPolicySpec {
                mode: Some(PolicyMode::Warn),
                rules: vec![key_rule("lax", "docker.io/library/*", key.public_key().to_pem())],
                ..TrustPolicySpec::default()
            },
        ),
    )
    .await
    .unwrap();
    let why = eventually("lax refused", 30, &logs, || async {
        let s = nodes.get("gpu-node-1").await.ok()?.status?;
        let tp = s.trust_policies.iter().find(|t| t.name == "lax")?;
        (tp.state == TrustPolicyState::Refused).then(|| tp.message.clone().unwrap_or_default())
    })
    .await;
    assert!(why.contains("mode warn would lower this node's mode enforce"), "{why}");
    assert!(!policy_d.join("kcache-cluster-trustpolicy-lax.yaml").exists());
    eventually("lax nodesRefusing=1", 30, &logs, || async {
        (tps.get("lax").await.ok()?.status?.nodes_refusing == 1).then_some(())
    })
    .await;

    // The agent restarted mid-way converges: same files, same report.
    assert!(
        agent.stop().is_some_and(|s| s.success()),
        "graceful stop:\n{}",
        agent.log()
    );
    let mtime = std::fs::metadata(&fragment).unwrap().modified().unwrap();
    agent = Proc::spawn(agent_cmd(), dir.join("agent.2.log"));
    eventually("the restarted agent reports", 30, &logs, || async {
        let s = nodes.get("gpu-node-1").await.ok()?.status?;
        let when = chrono::DateTime::parse_from_rfc3339(s.last_update.as_deref()?).ok()?;
        (chrono::Utc::now().signed_duration_since(when) < chrono::Duration::seconds(3)).then_some(())
    })
    .await;
    assert_eq!(
        std::fs::metadata(&fragment).unwrap().modified().unwrap(),
        mtime,
        "no rewrite"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    if let Some(pid) = agent.child.as_ref().map(Child::id) {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let rss = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap_or("VmRSS: ?");
        eprintln!("agent idle (4 watches, 2 policies, 4 caches): {rss}");
        bench["agent_idle_rss_kib"] = rss
            .trim_start_matches("VmRSS:")
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse::<u64>()
            .ok()
            .into();
    }
    // bench/run reads these figures (from a release build of this test).
    if let Ok(out) = std::env::var("KCACHE_BENCH_JSON") {
        std::fs::write(out, bench.to_string()).unwrap();
    }

    // Deletes: the agent's files go, the admin's stay.
    tps.delete("caches", &DeleteParams::default()).await.unwrap();
    tps.delete("lax", &DeleteParams::default()).await.unwrap();
    kcs.delete("llama", &DeleteParams::default()).await.unwrap();
    for name in ["rogue", "a100", "tampered"] {
        kcs.delete(name, &DeleteParams::default()).await.unwrap();
    }
    eventually("files gone", 30, &logs, || async {
        let left: Vec<String> = std::fs::read_dir(&policy_d)
            .unwrap()
            .chain(std::fs::read_dir(&caches_d).unwrap())
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("kcache-cluster-"))
            .collect();
        // Key directories of deleted policies go too (the empty parent may stay).
        let keys = std::fs::read_dir(policy_d.join("kcache-cluster.d")).map_or(0, |d| d.count());
        (left.is_empty() && keys == 0).then_some(())
    })
    .await;
    assert_eq!(
        std::fs::read_to_string(policy_d.join("00-admin.yaml")).unwrap(),
        admin_fragment
    );

    // The API server gone: kcached keeps enforcing what it has (it never talks to it).
    drop(agent);
    controller.stop();
    let mut api_server = api_server;
    api_server.stop();
    let health = kcache_core::api::Client::new(kcached.api_socket())
        .policy()
        .await
        .unwrap();
    assert_eq!(health.mode.as_str(), "enforce");
    kcached.stop();
    eprintln!("e2e: {:?}", t0.elapsed());
}

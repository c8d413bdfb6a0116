//! E2E through containerd's CRI gRPC API, the way the kubelet drives it: a real containerd 1.6
//! with kcached as its `kcache` proxy snapshotter in enforce mode, a loopback docker-registry
//! with busybox images signed by kcache's signer, host-network pods run by runc.
//!
//! Covers: a signed image pulls and runs; an unsigned one and a re-tagged (swapped) one are
//! refused with kcache's message; an image unpacked around the gate (`ctr pull` into the
//! kubelet's namespace) does not run; a signed index pulls; kcached restarted under a running
//! containerd; kcached SIGKILLed in the middle of an unpack.
//!
//! The containerd is the harness's (`KCACHE_CONTAINERD=1.6|1.7|2.1`), configured by kcache's
//! install code. On 2.1 CRI pulls through the transfer service: the image verifier refuses
//! first, the gate second; `local_pulls_on_2_1_refuse_through_the_gate_alone` covers the other
//! path (`kcache install containerd --local-pull`).
//!
//! Needs root, containerd, ctr, runc, containerd-shim-runc-v2 and busybox-static. Without them
//! the tests skip with a message, except under `CI=true`, where they fail.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use kcache_core::{
    containerd::{Flavor, PullPath},
    cosign::sign::sign_and_push,
    digest::Digest,
    refusal,
    signing::PrivateKey,
};
use kcache_plugin::proto::snapshots::{self as snap, snapshots_client::SnapshotsClient};
use kcache_tests::{
    containerd::{prerequisites, Containerd, ContainerdConfig, CriConfig, Gc},
    cri::{self, pb, Cri},
    images::{self, Image},
    kcached::{Kcached, KcachedConfig},
    TestRegistry,
};

const RUNNING: i32 = pb::ContainerState::ContainerRunning as i32;

/// containerd + kcached + registry, torn down in that order; their logs are printed when the
/// test fails (always with `KCACHE_E2E_LOGS=1`).
struct World {
    // Field order is drop order: containerd (and its containers) before kcached and the files.
    containerd: Containerd,
    kcached: Kcached,
    reg: TestRegistry,
    cri: Cri,
    key: PrivateKey,
    host: String,
    pods: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Drop for World {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("KCACHE_E2E_LOGS").is_some() {
            eprintln!("--- containerd log\n{}", self.containerd.log());
            eprintln!("{}", self.kcached.log());
        }
    }
}

/// None when the prerequisites are missing (and CI is not set).
async fn world(test: &str) -> Option<World> {
    world_with(test, PullPath::Transfer, Gc::EveryDeletion).await
}

/// A world whose CRI pulls by `pull` (containerd 2.1+) and whose garbage collector runs per `gc`.
async fn world_with(test: &str, pull: PullPath, gc: Gc) -> Option<World> {
    let programs = prerequisites(test, &["runc", "containerd-shim-runc-v2"])?;
    if !images::have_busybox_static() {
        let problem = "busybox-static is not installed (apt-get install -y busybox-static)";
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true: {test}: {problem}"
        );
        eprintln!("skipping {test}: {problem}");
        return None;
    }
    let reg = TestRegistry::start();
    let host = reg.host();
    let tmp = tempfile::Builder::new().prefix("kc-cri").tempdir_in("/tmp").unwrap();
    let dir = tmp.path();
    let key = PrivateKey::generate_p256();
    std::fs::write(dir.join("cosign.pub"), key.public_key().to_pem()).unwrap();
    std::fs::write(
        dir.join("policy.yaml"),
        format!(
            "mode: enforce\ndefault: deny\nrules:\n  - name: e2e-signed\n    images: [\"{host}/e2e/*\"]\n    authorities:\n      - key: {{path: cosign.pub}}\n    transparencyLog: off\n"
        ),
    )
    .unwrap();

    // The pod sandbox image: blocks like pause does, and must pass the policy too.
    let pause = format!("{host}/e2e/pause:1");
    Image::busybox("pause", &["/bin/busybox", "sleep", "3600"])
        .push(&reg, "e2e/pause:1")
        .await;
    sign_and_push(&reg.client(), &key, &reg.reference("e2e/pause:1"), false)
        .await
        .unwrap();

    // kcached reads containerd's registry hosts (what `kcache install containerd` sets up).
    let kcached = Kcached::start(
        Path::new(env!("CARGO_BIN_EXE_kcached")),
        &dir.join("kcached"),
        KcachedConfig {
            policy: Some(dir.join("policy.yaml")),
            insecure: vec![host.clone()],
            config_toml: format!(
                "[registry]\nconfig_path = \"{}\"\n",
                dir.join("containerd/certs.d").display()
            ),
            ..KcachedConfig::default()
        },
    );
    let containerd = Containerd::start(
        &programs,
        &dir.join("containerd"),
        &ContainerdConfig {
            kcache_socket: Some(kcached.snapshotter_socket()),
            cri: Some(CriConfig {
                sandbox_image: pause,
                snapshotter: "kcache".into(),
                plain_http: vec![host.clone()],
                pull,
                ..CriConfig::default()
            }),
            verifier: Some(env!("CARGO_BIN_EXE_kcache-image-verifier").into()),
            // The image verifier containerd 2.x runs: kcached's API, else this policy.
            env: vec![
                ("KCACHE_API_SOCKET".into(), kcached.api_socket().display().to_string()),
                ("KCACHE_POLICY".into(), dir.join("policy.yaml").display().to_string()),
                ("KCACHE_INSECURE_REGISTRY".into(), host.clone()),
                (
                    "KCACHE_REGISTRY_CONFIG_PATH".into(),
                    dir.join("containerd/certs.d").display().to_string(),
                ),
            ],
            gc,
        },
    );
    let cri = Cri::ready(&containerd).await;
    let pods = dir.join("pods");
    std::fs::create_dir_all(&pods).unwrap();
    Some(World {
        containerd,
        kcached,
        reg,
        cri,
        key,
        host,
        pods,
        _tmp: tmp,
    })
}

impl World {
    fn image(&self, repo_tag: &str) -> String {
        format!("{}/{repo_tag}", self.host)
    }

    async fn sign(&self, repo_tag: &str) {
        sign_and_push(&self.reg.client(), &self.key, &self.reg.reference(repo_tag), false)
            .await
            .unwrap();
    }

    /// A busybox image under `repo_tag`, signed when `signed`.
    async fn push(&self, repo_tag: &str, marker: &str, signed: bool) -> Digest {
        let pushed = Image::busybox(marker, &["/bin/busybox", "sleep", "3600"])
            .push(&self.reg, repo_tag)
            .await;
        if signed {
            self.sign(repo_tag).await;
        }
        pushed.digest
    }

    /// `kcache doctor` against this node's containerd config `config` and kcached.
    fn doctor(&self, config: std::path::PathBuf, extra: &[&str]) -> std::process::Output {
        std::process::Command::new(env!("CARGO_BIN_EXE_kcache"))
            .args(["doctor", "--config"])
            .arg(config)
            .arg("--containerd-bin")
            .arg(&self.containerd.programs().containerd)
            .arg("--snapshotter-socket")
            .arg(self.kcached.snapshotter_socket())
            .arg("--api-socket")
            .arg(self.kcached.api_socket())
            .arg("--cri-socket")
            .arg(self.containerd.address())
            .args(extra)
            .output()
            .unwrap()
    }

    fn pod(&self, name: &str) -> pb::PodSandboxConfig {
        cri::host_network_pod(name, &self.pods.join(name))
    }

    /// Starts a container of `image` running `script` in `pod` and waits until it runs and has
    /// logged `expect`.
    async fn run(
        &self,
        pod: &str,
        sandbox: &pb::PodSandboxConfig,
        name: &str,
        image: &str,
        script: &str,
        expect: &str,
    ) -> String {
        let id = self
            .cri
            .start_container(pod, sandbox, cri::container(name, image, &["/bin/sh", "-c", script]))
            .await
            .unwrap_or_else(|e| panic!("CreateContainer/StartContainer {name} ({image}): {e}"));
        let log = Path::new(&sandbox.log_directory).join(format!("{name}.log"));
        let start = Instant::now();
        loop {
            let status = self.cri.container_status(&id).await.unwrap();
            let logged = std::fs::read_to_string(&log).unwrap_or_default();
            if status.state == RUNNING && logged.contains(expect) {
                return id;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "container {name} ({image}) state {} ({}), log {logged:?}, expected {expect:?}",
                status.state,
                status.message
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn image_present(&self, image: &str) -> bool {
        self.cri
            .images
            .clone()
            .image_status(pb::ImageStatusRequest {
                image: Some(cri::image_spec(image)),
                verbose: false,
            })
            .await
            .unwrap()
            .into_inner()
            .image
            .is_some()
    }

    /// kcached's snapshots, asked on its own socket.
    async fn kcache_snapshots(&self) -> Vec<snap::Info> {
        let channel = cri::unix_channel(&self.kcached.snapshotter_socket())
            .await
            .expect("connect to kcached's snapshotter socket");
        let mut stream = SnapshotsClient::new(channel)
            .list(snap::ListSnapshotsRequest {
                snapshotter: "kcache".into(),
                filters: Vec::new(),
            })
            .await
            .unwrap()
            .into_inner();
        let mut all = Vec::new();
        while let Some(page) = stream.message().await.unwrap() {
            all.extend(page.info);
        }
        all
    }
}

impl World {
    /// Usage, on kcached's own socket, of each snapshot: it fails for one whose directory is gone.
    async fn kcache_usage_of_each(&self, listed: &[snap::Info]) {
        let channel = cri::unix_channel(&self.kcached.snapshotter_socket())
            .await
            .expect("connect to kcached's snapshotter socket");
        let mut c = SnapshotsClient::new(channel);
        for info in listed {
            c.usage(snap::UsageRequest {
                snapshotter: "kcache".into(),
                key: info.name.clone(),
            })
            .await
            .unwrap_or_else(|e| panic!("kcached lists {} but cannot measure it: {e}", info.name));
        }
    }
}

impl World {
    /// Pulls `image` through CRI: it must be refused, as [`assert_denied`] says.
    async fn pull_refused(&self, image: &str, digests: &[&Digest]) {
        let err = self
            .cri
            .pull(image, None)
            .await
            .expect_err(&format!("{image} must not pull"));
        assert_denied(&err, image, digests);
    }
}

/// The pull failed with kcache's refusal (the gate's or the image verifier's: one line both
/// print), naming the image (the verifier names a pinned one by its repository), one of `digests` (the verifier refuses an index by its own
/// digest, the gate by the platform manifest's) and the rule.
fn assert_denied(err: &tonic::Status, image: &str, digests: &[&Digest]) {
    let msg = err.message();
    let r = refusal::find(msg).unwrap_or_else(|| {
        panic!(
            "PullImage of {image} must fail with kcache's refusal; got {:?}: {msg}",
            err.code()
        )
    });
    assert!(
        r.rule == "e2e-signed"
            && (r.image == image || image.starts_with(&format!("{}@", r.image)))
            && digests.iter().any(|d| d.as_str() == r.digest),
        "PullImage of {image} must be refused naming the image, one of {digests:?} and the rule: {r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_image_pulls_and_runs_in_a_host_network_pod() {
    let Some(w) = world("a_signed_image_pulls_and_runs_in_a_host_network_pod").await else {
        return;
    };
    let digest = w.push("e2e/app:v1", "app-v1", true).await;
    let image = w.image("e2e/app:v1");
    let image_ref = w.cri.pull(&image, None).await.unwrap();
    assert!(image_ref.starts_with("sha256:"), "{image_ref}");
    assert!(w.image_present(&image).await);

    // The gate marked the image's layer as verified, with the manifest digest and the rule.
    let verified: Vec<_> = w
        .kcache_snapshots()
        .await
        .into_iter()
        .filter(|i| i.labels.get("kcache.dev/verified") == Some(&digest.to_string()))
        .collect();
    assert!(
        !verified.is_empty(),
        "no snapshot of {image} carries kcache.dev/verified={digest}"
    );
    assert!(verified
        .iter()
        .all(|i| i.labels.get("kcache.dev/verified-rule").map(String::as_str) == Some("e2e-signed")));

    let sandbox = w.pod("signed");
    let pod = w.cri.run_pod(&sandbox).await.unwrap();
    let id = w
        .run(
            &pod,
            &sandbox,
            "app",
            &image,
            "echo hi > /tmp/x; cat /tmp/x /etc/kcache-e2e; sleep 30",
            "app-v1",
        )
        .await;
    let log = std::fs::read_to_string(w.pods.join("signed/app.log")).unwrap();
    assert!(log.contains(" stdout F hi\n"), "{log}");
    // The writable layer is kcache's: the container's rootfs is mounted from its root.
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        mounts.contains(&w.kcached.root().join("snapshots").display().to_string()),
        "no mount of kcache's snapshots is in place while {id} runs"
    );
    w.cri.remove_pod(&pod).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsigned_image_is_refused_with_kcaches_message() {
    let Some(w) = world("an_unsigned_image_is_refused_with_kcaches_message").await else {
        return;
    };
    let digest = w.push("e2e/unsigned:v1", "unsigned", false).await;
    let image = w.image("e2e/unsigned:v1");
    w.pull_refused(&image, &[&digest]).await;
    assert!(!w.image_present(&image).await, "a refused image must not be listed");
    // Nothing of it is left in kcache: no layer snapshot carries its content.
    assert!(w
        .kcache_snapshots()
        .await
        .iter()
        .all(|i| i.kind != snap::Kind::Committed as i32 || i.labels.contains_key("kcache.dev/verified")));

    // `kcache doctor` on this node: nothing lets a pull skip the gate, and a canary (unsigned,
    // with a layer of its own) pulled through CRI is refused.
    w.push("e2e/canary:v1", "canary", false).await;
    let canary = w.image("e2e/canary:v1");
    let out = w.doctor(w.containerd.config(), &["--canary", &canary]);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0), "{said}");
    for line in [
        "ok    cri-snapshotter",
        "ok    snapshot-annotations",
        "ok    policy-mode",
        "ok    chain-check",
        "ok    registry-hosts",
        "0 problem(s)",
    ] {
        assert!(said.contains(line), "{line:?} missing in:\n{said}");
    }
    assert!(
        said.contains(&format!(
            "ok    canary                {canary} was refused: kcache: image {canary}"
        )) && said.contains("denied by rule e2e-signed"),
        "{said}"
    );
    assert!(!w.image_present(&canary).await);
    let (broken, check) = w.broken_config();
    let out = w.doctor(broken, &[]);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains(&format!("FAIL  {check}")) && said.contains("1 problem(s)"),
        "{said}"
    );
}

impl World {
    /// A copy of this node's config with one thing kcache set undone, and the check that must
    /// FAIL for it: CRI's snapshot annotations off (1.x, 2.0: the gate would see no image
    /// labels), kcache out of the transfer service's unpack_config (2.1: every CRI pull fails).
    fn broken_config(&self) -> (PathBuf, &'static str) {
        let main = std::fs::read_to_string(self.containerd.config()).unwrap();
        let broken = self.pods.join("broken.toml");
        if self.containerd.programs().flavor != Flavor::V2_1 {
            let (from, to) = (
                "disable_snapshot_annotations = false",
                "disable_snapshot_annotations = true",
            );
            let (text, drop_in) = match self.drop_in() {
                Some(d) => (std::fs::read_to_string(&d).unwrap(), Some(d)),
                None => (main.clone(), None),
            };
            assert!(text.contains(from), "{text}");
            self.write_broken(&broken, &main, drop_in.as_deref(), &text.replace(from, to));
            return (broken, "snapshot-annotations");
        }
        let drop_in = self.drop_in().expect("2.x: kcache's drop-in");
        let text = std::fs::read_to_string(&drop_in).unwrap();
        let from = "snapshotter = \"kcache\" }";
        assert!(text.contains(from), "{text}");
        let text = text.replace(from, "snapshotter = \"native\" }");
        self.write_broken(&broken, &main, Some(&drop_in), &text);
        (broken, "unpack-config")
    }

    /// kcache's drop-in, where the config imports one.
    fn drop_in(&self) -> Option<PathBuf> {
        let d = self.containerd.config().with_file_name("conf.d/kcache.toml");
        d.is_file().then_some(d)
    }

    /// Writes `broken` as the main config; with a drop-in, `text` goes to a copy of it that the
    /// copy of the main config imports instead.
    fn write_broken(&self, broken: &Path, main: &str, drop_in: Option<&Path>, text: &str) {
        match drop_in {
            None => std::fs::write(broken, text).unwrap(),
            Some(d) => {
                let copy = self.pods.join("broken-drop-in.toml");
                std::fs::write(&copy, text).unwrap();
                let main = main.replace(d.to_str().unwrap(), copy.to_str().unwrap());
                std::fs::write(broken, main).unwrap();
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_unpacked_around_the_gate_does_not_run() {
    let Some(w) = world("an_image_unpacked_around_the_gate_does_not_run").await else {
        return;
    };
    w.push("e2e/sideload:v1", "sideload", false).await;
    let image = w.image("e2e/sideload:v1");
    // `ctr pull` into the kubelet's namespace: no CRI labels, so the unpack is not gated.
    // (containerd 2.x: a client pull, `--local`: the transfer service would run the verifier.)
    let mut pull = vec!["images", "pull", "--plain-http", "--snapshotter", "kcache"];
    if w.containerd.programs().flavor.is_2x() {
        pull.push("--local");
    }
    pull.push(&image);
    w.containerd.ctr_ok("k8s.io", &pull);
    assert!(w.image_present(&image).await, "CRI sees the side-loaded image");
    let sandbox = w.pod("sideload");
    let pod = w.cri.run_pod(&sandbox).await.unwrap();
    // The container's rootfs would sit on an unverified chain: the chain check refuses it.
    let err = w
        .cri
        .start_container(
            &pod,
            &sandbox,
            cri::container("app", &image, &["/bin/sh", "-c", "sleep 30"]),
        )
        .await
        .expect_err("a container on an unverified chain must not be created");
    assert!(
        err.message().contains("kcache: prepare") && err.message().contains("refused by the chain check"),
        "CreateContainer must fail with kcache's reason: {err}"
    );
    eprintln!("CreateContainer on the side-loaded image: {}", err.message());
    w.cri.remove_pod(&pod).await.unwrap();
}

/// An air-gapped node: containerd and kcache read the same hosts.toml, which sends the upstream
/// registry's pulls to a mirror (a second docker-registry holding the same images and `.sig`
/// signatures, copied byte for byte). With the upstream stopped, a signed image pulls and runs
/// under the rule that names the upstream, an unsigned one is refused; then the mirror serves
/// another (unsigned) image under the signed tag: refused, naming the digest containerd unpacks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_through_a_mirror_are_verified_with_the_mirrors_signatures() {
    let Some(mut w) = world("pulls_through_a_mirror_are_verified_with_the_mirrors_signatures").await else {
        return;
    };
    let signed = w.push("e2e/mirrored:1", "mirrored", true).await;
    let unsigned = w.push("e2e/mirrored:2", "not-signed", false).await;
    let mirror = TestRegistry::start();
    let pause = w
        .reg
        .client()
        .resolve(&w.reg.reference("e2e/pause:1"))
        .await
        .unwrap()
        .digest;
    for tag in [
        "e2e/pause:1".to_string(),
        format!("e2e/pause:sha256-{}.sig", pause.hex()),
        "e2e/mirrored:1".into(),
        format!("e2e/mirrored:sha256-{}.sig", signed.hex()),
        "e2e/mirrored:2".into(),
    ] {
        w.reg.copy_to(&mirror, &tag).await;
    }
    let hosts = w.containerd.hosts_dir().join(&w.host).join("hosts.toml");
    std::fs::write(
        &hosts,
        format!(
            "server = \"http://{}\"\n\n[host.\"http://{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
            w.host,
            mirror.host()
        ),
    )
    .unwrap();
    w.reg.stop();

    let image = w.image("e2e/mirrored:1");
    w.cri
        .pull(&image, None)
        .await
        .expect("the signed image pulls from the mirror");
    let sandbox = w.pod("mirrored");
    let pod = w
        .cri
        .run_pod(&sandbox)
        .await
        .expect("the sandbox image pulls from the mirror");
    w.run(
        &pod,
        &sandbox,
        "app",
        &image,
        "cat /etc/kcache-e2e; sleep 30",
        "mirrored",
    )
    .await;
    assert!(w
        .kcache_snapshots()
        .await
        .iter()
        .any(|i| i.labels.get("kcache.dev/verified") == Some(&signed.to_string())
            && i.labels.get("kcache.dev/verified-rule").map(String::as_str) == Some("e2e-signed")));
    w.cri.remove_pod(&pod).await.unwrap();

    w.pull_refused(&w.image("e2e/mirrored:2"), &[&unsigned]).await;

    // The mirror now serves another image under the signed tag (its signature stays on the
    // mirror): what containerd unpacks is what is verified, so it is refused.
    let other = Image::busybox("swapped-on-mirror", &["/bin/busybox", "sleep", "3600"])
        .push(&mirror, "e2e/mirrored:1")
        .await
        .digest;
    assert_ne!(other, signed);
    w.pull_refused(&image, &[&other]).await;
    drop(mirror);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swapped_tag_is_refused() {
    let Some(w) = world("a_swapped_tag_is_refused").await else {
        return;
    };
    let image = w.image("e2e/swap:v1");
    w.push("e2e/swap:v1", "original", true).await;
    w.cri.pull(&image, None).await.expect("the signed original pulls");
    // Someone with push rights re-tags another image (unsigned) as the signed tag.
    let swapped = w.push("e2e/swap:v1", "swapped", false).await;
    let err = w
        .cri
        .pull(&image, None)
        .await
        .expect_err("the swapped tag must not pull");
    assert_denied(&err, &image, &[&swapped]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_index_pulls_by_tag_or_by_its_digest_and_runs() {
    let Some(w) = world("a_signed_index_pulls_by_tag_or_by_its_digest_and_runs").await else {
        return;
    };
    let platform = Image::busybox("from-index", &["/bin/busybox", "sleep", "3600"])
        .push(&w.reg, "e2e/multi:amd64-only")
        .await;
    images::push_index(&w.reg, "e2e/multi:v1", &platform).await;
    w.sign("e2e/multi:v1").await;
    let image = w.image("e2e/multi:v1");
    w.cri.pull(&image, None).await.expect("a signed index pulls");
    let sandbox = w.pod("index");
    let pod = w.cri.run_pod(&sandbox).await.unwrap();
    w.run(
        &pod,
        &sandbox,
        "app",
        &image,
        "cat /etc/kcache-e2e; sleep 30",
        "from-index",
    )
    .await;
    // Pulled by the index's digest, as a pinned Deployment does: CRI labels the layers with
    // `repo@sha256:<index>` and the platform manifest; the pinned index is what vouches for it.
    let platform = Image::busybox("from-pinned-index", &["/bin/busybox", "sleep", "3600"])
        .push(&w.reg, "e2e/multi:amd64-pinned")
        .await;
    let index = images::push_index(&w.reg, "e2e/multi:pinned", &platform).await;
    w.sign("e2e/multi:pinned").await;
    let image = w.image(&format!("e2e/multi@{index}"));
    w.cri
        .pull(&image, None)
        .await
        .expect("a signed index pulls by its digest");
    w.run(
        &pod,
        &sandbox,
        "pinned",
        &image,
        "cat /etc/kcache-e2e; sleep 30",
        "from-pinned-index",
    )
    .await;
    // The same platform manifest under an unsigned index gains nothing from the signed one.
    let platform = Image::busybox("from-unsigned-index", &["/bin/busybox", "sleep", "3600"])
        .push(&w.reg, "e2e/multi:amd64-unsigned")
        .await;
    let unsigned = images::push_index(&w.reg, "e2e/multi:unsigned", &platform).await;
    let image = w.image(&format!("e2e/multi@{unsigned}"));
    let err = w
        .cri
        .pull(&image, None)
        .await
        .expect_err("an unsigned index is refused");
    assert_denied(&err, &image, &[&platform.digest, &unsigned]);
    w.cri.remove_pod(&pod).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kcached_restarts_under_a_running_containerd() {
    let Some(mut w) = world("kcached_restarts_under_a_running_containerd").await else {
        return;
    };
    w.push("e2e/app:v1", "app-v1", true).await;
    let image = w.image("e2e/app:v1");
    w.cri.pull(&image, None).await.unwrap();
    let sandbox = w.pod("restart");
    let pod = w.cri.run_pod(&sandbox).await.unwrap();
    let first = w
        .run(&pod, &sandbox, "first", &image, "echo first; sleep 60", "first")
        .await;
    let before = w
        .containerd
        .ctr_ok("k8s.io", &["snapshots", "--snapshotter", "kcache", "ls"]);
    let labelled = |mut all: Vec<snap::Info>| {
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all.into_iter()
            .map(|i| {
                (
                    i.name,
                    i.parent,
                    i.kind,
                    i.labels.into_iter().collect::<std::collections::BTreeMap<_, _>>(),
                )
            })
            .collect::<Vec<_>>()
    };
    let kcache_before = labelled(w.kcache_snapshots().await);

    w.kcached.restart();
    assert_eq!(
        labelled(w.kcache_snapshots().await),
        kcache_before,
        "kcached's snapshots (names, parents, kinds, labels) changed across a restart"
    );

    // The running container does not notice.
    assert_eq!(w.cri.container_status(&first).await.unwrap().state, RUNNING);
    // containerd reconnects (its gRPC connection may back off for a second after a failed dial):
    // `usage` asks the backend about every snapshot, the running container's included.
    let start = Instant::now();
    loop {
        let out = w
            .containerd
            .ctr("k8s.io", &["snapshots", "--snapshotter", "kcache", "usage"]);
        if out.status.success() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "containerd did not reconnect to kcached: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let after = w
        .containerd
        .ctr_ok("k8s.io", &["snapshots", "--snapshotter", "kcache", "ls"]);
    assert_eq!(before, after);
    // New work goes through the new daemon: another container, and a pull of a new image.
    w.run(&pod, &sandbox, "second", &image, "echo second; sleep 60", "second")
        .await;
    w.push("e2e/later:v1", "later", true).await;
    w.cri.pull(&w.image("e2e/later:v1"), None).await.unwrap();
    assert_eq!(w.cri.container_status(&first).await.unwrap().state, RUNNING);
    w.cri.remove_pod(&pod).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kcached_killed_during_an_unpack_recovers_and_the_pull_can_be_retried() {
    // containerd's garbage collector runs only when asked (RemoveImage below): a threshold
    // firing while kcached is down or just back would remove the crash's snapshots before they
    // are looked at.
    let Some(mut w) = world_with(
        "kcached_killed_during_an_unpack_recovers_and_the_pull_can_be_retried",
        PullPath::Transfer,
        Gc::OnlySynchronous,
    )
    .await
    else {
        return;
    };
    // A ~130 MB image in 8 incompressible layers over busybox: long enough to kill mid-unpack.
    const LAYERS: u64 = 8;
    let mut big = Image::busybox("big", &["/bin/busybox", "sleep", "3600"]);
    for n in 0..LAYERS {
        big.layers
            .push(images::random_layer(&format!("l{n}"), 0x6b63_6163_6865 + n, 16 << 20));
    }
    big.push(&w.reg, "e2e/big:v1").await;
    w.sign("e2e/big:v1").await;
    let image = w.image("e2e/big:v1");

    let snapshots_dir = w.kcached.root().join("snapshots");
    let count = |dir: &Path| std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0);
    let baseline = count(&snapshots_dir);
    let cri = w.cri.clone();
    let pulling = {
        let image = image.clone();
        tokio::spawn(async move { cri.pull(&image, None).await })
    };
    // Kill as soon as the unpack is under way: two layers in, the rest to come.
    let start = Instant::now();
    while count(&snapshots_dir) < baseline + 2 {
        assert!(!pulling.is_finished(), "the pull ended before the unpack was seen");
        assert!(start.elapsed() < Duration::from_secs(60), "no unpack started");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    w.kcached.kill9();
    let first = pulling.await.unwrap();
    assert!(
        first.is_err(),
        "the pull survived a SIGKILLed snapshotter: the kill came too late"
    );
    eprintln!("pull while kcached died: {:?}", first.unwrap_err().message());

    w.kcached.restart();
    // kcached's metadata reopened; every snapshot it lists has its directory (nothing half-made).
    let listed = w.kcache_snapshots().await;
    assert!(!listed.is_empty());
    w.kcache_usage_of_each(&listed).await;
    // containerd's view agrees with the backend: each of its kcache snapshots answers Usage.
    let start = Instant::now();
    loop {
        let out = w
            .containerd
            .ctr("k8s.io", &["snapshots", "--snapshotter", "kcache", "usage"]);
        if out.status.success() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "containerd and kcached disagree after the crash: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The retry succeeds, and the image is whole. containerd's connection to the snapshotter
    // socket backs off after the failed dial: the kubelet retries a pull with a back-off too.
    let start = Instant::now();
    loop {
        match w.cri.pull(&image, None).await {
            Ok(_) => break,
            Err(e) if e.code() == tonic::Code::Unavailable && start.elapsed() < Duration::from_secs(60) => {
                eprintln!("retrying the pull: {}", e.message());
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => panic!("the retried pull: {e}"),
        }
    }
    let sandbox = w.pod("big");
    let pod = w.cri.run_pod(&sandbox).await.unwrap();
    let all = (0..LAYERS).map(|n| format!("l{n}")).collect::<Vec<_>>().join(" ");
    w.run(
        &pod,
        &sandbox,
        "big",
        &image,
        "echo $(ls /data); sleep 30",
        &format!("{all}\n"),
    )
    .await;
    w.cri.remove_pod(&pod).await.unwrap();

    // Once every image is gone, containerd's garbage collector removes every snapshot from
    // kcached, the crash's leftovers (the interrupted extraction, its half-written directory)
    // included: the two stores agree to the last entry.
    let mut images = w.cri.images.clone();
    let listed = images
        .list_images(pb::ListImagesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .images;
    for image in listed {
        images
            .remove_image(pb::RemoveImageRequest {
                image: Some(cri::image_spec(&image.id)),
            })
            .await
            .unwrap();
    }
    let start = Instant::now();
    loop {
        let left = w.kcache_snapshots().await;
        let dirs = count(&snapshots_dir);
        if left.is_empty() && dirs == 0 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "after removing every image kcached still holds {} snapshots ({:?}) and {dirs} directories",
            left.len(),
            left.iter().map(|i| &i.name).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The same manifest (the same digest) signed under one name and pulled under another: the
/// signature lives with the repository it was pushed to, so the copy is unsigned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_image_retagged_into_another_repository_is_refused() {
    let Some(w) = world("a_signed_image_retagged_into_another_repository_is_refused").await else {
        return;
    };
    let signed = w.push("e2e/origin:v1", "retag", true).await;
    let copy = w.push("e2e/copy:v1", "retag", false).await;
    assert_eq!(signed, copy, "the same image under two names");
    let image = w.image("e2e/copy:v1");
    let err = w.cri.pull(&image, None).await.expect_err("the copy must not pull");
    assert_denied(&err, &image, &[&copy]);
    w.cri
        .pull(&w.image("e2e/origin:v1"), None)
        .await
        .expect("the signed original pulls");
}

/// containerd 2.1 with `kcache install containerd --local-pull`: CRI pulls through the client,
/// so no image verifier runs for them and the gate alone must refuse. (1.x and 2.0 pull only
/// this way: every other test here covers that path there.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_pulls_on_2_1_refuse_through_the_gate_alone() {
    let test = "local_pulls_on_2_1_refuse_through_the_gate_alone";
    let Some(w) = world_with(test, PullPath::Local, Gc::EveryDeletion).await else {
        return;
    };
    if w.containerd.programs().flavor != Flavor::V2_1 {
        eprintln!(
            "{test}: containerd {} pulls only locally; the other tests cover it",
            w.containerd.programs().version
        );
        return;
    }
    // A signed image runs.
    let digest = w.push("e2e/app:v1", "app-v1", true).await;
    let image = w.image("e2e/app:v1");
    w.cri.pull(&image, None).await.expect("a signed image pulls");
    assert!(w
        .kcache_snapshots()
        .await
        .iter()
        .any(|i| i.labels.get("kcache.dev/verified") == Some(&digest.to_string())));
    let sandbox = w.pod("local");
    let pod = w.cri.run_pod(&sandbox).await.unwrap();
    w.run(&pod, &sandbox, "app", &image, "cat /etc/kcache-e2e; sleep 30", "app-v1")
        .await;
    // Unsigned, swapped and re-tagged images are refused by the gate, its message reaching CRI.
    let unsigned = w.push("e2e/unsigned:v1", "unsigned", false).await;
    let err = w.cri.pull(&w.image("e2e/unsigned:v1"), None).await.unwrap_err();
    assert_denied(&err, &w.image("e2e/unsigned:v1"), &[&unsigned]);
    // The gate's refusal: kcached's PermissionDenied, which CRI passes on as the code.
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");
    let swapped = w.push("e2e/app:v1", "swapped", false).await;
    let err = w.cri.pull(&image, None).await.unwrap_err();
    assert_denied(&err, &image, &[&swapped]);
    // (Its layers must not be on the node yet: a local pull does not unpack those again, so the
    // gate would not be asked; the chain check then rests on the signed original's verdict.)
    let signed = w.push("e2e/origin:v1", "retag-local", true).await;
    let copy = w.push("e2e/copy:v1", "retag-local", false).await;
    assert_eq!(copy, signed);
    let err = w.cri.pull(&w.image("e2e/copy:v1"), None).await.unwrap_err();
    assert_denied(&err, &w.image("e2e/copy:v1"), &[&copy]);
    // Unpacked around the gate: the chain check refuses the container.
    w.push("e2e/sideload:v1", "sideload", false).await;
    let side = w.image("e2e/sideload:v1");
    w.containerd.ctr_ok(
        "k8s.io",
        &[
            "images",
            "pull",
            "--local",
            "--plain-http",
            "--snapshotter",
            "kcache",
            &side,
        ],
    );
    let err = w
        .cri
        .start_container(
            &pod,
            &sandbox,
            cri::container("side", &side, &["/bin/sh", "-c", "sleep 30"]),
        )
        .await
        .expect_err("a container on an unverified chain must not be created");
    assert!(err.message().contains("refused by the chain check"), "{err}");
    // kcache doctor: a working local-pull node has no FAIL; the canary is refused by the gate.
    w.push("e2e/canary:v1", "canary", false).await;
    let canary = w.image("e2e/canary:v1");
    let out = w.doctor(w.containerd.config(), &["--canary", &canary]);
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{said}");
    assert!(
        said.contains("ok    transfer-service") && said.contains("ok    canary") && said.contains("0 problem(s)"),
        "{said}"
    );
    w.cri.remove_pod(&pod).await.unwrap();
}

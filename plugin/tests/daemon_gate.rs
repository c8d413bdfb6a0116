//! kcached as a process: the verification gate on the Snapshots API (the way containerd's CRI
//! calls it during a pull), the chain check, label protection, the kcache API, metrics and policy
//! hot reload, against a real docker-registry on loopback with images signed by kcache's signer.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use hyper_util::rt::TokioIo;
use kcache_core::{cosign::sign::sign_and_push, digest::Digest, signing::PrivateKey};
use kcache_plugin::{
    api::Client as Api,
    proto::snapshots::{self as pb, snapshots_client::SnapshotsClient},
};
use kcache_tests::TestRegistry;
use tokio::net::UnixStream;
use tonic::{transport::Endpoint, Code};

const IMAGE_REF: &str = "containerd.io/snapshot/cri.image-ref";
const MANIFEST: &str = "containerd.io/snapshot/cri.manifest-digest";
const TARGET: &str = "containerd.io/snapshot.ref";

struct Daemon {
    child: Child,
    dir: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Daemon {
    fn start(dir: &Path, host: &str, extra: &[&str]) -> Self {
        let log = std::fs::File::create(dir.join("kcached.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_kcached"))
            .args(["--policy".as_ref(), dir.join("policy.yaml").as_os_str()])
            .args(["--snapshotter-socket".as_ref(), dir.join("snap.sock").as_os_str()])
            .args(["--api-socket".as_ref(), dir.join("api.sock").as_os_str()])
            .args(["--root".as_ref(), dir.join("root").as_os_str()])
            .args(["--cache-root".as_ref(), dir.join("caches").as_os_str()])
            .args(["--caches-dir".as_ref(), dir.join("caches.d").as_os_str()])
            .args(["--run-dir".as_ref(), dir.join("run").as_os_str()])
            .args(["--config".as_ref(), dir.join("config.toml").as_os_str()])
            .args(["--insecure-registry", host])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut d = Self {
            child,
            dir: dir.to_owned(),
        };
        let log = dir.join("kcached.log");
        kcache_tests::socket::wait_until_listening(
            "kcached",
            &[&dir.join("snap.sock"), &dir.join("api.sock")],
            Some(&mut d.child),
            || std::fs::read_to_string(&log).unwrap_or_default(),
            kcache_tests::socket::LISTEN_TIMEOUT,
        );
        d
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("kcached.log")).unwrap_or_default()
    }

    async fn snapshots(&self) -> SnapshotsClient<tonic::transport::Channel> {
        let path = self.dir.join("snap.sock");
        let channel = Endpoint::try_from("http://kcache.invalid")
            .unwrap()
            .connect_with_connector(tower::service_fn(move |_| {
                let path = path.clone();
                async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
            }))
            .await
            .unwrap();
        SnapshotsClient::new(channel)
    }

    fn api(&self) -> Api {
        Api::new(self.dir.join("api.sock"))
    }
}

fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

fn prepare(key: &str, parent: &str, l: HashMap<String, String>) -> pb::PrepareSnapshotRequest {
    pb::PrepareSnapshotRequest {
        snapshotter: "kcache".into(),
        key: key.into(),
        parent: parent.into(),
        labels: l,
    }
}

fn commit(name: &str, key: &str) -> pb::CommitSnapshotRequest {
    pb::CommitSnapshotRequest {
        snapshotter: "kcache".into(),
        name: name.into(),
        key: key.into(),
        labels: HashMap::new(),
    }
}

async fn stat_labels(c: &mut SnapshotsClient<tonic::transport::Channel>, key: &str) -> HashMap<String, String> {
    c.stat(pb::StatSnapshotRequest {
        snapshotter: "kcache".into(),
        key: key.into(),
    })
    .await
    .unwrap()
    .into_inner()
    .info
    .unwrap()
    .labels
}

fn policy(host: &str, mode: &str) -> String {
    format!(
        "mode: {mode}\ndefault: deny\nrules:\n  - name: apps\n    images: [\"{host}/apps/*\"]\n    authorities:\n      - key: {{path: cosign.pub}}\n    transparencyLog: off\n"
    )
}

struct World {
    reg: TestRegistry,
    _tmp: tempfile::TempDir,
    daemon: Daemon,
    host: String,
    signed: Digest,
    unsigned: Digest,
    signing_key: PrivateKey,
}

async fn world() -> World {
    world_with(&[]).await
}

async fn world_with(extra: &[&str]) -> World {
    let reg = TestRegistry::start();
    let host = reg.host();
    let tmp = tempfile::Builder::new().prefix("kc-gate").tempdir().unwrap();
    let d = tmp.path();
    let (signed, _) = reg.push_image("apps/web:v1", "web").await;
    let (unsigned, _) = reg.push_image("apps/other:v1", "other").await;
    let key = PrivateKey::generate_p256();
    std::fs::write(d.join("cosign.pub"), key.public_key().to_pem()).unwrap();
    sign_and_push(&reg.client(), &key, &reg.reference("apps/web:v1"), false)
        .await
        .unwrap();
    std::fs::write(d.join("policy.yaml"), policy(&host, "enforce")).unwrap();
    std::fs::write(d.join("config.toml"), "policy_reload_seconds = 1\n").unwrap();
    let daemon = Daemon::start(d, &host, extra);
    World {
        reg,
        _tmp: tmp,
        daemon,
        host,
        signed,
        unsigned,
        signing_key: key,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gate_verifies_pulls_and_containers_run_only_on_verified_chains() {
    let w = world().await;
    let mut c = w.daemon.snapshots().await;
    let web = format!("{}/apps/web:v1", w.host);
    let other = format!("{}/apps/other:v1", w.host);

    // A CRI pull of the signed image: the layer is admitted and marked.
    let pull = |image: &str, digest: &Digest, chain: &str| {
        labels(&[(IMAGE_REF, image), (MANIFEST, digest.as_str()), (TARGET, chain)])
    };
    c.prepare(prepare("extract-1 sha256:c1", "", pull(&web, &w.signed, "sha256:c1")))
        .await
        .unwrap();
    assert_eq!(
        stat_labels(&mut c, "extract-1 sha256:c1")
            .await
            .get("kcache.dev/verified"),
        Some(&w.signed.to_string())
    );
    c.commit(commit("sha256:c1", "extract-1 sha256:c1")).await.unwrap();
    let committed = stat_labels(&mut c, "sha256:c1").await;
    assert_eq!(committed.get("kcache.dev/verified"), Some(&w.signed.to_string()));
    assert_eq!(
        committed.get("kcache.dev/verified-rule").map(String::as_str),
        Some("apps")
    );

    // The container rootfs on the verified chain.
    c.prepare(prepare("ctr-1", "sha256:c1", labels(&[]))).await.unwrap();

    // The unsigned image: denied, and the message names the image, the digest and the rule.
    let err = c
        .prepare(prepare(
            "extract-2 sha256:c2",
            "",
            pull(&other, &w.unsigned, "sha256:c2"),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    for part in [other.as_str(), w.unsigned.as_str(), "denied by rule apps"] {
        assert!(err.message().contains(part), "{part:?} missing in {:?}", err.message());
    }

    // A swapped tag: web's tag with other's digest is not verified.
    let err = c
        .prepare(prepare("extract-3 sha256:c3", "", pull(&web, &w.unsigned, "sha256:c3")))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{}", err.message());

    // Hostile labels: not a digest.
    let mut bad = pull(&web, &w.signed, "sha256:c5");
    bad.insert(MANIFEST.into(), "md5:abc".into());
    let err = c.prepare(prepare("extract-5 sha256:c5", "", bad)).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("not a digest"), "{}", err.message());

    // An unpack without CRI labels is allowed (default rule), but never marked verified, and a
    // forged mark is stripped: containers on it are refused in enforce mode.
    c.prepare(prepare(
        "extract-6 sha256:c6",
        "",
        labels(&[(TARGET, "sha256:c6"), ("kcache.dev/verified", w.signed.as_str())]),
    ))
    .await
    .unwrap();
    c.commit(commit("sha256:c6", "extract-6 sha256:c6")).await.unwrap();
    assert!(!stat_labels(&mut c, "sha256:c6")
        .await
        .contains_key("kcache.dev/verified"));
    let err = c.prepare(prepare("ctr-2", "sha256:c6", labels(&[]))).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message().contains("chain check") && err.message().contains("sha256:c6"),
        "{}",
        err.message()
    );
    let err = c
        .view(pb::ViewSnapshotRequest {
            snapshotter: "kcache".into(),
            key: "view-1".into(),
            parent: "sha256:c6".into(),
            labels: HashMap::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);

    // Forged pull labels on a rootfs (a pod's annotations reach its sandbox's Prepare) do not
    // turn it into a pull: the chain check still applies.
    let err = c
        .prepare(prepare(
            "k8s.io/9/0123abcd",
            "sha256:c6",
            pull(&web, &w.signed, "sha256:c6"),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("chain check"), "{}", err.message());

    // Clients cannot set the mark with Update, and replacing all labels keeps it.
    let update = |key: &str, l: HashMap<String, String>, paths: &[&str]| pb::UpdateSnapshotRequest {
        snapshotter: "kcache".into(),
        info: Some(pb::Info {
            name: key.into(),
            labels: l,
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask {
            paths: paths.iter().map(|p| p.to_string()).collect(),
        }),
    };
    let err = c
        .update(update(
            "sha256:c6",
            labels(&[("kcache.dev/verified", "x")]),
            &["labels.kcache.dev/verified"],
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    c.update(update("sha256:c1", labels(&[("team", "ml")]), &["labels"]))
        .await
        .unwrap();
    let l = stat_labels(&mut c, "sha256:c1").await;
    assert_eq!(l.get("team").map(String::as_str), Some("ml"));
    assert!(l.contains_key("kcache.dev/verified"), "{l:?}");
    c.update(update(
        "sha256:c6",
        labels(&[("kcache.dev/verified", "x")]),
        &["labels"],
    ))
    .await
    .unwrap();
    assert!(!stat_labels(&mut c, "sha256:c6")
        .await
        .contains_key("kcache.dev/verified"));

    // A verified pull on top of an unverified parent marks the parent: it is part of the
    // verified image's chain.
    c.prepare(prepare(
        "extract-7 sha256:c7",
        "sha256:c6",
        pull(&web, &w.signed, "sha256:c7"),
    ))
    .await
    .unwrap();
    assert!(stat_labels(&mut c, "sha256:c6")
        .await
        .contains_key("kcache.dev/verified"));

    // Metrics saw it all.
    let m = w.daemon.api().metrics().await.unwrap();
    assert!(
        m.contains("kcache_verifications_total{result=\"allow\",rule=\"apps\"}"),
        "{m}"
    );
    assert!(
        m.contains("kcache_verifications_total{result=\"deny\",rule=\"apps\"} 2"),
        "{m}"
    );
    assert!(
        m.contains("kcache_denied_pulls_total{reason=\"unverified-chain\"} 3"),
        "{m}"
    );
    assert!(
        m.contains("kcache_snapshot_operation_seconds_count{op=\"prepare\"}"),
        "{m}"
    );
    assert!(m.contains("kcache_verdict_cache_hits_total "), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_shares_verdicts_and_the_policy_reloads_atomically() {
    let w = world().await;
    let api = w.daemon.api();
    api.health().await.unwrap();
    let web = format!("{}/apps/web:v1", w.host);
    let other = format!("{}/apps/other:v1", w.host);

    let v = api.verify(&web, None).await.unwrap();
    assert!(v.permits() && v.rule.as_deref() == Some("apps"), "{v:?}");
    assert_eq!(v.digest.as_ref(), Some(&w.signed));
    let again = api.verify(&web, Some(&w.signed)).await.unwrap();
    assert!(
        again.permits() && again.cached,
        "the second answer comes from the verdict cache: {again:?}"
    );
    let v = api.verify(&other, None).await.unwrap();
    assert!(!v.permits() && v.summary().contains("denied: image"), "{v:?}");
    let err = api.verify("UPPER/case:x", None).await.unwrap_err();
    assert!(err.to_string().contains("400"), "{err}");
    assert!(api.caches().await.unwrap().caches.is_empty());

    let status = api.policy().await.unwrap();
    assert_eq!(
        (status.mode.as_str(), status.rules, status.last_error.clone()),
        ("enforce", 1, None)
    );
    let gen0 = status.generation;

    // A broken policy keeps the old one, and says why.
    std::fs::write(
        w.daemon.dir.join("policy.yaml"),
        "mode: enforce\nrules:\n  - name: apps\n    images: [x]\n",
    )
    .unwrap();
    let status = wait_policy(&api, |s| s.last_error.is_some()).await;
    assert_eq!(status.generation, gen0);
    let why = status.last_error.unwrap();
    assert!(why.contains("policy.yaml"), "{why}");
    assert!(
        !api.verify(&other, None).await.unwrap().permits(),
        "still enforcing the old policy"
    );

    // A good new policy is swapped in: warn mode lets the unsigned image through.
    std::fs::write(w.daemon.dir.join("policy.yaml"), policy(&w.host, "warn")).unwrap();
    let status = wait_policy(&api, |s| s.generation != gen0).await;
    assert_eq!(
        (status.mode.as_str(), status.last_error, status.reloads),
        ("warn", None, 1)
    );
    let v = api.verify(&other, None).await.unwrap();
    assert_eq!(v.decision, kcache_core::api::Decision::AllowWithWarning);
    let mut c = w.daemon.snapshots().await;
    let l = labels(&[
        (IMAGE_REF, &other),
        (MANIFEST, w.unsigned.as_str()),
        (TARGET, "sha256:w1"),
    ]);
    c.prepare(prepare("extract-w sha256:w1", "", l)).await.unwrap();

    let log = w.daemon.log();
    assert!(
        log.contains("previous policy stays in force") && log.contains("policy reloaded"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlabeled_deny_loopback_metrics_shared_verdicts_and_the_cli_daemon_mode() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let metrics_addr = format!("127.0.0.1:{port}");
    let w = world_with(&["--unlabeled", "deny", "--metrics-addr", &metrics_addr]).await;
    let mut c = w.daemon.snapshots().await;
    let web = format!("{}/apps/web:v1", w.host);

    // `--unlabeled deny`: an unpack without CRI labels is refused, and the message says how to
    // turn the labels on.
    let err = c
        .prepare(prepare("extract-u sha256:u1", "", labels(&[(TARGET, "sha256:u1")])))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    for part in ["sha256:u1", "unlabeled=deny", "disable_snapshot_annotations = false"] {
        assert!(err.message().contains(part), "{part:?} missing in {:?}", err.message());
    }

    // The gate's verdict is the API's: after a pull, the same question is a cache hit.
    let l = labels(&[(IMAGE_REF, &web), (MANIFEST, w.signed.as_str()), (TARGET, "sha256:p1")]);
    c.prepare(prepare("extract-p sha256:p1", "", l)).await.unwrap();
    let v = w.daemon.api().verify(&web, Some(&w.signed)).await.unwrap();
    assert!(v.permits() && v.cached, "the gate's verdict is shared: {v:?}");

    // `kcache verify --daemon` asks kcached: exit 0 and the cached verdict, exit 1 for the
    // unsigned image with the deciding rule.
    let cli = |image: &str| {
        Command::new(env!("CARGO_BIN_EXE_kcache"))
            .args(["verify", "--daemon", "--output", "json", image])
            .args(["--api-socket".as_ref(), w.daemon.dir.join("api.sock").as_os_str()])
            .output()
            .unwrap()
    };
    let out = cli(&web);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["digest"], w.signed.as_str(), "{json}");
    assert_eq!(json["cached"], true, "{json}");
    let other = format!("{}/apps/other:v1", w.host);
    let out = cli(&other);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&other) && err.contains(w.unsigned.as_str()) && err.contains("rule apps"),
        "{err}"
    );
    // With kcached gone, --daemon fails as an error (exit 2), never as an allow.
    let out = Command::new(env!("CARGO_BIN_EXE_kcache"))
        .args(["verify", "--daemon", &web, "--api-socket"])
        .arg(w.daemon.dir.join("no-such.sock"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));

    // Metrics on the loopback TCP listener, the same series as on the API socket.
    let body = {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&metrics_addr).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: kcache\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    };
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    assert!(
        body.contains("kcache_denied_pulls_total{reason=\"unlabeled\"} 1"),
        "{body}"
    );
    assert!(body.contains("kcache_verdict_cache_hits_total"), "{body}");
    drop(w.reg);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_chain_check_lets_a_rootfs_on_an_unverified_chain_through() {
    let w = world_with(&["--no-chain-check"]).await;
    let mut c = w.daemon.snapshots().await;
    c.prepare(prepare("extract-1 sha256:n1", "", labels(&[(TARGET, "sha256:n1")])))
        .await
        .unwrap();
    c.commit(commit("sha256:n1", "extract-1 sha256:n1")).await.unwrap();
    assert!(!stat_labels(&mut c, "sha256:n1")
        .await
        .contains_key("kcache.dev/verified"));
    c.prepare(prepare("ctr-1", "sha256:n1", labels(&[]))).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_the_key_stops_new_containers_on_chains_verified_before() {
    let w = world().await;
    let mut c = w.daemon.snapshots().await;
    let web = format!("{}/apps/web:v1", w.host);
    let pull = labels(&[(IMAGE_REF, &web), (MANIFEST, w.signed.as_str()), (TARGET, "sha256:r1")]);
    c.prepare(prepare("k8s.io/1/extract-1 sha256:r1", "", pull))
        .await
        .unwrap();
    c.commit(commit("sha256:r1", "k8s.io/1/extract-1 sha256:r1"))
        .await
        .unwrap();
    c.prepare(prepare("k8s.io/1/before", "sha256:r1", labels(&[])))
        .await
        .unwrap();

    // The signing key is revoked: the rule now trusts another key only.
    let before = w.daemon.api().policy().await.unwrap().generation;
    let other = PrivateKey::generate_p256();
    std::fs::write(w.daemon.dir.join("cosign.pub"), other.public_key().to_pem()).unwrap();
    wait_policy(&w.daemon.api(), |s| s.generation != before).await;

    let err = c
        .prepare(prepare("k8s.io/1/after", "sha256:r1", labels(&[])))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{}", err.message());
    let msg = err.message();
    let refusal = kcache_core::refusal::find(msg).unwrap_or_else(|| panic!("no refusal line: {msg}"));
    assert_eq!(
        (refusal.image, refusal.digest, refusal.rule),
        (web.as_str(), w.signed.as_str(), "apps"),
        "{msg}"
    );
    assert!(msg.contains("policy in force") && msg.contains("sha256:r1"), "{msg}");
    // The running container's snapshot is untouched.
    stat_labels(&mut c, "k8s.io/1/before").await;
    let m = w.daemon.api().metrics().await.unwrap();
    assert!(m.contains("kcache_denied_pulls_total{reason=\"revoked\"} 1"), "{m}");

    // The key trusted again: new containers start again.
    let key_back = w.daemon.dir.join("cosign.pub");
    let generation = w.daemon.api().policy().await.unwrap().generation;
    std::fs::write(&key_back, w.signing_key.public_key().to_pem()).unwrap();
    wait_policy(&w.daemon.api(), |s| s.generation != generation).await;
    c.prepare(prepare("k8s.io/1/again", "sha256:r1", labels(&[])))
        .await
        .unwrap();
}

/// Every metric the README lists is exported, and every exported metric is in the README.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_exported_exactly_as_the_readme_lists_them() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let start = readme.find("- **Metrics**").expect("README has a Metrics bullet");
    let bullet: String = readme[start..]
        .lines()
        .enumerate()
        .take_while(|(i, l)| *i == 0 || l.starts_with("  "))
        .map(|(_, l)| l)
        .collect::<Vec<_>>()
        .join(" ");
    let listed: std::collections::BTreeSet<String> = bullet
        .split(|ch: char| !(ch.is_ascii_alphanumeric() || ch == '_'))
        .filter(|w| w.starts_with("kcache_"))
        .map(str::to_owned)
        .collect();
    assert!(listed.len() >= 10, "{listed:?}");

    let w = world().await;
    // Give every metric a sample (a family without one is not rendered): a verified pull and a
    // cache-hit re-check, a refusal, an approved cache (refused: unsigned), API requests.
    let mut c = w.daemon.snapshots().await;
    let web = format!("{}/apps/web:v1", w.host);
    let pull = labels(&[(IMAGE_REF, &web), (MANIFEST, w.signed.as_str()), (TARGET, "sha256:m1")]);
    c.prepare(prepare("extract-1 sha256:m1", "", pull)).await.unwrap();
    c.commit(commit("sha256:m1", "extract-1 sha256:m1")).await.unwrap();
    c.prepare(prepare("ctr-1", "sha256:m1", labels(&[]))).await.unwrap();
    c.prepare(prepare("extract-2 sha256:m2", "", labels(&[(TARGET, "sha256:m2")])))
        .await
        .unwrap();
    c.commit(commit("sha256:m2", "extract-2 sha256:m2")).await.unwrap();
    c.prepare(prepare("ctr-2", "sha256:m2", labels(&[]))).await.unwrap_err();
    std::fs::create_dir_all(w.daemon.dir.join("caches.d")).unwrap();
    std::fs::write(
        w.daemon.dir.join("caches.d/unsigned.yaml"),
        format!("name: unsigned\nimage: {}/apps/other:v1\n", w.host),
    )
    .unwrap();
    let start = Instant::now();
    let m = loop {
        let m = w.daemon.api().metrics().await.unwrap();
        if m.contains("kcache_caches{") {
            break m;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no kcache_caches sample:\n{m}\n{}",
            w.daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(m.contains("kcache_caches{name=\"unsigned\",state=\"denied\"} 1"), "{m}");
    // OpenMetrics names a counter's family without `_total`; its samples carry it.
    let exported: std::collections::BTreeSet<String> = m
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| match l.split_once(' ') {
            Some((name, "counter")) => format!("{name}_total"),
            Some((name, _)) => name.to_owned(),
            None => l.to_owned(),
        })
        .collect();
    assert_eq!(listed, exported, "README vs /metrics:\n{m}");
}

async fn wait_policy(
    api: &Api,
    done: impl Fn(&kcache_plugin::daemon::policy_store::PolicyStatus) -> bool,
) -> kcache_plugin::daemon::policy_store::PolicyStatus {
    let start = Instant::now();
    loop {
        let s = api.policy().await.unwrap();
        if done(&s) {
            return s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "policy did not reload: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn a_broken_policy_or_config_stops_the_start() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::write(d.join("policy.yaml"), "mode: enforce\ndefault: maybe\n").unwrap();
    let run = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_kcached"))
            .args(["--policy".as_ref(), d.join("policy.yaml").as_os_str()])
            .args(["--snapshotter-socket".as_ref(), d.join("s.sock").as_os_str()])
            .args(["--root".as_ref(), d.join("root").as_os_str()])
            .args(["--run-dir".as_ref(), d.join("run").as_os_str()])
            .args(extra)
            .output()
            .unwrap()
    };
    let out = run(&[]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("policy.yaml") && err.contains("default"), "{err}");
    std::fs::write(d.join("config.toml"), "unlabeled = \"sometimes\"\n").unwrap();
    let out = run(&["--config", d.join("config.toml").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("config.toml") && err.contains("unlabeled"), "{err}");
    for (cache, key) in [
        ("max_entries = 0", "cache.max_entries"),
        ("max_files = 10", "max_files"),
    ] {
        std::fs::write(d.join("config.toml"), format!("[cache]\n{cache}\n")).unwrap();
        let out = run(&["--config", d.join("config.toml").to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("config.toml") && err.contains(key), "{err}");
    }
    let out = run(&["--metrics-addr", "0.0.0.0:9464"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("loopback"));
}

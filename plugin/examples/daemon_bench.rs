//! Bench fixture for bench/run: kcached as containerd sees it, over its real unix socket.
//!
//!     daemon_bench <path to kcached>
//!
//! Starts a loopback docker-registry with a kcache-signed image and kcached (enforce policy),
//! then measures and prints one JSON line:
//! - `prepare_ns`: Prepare + Remove latency (gRPC round trip) with 10, 1,000 and 10,000
//!   committed snapshots in the store;
//! - `gated_prepare_ns`: Prepare with CRI pull labels (warm verdict) on the full store;
//! - `rootfs_prepare_ns`: a container rootfs Prepare on a verified chain (the chain check and
//!   the re-check of the chain's image under the policy in force);
//! - `rss_kib`: kcached's resident memory idle after start, with 10,000 snapshots, and the peak
//!   during a pull storm (64 concurrent pulls' Prepare/Commit/Remove with CRI labels for 5 s).

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use hyper_util::rt::TokioIo;
use kcache_core::{cosign::sign, signing::PrivateKey};
use kcache_plugin::proto::snapshots::{self as pb, snapshots_client::SnapshotsClient};
use kcache_tests::TestRegistry;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint};

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

async fn connect(socket: PathBuf) -> SnapshotsClient<Channel> {
    let channel = Endpoint::try_from("http://kcache.invalid")
        .expect("endpoint")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = socket.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await
        .expect("connect to kcached");
    SnapshotsClient::new(channel)
}

fn prepare(key: &str, parent: &str, labels: HashMap<String, String>) -> pb::PrepareSnapshotRequest {
    pb::PrepareSnapshotRequest {
        snapshotter: "kcache".into(),
        key: key.into(),
        parent: parent.into(),
        labels,
    }
}

async fn fill(c: &mut SnapshotsClient<Channel>, from: usize, to: usize) {
    for i in from..to {
        let key = format!("fill-active-{i}");
        c.prepare(prepare(&key, "", HashMap::new())).await.expect("prepare");
        c.commit(pb::CommitSnapshotRequest {
            snapshotter: "kcache".into(),
            name: format!("fill-{i}"),
            key,
            labels: HashMap::new(),
        })
        .await
        .expect("commit");
    }
}

/// Prepare + Remove `n` times on `parent` (empty: a new chain) with `labels`; the Prepare times.
async fn time_prepare(
    c: &mut SnapshotsClient<Channel>,
    parent: &str,
    labels: &HashMap<String, String>,
    n: usize,
) -> Vec<u64> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        // Unpack keys as containerd's unpacker names them, so the gate treats labelled ones as pulls.
        let key = match labels.get("containerd.io/snapshot.ref") {
            Some(chain) => format!("extract-probe-{i} {chain}"),
            None => format!("probe-{i}"),
        };
        let t = Instant::now();
        c.prepare(prepare(&key, parent, labels.clone())).await.expect("prepare");
        out.push(t.elapsed().as_nanos() as u64);
        c.remove(pb::RemoveSnapshotRequest {
            snapshotter: "kcache".into(),
            key,
        })
        .await
        .expect("remove");
    }
    out
}

fn wait_for(path: &Path) {
    let start = Instant::now();
    while !path.exists() {
        assert!(start.elapsed() < Duration::from_secs(20), "kcached did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let kcached = std::env::args().nth(1).expect("usage: daemon_bench <kcached>");
    let reg = TestRegistry::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    let (digest, _) = reg.push_image("bench/app:v1", "bench layer").await;
    let key = PrivateKey::generate_p256();
    sign::sign_and_push(&reg.client(), &key, &reg.reference("bench/app:v1"), false)
        .await
        .expect("sign");
    std::fs::write(d.join("bench.pub"), key.public_key().to_pem()).expect("pub");
    std::fs::write(
        d.join("policy.yaml"),
        format!(
            "mode: enforce\ndefault: deny\nrules:\n  - name: bench\n    images: [\"{}/bench/*\"]\n    authorities:\n      - key: {{path: bench.pub}}\n    transparencyLog: off\n",
            reg.host()
        ),
    )
    .expect("policy");
    let socket = d.join("snap.sock");
    let child = Killed(
        Command::new(&kcached)
            .args(["--policy".as_ref(), d.join("policy.yaml").as_os_str()])
            .args(["--snapshotter-socket".as_ref(), socket.as_os_str()])
            .args(["--api-socket".as_ref(), d.join("api.sock").as_os_str()])
            .args(["--root".as_ref(), d.join("root").as_os_str()])
            // Every path in the temp dir: nothing of the node's (/var/lib/kcache, /etc/kcache).
            .args(["--cache-root".as_ref(), d.join("caches").as_os_str()])
            .args(["--caches-dir".as_ref(), d.join("caches.d").as_os_str()])
            .args(["--run-dir".as_ref(), d.join("run").as_os_str()])
            .args(["--config".as_ref(), d.join("none.toml").as_os_str()])
            .args(["--insecure-registry", &reg.host()])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start kcached"),
    );
    std::fs::write(d.join("none.toml"), "").ok();
    wait_for(&socket);
    let pid = child.0.id();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_idle = rss_kib(pid);

    let mut c = connect(socket.clone()).await;
    let none = HashMap::new();
    let mut prepare_ns = serde_json::Map::new();
    let mut have = 0;
    for size in [10usize, 1_000, 10_000] {
        fill(&mut c, have, size).await;
        have = size;
        prepare_ns.insert(size.to_string(), time_prepare(&mut c, "", &none, 300).await.into());
    }
    let rss_full = rss_kib(pid);

    let pull: HashMap<String, String> = [
        (
            "containerd.io/snapshot/cri.image-ref",
            format!("{}/bench/app:v1", reg.host()),
        ),
        ("containerd.io/snapshot/cri.manifest-digest", digest.to_string()),
        ("containerd.io/snapshot.ref", "sha256:bench".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let gated = time_prepare(&mut c, "", &pull, 300).await;

    // A container's rootfs on that verified chain: the chain check, and (since the gate re-checks
    // the chain's image against the policy in force) a verdict-cache hit.
    let chain_key = "extract-chain sha256:bench".to_owned();
    c.prepare(prepare(&chain_key, "", pull.clone()))
        .await
        .expect("chain prepare");
    c.commit(pb::CommitSnapshotRequest {
        snapshotter: "kcache".into(),
        name: "sha256:bench-chain".into(),
        key: chain_key,
        labels: HashMap::new(),
    })
    .await
    .expect("chain commit");
    let rootfs = time_prepare(&mut c, "sha256:bench-chain", &none, 300).await;

    // Pull storm: 64 concurrent clients, Prepare (gated) / Commit / Remove, for 5 s.
    let stop = Arc::new(AtomicBool::new(false));
    let ops = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for t in 0..64 {
        let (socket, pull, stop, ops) = (socket.clone(), pull.clone(), Arc::clone(&stop), Arc::clone(&ops));
        tasks.push(tokio::spawn(async move {
            let mut c = connect(socket).await;
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("extract-storm-{t}-{i} sha256:bench");
                let name = format!("storm-c-{t}-{i}");
                c.prepare(prepare(&key, "", pull.clone())).await.expect("storm prepare");
                c.commit(pb::CommitSnapshotRequest {
                    snapshotter: "kcache".into(),
                    name: name.clone(),
                    key,
                    labels: HashMap::new(),
                })
                .await
                .expect("storm commit");
                c.remove(pb::RemoveSnapshotRequest {
                    snapshotter: "kcache".into(),
                    key: name,
                })
                .await
                .expect("storm remove");
                ops.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
        }));
    }
    let mut rss_peak = 0;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        rss_peak = rss_peak.max(rss_kib(pid));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.expect("storm task");
    }
    let storm_secs = start.elapsed().as_secs_f64();
    // Proof that the gate was on the path: every gated Prepare was a verdict-cache hit but one.
    let metrics = kcache_plugin::api::Client::new(d.join("api.sock"))
        .metrics()
        .await
        .expect("metrics");
    let cache_hits: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("kcache_verdict_cache_hits_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    println!(
        "{}",
        serde_json::json!({
            "prepare_ns": prepare_ns,
            "gated_prepare_ns": gated,
            "rootfs_prepare_ns": rootfs,
            "rss_kib": {"idle": rss_idle, "10000_snapshots": rss_full, "storm_peak": rss_peak},
            "storm_pulls_per_s": ops.load(Ordering::Relaxed) as f64 / storm_secs,
            "verdict_cache_hits": cache_hits,
            "gated_prepares": 300 + ops.load(Ordering::Relaxed),
        })
    );
}

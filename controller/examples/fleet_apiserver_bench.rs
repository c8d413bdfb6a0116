//! Fleet aggregation against the real API server (apiextensions-apiserver + etcd from
//! scripts/kube-apiserver.sh): N KernelCacheNode objects with M caches each are written (create,
//! then the status by server-side apply, as agents do), M KernelCaches pinned by digest; then
//! `kcache-controller run` (the binary given) starts and the clock runs until every KernelCache's
//! status counts all N nodes with the right ready count. Reports that time, the time to seed, and
//! the controller's peak RSS (VmHWM) and RSS at the end. Prints one JSON line.
//!
//!   fleet_apiserver_bench CONTROLLER_BIN [NODES] [CACHES]

use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use futures_util::StreamExt;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kcache_controller::crd::{KernelCache, KernelCacheNode, KernelCacheSpec};
use kcache_tests::kube::KubeApiServer;
use kube::{
    api::{ListParams, Patch, PatchParams, PostParams},
    runtime::wait::{await_condition, conditions},
    Api, Client, Resource,
};

#[path = "common/fleet.rs"]
mod fleet;

fn proc_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0)
}

async fn client(kubeconfig: &Path) -> Client {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig).expect("kubeconfig");
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .expect("kube config");
    Client::try_from(cfg).expect("client")
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let bin = args
        .next()
        .expect("usage: fleet_apiserver_bench CONTROLLER_BIN [NODES] [CACHES]");
    let n_nodes: usize = args.next().map_or(5000, |a| a.parse().expect("NODES"));
    let n_caches: usize = args.next().map_or(20, |a| a.parse().expect("CACHES"));
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut server = KubeApiServer::start(&tmp.path().join("kube"));
    let kubeconfig = server.kubeconfig();
    let client = client(&kubeconfig).await;
    let crds = Api::<CustomResourceDefinition>::all(client.clone());
    for crd in kcache_controller::crd::all() {
        let name = crd.metadata.name.clone().expect("crd name");
        crds.create(&PostParams::default(), &crd).await.expect("create CRD");
        tokio::time::timeout(
            Duration::from_secs(30),
            await_condition(crds.clone(), &name, conditions::is_crd_established()),
        )
        .await
        .expect("CRD established")
        .expect("watch CRD");
    }

    // Seed: the caches (pinned by digest: nothing to resolve), then the nodes, 32 at a time.
    let t = Instant::now();
    let kcs = Api::<KernelCache>::namespaced(client.clone(), "ml");
    for c in 0..n_caches {
        let image = format!("registry.example.com/caches/cache-{c}@{}", fleet::cache_digest(c));
        let mut kc = KernelCache::new(&format!("cache-{c}"), KernelCacheSpec { image });
        kc.metadata.namespace = Some("ml".into());
        create_retrying(&kcs, &kc).await;
    }
    let nodes = Api::<KernelCacheNode>::all(client.clone());
    let stamp = chrono::Utc::now().to_rfc3339();
    futures_util::stream::iter(0..n_nodes)
        .for_each_concurrent(32, |i| {
            let (nodes, stamp) = (nodes.clone(), stamp.clone());
            async move {
                let mut n = fleet::node(i, n_caches, &stamp);
                let status = n.status.take();
                create_retrying(&nodes, &n).await;
                let patch = serde_json::json!({
                    "apiVersion": KernelCacheNode::api_version(&()),
                    "kind": KernelCacheNode::kind(&()),
                    "status": status,
                });
                let name = n.metadata.name.clone().expect("name");
                let pp = PatchParams::apply("kcache-node-agent").force();
                for attempt in 0.. {
                    match nodes.patch_status(&name, &pp, &Patch::Apply(&patch)).await {
                        Ok(_) => break,
                        Err(e) if attempt < 20 => {
                            eprintln!("status {name}: {e}; retrying");
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                        Err(e) => panic!("status {name}: {e}"),
                    }
                }
            }
        })
        .await;
    let seed = t.elapsed();

    // The controller, from a cold start.
    let mut child = Command::new(&bin)
        .args([
            "run",
            "--no-resolve",
            "--resync-seconds",
            "1",
            "--stale-after-seconds",
            "3600",
        ])
        .env("KUBECONFIG", &kubeconfig)
        // KCACHE_BENCH_RUST_LOG=info shows when the node list synced and each status applied.
        .env(
            "RUST_LOG",
            std::env::var("KCACHE_BENCH_RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the controller");
    let pid = child.id();
    let t = Instant::now();
    let want: Vec<i32> = (0..n_caches).map(|c| fleet::expected_ready(n_nodes, c)).collect();
    loop {
        // From the API server's watch cache as it stands (resourceVersion=0): a poll every 100 ms
        // need not be a consistent read.
        let done = match kcs.list(&ListParams::default().match_any()).await {
            Ok(list) => {
                list.items.len() == n_caches
                    && list.items.iter().all(|kc| {
                        let c: usize = kc
                            .metadata
                            .name
                            .as_deref()
                            .and_then(|n| n.strip_prefix("cache-"))
                            .and_then(|n| n.parse().ok())
                            .unwrap_or(usize::MAX);
                        kc.status
                            .as_ref()
                            .is_some_and(|s| s.nodes.reporting == n_nodes as i32 && want.get(c) == Some(&s.nodes.ready))
                    })
            }
            Err(_) => false,
        };
        if done {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(600),
            "the controller did not count {n_nodes} nodes in 10 min"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let converge = t.elapsed();
    let peak = proc_kib(pid, "VmHWM");
    // A few more resync passes at steady state.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let peak_after = proc_kib(pid, "VmHWM");
    let rss = proc_kib(pid, "VmRSS");
    let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status();
    let _ = child.wait();
    server.stop();
    println!(
        "{}",
        serde_json::json!({
            "nodes": n_nodes,
            "caches": n_caches,
            "seed_s": seed.as_secs_f64(),
            "converge_s": converge.as_secs_f64(),
            "controller_peak_kib": peak.max(peak_after),
            "controller_rss_kib": rss,
        })
    );
}

/// Creates `obj`, retrying while the API server is busy (429 right after a CRD is established).
async fn create_retrying<K>(api: &Api<K>, obj: &K)
where
    K: Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    for attempt in 0.. {
        match api.create(&PostParams::default(), obj).await {
            Ok(_) => return,
            Err(e) if attempt < 20 => {
                eprintln!("create: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("create: {e}"),
        }
    }
}

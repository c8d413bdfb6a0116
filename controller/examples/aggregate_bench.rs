//! Fleet aggregation at scale, in process: N KernelCacheNode objects × M caches into every
//! cache's counts, the way `kcache-controller run` does one pass. Prints one table row.
//!
//!   cargo run --release -p kcache-controller --example aggregate_bench -- [NODES] [CACHES]

use std::time::Instant;

use chrono::Utc;
use kcache_controller::{
    aggregate::{cache_conditions, tally, CacheKey},
    crd::{
        KernelCacheNode, KernelCacheNodeSpec, KernelCacheNodeStatus, NodeCache, NodeGpu, NodeTrustPolicy,
        TrustPolicyState,
    },
};

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0)
}

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let (n_nodes, n_caches) = (
        args.first().copied().unwrap_or(5000),
        args.get(1).copied().unwrap_or(20),
    );
    let now = Utc::now();
    let stamp = now.to_rfc3339();
    let t = Instant::now();
    let nodes: Vec<KernelCacheNode> = (0..n_nodes)
        .map(|i| {
            let name = format!("gpu-node-{i:05}");
            let mut n = KernelCacheNode::new(
                &name,
                KernelCacheNodeSpec {
                    node_name: name.clone(),
                },
            );
            n.status = Some(KernelCacheNodeStatus {
                gpus: (0..8)
                    .map(|g| NodeGpu {
                        id: format!("GPU-{i}-{g}"),
                        backend: "cuda".into(),
                        arch: "90".into(),
                        warp_size: Some(32),
                        name: Some("NVIDIA H100 80GB HBM3".into()),
                    })
                    .collect(),
                gpu_count: 8,
                trust_policies: vec![NodeTrustPolicy {
                    name: "site".into(),
                    generation: 3,
                    state: TrustPolicyState::Enforced,
                    message: None,
                }],
                caches: (0..n_caches)
                    .map(|c| NodeCache {
                        name: format!("cache-{c}"),
                        namespace: Some("ml".into()),
                        image: format!("registry.example.com/caches/cache-{c}:v1"),
                        digest: Some(format!("sha256:{:064x}", c)),
                        state: if (i + c) % 50 == 0 {
                            "failed".into()
                        } else {
                            "ready".into()
                        },
                        reason: ((i + c) % 50 == 0).then(|| "no signature matches rule caches".into()),
                        rule: Some("caches".into()),
                        compatible_gpus: (0..8).map(|g| format!("GPU-{i}-{g}")).collect(),
                        containers: if c % 3 == 0 {
                            vec![format!("ctr-{i}-{c}")]
                        } else {
                            vec![]
                        },
                        last_update: Some(stamp.clone()),
                        ..NodeCache::default()
                    })
                    .collect(),
                last_update: Some(stamp.clone()),
                ..KernelCacheNodeStatus::default()
            });
            n
        })
        .collect();
    let build = t.elapsed();
    let t = Instant::now();
    let fleet = tally(&nodes, now, chrono::Duration::seconds(300));
    let mut ready = 0;
    for c in 0..n_caches {
        let key = CacheKey {
            namespace: Some("ml".into()),
            name: format!("cache-{c}"),
        };
        let tally = &fleet.caches[&key];
        let counts = tally.counts(Some(&format!("sha256:{:064x}", c)));
        let _ = cache_conditions(&counts, &tally.reasons);
        ready += counts.ready;
    }
    let pass = t.elapsed();
    assert_eq!(fleet.fresh_nodes, n_nodes);
    println!(
        "| aggregation, in process | {n_nodes} nodes x {n_caches} caches | one pass {:.1} ms | peak RSS {:.1} MiB (objects included) | build {:.0} ms | ready {ready} |",
        pass.as_secs_f64() * 1e3,
        rss_kib() as f64 / 1024.0,
        build.as_secs_f64() * 1e3,
    );
}

//! Synthetic KernelCacheNode objects for the aggregation benchmarks: 8 H100s per node, every
//! node reporting every cache, 2 % failed, a third in use.

use kcache_controller::crd::{
    KernelCacheNode, KernelCacheNodeSpec, KernelCacheNodeStatus, NodeCache, NodeGpu, NodeTrustPolicy, TrustPolicyState,
};

/// The digest cache `c` is at.
pub fn cache_digest(c: usize) -> String {
    format!("sha256:{c:064x}")
}

/// Whether node `i` reports cache `c` failed.
pub fn failed(i: usize, c: usize) -> bool {
    (i + c).is_multiple_of(50)
}

/// Node `i`'s object, its report stamped `stamp`.
pub fn node(i: usize, n_caches: usize, stamp: &str) -> KernelCacheNode {
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
                digest: Some(cache_digest(c)),
                state: if failed(i, c) { "failed".into() } else { "ready".into() },
                reason: failed(i, c).then(|| "no signature matches rule caches".into()),
                rule: Some("caches".into()),
                compatible_gpus: (0..8).map(|g| format!("GPU-{i}-{g}")).collect(),
                containers: if c % 3 == 0 {
                    vec![format!("ctr-{i}-{c}")]
                } else {
                    vec![]
                },
                last_update: Some(stamp.into()),
                ..NodeCache::default()
            })
            .collect(),
        last_update: Some(stamp.into()),
        ..KernelCacheNodeStatus::default()
    });
    n
}

/// How many nodes report cache `c` ready.
pub fn expected_ready(n_nodes: usize, c: usize) -> i32 {
    (0..n_nodes).filter(|&i| !failed(i, c)).count() as i32
}

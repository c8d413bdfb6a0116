//! Fleet aggregation at scale, in process: N KernelCacheNode objects × M caches into every
//! cache's counts, the way `kcache-controller run` does one pass. Prints one table row.
//!
//!   cargo run --release -p kcache-controller --example aggregate_bench -- [NODES] [CACHES] [--json] [--whole]
//!
//! Each object is slimmed as the controller's watch store keeps it (`aggregate::slim`) unless
//! `--whole` keeps it as the API server serves it.
//!
//! Memory is reported three ways: the process's peak (what a controller holding these objects in
//! its watch store needs), what the synthetic objects themselves hold (VmRSS after building them,
//! less the baseline before), and the pass's own peak on top of them (VmHWM reset through
//! /proc/self/clear_refs before the pass, so it is the pass's high-water mark alone).

use std::time::Instant;

use chrono::Utc;
use kcache_controller::{
    aggregate::{cache_conditions, slim, tally, CacheKey},
    crd::KernelCacheNode,
};

#[path = "common/fleet.rs"]
mod fleet;

/// A `/proc/self/status` field in KiB (`VmHWM`, `VmRSS`).
fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Resets VmHWM to the current RSS (Linux: `5` to clear_refs); false where unsupported.
fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

fn main() {
    let json = std::env::args().any(|a| a == "--json");
    let whole = std::env::args().any(|a| a == "--whole");
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let (n_nodes, n_caches) = (
        args.first().copied().unwrap_or(5000),
        args.get(1).copied().unwrap_or(20),
    );
    let now = Utc::now();
    let stamp = now.to_rfc3339();
    let base_rss = status_kib("VmRSS");
    let t = Instant::now();
    let nodes: Vec<KernelCacheNode> = (0..n_nodes)
        .map(|i| {
            let mut n = fleet::node(i, n_caches, &stamp);
            if !whole {
                slim(&mut n);
            }
            n
        })
        .collect();
    let build = t.elapsed();
    let objects_rss = status_kib("VmRSS");
    let peak_before_pass = status_kib("VmHWM");
    let reset = reset_peak();
    let t = Instant::now();
    let tallied = tally(&nodes, now, chrono::Duration::seconds(300));
    let mut ready = 0;
    let mut per_cache = Vec::with_capacity(n_caches);
    for c in 0..n_caches {
        let key = CacheKey {
            namespace: Some("ml".into()),
            name: format!("cache-{c}"),
        };
        let tally = &tallied.caches[&key];
        let counts = tally.counts(Some(&fleet::cache_digest(c)));
        let _ = cache_conditions(&counts, &tally.reasons);
        ready += counts.ready;
        per_cache.push(counts.ready);
    }
    let pass = t.elapsed();
    for (c, got) in per_cache.iter().enumerate() {
        assert_eq!(*got, fleet::expected_ready(n_nodes, c), "cache-{c}");
    }
    let pass_peak = status_kib("VmHWM");
    let process_peak = pass_peak.max(peak_before_pass);
    assert_eq!(tallied.fresh_nodes, n_nodes);
    let mib = |k: u64| k as f64 / 1024.0;
    let objects = objects_rss.saturating_sub(base_rss);
    // Without the reset, the pass's own peak is unknown (the objects' build peak hides it).
    let pass_own = reset.then(|| pass_peak.saturating_sub(objects_rss));
    if json {
        println!(
            "{}",
            serde_json::json!({
                "nodes": n_nodes,
                "caches": n_caches,
                "pass_ms": pass.as_secs_f64() * 1e3,
                "build_ms": build.as_secs_f64() * 1e3,
                "process_peak_kib": process_peak,
                "objects_kib": objects,
                "pass_own_peak_kib": pass_own,
                "ready": ready,
                "slim": !whole,
            })
        );
    } else {
        println!(
            "| aggregation, in process | {n_nodes} nodes x {n_caches} caches | one pass {:.1} ms | peak RSS {:.1} MiB \
             (objects {:.1} MiB, the pass itself {}) | build {:.0} ms | ready {ready} |",
            pass.as_secs_f64() * 1e3,
            mib(process_peak),
            mib(objects),
            pass_own.map_or("unknown".into(), |k| format!("{:.1} MiB", mib(k))),
            build.as_secs_f64() * 1e3,
        );
    }
}

//! Bench fixture for bench/run: what kcache-hook costs a container start through CRI, per route.
//! Three nodes side by side (each a containerd with its own kcached, registry and signed cache,
//! `warm::Warm`), measured interleaved, one container start on each in turn:
//!
//! - `none`: no kcache hook at all (installed with --nri, the NRI plugin not connected);
//! - `base`: kcache-hook in the base runtime spec (today's default route);
//! - `nri`: kcached's NRI plugin adds kcache-hook to opted-in pods only.
//!
//! Each start is CreateContainer + StartContainer of a busybox `sleep` in a pod without the
//! annotation (`cold`) or with `kcache.dev/cache` (`warm`; the cache mounted), followed
//! (untimed for `start`, timed for `remove`) by StopContainer + RemoveContainer (poststop).
//!
//!     nri_bench <dir with kcache, kcached, kcache-hook> [runs]
//!
//! containerd from `KCACHE_CONTAINERD` (1.7 or 2.1). Prints one JSON line. Needs root.

use std::{
    path::{Path, PathBuf},
    time::Instant,
};

use kcache_tests::{
    containerd::{prerequisites, Containerd},
    cri::{self, pb, Cri},
    warm::{Bins, Warm, TARGET},
};

struct Node {
    name: &'static str,
    // containerd goes first (fields drop in order), then its kcached.
    _containerd: Containerd,
    _warm: Warm,
    cri: Cri,
    app: String,
    pods: Vec<(&'static str, String, pb::PodSandboxConfig)>,
}

async fn node(name: &'static str, base: &Path, bins: &Bins, programs: &kcache_tests::containerd::Programs) -> Node {
    let dir = base.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let cdir = dir.join("containerd");
    let nri_socket = Containerd::nri_socket_in(&cdir);
    let toml = if name == "nri" {
        format!(
            "[nri]\nsocket = \"{}\"\nhook = \"{}\"\n",
            nri_socket.display(),
            dir.join("kcache-hook").display()
        )
    } else {
        String::new()
    };
    let warm = Warm::start(&dir, bins, &toml).await;
    let containerd = Containerd::start(
        programs,
        &cdir,
        &warm.containerd_config(name != "base", vec!["kcache.dev/*".into()]),
    );
    if name == "nri" {
        warm.wait_nri_registered(1).await;
    }
    let cri = Cri::ready(&containerd).await;
    cri.pull(&warm.app, None).await.unwrap();
    let mut pods = Vec::new();
    let kinds: &[&'static str] = if name == "none" { &["cold"] } else { &["cold", "warm"] };
    for kind in kinds {
        let mut p = cri::host_network_pod(&format!("{name}-{kind}"), &dir.join("pods"));
        if *kind == "warm" {
            p.annotations.insert("kcache.dev/cache".into(), "triton".into());
        }
        let id = cri.run_pod(&p).await.unwrap();
        pods.push((*kind, id, p));
    }
    Node {
        name,
        app: warm.app.clone(),
        _warm: warm,
        _containerd: containerd,
        cri,
        pods,
    }
}

/// One start (ms) and one stop+remove (ms) of a container in `pod`.
async fn once(n: &Node, pod: &str, sandbox: &pb::PodSandboxConfig, i: usize) -> (f64, f64) {
    let mut c = cri::container(&format!("c{i}"), &n.app, &["/bin/sleep", "3600"]);
    c.envs = vec![pb::KeyValue {
        key: "TRITON_CACHE_DIR".into(),
        value: TARGET.into(),
    }];
    let t = Instant::now();
    let id = n.cri.start_container(pod, sandbox, c).await.unwrap();
    let start = t.elapsed().as_secs_f64() * 1e3;
    let mut rt = n.cri.runtime.clone();
    let t = Instant::now();
    rt.stop_container(pb::StopContainerRequest {
        container_id: id.clone(),
        timeout: 0,
    })
    .await
    .unwrap();
    rt.remove_container(pb::RemoveContainerRequest { container_id: id })
        .await
        .unwrap();
    (start, t.elapsed().as_secs_f64() * 1e3)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let bin_dir = PathBuf::from(args.get(1).expect("usage: nri_bench <bin dir> [runs]"));
    let runs: usize = args.get(2).and_then(|r| r.parse().ok()).unwrap_or(30);
    let programs = prerequisites("nri_bench", &["runc", "containerd-shim-runc-v2"]).expect("prerequisites");
    let bins = Bins {
        kcache: bin_dir.join("kcache"),
        kcached: bin_dir.join("kcached"),
        hook: bin_dir.join("kcache-hook"),
    };
    let tmp = tempfile::Builder::new()
        .prefix("kc-nribench")
        .tempdir_in("/tmp")
        .unwrap();
    let mut nodes = Vec::new();
    for name in ["none", "base", "nri"] {
        nodes.push(node(name, tmp.path(), &bins, &programs).await);
    }
    let mut samples: std::collections::BTreeMap<String, (Vec<f64>, Vec<f64>)> = Default::default();
    // Two warm-up rounds, discarded; then `runs` interleaved rounds.
    for round in 0..runs + 2 {
        for n in &nodes {
            for (kind, id, p) in &n.pods {
                let (s, r) = once(n, id, p, round).await;
                if round >= 2 {
                    let e = samples.entry(format!("{}/{kind}", n.name)).or_default();
                    e.0.push(s);
                    e.1.push(r);
                }
            }
        }
    }
    for n in &nodes {
        for (_, id, _) in &n.pods {
            let _ = n.cri.remove_pod(id).await;
        }
    }
    let rows: Vec<serde_json::Value> = samples
        .into_iter()
        .map(|(k, (s, r))| serde_json::json!({"name": k, "start_ms": s, "remove_ms": r}))
        .collect();
    println!(
        "{}",
        serde_json::json!({"containerd": programs.version, "runs": runs, "rows": rows})
    );
}

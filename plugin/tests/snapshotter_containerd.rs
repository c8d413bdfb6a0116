//! E2E: kcached as a proxy snapshotter of a real containerd 1.6, driven with `ctr snapshots`,
//! must behave like containerd's own overlayfs snapshotter: same mounts (paths aside), same
//! errors, same usage and tree.
//!
//! Needs containerd, ctr and root (`apt-get install containerd runc`). Without them the test is
//! skipped with a message, except under `CI=true`, where it fails.

use std::{
    fs,
    path::Path,
    thread,
    time::{Duration, Instant},
};

use kcache_tests::{
    containerd::{prerequisites, Containerd, ContainerdConfig},
    kcached::{Kcached, KcachedConfig},
};

/// The outcome of one `ctr` call, with snapshotter-specific paths replaced by `ROOT`.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Ok(String),
    Err(&'static str),
}

struct Env {
    containerd: Containerd,
    roots: Vec<(String, &'static str)>,
}

impl Env {
    fn ctr(&self, snapshotter: &str, args: &[&str]) -> Outcome {
        let mut full = vec!["snapshots", "--snapshotter", snapshotter];
        full.extend_from_slice(args);
        let out = self.containerd.ctr("e2e", &full);
        if out.status.success() {
            let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
            for (root, name) in &self.roots {
                text = text.replace(root.as_str(), name);
            }
            if args.first() == Some(&"label") {
                // ctr prints a Go map: in random order.
                let mut labels: Vec<&str> = text.trim().split(',').collect();
                labels.sort_unstable();
                text = labels.join(",");
            }
            if args.first() == Some(&"info") {
                // Times differ between runs; everything else must not.
                let mut info: serde_json::Value = serde_json::from_str(&text).unwrap();
                let fields = info.as_object_mut().unwrap();
                assert!(fields.remove("Created").is_some() && fields.remove("Updated").is_some());
                text = info.to_string();
            }
            return Outcome::Ok(text);
        }
        let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
        eprintln!("{snapshotter} {args:?}: {}", err.trim());
        for class in ["already exists", "not found", "failed precondition", "invalid argument"] {
            if err.contains(class) {
                return Outcome::Err(class);
            }
        }
        panic!("{snapshotter} {args:?}: unclassified error: {err}");
    }
}

/// The scenario, run once per snapshotter.
fn scenario(env: &Env, sn: &str) -> Vec<(String, Outcome)> {
    // containerd's garbage collector may collect snapshots that are no GC roots (views, first
    // of all) between two ctr calls; labelling every snapshot a root keeps the scenario
    // deterministic. A removal still reaches the backend through that collector.
    const ROOT: &str = "containerd.io/gc.root=e2e";
    let steps: &[&[&str]] = &[
        &["prepare", "k1"],
        &["label", "k1", ROOT],
        &["mounts", "/mnt", "k1"],
        &["prepare", "k1"],
        &["commit", "c1", "k1"],
        &["label", "c1", ROOT],
        &["prepare", "k2", "c1"],
        &["label", "k2", ROOT],
        &["mounts", "/mnt", "k2"],
        &["commit", "c2", "k2"],
        &["label", "c2", ROOT],
        &["view", "v0", "c1"],
        &["label", "v0", ROOT],
        &["mounts", "/mnt", "v0"],
        &["view", "v1", "c2"],
        &["label", "v1", ROOT],
        &["mounts", "/mnt", "v1"],
        &["prepare", "k3", "c2"],
        &["label", "k3", ROOT],
        &["mounts", "/mnt", "k3"],
        &["commit", "c1", "k3"],
        &["prepare", "k4", "nope"],
        &["view", "v2", "k3"],
        &["commit", "c3", "v1"],
        // Labels under containerd.io/snapshot/ are the ones containerd passes to the backend.
        &["label", "c2", "containerd.io/snapshot/kcache.test=yes"],
        &["info", "c2"],
        &["info", "k3"],
        &["info", "v1"],
        &["usage"],
        &["usage", "c1"],
        &["tree"],
        &["rm", "c1"],
        &["rm", "nope"],
        &["rm", "v0"],
        &["rm", "v1"],
        &["rm", "k3"],
        &["rm", "c2"],
        &["rm", "c1"],
        &["ls"],
    ];
    steps.iter().map(|args| (args.join(" "), env.ctr(sn, args))).collect()
}

#[test]
fn kcache_behaves_like_containerds_overlayfs_snapshotter_under_ctr() {
    let Some(programs) = prerequisites("kcache_behaves_like_containerds_overlayfs_snapshotter_under_ctr", &[]) else {
        return;
    };
    let tmp = tempfile::Builder::new().prefix("kc-e2e").tempdir_in("/tmp").unwrap();
    let dir = tmp.path();
    let kcached = Kcached::start(
        Path::new(env!("CARGO_BIN_EXE_kcached")),
        &dir.join("kcached"),
        KcachedConfig::default(),
    );
    let kcache_socket = kcached.snapshotter_socket();
    let kcache_root = kcached.root();
    let mode = fs::metadata(&kcache_socket).map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()));
    assert_eq!(mode.unwrap() & 0o777, 0o600);

    let containerd = Containerd::start(
        &programs,
        &dir.join("containerd"),
        &ContainerdConfig {
            kcache_socket: Some(kcache_socket),
            cri: None,
        },
    );
    let env = Env {
        roots: vec![
            (
                containerd
                    .root()
                    .join("io.containerd.snapshotter.v1.overlayfs")
                    .display()
                    .to_string(),
                "ROOT",
            ),
            (kcache_root.display().to_string(), "ROOT"),
        ],
        containerd,
    };
    let theirs = scenario(&env, "overlayfs");
    let ours = scenario(&env, "kcache");
    for ((step, want), (_, got)) in theirs.iter().zip(&ours) {
        eprintln!("{step}\n  overlayfs: {want:?}\n  kcache:    {got:?}");
    }
    if ours != theirs {
        eprintln!("--- containerd log\n{}\n{}", env.containerd.log(), kcached.log());
    }
    assert_eq!(ours, theirs, "kcache differs from overlayfs (see the steps above)");
    // The removals reach kcached through containerd's garbage collector, asynchronously.
    let snapshots = kcache_root.join("snapshots");
    let start = Instant::now();
    while fs::read_dir(&snapshots).unwrap().count() > 0 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "containerd's GC did not remove kcache's snapshots: {}",
            env.containerd.log()
        );
        thread::sleep(Duration::from_millis(100));
    }
}

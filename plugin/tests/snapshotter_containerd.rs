//! E2E: kcached as a proxy snapshotter of a real containerd (the harness's version), driven
//! with `ctr snapshots`, must behave like containerd's own overlayfs snapshotter: same mounts
//! (paths aside), same errors, same usage and tree. Errors are compared by their gRPC code,
//! asked of containerd's Snapshots service (containerd 2.x's error translation does not keep
//! the code's words in the message ctr prints).
//!
//! Needs containerd, ctr and root (`apt-get install containerd runc`). Without them the test is
//! skipped with a message, except under `CI=true`, where it fails.

use std::{
    fs,
    path::Path,
    thread,
    time::{Duration, Instant},
};

use kcache_plugin::proto::snapshots::{self as snap, snapshots_client::SnapshotsClient};
use kcache_tests::{
    containerd::{prerequisites, Containerd, ContainerdConfig},
    cri,
    kcached::{Kcached, KcachedConfig},
};

/// The outcome of one `ctr` call, with snapshotter-specific paths replaced by `ROOT`.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Ok(String),
    Err(tonic::Code),
}

struct Env {
    containerd: Containerd,
    roots: Vec<(String, &'static str)>,
    rt: tokio::runtime::Runtime,
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
            if args.first() == Some(&"mounts") {
                // The kernel takes overlay options in any order, and containerd's own order
                // moved between versions (2.1 puts index=off last): compare them as a set.
                text = text
                    .lines()
                    .map(|l| match l.split_once(" -o ") {
                        Some((head, opts)) => {
                            let mut o: Vec<&str> = opts.split(',').collect();
                            o.sort_unstable();
                            format!("{head} -o {}\n", o.join(","))
                        }
                        None => format!("{l}\n"),
                    })
                    .collect();
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
        let err = String::from_utf8_lossy(&out.stderr);
        eprintln!("{snapshotter} {args:?}: {}", err.trim());
        Outcome::Err(self.code_of(snapshotter, args))
    }

    /// The gRPC code containerd's Snapshots service answers the failed step with (the failed
    /// step changed nothing, so asking again gives the same answer).
    fn code_of(&self, snapshotter: &str, args: &[&str]) -> tonic::Code {
        let address = self.containerd.address().to_owned();
        let sn = snapshotter.to_owned();
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        self.rt.block_on(async move {
            let channel = cri::unix_channel(&address).await.expect("containerd's socket");
            let mut c = SnapshotsClient::new(channel);
            let a = |i: usize| args.get(i).cloned().unwrap_or_default();
            let result = match args[0].as_str() {
                "prepare" => c
                    .prepare(req(snap::PrepareSnapshotRequest {
                        snapshotter: sn,
                        key: a(1),
                        parent: a(2),
                        ..Default::default()
                    }))
                    .await
                    .map(drop),
                "view" => c
                    .view(req(snap::ViewSnapshotRequest {
                        snapshotter: sn,
                        key: a(1),
                        parent: a(2),
                        ..Default::default()
                    }))
                    .await
                    .map(drop),
                "commit" => c
                    .commit(req(snap::CommitSnapshotRequest {
                        snapshotter: sn,
                        name: a(1),
                        key: a(2),
                        ..Default::default()
                    }))
                    .await
                    .map(drop),
                "rm" => c
                    .remove(req(snap::RemoveSnapshotRequest {
                        snapshotter: sn,
                        key: a(1),
                    }))
                    .await
                    .map(drop),
                other => panic!("no gRPC twin for ctr snapshots {other}"),
            };
            match result {
                Err(status) => status.code(),
                Ok(()) => panic!("{args:?} failed under ctr but succeeded over gRPC"),
            }
        })
    }
}

/// `m` in the test's containerd namespace.
fn req<T>(m: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(m);
    r.metadata_mut()
        .insert("containerd-namespace", "e2e".parse().expect("ascii"));
    r
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
            ..ContainerdConfig::default()
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
        rt: tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap(),
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

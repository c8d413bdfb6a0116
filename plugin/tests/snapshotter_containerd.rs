//! E2E: kcached as a proxy snapshotter of a real containerd 1.6, driven with `ctr snapshots`,
//! must behave like containerd's own overlayfs snapshotter: same mounts (paths aside), same
//! errors, same usage and tree.
//!
//! Needs containerd, ctr and root (`apt-get install containerd runc`). Without them the test is
//! skipped with a message, except under `CI=true`, where it fails.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

/// Kills the process when the test ends, pass or fail.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.is_file())
}

fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// None (skip) when containerd cannot run here; a failure instead under CI=true.
fn requirements() -> Option<(PathBuf, PathBuf)> {
    let problem = match (on_path("containerd"), on_path("ctr")) {
        _ if !is_root() => "containerd needs root".to_owned(),
        (Some(containerd), Some(ctr)) => return Some((containerd, ctr)),
        _ => "containerd and ctr not found on PATH (apt-get install -y containerd runc)".to_owned(),
    };
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("CI=true: this E2E test must run, but {problem}");
    }
    eprintln!("skipping the containerd E2E test: {problem}");
    None
}

fn wait_for(path: &Path, child: &mut Child, what: &str, log: &Path) {
    let start = Instant::now();
    while !path.exists() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "{what} exited ({status}): {}",
                fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{what} did not create {}",
            path.display()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// The outcome of one `ctr` call, with snapshotter-specific paths replaced by `ROOT`.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Ok(String),
    Err(&'static str),
}

struct Env {
    ctr: PathBuf,
    address: PathBuf,
    roots: Vec<(String, &'static str)>,
}

impl Env {
    fn ctr(&self, snapshotter: &str, args: &[&str]) -> Outcome {
        let out: Output = Command::new(&self.ctr)
            .args(["--address", self.address.to_str().unwrap(), "--namespace", "e2e"])
            .args(["snapshots", "--snapshotter", snapshotter])
            .args(args)
            .output()
            .unwrap();
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
    let Some((containerd, ctr)) = requirements() else {
        return;
    };
    let tmp = tempfile::Builder::new().prefix("kc-e2e").tempdir_in("/tmp").unwrap();
    let dir = tmp.path();
    let kcache_socket = dir.join("kcache.sock");
    let kcache_root = dir.join("kroot");
    let kcache_log = dir.join("kcached.log");
    let mut kcached = Killed(
        Command::new(env!("CARGO_BIN_EXE_kcached"))
            .arg("--snapshotter-socket")
            .arg(&kcache_socket)
            .arg("--root")
            .arg(&kcache_root)
            .arg("--no-policy")
            .arg("--run-dir")
            .arg(dir.join("run"))
            .stdout(Stdio::null())
            .stderr(fs::File::create(&kcache_log).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_for(&kcache_socket, &mut kcached.0, "kcached", &kcache_log);
    let mode = fs::metadata(&kcache_socket).map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()));
    assert_eq!(mode.unwrap() & 0o777, 0o600);

    let address = dir.join("containerd.sock");
    let config = dir.join("config.toml");
    fs::write(
        &config,
        format!(
            r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = "{address}"

[ttrpc]
  address = "{address}.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"

# Collect after every deletion: that is when containerd removes a snapshot from its backend.
[plugins."io.containerd.gc.v1.scheduler"]
  deletion_threshold = 1

[proxy_plugins.kcache]
  type = "snapshot"
  address = "{socket}"
"#,
            root = dir.join("root").display(),
            state = dir.join("state").display(),
            opt = dir.join("opt").display(),
            address = address.display(),
            socket = kcache_socket.display(),
        ),
    )
    .unwrap();
    let containerd_log = dir.join("containerd.log");
    let mut containerd = Killed(
        Command::new(containerd)
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(fs::File::create(&containerd_log).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_for(&address, &mut containerd.0, "containerd", &containerd_log);

    let env = Env {
        ctr,
        address,
        roots: vec![
            (
                dir.join("root/io.containerd.snapshotter.v1.overlayfs")
                    .display()
                    .to_string(),
                "ROOT",
            ),
            (kcache_root.display().to_string(), "ROOT"),
        ],
    };
    let theirs = scenario(&env, "overlayfs");
    let ours = scenario(&env, "kcache");
    for ((step, want), (_, got)) in theirs.iter().zip(&ours) {
        eprintln!("{step}\n  overlayfs: {want:?}\n  kcache:    {got:?}");
    }
    if ours != theirs {
        for log in [&containerd_log, &kcache_log] {
            eprintln!("--- {}\n{}", log.display(), fs::read_to_string(log).unwrap_or_default());
        }
    }
    assert_eq!(ours, theirs, "kcache differs from overlayfs (see the steps above)");
    // The removals reach kcached through containerd's garbage collector, asynchronously.
    let snapshots = kcache_root.join("snapshots");
    let start = Instant::now();
    while fs::read_dir(&snapshots).unwrap().count() > 0 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "containerd's GC did not remove kcache's snapshots: {}",
            fs::read_to_string(&containerd_log).unwrap_or_default()
        );
        thread::sleep(Duration::from_millis(100));
    }
}

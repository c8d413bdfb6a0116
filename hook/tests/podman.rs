//! E2E with podman 4.x and runc: the shipped hooks.d file (packaging/crio/hooks.d/kcache.json,
//! its path and store args pointed at this build and a test store), `--hooks-dir`, and
//! `--annotation kcache.dev/cache=...`. Checked from inside a busybox container.
//!
//! Needs root, podman, runc and busybox-static (`apt-get install -y podman runc busybox-static`).
//! Skipped with a message without them, except under `CI=true`, where it fails.

mod common;

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Output},
    thread,
    time::{Duration, Instant},
};

use common::*;
use kcache_hook::{
    refs,
    testing::{FakeStore, FILES, GRP_FILE, KEY},
};
use serde_json::Value;

const IMAGE: &str = "localhost/kcache-e2e-busybox:latest";

struct Podman {
    bin: PathBuf,
    base: PathBuf,
    hooks: PathBuf,
}

impl Podman {
    fn cmd(&self) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg("--root")
            .arg(self.base.join("storage"))
            .arg("--runroot")
            .arg(self.base.join("runroot"))
            .args([
                "--storage-driver",
                "vfs",
                "--cgroup-manager",
                "cgroupfs",
                "--events-backend",
                "none",
            ])
            .arg("--hooks-dir")
            .arg(&self.hooks);
        c
    }

    fn run(&self, annotations: &[(&str, &str)], script: &str) -> Output {
        let mut c = self.cmd();
        c.args(["run", "--rm", "--runtime", "runc", "--network", "none"]).args([
            "--ulimit",
            "nofile=20000:20000",
            "--ulimit",
            "nproc=32768:32768",
        ]);
        for (k, v) in annotations {
            c.arg("--annotation").arg(format!("{k}={v}"));
        }
        c.args([IMAGE, "/bin/busybox", "sh", "-c", script]).output().unwrap()
    }
}

/// The packaged hooks.d file, pointed at this build and `store`.
fn install_hooks_d(store: &FakeStore, dir: &Path) -> Value {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/crio/hooks.d/kcache.json");
    let mut hook: Value = serde_json::from_slice(&fs::read(&shipped).unwrap()).unwrap();
    assert_eq!(hook["version"], "1.0.0");
    assert_eq!(hook["stages"], serde_json::json!(["prestart", "poststop"]));
    assert!(hook["when"]["annotations"]["^kcache\\.dev/cache$"].is_string());
    hook["hook"]["path"] = hook_bin().into();
    let mut args = hook_args(store, "x");
    args.pop(); // no stage: the hook reads it from the state's status
    hook["hook"]["args"] = args.into();
    fs::create_dir_all(dir).unwrap();
    fs::write(dir.join("kcache.json"), serde_json::to_vec_pretty(&hook).unwrap()).unwrap();
    hook
}

#[test]
fn podman_with_the_hooks_d_file_and_an_annotation() {
    let Some(tools) = require("podman", &["podman", "runc"]) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().to_path_buf();
    let store = FakeStore::new(&base.join("node"));
    let digest = store.add_cache("llama", None, &[90], 1);
    let podman = Podman {
        bin: tools[0].clone(),
        base: base.clone(),
        hooks: base.join("hooks.d"),
    };
    install_hooks_d(&store, &podman.hooks);

    // The image: a busybox rootfs, imported.
    let rootfs = base.join("rootfs");
    make_rootfs(&rootfs);
    let tar = base.join("rootfs.tar");
    let st = Command::new("tar")
        .arg("-C")
        .arg(&rootfs)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
    let out = podman.cmd().arg("import").arg(&tar).arg(IMAGE).output().unwrap();
    assert!(out.status.success(), "podman import: {:?}", text(&out));

    // Opted in: files, __grp__ children, and a write that lands in the upper dir (the script
    // copies it out of the mount as the host sees it only while the container runs).
    let cats: String = FILES.iter().map(|f| format!("cat $K/{f}; ")).collect();
    let script = format!(
        "K=/root/.triton/cache/{KEY}; {cats}\
         for p in $(grep -o '\"/[^\"]*\"' $K/{GRP_FILE} | tr -d '\"'); do \
           if [ -e \"$p\" ]; then echo CHILD_OK $p; else echo CHILD_MISSING $p; fi; done; \
         echo from-podman > $K/written && echo WROTE; grep -c ' - overlay kcache ' /proc/self/mountinfo"
    );
    let out = podman.run(&[("kcache.dev/cache", "llama")], &script);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "podman run: {stdout}\n{stderr}");
    for f in FILES {
        assert!(stdout.contains(&format!("{f} of cache 1")), "{stdout}");
    }
    assert_eq!(
        stdout.matches("CHILD_OK /root/.triton/cache/").count(),
        FILES.len(),
        "{stdout}"
    );
    assert!(!stdout.contains("CHILD_MISSING"), "{stdout}");
    assert!(stdout.contains("WROTE\n1\n"), "one kcache overlay inside: {stdout}");
    let log = hook_log(&store);
    assert!(log.contains("mounted cache \"llama\""), "{log}");
    let cache = store.layout.tree_dir(&digest).join("io.triton.cache").join(KEY);
    assert!(!cache.join("written").exists(), "the write reached the cache");

    // poststop (run by podman after the container is gone) cleans up.
    let containers = store.containers_dir();
    let start = Instant::now();
    while fs::read_dir(&containers).map(|d| d.count()).unwrap_or(0) > 0 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "poststop left {:?}\n{}",
            tree(&containers),
            hook_log(&store)
        );
        thread::sleep(Duration::from_millis(50));
    }
    assert!(refs::list(&store.layout, &digest).unwrap().is_empty());
    assert!(hook_log(&store).contains("released cache \"llama\""));
    assert!(kcache_mounts().is_empty());

    // Not opted in: the hook is not even called (when.annotations), nothing is mounted.
    let before = hook_log(&store);
    let out = podman.run(
        &[],
        "[ -e /root/.triton ] && echo HAS; grep -c ' - overlay kcache ' /proc/self/mountinfo; true",
    );
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stdout.trim(), "0");
    assert_eq!(hook_log(&store), before);

    // Required but missing: the start fails with our message; not required: starts without.
    let out = podman.run(
        &[("kcache.dev/cache", "nope"), ("kcache.dev/cache-required", "true")],
        "echo STARTED",
    );
    let (stdout, stderr) = text(&out);
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stderr.replace("\\\"", "\"").contains(
            "cache \"nope\" (no pod namespace) is required (kcache.dev/cache-required) but cannot be mounted: no approved cache"
        ),
        "{stderr}"
    );
    // The hook's exit code names the stage that failed (select: 5), as runc reports it.
    assert!(stderr.contains("exit status 5"), "{stderr}");
    let out = podman.run(&[("kcache.dev/cache", "nope")], "echo STARTED");
    assert!(
        out.status.success() && text(&out).0.contains("STARTED"),
        "{:?}",
        text(&out)
    );
    let start = Instant::now();
    while fs::read_dir(&containers).map(|d| d.count()).unwrap_or(0) > 0 {
        assert!(start.elapsed() < Duration::from_secs(10), "{:?}", tree(&containers));
        thread::sleep(Duration::from_millis(50));
    }
}

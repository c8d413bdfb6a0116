//! Shared by the hook's E2E tests: prerequisites, busybox bundles and rootfs, hook specs.
#![allow(dead_code)]

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use kcache_hook::testing::FakeStore;
use serde_json::{json, Value};

/// The hook under test: cargo's build, or `KCACHE_HOOK_BIN` (the shipped static build from
/// scripts/build-release.sh; `make test` runs the runc suite against it too).
pub fn hook_bin() -> String {
    std::env::var("KCACHE_HOOK_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_kcache-hook").to_owned())
}
pub const BUSYBOX: &str = "/bin/busybox";

pub fn on_path(name: &str) -> Option<PathBuf> {
    [
        "/usr/local/sbin",
        "/usr/local/bin",
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
    ]
    .iter()
    .map(|dir| Path::new(dir).join(name))
    .find(|p| p.is_file())
}

pub fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// `Some(paths)` when every tool is there; otherwise skip (print why), or panic under CI=true.
pub fn require(what: &str, tools: &[&str]) -> Option<Vec<PathBuf>> {
    let mut found = Vec::new();
    let mut problems = Vec::new();
    if !is_root() {
        problems.push("root".to_string());
    }
    if !Path::new(BUSYBOX).is_file() {
        problems.push(format!("{BUSYBOX} (apt-get install -y busybox-static)"));
    }
    for t in tools {
        match on_path(t) {
            Some(p) => found.push(p),
            None => problems.push(format!("{t} (apt-get install -y {t})")),
        }
    }
    if problems.is_empty() {
        return Some(found);
    }
    let msg = format!("the {what} E2E test needs {}", problems.join(", "));
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("CI=true: {msg}");
    }
    eprintln!("skipping: {msg}");
    None
}

/// A busybox rootfs: `/bin/busybox` plus its applet links, and the usual empty dirs.
pub fn make_rootfs(rootfs: &Path) {
    for d in ["bin", "proc", "dev", "sys", "tmp", "root", "etc"] {
        fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    fs::copy(BUSYBOX, rootfs.join("bin/busybox")).unwrap();
    let st = Command::new(BUSYBOX)
        .args(["--install", "-s"])
        .arg(rootfs.join("bin"))
        .status()
        .unwrap();
    assert!(st.success(), "busybox --install");
    fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
}

/// The hook's argv for `stage` against `store`.
pub fn hook_args(store: &FakeStore, stage: &str) -> Vec<String> {
    vec![
        "kcache-hook".into(),
        "--store".into(),
        store.layout.root().display().to_string(),
        "--run-dir".into(),
        store.layout.run_dir().display().to_string(),
        stage.into(),
    ]
}

/// A runc bundle running `script` under busybox sh, with `annotations` and the hook.
pub struct Bundle {
    pub dir: PathBuf,
    pub rootfs: PathBuf,
}

impl Bundle {
    pub fn new(dir: &Path) -> Self {
        let rootfs = dir.join("rootfs");
        make_rootfs(&rootfs);
        Self {
            dir: dir.to_path_buf(),
            rootfs,
        }
    }

    /// Writes config.json. `hooks`: the spec's `hooks` object (or null).
    pub fn write_spec(&self, script: &str, env: &[&str], annotations: &[(&str, &str)], hooks: Value) {
        self.write_spec_as(0, script, env, annotations, hooks)
    }

    /// [`Bundle::write_spec`] with the process running as `uid` (gid = uid).
    pub fn write_spec_as(&self, uid: u32, script: &str, env: &[&str], annotations: &[(&str, &str)], hooks: Value) {
        let ann: serde_json::Map<String, Value> = annotations
            .iter()
            .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
            .collect();
        let mut env: Vec<String> = env.iter().map(|s| s.to_string()).collect();
        env.insert(0, "PATH=/bin".into());
        let mut spec = json!({
            "ociVersion": "1.0.2",
            "process": {
                "terminal": false,
                "user": {"uid": uid, "gid": uid},
                "args": ["/bin/busybox", "sh", "-c", script],
                "env": env,
                "cwd": "/",
                "noNewPrivileges": true
            },
            "root": {"path": "rootfs", "readonly": false},
            "hostname": "kcache-e2e",
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}
            ],
            "linux": {
                "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, {"type": "network"}]
            }
        });
        if !ann.is_empty() {
            spec["annotations"] = Value::Object(ann);
        }
        if !hooks.is_null() {
            spec["hooks"] = hooks;
        }
        fs::write(self.dir.join("config.json"), serde_json::to_vec_pretty(&spec).unwrap()).unwrap();
    }
}

/// The spec's `hooks` with kcache-hook in prestart and poststop (after `extra_prestart`).
pub fn kcache_hooks(store: &FakeStore, extra_prestart: Option<Value>) -> Value {
    let mut pre: Vec<Value> = extra_prestart.into_iter().collect();
    pre.push(json!({"path": hook_bin(), "args": hook_args(store, "prestart"), "timeout": 20}));
    json!({
        "prestart": pre,
        "poststop": [{"path": hook_bin(), "args": hook_args(store, "poststop"), "timeout": 20}]
    })
}

/// runc with its own state dir.
pub struct Runc {
    pub bin: PathBuf,
    pub root: PathBuf,
}

impl Runc {
    pub fn run(&self, bundle: &Bundle, id: &str) -> Output {
        self.cmd(bundle, id).output().unwrap()
    }

    /// `runc run` in the background (the script waits for [`release`]).
    pub fn spawn(&self, bundle: &Bundle, id: &str) -> Child {
        self.cmd(bundle, id)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    fn cmd(&self, bundle: &Bundle, id: &str) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg("--root")
            .arg(&self.root)
            .args(["run", "--bundle"])
            .arg(&bundle.dir)
            .arg(id)
            .stdin(Stdio::null());
        c
    }
}

/// The script tail that makes a container wait: it creates /tmp/ready and waits for /tmp/go.
pub const WAIT: &str =
    "touch /tmp/ready; i=0; while [ ! -e /tmp/go ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done";

pub fn wait_ready(bundle: &Bundle, child: &mut Child) {
    let start = Instant::now();
    while !bundle.rootfs.join("tmp/ready").exists() {
        if let Ok(Some(st)) = child.try_wait() {
            let out = std::mem::replace(child, Command::new("true").spawn().unwrap()).wait_with_output();
            panic!("container exited early ({st}): {out:?}");
        }
        assert!(start.elapsed() < Duration::from_secs(20), "container did not get ready");
        thread::sleep(Duration::from_millis(20));
    }
}

pub fn release(bundle: &Bundle, child: Child) -> Output {
    fs::write(bundle.rootfs.join("tmp/go"), "").unwrap();
    child.wait_with_output().unwrap()
}

pub fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Every entry under `dir`, recursively, as relative paths (sorted).
pub fn tree(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(rd) = fs::read_dir(dir) else { return };
        for e in rd.flatten() {
            let p = e.path();
            out.push(p.strip_prefix(base).unwrap().display().to_string());
            if e.file_type().unwrap().is_dir() {
                walk(base, &p, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// Host mounts of any kcache overlay (source "kcache").
pub fn kcache_mounts() -> Vec<String> {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(" - overlay kcache "))
        .map(String::from)
        .collect()
}

/// The hook log of `store`.
pub fn hook_log(store: &FakeStore) -> String {
    fs::read_to_string(store.layout.run_dir().join("hook.log")).unwrap_or_default()
}

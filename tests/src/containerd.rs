//! A real containerd 1.6 (Debian's) with its own root, state, sockets and config in a temp dir:
//! optionally with the CRI plugin (host-network pods only, no CNI), kcache as its proxy
//! snapshotter and a loopback registry reachable over plain HTTP.
//!
//! Needs root, `containerd`, `ctr`, `runc` and `containerd-shim-runc-v2`. Tests call
//! [`prerequisites`] first: without them they skip with a message, except under `CI=true`,
//! where they fail.

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

/// The programs a containerd E2E test runs.
pub struct Programs {
    pub containerd: PathBuf,
    pub ctr: PathBuf,
}

/// `name` on `PATH` (also the sbin directories, which a non-login root shell may lack).
pub fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/bin"])
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.is_file());
    found
}

/// Whether this process runs as root.
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

/// The programs, or None (skip, with a message on stderr) when containerd cannot run here.
/// Under `CI=true` a missing prerequisite panics instead: the E2E tests must run there.
/// `extra` names further programs the test needs (e.g. `runc`, `containerd-shim-runc-v2`).
pub fn prerequisites(test: &str, extra: &[&str]) -> Option<Programs> {
    let mut missing: Vec<String> = ["containerd", "ctr"]
        .iter()
        .chain(extra)
        .filter(|p| on_path(p).is_none())
        .map(|p| (*p).to_owned())
        .collect();
    if !is_root() {
        missing.push("root".to_owned());
    }
    if missing.is_empty() {
        return Some(Programs {
            containerd: on_path("containerd")?,
            ctr: on_path("ctr")?,
        });
    }
    let problem = format!(
        "missing {} (apt-get install -y containerd runc, and run as root)",
        missing.join(", ")
    );
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("CI=true: the E2E test {test} must run, but it is {problem}");
    }
    eprintln!("skipping the E2E test {test}: {problem}");
    None
}

/// The CRI plugin's settings (without it, containerd runs with the CRI plugin disabled).
#[derive(Clone, Debug, Default)]
pub struct CriConfig {
    /// The pod sandbox ("pause") image.
    pub sandbox_image: String,
    /// The CRI snapshotter; `kcache` needs [`ContainerdConfig::kcache_socket`].
    pub snapshotter: String,
    /// Registries (`127.0.0.1:PORT`) spoken to over plain HTTP.
    pub plain_http: Vec<String>,
    /// The runc runtime's `base_runtime_spec` (kcache's hooks are registered through it).
    pub base_runtime_spec: Option<PathBuf>,
    /// The runc runtime's `pod_annotations` (annotations CRI passes to the OCI spec).
    pub pod_annotations: Vec<String>,
}

/// What to start.
#[derive(Clone, Debug, Default)]
pub struct ContainerdConfig {
    /// kcached's snapshotter socket: registered as the proxy snapshotter `kcache`.
    pub kcache_socket: Option<PathBuf>,
    pub cri: Option<CriConfig>,
}

/// A running containerd; on drop it is killed together with the shims it started, and the
/// mounts it left under its directories are detached.
pub struct Containerd {
    child: Option<Child>,
    ctr: PathBuf,
    dir: PathBuf,
    address: PathBuf,
    config: PathBuf,
}

impl ContainerdConfig {
    /// The config file for a containerd whose files are under `dir` (its socket:
    /// `dir/containerd.sock`). `programs` names the containerd it is for.
    pub fn render(&self, _programs: &Programs, dir: &Path) -> String {
        self.toml(dir, &dir.join("containerd.sock"))
    }

    fn toml(&self, dir: &Path, address: &Path) -> String {
        let mut t = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
{disabled}
[grpc]
  address = "{address}"

[ttrpc]
  address = "{address}.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"

# Collect after every deletion: that is when containerd removes a snapshot from its backend.
[plugins."io.containerd.gc.v1.scheduler"]
  deletion_threshold = 1
"#,
            root = dir.join("root").display(),
            state = dir.join("state").display(),
            opt = dir.join("opt").display(),
            address = address.display(),
            disabled = if self.cri.is_some() {
                ""
            } else {
                "disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n"
            },
        );
        if let Some(socket) = &self.kcache_socket {
            let _ = write!(
                t,
                "\n[proxy_plugins.kcache]\n  type = \"snapshot\"\n  address = \"{}\"\n",
                socket.display()
            );
        }
        if let Some(cri) = &self.cri {
            let _ = write!(
                t,
                r#"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{sandbox}"
  # This machine may not lower oom_score_adj (a container, or a restricted root).
  restrict_oom_score_adj = true
  disable_apparmor = true
  enable_selinux = false
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "{snapshotter}"
    # Pass containerd.io/snapshot/cri.* labels to the snapshotter: kcache's gate needs them.
    disable_snapshot_annotations = false
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
{runc_extra}  # Host-network pods only: an empty CNI directory.
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{cni}/bin"
    conf_dir = "{cni}/conf"
"#,
                sandbox = cri.sandbox_image,
                snapshotter = cri.snapshotter,
                cni = dir.join("cni").display(),
                runc_extra = cri.runc_extra(),
            );
            for host in &cri.plain_http {
                let _ = write!(
                    t,
                    "  [plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors.\"{host}\"]\n    endpoint = [\"http://{host}\"]\n"
                );
            }
        }
        t
    }
}

impl CriConfig {
    fn runc_extra(&self) -> String {
        let mut t = String::new();
        if let Some(spec) = &self.base_runtime_spec {
            let _ = writeln!(t, "      base_runtime_spec = \"{}\"", spec.display());
        }
        if !self.pod_annotations.is_empty() {
            let list: Vec<String> = self.pod_annotations.iter().map(|a| format!("\"{a}\"")).collect();
            let _ = writeln!(t, "      pod_annotations = [{}]", list.join(", "));
        }
        t
    }
}

impl Containerd {
    /// Starts containerd with its files under `dir` (config.toml, containerd.log, root, state,
    /// containerd.sock) and waits for its socket.
    pub fn start(programs: &Programs, dir: &Path, config: &ContainerdConfig) -> Self {
        let config_path = dir.join("containerd.toml");
        fs::create_dir_all(dir).expect("containerd dir");
        fs::write(&config_path, config.render(programs, dir)).expect("containerd config");
        Self::start_on(programs, dir, &config_path, &[])
    }

    /// Starts containerd on a config file made elsewhere ([`ContainerdConfig::render`] for
    /// `dir`, then changed by `kcache install containerd`, say), with `env` added to its
    /// environment. Its files go under `dir`.
    pub fn start_on(programs: &Programs, dir: &Path, config_path: &Path, env: &[(String, String)]) -> Self {
        let address = dir.join("containerd.sock");
        fs::create_dir_all(dir.join("cni/bin")).expect("cni dir");
        fs::create_dir_all(dir.join("cni/conf")).expect("cni dir");
        let log = dir.join("containerd.log");
        let child = Command::new(&programs.containerd)
            .arg("--config")
            .arg(config_path)
            .arg("--log-level")
            .arg("info")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).expect("containerd log"))
            .spawn()
            .expect("start containerd");
        let mut c = Self {
            child: Some(child),
            ctr: programs.ctr.clone(),
            dir: dir.to_owned(),
            address,
            config: config_path.to_owned(),
        };
        let start = Instant::now();
        while !c.address.exists() {
            if let Some(Ok(Some(status))) = c.child.as_mut().map(Child::try_wait) {
                panic!("containerd exited ({status}):\n{}", c.log());
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "containerd did not create {}:\n{}",
                c.address.display(),
                c.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        c
    }

    /// The config file it runs with.
    pub fn config(&self) -> PathBuf {
        self.config.clone()
    }

    /// The gRPC socket (CRI and containerd's own services).
    pub fn address(&self) -> &Path {
        &self.address
    }

    /// containerd's root directory (its snapshotters' roots are under it).
    pub fn root(&self) -> PathBuf {
        self.dir.join("root")
    }

    /// containerd's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    /// Runs `ctr --address … --namespace <ns> <args>`.
    pub fn ctr(&self, namespace: &str, args: &[&str]) -> Output {
        Command::new(&self.ctr)
            .arg("--address")
            .arg(&self.address)
            .args(["--namespace", namespace])
            .args(args)
            .output()
            .expect("run ctr")
    }

    /// `ctr` that must succeed; its stdout.
    pub fn ctr_ok(&self, namespace: &str, args: &[&str]) -> String {
        let out = self.ctr(namespace, args);
        assert!(
            out.status.success(),
            "ctr {args:?}: {}\n--- containerd log\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Kills containerd and the shims it started (found by its socket in their command line),
    /// then detaches every mount left under its directory.
    pub fn stop(&mut self) {
        if self.child.is_some() {
            // The containers first: killing a shim leaves its container's processes running.
            let tasks = self.ctr("k8s.io", &["tasks", "ls", "-q"]);
            for id in String::from_utf8_lossy(&tasks.stdout).split_whitespace() {
                let _ = self.ctr("k8s.io", &["tasks", "kill", "-s", "SIGKILL", id]);
            }
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let address = self.address.to_string_lossy().into_owned();
        for pid in pids_with_arg(&address) {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
        // Wait for the shims' containers to go: their mounts stay busy until then.
        std::thread::sleep(Duration::from_millis(200));
        unmount_under(&self.dir);
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Processes whose command line holds `arg` (never this process).
fn pids_with_arg(arg: &str) -> Vec<u32> {
    let me = std::process::id();
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| c.split(|b| *b == 0).any(|a| a == arg.as_bytes()))
                .unwrap_or(false)
        })
        .collect()
}

/// Detaches (lazily) every mount point under `dir`, deepest first.
pub fn unmount_under(dir: &Path) {
    let prefix = dir.to_string_lossy().into_owned();
    let mut points: Vec<String> = fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_owned))
        .filter(|p| p.starts_with(&prefix))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        let _ = Command::new("umount").args(["-l", &p]).status();
    }
}

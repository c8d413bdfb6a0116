//! A real containerd with its own root, state, sockets (NRI's too) and config in a temp dir:
//! optionally with the CRI plugin (host-network pods only, no CNI), kcache as its proxy
//! snapshotter and a loopback registry reachable over plain HTTP (a `hosts.toml` directory).
//!
//! Which containerd: `KCACHE_CONTAINERD=1.6` (the default: Debian's, from PATH), `1.7` or `2.1`
//! (Debian trixie's and sid's, fetched by `scripts/debian-peer.sh containerd-<v>` and run with
//! their own ctr and shim; runc from the system). With kcache, the config is rendered by
//! [`kcache_core::containerd::plan`], the code `kcache install containerd` runs, for that
//! version.
//!
//! Needs root, `containerd`, `ctr`, `runc` and `containerd-shim-runc-v2`. Tests call
//! [`prerequisites`] first: without them they skip with a message, except under `CI=true`,
//! where they fail.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::Duration,
};

use kcache_core::containerd::{
    plan::{plan, InstallRequest, PullPath},
    Flavor,
};

/// The environment variable that picks the containerd version.
pub const VERSION_ENV: &str = "KCACHE_CONTAINERD";

/// The programs a containerd E2E test runs.
#[derive(Clone, Debug)]
pub struct Programs {
    pub containerd: PathBuf,
    pub ctr: PathBuf,
    /// `1.6`, `1.7` or `2.1`.
    pub version: String,
    /// The containerd line (how it is configured).
    pub flavor: Flavor,
    /// The directory of a fetched containerd (its shim is found there first).
    pub bin_dir: Option<PathBuf>,
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

/// The containerd version the tests run against (`KCACHE_CONTAINERD`, default 1.6).
pub fn selected_version() -> String {
    std::env::var(VERSION_ENV)
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| "1.6".into())
}

/// The bin directory of containerd `version` fetched by scripts/debian-peer.sh.
fn fetched(version: &str) -> Result<PathBuf, String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/debian-peer.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg(format!("containerd-{version}"))
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} containerd-{version} failed: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("usr/bin"))
}

/// The programs, or None (skip, with a message on stderr) when containerd cannot run here.
/// Under `CI=true` a missing prerequisite panics instead: the E2E tests must run there.
/// `extra` names further programs the test needs (e.g. `runc`, `containerd-shim-runc-v2`).
pub fn prerequisites(test: &str, extra: &[&str]) -> Option<Programs> {
    let version = selected_version();
    let mut missing: Vec<String> = Vec::new();
    let flavor = match Flavor::parse(&version) {
        Ok(f) => Some(f),
        Err(e) => {
            missing.push(format!("a known {VERSION_ENV} ({e})"));
            None
        }
    };
    let bin_dir = match version.as_str() {
        "1.6" => None,
        v => match fetched(v) {
            Ok(d) => Some(d),
            Err(e) => {
                missing.push(e);
                None
            }
        },
    };
    let find = |name: &str| {
        bin_dir
            .as_ref()
            .map(|d| d.join(name))
            .filter(|p| p.is_file())
            .or_else(|| {
                if bin_dir.is_some() && name != "runc" {
                    None
                } else {
                    on_path(name)
                }
            })
    };
    missing.extend(
        ["containerd", "ctr"]
            .iter()
            .chain(extra)
            .filter(|p| find(p).is_none())
            .map(|p| (*p).to_owned()),
    );
    if !is_root() {
        missing.push("root".to_owned());
    }
    if missing.is_empty() {
        return Some(Programs {
            containerd: find("containerd")?,
            ctr: find("ctr")?,
            version,
            flavor: flavor?,
            bin_dir,
        });
    }
    let problem = format!(
        "missing {} (containerd {version}: apt-get install -y containerd runc, and run as root)",
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
    /// The CRI snapshotter; `kcache` needs [`ContainerdConfig::kcache_socket`] and is then set
    /// by kcache's install code.
    pub snapshotter: String,
    /// Registries (`127.0.0.1:PORT`) spoken to over plain HTTP.
    pub plain_http: Vec<String>,
    /// The runc runtime's `base_runtime_spec` (kcache's install starts its own from it).
    pub base_runtime_spec: Option<PathBuf>,
    /// The runc runtime's `pod_annotations` (annotations CRI passes to the OCI spec).
    pub pod_annotations: Vec<String>,
    /// The hook kcache's install adds to the base spec (default `/bin/true`: a real hook that
    /// does nothing, for tests that do not mount caches).
    pub hook: Option<PathBuf>,
    /// containerd 2.1+: how CRI pulls (the default: the transfer service).
    pub pull: PullPath,
    /// `kcache install containerd --nri`: no base spec hook; NRI on (1.7), its socket
    /// [`Containerd::nri_socket`], for kcached's NRI plugin.
    pub nri: bool,
}

/// When containerd's garbage collector runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Gc {
    /// After every deletion (`deletion_threshold = 1`): that is when containerd removes a
    /// snapshot from its backend.
    #[default]
    EveryDeletion,
    /// Only when asked synchronously (CRI's RemoveImage, `ctr images rm --sync`): no threshold
    /// can fire in the middle of a test.
    OnlySynchronous,
}

/// What to start.
#[derive(Clone, Debug, Default)]
pub struct ContainerdConfig {
    /// kcached's snapshotter socket: registered as the proxy snapshotter `kcache` (with CRI, by
    /// kcache's install code).
    pub kcache_socket: Option<PathBuf>,
    pub cri: Option<CriConfig>,
    /// containerd 2.x: the kcache-image-verifier binary install links into the bindir.
    pub verifier: Option<PathBuf>,
    /// Environment for containerd (and so for the image verifiers it runs).
    pub env: Vec<(String, String)>,
    pub gc: Gc,
}

/// A running containerd; on drop it is killed together with the shims it started, and the
/// mounts it left under its directories are detached.
pub struct Containerd {
    child: Option<Child>,
    programs: Programs,
    dir: PathBuf,
    address: PathBuf,
    config: PathBuf,
}

/// Sets `key = value` in the table at `path` (created as needed) of `doc`.
fn put(doc: &mut toml_edit::DocumentMut, path: &[&str], key: &str, value: impl Into<toml_edit::Value>) {
    let mut t = doc.as_table_mut();
    for k in path {
        t = t
            .entry(k)
            .or_insert_with(|| {
                let mut n = toml_edit::Table::new();
                n.set_implicit(true);
                toml_edit::Item::Table(n)
            })
            .as_table_mut()
            .expect("a table");
    }
    t.insert(key, toml_edit::Item::Value(value.into()));
}

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

impl ContainerdConfig {
    /// The config file for a containerd whose files are under `dir` (its socket:
    /// `dir/containerd.sock`), as a node has it before `kcache install containerd`: kcache's part
    /// is added by [`Containerd::start`] (the install code) or by the installed `kcache` itself.
    pub fn render(&self, programs: &Programs, dir: &Path) -> String {
        self.base_toml(programs, dir, &dir.join("containerd.sock"))
    }

    /// containerd's own settings and CRI's, without kcache: every path under `dir`.
    fn base_toml(&self, p: &Programs, dir: &Path, address: &Path) -> String {
        let v3 = p.flavor.is_2x();
        let mut d = toml_edit::DocumentMut::new();
        d.insert("version", toml_edit::value(if v3 { 3 } else { 2 }));
        d.insert("root", toml_edit::value(s(&dir.join("root"))));
        d.insert("state", toml_edit::value(s(&dir.join("state"))));
        if self.cri.is_none() {
            let mut a = toml_edit::Array::new();
            a.push("io.containerd.grpc.v1.cri");
            d.insert("disabled_plugins", toml_edit::value(a));
        }
        put(&mut d, &["grpc"], "address", s(address));
        put(&mut d, &["ttrpc"], "address", format!("{}.ttrpc", address.display()));
        put(
            &mut d,
            &["plugins", "io.containerd.internal.v1.opt"],
            "path",
            s(&dir.join("opt")),
        );
        let gc = ["plugins", "io.containerd.gc.v1.scheduler"];
        match self.gc {
            Gc::EveryDeletion => put(&mut d, &gc, "deletion_threshold", 1),
            Gc::OnlySynchronous => {
                put(&mut d, &gc, "deletion_threshold", 0);
                put(&mut d, &gc, "mutation_threshold", 1_000_000_000);
                put(&mut d, &gc, "pause_threshold", 0.0);
                put(&mut d, &gc, "startup_delay", "1000h");
            }
        }
        if p.version != "1.6" {
            // NRI (1.7: off by default; 2.x: on): its socket and plugin dirs in the test's dir.
            let nri = ["plugins", "io.containerd.nri.v1.nri"];
            put(&mut d, &nri, "socket_path", s(&Containerd::nri_socket_in(dir)));
            put(&mut d, &nri, "plugin_path", s(&dir.join("nri/plugins")));
            put(&mut d, &nri, "plugin_config_path", s(&dir.join("nri/conf.d")));
        }
        if v3 {
            // 2.x runs the bindir verifiers by default: never /opt/containerd's.
            put(
                &mut d,
                &["plugins", "io.containerd.image-verifier.v1.bindir"],
                "bin_dir",
                s(&dir.join("verifiers")),
            );
        }
        let Some(cri) = &self.cri else {
            return d.to_string();
        };
        let (images, runtime, grpc): (&[&str], &[&str], &[&str]) = if v3 {
            (
                &["plugins", "io.containerd.cri.v1.images"],
                &["plugins", "io.containerd.cri.v1.runtime"],
                &["plugins", "io.containerd.grpc.v1.cri"],
            )
        } else {
            (
                &["plugins", "io.containerd.grpc.v1.cri", "containerd"],
                &["plugins", "io.containerd.grpc.v1.cri"],
                &["plugins", "io.containerd.grpc.v1.cri"],
            )
        };
        put(&mut d, grpc, "stream_server_address", "127.0.0.1");
        put(&mut d, grpc, "stream_server_port", "0");
        if v3 {
            put(
                &mut d,
                &[images, &["pinned_images"]].concat(),
                "sandbox",
                cri.sandbox_image.as_str(),
            );
        } else {
            put(&mut d, grpc, "sandbox_image", cri.sandbox_image.as_str());
        }
        // This machine may not lower oom_score_adj (a container, or a restricted root).
        put(&mut d, runtime, "restrict_oom_score_adj", true);
        put(&mut d, runtime, "disable_apparmor", true);
        put(&mut d, runtime, "enable_selinux", false);
        let ctd = [runtime, &["containerd"]].concat();
        put(&mut d, &ctd, "default_runtime_name", "runc");
        let runc = [runtime, &["containerd", "runtimes", "runc"]].concat();
        put(&mut d, &runc, "runtime_type", "io.containerd.runc.v2");
        // Host-network pods only: an empty CNI directory.
        let cni = [runtime, &["cni"]].concat();
        put(&mut d, &cni, "bin_dir", s(&dir.join("cni/bin")));
        put(&mut d, &cni, "conf_dir", s(&dir.join("cni/conf")));
        put(&mut d, images, "snapshotter", cri.snapshotter.as_str());
        if !self.installs_kcache() {
            // Without kcache's install: the runtime settings as given, and on 1.x CRI's labels
            // for whatever snapshotter runs.
            if let Some(spec) = &cri.base_runtime_spec {
                put(&mut d, &runc, "base_runtime_spec", s(spec));
            }
            if !cri.pod_annotations.is_empty() {
                let a: toml_edit::Array = cri.pod_annotations.iter().collect();
                put(&mut d, &runc, "pod_annotations", a);
            }
            if !v3 {
                put(&mut d, images, "disable_snapshot_annotations", false);
            }
        }
        // Plain-HTTP registries through a hosts directory: mirrors would make 2.1's CRI fall
        // back to local pulls.
        let certs = dir.join("certs.d");
        let registry = if v3 {
            [images, &["registry"]].concat()
        } else {
            [grpc, &["registry"]].concat()
        };
        put(&mut d, &registry, "config_path", s(&certs));
        for host in &cri.plain_http {
            let h = certs.join(host);
            fs::create_dir_all(&h).expect("registry hosts dir");
            fs::write(
                h.join("hosts.toml"),
                format!("server = \"http://{host}\"\n\n[host.\"http://{host}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"),
            )
            .expect("hosts.toml");
        }
        d.to_string()
    }

    /// Whether kcache's install code renders the kcache part of the config.
    fn installs_kcache(&self) -> bool {
        self.kcache_socket.is_some() && self.cri.as_ref().is_none_or(|c| c.snapshotter == "kcache")
    }
}

impl ContainerdConfig {
    /// kcache's part of the config, written by the code `kcache install containerd --write`
    /// runs (config.toml on 1.x, a drop-in on 2.x), for this containerd's version.
    fn install(&self, p: &Programs, dir: &Path, config: &Path) {
        let socket = self.kcache_socket.clone().expect("kcache's socket");
        let cri = self.cri.clone().unwrap_or_default();
        let request = InstallRequest {
            kcache_config: None,
            flavor: p.flavor,
            config: config.to_owned(),
            drop_in: Some(dir.join("conf.d/kcache.toml")),
            socket,
            base_spec: dir.join("base-spec.json"),
            base_spec_from: cri.base_runtime_spec.clone(),
            hook: cri.hook.clone().unwrap_or_else(|| PathBuf::from("/bin/true")),
            runtime: "runc".into(),
            verifier_bin_dir: dir.join("verifiers"),
            verifier: self
                .verifier
                .clone()
                // A verifier that allows every pull, for tests that do not check refusals.
                .unwrap_or_else(|| PathBuf::from("/bin/true")),
            max_verifiers: 10,
            per_verifier_timeout: "10s".into(),
            ctr: p.ctr.clone(),
            pull: cri.pull,
            platforms: Vec::new(),
            nri: cri.nri,
        };
        let plan = plan(&request).expect("kcache install containerd: plan");
        plan.write(&mut |step| eprintln!("kcache install containerd: {step}"))
            .expect("kcache install containerd: write");
    }
}

impl Containerd {
    /// Starts containerd with its files under `dir` (config.toml, containerd.log, root, state,
    /// containerd.sock) and waits for its socket.
    pub fn start(programs: &Programs, dir: &Path, config: &ContainerdConfig) -> Self {
        fs::create_dir_all(dir).expect("containerd dir");
        let config_path = dir.join("containerd.toml");
        fs::write(&config_path, config.render(programs, dir)).expect("containerd config");
        if config.installs_kcache() {
            config.install(programs, dir, &config_path);
        }
        Self::start_on(programs, dir, &config_path, &config.env)
    }

    /// Starts containerd on a config file made elsewhere ([`ContainerdConfig::render`] for
    /// `dir`, then changed by `kcache install containerd`, say), with `env` added to its
    /// environment. Its files go under `dir`.
    pub fn start_on(programs: &Programs, dir: &Path, config_path: &Path, env: &[(String, String)]) -> Self {
        let address = dir.join("containerd.sock");
        fs::create_dir_all(dir.join("cni/bin")).expect("cni dir");
        fs::create_dir_all(dir.join("cni/conf")).expect("cni dir");
        let log = dir.join("containerd.log");
        let mut cmd = Command::new(&programs.containerd);
        cmd.arg("--config")
            .arg(config_path)
            .arg("--log-level")
            .arg("info")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).expect("containerd log"));
        if let Some(bin) = &programs.bin_dir {
            // The fetched containerd's shim before the system's.
            let path = std::env::var("PATH").unwrap_or_default();
            cmd.env("PATH", format!("{}:{path}", bin.display()));
        }
        let child = cmd.spawn().expect("start containerd");
        let mut c = Self {
            child: Some(child),
            programs: programs.clone(),
            dir: dir.to_owned(),
            address,
            config: config_path.to_owned(),
        };
        let log = dir.join("containerd.log");
        crate::socket::wait_until_listening(
            "containerd",
            &[&c.address],
            c.child.as_mut(),
            || fs::read_to_string(&log).unwrap_or_default(),
            crate::socket::LISTEN_TIMEOUT,
        );
        c
    }

    /// The programs it runs (its version among them).
    pub fn programs(&self) -> &Programs {
        &self.programs
    }

    /// CRI's registry `config_path`: `<host>/hosts.toml` per registry, read by containerd on
    /// each pull (so a test may rewrite one while containerd runs).
    pub fn hosts_dir(&self) -> PathBuf {
        self.dir.join("certs.d")
    }

    /// The config file it runs with.
    pub fn config(&self) -> PathBuf {
        self.config.clone()
    }

    /// The gRPC socket (CRI and containerd's own services).
    pub fn address(&self) -> &Path {
        &self.address
    }

    /// NRI's socket (in the test's dir; 1.7+).
    pub fn nri_socket(&self) -> PathBuf {
        Self::nri_socket_in(&self.dir)
    }

    /// NRI's socket of a containerd started in `dir` (known before it starts, for kcached).
    pub fn nri_socket_in(dir: &Path) -> PathBuf {
        dir.join("nri/nri.sock")
    }

    /// containerd's state dir (task bundles: `io.containerd.runtime.v2.task/<ns>/<id>`).
    pub fn state(&self) -> PathBuf {
        self.dir.join("state")
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
        Command::new(&self.programs.ctr)
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

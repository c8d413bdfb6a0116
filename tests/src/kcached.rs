//! kcached as a process with everything under one temp dir: snapshotter root, cache root, run
//! dir, sockets, log. Restartable on the same files; killable with SIGKILL.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// How to start it.
#[derive(Clone, Debug, Default)]
pub struct KcachedConfig {
    /// The policy file; None starts a bare snapshotter (`--no-policy`, no API socket).
    pub policy: Option<PathBuf>,
    /// Registries (`127.0.0.1:PORT`) spoken to over plain HTTP.
    pub insecure: Vec<String>,
    /// The contents of its config.toml (`--config`); empty: the defaults.
    pub config_toml: String,
    /// Extra arguments.
    pub args: Vec<String>,
}

/// A running kcached; killed on drop.
pub struct Kcached {
    bin: PathBuf,
    dir: PathBuf,
    config: KcachedConfig,
    child: Option<Child>,
    starts: u32,
}

impl Kcached {
    /// Starts `bin` (the kcached binary) with its files under `dir` and waits for its sockets.
    pub fn start(bin: &Path, dir: &Path, config: KcachedConfig) -> Self {
        fs::create_dir_all(dir).expect("kcached dir");
        fs::write(dir.join("config.toml"), &config.config_toml).expect("kcached config.toml");
        let mut k = Self {
            bin: bin.to_owned(),
            dir: dir.to_owned(),
            config,
            child: None,
            starts: 0,
        };
        k.spawn();
        k
    }

    /// The snapshotter socket (containerd's proxy plugin address).
    pub fn snapshotter_socket(&self) -> PathBuf {
        self.dir.join("snapshotter.sock")
    }

    /// The kcache API socket.
    pub fn api_socket(&self) -> PathBuf {
        self.dir.join("api.sock")
    }

    /// The snapshotter root.
    pub fn root(&self) -> PathBuf {
        self.dir.join("root")
    }

    /// The process id of the running daemon.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Every log so far (one file per start).
    pub fn log(&self) -> String {
        (1..=self.starts)
            .map(|n| {
                let p = self.dir.join(format!("kcached.{n}.log"));
                format!("--- {}\n{}", p.display(), fs::read_to_string(&p).unwrap_or_default())
            })
            .collect()
    }

    fn spawn(&mut self) {
        // A SIGKILLed daemon leaves its sockets behind: wait for the new ones.
        let sockets = [self.snapshotter_socket(), self.api_socket()];
        for s in &sockets {
            let _ = fs::remove_file(s);
        }
        self.starts += 1;
        let log = fs::File::create(self.dir.join(format!("kcached.{}.log", self.starts))).expect("kcached log");
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--snapshotter-socket")
            .arg(&sockets[0])
            .arg("--root")
            .arg(self.root())
            .arg("--cache-root")
            .arg(self.dir.join("caches"))
            .arg("--run-dir")
            .arg(self.dir.join("run"))
            .arg("--config")
            .arg(self.dir.join("config.toml"));
        match &self.config.policy {
            Some(policy) => {
                cmd.arg("--policy").arg(policy).arg("--api-socket").arg(&sockets[1]);
            }
            None => {
                cmd.arg("--no-policy");
            }
        }
        for host in &self.config.insecure {
            cmd.args(["--insecure-registry", host]);
        }
        let own_caches_dir = self.config.args.iter().any(|a| a == "--caches-dir")
            || self
                .config
                .config_toml
                .lines()
                .any(|l| l.trim_start().starts_with("caches_dir"));
        if !own_caches_dir {
            // Never the node's /etc/kcache/caches.d.
            cmd.arg("--caches-dir").arg(self.dir.join("caches.d"));
        }
        cmd.args(&self.config.args)
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
            .stdout(Stdio::null())
            .stderr(log);
        self.child = Some(cmd.spawn().expect("start kcached"));
        let wanted: &[PathBuf] = if self.config.policy.is_some() {
            &sockets
        } else {
            &sockets[..1]
        };
        let wanted: Vec<&Path> = wanted.iter().map(PathBuf::as_path).collect();
        let log = self.dir.join(format!("kcached.{}.log", self.starts));
        crate::socket::wait_until_listening(
            "kcached",
            &wanted,
            self.child.as_mut(),
            || fs::read_to_string(&log).unwrap_or_default(),
            crate::socket::LISTEN_TIMEOUT,
        );
    }

    /// Stops it gracefully (SIGTERM) and waits.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
            let start = Instant::now();
            while c.try_wait().ok().flatten().is_none() {
                if start.elapsed() > Duration::from_secs(10) {
                    let _ = c.kill();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.wait();
        }
    }

    /// SIGKILL, no chance to clean up.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same files (after [`Self::stop`] or [`Self::kill9`]; stops it first
    /// otherwise).
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Resident set size of the daemon in KiB (VmRSS).
    pub fn rss_kib(&self) -> Option<u64> {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    }
}

impl Drop for Kcached {
    fn drop(&mut self) {
        self.kill9();
    }
}

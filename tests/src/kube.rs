//! A real Kubernetes API server on loopback: upstream apiextensions-apiserver (the CRD half of
//! kube-apiserver) and etcd, built by scripts/kube-apiserver.sh into its cache dir (`make
//! kube-apiserver`) and started in a temp dir per test. It serves CRDs, custom resources,
//! server-side apply, /status, validation and watch; no /api/v1, no Leases, no events.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

/// A running API server; stopped (exactly its own PIDs) on drop.
pub struct KubeApiServer {
    script: PathBuf,
    rundir: PathBuf,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/kube-apiserver.sh")
}

impl KubeApiServer {
    /// Where the script builds it (`scripts/kube-apiserver.sh path`).
    pub fn build_dir() -> PathBuf {
        let out = Command::new("bash")
            .arg(script())
            .arg("path")
            .output()
            .expect("run kube-apiserver.sh");
        assert!(out.status.success(), "kube-apiserver.sh path failed");
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
    }

    /// Starts one under `rundir`. A missing build fails the test (never a skip): `make test`
    /// builds it, or run `make kube-apiserver` (4-7 min, once).
    pub fn start(rundir: &Path) -> Self {
        let build = Self::build_dir();
        assert!(
            build.join("bin/apiextensions-apiserver").is_file() && build.join("bin/etcd").is_file(),
            "no Kubernetes API server build in {}: run `make kube-apiserver` (scripts/kube-apiserver.sh build)",
            build.display()
        );
        let out = Command::new("bash")
            .arg(script())
            .arg("start")
            .arg(rundir)
            .arg(&build)
            .output()
            .expect("run kube-apiserver.sh start");
        assert!(
            out.status.success(),
            "kube-apiserver.sh start failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self {
            script: script(),
            rundir: rundir.to_path_buf(),
        }
    }

    /// The admin kubeconfig (client cert in O=system:masters).
    pub fn kubeconfig(&self) -> PathBuf {
        self.rundir.join("kubeconfig")
    }

    /// The apiserver's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.rundir.join("apiserver.log")).unwrap_or_default()
    }

    /// Stops etcd and the apiserver (idempotent).
    pub fn stop(&mut self) {
        let _ = Command::new("bash")
            .arg(&self.script)
            .arg("stop")
            .arg(&self.rundir)
            .output();
    }
}

impl Drop for KubeApiServer {
    fn drop(&mut self) {
        self.stop();
    }
}

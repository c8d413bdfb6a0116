//! Real Triton caches and the real Triton to look them up: scripts/triton-caches.sh installs the
//! `triton` wheel from PyPI into a venv and compiles caches with it (no GPU needed), cached under
//! `${XDG_CACHE_HOME:-$HOME/.cache}/kcache-test/triton-<version>/`.
//!
//! Without Python or PyPI the tests that need it skip with a message, except under `CI=true`,
//! where they fail.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

/// The Triton the tests' containers run.
pub const VERSION: &str = "3.9.0";
/// Another Triton: caches it makes must miss under [`VERSION`].
pub const OTHER_VERSION: &str = "3.8.0";

/// One Triton version's venv and the caches it compiled (scripts/triton-caches.sh's output).
#[derive(Debug, Clone)]
pub struct RealCaches {
    /// The Triton version.
    pub version: String,
    /// `caches-<hash>/`: `<set>/`, `<set>.expected.json`, `triton_caches.py`.
    pub dir: PathBuf,
    /// The venv with the wheel.
    pub venv: PathBuf,
    /// The venv's Python prefix outside the venv (`sys.base_prefix`), which a container needs
    /// too when it runs the venv's Python.
    pub base_prefix: PathBuf,
}

impl RealCaches {
    /// Runs scripts/triton-caches.sh for `version` (a no-op when its output is cached).
    /// `None` (skip) when that fails outside CI; a panic under `CI=true`.
    pub fn get(version: &str) -> Option<Self> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/triton-caches.sh");
        let out = Command::new("bash").arg(&script).arg(version).output();
        let fail = |why: String| {
            let msg = format!("real Triton {version} caches (scripts/triton-caches.sh {version}): {why}");
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("CI=true: {msg}");
            }
            eprintln!("skipping: {msg}");
            None
        };
        let out = match out {
            Ok(o) => o,
            Err(e) => return fail(e.to_string()),
        };
        if !out.status.success() {
            return fail(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        let venv = dir.parent().expect("caches dir has a parent").join("venv");
        let py = Command::new(venv.join("bin/python"))
            .args(["-c", "import sys; print(sys.base_prefix)"])
            .output()
            .expect("run the venv's python");
        assert!(py.status.success(), "{}", String::from_utf8_lossy(&py.stderr));
        let base_prefix = PathBuf::from(String::from_utf8_lossy(&py.stdout).trim());
        Some(Self {
            version: version.to_owned(),
            dir,
            venv,
            base_prefix,
        })
    }

    /// A cache dir (`TRITON_CACHE_DIR`) of `set` (`all`, `sm90`).
    pub fn set(&self, set: &str) -> PathBuf {
        self.dir.join(set)
    }

    /// What Triton wrote into `set`: `{"triton_version", "build_root", "kernels": [{"id",
    /// "target", "name", "key", "files"}]}`.
    pub fn expected(&self, set: &str) -> serde_json::Value {
        let p = self.expected_path(set);
        serde_json::from_slice(&fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    /// The path of [`RealCaches::expected`].
    pub fn expected_path(&self, set: &str) -> PathBuf {
        self.dir.join(format!("{set}.expected.json"))
    }

    /// The dir the `all` set was compiled in (its `__grp__` files name it; it no longer exists).
    pub fn all_compiled_in(&self) -> PathBuf {
        let p = self.dir.join("all.compiled-in");
        PathBuf::from(
            fs::read_to_string(&p)
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
                .trim(),
        )
    }

    /// The venv's python.
    pub fn python(&self) -> PathBuf {
        self.venv.join("bin/python")
    }

    /// The check program (scripts/triton_caches.py as it compiled these caches).
    pub fn program(&self) -> PathBuf {
        self.dir.join("triton_caches.py")
    }

    /// The host dirs a container needs, read-only at the same paths, to run [`RealCaches::python`]:
    /// the venv and, when it is not under /usr, the base prefix.
    pub fn mounts(&self) -> Vec<PathBuf> {
        let mut m = vec![self.venv.clone()];
        if !self.base_prefix.starts_with("/usr") {
            m.push(self.base_prefix.clone());
        }
        m
    }
}

/// A report of `triton_caches.py check`, run by Triton itself.
#[derive(Debug)]
pub struct Report(pub serde_json::Value);

impl Report {
    /// Parses the check's stdout.
    pub fn parse(stdout: &str) -> Self {
        let start = stdout.find("{\n").unwrap_or_else(|| panic!("no report in:\n{stdout}"));
        let end = stdout
            .rfind('}')
            .map(|e| e + 1)
            .unwrap_or_else(|| panic!("unterminated report in:\n{stdout}"));
        Self(serde_json::from_str(&stdout[start..end]).unwrap_or_else(|e| panic!("{e}: {stdout}")))
    }

    /// The Triton version that ran the check.
    pub fn triton_version(&self) -> &str {
        self.0["triton_version"].as_str().unwrap_or_default()
    }

    /// Kernels looked up.
    pub fn kernels(&self) -> u64 {
        self.0["kernels"].as_u64().unwrap_or_default()
    }

    /// Kernels Triton found complete (every file through get_group/get_file) and compile() hit.
    pub fn hits(&self) -> u64 {
        self.0["hits"].as_u64().unwrap_or_default()
    }

    /// Each kernel's result.
    pub fn results(&self) -> &[serde_json::Value] {
        self.0["results"].as_array().map(Vec::as_slice).unwrap_or_default()
    }
}

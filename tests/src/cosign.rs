//! The real cosign CLI as a test peer: cosign 2.5 (Debian trixie) and 3.1 (Debian sid), fetched
//! by `scripts/debian-peer.sh` into a version-keyed cache (nothing installed into the system).
//!
//! Every run is offline: HOME is a temp dir (no `~/.sigstore` TUF cache is read or written),
//! signing passes an empty signing config and trusted root (cosign 3) or `--tlog-upload=false`
//! (cosign 2 and cosign 3's `.sig` mode), verification `--insecure-ignore-tlog` and, where
//! cosign would otherwise fetch Sigstore's trusted root over TUF, an empty `--trusted-root`.
//! The only network cosign sees is the loopback registry (`--allow-http-registry`).

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::OnceLock,
};

/// The key password every test key is written with (COSIGN_PASSWORD).
pub const PASSWORD: &str = "kcache-interop";

/// A cosign binary and a scratch HOME for it.
pub struct Cosign {
    /// `2.5` or `3.1`.
    pub version: &'static str,
    bin: PathBuf,
    home: tempfile::TempDir,
    env: Vec<(String, std::ffi::OsString)>,
}

fn peer_root(peer: &str) -> Result<PathBuf, String> {
    static ROOTS: OnceLock<std::sync::Mutex<std::collections::HashMap<String, Result<PathBuf, String>>>> =
        OnceLock::new();
    let roots = ROOTS.get_or_init(Default::default);
    let mut roots = roots.lock().expect("peer cache lock");
    roots
        .entry(peer.to_string())
        .or_insert_with(|| {
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/debian-peer.sh");
            let out = Command::new("bash")
                .arg(&script)
                .arg(peer)
                .output()
                .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
            if !out.status.success() {
                return Err(format!(
                    "scripts/debian-peer.sh {peer} failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
        })
        .clone()
}

impl Cosign {
    /// cosign 2.5, or None (skip, with a message) when it cannot be fetched; under `CI=true`
    /// a missing cosign panics: the interop tests must run there.
    pub fn v2_5(test: &str) -> Option<Self> {
        Self::peer(test, "cosign-2.5", "2.5")
    }

    /// cosign 3.1, as [`Self::v2_5`].
    pub fn v3_1(test: &str) -> Option<Self> {
        Self::peer(test, "cosign-3.1", "3.1")
    }

    /// Both, or None.
    pub fn both(test: &str) -> Option<(Self, Self)> {
        Some((Self::v2_5(test)?, Self::v3_1(test)?))
    }

    fn peer(test: &str, peer: &str, version: &'static str) -> Option<Self> {
        let problem = match peer_root(peer) {
            Ok(root) => {
                let bin = root.join("usr/bin/cosign");
                if bin.is_file() {
                    let home = tempfile::tempdir().expect("cosign home");
                    let empty = |name: &str, media_type: &str| {
                        std::fs::write(home.path().join(name), format!(r#"{{"mediaType":"{media_type}"}}"#))
                            .expect("write empty sigstore config")
                    };
                    empty(
                        "signing_config.json",
                        "application/vnd.dev.sigstore.signingconfig.v0.2+json",
                    );
                    empty(
                        "trusted_root.json",
                        "application/vnd.dev.sigstore.trustedroot+json;version=0.1",
                    );
                    return Some(Self {
                        version,
                        bin,
                        home,
                        env: Vec::new(),
                    });
                }
                format!("{} is missing", bin.display())
            }
            Err(e) => e,
        };
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("CI=true: the interop test {test} must run, but cosign {version} is unavailable: {problem}");
        }
        eprintln!("skipping the interop test {test}: cosign {version} is unavailable: {problem}");
        None
    }

    /// Adds `key=value` to the environment of every run (say SSL_CERT_FILE, DOCKER_CONFIG).
    pub fn with_env(mut self, key: &str, value: impl Into<std::ffi::OsString>) -> Self {
        self.env.push((key.to_string(), value.into()));
        self
    }

    /// The binary.
    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// The empty signing config (no Rekor, no TSA, no Fulcio).
    pub fn signing_config(&self) -> PathBuf {
        self.home.path().join("signing_config.json")
    }

    /// An empty trusted root (key-based verification needs none; it keeps cosign off TUF).
    pub fn trusted_root(&self) -> PathBuf {
        self.home.path().join("trusted_root.json")
    }

    /// Runs cosign with `args` in `dir`, offline, with COSIGN_PASSWORD set.
    pub fn run(&self, dir: &Path, args: &[&str]) -> Output {
        Command::new(&self.bin)
            .args(args)
            .current_dir(dir)
            .env_clear()
            .env("HOME", self.home.path())
            .env("PATH", "/usr/bin:/bin")
            .env("COSIGN_PASSWORD", PASSWORD)
            .env("TUF_ROOT", self.home.path().join("tuf"))
            .env("COSIGN_EXPERIMENTAL", "0")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .output()
            .expect("run cosign")
    }

    /// Runs cosign and panics with its output unless it succeeds.
    pub fn ok(&self, dir: &Path, args: &[&str]) -> String {
        let out = self.run(dir, args);
        assert!(
            out.status.success(),
            "cosign {} {} failed:\n{}{}",
            self.version,
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `cosign generate-key-pair` into `dir` as `<prefix>.key` / `<prefix>.pub` (ECDSA P-256).
    pub fn generate_key_pair(&self, dir: &Path, prefix: &str) -> (PathBuf, PathBuf) {
        self.ok(dir, &["generate-key-pair", "--output-key-prefix", prefix]);
        (dir.join(format!("{prefix}.key")), dir.join(format!("{prefix}.pub")))
    }

    /// `cosign import-key-pair` of a PEM private key into `<prefix>.key` / `<prefix>.pub`.
    pub fn import_key_pair(&self, dir: &Path, pem: &Path, prefix: &str) -> (PathBuf, PathBuf) {
        self.ok(
            dir,
            &[
                "import-key-pair",
                "--key",
                &pem.display().to_string(),
                "--output-key-prefix",
                prefix,
            ],
        );
        (dir.join(format!("{prefix}.key")), dir.join(format!("{prefix}.pub")))
    }

    /// Signs `image` with `key` in cosign's default format for this version: `.sig` for 2.5,
    /// a Sigstore bundle referrer for 3.1. `extra` is added (e.g. `--recursive`).
    pub fn sign(&self, dir: &Path, key: &Path, image: &str, extra: &[&str]) -> Output {
        let key = key.display().to_string();
        let mut args = vec!["sign", "--key", &key, "--allow-http-registry", "-y"];
        let (sc, tr) = (
            self.signing_config().display().to_string(),
            self.trusted_root().display().to_string(),
        );
        if self.version == "2.5" {
            args.push("--tlog-upload=false");
        } else {
            args.extend(["--signing-config", &sc, "--trusted-root", &tr]);
        }
        args.extend(extra);
        args.push(image);
        self.run(dir, &args)
    }

    /// cosign 3.1's legacy `.sig` signature (`--new-bundle-format=false`), no transparency log.
    pub fn sign_legacy(&self, dir: &Path, key: &Path, image: &str, extra: &[&str]) -> Output {
        let key = key.display().to_string();
        let mut args = vec![
            "sign",
            "--key",
            &key,
            "--allow-http-registry",
            "-y",
            "--tlog-upload=false",
        ];
        if self.version != "2.5" {
            args.extend(["--new-bundle-format=false", "--use-signing-config=false"]);
        }
        args.extend(extra);
        args.push(image);
        self.run(dir, &args)
    }

    /// `cosign verify --key` without a transparency log. cosign 3.1 picks bundles when there
    /// are any, else `.sig`; cosign 2.5 reads `.sig` only.
    pub fn verify(&self, dir: &Path, public_key: &Path, image: &str) -> Output {
        let key = public_key.display().to_string();
        let tr = self.trusted_root().display().to_string();
        let mut args = vec![
            "verify",
            "--key",
            &key,
            "--insecure-ignore-tlog",
            "--allow-http-registry",
        ];
        if self.version != "2.5" {
            args.extend(["--trusted-root", &tr]);
        }
        args.push(image);
        self.run(dir, &args)
    }

    /// How cosign 2.5 verifies a bundle signature on an image: its `verify` reads `.sig` only,
    /// so `verify-attestation --new-bundle-format --type https://sigstore.dev/cosign/sign/v1`
    /// (the predicate `cosign sign` 3 signs).
    pub fn verify_bundle(&self, dir: &Path, public_key: &Path, image: &str) -> Output {
        let key = public_key.display().to_string();
        let tr = self.trusted_root().display().to_string();
        self.run(
            dir,
            &[
                "verify-attestation",
                "--key",
                &key,
                "--insecure-ignore-tlog",
                "--allow-http-registry",
                "--new-bundle-format",
                "--trusted-root",
                &tr,
                "--type",
                "https://sigstore.dev/cosign/sign/v1",
                image,
            ],
        )
    }
}

/// The combined output of a cosign run, for assertion messages.
pub fn output_text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

//! The shipped systemd files: `systemd-analyze verify` accepts kcached.service (with ExecStart
//! pointing at the binary built here, since verify checks the executable), kcached accepts the
//! flags ExecStart passes, and `systemd-tmpfiles --create` applies tmpfiles.d/kcache.conf into a
//! scratch root with the intended modes. Neither tool needs a running systemd.
//!
//! Needs the `systemd` package (systemd-analyze, systemd-tmpfiles); skipped with a message when
//! missing, except under `CI=true`, where it fails.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn tool(name: &str) -> Option<PathBuf> {
    let found = ["/usr/bin", "/bin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file());
    if found.is_none() {
        let problem = format!("{name} not found (apt-get install -y systemd)");
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("CI=true: this test must run, but {problem}");
        }
        eprintln!("skipping: {problem}");
    }
    found
}

fn verify(analyze: &Path, unit: &Path) -> (bool, String) {
    let out = Command::new(analyze)
        .args(["verify", "--man=no"])
        .arg(unit)
        .env("SYSTEMD_LOG_LEVEL", "notice")
        .output()
        .unwrap();
    (
        out.status.success() && out.stderr.is_empty(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn kcached_service_verifies() {
    let Some(analyze) = tool("systemd-analyze") else {
        return;
    };
    let shipped = std::fs::read_to_string(repo().join("systemd/kcached.service")).unwrap();
    let exec = shipped
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("an ExecStart line");
    let mut argv = exec.split_whitespace();
    assert_eq!(argv.next(), Some("/usr/bin/kcached"));
    let args: Vec<&str> = argv.collect();
    assert!(shipped.contains("Type=simple"), "kcached has no sd_notify");

    let tmp = tempfile::tempdir().unwrap();
    let unit = tmp.path().join("kcached.service");
    std::fs::write(
        &unit,
        shipped.replace("/usr/bin/kcached", env!("CARGO_BIN_EXE_kcached")),
    )
    .unwrap();
    let (ok, err) = verify(&analyze, &unit);
    assert!(ok, "systemd-analyze verify: {err}");

    // kcached takes the flags ExecStart gives it.
    let status = Command::new(env!("CARGO_BIN_EXE_kcached"))
        .args(&args)
        .arg("--help")
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "kcached rejects ExecStart's flags {args:?}");

    // The check can fail: a broken unit is reported.
    let broken = tmp.path().join("broken.service");
    std::fs::write(
        &broken,
        shipped
            .replace("/usr/bin/kcached", env!("CARGO_BIN_EXE_kcached"))
            .replace("Type=simple", "Type=bogus"),
    )
    .unwrap();
    let (ok, err) = verify(&analyze, &broken);
    assert!(!ok && err.contains("bogus"), "{err}");
}

#[test]
fn tmpfiles_conf_creates_the_directories() {
    let Some(tmpfiles) = tool("systemd-tmpfiles") else {
        return;
    };
    let conf = std::fs::read(repo().join("systemd/tmpfiles.d/kcache.conf")).unwrap();
    let root = tempfile::tempdir().unwrap();
    let mut child = Command::new(&tmpfiles)
        .arg("--create")
        .arg(format!("--root={}", root.path().display()))
        .arg("-")
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), &conf).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for (dir, mode) in [
        ("run/kcache", 0o700),
        ("run/kcache/containers", 0o700),
        ("var/lib/kcache/snapshotter", 0o700),
        ("var/lib/kcache/caches", 0o700),
        ("etc/kcache/policy.d", 0o755),
        ("etc/kcache/caches.d", 0o755),
    ] {
        let m = std::fs::metadata(root.path().join(dir)).unwrap_or_else(|e| panic!("{dir}: {e}"));
        assert!(m.is_dir(), "{dir}");
        assert_eq!(m.permissions().mode() & 0o7777, mode, "{dir}");
    }
}

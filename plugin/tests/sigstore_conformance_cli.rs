//! Runs the built `kcache` binary exactly as the sigstore-conformance harness does, over every
//! case of tests/fixtures/sigstore-conformance/bundle-verify, in file and digest modes.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

fn suite() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/sigstore-conformance/bundle-verify")
}

fn sha256_hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    // The CLI test must not trust the code under test to compute the expected digest.
    let out = Command::new("sha256sum")
        .arg("-")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn();
    let mut child = out.expect("sha256sum present");
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), bytes).unwrap();
    let o = child.wait_with_output().unwrap();
    let mut s = String::new();
    write!(
        s,
        "{}",
        String::from_utf8_lossy(&o.stdout).split_whitespace().next().unwrap()
    )
    .unwrap();
    s
}

#[test]
fn kcache_verify_bundle_agrees_with_every_conformance_case() {
    let mut cases: Vec<PathBuf> = std::fs::read_dir(suite())
        .expect("fixtures present")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("bundle.sigstore.json").exists())
        .collect();
    cases.sort();
    assert!(cases.len() >= 50);
    let mut bad = Vec::new();
    let mut runs = 0;
    for dir in &cases {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let artifact = if dir.join("artifact").exists() {
            dir.join("artifact")
        } else {
            dir.join("../a.txt")
        };
        for digest_mode in [false, true] {
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_kcache"));
            cmd.args(["sigstore", "verify-bundle", "--bundle"])
                .arg(dir.join("bundle.sigstore.json"));
            if dir.join("key.pub").exists() {
                cmd.arg("--key").arg(dir.join("key.pub"));
            } else {
                let read = |f: &str, d: &str| {
                    std::fs::read_to_string(dir.join(f))
                        .map(|s| s.trim().to_string())
                        .unwrap_or_else(|_| d.to_string())
                };
                cmd.arg("--certificate-identity").arg(read("identity", "https://github.com/sigstore-conformance/extremely-dangerous-public-oidc-beacon/.github/workflows/extremely-dangerous-oidc-beacon.yml@refs/heads/main"));
                cmd.arg("--certificate-oidc-issuer")
                    .arg(read("issuer", "https://token.actions.githubusercontent.com"));
            }
            let root = if dir.join("trusted_root.json").exists() {
                dir.join("trusted_root.json")
            } else {
                suite().join("../../trusted-roots/sigstore-python-4.5.1/public-good/trusted_root.json")
            };
            // Half the runs use the embedded public-good root, which must be the same root.
            if dir.join("trusted_root.json").exists() || digest_mode {
                cmd.arg("--trusted-root").arg(root);
            }
            if digest_mode {
                cmd.arg(format!("sha256:{}", sha256_hex(&std::fs::read(&artifact).unwrap())));
            } else {
                cmd.arg(&artifact);
            }
            let out = cmd.output().unwrap();
            runs += 1;
            let code = out.status.code();
            let expect_pass = !name.ends_with("_fail");
            let ok = if expect_pass { code == Some(0) } else { code == Some(1) };
            if !ok {
                bad.push(format!(
                    "{name} digest={digest_mode}: exit {code:?}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            } else if !expect_pass {
                let reason = String::from_utf8_lossy(&out.stderr);
                assert_eq!(
                    reason.trim().lines().count(),
                    1,
                    "{name}: reason must be one line: {reason}"
                );
            }
        }
    }
    println!("{} passed, {} failed", runs - bad.len(), bad.len());
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

#[test]
fn usage_errors_exit_2() {
    let out = Command::new(env!("CARGO_BIN_EXE_kcache"))
        .args(["sigstore", "verify-bundle", "x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = Command::new(env!("CARGO_BIN_EXE_kcache"))
        .args([
            "sigstore",
            "verify-bundle",
            "--bundle",
            "/nonexistent",
            "--key",
            "/nonexistent",
            "sha256:00",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

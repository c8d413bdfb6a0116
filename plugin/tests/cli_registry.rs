//! The kcache binary end to end on a real docker-registry: generate-key-pair, sign, verify,
//! and the exit codes (0 allowed, 1 denied, 2 usage or configuration error).

use std::process::{Command, Output};

use kcache_tests::TestRegistry;

fn kcache(args: &[&str], dir: &std::path::Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kcache"))
        .args(args)
        .current_dir(dir)
        .env("COSIGN_PASSWORD", "pw")
        .output()
        .unwrap()
}

#[tokio::test]
async fn generate_sign_verify_round_trip_with_exit_codes() {
    let reg = TestRegistry::start();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let host = reg.host();
    reg.push_image("apps/web:v1", "web").await;
    reg.push_image("apps/other:v1", "other").await;

    let out = kcache(&["generate-key-pair"], d);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(d.join("cosign.key").exists() && d.join("cosign.pub").exists());
    let out = kcache(&["generate-key-pair"], d);
    assert_eq!(out.status.code(), Some(2), "refuses to overwrite a key pair");

    let image = format!("{host}/apps/web:v1");
    let out = kcache(
        &[
            "sign",
            "--key",
            "cosign.key",
            "--v3",
            "--insecure-registry",
            &host,
            &image,
        ],
        d,
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    std::fs::write(
        d.join("policy.yaml"),
        format!("rules:\n  - name: apps\n    images: [\"{host}/apps/*\"]\n    authorities:\n      - key: {{path: cosign.pub}}\n    transparencyLog: off\n"),
    )
    .unwrap();
    let out = kcache(
        &[
            "verify",
            "--policy",
            "policy.yaml",
            "--insecure-registry",
            &host,
            "--output",
            "json",
            &image,
        ],
        d,
    );
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["decision"], "allow");
    assert_eq!(v["rule"], "apps");
    assert_eq!(v["signer"]["type"], "key");

    let other = format!("{host}/apps/other:v1");
    let out = kcache(
        &[
            "verify",
            "--policy",
            "policy.yaml",
            "--insecure-registry",
            &host,
            &other,
        ],
        d,
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("denied: image") && err.contains("sha256:") && err.contains("rule apps"),
        "{err}"
    );

    std::fs::write(
        d.join("broken.yaml"),
        format!("rules:\n  - name: apps\n    images: [\"{host}/apps/*\"]\n    authorities:\n      - keyless: {{issuer: https://x}}\n"),
    )
    .unwrap();
    let out = kcache(
        &[
            "verify",
            "--policy",
            "broken.yaml",
            "--insecure-registry",
            &host,
            &image,
        ],
        d,
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("broken.yaml") && err.contains("keyless"), "{err}");

    let out = kcache(
        &["sign", "--key", "cosign.key", "--insecure-registry", &host, &image],
        d,
    );
    assert!(out.status.success());
    let out = Command::new(env!("CARGO_BIN_EXE_kcache"))
        .args(["sign", "--key", "cosign.key", &image])
        .current_dir(d)
        .env_remove("COSIGN_PASSWORD")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "a missing password is a usage error");
}

//! The kcache binary against real registries configured the containerd way (issue 17):
//! `--registry-config-path` / `KCACHE_REGISTRY_CONFIG_PATH` naming a `certs.d` directory of
//! `<host>/hosts.toml`. A docker-registry 2.8 serving TLS with a CA the test makes (openssl), and
//! a mirror (a second docker-registry) serving an image and its signatures while the upstream
//! is stopped. The library-level cases (client certificates, tokens, redirects) are in
//! tests/tests/registry_real.rs.

use std::{
    path::Path,
    process::{Command, Output},
};

use kcache_tests::{tls::TestPki, TestRegistry};

fn kcache(args: &[&str], dir: &Path, env: &[(&str, &Path)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kcache"));
    c.args(args)
        .current_dir(dir)
        .env("COSIGN_PASSWORD", "pw")
        .env_remove("KCACHE_REGISTRY_CONFIG_PATH")
        .env_remove("SSL_CERT_FILE");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A key pair made by kcache, a policy trusting it for `<host>/apps/*` (rule `apps`), and
/// `apps/web:v1` pushed and signed in `reg` through the harness's client.
async fn signed(reg: &TestRegistry, d: &Path, host: &str) -> String {
    let out = kcache(&["generate-key-pair"], d, &[]);
    assert!(out.status.success(), "{}", text(&out));
    std::fs::write(
        d.join("policy.yaml"),
        format!("rules:\n  - name: apps\n    images: [\"{host}/apps/*\"]\n    authorities:\n      - key: {{path: cosign.pub}}\n    transparencyLog: off\n"),
    )
    .unwrap();
    let (digest, _) = reg.push_image("apps/web:v1", "web").await;
    let key = kcache_core::signing::PrivateKey::from_pem(&std::fs::read(d.join("cosign.key")).unwrap(), b"pw").unwrap();
    kcache_core::cosign::sign::sign_and_push(&reg.client(), &key, &reg.reference("apps/web:v1"), false)
        .await
        .unwrap();
    digest.to_string()
}

#[tokio::test]
async fn verify_over_tls_needs_the_ca_from_the_registry_config_path() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pki = TestPki::create(&d.join("pki"));
    let reg = TestRegistry::builder().tls(&pki).start();
    let host = reg.host();
    let digest = signed(&reg, d, &host).await;
    let image = format!("{host}/apps/web:v1");

    // Without the CA: denied (exit 1), naming the host and the TLS cause.
    let out = kcache(&["verify", "--policy", "policy.yaml", &image], d, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let t = text(&out);
    assert!(t.contains(&format!("TLS with {host}")) || t.contains(&host), "{t}");
    assert!(t.contains("UnknownIssuer") || t.contains("certificate"), "{t}");

    let host_dir = d.join("certs.d").join(&host);
    std::fs::create_dir_all(&host_dir).unwrap();
    std::fs::copy(pki.ca_cert(), host_dir.join("ca.crt")).unwrap();
    std::fs::write(
        host_dir.join("hosts.toml"),
        format!("server = \"https://{host}\"\nca = \"ca.crt\"\n"),
    )
    .unwrap();
    let certs_d = d.join("certs.d");
    let out = kcache(
        &[
            "verify",
            "--policy",
            "policy.yaml",
            "--registry-config-path",
            certs_d.to_str().unwrap(),
            "--output",
            "json",
            &image,
        ],
        d,
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["decision"], "allow");
    assert_eq!(v["rule"], "apps");
    assert_eq!(v["digest"], digest.as_str());

    // The same through the environment, as a ':'-separated list (an absent dir first).
    let list = format!("{}:{}", d.join("absent").display(), certs_d.display());
    let out = kcache(
        &["verify", "--policy", "policy.yaml", &image],
        d,
        &[("KCACHE_REGISTRY_CONFIG_PATH", Path::new(&list))],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

#[tokio::test]
async fn verify_through_a_mirror_while_the_upstream_is_down() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut upstream = TestRegistry::start();
    let mirror = TestRegistry::start();
    let (up, mir) = (upstream.host(), mirror.host());
    let digest = signed(&upstream, d, &up).await;
    // The mirror holds the image and its `.sig`, copied byte for byte.
    let sig_tag = format!(
        "{}.sig",
        kcache_core::digest::Digest::parse(&digest).unwrap().tag_prefix()
    );
    for tag in ["v1", sig_tag.as_str()] {
        upstream.copy_to(&mirror, &format!("apps/web:{tag}")).await;
    }
    upstream.stop();

    let host_dir = d.join("certs.d").join(&up);
    std::fs::create_dir_all(&host_dir).unwrap();
    std::fs::write(
        host_dir.join("hosts.toml"),
        format!("server = \"http://{up}\"\n\n[host.\"http://{mir}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"),
    )
    .unwrap();
    let certs_d = d.join("certs.d");
    let image = format!("{up}/apps/web:v1");
    let args = [
        "verify",
        "--policy",
        "policy.yaml",
        "--registry-config-path",
        certs_d.to_str().unwrap(),
        "--output",
        "json",
        &image,
    ];
    let out = kcache(&args, d, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["decision"], "allow");
    assert_eq!(v["rule"], "apps", "the rule naming the upstream name applies");
    assert_eq!(v["image"], image.as_str());
    assert_eq!(v["digest"], digest.as_str());

    // The mirror now serves another, unsigned image for the tag: denied, naming that digest.
    let (other, _) = mirror.push_image("apps/web:v1", "something else").await;
    assert_ne!(other.to_string(), digest);
    let out = kcache(&args, d, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains(other.as_str()), "{}", text(&out));
}

#[tokio::test]
async fn kcached_reads_config_path_from_its_config_toml() {
    use kcache_tests::kcached::{Kcached, KcachedConfig};
    let tmp = tempfile::Builder::new().prefix("kc-hosts").tempdir_in("/tmp").unwrap();
    let d = tmp.path();
    let pki = TestPki::create(&d.join("pki"));
    let reg = TestRegistry::builder().tls(&pki).start();
    let host = reg.host();
    let digest = signed(&reg, d, &host).await;
    let host_dir = d.join("certs.d").join(&host);
    std::fs::create_dir_all(&host_dir).unwrap();
    std::fs::copy(pki.ca_cert(), host_dir.join("ca.crt")).unwrap();
    std::fs::write(
        host_dir.join("hosts.toml"),
        format!("server = \"https://{host}\"\nca = \"ca.crt\"\n"),
    )
    .unwrap();
    let start = |config_toml: String, name: &str| {
        Kcached::start(
            Path::new(env!("CARGO_BIN_EXE_kcached")),
            &d.join(name),
            KcachedConfig {
                policy: Some(d.join("policy.yaml")),
                config_toml,
                ..KcachedConfig::default()
            },
        )
    };
    let image = format!("{host}/apps/web:v1");

    let with = start(
        format!(
            "[registry]\nconfig_path = \"{}:/nonexistent\"\n",
            d.join("certs.d").display()
        ),
        "with",
    );
    let v = kcache_core::api::Client::new(with.api_socket())
        .verify(&image, None)
        .await
        .unwrap();
    assert!(v.permits() && v.verified, "{}\n{}", v.summary(), with.log());
    assert_eq!(v.digest.as_ref().map(|d| d.to_string()), Some(digest));

    let without = start(String::new(), "without");
    let v = kcache_core::api::Client::new(without.api_socket())
        .verify(&image, None)
        .await
        .unwrap();
    assert!(!v.permits(), "{}", v.summary());
    assert!(v.reason.contains("UnknownIssuer"), "{}", v.summary());
}

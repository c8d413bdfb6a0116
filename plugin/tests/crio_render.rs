//! `kcache policy render crio` read by a real containers/image consumer: skopeo, against a
//! docker-registry on loopback with an image signed by kcache's own cosign v2 signer.
//!
//! Debian's skopeo 1.9.3 is built with sigstore *verification* stubbed out ("Debian-local
//! change: sigstore disabled"), but it still parses policy.json (strictly: an unknown field or a
//! malformed requirement fails every copy), picks the scope, reads registries.d and fetches the
//! cosign `.sig` attachment before it reaches the stub. So this test proves the parts that are
//! ours: the files parse, each image lands in the intended scope, and `use-sigstore-attachments`
//! makes the signed image's `.sig` reach signature verification. A skopeo with sigstore enabled
//! accepts the signed image outright; both outcomes are accepted below.
//!
//! Needs skopeo and docker-registry: skipped with a message if skopeo is missing, except under
//! `CI=true`, where it fails.

use std::{
    path::Path,
    process::{Command, Output},
};

use kcache_core::{cosign::sign::sign_and_push, signing::PrivateKey};
use kcache_tests::TestRegistry;

const SKOPEO: &str = "/usr/bin/skopeo";

fn skopeo_present() -> bool {
    if Path::new(SKOPEO).exists() {
        return true;
    }
    let problem = "skopeo is not installed (apt-get install -y skopeo; scripts/deps.sh)";
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("CI=true: this test must run, but {problem}");
    }
    eprintln!("skipping the CRI-O policy rendering test: {problem}");
    false
}

fn kcache(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kcache"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

/// `skopeo copy` of `image` into a fresh dir: destination with the rendered policy.
fn copy(rendered: &Path, image: &str, scratch: &Path) -> Output {
    let dest = scratch.join(image.replace(['/', ':'], "_"));
    Command::new(SKOPEO)
        .arg("--policy")
        .arg(rendered.join("policy.json"))
        .arg("--registries.d")
        .arg(rendered.join("registries.d"))
        .args(["copy", "--src-tls-verify=false"])
        .arg(format!("docker://{image}"))
        .arg(format!("dir:{}", dest.display()))
        .env("HOME", scratch)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test]
async fn skopeo_applies_the_rendered_policy_scopes_and_finds_our_signature() {
    if !skopeo_present() {
        return;
    }
    let reg = TestRegistry::start();
    let host = reg.host();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    reg.push_image("apps/signed:v1", "signed").await;
    reg.push_image("apps/unsigned:v1", "unsigned").await;
    reg.push_image("open/free:v1", "free").await;
    reg.push_image("other/x:v1", "other").await;
    let key = PrivateKey::generate_p256();
    std::fs::write(d.join("cosign.pub"), key.public_key().to_pem()).unwrap();
    sign_and_push(&reg.client(), &key, &reg.reference("apps/signed:v1"), false)
        .await
        .unwrap();

    // Everything in this policy is expressible, so --strict passes and the report is empty.
    std::fs::write(
        d.join("policy.yaml"),
        format!(
            "default: deny\nrules:\n  - name: apps\n    images: [\"{host}/apps/**\"]\n    authorities: [{{key: {{path: cosign.pub}}}}]\n    transparencyLog: off\n    signatureFormats: [cosign-v2]\n  - {{name: open, images: [\"{host}/open/**\"], allow: true}}\n"
        ),
    )
    .unwrap();
    let out = kcache(
        &[
            "policy",
            "render",
            "crio",
            "--policy",
            "policy.yaml",
            "--out",
            "rendered",
            "--strict",
        ],
        d,
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(out.stderr.is_empty(), "no report expected: {}", text(&out));
    let rendered = d.join("rendered");
    for f in ["policy.json", "registries.d/kcache.yaml", "keys/apps-authority0.pub"] {
        assert!(rendered.join(f).is_file(), "{f} written");
    }
    let policy: serde_json::Value =
        serde_json::from_slice(&std::fs::read(rendered.join("policy.json")).unwrap()).unwrap();
    assert_eq!(
        policy["transports"]["docker"][format!("{host}/apps")][0]["keyPath"],
        rendered.join("keys/apps-authority0.pub").display().to_string()
    );

    let scratch = d.join("scratch");
    std::fs::create_dir(&scratch).unwrap();

    // The allow-listed namespace copies.
    let out = copy(&rendered, &format!("{host}/open/free:v1"), &scratch);
    assert!(out.status.success(), "allow-listed image: {}", text(&out));

    // Under the key rule, an image without a `.sig` is refused for lacking one: the scope applied
    // and containers/image looked for cosign attachments (registries.d) and found none.
    let out = copy(&rendered, &format!("{host}/apps/unsigned:v1"), &scratch);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "unsigned image must be rejected: {}", text(&out));
    assert!(
        err.contains("A signature was required, but no signature exists"),
        "unsigned image: {}",
        text(&out)
    );

    // The signed image gets past that point: our `.sig` was found through registries.d and handed
    // to sigstore verification, which Debian's build stubs out ("sigstore disabled"); an upstream
    // build verifies it with the rendered key and copies.
    let out = copy(&rendered, &format!("{host}/apps/signed:v1"), &scratch);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() || err.contains("sigstore disabled"),
        "signed image must reach signature verification: {}",
        text(&out)
    );
    assert!(!err.contains("no signature exists"), "signed image: {}", text(&out));

    // Outside every rule: the default rejects it.
    let out = copy(&rendered, &format!("{host}/other/x:v1"), &scratch);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "unlisted image must be rejected: {}", text(&out));
    assert!(err.contains("rejected by policy"), "unlisted image: {}", text(&out));
}

#[test]
fn strict_refuses_to_write_what_containers_image_cannot_express_and_broken_policies_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("policy.yaml"),
        "default: allow\nrules:\n  - name: ci\n    images: [\"ghcr.io/o/app-*\"]\n    authorities:\n      - keyless: {issuer: \"https://token.actions.githubusercontent.com\", subjectRegExp: '^https://github\\.com/o/.+$'}\n",
    )
    .unwrap();
    let out = kcache(
        &[
            "policy",
            "render",
            "crio",
            "--policy",
            "policy.yaml",
            "--out",
            "r",
            "--strict",
        ],
        d,
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("rule \"ci\" (policy.yaml): WIDER:") && err.contains("ALLOWED UNVERIFIED"),
        "{err}"
    );
    assert!(
        !d.join("r/policy.json").exists(),
        "--strict writes nothing when it fails"
    );

    // Without --strict the fail-closed rendering is written, and the report still printed.
    let out = kcache(
        &["policy", "render", "crio", "--policy", "policy.yaml", "--out", "r"],
        d,
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("ALLOWED UNVERIFIED"));
    assert!(d.join("r/policy.json").is_file() && d.join("r/registries.d/kcache.yaml").is_file());

    // stdout mode: policy.json, a separator, the registries.d YAML.
    let out = kcache(&["policy", "render", "crio", "--policy", "policy.yaml"], d);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let (json, yaml) = stdout
        .split_once("# --- registries.d/kcache.yaml ---\n")
        .expect("separator");
    let policy: serde_json::Value = serde_json::from_str(json).unwrap();
    assert_eq!(policy["default"][0]["type"], "insecureAcceptAnything");
    assert!(yaml.contains("docker:"), "{yaml}");

    // JSON output carries the report.
    let out = kcache(
        &[
            "policy",
            "render",
            "crio",
            "--policy",
            "policy.yaml",
            "--output",
            "json",
        ],
        d,
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["representable"], false);
    assert!(doc["report"]
        .as_array()
        .unwrap()
        .iter()
        .any(|i| i["rule"] == "ci" && i["effect"] == "wider"));

    std::fs::write(d.join("broken.yaml"), "rules:\n  - name: x\n").unwrap();
    let out = kcache(&["policy", "render", "crio", "--policy", "broken.yaml"], d);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("broken.yaml"));
}

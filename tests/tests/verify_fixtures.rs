//! The real cosign fixtures (tests/fixtures), pushed byte-exact into a real docker-registry
//! on loopback and verified through the whole pipeline: registry, policy, signatures.

use kcache_core::{cosign::Format, policy::Policy, sigstore::SignerInfo, verifier::Verifier};
use kcache_tests::{fixtures, TestRegistry};

const IMG: &str = "sha256:0489474da8ea22426ece86ace6c1c0026ab2fd3cdfbbd62b7e94650266c37d9a";
const IMG_KEY_ONLY: &str = "sha256:634a8f35b5f16dcf4aaa0822adc0b1964bb786fca12f6831de8ddc45e5986a00";

fn policy(yaml: &str) -> (Policy, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let fx = fixtures::dir();
    let yaml = yaml.replace("$FX", &fx.display().to_string());
    let p = dir.path().join("policy.yaml");
    std::fs::write(&p, yaml).unwrap();
    (Policy::load(&p, None).unwrap(), dir)
}

async fn keyless_image(reg: &TestRegistry) {
    let d = fixtures::push_exact_manifest(
        reg,
        "cosign/keyless",
        "v1",
        &fixtures::read("cosign-v2-containers-image/dir-img-cosign-fulcio-rekor-valid/manifest.json"),
    )
    .await;
    assert_eq!(d.as_str(), IMG, "the fixture manifest is pushed byte-exact");
    fixtures::push_v2_signature(
        reg,
        "cosign/keyless",
        &d,
        &[fixtures::v2_layer("dir-img-cosign-fulcio-rekor-valid")],
    )
    .await;
}

fn keyless_policy(reg: &TestRegistry, subject: &str) -> String {
    format!(
        "mode: enforce\ndefault: deny\nrules:\n  - name: keyless\n    images: [\"{}/cosign/**\"]\n    authorities:\n      - keyless:\n          issuer: https://github.com/login/oauth\n          {subject}\n    transparencyLog: required\n",
        reg.host()
    )
}

#[tokio::test]
async fn cosign_v2_keyless_fixture_is_allowed_with_its_identity() {
    let reg = TestRegistry::start();
    keyless_image(&reg).await;
    let (p, _d) = policy(&keyless_policy(&reg, "subject: mitr@redhat.com"));
    let v = Verifier::new(reg.client())
        .verify(&p, &format!("{}/cosign/keyless:v1", reg.host()))
        .await
        .unwrap();
    assert!(v.permits(), "{}", v.summary());
    assert_eq!(v.digest.as_ref().unwrap().as_str(), IMG);
    assert_eq!(v.rule.as_deref(), Some("keyless"));
    assert_eq!(v.tlog_index, Some(11605770));
    assert_eq!(v.format, Some(Format::CosignV2));
    assert_eq!(
        v.signer,
        Some(SignerInfo::Keyless {
            issuer: "https://github.com/login/oauth".into(),
            subject: "mitr@redhat.com".into()
        })
    );
}

#[tokio::test]
async fn right_key_wrong_identity_is_denied_and_the_message_names_image_digest_and_rule() {
    let reg = TestRegistry::start();
    keyless_image(&reg).await;
    let (p, _d) = policy(&keyless_policy(&reg, "subject: someone-else@redhat.com"));
    let v = Verifier::new(reg.client())
        .verify(&p, &format!("{}/cosign/keyless:v1", reg.host()))
        .await
        .unwrap();
    assert!(!v.permits());
    let s = v.summary();
    assert!(
        s.contains("cosign/keyless:v1")
            && s.contains(IMG)
            && s.contains("rule keyless")
            && s.contains("identity mismatch"),
        "{s}"
    );
}

#[test]
fn identity_regexp_that_would_match_only_unanchored_is_a_policy_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("policy.yaml");
    std::fs::write(&p, "rules:\n  - name: r\n    images: [\"reg.example/**\"]\n    authorities:\n      - keyless:\n          issuer: https://github.com/login/oauth\n          subjectRegExp: 'mitr@redhat\\.com'\n").unwrap();
    let e = Policy::load(&p, None).unwrap_err().to_string();
    assert!(e.contains("subjectRegExp") && e.contains("anchored"), "{e}");
}

#[tokio::test]
async fn anchored_identity_regexp_verifies_the_keyless_fixture() {
    let reg = TestRegistry::start();
    keyless_image(&reg).await;
    let (p, _d) = policy(&keyless_policy(&reg, "subjectRegExp: '^mitr@redhat\\.com$'"));
    let v = Verifier::new(reg.client())
        .verify(&p, &format!("{}/cosign/keyless:v1", reg.host()))
        .await
        .unwrap();
    assert!(v.permits(), "{}", v.summary());
}

#[tokio::test]
async fn expired_certificate_without_a_tlog_proof_is_denied() {
    let reg = TestRegistry::start();
    let d = fixtures::push_exact_manifest(
        &reg,
        "cosign/keyless",
        "v1",
        &fixtures::read("cosign-v2-containers-image/dir-img-cosign-fulcio-rekor-valid/manifest.json"),
    )
    .await;
    let mut layer = fixtures::v2_layer("dir-img-cosign-fulcio-rekor-valid");
    layer.annotations.remove("dev.sigstore.cosign/bundle");
    fixtures::push_v2_signature(&reg, "cosign/keyless", &d, &[layer]).await;
    let yaml = keyless_policy(&reg, "subject: mitr@redhat.com").replace("required", "optional");
    let (p, _d) = policy(&yaml);
    let v = Verifier::new(reg.client())
        .verify(&p, &format!("{}/cosign/keyless:v1", reg.host()))
        .await
        .unwrap();
    assert!(!v.permits());
    assert!(v.reason.contains("no verified timestamp"), "{}", v.reason);
}

#[tokio::test]
async fn cosign_v2_key_with_rekor_fixture_passes_with_cosign2_pub_only() {
    let reg = TestRegistry::start();
    let d = fixtures::push_exact_manifest(
        &reg,
        "cosign/key",
        "v1",
        &fixtures::read("cosign-v2-containers-image/dir-img-cosign-key-rekor-valid/manifest.json"),
    )
    .await;
    fixtures::push_v2_signature(
        &reg,
        "cosign/key",
        &d,
        &[fixtures::v2_layer("dir-img-cosign-key-rekor-valid")],
    )
    .await;
    let image = format!("{}/cosign/key:v1", reg.host());
    for (key, allowed) in [("cosign2.pub", true), ("cosign.pub", false)] {
        let (p, _d) = policy(&format!(
            "rules:\n  - name: key\n    images: [\"{}/cosign/*\"]\n    authorities:\n      - key: {{path: $FX/cosign-v2-containers-image/{key}}}\n    transparencyLog: required\n",
            reg.host()
        ));
        let v = Verifier::new(reg.client()).verify(&p, &image).await.unwrap();
        assert_eq!(v.permits(), allowed, "{key}: {}", v.summary());
        if allowed {
            assert_eq!(v.tlog_index, Some(11608800));
            assert!(matches!(v.signer, Some(SignerInfo::Key { .. })));
        }
    }
}

#[tokio::test]
async fn cosign_v2_key_only_fixture_needs_the_transparency_log_off() {
    let reg = TestRegistry::start();
    let d = fixtures::push_exact_manifest(
        &reg,
        "cosign/keyonly",
        "v1",
        &fixtures::read("cosign-v2-containers-image/dir-img-cosign-valid/manifest.json"),
    )
    .await;
    assert_eq!(d.as_str(), IMG_KEY_ONLY);
    fixtures::push_v2_signature(
        &reg,
        "cosign/keyonly",
        &d,
        &[fixtures::v2_layer("dir-img-cosign-valid")],
    )
    .await;
    for (tlog, allowed) in [("off", true), ("optional", true), ("required", false)] {
        let (p, _d) = policy(&format!(
            "rules:\n  - name: key\n    images: [\"{}/cosign/*\"]\n    authorities:\n      - key: {{path: $FX/cosign-v2-containers-image/cosign.pub}}\n    transparencyLog: {tlog}\n",
            reg.host()
        ));
        let v = Verifier::new(reg.client())
            .verify(&p, &format!("{}/cosign/keyonly:v1", reg.host()))
            .await
            .unwrap();
        assert_eq!(v.permits(), allowed, "tlog {tlog}: {}", v.summary());
    }
}

#[tokio::test]
async fn cosign_v3_oci_attestation_bundle_is_found_through_the_referrers_tag() {
    let reg = TestRegistry::start();
    let client = reg.client();
    let r = reg.reference("cosign/v3:v1");
    client
        .push_blob(&r, &fixtures::read("cosign-v3-bundle-oci/empty-image/config.json"))
        .await
        .unwrap();
    let manifest = fixtures::read("cosign-v3-bundle-oci/empty-image/manifest.json");
    let d = client
        .push_manifest(
            &r,
            "v1",
            "application/vnd.docker.distribution.manifest.v2+json",
            &manifest,
        )
        .await
        .unwrap();
    assert_eq!(
        d.as_str(),
        "sha256:732112270d7e59418a8c080b134b24cabd67d250d0d0147a97ed95ba5c280aa4"
    );
    fixtures::push_v3_bundle(
        &reg,
        "cosign/v3",
        &d,
        "application/vnd.docker.distribution.manifest.v2+json",
        manifest.len(),
        &fixtures::read("cosign-v3-bundle-oci/oci-attestation.sigstore.json"),
    )
    .await;
    let yaml = format!(
        "rules:\n  - name: v3\n    images: [\"{}/cosign/v3\"]\n    authorities:\n      - keyless:\n          issuer: https://github.com/login/oauth\n          subject: {{SUBJECT}}\n          trustedRoot: $FX/cosign-v3-bundle-oci/trusted_root_pgi.json\n",
        reg.host()
    );
    for (subject, allowed) in [("cody@soyland.com", true), ("mallory@soyland.com", false)] {
        let (p, _d) = policy(&yaml.replace("{SUBJECT}", subject));
        let v = Verifier::new(reg.client())
            .verify(&p, &format!("{}/cosign/v3:v1", reg.host()))
            .await
            .unwrap();
        assert_eq!(v.permits(), allowed, "{subject}: {}", v.summary());
        if allowed {
            assert_eq!(v.format, Some(Format::CosignV3));
        }
    }
}

#[tokio::test]
async fn cosign_v3_sign_bundle_verifies_for_an_index_digest_whose_manifest_is_absent() {
    let reg = TestRegistry::start();
    let digest =
        kcache_core::digest::Digest::parse("sha256:c811d58de79c92f03214e63aa339484e488d694ae8a6283b5f3f17a9faf50172")
            .unwrap();
    fixtures::push_v3_bundle(
        &reg,
        "kubewarden/kubewarden-controller",
        &digest,
        "application/vnd.oci.image.index.v1+json",
        1234,
        &fixtures::read("cosign-v3-bundle-sign/kubewarden-controller-v1.34.0.sigstore.json"),
    )
    .await;
    let (p, _d) = policy(&format!(
        "rules:\n  - name: kubewarden\n    images: [\"{}/kubewarden/*\"]\n    authorities:\n      - keyless:\n          issuer: https://token.actions.githubusercontent.com\n          subjectRegExp: '^https://github\\.com/kubewarden/kubewarden-controller/\\.github/workflows/release\\.yml@refs/tags/v.*$'\n",
        reg.host()
    ));
    let v = Verifier::new(reg.client())
        .verify(&p, &format!("{}/kubewarden/kubewarden-controller@{digest}", reg.host()))
        .await
        .unwrap();
    assert!(v.permits(), "{}", v.summary());
    // The same bundle says nothing about another digest.
    let other = kcache_core::digest::Digest::sha256_of(b"other");
    let v = Verifier::new(reg.client())
        .verify(&p, &format!("{}/kubewarden/kubewarden-controller@{other}", reg.host()))
        .await
        .unwrap();
    assert!(!v.permits());
}

//! Attack and failure cases, each a named test, against a real docker-registry on loopback
//! with images signed by kcache's own signer.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use kcache_core::{
    cosign::{sign, v2::SignatureLayer},
    digest::Digest,
    policy::Policy,
    registry::{Client, RegistryConfig, RegistryError},
    signing::PrivateKey,
    verifier::Verifier,
};
use kcache_tests::{
    fixtures,
    hostile::{Behavior, HostileRegistry},
    TestRegistry,
};
use serde_json::json;

struct Env {
    reg: TestRegistry,
    key: PrivateKey,
    policy: Policy,
    _dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Self {
        Self::with_formats("[cosign-v2, cosign-v3]")
    }

    fn with_formats(formats: &str) -> Self {
        let reg = TestRegistry::start();
        let key = PrivateKey::generate_p256();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("trusted.pub"), key.public_key().to_pem()).unwrap();
        let p = dir.path().join("policy.yaml");
        std::fs::write(
            &p,
            format!(
                "mode: enforce\ndefault: deny\nrules:\n  - name: apps\n    images: [\"{}/apps/**\"]\n    authorities:\n      - key: {{path: trusted.pub}}\n    transparencyLog: off\n    signatureFormats: {formats}\n",
                reg.host()
            ),
        )
        .unwrap();
        let policy = Policy::load(&p, None).unwrap();
        Self {
            reg,
            key,
            policy,
            _dir: dir,
        }
    }

    fn image(&self, repo_tag: &str) -> String {
        format!("{}/{repo_tag}", self.reg.host())
    }

    async fn verify(&self, image: &str) -> kcache_core::verifier::ImageVerdict {
        Verifier::new(self.reg.client())
            .verify(&self.policy, image)
            .await
            .unwrap()
    }

    async fn sign(&self, image: &str, v3: bool) -> Digest {
        let r = kcache_core::registry::Reference::parse(image).unwrap();
        sign::sign_and_push(&self.reg.client(), &self.key, &r, v3)
            .await
            .unwrap()
            .digest
    }
}

async fn push_image(reg: &TestRegistry, repo_tag: &str, content: &str) -> (Digest, Vec<u8>) {
    reg.push_image(repo_tag, content).await
}

async fn sig_layers(reg: &TestRegistry, repo: &str, image: &Digest) -> Vec<SignatureLayer> {
    let client = reg.client();
    let r = reg.reference(repo);
    let m = client
        .manifest(&r, &format!("{}.sig", image.tag_prefix()))
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&m.bytes).unwrap();
    let mut out = Vec::new();
    for l in v["layers"].as_array().unwrap() {
        let d = Digest::parse(l["digest"].as_str().unwrap()).unwrap();
        let payload = client.blob(&r, &d, 1 << 20).await.unwrap();
        let annotations = l["annotations"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
            .collect();
        out.push(SignatureLayer { payload, annotations });
    }
    out
}

#[tokio::test]
async fn kcache_signed_image_is_allowed_and_unsigned_one_denied() {
    let env = Env::new();
    push_image(&env.reg, "apps/web:v1", "web").await;
    push_image(&env.reg, "apps/other:v1", "other").await;
    env.sign(&env.image("apps/web:v1"), false).await;
    let v = env.verify(&env.image("apps/web:v1")).await;
    assert!(v.permits(), "{}", v.summary());
    let v = env.verify(&env.image("apps/other:v1")).await;
    assert!(!v.permits());
    assert!(v.reason.contains("no signature found"), "{}", v.reason);
}

#[tokio::test]
async fn kcache_v3_bundle_alone_satisfies_a_v3_only_rule() {
    let env = Env::with_formats("[cosign-v3]");
    push_image(&env.reg, "apps/web:v1", "web").await;
    env.sign(&env.image("apps/web:v1"), true).await;
    let v = env.verify(&env.image("apps/web:v1")).await;
    assert!(v.permits(), "{}", v.summary());
    assert_eq!(v.format, Some(kcache_core::cosign::Format::CosignV3));
}

#[tokio::test]
async fn signature_copied_from_another_digest_is_denied() {
    let env = Env::new();
    let (signed, _) = push_image(&env.reg, "apps/web:v1", "web").await;
    let (victim, _) = push_image(&env.reg, "apps/web:v2", "evil").await;
    env.sign(&env.image("apps/web:v1"), false).await;
    let layers = sig_layers(&env.reg, "apps/web", &signed).await;
    fixtures::push_v2_signature(&env.reg, "apps/web", &victim, &layers).await;
    let v = env.verify(&env.image("apps/web:v2")).await;
    assert!(!v.permits());
    assert!(
        v.reason.contains(&format!("signature payload is for {signed}")),
        "{}",
        v.reason
    );
}

#[tokio::test]
async fn a_sig_payload_that_hashes_to_its_layer_digest_is_not_fetched() {
    // The payload kcache and cosign write is known from the image's name and digest; bytes that
    // hash to the layer's digest are the blob, so the verifier skips that round trip. Seen here
    // by taking the blob out of the registry's storage: the image still verifies, while a copy
    // of the same signature in another repository (another docker-reference, so the blob must
    // be fetched) no longer does.
    let env = Env::with_formats("[cosign-v2]");
    let (d, _) = push_image(&env.reg, "apps/web:v1", "web").await;
    let (mirrored, _) = push_image(&env.reg, "apps/mirror:v1", "web").await;
    assert_eq!(mirrored, d);
    env.sign(&env.image("apps/web:v1"), false).await;
    let layers = sig_layers(&env.reg, "apps/web", &d).await;
    fixtures::push_v2_signature(&env.reg, "apps/mirror", &d, &layers).await;
    for repo in ["apps/web", "apps/mirror"] {
        let v = env.verify(&env.image(&format!("{repo}@{d}"))).await;
        assert!(v.permits(), "{repo}: {}", v.summary());
    }

    let payload = Digest::sha256_of(&layers[0].payload);
    assert_eq!(
        kcache_core::cosign::v2::known_payload(&env.reg.reference("apps/web").name(), &d, &payload, None),
        Some(layers[0].payload.clone())
    );
    let hex = payload.hex();
    std::fs::remove_file(
        env.reg
            .storage()
            .join(format!("docker/registry/v2/blobs/sha256/{}/{hex}/data", &hex[..2])),
    )
    .unwrap();
    let r = env.reg.reference("apps/web");
    assert!(
        env.reg.client().blob(&r, &payload, 1 << 20).await.is_err(),
        "the blob is gone"
    );

    let v = env.verify(&env.image(&format!("apps/web@{d}"))).await;
    assert!(v.permits(), "{}", v.summary());
    let v = env.verify(&env.image(&format!("apps/mirror@{d}"))).await;
    assert!(!v.permits(), "{}", v.summary());
    assert!(v.reason.contains("no signature found"), "{}", v.reason);
}

#[tokio::test]
async fn signature_copied_from_another_repository_is_denied() {
    let env = Env::new();
    let (signed, _) = push_image(&env.reg, "apps/web:v1", "web").await;
    let (victim, _) = push_image(&env.reg, "apps/evil:v1", "evil").await;
    env.sign(&env.image("apps/web:v1"), true).await;
    let layers = sig_layers(&env.reg, "apps/web", &signed).await;
    fixtures::push_v2_signature(&env.reg, "apps/evil", &victim, &layers).await;
    let v = env.verify(&env.image("apps/evil:v1")).await;
    assert!(!v.permits(), "{}", v.summary());
}

#[tokio::test]
async fn tag_moved_between_resolve_and_verify_never_lends_a_signature() {
    let env = Env::new();
    let (good, _) = push_image(&env.reg, "apps/web:v1", "web").await;
    env.sign(&env.image("apps/web:v1"), true).await;
    let client = env.reg.client();
    let resolved = client.resolve(&env.reg.reference("apps/web:v1")).await.unwrap().digest;
    assert_eq!(resolved, good);
    // The tag moves to unsigned bytes after resolution.
    let (bad, _) = push_image(&env.reg, "apps/web:v1", "evil").await;
    let pinned = env.verify(&env.image(&format!("apps/web@{good}"))).await;
    assert!(pinned.permits(), "{}", pinned.summary());
    let moved = env.verify(&env.image("apps/web:v1")).await;
    assert_eq!(moved.digest.as_ref(), Some(&bad));
    assert!(!moved.permits(), "{}", moved.summary());
    let bad_pinned = env.verify(&env.image(&format!("apps/web:v1@{bad}"))).await;
    assert!(!bad_pinned.permits());
}

#[tokio::test]
async fn tampered_payload_is_denied() {
    let env = Env::new();
    let (d, _) = push_image(&env.reg, "apps/web:v1", "web").await;
    env.sign(&env.image("apps/web:v1"), false).await;
    let mut layers = sig_layers(&env.reg, "apps/web", &d).await;
    let text = String::from_utf8(layers[0].payload.clone())
        .unwrap()
        .replace("\"optional\":null", "\"optional\":{\"x\":1}");
    layers[0].payload = text.into_bytes();
    fixtures::push_v2_signature(&env.reg, "apps/web", &d, &layers).await;
    let v = env.verify(&env.image("apps/web:v1")).await;
    assert!(!v.permits());
    assert!(v.reason.contains("does not verify"), "{}", v.reason);
}

#[tokio::test]
async fn tampered_signature_is_denied() {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let env = Env::new();
    let (d, _) = push_image(&env.reg, "apps/web:v1", "web").await;
    env.sign(&env.image("apps/web:v1"), false).await;
    let mut layers = sig_layers(&env.reg, "apps/web", &d).await;
    let mut sig = b64
        .decode(&layers[0].annotations["dev.cosignproject.cosign/signature"])
        .unwrap();
    let n = sig.len();
    sig[n - 3] ^= 0x01;
    layers[0]
        .annotations
        .insert("dev.cosignproject.cosign/signature".into(), b64.encode(sig));
    fixtures::push_v2_signature(&env.reg, "apps/web", &d, &layers).await;
    let v = env.verify(&env.image("apps/web:v1")).await;
    assert!(!v.permits(), "{}", v.summary());
}

#[tokio::test]
async fn wrong_key_is_denied() {
    let env = Env::new();
    push_image(&env.reg, "apps/web:v1", "web").await;
    let r = env.reg.reference("apps/web:v1");
    sign::sign_and_push(&env.reg.client(), &PrivateKey::generate_p256(), &r, true)
        .await
        .unwrap();
    let v = env.verify(&env.image("apps/web:v1")).await;
    assert!(!v.permits());
    assert!(
        v.reason.contains("cosign-v2 layer 0") && v.reason.contains("cosign-v3 bundle 0"),
        "{}",
        v.reason
    );
}

async fn push_index(reg: &TestRegistry, tag: &str, children: &[(&Digest, usize, &str)]) -> Digest {
    let manifests: Vec<_> = children
        .iter()
        .map(|(d, size, arch)| json!({"mediaType": sign::OCI_MANIFEST, "digest": d.as_str(), "size": size, "platform": {"architecture": arch, "os": "linux"}}))
        .collect();
    let idx = json!({"schemaVersion": 2, "mediaType": sign::OCI_INDEX, "manifests": manifests}).to_string();
    let r = reg.reference(&format!("apps/multi:{tag}"));
    reg.client()
        .push_manifest(&r, tag, sign::OCI_INDEX, idx.as_bytes())
        .await
        .unwrap()
}

#[tokio::test]
async fn index_signed_allows_its_platform_manifests_through_the_tag_but_not_alone() {
    let env = Env::new();
    let (amd, amd_m) = push_image(&env.reg, "apps/multi:amd64", "amd64").await;
    let (arm, arm_m) = push_image(&env.reg, "apps/multi:arm64", "arm64").await;
    let index = push_index(
        &env.reg,
        "v1",
        &[(&amd, amd_m.len(), "amd64"), (&arm, arm_m.len(), "arm64")],
    )
    .await;
    env.sign(&env.image("apps/multi:v1"), false).await;
    let policy = &env.policy;
    let verifier = Verifier::new(env.reg.client());
    let tagged = env.reg.reference("apps/multi:v1");
    let v = verifier.verify_digest(policy, &tagged, &amd).await;
    assert!(v.permits(), "{}", v.summary());
    assert_eq!(v.via_index.as_ref(), Some(&index));
    // Pulled by the index's digest (what CRI labels a `repo@sha256:<index>` pull with): the
    // pinned index decides, and no tag is resolved.
    let pinned = env.reg.reference(&format!("apps/multi@{index}"));
    let v = verifier.verify_digest(policy, &pinned, &amd).await;
    assert!(v.permits(), "{}", v.summary());
    assert_eq!(v.via_index.as_ref(), Some(&index));
    // An unsigned index listing the same manifest lends it nothing, even with the tag still on
    // the signed one.
    let unsigned = push_index(&env.reg, "other", &[(&amd, amd_m.len(), "amd64")]).await;
    let v = verifier
        .verify_digest(policy, &env.reg.reference(&format!("apps/multi:v1@{unsigned}")), &amd)
        .await;
    assert!(!v.permits(), "{}", v.summary());
    // Without the tag that resolves to the signed index, the platform manifest is unsigned.
    let v = env.verify(&env.image(&format!("apps/multi@{amd}"))).await;
    assert!(!v.permits());
    // A manifest the index does not list gains nothing from the index's signature.
    let (stray, _) = push_image(&env.reg, "apps/multi:stray", "stray").await;
    let v = verifier.verify_digest(policy, &tagged, &stray).await;
    assert!(!v.permits(), "{}", v.summary());
}

#[tokio::test]
async fn platform_manifest_signed_but_index_not_allows_only_the_platform_manifest() {
    let env = Env::new();
    let (amd, amd_m) = push_image(&env.reg, "apps/multi:amd64", "amd64").await;
    let index = push_index(&env.reg, "v1", &[(&amd, amd_m.len(), "amd64")]).await;
    env.sign(&env.image(&format!("apps/multi@{amd}")), false).await;
    let v = env.verify(&env.image("apps/multi:v1")).await;
    assert_eq!(v.digest, Some(index));
    assert!(!v.permits(), "{}", v.summary());
    let v = Verifier::new(env.reg.client())
        .verify_digest(&env.policy, &env.reg.reference("apps/multi:v1"), &amd)
        .await;
    assert!(v.permits(), "{}", v.summary());
    assert_eq!(v.via_index, None);
}

#[tokio::test]
async fn registry_down_denies_in_enforce_mode_with_a_clear_message() {
    let mut env = Env::new();
    push_image(&env.reg, "apps/web:v1", "web").await;
    env.sign(&env.image("apps/web:v1"), false).await;
    env.reg.stop();
    let v = env.verify(&env.image("apps/web:v1")).await;
    assert!(!v.permits());
    assert!(
        v.reason.contains("unreachable") && v.summary().contains("apps/web:v1"),
        "{}",
        v.summary()
    );
    env.reg.restart();
    assert!(env.verify(&env.image("apps/web:v1")).await.permits());
}

fn hostile_client(h: &HostileRegistry, timeout: Duration) -> Arc<Client> {
    Arc::new(
        Client::new(RegistryConfig {
            insecure: vec![h.host()],
            timeout,
            ..RegistryConfig::default()
        })
        .unwrap(),
    )
}

#[tokio::test]
async fn slow_registry_times_out_and_denies() {
    let h = HostileRegistry::start(Behavior::Hang);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("policy.yaml");
    std::fs::write(&p, format!("rules:\n  - name: r\n    images: [\"{}/**\"]\n    authorities:\n      - key: {{path: {}/cosign-v2-containers-image/cosign.pub}}\n", h.host(), fixtures::dir().display())).unwrap();
    let policy = Policy::load(&p, None).unwrap();
    let start = Instant::now();
    let v = Verifier::new(hostile_client(&h, Duration::from_secs(1)))
        .verify(&policy, &format!("{}/apps/web:v1", h.host()))
        .await
        .unwrap();
    assert!(!v.permits());
    assert!(v.reason.contains("timed out"), "{}", v.reason);
    assert!(start.elapsed() < Duration::from_secs(10), "took {:?}", start.elapsed());
}

#[tokio::test]
async fn huge_manifests_are_refused_without_being_read() {
    for behavior in [Behavior::HugeDeclared, Behavior::EndlessChunks] {
        let h = HostileRegistry::start(behavior);
        let client = hostile_client(&h, Duration::from_secs(20));
        let r = kcache_core::registry::Reference::parse(&format!("{}/apps/web:v1", h.host())).unwrap();
        let e = client.manifest(&r, "v1").await.unwrap_err();
        assert!(
            matches!(e, RegistryError::TooLarge { limit, .. } if limit == client.config().max_manifest_bytes),
            "{behavior:?}: {e}"
        );
        let e = client.blob(&r, &Digest::sha256_of(b"x"), 1024).await.unwrap_err();
        assert!(
            matches!(e, RegistryError::TooLarge { limit: 1024, .. }),
            "{behavior:?}: {e}"
        );
    }
}

#[tokio::test]
async fn junk_registry_answers_are_denied() {
    let h = HostileRegistry::start(Behavior::Junk);
    let client = hostile_client(&h, Duration::from_secs(5));
    let r = kcache_core::registry::Reference::parse(&format!("{}/apps/web:v1", h.host())).unwrap();
    let want = Digest::sha256_of(b"the real manifest");
    let e = client.manifest(&r, want.as_str()).await.unwrap_err();
    assert!(matches!(e, RegistryError::DigestMismatch { .. }), "{e}");
}

#[tokio::test]
async fn malformed_signature_layers_and_junk_annotations_are_denied_clearly() {
    let env = Env::new();
    let (d, _) = push_image(&env.reg, "apps/web:v1", "web").await;
    let junk = SignatureLayer {
        payload: b"not a simple signing payload".to_vec(),
        annotations: [
            (
                "dev.cosignproject.cosign/signature".to_string(),
                "!!!not-base64".to_string(),
            ),
            (
                "dev.sigstore.cosign/bundle".to_string(),
                "{\"SignedEntryTimestamp\": 7}".to_string(),
            ),
        ]
        .into(),
    };
    let no_sig = SignatureLayer {
        payload: b"{}".to_vec(),
        annotations: Default::default(),
    };
    fixtures::push_v2_signature(&env.reg, "apps/web", &d, &[junk, no_sig]).await;
    let v = env.verify(&env.image("apps/web:v1")).await;
    assert!(!v.permits());
    assert!(v.reason.contains("malformed cosign signature layer"), "{}", v.reason);
}

#[tokio::test]
async fn oversized_signature_blobs_are_not_fetched() {
    let env = Env::new();
    let (d, _) = push_image(&env.reg, "apps/web:v1", "web").await;
    let r = env.reg.reference("apps/web");
    let client = env.reg.client();
    let big = vec![b'x'; 200 * 1024];
    let bd = client.push_blob(&r, &big).await.unwrap();
    let cd = client.push_blob(&r, b"{}").await.unwrap();
    let m = json!({
        "schemaVersion": 2, "mediaType": sign::OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd.as_str(), "size": 2},
        "layers": [{"mediaType": "application/vnd.dev.cosign.simplesigning.v1+json", "digest": bd.as_str(), "size": big.len(),
                    "annotations": {"dev.cosignproject.cosign/signature": "MEUCIQ=="}}],
    });
    client
        .push_manifest(
            &r,
            &format!("{}.sig", d.tag_prefix()),
            sign::OCI_MANIFEST,
            m.to_string().as_bytes(),
        )
        .await
        .unwrap();
    let v = env.verify(&env.image("apps/web:v1")).await;
    assert!(!v.permits());
    assert!(v.reason.contains("no signature found"), "{}", v.reason);
}

#[tokio::test]
async fn verdicts_are_cached_per_policy_generation_and_concurrent_requests_share_one_verification() {
    let mut env = Env::new();
    push_image(&env.reg, "apps/web:v1", "web").await;
    let digest = env.sign(&env.image("apps/web:v1"), false).await;
    let verifier = Arc::new(Verifier::with_cache(
        env.reg.client(),
        kcache_core::verdict::CacheConfig::default(),
    ));
    let r = env.reg.reference("apps/web:v1");
    let policy = Arc::new(env.policy.clone());
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let (v, p, r, d) = (verifier.clone(), policy.clone(), r.clone(), digest.clone());
            tokio::spawn(async move { v.verify_digest(&p, &r, &d).await })
        })
        .collect();
    let mut fresh = 0;
    for t in tasks {
        let v = t.await.unwrap();
        assert!(v.permits(), "{}", v.summary());
        fresh += usize::from(!v.cached);
    }
    assert_eq!(fresh, 1, "20 concurrent requests share one verification");

    // A hit needs no registry.
    env.reg.stop();
    let v = verifier.verify_digest(&policy, &r, &digest).await;
    assert!(v.permits() && v.cached);

    // A new policy generation is verified afresh (and fails closed with the registry down).
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("trusted.pub"), env.key.public_key().to_pem()).unwrap();
    let p = dir.path().join("policy.yaml");
    std::fs::write(
        &p,
        format!(
            "mode: enforce\ndefault: deny\nrules:\n  - name: apps-v2\n    images: [\"{}/apps/**\"]\n    authorities:\n      - key: {{path: trusted.pub}}\n    transparencyLog: off\n",
            env.reg.host()
        ),
    )
    .unwrap();
    let newer = Policy::load(&p, None).unwrap();
    assert_ne!(newer.generation, policy.generation);
    let v = verifier.verify_digest(&newer, &r, &digest).await;
    assert!(!v.permits() && !v.cached, "{}", v.summary());
    env.reg.restart();
}

#[tokio::test]
async fn basic_auth_from_a_docker_auth_file_against_a_real_htpasswd_registry() {
    let reg = TestRegistry::start_with_basic_auth("kcache", "s3cret");
    let r = reg.reference("apps/web:v1");
    let anonymous = reg.client();
    let e = anonymous.resolve(&r).await.unwrap_err();
    assert!(matches!(e, RegistryError::Unauthorized { status: 401, .. }), "{e}");

    let auth = reg.write_auth_file("kcache", "s3cret");
    let client = Arc::new(
        Client::new(RegistryConfig {
            insecure: vec![reg.host()],
            auth_file: Some(auth),
            ..RegistryConfig::default()
        })
        .unwrap(),
    );
    let layer = client.push_blob(&r, b"authenticated").await.unwrap();
    let m = json!({
        "schemaVersion": 2, "mediaType": sign::OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": layer.as_str(), "size": 13},
        "layers": [],
    })
    .to_string();
    let d = client
        .push_manifest(&r, "v1", sign::OCI_MANIFEST, m.as_bytes())
        .await
        .unwrap();
    assert_eq!(client.resolve(&r).await.unwrap().digest, d);

    let wrong = reg.write_auth_file("kcache", "wrong");
    let client = Client::new(RegistryConfig {
        insecure: vec![reg.host()],
        auth_file: Some(wrong),
        ..RegistryConfig::default()
    })
    .unwrap();
    assert!(matches!(
        client.resolve(&r).await.unwrap_err(),
        RegistryError::Unauthorized { .. }
    ));
}

#[tokio::test]
async fn paginated_referrers_are_merged_and_never_followed_off_the_registry() {
    // docker-registry 2.8 has no referrers API, so a scripted loopback server pages it.
    let h = HostileRegistry::start(Behavior::PagedReferrers);
    let client = hostile_client(&h, Duration::from_secs(5));
    let r = kcache_core::registry::Reference::parse(&format!("{}/apps/web:v1", h.host())).unwrap();
    let subject = Digest::sha256_of(b"the image");
    let index = client
        .referrers(&r, &subject, Some("application/vnd.dev.sigstore.bundle.v0.3+json"))
        .await
        .unwrap()
        .expect("the registry has the referrers API");
    let v: serde_json::Value = serde_json::from_slice(&index).unwrap();
    let listed: Vec<&str> = v["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["digest"].as_str().unwrap())
        .collect();
    // Both pages of this registry; the third page's link to another host is not followed
    // (it would fail to resolve, and the call would error).
    assert_eq!(listed, kcache_tests::hostile::PAGED_REFERRERS);
    assert_eq!(v["mediaType"], "application/vnd.oci.image.index.v1+json");
}

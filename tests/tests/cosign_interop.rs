//! Interop with the real cosign CLI (2.5 from Debian trixie, 3.1 from sid; issue 12), both
//! directions, on a real loopback docker-registry 2.8 (no referrers API: cosign 3 bundles use
//! the `sha256-<hex>` referrers tag), key-based, no transparency log:
//!
//! | signed by | how | kcache | cosign |
//! |---|---|---|---|
//! | cosign 2.5 | `sign --key --tlog-upload=false` (`.sig`) | allowed | 2.5 and 3.1 verify |
//! | cosign 3.1 | `sign --key --new-bundle-format=false` (`.sig`) | allowed | 2.5 and 3.1 verify |
//! | cosign 3.1 | `sign --key` (bundle, empty signing config) | allowed | 3.1 verify, 2.5 verify-attestation |
//! | kcache | `sign` (`.sig`) | allowed | 2.5 and 3.1 verify |
//! | kcache | `sign --v3` (`.sig` + DSSE bundle) | allowed | 3.1 verify, 2.5 verify-attestation |
//!
//! plus key types, both forms on one image, indexes, `cosign attach`/`copy`, and the attacks
//! built from the real tool's output. Each refusal names image, digest and rule.
//!
//! Without cosign (no network to fetch it) the tests skip with a message; under `CI=true` they
//! fail instead.

use std::path::{Path, PathBuf};

use kcache_core::{
    cosign::{sign, Format},
    digest::Digest,
    policy::Policy,
    registry::Reference,
    signing::PrivateKey,
    verifier::{ImageVerdict, Verifier},
};
use kcache_tests::{
    cosign::{output_text, Cosign, PASSWORD},
    TestRegistry,
};
use serde_json::{json, Value};

const RULE: &str = "interop";

struct Env {
    reg: TestRegistry,
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Self {
        Self {
            reg: TestRegistry::start(),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn image(&self, repo_and_ref: &str) -> String {
        format!("{}/{repo_and_ref}", self.reg.host())
    }

    async fn push(&self, repo_tag: &str, content: &str) -> Digest {
        self.reg.push_image(repo_tag, content).await.0
    }

    /// A key-based rule trusting `public_keys`, no transparency log, both formats.
    fn policy(&self, public_keys: &[&Path]) -> Policy {
        let authorities: String = public_keys
            .iter()
            .map(|k| format!("      - key: {{path: {}}}\n", k.display()))
            .collect();
        let p = self.dir().join(format!("policy-{}.yaml", rand_suffix()));
        std::fs::write(
            &p,
            format!(
                "mode: enforce\ndefault: deny\nrules:\n  - name: {RULE}\n    images: [\"{}/**\"]\n    authorities:\n{authorities}    transparencyLog: off\n",
                self.reg.host()
            ),
        )
        .unwrap();
        Policy::load(&p, None).unwrap()
    }

    async fn verify(&self, policy: &Policy, image: &str) -> ImageVerdict {
        Verifier::new(self.reg.client()).verify(policy, image).await.unwrap()
    }

    /// Verifies a platform manifest pulled through `reference` (an index tag), as the
    /// snapshotter gate does with CRI's image-ref and manifest-digest labels.
    async fn verify_pulled(&self, policy: &Policy, reference: &str, digest: &Digest) -> ImageVerdict {
        let r = Reference::parse(reference).unwrap();
        Verifier::new(self.reg.client()).verify_digest(policy, &r, digest).await
    }

    fn kcache_key(&self, cosign_key: &Path) -> PrivateKey {
        PrivateKey::from_pem(&std::fs::read(cosign_key).unwrap(), PASSWORD.as_bytes()).unwrap()
    }

    async fn kcache_sign(&self, key: &PrivateKey, image: &str, v3: bool) -> sign::Pushed {
        sign::sign_and_push(&self.reg.client(), key, &Reference::parse(image).unwrap(), v3)
            .await
            .unwrap()
    }

    async fn get_manifest(&self, repo: &str, reference: &str) -> Vec<u8> {
        let r = self.reg.reference(repo);
        self.reg.client().manifest(&r, reference).await.unwrap().bytes
    }

    async fn put_manifest(&self, repo: &str, reference: &str, media_type: &str, bytes: &[u8]) -> Digest {
        let r = self.reg.reference(repo);
        self.reg
            .client()
            .push_manifest(&r, reference, media_type, bytes)
            .await
            .unwrap()
    }

    async fn get_blob(&self, repo: &str, d: &str) -> Vec<u8> {
        let r = self.reg.reference(repo);
        self.reg
            .client()
            .blob(&r, &Digest::parse(d).unwrap(), 1 << 20)
            .await
            .unwrap()
    }

    async fn put_blob(&self, repo: &str, bytes: &[u8]) -> Digest {
        let r = self.reg.reference(repo);
        self.reg.client().push_blob(&r, bytes).await.unwrap()
    }

    /// The `.sig` payload the tool wrote is the one kcache rebuilds from the image's name and
    /// digest, so verifying it skips the blob fetch ([`kcache_core::cosign::v2::known_payload`]).
    async fn assert_sig_payload_known(&self, repo: &str, image: &Digest) {
        let m: Value =
            serde_json::from_slice(&self.get_manifest(repo, &format!("{}.sig", image.tag_prefix())).await).unwrap();
        let layer = &m["layers"][0];
        let d = Digest::parse(layer["digest"].as_str().unwrap()).unwrap();
        let blob = self.get_blob(repo, d.as_str()).await;
        let name = self.reg.reference(repo).name();
        assert_eq!(
            kcache_core::cosign::v2::known_payload(&name, image, &d, layer["size"].as_u64()),
            Some(blob),
            "the payload cosign wrote for {name}@{image}"
        );
    }

    /// The referrer manifest cosign 3 attached to `image` (through the referrers tag).
    async fn bundle_referrer(&self, repo: &str, image: &Digest) -> (Value, Value) {
        let index: Value = serde_json::from_slice(&self.get_manifest(repo, &image.tag_prefix()).await).unwrap();
        let md = index["manifests"][0]["digest"].as_str().unwrap().to_string();
        let m: Value = serde_json::from_slice(&self.get_manifest(repo, &md).await).unwrap();
        (index, m)
    }
}

fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    N.fetch_add(1, Ordering::Relaxed).to_string()
}

#[track_caller]
fn assert_ok(out: &std::process::Output, what: &str) {
    assert!(out.status.success(), "{what} failed:\n{}", output_text(out));
}

#[track_caller]
fn assert_fails(out: &std::process::Output, what: &str) -> String {
    assert!(
        !out.status.success(),
        "{what} unexpectedly passed:\n{}",
        output_text(out)
    );
    output_text(out)
}

#[track_caller]
fn assert_allowed(v: &ImageVerdict, format: Format) {
    assert!(v.permits() && v.verified, "{}", v.summary());
    assert_eq!(v.format, Some(format), "{}", v.summary());
}

/// A refusal names the image, the digest and the rule, and says why (`why`).
#[track_caller]
fn assert_denied(v: &ImageVerdict, image: &str, digest: &Digest, why: &str) {
    assert!(!v.permits() && !v.verified, "{}", v.summary());
    let s = v.summary();
    assert!(s.starts_with("denied: "), "{s}");
    assert!(s.contains(&format!("image {image} ")), "{s}");
    assert!(s.contains(&format!("digest {digest} ")), "{s}");
    assert!(s.contains(&format!("rule {RULE}: ")), "{s}");
    assert!(s.contains(why), "wanted {why:?} in: {s}");
}

// --- the issue's table, row by row ---------------------------------------------------------

#[tokio::test]
async fn cosign_2_5_sig_is_allowed_by_kcache_and_verified_by_both_cosigns() {
    let Some((c25, c31)) = Cosign::both("cosign_2_5_sig") else {
        return;
    };
    let env = Env::new();
    let d = env.push("apps/a:v1", "a").await;
    let (key, public) = c25.generate_key_pair(env.dir(), "k");
    let img = env.image(&format!("apps/a@{d}"));
    assert_ok(&c25.sign(env.dir(), &key, &img, &[]), "cosign 2.5 sign");
    assert_allowed(&env.verify(&env.policy(&[&public]), &img).await, Format::CosignV2);
    env.assert_sig_payload_known("apps/a", &d).await;
    assert_ok(&c25.verify(env.dir(), &public, &img), "cosign 2.5 verify");
    assert_ok(&c31.verify(env.dir(), &public, &img), "cosign 3.1 verify");
}

#[tokio::test]
async fn cosign_3_1_legacy_sig_is_allowed_by_kcache_and_verified_by_both_cosigns() {
    let Some((c25, c31)) = Cosign::both("cosign_3_1_legacy_sig") else {
        return;
    };
    let env = Env::new();
    let d = env.push("apps/a:v1", "a").await;
    let (key, public) = c31.generate_key_pair(env.dir(), "k");
    let img = env.image(&format!("apps/a@{d}"));
    assert_ok(
        &c31.sign_legacy(env.dir(), &key, &img, &[]),
        "cosign 3.1 sign --new-bundle-format=false",
    );
    assert_allowed(&env.verify(&env.policy(&[&public]), &img).await, Format::CosignV2);
    env.assert_sig_payload_known("apps/a", &d).await;
    assert_ok(&c25.verify(env.dir(), &public, &img), "cosign 2.5 verify");
    assert_ok(&c31.verify(env.dir(), &public, &img), "cosign 3.1 verify");
}

#[tokio::test]
async fn issue_12_cosign_3_1_default_bundle_through_the_referrers_tag_is_allowed() {
    let Some((c25, c31)) = Cosign::both("issue_12_cosign_3_1_default_bundle") else {
        return;
    };
    let env = Env::new();
    let d = env.push("apps/a:v1", "a").await;
    let (key, public) = c31.generate_key_pair(env.dir(), "k");
    let img = env.image(&format!("apps/a@{d}"));
    assert_ok(&c31.sign(env.dir(), &key, &img, &[]), "cosign 3.1 sign");
    // What cosign 3.1 wrote: the index descriptor claims the empty artifact type, the manifest
    // itself is a DSSE bundle about `d` (the form the old discovery refused).
    let (index, m) = env.bundle_referrer("apps/a", &d).await;
    assert_eq!(
        index["manifests"][0]["artifactType"],
        "application/vnd.oci.empty.v1+json"
    );
    assert_eq!(m["artifactType"], "application/vnd.dev.sigstore.bundle.v0.3+json");
    assert_eq!(m["annotations"]["dev.sigstore.bundle.content"], "dsse-envelope");
    assert_eq!(m["subject"]["digest"], d.as_str());
    let policy = env.policy(&[&public]);
    assert_allowed(&env.verify(&policy, &img).await, Format::CosignV3);
    // By tag too (resolved once, then the same digest).
    assert_allowed(&env.verify(&policy, &env.image("apps/a:v1")).await, Format::CosignV3);
    assert_ok(&c31.verify(env.dir(), &public, &img), "cosign 3.1 verify");
    assert_ok(
        &c25.verify_bundle(env.dir(), &public, &img),
        "cosign 2.5 verify-attestation",
    );
}

#[tokio::test]
async fn kcache_sig_is_verified_by_both_cosigns() {
    let Some((c25, c31)) = Cosign::both("kcache_sig") else {
        return;
    };
    let env = Env::new();
    let d = env.push("apps/a:v1", "a").await;
    let (key, public) = c31.generate_key_pair(env.dir(), "k");
    let img = env.image(&format!("apps/a@{d}"));
    env.kcache_sign(&env.kcache_key(&key), &img, false).await;
    assert_allowed(&env.verify(&env.policy(&[&public]), &img).await, Format::CosignV2);
    assert_ok(&c25.verify(env.dir(), &public, &img), "cosign 2.5 verify");
    assert_ok(&c31.verify(env.dir(), &public, &img), "cosign 3.1 verify");
}

#[tokio::test]
async fn issue_12_kcache_v3_bundle_is_what_cosign_3_writes_and_both_cosigns_verify_it() {
    let Some((c25, c31)) = Cosign::both("issue_12_kcache_v3") else {
        return;
    };
    let env = Env::new();
    let d = env.push("apps/a:v1", "a").await;
    let (key, public) = c31.generate_key_pair(env.dir(), "k");
    let img = env.image(&format!("apps/a@{d}"));
    let pushed = env.kcache_sign(&env.kcache_key(&key), &img, true).await;
    let (index, m) = env.bundle_referrer("apps/a", &d).await;
    assert_eq!(
        index["manifests"][0]["digest"],
        pushed.referrer.as_ref().unwrap().as_str()
    );
    assert_eq!(m["artifactType"], "application/vnd.dev.sigstore.bundle.v0.3+json");
    assert_eq!(m["annotations"]["dev.sigstore.bundle.content"], "dsse-envelope");
    assert_eq!(
        m["annotations"]["dev.sigstore.bundle.predicateType"],
        "https://sigstore.dev/cosign/sign/v1"
    );
    // A v3-only rule sees the bundle alone.
    let p = env.dir().join("v3only.yaml");
    std::fs::write(
        &p,
        format!(
            "mode: enforce\ndefault: deny\nrules:\n  - name: {RULE}\n    images: [\"{}/**\"]\n    authorities:\n      - key: {{path: {}}}\n    transparencyLog: off\n    signatureFormats: [cosign-v3]\n",
            env.reg.host(),
            public.display()
        ),
    )
    .unwrap();
    assert_allowed(
        &env.verify(&Policy::load(&p, None).unwrap(), &img).await,
        Format::CosignV3,
    );
    // cosign 3.1 prefers bundles when there are any: this verifies the bundle, not the `.sig`.
    assert_ok(&c31.verify(env.dir(), &public, &img), "cosign 3.1 verify");
    assert_ok(
        &c25.verify_bundle(env.dir(), &public, &img),
        "cosign 2.5 verify-attestation",
    );
    assert_ok(&c25.verify(env.dir(), &public, &img), "cosign 2.5 verify (.sig)");
}

// --- key types ------------------------------------------------------------------------------

fn openssl_key(dir: &Path, name: &str, args: &[&str]) -> PathBuf {
    let p = dir.join(format!("{name}.pem"));
    let out = std::process::Command::new("openssl")
        .arg("genpkey")
        .args(args)
        .arg("-out")
        .arg(&p)
        .output()
        .expect("openssl (apt-get install openssl)");
    assert!(out.status.success(), "openssl genpkey: {}", output_text(&out));
    p
}

/// Which signatures, by whom, each key type round-trips. cosign's own gaps are asserted too,
/// so that a cosign that fixes them shows up here (README: "Where cosign and kcache disagree").
#[tokio::test]
async fn imported_p384_ed25519_and_rsa_keys_interoperate_where_cosign_supports_them() {
    let Some((c25, c31)) = Cosign::both("imported_key_types") else {
        return;
    };
    let env = Env::new();
    for (name, args) in [
        ("p384", &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"][..]),
        ("ed25519", &["-algorithm", "ED25519"][..]),
        ("rsa", &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"][..]),
    ] {
        let pem = openssl_key(env.dir(), name, args);
        let (key, public) = c31.import_key_pair(env.dir(), &pem, name);
        let policy = env.policy(&[&public]);
        let kkey = env.kcache_key(&key);

        // cosign 2.5 .sig -> kcache.
        let d = env.push(&format!("apps/{name}:c25"), &format!("{name} c25")).await;
        let img = env.image(&format!("apps/{name}@{d}"));
        assert_ok(
            &c25.sign(env.dir(), &key, &img, &[]),
            &format!("cosign 2.5 sign ({name})"),
        );
        assert_allowed(&env.verify(&policy, &img).await, Format::CosignV2);
        assert_ok(
            &c31.verify(env.dir(), &public, &img),
            &format!("cosign 3.1 verify ({name})"),
        );

        // cosign 3.1 bundle -> kcache (cosign 3.1 cannot sign a bundle with Ed25519).
        let d = env.push(&format!("apps/{name}:c31"), &format!("{name} c31")).await;
        let img = env.image(&format!("apps/{name}@{d}"));
        let signed = c31.sign(env.dir(), &key, &img, &[]);
        if name == "ed25519" {
            assert_fails(&signed, "cosign 3.1 sign with Ed25519");
        } else {
            assert_ok(&signed, &format!("cosign 3.1 sign ({name})"));
            assert_allowed(&env.verify(&policy, &img).await, Format::CosignV3);
            let own = c31.verify(env.dir(), &public, &img);
            if name == "p384" {
                // cosign 3.1 signs P-384 DSSE with SHA-384 and verifies `--key` with SHA-256.
                assert_fails(&own, "cosign 3.1 verify of its own P-384 bundle");
            } else {
                assert_ok(&own, &format!("cosign 3.1 verify ({name})"));
            }
        }

        // kcache .sig and v3 -> cosign.
        let d = env.push(&format!("apps/{name}:k"), &format!("{name} kcache")).await;
        let img = env.image(&format!("apps/{name}@{d}"));
        env.kcache_sign(&kkey, &img, true).await;
        assert_allowed(&env.verify(&policy, &img).await, Format::CosignV2);
        assert_ok(
            &c25.verify(env.dir(), &public, &img),
            &format!("cosign 2.5 verify of kcache ({name})"),
        );
        // cosign 3.1 verifies kcache's bundles for every key type, Ed25519 (pure, which cosign
        // 3.1 cannot sign: its signer fails its own check) and P-384 (SHA-256) included.
        assert_ok(
            &c31.verify(env.dir(), &public, &img),
            &format!("cosign 3.1 verify of kcache v3 ({name})"),
        );
        assert_ok(
            &c25.verify_bundle(env.dir(), &public, &img),
            &format!("cosign 2.5 verify-attestation of kcache v3 ({name})"),
        );
    }
}

// --- both forms, indexes, attach, copy -------------------------------------------------------

#[tokio::test]
async fn sig_and_bundle_on_one_image_each_verify_on_their_own() {
    let Some((c25, c31)) = Cosign::both("sig_and_bundle_on_one_image") else {
        return;
    };
    let env = Env::new();
    let d = env.push("apps/a:v1", "a").await;
    let img = env.image(&format!("apps/a@{d}"));
    let (k2, p2) = c25.generate_key_pair(env.dir(), "k2");
    let (k3, p3) = c31.generate_key_pair(env.dir(), "k3");
    assert_ok(&c25.sign(env.dir(), &k2, &img, &[]), "cosign 2.5 sign");
    assert_ok(&c31.sign(env.dir(), &k3, &img, &[]), "cosign 3.1 sign");
    assert_allowed(&env.verify(&env.policy(&[&p2]), &img).await, Format::CosignV2);
    assert_allowed(&env.verify(&env.policy(&[&p3]), &img).await, Format::CosignV3);
    assert_ok(&c31.verify(env.dir(), &p3, &img), "cosign 3.1 verify (bundle key)");
    assert_ok(&c25.verify(env.dir(), &p2, &img), "cosign 2.5 verify (.sig key)");
    // Disagreement (README): with a bundle present cosign 3.1 never looks at `.sig`, so the
    // `.sig` key alone fails there; kcache accepts any signature that verifies.
    assert_fails(&c31.verify(env.dir(), &p2, &img), "cosign 3.1 verify with the .sig key");
}

async fn push_two_platform_index(env: &Env, repo: &str, tag: &str) -> (Digest, Digest, Digest) {
    let amd = env.push(&format!("{repo}:amd64"), "amd64 rootfs").await;
    let arm = env.push(&format!("{repo}:arm64"), "arm64 rootfs").await;
    let size = |d: &Digest| {
        let d = d.clone();
        async move { env.get_manifest(repo, d.as_str()).await.len() }
    };
    let index = json!({
        "schemaVersion": 2,
        "mediaType": sign::OCI_INDEX,
        "manifests": [
            {"mediaType": sign::OCI_MANIFEST, "digest": amd.as_str(), "size": size(&amd).await,
             "platform": {"architecture": "amd64", "os": "linux"}},
            {"mediaType": sign::OCI_MANIFEST, "digest": arm.as_str(), "size": size(&arm).await,
             "platform": {"architecture": "arm64", "os": "linux"}},
        ]
    })
    .to_string();
    let idx = env.put_manifest(repo, tag, sign::OCI_INDEX, index.as_bytes()).await;
    (idx, amd, arm)
}

#[tokio::test]
async fn index_signed_with_recursive_is_allowed_per_platform_as_pulled() {
    let Some((c25, c31)) = Cosign::both("index_recursive") else {
        return;
    };
    let env = Env::new();
    for (c, repo) in [(&c25, "apps/multi25"), (&c31, "apps/multi31")] {
        let (idx, amd, arm) = push_two_platform_index(&env, repo, "v1").await;
        let (key, public) = c.generate_key_pair(env.dir(), &format!("k{}", c.version));
        let policy = env.policy(&[&public]);
        let format = if c.version == "2.5" {
            Format::CosignV2
        } else {
            Format::CosignV3
        };
        assert_ok(
            &c.sign(env.dir(), &key, &env.image(&format!("{repo}@{idx}")), &["--recursive"]),
            "cosign sign --recursive",
        );
        let tag_ref = env.image(&format!("{repo}:v1"));
        for child in [&amd, &arm] {
            // Pulled by platform: the image-ref is the index tag, the digest the platform's.
            let v = env.verify_pulled(&policy, &tag_ref, child).await;
            assert_allowed(&v, format);
            assert!(v.via_index.is_none(), "signed itself: {}", v.summary());
            assert_ok(
                &c.verify(env.dir(), &public, &env.image(&format!("{repo}@{child}"))),
                "cosign verify platform manifest",
            );
        }
        assert_allowed(&env.verify(&policy, &tag_ref).await, format);
    }
}

#[tokio::test]
async fn index_signed_without_recursive_allows_platforms_only_through_the_index() {
    let Some(c31) = Cosign::v3_1("index_not_recursive") else {
        return;
    };
    let env = Env::new();
    let (idx, amd, _arm) = push_two_platform_index(&env, "apps/multi", "v1").await;
    let (key, public) = c31.generate_key_pair(env.dir(), "k");
    let policy = env.policy(&[&public]);
    assert_ok(
        &c31.sign(env.dir(), &key, &env.image(&format!("apps/multi@{idx}")), &[]),
        "cosign 3.1 sign",
    );
    let v = env.verify_pulled(&policy, &env.image("apps/multi:v1"), &amd).await;
    assert_allowed(&v, Format::CosignV3);
    assert_eq!(v.via_index.as_ref(), Some(&idx), "{}", v.summary());
    // Alone (no index named), the platform manifest has no signature of its own.
    let alone = env.image(&format!("apps/multi@{amd}"));
    let v = env.verify(&policy, &alone).await;
    assert_denied(&v, &alone, &amd, "no signature found");
    assert_fails(
        &c31.verify(env.dir(), &public, &alone),
        "cosign 3.1 verify of an unsigned platform",
    );
}

#[tokio::test]
async fn cosign_attach_signature_is_allowed() {
    let Some((c25, c31)) = Cosign::both("cosign_attach") else {
        return;
    };
    let env = Env::new();
    let d = env.push("apps/a:v1", "a").await;
    let img = env.image(&format!("apps/a@{d}"));
    let (key, public) = c25.generate_key_pair(env.dir(), "k");
    // The out-of-band flow: generate the payload, sign it as a blob, attach both.
    let payload = c25.ok(env.dir(), &["generate", &img]);
    std::fs::write(env.dir().join("payload.json"), &payload).unwrap();
    let sig = c25.ok(
        env.dir(),
        &[
            "sign-blob",
            "--key",
            &key.display().to_string(),
            "--tlog-upload=false",
            "-y",
            "payload.json",
        ],
    );
    std::fs::write(env.dir().join("payload.sig"), sig.trim()).unwrap();
    c31.ok(
        env.dir(),
        &[
            "attach",
            "signature",
            "--payload",
            "payload.json",
            "--signature",
            "payload.sig",
            "--allow-http-registry",
            &img,
        ],
    );
    assert_allowed(&env.verify(&env.policy(&[&public]), &img).await, Format::CosignV2);
    assert_ok(&c31.verify(env.dir(), &public, &img), "cosign 3.1 verify");
}

#[tokio::test]
async fn cosign_copy_carries_signatures_kcache_accepts_at_the_destination() {
    let Some((c25, c31)) = Cosign::both("cosign_copy") else {
        return;
    };
    let env = Env::new();
    let (key, public) = c31.generate_key_pair(env.dir(), "k");
    let policy = env.policy(&[&public]);
    for (c, name) in [(&c25, "sig"), (&c31, "bundle")] {
        let d = env.push(&format!("src/{name}:v1"), name).await;
        let src = env.image(&format!("src/{name}@{d}"));
        assert_ok(&c.sign(env.dir(), &key, &src, &[]), "cosign sign");
        let dst = env.image(&format!("dst/{name}:v1"));
        c31.ok(env.dir(), &["copy", "--allow-http-registry", "-f", &src, &dst]);
        let dst_pinned = env.image(&format!("dst/{name}@{d}"));
        let kc = env.verify(&policy, &dst_pinned).await;
        let co = c31.verify(env.dir(), &public, &dst_pinned);
        // Whatever cosign copy carries, both sides agree on the copy.
        assert_eq!(
            kc.permits(),
            co.status.success(),
            "{}\n{}",
            kc.summary(),
            output_text(&co)
        );
        if name == "sig" {
            assert_allowed(&kc, Format::CosignV2);
        }
    }
}

// --- attacks, with the real tool's output ------------------------------------------------------

#[tokio::test]
async fn attack_untrusted_key_is_denied_for_both_forms() {
    let Some((c25, c31)) = Cosign::both("attack_untrusted_key") else {
        return;
    };
    let env = Env::new();
    let (_trusted_key, trusted) = c31.generate_key_pair(env.dir(), "trusted");
    let (mallory, mallory_pub) = c31.generate_key_pair(env.dir(), "mallory");
    let policy = env.policy(&[&trusted]);
    for (c, repo) in [(&c25, "apps/sig"), (&c31, "apps/bundle")] {
        let d = env.push(&format!("{repo}:v1"), repo).await;
        let img = env.image(&format!("{repo}@{d}"));
        assert_ok(&c.sign(env.dir(), &mallory, &img, &[]), "cosign sign by mallory");
        let v = env.verify(&policy, &img).await;
        assert_denied(&v, &img, &d, "no signature satisfies the rule");
        assert!(v.reason.contains("does not verify"), "{}", v.reason);
        assert_fails(
            &c31.verify(env.dir(), &trusted, &img),
            "cosign 3.1 verify with the trusted key",
        );
        assert_ok(
            &c31.verify(env.dir(), &mallory_pub, &img),
            "cosign 3.1 verify with mallory's key",
        );
    }
}

#[tokio::test]
async fn attack_bundle_moved_onto_another_digest_by_copying_the_referrers_tag_index_is_denied() {
    let Some(c31) = Cosign::v3_1("attack_bundle_moved") else {
        return;
    };
    let env = Env::new();
    let signed = env.push("apps/a:v1", "signed").await;
    let victim = env.push("apps/a:v2", "evil").await;
    let (key, public) = c31.generate_key_pair(env.dir(), "k");
    assert_ok(
        &c31.sign(env.dir(), &key, &env.image(&format!("apps/a@{signed}")), &[]),
        "cosign 3.1 sign",
    );
    let index = env.get_manifest("apps/a", &signed.tag_prefix()).await;
    env.put_manifest("apps/a", &victim.tag_prefix(), sign::OCI_INDEX, &index)
        .await;
    let img = env.image(&format!("apps/a@{victim}"));
    let v = env.verify(&env.policy(&[&public]), &img).await;
    assert_denied(&v, &img, &victim, "no signature found");
    assert!(
        v.reason.contains(&format!("subject is {signed}, not {victim}")),
        "{}",
        v.reason
    );
    assert_fails(
        &c31.verify(env.dir(), &public, &img),
        "cosign 3.1 verify of the moved bundle",
    );
}

/// Re-pushes `bundle` as the one referrer of `subject` in `repo` (manifest + referrers tag),
/// keeping the rest of cosign's manifest `m` as it was.
async fn reattach_bundle(env: &Env, repo: &str, mut m: Value, subject: &Digest, bundle: &[u8]) -> Digest {
    let bd = env.put_blob(repo, bundle).await;
    m["layers"][0]["digest"] = bd.as_str().into();
    m["layers"][0]["size"] = bundle.len().into();
    m["subject"]["digest"] = subject.as_str().into();
    let bytes = m.to_string().into_bytes();
    let md = Digest::sha256_of(&bytes);
    env.put_manifest(repo, md.as_str(), sign::OCI_MANIFEST, &bytes).await;
    let index = sign::referrers_tag_index(None, &sign::Blob::new(bytes)).unwrap();
    env.put_manifest(repo, &subject.tag_prefix(), sign::OCI_INDEX, &index)
        .await;
    md
}

#[tokio::test]
async fn attack_tampered_dsse_payload_is_denied() {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let Some(c31) = Cosign::v3_1("attack_tampered_dsse") else {
        return;
    };
    let env = Env::new();
    let d = env.push("apps/a:v1", "a").await;
    let (key, public) = c31.generate_key_pair(env.dir(), "k");
    let img = env.image(&format!("apps/a@{d}"));
    assert_ok(&c31.sign(env.dir(), &key, &img, &[]), "cosign 3.1 sign");
    let (_, m) = env.bundle_referrer("apps/a", &d).await;
    let mut bundle: Value =
        serde_json::from_slice(&env.get_blob("apps/a", m["layers"][0]["digest"].as_str().unwrap()).await).unwrap();
    let payload = b64.decode(bundle["dsseEnvelope"]["payload"].as_str().unwrap()).unwrap();
    let tampered = String::from_utf8(payload)
        .unwrap()
        .replace("\"predicate\":{}", "\"predicate\":{\"approved\":true}");
    assert!(tampered.contains("approved"), "the statement changed");
    bundle["dsseEnvelope"]["payload"] = b64.encode(tampered).into();
    reattach_bundle(&env, "apps/a", m, &d, bundle.to_string().as_bytes()).await;
    let v = env.verify(&env.policy(&[&public]), &img).await;
    assert_denied(&v, &img, &d, "no signature satisfies the rule");
    assert!(v.reason.contains("DSSE envelope"), "{}", v.reason);
    assert_fails(
        &c31.verify(env.dir(), &public, &img),
        "cosign 3.1 verify of a tampered payload",
    );
}

#[tokio::test]
async fn attack_statement_for_another_digest_is_denied_even_in_a_referrer_about_this_one() {
    let Some(c31) = Cosign::v3_1("attack_statement_other_digest") else {
        return;
    };
    let env = Env::new();
    let signed = env.push("apps/a:v1", "signed").await;
    let victim = env.push("apps/a:v2", "evil").await;
    let (key, public) = c31.generate_key_pair(env.dir(), "k");
    assert_ok(
        &c31.sign(env.dir(), &key, &env.image(&format!("apps/a@{signed}")), &[]),
        "cosign 3.1 sign",
    );
    // A referrer manifest whose subject is the victim, holding the genuine bundle (a valid
    // signature over a statement about `signed`).
    let (_, m) = env.bundle_referrer("apps/a", &signed).await;
    let bundle = env.get_blob("apps/a", m["layers"][0]["digest"].as_str().unwrap()).await;
    reattach_bundle(&env, "apps/a", m, &victim, &bundle).await;
    let img = env.image(&format!("apps/a@{victim}"));
    let v = env.verify(&env.policy(&[&public]), &img).await;
    assert_denied(&v, &img, &victim, "no signature satisfies the rule");
    assert!(
        v.reason.contains(&format!("no in-toto subject has digest {victim}")),
        "{}",
        v.reason
    );
    assert_fails(&c31.verify(env.dir(), &public, &img), "cosign 3.1 verify");
}

#[tokio::test]
async fn attack_sig_layer_swapped_between_two_images_is_denied() {
    let Some((c25, c31)) = Cosign::both("attack_sig_swapped") else {
        return;
    };
    let env = Env::new();
    let a = env.push("apps/a:v1", "a").await;
    let b = env.push("apps/a:v2", "b").await;
    let (key, public) = c25.generate_key_pair(env.dir(), "k");
    for d in [&a, &b] {
        assert_ok(
            &c25.sign(env.dir(), &key, &env.image(&format!("apps/a@{d}")), &[]),
            "cosign 2.5 sign",
        );
    }
    // b's `.sig` now holds a's layer (payload and signature), all of it genuine.
    let sig_a = env.get_manifest("apps/a", &format!("{}.sig", a.tag_prefix())).await;
    env.put_manifest("apps/a", &format!("{}.sig", b.tag_prefix()), sign::OCI_MANIFEST, &sig_a)
        .await;
    let img = env.image(&format!("apps/a@{b}"));
    let v = env.verify(&env.policy(&[&public]), &img).await;
    assert_denied(&v, &img, &b, "no signature satisfies the rule");
    assert!(
        v.reason.contains(&format!("signature payload is for {a}, not {b}")),
        "{}",
        v.reason
    );
    assert_fails(
        &c31.verify(env.dir(), &public, &img),
        "cosign 3.1 verify of a swapped .sig",
    );
    assert_fails(
        &c25.verify(env.dir(), &public, &img),
        "cosign 2.5 verify of a swapped .sig",
    );
}

//! cosign v3 signatures: Sigstore bundles about an image digest. A DSSE bundle must hold an
//! in-toto statement with the digest as a subject (cosign v3 `sign` writes predicate
//! `https://sigstore.dev/cosign/sign/v1`; attestations are accepted the same way); a
//! message-signature bundle must sign the digest itself.
//!
//! A bundle is found by what its manifest *is* ([`bundle_layer`]): an OCI image manifest whose
//! own `artifactType` (or, lacking one, config media type) is a Sigstore bundle, whose `subject`
//! is the digest being verified, with one bundle layer. What a referrers index (the API's answer
//! or the `sha256-<hex>` tag) says about it is never trusted: cosign 3.1 writes
//! `artifactType: application/vnd.oci.empty.v1+json` there for its own bundles (issue 12), and a
//! hostile registry can write anything.

use crate::{
    digest::Digest,
    sigstore::{
        verify, verify::BundleErrorKind, Artifact, Bundle, Options, Signer, TrustedRoot, Verified, VerifyError,
    },
};

/// Media type of a v0.3 bundle as an OCI artifact.
pub const BUNDLE_ARTIFACT_TYPE: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";
/// Every Sigstore bundle media type starts so (`…bundle.v0.3+json`, `…bundle+json;version=0.3`),
/// as cosign's own check does.
pub const BUNDLE_MEDIA_TYPE_PREFIX: &str = "application/vnd.dev.sigstore.bundle";
/// Largest bundle accepted.
pub const MAX_BUNDLE_BYTES: usize = 1024 * 1024;

/// Why a referrer manifest is not a bundle signature about the digest being verified. Such a
/// referrer is skipped, never an error: other referrers (SBOMs, attestations of other tools) live
/// beside signatures.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotABundle {
    /// Not a JSON OCI image manifest.
    #[error("not an OCI image manifest ({0})")]
    NotAManifest(String),
    /// The manifest's own artifact type (or config media type) is not a Sigstore bundle.
    #[error("artifact type {0:?} is not a Sigstore bundle")]
    ArtifactType(String),
    /// The manifest's `subject` is another digest (or missing).
    #[error("subject is {}, not {expected}", actual.as_deref().unwrap_or("missing"))]
    Subject {
        /// The digest being verified.
        expected: String,
        /// What the manifest names.
        actual: Option<String>,
    },
    /// Not exactly one layer of a bundle media type with a valid digest.
    #[error("not exactly one Sigstore bundle layer")]
    Layer,
}

/// The bundle layer of a referrer manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleLayer {
    /// The layer blob's digest.
    pub digest: Digest,
    /// Its declared size, if any.
    pub size: Option<u64>,
}

fn str_at<'v>(v: &'v serde_json::Value, path: &[&str]) -> Option<&'v str> {
    path.iter().try_fold(v, |v, k| v.get(k))?.as_str()
}

/// Classifies a referrer manifest by what it is: an OCI image manifest (`mediaType` absent or
/// the OCI one), whose `artifactType`, or lacking one its config's media type, is a Sigstore
/// bundle; whose `subject.digest` is `subject`; holding exactly one layer, of a bundle media type
/// (cosign's `ociremote.Bundle` demands the same). Returns that layer.
pub fn bundle_layer(manifest: &[u8], subject: &Digest) -> Result<BundleLayer, NotABundle> {
    let v: serde_json::Value =
        serde_json::from_slice(manifest).map_err(|e| NotABundle::NotAManifest(format!("not JSON: {e}")))?;
    if !v.is_object() {
        return Err(NotABundle::NotAManifest("not a JSON object".into()));
    }
    match str_at(&v, &["mediaType"]) {
        None | Some(super::sign::OCI_MANIFEST) => {}
        Some(other) => return Err(NotABundle::NotAManifest(format!("media type {other:?}"))),
    }
    let artifact_type = str_at(&v, &["artifactType"])
        .or_else(|| str_at(&v, &["config", "mediaType"]))
        .unwrap_or_default();
    if !artifact_type.starts_with(BUNDLE_MEDIA_TYPE_PREFIX) {
        return Err(NotABundle::ArtifactType(artifact_type.to_string()));
    }
    let actual = str_at(&v, &["subject", "digest"]);
    if actual != Some(subject.as_str()) {
        return Err(NotABundle::Subject {
            expected: subject.to_string(),
            actual: actual.map(str::to_string),
        });
    }
    let layers = v.get("layers").and_then(|l| l.as_array()).ok_or(NotABundle::Layer)?;
    let [layer] = layers.as_slice() else {
        return Err(NotABundle::Layer);
    };
    if !str_at(layer, &["mediaType"]).is_some_and(|t| t.starts_with(BUNDLE_MEDIA_TYPE_PREFIX)) {
        return Err(NotABundle::Layer);
    }
    let digest = str_at(layer, &["digest"])
        .and_then(|d| Digest::parse(d).ok())
        .ok_or(NotABundle::Layer)?;
    Ok(BundleLayer {
        digest,
        size: layer.get("size").and_then(|s| s.as_u64()),
    })
}

/// Verifies bundle JSON as a signature over `image`.
pub fn verify_bundle_for_image(
    bundle_json: &[u8],
    image: &Digest,
    signer: Signer<'_>,
    root: &TrustedRoot,
    opts: &Options,
) -> Result<Verified, VerifyError> {
    if bundle_json.len() > MAX_BUNDLE_BYTES {
        return Err(BundleErrorKind::TooLarge {
            size: bundle_json.len(),
            max: MAX_BUNDLE_BYTES,
        }
        .into());
    }
    if image.algorithm() != "sha256" {
        return Err(BundleErrorKind::UnsupportedDigest(image.to_string()).into());
    }
    let bundle = Bundle::from_json(bundle_json)?;
    let mut d = [0u8; 32];
    d.copy_from_slice(&image.bytes());
    verify(&bundle, Artifact::Sha256(d), signer, root, opts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sigstore::Identity;

    fn fx(p: &str) -> Vec<u8> {
        std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../tests/fixtures")
                .join(p),
        )
        .unwrap()
    }

    fn referrer(subject: &Digest) -> serde_json::Value {
        // The shape `cosign sign` 3.1.1 pushes (issue 12).
        serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", "size": 2,
                "digest": "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
                "artifactType": BUNDLE_ARTIFACT_TYPE},
            "layers": [{"mediaType": BUNDLE_ARTIFACT_TYPE, "size": 659,
                "digest": "sha256:5cd598d260da225ca97a81367edd208bdf5e5beef01c35da8e215e41c8eb9ad2"}],
            "annotations": {"dev.sigstore.bundle.content": "dsse-envelope",
                "dev.sigstore.bundle.predicateType": "https://sigstore.dev/cosign/sign/v1"},
            "subject": {"mediaType": "application/vnd.oci.image.manifest.v1+json", "size": 394,
                "digest": subject.as_str()},
            "artifactType": BUNDLE_ARTIFACT_TYPE
        })
    }

    fn classify(m: &serde_json::Value, subject: &Digest) -> Result<BundleLayer, NotABundle> {
        bundle_layer(m.to_string().as_bytes(), subject)
    }

    #[test]
    fn a_referrer_is_a_bundle_by_its_own_artifact_type_subject_and_layer() {
        let img = Digest::sha256_of(b"image");
        let m = referrer(&img);
        let l = classify(&m, &img).unwrap();
        assert_eq!(
            l.digest.as_str(),
            "sha256:5cd598d260da225ca97a81367edd208bdf5e5beef01c35da8e215e41c8eb9ad2"
        );
        assert_eq!(l.size, Some(659));

        // No artifactType: the config media type says what it is (OCI 1.1's rule).
        let mut no_at = m.clone();
        no_at.as_object_mut().unwrap().remove("artifactType");
        no_at["config"]["mediaType"] = BUNDLE_ARTIFACT_TYPE.into();
        classify(&no_at, &img).unwrap();
        // The older `…bundle+json;version=0.3` spelling is a bundle too.
        let mut old = m.clone();
        old["artifactType"] = "application/vnd.dev.sigstore.bundle+json;version=0.3".into();
        classify(&old, &img).unwrap();
    }

    #[test]
    fn referrers_that_are_not_bundles_about_this_digest_are_told_apart() {
        let img = Digest::sha256_of(b"image");
        let m = referrer(&img);
        let other = Digest::sha256_of(b"other image");
        assert!(matches!(classify(&m, &other), Err(NotABundle::Subject { .. })));
        let mut no_subject = m.clone();
        no_subject.as_object_mut().unwrap().remove("subject");
        assert!(matches!(
            classify(&no_subject, &img),
            Err(NotABundle::Subject { actual: None, .. })
        ));
        let mut sbom = m.clone();
        sbom["artifactType"] = "application/spdx+json".into();
        assert!(matches!(classify(&sbom, &img), Err(NotABundle::ArtifactType(_))));
        // An empty artifactType on the manifest is what it says (cosign 3.1 writes it on the
        // index descriptor, never on the manifest).
        let mut empty = m.clone();
        empty["artifactType"] = "application/vnd.oci.empty.v1+json".into();
        assert!(matches!(classify(&empty, &img), Err(NotABundle::ArtifactType(_))));
        let mut two = m.clone();
        let layer = two["layers"][0].clone();
        two["layers"].as_array_mut().unwrap().push(layer);
        assert_eq!(classify(&two, &img), Err(NotABundle::Layer));
        let mut tar = m.clone();
        tar["layers"][0]["mediaType"] = "application/vnd.oci.image.layer.v1.tar".into();
        assert_eq!(classify(&tar, &img), Err(NotABundle::Layer));
        let mut index = m.clone();
        index["mediaType"] = crate::cosign::sign::OCI_INDEX.into();
        assert!(matches!(classify(&index, &img), Err(NotABundle::NotAManifest(_))));
        assert!(matches!(bundle_layer(b"[1]", &img), Err(NotABundle::NotAManifest(_))));
    }

    #[test]
    fn kcache_v3_signatures_are_cosign_sign_dsse_bundles_for_each_key_type() {
        use crate::{cosign::sign, signing::PrivateKey};
        let img = Digest::sha256_of(b"image manifest");
        let root = TrustedRoot::public_good();
        let opts = Options {
            tlog: crate::sigstore::TlogPolicy::Off,
            ..Options::default()
        };
        for key in [
            PrivateKey::generate_p256(),
            PrivateKey::generate_p384(),
            PrivateKey::generate_ed25519(),
        ] {
            let s = sign::sign_v3(&key, &img, sign::OCI_MANIFEST, 394, "2026-12-06T10:00:00Z").unwrap();
            let layer = bundle_layer(&s.manifest.bytes, &img).unwrap();
            assert_eq!(layer.digest, s.bundle.digest);
            let m: serde_json::Value = serde_json::from_slice(&s.manifest.bytes).unwrap();
            assert_eq!(m["annotations"][sign::ANNOTATION_BUNDLE_CONTENT], "dsse-envelope");
            assert_eq!(
                m["annotations"][sign::ANNOTATION_PREDICATE_TYPE],
                sign::COSIGN_SIGN_PREDICATE
            );
            let pk = key.public_key();
            let v = verify_bundle_for_image(&s.bundle.bytes, &img, Signer::Key(&pk), &root, &opts).unwrap();
            let st: serde_json::Value = serde_json::from_slice(&v.statement.unwrap()).unwrap();
            assert_eq!(st["predicateType"], sign::COSIGN_SIGN_PREDICATE);
            assert_eq!(st["_type"], sign::IN_TOTO_STATEMENT_V1);
            let e = verify_bundle_for_image(
                &s.bundle.bytes,
                &Digest::sha256_of(b"x"),
                Signer::Key(&pk),
                &root,
                &opts,
            )
            .unwrap_err();
            assert!(e.to_string().contains("no in-toto subject"), "{e}");
            let stranger = PrivateKey::generate_p256().public_key();
            assert!(verify_bundle_for_image(&s.bundle.bytes, &img, Signer::Key(&stranger), &root, &opts).is_err());
        }
    }

    #[test]
    fn cosign_oci_attestation_bundle_verifies_for_its_subject_only() {
        let bundle = fx("cosign-v3-bundle-oci/oci-attestation.sigstore.json");
        let root = TrustedRoot::from_json(&fx("cosign-v3-bundle-oci/trusted_root_pgi.json")).unwrap();
        let id = Identity::exact("https://github.com/login/oauth", "cody@soyland.com").unwrap();
        let subject = Digest::parse("sha256:732112270d7e59418a8c080b134b24cabd67d250d0d0147a97ed95ba5c280aa4").unwrap();
        let v = verify_bundle_for_image(&bundle, &subject, Signer::Identity(&id), &root, &Options::default()).unwrap();
        assert!(v.tlog_index.is_some());
        let other = Digest::sha256_of(b"another image");
        let e =
            verify_bundle_for_image(&bundle, &other, Signer::Identity(&id), &root, &Options::default()).unwrap_err();
        assert!(e.to_string().contains("no in-toto subject"), "{e}");
        let wrong_id = Identity::exact("https://github.com/login/oauth", "mallory@soyland.com").unwrap();
        assert!(matches!(
            verify_bundle_for_image(
                &bundle,
                &subject,
                Signer::Identity(&wrong_id),
                &root,
                &Options::default()
            ),
            Err(VerifyError::Identity { .. })
        ));
    }

    #[test]
    fn cosign_v3_sign_bundle_for_kubewarden_index_verifies_with_public_good_root() {
        let bundle = fx("cosign-v3-bundle-sign/kubewarden-controller-v1.34.0.sigstore.json");
        let id = Identity::exact(
            "https://token.actions.githubusercontent.com",
            "https://github.com/kubewarden/kubewarden-controller/.github/workflows/release.yml@refs/tags/v1.34.0",
        )
        .unwrap();
        let subject = Digest::parse("sha256:c811d58de79c92f03214e63aa339484e488d694ae8a6283b5f3f17a9faf50172").unwrap();
        let root = TrustedRoot::public_good();
        verify_bundle_for_image(&bundle, &subject, Signer::Identity(&id), &root, &Options::default()).unwrap();
        let re = crate::sigstore::Matcher::regex(r"^https://github\.com/kubewarden/.*$").unwrap();
        let id_re = Identity {
            issuer: id.issuer.clone(),
            subject: re,
        };
        verify_bundle_for_image(&bundle, &subject, Signer::Identity(&id_re), &root, &Options::default()).unwrap();
        assert!(verify_bundle_for_image(
            &bundle,
            &Digest::sha256_of(b"x"),
            Signer::Identity(&id),
            &root,
            &Options::default()
        )
        .is_err());
    }
}

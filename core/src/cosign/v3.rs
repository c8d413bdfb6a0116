//! cosign v3 signatures: Sigstore bundles about an image digest. A DSSE bundle must hold an
//! in-toto statement with the digest as a subject (cosign v3 `sign` writes predicate
//! `https://sigstore.dev/cosign/sign/v1`; attestations are accepted the same way); a
//! message-signature bundle must sign the digest itself.

use crate::{
    digest::Digest,
    sigstore::{verify, Artifact, Bundle, Options, Signer, TrustedRoot, Verified, VerifyError},
};

/// Media type of a v0.3 bundle as an OCI artifact.
pub const BUNDLE_ARTIFACT_TYPE: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";
/// Largest bundle accepted.
pub const MAX_BUNDLE_BYTES: usize = 1024 * 1024;

/// Verifies bundle JSON as a signature over `image`.
pub fn verify_bundle_for_image(
    bundle_json: &[u8],
    image: &Digest,
    signer: Signer<'_>,
    root: &TrustedRoot,
    opts: &Options,
) -> Result<Verified, VerifyError> {
    if bundle_json.len() > MAX_BUNDLE_BYTES {
        return Err(VerifyError::Bundle(format!(
            "bundle of {} bytes exceeds {MAX_BUNDLE_BYTES}",
            bundle_json.len()
        )));
    }
    if image.algorithm() != "sha256" {
        return Err(VerifyError::Bundle(format!(
            "cannot verify a bundle over {image}: only sha256 digests"
        )));
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

//! cosign v2 `.sig` layers: a simple-signing payload blob plus annotations
//! (`dev.cosignproject.cosign/signature`, `dev.sigstore.cosign/certificate`,
//! `dev.sigstore.cosign/bundle` with the Rekor SET, `dev.sigstore.cosign/rfc3161timestamp`),
//! converted into a v0.1-style [`Bundle`] so they share the Sigstore verification path.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::Deserialize;

use crate::{
    digest::Digest,
    keys,
    sigstore::{
        bundle::{Bundle, BundleVersion, Content, Material, TlogEntry},
        verify, Artifact, Options, Signer, TrustedRoot, Verified, VerifyError,
    },
};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Annotation holding the base64 signature.
pub const ANNOTATION_SIGNATURE: &str = "dev.cosignproject.cosign/signature";
/// Annotation holding the PEM leaf certificate (keyless).
pub const ANNOTATION_CERTIFICATE: &str = "dev.sigstore.cosign/certificate";
/// Annotation holding the PEM chain (informational; never trusted).
pub const ANNOTATION_CHAIN: &str = "dev.sigstore.cosign/chain";
/// Annotation holding the Rekor bundle (SET + entry).
pub const ANNOTATION_BUNDLE: &str = "dev.sigstore.cosign/bundle";
/// Annotation holding an RFC 3161 timestamp.
pub const ANNOTATION_RFC3161: &str = "dev.sigstore.cosign/rfc3161timestamp";
/// Largest simple-signing payload accepted.
pub const MAX_PAYLOAD_BYTES: usize = 64 * 1024;

/// A problem with one `.sig` layer.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// Missing or malformed annotations or payload.
    #[error("malformed cosign signature layer: {0}")]
    Malformed(String),
    /// The payload signs another image.
    #[error("signature payload is for {signed}, not {expected}")]
    WrongDigest {
        /// What the payload names.
        signed: String,
        /// The digest being verified.
        expected: String,
    },
    /// The Sigstore checks failed.
    #[error(transparent)]
    Verify(#[from] VerifyError),
}

/// One `.sig` manifest layer: the payload blob and the layer's annotations.
#[derive(Debug, Clone)]
pub struct SignatureLayer {
    /// Exact payload bytes (the blob).
    pub payload: Vec<u8>,
    /// Layer annotations.
    pub annotations: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct RekorBundle {
    #[serde(rename = "SignedEntryTimestamp")]
    set: String,
    #[serde(rename = "Payload")]
    payload: RekorPayload,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RekorPayload {
    body: String,
    integrated_time: i64,
    log_index: i64,
    #[serde(rename = "logID")]
    log_id: String,
}

#[derive(Deserialize)]
struct Rfc3161 {
    #[serde(rename = "SignedRFC3161Timestamp")]
    signed: String,
}

fn malformed(msg: impl Into<String>) -> LayerError {
    LayerError::Malformed(msg.into())
}

impl SignatureLayer {
    /// Converts the layer into a bundle (v0.1 semantics: a SET suffices, no inclusion proof).
    pub fn to_bundle(&self) -> Result<Bundle, LayerError> {
        let sig = self
            .annotations
            .get(ANNOTATION_SIGNATURE)
            .ok_or_else(|| malformed(format!("no {ANNOTATION_SIGNATURE} annotation")))?;
        let signature = B64
            .decode(sig.trim())
            .map_err(|e| malformed(format!("signature is not base64: {e}")))?;
        let material = match self.annotations.get(ANNOTATION_CERTIFICATE) {
            Some(pem) if !pem.trim().is_empty() => {
                let (label, der) = keys::pem_decode(pem).map_err(|e| malformed(format!("certificate: {e}")))?;
                if label != "CERTIFICATE" {
                    return Err(malformed(format!("certificate annotation holds a {label}")));
                }
                Material::Certificate(der)
            }
            _ => Material::PublicKey { hint: None },
        };
        let mut tlog_entries = Vec::new();
        if let Some(b) = self.annotations.get(ANNOTATION_BUNDLE) {
            let rb: RekorBundle =
                serde_json::from_str(b).map_err(|e| malformed(format!("rekor bundle annotation: {e}")))?;
            let body = B64
                .decode(&rb.payload.body)
                .map_err(|_| malformed("rekor body is not base64"))?;
            let kv: serde_json::Value =
                serde_json::from_slice(&body).map_err(|_| malformed("rekor body is not JSON"))?;
            if rb.payload.log_index < 0 || rb.payload.integrated_time <= 0 {
                return Err(malformed("rekor bundle has a negative log index or no integrated time"));
            }
            tlog_entries.push(TlogEntry {
                log_index: rb.payload.log_index as u64,
                log_id: hex::decode(&rb.payload.log_id).map_err(|_| malformed("rekor logID is not hex"))?,
                kind: kv.get("kind").and_then(|k| k.as_str()).unwrap_or_default().to_string(),
                version: kv
                    .get("apiVersion")
                    .and_then(|k| k.as_str())
                    .unwrap_or_default()
                    .to_string(),
                integrated_time: Some(rb.payload.integrated_time),
                set: Some(B64.decode(&rb.set).map_err(|_| malformed("SET is not base64"))?),
                proof: None,
                body,
            });
        }
        let mut timestamps = Vec::new();
        if let Some(t) = self.annotations.get(ANNOTATION_RFC3161) {
            let t: Rfc3161 = serde_json::from_str(t).map_err(|e| malformed(format!("rfc3161 annotation: {e}")))?;
            timestamps.push(
                B64.decode(&t.signed)
                    .map_err(|_| malformed("rfc3161 timestamp is not base64"))?,
            );
        }
        use sha2::Digest as _;
        Ok(Bundle {
            version: BundleVersion::V0_1,
            material,
            tlog_entries,
            timestamps,
            content: Content::MessageSignature {
                digest: Some(sha2::Sha256::digest(&self.payload).to_vec()),
                signature,
            },
        })
    }

    /// Verifies this layer as a signature of `image` by `signer`: the Sigstore checks over the
    /// exact payload bytes, then the payload's `docker-manifest-digest` must be `image`.
    /// (`docker-reference` is not compared, as cosign's own claim check does not.)
    pub fn verify(
        &self,
        image: &Digest,
        signer: Signer<'_>,
        root: &TrustedRoot,
        opts: &Options,
    ) -> Result<Verified, LayerError> {
        if self.payload.len() > MAX_PAYLOAD_BYTES {
            return Err(malformed(format!(
                "payload of {} bytes exceeds {MAX_PAYLOAD_BYTES}",
                self.payload.len()
            )));
        }
        let bundle = self.to_bundle()?;
        let verified = verify(&bundle, Artifact::Bytes(&self.payload), signer, root, opts)?;
        check_simple_signing(&self.payload, image)?;
        Ok(verified)
    }
}

/// Checks a simple-signing payload names `image` as its `docker-manifest-digest`.
pub fn check_simple_signing(payload: &[u8], image: &Digest) -> Result<(), LayerError> {
    let v: serde_json::Value =
        serde_json::from_slice(payload).map_err(|e| malformed(format!("payload is not JSON: {e}")))?;
    let critical = v
        .get("critical")
        .ok_or_else(|| malformed("payload has no critical section"))?;
    let ty = critical.get("type").and_then(|t| t.as_str()).unwrap_or_default();
    if !ty.eq_ignore_ascii_case("cosign container image signature") && ty != "atomic container signature" {
        return Err(malformed(format!(
            "payload type {ty:?} is not a container image signature"
        )));
    }
    let signed = critical
        .get("image")
        .and_then(|i| i.get("docker-manifest-digest"))
        .and_then(|d| d.as_str())
        .ok_or_else(|| malformed("payload has no docker-manifest-digest"))?;
    if signed != image.as_str() {
        return Err(LayerError::WrongDigest {
            signed: signed.to_string(),
            expected: image.to_string(),
        });
    }
    Ok(())
}

/// Builds the simple-signing payload cosign signs for `image` at `reference`.
pub fn simple_signing_payload(reference: &str, image: &Digest) -> Vec<u8> {
    serde_json::json!({
        "critical": {
            "identity": {"docker-reference": reference},
            "image": {"docker-manifest-digest": image.as_str()},
            "type": "cosign container image signature"
        },
        "optional": null
    })
    .to_string()
    .into_bytes()
}

/// The payload of a `.sig` layer whose digest is `layer`, when it is the one cosign (2.x, 3.x
/// with `--new-bundle-format=false`) and kcache write for `image` in repository `name`
/// (`registry/repository`; Docker Hub's is also tried as go-containerregistry names it,
/// `index.docker.io/...`). The layer digest is the sha256 of the blob, so bytes that hash to
/// it are the blob: a verifier holding them need not fetch it (one round trip of three for a
/// `.sig` image). `None` (another docker-reference, annotations in `optional`, another
/// signer's formatting): fetch the blob.
pub fn known_payload(name: &str, image: &Digest, layer: &Digest, size: Option<u64>) -> Option<Vec<u8>> {
    let hub = name
        .strip_prefix("docker.io/")
        .map(|repo| format!("index.docker.io/{repo}"));
    [Some(name.to_string()), hub]
        .into_iter()
        .flatten()
        .map(|reference| simple_signing_payload(&reference, image))
        .find(|p| size.is_none_or(|s| s == p.len() as u64) && layer.matches(p))
}

/// Reads containers/image's on-disk signature form (`\0sigstore-json\n` + JSON) — test fixtures.
pub fn from_containers_image_file(raw: &[u8]) -> Result<SignatureLayer, LayerError> {
    let json = raw
        .strip_prefix(b"\0sigstore-json\n")
        .ok_or_else(|| malformed("missing sigstore-json prefix"))?;
    #[derive(Deserialize)]
    struct F {
        payload: String,
        annotations: BTreeMap<String, String>,
    }
    let f: F = serde_json::from_slice(json).map_err(|e| malformed(e.to_string()))?;
    Ok(SignatureLayer {
        payload: B64.decode(f.payload).map_err(|_| malformed("payload is not base64"))?,
        annotations: f.annotations,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        keys::PublicKey,
        sigstore::{Identity, TlogPolicy},
    };

    fn fixtures() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/cosign-v2-containers-image")
    }
    fn layer(dir: &str) -> SignatureLayer {
        from_containers_image_file(&std::fs::read(fixtures().join(dir).join("signature-1")).unwrap()).unwrap()
    }
    fn key(name: &str) -> PublicKey {
        PublicKey::from_pem(&std::fs::read(fixtures().join(name)).unwrap()).unwrap()
    }
    fn digest(s: &str) -> Digest {
        Digest::parse(s).unwrap()
    }
    const IMG: &str = "sha256:0489474da8ea22426ece86ace6c1c0026ab2fd3cdfbbd62b7e94650266c37d9a";
    const IMG_KEY_ONLY: &str = "sha256:634a8f35b5f16dcf4aaa0822adc0b1964bb786fca12f6831de8ddc45e5986a00";

    #[test]
    fn known_payload_is_the_blob_cosign_wrote_or_none() {
        // Real cosign output (containers/image's fixtures): its payload is rebuilt byte for byte.
        for (dir, name, img) in [
            (
                "dir-img-cosign-valid",
                "192.168.64.2:5000/cosign-signed-single-sample",
                IMG_KEY_ONLY,
            ),
            (
                "dir-img-cosign-fulcio-rekor-valid",
                "192.168.64.2:5000/cosign-signed/fulcio-rekor-1",
                IMG,
            ),
        ] {
            let blob = layer(dir).payload;
            let d = Digest::sha256_of(&blob);
            let size = Some(blob.len() as u64);
            assert_eq!(known_payload(name, &digest(img), &d, size), Some(blob), "{dir}");
            // Another repository, another image, a size that disagrees: not this blob.
            assert_eq!(known_payload("192.168.64.2:5000/other", &digest(img), &d, size), None);
            let other = if img == IMG { IMG_KEY_ONLY } else { IMG };
            assert_eq!(known_payload(name, &digest(other), &d, size), None);
            assert_eq!(known_payload(name, &digest(img), &d, Some(1)), None);
        }
        // Docker Hub, as go-containerregistry names it in docker-reference.
        let img = digest(IMG);
        let blob = simple_signing_payload("index.docker.io/library/nginx", &img);
        let d = Digest::sha256_of(&blob);
        assert_eq!(known_payload("docker.io/library/nginx", &img, &d, None), Some(blob));
    }

    #[test]
    fn keyless_fixture_verifies_with_its_identity_at_the_set_time() {
        let root = TrustedRoot::public_good();
        let id = Identity::exact("https://github.com/login/oauth", "mitr@redhat.com").unwrap();
        let v = layer("dir-img-cosign-fulcio-rekor-valid")
            .verify(&digest(IMG), Signer::Identity(&id), &root, &Options::default())
            .unwrap();
        assert_eq!(v.tlog_index, Some(11605770));
        assert!(
            matches!(v.signer, crate::sigstore::SignerInfo::Keyless { ref subject, .. } if subject == "mitr@redhat.com")
        );
    }

    #[test]
    fn keyless_fixture_rejects_other_identity_issuer_digest_and_tampered_payload() {
        let root = TrustedRoot::public_good();
        let l = layer("dir-img-cosign-fulcio-rekor-valid");
        let other = Identity::exact("https://github.com/login/oauth", "someone@else.com").unwrap();
        assert!(matches!(
            l.verify(&digest(IMG), Signer::Identity(&other), &root, &Options::default()),
            Err(LayerError::Verify(VerifyError::Identity { .. }))
        ));
        let other_issuer = Identity::exact("https://accounts.google.com", "mitr@redhat.com").unwrap();
        assert!(l
            .verify(
                &digest(IMG),
                Signer::Identity(&other_issuer),
                &root,
                &Options::default()
            )
            .is_err());
        let id = Identity::exact("https://github.com/login/oauth", "mitr@redhat.com").unwrap();
        assert!(matches!(
            l.verify(&digest(IMG_KEY_ONLY), Signer::Identity(&id), &root, &Options::default()),
            Err(LayerError::WrongDigest { .. })
        ));
        let mut t = l.clone();
        t.payload[20] ^= 1;
        assert!(t
            .verify(&digest(IMG), Signer::Identity(&id), &root, &Options::default())
            .is_err());
        // A keyless signature is never accepted by key, even with the certificate's own key.
        assert!(l
            .verify(
                &digest(IMG),
                Signer::Key(&key("cosign2.pub")),
                &root,
                &Options::default()
            )
            .is_err());
    }

    #[test]
    fn keyless_without_tlog_proof_is_rejected_since_the_certificate_expired() {
        let root = TrustedRoot::public_good();
        let id = Identity::exact("https://github.com/login/oauth", "mitr@redhat.com").unwrap();
        let mut l = layer("dir-img-cosign-fulcio-rekor-valid");
        l.annotations.remove(ANNOTATION_BUNDLE);
        let opts = Options {
            tlog: TlogPolicy::Optional,
            ..Options::default()
        };
        let e = l.verify(&digest(IMG), Signer::Identity(&id), &root, &opts).unwrap_err();
        assert!(e.to_string().contains("no verified timestamp"), "{e}");
    }

    #[test]
    fn key_rekor_fixture_passes_with_cosign2_pub_only() {
        let root = TrustedRoot::public_good();
        let l = layer("dir-img-cosign-key-rekor-valid");
        let v = l
            .verify(
                &digest(IMG),
                Signer::Key(&key("cosign2.pub")),
                &root,
                &Options::default(),
            )
            .unwrap();
        assert_eq!(v.tlog_index, Some(11608800));
        assert!(l
            .verify(
                &digest(IMG),
                Signer::Key(&key("cosign.pub")),
                &root,
                &Options::default()
            )
            .is_err());
    }

    #[test]
    fn key_only_fixture_needs_tlog_off_or_optional() {
        let root = TrustedRoot::public_good();
        let l = layer("dir-img-cosign-valid");
        let k = key("cosign.pub");
        let required = l
            .verify(&digest(IMG_KEY_ONLY), Signer::Key(&k), &root, &Options::default())
            .unwrap_err();
        assert!(
            required.to_string().contains("transparency log entry is required"),
            "{required}"
        );
        for tlog in [TlogPolicy::Optional, TlogPolicy::Off] {
            l.verify(
                &digest(IMG_KEY_ONLY),
                Signer::Key(&k),
                &root,
                &Options {
                    tlog,
                    ..Options::default()
                },
            )
            .unwrap();
        }
        let opts = Options {
            tlog: TlogPolicy::Off,
            ..Options::default()
        };
        assert!(l
            .verify(&digest(IMG_KEY_ONLY), Signer::Key(&key("cosign2.pub")), &root, &opts)
            .is_err());
    }

    #[test]
    fn junk_annotations_are_clear_errors() {
        let mut l = layer("dir-img-cosign-key-rekor-valid");
        l.annotations.insert(ANNOTATION_BUNDLE.into(), "{not json".into());
        assert!(matches!(l.to_bundle(), Err(LayerError::Malformed(_))));
        let mut l = layer("dir-img-cosign-key-rekor-valid");
        l.annotations.insert(ANNOTATION_SIGNATURE.into(), "!!!".into());
        assert!(matches!(l.to_bundle(), Err(LayerError::Malformed(_))));
        let mut l = layer("dir-img-cosign-fulcio-rekor-valid");
        l.annotations.insert(
            ANNOTATION_CERTIFICATE.into(),
            "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n".into(),
        );
        assert!(matches!(l.to_bundle(), Err(LayerError::Malformed(_))));
    }
}

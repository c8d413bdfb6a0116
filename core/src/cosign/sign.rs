//! Building what `kcache sign` pushes, byte-compatible with cosign:
//!
//! - v2: a simple-signing payload blob, cosign's config blob, and the `sha256-<hex>.sig`
//!   manifest (existing signature layers are kept, as cosign appends).
//! - v3 (key-based, no transparency log, for air-gapped use), what `cosign sign` 3.x writes: a
//!   v0.3 bundle holding a DSSE envelope over an in-toto Statement v1 whose subject is the image
//!   digest and whose predicate type is `https://sigstore.dev/cosign/sign/v1`, as an OCI 1.1
//!   referrer manifest (`subject` = the image, `artifactType` = the bundle media type, cosign's
//!   `dev.sigstore.bundle.*` annotations), plus the referrers-tag index for registries without
//!   the referrers API. (cosign 3 refuses a message-signature bundle on an image: "bundle does
//!   not contain a DSSE envelope".)

use base64::Engine as _;
use serde_json::{json, Value};

use crate::{digest::Digest, signing::PrivateKey};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

use crate::registry::artifact::{image_manifest, push_image};
pub use crate::registry::artifact::{Blob, OCI_INDEX, OCI_MANIFEST};

/// cosign's payload layer media type.
pub const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// The OCI empty descriptor's media type and content.
pub const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";

/// Everything a v2 signature push needs.
#[derive(Debug, Clone)]
pub struct V2Signature {
    /// The payload blob.
    pub payload: Blob,
    /// cosign's config blob.
    pub config: Blob,
    /// The `.sig` manifest.
    pub manifest: Blob,
}

/// Signs `image` (named `reference`) cosign-v2 style. `existing` is the current `.sig`
/// manifest, if any: its layers are kept and the new one appended (unless identical).
pub fn sign_v2(
    key: &PrivateKey,
    reference: &str,
    image: &Digest,
    existing: Option<&[u8]>,
) -> Result<V2Signature, String> {
    let payload = Blob::new(super::v2::simple_signing_payload(reference, image));
    let sig = B64.encode(key.sign(&payload.bytes));
    let mut layer = payload.descriptor(SIMPLE_SIGNING);
    layer["annotations"] = json!({ super::v2::ANNOTATION_SIGNATURE: sig });

    let mut layers: Vec<Value> = match existing {
        Some(bytes) => serde_json::from_slice::<Value>(bytes)
            .map_err(|e| format!("existing signature manifest is not JSON: {e}"))?
            .get("layers")
            .and_then(|l| l.as_array().cloned())
            .unwrap_or_default(),
        None => Vec::new(),
    };
    layers.retain(|l| l.get("digest").and_then(|d| d.as_str()) != Some(payload.digest.as_str()) || l != &layer);
    layers.push(layer);

    let diff_ids: Vec<Value> = layers.iter().filter_map(|l| l.get("digest").cloned()).collect();
    let config = Blob::new(
        json!({
            "architecture": "", "created": "0001-01-01T00:00:00Z",
            "history": [{"created": "0001-01-01T00:00:00Z"}],
            "os": "", "rootfs": {"type": "layers", "diff_ids": diff_ids}, "config": {}
        })
        .to_string()
        .into_bytes(),
    );
    let manifest = image_manifest(
        config.descriptor(crate::registry::artifact::OCI_CONFIG),
        layers,
        Default::default(),
    );
    Ok(V2Signature {
        payload,
        config,
        manifest,
    })
}

/// Predicate type of the statement `cosign sign` 3.x signs.
pub const COSIGN_SIGN_PREDICATE: &str = "https://sigstore.dev/cosign/sign/v1";
/// in-toto Statement v1 `_type`.
pub const IN_TOTO_STATEMENT_V1: &str = "https://in-toto.io/Statement/v1";
/// Manifest annotation: what the bundle holds.
pub const ANNOTATION_BUNDLE_CONTENT: &str = "dev.sigstore.bundle.content";
/// Manifest annotation: the DSSE statement's predicate type.
pub const ANNOTATION_PREDICATE_TYPE: &str = "dev.sigstore.bundle.predicateType";

/// Everything a v3 bundle push needs.
#[derive(Debug, Clone)]
pub struct V3Signature {
    /// The bundle JSON blob.
    pub bundle: Blob,
    /// The empty config blob (`{}`).
    pub config: Blob,
    /// The referrer manifest (pushed by digest).
    pub manifest: Blob,
}

/// The in-toto statement `cosign sign` 3.x signs for `image`.
pub fn cosign_sign_statement(image: &Digest) -> Vec<u8> {
    json!({
        "_type": IN_TOTO_STATEMENT_V1,
        "subject": [{"digest": {image.algorithm(): image.hex()}}],
        "predicateType": COSIGN_SIGN_PREDICATE,
        "predicate": {}
    })
    .to_string()
    .into_bytes()
}

/// Signs `image` (whose manifest has `media_type` and `size`) as cosign 3 does: a v0.3 bundle
/// with a DSSE envelope over [`cosign_sign_statement`], as a referrer manifest. `created` is
/// the `org.opencontainers.image.created` annotation (RFC 3339), as cosign writes it.
pub fn sign_v3(
    key: &PrivateKey,
    image: &Digest,
    media_type: &str,
    size: u64,
    created: &str,
) -> Result<V3Signature, String> {
    if image.algorithm() != "sha256" {
        return Err(format!("cannot sign {image}: only sha256 digests"));
    }
    let statement = cosign_sign_statement(image);
    let payload_type = crate::sigstore::verify::IN_TOTO_PAYLOAD_TYPE;
    let signature = key.sign(&crate::sigstore::bundle::pae(payload_type, &statement));
    use sha2::Digest as _;
    let hint = B64.encode(sha2::Sha256::digest(key.public_key().to_spki_der()));
    let bundle = json!({
        "mediaType": super::v3::BUNDLE_ARTIFACT_TYPE,
        "verificationMaterial": {"publicKey": {"hint": hint}},
        "dsseEnvelope": {
            "payload": B64.encode(&statement),
            "payloadType": payload_type,
            "signatures": [{"sig": B64.encode(signature)}]
        }
    });
    let bundle = Blob::new(bundle.to_string().into_bytes());
    let config = Blob::new(b"{}".to_vec());
    let extra = json!({
        "artifactType": super::v3::BUNDLE_ARTIFACT_TYPE,
        "subject": {"mediaType": media_type, "digest": image.as_str(), "size": size},
        "annotations": {
            ANNOTATION_BUNDLE_CONTENT: "dsse-envelope",
            ANNOTATION_PREDICATE_TYPE: COSIGN_SIGN_PREDICATE,
            "org.opencontainers.image.created": created
        }
    });
    let Value::Object(extra) = extra else {
        return Err("the referrer's fields are an object".into());
    };
    let manifest = image_manifest(
        config.descriptor(OCI_EMPTY),
        vec![bundle.descriptor(super::v3::BUNDLE_ARTIFACT_TYPE)],
        extra,
    );
    Ok(V3Signature {
        bundle,
        config,
        manifest,
    })
}

/// The referrers-tag index (OCI 1.1 fallback) with `referrer` added to `existing`. Its
/// descriptor carries the referrer manifest's own `artifactType` and annotations, as the OCI
/// distribution spec asks (cosign 3.1 writes the config media type there instead; verifiers,
/// kcache and cosign alike, look at the manifest itself).
pub fn referrers_tag_index(existing: Option<&[u8]>, referrer: &Blob) -> Result<Vec<u8>, String> {
    let mut manifests: Vec<Value> = match existing {
        Some(b) => serde_json::from_slice::<Value>(b)
            .map_err(|e| format!("existing referrers index is not JSON: {e}"))?
            .get("manifests")
            .and_then(|m| m.as_array().cloned())
            .unwrap_or_default(),
        None => Vec::new(),
    };
    let m: Value =
        serde_json::from_slice(&referrer.bytes).map_err(|e| format!("referrer manifest is not JSON: {e}"))?;
    manifests.retain(|m| m.get("digest").and_then(|d| d.as_str()) != Some(referrer.digest.as_str()));
    let mut d = referrer.descriptor(OCI_MANIFEST);
    if let Some(t) = m.get("artifactType") {
        d["artifactType"] = t.clone();
    }
    if let Some(a) = m.get("annotations") {
        d["annotations"] = a.clone();
    }
    manifests.push(d);
    Ok(
        json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests})
            .to_string()
            .into_bytes(),
    )
}

/// What [`sign_and_push`] pushed.
#[derive(Debug, Clone)]
pub struct Pushed {
    /// The digest signed.
    pub digest: Digest,
    /// The `.sig` tag written.
    pub sig_tag: String,
    /// The v3 referrer manifest, when asked for.
    pub referrer: Option<Digest>,
}

/// Why signing and pushing failed.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// Registry failure.
    #[error(transparent)]
    Registry(#[from] crate::registry::RegistryError),
    /// Building the signature failed.
    #[error("{0}")]
    Build(String),
}

async fn optional(
    r: Result<crate::registry::Manifest, crate::registry::RegistryError>,
) -> Result<Option<Vec<u8>>, PushError> {
    match r {
        Ok(m) => Ok(Some(m.bytes)),
        Err(crate::registry::RegistryError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Signs the digest `r` resolves to and pushes a cosign v2 signature (and, with `v3`, a bundle
/// referrer plus the referrers-tag index where the registry lacks the API).
pub async fn sign_and_push(
    client: &crate::registry::Client,
    key: &PrivateKey,
    r: &crate::registry::Reference,
    v3: bool,
) -> Result<Pushed, PushError> {
    let image = client.manifest(r, &r.reference()).await?;
    let digest = image.digest.clone();
    let sig_tag = format!("{}.sig", digest.tag_prefix());
    let existing = optional(client.manifest(r, &sig_tag).await).await?;
    let s = sign_v2(key, &r.name(), &digest, existing.as_deref()).map_err(PushError::Build)?;
    push_image(client, r, &sig_tag, &[&s.payload, &s.config], &s.manifest).await?;
    let mut referrer = None;
    if v3 {
        let media_type = if image.media_type.is_empty() {
            OCI_MANIFEST.to_string()
        } else {
            image.media_type.clone()
        };
        let created = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let b = sign_v3(key, &digest, &media_type, image.bytes.len() as u64, &created).map_err(PushError::Build)?;
        push_image(
            client,
            r,
            b.manifest.digest.as_str(),
            &[&b.bundle, &b.config],
            &b.manifest,
        )
        .await?;
        if client.referrers(r, &digest, None).await?.is_none() {
            let tag = digest.tag_prefix();
            let existing = optional(client.manifest(r, &tag).await).await?;
            let index = referrers_tag_index(existing.as_deref(), &b.manifest).map_err(PushError::Build)?;
            client.push_manifest(r, &tag, OCI_INDEX, &index).await?;
        }
        referrer = Some(b.manifest.digest.clone());
    }
    Ok(Pushed {
        digest,
        sig_tag,
        referrer,
    })
}

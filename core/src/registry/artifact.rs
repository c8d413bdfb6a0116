//! Building and pushing OCI image manifests (the one place that does): cosign signatures
//! (`kcache sign`, [`crate::cosign::sign`]) and cache images (`kcache cache build --push`).

use serde_json::{json, Map, Value};

use super::{Client, Reference, RegistryError};
use crate::digest::Digest;

/// OCI image manifest media type.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index media type.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image config media type.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";

/// A blob (or manifest) to push, with its digest.
#[derive(Debug, Clone)]
pub struct Blob {
    /// Bytes.
    pub bytes: Vec<u8>,
    /// Their sha256.
    pub digest: Digest,
}

impl Blob {
    /// Wraps bytes.
    pub fn new(bytes: Vec<u8>) -> Self {
        Self {
            digest: Digest::sha256_of(&bytes),
            bytes,
        }
    }

    /// Its OCI descriptor with `media_type`.
    pub fn descriptor(&self, media_type: &str) -> Value {
        json!({"mediaType": media_type, "digest": self.digest.as_str(), "size": self.bytes.len()})
    }
}

/// An OCI image manifest: `config` and `layers` are descriptors (see [`Blob::descriptor`]);
/// `extra` adds top-level fields (`artifactType`, `subject`, `annotations`).
pub fn image_manifest(config: Value, layers: Vec<Value>, extra: Map<String, Value>) -> Blob {
    let mut m = Map::new();
    m.insert("schemaVersion".into(), 2.into());
    m.insert("mediaType".into(), OCI_MANIFEST.into());
    m.insert("config".into(), config);
    m.insert("layers".into(), Value::Array(layers));
    m.extend(extra);
    Blob::new(Value::Object(m).to_string().into_bytes())
}

/// Pushes `blobs`, then `manifest` (an OCI image manifest) under `reference` (a tag, or its
/// own digest). Returns the manifest digest the registry stored.
pub async fn push_image(
    client: &Client,
    r: &Reference,
    reference: &str,
    blobs: &[&Blob],
    manifest: &Blob,
) -> Result<Digest, RegistryError> {
    for b in blobs {
        client.push_blob(r, &b.bytes).await?;
    }
    client.push_manifest(r, reference, OCI_MANIFEST, &manifest.bytes).await
}

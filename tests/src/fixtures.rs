//! The real cosign / Sigstore data in tests/fixtures, placed into a test registry the way
//! cosign would have pushed it.

use std::path::PathBuf;

use kcache_core::{
    cosign::{sign::OCI_MANIFEST, v2::SignatureLayer},
    digest::Digest,
    registry::Reference,
};
use serde_json::{json, Value};

use crate::TestRegistry;

/// `tests/fixtures` (beside the checkout), or `$KCACHE_FIXTURES`.
pub fn dir() -> PathBuf {
    std::env::var_os("KCACHE_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures"))
}

/// Reads a fixture file.
pub fn read(rel: &str) -> Vec<u8> {
    let p = dir().join(rel);
    std::fs::read(&p).unwrap_or_else(|e| {
        panic!(
            "fixture {} missing ({e}); tests/fixtures is part of the checkout",
            p.display()
        )
    })
}

/// Pushes a byte-exact manifest whose blobs we lack: placeholder blobs go straight into the
/// registry's storage (a parsable JSON config, since distribution parses docker-v2 configs).
/// Tags it with `tag` and returns its digest.
pub async fn push_exact_manifest(reg: &TestRegistry, repo: &str, tag: &str, manifest: &[u8]) -> Digest {
    let v: Value = serde_json::from_slice(manifest).expect("fixture manifest is JSON");
    if let Some(c) = v.get("config").and_then(|c| c.get("digest")).and_then(|d| d.as_str()) {
        reg.put_placeholder_blob(
            repo,
            &Digest::parse(c).expect("config digest"),
            br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#,
        );
    }
    for l in v.get("layers").and_then(|l| l.as_array()).into_iter().flatten() {
        let d = Digest::parse(l["digest"].as_str().expect("layer digest")).expect("layer digest");
        reg.put_placeholder_blob(repo, &d, b"placeholder layer");
    }
    let media_type = v
        .get("mediaType")
        .and_then(|m| m.as_str())
        .unwrap_or(OCI_MANIFEST)
        .to_string();
    let r = reg.reference(&format!("{repo}:{tag}"));
    reg.client()
        .push_manifest(&r, tag, &media_type, manifest)
        .await
        .expect("push fixture manifest")
}

/// Pushes cosign v2 signature layers as `sha256-<hex>.sig` for `image` in `repo`.
pub async fn push_v2_signature(reg: &TestRegistry, repo: &str, image: &Digest, layers: &[SignatureLayer]) {
    let client = reg.client();
    let r = reg.reference(repo);
    let mut descs = Vec::new();
    for l in layers {
        let d = client.push_blob(&r, &l.payload).await.expect("push payload");
        descs.push(json!({
            "mediaType": "application/vnd.dev.cosign.simplesigning.v1+json",
            "digest": d.as_str(), "size": l.payload.len(), "annotations": l.annotations,
        }));
    }
    let config = br#"{"architecture":"","os":"","rootfs":{"type":"layers","diff_ids":[]},"config":{}}"#;
    let cd = client.push_blob(&r, config).await.expect("push config");
    let manifest = json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd.as_str(), "size": config.len()},
        "layers": descs,
    });
    let tag = format!("{}.sig", image.tag_prefix());
    client
        .push_manifest(&r, &tag, OCI_MANIFEST, manifest.to_string().as_bytes())
        .await
        .expect("push .sig");
}

/// Attaches a Sigstore bundle to `image` as an OCI 1.1 referrer through the referrers tag
/// (`sha256-<hex>`), as cosign does on registries without the referrers API.
pub async fn push_v3_bundle(
    reg: &TestRegistry,
    repo: &str,
    image: &Digest,
    image_media_type: &str,
    image_size: usize,
    bundle: &[u8],
) -> Digest {
    use kcache_core::cosign::{sign, v3::BUNDLE_ARTIFACT_TYPE};
    let client = reg.client();
    let r: Reference = reg.reference(repo);
    let bd = client.push_blob(&r, bundle).await.expect("push bundle");
    let cd = client.push_blob(&r, b"{}").await.expect("push empty config");
    let manifest = json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": BUNDLE_ARTIFACT_TYPE,
        "config": {"mediaType": sign::OCI_EMPTY, "digest": cd.as_str(), "size": 2},
        "layers": [{"mediaType": BUNDLE_ARTIFACT_TYPE, "digest": bd.as_str(), "size": bundle.len()}],
        "subject": {"mediaType": image_media_type, "digest": image.as_str(), "size": image_size},
    })
    .to_string()
    .into_bytes();
    let md = Digest::sha256_of(&manifest);
    client
        .push_manifest(&r, md.as_str(), OCI_MANIFEST, &manifest)
        .await
        .expect("push referrer");
    let blob = sign::Blob {
        bytes: manifest,
        digest: md.clone(),
    };
    let existing = client.manifest(&r, &image.tag_prefix()).await.ok().map(|m| m.bytes);
    let index = sign::referrers_tag_index(existing.as_deref(), &blob).expect("index");
    client
        .push_manifest(&r, &image.tag_prefix(), sign::OCI_INDEX, &index)
        .await
        .expect("push referrers tag");
    md
}

/// A signature layer from containers/image's on-disk form.
pub fn v2_layer(dir_name: &str) -> SignatureLayer {
    kcache_core::cosign::v2::from_containers_image_file(&read(&format!(
        "cosign-v2-containers-image/{dir_name}/signature-1"
    )))
    .expect("fixture signature parses")
}

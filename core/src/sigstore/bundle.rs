//! Sigstore bundles (protobuf-specs `Bundle`, JSON form) versions 0.1 to 0.3, parsed into a
//! small model. Parsing checks shape only (base64, required fields per version); the
//! cryptography is in [`super::verify`].
//!
//! cosign v2 `.sig` layers are converted into the same model (see `crate::cosign`), so there is
//! one verification path for every signature format.

use base64::Engine as _;
use serde::Deserialize;

use super::verify::{BundleErrorKind, VerifyError};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Bundle format version, from the media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum BundleVersion {
    /// `application/vnd.dev.sigstore.bundle+json;version=0.1`: SET required, proof optional.
    V0_1,
    /// `...;version=0.2`: inclusion proof required.
    V0_2,
    /// `...;version=0.3` or `application/vnd.dev.sigstore.bundle.v0.3+json`.
    V0_3,
}

/// The signing key material carried by the bundle.
#[derive(Debug, Clone)]
pub enum Material {
    /// A leaf certificate (DER); chain certificates beyond the leaf are never trusted.
    Certificate(Vec<u8>),
    /// A key the verifier supplies out of band (the bundle only holds a hint).
    PublicKey {
        /// Hint, informational only.
        hint: Option<String>,
    },
}

/// An RFC 6962 inclusion proof with its signed checkpoint.
#[derive(Debug, Clone)]
pub struct InclusionProof {
    /// Leaf index in the tree.
    pub log_index: u64,
    /// Root hash the proof leads to.
    pub root_hash: Vec<u8>,
    /// Tree size.
    pub tree_size: u64,
    /// Sibling hashes, leaf to root.
    pub hashes: Vec<Vec<u8>>,
    /// The signed note (checkpoint) text.
    pub checkpoint: Option<String>,
}

/// One transparency log entry.
#[derive(Debug, Clone)]
pub struct TlogEntry {
    /// Global log index.
    pub log_index: u64,
    /// The log's key ID.
    pub log_id: Vec<u8>,
    /// Entry kind, e.g. `hashedrekord`.
    pub kind: String,
    /// Entry version, e.g. `0.0.1`.
    pub version: String,
    /// Rekor v1 integrated time (unix seconds); absent or 0 for Rekor v2.
    pub integrated_time: Option<i64>,
    /// Signed entry timestamp (Rekor v1 inclusion promise).
    pub set: Option<Vec<u8>>,
    /// Inclusion proof.
    pub proof: Option<InclusionProof>,
    /// The canonicalized entry body.
    pub body: Vec<u8>,
}

/// A DSSE envelope.
#[derive(Debug, Clone)]
pub struct Envelope {
    /// Raw payload bytes.
    pub payload: Vec<u8>,
    /// Payload type.
    pub payload_type: String,
    /// Signatures (raw bytes).
    pub signatures: Vec<Vec<u8>>,
}

/// What was signed.
#[derive(Debug, Clone)]
pub enum Content {
    /// A signature over an artifact (or over its digest).
    MessageSignature {
        /// The claimed artifact digest (sha256), if present.
        digest: Option<Vec<u8>>,
        /// Signature bytes.
        signature: Vec<u8>,
    },
    /// A DSSE envelope (in-toto statement).
    Dsse(Envelope),
}

impl Content {
    /// The signature bytes (the first DSSE signature), which timestamps and log entries cover.
    pub fn signature(&self) -> &[u8] {
        match self {
            Self::MessageSignature { signature, .. } => signature,
            Self::Dsse(e) => e.signatures.first().map(Vec::as_slice).unwrap_or_default(),
        }
    }
}

/// A parsed bundle.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// Format version.
    pub version: BundleVersion,
    /// Key material.
    pub material: Material,
    /// Log entries.
    pub tlog_entries: Vec<TlogEntry>,
    /// RFC 3161 signed timestamps (DER `TimeStampToken`s).
    pub timestamps: Vec<Vec<u8>>,
    /// Signed content.
    pub content: Content,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawBundle {
    media_type: String,
    verification_material: RawMaterial,
    #[serde(default)]
    message_signature: Option<RawMessageSignature>,
    #[serde(default)]
    dsse_envelope: Option<RawEnvelope>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawMaterial {
    #[serde(default)]
    certificate: Option<RawBytes>,
    #[serde(default)]
    x509_certificate_chain: Option<RawChain>,
    #[serde(default)]
    public_key: Option<RawHint>,
    #[serde(default)]
    tlog_entries: Vec<RawTlogEntry>,
    #[serde(default)]
    timestamp_verification_data: Option<RawTsData>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawBytes {
    raw_bytes: String,
}

#[derive(Deserialize)]
struct RawChain {
    #[serde(default)]
    certificates: Vec<RawBytes>,
}

#[derive(Deserialize)]
struct RawHint {
    #[serde(default)]
    hint: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawTsData {
    #[serde(default)]
    rfc3161_timestamps: Vec<RawSignedTimestamp>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawSignedTimestamp {
    signed_timestamp: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawTlogEntry {
    log_index: serde_json::Value,
    log_id: RawLogId,
    kind_version: RawKindVersion,
    #[serde(default)]
    integrated_time: Option<serde_json::Value>,
    #[serde(default)]
    inclusion_promise: Option<RawPromise>,
    #[serde(default)]
    inclusion_proof: Option<RawProof>,
    canonicalized_body: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawLogId {
    key_id: String,
}

#[derive(Deserialize)]
struct RawKindVersion {
    kind: String,
    version: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawPromise {
    signed_entry_timestamp: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawProof {
    log_index: serde_json::Value,
    root_hash: String,
    tree_size: serde_json::Value,
    #[serde(default)]
    hashes: Vec<String>,
    #[serde(default)]
    checkpoint: Option<RawCheckpoint>,
}

#[derive(Deserialize)]
struct RawCheckpoint {
    envelope: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawMessageSignature {
    #[serde(default)]
    message_digest: Option<RawDigest>,
    signature: String,
}

#[derive(Deserialize)]
struct RawDigest {
    algorithm: String,
    digest: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawEnvelope {
    payload: String,
    payload_type: String,
    #[serde(default)]
    signatures: Vec<RawDsseSig>,
}

#[derive(Deserialize)]
struct RawDsseSig {
    sig: String,
}

fn bad(msg: impl Into<String>) -> VerifyError {
    BundleErrorKind::Malformed(msg.into()).into()
}

fn b64(field: &str, s: &str) -> Result<Vec<u8>, VerifyError> {
    B64.decode(s).map_err(|e| bad(format!("{field}: invalid base64: {e}")))
}

/// protobuf JSON writes int64 as a string; accept a string or a number, reject negatives.
fn uint(field: &str, v: &serde_json::Value) -> Result<u64, VerifyError> {
    let parsed = match v {
        serde_json::Value::String(s) => s.parse::<i128>().ok(),
        serde_json::Value::Number(n) => n.as_i64().map(i128::from),
        _ => None,
    };
    match parsed {
        Some(n) if n >= 0 && n <= i128::from(i64::MAX) => Ok(n as u64),
        Some(n) => Err(bad(format!("{field}: {n} is out of range"))),
        None => Err(bad(format!("{field}: not an integer"))),
    }
}

/// Parses a media type into a version; unknown versions are errors.
pub fn version_of(media_type: &str) -> Result<BundleVersion, VerifyError> {
    match media_type {
        "application/vnd.dev.sigstore.bundle+json;version=0.1" => Ok(BundleVersion::V0_1),
        "application/vnd.dev.sigstore.bundle+json;version=0.2" => Ok(BundleVersion::V0_2),
        "application/vnd.dev.sigstore.bundle+json;version=0.3" | "application/vnd.dev.sigstore.bundle.v0.3+json" => {
            Ok(BundleVersion::V0_3)
        }
        other => Err(bad(format!("unsupported bundle media type {other:?}"))),
    }
}

impl Bundle {
    /// Parses bundle JSON.
    pub fn from_json(bytes: &[u8]) -> Result<Self, VerifyError> {
        let de = &mut serde_json::Deserializer::from_slice(bytes);
        let raw: RawBundle = serde_path_to_error::deserialize(de)
            .map_err(|e| bad(format!("invalid JSON at {}: {}", e.path(), e.inner())))?;
        let version = version_of(&raw.media_type)?;
        let vm = raw.verification_material;

        let material = match (vm.certificate, vm.x509_certificate_chain, vm.public_key) {
            (Some(c), None, None) => Material::Certificate(b64("certificate", &c.raw_bytes)?),
            (None, Some(chain), None) => {
                let leaf = chain
                    .certificates
                    .first()
                    .ok_or_else(|| bad("x509CertificateChain is empty"))?;
                Material::Certificate(b64("x509CertificateChain[0]", &leaf.raw_bytes)?)
            }
            (None, None, Some(k)) => Material::PublicKey { hint: k.hint },
            (None, None, None) => return Err(bad("verificationMaterial has no certificate or public key")),
            _ => return Err(bad("verificationMaterial has more than one kind of key material")),
        };

        let mut tlog_entries = Vec::with_capacity(vm.tlog_entries.len());
        for (i, e) in vm.tlog_entries.iter().enumerate() {
            let f = |s: &str| format!("tlogEntries[{i}].{s}");
            let proof = match &e.inclusion_proof {
                Some(p) => Some(InclusionProof {
                    log_index: uint(&f("inclusionProof.logIndex"), &p.log_index)?,
                    root_hash: b64(&f("inclusionProof.rootHash"), &p.root_hash)?,
                    tree_size: uint(&f("inclusionProof.treeSize"), &p.tree_size)?,
                    hashes: p
                        .hashes
                        .iter()
                        .map(|h| b64(&f("inclusionProof.hashes"), h))
                        .collect::<Result<_, _>>()?,
                    checkpoint: p.checkpoint.as_ref().map(|c| c.envelope.clone()),
                }),
                None => None,
            };
            let integrated_time = match &e.integrated_time {
                Some(v) => match uint(&f("integratedTime"), v)? {
                    0 => None,
                    t => Some(t as i64),
                },
                None => None,
            };
            tlog_entries.push(TlogEntry {
                log_index: uint(&f("logIndex"), &e.log_index)?,
                log_id: b64(&f("logId.keyId"), &e.log_id.key_id)?,
                kind: e.kind_version.kind.clone(),
                version: e.kind_version.version.clone(),
                integrated_time,
                set: e
                    .inclusion_promise
                    .as_ref()
                    .map(|p| b64(&f("inclusionPromise.signedEntryTimestamp"), &p.signed_entry_timestamp))
                    .transpose()?,
                proof,
                body: b64(&f("canonicalizedBody"), &e.canonicalized_body)?,
            });
        }
        if tlog_entries.is_empty() && version == BundleVersion::V0_1 {
            return Err(bad("a v0.1 bundle needs a transparency log entry"));
        }
        for (i, e) in tlog_entries.iter().enumerate() {
            if version == BundleVersion::V0_1 && e.set.is_none() {
                return Err(bad(format!(
                    "tlogEntries[{i}]: a v0.1 bundle needs an inclusion promise"
                )));
            }
            if version >= BundleVersion::V0_2 && e.proof.is_none() {
                return Err(bad(format!("tlogEntries[{i}]: bundle v0.2+ needs an inclusion proof")));
            }
        }

        let timestamps = vm
            .timestamp_verification_data
            .map(|t| {
                t.rfc3161_timestamps
                    .iter()
                    .enumerate()
                    .map(|(i, ts)| b64(&format!("rfc3161Timestamps[{i}]"), &ts.signed_timestamp))
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()?
            .unwrap_or_default();

        let content = match (raw.message_signature, raw.dsse_envelope) {
            (Some(ms), None) => {
                let digest = match ms.message_digest {
                    Some(d) if d.algorithm == "SHA2_256" => Some(b64("messageDigest.digest", &d.digest)?),
                    Some(d) => return Err(bad(format!("unsupported message digest algorithm {:?}", d.algorithm))),
                    None => None,
                };
                Content::MessageSignature {
                    digest,
                    signature: b64("messageSignature.signature", &ms.signature)?,
                }
            }
            (None, Some(env)) => {
                if env.signatures.len() != 1 {
                    return Err(bad(format!(
                        "DSSE envelope must carry exactly one signature, has {}",
                        env.signatures.len()
                    )));
                }
                Content::Dsse(Envelope {
                    payload: b64("dsseEnvelope.payload", &env.payload)?,
                    payload_type: env.payload_type,
                    signatures: env
                        .signatures
                        .iter()
                        .map(|s| b64("dsseEnvelope.signatures.sig", &s.sig))
                        .collect::<Result<_, _>>()?,
                })
            }
            (None, None) => return Err(bad("bundle has neither messageSignature nor dsseEnvelope")),
            (Some(_), Some(_)) => return Err(bad("bundle has both messageSignature and dsseEnvelope")),
        };
        if content.signature().is_empty() {
            return Err(bad("empty signature"));
        }
        Ok(Self {
            version,
            material,
            tlog_entries,
            timestamps,
            content,
        })
    }
}

/// DSSE pre-authentication encoding: what a DSSE signature actually covers.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + payload_type.len() + 32);
    out.extend_from_slice(b"DSSEv1 ");
    out.extend_from_slice(payload_type.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload_type.as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload);
    out
}

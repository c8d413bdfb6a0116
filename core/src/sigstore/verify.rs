//! The verification pipeline for one bundle. Steps, in order:
//!
//! 1. Key material: the certificate leaf (keyless) or the caller's key. A bundle's own chain
//!    certificates are never trusted; a key bundle is never accepted for an identity and vice versa.
//! 2. Signature over the artifact (message signature, or DSSE PAE with a matching in-toto subject).
//! 3. Transparency log entries: the body must record this very signature, key and content; SET
//!    (Rekor v1) and inclusion proof + signed checkpoint against the trusted root's log keys;
//!    integrated time not in the future and inside the log key's validity.
//! 4. RFC 3161 timestamps against the trusted root's timestamp authorities.
//! 5. Keyless only: the leaf must chain to a trusted Fulcio CA at *every* verified time (SET
//!    integrated times and TSA times; at least one is required, since the certificate lives ten
//!    minutes), carry a valid embedded SCT, and bind an identity that matches the policy. The
//!    identity check happens here, on the same certificate whose key verified step 2, so a
//!    signature can never be paired with another certificate's identity.

use chrono::{DateTime, Utc};
use sha2::{Digest as _, Sha256};

use super::{
    bundle::{pae, Bundle, Content, Material},
    cert::{self, ParsedCert},
    identity::Identity,
    tlog,
    trust_root::TrustedRoot,
    tsa,
};
use crate::keys::{HashAlgorithm, PublicKey};

/// Why a bundle did not verify, by stage ([`BundleErrorKind`], [`CertificateErrorKind`],
/// [`TlogErrorKind`], [`TimestampErrorKind`], [`SignatureErrorKind`], [`MaterialErrorKind`],
/// and the identity policy), as sigstore-rs's `VerificationError` rolls up its kinds.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum VerifyError {
    /// The bundle is malformed or of an unsupported shape.
    #[error("malformed bundle: {0}")]
    Bundle(#[from] BundleErrorKind),
    /// The signing certificate is invalid or untrusted.
    #[error("certificate: {0}")]
    Certificate(#[from] CertificateErrorKind),
    /// A transparency log proof failed, or one was required and missing.
    #[error("transparency log: {0}")]
    Tlog(#[from] TlogErrorKind),
    /// A signed timestamp failed.
    #[error("timestamp: {0}")]
    Timestamp(#[from] TimestampErrorKind),
    /// The signature does not verify over the artifact.
    #[error("signature: {0}")]
    Signature(#[from] SignatureErrorKind),
    /// The certificate's identity is not the one the policy requires.
    #[error("identity mismatch: want {expected}, certificate has {actual}")]
    Identity {
        /// What the policy wants.
        expected: String,
        /// What the certificate says.
        actual: String,
    },
    /// The key material does not fit what the caller asked for.
    #[error("key material: {0}")]
    Material(#[from] MaterialErrorKind),
}

/// Stage "bundle": parsing and shape.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum BundleErrorKind {
    /// Not a bundle of a supported version and shape (the detail says where).
    #[error("{0}")]
    Malformed(String),
    /// Larger than a bundle may be.
    #[error("bundle of {size} bytes exceeds {max}")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The artifact digest is not one a bundle can be checked against.
    #[error("cannot verify a bundle over {0}: only sha256 digests")]
    UnsupportedDigest(String),
}

/// Stage "certificate": the Fulcio leaf, its chain and its SCT.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum CertificateErrorKind {
    /// The certificate (or an extension) does not parse.
    #[error("{0}")]
    Malformed(String),
    /// It does not chain to a certificate authority trusted at the verified time.
    #[error("{0}")]
    Untrusted(String),
    /// No verified time (log entry or TSA) to check a short-lived certificate against.
    #[error("no verified timestamp (transparency log or TSA) to check the short-lived certificate against")]
    NoVerifiedTime,
    /// The embedded SCT is missing or invalid.
    #[error("{0}")]
    Sct(String),
}

/// Stage "transparency log": Rekor entries, SETs, inclusion proofs and checkpoints.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum TlogErrorKind {
    /// An entry, proof or body does not parse.
    #[error("{0}")]
    Malformed(String),
    /// The entry comes from a log the trusted root does not know (hex log ID).
    #[error("entry from a log the trusted root does not know ({0})")]
    UnknownLog(String),
    /// The logged body records another signature, key or content.
    #[error("{0}")]
    BodyMismatch(String),
    /// The signed entry timestamp does not verify.
    #[error("{0}")]
    Set(String),
    /// The inclusion proof does not lead to the stated root.
    #[error("{0}")]
    InclusionProof(String),
    /// The checkpoint is malformed or not signed by the log.
    #[error("{0}")]
    Checkpoint(String),
    /// The integrated time is in the future or outside the log key's validity.
    #[error("{0}")]
    IntegratedTime(String),
    /// Neither an inclusion promise nor an inclusion proof.
    #[error("entry has neither an inclusion promise nor an inclusion proof")]
    NoPromiseOrProof,
    /// An entry was required and there is none.
    #[error("a transparency log entry is required and the signature has none")]
    Required,
}

/// Stage "timestamp": RFC 3161 tokens.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum TimestampErrorKind {
    /// The token does not parse.
    #[error("{0}")]
    Malformed(String),
    /// No trusted timestamp authority signed it.
    #[error("{0}")]
    Untrusted(String),
    /// It timestamps something else than this signature.
    #[error("{0}")]
    Mismatch(String),
}

/// Stage "signature": the signature over the artifact and what it signs.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum SignatureErrorKind {
    /// The signature does not verify with the key (the key's own error).
    #[error("{0}")]
    DoesNotVerify(String),
    /// The bundle's message digest is another artifact's.
    #[error("the bundle's message digest is not the artifact's digest")]
    DigestMismatch,
    /// The DSSE payload is not an in-toto statement.
    #[error("DSSE payload type {0:?} is not an in-toto statement")]
    NotInToto(String),
    /// The statement does not parse.
    #[error("{0}")]
    Statement(String),
    /// No subject of the statement is the artifact (`sha256:<hex>`).
    #[error("no in-toto subject has digest {0}")]
    NoInTotoSubject(String),
}

/// Stage "key material": what the bundle carries against what the policy asks for.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum MaterialErrorKind {
    /// A certificate-signed bundle where a key was required.
    #[error("bundle is signed with a certificate, but a key was required")]
    CertificateForKey,
    /// A key-signed bundle where a keyless identity was required.
    #[error("bundle is signed with a bare key, but a keyless identity was required")]
    KeyForIdentity,
}

/// What the transparency log must provide.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlogPolicy {
    /// At least one verified entry is required.
    #[default]
    Required,
    /// Entries present are verified (and must pass); none is acceptable.
    Optional,
    /// Entries are ignored.
    Off,
}

/// Who must have signed.
#[derive(Debug, Clone, Copy)]
pub enum Signer<'a> {
    /// A known public key.
    Key(&'a PublicKey),
    /// A keyless identity with a Fulcio certificate.
    Identity(&'a Identity),
}

/// What was signed.
#[derive(Debug, Clone, Copy)]
pub enum Artifact<'a> {
    /// The artifact's bytes.
    Bytes(&'a [u8]),
    /// Only its sha256 digest.
    Sha256([u8; 32]),
}

impl Artifact<'_> {
    fn sha256(&self) -> [u8; 32] {
        match self {
            Self::Bytes(b) => Sha256::digest(b).into(),
            Self::Sha256(d) => *d,
        }
    }
}

/// Verification knobs.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Transparency log requirement.
    pub tlog: TlogPolicy,
    /// "Now", for integrated times in the future.
    pub now: DateTime<Utc>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            tlog: TlogPolicy::Required,
            now: Utc::now(),
        }
    }
}

/// Who signed, as proven (an API type: verdicts carry it).
pub use crate::api::SignerInfo;

/// A verified bundle.
#[derive(Debug, Clone)]
pub struct Verified {
    /// Who signed.
    pub signer: SignerInfo,
    /// Index of the first verified log entry.
    pub tlog_index: Option<u64>,
    /// Earliest verified time (SET integrated time or TSA time).
    pub time: Option<DateTime<Utc>>,
    /// The DSSE payload (in-toto statement), when the bundle held one.
    pub statement: Option<Vec<u8>>,
}

/// Verifies `bundle` over `artifact` for `signer` against `root`.
pub fn verify(
    bundle: &Bundle,
    artifact: Artifact<'_>,
    signer: Signer<'_>,
    root: &TrustedRoot,
    opts: &Options,
) -> Result<Verified, VerifyError> {
    // 1. Key material.
    let leaf = match (&bundle.material, signer) {
        (Material::Certificate(der), Signer::Identity(_)) => Some(ParsedCert::from_der(der)?),
        (Material::PublicKey { .. }, Signer::Key(_)) => None,
        (Material::Certificate(_), Signer::Key(_)) => return Err(MaterialErrorKind::CertificateForKey.into()),
        (Material::PublicKey { .. }, Signer::Identity(_)) => return Err(MaterialErrorKind::KeyForIdentity.into()),
    };
    let key = match (&leaf, signer) {
        (Some(l), _) => l.public_key()?,
        (None, Signer::Key(k)) => k.clone(),
        (None, Signer::Identity(_)) => return Err(MaterialErrorKind::KeyForIdentity.into()),
    };

    // 2. Signature over the artifact.
    let digest = artifact.sha256();
    let statement = verify_content(&bundle.content, artifact, &digest, &key)?;

    // 3. Transparency log.
    let mut times: Vec<DateTime<Utc>> = Vec::new();
    let mut tlog_index = None;
    if opts.tlog != TlogPolicy::Off {
        let expected = tlog::Expected {
            cert_der: leaf.as_ref().map(|l| l.der.as_slice()),
            key: &key,
            content: &bundle.content,
        };
        for entry in &bundle.tlog_entries {
            let log = root
                .tlog(&entry.log_id)
                .ok_or_else(|| TlogErrorKind::UnknownLog(hex::encode(&entry.log_id)))?;
            tlog::check_body(entry, &expected)?;
            if entry.set.is_none() && entry.proof.is_none() {
                return Err(TlogErrorKind::NoPromiseOrProof.into());
            }
            if let Some(t) = entry.integrated_time {
                let t = DateTime::from_timestamp(t, 0)
                    .ok_or_else(|| TlogErrorKind::IntegratedTime("integrated time out of range".into()))?;
                if t > opts.now {
                    return Err(TlogErrorKind::IntegratedTime(format!("integrated time {t} is in the future")).into());
                }
                if !log.valid_for.contains(t) {
                    return Err(TlogErrorKind::IntegratedTime(format!(
                        "log key {} was not valid at integrated time {t}",
                        log.base_url
                    ))
                    .into());
                }
                if entry.set.is_some() {
                    tlog::verify_set(entry, log)?;
                    times.push(t);
                }
            }
            if let Some(proof) = &entry.proof {
                tlog::verify_inclusion(entry, proof, log)?;
            }
            tlog_index.get_or_insert(entry.log_index);
        }
        if opts.tlog == TlogPolicy::Required && tlog_index.is_none() {
            return Err(TlogErrorKind::Required.into());
        }
    }

    // 4. Signed timestamps.
    for token in &bundle.timestamps {
        times.push(tsa::verify_timestamp(token, bundle.content.signature(), root)?);
    }

    // 5. Certificate, SCT and identity.
    let signer_info = match (leaf, signer) {
        (Some(leaf), Signer::Identity(want)) => {
            if times.is_empty() {
                return Err(CertificateErrorKind::NoVerifiedTime.into());
            }
            let ca = cert::verify_fulcio_leaf(&leaf, root, &times)?;
            let issuer_cert = ParsedCert::from_der(ca.chain.first().map(Vec::as_slice).unwrap_or_default())?;
            cert::verify_embedded_sct(&leaf, &issuer_cert, root)?;
            let id = cert::identity(&leaf)?;
            let issuer = id.issuer.clone().unwrap_or_default();
            let subject = id.sans.iter().find(|s| want.subject.matches(s));
            match subject {
                Some(subject) if want.issuer.matches(&issuer) => SignerInfo::Keyless {
                    issuer,
                    subject: subject.clone(),
                },
                _ => {
                    return Err(VerifyError::Identity {
                        expected: want.to_string(),
                        actual: format!("issuer {issuer:?} subject {:?}", id.sans),
                    })
                }
            }
        }
        (None, Signer::Key(k)) => SignerInfo::Key {
            fingerprint: k.fingerprint(),
        },
        _ => return Err(MaterialErrorKind::KeyForIdentity.into()),
    };

    Ok(Verified {
        signer: signer_info,
        tlog_index,
        time: times.iter().min().copied(),
        statement,
    })
}

/// In-toto statement payload type.
pub const IN_TOTO_PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";

fn verify_content(
    content: &Content,
    artifact: Artifact<'_>,
    digest: &[u8; 32],
    key: &PublicKey,
) -> Result<Option<Vec<u8>>, VerifyError> {
    match content {
        Content::MessageSignature {
            digest: claimed,
            signature,
        } => {
            if claimed.as_deref().is_some_and(|c| c != digest) {
                return Err(SignatureErrorKind::DigestMismatch.into());
            }
            let r = match artifact {
                Artifact::Bytes(b) => key.verify(b, signature),
                Artifact::Sha256(d) => key.verify_digest(HashAlgorithm::Sha256, &d, signature),
            };
            r.map_err(|e| SignatureErrorKind::DoesNotVerify(e.to_string()))?;
            Ok(None)
        }
        Content::Dsse(env) => {
            let sig = env
                .signatures
                .first()
                .ok_or_else(|| BundleErrorKind::Malformed("DSSE envelope has no signature".into()))?;
            key.verify(&pae(&env.payload_type, &env.payload), sig)
                .map_err(|e| SignatureErrorKind::DoesNotVerify(format!("DSSE envelope: {e}")))?;
            if env.payload_type != IN_TOTO_PAYLOAD_TYPE {
                return Err(SignatureErrorKind::NotInToto(env.payload_type.clone()).into());
            }
            let want = hex::encode(digest);
            if !statement_subject_digests(&env.payload)?.contains(&want) {
                return Err(SignatureErrorKind::NoInTotoSubject(format!("sha256:{want}")).into());
            }
            Ok(Some(env.payload.clone()))
        }
    }
}

/// The sha256 digests (hex) of an in-toto statement's subjects.
pub fn statement_subject_digests(payload: &[u8]) -> Result<Vec<String>, VerifyError> {
    let v: serde_json::Value = serde_json::from_slice(payload)
        .map_err(|e| SignatureErrorKind::Statement(format!("in-toto statement is not JSON: {e}")))?;
    let subjects = v
        .get("subject")
        .and_then(|s| s.as_array())
        .ok_or_else(|| SignatureErrorKind::Statement("in-toto statement has no subject list".into()))?;
    Ok(subjects
        .iter()
        .filter_map(|s| s.get("digest")?.get("sha256")?.as_str().map(str::to_ascii_lowercase))
        .collect())
}

//! The local trust anchor: a Sigstore `trusted_root.json` (protobuf-specs `TrustedRoot`, JSON form).
//!
//! Loaded once, validated strictly: a malformed root is an error, never an empty (or permissive)
//! one. A validity period without a start is malformed (conformance case
//! `trust-root-tlog-missing-validity-start_fail`); periods are closed intervals.

use std::path::Path;

use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde::Deserialize;

use crate::keys::{KeyError, PublicKey};

/// The public-good Sigstore trusted root, as shipped by sigstore-python 4.5.1 (data, not code).
pub const PUBLIC_GOOD_JSON: &str = include_str!("../../data/trusted_root.public-good.json");

/// Why a trusted root could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TrustRootError {
    /// Unreadable file.
    #[error("cannot read trusted root {path}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Not valid JSON of the right shape.
    #[error("trusted root is not valid JSON at {path}: {message}")]
    Json {
        /// JSON path of the bad field.
        path: String,
        /// What was wrong.
        message: String,
    },
    /// A field is present but wrong.
    #[error("trusted root field {field}: {reason}")]
    Field {
        /// Which field (`tlogs[0].publicKey.validFor.start`).
        field: String,
        /// What was wrong.
        reason: String,
    },
    /// A key that does not parse.
    #[error("trusted root field {field}: bad public key")]
    Key {
        /// Which field.
        field: String,
        /// Why.
        #[source]
        source: KeyError,
    },
}

type Result<T> = std::result::Result<T, TrustRootError>;

/// A closed validity interval `[start, end]`; `end` absent means still valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValidityPeriod {
    /// First instant of validity.
    pub start: DateTime<Utc>,
    /// Last instant of validity, if any.
    pub end: Option<DateTime<Utc>>,
}

impl ValidityPeriod {
    /// Whether `t` lies within the period (both ends inclusive).
    pub fn contains(&self, t: DateTime<Utc>) -> bool {
        t >= self.start && self.end.is_none_or(|e| t <= e)
    }
}

/// A transparency log (Rekor) or certificate-transparency log (CT) the root trusts.
#[derive(Debug, Clone)]
pub struct TransparencyLog {
    /// The log's base URL, for messages.
    pub base_url: String,
    /// Its signing key.
    pub key: PublicKey,
    /// The log ID (key ID) entries refer to it by.
    pub log_id: Vec<u8>,
    /// When the key may be used.
    pub valid_for: ValidityPeriod,
}

/// A certificate authority (Fulcio) or timestamp authority (RFC 3161 TSA).
#[derive(Debug, Clone)]
pub struct CertificateAuthority {
    /// URI, for messages.
    pub uri: String,
    /// DER certificates, leaf-most (intermediate) first, root last.
    pub chain: Vec<Vec<u8>>,
    /// When the authority may be used.
    pub valid_for: ValidityPeriod,
}

/// A parsed, validated trusted root.
#[derive(Debug, Clone)]
pub struct TrustedRoot {
    /// Rekor logs.
    pub tlogs: Vec<TransparencyLog>,
    /// Fulcio CAs.
    pub certificate_authorities: Vec<CertificateAuthority>,
    /// CT logs (for SCTs).
    pub ctlogs: Vec<TransparencyLog>,
    /// Timestamp authorities.
    pub timestamp_authorities: Vec<CertificateAuthority>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawRoot {
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    tlogs: Vec<RawLog>,
    #[serde(default)]
    certificate_authorities: Vec<RawCa>,
    #[serde(default)]
    ctlogs: Vec<RawLog>,
    #[serde(default)]
    timestamp_authorities: Vec<RawCa>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawLog {
    #[serde(default)]
    base_url: String,
    public_key: RawPublicKey,
    log_id: RawLogId,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawPublicKey {
    raw_bytes: String,
    #[serde(default)]
    key_details: Option<String>,
    #[serde(default)]
    valid_for: Option<RawValidity>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawLogId {
    key_id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawCa {
    #[serde(default)]
    uri: String,
    cert_chain: RawChain,
    #[serde(default)]
    valid_for: Option<RawValidity>,
}

#[derive(Deserialize)]
struct RawChain {
    certificates: Vec<RawCert>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawCert {
    raw_bytes: String,
}

#[derive(Deserialize)]
struct RawValidity {
    #[serde(default)]
    start: Option<String>,
    #[serde(default)]
    end: Option<String>,
}

fn b64(field: &str, s: &str) -> Result<Vec<u8>> {
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|e| TrustRootError::Field {
            field: field.to_string(),
            reason: format!("bad base64: {e}"),
        })
}

fn time(field: &str, s: &str) -> Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| TrustRootError::Field {
            field: field.to_string(),
            reason: format!("bad RFC 3339 time {s:?}: {e}"),
        })
}

fn validity(field: &str, v: Option<RawValidity>) -> Result<ValidityPeriod> {
    let v = v.ok_or_else(|| TrustRootError::Field {
        field: field.to_string(),
        reason: "missing".into(),
    })?;
    let start = v.start.ok_or_else(|| TrustRootError::Field {
        field: format!("{field}.start"),
        reason: "missing (a validity period needs a start)".into(),
    })?;
    let start = time(&format!("{field}.start"), &start)?;
    let end = v.end.map(|e| time(&format!("{field}.end"), &e)).transpose()?;
    if end.is_some_and(|e| e < start) {
        return Err(TrustRootError::Field {
            field: field.to_string(),
            reason: "end before start".into(),
        });
    }
    Ok(ValidityPeriod { start, end })
}

fn logs(kind: &str, raw: Vec<RawLog>) -> Result<Vec<TransparencyLog>> {
    raw.into_iter()
        .enumerate()
        .map(|(i, l)| {
            let f = format!("{kind}[{i}]");
            let der = b64(&format!("{f}.publicKey.rawBytes"), &l.public_key.raw_bytes)?;
            let pkcs1 = l
                .public_key
                .key_details
                .as_deref()
                .is_some_and(|d| d.starts_with("PKCS1_RSA"));
            let key = if pkcs1 {
                PublicKey::from_pkcs1_rsa_der(&der)
            } else {
                PublicKey::from_spki_der(&der)
            }
            .map_err(|source| TrustRootError::Key {
                field: format!("{f}.publicKey"),
                source,
            })?;
            Ok(TransparencyLog {
                base_url: l.base_url,
                key,
                log_id: b64(&format!("{f}.logId.keyId"), &l.log_id.key_id)?,
                valid_for: validity(&format!("{f}.publicKey.validFor"), l.public_key.valid_for)?,
            })
        })
        .collect()
}

fn cas(kind: &str, raw: Vec<RawCa>) -> Result<Vec<CertificateAuthority>> {
    raw.into_iter()
        .enumerate()
        .map(|(i, c)| {
            let f = format!("{kind}[{i}]");
            let chain = c
                .cert_chain
                .certificates
                .iter()
                .enumerate()
                .map(|(j, cert)| b64(&format!("{f}.certChain.certificates[{j}]"), &cert.raw_bytes))
                .collect::<Result<Vec<_>>>()?;
            if chain.is_empty() {
                return Err(TrustRootError::Field {
                    field: format!("{f}.certChain"),
                    reason: "empty".into(),
                });
            }
            Ok(CertificateAuthority {
                uri: c.uri,
                chain,
                valid_for: validity(&format!("{f}.validFor"), c.valid_for)?,
            })
        })
        .collect()
}

impl TrustedRoot {
    /// Parses and validates JSON bytes.
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        let de = &mut serde_json::Deserializer::from_slice(bytes);
        let raw: RawRoot = serde_path_to_error::deserialize(de).map_err(|e| TrustRootError::Json {
            path: e.path().to_string(),
            message: e.inner().to_string(),
        })?;
        if let Some(mt) = &raw.media_type {
            if !mt.starts_with("application/vnd.dev.sigstore.trustedroot") {
                return Err(TrustRootError::Field {
                    field: "mediaType".into(),
                    reason: format!("unexpected {mt:?}"),
                });
            }
        }
        Ok(Self {
            tlogs: logs("tlogs", raw.tlogs)?,
            certificate_authorities: cas("certificateAuthorities", raw.certificate_authorities)?,
            ctlogs: logs("ctlogs", raw.ctlogs)?,
            timestamp_authorities: cas("timestampAuthorities", raw.timestamp_authorities)?,
        })
    }

    /// Reads and parses a file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|source| TrustRootError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_json(&bytes)
    }

    /// The public-good Sigstore root shipped with kcache.
    pub fn public_good() -> Self {
        #[allow(clippy::expect_used)]
        Self::from_json(PUBLIC_GOOD_JSON.as_bytes()).expect("embedded public-good trusted root parses")
    }

    /// The Rekor log with this log ID.
    pub fn tlog(&self, log_id: &[u8]) -> Option<&TransparencyLog> {
        self.tlogs.iter().find(|l| l.log_id == log_id)
    }

    /// The CT log with this log ID.
    pub fn ctlog(&self, log_id: &[u8]) -> Option<&TransparencyLog> {
        self.ctlogs.iter().find(|l| l.log_id == log_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_good_root_has_rekor_v1_and_v2_fulcio_ct_and_tsa() {
        let r = TrustedRoot::public_good();
        assert_eq!(r.tlogs.len(), 2);
        assert_eq!(r.certificate_authorities.len(), 2);
        assert_eq!(r.ctlogs.len(), 2);
        assert_eq!(r.timestamp_authorities.len(), 1);
        let rekor_id = base64::engine::general_purpose::STANDARD
            .decode("wNI9atQGlz+VWfO6LRygH4QUfY/8W4RFwiT5i5WRgB0=")
            .unwrap();
        assert!(r.tlog(&rekor_id).is_some());
    }

    #[test]
    fn broken_roots_are_errors_not_empty_roots() {
        assert!(matches!(TrustedRoot::from_json(b"{"), Err(TrustRootError::Json { .. })));
        let mut v: serde_json::Value = serde_json::from_str(PUBLIC_GOOD_JSON).unwrap();
        v["tlogs"][0]["publicKey"]["validFor"]
            .as_object_mut()
            .unwrap()
            .remove("start");
        let err = TrustedRoot::from_json(v.to_string().as_bytes()).unwrap_err();
        assert!(err.to_string().contains("tlogs[0].publicKey.validFor.start"), "{err}");
        let mut v: serde_json::Value = serde_json::from_str(PUBLIC_GOOD_JSON).unwrap();
        v["ctlogs"][0]["publicKey"]["rawBytes"] = "!!".into();
        assert!(TrustedRoot::from_json(v.to_string().as_bytes()).is_err());
    }
}

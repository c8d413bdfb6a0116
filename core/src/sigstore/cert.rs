//! X.509 for Sigstore: chain validation against trusted-root CAs at a given time, the Fulcio
//! identity (SAN + OIDC issuer extension), and embedded SCTs checked against the root's CT logs.

use chrono::{DateTime, TimeZone, Utc};
use const_oid::{db::rfc5912, ObjectIdentifier};
use der::{Decode, Encode};
use sha2::{Digest as _, Sha256};
use x509_cert::{
    ext::pkix::{name::GeneralName, BasicConstraints, ExtendedKeyUsage, SubjectAltName},
    Certificate,
};

use super::{
    trust_root::{CertificateAuthority, TrustedRoot},
    verify::{CertificateErrorKind, VerifyError},
};
use crate::keys::{HashAlgorithm, PublicKey};

const OID_ISSUER_V1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.57264.1.1");
const OID_ISSUER_V2: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.57264.1.8");
const OID_SCT_LIST: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.11129.2.4.2");
const OID_OTHERNAME_USERNAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.57264.1.7");
const OID_EKU_CODE_SIGNING: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.3");
/// id-kp-timeStamping.
pub const OID_EKU_TIMESTAMPING: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.8");

fn err(msg: impl Into<String>) -> VerifyError {
    CertificateErrorKind::Malformed(msg.into()).into()
}
fn untrusted(msg: impl Into<String>) -> VerifyError {
    CertificateErrorKind::Untrusted(msg.into()).into()
}
fn sct_err(msg: impl Into<String>) -> VerifyError {
    CertificateErrorKind::Sct(msg.into()).into()
}

/// A parsed certificate with its original DER (signatures cover the original bytes).
pub struct ParsedCert {
    /// The original DER.
    pub der: Vec<u8>,
    /// The parsed form.
    pub cert: Certificate,
}

impl ParsedCert {
    /// Parses DER.
    pub fn from_der(der: &[u8]) -> Result<Self, VerifyError> {
        let cert = Certificate::from_der(der).map_err(|e| err(format!("malformed certificate: {e}")))?;
        Ok(Self {
            der: der.to_vec(),
            cert,
        })
    }

    /// The subject public key.
    pub fn public_key(&self) -> Result<PublicKey, VerifyError> {
        let spki = self.spki_der()?;
        PublicKey::from_spki_der(&spki).map_err(|e| err(format!("certificate key: {e}")))
    }

    fn spki_der(&self) -> Result<Vec<u8>, VerifyError> {
        self.cert
            .tbs_certificate
            .subject_public_key_info
            .to_der()
            .map_err(|e| err(e.to_string()))
    }

    /// notBefore and notAfter.
    pub fn validity(&self) -> (DateTime<Utc>, DateTime<Utc>) {
        let v = &self.cert.tbs_certificate.validity;
        let t = |d: std::time::Duration| Utc.timestamp_opt(d.as_secs() as i64, 0).single().unwrap_or_default();
        (t(v.not_before.to_unix_duration()), t(v.not_after.to_unix_duration()))
    }

    /// Whether `at` lies within the validity window (inclusive).
    pub fn valid_at(&self, at: DateTime<Utc>) -> bool {
        let (nb, na) = self.validity();
        at >= nb && at <= na
    }

    fn extension(&self, oid: ObjectIdentifier) -> Option<&x509_cert::ext::Extension> {
        self.cert
            .tbs_certificate
            .extensions
            .as_ref()?
            .iter()
            .find(|e| e.extn_id == oid)
    }

    fn is_ca(&self) -> bool {
        self.extension(rfc5912::ID_CE_BASIC_CONSTRAINTS)
            .and_then(|e| BasicConstraints::from_der(e.extn_value.as_bytes()).ok())
            .is_some_and(|b| b.ca)
    }

    /// Whether the extended key usage lists `oid`.
    pub fn has_eku(&self, oid: ObjectIdentifier) -> bool {
        self.extension(rfc5912::ID_CE_EXT_KEY_USAGE)
            .and_then(|e| ExtendedKeyUsage::from_der(e.extn_value.as_bytes()).ok())
            .is_some_and(|eku| eku.0.contains(&oid))
    }

    /// Verifies that `issuer` signed this certificate.
    pub fn verify_signed_by(&self, issuer: &ParsedCert) -> Result<(), VerifyError> {
        let tbs = tbs_bytes(&self.der)?;
        let sig = self
            .cert
            .signature
            .as_bytes()
            .ok_or_else(|| err("certificate signature has unused bits"))?;
        let key = issuer.public_key()?;
        verify_with_oid(&key, &self.cert.signature_algorithm.oid, tbs, sig).map_err(|e| {
            untrusted(format!(
                "certificate is not signed by {}: {e}",
                issuer.cert.tbs_certificate.subject
            ))
        })
    }
}

/// Verifies `sig` over `msg` with `key`, hashing as the signature-algorithm OID says.
pub fn verify_with_oid(key: &PublicKey, alg: &ObjectIdentifier, msg: &[u8], sig: &[u8]) -> Result<(), String> {
    let hash = match *alg {
        rfc5912::ECDSA_WITH_SHA_256 | rfc5912::SHA_256_WITH_RSA_ENCRYPTION => HashAlgorithm::Sha256,
        rfc5912::ECDSA_WITH_SHA_384 | rfc5912::SHA_384_WITH_RSA_ENCRYPTION => HashAlgorithm::Sha384,
        rfc5912::ECDSA_WITH_SHA_512 | rfc5912::SHA_512_WITH_RSA_ENCRYPTION => HashAlgorithm::Sha512,
        const_oid::db::rfc8410::ID_ED_25519 => return key.verify(msg, sig).map_err(|e| e.to_string()),
        other => return Err(format!("unsupported signature algorithm {other}")),
    };
    key.verify_with_hash(hash, msg, sig).map_err(|e| e.to_string())
}

/// The raw `tbsCertificate` TLV inside a certificate's DER.
fn tbs_bytes(der: &[u8]) -> Result<&[u8], VerifyError> {
    let (_, outer) = tlv(der).ok_or_else(|| err("certificate is not a DER SEQUENCE"))?;
    let (tbs_len, _) = tlv(outer).ok_or_else(|| err("certificate has no tbsCertificate"))?;
    Ok(&outer[..tbs_len])
}

/// Splits one DER TLV: returns (total length of the TLV, its content).
fn tlv(b: &[u8]) -> Option<(usize, &[u8])> {
    let first = *b.get(1)?;
    let (len, hdr) = if first < 0x80 {
        (first as usize, 2)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for i in 0..n {
            len = (len << 8) | *b.get(2 + i)? as usize;
        }
        (len, 2 + n)
    };
    let end = hdr.checked_add(len)?;
    Some((end, b.get(hdr..end)?))
}

/// Validates `leaf` → the CA's chain (intermediates, root) at time `at`: every signature, every
/// certificate's validity, and the authority's validity period in the trusted root.
pub fn verify_chain(leaf: &ParsedCert, ca: &CertificateAuthority, at: DateTime<Utc>) -> Result<(), VerifyError> {
    verify_chain_at(leaf, ca, &[at])
}

/// [`verify_chain`] at each of `times`, with each signature checked once (signatures do not
/// depend on the time; validity periods do). The trust anchor is the trusted root's own entry:
/// its self-signature is not what makes it trusted, so it is not checked (RFC 5280 6.1); a
/// parent whose subject is not the child's issuer fails before any signature is computed.
pub fn verify_chain_at(
    leaf: &ParsedCert,
    ca: &CertificateAuthority,
    times: &[DateTime<Utc>],
) -> Result<(), VerifyError> {
    for at in times {
        if !ca.valid_for.contains(*at) {
            return Err(untrusted(format!("authority {} is not trusted at {at}", ca.uri)));
        }
    }
    let chain = ca
        .chain
        .iter()
        .map(|d| ParsedCert::from_der(d))
        .collect::<Result<Vec<_>, _>>()?;
    let mut child = leaf;
    for parent in &chain {
        if child.der == parent.der {
            // The leaf itself is pinned in the trusted chain (TSA roots list their leaf first).
            continue;
        }
        if child.cert.tbs_certificate.issuer != parent.cert.tbs_certificate.subject {
            return Err(untrusted(format!(
                "certificate issued by {} is not issued by {}",
                child.cert.tbs_certificate.issuer, parent.cert.tbs_certificate.subject
            )));
        }
        child.verify_signed_by(parent)?;
        if !parent.is_ca() {
            return Err(untrusted("issuing certificate is not a CA"));
        }
        child = parent;
    }
    for at in times {
        for c in std::iter::once(leaf).chain(chain.iter()) {
            if !c.valid_at(*at) {
                let (nb, na) = c.validity();
                return Err(untrusted(format!(
                    "certificate {} is not valid at {at} (valid {nb} to {na})",
                    c.cert.tbs_certificate.subject
                )));
            }
        }
    }
    Ok(())
}

/// Validates a Fulcio leaf at each of `times` against some CA in the root; returns the CA used.
pub fn verify_fulcio_leaf<'r>(
    leaf: &ParsedCert,
    root: &'r TrustedRoot,
    times: &[DateTime<Utc>],
) -> Result<&'r CertificateAuthority, VerifyError> {
    if leaf.is_ca() {
        return Err(untrusted("signing certificate is a CA certificate"));
    }
    if !leaf.has_eku(OID_EKU_CODE_SIGNING) {
        return Err(untrusted(
            "signing certificate lacks the code-signing extended key usage",
        ));
    }
    let mut last = untrusted("no certificate authority in the trusted root");
    for ca in &root.certificate_authorities {
        match verify_chain_at(leaf, ca, times) {
            Ok(()) => return Ok(ca),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// The identity Fulcio bound into a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertIdentity {
    /// OIDC issuer.
    pub issuer: Option<String>,
    /// SAN values (email, URI, username), in certificate order.
    pub sans: Vec<String>,
}

/// Reads the SAN and the OIDC issuer extension.
pub fn identity(cert: &ParsedCert) -> Result<CertIdentity, VerifyError> {
    let issuer = if let Some(e) = cert.extension(OID_ISSUER_V2) {
        let s = der::asn1::Utf8StringRef::from_der(e.extn_value.as_bytes())
            .map_err(|_| err("issuer extension (1.3.6.1.4.1.57264.1.8) is not a UTF8String"))?;
        Some(s.as_str().to_string())
    } else {
        cert.extension(OID_ISSUER_V1)
            .map(|e| String::from_utf8(e.extn_value.as_bytes().to_vec()))
            .transpose()
            .map_err(|_| err("issuer extension (1.3.6.1.4.1.57264.1.1) is not UTF-8"))?
    };
    let mut sans = Vec::new();
    if let Some(e) = cert.extension(rfc5912::ID_CE_SUBJECT_ALT_NAME) {
        let san = SubjectAltName::from_der(e.extn_value.as_bytes()).map_err(|_| err("malformed SubjectAltName"))?;
        for name in san.0 {
            match name {
                GeneralName::Rfc822Name(s) => sans.push(s.to_string()),
                GeneralName::UniformResourceIdentifier(s) => sans.push(s.to_string()),
                GeneralName::OtherName(o) if o.type_id == OID_OTHERNAME_USERNAME => {
                    if let Ok(s) = o.value.decode_as::<der::asn1::Utf8StringRef>() {
                        sans.push(s.as_str().to_string());
                    }
                }
                _ => {}
            }
        }
    }
    Ok(CertIdentity { issuer, sans })
}

/// Verifies at least one embedded SCT against the root's CT logs (RFC 6962 §3.2, precert entry).
pub fn verify_embedded_sct(leaf: &ParsedCert, issuer: &ParsedCert, root: &TrustedRoot) -> Result<(), VerifyError> {
    let ext = leaf
        .extension(OID_SCT_LIST)
        .ok_or_else(|| sct_err("certificate has no embedded SCT"))?;
    let list = der::asn1::OctetStringRef::from_der(ext.extn_value.as_bytes())
        .map_err(|_| sct_err("malformed SCT extension"))?;
    let list = list.as_bytes();
    let total = u16::from_be_bytes([
        *list.first().ok_or_else(|| sct_err("empty SCT list"))?,
        *list.get(1).unwrap_or(&0),
    ]) as usize;
    let mut rest = list.get(2..2 + total).ok_or_else(|| sct_err("truncated SCT list"))?;

    // The precertificate TBS: the leaf's TBS without the SCT list extension.
    let mut tbs = leaf.cert.tbs_certificate.clone();
    if let Some(exts) = tbs.extensions.as_mut() {
        exts.retain(|e| e.extn_id != OID_SCT_LIST);
    }
    let tbs_der = tbs.to_der().map_err(|e| err(format!("cannot re-encode TBS: {e}")))?;
    let issuer_key_hash: [u8; 32] = Sha256::digest(issuer.spki_der()?).into();

    let mut tried = Vec::new();
    while rest.len() >= 2 {
        let n = u16::from_be_bytes([rest[0], rest[1]]) as usize;
        let sct = rest.get(2..2 + n).ok_or_else(|| sct_err("truncated SCT"))?;
        rest = &rest[2 + n..];
        // version(1) log_id(32) timestamp(8) extensions(2+len) hash(1) sig_alg(1) sig(2+len)
        if sct.len() < 1 + 32 + 8 + 2 || sct[0] != 0 {
            tried.push("unsupported SCT version".to_string());
            continue;
        }
        let log_id = &sct[1..33];
        let timestamp = &sct[33..41];
        let ext_len = u16::from_be_bytes([sct[41], sct[42]]) as usize;
        let Some(exts) = sct.get(43..43 + ext_len) else {
            return Err(sct_err("truncated SCT extensions"));
        };
        let sig_part = &sct[43 + ext_len..];
        if sig_part.len() < 4 {
            return Err(sct_err("truncated SCT signature"));
        }
        let sig_len = u16::from_be_bytes([sig_part[2], sig_part[3]]) as usize;
        let sig = sig_part
            .get(4..4 + sig_len)
            .ok_or_else(|| sct_err("truncated SCT signature"))?;
        let Some(log) = root.ctlog(log_id) else {
            tried.push(format!("SCT from unknown CT log {}", hex::encode(log_id)));
            continue;
        };
        let mut signed = Vec::with_capacity(tbs_der.len() + 64);
        signed.extend_from_slice(&[0, 0]); // v1, certificate_timestamp
        signed.extend_from_slice(timestamp);
        signed.extend_from_slice(&[0, 1]); // precert_entry
        signed.extend_from_slice(&issuer_key_hash);
        let l = tbs_der.len();
        signed.extend_from_slice(&[(l >> 16) as u8, (l >> 8) as u8, l as u8]);
        signed.extend_from_slice(&tbs_der);
        signed.extend_from_slice(&(ext_len as u16).to_be_bytes());
        signed.extend_from_slice(exts);
        match log.key.verify(&signed, sig) {
            Ok(()) => return Ok(()),
            Err(e) => tried.push(format!("SCT from {}: {e}", log.base_url)),
        }
    }
    Err(sct_err(format!("no valid SCT ({})", tried.join("; "))))
}

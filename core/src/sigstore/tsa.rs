//! RFC 3161 signed timestamps: a trusted timestamp authority's proof that the signature existed
//! at `genTime`. Rekor v2 entries carry no integrated time, so this is their only clock.

use chrono::{DateTime, NaiveDateTime, Utc};
use cms::{
    cert::CertificateChoices,
    content_info::ContentInfo,
    signed_data::{SignedData, SignerIdentifier},
};
use const_oid::{db::rfc5912, ObjectIdentifier};
use der::{asn1::OctetString, Decode, Encode, Tagged};
use spki::AlgorithmIdentifierOwned;

use super::{
    cert::{verify_chain, verify_with_oid, ParsedCert, OID_EKU_TIMESTAMPING},
    trust_root::TrustedRoot,
    verify::{TimestampErrorKind, VerifyError},
};
use crate::keys::HashAlgorithm;

const OID_SIGNED_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.2");
const OID_CT_TSTINFO: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.16.1.4");
const OID_ATTR_CONTENT_TYPE: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.3");
const OID_ATTR_MESSAGE_DIGEST: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.4");
const OID_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.1");
const OID_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.2");
const OID_SHA512: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.3");

fn err(msg: impl Into<String>) -> VerifyError {
    TimestampErrorKind::Malformed(msg.into()).into()
}
fn untrusted(msg: impl Into<String>) -> VerifyError {
    TimestampErrorKind::Untrusted(msg.into()).into()
}
fn mismatch(msg: impl Into<String>) -> VerifyError {
    TimestampErrorKind::Mismatch(msg.into()).into()
}

#[derive(der::Sequence)]
struct MessageImprint {
    hash_algorithm: AlgorithmIdentifierOwned,
    hashed_message: OctetString,
}

fn hash_alg(oid: &ObjectIdentifier) -> Result<HashAlgorithm, VerifyError> {
    match *oid {
        OID_SHA256 => Ok(HashAlgorithm::Sha256),
        OID_SHA384 => Ok(HashAlgorithm::Sha384),
        OID_SHA512 => Ok(HashAlgorithm::Sha512),
        other => Err(err(format!("unsupported digest algorithm {other}"))),
    }
}

/// Parses `YYYYMMDDHHMMSS[.f*]Z` (GeneralizedTime as TSAs write it, fractions included).
fn generalized_time(bytes: &[u8]) -> Result<DateTime<Utc>, VerifyError> {
    let s = std::str::from_utf8(bytes).map_err(|_| err("genTime is not ASCII"))?;
    let s = s.strip_suffix('Z').ok_or_else(|| err("genTime is not in UTC"))?;
    let whole = s.split('.').next().unwrap_or(s);
    NaiveDateTime::parse_from_str(whole, "%Y%m%d%H%M%S")
        .map(|t| t.and_utc())
        .map_err(|_| err(format!("malformed genTime {s:?}")))
}

/// Bundles carry the TSA's whole `TimeStampResp { status PKIStatusInfo, timeStampToken }`;
/// accept that (status granted or grantedWithMods) or a bare token.
fn unwrap_response(der_bytes: &[u8]) -> Result<Vec<u8>, VerifyError> {
    let fields: Vec<der::Any> = Vec::from_der(der_bytes).map_err(|e| err(format!("malformed timestamp: {e}")))?;
    match fields.first() {
        Some(first) if first.tag() == der::Tag::Sequence => {
            let status: Vec<der::Any> = first
                .decode_as()
                .map_err(|e| err(format!("malformed PKIStatusInfo: {e}")))?;
            let code = status
                .first()
                .and_then(|s| s.decode_as::<u8>().ok())
                .ok_or_else(|| err("timestamp response has no status"))?;
            if code > 1 {
                return Err(err(format!("timestamp response status {code} is not granted")));
            }
            let token = fields.get(1).ok_or_else(|| err("timestamp response has no token"))?;
            token.to_der().map_err(|e| err(e.to_string()))
        }
        _ => Ok(der_bytes.to_vec()),
    }
}

/// Verifies a DER `TimeStampToken` over `signature` (the bundle's signature bytes) and returns the
/// time it attests. The signing certificate must chain to a timestamp authority of `root` that
/// is valid at that time.
pub fn verify_timestamp(token: &[u8], signature: &[u8], root: &TrustedRoot) -> Result<DateTime<Utc>, VerifyError> {
    let token = unwrap_response(token)?;
    let ci = ContentInfo::from_der(&token).map_err(|e| err(format!("malformed timestamp token: {e}")))?;
    if ci.content_type != OID_SIGNED_DATA {
        return Err(err("timestamp token is not CMS SignedData"));
    }
    let sd: SignedData = ci
        .content
        .decode_as()
        .map_err(|e| err(format!("malformed SignedData: {e}")))?;
    if sd.encap_content_info.econtent_type != OID_CT_TSTINFO {
        return Err(err("timestamp token does not hold a TSTInfo"));
    }
    let econtent = sd
        .encap_content_info
        .econtent
        .as_ref()
        .ok_or_else(|| err("timestamp token has no content"))?;
    let tst_der = OctetString::from_der(&econtent.to_der().map_err(|e| err(e.to_string()))?)
        .map_err(|e| err(format!("TSTInfo is not wrapped in an OCTET STRING: {e}")))?;
    let tst_der = tst_der.as_bytes();

    // TSTInfo ::= SEQUENCE { version, policy, messageImprint, serialNumber, genTime, ... }
    let fields: Vec<der::Any> = Vec::from_der(tst_der).map_err(|e| err(format!("malformed TSTInfo: {e}")))?;
    let imprint: MessageImprint = fields
        .get(2)
        .ok_or_else(|| err("TSTInfo has no messageImprint"))?
        .decode_as()
        .map_err(|e| err(format!("malformed messageImprint: {e}")))?;
    let gen_time = fields.get(4).ok_or_else(|| err("TSTInfo has no genTime"))?;
    if gen_time.tag() != der::Tag::GeneralizedTime {
        return Err(err("TSTInfo genTime is not a GeneralizedTime"));
    }
    let gen_time = generalized_time(gen_time.value())?;

    // 1. The timestamp is over this signature.
    let h = hash_alg(&imprint.hash_algorithm.oid)?;
    if h.hash(signature) != imprint.hashed_message.as_bytes() {
        return Err(mismatch("timestamp message imprint does not match the signature"));
    }

    // 2. Exactly one signer; its signed attributes bind the TSTInfo.
    let si = match sd.signer_infos.0.as_slice() {
        [one] => one,
        _ => return Err(err("timestamp token must have exactly one signer")),
    };
    let attrs = si
        .signed_attrs
        .as_ref()
        .ok_or_else(|| err("timestamp signer has no signed attributes"))?;
    let attr = |oid| attrs.iter().find(|a| a.oid == oid).and_then(|a| a.values.get(0));
    let digest_alg = hash_alg(&si.digest_alg.oid)?;
    let md = attr(OID_ATTR_MESSAGE_DIGEST).ok_or_else(|| err("timestamp has no messageDigest attribute"))?;
    let md = md
        .decode_as::<OctetString>()
        .map_err(|_| err("messageDigest is not an OCTET STRING"))?;
    if md.as_bytes() != digest_alg.hash(tst_der) {
        return Err(mismatch("timestamp messageDigest does not match the TSTInfo"));
    }
    let ct = attr(OID_ATTR_CONTENT_TYPE).ok_or_else(|| err("timestamp has no contentType attribute"))?;
    if ct.decode_as::<ObjectIdentifier>().ok() != Some(OID_CT_TSTINFO) {
        return Err(err("timestamp contentType attribute is not TSTInfo"));
    }
    let signed_attrs_der = attrs.to_der().map_err(|e| err(e.to_string()))?;

    // 3. Find the signing certificate: embedded in the token, or the authority's own leaf.
    let mut candidates: Vec<Vec<u8>> = Vec::new();
    if let Some(certs) = &sd.certificates {
        for c in certs.0.iter() {
            if let CertificateChoices::Certificate(c) = c {
                candidates.push(c.to_der().map_err(|e| err(e.to_string()))?);
            }
        }
    }
    for tsa in &root.timestamp_authorities {
        if let Some(leaf) = tsa.chain.first() {
            candidates.push(leaf.clone());
        }
    }
    let matches_sid = |c: &ParsedCert| match &si.sid {
        SignerIdentifier::IssuerAndSerialNumber(is) => {
            c.cert.tbs_certificate.issuer == is.issuer && c.cert.tbs_certificate.serial_number == is.serial_number
        }
        SignerIdentifier::SubjectKeyIdentifier(ski) => c.cert.tbs_certificate.extensions.iter().flatten().any(|e| {
            e.extn_id == rfc5912::ID_CE_SUBJECT_KEY_IDENTIFIER && e.extn_value.as_bytes().ends_with(ski.0.as_bytes())
        }),
    };
    let sig_alg = match si.signature_algorithm.oid {
        // Bare key algorithms: the digest algorithm names the hash.
        rfc5912::RSA_ENCRYPTION | rfc5912::ID_EC_PUBLIC_KEY => match digest_alg {
            HashAlgorithm::Sha256 => rfc5912::SHA_256_WITH_RSA_ENCRYPTION,
            HashAlgorithm::Sha384 => rfc5912::SHA_384_WITH_RSA_ENCRYPTION,
            HashAlgorithm::Sha512 => rfc5912::SHA_512_WITH_RSA_ENCRYPTION,
        },
        oid => oid,
    };
    let mut last = untrusted("no trusted timestamp authority signed this timestamp");
    for der in &candidates {
        let Ok(signer) = ParsedCert::from_der(der) else {
            continue;
        };
        if !matches_sid(&signer) {
            continue;
        }
        let key = signer.public_key().map_err(|e| err(e.to_string()))?;
        if let Err(e) = verify_with_oid(&key, &sig_alg, &signed_attrs_der, si.signature.as_bytes()) {
            last = untrusted(format!("timestamp signature does not verify: {e}"));
            continue;
        }
        if !signer.has_eku(OID_EKU_TIMESTAMPING) {
            last = untrusted("timestamp signer lacks the timeStamping extended key usage");
            continue;
        }
        // 4. The signer chains to a trusted authority valid at genTime.
        for tsa in &root.timestamp_authorities {
            match verify_chain(&signer, tsa, gen_time) {
                Ok(()) => return Ok(gen_time),
                Err(e) => last = untrusted(format!("timestamp authority {}: {e}", tsa.uri)),
            }
        }
    }
    Err(last)
}

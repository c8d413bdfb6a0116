//! Transparency log proofs: Rekor v1 signed entry timestamps (SET), RFC 6962 / RFC 9162 inclusion
//! proofs, signed-note checkpoints (Rekor v1 ECDSA and Rekor v2 Ed25519, with witness cosignatures
//! ignored), and the consistency of an entry's body with the bundle it came with.

use base64::Engine as _;
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use super::{
    bundle::{pae, Content, InclusionProof, TlogEntry},
    trust_root::TransparencyLog,
    verify::{TlogErrorKind, VerifyError},
};
use crate::keys::PublicKey;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

fn err(msg: impl Into<String>) -> VerifyError {
    TlogErrorKind::Malformed(msg.into()).into()
}
fn set_err(msg: impl Into<String>) -> VerifyError {
    TlogErrorKind::Set(msg.into()).into()
}
fn proof_err(msg: impl Into<String>) -> VerifyError {
    TlogErrorKind::InclusionProof(msg.into()).into()
}
fn checkpoint_err(msg: impl Into<String>) -> VerifyError {
    TlogErrorKind::Checkpoint(msg.into()).into()
}
fn mismatch(msg: impl Into<String>) -> VerifyError {
    TlogErrorKind::BodyMismatch(msg.into()).into()
}

/// Verifies the SET: the log's signature over canonical JSON of
/// `{body, integratedTime, logID, logIndex}` (keys sorted, compact), as Rekor v1 signs it.
pub fn verify_set(entry: &TlogEntry, log: &TransparencyLog) -> Result<(), VerifyError> {
    let set = entry
        .set
        .as_ref()
        .ok_or_else(|| err("entry has no signed entry timestamp"))?;
    let time = entry
        .integrated_time
        .ok_or_else(|| err("entry with a SET has no integratedTime"))?;
    let payload = format!(
        "{{\"body\":{},\"integratedTime\":{},\"logID\":{},\"logIndex\":{}}}",
        Value::String(B64.encode(&entry.body)),
        time,
        Value::String(hex::encode(&entry.log_id)),
        entry.log_index
    );
    log.key.verify(payload.as_bytes(), set).map_err(|e| {
        set_err(format!(
            "signed entry timestamp of log index {} does not verify: {e}",
            entry.log_index
        ))
    })
}

fn hash_leaf(body: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(body);
    h.finalize().into()
}

fn hash_children(l: &[u8], r: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(l);
    h.update(r);
    h.finalize().into()
}

/// RFC 9162 §2.1.3.2: the root a leaf's audit path leads to.
pub fn root_from_inclusion_proof(
    index: u64,
    size: u64,
    leaf: [u8; 32],
    proof: &[Vec<u8>],
) -> Result<[u8; 32], VerifyError> {
    if index >= size {
        return Err(proof_err(format!(
            "inclusion proof index {index} is outside tree size {size}"
        )));
    }
    let inner = (64 - (index ^ (size - 1)).leading_zeros()) as usize;
    let border = (index >> inner).count_ones() as usize;
    if proof.len() != inner + border {
        return Err(proof_err(format!(
            "inclusion proof has {} hashes, expected {}",
            proof.len(),
            inner + border
        )));
    }
    if proof.iter().any(|h| h.len() != 32) {
        return Err(proof_err("inclusion proof hash is not 32 bytes"));
    }
    let mut res = leaf;
    for (i, h) in proof[..inner].iter().enumerate() {
        res = if (index >> i) & 1 == 0 {
            hash_children(&res, h)
        } else {
            hash_children(h, &res)
        };
    }
    for h in &proof[inner..] {
        res = hash_children(h, &res);
    }
    Ok(res)
}

/// Verifies an entry's inclusion proof and its checkpoint, signed by `log`.
pub fn verify_inclusion(entry: &TlogEntry, proof: &InclusionProof, log: &TransparencyLog) -> Result<(), VerifyError> {
    let root = root_from_inclusion_proof(proof.log_index, proof.tree_size, hash_leaf(&entry.body), &proof.hashes)?;
    if root.as_slice() != proof.root_hash.as_slice() {
        return Err(proof_err(format!(
            "inclusion proof for log index {} does not lead to the stated root hash",
            entry.log_index
        )));
    }
    let note = proof
        .checkpoint
        .as_deref()
        .ok_or_else(|| proof_err("inclusion proof has no checkpoint"))?;
    let cp = verify_checkpoint(note, log)?;
    if cp.size != proof.tree_size || cp.root_hash != proof.root_hash {
        return Err(proof_err(
            "checkpoint does not match the inclusion proof's tree size and root hash",
        ));
    }
    Ok(())
}

/// The signed body of a checkpoint.
#[derive(Debug)]
pub struct Checkpoint {
    /// Log origin line.
    pub origin: String,
    /// Tree size.
    pub size: u64,
    /// Root hash.
    pub root_hash: Vec<u8>,
}

/// Verifies a signed note (checkpoint): one signature line must carry the log's key hint (the
/// first four bytes of its log ID) and verify over the note text. Other lines (witness
/// cosignatures) are ignored.
pub fn verify_checkpoint(note: &str, log: &TransparencyLog) -> Result<Checkpoint, VerifyError> {
    let (text, sigs) = note
        .split_once("\n\n")
        .ok_or_else(|| checkpoint_err("checkpoint has no blank line between text and signatures"))?;
    let text = format!("{text}\n");
    let mut lines = text.lines();
    let origin = lines
        .next()
        .filter(|l| !l.is_empty())
        .ok_or_else(|| checkpoint_err("checkpoint has no origin line"))?;
    let size = lines
        .next()
        .and_then(|l| l.parse::<u64>().ok())
        .ok_or_else(|| checkpoint_err("checkpoint has no tree size line"))?;
    let root_hash = lines
        .next()
        .and_then(|l| B64.decode(l).ok())
        .filter(|h| h.len() == 32)
        .ok_or_else(|| checkpoint_err("checkpoint has no root hash line"))?;
    let hint = log
        .log_id
        .get(..4)
        .ok_or_else(|| checkpoint_err("log ID shorter than a key hint"))?;
    let mut candidates = 0;
    for line in sigs.lines().filter(|l| !l.is_empty()) {
        let rest = line
            .strip_prefix("\u{2014} ")
            .ok_or_else(|| checkpoint_err("checkpoint signature line does not start with an em dash"))?;
        let (_name, sig_b64) = rest
            .rsplit_once(' ')
            .ok_or_else(|| checkpoint_err("malformed checkpoint signature line"))?;
        let raw = B64
            .decode(sig_b64)
            .map_err(|_| checkpoint_err("checkpoint signature is not base64"))?;
        if raw.len() < 5 || &raw[..4] != hint {
            continue;
        }
        candidates += 1;
        if log.key.verify(text.as_bytes(), &raw[4..]).is_ok() {
            return Ok(Checkpoint {
                origin: origin.to_string(),
                size,
                root_hash,
            });
        }
    }
    Err(checkpoint_err(if candidates == 0 {
        "checkpoint carries no signature from the log's key".to_string()
    } else {
        "checkpoint signature does not verify with the log's key".to_string()
    }))
}

/// What the bundle says was logged: the signer's key or certificate and the signed content.
pub struct Expected<'a> {
    /// Leaf certificate DER, or the public key, of the signer.
    pub cert_der: Option<&'a [u8]>,
    /// The verifying key.
    pub key: &'a PublicKey,
    /// Signed content.
    pub content: &'a Content,
}

fn field<'v>(v: &'v Value, path: &[&str]) -> Result<&'v Value, VerifyError> {
    let mut cur = v;
    for p in path {
        cur = cur
            .get(p)
            .ok_or_else(|| err(format!("log entry body lacks {}", path.join("."))))?;
    }
    Ok(cur)
}

fn str_field<'v>(v: &'v Value, path: &[&str]) -> Result<&'v str, VerifyError> {
    field(v, path)?
        .as_str()
        .ok_or_else(|| err(format!("log entry field {} is not a string", path.join("."))))
}

fn b64_field(v: &Value, path: &[&str]) -> Result<Vec<u8>, VerifyError> {
    B64.decode(str_field(v, path)?)
        .map_err(|_| err(format!("log entry field {} is not base64", path.join("."))))
}

/// A `publicKey.content` / `verifier` value: base64 of a PEM certificate or key.
fn pem_matches(pem_b64: &[u8], want: &Expected) -> bool {
    let Ok(text) = std::str::from_utf8(pem_b64) else {
        return false;
    };
    match crate::keys::pem_decode(text) {
        Ok((label, der)) if label == "CERTIFICATE" => want.cert_der == Some(der.as_slice()),
        Ok((label, der)) if label == "PUBLIC KEY" => want.cert_der.is_none() && der == want.key.to_spki_der(),
        _ => false,
    }
}

/// A Rekor v2 `verifier` object: `{x509Certificate: {rawBytes}} | {publicKey: {rawBytes}}`.
fn v2_verifier_matches(v: &Value, want: &Expected) -> Result<bool, VerifyError> {
    if let Some(c) = v.get("x509Certificate") {
        return Ok(want.cert_der == Some(b64_field(c, &["rawBytes"])?.as_slice()));
    }
    if let Some(k) = v.get("publicKey") {
        return Ok(want.cert_der.is_none() && b64_field(k, &["rawBytes"])? == want.key.to_spki_der());
    }
    Err(err("log entry verifier has neither certificate nor key"))
}

/// A DSSE entry's signature list must be a list as long as the envelope's, every element
/// recording this bundle's signature and key (`matches` decides for one element).
fn each_signature_matches(
    list: &Value,
    expected_count: usize,
    matches: impl Fn(&Value) -> Result<bool, VerifyError>,
) -> Result<(), VerifyError> {
    let sigs = list.as_array().ok_or_else(|| err("signatures is not a list"))?;
    if sigs.len() != expected_count {
        return Err(mismatch("log entry signature count does not match the bundle"));
    }
    for s in sigs {
        if !matches(s)? {
            return Err(mismatch("log entry signature does not match the bundle"));
        }
    }
    Ok(())
}

/// Checks that the entry body records this bundle's signature, key and content (so a valid
/// entry for something else cannot vouch for this signature).
pub fn check_body(entry: &TlogEntry, want: &Expected) -> Result<(), VerifyError> {
    let body: Value = serde_json::from_slice(&entry.body).map_err(|_| err("log entry body is not JSON"))?;
    let kind = str_field(&body, &["kind"])?;
    let version = str_field(&body, &["apiVersion"])?;
    if kind != entry.kind || version != entry.version {
        return Err(err(format!(
            "log entry body is {kind} {version}, bundle says {} {}",
            entry.kind, entry.version
        )));
    }
    let sig = want.content.signature();
    let (signed_digest, payload_digest) = match want.content {
        Content::MessageSignature { digest, .. } => (digest.clone(), None),
        Content::Dsse(env) => (
            Some(Sha256::digest(pae(&env.payload_type, &env.payload)).to_vec()),
            Some(Sha256::digest(&env.payload).to_vec()),
        ),
    };
    let mismatch_of = |what: &str| Err(mismatch(format!("log entry {what} does not match the bundle")));
    match (kind, version, want.content) {
        ("hashedrekord", "0.0.1", Content::MessageSignature { .. }) => {
            let spec = field(&body, &["spec"])?;
            if str_field(spec, &["data", "hash", "algorithm"])? != "sha256" {
                return Err(err("hashedrekord entry uses a hash other than sha256"));
            }
            let logged =
                hex::decode(str_field(spec, &["data", "hash", "value"])?).map_err(|_| err("bad hex digest"))?;
            if signed_digest.as_deref().is_some_and(|d| d != logged.as_slice()) {
                return mismatch_of("artifact digest");
            }
            if b64_field(spec, &["signature", "content"])? != sig {
                return mismatch_of("signature");
            }
            if !pem_matches(&b64_field(spec, &["signature", "publicKey", "content"])?, want) {
                return mismatch_of("signing key");
            }
        }
        ("hashedrekord", "0.0.2", _) => {
            let spec = field(&body, &["spec", "hashedRekordV002"])?;
            if str_field(spec, &["data", "algorithm"])? != "SHA2_256" {
                return Err(err("hashedrekord entry uses a hash other than SHA2_256"));
            }
            let logged = b64_field(spec, &["data", "digest"])?;
            if signed_digest.as_deref().is_some_and(|d| d != logged.as_slice()) {
                return mismatch_of("artifact digest");
            }
            if b64_field(spec, &["signature", "content"])? != sig {
                return mismatch_of("signature");
            }
            if !v2_verifier_matches(field(spec, &["signature", "verifier"])?, want)? {
                return mismatch_of("signing key");
            }
        }
        ("dsse", "0.0.1", Content::Dsse(env)) => {
            let spec = field(&body, &["spec"])?;
            let logged = hex::decode(str_field(spec, &["payloadHash", "value"])?).map_err(|_| err("bad hex digest"))?;
            if payload_digest.as_deref() != Some(logged.as_slice()) {
                return mismatch_of("payload hash");
            }
            each_signature_matches(field(spec, &["signatures"])?, env.signatures.len(), |s| {
                Ok(b64_field(s, &["signature"])? == sig && pem_matches(&b64_field(s, &["verifier"])?, want))
            })?;
        }
        ("dsse", "0.0.2", Content::Dsse(env)) => {
            let spec = field(&body, &["spec", "dsseV002"])?;
            if payload_digest.as_deref() != Some(b64_field(spec, &["payloadHash", "digest"])?.as_slice()) {
                return mismatch_of("payload hash");
            }
            each_signature_matches(field(spec, &["signatures"])?, env.signatures.len(), |s| {
                Ok(b64_field(s, &["content"])? == sig && v2_verifier_matches(field(s, &["verifier"])?, want)?)
            })?;
        }
        ("intoto", "0.0.2", Content::Dsse(env)) => {
            let content = field(&body, &["spec", "content"])?;
            let logged =
                hex::decode(str_field(content, &["payloadHash", "value"])?).map_err(|_| err("bad hex digest"))?;
            if payload_digest.as_deref() != Some(logged.as_slice()) {
                return mismatch_of("payload hash");
            }
            each_signature_matches(
                field(content, &["envelope", "signatures"])?,
                env.signatures.len(),
                |s| {
                    // intoto 0.0.2 stores the signature base64-encoded twice.
                    let once = b64_field(s, &["sig"])?;
                    let sig_logged = B64.decode(&once).map_err(|_| err("intoto signature is not base64"))?;
                    Ok(sig_logged == sig && pem_matches(&b64_field(s, &["publicKey"])?, want))
                },
            )?;
        }
        (k, v, _) => {
            return Err(mismatch(format!(
                "log entry kind {k} {v} does not fit this bundle's content"
            )))
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inclusion_proof_math_matches_rfc9162_for_small_trees() {
        // Tree of 3 leaves: root = H(H(l0,l1), l2).
        let leaves: Vec<[u8; 32]> = (0u8..3).map(|i| hash_leaf(&[i])).collect();
        let n01 = hash_children(&leaves[0], &leaves[1]);
        let root = hash_children(&n01, &leaves[2]);
        let p0 = vec![leaves[1].to_vec(), leaves[2].to_vec()];
        assert_eq!(root_from_inclusion_proof(0, 3, leaves[0], &p0).unwrap(), root);
        let p2 = vec![n01.to_vec()];
        assert_eq!(root_from_inclusion_proof(2, 3, leaves[2], &p2).unwrap(), root);
        assert!(root_from_inclusion_proof(3, 3, leaves[2], &p2).is_err());
        assert!(root_from_inclusion_proof(2, 3, leaves[2], &[]).is_err());
        assert_ne!(root_from_inclusion_proof(0, 3, leaves[1], &p0).unwrap(), root);
    }
}

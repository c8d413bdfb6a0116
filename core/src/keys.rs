//! Public keys and signature checks: ECDSA P-256/P-384, Ed25519 and RSA (PKCS#1 v1.5 or PSS).
//!
//! Signatures are checked either over a message or over a pre-computed digest (Sigstore's
//! hashedrekord and the conformance suite's `sha256:<hex>` mode give us only the digest).
//! ECDSA signatures are ASN.1 DER, as cosign, Fulcio and Rekor write them.

use std::fmt;

use ecdsa::signature::{hazmat::PrehashVerifier, Verifier};
use pkcs8::{DecodePublicKey, EncodePublicKey};
use sha2::{Digest as _, Sha256, Sha384, Sha512};

/// Smallest RSA modulus accepted, in bits.
pub const MIN_RSA_BITS: usize = 2048;

/// Why a key could not be loaded or a signature did not verify.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Not PEM, or a PEM label other than `PUBLIC KEY` / `RSA PUBLIC KEY`.
    #[error("not a PEM public key: {0}")]
    Pem(String),
    /// The DER inside is not a key of a supported kind.
    #[error("unsupported or malformed public key: {0}")]
    Unsupported(String),
    /// RSA modulus below [`MIN_RSA_BITS`].
    #[error("RSA key of {0} bits is too small (minimum {MIN_RSA_BITS})")]
    RsaTooSmall(usize),
    /// The signature bytes are not a well-formed signature for this key type.
    #[error("malformed {alg} signature")]
    MalformedSignature {
        /// Key algorithm.
        alg: &'static str,
    },
    /// Well-formed, but it does not verify.
    #[error("{alg} signature does not verify with key {fingerprint}")]
    BadSignature {
        /// Key algorithm.
        alg: &'static str,
        /// Fingerprint of the key that was tried.
        fingerprint: String,
    },
    /// Ed25519 cannot be checked against a bare digest.
    #[error("Ed25519 signatures cannot be verified against a digest alone; the artifact is needed")]
    PrehashUnsupported,
}

/// Result alias for this module.
pub type Result<T> = std::result::Result<T, KeyError>;

/// Hash algorithms used with signatures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashAlgorithm {
    /// SHA-256.
    Sha256,
    /// SHA-384.
    Sha384,
    /// SHA-512.
    Sha512,
}

impl HashAlgorithm {
    /// Hashes `data`.
    pub fn hash(self, data: &[u8]) -> Vec<u8> {
        match self {
            Self::Sha256 => Sha256::digest(data).to_vec(),
            Self::Sha384 => Sha384::digest(data).to_vec(),
            Self::Sha512 => Sha512::digest(data).to_vec(),
        }
    }
}

/// A public key kcache can verify with.
#[derive(Clone, PartialEq, Eq)]
pub enum PublicKey {
    /// ECDSA over NIST P-256.
    P256(p256::ecdsa::VerifyingKey),
    /// ECDSA over NIST P-384.
    P384(p384::ecdsa::VerifyingKey),
    /// Ed25519.
    Ed25519(ed25519_dalek::VerifyingKey),
    /// RSA.
    Rsa(rsa::RsaPublicKey),
}

impl PublicKey {
    /// Loads a PEM `PUBLIC KEY` (SubjectPublicKeyInfo) or `RSA PUBLIC KEY` (PKCS#1).
    pub fn from_pem(pem: &[u8]) -> Result<Self> {
        let text = std::str::from_utf8(pem).map_err(|_| KeyError::Pem("not UTF-8".into()))?;
        let (label, der) = pem_decode(text)?;
        match label.as_str() {
            "PUBLIC KEY" => Self::from_spki_der(&der),
            "RSA PUBLIC KEY" => Self::from_pkcs1_rsa_der(&der),
            other => Err(KeyError::Pem(format!("unexpected PEM label {other:?}"))),
        }
    }

    /// Loads a DER PKCS#1 `RSAPublicKey` (trusted roots' `PKCS1_RSA_*` key details).
    pub fn from_pkcs1_rsa_der(der: &[u8]) -> Result<Self> {
        use rsa::pkcs1::DecodeRsaPublicKey;
        let k = rsa::RsaPublicKey::from_pkcs1_der(der).map_err(|e| KeyError::Unsupported(e.to_string()))?;
        Self::checked_rsa(k)
    }

    /// Loads a DER SubjectPublicKeyInfo.
    pub fn from_spki_der(der: &[u8]) -> Result<Self> {
        let spki = spki::SubjectPublicKeyInfoRef::try_from(der)
            .map_err(|e| KeyError::Unsupported(format!("not a SubjectPublicKeyInfo: {e}")))?;
        let oid = spki.algorithm.oid;
        if oid == const_oid::db::rfc5912::ID_EC_PUBLIC_KEY {
            let curve = spki
                .algorithm
                .parameters_oid()
                .map_err(|e| KeyError::Unsupported(format!("EC key without named curve: {e}")))?;
            if curve == const_oid::db::rfc5912::SECP_256_R_1 {
                return p256::ecdsa::VerifyingKey::from_public_key_der(der)
                    .map(Self::P256)
                    .map_err(|e| KeyError::Unsupported(e.to_string()));
            }
            if curve == const_oid::db::rfc5912::SECP_384_R_1 {
                return p384::ecdsa::VerifyingKey::from_public_key_der(der)
                    .map(Self::P384)
                    .map_err(|e| KeyError::Unsupported(e.to_string()));
            }
            return Err(KeyError::Unsupported(format!("EC curve {curve} (want P-256 or P-384)")));
        }
        if oid == const_oid::db::rfc8410::ID_ED_25519 {
            return ed25519_dalek::VerifyingKey::from_public_key_der(der)
                .map(Self::Ed25519)
                .map_err(|e| KeyError::Unsupported(e.to_string()));
        }
        if oid == const_oid::db::rfc5912::RSA_ENCRYPTION {
            let k = rsa::RsaPublicKey::from_public_key_der(der).map_err(|e| KeyError::Unsupported(e.to_string()))?;
            return Self::checked_rsa(k);
        }
        Err(KeyError::Unsupported(format!("key algorithm {oid}")))
    }

    fn checked_rsa(k: rsa::RsaPublicKey) -> Result<Self> {
        use rsa::traits::PublicKeyParts;
        let bits = k.size() * 8;
        if bits < MIN_RSA_BITS {
            return Err(KeyError::RsaTooSmall(bits));
        }
        Ok(Self::Rsa(k))
    }

    /// DER SubjectPublicKeyInfo.
    pub fn to_spki_der(&self) -> Vec<u8> {
        let doc = match self {
            Self::P256(k) => k.to_public_key_der(),
            Self::P384(k) => k.to_public_key_der(),
            Self::Ed25519(k) => k.to_public_key_der(),
            Self::Rsa(k) => k.to_public_key_der(),
        };
        doc.map(|d| d.as_bytes().to_vec()).unwrap_or_default()
    }

    /// PEM `PUBLIC KEY`.
    pub fn to_pem(&self) -> String {
        pem_encode("PUBLIC KEY", &self.to_spki_der())
    }

    /// `SHA256:<hex>` of the DER SubjectPublicKeyInfo: stable, and what kcache prints as the signer.
    pub fn fingerprint(&self) -> String {
        format!("SHA256:{}", hex::encode(Sha256::digest(self.to_spki_der())))
    }

    /// Short algorithm name for messages.
    pub fn algorithm(&self) -> &'static str {
        match self {
            Self::P256(_) => "ecdsa-p256",
            Self::P384(_) => "ecdsa-p384",
            Self::Ed25519(_) => "ed25519",
            Self::Rsa(_) => "rsa",
        }
    }

    /// The hash this key signs with by default (Sigstore's algorithm registry).
    pub fn default_hash(&self) -> HashAlgorithm {
        match self {
            Self::P384(_) => HashAlgorithm::Sha384,
            _ => HashAlgorithm::Sha256,
        }
    }

    fn bad(&self) -> KeyError {
        KeyError::BadSignature {
            alg: self.algorithm(),
            fingerprint: self.fingerprint(),
        }
    }

    fn malformed(&self) -> KeyError {
        KeyError::MalformedSignature { alg: self.algorithm() }
    }

    /// Verifies `sig` over `message`. ECDSA P-384 accepts SHA-384 (Sigstore) or SHA-256 (cosign
    /// `--key` signs with SHA-256 whatever the curve); RSA accepts PKCS#1 v1.5 or PSS with SHA-256.
    pub fn verify(&self, message: &[u8], sig: &[u8]) -> Result<()> {
        match self {
            Self::Ed25519(k) => {
                let s = ed25519_dalek::Signature::from_slice(sig).map_err(|_| self.malformed())?;
                // Pure Ed25519 (Sigstore, kcache), else Ed25519ph: cosign 2.x signs with
                // Ed25519ph when given an Ed25519 key (its default load options).
                k.verify(message, &s)
                    .or_else(|_| k.verify_prehashed(Sha512::new_with_prefix(message), None, &s))
                    .map_err(|_| self.bad())
            }
            Self::P256(_) => self.verify_with_hash(HashAlgorithm::Sha256, message, sig),
            Self::P384(_) => self
                .verify_with_hash(HashAlgorithm::Sha384, message, sig)
                .or_else(|e| match e {
                    KeyError::BadSignature { .. } => self.verify_with_hash(HashAlgorithm::Sha256, message, sig),
                    other => Err(other),
                }),
            Self::Rsa(_) => {
                let first = self.verify_digest(self.default_hash(), &self.default_hash().hash(message), sig);
                match first {
                    Err(KeyError::BadSignature { .. }) if matches!(self, Self::P384(_)) => {
                        self.verify_digest(HashAlgorithm::Sha256, &Sha256::digest(message), sig)
                    }
                    other => other,
                }
            }
        }
    }

    /// Verifies `sig` over `message` hashed with `hash` (certificates, timestamps: the hash their
    /// signature algorithm names). ECDSA P-256/P-384 with SHA-256/SHA-384 goes through ring, whose
    /// P-384 is ~10x RustCrypto's (most of a cold keyless verification was P-384 arithmetic:
    /// Fulcio's and the TSA's chains); the rest through [`Self::verify_digest`].
    pub fn verify_with_hash(&self, hash: HashAlgorithm, message: &[u8], sig: &[u8]) -> Result<()> {
        use ring::signature as rs;
        let (alg, point): (&'static rs::EcdsaVerificationAlgorithm, _) = match (self, hash) {
            (Self::P256(k), HashAlgorithm::Sha256) => (&rs::ECDSA_P256_SHA256_ASN1, k.to_encoded_point(false)),
            (Self::P256(k), HashAlgorithm::Sha384) => (&rs::ECDSA_P256_SHA384_ASN1, k.to_encoded_point(false)),
            (Self::P384(k), HashAlgorithm::Sha256) => {
                return rs::UnparsedPublicKey::new(&rs::ECDSA_P384_SHA256_ASN1, k.to_encoded_point(false).as_bytes())
                    .verify(message, sig)
                    .map_err(|_| self.ecdsa_failure(sig))
            }
            (Self::P384(k), HashAlgorithm::Sha384) => {
                return rs::UnparsedPublicKey::new(&rs::ECDSA_P384_SHA384_ASN1, k.to_encoded_point(false).as_bytes())
                    .verify(message, sig)
                    .map_err(|_| self.ecdsa_failure(sig))
            }
            _ => return self.verify_digest(hash, &hash.hash(message), sig),
        };
        rs::UnparsedPublicKey::new(alg, point.as_bytes())
            .verify(message, sig)
            .map_err(|_| self.ecdsa_failure(sig))
    }

    /// ring says only "no": tell a signature that is not DER ECDSA from one that does not verify.
    fn ecdsa_failure(&self, sig: &[u8]) -> KeyError {
        let der_ok = match self {
            Self::P256(_) => p256::ecdsa::DerSignature::try_from(sig).is_ok(),
            Self::P384(_) => p384::ecdsa::DerSignature::try_from(sig).is_ok(),
            _ => true,
        };
        if der_ok {
            self.bad()
        } else {
            self.malformed()
        }
    }

    /// Verifies `sig` over a message whose `hash`-digest is `digest`.
    pub fn verify_digest(&self, hash: HashAlgorithm, digest: &[u8], sig: &[u8]) -> Result<()> {
        match self {
            Self::Ed25519(_) => Err(KeyError::PrehashUnsupported),
            Self::P256(k) => {
                let s = p256::ecdsa::DerSignature::try_from(sig).map_err(|_| self.malformed())?;
                let s: p256::ecdsa::Signature = s.try_into().map_err(|_| self.malformed())?;
                k.verify_prehash(digest, &s).map_err(|_| self.bad())
            }
            Self::P384(k) => {
                let s = p384::ecdsa::DerSignature::try_from(sig).map_err(|_| self.malformed())?;
                let s: p384::ecdsa::Signature = s.try_into().map_err(|_| self.malformed())?;
                k.verify_prehash(digest, &s).map_err(|_| self.bad())
            }
            Self::Rsa(k) => {
                let (pkcs1, pss) = match hash {
                    HashAlgorithm::Sha256 => (rsa::Pkcs1v15Sign::new::<Sha256>(), rsa::Pss::new::<Sha256>()),
                    HashAlgorithm::Sha384 => (rsa::Pkcs1v15Sign::new::<Sha384>(), rsa::Pss::new::<Sha384>()),
                    HashAlgorithm::Sha512 => (rsa::Pkcs1v15Sign::new::<Sha512>(), rsa::Pss::new::<Sha512>()),
                };
                k.verify(pkcs1, digest, sig)
                    .or_else(|_| k.verify(pss, digest, sig))
                    .map_err(|_| self.bad())
            }
        }
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({} {})", self.algorithm(), self.fingerprint())
    }
}

/// Decodes the first PEM block in `text`: returns its label and DER bytes.
pub fn pem_decode(text: &str) -> Result<(String, Vec<u8>)> {
    let (label, der) = pem_blocks(text)?
        .into_iter()
        .next()
        .ok_or_else(|| KeyError::Pem("no PEM block found".into()))?;
    Ok((label, der))
}

/// Decodes every PEM block in `text`, in order (certificate chains).
pub fn pem_blocks(text: &str) -> Result<Vec<(String, Vec<u8>)>> {
    use base64::Engine as _;
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("-----BEGIN ") {
        let after = &rest[start + 11..];
        let label_end = after
            .find("-----")
            .ok_or_else(|| KeyError::Pem("unterminated BEGIN line".into()))?;
        let label = &after[..label_end];
        let body_start = &after[label_end + 5..];
        let end_marker = format!("-----END {label}-----");
        let end = body_start
            .find(&end_marker)
            .ok_or_else(|| KeyError::Pem(format!("missing END line for {label}")))?;
        let body: String = body_start[..end]
            .lines()
            .filter(|l| !l.contains(':')) // skip RFC 1421 headers, if any
            .flat_map(|l| l.trim().chars())
            .collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(body)
            .map_err(|e| KeyError::Pem(format!("bad base64 in {label}: {e}")))?;
        out.push((label.to_string(), der));
        rest = &body_start[end + end_marker.len()..];
    }
    Ok(out)
}

/// Encodes DER as PEM with 64-column lines.
pub fn pem_encode(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures");

    #[test]
    fn ring_and_rustcrypto_agree_on_ecdsa() {
        use crate::signing::PrivateKey;
        for sk in [PrivateKey::generate_p256(), PrivateKey::generate_p384()] {
            let pk = sk.public_key();
            let msg = b"kcache ring path";
            let sig = sk.sign(msg); // SHA-256 whatever the curve, as cosign signs
            pk.verify(msg, &sig).unwrap();
            pk.verify_with_hash(HashAlgorithm::Sha256, msg, &sig).unwrap();
            pk.verify_digest(HashAlgorithm::Sha256, &Sha256::digest(msg), &sig)
                .unwrap();
            assert!(matches!(
                pk.verify(b"another message", &sig),
                Err(KeyError::BadSignature { .. })
            ));
            assert!(matches!(
                pk.verify_with_hash(HashAlgorithm::Sha384, msg, &sig),
                Err(KeyError::BadSignature { .. })
            ));
            assert!(matches!(
                pk.verify(msg, b"not DER"),
                Err(KeyError::MalformedSignature { .. })
            ));
            let mut flipped = sig.clone();
            let last = flipped.len() - 1;
            flipped[last] ^= 1;
            assert!(pk.verify(msg, &flipped).is_err());
            // SHA-512 is not ring's for ECDSA: the RustCrypto path answers the same way.
            assert!(pk.verify_with_hash(HashAlgorithm::Sha512, msg, &sig).is_err());
        }
    }

    #[test]
    fn cosign_fixture_keys_load_as_p256_and_round_trip() {
        for name in ["cosign.pub", "cosign2.pub", "rekor.pub"] {
            let pem = std::fs::read(format!("{FIXTURES}/cosign-v2-containers-image/{name}")).unwrap();
            let k = PublicKey::from_pem(&pem).unwrap();
            assert_eq!(k.algorithm(), "ecdsa-p256");
            assert_eq!(PublicKey::from_pem(k.to_pem().as_bytes()).unwrap(), k);
            assert!(k.fingerprint().starts_with("SHA256:"));
        }
    }

    #[test]
    fn cosign_v2_key_only_fixture_signature_verifies_over_exact_payload() {
        let dir = format!("{FIXTURES}/cosign-v2-containers-image");
        let key = PublicKey::from_pem(&std::fs::read(format!("{dir}/cosign.pub")).unwrap()).unwrap();
        let other = PublicKey::from_pem(&std::fs::read(format!("{dir}/cosign2.pub")).unwrap()).unwrap();
        let raw = std::fs::read(format!("{dir}/dir-img-cosign-valid/signature-1")).unwrap();
        let json: serde_json::Value =
            serde_json::from_slice(&raw[raw.iter().position(|&b| b == b'\n').unwrap() + 1..]).unwrap();
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        let payload = b64.decode(json["payload"].as_str().unwrap()).unwrap();
        let sig = b64
            .decode(
                json["annotations"]["dev.cosignproject.cosign/signature"]
                    .as_str()
                    .unwrap(),
            )
            .unwrap();
        key.verify(&payload, &sig).unwrap();
        key.verify_digest(HashAlgorithm::Sha256, &Sha256::digest(&payload), &sig)
            .unwrap();
        assert!(matches!(
            other.verify(&payload, &sig),
            Err(KeyError::BadSignature { .. })
        ));
        let mut tampered = payload.clone();
        tampered[10] ^= 1;
        assert!(key.verify(&tampered, &sig).is_err());
        assert!(matches!(
            key.verify(&payload, b"junk"),
            Err(KeyError::MalformedSignature { .. })
        ));
    }

    #[test]
    fn ed25519_accepts_pure_and_prehashed_signatures_as_cosign_makes_them() {
        use ed25519_dalek::{Signer, SigningKey};
        let sk = SigningKey::from_bytes(&[7u8; 32]);
        let pk = PublicKey::Ed25519(sk.verifying_key());
        let msg = b"simple signing payload";
        pk.verify(msg, &sk.sign(msg).to_bytes()).unwrap();
        let ph = sk.sign_prehashed(Sha512::new_with_prefix(msg), None).unwrap();
        pk.verify(msg, &ph.to_bytes()).unwrap();
        assert!(pk.verify(b"other payload", &ph.to_bytes()).is_err());
        assert!(matches!(
            pk.verify_digest(HashAlgorithm::Sha256, &[0; 32], &ph.to_bytes()),
            Err(KeyError::PrehashUnsupported)
        ));
    }

    #[test]
    fn junk_pem_and_unsupported_keys_are_clear_errors() {
        assert!(matches!(PublicKey::from_pem(b"hello"), Err(KeyError::Pem(_))));
        let cert = pem_encode("CERTIFICATE", b"\x30\x00");
        assert!(matches!(PublicKey::from_pem(cert.as_bytes()), Err(KeyError::Pem(_))));
        let junk = pem_encode("PUBLIC KEY", b"\x30\x03\x02\x01\x00");
        assert!(matches!(
            PublicKey::from_pem(junk.as_bytes()),
            Err(KeyError::Unsupported(_))
        ));
    }
}

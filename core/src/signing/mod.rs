//! cosign-compatible private keys: generation, signing, and cosign's encrypted key files.
//!
//! What is supported:
//! - keys: ECDSA P-256 (cosign's default), ECDSA P-384, Ed25519; RSA 2048–4096 load and sign.
//! - signatures, as cosign verifies them with `--key`: ECDSA is ASN.1 DER over SHA-256, P-384
//!   included (cosign 2.5 signs `.sig` so; cosign 3.1 signs P-384 bundles with SHA-384 and then
//!   refuses them, since its `--key` verifier hashes with SHA-256); RSA is PKCS#1 v1.5 over
//!   SHA-256; Ed25519 is pure Ed25519 over the message. Note: cosign 2.x signs with Ed25519ph by default
//!   (`GetDefaultLoadOptions` in cosign `pkg/cosign/keys.go`); we do not make or check that.
//! - files: `ENCRYPTED SIGSTORE PRIVATE KEY` (written) and the older `ENCRYPTED COSIGN PRIVATE
//!   KEY` (read), see [`encrypted`]; plain `PRIVATE KEY` (PKCS#8), `EC PRIVATE KEY` (SEC1) and
//!   `RSA PRIVATE KEY` (PKCS#1), as `cosign import-key-pair` reads them.
//! - [`generate_key_pair`] / [`write_key_pair`]: what `cosign generate-key-pair` writes.

pub mod encrypted;
mod files;

use std::fmt;

use ecdsa::signature::Signer;
use pkcs8::{DecodePrivateKey, EncodePrivateKey};
use rand_core::OsRng;
use sha2::{Digest as _, Sha256};

pub use files::{generate_key_pair, password_from_env, write_key_pair, KeyPairPaths, PASSWORD_ENV};

use crate::keys::{pem_decode, pem_encode, KeyError, PublicKey, MIN_RSA_BITS};

/// PEM label cosign writes for encrypted private keys.
pub const SIGSTORE_PRIVATE_KEY_LABEL: &str = "ENCRYPTED SIGSTORE PRIVATE KEY";
/// PEM label older cosign wrote; still read.
pub const COSIGN_PRIVATE_KEY_LABEL: &str = "ENCRYPTED COSIGN PRIVATE KEY";
/// Largest RSA modulus accepted, in bits (sigstore's `goodkey` refuses larger ones too).
pub const MAX_RSA_BITS: usize = 4096;

/// Why a private key could not be loaded, encrypted or written.
#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    /// Not PEM.
    #[error("not a PEM private key")]
    Pem(#[source] KeyError),
    /// A PEM block of a kind we do not read.
    #[error("unsupported PEM label {0:?} (want {SIGSTORE_PRIVATE_KEY_LABEL}, PRIVATE KEY, EC PRIVATE KEY or RSA PRIVATE KEY)")]
    UnsupportedLabel(String),
    /// The encrypted key's JSON envelope is malformed.
    #[error("malformed encrypted private key envelope")]
    Envelope(#[source] serde_json::Error),
    /// The envelope names a KDF other than scrypt.
    #[error("unsupported key derivation function {0:?} (want scrypt)")]
    UnsupportedKdf(String),
    /// The envelope names a cipher other than NaCl secretbox.
    #[error("unsupported cipher {0:?} (want nacl/secretbox)")]
    UnsupportedCipher(String),
    /// scrypt parameters other than the three cosign/go-securesystemslib accept.
    #[error("unsupported scrypt parameters N={n}, r={r}, p={p}")]
    UnsupportedScryptParams {
        /// N.
        n: u64,
        /// r.
        r: u64,
        /// p.
        p: u64,
    },
    /// The secretbox nonce is not 24 bytes.
    #[error("secretbox nonce is {0} bytes, want 24")]
    BadNonce(usize),
    /// scrypt itself failed.
    #[error("scrypt key derivation failed")]
    KeyDerivation,
    /// secretbox sealing failed.
    #[error("secretbox encryption failed")]
    Encrypt,
    /// Authentication failed: the password is wrong (or the ciphertext was altered).
    #[error("wrong password for encrypted private key (or the key file is corrupted)")]
    WrongPassword,
    /// The (decrypted) key bytes are not a well-formed key of the expected format.
    #[error("malformed {format} private key")]
    MalformedKey {
        /// `PKCS#8`, `SEC1` or `PKCS#1`.
        format: &'static str,
        /// What the parser said.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A well-formed key of an algorithm or curve we do not sign with.
    #[error("unsupported private key algorithm {0}")]
    UnsupportedAlgorithm(String),
    /// RSA modulus outside 2048..=4096 bits.
    #[error("RSA key of {0} bits is outside {MIN_RSA_BITS}..={MAX_RSA_BITS}")]
    RsaKeySize(usize),
    /// PKCS#8 encoding failed.
    #[error("failed to encode private key as PKCS#8")]
    Encode(#[source] pkcs8::Error),
    /// Signing a digest failed.
    #[error("signing failed: {0}")]
    Sign(String),
    /// A key file exists and overwriting was not asked for.
    #[error("{0} already exists; refusing to overwrite it without force")]
    Exists(std::path::PathBuf),
    /// The key pair prefix is empty or contains a path separator.
    #[error("invalid key file prefix {0:?}")]
    BadPrefix(String),
    /// Writing a key file failed.
    #[error("failed to write {path}")]
    Write {
        /// The file being written.
        path: std::path::PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// Result alias for this module.
pub type Result<T> = std::result::Result<T, SigningError>;

fn malformed<E: std::error::Error + Send + Sync + 'static>(format: &'static str) -> impl FnOnce(E) -> SigningError {
    move |e| SigningError::MalformedKey {
        format,
        source: Box::new(e),
    }
}

/// A private key kcache can sign with.
#[derive(Clone)]
pub enum PrivateKey {
    /// ECDSA over NIST P-256.
    P256(p256::ecdsa::SigningKey),
    /// ECDSA over NIST P-384.
    P384(p384::ecdsa::SigningKey),
    /// Ed25519.
    Ed25519(ed25519_dalek::SigningKey),
    /// RSA, 2048 to 4096 bits.
    Rsa(rsa::RsaPrivateKey),
}

impl PrivateKey {
    /// A fresh ECDSA P-256 key: `cosign generate-key-pair`'s default.
    pub fn generate_p256() -> Self {
        Self::P256(p256::ecdsa::SigningKey::random(&mut OsRng))
    }

    /// A fresh ECDSA P-384 key.
    pub fn generate_p384() -> Self {
        Self::P384(p384::ecdsa::SigningKey::random(&mut OsRng))
    }

    /// A fresh Ed25519 key.
    pub fn generate_ed25519() -> Self {
        Self::Ed25519(ed25519_dalek::SigningKey::generate(&mut OsRng))
    }

    /// The matching public key.
    pub fn public_key(&self) -> PublicKey {
        match self {
            Self::P256(k) => PublicKey::P256(*k.verifying_key()),
            Self::P384(k) => PublicKey::P384(*k.verifying_key()),
            Self::Ed25519(k) => PublicKey::Ed25519(k.verifying_key()),
            Self::Rsa(k) => PublicKey::Rsa(k.to_public_key()),
        }
    }

    /// Signs `message` the way cosign does with `--key`; see the module docs for each algorithm.
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        match self {
            Self::P256(k) => {
                let s: p256::ecdsa::Signature = k.sign(message);
                s.to_der().as_bytes().to_vec()
            }
            Self::P384(k) => {
                use ecdsa::signature::hazmat::PrehashSigner;
                // A 32-byte prehash is within P-384's bounds, so signing cannot fail.
                PrehashSigner::<p384::ecdsa::Signature>::sign_prehash(k, &Sha256::digest(message))
                    .map(|s| s.to_der().as_bytes().to_vec())
                    .unwrap_or_default()
            }
            Self::Ed25519(k) => k.sign(message).to_bytes().to_vec(),
            Self::Rsa(k) => {
                // PKCS#1 v1.5 signing with a key of at least 2048 bits over a 32-byte digest
                // cannot fail; the key size was checked when it was loaded.
                k.sign(rsa::Pkcs1v15Sign::new::<Sha256>(), &Sha256::digest(message))
                    .unwrap_or_default()
            }
        }
    }

    /// PKCS#8 DER, as Go's `x509.MarshalPKCS8PrivateKey` writes it (Ed25519 as v1, no public key).
    pub fn to_pkcs8_der(&self) -> Result<pkcs8::SecretDocument> {
        match self {
            Self::P256(k) => k.to_pkcs8_der(),
            Self::P384(k) => k.to_pkcs8_der(),
            Self::Ed25519(k) => ed25519_dalek::pkcs8::KeypairBytes {
                secret_key: k.to_bytes(),
                public_key: None,
            }
            .to_pkcs8_der(),
            Self::Rsa(k) => k.to_pkcs8_der(),
        }
        .map_err(SigningError::Encode)
    }

    /// cosign's `cosign.key`: PEM `ENCRYPTED SIGSTORE PRIVATE KEY` around the encrypted PKCS#8.
    /// An empty password is allowed, as in cosign.
    pub fn to_encrypted_pem(&self, password: &[u8]) -> Result<String> {
        let der = self.to_pkcs8_der()?;
        let json = encrypted::encrypt(der.as_bytes(), password)?;
        Ok(pem_encode(SIGSTORE_PRIVATE_KEY_LABEL, &json))
    }

    /// Loads a private key from PEM. Encrypted cosign keys are decrypted with `password` and must
    /// hold PKCS#8, as in cosign's `LoadPrivateKey`; unencrypted keys ignore `password`.
    pub fn from_pem(pem: &[u8], password: &[u8]) -> Result<Self> {
        let text = std::str::from_utf8(pem).map_err(|_| SigningError::Pem(KeyError::Pem("not UTF-8".into())))?;
        let (label, der) = pem_decode(text).map_err(SigningError::Pem)?;
        match label.as_str() {
            SIGSTORE_PRIVATE_KEY_LABEL | COSIGN_PRIVATE_KEY_LABEL => {
                Self::from_pkcs8_der(&encrypted::decrypt(&der, password)?)
            }
            "PRIVATE KEY" => Self::from_pkcs8_der(&der),
            "EC PRIVATE KEY" => Self::from_sec1_der(&der),
            "RSA PRIVATE KEY" => {
                use rsa::pkcs1::DecodeRsaPrivateKey;
                let k = rsa::RsaPrivateKey::from_pkcs1_der(&der).map_err(|e| SigningError::MalformedKey {
                    format: "PKCS#1",
                    source: Box::new(e),
                })?;
                Self::checked_rsa(k)
            }
            other => Err(SigningError::UnsupportedLabel(other.to_string())),
        }
    }

    /// Loads a PKCS#8 `PrivateKeyInfo`.
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self> {
        use const_oid::db::{rfc5912, rfc8410};
        let info = pkcs8::PrivateKeyInfo::try_from(der).map_err(malformed("PKCS#8"))?;
        let oid = info.algorithm.oid;
        if oid == rfc5912::ID_EC_PUBLIC_KEY {
            let curve = info.algorithm.parameters_oid().map_err(malformed("PKCS#8"))?;
            if curve == rfc5912::SECP_256_R_1 {
                return p256::ecdsa::SigningKey::from_pkcs8_der(der)
                    .map(Self::P256)
                    .map_err(malformed("PKCS#8"));
            }
            if curve == rfc5912::SECP_384_R_1 {
                return p384::ecdsa::SigningKey::from_pkcs8_der(der)
                    .map(Self::P384)
                    .map_err(malformed("PKCS#8"));
            }
            return Err(SigningError::UnsupportedAlgorithm(format!("EC curve {curve}")));
        }
        if oid == rfc8410::ID_ED_25519 {
            return ed25519_dalek::SigningKey::from_pkcs8_der(der)
                .map(Self::Ed25519)
                .map_err(malformed("PKCS#8"));
        }
        if oid == rfc5912::RSA_ENCRYPTION {
            let k = rsa::RsaPrivateKey::from_pkcs8_der(der).map_err(malformed("PKCS#8"))?;
            return Self::checked_rsa(k);
        }
        Err(SigningError::UnsupportedAlgorithm(oid.to_string()))
    }

    /// Loads a SEC1 `ECPrivateKey` (P-256 or P-384; the curve is told by the key length and,
    /// when present, the parameters).
    pub fn from_sec1_der(der: &[u8]) -> Result<Self> {
        if let Ok(k) = p256::SecretKey::from_sec1_der(der) {
            return Ok(Self::P256(k.into()));
        }
        p384::SecretKey::from_sec1_der(der)
            .map(|k| Self::P384(k.into()))
            .map_err(|e| SigningError::MalformedKey {
                format: "SEC1",
                source: Box::new(e),
            })
    }

    fn checked_rsa(k: rsa::RsaPrivateKey) -> Result<Self> {
        use rsa::traits::PublicKeyParts;
        let bits = k.size() * 8;
        if !(MIN_RSA_BITS..=MAX_RSA_BITS).contains(&bits) {
            return Err(SigningError::RsaKeySize(bits));
        }
        Ok(Self::Rsa(k))
    }
}

/// Never prints key material: only the algorithm and the public key's fingerprint.
impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let public = self.public_key();
        write!(f, "PrivateKey({} {})", public.algorithm(), public.fingerprint())
    }
}

// What clippy.toml's `allow-unwrap-in-tests` would do (STYLE.md §3); the workspace has none yet.
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests;

//! cosign's password-encrypted key envelope: scrypt + NaCl secretbox, as JSON.
//!
//! This is go-securesystemslib's `encrypted` package (`Encrypt`/`Decrypt`), which cosign uses
//! for `cosign.key`. The PEM body is compact JSON with the fields in this order:
//!
//! ```text
//! {"kdf":{"name":"scrypt","params":{"N":65536,"r":8,"p":1},"salt":"<b64, 32 bytes>"},
//!  "cipher":{"name":"nacl/secretbox","nonce":"<b64, 24 bytes>"},"ciphertext":"<b64>"}
//! ```
//!
//! key = scrypt(password, salt, N, r, p, 32); ciphertext = secretbox(plaintext), Poly1305 tag
//! first. Encryption uses the "Standard" parameters (N=2^16, r=8, p=1), as `encrypted.Encrypt`
//! does today. Decryption accepts exactly the three parameter sets Go accepts (`CheckParams`:
//! Legacy N=2^15, which older cosign wrote; Standard; OWASP N=2^17), so a hostile file cannot
//! make us allocate more than 128 MiB or spin for minutes.

use base64::{engine::general_purpose::STANDARD as B64, Engine as _};
use crypto_secretbox::{
    aead::{Aead, KeyInit},
    Key, Nonce, XSalsa20Poly1305,
};
use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{Result, SigningError};

const KDF_SCRYPT: &str = "scrypt";
const CIPHER_SECRETBOX: &str = "nacl/secretbox";
const SALT_LEN: usize = 32;
const NONCE_LEN: usize = 24;
const KEY_LEN: usize = 32;

/// scrypt cost parameters as they appear in the envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScryptParams {
    /// CPU/memory cost (a power of two).
    #[serde(rename = "N")]
    pub n: u64,
    /// Block size.
    pub r: u64,
    /// Parallelism.
    pub p: u64,
}

impl ScryptParams {
    /// go-securesystemslib `Legacy`: what older cosign releases wrote (and cosign still reads).
    pub const LEGACY: Self = Self { n: 1 << 15, r: 8, p: 1 };
    /// go-securesystemslib `Standard`: the default for new keys.
    pub const STANDARD: Self = Self { n: 1 << 16, r: 8, p: 1 };
    /// go-securesystemslib `OWASP`.
    pub const OWASP: Self = Self { n: 1 << 17, r: 8, p: 1 };

    /// The only parameter sets Go's `CheckParams` lets through.
    fn check(self) -> Result<scrypt::Params> {
        if ![Self::LEGACY, Self::STANDARD, Self::OWASP].contains(&self) {
            return Err(SigningError::UnsupportedScryptParams {
                n: self.n,
                r: self.r,
                p: self.p,
            });
        }
        // All three are powers of two with r=8, p=1: the conversions cannot fail.
        scrypt::Params::new(self.n.trailing_zeros() as u8, self.r as u32, self.p as u32, KEY_LEN).map_err(|_| {
            SigningError::UnsupportedScryptParams {
                n: self.n,
                r: self.r,
                p: self.p,
            }
        })
    }
}

#[derive(Serialize, Deserialize)]
struct Envelope {
    kdf: Kdf,
    cipher: Cipher,
    #[serde(with = "b64")]
    ciphertext: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
struct Kdf {
    name: String,
    params: ScryptParams,
    #[serde(with = "b64")]
    salt: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
struct Cipher {
    name: String,
    #[serde(with = "b64")]
    nonce: Vec<u8>,
}

/// Go's `[]byte` JSON encoding: standard, padded base64.
mod b64 {
    use super::*;

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&B64.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        B64.decode(s).map_err(serde::de::Error::custom)
    }
}

fn derive_key(password: &[u8], salt: &[u8], params: &scrypt::Params) -> Result<[u8; KEY_LEN]> {
    let mut key = [0u8; KEY_LEN];
    scrypt::scrypt(password, salt, params, &mut key).map_err(|_| SigningError::KeyDerivation)?;
    Ok(key)
}

/// Encrypts `plaintext` under `password` with the given scrypt parameters; returns the JSON.
pub(crate) fn encrypt_with(plaintext: &[u8], password: &[u8], params: ScryptParams) -> Result<Vec<u8>> {
    let scrypt_params = params.check()?;
    let mut salt = vec![0u8; SALT_LEN];
    let mut nonce = vec![0u8; NONCE_LEN];
    OsRng.fill_bytes(&mut salt);
    OsRng.fill_bytes(&mut nonce);
    let key = derive_key(password, &salt, &scrypt_params)?;
    let ciphertext = XSalsa20Poly1305::new(Key::from_slice(&key))
        .encrypt(Nonce::from_slice(&nonce), plaintext)
        .map_err(|_| SigningError::Encrypt)?;
    let envelope = Envelope {
        kdf: Kdf {
            name: KDF_SCRYPT.into(),
            params,
            salt,
        },
        cipher: Cipher {
            name: CIPHER_SECRETBOX.into(),
            nonce,
        },
        ciphertext,
    };
    serde_json::to_vec(&envelope).map_err(SigningError::Envelope)
}

/// Encrypts with the default (Standard) parameters, as `encrypted.Encrypt` does.
pub(crate) fn encrypt(plaintext: &[u8], password: &[u8]) -> Result<Vec<u8>> {
    encrypt_with(plaintext, password, ScryptParams::STANDARD)
}

/// Decrypts an envelope. Names, parameters and nonce are checked before any scrypt work.
pub(crate) fn decrypt(json: &[u8], password: &[u8]) -> Result<Vec<u8>> {
    let env: Envelope = serde_json::from_slice(json).map_err(SigningError::Envelope)?;
    if env.kdf.name != KDF_SCRYPT {
        return Err(SigningError::UnsupportedKdf(env.kdf.name));
    }
    if env.cipher.name != CIPHER_SECRETBOX {
        return Err(SigningError::UnsupportedCipher(env.cipher.name));
    }
    let params = env.kdf.params.check()?;
    if env.cipher.nonce.len() != NONCE_LEN {
        return Err(SigningError::BadNonce(env.cipher.nonce.len()));
    }
    let key = derive_key(password, &env.kdf.salt, &params)?;
    // secretbox authenticates: a wrong password and a tampered ciphertext look the same, and
    // the wrong password is by far the likelier cause.
    XSalsa20Poly1305::new(Key::from_slice(&key))
        .decrypt(Nonce::from_slice(&env.cipher.nonce), env.ciphertext.as_slice())
        .map_err(|_| SigningError::WrongPassword)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    /// An input and the error it must give.
    type Case = (String, fn(&SigningError) -> bool);

    /// go-securesystemslib `encrypted/encrypted_test.go` `kdfVectors` (made by `Marshal`, so the
    /// plaintext is the JSON of `[]byte("reallyimportant")`) and `TestDecrypt` (made by `Encrypt`,
    /// raw plaintext), all under "supersecret": one per accepted parameter set.
    const GO_VECTORS: [&str; 4] = [
        r#"{"kdf":{"name":"scrypt","params":{"N":32768,"r":8,"p":1},"salt":"WO3mVvyTwJ9vwT5/Tk5OW5WPIBUofMjcpEfrLnfY4uA="},"cipher":{"name":"nacl/secretbox","nonce":"tCy7HcTFr4uxv4Nrg/DWmncuZ148U1MX"},"ciphertext":"08n43p5G5yviPEZpO7tPPF4aZQkWiWjkv4taFdhDBA0tamKH4nw="}"#,
        r#"{"kdf":{"name":"scrypt","params":{"N":65536,"r":8,"p":1},"salt":"FhzPOt9/bJG4PTq6lQ6ecG6GzaOuOy/ynG5+yRiFlNs="},"cipher":{"name":"nacl/secretbox","nonce":"aw1ng1jHaDz/tQ7V2gR9O2+IGQ8xJEuE"},"ciphertext":"HycvuLZL4sYH0BrYTh4E/H20VtAW6u5zL5Pr+IBjYLYnCPzDkq8="}"#,
        r#"{"kdf":{"name":"scrypt","params":{"N":131072,"r":8,"p":1},"salt":"m38E3kouJTtiheLQN22NQ8DTito5hrjpUIskqcd375k="},"cipher":{"name":"nacl/secretbox","nonce":"Y6PM13yA+o44pE/W1ZBwczeGnTV/m9Zc"},"ciphertext":"6H8sqj1K6B6yDjtH5AQ6lbFigg/C2yDDJc4rYJ79w9aVPImFIPI="}"#,
        r#"{"kdf":{"name":"scrypt","params":{"N":32768,"r":8,"p":1},"salt":"N9a7x5JFGbrtB2uBR81jPwp0eiLR4A7FV3mjVAQrg1g="},"cipher":{"name":"nacl/secretbox","nonce":"2h8HxMmgRfuYdpswZBQaU3xJ1nkA/5Ik"},"ciphertext":"SEW6sUh0jf2wfdjJGPNS9+bkk2uB+Cxamf32zR8XkQ=="}"#,
    ];

    #[test]
    fn go_securesystemslib_vectors_decrypt_for_every_accepted_parameter_set() {
        let marshalled = format!("\"{}\"", B64.encode("reallyimportant"));
        for v in &GO_VECTORS[..3] {
            assert_eq!(
                decrypt(v.as_bytes(), b"supersecret").unwrap(),
                marshalled.as_bytes(),
                "{v}"
            );
        }
        assert_eq!(
            decrypt(GO_VECTORS[3].as_bytes(), b"supersecret").unwrap(),
            b"reallyimportant"
        );
    }

    #[test]
    fn go_vector_with_wrong_password_is_wrong_password() {
        assert!(matches!(
            decrypt(GO_VECTORS[0].as_bytes(), b"supersecreT"),
            Err(SigningError::WrongPassword)
        ));
    }

    #[test]
    fn envelope_json_has_go_field_order_and_standard_params() {
        let json = String::from_utf8(encrypt(b"x", b"pw").unwrap()).unwrap();
        assert!(
            json.starts_with(r#"{"kdf":{"name":"scrypt","params":{"N":65536,"r":8,"p":1},"salt":""#),
            "{json}"
        );
        assert!(
            json.contains(r#""},"cipher":{"name":"nacl/secretbox","nonce":""#),
            "{json}"
        );
        let env: Envelope = serde_json::from_str(&json).unwrap();
        assert_eq!((env.kdf.salt.len(), env.cipher.nonce.len()), (SALT_LEN, NONCE_LEN));
        assert_eq!(env.ciphertext.len(), 1 + 16);
    }

    #[test]
    fn tampered_ciphertext_is_refused() {
        let mut env: Envelope = serde_json::from_slice(&encrypt(b"secret key", b"pw").unwrap()).unwrap();
        env.ciphertext[20] ^= 1;
        let json = serde_json::to_vec(&env).unwrap();
        assert!(matches!(decrypt(&json, b"pw"), Err(SigningError::WrongPassword)));
    }

    #[test]
    fn hostile_scrypt_params_are_refused_before_any_work() {
        // go-securesystemslib TestUnsupportedKDFParameters, plus memory bombs: N=2^30
        // (128 GiB at r=8), r*p large, and a non-power-of-two N.
        let cases = [
            (99, 99, 99),
            (1 << 30, 8, 1),
            (1 << 15, 8, 1 << 20),
            (1 << 15, 1 << 20, 1),
            (65535, 8, 1),
            (1 << 16, 8, 2),
        ];
        for (n, r, p) in cases {
            let json = GO_VECTORS[1].replace(r#""N":65536,"r":8,"p":1"#, &format!(r#""N":{n},"r":{r},"p":{p}"#));
            let start = Instant::now();
            let err = decrypt(json.as_bytes(), b"supersecret").unwrap_err();
            assert!(matches!(err, SigningError::UnsupportedScryptParams { .. }), "{err}");
            assert!(start.elapsed() < Duration::from_millis(50));
        }
    }

    #[test]
    fn junk_envelopes_are_clear_errors() {
        let bad_nonce = GO_VECTORS[0].replace("tCy7HcTFr4uxv4Nrg/DWmncuZ148U1MX", "AAAA");
        let cases: Vec<Case> = vec![
            ("not json".into(), |e| matches!(e, SigningError::Envelope(_))),
            (r#"{"kdf":{}}"#.into(), |e| matches!(e, SigningError::Envelope(_))),
            (GO_VECTORS[0].replace("\"salt\":\"WO3", "\"salt\":\"!!!"), |e| {
                matches!(e, SigningError::Envelope(_))
            }),
            (GO_VECTORS[0].replace("\"scrypt\"", "\"argon2\""), |e| {
                matches!(e, SigningError::UnsupportedKdf(_))
            }),
            (GO_VECTORS[0].replace("nacl/secretbox", "aes-gcm"), |e| {
                matches!(e, SigningError::UnsupportedCipher(_))
            }),
            (bad_nonce, |e| matches!(e, SigningError::BadNonce(3))),
            (GO_VECTORS[0].replace("\"N\":32768", "\"N\":-1"), |e| {
                matches!(e, SigningError::Envelope(_))
            }),
        ];
        for (json, want) in cases {
            let err = decrypt(json.as_bytes(), b"supersecret").unwrap_err();
            assert!(want(&err), "{json}: {err}");
        }
    }
}

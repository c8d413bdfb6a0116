//! Content digests as OCI writes them: `<algorithm>:<lowercase hex>`.

use std::{fmt, str::FromStr};

/// A validated content digest. Only `sha256` (64 hex) and `sha512` (128 hex) are accepted, as in
/// the OCI image spec's registered algorithms; anything else is refused at parse time so that a
/// hostile string never reaches a path or a URL.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Digest(String);

/// Why a string is not a digest.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DigestError {
    /// No `algorithm:` prefix.
    #[error("digest {0:?} has no algorithm prefix (want sha256:<hex>)")]
    NoAlgorithm(String),
    /// Algorithm other than sha256/sha512.
    #[error("digest {0:?} uses an unsupported algorithm (want sha256 or sha512)")]
    UnsupportedAlgorithm(String),
    /// Wrong length or non-lowercase-hex characters.
    #[error("digest {0:?} is not lowercase hex of the right length")]
    BadHex(String),
}

impl Digest {
    /// Parses and validates `sha256:<64 hex>` or `sha512:<128 hex>`.
    pub fn parse(s: &str) -> Result<Self, DigestError> {
        let (alg, hex) = s
            .split_once(':')
            .ok_or_else(|| DigestError::NoAlgorithm(s.to_string()))?;
        let want = match alg {
            "sha256" => 64,
            "sha512" => 128,
            _ => return Err(DigestError::UnsupportedAlgorithm(s.to_string())),
        };
        if hex.len() != want || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(DigestError::BadHex(s.to_string()));
        }
        Ok(Self(s.to_string()))
    }

    /// The sha256 digest of `bytes`.
    #[cfg(any(feature = "verify", feature = "cache"))]
    pub fn sha256_of(bytes: &[u8]) -> Self {
        use sha2::{Digest as _, Sha256};
        Self(format!("sha256:{}", hex::encode(Sha256::digest(bytes))))
    }

    /// Builds a sha256 digest from raw hash bytes.
    #[cfg(any(feature = "verify", feature = "cache"))]
    pub fn from_sha256_bytes(hash: &[u8; 32]) -> Self {
        Self(format!("sha256:{}", hex::encode(hash)))
    }

    /// Whether `bytes` hash to this digest.
    #[cfg(feature = "verify")]
    pub fn matches(&self, bytes: &[u8]) -> bool {
        use sha2::{Digest as _, Sha256, Sha512};
        match self.algorithm() {
            "sha256" => hex::encode(Sha256::digest(bytes)) == self.hex(),
            _ => hex::encode(Sha512::digest(bytes)) == self.hex(),
        }
    }

    /// `sha256` or `sha512`.
    pub fn algorithm(&self) -> &str {
        self.0.split_once(':').map(|(a, _)| a).unwrap_or_default()
    }

    /// The hex part.
    pub fn hex(&self) -> &str {
        self.0.split_once(':').map(|(_, h)| h).unwrap_or_default()
    }

    /// The raw hash bytes.
    #[cfg(feature = "verify")]
    pub fn bytes(&self) -> Vec<u8> {
        hex::decode(self.hex()).unwrap_or_default()
    }

    /// The whole `alg:hex` string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// cosign's tag for objects about this digest: `sha256-<hex>` (with `.sig`, `.att` suffixes
    /// for v2, bare for the v3 referrers-tag fallback).
    pub fn tag_prefix(&self) -> String {
        format!("{}-{}", self.algorithm(), self.hex())
    }
}

impl FromStr for Digest {
    type Err = DigestError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<String> for Digest {
    type Error = DigestError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<Digest> for String {
    fn from(d: Digest) -> String {
        d.0
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_parse_only_when_well_formed() {
        let good = format!("sha256:{}", "a".repeat(64));
        assert_eq!(Digest::parse(&good).unwrap().hex(), "a".repeat(64));
        for bad in [
            "sha256".to_string(),
            format!("md5:{}", "a".repeat(32)),
            format!("sha256:{}", "A".repeat(64)),
            format!("sha256:{}", "a".repeat(63)),
            format!("sha256:{}/../x", "a".repeat(58)),
        ] {
            assert!(Digest::parse(&bad).is_err(), "{bad} accepted");
        }
    }

    #[cfg(feature = "verify")]
    #[test]
    fn sha256_of_matches_known_vector() {
        let d = Digest::sha256_of(b"abc");
        assert_eq!(
            d.hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(d.matches(b"abc"));
        assert!(!d.matches(b"abd"));
        assert_eq!(d.tag_prefix(), format!("sha256-{}", d.hex()));
    }
}

//! Offline Sigstore verification: bundles (v0.1–v0.3), Fulcio certificates, Rekor (v1 and v2)
//! transparency-log proofs and RFC 3161 timestamps, all against a local `trusted_root.json`.
//!
//! Nothing here touches the network: trust material is injected as a [`TrustedRoot`].

pub mod identity;
pub mod trust_root;

pub use identity::{Identity, Matcher, MatcherError};
pub use trust_root::{TrustRootError, TrustedRoot};

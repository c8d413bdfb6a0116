//! Offline Sigstore verification: bundles (v0.1–v0.3), Fulcio certificates, Rekor (v1 and v2)
//! transparency-log proofs and RFC 3161 timestamps, all against a local `trusted_root.json`.
//!
//! Nothing here touches the network: trust material is injected as a [`TrustedRoot`].
//! The pipeline's steps are numbered in [`verify`].

pub mod bundle;
pub mod cert;
pub mod identity;
pub mod tlog;
pub mod trust_root;
pub mod tsa;
pub mod verify;

pub use bundle::Bundle;
pub use identity::{Identity, Matcher, MatcherError};
pub use trust_root::{TrustRootError, TrustedRoot};
pub use verify::{verify, Artifact, Options, Signer, SignerInfo, TlogPolicy, Verified, VerifyError};

//! cosign signatures on OCI images, verified through the one Sigstore pipeline
//! ([`crate::sigstore::verify`]):
//!
//! - **v2** ([`v2`]): the `sha256-<hex>.sig` manifest; each layer is a simple-signing payload
//!   with the signature, certificate and Rekor SET in its annotations. Every layer is tried on
//!   its own, and a layer passes only if *one* authority verifies its signature, certificate,
//!   identity and log entry together (sigstore-rs 0.15 let different layers satisfy different
//!   constraints and accepted keyless signatures that did not match the certificate's key).
//! - **v3** ([`v3`]): Sigstore bundles attached as OCI 1.1 referrers (or under the
//!   `sha256-<hex>` referrers tag where the registry lacks the API): a DSSE in-toto statement
//!   whose subject is the image digest, or a message signature over the digest itself.
//!
//! What was signed is always the manifest *digest* being verified; a tag is never trusted.

pub mod sign;
pub mod v2;
pub mod v3;

/// Which cosign format a signature came in: the one signature-format type, which policy rules
/// name too.
pub use crate::api::SignatureFormat as Format;

//! kcache-core: every decision kcache makes lives here; the binaries only parse, wire up and exit.
//!
//! - [`api`]: the kcache API's wire types (verdicts, policy and gate status), defined once for
//!   kcached and its clients; the typed client behind the `api-client` feature.
//! - [`digest`]: content digests (`sha256:<hex>`), the identity of everything kcache verifies.
//! - [`keys`]: public keys (ECDSA P-256/P-384, Ed25519, RSA) and signature checks.
//! - [`signing`]: cosign-compatible key pairs and signing, for air-gapped users and tests.
//! - [`sigstore`]: offline Sigstore bundle verification against a local `trusted_root.json`.
//! - [`policy`]: the YAML verification policy (`policy.yaml` + `policy.d/`).
//! - [`registry`]: a small, bounded OCI distribution client.
//! - [`cosign`]: cosign v2 (`.sig`) and v3 (bundle referrers) signatures on images.
//! - [`verifier`]: the image verification pipeline and its verdicts.
//! - [`verdict`]: the verdict cache shared by the daemon and the CLI.
//! - [`cache`]: kernel cache images (GKM/MCV format, Triton metadata, `__grp__` relocation).
//! - [`gpu`]: the node's GPUs (NVML, KFD sysfs, a pinned file) and cache compatibility.
//! - [`image_verifier`]: what containerd 2.x's bindir image verifier accepts as a request.
//! - [`paths`]: the node's default paths, defined once.
//! - [`refusal`]: the line every kcache refusal of an image carries (gate and image verifier).
//! - [`containerd`]: containerd's configuration as kcache installs, checks and removes it
//!   (feature `containerd`).
//! - [`snapshot`]: the overlay snapshotter behind the containerd proxy snapshotter (feature
//!   `snapshotter`).
//!
//! Everything except [`digest`], [`cache`]'s metadata and [`gpu`] sits behind the `verify` feature, so the OCI hook links no
//! crypto, tokio or network code.
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![warn(clippy::unwrap_used, clippy::panic)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::panic))]

pub mod api;
pub mod cache;
#[cfg(feature = "containerd")]
pub mod containerd;
pub mod digest;
pub mod fsutil;
pub mod gpu;
pub mod paths;
pub mod refusal;
#[cfg(feature = "snapshotter")]
pub mod snapshot;

#[cfg(feature = "verify")]
pub mod cosign;
#[cfg(feature = "verify")]
pub mod image_verifier;
#[cfg(feature = "verify")]
pub mod keys;
#[cfg(feature = "verify")]
pub mod policy;
#[cfg(feature = "verify")]
pub mod registry;
#[cfg(feature = "verify")]
pub mod signing;
#[cfg(feature = "verify")]
pub mod sigstore;
#[cfg(feature = "verify")]
pub mod verdict;
#[cfg(feature = "verify")]
pub mod verifier;

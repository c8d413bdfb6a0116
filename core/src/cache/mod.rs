//! Kernel cache images (GKM/MCV format) and what a node needs to know about them.
//!
//! [`meta`] holds the types every side shares (daemon, CLI, the OCI hook): no heavy
//! dependencies, so the hook can read them. [`extract`] (feature `cache`) unpacks a cache
//! image layer into the store, safely.

#[cfg(feature = "cache")]
pub mod extract;
pub mod meta;

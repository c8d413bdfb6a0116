//! Kernel cache images (GKM/MCV format) and what a node needs to know about them.
//!
//! [`meta`] holds the types every side shares (daemon, CLI, the OCI hook): no heavy
//! dependencies, so the hook can read them.

#[cfg(feature = "cache")]
pub mod builder;
pub mod format;
pub mod grp;
pub mod meta;
pub mod triton;

//! kcache-controller: kcache's Kubernetes side.
//!
//! - [`crd`]: the `kcache.dev/v1alpha1` API (TrustPolicy, TrustRoot, KernelCache,
//!   ClusterKernelCache, KernelCacheNode).
//! - [`render`], [`files`], [`validate`]: objects into node files, written atomically, checked by
//!   the node's own policy loader.
//!
//! The cluster objects carry policy and report status, never trust: every node verifies what it
//! pulls under its own policy, and kcached keeps enforcing its last good policy when the API
//! server or this controller is gone.

#![forbid(unsafe_code)]
#![warn(clippy::unwrap_used, clippy::panic)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::panic))]

pub mod agent;
pub mod aggregate;
pub mod apply;
pub mod crd;
pub mod error;
pub mod files;
pub mod guard;
pub mod metrics;
pub mod render;
pub mod run;
pub mod validate;

pub use error::Error;

/// An error and its causes on one line: `what: cause: cause`.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

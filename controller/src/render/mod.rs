//! Cluster objects rendered into node files: TrustPolicies into policy.d fragments (plus the
//! key and trusted-root files they name), KernelCaches into caches.d entries.
//!
//! Pure functions from objects to bytes; [`crate::files`] writes them.

mod caches;
mod policy;

pub use caches::{render_cache, CacheEntry};
pub use policy::{fragment_name, material_dir, render_policy, RenderError, RenderedPolicy, TrustRoots};

/// Every file the agent writes starts with this (YAML comment), so it can tell its own files
/// from the admin's and never removes the admin's.
pub const HEADER_MARK: &str = "# kcache-controller:";

/// Prefix of the agent's file names in policy.d and caches.d.
pub const FILE_PREFIX: &str = "kcache-cluster-";

/// The directory inside policy.d that holds the agent's key and trusted-root files (a
/// directory, so the policy loader never takes them for fragments).
pub const MATERIAL_DIR: &str = "kcache-cluster.d";

/// A file-name-safe form of an object name (`[a-z0-9.-]` already, per Kubernetes; anything
/// else becomes `_`).
pub fn safe(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

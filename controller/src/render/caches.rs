//! KernelCache and ClusterKernelCache as caches.d entries (the shape `kcache_core::cache::approved`
//! reads).

use serde::Serialize;

use super::{safe, FILE_PREFIX, HEADER_MARK};

/// One approved cache, as the agent writes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CacheEntry {
    /// The name pods use.
    pub name: String,
    /// None for a ClusterKernelCache.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// What the node pulls: `repo@digest` once the controller resolved the tag, else as written.
    pub image: String,
}

/// The caches.d file name and content for one cache. `resolved` is status.resolvedDigest: when
/// set, the node pulls exactly that digest (the tag stays in the reference for people).
pub fn render_cache(
    name: &str,
    namespace: Option<&str>,
    image: &str,
    resolved: Option<&str>,
) -> (String, CacheEntry, Vec<u8>) {
    let pinned = match resolved {
        Some(d) if !image.contains('@') => format!("{image}@{d}"),
        _ => image.to_string(),
    };
    let entry = CacheEntry {
        name: name.to_string(),
        namespace: namespace.map(str::to_string),
        image: pinned,
    };
    let (file, what) = match namespace {
        Some(ns) => (
            format!("{FILE_PREFIX}kernelcache-{}.{}.yaml", safe(ns), safe(name)),
            format!("KernelCache {ns}/{name}"),
        ),
        None => (
            format!("{FILE_PREFIX}clusterkernelcache-{}.yaml", safe(name)),
            format!("ClusterKernelCache {name}"),
        ),
    };
    let body = serde_yaml::to_string(&[&entry]).unwrap_or_default();
    let text = format!(
        "{HEADER_MARK} {what}. Written by the node agent; edits are overwritten, and the file goes \
         when the object does.\n{body}"
    );
    (file, entry, text.into_bytes())
}

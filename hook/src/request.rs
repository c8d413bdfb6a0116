//! What a container asks for, from its annotations.
//!
//! - `kcache.dev/cache: <name>`: opt in; the name of an approved cache (never a path, a digest
//!   or a verdict: what it resolves to is decided by the node's store).
//! - `kcache.dev/cache-required: "true" | "false"`: fail the start when the cache cannot be
//!   mounted (default false: start without it and log why).
//! - `kcache.dev/cache-path: <absolute path>`: where to mount it inside the container.
//!
//! The pod's namespace comes from the runtime, not the pod: containerd's CRI plugin sets
//! `io.kubernetes.cri.sandbox-namespace` (and passes only `kcache.dev/*` pod annotations through,
//! with `pod_annotations`), CRI-O sets `io.kubernetes.pod.namespace`. A runtime that passes pod
//! annotations through could let a pod add the other key; so when both are there and differ, the
//! request is refused rather than trusting either.

use std::collections::BTreeMap;

/// The opt-in annotation.
pub use kcache_core::cache::optin::CACHE;
/// Fail the start without the cache.
pub const REQUIRED: &str = "kcache.dev/cache-required";
/// The mount path inside the container.
pub const PATH: &str = "kcache.dev/cache-path";
/// containerd's CRI plugin: the sandbox's namespace.
pub const CRI_NAMESPACE: &str = "io.kubernetes.cri.sandbox-namespace";
/// CRI-O (and the kubelet's pod labels): the pod's namespace.
pub const POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
pub use kcache_core::cache::optin::{CRIO_CONTAINER_TYPE, CRI_CONTAINER_TYPE};

/// A container's opt-in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The cache name as written (validated by [`Request::check`]).
    pub name: String,
    /// The pod's namespace, if the runtime said.
    pub namespace: Option<String>,
    /// `kcache.dev/cache-required`, as written.
    pub required_raw: Option<String>,
    /// `kcache.dev/cache-path`, as written.
    pub path: Option<String>,
    /// Other `kcache.dev/` annotations, ignored (logged).
    pub unknown: Vec<String>,
    /// Both namespace keys, with different values: (CRI, pod).
    pub namespace_conflict: Option<(String, String)>,
}

/// Why a request is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The cache name is not a name.
    #[error("{CACHE} {0:?} is not a cache name (lowercase letters, digits, '-', '.', '_'; at most 253)")]
    BadName(String),
    /// `cache-required` is neither `true` nor `false`.
    #[error("{REQUIRED} must be \"true\" or \"false\", not {0:?}")]
    BadRequired(String),
    /// The two namespace annotations disagree.
    #[error("{CRI_NAMESPACE} {0:?} and {POD_NAMESPACE} {1:?} disagree; refusing to guess the pod's namespace")]
    NamespaceConflict(String, String),
}

impl Request {
    /// The request in `annotations`; `None` when the container did not opt in. A pod's sandbox
    /// (pause) container never opts in: containerd and CRI-O give it the pod's annotations too.
    pub fn from_annotations(annotations: &BTreeMap<String, String>) -> Option<Self> {
        if !kcache_core::cache::optin::opts_in(|k| annotations.get(k).map(String::as_str)) {
            return None;
        }
        let name = annotations.get(CACHE)?.clone();
        let get = |k| annotations.get(k).filter(|ns: &&String| !ns.is_empty());
        let (cri, pod) = (get(CRI_NAMESPACE), get(POD_NAMESPACE));
        let namespace_conflict = match (cri, pod) {
            (Some(a), Some(b)) if a != b => Some((a.clone(), b.clone())),
            _ => None,
        };
        let namespace = cri.or(pod).cloned();
        let unknown = annotations
            .keys()
            .filter(|k| k.starts_with("kcache.dev/") && ![CACHE, REQUIRED, PATH].contains(&k.as_str()))
            .cloned()
            .collect();
        Some(Self {
            name,
            namespace,
            required_raw: annotations.get(REQUIRED).cloned(),
            path: annotations.get(PATH).cloned(),
            unknown,
            namespace_conflict,
        })
    }

    /// Whether the start must fail without the cache. A value other than `true`/`false` is an
    /// error, and fails the start: the container asked for something, not clearly what.
    pub fn required(&self) -> Result<bool, RequestError> {
        match self.required_raw.as_deref().map(str::trim) {
            None | Some("false") => Ok(false),
            Some("true") => Ok(true),
            Some(other) => Err(RequestError::BadRequired(other.to_string())),
        }
    }

    /// Checks the name.
    pub fn check(&self) -> Result<(), RequestError> {
        if let Some((cri, pod)) = &self.namespace_conflict {
            return Err(RequestError::NamespaceConflict(cri.clone(), pod.clone()));
        }
        if is_cache_name(&self.name) {
            Ok(())
        } else {
            Err(RequestError::BadName(self.name.clone()))
        }
    }

    /// `cache "<name>" (namespace <ns>)`, for messages.
    pub fn describe(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("cache {:?} (namespace {ns})", self.name),
            None => format!("cache {:?} (no pod namespace)", self.name),
        }
    }
}

/// A cache name: a DNS-subdomain-like string, `[a-z0-9]([a-z0-9._-]*[a-z0-9])?`, ≤ 253 bytes.
pub fn is_cache_name(s: &str) -> bool {
    let b = s.as_bytes();
    let inner = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'-' | b'.' | b'_');
    let end = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    !b.is_empty() && b.len() <= 253 && b.iter().all(inner) && b.first().is_some_and(end) && b.last().is_some_and(end)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn no_cache_annotation_is_no_request() {
        assert_eq!(Request::from_annotations(&ann(&[])), None);
        assert_eq!(
            Request::from_annotations(&ann(&[(PATH, "/x"), (REQUIRED, "true"), (POD_NAMESPACE, "ml")])),
            None
        );
        for key in [CRI_CONTAINER_TYPE, CRIO_CONTAINER_TYPE] {
            assert_eq!(Request::from_annotations(&ann(&[(CACHE, "x"), (key, "sandbox")])), None);
            assert!(Request::from_annotations(&ann(&[(CACHE, "x"), (key, "container")])).is_some());
        }
    }

    #[test]
    fn annotations_parse_with_the_runtime_namespace_first() {
        let r = Request::from_annotations(&ann(&[
            (CACHE, "llama-3.1"),
            (POD_NAMESPACE, "ml"),
            (CRI_NAMESPACE, "ml"),
            (REQUIRED, "true"),
            (PATH, "/cache"),
            ("kcache.dev/cache-digest", "sha256:00"),
        ]))
        .unwrap();
        assert_eq!(r.namespace.as_deref(), Some("ml"));
        assert_eq!(r.required(), Ok(true));
        assert_eq!(r.path.as_deref(), Some("/cache"));
        assert_eq!(r.unknown, vec!["kcache.dev/cache-digest"]);
        assert!(r.check().is_ok());
        assert_eq!(r.describe(), "cache \"llama-3.1\" (namespace ml)");

        // A pod that adds the other runtime's key with another namespace gets nothing.
        for (cri, pod) in [("ml", "team"), ("team", "ml")] {
            let r =
                Request::from_annotations(&ann(&[(CACHE, "x"), (CRI_NAMESPACE, cri), (POD_NAMESPACE, pod)])).unwrap();
            let e = r.check().unwrap_err();
            assert!(matches!(e, RequestError::NamespaceConflict(..)), "{e}");
        }
        let crio = Request::from_annotations(&ann(&[(CACHE, "x"), (POD_NAMESPACE, "team")])).unwrap();
        assert_eq!(crio.namespace.as_deref(), Some("team"));
        assert_eq!(crio.required(), Ok(false));
    }

    #[test]
    fn required_values() {
        for (raw, want) in [
            ("true", Ok(true)),
            ("false", Ok(false)),
            (" true ", Ok(true)),
            ("yes", Err(())),
            ("True", Err(())),
            ("", Err(())),
        ] {
            let r = Request::from_annotations(&ann(&[(CACHE, "x"), (REQUIRED, raw)])).unwrap();
            assert_eq!(r.required().map_err(|_| ()), want, "{raw:?}");
        }
    }

    #[test]
    fn names() {
        for ok in ["a", "llama", "llama-3.1_70b", "0x"] {
            assert!(is_cache_name(ok), "{ok}");
        }
        let long = "a".repeat(254);
        for bad in [
            "",
            "-a",
            "a-",
            "A",
            "a/b",
            "../x",
            "/var/lib/kcache",
            "sha256:abcd",
            "a b",
            long.as_str(),
        ] {
            assert!(!is_cache_name(bad), "{bad}");
        }
    }
}

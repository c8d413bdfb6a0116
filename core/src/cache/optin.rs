//! Which containers ask for a cache: the `kcache.dev/cache` annotation, the one rule both routes
//! that put kcache-hook into a container apply.
//!
//! - The base-spec route (containerd's `base_runtime_spec`, CRI-O's hooks.d): every container
//!   runs kcache-hook, and the hook reads the container's annotations ([`opts_in`]).
//! - The NRI route: containerd asks kcached's NRI plugin at CreateContainer; the plugin adds the
//!   hook only to containers whose *pod* carries `kcache.dev/cache` ([`nri_adjustment`]), with
//!   the pod's `kcache.dev/*` annotations the container does not have yet, so the hook reads the
//!   same request whether or not the runtime passes pod annotations through (`pod_annotations`).

/// The opt-in annotation: the name of an approved cache.
pub const CACHE: &str = "kcache.dev/cache";
/// Every kcache annotation starts with this.
pub const PREFIX: &str = "kcache.dev/";
/// containerd's CRI plugin: `sandbox` for the pod's pause container.
pub const CRI_CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
/// CRI-O: `sandbox` for the pod's infra container.
pub const CRIO_CONTAINER_TYPE: &str = "io.kubernetes.cri-o.ContainerType";

/// Whether a container with these annotations asks for a cache: it has `kcache.dev/cache` and is
/// not a pod's sandbox (containerd and CRI-O give the pause container the pod's annotations too).
pub fn opts_in<'a>(get: impl Fn(&str) -> Option<&'a str>) -> bool {
    get(CACHE).is_some()
        && ![CRI_CONTAINER_TYPE, CRIO_CONTAINER_TYPE]
            .iter()
            .any(|k| get(k) == Some("sandbox"))
}

/// What the NRI plugin adds to a container being created: `None` (nothing at all, the
/// container pays nothing) unless the pod opts in; else the pod's `kcache.dev/*` annotations
/// the container lacks (to add to its spec, sorted) — the hooks go with it.
pub fn nri_adjustment<'a, P>(pod: P, container: impl Fn(&str) -> Option<&'a str>) -> Option<Vec<(String, String)>>
where
    P: IntoIterator<Item = (&'a String, &'a String)> + Clone,
{
    // The pod's annotations, as containerd hands them to NRI, are its sandbox's (they say
    // `container-type: sandbox`): the container's own say whether it is a sandbox.
    let pod_opts_in = pod.clone().into_iter().any(|(k, _)| k == CACHE);
    if !pod_opts_in || !opts_in(|k| if k == CACHE { Some("") } else { container(k) }) {
        return None;
    }
    let mut add: Vec<(String, String)> = pod
        .into_iter()
        .filter(|(k, _)| k.starts_with(PREFIX) && container(k).is_none())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    add.sort();
    Some(add)
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};

    use super::*;

    fn map(kv: &[(&str, &str)]) -> HashMap<String, String> {
        kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn only_an_annotated_non_sandbox_container_opts_in() {
        let a: BTreeMap<_, _> = [(CACHE, "llama")].into_iter().collect();
        assert!(opts_in(|k| a.get(k).copied()));
        let sandbox: BTreeMap<_, _> = [(CACHE, "llama"), (CRI_CONTAINER_TYPE, "sandbox")]
            .into_iter()
            .collect();
        assert!(!opts_in(|k| sandbox.get(k).copied()));
        let crio: BTreeMap<_, _> = [(CACHE, "llama"), (CRIO_CONTAINER_TYPE, "sandbox")]
            .into_iter()
            .collect();
        assert!(!opts_in(|k| crio.get(k).copied()));
        let other: BTreeMap<_, _> = [("kcache.dev/cache-path", "/x"), ("cache", "llama")]
            .into_iter()
            .collect();
        assert!(!opts_in(|k| other.get(k).copied()));
    }

    #[test]
    fn nri_adds_the_pods_kcache_annotations_the_container_lacks() {
        let pod = map(&[
            (CACHE, "llama"),
            ("kcache.dev/cache-required", "true"),
            ("io.kubernetes.pod.namespace", "evil"),
            ("other", "x"),
        ]);
        let ctr = map(&[(CACHE, "llama"), ("io.kubernetes.cri.sandbox-namespace", "team")]);
        let add = nri_adjustment(&pod, |k| ctr.get(k).map(String::as_str)).unwrap();
        assert_eq!(add, vec![("kcache.dev/cache-required".to_string(), "true".to_string())]);

        let bare = map(&[]);
        let add = nri_adjustment(&pod, |k| bare.get(k).map(String::as_str)).unwrap();
        assert_eq!(add.len(), 2);
        assert_eq!(add[0].0, CACHE);
    }

    #[test]
    fn nri_leaves_containers_of_pods_that_do_not_opt_in_alone() {
        let ctr = map(&[(CACHE, "llama")]);
        // The container's own annotations do not opt it in: the pod's decide.
        let pod = map(&[("kcache.dev/cache-path", "/x")]);
        assert_eq!(nri_adjustment(&pod, |k| ctr.get(k).map(String::as_str)), None);
        // containerd gives NRI the sandbox's annotations as the pod's: they do not make the
        // pod's containers sandboxes.
        let sandbox_pod = map(&[(CACHE, "llama"), (CRI_CONTAINER_TYPE, "sandbox")]);
        let app = map(&[(CRI_CONTAINER_TYPE, "container")]);
        assert!(nri_adjustment(&sandbox_pod, |k| app.get(k).map(String::as_str)).is_some());
        let pod = map(&[(CACHE, "llama")]);
        let pause = map(&[(CRI_CONTAINER_TYPE, "sandbox")]);
        assert_eq!(nri_adjustment(&pod, |k| pause.get(k).map(String::as_str)), None);
        let crio_infra = map(&[(CRIO_CONTAINER_TYPE, "sandbox")]);
        assert_eq!(nri_adjustment(&pod, |k| crio_infra.get(k).map(String::as_str)), None);
    }
}

//! The cluster API: group `kcache.dev`, version `v1alpha1`.
//!
//! - [`TrustPolicy`] (cluster): node policy rules, in the shape of `/etc/kcache/policy.yaml`
//!   (keys inline as PEM, as policy-controller's ClusterImagePolicy has them).
//! - [`TrustRoot`] (cluster): a Sigstore `trusted_root.json` that keyless authorities name.
//! - [`KernelCache`] (namespaced) and [`ClusterKernelCache`] (cluster): approved caches.
//! - [`KernelCacheNode`] (cluster, one per node): what a node enforces and holds.
//!
//! The objects carry policy and report status, never trust: every node verifies for itself.

mod condition;
mod kernel_cache;
mod node;
mod trust_policy;

pub use condition::{Condition, ConditionStatus};
pub use kernel_cache::{
    CacheCounts, ClusterKernelCache, ClusterKernelCacheSpec, KernelCache, KernelCacheSpec, KernelCacheStatus,
};
pub use node::{
    GpuReason, KernelCacheNode, KernelCacheNodeSpec, KernelCacheNodeStatus, NodeCache, NodeGpu, NodePolicy,
    NodeTrustPolicy, Signer, TrustPolicyState,
};
pub use trust_policy::{
    DefaultAction, KeyAuthority, KeylessAuthority, PolicyAuthority, PolicyMode, PolicyRule, SignatureFormat,
    TlogSetting, TrustPolicy, TrustPolicySpec, TrustPolicyStatus, TrustRoot, TrustRootSpec, TrustRootStatus,
};

/// The API group.
pub const GROUP: &str = "kcache.dev";
/// The API version.
pub const VERSION: &str = "v1alpha1";

/// Every CRD, in the order `kcache-controller crd` prints them.
pub fn all() -> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> {
    use kube::CustomResourceExt;
    vec![
        TrustPolicy::crd(),
        TrustRoot::crd(),
        KernelCache::crd(),
        ClusterKernelCache::crd(),
        KernelCacheNode::crd(),
    ]
}

/// The CRDs as one multi-document YAML stream (what `kcache-controller crd` prints and
/// packaging/kubernetes/crds.yaml holds).
pub fn yaml() -> Result<String, serde_yaml::Error> {
    let mut out = String::new();
    for crd in all() {
        out.push_str("---\n");
        out.push_str(&quote_yaml11_booleans(&serde_yaml::to_string(&crd)?));
    }
    Ok(out)
}

/// serde_yaml writes YAML 1.2, where `off` is a string; kubectl's parser is YAML 1.1, where a
/// bare `off` (the `mode` and `transparencyLog` enums) is `false`. Quote such scalars.
fn quote_yaml11_booleans(yaml: &str) -> String {
    const WORDS: &[&str] = &["y", "n", "yes", "no", "on", "off", "true", "false"];
    let mut out = String::with_capacity(yaml.len());
    for line in yaml.lines() {
        let (head, value) = match line.trim_start().strip_prefix("- ") {
            Some(v) => (&line[..line.len() - v.len()], v),
            None => match line.split_once(": ") {
                Some((k, v)) => (&line[..k.len() + 2], v),
                None => (line, ""),
            },
        };
        let bare_word = WORDS.contains(&value.to_ascii_lowercase().as_str()) && !matches!(value, "true" | "false");
        if bare_word {
            out.push_str(head);
            out.push('\'');
            out.push_str(value);
            out.push('\'');
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

//! `KernelCache` (namespaced) and `ClusterKernelCache` (cluster-wide): approved kernel caches.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Condition;

/// A kernel cache pods in this namespace may name in `kcache.dev/cache`.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "kcache.dev",
    version = "v1alpha1",
    kind = "KernelCache",
    namespaced,
    status = "KernelCacheStatus",
    shortname = "kc",
    printcolumn = r#"{"name":"Image","type":"string","jsonPath":".spec.image"}"#,
    printcolumn = r#"{"name":"Digest","type":"string","jsonPath":".status.resolvedDigest","priority":1}"#,
    printcolumn = r#"{"name":"Ready","type":"integer","jsonPath":".status.nodes.ready"}"#,
    printcolumn = r#"{"name":"Compatible","type":"integer","jsonPath":".status.nodes.compatible"}"#,
    printcolumn = r#"{"name":"Failed","type":"integer","jsonPath":".status.nodes.failed"}"#,
    printcolumn = r#"{"name":"InUse","type":"integer","jsonPath":".status.nodes.inUse"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct KernelCacheSpec {
    /// The cache image: a tag (resolved once by the controller into `status.resolvedDigest`) or
    /// a digest reference (kept as is).
    pub image: String,
}

/// A kernel cache pods in every namespace may name.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "kcache.dev",
    version = "v1alpha1",
    kind = "ClusterKernelCache",
    status = "KernelCacheStatus",
    shortname = "ckc",
    printcolumn = r#"{"name":"Image","type":"string","jsonPath":".spec.image"}"#,
    printcolumn = r#"{"name":"Digest","type":"string","jsonPath":".status.resolvedDigest","priority":1}"#,
    printcolumn = r#"{"name":"Ready","type":"integer","jsonPath":".status.nodes.ready"}"#,
    printcolumn = r#"{"name":"Compatible","type":"integer","jsonPath":".status.nodes.compatible"}"#,
    printcolumn = r#"{"name":"Failed","type":"integer","jsonPath":".status.nodes.failed"}"#,
    printcolumn = r#"{"name":"InUse","type":"integer","jsonPath":".status.nodes.inUse"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ClusterKernelCacheSpec {
    /// As [`KernelCacheSpec::image`].
    pub image: String,
}

/// Where a cache stands across the fleet.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KernelCacheStatus {
    /// The digest every node pulls (a pin for the rollout, not trust: nodes verify it under
    /// their own policy). A digest in spec.image is kept as is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_digest: Option<String>,
    /// When the tag was last resolved (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_at: Option<String>,
    /// Node counts, from fresh KernelCacheNode objects.
    #[serde(default)]
    pub nodes: CacheCounts,
    /// `Resolved`, `Ready` (every reporting node has it), `Degraded` (some node failed it).
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The generation the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// When the counts were last computed (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_updated: Option<String>,
}

/// How many nodes are where, for one cache.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CacheCounts {
    /// Fresh nodes that report the cache at all.
    pub reporting: i32,
    /// Extracted and verified (at the resolved digest, when there is one).
    pub ready: i32,
    /// Ready with at least one compatible GPU.
    pub compatible: i32,
    /// Ready, but no GPU of the node runs it.
    pub incompatible: i32,
    /// Denied by the node's policy, or the pull or extraction failed.
    pub failed: i32,
    /// Not there yet (pulling, or still at another digest).
    pub pending: i32,
    /// Ready with containers using it.
    pub in_use: i32,
    /// Nodes whose KernelCacheNode was not refreshed in time (not in the counts above).
    pub stale: i32,
}

//! `KernelCacheNode`: one per node, written by that node's agent (server-side apply).

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Condition;

/// What one node enforces and holds. Named after the node.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "kcache.dev",
    version = "v1alpha1",
    kind = "KernelCacheNode",
    status = "KernelCacheNodeStatus",
    shortname = "kcn",
    printcolumn = r#"{"name":"Kcached","type":"string","jsonPath":".status.conditions[?(@.type==\"KcachedReady\")].status"}"#,
    printcolumn = r#"{"name":"Mode","type":"string","jsonPath":".status.policy.mode"}"#,
    printcolumn = r#"{"name":"GPUs","type":"integer","jsonPath":".status.gpuCount"}"#,
    printcolumn = r#"{"name":"Updated","type":"date","jsonPath":".status.lastUpdate"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct KernelCacheNodeSpec {
    /// The node's name (also the object's).
    pub node_name: String,
}

/// The node agent's report.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KernelCacheNodeStatus {
    /// The node's GPUs (kcached's inventory, /run/kcache/gpus.json).
    #[serde(default)]
    pub gpus: Vec<NodeGpu>,
    /// `gpus.len()`, for the printer column.
    #[serde(default)]
    pub gpu_count: i32,
    /// The policy kcached enforces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<NodePolicy>,
    /// Each TrustPolicy the agent saw: applied or refused, at which generation.
    #[serde(default)]
    pub trust_policies: Vec<NodeTrustPolicy>,
    /// The approved caches on this node.
    #[serde(default)]
    pub caches: Vec<NodeCache>,
    /// `KcachedReady` (kcached answers), `PolicyApplied` (every TrustPolicy is in force).
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// When the agent last wrote this status (RFC 3339); the controller counts a node whose
    /// report is older than its stale time as stale.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_update: Option<String>,
}

/// One GPU.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeGpu {
    /// UUID for NVIDIA, `kfd-<node>` for AMD.
    pub id: String,
    /// `cuda` or `hip`.
    pub backend: String,
    /// Compute capability (`90`) or gfx target (`gfx942`).
    pub arch: String,
    /// Threads per warp / wavefront.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warp_size: Option<i32>,
    /// Product name, where known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// The policy in force on the node, as kcached reports it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodePolicy {
    /// kcached's policy generation (a content hash, hex).
    pub generation: String,
    /// `enforce`, `warn` or `off`.
    pub mode: String,
    /// Rules in force.
    pub rules: i32,
    /// Why the newest files on disk are not in force, if they are not (kcached keeps its last
    /// good policy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// What the node made of one TrustPolicy.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeTrustPolicy {
    /// The TrustPolicy's name.
    pub name: String,
    /// Its metadata.generation the agent acted on.
    pub generation: i64,
    /// Where it stands.
    pub state: TrustPolicyState,
    /// Why, when it is not enforced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// A TrustPolicy on one node.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum TrustPolicyState {
    /// Written to policy.d and in force in kcached.
    Enforced,
    /// Written, not (yet) in force: kcached has not reloaded or rejected the files.
    Written,
    /// The node's config.toml forbids what it asks (lowering the mode, `default: allow`).
    Refused,
    /// It does not render (a missing TrustRoot, a key that is not PEM).
    Invalid,
}

/// One approved cache on the node.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeCache {
    /// The name pods use.
    pub name: String,
    /// Its namespace; none for a ClusterKernelCache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The image as approved.
    pub image: String,
    /// The manifest digest of the copy on the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// `pending`, `ready`, `denied` or `failed`.
    pub state: String,
    /// Why it is not ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The policy rule that admitted it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// Who signed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signer: Option<Signer>,
    /// The Rekor log index of the signature's entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rekor_log_index: Option<i64>,
    /// GPU ids it runs on.
    #[serde(default)]
    pub compatible_gpus: Vec<String>,
    /// GPU ids it does not run on, each with the reason.
    #[serde(default)]
    pub incompatible_gpus: Vec<GpuReason>,
    /// Containers using it.
    #[serde(default)]
    pub containers: Vec<String>,
    /// When kcached last changed this entry (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_update: Option<String>,
}

/// A GPU a cache does not run on.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GpuReason {
    /// The GPU id.
    pub gpu: String,
    /// Why.
    pub reason: String,
}

/// A signer: a key's fingerprint, or a certificate's issuer and subject.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Signer {
    /// SHA-256 of the key's SubjectPublicKeyInfo (hex), for key authorities.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_fingerprint: Option<String>,
    /// The OIDC issuer, for keyless.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// The certificate identity, for keyless.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
}

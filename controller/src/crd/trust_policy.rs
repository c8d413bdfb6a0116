//! `TrustPolicy` and `TrustRoot`: node policy from the cluster.
//!
//! A TrustPolicy's spec is the node policy file's shape (`mode`, `default`, `rules` with
//! `images`, `authorities`, `transparencyLog`, `signatureFormats`, `allow`), with two changes a
//! cluster object needs: a key is inline PEM (`key: {data: ...}`) instead of a node path, and a
//! keyless authority's trusted root is inline JSON (`trustedRoot`), a [`TrustRoot`] object
//! (`trustRootRef`), or neither (the public-good root shipped in kcache).

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Condition;

/// What verification failures do (the node policy's `mode`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PolicyMode {
    /// Nothing is verified.
    Off,
    /// Denied images are logged and allowed.
    Warn,
    /// Denied images are blocked.
    Enforce,
}

/// What happens to images no rule matches (the node policy's `default`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DefaultAction {
    /// Refused.
    Deny,
    /// Let through unverified.
    Allow,
}

/// `required`, `optional` or `off`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TlogSetting {
    /// A Rekor inclusion proof or promise must verify.
    Required,
    /// Checked when present.
    Optional,
    /// Not looked at.
    Off,
}

/// `cosign-v2` or `cosign-v3`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum SignatureFormat {
    /// `.sig` tags with simple-signing payloads.
    #[serde(rename = "cosign-v2")]
    CosignV2,
    /// Sigstore bundles as OCI referrers.
    #[serde(rename = "cosign-v3")]
    CosignV3,
}

/// The cluster's trust policy: rules the nodes add to their own policy.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "kcache.dev",
    version = "v1alpha1",
    kind = "TrustPolicy",
    status = "TrustPolicyStatus",
    shortname = "ktp",
    printcolumn = r#"{"name":"Valid","type":"string","jsonPath":".status.conditions[?(@.type==\"Valid\")].status"}"#,
    printcolumn = r#"{"name":"Enforcing","type":"integer","jsonPath":".status.nodesEnforcing"}"#,
    printcolumn = r#"{"name":"Refused","type":"integer","jsonPath":".status.nodesRefusing"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct TrustPolicySpec {
    /// `enforce`, `warn` or `off`. Nodes refuse a policy that would lower their own mode unless
    /// their config.toml allows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<PolicyMode>,
    /// `deny` or `allow`. Nodes refuse `allow` unless their config.toml allows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<DefaultAction>,
    /// The rules, as in policy.yaml. Rule names are unique across the node's whole policy.
    #[serde(default)]
    pub rules: Vec<PolicyRule>,
}

/// One rule: which images, and who must sign them.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyRule {
    /// Unique across the node's policy: `[A-Za-z0-9._-]+`.
    pub name: String,
    /// Image patterns (`registry/repo/*`, `registry/**`, `name:tag`, `name@sha256:...`).
    pub images: Vec<String>,
    /// Any one suffices.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub authorities: Vec<PolicyAuthority>,
    /// Default: `required` for keyless, `optional` for keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transparency_log: Option<TlogSetting>,
    /// Default: both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature_formats: Option<Vec<SignatureFormat>>,
    /// Allow-listed without a signature (every allow is logged on the node).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow: bool,
}

/// Exactly one of `key` and `keyless`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyAuthority {
    /// A public key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<KeyAuthority>,
    /// A Fulcio certificate identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keyless: Option<KeylessAuthority>,
}

/// A public key, inline.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyAuthority {
    /// PEM: ECDSA P-256/P-384, Ed25519 or RSA public key.
    pub data: String,
}

/// A keyless identity: issuer and subject, each exact or an anchored regular expression.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeylessAuthority {
    /// The OIDC issuer, exactly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// The OIDC issuer, an anchored regular expression.
    #[serde(default, rename = "issuerRegExp", skip_serializing_if = "Option::is_none")]
    pub issuer_regexp: Option<String>,
    /// The certificate's identity, exactly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// The certificate's identity, an anchored regular expression (`^...$`).
    #[serde(default, rename = "subjectRegExp", skip_serializing_if = "Option::is_none")]
    pub subject_regexp: Option<String>,
    /// A Sigstore trusted_root.json, inline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trusted_root: Option<String>,
    /// The name of a TrustRoot object holding the trusted root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust_root_ref: Option<String>,
}

/// What the controller and the nodes make of a TrustPolicy.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrustPolicyStatus {
    /// `Valid`: whether the node policy loader accepts the rules; when not, every problem, in
    /// the loader's words, each naming the field.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The generation the conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Nodes whose kcached enforces this generation.
    #[serde(default)]
    pub nodes_enforcing: i32,
    /// Nodes that refuse this generation (their config.toml forbids what it asks).
    #[serde(default)]
    pub nodes_refusing: i32,
}

/// A Sigstore trusted root (Fulcio CAs, Rekor keys) for keyless authorities, offline.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "kcache.dev",
    version = "v1alpha1",
    kind = "TrustRoot",
    status = "TrustRootStatus",
    printcolumn = r#"{"name":"Valid","type":"string","jsonPath":".status.conditions[?(@.type==\"Valid\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct TrustRootSpec {
    /// The trusted_root.json document (`application/vnd.dev.sigstore.trustedroot+json`).
    pub trusted_root: String,
}

/// Whether the trusted root parses.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrustRootStatus {
    /// `Valid`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The generation the conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

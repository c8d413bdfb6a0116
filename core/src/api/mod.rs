//! The kcache API's wire types: everything that crosses a process boundary between kcached and
//! its clients (the `kcache` CLI, `kcache-image-verifier`, the controller's node agent), defined
//! once, with serde, and used by both sides.
//!
//! kcached serves HTTP/1.1 with JSON bodies on a unix socket (0600, root only):
//!
//! | request | answer |
//! |---|---|
//! | `POST /v1/verify` [`VerifyRequest`] | [`ImageVerdict`] (as `kcache verify --output json` prints it) |
//! | `GET /v1/policy` | [`PolicyStatus`] |
//! | `GET /v1/caches` | the cache store's `state.json` ([`NodeCaches`]) |
//! | `GET /v1/gate` | the snapshotter gate's settings ([`GateStatus`]) |
//! | `GET /v1/registry` | the registry hosts configuration kcached reads ([`RegistryStatus`]) |
//! | `GET /v1/health` | `ok` |
//! | `GET /metrics` | Prometheus text |
//!
//! An error answer is [`ErrorBody`] with a 4xx or 5xx status.
//!
//! This module is plain serde and always compiled; the typed client ([`Client`]) sits behind the
//! `api-client` feature (tokio and hyper), so a consumer that only reads the types links neither.

#[cfg(feature = "api-client")]
mod client;

use std::{fmt, path::PathBuf, str::FromStr, time::Duration};

use serde::{Deserialize, Serialize};

pub use crate::cache::store::NodeCaches;
use crate::digest::Digest;
#[cfg(feature = "api-client")]
pub use client::{ApiError, Client};

/// Where kcached serves the API unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/kcache/kcache.sock";

/// The API's request paths.
pub mod path {
    /// `POST`: verify one image.
    pub const VERIFY: &str = "/v1/verify";
    /// `GET`: the policy in force.
    pub const POLICY: &str = "/v1/policy";
    /// `GET`: the node's approved caches.
    pub const CACHES: &str = "/v1/caches";
    /// `GET`: the snapshotter gate's settings.
    pub const GATE: &str = "/v1/gate";
    /// `GET`: `ok` while kcached serves.
    pub const HEALTH: &str = "/v1/health";
    /// `GET`: Prometheus text.
    pub const METRICS: &str = "/metrics";
    /// `GET`: [`super::RegistryStatus`].
    pub const REGISTRY: &str = "/v1/registry";
    /// Every path the API serves.
    pub const ALL: [&str; 7] = [VERIFY, POLICY, CACHES, GATE, REGISTRY, HEALTH, METRICS];
}

/// A `POST /v1/verify` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyRequest {
    /// The image reference (gives the repository, and the tag for the signed-index rule).
    pub image: String,
    /// Verify exactly this manifest digest; `None`: resolve `image` first.
    #[serde(default)]
    pub digest: Option<Digest>,
}

/// The body of an error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: String,
}

/// What verification failures do (the policy's `mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// A denied image is blocked.
    Enforce,
    /// A denied image is logged and allowed.
    Warn,
    /// Nothing is verified.
    Off,
}

impl Mode {
    /// `enforce`, `warn` or `off`, as the policy file spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enforce => "enforce",
            Self::Warn => "warn",
            Self::Off => "off",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What actually happens to an image, once the policy's [`Mode`] is applied to whether it met
/// its rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Decision {
    /// Allowed.
    Allow,
    /// Denied and blocked (`enforce`).
    Deny,
    /// Denied but let through with a warning (`warn`).
    AllowWithWarning,
    /// Not verified at all (`off`).
    Unchecked,
}

impl Decision {
    /// Whether the pull or start may go ahead.
    pub fn permits(self) -> bool {
        self != Self::Deny
    }

    /// `allow`, `deny`, `allow-with-warning` or `unchecked`: the JSON and metrics label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
            Self::AllowWithWarning => "allow-with-warning",
            Self::Unchecked => "unchecked",
        }
    }

    /// What happened, for a sentence: `allowed`, `denied`, ...
    pub fn outcome(self) -> &'static str {
        match self {
            Self::Allow => "allowed",
            Self::Deny => "denied",
            Self::AllowWithWarning => "denied (warn mode: allowed)",
            Self::Unchecked => "not verified (mode off)",
        }
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which cosign signature format: the formats a policy rule accepts, and the one a signature
/// came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SignatureFormat {
    /// cosign v2: `sha256-<hex>.sig` tags with simple-signing payloads.
    CosignV2,
    /// cosign v3: Sigstore bundles attached as OCI referrers (or the tag fallback).
    CosignV3,
}

impl fmt::Display for SignatureFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::CosignV2 => "cosign-v2",
            Self::CosignV3 => "cosign-v3",
        })
    }
}

/// Who signed, as proven.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum SignerInfo {
    /// A key, by fingerprint.
    Key {
        /// `SHA256:<hex>` of the SPKI.
        fingerprint: String,
    },
    /// A Fulcio certificate identity.
    Keyless {
        /// OIDC issuer.
        issuer: String,
        /// The SAN that matched.
        subject: String,
    },
}

impl fmt::Display for SignerInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Key { fingerprint } => write!(f, "key {fingerprint}"),
            Self::Keyless { issuer, subject } => write!(f, "{subject} (issuer {issuer})"),
        }
    }
}

/// The outcome of verifying one image: what `kcache verify` prints, what the API's
/// `/v1/verify` answers and what the image verifier decides on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageVerdict {
    /// The image as given.
    pub image: String,
    /// The digest verified.
    pub digest: Option<Digest>,
    /// The deciding rule, or `None` for the policy default.
    pub rule: Option<String>,
    /// Whether the image met its rule (before the mode is applied).
    pub verified: bool,
    /// What happens under the policy mode.
    pub decision: Decision,
    /// Why, in one line.
    pub reason: String,
    /// Who signed, when signed.
    #[serde(default)]
    pub signer: Option<SignerInfo>,
    /// Rekor log index, when logged.
    #[serde(default)]
    pub tlog_index: Option<u64>,
    /// Signature format that passed.
    #[serde(default)]
    pub format: Option<SignatureFormat>,
    /// The signed index this manifest was allowed through.
    #[serde(default)]
    pub via_index: Option<Digest>,
    /// Served from the verdict cache.
    #[serde(default)]
    pub cached: bool,
    /// Wall time spent (milliseconds in JSON).
    #[serde(with = "millis", rename = "elapsed_ms", default)]
    pub elapsed: Duration,
}

impl ImageVerdict {
    /// A verdict not decided yet: denied until a step allows it (fail closed).
    pub fn pending(image: String, digest: Option<Digest>) -> Self {
        Self {
            image,
            digest,
            rule: None,
            verified: false,
            decision: Decision::Deny,
            reason: String::new(),
            signer: None,
            tlog_index: None,
            format: None,
            via_index: None,
            cached: false,
            elapsed: Duration::ZERO,
        }
    }

    /// Whether the pull may go ahead.
    pub fn permits(&self) -> bool {
        self.decision.permits()
    }

    /// One line naming the image, the digest, the rule and the reason.
    pub fn summary(&self) -> String {
        format!(
            "{}: image {} digest {} rule {}: {}",
            self.decision.outcome(),
            self.image,
            self.digest
                .as_ref()
                .map_or("<unresolved>".to_string(), |d| d.to_string()),
            self.rule.as_deref().unwrap_or("<default>"),
            self.reason
        )
    }

    /// The verdict as `kcache verify` prints it: one `field: value` line each.
    pub fn text(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let mut line = |k: &str, v: &dyn fmt::Display| {
            let _ = writeln!(out, "{:<10}{v}", format!("{k}:"));
        };
        line("image", &self.image);
        line(
            "digest",
            &self.digest.as_ref().map_or("-".to_string(), |d| d.to_string()),
        );
        line("rule", &self.rule.as_deref().unwrap_or("<default>"));
        line("verdict", &if self.permits() { "allowed" } else { "denied" });
        line("reason", &self.reason);
        if let Some(s) = &self.signer {
            line("signer", s);
        }
        if let Some(f) = &self.format {
            line("format", f);
        }
        if let Some(i) = self.tlog_index {
            line("tlog", &format!("index {i}"));
        }
        if let Some(i) = &self.via_index {
            line("index", i);
        }
        if self.cached {
            line("cached", &"yes (verdict cache)");
        }
        line("time", &format!("{:.1} ms", self.elapsed.as_secs_f64() * 1000.0));
        out
    }
}

/// A duration as fractional milliseconds.
mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64() * 1000.0)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let ms = f64::deserialize(d)?;
        Duration::try_from_secs_f64(ms / 1000.0).map_err(serde::de::Error::custom)
    }
}

/// `GET /v1/policy`: the policy in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyStatus {
    /// Content hash of the policy in force (changes with any input, keys included).
    pub generation: u64,
    /// What failures do.
    pub mode: Mode,
    /// Number of rules.
    pub rules: usize,
    /// Files it was read from.
    pub sources: Vec<PathBuf>,
    /// When it was loaded (seconds since the epoch).
    pub loaded_at: u64,
    /// Why the newest files on disk are not in force, if they are not.
    pub last_error: Option<String>,
    /// Successful reloads since start.
    pub reloads: u64,
}

/// What the gate does with an unpack (a Prepare with `containerd.io/snapshot.ref`) that has no
/// CRI image labels: a `ctr pull`, or CRI with snapshot annotations off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unlabeled {
    /// Let it unpack. Its snapshots are not marked verified, so in enforce mode no container
    /// can run on them (the chain check).
    #[default]
    Allow,
    /// Refuse it (in enforce mode; warn mode logs it).
    Deny,
}

impl Unlabeled {
    /// `allow` or `deny`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
        }
    }
}

impl fmt::Display for Unlabeled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that is not `allow` or `deny`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0:?} is not a setting for unlabeled unpacks (allow or deny)")]
pub struct BadUnlabeled(String);

impl FromStr for Unlabeled {
    type Err = BadUnlabeled;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "allow" => Ok(Self::Allow),
            "deny" => Ok(Self::Deny),
            _ => Err(BadUnlabeled(s.to_owned())),
        }
    }
}

/// `GET /v1/gate`: the snapshotter gate's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateStatus {
    /// Whether container rootfs snapshots need a verified parent chain (enforce mode).
    pub chain_check: bool,
    /// Unpacks without CRI image labels.
    pub unlabeled: Unlabeled,
}

/// `GET /v1/registry`: where kcached looks for registry hosts (mirrors, CAs), so `kcache doctor`
/// can compare it with containerd's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryStatus {
    /// containerd-style `config_path` directories, in lookup order (empty: none).
    pub config_path: Vec<std::path::PathBuf>,
    /// Registries whose default server is plain HTTP.
    pub insecure: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

    #[test]
    fn a_verdict_round_trips_through_json() {
        let mut v = ImageVerdict::pending("r.example/a:1".into(), Some(Digest::parse(DIGEST).unwrap()));
        v.rule = Some("caches".into());
        v.verified = true;
        v.decision = Decision::Allow;
        v.reason = "signed".into();
        v.signer = Some(SignerInfo::Keyless {
            issuer: "https://issuer".into(),
            subject: "me@example".into(),
        });
        v.format = Some(SignatureFormat::CosignV3);
        v.tlog_index = Some(4);
        v.elapsed = Duration::from_micros(1500);
        let json = serde_json::to_value(&v).unwrap();
        assert_eq!(json["decision"], "allow");
        assert_eq!(json["format"], "cosign-v3");
        assert_eq!(json["signer"]["type"], "keyless");
        assert_eq!(json["elapsed_ms"], 1.5);
        assert_eq!(json["digest"], DIGEST);
        let back: ImageVerdict = serde_json::from_value(json).unwrap();
        assert_eq!(back, v);
    }

    #[test]
    fn a_verdict_with_a_bad_digest_does_not_decode() {
        let json = serde_json::json!({"image": "a", "digest": "sha256:AB", "rule": null, "verified": true,
            "decision": "allow", "reason": ""});
        assert!(serde_json::from_value::<ImageVerdict>(json).is_err());
        let json = serde_json::json!({"image": "a", "digest": null, "rule": null, "verified": true,
            "decision": "maybe", "reason": ""});
        assert!(serde_json::from_value::<ImageVerdict>(json).is_err());
    }

    #[test]
    fn decisions_have_one_spelling() {
        for d in [
            Decision::Allow,
            Decision::Deny,
            Decision::AllowWithWarning,
            Decision::Unchecked,
        ] {
            assert_eq!(serde_json::to_value(d).unwrap(), d.to_string());
            assert_eq!(serde_json::from_value::<Decision>(d.as_str().into()).unwrap(), d);
        }
        assert!(!Decision::Deny.permits());
        assert!(Decision::AllowWithWarning.permits());
    }

    #[test]
    fn summary_names_image_digest_rule_and_reason() {
        let mut v = ImageVerdict::pending("a:1".into(), None);
        v.reason = "no signature".into();
        assert_eq!(
            v.summary(),
            "denied: image a:1 digest <unresolved> rule <default>: no signature"
        );
        v.decision = Decision::AllowWithWarning;
        v.rule = Some("r".into());
        assert!(v.summary().starts_with("denied (warn mode: allowed): image a:1"));
    }

    #[test]
    fn settings_are_typed() {
        let g: GateStatus = serde_json::from_str(r#"{"chain_check":true,"unlabeled":"deny"}"#).unwrap();
        assert_eq!(g.unlabeled, Unlabeled::Deny);
        assert!(serde_json::from_str::<GateStatus>(r#"{"chain_check":true,"unlabeled":"maybe"}"#).is_err());
        assert_eq!("allow".parse::<Unlabeled>(), Ok(Unlabeled::Allow));
        assert!("Allow".parse::<Unlabeled>().is_err());
        let p: PolicyStatus = serde_json::from_str(
            r#"{"generation":1,"mode":"warn","rules":0,"sources":[],"loaded_at":0,"last_error":null,"reloads":0}"#,
        )
        .unwrap();
        assert_eq!(p.mode, Mode::Warn);
        let r: VerifyRequest = serde_json::from_str(r#"{"image":"a","digest":null}"#).unwrap();
        assert_eq!(r.digest, None);
        assert!(serde_json::from_str::<VerifyRequest>(r#"{"image":"a","digest":"sha256:ab"}"#).is_err());
    }
}

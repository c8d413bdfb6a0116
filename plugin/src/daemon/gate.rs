//! The verification gate in front of the snapshotter.
//!
//! containerd's CRI plugin, with snapshot annotations on, labels every layer snapshot it
//! prepares during a pull with the image reference and the manifest digest it resolved
//! (`containerd.io/snapshot/cri.image-ref`, `containerd.io/snapshot/cri.manifest-digest`). The
//! gate verifies exactly that digest under the policy before the layer may be unpacked; a denial
//! is a gRPC `PermissionDenied` that containerd passes on to the kubelet.
//!
//! A verified layer is labelled `kcache.dev/verified=<manifest digest>`; Commit carries the label
//! to the committed chainID snapshot, in the same crash-safe store transaction as the snapshot
//! itself. In enforce mode a snapshot prepared on top of a parent (a container rootfs, a view)
//! is refused unless the parent carries that label: its chain was unpacked by a verified pull.
//! Clients cannot set, change or remove `kcache.dev/` labels.
//!
//! # Limits (what the chain check does not prove)
//! - It trusts containerd: the labels say which image a layer belongs to. A local client with
//!   access to containerd's socket is root on the node and out of scope.
//! - Layers are content-addressed: a rootfs whose chain equals (a prefix of) a verified image's
//!   chain passes, even if containerd created the container from another image record with the
//!   same layers. The image *config* (entrypoint, env) is not part of the chain.
//! - Snapshots unpacked before the gate saw them (another snapshotter session, `ctr` pulls
//!   without labels, warn/off mode) carry no label; containers on them are refused in enforce
//!   mode until the image is removed and pulled again through CRI.

use std::{collections::HashMap, sync::Arc, time::Instant};

use kcache_core::{digest::Digest, policy::Mode, refusal::Refusal, registry::Reference, verifier::Verifier};
use tonic::Status;

use super::{metrics::Metrics, policy_store::PolicyStore};

/// The image reference CRI labels a pull's snapshots with.
pub const LABEL_IMAGE_REF: &str = "containerd.io/snapshot/cri.image-ref";
/// The manifest digest CRI labels a pull's snapshots with.
pub const LABEL_MANIFEST_DIGEST: &str = "containerd.io/snapshot/cri.manifest-digest";
/// The chainID an unpack will commit to (containerd's `TargetSnapshotLabel`).
pub const LABEL_TARGET: &str = "containerd.io/snapshot.ref";
/// Set by the gate: the verified manifest digest this snapshot was unpacked for.
pub const LABEL_VERIFIED: &str = "kcache.dev/verified";
/// Set by the gate: the rule that admitted it.
pub const LABEL_VERIFIED_RULE: &str = "kcache.dev/verified-rule";
/// Labels only the gate may set.
pub const OWN_PREFIX: &str = "kcache.dev/";

/// The gate's settings, and what to do with an unpack that has no CRI image labels: API types
/// (`/v1/gate` reports them).
pub use kcache_core::api::{GateStatus as GateConfig, Unlabeled};

/// The verification gate.
pub struct Gate {
    policy: Arc<PolicyStore>,
    verifier: Arc<Verifier>,
    metrics: Arc<Metrics>,
    config: GateConfig,
}

/// How a Prepare or View is judged.
#[derive(Debug, PartialEq, Eq)]
pub enum Class {
    /// A CRI pull's layer: verify `digest` for `image`.
    Pull {
        /// The image reference.
        image: String,
        /// The manifest digest.
        digest: String,
    },
    /// An unpack without CRI labels.
    UnlabeledUnpack,
    /// Anything else (container rootfs, views, manual snapshots): the chain check.
    Other,
}

/// Classifies a Prepare/View by its key and labels.
///
/// Labels alone cannot tell an unpack from a container rootfs: CRI passes a sandbox's pod
/// annotations under `containerd.io/snapshot/` to its rootfs Prepare, so a pod could carry
/// forged pull labels. containerd's unpacker names its snapshots `extract-<unique> <chainID>`
/// (`snapshots.UnpackKeyFormat`; the metadata layer prefixes `<namespace>/<id>/`) and labels
/// them with that chainID; container rootfs keys are container IDs. Only a key of that form
/// whose chainID equals `containerd.io/snapshot.ref` is an unpack; everything else gets the
/// chain check, whatever its labels say.
pub fn classify(key: &str, labels: &HashMap<String, String>) -> Class {
    let Some(target) = labels.get(LABEL_TARGET) else {
        return Class::Other;
    };
    let name = key.rsplit_once('/').map_or(key, |(_, name)| name);
    let unpack = name.starts_with("extract-")
        && name
            .rsplit_once(' ')
            .is_some_and(|(_, chain)| chain == target.as_str() && !target.is_empty());
    if !unpack {
        return Class::Other;
    }
    match (labels.get(LABEL_IMAGE_REF), labels.get(LABEL_MANIFEST_DIGEST)) {
        (Some(image), Some(digest)) => Class::Pull {
            image: image.clone(),
            digest: digest.clone(),
        },
        _ => Class::UnlabeledUnpack,
    }
}

/// Drops every `kcache.dev/` label a client sent.
pub fn strip_own(labels: &mut HashMap<String, String>) {
    labels.retain(|k, _| !k.starts_with(OWN_PREFIX));
}

/// The labels to add to a verified pull's snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    /// Labels to add.
    pub labels: Vec<(String, String)>,
}

impl Gate {
    /// A gate deciding with `policy`, verifying through `verifier`.
    pub fn new(policy: Arc<PolicyStore>, verifier: Arc<Verifier>, metrics: Arc<Metrics>, config: GateConfig) -> Self {
        Self {
            policy,
            verifier,
            metrics,
            config,
        }
    }

    /// The mode in force.
    pub fn mode(&self) -> Mode {
        self.policy.current().policy.mode
    }

    /// Whether Prepare/View of `Class::Other` on a parent needs the parent's labels.
    pub fn chain_check_applies(&self) -> bool {
        self.config.chain_check && self.mode() == Mode::Enforce
    }

    /// Verifies a CRI pull's layer. `Ok` with the labels to add when the pull may go on.
    pub async fn verify_pull(&self, key: &str, image: &str, digest: &str) -> Result<Admitted, Status> {
        let loaded = self.policy.current();
        let policy = &loaded.policy;
        if policy.mode == Mode::Off {
            return Ok(Admitted { labels: vec![] });
        }
        let deny = |reason: String, rule: Option<&str>| {
            self.metrics.inc(
                "kcache_denied_pulls_total",
                vec![("reason", "invalid-labels".into())],
                1,
            );
            let rule = rule.unwrap_or("<none>");
            let refusal = Refusal {
                image,
                digest,
                rule,
                reason: &reason,
            };
            Status::permission_denied(format!("{refusal} (snapshot {key})"))
        };
        let reference = match Reference::parse(image) {
            Ok(r) => r,
            Err(e) => {
                return Err(deny(
                    format!("label {LABEL_IMAGE_REF} is not an image reference: {e}"),
                    None,
                ))
            }
        };
        let parsed = match Digest::parse(digest) {
            Ok(d) => d,
            Err(e) => {
                return Err(deny(
                    format!("label {LABEL_MANIFEST_DIGEST} is not a digest: {e}"),
                    None,
                ))
            }
        };
        let start = Instant::now();
        let v = self.verifier.verify_digest(policy, &reference, &parsed).await;
        self.metrics
            .verdict(v.decision, v.rule.as_deref(), v.cached, start.elapsed());
        let rule = v.rule.as_deref().unwrap_or("<default>");
        if !v.permits() {
            self.metrics
                .inc("kcache_denied_pulls_total", vec![("reason", "policy".into())], 1);
            tracing::warn!(%image, %digest, rule, reason = %v.reason, snapshot = key, "pull denied");
            let refusal = Refusal {
                image,
                digest,
                rule,
                reason: &v.reason,
            };
            return Err(Status::permission_denied(refusal.to_string()));
        }
        match v.decision {
            kcache_core::api::Decision::Allow => {
                tracing::debug!(%image, %digest, rule, cached = v.cached, "pull verified");
                Ok(Admitted {
                    labels: vec![
                        (LABEL_VERIFIED.to_owned(), parsed.to_string()),
                        (LABEL_VERIFIED_RULE.to_owned(), rule.to_owned()),
                    ],
                })
            }
            _ => {
                tracing::warn!(%image, %digest, rule, reason = %v.reason, "warn mode: pull allowed although it failed the policy");
                Ok(Admitted { labels: vec![] })
            }
        }
    }

    /// An unpack without CRI labels.
    pub fn unlabeled_unpack(&self, key: &str, target: Option<&str>) -> Result<(), Status> {
        let mode = self.mode();
        if self.config.unlabeled == Unlabeled::Allow || mode == Mode::Off {
            return Ok(());
        }
        let msg = format!(
            "kcache: unpack of {} (snapshot {key}) has no image labels ({LABEL_IMAGE_REF}, {LABEL_MANIFEST_DIGEST}); \
             rule unlabeled=deny refuses it. Pull through CRI with snapshot annotations on \
             (disable_snapshot_annotations = false)",
            target.unwrap_or("<unknown chain>")
        );
        if mode == Mode::Warn {
            tracing::warn!("warn mode: {msg}");
            return Ok(());
        }
        self.metrics
            .inc("kcache_denied_pulls_total", vec![("reason", "unlabeled".into())], 1);
        Err(Status::permission_denied(msg))
    }

    /// The chain check: `parent_labels` are the labels of the snapshot `parent`.
    pub fn check_chain(
        &self,
        op: &str,
        key: &str,
        parent: &str,
        parent_labels: &HashMap<String, String>,
    ) -> Result<(), Status> {
        if parent_labels.contains_key(LABEL_VERIFIED) {
            return Ok(());
        }
        self.metrics.inc(
            "kcache_denied_pulls_total",
            vec![("reason", "unverified-chain".into())],
            1,
        );
        tracing::warn!(
            op,
            key,
            parent,
            "refused: parent chain never belonged to a verified pull"
        );
        Err(Status::permission_denied(format!(
            "kcache: {op} {key} refused by the chain check: parent snapshot {parent} was never part of a verified pull \
             (enforce mode; pull the image through CRI so kcache can verify it)"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn classification() {
        let pull = labels(&[
            (LABEL_IMAGE_REF, "127.0.0.1:5000/a:v1"),
            (LABEL_MANIFEST_DIGEST, "sha256:00"),
            (LABEL_TARGET, "sha256:11"),
        ]);
        let expected = Class::Pull {
            image: "127.0.0.1:5000/a:v1".into(),
            digest: "sha256:00".into(),
        };
        assert_eq!(classify("extract-1-2 sha256:11", &pull), expected);
        assert_eq!(classify("k8s.io/7/extract-123-abc sha256:11", &pull), expected);
        let target = labels(&[(LABEL_TARGET, "sha256:11")]);
        assert_eq!(
            classify("k8s.io/7/extract-9 sha256:11", &target),
            Class::UnlabeledUnpack
        );
        // Forged pull labels on a container rootfs (pod annotations reach a sandbox's Prepare).
        assert_eq!(classify("k8s.io/8/0123abcd", &pull), Class::Other);
        assert_eq!(
            classify("k8s.io/8/extract-1 sha256:22", &pull),
            Class::Other,
            "chain mismatch"
        );
        assert_eq!(classify("k8s.io/8/extract-1", &pull), Class::Other);
        assert_eq!(
            classify("extract-1 sha256:11", &labels(&[(LABEL_IMAGE_REF, "x")])),
            Class::Other
        );
        assert_eq!(classify("extract-1 ", &labels(&[(LABEL_TARGET, "")])), Class::Other);
    }

    #[test]
    fn clients_cannot_forge_verification() {
        let mut l = labels(&[(LABEL_VERIFIED, "sha256:00"), ("kcache.dev/x", "1"), ("a", "b")]);
        strip_own(&mut l);
        assert_eq!(l, labels(&[("a", "b")]));
    }
}

//! The verification gate: a decorator of any [`Snapshotter`] that admits only what the policy
//! admits.
//!
//! containerd's CRI plugin, with snapshot annotations on, labels every layer snapshot it
//! prepares during a pull with the image reference and the manifest digest it resolved
//! ([`LABEL_IMAGE_REF`], [`LABEL_MANIFEST_DIGEST`]). The gate verifies exactly that digest under
//! the policy before the layer may be unpacked; a refusal is a [`GateError::Denied`], which the
//! gRPC edge turns into `PermissionDenied` and containerd passes on to the kubelet.
//!
//! A verified layer is labelled [`LABEL_VERIFIED`] (the manifest digest), [`LABEL_VERIFIED_IMAGE`]
//! and [`LABEL_VERIFIED_RULE`]; Commit carries the labels to the committed chainID snapshot, in
//! the same crash-safe store transaction as the snapshot itself. In enforce mode a snapshot
//! prepared on top of a parent (a container rootfs, a view) is refused unless the parent carries
//! those labels *and* the policy in force still admits the image they name: a revoked key or a
//! narrowed rule stops new containers on chains verified before the change. The re-check goes
//! through the same verifier as a pull, so with a verdict cache it costs a cache hit until the
//! policy changes. Clients cannot set, change or remove `kcache.dev/` labels.
//!
//! # Limits (what the chain check does not prove)
//! - It trusts containerd: the labels say which image a layer belongs to. A local client with
//!   access to containerd's socket is root on the node and out of scope.
//! - Layers are content-addressed: a rootfs whose chain equals (a prefix of) a verified image's
//!   chain passes, even if containerd created the container from another image record with the
//!   same layers. The image *config* (entrypoint, env) is not part of the chain.
//! - A chain records the first verified image that unpacked it. containerd does not unpack a
//!   chain it already has, so a second image on the same chain is never seen by the gate; if
//!   the first is revoked, containers of the second are refused too until the chain is removed
//!   and pulled again.
//! - Snapshots unpacked before the gate saw them (another snapshotter session, `ctr` pulls
//!   without labels, warn/off mode), or marked by a kcache that did not record the image, carry
//!   no re-checkable label; containers on them are refused in enforce mode until the image is
//!   removed and pulled again through CRI.

use std::{collections::HashMap, fmt};

use super::{Info, Kind, Mount, Snapshotter, Usage};
use crate::{
    api::{Decision, GateStatus, ImageVerdict, Unlabeled},
    digest::Digest,
    policy::Mode,
    refusal::Refusal,
    registry::Reference,
};

/// The image reference CRI labels a pull's snapshots with.
pub const LABEL_IMAGE_REF: &str = "containerd.io/snapshot/cri.image-ref";
/// The manifest digest CRI labels a pull's snapshots with.
pub const LABEL_MANIFEST_DIGEST: &str = "containerd.io/snapshot/cri.manifest-digest";
/// The chainID an unpack will commit to (containerd's `TargetSnapshotLabel`).
pub const LABEL_TARGET: &str = "containerd.io/snapshot.ref";
/// Set by the gate: the verified manifest digest this snapshot was unpacked for.
pub const LABEL_VERIFIED: &str = "kcache.dev/verified";
/// Set by the gate: the image reference that digest was verified for (the re-check's input).
pub const LABEL_VERIFIED_IMAGE: &str = "kcache.dev/verified-image";
/// Set by the gate: the rule that admitted it.
pub const LABEL_VERIFIED_RULE: &str = "kcache.dev/verified-rule";
/// Labels only the gate may set.
pub const OWN_PREFIX: &str = "kcache.dev/";

/// What the gate asks of the policy. kcached implements it with its policy store and verifier;
/// the gate's rules are tested against a table.
pub trait Admission: Send + Sync + 'static {
    /// The mode of the policy in force.
    fn mode(&self) -> Mode;

    /// The verdict on `digest` pulled as `image` under the policy in force. Called from the
    /// snapshotter's (blocking) thread; a verdict cache makes repeats cheap.
    fn verify(&self, image: &Reference, digest: &Digest) -> ImageVerdict;

    /// Told of each refusal before it is returned (metrics, logs).
    fn refused(&self, _denied: &Denied) {}
}

/// The operation a refusal happened in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Prepare: an unpack or a container's writable rootfs.
    Prepare,
    /// View: a read-only snapshot.
    View,
    /// Update: a label change.
    Update,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Prepare => "prepare",
            Self::View => "view",
            Self::Update => "update",
        })
    }
}

/// Why the gate refused, with what an operator needs to act on it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// The policy refused a CRI pull's manifest.
    #[error("{} (snapshot {snapshot})", Refusal { image, digest, rule, reason })]
    Policy {
        /// The image reference as CRI labelled it.
        image: String,
        /// The manifest digest.
        digest: String,
        /// The deciding rule (`<default>`: the policy default).
        rule: String,
        /// The verifier's reason.
        reason: String,
        /// The unpack's snapshot key.
        snapshot: String,
    },
    /// A pull's labels do not name an image or a digest.
    #[error("{} (snapshot {snapshot})", Refusal { image, digest, rule: "<none>", reason })]
    InvalidLabels {
        /// The image label as sent.
        image: String,
        /// The digest label as sent.
        digest: String,
        /// Which label is wrong and why.
        reason: String,
        /// The unpack's snapshot key.
        snapshot: String,
    },
    /// An unpack without CRI image labels, under `unlabeled = deny`.
    #[error(
        "kcache: unpack of {} (snapshot {snapshot}) has no image labels ({LABEL_IMAGE_REF}, {LABEL_MANIFEST_DIGEST}); \
         rule unlabeled=deny refuses it. Pull through CRI with snapshot annotations on \
         (disable_snapshot_annotations = false)",
        chain.as_deref().unwrap_or("<unknown chain>")
    )]
    Unlabeled {
        /// The unpack's snapshot key.
        snapshot: String,
        /// The chainID it would commit to.
        chain: Option<String>,
    },
    /// A rootfs or view on a parent chain that no verified pull unpacked.
    #[error(
        "kcache: {op} {key} refused by the chain check: parent snapshot {parent} was never part of a verified pull \
         (enforce mode; pull the image through CRI so kcache can verify it)"
    )]
    UnverifiedChain {
        /// Prepare or View.
        op: Op,
        /// The new snapshot's key (a container ID for a rootfs).
        key: String,
        /// The parent chain.
        parent: String,
    },
    /// The parent chain was verified when pulled, and the policy in force no longer admits it.
    #[error(
        "{} ({op} {key} on parent {parent}: verified when pulled, refused by the policy in force; \
         a revoked key or a narrowed rule stops new containers on it)",
        Refusal { image, digest, rule, reason }
    )]
    Revoked {
        /// Prepare or View.
        op: Op,
        /// The new snapshot's key.
        key: String,
        /// The parent chain.
        parent: String,
        /// The image the chain was verified for.
        image: String,
        /// Its manifest digest.
        digest: String,
        /// The rule that decides now.
        rule: String,
        /// Why it fails now.
        reason: String,
    },
    /// A client tried to set, change or remove a label only the gate sets.
    #[error("kcache: label {label} is set by kcache's verification gate only")]
    OwnLabel {
        /// The label.
        label: String,
    },
}

impl Denied {
    /// The `reason` label of `kcache_denied_pulls_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Policy { .. } => "policy",
            Self::InvalidLabels { .. } => "invalid-labels",
            Self::Unlabeled { .. } => "unlabeled",
            Self::UnverifiedChain { .. } => "unverified-chain",
            Self::Revoked { .. } => "revoked",
            Self::OwnLabel { .. } => "own-label",
        }
    }
}

/// What a gated snapshotter fails with: the gate's refusal or the inner snapshotter's error.
#[derive(Debug, thiserror::Error)]
pub enum GateError<E> {
    /// The gate refused.
    #[error(transparent)]
    Denied(Box<Denied>),
    /// The snapshotter underneath failed.
    #[error(transparent)]
    Snapshot(E),
}

impl<E> From<Denied> for GateError<E> {
    fn from(d: Denied) -> Self {
        Self::Denied(Box::new(d))
    }
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

fn own(labels: &HashMap<String, String>) -> impl Iterator<Item = (String, String)> + '_ {
    labels
        .iter()
        .filter(|(k, _)| k.starts_with(OWN_PREFIX))
        .map(|(k, v)| (k.clone(), v.clone()))
}

/// A [`Snapshotter`] that admits only what the policy admits (see the module docs).
pub struct GatedSnapshotter<S, A> {
    inner: S,
    admission: A,
    config: GateStatus,
}

impl<S: Snapshotter, A: Admission> GatedSnapshotter<S, A> {
    /// `inner` behind the gate, deciding with `admission`.
    pub fn new(inner: S, admission: A, config: GateStatus) -> Self {
        Self {
            inner,
            admission,
            config,
        }
    }

    /// The snapshotter underneath.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    fn deny<T>(&self, denied: Denied) -> Result<T, GateError<S::Error>> {
        self.admission.refused(&denied);
        Err(denied.into())
    }

    /// The gate's decision on a Prepare or View; the labels to store.
    fn admit(
        &self,
        op: Op,
        key: &str,
        parent: &str,
        mut labels: HashMap<String, String>,
    ) -> Result<HashMap<String, String>, GateError<S::Error>> {
        strip_own(&mut labels);
        match classify(key, &labels) {
            Class::Pull { image, digest } => {
                let add = self.verify_pull(key, &image, &digest)?;
                if !add.is_empty() && !parent.is_empty() {
                    // The parent chain is part of this verified image too (it was computed from
                    // the verified config): mark it, so layers shared with an earlier,
                    // unverified unpack count for containers of this image.
                    self.mark_verified(parent, &add);
                }
                labels.extend(add);
            }
            Class::UnlabeledUnpack => self.unlabeled_unpack(key, labels.get(LABEL_TARGET).cloned())?,
            Class::Other if !parent.is_empty() && self.config.chain_check && self.admission.mode() == Mode::Enforce => {
                // A parent that cannot be read is an error (NotFound for a missing one, as
                // containerd expects), never a pass.
                let info = self.inner.stat(parent).map_err(GateError::Snapshot)?;
                self.check_chain(op, key, parent, &info.labels)?;
            }
            Class::Other => {}
        }
        Ok(labels)
    }

    /// Verifies a CRI pull's layer: the labels to add when the pull may go on.
    fn verify_pull(&self, key: &str, image: &str, digest: &str) -> Result<Vec<(String, String)>, GateError<S::Error>> {
        if self.admission.mode() == Mode::Off {
            return Ok(vec![]);
        }
        let invalid = |reason: String| Denied::InvalidLabels {
            image: image.to_owned(),
            digest: digest.to_owned(),
            reason,
            snapshot: key.to_owned(),
        };
        let reference = match Reference::parse(image) {
            Ok(r) => r,
            Err(e) => {
                return self.deny(invalid(format!(
                    "label {LABEL_IMAGE_REF} is not an image reference: {e}"
                )))
            }
        };
        let parsed = match Digest::parse(digest) {
            Ok(d) => d,
            Err(e) => return self.deny(invalid(format!("label {LABEL_MANIFEST_DIGEST} is not a digest: {e}"))),
        };
        let v = self.admission.verify(&reference, &parsed);
        let rule = v.rule.as_deref().unwrap_or("<default>");
        if !v.permits() {
            return self.deny(Denied::Policy {
                image: image.to_owned(),
                digest: digest.to_owned(),
                rule: rule.to_owned(),
                reason: v.reason,
                snapshot: key.to_owned(),
            });
        }
        if v.decision != Decision::Allow {
            // Warn mode: the pull goes on, unmarked; containers on it are refused once enforced.
            tracing::warn!(%image, %digest, rule, reason = %v.reason, "warn mode: pull allowed although it failed the policy");
            return Ok(vec![]);
        }
        tracing::debug!(%image, %digest, rule, cached = v.cached, "pull verified");
        Ok(vec![
            (LABEL_VERIFIED.to_owned(), parsed.to_string()),
            (LABEL_VERIFIED_IMAGE.to_owned(), image.to_owned()),
            (LABEL_VERIFIED_RULE.to_owned(), rule.to_owned()),
        ])
    }

    fn mark_verified(&self, parent: &str, add: &[(String, String)]) {
        let result = self.inner.stat(parent).and_then(|mut info| {
            if info.kind != Kind::Committed || info.labels.contains_key(LABEL_VERIFIED) {
                return Ok(());
            }
            let paths: Vec<String> = add.iter().map(|(k, _)| format!("labels.{k}")).collect();
            info.labels.extend(add.iter().cloned());
            self.inner.update(info, &paths).map(|_| ())
        });
        if let Err(e) = result {
            tracing::warn!(parent, error = %e, "could not mark the parent chain verified");
        }
    }

    fn unlabeled_unpack(&self, key: &str, chain: Option<String>) -> Result<(), GateError<S::Error>> {
        let mode = self.admission.mode();
        if self.config.unlabeled == Unlabeled::Allow || mode == Mode::Off {
            return Ok(());
        }
        let denied = Denied::Unlabeled {
            snapshot: key.to_owned(),
            chain,
        };
        if mode == Mode::Warn {
            tracing::warn!("warn mode: {denied}");
            return Ok(());
        }
        self.deny(denied)
    }

    /// The chain check and the re-check: `parent_labels` are the labels of the snapshot `parent`.
    fn check_chain(
        &self,
        op: Op,
        key: &str,
        parent: &str,
        parent_labels: &HashMap<String, String>,
    ) -> Result<(), GateError<S::Error>> {
        let marked = (
            parent_labels.get(LABEL_VERIFIED),
            parent_labels.get(LABEL_VERIFIED_IMAGE),
        );
        let (Some(digest), Some(image)) = marked else {
            return self.deny(Denied::UnverifiedChain {
                op,
                key: key.to_owned(),
                parent: parent.to_owned(),
            });
        };
        let revoked = |rule: &str, reason: String| Denied::Revoked {
            op,
            key: key.to_owned(),
            parent: parent.to_owned(),
            image: image.clone(),
            digest: digest.clone(),
            rule: rule.to_owned(),
            reason,
        };
        // The gate wrote these labels from values it had parsed; a failure here is a store
        // that was edited behind kcache's back.
        let (reference, parsed) = match (Reference::parse(image), Digest::parse(digest)) {
            (Ok(r), Ok(d)) => (r, d),
            _ => return self.deny(revoked("<none>", "the chain's verification labels do not parse".into())),
        };
        let v = self.admission.verify(&reference, &parsed);
        if v.decision == Decision::Allow {
            return Ok(());
        }
        let rule = v.rule.as_deref().unwrap_or("<default>");
        self.deny(revoked(rule, v.reason))
    }
}

impl<S: Snapshotter, A: Admission> Snapshotter for GatedSnapshotter<S, A> {
    type Error = GateError<S::Error>;

    fn stat(&self, key: &str) -> Result<Info, Self::Error> {
        self.inner.stat(key).map_err(GateError::Snapshot)
    }

    fn update(&self, mut info: Info, fieldpaths: &[String]) -> Result<Info, Self::Error> {
        if let Some(p) = fieldpaths
            .iter()
            .find(|p| p.starts_with(&format!("labels.{OWN_PREFIX}")))
        {
            return self.deny(Denied::OwnLabel {
                label: p["labels.".len()..].to_owned(),
            });
        }
        strip_own(&mut info.labels);
        if fieldpaths.is_empty() || fieldpaths.iter().any(|p| p == "labels") {
            // Replacing all labels keeps the gate's.
            let current = self.inner.stat(&info.name).map_err(GateError::Snapshot)?;
            info.labels.extend(own(&current.labels));
        }
        self.inner.update(info, fieldpaths).map_err(GateError::Snapshot)
    }

    fn usage(&self, key: &str) -> Result<Usage, Self::Error> {
        self.inner.usage(key).map_err(GateError::Snapshot)
    }

    fn mounts(&self, key: &str) -> Result<Vec<Mount>, Self::Error> {
        self.inner.mounts(key).map_err(GateError::Snapshot)
    }

    fn prepare(&self, key: &str, parent: &str, labels: HashMap<String, String>) -> Result<Vec<Mount>, Self::Error> {
        let labels = self.admit(Op::Prepare, key, parent, labels)?;
        self.inner.prepare(key, parent, labels).map_err(GateError::Snapshot)
    }

    fn view(&self, key: &str, parent: &str, labels: HashMap<String, String>) -> Result<Vec<Mount>, Self::Error> {
        let labels = self.admit(Op::View, key, parent, labels)?;
        self.inner.view(key, parent, labels).map_err(GateError::Snapshot)
    }

    fn commit(&self, name: &str, key: &str, mut labels: HashMap<String, String>) -> Result<(), Self::Error> {
        // The verification travels from the active snapshot to the committed one, in the
        // commit's own store transaction.
        strip_own(&mut labels);
        let active = self.inner.stat(key).map_err(GateError::Snapshot)?;
        labels.extend(own(&active.labels));
        self.inner.commit(name, key, labels).map_err(GateError::Snapshot)
    }

    fn remove(&self, key: &str) -> Result<(), Self::Error> {
        self.inner.remove(key).map_err(GateError::Snapshot)
    }

    fn walk(&self, filters: &[String]) -> Result<Vec<Info>, Self::Error> {
        self.inner.walk(filters).map_err(GateError::Snapshot)
    }

    fn cleanup(&self) -> Result<(), Self::Error> {
        self.inner.cleanup().map_err(GateError::Snapshot)
    }
}

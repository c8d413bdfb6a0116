//! The gate's rules, each against a real [`OverlaySnapshotter`] on a temporary directory and a
//! table of verdicts standing in for the policy and the registry (the verifier itself is tested
//! against real registries and the cosign CLI elsewhere; here only the gate's decisions matter).

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Mutex,
    },
};

use super::{
    gate::{
        classify, strip_own, Admission, Class, Denied, GateError, GatedSnapshotter, LABEL_IMAGE_REF,
        LABEL_MANIFEST_DIGEST, LABEL_TARGET, LABEL_VERIFIED, LABEL_VERIFIED_IMAGE, LABEL_VERIFIED_RULE,
    },
    Info, Kind, OverlayOptions, OverlaySnapshotter, SnapshotError, Snapshotter,
};
use crate::{
    api::{Decision, GateStatus, ImageVerdict, Unlabeled},
    digest::Digest,
    policy::Mode,
    refusal,
    registry::Reference,
};

const IMAGE: &str = "registry.example/team/app:v1";
const GOOD: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
const BAD: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

/// The policy as a table: digest -> (decision, rule); anything else is denied by the default.
struct Table {
    mode: Mutex<Mode>,
    verdicts: Mutex<HashMap<String, (Decision, &'static str)>>,
    calls: AtomicUsize,
    refused: Mutex<Vec<&'static str>>,
}

impl Table {
    fn new(mode: Mode) -> Self {
        Self {
            mode: Mutex::new(mode),
            verdicts: Mutex::new(HashMap::from([(GOOD.to_owned(), (Decision::Allow, "signed"))])),
            calls: AtomicUsize::new(0),
            refused: Mutex::new(vec![]),
        }
    }

    fn set(&self, digest: &str, decision: Decision) {
        self.verdicts
            .lock()
            .unwrap()
            .insert(digest.to_owned(), (decision, "signed"));
    }
}

impl Admission for &'static Table {
    fn mode(&self) -> Mode {
        *self.mode.lock().unwrap()
    }

    fn verify(&self, image: &Reference, digest: &Digest) -> ImageVerdict {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let mut v = ImageVerdict::pending(image.to_string(), Some(digest.clone()));
        match self.verdicts.lock().unwrap().get(&digest.to_string()) {
            Some((decision, rule)) => {
                v.decision = *decision;
                v.verified = *decision == Decision::Allow;
                v.rule = Some((*rule).to_owned());
                v.reason = format!("table says {}", decision.as_str());
            }
            None => v.reason = "no signature from a trusted key".into(),
        }
        // As the verifier does: warn mode lets a failing image through, with a warning.
        if !v.verified && *self.mode.lock().unwrap() == Mode::Warn {
            v.decision = Decision::AllowWithWarning;
        }
        v
    }

    fn refused(&self, denied: &Denied) {
        self.refused.lock().unwrap().push(denied.kind());
    }
}

type Gated = GatedSnapshotter<OverlaySnapshotter, &'static Table>;

struct Fixture {
    _dir: tempfile::TempDir,
    gate: Gated,
    table: &'static Table,
}

fn fixture(mode: Mode, config: GateStatus) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let inner = OverlaySnapshotter::open_with(dir.path(), OverlayOptions::default()).unwrap();
    let table: &'static Table = Box::leak(Box::new(Table::new(mode)));
    Fixture {
        gate: GatedSnapshotter::new(inner, table, config),
        _dir: dir,
        table,
    }
}

fn enforce() -> Fixture {
    fixture(
        Mode::Enforce,
        GateStatus {
            chain_check: true,
            unlabeled: Unlabeled::Deny,
        },
    )
}

fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

fn pull_labels(digest: &str, chain: &str) -> HashMap<String, String> {
    labels(&[
        (LABEL_IMAGE_REF, IMAGE),
        (LABEL_MANIFEST_DIGEST, digest),
        (LABEL_TARGET, chain),
    ])
}

fn denied<T: std::fmt::Debug>(r: Result<T, GateError<SnapshotError>>) -> Denied {
    match r {
        Err(GateError::Denied(d)) => *d,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Unpacks one verified layer (parent `parent`) as containerd's unpacker does; its chainID.
fn unpack(f: &Fixture, digest: &str, chain: &str, parent: &str) -> Result<(), GateError<SnapshotError>> {
    let key = format!("k8s.io/1/extract-{chain} {chain}");
    f.gate.prepare(&key, parent, pull_labels(digest, chain))?;
    f.gate.commit(chain, &key, labels(&[(LABEL_TARGET, chain)]))
}

fn info(f: &Fixture, key: &str) -> Info {
    f.gate.stat(key).unwrap()
}

#[test]
fn classification() {
    let pull = pull_labels("sha256:00", "sha256:11");
    let expected = Class::Pull {
        image: IMAGE.into(),
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

#[test]
fn a_verified_pull_is_marked_and_the_mark_survives_commit() {
    let f = enforce();
    let key = "k8s.io/1/extract-1 sha256:c1";
    let mut sent = pull_labels(GOOD, "sha256:c1");
    sent.insert(LABEL_VERIFIED.into(), "sha256:forged".into());
    f.gate.prepare(key, "", sent).unwrap();
    let active = info(&f, key);
    assert_eq!(active.labels.get(LABEL_VERIFIED).map(String::as_str), Some(GOOD));
    assert_eq!(active.labels.get(LABEL_VERIFIED_IMAGE).map(String::as_str), Some(IMAGE));
    assert_eq!(
        active.labels.get(LABEL_VERIFIED_RULE).map(String::as_str),
        Some("signed")
    );
    // A client's commit labels cannot overwrite the gate's.
    f.gate
        .commit("sha256:c1", key, labels(&[(LABEL_VERIFIED, BAD), ("x", "y")]))
        .unwrap();
    let committed = info(&f, "sha256:c1");
    assert_eq!(committed.kind, Kind::Committed);
    assert_eq!(committed.labels.get(LABEL_VERIFIED).map(String::as_str), Some(GOOD));
    assert_eq!(committed.labels.get("x").map(String::as_str), Some("y"));
}

#[test]
fn a_refused_pull_names_image_digest_and_rule_and_creates_nothing() {
    let f = enforce();
    let key = "k8s.io/1/extract-1 sha256:c1";
    let d = denied(f.gate.prepare(key, "", pull_labels(BAD, "sha256:c1")));
    assert!(matches!(d, Denied::Policy { .. }), "{d:?}");
    let msg = d.to_string();
    let r = refusal::find(&msg).unwrap_or_else(|| panic!("no refusal line in {msg}"));
    assert_eq!((r.image, r.digest, r.rule), (IMAGE, BAD, "<default>"));
    assert!(
        msg.contains("no signature from a trusted key") && msg.contains(key),
        "{msg}"
    );
    assert!(matches!(
        f.gate.stat(key),
        Err(GateError::Snapshot(SnapshotError::NotFound(_)))
    ));
    assert_eq!(*f.table.refused.lock().unwrap(), ["policy"]);
}

#[test]
fn labels_that_name_no_image_or_digest_are_refused_without_asking_the_policy() {
    let f = enforce();
    for (image, digest, label) in [
        ("not a reference!", GOOD, LABEL_IMAGE_REF),
        (IMAGE, "sha256:short", LABEL_MANIFEST_DIGEST),
    ] {
        let l = labels(&[
            (LABEL_IMAGE_REF, image),
            (LABEL_MANIFEST_DIGEST, digest),
            (LABEL_TARGET, "sha256:c1"),
        ]);
        let d = denied(f.gate.prepare("extract-1 sha256:c1", "", l));
        assert!(matches!(d, Denied::InvalidLabels { .. }), "{d:?}");
        assert!(d.to_string().contains(label), "{d}");
        assert!(d.to_string().contains("denied by rule <none>"), "{d}");
    }
    assert_eq!(f.table.calls.load(Ordering::SeqCst), 0);
}

#[test]
fn warn_mode_lets_a_failing_pull_through_unmarked_and_off_asks_nothing() {
    let f = fixture(
        Mode::Warn,
        GateStatus {
            chain_check: true,
            unlabeled: Unlabeled::Deny,
        },
    );
    f.gate
        .prepare("extract-1 sha256:c1", "", pull_labels(BAD, "sha256:c1"))
        .unwrap();
    assert!(!info(&f, "extract-1 sha256:c1").labels.contains_key(LABEL_VERIFIED));
    // Warn: an unlabeled unpack and an unverified chain pass too.
    f.gate
        .prepare("extract-2 sha256:c2", "", labels(&[(LABEL_TARGET, "sha256:c2")]))
        .unwrap();
    f.gate.commit("sha256:c2", "extract-2 sha256:c2", labels(&[])).unwrap();
    f.gate.prepare("rootfs", "sha256:c2", labels(&[])).unwrap();

    *f.table.mode.lock().unwrap() = Mode::Off;
    let before = f.table.calls.load(Ordering::SeqCst);
    f.gate
        .prepare("extract-3 sha256:c3", "", pull_labels(BAD, "sha256:c3"))
        .unwrap();
    assert_eq!(f.table.calls.load(Ordering::SeqCst), before);
    assert!(f.table.refused.lock().unwrap().is_empty());
}

#[test]
fn an_unlabeled_unpack_is_refused_in_enforce_unless_allowed() {
    let f = enforce();
    let d = denied(
        f.gate
            .prepare("extract-1 sha256:c1", "", labels(&[(LABEL_TARGET, "sha256:c1")])),
    );
    assert!(matches!(d, Denied::Unlabeled { .. }));
    assert!(
        d.to_string().contains("sha256:c1") && d.to_string().contains("unlabeled=deny"),
        "{d}"
    );

    let f = fixture(
        Mode::Enforce,
        GateStatus {
            chain_check: true,
            unlabeled: Unlabeled::Allow,
        },
    );
    f.gate
        .prepare("extract-1 sha256:c1", "", labels(&[(LABEL_TARGET, "sha256:c1")]))
        .unwrap();
    assert!(!info(&f, "extract-1 sha256:c1").labels.contains_key(LABEL_VERIFIED));
}

#[test]
fn the_chain_check_admits_rootfs_only_on_verified_chains() {
    let f = enforce();
    unpack(&f, GOOD, "sha256:c1", "").unwrap();
    // A chain committed without the gate (no mark), built through the inner snapshotter.
    f.gate.inner().prepare("manual", "", labels(&[])).unwrap();
    f.gate.inner().commit("sha256:plain", "manual", labels(&[])).unwrap();

    f.gate.prepare("k8s.io/1/rootfs-ok", "sha256:c1", labels(&[])).unwrap();
    f.gate.view("k8s.io/1/view-ok", "sha256:c1", labels(&[])).unwrap();
    let d = denied(f.gate.prepare("k8s.io/1/rootfs-bad", "sha256:plain", labels(&[])));
    assert!(matches!(d, Denied::UnverifiedChain { .. }), "{d:?}");
    assert!(d.to_string().contains("refused by the chain check"), "{d}");
    // Forged pull labels on a rootfs key are no way around it.
    let d = denied(
        f.gate
            .prepare("k8s.io/1/0123abcd", "sha256:plain", pull_labels(GOOD, "sha256:x")),
    );
    assert!(matches!(d, Denied::UnverifiedChain { .. }), "{d:?}");
    // A missing parent is the snapshotter's NotFound, not a pass.
    assert!(matches!(
        f.gate.prepare("k8s.io/1/rootfs-x", "sha256:none", labels(&[])),
        Err(GateError::Snapshot(SnapshotError::NotFound(_)))
    ));
    // Without the chain check, or in warn mode, the unmarked chain passes.
    let off = fixture(
        Mode::Enforce,
        GateStatus {
            chain_check: false,
            unlabeled: Unlabeled::Deny,
        },
    );
    off.gate.inner().prepare("manual", "", labels(&[])).unwrap();
    off.gate.inner().commit("sha256:plain", "manual", labels(&[])).unwrap();
    off.gate.prepare("rootfs", "sha256:plain", labels(&[])).unwrap();
}

#[test]
fn revoking_an_image_stops_new_containers_on_chains_verified_before() {
    let f = enforce();
    unpack(&f, GOOD, "sha256:c1", "").unwrap();
    unpack(&f, GOOD, "sha256:c2", "sha256:c1").unwrap();
    f.gate.prepare("k8s.io/1/before", "sha256:c2", labels(&[])).unwrap();

    // The key is revoked (or the rule narrowed): the policy now refuses that digest.
    f.table.set(GOOD, Decision::Deny);
    for (op, r) in [
        ("prepare", f.gate.prepare("k8s.io/1/after", "sha256:c2", labels(&[]))),
        ("view", f.gate.view("k8s.io/1/after-view", "sha256:c2", labels(&[]))),
    ] {
        let d = denied(r);
        assert!(matches!(d, Denied::Revoked { .. }), "{d:?}");
        let msg = d.to_string();
        let found = refusal::find(&msg).unwrap_or_else(|| panic!("no refusal line in {msg}"));
        assert_eq!((found.image, found.digest, found.rule), (IMAGE, GOOD, "signed"));
        assert!(
            msg.contains(op) && msg.contains("sha256:c2") && msg.contains("policy in force"),
            "{msg}"
        );
    }
    assert!(matches!(
        f.gate.stat("k8s.io/1/after"),
        Err(GateError::Snapshot(SnapshotError::NotFound(_)))
    ));
    // The container started before keeps running: the gate never touches existing snapshots.
    assert!(f.gate.stat("k8s.io/1/before").is_ok());
    // Warn mode would only have let it pass; restoring the key admits it again.
    f.table.set(GOOD, Decision::Allow);
    f.gate.prepare("k8s.io/1/again", "sha256:c2", labels(&[])).unwrap();
    assert_eq!(*f.table.refused.lock().unwrap(), ["revoked", "revoked"]);
}

#[test]
fn a_chain_marked_without_its_image_cannot_be_rechecked_and_is_refused() {
    let f = enforce();
    // What a kcache before the re-check wrote: the digest and the rule, no image.
    f.gate.inner().prepare("old", "", labels(&[])).unwrap();
    f.gate
        .inner()
        .commit(
            "sha256:old",
            "old",
            labels(&[(LABEL_VERIFIED, GOOD), (LABEL_VERIFIED_RULE, "signed")]),
        )
        .unwrap();
    let d = denied(f.gate.prepare("rootfs", "sha256:old", labels(&[])));
    assert!(matches!(d, Denied::UnverifiedChain { .. }), "{d:?}");
}

#[test]
fn a_verified_pull_marks_its_parent_chain_unpacked_earlier_without_verification() {
    let f = enforce();
    // The base layer came from an earlier unlabeled unpack (allowed in warn mode then).
    f.gate.inner().prepare("base", "", labels(&[])).unwrap();
    f.gate.inner().commit("sha256:base", "base", labels(&[])).unwrap();
    unpack(&f, GOOD, "sha256:top", "sha256:base").unwrap();
    let base = info(&f, "sha256:base");
    assert_eq!(base.labels.get(LABEL_VERIFIED).map(String::as_str), Some(GOOD));
    assert_eq!(base.labels.get(LABEL_VERIFIED_IMAGE).map(String::as_str), Some(IMAGE));
    f.gate.prepare("rootfs-on-base", "sha256:base", labels(&[])).unwrap();
}

#[test]
fn clients_cannot_set_change_or_drop_the_gates_labels() {
    let f = enforce();
    unpack(&f, GOOD, "sha256:c1", "").unwrap();
    let mut i = info(&f, "sha256:c1");
    i.labels.insert(LABEL_VERIFIED.into(), BAD.into());
    let d = denied(f.gate.update(i.clone(), &[format!("labels.{LABEL_VERIFIED}")]));
    assert_eq!(
        d,
        Denied::OwnLabel {
            label: LABEL_VERIFIED.into()
        }
    );
    // Replacing all labels keeps the gate's and drops the client's forged ones.
    i.labels = labels(&[("team", "a"), (LABEL_VERIFIED_IMAGE, "evil/x:1")]);
    let updated = f.gate.update(i, &["labels".into()]).unwrap();
    assert_eq!(updated.labels.get("team").map(String::as_str), Some("a"));
    assert_eq!(updated.labels.get(LABEL_VERIFIED).map(String::as_str), Some(GOOD));
    assert_eq!(
        updated.labels.get(LABEL_VERIFIED_IMAGE).map(String::as_str),
        Some(IMAGE)
    );
}

#[cfg(feature = "grpc")]
#[test]
fn refusals_are_permission_denied_and_snapshot_errors_keep_their_codes() {
    use tonic::{Code, Status};
    let f = enforce();
    let s = Status::from(
        f.gate
            .prepare("extract-1 sha256:c1", "", pull_labels(BAD, "sha256:c1"))
            .unwrap_err(),
    );
    assert_eq!(s.code(), Code::PermissionDenied);
    assert!(refusal::find(s.message()).is_some(), "{}", s.message());
    let s = Status::from(f.gate.stat("nope").unwrap_err());
    assert_eq!(s.code(), Code::NotFound);
}

//! Unit tests of the overlay snapshotter on temporary directories.

use std::{collections::HashMap, fs, path::Path, time::Instant};

use super::{Info, Kind, Mount, OverlayOptions, OverlaySnapshotter, SnapshotError, Snapshotter};

/// Without `index=off`, whatever this kernel has; one test covers it.
fn open(root: &Path) -> OverlaySnapshotter {
    OverlaySnapshotter::open_with(root, OverlayOptions::default()).unwrap()
}

fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

fn no_labels() -> HashMap<String, String> {
    HashMap::new()
}

fn fs_dir(root: &Path, id: u64) -> String {
    root.join("snapshots")
        .join(id.to_string())
        .join("fs")
        .display()
        .to_string()
}

fn work_dir(root: &Path, id: u64) -> String {
    root.join("snapshots")
        .join(id.to_string())
        .join("work")
        .display()
        .to_string()
}

fn bind(source: String, ro: &str) -> Vec<Mount> {
    vec![Mount {
        fs_type: "bind".into(),
        source,
        target: String::new(),
        options: vec![ro.into(), "rbind".into()],
    }]
}

fn overlay(options: Vec<String>) -> Vec<Mount> {
    vec![Mount {
        fs_type: "overlay".into(),
        source: "overlay".into(),
        target: String::new(),
        options,
    }]
}

/// Checks the invariants a crash must never break, and returns the number of records.
pub(super) fn check_invariants(s: &OverlaySnapshotter) -> usize {
    let records = s.records().unwrap();
    let by_key: HashMap<_, _> = records.iter().cloned().collect();
    let mut ids = std::collections::HashSet::new();
    let mut expected_children = Vec::new();
    for (key, record) in &records {
        assert!(ids.insert(record.id), "id {} used twice", record.id);
        let dir = s.root().join("snapshots").join(record.id.to_string());
        assert!(dir.join("fs").is_dir(), "{key}: {} missing", dir.display());
        if record.kind == Kind::Active {
            assert!(dir.join("work").is_dir(), "{key}: work dir missing");
        }
        if !record.parent.is_empty() {
            let parent = by_key
                .get(&record.parent)
                .unwrap_or_else(|| panic!("{key}: parent missing"));
            assert_eq!(parent.kind, Kind::Committed, "{key}: parent not committed");
            expected_children.push((record.parent.clone(), key.clone()));
        }
    }
    expected_children.sort();
    assert_eq!(
        s.children_index().unwrap(),
        expected_children,
        "children index out of sync"
    );
    records.len()
}

/// Directories in `snapshots/` that no record owns.
pub(super) fn orphans(s: &OverlaySnapshotter) -> Vec<String> {
    let owned: Vec<String> = s.records().unwrap().iter().map(|(_, r)| r.id.to_string()).collect();
    let mut out = Vec::new();
    for entry in fs::read_dir(s.root().join("snapshots")).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if !owned.contains(&name) {
            out.push(name);
        }
    }
    out
}

#[test]
fn prepare_without_parent_is_a_writable_bind_mount_and_view_a_read_only_one() {
    let tmp = tempfile::tempdir().unwrap();
    let s = open(tmp.path());
    assert_eq!(
        s.prepare("a", "", no_labels()).unwrap(),
        bind(fs_dir(tmp.path(), 1), "rw")
    );
    assert_eq!(s.view("v", "", no_labels()).unwrap(), bind(fs_dir(tmp.path(), 2), "ro"));
    assert_eq!(s.mounts("a").unwrap(), bind(fs_dir(tmp.path(), 1), "rw"));
    assert_eq!(s.mounts("v").unwrap(), bind(fs_dir(tmp.path(), 2), "ro"));
    assert!(Path::new(&work_dir(tmp.path(), 1)).is_dir());
    assert!(!Path::new(&work_dir(tmp.path(), 2)).exists(), "views have no work dir");
    check_invariants(&s);
}

#[test]
fn a_chain_of_three_overlays_its_parents_nearest_first() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let s = open(root);
    s.prepare("k1", "", no_labels()).unwrap();
    s.commit("c1", "k1", no_labels()).unwrap();
    // One committed parent: a View is a read-only bind of the parent, Active an overlay.
    assert_eq!(s.view("v1", "c1", no_labels()).unwrap(), bind(fs_dir(root, 1), "ro"));
    let mounts = s.prepare("k2", "c1", no_labels()).unwrap();
    assert_eq!(
        mounts,
        overlay(vec![
            format!("workdir={}", work_dir(root, 3)),
            format!("upperdir={}", fs_dir(root, 3)),
            format!("lowerdir={}", fs_dir(root, 1)),
        ])
    );
    s.commit("c2", "k2", no_labels()).unwrap();
    s.prepare("k3", "c2", no_labels()).unwrap();
    s.commit("c3", "k3", no_labels()).unwrap();
    // Ids so far: k1 1, v1 2, k2 3, k3 4; v3 gets 5 and k4 6.
    let lower = format!("lowerdir={}:{}:{}", fs_dir(root, 4), fs_dir(root, 3), fs_dir(root, 1));
    assert_eq!(s.view("v3", "c3", no_labels()).unwrap(), overlay(vec![lower.clone()]));
    assert_eq!(
        s.prepare("k4", "c3", no_labels()).unwrap(),
        overlay(vec![
            format!("workdir={}", work_dir(root, 6)),
            format!("upperdir={}", fs_dir(root, 6)),
            lower
        ])
    );
    assert_eq!(s.stat("c3").unwrap().parent, "c2");
    assert_eq!(s.stat("k4").unwrap().parent, "c3");
    // Committed snapshots keep their id: the mounts of a committed one with parents are its lowers.
    assert_eq!(
        s.mounts("c3").unwrap(),
        overlay(vec![format!("lowerdir={}:{}", fs_dir(root, 3), fs_dir(root, 1))])
    );
    check_invariants(&s);
}

#[test]
fn index_off_comes_first_in_overlay_mounts_only() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let s = OverlaySnapshotter::open_with(root, OverlayOptions { index_off: true }).unwrap();
    assert_eq!(s.prepare("k1", "", no_labels()).unwrap(), bind(fs_dir(root, 1), "rw"));
    s.commit("c1", "k1", no_labels()).unwrap();
    assert_eq!(
        s.prepare("k2", "c1", no_labels()).unwrap(),
        overlay(vec![
            "index=off".into(),
            format!("workdir={}", work_dir(root, 2)),
            format!("upperdir={}", fs_dir(root, 2)),
            format!("lowerdir={}", fs_dir(root, 1)),
        ])
    );
}

#[test]
fn stat_reports_kind_labels_and_times() {
    let tmp = tempfile::tempdir().unwrap();
    let s = open(tmp.path());
    s.prepare("a", "", labels(&[("x", "1")])).unwrap();
    let info = s.stat("a").unwrap();
    assert_eq!(
        (info.name.as_str(), info.parent.as_str(), info.kind),
        ("a", "", Kind::Active)
    );
    assert_eq!(info.labels, labels(&[("x", "1")]));
    assert_eq!(info.created_at, info.updated_at);
    s.commit("c", "a", labels(&[("y", "2")])).unwrap();
    let info = s.stat("c").unwrap();
    assert_eq!((info.kind, info.labels), (Kind::Committed, labels(&[("y", "2")])));
    assert!(matches!(s.stat("a"), Err(SnapshotError::NotFound(k)) if k == "a"));
}

#[test]
fn errors_carry_the_codes_containerd_expects() {
    let tmp = tempfile::tempdir().unwrap();
    let s = open(tmp.path());
    s.prepare("a", "", no_labels()).unwrap();
    s.view("v", "", no_labels()).unwrap();
    let err = |r: Result<(), SnapshotError>| r.unwrap_err();
    assert!(matches!(
        err(s.prepare("a", "", no_labels()).map(drop)),
        SnapshotError::AlreadyExists(_)
    ));
    assert!(matches!(
        err(s.view("a", "", no_labels()).map(drop)),
        SnapshotError::AlreadyExists(_)
    ));
    assert!(matches!(
        err(s.prepare("b", "nope", no_labels()).map(drop)),
        SnapshotError::NotFound(_)
    ));
    assert!(matches!(
        err(s.prepare("b", "a", no_labels()).map(drop)),
        SnapshotError::InvalidArgument(_)
    ));
    assert!(matches!(
        err(s.prepare("", "", no_labels()).map(drop)),
        SnapshotError::InvalidArgument(_)
    ));
    assert!(matches!(
        err(s.commit("c", "nope", no_labels())),
        SnapshotError::NotFound(_)
    ));
    assert!(matches!(
        err(s.commit("c", "v", no_labels())),
        SnapshotError::FailedPrecondition(_)
    ));
    assert!(matches!(
        err(s.commit("v", "a", no_labels())),
        SnapshotError::AlreadyExists(_)
    ));
    s.commit("c", "a", no_labels()).unwrap();
    assert!(matches!(
        err(s.commit("d", "c", no_labels())),
        SnapshotError::FailedPrecondition(_)
    ));
    s.prepare("child", "c", no_labels()).unwrap();
    assert!(matches!(err(s.remove("c")), SnapshotError::FailedPrecondition(_)));
    assert!(matches!(err(s.remove("nope")), SnapshotError::NotFound(_)));
    assert!(matches!(err(s.mounts("nope").map(drop)), SnapshotError::NotFound(_)));
    assert!(matches!(err(s.usage("nope").map(drop)), SnapshotError::NotFound(_)));
    let ghost = Info {
        name: "nope".into(),
        ..s.stat("c").unwrap()
    };
    assert!(matches!(
        err(s.update(ghost, &[]).map(drop)),
        SnapshotError::NotFound(_)
    ));
    let info = s.stat("c").unwrap();
    assert!(matches!(
        err(s.update(info, &["parent".into()]).map(drop)),
        SnapshotError::InvalidArgument(_)
    ));
    assert!(matches!(
        err(s.walk(&["name~=x".into()]).map(drop)),
        SnapshotError::InvalidArgument(_)
    ));
    check_invariants(&s);
}

#[test]
fn remove_deletes_record_and_directory_and_frees_the_parent() {
    let tmp = tempfile::tempdir().unwrap();
    let s = open(tmp.path());
    s.prepare("a", "", no_labels()).unwrap();
    s.commit("c", "a", no_labels()).unwrap();
    s.prepare("b", "c", no_labels()).unwrap();
    s.remove("b").unwrap();
    assert!(!tmp.path().join("snapshots/2").exists());
    s.remove("c").unwrap();
    assert!(!tmp.path().join("snapshots/1").exists());
    assert_eq!(check_invariants(&s), 0);
    assert!(orphans(&s).is_empty());
    // Ids are never reused.
    s.prepare("again", "", no_labels()).unwrap();
    assert!(tmp.path().join("snapshots/3/fs").is_dir());
}

#[test]
fn update_applies_field_paths_like_containerd() {
    let tmp = tempfile::tempdir().unwrap();
    let s = open(tmp.path());
    s.prepare("a", "", labels(&[("keep", "1"), ("change", "2"), ("drop", "3")]))
        .unwrap();
    let before = s.stat("a").unwrap();
    let request = Info {
        labels: labels(&[("change", "20"), ("new", "4")]),
        ..before.clone()
    };
    let fields = [
        "labels.change".to_owned(),
        "labels.new".to_owned(),
        "labels.drop".to_owned(),
    ];
    let after = s.update(request.clone(), &fields).unwrap();
    assert_eq!(after.labels, labels(&[("keep", "1"), ("change", "20"), ("new", "4")]));
    assert!(after.updated_at >= before.updated_at);
    assert_eq!(after.created_at, before.created_at);
    assert_eq!(s.stat("a").unwrap(), after);
    // `labels` and no field paths both replace every label.
    let after = s
        .update(
            Info {
                labels: labels(&[("only", "1")]),
                ..before.clone()
            },
            &["labels".into()],
        )
        .unwrap();
    assert_eq!(after.labels, labels(&[("only", "1")]));
    let after = s
        .update(
            Info {
                labels: no_labels(),
                ..before.clone()
            },
            &[],
        )
        .unwrap();
    assert!(after.labels.is_empty());
    // Kind, parent and times in the request are ignored.
    let after = s
        .update(
            Info {
                kind: Kind::Committed,
                parent: "x".into(),
                ..request
            },
            &[],
        )
        .unwrap();
    assert_eq!((after.kind, after.parent.as_str()), (Kind::Active, ""));
}

#[test]
fn walk_filters_by_kind_name_parent_and_labels() {
    let tmp = tempfile::tempdir().unwrap();
    let s = open(tmp.path());
    s.prepare("k1", "", no_labels()).unwrap();
    s.commit("c1", "k1", labels(&[("containerd.io/snapshot.ref", "c1")]))
        .unwrap();
    s.prepare("k2", "c1", labels(&[("team", "a")])).unwrap();
    s.view("v1", "c1", labels(&[("team", "b")])).unwrap();
    let names = |filters: &[&str]| {
        let filters: Vec<String> = filters.iter().map(|f| (*f).to_owned()).collect();
        let mut names: Vec<String> = s.walk(&filters).unwrap().into_iter().map(|i| i.name).collect();
        names.sort();
        names
    };
    assert_eq!(names(&[]), ["c1", "k2", "v1"]);
    assert_eq!(names(&["kind==committed"]), ["c1"]);
    assert_eq!(names(&["kind==active"]), ["k2"]);
    assert_eq!(names(&["name==v1"]), ["v1"]);
    assert_eq!(names(&["parent==c1"]), ["k2", "v1"]);
    assert_eq!(names(&["labels.\"containerd.io/snapshot.ref\"==c1"]), ["c1"]);
    assert_eq!(names(&["labels.team"]), ["k2", "v1"]);
    assert_eq!(names(&["labels.team,kind==view"]), ["v1"]);
    assert_eq!(names(&["kind==view", "kind==committed"]), ["c1", "v1"]);
    assert_eq!(names(&["labels.team==c"]), Vec::<String>::new());
}

#[test]
fn usage_measures_active_snapshots_and_caches_committed_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let s = open(tmp.path());
    s.prepare("a", "", no_labels()).unwrap();
    let empty = s.usage("a").unwrap();
    assert_eq!(empty.inodes, 1, "the root directory alone");
    let upper = tmp.path().join("snapshots/1/fs");
    fs::write(upper.join("file"), vec![7u8; 64 * 1024]).unwrap();
    fs::create_dir(upper.join("dir")).unwrap();
    fs::hard_link(upper.join("file"), upper.join("dir/link")).unwrap();
    let used = s.usage("a").unwrap();
    assert_eq!(used.inodes, 3, "root, dir and one file for two names");
    assert!(used.size >= 64 * 1024, "{used:?}");
    s.commit("c", "a", no_labels()).unwrap();
    assert_eq!(s.usage("c").unwrap(), used);
    // Committed usage is cached: later changes on disk do not show.
    fs::write(upper.join("more"), vec![1u8; 64 * 1024]).unwrap();
    assert_eq!(s.usage("c").unwrap(), used);
    s.view("v", "c", no_labels()).unwrap();
    assert_eq!(s.usage("v").unwrap(), super::Usage::default());
}

#[test]
fn cleanup_removes_only_directories_no_record_owns() {
    let tmp = tempfile::tempdir().unwrap();
    let s = open(tmp.path());
    s.prepare("a", "", no_labels()).unwrap();
    let snapshots = tmp.path().join("snapshots");
    for orphan in ["new-abc/fs", "rm-3", "42/fs", "1x"] {
        fs::create_dir_all(snapshots.join(orphan)).unwrap();
    }
    assert_eq!(orphans(&s).len(), 4);
    s.cleanup().unwrap();
    assert!(orphans(&s).is_empty());
    assert!(snapshots.join("1/fs").is_dir());
    check_invariants(&s);
}

#[test]
fn a_reopened_snapshotter_sees_everything_that_was_committed() {
    let tmp = tempfile::tempdir().unwrap();
    let before = {
        let s = open(tmp.path());
        s.prepare("k1", "", labels(&[("a", "b")])).unwrap();
        s.commit("c1", "k1", no_labels()).unwrap();
        s.prepare("k2", "c1", no_labels()).unwrap();
        s.view("v", "c1", no_labels()).unwrap();
        let mut all = s.walk(&[]).unwrap();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        (all, s.mounts("k2").unwrap())
    };
    let s = open(tmp.path());
    let mut all = s.walk(&[]).unwrap();
    all.sort_by(|a, b| a.name.cmp(&b.name));
    assert_eq!((all, s.mounts("k2").unwrap()), before);
    // The id counter survives too.
    s.prepare("k3", "", no_labels()).unwrap();
    assert!(tmp.path().join("snapshots/4/fs").is_dir());
    check_invariants(&s);
}

#[test]
fn a_second_open_of_the_same_root_fails_while_the_first_is_open() {
    let tmp = tempfile::tempdir().unwrap();
    let _first = open(tmp.path());
    assert!(matches!(
        OverlaySnapshotter::open(tmp.path()),
        Err(SnapshotError::Store(_))
    ));
}

/// Prepare latency at 10 and 10,000 snapshots. Run with
/// `cargo test -p kcache-core --release prepare_latency -- --ignored --nocapture`.
#[test]
#[ignore = "timing, not a check: prints the numbers"]
fn print_prepare_latency_at_10_and_10000_snapshots() {
    let tmp = tempfile::tempdir().unwrap();
    let s = open(tmp.path());
    s.prepare("base-k", "", no_labels()).unwrap();
    s.commit("base", "base-k", no_labels()).unwrap();
    let mut n = 1;
    for target in [10, 10_000] {
        while n < target {
            s.view(&format!("fill-{n}"), "base", no_labels()).unwrap();
            n += 1;
        }
        let mut times = Vec::new();
        for i in 0..200 {
            let key = format!("probe-{target}-{i}");
            let start = Instant::now();
            s.prepare(&key, "base", no_labels()).unwrap();
            times.push(start.elapsed());
            s.remove(&key).unwrap();
        }
        times.sort();
        println!(
            "prepare at {target} snapshots: median {:?}, p90 {:?}, max {:?}",
            times[times.len() / 2],
            times[times.len() * 9 / 10],
            times[times.len() - 1]
        );
    }
}

/// A crash after a snapshot's directory was renamed into place and before the commit that
/// allocated its id: after the restart the id is handed out again and the directory is in the
/// way. (Found by the CRI E2E test that SIGKILLs kcached mid-unpack.)
#[test]
fn a_directory_left_by_a_crash_does_not_block_the_next_prepare() {
    let tmp = tempfile::tempdir().unwrap();
    let s = open(tmp.path());
    s.prepare("a", "", no_labels()).unwrap();
    // What the crashed Prepare left: snapshots/2 with content, no record.
    let orphan = tmp.path().join("snapshots/2");
    fs::create_dir_all(orphan.join("fs/usr")).unwrap();
    fs::write(orphan.join("fs/usr/half-written"), b"x").unwrap();
    drop(s);
    let s = open(tmp.path());
    let mounts = s.prepare("b", "", no_labels()).unwrap();
    assert_eq!(mounts, bind(fs_dir(tmp.path(), 2), "rw"));
    assert!(!orphan.join("fs/usr").exists(), "the new snapshot starts empty");
}

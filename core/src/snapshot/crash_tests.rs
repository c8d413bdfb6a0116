//! Crash safety: a child process (this test binary, re-executed) runs mutations in a loop and
//! is killed with SIGKILL at a random moment; the parent then reopens the store and checks that
//! no half-made state is visible and that every commit the child saw acknowledged is still
//! there, in the style of youki's `test_in_child_process`.

use std::{
    collections::{HashMap, HashSet},
    fs,
    hash::{BuildHasher, RandomState},
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use super::{
    tests::{check_invariants, orphans},
    Mount, OverlayOptions, OverlaySnapshotter, SnapshotError, Snapshotter,
};

/// Set in the child: the snapshotter root to mutate until killed.
const CHILD_ROOT: &str = "KCACHE_SNAPSHOT_CRASH_CHILD_ROOT";
const TEST_NAME: &str = "snapshot::crash_tests::sigkill_at_any_point_leaves_the_old_or_the_new_state";

fn random() -> u64 {
    RandomState::new().hash_one(std::process::id())
}

/// The upper (writable) directory in mounts returned for an Active snapshot.
fn upper(mounts: &[Mount]) -> Option<PathBuf> {
    let m = mounts.first()?;
    if m.fs_type == "bind" {
        return Some(PathBuf::from(&m.source));
    }
    m.options
        .iter()
        .find_map(|o| o.strip_prefix("upperdir="))
        .map(PathBuf::from)
}

/// The child's journal, beside the store root: `committed NAME` once a commit returned, `removing
/// NAME` before a committed snapshot is removed. Each line is synced before the child goes on.
const JOURNAL: &str = "acknowledged.log";

fn journal_path(root: &Path) -> PathBuf {
    root.parent().expect("the store root has a parent").join(JOURNAL)
}

fn journal(root: &Path, line: &str) -> Result<(), SnapshotError> {
    let path = journal_path(root);
    let mut f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(SnapshotError::io("open", &path))?;
    f.write_all(format!("{line}\n").as_bytes())
        .and_then(|()| f.sync_data())
        .map_err(SnapshotError::io("write", &path))
}

/// The committed snapshots the journal says must exist: acknowledged, and never (possibly)
/// removed.
fn acknowledged(root: &Path) -> HashSet<String> {
    let text = fs::read_to_string(journal_path(root)).unwrap_or_default();
    let mut live = HashSet::new();
    for line in text.lines() {
        match line.split_once(' ') {
            Some(("committed", name)) => live.insert(name.to_owned()),
            Some(("removing", name)) => live.remove(name),
            _ => false,
        };
    }
    live
}

/// Every kind of mutation, forever. Errors other than the expected ones end the child, which
/// the parent reports.
fn mutate_forever(root: &Path) -> Result<(), SnapshotError> {
    let s = OverlaySnapshotter::open_with(root, OverlayOptions::default())?;
    let tag = std::process::id();
    let mut parent = String::new();
    for i in 0u64.. {
        let key = format!("k-{tag}-{i}");
        let labels = HashMap::from([("i".to_owned(), i.to_string())]);
        let mounts = s.prepare(&key, &parent, labels.clone())?;
        if let Some(dir) = upper(&mounts) {
            fs::write(dir.join("file"), i.to_le_bytes()).map_err(SnapshotError::io("write", &dir))?;
        }
        if i % 4 == 3 {
            s.remove(&key)?;
        } else {
            let name = format!("c-{tag}-{i}");
            s.commit(&name, &key, labels.clone())?;
            journal(root, &format!("committed {name}"))?;
            let view = format!("v-{tag}-{i}");
            s.view(&view, &name, labels)?;
            let mut info = s.stat(&view)?;
            info.labels.insert("touched".into(), "yes".into());
            s.update(info, &["labels.touched".into()])?;
            s.remove(&view)?;
            parent = if i % 5 == 4 { String::new() } else { name };
        }
        if i % 7 == 6 {
            // Prune: remove whatever committed snapshots have no children (others refuse).
            for info in s.walk(&["kind==committed".into()])? {
                if info.name != parent {
                    journal(root, &format!("removing {}", info.name))?;
                    match s.remove(&info.name) {
                        Ok(()) | Err(SnapshotError::FailedPrecondition(_)) => {}
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        if i % 11 == 10 {
            s.cleanup()?;
        }
    }
    Ok(())
}

#[test]
fn sigkill_at_any_point_leaves_the_old_or_the_new_state() {
    if let Some(root) = std::env::var_os(CHILD_ROOT) {
        if let Err(err) = mutate_forever(Path::new(&root)) {
            eprintln!("child failed: {err:?}");
            std::process::exit(3);
        }
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    let exe = std::env::current_exe().unwrap();
    let mut seen_records = 0;
    let mut checked_acks = 0;
    for iteration in 0..20 {
        let mut child = Command::new(&exe)
            .args([TEST_NAME, "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_ROOT, &root)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        thread::sleep(Duration::from_millis(30 + random() % 300));
        // SIGKILL: no destructor, no flush, no unlock runs in the child.
        child.kill().unwrap();
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.code().is_none(),
            "iteration {iteration}: child exited on its own ({:?}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        let s = OverlaySnapshotter::open_with(&root, OverlayOptions::default()).unwrap();
        check_invariants(&s);
        s.cleanup().unwrap();
        assert_eq!(orphans(&s), Vec::<String>::new(), "iteration {iteration}");
        seen_records += check_invariants(&s);
        // Nothing acknowledged is lost.
        for name in acknowledged(&root) {
            let info = s
                .stat(&name)
                .unwrap_or_else(|e| panic!("iteration {iteration}: acknowledged commit {name} lost: {e:?}"));
            assert_eq!(info.kind, super::Kind::Committed, "iteration {iteration}: {name}");
            checked_acks += 1;
        }
    }
    assert!(seen_records > 0, "the children never got to commit anything");
    assert!(checked_acks > 0, "no acknowledged commit was ever checked");
}

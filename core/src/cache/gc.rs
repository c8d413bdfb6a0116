//! The store's locks and its garbage collector: the one implementation kcached's rounds,
//! `kcache cache gc` and the hook's tests run.
//!
//! # The `.lock` protocol (see [`crate::cache::store`])
//! - A pull holds `<entry>/.lock` shared from creating the entry dir until its record is written
//!   ([`EntryLock::shared`]); the hook holds it shared while it re-checks the record and writes
//!   `refs/<container-id>` ([`EntryLock::shared_existing`]).
//! - GC takes it exclusively without waiting ([`EntryLock::try_exclusive`]: a busy entry is
//!   skipped this round), drops refs left from an earlier boot, and removes the entry only when
//!   no approved cache points at it and `refs/` is empty: it renames the entry to a
//!   `.tmp-gc-` name (so a half-removed entry is never visible), unlocks, then deletes it.
//! - A shared lock taken on a `.lock` that GC renamed away meanwhile is worthless, so both shared
//!   lockers check, once they hold it, that the file is still the one at the entry's path.
//!
//! Plain std + serde + rustix's `flock`: the hook links this module (no tokio, no crypto).

use std::{
    collections::BTreeSet,
    fs::{File, OpenOptions},
    io,
    os::unix::fs::{MetadataExt, OpenOptionsExt},
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use rustix::fs::{FlockOperation, OFlags};
use serde::Serialize;

use crate::{
    cache::store::{NodeCaches, StoreLayout, LOCK_FILE, REFS_DIR},
    digest::Digest,
};

/// Name of the temp dirs GC renames entries to before removing them.
const GC_PREFIX: &str = ".tmp-gc-";
/// Prefix of an interrupted extraction's temp dir (`.tmp-<name>-<random>`).
pub(crate) const TEMP_PREFIX: &str = ".tmp-";
/// Prefix of an extraction's name lock (`.lock-<name>`).
pub(crate) const LOCK_PREFIX: &str = ".lock-";
/// Attempts at a shared lock while GC keeps renaming the entry away.
const LOCK_ATTEMPTS: usize = 16;

/// What GC did (or, dry, would do).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct GcReport {
    /// Digests removed.
    pub removed: Vec<String>,
    /// Digests kept because an approved cache points at them.
    pub kept_approved: Vec<String>,
    /// Digests kept because containers use them (`refs/` not empty), with the count.
    pub kept_in_use: Vec<(String, usize)>,
    /// Digests skipped because a pull or the hook held the lock.
    pub busy: Vec<String>,
    /// Leftovers of interrupted extractions or removals deleted.
    pub temp_removed: usize,
    /// Problems (the entry stays).
    pub errors: Vec<String>,
}

// ---- the entry lock ----

/// `flock` on `<entry>/.lock`, released on drop (close).
#[derive(Debug)]
pub struct EntryLock {
    _file: File,
}

/// Opens (creating) a lock file, never through a symlink.
fn open_lock_file(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(OFlags::NOFOLLOW.bits() as i32)
        .open(path)
}

impl EntryLock {
    /// For a pull: creates the entry dir if needed and locks it shared. Retries when GC renamed
    /// the entry away between the open and the lock.
    pub fn shared(layout: &StoreLayout, digest: &Digest) -> io::Result<Self> {
        let entry = layout.entry_dir(digest);
        for _ in 0..LOCK_ATTEMPTS {
            std::fs::create_dir_all(layout.root())?;
            match std::fs::create_dir(&entry) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
            if let Some(lock) = Self::try_shared(layout, digest)? {
                return Ok(lock);
            }
        }
        Err(io::Error::other(format!("{} keeps being removed", entry.display())))
    }

    /// For the hook: locks an existing entry shared; `None` when the entry is not there (GC
    /// removed it, or it never was). Never creates the entry dir.
    pub fn shared_existing(layout: &StoreLayout, digest: &Digest) -> io::Result<Option<Self>> {
        for _ in 0..LOCK_ATTEMPTS {
            if !layout.entry_dir(digest).is_dir() {
                return Ok(None);
            }
            if let Some(lock) = Self::try_shared(layout, digest)? {
                return Ok(Some(lock));
            }
        }
        Err(io::Error::other(format!(
            "{} keeps being removed",
            layout.entry_dir(digest).display()
        )))
    }

    /// One attempt: open, lock shared (waiting for GC), and check the file is still the entry's
    /// `.lock` (GC renames the whole entry away before it unlocks). `None`: try again.
    fn try_shared(layout: &StoreLayout, digest: &Digest) -> io::Result<Option<Self>> {
        let path = layout.lock_path(digest);
        let file = match open_lock_file(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        rustix::fs::flock(&file, FlockOperation::LockShared)?;
        let held = file.metadata()?;
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.ino() == held.ino() && m.dev() == held.dev() => Ok(Some(Self { _file: file })),
            _ => Ok(None),
        }
    }

    /// For GC: locks an existing entry dir exclusively, without waiting; `None` when someone
    /// holds it.
    pub fn try_exclusive(entry: &Path) -> io::Result<Option<Self>> {
        let file = open_lock_file(&entry.join(LOCK_FILE))?;
        match rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(Some(Self { _file: file })),
            Err(rustix::io::Errno::WOULDBLOCK) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

// ---- GC ----

/// Removes the store entries that no cache in `state` points at and whose `refs/` holds no
/// live ref, each under its exclusive lock (busy entries are skipped); removes the leftovers
/// of interrupted extractions and removals. `dry_run`: report only.
pub fn gc(layout: &StoreLayout, state: &NodeCaches, dry_run: bool) -> GcReport {
    let mut report = GcReport::default();
    let wanted: BTreeSet<String> = state
        .caches
        .iter()
        .filter_map(|c| c.digest.as_deref())
        .filter_map(|d| Digest::parse(d).ok())
        .map(|d| d.hex().to_string())
        .collect();
    let dir = match std::fs::read_dir(layout.root()) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return report,
        Err(e) => {
            report
                .errors
                .push(format!("cannot list {}: {e}", layout.root().display()));
            return report;
        }
    };
    let boot = current_boot_id();
    for dirent in dir.flatten() {
        let name = dirent.file_name().to_string_lossy().into_owned();
        let path = dirent.path();
        if !dirent.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        if name.starts_with(GC_PREFIX) {
            // A removal that was interrupted: nobody uses a renamed entry.
            if !dry_run {
                match std::fs::remove_dir_all(&path) {
                    Ok(()) => report.temp_removed += 1,
                    Err(e) => report.errors.push(format!("cannot remove {}: {e}", path.display())),
                }
            }
            continue;
        }
        if name.len() != 64 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
            continue;
        }
        let digest = format!("sha256:{name}");
        if !dry_run {
            match sweep_temp_dirs(&path) {
                Ok(n) => report.temp_removed += n,
                Err(e) => report.errors.push(format!("cannot sweep {}: {e}", path.display())),
            }
        }
        if wanted.contains(&name) {
            report.kept_approved.push(digest);
            continue;
        }
        match gc_entry_with(layout, &path, &name, boot.as_deref(), dry_run) {
            Ok(GcEntry::Removed) => report.removed.push(digest),
            Ok(GcEntry::InUse(n)) => report.kept_in_use.push((digest, n)),
            Ok(GcEntry::Busy) => report.busy.push(digest),
            Err(e) => report.errors.push(format!("{digest}: {e}")),
        }
    }
    for (d, n) in &report.kept_in_use {
        tracing::info!(digest = %d, refs = n, "unapproved cache kept: containers use it");
    }
    for d in &report.removed {
        tracing::info!(digest = %d, dry_run, "removed unused cache");
    }
    report
}

fn current_boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_owned())
}

/// Counts the refs of running containers. A ref records the boot it was taken in (the hook
/// writes `boot_id`); no container survives a reboot, so a ref from another boot is stale and
/// is removed (unless `dry_run`). A ref without a readable boot id counts as live.
fn live_refs(dir: &Path, boot: Option<&str>, dry_run: bool) -> io::Result<usize> {
    #[derive(serde::Deserialize)]
    struct Ref {
        boot_id: Option<String>,
    }
    let entries = match std::fs::read_dir(dir) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut live = 0;
    for entry in entries {
        let entry = entry?;
        let stale = match (boot, std::fs::read(entry.path())) {
            (Some(now), Ok(body)) => serde_json::from_slice::<Ref>(&body)
                .ok()
                .and_then(|r| r.boot_id)
                .is_some_and(|then| then.trim() != now.trim()),
            _ => false,
        };
        if !stale {
            live += 1;
        } else if !dry_run {
            tracing::info!(r#ref = %entry.path().display(), "dropping a container ref from an earlier boot");
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(live)
}

/// What GC did with one entry.
pub(crate) enum GcEntry {
    Removed,
    InUse(usize),
    Busy,
}

/// Removes the entry at `path` (named `hex`) unless it is locked or has live refs; the caller
/// has checked that no approved cache points at it. (The manager cleans up after a failed pull
/// with it.)
#[cfg(all(feature = "verify", feature = "cache"))]
pub(crate) fn gc_entry(layout: &StoreLayout, path: &Path, hex: &str, dry_run: bool) -> io::Result<GcEntry> {
    gc_entry_with(layout, path, hex, current_boot_id().as_deref(), dry_run)
}

fn gc_entry_with(
    layout: &StoreLayout,
    path: &Path,
    hex: &str,
    boot: Option<&str>,
    dry_run: bool,
) -> io::Result<GcEntry> {
    let Some(lock) = EntryLock::try_exclusive(path)? else {
        return Ok(GcEntry::Busy);
    };
    let refs = live_refs(&path.join(REFS_DIR), boot, dry_run)?;
    if refs > 0 {
        return Ok(GcEntry::InUse(refs));
    }
    if dry_run {
        return Ok(GcEntry::Removed);
    }
    let grave = layout.root().join(format!("{GC_PREFIX}{hex}-{:x}", now_nanos()));
    std::fs::rename(path, &grave)?;
    drop(lock);
    if let Ok(d) = File::open(layout.root()) {
        let _ = d.sync_all();
    }
    std::fs::remove_dir_all(&grave)?;
    Ok(GcEntry::Removed)
}

pub(crate) fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

// ---- interrupted extractions ----

/// Removes the `.tmp-*` dirs an interrupted extraction left in `dest_parent`; returns how many.
///
/// Skips those whose name is locked by a running extraction (`extract::extract_once`), so it
/// is safe next to it. Plain `extract::extract_layer` calls take no lock: sweep before starting
/// them (at daemon start-up).
pub fn sweep_temp_dirs(dest_parent: &Path) -> io::Result<usize> {
    let mut removed = 0;
    for dirent in std::fs::read_dir(dest_parent)? {
        let dirent = dirent?;
        let file_name = dirent.file_name();
        let Some(rest) = file_name.to_str().and_then(|n| n.strip_prefix(TEMP_PREFIX)) else {
            continue;
        };
        let final_name = rest.rsplit_once('-').map_or(rest, |(name, _)| name);
        let lock = match NameLock::try_acquire(dest_parent, final_name) {
            Ok(Some(lock)) => lock,
            Ok(None) => continue, // An extraction is running.
            Err(err) => {
                tracing::warn!(name = final_name, %err, "cannot lock; not sweeping");
                continue;
            }
        };
        let path = dirent.path();
        match dirent.file_type()?.is_dir() {
            true => std::fs::remove_dir_all(&path)?,
            false => std::fs::remove_file(&path)?,
        }
        drop(lock);
        tracing::info!(path = %path.display(), "removed leftover of an interrupted extraction");
        removed += 1;
    }
    Ok(removed)
}

/// An `flock` on `<dest_parent>/.lock-<name>`, held by the one extraction of `name` (and by the
/// sweep while it removes that name's temp dirs), released on drop. Lock files stay: unlinking
/// one would let a later process lock a new file while an old holder still runs.
pub(crate) struct NameLock {
    _file: File,
}

impl NameLock {
    /// `<dest_parent>/.lock-<name>`.
    pub(crate) fn path(dest_parent: &Path, name: &str) -> PathBuf {
        dest_parent.join(format!("{LOCK_PREFIX}{name}"))
    }

    /// Waits for the lock (an extraction).
    #[cfg(feature = "cache")]
    pub(crate) fn acquire(dest_parent: &Path, name: &str) -> io::Result<Self> {
        let file = open_lock_file(&Self::path(dest_parent, name))?;
        rustix::fs::flock(&file, FlockOperation::LockExclusive)?;
        Ok(Self { _file: file })
    }

    /// `None` when someone holds it.
    pub(crate) fn try_acquire(dest_parent: &Path, name: &str) -> io::Result<Option<Self>> {
        let file = open_lock_file(&Self::path(dest_parent, name))?;
        match rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(Some(Self { _file: file })),
            Err(rustix::io::Errno::WOULDBLOCK) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refs_from_an_earlier_boot_are_stale() {
        let dir = tempfile::tempdir().unwrap();
        let refs = dir.path();
        std::fs::write(refs.join("now"), br#"{"boot_id":"b-now","pid":1}"#).unwrap();
        std::fs::write(refs.join("old"), br#"{"boot_id":"b-old","pid":1}"#).unwrap();
        std::fs::write(refs.join("opaque"), b"not json").unwrap();
        assert_eq!(live_refs(refs, Some("b-now"), true).unwrap(), 2);
        assert!(refs.join("old").exists(), "dry run removes nothing");
        assert_eq!(live_refs(refs, Some("b-now\n"), false).unwrap(), 2);
        assert!(!refs.join("old").exists() && refs.join("opaque").exists());
        assert_eq!(
            live_refs(refs, None, false).unwrap(),
            2,
            "no boot id here: every ref counts"
        );
        assert_eq!(live_refs(&refs.join("missing"), Some("b"), false).unwrap(), 0);
    }

    #[test]
    fn gc_of_a_missing_store_is_empty() {
        let layout = StoreLayout::new("/nonexistent/kcache-store", "/nonexistent/run");
        assert_eq!(gc(&layout, &NodeCaches::default(), false), GcReport::default());
    }

    #[test]
    fn a_shared_lock_on_an_entry_gc_moved_away_is_not_kept() {
        let dir = tempfile::tempdir().unwrap();
        let layout = StoreLayout::new(dir.path().join("store"), dir.path().join("run"));
        let d = Digest::parse(&format!("sha256:{}", "0".repeat(64))).unwrap();
        assert!(EntryLock::shared_existing(&layout, &d).unwrap().is_none());
        let pull = EntryLock::shared(&layout, &d).unwrap();
        assert!(layout.lock_path(&d).exists());
        // GC cannot take it while a pull holds it, and reports the entry busy.
        assert!(EntryLock::try_exclusive(&layout.entry_dir(&d)).unwrap().is_none());
        let report = gc(&layout, &NodeCaches::default(), false);
        assert_eq!(report.busy, [d.to_string()]);
        drop(pull);
        // Removed once free; a hook coming after finds it gone, and creates nothing.
        let report = gc(&layout, &NodeCaches::default(), false);
        assert_eq!(report.removed, [d.to_string()]);
        assert!(EntryLock::shared_existing(&layout, &d).unwrap().is_none());
        assert!(!layout.entry_dir(&d).exists());
        assert_eq!(std::fs::read_dir(layout.root()).unwrap().count(), 0, "no grave left");
    }
}

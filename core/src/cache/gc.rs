//! The store's garbage collector: the one implementation kcached's rounds, `kcache cache gc`
//! and the hook's tests run.
//!
//! # The `.lock` protocol (see [`crate::cache::store`] and [`crate::cache::lock`])
//! - A pull holds `<entry>/.lock` shared from creating the entry dir until its record is written
//!   ([`EntryLock::shared`]); the hook holds it shared while it re-checks the record and writes
//!   `refs/<container-id>` ([`crate::cache::refs::add`]).
//! - GC takes it exclusively without waiting ([`EntryLock::try_exclusive`]: a busy entry is
//!   skipped this round), drops refs left from an earlier boot ([`refs::count_live`]), and
//!   removes the entry only when no approved cache points at it and `refs/` is empty: it
//!   renames the entry to a `.tmp-gc-` name (so a half-removed entry is never visible), unlocks,
//!   then deletes it.
//!
//! Plain std + serde + rustix's `flock`: the hook links this module (no tokio, no crypto).

use std::{
    collections::BTreeSet,
    fs::File,
    io,
    path::Path,
    time::{SystemTime, UNIX_EPOCH},
};

use serde::Serialize;

/// The entry lock ([`crate::cache::lock`]).
pub use crate::cache::lock::EntryLock;
pub(crate) use crate::cache::lock::NameLock;
use crate::{
    cache::{
        refs,
        store::{NodeCaches, StoreDirent, StoreLayout, REFS_DIR},
    },
    digest::Digest,
};

/// Name of the temp dirs GC renames entries to before removing them.
use crate::cache::store::GRAVE_PREFIX as GC_PREFIX;
/// Prefix of an interrupted extraction's temp dir (`.tmp-<name>-<random>`).
pub(crate) const TEMP_PREFIX: &str = ".tmp-";

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

// ---- GC ----

/// Removes the store entries that no cache in `state` points at and whose `refs/` holds no
/// live ref, each under its exclusive lock (busy entries are skipped); removes the leftovers
/// of interrupted extractions and removals. `dry_run`: report only.
pub fn gc(layout: &StoreLayout, state: &NodeCaches, dry_run: bool) -> GcReport {
    let mut report = GcReport::default();
    let wanted: BTreeSet<&Digest> = state.caches.iter().filter_map(|c| c.digest.as_ref()).collect();
    let walk = match layout.walk() {
        Ok(w) => w,
        Err(e) => {
            report
                .errors
                .push(format!("cannot list {}: {e}", layout.root().display()));
            return report;
        }
    };
    let boot = refs::boot_id();
    for dirent in walk {
        let (digest, path) = match dirent {
            StoreDirent::Grave(path) => {
                // A removal that was interrupted: nobody uses a renamed entry.
                if !dry_run {
                    match std::fs::remove_dir_all(&path) {
                        Ok(()) => report.temp_removed += 1,
                        Err(e) => report.errors.push(format!("cannot remove {}: {e}", path.display())),
                    }
                }
                continue;
            }
            StoreDirent::Entry { digest, path } => (digest, path),
        };
        if !dry_run {
            match sweep_temp_dirs(&path) {
                Ok(n) => report.temp_removed += n,
                Err(e) => report.errors.push(format!("cannot sweep {}: {e}", path.display())),
            }
        }
        if wanted.contains(&digest) {
            report.kept_approved.push(digest.to_string());
            continue;
        }
        match gc_entry_with(layout, &path, digest.hex(), boot.as_deref(), dry_run) {
            Ok(GcEntry::Removed) => report.removed.push(digest.to_string()),
            Ok(GcEntry::InUse(n)) => report.kept_in_use.push((digest.to_string(), n)),
            Ok(GcEntry::Busy) => report.busy.push(digest.to_string()),
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
    gc_entry_with(layout, path, hex, refs::boot_id().as_deref(), dry_run)
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
    let live = refs::count_live(&path.join(REFS_DIR), boot, !dry_run)?;
    if live > 0 {
        return Ok(GcEntry::InUse(live));
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

#[cfg(test)]
mod tests {
    use super::*;

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

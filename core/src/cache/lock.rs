//! The store's locks (see [`crate::cache::store`] and [`crate::cache::gc`]).
//!
//! - [`EntryLock`]: `flock` on `<entry>/.lock`. A pull holds it shared from creating the entry
//!   dir until its record is written ([`EntryLock::shared`]); the hook holds it shared while it
//!   re-checks the record and writes its ref ([`EntryLock::shared_existing`]); GC takes it
//!   exclusively without waiting ([`EntryLock::try_exclusive`]).
//! - [`NameLock`]: `flock` on `<dir>/.lock-<name>`, held by the one extraction of `name` and by
//!   the sweep of its leftovers.
//!
//! A shared lock taken on a `.lock` that GC renamed away meanwhile is worthless, so the shared
//! lockers check, once they hold it, that the file is still the one at the entry's path.
//! Lock files are opened with `O_NOFOLLOW`, never through a symlink.
//!
//! Plain std + rustix's `flock`: the hook links this module.

use std::{
    fs::{File, OpenOptions},
    io,
    os::unix::fs::{MetadataExt, OpenOptionsExt},
    path::{Path, PathBuf},
};

use rustix::fs::{FlockOperation, OFlags};

use crate::{
    cache::store::{StoreLayout, LOCK_FILE},
    digest::Digest,
};

/// Prefix of an extraction's name lock (`.lock-<name>`).
pub(crate) const LOCK_PREFIX: &str = ".lock-";
/// Attempts at a shared lock while GC keeps renaming the entry away.
const LOCK_ATTEMPTS: usize = 16;

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

/// `flock` on `<entry>/.lock`, released on drop (close).
#[derive(Debug)]
pub struct EntryLock {
    _file: File,
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
        try_exclusive(file).map(|f| f.map(|file| Self { _file: file }))
    }
}

fn try_exclusive(file: File) -> io::Result<Option<File>> {
    match rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(Some(file)),
        Err(rustix::io::Errno::WOULDBLOCK) => Ok(None),
        Err(e) => Err(e.into()),
    }
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
        try_exclusive(file).map(|f| f.map(|file| Self { _file: file }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_file_behind_a_symlink_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let entry = dir.path().join("entry");
        std::fs::create_dir(&entry).unwrap();
        std::fs::write(dir.path().join("elsewhere"), b"").unwrap();
        std::os::unix::fs::symlink(dir.path().join("elsewhere"), entry.join(LOCK_FILE)).unwrap();
        assert!(EntryLock::try_exclusive(&entry).is_err());
        std::os::unix::fs::symlink(dir.path().join("elsewhere"), NameLock::path(dir.path(), "n")).unwrap();
        assert!(NameLock::try_acquire(dir.path(), "n").is_err());
    }

    #[test]
    fn exclusive_excludes_shared_and_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let layout = StoreLayout::new(dir.path().join("store"), dir.path().join("run"));
        let d = Digest::parse(&format!("sha256:{}", "1".repeat(64))).unwrap();
        let shared = EntryLock::shared(&layout, &d).unwrap();
        let again = EntryLock::shared_existing(&layout, &d).unwrap();
        assert!(again.is_some(), "shared locks share");
        assert!(EntryLock::try_exclusive(&layout.entry_dir(&d)).unwrap().is_none());
        drop((shared, again));
        let ex = EntryLock::try_exclusive(&layout.entry_dir(&d)).unwrap();
        assert!(ex.is_some());
        assert!(EntryLock::try_exclusive(&layout.entry_dir(&d)).unwrap().is_none());
        let held = NameLock::try_acquire(dir.path(), "x").unwrap();
        assert!(held.is_some());
        assert!(NameLock::try_acquire(dir.path(), "x").unwrap().is_none());
    }
}

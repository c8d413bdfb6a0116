//! Container references on a cache entry, and the `.lock` protocol that keeps GC from removing
//! an entry under a container (see `kcache_core::cache::store`).
//!
//! The hook takes `<entry>/.lock` shared, re-checks that `record.json` exists (GC may have
//! removed the entry while the hook waited), then writes `refs/<container-id>`. GC
//! (`kcache_core::cache::gc::gc`, the one kcached and `kcache cache gc` run) takes it
//! exclusive, and removes the entry only when `refs/` holds no live ref. poststop removes the
//! ref file; it needs no lock (a ref only ever goes away).

use std::{
    fs,
    io::{self, Write},
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::PathBuf,
};

pub use kcache_core::cache::gc::EntryLock;
use kcache_core::{
    cache::store::{is_plain_name, StoreLayout},
    digest::Digest,
};

/// Why a ref could not be taken or dropped.
#[derive(Debug, thiserror::Error)]
pub enum RefError {
    /// The entry is gone (collected while the hook waited for the lock).
    #[error("the store entry {0} was removed")]
    Gone(Digest),
    /// The container id cannot name a file.
    #[error("container id {0:?} is not a plain file name")]
    BadId(String),
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
}

fn io_err(path: PathBuf) -> impl FnOnce(io::Error) -> RefError {
    move |source| RefError::Io { path, source }
}

/// Locks an entry shared (see `kcache_core::cache::gc`); [`RefError::Gone`] when the entry is
/// not there. Never creates the entry.
pub fn lock(layout: &StoreLayout, digest: &Digest) -> Result<EntryLock, RefError> {
    match EntryLock::shared_existing(layout, digest) {
        Ok(Some(lock)) => Ok(lock),
        Ok(None) => Err(RefError::Gone(digest.clone())),
        Err(e) => Err(io_err(layout.lock_path(digest))(e)),
    }
}

/// Adds `refs/<id>` to the entry, under the shared lock; `body` is what the file holds (for
/// people and for GC's stale-ref checks). Fails with [`RefError::Gone`] when the entry went away.
/// The lock is returned so the caller can finish work on the entry (the `__grp__` layer) before
/// GC may look at it again.
pub fn add(layout: &StoreLayout, digest: &Digest, id: &str, body: &[u8]) -> Result<EntryLock, RefError> {
    if !is_plain_name(id) {
        return Err(RefError::BadId(id.to_string()));
    }
    let guard = lock(layout, digest)?;
    if !layout.record_path(digest).exists() {
        return Err(RefError::Gone(digest.clone()));
    }
    let refs = layout.refs_dir(digest);
    match fs::DirBuilder::new().mode(0o755).create(&refs) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io_err(refs)(e)),
    }
    // No fsync: a ref only matters while its container runs, and no container survives a crash
    // of the node (a ref left by one is stale; GC may drop refs older than the boot).
    let path = refs.join(id);
    fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(&path)
        .and_then(|mut f| f.write_all(body))
        .map_err(io_err(path))?;
    Ok(guard)
}

/// Removes `refs/<id>`; `Ok(false)` when there was none.
pub fn remove(layout: &StoreLayout, digest: &Digest, id: &str) -> Result<bool, RefError> {
    if !is_plain_name(id) {
        return Err(RefError::BadId(id.to_string()));
    }
    let path = layout.refs_dir(digest).join(id);
    match fs::remove_file(&path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_err(path)(e)),
    }
}

/// The container ids holding the entry.
pub fn list(layout: &StoreLayout, digest: &Digest) -> Result<Vec<String>, RefError> {
    let dir = layout.refs_dir(digest);
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(io_err(dir)(e)),
    };
    let mut ids = Vec::new();
    for e in entries {
        let e = e.map_err(io_err(dir.clone()))?;
        if let Some(name) = e.file_name().to_str().filter(|n| is_plain_name(n)) {
            ids.push(name.to_string());
        }
    }
    ids.sort();
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use kcache_core::cache::{gc::GcReport, store::CacheState};

    use super::*;
    use crate::testing::FakeStore;

    /// The store's GC, as kcached runs it, against the approved state.
    fn gc(store: &FakeStore) -> GcReport {
        kcache_core::cache::gc::gc(&store.layout, &store.state(), false)
    }

    #[test]
    fn refs_keep_an_entry_until_the_last_container_leaves() {
        let dir = tempfile::tempdir().unwrap();
        let store = FakeStore::new(dir.path());
        let d = store.add_cache("llama", None, &[90], 1);
        let _g = add(&store.layout, &d, "c1", b"{}").unwrap();
        drop(_g);
        add(&store.layout, &d, "c2", b"{}").unwrap();
        assert_eq!(list(&store.layout, &d).unwrap(), ["c1", "c2"]);
        assert_eq!(gc(&store).kept_approved, [d.to_string()]);
        // No longer approved: garbage once unused.
        store.approve("llama", None, None, CacheState::Pending);
        assert_eq!(gc(&store).kept_in_use, [(d.to_string(), 2)]);
        assert!(remove(&store.layout, &d, "c1").unwrap());
        assert!(!remove(&store.layout, &d, "c1").unwrap());
        assert_eq!(gc(&store).kept_in_use, [(d.to_string(), 1)]);
        assert!(store.layout.tree_dir(&d).exists());
        assert!(remove(&store.layout, &d, "c2").unwrap());
        assert_eq!(gc(&store).removed, [d.to_string()]);
        assert!(!store.layout.entry_dir(&d).exists());
        // A hook that comes after GC finds the entry gone, and creates nothing.
        assert!(matches!(add(&store.layout, &d, "c3", b"{}"), Err(RefError::Gone(_))));
        assert!(!store.layout.entry_dir(&d).exists());
    }

    #[test]
    fn gc_skips_an_entry_while_a_hook_holds_its_lock() {
        let dir = tempfile::tempdir().unwrap();
        let store = FakeStore::new(dir.path());
        let d = store.add_cache("llama", None, &[90], 1);
        store.approve("llama", None, None, CacheState::Pending);
        // A hook between taking the lock and writing its ref: GC does not wait, and leaves it.
        let guard = lock(&store.layout, &d).unwrap();
        assert_eq!(gc(&store).busy, [d.to_string()]);
        assert!(store.layout.record_path(&d).exists());
        // The hook adds its ref while it holds the lock (a second shared lock on a new fd).
        let g2 = add(&store.layout, &d, "c1", b"{}").unwrap();
        drop(guard);
        drop(g2);
        assert_eq!(gc(&store).kept_in_use, [(d.to_string(), 1)]);
        assert!(store.layout.record_path(&d).exists());
    }

    #[test]
    fn bad_ids_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = FakeStore::new(dir.path());
        let d = store.add_cache("llama", None, &[90], 1);
        for id in ["../x", "", ".hidden", "a/b"] {
            assert!(
                matches!(add(&store.layout, &d, id, b""), Err(RefError::BadId(_))),
                "{id}"
            );
            assert!(matches!(remove(&store.layout, &d, id), Err(RefError::BadId(_))), "{id}");
        }
    }
}

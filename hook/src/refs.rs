//! Container references on a cache entry and the `.lock` protocol that keeps GC from removing
//! an entry under a container: `kcache_core::cache::refs`, the one implementation GC and
//! `kcache cache ls` read too.

pub use kcache_core::cache::refs::*;

#[cfg(test)]
mod tests {
    use kcache_core::cache::{gc::GcReport, store::CacheState};

    use super::*;
    use crate::testing::FakeStore;

    /// The store's GC, as kcached runs it, against the approved state.
    fn gc(store: &FakeStore) -> GcReport {
        kcache_core::cache::gc::gc(&store.layout, &store.state(), false)
    }

    fn add(store: &FakeStore, d: &kcache_core::digest::Digest, id: &str) -> Result<EntryLock, RefError> {
        kcache_core::cache::refs::add(
            &store.layout,
            &ContainerRef::now(id, "llama", None, d, "/root/.triton/cache", None),
        )
    }

    #[test]
    fn refs_keep_an_entry_until_the_last_container_leaves() {
        let dir = tempfile::tempdir().unwrap();
        let store = FakeStore::new(dir.path());
        let d = store.add_cache("llama", None, &[90], 1);
        let _g = add(&store, &d, "c1").unwrap();
        drop(_g);
        add(&store, &d, "c2").unwrap();
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
        assert!(matches!(add(&store, &d, "c3"), Err(RefError::Gone(_))));
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
        let g2 = add(&store, &d, "c1").unwrap();
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
            assert!(matches!(add(&store, &d, id), Err(RefError::BadId(_))), "{id}");
            assert!(matches!(remove(&store.layout, &d, id), Err(RefError::BadId(_))), "{id}");
        }
    }
}

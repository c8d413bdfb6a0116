//! [`OverlaySnapshotter`]: containerd's overlayfs snapshotter on a `redb` metadata store.
//!
//! Layout: `<root>/metadata.redb` and `<root>/snapshots/<id>/{fs,work}`.
//!
//! Crash safety: every mutation is one write transaction. A new snapshot's directory is built
//! under `snapshots/new-<random>` and renamed to `snapshots/<id>` before the transaction
//! commits, so a record never exists without its directory. Remove deletes the record first and
//! the directory after the commit. A crash between the two steps leaves only a directory that no
//! record owns, which [`cleanup`](Snapshotter::cleanup) removes.

use std::{
    collections::HashMap,
    fs,
    os::unix::fs::{lchown, MetadataExt},
    path::{Path, PathBuf},
};

use super::{
    filter::Filter,
    store::{now, Record, Store},
    usage::disk_usage,
    Info, Kind, Mount, Result, SnapshotError, Snapshotter, Usage,
};

/// Mount options containerd's overlayfs snapshotter adds on its own.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OverlayOptions {
    /// Start overlay mounts with `index=off`. containerd 1.6 does so whenever the kernel's
    /// overlay module has an `index` parameter: with the index on, a lower dir shared by two
    /// mounts fails the second mount with EBUSY.
    pub index_off: bool,
}

impl OverlayOptions {
    /// What containerd would choose on this kernel.
    pub fn detect() -> Self {
        Self {
            index_off: Path::new("/sys/module/overlay/parameters/index").exists(),
        }
    }
}

/// containerd's overlayfs snapshotter.
pub struct OverlaySnapshotter {
    root: PathBuf,
    store: Store,
    options: OverlayOptions,
}

impl OverlaySnapshotter {
    /// Opens the snapshotter rooted at `root`, creating it if needed, with the mount options
    /// containerd would use on this kernel. One process at a time: the database is locked while
    /// open.
    pub fn open(root: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(root, OverlayOptions::detect())
    }

    /// Like [`open`](Self::open), with explicit mount options.
    pub fn open_with(root: impl AsRef<Path>, options: OverlayOptions) -> Result<Self> {
        let root = root.as_ref().to_path_buf();
        let snapshots = root.join("snapshots");
        fs::create_dir_all(&snapshots).map_err(SnapshotError::io("create", &snapshots))?;
        let store = Store::open(&root.join("metadata.redb"))?;
        Ok(Self { root, store, options })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn snapshots_dir(&self) -> PathBuf {
        self.root.join("snapshots")
    }

    fn dir(&self, id: u64) -> PathBuf {
        self.snapshots_dir().join(id.to_string())
    }

    fn upper(&self, id: u64) -> String {
        self.dir(id).join("fs").to_string_lossy().into_owned()
    }

    fn work(&self, id: u64) -> String {
        self.dir(id).join("work").to_string_lossy().into_owned()
    }

    /// containerd 1.6 `overlay.(*snapshotter).mounts`.
    fn mounts_of(&self, id: u64, kind: Kind, parents: &[u64]) -> Vec<Mount> {
        let mount = |fs_type: &str, source: String, options: Vec<String>| Mount {
            fs_type: fs_type.to_owned(),
            source,
            target: String::new(),
            options,
        };
        if parents.is_empty() {
            // One layer: overlay needs a lower dir, so bind-mount the upper dir itself.
            let ro = if kind == Kind::View { "ro" } else { "rw" };
            return vec![mount("bind", self.upper(id), vec![ro.into(), "rbind".into()])];
        }
        let mut options = Vec::new();
        if self.options.index_off {
            options.push("index=off".to_owned());
        }
        if kind == Kind::Active {
            options.push(format!("workdir={}", self.work(id)));
            options.push(format!("upperdir={}", self.upper(id)));
        } else if let [parent] = parents {
            return vec![mount("bind", self.upper(*parent), vec!["ro".into(), "rbind".into()])];
        }
        let lower: Vec<String> = parents.iter().map(|&p| self.upper(p)).collect();
        options.push(format!("lowerdir={}", lower.join(":")));
        vec![mount("overlay", "overlay".into(), options)]
    }

    fn create(&self, kind: Kind, key: &str, parent: &str, labels: HashMap<String, String>) -> Result<Vec<Mount>> {
        if key.is_empty() {
            return Err(SnapshotError::InvalidArgument("empty snapshot key".into()));
        }
        let txn = self.store.write()?;
        if txn.get(key)?.is_some() {
            return Err(SnapshotError::AlreadyExists(key.to_owned()));
        }
        let parents = if parent.is_empty() {
            Vec::new()
        } else {
            let record = txn
                .get(parent)?
                .ok_or_else(|| SnapshotError::NotFound(parent.to_owned()))?;
            if record.kind != Kind::Committed {
                return Err(SnapshotError::InvalidArgument(format!(
                    "parent {parent:?} is not a committed snapshot"
                )));
            }
            txn.chain(parent)?
        };
        let id = txn.next_id()?;
        // A directory for an id no record owns was left by a crash after its rename and before
        // the commit that allocated the id (the id was handed out again after the restart).
        // Checked before this snapshot's own record claims the id.
        let dir = self.dir(id);
        if dir.symlink_metadata().is_ok() && !txn.owns(id)? {
            tracing::info!(dir = %dir.display(), "removing a snapshot directory left by a crash");
            fs::remove_dir_all(&dir).map_err(SnapshotError::io("remove", &dir))?;
        }
        let time = now();
        let record = Record {
            id,
            kind,
            parent: parent.to_owned(),
            labels,
            created: time,
            updated: time,
            usage: Usage::default(),
        };
        txn.put(key, &record)?;
        let dir = self.build_dir(id, kind, parents.first().copied())?;
        if let Err(e) = txn.commit() {
            remove_dir(&dir);
            return Err(e);
        }
        Ok(self.mounts_of(id, kind, &parents))
    }

    /// Builds `snapshots/<id>` through a `new-<random>` directory and one rename.
    fn build_dir(&self, id: u64, kind: Kind, parent: Option<u64>) -> Result<PathBuf> {
        let snapshots = self.snapshots_dir();
        let tmp = tempfile::Builder::new()
            .prefix("new-")
            .tempdir_in(&snapshots)
            .map_err(SnapshotError::io("create a directory in", &snapshots))?;
        let upper = tmp.path().join("fs");
        fs::create_dir(&upper).map_err(SnapshotError::io("create", &upper))?;
        if kind == Kind::Active {
            let work = tmp.path().join("work");
            fs::create_dir(&work).map_err(SnapshotError::io("create", &work))?;
        }
        if let Some(parent) = parent {
            // As containerd does: the new upper dir belongs to whoever owns the parent's, so a
            // user-namespaced container keeps its root directory.
            let parent_fs = self.dir(parent).join("fs");
            let meta = fs::metadata(&parent_fs).map_err(SnapshotError::io("stat", &parent_fs))?;
            lchown(&upper, Some(meta.uid()), Some(meta.gid())).map_err(SnapshotError::io("chown", &upper))?;
        }
        let dir = self.dir(id);
        fs::rename(tmp.path(), &dir).map_err(SnapshotError::io("rename into place", &dir))?;
        // The directory is in place: the guard must not remove it.
        let _ = tmp.keep();
        Ok(dir)
    }

    /// Every record, for the invariant checks of the tests.
    #[cfg(test)]
    pub(crate) fn records(&self) -> Result<Vec<(String, Record)>> {
        self.store.read()?.all()
    }

    /// Every (parent, child) pair of the children index.
    #[cfg(test)]
    pub(crate) fn children_index(&self) -> Result<Vec<(String, String)>> {
        self.store.read()?.children()
    }
}

fn remove_dir(dir: &Path) {
    if let Err(err) = fs::remove_dir_all(dir) {
        if err.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(dir = %dir.display(), %err, "failed to remove snapshot directory; cleanup will retry");
        }
    }
}

impl Snapshotter for OverlaySnapshotter {
    type Error = SnapshotError;

    fn stat(&self, key: &str) -> Result<Info> {
        let record = self.store.read()?.get(key)?;
        Ok(record.ok_or_else(|| SnapshotError::NotFound(key.to_owned()))?.info(key))
    }

    fn update(&self, info: Info, fieldpaths: &[String]) -> Result<Info> {
        let txn = self.store.write()?;
        let key = info.name.as_str();
        let mut record = txn.get(key)?.ok_or_else(|| SnapshotError::NotFound(key.to_owned()))?;
        if fieldpaths.is_empty() {
            record.labels = info.labels;
        } else {
            for path in fieldpaths {
                if path == "labels" {
                    record.labels = info.labels.clone();
                } else if let Some(label) = path.strip_prefix("labels.") {
                    match info.labels.get(label) {
                        Some(value) => record.labels.insert(label.to_owned(), value.clone()),
                        None => record.labels.remove(label),
                    };
                } else {
                    return Err(SnapshotError::InvalidArgument(format!(
                        "cannot update field {path:?} of snapshot {key:?}"
                    )));
                }
            }
        }
        record.updated = now();
        txn.put(key, &record)?;
        txn.commit()?;
        Ok(record.info(key))
    }

    fn usage(&self, key: &str) -> Result<Usage> {
        let record = self.store.read()?.get(key)?;
        let record = record.ok_or_else(|| SnapshotError::NotFound(key.to_owned()))?;
        match record.kind {
            Kind::Active => disk_usage(&self.dir(record.id).join("fs")),
            Kind::Committed | Kind::View => Ok(record.usage),
        }
    }

    fn mounts(&self, key: &str) -> Result<Vec<Mount>> {
        let txn = self.store.read()?;
        let record = txn.get(key)?.ok_or_else(|| SnapshotError::NotFound(key.to_owned()))?;
        let parents = txn.chain(&record.parent)?;
        Ok(self.mounts_of(record.id, record.kind, &parents))
    }

    fn prepare(&self, key: &str, parent: &str, labels: HashMap<String, String>) -> Result<Vec<Mount>> {
        self.create(Kind::Active, key, parent, labels)
    }

    fn view(&self, key: &str, parent: &str, labels: HashMap<String, String>) -> Result<Vec<Mount>> {
        self.create(Kind::View, key, parent, labels)
    }

    fn commit(&self, name: &str, key: &str, labels: HashMap<String, String>) -> Result<()> {
        if name.is_empty() {
            return Err(SnapshotError::InvalidArgument("empty snapshot name".into()));
        }
        let active = |record: Option<Record>| match record {
            None => Err(SnapshotError::NotFound(key.to_owned())),
            Some(r) if r.kind != Kind::Active => Err(SnapshotError::FailedPrecondition(format!(
                "snapshot {key:?} is not active"
            ))),
            Some(r) => Ok(r),
        };
        // Measure before taking the write lock: walking a big layer must not stall every other
        // prepare. The snapshot is the caller's to commit, so it no longer changes.
        let measured = active(self.store.read()?.get(key)?)?;
        let usage = disk_usage(&self.dir(measured.id).join("fs"))?;
        let txn = self.store.write()?;
        let mut record = active(txn.get(key)?)?;
        if txn.get(name)?.is_some() {
            return Err(SnapshotError::AlreadyExists(name.to_owned()));
        }
        record.usage = if record.id == measured.id {
            usage
        } else {
            // Removed and prepared again meanwhile: measure the new one.
            disk_usage(&self.dir(record.id).join("fs"))?
        };
        record.kind = Kind::Committed;
        record.labels = labels;
        record.created = now();
        record.updated = record.created;
        txn.delete(key)?;
        txn.put(name, &record)?;
        txn.commit()
    }

    fn remove(&self, key: &str) -> Result<()> {
        let txn = self.store.write()?;
        if txn.has_children(key)? {
            return Err(SnapshotError::FailedPrecondition(format!(
                "cannot remove snapshot {key:?}: it has children"
            )));
        }
        let record = txn
            .delete(key)?
            .ok_or_else(|| SnapshotError::NotFound(key.to_owned()))?;
        txn.commit()?;
        remove_dir(&self.dir(record.id));
        Ok(())
    }

    fn walk(&self, filters: &[String]) -> Result<Vec<Info>> {
        let filter = Filter::parse_all(filters)?;
        let records = self.store.read()?.all()?;
        Ok(records
            .into_iter()
            .map(|(key, record)| record.info(&key))
            .filter(|info| filter.matches(info))
            .collect())
    }

    fn cleanup(&self) -> Result<()> {
        // Holding the write transaction keeps creates (and their new-* directories) out.
        let txn = self.store.write()?;
        let snapshots = self.snapshots_dir();
        let entries = fs::read_dir(&snapshots).map_err(SnapshotError::io("read", &snapshots))?;
        for entry in entries {
            let entry = entry.map_err(SnapshotError::io("read", &snapshots))?;
            let owned = match entry.file_name().to_str().and_then(|n| n.parse::<u64>().ok()) {
                Some(id) => txn.owns(id)?,
                None => false,
            };
            if !owned {
                let path = entry.path();
                tracing::info!(dir = %path.display(), "removing orphaned snapshot directory");
                fs::remove_dir_all(&path).map_err(SnapshotError::io("remove", &path))?;
            }
        }
        Ok(())
    }
}

//! Container references on a cache entry: `<entry>/refs/<container-id>`, one per running
//! container that mounts the entry, written by the OCI hook at prestart and removed at
//! poststop. GC ([`crate::cache::gc`]) keeps an entry while it has a live ref, and `kcache cache
//! ls` counts refs the same way ([`count_live`]).
//!
//! The hook takes `<entry>/.lock` shared ([`lock`]), re-checks that `record.json` exists (GC
//! may have removed the entry while the hook waited), then writes the ref ([`add`]). GC takes
//! the lock exclusively. Removing a ref needs no lock (a ref only ever goes away).
//!
//! A ref holds a [`ContainerRef`], the same document the hook keeps in the container's run dir.
//! It records the boot it was taken in; no container survives a reboot, so a ref from another
//! boot is stale.
//!
//! Plain std + serde: the hook links this module.

use std::{
    fs,
    io::{self, Write},
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

pub use crate::cache::lock::EntryLock;
use crate::{
    cache::store::{is_plain_name, StoreLayout},
    digest::Digest,
};

/// Where the kernel says which boot this is.
pub const BOOT_ID_PATH: &str = "/proc/sys/kernel/random/boot_id";

/// This boot's id (`/proc/sys/kernel/random/boot_id`, trimmed); `None` where it cannot be read.
pub fn boot_id() -> Option<String> {
    fs::read_to_string(BOOT_ID_PATH).ok().map(|s| s.trim().to_owned())
}

/// What the hook records for one container using one cache entry: the body of the entry's
/// `refs/<container>` and of the container's `hook.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerRef {
    /// The container.
    pub container: String,
    /// The cache name.
    pub cache: String,
    /// The pod namespace.
    #[serde(default)]
    pub namespace: Option<String>,
    /// The entry's digest.
    pub digest: Digest,
    /// The mount path inside the container.
    pub target: String,
    /// When (seconds since the epoch).
    pub at: u64,
    /// The container's init pid at prestart (a second prestart call for the same container is
    /// recognised by it).
    #[serde(default)]
    pub pid: Option<i32>,
    /// The boot it was taken in ([`boot_id`]): a ref from an earlier boot is stale, whatever
    /// its container id.
    #[serde(default)]
    pub boot_id: Option<String>,
}

impl ContainerRef {
    /// What prestart records now, in this boot, for `container` using `digest` at `target`.
    pub fn now(
        container: &str,
        cache: &str,
        namespace: Option<&str>,
        digest: &Digest,
        target: &str,
        pid: Option<i32>,
    ) -> Self {
        Self {
            container: container.to_owned(),
            cache: cache.to_owned(),
            namespace: namespace.map(str::to_owned),
            digest: digest.clone(),
            target: target.to_owned(),
            at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs(),
            pid,
            boot_id: boot_id(),
        }
    }

    /// The JSON body of the ref file.
    pub fn to_bytes(&self) -> Vec<u8> {
        // A struct of strings and numbers always serializes.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Whether this ref was taken in another boot than `now` (and so no longer holds anything).
    /// A ref without a boot id, or with no boot id known now, is not stale.
    pub fn is_stale(&self, now: Option<&str>) -> bool {
        is_stale(self.boot_id.as_deref(), now)
    }
}

fn is_stale(then: Option<&str>, now: Option<&str>) -> bool {
    match (then, now) {
        (Some(then), Some(now)) => then.trim() != now.trim(),
        _ => false,
    }
}

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

/// Locks an entry shared; [`RefError::Gone`] when the entry is not there. Never creates the
/// entry.
pub fn lock(layout: &StoreLayout, digest: &Digest) -> Result<EntryLock, RefError> {
    match EntryLock::shared_existing(layout, digest) {
        Ok(Some(lock)) => Ok(lock),
        Ok(None) => Err(RefError::Gone(digest.clone())),
        Err(e) => Err(io_err(layout.lock_path(digest))(e)),
    }
}

/// Adds `refs/<r.container>` to the entry `r.digest`, holding `r`, under the shared lock.
/// Fails with [`RefError::Gone`] when the entry went away. The lock is returned so the caller
/// can finish work on the entry (the `__grp__` layer) before GC may look at it again.
pub fn add(layout: &StoreLayout, r: &ContainerRef) -> Result<EntryLock, RefError> {
    let (digest, id) = (&r.digest, r.container.as_str());
    if !is_plain_name(id) {
        return Err(RefError::BadId(id.to_owned()));
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
    // of the node (a ref left by one is stale; GC drops refs from an earlier boot).
    let path = refs.join(id);
    fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(&path)
        .and_then(|mut f| f.write_all(&r.to_bytes()))
        .map_err(io_err(path))?;
    Ok(guard)
}

/// Removes `refs/<id>`; `Ok(false)` when there was none.
pub fn remove(layout: &StoreLayout, digest: &Digest, id: &str) -> Result<bool, RefError> {
    if !is_plain_name(id) {
        return Err(RefError::BadId(id.to_owned()));
    }
    let path = layout.refs_dir(digest).join(id);
    match fs::remove_file(&path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_err(path)(e)),
    }
}

/// The container ids holding the entry, stale or not.
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
            ids.push(name.to_owned());
        }
    }
    ids.sort();
    Ok(ids)
}

/// Counts the live refs in the refs dir `dir`: every file but those a [`ContainerRef`] of
/// another boot than `boot` holds (a file that does not parse counts as live: fail safe, keep
/// the entry). With `drop_stale`, stale refs are removed as they are found (GC holds the
/// entry's exclusive lock then).
pub fn count_live(dir: &Path, boot: Option<&str>, drop_stale: bool) -> io::Result<usize> {
    #[derive(Deserialize)]
    struct BootOnly {
        boot_id: Option<String>,
    }
    let entries = match fs::read_dir(dir) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut live = 0;
    for entry in entries {
        let entry = entry?;
        // Only the boot id matters here: a ref a newer or older hook wrote still counts.
        let stale = boot.is_some()
            && fs::read(entry.path())
                .ok()
                .and_then(|body| serde_json::from_slice::<BootOnly>(&body).ok())
                .is_some_and(|r| is_stale(r.boot_id.as_deref(), boot));
        if !stale {
            live += 1;
        } else if drop_stale {
            tracing::info!(r#ref = %entry.path().display(), "dropping a container ref from an earlier boot");
            fs::remove_file(entry.path())?;
        }
    }
    Ok(live)
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
        assert_eq!(count_live(refs, Some("b-now"), false).unwrap(), 2);
        assert!(refs.join("old").exists(), "counting removes nothing");
        assert_eq!(count_live(refs, Some("b-now\n"), true).unwrap(), 2);
        assert!(!refs.join("old").exists() && refs.join("opaque").exists());
        assert_eq!(
            count_live(refs, None, true).unwrap(),
            2,
            "no boot id here: every ref counts"
        );
        assert_eq!(count_live(&refs.join("missing"), Some("b"), true).unwrap(), 0);
    }

    #[test]
    fn a_ref_round_trips_and_knows_its_boot() {
        let d = Digest::parse(&format!("sha256:{}", "2".repeat(64))).unwrap();
        let mut r = ContainerRef::now("c1", "llama", Some("ml"), &d, "/root/.triton/cache", Some(7));
        assert_eq!(r.boot_id, boot_id());
        let back: ContainerRef = serde_json::from_slice(&r.to_bytes()).unwrap();
        assert_eq!(back, r);
        r.boot_id = Some("then".into());
        assert!(r.is_stale(Some("now")) && !r.is_stale(Some("then")) && !r.is_stale(None));
        r.boot_id = None;
        assert!(!r.is_stale(Some("now")));
    }
}

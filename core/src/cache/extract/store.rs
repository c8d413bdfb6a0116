//! The store side: temp dirs, the final rename, and extracting a name once under its lock
//! (the lock and the start-up sweep live in [`crate::cache::gc`], which the hook links too).

use std::{
    fs::{DirBuilder, File},
    hash::{BuildHasher, Hasher},
    io::{self, Read},
    os::{fd::OwnedFd, unix::fs::DirBuilderExt},
    path::{Path, PathBuf},
};

use rustix::fs::{Mode, OFlags, RenameFlags, CWD};

use super::{extract_layer_checked, ExtractError, ExtractLimits, ExtractReport, Result};
pub use crate::cache::gc::sweep_temp_dirs;
use crate::cache::gc::{NameLock, TEMP_PREFIX};

/// The final name must be one plain name; a leading `.` is reserved for our temp and lock files.
pub(crate) fn check_final_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && !name.starts_with('.')
        && name.len() <= 255
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._:-+".contains(&b));
    match ok {
        true => Ok(()),
        false => Err(ExtractError::InvalidFinalName(name.to_owned())),
    }
}

/// `dest_parent/.tmp-<final_name>-<16 hex>`, removed on drop unless committed.
pub(crate) struct TempDir {
    path: PathBuf,
    fd: OwnedFd,
    committed: bool,
}

impl TempDir {
    pub(crate) fn create(dest_parent: &Path, final_name: &str) -> Result<Self> {
        let mut attempt = 0u64;
        loop {
            let mut hasher = std::hash::RandomState::new().build_hasher();
            hasher.write_u64(attempt);
            hasher.write_u32(std::process::id());
            let path = dest_parent.join(format!("{TEMP_PREFIX}{final_name}-{:016x}", hasher.finish()));
            match DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempt < 8 => {
                    attempt += 1;
                    continue;
                }
                Err(source) => {
                    return Err(ExtractError::Io {
                        op: "create directory",
                        path,
                        source,
                    })
                }
            }
            let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            return match rustix::fs::openat(CWD, &path, flags, Mode::empty()) {
                Ok(fd) => Ok(Self {
                    path,
                    fd,
                    committed: false,
                }),
                Err(e) => {
                    let _ = std::fs::remove_dir(&path);
                    Err(ExtractError::Io {
                        op: "open",
                        path,
                        source: e.into(),
                    })
                }
            };
        }
    }

    pub(crate) fn fd(&self) -> &OwnedFd {
        &self.fd
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn io(&self, op: &'static str, source: io::Error) -> ExtractError {
        ExtractError::Io {
            op,
            path: self.path.clone(),
            source,
        }
    }

    /// Opens the tree to readers, renames it to `final_path` (never over an existing one) and
    /// makes the rename durable. The caller has made the tree's data durable already.
    pub(crate) fn commit(mut self, final_path: &Path) -> Result<()> {
        rustix::fs::fchmod(&self.fd, Mode::from_raw_mode(0o755)).map_err(|e| self.io("chmod", e.into()))?;
        match rustix::fs::renameat_with(CWD, &self.path, CWD, final_path, RenameFlags::NOREPLACE) {
            Ok(()) => {}
            Err(rustix::io::Errno::EXIST) => return Err(ExtractError::AlreadyExists(final_path.to_owned())),
            Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS) => {
                // A filesystem without RENAME_NOREPLACE: check, then rename (a race here is
                // between our own extractions of one name, which extract_once serialises).
                if final_path.symlink_metadata().is_ok() {
                    return Err(ExtractError::AlreadyExists(final_path.to_owned()));
                }
                std::fs::rename(&self.path, final_path).map_err(|e| self.io("rename", e))?;
            }
            Err(e) => return Err(self.io("rename", e.into())),
        }
        self.committed = true;
        let parent = final_path.parent().unwrap_or(Path::new("."));
        let sync = File::open(parent).and_then(|dir| dir.sync_all());
        sync.map_err(|source| ExtractError::Io {
            op: "sync",
            path: parent.to_owned(),
            source,
        })
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !self.committed {
            if let Err(err) = std::fs::remove_dir_all(&self.path) {
                tracing::warn!(path = %self.path.display(), %err, "failed to remove temp dir");
            }
        }
    }
}

/// What [`extract_once`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExtractOutcome {
    /// This call extracted the layer.
    Extracted(ExtractReport),
    /// The final dir was already there (or another process made it while this one waited).
    AlreadyPresent,
}

/// [`extract_layer`] under an exclusive lock on `dest_parent/.lock-<final_name>`, so processes
/// (and threads) racing for one name extract it once: the others wait, then find it present.
/// `open` is called only by the one that extracts.
pub fn extract_once<R: Read>(
    dest_parent: &Path,
    final_name: &str,
    gzip: bool,
    limits: &ExtractLimits,
    open: impl FnOnce() -> io::Result<R>,
) -> Result<ExtractOutcome> {
    extract_once_checked(dest_parent, final_name, gzip, limits, open, || Ok(()))
}

/// [`extract_once`] with [`extract_layer_checked`]'s last check before the commit.
pub fn extract_once_checked<R: Read>(
    dest_parent: &Path,
    final_name: &str,
    gzip: bool,
    limits: &ExtractLimits,
    open: impl FnOnce() -> io::Result<R>,
    finish: impl FnOnce() -> io::Result<()>,
) -> Result<ExtractOutcome> {
    check_final_name(final_name)?;
    let final_path = dest_parent.join(final_name);
    if final_path.symlink_metadata().is_ok() {
        return Ok(ExtractOutcome::AlreadyPresent);
    }
    let _lock = NameLock::acquire(dest_parent, final_name).map_err(|source| ExtractError::Io {
        op: "lock",
        path: NameLock::path(dest_parent, final_name),
        source,
    })?;
    if final_path.symlink_metadata().is_ok() {
        return Ok(ExtractOutcome::AlreadyPresent);
    }
    let reader = open().map_err(ExtractError::Read)?;
    match extract_layer_checked(reader, gzip, dest_parent, final_name, limits, finish) {
        Ok(report) => Ok(ExtractOutcome::Extracted(report)),
        Err(ExtractError::AlreadyExists(_)) => Ok(ExtractOutcome::AlreadyPresent),
        Err(e) => Err(e),
    }
}

//! The agent's files in policy.d and caches.d: written atomically (temp, fsync, rename, see
//! [`kcache_core::fsutil::write_atomic`]), and removed only when they are the agent's own: the
//! name starts with [`FILE_PREFIX`] and the first line with [`HEADER_MARK`]. The admin's files
//! are never touched, whatever their names.

use std::{
    collections::BTreeSet,
    fs, io,
    path::{Path, PathBuf},
};

use kcache_core::fsutil::write_atomic;

use crate::render::{FILE_PREFIX, HEADER_MARK, MATERIAL_DIR};

/// A failed file operation, naming the path.
#[derive(Debug, thiserror::Error)]
#[error("{op} {path}")]
pub struct FileError {
    /// `write`, `remove`, `list`.
    pub op: &'static str,
    /// The path.
    pub path: PathBuf,
    /// The cause.
    #[source]
    pub source: io::Error,
}

fn err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> FileError + 'a {
    move |source| FileError {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Whether `path` is one of the agent's files.
pub fn is_ours(path: &Path) -> bool {
    let named = path
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with(FILE_PREFIX) && n.ends_with(".yaml"));
    named && fs::read(path).is_ok_and(|b| b.starts_with(HEADER_MARK.as_bytes()))
}

/// The agent's files in `dir`, by file name.
pub fn list_ours(dir: &Path) -> Result<BTreeSet<String>, FileError> {
    let mut out = BTreeSet::new();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(err("list", dir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(err("list", dir))?;
        let path = entry.path();
        if entry.file_type().is_ok_and(|t| t.is_file()) && is_ours(&path) {
            if let Some(n) = path.file_name().and_then(|n| n.to_str()) {
                out.insert(n.to_string());
            }
        }
    }
    Ok(out)
}

/// Writes `bytes` to `dir/name` unless it already holds exactly them. Refuses to overwrite a
/// file that is not the agent's (an admin's file that happens to have our name). Returns
/// whether it wrote.
pub fn write_if_changed(dir: &Path, name: &str, bytes: &[u8]) -> Result<bool, FileError> {
    let path = dir.join(name);
    match fs::read(&path) {
        Ok(old) if old == bytes => return Ok(false),
        Ok(_) if !is_ours(&path) => {
            return Err(FileError {
                op: "overwrite",
                path,
                source: io::Error::new(io::ErrorKind::AlreadyExists, "the file is not the agent's; left alone"),
            })
        }
        _ => {}
    }
    fs::create_dir_all(dir).map_err(err("create", dir))?;
    write_atomic(&path, bytes, 0o644, true).map_err(err("write", &path))?;
    Ok(true)
}

/// Writes a key or trusted-root file under policy.d's material directory (the agent's alone).
pub fn write_material(policy_d: &Path, rel: &Path, bytes: &[u8]) -> Result<bool, FileError> {
    let path = policy_d.join(rel);
    if fs::read(&path).is_ok_and(|old| old == bytes) {
        return Ok(false);
    }
    let parent = path.parent().unwrap_or(policy_d);
    fs::create_dir_all(parent).map_err(err("create", parent))?;
    write_atomic(&path, bytes, 0o644, true).map_err(err("write", &path))?;
    Ok(true)
}

/// Removes `dir/name` if it is the agent's. Returns whether it removed it.
pub fn remove_ours(dir: &Path, name: &str) -> Result<bool, FileError> {
    let path = dir.join(name);
    if !is_ours(&path) {
        return Ok(false);
    }
    fs::remove_file(&path).map_err(err("remove", &path))?;
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(err("sync", dir))?;
    Ok(true)
}

/// Removes the material directories of TrustPolicies not in `keep` (directory names).
pub fn prune_material(policy_d: &Path, keep: &BTreeSet<String>) -> Result<(), FileError> {
    let dir = policy_d.join(MATERIAL_DIR);
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(err("list", &dir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(err("list", &dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !keep.contains(&name) && entry.file_type().is_ok_and(|t| t.is_dir()) {
            fs::remove_dir_all(entry.path()).map_err(err("remove", &entry.path()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_admins_files_are_never_removed_or_overwritten_even_with_our_prefix() {
        let d = tempfile::tempdir().unwrap();
        let admin = d.path().join("kcache-cluster-trustpolicy-x.yaml");
        fs::write(&admin, "rules: []\n").unwrap();
        fs::write(d.path().join("site.yaml"), format!("{HEADER_MARK} looks like ours\n")).unwrap();
        assert!(!remove_ours(d.path(), "kcache-cluster-trustpolicy-x.yaml").unwrap());
        assert!(!remove_ours(d.path(), "site.yaml").unwrap());
        let e = write_if_changed(
            d.path(),
            "kcache-cluster-trustpolicy-x.yaml",
            b"# kcache-controller: x\n",
        )
        .unwrap_err();
        assert_eq!(e.op, "overwrite");
        assert_eq!(fs::read_to_string(&admin).unwrap(), "rules: []\n");
        assert!(list_ours(d.path()).unwrap().is_empty());
    }

    #[test]
    fn our_files_are_written_once_listed_and_removed() {
        let d = tempfile::tempdir().unwrap();
        let body = format!("{HEADER_MARK} t\nrules: []\n");
        assert!(write_if_changed(d.path(), "kcache-cluster-a.yaml", body.as_bytes()).unwrap());
        assert!(!write_if_changed(d.path(), "kcache-cluster-a.yaml", body.as_bytes()).unwrap());
        assert_eq!(
            list_ours(d.path()).unwrap().into_iter().collect::<Vec<_>>(),
            ["kcache-cluster-a.yaml"]
        );
        // No temporaries left behind.
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 1);
        assert!(remove_ours(d.path(), "kcache-cluster-a.yaml").unwrap());
        assert!(list_ours(d.path()).unwrap().is_empty());
    }
}

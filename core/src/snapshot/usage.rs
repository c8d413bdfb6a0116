//! Disk usage of a directory tree, counted like containerd's `fs.DiskUsage`: every distinct inode
//! once (hard links included), the root included, size as allocated blocks × 512.

use std::{collections::HashSet, fs, os::unix::fs::MetadataExt, path::Path};

use super::{Result, SnapshotError, Usage};

/// Measures the tree under `root` without following symlinks.
pub(crate) fn disk_usage(root: &Path) -> Result<Usage> {
    let mut seen = HashSet::new();
    let mut usage = Usage::default();
    let mut stack = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = fs::symlink_metadata(&path).map_err(SnapshotError::io("stat", &path))?;
        if seen.insert((meta.dev(), meta.ino())) {
            usage.inodes += 1;
            usage.size += meta.blocks() * 512;
        }
        if meta.is_dir() {
            for entry in fs::read_dir(&path).map_err(SnapshotError::io("read", &path))? {
                let entry = entry.map_err(SnapshotError::io("read", &path))?;
                stack.push(entry.path());
            }
        }
    }
    Ok(usage)
}

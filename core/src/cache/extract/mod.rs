//! Hardened extraction of a cache image layer (gzip'd or plain tar) into the store.
//!
//! [`extract_layer`] unpacks into `dest_parent/.tmp-<final_name>-<random>` (mode 0700), checks
//! every entry, makes the data durable, then renames the tree to `dest_parent/<final_name>` in
//! one step. On any error the temp dir is removed and nothing exists at the final path.
//!
//! # Rules (each a variant of [`ExtractError`])
//! - names: not empty, no NUL, not absolute, no `..`, at most [`ExtractLimits::max_path_len`]
//!   bytes and [`ExtractLimits::max_depth`] levels; the same normalized path never twice;
//! - only regular files, directories and symlinks. Hard links are all rejected (a cache never
//!   needs them, and rejecting them all leaves no "points inside?" question); devices, fifos,
//!   sparse (GNU `S`, or PAX `GNU.sparse.*` records) and contiguous files, and unknown type
//!   bytes too. PAX global headers are ignored;
//! - setuid, setgid and sticky bits are rejected, not stripped: a cache builder never sets them;
//! - symlinks: relative targets whose `..` components all lead and do not climb above the root
//!   (see [`rules`]); nothing is ever created through a symlink or a file of the archive;
//! - sizes: every file's data must be exactly its header's (PAX-aware) size, a PAX `size` record
//!   must equal the ustar size field unless that field cannot hold it (above 8 GiB - 1), the
//!   stream must reach the end-of-archive marker, and only zeros may follow it; total file data
//!   is bounded by [`ExtractLimits::max_bytes`] and [`ExtractLimits::expected_bytes`], entries
//!   and the inodes they create (directories implied by a deeper name included) by
//!   [`ExtractLimits::max_entries`], headers before one entry by 1 MiB.
//!
//! Files get mode 0755 if any exec bit is set, else 0644; directories 0755. Ownership, mtimes and
//! xattrs are not applied (extraction time stands as mtime; Triton does not read it).
//!
//! # Crash safety
//! Data is made durable with one `syncfs` on the store's filesystem after the last entry (cheaper
//! than an fsync per file, and it covers the directories too), and only then is the temp dir
//! renamed (`RENAME_NOREPLACE`) and the parent fsynced. So a crash leaves either no final dir and
//! a `.tmp-*` dir, or a complete, durable final dir. [`sweep_temp_dirs`] removes the leftovers at
//! start-up. The cost of `syncfs`: it also waits for other writers' dirty data on the same
//! filesystem, so extraction time varies with what else writes there (a dedicated store
//! filesystem avoids that).

mod error;
mod pipe;
mod rules;
mod store;
mod unpack;

use std::{
    cell::Cell,
    io::Read,
    os::fd::AsFd,
    path::Path,
    sync::mpsc::{sync_channel, Receiver},
};

pub use error::{ExtractError, Result};
pub use store::{extract_once, extract_once_checked, sweep_temp_dirs, ExtractOutcome};

/// Limits on one layer. Defaults fit large Triton/vLLM caches with room to spare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtractLimits {
    /// Total bytes of file data (default 8 GiB).
    pub max_bytes: u64,
    /// Entries of any kind, and inodes created: files, symlinks and directories, including
    /// those implied by a deeper entry's name (default 1,000,000). Each is bounded on its own.
    pub max_entries: u64,
    /// Bytes in one entry name or link target (default 4096, Linux's `PATH_MAX`).
    pub max_path_len: usize,
    /// Components in one entry name (default 64).
    pub max_depth: usize,
    /// Total bytes of file data the image declares (its `cache.triton.image/cache-size-bytes`
    /// label), when known: more data than declared is an error (default none).
    pub expected_bytes: Option<u64>,
}

impl Default for ExtractLimits {
    fn default() -> Self {
        Self {
            max_bytes: 8 << 30,
            max_entries: 1_000_000,
            max_path_len: 4096,
            max_depth: 64,
            expected_bytes: None,
        }
    }
}

/// What an extraction created.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExtractReport {
    /// Regular files.
    pub files: u64,
    /// Directories, explicit or implied by a deeper entry (not counting the root).
    pub dirs: u64,
    /// Symlinks.
    pub symlinks: u64,
    /// Bytes of file data.
    pub bytes: u64,
}

/// Headers (ustar + GNU long names + PAX records) allowed before one entry.
const HEADER_LIMIT: u64 = 1 << 20;

/// Extracts a layer (`gzip`: gzip'd tar, else plain tar) into `dest_parent/final_name`.
///
/// Fails with [`ExtractError::AlreadyExists`] if that exists (before or at the final rename);
/// the caller decides what that means (see [`extract_once`]). On every error nothing is left at
/// the final path and the temp dir is gone (unless the process dies: see [`sweep_temp_dirs`]).
///
/// Uses two threads: the caller's reads and decompresses, a scoped worker checks and writes.
pub fn extract_layer(
    reader: impl Read,
    gzip: bool,
    dest_parent: &Path,
    final_name: &str,
    limits: &ExtractLimits,
) -> Result<ExtractReport> {
    extract_layer_checked(reader, gzip, dest_parent, final_name, limits, || Ok(()))
}

/// [`extract_layer`] with a last check before the commit: `finish` runs after every entry is
/// written and made durable, and before the rename that makes the tree visible. An error from it
/// ([`ExtractError::Unverified`]) discards the tree. kcached checks the layer blob's digest
/// here, so data whose digest did not match is never visible at the final path.
pub fn extract_layer_checked(
    reader: impl Read,
    gzip: bool,
    dest_parent: &Path,
    final_name: &str,
    limits: &ExtractLimits,
    finish: impl FnOnce() -> std::io::Result<()>,
) -> Result<ExtractReport> {
    store::check_final_name(final_name)?;
    let final_path = dest_parent.join(final_name);
    if final_path.symlink_metadata().is_ok() {
        return Err(ExtractError::AlreadyExists(final_path));
    }
    let temp = store::TempDir::create(dest_parent, final_name)?;
    let report = unpack_into(reader, gzip, &temp, limits)?;
    finish().map_err(ExtractError::Unverified)?;
    temp.commit(&final_path)?;
    tracing::debug!(path = %final_path.display(), files = report.files, bytes = report.bytes, "extracted layer");
    Ok(report)
}

fn unpack_into(reader: impl Read, gzip: bool, temp: &store::TempDir, limits: &ExtractLimits) -> Result<ExtractReport> {
    let (tx, rx) = sync_channel::<pipe::Chunk>(pipe::DEPTH);
    let (pool_tx, pool_rx) = sync_channel::<Vec<u8>>(pipe::DEPTH + 2);
    let (read_err, result) = std::thread::scope(|scope| {
        let worker = scope.spawn(move || worker(rx, pool_tx, temp, limits));
        let read_err = pipe::pump(reader, gzip, tx, pool_rx);
        (read_err, worker.join())
    });
    let result = match result {
        Ok(result) => result,
        Err(panic) => std::panic::resume_unwind(panic),
    };
    if let Some(e) = read_err {
        return Err(ExtractError::Read(e));
    }
    let report = result?;
    rustix::fs::syncfs(temp.fd()).map_err(|e| temp.io("sync", e.into()))?;
    Ok(report)
}

fn worker(
    rx: Receiver<pipe::Chunk>,
    pool: std::sync::mpsc::SyncSender<Vec<u8>>,
    temp: &store::TempDir,
    limits: &ExtractLimits,
) -> Result<ExtractReport> {
    let meter = pipe::Meter::default();
    let index = Cell::new(0);
    let reader = pipe::PipeReader::new(rx, pool, &meter, HEADER_LIMIT, &index);
    unpack::Unpacker::new(temp.fd().as_fd(), temp.path(), limits, &meter, &index).run(reader)
}

//! [`ExtractError`]: every way an extraction can fail, one variant per rule.

use std::{io, path::PathBuf};

/// Why an extraction failed. Rule violations name the entry (as written in the archive, lossily
/// decoded) and the rule; nothing of the layer is left behind in any case.
#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    /// The final name is not a single plain file name (no `/`, not `.`/`..`, no leading `.`).
    #[error("invalid store entry name {0:?}: must be one plain name that does not start with '.'")]
    InvalidFinalName(String),
    /// Something already exists at the final path; the caller decides what that means.
    #[error("{0} already exists")]
    AlreadyExists(PathBuf),
    /// A filesystem operation in the store failed.
    #[error("failed to {op} {path}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On what.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Reading the layer failed (the reader's own error, or a corrupt gzip stream).
    #[error("failed to read or decompress the layer")]
    Read(#[source] io::Error),
    /// The caller's final check (the layer digest) failed after the stream was unpacked.
    #[error("the layer failed its final check")]
    Unverified(#[source] io::Error),
    /// The tar stream is malformed (bad header checksum, bad number field, …).
    #[error("malformed tar archive")]
    Malformed(#[source] io::Error),
    /// The stream ended before an entry's data or before the end-of-archive marker: a truncated
    /// archive, or a header (ustar or PAX `size`) that claims more data than there is.
    #[error("archive truncated at entry {entry:?}: expected {expected} bytes of data, got {actual}")]
    Truncated {
        /// The entry being read when the stream ended (empty: between entries).
        entry: String,
        /// Bytes the header promised.
        expected: u64,
        /// Bytes there were.
        actual: u64,
    },
    /// Non-zero bytes after the end-of-archive marker, or too many zero bytes.
    #[error("unexpected data after the end of the archive")]
    TrailingData,
    /// The headers before one entry (ustar + GNU long names + PAX records) are too large.
    #[error("headers before entry number {index} exceed {limit} bytes")]
    HeadersTooLarge {
        /// Index of the entry that was being parsed (0-based).
        index: u64,
        /// The limit.
        limit: u64,
    },
    /// An entry has an empty name.
    #[error("entry with an empty name")]
    EmptyName,
    /// An entry name or link target contains a NUL byte.
    #[error("entry {entry:?}: name or link target contains a NUL byte")]
    NulInName {
        /// The entry.
        entry: String,
    },
    /// An absolute entry name.
    #[error("entry {entry:?}: absolute names are not allowed")]
    AbsolutePath {
        /// The entry.
        entry: String,
    },
    /// A `..` component in an entry name.
    #[error("entry {entry:?}: '..' components are not allowed")]
    ParentComponent {
        /// The entry.
        entry: String,
    },
    /// An entry name or link target longer than [`ExtractLimits::max_path_len`](super::ExtractLimits).
    #[error("entry {entry:?}: name or link target is {len} bytes, over the limit of {limit}")]
    PathTooLong {
        /// The entry.
        entry: String,
        /// Its length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// An entry nested deeper than [`ExtractLimits::max_depth`](super::ExtractLimits).
    #[error("entry {entry:?}: {depth} levels deep, over the limit of {limit}")]
    TooDeep {
        /// The entry.
        entry: String,
        /// Its depth.
        depth: usize,
        /// The limit.
        limit: usize,
    },
    /// A symlink with an absolute target.
    #[error("symlink {entry:?} -> {target:?}: absolute targets are not allowed")]
    SymlinkAbsolute {
        /// The link.
        entry: String,
        /// Its target.
        target: String,
    },
    /// A symlink whose target could resolve outside the tree.
    #[error(
        "symlink {entry:?} -> {target:?} could resolve outside the tree ('..' is allowed only as \
         leading components, at most as many as the link's depth)"
    )]
    SymlinkEscapes {
        /// The link.
        entry: String,
        /// Its target.
        target: String,
    },
    /// A PAX `size` record that is not a number, or differs from the header's size field where
    /// that field could hold it (the archive would read as different entries to readers that
    /// honour PAX and readers that do not).
    #[error("entry {entry:?}: PAX size record {pax:?} does not match the header's size {header}")]
    PaxSize {
        /// The entry.
        entry: String,
        /// The record's value, as written.
        pax: String,
        /// The ustar header's size field.
        header: u64,
    },
    /// A hard link (all are rejected: a cache never needs them).
    #[error("entry {entry:?}: hard links are not allowed (target {target:?})")]
    Hardlink {
        /// The link.
        entry: String,
        /// Its target.
        target: String,
    },
    /// An entry that is not a regular file, directory or symlink (device, fifo, sparse, …).
    #[error("entry {entry:?}: entry type {kind} is not allowed")]
    UnsupportedType {
        /// The entry.
        entry: String,
        /// The type, in words.
        kind: String,
    },
    /// Setuid, setgid or sticky bits (rejected, not stripped: a cache never needs them, and an
    /// image that carries them was not built by a cache builder).
    #[error("entry {entry:?}: mode {mode:#o} has setuid, setgid or sticky bits")]
    SpecialBits {
        /// The entry.
        entry: String,
        /// The mode in the header.
        mode: u32,
    },
    /// A directory or symlink entry that carries data.
    #[error("entry {entry:?}: a {kind} entry must not carry data ({size} bytes)")]
    UnexpectedData {
        /// The entry.
        entry: String,
        /// The type, in words.
        kind: &'static str,
        /// The data size in the header.
        size: u64,
    },
    /// The same normalized path twice.
    #[error("entry {entry:?}: duplicate of an earlier entry")]
    Duplicate {
        /// The entry.
        entry: String,
    },
    /// A parent of the entry is a symlink or a file from an earlier entry (writing through it
    /// could leave the tree).
    #[error("entry {entry:?}: parent {parent:?} is not a directory of this archive")]
    ParentNotDirectory {
        /// The entry.
        entry: String,
        /// The offending parent (normalized).
        parent: String,
    },
    /// Total file data over [`ExtractLimits::max_bytes`](super::ExtractLimits).
    #[error("entry {entry:?}: file data would exceed the limit of {limit} bytes")]
    TooManyBytes {
        /// The entry that went over.
        entry: String,
        /// The limit.
        limit: u64,
    },
    /// Total file data over the size the image declared.
    #[error("entry {entry:?}: file data would exceed the image's declared size of {expected} bytes")]
    OverExpectedBytes {
        /// The entry that went over.
        entry: String,
        /// The declared size.
        expected: u64,
    },
    /// More entries, or more inodes created (files, directories including those implied by a
    /// deeper name, symlinks), than [`ExtractLimits::max_entries`](super::ExtractLimits).
    #[error("more than {limit} entries or inodes (files, directories including implied parents, symlinks)")]
    TooManyEntries {
        /// The limit.
        limit: u64,
    },
}

/// Result of this module.
pub type Result<T> = std::result::Result<T, ExtractError>;

pub(crate) fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

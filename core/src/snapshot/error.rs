//! Errors of the snapshotter. The first four variants are the only ones containerd acts on: its
//! proxy turns the gRPC codes back into errdefs (`errgrpc.ToNative`), so they map 1:1 to
//! `NotFound`, `AlreadyExists`, `FailedPrecondition` and `InvalidArgument` at the gRPC edge.

use std::{io, path::PathBuf};

/// What a snapshotter operation failed with.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The snapshot (or the named parent) does not exist.
    #[error("snapshot {0:?} not found")]
    NotFound(String),
    /// A snapshot with that key or name already exists.
    #[error("snapshot {0:?} already exists")]
    AlreadyExists(String),
    /// The snapshot is in the wrong state for the operation (for example, it has children).
    #[error("{0}")]
    FailedPrecondition(String),
    /// The request itself is malformed (bad filter, bad field path, uncommitted parent).
    #[error("{0}")]
    InvalidArgument(String),
    /// A filesystem operation failed.
    #[error("failed to {op} {}", path.display())]
    Io {
        /// What was being done, in words ("create", "rename", "remove").
        op: &'static str,
        /// The path it was done on.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The metadata store failed.
    #[error("snapshot metadata store failed")]
    Store(#[source] Box<redb::Error>),
    /// A stored record could not be decoded.
    #[error("corrupt snapshot record for {key:?}")]
    Corrupt {
        /// The record's key.
        key: String,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
}

/// The result of snapshotter operations.
pub type Result<T> = std::result::Result<T, SnapshotError>;

impl SnapshotError {
    /// A filesystem error on `path`.
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { op, path, source }
    }
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for SnapshotError {
            fn from(e: $t) -> Self {
                Self::Store(Box::new(e.into()))
            }
        }
    )*};
}
from_redb!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

//! A containerd snapshotter: the domain [`Snapshotter`] trait and [`OverlaySnapshotter`], which
//! implements containerd's overlayfs snapshotter semantics on a crash-safe `redb` metadata store.
//!
//! There is no gRPC here. The trait takes plain arguments, like containerd/rust-extensions'
//! `containerd-snapshots` crate; the daemon wraps it in the Snapshots service, mapping each
//! [`SnapshotError`] to its gRPC code in one place.
//!
//! # What is supported
//! - Kinds View, Active and Committed; Prepare, View, Mounts, Commit, Remove, Stat, Update (field
//!   paths `labels` and `labels.<key>`), Walk, Usage and Cleanup.
//! - Mounts exactly as containerd 1.6's overlayfs snapshotter returns them, `index=off`
//!   included where the kernel has the option ([`OverlayOptions`]); not yet `userxattr`
//!   (rootless containerd).
//! - Walk filters: the subset of containerd's filter syntax that `ctr snapshots ls` and CRI use
//!   (see [`filter`]).
//!
//! # Testing against it
//! [`OverlaySnapshotter::open`] on a temporary directory needs no privileges: it only creates
//! directories and never mounts anything.

mod error;
pub mod filter;
#[cfg(feature = "verify")]
pub mod gate;
#[cfg(feature = "grpc")]
mod grpc;
mod overlay;
mod store;
mod usage;

#[cfg(test)]
mod crash_tests;
#[cfg(all(test, feature = "verify"))]
mod gate_tests;
#[cfg(test)]
mod tests;

use std::{collections::HashMap, time::SystemTime};

pub use error::{Result, SnapshotError};
pub use overlay::{OverlayOptions, OverlaySnapshotter};

/// The kind of a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A read-only view of a committed snapshot.
    View,
    /// A writable snapshot, the only kind that can be committed.
    Active,
    /// An immutable snapshot, the only kind that can be a parent.
    Committed,
}

impl Kind {
    /// The name containerd's filters use: `active`, `view` or `committed`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::View => "view",
            Kind::Active => "active",
            Kind::Committed => "committed",
        }
    }
}

/// What containerd knows about a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    /// Active and View snapshots: their key. Committed ones: their name.
    pub name: String,
    /// The parent's name; empty for none.
    pub parent: String,
    /// The kind.
    pub kind: Kind,
    /// Labels, free-form.
    pub labels: HashMap<String, String>,
    /// When the snapshot was created.
    pub created_at: SystemTime,
    /// When it was last changed (created, committed or updated).
    pub updated_at: SystemTime,
}

/// A mount, as containerd passes it to `mount(2)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// The filesystem type: `bind` or `overlay`.
    pub fs_type: String,
    /// The source: a directory for bind mounts, `overlay` for overlays.
    pub source: String,
    /// The target; snapshotters leave it empty, the caller chooses it.
    pub target: String,
    /// Mount options (`rbind`, `ro`, `lowerdir=...`).
    pub options: Vec<String>,
}

/// The disk space a snapshot uses on its own (not counting its parents).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Usage {
    /// Distinct inodes, the snapshot's root directory included.
    pub inodes: u64,
    /// Bytes allocated on disk (blocks × 512), each inode counted once.
    pub size: u64,
}

/// A snapshotter, as containerd's Snapshots service sees it.
///
/// Keys name Active and View snapshots; names name Committed ones; both share one namespace.
/// Every method is synchronous and safe to call from many threads; async servers call it from a
/// blocking pool.
pub trait Snapshotter: Send + Sync + 'static {
    /// The error type; the gRPC edge turns it into a status.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Information about the snapshot `key`. Fails with NotFound if there is none.
    fn stat(&self, key: &str) -> std::result::Result<Info, Self::Error>;

    /// Changes the mutable fields (labels) of the snapshot `info.name` and returns the result.
    ///
    /// `fieldpaths` empty: replace all labels. `labels`: replace all labels. `labels.<key>`: set
    /// that one label from `info.labels`, or delete it when `info.labels` lacks it. Any other
    /// path fails with InvalidArgument.
    fn update(&self, info: Info, fieldpaths: &[String]) -> std::result::Result<Info, Self::Error>;

    /// The disk usage of `key` on its own. Active snapshots are measured now; Committed ones
    /// report what was measured at commit; Views use no space of their own.
    fn usage(&self, key: &str) -> std::result::Result<Usage, Self::Error>;

    /// The mounts that make up the filesystem of the Active or View snapshot `key`.
    fn mounts(&self, key: &str) -> std::result::Result<Vec<Mount>, Self::Error>;

    /// Creates the Active snapshot `key` on top of the Committed snapshot `parent` (empty for
    /// none) and returns its mounts. Fails with AlreadyExists if `key` is taken, NotFound if
    /// `parent` does not exist, InvalidArgument if it is not Committed.
    fn prepare(
        &self,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
    ) -> std::result::Result<Vec<Mount>, Self::Error>;

    /// Like [`prepare`](Self::prepare), but the snapshot is a read-only View that cannot be
    /// committed.
    fn view(
        &self,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
    ) -> std::result::Result<Vec<Mount>, Self::Error>;

    /// Turns the Active snapshot `key` into the Committed snapshot `name`, with `labels`.
    /// Fails with NotFound if there is no `key`, FailedPrecondition if it is not Active,
    /// AlreadyExists if `name` is taken.
    fn commit(&self, name: &str, key: &str, labels: HashMap<String, String>) -> std::result::Result<(), Self::Error>;

    /// Removes the snapshot `key`. Fails with NotFound if there is none, FailedPrecondition if
    /// it has children.
    fn remove(&self, key: &str) -> std::result::Result<(), Self::Error>;

    /// Every snapshot that matches any of `filters` (each a comma-separated conjunction); all
    /// of them when `filters` is empty. Fails with InvalidArgument on a filter it cannot parse.
    fn walk(&self, filters: &[String]) -> std::result::Result<Vec<Info>, Self::Error>;

    /// Removes what no snapshot owns any more (directories left by a crash or a failed remove).
    fn cleanup(&self) -> std::result::Result<(), Self::Error>;
}

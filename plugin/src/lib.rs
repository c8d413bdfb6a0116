//! kcache-plugin: the node daemon's wiring. The decisions live in kcache-core; this crate only
//! puts them on the wire.
//!
//! - [`snapshotter`]: containerd's Snapshots gRPC service over any
//!   [`Snapshotter`](kcache_core::snapshot::Snapshotter), served on a unix socket.
//! - [`daemon`]: kcached's parts: policy hot reload, the verification gate, metrics, the
//!   kcache API ([`api`]) and its configuration.
//! - [`proto`]: the code generated from containerd's vendored protos.
#![forbid(unsafe_code)]
#![warn(clippy::unwrap_used, clippy::panic)]

pub mod daemon;
pub mod nri;
pub mod proto;

pub use daemon::api;
pub mod snapshotter;

//! kcache-plugin: the node daemon's wiring. The decisions live in kcache-core; this crate only
//! puts them on the wire.
//!
//! - [`snapshotter`]: containerd's Snapshots gRPC service over any
//!   [`Snapshotter`](kcache_core::snapshot::Snapshotter), served on a unix socket.
//! - [`proto`]: the code generated from containerd's vendored protos.
#![forbid(unsafe_code)]
#![warn(clippy::unwrap_used, clippy::panic)]

pub mod proto;
pub mod snapshotter;

//! containerd's Snapshots service (`containerd.services.snapshots.v1.Snapshots`) over a domain
//! [`Snapshotter`], as a proxy snapshotter plugin: containerd connects to the unix socket named
//! in `[proxy_plugins.<name>] type = "snapshot" address = "..."`.
//!
//! Business code never sees a `tonic::Request`: [`server::SnapshotsService`] unpacks each
//! request with the conversions in [`convert`], runs the (synchronous) snapshotter on tokio's
//! blocking pool, and maps its errors to statuses with `Into<Status>` (for
//! [`SnapshotError`](kcache_core::snapshot::SnapshotError), in kcache-core's `grpc` feature).

pub mod convert;
pub mod server;

pub use kcache_core::snapshot::Snapshotter;
pub use server::{bind_unix, serve, serve_service, ServeError, SnapshotsService};

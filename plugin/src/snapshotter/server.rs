//! The Snapshots service over a domain [`Snapshotter`], and serving it on a unix socket.

use std::{
    fs,
    future::Future,
    io,
    os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt},
    path::Path,
    path::PathBuf,
    pin::Pin,
    sync::Arc,
};

use futures_util::Stream;
use kcache_core::snapshot::Snapshotter;
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Request, Response, Status};

use super::convert::{mounts, update_info};
use crate::daemon::metrics::Metrics;
use crate::proto::snapshots::{
    self as pb,
    snapshots_server::{Snapshots, SnapshotsServer},
};

/// containerd sends List results in batches; 100 like its own snapshots service.
const LIST_BATCH: usize = 100;

/// The Snapshots gRPC service in front of a [`Snapshotter`]: proto in, domain call, proto or
/// status out, nothing decided here. The verification gate is a snapshotter too
/// ([`kcache_core::snapshot::gate::GatedSnapshotter`]). The `snapshotter` field of the requests
/// (the plugin name) is ignored: one socket serves one snapshotter.
pub struct SnapshotsService<S> {
    inner: Arc<S>,
    metrics: Option<Arc<Metrics>>,
}

impl<S> SnapshotsService<S> {
    /// Serves `snapshotter`.
    pub fn new(snapshotter: Arc<S>) -> Self {
        Self {
            inner: snapshotter,
            metrics: None,
        }
    }

    /// Records operation latencies and errors.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }
}

impl<S> SnapshotsService<S>
where
    S: Snapshotter,
    S::Error: Into<Status>,
{
    /// Runs `op` on the blocking pool: the domain snapshotter does file and database I/O.
    async fn run<T, F>(&self, op: F) -> Result<T, Status>
    where
        T: Send + 'static,
        F: FnOnce(&S) -> Result<T, S::Error> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        match tokio::task::spawn_blocking(move || op(&inner)).await {
            Ok(result) => result.map_err(Into::into),
            Err(join) => Err(Status::internal(format!("snapshotter task failed: {join}"))),
        }
    }

    /// Times `fut` as operation `op` and counts its errors.
    async fn timed<T>(&self, op: &'static str, fut: impl Future<Output = Result<T, Status>>) -> Result<T, Status> {
        let start = std::time::Instant::now();
        let result = fut.await;
        if let Some(m) = &self.metrics {
            m.snapshot_operation(op, start.elapsed(), result.as_ref().err().map(Status::code));
        }
        result
    }
}

type ListStream = Pin<Box<dyn Stream<Item = Result<pb::ListSnapshotsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl<S> Snapshots for SnapshotsService<S>
where
    S: Snapshotter,
    S::Error: Into<Status>,
{
    async fn prepare(
        &self,
        request: Request<pb::PrepareSnapshotRequest>,
    ) -> Result<Response<pb::PrepareSnapshotResponse>, Status> {
        let r = request.into_inner();
        self.timed("prepare", async {
            let m = self.run(move |s| s.prepare(&r.key, &r.parent, r.labels)).await?;
            Ok(Response::new(pb::PrepareSnapshotResponse { mounts: mounts(m) }))
        })
        .await
    }

    async fn view(
        &self,
        request: Request<pb::ViewSnapshotRequest>,
    ) -> Result<Response<pb::ViewSnapshotResponse>, Status> {
        let r = request.into_inner();
        self.timed("view", async {
            let m = self.run(move |s| s.view(&r.key, &r.parent, r.labels)).await?;
            Ok(Response::new(pb::ViewSnapshotResponse { mounts: mounts(m) }))
        })
        .await
    }

    async fn mounts(&self, request: Request<pb::MountsRequest>) -> Result<Response<pb::MountsResponse>, Status> {
        let r = request.into_inner();
        let m = self.timed("mounts", self.run(move |s| s.mounts(&r.key))).await?;
        Ok(Response::new(pb::MountsResponse { mounts: mounts(m) }))
    }

    async fn commit(&self, request: Request<pb::CommitSnapshotRequest>) -> Result<Response<()>, Status> {
        let r = request.into_inner();
        self.timed("commit", self.run(move |s| s.commit(&r.name, &r.key, r.labels)))
            .await?;
        Ok(Response::new(()))
    }

    async fn remove(&self, request: Request<pb::RemoveSnapshotRequest>) -> Result<Response<()>, Status> {
        let r = request.into_inner();
        self.timed("remove", self.run(move |s| s.remove(&r.key))).await?;
        Ok(Response::new(()))
    }

    async fn stat(
        &self,
        request: Request<pb::StatSnapshotRequest>,
    ) -> Result<Response<pb::StatSnapshotResponse>, Status> {
        let r = request.into_inner();
        let info = self.timed("stat", self.run(move |s| s.stat(&r.key))).await?;
        Ok(Response::new(pb::StatSnapshotResponse {
            info: Some(info.into()),
        }))
    }

    async fn update(
        &self,
        request: Request<pb::UpdateSnapshotRequest>,
    ) -> Result<Response<pb::UpdateSnapshotResponse>, Status> {
        let r = request.into_inner();
        let info = update_info(r.info.ok_or_else(|| Status::invalid_argument("missing field info"))?);
        let paths = r.update_mask.map(|m| m.paths).unwrap_or_default();
        let info = self.timed("update", self.run(move |s| s.update(info, &paths))).await?;
        Ok(Response::new(pb::UpdateSnapshotResponse {
            info: Some(info.into()),
        }))
    }

    type ListStream = ListStream;

    async fn list(&self, request: Request<pb::ListSnapshotsRequest>) -> Result<Response<Self::ListStream>, Status> {
        let r = request.into_inner();
        let infos = self.timed("list", self.run(move |s| s.walk(&r.filters))).await?;
        let batches: Vec<Result<pb::ListSnapshotsResponse, Status>> = infos
            .chunks(LIST_BATCH)
            .map(|batch| {
                Ok(pb::ListSnapshotsResponse {
                    info: batch.iter().cloned().map(Into::into).collect(),
                })
            })
            .collect();
        Ok(Response::new(Box::pin(futures_util::stream::iter(batches))))
    }

    async fn usage(&self, request: Request<pb::UsageRequest>) -> Result<Response<pb::UsageResponse>, Status> {
        let r = request.into_inner();
        let usage = self.timed("usage", self.run(move |s| s.usage(&r.key))).await?;
        Ok(Response::new(usage.into()))
    }

    async fn cleanup(&self, _request: Request<pb::CleanupRequest>) -> Result<Response<()>, Status> {
        self.timed("cleanup", self.run(|s| s.cleanup())).await?;
        Ok(Response::new(()))
    }
}

/// Why serving failed.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The socket could not be created.
    #[error("failed to listen on {}", path.display())]
    Listen {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The gRPC server failed.
    #[error("snapshotter gRPC server failed")]
    Server(#[source] tonic::transport::Error),
}

/// Serves `snapshotter` on the unix socket `socket` (mode 0600, replacing a stale one) until
/// `shutdown` completes.
pub async fn serve<S>(
    snapshotter: Arc<S>,
    socket: &Path,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError>
where
    S: Snapshotter,
    S::Error: Into<Status>,
{
    serve_service(SnapshotsService::new(snapshotter), socket, shutdown).await
}

/// Serves `service` (with its metrics) like [`serve`].
pub async fn serve_service<S>(
    service: SnapshotsService<S>,
    socket: &Path,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError>
where
    S: Snapshotter,
    S::Error: Into<Status>,
{
    let listen = |source| ServeError::Listen {
        path: socket.to_path_buf(),
        source,
    };
    let listener = bind_unix(socket).map_err(listen)?;
    tracing::info!(socket = %socket.display(), "serving the snapshotter");
    tonic::transport::Server::builder()
        .add_service(SnapshotsServer::new(service))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await
        .map_err(ServeError::Server)
}

/// Binds a unix socket at `path` with mode 0600: creates the parent dir, replaces a stale
/// socket, and never leaves the socket reachable with wider permissions (umask 0177 at bind
/// time would be racy across threads; the socket sits in a 0700 dir until chmod instead).
pub fn bind_unix(path: &Path) -> io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() && !dir.exists() {
            fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        }
    }
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => fs::remove_file(path)?,
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

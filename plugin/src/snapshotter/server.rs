//! The Snapshots service over a domain [`Snapshotter`], and serving it on a unix socket.

use std::{fs, future::Future, io, os::unix::fs::PermissionsExt, path::Path, path::PathBuf, pin::Pin, sync::Arc};

use futures_util::Stream;
use kcache_core::snapshot::Snapshotter;
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Request, Response, Status};

use super::convert::{mounts, update_info};
use crate::proto::snapshots::{
    self as pb,
    snapshots_server::{Snapshots, SnapshotsServer},
};

/// containerd sends List results in batches; 100 like its own snapshots service.
const LIST_BATCH: usize = 100;

/// The Snapshots gRPC service in front of a [`Snapshotter`]. The `snapshotter` field of the
/// requests (the plugin name) is ignored: one socket serves one snapshotter.
pub struct SnapshotsService<S> {
    inner: Arc<S>,
}

impl<S> SnapshotsService<S> {
    /// Serves `snapshotter`.
    pub fn new(snapshotter: Arc<S>) -> Self {
        Self { inner: snapshotter }
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
        let m = self.run(move |s| s.prepare(&r.key, &r.parent, r.labels)).await?;
        Ok(Response::new(pb::PrepareSnapshotResponse { mounts: mounts(m) }))
    }

    async fn view(
        &self,
        request: Request<pb::ViewSnapshotRequest>,
    ) -> Result<Response<pb::ViewSnapshotResponse>, Status> {
        let r = request.into_inner();
        let m = self.run(move |s| s.view(&r.key, &r.parent, r.labels)).await?;
        Ok(Response::new(pb::ViewSnapshotResponse { mounts: mounts(m) }))
    }

    async fn mounts(&self, request: Request<pb::MountsRequest>) -> Result<Response<pb::MountsResponse>, Status> {
        let r = request.into_inner();
        let m = self.run(move |s| s.mounts(&r.key)).await?;
        Ok(Response::new(pb::MountsResponse { mounts: mounts(m) }))
    }

    async fn commit(&self, request: Request<pb::CommitSnapshotRequest>) -> Result<Response<()>, Status> {
        let r = request.into_inner();
        self.run(move |s| s.commit(&r.name, &r.key, r.labels)).await?;
        Ok(Response::new(()))
    }

    async fn remove(&self, request: Request<pb::RemoveSnapshotRequest>) -> Result<Response<()>, Status> {
        let r = request.into_inner();
        self.run(move |s| s.remove(&r.key)).await?;
        Ok(Response::new(()))
    }

    async fn stat(
        &self,
        request: Request<pb::StatSnapshotRequest>,
    ) -> Result<Response<pb::StatSnapshotResponse>, Status> {
        let r = request.into_inner();
        let info = self.run(move |s| s.stat(&r.key)).await?;
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
        let info = self.run(move |s| s.update(info, &paths)).await?;
        Ok(Response::new(pb::UpdateSnapshotResponse {
            info: Some(info.into()),
        }))
    }

    type ListStream = ListStream;

    async fn list(&self, request: Request<pb::ListSnapshotsRequest>) -> Result<Response<Self::ListStream>, Status> {
        let r = request.into_inner();
        let infos = self.run(move |s| s.walk(&r.filters)).await?;
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
        let usage = self.run(move |s| s.usage(&r.key)).await?;
        Ok(Response::new(usage.into()))
    }

    async fn cleanup(&self, _request: Request<pb::CleanupRequest>) -> Result<Response<()>, Status> {
        self.run(|s| s.cleanup()).await?;
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
    let listen = |source| ServeError::Listen {
        path: socket.to_path_buf(),
        source,
    };
    if let Some(dir) = socket.parent() {
        fs::create_dir_all(dir).map_err(listen)?;
    }
    match fs::remove_file(socket) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(listen(e)),
    }
    let listener = UnixListener::bind(socket).map_err(listen)?;
    fs::set_permissions(socket, fs::Permissions::from_mode(0o600)).map_err(listen)?;
    tracing::info!(socket = %socket.display(), "serving the snapshotter");
    tonic::transport::Server::builder()
        .add_service(SnapshotsServer::new(SnapshotsService::new(snapshotter)))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await
        .map_err(ServeError::Server)
}

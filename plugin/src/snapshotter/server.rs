//! The Snapshots service over a domain [`Snapshotter`], and serving it on a unix socket.

use std::{
    collections::HashMap,
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
use kcache_core::snapshot::{Kind, Snapshotter};
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Request, Response, Status};

use super::convert::{mounts, update_info};
use crate::daemon::{
    gate::{classify, strip_own, Class, Gate, LABEL_TARGET, LABEL_VERIFIED, OWN_PREFIX},
    metrics::Metrics,
};
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
    gate: Option<Arc<Gate>>,
    metrics: Option<Arc<Metrics>>,
}

impl<S> SnapshotsService<S> {
    /// Serves `snapshotter` with no gate: every Prepare goes through.
    pub fn new(snapshotter: Arc<S>) -> Self {
        Self {
            inner: snapshotter,
            gate: None,
            metrics: None,
        }
    }

    /// Puts the verification gate in front of Prepare, View, Commit and Update.
    pub fn with_gate(mut self, gate: Arc<Gate>) -> Self {
        self.gate = Some(gate);
        self
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
            m.observe(
                "kcache_snapshot_operation_seconds",
                vec![("op", op.into())],
                start.elapsed(),
            );
            if let Err(status) = &result {
                let code = format!("{:?}", status.code());
                m.inc(
                    "kcache_snapshot_operation_errors_total",
                    vec![("op", op.into()), ("code", code)],
                    1,
                );
            }
        }
        result
    }

    /// The gate's decision on a Prepare or View; the labels to store.
    async fn admit(
        &self,
        op: &'static str,
        key: &str,
        parent: &str,
        mut labels: HashMap<String, String>,
    ) -> Result<HashMap<String, String>, Status> {
        let Some(gate) = &self.gate else {
            return Ok(labels);
        };
        strip_own(&mut labels);
        match classify(key, &labels) {
            Class::Pull { image, digest } => {
                let admitted = gate.verify_pull(key, &image, &digest).await?;
                if !admitted.labels.is_empty() && !parent.is_empty() {
                    // The parent chain is part of this verified image too (it was computed from
                    // the verified config): mark it, so layers shared with an earlier,
                    // unverified unpack count for containers of this image.
                    self.mark_verified(parent, &admitted.labels).await;
                }
                labels.extend(admitted.labels);
            }
            Class::UnlabeledUnpack => gate.unlabeled_unpack(key, labels.get(LABEL_TARGET).map(String::as_str))?,
            Class::Other if !parent.is_empty() && gate.chain_check_applies() => {
                let p = parent.to_owned();
                match self.run(move |s| s.stat(&p)).await {
                    Ok(info) => gate.check_chain(op, key, parent, &info.labels)?,
                    // Let the snapshotter report the missing parent the way containerd expects.
                    Err(status) if status.code() == tonic::Code::NotFound => {}
                    Err(status) => return Err(status),
                }
            }
            Class::Other => {}
        }
        Ok(labels)
    }

    async fn mark_verified(&self, parent: &str, add: &[(String, String)]) {
        let p = parent.to_owned();
        let add = add.to_vec();
        let result = self
            .run(move |s| {
                let info = s.stat(&p)?;
                if info.kind != Kind::Committed || info.labels.contains_key(LABEL_VERIFIED) {
                    return Ok(());
                }
                let paths: Vec<String> = add.iter().map(|(k, _)| format!("labels.{k}")).collect();
                let mut info = info;
                info.labels.extend(add);
                s.update(info, &paths).map(|_| ())
            })
            .await;
        if let Err(status) = result {
            tracing::warn!(parent, %status, "could not mark the parent chain verified");
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
        self.timed("prepare", async {
            let labels = self.admit("prepare", &r.key, &r.parent, r.labels).await?;
            let m = self.run(move |s| s.prepare(&r.key, &r.parent, labels)).await?;
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
            let labels = self.admit("view", &r.key, &r.parent, r.labels).await?;
            let m = self.run(move |s| s.view(&r.key, &r.parent, labels)).await?;
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
        let gated = self.gate.is_some();
        self.timed("commit", async {
            self.run(move |s| {
                let mut labels = r.labels;
                if gated {
                    // The verification travels from the active snapshot to the committed one,
                    // in the commit's own store transaction.
                    strip_own(&mut labels);
                    let active = s.stat(&r.key)?;
                    labels.extend(active.labels.into_iter().filter(|(k, _)| k.starts_with(OWN_PREFIX)));
                }
                s.commit(&r.name, &r.key, labels)
            })
            .await?;
            Ok(Response::new(()))
        })
        .await
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
        let mut info = update_info(r.info.ok_or_else(|| Status::invalid_argument("missing field info"))?);
        let paths = r.update_mask.map(|m| m.paths).unwrap_or_default();
        if self.gate.is_some() {
            if let Some(p) = paths.iter().find(|p| p.starts_with(&format!("labels.{OWN_PREFIX}"))) {
                return Err(Status::permission_denied(format!(
                    "kcache: label {} is set by kcache's verification gate only",
                    &p["labels.".len()..]
                )));
            }
            strip_own(&mut info.labels);
        }
        let gated = self.gate.is_some();
        let info = self
            .timed("update", async {
                self.run(move |s| {
                    if gated && (paths.is_empty() || paths.iter().any(|p| p == "labels")) {
                        // Replacing all labels keeps the gate's.
                        let current = s.stat(&info.name)?;
                        info.labels
                            .extend(current.labels.into_iter().filter(|(k, _)| k.starts_with(OWN_PREFIX)));
                    }
                    s.update(info, &paths)
                })
                .await
            })
            .await?;
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

/// Serves `service` (with its gate and metrics) like [`serve`].
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

//! Prometheus metrics for both modes (prometheus-client), served at `/metrics` with `/healthz`.

use std::{
    net::SocketAddr,
    sync::{atomic::AtomicU64, Arc},
    time::Instant,
};

use http_body_util::Full;
use hyper::{body::Bytes, Request, Response};
use prometheus_client::{
    encoding::{text::encode, EncodeLabelSet},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

/// Labels: the reconciled kind.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// `TrustPolicy`, `KernelCache`, `ClusterKernelCache`, `node`.
    pub kind: String,
}

/// Labels: the kind and the error's [`crate::Error::metric_label`].
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// As [`KindLabels::kind`].
    pub kind: String,
    /// The error kind.
    pub error: String,
}

/// Every metric.
pub struct Metrics {
    /// Reconciles (or agent syncs) run.
    pub reconciles: Family<KindLabels, Counter>,
    /// Failed ones, by error kind.
    pub failures: Family<ErrorLabels, Counter>,
    /// How long they took.
    pub duration: Family<KindLabels, Histogram>,
    /// Objects seen, by kind.
    pub objects: Family<KindLabels, Gauge>,
    /// Nodes counted stale in the last aggregation.
    pub stale_nodes: Gauge,
    /// Files the agent wrote or removed.
    pub files_changed: Counter<u64, AtomicU64>,
    registry: Registry,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("kcache_controller");
        let reconciles = Family::<KindLabels, Counter>::default();
        let failures = Family::<ErrorLabels, Counter>::default();
        let duration = Family::<KindLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0])
        });
        let objects = Family::<KindLabels, Gauge>::default();
        let stale_nodes = Gauge::default();
        let files_changed = Counter::default();
        registry.register("reconciles", "Reconciles run", reconciles.clone());
        registry.register(
            "reconcile_failures",
            "Reconciles failed, by error kind",
            failures.clone(),
        );
        registry.register("reconcile_duration_seconds", "Reconcile duration", duration.clone());
        registry.register("objects", "Objects watched, by kind", objects.clone());
        registry.register(
            "stale_nodes",
            "KernelCacheNodes not refreshed in time",
            stale_nodes.clone(),
        );
        registry.register(
            "files_changed",
            "Node files written or removed by the agent",
            files_changed.clone(),
        );
        Self {
            reconciles,
            failures,
            duration,
            objects,
            stale_nodes,
            files_changed,
            registry,
        }
    }
}

/// Records a reconcile's duration when dropped.
pub struct Timer<'a> {
    start: Instant,
    hist: &'a Family<KindLabels, Histogram>,
    kind: &'static str,
}

impl Drop for Timer<'_> {
    fn drop(&mut self) {
        let labels = KindLabels {
            kind: self.kind.to_string(),
        };
        self.hist
            .get_or_create(&labels)
            .observe(self.start.elapsed().as_secs_f64());
    }
}

impl Metrics {
    /// Counts a reconcile of `kind` and times it until the returned guard drops.
    pub fn reconcile(&self, kind: &'static str) -> Timer<'_> {
        self.reconciles.get_or_create(&KindLabels { kind: kind.into() }).inc();
        Timer {
            start: Instant::now(),
            hist: &self.duration,
            kind,
        }
    }

    /// Counts a failure.
    pub fn failure(&self, kind: &str, error: &str) {
        self.failures
            .get_or_create(&ErrorLabels {
                kind: kind.into(),
                error: error.into(),
            })
            .inc();
    }

    /// Sets the object gauge for `kind`.
    pub fn set_objects(&self, kind: &str, n: usize) {
        self.objects
            .get_or_create(&KindLabels { kind: kind.into() })
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// Serves `/metrics` and `/healthz` on `addr` until `shutdown` resolves.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving /metrics and /healthz");
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => r?,
            () = &mut shutdown => return Ok(()),
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let metrics = metrics.clone();
                async move {
                    let (code, body) = match req.uri().path() {
                        "/metrics" => (200, metrics.render()),
                        "/healthz" => (200, "ok\n".to_string()),
                        _ => (404, "not found\n".to_string()),
                    };
                    Response::builder()
                        .status(code)
                        .header("content-type", "text/plain; version=0.0.4; charset=utf-8")
                        .body(Full::new(Bytes::from(body)))
                }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, svc)
                .await
            {
                tracing::debug!(error = %e, "metrics connection");
            }
        });
    }
}

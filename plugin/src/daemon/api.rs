//! kcached's side of the kcache API: HTTP/1.1 with JSON bodies on a unix socket (0600, root
//! only). The requests, answers and the typed client are [`kcache_core::api`]'s (re-exported
//! here); this module serves them.
//!
//! The same verifier (and so the same verdict cache) serves the snapshotter's gate and the API,
//! so the containerd 2.x verifier and `kcache verify --daemon` share verdicts with pulls.
//! `curl --unix-socket /run/kcache/kcache.sock http://kcache/v1/policy` works too.

use std::{
    convert::Infallible,
    future::Future,
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use http_body_util::{BodyExt, Full, Limited};
use hyper::{body::Bytes, body::Incoming, Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
pub use kcache_core::api::*;
use kcache_core::{cache::store::StoreLayout, registry::Reference, verifier::Verifier};
use serde::Serialize;
use tokio::net::{TcpListener, UnixListener};

use super::{metrics::Metrics, policy_store::PolicyStore};

/// Largest request body the API reads.
const MAX_BODY: usize = 64 * 1024;
/// What the API serves from.
pub struct ApiState {
    /// The policy in force.
    pub policy: Arc<PolicyStore>,
    /// The shared verifier (and its verdict cache).
    pub verifier: Arc<Verifier>,
    /// The daemon's metrics.
    pub metrics: Arc<Metrics>,
    /// The cache store.
    pub layout: StoreLayout,
    /// The gate's settings.
    pub gate: GateStatus,
    /// The registry hosts configuration.
    pub registry: RegistryStatus,
}

type Body = Full<Bytes>;

fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    let body = serde_json::to_vec(value).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}").into_bytes());
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_default()
}

fn error(status: StatusCode, msg: impl Into<String>) -> Response<Body> {
    json(status, &ErrorBody { error: msg.into() })
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_default()
}

async fn handle(state: Arc<ApiState>, req: Request<Incoming>, metrics_only: bool) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    let resp = match (&method, path.as_str()) {
        (&Method::GET, path::METRICS) => text(StatusCode::OK, super::metrics::CONTENT_TYPE, state.metrics.render()),
        _ if metrics_only => error(StatusCode::NOT_FOUND, "only /metrics is served here"),
        (&Method::GET, path::HEALTH) => text(StatusCode::OK, "text/plain", "ok\n".into()),
        (&Method::GET, path::POLICY) => json(StatusCode::OK, &state.policy.status()),
        (&Method::GET, path::GATE) => json(StatusCode::OK, &state.gate),
        (&Method::GET, path::REGISTRY) => json(StatusCode::OK, &state.registry),
        (&Method::GET, path::CACHES) => {
            let layout = state.layout.clone();
            match tokio::task::spawn_blocking(move || layout.read_state()).await {
                Ok(Ok(caches)) => json(StatusCode::OK, &caches),
                Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
                Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
            }
        }
        (&Method::POST, path::VERIFY) => verify(&state, req).await,
        (_, p) if path::ALL.contains(&p) => error(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{method} is not allowed on {path}"),
        ),
        _ => error(StatusCode::NOT_FOUND, format!("no such endpoint: {path}")),
    };
    let known = path::ALL.contains(&path.as_str());
    state
        .metrics
        .api_request(if known { &path } else { "other" }, resp.status().as_u16());
    resp
}

async fn verify(state: &ApiState, req: Request<Incoming>) -> Response<Body> {
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("cannot read the request body: {e}")),
    };
    let r: VerifyRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("bad verify request: {e}")),
    };
    let loaded = state.policy.current();
    let start = Instant::now();
    let v = match &r.digest {
        Some(digest) => {
            let reference = match Reference::parse(&r.image) {
                Ok(x) => x,
                Err(e) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        format!("bad image reference {:?}: {e}", r.image),
                    )
                }
            };
            state.verifier.verify_digest(&loaded.policy, &reference, digest).await
        }
        None => match state.verifier.verify(&loaded.policy, &r.image).await {
            Ok(v) => v,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("bad image reference {:?}: {e}", r.image),
                )
            }
        },
    };
    state
        .metrics
        .verdict(v.decision, v.rule.as_deref(), v.cached, start.elapsed());
    tracing::info!(image = %v.image, digest = ?v.digest.as_ref().map(|d| d.to_string()), rule = ?v.rule,
        decision = %v.decision, cached = v.cached, "api verify");
    json(StatusCode::OK, &v)
}

/// Serves the API on `socket` until `shutdown` completes.
pub async fn serve(
    state: Arc<ApiState>,
    socket: &Path,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let listener = crate::snapshotter::bind_unix(socket)?;
    tracing::info!(socket = %socket.display(), "serving the kcache API");
    serve_unix(state, listener, shutdown).await
}

async fn serve_unix(
    state: Arc<ApiState>,
    listener: UnixListener,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    accept_loop(state, false, shutdown, || async {
        listener.accept().await.map(|(s, _)| s)
    })
    .await
}

/// Serves `/metrics` only, on a loopback TCP address.
pub async fn serve_metrics(
    state: Arc<ApiState>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    accept_loop(state, true, shutdown, || async {
        listener.accept().await.map(|(s, _)| s)
    })
    .await
}

async fn accept_loop<I, Fut>(
    state: Arc<ApiState>,
    metrics_only: bool,
    shutdown: impl Future<Output = ()> + Send,
    mut accept: impl FnMut() -> Fut,
) -> std::io::Result<()>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    Fut: Future<Output = std::io::Result<I>>,
{
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            _ = &mut shutdown => return Ok(()),
            accepted = accept() => match accepted {
                Ok(stream) => stream,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(%e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        spawn_conn(Arc::clone(&state), TokioIo::new(stream), metrics_only);
    }
}

fn spawn_conn<I>(state: Arc<ApiState>, io: TokioIo<I>, metrics_only: bool)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let service = hyper::service::service_fn(move |req| {
            let state = Arc::clone(&state);
            async move { Ok::<_, Infallible>(handle(state, req, metrics_only).await) }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(Duration::from_secs(10))
            .serve_connection(io, service);
        if let Err(e) = conn.await {
            tracing::debug!(%e, "API connection ended with an error");
        }
    });
}

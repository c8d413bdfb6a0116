//! The kcache API: HTTP/1.1 with JSON bodies on a unix socket (0600, root only).
//!
//! | request | answer |
//! |---|---|
//! | `POST /v1/verify` `{"image": REF, "digest": "sha256:…"\|null}` | the verdict, as `kcache verify --output json` prints it |
//! | `GET /v1/policy` | [`PolicyStatus`] |
//! | `GET /v1/caches` | the cache store's `state.json` ([`NodeCaches`]) |
//! | `GET /v1/gate` | the snapshotter gate's settings ([`GateStatus`]) |
//! | `GET /v1/health` | `ok` |
//! | `GET /metrics` | Prometheus text |
//!
//! The same verifier (and so the same verdict cache) serves the snapshotter's gate and the API,
//! so the containerd 2.x verifier and `kcache verify --daemon` share verdicts with pulls.
//! `curl --unix-socket /run/kcache/kcache.sock http://kcache/v1/policy` works too.

use std::{
    convert::Infallible,
    future::Future,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use http_body_util::{BodyExt, Full, Limited};
use hyper::{body::Bytes, body::Incoming, Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use kcache_core::{
    cache::store::{NodeCaches, StoreLayout},
    digest::Digest,
    registry::Reference,
    verifier::Verifier,
};
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, UnixListener, UnixStream};

use super::{
    metrics::Metrics,
    policy_store::{PolicyStatus, PolicyStore},
};

/// Largest request body the API reads.
const MAX_BODY: usize = 64 * 1024;
/// Largest response body the client reads.
const MAX_RESPONSE: usize = 4 * 1024 * 1024;

/// A verify request.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyRequest {
    /// The image reference (gives the repository, and the tag for the signed-index rule).
    pub image: String,
    /// Verify exactly this manifest digest; `None`: resolve `image` first.
    #[serde(default)]
    pub digest: Option<String>,
}

/// A verdict as the API returns it (the JSON of `kcache_core::verifier::ImageVerdict`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VerifyResponse {
    /// The image as given.
    pub image: String,
    /// The digest verified.
    pub digest: Option<String>,
    /// The deciding rule; `None` for the policy default.
    pub rule: Option<String>,
    /// Whether the image met its rule.
    pub verified: bool,
    /// `allow`, `deny`, `allow-with-warning` or `unchecked`.
    pub decision: String,
    /// Why.
    pub reason: String,
    /// Who signed.
    #[serde(default)]
    pub signer: Option<serde_json::Value>,
    /// Rekor log index.
    #[serde(default)]
    pub tlog_index: Option<u64>,
    /// `cosign-v2` or `cosign-v3`.
    #[serde(default)]
    pub format: Option<String>,
    /// The signed index the manifest was allowed through.
    #[serde(default)]
    pub via_index: Option<String>,
    /// Served from the verdict cache.
    #[serde(default)]
    pub cached: bool,
    /// Time spent in the daemon.
    #[serde(default)]
    pub elapsed_ms: f64,
}

impl VerifyResponse {
    /// Whether the image may be used (the decision after the policy mode).
    pub fn permits(&self) -> bool {
        matches!(self.decision.as_str(), "allow" | "allow-with-warning" | "unchecked")
    }

    /// One line naming the image, the digest, the rule and the reason.
    pub fn summary(&self) -> String {
        let what = match self.decision.as_str() {
            "allow" => "allowed",
            "deny" => "denied",
            "allow-with-warning" => "denied (warn mode: allowed)",
            _ => "not verified (mode off)",
        };
        format!(
            "{what}: image {} digest {} rule {}: {}",
            self.image,
            self.digest.as_deref().unwrap_or("<unresolved>"),
            self.rule.as_deref().unwrap_or("<default>"),
            self.reason
        )
    }
}

/// The snapshotter gate's settings, for `kcache doctor`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GateStatus {
    /// Whether container rootfs snapshots need a verified parent chain (enforce mode).
    pub chain_check: bool,
    /// `allow` or `deny`: unpacks without CRI image labels.
    pub unlabeled: String,
}

#[derive(Serialize, Deserialize)]
struct ErrorBody {
    error: String,
}

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
        (&Method::GET, "/metrics") => text(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            state.metrics.render(),
        ),
        _ if metrics_only => error(StatusCode::NOT_FOUND, "only /metrics is served here"),
        (&Method::GET, "/v1/health") => text(StatusCode::OK, "text/plain", "ok\n".into()),
        (&Method::GET, "/v1/policy") => json(StatusCode::OK, &state.policy.status()),
        (&Method::GET, "/v1/gate") => json(StatusCode::OK, &state.gate),
        (&Method::GET, "/v1/caches") => {
            let layout = state.layout.clone();
            match tokio::task::spawn_blocking(move || layout.read_state()).await {
                Ok(Ok(caches)) => json(StatusCode::OK, &caches),
                Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
                Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
            }
        }
        (&Method::POST, "/v1/verify") => verify(&state, req).await,
        (_, "/v1/verify" | "/v1/policy" | "/v1/gate" | "/v1/caches" | "/v1/health" | "/metrics") => error(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{method} is not allowed on {path}"),
        ),
        _ => error(StatusCode::NOT_FOUND, format!("no such endpoint: {path}")),
    };
    let known = matches!(
        path.as_str(),
        "/v1/verify" | "/v1/policy" | "/v1/gate" | "/v1/caches" | "/v1/health" | "/metrics"
    );
    state.metrics.inc(
        "kcache_api_requests_total",
        vec![
            ("path", if known { path } else { "other".into() }),
            ("code", resp.status().as_u16().to_string()),
        ],
        1,
    );
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
        Some(d) => {
            let digest = match Digest::parse(d) {
                Ok(d) => d,
                Err(e) => return error(StatusCode::BAD_REQUEST, format!("bad digest {d:?}: {e}")),
            };
            let reference = match Reference::parse(&r.image) {
                Ok(x) => x,
                Err(e) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        format!("bad image reference {:?}: {e}", r.image),
                    )
                }
            };
            state.verifier.verify_digest(&loaded.policy, &reference, &digest).await
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
    let decision = serde_json::to_value(&v)
        .ok()
        .and_then(|j| j.get("decision").and_then(|d| d.as_str()).map(str::to_owned))
        .unwrap_or_default();
    let decision: &'static str = match decision.as_str() {
        "allow" => "allow",
        "deny" => "deny",
        "allow-with-warning" => "allow-with-warning",
        _ => "unchecked",
    };
    state
        .metrics
        .verdict(decision, v.rule.as_deref(), v.cached, start.elapsed());
    tracing::info!(image = %v.image, digest = ?v.digest.as_ref().map(|d| d.to_string()), rule = ?v.rule,
        decision, cached = v.cached, "api verify");
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

/// Why an API call failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// kcached is not listening (not running, or another socket path).
    #[error("kcached is not reachable at {}: {source}", socket.display())]
    Unreachable {
        /// The socket.
        socket: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// No answer in time.
    #[error("kcached did not answer within {0:?}")]
    Timeout(Duration),
    /// HTTP failed.
    #[error("kcache API: {0}")]
    Http(String),
    /// kcached refused the request.
    #[error("kcached refused the request ({status}): {message}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// kcached's message.
        message: String,
    },
    /// The answer is not what kcached sends.
    #[error("kcached sent an unexpected answer: {0}")]
    Decode(String),
}

/// A client of the kcache API.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
    timeout: Duration,
}

impl Client {
    /// A client for the API at `socket`, with a 30 s timeout per call.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
            timeout: Duration::from_secs(30),
        }
    }

    /// Sets the timeout per call (connect, request and response together).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Verifies `image` (exactly `digest`, when given).
    pub async fn verify(&self, image: &str, digest: Option<&Digest>) -> Result<VerifyResponse, ApiError> {
        let body = serde_json::to_vec(&VerifyRequest {
            image: image.to_owned(),
            digest: digest.map(|d| d.to_string()),
        })
        .map_err(|e| ApiError::Http(e.to_string()))?;
        self.call_json(Method::POST, "/v1/verify", Some(body)).await
    }

    /// The policy in force.
    pub async fn policy(&self) -> Result<PolicyStatus, ApiError> {
        self.call_json(Method::GET, "/v1/policy", None).await
    }

    /// The snapshotter gate's settings.
    pub async fn gate(&self) -> Result<GateStatus, ApiError> {
        self.call_json(Method::GET, "/v1/gate", None).await
    }

    /// The node's approved caches.
    pub async fn caches(&self) -> Result<NodeCaches, ApiError> {
        self.call_json(Method::GET, "/v1/caches", None).await
    }

    /// Whether kcached answers.
    pub async fn health(&self) -> Result<(), ApiError> {
        self.call(Method::GET, "/v1/health", None).await.map(|_| ())
    }

    /// The metrics text.
    pub async fn metrics(&self) -> Result<String, ApiError> {
        let body = self.call(Method::GET, "/metrics", None).await?;
        String::from_utf8(body.to_vec()).map_err(|e| ApiError::Decode(e.to_string()))
    }

    async fn call_json<T: for<'de> Deserialize<'de>>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, ApiError> {
        let bytes = self.call(method, path, body).await?;
        serde_json::from_slice(&bytes).map_err(|e| ApiError::Decode(e.to_string()))
    }

    async fn call(&self, method: Method, path: &str, body: Option<Vec<u8>>) -> Result<Bytes, ApiError> {
        match tokio::time::timeout(self.timeout, self.call_inner(method, path, body)).await {
            Ok(r) => r,
            Err(_) => Err(ApiError::Timeout(self.timeout)),
        }
    }

    async fn call_inner(&self, method: Method, path: &str, body: Option<Vec<u8>>) -> Result<Bytes, ApiError> {
        let stream = UnixStream::connect(&self.socket)
            .await
            .map_err(|source| ApiError::Unreachable {
                socket: self.socket.clone(),
                source,
            })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ApiError::Http(e.to_string()))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut req = Request::builder().method(method).uri(path).header("host", "kcache");
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ApiError::Http(e.to_string()))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| ApiError::Http(e.to_string()))?;
        let status = resp.status();
        let bytes = Limited::new(resp.into_body(), MAX_RESPONSE)
            .collect()
            .await
            .map_err(|e| ApiError::Http(e.to_string()))?
            .to_bytes();
        if !status.is_success() {
            let message = serde_json::from_slice::<ErrorBody>(&bytes)
                .map(|e| e.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
            return Err(ApiError::Refused {
                status: status.as_u16(),
                message,
            });
        }
        Ok(bytes)
    }
}

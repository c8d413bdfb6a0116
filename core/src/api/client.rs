//! A typed client of kcached's API over its unix socket (feature `api-client`).

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use http_body_util::{BodyExt, Full, Limited};
use hyper::{body::Bytes, Method, Request};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use tokio::net::UnixStream;

use super::{path, ErrorBody, GateStatus, ImageVerdict, NodeCaches, PolicyStatus, RegistryStatus, VerifyRequest};
use crate::digest::Digest;

/// Largest response body the client reads.
const MAX_RESPONSE: usize = 4 * 1024 * 1024;

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

impl ApiError {
    /// Whether kcached answered and refused this request itself (a 4xx): asking again, or
    /// deciding elsewhere with the same inputs, would be refused the same way.
    pub fn is_refusal(&self) -> bool {
        matches!(self, Self::Refused { status, .. } if (400..500).contains(status))
    }
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

    /// The socket this client talks to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Verifies `image` (exactly `digest`, when given).
    pub async fn verify(&self, image: &str, digest: Option<&Digest>) -> Result<ImageVerdict, ApiError> {
        let body = serde_json::to_vec(&VerifyRequest {
            image: image.to_owned(),
            digest: digest.cloned(),
        })
        .map_err(|e| ApiError::Http(e.to_string()))?;
        self.call_json(Method::POST, path::VERIFY, Some(body)).await
    }

    /// The policy in force.
    pub async fn policy(&self) -> Result<PolicyStatus, ApiError> {
        self.call_json(Method::GET, path::POLICY, None).await
    }

    /// The snapshotter gate's settings.
    pub async fn gate(&self) -> Result<GateStatus, ApiError> {
        self.call_json(Method::GET, path::GATE, None).await
    }

    /// Where kcached looks for registry hosts.
    pub async fn registry(&self) -> Result<RegistryStatus, ApiError> {
        self.call_json(Method::GET, path::REGISTRY, None).await
    }

    /// The node's approved caches.
    pub async fn caches(&self) -> Result<NodeCaches, ApiError> {
        self.call_json(Method::GET, path::CACHES, None).await
    }

    /// Whether kcached answers.
    pub async fn health(&self) -> Result<(), ApiError> {
        self.call(Method::GET, path::HEALTH, None).await.map(|_| ())
    }

    /// The metrics text.
    pub async fn metrics(&self) -> Result<String, ApiError> {
        let body = self.call(Method::GET, path::METRICS, None).await?;
        String::from_utf8(body.to_vec()).map_err(|e| ApiError::Decode(e.to_string()))
    }

    async fn call_json<T: DeserializeOwned>(
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

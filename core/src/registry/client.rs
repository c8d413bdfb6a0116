//! A small OCI distribution client: resolve, fetch (bounded, digest-checked), referrers, push.
//! Every read has a size limit and every request a timeout, so a hostile or dead registry can
//! cost at most `timeout` and `max_*_bytes`, never the node's memory.

use std::{
    collections::HashMap,
    future::Future,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use reqwest::{header, Method, StatusCode};

use super::{
    auth::AuthFile,
    hosts::{self, Capabilities, Endpoint, TlsSettings},
    Reference,
};
use crate::digest::Digest;

/// Every manifest media type kcache reads (OCI and Docker v2, images and indexes).
pub const ACCEPT_MANIFESTS: &str = "application/vnd.oci.image.manifest.v1+json, \
application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.v2+json, \
application/vnd.docker.distribution.manifest.list.v2+json";

/// Registry client settings.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// Registries (`host[:port]`) whose default server is plain HTTP; every other registry's
    /// is HTTPS. `http://` hosts in `hosts.toml` are plain HTTP too.
    pub insecure: Vec<String>,
    /// containerd's `config_path`: directories of `<host>/hosts.toml` (mirrors, CAs, client
    /// certificates), read as containerd reads them; see [`super::hosts`].
    pub config_path: Vec<PathBuf>,
    /// A docker-style `config.json` with `auths`.
    pub auth_file: Option<PathBuf>,
    /// Per-request timeout (connect + whole response).
    pub timeout: Duration,
    /// Largest manifest read.
    pub max_manifest_bytes: usize,
    /// Largest blob read (signature payloads, bundles).
    pub max_blob_bytes: usize,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            insecure: Vec::new(),
            config_path: Vec::new(),
            auth_file: None,
            timeout: Duration::from_secs(10),
            max_manifest_bytes: 4 << 20,
            max_blob_bytes: 32 << 20,
        }
    }
}

/// Splits a containerd-style `config_path` (`/etc/containerd/certs.d:/etc/docker/certs.d`).
pub fn split_config_path(s: &str) -> Vec<PathBuf> {
    s.split(':')
        .filter(|p| !p.trim().is_empty())
        .map(PathBuf::from)
        .collect()
}

/// A registry failure.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// Connection refused, DNS failure, TLS failure.
    #[error("registry unreachable at {url}: {reason}")]
    Unreachable {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// No answer within the timeout.
    #[error("registry timed out after {timeout:?} at {url}")]
    Timeout {
        /// The URL.
        url: String,
        /// The timeout.
        timeout: Duration,
    },
    /// 404.
    #[error("not found: {what}")]
    NotFound {
        /// What was asked for.
        what: String,
    },
    /// 401/403 after authenticating.
    #[error("unauthorized at {url} (status {status})")]
    Unauthorized {
        /// The URL.
        url: String,
        /// HTTP status.
        status: u16,
    },
    /// Response larger than allowed.
    #[error("response from {url} exceeds the {limit}-byte limit")]
    TooLarge {
        /// The URL.
        url: String,
        /// The limit.
        limit: usize,
    },
    /// Content does not hash to the digest asked for.
    #[error("content at {url} does not match digest {expected} (got {actual})")]
    DigestMismatch {
        /// The URL.
        url: String,
        /// Asked for.
        expected: String,
        /// Computed.
        actual: String,
    },
    /// A blob's size is not the size its descriptor says.
    #[error("registry protocol error at {url}: blob is {actual} bytes, its descriptor says {expected}")]
    SizeMismatch {
        /// The URL.
        url: String,
        /// What the descriptor says.
        expected: u64,
        /// What was read.
        actual: u64,
    },
    /// Anything else the registry did wrong.
    #[error("registry protocol error at {url}: {reason}")]
    Protocol {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// Bad local configuration (auth file, hosts.toml, CA or client certificate files).
    #[error("registry configuration: {0}")]
    Config(String),
}

impl RegistryError {
    /// Whether the content itself failed a check (wrong digest, wrong size, too large): the
    /// registry served something other than what was asked for, as opposed to not serving.
    pub fn is_bad_content(&self) -> bool {
        matches!(
            self,
            Self::DigestMismatch { .. } | Self::SizeMismatch { .. } | Self::TooLarge { .. }
        )
    }
}

type Result<T> = std::result::Result<T, RegistryError>;

/// A fetched manifest: exact bytes, their digest, and the media type.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// `Content-Type` (or `mediaType` in the body).
    pub media_type: String,
    /// sha256 of `bytes`.
    pub digest: Digest,
    /// Exact bytes.
    pub bytes: Vec<u8>,
}

/// What a tag or digest resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// Media type.
    pub media_type: String,
    /// Digest.
    pub digest: Digest,
    /// Size in bytes.
    pub size: u64,
}

/// A bearer token and when it stops being used.
struct Token {
    value: String,
    expires: Instant,
}

/// The TLS client of one host configuration, with the modification times of the files it was
/// built from: a CA or client certificate replaced on disk builds a new client.
struct TlsClient {
    stamps: Vec<Option<SystemTime>>,
    client: reqwest::Client,
}

/// The client.
pub struct Client {
    /// For `http://` URLs: no TLS roots are loaded, and a redirect to `https://` is not
    /// followed here but handed to a TLS client.
    plain: reqwest::Client,
    /// For `https://` URLs, one per distinct TLS setting (system roots + the host's CAs and
    /// client certificate), built on first use: loading the system roots costs milliseconds a
    /// node pulling from a plain-HTTP mirror never needs (issue 12).
    tls: Mutex<HashMap<TlsSettings, Arc<TlsClient>>>,
    cfg: RegistryConfig,
    auth: AuthFile,
    /// Bearer tokens by (host asked, scope).
    tokens: Mutex<HashMap<(String, String), Token>>,
}

/// How long a token lives when the issuer does not say (the token spec's default).
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);
/// A token this close to its expiry is not used any more.
const TOKEN_MARGIN: Duration = Duration::from_secs(5);

impl Client {
    /// Builds a client; reads the auth file if one is configured.
    pub fn new(cfg: RegistryConfig) -> Result<Self> {
        let auth = match &cfg.auth_file {
            Some(p) => AuthFile::load(p).map_err(RegistryError::Config)?,
            None => AuthFile::default(),
        };
        let plain = Self::builder(&cfg)
            .tls_built_in_root_certs(false)
            .redirect(reqwest::redirect::Policy::custom(|a| {
                if a.url().scheme() != "http" {
                    a.stop()
                } else if a.previous().len() >= MAX_REDIRECTS {
                    a.error("too many redirects")
                } else {
                    a.follow()
                }
            }))
            .build()
            .map_err(|e| RegistryError::Config(e.to_string()))?;
        Ok(Self {
            plain,
            tls: Mutex::new(HashMap::new()),
            cfg,
            auth,
            tokens: Mutex::new(HashMap::new()),
        })
    }

    fn builder(cfg: &RegistryConfig) -> reqwest::ClientBuilder {
        reqwest::Client::builder()
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout)
            .user_agent(concat!("kcache/", env!("CARGO_PKG_VERSION")))
    }

    /// The client for `url`: plain for `http://`, else the TLS one for `tls` (built now if need be).
    fn http_for(&self, url: &str, tls: &TlsSettings) -> Result<reqwest::Client> {
        if url.starts_with("http://") {
            return Ok(self.plain.clone());
        }
        let stamps: Vec<Option<SystemTime>> = tls
            .ca
            .iter()
            .chain(tls.client.iter().flat_map(|(c, k)| std::iter::once(c).chain(k)))
            .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
            .collect();
        let mut clients = self.tls.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = clients.get(tls).filter(|c| c.stamps == stamps) {
            return Ok(c.client.clone());
        }
        let client = self.build_tls(tls)?;
        clients.insert(
            tls.clone(),
            Arc::new(TlsClient {
                stamps,
                client: client.clone(),
            }),
        );
        Ok(client)
    }

    fn build_tls(&self, tls: &TlsSettings) -> Result<reqwest::Client> {
        let read = |p: &PathBuf, what: &str| {
            std::fs::read(p).map_err(|e| RegistryError::Config(format!("cannot read {what} {}: {e}", p.display())))
        };
        let mut b = Self::builder(&self.cfg).redirect(reqwest::redirect::Policy::custom(|a| {
            if a.url().scheme() != "https" {
                a.error("redirect from HTTPS to plain HTTP refused")
            } else if a.previous().len() >= MAX_REDIRECTS {
                a.error("too many redirects")
            } else {
                a.follow()
            }
        }));
        for p in &tls.ca {
            let pem = read(p, "CA file")?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| RegistryError::Config(format!("CA file {}: {e}", p.display())))?;
            if certs.is_empty() {
                return Err(RegistryError::Config(format!(
                    "CA file {} holds no PEM certificate",
                    p.display()
                )));
            }
            for c in certs {
                b = b.add_root_certificate(c);
            }
        }
        // rustls presents one client certificate; containerd lets Go pick among several.
        if let Some((cert, key)) = tls.client.first() {
            let mut pem = read(cert, "client certificate")?;
            if let Some(key) = key {
                pem.push(b'\n');
                pem.extend(read(key, "client key")?);
            }
            let id = reqwest::Identity::from_pem(&pem)
                .map_err(|e| RegistryError::Config(format!("client certificate {}: {e}", cert.display())))?;
            b = b.identity(id);
        }
        if tls.skip_verify {
            b = b.danger_accept_invalid_certs(true);
        }
        b.build().map_err(|e| RegistryError::Config(e.to_string()))
    }

    /// A plain-HTTP registry that redirects to HTTPS (blob storage behind a CDN): the plain
    /// client stopped there, the TLS client follows, without the registry's credentials.
    async fn follow_to_tls(&self, resp: reqwest::Response, method: &Method, url: &str) -> Result<reqwest::Response> {
        let next = resp
            .headers()
            .get(header::LOCATION)
            .and_then(|l| l.to_str().ok())
            .and_then(|l| resp.url().join(l).ok())
            .filter(|u| u.scheme() == "https");
        match next {
            Some(next) if resp.status().is_redirection() => self
                .http_for(next.as_str(), &TlsSettings::default())?
                .request(method.clone(), next.clone())
                .send()
                .await
                .map_err(|e| self.net_err(url, None, e)),
            _ => Ok(resp),
        }
    }

    /// The settings.
    pub fn config(&self) -> &RegistryConfig {
        &self.cfg
    }

    /// The hosts to ask for `registry` that can do `cap`, in containerd's order.
    pub fn endpoints(&self, registry: &str, cap: Capabilities) -> Result<Vec<Endpoint>> {
        let all = hosts::endpoints(&self.cfg.config_path, registry, &self.cfg.insecure)
            .map_err(|e| RegistryError::Config(e.to_string()))?;
        let eps: Vec<Endpoint> = all.into_iter().filter(|e| e.capabilities.contains(cap)).collect();
        if eps.is_empty() {
            return Err(RegistryError::Config(format!(
                "no host configured for {registry} may {cap} (hosts.toml capabilities)"
            )));
        }
        Ok(eps)
    }

    /// Runs `op` against each host for `r.registry` that can do `cap`, in order, until one
    /// answers: containerd's fallback from mirrors to the upstream. The error reported is the
    /// first that was not "not found" (a mirror that is down matters more than one that lacks
    /// the content), else the last.
    async fn each_host<T, F, Fut>(&self, r: &Reference, cap: Capabilities, mut op: F) -> Result<T>
    where
        F: FnMut(Endpoint) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let mut first_err: Option<RegistryError> = None;
        let mut last_not_found = None;
        for ep in self.endpoints(&r.registry, cap)? {
            let host = ep.host.clone();
            match op(ep).await {
                Ok(v) => return Ok(v),
                Err(e @ RegistryError::NotFound { .. }) => last_not_found = Some(e),
                Err(e) => {
                    tracing::debug!(registry = %r.registry, %host, error = %e, "host failed; trying the next");
                    first_err.get_or_insert(e);
                }
            }
        }
        Err(first_err
            .or(last_not_found)
            .unwrap_or_else(|| RegistryError::NotFound { what: r.to_string() }))
    }

    fn net_err(&self, url: &str, ep: Option<&Endpoint>, e: reqwest::Error) -> RegistryError {
        if e.is_timeout() {
            return RegistryError::Timeout {
                url: url.to_string(),
                timeout: self.cfg.timeout,
            };
        }
        let mut reason = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            reason = format!("{reason}: {s}");
            src = s.source();
        }
        if let Some(ep) = ep.filter(|ep| ep.scheme == "https") {
            let lower = reason.to_ascii_lowercase();
            if lower.contains("certificate") || lower.contains("tls") || lower.contains("handshake") {
                reason = format!(
                    "TLS with {} failed: {reason}{}",
                    ep.host,
                    if ep.tls.ca.is_empty() && !ep.tls.skip_verify {
                        format!(
                            " (only the system's roots are trusted for {}: name its CA with `ca = ...` in its hosts.toml under the registry config_path)",
                            ep.host
                        )
                    } else {
                        String::new()
                    }
                );
            }
        }
        RegistryError::Unreachable {
            url: url.to_string(),
            reason,
        }
    }

    /// Basic credentials for `ep`: those of the host itself, and for the upstream server those
    /// filed under the registry's name too. A mirror never gets the upstream's credentials.
    fn credentials(&self, r: &Reference, ep: &Endpoint) -> Option<(&str, &str)> {
        self.auth.basic(&ep.host).or_else(|| {
            if ep.upstream {
                self.auth.basic(&r.registry)
            } else {
                None
            }
        })
    }

    /// Sends a request, authenticating (basic, or bearer via the challenge) as needed.
    #[allow(clippy::too_many_arguments)]
    async fn send(
        &self,
        ep: &Endpoint,
        r: &Reference,
        push: bool,
        method: Method,
        url: &str,
        headers: &[(header::HeaderName, String)],
        body: Option<Vec<u8>>,
    ) -> Result<reqwest::Response> {
        self.send_with(ep, r, push, method, url, headers, body, None).await
    }

    #[allow(clippy::too_many_arguments)]
    async fn send_with(
        &self,
        ep: &Endpoint,
        r: &Reference,
        push: bool,
        method: Method,
        url: &str,
        headers: &[(header::HeaderName, String)],
        body: Option<Vec<u8>>,
        timeout: Option<Duration>,
    ) -> Result<reqwest::Response> {
        let scope = format!(
            "repository:{}:{}",
            r.repository,
            if push { "pull,push" } else { "pull" }
        );
        let key = (ep.host.clone(), scope.clone());
        let http = self.http_for(url, &ep.tls)?;
        let mut refreshed = false;
        loop {
            let mut req = http.request(method.clone(), url);
            if let Some(t) = timeout {
                req = req.timeout(t);
            }
            for (k, v) in &ep.headers {
                req = req.header(k.as_str(), v.as_str());
            }
            for (k, v) in headers {
                req = req.header(k, v);
            }
            if let Some(b) = &body {
                req = req.body(b.clone());
            }
            let token = {
                let mut tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
                match tokens.get(&key) {
                    Some(t) if t.expires > Instant::now() => Some(t.value.clone()),
                    Some(_) => {
                        tokens.remove(&key);
                        None
                    }
                    None => None,
                }
            };
            let had_token = token.is_some();
            if let Some(t) = token {
                req = req.bearer_auth(t);
            } else if let Some((u, p)) = self.credentials(r, ep) {
                req = req.basic_auth(u, Some(p));
            }
            let mut resp = req.send().await.map_err(|e| self.net_err(url, Some(ep), e))?;
            if resp.status().is_redirection() {
                resp = self.follow_to_tls(resp, &method, url).await?;
            }
            // One fresh token per request: a registry that refuses it again gets its 401 back
            // (no loop), and so does one that asks for something else than a bearer token.
            if resp.status() != StatusCode::UNAUTHORIZED || refreshed {
                return Ok(resp);
            }
            let challenge = resp
                .headers()
                .get(header::WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            if !challenge.to_ascii_lowercase().starts_with("bearer ") {
                return Ok(resp);
            }
            if had_token {
                tracing::debug!(host = %ep.host, %scope, "token refused; fetching a new one");
            }
            let token = self.fetch_token(r, ep, &challenge, &scope).await?;
            self.tokens
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(key.clone(), token);
            refreshed = true;
        }
    }

    async fn fetch_token(&self, r: &Reference, ep: &Endpoint, challenge: &str, scope: &str) -> Result<Token> {
        let params = parse_challenge(&challenge[7..]);
        let realm = params.get("realm").ok_or_else(|| RegistryError::Protocol {
            url: ep.host.clone(),
            reason: "bearer challenge without realm".into(),
        })?;
        let realm_url = reqwest::Url::parse(realm).map_err(|e| RegistryError::Protocol {
            url: ep.host.clone(),
            reason: format!("bearer realm {realm:?} is not a URL: {e}"),
        })?;
        // The realm gets the host's credentials over HTTPS, or on the host itself; never in the
        // clear to another host (a registry cannot send them to a listener of its choosing).
        let same_host = realm_url
            .host_str()
            .zip(realm_url.port_or_known_default())
            .map(|(h, p)| format!("{h}:{p}"))
            == ep_host_port(ep);
        let creds = if realm_url.scheme() == "https" || same_host {
            self.credentials(r, ep)
        } else {
            tracing::warn!(realm = %realm, host = %ep.host, "plain-HTTP token realm on another host: asking anonymously");
            None
        };
        let mut req = self.http_for(realm, &ep.tls)?.get(realm.as_str());
        // The scope kcache asks for: a registry's challenge may name another repository.
        let mut query: Vec<(&str, &str)> = vec![("scope", scope)];
        if let Some(s) = params.get("service") {
            query.push(("service", s));
        }
        req = req.query(&query);
        if let Some((u, p)) = creds {
            req = req.basic_auth(u, Some(p));
        }
        let resp = req.send().await.map_err(|e| self.net_err(realm, Some(ep), e))?;
        if !resp.status().is_success() {
            return Err(RegistryError::Unauthorized {
                url: realm.clone(),
                status: resp.status().as_u16(),
            });
        }
        let body = read_bounded(resp, 64 << 10, realm).await?;
        let v: serde_json::Value = serde_json::from_slice(&body).map_err(|e| RegistryError::Protocol {
            url: realm.clone(),
            reason: format!("token response: {e}"),
        })?;
        let value = v
            .get("token")
            .or_else(|| v.get("access_token"))
            .and_then(|t| t.as_str())
            .filter(|t| !t.is_empty())
            .map(str::to_string)
            .ok_or_else(|| RegistryError::Protocol {
                url: realm.clone(),
                reason: "token response without token".into(),
            })?;
        let lifetime = v
            .get("expires_in")
            .and_then(|e| e.as_u64())
            .filter(|s| *s > 0)
            .map_or(DEFAULT_TOKEN_LIFETIME, Duration::from_secs);
        Ok(Token {
            value,
            expires: Instant::now() + lifetime.saturating_sub(TOKEN_MARGIN.min(lifetime / 2)),
        })
    }

    fn check_status(resp: &reqwest::Response, url: &str, what: impl FnOnce() -> String) -> Result<()> {
        match resp.status() {
            s if s.is_success() => Ok(()),
            StatusCode::NOT_FOUND => Err(RegistryError::NotFound { what: what() }),
            s @ (StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) => Err(RegistryError::Unauthorized {
                url: url.to_string(),
                status: s.as_u16(),
            }),
            s => Err(RegistryError::Protocol {
                url: url.to_string(),
                reason: format!("HTTP {s}"),
            }),
        }
    }

    /// The capability a manifest read needs: by digest a pull, by tag a resolve (containerd).
    fn manifest_cap(reference: &str) -> Capabilities {
        if Digest::parse(reference).is_ok() {
            Capabilities::PULL
        } else {
            Capabilities::RESOLVE
        }
    }

    /// `<host>/<api root>/<repository>/<tail>`; a mirror is told which registry is meant
    /// (`ns=`, as containerd does).
    fn url(ep: &Endpoint, r: &Reference, tail: &str) -> String {
        let mut u = format!("{}/{}/{tail}", ep.base(), r.repository);
        if !ep.upstream {
            u.push(if tail.contains('?') { '&' } else { '?' });
            u.push_str("ns=");
            u.push_str(&r.registry);
        }
        u
    }

    /// Resolves a tag (or digest) to a digest with HEAD; falls back to GET when the registry
    /// sends no `Docker-Content-Digest`. Mirrors are asked first, as containerd asks them.
    pub async fn resolve(&self, r: &Reference) -> Result<Resolved> {
        let reference = r.reference();
        self.each_host(r, Self::manifest_cap(&reference), |ep| async move {
            self.resolve_at(&ep, r).await
        })
        .await
    }

    async fn resolve_at(&self, ep: &Endpoint, r: &Reference) -> Result<Resolved> {
        let reference = r.reference();
        let url = Self::url(ep, r, &format!("manifests/{reference}"));
        let resp = self
            .send(
                ep,
                r,
                false,
                Method::HEAD,
                &url,
                &[(header::ACCEPT, ACCEPT_MANIFESTS.into())],
                None,
            )
            .await?;
        Self::check_status(&resp, &url, || format!("manifest {r}"))?;
        let digest = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|d| Digest::parse(d).ok());
        let media_type = content_type(&resp);
        let size = resp.content_length().unwrap_or(0);
        let resolved = match digest {
            Some(digest) => Resolved {
                media_type,
                digest,
                size,
            },
            None => {
                let m = self.manifest_at(ep, r, &reference).await?;
                Resolved {
                    media_type: m.media_type,
                    size: m.bytes.len() as u64,
                    digest: m.digest,
                }
            }
        };
        if let Some(want) = &r.digest {
            if *want != resolved.digest {
                return Err(RegistryError::DigestMismatch {
                    url,
                    expected: want.to_string(),
                    actual: resolved.digest.to_string(),
                });
            }
        }
        Ok(resolved)
    }

    /// Fetches a manifest by tag or digest. By digest, the bytes must hash to it.
    pub async fn manifest(&self, r: &Reference, reference: &str) -> Result<Manifest> {
        self.each_host(r, Self::manifest_cap(reference), |ep| async move {
            self.manifest_at(&ep, r, reference).await
        })
        .await
    }

    async fn manifest_at(&self, ep: &Endpoint, r: &Reference, reference: &str) -> Result<Manifest> {
        let url = Self::url(ep, r, &format!("manifests/{reference}"));
        let resp = self
            .send(
                ep,
                r,
                false,
                Method::GET,
                &url,
                &[(header::ACCEPT, ACCEPT_MANIFESTS.into())],
                None,
            )
            .await?;
        Self::check_status(&resp, &url, || {
            format!("manifest {}/{}:{reference}", r.registry, r.repository)
        })?;
        let mut media_type = content_type(&resp);
        let bytes = read_bounded(resp, self.cfg.max_manifest_bytes, &url).await?;
        if media_type.is_empty() || media_type == "application/json" || media_type == "text/plain" {
            media_type = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v.get("mediaType")?.as_str().map(str::to_string))
                .unwrap_or_default();
        }
        let digest = Digest::sha256_of(&bytes);
        if let Ok(want) = Digest::parse(reference) {
            if !want.matches(&bytes) {
                return Err(RegistryError::DigestMismatch {
                    url,
                    expected: want.to_string(),
                    actual: digest.to_string(),
                });
            }
        }
        Ok(Manifest {
            media_type,
            digest,
            bytes,
        })
    }

    /// Fetches a blob, at most `max` bytes, and checks its digest.
    pub async fn blob(&self, r: &Reference, digest: &Digest, max: usize) -> Result<Vec<u8>> {
        self.each_host(r, Capabilities::PULL, |ep| async move {
            let url = Self::url(&ep, r, &format!("blobs/{digest}"));
            let resp = self.send(&ep, r, false, Method::GET, &url, &[], None).await?;
            Self::check_status(&resp, &url, || format!("blob {digest} in {}", r.name()))?;
            let bytes = read_bounded(resp, max.min(self.cfg.max_blob_bytes), &url).await?;
            if !digest.matches(&bytes) {
                return Err(RegistryError::DigestMismatch {
                    url,
                    expected: digest.to_string(),
                    actual: Digest::sha256_of(&bytes).to_string(),
                });
            }
            Ok(bytes)
        })
        .await
    }

    /// Opens a blob for streaming: up to `max` bytes (not bounded by `max_blob_bytes`, for
    /// layers of gigabytes), with `timeout` for the whole transfer instead of the per-request
    /// one. [`BlobStream::chunk`] hashes what it hands out and reports the end only once the
    /// bytes matched `digest` (and `expected_size`, when given).
    pub async fn blob_stream(
        &self,
        r: &Reference,
        digest: &Digest,
        expected_size: Option<u64>,
        max: u64,
        timeout: Duration,
    ) -> Result<BlobStream> {
        if digest.algorithm() != "sha256" {
            return Err(RegistryError::Protocol {
                url: r.name(),
                reason: format!("unsupported digest algorithm in {digest}"),
            });
        }
        self.each_host(r, Capabilities::PULL, |ep| async move {
            let url = Self::url(&ep, r, &format!("blobs/{digest}"));
            let resp = self
                .send_with(&ep, r, false, Method::GET, &url, &[], None, Some(timeout))
                .await?;
            Self::check_status(&resp, &url, || format!("blob {digest} in {}", r.name()))?;
            let limit = expected_size.map_or(max, |s| s.min(max));
            if resp.content_length().is_some_and(|n| n > limit) {
                return Err(RegistryError::TooLarge {
                    url,
                    limit: usize::try_from(limit).unwrap_or(usize::MAX),
                });
            }
            Ok(BlobStream {
                resp,
                url,
                digest: digest.clone(),
                expected_size,
                limit,
                read: 0,
                hasher: <sha2::Sha256 as sha2::Digest>::new(),
                done: false,
            })
        })
        .await
    }

    /// The OCI 1.1 referrers of `digest` (an image index), or `None` if the registry does not
    /// implement the API (callers then read the `sha256-<hex>` referrers tag). A paginated answer
    /// (`Link: <...>; rel="next"`) is followed on the same host, up to [`MAX_REFERRER_PAGES`]
    /// pages, and the pages' `manifests` are merged into one index. Asked of the hosts the
    /// image's content comes from (mirrors first); a host without the API answers `None`.
    pub async fn referrers(
        &self,
        r: &Reference,
        digest: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Option<Vec<u8>>> {
        self.each_host(r, Capabilities::PULL, |ep| async move {
            self.referrers_at(&ep, r, digest, artifact_type).await
        })
        .await
    }

    async fn referrers_at(
        &self,
        ep: &Endpoint,
        r: &Reference,
        digest: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Option<Vec<u8>>> {
        let origin = format!("{}://{}", ep.scheme, ep.host);
        let mut tail = format!("referrers/{digest}");
        if let Some(t) = artifact_type {
            tail.push_str(&format!("?artifactType={}", t.replace('+', "%2B")));
        }
        let mut url = Self::url(ep, r, &tail);
        let mut merged: Option<serde_json::Value> = None;
        for _ in 0..MAX_REFERRER_PAGES {
            let resp = self
                .send(
                    ep,
                    r,
                    false,
                    Method::GET,
                    &url,
                    &[(header::ACCEPT, "application/vnd.oci.image.index.v1+json".into())],
                    None,
                )
                .await?;
            match resp.status() {
                StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED | StatusCode::BAD_REQUEST
                    if merged.is_none() =>
                {
                    return Ok(None)
                }
                _ => Self::check_status(&resp, &url, || format!("referrers of {digest}"))?,
            }
            if !content_type(&resp).starts_with("application/vnd.oci.image.index.v1+json") {
                if merged.is_none() {
                    return Ok(None);
                }
                return Err(RegistryError::Protocol {
                    url,
                    reason: "a referrers page that is not an OCI image index".into(),
                });
            }
            let next = next_link(resp.headers(), &origin);
            let bytes = read_bounded(resp, self.cfg.max_manifest_bytes, &url).await?;
            let next = match (next, merged.take()) {
                // One page (the usual case): the registry's bytes as they are.
                (None, None) => return Ok(Some(bytes)),
                (next, prev) => {
                    let page: serde_json::Value =
                        serde_json::from_slice(&bytes).map_err(|e| RegistryError::Protocol {
                            url: url.clone(),
                            reason: format!("referrers page is not JSON: {e}"),
                        })?;
                    merged = Some(merge_referrer_pages(prev, page));
                    next
                }
            };
            match next {
                Some(n) => url = n,
                None => break,
            }
        }
        Ok(merged.map(|m| m.to_string().into_bytes()))
    }

    /// The host pushes go to: the first that may push (usually the upstream server).
    fn push_endpoint(&self, r: &Reference) -> Result<Endpoint> {
        Ok(self
            .endpoints(&r.registry, Capabilities::PUSH)?
            .into_iter()
            .next()
            .expect("endpoints() returns at least one host"))
    }

    /// Uploads a blob (monolithic), unless the registry already has it.
    pub async fn push_blob(&self, r: &Reference, bytes: &[u8]) -> Result<Digest> {
        let ep = self.push_endpoint(r)?;
        let digest = Digest::sha256_of(bytes);
        let head = Self::url(&ep, r, &format!("blobs/{digest}"));
        if self
            .send(&ep, r, true, Method::HEAD, &head, &[], None)
            .await?
            .status()
            .is_success()
        {
            return Ok(digest);
        }
        let url = Self::url(&ep, r, "blobs/uploads/");
        let resp = self.send(&ep, r, true, Method::POST, &url, &[], None).await?;
        Self::check_status(&resp, &url, || format!("upload to {}", r.name()))?;
        let loc = resp
            .headers()
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| RegistryError::Protocol {
                url: url.clone(),
                reason: "upload without Location".into(),
            })?;
        let loc = if loc.starts_with("http") {
            loc.to_string()
        } else {
            format!("{}://{}{loc}", ep.scheme, ep.host)
        };
        let sep = if loc.contains('?') { '&' } else { '?' };
        let put = format!("{loc}{sep}digest={digest}");
        let headers = [(header::CONTENT_TYPE, "application/octet-stream".to_string())];
        let resp = self
            .send(&ep, r, true, Method::PUT, &put, &headers, Some(bytes.to_vec()))
            .await?;
        Self::check_status(&resp, &put, || format!("upload to {}", r.name()))?;
        Ok(digest)
    }

    /// Pushes a manifest under a tag or its digest.
    pub async fn push_manifest(
        &self,
        r: &Reference,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<Digest> {
        let ep = self.push_endpoint(r)?;
        let url = Self::url(&ep, r, &format!("manifests/{reference}"));
        let headers = [(header::CONTENT_TYPE, media_type.to_string())];
        let resp = self
            .send(&ep, r, true, Method::PUT, &url, &headers, Some(bytes.to_vec()))
            .await?;
        Self::check_status(&resp, &url, || format!("manifest push to {}", r.name()))?;
        Ok(Digest::sha256_of(bytes))
    }
}

/// `host:port` of an endpoint, the port made explicit from the scheme when absent.
fn ep_host_port(ep: &Endpoint) -> Option<String> {
    let u = reqwest::Url::parse(&format!("{}://{}", ep.scheme, ep.host)).ok()?;
    Some(format!("{}:{}", u.host_str()?, u.port_or_known_default()?))
}

fn content_type(resp: &reqwest::Response) -> String {
    resp.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.split(';').next().unwrap_or(s).trim().to_string())
        .unwrap_or_default()
}

/// Pages of a paginated referrers answer followed at most (each bounded like a manifest).
pub const MAX_REFERRER_PAGES: usize = 16;
/// Most redirects followed per request.
const MAX_REDIRECTS: usize = 5;

/// The `rel="next"` target of a `Link` header, resolved against `base` (scheme://host), or `None`
/// if there is none or it points anywhere but this registry (credentials never go elsewhere).
fn next_link(headers: &header::HeaderMap, base: &str) -> Option<String> {
    headers.get_all(header::LINK).iter().find_map(|v| {
        let v = v.to_str().ok()?;
        v.split(',').find_map(|part| {
            let (target, params) = part.trim().split_once(';')?;
            let target = target.trim().strip_prefix('<')?.strip_suffix('>')?;
            let is_next = params.split(';').any(|p| {
                let p = p.trim().replace(' ', "");
                p == "rel=\"next\"" || p == "rel=next"
            });
            if !is_next {
                return None;
            }
            if target.starts_with('/') && !target.starts_with("//") {
                Some(format!("{base}{target}"))
            } else if target.strip_prefix(base).is_some_and(|rest| rest.starts_with('/')) {
                Some(target.to_owned())
            } else {
                None
            }
        })
    })
}

/// `prev` with `page`'s `manifests` appended (the first page keeps its other fields).
fn merge_referrer_pages(prev: Option<serde_json::Value>, page: serde_json::Value) -> serde_json::Value {
    let Some(mut merged) = prev else {
        return page;
    };
    let more = page
        .get("manifests")
        .and_then(|m| m.as_array())
        .cloned()
        .unwrap_or_default();
    match merged.get_mut("manifests").and_then(|m| m.as_array_mut()) {
        Some(list) => list.extend(more),
        None => {
            if let Some(obj) = merged.as_object_mut() {
                obj.insert("manifests".into(), serde_json::Value::Array(more));
            }
        }
    }
    merged
}

/// Reads a body, refusing more than `limit` bytes (by header, then while streaming).
async fn read_bounded(mut resp: reqwest::Response, limit: usize, url: &str) -> Result<Vec<u8>> {
    let too_large = || RegistryError::TooLarge {
        url: url.to_string(),
        limit,
    };
    if resp.content_length().is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let mut out = Vec::with_capacity(resp.content_length().map_or(8192, |n| n as usize));
    loop {
        match resp.chunk().await {
            Ok(Some(c)) => {
                if out.len() + c.len() > limit {
                    return Err(too_large());
                }
                out.extend_from_slice(&c);
            }
            Ok(None) => return Ok(out),
            Err(e) if e.is_timeout() => {
                return Err(RegistryError::Timeout {
                    url: url.to_string(),
                    timeout: Duration::ZERO,
                })
            }
            Err(e) => {
                return Err(RegistryError::Protocol {
                    url: url.to_string(),
                    reason: format!("reading body: {e}"),
                })
            }
        }
    }
}

/// Parses `realm="...",service="...",scope="..."`.
fn parse_challenge(s: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let Some((k, v)) = rest.split_once('=') else { break };
        let k = k.trim().trim_start_matches(',').trim().to_ascii_lowercase();
        let v = v.trim_start();
        let (val, tail) = if let Some(q) = v.strip_prefix('"') {
            match q.find('"') {
                Some(end) => (&q[..end], &q[end + 1..]),
                None => (q, ""),
            }
        } else {
            match v.find(',') {
                Some(end) => (&v[..end], &v[end..]),
                None => (v, ""),
            }
        };
        out.insert(k, val.to_string());
        rest = tail.trim_start_matches(',').trim();
    }
    out
}

/// A blob being downloaded; see [`Client::blob_stream`].
pub struct BlobStream {
    resp: reqwest::Response,
    url: String,
    digest: Digest,
    expected_size: Option<u64>,
    limit: u64,
    read: u64,
    hasher: sha2::Sha256,
    done: bool,
}

impl std::fmt::Debug for BlobStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobStream")
            .field("url", &self.url)
            .field("read", &self.read)
            .finish_non_exhaustive()
    }
}

impl BlobStream {
    /// The size the registry announced, if it did.
    pub fn content_length(&self) -> Option<u64> {
        self.resp.content_length()
    }

    /// The next chunk. `Ok(None)` only at the end and only when the whole blob matched its
    /// digest and size; a mismatch is an error instead, so a consumer that reads to the end has
    /// checked everything it got.
    pub async fn chunk(&mut self) -> Result<Option<Vec<u8>>> {
        use sha2::Digest as _;
        if self.done {
            return Ok(None);
        }
        let next = self.resp.chunk().await.map_err(|e| {
            if e.is_timeout() {
                RegistryError::Timeout {
                    url: self.url.clone(),
                    timeout: Duration::ZERO,
                }
            } else {
                RegistryError::Protocol {
                    url: self.url.clone(),
                    reason: format!("reading body: {e}"),
                }
            }
        })?;
        match next {
            Some(c) => {
                self.read += c.len() as u64;
                if self.read > self.limit {
                    return Err(RegistryError::TooLarge {
                        url: self.url.clone(),
                        limit: usize::try_from(self.limit).unwrap_or(usize::MAX),
                    });
                }
                self.hasher.update(&c);
                Ok(Some(c.to_vec()))
            }
            None => {
                let hash: [u8; 32] = std::mem::take(&mut self.hasher).finalize().into();
                let actual = Digest::from_sha256_bytes(&hash);
                if actual != self.digest {
                    return Err(RegistryError::DigestMismatch {
                        url: self.url.clone(),
                        expected: self.digest.to_string(),
                        actual: actual.to_string(),
                    });
                }
                if let Some(size) = self.expected_size.filter(|s| *s != self.read) {
                    return Err(RegistryError::SizeMismatch {
                        url: self.url.clone(),
                        expected: size,
                        actual: self.read,
                    });
                }
                self.done = true;
                Ok(None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn referrers_next_link_stays_on_the_registry() {
        let base = "https://reg.example:5000";
        let links = |values: &[&str]| {
            let mut h = header::HeaderMap::new();
            for v in values {
                h.append(header::LINK, v.parse().unwrap());
            }
            next_link(&h, base)
        };
        assert_eq!(
            links(&[r#"</v2/a/referrers/sha256:x?n=1&last=y>; rel="next""#]).as_deref(),
            Some("https://reg.example:5000/v2/a/referrers/sha256:x?n=1&last=y")
        );
        assert_eq!(
            links(&[r#"<https://reg.example:5000/v2/a/referrers/x?p=2>;rel=next"#]).as_deref(),
            Some("https://reg.example:5000/v2/a/referrers/x?p=2")
        );
        // Among several links, the next one; several headers too.
        assert_eq!(
            links(&[r#"</v2/a/x?p=0>; rel="prev", </v2/a/x?p=2>; rel="next""#]).as_deref(),
            Some("https://reg.example:5000/v2/a/x?p=2")
        );
        assert_eq!(
            links(&[r#"</v2/a/x?p=0>; rel="prev""#, r#"</v2/a/x?p=3>; rel="next""#]).as_deref(),
            Some("https://reg.example:5000/v2/a/x?p=3")
        );
        // Anywhere else: another host, a host that merely starts like this one, a
        // protocol-relative URL, a downgrade to http, no rel=next.
        for v in [
            r#"<https://evil.example/v2/a/x?p=2>; rel="next""#,
            r#"<https://reg.example:50001/v2/a/x>; rel="next""#,
            r#"<https://reg.example:5000.evil/v2/a/x>; rel="next""#,
            r#"<//evil.example/v2/a/x>; rel="next""#,
            r#"<http://reg.example:5000/v2/a/x>; rel="next""#,
            r#"</v2/a/x?p=2>; rel="prev""#,
            "garbage",
        ] {
            assert_eq!(links(&[v]), None, "{v}");
        }
    }

    #[test]
    fn referrer_pages_merge_their_manifests() {
        let p1 = serde_json::json!({"schemaVersion": 2, "manifests": [{"digest": "a"}]});
        let p2 = serde_json::json!({"schemaVersion": 2, "manifests": [{"digest": "b"}, {"digest": "c"}]});
        let merged = merge_referrer_pages(Some(merge_referrer_pages(None, p1)), p2);
        assert_eq!(
            merged["manifests"],
            serde_json::json!([{"digest": "a"}, {"digest": "b"}, {"digest": "c"}])
        );
        let empty = serde_json::json!({"schemaVersion": 2});
        let merged = merge_referrer_pages(Some(empty), serde_json::json!({"manifests": [{"digest": "d"}]}));
        assert_eq!(merged["manifests"], serde_json::json!([{"digest": "d"}]));
    }

    use super::*;

    #[test]
    fn bearer_challenges_parse_with_quotes_and_commas() {
        let p = parse_challenge(
            r#"realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull,push""#,
        );
        assert_eq!(p["realm"], "https://auth.docker.io/token");
        assert_eq!(p["service"], "registry.docker.io");
        assert_eq!(p["scope"], "repository:library/nginx:pull,push");
    }
}

//! A minimal HTTP/1.1 server on loopback for the test servers that stand in where nothing real
//! runs here (the token issuer, blob storage): one request per connection (`Connection: close`),
//! GET and HEAD, plain or TLS (rustls with a certificate from [`crate::tls::TestPki`]). Every
//! request is recorded with its headers. A response can be held part-way through its body
//! ([`Stall`]): a download that stops after a known number of bytes, for as long as the test
//! wants, so a client can be caught (and killed) mid-way for certain.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Condvar, Mutex,
    },
    time::{Duration, Instant},
};

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Request {
    /// `GET`, `HEAD`, ...
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// The query pairs, percent-decoded, in order.
    pub query: Vec<(String, String)>,
    /// Header names lower-cased, in order.
    pub headers: Vec<(String, String)>,
}

impl Request {
    /// The first header named `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// Every query value named `name`.
    pub fn query_all(&self, name: &str) -> Vec<&str> {
        self.query
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// A response.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Extra headers.
    pub headers: Vec<(String, String)>,
    /// Body (not sent for HEAD; its length is).
    pub body: Vec<u8>,
    /// Send only this many bytes of the body, then hold the connection until the [`Stall`] is
    /// released, then send the rest.
    pub stall: Option<(usize, Stall)>,
}

/// A response held part-way through its body: [`Stall::wait_reached`] returns once the bytes
/// before the stall were written to the socket, and nothing more is sent until
/// [`Stall::release`].
#[derive(Debug, Clone, Default)]
pub struct Stall {
    state: Arc<(Mutex<StallState>, Condvar)>,
}

#[derive(Debug, Default)]
struct StallState {
    reached: bool,
    released: bool,
}

impl Stall {
    /// A stall nobody has reached yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Waits until a response reached the stall; false after `timeout`.
    pub fn wait_reached(&self, timeout: Duration) -> bool {
        let (lock, cv) = &*self.state;
        let deadline = Instant::now() + timeout;
        let mut st = lock.lock().expect("stall");
        while !st.reached {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            st = cv.wait_timeout(st, left).expect("stall").0;
        }
        true
    }

    /// Whether a response reached the stall.
    pub fn reached(&self) -> bool {
        self.state.0.lock().expect("stall").reached
    }

    /// Lets the held response go on (and any later one through at once).
    pub fn release(&self) {
        let (lock, cv) = &*self.state;
        lock.lock().expect("stall").released = true;
        cv.notify_all();
    }

    /// The server's side: marks the stall reached and waits for the release.
    fn hold(&self) {
        let (lock, cv) = &*self.state;
        let mut st = lock.lock().expect("stall");
        st.reached = true;
        cv.notify_all();
        while !st.released {
            st = cv.wait(st).expect("stall");
        }
    }
}

impl Response {
    /// A JSON body with `status`.
    pub fn json(status: u16, body: &serde_json::Value) -> Self {
        Self {
            status,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: body.to_string().into_bytes(),
            stall: None,
        }
    }
}

type Handler = dyn Fn(&Request) -> Response + Send + Sync;

/// A running server; stops on drop.
pub struct HttpServer {
    addr: SocketAddr,
    tls: bool,
    stop: Arc<AtomicBool>,
    requests: Arc<Mutex<Vec<Request>>>,
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (hex(b[i + 1]), hex(b[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse(head: &str) -> Option<Request> {
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split_whitespace();
    let method = first.next()?.to_string();
    let target = first.next()?;
    let (path, q) = target.split_once('?').unwrap_or((target, ""));
    let query = q
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Some(Request {
        method,
        path: percent_decode(path),
        query,
        headers,
    })
}

fn serve_one<S: Read + Write>(mut s: S, handler: &Handler, log: &Mutex<Vec<Request>>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
        if buf.len() > 64 << 10 {
            return;
        }
    };
    let Some(req) = parse(&String::from_utf8_lossy(&buf[..head_end])) else {
        return;
    };
    log.lock().expect("request log").push(req.clone());
    let resp = handler(&req);
    let mut out = format!("HTTP/1.1 {} X\r\nConnection: close\r\n", resp.status);
    for (k, v) in &resp.headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str(&format!("Content-Length: {}\r\n\r\n", resp.body.len()));
    let mut bytes = out.into_bytes();
    let (before, after) = match &resp.stall {
        Some((n, _)) => resp.body.split_at((*n).min(resp.body.len())),
        None => (&resp.body[..], &[][..]),
    };
    if req.method != "HEAD" {
        bytes.extend_from_slice(before);
    }
    if s.write_all(&bytes).and_then(|()| s.flush()).is_err() {
        return;
    }
    if let (Some((_, stall)), true) = (&resp.stall, req.method != "HEAD") {
        stall.hold();
        let _ = s.write_all(after);
        let _ = s.flush();
    }
}

fn tls_config(cert: &Path, key: &Path) -> Arc<rustls::ServerConfig> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    let cert_pem = std::fs::read_to_string(cert).expect("read server certificate");
    let key_pem = std::fs::read_to_string(key).expect("read server key");
    let certs = vec![CertificateDer::from(crate::tls::pem_to_der(&cert_pem, "CERTIFICATE"))];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(crate::tls::pem_to_der(
        &key_pem,
        "PRIVATE KEY",
    )));
    Arc::new(
        rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("server certificate and key"),
    )
}

impl HttpServer {
    /// Serves `handler` on a free loopback port; with `tls` (certificate, key) over HTTPS.
    pub fn start(tls: Option<(&Path, &Path)>, handler: impl Fn(&Request) -> Response + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let addr = listener.local_addr().expect("addr");
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let tls_cfg = tls.map(|(c, k)| tls_config(c, k));
        let handler: Arc<Handler> = Arc::new(handler);
        let (stop2, log) = (stop.clone(), requests.clone());
        let is_tls = tls_cfg.is_some();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(sock) = conn else { continue };
                let _ = sock.set_read_timeout(Some(Duration::from_secs(10)));
                let (handler, log, tls_cfg) = (handler.clone(), log.clone(), tls_cfg.clone());
                std::thread::spawn(move || match tls_cfg {
                    Some(cfg) => {
                        let Ok(conn) = rustls::ServerConnection::new(cfg) else {
                            return;
                        };
                        serve_one(rustls::StreamOwned::new(conn, sock), &*handler, &log);
                    }
                    None => serve_one(sock, &*handler, &log),
                });
            }
        });
        Self {
            addr,
            tls: is_tls,
            stop,
            requests,
        }
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `http://127.0.0.1:PORT` or `https://...`.
    pub fn url(&self) -> String {
        format!("{}://{}", if self.tls { "https" } else { "http" }, self.addr)
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().expect("request log").clone()
    }

    /// Forgets the requests so far.
    pub fn clear_requests(&self) {
        self.requests.lock().expect("request log").clear();
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so that it sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

/// Serves the files under `root` (GET and HEAD; `..` refused): the "blob storage" that the
/// registry's `redirect` storage middleware sends blob GETs to. The registry writes blobs to
/// `<root>/docker/registry/v2/blobs/...` and redirects to `<baseurl>/docker/registry/v2/...`.
/// It records each request's headers, so that a test can assert no credentials reached it.
pub struct BlobStorage {
    server: HttpServer,
    /// The next GET of a path ending with `.0` is held after `.1` bytes.
    armed: Arc<Mutex<Option<(String, usize, Stall)>>>,
    /// Every stall handed out, released on drop so that no server thread waits forever.
    stalls: Mutex<Vec<Stall>>,
}

impl BlobStorage {
    /// Serves `root` on loopback; with `tls` over HTTPS (a registry on HTTPS redirects there:
    /// a client need not follow a redirect from HTTPS to plain HTTP).
    pub fn start(root: &Path, tls: Option<&crate::tls::CertPair>) -> Self {
        let root = root.to_owned();
        let armed: Arc<Mutex<Option<(String, usize, Stall)>>> = Arc::default();
        let arm = armed.clone();
        let server = HttpServer::start(tls.map(|t| (t.cert.as_path(), t.key.as_path())), move |req| {
            let rel = req.path.trim_start_matches('/');
            if rel.split('/').any(|c| c == ".." || c.is_empty()) {
                return Response {
                    status: 400,
                    headers: vec![],
                    body: b"bad path".to_vec(),
                    stall: None,
                };
            }
            match std::fs::read(root.join(rel)) {
                Ok(body) => {
                    let mut armed = arm.lock().expect("armed stall");
                    let stall = match &*armed {
                        Some((suffix, _, _)) if req.method == "GET" && req.path.ends_with(suffix.as_str()) => {
                            armed.take().map(|(_, after, stall)| (after, stall))
                        }
                        _ => None,
                    };
                    Response {
                        status: 200,
                        headers: vec![("Content-Type".into(), "application/octet-stream".into())],
                        body,
                        stall,
                    }
                }
                Err(_) => Response {
                    status: 404,
                    headers: vec![],
                    body: b"not found".to_vec(),
                    stall: None,
                },
            }
        });
        Self {
            server,
            armed,
            stalls: Mutex::default(),
        }
    }

    /// Holds the next GET of the blob `digest` after `after` bytes of it, until the returned
    /// [`Stall`] is released (or this server dropped). Later GETs are served whole.
    pub fn stall_next_get(&self, digest: &kcache_core::digest::Digest, after: usize) -> Stall {
        let stall = Stall::new();
        // The registry stores it at `.../blobs/<algorithm>/<2 hex>/<hex>/data`.
        let suffix = format!("/{}/data", digest.hex());
        *self.armed.lock().expect("armed stall") = Some((suffix, after, stall.clone()));
        self.stalls.lock().expect("stalls").push(stall.clone());
        stall
    }

    /// `http(s)://127.0.0.1:PORT/` (the middleware's `baseurl`).
    pub fn base_url(&self) -> String {
        format!("{}/", self.server.url())
    }

    /// Every request it served.
    pub fn requests(&self) -> Vec<Request> {
        self.server.requests()
    }
}

impl Drop for BlobStorage {
    fn drop(&mut self) {
        for s in self.stalls.lock().expect("stalls").iter() {
            s.release();
        }
    }
}

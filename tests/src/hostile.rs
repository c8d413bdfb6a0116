//! A deliberately broken "registry" on loopback: it hangs, floods, or answers junk, so the
//! client's timeouts and size limits are tested against real sockets.

use std::{net::SocketAddr, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

/// How the server misbehaves.
#[derive(Debug, Clone, Copy)]
pub enum Behavior {
    /// Accepts and never answers.
    Hang,
    /// Answers 200 with a 1 GiB Content-Length and streams zeros.
    HugeDeclared,
    /// Answers 200 without a Content-Length and streams zeros until the client gives up.
    EndlessChunks,
    /// Answers every request with a 200 JSON-typed body that is not JSON.
    Junk,
    /// Serves the OCI referrers API in pages: the first page (one referrer) links to the second
    /// with a relative `Link: <...>; rel="next"`, the second (one referrer) links to a third page
    /// on another host, which a client must not follow (its credentials would go there).
    PagedReferrers,
}

/// The digests [`Behavior::PagedReferrers`] lists, page by page.
pub const PAGED_REFERRERS: [&str; 2] = [
    "sha256:1111111111111111111111111111111111111111111111111111111111111111",
    "sha256:2222222222222222222222222222222222222222222222222222222222222222",
];

fn referrers_page(request: &str) -> String {
    let path = request.split_whitespace().nth(1).unwrap_or_default();
    let (n, link) = if path.contains("page=2") {
        (
            1,
            "<http://elsewhere.invalid/v2/r/referrers/x?page=3>; rel=\"next\"".to_owned(),
        )
    } else {
        let base = path.split('?').next().unwrap_or_default();
        (0, format!("<{base}?n=1&page=2>; rel=\"next\""))
    };
    let body = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{}","size":1,"artifactType":"application/vnd.dev.sigstore.bundle.v0.3+json"}}]}}"#,
        PAGED_REFERRERS[n]
    );
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/vnd.oci.image.index.v1+json\r\nLink: {link}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// The server; it runs on its own thread and dies with the process.
pub struct HostileRegistry {
    addr: SocketAddr,
}

impl HostileRegistry {
    /// Starts one on a free loopback port.
    pub fn start(behavior: Behavior) -> Self {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        std_listener.set_nonblocking(true).expect("nonblocking");
        let addr = std_listener.local_addr().expect("addr");
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = TcpListener::from_std(std_listener).expect("listener");
                // Bounded: a hostile server for tests, not a service.
                for _ in 0..256 {
                    let Ok((mut sock, _)) = listener.accept().await else { return };
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 8192];
                        let n = sock.read(&mut buf).await.unwrap_or(0);
                        match behavior {
                            Behavior::PagedReferrers => {
                                let request = String::from_utf8_lossy(&buf[..n]).into_owned();
                                let _ = sock.write_all(referrers_page(&request).as_bytes()).await;
                            }
                            Behavior::Hang => tokio::time::sleep(Duration::from_secs(120)).await,
                            Behavior::HugeDeclared | Behavior::EndlessChunks => {
                                let head = if matches!(behavior, Behavior::HugeDeclared) {
                                    "HTTP/1.1 200 OK\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\nContent-Length: 1073741824\r\n\r\n"
                                } else {
                                    "HTTP/1.1 200 OK\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\nConnection: close\r\n\r\n"
                                };
                                if sock.write_all(head.as_bytes()).await.is_err() {
                                    return;
                                }
                                let zeros = vec![b'0'; 64 * 1024];
                                // At most 1 GiB, stopping as soon as the client hangs up.
                                for _ in 0..16_384 {
                                    if sock.write_all(&zeros).await.is_err() {
                                        return;
                                    }
                                }
                            }
                            Behavior::Junk => {
                                let body = "this is not json {";
                                let resp = format!(
                                    "HTTP/1.1 200 OK\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\nDocker-Content-Digest: sha256:{}\r\nContent-Length: {}\r\n\r\n{body}",
                                    "0".repeat(64),
                                    body.len()
                                );
                                let _ = sock.write_all(resp.as_bytes()).await;
                            }
                        }
                    });
                }
            });
        });
        Self { addr }
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }
}

//! A real `docker-registry` (Debian's distribution 2.8) with filesystem storage in a temp dir,
//! on a free loopback port. It has no referrers API, so cosign v3 signatures use the tag fallback.
//!
//! [`TestRegistry::builder`] adds what production registries have: TLS with a certificate from
//! the test CA (`http.tls`), client certificates required (`http.tls.clientcas`), bearer-token
//! auth trusting a [`crate::token_issuer::TokenIssuer`] (`auth: token`), and blob GETs
//! redirected to a separate storage server (the `redirect` storage middleware).

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use crate::tls::{CertPair, TestPki};
use kcache_core::{
    digest::Digest,
    registry::{Client, Reference, RegistryConfig},
};

/// A running registry; killed on drop.
pub struct TestRegistry {
    child: Option<Child>,
    dir: tempfile::TempDir,
    port: u16,
    htpasswd: Option<PathBuf>,
    opts: Options,
    /// Whether it has listened once: from then on its port is fixed.
    started: bool,
}

#[derive(Default, Clone)]
struct Options {
    /// Server certificate and key.
    tls: Option<CertPair>,
    /// CA bundle client certificates must chain to.
    client_cas: Option<PathBuf>,
    /// The CA the harness's own client trusts, and the client certificate it presents.
    trust: Option<(PathBuf, Option<CertPair>)>,
    /// `auth: token` realm and root certificate bundle.
    token: Option<(String, PathBuf)>,
    /// The redirect middleware's base URL.
    redirect: Option<String>,
}

/// Builds a [`TestRegistry`] with TLS, token auth or blob redirects.
pub struct RegistryBuilder {
    dir: tempfile::TempDir,
    opts: Options,
}

impl RegistryBuilder {
    /// Serves HTTPS with the PKI's server certificate (127.0.0.1 and localhost); the harness's
    /// own client (push, [`TestRegistry::client`]) trusts the PKI's CA through a hosts.toml.
    pub fn tls(mut self, pki: &TestPki) -> Self {
        self.opts.tls = Some(pki.server());
        self.opts.trust = Some((pki.ca_cert(), self.opts.trust.and_then(|t| t.1)));
        self
    }

    /// Requires client certificates issued by the PKI's CA (`http.tls.clientcas`); the
    /// harness's client presents the PKI's client certificate. Implies [`Self::tls`].
    pub fn require_client_certs(self, pki: &TestPki) -> Self {
        let mut b = self.tls(pki);
        b.opts.client_cas = Some(pki.ca_cert());
        b.opts.trust = Some((pki.ca_cert(), Some(pki.client())));
        b
    }

    /// Bearer-token auth: `auth: token` with `realm`, trusting tokens whose x5c chain ends at
    /// a certificate in `root_bundle` (see [`crate::token_issuer`]).
    pub fn token_auth(mut self, realm: &str, root_bundle: &Path) -> Self {
        self.opts.token = Some((realm.to_string(), root_bundle.to_owned()));
        self
    }

    /// Redirects blob GETs to `base_url` + the blob's storage path (the `redirect` storage
    /// middleware); serve [`Self::storage`] there (see [`crate::http_server::BlobStorage`]).
    pub fn redirect_blobs(mut self, base_url: &str) -> Self {
        self.opts.redirect = Some(base_url.to_string());
        self
    }

    /// The registry's storage root (known before it starts).
    pub fn storage(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// Starts it.
    pub fn start(self) -> TestRegistry {
        let mut reg = TestRegistry {
            child: None,
            started: false,
            dir: self.dir,
            port: free_port(),
            htpasswd: None,
            opts: self.opts,
        };
        reg.write_harness_hosts();
        reg.spawn();
        reg
    }
}

/// Whether process `pid` holds a listening TCP socket on 127.0.0.1:`port` (/proc/net/tcp's
/// socket inode among the process's open files).
fn listens_on(pid: u32, port: u16) -> bool {
    let local = format!("0100007F:{port:04X}");
    let Ok(table) = std::fs::read_to_string("/proc/net/tcp") else {
        return false;
    };
    let inodes: Vec<String> = table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 9 && f[1] == local && f[3] == "0A").then(|| format!("socket:[{}]", f[9]))
        })
        .collect();
    if inodes.is_empty() {
        return false;
    }
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten().any(|e| {
                std::fs::read_link(e.path())
                    .map(|t| inodes.iter().any(|i| t.as_os_str() == i.as_str()))
                    .unwrap_or(false)
            })
        })
        .unwrap_or(false)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

impl TestRegistry {
    /// A builder for a registry with TLS, token auth or blob redirects.
    pub fn builder() -> RegistryBuilder {
        assert_installed();
        RegistryBuilder {
            dir: tempfile::tempdir().expect("temp dir"),
            opts: Options::default(),
        }
    }

    /// Starts a registry and waits until `/v2/` answers. Panics with a clear message when
    /// `docker-registry` is not installed.
    pub fn start() -> Self {
        Self::start_inner(None)
    }

    /// Starts a registry that requires HTTP basic auth (htpasswd with a bcrypt hash).
    pub fn start_with_basic_auth(user: &str, password: &str) -> Self {
        Self::start_inner(Some((user, password)))
    }

    fn start_inner(basic_auth: Option<(&str, &str)>) -> Self {
        assert_installed();
        let dir = tempfile::tempdir().expect("temp dir");
        let htpasswd = basic_auth.map(|(user, password)| {
            let p = dir.path().join("htpasswd");
            let hash = bcrypt::hash(password, 5).expect("bcrypt");
            std::fs::write(&p, format!("{user}:{hash}\n")).expect("htpasswd");
            p
        });
        let mut reg = Self {
            child: None,
            started: false,
            dir,
            port: free_port(),
            htpasswd,
            opts: Options::default(),
        };
        reg.spawn();
        reg
    }

    /// A docker-style auth file with credentials for this registry.
    pub fn write_auth_file(&self, user: &str, password: &str) -> PathBuf {
        use base64::Engine as _;
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = self.dir.path().join(format!("auth-{n}.json"));
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        std::fs::write(&p, format!(r#"{{"auths":{{"{}":{{"auth":"{token}"}}}}}}"#, self.host())).expect("auth file");
        p
    }

    /// Starts the registry and waits until it, not some other process, listens on its port.
    /// `free_port` only finds a port that was free a moment ago: another test's server may take
    /// it first, and a bare connect would then succeed against that server. A first start that
    /// loses the port moves to another; a restart must keep its port (clients know it).
    fn spawn(&mut self) {
        let first = self.child.is_none() && !self.started;
        for _attempt in 0..5 {
            let child = self.start_process();
            let pid = child.id();
            self.child = Some(child);
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if listens_on(pid, self.port) {
                    self.started = true;
                    return;
                }
                let exited = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
                if let Some(status) = exited {
                    self.child = None;
                    assert!(
                        first,
                        "docker-registry could not listen on 127.0.0.1:{} again ({status})",
                        self.port
                    );
                    self.port = free_port();
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "docker-registry did not listen on 127.0.0.1:{}",
                    self.port
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("docker-registry lost its port to another process five times");
    }

    fn start_process(&mut self) -> Child {
        let cfg = self.dir.path().join("config.yml");
        let mut yaml = format!(
            "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{}\n",
            self.storage().display(),
            self.port,
        );
        if let Some(tls) = &self.opts.tls {
            yaml.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                tls.cert.display(),
                tls.key.display()
            ));
            if let Some(cas) = &self.opts.client_cas {
                yaml.push_str(&format!("    clientcas:\n      - {}\n", cas.display()));
            }
        }
        yaml.push_str("log:\n  level: error\n  accesslog:\n    disabled: true\n");
        if let Some(p) = &self.htpasswd {
            yaml.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: kcache-test\n    path: {}\n",
                p.display()
            ));
        }
        if let Some((realm, bundle)) = &self.opts.token {
            yaml.push_str(&format!(
                "auth:\n  token:\n    realm: {realm}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
                crate::token_issuer::SERVICE,
                crate::token_issuer::ISSUER,
                bundle.display()
            ));
        }
        if let Some(base) = &self.opts.redirect {
            yaml.push_str(&format!(
                "middleware:\n  storage:\n    - name: redirect\n      options:\n        baseurl: {base}\n"
            ));
        }
        std::fs::write(&cfg, yaml).expect("write registry config");
        Command::new("/usr/bin/docker-registry")
            .arg("serve")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start docker-registry")
    }

    /// Stops the registry (for "registry down" tests); [`Self::restart`] brings it back.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port and storage.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `https://127.0.0.1:PORT` with TLS, else `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!(
            "{}://{}",
            if self.opts.tls.is_some() { "https" } else { "http" },
            self.host()
        )
    }

    /// With TLS: the containerd-style registry host dir (`certs.d`) the harness's own client
    /// uses, whose `127.0.0.1:PORT/hosts.toml` trusts the test CA (and presents the client
    /// certificate when the registry requires one). Tests write their own.
    pub fn harness_hosts_dir(&self) -> Option<PathBuf> {
        self.opts.tls.as_ref().map(|_| self.dir.path().join("harness-certs.d"))
    }

    fn write_harness_hosts(&self) {
        let (Some(dir), Some((ca, client))) = (self.harness_hosts_dir(), &self.opts.trust) else {
            return;
        };
        let host_dir = dir.join(self.host());
        std::fs::create_dir_all(&host_dir).expect("harness hosts dir");
        // The top-level settings are the `server`'s (containerd's layout).
        let mut toml = format!("server = \"{}\"\nca = \"{}\"\n", self.url(), ca.display());
        if let Some(c) = client {
            toml.push_str(&format!(
                "client = [[\"{}\", \"{}\"]]\n",
                c.cert.display(),
                c.key.display()
            ));
        }
        std::fs::write(host_dir.join("hosts.toml"), toml).expect("harness hosts.toml");
    }

    /// A reference in this registry.
    pub fn reference(&self, repo_and_tag: &str) -> Reference {
        Reference::parse(&format!("{}/{repo_and_tag}", self.host())).expect("valid test reference")
    }

    /// A kcache client that may use plain HTTP to this registry; with TLS, one that trusts the
    /// test CA (and presents the client certificate) through [`Self::harness_hosts_dir`].
    pub fn client(&self) -> Arc<Client> {
        self.client_with(RegistryConfig::default())
    }

    /// [`Self::client`] on top of `cfg` (say, with an auth file).
    pub fn client_with(&self, mut cfg: RegistryConfig) -> Arc<Client> {
        match self.harness_hosts_dir() {
            Some(d) => cfg.config_path.push(d),
            None => cfg.insecure.push(self.host()),
        }
        cfg.timeout = Duration::from_secs(5);
        Arc::new(Client::new(cfg).expect("client"))
    }

    /// The storage root (`<root>/docker/registry/v2/...`).
    pub fn storage(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// Writes `bytes` straight into the registry's storage under `d` (and links it into
    /// `repo`), so that byte-exact fixture manifests whose real blobs we lack can be pushed.
    /// The registry does not re-hash stored blobs; this is for loopback tests only.
    pub fn put_placeholder_blob(&self, repo: &str, d: &Digest, bytes: &[u8]) {
        let hex = d.hex();
        let v2 = self.storage().join("docker/registry/v2");
        let data = v2.join(format!("blobs/sha256/{}/{hex}/data", &hex[..2]));
        std::fs::create_dir_all(data.parent().expect("parent")).expect("blob dir");
        std::fs::write(&data, bytes).expect("blob data");
        let link = v2.join(format!("repositories/{repo}/_layers/sha256/{hex}/link"));
        std::fs::create_dir_all(link.parent().expect("parent")).expect("link dir");
        std::fs::write(&link, d.as_str()).expect("blob link");
    }
}

impl TestRegistry {
    /// Pushes a small OCI image whose layer holds `content` under `repo:tag` (or `repo@digest`
    /// form is not accepted: give a tag); returns the manifest digest and bytes.
    pub async fn push_image(&self, repo_tag: &str, content: &str) -> (Digest, Vec<u8>) {
        let client = self.client();
        let r = self.reference(repo_tag);
        let layer = client.push_blob(&r, content.as_bytes()).await.expect("push layer");
        let config =
            format!(r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":["{layer}"]}}}}"#);
        let cd = client.push_blob(&r, config.as_bytes()).await.expect("push config");
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{cd}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{layer}","size":{}}}]}}"#,
            config.len(),
            content.len()
        )
        .into_bytes();
        let d = client
            .push_manifest(
                &r,
                &r.reference(),
                "application/vnd.oci.image.manifest.v1+json",
                &manifest,
            )
            .await
            .expect("push manifest");
        (d, manifest)
    }
}

impl TestRegistry {
    /// Copies `repo:tag` to `to` byte for byte: the manifest (an index with its manifests), every
    /// blob, and the tag; so a mirror holds exactly what the upstream does (cosign's `.sig` and
    /// referrers tags too, copied by their tag names).
    pub async fn copy_to(&self, to: &TestRegistry, repo_tag: &str) {
        let (from_c, to_c) = (self.client(), to.client());
        let src = self.reference(repo_tag);
        let dst = to.reference(repo_tag);
        let top = from_c.manifest(&src, &src.reference()).await.expect("manifest to copy");
        let mut manifests = vec![top.clone()];
        let json = |m: &kcache_core::registry::Manifest| -> serde_json::Value {
            serde_json::from_slice(&m.bytes).expect("manifest JSON")
        };
        for child in json(&top)["manifests"].as_array().into_iter().flatten() {
            let d = child["digest"].as_str().expect("child digest");
            let m = from_c.manifest(&src, d).await.expect("child manifest");
            manifests.push(m);
        }
        // Children first (an index may only list what the registry holds), the tag last.
        for m in manifests.iter().rev() {
            let v = json(m);
            let blobs = v["config"]["digest"].as_str().into_iter().chain(
                v["layers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|l| l["digest"].as_str()),
            );
            for d in blobs {
                let d = Digest::parse(d).expect("blob digest");
                let bytes = from_c.blob(&src, &d, usize::MAX).await.expect("blob to copy");
                to_c.push_blob(&dst, &bytes).await.expect("copy blob");
            }
            let reference = if std::ptr::eq(m, &manifests[0]) {
                dst.reference()
            } else {
                m.digest.to_string()
            };
            to_c.push_manifest(&dst, &reference, &m.media_type, &m.bytes)
                .await
                .expect("copy manifest");
        }
    }
}

fn assert_installed() {
    assert!(
        Path::new("/usr/bin/docker-registry").exists(),
        "docker-registry is not installed: run `make deps` (apt-get install docker-registry)"
    );
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        self.stop();
    }
}

//! containerd's registry host configuration (`config_path` directories with `hosts.toml`), read
//! the way containerd reads it, so that kcache asks the same hosts, in the same order, with the
//! same TLS settings as the runtime whose pulls it verifies.
//!
//! For a registry `host[:port]` the first directory that exists among `<root>/<host>_<port>_`,
//! `<root>/<host[:port]>` and `<root>/_default` (for each root in `config_path`, in order) is
//! used. Its `hosts.toml` lists `[host."<url>"]` entries, tried in file order, then `server` (the
//! upstream: `https://<registry>` when unset). Without a `hosts.toml`, the directory's
//! docker-style files count: `*.crt` are CAs, `*.cert` with the `*.key` of the same name are
//! client certificates.
//!
//! One deliberate difference: containerd logs a `hosts.toml` it cannot parse and goes on with the
//! certificate files alone; kcache refuses it with the file and the reason, since guessing which
//! hosts the runtime reaches is how a verifier ends up asking another registry than the one the
//! bytes came from.

use std::{
    fmt,
    path::{Path, PathBuf},
};

/// What a host may be asked (containerd's `capabilities`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Capabilities(u8);

impl Capabilities {
    /// Fetch by digest (manifests, blobs, referrers).
    pub const PULL: Self = Self(1);
    /// Resolve a tag to a digest.
    pub const RESOLVE: Self = Self(2);
    /// Push.
    pub const PUSH: Self = Self(4);
    /// All three, the default of an entry that names none.
    pub const ALL: Self = Self(7);

    /// Whether every capability in `other` is here.
    pub fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }
}

impl fmt::Display for Capabilities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = [(Self::PULL, "pull"), (Self::RESOLVE, "resolve"), (Self::PUSH, "push")]
            .into_iter()
            .filter(|(c, _)| self.contains(*c))
            .map(|(_, n)| n)
            .collect();
        f.write_str(&names.join(","))
    }
}

/// TLS settings of one host: extra roots, client certificates, and whether to skip verification.
/// Paths are absolute (resolved against the host directory).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct TlsSettings {
    /// CA certificate files (PEM), trusted besides the system roots.
    pub ca: Vec<PathBuf>,
    /// Client certificate and key files; a `None` key means the key is in the certificate file.
    pub client: Vec<(PathBuf, Option<PathBuf>)>,
    /// `skip_verify`: no certificate or name check at all.
    pub skip_verify: bool,
}

/// One host kcache may ask for a registry's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `http` or `https`.
    pub scheme: String,
    /// `host[:port]` to connect to.
    pub host: String,
    /// The API root, `/v2` unless `override_path` said otherwise.
    pub path: String,
    /// What this host may be asked.
    pub capabilities: Capabilities,
    /// TLS settings (only meaningful for `https`).
    pub tls: TlsSettings,
    /// Extra request headers.
    pub headers: Vec<(String, String)>,
    /// The registry itself (the `server` entry, or an entry naming the registry's own host),
    /// as opposed to a mirror: only it gets the credentials filed under the registry's name,
    /// and only a mirror is told the registry (`ns=`).
    pub upstream: bool,
}

impl Endpoint {
    /// `scheme://host/path`, the prefix of every API URL on this host.
    pub fn base(&self) -> String {
        format!("{}://{}{}", self.scheme, self.host, self.path)
    }
}

/// A host configuration kcache cannot use.
#[derive(Debug, thiserror::Error)]
pub enum HostsError {
    /// The file or directory cannot be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// `hosts.toml` is not what containerd accepts.
    #[error("{path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// The default API host of a registry name (Docker Hub's API is not at `docker.io`).
pub fn default_host(registry: &str) -> &str {
    if registry == "docker.io" {
        "registry-1.docker.io"
    } else {
        registry
    }
}

/// The directory containerd would use for `registry` under `roots`, if any.
pub fn host_dir(roots: &[PathBuf], registry: &str) -> Result<Option<PathBuf>, HostsError> {
    for root in roots {
        let mut candidates = Vec::with_capacity(3);
        if let Some((h, port)) = registry.rsplit_once(':').filter(|(h, _)| !h.is_empty()) {
            candidates.push(root.join(format!("{h}_{port}_")));
        }
        candidates.push(root.join(registry));
        candidates.push(root.join("_default"));
        for c in candidates {
            match std::fs::metadata(&c) {
                Ok(_) => return Ok(Some(c)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(HostsError::Io { path: c, source: e }),
            }
        }
    }
    Ok(None)
}

/// The hosts to ask for `registry`, in order: the configured ones, then the upstream server.
/// `insecure` registries (kcache's own `insecure` setting) default to plain HTTP.
pub fn endpoints(roots: &[PathBuf], registry: &str, insecure: &[String]) -> Result<Vec<Endpoint>, HostsError> {
    let mut hosts = match host_dir(roots, registry)? {
        Some(dir) => load_dir(&dir)?,
        None => vec![Parsed::default()],
    };
    // The last entry is the server; unset, it is the registry itself (containerd's default).
    let mut out = Vec::with_capacity(hosts.len());
    let last = hosts.len().saturating_sub(1);
    for (i, h) in hosts.drain(..).enumerate() {
        let upstream = i == last;
        let (scheme, host, path) = match h.url {
            Some(u) => (u.scheme, u.host, u.path),
            None if upstream => {
                let scheme = if insecure.iter().any(|i| i == registry) {
                    "http"
                } else {
                    "https"
                };
                (
                    scheme.to_string(),
                    default_host(registry).to_string(),
                    "/v2".to_string(),
                )
            }
            None => continue,
        };
        let ep = Endpoint {
            upstream: upstream || host == default_host(registry),
            scheme,
            host,
            path,
            capabilities: h.capabilities,
            tls: h.tls,
            headers: h.headers,
        };
        // The same host twice (a [host] entry naming the server itself, containerd's usual way
        // to give a registry its CA) is asked once, with what both entries allow and the first
        // entry's TLS settings: the server line has none of its own.
        match out
            .iter_mut()
            .find(|e: &&mut Endpoint| e.scheme == ep.scheme && e.host == ep.host && e.path == ep.path)
        {
            Some(e) => e.capabilities = Capabilities(e.capabilities.0 | ep.capabilities.0),
            None => out.push(ep),
        }
    }
    Ok(out)
}

#[derive(Debug, Default)]
struct Parsed {
    url: Option<Url>,
    capabilities: Capabilities,
    tls: TlsSettings,
    headers: Vec<(String, String)>,
}

impl Default for Capabilities {
    fn default() -> Self {
        Self::ALL
    }
}

#[derive(Debug)]
struct Url {
    scheme: String,
    host: String,
    path: String,
}

fn load_dir(dir: &Path) -> Result<Vec<Parsed>, HostsError> {
    let file = dir.join("hosts.toml");
    match std::fs::read_to_string(&file) {
        Ok(text) if !text.trim().is_empty() => parse_hosts_file(dir, &file, &text),
        Ok(_) => cert_files(dir),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => cert_files(dir),
        Err(e) => Err(HostsError::Io { path: file, source: e }),
    }
}

/// Docker's layout: `*.crt` CAs, `*.cert` + `*.key` client pairs; one (upstream) entry.
fn cert_files(dir: &Path) -> Result<Vec<Parsed>, HostsError> {
    let io = |source| HostsError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(io)?;
    names.sort();
    let mut tls = TlsSettings::default();
    for p in &names {
        match p.extension().and_then(|e| e.to_str()) {
            Some("crt") => tls.ca.push(p.clone()),
            Some("cert") => {
                let key = p.with_extension("key");
                if !key.exists() {
                    return Err(HostsError::Invalid {
                        path: p.clone(),
                        reason: format!("client certificate without its key {}", key.display()),
                    });
                }
                tls.client.push((p.clone(), Some(key)));
            }
            _ => {}
        }
    }
    Ok(vec![Parsed {
        tls,
        ..Parsed::default()
    }])
}

fn parse_hosts_file(dir: &Path, file: &Path, text: &str) -> Result<Vec<Parsed>, HostsError> {
    let invalid = |reason: String| HostsError::Invalid {
        path: file.to_path_buf(),
        reason,
    };
    let doc: toml_edit::DocumentMut = text.parse().map_err(|e: toml_edit::TomlError| invalid(e.to_string()))?;
    let root = doc.as_table();
    let mut out = Vec::new();
    if let Some(hosts) = root.get("host") {
        let hosts = hosts
            .as_table_like()
            .ok_or_else(|| invalid("`host` is not a table of [host.\"<url>\"] entries".into()))?;
        // toml_edit keeps the file's order: containerd tries hosts in the order they are written.
        for (name, item) in hosts.iter() {
            let t = item
                .as_table_like()
                .ok_or_else(|| invalid(format!("host.{name:?} is not a table")))?;
            out.push(parse_entry(dir, Some(name), t, &format!("host.{name:?}")).map_err(invalid)?);
        }
    }
    let server = match root.get("server") {
        Some(s) => Some(
            s.as_str()
                .ok_or_else(|| invalid("`server` is not a string".into()))?
                .to_string(),
        ),
        None => None,
    };
    let mut top = parse_entry(dir, None, root, "the top level").map_err(invalid)?;
    if let Some(s) = server.filter(|s| !s.is_empty()) {
        let override_path = root.get("override_path").and_then(|v| v.as_bool()).unwrap_or(false);
        top.url = Some(parse_url(&s, override_path).map_err(|e| invalid(format!("server: {e}")))?);
    }
    out.push(top);
    Ok(out)
}

/// Every key containerd reads in an entry (`dial_timeout` is 2.x's; kcache uses its own timeout).
const KNOWN_KEYS: &[&str] = &[
    "capabilities",
    "ca",
    "client",
    "skip_verify",
    "header",
    "override_path",
    "dial_timeout",
];

fn parse_entry(dir: &Path, url: Option<&str>, t: &dyn toml_edit::TableLike, what: &str) -> Result<Parsed, String> {
    for (k, _) in t.iter() {
        let top_only = url.is_none() && (k == "server" || k == "host");
        if !top_only && !KNOWN_KEYS.contains(&k) {
            return Err(format!("{what}: unknown key `{k}`"));
        }
    }
    let override_path = match t.get("override_path") {
        None => false,
        Some(v) => v
            .as_bool()
            .ok_or_else(|| format!("{what}: override_path is not a boolean"))?,
    };
    let mut p = Parsed {
        url: url.map(|u| parse_url(u, override_path)).transpose()?,
        ..Parsed::default()
    };
    if let Some(caps) = t.get("capabilities") {
        let list = strings(caps).ok_or_else(|| format!("{what}: capabilities is not a list of strings"))?;
        if !list.is_empty() {
            let mut c = 0u8;
            for name in list {
                c |= match name.to_ascii_lowercase().as_str() {
                    "pull" => Capabilities::PULL.0,
                    "resolve" => Capabilities::RESOLVE.0,
                    "push" => Capabilities::PUSH.0,
                    other => return Err(format!("{what}: unknown capability {other:?}")),
                };
            }
            p.capabilities = Capabilities(c);
        }
    }
    let abs = |s: &str| {
        let p = Path::new(s);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            dir.join(p)
        }
    };
    if let Some(ca) = t.get("ca") {
        p.tls.ca = strings(ca)
            .ok_or_else(|| format!("{what}: ca is neither a path nor a list of paths"))?
            .iter()
            .map(|s| abs(s))
            .collect();
    }
    if let Some(client) = t.get("client") {
        p.tls.client = client_pairs(client)
            .ok_or_else(|| format!("{what}: client is not a path, a list of paths or a list of [cert, key] pairs"))?
            .into_iter()
            .map(|(c, k)| (abs(&c), k.as_deref().map(abs)))
            .collect();
    }
    if let Some(v) = t.get("skip_verify") {
        p.tls.skip_verify = v
            .as_bool()
            .ok_or_else(|| format!("{what}: skip_verify is not a boolean"))?;
    }
    if let Some(h) = t.get("header") {
        let h = h
            .as_table_like()
            .ok_or_else(|| format!("{what}: header is not a table"))?;
        for (k, v) in h.iter() {
            let values =
                strings(v).ok_or_else(|| format!("{what}: header {k:?} is not a string or a list of strings"))?;
            for v in values {
                p.headers.push((k.to_string(), v));
            }
        }
    }
    Ok(p)
}

/// A string, or an array of strings.
fn strings(item: &toml_edit::Item) -> Option<Vec<String>> {
    if let Some(s) = item.as_str() {
        return Some(vec![s.to_string()]);
    }
    item.as_array()?
        .iter()
        .map(|v| v.as_str().map(str::to_string))
        .collect()
}

/// `"c.pem"`, `["a.pem", "b.pem"]` or `[["c.cert", "c.key"], ...]`.
fn client_pairs(item: &toml_edit::Item) -> Option<Vec<(String, Option<String>)>> {
    if let Some(s) = item.as_str() {
        return Some(vec![(s.to_string(), None)]);
    }
    item.as_array()?
        .iter()
        .map(|v| {
            if let Some(s) = v.as_str() {
                return Some((s.to_string(), None));
            }
            let pair = v.as_array()?;
            if pair.len() != 2 {
                return None;
            }
            let c = pair.get(0)?.as_str()?.to_string();
            let k = pair.get(1)?.as_str()?.to_string();
            Some((c, Some(k)))
        })
        .collect()
}

/// containerd's `parseHostConfig` URL rules: no scheme means https; the API root is the path
/// with `/v2` appended (unless it ends so already), or the path as written with `override_path`.
fn parse_url(s: &str, override_path: bool) -> Result<Url, String> {
    if let Some((scheme, _)) = s.split_once("://") {
        if scheme != "http" && scheme != "https" {
            return Err(format!("{s:?}: scheme must be http or https"));
        }
    }
    let with_scheme = if s.starts_with("http") {
        s.to_string()
    } else {
        format!("https://{s}")
    };
    let (scheme, rest) = with_scheme
        .split_once("://")
        .ok_or_else(|| format!("{s:?} is not a URL"))?;
    if scheme != "http" && scheme != "https" {
        return Err(format!("{s:?}: scheme must be http or https"));
    }
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if host.is_empty() || host.contains(['@', '?', '#', ' ']) {
        return Err(format!("{s:?} has no usable host"));
    }
    let path = clean_path(path);
    let path = if path.is_empty() {
        if override_path {
            String::new()
        } else {
            "/v2".to_string()
        }
    } else if override_path || path.ends_with("/v2") {
        path
    } else {
        format!("{path}/v2")
    };
    Ok(Url {
        scheme: scheme.to_string(),
        host: host.to_string(),
        path,
    })
}

/// Go's `path.Clean` for what matters here: no empty, `.` or trailing segments.
fn clean_path(p: &str) -> String {
    let mut segs: Vec<&str> = Vec::new();
    for s in p.split('/') {
        match s {
            "" | "." => {}
            ".." => {
                segs.pop();
            }
            s => segs.push(s),
        }
    }
    if segs.is_empty() {
        String::new()
    } else {
        format!("/{}", segs.join("/"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, rel: &str, text: &str) {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    #[test]
    fn no_config_is_the_registry_itself() {
        let eps = endpoints(&[], "ghcr.io", &[]).unwrap();
        assert_eq!(eps.len(), 1);
        assert_eq!(eps[0].base(), "https://ghcr.io/v2");
        assert!(eps[0].upstream && eps[0].capabilities == Capabilities::ALL);
        assert_eq!(
            endpoints(&[], "docker.io", &[]).unwrap()[0].base(),
            "https://registry-1.docker.io/v2"
        );
        let plain = endpoints(&[], "127.0.0.1:5000", &["127.0.0.1:5000".into()]).unwrap();
        assert_eq!(plain[0].base(), "http://127.0.0.1:5000/v2");
    }

    #[test]
    fn hosts_are_tried_in_file_order_then_the_server() {
        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            "docker.io/hosts.toml",
            r#"
server = "https://registry-1.docker.io"
[host."https://zz-mirror.example"]
  capabilities = ["pull", "resolve"]
  ca = "ca.crt"
  client = [["c.cert", "/abs/c.key"]]
[host."http://10.0.0.1:5000"]
  capabilities = ["pull"]
  skip_verify = true
  [host."http://10.0.0.1:5000".header]
    x-zarf = ["a", "b"]
[host."https://harbor.example/v2/proxy/docker.io"]
  override_path = true
"#,
        );
        let eps = endpoints(&[d.path().to_path_buf()], "docker.io", &[]).unwrap();
        let bases: Vec<String> = eps.iter().map(Endpoint::base).collect();
        assert_eq!(
            bases,
            [
                "https://zz-mirror.example/v2",
                "http://10.0.0.1:5000/v2",
                "https://harbor.example/v2/proxy/docker.io",
                "https://registry-1.docker.io/v2"
            ]
        );
        let dir = d.path().join("docker.io");
        assert_eq!(eps[0].tls.ca, [dir.join("ca.crt")]);
        assert_eq!(
            eps[0].tls.client,
            [(dir.join("c.cert"), Some(PathBuf::from("/abs/c.key")))]
        );
        assert!(
            eps[0].capabilities.contains(Capabilities::RESOLVE) && !eps[0].capabilities.contains(Capabilities::PUSH)
        );
        assert!(eps[1].tls.skip_verify && eps[1].capabilities == Capabilities::PULL);
        assert_eq!(
            eps[1].headers,
            [("x-zarf".to_string(), "a".to_string()), ("x-zarf".into(), "b".into())]
        );
        assert!(eps[3].upstream && !eps[0].upstream);
    }

    #[test]
    fn host_dirs_follow_containerd_lookup() {
        let d = tempfile::tempdir().unwrap();
        let roots = [d.path().join("missing"), d.path().to_path_buf()];
        write(
            d.path(),
            "_default/hosts.toml",
            "server = \"https://fallback.example\"\n",
        );
        assert_eq!(endpoints(&roots, "a.example", &[]).unwrap()[0].host, "fallback.example");
        write(
            d.path(),
            "a.example:5000/hosts.toml",
            "server = \"https://colon.example\"\n",
        );
        assert_eq!(
            endpoints(&roots, "a.example:5000", &[]).unwrap()[0].host,
            "colon.example"
        );
        write(
            d.path(),
            "a.example_5000_/hosts.toml",
            "server = \"https://underscore.example\"\n",
        );
        assert_eq!(
            endpoints(&roots, "a.example:5000", &[]).unwrap()[0].host,
            "underscore.example"
        );
        // Only [host] entries: the upstream default is still tried last.
        write(d.path(), "b.example/hosts.toml", "[host.\"http://m:1\"]\n");
        let eps = endpoints(&roots, "b.example", &[]).unwrap();
        assert_eq!(
            eps.iter().map(Endpoint::base).collect::<Vec<_>>(),
            ["http://m:1/v2", "https://b.example/v2"]
        );
    }

    #[test]
    fn the_server_listed_as_a_host_too_is_asked_once() {
        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            "127.0.0.1:5000/hosts.toml",
            "server = \"http://127.0.0.1:5000\"\n[host.\"http://127.0.0.1:5000\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
        );
        let eps = endpoints(&[d.path().to_path_buf()], "127.0.0.1:5000", &[]).unwrap();
        assert_eq!(eps.len(), 1, "{eps:?}");
        assert!(eps[0].upstream && eps[0].capabilities == Capabilities::ALL);
        // containerd's documented way to give a registry its CA: the entry's CA is the server's.
        write(
            d.path(),
            "r.example/hosts.toml",
            "server = \"https://r.example\"\n[host.\"https://r.example\"]\n  ca = \"ca.crt\"\n",
        );
        let eps = endpoints(&[d.path().to_path_buf()], "r.example", &[]).unwrap();
        assert_eq!(eps.len(), 1, "{eps:?}");
        assert_eq!(eps[0].tls.ca, [d.path().join("r.example/ca.crt")]);
    }

    #[test]
    fn docker_cert_layout_without_hosts_toml() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "r.example/ca.crt", "x");
        write(d.path(), "r.example/me.cert", "x");
        write(d.path(), "r.example/me.key", "x");
        let eps = endpoints(&[d.path().to_path_buf()], "r.example", &[]).unwrap();
        let dir = d.path().join("r.example");
        assert_eq!(eps[0].tls.ca, [dir.join("ca.crt")]);
        assert_eq!(eps[0].tls.client, [(dir.join("me.cert"), Some(dir.join("me.key")))]);
        write(d.path(), "s.example/lonely.cert", "x");
        assert!(endpoints(&[d.path().to_path_buf()], "s.example", &[]).is_err());
    }

    #[test]
    fn broken_files_are_refused_with_the_file_and_reason() {
        let d = tempfile::tempdir().unwrap();
        for (i, (text, want)) in [
            ("server = [", "hosts.toml"),
            ("[host.\"https://m\"]\ncapabilities = [\"fly\"]\n", "unknown capability"),
            (
                "[host.\"https://m\"]\ncapabilties = [\"pull\"]\n",
                "unknown key `capabilties`",
            ),
            ("[host.\"ftp://m\"]\n", "scheme"),
            ("server = 3\n", "server"),
            ("[host.\"https://m\"]\nclient = [[\"a\"]]\n", "client"),
            ("[host.\"https://m\"]\nskip_verify = \"yes\"\n", "skip_verify"),
        ]
        .into_iter()
        .enumerate()
        {
            let reg = format!("r{i}.example");
            write(d.path(), &format!("{reg}/hosts.toml"), text);
            let e = endpoints(&[d.path().to_path_buf()], &reg, &[]).unwrap_err().to_string();
            assert!(e.contains(want) && e.contains("hosts.toml"), "{text:?}: {e}");
        }
    }

    #[test]
    fn urls_follow_containerd() {
        let u = |s, o| parse_url(s, o).map(|u| format!("{}://{}{}", u.scheme, u.host, u.path));
        assert_eq!(u("mirror:5000", false).unwrap(), "https://mirror:5000/v2");
        assert_eq!(u("http://m/", false).unwrap(), "http://m/v2");
        assert_eq!(u("https://m/v2/", false).unwrap(), "https://m/v2");
        assert_eq!(u("https://m/proxy", false).unwrap(), "https://m/proxy/v2");
        assert_eq!(u("https://m/api/x", true).unwrap(), "https://m/api/x");
        assert!(u("https://", false).is_err());
        assert!(u("https://user@m", false).is_err());
    }
}

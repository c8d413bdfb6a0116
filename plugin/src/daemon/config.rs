//! `/etc/kcache/config.toml`: the daemon's settings. Every key is optional; a flag on the
//! command line wins over the file, the file over the built-in default. Unknown keys are
//! errors (a typo must not silently fall back to a default).
//!
//! ```toml
//! policy = "/etc/kcache/policy.yaml"        # policy.d/ beside it
//! snapshotter_socket = "/run/kcache/snapshotter.sock"
//! api_socket = "/run/kcache/kcache.sock"
//! root = "/var/lib/kcache/snapshotter"
//! cache_root = "/var/lib/kcache/caches"
//! run_dir = "/run/kcache"
//! caches_dir = "/etc/kcache/caches.d"
//! metrics_addr = "127.0.0.1:9464"           # optional; loopback only
//! unlabeled = "allow"                       # unpacks without CRI labels: allow | deny
//! chain_check = true                        # enforce mode: containers only on verified chains
//! policy_reload_seconds = 2
//! cache_resync_seconds = 300                # approved caches re-checked at least this often
//!
//! [registry]
//! insecure = ["127.0.0.1:5000"]             # plain HTTP for these hosts only
//! config_path = "/etc/containerd/certs.d"   # containerd's hosts.toml dirs: mirrors, CAs, client certs
//! auth_file = "/etc/kcache/auth.json"
//! timeout_seconds = 10
//!
//! [verdict_cache]
//! positive_ttl_seconds = 600
//! negative_ttl_seconds = 30
//! capacity = 10000
//!
//! [gpu]
//! pinned_file = "/etc/kcache/gpus.json"     # an admin-pinned inventory instead of probing
//! nvml = true
//!
//! [image_verifier]                          # kcache-image-verifier (containerd 2.x bindir)
//! deadline_ms = 8000                        # below containerd's per_verifier_timeout (10 s)
//!
//! [cache]                                   # limits on extracting one cache image layer
//! max_bytes = 8589934592                    # file data (default 8 GiB)
//! max_entries = 1000000                     # tar entries, and inodes created (implied dirs too)
//!
//! [nri]                                     # the NRI route for kcache-hook (containerd 1.7+)
//! socket = "/var/run/nri/nri.sock"          # set: kcached registers as NRI plugin "kcache"
//! hook = "/usr/libexec/kcache/kcache-hook"  # what it adds to opted-in containers
//! ```

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use kcache_core::cache::extract::ExtractLimits;
use serde::Deserialize;

use super::gate::Unlabeled;

/// Where kcached, kcache-image-verifier and `kcache cache pull` read the config from.
pub const DEFAULT_CONFIG: &str = kcache_core::paths::CONFIG;

/// The config file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Policy file.
    pub policy: Option<PathBuf>,
    /// Snapshotter socket.
    pub snapshotter_socket: Option<PathBuf>,
    /// API socket.
    pub api_socket: Option<PathBuf>,
    /// Snapshotter root.
    pub root: Option<PathBuf>,
    /// Cache store root.
    pub cache_root: Option<PathBuf>,
    /// Run directory.
    pub run_dir: Option<PathBuf>,
    /// Approved caches directory.
    pub caches_dir: Option<PathBuf>,
    /// Metrics listen address (loopback).
    pub metrics_addr: Option<SocketAddr>,
    /// Unpacks without CRI labels.
    pub unlabeled: Option<Unlabeled>,
    /// The chain check.
    pub chain_check: Option<bool>,
    /// Policy reload interval.
    pub policy_reload_seconds: Option<u64>,
    /// The cache manager's periodic round (it also runs on caches.d and policy changes).
    pub cache_resync_seconds: Option<u64>,
    /// Registry access.
    #[serde(default)]
    pub registry: RegistrySection,
    /// The verdict cache.
    #[serde(default)]
    pub verdict_cache: VerdictCacheSection,
    /// GPU inventory.
    #[serde(default)]
    pub gpu: GpuSection,
    /// The containerd 2.x image verifier binary.
    #[serde(default)]
    pub image_verifier: ImageVerifierSection,
    /// The cache manager's extraction limits.
    #[serde(default)]
    pub cache: CacheSection,
    /// `[nri]`.
    #[serde(default)]
    pub nri: NriSection,
    /// `[cluster]`: what cluster objects may change on this node. Read by kcache-controller's
    /// node agent (`kcache_controller::guard`), not by kcached; accepted here so one file holds
    /// the node's settings.
    #[serde(default)]
    pub cluster: Option<toml::Table>,
}

/// `[cache]`: limits on one cache image layer, as [`ExtractLimits`] names them. Unset keys keep
/// the defaults; a cache over a limit is refused (state `failed`, with the reason).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSection {
    /// Total bytes of file data ([`ExtractLimits::max_bytes`]).
    pub max_bytes: Option<u64>,
    /// Tar entries, and inodes created ([`ExtractLimits::max_entries`]).
    pub max_entries: Option<u64>,
}

impl CacheSection {
    /// The defaults with what the file sets. Zero is an error: it would refuse every cache.
    pub fn extract_limits(&self) -> Result<ExtractLimits, ConfigError> {
        let defaults = ExtractLimits::default();
        let positive = |key: &'static str, value: Option<u64>, default: u64| match value {
            Some(0) => Err(ConfigError::Invalid {
                key,
                reason: "must be at least 1".into(),
            }),
            v => Ok(v.unwrap_or(default)),
        };
        Ok(ExtractLimits {
            max_bytes: positive("cache.max_bytes", self.max_bytes, defaults.max_bytes)?,
            max_entries: positive("cache.max_entries", self.max_entries, defaults.max_entries)?,
            ..defaults
        })
    }
}

/// `[image_verifier]`: read by `kcache-image-verifier` only.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageVerifierSection {
    /// The verifier denies when it has no decision after this long; keep it below
    /// containerd's `per_verifier_timeout` (default 10 s), which kills the verifier.
    pub deadline_ms: Option<u64>,
}

/// `[registry]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistrySection {
    /// Hosts reached over plain HTTP.
    #[serde(default)]
    pub insecure: Vec<String>,
    /// containerd's registry `config_path` (`:`-separated directories of `<host>/hosts.toml`);
    /// `kcache install containerd` sets it to the one containerd uses.
    pub config_path: Option<String>,
    /// Docker-style auth file.
    pub auth_file: Option<PathBuf>,
    /// Per-request timeout.
    pub timeout_seconds: Option<u64>,
}

impl RegistrySection {
    /// The registry client settings: this section, with what the command line adds (`insecure`
    /// hosts) or overrides (`auth_file`, `config_path`). One place for kcached, the image
    /// verifier and `kcache cache pull --config`.
    pub fn client_config(
        &self,
        extra_insecure: impl IntoIterator<Item = String>,
        auth_file: Option<PathBuf>,
        config_path: Option<Vec<PathBuf>>,
    ) -> kcache_core::registry::RegistryConfig {
        let mut insecure = self.insecure.clone();
        insecure.extend(extra_insecure);
        kcache_core::registry::RegistryConfig {
            insecure,
            config_path: config_path.unwrap_or_else(|| {
                self.config_path
                    .as_deref()
                    .map(kcache_core::registry::split_config_path)
                    .unwrap_or_default()
            }),
            auth_file: auth_file.or_else(|| self.auth_file.clone()),
            timeout: std::time::Duration::from_secs(self.timeout_seconds.unwrap_or(10).max(1)),
            ..kcache_core::registry::RegistryConfig::default()
        }
    }
}

/// `[verdict_cache]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerdictCacheSection {
    /// TTL of allowed verdicts.
    pub positive_ttl_seconds: Option<u64>,
    /// TTL of denied verdicts.
    pub negative_ttl_seconds: Option<u64>,
    /// Entries kept.
    pub capacity: Option<usize>,
}

/// `[nri]`: kcached as containerd's NRI plugin (off unless `socket` is set).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NriSection {
    /// containerd's NRI socket (its default: `/var/run/nri/nri.sock`).
    pub socket: Option<PathBuf>,
    /// The kcache-hook binary added to opted-in containers (default: where the packages put it).
    pub hook: Option<PathBuf>,
}

/// `[gpu]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuSection {
    /// An admin-pinned inventory file.
    pub pinned_file: Option<PathBuf>,
    /// Probe NVML (default true).
    pub nvml: Option<bool>,
    /// KFD sysfs root (tests).
    pub kfd_root: Option<PathBuf>,
}

/// Reading the config failed.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Unreadable.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Not valid TOML, or unknown/mistyped keys.
    #[error("{}: {source}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why (with line and column).
        source: toml::de::Error,
    },
    /// A value the file may hold but that makes no sense.
    #[error("config key {key}: {reason}")]
    Invalid {
        /// The key (`section.key`).
        key: &'static str,
        /// Why.
        reason: String,
    },
}

impl FileConfig {
    /// Reads `path`. A missing file is the default config when `required` is false (the
    /// default path), an error when the user named the file.
    pub fn load(path: &Path, required: bool) -> Result<Self, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => toml::from_str(&text).map_err(|source| ConfigError::Parse {
                path: path.to_owned(),
                source,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => Ok(Self::default()),
            Err(source) => Err(ConfigError::Io {
                path: path.to_owned(),
                source,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_example() {
        let doc: String = include_str!("config.rs")
            .lines()
            .skip_while(|l| !l.starts_with("//! ```toml"))
            .skip(1)
            .take_while(|l| !l.starts_with("//! ```"))
            .map(|l| l.trim_start_matches("//!").trim_start_matches(' '))
            .collect::<Vec<_>>()
            .join("\n");
        let c: FileConfig = toml::from_str(&doc).unwrap();
        assert_eq!(c.unlabeled, Some(Unlabeled::Allow));
        assert_eq!(c.registry.insecure, vec!["127.0.0.1:5000"]);
        assert_eq!(c.metrics_addr.unwrap().port(), 9464);
        assert_eq!(c.verdict_cache.capacity, Some(10000));
        assert_eq!(c.image_verifier.deadline_ms, Some(8000));
        // The example spells out the defaults.
        assert_eq!(c.cache.extract_limits().unwrap(), ExtractLimits::default());
    }

    #[test]
    fn cache_limits_override_the_defaults_one_by_one() {
        let c: FileConfig = toml::from_str("[cache]\nmax_entries = 5000\n").unwrap();
        let limits = c.cache.extract_limits().unwrap();
        assert_eq!(limits.max_entries, 5000);
        assert_eq!(limits.max_bytes, ExtractLimits::default().max_bytes);
        let c: FileConfig = toml::from_str("[cache]\nmax_bytes = 17179869184\n").unwrap();
        assert_eq!(c.cache.extract_limits().unwrap().max_bytes, 16 << 30);
        assert_eq!(
            FileConfig::default().cache.extract_limits().unwrap(),
            ExtractLimits::default()
        );
        let c: FileConfig = toml::from_str("[cache]\nmax_entries = 0\n").unwrap();
        let err = c.cache.extract_limits().unwrap_err().to_string();
        assert!(err.contains("cache.max_entries") && err.contains("at least 1"), "{err}");
        let err = toml::from_str::<FileConfig>("[cache]\nmax_files = 10\n").unwrap_err();
        assert!(err.to_string().contains("max_files"), "{err}");
        assert!(toml::from_str::<FileConfig>("[cache]\nmax_bytes = -1\n").is_err());
    }

    #[test]
    fn typos_are_errors_with_a_location() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, "polcy = \"/x\"\n").unwrap();
        let err = FileConfig::load(&path, true).unwrap_err().to_string();
        assert!(err.contains("polcy") && err.contains("config.toml"), "{err}");
        assert!(FileConfig::load(&dir.path().join("missing.toml"), false).is_ok());
        assert!(FileConfig::load(&dir.path().join("missing.toml"), true).is_err());
    }
}

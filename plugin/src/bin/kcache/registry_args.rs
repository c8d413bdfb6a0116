//! Registry flags shared by the commands that talk to a registry.

use std::{path::PathBuf, sync::Arc, time::Duration};

use anyhow::{Context, Result};
use clap::Args;
use kcache_core::registry::{split_config_path, Client, RegistryConfig};
use kcache_plugin::daemon::config::RegistrySection;

#[derive(Args, Clone)]
pub struct RegistryArgs {
    /// Registry host[:port] to reach over plain HTTP (repeatable). All others use HTTPS.
    #[arg(long = "insecure-registry", value_name = "HOST")]
    insecure: Vec<String>,
    /// Docker-style auth file (`config.json` with `auths`).
    #[arg(long, env = "KCACHE_AUTH_FILE")]
    auth_file: Option<PathBuf>,
    /// containerd's registry config_path: `:`-separated directories of `<host>/hosts.toml`
    /// (mirrors, CAs, client certificates), e.g. /etc/containerd/certs.d.
    #[arg(long, env = "KCACHE_REGISTRY_CONFIG_PATH", value_name = "DIRS")]
    registry_config_path: Option<String>,
    /// Per-request timeout, in seconds.
    #[arg(long, default_value_t = 10)]
    timeout: u64,
}

impl RegistryArgs {
    pub fn client(&self) -> Result<Arc<Client>> {
        self.client_over(None)
    }

    /// A client from these flags over kcached's `[registry]` section (what the daemon uses),
    /// the flags winning.
    pub fn client_over(&self, file: Option<&RegistrySection>) -> Result<Arc<Client>> {
        let config_path = self.registry_config_path.as_deref().map(split_config_path);
        let mut cfg = match file {
            Some(f) => f.client_config(self.insecure.clone(), self.auth_file.clone(), config_path),
            None => RegistryConfig {
                insecure: self.insecure.clone(),
                config_path: config_path.unwrap_or_default(),
                auth_file: self.auth_file.clone(),
                ..RegistryConfig::default()
            },
        };
        cfg.timeout = Duration::from_secs(self.timeout.max(1));
        Ok(Arc::new(Client::new(cfg).context("cannot set up the registry client")?))
    }
}

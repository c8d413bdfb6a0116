//! Registry flags shared by the commands that talk to a registry.

use std::{path::PathBuf, sync::Arc, time::Duration};

use anyhow::{Context, Result};
use clap::Args;
use kcache_core::registry::{Client, RegistryConfig};

#[derive(Args, Clone)]
pub struct RegistryArgs {
    /// Registry host[:port] to reach over plain HTTP (repeatable). All others use HTTPS.
    #[arg(long = "insecure-registry", value_name = "HOST")]
    insecure: Vec<String>,
    /// Docker-style auth file (`config.json` with `auths`).
    #[arg(long, env = "KCACHE_AUTH_FILE")]
    auth_file: Option<PathBuf>,
    /// Per-request timeout, in seconds.
    #[arg(long, default_value_t = 10)]
    timeout: u64,
}

impl RegistryArgs {
    pub fn client(&self) -> Result<Arc<Client>> {
        let cfg = RegistryConfig {
            insecure: self.insecure.clone(),
            auth_file: self.auth_file.clone(),
            timeout: Duration::from_secs(self.timeout.max(1)),
            ..RegistryConfig::default()
        };
        Ok(Arc::new(Client::new(cfg).context("cannot set up the registry client")?))
    }
}

//! `kcache verify IMAGE`: verify one image against the node policy, through the registry.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use kcache_core::{policy::Policy, verifier::Verifier};

use crate::{registry_args::RegistryArgs, Outcome};

#[derive(Clone, Copy, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

#[derive(Args)]
pub struct VerifyArgs {
    /// Image reference (tag or digest).
    image: String,
    /// Policy file; `policy.d/` beside it is read too.
    #[arg(long, default_value = kcache_core::paths::POLICY, env = "KCACHE_POLICY")]
    policy: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    output: Output,
    /// Ask kcached over its API socket instead of verifying here: the daemon's policy and
    /// verdict cache decide (the same answer a pull on this node gets).
    #[arg(long)]
    daemon: bool,
    /// The kcache API socket, with `--daemon`.
    #[arg(long, env = "KCACHE_API_SOCKET", default_value = kcache_core::paths::API_SOCKET)]
    api_socket: PathBuf,
    #[command(flatten)]
    registry: RegistryArgs,
}

pub fn load_policy(path: &std::path::Path) -> Result<Policy> {
    let dir = path.parent().map(|p| p.join("policy.d")).filter(|d| d.is_dir());
    Policy::load(path, dir.as_deref()).with_context(|| format!("cannot load policy {}", path.display()))
}

pub fn run(a: VerifyArgs) -> Result<Outcome> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let v = if a.daemon {
        // The daemon's policy and verdict cache decide (the same answer a pull on this node gets).
        let client = kcache_core::api::Client::new(&a.api_socket);
        rt.block_on(client.verify(&a.image, None))
            .context("kcached could not answer")?
    } else {
        let policy = load_policy(&a.policy)?;
        let client = a.registry.client()?;
        rt.block_on(Verifier::new(client).verify(&policy, &a.image))?
    };
    match a.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&v)?),
        Output::Text => {
            print!("{}", v.text());
            if a.daemon {
                println!("daemon:   {}", a.api_socket.display());
            }
        }
    }
    Ok(if v.permits() {
        Outcome::Ok
    } else {
        Outcome::Rejected(v.summary())
    })
}

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
    #[arg(long, default_value = "/etc/kcache/policy.yaml", env = "KCACHE_POLICY")]
    policy: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    output: Output,
    /// Ask kcached over its API socket instead of verifying here: the daemon's policy and
    /// verdict cache decide (the same answer a pull on this node gets).
    #[arg(long)]
    daemon: bool,
    /// The kcache API socket, with `--daemon`.
    #[arg(long, env = "KCACHE_API_SOCKET", default_value = "/run/kcache/kcache.sock")]
    api_socket: PathBuf,
    #[command(flatten)]
    registry: RegistryArgs,
}

pub fn load_policy(path: &std::path::Path) -> Result<Policy> {
    let dir = path.parent().map(|p| p.join("policy.d")).filter(|d| d.is_dir());
    Policy::load(path, dir.as_deref()).with_context(|| format!("cannot load policy {}", path.display()))
}

pub fn run(a: VerifyArgs) -> Result<Outcome> {
    if a.daemon {
        return run_daemon(a);
    }
    let policy = load_policy(&a.policy)?;
    let client = a.registry.client()?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let v = rt.block_on(Verifier::new(client).verify(&policy, &a.image))?;
    match a.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&v)?),
        Output::Text => {
            println!("image:    {}", v.image);
            println!("digest:   {}", v.digest.as_ref().map_or("-".into(), |d| d.to_string()));
            println!("rule:     {}", v.rule.as_deref().unwrap_or("<default>"));
            println!("verdict:  {}", if v.permits() { "allowed" } else { "denied" });
            println!("reason:   {}", v.reason);
            if let Some(s) = &v.signer {
                println!("signer:   {s}");
            }
            if let Some(f) = &v.format {
                println!("format:   {f}");
            }
            if let Some(i) = v.tlog_index {
                println!("tlog:     index {i}");
            }
            if let Some(i) = &v.via_index {
                println!("index:    {i}");
            }
            println!("time:     {:.1} ms", v.elapsed.as_secs_f64() * 1000.0);
        }
    }
    Ok(if v.permits() {
        Outcome::Ok
    } else {
        Outcome::Rejected(v.summary())
    })
}

fn run_daemon(a: VerifyArgs) -> Result<Outcome> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let client = kcache_plugin::api::Client::new(&a.api_socket);
    let v = rt
        .block_on(client.verify(&a.image, None))
        .context("kcached could not answer")?;
    match a.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&v)?),
        Output::Text => {
            println!("image:    {}", v.image);
            println!("digest:   {}", v.digest.as_deref().unwrap_or("-"));
            println!("rule:     {}", v.rule.as_deref().unwrap_or("<default>"));
            println!("verdict:  {}", if v.permits() { "allowed" } else { "denied" });
            println!("reason:   {}", v.reason);
            if let Some(s) = &v.signer {
                let field = |k: &str| s.get(k).and_then(|x| x.as_str()).unwrap_or("?").to_owned();
                match s.get("type").and_then(|t| t.as_str()) {
                    Some("key") => println!("signer:   key {}", field("fingerprint")),
                    Some("keyless") => println!("signer:   {} ({})", field("subject"), field("issuer")),
                    _ => println!("signer:   {s}"),
                }
            }
            if let Some(i) = v.tlog_index {
                println!("tlog:     index {i}");
            }
            println!(
                "daemon:   {}{}",
                a.api_socket.display(),
                if v.cached { " (cached verdict)" } else { "" }
            );
            println!("time:     {:.1} ms", v.elapsed_ms);
        }
    }
    Ok(if v.permits() {
        Outcome::Ok
    } else {
        Outcome::Rejected(v.summary())
    })
}

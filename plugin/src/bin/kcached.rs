//! kcached: the kcache node daemon. For now it serves only the proxy snapshotter, registered in
//! containerd's config as `[proxy_plugins.kcache] type = "snapshot" address = "<socket>"`.

use std::{path::PathBuf, sync::Arc};

use anyhow::Context;
use clap::Parser;
use kcache_core::snapshot::OverlaySnapshotter;
use tracing_subscriber::EnvFilter;

/// kcache node daemon.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Unix socket of the snapshotter (containerd's proxy_plugins address).
    #[arg(
        long,
        env = "KCACHED_SNAPSHOTTER_SOCKET",
        default_value = "/run/kcache/snapshotter.sock"
    )]
    snapshotter_socket: PathBuf,
    /// Root directory of the snapshotter: its metadata and snapshot directories.
    #[arg(long, env = "KCACHED_ROOT", default_value = "/var/lib/kcache/snapshotter")]
    root: PathBuf,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .init();
    match run(Args::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("kcached: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let root = args.root.clone();
    let snapshotter = tokio::task::spawn_blocking(move || OverlaySnapshotter::open(&root))
        .await?
        .with_context(|| format!("failed to open the snapshotter at {}", args.root.display()))?;
    kcache_plugin::snapshotter::serve(Arc::new(snapshotter), &args.snapshotter_socket, shutdown())
        .await
        .context("failed to serve the snapshotter")
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(err) => {
            tracing::warn!(%err, "cannot watch SIGTERM; stopping on SIGINT only");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    tracing::info!("shutting down");
}

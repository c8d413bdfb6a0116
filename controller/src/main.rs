//! `kcache-controller crd | run | node`: parse, wire, exit. The decisions are in the library.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, sync::Arc, time::Duration};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use kcache_controller::{
    agent::{self, files::NodeFiles, AgentConfig},
    metrics::{self, Metrics},
    run,
};
use kcache_core::cache::store::StoreLayout;

#[derive(Parser)]
#[command(
    name = "kcache-controller",
    version,
    about = "kcache's Kubernetes controller and node agent"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the CustomResourceDefinitions (YAML), generated from the Rust types.
    Crd,
    /// The cluster controller (a Deployment): validates TrustPolicies, resolves KernelCache tags,
    /// aggregates KernelCacheNode reports into the caches' status.
    Run(RunArgs),
    /// The node agent (a DaemonSet beside kcached): renders the objects into policy.d and
    /// caches.d, reports the node in its KernelCacheNode.
    Node(NodeArgs),
}

#[derive(Args)]
struct Common {
    /// Serve /metrics and /healthz here.
    #[arg(long, env = "KCACHE_METRICS_ADDR")]
    metrics_addr: Option<SocketAddr>,
    /// Log as JSON lines.
    #[arg(long)]
    log_json: bool,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    common: Common,
    /// A KernelCacheNode not refreshed for this many seconds counts as stale.
    #[arg(long, default_value_t = 300)]
    stale_after_seconds: u64,
    /// ... and is deleted after this many (0: never).
    #[arg(long, default_value_t = 86400)]
    delete_after_seconds: u64,
    /// Tags are resolved again after this many seconds.
    #[arg(long, default_value_t = 600)]
    resolve_every_seconds: u64,
    /// Every object is reconciled at least this often (node counts).
    #[arg(long, default_value_t = 15)]
    resync_seconds: u64,
    /// Registries reached over plain HTTP (host:port), for tag resolution.
    #[arg(long = "registry-insecure", value_delimiter = ',')]
    registry_insecure: Vec<String>,
    /// A docker-style auth file for tag resolution.
    #[arg(long)]
    registry_auth_file: Option<PathBuf>,
    /// Do not resolve tags (nodes pull them as they find them).
    #[arg(long)]
    no_resolve: bool,
}

#[derive(Args)]
struct NodeArgs {
    #[command(flatten)]
    common: Common,
    /// This node's name.
    #[arg(long, env = "NODE_NAME")]
    node_name: String,
    /// The node's main policy file (read, never written); policy.d beside it unless --policy-d.
    #[arg(long, default_value = "/etc/kcache/policy.yaml")]
    policy: PathBuf,
    /// Where TrustPolicies are rendered.
    #[arg(long)]
    policy_d: Option<PathBuf>,
    /// Where caches are approved.
    #[arg(long, default_value = "/etc/kcache/caches.d")]
    caches_d: PathBuf,
    /// kcached's config.toml (its [cluster] table says what the cluster may change).
    #[arg(long, default_value = "/etc/kcache/config.toml")]
    config: PathBuf,
    /// kcached's API socket.
    #[arg(long, default_value = "/run/kcache/kcache.sock")]
    kcached_socket: PathBuf,
    /// kcached's GPU inventory.
    #[arg(long, default_value = "/run/kcache/gpus.json")]
    gpus_json: PathBuf,
    /// The cache store, read for rules, signers and container refs (read-only; optional).
    #[arg(long)]
    cache_root: Option<PathBuf>,
    /// kcached is polled this often.
    #[arg(long, default_value_t = 5)]
    poll_seconds: u64,
    /// The status is applied at least this often.
    #[arg(long, default_value_t = 60)]
    heartbeat_seconds: u64,
}

fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn with_metrics<F: std::future::Future<Output = anyhow::Result<()>>>(
    addr: Option<SocketAddr>,
    metrics: Arc<Metrics>,
    work: F,
) -> anyhow::Result<()> {
    let Some(addr) = addr else { return work.await };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(metrics::serve(addr, metrics, async {
        let _ = stopped.await;
    }));
    let result = work.await;
    let _ = stop.send(());
    server
        .await
        .context("metrics server")?
        .with_context(|| format!("metrics server on {addr}"))?;
    result
}

async fn client() -> anyhow::Result<kube::Client> {
    kube::Client::try_default()
        .await
        .context("cannot build a Kubernetes client (in-cluster service account or KUBECONFIG)")
}

async fn cmd_run(a: RunArgs) -> anyhow::Result<()> {
    let cfg = run::Config {
        stale_after: Duration::from_secs(a.stale_after_seconds),
        delete_after: (a.delete_after_seconds > 0).then(|| Duration::from_secs(a.delete_after_seconds)),
        resolve_every: Duration::from_secs(a.resolve_every_seconds),
        resync_every: Duration::from_secs(a.resync_seconds.max(1)),
        manager: kcache_controller::apply::CONTROLLER_MANAGER.into(),
    };
    let registry = match a.no_resolve {
        true => None,
        false => {
            let rc = kcache_core::registry::RegistryConfig {
                insecure: a.registry_insecure,
                auth_file: a.registry_auth_file,
                ..Default::default()
            };
            Some(Arc::new(
                kcache_core::registry::Client::new(rc).context("registry client")?,
            ))
        }
    };
    let metrics = Arc::new(Metrics::default());
    let client = client().await?;
    with_metrics(a.common.metrics_addr, metrics.clone(), async move {
        run::run(client, cfg, registry, metrics).await;
        Ok(())
    })
    .await
}

async fn cmd_node(a: NodeArgs) -> anyhow::Result<()> {
    let policy_d = a
        .policy_d
        .unwrap_or_else(|| a.policy.parent().unwrap_or(std::path::Path::new("/")).join("policy.d"));
    let cfg = AgentConfig {
        node_name: a.node_name,
        files: NodeFiles {
            policy: a.policy,
            policy_d,
            caches_d: a.caches_d,
        },
        config_toml: a.config,
        kcached_socket: a.kcached_socket,
        store: a.cache_root.map(|r| StoreLayout::new(r, "/run/kcache")),
        gpus_json: a.gpus_json,
        poll_every: Duration::from_secs(a.poll_seconds.max(1)),
        heartbeat: Duration::from_secs(a.heartbeat_seconds.max(1)),
        manager: kcache_controller::apply::AGENT_MANAGER.into(),
    };
    let metrics = Arc::new(Metrics::default());
    let client = client().await?;
    with_metrics(a.common.metrics_addr, metrics.clone(), async move {
        agent::run(client, cfg, metrics)
            .await
            .map_err(|e| anyhow::anyhow!(kcache_controller::error_chain(&e)))
    })
    .await
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Crd => kcache_controller::crd::yaml()
            .map(|y| print!("{y}"))
            .map_err(anyhow::Error::from),
        Command::Run(a) => {
            init_tracing(a.common.log_json);
            runtime().and_then(|rt| rt.block_on(cmd_run(a)))
        }
        Command::Node(a) => {
            init_tracing(a.common.log_json);
            runtime().and_then(|rt| rt.block_on(cmd_node(a)))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kcache-controller: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    // Two workers: the agent idles beside kcached on every node.
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("tokio runtime")
}

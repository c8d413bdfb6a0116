//! kcached: the kcache node daemon.
//!
//! - containerd's Snapshots API on `--snapshotter-socket` (a proxy snapshotter: overlay
//!   snapshots with a verification gate on Prepare);
//! - the kcache API on `--api-socket` (verify, policy status, cache status, metrics);
//! - `/metrics` on a loopback TCP address when `--metrics-addr` is set;
//! - the policy, reloaded on change (a broken new policy keeps the old one);
//! - the GPU inventory, written to `<run-dir>/gpus.json` at start for the OCI hook;
//! - with `[nri] socket` set, containerd's NRI plugin `kcache`: kcache-hook only in the
//!   containers whose pod asks for a cache (`kcache_plugin::nri`).

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::{bail, Context};
use clap::Parser;
use kcache_core::{
    cache::{
        extract::ExtractLimits,
        manager::{CacheManager, RunReport},
        store::StoreLayout,
    },
    gpu::{self, ProbeOptions},
    paths,
    registry::{Client, RegistryConfig},
    snapshot::{gate::GatedSnapshotter, OverlaySnapshotter, Snapshotter},
    verdict::CacheConfig,
    verifier::Verifier,
};
use kcache_plugin::{
    daemon::{
        api::{self, ApiState},
        config::{FileConfig, DEFAULT_CONFIG},
        gate::{GateConfig, PolicyAdmission, Unlabeled},
        metrics::Metrics,
        policy_store::PolicyStore,
    },
    snapshotter::{serve_service, SnapshotsService},
};
use tokio::sync::watch;
use tracing_subscriber::EnvFilter;

/// kcache node daemon: containerd proxy snapshotter with a verification gate, and the kcache API.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Daemon config file (TOML). Flags win over it.
    #[arg(long, env = "KCACHED_CONFIG")]
    config: Option<PathBuf>,
    /// Verification policy; `policy.d/` beside it is read too. Reloaded on change.
    #[arg(long, env = "KCACHE_POLICY")]
    policy: Option<PathBuf>,
    /// Serve the snapshotter without a policy and without the gate (no verification at all).
    #[arg(long, conflicts_with = "policy")]
    no_policy: bool,
    /// Unix socket of the snapshotter (containerd's proxy_plugins address).
    #[arg(long, env = "KCACHED_SNAPSHOTTER_SOCKET")]
    snapshotter_socket: Option<PathBuf>,
    /// Unix socket of the kcache API.
    #[arg(long, env = "KCACHED_API_SOCKET")]
    api_socket: Option<PathBuf>,
    /// Root directory of the snapshotter: its metadata and snapshot directories.
    #[arg(long, env = "KCACHED_ROOT")]
    root: Option<PathBuf>,
    /// Root of the kernel-cache store.
    #[arg(long)]
    cache_root: Option<PathBuf>,
    /// Run directory (gpus.json, per-container dirs).
    #[arg(long)]
    run_dir: Option<PathBuf>,
    /// Approved caches directory.
    #[arg(long)]
    caches_dir: Option<PathBuf>,
    /// Registry host[:port] to reach over plain HTTP (repeatable).
    #[arg(long = "insecure-registry", value_name = "HOST")]
    insecure: Vec<String>,
    /// Docker-style auth file.
    #[arg(long, env = "KCACHE_AUTH_FILE")]
    auth_file: Option<PathBuf>,
    /// containerd's registry config_path (`:`-separated `<host>/hosts.toml` directories):
    /// mirrors, CAs and client certificates, used as containerd uses them.
    #[arg(long, env = "KCACHE_REGISTRY_CONFIG_PATH", value_name = "DIRS")]
    registry_config_path: Option<String>,
    /// Unpacks without CRI image labels (`ctr pull`, snapshot annotations off): allow or deny.
    #[arg(long, value_name = "allow|deny")]
    unlabeled: Option<Unlabeled>,
    /// Turn off the parent-chain check for container snapshots (enforce mode).
    #[arg(long)]
    no_chain_check: bool,
    /// Serve /metrics on this loopback TCP address too.
    #[arg(long)]
    metrics_addr: Option<SocketAddr>,
    /// An admin-pinned GPU inventory file instead of probing.
    #[arg(long)]
    gpu_inventory: Option<PathBuf>,
}

/// The resolved settings.
struct Settings {
    policy: Option<PathBuf>,
    snapshotter_socket: PathBuf,
    api_socket: PathBuf,
    root: PathBuf,
    layout: StoreLayout,
    caches_dir: PathBuf,
    extract_limits: ExtractLimits,
    cache_resync: Duration,
    registry: RegistryConfig,
    verdict_cache: CacheConfig,
    gate: GateConfig,
    metrics_addr: Option<SocketAddr>,
    reload: Duration,
    probe: ProbeOptions,
    /// NRI socket and hook binary, when the NRI plugin is on.
    nri: Option<(PathBuf, PathBuf)>,
}

fn settings(args: Args) -> anyhow::Result<Settings> {
    let (path, required) = match &args.config {
        Some(p) => (p.clone(), true),
        None => (PathBuf::from(DEFAULT_CONFIG), false),
    };
    let file = FileConfig::load(&path, required)?;
    let pick = |flag: Option<PathBuf>, file: Option<PathBuf>, default: &str| {
        flag.or(file).unwrap_or_else(|| PathBuf::from(default))
    };
    let policy = if args.no_policy {
        None
    } else {
        Some(pick(args.policy, file.policy, paths::POLICY))
    };
    let metrics_addr = args.metrics_addr.or(file.metrics_addr);
    if let Some(addr) = metrics_addr {
        if !addr.ip().is_loopback() {
            bail!("--metrics-addr {addr}: metrics are served on loopback addresses only");
        }
    }
    let extract_limits = file
        .cache
        .extract_limits()
        .with_context(|| path.display().to_string())?;
    let registry = file.registry.client_config(
        args.insecure,
        args.auth_file,
        args.registry_config_path
            .as_deref()
            .map(kcache_core::registry::split_config_path),
    );
    let defaults = CacheConfig::default();
    let vc = file.verdict_cache;
    let nri = file.nri.socket.map(|socket| {
        let hook = file
            .nri
            .hook
            .unwrap_or_else(|| PathBuf::from(kcache_core::containerd::DEFAULT_HOOK));
        (socket, hook)
    });
    Ok(Settings {
        policy,
        snapshotter_socket: pick(
            args.snapshotter_socket,
            file.snapshotter_socket,
            paths::SNAPSHOTTER_SOCKET,
        ),
        api_socket: pick(args.api_socket, file.api_socket, paths::API_SOCKET),
        root: pick(args.root, file.root, paths::SNAPSHOTTER_ROOT),
        layout: StoreLayout::new(
            pick(args.cache_root, file.cache_root, paths::CACHE_ROOT),
            pick(args.run_dir, file.run_dir, paths::RUN_DIR),
        ),
        caches_dir: pick(args.caches_dir, file.caches_dir, paths::CACHES_DIR),
        extract_limits,
        cache_resync: Duration::from_secs(file.cache_resync_seconds.unwrap_or(300).max(5)),
        registry,
        verdict_cache: CacheConfig {
            positive_ttl: vc
                .positive_ttl_seconds
                .map_or(defaults.positive_ttl, Duration::from_secs),
            negative_ttl: vc
                .negative_ttl_seconds
                .map_or(defaults.negative_ttl, Duration::from_secs),
            capacity: vc.capacity.unwrap_or(defaults.capacity),
        },
        gate: GateConfig {
            unlabeled: args.unlabeled.or(file.unlabeled).unwrap_or(Unlabeled::Allow),
            chain_check: !args.no_chain_check && file.chain_check.unwrap_or(true),
        },
        metrics_addr,
        reload: Duration::from_secs(file.policy_reload_seconds.unwrap_or(2).max(1)),
        probe: ProbeOptions {
            pinned_file: args.gpu_inventory.or(file.gpu.pinned_file),
            nvml: file.gpu.nvml.unwrap_or(true),
            kfd_root: file
                .gpu
                .kfd_root
                .or_else(|| Some(PathBuf::from(gpu::kfd::DEFAULT_TOPOLOGY_ROOT))),
        },
        nri,
    })
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .init();
    let result = match settings(Args::parse()) {
        Ok(s) => run(s).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("kcached: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(s: Settings) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::default());

    // The policy first: a daemon that cannot say what it enforces does not start.
    let policy = match &s.policy {
        Some(path) => {
            let store =
                PolicyStore::load(path).with_context(|| format!("cannot load the policy {}", path.display()))?;
            let st = store.status();
            tracing::info!(policy = %path.display(), generation = st.generation, mode = %st.mode, rules = st.rules, "policy loaded");
            Some(Arc::new(store))
        }
        None => {
            tracing::warn!("--no-policy: the snapshotter serves every pull unverified");
            None
        }
    };

    let client = Arc::new(Client::new(s.registry.clone()).context("cannot set up the registry client")?);
    let verifier = Arc::new(Verifier::with_cache(Arc::clone(&client), s.verdict_cache.clone()));

    // The GPU inventory, for the hook (which never loads NVML).
    write_gpu_inventory(&s.layout, &s.probe).await;

    let root = s.root.clone();
    let snapshotter = tokio::task::spawn_blocking(move || OverlaySnapshotter::open(&root))
        .await?
        .with_context(|| format!("failed to open the snapshotter at {}", s.root.display()))?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let nri_stop = stop_rx.clone();
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };
    let mut tasks = tokio::task::JoinSet::new();

    if let Some(policy) = &policy {
        metrics.set_policy_generation(policy.current().policy.generation);
        let (m, m2) = (Arc::clone(&metrics), Arc::clone(&metrics));
        let watcher = Arc::clone(policy).watch(s.reload, move |loaded| {
            m.set_policy_generation(loaded.policy.generation)
        });
        let errors = Arc::clone(policy);
        let stop = stopped();
        tasks.spawn(async move {
            // Count reload errors for the metrics as they appear.
            let count_errors = async move {
                let mut last = None;
                loop {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    let now = errors.status().last_error;
                    if now.is_some() && now != last {
                        m2.policy_reload_errors.inc();
                    }
                    last = now;
                }
            };
            tokio::select! {
                _ = watcher => {}
                _ = count_errors => {}
                _ = stop => {}
            }
            Ok(())
        });

        // The cache manager: approved caches (caches.d) pulled by verified digest into the
        // store, checked against the GPUs, state.json for the hook and the API; GC after each
        // round. Runs at start, on a caches.d or policy change, and every `cache_resync`.
        let manager = Arc::new(CacheManager::new(
            s.layout.clone(),
            Arc::clone(&client),
            Arc::clone(&verifier),
            s.extract_limits.clone(),
        ));
        let (p, m, stop) = (Arc::clone(policy), Arc::clone(&metrics), stopped());
        let (caches_dir, resync) = (s.caches_dir.clone(), s.cache_resync);
        tasks.spawn(async move {
            let on_report = move |r: &RunReport| {
                m.set_caches(r.state.caches.iter().map(|c| (c.name.as_str(), c.state)));
                for problem in &r.problems {
                    tracing::error!(%problem, "caches.d: entry left out");
                }
            };
            manager
                .watch(caches_dir, resync, CACHES_D_POLL, move || p.current(), on_report, stop)
                .await;
            Ok(())
        });

        let state = Arc::new(ApiState {
            policy: Arc::clone(policy),
            verifier: Arc::clone(&verifier),
            metrics: Arc::clone(&metrics),
            layout: s.layout.clone(),
            gate: s.gate,
            registry: kcache_core::api::RegistryStatus {
                config_path: s.registry.config_path.clone(),
                insecure: s.registry.insecure.clone(),
            },
        });
        let api_socket = s.api_socket.clone();
        let st = Arc::clone(&state);
        let stop = stopped();
        tasks.spawn(async move {
            api::serve(st, &api_socket, stop)
                .await
                .with_context(|| format!("the kcache API on {} failed", api_socket.display()))
        });
        if let Some(addr) = s.metrics_addr {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} for metrics"))?;
            tracing::info!(%addr, "serving /metrics");
            let stop = stopped();
            tasks.spawn(async move {
                api::serve_metrics(state, listener, stop)
                    .await
                    .context("metrics listener failed")
            });
        }
    }

    if let Some((socket, hook)) = s.nri.clone() {
        tracing::info!(socket = %socket.display(), hook = %hook.display(), "NRI plugin on");
        let rx = nri_stop;
        let plugin = kcache_plugin::nri::Plugin::new(&hook);
        tasks.spawn(async move {
            kcache_plugin::nri::run(socket, plugin, rx).await;
            Ok(())
        });
    }

    // The snapshotter, behind the verification gate unless there is no policy.
    let socket = s.snapshotter_socket.clone();
    let stop = stopped();
    match &policy {
        Some(policy) => {
            let admission = PolicyAdmission::new(Arc::clone(policy), Arc::clone(&verifier), Arc::clone(&metrics));
            let gated = GatedSnapshotter::new(snapshotter, admission, s.gate);
            let service = SnapshotsService::new(Arc::new(gated)).with_metrics(Arc::clone(&metrics));
            tasks.spawn(serve_snapshotter(service, socket, stop));
        }
        None => {
            let service = SnapshotsService::new(Arc::new(snapshotter)).with_metrics(Arc::clone(&metrics));
            tasks.spawn(serve_snapshotter(service, socket, stop));
        }
    }

    // Run until a signal, or until any part fails (then stop the rest).
    let result = tokio::select! {
        _ = shutdown() => Ok(()),
        Some(done) = tasks.join_next() => match done {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e),
            Err(join) => Err(anyhow::anyhow!("a daemon task failed: {join}")),
        },
    };
    let _ = stop_tx.send(true);
    let drain = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(5), drain).await.is_err() {
        tracing::warn!("some connections did not close within 5 s");
    }
    for socket in [&s.snapshotter_socket, &s.api_socket] {
        let _ = std::fs::remove_file(socket);
    }
    result
}

/// How often caches.d is looked at (a readdir and a stat per file), so a cache the node agent
/// approves starts pulling within a fraction of a second.
const CACHES_D_POLL: Duration = Duration::from_millis(250);

async fn serve_snapshotter<S>(
    service: SnapshotsService<S>,
    socket: PathBuf,
    stop: impl std::future::Future<Output = ()> + Send,
) -> anyhow::Result<()>
where
    S: Snapshotter,
    S::Error: Into<tonic::Status>,
{
    serve_service(service, &socket, stop)
        .await
        .with_context(|| format!("failed to serve the snapshotter on {}", socket.display()))
}

async fn write_gpu_inventory(layout: &StoreLayout, probe: &ProbeOptions) {
    let path = layout.gpus_path();
    let probe = probe.clone();
    let result = tokio::task::spawn_blocking(move || {
        let inventory = gpu::probe(&probe);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        gpu::file::save(&path, &inventory).map_err(std::io::Error::other)?;
        Ok::<_, std::io::Error>((path, inventory))
    })
    .await;
    match result {
        Ok(Ok((path, inv))) => {
            tracing::info!(path = %path.display(), gpus = inv.gpus.len(), source = ?inv.source, notes = ?inv.notes, "GPU inventory written")
        }
        Ok(Err(e)) => tracing::error!(%e, "cannot write the GPU inventory; the hook will inject no cache"),
        Err(e) => tracing::error!(%e, "GPU probe failed"),
    }
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

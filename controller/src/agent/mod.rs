//! `kcache-controller node`: the node agent, a DaemonSet beside kcached.
//!
//! Watches TrustPolicy, TrustRoot, KernelCache and ClusterKernelCache; renders them into the
//! node's policy.d and caches.d ([`files`]); reads kcached's API (policy, caches) and the GPU
//! inventory; applies its KernelCacheNode status (server-side apply, its own field manager).
//! kcached needs no Kubernetes credentials, and when the API server or this agent is gone it
//! keeps enforcing the files last written.

pub mod files;
pub mod report;

use std::{path::PathBuf, sync::Arc, time::Duration};

use chrono::Utc;
use futures_util::StreamExt;
use kcache_core::cache::store::{CacheState, StoreLayout};
use kube::{
    api::{Patch, PatchParams},
    runtime::{
        reflector::{self, Store},
        watcher, WatchStreamExt,
    },
    Api, Client, ResourceExt,
};
use tokio::sync::Notify;

use self::{
    files::{CacheWant, NodeFiles},
    report::KcachedView,
};
use crate::{
    apply::apply_status,
    crd::{ClusterKernelCache, KernelCache, KernelCacheNode, KernelCacheNodeStatus, TrustPolicy, TrustRoot},
    error::Error,
    guard::Guard,
    metrics::Metrics,
};

/// `node`'s settings.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// This node's name (the KernelCacheNode's).
    pub node_name: String,
    /// The node's files.
    pub files: NodeFiles,
    /// kcached's config.toml (its `[cluster]` table is the guard).
    pub config_toml: PathBuf,
    /// kcached's API socket.
    pub kcached_socket: PathBuf,
    /// The cache store (read-only: records and container refs); `None`: not mounted.
    pub store: Option<StoreLayout>,
    /// gpus.json.
    pub gpus_json: PathBuf,
    /// kcached is polled this often.
    pub poll_every: Duration,
    /// The status is applied at least this often, changed or not (below the controller's
    /// stale time).
    pub heartbeat: Duration,
    /// Field manager.
    pub manager: String,
}

/// The objects the agent watches.
#[derive(Clone)]
pub struct Stores {
    /// TrustPolicies.
    pub policies: Store<TrustPolicy>,
    /// TrustRoots.
    pub roots: Store<TrustRoot>,
    /// KernelCaches.
    pub caches: Store<KernelCache>,
    /// ClusterKernelCaches.
    pub cluster_caches: Store<ClusterKernelCache>,
}

impl Stores {
    fn caches(&self) -> Vec<CacheWant> {
        let mut out: Vec<CacheWant> = self
            .caches
            .state()
            .iter()
            .map(|c| {
                let resolved = c.status.as_ref().and_then(|s| s.resolved_digest.clone());
                (c.namespace(), c.name_any(), c.spec.image.clone(), resolved)
            })
            .collect();
        out.extend(self.cluster_caches.state().iter().map(|c| {
            let resolved = c.status.as_ref().and_then(|s| s.resolved_digest.clone());
            (None, c.name_any(), c.spec.image.clone(), resolved)
        }));
        out
    }
}

/// One round: files, then kcached, then the status (applied when changed or due). Returns the
/// status applied or kept.
pub async fn round(
    cfg: &AgentConfig,
    stores: &Stores,
    kcached: &kcache_core::api::Client,
    api: &Api<KernelCacheNode>,
    last: Option<&KernelCacheNodeStatus>,
    last_applied: &mut Option<std::time::Instant>,
    metrics: &Metrics,
) -> Result<Round, Error> {
    let _timer = metrics.reconcile("node");
    let guard = match Guard::load(&cfg.config_toml) {
        Ok(g) => g,
        Err(e) => {
            // A broken [cluster] table must not open the node up: use the strict defaults.
            tracing::warn!(error = %crate::error_chain(&e), "using the default guard");
            Guard::default()
        }
    };
    let roots = stores
        .roots
        .state()
        .iter()
        .map(|r| (r.name_any(), r.spec.trusted_root.clone()))
        .collect();
    let policies = stores.policies.state();
    let n_policies = policies.len();
    let files = cfg.files.clone();
    let caches = stores.caches();
    let wanted = caches.clone();
    let outcome = tokio::task::spawn_blocking(move || {
        let refs: Vec<&TrustPolicy> = policies.iter().map(|p| p.as_ref()).collect();
        files.sync(&guard, &refs, &roots, &caches)
    })
    .await
    .map_err(|e| Error::Join(e.to_string()))?
    .map_err(Error::Sync)?;
    metrics.files_changed.inc_by(outcome.changed as u64);
    metrics.set_objects("TrustPolicy", n_policies);

    let view = KcachedView {
        policy: kcached.policy().await.map_err(|e| crate::error_chain(&e)),
        caches: kcached.caches().await.map_err(|e| crate::error_chain(&e)),
    };
    let expected = cfg.files.expected_generation();
    let gpus = match kcache_core::gpu::file::load(&cfg.gpus_json) {
        Ok(inv) => report::gpus(&inv),
        Err(e) => {
            tracing::debug!(error = %e, "no GPU inventory");
            Vec::new()
        }
    };
    let now = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let status = report::status(gpus, &view, outcome.policies, expected, cfg.store.as_ref(), last, &now);
    let unchanged = last.is_some_and(|l| same_but_time(l, &status));
    let due = last_applied.is_none_or(|t| t.elapsed() >= cfg.heartbeat);
    let files_changed = outcome.changed > 0;
    // kcached has not yet settled a cache this node wants: not reported, still pulling, or at
    // another digest than the one resolved for it.
    let settling = wanted.iter().any(|(ns, name, _, resolved)| {
        !status.caches.iter().any(|c| {
            c.name == *name
                && c.namespace == *ns
                && c.state != CacheState::Pending.as_str()
                && resolved.as_ref().is_none_or(|d| c.digest.as_ref() == Some(d))
        })
    });
    if unchanged && !due {
        let status = last.cloned().unwrap_or(status);
        return Ok(Round {
            status,
            files_changed,
            settling,
        });
    }
    apply_status(api, &cfg.node_name, &cfg.manager, &status).await?;
    *last_applied = Some(std::time::Instant::now());
    Ok(Round {
        status,
        files_changed,
        settling,
    })
}

/// What one agent round did.
#[derive(Debug)]
pub struct Round {
    /// The node's status as published.
    pub status: KernelCacheNodeStatus,
    /// Whether the round wrote or removed node files (kcached will act on them shortly).
    pub files_changed: bool,
    /// Whether a cache this node wants is not settled in kcached yet (not picked up, pulling,
    /// or at another digest).
    pub settling: bool,
}

/// How long to wait before the next round: [`SETTLE_POLL`] while kcached settles a change the
/// agent made (at most [`SETTLE_WINDOW`] after it), else `poll_every`.
fn next_poll(poll_every: Duration, settle_until: Option<std::time::Instant>) -> Duration {
    match settle_until {
        Some(t) if std::time::Instant::now() < t => SETTLE_POLL.min(poll_every),
        _ => poll_every,
    }
}

/// After the agent changes node files, kcached is asked this often until it has settled, so a
/// new cache shows up in the node's status within a fraction of a second of being ready rather
/// than a whole `poll_every` later.
const SETTLE_POLL: Duration = Duration::from_millis(200);
/// How long after a file change the agent keeps polling at [`SETTLE_POLL`] at most.
const SETTLE_WINDOW: Duration = Duration::from_secs(60);

/// Equal apart from `lastUpdate` and condition transition times.
fn same_but_time(a: &KernelCacheNodeStatus, b: &KernelCacheNodeStatus) -> bool {
    let strip = |s: &KernelCacheNodeStatus| {
        let mut s = s.clone();
        s.last_update = None;
        for c in &mut s.conditions {
            c.last_transition_time = None;
        }
        s
    };
    strip(a) == strip(b)
}

/// Runs the agent until SIGTERM / SIGINT.
pub async fn run(client: Client, cfg: AgentConfig, metrics: Arc<Metrics>) -> Result<(), Error> {
    let wake = Arc::new(Notify::new());
    macro_rules! reflect {
        ($kind:ty) => {{
            let (store, writer) = reflector::store();
            let wake = wake.clone();
            let stream = watcher(Api::<$kind>::all(client.clone()), watcher::Config::default())
                .default_backoff()
                .reflect(writer)
                .touched_objects()
                .for_each(move |r| {
                    if let Err(e) = r {
                        tracing::warn!(error = %e, kind = stringify!($kind), "watch");
                    }
                    wake.notify_one();
                    futures_util::future::ready(())
                });
            (store, tokio::spawn(stream))
        }};
    }
    let (policies, t1) = reflect!(TrustPolicy);
    let (roots, t2) = reflect!(TrustRoot);
    let (caches, t3) = reflect!(KernelCache);
    let (cluster_caches, t4) = reflect!(ClusterKernelCache);
    let stores = Stores {
        policies,
        roots,
        caches,
        cluster_caches,
    };
    // Never sync from half-filled stores: an empty store would remove every file.
    for ready in [
        stores.policies.wait_until_ready().await,
        stores.roots.wait_until_ready().await,
        stores.caches.wait_until_ready().await,
        stores.cluster_caches.wait_until_ready().await,
    ] {
        ready.map_err(|e| Error::Join(e.to_string()))?;
    }
    tracing::info!(node = %cfg.node_name, "watching; first sync");

    let api = Api::<KernelCacheNode>::all(client.clone());
    let object = serde_json::json!({
        "apiVersion": "kcache.dev/v1alpha1",
        "kind": "KernelCacheNode",
        "metadata": {"name": cfg.node_name},
        "spec": {"nodeName": cfg.node_name},
    });
    api.patch(
        &cfg.node_name,
        &PatchParams::apply(&cfg.manager).force(),
        &Patch::Apply(&object),
    )
    .await?;
    let kcached = kcache_core::api::Client::new(&cfg.kcached_socket);
    let mut last: Option<KernelCacheNodeStatus> = None;
    let mut last_applied = None;
    let mut backoff = Duration::from_secs(1);
    let mut settle_until: Option<std::time::Instant> = None;
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        match round(
            &cfg,
            &stores,
            &kcached,
            &api,
            last.as_ref(),
            &mut last_applied,
            &metrics,
        )
        .await
        {
            Ok(r) => {
                let now = std::time::Instant::now();
                if r.files_changed {
                    settle_until = Some(now + SETTLE_WINDOW);
                }
                if !r.settling {
                    settle_until = None;
                }
                last = Some(r.status);
                backoff = Duration::from_secs(1);
            }
            Err(e) => {
                metrics.failure("node", e.metric_label());
                tracing::warn!(error = %crate::error_chain(&e), retry_in = ?backoff, "node round failed");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {},
                    () = &mut shutdown => break,
                }
                backoff = (backoff * 2).min(Duration::from_secs(60));
                continue;
            }
        }
        tokio::select! {
            () = wake.notified() => {
                // Let a burst of watch events settle into one round.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            () = tokio::time::sleep(next_poll(cfg.poll_every, settle_until)) => {},
            () = &mut shutdown => break,
        }
    }
    for t in [t1, t2, t3, t4] {
        t.abort();
    }
    tracing::info!("node agent stopped; kcached keeps enforcing the files as they are");
    Ok(())
}

/// SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        () = term => {},
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    #[test]
    fn the_agent_polls_fast_only_while_a_change_it_made_settles() {
        let every = Duration::from_secs(5);
        assert_eq!(next_poll(every, None), every);
        assert_eq!(next_poll(every, Some(Instant::now() + SETTLE_WINDOW)), SETTLE_POLL);
        assert_eq!(next_poll(every, Some(Instant::now() - Duration::from_millis(1))), every);
        let fast = Duration::from_millis(50);
        assert_eq!(next_poll(fast, Some(Instant::now() + SETTLE_WINDOW)), fast);
    }
}

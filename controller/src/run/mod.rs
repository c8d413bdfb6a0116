//! `kcache-controller run`: the cluster controller.
//!
//! - TrustPolicy: checked by the node policy loader ([`crate::validate`]); status `Valid` with
//!   every problem, and how many nodes enforce or refuse its generation.
//! - TrustRoot: loaded by kcache-core's trusted-root loader; status `Valid` with the load error.
//! - KernelCache / ClusterKernelCache: a tag resolved once into `status.resolvedDigest`
//!   (re-resolved every `resolve_every`; a digest in spec is kept as is), node counts and
//!   conditions from the KernelCacheNode objects.
//! - KernelCacheNode: a report older than `stale_after` counts as stale (left out of the
//!   counts); one older than `delete_after` is deleted (the node is gone).
//!
//! Every status is applied whole with one field manager, so replicas agree without a leader.

mod cache;
mod policy;
mod root;

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use chrono::Utc;
use futures_util::{FutureExt, StreamExt};
use kube::{
    runtime::{
        controller::{Action, Controller},
        reflector::{self, Store},
        watcher, WatchStreamExt,
    },
    Api, Client, ResourceExt,
};

pub use cache::{reconcile_cache, CacheObject};
pub use policy::reconcile_policy;
pub use root::{reconcile_root, root_condition};

use crate::{
    aggregate::{tally, Fleet},
    apply::Events,
    crd::{ClusterKernelCache, KernelCache, KernelCacheNode, TrustPolicy, TrustRoot},
    error::Error,
    metrics::Metrics,
    render::TrustRoots,
};

/// `run`'s settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// A KernelCacheNode not refreshed for this long is stale.
    pub stale_after: Duration,
    /// One not refreshed for this long is deleted (`None`: never).
    pub delete_after: Option<Duration>,
    /// Tags are resolved again after this long.
    pub resolve_every: Duration,
    /// Every object is reconciled at least this often (node counts change without an event on
    /// the object itself).
    pub resync_every: Duration,
    /// Field manager for server-side apply.
    pub manager: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            stale_after: Duration::from_secs(300),
            delete_after: Some(Duration::from_secs(24 * 3600)),
            resolve_every: Duration::from_secs(600),
            resync_every: Duration::from_secs(15),
            manager: crate::apply::CONTROLLER_MANAGER.into(),
        }
    }
}

/// What every reconcile shares.
pub struct Context {
    /// The API client.
    pub client: Client,
    /// Settings.
    pub cfg: Config,
    /// Every KernelCacheNode (a reflector).
    pub nodes: Store<KernelCacheNode>,
    /// Every TrustRoot.
    pub roots: Store<TrustRoot>,
    /// Resolves tags (`None`: tags are left unresolved, with a condition saying so).
    pub registry: Option<Arc<kcache_core::registry::Client>>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Events, where served.
    pub events: Events,
    fleet: Mutex<Option<(Instant, u64, Arc<Fleet>)>>,
    nodes_synced: AtomicBool,
    /// Node events seen (the watch's applied objects).
    node_events: AtomicU64,
    /// Bumped at most every [`NODE_DEBOUNCE`] in which node events arrived: a tally is reused
    /// only within its epoch, and every counting status is reconciled at each new one.
    node_epoch: AtomicU64,
}

/// How long node events are gathered before the counts are redone.
const NODE_DEBOUNCE: Duration = Duration::from_millis(250);

impl Context {
    /// A context over these stores.
    pub fn new(
        client: Client,
        cfg: Config,
        nodes: Store<KernelCacheNode>,
        roots: Store<TrustRoot>,
        registry: Option<Arc<kcache_core::registry::Client>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let events = Events::new(client.clone(), "kcache-controller");
        Self {
            client,
            cfg,
            nodes,
            roots,
            registry,
            metrics,
            events,
            fleet: Mutex::new(None),
            nodes_synced: AtomicBool::new(false),
            node_events: AtomicU64::new(0),
            node_epoch: AtomicU64::new(0),
        }
    }

    /// Returns once the node store holds its first full list, and from then on [`Self::fleet`]
    /// counts. Await it in one place only: kube-runtime's store readiness wakes just the last
    /// task that polled it, so reconciles waiting on it each would hang (seen at 1,000+ nodes).
    pub async fn sync_nodes(&self) {
        if self.nodes.wait_until_ready().await.is_ok() {
            self.nodes_synced.store(true, Ordering::Release);
            tracing::info!(nodes = self.nodes.len(), "KernelCacheNode list synced");
        }
    }

    /// Counts one node event (an object applied to the node store).
    pub fn node_event(&self) {
        self.node_events.fetch_add(1, Ordering::Relaxed);
    }

    /// Once the node list is in, starts a new epoch every [`NODE_DEBOUNCE`] in which node events
    /// arrived, so node changes reach the counts within that time rather than at the next resync.
    async fn advance_node_epochs(&self) {
        let mut seen = 0;
        loop {
            tokio::time::sleep(NODE_DEBOUNCE).await;
            let events = self.node_events.load(Ordering::Relaxed);
            if self.nodes_synced.load(Ordering::Acquire) && events != seen {
                seen = events;
                self.node_epoch.fetch_add(1, Ordering::AcqRel);
            }
        }
    }

    /// The fleet tally, computed at most once a second and once a node epoch however many
    /// objects ask; `None` until
    /// the node store holds its first full list (before it, the store is empty, and counting it
    /// would publish zero nodes for every cache at each controller start).
    pub fn fleet(&self) -> Option<Arc<Fleet>> {
        if !self.nodes_synced.load(Ordering::Acquire) {
            return None;
        }
        let epoch = self.node_epoch.load(Ordering::Acquire);
        let mut slot = self.fleet.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, e, f)) = slot.as_ref() {
            if *e == epoch && at.elapsed() < Duration::from_secs(1) {
                return Some(f.clone());
            }
        }
        let nodes = self.nodes.state();
        let stale = chrono::Duration::from_std(self.cfg.stale_after).unwrap_or(chrono::Duration::MAX);
        let f = Arc::new(tally(nodes.iter().map(|n| n.as_ref()), Utc::now(), stale));
        self.metrics.stale_nodes.set(f.stale_nodes.len() as i64);
        self.metrics.set_objects("KernelCacheNode", nodes.len());
        *slot = Some((Instant::now(), epoch, f.clone()));
        Some(f)
    }

    /// The TrustRoots by name.
    pub fn trust_roots(&self) -> TrustRoots {
        self.roots
            .state()
            .iter()
            .map(|r| (r.name_any(), r.spec.trusted_root.clone()))
            .collect()
    }
}

/// Backoff after a failed reconcile: counted by kind, retried in 5 s, 10 s, ... up to 5 min.
pub fn error_policy<K: kube::Resource>(obj: Arc<K>, err: &Error, ctx: Arc<Context>) -> Action {
    let kind = std::any::type_name::<K>().rsplit("::").next().unwrap_or("object");
    let name = obj.meta().name.as_deref().unwrap_or("?");
    tracing::warn!(name, kind, error = %crate::error_chain(err), "reconcile failed");
    ctx.metrics.failure(kind, err.metric_label());
    Action::requeue(Duration::from_secs(15))
}

/// Runs the controller until SIGTERM / SIGINT.
pub async fn run(
    client: Client,
    cfg: Config,
    registry: Option<Arc<kcache_core::registry::Client>>,
    metrics: Arc<Metrics>,
) {
    let (nodes, node_writer) = reflector::store();
    // A streaming list (the API server sends the initial objects as watch events, from its
    // watch cache) never holds a page of thousands of nodes in memory at once.
    // TrustRoots: the controller's own store doubles as the roots TrustPolicies render with.
    let roots_ctl = Controller::new(Api::<TrustRoot>::all(client.clone()), watcher::Config::default());
    let ctx = Arc::new(Context::new(
        client.clone(),
        cfg.clone(),
        nodes,
        roots_ctl.store(),
        registry,
        metrics,
    ));
    let node_stream = watcher(
        Api::<KernelCacheNode>::all(client.clone()),
        watcher::Config::default().streaming_lists(),
    )
    .default_backoff()
    // The store keeps only what the tally reads.
    .modify(crate::aggregate::slim)
    .reflect(node_writer)
    .applied_objects()
    .for_each(|_| {
        ctx.node_event();
        futures_util::future::ready(())
    });

    // Every status that counts nodes is reconciled again the moment the node list is in, not
    // on the next resync tick.
    let synced = {
        let ctx = ctx.clone();
        async move { ctx.sync_nodes().await }.boxed().shared()
    };
    let tick = || {
        futures_util::stream::select(
            futures_util::stream::select(interval(cfg.resync_every), node_epochs(ctx.clone())),
            futures_util::stream::once(synced.clone()),
        )
    };
    let policies = Controller::new(Api::<TrustPolicy>::all(client.clone()), watcher::Config::default())
        .reconcile_all_on(tick())
        .shutdown_on_signal()
        .run(reconcile_policy, error_policy, ctx.clone())
        .for_each(log_result);
    let caches = Controller::new(Api::<KernelCache>::all(client.clone()), watcher::Config::default())
        .reconcile_all_on(tick())
        .shutdown_on_signal()
        .run(reconcile_cache::<KernelCache>, error_policy, ctx.clone())
        .for_each(log_result);
    let cluster_caches = Controller::new(
        Api::<ClusterKernelCache>::all(client.clone()),
        watcher::Config::default(),
    )
    .reconcile_all_on(tick())
    .shutdown_on_signal()
    .run(reconcile_cache::<ClusterKernelCache>, error_policy, ctx.clone())
    .for_each(log_result);
    let trust_roots = roots_ctl
        .reconcile_all_on(tick())
        .shutdown_on_signal()
        .run(reconcile_root, error_policy, ctx.clone())
        .for_each(log_result);
    let gc = gc_stale_nodes(ctx.clone());
    // The controllers end on the signal; the watchers and GC loop end with them.
    tokio::select! {
        _ = async { tokio::join!(policies, caches, cluster_caches, trust_roots) } => {},
        () = node_stream => {},
        () = gc => {},
        () = ctx.advance_node_epochs() => {},
    }
    tracing::info!("controller stopped");
}

async fn log_result<T: std::fmt::Debug, E: std::fmt::Display>(r: Result<T, E>) {
    match r {
        Ok(o) => tracing::debug!(object = ?o, "reconciled"),
        Err(e) => tracing::debug!(error = %e, "controller"),
    }
}

/// A stream that yields every `every`, first after one period.
fn interval(every: Duration) -> impl futures_util::Stream<Item = ()> + Send + 'static {
    futures_util::stream::unfold((), move |()| async move {
        tokio::time::sleep(every).await;
        Some(((), ()))
    })
}

/// Yields when a new node epoch starts (checked every [`NODE_DEBOUNCE`]).
fn node_epochs(ctx: Arc<Context>) -> impl futures_util::Stream<Item = ()> + Send + 'static {
    futures_util::stream::unfold((ctx, 0), |(ctx, seen)| async move {
        loop {
            tokio::time::sleep(NODE_DEBOUNCE).await;
            let epoch = ctx.node_epoch.load(Ordering::Acquire);
            if epoch != seen {
                return Some(((), (ctx, epoch)));
            }
        }
    })
}

/// Deletes KernelCacheNodes whose report is older than `delete_after`.
async fn gc_stale_nodes(ctx: Arc<Context>) {
    let Some(after) = ctx.cfg.delete_after else {
        return std::future::pending().await;
    };
    let api = Api::<KernelCacheNode>::all(ctx.client.clone());
    let after_c = chrono::Duration::from_std(after).unwrap_or(chrono::Duration::MAX);
    loop {
        tokio::time::sleep(ctx.cfg.resync_every.max(Duration::from_secs(1))).await;
        for node in ctx.nodes.state() {
            if crate::aggregate::is_stale(node.status.as_ref(), Utc::now(), after_c) && node.status.is_some() {
                let name = node.name_any();
                match api.delete(&name, &Default::default()).await {
                    Ok(_) => tracing::info!(node = %name, "deleted a KernelCacheNode not refreshed in {after:?}"),
                    Err(e) => tracing::warn!(node = %name, error = %e, "cannot delete stale KernelCacheNode"),
                }
            }
        }
    }
}

//! The cache manager: pulls approved cache images into the node store, keeps `state.json`, and
//! collects the garbage. kcached runs [`CacheManager::run_once`] at start, every few minutes and
//! whenever caches.d or the policy changes; `kcache cache pull|gc` call the same code.
//!
//! # A pull, step by step
//! 1. The reference is resolved to a manifest digest once; everything after uses that digest.
//! 2. The verifier checks exactly that digest against the policy ([`PullError::Denied`] names
//!    the image, digest, rule and reason). A cache holds `.so` launchers Triton loads: it is
//!    code, so it passes the same gate as an image.
//! 3. The manifest is fetched by digest (so its bytes are the verified ones). An index is
//!    allowed: it was the thing verified, and the platform manifest is chosen from its bytes
//!    and fetched by the digest listed there.
//! 4. The config gives the cache metadata ([`CacheImageMeta`]); the image must have exactly one
//!    layer of a tar or tar+gzip media type.
//! 5. The layer blob is streamed (never held in memory) into [`extract_once_checked`]. The blob
//!    is hashed while it streams; the temp tree is renamed into place only after the stream
//!    ended with a matching digest and size, so bytes that fail the check are never visible.
//! 6. `record.json` is written last, atomically: the entry exists from then on.
//!
//! A digest already in the store (its `record.json` exists) is not downloaded again. Two pulls
//! of one digest in this process share one download (a per-digest lock); across processes the
//! extraction lock makes the second wait and find the tree present.
//!
//! # Locks and GC ([`crate::cache::gc`])
//! A pull holds the entry's `.lock` shared from creating the entry dir until the record is
//! written, like the hook adding a ref. GC ([`gc::gc`], after every round) takes it exclusively
//! without waiting; it is the same function `kcache cache gc` runs.

use std::{
    collections::HashMap,
    io::{self, Read},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::Serialize;

use crate::{
    cache::{
        approved::{self, ApprovedCache},
        extract::{extract_once_checked, ExtractError, ExtractLimits, ExtractOutcome},
        format::{layer_compression, CacheImageMeta, LayerCompression},
        gc::{self, gc_entry, EntryLock, GcReport},
        grp,
        meta::GpuInventory,
        store::{
            CacheRecord, CacheState, CacheStatus, GpuMismatch, NodeCaches, StoreLayout, VerificationRecord,
            RECORD_FILE, TREE_DIR,
        },
    },
    digest::Digest,
    fsutil::write_atomic,
    gpu::compat,
    policy::{Decision, Policy},
    registry::{Client, Reference, RegistryError},
    verifier::{ImageVerdict, Verifier},
};

/// Largest image config read.
const MAX_CONFIG_BYTES: usize = 1 << 20;
/// Tar overhead allowed on top of [`ExtractLimits::max_bytes`] for the layer blob's size.
const LAYER_OVERHEAD: u64 = 1 << 30;
/// Room for the manifest dir on top of the size label (which counts the cache dir only).
const MANIFEST_ROOM: u64 = 4 << 20;

/// Where a pull is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Resolving the reference to a digest.
    Resolving,
    /// Checking the signature against the policy.
    Verifying,
    /// Reading the manifest and config.
    Fetching,
    /// Downloading and extracting the layer.
    Downloading,
    /// Done (extracted, or already present).
    Done,
}

/// A progress report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Progress {
    /// The phase.
    pub phase: Phase,
    /// Layer bytes downloaded so far.
    pub bytes: u64,
    /// The layer's size, once known.
    pub total: Option<u64>,
}

impl Progress {
    fn at(phase: Phase) -> Self {
        Self {
            phase,
            bytes: 0,
            total: None,
        }
    }
}

/// Whether a pull did the work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PullOutcome {
    /// This pull downloaded and extracted the layer.
    Extracted,
    /// The entry was there already (or another pull made it meanwhile).
    Present,
}

/// Why a pull failed. Every message names the image and, once known, the digest.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// The reference does not parse.
    #[error("invalid cache image reference {image:?}: {source}")]
    Reference {
        /// The image.
        image: String,
        /// Why.
        source: crate::registry::ReferenceError,
    },
    /// The policy denies the digest.
    #[error("cache image {image} ({digest}) denied by rule {rule}: {reason}")]
    Denied {
        /// The image.
        image: String,
        /// The digest verified.
        digest: String,
        /// The deciding rule (`<default>` for the policy default).
        rule: String,
        /// Why.
        reason: String,
    },
    /// A registry request failed.
    #[error("cache image {image}{}: {what}: {source}", at(digest))]
    Registry {
        /// The image.
        image: String,
        /// The digest, once resolved.
        digest: Option<String>,
        /// What was being fetched.
        what: String,
        /// Why.
        source: Box<RegistryError>,
    },
    /// The image is not a cache image kcache can use.
    #[error("cache image {image} ({digest}) is not a usable cache image: {reason}")]
    Format {
        /// The image.
        image: String,
        /// Its digest.
        digest: String,
        /// Why.
        reason: String,
    },
    /// Extraction failed (a hostile or broken layer, or the store).
    #[error("cache image {image} ({digest}): extracting layer {layer} failed: {}", chain(source))]
    Extract {
        /// The image.
        image: String,
        /// Its digest.
        digest: String,
        /// The layer digest.
        layer: String,
        /// Why.
        source: Box<ExtractError>,
    },
    /// The store could not be written.
    #[error("cache store {path}: {source}")]
    Store {
        /// Where.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
}

fn at(digest: &Option<String>) -> String {
    digest.as_ref().map(|d| format!(" ({d})")).unwrap_or_default()
}

/// An error and its sources, on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(cause) = src {
        s = format!("{s}: {cause}");
        src = cause.source();
    }
    s
}

impl PullError {
    fn store(path: &Path) -> impl FnOnce(io::Error) -> Self + '_ {
        move |source| Self::Store {
            path: path.to_owned(),
            source,
        }
    }

    /// Whether the policy denied the image (as opposed to a failure).
    pub fn is_denied(&self) -> bool {
        matches!(self, Self::Denied { .. })
    }

    /// Whether the image was refused: denied by the policy, or its content failed a check
    /// (not a cache image, a hostile layer, content other than its digest or size says). The
    /// rest (a bad reference, an unreachable registry, the store) failed to decide.
    pub fn is_rejection(&self) -> bool {
        match self {
            Self::Denied { .. } | Self::Format { .. } | Self::Extract { .. } => true,
            Self::Registry { source, .. } => source.is_bad_content(),
            Self::Reference { .. } | Self::Store { .. } => false,
        }
    }
}

/// Counters, for metrics and tests.
#[derive(Debug, Default)]
pub struct Stats {
    /// Layer downloads started.
    pub downloads: AtomicU64,
    /// Layers extracted and committed.
    pub extractions: AtomicU64,
    /// Pulls that found the entry present.
    pub present: AtomicU64,
}

/// What one [`CacheManager::run_once`] did.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// The state written.
    pub state: NodeCaches,
    /// caches.d problems (those files' caches were left out).
    pub problems: Vec<String>,
    /// The GC that followed.
    pub gc: GcReport,
}

/// The node's cache manager.
pub struct CacheManager {
    layout: StoreLayout,
    client: Arc<Client>,
    verifier: Arc<Verifier>,
    limits: ExtractLimits,
    blob_timeout: Duration,
    inflight: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    stats: Stats,
}

impl CacheManager {
    /// A manager for the store at `layout`, pulling through `client` and verifying with
    /// `verifier` (which should use the same client settings).
    pub fn new(layout: StoreLayout, client: Arc<Client>, verifier: Arc<Verifier>, limits: ExtractLimits) -> Self {
        Self {
            layout,
            client,
            verifier,
            limits,
            blob_timeout: Duration::from_secs(3600),
            inflight: Mutex::new(HashMap::new()),
            stats: Stats::default(),
        }
    }

    /// The store layout.
    pub fn layout(&self) -> &StoreLayout {
        &self.layout
    }

    /// The counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Pulls `image` (tag or digest) into the store if the policy permits its digest; returns
    /// the entry's record. See the module docs for the steps.
    pub async fn pull(
        &self,
        policy: &Policy,
        generation: u64,
        image: &str,
        progress: &(dyn Fn(Progress) + Sync),
    ) -> Result<CacheRecord, PullError> {
        self.pull_with_outcome(policy, generation, image, progress)
            .await
            .map(|(record, _)| record)
    }

    /// [`Self::pull`], also saying whether this call did the work.
    pub async fn pull_with_outcome(
        &self,
        policy: &Policy,
        generation: u64,
        image: &str,
        progress: &(dyn Fn(Progress) + Sync),
    ) -> Result<(CacheRecord, PullOutcome), PullError> {
        let r = Reference::parse(image).map_err(|source| PullError::Reference {
            image: image.to_string(),
            source,
        })?;
        let reg_err = |digest: Option<&Digest>, what: String| {
            let digest = digest.map(Digest::to_string);
            move |source: RegistryError| PullError::Registry {
                image: image.to_string(),
                digest,
                what,
                source: Box::new(source),
            }
        };
        // 1. One digest.
        progress(Progress::at(Phase::Resolving));
        let digest = match &r.digest {
            Some(d) => d.clone(),
            None => {
                self.client
                    .resolve(&r)
                    .await
                    .map_err(reg_err(None, "resolving the tag".into()))?
                    .digest
            }
        };
        // 2. The policy, for exactly that digest.
        progress(Progress::at(Phase::Verifying));
        let verdict = self.verifier.verify_digest(policy, &r, &digest).await;
        // Only a real allow: warn mode lets a failing *image* run with a warning, and mode off
        // verifies nothing, but a kernel cache is code that kcache itself puts into containers.
        let refused = match verdict.decision {
            crate::policy::Decision::Allow => None,
            crate::policy::Decision::Deny => Some(verdict.reason.clone()),
            crate::policy::Decision::AllowWithWarning => Some(format!(
                "{} (warn mode lets images through, but a kernel cache is code kcache injects: it must pass)",
                verdict.reason
            )),
            crate::policy::Decision::Unchecked => {
                Some("policy mode is off: kernel caches are only injected when the policy verifies them".into())
            }
        };
        if let Some(reason) = refused {
            return Err(PullError::Denied {
                image: image.to_string(),
                digest: digest.to_string(),
                rule: verdict.rule.clone().unwrap_or_else(|| "<default>".into()),
                reason,
            });
        }
        // In-process single flight: a second pull of this digest waits here, then finds the
        // record.
        let gate = {
            let mut map = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(digest.to_string()).or_default().clone()
        };
        let _flight = gate.lock().await;
        let result = self
            .pull_verified(generation, image, &r, &digest, &verdict, progress)
            .await;
        {
            let mut map = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
            if Arc::strong_count(&gate) <= 2 {
                map.remove(digest.as_str());
            }
        }
        result
    }

    async fn pull_verified(
        &self,
        generation: u64,
        image: &str,
        r: &Reference,
        digest: &Digest,
        verdict: &ImageVerdict,
        progress: &(dyn Fn(Progress) + Sync),
    ) -> Result<(CacheRecord, PullOutcome), PullError> {
        if let Some(record) = self.present(digest)? {
            self.stats.present.fetch_add(1, Ordering::Relaxed);
            progress(Progress::at(Phase::Done));
            return Ok((record, PullOutcome::Present));
        }
        let reg_err = |what: String| {
            move |source: RegistryError| PullError::Registry {
                image: image.to_string(),
                digest: Some(digest.to_string()),
                what,
                source: Box::new(source),
            }
        };
        let format_err = |reason: String| PullError::Format {
            image: image.to_string(),
            digest: digest.to_string(),
            reason,
        };
        // 3. The manifest, by digest; through an index to the platform manifest.
        progress(Progress::at(Phase::Fetching));
        let mut manifest = self
            .client
            .manifest(r, digest.as_str())
            .await
            .map_err(reg_err("fetching the manifest".into()))?;
        let mut doc: serde_json::Value =
            serde_json::from_slice(&manifest.bytes).map_err(|e| format_err(format!("manifest is not JSON: {e}")))?;
        if doc.get("manifests").is_some() {
            let child = choose_platform(&doc).map_err(format_err)?;
            manifest = self
                .client
                .manifest(r, child.as_str())
                .await
                .map_err(reg_err(format!("fetching platform manifest {child}")))?;
            doc = serde_json::from_slice(&manifest.bytes)
                .map_err(|e| format_err(format!("platform manifest {child} is not JSON: {e}")))?;
        }
        let desc = |v: &serde_json::Value, what: &str| -> Result<(Digest, u64, String), PullError> {
            let d = v
                .get("digest")
                .and_then(|d| d.as_str())
                .and_then(|d| Digest::parse(d).ok())
                .ok_or_else(|| format_err(format!("{what} has no valid digest")))?;
            let size = v
                .get("size")
                .and_then(|s| s.as_u64())
                .ok_or_else(|| format_err(format!("{what} has no size")))?;
            let media = v.get("mediaType").and_then(|m| m.as_str()).unwrap_or_default();
            Ok((d, size, media.to_string()))
        };
        let (config_digest, config_size, _) = desc(
            doc.get("config")
                .ok_or_else(|| format_err("manifest has no config".into()))?,
            "config",
        )?;
        if config_size > MAX_CONFIG_BYTES as u64 {
            return Err(format_err(format!(
                "config is {config_size} bytes, over the {MAX_CONFIG_BYTES}-byte limit"
            )));
        }
        let layers = doc
            .get("layers")
            .and_then(|l| l.as_array())
            .ok_or_else(|| format_err("manifest has no layers".into()))?;
        if layers.len() != 1 {
            return Err(format_err(format!(
                "a cache image has exactly one layer; this one has {}",
                layers.len()
            )));
        }
        let (layer_digest, layer_size, layer_media) = desc(&layers[0], "layer")?;
        let gzip = match layer_compression(&layer_media) {
            Some(LayerCompression::Gzip) => true,
            Some(LayerCompression::None) => false,
            None => {
                return Err(format_err(format!(
                    "layer media type {layer_media:?} is not tar or tar+gzip"
                )))
            }
        };
        let max_layer = self.limits.max_bytes.saturating_add(LAYER_OVERHEAD);
        if layer_size > max_layer {
            return Err(format_err(format!(
                "layer is {layer_size} bytes, over the {max_layer}-byte limit"
            )));
        }
        // 4. The metadata.
        let config = self
            .client
            .blob(r, &config_digest, MAX_CONFIG_BYTES)
            .await
            .map_err(reg_err(format!("fetching config {config_digest}")))?;
        let meta = CacheImageMeta::from_config_json(&config).map_err(|e| format_err(chain(&e)))?;
        let mut limits = self.limits.clone();
        if let Some(declared) = meta.cache_size_bytes {
            // The label counts the cache dir only; the layer also holds the manifest dir
            // (`manifest.json`, about a line per kernel).
            let manifest_room = MANIFEST_ROOM.saturating_add(meta.entry_count.unwrap_or(0).saturating_mul(4096));
            let bound = declared.saturating_add(manifest_room);
            limits.expected_bytes = Some(limits.expected_bytes.map_or(bound, |e| e.min(bound)));
        }
        // 5. Download + extract under the entry's shared lock, in a blocking thread.
        let job = Job {
            layout: self.layout.clone(),
            client: self.client.clone(),
            handle: tokio::runtime::Handle::current(),
            r: r.clone(),
            digest: digest.clone(),
            layer_digest: layer_digest.clone(),
            layer_size,
            gzip,
            limits,
            timeout: self.blob_timeout,
            bytes: Arc::new(AtomicU64::new(0)),
            blob_error: Arc::new(Mutex::new(None)),
            record: RecordInput {
                image: format!("{}@{digest}", r.name()),
                meta,
                verification: VerificationRecord {
                    rule: verdict.rule.clone().unwrap_or_else(|| "<default>".into()),
                    decision: decision_name(verdict).into(),
                    signer: verdict.signer.as_ref().map(ToString::to_string),
                    tlog_index: verdict.tlog_index,
                    verified_at: now(),
                    policy_generation: generation,
                },
            },
        };
        let bytes = job.bytes.clone();
        let blob_error = job.blob_error.clone();
        let downloads = &self.stats.downloads;
        let mut task = tokio::task::spawn_blocking(move || job.run());
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let joined = loop {
            tokio::select! {
                j = &mut task => break j,
                _ = tick.tick() => progress(Progress {
                    phase: Phase::Downloading,
                    bytes: bytes.load(Ordering::Relaxed),
                    total: Some(layer_size),
                }),
            }
        };
        let outcome = match joined {
            Ok(o) => o,
            Err(e) => {
                return Err(PullError::Store {
                    path: self.layout.entry_dir(digest),
                    source: io::Error::other(format!("extraction task failed: {e}")),
                })
            }
        };
        let (record, extracted) = match outcome {
            Ok(v) => v,
            Err(JobError::Store(e)) => return Err(*e),
            Err(JobError::Extract(source)) => {
                let blob = blob_error.lock().unwrap_or_else(|p| p.into_inner()).take();
                if let Some(source) = blob {
                    return Err(reg_err(format!("downloading layer {layer_digest}"))(source));
                }
                return Err(PullError::Extract {
                    image: image.to_string(),
                    digest: digest.to_string(),
                    layer: layer_digest.to_string(),
                    source: Box::new(source),
                });
            }
        };
        if bytes.load(Ordering::Relaxed) > 0 {
            downloads.fetch_add(1, Ordering::Relaxed);
        }
        let outcome = if extracted {
            self.stats.extractions.fetch_add(1, Ordering::Relaxed);
            PullOutcome::Extracted
        } else {
            self.stats.present.fetch_add(1, Ordering::Relaxed);
            PullOutcome::Present
        };
        progress(Progress {
            phase: Phase::Done,
            bytes: bytes.load(Ordering::Relaxed),
            total: Some(layer_size),
        });
        Ok((record, outcome))
    }

    /// The record of `digest` when its entry is complete.
    fn present(&self, digest: &Digest) -> Result<Option<CacheRecord>, PullError> {
        self.layout.read_record(digest).map_err(|e| PullError::Store {
            path: self.layout.record_path(digest),
            source: io::Error::other(e.to_string()),
        })
    }

    /// Pulls every approved cache, checks each against the GPUs and writes `state.json` (one
    /// generation up). One failing cache does not hold up the others; when a re-pull fails but
    /// the previous copy is still in the store, that copy stays in use (state `ready`, with the
    /// failure as the reason). A denied cache loses its copy (GC removes it once unused).
    pub async fn reconcile(
        &self,
        policy: &Policy,
        generation: u64,
        approved: &[ApprovedCache],
        gpus: &GpuInventory,
    ) -> NodeCaches {
        let prev = self.layout.read_state().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot read the previous cache state; starting afresh");
            NodeCaches::default()
        });
        let noop = |_: Progress| {};
        let pulls = approved.iter().map(|a| self.pull(policy, generation, &a.image, &noop));
        let results = futures_util::future::join_all(pulls).await;
        let mut caches = Vec::new();
        for (a, result) in approved.iter().zip(results) {
            let old = prev
                .caches
                .iter()
                .find(|c| c.name == a.name && c.namespace == a.namespace);
            let mut status = CacheStatus {
                name: a.name.clone(),
                namespace: a.namespace.clone(),
                image: a.image.clone(),
                state: CacheState::Pending,
                digest: None,
                reason: None,
                compatible_gpus: vec![],
                incompatible_gpus: vec![],
                updated_at: now(),
            };
            match result {
                Ok(record) => {
                    status.state = CacheState::Ready;
                    status.digest = Some(record.digest.clone());
                    (status.compatible_gpus, status.incompatible_gpus) = compat_of(&record, gpus);
                }
                Err(e) if e.is_denied() => {
                    tracing::warn!(cache = %a.name, error = %e, "approved cache denied by the policy");
                    status.state = CacheState::Denied;
                    status.reason = Some(e.to_string());
                }
                Err(e) => {
                    tracing::warn!(cache = %a.name, error = %e, "cache pull failed");
                    let kept = old
                        .filter(|o| o.image == a.image || o.state == CacheState::Ready)
                        .and_then(|o| o.digest.as_ref())
                        .and_then(|d| self.layout.read_record(d).ok().flatten());
                    match kept {
                        Some(record) => {
                            status.state = CacheState::Ready;
                            status.digest = Some(record.digest.clone());
                            status.reason = Some(format!("re-pull failed, previous copy still in use: {e}"));
                            (status.compatible_gpus, status.incompatible_gpus) = compat_of(&record, gpus);
                        }
                        None => {
                            status.state = CacheState::Failed;
                            status.reason = Some(e.to_string());
                        }
                    }
                }
            }
            if let Some(o) = old {
                if o.state == status.state && o.digest == status.digest && o.reason == status.reason {
                    status.updated_at = o.updated_at;
                }
            }
            caches.push(status);
        }
        caches.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        let state = NodeCaches {
            generation: prev.generation + 1,
            updated_at: now(),
            caches,
        };
        if let Err(e) = write_state(&self.layout, &state) {
            tracing::error!(error = %e, "cannot write the cache state");
        }
        state
    }

    /// Removes the entries `state` does not point at and no container uses; see [`gc::gc`].
    pub fn gc(&self, state: &NodeCaches) -> GcReport {
        gc::gc(&self.layout, state, false)
    }

    /// One round for the daemon: read caches.d (broken files are reported and their caches
    /// left out), reconcile, then GC against the new state. Call it at start, every few minutes
    /// (`approved::dir_fingerprint` tells whether caches.d changed in between) and after a
    /// policy reload.
    pub async fn run_once(&self, policy: &Policy, caches_dir: &Path, gpus: &GpuInventory) -> RunReport {
        let (approved, problems) = approved::load_dir_lenient(caches_dir);
        for p in &problems {
            tracing::warn!(problem = %p, "caches.d problem; its caches are not approved");
        }
        let state = self.reconcile(policy, policy.generation, &approved, gpus).await;
        let gc = {
            let (layout, state) = (self.layout.clone(), state.clone());
            tokio::task::spawn_blocking(move || gc::gc(&layout, &state, false))
                .await
                .unwrap_or_else(|e| GcReport {
                    errors: vec![format!("gc task failed: {e}")],
                    ..GcReport::default()
                })
        };
        RunReport {
            state,
            problems: problems.iter().map(ToString::to_string).collect(),
            gc,
        }
    }

    /// The daemon's loop: [`Self::run_once`] at start, again whenever caches.d changes
    /// ([`approved::dir_fingerprint`]) or the policy generation changes (checked every `poll`),
    /// and at least every `every`; until `stop` resolves. `current` returns the policy in force
    /// (kcached: its hot-reloaded policy store; `impl AsRef<Policy> for LoadedPolicy`). The GPU
    /// inventory is read from `<run-dir>/gpus.json` each round (kcached writes it at start); a
    /// missing or broken file counts as no GPUs. `on_report` sees every round's result (metrics).
    pub async fn watch<F, P>(
        self: Arc<Self>,
        caches_dir: PathBuf,
        every: Duration,
        poll: Duration,
        current: F,
        on_report: impl Fn(&RunReport) + Send,
        stop: impl std::future::Future<Output = ()> + Send,
    ) where
        F: Fn() -> Arc<P> + Send,
        P: AsRef<Policy> + Send + Sync,
    {
        tokio::pin!(stop);
        let mut last: Option<(u64, u64)> = None;
        let mut last_run = std::time::Instant::now();
        loop {
            let held = current();
            let policy: &Policy = P::as_ref(&held);
            let key = (approved::dir_fingerprint(&caches_dir), policy.generation);
            if last != Some(key) || last_run.elapsed() >= every {
                let gpus = self.gpu_inventory();
                let round = self.run_once(policy, &caches_dir, &gpus);
                let report = tokio::select! {
                    r = round => r,
                    () = &mut stop => return,
                };
                let ready = report
                    .state
                    .caches
                    .iter()
                    .filter(|c| c.state == CacheState::Ready)
                    .count();
                tracing::info!(
                    generation = report.state.generation,
                    caches = report.state.caches.len(),
                    ready,
                    removed = report.gc.removed.len(),
                    problems = report.problems.len(),
                    "cache store reconciled"
                );
                on_report(&report);
                last = Some(key);
                last_run = std::time::Instant::now();
            }
            tokio::select! {
                () = tokio::time::sleep(poll) => {}
                () = &mut stop => return,
            }
        }
    }

    /// `<run-dir>/gpus.json`, or no GPUs when it cannot be read.
    pub fn gpu_inventory(&self) -> GpuInventory {
        match std::fs::read(self.layout.gpus_path()) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(path = %self.layout.gpus_path().display(), error = %e, "unreadable GPU inventory");
                empty_inventory()
            }),
            Err(_) => empty_inventory(),
        }
    }

    /// Precomputes the `__grp__` rewrite of `digest` for the cache mounted at `target`
    /// (`<entry>/grp/<key>/`, an overlay lower layer above `tree/<cache_subdir>`), once; returns
    /// its path, or `None` when it needs no rewrite (the root its `__grp__` files name, see
    /// [`grp::infer_root`], is `target` already, or they name none).
    pub fn prepare_grp(&self, digest: &Digest, target: &str) -> Result<Option<PathBuf>, PullError> {
        prepare_grp(&self.layout, digest, target)
    }
}

fn empty_inventory() -> GpuInventory {
    GpuInventory {
        source: crate::cache::meta::InventorySource::None,
        gpus: Vec::new(),
        notes: vec!["no GPU inventory file".into()],
    }
}

fn decision_name(v: &ImageVerdict) -> &'static str {
    match v.decision {
        Decision::Allow if v.signer.is_some() => "verified",
        Decision::Allow => "allowed",
        Decision::AllowWithWarning => "allowed-with-warning",
        Decision::Unchecked => "unchecked",
        Decision::Deny => "denied",
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Picks the manifest for this node's platform from an index: the only one, else `linux` and
/// this machine's architecture.
fn choose_platform(index: &serde_json::Value) -> Result<Digest, String> {
    let list = index
        .get("manifests")
        .and_then(|m| m.as_array())
        .ok_or("index has no manifests")?;
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "powerpc64" => "ppc64le",
        other => other,
    };
    let candidates: Vec<&serde_json::Value> = list
        .iter()
        .filter(|m| {
            // Attestation manifests (buildx) are not images.
            m.pointer("/annotations/vnd.docker.reference.type").is_none()
        })
        .collect();
    let chosen = match candidates.as_slice() {
        [] => return Err("index lists no manifest".into()),
        [one] => *one,
        many => many
            .iter()
            .find(|m| {
                m.pointer("/platform/os").and_then(|v| v.as_str()) == Some("linux")
                    && m.pointer("/platform/architecture").and_then(|v| v.as_str()) == Some(arch)
            })
            .copied()
            .ok_or_else(|| format!("index has no manifest for linux/{arch}"))?,
    };
    chosen
        .get("digest")
        .and_then(|d| d.as_str())
        .and_then(|d| Digest::parse(d).ok())
        .ok_or_else(|| "index entry has no valid digest".into())
}

/// The compatible GPU ids and a reason for each other GPU.
pub fn compat_of(record: &CacheRecord, gpus: &GpuInventory) -> (Vec<String>, Vec<GpuMismatch>) {
    let c = compat::check(&record.targets, &record.requirements, &gpus.gpus);
    let bad = c
        .incompatible
        .into_iter()
        .map(|(gpu, reason)| GpuMismatch {
            gpu,
            reason: reason.to_string(),
        })
        .collect();
    (c.compatible, bad)
}

/// Writes `state.json` atomically.
pub fn write_state(layout: &StoreLayout, state: &NodeCaches) -> io::Result<()> {
    std::fs::create_dir_all(layout.root())?;
    let json = serde_json::to_vec_pretty(state).map_err(io::Error::other)?;
    write_atomic(&layout.state_path(), &json, 0o644, true)
}

// ---- the blocking part of a pull ----

struct RecordInput {
    image: String,
    meta: CacheImageMeta,
    verification: VerificationRecord,
}

struct Job {
    layout: StoreLayout,
    client: Arc<Client>,
    handle: tokio::runtime::Handle,
    r: Reference,
    digest: Digest,
    layer_digest: Digest,
    layer_size: u64,
    gzip: bool,
    limits: ExtractLimits,
    timeout: Duration,
    bytes: Arc<AtomicU64>,
    blob_error: Arc<Mutex<Option<RegistryError>>>,
    record: RecordInput,
}

enum JobError {
    Store(Box<PullError>),
    Extract(ExtractError),
}

impl Job {
    fn run(self) -> Result<(CacheRecord, bool), JobError> {
        let result = self.run_locked();
        if result.is_err() {
            // Leave no empty entry behind a failed pull (a busy or non-empty one stays).
            let entry = self.layout.entry_dir(&self.digest);
            let hex = self.digest.hex().to_string();
            if !entry.join(TREE_DIR).exists() && !entry.join(RECORD_FILE).exists() {
                if let Err(e) = gc_entry(&self.layout, &entry, &hex, false) {
                    tracing::debug!(entry = %entry.display(), error = %e, "cannot remove the failed pull's entry");
                }
            }
        }
        result
    }

    fn run_locked(&self) -> Result<(CacheRecord, bool), JobError> {
        let entry = self.layout.entry_dir(&self.digest);
        let store_err = |path: &Path| {
            let path = path.to_owned();
            move |source| JobError::Store(Box::new(PullError::Store { path, source }))
        };
        let _lock = EntryLock::shared(&self.layout, &self.digest).map_err(store_err(&entry))?;
        if let Some(record) = self.layout.read_record(&self.digest).ok().flatten() {
            return Ok((record, false));
        }
        let verified = Arc::new(AtomicBool::new(false));
        let open = || -> io::Result<BlobReader> {
            let stream = self
                .handle
                .block_on(self.client.blob_stream(
                    &self.r,
                    &self.layer_digest,
                    Some(self.layer_size),
                    self.layer_size,
                    self.timeout,
                ))
                .map_err(|e| {
                    let msg = e.to_string();
                    *self.blob_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                    io::Error::other(msg)
                })?;
            Ok(BlobReader {
                handle: self.handle.clone(),
                stream,
                buf: Vec::new(),
                pos: 0,
                bytes: self.bytes.clone(),
                verified: verified.clone(),
                error: self.blob_error.clone(),
            })
        };
        let finish = || match verified.load(Ordering::SeqCst) {
            true => Ok(()),
            false => Err(io::Error::other(
                "the layer was not read to its end, so its digest was not checked",
            )),
        };
        let outcome =
            extract_once_checked(&entry, TREE_DIR, self.gzip, &self.limits, open, finish).map_err(JobError::Extract)?;
        let (files, bytes, extracted) = match outcome {
            ExtractOutcome::Extracted(report) => (report.files, report.bytes, true),
            ExtractOutcome::AlreadyPresent => {
                if let Some(record) = self.layout.read_record(&self.digest).ok().flatten() {
                    return Ok((record, false));
                }
                // A tree committed by a pull that died before writing its record: it was
                // checked before its commit, so count it and write the record now.
                let tree = self.layout.tree_dir(&self.digest);
                let (files, bytes) = count_tree(&tree).map_err(store_err(&tree))?;
                (files, bytes, false)
            }
        };
        let meta = &self.record.meta;
        let record = CacheRecord {
            digest: self.digest.clone(),
            image: self.record.image.clone(),
            kind: meta.kind.name().to_string(),
            targets: meta.summary.targets.clone(),
            requirements: meta.requirements(),
            build_cache_root: meta.build_cache_root.clone(),
            cache_subdir: meta.kind.cache_dir().to_string(),
            files,
            bytes,
            extracted_at: now(),
            verification: self.record.verification.clone(),
        };
        let path = self.layout.record_path(&self.digest);
        let json = serde_json::to_vec_pretty(&record).map_err(|e| store_err(&path)(io::Error::other(e)))?;
        match write_atomic(&path, &json, 0o644, false) {
            Ok(()) => Ok((record, extracted)),
            // A concurrent pull that found our committed tree before we wrote the record
            // wrote one already (the same facts); this pull still did the extraction.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let theirs = self.layout.read_record(&self.digest).ok().flatten();
                Ok((theirs.unwrap_or(record), extracted))
            }
            Err(e) => Err(store_err(&path)(e)),
        }
    }
}

/// The layer blob as a `Read` for the extractor (which runs on a blocking thread): each read
/// drives the async download on the runtime. EOF only after the digest matched.
struct BlobReader {
    handle: tokio::runtime::Handle,
    stream: crate::registry::BlobStream,
    buf: Vec<u8>,
    pos: usize,
    bytes: Arc<AtomicU64>,
    verified: Arc<AtomicBool>,
    error: Arc<Mutex<Option<RegistryError>>>,
}

impl Read for BlobReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.buf.len() {
            match self.handle.block_on(self.stream.chunk()) {
                Ok(Some(c)) => {
                    self.bytes.fetch_add(c.len() as u64, Ordering::Relaxed);
                    self.buf = c;
                    self.pos = 0;
                }
                Ok(None) => {
                    self.verified.store(true, Ordering::SeqCst);
                    return Ok(0);
                }
                Err(e) => {
                    let msg = e.to_string();
                    *self.error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                    return Err(io::Error::other(msg));
                }
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

fn count_tree(dir: &Path) -> io::Result<(u64, u64)> {
    let (mut files, mut bytes) = (0, 0);
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let ft = entry.file_type()?;
        if ft.is_dir() {
            let (f, b) = count_tree(&entry.path())?;
            files += f;
            bytes += b;
        } else if ft.is_file() {
            files += 1;
            bytes += entry.metadata()?.len();
        }
    }
    Ok((files, bytes))
}

// ---- __grp__ ----

/// See [`CacheManager::prepare_grp`].
pub fn prepare_grp(layout: &StoreLayout, digest: &Digest, target: &str) -> Result<Option<PathBuf>, PullError> {
    let record = layout
        .read_record(digest)
        .map_err(|e| PullError::Store {
            path: layout.record_path(digest),
            source: io::Error::other(e.to_string()),
        })?
        .ok_or_else(|| PullError::Store {
            path: layout.record_path(digest),
            source: io::Error::new(io::ErrorKind::NotFound, format!("{RECORD_FILE} not found")),
        })?;
    let out = layout.grp_dir(digest, target);
    let _lock = EntryLock::shared(layout, digest).map_err(PullError::store(&out))?;
    let src = layout.tree_dir(digest).join(&record.cache_subdir);
    grp::layer(layout, digest, &src, target).map_err(|e| PullError::store(&out)(io::Error::other(chain(&e))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_platform_choice() {
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            other => other,
        };
        let d = |c: char| format!("sha256:{}", c.to_string().repeat(64));
        let one = serde_json::json!({"manifests": [{"digest": d('a'), "platform": {"os": "linux", "architecture": "s390x"}}]});
        assert_eq!(choose_platform(&one).unwrap().to_string(), d('a'));
        let many = serde_json::json!({"manifests": [
            {"digest": d('a'), "platform": {"os": "linux", "architecture": "s390x"}},
            {"digest": d('b'), "platform": {"os": "linux", "architecture": arch}},
            {"digest": d('c'), "annotations": {"vnd.docker.reference.type": "attestation-manifest"}},
        ]});
        assert_eq!(choose_platform(&many).unwrap().to_string(), d('b'));
        let none = serde_json::json!({"manifests": [
            {"digest": d('a'), "platform": {"os": "linux", "architecture": "s390x"}},
            {"digest": d('b'), "platform": {"os": "windows", "architecture": arch}},
        ]});
        assert!(choose_platform(&none).unwrap_err().contains("no manifest for linux/"));
        assert!(choose_platform(&serde_json::json!({"manifests": []})).is_err());
    }
}

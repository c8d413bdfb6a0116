//! `kcache cache pull|ls|inspect|gc`: the node's cache store, through the same manager kcached
//! runs. `pull` does not touch `state.json` (kcached owns it); `gc` (kcached's own collector,
//! `kcache_core::cache::gc`) removes what `state.json` does not point at, so an entry pulled by
//! hand and not approved in caches.d is collected.

use std::{
    io::{IsTerminal, Write},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Instant,
};

use anyhow::{bail, Context, Result};
use clap::Args;
use kcache_core::{
    cache::{
        approved::{self, DEFAULT_CACHES_DIR},
        extract::ExtractLimits,
        gc,
        manager::{self, CacheManager, Phase, Progress},
        meta::GpuInventory,
        refs,
        store::{self, CacheRecord, NodeCaches, StoreLayout},
        summary::{self, KernelSummary},
    },
    digest::Digest,
    gpu::{self, ProbeOptions},
    verifier::Verifier,
};
use kcache_plugin::daemon::config::{FileConfig, DEFAULT_CONFIG};
use serde_json::json;

use crate::{
    registry_args::RegistryArgs,
    verify_cmd::{load_policy, Output},
    Outcome,
};

#[derive(Args)]
pub struct StoreArgs {
    /// The cache store.
    #[arg(long, default_value = store::DEFAULT_ROOT, env = "KCACHE_STORE")]
    store: PathBuf,
    /// The run directory (gpus.json).
    #[arg(long, default_value = store::DEFAULT_RUN_DIR)]
    run_dir: PathBuf,
}

impl StoreArgs {
    fn layout(&self) -> StoreLayout {
        StoreLayout::new(&self.store, &self.run_dir)
    }
}

#[derive(Args)]
pub struct PullArgs {
    /// An approved cache name (from caches.d) or an image reference.
    target: String,
    /// With a name: the namespace it is approved for (default: the cluster-wide entry).
    #[arg(long, short = 'n')]
    namespace: Option<String>,
    /// Policy file; `policy.d/` beside it is read too.
    #[arg(long, default_value = kcache_core::paths::POLICY, env = "KCACHE_POLICY")]
    policy: PathBuf,
    /// The approved caches.
    #[arg(long, default_value = DEFAULT_CACHES_DIR)]
    caches_dir: PathBuf,
    #[command(flatten)]
    store: StoreArgs,
    /// kcached's config file: its `[cache]` extraction limits apply here too (a missing default
    /// file means the default limits).
    #[arg(long, env = "KCACHE_CONFIG")]
    config: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    output: Output,
    #[command(flatten)]
    registry: RegistryArgs,
}

/// kcached's config, so a CLI pull extracts what the daemon would, from the hosts it would ask.
fn daemon_config(config: Option<&Path>) -> Result<(FileConfig, ExtractLimits)> {
    let (path, required) = match config {
        Some(p) => (p, true),
        None => (Path::new(DEFAULT_CONFIG), false),
    };
    let file = FileConfig::load(path, required)?;
    let limits = file
        .cache
        .extract_limits()
        .with_context(|| format!("{}: [cache]", path.display()))?;
    Ok((file, limits))
}

pub fn pull(a: PullArgs) -> Result<Outcome> {
    let image = approved::image_for(&a.caches_dir, &a.target, a.namespace.as_deref())?;
    let policy = load_policy(&a.policy)?;
    let (file, limits) = daemon_config(a.config.as_deref())?;
    let client = a.registry.client_over(Some(&file.registry))?;
    let verifier = Arc::new(Verifier::new(client.clone()));
    let mgr = CacheManager::new(a.store.layout(), client, verifier, limits);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let bar = Bar::new(std::io::stderr().is_terminal() && matches!(a.output, Output::Text));
    let start = Instant::now();
    let result = rt.block_on(mgr.pull_with_outcome(&policy, policy.generation, &image, &|p: Progress| bar.update(&p)));
    bar.finish();
    match result {
        Ok((record, outcome)) => {
            match a.output {
                Output::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&json!({
                        "image": image,
                        "digest": record.digest,
                        "outcome": outcome,
                        "path": mgr.layout().entry_dir(&record.digest),
                        "elapsed_ms": start.elapsed().as_millis() as u64,
                        "record": record,
                    }))?
                ),
                Output::Text => {
                    let what = match outcome {
                        manager::PullOutcome::Extracted => "pulled",
                        manager::PullOutcome::Present => "already present",
                    };
                    println!("{what}: {image}");
                    print_record(&record);
                }
            }
            Ok(Outcome::Ok)
        }
        Err(e) => {
            let rejected = e.is_rejection();
            if matches!(a.output, Output::Json) {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&json!({
                        "image": image,
                        "error": e.to_string(),
                        "denied": e.is_denied(),
                    }))?
                );
            }
            match rejected {
                true => Ok(Outcome::Rejected(e.to_string())),
                false => Err(e.into()),
            }
        }
    }
}

fn print_record(r: &CacheRecord) {
    println!("digest:   {}", r.digest);
    println!("image:    {}", r.image);
    println!("kind:     {}", r.kind);
    let targets: Vec<String> = r
        .targets
        .iter()
        .map(|t| format!("{}:{} (warp {})", t.backend, t.arch, t.warp_size))
        .collect();
    println!("targets:  {}", targets.join(", "));
    println!("files:    {} ({} bytes)", r.files, r.bytes);
    if let Some(root) = &r.build_cache_root {
        println!("built at: {root}");
    }
    if let Some(v) = &r.requirements.min_driver_version {
        println!("driver:   >= {v}");
    }
    if let Some(v) = &r.requirements.triton_version {
        println!("triton:   {v}");
    }
    let v = &r.verification;
    println!(
        "verified: {} by rule {}{}{} (policy generation {})",
        v.decision,
        v.rule,
        v.signer.as_deref().map(|s| format!(", signer {s}")).unwrap_or_default(),
        v.tlog_index.map(|i| format!(", tlog index {i}")).unwrap_or_default(),
        v.policy_generation
    );
}

/// A one-line progress bar on stderr (only on a terminal).
struct Bar {
    on: bool,
    last: Mutex<Option<Phase>>,
}

impl Bar {
    fn new(on: bool) -> Self {
        Self {
            on,
            last: Mutex::new(None),
        }
    }

    fn update(&self, p: &Progress) {
        if !self.on {
            return;
        }
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        *last = Some(p.phase);
        let mib = |b: u64| b as f64 / (1 << 20) as f64;
        let line = match (p.phase, p.total) {
            (Phase::Downloading, Some(total)) if total > 0 => {
                let frac = (p.bytes as f64 / total as f64).clamp(0.0, 1.0);
                let filled = (frac * 30.0) as usize;
                format!(
                    "downloading [{}{}] {:.1}/{:.1} MiB",
                    "#".repeat(filled),
                    " ".repeat(30 - filled),
                    mib(p.bytes),
                    mib(total)
                )
            }
            (phase, _) => format!("{phase:?}").to_lowercase(),
        };
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r\x1b[2K{line}");
        let _ = err.flush();
    }

    fn finish(&self) {
        if self.on && self.last.lock().map(|l| l.is_some()).unwrap_or(false) {
            eprintln!();
        }
    }
}

#[derive(Args)]
pub struct LsArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    output: Output,
}

struct Entry {
    digest: Digest,
    record: Option<CacheRecord>,
    refs: usize,
    kernels: Option<KernelSummary>,
}

/// The store's entries, by GC's walk, each with its live refs counted as GC counts them (refs
/// from an earlier boot do not hold an entry).
fn entries(layout: &StoreLayout) -> Result<Vec<Entry>> {
    let boot = refs::boot_id();
    let digests = layout
        .entries()
        .with_context(|| format!("cannot list {}", layout.root().display()))?;
    let mut out = Vec::new();
    for digest in digests {
        let record = layout.read_record(&digest)?;
        let dir = layout.refs_dir(&digest);
        let refs =
            refs::count_live(&dir, boot.as_deref(), false).with_context(|| format!("cannot list {}", dir.display()))?;
        // A tree that cannot be scanned still lists (inspect says why).
        let kernels = record
            .as_ref()
            .and_then(|r| kernels_of(&layout.tree_dir(&digest).join(&r.cache_subdir)).ok());
        out.push(Entry {
            digest,
            record,
            refs,
            kernels,
        });
    }
    Ok(out)
}

pub fn ls(a: LsArgs) -> Result<Outcome> {
    let layout = a.store.layout();
    let state = layout.read_state()?;
    let entries = entries(&layout)?;
    match a.output {
        Output::Json => {
            let list: Vec<_> = entries
                .iter()
                .map(|e| {
                    json!({
                        "digest": e.digest.as_str(),
                        "complete": e.record.is_some(),
                        "image": e.record.as_ref().map(|r| r.image.as_str()),
                        "files": e.record.as_ref().map(|r| r.files),
                        "bytes": e.record.as_ref().map(|r| r.bytes),
                        "refs": e.refs,
                        "kernels": e.kernels,
                        "approved": state.caches.iter().any(|c| c.digest.as_ref() == Some(&e.digest)),
                    })
                })
                .collect();
            println!(
                "{}",
                serde_json::to_string_pretty(&json!({"state": state, "entries": list}))?
            );
        }
        Output::Text => {
            println!(
                "{:<24} {:<16} {:<8} {:<19} GPUS",
                "NAME", "NAMESPACE", "STATE", "DIGEST"
            );
            for c in &state.caches {
                println!(
                    "{:<24} {:<16} {:<8} {:<19} {}",
                    c.name,
                    c.namespace.as_deref().unwrap_or("*"),
                    c.state.as_str(),
                    c.digest.as_ref().map_or("-".to_string(), |d| short(d.as_str())),
                    if c.compatible_gpus.is_empty() {
                        "-".to_string()
                    } else {
                        c.compatible_gpus.join(",")
                    }
                );
                if let Some(r) = &c.reason {
                    println!("  reason: {r}");
                }
                let entry = entries.iter().find(|e| Some(&e.digest) == c.digest.as_ref());
                if let Some(k) = entry.and_then(|e| e.kernels.as_ref()) {
                    println!("  {}", k.one_line());
                }
            }
            let unapproved: Vec<_> = entries
                .iter()
                .filter(|e| !state.caches.iter().any(|c| c.digest.as_ref() == Some(&e.digest)))
                .collect();
            if !unapproved.is_empty() {
                println!("\nentries no approved cache points at (gc removes them once unused):");
                for e in unapproved {
                    println!(
                        "  {} {} refs={}{}",
                        short(e.digest.as_str()),
                        e.record.as_ref().map_or("(incomplete)", |r| r.image.as_str()),
                        e.refs,
                        e.kernels
                            .as_ref()
                            .map(|k| format!(": {}", k.one_line()))
                            .unwrap_or_default()
                    );
                }
            }
        }
    }
    Ok(Outcome::Ok)
}

fn short(d: &str) -> String {
    d.chars().take(19).collect()
}

#[derive(Args)]
pub struct InspectArgs {
    /// An approved cache name (from state.json) or a digest (`sha256:<hex>` or the hex).
    target: String,
    /// With a name: the pod namespace to look it up for.
    #[arg(long, short = 'n')]
    namespace: Option<String>,
    /// GPU inventory file (default: <run-dir>/gpus.json if present, else probe).
    #[arg(long)]
    gpus: Option<PathBuf>,
    #[command(flatten)]
    store: StoreArgs,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    output: Output,
}

fn inventory(explicit: Option<&Path>, layout: &StoreLayout) -> Result<GpuInventory> {
    if let Some(p) = explicit {
        return gpu::file::load(p).with_context(|| format!("cannot read GPU inventory {}", p.display()));
    }
    let run = layout.gpus_path();
    if run.exists() {
        return gpu::file::load(&run).with_context(|| format!("cannot read GPU inventory {}", run.display()));
    }
    Ok(gpu::probe(&ProbeOptions::default()))
}

/// The kernels of a store entry (or of a cache dir), scanned from its files.
fn kernels_of(dir: &Path) -> Result<KernelSummary> {
    summary::summarize_dir(dir, summary::DEFAULT_LARGEST).with_context(|| format!("cannot scan {}", dir.display()))
}

pub fn inspect(a: InspectArgs) -> Result<Outcome> {
    if a.target.contains('/') && Path::new(&a.target).is_dir() {
        // A Triton cache dir (`TRITON_CACHE_DIR`), before it is built into an image.
        let s = kernels_of(Path::new(&a.target))?;
        match a.output {
            Output::Json => println!(
                "{}",
                serde_json::to_string_pretty(&json!({"path": a.target, "kernels": s}))?
            ),
            Output::Text => print!("path:     {}\n{s}", a.target),
        }
        return Ok(Outcome::Ok);
    }
    let layout = a.store.layout();
    let digest = layout.resolve(&a.target, a.namespace.as_deref())?;
    let Some(record) = layout.read_record(&digest)? else {
        bail!("{digest} is not in the store {}", layout.root().display());
    };
    let inv = inventory(a.gpus.as_deref(), &layout)?;
    let (ok, bad) = manager::compat_of(&record, &inv);
    let kernels = kernels_of(&layout.tree_dir(&digest).join(&record.cache_subdir))?;
    let refs = refs::list(&layout, &digest)?;
    match a.output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "record": record,
                "path": layout.entry_dir(&digest),
                "refs": refs,
                "compatible_gpus": ok,
                "incompatible_gpus": bad,
                "kernels": kernels,
            }))?
        ),
        Output::Text => {
            print_record(&record);
            println!("path:     {}", layout.entry_dir(&digest).display());
            println!(
                "refs:     {}",
                if refs.is_empty() { "-".into() } else { refs.join(", ") }
            );
            for g in &inv.gpus {
                match bad.iter().find(|m| m.gpu == g.id) {
                    None => println!("gpu {} {} ({}): compatible", g.index, g.id, g.arch),
                    Some(m) => println!("gpu {} {} ({}): incompatible: {}", g.index, g.id, g.arch, m.reason),
                }
            }
            if inv.gpus.is_empty() {
                println!("gpus:     none found");
            }
            print!("{kernels}");
        }
    }
    Ok(Outcome::Ok)
}

#[derive(Args)]
pub struct GcArgs {
    /// Report what would be removed; remove nothing.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    store: StoreArgs,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    output: Output,
}

pub fn gc(a: GcArgs) -> Result<Outcome> {
    let layout = a.store.layout();
    let state: NodeCaches = layout.read_state()?;
    let report = gc::gc(&layout, &state, a.dry_run);
    match a.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Output::Text => {
            let verb = if a.dry_run { "would remove" } else { "removed" };
            for d in &report.removed {
                println!("{verb} {d}");
            }
            for (d, n) in &report.kept_in_use {
                println!("kept {d}: {n} container(s) use it");
            }
            for d in &report.busy {
                println!("skipped {d}: busy (a pull or a container start holds it)");
            }
            if report.temp_removed > 0 {
                println!("removed {} leftover temp dir(s)", report.temp_removed);
            }
            println!(
                "{} kept for approved caches, {} {verb}",
                report.kept_approved.len(),
                report.removed.len()
            );
        }
    }
    if let Some(e) = report.errors.first() {
        bail!("gc: {e} ({} problem(s))", report.errors.len());
    }
    Ok(Outcome::Ok)
}

//! `kcache gpu` and `kcache cache build|pull|ls|inspect|gc`: the node's GPU inventory,
//! kernel-cache images built from a Triton (or vLLM) cache directory in the GKM/MCV format, and
//! the node's cache store (the same code kcached runs).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use kcache_core::{
    cache::{
        builder::{build_cache_layer_with, image_config_json, BuildOptions},
        format::CacheKind,
    },
    gpu::{self, ProbeOptions},
    registry::{
        artifact::{image_manifest, push_image, Blob, OCI_CONFIG},
        Reference,
    },
};

use crate::{registry_args::RegistryArgs, verify_cmd::Output, Outcome};

#[derive(Args)]
pub struct GpuArgs {
    /// An admin-pinned inventory file (it wins over the probes).
    #[arg(long)]
    pinned: Option<PathBuf>,
    /// KFD topology root for AMD GPUs.
    #[arg(long, default_value = gpu::kfd::DEFAULT_TOPOLOGY_ROOT)]
    kfd_root: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    output: Output,
}

pub fn gpu(a: GpuArgs) -> Result<Outcome> {
    let inv = gpu::probe(&ProbeOptions {
        pinned_file: a.pinned,
        nvml: true,
        kfd_root: Some(a.kfd_root),
    });
    match a.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&inv)?),
        Output::Text => {
            println!("source: {}", serde_json::to_value(inv.source)?.as_str().unwrap_or("?"));
            for g in &inv.gpus {
                println!(
                    "gpu {}: {} {} ({}, warp {}) driver {}",
                    g.index,
                    g.id,
                    g.name,
                    g.arch,
                    g.warp_size,
                    g.driver_version.as_deref().unwrap_or("-")
                );
            }
            for n in &inv.notes {
                println!("note: {n}");
            }
        }
    }
    Ok(Outcome::Ok)
}

#[derive(Subcommand)]
pub enum CacheCommand {
    /// Build a kernel-cache image (one gzip layer + GKM/MCV labels) from a cache directory.
    Build(BuildArgs),
    /// Verify and pull a cache image into the node store (exit 0 pulled, 1 denied or rejected).
    Pull(crate::cache_store_cmd::PullArgs),
    /// List the approved caches (state.json) and the store's entries.
    Ls(crate::cache_store_cmd::LsArgs),
    /// Show one cache's record and which GPUs it runs on.
    Inspect(crate::cache_store_cmd::InspectArgs),
    /// Remove store entries no approved cache points at and no container uses.
    Gc(crate::cache_store_cmd::GcArgs),
}

#[derive(Args)]
pub struct BuildArgs {
    /// The Triton cache directory (`TRITON_CACHE_DIR`), or a vLLM cache root with --vllm.
    dir: PathBuf,
    /// Image reference to name (and with --push, push) the cache image as.
    #[arg(long)]
    image: String,
    /// The directory is a vLLM cache root (`VLLM_CACHE_ROOT`).
    #[arg(long)]
    vllm: bool,
    /// Push the image to its registry.
    #[arg(long)]
    push: bool,
    /// The Triton version that compiled the cache, when its kernel metadata does not record it
    /// (Triton 3.x does; it may not be contradicted). Nodes compare it with the container's.
    #[arg(long, value_name = "VERSION")]
    triton_version: Option<String>,
    /// The GPU driver version the cache was built with; nodes treat GPUs with an older driver as
    /// incompatible. A cache does not record it.
    #[arg(long, value_name = "VERSION")]
    driver_version: Option<String>,
    /// Where to write layer.tar.gz, config.json and manifest.json.
    #[arg(long, default_value = "kcache-cache-image")]
    out: PathBuf,
    #[command(flatten)]
    registry: RegistryArgs,
}

pub fn run(cmd: CacheCommand) -> Result<Outcome> {
    match cmd {
        CacheCommand::Build(a) => build(a),
        CacheCommand::Pull(a) => crate::cache_store_cmd::pull(a),
        CacheCommand::Ls(a) => crate::cache_store_cmd::ls(a),
        CacheCommand::Inspect(a) => crate::cache_store_cmd::inspect(a),
        CacheCommand::Gc(a) => crate::cache_store_cmd::gc(a),
    }
}

fn build(a: BuildArgs) -> Result<Outcome> {
    let r = Reference::parse(&a.image)?;
    std::fs::create_dir_all(&a.out).with_context(|| format!("cannot create {}", a.out.display()))?;
    let layer_path = a.out.join("layer.tar.gz");
    let file = std::fs::File::create(&layer_path).with_context(|| format!("cannot write {}", layer_path.display()))?;
    let kind = if a.vllm { CacheKind::Vllm } else { CacheKind::Triton };
    let opts = BuildOptions {
        triton_version: a.triton_version.clone(),
        driver_version: a.driver_version.clone(),
    };
    let built = build_cache_layer_with(&a.dir, kind, &opts, std::io::BufWriter::new(file))
        .with_context(|| format!("cannot build a cache image from {}", a.dir.display()))?;
    for w in &built.warnings {
        eprintln!("warning: {w}");
    }
    let config = Blob::new(image_config_json(&built));
    let layer = serde_json::json!({
        "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
        "digest": built.layer_digest.as_str(),
        "size": built.layer_size,
    });
    let manifest = image_manifest(config.descriptor(OCI_CONFIG), vec![layer], Default::default());
    std::fs::write(a.out.join("config.json"), &config.bytes)?;
    std::fs::write(a.out.join("manifest.json"), &manifest.bytes)?;
    let targets: Vec<String> = built
        .summary
        .targets
        .iter()
        .map(|t| format!("{}:{}", t.backend, t.arch))
        .collect();
    println!(
        "built {} cache: {} kernels, {} bytes, targets [{}], layer {}",
        kind.name(),
        built.entry_count,
        built.size_bytes,
        targets.join(", "),
        built.layer_digest
    );
    if a.push {
        let client = a.registry.client()?;
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let digest = rt.block_on(async {
            let layer = Blob::new(std::fs::read(&layer_path)?);
            anyhow::Ok(push_image(&client, &r, &r.reference(), &[&layer, &config], &manifest).await?)
        })?;
        println!("pushed {}@{digest}", r.name());
    }
    Ok(Outcome::Ok)
}

//! `kcache doctor`: every way a pull on this node could skip verification, checked. The rules
//! are [`kcache_core::containerd::doctor`]'s; this command reads containerd's effective
//! configuration (`containerd config dump`), asks kcached how it enforces, and with
//! `--canary IMAGE` pulls an image that must be refused through containerd's CRI, exactly as the
//! kubelet pulls.
//!
//! Exit 0 without a FAIL, 1 with one, 2 when the configuration cannot be read at all.

use std::{path::PathBuf, time::Duration};

use anyhow::Result;
use clap::Args;
use kcache_core::containerd::{
    detect_flavor,
    doctor::{self, CanaryPull, Finding, Level},
};
use kcache_plugin::{api::Client as Api, proto::cri};

use crate::{verify_cmd::Output, Outcome};

#[derive(Args)]
pub struct DoctorArgs {
    /// containerd's main config file.
    #[arg(long, default_value = "/etc/containerd/config.toml")]
    config: PathBuf,
    /// The containerd binary (`config dump`, `--version`).
    #[arg(long, default_value = "containerd")]
    containerd_bin: PathBuf,
    /// containerd's version: auto (from `containerd --version`), 1.6, 1.7, 2.0, 2.1, …
    #[arg(long, default_value = "auto")]
    containerd_version: String,
    /// kcached's snapshotter socket: where `proxy_plugins.kcache` must point.
    #[arg(long, default_value = kcache_core::paths::SNAPSHOTTER_SOCKET)]
    snapshotter_socket: PathBuf,
    /// The kcache API socket.
    #[arg(long, env = "KCACHE_API_SOCKET", default_value = kcache_core::paths::API_SOCKET)]
    api_socket: PathBuf,
    /// The CRI runtime handler that should run kcache-hook.
    #[arg(long, default_value = "runc")]
    runtime: String,
    /// Pull this image through containerd's CRI: it must be refused. Use an unsigned image
    /// whose layers are not on the node (layers already unpacked are not pulled again).
    #[arg(long)]
    canary: Option<String>,
    /// containerd's CRI socket, for --canary.
    #[arg(long, default_value = "/run/containerd/containerd.sock")]
    cri_socket: PathBuf,
    /// kcache's config.toml: with `[nri] socket`, kcached adds the hook through NRI, and the
    /// hook check accepts that route.
    #[arg(long, default_value = kcache_plugin::daemon::config::DEFAULT_CONFIG)]
    kcache_config: PathBuf,
    #[arg(long, value_enum, default_value = "text")]
    output: Output,
}

/// Pulls `image` through CRI (and removes it again if it was pulled).
async fn canary_pull(socket: &std::path::Path, image: &str) -> CanaryPull {
    let channel = match cri::unix_channel(socket).await {
        Ok(c) => c,
        Err(e) => return CanaryPull::Unreachable(format!("{}: {e}", socket.display())),
    };
    let mut images = cri::ImageServiceClient::new(channel);
    let spec = cri::ImageSpec {
        image: image.to_owned(),
        ..Default::default()
    };
    let pulled = images
        .pull_image(cri::PullImageRequest {
            image: Some(spec.clone()),
            ..Default::default()
        })
        .await;
    match pulled {
        Err(s) => CanaryPull::Failed {
            code: format!("{:?}", s.code()),
            message: s.message().to_owned(),
        },
        Ok(r) => {
            let _ = images.remove_image(cri::RemoveImageRequest { image: Some(spec) }).await;
            CanaryPull::Pulled {
                image_ref: r.into_inner().image_ref,
            }
        }
    }
}

pub fn run(a: DoctorArgs) -> Result<Outcome> {
    let flavor = detect_flavor(&a.containerd_version, &a.containerd_bin)?;
    let dump = doctor::dump_config(&a.containerd_bin, &a.config)?;
    let mut findings = doctor::check_config(&dump, flavor, &a.snapshotter_socket.to_string_lossy(), &a.runtime);
    // The hook through NRI, when kcached's config turns its NRI plugin on.
    let nri_socket = kcache_plugin::daemon::config::FileConfig::load(&a.kcache_config, false)
        .ok()
        .and_then(|c| c.nri.socket);
    if let Some(socket) = &nri_socket {
        let hook = doctor::check_hook_route(&dump, flavor, &a.runtime, Some(&socket.to_string_lossy()));
        for f in findings.iter_mut().filter(|f| f.check == hook.check) {
            *f = hook.clone();
        }
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let api = Api::new(&a.api_socket).with_timeout(Duration::from_secs(5));
    let (policy, gate, registry) = rt.block_on(async { (api.policy().await, api.gate().await, api.registry().await) });
    let policy = policy.map_err(|e| e.to_string());
    let gate = gate.map_err(|e| e.to_string());
    let daemon_up = policy.is_ok();
    findings.extend(doctor::check_daemon(policy, gate));
    if daemon_up {
        let (config_path, legacy_mirrors) = doctor::registry_hosts(&dump, flavor);
        findings.push(doctor::check_registry_hosts(
            &config_path,
            legacy_mirrors,
            registry.map_err(|e| e.to_string()),
        ));
    }
    if let Some(image) = &a.canary {
        let pull = rt.block_on(canary_pull(&a.cri_socket, image));
        findings.push(doctor::check_canary(image, pull));
    }
    report(&a, &flavor.to_string(), &findings)
}

fn report(a: &DoctorArgs, flavor: &str, findings: &[Finding]) -> Result<Outcome> {
    let fails = findings.iter().filter(|f| f.level == Level::Fail).count();
    let warns = findings.iter().filter(|f| f.level == Level::Warn).count();
    match a.output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "containerd": flavor,
                "config": a.config,
                "findings": findings,
            }))?
        ),
        Output::Text => {
            println!("kcache doctor: containerd {flavor}, {}", a.config.display());
            for f in findings {
                println!("{:<5} {:<21} {}", f.level.label(), f.check.name(), f.detail);
            }
            println!("{fails} problem(s), {warns} warning(s)");
        }
    }
    Ok(if fails == 0 {
        Outcome::Ok
    } else {
        let first = findings
            .iter()
            .find(|f| f.level == Level::Fail)
            .map_or(String::new(), |f| format!(": {}: {}", f.check.name(), f.detail));
        Outcome::Rejected(format!(
            "kcache doctor: {fails} way(s) a pull could skip verification{first}"
        ))
    })
}

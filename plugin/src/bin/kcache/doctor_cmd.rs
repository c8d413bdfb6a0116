//! `kcache doctor`: every way a pull on this node could skip verification, checked.
//!
//! It reads containerd's *effective* configuration (`containerd config dump`: config.toml with
//! its imports and containerd's defaults, which is what containerd runs with), asks kcached how it
//! enforces, and with `--canary IMAGE` pulls an image that must be refused through containerd's
//! CRI, exactly as the kubelet pulls.
//!
//! Each finding is `ok`, `warn` (verification still holds, something else is off) or `FAIL`
//! (pulls could skip verification, or kcache could not check). Exit 0 without a FAIL, 1 with
//! one, 2 when the configuration cannot be read at all.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{bail, Context, Result};
use clap::Args;
use kcache_core::api::Mode;
use kcache_plugin::{api::Client as Api, proto::cri};
use serde::Serialize;
use toml::Value;

use crate::{
    install_cmd::{cri_tables, detect_flavor, Flavor, BINDIR, CRI_IMAGES, POD_ANNOTATIONS, VERIFIER_LINK},
    verify_cmd::Output,
    Outcome,
};

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
    #[arg(long, default_value = "/run/kcache/snapshotter.sock")]
    snapshotter_socket: PathBuf,
    /// The kcache API socket.
    #[arg(long, env = "KCACHE_API_SOCKET", default_value = "/run/kcache/kcache.sock")]
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
    #[arg(long, value_enum, default_value = "text")]
    output: Output,
}

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// As it should be.
    Ok,
    /// Verification holds; something else is off.
    Warn,
    /// Pulls could skip verification, or kcache could not check that they do not.
    Fail,
}

/// One check's result.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub level: Level,
    pub check: &'static str,
    pub detail: String,
}

fn finding(level: Level, check: &'static str, detail: impl Into<String>) -> Finding {
    Finding {
        level,
        check,
        detail: detail.into(),
    }
}

fn at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, k| v.get(k))
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    at(v, path).and_then(Value::as_str)
}

/// The checks on containerd's effective configuration (`containerd config dump`).
pub fn check_config(dump: &Value, flavor: Flavor, socket: &str, runtime: &str) -> Vec<Finding> {
    let mut out = Vec::new();
    // The proxy plugin: containerd must reach kcached, not something else under its name.
    match (
        str_at(dump, &["proxy_plugins", "kcache", "type"]),
        str_at(dump, &["proxy_plugins", "kcache", "address"]),
    ) {
        (Some("snapshot"), Some(a)) if a == socket => out.push(finding(
            Level::Ok,
            "proxy-plugin",
            format!("proxy_plugins.kcache is the snapshotter at {a}"),
        )),
        (Some("snapshot"), Some(a)) => out.push(finding(
            Level::Fail,
            "proxy-plugin",
            format!("proxy_plugins.kcache points at {a}, not kcached's {socket}"),
        )),
        _ => out.push(finding(
            Level::Fail,
            "proxy-plugin",
            "no [proxy_plugins.kcache] of type \"snapshot\": containerd cannot use kcached (kcache install containerd)",
        )),
    }
    let (images, runtimes) = cri_tables(flavor.default_schema());
    let images_key = images.join(".");
    // CRI must unpack through the gate.
    match str_at(dump, &[images, &["snapshotter"]].concat()) {
        Some("kcache") => out.push(finding(
            Level::Ok,
            "cri-snapshotter",
            "CRI unpacks images with the kcache snapshotter",
        )),
        other => out.push(finding(
            Level::Fail,
            "cri-snapshotter",
            format!(
                "{images_key}.snapshotter = {:?}: CRI pulls bypass the kcache gate",
                other.unwrap_or("")
            ),
        )),
    }
    // Per-runtime snapshotters (1.7+, 2.x) and, on 2.x, per-handler image platforms.
    let mut per_handler = Vec::new();
    if let Some(t) = at(dump, runtimes).and_then(Value::as_table) {
        for (name, r) in t {
            per_handler.push((format!("{}.{name}", runtimes.join(".")), r.get("snapshotter")));
        }
    }
    if let Some(t) = at(dump, &["plugins", CRI_IMAGES, "runtime_platforms"]).and_then(Value::as_table) {
        for (name, r) in t {
            per_handler.push((
                format!("plugins.{CRI_IMAGES}.runtime_platforms.{name}"),
                r.get("snapshotter"),
            ));
        }
    }
    for (key, snap) in per_handler {
        match snap.and_then(Value::as_str) {
            None | Some("") | Some("kcache") => {}
            Some(s) => out.push(finding(
                Level::Fail,
                "runtime-snapshotter",
                format!("{key}.snapshotter = {s:?}: pods of that runtime bypass the kcache gate"),
            )),
        }
    }
    // The image labels the gate verifies.
    let disable = at(dump, &[images, &["disable_snapshot_annotations"]].concat()).and_then(Value::as_bool);
    match flavor {
        Flavor::V1 | Flavor::V2_0 => match disable {
            Some(false) => out.push(finding(
                Level::Ok,
                "snapshot-annotations",
                "CRI labels each layer with the image and manifest digest the gate verifies",
            )),
            _ => out.push(finding(
                Level::Fail,
                "snapshot-annotations",
                format!(
                    "{images_key}.disable_snapshot_annotations is not false: CRI pulls carry no image labels, so the gate \
                     cannot verify them (they unpack unverified, or are refused with --unlabeled deny)"
                ),
            )),
        },
        Flavor::V2_1 => {
            match str_at(dump, &["proxy_plugins", "kcache", "exports", "enable_remote_snapshot_annotations"]) {
                Some("true") => out.push(finding(
                    Level::Ok,
                    "snapshot-annotations",
                    "the transfer service sends the image labels to kcached (enable_remote_snapshot_annotations)",
                )),
                _ => out.push(finding(
                    Level::Fail,
                    "snapshot-annotations",
                    "proxy_plugins.kcache.exports.enable_remote_snapshot_annotations is not \"true\": transfer-service \
                     pulls carry no image labels, so the gate cannot verify them",
                )),
            }
            let local = at(dump, &["plugins", CRI_IMAGES, "use_local_image_pull"]).and_then(Value::as_bool);
            if disable == Some(false) || local == Some(true) {
                out.push(finding(
                    Level::Warn,
                    "transfer-service",
                    format!(
                        "{images_key}: disable_snapshot_annotations = false or use_local_image_pull = true makes CRI \
                         pull without the transfer service, so the image verifier does not run for CRI pulls (the \
                         kcache gate still verifies them)"
                    ),
                ));
            }
        }
    }
    // containerd 2.x: the bindir image verifier.
    if flavor != Flavor::V1 {
        out.push(check_bindir(dump));
    }
    // The hook: not about verification, but without it no cache reaches a pod.
    let r = at(dump, &[runtimes, &[runtime]].concat());
    let spec = r
        .and_then(|r| r.get("base_runtime_spec"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let hooked = !spec.is_empty()
        && std::fs::read(spec)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .is_some_and(|s| {
                ["prestart", "poststop"].iter().all(|phase| {
                    s["hooks"][phase].as_array().is_some_and(|hs| {
                        hs.iter()
                            .any(|h| h["path"].as_str().is_some_and(|p| p.ends_with("kcache-hook")))
                    })
                })
            });
    let annotations = r
        .and_then(|r| r.get("pod_annotations"))
        .and_then(Value::as_array)
        .is_some_and(|a| a.iter().any(|v| v.as_str() == Some(POD_ANNOTATIONS)));
    let mut missing = Vec::new();
    if !hooked {
        missing.push(if spec.is_empty() {
            "no base_runtime_spec".to_owned()
        } else {
            format!("base_runtime_spec {spec} has no kcache-hook prestart+poststop")
        });
    }
    if !annotations {
        missing.push(format!("pod_annotations lacks {POD_ANNOTATIONS:?}"));
    }
    out.push(if missing.is_empty() {
        finding(
            Level::Ok,
            "hook",
            format!("runtime {runtime} runs kcache-hook (base spec {spec}) and passes kcache.dev/* annotations"),
        )
    } else {
        finding(
            Level::Warn,
            "hook",
            format!(
                "runtime {runtime}: {}: kernel caches are not mounted into pods (kcache install containerd)",
                missing.join(", ")
            ),
        )
    });
    out
}

fn check_bindir(dump: &Value) -> Finding {
    let key = format!("plugins.{BINDIR}");
    let Some(dir) = str_at(dump, &["plugins", BINDIR, "bin_dir"]).filter(|d| !d.is_empty()) else {
        return finding(
            Level::Warn,
            "image-verifier",
            format!("{key}.bin_dir is not set: transfer-service pulls are not checked before they download (the gate still verifies CRI pulls)"),
        );
    };
    let max = at(dump, &["plugins", BINDIR, "max_verifiers"])
        .and_then(Value::as_integer)
        .unwrap_or(10);
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    let link = Path::new(dir).join(VERIFIER_LINK);
    let executable = std::fs::metadata(&link).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    let position = names.iter().position(|n| n == VERIFIER_LINK);
    match position {
        Some(p) if executable && (max < 0 || (p as i64) < max) => finding(
            Level::Ok,
            "image-verifier",
            format!("containerd runs {} on transfer-service pulls", link.display()),
        ),
        Some(_) if !executable => finding(
            Level::Warn,
            "image-verifier",
            format!("{} is not an executable file: containerd fails pulls while it cannot run it", link.display()),
        ),
        Some(p) => finding(
            Level::Warn,
            "image-verifier",
            format!("{} is entry {} in {dir}, but containerd runs only the first {max}", link.display(), p + 1),
        ),
        None => finding(
            Level::Warn,
            "image-verifier",
            format!("{dir} has no {VERIFIER_LINK}: transfer-service pulls are not checked before they download (the gate still verifies CRI pulls)"),
        ),
    }
}

/// The checks on kcached's answers.
pub fn check_daemon(
    policy: Result<kcache_plugin::daemon::policy_store::PolicyStatus, String>,
    gate: Result<kcache_plugin::api::GateStatus, String>,
) -> Vec<Finding> {
    let mut out = Vec::new();
    match policy {
        Err(e) => out.push(finding(
            Level::Fail,
            "kcached",
            format!("kcached does not answer ({e}): containerd cannot unpack anything through kcache"),
        )),
        Ok(p) => {
            out.push(match p.mode {
                Mode::Enforce => finding(
                    Level::Ok,
                    "policy-mode",
                    format!("enforce, {} rules, generation {}", p.rules, p.generation),
                ),
                Mode::Warn => finding(
                    Level::Fail,
                    "policy-mode",
                    "mode warn: images that fail the policy are pulled and run (only logged)",
                ),
                m @ Mode::Off => finding(Level::Fail, "policy-mode", format!("mode {m}: nothing is verified")),
            });
            if let Some(e) = p.last_error {
                out.push(finding(
                    Level::Warn,
                    "policy-reload",
                    format!("the policy files on disk are broken; the previous policy stays in force: {e}"),
                ));
            }
        }
    }
    match gate {
        Err(e) => out.push(finding(Level::Fail, "chain-check", format!("cannot read the gate's settings: {e}"))),
        Ok(g) if !g.chain_check => out.push(finding(
            Level::Warn,
            "chain-check",
            "kcached runs with --no-chain-check: containers may start on layers unpacked around the gate (ctr pull, earlier installs)",
        )),
        Ok(g) => out.push(finding(
            Level::Ok,
            "chain-check",
            format!("containers start only on verified chains; unlabeled unpacks: {}", g.unlabeled),
        )),
    }
    out
}

/// Pulls `image` through CRI; being refused is the good outcome.
async fn canary(socket: &Path, image: &str) -> Finding {
    let channel = match cri::unix_channel(socket).await {
        Ok(c) => c,
        Err(e) => {
            return finding(
                Level::Fail,
                "canary",
                format!("cannot reach containerd's CRI at {}: {e}", socket.display()),
            )
        }
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
        Err(s) if s.message().contains("kcache: image") => {
            let why = &s.message()[s.message().find("kcache: image").unwrap_or(0)..];
            finding(Level::Ok, "canary", format!("{image} was refused: {why}"))
        }
        Err(s) => finding(
            Level::Fail,
            "canary",
            format!(
                "{image} failed to pull, but not by kcache's gate ({:?}): {}",
                s.code(),
                s.message()
            ),
        ),
        Ok(r) => {
            let _ = images.remove_image(cri::RemoveImageRequest { image: Some(spec) }).await;
            finding(
                Level::Fail,
                "canary",
                format!(
                    "{image} was pulled ({}) and is removed again: pulls are not verified, or its layers were already on the node",
                    r.into_inner().image_ref
                ),
            )
        }
    }
}

fn dump_config(a: &DoctorArgs) -> Result<Value> {
    let out = Command::new(&a.containerd_bin)
        .arg("--config")
        .arg(&a.config)
        .args(["config", "dump"])
        .output()
        .with_context(|| format!("cannot run `{} config dump`", a.containerd_bin.display()))?;
    if !out.status.success() {
        bail!(
            "`{} --config {} config dump` failed ({}): {}",
            a.containerd_bin.display(),
            a.config.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    toml::from_str(&String::from_utf8_lossy(&out.stdout)).context("containerd's config dump is not TOML")
}

pub fn run(a: DoctorArgs) -> Result<Outcome> {
    let flavor = detect_flavor(&a.containerd_version, &a.containerd_bin)?;
    let dump = dump_config(&a)?;
    let mut findings = check_config(&dump, flavor, &a.snapshotter_socket.to_string_lossy(), &a.runtime);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let api = Api::new(&a.api_socket).with_timeout(Duration::from_secs(5));
    let (policy, gate) = rt.block_on(async { (api.policy().await, api.gate().await) });
    findings.extend(check_daemon(
        policy.map_err(|e| e.to_string()),
        gate.map_err(|e| e.to_string()),
    ));
    if let Some(image) = &a.canary {
        findings.push(rt.block_on(canary(&a.cri_socket, image)));
    }
    let fails = findings.iter().filter(|f| f.level == Level::Fail).count();
    let warns = findings.iter().filter(|f| f.level == Level::Warn).count();
    match a.output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "containerd": flavor.to_string(),
                "config": a.config,
                "findings": findings,
            }))?
        ),
        Output::Text => {
            println!("kcache doctor: containerd {flavor}, {}", a.config.display());
            for f in &findings {
                let level = match f.level {
                    Level::Ok => "ok",
                    Level::Warn => "warn",
                    Level::Fail => "FAIL",
                };
                println!("{level:<5} {:<21} {}", f.check, f.detail);
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
            .map_or(String::new(), |f| format!(": {}: {}", f.check, f.detail));
        Outcome::Rejected(format!(
            "kcache doctor: {fails} way(s) a pull could skip verification{first}"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dump(text: &str) -> Value {
        toml::from_str(text).unwrap()
    }

    fn levels(f: &[Finding]) -> Vec<(&'static str, Level)> {
        f.iter().map(|f| (f.check, f.level)).collect()
    }

    const SOCK: &str = "/run/kcache/snapshotter.sock";

    #[test]
    fn a_1x_config_without_kcache_fails_every_verification_check() {
        let d = dump(
            r#"version = 2
[plugins."io.containerd.grpc.v1.cri".containerd]
  snapshotter = "overlayfs"
  disable_snapshot_annotations = true
"#,
        );
        let f = check_config(&d, Flavor::V1, SOCK, "runc");
        assert_eq!(
            levels(&f),
            vec![
                ("proxy-plugin", Level::Fail),
                ("cri-snapshotter", Level::Fail),
                ("snapshot-annotations", Level::Fail),
                ("hook", Level::Warn),
            ]
        );
        assert!(f[1].detail.contains("\"overlayfs\""), "{}", f[1].detail);
    }

    #[test]
    fn a_2_1_config_checks_remote_annotations_runtime_snapshotters_and_the_verifier() {
        let bin = tempfile::tempdir().unwrap();
        let d = dump(&format!(
            r#"version = 3
[proxy_plugins.kcache]
  type = "snapshot"
  address = "{SOCK}"
[plugins."io.containerd.cri.v1.images"]
  snapshotter = "kcache"
  use_local_image_pull = true
[plugins."io.containerd.cri.v1.images".runtime_platforms.gvisor]
  snapshotter = "overlayfs"
[plugins."io.containerd.image-verifier.v1.bindir"]
  bin_dir = "{}"
"#,
            bin.path().display()
        ));
        let f = check_config(&d, Flavor::V2_1, SOCK, "runc");
        assert_eq!(
            levels(&f),
            vec![
                ("proxy-plugin", Level::Ok),
                ("cri-snapshotter", Level::Ok),
                ("runtime-snapshotter", Level::Fail),
                ("snapshot-annotations", Level::Fail),
                ("transfer-service", Level::Warn),
                ("image-verifier", Level::Warn),
                ("hook", Level::Warn),
            ]
        );
        assert!(f[2].detail.contains("runtime_platforms.gvisor"), "{}", f[2].detail);
        // The verifier in place (an executable 00-kcache) is ok.
        let v = bin.path().join(VERIFIER_LINK);
        std::fs::write(&v, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&v, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(check_bindir(&d).level, Level::Ok);
    }

    #[test]
    fn daemon_findings() {
        let status = |mode: &str| kcache_plugin::daemon::policy_store::PolicyStatus {
            generation: 7,
            mode: serde_json::from_value(mode.into()).unwrap(),
            rules: 2,
            sources: vec![],
            loaded_at: 0,
            last_error: None,
            reloads: 0,
        };
        let gate = |chain_check| {
            Ok(kcache_plugin::api::GateStatus {
                chain_check,
                unlabeled: kcache_core::api::Unlabeled::Allow,
            })
        };
        let f = check_daemon(Ok(status("enforce")), gate(true));
        assert_eq!(levels(&f), vec![("policy-mode", Level::Ok), ("chain-check", Level::Ok)]);
        let f = check_daemon(Ok(status("warn")), gate(false));
        assert_eq!(
            levels(&f),
            vec![("policy-mode", Level::Fail), ("chain-check", Level::Warn)]
        );
        let f = check_daemon(Err("connection refused".into()), Err("connection refused".into()));
        assert_eq!(levels(&f), vec![("kcached", Level::Fail), ("chain-check", Level::Fail)]);
    }
}

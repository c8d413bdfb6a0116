//! `kcache doctor`'s rules: every way a pull on this node could skip verification, as typed
//! findings. The inputs are read by the caller: containerd's *effective* configuration
//! (`containerd config dump`: config.toml with its imports and containerd's defaults, which is
//! what containerd runs with), kcached's answers, and the outcome of a canary pull through CRI.
//!
//! Each finding is [`Level::Ok`], [`Level::Warn`] (verification still holds, something else is
//! off) or [`Level::Fail`] (pulls could skip verification, or kcache could not check).

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use serde::Serialize;
use toml::Value;

use super::{
    cri_tables, ContainerdError, Flavor, PullPath, Result, BINDIR, CRI_IMAGES, NRI, NRI_SOCKET, POD_ANNOTATIONS,
    TRANSFER, VERIFIER_LINK,
};
use crate::{
    api::{GateStatus, PolicyStatus, RegistryStatus},
    policy::Mode,
    refusal,
};

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

impl Level {
    /// `ok`, `warn` or `FAIL`, as the text report prints it.
    pub fn label(self) -> &'static str {
        match self {
            Level::Ok => "ok",
            Level::Warn => "warn",
            Level::Fail => "FAIL",
        }
    }
}

/// What a finding is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Check {
    /// `[proxy_plugins.kcache]` reaches kcached.
    ProxyPlugin,
    /// CRI unpacks with the kcache snapshotter.
    CriSnapshotter,
    /// No runtime handler unpacks with another snapshotter.
    RuntimeSnapshotter,
    /// The gate receives the image labels it verifies.
    SnapshotAnnotations,
    /// containerd 2.1+: whether CRI pulls go through the transfer service.
    TransferService,
    /// containerd 2.1+: the transfer service unpacks into kcache.
    UnpackConfig,
    /// containerd 2.x: the bindir image verifier.
    ImageVerifier,
    /// kcache-hook in the runtime's base spec.
    Hook,
    /// kcached answers.
    Kcached,
    /// kcached's policy mode.
    PolicyMode,
    /// The policy files on disk load.
    PolicyReload,
    /// The gate's chain check.
    ChainCheck,
    /// kcache asks the registry hosts containerd pulls from (`config_path`).
    RegistryHosts,
    /// A canary pull through CRI is refused.
    Canary,
}

impl Check {
    /// The check's name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Check::ProxyPlugin => "proxy-plugin",
            Check::CriSnapshotter => "cri-snapshotter",
            Check::RuntimeSnapshotter => "runtime-snapshotter",
            Check::SnapshotAnnotations => "snapshot-annotations",
            Check::TransferService => "transfer-service",
            Check::UnpackConfig => "unpack-config",
            Check::ImageVerifier => "image-verifier",
            Check::Hook => "hook",
            Check::Kcached => "kcached",
            Check::PolicyMode => "policy-mode",
            Check::PolicyReload => "policy-reload",
            Check::ChainCheck => "chain-check",
            Check::RegistryHosts => "registry-hosts",
            Check::Canary => "canary",
        }
    }
}

/// One check's result.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// How bad.
    pub level: Level,
    /// About what.
    pub check: Check,
    /// What was found, in words.
    pub detail: String,
}

fn finding(level: Level, check: Check, detail: impl Into<String>) -> Finding {
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

/// containerd's effective configuration: `containerd --config CONFIG config dump`.
pub fn dump_config(containerd: &Path, config: &Path) -> Result<Value> {
    let out = Command::new(containerd)
        .arg("--config")
        .arg(config)
        .args(["config", "dump"])
        .output()
        .map_err(|source| ContainerdError::DumpCommand {
            bin: containerd.to_owned(),
            source,
        })?;
    if !out.status.success() {
        return Err(ContainerdError::DumpFailed {
            bin: containerd.to_owned(),
            config: config.to_owned(),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    toml::from_str(&String::from_utf8_lossy(&out.stdout)).map_err(|e| ContainerdError::DumpToml(Box::new(e)))
}

/// The checks on containerd's effective configuration.
pub fn check_config(dump: &Value, flavor: Flavor, socket: &str, runtime: &str) -> Vec<Finding> {
    let mut out = Vec::new();
    // The proxy plugin: containerd must reach kcached, not something else under its name.
    match (
        str_at(dump, &["proxy_plugins", "kcache", "type"]),
        str_at(dump, &["proxy_plugins", "kcache", "address"]),
    ) {
        (Some("snapshot"), Some(a)) if a == socket => out.push(finding(
            Level::Ok,
            Check::ProxyPlugin,
            format!("proxy_plugins.kcache is the snapshotter at {a}"),
        )),
        (Some("snapshot"), Some(a)) => out.push(finding(
            Level::Fail,
            Check::ProxyPlugin,
            format!("proxy_plugins.kcache points at {a}, not kcached's {socket}"),
        )),
        _ => out.push(finding(
            Level::Fail,
            Check::ProxyPlugin,
            "no [proxy_plugins.kcache] of type \"snapshot\": containerd cannot use kcached (kcache install containerd)",
        )),
    }
    let (images, runtimes) = cri_tables(flavor.default_schema());
    let images_key = images.join(".");
    // CRI must unpack through the gate.
    match str_at(dump, &[images, &["snapshotter"]].concat()) {
        Some("kcache") => out.push(finding(
            Level::Ok,
            Check::CriSnapshotter,
            "CRI unpacks images with the kcache snapshotter",
        )),
        other => out.push(finding(
            Level::Fail,
            Check::CriSnapshotter,
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
                Check::RuntimeSnapshotter,
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
                Check::SnapshotAnnotations,
                "CRI labels each layer with the image and manifest digest the gate verifies",
            )),
            _ => out.push(finding(
                Level::Fail,
                Check::SnapshotAnnotations,
                format!(
                    "{images_key}.disable_snapshot_annotations is not false: CRI pulls carry no image labels, so the gate \
                     cannot verify them (they unpack unverified, or are refused with --unlabeled deny)"
                ),
            )),
        },
        Flavor::V2_1 => out.extend(check_2_1_pulls(dump, disable)),
    }
    // containerd 2.0: the bindir image verifier (2.1's is checked with its pull path).
    if flavor == Flavor::V2_0 {
        out.push(check_bindir(dump));
    }
    out.push(check_hook(dump, runtimes, runtime));
    out
}

/// How containerd 2.1+'s CRI pulls, as containerd decides it at start
/// (`CheckLocalImagePullConfigs`): `use_local_image_pull = true`, or any CRI image setting the
/// transfer service does not support, makes it pull through the client.
pub fn cri_pull_path(dump: &Value) -> (PullPath, Option<&'static str>) {
    let images = |k: &str| at(dump, &["plugins", CRI_IMAGES, k]);
    if images("use_local_image_pull").and_then(Value::as_bool) == Some(true) {
        return (PullPath::Local, None);
    }
    let non_empty = |k: &str| {
        at(dump, &["plugins", CRI_IMAGES, "registry", k])
            .and_then(Value::as_table)
            .is_some_and(|t| !t.is_empty())
    };
    let triggers: [(&'static str, bool); 7] = [
        (
            "disable_snapshot_annotations = false",
            images("disable_snapshot_annotations").and_then(Value::as_bool) == Some(false),
        ),
        (
            "discard_unpacked_layers = true",
            images("discard_unpacked_layers").and_then(Value::as_bool) == Some(true),
        ),
        ("registry.mirrors", non_empty("mirrors")),
        ("registry.configs", non_empty("configs")),
        ("registry.auths", non_empty("auths")),
        (
            "max_concurrent_downloads other than 3",
            images("max_concurrent_downloads")
                .and_then(Value::as_integer)
                .is_some_and(|n| n != 3),
        ),
        (
            "image_pull_with_sync_fs = true",
            images("image_pull_with_sync_fs").and_then(Value::as_bool) == Some(true),
        ),
    ];
    match triggers.iter().find(|(_, on)| *on) {
        Some((why, _)) => (PullPath::Local, Some(why)),
        None => (PullPath::Transfer, None),
    }
}

/// Whether the transfer service's unpack_config lets it unpack into kcache.
fn unpacks_into_kcache(dump: &Value) -> bool {
    at(dump, &["plugins", TRANSFER, "unpack_config"])
        .and_then(Value::as_array)
        .is_some_and(|a| {
            a.iter()
                .any(|e| e.get("snapshotter").and_then(Value::as_str) == Some("kcache"))
        })
}

/// containerd 2.1+: the checks that depend on how CRI pulls.
fn check_2_1_pulls(dump: &Value, disable: Option<bool>) -> Vec<Finding> {
    let mut out = Vec::new();
    let images_key = format!("plugins.{CRI_IMAGES}");
    match cri_pull_path(dump) {
        (PullPath::Local, why) => {
            // Local pulls run no image verifier: the gate is the only line, and it needs labels.
            out.push(match disable {
                Some(false) => finding(
                    Level::Ok,
                    Check::SnapshotAnnotations,
                    "CRI pulls locally and labels each layer with the image and manifest digest the gate verifies",
                ),
                _ => finding(
                    Level::Fail,
                    Check::SnapshotAnnotations,
                    format!(
                        "CRI pulls locally with {images_key}.disable_snapshot_annotations not false: CRI pulls skip both \
                         the image verifier (it runs on transfer-service pulls only) and the gate (no image labels)"
                    ),
                ),
            });
            out.push(match why {
                None => finding(
                    Level::Ok,
                    Check::TransferService,
                    "CRI pulls locally (use_local_image_pull = true, as kcache install --local-pull sets): the kcache \
                     gate verifies CRI pulls; the image verifier runs on other transfer-service pulls",
                ),
                Some(why) => finding(
                    Level::Warn,
                    Check::TransferService,
                    format!(
                        "{images_key}: {why} makes CRI fall back to local pulls, so the image verifier does not run for \
                         CRI pulls (the kcache gate still verifies them); set use_local_image_pull = true to make that \
                         the choice, or move the setting to the transfer service"
                    ),
                ),
            });
            out.push(check_bindir(dump));
        }
        (PullPath::Transfer, _) => {
            out.push(if unpacks_into_kcache(dump) {
                finding(
                    Level::Ok,
                    Check::UnpackConfig,
                    "the transfer service unpacks into kcache (plugins.io.containerd.transfer.v1.local.unpack_config)",
                )
            } else {
                finding(
                    Level::Fail,
                    Check::UnpackConfig,
                    format!(
                        "plugins.{TRANSFER}.unpack_config has no entry for kcache: every CRI pull fails (\"no unpack \
                         platforms defined\") (kcache install containerd)"
                    ),
                )
            });
            let labels = str_at(
                dump,
                &[
                    "proxy_plugins",
                    "kcache",
                    "exports",
                    "enable_remote_snapshot_annotations",
                ],
            ) == Some("true");
            out.push(if labels {
                finding(
                    Level::Ok,
                    Check::SnapshotAnnotations,
                    "the transfer service sends the image labels to kcached (enable_remote_snapshot_annotations)",
                )
            } else {
                finding(
                    Level::Fail,
                    Check::SnapshotAnnotations,
                    "proxy_plugins.kcache.exports.enable_remote_snapshot_annotations is not \"true\": transfer-service \
                     pulls carry no image labels, so the gate cannot verify them",
                )
            });
            let verifier = check_bindir(dump);
            if !labels && verifier.level != Level::Ok {
                out.push(finding(
                    Level::Fail,
                    Check::TransferService,
                    "CRI pulls through the transfer service skip both the image verifier and the gate",
                ));
            }
            out.push(verifier);
        }
    }
    out
}

/// The hook: not about verification, but without it no cache reaches a pod.
fn check_hook(dump: &Value, runtimes: &[&str], runtime: &str) -> Finding {
    hook_route(dump, runtimes, runtime, None)
}

/// The hook check for a node where kcached may run the NRI plugin: `nri_socket` is kcached's
/// `[nri] socket` (None: its NRI plugin is off). Either route passes: kcache-hook in the base
/// runtime spec, or containerd's NRI on at the socket kcached connects to. Both at once run the
/// hook twice in opted-in containers (a warning). Replaces [`check_config`]'s `hook` finding.
pub fn check_hook_route(dump: &Value, flavor: Flavor, runtime: &str, nri_socket: Option<&str>) -> Finding {
    let (_, runtimes) = cri_tables(flavor.default_schema());
    hook_route(dump, runtimes, runtime, nri_socket)
}

/// containerd's NRI as the dump says: None without the plugin (1.6), else whether it is on and
/// its socket.
fn nri_state(dump: &Value) -> Option<(bool, String)> {
    let t = at(dump, &["plugins", NRI])?.as_table()?;
    let disabled = t.get("disable").and_then(Value::as_bool).unwrap_or(false);
    let socket = t
        .get("socket_path")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .unwrap_or(NRI_SOCKET)
        .to_owned();
    Some((!disabled, socket))
}

fn hook_route(dump: &Value, runtimes: &[&str], runtime: &str, nri_socket: Option<&str>) -> Finding {
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
    // The NRI route: kcached's plugin on containerd's NRI socket. It adds the pod's kcache
    // annotations itself, so pod_annotations is not needed there.
    let nri = nri_socket.map(|ours| match nri_state(dump) {
        None => Err("this containerd has no NRI plugin (1.7 or later)".to_owned()),
        Some((false, _)) => Err(format!(
            "containerd's NRI is disabled (plugins.\"{NRI}\".disable = true; kcache install containerd --nri)"
        )),
        Some((true, theirs)) if theirs != ours => Err(format!(
            "containerd's NRI socket is {theirs}, but kcached's [nri] socket is {ours}"
        )),
        Some((true, theirs)) => Ok(theirs),
    });
    match (hooked, &nri) {
        (true, Some(Ok(socket))) => {
            return finding(
                Level::Warn,
                Check::Hook,
                format!(
                    "runtime {runtime}: kcache-hook is both in the base spec {spec} and added by kcached's NRI plugin                      (on {socket}): opted-in containers run it twice; reinstall with or without --nri"
                ),
            )
        }
        (false, Some(Ok(socket))) => {
            return finding(
                Level::Ok,
                Check::Hook,
                format!(
                    "kcache-hook through NRI: kcached's plugin on {socket} adds it to containers of pods with                      kcache.dev/cache only"
                ),
            )
        }
        _ => {}
    }
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
    if let Some(Err(why)) = &nri {
        missing.push(format!("kcached's NRI plugin cannot work: {why}"));
    }
    if missing.is_empty() {
        finding(
            Level::Ok,
            Check::Hook,
            format!("runtime {runtime} runs kcache-hook (base spec {spec}) and passes kcache.dev/* annotations"),
        )
    } else {
        finding(
            Level::Warn,
            Check::Hook,
            format!(
                "runtime {runtime}: {}: kernel caches are not mounted into pods (kcache install containerd, with or \
                 without --nri)",
                missing.join(", ")
            ),
        )
    }
}

/// containerd 2.x's bindir verifier: kcache's link in bin_dir, executable, among the first
/// `max_verifiers`.
pub fn check_bindir(dump: &Value) -> Finding {
    let key = format!("plugins.{BINDIR}");
    let Some(dir) = str_at(dump, &["plugins", BINDIR, "bin_dir"]).filter(|d| !d.is_empty()) else {
        return finding(
            Level::Warn,
            Check::ImageVerifier,
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
            Check::ImageVerifier,
            format!("containerd runs {} on transfer-service pulls", link.display()),
        ),
        Some(_) if !executable => finding(
            Level::Warn,
            Check::ImageVerifier,
            format!("{} is not an executable file: containerd fails pulls while it cannot run it", link.display()),
        ),
        Some(p) => finding(
            Level::Warn,
            Check::ImageVerifier,
            format!("{} is entry {} in {dir}, but containerd runs only the first {max}", link.display(), p + 1),
        ),
        None => finding(
            Level::Warn,
            Check::ImageVerifier,
            format!("{dir} has no {VERIFIER_LINK}: transfer-service pulls are not checked before they download (the gate still verifies CRI pulls)"),
        ),
    }
}

/// The checks on kcached's answers (each Err: why kcached could not be asked).
pub fn check_daemon(
    policy: std::result::Result<PolicyStatus, String>,
    gate: std::result::Result<GateStatus, String>,
) -> Vec<Finding> {
    let mut out = Vec::new();
    match policy {
        Err(e) => out.push(finding(
            Level::Fail,
            Check::Kcached,
            format!("kcached does not answer ({e}): containerd cannot unpack anything through kcache"),
        )),
        Ok(p) => {
            out.push(match p.mode {
                Mode::Enforce => finding(
                    Level::Ok,
                    Check::PolicyMode,
                    format!("enforce, {} rules, generation {}", p.rules, p.generation),
                ),
                Mode::Warn => finding(
                    Level::Fail,
                    Check::PolicyMode,
                    "mode warn: images that fail the policy are pulled and run (only logged)",
                ),
                Mode::Off => finding(Level::Fail, Check::PolicyMode, "mode off: nothing is verified"),
            });
            if let Some(e) = p.last_error {
                out.push(finding(
                    Level::Warn,
                    Check::PolicyReload,
                    format!("the policy files on disk are broken; the previous policy stays in force: {e}"),
                ));
            }
        }
    }
    match gate {
        Err(e) => out.push(finding(
            Level::Fail,
            Check::ChainCheck,
            format!("cannot read the gate's settings: {e}"),
        )),
        Ok(g) if !g.chain_check => out.push(finding(
            Level::Warn,
            Check::ChainCheck,
            "kcached runs with --no-chain-check: containers may start on layers unpacked around the gate (ctr pull, earlier installs)",
        )),
        Ok(g) => out.push(finding(
            Level::Ok,
            Check::ChainCheck,
            format!("containers start only on verified chains; unlabeled unpacks: {}", g.unlabeled),
        )),
    }
    out
}

/// containerd's CRI registry `config_path` (`:`-separated directories), and whether the
/// deprecated `registry.mirrors` table is in use.
pub fn registry_hosts(dump: &Value, flavor: Flavor) -> (Vec<PathBuf>, bool) {
    let registry: &[&str] = if flavor.default_schema() >= 3 {
        &["plugins", CRI_IMAGES, "registry"]
    } else {
        &["plugins", super::CRI_V2, "registry"]
    };
    let path = str_at(dump, &[registry, &["config_path"]].concat())
        .map(crate::registry::split_config_path)
        .unwrap_or_default();
    let mirrors = at(dump, &[registry, &["mirrors"]].concat())
        .and_then(Value::as_table)
        .is_some_and(|t| !t.is_empty());
    (path, mirrors)
}

/// Whether kcached asks the registry hosts containerd pulls from: the same `config_path`
/// (signatures and referrers then come from the host the image came from).
pub fn check_registry_hosts(
    containerd: &[PathBuf],
    legacy_mirrors: bool,
    kcached: std::result::Result<RegistryStatus, String>,
) -> Finding {
    let show = |p: &[PathBuf]| {
        if p.is_empty() {
            "none".to_owned()
        } else {
            p.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(":")
        }
    };
    match kcached {
        Err(e) => finding(
            Level::Warn,
            Check::RegistryHosts,
            format!("cannot read kcached's registry settings: {e}"),
        ),
        Ok(_) if legacy_mirrors => finding(
            Level::Warn,
            Check::RegistryHosts,
            "containerd uses the deprecated registry.mirrors table, which kcache does not read: move the mirrors to \
             hosts.toml under a config_path (kcache then asks the same mirrors)",
        ),
        Ok(k) if k.config_path == containerd => finding(
            Level::Ok,
            Check::RegistryHosts,
            format!("kcached and containerd read the same registry hosts (config_path {})", show(containerd)),
        ),
        Ok(k) => finding(
            Level::Warn,
            Check::RegistryHosts,
            format!(
                "containerd's registry config_path is {} but kcached's is {}: signatures may be looked up on other hosts \
                 than the image comes from (set [registry] config_path in kcache's config.toml, or run \
                 kcache install containerd --write)",
                show(containerd),
                show(&k.config_path)
            ),
        ),
    }
}

/// How a canary pull through CRI ended.
#[derive(Debug, Clone)]
pub enum CanaryPull {
    /// CRI could not be reached.
    Unreachable(String),
    /// CRI answered the pull with an error (its gRPC code's name and message).
    Failed {
        /// The gRPC status code, by name.
        code: String,
        /// The message.
        message: String,
    },
    /// The image was pulled (and the caller removed it again).
    Pulled {
        /// CRI's image ref.
        image_ref: String,
    },
}

/// The canary finding: refused by kcache (the gate or the image verifier, recognised by the
/// [`refusal`] line both print) is the good outcome.
pub fn check_canary(image: &str, pull: CanaryPull) -> Finding {
    match pull {
        CanaryPull::Unreachable(e) => finding(Level::Fail, Check::Canary, format!("cannot reach containerd's CRI at {e}")),
        CanaryPull::Failed { code, message } => match refusal::find_text(&message) {
            Some(why) => finding(Level::Ok, Check::Canary, format!("{image} was refused: {why}")),
            None => finding(
                Level::Fail,
                Check::Canary,
                format!("{image} failed to pull, but not by kcache ({code}): {message}"),
            ),
        },
        CanaryPull::Pulled { image_ref } => finding(
            Level::Fail,
            Check::Canary,
            format!(
                "{image} was pulled ({image_ref}) and is removed again: pulls are not verified, or its layers were already on the node"
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Unlabeled;

    #[test]
    fn registry_hosts_compare_containerd_and_kcached() {
        let dump: Value = toml::from_str(
            "[plugins.'io.containerd.cri.v1.images'.registry]\nconfig_path = '/etc/containerd/certs.d:/etc/docker/certs.d'\n",
        )
        .unwrap();
        let (path, legacy) = registry_hosts(&dump, Flavor::V2_1);
        assert_eq!(
            path,
            [
                PathBuf::from("/etc/containerd/certs.d"),
                PathBuf::from("/etc/docker/certs.d")
            ]
        );
        assert!(!legacy);
        let same = RegistryStatus {
            config_path: path.clone(),
            insecure: vec![],
        };
        assert_eq!(check_registry_hosts(&path, false, Ok(same)).level, Level::Ok);
        let f = check_registry_hosts(&path, false, Ok(RegistryStatus::default()));
        assert_eq!(f.level, Level::Warn);
        assert!(
            f.detail.contains("/etc/containerd/certs.d:/etc/docker/certs.d") && f.detail.contains("none"),
            "{}",
            f.detail
        );
        // 1.x keeps the registry table under the CRI plugin; the deprecated mirrors are named.
        let v1: Value = toml::from_str(
            "[plugins.'io.containerd.grpc.v1.cri'.registry.mirrors.'docker.io']\nendpoint = ['https://m.example']\n",
        )
        .unwrap();
        let (path, legacy) = registry_hosts(&v1, Flavor::V1);
        assert!(path.is_empty() && legacy);
        let f = check_registry_hosts(&path, legacy, Ok(RegistryStatus::default()));
        assert!(
            f.level == Level::Warn && f.detail.contains("registry.mirrors"),
            "{}",
            f.detail
        );
    }

    fn dump(text: &str) -> Value {
        toml::from_str(text).unwrap()
    }

    fn levels(f: &[Finding]) -> Vec<(&'static str, Level)> {
        f.iter().map(|f| (f.check.name(), f.level)).collect()
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
                // Local pulls without labels: neither the verifier nor the gate.
                ("snapshot-annotations", Level::Fail),
                ("transfer-service", Level::Ok),
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

    /// A containerd 2.1 dump as `kcache install containerd` leaves it, with `extra` appended.
    fn dump_2_1(bin: &Path, remote: bool, unpack: &[&str], extra: &str) -> Value {
        let entries: Vec<String> = unpack
            .iter()
            .map(|s| format!("{{platform = \"linux/amd64\", snapshotter = \"{s}\"}}"))
            .collect();
        dump(&format!(
            r#"version = 3
[proxy_plugins.kcache]
  type = "snapshot"
  address = "{SOCK}"
  [proxy_plugins.kcache.exports]
    enable_remote_snapshot_annotations = "{remote}"
[plugins."io.containerd.transfer.v1.local"]
  unpack_config = [{}]
[plugins."io.containerd.image-verifier.v1.bindir"]
  bin_dir = "{}"
{extra}"#,
            entries.join(", "),
            bin.display()
        ))
    }

    fn verifier_in(bin: &Path) {
        let v = bin.join(VERIFIER_LINK);
        std::fs::write(&v, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&v, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn of(f: &[Finding], check: Check) -> Vec<Level> {
        f.iter().filter(|x| x.check == check).map(|x| x.level).collect()
    }

    #[test]
    fn on_2_1_the_transfer_path_needs_kcache_in_unpack_config_and_one_of_verifier_or_labels() {
        let bin = tempfile::tempdir().unwrap();
        let images = "[plugins.\"io.containerd.cri.v1.images\"]\n  snapshotter = \"kcache\"\n  disable_snapshot_annotations = true\n  max_concurrent_downloads = 3\n";
        // As installed: no FAIL.
        verifier_in(bin.path());
        let d = dump_2_1(bin.path(), true, &["overlayfs", "kcache"], images);
        assert_eq!(cri_pull_path(&d), (PullPath::Transfer, None));
        let f = check_config(&d, Flavor::V2_1, SOCK, "runc");
        assert!(f.iter().all(|x| x.level != Level::Fail), "{f:#?}");
        assert_eq!(of(&f, Check::UnpackConfig), [Level::Ok]);
        assert_eq!(of(&f, Check::ImageVerifier), [Level::Ok]);
        // kcache missing from unpack_config: every CRI pull fails.
        let d = dump_2_1(bin.path(), true, &["overlayfs"], images);
        let f = check_config(&d, Flavor::V2_1, SOCK, "runc");
        assert_eq!(of(&f, Check::UnpackConfig), [Level::Fail]);
        // No labels, no verifier: CRI pulls skip both.
        std::fs::remove_file(bin.path().join(VERIFIER_LINK)).unwrap();
        let d = dump_2_1(bin.path(), false, &["kcache"], images);
        let f = check_config(&d, Flavor::V2_1, SOCK, "runc");
        assert_eq!(of(&f, Check::TransferService), [Level::Fail]);
        assert_eq!(of(&f, Check::SnapshotAnnotations), [Level::Fail]);
        // No verifier, but labels: the gate still holds.
        let d = dump_2_1(bin.path(), true, &["kcache"], images);
        let f = check_config(&d, Flavor::V2_1, SOCK, "runc");
        assert!(of(&f, Check::TransferService).is_empty());
        assert_eq!(of(&f, Check::ImageVerifier), [Level::Warn]);
    }

    #[test]
    fn on_2_1_a_working_local_pull_setup_has_no_fail_and_an_implicit_one_warns() {
        let bin = tempfile::tempdir().unwrap();
        verifier_in(bin.path());
        // kcache install --local-pull: no unpack_config needed, labels from CRI.
        let local = "[plugins.\"io.containerd.cri.v1.images\"]\n  snapshotter = \"kcache\"\n  use_local_image_pull = true\n  disable_snapshot_annotations = false\n";
        let d = dump_2_1(bin.path(), true, &["overlayfs"], local);
        assert_eq!(cri_pull_path(&d), (PullPath::Local, None));
        let f = check_config(&d, Flavor::V2_1, SOCK, "runc");
        assert!(f.iter().all(|x| x.level != Level::Fail), "{f:#?}");
        assert_eq!(of(&f, Check::TransferService), [Level::Ok]);
        assert!(of(&f, Check::UnpackConfig).is_empty());
        // Mirrors in config.toml: containerd falls back to local pulls on its own.
        let mirrors = "[plugins.\"io.containerd.cri.v1.images\"]\n  snapshotter = \"kcache\"\n  disable_snapshot_annotations = false\n[plugins.\"io.containerd.cri.v1.images\".registry.mirrors.\"docker.io\"]\n  endpoint = [\"https://m\"]\n";
        let d = dump_2_1(bin.path(), true, &["kcache"], mirrors);
        assert_eq!(
            cri_pull_path(&d),
            (PullPath::Local, Some("disable_snapshot_annotations = false"))
        );
        let f = check_config(&d, Flavor::V2_1, SOCK, "runc");
        assert_eq!(of(&f, Check::TransferService), [Level::Warn]);
        assert!(f.iter().all(|x| x.level != Level::Fail), "{f:#?}");
        // Local pulls without labels: both lines skipped.
        let bare = "[plugins.\"io.containerd.cri.v1.images\"]\n  snapshotter = \"kcache\"\n  use_local_image_pull = true\n  disable_snapshot_annotations = true\n";
        let f = check_config(
            &dump_2_1(bin.path(), true, &["kcache"], bare),
            Flavor::V2_1,
            SOCK,
            "runc",
        );
        assert_eq!(of(&f, Check::SnapshotAnnotations), [Level::Fail]);
    }

    #[test]
    fn daemon_findings() {
        let status = |mode| PolicyStatus {
            generation: 7,
            mode,
            rules: 2,
            sources: vec![],
            loaded_at: 0,
            reloads: 0,
            last_error: None,
        };
        let gate = |chain_check| {
            Ok(GateStatus {
                chain_check,
                unlabeled: Unlabeled::Allow,
            })
        };
        let f = check_daemon(Ok(status(Mode::Enforce)), gate(true));
        assert_eq!(levels(&f), vec![("policy-mode", Level::Ok), ("chain-check", Level::Ok)]);
        let f = check_daemon(Ok(status(Mode::Warn)), gate(false));
        assert_eq!(
            levels(&f),
            vec![("policy-mode", Level::Fail), ("chain-check", Level::Warn)]
        );
        let f = check_daemon(Err("connection refused".into()), Err("connection refused".into()));
        assert_eq!(levels(&f), vec![("kcached", Level::Fail), ("chain-check", Level::Fail)]);
    }

    #[test]
    fn the_canary_is_ok_only_when_kcache_refused_it() {
        let line = refusal::Refusal {
            image: "r/e2e/canary:v1",
            digest: "sha256:ab",
            rule: "e2e",
            reason: "no signature found",
        }
        .to_string();
        let failed = |message: String| CanaryPull::Failed {
            code: "Unknown".into(),
            message,
        };
        // The gate's refusal through CRI, and the image verifier's through the transfer service.
        for message in [
            format!("failed to pull and unpack image \"r/e2e/canary:v1\": failed to prepare extraction snapshot: {line} (snapshot x)"),
            format!("failed to pull and unpack image \"r/e2e/canary:v1\": image verifier 00-kcache rejected image \"r/e2e/canary:v1\" (exit status 1): {line} [kcached]"),
        ] {
            let f = check_canary("r/e2e/canary:v1", failed(message));
            assert_eq!(f.level, Level::Ok, "{}", f.detail);
            assert!(f.detail.contains(&line), "{}", f.detail);
        }
        for pull in [
            failed("failed to resolve reference: connection refused".into()),
            failed("kcache: image is broken".into()),
            CanaryPull::Pulled {
                image_ref: "sha256:1".into(),
            },
            CanaryPull::Unreachable("no socket".into()),
        ] {
            assert_eq!(check_canary("r/e2e/canary:v1", pull).level, Level::Fail);
        }
    }

    #[test]
    fn either_hook_route_passes_and_both_at_once_warn() {
        let tmp = tempfile::tempdir().unwrap();
        let spec = tmp.path().join("spec.json");
        std::fs::write(
            &spec,
            r#"{"hooks":{"prestart":[{"path":"/usr/libexec/kcache/kcache-hook"}],"poststop":[{"path":"/usr/libexec/kcache/kcache-hook"}]}}"#,
        )
        .unwrap();
        let runc = |base: bool| {
            let mut t = String::from("[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]\n  pod_annotations = [\"kcache.dev/*\"]\n");
            if base {
                t += &format!("  base_runtime_spec = \"{}\"\n", spec.display());
            }
            t
        };
        let nri = |disable: bool| {
            format!("[plugins.\"io.containerd.nri.v1.nri\"]\n  disable = {disable}\n  socket_path = \"/var/run/nri/nri.sock\"\n")
        };
        let sock = Some("/var/run/nri/nri.sock");
        let level = |text: String, nri_socket| check_hook_route(&dump(&text), Flavor::V1, "runc", nri_socket).level;
        // Base spec only: ok, with or without an NRI section.
        assert_eq!(level(runc(true), None), Level::Ok);
        assert_eq!(level(runc(true) + &nri(true), None), Level::Ok);
        // NRI only: ok when containerd's NRI is on at kcached's socket.
        assert_eq!(level(runc(false) + &nri(false), sock), Level::Ok);
        let f = check_hook_route(&dump(&(runc(false) + &nri(false))), Flavor::V1, "runc", sock);
        assert!(f.detail.contains("through NRI"), "{}", f.detail);
        // NRI off (1.7's default), another socket, no NRI plugin (1.6), or no route at all: warn.
        for (text, s) in [
            (runc(false) + &nri(true), sock),
            (runc(false) + &nri(false), Some("/elsewhere.sock")),
            (runc(false), sock),
            (runc(false) + &nri(false), None),
        ] {
            assert_eq!(level(text.clone(), s), Level::Warn, "{text} {s:?}");
        }
        // Both: the hook would run twice.
        let f = check_hook_route(&dump(&(runc(true) + &nri(false))), Flavor::V1, "runc", sock);
        assert_eq!(f.level, Level::Warn);
        assert!(f.detail.contains("twice"), "{}", f.detail);
        // 2.x: NRI on by default (no disable key).
        let d = "[plugins.\"io.containerd.nri.v1.nri\"]\n  socket_path = \"/var/run/nri/nri.sock\"\n";
        assert_eq!(check_hook_route(&dump(d), Flavor::V2_1, "runc", sock).level, Level::Ok);
    }
}

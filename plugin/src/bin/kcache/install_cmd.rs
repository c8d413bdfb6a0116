//! `kcache install containerd|crio`: flags in, [`kcache_core::containerd::plan`] out, printed
//! or written. What is set per containerd line, and why, is documented in
//! [`kcache_core::containerd`].

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use kcache_core::{
    containerd::{
        detect_flavor,
        plan::{plan, InstallRequest, PullPath},
        DEFAULT_HOOK, HOOK_TIMEOUT_S, VERIFIER_LINK,
    },
    fsutil::write_atomic,
};

use crate::Outcome;

#[derive(Subcommand)]
pub enum InstallCommand {
    /// Configure containerd: the kcache proxy snapshotter for CRI, the kcache-hook through the
    /// CRI base runtime spec, and (2.x) the image verifier binary.
    Containerd(Box<ContainerdArgs>),
    /// Register kcache-hook with CRI-O (and podman): an OCI hooks.d file, run only for
    /// containers with the `kcache.dev/cache` annotation.
    Crio(CrioArgs),
}

#[derive(Args)]
pub struct CrioArgs {
    /// Print the hooks.d file (the default).
    #[arg(long, conflicts_with = "write")]
    print: bool,
    /// Write it into --hooks-dir.
    #[arg(long)]
    write: bool,
    /// The hooks directory: CRI-O's default `hooks_dir` (podman reads it too). The admin
    /// override directory is /etc/containers/oci/hooks.d.
    #[arg(long, default_value = "/usr/share/containers/oci/hooks.d")]
    hooks_dir: PathBuf,
    /// The kcache-hook binary.
    #[arg(long, default_value = DEFAULT_HOOK)]
    hook_path: PathBuf,
    /// The cache store kcached writes (kcache-hook --store).
    #[arg(long, default_value = kcache_core::paths::CACHE_ROOT)]
    store: PathBuf,
    /// kcached's run directory (kcache-hook --run-dir).
    #[arg(long, default_value = "/run/kcache")]
    run_dir: PathBuf,
}

/// The OCI hooks.d (oci-hooks(5), version 1.0.0) file for kcache-hook.
pub fn crio_hook_json(hook: &Path, store: &Path, run_dir: &Path) -> String {
    let v = serde_json::json!({
        "version": "1.0.0",
        "hook": {
            "path": hook,
            "args": ["kcache-hook", "--store", store, "--run-dir", run_dir],
            "timeout": 10
        },
        "when": {"annotations": {"^kcache\\.dev/cache$": ".*"}},
        "stages": ["prestart", "poststop"]
    });
    serde_json::to_string_pretty(&v).unwrap_or_default() + "\n"
}

fn crio(a: CrioArgs) -> Result<Outcome> {
    for p in [&a.hook_path, &a.store, &a.run_dir] {
        if !p.is_absolute() {
            bail!("{} must be an absolute path", p.display());
        }
    }
    let json = crio_hook_json(&a.hook_path, &a.store, &a.run_dir);
    let path = a.hooks_dir.join("kcache.json");
    if !a.write {
        println!("# {}", path.display());
        print!("{json}");
        return Ok(Outcome::Ok);
    }
    if std::fs::read_to_string(&path).ok().as_deref() == Some(json.as_str()) {
        println!("unchanged: {}", path.display());
        println!("nothing to change: CRI-O is already configured for kcache");
        return Ok(Outcome::Ok);
    }
    std::fs::create_dir_all(&a.hooks_dir).with_context(|| format!("cannot create {}", a.hooks_dir.display()))?;
    write_atomic(&path, json.as_bytes(), 0o644, true).with_context(|| format!("cannot write {}", path.display()))?;
    println!("wrote:     {}", path.display());
    if !a.hook_path.is_file() {
        println!(
            "warning: {} does not exist yet (install kcache-hook there)",
            a.hook_path.display()
        );
    }
    println!("restart crio to apply (systemctl restart crio)");
    Ok(Outcome::Ok)
}

#[derive(Args)]
pub struct ContainerdArgs {
    /// Print the configuration kcache adds (the default).
    #[arg(long, conflicts_with = "write")]
    print: bool,
    /// Write it: config.toml (backed up first) or a drop-in, the base runtime spec, and the
    /// image verifier link.
    #[arg(long)]
    write: bool,
    /// containerd's version: auto (from `containerd --version`), 1.6, 1.7, 2.0, 2.1, 2.2 or 2 (latest 2.x).
    #[arg(long, default_value = "auto")]
    containerd_version: String,
    /// containerd's main config file.
    #[arg(long, default_value = DEFAULT_CONTAINERD_CONFIG)]
    config: PathBuf,
    /// containerd 2.x: the drop-in kcache owns (default: conf.d/kcache.toml beside --config).
    #[arg(long)]
    drop_in: Option<PathBuf>,
    /// kcached's snapshotter socket.
    #[arg(long, default_value = kcache_core::paths::SNAPSHOTTER_SOCKET)]
    snapshotter_socket: PathBuf,
    /// Where the base runtime spec (containerd's default spec plus the kcache hooks) goes.
    #[arg(long, default_value = kcache_core::paths::BASE_SPEC)]
    base_spec: PathBuf,
    /// Start the base spec from this OCI spec (default: the runtime's existing
    /// base_runtime_spec, else the --base-spec file of an earlier run, else `ctr oci spec`).
    #[arg(long)]
    base_spec_from: Option<PathBuf>,
    /// The kcache-hook binary the spec runs (prestart and poststop).
    #[arg(long, default_value = DEFAULT_HOOK)]
    hook_path: PathBuf,
    /// The CRI runtime handler that gets the hook.
    #[arg(long, default_value = "runc")]
    runtime: String,
    /// containerd 2.x: the image verifier directory.
    #[arg(long, default_value = "/opt/containerd/image-verifier/bin")]
    verifier_bin_dir: PathBuf,
    /// containerd 2.x: the kcache-image-verifier binary linked into --verifier-bin-dir
    /// (default: beside this kcache binary, else /usr/bin/kcache-image-verifier).
    #[arg(long)]
    verifier_path: Option<PathBuf>,
    /// containerd 2.x: the bindir plugin's max_verifiers.
    #[arg(long, default_value_t = 10)]
    max_verifiers: i64,
    /// containerd 2.x: the bindir plugin's per_verifier_timeout (kcache-image-verifier decides
    /// within 8 s by default; keep this above).
    #[arg(long, default_value = "10s")]
    per_verifier_timeout: String,
    /// The containerd binary (for --containerd-version auto).
    #[arg(long, default_value = "containerd")]
    containerd_bin: PathBuf,
    /// The ctr binary (for `ctr oci spec`).
    #[arg(long, default_value = "ctr")]
    ctr: PathBuf,
    /// containerd 2.1+: CRI pulls through the client instead of the transfer service
    /// (`use_local_image_pull = true`, `disable_snapshot_annotations = false`), for nodes whose
    /// CRI settings need it; the kcache gate alone then verifies CRI pulls.
    #[arg(long)]
    local_pull: bool,
    /// containerd 2.1+: a platform the transfer service unpacks into kcache (repeatable;
    /// default: this node's, e.g. linux/amd64).
    #[arg(long = "platform")]
    platforms: Vec<String>,
    /// kcache's config.toml, whose `[registry] config_path` is set to containerd's registry
    /// config_path (mirrors, CAs), so kcache asks the hosts containerd pulls from (default:
    /// /etc/kcache/config.toml when --config is containerd's own /etc/containerd/config.toml;
    /// for any other --config only when given, so a containerd of one's own never edits the
    /// node's kcache config).
    #[arg(long)]
    kcache_config: Option<PathBuf>,
    /// Leave kcache's config.toml alone.
    #[arg(long)]
    no_kcache_config: bool,
    /// The hook through NRI instead of the base runtime spec (containerd 1.7+): kcached's NRI
    /// plugin adds kcache-hook only to containers whose pod has `kcache.dev/cache`, so the
    /// others run no hook at all. Turns NRI on (1.7), writes no base spec, and sets `[nri]
    /// socket` and `hook` in kcache's config.toml (restart kcached too).
    #[arg(long)]
    nri: bool,
}

/// containerd's own config file.
const DEFAULT_CONTAINERD_CONFIG: &str = "/etc/containerd/config.toml";

pub fn run(c: InstallCommand) -> Result<Outcome> {
    match c {
        InstallCommand::Containerd(a) => containerd(*a),
        InstallCommand::Crio(a) => crio(a),
    }
}

fn verifier_path(a: &ContainerdArgs) -> PathBuf {
    if let Some(p) = &a.verifier_path {
        return p.clone();
    }
    std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("kcache-image-verifier")))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("/usr/bin/kcache-image-verifier"))
}

/// containerd 1.6 has no NRI plugin (NRI v0.1 only); --nri needs 1.7 or later.
fn check_nri_version(a: &ContainerdArgs) -> Result<()> {
    let version = if a.containerd_version == "auto" {
        let out = std::process::Command::new(&a.containerd_bin)
            .arg("--version")
            .output()
            .with_context(|| format!("cannot run {} --version", a.containerd_bin.display()))?;
        kcache_core::containerd::version_from_output(&String::from_utf8_lossy(&out.stdout))
            .unwrap_or("")
            .to_owned()
    } else {
        a.containerd_version.clone()
    };
    if version.trim_start_matches('v').starts_with("1.6") {
        bail!(
            "--nri: containerd {version} has no NRI plugin (1.7 or later); install without --nri (the base-spec hook)"
        );
    }
    Ok(())
}

fn containerd(a: ContainerdArgs) -> Result<Outcome> {
    if a.nri {
        check_nri_version(&a)?;
    }
    let kcache_config = if a.no_kcache_config {
        None
    } else {
        a.kcache_config
            .clone()
            .or_else(|| (a.config == Path::new(DEFAULT_CONTAINERD_CONFIG)).then(|| kcache_core::paths::CONFIG.into()))
    };
    let request = InstallRequest {
        nri: a.nri,
        flavor: detect_flavor(&a.containerd_version, &a.containerd_bin)?,
        verifier: verifier_path(&a),
        config: a.config,
        drop_in: a.drop_in,
        socket: a.snapshotter_socket,
        base_spec: a.base_spec,
        base_spec_from: a.base_spec_from,
        hook: a.hook_path,
        runtime: a.runtime,
        verifier_bin_dir: a.verifier_bin_dir,
        max_verifiers: a.max_verifiers,
        per_verifier_timeout: a.per_verifier_timeout,
        ctr: a.ctr,
        pull: if a.local_pull {
            PullPath::Local
        } else {
            PullPath::Transfer
        },
        platforms: a.platforms,
        kcache_config,
    };
    let p = plan(&request)?;
    if !a.write {
        println!("# containerd {}, config version {}", p.flavor, p.schema);
        match &p.drop_in {
            Some(d) => println!("# {} (imported from {})", d.display(), p.config.display()),
            None => println!(
                "# merged into {} (containerd 1.x replaces whole plugin sections from imports)",
                p.config.display()
            ),
        }
        print!("{}", p.fragment);
        if let Some(socket) = &p.nri_socket {
            println!("\n# no base runtime spec: kcached's NRI plugin (on {socket}) adds the hooks to containers of pods with kcache.dev/cache");
        } else {
            println!(
                "\n# base runtime spec {}: {} plus the hooks",
                p.base_spec.display(),
                p.spec_source
            );
        }
        println!(
            "#   prestart/poststop: {{\"path\": \"{}\", \"args\": [\"kcache-hook\", \"prestart|poststop\"], \"timeout\": {HOOK_TIMEOUT_S}}}",
            p.hook.display()
        );
        if let Some(v) = &p.verifier {
            println!(
                "# image verifier: {} -> {}",
                v.dir.join(VERIFIER_LINK).display(),
                v.target.display()
            );
        }
        if let Some((file, path)) = &p.registry_config_path {
            println!(
                "# {}: [registry] config_path = {path:?} (containerd's registry hosts)",
                file.display()
            );
        }
        for w in &p.warnings {
            println!("# warning: {w}");
        }
        return Ok(Outcome::Ok);
    }
    let changed = p.write(&mut |step| println!("{step}"))?;
    if changed == 0 {
        println!("nothing to change: containerd is already configured for kcache");
    } else {
        println!("restart containerd to apply (systemctl restart containerd)");
        if p.nri_socket.is_some() {
            println!("restart kcached too: it connects to NRI when its config.toml has [nri] socket");
        }
    }
    Ok(Outcome::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crio_hooks_file_matches_the_shipped_one() {
        let json = crio_hook_json(
            Path::new(DEFAULT_HOOK),
            Path::new(kcache_core::paths::CACHE_ROOT),
            Path::new("/run/kcache"),
        );
        let ours: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(ours["when"]["annotations"]["^kcache\\.dev/cache$"], ".*");
        assert_eq!(ours["stages"], serde_json::json!(["prestart", "poststop"]));
        let re = ours["when"]["annotations"]
            .as_object()
            .unwrap()
            .keys()
            .next()
            .unwrap()
            .clone();
        assert_eq!(re, "^kcache\\.dev/cache$");
        // The hook's own packaging file, where the tree has it: the same hook, the same trigger.
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/crio/hooks.d/kcache.json");
        match std::fs::read(&shipped) {
            Ok(bytes) => {
                let theirs: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
                assert_eq!(ours, theirs, "kcache install crio must write what packaging ships");
            }
            Err(_) => eprintln!(
                "{} not in this tree: compared with the built-in shape only",
                shipped.display()
            ),
        }
    }
}

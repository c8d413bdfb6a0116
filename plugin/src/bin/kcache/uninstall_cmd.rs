//! `kcache uninstall containerd`: flags in, [`kcache_core::containerd::uninstall`] out, printed
//! or written. The package's maintainer scripts call it on removal.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};
use kcache_core::containerd::uninstall::{plan_uninstall, UninstallRequest};

use crate::Outcome;

#[derive(Subcommand)]
pub enum UninstallCommand {
    /// Take out what `kcache install containerd` added (proxy snapshotter, CRI snapshotter and
    /// annotation settings, base spec reference, 2.x drop-in, import and verifier link), keeping
    /// every other setting, the admin's later edits included. Exit 1 when something is left that
    /// kcache cannot undo (it says what to do).
    Containerd(ContainerdArgs),
}

#[derive(Args)]
pub struct ContainerdArgs {
    /// Print what would change (the default).
    #[arg(long, conflicts_with = "write")]
    print: bool,
    /// Change it: config.toml (backed up first, replaced atomically), then remove kcache's files.
    #[arg(long)]
    write: bool,
    /// containerd's main config file.
    #[arg(long, default_value = "/etc/containerd/config.toml")]
    config: PathBuf,
    /// containerd 2.x: kcache's drop-in (default: conf.d/kcache.toml beside --config).
    #[arg(long)]
    drop_in: Option<PathBuf>,
    /// kcached's snapshotter socket (the proxy plugin kcache added points there).
    #[arg(long, default_value = kcache_core::paths::SNAPSHOTTER_SOCKET)]
    snapshotter_socket: PathBuf,
    /// kcache's base runtime spec.
    #[arg(long, default_value = kcache_core::paths::BASE_SPEC)]
    base_spec: PathBuf,
    /// The CRI runtime handler that got the hook.
    #[arg(long, default_value = "runc")]
    runtime: String,
    /// containerd 2.x: the image verifier directory.
    #[arg(long, default_value = "/opt/containerd/image-verifier/bin")]
    verifier_bin_dir: PathBuf,
}

pub fn run(c: UninstallCommand) -> Result<Outcome> {
    let UninstallCommand::Containerd(a) = c;
    let drop_in = a.drop_in.clone().unwrap_or_else(|| {
        a.config
            .parent()
            .unwrap_or(std::path::Path::new("/etc/containerd"))
            .join("conf.d/kcache.toml")
    });
    let plan = plan_uninstall(&UninstallRequest {
        config: a.config,
        drop_in,
        socket: a.snapshotter_socket,
        base_spec: a.base_spec,
        runtime: a.runtime,
        verifier_bin_dir: a.verifier_bin_dir,
    })?;
    if let Some(b) = &plan.restored_from {
        println!("values before kcache from: {}", b.display());
    }
    if !a.write {
        for c in &plan.changes {
            if c.old.as_deref() != Some(c.new.as_str()) {
                println!("# {} would become:", c.path.display());
                print!("{}", c.new);
            }
        }
        for r in &plan.removals {
            println!("# would remove {}", r.display());
        }
        if plan.is_empty() {
            println!("nothing to change: containerd has nothing of kcache's");
        }
    } else {
        let changed = plan.write(&mut |step| println!("{step}"))?;
        if changed == 0 {
            println!("nothing to change: containerd has nothing of kcache's");
        } else {
            println!("restart containerd to apply (systemctl restart containerd)");
        }
    }
    if plan.left.is_empty() {
        return Ok(Outcome::Ok);
    }
    for l in &plan.left {
        println!("left: {l}");
    }
    Ok(Outcome::Rejected(format!(
        "kcache uninstall containerd: {} thing(s) left to undo by hand (see above)",
        plan.left.len()
    )))
}

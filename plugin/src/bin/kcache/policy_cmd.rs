//! `kcache policy render crio`: kcache's policy as CRI-O's own verifier (containers/image) reads
//! it, with a report of everything it cannot express (see `kcache_core::policy::crio`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use kcache_core::{
    fsutil::write_atomic,
    policy::crio::{render_crio, CrioRender},
};
use serde_json::json;

use crate::{verify_cmd::load_policy, Outcome};

#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Render the policy for another verifier.
    Render {
        #[command(subcommand)]
        target: RenderTarget,
    },
}

#[derive(Subcommand)]
pub enum RenderTarget {
    /// containers-policy.json(5) + containers-registries.d(5) for CRI-O / podman / skopeo.
    /// What containers/image cannot express is rendered stricter (reject) where possible and
    /// reported on stderr, one line per issue.
    Crio(CrioArgs),
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

#[derive(Args)]
pub struct CrioArgs {
    /// Policy file; `policy.d/` beside it is read too.
    #[arg(long, default_value = kcache_core::paths::POLICY, env = "KCACHE_POLICY")]
    policy: PathBuf,
    /// Write DIR/policy.json, DIR/registries.d/kcache.yaml and DIR/keys/* (each atomically)
    /// instead of printing policy.json and the registries.d YAML.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Where policy.json says the key files are (default: DIR/keys, or /etc/kcache/crio/keys
    /// without --out).
    #[arg(long, value_name = "DIR")]
    keys_dir: Option<PathBuf>,
    /// Exit 1, and write or print nothing but the report, if anything was not representable.
    #[arg(long)]
    strict: bool,
    /// text: the files (or nothing, with --out) on stdout, report lines on stderr. json: one
    /// JSON document on stdout (policy, registriesD, files, report).
    #[arg(long, value_enum, default_value = "text")]
    output: Output,
}

const DEFAULT_KEYS_DIR: &str = kcache_core::paths::CRIO_KEYS;

pub fn run(command: PolicyCommand) -> Result<Outcome> {
    match command {
        PolicyCommand::Render {
            target: RenderTarget::Crio(a),
        } => crio(a),
    }
}

fn crio(a: CrioArgs) -> Result<Outcome> {
    let policy = load_policy(&a.policy)?;
    let out = match &a.out {
        Some(dir) => Some(std::path::absolute(dir).with_context(|| format!("cannot resolve {}", dir.display()))?),
        None => None,
    };
    let keys_dir = match (&a.keys_dir, &out) {
        (Some(k), _) => std::path::absolute(k).with_context(|| format!("cannot resolve {}", k.display()))?,
        (None, Some(o)) => o.join("keys"),
        (None, None) => PathBuf::from(DEFAULT_KEYS_DIR),
    };
    let r = render_crio(&policy, &keys_dir);
    let refused = a.strict && !r.report.is_empty();

    if a.output == Output::Text {
        for issue in &r.report {
            eprintln!("{issue}");
        }
    }
    let text = r.policy_json.to_string();
    if a.output == Output::Text && (text.contains("\"fulcio\"") || text.contains("\"rekorPublicKeyPath\"")) {
        eprintln!(
            "note: policy.json uses `fulcio`/`rekorPublicKeyPath`, which containers/image releases without \
             Fulcio/Rekor support (e.g. Debian's skopeo 1.9.3) refuse, failing every pull"
        );
    }
    let mut written = Vec::new();
    if !refused {
        if let Some(dir) = &out {
            written = write_out(dir, &keys_dir, &r)?;
        } else if a.output == Output::Text {
            println!("{}", serde_json::to_string_pretty(&r.policy_json)?);
            println!("# --- registries.d/kcache.yaml ---");
            print!("{}", r.registries_d);
            if !r.files.is_empty() {
                eprintln!(
                    "note: policy.json names {} key file(s) under {}; they are written only with --out",
                    r.files.len(),
                    keys_dir.display()
                );
            }
        }
    }
    if a.output == Output::Json {
        let doc = json!({
            "policy": r.policy_json,
            "registriesD": r.registries_d,
            "keysDir": keys_dir,
            "files": r.files.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            "written": written,
            "report": r.report,
            "representable": r.report.is_empty(),
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    }
    Ok(if refused {
        Outcome::Rejected(format!(
            "--strict: {} issue(s) containers/image cannot express; nothing written",
            r.report.len()
        ))
    } else {
        Outcome::Ok
    })
}

/// Key files first, then registries.d, then policy.json, each atomically: a reader never sees a
/// policy.json naming a key file that is not there yet.
fn write_out(dir: &Path, keys_dir: &Path, r: &CrioRender) -> Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    let mut write = |path: PathBuf, bytes: &[u8]| -> Result<()> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
        }
        write_atomic(&path, bytes, 0o644, true).with_context(|| format!("cannot write {}", path.display()))?;
        written.push(path);
        Ok(())
    };
    for (name, bytes) in &r.files {
        write(keys_dir.join(name), bytes)?;
    }
    write(dir.join("registries.d/kcache.yaml"), r.registries_d.as_bytes())?;
    let mut json = serde_json::to_vec_pretty(&r.policy_json)?;
    json.push(b'\n');
    write(dir.join("policy.json"), &json)?;
    Ok(written)
}

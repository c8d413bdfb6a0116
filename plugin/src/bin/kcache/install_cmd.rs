//! `kcache install containerd`: wire kcache into containerd's config.
//!
//! What it sets, per containerd line:
//!
//! | | 1.6 / 1.7 (config version 2) | 2.0 | 2.1+ (config version 3) |
//! |---|---|---|---|
//! | proxy snapshotter | `[proxy_plugins.kcache]` | same | same, plus `exports.enable_remote_snapshot_annotations = "true"` |
//! | CRI snapshotter | `plugins."io.containerd.grpc.v1.cri".containerd` `snapshotter`, `disable_snapshot_annotations = false` | `plugins."io.containerd.cri.v1.images"`, same two keys | `snapshotter` only |
//! | hook | `base_runtime_spec` + `pod_annotations` on the runc runtime | `plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc` | same |
//! | image verifier | (none in 1.x) | `plugins."io.containerd.image-verifier.v1.bindir"` + the binary linked into `bin_dir` | same |
//!
//! Why the differences:
//! - The gate needs the CRI snapshot labels (image ref + manifest digest). CRI 1.x and 2.0 pull
//!   through the client and send them when `disable_snapshot_annotations = false`. From 2.1 CRI
//!   pulls through the transfer service, which sends them to a proxy snapshotter exporting
//!   `enable_remote_snapshot_annotations = "true"`, and which *falls back to client pulls when
//!   `disable_snapshot_annotations = false` is set*; only transfer-service pulls run the bindir
//!   image verifiers, so on 2.1+ that key is left alone.
//! - containerd 1.x merges `imports` by replacing whole plugin sections (containerd#5837): a
//!   drop-in holding `plugins."io.containerd.grpc.v1.cri"` would silently reset every other CRI
//!   setting of config.toml. So on 1.x kcache edits config.toml itself (toml_edit: comments and
//!   every other key stay). containerd 2.x merges plugin sections key by key (containerd#9982),
//!   so there kcache writes a drop-in (`conf.d/kcache.toml`) and adds it to `imports`.
//!
//! config.toml is never edited in place: a timestamped copy (`config.toml.kcache-bak-<time>`) is
//! written first, then the new file replaces the old one atomically. A second run changes
//! nothing and says so.

use std::{
    collections::BTreeSet,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use kcache_core::fsutil::write_atomic;
use toml_edit::{Array, DocumentMut, Item, Table, TableLike, Value};

use crate::Outcome;

pub const CRI_V2: &str = "io.containerd.grpc.v1.cri";
pub const CRI_IMAGES: &str = "io.containerd.cri.v1.images";
pub const CRI_RUNTIME: &str = "io.containerd.cri.v1.runtime";
pub const BINDIR: &str = "io.containerd.image-verifier.v1.bindir";
pub const POD_ANNOTATIONS: &str = "kcache.dev/*";
/// The name of the verifier in `bin_dir`: containerd runs the entries in name order and only
/// the first `max_verifiers`, so it sorts first.
pub const VERIFIER_LINK: &str = "00-kcache";
/// Where the packages install kcache-hook (as packaging/crio/hooks.d/kcache.json says).
const DEFAULT_HOOK: &str = "/usr/libexec/kcache/kcache-hook";
/// runc kills a hook after this many seconds and fails the start (the hooks.d file's timeout).
const HOOK_TIMEOUT_S: u64 = 10;

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
    #[arg(long, default_value = "/var/lib/kcache/caches")]
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
    #[arg(long, default_value = "/etc/containerd/config.toml")]
    config: PathBuf,
    /// containerd 2.x: the drop-in kcache owns (default: conf.d/kcache.toml beside --config).
    #[arg(long)]
    drop_in: Option<PathBuf>,
    /// kcached's snapshotter socket.
    #[arg(long, default_value = "/run/kcache/snapshotter.sock")]
    snapshotter_socket: PathBuf,
    /// Where the base runtime spec (containerd's default spec plus the kcache hooks) goes.
    #[arg(long, default_value = "/etc/kcache/containerd-base-spec.json")]
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
}

pub fn run(c: InstallCommand) -> Result<Outcome> {
    match c {
        InstallCommand::Containerd(a) => containerd(*a),
        InstallCommand::Crio(a) => crio(a),
    }
}

/// The containerd lines that configure differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// 1.6 and 1.7: config version 2, CRI plugin `io.containerd.grpc.v1.cri`.
    V1,
    /// 2.0: config version 3, CRI pulls through the client.
    V2_0,
    /// 2.1 and later: CRI pulls through the transfer service.
    V2_1,
}

impl std::fmt::Display for Flavor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Flavor::V1 => "1.6/1.7",
            Flavor::V2_0 => "2.0",
            Flavor::V2_1 => "2.1+",
        })
    }
}

impl Flavor {
    fn is_2x(self) -> bool {
        self != Flavor::V1
    }

    pub fn default_schema(self) -> i64 {
        if self.is_2x() {
            3
        } else {
            2
        }
    }

    /// Parses `1.6`, `1.7.13`, `v2.0.1`, `2`.
    pub fn parse(v: &str) -> Result<Self> {
        let v = v.trim().trim_start_matches('v');
        let mut parts = v.split(['.', '~', '-', '+']);
        let major: u32 = parts.next().unwrap_or("").parse().context("no major version")?;
        let minor: Option<u32> = parts.next().and_then(|m| m.parse().ok());
        Ok(match (major, minor) {
            (1, Some(6 | 7)) => Flavor::V1,
            (1, m) => bail!(
                "containerd 1.{} is not supported (1.6 or later)",
                m.map_or("?".into(), |m| m.to_string())
            ),
            (2, Some(0)) => Flavor::V2_0,
            (2, _) => Flavor::V2_1,
            (m, _) if m > 2 => Flavor::V2_1,
            _ => bail!("unknown containerd version {v:?}"),
        })
    }
}

/// The version in `containerd --version` output, e.g.
/// `containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+deb12u3` or
/// `containerd containerd.io v2.0.4 1a43cb6a…`.
pub fn version_from_output(out: &str) -> Option<&str> {
    out.split_whitespace().skip(1).find(|t| {
        let t = t.trim_start_matches('v');
        let mut it = t.split('.');
        matches!((it.next(), it.next()), (Some(a), Some(b)) if !a.is_empty() && a.bytes().all(|c| c.is_ascii_digit())
            && b.bytes().take_while(u8::is_ascii_digit).count() > 0)
    })
}

/// What kcache sets.
#[derive(Debug, Clone)]
pub struct Target {
    /// The containerd line.
    pub flavor: Flavor,
    /// The config schema the keys are written in (2 or 3).
    pub schema: i64,
    /// kcached's snapshotter socket.
    pub socket: String,
    /// The base runtime spec file.
    pub base_spec: String,
    /// The runtime handler that gets the hook.
    pub runtime: String,
    /// 2.x: bindir.
    pub verifier_dir: String,
    /// 2.x: max_verifiers.
    pub max_verifiers: i64,
    /// 2.x: per_verifier_timeout.
    pub per_verifier_timeout: String,
}

/// The table at `path`, created (implicit parents) when missing.
fn table_at<'a>(root: &'a mut Table, path: &[&str], created: &mut bool) -> Result<&'a mut dyn TableLike> {
    let mut cur: &mut dyn TableLike = root;
    for (i, key) in path.iter().enumerate() {
        let last = i + 1 == path.len();
        if cur.get(key).is_none() {
            let mut t = Table::new();
            t.set_implicit(!last);
            if last {
                t.decor_mut().set_prefix("\n# kcache install containerd\n");
            }
            cur.insert(key, Item::Table(t));
            *created = true;
        }
        let item = cur.get_mut(key).context("just inserted")?;
        let here = path[..=i].join(".");
        cur = item
            .as_table_like_mut()
            .with_context(|| format!("{here} is not a table in the containerd config"))?;
    }
    Ok(cur)
}

fn same(item: Option<&Item>, v: &Value) -> bool {
    match (item.and_then(Item::as_value), v) {
        (Some(Value::String(a)), Value::String(b)) => a.value() == b.value(),
        (Some(Value::Boolean(a)), Value::Boolean(b)) => a.value() == b.value(),
        (Some(Value::Integer(a)), Value::Integer(b)) => a.value() == b.value(),
        _ => false,
    }
}

fn set(t: &mut dyn TableLike, key: &str, v: impl Into<Value>) {
    let v = v.into();
    if !same(t.get(key), &v) {
        t.insert(key, Item::Value(v));
    }
}

/// Where CRI's image settings (snapshotter, snapshot annotations) and its runtime handlers are in
/// a config of `schema` (2: containerd 1.x, 3: 2.x).
pub fn cri_tables(schema: i64) -> (&'static [&'static str], &'static [&'static str]) {
    if schema >= 3 {
        (
            &["plugins", CRI_IMAGES],
            &["plugins", CRI_RUNTIME, "containerd", "runtimes"],
        )
    } else {
        (
            &["plugins", CRI_V2, "containerd"],
            &["plugins", CRI_V2, "containerd", "runtimes"],
        )
    }
}

/// Sets kcache's keys in `doc` (the main config on 1.x, the drop-in on 2.x).
pub fn apply(doc: &mut DocumentMut, t: &Target) -> Result<()> {
    let root = doc.as_table_mut();
    let mut created = false;
    {
        let p = table_at(root, &["proxy_plugins", "kcache"], &mut created)?;
        set(p, "type", "snapshot");
        set(p, "address", t.socket.as_str());
        if t.flavor.is_2x() {
            let e = table_at(root, &["proxy_plugins", "kcache", "exports"], &mut created)?;
            set(e, "enable_remote_snapshot_annotations", "true");
        }
    }
    let (images, runtimes) = cri_tables(t.schema);
    {
        let i = table_at(root, images, &mut created)?;
        set(i, "snapshotter", "kcache");
        if t.flavor != Flavor::V2_1 {
            set(i, "disable_snapshot_annotations", false);
        }
    }
    {
        let path = [runtimes, &[t.runtime.as_str()]].concat();
        let r = table_at(root, &path, &mut created)?;
        if r.get("runtime_type").is_none() {
            set(r, "runtime_type", "io.containerd.runc.v2");
        }
        set(r, "base_runtime_spec", t.base_spec.as_str());
        // A per-runtime snapshotter would bypass the gate.
        if r.get("snapshotter")
            .and_then(Item::as_str)
            .is_some_and(|s| !s.is_empty())
        {
            set(r, "snapshotter", "kcache");
        }
        let has = r
            .get("pod_annotations")
            .and_then(Item::as_array)
            .is_some_and(|a| a.iter().any(|v| v.as_str() == Some(POD_ANNOTATIONS)));
        if !has {
            match r.get_mut("pod_annotations").and_then(Item::as_array_mut) {
                Some(a) => a.push(POD_ANNOTATIONS),
                None => {
                    if r.get("pod_annotations").is_some() {
                        bail!("{}.{}.pod_annotations is not an array", runtimes.join("."), t.runtime);
                    }
                    let mut a = Array::new();
                    a.push(POD_ANNOTATIONS);
                    r.insert("pod_annotations", Item::Value(Value::Array(a)));
                }
            }
        }
    }
    if t.flavor.is_2x() {
        let v = table_at(root, &["plugins", BINDIR], &mut created)?;
        set(v, "bin_dir", t.verifier_dir.as_str());
        set(v, "max_verifiers", t.max_verifiers);
        set(v, "per_verifier_timeout", t.per_verifier_timeout.as_str());
    }
    Ok(())
}

/// The config version of a parsed main config, or why kcache cannot edit it.
fn config_version(doc: &DocumentMut, path: &Path) -> Result<Option<i64>> {
    match doc.get("version") {
        None if doc.as_table().is_empty() => Ok(None),
        None => bail!(
            "{}: no `version` key: a version 1 config (plugins.cri, …). kcache writes version 2 (1.x) or 3 (2.x) \
             keys: add `version = 2` and use the full plugin names (plugins.\"io.containerd.grpc.v1.cri\"), or \
             run `containerd config migrate` on containerd 2.x",
            path.display()
        ),
        Some(v) => match v.as_integer() {
            Some(n @ 2..) => Ok(Some(n)),
            _ => bail!(
                "{}: config version {} is not supported (2 or later)",
                path.display(),
                v.to_string().trim()
            ),
        },
    }
}

/// Whether the glob `pattern` (only `*` and `?`, as containerd's filepath.Glob in one
/// directory) matches `name`.
fn glob(pattern: &[u8], name: &[u8]) -> bool {
    match (pattern.first(), name.first()) {
        (None, None) => true,
        (Some(b'*'), _) => {
            glob(&pattern[1..], name) || (!name.is_empty() && name[0] != b'/' && glob(pattern, &name[1..]))
        }
        (Some(b'?'), Some(c)) if *c != b'/' => glob(&pattern[1..], &name[1..]),
        (Some(p), Some(c)) if p == c => glob(&pattern[1..], &name[1..]),
        _ => false,
    }
}

/// Whether config.toml's `imports` already load `drop_in` (relative entries are relative to
/// config.toml's directory, as in containerd).
fn imports_cover(doc: &DocumentMut, config: &Path, drop_in: &Path) -> bool {
    let base = config.parent().unwrap_or(Path::new("/"));
    doc.get("imports").and_then(Item::as_array).is_some_and(|a| {
        a.iter().filter_map(Value::as_str).any(|i| {
            let p = base.join(i);
            glob(p.to_string_lossy().as_bytes(), drop_in.to_string_lossy().as_bytes())
        })
    })
}

fn add_import(doc: &mut DocumentMut, drop_in: &Path) -> Result<()> {
    let s = drop_in.to_string_lossy().into_owned();
    match doc.get_mut("imports") {
        None => {
            let mut a = Array::new();
            a.push(s);
            doc.insert("imports", Item::Value(Value::Array(a)));
        }
        Some(item) => item
            .as_array_mut()
            .context("`imports` in the containerd config is not an array")?
            .push(s),
    }
    Ok(())
}

/// containerd's default OCI spec plus the kcache hooks.
pub fn base_spec(default_spec: &[u8], hook: &Path) -> Result<String> {
    let mut spec: serde_json::Value =
        serde_json::from_slice(default_spec).context("containerd's default spec is not JSON")?;
    let obj = spec
        .as_object_mut()
        .context("containerd's default spec is not a JSON object")?;
    if !obj.contains_key("ociVersion") {
        bail!("containerd's default spec has no ociVersion: not an OCI runtime spec");
    }
    let hooks = obj
        .entry("hooks")
        .or_insert_with(|| serde_json::json!({}))
        .as_object_mut()
        .context("`hooks` in the spec is not an object")?;
    let path = hook.to_string_lossy().into_owned();
    let argv0 = hook
        .file_name()
        .map_or_else(|| path.clone(), |n| n.to_string_lossy().into_owned());
    for phase in ["prestart", "poststop"] {
        let list = hooks
            .entry(phase)
            .or_insert_with(|| serde_json::json!([]))
            .as_array_mut()
            .with_context(|| format!("hooks.{phase} in the spec is not an array"))?;
        if !list
            .iter()
            .any(|h| h.get("path").and_then(|p| p.as_str()) == Some(path.as_str()))
        {
            list.push(serde_json::json!({"path": path, "args": [argv0, phase], "timeout": HOOK_TIMEOUT_S}));
        }
    }
    Ok(serde_json::to_string_pretty(&spec)? + "\n")
}

fn flavor(a: &ContainerdArgs) -> Result<Flavor> {
    detect_flavor(&a.containerd_version, &a.containerd_bin)
}

/// `version` (`auto`: what `containerd_bin --version` says) as a containerd line.
pub fn detect_flavor(version: &str, containerd_bin: &Path) -> Result<Flavor> {
    if version != "auto" {
        return Flavor::parse(version);
    }
    let out = Command::new(containerd_bin)
        .arg("--version")
        .output()
        .with_context(|| {
            format!(
                "cannot run `{} --version` to detect containerd's version: pass --containerd-version",
                containerd_bin.display()
            )
        })?;
    let text = String::from_utf8_lossy(&out.stdout);
    let v = version_from_output(&text)
        .with_context(|| format!("no version in `containerd --version` output {:?}", text.trim()))?;
    Flavor::parse(v)
}

/// The `base_runtime_spec` config.toml already gives the runtime, when it is not kcache's: the
/// node's own base spec, which kcache's must start from so its settings are kept.
fn existing_base_spec(main: &DocumentMut, schema: i64, runtime: &str, ours: &Path) -> Option<PathBuf> {
    let (_, runtimes) = cri_tables(schema);
    let path = [runtimes, &[runtime, "base_runtime_spec"]]
        .concat()
        .iter()
        .try_fold(main.as_item(), |item, key| item.get(key))?
        .as_str()
        .filter(|p| !p.is_empty())?;
    (Path::new(path) != ours).then(|| PathBuf::from(path))
}

/// The spec kcache's base spec starts from: `--base-spec-from`, else `existing` (the node's own
/// `base_runtime_spec`, or kcache's from an earlier run), else containerd's default
/// (`ctr oci spec`).
fn default_spec(a: &ContainerdArgs, existing: Option<&Path>) -> Result<Vec<u8>> {
    if let Some(f) = a.base_spec_from.as_deref().or(existing) {
        return std::fs::read(f).with_context(|| format!("cannot read the base spec to start from, {}", f.display()));
    }
    let out = Command::new(&a.ctr).args(["oci", "spec"]).output();
    match out {
        Ok(o) if o.status.success() => Ok(o.stdout),
        Ok(o) => bail!(
            "`{} oci spec` failed ({}): {}; the base runtime spec must start from containerd's default spec: \
             fix ctr, or pass --base-spec-from FILE",
            a.ctr.display(),
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => bail!(
            "cannot run `{} oci spec` ({e}): the base runtime spec must start from containerd's default spec, \
             which ctr prints; install ctr (it ships with containerd) or pass --base-spec-from FILE",
            a.ctr.display()
        ),
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

fn parse_doc(text: &str, path: &Path) -> Result<DocumentMut> {
    text.parse::<DocumentMut>()
        .with_context(|| format!("{} is not valid TOML", path.display()))
}

/// One file to write.
struct Change {
    path: PathBuf,
    old: Option<String>,
    new: String,
    mode: u32,
    backup: bool,
}

fn containerd(a: ContainerdArgs) -> Result<Outcome> {
    let flavor = flavor(&a)?;
    let config_text = match std::fs::read_to_string(&a.config) {
        Ok(t) => Some(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", a.config.display())),
    };
    let mut main = parse_doc(config_text.as_deref().unwrap_or(""), &a.config)?;
    let version = config_version(&main, &a.config)?;
    if flavor == Flavor::V1 && version.is_some_and(|v| v > 2) {
        bail!(
            "{}: config version {} is for containerd 2.x, but containerd is 1.x",
            a.config.display(),
            version.unwrap_or_default()
        );
    }
    let schema = version.unwrap_or(flavor.default_schema()).min(3);
    if version.is_none() {
        main.insert("version", Item::Value(Value::from(flavor.default_schema())));
    }
    let target = Target {
        flavor,
        schema,
        socket: a.snapshotter_socket.to_string_lossy().into_owned(),
        base_spec: a.base_spec.to_string_lossy().into_owned(),
        runtime: a.runtime.clone(),
        verifier_dir: a.verifier_bin_dir.to_string_lossy().into_owned(),
        max_verifiers: a.max_verifiers,
        per_verifier_timeout: a.per_verifier_timeout.clone(),
    };
    let drop_in = a.drop_in.clone().unwrap_or_else(|| {
        a.config
            .parent()
            .unwrap_or(Path::new("/etc/containerd"))
            .join("conf.d/kcache.toml")
    });
    let mut warnings = Vec::new();
    if flavor == Flavor::V2_1 {
        let local = |t: &str, k: &str| {
            main.get("plugins")
                .and_then(|p| p.get(t))
                .and_then(|p| p.get(k))
                .and_then(Item::as_value)
                .map(|v| v.to_string().trim().to_owned())
        };
        if local(CRI_IMAGES, "disable_snapshot_annotations").as_deref() == Some("false")
            || local(CRI_IMAGES, "use_local_image_pull").as_deref() == Some("true")
        {
            warnings.push(format!(
                "{} makes CRI pull without the transfer service (disable_snapshot_annotations = false or \
                 use_local_image_pull = true): the image verifier does not run for CRI pulls; the kcache \
                 snapshotter gate still verifies them",
                a.config.display()
            ));
        }
    }

    // Never lose a node's base spec: start from the runtime's own, else from the one an earlier
    // run wrote (which holds what that run started from).
    let existing_spec = existing_base_spec(&main, schema, &a.runtime, &a.base_spec)
        .or_else(|| a.base_spec.is_file().then(|| a.base_spec.clone()));
    let mut changes = Vec::new();
    let mode_of = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.permissions().mode() & 0o7777)
            .unwrap_or(0o644)
    };
    let fragment;
    if flavor.is_2x() {
        let mut d = DocumentMut::new();
        d.decor_mut().set_prefix(
            "# Written by `kcache install containerd`; rewritten on every run, edit config.toml instead.\n",
        );
        d.insert("version", Item::Value(Value::from(schema)));
        apply(&mut d, &target)?;
        fragment = d.to_string();
        if !imports_cover(&main, &a.config, &drop_in) {
            add_import(&mut main, &drop_in)?;
        }
        changes.push(Change {
            old: std::fs::read_to_string(&drop_in).ok(),
            new: fragment.clone(),
            mode: 0o644,
            path: drop_in.clone(),
            backup: false,
        });
    } else {
        apply(&mut main, &target)?;
        let mut d = DocumentMut::new();
        d.insert("version", Item::Value(Value::from(schema)));
        apply(&mut d, &target)?;
        fragment = d.to_string();
    }
    changes.insert(
        0,
        Change {
            path: a.config.clone(),
            new: main.to_string(),
            mode: mode_of(&a.config),
            backup: config_text.is_some(),
            old: config_text,
        },
    );

    let verifier = verifier_path(&a);
    if !a.write {
        println!("# containerd {flavor}, config version {schema}");
        if flavor.is_2x() {
            println!("# {} (imported from {})", drop_in.display(), a.config.display());
        } else {
            println!(
                "# merged into {} (containerd 1.x replaces whole plugin sections from imports)",
                a.config.display()
            );
        }
        print!("{fragment}");
        let from = match (&a.base_spec_from, &existing_spec) {
            (None, Some(f)) if *f == a.base_spec => "the file as it is".into(),
            (Some(f), _) | (None, Some(f)) => f.display().to_string(),
            (None, None) => "containerd's default spec (`ctr oci spec`)".into(),
        };
        println!("\n# base runtime spec {}: {from} plus the hooks", a.base_spec.display());
        println!(
            "#   prestart/poststop: {{\"path\": \"{}\", \"args\": [\"kcache-hook\", \"prestart|poststop\"], \"timeout\": {HOOK_TIMEOUT_S}}}",
            a.hook_path.display()
        );
        if flavor.is_2x() {
            println!(
                "# image verifier: {} -> {}",
                a.verifier_bin_dir.join(VERIFIER_LINK).display(),
                verifier.display()
            );
        }
        for w in &warnings {
            println!("# warning: {w}");
        }
        return Ok(Outcome::Ok);
    }

    if let (None, Some(f)) = (&a.base_spec_from, &existing_spec) {
        if *f != a.base_spec {
            println!(
                "base spec: starting from the runtime's existing base_runtime_spec {}",
                f.display()
            );
        }
    }
    let spec = base_spec(&default_spec(&a, existing_spec.as_deref())?, &a.hook_path)?;
    changes.push(Change {
        old: std::fs::read_to_string(&a.base_spec).ok(),
        new: spec,
        mode: 0o644,
        path: a.base_spec.clone(),
        backup: false,
    });

    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
    let mut changed = 0;
    for c in &changes {
        if c.old.as_deref() == Some(c.new.as_str()) {
            println!("unchanged: {}", c.path.display());
            continue;
        }
        if let Some(dir) = c.path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        if c.backup {
            if let Some(old) = &c.old {
                let mut name = c.path.as_os_str().to_owned();
                name.push(format!(".kcache-bak-{stamp}"));
                let bak = PathBuf::from(name);
                write_atomic(&bak, old.as_bytes(), c.mode, false)
                    .with_context(|| format!("cannot write the backup {}", bak.display()))?;
                println!("backup:    {}", bak.display());
            }
        }
        write_atomic(&c.path, c.new.as_bytes(), c.mode, true)
            .with_context(|| format!("cannot write {}", c.path.display()))?;
        println!("wrote:     {}", c.path.display());
        changed += 1;
    }
    if flavor.is_2x() {
        changed += link_verifier(&a.verifier_bin_dir, &verifier, a.max_verifiers)?;
    }
    for w in &warnings {
        println!("warning: {w}");
    }
    if changed == 0 {
        println!("nothing to change: containerd is already configured for kcache");
    } else {
        println!("restart containerd to apply (systemctl restart containerd)");
    }
    Ok(Outcome::Ok)
}

/// Links the verifier into containerd's bin_dir; 1 when it changed something.
fn link_verifier(dir: &Path, verifier: &Path, max: i64) -> Result<usize> {
    let link = dir.join(VERIFIER_LINK);
    if !verifier.is_file() {
        bail!(
            "the image verifier {} does not exist: install kcache-image-verifier or pass --verifier-path",
            verifier.display()
        );
    }
    let mut changed = 0;
    match std::fs::symlink_metadata(&link) {
        Ok(m) if m.file_type().is_symlink() && std::fs::read_link(&link).ok().as_deref() == Some(verifier) => {
            println!("unchanged: {} -> {}", link.display(), verifier.display());
        }
        Ok(m) if !m.file_type().is_symlink() => bail!(
            "{} exists and is not a link kcache made: move it away first",
            link.display()
        ),
        _ => {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
            let tmp = dir.join(format!(".{VERIFIER_LINK}.tmp"));
            let _ = std::fs::remove_file(&tmp);
            std::os::unix::fs::symlink(verifier, &tmp).with_context(|| format!("cannot link {}", tmp.display()))?;
            std::fs::rename(&tmp, &link).with_context(|| format!("cannot rename to {}", link.display()))?;
            println!("linked:    {} -> {}", link.display(), verifier.display());
            changed = 1;
        }
    }
    let names: BTreeSet<String> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    if max >= 0 && names.len() as i64 > max {
        let pos = names.iter().position(|n| n == VERIFIER_LINK).unwrap_or(0) as i64;
        if pos >= max {
            bail!(
                "{} holds {} entries and containerd runs only the first {max} by name: {VERIFIER_LINK} would be skipped",
                dir.display(),
                names.len()
            );
        }
        println!(
            "warning: {} holds {} entries; containerd runs only the first {max} by name",
            dir.display(),
            names.len()
        );
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(flavor: Flavor) -> Target {
        Target {
            flavor,
            schema: flavor.default_schema(),
            socket: "/run/kcache/snapshotter.sock".into(),
            base_spec: "/etc/kcache/containerd-base-spec.json".into(),
            runtime: "runc".into(),
            verifier_dir: "/opt/containerd/image-verifier/bin".into(),
            max_verifiers: 10,
            per_verifier_timeout: "10s".into(),
        }
    }

    fn render(flavor: Flavor) -> toml::Value {
        let mut d = DocumentMut::new();
        d.insert("version", Item::Value(Value::from(flavor.default_schema())));
        apply(&mut d, &target(flavor)).unwrap();
        toml::from_str(&d.to_string()).unwrap()
    }

    fn at<'a>(v: &'a toml::Value, path: &[&str]) -> Option<&'a toml::Value> {
        path.iter().try_fold(v, |v, k| v.get(k))
    }

    #[test]
    fn versions() {
        assert_eq!(Flavor::parse("1.6").unwrap(), Flavor::V1);
        assert_eq!(Flavor::parse("1.7.13").unwrap(), Flavor::V1);
        assert_eq!(Flavor::parse("1.6.20~ds1").unwrap(), Flavor::V1);
        assert_eq!(Flavor::parse("v2.0.4").unwrap(), Flavor::V2_0);
        assert_eq!(Flavor::parse("2.1").unwrap(), Flavor::V2_1);
        assert_eq!(Flavor::parse("2").unwrap(), Flavor::V2_1);
        assert!(Flavor::parse("1.5").is_err());
        assert!(Flavor::parse("x").is_err());
        assert_eq!(
            version_from_output("containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+deb12u3\n"),
            Some("1.6.20~ds1")
        );
        assert_eq!(
            version_from_output("containerd containerd.io v2.0.4 1a43cb6a1035441f9aca8f5666a9b3ef9e70ab20"),
            Some("v2.0.4")
        );
        assert_eq!(
            version_from_output("containerd github.com/containerd/containerd/v2 v2.1.0 06b99ca"),
            Some("v2.1.0")
        );
    }

    #[test]
    fn renders_1x() {
        let v = render(Flavor::V1);
        assert_eq!(v["version"].as_integer(), Some(2));
        assert_eq!(
            at(&v, &["proxy_plugins", "kcache", "type"]).unwrap().as_str(),
            Some("snapshot")
        );
        assert_eq!(
            at(&v, &["proxy_plugins", "kcache", "address"]).unwrap().as_str(),
            Some("/run/kcache/snapshotter.sock")
        );
        assert!(at(&v, &["proxy_plugins", "kcache", "exports"]).is_none());
        let c = at(&v, &["plugins", CRI_V2, "containerd"]).unwrap();
        assert_eq!(c["snapshotter"].as_str(), Some("kcache"));
        assert_eq!(c["disable_snapshot_annotations"].as_bool(), Some(false));
        let r = &c["runtimes"]["runc"];
        assert_eq!(r["runtime_type"].as_str(), Some("io.containerd.runc.v2"));
        assert_eq!(
            r["base_runtime_spec"].as_str(),
            Some("/etc/kcache/containerd-base-spec.json")
        );
        assert_eq!(
            r["pod_annotations"].as_array().unwrap()[0].as_str(),
            Some("kcache.dev/*")
        );
        assert!(at(&v, &["plugins", BINDIR]).is_none(), "no image verifier in 1.x");
        assert!(at(&v, &["plugins", CRI_IMAGES]).is_none());
    }

    #[test]
    fn a_runtime_of_its_own_leaves_runc_without_the_hook() {
        let mut d: DocumentMut = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]\n  runtime_type = \"io.containerd.runc.v2\"\n"
            .parse()
            .unwrap();
        let t = Target {
            runtime: "kcache".into(),
            ..target(Flavor::V1)
        };
        apply(&mut d, &t).unwrap();
        let v: toml::Value = toml::from_str(&d.to_string()).unwrap();
        let runtimes = at(&v, &["plugins", CRI_V2, "containerd", "runtimes"]).unwrap();
        assert_eq!(
            runtimes["kcache"]["runtime_type"].as_str(),
            Some("io.containerd.runc.v2")
        );
        assert_eq!(
            runtimes["kcache"]["base_runtime_spec"].as_str(),
            Some("/etc/kcache/containerd-base-spec.json")
        );
        assert!(runtimes["runc"].get("base_runtime_spec").is_none(), "{runtimes:?}");
        assert!(runtimes["runc"].get("pod_annotations").is_none(), "{runtimes:?}");
    }

    #[test]
    fn renders_2x() {
        for f in [Flavor::V2_0, Flavor::V2_1] {
            let v = render(f);
            assert_eq!(v["version"].as_integer(), Some(3));
            assert_eq!(
                at(
                    &v,
                    &[
                        "proxy_plugins",
                        "kcache",
                        "exports",
                        "enable_remote_snapshot_annotations"
                    ]
                )
                .unwrap()
                .as_str(),
                Some("true")
            );
            let i = at(&v, &["plugins", CRI_IMAGES]).unwrap();
            assert_eq!(i["snapshotter"].as_str(), Some("kcache"));
            // 2.1+: this key would make CRI skip the transfer service, and so the verifier.
            assert_eq!(
                i.get("disable_snapshot_annotations").and_then(|x| x.as_bool()),
                (f == Flavor::V2_0).then_some(false)
            );
            let r = at(&v, &["plugins", CRI_RUNTIME, "containerd", "runtimes", "runc"]).unwrap();
            assert_eq!(
                r["base_runtime_spec"].as_str(),
                Some("/etc/kcache/containerd-base-spec.json")
            );
            assert_eq!(r["pod_annotations"].as_array().unwrap().len(), 1);
            let b = at(&v, &["plugins", BINDIR]).unwrap();
            assert_eq!(b["bin_dir"].as_str(), Some("/opt/containerd/image-verifier/bin"));
            assert_eq!(b["max_verifiers"].as_integer(), Some(10));
            assert_eq!(b["per_verifier_timeout"].as_str(), Some("10s"));
            assert!(at(&v, &["plugins", CRI_V2]).is_none());
        }
    }

    #[test]
    fn edits_keep_comments_and_other_keys_and_are_idempotent() {
        let original = r#"# node config, do not lose this comment
version = 2
root = "/var/lib/containerd"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "registry.k8s.io/pause:3.9" # pinned
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    disable_snapshot_annotations = true
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      pod_annotations = ["example.com/*"]
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = true
"#;
        let mut d: DocumentMut = original.parse().unwrap();
        apply(&mut d, &target(Flavor::V1)).unwrap();
        let once = d.to_string();
        assert!(once.contains("# node config, do not lose this comment"));
        assert!(once.contains("# pinned"));
        let v: toml::Value = toml::from_str(&once).unwrap();
        let c = at(&v, &["plugins", CRI_V2, "containerd"]).unwrap();
        assert_eq!(c["snapshotter"].as_str(), Some("kcache"));
        assert_eq!(c["disable_snapshot_annotations"].as_bool(), Some(false));
        assert_eq!(c["runtimes"]["runc"]["options"]["SystemdCgroup"].as_bool(), Some(true));
        let ann: Vec<_> = c["runtimes"]["runc"]["pod_annotations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_str().unwrap())
            .collect();
        assert_eq!(ann, ["example.com/*", "kcache.dev/*"]);
        assert_eq!(
            at(&v, &["plugins", CRI_V2, "sandbox_image"]).unwrap().as_str(),
            Some("registry.k8s.io/pause:3.9")
        );
        let mut again: DocumentMut = once.parse().unwrap();
        apply(&mut again, &target(Flavor::V1)).unwrap();
        assert_eq!(again.to_string(), once, "a second run changes nothing");
    }

    #[test]
    fn imports_and_versions() {
        let d: DocumentMut = "version = 3\nimports = [\"/etc/containerd/conf.d/*.toml\"]\n"
            .parse()
            .unwrap();
        let cfg = Path::new("/etc/containerd/config.toml");
        assert!(imports_cover(&d, cfg, Path::new("/etc/containerd/conf.d/kcache.toml")));
        assert!(!imports_cover(&d, cfg, Path::new("/etc/containerd/other/kcache.toml")));
        let d: DocumentMut = "version = 3\nimports = [\"conf.d/kcache.toml\"]\n".parse().unwrap();
        assert!(imports_cover(&d, cfg, Path::new("/etc/containerd/conf.d/kcache.toml")));
        let mut d: DocumentMut = "version = 3\n".parse().unwrap();
        add_import(&mut d, Path::new("/etc/containerd/conf.d/kcache.toml")).unwrap();
        assert!(imports_cover(&d, cfg, Path::new("/etc/containerd/conf.d/kcache.toml")));

        let v1: DocumentMut = "[plugins.cri]\nsandbox_image = \"x\"\n".parse().unwrap();
        let e = config_version(&v1, cfg).unwrap_err().to_string();
        assert!(e.contains("version 1"), "{e}");
        assert_eq!(config_version(&DocumentMut::new(), cfg).unwrap(), None);
        let v2: DocumentMut = "version = 2\n".parse().unwrap();
        assert_eq!(config_version(&v2, cfg).unwrap(), Some(2));
        // A version 2 config on containerd 2.x: keys in the version 2 names (containerd migrates them).
        let mut t = target(Flavor::V2_1);
        t.schema = 2;
        let mut d = DocumentMut::new();
        apply(&mut d, &t).unwrap();
        let v: toml::Value = toml::from_str(&d.to_string()).unwrap();
        assert_eq!(
            at(&v, &["plugins", CRI_V2, "containerd", "snapshotter"])
                .unwrap()
                .as_str(),
            Some("kcache")
        );
        assert!(at(&v, &["plugins", BINDIR]).is_some());
    }

    #[test]
    fn not_a_table_is_an_error() {
        let mut d: DocumentMut = "version = 2\nproxy_plugins = 3\n".parse().unwrap();
        let e = apply(&mut d, &target(Flavor::V1)).unwrap_err().to_string();
        assert!(e.contains("proxy_plugins is not a table"), "{e}");
    }

    #[test]
    fn base_spec_adds_the_hooks_once() {
        let spec = br#"{"ociVersion":"1.0.2-dev","process":{"cwd":"/"},"hooks":{"prestart":[{"path":"/other"}]}}"#;
        let out = base_spec(spec, Path::new("/usr/bin/kcache-hook")).unwrap();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["hooks"]["prestart"].as_array().unwrap().len(), 2);
        assert_eq!(v["hooks"]["prestart"][1]["path"], "/usr/bin/kcache-hook");
        assert_eq!(
            v["hooks"]["prestart"][1]["args"],
            serde_json::json!(["kcache-hook", "prestart"])
        );
        assert_eq!(
            v["hooks"]["poststop"][0]["args"],
            serde_json::json!(["kcache-hook", "poststop"])
        );
        assert_eq!(v["process"]["cwd"], "/");
        let again = base_spec(out.as_bytes(), Path::new("/usr/bin/kcache-hook")).unwrap();
        assert_eq!(again, out);
        assert!(base_spec(b"{}", Path::new("/h")).is_err());
        assert!(base_spec(b"nope", Path::new("/h")).is_err());
    }

    #[test]
    fn crio_hooks_file_matches_the_shipped_one() {
        let json = crio_hook_json(
            Path::new(DEFAULT_HOOK),
            Path::new("/var/lib/kcache/caches"),
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

    #[test]
    fn globs() {
        assert!(glob(b"/a/*.toml", b"/a/k.toml"));
        assert!(!glob(b"/a/*.toml", b"/a/b/k.toml"));
        assert!(glob(b"/a/?.toml", b"/a/k.toml"));
        assert!(!glob(b"/a/*.toml", b"/a/k.json"));
    }
}

//! `kcache install containerd` as data: [`plan`] reads the node's config and works out every
//! file kcache would write; [`InstallPlan::write`] writes them.
//!
//! config.toml is never edited in place: a timestamped copy (`config.toml.kcache-bak-<time>`) is
//! written first, then the new file replaces the old one atomically (temp file, fsync, rename).
//! A second run changes nothing and says so.

use std::{
    collections::BTreeSet,
    fmt,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use toml_edit::{DocumentMut, Item, Value};

pub use super::render::PullPath;
use super::{
    render::{self, add_import, config_version, existing_base_spec, imports_cover},
    spec, ContainerdError, Flavor, Result, Target, CRI_IMAGES, VERIFIER_LINK,
};
use crate::fsutil::write_atomic;

/// What the admin asked for (`kcache install containerd`'s flags, resolved).
#[derive(Debug, Clone)]
pub struct InstallRequest {
    /// The containerd line.
    pub flavor: Flavor,
    /// containerd's main config file.
    pub config: PathBuf,
    /// containerd 2.x: the drop-in kcache owns (default: conf.d/kcache.toml beside config).
    pub drop_in: Option<PathBuf>,
    /// kcached's snapshotter socket.
    pub socket: PathBuf,
    /// Where kcache's base runtime spec goes.
    pub base_spec: PathBuf,
    /// The spec to start it from, instead of the node's or containerd's default.
    pub base_spec_from: Option<PathBuf>,
    /// The kcache-hook binary the spec runs.
    pub hook: PathBuf,
    /// The CRI runtime handler that gets the hook.
    pub runtime: String,
    /// containerd 2.x: the image verifier directory.
    pub verifier_bin_dir: PathBuf,
    /// containerd 2.x: the kcache-image-verifier binary linked into it.
    pub verifier: PathBuf,
    /// containerd 2.x: the bindir plugin's max_verifiers.
    pub max_verifiers: i64,
    /// containerd 2.x: the bindir plugin's per_verifier_timeout.
    pub per_verifier_timeout: String,
    /// The ctr binary (`ctr oci spec`).
    pub ctr: PathBuf,
    /// containerd 2.1+: how CRI pulls.
    pub pull: PullPath,
    /// containerd 2.1+: the platforms the transfer service unpacks into kcache (empty: this
    /// node's).
    pub platforms: Vec<String>,
    /// kcache's own config.toml: its `[registry] config_path` is set to containerd's, so that
    /// kcache asks the mirrors and trusts the CAs containerd does (and with `nri`, its `[nri]`
    /// section). None: left alone.
    pub kcache_config: Option<PathBuf>,
    /// The hook through NRI (`--nri`): kcached's NRI plugin adds kcache-hook to opted-in
    /// containers only; no base runtime spec; 1.7's NRI turned on; kcache's config.toml gets
    /// `[nri] socket` (containerd's NRI socket) and `hook`.
    pub nri: bool,
}

impl InstallRequest {
    /// The drop-in path: the one asked for, else `conf.d/kcache.toml` beside config.toml.
    pub fn drop_in(&self) -> PathBuf {
        self.drop_in.clone().unwrap_or_else(|| {
            self.config
                .parent()
                .unwrap_or(Path::new("/etc/containerd"))
                .join("conf.d/kcache.toml")
        })
    }
}

/// One file to write.
#[derive(Debug, Clone)]
pub struct FileChange {
    /// The file.
    pub path: PathBuf,
    /// What it holds now (None: it does not exist).
    pub old: Option<String>,
    /// What it will hold.
    pub new: String,
    /// Its permission bits.
    pub mode: u32,
    /// Whether a timestamped copy of `old` is written first.
    pub backup: bool,
}

/// Where kcache's base runtime spec starts from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpecSource {
    /// `--base-spec-from`.
    Given(PathBuf),
    /// The runtime's own `base_runtime_spec` in the node's config.
    Node(PathBuf),
    /// kcache's base spec file of an earlier run (it holds what that run started from).
    Earlier(PathBuf),
    /// containerd's default spec (`ctr oci spec`).
    Ctr,
}

impl fmt::Display for SpecSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpecSource::Given(p) | SpecSource::Node(p) => write!(f, "{}", p.display()),
            SpecSource::Earlier(_) => f.write_str("the file as it is"),
            SpecSource::Ctr => f.write_str("containerd's default spec (`ctr oci spec`)"),
        }
    }
}

/// Something the admin should know that does not stop the install.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Warning {
    /// containerd 2.1+: CRI pulls without the transfer service, so the verifier does not run.
    LocalPull {
        /// The config that says so.
        config: PathBuf,
    },
    /// bin_dir holds more entries than containerd runs (kcache's still among them).
    CrowdedVerifierDir {
        /// The directory.
        dir: PathBuf,
        /// Its entries.
        count: usize,
        /// max_verifiers.
        max: i64,
    },
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Warning::LocalPull { config } => write!(
                f,
                "{} makes CRI pull without the transfer service (disable_snapshot_annotations = false or \
                 use_local_image_pull = true): the image verifier does not run for CRI pulls; the kcache \
                 snapshotter gate still verifies them",
                config.display()
            ),
            Warning::CrowdedVerifierDir { dir, count, max } => write!(
                f,
                "{} holds {count} entries; containerd runs only the first {max} by name",
                dir.display()
            ),
        }
    }
}

/// What [`InstallPlan::write`] did, step by step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// The file already holds what kcache would write.
    Unchanged(PathBuf),
    /// The base spec starts from the runtime's own base spec.
    SpecFrom(PathBuf),
    /// A copy of the file as it was.
    Backup(PathBuf),
    /// The file was written.
    Wrote(PathBuf),
    /// The verifier link is in place already.
    LinkUnchanged {
        /// The link.
        link: PathBuf,
        /// What it points at.
        target: PathBuf,
    },
    /// The verifier link was made.
    Linked {
        /// The link.
        link: PathBuf,
        /// What it points at.
        target: PathBuf,
    },
    /// A file or link was removed (uninstall).
    Removed(PathBuf),
    /// A warning found while writing.
    Warning(Warning),
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Unchanged(p) => write!(f, "unchanged: {}", p.display()),
            Step::SpecFrom(p) => write!(
                f,
                "base spec: starting from the runtime's existing base_runtime_spec {}",
                p.display()
            ),
            Step::Backup(p) => write!(f, "backup:    {}", p.display()),
            Step::Wrote(p) => write!(f, "wrote:     {}", p.display()),
            Step::LinkUnchanged { link, target } => {
                write!(f, "unchanged: {} -> {}", link.display(), target.display())
            }
            Step::Linked { link, target } => write!(f, "linked:    {} -> {}", link.display(), target.display()),
            Step::Removed(p) => write!(f, "removed:   {}", p.display()),
            Step::Warning(w) => write!(f, "warning: {w}"),
        }
    }
}

/// The verifier link kcache makes on containerd 2.x.
#[derive(Debug, Clone)]
pub struct VerifierLink {
    /// bin_dir.
    pub dir: PathBuf,
    /// kcache-image-verifier.
    pub target: PathBuf,
    /// max_verifiers.
    pub max: i64,
}

/// Everything `kcache install containerd` would change.
#[derive(Debug, Clone)]
pub struct InstallPlan {
    /// The containerd line.
    pub flavor: Flavor,
    /// The config version the keys are written in.
    pub schema: i64,
    /// containerd's main config file.
    pub config: PathBuf,
    /// containerd 2.x: the drop-in kcache writes.
    pub drop_in: Option<PathBuf>,
    /// kcache's keys alone, as a config document (what `--print` shows).
    pub fragment: String,
    /// config.toml (and on 2.x the drop-in).
    pub changes: Vec<FileChange>,
    /// Where the base spec starts from.
    pub spec_source: SpecSource,
    /// kcache's base runtime spec file.
    pub base_spec: PathBuf,
    /// The kcache-hook binary.
    pub hook: PathBuf,
    /// The ctr binary (for [`SpecSource::Ctr`]).
    pub ctr: PathBuf,
    /// containerd 2.x: the verifier link.
    pub verifier: Option<VerifierLink>,
    /// What the admin should know.
    pub warnings: Vec<Warning>,
    /// kcache's config.toml and the registry `config_path` set in it (containerd's), when
    /// that changes it.
    pub registry_config_path: Option<(PathBuf, String)>,
    /// `--nri`: containerd's NRI socket, where kcached's NRI plugin connects (no base spec is
    /// written then).
    pub nri_socket: Option<String>,
}

/// A file's text, None when it does not exist.
pub(crate) fn read_optional(path: &Path) -> Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ContainerdError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Parses a config file's text.
pub(crate) fn parse_doc(text: &str, path: &Path) -> Result<DocumentMut> {
    text.parse::<DocumentMut>().map_err(|e| ContainerdError::Toml {
        path: path.to_owned(),
        source: Box::new(e),
    })
}

pub(crate) fn mode_of(p: &Path) -> u32 {
    std::fs::metadata(p)
        .map(|m| m.permissions().mode() & 0o7777)
        .unwrap_or(0o644)
}

/// Works out what installing kcache into containerd changes; writes nothing.
pub fn plan(r: &InstallRequest) -> Result<InstallPlan> {
    let flavor = r.flavor;
    let config_text = read_optional(&r.config)?;
    let mut main = parse_doc(config_text.as_deref().unwrap_or(""), &r.config)?;
    let version = config_version(&main, &r.config)?;
    if let (Flavor::V1, Some(v @ 3..)) = (flavor, version) {
        return Err(ContainerdError::NewerConfig {
            path: r.config.clone(),
            version: v,
        });
    }
    let schema = version.unwrap_or(flavor.default_schema()).min(3);
    if version.is_none() {
        main.insert("version", Item::Value(Value::from(flavor.default_schema())));
    }
    let target = Target {
        flavor,
        schema,
        socket: r.socket.to_string_lossy().into_owned(),
        base_spec: r.base_spec.to_string_lossy().into_owned(),
        runtime: r.runtime.clone(),
        verifier_dir: r.verifier_bin_dir.to_string_lossy().into_owned(),
        max_verifiers: r.max_verifiers,
        per_verifier_timeout: r.per_verifier_timeout.clone(),
        pull: r.pull,
        platforms: r.platforms.clone(),
        nri: r.nri,
    };
    let drop_in = r.drop_in();
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
            warnings.push(Warning::LocalPull {
                config: r.config.clone(),
            });
        }
    }

    // Never lose a node's base spec: start from the runtime's own, else from the one an earlier
    // run wrote (which holds what that run started from).
    let spec_source = match (
        &r.base_spec_from,
        existing_base_spec(&main, schema, &r.runtime, &r.base_spec),
    ) {
        (Some(f), _) => SpecSource::Given(f.clone()),
        (None, Some(node)) => SpecSource::Node(node),
        (None, None) if r.base_spec.is_file() => SpecSource::Earlier(r.base_spec.clone()),
        (None, None) => SpecSource::Ctr,
    };
    let mut changes = Vec::new();
    let fragment;
    if flavor.is_2x() {
        let mut d = DocumentMut::new();
        d.decor_mut().set_prefix(format!(
            "{}; rewritten on every run, edit config.toml instead.\n",
            super::uninstall::DROP_IN_HEADER
        ));
        d.insert("version", Item::Value(Value::from(schema)));
        render::apply(&mut d, &target)?;
        fragment = d.to_string();
        if !imports_cover(&main, &r.config, &drop_in) {
            add_import(&mut main, &drop_in)?;
        }
        changes.push(FileChange {
            old: read_optional(&drop_in)?,
            new: fragment.clone(),
            mode: 0o644,
            path: drop_in.clone(),
            backup: false,
        });
    } else {
        render::apply(&mut main, &target)?;
        let mut d = DocumentMut::new();
        d.insert("version", Item::Value(Value::from(schema)));
        render::apply(&mut d, &target)?;
        fragment = d.to_string();
    }
    let registry_config_path = match (&r.kcache_config, containerd_config_path(&main, schema)) {
        (Some(kc), Some(cp)) => {
            let change = kcache_registry_change(kc, &cp)?;
            let set = change.as_ref().map(|_| (kc.clone(), cp));
            changes.extend(change);
            set
        }
        _ => None,
    };
    let nri_socket = r.nri.then(|| containerd_nri_socket(&main));
    if let (Some(kc), Some(socket)) = (&r.kcache_config, &nri_socket) {
        // One change per file: on top of the registry edit when there is one.
        let prior = changes.iter().position(|c| &c.path == kc).map(|i| changes.remove(i));
        changes.extend(kcache_nri_change(kc, prior, socket, &r.hook)?);
    }
    changes.insert(
        0,
        FileChange {
            path: r.config.clone(),
            new: main.to_string(),
            mode: mode_of(&r.config),
            backup: config_text.is_some(),
            old: config_text,
        },
    );
    Ok(InstallPlan {
        flavor,
        schema,
        config: r.config.clone(),
        drop_in: flavor.is_2x().then_some(drop_in),
        fragment,
        changes,
        spec_source,
        base_spec: r.base_spec.clone(),
        hook: r.hook.clone(),
        ctr: r.ctr.clone(),
        verifier: flavor.is_2x().then(|| VerifierLink {
            dir: r.verifier_bin_dir.clone(),
            target: r.verifier.clone(),
            max: r.max_verifiers,
        }),
        warnings,
        registry_config_path,
        nri_socket,
    })
}

/// containerd's NRI socket: its `socket_path` when config.toml sets one, else the default.
fn containerd_nri_socket(main: &DocumentMut) -> String {
    main.get("plugins")
        .and_then(|p| p.get(super::NRI))
        .and_then(|n| n.get("socket_path"))
        .and_then(Item::as_str)
        .filter(|s| !s.trim().is_empty())
        .unwrap_or(super::NRI_SOCKET)
        .to_owned()
}

/// kcache's config.toml with `[nri] socket` and `hook` set (on top of `prior`, an earlier edit
/// of the same file), or None when it already says so.
fn kcache_nri_change(path: &Path, prior: Option<FileChange>, socket: &str, hook: &Path) -> Result<Option<FileChange>> {
    let old = match &prior {
        Some(c) => c.old.clone(),
        None => read_optional(path)?,
    };
    let base = prior.as_ref().map_or(old.clone(), |c| Some(c.new.clone()));
    let mut doc = parse_doc(base.as_deref().unwrap_or(""), path)?;
    let nri = doc
        .entry("nri")
        .or_insert_with(|| Item::Table(toml_edit::Table::new()))
        .as_table_like_mut()
        .ok_or_else(|| ContainerdError::KcacheConfig {
            path: path.to_owned(),
            reason: "`nri` is not a table".into(),
        })?;
    let hook = hook.to_string_lossy();
    for (k, v) in [("socket", socket), ("hook", &*hook)] {
        if nri.get(k).and_then(Item::as_str) != Some(v) {
            nri.insert(k, Item::Value(Value::from(v)));
        }
    }
    let new = doc.to_string();
    if old.as_deref() == Some(new.as_str()) {
        return Ok(None);
    }
    Ok(Some(FileChange {
        path: path.to_owned(),
        new,
        mode: mode_of(path),
        backup: old.is_some(),
        old,
    }))
}

/// containerd's CRI registry `config_path` in its main config, when set (not empty).
fn containerd_config_path(main: &DocumentMut, schema: i64) -> Option<String> {
    let plugin = if schema >= 3 { CRI_IMAGES } else { super::CRI_V2 };
    main.get("plugins")?
        .get(plugin)?
        .get("registry")?
        .get("config_path")?
        .as_str()
        .filter(|s| !s.trim().is_empty())
        .map(str::to_owned)
}

/// The edit of kcache's config.toml that sets `[registry] config_path` (comments and other
/// keys kept), or None when it already says so.
fn kcache_registry_change(path: &Path, config_path: &str) -> Result<Option<FileChange>> {
    let old = read_optional(path)?;
    let mut doc = parse_doc(old.as_deref().unwrap_or(""), path)?;
    let current = doc
        .get("registry")
        .and_then(|r| r.get("config_path"))
        .and_then(|v| v.as_str());
    if current == Some(config_path) {
        return Ok(None);
    }
    let registry = doc
        .entry("registry")
        .or_insert_with(|| Item::Table(toml_edit::Table::new()))
        .as_table_like_mut()
        .ok_or_else(|| ContainerdError::KcacheConfig {
            path: path.to_owned(),
            reason: "`registry` is not a table".into(),
        })?;
    registry.insert("config_path", Item::Value(Value::from(config_path)));
    Ok(Some(FileChange {
        path: path.to_owned(),
        new: doc.to_string(),
        mode: mode_of(path),
        backup: old.is_some(),
        old,
    }))
}

/// `path` with `.kcache-bak-<stamp>` appended.
pub fn backup_path(path: &Path, stamp: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".kcache-bak-{stamp}"));
    PathBuf::from(name)
}

/// The timestamp of this run's backups.
pub fn backup_stamp() -> String {
    chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string()
}

/// Writes `changes` in order: a backup first where asked, then the file atomically. Reports each
/// step to `on`; returns how many files changed.
pub(crate) fn write_changes(changes: &[FileChange], stamp: &str, on: &mut dyn FnMut(Step)) -> Result<usize> {
    let mut changed = 0;
    for c in changes {
        if c.old.as_deref() == Some(c.new.as_str()) {
            on(Step::Unchanged(c.path.clone()));
            continue;
        }
        if let Some(dir) = c.path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| ContainerdError::Write {
                path: dir.to_owned(),
                source,
            })?;
        }
        if let (true, Some(old)) = (c.backup, &c.old) {
            // Never over an earlier backup: two runs in one second get -1, -2, ….
            let mut n = 0;
            let bak = loop {
                let stamp = if n == 0 {
                    stamp.to_owned()
                } else {
                    format!("{stamp}-{n}")
                };
                let bak = backup_path(&c.path, &stamp);
                match write_atomic(&bak, old.as_bytes(), c.mode, false) {
                    Ok(()) => break bak,
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 100 => n += 1,
                    Err(source) => return Err(ContainerdError::Write { path: bak, source }),
                }
            };
            on(Step::Backup(bak));
        }
        write_atomic(&c.path, c.new.as_bytes(), c.mode, true).map_err(|source| ContainerdError::Write {
            path: c.path.clone(),
            source,
        })?;
        on(Step::Wrote(c.path.clone()));
        changed += 1;
    }
    Ok(changed)
}

impl InstallPlan {
    /// Writes the plan: config.toml (backed up first) and the drop-in, the base spec (from
    /// [`InstallPlan::spec_source`] plus the hooks), the verifier link. Reports each step to `on`;
    /// returns how many things changed (0: containerd was already configured).
    pub fn write(&self, on: &mut dyn FnMut(Step)) -> Result<usize> {
        if self.nri_socket.is_some() {
            // The NRI route: no base spec (an earlier one stays until uninstall: nothing
            // references it any more).
            let mut changed = write_changes(&self.changes, &backup_stamp(), on)?;
            if let Some(v) = &self.verifier {
                changed += link_verifier(v, on)?;
            }
            for w in &self.warnings {
                on(Step::Warning(w.clone()));
            }
            return Ok(changed);
        }
        let from = match &self.spec_source {
            SpecSource::Given(p) | SpecSource::Node(p) | SpecSource::Earlier(p) => {
                if let SpecSource::Node(p) = &self.spec_source {
                    on(Step::SpecFrom(p.clone()));
                }
                std::fs::read(p).map_err(|source| ContainerdError::Read {
                    path: p.clone(),
                    source,
                })?
            }
            SpecSource::Ctr => spec::ctr_default_spec(&self.ctr)?,
        };
        let spec = spec::base_spec(&from, &self.hook)?;
        let mut changes = self.changes.clone();
        changes.push(FileChange {
            old: read_optional(&self.base_spec)?,
            new: spec,
            mode: 0o644,
            path: self.base_spec.clone(),
            backup: false,
        });
        let mut changed = write_changes(&changes, &backup_stamp(), on)?;
        if let Some(v) = &self.verifier {
            changed += link_verifier(v, on)?;
        }
        for w in &self.warnings {
            on(Step::Warning(w.clone()));
        }
        Ok(changed)
    }
}

/// Links the verifier into containerd's bin_dir; 1 when it changed something.
fn link_verifier(v: &VerifierLink, on: &mut dyn FnMut(Step)) -> Result<usize> {
    let (dir, verifier, max) = (&v.dir, &v.target, v.max);
    let link = dir.join(VERIFIER_LINK);
    if !verifier.is_file() {
        return Err(ContainerdError::VerifierMissing(verifier.clone()));
    }
    let write_err = |path: &Path| {
        let path = path.to_owned();
        move |source| ContainerdError::Write { path, source }
    };
    let mut changed = 0;
    match std::fs::symlink_metadata(&link) {
        Ok(m) if m.file_type().is_symlink() && std::fs::read_link(&link).ok().as_deref() == Some(verifier) => {
            on(Step::LinkUnchanged {
                link: link.clone(),
                target: verifier.clone(),
            });
        }
        Ok(m) if !m.file_type().is_symlink() => return Err(ContainerdError::NotOurLink(link)),
        _ => {
            std::fs::create_dir_all(dir).map_err(write_err(dir))?;
            let tmp = dir.join(format!(".{VERIFIER_LINK}.tmp"));
            let _ = std::fs::remove_file(&tmp);
            std::os::unix::fs::symlink(verifier, &tmp).map_err(write_err(&tmp))?;
            std::fs::rename(&tmp, &link).map_err(write_err(&link))?;
            on(Step::Linked {
                link: link.clone(),
                target: verifier.clone(),
            });
            changed = 1;
        }
    }
    let names: BTreeSet<String> = std::fs::read_dir(dir)
        .map_err(|source| ContainerdError::Read {
            path: dir.clone(),
            source,
        })?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    if max >= 0 && names.len() as i64 > max {
        let pos = names.iter().position(|n| n == VERIFIER_LINK).unwrap_or(0) as i64;
        if pos >= max {
            return Err(ContainerdError::VerifierSkipped {
                dir: dir.clone(),
                count: names.len(),
                max,
            });
        }
        on(Step::Warning(Warning::CrowdedVerifierDir {
            dir: dir.clone(),
            count: names.len(),
            max,
        }));
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(dir: &Path, flavor: Flavor, nri: bool) -> InstallRequest {
        InstallRequest {
            flavor,
            config: dir.join("config.toml"),
            drop_in: None,
            socket: "/run/kcache/snapshotter.sock".into(),
            base_spec: dir.join("base-spec.json"),
            base_spec_from: Some(dir.join("default-spec.json")),
            hook: "/usr/libexec/kcache/kcache-hook".into(),
            runtime: "runc".into(),
            verifier_bin_dir: dir.join("verifiers"),
            verifier: "/bin/true".into(),
            max_verifiers: 10,
            per_verifier_timeout: "10s".into(),
            ctr: "ctr".into(),
            pull: PullPath::Transfer,
            platforms: vec!["linux/amd64".into()],
            kcache_config: Some(dir.join("kcache.toml")),
            nri,
        }
    }

    #[test]
    fn nri_writes_no_base_spec_and_points_kcached_at_containerds_nri_socket() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        std::fs::write(dir.join("default-spec.json"), r#"{"ociVersion":"1.0.2"}"#).unwrap();
        std::fs::write(
            dir.join("config.toml"),
            "version = 2\n[plugins.\"io.containerd.nri.v1.nri\"]\n  socket_path = \"/run/n/nri.sock\"\n\
             [plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"/etc/containerd/certs.d\"\n",
        )
        .unwrap();
        std::fs::write(dir.join("kcache.toml"), "# mine\npolicy = \"/p.yaml\"\n").unwrap();
        let p = plan(&request(dir, Flavor::V1, true)).unwrap();
        assert_eq!(p.nri_socket.as_deref(), Some("/run/n/nri.sock"));
        let kc: Vec<_> = p.changes.iter().filter(|c| c.path == dir.join("kcache.toml")).collect();
        assert_eq!(kc.len(), 1, "one edit of kcache's config: registry and nri together");
        p.write(&mut |_| {}).unwrap();
        assert!(!dir.join("base-spec.json").exists());
        let kc = std::fs::read_to_string(dir.join("kcache.toml")).unwrap();
        let v: toml::Value = toml::from_str(&kc).unwrap();
        assert_eq!(v["nri"]["socket"].as_str(), Some("/run/n/nri.sock"));
        assert_eq!(v["nri"]["hook"].as_str(), Some("/usr/libexec/kcache/kcache-hook"));
        assert_eq!(v["registry"]["config_path"].as_str(), Some("/etc/containerd/certs.d"));
        assert!(kc.starts_with("# mine\n"));
        let main = std::fs::read_to_string(dir.join("config.toml")).unwrap();
        assert!(
            main.contains("disable = false") && !main.contains("base_runtime_spec"),
            "{main}"
        );
        // Again: nothing changes.
        assert_eq!(
            plan(&request(dir, Flavor::V1, true))
                .unwrap()
                .write(&mut |_| {})
                .unwrap(),
            0
        );

        // 2.x without a socket_path: containerd's default socket; the default route writes the spec.
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        std::fs::write(dir.join("default-spec.json"), r#"{"ociVersion":"1.0.2"}"#).unwrap();
        let p = plan(&request(dir, Flavor::V2_1, true)).unwrap();
        assert_eq!(p.nri_socket.as_deref(), Some(crate::containerd::NRI_SOCKET));
        let p = plan(&request(dir, Flavor::V2_1, false)).unwrap();
        assert_eq!(p.nri_socket, None);
        p.write(&mut |_| {}).unwrap();
        assert!(dir.join("base-spec.json").is_file());
        assert!(!std::fs::read_to_string(dir.join("kcache.toml"))
            .unwrap_or_default()
            .contains("[nri]"));
    }
}

//! `kcache uninstall containerd`: take out exactly what `kcache install containerd` added and
//! keep everything else, including what the admin changed since.
//!
//! A key is taken out only while it still holds the value kcache wrote. Where kcache replaced a
//! value (the CRI snapshotter, the runtime's base spec), the value before the first install is
//! read back from the newest `config.toml.kcache-bak-*` that has no kcache in it; without one
//! the key is removed (containerd's default applies again). On 2.x kcache's drop-in is removed
//! with its `imports` entry. Then the verifier link (a symlink only) and kcache's base spec file
//! (when nothing references it any more) go. config.toml is backed up first and replaced
//! atomically; a second run changes nothing. What kcache cannot undo is reported as a [`Left`]
//! with what to do.

use std::{
    fmt,
    path::{Path, PathBuf},
};

use toml_edit::{DocumentMut, Item, TableLike, Value};

use super::{
    plan::{backup_stamp, mode_of, parse_doc, read_optional, write_changes, FileChange, Step},
    render::DEFAULT_SNAPSHOTTER,
    ContainerdError, Result, BINDIR, CRI_IMAGES, CRI_RUNTIME, CRI_V2, NRI, POD_ANNOTATIONS, TRANSFER, VERIFIER_LINK,
};

/// The first line of the drop-in kcache writes (how uninstall knows it is kcache's).
pub const DROP_IN_HEADER: &str = "# Written by `kcache install containerd`";

/// What `kcache uninstall containerd` is told (the same paths install was given).
#[derive(Debug, Clone)]
pub struct UninstallRequest {
    /// containerd's main config file.
    pub config: PathBuf,
    /// containerd 2.x: kcache's drop-in.
    pub drop_in: PathBuf,
    /// kcached's snapshotter socket (the proxy plugin's address).
    pub socket: PathBuf,
    /// kcache's base runtime spec file.
    pub base_spec: PathBuf,
    /// The runtime handler that got the hook.
    pub runtime: String,
    /// containerd 2.x: the image verifier directory.
    pub verifier_bin_dir: PathBuf,
}

/// Something kcache cannot undo by itself, and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Left {
    /// A key still names kcache although it is not kcache's value any more (set again by hand,
    /// or in a file kcache does not own).
    StillSet {
        /// The file.
        file: PathBuf,
        /// The key.
        key: String,
    },
    /// The drop-in at kcache's path was not written by kcache.
    ForeignDropIn(PathBuf),
    /// Something that is not a symlink sits where kcache's verifier link was.
    ForeignVerifier(PathBuf),
}

impl fmt::Display for Left {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Left::StillSet { file, key } => write!(
                f,
                "{}: {key} still names kcache (changed after kcache install): set it to your own snapshotter \
                 (containerd's default is overlayfs) or remove it, then restart containerd",
                file.display()
            ),
            Left::ForeignDropIn(p) => write!(
                f,
                "{} was not written by kcache install: remove its kcache settings (proxy_plugins.kcache, \
                 snapshotter = \"kcache\") by hand, then restart containerd",
                p.display()
            ),
            Left::ForeignVerifier(p) => write!(
                f,
                "{} is not a link kcache made: remove it yourself if it runs kcache-image-verifier",
                p.display()
            ),
        }
    }
}

/// What uninstalling changes.
#[derive(Debug, Clone)]
pub struct UninstallPlan {
    /// config.toml rewritten (backed up first).
    pub changes: Vec<FileChange>,
    /// Files and links removed.
    pub removals: Vec<PathBuf>,
    /// What kcache cannot undo.
    pub left: Vec<Left>,
    /// The backup the old values come from, if any.
    pub restored_from: Option<PathBuf>,
}

/// The newest backup of `config` without kcache in it: the config before the first install.
fn pre_install_backup(config: &Path) -> Option<(PathBuf, DocumentMut)> {
    let dir = config.parent()?;
    let name = config.file_name()?.to_string_lossy().into_owned();
    let prefix = format!("{name}.kcache-bak-");
    let mut backups: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect();
    backups.sort();
    backups.into_iter().rev().find_map(|p| {
        let doc: DocumentMut = std::fs::read_to_string(&p).ok()?.parse().ok()?;
        let has_kcache = doc.get("proxy_plugins").and_then(|t| t.get("kcache")).is_some();
        (!has_kcache).then_some((p, doc))
    })
}

fn item_at<'a>(doc: &'a DocumentMut, path: &[&str]) -> Option<&'a Item> {
    path.iter().try_fold(doc.as_item(), |i, k| i.get(k))
}

fn table_mut<'a>(doc: &'a mut DocumentMut, path: &[&str]) -> Option<&'a mut dyn TableLike> {
    let mut t: &mut dyn TableLike = doc.as_table_mut();
    for k in path {
        t = t.get_mut(k)?.as_table_like_mut()?;
    }
    Some(t)
}

/// Undoes kcache's keys in one document; `pre` is the config before the first install (None:
/// there was none, or no backup).
struct Undo<'a> {
    doc: &'a mut DocumentMut,
    pre: Option<&'a DocumentMut>,
    touched: Vec<Vec<String>>,
}

impl Undo<'_> {
    fn pre_value(&self, path: &[&str], key: &str) -> Option<Item> {
        self.pre
            .and_then(|p| item_at(p, path))
            .and_then(|t| t.get(key))
            .cloned()
    }

    /// `key` at `path`: when it holds `ours`, back to the pre-install value (or removed).
    fn restore_if(&mut self, path: &[&str], key: &str, ours: impl Fn(&Value) -> bool) {
        let pre = self.pre_value(path, key);
        let Some(t) = table_mut(self.doc, path) else { return };
        if !t.get(key).and_then(Item::as_value).is_some_and(&ours) {
            return;
        }
        match pre {
            Some(v) if !v.as_value().is_some_and(&ours) => {
                t.insert(key, v);
            }
            Some(_) => {}
            None => {
                t.remove(key);
            }
        }
        self.touched.push(path.iter().map(|s| (*s).to_owned()).collect());
    }

    /// Removes empty tables kcache created (ones `pre` does not have), deepest first.
    fn prune(&mut self) {
        let mut paths: Vec<Vec<String>> = Vec::new();
        for p in &self.touched {
            for n in (1..=p.len()).rev() {
                paths.push(p[..n].to_vec());
            }
        }
        paths.sort_by_key(|p| std::cmp::Reverse(p.len()));
        paths.dedup();
        for p in paths {
            let path: Vec<&str> = p.iter().map(String::as_str).collect();
            if self.pre.and_then(|pre| item_at(pre, &path)).is_some() {
                continue;
            }
            let (last, parent) = path.split_last().expect("non-empty path");
            let empty = item_at(self.doc, &path)
                .and_then(Item::as_table_like)
                .is_some_and(|t| t.is_empty());
            if empty {
                if let Some(t) = table_mut(self.doc, parent) {
                    t.remove(last);
                }
            }
        }
    }
}

/// Takes kcache's keys out of `doc` (a config.toml, or a file that carries kcache's keys).
pub fn unapply(doc: &mut DocumentMut, pre: Option<&DocumentMut>, r: &UninstallRequest) {
    let schema = doc.get("version").and_then(Item::as_integer).unwrap_or(2);
    let socket = r.socket.to_string_lossy().into_owned();
    let base_spec = r.base_spec.to_string_lossy().into_owned();
    let verifier_dir = r.verifier_bin_dir.to_string_lossy().into_owned();
    let mut u = Undo {
        doc,
        pre,
        touched: Vec::new(),
    };
    // The proxy plugin, when it is kcache's (its address kcached's socket).
    let ours = item_at(u.doc, &["proxy_plugins", "kcache", "address"]).and_then(Item::as_str) == Some(socket.as_str());
    if ours {
        if let Some(t) = table_mut(u.doc, &["proxy_plugins"]) {
            t.remove("kcache");
        }
        u.touched.push(vec!["proxy_plugins".into()]);
    }
    let (images, runtimes): (&[&str], &[&str]) = if schema >= 3 {
        (
            &["plugins", CRI_IMAGES],
            &["plugins", CRI_RUNTIME, "containerd", "runtimes"],
        )
    } else {
        (
            &["plugins", CRI_V2, "containerd"],
            &["plugins", CRI_V2, "containerd", "runtimes"],
        )
    };
    let is_str = |s: &'static str| move |v: &Value| v.as_str() == Some(s);
    u.restore_if(images, "snapshotter", is_str("kcache"));
    u.restore_if(images, "disable_snapshot_annotations", |v| v.as_bool() == Some(false));
    if schema >= 3 {
        u.restore_if(images, "use_local_image_pull", |v| v.as_bool() == Some(true));
    }
    let runtime = [runtimes, &[r.runtime.as_str()]].concat();
    u.restore_if(&runtime, "base_runtime_spec", |v| {
        v.as_str() == Some(base_spec.as_str())
    });
    u.restore_if(&runtime, "snapshotter", is_str("kcache"));
    if schema < 3 {
        // `kcache install containerd --nri` on 1.7.
        u.restore_if(&["plugins", NRI], "disable", |v| v.as_bool() == Some(false));
    }
    // pod_annotations: kcache's entry out, unless it was there before.
    let pre_had = u
        .pre_value(&runtime, "pod_annotations")
        .and_then(|i| i.as_array().cloned())
        .is_some_and(|a| a.iter().any(|v| v.as_str() == Some(POD_ANNOTATIONS)));
    let pre_key = u.pre_value(&runtime, "pod_annotations").is_some();
    if let Some(t) = table_mut(u.doc, &runtime) {
        if let Some(a) = t.get_mut("pod_annotations").and_then(Item::as_array_mut) {
            if !pre_had {
                a.retain(|v| v.as_str() != Some(POD_ANNOTATIONS));
            }
            if a.is_empty() && !pre_key {
                t.remove("pod_annotations");
            }
        }
    }
    u.touched.push(runtime.iter().map(|s| (*s).to_owned()).collect());
    // A runtime table kcache created holds only the runtime_type it added.
    let created = u.pre.is_none_or(|p| item_at(p, &runtime).is_none());
    if created {
        if let Some(t) = table_mut(u.doc, &runtime) {
            if t.len() == 1 && t.get("runtime_type").and_then(Item::as_str) == Some("io.containerd.runc.v2") {
                t.remove("runtime_type");
            }
        }
    }
    // 2.x: the bindir settings kcache wrote, the transfer service's kcache entries.
    let bindir = ["plugins", BINDIR];
    if item_at(u.doc, &[&bindir[..], &["bin_dir"]].concat()).and_then(Item::as_str) == Some(verifier_dir.as_str()) {
        for key in ["bin_dir", "max_verifiers", "per_verifier_timeout"] {
            if u.pre_value(&bindir, key).is_none() {
                if let Some(t) = table_mut(u.doc, &bindir) {
                    t.remove(key);
                }
            }
        }
        u.touched.push(bindir.iter().map(|s| (*s).to_owned()).collect());
    }
    let transfer = ["plugins", TRANSFER];
    let pre_unpack = u.pre_value(&transfer, "unpack_config").is_some();
    if let Some(t) = table_mut(u.doc, &transfer) {
        if let Some(a) = t.get_mut("unpack_config").and_then(Item::as_array_mut) {
            let snap = |v: &Value| {
                v.as_inline_table()
                    .and_then(|e| e.get("snapshotter"))
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            };
            let had_kcache = a.iter().any(|v| snap(v).as_deref() == Some("kcache"));
            a.retain(|v| snap(v).as_deref() != Some("kcache"));
            let only_default = a.iter().all(|v| snap(v).as_deref() == Some(DEFAULT_SNAPSHOTTER));
            if had_kcache && !pre_unpack && only_default {
                t.remove("unpack_config");
            }
        }
        u.touched.push(transfer.iter().map(|s| (*s).to_owned()).collect());
    }
    u.touched.push(images.iter().map(|s| (*s).to_owned()).collect());
    u.prune();
}

/// Removes `drop_in` from config.toml's `imports` (the exact entry kcache added).
fn remove_import(doc: &mut DocumentMut, drop_in: &Path, pre: Option<&DocumentMut>) {
    let s = drop_in.to_string_lossy();
    let Some(a) = doc.get_mut("imports").and_then(Item::as_array_mut) else {
        return;
    };
    a.retain(|v| v.as_str() != Some(&*s));
    if a.is_empty() && pre.is_none_or(|p| p.get("imports").is_none()) {
        doc.remove("imports");
    }
}

/// Keys in `doc` that still name kcache.
fn still_set(doc: &DocumentMut) -> Vec<String> {
    let mut out = Vec::new();
    if item_at(doc, &["proxy_plugins", "kcache"]).is_some() {
        out.push("proxy_plugins.kcache".to_owned());
    }
    for (images, runtimes) in [
        (
            vec!["plugins", CRI_V2, "containerd"],
            vec!["plugins", CRI_V2, "containerd", "runtimes"],
        ),
        (
            vec!["plugins", CRI_IMAGES],
            vec!["plugins", CRI_RUNTIME, "containerd", "runtimes"],
        ),
    ] {
        if item_at(doc, &[&images[..], &["snapshotter"]].concat()).and_then(Item::as_str) == Some("kcache") {
            out.push(format!("plugins.{}.snapshotter", images[1..].join(".")));
        }
        if let Some(t) = item_at(doc, &runtimes).and_then(Item::as_table_like) {
            for (name, rt) in t.iter() {
                if rt.get("snapshotter").and_then(Item::as_str) == Some("kcache") {
                    out.push(format!("{}.{name}.snapshotter", runtimes.join(".")));
                }
            }
        }
    }
    out
}

/// Works out what uninstalling changes; writes nothing.
pub fn plan_uninstall(r: &UninstallRequest) -> Result<UninstallPlan> {
    let mut changes = Vec::new();
    let mut removals = Vec::new();
    let mut left = Vec::new();
    let pre = pre_install_backup(&r.config);
    let text = read_optional(&r.config)?;
    let mut main_text = String::new();
    if let Some(text) = &text {
        let mut doc = parse_doc(text, &r.config)?;
        unapply(&mut doc, pre.as_ref().map(|p| &p.1), r);
        remove_import(&mut doc, &r.drop_in, pre.as_ref().map(|p| &p.1));
        for key in still_set(&doc) {
            left.push(Left::StillSet {
                file: r.config.clone(),
                key,
            });
        }
        main_text = doc.to_string();
        changes.push(FileChange {
            path: r.config.clone(),
            old: Some(text.clone()),
            new: main_text.clone(),
            mode: mode_of(&r.config),
            backup: true,
        });
    }
    match read_optional(&r.drop_in)? {
        Some(d) if d.trim_start().starts_with(DROP_IN_HEADER) => removals.push(r.drop_in.clone()),
        Some(_) => left.push(Left::ForeignDropIn(r.drop_in.clone())),
        None => {}
    }
    let link = r.verifier_bin_dir.join(VERIFIER_LINK);
    match std::fs::symlink_metadata(&link) {
        Ok(m) if m.file_type().is_symlink() => removals.push(link),
        Ok(_) => left.push(Left::ForeignVerifier(link)),
        Err(_) => {}
    }
    if r.base_spec.is_file() && !main_text.contains(&*r.base_spec.to_string_lossy()) {
        removals.push(r.base_spec.clone());
    }
    Ok(UninstallPlan {
        changes,
        removals,
        left,
        restored_from: pre.map(|p| p.0),
    })
}

impl UninstallPlan {
    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.removals.is_empty() && self.changes.iter().all(|c| c.old.as_deref() == Some(c.new.as_str()))
    }

    /// Writes config.toml (backup first, atomically), then removes kcache's files. Reports each
    /// step to `on` (a removal as [`Step::Removed`]); returns how many things changed.
    pub fn write(&self, on: &mut dyn FnMut(Step)) -> Result<usize> {
        let mut changed = write_changes(&self.changes, &backup_stamp(), on)?;
        for p in &self.removals {
            std::fs::remove_file(p).map_err(|source| ContainerdError::Write {
                path: p.clone(),
                source,
            })?;
            on(Step::Removed(p.clone()));
            changed += 1;
        }
        Ok(changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::containerd::{apply, Flavor, Target};

    fn request() -> UninstallRequest {
        UninstallRequest {
            config: "/etc/containerd/config.toml".into(),
            drop_in: "/etc/containerd/conf.d/kcache.toml".into(),
            socket: "/run/kcache/snapshotter.sock".into(),
            base_spec: "/etc/kcache/containerd-base-spec.json".into(),
            runtime: "runc".into(),
            verifier_bin_dir: "/opt/containerd/image-verifier/bin".into(),
        }
    }

    fn target(flavor: Flavor) -> Target {
        Target::defaults(flavor)
    }

    const NODE: &str = r#"# node config
version = 2

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "registry.k8s.io/pause:3.9"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      base_runtime_spec = "/etc/node-spec.json"
      pod_annotations = ["example.com/*"]
"#;

    #[test]
    fn uninstall_restores_what_install_replaced_and_keeps_later_edits() {
        let pre: DocumentMut = NODE.parse().unwrap();
        let mut doc = pre.clone();
        apply(&mut doc, &target(Flavor::V1)).unwrap();
        // The admin's edit after install.
        let mut text = doc.to_string();
        text.push_str("\n[plugins.\"io.containerd.grpc.v1.cri\".cni]\n  conf_dir = \"/etc/cni/mine\"\n");
        let mut doc: DocumentMut = text.parse().unwrap();
        unapply(&mut doc, Some(&pre), &request());
        let v: toml::Value = toml::from_str(&doc.to_string()).unwrap();
        let c = &v["plugins"]["io.containerd.grpc.v1.cri"]["containerd"];
        assert_eq!(c["snapshotter"].as_str(), Some("overlayfs"));
        assert!(c.get("disable_snapshot_annotations").is_none());
        let runc = &c["runtimes"]["runc"];
        assert_eq!(runc["base_runtime_spec"].as_str(), Some("/etc/node-spec.json"));
        assert_eq!(runc["pod_annotations"].as_array().unwrap().len(), 1);
        assert!(v.get("proxy_plugins").is_none(), "{v:?}");
        assert_eq!(
            v["plugins"]["io.containerd.grpc.v1.cri"]["cni"]["conf_dir"].as_str(),
            Some("/etc/cni/mine")
        );
        assert!(doc.to_string().contains("# node config"));
        assert!(still_set(&doc).is_empty());
        // Twice: the same.
        let once = doc.to_string();
        unapply(&mut doc, Some(&pre), &request());
        assert_eq!(doc.to_string(), once);
    }

    #[test]
    fn without_a_backup_kcaches_keys_go_and_a_value_changed_since_stays() {
        let mut doc = DocumentMut::new();
        doc.insert("version", toml_edit::value(2));
        apply(&mut doc, &target(Flavor::V1)).unwrap();
        unapply(&mut doc, None, &request());
        assert_eq!(doc.to_string().trim(), "version = 2", "{doc}");

        let mut doc: DocumentMut = NODE.parse().unwrap();
        apply(&mut doc, &target(Flavor::V1)).unwrap();
        // Changed since install: a value that is not kcache's stays.
        let t = table_mut(&mut doc, &["plugins", CRI_V2, "containerd", "runtimes", "runc"]).unwrap();
        t.insert("base_runtime_spec", toml_edit::value("/etc/newer-spec.json"));
        t.insert("snapshotter", toml_edit::value("kcache"));
        let mut r = request();
        r.socket = "/elsewhere.sock".into();
        unapply(&mut doc, None, &r);
        let v: toml::Value = toml::from_str(&doc.to_string()).unwrap();
        let runc = &v["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]["runc"];
        assert_eq!(runc["base_runtime_spec"].as_str(), Some("/etc/newer-spec.json"));
        // kcache's own value is taken out wherever it is; another socket's proxy is not ours.
        assert!(runc.get("snapshotter").is_none(), "{runc:?}");
        assert_eq!(still_set(&doc), ["proxy_plugins.kcache"]);
    }

    #[test]
    fn a_2_1_drop_in_unapplies_to_nothing() {
        let mut doc = DocumentMut::new();
        doc.insert("version", toml_edit::value(3));
        apply(&mut doc, &target(Flavor::V2_1)).unwrap();
        unapply(&mut doc, None, &request());
        assert_eq!(doc.to_string().trim(), "version = 3", "{doc}");
    }
}

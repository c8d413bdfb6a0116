//! kcache's keys in a containerd config document: [`apply`] sets them (toml_edit: comments and
//! every other key stay), and the helpers read what a node's config already says (its version,
//! its imports, its runtime's base spec).

use std::path::{Path, PathBuf};

use toml_edit::{Array, DocumentMut, Item, Table, TableLike, Value};

use super::{ContainerdError, Flavor, Result, BINDIR, CRI_IMAGES, CRI_RUNTIME, CRI_V2, NRI, POD_ANNOTATIONS, TRANSFER};

/// containerd 2.1+: how CRI pulls images.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PullPath {
    /// Through the transfer service (2.1's default): the bindir image verifier refuses before
    /// anything is downloaded, the gate refuses at unpack (labels through
    /// `enable_remote_snapshot_annotations`). kcache must be in the transfer service's
    /// `unpack_config`.
    #[default]
    Transfer,
    /// Through the client, as 1.x and 2.0 do (`use_local_image_pull = true`,
    /// `disable_snapshot_annotations = false`): for nodes whose CRI settings need it (registry
    /// mirrors in config.toml, `discard_unpacked_layers`, …). The gate alone verifies CRI pulls;
    /// the image verifier runs only for other transfer-service pulls.
    Local,
}

/// The platform containerd unpacks for on this machine (`linux/<GOARCH>`).
pub fn node_platform() -> String {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        "loongarch64" => "loong64",
        other => other,
    };
    format!("linux/{arch}")
}

/// containerd's own default snapshotter on Linux, kept in the transfer service's unpack_config
/// beside kcache so non-CRI transfer pulls (`ctr images pull`) unpack as before.
pub const DEFAULT_SNAPSHOTTER: &str = "overlayfs";

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
    /// 2.1+: how CRI pulls.
    pub pull: PullPath,
    /// 2.1+: the platforms the transfer service unpacks into kcache (default: this node's).
    pub platforms: Vec<String>,
    /// The hook through NRI (kcached's NRI plugin) instead of the base runtime spec: no
    /// `base_runtime_spec` (kcache's own is taken out again), and on 1.x NRI turned on.
    pub nri: bool,
}

#[cfg(test)]
impl Target {
    /// A node's defaults (kcache's paths, runc, containerd's verifier dir), for tests.
    pub(crate) fn defaults(flavor: Flavor) -> Self {
        Self {
            flavor,
            schema: flavor.default_schema(),
            socket: crate::paths::SNAPSHOTTER_SOCKET.into(),
            base_spec: crate::paths::BASE_SPEC.into(),
            runtime: "runc".into(),
            verifier_dir: "/opt/containerd/image-verifier/bin".into(),
            max_verifiers: 10,
            per_verifier_timeout: "10s".into(),
            pull: PullPath::Transfer,
            platforms: vec![],
            nri: false,
        }
    }
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
        let here = || path[..=i].join(".");
        cur = cur
            .get_mut(key)
            .and_then(Item::as_table_like_mut)
            .ok_or_else(|| ContainerdError::NotATable(here()))?;
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
        match (t.flavor, t.pull) {
            (Flavor::V2_1, PullPath::Transfer) => {}
            (Flavor::V2_1, PullPath::Local) => {
                set(i, "use_local_image_pull", true);
                set(i, "disable_snapshot_annotations", false);
            }
            _ => set(i, "disable_snapshot_annotations", false),
        }
    }
    {
        let path = [runtimes, &[t.runtime.as_str()]].concat();
        let r = table_at(root, &path, &mut created)?;
        if r.get("runtime_type").is_none() {
            set(r, "runtime_type", "io.containerd.runc.v2");
        }
        if !t.nri {
            set(r, "base_runtime_spec", t.base_spec.as_str());
        } else if r.get("base_runtime_spec").and_then(Item::as_str) == Some(t.base_spec.as_str()) {
            // An earlier base-spec install: the hook would run twice.
            r.remove("base_runtime_spec");
        }
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
                        return Err(ContainerdError::NotAnArray(format!(
                            "{}.{}.pod_annotations",
                            runtimes.join("."),
                            t.runtime
                        )));
                    }
                    let mut a = Array::new();
                    a.push(POD_ANNOTATIONS);
                    r.insert("pod_annotations", Item::Value(Value::Array(a)));
                }
            }
        }
    }
    if t.nri && !t.flavor.is_2x() {
        // containerd 1.7 ships NRI disabled; 2.x enables it by default (its socket path is
        // left to the node).
        let n = table_at(root, &["plugins", NRI], &mut created)?;
        set(n, "disable", false);
    }
    if t.flavor.is_2x() {
        let v = table_at(root, &["plugins", BINDIR], &mut created)?;
        set(v, "bin_dir", t.verifier_dir.as_str());
        set(v, "max_verifiers", t.max_verifiers);
        set(v, "per_verifier_timeout", t.per_verifier_timeout.as_str());
    }
    if t.flavor == Flavor::V2_1 {
        // The transfer service unpacks only into the snapshotters of its unpack_config
        // ("no unpack platforms defined" otherwise). Setting it replaces containerd's default
        // (overlayfs for the node's platform), so that entry is written too.
        let tr = table_at(root, &["plugins", TRANSFER], &mut created)?;
        if tr.get("unpack_config").is_none() {
            tr.insert("unpack_config", Item::Value(Value::Array(Array::new())));
        }
        let list = tr
            .get_mut("unpack_config")
            .and_then(Item::as_array_mut)
            .ok_or_else(|| ContainerdError::NotAnArray(format!("plugins.{TRANSFER}.unpack_config")))?;
        let platforms = if t.platforms.is_empty() {
            vec![node_platform()]
        } else {
            t.platforms.clone()
        };
        let has = |list: &Array, platform: &str, snapshotter: &str| {
            list.iter().any(|e| {
                e.as_inline_table().is_some_and(|e| {
                    e.get("platform").and_then(Value::as_str) == Some(platform)
                        && e.get("snapshotter").and_then(Value::as_str) == Some(snapshotter)
                })
            })
        };
        let fresh = list.is_empty();
        for platform in &platforms {
            for snapshotter in [DEFAULT_SNAPSHOTTER, "kcache"] {
                if snapshotter == DEFAULT_SNAPSHOTTER && !fresh {
                    // The node's own list: what it unpacks besides kcache is its choice.
                    continue;
                }
                if !has(list, platform, snapshotter) {
                    let mut e = toml_edit::InlineTable::new();
                    e.insert("platform", platform.as_str().into());
                    e.insert("snapshotter", snapshotter.into());
                    list.push(Value::InlineTable(e));
                }
            }
        }
    }
    Ok(())
}

/// The config version of a parsed main config, or why kcache cannot edit it.
pub fn config_version(doc: &DocumentMut, path: &Path) -> Result<Option<i64>> {
    match doc.get("version") {
        None if doc.as_table().is_empty() => Ok(None),
        None => Err(ContainerdError::Version1(path.to_owned())),
        Some(v) => match v.as_integer() {
            Some(n @ 2..) => Ok(Some(n)),
            _ => Err(ContainerdError::BadVersion {
                path: path.to_owned(),
                version: v.to_string().trim().to_owned(),
            }),
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
pub fn imports_cover(doc: &DocumentMut, config: &Path, drop_in: &Path) -> bool {
    let base = config.parent().unwrap_or(Path::new("/"));
    doc.get("imports").and_then(Item::as_array).is_some_and(|a| {
        a.iter().filter_map(Value::as_str).any(|i| {
            let p = base.join(i);
            glob(p.to_string_lossy().as_bytes(), drop_in.to_string_lossy().as_bytes())
        })
    })
}

/// Adds `drop_in` to config.toml's `imports`.
pub fn add_import(doc: &mut DocumentMut, drop_in: &Path) -> Result<()> {
    let s = drop_in.to_string_lossy().into_owned();
    match doc.get_mut("imports") {
        None => {
            let mut a = Array::new();
            a.push(s);
            doc.insert("imports", Item::Value(Value::Array(a)));
        }
        Some(item) => item
            .as_array_mut()
            .ok_or_else(|| ContainerdError::NotAnArray("imports".into()))?
            .push(s),
    }
    Ok(())
}

/// The `base_runtime_spec` config.toml already gives the runtime, when it is not kcache's: the
/// node's own base spec, which kcache's must start from so its settings are kept.
pub fn existing_base_spec(main: &DocumentMut, schema: i64, runtime: &str, ours: &Path) -> Option<PathBuf> {
    let (_, runtimes) = cri_tables(schema);
    let path = [runtimes, &[runtime, "base_runtime_spec"]]
        .concat()
        .iter()
        .try_fold(main.as_item(), |item, key| item.get(key))?
        .as_str()
        .filter(|p| !p.is_empty())?;
    (Path::new(path) != ours).then(|| PathBuf::from(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::containerd::{BINDIR, CRI_IMAGES, CRI_RUNTIME, CRI_V2, TRANSFER};

    fn target(flavor: Flavor) -> Target {
        Target {
            platforms: vec!["linux/amd64".into()],
            ..Target::defaults(flavor)
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
    fn on_2_1_the_transfer_service_unpacks_into_kcache_and_local_pulls_are_a_choice() {
        let v = render(Flavor::V2_1);
        let unpack = at(&v, &["plugins", TRANSFER, "unpack_config"])
            .unwrap()
            .as_array()
            .unwrap();
        let entries: Vec<(&str, &str)> = unpack
            .iter()
            .map(|e| (e["platform"].as_str().unwrap(), e["snapshotter"].as_str().unwrap()))
            .collect();
        assert_eq!(entries, [("linux/amd64", "overlayfs"), ("linux/amd64", "kcache")]);
        assert!(at(&render(Flavor::V2_0), &["plugins", TRANSFER]).is_none());
        assert!(at(&v, &["plugins", CRI_IMAGES, "use_local_image_pull"]).is_none());

        let mut d = DocumentMut::new();
        let t = Target {
            pull: PullPath::Local,
            ..target(Flavor::V2_1)
        };
        apply(&mut d, &t).unwrap();
        let v: toml::Value = toml::from_str(&d.to_string()).unwrap();
        let i = at(&v, &["plugins", CRI_IMAGES]).unwrap();
        assert_eq!(i["use_local_image_pull"].as_bool(), Some(true));
        assert_eq!(i["disable_snapshot_annotations"].as_bool(), Some(false));

        // A node's own unpack_config: kcache is added, the rest is the node's.
        let mut d: DocumentMut = "version = 3\n[plugins.\"io.containerd.transfer.v1.local\"]\n  unpack_config = [{platform = \"linux/amd64\", snapshotter = \"zfs\"}]\n"
            .parse()
            .unwrap();
        apply(&mut d, &target(Flavor::V2_1)).unwrap();
        let once = d.to_string();
        let v: toml::Value = toml::from_str(&once).unwrap();
        let names: Vec<&str> = at(&v, &["plugins", TRANSFER, "unpack_config"])
            .unwrap()
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["snapshotter"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["zfs", "kcache"]);
        apply(&mut d, &target(Flavor::V2_1)).unwrap();
        assert_eq!(d.to_string(), once, "a second run changes nothing");
    }

    #[test]
    fn not_a_table_is_an_error() {
        let mut d: DocumentMut = "version = 2\nproxy_plugins = 3\n".parse().unwrap();
        let e = apply(&mut d, &target(Flavor::V1)).unwrap_err().to_string();
        assert!(e.contains("proxy_plugins is not a table"), "{e}");
    }

    #[test]
    fn globs() {
        assert!(glob(b"/a/*.toml", b"/a/k.toml"));
        assert!(!glob(b"/a/*.toml", b"/a/b/k.toml"));
        assert!(glob(b"/a/?.toml", b"/a/k.toml"));
        assert!(!glob(b"/a/*.toml", b"/a/k.json"));
    }

    #[test]
    fn the_nri_route_leaves_the_base_spec_out_and_turns_nri_on_only_on_1_x() {
        // An earlier base-spec install on 1.7: its base_runtime_spec is taken out again.
        let mut d = DocumentMut::new();
        d.insert("version", Item::Value(Value::from(2)));
        apply(&mut d, &target(Flavor::V1)).unwrap();
        let nri = |flavor| Target {
            nri: true,
            ..target(flavor)
        };
        apply(&mut d, &nri(Flavor::V1)).unwrap();
        let v: toml::Value = toml::from_str(&d.to_string()).unwrap();
        let r = &at(&v, &["plugins", CRI_V2, "containerd", "runtimes", "runc"]).unwrap();
        assert!(r.get("base_runtime_spec").is_none(), "{d}");
        assert_eq!(r["pod_annotations"].as_array().unwrap().len(), 1);
        assert_eq!(at(&v, &["plugins", NRI, "disable"]).unwrap().as_bool(), Some(false));
        // The node's own base spec stays.
        let mut d: DocumentMut = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]\n  base_runtime_spec = \"/etc/node.json\"\n"
            .parse()
            .unwrap();
        apply(&mut d, &nri(Flavor::V1)).unwrap();
        assert!(d.to_string().contains("base_runtime_spec = \"/etc/node.json\""));

        for flavor in [Flavor::V2_0, Flavor::V2_1] {
            let mut d = DocumentMut::new();
            apply(&mut d, &nri(flavor)).unwrap();
            let v: toml::Value = toml::from_str(&d.to_string()).unwrap();
            assert!(
                at(&v, &["plugins", NRI]).is_none(),
                "2.x: NRI is on by default, its keys the node's"
            );
            let r = at(&v, &["plugins", CRI_RUNTIME, "containerd", "runtimes", "runc"]).unwrap();
            assert!(r.get("base_runtime_spec").is_none());
        }
    }
}

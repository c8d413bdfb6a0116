//! Relocating Triton's `__grp__<name>.json` files.
//!
//! Triton's `FileCacheManager.get_group` (python/triton/runtime/cache.py) reads
//! `{"child_paths": {"<file>": "<absolute path>"}}` and drops every child whose path does not
//! exist; without the metadata child the lookup misses and the kernel is compiled again. A cache
//! built under `/root/.triton/cache` and mounted at `/home/user/.triton/cache` therefore only hits
//! once the paths are rewritten for the mount path. kcache writes the rewritten files into a
//! small directory, used as an extra overlay lower layer above the read-only cache.
//!
//! **Which root.** The root the paths are moved from is read from the group files themselves
//! ([`infer_root`]): Triton puts a group's children next to its group file, so a child
//! `<root>/<dir>/<file>` of the group file at `<dir>/__grp__<name>.json` (relative to the cache
//! dir) says the cache was `<root>` when Triton wrote it. That is the one source of truth: it is
//! right for a cache copied elsewhere before `kcache cache build`, reached through a symlink, or
//! packed by a tool that records no root (plain MCV/GKM images). The image's
//! `cache.kcache.dev/build-cache-root` label (which `kcache cache build` sets from the same
//! inference) is for people and other tools; the rewrite never reads it. Group files that point
//! into different roots are an error naming two of them, never a partial rewrite.
//!
//! Paths under the root are moved to the target root; other paths are left as they are (they
//! point outside the cache, and Triton treats them as it would have). A path under the root
//! with a `..` component is refused: after rewriting it could name anything.

use std::{
    fs, io,
    os::unix::fs::DirBuilderExt,
    path::{Path, PathBuf},
};

use crate::{cache::store::StoreLayout, digest::Digest};

/// Largest `__grp__` file read (real ones hold a handful of paths).
const MAX_GRP_BYTES: u64 = 1 << 20;

/// Why a group file could not be rewritten.
#[derive(Debug, thiserror::Error)]
pub enum GrpError {
    /// The file is not JSON.
    #[error("group file is not valid json")]
    Json(#[source] serde_json::Error),
    /// A root is not an absolute path without `..`.
    #[error("{which} root {root:?} is not an absolute path without '..'")]
    Root {
        /// `build` or `target`.
        which: &'static str,
        /// The root.
        root: String,
    },
    /// A child path under the build root escapes it with `..`.
    #[error("child path {path:?} for {child:?} escapes the cache root with '..'")]
    Escape {
        /// The child's file name.
        child: String,
        /// Its path.
        path: String,
    },
    /// A file in the tree could not be read or written.
    #[error("failed to rewrite group file {path}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A group file in the tree could not be parsed or rewritten.
    #[error("group file {path} cannot be rewritten")]
    File {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: Box<GrpError>,
    },
    /// A group file is larger than any Triton writes.
    #[error("group file {0} is larger than {MAX_GRP_BYTES} bytes")]
    TooLarge(PathBuf),
    /// Group files (or the children of one) point into different cache roots: no one rewrite
    /// is right for all of them.
    #[error(
        "the __grp__ files disagree on the cache dir Triton wrote them in: {first_file} points into {first}, \
         {other_file} into {other}; no single rewrite makes both hit"
    )]
    Inconsistent {
        /// The root found first.
        first: String,
        /// The group file that named it, relative to the cache dir.
        first_file: String,
        /// Another root.
        other: String,
        /// The group file that named it.
        other_file: String,
    },
    /// The rewrite layer for a mount path could not be made.
    #[error("cannot rewrite the __grp__ files for {target}")]
    Layer {
        /// The mount path.
        target: String,
        /// The cause.
        #[source]
        source: Box<GrpError>,
    },
    /// The rewrite layer's directory could not be made.
    #[error("__grp__ layer {path}")]
    LayerDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

type Result<T> = std::result::Result<T, GrpError>;

/// Whether `name` is a group file name (`__grp__<name>.json`).
pub fn is_grp_file(name: &str) -> bool {
    name.starts_with("__grp__") && name.ends_with(".json")
}

fn normalize_root<'a>(which: &'static str, root: &'a str) -> Result<&'a str> {
    let trimmed = root.trim_end_matches('/');
    if !root.starts_with('/') || root.split('/').any(|c| c == "..") {
        return Err(GrpError::Root {
            which,
            root: root.to_string(),
        });
    }
    Ok(trimmed)
}

/// Rewrites one group file: child paths under `build_root` move under `target_root`.
/// `None` when nothing changes (no `child_paths`, Triton's remote-cache list form, or no path
/// under the build root).
pub fn rewrite_grp(json: &[u8], build_root: &str, target_root: &str) -> Result<Option<Vec<u8>>> {
    let build = normalize_root("build", build_root)?;
    let target = normalize_root("target", target_root)?;
    let mut doc: serde_json::Value = serde_json::from_slice(json).map_err(GrpError::Json)?;
    let Some(children) = doc.get_mut("child_paths").and_then(|c| c.as_object_mut()) else {
        return Ok(None);
    };
    let mut changed = false;
    for (child, path) in children.iter_mut() {
        let Some(p) = path.as_str() else { continue };
        let rest = if build.is_empty() {
            p.strip_prefix('/')
        } else {
            p.strip_prefix(build)
                .and_then(|r| if r.is_empty() { Some(r) } else { r.strip_prefix('/') })
        };
        let Some(rest) = rest else { continue };
        if rest.split('/').any(|c| c == "..") {
            return Err(GrpError::Escape {
                child: child.clone(),
                path: p.to_string(),
            });
        }
        let new = match (target, rest) {
            ("", "") => "/".to_string(),
            (t, "") => t.to_string(),
            (t, r) => format!("{t}/{r}"),
        };
        if new != p {
            *path = serde_json::Value::String(new);
            changed = true;
        }
    }
    if !changed {
        return Ok(None);
    }
    serde_json::to_vec(&doc).map(Some).map_err(GrpError::Json)
}

/// The cache root a child path names, for a group file in `rel_dir` (relative to the cache dir,
/// `/`-separated): `<root>/<rel_dir>/<file>` gives `<root>` (`/` for a cache at the filesystem
/// root). `None` for any other shape: a relative path, a `..` component, or a child that is not
/// next to its group file (Triton never writes one; it points outside the cache).
fn child_root(path: &str, rel_dir: &str) -> Option<String> {
    if !path.starts_with('/') || path.split('/').any(|c| c == "..") {
        return None;
    }
    let (parent, file) = path.rsplit_once('/')?;
    if file.is_empty() {
        return None;
    }
    let root = if rel_dir.is_empty() {
        parent
    } else {
        parent.strip_suffix(rel_dir)?.strip_suffix('/')?
    };
    Some(if root.is_empty() { "/".into() } else { root.to_string() })
}

/// The distinct cache roots the children of one group file name (see [`child_root`]); usually
/// one, none when no child has Triton's shape (the remote cache's list form, paths elsewhere).
pub fn grp_roots(json: &[u8], rel_dir: &str) -> Result<Vec<String>> {
    let doc: serde_json::Value = serde_json::from_slice(json).map_err(GrpError::Json)?;
    let mut roots: Vec<String> = Vec::new();
    let children = doc.get("child_paths").and_then(|c| c.as_object());
    for path in children.into_iter().flat_map(|c| c.values()).filter_map(|p| p.as_str()) {
        if let Some(root) = child_root(path, rel_dir) {
            if !roots.contains(&root) {
                roots.push(root);
            }
        }
    }
    Ok(roots)
}

/// Where the group files under a cache dir say Triton wrote the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InferredRoot {
    /// The absolute root, as the child paths spell it (`/root/.triton/cache`).
    pub root: String,
    /// The first group file (in sorted walk order) that named it, relative to the cache dir.
    pub file: String,
}

/// Infers the root the group files under `cache_dir` were written in: every group file whose
/// children have Triton's shape must agree ([`GrpError::Inconsistent`] names two that do not).
/// `None` when no group file has such a child (nothing to relocate).
pub fn infer_root(cache_dir: &Path) -> Result<Option<InferredRoot>> {
    let mut found: Option<InferredRoot> = None;
    walk_grp(cache_dir, Path::new(""), &mut |rel, bytes| {
        // A non-utf-8 dir cannot be spelled in the JSON strings: it names no root.
        let Some(dir) = rel.parent().and_then(Path::to_str) else {
            return Ok(());
        };
        let file = rel.display().to_string();
        let roots = grp_roots(bytes, dir).map_err(|source| GrpError::File {
            path: cache_dir.join(rel),
            source: Box::new(source),
        })?;
        for root in roots {
            match &found {
                None => {
                    found = Some(InferredRoot {
                        root,
                        file: file.clone(),
                    })
                }
                Some(f) if f.root == root => {}
                Some(f) => {
                    return Err(GrpError::Inconsistent {
                        first: f.root.clone(),
                        first_file: f.file.clone(),
                        other: root,
                        other_file: file.clone(),
                    })
                }
            }
        }
        Ok(())
    })?;
    Ok(found)
}

/// What [`rewrite_tree`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewritten {
    /// The root the group files were written in; `None`: no group file names one.
    pub root: Option<InferredRoot>,
    /// Group files written to the output dir (0 when the root is the target already).
    pub files: usize,
}

/// Rewrites every group file under `cache_dir` for a cache mounted at `target_root`: the root
/// comes from the files ([`infer_root`]), and the changed files are written into `out_dir` at
/// the same relative path. Symlinks and other non-regular entries are skipped, never followed.
pub fn rewrite_tree(cache_dir: &Path, target_root: &str, out_dir: &Path) -> Result<Rewritten> {
    let target = normalize_root("target", target_root)?;
    let Some(root) = infer_root(cache_dir)? else {
        return Ok(Rewritten { root: None, files: 0 });
    };
    if normalize_root("build", &root.root)? == target {
        return Ok(Rewritten {
            root: Some(root),
            files: 0,
        });
    }
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| GrpError::Io { path, source }
    };
    let mut files = 0;
    walk_grp(cache_dir, Path::new(""), &mut |rel, bytes| {
        let rewritten = rewrite_grp(bytes, &root.root, target_root).map_err(|source| GrpError::File {
            path: cache_dir.join(rel),
            source: Box::new(source),
        })?;
        if let Some(new) = rewritten {
            let dest = out_dir.join(rel);
            if let Some(parent) = dest.parent() {
                fs::create_dir_all(parent).map_err(io_err(parent))?;
            }
            fs::write(&dest, new).map_err(io_err(&dest))?;
            files += 1;
        }
        Ok(())
    })?;
    Ok(Rewritten {
        root: Some(root),
        files,
    })
}

/// The `__grp__` rewrite layer of the store entry `digest` for a cache mounted at `target`:
/// `<entry>/grp/<key>/` ([`StoreLayout::grp_dir`]), an overlay lower layer above `cache_dir`
/// (the entry's `tree/<cache_subdir>`). Made once per entry and target, through a temp dir and
/// one rename, by the OCI hook or kcached, whichever comes first; the caller holds the entry's
/// shared lock. `None` when nothing needs rewriting (the cache is mounted where Triton wrote
/// it, or its files name no root); the empty dir stays as the record that this was worked out.
pub fn layer(layout: &StoreLayout, digest: &Digest, cache_dir: &Path, target: &str) -> Result<Option<PathBuf>> {
    let dir = layout.grp_dir(digest, target);
    let used = |dir: PathBuf| {
        let nonempty = fs::read_dir(&dir).is_ok_and(|mut d| d.next().is_some());
        nonempty.then_some(dir)
    };
    let is_dir = |p: &Path| fs::symlink_metadata(p).is_ok_and(|m| m.is_dir());
    if is_dir(&dir) {
        return Ok(used(dir));
    }
    let dir_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| GrpError::LayerDir { path, source }
    };
    // The key may be several components (a long target): build the layer beside its final place.
    let (Some(parent), Some(name)) = (dir.parent(), dir.file_name()) else {
        return Err(dir_err(&dir)(io::Error::other("it has no parent directory")));
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(parent)
        .map_err(dir_err(parent))?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let tmp = parent.join(format!(
        ".tmp-{}-{}-{nanos:x}",
        name.to_string_lossy(),
        std::process::id()
    ));
    fs::DirBuilder::new().mode(0o755).create(&tmp).map_err(dir_err(&tmp))?;
    if let Err(e) = rewrite_tree(cache_dir, target, &tmp) {
        let _ = fs::remove_dir_all(&tmp);
        return Err(GrpError::Layer {
            target: target.to_owned(),
            source: Box::new(e),
        });
    }
    if let Err(e) = fs::rename(&tmp, &dir) {
        let _ = fs::remove_dir_all(&tmp);
        // Another hook (or kcached) made it first.
        if !is_dir(&dir) {
            return Err(dir_err(&dir)(e));
        }
    }
    Ok(used(dir))
}

/// Calls `f` with the path (relative to the walk's start) and the bytes of every group file
/// under `dir`, in sorted order. Symlinks and other non-regular entries are skipped, never
/// followed.
fn walk_grp(dir: &Path, rel: &Path, f: &mut dyn FnMut(&Path, &[u8]) -> Result<()>) -> Result<()> {
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| GrpError::Io { path, source }
    };
    let mut entries = fs::read_dir(dir)
        .map_err(io_err(dir))?
        .collect::<io::Result<Vec<_>>>()
        .map_err(io_err(dir))?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let ft = e.file_type().map_err(io_err(&path))?;
        let rel_child = rel.join(e.file_name());
        if ft.is_dir() {
            walk_grp(&path, &rel_child, f)?;
            continue;
        }
        if !ft.is_file() || !e.file_name().to_str().is_some_and(is_grp_file) {
            continue;
        }
        if e.metadata().map_err(io_err(&path))?.len() > MAX_GRP_BYTES {
            return Err(GrpError::TooLarge(path));
        }
        let bytes = fs::read(&path).map_err(io_err(&path))?;
        f(&rel_child, &bytes)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRP: &str = r#"{"child_paths": {"add_kernel.ttir": "/root/.triton/cache/7CLRBQYZ4ZU6KQEBOGNPTWNT4HHLDPGUYOQXTRAEPSC5BQPWPUHA/add_kernel.ttir", "add_kernel.cubin": "/root/.triton/cache/7CLRBQYZ4ZU6KQEBOGNPTWNT4HHLDPGUYOQXTRAEPSC5BQPWPUHA/add_kernel.cubin", "add_kernel.json": "/root/.triton/cache/7CLRBQYZ4ZU6KQEBOGNPTWNT4HHLDPGUYOQXTRAEPSC5BQPWPUHA/add_kernel.json"}}"#;

    fn children(bytes: &[u8]) -> serde_json::Map<String, serde_json::Value> {
        let v: serde_json::Value = serde_json::from_slice(bytes).unwrap();
        v["child_paths"].as_object().unwrap().clone()
    }

    #[test]
    fn paths_under_the_build_root_move_to_the_target() {
        let out = rewrite_grp(GRP.as_bytes(), "/root/.triton/cache/", "/home/vllm/.triton/cache")
            .unwrap()
            .unwrap();
        let c = children(&out);
        assert_eq!(c.len(), 3);
        assert_eq!(
            c["add_kernel.json"],
            "/home/vllm/.triton/cache/7CLRBQYZ4ZU6KQEBOGNPTWNT4HHLDPGUYOQXTRAEPSC5BQPWPUHA/add_kernel.json"
        );
        assert!(c
            .values()
            .all(|p| p.as_str().unwrap().starts_with("/home/vllm/.triton/cache/7CLR")));
    }

    #[test]
    fn nothing_to_change_is_none() {
        let cases: Vec<(&str, &str, &str, &str)> = vec![
            ("same_root", GRP, "/root/.triton/cache", "/root/.triton/cache"),
            ("other_root", GRP, "/tmp/cache", "/mnt"),
            ("sibling_prefix_is_not_under_root", GRP, "/root/.triton/cach", "/mnt"),
            (
                "remote_cache_list_form",
                r#"{"child_paths": ["k.json", "k.cubin"]}"#,
                "/root",
                "/mnt",
            ),
            ("no_child_paths", r#"{"other": 1}"#, "/root", "/mnt"),
        ];
        for (name, json, build, target) in cases {
            assert_eq!(rewrite_grp(json.as_bytes(), build, target).unwrap(), None, "{name}");
        }
    }

    #[test]
    fn paths_outside_the_root_are_kept_and_escapes_are_refused() {
        let json = r#"{"child_paths": {"k.json": "/b/K/k.json", "libdevice.bc": "/usr/lib/libdevice.bc"}}"#;
        let c = children(&rewrite_grp(json.as_bytes(), "/b", "/t").unwrap().unwrap());
        assert_eq!(
            (c["k.json"].as_str(), c["libdevice.bc"].as_str()),
            (Some("/t/K/k.json"), Some("/usr/lib/libdevice.bc"))
        );

        let evil = r#"{"child_paths": {"k.json": "/b/K/../../etc/shadow"}}"#;
        let err = rewrite_grp(evil.as_bytes(), "/b", "/t").unwrap_err();
        assert!(matches!(err, GrpError::Escape { .. }), "{err}");
        assert!(err.to_string().contains("k.json"), "{err}");

        for (build, target) in [("relative", "/t"), ("/b", "t"), ("/b/../c", "/t"), ("/b", "/t/..")] {
            assert!(
                matches!(rewrite_grp(GRP.as_bytes(), build, target), Err(GrpError::Root { .. })),
                "{build} {target}"
            );
        }
        assert!(matches!(rewrite_grp(b"{", "/b", "/t"), Err(GrpError::Json(_))));
    }

    #[test]
    fn rewrite_tree_writes_only_changed_group_files_mirroring_paths() {
        let cache = tempfile::tempdir().unwrap();
        let root = cache.path().to_str().unwrap().to_string();
        crate::cache::triton::fixtures::write_cache(cache.path());
        // A vLLM-style nested cache, and a symlink that must not be followed.
        let nested = cache
            .path()
            .join("torch_compile_cache/d4ec7c2a7d/rank_0_0/triton_cache/HMTT");
        fs::create_dir_all(&nested).unwrap();
        fs::write(
            nested.join("__grp__k.json"),
            r#"{"child_paths": {"k.json": "/elsewhere/k.json"}}"#,
        )
        .unwrap();
        std::os::unix::fs::symlink("/etc", cache.path().join("__grp__link.json")).unwrap();

        let out = tempfile::tempdir().unwrap();
        let done = rewrite_tree(cache.path(), "/home/user/.triton/cache", out.path()).unwrap();
        assert_eq!(done.files, 3);
        assert_eq!(done.root.unwrap().root, root);
        let key = crate::cache::triton::fixtures::KEY_MI300;
        let written = fs::read(out.path().join(key).join("__grp__add_kernel.json")).unwrap();
        let c = children(&written);
        assert_eq!(
            c["add_kernel.hsaco"],
            format!("/home/user/.triton/cache/{key}/add_kernel.hsaco")
        );
        assert!(!out.path().join("torch_compile_cache").exists());
        assert!(!out.path().join("__grp__link.json").exists());
    }

    proptest::proptest! {
        /// Any child under the build root lands at the same relative path under the target;
        /// any `..` component under the build root is refused.
        #[test]
        fn rewriting_keeps_the_relative_path_or_refuses_dot_dot(
            build in "(/[a-z._]{1,8}){1,4}",
            target in "(/[a-z._]{1,8}){1,4}",
            rel in proptest::collection::vec(proptest::prop_oneof![3 => "[A-Za-z0-9_.]{1,12}", 1 => proptest::strategy::Just("..".to_string())], 1..5),
        ) {
            proptest::prop_assume!(!build.split('/').any(|c| c == "..") && !target.split('/').any(|c| c == ".."));
            let rel = rel.join("/");
            let json = serde_json::json!({"child_paths": {"k.json": format!("{build}/{rel}")}}).to_string();
            let res = rewrite_grp(json.as_bytes(), &build, &target);
            if rel.split('/').any(|c| c == "..") {
                let escaped = matches!(res, Err(GrpError::Escape { .. }));
                proptest::prop_assert!(escaped, "{:?}", res);
            } else {
                let out = res.unwrap();
                let got = out.map(|b| children(&b)["k.json"].as_str().unwrap().to_string());
                let want = format!("{target}/{rel}");
                proptest::prop_assert_eq!(got.unwrap_or_else(|| format!("{build}/{rel}")), want);
            }
        }
    }

    #[test]
    fn a_bad_group_file_in_the_tree_is_named() {
        let cache = tempfile::tempdir().unwrap();
        fs::create_dir_all(cache.path().join("K")).unwrap();
        fs::write(
            cache.path().join("K/__grp__k.json"),
            r#"{"child_paths": {"k.json": "/b/K/k.json", "k.cubin": "/b/../x"}}"#,
        )
        .unwrap();
        let out = tempfile::tempdir().unwrap();
        let err = rewrite_tree(cache.path(), "/t", out.path()).unwrap_err();
        assert!(err.to_string().contains("__grp__k.json"), "{err}");
        assert!(matches!(&err, GrpError::File { source, .. } if matches!(**source, GrpError::Escape { .. })));

        fs::write(cache.path().join("K/__grp__k.json"), "{").unwrap();
        let err = infer_root(cache.path()).unwrap_err();
        assert!(err.to_string().contains("__grp__k.json"), "{err}");
    }

    #[test]
    fn a_child_path_names_its_root_only_in_tritons_shape() {
        let cases: &[(&str, &str, Option<&str>)] = &[
            ("/root/.triton/cache/K/k.json", "K", Some("/root/.triton/cache")),
            ("/K/k.json", "K", Some("/")),
            (
                "/v/torch_compile_cache/h/rank_0_0/triton_cache/K/k.json",
                "torch_compile_cache/h/rank_0_0/triton_cache/K",
                Some("/v"),
            ),
            ("/r/k.json", "", Some("/r")),
            ("/r/OTHER/k.json", "K", None),
            ("/r/xK/k.json", "K", None),
            ("/r/K/", "K", None),
            ("r/K/k.json", "K", None),
            ("/r/../s/K/k.json", "K", None),
            ("/usr/lib/libdevice.bc", "K", None),
        ];
        for (path, dir, want) in cases {
            assert_eq!(child_root(path, dir).as_deref(), *want, "{path} in {dir}");
        }
        assert_eq!(
            grp_roots(br#"{"child_paths": ["k.json"]}"#, "K").unwrap(),
            Vec::<String>::new()
        );
    }

    /// A cache Triton wrote under /root/.triton/cache, copied to some other dir: the paths in
    /// its group files still name Triton's dir, and that is the root the rewrite uses.
    #[test]
    fn a_copied_cache_is_rewritten_from_the_root_its_group_files_name() {
        let orig = tempfile::tempdir().unwrap();
        crate::cache::triton::fixtures::write_cache(orig.path());
        let orig_root = orig.path().to_str().unwrap().to_string();
        let copy = tempfile::tempdir().unwrap();
        crate::cache::triton::fixtures::copy_tree(orig.path(), copy.path());
        drop(orig);

        let inferred = infer_root(copy.path()).unwrap().unwrap();
        assert_eq!(inferred.root, orig_root);
        assert_eq!(
            inferred.file,
            format!("{}/__grp__add_kernel.json", crate::cache::triton::fixtures::KEY_A100)
        );

        let out = tempfile::tempdir().unwrap();
        let done = rewrite_tree(copy.path(), "/home/u/.triton/cache", out.path()).unwrap();
        assert_eq!(done.files, 3);
        let key = crate::cache::triton::fixtures::KEY_H100;
        let c = children(&fs::read(out.path().join(key).join("__grp__matmul_kernel.json")).unwrap());
        assert_eq!(c.len(), 6);
        for (file, path) in &c {
            assert_eq!(path.as_str().unwrap(), format!("/home/u/.triton/cache/{key}/{file}"));
        }

        // Mounted where Triton wrote it: nothing to rewrite, root still reported.
        let out = tempfile::tempdir().unwrap();
        let done = rewrite_tree(copy.path(), &format!("{orig_root}/"), out.path()).unwrap();
        assert_eq!((done.files, done.root.map(|r| r.root)), (0, Some(orig_root)));
        assert!(fs::read_dir(out.path()).unwrap().next().is_none());
    }

    #[test]
    fn group_files_that_disagree_on_the_root_are_refused_with_both_named() {
        let cache = tempfile::tempdir().unwrap();
        for (key, root) in [("A", "/root/.triton/cache"), ("B", "/home/u/.triton/cache")] {
            fs::create_dir_all(cache.path().join(key)).unwrap();
            let grp = serde_json::json!({"child_paths": {"k.json": format!("{root}/{key}/k.json")}});
            fs::write(cache.path().join(key).join("__grp__k.json"), grp.to_string()).unwrap();
        }
        let err = infer_root(cache.path()).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, GrpError::Inconsistent { .. }), "{msg}");
        for part in [
            "A/__grp__k.json",
            "/root/.triton/cache",
            "B/__grp__k.json",
            "/home/u/.triton/cache",
        ] {
            assert!(msg.contains(part), "{part}: {msg}");
        }
        let out = tempfile::tempdir().unwrap();
        assert!(matches!(
            rewrite_tree(cache.path(), "/t", out.path()),
            Err(GrpError::Inconsistent { .. })
        ));
        assert!(fs::read_dir(out.path()).unwrap().next().is_none());

        // Children of one file that disagree are refused too.
        let one = tempfile::tempdir().unwrap();
        fs::create_dir_all(one.path().join("K")).unwrap();
        fs::write(
            one.path().join("K/__grp__k.json"),
            r#"{"child_paths": {"k.json": "/a/K/k.json", "k.cubin": "/b/K/k.cubin"}}"#,
        )
        .unwrap();
        assert!(matches!(infer_root(one.path()), Err(GrpError::Inconsistent { .. })));
    }

    #[test]
    fn a_vllm_cache_root_is_inferred_through_its_nested_triton_caches() {
        let cache = tempfile::tempdir().unwrap();
        let rel = "torch_compile_cache/d4ec7c2a7d/rank_0_0/triton_cache/HMTT";
        fs::create_dir_all(cache.path().join(rel)).unwrap();
        let grp = serde_json::json!({"child_paths": {"k.json": format!("/root/.cache/vllm/{rel}/k.json")}});
        fs::write(cache.path().join(rel).join("__grp__k.json"), grp.to_string()).unwrap();
        assert_eq!(infer_root(cache.path()).unwrap().unwrap().root, "/root/.cache/vllm");
        let out = tempfile::tempdir().unwrap();
        assert_eq!(rewrite_tree(cache.path(), "/models/vllm", out.path()).unwrap().files, 1);
        let c = children(&fs::read(out.path().join(rel).join("__grp__k.json")).unwrap());
        assert_eq!(c["k.json"], format!("/models/vllm/{rel}/k.json"));

        // No group file with Triton's shape: nothing to infer, nothing written.
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(infer_root(empty.path()).unwrap(), None);
        assert_eq!(
            rewrite_tree(empty.path(), "/t", out.path()).unwrap(),
            Rewritten { root: None, files: 0 }
        );
    }
}

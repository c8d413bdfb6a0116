//! Relocating Triton's `__grp__<name>.json` files.
//!
//! Triton's `FileCacheManager.get_group` (python/triton/runtime/cache.py) reads
//! `{"child_paths": {"<file>": "<absolute path>"}}` and drops every child whose path does not
//! exist; without the metadata child the lookup misses and the kernel is compiled again. A cache
//! built under `/root/.triton/cache` and mounted at `/home/user/.triton/cache` therefore only hits
//! once the paths are rewritten for the mount path. kcache writes the rewritten files into a
//! small directory, used as an extra overlay lower layer above the read-only cache.
//!
//! Paths under the build root are moved to the target root; other paths are left as they are
//! (they point outside the cache, and Triton treats them as it would have). A path under the
//! build root with a `..` component is refused: after rewriting it could name anything.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

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

/// Rewrites every group file under `cache_dir` (the directory that was `build_root` at build
/// time), writing the changed ones into `out_dir` at the same relative path. Symlinks and other
/// non-regular entries are skipped, never followed. Returns how many files were written.
pub fn rewrite_tree(cache_dir: &Path, build_root: &str, target_root: &str, out_dir: &Path) -> Result<usize> {
    normalize_root("build", build_root)?;
    normalize_root("target", target_root)?;
    let mut n = 0;
    rewrite_dir(cache_dir, Path::new(""), build_root, target_root, out_dir, &mut n)?;
    Ok(n)
}

fn rewrite_dir(dir: &Path, rel: &Path, build: &str, target: &str, out: &Path, n: &mut usize) -> Result<()> {
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
            rewrite_dir(&path, &rel_child, build, target, out, n)?;
            continue;
        }
        if !ft.is_file() || !e.file_name().to_str().is_some_and(is_grp_file) {
            continue;
        }
        if e.metadata().map_err(io_err(&path))?.len() > MAX_GRP_BYTES {
            return Err(GrpError::TooLarge(path));
        }
        let bytes = fs::read(&path).map_err(io_err(&path))?;
        let rewritten = rewrite_grp(&bytes, build, target).map_err(|source| GrpError::File {
            path: path.clone(),
            source: Box::new(source),
        })?;
        if let Some(new) = rewritten {
            let dest = out.join(&rel_child);
            if let Some(parent) = dest.parent() {
                fs::create_dir_all(parent).map_err(io_err(parent))?;
            }
            fs::write(&dest, new).map_err(io_err(&dest))?;
            *n += 1;
        }
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
        let n = rewrite_tree(cache.path(), &root, "/home/user/.triton/cache", out.path()).unwrap();
        assert_eq!(n, 3);
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
            r#"{"child_paths": {"k.json": "/b/../x"}}"#,
        )
        .unwrap();
        let out = tempfile::tempdir().unwrap();
        let err = rewrite_tree(cache.path(), "/b", "/t", out.path()).unwrap_err();
        assert!(err.to_string().contains("__grp__k.json"), "{err}");
    }
}

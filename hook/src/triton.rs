//! The container's Triton version, against the one a cache was built with.
//!
//! Triton's cache key (`triton_key()`, python/triton/compiler/compiler.py) starts with its
//! `__version__`, so a container whose Triton differs from the cache's looks every kernel up
//! under another key and misses them all. Triton 3.x records the version in each kernel's
//! metadata (`"triton_version"`), `kcache cache build` puts it in a label, and kcached in the
//! entry's record; here the hook finds the container's own.
//!
//! It reads `triton/__init__.py` (`__version__ = '3.1.0'`) where Python would import it from:
//! the venv in the container's `VIRTUAL_ENV`, then `/usr/local/lib/python3.*/{site,dist}-packages`,
//! `/usr/lib/python3/dist-packages`, `/usr/lib{,64}/python3.*/site-packages` and
//! `/opt/conda/lib/python3.*/site-packages`. Every path is opened relative to the rootfs fd with
//! `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`: symlinks in the image resolve as if the
//! rootfs were `/` and `..` cannot climb out of it, the same rule as the target walk in
//! [`crate::mount`], enforced by the kernel (nothing is created here, so no walk of our own is
//! needed). Only regular files are opened (a FIFO or device node is never opened: it could hang
//! the hook or do something), and at most [`MAX_INIT_BYTES`] of each is read.
//!
//! A Triton in `VIRTUAL_ENV` decides (that venv's Python imports it first). Otherwise any Triton
//! found with the cache's version is enough: which Python the workload runs cannot be known, so
//! the cache is refused only when every Triton found differs. None found: not checked (logged).

use std::os::fd::{AsFd, OwnedFd};

use rustix::{
    fs::{openat2, AtFlags, Dir, FileType, Mode, OFlags, ResolveFlags},
    io::Errno,
};

use crate::oci::env_get;

/// Most bytes of an `__init__.py` read (Triton's is about 2 KiB; `__version__` is near the top).
pub const MAX_INIT_BYTES: usize = 64 << 10;
/// Most `python3.*` entries looked at per directory.
const MAX_PYTHONS: usize = 16;
/// Most directory entries read while looking for them.
const MAX_DIR_ENTRIES: usize = 4096;

/// Where a site-packages dir may be, relative to the rootfs: `{base}/{python3.*}/{rest}` when
/// `glob`, else `{base}/{rest}`.
const SYSTEM_DIRS: [(&str, bool, &str); 6] = [
    ("usr/local/lib", true, "site-packages"),
    ("usr/local/lib", true, "dist-packages"),
    ("usr/lib/python3", false, "dist-packages"),
    ("usr/lib", true, "site-packages"),
    ("usr/lib64", true, "site-packages"),
    ("opt/conda/lib", true, "site-packages"),
];

/// A Triton found in the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Its `__version__`.
    pub version: String,
    /// The package dir, as the container sees it (`/usr/local/lib/python3.11/site-packages/triton`).
    pub path: String,
    /// Found in `VIRTUAL_ENV`.
    pub venv: bool,
}

/// The `__version__` a module's source assigns as a string literal; `None` when it is computed
/// or absent. Only characters a version can have are accepted (PEP 440 plus local labels).
pub fn parse_version(source: &str) -> Option<String> {
    for line in source.lines() {
        let Some(rest) = line.trim_start().strip_prefix("__version__") else {
            continue;
        };
        let rest = rest.trim_start();
        let rest = match rest.strip_prefix(':') {
            // `__version__: str = '...'`
            Some(annotated) => annotated.split_once('=').map(|(_, v)| v)?,
            None => match rest.strip_prefix('=') {
                Some(v) if !v.starts_with('=') => v,
                _ => continue,
            },
        };
        let rest = rest.trim_start();
        let quote = rest.chars().next().filter(|q| *q == '\'' || *q == '"')?;
        let body = &rest[1..];
        let v = &body[..body.find(quote)?];
        let ok =
            !v.is_empty() && v.len() <= 64 && v.bytes().all(|b| b.is_ascii_alphanumeric() || b"._+-!".contains(&b));
        return ok.then(|| v.to_string());
    }
    None
}

/// Opens `path` (relative, `/`-separated) under `dir` with `how`; EAGAIN (a rename or mount
/// raced with the lookup, and the kernel asks for a retry) is retried a few times.
fn open_how(dir: &OwnedFd, path: &str, flags: OFlags, how: ResolveFlags) -> Result<OwnedFd, Errno> {
    let mut tries = 0;
    loop {
        match openat2(dir, path, flags | OFlags::CLOEXEC, Mode::empty(), how) {
            Err(Errno::AGAIN) if tries < 3 => tries += 1,
            r => return r,
        }
    }
}

/// Opens `path` (relative, `/`-separated) under `root` as if `root` were `/`.
fn open_in_root(root: &OwnedFd, path: &str, flags: OFlags) -> Result<OwnedFd, Errno> {
    open_how(root, path, flags, ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS)
}

/// The names of `python3.*` entries of `dir` (under `root`), sorted; none when it is missing.
fn pythons(root: &OwnedFd, dir: &str) -> Vec<String> {
    let Ok(fd) = open_in_root(root, dir, OFlags::RDONLY | OFlags::DIRECTORY) else {
        return vec![];
    };
    let Ok(entries) = Dir::new(fd) else { return vec![] };
    let mut out: Vec<String> = entries
        .take(MAX_DIR_ENTRIES)
        .filter_map(Result::ok)
        .filter(|e| {
            matches!(
                e.file_type(),
                FileType::Directory | FileType::Symlink | FileType::Unknown
            )
        })
        .filter_map(|e| e.file_name().to_str().ok().map(String::from))
        .filter(|n| {
            n.strip_prefix("python3.")
                .is_some_and(|v| !v.is_empty() && v.len() <= 8 && v.bytes().all(|b| b.is_ascii_alphanumeric()))
        })
        .collect();
    out.sort();
    out.truncate(MAX_PYTHONS);
    out
}

/// Reads `<pkgs>/triton/__init__.py` under `root`: its version, when it is a regular file
/// with a literal one. The file is looked at before it is opened (opening a device node can do
/// things; a symlink there is not followed), then opened with no symlink allowed and non-blocking.
fn read_init(root: &OwnedFd, pkgs: &str) -> Option<String> {
    let dir = open_in_root(root, &format!("{pkgs}/triton"), OFlags::PATH | OFlags::DIRECTORY).ok()?;
    let regular = |mode| FileType::from_raw_mode(mode) == FileType::RegularFile;
    if !regular(
        rustix::fs::statat(&dir, "__init__.py", AtFlags::SYMLINK_NOFOLLOW)
            .ok()?
            .st_mode,
    ) {
        return None;
    }
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NOCTTY | OFlags::NONBLOCK;
    let how = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
    let fd = open_how(&dir, "__init__.py", flags, how).ok()?;
    if !regular(rustix::fs::fstat(&fd).ok()?.st_mode) {
        return None;
    }
    let mut buf = vec![0u8; MAX_INIT_BYTES];
    let mut len = 0;
    while len < buf.len() {
        match rustix::io::read(fd.as_fd(), &mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(Errno::INTR) => continue,
            Err(_) => return None,
        }
    }
    parse_version(&String::from_utf8_lossy(&buf[..len]))
}

/// The site-packages dirs to look in, relative to the rootfs, with whether each is the venv's.
fn package_dirs(root: &OwnedFd, env: &[String]) -> Vec<(String, bool)> {
    let mut dirs = Vec::new();
    let venv = env_get(env, "VIRTUAL_ENV")
        .map(|v| v.trim_matches('/'))
        .filter(|v| !v.is_empty() && v.len() <= 4096 && !v.contains('\0'));
    if let Some(venv) = venv {
        let lib = format!("{venv}/lib");
        for py in pythons(root, &lib) {
            dirs.push((format!("{lib}/{py}/site-packages"), true));
        }
    }
    for (base, glob, rest) in SYSTEM_DIRS {
        if glob {
            for py in pythons(root, base) {
                dirs.push((format!("{base}/{py}/{rest}"), false));
            }
        } else {
            dirs.push((format!("{base}/{rest}"), false));
        }
    }
    dirs
}

/// Every Triton found in the container whose rootfs is `root`, venv first.
pub fn find(root: &OwnedFd, env: &[String]) -> Vec<Found> {
    package_dirs(root, env)
        .into_iter()
        .filter_map(|(pkgs, venv)| {
            read_init(root, &pkgs).map(|version| Found {
                version,
                path: format!("/{pkgs}/triton"),
                venv,
            })
        })
        .collect()
}

/// How the container's Triton compares with the cache's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checked {
    /// A Triton with the cache's version (the deciding one).
    Same(Found),
    /// No Triton found: not checked.
    NotFound,
}

/// Every Triton the container would import differs from the one the cache was built with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "cache {cache:?} was built with Triton {built_with}, the container has Triton {found}: every kernel would miss"
)]
pub struct Mismatch {
    /// The cache's name.
    pub cache: String,
    /// The version the cache records.
    pub built_with: String,
    /// The deciding Tritons found, as `version (path)`, comma-separated.
    pub found: String,
}

/// Compares the version `built_with` of cache `name` with what [`find`] found. `Err` is the
/// reason the cache is of no use to the container.
pub fn compare(name: &str, built_with: &str, found: &[Found]) -> Result<Checked, Mismatch> {
    let deciding: Vec<&Found> = match found.iter().filter(|f| f.venv).collect::<Vec<_>>() {
        venv if !venv.is_empty() => venv,
        _ => found.iter().collect(),
    };
    if deciding.is_empty() {
        return Ok(Checked::NotFound);
    }
    if let Some(same) = deciding.iter().find(|f| f.version == built_with) {
        return Ok(Checked::Same((*same).clone()));
    }
    let found = deciding
        .iter()
        .map(|f| format!("{} ({})", f.version, f.path))
        .collect::<Vec<_>>()
        .join(", ");
    Err(Mismatch {
        cache: name.to_string(),
        built_with: built_with.to_string(),
        found,
    })
}

#[cfg(test)]
mod tests {
    use std::{fs, os::unix::fs::symlink, path::Path};

    use super::*;

    #[test]
    fn versions_are_read_from_literal_assignments_only() {
        let cases: &[(&str, Option<&str>)] = &[
            ("__version__ = '3.1.0'\n", Some("3.1.0")),
            (
                "\"\"\"isort:skip_file\"\"\"\n__version__ = '3.3.1'\n\n# ---\nfrom .runtime import",
                Some("3.3.1"),
            ),
            (
                "__version__ = \"3.2.0+git4ce833eb\"  # comment",
                Some("3.2.0+git4ce833eb"),
            ),
            ("__version__: str = '3.0.0'", Some("3.0.0")),
            ("__version__='2.3.1'", Some("2.3.1")),
            (
                "__all__ = []\n__version_tuple__ = (3, 1)\n__version__ = '3.1.0'",
                Some("3.1.0"),
            ),
            ("__version__ == '3.1.0'", None),
            ("__version__ = version('triton')", None),
            ("__version__ = ''", None),
            ("__version__ = '3.1.0; rm -rf /'", None),
            ("__version__ = '3.1.0", None),
            ("import os\n", None),
            ("", None),
        ];
        for (src, want) in cases {
            assert_eq!(parse_version(src).as_deref(), *want, "{src:?}");
        }
    }

    fn put(root: &Path, pkgs: &str, version: &str) {
        let dir = root.join(pkgs).join("triton");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("__init__.py"), format!("__version__ = '{version}'\n")).unwrap();
    }

    fn open(p: &Path) -> OwnedFd {
        rustix::fs::open(p, OFlags::PATH | OFlags::DIRECTORY, Mode::empty()).unwrap()
    }

    fn env(vars: &[&str]) -> Vec<String> {
        vars.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_search_covers_the_usual_places_venv_first() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("rootfs");
        put(&root, "usr/local/lib/python3.11/site-packages", "3.0.0");
        put(&root, "usr/local/lib/python3.12/dist-packages", "3.1.0");
        put(&root, "usr/lib/python3/dist-packages", "2.3.1");
        put(&root, "usr/lib64/python3.9/site-packages", "3.2.0");
        put(&root, "opt/conda/lib/python3.10/site-packages", "3.3.1");
        put(&root, "opt/venv/lib/python3.12/site-packages", "3.4.0");
        // Not Pythons, or not where Python looks.
        put(&root, "usr/local/lib/python2.7/site-packages", "1.0.0");
        put(&root, "usr/local/lib/python3.x-y/site-packages", "1.0.1");
        put(&root, "srv/site-packages", "1.0.2");
        let found = find(&open(&root), &env(&["VIRTUAL_ENV=/opt/venv/", "HOME=/root"]));
        let got: Vec<(&str, &str, bool)> = found
            .iter()
            .map(|f| (f.version.as_str(), f.path.as_str(), f.venv))
            .collect();
        assert_eq!(
            got,
            [
                ("3.4.0", "/opt/venv/lib/python3.12/site-packages/triton", true),
                ("3.0.0", "/usr/local/lib/python3.11/site-packages/triton", false),
                ("3.1.0", "/usr/local/lib/python3.12/dist-packages/triton", false),
                ("2.3.1", "/usr/lib/python3/dist-packages/triton", false),
                ("3.2.0", "/usr/lib64/python3.9/site-packages/triton", false),
                ("3.3.1", "/opt/conda/lib/python3.10/site-packages/triton", false),
            ]
        );
        assert!(find(&open(&root), &env(&[])).iter().all(|f| !f.venv));
        // No Python at all.
        assert_eq!(find(&open(&root.join("srv")), &env(&["VIRTUAL_ENV=/opt/venv"])), []);
    }

    /// Links in the image resolve inside the rootfs: a Triton outside it is never read, and one
    /// reached through a link that stays inside is.
    #[test]
    fn links_never_leave_the_rootfs() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("rootfs");
        let outside = tmp.path().join("outside");
        let pkgs = outside.join("lib/python3.12/site-packages");
        put(&outside, "lib/python3.12/site-packages", "9.9.9");
        fs::create_dir_all(root.join("usr/local/lib/python3.11")).unwrap();
        // An absolute link to the host's dir, and `..` climbing out.
        symlink(&pkgs, root.join("usr/local/lib/python3.11/site-packages")).unwrap();
        fs::create_dir_all(root.join("usr/lib/python3")).unwrap();
        symlink(
            "../../../../../../outside/lib/python3.12/site-packages",
            root.join("usr/lib/python3/dist-packages"),
        )
        .unwrap();
        // A venv that is the host's dir, or climbs out to it.
        for venv in [
            format!("VIRTUAL_ENV={}", outside.display()),
            format!("VIRTUAL_ENV=/../../../../{}", outside.display()),
            "VIRTUAL_ENV=../outside".to_string(),
        ] {
            assert_eq!(find(&open(&root), &env(&[&venv])), [], "{venv}");
        }

        // A link to a path inside the rootfs is followed there, and a FIFO is not read.
        put(&root, "opt/real", "3.1.0");
        fs::create_dir_all(root.join("opt/conda/lib/python3.10")).unwrap();
        symlink("/opt/real", root.join("opt/conda/lib/python3.10/site-packages")).unwrap();
        fs::create_dir_all(root.join("usr/lib64/python3.9/site-packages/triton")).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            root.join("usr/lib64/python3.9/site-packages/triton/__init__.py"),
            FileType::Fifo,
            Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        // An `__init__.py` that is itself a link is not followed, even to a file in the rootfs.
        fs::create_dir_all(root.join("usr/local/lib/python3.12/dist-packages/triton")).unwrap();
        symlink(
            "/opt/real/triton/__init__.py",
            root.join("usr/local/lib/python3.12/dist-packages/triton/__init__.py"),
        )
        .unwrap();
        let found = find(&open(&root), &[]);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(
            (found[0].version.as_str(), found[0].path.as_str()),
            ("3.1.0", "/opt/conda/lib/python3.10/site-packages/triton")
        );
    }

    #[test]
    fn a_big_init_is_read_only_up_to_the_limit() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("rootfs");
        let dir = root.join("usr/lib/python3/dist-packages/triton");
        fs::create_dir_all(&dir).unwrap();
        let mut src = "#\n".repeat(MAX_INIT_BYTES / 2);
        src.push_str("__version__ = '3.1.0'\n");
        fs::write(dir.join("__init__.py"), &src).unwrap();
        assert_eq!(find(&open(&root), &[]), []);
    }

    fn found(version: &str, path: &str, venv: bool) -> Found {
        Found {
            version: version.into(),
            path: path.into(),
            venv,
        }
    }

    #[test]
    fn compare_refuses_only_when_the_deciding_tritons_all_differ() {
        let sys_old = found("3.0.0", "/usr/local/lib/python3.11/site-packages/triton", false);
        let sys_new = found("3.1.0", "/usr/lib/python3/dist-packages/triton", false);
        let venv_old = found("3.0.0", "/opt/venv/lib/python3.12/site-packages/triton", true);
        assert_eq!(compare("llama", "3.1.0", &[]), Ok(Checked::NotFound));
        assert_eq!(
            compare("llama", "3.1.0", &[sys_old.clone(), sys_new.clone()]),
            Ok(Checked::Same(sys_new.clone()))
        );
        assert_eq!(
            compare("llama", "3.1.0", std::slice::from_ref(&sys_old))
                .unwrap_err()
                .to_string(),
            "cache \"llama\" was built with Triton 3.1.0, the container has Triton 3.0.0 \
             (/usr/local/lib/python3.11/site-packages/triton): every kernel would miss"
        );
        // The venv's Triton is the one its Python imports.
        let err = compare("llama", "3.1.0", &[venv_old, sys_new]).unwrap_err().to_string();
        assert!(
            err.contains("Triton 3.0.0 (/opt/venv/lib/python3.12/site-packages/triton): every"),
            "{err}"
        );
    }
}

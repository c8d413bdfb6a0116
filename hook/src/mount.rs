//! The mount itself: into the container's mount namespace, find the target inside the rootfs
//! without ever leaving it, and put the overlay there.
//!
//! When runc runs prestart (and createRuntime) hooks, its init process has made the container's
//! mount namespace (`/` rslave), bind-mounted the rootfs onto itself and done the spec's mounts,
//! but has not pivoted yet (libcontainer `prepareRootfs`: `syncParentHooks` comes before
//! `pivot_root`). So in that namespace the rootfs is still at its host path, and the host's
//! `/var/lib/kcache` and `/run/kcache` are there too (copies of the host's mounts). The hook:
//!
//! 1. opens `/proc/<pid>/ns/mnt` and refuses the host's own namespace;
//! 2. `setns` (a single-threaded process: setns into a mount namespace fails otherwise);
//! 3. opens the rootfs path with `RESOLVE_NO_SYMLINKS` (runc itself refuses a rootfs path with a
//!    symlink in it) and checks it is a mount root (runc's bind mount), so a rootfs swapped for a
//!    symlink or a plain directory is refused;
//! 4. walks the target one component at a time with `openat2(rootfs, prefix,
//!    RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`: a symlink in the image resolves inside the
//!    rootfs, `..` cannot climb out, and missing components are made with `mkdirat` on the
//!    resolved parent (which never follows a link);
//! 5. builds the overlay with fsopen/fsconfig/fsmount and attaches it with `move_mount` onto the
//!    resolved fd: no path is looked up again between the check and the mount.
//!
//! The hook never chdirs into the rootfs and never executes anything.

use std::{
    collections::VecDeque,
    os::fd::{AsFd, OwnedFd},
    path::{Path, PathBuf},
};

use rustix::{
    fs::{openat2, statx, AtFlags, Mode, OFlags, ResolveFlags, StatxAttributes, StatxFlags, CWD},
    io::Errno,
    mount::{
        fsconfig_create, fsconfig_set_flag, fsconfig_set_string, fsmount, fsopen, move_mount, FsMountFlags,
        FsOpenFlags, MountAttrFlags, MoveMountFlags,
    },
    thread::{move_into_link_name_space, LinkNameSpaceType},
};

use crate::target::Target;

/// A mount step failed; the message names the step and the path.
#[derive(Debug, thiserror::Error)]
#[error("{step}: {detail}")]
pub struct MountError {
    /// What was being done.
    pub step: String,
    /// Why it failed.
    pub detail: String,
    /// The kernel's error, when a system call failed (None: kcache refused on its own).
    pub errno: Option<Errno>,
}

fn fail(step: impl Into<String>) -> impl FnOnce(Errno) -> MountError {
    let step = step.into();
    move |e| MountError {
        step,
        detail: std::io::Error::from(e).to_string(),
        errno: Some(e),
    }
}

/// Filesystems a cache never goes onto (and that a symlink in the image could point at).
const KERNEL_FS: [(u64, &str); 7] = [
    (0x9fa0, "proc"),
    (0x6265_6572, "sysfs"),
    (0x1cd1, "devpts"),
    (0x0027_e0eb, "cgroup"),
    (0x6367_7270, "cgroup2"),
    (0x7363_6673, "securityfs"),
    (0x6462_6720, "debugfs"),
];

/// Moves this process into the mount namespace of `pid`. Refuses the namespace the hook is
/// already in (a container without a mount namespace of its own: mounting there would change
/// the host).
pub fn enter_namespace(pid: i32) -> Result<(), MountError> {
    let path = format!("/proc/{pid}/ns/mnt");
    let ns = rustix::fs::open(&path, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
        .map_err(fail(format!("open {path}")))?;
    let theirs = rustix::fs::fstat(&ns).map_err(fail(format!("stat {path}")))?;
    let ours = rustix::fs::stat("/proc/self/ns/mnt").map_err(fail("stat /proc/self/ns/mnt"))?;
    if (theirs.st_dev, theirs.st_ino) == (ours.st_dev, ours.st_ino) {
        return Err(MountError {
            errno: None,
            step: format!("enter {path}"),
            detail: "the container shares the hook's mount namespace".into(),
        });
    }
    move_into_link_name_space(ns.as_fd(), Some(LinkNameSpaceType::Mount))
        .map_err(fail(format!("setns {path} (the hook must be single-threaded)")))
}

/// Opens the rootfs (in the container's namespace): no symlink anywhere on the path, and it
/// must be a mount root.
pub fn open_rootfs(rootfs: &Path) -> Result<OwnedFd, MountError> {
    let step = format!("open rootfs {}", rootfs.display());
    let fd = openat2(
        CWD,
        rootfs,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
    )
    .map_err(fail(&step))?;
    let st = statx(&fd, "", AtFlags::EMPTY_PATH, StatxFlags::BASIC_STATS).map_err(fail(&step))?;
    if !st.stx_attributes_mask.contains(StatxAttributes::MOUNT_ROOT) {
        return Err(MountError {
            errno: None,
            step,
            detail: "the kernel cannot tell whether it is a mount root (statx needs Linux 5.8)".into(),
        });
    }
    if !st.stx_attributes.contains(StatxAttributes::MOUNT_ROOT) {
        return Err(MountError {
            errno: None,
            step,
            detail: "not a mount point in the container's namespace (the rootfs was swapped?)".into(),
        });
    }
    Ok(fd)
}

/// Most symlinks followed while resolving a target (Linux's own limit).
const MAX_LINKS: usize = 40;

/// Resolves `target` under `root` as if `root` were `/`, creating missing directories (owned by
/// `owner`, the container user on the host), and returns an `O_PATH` fd of the target directory.
///
/// One component at a time, each opened with `O_NOFOLLOW` relative to the directory resolved so
/// far: a symlink is read and its target walked in turn (an absolute one from `root`), `..` pops
/// back to the parent the walk came from and never above `root`. This is what
/// `openat2(RESOLVE_IN_ROOT)` does, plus creating what is missing (which `openat2` cannot), so a
/// dangling link in the image is created inside the rootfs, never outside.
pub fn resolve_target(root: &OwnedFd, target: &Target, owner: (u32, u32)) -> Result<OwnedFd, MountError> {
    let step = || format!("resolve {} in the rootfs", target.path);
    let open = |dir: &OwnedFd, name: &str| {
        rustix::fs::openat(
            dir,
            name,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
    };
    let root_again = openat2(
        root,
        ".",
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::BENEATH,
    )
    .map_err(fail(step()))?;
    let mut stack: Vec<OwnedFd> = vec![root_again];
    let mut todo: VecDeque<String> = target.components().map(String::from).collect();
    let mut links = 0;
    let mut created = 0;
    while let Some(name) = todo.pop_front() {
        match name.as_str() {
            "" | "." => continue,
            ".." => {
                if stack.len() > 1 {
                    stack.pop();
                }
                continue;
            }
            _ => {}
        }
        let cur = stack.last().ok_or_else(|| MountError {
            errno: None,
            step: step(),
            detail: "empty walk".into(),
        })?;
        let fd = match open(cur, &name) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => {
                created += 1;
                if created > 4096 {
                    return Err(MountError {
                        errno: None,
                        step: step(),
                        detail: "too many directories to create".into(),
                    });
                }
                match rustix::fs::mkdirat(cur, name.as_str(), Mode::from_raw_mode(0o755)) {
                    // EEXIST: something appeared meanwhile; look at it again.
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(e) => return Err(fail(format!("create {name:?} for {}", target.path))(e)),
                }
                let fd = open(cur, &name).map_err(fail(step()))?;
                if rustix::fs::fstat(&fd).map_err(fail(step()))?.st_mode & 0o170000 == 0o040000 {
                    rustix::fs::chownat(
                        &fd,
                        "",
                        Some(rustix::fs::Uid::from_raw(owner.0)),
                        Some(rustix::fs::Gid::from_raw(owner.1)),
                        AtFlags::EMPTY_PATH,
                    )
                    .map_err(fail(format!("chown {name:?} for {}", target.path)))?;
                }
                fd
            }
            Err(e) => return Err(fail(step())(e)),
        };
        let mode = rustix::fs::fstat(&fd).map_err(fail(step()))?.st_mode & 0o170000;
        match mode {
            0o040000 => stack.push(fd),
            0o120000 => {
                links += 1;
                if links > MAX_LINKS {
                    return Err(fail(step())(Errno::LOOP));
                }
                let link = rustix::fs::readlinkat(&fd, "", Vec::new()).map_err(fail(step()))?;
                let link = link.to_string_lossy().into_owned();
                if link.starts_with('/') {
                    stack.truncate(1);
                }
                for c in link.split('/').rev() {
                    todo.push_front(c.to_string());
                }
            }
            _ => {
                return Err(MountError {
                    errno: None,
                    step: step(),
                    detail: format!("{name:?} is not a directory"),
                })
            }
        }
    }
    if stack.len() < 2 {
        return Err(MountError {
            errno: None,
            step: step(),
            detail: "it resolves to the container's root".into(),
        });
    }
    let parent = stack.pop().ok_or_else(|| MountError {
        errno: None,
        step: step(),
        detail: "empty walk".into(),
    })?;
    let fs = rustix::fs::fstatfs(&parent).map_err(fail(format!("statfs {}", target.path)))?;
    if let Some((_, name)) = KERNEL_FS.iter().find(|(magic, _)| *magic == fs.f_type as u64) {
        return Err(MountError {
            errno: None,
            step: format!("resolve {}", target.path),
            detail: format!("it is on {name}, where a cache never goes"),
        });
    }
    Ok(parent)
}

/// The overlay's directories (host paths, also valid in the container's namespace).
#[derive(Debug, Clone)]
pub struct Layers {
    /// Read-only lowers, top first (the `__grp__` rewrite, then the cache).
    pub lowers: Vec<PathBuf>,
    /// The per-container upper dir.
    pub upper: PathBuf,
    /// Its work dir.
    pub work: PathBuf,
}

impl Layers {
    fn check(&self) -> Result<(), MountError> {
        for p in self.lowers.iter().chain([&self.upper, &self.work]) {
            let s = p.to_str().unwrap_or(",");
            if !p.is_absolute() || s.contains([':', ',', '\\', '\n']) {
                return Err(MountError {
                    errno: None,
                    step: "overlay options".into(),
                    detail: format!("{} cannot be an overlay layer path (':', ',' or '\\')", p.display()),
                });
            }
        }
        Ok(())
    }
}

/// Mounts the overlay on `target` (an fd from [`resolve_target`]): nosuid, nodev, and
/// `volatile` where the kernel has it (5.10+): the upper dir is thrown away with the container,
/// so syncing it (on every syncfs and at unmount, which is when the container exits) buys
/// nothing and costs the container's stop time.
pub fn mount_overlay(target: &OwnedFd, layers: &Layers) -> Result<(), MountError> {
    layers.check()?;
    match overlay(layers, true) {
        Ok(mnt) => attach(&mnt, target),
        // Older kernels (< 5.10) refuse the unknown `volatile` option with EINVAL, at the
        // option or when the superblock is created; any other error is the answer.
        Err(e) if e.errno == Some(Errno::INVAL) => attach(&overlay(layers, false)?, target),
        Err(e) => Err(e),
    }
}

fn attach(mnt: &OwnedFd, target: &OwnedFd) -> Result<(), MountError> {
    move_mount(
        mnt,
        "",
        target,
        "",
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
    )
    .map_err(fail("attach the overlay at the target"))
}

/// A detached overlay mount of `layers`.
fn overlay(layers: &Layers, volatile: bool) -> Result<OwnedFd, MountError> {
    let fs = fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC).map_err(fail("fsopen overlay"))?;
    let lower = layers
        .lowers
        .iter()
        .map(|p| p.to_string_lossy())
        .collect::<Vec<_>>()
        .join(":");
    let set = |key: &str, value: &str| {
        fsconfig_set_string(&fs, key, value)
            .map_err(|e| with_log(&fs, fail(format!("overlay option {key}={value}"))(e)))
    };
    set("source", "kcache")?;
    set("lowerdir", &lower)?;
    set("upperdir", &layers.upper.to_string_lossy())?;
    set("workdir", &layers.work.to_string_lossy())?;
    if volatile {
        fsconfig_set_flag(&fs, "volatile").map_err(fail("overlay option volatile"))?;
    }
    fsconfig_create(&fs).map_err(|e| with_log(&fs, fail("create the overlay")(e)))?;
    fsmount(
        &fs,
        FsMountFlags::FSMOUNT_CLOEXEC,
        MountAttrFlags::MOUNT_ATTR_NOSUID | MountAttrFlags::MOUNT_ATTR_NODEV,
    )
    .map_err(fail("fsmount overlay"))
}

/// Appends the kernel's messages for an fs context (what overlayfs says about bad options).
fn with_log(fs: &OwnedFd, mut e: MountError) -> MountError {
    let mut buf = [0u8; 1024];
    for _ in 0..8 {
        match rustix::io::read(fs, &mut buf) {
            Ok(n) if n > 0 => {
                e.detail.push_str("; kernel: ");
                e.detail.push_str(String::from_utf8_lossy(&buf[..n]).trim());
            }
            _ => break,
        }
    }
    e
}

/// Overlay mounts in this namespace whose upper dir is `upper` (after a container whose rootfs
/// propagation let our mount reach the host): their mount points, from `/proc/self/mountinfo`.
pub fn mounts_with_upper(mountinfo: &str, upper: &Path) -> Vec<PathBuf> {
    let want = format!("upperdir={}", upper.display());
    mountinfo
        .lines()
        .filter_map(|line| {
            let (pre, post) = line.split_once(" - ")?;
            let mut post = post.split(' ');
            let (fstype, _source, opts) = (post.next()?, post.next()?, post.next()?);
            if fstype != "overlay" || !opts.split(',').any(|o| o == want) {
                return None;
            }
            Some(PathBuf::from(unescape(pre.split(' ').nth(4)?)))
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Detaches every mount from [`mounts_with_upper`] (poststop): each mount point, and how its
/// unmount went.
pub fn unmount_leftovers(upper: &Path) -> Vec<(PathBuf, Result<(), Errno>)> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return vec![];
    };
    mounts_with_upper(&info, upper)
        .into_iter()
        .map(|mp| {
            let r = rustix::mount::unmount(
                &mp,
                rustix::mount::UnmountFlags::DETACH | rustix::mount::UnmountFlags::NOFOLLOW,
            );
            (mp, r)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;
    use crate::target::{check, Source};

    /// Resolves `path` under a fresh tree built by `setup`; returns the resolved dir relative to
    /// the root, or the error.
    fn walk(setup: impl Fn(&Path, &Path), path: &str) -> (Result<String, String>, tempfile::TempDir) {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("rootfs");
        let outside = tmp.path().join("outside");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        setup(&root, &outside);
        let rootfd = rustix::fs::open(&root, OFlags::PATH | OFlags::DIRECTORY, Mode::empty()).unwrap();
        let owner = (rustix::process::getuid().as_raw(), rustix::process::getgid().as_raw());
        let res = resolve_target(&rootfd, &check(path, Source::Annotation).unwrap(), owner).map(|fd| {
            let p = std::fs::read_link(format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&fd))).unwrap();
            p.strip_prefix(&root)
                .map(|r| format!("/{}", r.display()))
                .unwrap_or_else(|_| format!("OUTSIDE {}", p.display()))
        });
        assert!(
            std::fs::read_dir(&outside).unwrap().next().is_none(),
            "{path}: something was made outside the rootfs"
        );
        (res.map_err(|e| e.to_string()), tmp)
    }

    #[test]
    fn the_walk_stays_in_the_rootfs_and_creates_what_is_missing() {
        let out = |r: &Path, o: &Path| {
            let _ = (r, o);
        };
        assert_eq!(walk(out, "/a/b/c").0.unwrap(), "/a/b/c");
        // An absolute link to a host path resolves inside the rootfs.
        let abs = |r: &Path, o: &Path| symlink(o, r.join("l")).unwrap();
        let (res, tmp) = walk(abs, "/l/cache");
        let outside = tmp.path().join("outside");
        assert_eq!(res.unwrap(), format!("{}/cache", outside.display()));
        // Relative links climbing with `..` stop at the rootfs.
        let rel = |r: &Path, _: &Path| {
            std::fs::create_dir_all(r.join("home")).unwrap();
            symlink("../../../../../../outside", r.join("home/u")).unwrap();
        };
        assert_eq!(walk(rel, "/home/u/.triton/cache").0.unwrap(), "/outside/.triton/cache");
        // A chain of links, one dangling.
        let chain = |r: &Path, _: &Path| {
            symlink("b", r.join("a")).unwrap();
            symlink("/c/d", r.join("b")).unwrap();
        };
        assert_eq!(walk(chain, "/a/e").0.unwrap(), "/c/d/e");
        // Links that end at the root, loops, files, /proc.
        let to_root = |r: &Path, _: &Path| symlink("/", r.join("x")).unwrap();
        assert!(walk(to_root, "/x").0.unwrap_err().contains("container's root"));
        let looped = |r: &Path, _: &Path| {
            symlink("b", r.join("a")).unwrap();
            symlink("a", r.join("b")).unwrap();
        };
        assert!(walk(looped, "/a/c").0.is_err());
        let file = |r: &Path, _: &Path| std::fs::write(r.join("f"), "").unwrap();
        assert!(walk(file, "/f/c").0.unwrap_err().contains("not a directory"));
        let magic = |r: &Path, _: &Path| symlink("/proc/self/root", r.join("m")).unwrap();
        assert_eq!(walk(magic, "/m/c").0.unwrap(), "/proc/self/root/c");
    }

    #[test]
    fn leftover_mounts_are_found_by_upper_dir() {
        let info = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
301 22 0:50 / /var/lib/x/rootfs/root/.triton/cache rw,nosuid,nodev master:1 - overlay kcache rw,lowerdir=/s/a/grp/k:/s/a/tree/io.triton.cache,upperdir=/run/kcache/containers/c1/upper,workdir=/run/kcache/containers/c1/work
302 22 0:51 / /with\\040space rw - overlay kcache rw,lowerdir=/l,upperdir=/run/kcache/containers/c1/upper,workdir=/w
303 22 0:52 / /other rw - overlay kcache rw,lowerdir=/l,upperdir=/run/kcache/containers/c10/upper,workdir=/w
";
        let got = mounts_with_upper(info, Path::new("/run/kcache/containers/c1/upper"));
        assert_eq!(
            got,
            [
                PathBuf::from("/var/lib/x/rootfs/root/.triton/cache"),
                PathBuf::from("/with space")
            ]
        );
    }

    #[test]
    fn layer_paths_that_would_break_overlay_options_are_refused() {
        let l = Layers {
            lowers: vec!["/a:b".into()],
            upper: "/u".into(),
            work: "/w".into(),
        };
        assert!(l.check().unwrap_err().detail.contains("/a:b"));
        let l = Layers {
            lowers: vec!["/a".into()],
            upper: "u".into(),
            work: "/w".into(),
        };
        assert!(l.check().is_err());
    }
}

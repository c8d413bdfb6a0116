//! kcache-hook: the OCI hook that puts an approved, verified, GPU-compatible kernel cache into
//! the containers that ask for one (`kcache.dev/cache: <name>`).
//!
//! ```text
//! kcache-hook [--store DIR] [--run-dir DIR] [--log-file FILE] [prestart|poststop]
//! ```
//!
//! The runtime passes the OCI state on stdin; the hook reads the bundle's `config.json`.
//!
//! - **prestart**: no `kcache.dev/cache` annotation: exit 0 at once, touching nothing. Otherwise
//!   resolve the name in the node store ([`select`]), choose the target path ([`target`]), make
//!   `/run/kcache/containers/<id>/{upper,work}`, add a ref to the entry ([`refs`]), prepare the
//!   `__grp__` rewrite layer, enter the container's mount namespace, check the container's
//!   Triton against the one the cache was built with when it records one ([`triton`]) and
//!   mount the overlay ([`mount`]). When anything fails the container starts without the cache
//!   and the reason is logged, unless `kcache.dev/cache-required: "true"`: then the start fails
//!   with a message naming the cache and the reason.
//! - **poststop**: detach any leftover overlay using the container's upper dir, drop the ref and
//!   remove `/run/kcache/containers/<id>`.
//!
//! Sync and single-threaded; the environment is cleared and the umask set to 022 at start; the
//! hook never chdirs into the rootfs and never executes anything. Messages go to stderr (runc
//! shows them when the hook fails) and are appended to `<run-dir>/hook.log` (runc drops the
//! output of a hook that succeeds).
//!
//! # Exit codes
//!
//! Any non-zero exit of a prestart hook fails the container's start; runc's message carries
//! the code (`error running hook #0: error running hook: exit status 5, stdout: , stderr: ...`). One code per stage
//! ([`HookError::exit_code`], [`error::EXIT_CODES`]), and the message on stderr is the error
//! with its causes, on one line:
//!
//! | code | stage | meaning |
//! |---|---|---|
//! | 0 | | done: mounted, not opted in, a pod's sandbox, or started without a cache that is not required |
//! | 2 | usage | bad command line |
//! | 3 | input | the OCI state on stdin or the bundle's `config.json` cannot be read or parsed |
//! | 4 | request | the container's `kcache.dev/*` annotations are invalid |
//! | 5 | select | no usable cache on this node: not approved, not ready, not extracted, untrusted, no GPU inventory (kcached not running), no compatible GPU |
//! | 6 | target | the mount path is refused |
//! | 7 | container | the container lacks what the mount needs (mount namespace, pid, root path, mapped user, usable id) |
//! | 8 | store | the node store cannot be read or written (state, container dir, ref record, `__grp__` layer) |
//! | 9 | triton | the container's Triton differs from the cache's |
//! | 10 | mount | entering the mount namespace, opening the rootfs, resolving the target or mounting the overlay failed |
//! | 11 | cleanup | poststop could not undo everything (unmount, ref, container dir) |
//!
//! Codes 4 to 10 come only from a prestart whose container cannot start without the cache
//! (`kcache.dev/cache-required: "true"`, or a `cache-required` value that is neither `true` nor
//! `false`: code 4): otherwise the failure is logged and the container starts without the
//! cache (exit 0). 1 is not used (it once meant any failure); 101 is a panic.
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![warn(clippy::unwrap_used, clippy::panic)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::panic))]

pub mod error;
pub mod mount;
pub mod oci;
pub mod refs;
pub mod request;
pub mod select;
pub mod target;
#[doc(hidden)]
pub mod testing;
pub mod triton;

use std::{
    fs,
    io::{self, Write},
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use kcache_core::{
    cache::{grp, store::StoreLayout},
    gpu,
};

pub use crate::error::{HookError, Result};
use crate::{
    error::{CleanupError, CleanupStep, ContainerError, StoreError, UsageError},
    oci::{Spec, State},
    request::Request,
    select::Selected,
    target::Target,
};

/// The hook stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Before the container's process starts (runc: before pivot_root).
    Prestart,
    /// After the container is deleted.
    Poststop,
    /// No stage argument: from the state's `status` (`stopped`: poststop, else prestart). A
    /// hooks.d file has one argv for all its stages, so the CRI-O/podman registration uses this.
    Auto,
}

/// Command line options.
#[derive(Debug, Clone)]
pub struct Options {
    /// Store and run dir.
    pub layout: StoreLayout,
    /// Log file; `None`: `<run-dir>/hook.log`.
    pub log_file: Option<PathBuf>,
    /// The stage.
    pub stage: Stage,
}

/// The usage line.
pub const USAGE: &str = "usage: kcache-hook [--store DIR] [--run-dir DIR] [--log-file FILE] [prestart|poststop]";

impl Options {
    /// Parses `args` (without the program name).
    pub fn parse<I: IntoIterator<Item = String>>(args: I) -> std::result::Result<Self, UsageError> {
        let mut root = PathBuf::from(kcache_core::cache::store::DEFAULT_ROOT);
        let mut run = PathBuf::from(kcache_core::cache::store::DEFAULT_RUN_DIR);
        let mut log_file = None;
        let mut stage = None;
        let mut it = args.into_iter();
        while let Some(a) = it.next() {
            let mut value = |name: &'static str| {
                it.next()
                    .filter(|v| Path::new(v).is_absolute())
                    .map(PathBuf::from)
                    .ok_or(UsageError::NeedsAbsolutePath(name))
            };
            match a.as_str() {
                "--store" => root = value("--store")?,
                "--run-dir" => run = value("--run-dir")?,
                "--log-file" => log_file = Some(value("--log-file")?),
                "prestart" | "createRuntime" if stage.is_none() => stage = Some(Stage::Prestart),
                "poststop" if stage.is_none() => stage = Some(Stage::Poststop),
                other => return Err(UsageError::Unexpected(other.to_string())),
            }
        }
        Ok(Self {
            layout: StoreLayout::new(root, run),
            log_file,
            stage: stage.unwrap_or(Stage::Auto),
        })
    }
}

/// Size at which the log file is rotated.
const MAX_LOG_BYTES: u64 = 8 << 20;

/// Where log lines go: stderr, and the log file once the container opted in.
pub struct Log {
    stage: &'static str,
    id: String,
    file: Option<fs::File>,
}

impl Log {
    fn new(stage: Stage, id: &str) -> Self {
        Self {
            stage: match stage {
                Stage::Prestart | Stage::Auto => "prestart",
                Stage::Poststop => "poststop",
            },
            id: id.to_string(),
            file: None,
        }
    }

    fn open_file(&mut self, opts: &Options) {
        let path = opts
            .log_file
            .clone()
            .unwrap_or_else(|| opts.layout.run_dir().join("hook.log"));
        if let Some(dir) = path.parent() {
            let _ = fs::DirBuilder::new().recursive(true).mode(0o755).create(dir);
        }
        // One generation of history: past 8 MiB the log moves to `<file>.1`.
        if fs::symlink_metadata(&path).is_ok_and(|m| m.len() > MAX_LOG_BYTES) {
            let mut old = path.clone().into_os_string();
            old.push(".1");
            let _ = fs::rename(&path, old);
        }
        self.file = fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o640)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(path)
            .ok();
    }

    /// Writes one line to stderr and the log file.
    pub fn line(&mut self, msg: &str) {
        let line = format!("kcache-hook {} {}: {msg}\n", self.stage, self.id);
        let _ = io::stderr().write_all(line.as_bytes());
        self.append(&line);
    }

    /// A failure: to the log file only, with its exit code; main prints it to stderr once, as
    /// the hook's last word.
    fn failure(&mut self, e: &HookError) {
        self.append(&format!(
            "kcache-hook {} {}: exit {} ({}): {}\n",
            self.stage,
            self.id,
            e.exit_code(),
            e.stage(),
            error_chain(e)
        ));
    }

    fn append(&mut self, line: &str) {
        if let Some(f) = &mut self.file {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
            let _ = f.write_all(format!("{}.{:03} {line}", now.as_secs(), now.subsec_millis()).as_bytes());
        }
    }
}

/// What the hook leaves in `<run>/containers/<id>/hook.json` for poststop: the same record as
/// the entry's `refs/<container>` (`kcache_core::cache::refs::ContainerRef`).
pub use kcache_core::cache::refs::ContainerRef as Mounted;

/// The file name of [`Mounted`] under the container dir.
pub const MOUNTED_FILE: &str = "hook.json";

/// Runs one hook invocation: `stdin` is the OCI state. `Err`: the start fails (prestart) or the
/// cleanup is incomplete (poststop); [`HookError::exit_code`] is the exit status. A failure
/// after the container opted in is also appended to the log file.
pub fn run(opts: &Options, stdin: impl io::Read) -> Result<()> {
    let state = oci::read_state(stdin)?;
    // The fast path: the state's annotations (runc and crun pass them) say "not opted in".
    if state
        .annotations
        .as_ref()
        .is_some_and(|a| !a.contains_key(request::CACHE))
    {
        return Ok(());
    }
    let stage = match opts.stage {
        Stage::Auto if state.status == "stopped" => Stage::Poststop,
        Stage::Auto => Stage::Prestart,
        s => s,
    };
    match stage {
        Stage::Prestart | Stage::Auto => {
            let spec = oci::read_spec(&state.bundle)?;
            let Some(req) = Request::from_annotations(&spec.annotations) else {
                return Ok(());
            };
            let mut log = Log::new(stage, &state.id);
            log.open_file(opts);
            prestart(opts, &state, &spec, &req, &mut log).inspect_err(|e| log.failure(e))
        }
        Stage::Poststop => {
            // The bundle may be gone by now; without annotations the container dir decides.
            if state.annotations.is_none() {
                if let Ok(spec) = oci::read_spec(&state.bundle) {
                    if !spec.annotations.contains_key(request::CACHE) {
                        return Ok(());
                    }
                }
            }
            // Nothing made for this container (a sandbox, or prestart started it without the
            // cache): nothing to do, and nothing to log.
            let made = opts.layout.container_dir(&state.id);
            if made.as_ref().is_some_and(|d| fs::symlink_metadata(d).is_err()) {
                return Ok(());
            }
            let mut log = Log::new(stage, &state.id);
            log.open_file(opts);
            poststop(opts, &state.id, &mut log).inspect_err(|e| log.failure(e))
        }
    }
}

/// prestart for a container that opted in.
fn prestart(opts: &Options, state: &State, spec: &Spec, req: &Request, log: &mut Log) -> Result<()> {
    let started = Instant::now();
    for k in &req.unknown {
        log.line(&format!("ignoring unknown annotation {k}"));
    }
    let required = req
        .required()
        .map_err(|e| HookError::not_mounted(req.describe(), false, e.into()))?;
    match try_mount(opts, state, spec, req, log) {
        Ok((_, target, true)) => {
            log.line(&format!(
                "{} is already mounted at {} (a second prestart call for this container)",
                req.describe(),
                target.path
            ));
            Ok(())
        }
        Ok((sel, target, false)) => {
            log.line(&format!(
                "mounted {} = {} ({}, {}) at {} (from {}) in {:.1} ms",
                req.describe(),
                sel.record.image,
                sel.digest,
                sel.compatible_gpus.join(","),
                target.path,
                target.source,
                started.elapsed().as_secs_f64() * 1e3
            ));
            Ok(())
        }
        Err(reason) if required => Err(HookError::not_mounted(req.describe(), true, reason)),
        Err(reason) => {
            log.line(&format!(
                "starting without {}: {}",
                req.describe(),
                error_chain(&reason)
            ));
            Ok(())
        }
    }
}

/// Everything prestart does; on error, nothing it made is left behind. `true`: an earlier call
/// for this very container (same pid, same boot) already mounted it.
fn try_mount(
    opts: &Options,
    state: &State,
    spec: &Spec,
    req: &Request,
    log: &mut Log,
) -> Result<(Selected, Target, bool)> {
    let layout = &opts.layout;
    req.check()?;
    let node = layout.read_state().map_err(StoreError::State)?;
    let sel = select::select(layout, req, &node, || {
        gpu::file::load(&layout.gpus_path()).map_err(|e| error_chain(&e))
    })?;
    let target = target::choose(req.path.as_deref(), &sel.record.kind, spec.env(), spec.user().uid)?;
    if !spec.has_mount_namespace() {
        return Err(ContainerError::NoMountNamespace.into());
    }
    let pid = state.pid.filter(|p| *p > 0).ok_or(ContainerError::NoPid)?;
    let rootfs = spec.rootfs(&state.bundle).ok_or(ContainerError::NoRootPath)?;
    let owner = spec.host_user().ok_or(ContainerError::UnmappedUser)?;
    let cdir = layout
        .container_dir(&state.id)
        .ok_or_else(|| ContainerError::BadId(state.id.clone()))?;

    let boot = refs::boot_id();
    if let Some(prev) = read_mounted(&cdir) {
        let alive = Path::new(&format!("/proc/{pid}")).exists();
        if prev.pid == Some(pid) && prev.boot_id == boot && alive && prev.digest == sel.digest {
            return Ok((sel, target, true));
        }
    }
    let made = prepare_container_dir(&cdir, owner).map_err(|source| StoreError::ContainerDir {
        path: cdir.clone(),
        source,
    })?;
    let result = (|| -> Result<()> {
        let mounted = Mounted::now(
            &state.id,
            &req.name,
            req.namespace.as_deref(),
            &sel.digest,
            &target.path,
            Some(pid),
        );
        let body = mounted.to_bytes();
        // Plain write, no fsync: /run does not outlive a reboot, and neither does the container.
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(cdir.join(MOUNTED_FILE))
            .and_then(|mut f| f.write_all(&body))
            .map_err(|source| StoreError::Record {
                path: cdir.join(MOUNTED_FILE),
                source,
            })?;
        let guard = refs::add(layout, &mounted).map_err(StoreError::Ref)?;
        let grp = grp::layer(layout, &sel.digest, &sel.cache_dir, &target.path).map_err(StoreError::Grp)?;
        drop(guard);
        let mut lowers: Vec<PathBuf> = grp.into_iter().collect();
        lowers.push(sel.cache_dir.clone());
        let layers = mount::Layers {
            lowers,
            upper: made.join("upper"),
            work: made.join("work"),
        };
        mount::enter_namespace(pid)?;
        let root = mount::open_rootfs(&rootfs)?;
        if let Some(built) = sel.record.requirements.triton_version.as_deref() {
            match triton::compare(&req.name, built, &triton::find(&root, spec.env()))? {
                triton::Checked::Same(found) => {
                    log.line(&format!("Triton {built} at {} matches the cache", found.path))
                }
                triton::Checked::NotFound => log.line(&format!(
                    "the cache was built with Triton {built}; no triton/__init__.py found in the container \
                     (VIRTUAL_ENV, /usr/local/lib/python3.*, /usr/lib/python3*, /usr/lib64/python3.*, \
                     /opt/conda/lib/python3.*), so the Triton version could not be checked"
                )),
            }
        }
        let fd = mount::resolve_target(&root, &target, owner)?;
        mount::mount_overlay(&fd, &layers)?;
        Ok(())
    })();
    if let Err(e) = result {
        let _ = refs::remove(layout, &sel.digest, &state.id);
        let _ = fs::remove_dir_all(&cdir);
        return Err(e);
    }
    Ok((sel, target, false))
}

fn read_mounted(cdir: &Path) -> Option<Mounted> {
    let bytes = fs::read(cdir.join(MOUNTED_FILE)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// `<cdir>/{upper,work}`: a stale dir of an earlier container with the same id is replaced.
/// `upper` belongs to the container user (it is the root of the mounted dir).
fn prepare_container_dir(cdir: &Path, owner: (u32, u32)) -> io::Result<PathBuf> {
    if let Some(parent) = cdir.parent() {
        fs::DirBuilder::new().recursive(true).mode(0o711).create(parent)?;
    }
    match fs::remove_dir_all(cdir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    fs::DirBuilder::new().mode(0o700).create(cdir)?;
    fs::DirBuilder::new().mode(0o755).create(cdir.join("upper"))?;
    std::os::unix::fs::lchown(cdir.join("upper"), Some(owner.0), Some(owner.1))?;
    fs::DirBuilder::new().mode(0o700).create(cdir.join("work"))?;
    Ok(cdir.to_path_buf())
}

/// poststop: undo what prestart did for `id`. Missing pieces are fine (prestart skipped, or a
/// second poststop); every step is tried, and the ones that failed are reported together.
fn poststop(opts: &Options, id: &str, log: &mut Log) -> Result<()> {
    let layout = &opts.layout;
    let cdir = layout
        .container_dir(id)
        .ok_or_else(|| ContainerError::BadId(id.to_string()))?;
    let mounted = read_mounted(&cdir);
    let mut failed = Vec::new();
    for (path, result) in mount::unmount_leftovers(&cdir.join("upper")) {
        match result {
            Ok(()) => log.line(&format!("unmounted {}", path.display())),
            Err(errno) => {
                let step = CleanupStep::Unmount {
                    path,
                    source: errno.into(),
                };
                log.line(&error_chain(&step));
                failed.push(step);
            }
        }
    }
    if let Some(m) = &mounted {
        if let Err(source) = refs::remove(layout, &m.digest, id) {
            failed.push(CleanupStep::Ref {
                digest: m.digest.clone(),
                source,
            });
        }
    }
    match fs::remove_dir_all(&cdir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => failed.push(CleanupStep::RemoveDir { path: cdir, source }),
    }
    if let Some(m) = &mounted {
        log.line(&format!("released cache {:?} ({})", m.cache, m.digest));
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(CleanupError(failed).into())
    }
}

/// An error and its causes on one line, `: `-separated. A cause whose message the line already
/// ends with is not repeated (some of core's errors print their source in their own message).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(cause) = src {
        let msg = cause.to_string();
        if !s.ends_with(&msg) {
            s.push_str(": ");
            s.push_str(&msg);
        }
        src = cause.source();
    }
    s
}

/// Clears the process environment (nothing the hook does depends on it, and nothing it starts
/// (it starts nothing) could inherit it) and sets the umask to 022, whatever the runtime's: the
/// `__grp__` files and the directories the hook makes must be readable by the container's user.
pub fn sanitize_process() {
    for (k, _) in std::env::vars_os() {
        std::env::remove_var(k);
    }
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o022));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn options() {
        let o = Options::parse(args(&["--store", "/s", "--run-dir", "/r", "poststop"])).unwrap();
        assert_eq!(
            (o.layout.root(), o.layout.run_dir(), o.stage),
            (Path::new("/s"), Path::new("/r"), Stage::Poststop)
        );
        let o = Options::parse(args(&[])).unwrap();
        assert_eq!(o.stage, Stage::Auto);
        assert_eq!(o.layout, StoreLayout::default());
        assert_eq!(Options::parse(args(&["createRuntime"])).unwrap().stage, Stage::Prestart);
        for (bad, want) in [
            (&["--store"][..], UsageError::NeedsAbsolutePath("--store")),
            (&["--run-dir", "relative"], UsageError::NeedsAbsolutePath("--run-dir")),
            (&["prestart", "poststop"], UsageError::Unexpected("poststop".into())),
            (&["--bogus"], UsageError::Unexpected("--bogus".into())),
        ] {
            assert_eq!(Options::parse(args(bad)).unwrap_err(), want, "{bad:?}");
        }
    }

    /// Layers are keyed by the whole target path: one made earlier for another target (by
    /// another pod, whatever path it chose) is never the one a target gets.
    #[test]
    fn each_target_gets_its_own_grp_layer() {
        let dir = tempfile::tempdir().unwrap();
        let store = testing::FakeStore::new(dir.path());
        let digest = store.add_cache("llama", None, &[90], 1);
        let record = store.layout.read_record(&digest).unwrap().unwrap();
        let sel = Selected {
            digest: digest.clone(),
            cache_dir: store.layout.tree_dir(&digest).join(&record.cache_subdir),
            record,
            compatible_gpus: vec![],
        };
        let long = format!("/work/{}.triton/cache", "deep/".repeat(80));
        let targets = ["/a/b", "/a+b", "/a%2Fb", "/a_b", "/a/b/c", &long];
        let mut layers = Vec::new();
        for path in targets {
            let t = target::check(path, target::Source::Annotation).unwrap();
            let grp_layer = || grp::layer(&store.layout, &sel.digest, &sel.cache_dir, &t.path);
            let layer = grp_layer().unwrap().unwrap();
            assert!(layer.starts_with(store.layout.entry_dir(&digest).join("grp")));
            let grp = fs::read_to_string(layer.join(testing::KEY).join(testing::GRP_FILE)).unwrap();
            assert!(
                grp.contains(&format!("\"{path}/{}/add_kernel.json\"", testing::KEY)),
                "{grp}"
            );
            assert_eq!(grp_layer().unwrap().unwrap(), layer, "reused");
            layers.push(layer);
        }
        let distinct: std::collections::BTreeSet<_> = layers.iter().collect();
        assert_eq!(distinct.len(), targets.len());
        for a in &layers {
            for b in &layers {
                assert!(a == b || !a.starts_with(b), "{} inside {}", a.display(), b.display());
            }
        }
    }

    /// The whole prestart in-process, up to the namespace step: a container whose pid is not a
    /// process fails there, and everything made before is rolled back.
    #[test]
    fn a_failure_after_the_ref_rolls_everything_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = testing::FakeStore::new(dir.path());
        let digest = store.add_cache("llama", None, &[90], 1);
        let bundle = dir.path().join("bundle");
        fs::create_dir_all(&bundle).unwrap();
        fs::write(
            bundle.join("config.json"),
            r#"{"root":{"path":"rootfs"},"process":{"env":["HOME=/root"]},"linux":{"namespaces":[{"type":"mount"}]},
                "annotations":{"kcache.dev/cache":"llama","kcache.dev/cache-required":"true"}}"#,
        )
        .unwrap();
        let opts = Options {
            layout: store.layout.clone(),
            log_file: None,
            stage: Stage::Auto,
        };
        let state = format!(
            r#"{{"id":"c1","status":"creating","pid":2147483647,"bundle":"{}"}}"#,
            bundle.display()
        );
        let err = run(&opts, state.as_bytes()).unwrap_err();
        assert_eq!((err.exit_code(), err.stage()), (10, "mount"), "{err:?}");
        let msg = error_chain(&err);
        assert!(
            msg.starts_with("cache \"llama\" (no pod namespace) is required (kcache.dev/cache-required) but cannot be mounted: open /proc/2147483647/ns/mnt: "),
            "{msg}"
        );
        assert!(!store.containers_dir().join("c1").exists());
        assert!(refs::list(&store.layout, &digest).unwrap().is_empty());
        // The __grp__ layer stays: it belongs to the entry and is reused.
        assert!(store.layout.grp_dir(&digest, "/root/.triton/cache").is_dir());
        let log = fs::read_to_string(store.layout.run_dir().join("hook.log")).unwrap();
        assert!(
            log.contains("kcache-hook prestart c1: exit 10 (mount): cache \"llama\" (no pod namespace) is required"),
            "{log}"
        );

        // poststop of a container that never got the cache is a no-op.
        let stopped = format!(r#"{{"id":"c1","status":"stopped","bundle":"{}"}}"#, bundle.display());
        run(&opts, stopped.as_bytes()).unwrap();
    }

    /// poststop tries every step; one that fails (here the ref, which is not a file) is
    /// reported with exit 11, and the others are still done.
    #[test]
    fn an_incomplete_poststop_exits_11_after_trying_every_step() {
        let dir = tempfile::tempdir().unwrap();
        let store = testing::FakeStore::new(dir.path());
        let digest = store.add_cache("llama", None, &[90], 1);
        let cdir = store.layout.container_dir("c2").unwrap();
        fs::create_dir_all(&cdir).unwrap();
        let mounted = Mounted::now("c2", "llama", None, &digest, "/root/.triton/cache", None);
        fs::write(cdir.join(MOUNTED_FILE), mounted.to_bytes()).unwrap();
        let bad_ref = store.layout.refs_dir(&digest).join("c2");
        fs::create_dir_all(bad_ref.join("not-a-ref")).unwrap();
        let opts = Options {
            layout: store.layout.clone(),
            log_file: None,
            stage: Stage::Poststop,
        };
        let stopped = format!(
            r#"{{"id":"c2","status":"stopped","bundle":"{}","annotations":{{"kcache.dev/cache":"llama"}}}}"#,
            dir.path().join("gone").display()
        );
        let err = run(&opts, stopped.as_bytes()).unwrap_err();
        assert_eq!((err.exit_code(), err.stage()), (11, "cleanup"), "{err:?}");
        let msg = error_chain(&err);
        assert!(
            msg.starts_with(&format!(
                "cleanup incomplete: cannot drop the ref on {digest}: {}: ",
                bad_ref.display()
            )),
            "{msg}"
        );
        assert!(!cdir.exists(), "the container dir is removed all the same");
        let log = fs::read_to_string(store.layout.run_dir().join("hook.log")).unwrap();
        assert!(
            log.contains("kcache-hook poststop c2: exit 11 (cleanup): cleanup incomplete"),
            "{log}"
        );
    }
}

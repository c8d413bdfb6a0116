//! E2E with a real runc: kcache-hook in config.json (prestart + poststop), busybox containers.
//! Everything the container sees is checked from inside it; the host side (upper dir, refs,
//! mounts, untouched host paths) from here.
//!
//! Needs root, runc and busybox-static (`apt-get install -y runc busybox-static`). Without them
//! the tests are skipped with a message, except under `CI=true`, where they fail.

mod common;

use std::{fs, path::Path};

use common::*;
use kcache_core::cache::store::{CacheState, GRP_DIR};
use kcache_hook::{
    refs,
    testing::{CacheSpec, FakeStore, BUILD_ROOT, FILES, GRP_FILE, KEY},
};
use serde_json::{json, Value};

struct Env {
    _tmp: tempfile::TempDir,
    base: std::path::PathBuf,
    store: FakeStore,
    runc: Runc,
}

fn env() -> Option<Env> {
    let tools = require("runc", &["runc"])?;
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().to_path_buf();
    let store = FakeStore::new(&base);
    let runc = Runc {
        bin: tools[0].clone(),
        root: base.join("runc-state"),
    };
    Some(Env {
        _tmp: tmp,
        base,
        store,
        runc,
    })
}

impl Env {
    fn bundle(&self, name: &str) -> Bundle {
        let dir = self.base.join(name);
        fs::create_dir_all(&dir).unwrap();
        Bundle::new(&dir)
    }
}

/// Prints, from inside the container, what the cache at `$T` looks like.
fn probe_script(target: &str) -> String {
    let cats: String = FILES.iter().map(|f| format!("cat $K/{f}; ")).collect();
    format!(
        "T={target}; K=$T/{KEY}; {cats}\
         for p in $(grep -o '\"/[^\"]*\"' $K/{GRP_FILE} | tr -d '\"'); do \
           if [ -e \"$p\" ]; then echo CHILD_OK $p; else echo CHILD_MISSING $p; fi; done; \
         echo new-kernel > $K/written_by_container && echo WROTE; \
         echo appended >> $K/add_kernel.ttir && echo APPENDED; \
         grep ' - overlay kcache ' /proc/self/mountinfo | sed 's/^/MOUNT /'; "
    )
}

#[test]
fn opted_in_container_gets_the_cache_with_rewritten_groups_and_a_private_upper() {
    let Some(e) = env() else { return };
    let digest = e.store.add_cache("llama", None, &[80, 90], 1);
    let tree = e.store.layout.tree_dir(&digest).join("io.triton.cache");
    let before = tree_with_contents(&tree);
    let b = e.bundle("b1");
    let target = "/root/.triton/cache";
    b.write_spec(
        &format!("{} {WAIT}", probe_script(target)),
        &["HOME=/root"],
        &[("kcache.dev/cache", "llama")],
        kcache_hooks(&e.store, None),
    );
    let spec_before = fs::read(b.dir.join("config.json")).unwrap();
    let mut child = e.runc.spawn(&b, "c-opted-in");
    wait_ready(&b, &mut child);

    // Host side, while the container runs.
    let cdir = e.store.containers_dir().join("c-opted-in");
    let upper = cdir.join("upper");
    assert_eq!(
        fs::read_to_string(upper.join(KEY).join("written_by_container")).unwrap(),
        "new-kernel\n",
        "the container's write lands in its upper dir"
    );
    assert!(fs::read_to_string(upper.join(KEY).join("add_kernel.ttir"))
        .unwrap()
        .ends_with("appended\n"));
    assert_eq!(refs::list(&e.store.layout, &digest).unwrap(), ["c-opted-in"]);
    assert!(
        e.store.layout.entry_dir(&digest).join(GRP_DIR).is_dir(),
        "the __grp__ rewrite layer is kept in the entry"
    );
    assert!(
        !b.rootfs.join("root/.triton/cache").join(KEY).exists(),
        "the mount is in the container's namespace only"
    );
    assert!(kcache_mounts().is_empty(), "{:?}", kcache_mounts());

    let out = release(&b, child);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "runc run failed: {stdout}\n{stderr}");
    for f in FILES {
        assert!(
            stdout.contains(&format!("{f} of cache 1")),
            "{f} not readable inside:\n{stdout}"
        );
    }
    let ok: Vec<&str> = stdout.lines().filter(|l| l.starts_with("CHILD_OK ")).collect();
    assert_eq!(ok.len(), FILES.len(), "{stdout}");
    assert!(ok.iter().all(|l| l.contains(&format!("{target}/{KEY}/"))), "{ok:?}");
    assert!(
        !stdout.contains("CHILD_MISSING") && !stdout.contains(BUILD_ROOT),
        "{stdout}"
    );
    assert!(stdout.contains("WROTE") && stdout.contains("APPENDED"), "{stdout}");
    let mounts: Vec<&str> = stdout.lines().filter(|l| l.starts_with("MOUNT ")).collect();
    assert_eq!(mounts.len(), 1, "{stdout}");
    let m = mounts[0];
    assert!(
        m.contains(&format!(" {target} ")) && m.contains("nosuid") && m.contains("nodev"),
        "{m}"
    );
    assert!(m.contains(&format!("upperdir={}", upper.display())), "{m}");
    let grp = e.store.layout.grp_dir(&digest, target);
    assert!(
        m.contains(&format!("lowerdir={}:{}", grp.display(), tree.display())),
        "{m}"
    );

    // The cache is as it was; poststop left nothing behind.
    assert_eq!(tree_with_contents(&tree), before, "the read-only cache changed");
    assert!(!cdir.exists(), "poststop left {}", cdir.display());
    assert!(refs::list(&e.store.layout, &digest).unwrap().is_empty());
    assert!(kcache_mounts().is_empty());
    assert_eq!(fs::read(b.dir.join("config.json")).unwrap(), spec_before);
    let log = hook_log(&e.store);
    assert!(log.contains("mounted cache \"llama\" (no pod namespace)"), "{log}");
    assert!(log.contains("released cache \"llama\""), "{log}");
}

fn tree_with_contents(dir: &Path) -> Vec<(String, Vec<u8>)> {
    tree(dir)
        .into_iter()
        .map(|rel| {
            let p = dir.join(&rel);
            let data = if p.is_file() { fs::read(&p).unwrap() } else { vec![] };
            (rel, data)
        })
        .collect()
}

#[test]
fn not_opted_in_is_untouched() {
    let Some(e) = env() else { return };
    e.store.add_cache("llama", None, &[90], 1);
    let b = e.bundle("b2");
    b.write_spec(
        "[ -e /root/.triton ] && echo HAS_TRITON; grep -c kcache /proc/self/mountinfo; echo DONE",
        &["HOME=/root"],
        &[("kcache.dev/cache-path", "/root/.triton/cache")],
        kcache_hooks(&e.store, None),
    );
    let spec_before = fs::read(b.dir.join("config.json")).unwrap();
    let out = e.runc.run(&b, "c-plain");
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert_eq!(stdout.trim(), "0\nDONE", "{stdout}");
    assert!(!b.rootfs.join("root/.triton").exists());
    assert!(!e.store.containers_dir().exists());
    assert!(!e.store.layout.run_dir().join("hook.log").exists(), "nothing is logged");
    assert_eq!(fs::read(b.dir.join("config.json")).unwrap(), spec_before);
}

/// The hook's exit status, from runc's message for a failed hook (`error running hook #0:
/// error running hook: exit status 5, stdout: , stderr: ...`): the stage that failed
/// (kcache_hook::error).
fn hook_status(runc_stderr: &str) -> Option<u8> {
    let rest = &runc_stderr[runc_stderr.find("error running hook")?..];
    let rest = &rest[rest.find("exit status ")? + "exit status ".len()..];
    rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

/// (annotations, env) for a container that cannot get its cache; returns runc's output.
fn run_without_cache(e: &Env, name: &str, annotations: &[(&str, &str)], env: &[&str]) -> (bool, String, String) {
    let b = e.bundle(name);
    b.write_spec(
        "[ -e /root/.triton/cache/x ] || echo NO_CACHE; grep -c kcache /proc/self/mountinfo; true",
        env,
        annotations,
        kcache_hooks(&e.store, None),
    );
    let out = e.runc.run(&b, name);
    let (o, err) = text(&out);
    // runc quotes the hook's stderr in its own message.
    let err = err.replace("\\\"", "\"");
    assert!(
        !e.store.containers_dir().join(name).exists(),
        "{name}: container dir left"
    );
    (out.status.success(), o, err)
}

#[test]
fn required_but_unavailable_fails_the_start_with_our_message_otherwise_starts_without() {
    let Some(e) = env() else { return };
    e.store.add_cache("sm80", Some("ml"), &[80], 1);
    e.store.approve("pending", None, None, CacheState::Pending);
    let cases: &[(&str, &str, &str)] = &[
        ("missing", "nope", "no approved cache by that name"),
        (
            "incompatible",
            "sm80",
            "incompatible with every GPU on the node: GPU-0: cache has sm_80; GPU is sm_90",
        ),
        ("pending", "pending", "not ready on this node: pending"),
    ];
    for (case, cache, reason) in cases {
        let ann = [
            ("kcache.dev/cache", *cache),
            ("kcache.dev/cache-required", "true"),
            ("io.kubernetes.pod.namespace", "ml"),
        ];
        let (ok, stdout, stderr) = run_without_cache(&e, &format!("req-{case}"), &ann, &["HOME=/root"]);
        assert!(!ok, "{case}: started: {stdout}");
        let want = format!(
            "kcache-hook: cache \"{cache}\" (namespace ml) is required (kcache.dev/cache-required) but cannot be mounted: {reason}"
        );
        assert!(stderr.contains(&want), "{case}: runc said:\n{stderr}\nwant: {want}");
        assert_eq!(hook_status(&stderr), Some(5), "{case}: select: {stderr}");

        let (ok, stdout, stderr) = run_without_cache(&e, &format!("opt-{case}"), &ann[..1], &["HOME=/root"]);
        assert!(ok, "{case}: not required, must start: {stderr}");
        assert_eq!(stdout.trim(), "NO_CACHE\n0", "{case}");
        assert!(
            hook_log(&e.store).contains(&format!("starting without cache \"{cache}\" (no pod namespace)")),
            "{case}: {}",
            hook_log(&e.store)
        );
    }
    // A value of cache-required that is neither true nor false fails closed.
    let (ok, _, stderr) = run_without_cache(
        &e,
        "req-yes",
        &[("kcache.dev/cache", "sm80"), ("kcache.dev/cache-required", "yes")],
        &[],
    );
    assert!(
        !ok && stderr.contains("kcache.dev/cache-required must be \"true\" or \"false\""),
        "{stderr}"
    );
    assert_eq!(hook_status(&stderr), Some(4), "request: {stderr}");
}

#[test]
fn a_target_symlink_to_a_host_path_stays_inside_the_container() {
    let Some(e) = env() else { return };
    e.store.add_cache("llama", None, &[90], 1);
    let host_dir = e.base.join("host-secret");
    fs::create_dir_all(&host_dir).unwrap();
    fs::write(host_dir.join("keep"), "host").unwrap();
    let b = e.bundle("b-link");
    // /root/.triton -> <host dir> (absolute), as a hostile image could ship it.
    std::os::unix::fs::symlink(&host_dir, b.rootfs.join("root/.triton")).unwrap();
    b.write_spec(
        &format!("cat /root/.triton/cache/{KEY}/add_kernel.json; ls /root/.triton/; {WAIT}"),
        &["HOME=/root"],
        &[("kcache.dev/cache", "llama")],
        kcache_hooks(&e.store, None),
    );
    let mut child = e.runc.spawn(&b, "c-link");
    wait_ready(&b, &mut child);
    assert_eq!(tree(&host_dir), ["keep"], "the host dir was touched");
    assert!(kcache_mounts().is_empty());
    let out = release(&b, child);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    // Resolved in the rootfs: <rootfs><host dir>/cache.
    assert!(stdout.contains("add_kernel.json of cache 1"), "{stdout}\n{stderr}");
    let inside = b.rootfs.join(host_dir.strip_prefix("/").unwrap()).join("cache");
    assert!(inside.is_dir(), "{}", inside.display());
    assert_eq!(tree(&host_dir), ["keep"]);
    assert_eq!(fs::read_to_string(host_dir.join("keep")).unwrap(), "host");
}

#[test]
fn dot_dot_in_the_path_annotation_touches_nothing() {
    let Some(e) = env() else { return };
    e.store.add_cache("llama", None, &[90], 1);
    let escape = format!("/root/../../../../..{}/escaped", e.base.display());
    for (name, required) in [("dd-req", "true"), ("dd-opt", "false")] {
        let (ok, _, stderr) = run_without_cache(
            &e,
            name,
            &[
                ("kcache.dev/cache", "llama"),
                ("kcache.dev/cache-path", &escape),
                ("kcache.dev/cache-required", required),
            ],
            &[],
        );
        assert_eq!(ok, required == "false", "{name}: {stderr}");
        if required == "true" {
            assert!(stderr.contains("contains '..'"), "{stderr}");
            assert_eq!(hook_status(&stderr), Some(6), "target: {stderr}");
        }
    }
    assert!(hook_log(&e.store).contains("contains '..'"));
    assert!(!e.base.join("escaped").exists());
}

#[test]
fn a_rootfs_swapped_under_the_hook_is_refused() {
    let Some(e) = env() else { return };
    e.store.add_cache("llama", None, &[90], 1);
    let host_dir = e.base.join("host-root");
    fs::create_dir_all(host_dir.join("root")).unwrap();
    for (case, swap) in [("swap-link", "ln -s {host} {rootfs}"), ("swap-dir", "mkdir {rootfs}")] {
        let b = e.bundle(case);
        let rootfs = b.rootfs.display().to_string();
        let swap = swap
            .replace("{host}", &host_dir.display().to_string())
            .replace("{rootfs}", &rootfs);
        // A hook that runs before ours swaps the rootfs on the host.
        let swapper =
            json!({"path": BUSYBOX, "args": ["busybox", "sh", "-c", format!("mv {rootfs} {rootfs}.real && {swap}")]});
        b.write_spec(
            "echo STARTED",
            &["HOME=/root"],
            &[("kcache.dev/cache", "llama"), ("kcache.dev/cache-required", "true")],
            kcache_hooks(&e.store, Some(swapper)),
        );
        let out = e.runc.run(&b, case);
        let (stdout, stderr) = text(&out);
        assert!(!out.status.success(), "{case}: {stdout}");
        let want = match case {
            "swap-link" => "open rootfs",
            _ => "not a mount point in the container's namespace",
        };
        assert!(stderr.contains(want), "{case}: {stderr}");
        assert_eq!(hook_status(&stderr), Some(10), "{case}: mount: {stderr}");
        assert_eq!(tree(&host_dir), ["root"], "{case}: the host dir was touched");
        assert!(!e.store.containers_dir().join(case).exists());
        assert!(kcache_mounts().is_empty());
    }
}

#[test]
fn gc_removes_an_old_digest_only_after_its_last_container_stops() {
    let Some(e) = env() else { return };
    let old = e.store.add_cache("llama", None, &[90], 1);
    let bundles: Vec<Bundle> = (0..2).map(|i| e.bundle(&format!("gc{i}"))).collect();
    let mut children = Vec::new();
    for (i, b) in bundles.iter().enumerate() {
        b.write_spec(
            &format!("cat /root/.triton/cache/{KEY}/add_kernel.json; {WAIT}"),
            &["HOME=/root"],
            &[("kcache.dev/cache", "llama")],
            kcache_hooks(&e.store, None),
        );
        let mut c = e.runc.spawn(b, &format!("c-gc{i}"));
        wait_ready(b, &mut c);
        children.push(c);
    }
    assert_eq!(refs::list(&e.store.layout, &old).unwrap(), ["c-gc0", "c-gc1"]);
    // A new version is approved: the old digest is garbage once nobody uses it. GC is the
    // store's own, the function kcached's rounds and `kcache cache gc` run.
    let gc = || kcache_core::cache::gc::gc(&e.store.layout, &e.store.state(), false);
    let new = e.store.add_cache("llama", None, &[90], 2);
    assert_ne!(old, new);
    let report = gc();
    assert_eq!(report.kept_in_use, [(old.to_string(), 2)], "{report:?}");
    assert_eq!(report.kept_approved, [new.to_string()]);
    let mut outs = Vec::new();
    for (n, (b, c)) in bundles.iter().zip(children).enumerate().rev() {
        let report = gc();
        assert!(report.removed.is_empty(), "{report:?}");
        assert_eq!(report.kept_in_use, [(old.to_string(), n + 1)]);
        assert!(e.store.layout.record_path(&old).exists());
        outs.push(release(b, c));
    }
    for out in &outs {
        let (stdout, stderr) = text(out);
        assert!(
            out.status.success() && stdout.contains("of cache 1"),
            "{stdout}\n{stderr}"
        );
    }
    let report = gc();
    assert_eq!(report.removed, [old.to_string()], "{report:?}");
    assert!(!e.store.layout.entry_dir(&old).exists());
    assert!(e.store.layout.record_path(&new).exists());
}

#[test]
fn hook_without_opt_in_reads_nothing_but_its_input() {
    // No runc needed: the not-opted-in path, with a store that does not exist.
    let tmp = tempfile::tempdir().unwrap();
    let bundle = tmp.path().join("bundle");
    fs::create_dir_all(&bundle).unwrap();
    fs::write(
        bundle.join("config.json"),
        r#"{"ociVersion":"1.0.2","annotations":{"other":"x"}}"#,
    )
    .unwrap();
    let run = |state: Value| {
        let mut c = std::process::Command::new(hook_bin())
            .args(["--store", "/nonexistent/kcache-store", "--run-dir"])
            .arg(tmp.path().join("run"))
            .arg("prestart")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        c.stdin.take().unwrap().write_all(state.to_string().as_bytes()).unwrap();
        c.wait_with_output().unwrap()
    };
    for state in [
        json!({"ociVersion": "1.0.2", "id": "x", "status": "creating", "pid": 1, "bundle": bundle, "annotations": {"a": "b"}}),
        json!({"ociVersion": "1.0.2", "id": "x", "status": "creating", "pid": 1, "bundle": bundle}),
    ] {
        let out = run(state);
        assert!(out.status.success() && out.stderr.is_empty(), "{out:?}");
    }
    assert!(!tmp.path().join("run").exists());
    let out = run(json!({"not": "a state"}));
    assert_eq!(out.status.code(), Some(3), "input: {out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("kcache-hook: stdin is not an OCI state document: missing field"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "the chain, once: {stderr}");
}

#[test]
fn a_bad_command_line_exits_2_with_the_usage() {
    for (args, want) in [
        (
            &["--bogus"][..],
            "kcache-hook: bad command line: unexpected argument \"--bogus\"\n",
        ),
        (
            &["--store", "rel"],
            "kcache-hook: bad command line: --store needs an absolute path\n",
        ),
    ] {
        let out = std::process::Command::new(hook_bin())
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr, format!("{want}{}\n", kcache_hook::USAGE), "{args:?}");
    }
}

#[test]
fn a_non_root_user_gets_its_home_cache_and_can_add_kernels() {
    let Some(e) = env() else { return };
    let digest = e.store.add_cache("llama", None, &[90], 1);
    let b = e.bundle("b-user");
    fs::create_dir_all(b.rootfs.join("home/u")).unwrap();
    std::os::unix::fs::chown(b.rootfs.join("home/u"), Some(1000), Some(1000)).unwrap();
    b.write_spec_as(
        1000,
        &format!(
            "id -u; cat /home/u/.triton/cache/{KEY}/add_kernel.json; \
             grep -c /home/u/.triton/cache/ /home/u/.triton/cache/{KEY}/{GRP_FILE}; \
             mkdir /home/u/.triton/cache/NEWKEY && echo k > /home/u/.triton/cache/NEWKEY/k.json && echo ADDED; \
             mkdir /home/u/.triton/dump && echo DUMP_OK"
        ),
        &["HOME=/home/u"],
        &[("kcache.dev/cache", "llama")],
        kcache_hooks(&e.store, None),
    );
    // runc under a strict umask: what the hook makes must still be readable by the user.
    let out = std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(format!(
            "umask 077; exec {} --root {} run --bundle {} c-user",
            e.runc.bin.display(),
            e.runc.root.display(),
            b.dir.display()
        ))
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.starts_with("1000\n"), "{stdout}");
    assert!(
        stdout.contains("\n1\n"),
        "the rewritten __grp__ file is readable: {stdout}"
    );
    assert!(stdout.contains("add_kernel.json of cache 1"), "{stdout}");
    assert!(
        stdout.contains("ADDED") && stdout.contains("DUMP_OK"),
        "{stdout}\n{stderr}"
    );
    // The dirs the hook made in the rootfs belong to the container user.
    use std::os::unix::fs::MetadataExt;
    for d in ["home/u/.triton", "home/u/.triton/cache"] {
        assert_eq!(fs::metadata(b.rootfs.join(d)).unwrap().uid(), 1000, "{d}");
    }
    assert!(!e.store.layout.tree_dir(&digest).join("io.triton.cache/NEWKEY").exists());
    assert!(hook_log(&e.store).contains("at /home/u/.triton/cache (from $HOME)"));
}

#[test]
fn a_second_prestart_call_for_the_same_container_keeps_the_first_mount() {
    let Some(e) = env() else { return };
    let digest = e.store.add_cache("llama", None, &[90], 1);
    let b = e.bundle("b-twice");
    b.write_spec(
        &format!("cat /root/.triton/cache/{KEY}/add_kernel.json; grep -c ' - overlay kcache ' /proc/self/mountinfo"),
        &["HOME=/root"],
        &[("kcache.dev/cache", "llama")],
        Value::Null,
    );
    // The hook in both prestart and createRuntime (the same point in runc).
    let mut spec: Value = serde_json::from_slice(&fs::read(b.dir.join("config.json")).unwrap()).unwrap();
    let mut hooks = kcache_hooks(&e.store, None);
    hooks["createRuntime"] = hooks["prestart"].clone();
    spec["hooks"] = hooks;
    fs::write(b.dir.join("config.json"), serde_json::to_vec(&spec).unwrap()).unwrap();
    let out = e.runc.run(&b, "c-twice");
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert_eq!(stdout, "add_kernel.json of cache 1\n1\n", "{stderr}");
    let log = hook_log(&e.store);
    assert!(log.contains("is already mounted at /root/.triton/cache"), "{log}");
    assert!(!e.store.containers_dir().join("c-twice").exists());
    assert!(refs::list(&e.store.layout, &digest).unwrap().is_empty());
}

#[test]
fn concurrent_first_starts_share_one_grp_layer() {
    let Some(e) = env() else { return };
    let digest = e.store.add_cache("llama", None, &[90], 1);
    let n = 4;
    let bundles: Vec<Bundle> = (0..n).map(|i| e.bundle(&format!("par{i}"))).collect();
    for b in &bundles {
        b.write_spec(
            &format!("grep -c /root/.triton/cache/ /root/.triton/cache/{KEY}/{GRP_FILE}; {WAIT}"),
            &["HOME=/root"],
            &[("kcache.dev/cache", "llama")],
            kcache_hooks(&e.store, None),
        );
    }
    let mut children: Vec<_> = bundles
        .iter()
        .enumerate()
        .map(|(i, b)| e.runc.spawn(b, &format!("c-par{i}")))
        .collect();
    for (b, c) in bundles.iter().zip(children.iter_mut()) {
        wait_ready(b, c);
    }
    assert_eq!(refs::list(&e.store.layout, &digest).unwrap().len(), n);
    let grp_root = e.store.layout.entry_dir(&digest).join(GRP_DIR);
    assert_eq!(
        tree(&grp_root).iter().filter(|p| !p.contains('/')).count(),
        1,
        "one layer for one target, no temp dirs left: {:?}",
        tree(&grp_root)
    );
    for (b, c) in bundles.iter().zip(children) {
        let out = release(b, c);
        let (stdout, stderr) = text(&out);
        assert!(out.status.success() && stdout.starts_with("1\n"), "{stdout}\n{stderr}");
    }
    assert!(refs::list(&e.store.layout, &digest).unwrap().is_empty());
    assert!(fs::read_dir(e.store.containers_dir()).unwrap().next().is_none());
}

#[test]
fn a_user_namespaced_container_owns_its_upper_dir_through_the_mapping() {
    let Some(e) = env() else { return };
    e.store.add_cache("llama", None, &[90], 1);
    let b = e.bundle("b-userns");
    use std::os::unix::fs::PermissionsExt;
    // The mapped root is not the owner of the rootfs: let it write /tmp/ready.
    fs::set_permissions(b.rootfs.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
    b.write_spec(
        &format!(
            "cat /root/.triton/cache/{KEY}/add_kernel.json; \
             mkdir /root/.triton/cache/NEWKEY && echo k > /root/.triton/cache/NEWKEY/k.json && echo ADDED; {WAIT}"
        ),
        &["HOME=/root"],
        &[("kcache.dev/cache", "llama")],
        kcache_hooks(&e.store, None),
    );
    let mut spec: Value = serde_json::from_slice(&fs::read(b.dir.join("config.json")).unwrap()).unwrap();
    let map = json!([{"containerID": 0, "hostID": 200000, "size": 65536}]);
    spec["linux"]["namespaces"]
        .as_array_mut()
        .unwrap()
        .push(json!({"type": "user"}));
    spec["linux"]["uidMappings"] = map.clone();
    spec["linux"]["gidMappings"] = map;
    fs::write(b.dir.join("config.json"), serde_json::to_vec(&spec).unwrap()).unwrap();
    let mut child = e.runc.spawn(&b, "c-userns");
    wait_ready(&b, &mut child);
    use std::os::unix::fs::MetadataExt;
    let upper = e.store.containers_dir().join("c-userns/upper");
    assert_eq!(fs::metadata(&upper).unwrap().uid(), 200000);
    assert_eq!(fs::metadata(upper.join("NEWKEY/k.json")).unwrap().uid(), 200000);
    assert_eq!(fs::metadata(b.rootfs.join("root/.triton")).unwrap().uid(), 200000);
    let out = release(&b, child);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}\n{}", hook_log(&e.store));
    assert!(
        stdout.contains("add_kernel.json of cache 1") && stdout.contains("ADDED"),
        "{stdout}"
    );
}

/// The `__grp__` child paths of a cache as the container sees them at `target`: (paths that
/// exist, paths that do not), from [`probe_script`]'s output.
fn children_seen(stdout: &str) -> (Vec<&str>, Vec<&str>) {
    let pick = |tag: &str| {
        stdout
            .lines()
            .filter_map(|l| l.strip_prefix(tag))
            .collect::<Vec<&str>>()
    };
    (pick("CHILD_OK "), pick("CHILD_MISSING "))
}

/// [`probe_script`]'s output shows cache 1 readable at `target`, with every `__grp__` child
/// path there.
fn assert_cache_seen_at(stdout: &str, target: &str) {
    for f in FILES {
        assert!(stdout.contains(&format!("{f} of cache 1")), "{f}: {stdout}");
    }
    let (ok, missing) = children_seen(stdout);
    assert!(missing.is_empty() && ok.len() == FILES.len(), "{stdout}");
    assert!(ok.iter().all(|p| p.starts_with(&format!("{target}/{KEY}/"))), "{ok:?}");
}

/// Caches whose image does not say where Triton wrote them: one copied elsewhere before
/// `kcache cache build` (the label names the copy; the `__grp__` files name Triton's dir) and a
/// plain MCV/GKM image (no label). Mounted at yet another path, both get child paths that exist
/// there. Group files that disagree on the root are refused with the reason.
#[test]
fn group_paths_are_relocated_from_the_dir_the_group_files_name() {
    let Some(e) = env() else { return };
    let triton_dir = "/root/.triton/cache";
    for (n, name, label) in [(1, "copied", Some("/tmp/copied-cache")), (2, "mcv", None)] {
        let spec = CacheSpec {
            grp_root: triton_dir,
            label,
            ..CacheSpec::default()
        };
        e.store.add_cache_with(name, None, n, spec);
    }
    let target = "/home/u/.triton/cache";
    for name in ["copied", "mcv"] {
        let b = e.bundle(&format!("b-{name}"));
        fs::create_dir_all(b.rootfs.join("home/u")).unwrap();
        b.write_spec(
            &probe_script(target),
            &["HOME=/home/u"],
            &[("kcache.dev/cache", name), ("kcache.dev/cache-required", "true")],
            kcache_hooks(&e.store, None),
        );
        let out = e.runc.run(&b, &format!("c-{name}"));
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{name}: {stdout}\n{stderr}");
        let (ok, missing) = children_seen(&stdout);
        assert!(missing.is_empty(), "{name}: {stdout}");
        assert_eq!(ok.len(), FILES.len(), "{name}: {stdout}");
        for f in FILES {
            assert!(
                ok.contains(&format!("{target}/{KEY}/{f}").as_str()),
                "{name}: {f}: {ok:?}"
            );
        }
    }

    // Two group files that name different roots: no rewrite is right for both.
    let digest = e.store.add_cache_with(
        "mixed",
        None,
        3,
        CacheSpec {
            grp_root: triton_dir,
            ..CacheSpec::default()
        },
    );
    let other = e.store.layout.tree_dir(&digest).join("io.triton.cache/OTHERKEY");
    fs::create_dir_all(&other).unwrap();
    fs::write(
        other.join("__grp__k.json"),
        r#"{"child_paths": {"k.json": "/opt/cache/OTHERKEY/k.json"}}"#,
    )
    .unwrap();
    let (ok, _, stderr) = run_without_cache(
        &e,
        "mixed",
        &[("kcache.dev/cache", "mixed"), ("kcache.dev/cache-required", "true")],
        &["HOME=/home/u"],
    );
    assert!(!ok);
    assert!(
        stderr.contains("cannot rewrite the __grp__ files for /home/u/.triton/cache")
            && stderr.contains("disagree on the cache dir Triton wrote them in")
            && stderr.contains("/opt/cache")
            && stderr.contains(triton_dir),
        "{stderr}"
    );
    assert_eq!(hook_status(&stderr), Some(8), "store (__grp__ layer): {stderr}");
}

/// Writes a Triton package with `version` into a bundle's rootfs at `<pkgs>/triton`.
fn fake_triton(b: &Bundle, pkgs: &str, version: &str) {
    let dir = b.rootfs.join(pkgs).join("triton");
    fs::create_dir_all(&dir).unwrap();
    fs::write(
        dir.join("__init__.py"),
        format!("\"\"\"isort:skip_file\"\"\"\n__version__ = '{version}'\n\nfrom .runtime import autotune\n"),
    )
    .unwrap();
}

/// A cache built with Triton 3.1.0. A container with Triton 3.0.0 does not get it (a required
/// one does not start, with the reason); one whose venv has 3.1.0 does, even with an older
/// system Triton beside it; one without any Triton gets it, with a note that nothing was checked.
#[test]
fn the_containers_triton_must_be_the_one_the_cache_was_built_with() {
    let Some(e) = env() else { return };
    let spec = CacheSpec {
        triton_version: Some("3.1.0"),
        ..CacheSpec::default()
    };
    let digest = e.store.add_cache_with("llama", None, 1, spec);
    let script = format!("[ -e /root/.triton/cache/{KEY}/add_kernel.json ] && echo HAS_CACHE || echo NO_CACHE");
    let run = |name: &str, required: &str, env: &[&str], tritons: &[(&str, &str)]| {
        let b = e.bundle(name);
        for (pkgs, version) in tritons {
            fake_triton(&b, pkgs, version);
        }
        b.write_spec(
            &script,
            env,
            &[("kcache.dev/cache", "llama"), ("kcache.dev/cache-required", required)],
            kcache_hooks(&e.store, None),
        );
        let out = e.runc.run(&b, name);
        let (stdout, stderr) = text(&out);
        assert!(
            !e.store.containers_dir().join(name).exists(),
            "{name}: container dir left"
        );
        (out.status.success(), stdout, stderr.replace("\\\"", "\""))
    };
    let old = [("usr/local/lib/python3.11/site-packages", "3.0.0")];
    let reason = "cache \"llama\" was built with Triton 3.1.0, the container has Triton 3.0.0 \
                  (/usr/local/lib/python3.11/site-packages/triton): every kernel would miss";

    let (ok, stdout, stderr) = run("tv-required", "true", &["HOME=/root"], &old);
    assert!(!ok, "started: {stdout}");
    let want = format!(
        "kcache-hook: cache \"llama\" (no pod namespace) is required (kcache.dev/cache-required) but cannot be mounted: {reason}"
    );
    assert!(stderr.contains(&want), "runc said:\n{stderr}\nwant: {want}");
    assert_eq!(hook_status(&stderr), Some(9), "triton: {stderr}");

    let (ok, stdout, stderr) = run("tv-optional", "false", &["HOME=/root"], &old);
    assert!(ok, "{stderr}");
    assert_eq!(stdout.trim(), "NO_CACHE");
    let log = hook_log(&e.store);
    assert!(
        log.contains(&format!(
            "starting without cache \"llama\" (no pod namespace): {reason}"
        )),
        "{log}"
    );

    let venv = [
        ("usr/local/lib/python3.11/site-packages", "3.0.0"),
        ("opt/venv/lib/python3.12/site-packages", "3.1.0"),
    ];
    let (ok, stdout, stderr) = run("tv-same", "true", &["HOME=/root", "VIRTUAL_ENV=/opt/venv"], &venv);
    assert!(ok, "{stderr}");
    assert_eq!(stdout.trim(), "HAS_CACHE");
    assert!(
        hook_log(&e.store).contains("Triton 3.1.0 at /opt/venv/lib/python3.12/site-packages/triton matches the cache"),
        "{}",
        hook_log(&e.store)
    );

    let (ok, stdout, stderr) = run("tv-none", "true", &["HOME=/root"], &[]);
    assert!(ok, "{stderr}");
    assert_eq!(stdout.trim(), "HAS_CACHE");
    assert!(
        hook_log(&e.store).contains("the cache was built with Triton 3.1.0; no triton/__init__.py found"),
        "{}",
        hook_log(&e.store)
    );
    assert!(refs::list(&e.store.layout, &digest).unwrap().is_empty());
}

/// `kcache.dev/cache-path` puts the cache at that path (normalised), whatever the env says.
#[test]
fn the_path_annotation_puts_the_cache_there() {
    let Some(e) = env() else { return };
    let digest = e.store.add_cache("llama", None, &[90], 1);
    let b = e.bundle("b-path");
    let target = "/models/triton-cache";
    b.write_spec(
        &format!(
            "{} [ -e /root/.triton ] && echo HOME_CACHE; [ -e /env-cache ] && echo ENV_CACHE; true",
            probe_script(target)
        ),
        &["HOME=/root", "TRITON_CACHE_DIR=/env-cache"],
        &[
            ("kcache.dev/cache", "llama"),
            ("kcache.dev/cache-path", "/models//triton-cache/"),
            ("kcache.dev/cache-required", "true"),
        ],
        kcache_hooks(&e.store, None),
    );
    let out = e.runc.run(&b, "c-path");
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert_cache_seen_at(&stdout, target);
    assert!(stdout.contains("WROTE") && stdout.contains("APPENDED"), "{stdout}");
    let mounts: Vec<&str> = stdout.lines().filter(|l| l.starts_with("MOUNT ")).collect();
    assert!(
        mounts.len() == 1 && mounts[0].contains(&format!(" {target} ")),
        "{stdout}"
    );
    assert!(
        !stdout.contains("HOME_CACHE") && !stdout.contains("ENV_CACHE"),
        "{stdout}"
    );
    assert!(b.rootfs.join("models/triton-cache").is_dir());
    assert!(!b.rootfs.join("env-cache").exists() && !b.rootfs.join("root/.triton").exists());
    assert!(
        hook_log(&e.store).contains(&format!("at {target} (from kcache.dev/cache-path)")),
        "{}",
        hook_log(&e.store)
    );
    assert!(e.store.layout.grp_dir(&digest, target).is_dir());
}

/// A vLLM cache goes to the container's `VLLM_CACHE_ROOT` (not `TRITON_CACHE_DIR`), with its
/// `__grp__` paths moved there from the dir it was built in.
#[test]
fn a_vllm_cache_goes_to_vllm_cache_root() {
    let Some(e) = env() else { return };
    let built_in = "/root/.cache/vllm";
    let spec = CacheSpec {
        kind: "vllm",
        grp_root: built_in,
        label: Some(built_in),
        ..CacheSpec::default()
    };
    let digest = e.store.add_cache_with("qwen", None, 1, spec);
    let cache_tree = e.store.layout.tree_dir(&digest).join("io.vllm.cache");
    assert!(cache_tree.join(KEY).is_dir());
    let b = e.bundle("b-vllm");
    let target = "/data/vllm-cache";
    b.write_spec(
        &format!(
            "{} [ -e /triton-elsewhere ] && echo TRITON_DIR; [ -e /root/.cache ] && echo HOME_CACHE; true",
            probe_script(target)
        ),
        &[
            "HOME=/root",
            "VLLM_CACHE_ROOT=/data/vllm-cache",
            "TRITON_CACHE_DIR=/triton-elsewhere",
        ],
        &[("kcache.dev/cache", "qwen"), ("kcache.dev/cache-required", "true")],
        kcache_hooks(&e.store, None),
    );
    let out = e.runc.run(&b, "c-vllm");
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert_cache_seen_at(&stdout, target);
    assert!(!stdout.contains(built_in), "{stdout}");
    let mounts: Vec<&str> = stdout.lines().filter(|l| l.starts_with("MOUNT ")).collect();
    assert!(
        mounts.len() == 1 && mounts[0].contains(&format!(" {target} ")),
        "{stdout}"
    );
    let grp = e.store.layout.grp_dir(&digest, target);
    assert!(
        mounts[0].contains(&format!("lowerdir={}:{}", grp.display(), cache_tree.display())),
        "{}",
        mounts[0]
    );
    assert!(
        !stdout.contains("TRITON_DIR") && !stdout.contains("HOME_CACHE"),
        "{stdout}"
    );
    assert!(
        hook_log(&e.store).contains(&format!("at {target} (from $VLLM_CACHE_ROOT)")),
        "{}",
        hook_log(&e.store)
    );
    assert_eq!(
        tree(&cache_tree),
        [
            KEY.to_string(),
            format!("{KEY}/{GRP_FILE}"),
            format!("{KEY}/{}", FILES[1]),
            format!("{KEY}/{}", FILES[0]),
            format!("{KEY}/{}", FILES[2]),
        ],
        "the read-only cache is unchanged"
    );
}

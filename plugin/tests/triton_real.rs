//! Real Triton caches through the real node path, checked by Triton's own cache lookup:
//!
//! 1. scripts/triton-caches.sh compiles caches with the `triton` wheel from PyPI (no GPU):
//!    Triton 3.9.0 for sm_80, sm_90, gfx90a and gfx942 (28 kernels: a vector add, a matmul at
//!    three block-size configs, a kernel with three constexpr specialisations), compiled in one
//!    dir and copied to another (its `__grp__` files name a dir that no longer exists); a
//!    3.9.0 sm_90-only cache; and the same 28 kernels from Triton 3.8.0;
//! 2. `kcache cache build --push` makes images of them in a loopback registry, `kcache sign`
//!    signs them, caches.d approves them, and kcached (enforce policy, a file-pinned inventory
//!    with one sm_80 GPU) pulls each by verified digest into its store;
//! 3. kcache-hook (prestart + poststop of a real runc container, as containerd's CRI runs it)
//!    mounts the cache at `TRITON_CACHE_DIR`. The venv and its Python are bind-mounted read-only
//!    at their host paths, and inside the container, with the container's view of the paths,
//!    `triton_caches.py check` computes each kernel's cache key as `triton.compile` does, calls
//!    `FileCacheManager(key).get_group(...)` and `get_file` for every file Triton wrote, and
//!    `triton.compile` itself (which reports a cache hit through its listener).
//!
//! Cases: the 3.9.0 cache in a 3.9.0 container (every kernel hits at the mount path); the 3.8.0
//! cache in a 3.9.0 container (the hook says every kernel would miss and does not mount it, and
//! Triton 3.9.0's keys are not the 3.8.0 keys); the 3.8.0 cache mounted in a 3.8.0 container
//! (3.8.0 hits every kernel; 3.9.0 in the same container misses every one: the keys differ);
//! the sm_90-only cache on the sm_80 node (refused, with the reason).
//!
//! Needs root, runc, busybox-static, python3 (>= 3.10, venv) and PyPI the first time; under
//! `CI=true` a missing one fails the test.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

use kcache_core::cache::store::{CacheState, NodeCaches, StoreLayout};
use kcache_tests::{
    containerd::{is_root, on_path},
    images,
    kcached::{Kcached, KcachedConfig},
    triton::{RealCaches, Report, OTHER_VERSION, VERSION},
    TestRegistry,
};
use serde_json::{json, Value};

const TARGET: &str = "/cache/triton";
const NS: &str = "ml";
/// Where the check program and the expected files are bind-mounted in the container.
const PROG_DIR: &str = "/opt/kcache-triton";

fn kcache(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kcache"))
        .args(args)
        .env("COSIGN_PASSWORD", "")
        .output()
        .unwrap()
}

fn ok(out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The kcache-hook binary, built fresh (it is another package of the workspace).
fn hook_binary() -> PathBuf {
    kcache_tests::warm::build_hook(Path::new(env!("CARGO_BIN_EXE_kcached")))
}

/// root, runc and busybox-static, or skip (a panic under CI=true).
fn prerequisites(test: &str) -> Option<PathBuf> {
    let runc = on_path("runc");
    let mut missing = Vec::new();
    if !is_root() {
        missing.push("root");
    }
    if runc.is_none() {
        missing.push("runc");
    }
    if !images::have_busybox_static() {
        missing.push("busybox-static");
    }
    if missing.is_empty() {
        return runc;
    }
    let msg = format!("{test} needs {}", missing.join(", "));
    assert!(std::env::var("CI").as_deref() != Ok("true"), "CI=true: {msg}");
    eprintln!("skipping: {msg}");
    None
}

/// Builds `dir` into `image`, pushes it and signs it with `key` (`kcache sign`); returns the
/// build's stdout and stderr.
fn build_push_sign(reg: &TestRegistry, dir: &Path, image: &str, key: &Path, out: &Path) -> (String, String) {
    let host = reg.host();
    let built = kcache(&[
        "cache",
        "build",
        dir.to_str().unwrap(),
        "--image",
        image,
        "--push",
        "--insecure-registry",
        &host,
        "--out",
        out.to_str().unwrap(),
    ]);
    let stdout = ok(&built);
    ok(&kcache(&[
        "sign",
        image,
        "--key",
        key.to_str().unwrap(),
        "--insecure-registry",
        &host,
    ]));
    (stdout, String::from_utf8_lossy(&built.stderr).into_owned())
}

/// A runc bundle: a busybox rootfs whose /usr is the host's (read-only), with the venvs and
/// their Python bind-mounted read-only at their host paths, the check program at [`PROG_DIR`],
/// and kcache-hook as prestart and poststop hook against kcached's store.
struct Node {
    base: PathBuf,
    runc: PathBuf,
    hook: PathBuf,
    store: PathBuf,
    run: PathBuf,
    mounts: Vec<PathBuf>,
    prog_files: Vec<PathBuf>,
}

struct Ran {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Node {
    fn run(&self, id: &str, annotations: &[(&str, &str)], env: &[String], script: &str) -> Ran {
        let dir = self.base.join(id);
        let rootfs = dir.join("rootfs");
        for d in ["bin", "proc", "dev", "tmp", "root", "etc", "usr"] {
            fs::create_dir_all(rootfs.join(d)).unwrap();
        }
        // As the host's merged /usr: /lib and /lib64 are links into it.
        std::os::unix::fs::symlink("usr/lib", rootfs.join("lib")).unwrap();
        std::os::unix::fs::symlink("usr/lib64", rootfs.join("lib64")).unwrap();
        fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
        std::os::unix::fs::symlink("busybox", rootfs.join("bin/sh")).unwrap();
        fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
        let ro = |src: &Path, dst: &Path| json!({"destination": dst, "type": "bind", "source": src, "options": ["rbind", "ro", "nosuid", "nodev"]});
        let mut mounts = vec![
            json!({"destination": "/proc", "type": "proc", "source": "proc"}),
            json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755"]}),
            ro(Path::new("/usr"), Path::new("/usr")),
        ];
        for m in &self.mounts {
            mounts.push(ro(m, m));
        }
        for f in &self.prog_files {
            mounts.push(ro(f, &Path::new(PROG_DIR).join(f.file_name().unwrap())));
        }
        let hook = |stage: &str| {
            json!({"path": self.hook, "timeout": 30, "args": [
                "kcache-hook", "--store", self.store, "--run-dir", self.run,
                "--log-file", self.base.join("hook.log"), stage]})
        };
        let mut ann: serde_json::Map<String, Value> =
            annotations.iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
        ann.insert("io.kubernetes.pod.namespace".into(), json!(NS));
        let mut envs = vec![
            "PATH=/bin:/usr/bin".to_string(),
            "HOME=/root".into(),
            format!("TRITON_CACHE_DIR={TARGET}"),
            "PYTHONDONTWRITEBYTECODE=1".into(),
        ];
        envs.extend(env.iter().cloned());
        let spec = json!({
            "ociVersion": "1.0.2",
            "process": {"terminal": false, "user": {"uid": 0, "gid": 0},
                        "args": ["/bin/sh", "-c", script], "env": envs, "cwd": "/"},
            "root": {"path": "rootfs", "readonly": false},
            "hostname": "triton",
            "mounts": mounts,
            "annotations": ann,
            "hooks": {"prestart": [hook("prestart")], "poststop": [hook("poststop")]},
            "linux": {"namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, {"type": "network"}]}
        });
        fs::write(dir.join("config.json"), serde_json::to_vec_pretty(&spec).unwrap()).unwrap();
        let out = Command::new(&self.runc)
            .arg("--root")
            .arg(self.base.join("runc-state"))
            .args(["run", "--bundle"])
            .arg(&dir)
            .arg(id)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        Ran {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).replace("\\\"", "\""),
        }
    }

    fn hook_log(&self) -> String {
        fs::read_to_string(self.base.join("hook.log")).unwrap_or_default()
    }
}

/// The container command that runs `caches`' Triton on `expected` (a file under [`PROG_DIR`]).
fn check_cmd(caches: &RealCaches, expected: &str) -> String {
    format!(
        "{} {PROG_DIR}/triton_caches.py check {PROG_DIR}/{expected}",
        caches.python().display()
    )
}

/// Every kernel of `expected` found by Triton, complete, at [`TARGET`], and compile() hit.
fn assert_all_hit(report: &Report, expected: &Value, version: &str) {
    let kernels = expected["kernels"].as_array().unwrap();
    assert_eq!(report.triton_version(), version);
    assert_eq!(report.kernels(), kernels.len() as u64);
    for (r, k) in report.results().iter().zip(kernels) {
        assert_eq!(r["id"], k["id"]);
        assert_eq!(r["key"], k["key"], "{r}");
        assert_eq!(r["problems"], json!([]), "{} {}: {r}", k["id"], k["target"]);
        assert_eq!(r["compile_cache_hit"], json!(true), "{r}");
        let children: Vec<&str> = r["children"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap())
            .collect();
        assert_eq!(children.len(), k["files"].as_array().unwrap().len(), "{r}");
        let dir = format!("{TARGET}/{}/", k["key"].as_str().unwrap());
        assert!(children.iter().all(|c| c.starts_with(&dir)), "{r}");
    }
    assert_eq!(report.hits(), kernels.len() as u64);
}

/// Triton computed other keys than the ones in `expected`, and found none of them.
fn assert_all_miss(report: &Report, expected: &Value, version: &str) {
    let kernels = expected["kernels"].as_array().unwrap();
    assert_eq!(report.triton_version(), version);
    assert_eq!(report.kernels(), kernels.len() as u64);
    assert_eq!(report.hits(), 0);
    for (r, k) in report.results().iter().zip(kernels) {
        assert_ne!(r["key"], k["key"], "{r}");
        assert_eq!(r["same_key"], json!(false));
        let first = r["problems"][0].as_str().unwrap_or_default();
        assert!(first.starts_with("get_group(") && first.contains("is None"), "{r}");
        assert_ne!(r["compile_cache_hit"], json!(true), "{r}");
    }
    assert_eq!(
        report.results()[0]["compile_cache_hit"],
        json!(false),
        "triton.compile recompiled"
    );
}

fn wait_settled(layout: &StoreLayout, names: &[&str], kcached: &Kcached) -> NodeCaches {
    let start = Instant::now();
    loop {
        if let Ok(state) = layout.read_state() {
            let settled = names.iter().all(|n| {
                state
                    .caches
                    .iter()
                    .any(|c| c.name == *n && c.state != CacheState::Pending)
            });
            if settled {
                return state;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "kcached did not settle {names:?}:\n{}",
            kcached.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn real_triton_caches_hit_in_a_runc_container_through_the_node_path() {
    let test = "real_triton_caches_hit_in_a_runc_container_through_the_node_path";
    let Some(runc) = prerequisites(test) else { return };
    let (Some(cur), Some(old)) = (RealCaches::get(VERSION), RealCaches::get(OTHER_VERSION)) else {
        return;
    };
    let t0 = Instant::now();
    let step = |what: &str| eprintln!("[{:>6.1}s] {what}", t0.elapsed().as_secs_f64());
    step("real caches ready");
    let hook = hook_binary();
    let reg = TestRegistry::start();
    let host = reg.host();
    let tmp = tempfile::Builder::new().prefix("kc-triton").tempdir_in("/tmp").unwrap();
    let dir = tmp.path();
    ok(&kcache(&["generate-key-pair", "--dir", dir.to_str().unwrap()]));
    let key = dir.join("cosign.key");

    // 1 + 2. Images of the real caches, pushed and signed.
    let all = cur.set("all");
    assert!(
        !cur.all_compiled_in().exists(),
        "the dir the cache was compiled in is gone"
    );
    let grp = fs::read_dir(&all)
        .unwrap()
        .flatten()
        .flat_map(|d| fs::read_dir(d.path()).unwrap().flatten())
        .find(|f| f.file_name().to_string_lossy().starts_with("__grp__"))
        .unwrap();
    assert!(
        fs::read_to_string(grp.path())
            .unwrap()
            .contains(cur.all_compiled_in().to_str().unwrap()),
        "the __grp__ files name the dir Triton compiled in"
    );
    let images = [
        ("triton", format!("{host}/caches/triton:{VERSION}"), all.clone()),
        (
            "triton-h100",
            format!("{host}/caches/triton-h100:{VERSION}"),
            cur.set("sm90"),
        ),
        (
            "triton-old",
            format!("{host}/caches/triton:{OTHER_VERSION}"),
            old.set("all"),
        ),
    ];
    for (name, image, src) in &images {
        let (built, warnings) = build_push_sign(&reg, src, image, &key, &dir.join(format!("img-{name}")));
        let (kernels, targets): (&str, &[&str]) = match *name {
            "triton-h100" => ("2 kernels", &["cuda:sm_90"]),
            _ => ("28 kernels", &["cuda:sm_80", "cuda:sm_90", "hip:gfx90a", "hip:gfx942"]),
        };
        assert!(built.contains(kernels), "{built}");
        let listed = built
            .split("targets [")
            .nth(1)
            .and_then(|t| t.split(']').next())
            .unwrap();
        let mut listed: Vec<&str> = listed.split(", ").collect();
        listed.sort();
        assert_eq!(listed, targets, "{built}");
        if *name == "triton" {
            // The relocation is noticed: the __grp__ files name the dir Triton compiled in.
            let compiled_in = format!("the __grp__ files point into {}", cur.all_compiled_in().display());
            assert!(warnings.contains(&compiled_in), "{warnings}");
        }
    }

    step("images built, pushed, signed");
    // kcached: enforce, the key, the three caches approved for NS, one sm_80 GPU (file-pinned).
    fs::write(
        dir.join("policy.yaml"),
        format!(
            "mode: enforce\ndefault: deny\nrules:\n  - name: caches\n    images: [\"{host}/caches/*\"]\n    authorities:\n      - key: {{path: cosign.pub}}\n    transparencyLog: off\n"
        ),
    )
    .unwrap();
    let caches_d = dir.join("caches.d");
    fs::create_dir_all(&caches_d).unwrap();
    for (name, image, _) in &images {
        fs::write(
            caches_d.join(format!("{name}.yaml")),
            format!("name: {name}\nnamespace: {NS}\nimage: {image}\n"),
        )
        .unwrap();
    }
    fs::write(
        dir.join("gpus.json"),
        r#"{"source":"file","gpus":[{"id":"GPU-a100","index":0,"name":"NVIDIA A100","backend":"cuda","arch":80,"warp_size":32}]}"#,
    )
    .unwrap();
    let kdir = dir.join("kcached");
    let kcached = Kcached::start(
        Path::new(env!("CARGO_BIN_EXE_kcached")),
        &kdir,
        KcachedConfig {
            policy: Some(dir.join("policy.yaml")),
            insecure: vec![host.clone()],
            args: vec![
                "--caches-dir".into(),
                caches_d.to_string_lossy().into_owned(),
                "--gpu-inventory".into(),
                dir.join("gpus.json").to_string_lossy().into_owned(),
            ],
            ..KcachedConfig::default()
        },
    );
    let layout = StoreLayout::new(kdir.join("caches"), kdir.join("run"));
    let state = wait_settled(&layout, &["triton", "triton-h100", "triton-old"], &kcached);
    let by_name = |n: &str| state.caches.iter().find(|c| c.name == n).unwrap();
    for n in ["triton", "triton-old"] {
        let c = by_name(n);
        assert_eq!(c.state, CacheState::Ready, "{c:?}\n{}", kcached.log());
        assert_eq!(c.compatible_gpus, ["GPU-a100"], "{c:?}");
        let record = layout.read_record(c.digest.as_ref().unwrap()).unwrap().unwrap();
        let want = if n == "triton" { VERSION } else { OTHER_VERSION };
        assert_eq!(record.requirements.triton_version.as_deref(), Some(want));
        assert_eq!(record.verification.rule, "caches");
    }
    let h100 = by_name("triton-h100");
    assert!(h100.compatible_gpus.is_empty(), "{h100:?}");
    let h100_reason = "GPU-a100: cache has sm_90; GPU is sm_80";

    // The two expected files share a name: the old one goes in under another.
    let old_expected = dir.join("old.all.expected.json");
    fs::copy(old.expected_path("all"), &old_expected).unwrap();
    step("kcached settled");
    // kcache cache ls / inspect on the real caches: kernels per target, Triton version, sizes.
    let store_args = [
        "--store",
        layout.root().to_str().unwrap(),
        "--run-dir",
        layout.run_dir().to_str().unwrap(),
    ];
    let ls = ok(&kcache(&[&["cache", "ls"][..], &store_args].concat()));
    assert!(
        ls.contains(&format!(
            "28 kernels, {}, triton {VERSION}, cuda:sm_80 7, cuda:sm_90 7, hip:gfx90a 7, hip:gfx942 7",
            kcache_core::cache::summary::human_bytes(
                kcache_core::cache::summary::summarize_dir(&all, 0).unwrap().bytes
            )
        )),
        "{ls}"
    );
    assert!(ls.contains(&format!("triton {OTHER_VERSION}, ")), "{ls}");
    assert!(ls.contains("2 kernels, ") && ls.contains("cuda:sm_90 2"), "{ls}");
    let inspect = |name: &str| {
        let out = ok(&kcache(
            &[
                &["cache", "inspect", name, "-n", NS, "--output", "json", "--gpus"][..],
                &[dir.join("gpus.json").to_str().unwrap()],
                &store_args,
            ]
            .concat(),
        ));
        serde_json::from_str::<Value>(&out).unwrap()
    };
    let i = inspect("triton");
    let k = &i["kernels"];
    assert_eq!(k["kernels"], 28);
    assert_eq!(k["triton_versions"], json!([VERSION]));
    let expected = cur.expected("all");
    for t in k["targets"].as_array().unwrap() {
        let n = expected["kernels"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["target"] == t["target"])
            .count();
        assert_eq!(t["kernels"], n as u64, "{t}");
    }
    let names: Vec<(&str, u64)> = k["names"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["name"].as_str().unwrap(), n["kernels"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        names,
        [("bias_act_kernel", 12), ("matmul_kernel", 12), ("add_kernel", 4)]
    );
    let largest = k["largest"].as_array().unwrap();
    assert_eq!(largest.len(), 5);
    assert!(largest.iter().all(|l| l["name"] == "matmul_kernel"), "{largest:?}");
    let h = inspect("triton-h100");
    assert_eq!(h["compatible_gpus"], json!([]));
    assert_eq!(h["incompatible_gpus"][0]["reason"], "cache has sm_90; GPU is sm_80");
    assert_eq!(h["kernels"]["kernels"], 2);
    let node = Node {
        base: dir.join("node"),
        runc,
        hook,
        store: layout.root().to_path_buf(),
        run: layout.run_dir().to_path_buf(),
        mounts: cur.mounts().into_iter().chain(old.mounts()).collect(),
        prog_files: vec![cur.program(), cur.expected_path("all"), old_expected],
    };
    fs::create_dir_all(&node.base).unwrap();
    let venv_env = |c: &RealCaches| format!("VIRTUAL_ENV={}", c.venv.display());

    // 3a. The 3.9.0 cache (compiled elsewhere, relocated) in a 3.9.0 container: every kernel hits.
    let ran = node.run(
        "warm",
        &[("kcache.dev/cache", "triton"), ("kcache.dev/cache-required", "true")],
        &[venv_env(&cur)],
        &format!(
            "grep ' {TARGET} ' /proc/mounts | grep -q overlay && echo MOUNTED; {}",
            check_cmd(&cur, "all.expected.json")
        ),
    );
    assert!(ran.ok, "{}\n{}\n{}", ran.stdout, ran.stderr, node.hook_log());
    assert!(ran.stdout.starts_with("MOUNTED\n"), "{}", ran.stdout);
    assert_all_hit(&Report::parse(&ran.stdout), &cur.expected("all"), VERSION);
    let log = node.hook_log();
    assert!(
        log.contains(&format!("Triton {VERSION} at {}/lib/", cur.venv.display())) && log.contains("matches the cache"),
        "{log}"
    );

    step("3a done");
    // 3b. The 3.8.0 cache in a 3.9.0 container: the hook says why it would miss and does not
    // mount it; Triton 3.9.0's keys are not the ones 3.8.0 wrote.
    let ran = node.run(
        "old-in-new",
        &[("kcache.dev/cache", "triton-old")],
        &[venv_env(&cur)],
        &format!(
            "grep -q ' {TARGET} ' /proc/mounts && echo MOUNTED; {}",
            check_cmd(&cur, "old.all.expected.json")
        ),
    );
    assert!(ran.ok, "{}\n{}", ran.stdout, ran.stderr);
    assert!(!ran.stdout.contains("MOUNTED"), "{}", ran.stdout);
    let warning = format!(
        "starting without cache \"triton-old\" (namespace {NS}): cache \"triton-old\" was built with Triton {OTHER_VERSION}, \
         the container has Triton {VERSION} ({}/lib/",
        cur.venv.display()
    );
    let log = node.hook_log();
    assert!(log.contains(&warning), "{warning}\nnot in\n{log}");
    assert!(log.contains("every kernel would miss"), "{log}");
    assert_all_miss(&Report::parse(&ran.stdout), &old.expected("all"), VERSION);

    step("3b done");
    // 3c. The same cache mounted in a 3.8.0 container: 3.8.0 hits every kernel, 3.9.0 in the same
    // container misses every one, on the same mounted files.
    let ran = node.run(
        "old-in-old",
        &[
            ("kcache.dev/cache", "triton-old"),
            ("kcache.dev/cache-required", "true"),
        ],
        &[venv_env(&old)],
        &format!(
            "{} && echo '---' && {}",
            check_cmd(&old, "old.all.expected.json"),
            check_cmd(&cur, "old.all.expected.json")
        ),
    );
    assert!(ran.ok, "{}\n{}\n{}", ran.stdout, ran.stderr, node.hook_log());
    let (with_old, with_cur) = ran.stdout.split_once("\n---\n").unwrap();
    assert_all_hit(&Report::parse(with_old), &old.expected("all"), OTHER_VERSION);
    assert_all_miss(&Report::parse(with_cur), &old.expected("all"), VERSION);

    step("3c done");
    // 3d. sm_90 only, on an sm_80 node: refused with the reason, required or not.
    let ran = node.run(
        "h100-required",
        &[
            ("kcache.dev/cache", "triton-h100"),
            ("kcache.dev/cache-required", "true"),
        ],
        &[venv_env(&cur)],
        "echo STARTED",
    );
    assert!(!ran.ok && !ran.stdout.contains("STARTED"), "{}", ran.stdout);
    for part in [
        format!("cache \"triton-h100\" (namespace {NS}) is required (kcache.dev/cache-required) but cannot be mounted"),
        format!("incompatible with every GPU on the node: {h100_reason}"),
    ] {
        assert!(ran.stderr.contains(&part), "{part}\nnot in\n{}", ran.stderr);
    }
    let ran = node.run(
        "h100-optional",
        &[("kcache.dev/cache", "triton-h100")],
        &[venv_env(&cur)],
        &format!("[ -e {TARGET} ] && echo HAS_CACHE; echo STARTED"),
    );
    assert!(ran.ok, "{}", ran.stderr);
    assert_eq!(ran.stdout.trim(), "STARTED");
    assert!(node.hook_log().contains(h100_reason), "{}", node.hook_log());

    step("3d done");
    // Every container is gone and released its cache.
    assert!(
        !layout.run_dir().join("containers").exists()
            || fs::read_dir(layout.run_dir().join("containers")).unwrap().count() == 0
    );
    drop(kcached);
}

/// The same hit through containerd's CRI, the way the kubelet drives it: kcached as the CRI
/// snapshotter (enforce), kcache-hook in the base runtime spec from `kcache install containerd`,
/// a pod annotated `kcache.dev/cache: triton` whose container has the venv and its Python
/// mounted read-only (CRI mounts) and runs Triton's lookup at `TRITON_CACHE_DIR`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_triton_cache_hits_in_a_cri_pod() {
    use kcache_core::cosign::sign::sign_and_push;
    use kcache_tests::{
        containerd::{prerequisites as ctd_prerequisites, Containerd, ContainerdConfig, CriConfig},
        cri::{self, pb, Cri},
    };

    let test = "real_triton_cache_hits_in_a_cri_pod";
    let Some(programs) = ctd_prerequisites(test, &["runc", "containerd-shim-runc-v2"]) else {
        return;
    };
    if prerequisites(test).is_none() {
        return;
    }
    let Some(cur) = RealCaches::get(VERSION) else { return };
    let hook = hook_binary();
    let reg = TestRegistry::start();
    let host = reg.host();
    let tmp = tempfile::Builder::new().prefix("kc-tcri").tempdir_in("/tmp").unwrap();
    let dir = tmp.path();
    let key = kcache_tests::warm::signed_e2e_images(&reg, dir).await;
    let image = format!("{host}/caches/triton:{VERSION}");
    let out = kcache(&[
        "cache",
        "build",
        cur.set("all").to_str().unwrap(),
        "--image",
        &image,
        "--push",
        "--insecure-registry",
        &host,
        "--out",
        dir.join("img").to_str().unwrap(),
    ]);
    ok(&out);
    sign_and_push(
        &reg.client(),
        &key,
        &reg.reference(&format!("caches/triton:{VERSION}")),
        false,
    )
    .await
    .unwrap();
    let caches_d = dir.join("caches.d");
    fs::create_dir_all(&caches_d).unwrap();
    fs::write(
        caches_d.join("triton.yaml"),
        format!("name: triton\nnamespace: kcache-e2e\nimage: {image}\n"),
    )
    .unwrap();
    fs::write(
        dir.join("gpus.json"),
        r#"{"source":"file","gpus":[{"id":"GPU-h100","index":0,"name":"NVIDIA H100","backend":"cuda","arch":90,"warp_size":32}]}"#,
    )
    .unwrap();
    let kdir = dir.join("kcached");
    let kcached = Kcached::start(
        Path::new(env!("CARGO_BIN_EXE_kcached")),
        &kdir,
        KcachedConfig {
            policy: Some(dir.join("policy.yaml")),
            insecure: vec![host.clone()],
            args: vec![
                "--caches-dir".into(),
                caches_d.to_string_lossy().into_owned(),
                "--gpu-inventory".into(),
                dir.join("gpus.json").to_string_lossy().into_owned(),
            ],
            ..KcachedConfig::default()
        },
    );
    let layout = StoreLayout::new(kdir.join("caches"), kdir.join("run"));
    let state = wait_settled(&layout, &["triton"], &kcached);
    assert_eq!(state.caches[0].state, CacheState::Ready, "{:?}", state.caches[0]);

    // containerd with the base runtime spec `kcache install containerd` writes.
    let base_spec = dir.join("base-spec.json");
    ok(&kcache(&[
        "install",
        "containerd",
        "--write",
        "--containerd-version",
        "1.6",
        "--config",
        dir.join("installed.toml").to_str().unwrap(),
        "--base-spec",
        base_spec.to_str().unwrap(),
        "--hook-path",
        hook.to_str().unwrap(),
    ]));
    let mut spec: Value = serde_json::from_slice(&fs::read(&base_spec).unwrap()).unwrap();
    for stage in ["prestart", "poststop"] {
        for h in spec["hooks"][stage].as_array_mut().unwrap() {
            if h["path"] == hook.to_str().unwrap() {
                h["args"] = json!([
                    "kcache-hook",
                    "--store",
                    layout.root(),
                    "--run-dir",
                    layout.run_dir(),
                    "--log-file",
                    dir.join("hook.log"),
                    stage
                ]);
            }
        }
    }
    fs::write(&base_spec, serde_json::to_vec_pretty(&spec).unwrap()).unwrap();
    let containerd = Containerd::start(
        &programs,
        &dir.join("containerd"),
        &ContainerdConfig {
            kcache_socket: Some(kcached.snapshotter_socket()),
            cri: Some(CriConfig {
                sandbox_image: format!("{host}/e2e/pause:1"),
                snapshotter: "kcache".into(),
                plain_http: vec![host.clone()],
                base_runtime_spec: Some(base_spec.clone()),
                pod_annotations: vec!["kcache.dev/*".into()],
                hook: Some(hook.clone()),
                ..CriConfig::default()
            }),
            ..ContainerdConfig::default()
        },
    );
    let criapi = Cri::ready(&containerd).await;
    let app = format!("{host}/e2e/app:1");
    criapi.pull(&app, None).await.unwrap();
    let logs = dir.join("pods");
    fs::create_dir_all(logs.join("warm")).unwrap();
    let mut pod = cri::host_network_pod("warm", &logs.join("warm"));
    pod.annotations = [("kcache.dev/cache".to_string(), "triton".to_string())].into();
    let pod_id = criapi.run_pod(&pod).await.unwrap();
    let ro = |host_path: &Path, container_path: &Path| pb::Mount {
        container_path: container_path.to_string_lossy().into_owned(),
        host_path: host_path.to_string_lossy().into_owned(),
        readonly: true,
        ..Default::default()
    };
    let mut mounts = vec![
        ro(Path::new("/usr"), Path::new("/usr")),
        ro(&fs::canonicalize("/lib").unwrap(), Path::new("/lib")),
        ro(&fs::canonicalize("/lib64").unwrap(), Path::new("/lib64")),
        ro(&cur.program(), &Path::new(PROG_DIR).join("triton_caches.py")),
        ro(
            &cur.expected_path("all"),
            &Path::new(PROG_DIR).join("all.expected.json"),
        ),
    ];
    mounts.extend(cur.mounts().iter().map(|m| ro(m, m)));
    let script = format!(
        "{} > /tmp/report.json 2>/tmp/err; echo rc=$?; cat /tmp/report.json; echo CHECK-DONE; sleep 60",
        check_cmd(&cur, "all.expected.json")
    );
    let mut c = cri::container("app", &app, &["/bin/sh", "-c", &script]);
    c.envs = [
        ("TRITON_CACHE_DIR", TARGET.to_string()),
        ("VIRTUAL_ENV", cur.venv.to_string_lossy().into_owned()),
        ("HOME", "/root".into()),
        ("PYTHONDONTWRITEBYTECODE", "1".into()),
    ]
    .into_iter()
    .map(|(key, value)| pb::KeyValue { key: key.into(), value })
    .collect();
    c.mounts = mounts;
    let id = criapi.start_container(&pod_id, &pod, c).await.unwrap();
    let log_path = logs.join("warm/app.log");
    let start = Instant::now();
    let content = loop {
        // CRI log lines: `<time> <stream> <P|F> <content>`.
        let content: String = fs::read_to_string(&log_path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.splitn(4, ' ').nth(3))
            .map(|l| format!("{l}\n"))
            .collect();
        if content.contains("CHECK-DONE") {
            break content;
        }
        let status = criapi.container_status(&id).await.unwrap();
        assert!(
            start.elapsed() < Duration::from_secs(120) && status.state != pb::ContainerState::ContainerExited as i32,
            "container state {} ({}), log {content:?}\nhook log: {}",
            status.state,
            status.message,
            fs::read_to_string(dir.join("hook.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(content.starts_with("rc=0\n"), "{content}");
    let report = content.split("CHECK-DONE").next().unwrap();
    assert_all_hit(&Report::parse(report), &cur.expected("all"), VERSION);
    let hook_log = fs::read_to_string(dir.join("hook.log")).unwrap_or_default();
    assert!(hook_log.contains("matches the cache"), "{hook_log}");
    criapi.remove_pod(&pod_id).await.unwrap();
    assert!(
        fs::read_dir(layout.run_dir().join("containers")).map_or(0, |d| d.count()) == 0,
        "poststop left a container dir"
    );
    drop(containerd);
    drop(kcached);
}

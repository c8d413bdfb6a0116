//! `make demo`: kcache's main job on this machine, with the real components in a temp dir.
//!
//! A loopback registry, a signing key made on the spot, a containerd (its own root, state and
//! socket) configured by `kcache install containerd` with kcached as its snapshotter and
//! kcache-hook in its base runtime spec; then, through containerd's CRI as the kubelet drives
//! it: a signed busybox pod runs, an unsigned image is refused with kcache's message, a Triton
//! kernel cache is built, signed, approved and mounted into an annotated container that lists
//! it, and `kcache doctor` checks the node. Everything is removed at the end.
//!
//! cargo run -p kcache-tests --example demo -- --bin-dir target/debug
//! (the directory with kcache, kcached and kcache-hook). Needs root, containerd, runc,
//! docker-registry and busybox-static (scripts/deps.sh).

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    time::{Duration, Instant},
};

use kcache_tests::{
    containerd::{is_root, on_path, prerequisites, Containerd, ContainerdConfig, CriConfig},
    cri::{self, pb, Cri},
    images::{self, Image},
    TestRegistry,
};

const NAMESPACE: &str = "kcache-e2e";
const KERNEL: &str = "K4QWDEMOKERNEL0000000000000000000000000000000000";
const TARGET: &str = "/root/.triton/cache";

fn say(step: &str) {
    println!("\n\x1b[1m== {step}\x1b[0m");
}

fn indent(s: &str) {
    for l in s.lines() {
        println!("   {l}");
    }
}

struct Demo {
    bin: PathBuf,
    work: PathBuf,
}

impl Demo {
    /// Runs a kcache binary, shows the command line and its output; fails on a non-zero exit
    /// unless `may_fail`.
    fn kcache(&self, args: &[&str], may_fail: bool) -> (bool, String) {
        println!(
            "$ kcache {}",
            args.join(" ").replace(&self.work.display().to_string(), "$WORK")
        );
        let out = Command::new(self.bin.join("kcache"))
            .args(args)
            .env("COSIGN_PASSWORD", "demo")
            .current_dir(&self.work)
            .output()
            .expect("run kcache");
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        indent(said.trim_end());
        assert!(may_fail || out.status.success(), "kcache {args:?} failed");
        (out.status.success(), said)
    }
}

fn write_kernel(root: &Path) {
    let dir = root.join(KERNEL);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("add_kernel.json"),
        format!(
            r#"{{"hash":"{KERNEL}","target":{{"backend":"cuda","arch":90,"warp_size":32}},"name":"add_kernel","num_warps":4,"num_stages":3}}"#
        ),
    )
    .unwrap();
    std::fs::write(dir.join("add_kernel.cubin"), vec![0x7f; 4096]).unwrap();
    std::fs::write(
        dir.join("__grp__add_kernel.json"),
        format!(
            r#"{{"child_paths":{{"add_kernel.json":"{0}/add_kernel.json","add_kernel.cubin":"{0}/add_kernel.cubin"}}}}"#,
            dir.display()
        ),
    )
    .unwrap();
}

/// Waits for `expect` in the container's log; the log.
async fn container_log(c: &Cri, id: &str, log: &Path, expect: &str) -> String {
    let start = Instant::now();
    loop {
        let logged = std::fs::read_to_string(log).unwrap_or_default();
        if logged.contains(expect) {
            // CRI log lines: "<time> stdout F <text>".
            return logged
                .lines()
                .map(|l| l.splitn(4, ' ').nth(3).unwrap_or(l))
                .collect::<Vec<_>>()
                .join("\n");
        }
        let status = c.container_status(id).await.unwrap();
        assert!(
            start.elapsed() < Duration::from_secs(30) && status.state != pb::ContainerState::ContainerExited as i32,
            "container {id}: state {}, log {logged:?}",
            status.state
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn args() -> Result<PathBuf, String> {
    let mut it = std::env::args().skip(1);
    match (it.next().as_deref(), it.next()) {
        (Some("--bin-dir"), Some(d)) => Ok(PathBuf::from(d)),
        _ => Err("usage: demo --bin-dir DIR (with kcache, kcached and kcache-hook)".into()),
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let bin = match args() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let mut missing: Vec<String> = ["kcache", "kcached", "kcache-hook"]
        .iter()
        .filter(|b| !bin.join(b).is_file())
        .map(|b| bin.join(b).display().to_string())
        .collect();
    missing.extend(
        ["docker-registry", "runc", "containerd-shim-runc-v2"]
            .iter()
            .filter(|p| on_path(p).is_none())
            .map(|p| (*p).to_owned()),
    );
    if !images::have_busybox_static() {
        missing.push("busybox-static".into());
    }
    if !is_root() {
        missing.push("root (containerd and runc need it)".into());
    }
    if !missing.is_empty() {
        eprintln!("demo: missing {} (make deps; make demo)", missing.join(", "));
        return ExitCode::from(2);
    }
    let Some(programs) = prerequisites("demo", &["runc"]) else {
        return ExitCode::from(2);
    };
    let bin = std::fs::canonicalize(bin).unwrap();
    let started = Instant::now();
    run(&bin, &programs).await;
    say(&format!(
        "done in {:.0} s: everything the demo started is stopped and its temp dir removed",
        started.elapsed().as_secs_f64()
    ));
    ExitCode::SUCCESS
}

async fn run(bin: &Path, programs: &kcache_tests::containerd::Programs) {
    let tmp = tempfile::Builder::new()
        .prefix("kcache-demo")
        .tempdir_in("/tmp")
        .unwrap();
    let work = tmp.path().to_owned();
    println!("work dir ($WORK): {}", work.display());
    let d = Demo {
        bin: bin.to_owned(),
        work: work.clone(),
    };

    say("a registry on loopback, and a signing key made on the spot");
    let reg = TestRegistry::start();
    let host = reg.host();
    println!("docker-registry at {host}");
    d.kcache(&["generate-key-pair"], false);

    say("busybox images: demo/pause and demo/app signed with that key, demo/unsigned not");
    for (tag, marker) in [
        ("demo/pause:1", "pause"),
        ("demo/app:1", "app"),
        ("demo/unsigned:1", "unsigned"),
    ] {
        let pushed = Image::busybox(marker, &["/bin/busybox", "sleep", "3600"])
            .push(&reg, tag)
            .await;
        println!("pushed {host}/{tag} ({})", pushed.digest);
    }
    for tag in ["demo/pause:1", "demo/app:1"] {
        d.kcache(
            &[
                "sign",
                "--key",
                "cosign.key",
                "--insecure-registry",
                &host,
                &format!("{host}/{tag}"),
            ],
            false,
        );
    }

    say("a Triton kernel cache (an sm_90 test kernel) built into an image, pushed and signed");
    let build = work.join("build/.triton/cache");
    write_kernel(&build);
    let cache_image = format!("{host}/caches/triton:v1");
    d.kcache(
        &[
            "cache",
            "build",
            build.to_str().unwrap(),
            "--image",
            &cache_image,
            "--push",
            "--insecure-registry",
            &host,
            "--triton-version",
            "3.3.1",
        ],
        false,
    );
    d.kcache(
        &[
            "sign",
            "--key",
            "cosign.key",
            "--insecure-registry",
            &host,
            &cache_image,
        ],
        false,
    );

    say("the node's policy (enforce: only images signed with the key) and the approved cache");
    let policy = format!(
        "mode: enforce\ndefault: deny\nrules:\n  - name: demo\n    images: [\"{host}/demo/*\", \"{host}/caches/*\"]\n    authorities:\n      - key: {{path: {}}}\n    transparencyLog: off\n",
        work.join("cosign.pub").display()
    );
    std::fs::write(work.join("policy.yaml"), &policy).unwrap();
    indent(&policy.replace(&work.display().to_string(), "$WORK"));
    std::fs::create_dir_all(work.join("caches.d")).unwrap();
    let approved = format!("name: triton\nnamespace: {NAMESPACE}\nimage: {cache_image}\n");
    std::fs::write(work.join("caches.d/triton.yaml"), &approved).unwrap();
    println!("caches.d/triton.yaml:");
    indent(&approved);
    // No GPU needed: the node's inventory pinned as one H100 (what NVML would report).
    std::fs::write(
        work.join("gpus.json"),
        r#"{"source":"file","gpus":[{"id":"GPU-demo-h100","index":0,"name":"NVIDIA H100","backend":"cuda","arch":90,"warp_size":32}]}"#,
    )
    .unwrap();

    say("kcached, the node daemon (snapshotter + verification gate + cache manager)");
    let k = work.join("kcache");
    let config = format!(
        "policy = \"{p}\"\nsnapshotter_socket = \"{k}/snapshotter.sock\"\napi_socket = \"{k}/kcache.sock\"\nroot = \"{k}/snapshotter\"\ncache_root = \"{k}/caches\"\nrun_dir = \"{k}/run\"\ncaches_dir = \"{c}\"\n\n[registry]\ninsecure = [\"{host}\"]\nconfig_path = \"{h}\"\n\n[gpu]\npinned_file = \"{g}\"\n",
        p = work.join("policy.yaml").display(),
        k = k.display(),
        c = work.join("caches.d").display(),
        g = work.join("gpus.json").display(),
        // containerd's registry hosts (rendered below), as `kcache install containerd` sets it.
        h = work.join("containerd/certs.d").display(),
    );
    std::fs::create_dir_all(&k).unwrap();
    std::fs::write(work.join("kcached.toml"), &config).unwrap();
    let mut kcached = Daemon(
        Command::new(bin.join("kcached"))
            .arg("--config")
            .arg(work.join("kcached.toml"))
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(work.join("kcached.log")).unwrap())
            .spawn()
            .expect("start kcached"),
    );
    let (snap_sock, api_sock) = (k.join("snapshotter.sock"), k.join("kcache.sock"));
    let start = Instant::now();
    while ![&snap_sock, &api_sock]
        .iter()
        .all(|s| std::os::unix::net::UnixStream::connect(s).is_ok())
    {
        if let Ok(Some(status)) = kcached.0.try_wait() {
            panic!(
                "kcached exited ({status}):\n{}",
                std::fs::read_to_string(work.join("kcached.log")).unwrap_or_default()
            );
        }
        assert!(start.elapsed() < Duration::from_secs(20), "kcached did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("kcached --config $WORK/kcached.toml: listening on $WORK/kcache/snapshotter.sock and kcache.sock");

    say("containerd's config, wired by `kcache install containerd --write`");
    let cdir = work.join("containerd");
    std::fs::create_dir_all(&cdir).unwrap();
    let node = ContainerdConfig {
        cri: Some(CriConfig {
            sandbox_image: format!("{host}/demo/pause:1"),
            snapshotter: "overlayfs".into(),
            plain_http: vec![host.clone()],
            ..CriConfig::default()
        }),
        ..ContainerdConfig::default()
    };
    let ctd_config = work.join("containerd.toml");
    std::fs::write(&ctd_config, node.render(programs, &cdir)).unwrap();
    let base_spec = work.join("base-spec.json");
    d.kcache(
        &[
            "install",
            "containerd",
            "--write",
            "--config",
            ctd_config.to_str().unwrap(),
            "--snapshotter-socket",
            snap_sock.to_str().unwrap(),
            "--base-spec",
            base_spec.to_str().unwrap(),
            "--hook-path",
            bin.join("kcache-hook").to_str().unwrap(),
        ],
        false,
    );
    // The demo's store and run dir are in $WORK, not /var/lib/kcache and /run/kcache: the hook
    // is told so in the base spec.
    let mut spec: serde_json::Value = serde_json::from_slice(&std::fs::read(&base_spec).unwrap()).unwrap();
    for stage in ["prestart", "poststop"] {
        for h in spec["hooks"][stage].as_array_mut().unwrap() {
            h["args"] = serde_json::json!([
                "kcache-hook",
                "--store",
                k.join("caches"),
                "--run-dir",
                k.join("run"),
                stage
            ]);
        }
    }
    std::fs::write(&base_spec, serde_json::to_vec_pretty(&spec).unwrap()).unwrap();
    let mut containerd = Containerd::start_on(programs, &cdir, &ctd_config, &[]);
    let c = Cri::ready(&containerd).await;
    println!("containerd is up on $WORK/containerd/containerd.sock, with kcache as its CRI snapshotter");

    say("a pod from the signed image: pulled through kcache's gate, runs");
    let logs = work.join("pods");
    let pod = |name: &str, annotations: &[(&str, &str)]| {
        let dir = logs.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let mut p = cri::host_network_pod(name, &dir);
        p.annotations = annotations.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect();
        p
    };
    let app = format!("{host}/demo/app:1");
    let image_id = c.pull(&app, None).await.expect("the signed image pulls");
    println!("PullImage {app}: ok ({image_id})");
    let signed = pod("signed", &[]);
    let signed_id = c.run_pod(&signed).await.unwrap();
    let id = c
        .start_container(
            &signed_id,
            &signed,
            cri::container(
                "app",
                &app,
                &["/bin/sh", "-c", "echo hello from a signed image; sleep 600"],
            ),
        )
        .await
        .unwrap();
    let log = container_log(&c, &id, &logs.join("signed/app.log"), "hello").await;
    println!("container running; its log:");
    indent(&log);

    say("the unsigned image: refused at pull time");
    let unsigned = format!("{host}/demo/unsigned:1");
    match c.pull(&unsigned, None).await {
        Ok(id) => panic!("the unsigned image was pulled ({id})"),
        Err(e) => {
            println!("PullImage {unsigned}: refused. containerd says:");
            indent(e.message());
        }
    }

    say("the kernel cache: kcached pulled it by verified digest and checked it against the GPU");
    let start = Instant::now();
    let store = k.join("caches");
    loop {
        let out = Command::new(bin.join("kcache"))
            .args(["cache", "ls", "--store", store.to_str().unwrap(), "--output", "json"])
            .output()
            .unwrap();
        let ls: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let ready = ls
            .pointer("/state/caches")
            .and_then(|c| c.as_array())
            .is_some_and(|cs| cs.iter().any(|c| c["name"] == "triton" && c["state"] == "ready"));
        if ready {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the cache did not become ready: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            std::fs::read_to_string(work.join("kcached.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    d.kcache(&["cache", "ls", "--store", store.to_str().unwrap()], false);

    say("a pod annotated kcache.dev/cache: triton gets it mounted by kcache-hook");
    let warm = pod("warm", &[("kcache.dev/cache", "triton")]);
    let warm_id = c.run_pod(&warm).await.unwrap();
    let mut container = cri::container(
        "app",
        &app,
        &[
            "/bin/sh",
            "-c",
            &format!("echo mounted at {TARGET}:; ls -R {TARGET}; grep ' {TARGET} ' /proc/mounts | cut -d' ' -f1-3; echo LISTED; sleep 600"),
        ],
    );
    container.envs = vec![pb::KeyValue {
        key: "TRITON_CACHE_DIR".into(),
        value: TARGET.into(),
    }];
    let id = c.start_container(&warm_id, &warm, container).await.unwrap();
    let log = container_log(&c, &id, &logs.join("warm/app.log"), "LISTED").await;
    println!("the container's log:");
    indent(&log);
    assert!(
        log.contains("add_kernel.cubin"),
        "the cache is not in the container:\n{log}"
    );

    say("kcache doctor: every way a pull could skip verification, and a canary pull");
    let (ok, said) = d.kcache(
        &[
            "doctor",
            "--config",
            ctd_config.to_str().unwrap(),
            "--snapshotter-socket",
            snap_sock.to_str().unwrap(),
            "--api-socket",
            api_sock.to_str().unwrap(),
            "--cri-socket",
            containerd.address().to_str().unwrap(),
            "--canary",
            &unsigned,
        ],
        true,
    );
    assert!(ok && !said.contains("FAIL"), "kcache doctor found a problem");

    say("cleaning up: pods, containerd, kcached, the registry, $WORK");
    for p in [&signed_id, &warm_id] {
        c.remove_pod(p).await.unwrap();
    }
    containerd.stop();
    drop(kcached);
    drop(reg);
}

/// A child process killed on drop.
struct Daemon(std::process::Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.0.id().to_string()]).status();
        let start = Instant::now();
        while self.0.try_wait().ok().flatten().is_none() && start.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

//! The node packages, built by scripts/build-packages.sh (from this build's binaries), checked
//! and then installed on this machine for real:
//!
//! 1. lintian and rpmlint report nothing but the tags the overrides justify; `dpkg-deb -c` and
//!    `rpm -qpl` list exactly the expected files; conffiles and the maintainer scripts are there.
//! 2. `dpkg -i`: files only (no containerd config touched, no kcached started); then the
//!    first-run path an admin takes: `kcache install containerd --write` on a node-like
//!    containerd config (its own root, state and socket in a temp dir), kcached started with the
//!    installed unit's ExecStart line (no systemd runs here), a signed busybox pod runs, an
//!    unsigned image is refused with kcache's message, `kcache doctor` is all ok.
//! 3. Upgrade to the same package with a bumped version: the edited conffiles are kept, and after
//!    a kcached restart (what the postinst's try-restart does under systemd) the running
//!    container and the verified snapshots are still there: a new container starts on them.
//! 4. `dpkg -r`: the prerm's `kcache uninstall containerd --write` takes kcache out of
//!    containerd's config (an admin's later change stays), and containerd pulls with its own
//!    snapshotter again; `dpkg --purge` removes kcache's state.
//! 5. (Run after the lint, before the deb.) The rpm installed into an `rpm --root` tree (busybox as its /bin/sh): %post makes the
//!    state directories, an upgrade keeps an edited %config(noreplace) file, erase saves it as
//!    .rpmsave and runs %preun/%postun (no containerd config in that root: nothing to take out).
//!
//! Touches the real system (dpkg database, /etc/kcache, /var/lib/kcache, /run/kcache,
//! /usr/share/containers/oci/hooks.d): it refuses to start when kcache is already installed or
//! those directories exist, and purges on every exit path. Needs root, dpkg, rpm, lintian,
//! rpmlint, help2man (scripts/deps.sh), containerd, runc and busybox-static; without them it is
//! skipped with a message, except under `CI=true`, where it fails.

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use kcache_core::{cosign::sign::sign_and_push, signing::PrivateKey};
use kcache_tests::{
    containerd::{on_path, prerequisites, Containerd, ContainerdConfig, CriConfig},
    cri::{self, pb, Cri},
    images::{self, Image},
    TestRegistry,
};

const RUNNING: i32 = pb::ContainerState::ContainerRunning as i32;
const SYSTEM_DIRS: [&str; 3] = ["/etc/kcache", "/var/lib/kcache", "/run/kcache"];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    out
}

fn run_ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(out.status.success(), "{cmd:?} failed ({}):\n{}", out.status, text(&out));
    text(&out)
}

/// The tools this test needs, or None (skip) outside CI.
fn tools_present() -> bool {
    let missing: Vec<&str> = [
        "dpkg", "dpkg-deb", "rpm", "rpmbuild", "lintian", "rpmlint", "help2man", "jq", "busybox",
    ]
    .into_iter()
    .filter(|t| on_path(t).is_none())
    .collect();
    if missing.is_empty() {
        return true;
    }
    let problem = format!("missing {} (bash scripts/deps.sh)", missing.join(", "));
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true: the packages test must run, but {problem}"
    );
    eprintln!("skipping the packages test: {problem}");
    false
}

/// The kcache-hook binary of this build (another package of the workspace).
fn hook_binary() -> PathBuf {
    run_ok(
        Command::new(env!("CARGO"))
            .args(["build", "--locked", "-p", "kcache-hook", "--bin", "kcache-hook"])
            .current_dir(repo()),
    );
    Path::new(env!("CARGO_BIN_EXE_kcached")).with_file_name("kcache-hook")
}

/// x.y.z -> x.y.(z+1)
fn bumped(version: &str) -> String {
    let (head, patch) = version.rsplit_once('.').expect("x.y.z");
    format!("{head}.{}", patch.parse::<u64>().expect("numeric patch") + 1)
}

/// Builds the deb and rpm of `version` into `out`; their paths.
fn build(bins: &Path, version: &str, out: &Path) -> (PathBuf, PathBuf) {
    let said = run_ok(
        Command::new("bash")
            .arg(repo().join("scripts/build-packages.sh"))
            .arg("--bin-dir")
            .arg(bins)
            .args(["--version", version, "--fast", "--out"])
            .arg(out)
            .current_dir(repo()),
    );
    let deb = out.join(format!("kcache_{version}_amd64.deb"));
    let rpm = out.join(format!("kcache-{version}-1.x86_64.rpm"));
    assert!(deb.is_file() && rpm.is_file(), "{said}");
    (deb, rpm)
}

/// Purges the package and kcache's directories on every exit path, and stops what the test
/// started from the installed files.
struct Installed {
    kcached: Option<Child>,
    /// kcached's logs, printed when the test fails.
    logs: Vec<PathBuf>,
}

impl Installed {
    fn stop_kcached(&mut self) {
        if let Some(mut c) = self.kcached.take() {
            let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
            let start = Instant::now();
            while c.try_wait().ok().flatten().is_none() && start.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// kcached as the installed unit starts it: its ExecStart line, as is.
    fn start_kcached(&mut self, log: &Path) {
        let unit = fs::read_to_string("/lib/systemd/system/kcached.service").expect("installed unit");
        let exec = unit
            .lines()
            .find_map(|l| l.strip_prefix("ExecStart="))
            .expect("ExecStart in the unit");
        let argv: Vec<&str> = exec.split_whitespace().collect();
        for s in ["/run/kcache/snapshotter.sock", "/run/kcache/kcache.sock"] {
            let _ = fs::remove_file(s);
        }
        let child = Command::new(argv[0])
            .args(&argv[1..])
            .stdout(Stdio::null())
            .stderr(fs::File::create(log).unwrap())
            .spawn()
            .expect("start kcached");
        self.kcached = Some(child);
        self.logs.push(log.to_owned());
        let start = Instant::now();
        while !["/run/kcache/snapshotter.sock", "/run/kcache/kcache.sock"]
            .iter()
            .all(|s| std::os::unix::net::UnixStream::connect(s).is_ok())
        {
            if let Some(Ok(Some(status))) = self.kcached.as_mut().map(Child::try_wait) {
                panic!(
                    "kcached exited ({status}):\n{}",
                    fs::read_to_string(log).unwrap_or_default()
                );
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "kcached did not listen:\n{}",
                fs::read_to_string(log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        self.stop_kcached();
        if std::thread::panicking() {
            for l in &self.logs {
                eprintln!("--- {}\n{}", l.display(), fs::read_to_string(l).unwrap_or_default());
            }
        }
        if package_status().is_some() {
            // Whatever state the test left: out, without touching containerd's real config.
            let _ = Command::new("dpkg")
                .args(["--purge", "kcache"])
                .env("KCACHE_KEEP_CONTAINERD_CONFIG", "1")
                .stdin(Stdio::null())
                .output();
        }
        for d in SYSTEM_DIRS {
            let _ = Command::new("rm").args(["-rf", "--one-file-system", d]).status();
        }
    }
}

/// dpkg's status of the kcache package, when it knows it.
fn package_status() -> Option<String> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Status} ${Version}", "kcache"])
        .output()
        .ok()?;
    let s = String::from_utf8_lossy(&out.stdout).into_owned();
    (out.status.success() && !s.starts_with("unknown") && !s.contains("not-installed")).then_some(s)
}

fn lines(s: &str) -> BTreeSet<String> {
    s.lines().map(str::to_owned).collect()
}

/// Every file (not directory) a deb holds, without the leading `.`.
fn deb_paths(deb: &Path) -> BTreeSet<String> {
    let listing = run_ok(Command::new("dpkg-deb").arg("-c").arg(deb));
    listing
        .lines()
        .filter(|l| !l.starts_with('d'))
        .filter_map(|l| l.split_whitespace().nth(5))
        .map(|p| p.trim_start_matches('.').trim_end_matches('/').to_owned())
        .filter(|p| !p.is_empty())
        .collect()
}

const FILES: &[&str] = &[
    "/usr/bin/kcache",
    "/usr/bin/kcached",
    "/usr/bin/kcache-image-verifier",
    "/usr/libexec/kcache/kcache-hook",
    "/usr/lib/tmpfiles.d/kcache.conf",
    "/usr/share/containers/oci/hooks.d/kcache.json",
    "/etc/kcache/config.toml",
    "/etc/kcache/policy.yaml",
    "/usr/share/kcache/trusted_root.public-good.json",
    "/usr/share/kcache/next-steps.txt",
    "/usr/share/man/man1/kcache.1.gz",
    "/usr/share/man/man1/kcache-install-containerd.1.gz",
    "/usr/share/man/man1/kcache-cache-build.1.gz",
    "/usr/share/man/man8/kcached.8.gz",
    "/usr/share/man/man8/kcache-image-verifier.8.gz",
    "/usr/share/man/man8/kcache-hook.8.gz",
    "/usr/share/bash-completion/completions/kcache",
    "/usr/share/zsh/site-functions/_kcache",
    "/usr/share/fish/vendor_completions.d/kcache.fish",
];

fn check_contents(deb: &Path, rpm: &Path, version: &str) {
    let d = deb_paths(deb);
    for f in FILES.iter().chain(&[
        "/lib/systemd/system/kcached.service",
        "/usr/share/doc/kcache/copyright",
        "/usr/share/doc/kcache/changelog.gz",
        "/usr/share/lintian/overrides/kcache",
    ]) {
        assert!(d.contains(*f), "{f} missing from the deb:\n{d:#?}");
    }
    assert!(
        !d.iter().any(|p| p.starts_with("/var") || p.starts_with("/run")),
        "state is made by postinst, not shipped: {d:#?}"
    );
    let man1 = d.iter().filter(|p| p.starts_with("/usr/share/man/man1/")).count();
    assert!(man1 >= 10, "a page per kcache subcommand: {d:#?}");
    let control = run_ok(Command::new("dpkg-deb").arg("-f").arg(deb));
    for want in [
        format!("Version: {version}"),
        "Package: kcache".into(),
        "Architecture: amd64".into(),
        "Depends: libc6".into(),
        "Homepage: https://".into(),
    ] {
        assert!(control.contains(&want), "{want:?} not in the control file:\n{control}");
    }
    let info = tempfile::tempdir().unwrap();
    run_ok(Command::new("dpkg-deb").arg("-e").arg(deb).arg(info.path()));
    assert_eq!(
        fs::read_to_string(info.path().join("conffiles")).unwrap(),
        "/etc/kcache/config.toml\n/etc/kcache/policy.yaml\n"
    );
    let prerm = fs::read_to_string(info.path().join("prerm")).unwrap();
    assert!(prerm.contains("kcache uninstall containerd --write"), "{prerm}");

    let r = lines(&run_ok(Command::new("rpm").arg("-qpl").arg(rpm)));
    for f in FILES.iter().chain(&[
        "/usr/lib/systemd/system/kcached.service",
        "/usr/share/licenses/kcache/copyright",
    ]) {
        assert!(r.contains(*f), "{f} missing from the rpm:\n{r:#?}");
    }
    let deb_files: BTreeSet<&String> = d
        .iter()
        .filter(|p| p.contains("/man") || p.starts_with("/usr/bin") || p.starts_with("/etc/kcache/"))
        .collect();
    let rpm_files: BTreeSet<&String> = r
        .iter()
        .filter(|p| p.contains("/man") || p.starts_with("/usr/bin") || p.starts_with("/etc/kcache/"))
        .collect();
    assert_eq!(
        deb_files, rpm_files,
        "the deb and the rpm ship the same binaries, pages and configs"
    );
    assert_eq!(
        lines(&run_ok(Command::new("rpm").arg("-qpc").arg(rpm))),
        lines("/etc/kcache/config.toml\n/etc/kcache/policy.yaml")
    );
    let scripts = run_ok(Command::new("rpm").args(["-qp", "--scripts"]).arg(rpm));
    assert!(scripts.contains("kcache uninstall containerd --write"), "{scripts}");
}

fn lint(deb: &Path, rpm: &Path) {
    // Lintian's own exit status with --fail-on: any warning or error not overridden fails.
    let out = run(Command::new("lintian")
        .args(["--fail-on", "error,warning", "--tag-display-limit", "0"])
        .arg(deb));
    let said = text(&out);
    assert!(out.status.success(), "lintian:\n{said}");
    assert!(
        !said.lines().any(|l| l.starts_with("E:") || l.starts_with("W:")),
        "lintian:\n{said}"
    );
    let out = run(Command::new("rpmlint")
        .arg("--config")
        .arg(repo().join("packaging/rpm/rpmlint.toml"))
        .arg("--rpmlintrc")
        // build-packages.sh's: the shipped filters, plus the static hook's when it is static.
        .arg(rpm.parent().expect("the packages dir").join("kcache.rpmlintrc"))
        .arg(rpm));
    let said = text(&out);
    assert!(
        out.status.success() && said.contains("0 errors, 0 warnings"),
        "rpmlint:\n{said}"
    );
}

async fn wait_running(c: &Cri, id: &str) {
    let start = Instant::now();
    loop {
        let s = c.container_status(id).await.unwrap();
        if s.state == RUNNING {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "container {id}: {s:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A pod and a container of `image` that sleeps; the container id.
async fn run_pod(c: &Cri, logs: &Path, name: &str, image: &str) -> (String, String) {
    let dir = logs.join(name);
    fs::create_dir_all(&dir).unwrap();
    let sandbox = cri::host_network_pod(name, &dir);
    let pod = c.run_pod(&sandbox).await.unwrap();
    let id = c
        .start_container(
            &pod,
            &sandbox,
            cri::container("app", image, &["/bin/busybox", "sleep", "600"]),
        )
        .await
        .unwrap();
    wait_running(c, &id).await;
    (pod, id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_packages_lint_clean_and_install_upgrade_remove_and_purge_on_a_node() {
    let test = "the_packages_lint_clean_and_install_upgrade_remove_and_purge_on_a_node";
    let Some(programs) = prerequisites(test, &["runc", "containerd-shim-runc-v2"]) else {
        return;
    };
    if !tools_present() {
        return;
    }
    assert!(
        images::have_busybox_static(),
        "busybox-static is needed (scripts/deps.sh)"
    );
    assert!(
        package_status().is_none() && SYSTEM_DIRS.iter().all(|d| !Path::new(d).exists()),
        "kcache is installed on this machine, or {SYSTEM_DIRS:?} exist: this test installs and \
         purges the package for real, so it runs only where kcache is not installed"
    );
    let started = Instant::now();
    let tmp = tempfile::Builder::new().prefix("kc-pkg").tempdir_in("/tmp").unwrap();
    let dir = tmp.path();

    // 0. The packages, from this build's binaries (stripped by the script), twice: the upgrade.
    let bins = dir.join("bins");
    fs::create_dir_all(&bins).unwrap();
    for (name, path) in [
        ("kcache", PathBuf::from(env!("CARGO_BIN_EXE_kcache"))),
        ("kcached", PathBuf::from(env!("CARGO_BIN_EXE_kcached"))),
        (
            "kcache-image-verifier",
            PathBuf::from(env!("CARGO_BIN_EXE_kcache-image-verifier")),
        ),
        ("kcache-hook", hook_binary()),
    ] {
        fs::copy(&path, bins.join(name)).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
    let v1 = env!("CARGO_PKG_VERSION").to_owned();
    let v2 = bumped(&v1);
    let (deb1, rpm1) = build(&bins, &v1, &dir.join("v1"));
    let (deb2, rpm2) = build(&bins, &v2, &dir.join("v2"));
    eprintln!("packages built in {:?}", started.elapsed());

    // 1. Lint and contents.
    check_contents(&deb1, &rpm1, &v1);
    lint(&deb1, &rpm1);
    eprintln!("linted in {:?}", started.elapsed());
    check_rpm_root(dir, &rpm1, &rpm2);

    // 2. dpkg -i: files only.
    let real_containerd_config = fs::read("/etc/containerd/config.toml").ok();
    let mut installed = Installed {
        kcached: None,
        logs: Vec::new(),
    };
    let said = run_ok(Command::new("dpkg").arg("-i").arg(&deb1));
    assert!(
        said.contains("kcache install containerd --write") && said.contains("not running"),
        "the first install says what to do next:\n{said}"
    );
    assert!(package_status().unwrap().starts_with("install ok installed"));
    assert_eq!(fs::read("/etc/containerd/config.toml").ok(), real_containerd_config);
    for (d, mode) in [
        ("/var/lib/kcache", 0o700),
        ("/var/lib/kcache/snapshotter", 0o700),
        ("/run/kcache", 0o700),
    ] {
        use std::os::unix::fs::PermissionsExt;
        let m = fs::metadata(d)
            .unwrap_or_else(|e| panic!("{d}: {e}"))
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(m, mode, "{d}");
    }
    assert!(
        !Path::new("/run/kcache/snapshotter.sock").exists(),
        "the package does not start kcached"
    );

    // The node: a registry with a signed pause and app image and an unsigned one; the admin's
    // key and policy (conffile edits), and plain HTTP for the loopback registry.
    let reg = TestRegistry::start();
    let host = reg.host();
    let key = PrivateKey::generate_p256();
    fs::create_dir_all("/etc/kcache/keys").unwrap();
    fs::write("/etc/kcache/keys/test.pub", key.public_key().to_pem()).unwrap();
    for (tag, marker) in [
        ("e2e/pause:1", "pause"),
        ("e2e/app:1", "app"),
        ("e2e/unsigned:1", "unsigned"),
    ] {
        Image::busybox(marker, &["/bin/busybox", "sleep", "600"])
            .push(&reg, tag)
            .await;
        if !tag.contains("unsigned") {
            sign_and_push(&reg.client(), &key, &reg.reference(tag), false)
                .await
                .unwrap();
        }
    }
    let policy = format!(
        "# edited by the admin\nmode: enforce\ndefault: deny\nrules:\n  - name: e2e\n    images: [\"{host}/e2e/*\"]\n    authorities:\n      - key: {{path: /etc/kcache/keys/test.pub}}\n    transparencyLog: off\n"
    );
    fs::write("/etc/kcache/policy.yaml", &policy).unwrap();
    let shipped_config = fs::read_to_string("/etc/kcache/config.toml").unwrap();
    let mut config = shipped_config.replace("# insecure = [\"127.0.0.1:5000\"]", &format!("insecure = [\"{host}\"]"));
    assert_ne!(
        config, shipped_config,
        "the shipped config has the commented insecure line"
    );
    fs::write("/etc/kcache/config.toml", &config).unwrap();

    // containerd's own config for this node, with CRI on its default snapshotter, then
    // `kcache install containerd --write` with the installed binaries and their defaults.
    let cdir = dir.join("containerd");
    fs::create_dir_all(&cdir).unwrap();
    let node = ContainerdConfig {
        cri: Some(CriConfig {
            sandbox_image: format!("{host}/e2e/pause:1"),
            snapshotter: "overlayfs".into(),
            plain_http: vec![host.clone()],
            ..CriConfig::default()
        }),
        ..ContainerdConfig::default()
    };
    let ctd_config = dir.join("config.toml");
    fs::write(&ctd_config, node.render(&programs, &cdir)).unwrap();
    let said = run_ok(
        Command::new("/usr/bin/kcache")
            .args(["install", "containerd", "--write", "--config"])
            .arg(&ctd_config)
            // This node's containerd config is not /etc/containerd's: name kcache's own.
            .args(["--kcache-config", "/etc/kcache/config.toml"]),
    );
    assert!(said.contains("restart containerd"), "{said}");
    // kcache now asks the registry hosts containerd does; the admin's edit stays.
    let with_hosts = fs::read_to_string("/etc/kcache/config.toml").unwrap();
    let mut want: Vec<String> = config.lines().map(str::to_owned).collect();
    let at = want
        .iter()
        .position(|l| l.starts_with("insecure = ["))
        .expect("the insecure line")
        + 1;
    want.insert(at, format!("config_path = \"{}\"", cdir.join("certs.d").display()));
    assert_eq!(
        with_hosts.lines().collect::<Vec<_>>(),
        want,
        "install sets [registry] config_path to containerd's and keeps the rest"
    );
    config = with_hosts;
    let spec = fs::read_to_string("/etc/kcache/containerd-base-spec.json").unwrap();
    assert!(spec.contains("/usr/libexec/kcache/kcache-hook"), "{spec}");

    installed.start_kcached(&dir.join("kcached.1.log"));
    let mut containerd = Containerd::start_on(&programs, &cdir, &ctd_config, &[]);
    let c = Cri::ready(&containerd).await;
    let logs = dir.join("pods");
    let app = format!("{host}/e2e/app:1");
    c.pull(&app, None).await.expect("the signed image pulls");
    let (_pod, running) = run_pod(&c, &logs, "signed", &app).await;
    let err = c
        .pull(&format!("{host}/e2e/unsigned:1"), None)
        .await
        .expect_err("the unsigned image is refused");
    assert!(
        err.message().contains("kcache: image") && err.message().contains("denied"),
        "{}",
        err.message()
    );
    let doctor = |socket: &Path| {
        run(Command::new("/usr/bin/kcache")
            .args(["doctor", "--config"])
            .arg(&ctd_config)
            .arg("--cri-socket")
            .arg(socket))
    };
    let out = doctor(containerd.address());
    assert!(out.status.success(), "kcache doctor:\n{}", text(&out));
    assert!(!text(&out).contains("FAIL"), "{}", text(&out));

    // 3. Upgrade: conffile edits and state kept; kcached restarted as try-restart would.
    let said = run_ok(Command::new("dpkg").arg("-i").arg(&deb2));
    assert!(
        !said.contains("kcache install containerd --write"),
        "no first-run text on upgrade:\n{said}"
    );
    assert!(package_status().unwrap().ends_with(&v2));
    assert_eq!(fs::read_to_string("/etc/kcache/policy.yaml").unwrap(), policy);
    assert_eq!(fs::read_to_string("/etc/kcache/config.toml").unwrap(), config);
    assert!(!Path::new("/etc/kcache/config.toml.dpkg-dist").exists());
    let snapshots = |containerd: &Containerd| containerd.ctr("k8s.io", &["snapshots", "--snapshotter", "kcache", "ls"]);
    let before = snapshots(&containerd);
    assert!(before.status.success(), "{}", text(&before));
    installed.stop_kcached();
    installed.start_kcached(&dir.join("kcached.2.log"));
    assert_eq!(c.container_status(&running).await.unwrap().state, RUNNING);
    // containerd re-dials kcached (its gRPC connection backs off for a moment after a failed
    // dial); the snapshots are the same.
    let start = Instant::now();
    loop {
        let after = snapshots(&containerd);
        if after.status.success() {
            assert_eq!(
                text(&after),
                text(&before),
                "kcached's snapshots changed across the upgrade"
            );
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "containerd did not reconnect: {}",
            text(&after)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The image's verified snapshots survived: a new container runs without a pull.
    run_pod(&c, &logs, "after-upgrade", &app).await;

    // 4. Remove: containerd's config loses kcache's settings and keeps the admin's later one.
    let mut edited = fs::read_to_string(&ctd_config).unwrap();
    edited.push_str("\n# added by the admin after kcache install\n[plugins.\"io.containerd.internal.v1.tracing\"]\n  sampling_ratio = 0.5\n");
    fs::write(&ctd_config, &edited).unwrap();
    let said = run_ok(
        Command::new("dpkg")
            .args(["-r", "kcache"])
            .env("KCACHE_CONTAINERD_CONFIG", &ctd_config),
    );
    let restored = fs::read_to_string(&ctd_config).unwrap();
    assert!(
        !restored.contains("kcache") || restored.lines().all(|l| !l.contains("proxy_plugins.kcache")),
        "kcache's settings are gone:\n{said}\n{restored}"
    );
    assert!(!restored.contains("snapshotter = \"kcache\""), "{restored}");
    assert!(
        restored.contains("sampling_ratio = 0.5"),
        "the admin's change stays:\n{restored}"
    );
    assert!(!Path::new("/usr/bin/kcache").exists());
    assert!(Path::new("/etc/kcache/policy.yaml").exists(), "remove keeps conffiles");
    // No systemd here: the prerm's stop and containerd's restart, by hand.
    installed.stop_kcached();
    containerd.stop();
    drop(c);
    let containerd = Containerd::start_on(&programs, &cdir, &ctd_config, &[]);
    let c = Cri::ready(&containerd).await;
    c.pull(&format!("{host}/e2e/unsigned:1"), None)
        .await
        .expect("containerd pulls with its own snapshotter again");

    // 5. Purge: state gone. The admin's key is theirs to remove.
    fs::remove_dir_all("/etc/kcache/keys").unwrap();
    run_ok(Command::new("dpkg").args(["--purge", "kcache"]));
    assert!(package_status().is_none());
    for d in SYSTEM_DIRS {
        assert!(!Path::new(d).exists(), "{d} left after purge");
    }
    drop(c);
    drop(containerd);
    drop(installed);
    eprintln!("the packages test took {:?}", started.elapsed());
}

fn check_rpm_root(dir: &Path, rpm1: &Path, rpm2: &Path) {
    let root = dir.join("rpmroot");
    // Scriptlets run chrooted under /bin/sh: busybox provides it and the tools they call.
    // A base filesystem, as the `filesystem` package lays it out.
    for d in ["bin", "dev", "etc", "run", "var/lib", "usr/bin"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    run_ok(
        Command::new("mknod")
            .args(["-m", "666"])
            .arg(root.join("dev/null"))
            .args(["c", "1", "3"]),
    );
    fs::copy(on_path("busybox").unwrap(), root.join("bin/busybox")).unwrap();
    for tool in ["sh", "chmod", "cat", "rm", "rmdir", "mkdir", "printf"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(tool)).unwrap();
    }
    let rpm = |args: &[&str]| {
        let mut cmd = Command::new("rpm");
        cmd.arg("--root")
            .arg(&root)
            .args(["--dbpath", "/var/lib/rpm"])
            .args(args);
        cmd
    };
    run_ok(&mut rpm(&["--initdb"]));
    let said = run_ok(rpm(&["-i", "--nodeps"]).arg(rpm1));
    for bad in ["scriptlet failed", "not found", "can't"] {
        assert!(!said.contains(bad), "%post: {said}");
    }
    assert!(
        said.contains("kcache install containerd --write"),
        "%post's first-run text:\n{said}"
    );
    for d in [
        "var/lib/kcache/snapshotter",
        "var/lib/kcache/caches",
        "etc/kcache/policy.d",
    ] {
        assert!(root.join(d).is_dir(), "%post made {d}");
    }
    let policy = root.join("etc/kcache/policy.yaml");
    let mut edited = fs::read_to_string(&policy).unwrap();
    edited.push_str("# edited\n");
    fs::write(&policy, &edited).unwrap();
    let said = run_ok(rpm(&["-U", "--nodeps"]).arg(rpm2));
    assert!(!said.contains("kcache install containerd"), "{said}");
    assert_eq!(fs::read_to_string(&policy).unwrap(), edited, "%config(noreplace) kept");
    assert!(!root.join("etc/kcache/policy.yaml.rpmnew").exists());
    let said = run_ok(&mut rpm(&["-e", "--nodeps", "kcache"]));
    for bad in ["scriptlet failed", "not found", "can't"] {
        assert!(!said.contains(bad), "%preun/%postun: {said}");
    }
    assert!(!root.join("usr/bin/kcache").exists());
    assert_eq!(
        fs::read_to_string(root.join("etc/kcache/policy.yaml.rpmsave")).unwrap(),
        edited,
        "erase saves the edited config"
    );
    assert!(root.join("var/lib/kcache").is_dir(), "rpm has no purge: state stays");
}

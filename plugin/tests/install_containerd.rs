//! E2E: `kcache install containerd --write` on a node's version 2 config (as a 1.x node has,
//! and a node upgraded to 2.x keeps), then a real containerd (the harness's version,
//! `KCACHE_CONTAINERD`) started with it: the kcache proxy snapshotter is registered, the CRI
//! plugin loads (with the generated base runtime spec), and `containerd config dump` shows the
//! merged settings and the ones the config already had (on 2.x in the migrated version 3
//! layout, with kcache in the transfer service's unpack_config and the bindir verifier).
//!
//! Needs containerd, ctr and root (`apt-get install containerd runc`). Without them the test is
//! skipped with a message, except under `CI=true`, where it fails.

use kcache_tests::containerd::prerequisites;
use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
};

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for(path: &Path, child: &mut Child, what: &str, log: &Path) {
    kcache_tests::socket::wait_until_listening(
        what,
        &[path],
        Some(child),
        || fs::read_to_string(log).unwrap_or_default(),
        kcache_tests::socket::LISTEN_TIMEOUT,
    );
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn backups(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains(".kcache-bak-"))
        .collect()
}

#[test]
fn the_generated_config_is_accepted_by_containerd() {
    let Some(programs) = prerequisites("the_generated_config_is_accepted_by_containerd", &[]) else {
        return;
    };
    let (containerd, ctr) = (programs.containerd.clone(), programs.ctr.clone());
    let v2x = programs.flavor.is_2x();
    let tmp = tempfile::Builder::new().prefix("kc-inst").tempdir_in("/tmp").unwrap();
    let dir = tmp.path();
    let address = dir.join("containerd.sock");
    let socket = dir.join("kcache.sock");
    let config = dir.join("config.toml");
    let base_spec = dir.join("base-spec.json");
    // A node's config: its own settings (and a comment) must survive the edit.
    let original = format!(
        r#"# node config: keep this comment
version = 2
root = "{root}"
state = "{state}"

[grpc]
  address = "{address}"

[ttrpc]
  address = "{address}.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"

[plugins."io.containerd.nri.v1.nri"]
  socket_path = "{nri}"

[plugins."io.containerd.grpc.v1.cri"]
  # this machine needs it
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
  [plugins."io.containerd.grpc.v1.cri".cni]
    conf_dir = "{cni}"
"#,
        root = dir.join("root").display(),
        state = dir.join("state").display(),
        opt = dir.join("opt").display(),
        address = address.display(),
        cni = dir.join("cni").display(),
        nri = dir.join("nri.sock").display(),
    );
    fs::write(&config, &original).unwrap();

    let install = || {
        Command::new(env!("CARGO_BIN_EXE_kcache"))
            .args(["install", "containerd", "--write", "--containerd-bin"])
            .arg(&containerd)
            .arg("--verifier-bin-dir")
            .arg(dir.join("verifiers"))
            .args(["--verifier-path", env!("CARGO_BIN_EXE_kcache-image-verifier")])
            .arg("--config")
            .arg(&config)
            .arg("--snapshotter-socket")
            .arg(&socket)
            .arg("--base-spec")
            .arg(&base_spec)
            .args(["--hook-path", "/usr/bin/kcache-hook"])
            .arg("--ctr")
            .arg(&ctr)
            .output()
            .unwrap()
    };
    let out = install();
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("backup:") && said.contains("restart containerd to apply (systemctl restart containerd)"),
        "{said}"
    );
    let baks = backups(dir);
    assert_eq!(baks.len(), 1, "{said}");
    assert_eq!(
        fs::read_to_string(&baks[0]).unwrap(),
        original,
        "the backup is the original"
    );
    let edited = fs::read_to_string(&config).unwrap();
    assert!(edited.contains("# node config: keep this comment") && edited.contains("# this machine needs it"));

    // Idempotent.
    let out = install();
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("nothing to change"), "{said}");
    assert!(!said.contains("restart containerd"), "{said}");
    assert_eq!(backups(dir).len(), 1, "no second backup");
    assert_eq!(fs::read_to_string(&config).unwrap(), edited);

    // The base runtime spec: containerd's own default spec plus the hooks.
    let spec: serde_json::Value = serde_json::from_slice(&fs::read(&base_spec).unwrap()).unwrap();
    let theirs: serde_json::Value =
        serde_json::from_slice(&Command::new(&ctr).args(["oci", "spec"]).output().unwrap().stdout).unwrap();
    assert_eq!(spec["process"], theirs["process"]);
    assert_eq!(spec["linux"], theirs["linux"]);
    for phase in ["prestart", "poststop"] {
        assert_eq!(
            spec["hooks"][phase][0],
            serde_json::json!({"path": "/usr/bin/kcache-hook", "args": ["kcache-hook", phase], "timeout": 10})
        );
    }

    // kcached (bare snapshotter) and containerd on the generated config.
    let klog = dir.join("kcached.log");
    let mut kcached = Killed(
        Command::new(env!("CARGO_BIN_EXE_kcached"))
            .arg("--snapshotter-socket")
            .arg(&socket)
            .arg("--root")
            .arg(dir.join("kroot"))
            .arg("--no-policy")
            .arg("--run-dir")
            .arg(dir.join("run"))
            .stdout(Stdio::null())
            .stderr(fs::File::create(&klog).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_for(&socket, &mut kcached.0, "kcached", &klog);
    let clog = dir.join("containerd.log");
    let mut cd = Killed(
        Command::new(&containerd)
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(fs::File::create(&clog).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_for(&address, &mut cd.0, "containerd", &clog);

    let out = Command::new(&ctr)
        .arg("--address")
        .arg(&address)
        .args(["plugins", "ls"])
        .output()
        .unwrap();
    let plugins = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{}", text(&out));
    let status = |ty: &str, id: &str| {
        plugins
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|f| f.len() >= 3 && f[0] == ty && f[1] == id)
            .and_then(|f| f.last().map(|s| s.to_string()))
    };
    let log = || fs::read_to_string(&clog).unwrap_or_default();
    assert_eq!(
        status("io.containerd.snapshotter.v1", "kcache").as_deref(),
        Some("ok"),
        "{plugins}\n{}",
        log()
    );
    assert_eq!(
        status("io.containerd.grpc.v1", "cri").as_deref(),
        Some("ok"),
        "{plugins}\n{}",
        log()
    );

    // The merged config, as containerd reads it.
    let out = Command::new(&containerd)
        .arg("--config")
        .arg(&config)
        .args(["config", "dump"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let dump: toml::Value = toml::from_str(&String::from_utf8_lossy(&out.stdout)).unwrap();
    // Where each setting lives: 1.x's CRI plugin, or 2.x's split (and migrated) one.
    let plugins = &dump["plugins"];
    let (images, runtime) = if v2x {
        assert_eq!(dump["version"].as_integer(), Some(3), "2.x dumps the migrated layout");
        (
            &plugins["io.containerd.cri.v1.images"],
            &plugins["io.containerd.cri.v1.runtime"],
        )
    } else {
        let cri = &plugins["io.containerd.grpc.v1.cri"];
        (&cri["containerd"], cri)
    };
    assert_eq!(images["snapshotter"].as_str(), Some("kcache"));
    if v2x {
        // 2.1: CRI pulls through the transfer service, which must unpack into kcache, with
        // the labels exported to kcached and the verifier in front.
        assert!(images.get("disable_snapshot_annotations").and_then(|v| v.as_bool()) != Some(false));
        let unpack = plugins["io.containerd.transfer.v1.local"]["unpack_config"]
            .as_array()
            .unwrap();
        assert!(
            unpack.iter().any(|e| e["snapshotter"].as_str() == Some("kcache"))
                && unpack.iter().any(|e| e["snapshotter"].as_str() == Some("overlayfs")),
            "{unpack:?}"
        );
        assert_eq!(
            dump["proxy_plugins"]["kcache"]["exports"]["enable_remote_snapshot_annotations"].as_str(),
            Some("true")
        );
        assert_eq!(
            plugins["io.containerd.image-verifier.v1.bindir"]["bin_dir"].as_str(),
            dir.join("verifiers").to_str()
        );
    } else {
        assert_eq!(images["disable_snapshot_annotations"].as_bool(), Some(false));
    }
    assert_eq!(
        runtime["restrict_oom_score_adj"].as_bool(),
        Some(true),
        "the node's setting kept"
    );
    assert_eq!(
        runtime["cni"]["conf_dir"].as_str(),
        Some(dir.join("cni").to_str().unwrap()),
        "the node's setting kept"
    );
    let runc = &runtime["containerd"]["runtimes"]["runc"];
    assert_eq!(runc["base_runtime_spec"].as_str(), base_spec.to_str());
    assert_eq!(runc["runtime_type"].as_str(), Some("io.containerd.runc.v2"));
    assert!(
        runc["pod_annotations"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a.as_str() == Some("kcache.dev/*")),
        "{runc:?}"
    );
    assert_eq!(dump["proxy_plugins"]["kcache"]["address"].as_str(), socket.to_str());
}

/// `--write` for containerd 2.1 on a node config that has its own base runtime spec: the
/// drop-in and its import, the backup, the verifier link, the node's spec kept, idempotence.
/// containerd 2.x cannot be installed here, so this checks the files it would read.
#[test]
fn writing_for_containerd_2_keeps_the_nodes_base_spec_and_links_the_verifier() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let config = dir.join("config.toml");
    let node_spec = dir.join("node-spec.json");
    fs::write(
        &node_spec,
        r#"{"ociVersion":"1.1.0","process":{"cwd":"/","rlimits":[{"type":"RLIMIT_NOFILE","hard":4242,"soft":4242}]}}"#,
    )
    .unwrap();
    let original = format!(
        "version = 3\n\n[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]\n  runtime_type = 'io.containerd.runc.v2'\n  base_runtime_spec = '{}'\n\n[plugins.'io.containerd.cri.v1.images'.registry]\n  config_path = '/etc/containerd/certs.d:/etc/docker/certs.d'\n",
        node_spec.display()
    );
    fs::write(&config, &original).unwrap();
    // kcache's own config: its registry config_path follows containerd's, the rest is kept.
    let kcache_config = dir.join("etc-kcache/config.toml");
    fs::create_dir_all(kcache_config.parent().unwrap()).unwrap();
    let kcache_original =
        "# the admin's note\npolicy = \"/etc/kcache/policy.yaml\"\n\n[registry]\ntimeout_seconds = 7\n";
    fs::write(&kcache_config, kcache_original).unwrap();
    let bin_dir = dir.join("verifiers");
    let base_spec = dir.join("kcache-spec.json");
    let install = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_kcache"))
            .args(["install", "containerd", "--containerd-version", "2.1"])
            .args(extra)
            .arg("--config")
            .arg(&config)
            .arg("--base-spec")
            .arg(&base_spec)
            .arg("--verifier-bin-dir")
            .arg(&bin_dir)
            .args(["--verifier-path", env!("CARGO_BIN_EXE_kcache-image-verifier")])
            .args(["--ctr", "/nonexistent/ctr"])
            .arg("--kcache-config")
            .arg(&kcache_config)
            .output()
            .unwrap()
    };

    // --print writes nothing.
    let out = install(&["--print"]);
    assert!(out.status.success(), "{}", text(&out));
    let said = text(&out);
    assert!(
        said.contains("enable_remote_snapshot_annotations") && said.contains(node_spec.to_str().unwrap()),
        "{said}"
    );
    assert!(
        said.contains(r#"[registry] config_path = "/etc/containerd/certs.d:/etc/docker/certs.d""#),
        "{said}"
    );
    assert_eq!(fs::read_to_string(&config).unwrap(), original);
    assert_eq!(fs::read_to_string(&kcache_config).unwrap(), kcache_original);
    assert!(!base_spec.exists() && !bin_dir.exists());

    let out = install(&["--write"]);
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("restart containerd to apply"), "{said}");
    assert_eq!(backups(dir).len(), 1, "{said}");
    let main: toml::Value = toml::from_str(&fs::read_to_string(&config).unwrap()).unwrap();
    let drop_in = dir.join("conf.d/kcache.toml");
    assert_eq!(
        main["imports"].as_array().unwrap()[0].as_str(),
        drop_in.to_str(),
        "config.toml imports the drop-in"
    );
    let d: toml::Value = toml::from_str(&fs::read_to_string(&drop_in).unwrap()).unwrap();
    assert_eq!(
        d["proxy_plugins"]["kcache"]["exports"]["enable_remote_snapshot_annotations"].as_str(),
        Some("true")
    );
    assert_eq!(
        d["plugins"]["io.containerd.cri.v1.images"]["snapshotter"].as_str(),
        Some("kcache")
    );
    assert!(
        d["plugins"]["io.containerd.cri.v1.images"]
            .get("disable_snapshot_annotations")
            .is_none(),
        "2.1 pulls through the transfer service: that key would turn the verifier off"
    );
    let runc = &d["plugins"]["io.containerd.cri.v1.runtime"]["containerd"]["runtimes"]["runc"];
    assert_eq!(runc["base_runtime_spec"].as_str(), base_spec.to_str());
    assert_eq!(
        d["plugins"]["io.containerd.image-verifier.v1.bindir"]["bin_dir"].as_str(),
        bin_dir.to_str()
    );
    assert_eq!(
        fs::read_link(bin_dir.join("00-kcache")).unwrap(),
        Path::new(env!("CARGO_BIN_EXE_kcache-image-verifier"))
    );
    // The node's own base spec is where kcache's starts: its rlimit is kept, the hooks added.
    let spec: serde_json::Value = serde_json::from_slice(&fs::read(&base_spec).unwrap()).unwrap();
    assert_eq!(spec["process"]["rlimits"][0]["hard"], 4242, "{spec}");
    assert_eq!(spec["hooks"]["prestart"][0]["args"][1], "prestart");
    assert_eq!(spec["hooks"]["poststop"][0]["timeout"], 10);
    // kcache asks the hosts containerd pulls from; the admin's note and keys stay, and the
    // file parses as kcached's config.
    let kc = fs::read_to_string(&kcache_config).unwrap();
    assert!(
        kc.starts_with("# the admin's note\n") && kc.contains("timeout_seconds = 7"),
        "{kc}"
    );
    let parsed = kcache_plugin::daemon::config::FileConfig::load(&kcache_config, true).unwrap();
    assert_eq!(
        parsed.registry.config_path.as_deref(),
        Some("/etc/containerd/certs.d:/etc/docker/certs.d")
    );

    // Idempotent: nothing changes, no second backup, the verifier link stays.
    let out = install(&["--write"]);
    let said = text(&out);
    assert!(out.status.success() && said.contains("nothing to change"), "{said}");
    assert_eq!(backups(dir).len(), 1);

    // Something else in kcache's place in bin_dir is never replaced.
    fs::remove_file(bin_dir.join("00-kcache")).unwrap();
    fs::write(bin_dir.join("00-kcache"), "#!/bin/sh\nexit 0\n").unwrap();
    let out = install(&["--write"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("is not a link kcache made"), "{}", text(&out));
}

/// `kcache uninstall containerd --write` after an install and an edit the admin made since:
/// exactly kcache's settings go (the node's snapshotter comes back from the pre-install backup),
/// the edit stays, a second run changes nothing, and a real containerd (the harness's version)
/// starts on the result and pulls with its own snapshotter, kcached nowhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uninstall_takes_out_what_install_added_and_containerd_pulls_on_its_own() {
    let Some(programs) = prerequisites("uninstall_takes_out_what_install_added", &["runc"]) else {
        return;
    };
    let tmp = tempfile::Builder::new().prefix("kc-uninst").tempdir_in("/tmp").unwrap();
    let dir = tmp.path();
    let address = dir.join("containerd.sock");
    let config = dir.join("config.toml");
    let original = format!(
        r#"# node config: keep this comment
version = 2
root = "{root}"
state = "{state}"

[grpc]
  address = "{address}"

[ttrpc]
  address = "{address}.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"

[plugins."io.containerd.nri.v1.nri"]
  socket_path = "{nri}"

[plugins."io.containerd.grpc.v1.cri"]
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
  [plugins."io.containerd.grpc.v1.cri".cni]
    conf_dir = "{cni}"
"#,
        root = dir.join("root").display(),
        state = dir.join("state").display(),
        opt = dir.join("opt").display(),
        address = address.display(),
        cni = dir.join("cni").display(),
        nri = dir.join("nri.sock").display(),
    );
    fs::write(&config, &original).unwrap();
    let verifiers = dir.join("verifiers");
    let base_spec = dir.join("base-spec.json");
    let kcache = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_kcache"))
            .args(args)
            .arg("--config")
            .arg(&config)
            .arg("--base-spec")
            .arg(&base_spec)
            .arg("--verifier-bin-dir")
            .arg(&verifiers)
            .output()
            .unwrap()
    };
    let out = kcache(&[
        "install",
        "containerd",
        "--write",
        "--containerd-bin",
        programs.containerd.to_str().unwrap(),
        "--ctr",
        programs.ctr.to_str().unwrap(),
        "--verifier-path",
        env!("CARGO_BIN_EXE_kcache-image-verifier"),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    // The admin's edit after the install.
    let installed = fs::read_to_string(&config).unwrap();
    fs::write(&config, format!("oom_score = -999\n{installed}")).unwrap();

    let out = kcache(&["uninstall", "containerd", "--write"]);
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("backup:") && said.contains("restart containerd"),
        "{said}"
    );
    let after = fs::read_to_string(&config).unwrap();
    assert!(!after.contains("kcache"), "{after}");
    assert!(after.contains("oom_score = -999") && after.contains("# node config: keep this comment"));
    let v: toml::Value = toml::from_str(&after).unwrap();
    assert_eq!(
        v["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["snapshotter"].as_str(),
        Some("overlayfs"),
        "the node's snapshotter is back: {after}"
    );
    assert!(!base_spec.exists(), "kcache's base spec is gone");
    assert!(!dir.join("conf.d/kcache.toml").exists() && !verifiers.join("00-kcache").exists());
    let out = kcache(&["uninstall", "containerd", "--write"]);
    assert!(
        out.status.success() && text(&out).contains("nothing to change"),
        "{}",
        text(&out)
    );

    // containerd on the result: its own snapshotter, no kcached anywhere.
    let reg = kcache_tests::TestRegistry::start();
    let image = format!("{}/own/app:v1", reg.host());
    kcache_tests::images::Image::busybox("own", &["/bin/busybox", "true"])
        .push(&reg, "own/app:v1")
        .await;
    let clog = dir.join("containerd.log");
    let mut cd = Killed(
        Command::new(&programs.containerd)
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(fs::File::create(&clog).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_for(&address, &mut cd.0, "containerd", &clog);
    let ctr = |args: &[&str]| {
        Command::new(&programs.ctr)
            .arg("--address")
            .arg(&address)
            .args(["--namespace", "own"])
            .args(args)
            .output()
            .unwrap()
    };
    let out = ctr(&["images", "pull", "--plain-http", &image]);
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out),
        fs::read_to_string(&clog).unwrap_or_default()
    );
    let out = ctr(&["snapshots", "--snapshotter", "overlayfs", "ls"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).lines().count() > 1,
        "the image unpacked with overlayfs: {}",
        text(&out)
    );
    let out = Command::new(&programs.containerd)
        .arg("--config")
        .arg(&config)
        .args(["config", "dump"])
        .output()
        .unwrap();
    let dump = String::from_utf8_lossy(&out.stdout);
    assert!(!dump.contains("kcache"), "{dump}");
    unmount_all(dir);
}

fn unmount_all(dir: &Path) {
    kcache_tests::containerd::unmount_under(dir);
}

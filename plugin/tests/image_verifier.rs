//! `kcache-image-verifier` invoked exactly as containerd 2.x's bindir image verifier runs it
//! (pkg/imageverifier/bindir): `-name REF -digest DIGEST -stdin-media-type
//! application/vnd.oci.descriptor.v1+json`, the JSON descriptor (Go's json.Encoder output, with
//! its trailing newline) on stdin, stdout read as the reason, exit 0 = allowed, and a kill after
//! `per_verifier_timeout` (10 s). Against a real docker-registry on loopback with images signed
//! by kcache's own signer; with kcached down (in-process fallback) and up (its verdict cache).

use std::{
    io::Write,
    os::unix::net::UnixListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use kcache_core::{cosign::sign::sign_and_push, digest::Digest, signing::PrivateKey};
use kcache_tests::{
    hostile::{Behavior, HostileRegistry},
    TestRegistry,
};

const DESCRIPTOR: &str = "application/vnd.oci.descriptor.v1+json";
const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// containerd's default per_verifier_timeout.
const CONTAINERD_TIMEOUT: Duration = Duration::from_secs(10);

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

/// Runs the verifier as containerd does: the three flags (in the given spelling), the
/// descriptor JSON plus newline on stdin, a kill after 10 s.
fn invoke(args: &[String], stdin: &str, env: &[(&str, &str)]) -> Run {
    let start = Instant::now();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kcache-image-verifier"));
    cmd.args(args)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let mut input = child.stdin.take().unwrap();
    // A verifier may exit before reading all of stdin (containerd logs the broken pipe).
    let _ = input.write_all(stdin.as_bytes());
    drop(input);
    let out = wait_with_kill(child, CONTAINERD_TIMEOUT);
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        elapsed: start.elapsed(),
    }
}

fn wait_with_kill(mut child: Child, limit: Duration) -> std::process::Output {
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("the verifier ran past containerd's per_verifier_timeout and was killed");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().unwrap()
}

fn containerd_args(name: &str, digest: &str) -> Vec<String> {
    ["-name", name, "-digest", digest, "-stdin-media-type", DESCRIPTOR]
        .map(String::from)
        .to_vec()
}

/// What Go's json.Encoder writes for an ocispec.Descriptor.
fn descriptor(media_type: &str, digest: &Digest, size: usize) -> String {
    format!("{{\"mediaType\":\"{media_type}\",\"digest\":\"{digest}\",\"size\":{size}}}\n")
}

struct World {
    reg: TestRegistry,
    tmp: tempfile::TempDir,
    host: String,
    web: (Digest, usize),
    other: (Digest, usize),
    index: (Digest, usize),
    platform: Digest,
    key: PrivateKey,
}

impl World {
    fn dir(&self) -> &Path {
        self.tmp.path()
    }

    /// The environment: a config file naming the policy, the (absent) API socket and the
    /// insecure registry, as /etc/kcache/config.toml would.
    fn env(&self) -> Vec<(&'static str, String)> {
        vec![("KCACHE_CONFIG", self.dir().join("config.toml").display().to_string())]
    }

    fn run(&self, args: &[String], stdin: &str, extra: &[(&str, &str)]) -> Run {
        let base = self.env();
        let mut env: Vec<(&str, &str)> = base.iter().map(|(k, v)| (*k, v.as_str())).collect();
        env.extend_from_slice(extra);
        let r = invoke(args, stdin, &env);
        assert!(
            r.stdout.trim().lines().count() == 1,
            "one reason line on stdout, got {:?} (stderr {:?})",
            r.stdout,
            r.stderr
        );
        r
    }
}

fn policy(host: &str, key: &Path) -> String {
    format!(
        "mode: enforce\ndefault: deny\nrules:\n  - name: apps\n    images: [\"{host}/apps/*\"]\n    authorities:\n      - key: {{path: {}}}\n    transparencyLog: off\n",
        key.display()
    )
}

async fn world() -> World {
    let reg = TestRegistry::start();
    let host = reg.host();
    let tmp = tempfile::Builder::new().prefix("kc-iv").tempdir().unwrap();
    let d = tmp.path();
    let (web, web_m) = reg.push_image("apps/web:v1", "web").await;
    let (other, other_m) = reg.push_image("apps/other:v1", "other").await;
    // A two-platform index under apps/multi:v1; only the index is signed.
    let (platform, pa) = reg.push_image("apps/multi:amd64", "amd64").await;
    let (pb, pb_m) = reg.push_image("apps/multi:arm64", "arm64").await;
    let index_bytes = format!(
        r#"{{"schemaVersion":2,"mediaType":"{INDEX}","manifests":[{{"mediaType":"{MANIFEST}","digest":"{platform}","size":{},"platform":{{"architecture":"amd64","os":"linux"}}}},{{"mediaType":"{MANIFEST}","digest":"{pb}","size":{},"platform":{{"architecture":"arm64","os":"linux"}}}}]}}"#,
        pa.len(),
        pb_m.len()
    );
    let client = reg.client();
    let r = reg.reference("apps/multi:v1");
    let index = client
        .push_manifest(&r, "v1", INDEX, index_bytes.as_bytes())
        .await
        .unwrap();
    let key = PrivateKey::generate_p256();
    let pubkey = d.join("cosign.pub");
    std::fs::write(&pubkey, key.public_key().to_pem()).unwrap();
    sign_and_push(&client, &key, &reg.reference("apps/web:v1"), false)
        .await
        .unwrap();
    sign_and_push(&client, &key, &r, true).await.unwrap();
    std::fs::write(d.join("policy.yaml"), policy(&host, &pubkey)).unwrap();
    std::fs::write(
        d.join("config.toml"),
        format!(
            "policy = \"{}\"\napi_socket = \"{}\"\n[registry]\ninsecure = [\"{host}\"]\n",
            d.join("policy.yaml").display(),
            d.join("api.sock").display()
        ),
    )
    .unwrap();
    World {
        reg,
        host,
        web: (web, web_m.len()),
        other: (other, other_m.len()),
        index: (index, index_bytes.len()),
        platform,
        key,
        tmp,
    }
}

fn assert_names(r: &Run, parts: &[&str]) {
    for p in parts {
        assert!(r.stdout.contains(p), "{p:?} missing in {:?}", r.stdout);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kcached_down_the_verifier_decides_in_process() {
    let w = world().await;
    let web = format!("{}/apps/web:v1", w.host);
    let other = format!("{}/apps/other:v1", w.host);
    let multi = format!("{}/apps/multi:v1", w.host);

    // Signed manifest: allowed, from the in-process fallback (no kcached at api.sock).
    let r = w.run(
        &containerd_args(&web, w.web.0.as_str()),
        &descriptor(MANIFEST, &w.web.0, w.web.1),
        &[],
    );
    assert_eq!(r.code, Some(0), "{} {}", r.stdout, r.stderr);
    assert_names(&r, &["allowed", &web, w.web.0.as_str(), "rule apps", "in process"]);
    assert!(r.elapsed < Duration::from_secs(8), "{:?}", r.elapsed);
    eprintln!(
        "verifier in process (kcached down): {:?} (process start included)",
        r.elapsed
    );

    // Unsigned: denied; the reason names the image, the digest and the rule.
    let r = w.run(
        &containerd_args(&other, w.other.0.as_str()),
        &descriptor(MANIFEST, &w.other.0, w.other.1),
        &[],
    );
    assert_eq!(r.code, Some(1), "{}", r.stdout);
    assert_names(&r, &["denied", &other, w.other.0.as_str(), "rule apps", "no signature"]);

    // The index digest (containerd hands the verifier the index it resolved): the index is
    // signed, so it is allowed; and a platform manifest listed in it, through the signed index.
    let r = w.run(
        &containerd_args(&multi, w.index.0.as_str()),
        &descriptor(INDEX, &w.index.0, w.index.1),
        &[],
    );
    assert_eq!(r.code, Some(0), "{}", r.stdout);
    assert_names(&r, &["allowed", w.index.0.as_str(), "signature verified"]);
    let r = w.run(
        &containerd_args(&multi, w.platform.as_str()),
        &descriptor(MANIFEST, &w.platform, 0),
        &[],
    );
    assert_eq!(r.code, Some(0), "{}", r.stdout);
    assert_names(&r, &["allowed", "listed in signed index"]);

    // The descriptor on stdin must be for -digest.
    let r = w.run(
        &containerd_args(&web, w.web.0.as_str()),
        &descriptor(MANIFEST, &w.other.0, w.other.1),
        &[],
    );
    assert_eq!(r.code, Some(1), "{}", r.stdout);
    assert_names(&r, &["denied", "not -digest", w.other.0.as_str()]);
    // ... in the media type -stdin-media-type names, and bounded.
    let mut args = containerd_args(&web, w.web.0.as_str());
    args[5] = "application/json".into();
    let r = w.run(&args, &descriptor(MANIFEST, &w.web.0, w.web.1), &[]);
    assert_eq!(r.code, Some(1), "{}", r.stdout);
    assert_names(&r, &["unsupported -stdin-media-type"]);
    let r = w.run(&containerd_args(&web, w.web.0.as_str()), &" ".repeat(2 << 20), &[]);
    assert_eq!(r.code, Some(1), "{}", r.stdout);
    assert_names(&r, &["larger than"]);
    // -name pinning another digest than -digest.
    let r = w.run(
        &containerd_args(&format!("{}/apps/web@{}", w.host, w.other.0), w.web.0.as_str()),
        &descriptor(MANIFEST, &w.web.0, w.web.1),
        &[],
    );
    assert_eq!(r.code, Some(1), "{}", r.stdout);
    assert_names(&r, &["pins another digest"]);

    // The other spellings Go's flag package accepts.
    let args: Vec<String> = vec![
        format!("--name={web}"),
        "-digest".into(),
        w.web.0.to_string(),
        format!("--stdin-media-type={DESCRIPTOR}"),
    ];
    let r = w.run(&args, &descriptor(MANIFEST, &w.web.0, w.web.1), &[]);
    assert_eq!(r.code, Some(0), "{}", r.stdout);
    // An unknown flag is refused (exit 2), not ignored.
    let mut args = containerd_args(&web, w.web.0.as_str());
    args.push("-bogus".into());
    let r = w.run(&args, &descriptor(MANIFEST, &w.web.0, w.web.1), &[]);
    assert_eq!(r.code, Some(2), "{}", r.stdout);
    assert_names(&r, &["not defined: -bogus"]);

    // The tag moves to an unsigned image: -digest (the signed one) is still what is verified,
    // and the new, unsigned digest under the same -name is denied.
    let (moved, moved_m) = w.reg.push_image("apps/web:v1", "web, replaced").await;
    assert_ne!(moved, w.web.0);
    let r = w.run(
        &containerd_args(&web, w.web.0.as_str()),
        &descriptor(MANIFEST, &w.web.0, w.web.1),
        &[],
    );
    assert_eq!(r.code, Some(0), "{}", r.stdout);
    assert_names(&r, &[w.web.0.as_str()]);
    let r = w.run(
        &containerd_args(&web, moved.as_str()),
        &descriptor(MANIFEST, &moved, moved_m.len()),
        &[],
    );
    assert_eq!(r.code, Some(1), "{}", r.stdout);
    assert_names(&r, &["denied", moved.as_str()]);

    // Environment overrides: a deny-all policy through KCACHE_POLICY.
    let deny = w.dir().join("deny.yaml");
    std::fs::write(&deny, "mode: enforce\ndefault: deny\nrules: []\n").unwrap();
    let r = w.run(
        &containerd_args(&web, w.web.0.as_str()),
        &descriptor(MANIFEST, &w.web.0, w.web.1),
        &[("KCACHE_POLICY", deny.to_str().unwrap())],
    );
    assert_eq!(r.code, Some(1), "{}", r.stdout);
    assert_names(&r, &["denied", "rule <default>", "policy default is deny"]);
    // A policy that does not load is a configuration error (exit 2), never an allow.
    let r = w.run(
        &containerd_args(&web, w.web.0.as_str()),
        &descriptor(MANIFEST, &w.web.0, w.web.1),
        &[("KCACHE_POLICY", "/nonexistent/policy.yaml")],
    );
    assert_eq!(r.code, Some(2), "{}", r.stdout);
    assert_names(&r, &["cannot load policy", "kcached is not reachable"]);
    let _ = &w.key;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_verifier_denies_before_containerd_kills_it() {
    // A registry that accepts and never answers: the verifier must not run into containerd's
    // per_verifier_timeout (an opaque error); it denies with a reason at its own deadline.
    let hostile = HostileRegistry::start(Behavior::Hang);
    let host = hostile.host();
    let tmp = tempfile::tempdir().unwrap();
    let key = PrivateKey::generate_p256();
    let pubkey = tmp.path().join("cosign.pub");
    std::fs::write(&pubkey, key.public_key().to_pem()).unwrap();
    let pol = tmp.path().join("policy.yaml");
    std::fs::write(&pol, policy(&host, &pubkey)).unwrap();
    let digest = Digest::parse(&format!("sha256:{}", "ab".repeat(32))).unwrap();
    let image = format!("{host}/apps/web:v1");
    let env = [
        ("KCACHE_POLICY", pol.to_str().unwrap()),
        ("KCACHE_API_SOCKET", "/nonexistent/kcache.sock"),
        ("KCACHE_INSECURE_REGISTRY", host.as_str()),
        ("KCACHE_CONFIG", "/dev/null"),
    ];
    let r = invoke(
        &containerd_args(&image, digest.as_str()),
        &descriptor(MANIFEST, &digest, 1),
        &env,
    );
    assert_eq!(r.code, Some(1), "{} {}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains("no decision within 8000 ms") && r.stdout.contains(&image),
        "{}",
        r.stdout
    );
    // The contract, not a speed: no earlier than the deadline, and before containerd's own
    // per_verifier_timeout (10 s) kills the verifier with an opaque error.
    assert!(
        r.elapsed >= Duration::from_secs(8) && r.elapsed < Duration::from_secs(10),
        "{:?}",
        r.elapsed
    );

    // A shorter deadline from the environment; and a kcached that accepts but never answers
    // gets half the time, then the verifier falls back (here into the hanging registry).
    let sock = tmp.path().join("hung.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let _hold = std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming() {
            held.push(s);
        }
    });
    let env = [
        ("KCACHE_POLICY", pol.to_str().unwrap()),
        ("KCACHE_API_SOCKET", sock.to_str().unwrap()),
        ("KCACHE_INSECURE_REGISTRY", host.as_str()),
        ("KCACHE_CONFIG", "/dev/null"),
        ("KCACHE_VERIFIER_DEADLINE_MS", "1500"),
    ];
    let r = invoke(
        &containerd_args(&image, digest.as_str()),
        &descriptor(MANIFEST, &digest, 1),
        &env,
    );
    assert_eq!(r.code, Some(1), "{}", r.stdout);
    assert!(
        r.stdout.contains("no decision within 1500 ms")
            && r.stdout.contains("did not answer")
            && r.stdout.contains("verifying in process"),
        "{}",
        r.stdout
    );
    assert!(r.elapsed < Duration::from_secs(3), "{:?}", r.elapsed);
}

struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_kcached(dir: &Path, policy: &Path, host: &str) -> Daemon {
    let log = dir.join("kcached.log");
    let child = Command::new(env!("CARGO_BIN_EXE_kcached"))
        .args(["--policy".as_ref(), policy.as_os_str()])
        .args(["--snapshotter-socket".as_ref(), dir.join("snap.sock").as_os_str()])
        .args(["--api-socket".as_ref(), dir.join("api.sock").as_os_str()])
        .args(["--root".as_ref(), dir.join("root").as_os_str()])
        .args(["--cache-root".as_ref(), dir.join("caches").as_os_str()])
        .args(["--caches-dir".as_ref(), dir.join("caches.d").as_os_str()])
        .args(["--run-dir".as_ref(), dir.join("run").as_os_str()])
        .args(["--config".as_ref(), dir.join("kcached.toml").as_os_str()])
        .args(["--insecure-registry", host])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut d = Daemon { child, log };
    let log = d.log.clone();
    kcache_tests::socket::wait_until_listening(
        "kcached",
        &[&dir.join("api.sock")],
        Some(&mut d.child),
        || std::fs::read_to_string(&log).unwrap_or_default(),
        kcache_tests::socket::LISTEN_TIMEOUT,
    );
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kcached_up_answers_and_caches_the_verdict() {
    let w = world().await;
    let web = format!("{}/apps/web:v1", w.host);
    let other = format!("{}/apps/other:v1", w.host);
    std::fs::write(w.dir().join("kcached.toml"), "").unwrap();
    let _daemon = start_kcached(w.dir(), &w.dir().join("policy.yaml"), &w.host);
    // The local policy denies everything: an allow can only come from kcached's policy.
    let deny = w.dir().join("deny.yaml");
    std::fs::write(&deny, "mode: enforce\ndefault: deny\nrules: []\n").unwrap();
    let env = [("KCACHE_POLICY", deny.to_str().unwrap())];

    let first = w.run(
        &containerd_args(&web, w.web.0.as_str()),
        &descriptor(MANIFEST, &w.web.0, w.web.1),
        &env,
    );
    assert_eq!(first.code, Some(0), "{} {}", first.stdout, first.stderr);
    assert_names(&first, &["allowed", &web, w.web.0.as_str(), "rule apps", "[kcached]"]);
    let second = w.run(
        &containerd_args(&web, w.web.0.as_str()),
        &descriptor(MANIFEST, &w.web.0, w.web.1),
        &env,
    );
    assert_eq!(second.code, Some(0), "{}", second.stdout);
    assert_names(&second, &["[kcached, cached verdict]"]);
    eprintln!(
        "verifier via kcached: first {:?}, cached {:?} (process start included)",
        first.elapsed, second.elapsed
    );

    let r = w.run(
        &containerd_args(&other, w.other.0.as_str()),
        &descriptor(MANIFEST, &w.other.0, w.other.1),
        &env,
    );
    assert_eq!(r.code, Some(1), "{}", r.stdout);
    assert_names(&r, &["denied", &other, w.other.0.as_str(), "rule apps", "[kcached]"]);

    // The index, through kcached.
    let multi = format!("{}/apps/multi:v1", w.host);
    let r = w.run(
        &containerd_args(&multi, w.index.0.as_str()),
        &descriptor(INDEX, &w.index.0, w.index.1),
        &env,
    );
    assert_eq!(r.code, Some(0), "{}", r.stdout);
    assert_names(&r, &["allowed", w.index.0.as_str(), "[kcached]"]);
}

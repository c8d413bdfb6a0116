//! `kcache-image-verifier`: an image verifier for containerd 2.x's
//! `io.containerd.image-verifier.v1.bindir` plugin.
//!
//! containerd runs every executable in `bin_dir` on each pull as
//! `BIN -name REF -digest sha256:… -stdin-media-type application/vnd.oci.descriptor.v1+json`
//! (plus `-operation pull|run` where `verify_on_run` exists), writes the JSON descriptor of
//! what it resolved (a manifest or an index) to stdin, reads at most 32 KiB of stdout as the
//! reason, logs stderr at debug level, and allows the pull only on exit status 0. A verifier
//! still running after `per_verifier_timeout` (default 10 s) is killed and the pull fails with
//! an opaque error, so this binary decides within its own, shorter deadline (8 s by default)
//! and says why.
//!
//! It verifies exactly `-digest`: `-name` only gives the repository (and the tag for the
//! signed-index rule); it is never resolved again to pick what to verify. kcached answers
//! first (same policy and verdict cache as the snapshotter's gate); when kcached is not
//! reachable the binary verifies in process with the node policy.
//!
//! Settings: `/etc/kcache/config.toml` (or `KCACHE_CONFIG`): `policy`, `api_socket`,
//! `[registry]`, `[image_verifier] deadline_ms`; environment overrides: `KCACHE_POLICY`,
//! `KCACHE_API_SOCKET`, `KCACHE_INSECURE_REGISTRY` (comma separated), `KCACHE_AUTH_FILE`,
//! `KCACHE_VERIFIER_DEADLINE_MS`, `KCACHE_LOG` (stderr log filter, default `warn`).
//!
//! Exit status: 0 allowed; 1 denied (or no decision in time); 2 bad invocation or
//! configuration. Every non-zero status blocks the pull.

use std::{
    io::{Read, Write},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use kcache_core::{
    api::Client as ApiClient,
    digest::Digest,
    image_verifier::{check_daemon_answer, check_request, falls_back, parse_args, refused, verdict_line, MAX_STDIN},
    paths,
    policy::Policy,
    registry::{Client as RegistryClient, Reference, RegistryConfig},
    verifier::Verifier,
};
use kcache_plugin::daemon::config::FileConfig;

/// Default decision deadline: below containerd's default `per_verifier_timeout` of 10 s.
const DEFAULT_DEADLINE: Duration = Duration::from_millis(8000);
/// containerd reads this much of stdout; the reason line is kept shorter.
const MAX_REASON: usize = 16 * 1024;

const USAGE: &str = "usage: kcache-image-verifier -name REF -digest sha256:HEX -stdin-media-type TYPE [-operation pull|run] < descriptor.json";

// ---------------------------------------------------------------------------------------------
// One decision, printed once.

/// The single exit: the first caller prints its line and exits; a later one (the watchdog
/// racing the verification) waits for that exit.
static DECIDED: Mutex<bool> = Mutex::new(false);

fn conclude(code: u8, line: &str) -> ! {
    let mut done = DECIDED.lock().unwrap_or_else(|p| p.into_inner());
    if *done {
        drop(done);
        loop {
            std::thread::park();
        }
    }
    *done = true;
    let mut line: String = line.replace(['\n', '\r'], " ");
    if line.len() > MAX_REASON {
        let mut cut = MAX_REASON;
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        line.truncate(cut);
        line.push_str(" …");
    }
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
    std::process::exit(i32::from(code))
}

/// What the watchdog reports when the deadline passes.
#[derive(Clone, Default)]
struct Progress(Arc<Mutex<String>>);

impl Progress {
    fn set(&self, s: impl Into<String>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = s.into();
    }
    fn get(&self) -> String {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

// ---------------------------------------------------------------------------------------------
// Settings.

struct Settings {
    policy: PathBuf,
    api_socket: PathBuf,
    registry: RegistryConfig,
    deadline: Duration,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn settings() -> Result<Settings, String> {
    let (path, required) = match env("KCACHE_CONFIG") {
        Some(p) => (PathBuf::from(p), true),
        None => (PathBuf::from(kcache_plugin::daemon::config::DEFAULT_CONFIG), false),
    };
    let file = FileConfig::load(&path, required).map_err(|e| e.to_string())?;
    let registry = file.registry.client_config(
        env("KCACHE_INSECURE_REGISTRY")
            .map(|v| {
                v.split([',', ' '])
                    .filter(|h| !h.is_empty())
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default(),
        env("KCACHE_AUTH_FILE").map(PathBuf::from),
        env("KCACHE_REGISTRY_CONFIG_PATH").map(|v| kcache_core::registry::split_config_path(&v)),
    );
    let deadline = match env("KCACHE_VERIFIER_DEADLINE_MS") {
        Some(v) => Duration::from_millis(
            v.trim()
                .parse()
                .map_err(|_| format!("KCACHE_VERIFIER_DEADLINE_MS={v:?} is not a number of milliseconds"))?,
        ),
        None => file
            .image_verifier
            .deadline_ms
            .map_or(DEFAULT_DEADLINE, Duration::from_millis),
    };
    Ok(Settings {
        policy: env("KCACHE_POLICY")
            .map(PathBuf::from)
            .or(file.policy)
            .unwrap_or_else(|| paths::POLICY.into()),
        api_socket: env("KCACHE_API_SOCKET")
            .map(PathBuf::from)
            .or(file.api_socket)
            .unwrap_or_else(|| paths::API_SOCKET.into()),
        registry,
        deadline: deadline.max(Duration::from_millis(100)),
    })
}

// ---------------------------------------------------------------------------------------------
// The decision (the rules are kcache_core::image_verifier's).

fn load_policy(path: &Path) -> Result<Policy, String> {
    let dir = path.parent().map(|p| p.join("policy.d")).filter(|d| d.is_dir());
    Policy::load(path, dir.as_deref()).map_err(|e| format!("cannot load policy {}: {e}", path.display()))
}

async fn decide(s: Settings, reference: Reference, digest: Digest, deadline: Instant, progress: Progress) -> ! {
    let image = reference.to_string();
    // kcached gets at most half the time left, so a hung daemon leaves room to verify here.
    let left = deadline.saturating_duration_since(Instant::now());
    progress.set(format!("asking kcached at {}", s.api_socket.display()));
    let api = ApiClient::new(&s.api_socket).with_timeout(left / 2);
    let daemon_error = match api.verify(&image, Some(&digest)).await {
        Ok(v) => {
            if let Err(why) = check_daemon_answer(&v, &digest) {
                conclude(1, &refused(&image, digest.as_str(), &why));
            }
            let source = if v.cached { "kcached, cached verdict" } else { "kcached" };
            conclude(if v.permits() { 0 } else { 1 }, &verdict_line(&v, source));
        }
        Err(e) if !falls_back(&e) => conclude(1, &refused(&image, digest.as_str(), &e.to_string())),
        Err(e) => e,
    };
    tracing::info!(%daemon_error, "verifying in process");
    progress.set(format!("{daemon_error}; verifying in process"));
    let policy = match load_policy(&s.policy) {
        Ok(p) => p,
        Err(e) => conclude(
            2,
            &refused(&image, digest.as_str(), &format!("{daemon_error}, and {e}")),
        ),
    };
    let client = match RegistryClient::new(s.registry) {
        Ok(c) => Arc::new(c),
        Err(e) => conclude(
            2,
            &refused(
                &image,
                digest.as_str(),
                &format!("cannot set up the registry client: {e}"),
            ),
        ),
    };
    let v = Verifier::new(client).verify_digest(&policy, &reference, &digest).await;
    let source = format!("in process: {daemon_error}");
    conclude(if v.permits() { 0 } else { 1 }, &verdict_line(&v, &source))
}

fn main() {
    let started = Instant::now();
    let filter = std::env::var("KCACHE_LOG").unwrap_or_else(|_| "warn".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();

    let argv: Vec<String> = match std::env::args_os()
        .skip(1)
        .map(|a| a.into_string())
        .collect::<Result<_, _>>()
    {
        Ok(v) => v,
        Err(a) => conclude(2, &format!("kcache: denied: argument {a:?} is not UTF-8\n{USAGE}")),
    };
    let args = match parse_args(&argv) {
        Ok(a) => a,
        Err(e) => conclude(2, &format!("kcache: denied: {e}; {USAGE}")),
    };
    if args.help {
        // Exit 0 would read as "allowed": help is never a decision.
        conclude(2, USAGE);
    }
    let (Some(name), Some(digest), Some(media_type)) = (args.name, args.digest, args.stdin_media_type) else {
        conclude(
            2,
            &format!("kcache: denied: -name, -digest and -stdin-media-type are required; {USAGE}"),
        );
    };
    let digest = match Digest::parse(&digest) {
        Ok(d) => d,
        Err(e) => conclude(2, &format!("kcache: denied: image {name}: -digest {digest:?}: {e}")),
    };
    let s = match settings() {
        Ok(s) => s,
        Err(e) => conclude(2, &refused(&name, digest.as_str(), &e.to_string())),
    };
    let deadline = started + s.deadline;
    let progress = Progress::default();
    {
        let (progress, name, digest, budget) = (progress.clone(), name.clone(), digest.clone(), s.deadline);
        std::thread::spawn(move || {
            std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
            conclude(
                1,
                &refused(
                    &name,
                    digest.as_str(),
                    &format!("no decision within {} ms ({})", budget.as_millis(), progress.get()),
                ),
            );
        });
    }

    // The descriptor (bounded) must describe exactly -digest; -name pins no other digest.
    progress.set("reading the descriptor from stdin");
    let mut raw = Vec::new();
    if let Err(e) = std::io::stdin().lock().take(MAX_STDIN as u64 + 1).read_to_end(&mut raw) {
        conclude(1, &refused(&name, digest.as_str(), &format!("cannot read stdin: {e}")));
    }
    let request = match check_request(&name, &digest, &media_type, &raw) {
        Ok(r) => r,
        Err(why) => conclude(1, &refused(&name, digest.as_str(), &why)),
    };
    tracing::debug!(media_type = %request.media_type, operation = ?args.operation, "descriptor");

    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => conclude(1, &refused(&name, digest.as_str(), &e.to_string())),
    };
    rt.block_on(decide(s, request.reference, digest, deadline, progress))
}

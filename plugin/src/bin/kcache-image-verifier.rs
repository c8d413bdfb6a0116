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
    api::{ApiError, Client as ApiClient, ImageVerdict},
    digest::Digest,
    policy::Policy,
    refusal::Refusal,
    registry::{Client as RegistryClient, Reference, RegistryConfig},
    verifier::Verifier,
};
use kcache_plugin::daemon::config::FileConfig;
use serde::Deserialize;

/// The stdin media type containerd sends (an OCI content descriptor).
const DESCRIPTOR_MEDIA_TYPE: &str = "application/vnd.oci.descriptor.v1+json";
/// The stdin media type with `verify_on_run` (the descriptor wrapped with run context).
const INPUT_MEDIA_TYPE: &str = "application/vnd.containerd.image-verifier.input.v1+json";
/// Largest stdin read: a descriptor is a few hundred bytes (annotations included).
const MAX_STDIN: u64 = 1 << 20;
/// Default decision deadline: below containerd's default `per_verifier_timeout` of 10 s.
const DEFAULT_DEADLINE: Duration = Duration::from_millis(8000);
/// containerd reads this much of stdout; the reason line is kept shorter.
const MAX_REASON: usize = 16 * 1024;

const USAGE: &str = "usage: kcache-image-verifier -name REF -digest sha256:HEX -stdin-media-type TYPE [-operation pull|run] < descriptor.json";

// ---------------------------------------------------------------------------------------------
// Arguments, parsed as Go's `flag` package does (containerd builds them for a Go program).

#[derive(Debug, Default, PartialEq, Eq)]
struct Args {
    name: Option<String>,
    digest: Option<String>,
    stdin_media_type: Option<String>,
    operation: Option<String>,
    help: bool,
}

/// Go `flag` semantics: `-f v`, `-f=v`, `--f v`, `--f=v`; a value-taking flag consumes the next
/// argument even when it starts with `-`; `--` ends the flags; the first non-flag argument
/// ends them too; a later occurrence wins; unknown flags are errors.
fn parse_args(argv: &[String]) -> Result<Args, String> {
    let mut a = Args::default();
    let mut i = 0;
    while i < argv.len() {
        let arg = &argv[i];
        i += 1;
        if arg.len() < 2 || !arg.starts_with('-') {
            return Err(format!("unexpected argument {arg:?} (all input is flags and stdin)"));
        }
        let mut body = &arg[1..];
        if body.starts_with('-') {
            body = &body[1..];
            if body.is_empty() {
                // "--": the end of the flags.
                if let Some(rest) = argv.get(i) {
                    return Err(format!("unexpected argument {rest:?} (all input is flags and stdin)"));
                }
                break;
            }
        }
        if body.is_empty() || body.starts_with('-') || body.starts_with('=') {
            return Err(format!("bad flag syntax: {arg}"));
        }
        let (name, inline) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v.to_owned())),
            None => (body, None),
        };
        if matches!(name, "h" | "help") {
            a.help = true;
            continue;
        }
        let slot = match name {
            "name" => &mut a.name,
            "digest" => &mut a.digest,
            "stdin-media-type" => &mut a.stdin_media_type,
            "operation" => &mut a.operation,
            _ => return Err(format!("flag provided but not defined: -{name}")),
        };
        let value = match inline {
            Some(v) => v,
            None => match argv.get(i) {
                Some(v) => {
                    i += 1;
                    v.clone()
                }
                None => return Err(format!("flag needs an argument: -{name}")),
            },
        };
        *slot = Some(value);
    }
    Ok(a)
}

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
            .unwrap_or_else(|| "/etc/kcache/policy.yaml".into()),
        api_socket: env("KCACHE_API_SOCKET")
            .map(PathBuf::from)
            .or(file.api_socket)
            .unwrap_or_else(|| "/run/kcache/kcache.sock".into()),
        registry,
        deadline: deadline.max(Duration::from_millis(100)),
    })
}

// ---------------------------------------------------------------------------------------------
// Stdin.

#[derive(Debug, Deserialize)]
struct Descriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
}

#[derive(Deserialize)]
struct VerifierInput {
    descriptor: Option<Descriptor>,
}

/// Parses stdin as `media_type` says and returns the descriptor.
fn parse_stdin(media_type: &str, bytes: &[u8]) -> Result<Descriptor, String> {
    let d = match media_type {
        DESCRIPTOR_MEDIA_TYPE => serde_json::from_slice::<Descriptor>(bytes)
            .map_err(|e| format!("stdin is not an OCI descriptor ({DESCRIPTOR_MEDIA_TYPE}): {e}"))?,
        INPUT_MEDIA_TYPE => serde_json::from_slice::<VerifierInput>(bytes)
            .map_err(|e| format!("stdin is not {INPUT_MEDIA_TYPE}: {e}"))?
            .descriptor
            .ok_or_else(|| format!("stdin ({INPUT_MEDIA_TYPE}) carries no descriptor"))?,
        other => {
            return Err(format!(
                "unsupported -stdin-media-type {other:?} (this verifier reads {DESCRIPTOR_MEDIA_TYPE} and {INPUT_MEDIA_TYPE})"
            ))
        }
    };
    Ok(d)
}

// ---------------------------------------------------------------------------------------------
// The decision.

/// The verdict line: a refusal carries kcache's [`Refusal`] line (the same the snapshotter gate
/// prints), so the CRI client and `kcache doctor` recognise it whichever refused.
fn line(v: &ImageVerdict, source: &str) -> String {
    if v.permits() {
        return format!("kcache: {} [{source}]", v.summary());
    }
    let digest = v.digest.as_ref().map(|d| d.to_string());
    let refusal = Refusal {
        image: &v.image,
        digest: digest.as_deref().unwrap_or("<unresolved>"),
        rule: v.rule.as_deref().unwrap_or("<default>"),
        reason: &v.reason,
    };
    format!("{refusal} [{source}]")
}

/// A refusal before any rule was reached (bad request, kcached's answer unusable, no policy).
fn refused(image: &str, digest: &str, reason: &str) -> String {
    Refusal {
        image,
        digest,
        rule: "<none>",
        reason,
    }
    .to_string()
}

fn load_policy(path: &Path) -> Result<Policy, String> {
    let dir = path.parent().map(|p| p.join("policy.d")).filter(|d| d.is_dir());
    Policy::load(path, dir.as_deref()).map_err(|e| format!("cannot load policy {}: {e}", path.display()))
}

/// Whether an API failure means "verify here instead": kcached down, hung or broken. A 4xx
/// answer is kcached refusing this request; verifying it here would be refused the same way.
fn falls_back(e: &ApiError) -> bool {
    !e.is_refusal()
}

async fn decide(s: Settings, reference: Reference, digest: Digest, deadline: Instant, progress: Progress) -> ! {
    let image = reference.to_string();
    // kcached gets at most half the time left, so a hung daemon leaves room to verify here.
    let left = deadline.saturating_duration_since(Instant::now());
    progress.set(format!("asking kcached at {}", s.api_socket.display()));
    let api = ApiClient::new(&s.api_socket).with_timeout(left / 2);
    let daemon_error = match api.verify(&image, Some(&digest)).await {
        Ok(v) => {
            if v.digest.as_ref() != Some(&digest) {
                conclude(
                    1,
                    &refused(
                        &image.to_string(),
                        digest.as_str(),
                        &format!(
                            "kcached answered for another digest ({})",
                            v.digest.as_ref().map_or("none".to_string(), |d| d.to_string())
                        ),
                    ),
                );
            }
            let source = if v.cached { "kcached, cached verdict" } else { "kcached" };
            conclude(if v.permits() { 0 } else { 1 }, &line(&v, source));
        }
        Err(e) if !falls_back(&e) => conclude(1, &refused(&image.to_string(), digest.as_str(), &e.to_string())),
        Err(e) => e,
    };
    tracing::info!(%daemon_error, "verifying in process");
    progress.set(format!("{daemon_error}; verifying in process"));
    let policy = match load_policy(&s.policy) {
        Ok(p) => p,
        Err(e) => conclude(
            2,
            &refused(&image.to_string(), digest.as_str(), &format!("{daemon_error}, and {e}")),
        ),
    };
    let client = match RegistryClient::new(s.registry) {
        Ok(c) => Arc::new(c),
        Err(e) => conclude(
            2,
            &refused(
                &image.to_string(),
                digest.as_str(),
                &format!("cannot set up the registry client: {e}"),
            ),
        ),
    };
    let v = Verifier::new(client).verify_digest(&policy, &reference, &digest).await;
    let source = format!("in process: {daemon_error}");
    conclude(if v.permits() { 0 } else { 1 }, &line(&v, &source))
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
        Err(e) => conclude(2, &refused(&name.to_string(), digest.as_str(), &e.to_string())),
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
                    &name.to_string(),
                    digest.as_str(),
                    &format!("no decision within {} ms ({})", budget.as_millis(), progress.get()),
                ),
            );
        });
    }

    // The descriptor: bounded, and it must describe exactly -digest.
    progress.set("reading the descriptor from stdin");
    let mut raw = Vec::new();
    if let Err(e) = std::io::stdin().lock().take(MAX_STDIN + 1).read_to_end(&mut raw) {
        conclude(
            1,
            &refused(&name.to_string(), digest.as_str(), &format!("cannot read stdin: {e}")),
        );
    }
    if raw.len() as u64 > MAX_STDIN {
        conclude(
            1,
            &refused(
                &name.to_string(),
                digest.as_str(),
                &format!("stdin is larger than {MAX_STDIN} bytes"),
            ),
        );
    }
    let desc = match parse_stdin(&media_type, &raw) {
        Ok(d) => d,
        Err(e) => conclude(1, &refused(&name.to_string(), digest.as_str(), &e.to_string())),
    };
    if desc.digest != digest.as_str() {
        conclude(
            1,
            &refused(
                &name.to_string(),
                digest.as_str(),
                &format!("the descriptor on stdin is for {:?}, not -digest", desc.digest),
            ),
        );
    }
    tracing::debug!(media_type = %desc.media_type, operation = ?args.operation, "descriptor");

    // -name: the repository and tag; never what is verified.
    let mut reference = match Reference::parse(&name) {
        Ok(r) => r,
        Err(e) => conclude(1, &refused(&name.to_string(), digest.as_str(), &e.to_string())),
    };
    if let Some(pinned) = reference.digest.take() {
        if pinned != digest {
            conclude(
                1,
                &refused(
                    &name.to_string(),
                    digest.as_str(),
                    &format!("-name pins another digest ({pinned})"),
                ),
            );
        }
    }

    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => conclude(1, &refused(&name.to_string(), digest.as_str(), &e.to_string())),
    };
    rt.block_on(decide(s, reference, digest, deadline, progress))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Args, String> {
        parse_args(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn go_flag_forms() {
        let want = Args {
            name: Some("docker.io/library/nginx:1".into()),
            digest: Some("sha256:ab".into()),
            stdin_media_type: Some(DESCRIPTOR_MEDIA_TYPE.into()),
            ..Args::default()
        };
        let forms: [&[&str]; 4] = [
            &[
                "-name",
                "docker.io/library/nginx:1",
                "-digest",
                "sha256:ab",
                "-stdin-media-type",
                DESCRIPTOR_MEDIA_TYPE,
            ],
            &[
                "-name=docker.io/library/nginx:1",
                "-digest=sha256:ab",
                "-stdin-media-type=application/vnd.oci.descriptor.v1+json",
            ],
            &[
                "--name",
                "docker.io/library/nginx:1",
                "--digest=sha256:ab",
                "--stdin-media-type",
                DESCRIPTOR_MEDIA_TYPE,
            ],
            &[
                "-name",
                "x",
                "-name",
                "docker.io/library/nginx:1",
                "-digest",
                "sha256:ab",
                "-stdin-media-type",
                DESCRIPTOR_MEDIA_TYPE,
                "--",
            ],
        ];
        for f in forms {
            assert_eq!(p(f).unwrap(), want, "{f:?}");
        }
        // A value that starts with '-' is still the value, as in Go.
        assert_eq!(p(&["-name", "-x"]).unwrap().name.as_deref(), Some("-x"));
        assert_eq!(p(&["-operation", "pull"]).unwrap().operation.as_deref(), Some("pull"));
        assert!(p(&["-h"]).unwrap().help);
    }

    #[test]
    fn go_flag_errors() {
        for (args, want) in [
            (&["-nme", "x"][..], "not defined: -nme"),
            (&["-name"][..], "needs an argument: -name"),
            (&["---name", "x"][..], "bad flag syntax"),
            (&["-=x"][..], "bad flag syntax"),
            (&["positional"][..], "unexpected argument"),
            (&["-name", "x", "stray"][..], "unexpected argument"),
            (&["--", "stray"][..], "unexpected argument"),
        ] {
            let e = p(args).unwrap_err();
            assert!(e.contains(want), "{args:?}: {e}");
        }
    }

    #[test]
    fn stdin_payloads() {
        let d = parse_stdin(
            DESCRIPTOR_MEDIA_TYPE,
            br#"{"mediaType":"application/vnd.oci.image.index.v1+json","digest":"sha256:ab","size":3}"#,
        )
        .unwrap();
        assert_eq!(d.digest, "sha256:ab");
        assert_eq!(d.media_type, "application/vnd.oci.image.index.v1+json");
        let d = parse_stdin(
            INPUT_MEDIA_TYPE,
            br#"{"operation":"run","descriptor":{"mediaType":"m","digest":"sha256:cd","size":3}}"#,
        )
        .unwrap();
        assert_eq!(d.digest, "sha256:cd");
        assert!(parse_stdin("text/plain", b"{}").unwrap_err().contains("unsupported"));
        assert!(parse_stdin(DESCRIPTOR_MEDIA_TYPE, b"not json").is_err());
        assert!(parse_stdin(INPUT_MEDIA_TYPE, b"{}")
            .unwrap_err()
            .contains("no descriptor"));
    }
}

//! The rules of `kcache-image-verifier`, containerd 2.x's bindir image verifier: how its
//! invocation is read and which requests it refuses before any policy is consulted. The binary
//! only wires these to stdin, kcached's API, a deadline and its exit status.
//!
//! containerd runs `BIN -name REF -digest sha256:… -stdin-media-type TYPE [-operation pull|run]`
//! and writes the descriptor it resolved to stdin. The security rules:
//! - what is verified is exactly `-digest`; `-name` only gives the repository (and the tag for
//!   the signed-index rule) and is never resolved again;
//! - the descriptor on stdin must be for `-digest`;
//! - `-name` may not pin another digest;
//! - kcached's answer must be about `-digest`;
//! - kcached unreachable, hung or broken: verify in process; kcached refusing the request
//!   itself (a 4xx): refused, since deciding here would be refused the same way.

use serde::Deserialize;

use crate::{api::ImageVerdict, digest::Digest, refusal::Refusal, registry::Reference};

/// The stdin media type containerd sends (an OCI content descriptor).
pub const DESCRIPTOR_MEDIA_TYPE: &str = "application/vnd.oci.descriptor.v1+json";
/// The stdin media type with `verify_on_run` (the descriptor wrapped with run context).
pub const INPUT_MEDIA_TYPE: &str = "application/vnd.containerd.image-verifier.input.v1+json";
/// Largest stdin read: a descriptor is a few hundred bytes (annotations included).
pub const MAX_STDIN: usize = 1 << 20;

/// The command line, as containerd builds it for a Go program.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Args {
    /// `-name`: the image reference containerd pulls.
    pub name: Option<String>,
    /// `-digest`: what containerd resolved, and what is verified.
    pub digest: Option<String>,
    /// `-stdin-media-type`.
    pub stdin_media_type: Option<String>,
    /// `-operation pull|run`.
    pub operation: Option<String>,
    /// `-h`/`-help`.
    pub help: bool,
}

/// Parses the arguments with Go `flag` semantics: `-f v`, `-f=v`, `--f v`, `--f=v`; a
/// value-taking flag consumes the next argument even when it starts with `-`; `--` ends the
/// flags; a later occurrence wins; unknown flags and positional arguments are errors.
pub fn parse_args(argv: &[String]) -> Result<Args, String> {
    let mut a = Args::default();
    let mut i = 0;
    while i < argv.len() {
        let arg = &argv[i];
        i += 1;
        if arg.len() < 2 || !arg.starts_with('-') {
            return Err(format!("unexpected argument {arg:?} (all input is flags and stdin)"));
        }
        let mut body = &arg[1..];
        if let Some(rest) = body.strip_prefix('-') {
            body = rest;
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

/// The descriptor containerd writes to stdin.
#[derive(Debug, Deserialize)]
pub struct Descriptor {
    /// Its media type (a manifest or an index).
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    /// Its digest.
    pub digest: String,
}

#[derive(Deserialize)]
struct VerifierInput {
    descriptor: Option<Descriptor>,
}

/// Parses stdin as `media_type` says and returns the descriptor.
pub fn parse_stdin(media_type: &str, bytes: &[u8]) -> Result<Descriptor, String> {
    match media_type {
        DESCRIPTOR_MEDIA_TYPE => serde_json::from_slice::<Descriptor>(bytes)
            .map_err(|e| format!("stdin is not an OCI descriptor ({DESCRIPTOR_MEDIA_TYPE}): {e}")),
        INPUT_MEDIA_TYPE => serde_json::from_slice::<VerifierInput>(bytes)
            .map_err(|e| format!("stdin is not {INPUT_MEDIA_TYPE}: {e}"))?
            .descriptor
            .ok_or_else(|| format!("stdin ({INPUT_MEDIA_TYPE}) carries no descriptor")),
        other => Err(format!(
            "unsupported -stdin-media-type {other:?} (this verifier reads {DESCRIPTOR_MEDIA_TYPE} and {INPUT_MEDIA_TYPE})"
        )),
    }
}

/// A request to verify, checked: the reference whose repository and tag the rules match
/// (its digest cleared), and the digest to verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// `-name`, without a digest.
    pub reference: Reference,
    /// `-digest`.
    pub digest: Digest,
    /// The descriptor's media type.
    pub media_type: String,
}

/// Checks what containerd handed over: stdin within [`MAX_STDIN`] and describing exactly
/// `digest`, and `name` a reference that pins no other digest. The error is the reason of the
/// refusal.
pub fn check_request(name: &str, digest: &Digest, stdin_media_type: &str, stdin: &[u8]) -> Result<Request, String> {
    if stdin.len() > MAX_STDIN {
        return Err(format!("stdin is larger than {MAX_STDIN} bytes"));
    }
    let desc = parse_stdin(stdin_media_type, stdin)?;
    if desc.digest != digest.as_str() {
        return Err(format!("the descriptor on stdin is for {:?}, not -digest", desc.digest));
    }
    let mut reference = Reference::parse(name).map_err(|e| e.to_string())?;
    if let Some(pinned) = reference.digest.take() {
        if pinned != *digest {
            return Err(format!("-name pins another digest ({pinned})"));
        }
    }
    Ok(Request {
        reference,
        digest: digest.clone(),
        media_type: desc.media_type,
    })
}

/// Whether kcached's verdict may decide this request: it must be about `digest`.
pub fn check_daemon_answer(v: &ImageVerdict, digest: &Digest) -> Result<(), String> {
    match &v.digest {
        Some(d) if d == digest => Ok(()),
        other => Err(format!(
            "kcached answered for another digest ({})",
            other.as_ref().map_or("none".to_string(), Digest::to_string)
        )),
    }
}

/// Whether an API failure means "verify here instead": kcached down, hung or broken. A 4xx
/// answer is kcached refusing this request; verifying it here would be refused the same way.
#[cfg(feature = "api-client")]
pub fn falls_back(e: &crate::api::ApiError) -> bool {
    !e.is_refusal()
}

/// The verdict line: a refusal carries kcache's [`Refusal`] line (the same the snapshotter gate
/// prints), so the CRI client and `kcache doctor` recognise it whichever refused.
pub fn verdict_line(v: &ImageVerdict, source: &str) -> String {
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
pub fn refused(image: &str, digest: &str, reason: &str) -> String {
    Refusal {
        image,
        digest,
        rule: "<none>",
        reason,
    }
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Args, String> {
        parse_args(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    fn desc(d: &str) -> Vec<u8> {
        format!(r#"{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{d}","size":3}}"#).into_bytes()
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

    #[test]
    fn the_request_is_exactly_digest() {
        let d1 = Digest::parse(D1).unwrap();
        // The tag stays for the signed-index rule; the digest verified is -digest.
        let ok = check_request("r.example/app:1", &d1, DESCRIPTOR_MEDIA_TYPE, &desc(D1)).unwrap();
        assert_eq!(ok.reference.to_string(), "r.example/app:1");
        assert_eq!(ok.digest, d1);
        // -name pinning the same digest is fine, and the pin is cleared.
        let pinned = check_request(&format!("r.example/app@{D1}"), &d1, DESCRIPTOR_MEDIA_TYPE, &desc(D1)).unwrap();
        assert_eq!(pinned.reference.digest, None);
        for (name, stdin, want) in [
            ("r.example/app:1", desc(D2), "not -digest"),
            (&*format!("r.example/app@{D2}"), desc(D1), "pins another digest"),
            ("r.example/app:1", vec![b' '; MAX_STDIN + 1], "larger than"),
            ("NOT A REFERENCE", desc(D1), "invalid"),
        ] {
            let e = check_request(name, &d1, DESCRIPTOR_MEDIA_TYPE, &stdin).unwrap_err();
            assert!(e.to_lowercase().contains(want), "{name}: {e}");
        }
    }

    #[test]
    fn kcacheds_answer_must_be_about_digest() {
        let d1 = Digest::parse(D1).unwrap();
        let mut v = ImageVerdict::pending("r.example/app:1".into(), Some(d1.clone()));
        assert!(check_daemon_answer(&v, &d1).is_ok());
        v.digest = Some(Digest::parse(D2).unwrap());
        assert!(check_daemon_answer(&v, &d1).unwrap_err().contains(D2));
        v.digest = None;
        assert!(check_daemon_answer(&v, &d1).unwrap_err().contains("none"));
    }

    #[test]
    fn refusals_carry_the_one_refusal_line() {
        let line = refused("r.example/app:1", D1, "stdin is larger than 1 bytes");
        let r = crate::refusal::find(&line).unwrap();
        assert_eq!((r.image, r.digest, r.rule), ("r.example/app:1", D1, "<none>"));
    }
}

//! sigstore-rust's `sigstore-verify` behind the command line of `kcache sigstore verify-bundle`,
//! so bench/run can time both the same way and the conformance cases can be run through both
//! (issue 12: the official library where it is as good).
//!
//!   sv-probe sigstore verify-bundle --bundle B (--key K | --certificate-identity I
//!            --certificate-oidc-issuer S) [--trusted-root R] (FILE | sha256:HEX)
//!   sv-probe conformance DIR [DEFAULT_ROOT]   every case, file and digest modes: agreement
//!   sv-probe repeat N -- <verify-bundle arguments>   N calls in one process: ns per call
//!
//! Exit status as kcache's: 0 verified, 1 refused, 2 usage.

use std::{path::Path, process::ExitCode, time::Instant};

use sigstore_verify::{
    trust_root::TrustedRoot,
    types::{Artifact, Bundle, DerPublicKey, Sha256Hash},
    PublicKeyVerificationPolicy, VerificationPolicy, Verifier,
};

struct Args {
    bundle: String,
    key: Option<String>,
    identity: Option<String>,
    issuer: Option<String>,
    trusted_root: Option<String>,
    artifact: String,
}

fn parse(argv: &[String]) -> Result<Args, String> {
    let (mut bundle, mut key, mut identity, mut issuer, mut root, mut artifact) = (None, None, None, None, None, None);
    let mut it = argv.iter().filter(|a| *a != "sigstore" && *a != "verify-bundle");
    while let Some(a) = it.next() {
        let mut val = || it.next().cloned().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--bundle" => bundle = Some(val()?),
            "--key" => key = Some(val()?),
            "--certificate-identity" => identity = Some(val()?),
            "--certificate-oidc-issuer" => issuer = Some(val()?),
            "--trusted-root" => root = Some(val()?),
            s if s.starts_with("--") => return Err(format!("unknown flag {s}")),
            s => artifact = Some(s.to_string()),
        }
    }
    Ok(Args {
        bundle: bundle.ok_or("--bundle is required")?,
        key,
        identity,
        issuer,
        trusted_root: root,
        artifact: artifact.ok_or("the artifact (FILE or sha256:HEX) is required")?,
    })
}

/// One verification, everything read and parsed as a CLI call would.
fn verify(a: &Args, default_root: Option<&str>) -> Result<(), String> {
    let root_path = a
        .trusted_root
        .as_deref()
        .or(default_root)
        .ok_or("--trusted-root is required (the probe embeds no root)")?;
    let root = TrustedRoot::from_json(&std::fs::read_to_string(root_path).map_err(|e| e.to_string())?)
        .map_err(|e| format!("trusted root: {e}"))?;
    let bundle = Bundle::from_json(&std::fs::read_to_string(&a.bundle).map_err(|e| e.to_string())?)
        .map_err(|e| format!("bundle: {e}"))?;
    let bytes;
    let artifact: Artifact = match a.artifact.strip_prefix("sha256:") {
        Some(hex) => Sha256Hash::from_hex(hex).map_err(|e| format!("digest: {e}"))?.into(),
        None => {
            bytes = std::fs::read(&a.artifact).map_err(|e| e.to_string())?;
            Artifact::from_blob(&bytes)
        }
    };
    let verifier = Verifier::new(&root).map_err(|e| format!("trusted root: {e}"))?;
    match (&a.key, &a.identity, &a.issuer) {
        (Some(k), _, _) => {
            let key = DerPublicKey::from_pem(&std::fs::read_to_string(k).map_err(|e| e.to_string())?)
                .map_err(|e| format!("key: {e}"))?;
            verifier
                .verify(artifact, &bundle, &PublicKeyVerificationPolicy::new(key))
                .map(drop)
        }
        (None, Some(id), Some(iss)) => verifier
            .verify(artifact, &bundle, &VerificationPolicy::new(id.as_str(), iss.as_str()))
            .map(drop),
        _ => return Err("--key, or --certificate-identity and --certificate-oidc-issuer".into()),
    }
    .map_err(|e| e.to_string())
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Every conformance case in file and digest modes; prints the cases where the library
/// disagrees with the expected outcome (`_fail` cases must be refused, the others verified).
fn conformance(dir: &Path, default_root: &str) -> ExitCode {
    const ID: &str = "https://github.com/sigstore-conformance/extremely-dangerous-public-oidc-beacon/.github/workflows/extremely-dangerous-oidc-beacon.yml@refs/heads/main";
    const ISS: &str = "https://token.actions.githubusercontent.com";
    let mut cases: Vec<_> = std::fs::read_dir(dir)
        .expect("conformance dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("bundle.sigstore.json").exists())
        .collect();
    cases.sort();
    let (mut agree, mut disagree) = (0, Vec::new());
    for c in &cases {
        let name = c.file_name().unwrap_or_default().to_string_lossy().to_string();
        let artifact = if c.join("artifact").exists() {
            c.join("artifact")
        } else {
            dir.join("a.txt")
        };
        let read = |f: &str, d: &str| {
            std::fs::read_to_string(c.join(f))
                .map(|s| s.trim().to_string())
                .unwrap_or(d.into())
        };
        let key = c.join("key.pub");
        for digest_mode in [false, true] {
            let a = Args {
                bundle: c.join("bundle.sigstore.json").display().to_string(),
                key: key.exists().then(|| key.display().to_string()),
                identity: Some(read("identity", ID)),
                issuer: Some(read("issuer", ISS)),
                trusted_root: c
                    .join("trusted_root.json")
                    .exists()
                    .then(|| c.join("trusted_root.json").display().to_string()),
                artifact: if digest_mode {
                    format!("sha256:{}", sha256_hex(&std::fs::read(&artifact).expect("artifact")))
                } else {
                    artifact.display().to_string()
                },
            };
            let got = verify(&a, Some(default_root));
            let want_pass = !name.ends_with("_fail");
            if got.is_ok() == want_pass {
                agree += 1;
            } else {
                disagree.push(format!(
                    "{name} digest={digest_mode}: {}",
                    got.err().unwrap_or_else(|| "verified".into())
                ));
            }
        }
    }
    println!(
        "{{\"cases\": {}, \"runs\": {}, \"agree\": {agree}, \"disagree\": {:?}}}",
        cases.len(),
        cases.len() * 2,
        disagree
    );
    if disagree.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    match argv.first().map(String::as_str) {
        Some("conformance") if argv.len() >= 3 => conformance(Path::new(&argv[1]), &argv[2]),
        Some("repeat") if argv.len() > 3 && argv[2] == "--" => {
            let n: usize = argv[1].parse().unwrap_or(1);
            let a = match parse(&argv[3..]) {
                Ok(a) => a,
                Err(e) => {
                    eprintln!("sv-probe: {e}");
                    return ExitCode::from(2);
                }
            };
            let mut ns = Vec::with_capacity(n);
            for _ in 0..n {
                let t = Instant::now();
                if let Err(e) = verify(&a, None) {
                    eprintln!("sv-probe: {e}");
                    return ExitCode::from(1);
                }
                ns.push(t.elapsed().as_nanos());
            }
            println!("{ns:?}");
            ExitCode::SUCCESS
        }
        _ => match parse(&argv) {
            Err(e) => {
                eprintln!("sv-probe: {e}");
                ExitCode::from(2)
            }
            Ok(a) => match verify(&a, None) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("sv-probe: refused: {e}");
                    ExitCode::from(1)
                }
            },
        },
    }
}

//! The sigstore-conformance `bundle-verify` suite (tests/fixtures): every case, in file and
//! in `sha256:<hex>` digest mode, must agree with its expected outcome (`*_fail` = reject).

use std::path::{Path, PathBuf};

use kcache_core::{
    keys::PublicKey,
    sigstore::{verify, Artifact, Bundle, Identity, Options, Signer, TrustedRoot},
};
use sha2::{Digest as _, Sha256};

const DEFAULT_IDENTITY: &str = "https://github.com/sigstore-conformance/extremely-dangerous-public-oidc-beacon/.github/workflows/extremely-dangerous-oidc-beacon.yml@refs/heads/main";
const DEFAULT_ISSUER: &str = "https://token.actions.githubusercontent.com";

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

fn read_trimmed(p: &Path) -> Option<String> {
    std::fs::read_to_string(p).ok().map(|s| s.trim().to_string())
}

/// Runs one case in one mode; Ok(()) = verified.
fn run_case(dir: &Path, digest_mode: bool) -> Result<(), String> {
    let bundle = Bundle::from_json(&std::fs::read(dir.join("bundle.sigstore.json")).map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    let artifact_path = if dir.join("artifact").exists() {
        dir.join("artifact")
    } else {
        dir.join("../a.txt")
    };
    let bytes = std::fs::read(artifact_path).map_err(|e| e.to_string())?;
    let artifact = if digest_mode {
        Artifact::Sha256(Sha256::digest(&bytes).into())
    } else {
        Artifact::Bytes(&bytes)
    };
    let root = if dir.join("trusted_root.json").exists() {
        TrustedRoot::from_file(&dir.join("trusted_root.json")).map_err(|e| e.to_string())?
    } else {
        TrustedRoot::from_file(&fixtures().join("trusted-roots/sigstore-python-4.5.1/public-good/trusted_root.json"))
            .map_err(|e| e.to_string())?
    };
    let key;
    let identity;
    let signer = if dir.join("key.pub").exists() {
        key = PublicKey::from_pem(&std::fs::read(dir.join("key.pub")).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
        Signer::Key(&key)
    } else {
        identity = Identity::exact(
            &read_trimmed(&dir.join("issuer")).unwrap_or_else(|| DEFAULT_ISSUER.into()),
            &read_trimmed(&dir.join("identity")).unwrap_or_else(|| DEFAULT_IDENTITY.into()),
        )
        .map_err(|e| e.to_string())?;
        Signer::Identity(&identity)
    };
    verify(&bundle, artifact, signer, &root, &Options::default())
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[test]
fn every_conformance_case_agrees_with_its_expected_outcome_in_both_modes() {
    let suite = fixtures().join("sigstore-conformance/bundle-verify");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&suite)
        .expect("conformance suite present in tests/fixtures")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("bundle.sigstore.json").exists())
        .collect();
    cases.sort();
    assert!(
        cases.len() >= 50,
        "expected the whole suite, found {} cases",
        cases.len()
    );
    let (mut agree, mut disagree) = (0, Vec::new());
    for dir in &cases {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let should_pass = !name.ends_with("_fail");
        for digest_mode in [false, true] {
            let r = run_case(dir, digest_mode);
            let mode = if digest_mode { "digest" } else { "file" };
            if r.is_ok() == should_pass {
                agree += 1;
                if let Err(e) = &r {
                    println!("ok   {name} [{mode}] rejected: {e}");
                }
            } else {
                disagree.push(format!(
                    "{name} [{mode}]: expected {}, got {:?}",
                    if should_pass { "pass" } else { "fail" },
                    r
                ));
            }
        }
    }
    println!("conformance: {agree} of {} runs agree", agree + disagree.len());
    assert!(
        disagree.is_empty(),
        "{} disagreements:\n{}",
        disagree.len(),
        disagree.join("\n")
    );
}

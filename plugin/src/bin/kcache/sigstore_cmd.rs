//! `kcache sigstore verify-bundle`, speaking the sigstore-conformance client protocol:
//! `verify-bundle --bundle FILE (--certificate-identity ID --certificate-oidc-issuer URL | --key FILE)
//! [--trusted-root FILE] FILE_OR_sha256:HEX`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use kcache_core::{
    keys::PublicKey,
    sigstore::{verify, Artifact, Bundle, Identity, Options, Signer, TrustedRoot},
};

use crate::Outcome;

#[derive(Subcommand)]
pub enum SigstoreCommand {
    /// Verify a Sigstore bundle over a file or a sha256 digest, offline.
    VerifyBundle(VerifyBundleArgs),
}

#[derive(Args)]
pub struct VerifyBundleArgs {
    /// The bundle (JSON).
    #[arg(long)]
    bundle: PathBuf,
    /// Expected certificate identity (SAN), exact.
    #[arg(long, requires = "certificate_oidc_issuer", conflicts_with = "key")]
    certificate_identity: Option<String>,
    /// Expected OIDC issuer, exact.
    #[arg(long, requires = "certificate_identity")]
    certificate_oidc_issuer: Option<String>,
    /// Verify with this PEM public key instead of a certificate identity.
    #[arg(long, required_unless_present = "certificate_identity")]
    key: Option<PathBuf>,
    /// Trusted root JSON (default: the public-good root shipped with kcache).
    #[arg(long)]
    trusted_root: Option<PathBuf>,
    /// The artifact: a file path, or `sha256:<hex>`.
    artifact: String,
}

pub fn run(cmd: SigstoreCommand) -> Result<Outcome> {
    match cmd {
        SigstoreCommand::VerifyBundle(a) => verify_bundle(a),
    }
}

fn verify_bundle(a: VerifyBundleArgs) -> Result<Outcome> {
    let root = match &a.trusted_root {
        // A trusted root that does not load is a rejection in the conformance protocol's terms
        // (the suite has a malformed-root case), reported with its reason.
        Some(p) => match TrustedRoot::from_file(p) {
            Ok(r) => r,
            Err(e) => return Ok(Outcome::Rejected(format!("trusted root {}: {e}", p.display()))),
        },
        None => TrustedRoot::public_good(),
    };
    let bundle_bytes =
        std::fs::read(&a.bundle).with_context(|| format!("cannot read bundle {}", a.bundle.display()))?;
    let bundle = match Bundle::from_json(&bundle_bytes) {
        Ok(b) => b,
        Err(e) => return Ok(Outcome::Rejected(e.to_string())),
    };
    let file_bytes;
    let artifact = match a.artifact.strip_prefix("sha256:") {
        Some(hex_digest) => {
            let mut d = [0u8; 32];
            hex::decode_to_slice(hex_digest, &mut d).with_context(|| format!("bad digest {}", a.artifact))?;
            Artifact::Sha256(d)
        }
        None => {
            file_bytes = std::fs::read(&a.artifact).with_context(|| format!("cannot read artifact {}", a.artifact))?;
            Artifact::Bytes(&file_bytes)
        }
    };
    let key;
    let identity;
    let signer = match (&a.key, &a.certificate_identity, &a.certificate_oidc_issuer) {
        (Some(path), _, _) => {
            let pem = std::fs::read(path).with_context(|| format!("cannot read key {}", path.display()))?;
            key = PublicKey::from_pem(&pem).with_context(|| format!("bad key {}", path.display()))?;
            Signer::Key(&key)
        }
        (None, Some(id), Some(issuer)) => {
            identity = Identity::exact(issuer, id)?;
            Signer::Identity(&identity)
        }
        _ => anyhow::bail!("give --key, or --certificate-identity with --certificate-oidc-issuer"),
    };
    match verify(&bundle, artifact, signer, &root, &Options::default()) {
        Ok(v) => {
            println!(
                "verified: signer {}{}",
                v.signer,
                v.tlog_index.map(|i| format!(", tlog index {i}")).unwrap_or_default()
            );
            Ok(Outcome::Ok)
        }
        Err(e) => Ok(Outcome::Rejected(e.to_string())),
    }
}

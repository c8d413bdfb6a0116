//! `kcache generate-key-pair` and `kcache sign`: cosign-compatible signing without the cosign
//! binary, for air-gapped users and tests. Signatures are key-based with no transparency log.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use kcache_core::{
    cosign::sign,
    registry::{Client, Reference},
    signing::{self, PrivateKey},
};

use crate::{registry_args::RegistryArgs, Outcome};

fn password() -> Result<Vec<u8>> {
    signing::password_from_env().with_context(|| {
        format!(
            "set {} to the key password (it may be empty, as with cosign)",
            signing::PASSWORD_ENV
        )
    })
}

#[derive(Args)]
pub struct GenerateKeyPairArgs {
    /// File name prefix: writes PREFIX.key (0600) and PREFIX.pub.
    #[arg(long, default_value = "cosign")]
    output_key_prefix: String,
    /// Directory to write into.
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// Overwrite existing files.
    #[arg(long)]
    force: bool,
}

pub fn generate_key_pair(a: GenerateKeyPairArgs) -> Result<Outcome> {
    let paths = signing::write_key_pair(&a.dir, &a.output_key_prefix, &password()?, a.force)?;
    println!("Private key written to {}", paths.private_key.display());
    println!("Public key written to {}", paths.public_key.display());
    Ok(Outcome::Ok)
}

#[derive(Args)]
pub struct SignArgs {
    /// Image reference (tag or digest) to sign; the signature covers the digest it resolves to.
    image: String,
    /// Private key (cosign format; password from COSIGN_PASSWORD).
    #[arg(long)]
    key: PathBuf,
    /// Also attach a cosign v3 Sigstore bundle as an OCI referrer.
    #[arg(long)]
    v3: bool,
    #[command(flatten)]
    registry: RegistryArgs,
}

pub fn sign(a: SignArgs) -> Result<Outcome> {
    let pem = std::fs::read(&a.key).with_context(|| format!("cannot read key {}", a.key.display()))?;
    let key =
        PrivateKey::from_pem(&pem, &password()?).with_context(|| format!("cannot load key {}", a.key.display()))?;
    let r = Reference::parse(&a.image)?;
    let client = a.registry.client()?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(sign_image(&client, &key, &r, a.v3))?;
    Ok(Outcome::Ok)
}

async fn sign_image(client: &Client, key: &PrivateKey, r: &Reference, v3: bool) -> Result<()> {
    let p = sign::sign_and_push(client, key, r, v3)
        .await
        .with_context(|| format!("cannot sign {r}"))?;
    println!(
        "signed {}@{} (cosign v2, key {}): pushed {}",
        r.name(),
        p.digest,
        key.public_key().fingerprint(),
        p.sig_tag
    );
    if let Some(m) = p.referrer {
        println!("signed {}@{} (cosign v3 bundle referrer {m})", r.name(), p.digest);
    }
    Ok(())
}

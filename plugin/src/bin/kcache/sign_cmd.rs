//! `kcache generate-key-pair` and `kcache sign`: cosign-compatible signing without the cosign
//! binary, for air-gapped users and tests. Signatures are key-based with no transparency log.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use kcache_core::{
    cosign::{sign, v3::BUNDLE_ARTIFACT_TYPE},
    registry::{Client, Reference, RegistryError},
    signing::{self, PrivateKey},
};

use crate::{registry_args::RegistryArgs, Outcome};

fn password() -> Result<Vec<u8>> {
    signing::password_from_env().with_context(|| {
        format!("set {} to the key password (it may be empty, as with cosign)", signing::PASSWORD_ENV)
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
    let key = PrivateKey::from_pem(&pem, &password()?).with_context(|| format!("cannot load key {}", a.key.display()))?;
    let r = Reference::parse(&a.image)?;
    let client = a.registry.client()?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(sign_image(&client, &key, &r, a.v3))?;
    Ok(Outcome::Ok)
}

async fn optional(r: std::result::Result<kcache_core::registry::Manifest, RegistryError>) -> Result<Option<Vec<u8>>> {
    match r {
        Ok(m) => Ok(Some(m.bytes)),
        Err(RegistryError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

async fn sign_image(client: &Client, key: &PrivateKey, r: &Reference, v3: bool) -> Result<()> {
    let image = client.manifest(r, &r.reference()).await.with_context(|| format!("cannot fetch {r}"))?;
    if image.media_type.is_empty() {
        bail!("{r} has no manifest media type");
    }
    let digest = image.digest.clone();

    // cosign v2: append to sha256-<hex>.sig.
    let sig_tag = format!("{}.sig", digest.tag_prefix());
    let existing = optional(client.manifest(r, &sig_tag).await).await?;
    let s = sign::sign_v2(key, &r.name(), &digest, existing.as_deref()).map_err(anyhow::Error::msg)?;
    client.push_blob(r, &s.payload.bytes).await?;
    client.push_blob(r, &s.config.bytes).await?;
    client.push_manifest(r, &sig_tag, sign::OCI_MANIFEST, &s.manifest).await?;
    println!("signed {}@{digest} (cosign v2, key {}): pushed {sig_tag}", r.name(), key.public_key().fingerprint());

    if v3 {
        let b = sign::sign_v3(key, &digest, &image.media_type, image.bytes.len() as u64).map_err(anyhow::Error::msg)?;
        client.push_blob(r, &b.bundle.bytes).await?;
        client.push_blob(r, &b.config.bytes).await?;
        client.push_manifest(r, b.manifest.digest.as_str(), sign::OCI_MANIFEST, &b.manifest.bytes).await?;
        // Registries with the referrers API index the subject themselves; others get the
        // OCI 1.1 referrers tag.
        if client.referrers(r, &digest, None).await?.is_none() {
            let tag = digest.tag_prefix();
            let existing = optional(client.manifest(r, &tag).await).await?;
            let index = sign::referrers_tag_index(existing.as_deref(), &b.manifest, BUNDLE_ARTIFACT_TYPE).map_err(anyhow::Error::msg)?;
            client.push_manifest(r, &tag, sign::OCI_INDEX, &index).await?;
        }
        println!("signed {}@{digest} (cosign v3 bundle referrer {})", r.name(), b.manifest.digest);
    }
    Ok(())
}

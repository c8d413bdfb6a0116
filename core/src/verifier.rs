//! The image verification pipeline: one image reference (or digest) in, one verdict out.
//!
//! 1. Parse the reference; resolve a tag to a digest once (HEAD). Everything after works on
//!    that digest, so a tag moved mid-way can never lend one digest's signatures to another.
//! 2. Pick the rule (most specific match). Allow-listed or default-decided images stop here.
//! 3. Fetch candidate signatures *about the digest*: cosign v2 `.sig` layers and cosign v3
//!    bundles (referrers API, else the `sha256-<hex>` referrers tag). Every candidate is
//!    verified whole against one authority at a time; the first that passes decides.
//! 4. Not signed itself? If the reference names an index that lists this digest (the digest it
//!    pins, else what its tag resolves to) and the index passes step 3, the platform manifest is
//!    allowed through the signed index.
//! 5. Apply the policy mode (enforce / warn / off). Registry failures deny (fail closed).

use std::{sync::Arc, time::Instant};

use crate::{
    cosign::{v2::SignatureLayer, v3, Format},
    digest::Digest,
    policy::{Authority, Decision, DefaultAction, Match, Mode, Policy, SignatureFormat, TlogRequirement},
    registry::{Client, Reference, RegistryError},
    sigstore::{Options, Signer, SignerInfo, TlogPolicy},
    verdict::{CacheConfig, Outcome, VerdictCache},
};

/// Most `.sig` layers or referrers looked at per image (a hostile registry could list millions).
pub const MAX_SIGNATURES: usize = 64;

/// The outcome for one image (an API type: `kcache verify` prints it, kcached serves it).
pub use crate::api::ImageVerdict;

/// Why verification could not even be attempted.
#[derive(Debug, thiserror::Error)]
pub enum VerifierError {
    /// The reference does not parse.
    #[error(transparent)]
    Reference(#[from] crate::registry::ReferenceError),
}

struct Found {
    signer: SignerInfo,
    tlog_index: Option<u64>,
    format: Format,
}

/// Cache key: repository, tag and pinned digest (they name the index of the signed-index rule),
/// digest and policy generation. Together they determine the rule and so the verdict.
type CacheKey = (String, Option<String>, Option<Digest>, Digest, u64);

/// Verifies images against a policy through a registry.
pub struct Verifier {
    client: Arc<Client>,
    cache: Option<VerdictCache<CacheKey, ImageVerdict>>,
}

impl Verifier {
    /// A verifier using `client`, without a verdict cache (every call verifies).
    pub fn new(client: Arc<Client>) -> Self {
        Self { client, cache: None }
    }

    /// A verifier whose verdicts are cached (positive and negative TTLs) and whose concurrent
    /// requests for one image share one verification.
    pub fn with_cache(client: Arc<Client>, config: CacheConfig) -> Self {
        Self {
            client,
            cache: Some(VerdictCache::new(config, |v: &ImageVerdict| v.verified)),
        }
    }

    /// The cache, if any (for metrics and tests).
    pub fn cache(&self) -> Option<&VerdictCache<CacheKey, ImageVerdict>> {
        self.cache.as_ref()
    }

    /// Verifies `image` (tag or digest reference) under `policy`.
    pub async fn verify(&self, policy: &Policy, image: &str) -> Result<ImageVerdict, VerifierError> {
        let start = Instant::now();
        let r = Reference::parse(image)?;
        let mut v = ImageVerdict::pending(image.to_string(), r.digest.clone());
        if policy.mode == Mode::Off {
            v.decision = Decision::Unchecked;
            v.reason = "policy mode is off".into();
            v.elapsed = start.elapsed();
            return Ok(v);
        }
        // 1. One digest, resolved once.
        let digest = match &r.digest {
            Some(d) => d.clone(),
            None => match self.client.resolve(&r).await {
                Ok(res) => res.digest,
                Err(e) => return Ok(self.finish(policy, v, false, format!("cannot resolve {r}: {e}"), start)),
            },
        };
        v.digest = Some(digest.clone());
        let mut out = self.verify_digest(policy, &r, &digest).await;
        out.image = v.image;
        out.elapsed = start.elapsed();
        Ok(out)
    }

    /// Verifies a known digest; `r` gives the repository and, for the signed-index rule, the
    /// index (the digest it pins, else its tag).
    /// Served from the verdict cache when there is one.
    pub async fn verify_digest(&self, policy: &Policy, r: &Reference, digest: &Digest) -> ImageVerdict {
        let Some(cache) = &self.cache else {
            return self.verify_digest_uncached(policy, r, digest).await;
        };
        let start = Instant::now();
        let key = (
            r.name(),
            r.tag.clone(),
            r.digest.clone(),
            digest.clone(),
            policy.generation,
        );
        let (mut v, outcome) = cache
            .get_or_insert_with(key, || self.verify_digest_uncached(policy, r, digest))
            .await;
        if outcome != Outcome::Miss {
            v.image = r.to_string();
            v.cached = true;
            v.elapsed = start.elapsed();
        }
        v
    }

    async fn verify_digest_uncached(&self, policy: &Policy, r: &Reference, digest: &Digest) -> ImageVerdict {
        let start = Instant::now();
        let v = ImageVerdict::pending(r.to_string(), Some(digest.clone()));
        self.verify_digest_into(policy, r, digest, v, start).await
    }

    async fn verify_digest_into(
        &self,
        policy: &Policy,
        r: &Reference,
        digest: &Digest,
        mut v: ImageVerdict,
        start: Instant,
    ) -> ImageVerdict {
        // 2. The deciding rule.
        let rule = match policy.match_image(&r.name(), r.tag.as_deref(), Some(digest)) {
            Match::Default(DefaultAction::Allow) => {
                return self.finish(
                    policy,
                    v,
                    true,
                    "no rule matches; policy default is allow".into(),
                    start,
                )
            }
            Match::Default(DefaultAction::Deny) => {
                return self.finish(
                    policy,
                    v,
                    false,
                    "no rule matches; policy default is deny".into(),
                    start,
                )
            }
            Match::Rule { rule, .. } => rule,
        };
        v.rule = Some(rule.name.clone());
        if rule.allow {
            return self.finish(policy, v, true, "allow-listed without signature".into(), start);
        }
        // 3. Signatures about this digest.
        let mut notes = Notes::default();
        match self.find_signature(r, digest, rule, &mut notes).await {
            Ok(Some(found)) => {
                v.signer = Some(found.signer);
                v.tlog_index = found.tlog_index;
                v.format = Some(found.format);
                return self.finish(policy, v, true, "signature verified".into(), start);
            }
            Ok(None) => {}
            Err(e) => {
                return self.finish(
                    policy,
                    v,
                    false,
                    format!("registry error while fetching signatures: {e}"),
                    start,
                )
            }
        }
        // 4. Listed in a signed index the reference names: the index digest it pins, else the
        //    one its tag resolves to now.
        if let Some(index) = self.index_of(r, digest).await {
            if self.index_lists(r, &index, digest).await {
                let mut index_notes = Notes::default();
                if let Ok(Some(found)) = self.find_signature(r, &index, rule, &mut index_notes).await {
                    v.signer = Some(found.signer);
                    v.tlog_index = found.tlog_index;
                    v.format = Some(found.format);
                    v.via_index = Some(index.clone());
                    let reason = format!("listed in signed index {index}");
                    return self.finish(policy, v, true, reason, start);
                }
            }
        }
        self.finish(policy, v, false, notes.reason(), start)
    }

    fn finish(
        &self,
        policy: &Policy,
        mut v: ImageVerdict,
        verified: bool,
        reason: String,
        start: Instant,
    ) -> ImageVerdict {
        v.verified = verified;
        v.decision = policy.decide(if verified {
            crate::policy::Verdict::Allowed
        } else {
            crate::policy::Verdict::Denied
        });
        v.reason = reason;
        v.elapsed = start.elapsed();
        match v.decision {
            Decision::Deny => {
                tracing::warn!(image = %v.image, digest = ?v.digest, rule = ?v.rule, reason = %v.reason, "image denied")
            }
            Decision::AllowWithWarning => {
                tracing::warn!(image = %v.image, digest = ?v.digest, rule = ?v.rule, reason = %v.reason, "image failed verification (warn mode)")
            }
            _ => {
                tracing::info!(image = %v.image, digest = ?v.digest, rule = ?v.rule, signer = ?v.signer, "image allowed")
            }
        }
        v
    }

    /// The index `digest` may be a platform manifest of: the digest the reference pins (never
    /// re-resolved), else what its tag resolves to. `None` when that is `digest` itself.
    async fn index_of(&self, r: &Reference, digest: &Digest) -> Option<Digest> {
        let index = match (&r.digest, &r.tag) {
            (Some(pinned), _) => pinned.clone(),
            (None, Some(_)) => self.client.resolve(r).await.ok()?.digest,
            (None, None) => return None,
        };
        (index != *digest).then_some(index)
    }

    async fn index_lists(&self, r: &Reference, index: &Digest, child: &Digest) -> bool {
        let Ok(m) = self.client.manifest(r, index.as_str()).await else {
            return false;
        };
        serde_json::from_slice::<serde_json::Value>(&m.bytes)
            .ok()
            .and_then(|v| v.get("manifests")?.as_array().cloned())
            .is_some_and(|ms| {
                ms.iter()
                    .any(|d| d.get("digest").and_then(|x| x.as_str()) == Some(child.as_str()))
            })
    }

    async fn find_signature(
        &self,
        r: &Reference,
        digest: &Digest,
        rule: &crate::policy::Rule,
        notes: &mut Notes,
    ) -> Result<Option<Found>, RegistryError> {
        let now = chrono::Utc::now();
        let opts_for = |a: &Authority| Options {
            now,
            tlog: match rule.tlog_requirement(a) {
                TlogRequirement::Required => TlogPolicy::Required,
                TlogRequirement::Optional => TlogPolicy::Optional,
                TlogRequirement::Off => TlogPolicy::Off,
            },
        };
        // Both formats' lookups go out together (each is one or two round trips the other does
        // not wait for); what they found is judged in the policy's order, v2 first.
        let want_v2 = rule.formats.contains(&SignatureFormat::CosignV2);
        let want_v3 = rule.formats.contains(&SignatureFormat::CosignV3);
        let (v2, v3_index) = tokio::join!(
            async {
                match want_v2 {
                    true => self.v2_layers(r, digest).await,
                    false => Ok(Vec::new()),
                }
            },
            async {
                match want_v3 {
                    true => self.v3_index(r, digest).await,
                    false => Ok(None),
                }
            },
        );
        if want_v2 {
            for (i, layer) in v2?.iter().enumerate() {
                for a in &rule.authorities {
                    let (signer, root) = signer_of(a);
                    match layer.verify(digest, signer, root, &opts_for(a)) {
                        Ok(ok) => {
                            return Ok(Some(Found {
                                signer: ok.signer,
                                tlog_index: ok.tlog_index,
                                format: Format::CosignV2,
                            }))
                        }
                        Err(e) => notes
                            .failed
                            .push(format!("cosign-v2 layer {i} vs {}: {e}", describe(a))),
                    }
                }
            }
        }
        if let Some(index) = v3_index? {
            for (i, bundle) in self.v3_bundles(r, digest, &index, notes).await?.iter().enumerate() {
                for a in &rule.authorities {
                    let (signer, root) = signer_of(a);
                    match v3::verify_bundle_for_image(bundle, digest, signer, root, &opts_for(a)) {
                        Ok(ok) => {
                            return Ok(Some(Found {
                                signer: ok.signer,
                                tlog_index: ok.tlog_index,
                                format: Format::CosignV3,
                            }))
                        }
                        Err(e) => notes
                            .failed
                            .push(format!("cosign-v3 bundle {i} vs {}: {e}", describe(a))),
                    }
                }
            }
        }
        Ok(None)
    }

    /// The layers of `sha256-<hex>.sig`; none when the tag does not exist.
    async fn v2_layers(&self, r: &Reference, digest: &Digest) -> Result<Vec<SignatureLayer>, RegistryError> {
        let tag = format!("{}.sig", digest.tag_prefix());
        let m = match self.client.manifest(r, &tag).await {
            Ok(m) => m,
            Err(RegistryError::NotFound { .. }) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let v: serde_json::Value = serde_json::from_slice(&m.bytes).map_err(|e| RegistryError::Protocol {
            url: tag.clone(),
            reason: format!("signature manifest is not JSON: {e}"),
        })?;
        let mut out = Vec::new();
        for l in v
            .get("layers")
            .and_then(|l| l.as_array())
            .into_iter()
            .flatten()
            .take(MAX_SIGNATURES)
        {
            let Some(d) = l
                .get("digest")
                .and_then(|d| d.as_str())
                .and_then(|d| Digest::parse(d).ok())
            else {
                continue;
            };
            if l.get("size")
                .and_then(|s| s.as_u64())
                .is_some_and(|s| s > crate::cosign::v2::MAX_PAYLOAD_BYTES as u64)
            {
                continue;
            }
            let annotations = l
                .get("annotations")
                .and_then(|a| a.as_object())
                .map(|a| {
                    a.iter()
                        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                        .collect()
                })
                .unwrap_or_default();
            let size = l.get("size").and_then(|s| s.as_u64());
            if let Some(payload) = crate::cosign::v2::known_payload(&r.name(), digest, &d, size) {
                out.push(SignatureLayer { payload, annotations });
                continue;
            }
            match self.client.blob(r, &d, crate::cosign::v2::MAX_PAYLOAD_BYTES).await {
                Ok(payload) => out.push(SignatureLayer { payload, annotations }),
                Err(e) if skippable(&e) => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// The referrers of `digest`: the API's answer, else the `sha256-<hex>` referrers tag's
    /// index, else none. Both are asked at once (a registry without the API answers 404 to one,
    /// and the round trip it saves is most of a cold verification); the tag's answer is used
    /// only where the API is missing.
    async fn v3_index(&self, r: &Reference, digest: &Digest) -> Result<Option<Vec<u8>>, RegistryError> {
        let tag = digest.tag_prefix();
        let (api, by_tag) = tokio::join!(self.client.referrers(r, digest, None), self.client.manifest(r, &tag));
        if let Some(bytes) = api? {
            return Ok(Some(bytes));
        }
        match by_tag {
            Ok(m) => Ok(Some(m.bytes)),
            Err(RegistryError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Bundle JSON blobs from the referrers `index` of `digest`. Each listed manifest is fetched
    /// and judged by what it is ([`v3::bundle_layer`]); what the index says about it (its
    /// `artifactType`, annotations) is not looked at.
    async fn v3_bundles(
        &self,
        r: &Reference,
        digest: &Digest,
        index: &[u8],
        notes: &mut Notes,
    ) -> Result<Vec<Vec<u8>>, RegistryError> {
        let v: serde_json::Value = serde_json::from_slice(index).unwrap_or_default();
        let mut out = Vec::new();
        for d in v
            .get("manifests")
            .and_then(|m| m.as_array())
            .into_iter()
            .flatten()
            .take(MAX_SIGNATURES)
        {
            let Some(md) = d
                .get("digest")
                .and_then(|x| x.as_str())
                .and_then(|x| Digest::parse(x).ok())
            else {
                continue;
            };
            let m = match self.client.manifest(r, md.as_str()).await {
                Ok(m) => m,
                Err(e) if skippable(&e) => continue,
                Err(e) => return Err(e),
            };
            let layer = match v3::bundle_layer(&m.bytes, digest) {
                Ok(l) => l,
                Err(why) => {
                    // Other tools' referrers (SBOMs, …) are no news; a bundle about another
                    // digest is worth saying in a refusal.
                    if !matches!(why, v3::NotABundle::ArtifactType(_)) {
                        notes.skipped.push(format!("referrer {md} skipped: {why}"));
                    }
                    continue;
                }
            };
            if layer.size.is_some_and(|s| s > v3::MAX_BUNDLE_BYTES as u64) {
                continue;
            }
            match self.client.blob(r, &layer.digest, v3::MAX_BUNDLE_BYTES).await {
                Ok(b) => out.push(b),
                Err(e) if skippable(&e) => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }
}

/// What the search for signatures met, for the refusal's reason.
#[derive(Default)]
struct Notes {
    /// Candidates that did not verify, and why.
    failed: Vec<String>,
    /// Referrers that were not signatures about the digest.
    skipped: Vec<String>,
}

impl Notes {
    fn reason(&self) -> String {
        let mut reason = if self.failed.is_empty() {
            "no signature found (cosign v2 .sig or v3 bundle)".to_string()
        } else {
            format!("no signature satisfies the rule: {}", self.failed.join("; "))
        };
        if !self.skipped.is_empty() {
            reason.push_str(&format!("; {}", self.skipped.join("; ")));
        }
        reason
    }
}

/// A signature object that is missing, oversized or corrupt is skipped (the others may still
/// satisfy the rule); any other registry failure aborts and denies.
fn skippable(e: &RegistryError) -> bool {
    matches!(
        e,
        RegistryError::NotFound { .. } | RegistryError::TooLarge { .. } | RegistryError::DigestMismatch { .. }
    )
}

fn signer_of(a: &Authority) -> (Signer<'_>, &crate::sigstore::TrustedRoot) {
    static EMPTY: std::sync::OnceLock<crate::sigstore::TrustedRoot> = std::sync::OnceLock::new();
    match a {
        Authority::Key { key, .. } => (
            Signer::Key(key),
            // Key authorities check Rekor entries against the public-good log keys.
            EMPTY.get_or_init(crate::sigstore::TrustedRoot::public_good),
        ),
        Authority::Keyless {
            identity, trusted_root, ..
        } => (Signer::Identity(identity), trusted_root),
    }
}

fn describe(a: &Authority) -> String {
    match a {
        Authority::Key { path, key } => format!("key {} ({})", path.display(), key.fingerprint()),
        Authority::Keyless { identity, .. } => format!("keyless {identity}"),
    }
}

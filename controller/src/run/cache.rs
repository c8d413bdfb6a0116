//! KernelCache and ClusterKernelCache: the resolved digest, node counts, conditions.

use std::{fmt::Debug, sync::Arc};

use chrono::{DateTime, Utc};
use kcache_core::registry::Reference;
use kube::{runtime::controller::Action, Api, Resource, ResourceExt};
use serde::{de::DeserializeOwned, Serialize};

use super::Context;
use crate::{
    aggregate::{cache_conditions, CacheKey},
    apply::apply_status,
    crd::{ClusterKernelCache, Condition, ConditionStatus, KernelCache, KernelCacheStatus},
    error::{Error, Result},
};

/// What the two cache kinds share.
pub trait CacheObject:
    Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Serialize + Send + Sync + 'static
{
    /// `KernelCache` or `ClusterKernelCache`.
    const KIND: &'static str;
    /// spec.image.
    fn image(&self) -> &str;
    /// The status.
    fn cache_status(&self) -> Option<&KernelCacheStatus>;
    /// The API for this object's scope.
    fn api(client: kube::Client, namespace: Option<&str>) -> Api<Self>;
}

impl CacheObject for KernelCache {
    const KIND: &'static str = "KernelCache";
    fn image(&self) -> &str {
        &self.spec.image
    }
    fn cache_status(&self) -> Option<&KernelCacheStatus> {
        self.status.as_ref()
    }
    fn api(client: kube::Client, namespace: Option<&str>) -> Api<Self> {
        Api::namespaced(client, namespace.unwrap_or("default"))
    }
}

impl CacheObject for ClusterKernelCache {
    const KIND: &'static str = "ClusterKernelCache";
    fn image(&self) -> &str {
        &self.spec.image
    }
    fn cache_status(&self) -> Option<&KernelCacheStatus> {
        self.status.as_ref()
    }
    fn api(client: kube::Client, _: Option<&str>) -> Api<Self> {
        Api::all(client)
    }
}

struct Resolution {
    digest: Option<String>,
    at: Option<String>,
    condition: Condition,
    error: Option<Error>,
}

/// Resolves the tag when it is due; keeps the old pin while the registry fails.
async fn resolve<K: CacheObject>(obj: &K, ctx: &Context, now: &DateTime<Utc>) -> Resolution {
    let image = obj.image();
    let old = obj.cache_status();
    let same_spec = old.is_some_and(|s| s.observed_generation == obj.meta().generation);
    let reference = match Reference::parse(image) {
        Ok(r) => r,
        Err(e) => {
            let msg = format!("spec.image {image:?}: {e}");
            return Resolution {
                digest: None,
                at: None,
                condition: Condition::new("Resolved", ConditionStatus::False, "BadReference", msg),
                error: None,
            };
        }
    };
    if let Some(d) = &reference.digest {
        return Resolution {
            digest: Some(d.to_string()),
            at: None,
            condition: Condition::new("Resolved", ConditionStatus::True, "Pinned", "spec.image names a digest"),
            error: None,
        };
    }
    let previous = old.filter(|_| same_spec).and_then(|s| s.resolved_digest.clone());
    let previous_at = old.filter(|_| same_spec).and_then(|s| s.resolved_at.clone());
    let fresh = previous_at
        .as_deref()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .is_some_and(|t| now.signed_duration_since(t).to_std().unwrap_or_default() < ctx.cfg.resolve_every);
    if previous.is_some() && fresh {
        let cond = old
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Resolved").cloned())
            .unwrap_or_else(|| Condition::new("Resolved", ConditionStatus::True, "Resolved", ""));
        return Resolution {
            digest: previous,
            at: previous_at,
            condition: cond,
            error: None,
        };
    }
    let Some(registry) = &ctx.registry else {
        return Resolution {
            digest: previous,
            at: previous_at,
            condition: Condition::new(
                "Resolved",
                ConditionStatus::False,
                "NoRegistryAccess",
                "the controller runs without registry access; nodes pull the tag as they find it",
            ),
            error: None,
        };
    };
    match registry.resolve(&reference).await {
        Ok(r) => {
            let d = r.digest.to_string();
            let msg = format!("{image} resolved to {d}");
            Resolution {
                digest: Some(d),
                at: Some(now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
                condition: Condition::new("Resolved", ConditionStatus::True, "Resolved", msg),
                error: None,
            }
        }
        Err(e) => {
            let msg = format!(
                "{}{}",
                crate::error_chain(&e),
                if previous.is_some() {
                    "; keeping the previous digest"
                } else {
                    ""
                }
            );
            Resolution {
                digest: previous,
                at: previous_at,
                condition: Condition::new("Resolved", ConditionStatus::False, "ResolveFailed", msg),
                error: Some(Error::Resolve {
                    image: image.to_string(),
                    source: e,
                }),
            }
        }
    }
}

/// Resolves, counts and applies one cache's status when it changed.
#[tracing::instrument(skip_all, fields(kind = K::KIND, name = %obj.name_any(), namespace = obj.namespace()))]
pub async fn reconcile_cache<K: CacheObject>(obj: Arc<K>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile(K::KIND);
    let name = obj.meta().name.clone().ok_or(Error::NoName)?;
    let namespace = obj.namespace();
    let now = Utc::now();
    let stamp = now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let res = resolve(obj.as_ref(), &ctx, &now).await;

    let key = CacheKey {
        namespace: namespace.clone(),
        name: name.clone(),
    };
    let old = obj.cache_status().cloned().unwrap_or_default();
    let mut conditions = vec![res.condition];
    let counts = match ctx.fleet() {
        Some(fleet) => {
            let (counts, reasons) = match fleet.caches.get(&key) {
                Some(t) => (t.counts(res.digest.as_deref()), t.reasons.clone()),
                None => (Default::default(), Vec::new()),
            };
            conditions.extend(cache_conditions(&counts, &reasons));
            counts
        }
        // The node list is not in yet: the counts and their conditions stay as they were.
        None => {
            conditions.extend(old.conditions.iter().filter(|c| c.type_ != "Resolved").cloned());
            old.nodes
        }
    };
    let conditions = conditions
        .into_iter()
        .map(|c| {
            c.at_generation(obj.meta().generation)
                .carry_transition(&old.conditions, &stamp)
        })
        .collect();
    let mut status = KernelCacheStatus {
        resolved_digest: res.digest,
        resolved_at: res.at,
        nodes: counts,
        conditions,
        observed_generation: obj.meta().generation,
        last_updated: old.last_updated.clone(),
    };
    if obj.cache_status() != Some(&status) {
        status.last_updated = Some(stamp);
        let api = K::api(ctx.client.clone(), namespace.as_deref());
        apply_status(&api, &name, &ctx.cfg.manager, &status).await?;
        if old.resolved_digest != status.resolved_digest {
            if let Some(d) = &status.resolved_digest {
                tracing::info!(digest = %d, "resolved");
                ctx.events
                    .publish(
                        obj.as_ref(),
                        false,
                        "Resolved",
                        format!("{} is pinned to {d}", obj.image()),
                    )
                    .await;
            }
        }
    }
    match res.error {
        Some(e) => Err(e),
        None => Ok(Action::await_change()),
    }
}

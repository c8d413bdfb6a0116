//! TrustRoot: `Valid` from kcache-core's trusted-root loader (the one kcached uses for keyless
//! verification), with the load error when it fails.

use std::sync::Arc;

use chrono::Utc;
use kcache_core::sigstore::TrustedRoot;
use kube::{runtime::controller::Action, Api, ResourceExt};

use super::Context;
use crate::{
    apply::apply_status,
    crd::{Condition, ConditionStatus, TrustRoot, TrustRootStatus},
    error::{Error, Result},
};

/// The `Valid` condition for a trusted_root.json document: loaded (with what it holds), or not
/// (with the loader's error chain, naming the field).
pub fn root_condition(trusted_root: &str) -> Condition {
    match TrustedRoot::from_json(trusted_root.as_bytes()) {
        Ok(r) => Condition::new(
            "Valid",
            ConditionStatus::True,
            "Loaded",
            format!(
                "trusted root loads: {} certificate authorit(ies), {} transparency log(s), {} CT log(s), {} timestamp authorit(ies)",
                r.certificate_authorities.len(),
                r.tlogs.len(),
                r.ctlogs.len(),
                r.timestamp_authorities.len()
            ),
        ),
        Err(e) => Condition::new(
            "Valid",
            ConditionStatus::False,
            "Invalid",
            format!(
                "spec.trustedRoot: {}; keyless rules using it cannot verify",
                crate::error_chain(&e)
            ),
        ),
    }
}

/// Loads one TrustRoot's document and applies its status when it changed.
#[tracing::instrument(skip_all, fields(name = %root.name_any(), generation = root.metadata.generation))]
pub async fn reconcile_root(root: Arc<TrustRoot>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile("TrustRoot");
    let name = root.metadata.name.clone().ok_or(Error::NoName)?;
    let generation = root.metadata.generation;
    let now = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let old = root.status.clone().unwrap_or_default();
    let valid = root_condition(&root.spec.trusted_root)
        .at_generation(generation)
        .carry_transition(&old.conditions, &now);
    let status = TrustRootStatus {
        conditions: vec![valid.clone()],
        observed_generation: generation,
    };
    if root.status.as_ref() != Some(&status) {
        let api = Api::<TrustRoot>::all(ctx.client.clone());
        apply_status(&api, &name, &ctx.cfg.manager, &status).await?;
        let was = old
            .conditions
            .iter()
            .find(|c| c.type_ == "Valid")
            .map(|c| (c.status, c.observed_generation));
        if was != Some((valid.status, generation)) {
            tracing::info!(valid = ?valid.status, "TrustRoot checked");
            let warning = valid.status != ConditionStatus::True;
            ctx.events
                .publish(root.as_ref(), warning, &valid.reason, valid.message.clone())
                .await;
        }
    }
    Ok(Action::await_change())
}

//! TrustPolicy: `Valid` from the node policy loader, and node counts.

use std::sync::Arc;

use chrono::Utc;
use kube::{runtime::controller::Action, Api, ResourceExt};

use super::Context;
use crate::{
    apply::apply_status,
    crd::{Condition, ConditionStatus, TrustPolicy, TrustPolicyStatus},
    error::{Error, Result},
    validate::validate,
};

/// Validates one TrustPolicy and applies its status when it changed.
#[tracing::instrument(skip_all, fields(name = %tp.name_any(), generation = tp.metadata.generation))]
pub async fn reconcile_policy(tp: Arc<TrustPolicy>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile("TrustPolicy");
    let name = tp.metadata.name.clone().ok_or(Error::NoName)?;
    let generation = tp.metadata.generation;
    let problems = validate(&name, generation, &tp.spec, &ctx.trust_roots())?;
    let now = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let old = tp.status.clone().unwrap_or_default();
    let valid = match problems.is_empty() {
        true => Condition::new(
            "Valid",
            ConditionStatus::True,
            "Loaded",
            format!("the node policy loader accepts all {} rule(s)", tp.spec.rules.len()),
        ),
        false => Condition::new(
            "Valid",
            ConditionStatus::False,
            "Invalid",
            format!(
                "{} problem(s); nodes keep their last good policy:\n{}",
                problems.len(),
                problems.join("\n")
            ),
        ),
    }
    .at_generation(generation)
    .carry_transition(&old.conditions, &now);
    // Until the node list is in, the node counts stay as they were.
    let (enforcing, refusing) = match ctx.fleet() {
        Some(fleet) => fleet
            .policies
            .get(&(name.clone(), generation.unwrap_or(0)))
            .copied()
            .unwrap_or_default(),
        None => (old.nodes_enforcing, old.nodes_refusing),
    };
    let status = TrustPolicyStatus {
        conditions: vec![valid.clone()],
        observed_generation: generation,
        nodes_enforcing: enforcing,
        nodes_refusing: refusing,
    };
    if tp.status.as_ref() != Some(&status) {
        let api = Api::<TrustPolicy>::all(ctx.client.clone());
        apply_status(&api, &name, &ctx.cfg.manager, &status).await?;
        let was_valid = old
            .conditions
            .iter()
            .find(|c| c.type_ == "Valid")
            .map(|c| (c.status, c.observed_generation));
        if was_valid != Some((valid.status, generation)) {
            tracing::info!(valid = ?valid.status, problems = problems.len(), "TrustPolicy checked");
            let warning = valid.status != ConditionStatus::True;
            ctx.events
                .publish(tp.as_ref(), warning, &valid.reason, valid.message.clone())
                .await;
        }
    }
    Ok(Action::await_change())
}

//! The KernelCacheNode status from what kcached reports (policy, caches), the GPU inventory
//! (gpus.json) and the cache store's records (rule, signer, Rekor index, containers).

use std::path::Path;

use chrono::{DateTime, Utc};
use kcache_core::{
    api::PolicyStatus,
    cache::{
        meta::{Arch, Backend, GpuInventory},
        store::{CacheState, NodeCaches, StoreLayout},
    },
    digest::Digest,
};

use crate::crd::{
    Condition, ConditionStatus, GpuReason, KernelCacheNodeStatus, NodeCache, NodeGpu, NodePolicy, NodeTrustPolicy,
    Signer, TrustPolicyState,
};

/// What the agent learnt from kcached in one round (`Err`: why kcached did not answer).
pub struct KcachedView {
    /// `/v1/policy`.
    pub policy: Result<PolicyStatus, String>,
    /// `/v1/caches`.
    pub caches: Result<NodeCaches, String>,
}

/// The GPUs as the CRD lists them.
pub fn gpus(inv: &GpuInventory) -> Vec<NodeGpu> {
    inv.gpus
        .iter()
        .map(|g| NodeGpu {
            id: g.id.clone(),
            backend: match g.backend {
                Backend::Cuda => "cuda".into(),
                Backend::Hip => "hip".into(),
            },
            arch: match &g.arch {
                Arch::Cuda(cc) => cc.to_string(),
                Arch::Gfx(t) => t.clone(),
            },
            warp_size: i32::try_from(g.warp_size).ok(),
            name: (!g.name.is_empty()).then(|| g.name.clone()),
        })
        .collect()
}

fn rfc3339(secs: u64) -> Option<String> {
    let t = DateTime::<Utc>::from_timestamp(i64::try_from(secs).ok()?, 0)?;
    Some(t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}

/// `key SHA256:…` or `subject (issuer …)`, as the cache record writes a signer.
pub fn parse_signer(s: &str) -> Signer {
    if let Some(fp) = s.strip_prefix("key ") {
        return Signer {
            key_fingerprint: Some(fp.to_string()),
            ..Signer::default()
        };
    }
    match s.rsplit_once(" (issuer ") {
        Some((subject, issuer)) => Signer {
            subject: Some(subject.to_string()),
            issuer: Some(issuer.trim_end_matches(')').to_string()),
            ..Signer::default()
        },
        None => Signer {
            subject: Some(s.to_string()),
            ..Signer::default()
        },
    }
}

/// The caches, with the store's verification records and container refs where the store is
/// readable.
pub fn caches(state: &NodeCaches, store: Option<&StoreLayout>) -> Vec<NodeCache> {
    state
        .caches
        .iter()
        .map(|c| {
            let digest = c.digest.clone();
            let record = match (store, &digest) {
                (Some(s), Some(d)) => s.read_record(d).ok().flatten(),
                _ => None,
            };
            let containers = match (store, &digest) {
                (Some(s), Some(d)) => list_names(&s.refs_dir(d)),
                _ => Vec::new(),
            };
            let v = record.as_ref().map(|r| &r.verification);
            NodeCache {
                name: c.name.clone(),
                namespace: c.namespace.clone(),
                image: c.image.clone(),
                digest: c.digest.as_ref().map(Digest::to_string),
                state: match c.state {
                    CacheState::Pending => "pending",
                    CacheState::Ready => "ready",
                    CacheState::Denied => "denied",
                    CacheState::Failed => "failed",
                }
                .into(),
                reason: c.reason.clone(),
                rule: v.map(|v| v.rule.clone()),
                signer: v.and_then(|v| v.signer.as_deref()).map(parse_signer),
                rekor_log_index: v.and_then(|v| v.tlog_index).and_then(|i| i64::try_from(i).ok()),
                compatible_gpus: c.compatible_gpus.clone(),
                incompatible_gpus: c
                    .incompatible_gpus
                    .iter()
                    .map(|m| GpuReason {
                        gpu: m.gpu.clone(),
                        reason: m.reason.clone(),
                    })
                    .collect(),
                containers,
                last_update: rfc3339(c.updated_at),
            }
        })
        .collect()
}

fn list_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .filter(|n| !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// The whole status. `expected` is the generation the files on disk load to (or why they do
/// not): when kcached reports it, every written TrustPolicy is enforced.
pub fn status(
    gpus: Vec<NodeGpu>,
    view: &KcachedView,
    mut policies: Vec<NodeTrustPolicy>,
    expected: Result<u64, String>,
    store: Option<&StoreLayout>,
    old: Option<&KernelCacheNodeStatus>,
    now: &str,
) -> KernelCacheNodeStatus {
    let old_conditions = old.map(|o| o.conditions.as_slice()).unwrap_or(&[]);
    let policy = view.policy.as_ref().ok().map(|p| NodePolicy {
        generation: format!("{:016x}", p.generation),
        mode: p.mode.as_str().to_string(),
        rules: i32::try_from(p.rules).unwrap_or(i32::MAX),
        last_error: p.last_error.clone(),
    });
    let in_force = match (&view.policy, &expected) {
        (Ok(p), Ok(g)) => p.generation == *g,
        _ => false,
    };
    for tp in &mut policies {
        if tp.state == TrustPolicyState::Written {
            if in_force {
                tp.state = TrustPolicyState::Enforced;
            } else {
                tp.message = Some(match (&view.policy, &expected) {
                    (Err(e), _) => format!("kcached does not answer: {e}"),
                    (_, Err(e)) => {
                        format!("the node's policy files do not load; kcached keeps its last good policy: {e}")
                    }
                    (Ok(p), Ok(_)) => match &p.last_error {
                        Some(e) => format!("kcached has not taken the files: {e}"),
                        None => "kcached has not reloaded the files yet".into(),
                    },
                });
            }
        }
    }
    let kcached = match (&view.policy, &view.caches) {
        (Ok(_), Ok(_)) => Condition::new(
            "KcachedReady",
            ConditionStatus::True,
            "Answering",
            "kcached answers on its API socket",
        ),
        (Err(e), _) | (_, Err(e)) => Condition::new("KcachedReady", ConditionStatus::False, "Unreachable", e.clone()),
    };
    let not_enforced: Vec<String> = policies
        .iter()
        .filter(|p| p.state != TrustPolicyState::Enforced)
        .map(|p| format!("{} ({:?}): {}", p.name, p.state, p.message.as_deref().unwrap_or("")))
        .collect();
    let applied = match not_enforced.is_empty() {
        true => Condition::new(
            "PolicyApplied",
            ConditionStatus::True,
            "AllEnforced",
            format!("{} TrustPolicies enforced", policies.len()),
        ),
        false => {
            let reason = if policies.iter().any(|p| p.state == TrustPolicyState::Refused) {
                "PolicyRefused"
            } else if policies.iter().any(|p| p.state == TrustPolicyState::Invalid) {
                "PolicyInvalid"
            } else {
                "NotYetEnforced"
            };
            Condition::new("PolicyApplied", ConditionStatus::False, reason, not_enforced.join("\n"))
        }
    };
    let caches = match &view.caches {
        Ok(c) => caches(c, store),
        // Keep the last known caches while kcached does not answer; the condition says so.
        Err(_) => old.map(|o| o.caches.clone()).unwrap_or_default(),
    };
    KernelCacheNodeStatus {
        gpu_count: i32::try_from(gpus.len()).unwrap_or(i32::MAX),
        gpus,
        policy,
        trust_policies: policies,
        caches,
        conditions: vec![
            kcached.carry_transition(old_conditions, now),
            applied.carry_transition(old_conditions, now),
        ],
        last_update: Some(now.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signers_parse_as_the_store_writes_them() {
        assert_eq!(
            parse_signer("key SHA256:ab").key_fingerprint.as_deref(),
            Some("SHA256:ab")
        );
        let s = parse_signer("https://github.com/o/r/.github/workflows/x.yml@refs/heads/main (issuer https://token.actions.githubusercontent.com)");
        assert_eq!(s.issuer.as_deref(), Some("https://token.actions.githubusercontent.com"));
        assert_eq!(
            s.subject.as_deref(),
            Some("https://github.com/o/r/.github/workflows/x.yml@refs/heads/main")
        );
    }
}

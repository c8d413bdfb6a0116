//! Fleet status from KernelCacheNode objects: per cache, how many nodes have it where; per
//! TrustPolicy generation, how many nodes enforce or refuse it. One pass over every node.

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use crate::crd::{CacheCounts, Condition, ConditionStatus, KernelCacheNode, KernelCacheNodeStatus, TrustPolicyState};

/// A cache: its namespace (none for a ClusterKernelCache) and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CacheKey {
    /// None: cluster-wide.
    pub namespace: Option<String>,
    /// The name pods use.
    pub name: String,
}

/// What one pass found.
#[derive(Debug, Default)]
pub struct Fleet {
    /// Per cache: counts by the digest the node holds (`None`: none yet), and failure reasons.
    pub caches: HashMap<CacheKey, CacheTally>,
    /// Per (TrustPolicy name, generation): nodes enforcing, nodes refusing.
    pub policies: HashMap<(String, i64), (i32, i32)>,
    /// Nodes whose report is older than the stale time (or has none).
    pub stale_nodes: Vec<String>,
    /// Nodes with a fresh report.
    pub fresh_nodes: usize,
}

/// One cache across fresh nodes.
#[derive(Debug, Default)]
pub struct CacheTally {
    /// Ready copies by digest: (ready, compatible, incompatible, in use).
    pub ready_by_digest: HashMap<String, [i32; 4]>,
    /// Denied or failed.
    pub failed: i32,
    /// Pending.
    pub pending: i32,
    /// Nodes reporting it.
    pub reporting: i32,
    /// Stale nodes that last reported it.
    pub stale: i32,
    /// Up to [`MAX_REASONS`] `node: reason` lines for failures.
    pub reasons: Vec<String>,
}

/// Failure reasons kept per cache (the message must stay readable at fleet scale).
pub const MAX_REASONS: usize = 3;

/// Whether a node's report is older than `stale_after` at `now` (no report counts as stale).
pub fn is_stale(status: Option<&KernelCacheNodeStatus>, now: DateTime<Utc>, stale_after: chrono::Duration) -> bool {
    let last = status
        .and_then(|s| s.last_update.as_deref())
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok());
    last.is_none_or(|t| now.signed_duration_since(t) > stale_after)
}

/// Drops from a KernelCacheNode what neither [`tally`] nor the stale-node sweep reads, before
/// the controller's watch store keeps it: per cache only its key, state, digest, the reason of
/// a failure, and whether it has a compatible GPU and a container (one of each is kept); per
/// node its name, the GPU count's non-emptiness, the TrustPolicy states and `lastUpdate`. A
/// fleet of 5,000 nodes × 20 caches is held in a fraction of the memory; the objects on the API
/// server are untouched.
pub fn slim(node: &mut KernelCacheNode) {
    let m = &mut node.metadata;
    m.managed_fields = None;
    m.annotations = None;
    m.labels = None;
    m.owner_references = None;
    let Some(s) = node.status.as_mut() else {
        return;
    };
    s.gpus.truncate(1);
    s.gpus.shrink_to_fit();
    s.policy = None;
    s.conditions = Vec::new();
    for tp in &mut s.trust_policies {
        tp.message = None;
    }
    for c in &mut s.caches {
        c.image = String::new();
        c.rule = None;
        c.signer = None;
        c.rekor_log_index = None;
        c.incompatible_gpus = Vec::new();
        c.last_update = None;
        for keep_one in [&mut c.compatible_gpus, &mut c.containers] {
            keep_one.truncate(1);
            keep_one.shrink_to_fit();
        }
        if !matches!(c.state.as_str(), "denied" | "failed") {
            c.reason = None;
        }
    }
}

/// One pass over every node.
pub fn tally<'a>(
    nodes: impl IntoIterator<Item = &'a KernelCacheNode>,
    now: DateTime<Utc>,
    stale_after: chrono::Duration,
) -> Fleet {
    let mut fleet = Fleet::default();
    for node in nodes {
        let name = node.metadata.name.clone().unwrap_or_default();
        let stale = is_stale(node.status.as_ref(), now, stale_after);
        let Some(status) = node.status.as_ref() else {
            fleet.stale_nodes.push(name);
            continue;
        };
        if stale {
            for c in &status.caches {
                let key = CacheKey {
                    namespace: c.namespace.clone(),
                    name: c.name.clone(),
                };
                fleet.caches.entry(key).or_default().stale += 1;
            }
            fleet.stale_nodes.push(name);
            continue;
        }
        fleet.fresh_nodes += 1;
        for tp in &status.trust_policies {
            let e = fleet.policies.entry((tp.name.clone(), tp.generation)).or_default();
            match tp.state {
                TrustPolicyState::Enforced => e.0 += 1,
                TrustPolicyState::Refused => e.1 += 1,
                TrustPolicyState::Written | TrustPolicyState::Invalid => {}
            }
        }
        let has_gpus = !status.gpus.is_empty();
        for c in &status.caches {
            let key = CacheKey {
                namespace: c.namespace.clone(),
                name: c.name.clone(),
            };
            let t = fleet.caches.entry(key).or_default();
            t.reporting += 1;
            match (c.state.as_str(), &c.digest) {
                ("ready", Some(d)) => {
                    let e = t.ready_by_digest.entry(d.clone()).or_default();
                    e[0] += 1;
                    if !c.compatible_gpus.is_empty() {
                        e[1] += 1;
                    } else if has_gpus {
                        e[2] += 1;
                    }
                    if !c.containers.is_empty() {
                        e[3] += 1;
                    }
                }
                ("denied" | "failed", _) => {
                    t.failed += 1;
                    if t.reasons.len() < MAX_REASONS {
                        let why = c.reason.as_deref().unwrap_or(c.state.as_str());
                        t.reasons.push(format!("{name}: {why}"));
                    }
                }
                _ => t.pending += 1,
            }
        }
    }
    fleet
}

impl CacheTally {
    /// Counts for a cache whose fleet digest is `want` (None: any ready copy counts; a copy at
    /// another digest is still pending, mid-rollout).
    pub fn counts(&self, want: Option<&str>) -> CacheCounts {
        let mut c = CacheCounts {
            reporting: self.reporting,
            failed: self.failed,
            pending: self.pending,
            stale: self.stale,
            ..CacheCounts::default()
        };
        for (digest, [ready, compatible, incompatible, in_use]) in &self.ready_by_digest {
            if want.is_none_or(|w| w == digest) {
                c.ready += ready;
                c.compatible += compatible;
                c.incompatible += incompatible;
                c.in_use += in_use;
            } else {
                c.pending += ready;
            }
        }
        c
    }
}

/// The `Ready` and `Degraded` conditions for counts (and failure reasons).
pub fn cache_conditions(counts: &CacheCounts, reasons: &[String]) -> Vec<Condition> {
    let ready = if counts.reporting == 0 {
        Condition::new(
            "Ready",
            ConditionStatus::Unknown,
            "NoNodesReporting",
            "no fresh node reports this cache",
        )
    } else if counts.ready == counts.reporting {
        Condition::new(
            "Ready",
            ConditionStatus::True,
            "AllNodesReady",
            format!("{} of {} nodes ready", counts.ready, counts.reporting),
        )
    } else {
        Condition::new(
            "Ready",
            ConditionStatus::False,
            if counts.failed > 0 {
                "NodesFailed"
            } else {
                "NodesPending"
            },
            format!(
                "{} of {} nodes ready, {} pending, {} failed",
                counts.ready, counts.reporting, counts.pending, counts.failed
            ),
        )
    };
    let degraded = if counts.failed > 0 {
        let mut msg = format!("{} node(s) failed: {}", counts.failed, reasons.join("; "));
        if counts.failed as usize > reasons.len() {
            msg.push_str("; ...");
        }
        Condition::new("Degraded", ConditionStatus::True, "NodesFailed", msg)
    } else {
        Condition::new("Degraded", ConditionStatus::False, "NoFailures", "")
    };
    vec![ready, degraded]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{KernelCacheNodeSpec, NodeCache, NodeGpu, NodeTrustPolicy};

    fn node(name: &str, age_s: i64, caches: Vec<NodeCache>) -> KernelCacheNode {
        let mut n = KernelCacheNode::new(name, KernelCacheNodeSpec { node_name: name.into() });
        n.status = Some(KernelCacheNodeStatus {
            gpus: vec![NodeGpu {
                id: "GPU-0".into(),
                backend: "cuda".into(),
                arch: "90".into(),
                ..NodeGpu::default()
            }],
            caches,
            trust_policies: vec![NodeTrustPolicy {
                name: "tp".into(),
                generation: 2,
                state: if age_s == 1 {
                    TrustPolicyState::Refused
                } else {
                    TrustPolicyState::Enforced
                },
                message: None,
            }],
            last_update: Some((now() - chrono::Duration::seconds(age_s)).to_rfc3339()),
            ..KernelCacheNodeStatus::default()
        });
        n
    }

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-12-06T10:00:00Z").unwrap().into()
    }

    fn cache(state: &str, digest: Option<&str>, gpus: &[&str], containers: &[&str]) -> NodeCache {
        NodeCache {
            name: "llama".into(),
            namespace: Some("ml".into()),
            image: "r/c:1".into(),
            digest: digest.map(Into::into),
            state: state.into(),
            reason: (state == "failed").then(|| "signature missing".into()),
            compatible_gpus: gpus.iter().map(|s| s.to_string()).collect(),
            containers: containers.iter().map(|s| s.to_string()).collect(),
            ..NodeCache::default()
        }
    }

    #[test]
    fn counts_follow_the_resolved_digest_and_leave_out_stale_nodes() {
        let nodes = vec![
            node("a", 5, vec![cache("ready", Some("sha256:new"), &["GPU-0"], &["c1"])]),
            node("b", 5, vec![cache("ready", Some("sha256:new"), &[], &[])]),
            node("c", 5, vec![cache("ready", Some("sha256:old"), &["GPU-0"], &[])]),
            node("d", 5, vec![cache("failed", None, &[], &[])]),
            node("e", 1, vec![cache("pending", None, &[], &[])]),
            node("gone", 3600, vec![cache("ready", Some("sha256:new"), &["GPU-0"], &[])]),
        ];
        let fleet = tally(&nodes, now(), chrono::Duration::seconds(300));
        assert_eq!(fleet.stale_nodes, ["gone"]);
        assert_eq!(fleet.fresh_nodes, 5);
        let t = &fleet.caches[&CacheKey {
            namespace: Some("ml".into()),
            name: "llama".into(),
        }];
        let c = t.counts(Some("sha256:new"));
        assert_eq!(
            c,
            CacheCounts {
                reporting: 5,
                ready: 2,
                compatible: 1,
                incompatible: 1,
                failed: 1,
                pending: 2,
                in_use: 1,
                stale: 1,
            }
        );
        assert_eq!(t.reasons, ["d: signature missing"]);
        assert_eq!(t.counts(None).ready, 3);
        assert_eq!(fleet.policies[&("tp".to_string(), 2)], (4, 1));

        let conds = cache_conditions(&c, &t.reasons);
        assert_eq!(conds[0].status, ConditionStatus::False);
        assert_eq!(conds[0].reason, "NodesFailed");
        assert_eq!(conds[1].status, ConditionStatus::True);
        assert_eq!(conds[1].message, "1 node(s) failed: d: signature missing");
    }

    #[test]
    fn slim_nodes_tally_exactly_as_whole_ones() {
        let mut gpus = cache("ready", Some("sha256:new"), &["GPU-0", "GPU-1"], &["c1", "c2"]);
        gpus.signer = Some(Default::default());
        gpus.incompatible_gpus = vec![Default::default()];
        gpus.reason = Some("kept only for failures".into());
        let whole = vec![
            node("a", 5, vec![gpus]),
            node("b", 5, vec![cache("ready", Some("sha256:new"), &[], &[])]),
            node("d", 5, vec![cache("failed", None, &[], &[])]),
            node("e", 1, vec![cache("pending", None, &[], &[])]),
            node("gone", 3600, vec![cache("ready", Some("sha256:new"), &["GPU-0"], &[])]),
        ];
        let mut slimmed = whole.clone();
        slimmed.iter_mut().for_each(slim);
        let a = slimmed[0].status.as_ref().unwrap();
        assert_eq!(a.caches[0].compatible_gpus.len(), 1);
        assert!(a.caches[0].signer.is_none() && a.caches[0].reason.is_none());
        let (w, s) = (
            tally(&whole, now(), chrono::Duration::seconds(300)),
            tally(&slimmed, now(), chrono::Duration::seconds(300)),
        );
        assert_eq!(
            (w.stale_nodes, w.fresh_nodes, w.policies),
            (s.stale_nodes, s.fresh_nodes, s.policies)
        );
        assert_eq!(w.caches.len(), s.caches.len());
        for (key, t) in &w.caches {
            let u = &s.caches[key];
            for want in [None, Some("sha256:new")] {
                assert_eq!(t.counts(want), u.counts(want), "{key:?} {want:?}");
            }
            assert_eq!(t.reasons, u.reasons);
        }
    }

    #[test]
    fn a_node_without_a_report_is_stale() {
        let mut n = node("x", 0, vec![]);
        n.status = None;
        let fleet = tally(&[n], now(), chrono::Duration::seconds(300));
        assert_eq!(fleet.stale_nodes, ["x"]);
        assert_eq!(fleet.fresh_nodes, 0);
    }
}

//! The agent's half that touches only the node's files: TrustPolicies into policy.d, caches
//! into caches.d. No Kubernetes and no kcached here, so it is tested on plain directories.
//!
//! For each TrustPolicy, in name order:
//! 1. the guard ([`Guard::check`]) against the node's own policy.yaml: refused policies are not
//!    written (a fragment already there from an accepted generation stays);
//! 2. rendered, its key and trusted-root files written under a per-generation directory;
//! 3. loaded by the node policy loader together with the node's policy.yaml: a fragment that
//!    does not load is not written (the old one stays, so kcached keeps the last good policy);
//! 4. written (temp, fsync, rename) if its bytes changed.
//!
//! Then the agent's fragments and caches.d files for objects that are gone are removed, and
//! key directories no fragment names any more.

use std::{collections::BTreeSet, path::PathBuf};

use kcache_core::policy::Policy;

use crate::{
    crd::{DefaultAction, NodeTrustPolicy, PolicyMode, TrustPolicy, TrustPolicyState},
    files::{list_ours, prune_material, remove_ours, write_if_changed, write_material, FileError},
    guard::{from_core_default, from_core_mode, Guard},
    render::{fragment_name, render_cache, render_policy, TrustRoots, MATERIAL_DIR},
    validate::{load_fragment, ValidateError},
};

/// Where the node's files are.
#[derive(Debug, Clone)]
pub struct NodeFiles {
    /// The node's main policy file (the admin's; never written).
    pub policy: PathBuf,
    /// policy.d.
    pub policy_d: PathBuf,
    /// caches.d.
    pub caches_d: PathBuf,
}

/// A cache to approve: (namespace, name, spec.image, status.resolvedDigest).
pub type CacheWant = (Option<String>, String, String, Option<String>);

/// What one sync did.
#[derive(Debug, Default)]
pub struct SyncOutcome {
    /// Per TrustPolicy: written, refused or invalid (never `Enforced`: that is kcached's word).
    pub policies: Vec<NodeTrustPolicy>,
    /// Files written or removed.
    pub changed: usize,
}

/// Why a sync stopped.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// A file could not be written or removed.
    #[error(transparent)]
    File(#[from] FileError),
    /// The scratch directory for the loader.
    #[error(transparent)]
    Validate(#[from] ValidateError),
}

impl NodeFiles {
    /// The node's own mode and default, from its main policy file (enforce/deny when it does not
    /// load: the strictest reading), and whether it loaded.
    fn node_policy(&self) -> (PolicyMode, DefaultAction, bool) {
        match Policy::load(&self.policy, None) {
            Ok(p) => (from_core_mode(p.mode), from_core_default(p.default), true),
            Err(e) => {
                tracing::warn!(error = %e, "the node's policy.yaml does not load; judging cluster policies against enforce/deny");
                (PolicyMode::Enforce, DefaultAction::Deny, false)
            }
        }
    }

    /// Brings policy.d and caches.d in line with the objects.
    pub fn sync(
        &self,
        guard: &Guard,
        policies: &[&TrustPolicy],
        roots: &TrustRoots,
        caches: &[CacheWant],
    ) -> Result<SyncOutcome, SyncError> {
        let mut out = SyncOutcome::default();
        let (node_mode, node_default, main_ok) = self.node_policy();
        let mut wanted = BTreeSet::new();
        let mut sorted: Vec<&&TrustPolicy> = policies.iter().collect();
        sorted.sort_by_key(|p| p.metadata.name.clone());
        for tp in sorted {
            let Some(name) = tp.metadata.name.as_deref() else {
                continue;
            };
            let generation = tp.metadata.generation.unwrap_or(0);
            let file = fragment_name(name);
            wanted.insert(file.clone());
            let report = |state, message: Option<String>| NodeTrustPolicy {
                name: name.to_string(),
                generation,
                state,
                message,
            };
            if let Err(why) = guard.check(node_mode, node_default, tp.spec.mode, tp.spec.default) {
                tracing::warn!(policy = name, generation, %why, "TrustPolicy refused by this node");
                out.policies.push(report(TrustPolicyState::Refused, Some(why)));
                continue;
            }
            let rendered = match render_policy(name, Some(generation), &tp.spec, roots, &self.policy_d) {
                Ok(r) => r,
                Err(errors) => {
                    let msg = errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n");
                    out.policies.push(report(TrustPolicyState::Invalid, Some(msg)));
                    continue;
                }
            };
            for (rel, bytes) in &rendered.material {
                if write_material(&self.policy_d, rel, bytes)? {
                    out.changed += 1;
                }
            }
            let main = main_ok.then_some(self.policy.as_path());
            match load_fragment(main, &rendered, &self.policy_d)? {
                Ok(_) => {
                    if write_if_changed(&self.policy_d, &file, &rendered.fragment)? {
                        tracing::info!(policy = name, generation, file, "TrustPolicy written to policy.d");
                        out.changed += 1;
                    }
                    out.policies.push(report(TrustPolicyState::Written, None));
                }
                Err(problems) => {
                    tracing::warn!(
                        policy = name,
                        generation,
                        problems = problems.len(),
                        "TrustPolicy does not load; the node keeps its last good policy"
                    );
                    out.policies
                        .push(report(TrustPolicyState::Invalid, Some(problems.join("\n"))));
                }
            }
        }
        for stale in list_ours(&self.policy_d)?.difference(&wanted) {
            if remove_ours(&self.policy_d, stale)? {
                tracing::info!(file = %stale, "TrustPolicy gone: fragment removed");
                out.changed += 1;
            }
        }
        prune_material(&self.policy_d, &self.referenced_material()?)?;

        let mut wanted = BTreeSet::new();
        for (ns, name, image, resolved) in caches {
            let (file, _, bytes) = render_cache(name, ns.as_deref(), image, resolved.as_deref());
            if write_if_changed(&self.caches_d, &file, &bytes)? {
                tracing::info!(
                    cache = name,
                    namespace = ns.as_deref(),
                    file,
                    "cache approved in caches.d"
                );
                out.changed += 1;
            }
            wanted.insert(file);
        }
        for stale in list_ours(&self.caches_d)?.difference(&wanted) {
            if remove_ours(&self.caches_d, stale)? {
                tracing::info!(file = %stale, "cache gone: caches.d entry removed");
                out.changed += 1;
            }
        }
        Ok(out)
    }

    /// Material directories named by the agent's fragments now on disk.
    fn referenced_material(&self) -> Result<BTreeSet<String>, FileError> {
        let mut keep = BTreeSet::new();
        for f in list_ours(&self.policy_d)? {
            let text = std::fs::read_to_string(self.policy_d.join(&f)).unwrap_or_default();
            let marker = format!("{MATERIAL_DIR}/");
            for (i, _) in text.match_indices(&marker) {
                let rest = &text[i + marker.len()..];
                if let Some(dir) = rest.split('/').next() {
                    keep.insert(dir.to_string());
                }
            }
        }
        Ok(keep)
    }

    /// The generation kcached would have for the files on disk now (`None`: they do not load,
    /// so kcached keeps its last good policy).
    pub fn expected_generation(&self) -> Result<u64, String> {
        Policy::load(&self.policy, Some(&self.policy_d))
            .map(|p| p.generation)
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::crd::{KeyAuthority, KeylessAuthority, PolicyAuthority, PolicyRule, TrustPolicySpec};

    fn node() -> (tempfile::TempDir, NodeFiles) {
        let d = tempfile::tempdir().unwrap();
        let files = NodeFiles {
            policy: d.path().join("policy.yaml"),
            policy_d: d.path().join("policy.d"),
            caches_d: d.path().join("caches.d"),
        };
        fs::write(&files.policy, "mode: enforce\ndefault: deny\n").unwrap();
        fs::create_dir_all(&files.policy_d).unwrap();
        fs::write(
            files.policy_d.join("10-admin.yaml"),
            "rules:\n  - name: admin\n    images: [\"a.example/*\"]\n    allow: true\n",
        )
        .unwrap();
        (d, files)
    }

    fn tp(name: &str, generation: i64, spec: TrustPolicySpec) -> TrustPolicy {
        let mut t = TrustPolicy::new(name, spec);
        t.metadata.generation = Some(generation);
        t
    }

    fn key_spec(pem: String) -> TrustPolicySpec {
        TrustPolicySpec {
            rules: vec![PolicyRule {
                name: "caches".into(),
                images: vec!["registry.example.com/caches/*".into()],
                authorities: vec![PolicyAuthority {
                    key: Some(KeyAuthority { data: pem }),
                    keyless: None,
                }],
                ..PolicyRule::default()
            }],
            ..TrustPolicySpec::default()
        }
    }

    fn pem() -> String {
        kcache_core::signing::PrivateKey::generate_p256().public_key().to_pem()
    }

    #[test]
    fn a_policy_is_written_loads_with_the_admins_files_and_goes_when_deleted() {
        let (_d, files) = node();
        let p = tp("site", 1, key_spec(pem()));
        let out = files.sync(&Guard::default(), &[&p], &TrustRoots::new(), &[]).unwrap();
        assert_eq!(out.policies[0].state, TrustPolicyState::Written);
        let frag = files.policy_d.join("kcache-cluster-trustpolicy-site.yaml");
        let text = fs::read_to_string(&frag).unwrap();
        assert!(
            text.starts_with("# kcache-controller: TrustPolicy site generation 1."),
            "{text}"
        );
        let policy = Policy::load(&files.policy, Some(&files.policy_d)).unwrap();
        let names: Vec<&str> = policy.rules.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["admin", "caches"]);
        assert_eq!(files.expected_generation().unwrap(), policy.generation);

        // Again: nothing changes on disk.
        assert_eq!(
            files
                .sync(&Guard::default(), &[&p], &TrustRoots::new(), &[])
                .unwrap()
                .changed,
            0
        );

        // Deleted: our fragment and its key directory go; the admin's file stays.
        let out = files.sync(&Guard::default(), &[], &TrustRoots::new(), &[]).unwrap();
        assert!(out.changed >= 1);
        let mut left: Vec<String> = fs::read_dir(&files.policy_d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["10-admin.yaml", MATERIAL_DIR]);
        assert_eq!(fs::read_dir(files.policy_d.join(MATERIAL_DIR)).unwrap().count(), 0);
    }

    #[test]
    fn an_invalid_generation_keeps_the_last_good_fragment_and_its_key() {
        let (_d, files) = node();
        let good = tp("site", 1, key_spec(pem()));
        files
            .sync(&Guard::default(), &[&good], &TrustRoots::new(), &[])
            .unwrap();
        let frag = files.policy_d.join("kcache-cluster-trustpolicy-site.yaml");
        let before = fs::read_to_string(&frag).unwrap();
        let gen_before = files.expected_generation().unwrap();

        let mut spec = key_spec(pem());
        spec.rules[0].authorities.push(PolicyAuthority {
            key: None,
            keyless: Some(KeylessAuthority {
                issuer: Some("https://issuer.example".into()),
                subject_regexp: Some("https://github.com/myorg/.*".into()),
                ..KeylessAuthority::default()
            }),
        });
        let bad = tp("site", 2, spec);
        let out = files.sync(&Guard::default(), &[&bad], &TrustRoots::new(), &[]).unwrap();
        assert_eq!(out.policies[0].state, TrustPolicyState::Invalid);
        let msg = out.policies[0].message.as_deref().unwrap();
        assert!(
            msg.contains("spec.rules[0].authorities[1].keyless.subjectRegExp: bad identity matcher"),
            "{msg}"
        );
        assert_eq!(fs::read_to_string(&frag).unwrap(), before);
        assert_eq!(
            files.expected_generation().unwrap(),
            gen_before,
            "the old key is still there"
        );
    }

    #[test]
    fn a_policy_lowering_the_mode_is_refused_unless_the_node_allows_it() {
        let (_d, files) = node();
        let mut spec = key_spec(pem());
        spec.mode = Some(crate::crd::PolicyMode::Warn);
        let p = tp("lax", 1, spec);
        let out = files.sync(&Guard::default(), &[&p], &TrustRoots::new(), &[]).unwrap();
        assert_eq!(out.policies[0].state, TrustPolicyState::Refused);
        assert!(!files.policy_d.join("kcache-cluster-trustpolicy-lax.yaml").exists());
        let lax = Guard {
            allow_lower_mode: true,
            ..Guard::default()
        };
        let out = files.sync(&lax, &[&p], &TrustRoots::new(), &[]).unwrap();
        assert_eq!(out.policies[0].state, TrustPolicyState::Written);
    }

    #[test]
    fn caches_are_approved_pinned_to_the_resolved_digest_and_removed_when_gone() {
        let (_d, files) = node();
        fs::create_dir_all(&files.caches_d).unwrap();
        fs::write(
            files.caches_d.join("admin.yaml"),
            "- name: mine\n  image: r.example/c:1\n",
        )
        .unwrap();
        let d = format!("sha256:{}", "c".repeat(64));
        let want = vec![
            (
                Some("ml".to_string()),
                "llama".to_string(),
                "r.example/caches/llama:v1".to_string(),
                Some(d.clone()),
            ),
            (None, "shared".to_string(), format!("r.example/caches/shared@{d}"), None),
        ];
        files.sync(&Guard::default(), &[], &TrustRoots::new(), &want).unwrap();
        let (approved, problems) = kcache_core::cache::approved::load_dir_lenient(&files.caches_d);
        assert!(problems.is_empty(), "{problems:?}");
        let mut got: Vec<(Option<String>, String, String)> =
            approved.into_iter().map(|a| (a.namespace, a.name, a.image)).collect();
        got.sort();
        assert_eq!(
            got,
            [
                (None, "mine".into(), "r.example/c:1".into()),
                (None, "shared".into(), format!("r.example/caches/shared@{d}")),
                (
                    Some("ml".into()),
                    "llama".into(),
                    format!("r.example/caches/llama:v1@{d}")
                ),
            ]
        );
        files.sync(&Guard::default(), &[], &TrustRoots::new(), &[]).unwrap();
        let left: Vec<String> = fs::read_dir(&files.caches_d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left, ["admin.yaml"]);
    }
}

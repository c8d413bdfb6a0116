//! packaging/kubernetes: the CRDs are what the binary generates (drift), and every manifest is
//! the k8s-openapi type it claims to be, field for field (a typo'd or misplaced field would be
//! dropped by the typed parse, so the round trip must give back the same document).

use std::path::{Path, PathBuf};

use k8s_openapi::{
    api::{
        apps::v1::{DaemonSet, Deployment},
        core::v1::{Namespace, ServiceAccount},
        rbac::v1::{ClusterRole, ClusterRoleBinding},
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use serde_yaml::Value;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/kubernetes")
}

fn docs(file: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(dir().join(file)).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

/// Parses `doc` as `T` and checks nothing was lost on the way.
fn typed<T: DeserializeOwned + Serialize>(doc: &Value) -> T {
    let t: T = serde_yaml::from_value(doc.clone()).unwrap_or_else(|e| panic!("{e}: {doc:?}"));
    let back = serde_yaml::to_value(&t).unwrap();
    let want: serde_json::Value = serde_json::to_value(doc).unwrap();
    let got: serde_json::Value = serde_json::to_value(&back).unwrap();
    assert_eq!(
        strip_nulls(got),
        strip_nulls(want),
        "fields lost parsing {}",
        std::any::type_name::<T>()
    );
    t
}

fn strip_nulls(v: serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::Object(m) => m
            .into_iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| (k, strip_nulls(v)))
            .collect(),
        serde_json::Value::Array(a) => a.into_iter().map(strip_nulls).collect(),
        v => v,
    }
}

#[test]
fn committed_crds_are_what_kcache_controller_crd_prints() {
    let committed = std::fs::read_to_string(dir().join("crds.yaml")).unwrap();
    let generated = kcache_controller::crd::yaml().unwrap();
    assert!(
        committed == generated,
        "packaging/kubernetes/crds.yaml is stale: regenerate it with\n  cargo run -p kcache-controller -- crd > packaging/kubernetes/crds.yaml"
    );
    // kubectl reads YAML 1.1, where a bare `off` is `false`: every such enum value is quoted.
    for (i, line) in committed.lines().enumerate() {
        let value = line
            .trim_start()
            .trim_start_matches("- ")
            .rsplit(": ")
            .next()
            .unwrap_or("");
        assert!(
            !["off", "on", "yes", "no", "y", "n"].contains(&value),
            "crds.yaml:{}: bare YAML 1.1 boolean {value:?}",
            i + 1
        );
    }
    let crds: Vec<CustomResourceDefinition> = docs("crds.yaml").iter().map(typed).collect();
    let names: Vec<&str> = crds.iter().map(|c| c.spec.names.kind.as_str()).collect();
    assert_eq!(
        names,
        [
            "TrustPolicy",
            "TrustRoot",
            "KernelCache",
            "ClusterKernelCache",
            "KernelCacheNode"
        ]
    );
    for c in &crds {
        assert_eq!(c.spec.group, "kcache.dev");
        assert!(c
            .spec
            .versions
            .iter()
            .all(|v| v.subresources.as_ref().is_some_and(|s| s.status.is_some())));
    }
}

#[test]
fn manifests_parse_as_the_types_they_claim() {
    let kust = &docs("kustomization.yaml")[0];
    let resources: Vec<String> = kust["resources"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .collect();
    let mut kinds = Vec::new();
    for file in &resources {
        assert!(dir().join(file).is_file(), "kustomization names a missing {file}");
        for doc in docs(file) {
            let kind = doc["kind"].as_str().unwrap().to_string();
            match kind.as_str() {
                "CustomResourceDefinition" => drop(typed::<CustomResourceDefinition>(&doc)),
                "Namespace" => drop(typed::<Namespace>(&doc)),
                "ServiceAccount" => drop(typed::<ServiceAccount>(&doc)),
                "ClusterRole" => drop(typed::<ClusterRole>(&doc)),
                "ClusterRoleBinding" => drop(typed::<ClusterRoleBinding>(&doc)),
                "Deployment" => drop(typed::<Deployment>(&doc)),
                "DaemonSet" => drop(typed::<DaemonSet>(&doc)),
                other => panic!("{file}: unexpected kind {other}"),
            }
            kinds.push(kind);
        }
    }
    for want in [
        "Deployment",
        "DaemonSet",
        "ClusterRole",
        "ClusterRoleBinding",
        "ServiceAccount",
        "Namespace",
    ] {
        assert!(kinds.iter().any(|k| k == want), "no {want} in {resources:?}");
    }
}

#[test]
fn the_agent_may_write_only_kernelcachenodes_and_mounts_only_what_it_needs() {
    let roles: Vec<ClusterRole> = docs("rbac.yaml")
        .iter()
        .filter(|d| d["kind"] == "ClusterRole")
        .map(typed)
        .collect();
    let agent = roles
        .iter()
        .find(|r| r.metadata.name.as_deref() == Some("kcache-node-agent"))
        .unwrap();
    for rule in agent.rules.as_deref().unwrap() {
        let writes = rule
            .verbs
            .iter()
            .any(|v| !["get", "list", "watch"].contains(&v.as_str()));
        if writes {
            let res = rule.resources.as_deref().unwrap();
            assert!(
                res.iter()
                    .all(|r| r == "kernelcachenodes" || r == "kernelcachenodes/status"),
                "the agent writes {res:?}"
            );
            assert!(!rule.verbs.iter().any(|v| v == "delete" || v == "*"));
        }
        assert_eq!(rule.api_groups.as_deref(), Some(&["kcache.dev".to_string()][..]));
    }

    let ds: DaemonSet = typed(&docs("daemonset.yaml")[0]);
    let pod = ds.spec.unwrap().template.spec.unwrap();
    let paths: Vec<String> = pod
        .volumes
        .unwrap()
        .iter()
        .map(|v| v.host_path.as_ref().unwrap().path.clone())
        .collect();
    assert_eq!(paths, ["/etc/kcache", "/run/kcache", "/var/lib/kcache/caches"]);
    assert!(pod.host_network.is_none() && pod.host_pid.is_none());
    let c = &pod.containers[0];
    let sc = c.security_context.as_ref().unwrap();
    assert_eq!(sc.privileged, None);
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(
        sc.capabilities.as_ref().unwrap().drop.as_deref(),
        Some(&["ALL".to_string()][..])
    );
    let store = c
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .find(|m| m.name == "cache-store")
        .unwrap();
    assert_eq!(store.read_only, Some(true));
}

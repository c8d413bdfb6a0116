//! Reconcile paths against a mocked API server (tower-test), as kube-rs/controller-rs tests
//! them: each scenario states the exact requests the reconcile must make, with their bodies,
//! and the answers; a request too many, too few or different fails the test. The mock stands
//! in for the API server only; the registry (tag resolution) is the real one on loopback, and
//! the same paths run against the real apiextensions-apiserver in tests/e2e.rs.

use std::{sync::Arc, time::Duration};

use futures_util::FutureExt;
use http::{Request, Response};
use kcache_controller::{
    crd::{
        ClusterKernelCache, ClusterKernelCacheSpec, ConditionStatus, KernelCache, KernelCacheNode, KernelCacheNodeSpec,
        KernelCacheNodeStatus, KernelCacheSpec, KernelCacheStatus, KeyAuthority, KeylessAuthority, NodeCache,
        NodeTrustPolicy, PolicyAuthority, PolicyRule, TrustPolicy, TrustPolicySpec, TrustPolicyState,
        TrustPolicyStatus, TrustRoot, TrustRootSpec, TrustRootStatus,
    },
    metrics::Metrics,
    run::{self, reconcile_cache, reconcile_policy, reconcile_root, Context},
    Error,
};
use kube::{
    client::Body,
    runtime::{reflector, watcher},
    Client, Resource,
};
use serde_json::Value;

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// One expected request: method, path and query, and the answer (status, body).
struct Expect {
    method: &'static str,
    uri: String,
    respond: (u16, Value),
}

/// Serves `expected` in order, returning the request bodies; then asserts nothing more comes.
async fn serve(mut handle: Handle, expected: Vec<Expect>) -> Vec<Value> {
    let mut bodies = Vec::new();
    for e in expected {
        let (req, send) = tokio::time::timeout(Duration::from_secs(2), handle.next_request())
            .await
            .unwrap_or_else(|_| panic!("no request; expected {} {}", e.method, e.uri))
            .expect("service dropped");
        assert_eq!(req.method().as_str(), e.method, "method of {}", req.uri());
        assert_eq!(req.uri().to_string(), e.uri);
        let body = req.into_body().collect_bytes().await.unwrap();
        bodies.push(if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&body).unwrap()
        });
        send.send_response(
            Response::builder()
                .status(e.respond.0)
                .body(Body::from(serde_json::to_vec(&e.respond.1).unwrap()))
                .unwrap(),
        );
    }
    // Nothing more: either silence or every client dropped.
    if let Ok(Some((req, _))) = tokio::time::timeout(Duration::from_millis(200), handle.next_request()).await {
        panic!("an unexpected extra request: {} {}", req.method(), req.uri());
    }
    bodies
}

fn mock() -> (Client, Handle) {
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (Client::new(svc, "default"), handle)
}

fn context(
    client: Client,
    nodes: Vec<KernelCacheNode>,
    registry: Option<Arc<kcache_core::registry::Client>>,
) -> Arc<Context> {
    context_listing(client, nodes, registry, true)
}

/// A context whose node store got `nodes` as the watcher delivers a first list; `list_done`:
/// whether the list's end has come (the store is synced).
fn context_listing(
    client: Client,
    nodes: Vec<KernelCacheNode>,
    registry: Option<Arc<kcache_core::registry::Client>>,
    list_done: bool,
) -> Arc<Context> {
    let (node_store, mut w) = reflector::store::<KernelCacheNode>();
    w.apply_watcher_event(&watcher::Event::Init);
    for n in nodes {
        w.apply_watcher_event(&watcher::Event::InitApply(n));
    }
    if list_done {
        w.apply_watcher_event(&watcher::Event::InitDone);
    }
    let (root_store, _) = reflector::store::<TrustRoot>();
    let ctx = Arc::new(Context::new(
        client,
        run::Config::default(),
        node_store,
        root_store,
        registry,
        Arc::new(Metrics::default()),
    ));
    assert_eq!(ctx.sync_nodes().now_or_never().is_some(), list_done);
    ctx
}

fn not_found() -> (u16, Value) {
    (
        404,
        serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "the server could not find the requested resource"}),
    )
}

fn key_pem() -> String {
    kcache_core::signing::PrivateKey::generate_p256().public_key().to_pem()
}

fn trust_policy(name: &str, generation: i64, rules: Vec<PolicyRule>) -> TrustPolicy {
    let mut tp = TrustPolicy::new(
        name,
        TrustPolicySpec {
            rules,
            ..TrustPolicySpec::default()
        },
    );
    tp.meta_mut().generation = Some(generation);
    tp
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn node(name: &str, policies: Vec<NodeTrustPolicy>, caches: Vec<NodeCache>) -> KernelCacheNode {
    let mut n = KernelCacheNode::new(name, KernelCacheNodeSpec { node_name: name.into() });
    n.status = Some(KernelCacheNodeStatus {
        trust_policies: policies,
        caches,
        last_update: Some(now()),
        ..KernelCacheNodeStatus::default()
    });
    n
}

fn enforced(name: &str, generation: i64, state: TrustPolicyState) -> NodeTrustPolicy {
    NodeTrustPolicy {
        name: name.into(),
        generation,
        state,
        message: None,
    }
}

fn status_of(body: &Value) -> Value {
    assert_eq!(body["apiVersion"], "kcache.dev/v1alpha1");
    body["status"].clone()
}

#[tokio::test]
async fn valid_trust_policy_is_applied_once_with_node_counts_and_an_event_that_404s() {
    let (client, handle) = mock();
    let rule = PolicyRule {
        name: "caches".into(),
        images: vec!["registry.example.com/caches/*".into()],
        authorities: vec![PolicyAuthority {
            key: Some(KeyAuthority { data: key_pem() }),
            keyless: None,
        }],
        ..PolicyRule::default()
    };
    let tp = trust_policy("site", 3, vec![rule]);
    let nodes = vec![
        node("a", vec![enforced("site", 3, TrustPolicyState::Enforced)], vec![]),
        node("b", vec![enforced("site", 3, TrustPolicyState::Refused)], vec![]),
        node("c", vec![enforced("site", 2, TrustPolicyState::Enforced)], vec![]),
    ];
    let ctx = context(client, nodes, None);
    let server = tokio::spawn(serve(
        handle,
        vec![
            Expect {
                method: "PATCH",
                uri: "/apis/kcache.dev/v1alpha1/trustpolicies/site/status?&force=true&fieldManager=kcache-controller"
                    .into(),
                respond: (200, serde_json::to_value(&tp).unwrap()),
            },
            Expect {
                method: "POST",
                uri: "/apis/events.k8s.io/v1/namespaces/default/events?".into(),
                respond: not_found(),
            },
        ],
    ));
    reconcile_policy(Arc::new(tp.clone()), ctx.clone()).await.unwrap();
    let bodies = server.await.unwrap();
    let status: TrustPolicyStatus = serde_json::from_value(status_of(&bodies[0])).unwrap();
    assert_eq!(status.observed_generation, Some(3));
    assert_eq!((status.nodes_enforcing, status.nodes_refusing), (1, 1));
    assert_eq!(status.conditions.len(), 1);
    assert_eq!(status.conditions[0].type_, "Valid");
    assert_eq!(status.conditions[0].status, ConditionStatus::True);
    assert_eq!(bodies[1]["reason"], "Loaded");

    // The same policy with that status already in place: no request at all (and the events
    // API, gone, is not asked again).
    let (client, handle) = mock();
    let ctx2 = context(
        client,
        vec![
            node("a", vec![enforced("site", 3, TrustPolicyState::Enforced)], vec![]),
            node("b", vec![enforced("site", 3, TrustPolicyState::Refused)], vec![]),
        ],
        None,
    );
    let mut settled = tp;
    settled.status = Some(status);
    let server = tokio::spawn(serve(handle, vec![]));
    reconcile_policy(Arc::new(settled), ctx2).await.unwrap();
    server.await.unwrap();
}

#[tokio::test]
async fn invalid_trust_policy_reports_every_problem_in_the_loaders_words_naming_spec_fields() {
    let (client, handle) = mock();
    let rules = vec![
        PolicyRule {
            name: "ci".into(),
            images: vec!["registry.example.com/**/x**".into()],
            authorities: vec![PolicyAuthority {
                key: None,
                keyless: Some(KeylessAuthority {
                    issuer: Some("https://token.actions.githubusercontent.com".into()),
                    subject_regexp: Some("https://github.com/myorg/.*".into()),
                    ..KeylessAuthority::default()
                }),
            }],
            ..PolicyRule::default()
        },
        PolicyRule {
            name: "keys".into(),
            images: vec!["registry.example.com/keys/*".into()],
            authorities: vec![PolicyAuthority {
                key: Some(KeyAuthority {
                    data: "not a pem".into(),
                }),
                keyless: None,
            }],
            ..PolicyRule::default()
        },
    ];
    let tp = trust_policy("broken", 1, rules);
    let ctx = context(client, vec![], None);
    let server = tokio::spawn(serve(
        handle,
        vec![
            Expect {
                method: "PATCH",
                uri: "/apis/kcache.dev/v1alpha1/trustpolicies/broken/status?&force=true&fieldManager=kcache-controller"
                    .into(),
                respond: (200, serde_json::to_value(&tp).unwrap()),
            },
            Expect {
                method: "POST",
                uri: "/apis/events.k8s.io/v1/namespaces/default/events?".into(),
                respond: not_found(),
            },
        ],
    ));
    reconcile_policy(Arc::new(tp), ctx).await.unwrap();
    let bodies = server.await.unwrap();
    let status: TrustPolicyStatus = serde_json::from_value(status_of(&bodies[0])).unwrap();
    let valid = &status.conditions[0];
    assert_eq!(valid.status, ConditionStatus::False);
    assert_eq!(valid.reason, "Invalid");
    let msg = &valid.message;
    assert!(
        msg.starts_with("3 problem(s); nodes keep their last good policy:"),
        "{msg}"
    );
    assert!(msg.contains("spec.rules[0].images[0]: bad image pattern"), "{msg}");
    assert!(
        msg.contains("spec.rules[0].authorities[0].keyless.subjectRegExp: bad identity matcher"),
        "{msg}"
    );
    assert!(
        msg.contains("spec.rules[1].authorities[0].key.data: bad public key in"),
        "{msg}"
    );
    assert!(!msg.contains("/tmp"), "scratch paths leak: {msg}");
    assert_eq!(bodies[1]["type"], "Warning");
}

fn cache_node(name: &str, digest: &str, state: &str) -> KernelCacheNode {
    node(
        name,
        vec![],
        vec![NodeCache {
            name: "llama".into(),
            namespace: Some("ml".into()),
            image: "x".into(),
            digest: (state == "ready").then(|| digest.into()),
            state: state.into(),
            reason: (state == "denied").then(|| "no signature matches rule caches".into()),
            compatible_gpus: vec!["GPU-0".into()],
            ..NodeCache::default()
        }],
    )
}

/// `ml/llama`, pinned to `digest`, at generation 1.
fn pinned_cache(digest: &str) -> KernelCache {
    let mut kc = KernelCache::new(
        "llama",
        KernelCacheSpec {
            image: format!("registry.example.com/caches/llama@{digest}"),
        },
    );
    kc.meta_mut().namespace = Some("ml".into());
    kc.meta_mut().generation = Some(1);
    kc
}

/// A pinned cache's first status: one apply, then the "Resolved" event (no Events API: 404).
fn pinned_cache_applied(kc: &KernelCache) -> Vec<Expect> {
    vec![
        Expect {
            method: "PATCH",
            uri: "/apis/kcache.dev/v1alpha1/namespaces/ml/kernelcaches/llama/status?&force=true&fieldManager=kcache-controller".into(),
            respond: (200, serde_json::to_value(kc).unwrap()),
        },
        Expect {
            method: "POST",
            uri: "/apis/events.k8s.io/v1/namespaces/ml/events?".into(),
            respond: not_found(),
        },
    ]
}

#[tokio::test]
async fn digest_pinned_kernel_cache_counts_the_nodes_holding_that_digest() {
    let digest = format!("sha256:{}", "a".repeat(64));
    let (client, handle) = mock();
    let kc = pinned_cache(&digest);
    let nodes = vec![
        cache_node("a", &digest, "ready"),
        cache_node("b", &format!("sha256:{}", "b".repeat(64)), "ready"),
        cache_node("c", &digest, "denied"),
    ];
    let ctx = context(client, nodes, None);
    let server = tokio::spawn(serve(handle, pinned_cache_applied(&kc)));
    reconcile_cache(Arc::new(kc), ctx).await.unwrap();
    let bodies = server.await.unwrap();
    let status: KernelCacheStatus = serde_json::from_value(status_of(&bodies[0])).unwrap();
    assert_eq!(status.resolved_digest.as_deref(), Some(digest.as_str()));
    assert_eq!(status.resolved_at, None, "a pinned digest is never resolved");
    let n = status.nodes;
    assert_eq!(
        (n.reporting, n.ready, n.compatible, n.pending, n.failed),
        (3, 1, 1, 1, 1)
    );
    let reasons: Vec<(&str, ConditionStatus, &str)> = status
        .conditions
        .iter()
        .map(|c| (c.type_.as_str(), c.status, c.reason.as_str()))
        .collect();
    assert_eq!(
        reasons,
        [
            ("Resolved", ConditionStatus::True, "Pinned"),
            ("Ready", ConditionStatus::False, "NodesFailed"),
            ("Degraded", ConditionStatus::True, "NodesFailed")
        ]
    );
    assert!(status.conditions[2]
        .message
        .contains("c: no signature matches rule caches"));
}

#[tokio::test]
async fn before_the_node_list_is_in_a_cache_keeps_its_counts_and_is_not_rewritten() {
    // A controller restarting: the cache's status holds counts from before, the node store has
    // only part of the first list. Counting it would publish wrong (zero) counts to the cluster.
    let digest = format!("sha256:{}", "a".repeat(64));
    let mut kc = pinned_cache(&digest);
    let nodes = || vec![cache_node("a", &digest, "ready"), cache_node("c", &digest, "denied")];
    let (client, handle) = mock();
    let server = tokio::spawn(serve(handle, pinned_cache_applied(&kc)));
    reconcile_cache(Arc::new(kc.clone()), context(client, nodes(), None))
        .await
        .unwrap();
    let before: KernelCacheStatus = serde_json::from_value(status_of(&server.await.unwrap()[0])).unwrap();
    assert_eq!((before.nodes.reporting, before.nodes.ready), (2, 1));
    kc.status = Some(before.clone());

    let (client, handle) = mock();
    let server = tokio::spawn(serve(handle, vec![]));
    let partial = context_listing(client, nodes()[..1].to_vec(), None, false);
    assert!(partial.fleet().is_none(), "no tally before the list is in");
    reconcile_cache(Arc::new(kc), partial).await.unwrap();
    assert!(server.await.unwrap().is_empty(), "the status is left as it was");
}

#[tokio::test]
async fn a_tag_is_resolved_against_the_real_registry_and_a_dead_registry_keeps_the_pin_and_backs_off() {
    let mut reg = kcache_tests::TestRegistry::start();
    let (digest, _) = reg.push_image("caches/llama:v1", "kernel cache bytes").await;
    let registry = Arc::new(
        kcache_core::registry::Client::new(kcache_core::registry::RegistryConfig {
            insecure: vec![reg.host()],
            timeout: Duration::from_secs(2),
            ..Default::default()
        })
        .unwrap(),
    );
    let image = format!("{}/caches/llama:v1", reg.host());
    let mut ckc = ClusterKernelCache::new("llama", ClusterKernelCacheSpec { image: image.clone() });
    ckc.meta_mut().generation = Some(4);

    let (client, handle) = mock();
    let ctx = context(client, vec![], Some(registry.clone()));
    let server = tokio::spawn(serve(
        handle,
        vec![
            Expect {
                method: "PATCH",
                uri: "/apis/kcache.dev/v1alpha1/clusterkernelcaches/llama/status?&force=true&fieldManager=kcache-controller".into(),
                respond: (200, serde_json::to_value(&ckc).unwrap()),
            },
            Expect {
                method: "POST",
                uri: "/apis/events.k8s.io/v1/namespaces/default/events?".into(),
                respond: not_found(),
            },
        ],
    ));
    reconcile_cache(Arc::new(ckc.clone()), ctx).await.unwrap();
    let bodies = server.await.unwrap();
    let status: KernelCacheStatus = serde_json::from_value(status_of(&bodies[0])).unwrap();
    assert_eq!(status.resolved_digest.as_deref(), Some(digest.as_str()));
    assert!(status.resolved_at.is_some());
    assert_eq!(status.conditions[0].reason, "Resolved");
    assert_eq!(status.nodes.reporting, 0);
    assert_eq!(status.conditions[1].reason, "NoNodesReporting");

    // Due again (resolved long ago), with the registry down: the old pin stays, the condition
    // says why, and the reconcile fails so error_policy backs off.
    reg.stop();
    let mut old = status.clone();
    old.resolved_at = Some("2020-01-01T00:00:00Z".into());
    ckc.status = Some(old);
    let (client, handle) = mock();
    let ctx = context(client, vec![], Some(registry));
    let server = tokio::spawn(serve(
        handle,
        vec![Expect {
            method: "PATCH",
            uri:
                "/apis/kcache.dev/v1alpha1/clusterkernelcaches/llama/status?&force=true&fieldManager=kcache-controller"
                    .into(),
            respond: (200, serde_json::to_value(&ckc).unwrap()),
        }],
    ));
    let err = reconcile_cache(Arc::new(ckc.clone()), ctx.clone()).await.unwrap_err();
    assert!(matches!(err, Error::Resolve { .. }), "{err:?}");
    assert_eq!(err.metric_label(), "resolve");
    let bodies = server.await.unwrap();
    let status: KernelCacheStatus = serde_json::from_value(status_of(&bodies[0])).unwrap();
    assert_eq!(status.resolved_digest.as_deref(), Some(digest.as_str()));
    assert_eq!(status.conditions[0].status, ConditionStatus::False);
    assert_eq!(status.conditions[0].reason, "ResolveFailed");
    assert!(
        status.conditions[0].message.contains("keeping the previous digest"),
        "{}",
        status.conditions[0].message
    );
    let action = run::error_policy(Arc::new(ckc), &err, ctx.clone());
    assert_eq!(
        action,
        kube::runtime::controller::Action::requeue(Duration::from_secs(15))
    );
    assert!(
        ctx.metrics
            .render()
            .contains("kcache_controller_reconcile_failures_total{kind=\"ClusterKernelCache\",error=\"resolve\"} 1"),
        "{}",
        ctx.metrics.render()
    );
}

fn trust_root(name: &str, generation: i64, json: String) -> TrustRoot {
    let mut r = TrustRoot::new(name, TrustRootSpec { trusted_root: json });
    r.meta_mut().generation = Some(generation);
    r
}

fn root_patch(name: &str, respond: &TrustRoot) -> Vec<Expect> {
    vec![
        Expect {
            method: "PATCH",
            uri: format!(
                "/apis/kcache.dev/v1alpha1/trustroots/{name}/status?&force=true&fieldManager=kcache-controller"
            ),
            respond: (200, serde_json::to_value(respond).unwrap()),
        },
        Expect {
            method: "POST",
            uri: "/apis/events.k8s.io/v1/namespaces/default/events?".into(),
            respond: not_found(),
        },
    ]
}

#[tokio::test]
async fn trust_root_status_is_valid_with_what_it_holds_or_invalid_with_the_load_error() {
    // The public-good trusted root sigstore-python 4.5.1 ships: loads.
    let good = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/trusted-roots/sigstore-python-4.5.1/public-good/trusted_root.json"
    ))
    .unwrap();
    let root = trust_root("public-good", 2, good.clone());
    let (client, handle) = mock();
    let server = tokio::spawn(serve(handle, root_patch("public-good", &root)));
    reconcile_root(Arc::new(root.clone()), context(client, vec![], None))
        .await
        .unwrap();
    let bodies = server.await.unwrap();
    assert_eq!(bodies[0]["kind"], "TrustRoot");
    let status: TrustRootStatus = serde_json::from_value(status_of(&bodies[0])).unwrap();
    assert_eq!(status.observed_generation, Some(2));
    let valid = &status.conditions[0];
    assert_eq!((valid.type_.as_str(), valid.status), ("Valid", ConditionStatus::True));
    assert_eq!(valid.observed_generation, Some(2));
    assert!(valid.message.starts_with("trusted root loads: "), "{}", valid.message);
    assert!(!valid.message.contains(" 0 certificate"), "{}", valid.message);
    assert_eq!(bodies[1]["reason"], "Loaded");

    // Settled: no request.
    let mut settled = root;
    settled.status = Some(status);
    let (client, handle) = mock();
    let server = tokio::spawn(serve(handle, vec![]));
    reconcile_root(Arc::new(settled), context(client, vec![], None))
        .await
        .unwrap();
    server.await.unwrap();

    // A broken document (a CA certificate that is not base64): Valid=False naming the field,
    // in the loader's words, at the new generation, with a Warning event.
    let mut doc: Value = serde_json::from_str(&good).unwrap();
    doc["certificateAuthorities"][0]["certChain"]["certificates"][0]["rawBytes"] = "%%%".into();
    let broken = trust_root("public-good", 3, doc.to_string());
    let (client, handle) = mock();
    let server = tokio::spawn(serve(handle, root_patch("public-good", &broken)));
    reconcile_root(Arc::new(broken), context(client, vec![], None))
        .await
        .unwrap();
    let bodies = server.await.unwrap();
    let status: TrustRootStatus = serde_json::from_value(status_of(&bodies[0])).unwrap();
    assert_eq!(status.observed_generation, Some(3));
    let valid = &status.conditions[0];
    assert_eq!(valid.status, ConditionStatus::False);
    assert_eq!(valid.reason, "Invalid");
    assert!(valid.message.starts_with("spec.trustedRoot: "), "{}", valid.message);
    assert!(valid.message.contains("certificateAuthorities"), "{}", valid.message);
    assert_eq!(bodies[1]["type"], "Warning");

    // Not JSON at all.
    let (client, handle) = mock();
    let junk = trust_root("junk", 1, "not json".into());
    let server = tokio::spawn(serve(handle, root_patch("junk", &junk)));
    reconcile_root(Arc::new(junk), context(client, vec![], None))
        .await
        .unwrap();
    let bodies = server.await.unwrap();
    let status: TrustRootStatus = serde_json::from_value(status_of(&bodies[0])).unwrap();
    assert_eq!(status.conditions[0].status, ConditionStatus::False);
}

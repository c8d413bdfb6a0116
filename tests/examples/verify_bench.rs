//! Bench fixture for bench/run: a real docker-registry on loopback with a kcache-signed image.
//! Prints one JSON line (registry, image, policy, and the in-process warm verdict-cache hit
//! timing), then keeps the registry up until stdin closes, so the harness can time
//! `kcache verify` (cold, process start included) against it.
//!
//! For the cosign peer rows it also pushes `bench/v2:v1` (a `.sig` only) and `bench/v3:v1` (a
//! cosign 3 DSSE bundle only, through the referrers tag), writes the public key and a wrong one,
//! and reports what a cold verification spends before its first request (client, trust root).

use std::{io::Read, sync::Arc, time::Instant};

use kcache_core::{cosign::sign, policy::Policy, signing::PrivateKey, verdict::CacheConfig, verifier::Verifier};
use kcache_tests::TestRegistry;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let reg = TestRegistry::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let client = reg.client();
    let r = reg.reference("bench/app:v1");
    reg.push_image("bench/app:v1", "bench layer").await;
    let key = PrivateKey::generate_p256();
    sign::sign_and_push(&client, &key, &r, true).await.expect("sign");
    std::fs::write(dir.path().join("bench.pub"), key.public_key().to_pem()).expect("pub");
    let policy_path = dir.path().join("policy.yaml");
    std::fs::write(
        &policy_path,
        format!(
            "rules:\n  - name: bench\n    images: [\"{}/bench/*\"]\n    authorities:\n      - key: {{path: bench.pub}}\n    transparencyLog: off\n",
            reg.host()
        ),
    )
    .expect("policy");
    let policy = Policy::load(&policy_path, None).expect("policy loads");

    // cosign peer images: one `.sig` only, one DSSE bundle only.
    let r2 = reg.reference("bench/v2:v1");
    reg.push_image("bench/v2:v1", "bench v2 layer").await;
    sign::sign_and_push(&client, &key, &r2, false).await.expect("sign v2");
    let r3 = reg.reference("bench/v3:v1");
    let (d3, m3) = reg.push_image("bench/v3:v1", "bench v3 layer").await;
    let created = "2026-01-01T00:00:00Z";
    let b = sign::sign_v3(&key, &d3, sign::OCI_MANIFEST, m3.len() as u64, created).expect("sign v3");
    client.push_blob(&r3, &b.bundle.bytes).await.expect("bundle");
    client.push_blob(&r3, &b.config.bytes).await.expect("config");
    client
        .push_manifest(&r3, b.manifest.digest.as_str(), sign::OCI_MANIFEST, &b.manifest.bytes)
        .await
        .expect("referrer");
    let index = sign::referrers_tag_index(None, &b.manifest).expect("index");
    client
        .push_manifest(&r3, &d3.tag_prefix(), sign::OCI_INDEX, &index)
        .await
        .expect("referrers tag");
    let wrong = dir.path().join("wrong.pub");
    std::fs::write(&wrong, PrivateKey::generate_p256().public_key().to_pem()).expect("wrong pub");

    // What a cold verification pays before its first request.
    let t = Instant::now();
    let _ = reg.client();
    let client_new_ns = t.elapsed().as_nanos() as f64;
    let t = Instant::now();
    let _ = kcache_core::sigstore::TrustedRoot::public_good();
    let public_good_ns = t.elapsed().as_nanos() as f64;

    // Warm verdict-cache hit, in process: one miss, then timed hits of the same image.
    let verifier = Verifier::with_cache(client.clone(), CacheConfig::default());
    let resolved = client.resolve(&r).await.expect("resolve").digest;
    assert!(
        verifier.verify_digest(&policy, &r, &resolved).await.permits(),
        "bench image verifies"
    );
    let mut hits_ns = Vec::new();
    for _ in 0..200 {
        let n = 1000;
        let t = Instant::now();
        for _ in 0..n {
            let v = verifier.verify_digest(&policy, &r, &resolved).await;
            assert!(v.cached);
        }
        hits_ns.push(t.elapsed().as_nanos() as f64 / n as f64);
    }
    // In-process cold verification (no cache): registry round trips + crypto, no process start.
    let cold = Arc::new(Verifier::new(client.clone()));
    let mut cold_ns = Vec::new();
    for _ in 0..50 {
        let t = Instant::now();
        assert!(cold.verify_digest(&policy, &r, &resolved).await.permits());
        cold_ns.push(t.elapsed().as_nanos() as f64);
    }
    println!(
        "{}",
        serde_json::json!({
            "registry": reg.host(),
            "image": format!("{}/bench/app:v1", reg.host()),
            "policy": policy_path,
            "image_v2": format!("{}/bench/v2:v1", reg.host()),
            "image_v3": format!("{}/bench/v3:v1", reg.host()),
            "public_key": dir.path().join("bench.pub"),
            "wrong_key": wrong,
            "client_new_ns": client_new_ns,
            "public_good_ns": public_good_ns,
            "cache_hit_ns": hits_ns,
            "in_process_cold_ns": cold_ns,
        })
    );
    // Keep the registry up while the harness times the CLI.
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
}

use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;
use crate::digest::Digest;

/// A clock tests move by hand.
struct ManualClock {
    start: Instant,
    offset: Mutex<Duration>,
}

impl ManualClock {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            start: Instant::now(),
            offset: Mutex::new(Duration::ZERO),
        })
    }

    fn advance(&self, by: Duration) {
        *self.offset.lock().unwrap() += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.start + *self.offset.lock().unwrap()
    }
}

fn is_allowed(v: &bool) -> bool {
    *v
}

fn config(capacity: usize) -> CacheConfig {
    CacheConfig {
        positive_ttl: Duration::from_secs(60),
        negative_ttl: Duration::from_secs(5),
        capacity,
    }
}

fn cache_with_clock(capacity: usize) -> (VerdictCache<&'static str, bool>, Arc<ManualClock>) {
    let clock = ManualClock::new();
    (
        VerdictCache::with_clock(config(capacity), is_allowed, clock.clone()),
        clock,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_callers_share_one_verification() {
    let cache = Arc::new(VerdictCache::<String, bool>::new(config(16), is_allowed));
    let runs = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let (cache, runs) = (cache.clone(), runs.clone());
            tokio::spawn(async move {
                cache
                    .get_or_insert_with("sha256:abc".to_string(), || async move {
                        runs.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        true
                    })
                    .await
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for t in tasks {
        let (v, o) = t.await.unwrap();
        assert!(v);
        outcomes.push(o);
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!(outcomes.iter().filter(|o| **o == Outcome::Miss).count(), 1);
    // Late starters on a loaded machine may find the entry already cached.
    assert_eq!(
        outcomes
            .iter()
            .filter(|o| matches!(o, Outcome::Joined | Outcome::Hit))
            .count(),
        49
    );
    assert_eq!(cache.get(&"sha256:abc".to_string()), Some(true));
    assert_eq!(cache.in_flight(), 0);
    let (_, o) = cache
        .get_or_insert_with("sha256:abc".to_string(), || async { unreachable!() })
        .await;
    assert_eq!(o, Outcome::Hit);
}

#[tokio::test]
async fn entries_expire_after_their_ttl_and_negatives_sooner() {
    let (cache, clock) = cache_with_clock(16);
    assert_eq!(
        cache.get_or_insert_with("good", || async { true }).await,
        (true, Outcome::Miss)
    );
    assert_eq!(
        cache.get_or_insert_with("bad", || async { false }).await,
        (false, Outcome::Miss)
    );
    clock.advance(Duration::from_secs(4));
    assert_eq!((cache.get(&"good"), cache.get(&"bad")), (Some(true), Some(false)));
    assert_eq!(cache.len(), 2);

    clock.advance(Duration::from_secs(2)); // 6s: past the negative TTL only
    assert_eq!((cache.get(&"good"), cache.get(&"bad")), (Some(true), None));
    assert_eq!(
        cache.get_or_insert_with("bad", || async { true }).await,
        (true, Outcome::Miss)
    );

    clock.advance(Duration::from_secs(55)); // 61s: past the first positive entry's TTL
    assert_eq!(cache.get(&"good"), None);
    assert_eq!(cache.get(&"bad"), Some(true), "re-verified at 6s, so still live");
    assert_eq!(cache.len(), 1);
}

#[tokio::test]
async fn zero_ttl_means_not_cached() {
    let cfg = CacheConfig {
        negative_ttl: Duration::ZERO,
        ..config(16)
    };
    let cache = VerdictCache::<&str, bool>::new(cfg, is_allowed);
    cache.get_or_insert_with("bad", || async { false }).await;
    assert_eq!(cache.get(&"bad"), None);
    cache.insert("good", true);
    assert_eq!(cache.get(&"good"), Some(true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancelled_leader_does_not_strand_followers() {
    let cache = Arc::new(VerdictCache::<&str, bool>::new(config(16), is_allowed));
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let leader = {
        let cache = cache.clone();
        tokio::spawn(async move {
            cache
                .get_or_insert_with("k", || async move {
                    let _ = started_tx.send(());
                    std::future::pending::<bool>().await
                })
                .await
        })
    };
    started_rx.await.unwrap();
    let runs = Arc::new(AtomicUsize::new(0));
    let followers: Vec<_> = (0..5)
        .map(|_| {
            let (cache, runs) = (cache.clone(), runs.clone());
            tokio::spawn(async move {
                cache
                    .get_or_insert_with("k", || async move {
                        runs.fetch_add(1, Ordering::SeqCst);
                        true
                    })
                    .await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(runs.load(Ordering::SeqCst), 0, "followers wait while the leader runs");
    leader.abort();
    let mut outcomes = Vec::new();
    for f in followers {
        let (v, o) = tokio::time::timeout(Duration::from_secs(5), f)
            .await
            .expect("follower hung")
            .unwrap();
        assert!(v);
        outcomes.push(o);
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1, "exactly one follower took over");
    assert_eq!(outcomes.iter().filter(|o| **o == Outcome::Miss).count(), 1);
    assert_eq!(cache.get(&"k"), Some(true));
    assert_eq!(cache.in_flight(), 0);
}

#[tokio::test]
async fn an_abandoned_flight_is_forgotten() {
    let cache = VerdictCache::<&str, bool>::new(config(16), is_allowed);
    let pending = cache.get_or_insert_with("k", std::future::pending::<bool>);
    assert!(tokio::time::timeout(Duration::from_millis(10), pending).await.is_err());
    assert_eq!(cache.in_flight(), 0);
    assert_eq!(
        cache.get_or_insert_with("k", || async { false }).await,
        (false, Outcome::Miss)
    );
}

#[tokio::test]
async fn clear_during_a_flight_answers_but_does_not_cache() {
    let cache = Arc::new(VerdictCache::<&str, bool>::new(config(16), is_allowed));
    cache.insert("old", true);
    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
    let task = {
        let cache = cache.clone();
        tokio::spawn(async move {
            cache
                .get_or_insert_with("k", || async move {
                    go_rx.await.unwrap();
                    true
                })
                .await
        })
    };
    tokio::task::yield_now().await;
    while cache.in_flight() == 0 {
        tokio::task::yield_now().await;
    }
    cache.clear();
    assert!(cache.is_empty());
    go_tx.send(()).unwrap();
    assert_eq!(task.await.unwrap(), (true, Outcome::Miss));
    assert_eq!(cache.get(&"k"), None);
}

#[test]
fn a_full_cache_drops_expired_entries_then_the_oldest() {
    let (cache, _) = cache_with_clock(2);
    cache.insert("a", true);
    cache.insert("b", true);
    cache.insert("c", true);
    assert_eq!(
        (cache.get(&"a"), cache.get(&"b"), cache.get(&"c")),
        (None, Some(true), Some(true))
    );
    // Updating an existing key never evicts.
    cache.insert("b", false);
    assert_eq!(cache.len(), 2);

    let (cache, clock) = cache_with_clock(2);
    cache.insert("old-positive", true);
    cache.insert("negative", false);
    clock.advance(Duration::from_secs(10)); // the negative entry expired
    cache.insert("new", true);
    assert_eq!(
        cache.get(&"old-positive"),
        Some(true),
        "expired entries go before the oldest live one"
    );
    assert_eq!(cache.get(&"new"), Some(true));
}

#[test]
fn capacity_zero_caches_nothing() {
    let cache = VerdictCache::<&str, bool>::new(config(0), is_allowed);
    cache.insert("a", true);
    assert!(cache.is_empty());
}

#[test]
fn a_full_cache_finds_every_live_key_by_value() {
    // Speed is measured in the bench harness (bench/run), not asserted here.
    type Key = (String, String, Digest, u64);
    let cache = VerdictCache::<Key, bool>::new(config(4096), is_allowed);
    let digest = Digest::parse(&format!("sha256:{}", "a".repeat(64))).unwrap();
    for i in 0..4096u64 {
        cache.insert(
            (
                "kernel-caches".into(),
                format!("quay.io/gkm/cache-{i}"),
                digest.clone(),
                7,
            ),
            i % 2 == 0,
        );
    }
    assert_eq!(cache.len(), 4096);
    for i in [0u64, 77, 4095] {
        let key: Key = (
            "kernel-caches".into(),
            format!("quay.io/gkm/cache-{i}"),
            digest.clone(),
            7,
        );
        assert_eq!(cache.get(&key), Some(i % 2 == 0));
    }
    let other_generation: Key = ("kernel-caches".into(), "quay.io/gkm/cache-77".into(), digest, 8);
    assert_eq!(cache.get(&other_generation), None);
}

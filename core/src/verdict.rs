//! The verdict cache: remembers verification results for a while, and makes concurrent requests
//! for one key share a single verification.
//!
//! The daemon keys it by `(rule name, repository, manifest digest, policy generation)`, so a
//! policy change (a new [`crate::policy::Policy::generation`]) never reuses an old verdict, and
//! nothing needs invalidating on reload; old entries simply age out.
//!
//! - Positive and negative verdicts live for separate TTLs ([`CacheConfig`]); a zero TTL means
//!   "do not cache". Negative TTLs are usually short, so a signature pushed after a failed pull
//!   is picked up soon.
//! - The size is bounded: when full, expired entries go first, then the oldest insertion.
//! - [`VerdictCache::get`] is the synchronous fast path (one mutex, one hash lookup, one clone).
//! - [`VerdictCache::get_or_insert_with`] is single-flight: one caller (the leader) runs its
//!   factory, the others wait for its result. If the leader is cancelled (its future dropped),
//!   one waiting caller runs its own factory instead; nobody hangs.
//! - Time comes from a [`Clock`], so tests need no sleeping.

use std::{
    collections::HashMap,
    future::Future,
    hash::Hash,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

use tokio::sync::OnceCell;

/// A source of monotonic time.
pub trait Clock: Send + Sync {
    /// Now.
    fn now(&self) -> Instant;
}

/// [`Instant::now`].
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// Sizes and lifetimes.
#[derive(Clone, Debug)]
pub struct CacheConfig {
    /// How long an allowing verdict is reused.
    pub positive_ttl: Duration,
    /// How long a denying verdict is reused; usually much shorter.
    pub negative_ttl: Duration,
    /// Most entries kept; 0 disables caching (single-flight still applies).
    pub capacity: usize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            positive_ttl: Duration::from_secs(3600),
            negative_ttl: Duration::from_secs(30),
            capacity: 4096,
        }
    }
}

/// Where a value came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A live cached entry.
    Hit,
    /// This caller ran the factory.
    Miss,
    /// Another caller's in-flight factory produced it.
    Joined,
}

struct Entry<V> {
    value: V,
    /// `None`: never (a TTL too large for `Instant`).
    expires: Option<Instant>,
    seq: u64,
}

impl<V> Entry<V> {
    fn live(&self, now: Instant) -> bool {
        self.expires.is_none_or(|e| now < e)
    }
}

struct State<K, V> {
    entries: HashMap<K, Entry<V>>,
    flights: HashMap<K, InFlight<V>>,
    seq: u64,
}

/// One key's verification in progress, and how many callers are waiting on it.
struct InFlight<V> {
    cell: Arc<OnceCell<V>>,
    callers: usize,
}

/// A bounded TTL cache with single-flight fill. Share it behind an `Arc`.
pub struct VerdictCache<K, V> {
    config: CacheConfig,
    is_positive: fn(&V) -> bool,
    clock: Arc<dyn Clock>,
    state: Mutex<State<K, V>>,
}

impl<K: Eq + Hash + Clone, V: Clone> VerdictCache<K, V> {
    /// A cache on the system clock. `is_positive` tells allowing verdicts from denying ones.
    pub fn new(config: CacheConfig, is_positive: fn(&V) -> bool) -> Self {
        Self::with_clock(config, is_positive, Arc::new(SystemClock))
    }

    /// A cache on the given clock (for tests).
    pub fn with_clock(config: CacheConfig, is_positive: fn(&V) -> bool, clock: Arc<dyn Clock>) -> Self {
        let state = State {
            entries: HashMap::new(),
            flights: HashMap::new(),
            seq: 0,
        };
        Self {
            config,
            is_positive,
            clock,
            state: Mutex::new(state),
        }
    }

    /// The live cached value, if any. Never waits for an in-flight verification.
    pub fn get(&self, key: &K) -> Option<V> {
        let now = self.clock.now();
        self.lock()
            .entries
            .get(key)
            .filter(|e| e.live(now))
            .map(|e| e.value.clone())
    }

    /// The cached value, or the result of the one in-flight verification for `key`, or, if
    /// there is none, the result of `factory()`, which is then cached. `factory` runs at most
    /// once, and only when this caller becomes the leader. Cancel-safe: dropping this future
    /// while leading hands the work to a waiting caller.
    pub async fn get_or_insert_with<F, Fut>(&self, key: K, factory: F) -> (V, Outcome)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = V>,
    {
        let cell = {
            let now = self.clock.now();
            let mut st = self.lock();
            if let Some(e) = st.entries.get(&key).filter(|e| e.live(now)) {
                return (e.value.clone(), Outcome::Hit);
            }
            let flight = st.flights.entry(key.clone()).or_insert_with(|| InFlight {
                cell: Arc::default(),
                callers: 0,
            });
            flight.callers += 1;
            Arc::clone(&flight.cell)
        };
        let _waiter = Waiter {
            cache: self,
            key: &key,
            cell: Arc::clone(&cell),
        };
        let mut ran = false;
        let value = cell
            .get_or_init(|| {
                ran = true;
                factory()
            })
            .await
            .clone();
        if !ran {
            return (value, Outcome::Joined);
        }
        // No await from here on, so the leader cannot be cancelled between finishing and storing.
        let mut st = self.lock();
        // Only cache if our flight is still current: `clear()` during the flight drops it.
        if st.flights.get(&key).is_some_and(|f| Arc::ptr_eq(&f.cell, &cell)) {
            st.flights.remove(&key);
            self.store(&mut st, key.clone(), value.clone());
        }
        (value, Outcome::Miss)
    }

    /// Caches `value` for `key` directly (a verification done outside the cache).
    pub fn insert(&self, key: K, value: V) {
        let mut st = self.lock();
        self.store(&mut st, key, value);
    }

    /// Drops every entry. Verifications in flight still answer their callers, but their results
    /// are not cached.
    pub fn clear(&self) {
        let mut st = self.lock();
        st.entries.clear();
        st.flights.clear();
    }

    /// Live (unexpired) entries. O(n).
    pub fn len(&self) -> usize {
        let now = self.clock.now();
        self.lock().entries.values().filter(|e| e.live(now)).count()
    }

    /// Whether [`len`](Self::len) is 0.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keys with a verification in flight.
    pub fn in_flight(&self) -> usize {
        self.lock().flights.len()
    }

    fn lock(&self) -> MutexGuard<'_, State<K, V>> {
        // Nothing panics while holding the lock, and the state is valid between statements anyway.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn store(&self, st: &mut State<K, V>, key: K, value: V) {
        let ttl = if (self.is_positive)(&value) {
            self.config.positive_ttl
        } else {
            self.config.negative_ttl
        };
        if ttl.is_zero() || self.config.capacity == 0 {
            return;
        }
        let now = self.clock.now();
        if !st.entries.contains_key(&key) && st.entries.len() >= self.config.capacity {
            // O(n), but only on inserts into a full cache, and each insert follows a verification
            // that costs far more.
            st.entries.retain(|_, e| e.live(now));
            if st.entries.len() >= self.config.capacity {
                let oldest = st.entries.iter().min_by_key(|(_, e)| e.seq).map(|(k, _)| k.clone());
                if let Some(k) = oldest {
                    st.entries.remove(&k);
                }
            }
        }
        st.seq += 1;
        let seq = st.seq;
        st.entries.insert(
            key,
            Entry {
                value,
                expires: now.checked_add(ttl),
                seq,
            },
        );
    }
}

/// One caller's share of an in-flight verification. On drop (finished or cancelled), the last
/// caller out of an unfinished flight removes it, so an abandoned key does not linger.
struct Waiter<'a, K: Eq + Hash + Clone, V: Clone> {
    cache: &'a VerdictCache<K, V>,
    key: &'a K,
    cell: Arc<OnceCell<V>>,
}

impl<K: Eq + Hash + Clone, V: Clone> Drop for Waiter<'_, K, V> {
    fn drop(&mut self) {
        let mut st = self.cache.lock();
        let Some(flight) = st
            .flights
            .get_mut(self.key)
            .filter(|f| Arc::ptr_eq(&f.cell, &self.cell))
        else {
            return; // finished and stored, or cleared
        };
        flight.callers -= 1;
        if flight.callers == 0 && !flight.cell.initialized() {
            st.flights.remove(self.key);
        }
    }
}

#[cfg(test)]
mod tests;

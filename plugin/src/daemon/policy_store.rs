//! The daemon's policy: loaded once at start (a broken policy stops the start), then reloaded on
//! change and swapped atomically. A broken new policy keeps the old one in force and is logged
//! (once per distinct error) and reported by the API.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex, RwLock},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

/// What the API reports about the policy (an API type).
pub use kcache_core::api::PolicyStatus;
use kcache_core::policy::{Policy, PolicyError};

/// One loaded policy and when it was loaded.
#[derive(Debug)]
pub struct LoadedPolicy {
    /// The policy.
    pub policy: Policy,
    /// When it was loaded.
    pub loaded_at: SystemTime,
}

impl AsRef<Policy> for LoadedPolicy {
    fn as_ref(&self) -> &Policy {
        &self.policy
    }
}

/// The current policy and how to reload it.
#[derive(Debug)]
pub struct PolicyStore {
    main: PathBuf,
    dir: PathBuf,
    current: RwLock<Arc<LoadedPolicy>>,
    last_error: Mutex<Option<String>>,
    reloads: std::sync::atomic::AtomicU64,
}

impl PolicyStore {
    /// Loads `main` and `policy.d/` beside it. Fails when the policy is broken: a daemon must
    /// not start without knowing what it enforces.
    pub fn load(main: &Path) -> Result<Self, PolicyError> {
        let dir = main.parent().unwrap_or(Path::new("/")).join("policy.d");
        let policy = load(main, &dir)?;
        Ok(Self {
            main: main.to_owned(),
            dir,
            current: RwLock::new(Arc::new(LoadedPolicy {
                policy,
                loaded_at: SystemTime::now(),
            })),
            last_error: Mutex::new(None),
            reloads: 0.into(),
        })
    }

    /// The policy in force. Cheap: one read lock and an `Arc` clone.
    pub fn current(&self) -> Arc<LoadedPolicy> {
        Arc::clone(&self.current.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Re-reads the files. `Ok(true)`: a new policy is in force; `Ok(false)`: nothing changed;
    /// `Err`: the files are broken and the old policy stays.
    pub fn reload(&self) -> Result<bool, String> {
        let mut last_error = self.last_error.lock().unwrap_or_else(|p| p.into_inner());
        match load(&self.main, &self.dir) {
            Ok(policy) => {
                *last_error = None;
                if policy.generation == self.current().policy.generation {
                    return Ok(false);
                }
                let loaded = Arc::new(LoadedPolicy {
                    policy,
                    loaded_at: SystemTime::now(),
                });
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = loaded;
                self.reloads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Ok(true)
            }
            Err(err) => {
                let msg = err.to_string();
                if last_error.as_deref() != Some(msg.as_str()) {
                    tracing::error!(error = %msg, generation = self.current().policy.generation,
                        "the new policy is broken; the previous policy stays in force");
                }
                *last_error = Some(msg.clone());
                Err(msg)
            }
        }
    }

    /// Reloads every `interval` until `shutdown` completes. The policy's generation is a hash
    /// of every input (YAML and key files), so polling catches key rotations that a watch on
    /// the YAML alone would miss.
    pub async fn watch(self: Arc<Self>, interval: Duration, on_change: impl Fn(&LoadedPolicy) + Send + 'static) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let store = Arc::clone(&self);
            match tokio::task::spawn_blocking(move || store.reload()).await {
                Ok(Ok(true)) => {
                    let loaded = self.current();
                    tracing::info!(
                        generation = loaded.policy.generation,
                        mode = ?loaded.policy.mode,
                        rules = loaded.policy.rules.len(),
                        "policy reloaded"
                    );
                    on_change(&loaded);
                }
                Ok(_) => {}
                Err(join) => tracing::error!(%join, "policy reload task failed"),
            }
        }
    }

    /// For the API.
    pub fn status(&self) -> PolicyStatus {
        let cur = self.current();
        PolicyStatus {
            generation: cur.policy.generation,
            mode: cur.policy.mode,
            rules: cur.policy.rules.len(),
            sources: cur.policy.sources.clone(),
            loaded_at: cur.loaded_at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
            last_error: self.last_error.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            reloads: self.reloads.load(std::sync::atomic::Ordering::Relaxed),
        }
    }
}

fn load(main: &Path, dir: &Path) -> Result<Policy, PolicyError> {
    Policy::load(main, dir.is_dir().then_some(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALLOW_ALL: &str = "mode: enforce\ndefault: allow\nrules: []\n";

    #[test]
    fn broken_reload_keeps_the_old_policy() {
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("policy.yaml");
        std::fs::write(&main, ALLOW_ALL).unwrap();
        let store = PolicyStore::load(&main).unwrap();
        let gen0 = store.current().policy.generation;
        assert_eq!(store.reload(), Ok(false));

        std::fs::write(&main, "mode: enforce\ndefault: sometimes\n").unwrap();
        let err = store.reload().unwrap_err();
        assert!(err.contains("default"), "{err}");
        assert_eq!(store.current().policy.generation, gen0);
        assert_eq!(store.status().last_error.as_deref(), Some(err.as_str()));

        std::fs::write(&main, "mode: warn\ndefault: deny\nrules: []\n").unwrap();
        assert_eq!(store.reload(), Ok(true));
        assert_ne!(store.current().policy.generation, gen0);
        let st = store.status();
        assert_eq!(
            (st.mode, st.last_error, st.reloads),
            (kcache_core::api::Mode::Warn, None, 1)
        );
    }

    #[test]
    fn fragments_in_policy_d_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("policy.yaml");
        std::fs::write(&main, ALLOW_ALL).unwrap();
        let store = PolicyStore::load(&main).unwrap();
        std::fs::create_dir(dir.path().join("policy.d")).unwrap();
        std::fs::write(
            dir.path().join("policy.d/pause.yaml"),
            "rules:\n  - name: pause\n    images: [\"registry.k8s.io/pause:*\"]\n    allow: true\n",
        )
        .unwrap();
        assert_eq!(store.reload(), Ok(true));
        assert_eq!(store.status().rules, 1);
    }

    #[test]
    fn a_broken_policy_stops_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("policy.yaml");
        assert!(PolicyStore::load(&main).is_err(), "missing file");
        std::fs::write(&main, "rules: [").unwrap();
        assert!(PolicyStore::load(&main).is_err(), "bad yaml");
    }
}

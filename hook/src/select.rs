//! Which cache entry a request resolves to, or why none: approved for the pod's namespace,
//! ready (verified and extracted by kcached), and compatible with at least one GPU of the node.
//! Everything here reads the store; nothing writes.

use std::path::PathBuf;

use kcache_core::{
    cache::{
        meta::GpuInventory,
        store::{CacheRecord, CacheState, NodeCaches, StoreLayout},
    },
    digest::Digest,
    gpu::compat,
};

use crate::request::Request;

/// Decisions the store lets kcached record as trusted.
const TRUSTED_DECISIONS: [&str; 2] = ["verified", "allowed"];

/// A usable cache entry.
#[derive(Debug, Clone)]
pub struct Selected {
    /// The manifest digest of the entry.
    pub digest: Digest,
    /// Its record.
    pub record: CacheRecord,
    /// `<entry>/tree/<cache_subdir>`: the read-only lower layer.
    pub cache_dir: PathBuf,
    /// GPU ids it runs on.
    pub compatible_gpus: Vec<String>,
}

/// Why a request gets no cache.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Reason {
    /// No approved cache by that name for the namespace.
    #[error("no approved cache by that name for this namespace (caches.d)")]
    NotApproved,
    /// Approved, but not ready on this node.
    #[error("not ready on this node: {state}{}", .detail.as_ref().map(|d| format!(" ({d})")).unwrap_or_default())]
    NotReady {
        /// `pending`, `denied` or `failed`.
        state: &'static str,
        /// kcached's reason.
        detail: Option<String>,
    },
    /// The state file names no usable digest.
    #[error("the store's state has no valid digest for it: {0}")]
    BadDigest(String),
    /// The entry's record is missing (not extracted, or collected).
    #[error("{0} is not extracted on this node")]
    NotExtracted(Digest),
    /// The record does not describe the entry, or is not trusted.
    #[error("the store entry {digest} is not trusted: {why}")]
    Untrusted {
        /// The entry.
        digest: Digest,
        /// Why.
        why: String,
    },
    /// The store could not be read.
    #[error("cannot read the cache store: {0}")]
    Store(String),
    /// No GPU inventory.
    #[error("no GPU inventory ({0}); is kcached running?")]
    NoInventory(String),
    /// The node has no GPU.
    #[error("the node has no GPU")]
    NoGpu,
    /// No GPU can use it.
    #[error("incompatible with every GPU on the node: {0}")]
    Incompatible(String),
}

/// Resolves `request` against the store's `state`, reading the record and inventory lazily.
pub fn select(
    layout: &StoreLayout,
    request: &Request,
    state: &NodeCaches,
    inventory: impl FnOnce() -> Result<GpuInventory, String>,
) -> Result<Selected, Reason> {
    let status = state
        .lookup(request.namespace.as_deref(), &request.name)
        .ok_or(Reason::NotApproved)?;
    let state_name = match status.state {
        CacheState::Ready => None,
        CacheState::Pending => Some("pending"),
        CacheState::Denied => Some("denied"),
        CacheState::Failed => Some("failed"),
    };
    if let Some(state) = state_name {
        return Err(Reason::NotReady {
            state,
            detail: status.reason.clone(),
        });
    }
    let digest = status
        .digest
        .clone()
        .ok_or_else(|| Reason::BadDigest("ready without a digest".into()))?;
    let record = layout
        .read_record(&digest)
        .map_err(|e| Reason::Store(e.to_string()))?
        .ok_or_else(|| Reason::NotExtracted(digest.clone()))?;
    let untrusted = |why: String| Reason::Untrusted {
        digest: digest.clone(),
        why,
    };
    if record.digest != digest {
        return Err(untrusted(format!("its record is for {}", record.digest)));
    }
    if !TRUSTED_DECISIONS.contains(&record.verification.decision.as_str()) {
        return Err(untrusted(format!(
            "decision {:?} by rule {:?}",
            record.verification.decision, record.verification.rule
        )));
    }
    if !kcache_core::cache::store::is_plain_name(&record.cache_subdir) {
        return Err(untrusted(format!(
            "cache dir {:?} is not a plain name",
            record.cache_subdir
        )));
    }
    let cache_dir = layout.tree_dir(&digest).join(&record.cache_subdir);
    match std::fs::symlink_metadata(&cache_dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(untrusted(format!("{} is not a directory", cache_dir.display()))),
        Err(e) => return Err(untrusted(format!("{}: {e}", cache_dir.display()))),
    }
    let inventory = inventory().map_err(Reason::NoInventory)?;
    if inventory.gpus.is_empty() {
        return Err(Reason::NoGpu);
    }
    let compat = compat::check(&record.targets, &record.requirements, &inventory.gpus);
    if compat.compatible.is_empty() {
        let why = compat
            .incompatible
            .iter()
            .map(|(gpu, r)| format!("{gpu}: {r}"))
            .collect::<Vec<_>>()
            .join("; ");
        return Err(Reason::Incompatible(why));
    }
    Ok(Selected {
        digest,
        record,
        cache_dir,
        compatible_gpus: compat.compatible,
    })
}

#[cfg(test)]
mod tests {
    use kcache_core::cache::store::CacheState;

    use super::*;
    use crate::testing::FakeStore;

    fn req(name: &str, ns: Option<&str>) -> Request {
        Request {
            name: name.into(),
            namespace: ns.map(Into::into),
            required_raw: None,
            path: None,
            unknown: vec![],
            namespace_conflict: None,
        }
    }

    fn run(store: &FakeStore, r: &Request) -> Result<Selected, Reason> {
        let layout = &store.layout;
        select(layout, r, &store.state(), || {
            kcache_core::gpu::file::load(&layout.gpus_path()).map_err(|e| e.to_string())
        })
    }

    #[test]
    fn decisions() {
        let dir = tempfile::tempdir().unwrap();
        let s = FakeStore::new(dir.path());
        let cluster = s.add_cache("llama", None, &[90], 1);
        let ml = s.add_cache("llama", Some("ml"), &[80, 90], 2);
        let old = s.add_cache("sm80", None, &[80], 3);

        assert_eq!(run(&s, &req("llama", Some("ml"))).unwrap().digest, ml);
        assert_eq!(run(&s, &req("llama", Some("web"))).unwrap().digest, cluster);
        assert_eq!(run(&s, &req("llama", None)).unwrap().digest, cluster);
        let ok = run(&s, &req("llama", None)).unwrap();
        assert_eq!(ok.compatible_gpus, ["GPU-0"]);
        assert!(ok.cache_dir.ends_with("tree/io.triton.cache"));

        assert_eq!(run(&s, &req("mistral", Some("ml"))).unwrap_err(), Reason::NotApproved);
        let e = run(&s, &req("sm80", None)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "incompatible with every GPU on the node: GPU-0: cache has sm_80; GPU is sm_90"
        );
        s.set_gpus(&[]);
        assert_eq!(run(&s, &req("sm80", None)).unwrap_err(), Reason::NoGpu);
        std::fs::remove_file(s.layout.gpus_path()).unwrap();
        assert!(matches!(
            run(&s, &req("llama", None)).unwrap_err(),
            Reason::NoInventory(_)
        ));
        s.set_gpus(&[80, 90]);
        assert_eq!(run(&s, &req("sm80", None)).unwrap().compatible_gpus, ["GPU-0"]);

        for (state, word) in [
            (CacheState::Pending, "pending"),
            (CacheState::Denied, "denied"),
            (CacheState::Failed, "failed"),
        ] {
            s.approve("llama", Some("ml"), Some(&ml), state);
            let e = run(&s, &req("llama", Some("ml"))).unwrap_err();
            assert_eq!(
                e.to_string(),
                format!("not ready on this node: {word} (fixture says so)")
            );
        }
        s.approve("llama", Some("ml"), None, CacheState::Ready);
        assert!(matches!(run(&s, &req("llama", Some("ml"))), Err(Reason::BadDigest(_))));
        // A state.json naming something that is not a digest is not read at all.
        let good = s.state();
        let mut raw: serde_json::Value = serde_json::to_value(&good).unwrap();
        for c in raw["caches"].as_array_mut().unwrap() {
            c["digest"] = "sha256:../../etc".into();
        }
        std::fs::write(s.layout.state_path(), raw.to_string()).unwrap();
        let err = s.layout.read_state().unwrap_err().to_string();
        assert!(err.contains("not lowercase hex"), "{err}");
        std::fs::write(s.layout.state_path(), serde_json::to_vec(&good).unwrap()).unwrap();

        // The state points at an entry that is not (or no longer) extracted.
        let gone = kcache_core::digest::Digest::parse(&format!("sha256:{:064x}", 99)).unwrap();
        s.approve("llama", Some("ml"), Some(&gone), CacheState::Ready);
        assert_eq!(
            run(&s, &req("llama", Some("ml"))).unwrap_err(),
            Reason::NotExtracted(gone)
        );

        // Records that do not vouch for themselves.
        s.approve("llama", Some("ml"), Some(&ml), CacheState::Ready);
        s.update_record(&ml, |r| r.digest = old.clone());
        assert!(run(&s, &req("llama", Some("ml")))
            .unwrap_err()
            .to_string()
            .contains("its record is for"));
        s.update_record(&ml, |r| {
            r.digest = ml.clone();
            r.verification.decision = "deny".into();
        });
        assert!(run(&s, &req("llama", Some("ml")))
            .unwrap_err()
            .to_string()
            .contains("decision \"deny\""));
        s.update_record(&ml, |r| {
            r.verification.decision = "allowed".into();
            r.cache_subdir = "../../..".into();
        });
        assert!(run(&s, &req("llama", Some("ml")))
            .unwrap_err()
            .to_string()
            .contains("not a plain name"));
        s.update_record(&ml, |r| r.cache_subdir = "io.vllm.cache".into());
        assert!(run(&s, &req("llama", Some("ml")))
            .unwrap_err()
            .to_string()
            .contains("io.vllm.cache"));
        s.update_record(&ml, |r| r.cache_subdir = "io.triton.cache".into());
        assert_eq!(run(&s, &req("llama", Some("ml"))).unwrap().digest, ml);
    }
}

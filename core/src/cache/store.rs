//! The node's cache store: the one layout kcached writes and the OCI hook reads.
//!
//! ```text
//! /var/lib/kcache/caches/                 StoreLayout::root
//!   state.json                            NodeCaches: every approved cache and its status (kcached)
//!   <sha256-hex>/                         one verified cache image, by manifest digest
//!     record.json                         CacheRecord: image, metadata, verification record
//!     tree/                               the extracted layer (io.triton.cache/..., read-only)
//!     grp/<target-key>/                   __grp__ rewrite for one mount path (an overlay lower;
//!                                         made by the hook or kcached; see target_key)
//!     refs/<container-id>                 one file per running container using it (the hook)
//!     .lock                               flock: shared by the hook while it adds a ref,
//!                                         exclusive by GC while it checks refs and removes
//! /run/kcache/gpus.json                   GpuInventory, written by kcached at start
//! /run/kcache/containers/<id>/            per-container overlay upper/ and work/ (the hook)
//! ```
//!
//! An entry is visible only once `record.json` exists: kcached extracts into `tree/` through a
//! temp dir and one rename, then writes the record atomically. `state.json` is rewritten
//! atomically after every change. GC removes an entry that no approved cache points at and whose
//! `refs/` is empty, holding `.lock` exclusively; the hook takes `.lock` shared, re-checks that
//! `record.json` exists, then creates its ref file. So an entry is never removed under a
//! container that uses it. The locks and the collector are in [`crate::cache::gc`].
//!
//! Plain std + serde: the hook uses this module with no other part of kcache-core.

use std::{
    io,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::{
    cache::meta::{CacheSummary, CacheTarget},
    digest::Digest,
    gpu::compat::CacheRequirements,
};

/// Default store root.
pub const DEFAULT_ROOT: &str = crate::paths::CACHE_ROOT;
/// Default run directory (gpus.json, per-container dirs, sockets).
pub const DEFAULT_RUN_DIR: &str = crate::paths::RUN_DIR;
/// The status file under the store root.
pub const STATE_FILE: &str = "state.json";
/// The per-entry record.
pub const RECORD_FILE: &str = "record.json";
/// The extracted layer under an entry.
pub const TREE_DIR: &str = "tree";
/// Container references under an entry.
pub const REFS_DIR: &str = "refs";
/// `__grp__` rewrite layers under an entry.
pub const GRP_DIR: &str = "grp";
/// The entry lock file.
pub const LOCK_FILE: &str = ".lock";

/// Paths of the cache store and the run directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreLayout {
    root: PathBuf,
    run_dir: PathBuf,
}

impl Default for StoreLayout {
    fn default() -> Self {
        Self::new(DEFAULT_ROOT, DEFAULT_RUN_DIR)
    }
}

impl StoreLayout {
    /// A layout with the store at `root` and the run directory at `run_dir`.
    pub fn new(root: impl Into<PathBuf>, run_dir: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            run_dir: run_dir.into(),
        }
    }

    /// The store root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The run directory.
    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// `<root>/state.json`.
    pub fn state_path(&self) -> PathBuf {
        self.root.join(STATE_FILE)
    }

    /// `<run>/gpus.json`.
    pub fn gpus_path(&self) -> PathBuf {
        self.run_dir.join("gpus.json")
    }

    /// `<root>/<hex>`: the entry of one cache image. Its name is the plain hex so it is one
    /// path component with no `:`.
    pub fn entry_dir(&self, digest: &Digest) -> PathBuf {
        self.root.join(digest.hex())
    }

    /// `<root>/<hex>/record.json`.
    pub fn record_path(&self, digest: &Digest) -> PathBuf {
        self.entry_dir(digest).join(RECORD_FILE)
    }

    /// `<root>/<hex>/tree`.
    pub fn tree_dir(&self, digest: &Digest) -> PathBuf {
        self.entry_dir(digest).join(TREE_DIR)
    }

    /// `<root>/<hex>/refs`.
    pub fn refs_dir(&self, digest: &Digest) -> PathBuf {
        self.entry_dir(digest).join(REFS_DIR)
    }

    /// `<root>/<hex>/.lock`.
    pub fn lock_path(&self, digest: &Digest) -> PathBuf {
        self.entry_dir(digest).join(LOCK_FILE)
    }

    /// `<root>/<hex>/grp/<key>`: the `__grp__` rewrite of this entry for `target` (the absolute
    /// cache path inside the container); `<key>` is [`target_key`], one or more components.
    pub fn grp_dir(&self, digest: &Digest, target: &str) -> PathBuf {
        self.entry_dir(digest).join(GRP_DIR).join(target_key(target))
    }

    /// `<run>/containers/<id>`: a container's overlay upper and work dirs. `None` when `id` is
    /// not one plain path component.
    pub fn container_dir(&self, id: &str) -> Option<PathBuf> {
        is_plain_name(id).then(|| self.run_dir.join("containers").join(id))
    }

    /// Reads `state.json`; a missing file is an empty state.
    pub fn read_state(&self) -> Result<NodeCaches, StoreError> {
        read_json_or_default(&self.state_path())
    }

    /// Reads an entry's `record.json`; `Ok(None)` when the entry is not (or no longer) there.
    pub fn read_record(&self, digest: &Digest) -> Result<Option<CacheRecord>, StoreError> {
        let path = self.record_path(digest);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|source| StoreError::Json { path, source }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StoreError::Io { path, source }),
        }
    }
}

/// Prefix of the dirs GC renames entries to before removing them (an interrupted removal
/// leaves one).
pub const GRAVE_PREFIX: &str = ".tmp-gc-";

/// One thing under the store root, as [`StoreLayout::walk`] sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreDirent {
    /// An entry dir: its name is the hex of a sha256 digest.
    Entry {
        /// The entry's digest.
        digest: Digest,
        /// `<root>/<hex>`.
        path: PathBuf,
    },
    /// An entry GC renamed away and did not finish removing.
    Grave(PathBuf),
}

impl StoreLayout {
    /// The entries and unfinished removals under the root, sorted by name; a missing root is
    /// empty. An entry is a directory (never a symlink) whose name is what [`Digest::parse`]
    /// accepts as `sha256:<name>` (lowercase hex); anything else is not the store's and is left
    /// alone. The one walk GC, `kcache cache ls` and the manager use.
    pub fn walk(&self) -> io::Result<Vec<StoreDirent>> {
        let dir = match std::fs::read_dir(&self.root) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        for dirent in dir {
            let dirent = dirent?;
            if !dirent.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let Some(name) = dirent.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if name.starts_with(GRAVE_PREFIX) {
                out.push((name, StoreDirent::Grave(dirent.path())));
            } else if let Some(digest) = entry_digest(&name) {
                out.push((
                    name,
                    StoreDirent::Entry {
                        digest,
                        path: dirent.path(),
                    },
                ));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out.into_iter().map(|(_, d)| d).collect())
    }

    /// The digests of the entries under the root ([`walk`](Self::walk)), sorted.
    pub fn entries(&self) -> io::Result<Vec<Digest>> {
        Ok(self
            .walk()?
            .into_iter()
            .filter_map(|d| match d {
                StoreDirent::Entry { digest, .. } => Some(digest),
                StoreDirent::Grave(_) => None,
            })
            .collect())
    }

    /// What `target` names: a digest (`sha256:<hex>`, or the bare hex as the entry dir is
    /// named), else an approved cache in `state.json` for a pod in `namespace`, which must
    /// have a copy on this node.
    pub fn resolve(&self, target: &str, namespace: Option<&str>) -> Result<Digest, ResolveError> {
        if let Some(d) = Digest::parse(target).ok().or_else(|| entry_digest(target)) {
            return Ok(d);
        }
        let state = self.read_state()?;
        let Some(c) = state.lookup(namespace, target) else {
            return Err(ResolveError::NoSuchCache {
                name: target.to_owned(),
                namespace: namespace.map(str::to_owned),
                state: self.state_path(),
            });
        };
        c.digest.clone().ok_or_else(|| ResolveError::NoCopy {
            name: target.to_owned(),
            state: c.state,
            reason: c.reason.clone(),
        })
    }
}

/// The digest an entry dir named `name` holds: `sha256:<name>` when that is a digest.
pub fn entry_digest(name: &str) -> Option<Digest> {
    Digest::parse(&format!("sha256:{name}")).ok()
}

/// What a name or digest given to [`StoreLayout::resolve`] does not name.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// No approved cache of that name (for that namespace).
    #[error("no approved cache {name}{} in {}", namespace.as_deref().map(|n| format!(" for namespace {n}")).unwrap_or_default(), state.display())]
    NoSuchCache {
        /// The name.
        name: String,
        /// The namespace.
        namespace: Option<String>,
        /// The state file read.
        state: PathBuf,
    },
    /// The cache is approved but has no copy here.
    #[error("cache {name} is {state}: {}", reason.as_deref().unwrap_or("no copy on this node"))]
    NoCopy {
        /// The name.
        name: String,
        /// Where it stands.
        state: CacheState,
        /// Why.
        reason: Option<String>,
    },
    /// `state.json` could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Most bytes of one component of a [`target_key`] (a name may have 255; the rest leaves room
/// for the `.tmp-<name>-<suffix>` dirs a layer is built in).
const KEY_COMPONENT_MAX: usize = 200;

/// Where the `__grp__` rewrite for `target` lives under an entry's `grp/`: the target path
/// itself, escaped (`[A-Za-z0-9._-]` kept, `/` written `+`, every other byte `%XX`), so two
/// different targets never share a layer.
///
/// The target comes from the pod (`kcache.dev/cache-path`, or its env), and the layer is made
/// by whoever needs it first: mostly the hook, at the prestart of a container with that target
/// (or the manager's `prepare_grp`, on kcached's side). Every later container with the same
/// key reuses it, so a key that pods can make collide (a short non-cryptographic hash such as
/// FNV-1a) would let one pod prepare the `child_paths` another pod's container mounts. An
/// injective encoding needs no hash, so no crypto in the hook (which links none).
///
/// A long path is cut into several components of at most 200 bytes: the last starts with `p`,
/// the ones before it with `n`. So every key is a plain relative path, and a layer dir (whose
/// last component starts with `p`) is never the parent of another layer.
pub fn target_key(target: &str) -> PathBuf {
    use std::fmt::Write as _;
    let mut parts = vec![String::from("p")];
    let mut token = String::with_capacity(3);
    for b in target.bytes() {
        token.clear();
        match b {
            b'/' => token.push('+'),
            b if b.is_ascii_alphanumeric() || b"._-".contains(&b) => token.push(char::from(b)),
            b => {
                let _ = write!(token, "%{b:02X}");
            }
        }
        let last = parts.last_mut().expect("parts is never empty");
        if last.len() + token.len() > KEY_COMPONENT_MAX {
            last.replace_range(..1, "n");
            parts.push(format!("p{token}"));
        } else {
            last.push_str(&token);
        }
    }
    parts.iter().collect()
}

/// One path component that is safe to join: not empty, not `.`/`..`, no `/`, no NUL, at most
/// 255 bytes, and no leading `.` (reserved for temp and lock files).
pub fn is_plain_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 255 && !s.starts_with('.') && !s.bytes().any(|b| b == b'/' || b == 0)
}

fn read_json_or_default<T: Default + for<'de> Deserialize<'de>>(path: &Path) -> Result<T, StoreError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| StoreError::Json {
            path: path.to_owned(),
            source,
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(T::default()),
        Err(source) => Err(StoreError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Reading the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A file is not what kcached writes.
    #[error("{path} is not valid: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// Why.
        source: serde_json::Error,
    },
}

/// `state.json`: every approved cache (from caches.d) and where it stands on this node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeCaches {
    /// Increases with every write.
    pub generation: u64,
    /// When kcached last wrote the file (seconds since the epoch).
    pub updated_at: u64,
    /// The approved caches, sorted by namespace then name.
    pub caches: Vec<CacheStatus>,
}

impl NodeCaches {
    /// The approved cache `name` for a pod in `namespace`: a namespaced entry first, else a
    /// cluster-wide one (no namespace).
    pub fn lookup(&self, namespace: Option<&str>, name: &str) -> Option<&CacheStatus> {
        let namespaced = namespace.and_then(|ns| {
            self.caches
                .iter()
                .find(|c| c.name == name && c.namespace.as_deref() == Some(ns))
        });
        namespaced.or_else(|| self.caches.iter().find(|c| c.name == name && c.namespace.is_none()))
    }
}

/// One approved cache's status on this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheStatus {
    /// The approved name (what `kcache.dev/cache` names).
    pub name: String,
    /// The namespace it is approved for; `None`: every namespace (a cluster-wide cache).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The image as approved (tag or digest reference).
    pub image: String,
    /// Where it stands.
    pub state: CacheState,
    /// The manifest digest of the current copy, once one is ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<Digest>,
    /// Why it is not ready (failed or denied), for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// GPU ids the current copy runs on.
    #[serde(default)]
    pub compatible_gpus: Vec<String>,
    /// GPU ids it does not run on, each with the reason.
    #[serde(default)]
    pub incompatible_gpus: Vec<GpuMismatch>,
    /// When this entry last changed (seconds since the epoch).
    #[serde(default)]
    pub updated_at: u64,
}

/// The state of an approved cache on the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheState {
    /// Not pulled yet (or being pulled).
    Pending,
    /// Verified, extracted; `digest` is usable.
    Ready,
    /// The policy denied it.
    Denied,
    /// Pull, extraction or metadata failed.
    Failed,
}

impl CacheState {
    /// `pending`, `ready`, `denied` or `failed`, as `state.json` spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Ready => "ready",
            Self::Denied => "denied",
            Self::Failed => "failed",
        }
    }
}

impl std::fmt::Display for CacheState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A GPU the cache does not run on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuMismatch {
    /// The GPU id (UUID for NVIDIA, `kfd-<node>` for AMD).
    pub gpu: String,
    /// Why, for people.
    pub reason: String,
}

/// `<entry>/record.json`: what kcached knows about one extracted cache image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheRecord {
    /// The manifest digest (`sha256:<hex>`).
    pub digest: Digest,
    /// The reference it was pulled as (`repo@digest`).
    pub image: String,
    /// `triton` or `vllm`.
    pub kind: String,
    /// The targets from the summary label.
    pub targets: Vec<CacheTarget>,
    /// Driver and Triton version, where the image records them.
    #[serde(default)]
    pub requirements: CacheRequirements,
    /// The image's build-cache-root label, if any: for people (`kcache cache inspect`). The
    /// `__grp__` rewrite reads the root from the group files themselves ([`crate::cache::grp`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_cache_root: Option<String>,
    /// The dir under `tree/` that holds the kernels (`io.triton.cache` or `io.vllm.cache`).
    pub cache_subdir: String,
    /// Files and bytes extracted.
    pub files: u64,
    /// Bytes of file data.
    pub bytes: u64,
    /// When it was extracted (seconds since the epoch).
    pub extracted_at: u64,
    /// Why the node trusts it.
    pub verification: VerificationRecord,
}

impl CacheRecord {
    /// The targets as a summary.
    pub fn summary(&self) -> CacheSummary {
        CacheSummary {
            targets: self.targets.clone(),
        }
    }
}

/// The verdict a cache entry was admitted with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerificationRecord {
    /// The policy rule that decided.
    pub rule: String,
    /// `verified` or `allowed` (an allow-list rule, no signature).
    pub decision: String,
    /// The signer: key fingerprint or certificate identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signer: Option<String>,
    /// The Rekor log index, when there was a transparency-log entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tlog_index: Option<u64>,
    /// When it was verified (seconds since the epoch).
    pub verified_at: u64,
    /// The policy generation it was verified under.
    pub policy_generation: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_prefers_the_pod_namespace() {
        let status = |ns: Option<&str>, image: &str| CacheStatus {
            name: "llama".into(),
            namespace: ns.map(Into::into),
            image: image.into(),
            state: CacheState::Ready,
            digest: None,
            reason: None,
            compatible_gpus: vec![],
            incompatible_gpus: vec![],
            updated_at: 0,
        };
        let state = NodeCaches {
            generation: 1,
            updated_at: 0,
            caches: vec![status(None, "cluster"), status(Some("ml"), "ml-only")],
        };
        assert_eq!(
            state.lookup(Some("ml"), "llama").map(|c| c.image.as_str()),
            Some("ml-only")
        );
        assert_eq!(
            state.lookup(Some("other"), "llama").map(|c| c.image.as_str()),
            Some("cluster")
        );
        assert_eq!(state.lookup(None, "llama").map(|c| c.image.as_str()), Some("cluster"));
        assert!(state.lookup(Some("ml"), "mistral").is_none());
    }

    #[test]
    fn names_and_keys() {
        assert!(is_plain_name("0123abc"));
        for bad in ["", ".", "..", ".lock", "a/b", "x\0y"] {
            assert!(!is_plain_name(bad), "{bad:?}");
        }
        let l = StoreLayout::new("/s", "/r");
        assert_eq!(l.container_dir("c1"), Some(PathBuf::from("/r/containers/c1")));
        assert_eq!(l.container_dir("../x"), None);
    }

    #[test]
    fn target_keys_are_the_escaped_path() {
        assert_eq!(target_key("/root/.triton/cache"), Path::new("p+root+.triton+cache"));
        assert_eq!(target_key("/a b/+x%/é"), Path::new("p+a%20b+%2Bx%25+%C3%A9"));
        let l = StoreLayout::new("/s", "/r");
        let d = Digest::parse(&format!("sha256:{}", "ab".repeat(32))).unwrap();
        assert_eq!(
            l.grp_dir(&d, "/home/u/.triton/cache"),
            Path::new("/s").join("ab".repeat(32)).join("grp/p+home+u+.triton+cache")
        );
    }

    #[test]
    fn long_targets_nest_and_no_layer_holds_another() {
        let long = format!("/{}/cache", "x".repeat(450));
        let key = target_key(&long);
        let comps: Vec<&str> = key.iter().map(|c| c.to_str().unwrap()).collect();
        assert_eq!(comps.len(), 3, "{comps:?}");
        assert!(comps[..2]
            .iter()
            .all(|c| c.starts_with('n') && c.len() == KEY_COMPONENT_MAX));
        assert!(comps[2].starts_with('p'));
        assert!(comps.iter().all(|c| is_plain_name(c)));
        let joined: String = comps.iter().map(|c| &c[1..]).collect();
        assert_eq!(joined, long.replace('/', "+"));
        // A path as long as a whole component is a layer of its own, not a parent of the longer
        // one's layer.
        let short = &long[..KEY_COMPONENT_MAX - 1];
        assert_eq!(target_key(short).iter().count(), 1);
        assert!(!target_key(&long).starts_with(target_key(short)));
        // The longest target the hook accepts fits.
        let longest = format!("/{}", "%".repeat(4095));
        assert!(target_key(&longest).iter().all(|c| c.len() <= KEY_COMPONENT_MAX));
    }

    /// Path pieces that an escape or a cut could confuse.
    fn piece() -> impl proptest::strategy::Strategy<Value = &'static str> {
        proptest::sample::select(vec![
            "/",
            "+",
            "%",
            "%2F",
            "%2B",
            "a",
            "p",
            "n",
            ".",
            "é",
            "x".repeat(97).leak(),
        ])
    }

    proptest::proptest! {
        #[test]
        fn different_targets_never_share_a_key(
            a in proptest::collection::vec(piece(), 0..12),
            b in proptest::collection::vec(piece(), 0..12),
        ) {
            let (a, b) = (a.concat(), b.concat());
            let (ka, kb) = (target_key(&a), target_key(&b));
            proptest::prop_assert_eq!(a == b, ka == kb, "{:?} {:?}", ka, kb);
            // Nor is one layer inside another.
            proptest::prop_assert!(a == b || (!ka.starts_with(&kb) && !kb.starts_with(&ka)));
        }
    }

    #[test]
    fn missing_state_is_empty() {
        let l = StoreLayout::new("/nonexistent/kcache-store", "/nonexistent/run");
        assert_eq!(l.read_state().unwrap(), NodeCaches::default());
    }
}

//! Kernel cache images (GKM/MCV format) and what a node needs to know about them.
//!
//! - [`meta`]: the types every side shares (daemon, CLI, the OCI hook).
//! - [`format`](mod@format): the image's labels and layer layout ([`format::CacheImageMeta`]).
//! - [`triton`]: scanning a Triton cache directory (targets, kernels, manifest).
//! - [`summary`]: what a cache holds for people (per-target counts, sizes, largest kernels).
//! - [`store`]: the node store layout kcached writes and the hook reads.
//! - [`lock`]: the entry and name locks; [`refs`]: the container refs the hook writes (and
//!   their one record type), counted the same way by GC and `kcache cache ls`.
//! - [`gc`]: the garbage collector (kcached, `kcache cache gc`, the hook's tests: one
//!   implementation).
//! - [`grp`]: rewriting Triton's `__grp__*.json` absolute paths for another mount path.
//! - `builder` (feature `cache`): a deterministic tar.gz layer + image config from a cache dir.
//! - `extract` (feature `cache`): unpacks a cache image layer into the store, safely.
//! - `approved` and `manager` (features `verify` + `cache`): caches.d, and the kcached side
//!   that pulls approved caches into the store, tracks them in `state.json` and runs [`gc`].
//!
//! Everything but `builder` and `extract` is plain serde and std, so the hook can use it.

#[cfg(all(feature = "verify", feature = "cache"))]
pub mod approved;
#[cfg(feature = "cache")]
pub mod builder;
#[cfg(feature = "cache")]
pub mod extract;
pub mod format;
pub mod gc;
pub mod grp;
pub mod lock;
#[cfg(all(feature = "verify", feature = "cache"))]
pub mod manager;
pub mod meta;
pub mod optin;
pub mod refs;
pub mod store;
pub mod summary;
pub mod triton;

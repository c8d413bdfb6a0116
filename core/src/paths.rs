//! The node's default paths, defined once: what the packages install, what kcached, the CLI,
//! the image verifier and the hook use when nothing overrides them (a flag, an environment
//! variable, or kcached's config.toml), and what `kcache install containerd` writes into
//! containerd's config.

/// kcached's config file (also read by the image verifier and `kcache cache pull`).
pub const CONFIG: &str = "/etc/kcache/config.toml";
/// The verification policy (`policy.d/` beside it is read too).
pub const POLICY: &str = "/etc/kcache/policy.yaml";
/// The approved kernel caches.
pub const CACHES_DIR: &str = "/etc/kcache/caches.d";
/// The base runtime spec `kcache install containerd` writes (containerd's default spec plus the
/// hook).
pub const BASE_SPEC: &str = "/etc/kcache/containerd-base-spec.json";
/// The public keys `kcache policy render crio` writes for CRI-O.
pub const CRIO_KEYS: &str = "/etc/kcache/crio/keys";
/// The snapshotter socket (containerd's `proxy_plugins.kcache` address).
pub const SNAPSHOTTER_SOCKET: &str = "/run/kcache/snapshotter.sock";
/// The kcache API socket.
pub const API_SOCKET: &str = "/run/kcache/kcache.sock";
/// kcached's run directory (gpus.json, per-container dirs).
pub const RUN_DIR: &str = "/run/kcache";
/// The snapshotter's root (snapshots and their metadata).
pub const SNAPSHOTTER_ROOT: &str = "/var/lib/kcache/snapshotter";
/// The kernel-cache store.
pub const CACHE_ROOT: &str = "/var/lib/kcache/caches";
/// The OCI hook binary.
pub const HOOK: &str = "/usr/libexec/kcache/kcache-hook";

//! containerd's configuration, as kcache installs, checks and removes it (feature `containerd`).
//!
//! What `kcache install containerd` sets, per containerd line:
//!
//! | | 1.6 / 1.7 (config version 2) | 2.0 | 2.1+ (config version 3) |
//! |---|---|---|---|
//! | proxy snapshotter | `[proxy_plugins.kcache]` | same | same, plus `exports.enable_remote_snapshot_annotations = "true"` |
//! | CRI snapshotter | `plugins."io.containerd.grpc.v1.cri".containerd` `snapshotter`, `disable_snapshot_annotations = false` | `plugins."io.containerd.cri.v1.images"`, same two keys | `snapshotter` only |
//! | hook | `base_runtime_spec` + `pod_annotations` on the runc runtime | `plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc` | same |
//! | image verifier | (none in 1.x) | `plugins."io.containerd.image-verifier.v1.bindir"` + the binary linked into `bin_dir` | same |
//!
//! Why the differences:
//! - The gate needs the CRI snapshot labels (image ref + manifest digest). CRI 1.x and 2.0 pull
//!   through the client and send them when `disable_snapshot_annotations = false`. From 2.1 CRI
//!   pulls through the transfer service, which sends them to a proxy snapshotter exporting
//!   `enable_remote_snapshot_annotations = "true"`, and which *falls back to client pulls when
//!   `disable_snapshot_annotations = false` is set*; only transfer-service pulls run the bindir
//!   image verifiers, so on 2.1+ that key is left alone.
//! - containerd 1.x merges `imports` by replacing whole plugin sections (containerd#5837): a
//!   drop-in holding `plugins."io.containerd.grpc.v1.cri"` would silently reset every other CRI
//!   setting of config.toml. So on 1.x kcache edits config.toml itself (toml_edit: comments and
//!   every other key stay). containerd 2.x merges plugin sections key by key (containerd#9982),
//!   so there kcache writes a drop-in (`conf.d/kcache.toml`) and adds it to `imports`.
//!
//! - [`flavor`]: which line a containerd is ([`Flavor`]).
//! - [`render`]: kcache's keys in a config document ([`apply`]), imports, config versions.
//! - [`spec`]: the base runtime spec (containerd's default spec plus kcache-hook).
//! - [`plan`]: the install as a list of file changes, written with backups and atomically.
//! - [`uninstall`]: exactly what install added taken out again, the admin's later edits kept.
//! - [`doctor`]: every way a pull could skip verification, as typed [`doctor::Finding`]s.

use std::{io, path::PathBuf, process::ExitStatus};

pub mod doctor;
pub mod flavor;
pub mod plan;
pub mod render;
pub mod spec;
pub mod uninstall;

pub use flavor::{detect_flavor, version_from_output, Flavor};
pub use render::{apply, cri_tables, node_platform, PullPath, Target};

/// containerd 1.x's CRI plugin (config version 2).
pub const CRI_V2: &str = "io.containerd.grpc.v1.cri";
/// containerd 2.x's CRI image settings (config version 3).
pub const CRI_IMAGES: &str = "io.containerd.cri.v1.images";
/// containerd 2.x's CRI runtime settings (config version 3).
pub const CRI_RUNTIME: &str = "io.containerd.cri.v1.runtime";
/// containerd 2.x's image verifier plugin that runs the binaries of a directory.
pub const BINDIR: &str = "io.containerd.image-verifier.v1.bindir";
/// containerd 2.x's transfer service (unpack_config).
pub const TRANSFER: &str = "io.containerd.transfer.v1.local";
/// containerd's NRI plugin (1.7: off by default, 2.x: on).
pub const NRI: &str = "io.containerd.nri.v1.nri";
/// containerd's default NRI socket.
pub const NRI_SOCKET: &str = "/var/run/nri/nri.sock";
/// The annotations CRI must pass to the OCI spec for kcache-hook.
pub const POD_ANNOTATIONS: &str = "kcache.dev/*";
/// The name of the verifier in `bin_dir`: containerd runs the entries in name order and only
/// the first `max_verifiers`, so it sorts first.
pub const VERIFIER_LINK: &str = "00-kcache";
/// Where the packages install kcache-hook (as packaging/crio/hooks.d/kcache.json says).
pub const DEFAULT_HOOK: &str = crate::paths::HOOK;
/// runc kills a hook after this many seconds and fails the start (the hooks.d file's timeout).
pub const HOOK_TIMEOUT_S: u64 = 10;

/// Why kcache cannot read, change or check a containerd configuration.
#[derive(Debug, thiserror::Error)]
pub enum ContainerdError {
    /// A containerd line kcache does not configure.
    #[error("containerd {0} is not supported (1.6 or later)")]
    Unsupported(String),
    /// Not a version at all.
    #[error("unknown containerd version {0:?}")]
    UnknownVersion(String),
    /// `containerd --version` could not run.
    #[error("cannot run `{bin} --version` to detect containerd's version: pass --containerd-version")]
    VersionCommand {
        /// The containerd binary.
        bin: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// `containerd --version` printed no version.
    #[error("no version in `containerd --version` output {0:?}")]
    NoVersion(String),
    /// A file that is not TOML.
    #[error("{path} is not valid TOML")]
    Toml {
        /// The file.
        path: PathBuf,
        /// The parser's complaint.
        #[source]
        source: Box<toml_edit::TomlError>,
    },
    /// kcache's own config.toml cannot take the registry setting.
    #[error("{path}: {reason}")]
    KcacheConfig {
        /// kcache's config.toml.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A key kcache must descend into holds a value.
    #[error("{0} is not a table in the containerd config")]
    NotATable(String),
    /// A key kcache must append to is not an array.
    #[error("{0} is not an array in the containerd config")]
    NotAnArray(String),
    /// A version 1 config.
    #[error(
        "{0}: no `version` key: a version 1 config (plugins.cri, …). kcache writes version 2 (1.x) or 3 (2.x) \
         keys: add `version = 2` and use the full plugin names (plugins.\"io.containerd.grpc.v1.cri\"), or \
         run `containerd config migrate` on containerd 2.x"
    )]
    Version1(PathBuf),
    /// A config version kcache does not know.
    #[error("{path}: config version {version} is not supported (2 or later)")]
    BadVersion {
        /// The file.
        path: PathBuf,
        /// What it says.
        version: String,
    },
    /// A 2.x config on a 1.x containerd.
    #[error("{path}: config version {version} is for containerd 2.x, but containerd is 1.x")]
    NewerConfig {
        /// The file.
        path: PathBuf,
        /// Its version.
        version: i64,
    },
    /// The spec kcache's base spec starts from is not an OCI runtime spec.
    #[error("the base spec to start from is not an OCI runtime spec: {0}")]
    Spec(&'static str),
    /// The spec kcache's base spec starts from is not JSON.
    #[error("the base spec to start from is not JSON")]
    SpecJson(#[source] serde_json::Error),
    /// `ctr oci spec` failed.
    #[error(
        "`{ctr} oci spec` failed ({status}): {stderr}; the base runtime spec must start from containerd's \
         default spec: fix ctr, or pass --base-spec-from FILE"
    )]
    CtrFailed {
        /// The ctr binary.
        ctr: PathBuf,
        /// Its exit status.
        status: ExitStatus,
        /// What it said.
        stderr: String,
    },
    /// `ctr` could not run.
    #[error(
        "cannot run `{ctr} oci spec`: the base runtime spec must start from containerd's default spec, which \
         ctr prints; install ctr (it ships with containerd) or pass --base-spec-from FILE"
    )]
    CtrMissing {
        /// The ctr binary.
        ctr: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A file or directory could not be written.
    #[error("cannot write {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The verifier binary to link is missing.
    #[error("the image verifier {0} does not exist: install kcache-image-verifier or pass --verifier-path")]
    VerifierMissing(PathBuf),
    /// Something else sits where kcache's verifier link goes (or went).
    #[error("{0} exists and is not a link kcache made: move it away first")]
    NotOurLink(PathBuf),
    /// containerd would never run kcache's verifier.
    #[error(
        "{dir} holds {count} entries and containerd runs only the first {max} by name: {VERIFIER_LINK} would be skipped"
    )]
    VerifierSkipped {
        /// The bin_dir.
        dir: PathBuf,
        /// Its entries.
        count: usize,
        /// max_verifiers.
        max: i64,
    },
    /// `containerd config dump` could not run.
    #[error("cannot run `{bin} config dump`")]
    DumpCommand {
        /// The containerd binary.
        bin: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// `containerd config dump` failed.
    #[error("`{bin} --config {config} config dump` failed ({status}): {stderr}")]
    DumpFailed {
        /// The containerd binary.
        bin: PathBuf,
        /// The config file.
        config: PathBuf,
        /// Its exit status.
        status: ExitStatus,
        /// What it said.
        stderr: String,
    },
    /// `containerd config dump` printed something that is not TOML.
    #[error("containerd's config dump is not TOML")]
    DumpToml(#[source] Box<toml::de::Error>),
}

/// This module's result.
pub type Result<T> = std::result::Result<T, ContainerdError>;

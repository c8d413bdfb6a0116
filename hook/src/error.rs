//! What can fail in one hook invocation, one variant per stage, and the exit code of each
//! (the table is in the crate docs, and in the README's hook section).
//!
//! The runtime (runc, crun, CRI-O, podman) only tells zero from non-zero: any non-zero exit of a
//! prestart hook fails the container's start, and runc reports the code (`error running hook
//! #0: error running hook: exit status 5, stdout: , stderr: ...`). The codes are distinct per stage so that the
//! runtime's message, a node's logs and the tests say which stage failed without parsing text
//! (as ripgrep's `main` keeps 0/1/2 apart). The stage errors are the modules' own
//! (`InputError`, `RequestError`, `select::Reason`, `TargetError`, `MountError`, ...), kept as
//! sources: the message on stderr is the whole chain, printed once ([`crate::error_chain`]).

use std::{io, path::PathBuf};

use kcache_core::{
    cache::{grp::GrpError, refs::RefError},
    digest::Digest,
};

use crate::{mount::MountError, oci::InputError, request::RequestError, select, target::TargetError, triton};

/// This module's result.
pub type Result<T> = std::result::Result<T, HookError>;

/// Why a hook invocation failed. [`HookError::exit_code`] is the process's exit status.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    /// The command line (exit 2).
    #[error("bad command line")]
    Usage(#[from] UsageError),
    /// The OCI state or the bundle's config.json (exit 3).
    #[error(transparent)]
    Input(#[from] InputError),
    /// The container's annotations (exit 4).
    #[error(transparent)]
    Request(#[from] RequestError),
    /// No usable cache entry on this node (exit 5).
    #[error(transparent)]
    Select(#[from] select::Reason),
    /// The target path (exit 6).
    #[error(transparent)]
    Target(#[from] TargetError),
    /// The container's state or spec lacks what the mount needs (exit 7).
    #[error(transparent)]
    Container(#[from] ContainerError),
    /// Reading or writing the node store (exit 8).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The container's Triton (exit 9).
    #[error(transparent)]
    Triton(#[from] triton::Mismatch),
    /// The mount itself (exit 10).
    #[error(transparent)]
    Mount(#[from] MountError),
    /// poststop's cleanup (exit 11).
    #[error(transparent)]
    Cleanup(#[from] CleanupError),
    /// prestart failed for a container whose start must then fail: `kcache.dev/cache-required:
    /// "true"` (`required`), or a `cache-required` value that is neither `true` nor `false`.
    /// The exit code is that of `source`, the stage that failed.
    #[error("{cache} {}cannot be mounted", required_but(.required))]
    NotMounted {
        /// The request, as [`crate::request::Request::describe`] names it.
        cache: String,
        /// Whether the container said the cache is required.
        required: bool,
        /// The stage that failed (never `NotMounted` itself).
        #[source]
        source: Box<HookError>,
    },
}

fn required_but(required: &bool) -> &'static str {
    if *required {
        "is required (kcache.dev/cache-required) but "
    } else {
        ""
    }
}

/// The exit codes, by stage name: the table in this module's docs and the README.
pub const EXIT_CODES: [(u8, &str); 10] = [
    (2, "usage"),
    (3, "input"),
    (4, "request"),
    (5, "select"),
    (6, "target"),
    (7, "container"),
    (8, "store"),
    (9, "triton"),
    (10, "mount"),
    (11, "cleanup"),
];

impl HookError {
    /// The stage that failed, as named in [`EXIT_CODES`].
    pub fn stage(&self) -> &'static str {
        match self {
            Self::Usage(_) => "usage",
            Self::Input(_) => "input",
            Self::Request(_) => "request",
            Self::Select(_) => "select",
            Self::Target(_) => "target",
            Self::Container(_) => "container",
            Self::Store(_) => "store",
            Self::Triton(_) => "triton",
            Self::Mount(_) => "mount",
            Self::Cleanup(_) => "cleanup",
            Self::NotMounted { source, .. } => source.stage(),
        }
    }

    /// The process exit code for this error (never 0 or 1): see [`EXIT_CODES`].
    pub fn exit_code(&self) -> u8 {
        let stage = self.stage();
        EXIT_CODES
            .iter()
            .find(|(_, name)| *name == stage)
            .map_or(u8::MAX, |(code, _)| *code)
    }

    /// Wraps a prestart failure of `cache` for a container whose start must fail.
    pub fn not_mounted(cache: String, required: bool, source: HookError) -> Self {
        match source {
            // Never nested: the innermost request is the one that failed.
            already @ Self::NotMounted { .. } => already,
            source => Self::NotMounted {
                cache,
                required,
                source: Box::new(source),
            },
        }
    }
}

/// A bad command line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UsageError {
    /// A path option without a value, or with a relative one.
    #[error("{0} needs an absolute path")]
    NeedsAbsolutePath(&'static str),
    /// An unknown argument, or a second stage.
    #[error("unexpected argument {0:?}")]
    Unexpected(String),
}

/// The container's state or spec lacks what mounting into it needs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContainerError {
    /// The spec has no mount namespace of its own: mounting would change the host's.
    #[error("the container has no mount namespace of its own")]
    NoMountNamespace,
    /// The state has no pid (or pid 0).
    #[error("the OCI state has no container pid")]
    NoPid,
    /// config.json has no `root.path`.
    #[error("config.json has no root.path")]
    NoRootPath,
    /// The container user is outside the user namespace's mappings.
    #[error("the container user is not mapped to a host user")]
    UnmappedUser,
    /// The id cannot be a directory name under the run dir.
    #[error("container id {0:?} cannot name a directory")]
    BadId(String),
}

/// The node store could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// `state.json` (kcached writes it).
    #[error("cannot read the cache store")]
    State(#[source] kcache_core::cache::store::StoreError),
    /// `<run>/containers/<id>/{upper,work}`.
    #[error("cannot prepare {}", .path.display())]
    ContainerDir {
        /// The container dir.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// `<run>/containers/<id>/hook.json`, the record poststop reads.
    #[error("cannot write {}", .path.display())]
    Record {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The entry's `refs/<id>`.
    #[error("cannot add the container's ref to the store entry")]
    Ref(#[source] RefError),
    /// The `__grp__` rewrite layer for the target path.
    #[error("cannot prepare the __grp__ layer")]
    Grp(#[source] GrpError),
}

/// One poststop step that failed.
#[derive(Debug, thiserror::Error)]
pub enum CleanupStep {
    /// A leftover overlay in the host's namespace.
    #[error("cannot unmount {}", .path.display())]
    Unmount {
        /// The mount point.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The entry's `refs/<id>`.
    #[error("cannot drop the ref on {digest}")]
    Ref {
        /// The entry.
        digest: Digest,
        /// Why.
        #[source]
        source: RefError,
    },
    /// `<run>/containers/<id>`.
    #[error("cannot remove {}", .path.display())]
    RemoveDir {
        /// The container dir.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// poststop tries every step; these failed (at least one).
#[derive(Debug, thiserror::Error)]
#[error("cleanup incomplete: {}", .0.iter().map(|s| crate::error_chain(s)).collect::<Vec<_>>().join("; "))]
pub struct CleanupError(pub Vec<CleanupStep>);

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn one_of_each() -> Vec<HookError> {
        let io = || io::Error::from(io::ErrorKind::PermissionDenied);
        vec![
            UsageError::Unexpected("--bogus".into()).into(),
            InputError::Stdin(io()).into(),
            RequestError::BadRequired("yes".into()).into(),
            select::Reason::NotApproved.into(),
            TargetError::NoHome { uid: 1000 }.into(),
            ContainerError::NoPid.into(),
            StoreError::Ref(RefError::BadId("x/y".into())).into(),
            triton::Mismatch {
                cache: "llama".into(),
                built_with: "3.1.0".into(),
                found: "3.0.0 (/usr/lib/python3/dist-packages/triton)".into(),
            }
            .into(),
            MountError {
                step: "open /proc/1/ns/mnt".into(),
                detail: "Permission denied".into(),
                errno: Some(rustix::io::Errno::ACCESS),
            }
            .into(),
            CleanupError(vec![CleanupStep::RemoveDir {
                path: "/run/kcache/containers/c1".into(),
                source: io(),
            }])
            .into(),
        ]
    }

    #[test]
    fn each_stage_has_its_own_documented_exit_code() {
        let errors = one_of_each();
        let got: Vec<(u8, &str)> = errors.iter().map(|e| (e.exit_code(), e.stage())).collect();
        assert_eq!(got, EXIT_CODES);
        let codes: BTreeSet<u8> = got.iter().map(|(c, _)| *c).collect();
        assert_eq!(codes.len(), EXIT_CODES.len(), "codes are distinct");
        assert!(
            !codes.contains(&0) && !codes.contains(&1),
            "0 is success, 1 is never used"
        );
        // The table in the crate docs and the README's hook section list exactly these codes.
        let docs = include_str!("lib.rs");
        let readme = include_str!("../../README.md");
        for (code, stage) in EXIT_CODES {
            let row = format!("| {code} | {stage} |");
            assert!(docs.contains(&format!("//! {row}")), "crate docs lack {row}");
            assert!(readme.contains(&row), "README lacks {row}");
        }
    }

    #[test]
    fn a_required_cache_fails_with_the_code_of_the_stage_that_failed() {
        for e in one_of_each() {
            let (code, stage) = (e.exit_code(), e.stage());
            let wrapped = HookError::not_mounted("cache \"llama\" (namespace ml)".into(), true, e);
            assert_eq!((wrapped.exit_code(), wrapped.stage()), (code, stage));
            let twice = HookError::not_mounted("other".into(), false, wrapped);
            assert_eq!(twice.exit_code(), code);
            assert!(twice
                .to_string()
                .starts_with("cache \"llama\" (namespace ml) is required"));
        }
    }

    #[test]
    fn the_chain_is_printed_once_without_repeating_a_cause() {
        let e = HookError::not_mounted(
            "cache \"llama\" (no pod namespace)".into(),
            true,
            StoreError::Record {
                path: "/run/kcache/containers/c1/hook.json".into(),
                source: io::Error::from(io::ErrorKind::PermissionDenied),
            }
            .into(),
        );
        assert_eq!(
            crate::error_chain(&e),
            "cache \"llama\" (no pod namespace) is required (kcache.dev/cache-required) but cannot be \
             mounted: cannot write /run/kcache/containers/c1/hook.json: permission denied"
        );
        // Core's errors that also print their cause: the cause is not repeated.
        let state = StoreError::State(kcache_core::cache::store::StoreError::Io {
            path: "/var/lib/kcache/caches/state.json".into(),
            source: io::Error::from(io::ErrorKind::NotFound),
        });
        assert_eq!(
            crate::error_chain(&state),
            "cannot read the cache store: cannot read /var/lib/kcache/caches/state.json: entity not found"
        );
        let not_required = HookError::not_mounted(
            "cache \"llama\" (no pod namespace)".into(),
            false,
            RequestError::BadRequired("yes".into()).into(),
        );
        assert_eq!(
            crate::error_chain(&not_required),
            "cache \"llama\" (no pod namespace) cannot be mounted: kcache.dev/cache-required must be \
             \"true\" or \"false\", not \"yes\""
        );
    }
}

//! The controller's and agent's one error type, with a metric label per kind.

use crate::{files::FileError, validate::ValidateError};

/// What a reconcile or sync can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API request failed.
    #[error("kubernetes API request failed")]
    Kube(#[source] kube::Error),
    /// The tag could not be resolved.
    #[error("cannot resolve {image}")]
    Resolve {
        /// The image.
        image: String,
        /// Why.
        #[source]
        source: kcache_core::registry::RegistryError,
    },
    /// Not an image reference.
    #[error("bad image reference")]
    Reference(#[source] kcache_core::registry::ReferenceError),
    /// The scratch files for validation.
    #[error(transparent)]
    Validate(#[from] ValidateError),
    /// Node files.
    #[error(transparent)]
    Files(#[from] FileError),
    /// The node's files.
    #[error("node files")]
    Sync(#[source] crate::agent::files::SyncError),
    /// A blocking task or a watch store failed.
    #[error("internal: {0}")]
    Join(String),
    /// kcached's API.
    #[error("kcached's API")]
    Kcached(#[source] kcache_core::api::ApiError),
    /// The object has no name (never from the API server).
    #[error("object without a name")]
    NoName,
}

impl Error {
    /// The `error` label of the failures metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Resolve { .. } => "resolve",
            Error::Reference(_) => "reference",
            Error::Validate(_) => "validate",
            Error::Files(_) => "files",
            Error::Sync(_) => "files",
            Error::Join(_) => "internal",
            Error::Kcached(_) => "kcached",
            Error::NoName => "no_name",
        }
    }
}

impl From<kube::Error> for Error {
    fn from(e: kube::Error) -> Self {
        Error::Kube(e)
    }
}

/// This crate's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

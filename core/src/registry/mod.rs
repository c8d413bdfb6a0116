//! Registry access: references, credentials, and a bounded OCI distribution client.

pub mod artifact;
pub mod auth;
pub mod client;
pub mod hosts;
pub mod reference;

pub use client::{
    split_config_path, BlobStream, Client, Manifest, RegistryConfig, RegistryError, Resolved, ACCEPT_MANIFESTS,
};
pub use reference::{Reference, ReferenceError};

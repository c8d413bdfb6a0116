//! Registry access: references, credentials, and a bounded OCI distribution client.

pub mod artifact;
pub mod auth;
pub mod client;
pub mod reference;

pub use client::{BlobStream, Client, Manifest, RegistryConfig, RegistryError, Resolved, ACCEPT_MANIFESTS};
pub use reference::{Reference, ReferenceError};

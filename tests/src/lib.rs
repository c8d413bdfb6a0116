//! kcache's end-to-end harness: the real components, started on loopback by the tests.
//!
//! A missing component is a loud failure, never a silent skip: install them with
//! `make deps` (scripts/deps.sh).

pub mod containerd;
pub mod cosign;
pub mod cri;
pub mod fixtures;
pub mod hostile;
pub mod http_server;
pub mod images;
pub mod kcached;
pub mod kube;
pub mod registry;
pub mod socket;
pub mod tls;
pub mod token_issuer;
pub mod triton;
pub mod warm;

pub use registry::TestRegistry;

//! The node daemon's parts: the policy in force, the verification gate, metrics, the kcache API
//! and the daemon's configuration.

pub mod api;
pub mod config;
pub mod gate;
pub mod metrics;
pub mod policy_store;

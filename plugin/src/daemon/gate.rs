//! kcached's side of the verification gate: the policy in force and the verifier, as the
//! [`Admission`] that [`kcache_core::snapshot::gate::GatedSnapshotter`] decides with. The
//! rules themselves (what is verified, the chain check, the re-check, the labels) live and are
//! tested in kcache-core.

use std::{sync::Arc, time::Instant};

use kcache_core::{
    api::ImageVerdict,
    digest::Digest,
    policy::Mode,
    registry::Reference,
    snapshot::gate::{Admission, Denied},
    verifier::Verifier,
};

/// The gate's settings, and what to do with an unpack that has no CRI image labels: API types
/// (`/v1/gate` reports them).
pub use kcache_core::api::{GateStatus as GateConfig, Unlabeled};

use super::{metrics::Metrics, policy_store::PolicyStore};

/// The policy store and the verifier (with its verdict cache, shared with the API), counting
/// verdicts and refusals in the metrics.
pub struct PolicyAdmission {
    policy: Arc<PolicyStore>,
    verifier: Arc<Verifier>,
    metrics: Arc<Metrics>,
    runtime: tokio::runtime::Handle,
}

impl PolicyAdmission {
    /// Decides with `policy` through `verifier`. Must be created inside the tokio runtime the
    /// verification runs on; the snapshotter calls [`Admission::verify`] from its blocking pool.
    pub fn new(policy: Arc<PolicyStore>, verifier: Arc<Verifier>, metrics: Arc<Metrics>) -> Self {
        Self {
            policy,
            verifier,
            metrics,
            runtime: tokio::runtime::Handle::current(),
        }
    }
}

impl Admission for PolicyAdmission {
    fn mode(&self) -> Mode {
        self.policy.current().policy.mode
    }

    fn verify(&self, image: &Reference, digest: &Digest) -> ImageVerdict {
        let loaded = self.policy.current();
        let start = Instant::now();
        // The snapshotter runs on tokio's blocking pool, where blocking on the runtime is
        // allowed; a verdict-cache hit returns without waiting on anything.
        let v = self
            .runtime
            .block_on(self.verifier.verify_digest(&loaded.policy, image, digest));
        self.metrics
            .verdict(v.decision, v.rule.as_deref(), v.cached, start.elapsed());
        v
    }

    fn refused(&self, denied: &Denied) {
        self.metrics.denied(denied.kind());
        tracing::warn!(reason = denied.kind(), "{denied}");
    }
}

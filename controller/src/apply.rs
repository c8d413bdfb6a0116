//! Server-side apply of status, with one field manager per mode, so two replicas writing the
//! same status are safe without leader election (the last apply wins, both compute the same).

use std::sync::atomic::{AtomicBool, Ordering};

use kube::{
    api::{Patch, PatchParams},
    runtime::events::{Event, EventType, Recorder, Reporter},
    Api, Client, Resource,
};
use serde::{de::DeserializeOwned, Serialize};

/// The controller's field manager.
pub const CONTROLLER_MANAGER: &str = "kcache-controller";
/// The node agent's field manager.
pub const AGENT_MANAGER: &str = "kcache-node-agent";

/// Applies `status` as `manager` (forced: the status is ours alone).
pub async fn apply_status<K>(api: &Api<K>, name: &str, manager: &str, status: &impl Serialize) -> kube::Result<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(name, &PatchParams::apply(manager).force(), &Patch::Apply(&patch))
        .await
}

/// Kubernetes events, where the API server serves them: a 404 (no events.k8s.io, as on the
/// bare apiextensions-apiserver) is logged once and events stop.
pub struct Events {
    recorder: Recorder,
    gone: AtomicBool,
}

impl Events {
    /// Events reported as `controller`.
    pub fn new(client: Client, controller: &str) -> Self {
        let reporter = Reporter {
            controller: controller.into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Self {
            recorder: Recorder::new(client, reporter),
            gone: AtomicBool::new(false),
        }
    }

    /// Publishes one event about `obj`; failures are logged, never returned.
    pub async fn publish<K: Resource<DynamicType = ()>>(&self, obj: &K, warning: bool, reason: &str, note: String) {
        if self.gone.load(Ordering::Relaxed) {
            return;
        }
        let ev = Event {
            type_: if warning { EventType::Warning } else { EventType::Normal },
            reason: reason.into(),
            note: Some(note),
            action: "Reconcile".into(),
            secondary: None,
        };
        match self.recorder.publish(&ev, &obj.object_ref(&())).await {
            Ok(()) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {
                if !self.gone.swap(true, Ordering::Relaxed) {
                    tracing::info!(
                        "the API server serves no events (404); events are off, status conditions carry the news"
                    );
                }
            }
            Err(e) => tracing::warn!(error = %e, reason, "cannot publish event"),
        }
    }
}

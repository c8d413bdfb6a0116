//! kcached's NRI plugin: containerd asks it at every CreateContainer, and it adds kcache-hook
//! (prestart and poststop, exactly as the base runtime spec carries it) only to containers
//! whose pod carries `kcache.dev/cache` ([`kcache_core::cache::optin::nri_adjustment`]). Every
//! other container gets an empty adjustment and never runs the hook.
//!
//! - Connects to containerd's NRI socket, registers as `kcache` (index [`PLUGIN_INDEX`]),
//!   subscribes to CreateContainer only; Synchronize changes nothing.
//! - Never fails a container: anything it cannot read is logged and answered with an empty
//!   adjustment; it answers from memory, in microseconds.
//! - When the socket is missing or the runtime goes away, it reconnects with backoff
//!   (containerd creates containers without the plugin meanwhile: opted-in pods start
//!   without their cache then, as when the hook cannot mount it).

pub mod wire;

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use kcache_core::{cache::optin, containerd::spec::hook_entries};
use prost::Message as _;
use tokio::{io::AsyncWriteExt, net::UnixStream, sync::watch};

use crate::proto::nri as api;
use wire::{Demux, Response, Status, WireError};

/// The plugin's name at registration.
pub const PLUGIN_NAME: &str = "kcache";
/// The plugin's index (plugins are called in ascending order; two digits).
pub const PLUGIN_INDEX: &str = "10";
/// The service the runtime calls.
pub const PLUGIN_SERVICE: &str = "nri.pkg.api.v1alpha1.Plugin";
/// The service the plugin calls.
pub const RUNTIME_SERVICE: &str = "nri.pkg.api.v1alpha1.Runtime";
/// containerd's default NRI socket.
pub const DEFAULT_SOCKET: &str = "/var/run/nri/nri.sock";
/// NRI's `Event_CREATE_CONTAINER` (4) as an event mask bit (`1 << (event - 1)`).
pub const CREATE_CONTAINER_MASK: i32 = 1 << (4 - 1);

const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
const REGISTER_TIMEOUT: Duration = Duration::from_secs(10);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// What the plugin answers.
#[derive(Debug, Clone)]
pub struct Plugin {
    hooks: api::Hooks,
}

impl Plugin {
    /// A plugin adding `hook` (the kcache-hook binary, as in the base runtime spec).
    pub fn new(hook: &Path) -> Self {
        let [pre, post] = hook_entries(hook).map(|e| api::Hook {
            path: e.path,
            args: e.args,
            env: Vec::new(),
            timeout: Some(api::OptionalInt {
                value: e.timeout as i64,
            }),
        });
        Self {
            hooks: api::Hooks {
                prestart: vec![pre],
                poststop: vec![post],
                ..Default::default()
            },
        }
    }

    /// The response to one ttrpc request on the plugin service.
    pub fn handle(&self, req: &wire::Request) -> Response {
        let ok = |payload: Vec<u8>| Response {
            status: Some(Status::default()),
            payload,
        };
        tracing::debug!(service = %req.service, method = %req.method, "NRI: request");
        if req.service != PLUGIN_SERVICE {
            return error(wire::CODE_UNIMPLEMENTED, format!("unknown service {}", req.service));
        }
        match req.method.as_str() {
            "Configure" => {
                match api::ConfigureRequest::decode(&req.payload[..]) {
                    Ok(c) => tracing::info!(runtime = %c.runtime_name, version = %c.runtime_version, "NRI: configured"),
                    Err(e) => tracing::warn!(error = %e, "NRI: unreadable Configure request"),
                }
                ok(api::ConfigureResponse {
                    events: CREATE_CONTAINER_MASK,
                }
                .encode_to_vec())
            }
            "Synchronize" => {
                // Split syncs must echo `more`; there is never anything to update.
                let more = api::SynchronizeRequest::decode(&req.payload[..]).is_ok_and(|s| s.more);
                ok(api::SynchronizeResponse {
                    update: Vec::new(),
                    more,
                }
                .encode_to_vec())
            }
            "CreateContainer" => ok(self.create_container(&req.payload).encode_to_vec()),
            // Subscribed to none of these, but answered rather than failed, should a runtime call.
            "UpdateContainer" => ok(api::UpdateContainerResponse::default().encode_to_vec()),
            "StopContainer" => ok(api::StopContainerResponse::default().encode_to_vec()),
            "StateChange" | "Shutdown" => ok(api::Empty::default().encode_to_vec()),
            other => error(
                wire::CODE_UNIMPLEMENTED,
                format!("unknown method {PLUGIN_SERVICE}/{other}"),
            ),
        }
    }

    /// The adjustment for a container being created: the hooks (and the pod's kcache
    /// annotations the container lacks) when its pod opts in, else nothing.
    pub fn create_container(&self, payload: &[u8]) -> api::CreateContainerResponse {
        let req = match api::CreateContainerRequest::decode(payload) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "NRI: unreadable CreateContainer request; container left alone");
                return api::CreateContainerResponse::default();
            }
        };
        let (Some(pod), Some(ctr)) = (req.pod.as_ref(), req.container.as_ref()) else {
            tracing::warn!("NRI: CreateContainer without pod or container; container left alone");
            return api::CreateContainerResponse::default();
        };
        tracing::debug!(pod = %pod.name, container = %ctr.name, pod_annotations = ?pod.annotations.keys().collect::<Vec<_>>(), "NRI: CreateContainer");
        let Some(annotations) = optin::nri_adjustment(&pod.annotations, |k| ctr.annotations.get(k).map(String::as_str))
        else {
            return api::CreateContainerResponse::default();
        };
        tracing::info!(pod = %pod.name, namespace = %pod.namespace, container = %ctr.name, "NRI: adding kcache-hook");
        api::CreateContainerResponse {
            adjust: Some(api::ContainerAdjustment {
                annotations: annotations.into_iter().collect(),
                hooks: Some(self.hooks.clone()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

fn error(code: i32, message: String) -> Response {
    tracing::warn!(%message, "NRI: refused a request");
    Response {
        status: Some(Status { code, message }),
        payload: Vec::new(),
    }
}

/// Why one connection to the runtime ended.
#[derive(Debug, thiserror::Error)]
pub enum NriError {
    /// The transport failed.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// Writing took longer than [`WRITE_TIMEOUT`].
    #[error("NRI: the runtime does not read (write timed out)")]
    WriteTimeout,
    /// The runtime did not answer RegisterPlugin in time.
    #[error("NRI: no answer to RegisterPlugin in {0:?}")]
    RegisterTimeout(Duration),
    /// The runtime refused the registration.
    #[error("NRI: registration refused (code {code}): {message}")]
    Refused {
        /// gRPC code.
        code: i32,
        /// The runtime's message.
        message: String,
    },
    /// A response envelope that does not decode.
    #[error("NRI: unreadable ttrpc envelope")]
    Envelope(#[from] prost::DecodeError),
}

async fn send(stream: &mut UnixStream, bytes: &[u8]) -> Result<(), NriError> {
    match tokio::time::timeout(WRITE_TIMEOUT, stream.write_all(bytes)).await {
        Ok(r) => r.map_err(|e| NriError::Wire(e.into())),
        Err(_) => Err(NriError::WriteTimeout),
    }
}

/// Serves one connection: registers, then answers the runtime until it goes away or `stop`
/// fires. `Ok` when stopped.
pub async fn serve(mut stream: UnixStream, plugin: &Plugin, stop: &mut watch::Receiver<bool>) -> Result<(), NriError> {
    let register = api::RegisterPluginRequest {
        plugin_name: PLUGIN_NAME.to_string(),
        plugin_idx: PLUGIN_INDEX.to_string(),
    };
    let bytes = wire::encode_request(
        wire::RUNTIME_CONN,
        1,
        RUNTIME_SERVICE,
        "RegisterPlugin",
        register.encode_to_vec(),
    )?;
    send(&mut stream, &bytes).await?;
    let (mut rd, mut wr) = stream.into_split();
    let mut demux = Demux::default();
    let mut registered = false;
    let deadline = tokio::time::sleep(REGISTER_TIMEOUT);
    tokio::pin!(deadline);
    loop {
        let msg = tokio::select! {
            m = demux.next(&mut rd) => m?,
            () = &mut deadline, if !registered => return Err(NriError::RegisterTimeout(REGISTER_TIMEOUT)),
            _ = stop.changed() => return Ok(()),
        };
        match (msg.conn, msg.kind) {
            (wire::PLUGIN_CONN, wire::TYPE_REQUEST) => {
                let resp = match wire::Request::decode(&msg.payload[..]) {
                    Ok(req) => plugin.handle(&req),
                    Err(e) => error(wire::CODE_INVALID_ARGUMENT, format!("unreadable ttrpc request: {e}")),
                };
                let bytes = wire::encode_response(wire::PLUGIN_CONN, msg.stream, &resp)?;
                match tokio::time::timeout(WRITE_TIMEOUT, wr.write_all(&bytes)).await {
                    Ok(r) => r.map_err(|e| NriError::Wire(e.into()))?,
                    Err(_) => return Err(NriError::WriteTimeout),
                }
            }
            (wire::RUNTIME_CONN, wire::TYPE_RESPONSE) if msg.stream == 1 && !registered => {
                let resp = Response::decode(&msg.payload[..])?;
                if let Some(s) = resp.status.filter(|s| s.code != 0) {
                    return Err(NriError::Refused {
                        code: s.code,
                        message: s.message,
                    });
                }
                registered = true;
                tracing::info!(name = PLUGIN_NAME, index = PLUGIN_INDEX, "NRI: registered");
            }
            (conn, kind) => {
                // Requests on the runtime channel, responses on ours: nothing kcache asked for.
                tracing::debug!(conn, kind, stream = msg.stream, "NRI: ignoring a ttrpc message");
            }
        }
    }
}

/// Keeps the plugin connected to `socket` until `stop` fires: connects, serves, and after a
/// missing socket or a lost connection tries again with backoff (100 ms doubling to 2 s).
pub async fn run(socket: PathBuf, plugin: Plugin, mut stop: watch::Receiver<bool>) {
    let mut backoff = BACKOFF_MIN;
    let mut last_error = String::new();
    loop {
        if *stop.borrow() {
            return;
        }
        let started = tokio::time::Instant::now();
        let result = match UnixStream::connect(&socket).await {
            Ok(stream) => serve(stream, &plugin, &mut stop).await,
            Err(e) => Err(NriError::Wire(WireError::Io(e))),
        };
        match result {
            Ok(()) => return,
            Err(e) => {
                let text = e.to_string();
                if text != last_error {
                    tracing::warn!(socket = %socket.display(), error = %text, "NRI: not connected; retrying");
                    last_error = text;
                }
            }
        }
        // A connection that lasted a while was healthy: start the backoff over.
        if started.elapsed() > Duration::from_secs(10) {
            backoff = BACKOFF_MIN;
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            _ = stop.changed() => return,
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn create(pod: &[(&str, &str)], ctr: &[(&str, &str)]) -> Vec<u8> {
        let m = |kv: &[(&str, &str)]| {
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<HashMap<_, _>>()
        };
        api::CreateContainerRequest {
            pod: Some(api::PodSandbox {
                name: "p".into(),
                annotations: m(pod),
                ..Default::default()
            }),
            container: Some(api::Container {
                name: "c".into(),
                annotations: m(ctr),
                ..Default::default()
            }),
        }
        .encode_to_vec()
    }

    fn call(p: &Plugin, method: &str, payload: Vec<u8>) -> Response {
        p.handle(&wire::Request {
            service: PLUGIN_SERVICE.into(),
            method: method.into(),
            payload,
            ..Default::default()
        })
    }

    #[test]
    fn an_opted_in_pod_gets_the_base_spec_hooks_and_others_get_nothing() {
        let p = Plugin::new(Path::new("/usr/libexec/kcache/kcache-hook"));
        let r = call(&p, "CreateContainer", create(&[("kcache.dev/cache", "llama")], &[]));
        assert_eq!(r.status.as_ref().unwrap().code, 0);
        let adj = api::CreateContainerResponse::decode(&r.payload[..])
            .unwrap()
            .adjust
            .unwrap();
        let hooks = adj.hooks.unwrap();
        let spec = kcache_core::containerd::spec::base_spec(
            br#"{"ociVersion":"1.0.2"}"#,
            Path::new("/usr/libexec/kcache/kcache-hook"),
        )
        .unwrap();
        let spec: serde_json::Value = serde_json::from_str(&spec).unwrap();
        for (phase, h) in [("prestart", &hooks.prestart), ("poststop", &hooks.poststop)] {
            assert_eq!(h.len(), 1);
            let want = &spec["hooks"][phase][0];
            assert_eq!(h[0].path, want["path"].as_str().unwrap());
            assert_eq!(serde_json::json!(h[0].args), want["args"]);
            assert_eq!(Some(h[0].timeout.as_ref().unwrap().value), want["timeout"].as_i64());
        }
        assert_eq!(adj.annotations["kcache.dev/cache"], "llama");

        for (pod, ctr) in [
            (&[][..], &[("kcache.dev/cache", "llama")][..]),
            (&[("kcache.dev/cache-path", "/x")][..], &[][..]),
        ] {
            let r = call(&p, "CreateContainer", create(pod, ctr));
            assert_eq!(r.status.as_ref().unwrap().code, 0);
            let resp = api::CreateContainerResponse::decode(&r.payload[..]).unwrap();
            assert_eq!(resp, api::CreateContainerResponse::default());
            assert!(r.payload.is_empty(), "an empty adjustment is zero bytes on the wire");
        }
        // Garbage never fails the container.
        let r = call(&p, "CreateContainer", vec![0xff, 0xff, 0xff]);
        assert_eq!(r.status.unwrap().code, 0);
        assert!(r.payload.is_empty());
    }

    #[test]
    fn configure_subscribes_to_create_container_and_sync_echoes_more() {
        let p = Plugin::new(Path::new("/h"));
        let r = call(&p, "Configure", api::ConfigureRequest::default().encode_to_vec());
        assert_eq!(api::ConfigureResponse::decode(&r.payload[..]).unwrap().events, 8);
        for more in [false, true] {
            let r = call(
                &p,
                "Synchronize",
                api::SynchronizeRequest {
                    more,
                    ..Default::default()
                }
                .encode_to_vec(),
            );
            let s = api::SynchronizeResponse::decode(&r.payload[..]).unwrap();
            assert_eq!((s.more, s.update.len()), (more, 0));
        }
    }

    #[test]
    fn unknown_methods_and_services_get_an_error_status() {
        let p = Plugin::new(Path::new("/h"));
        let r = call(&p, "Frobnicate", vec![]);
        assert_eq!(r.status.unwrap().code, wire::CODE_UNIMPLEMENTED);
        let r = p.handle(&wire::Request {
            service: "other.Service".into(),
            method: "Configure".into(),
            ..Default::default()
        });
        assert_eq!(r.status.unwrap().code, wire::CODE_UNIMPLEMENTED);
    }
}

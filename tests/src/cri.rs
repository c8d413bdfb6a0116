//! The Kubernetes CRI (runtime.v1) as the kubelet speaks it: RuntimeService and ImageService
//! clients over containerd's unix socket, generated from the vendored `api.proto`.

use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint};

/// The generated `runtime.v1` messages and clients.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod pb {
    tonic::include_proto!("runtime.v1");
}

pub use pb::{image_service_client::ImageServiceClient, runtime_service_client::RuntimeServiceClient};

/// Both CRI services on one connection, as the kubelet holds them.
#[derive(Clone)]
pub struct Cri {
    pub runtime: RuntimeServiceClient<Channel>,
    pub images: ImageServiceClient<Channel>,
}

/// A gRPC channel to a unix socket (the authority is a placeholder; the path is what counts).
pub async fn unix_channel(socket: &Path) -> Result<Channel, tonic::transport::Error> {
    let path: PathBuf = socket.to_owned();
    Endpoint::try_from("http://cri.invalid")
        .expect("a static URI")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await
}

impl Cri {
    /// Connects once containerd's CRI plugin answers `Version` (it comes up after the socket
    /// does); panics with containerd's log after 30 s.
    pub async fn ready(containerd: &crate::containerd::Containerd) -> Self {
        let start = std::time::Instant::now();
        loop {
            if let Ok(c) = Self::connect(containerd.address()).await {
                if c.runtime.clone().version(pb::VersionRequest::default()).await.is_ok() {
                    return c;
                }
            }
            assert!(
                start.elapsed() < std::time::Duration::from_secs(30),
                "containerd's CRI plugin does not answer:\n{}",
                containerd.log()
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// Connects to the CRI endpoint at `socket` (containerd's gRPC address).
    pub async fn connect(socket: &Path) -> Result<Self, tonic::transport::Error> {
        let channel = unix_channel(socket).await?;
        Ok(Self {
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
        })
    }

    /// PullImage; the image reference containerd resolved it to (`sha256:` image id).
    pub async fn pull(&self, image: &str, sandbox: Option<&pb::PodSandboxConfig>) -> Result<String, tonic::Status> {
        let r = self
            .images
            .clone()
            .pull_image(pb::PullImageRequest {
                image: Some(image_spec(image)),
                auth: None,
                sandbox_config: sandbox.cloned(),
            })
            .await?;
        Ok(r.into_inner().image_ref)
    }

    /// RunPodSandbox; the sandbox id.
    pub async fn run_pod(&self, config: &pb::PodSandboxConfig) -> Result<String, tonic::Status> {
        let r = self
            .runtime
            .clone()
            .run_pod_sandbox(pb::RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: String::new(),
            })
            .await?;
        Ok(r.into_inner().pod_sandbox_id)
    }

    /// CreateContainer + StartContainer; the container id.
    pub async fn start_container(
        &self,
        pod: &str,
        sandbox: &pb::PodSandboxConfig,
        config: pb::ContainerConfig,
    ) -> Result<String, tonic::Status> {
        let id = self
            .runtime
            .clone()
            .create_container(pb::CreateContainerRequest {
                pod_sandbox_id: pod.to_owned(),
                config: Some(config),
                sandbox_config: Some(sandbox.clone()),
            })
            .await?
            .into_inner()
            .container_id;
        self.runtime
            .clone()
            .start_container(pb::StartContainerRequest {
                container_id: id.clone(),
            })
            .await?;
        Ok(id)
    }

    /// ContainerStatus.
    pub async fn container_status(&self, id: &str) -> Result<pb::ContainerStatus, tonic::Status> {
        let r = self
            .runtime
            .clone()
            .container_status(pb::ContainerStatusRequest {
                container_id: id.to_owned(),
                verbose: false,
            })
            .await?;
        r.into_inner()
            .status
            .ok_or_else(|| tonic::Status::internal("ContainerStatus without a status"))
    }

    /// StopPodSandbox + RemovePodSandbox (which stop and remove its containers too).
    pub async fn remove_pod(&self, pod: &str) -> Result<(), tonic::Status> {
        let mut rt = self.runtime.clone();
        rt.stop_pod_sandbox(pb::StopPodSandboxRequest {
            pod_sandbox_id: pod.to_owned(),
        })
        .await?;
        rt.remove_pod_sandbox(pb::RemovePodSandboxRequest {
            pod_sandbox_id: pod.to_owned(),
        })
        .await?;
        Ok(())
    }
}

/// An ImageSpec for a reference.
pub fn image_spec(image: &str) -> pb::ImageSpec {
    pb::ImageSpec {
        image: image.to_owned(),
        ..Default::default()
    }
}

/// A host-network pod (no CNI needed; and like the kubelet, no hostname: the UTS namespace is
/// the host's) with its logs under `log_dir`.
pub fn host_network_pod(name: &str, log_dir: &Path) -> pb::PodSandboxConfig {
    pb::PodSandboxConfig {
        metadata: Some(pb::PodSandboxMetadata {
            name: name.to_owned(),
            uid: format!("uid-{name}"),
            namespace: "kcache-e2e".to_owned(),
            attempt: 0,
        }),
        log_directory: log_dir.to_string_lossy().into_owned(),
        linux: Some(pb::LinuxPodSandboxConfig {
            security_context: Some(pb::LinuxSandboxSecurityContext {
                namespace_options: Some(pb::NamespaceOption {
                    network: pb::NamespaceMode::Node as i32,
                    pid: pb::NamespaceMode::Pod as i32,
                    ipc: pb::NamespaceMode::Pod as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A container of `image` running `command` (relative log path `<name>.log`).
pub fn container(name: &str, image: &str, command: &[&str]) -> pb::ContainerConfig {
    pb::ContainerConfig {
        metadata: Some(pb::ContainerMetadata {
            name: name.to_owned(),
            attempt: 0,
        }),
        image: Some(image_spec(image)),
        command: command.iter().map(|s| (*s).to_owned()).collect(),
        log_path: format!("{name}.log"),
        linux: Some(pb::LinuxContainerConfig::default()),
        ..Default::default()
    }
}

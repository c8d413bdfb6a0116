//! The two inputs of an OCI hook: the container state on stdin and the bundle's `config.json`.
//! Only the fields the hook reads are parsed; everything else is ignored.

use std::{
    collections::BTreeMap,
    io::Read,
    path::{Path, PathBuf},
};

use serde::Deserialize;

/// Largest state document read from stdin (runc's is well under 4 KiB plus annotations).
const MAX_STATE_BYTES: u64 = 1 << 20;
/// Largest `config.json` read (specs with many mounts and env vars stay far below).
const MAX_CONFIG_BYTES: u64 = 16 << 20;

/// The OCI state a runtime passes to a hook on stdin.
#[derive(Debug, Clone, Deserialize)]
pub struct State {
    /// The container id.
    pub id: String,
    /// `creating`, `created`, `running` or `stopped`.
    #[serde(default)]
    pub status: String,
    /// The container's init process (0 or absent once it is gone, e.g. in poststop).
    #[serde(default)]
    pub pid: Option<i32>,
    /// The bundle directory (absolute).
    pub bundle: PathBuf,
    /// The spec's annotations. runc and crun pass them; absent when the spec has none, or with a
    /// runtime that does not pass them, so `None` means "read config.json".
    #[serde(default)]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// The parts of the runtime spec (`config.json`) the hook reads.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Spec {
    /// The root filesystem.
    #[serde(default)]
    pub root: Option<Root>,
    /// The container process.
    #[serde(default)]
    pub process: Option<Process>,
    /// Annotations.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// Linux specifics.
    #[serde(default)]
    pub linux: Option<Linux>,
}

/// `root`.
#[derive(Debug, Clone, Deserialize)]
pub struct Root {
    /// The rootfs: absolute, or relative to the bundle.
    pub path: PathBuf,
}

/// `process`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Process {
    /// `KEY=value` strings.
    #[serde(default)]
    pub env: Vec<String>,
    /// The user the process runs as.
    #[serde(default)]
    pub user: User,
}

/// `process.user`.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
pub struct User {
    /// uid inside the container.
    #[serde(default)]
    pub uid: u32,
    /// gid inside the container.
    #[serde(default)]
    pub gid: u32,
}

/// `linux`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Linux {
    /// Namespaces the container gets.
    #[serde(default)]
    pub namespaces: Vec<Namespace>,
    /// User namespace uid mappings.
    #[serde(default, rename = "uidMappings")]
    pub uid_mappings: Vec<IdMapping>,
    /// User namespace gid mappings.
    #[serde(default, rename = "gidMappings")]
    pub gid_mappings: Vec<IdMapping>,
}

/// One `linux.namespaces` entry.
#[derive(Debug, Clone, Deserialize)]
pub struct Namespace {
    /// `mount`, `pid`, ...
    #[serde(rename = "type")]
    pub kind: String,
}

/// One id mapping of a user namespace.
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct IdMapping {
    /// First id inside the container.
    #[serde(rename = "containerID")]
    pub container_id: u32,
    /// First id on the host.
    #[serde(rename = "hostID")]
    pub host_id: u32,
    /// How many.
    pub size: u32,
}

/// Reading the hook's inputs failed.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// stdin could not be read or is too large.
    #[error("cannot read the OCI state from stdin")]
    Stdin(#[source] std::io::Error),
    /// stdin is not an OCI state.
    #[error("stdin is not an OCI state document")]
    State(#[source] serde_json::Error),
    /// config.json could not be read.
    #[error("cannot read {}", .path.display())]
    ConfigRead {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// config.json is not a runtime spec.
    #[error("{} is not a runtime spec", .path.display())]
    Config {
        /// The file.
        path: PathBuf,
        /// Why.
        source: serde_json::Error,
    },
}

/// Reads and parses the state from `input` (stdin).
pub fn read_state(input: impl Read) -> Result<State, InputError> {
    let mut buf = Vec::with_capacity(4096);
    input
        .take(MAX_STATE_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(InputError::Stdin)?;
    if buf.len() as u64 > MAX_STATE_BYTES {
        return Err(InputError::Stdin(std::io::Error::other("state is larger than 1 MiB")));
    }
    serde_json::from_slice(&buf).map_err(InputError::State)
}

/// Reads `<bundle>/config.json`.
pub fn read_spec(bundle: &Path) -> Result<Spec, InputError> {
    let path = bundle.join("config.json");
    let read_err = |source| InputError::ConfigRead {
        path: path.clone(),
        source,
    };
    let file = std::fs::File::open(&path).map_err(read_err)?;
    let mut buf = Vec::new();
    file.take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(read_err)?;
    if buf.len() as u64 > MAX_CONFIG_BYTES {
        return Err(read_err(std::io::Error::other("larger than 16 MiB")));
    }
    serde_json::from_slice(&buf).map_err(|source| InputError::Config { path, source })
}

impl Spec {
    /// The rootfs path on the host: `root.path`, joined to the bundle when relative.
    pub fn rootfs(&self, bundle: &Path) -> Option<PathBuf> {
        let root = self.root.as_ref()?;
        Some(if root.path.is_absolute() {
            root.path.clone()
        } else {
            bundle.join(&root.path)
        })
    }

    /// The process env (empty without a process).
    pub fn env(&self) -> &[String] {
        self.process.as_ref().map(|p| p.env.as_slice()).unwrap_or_default()
    }

    /// The process user (root without a process).
    pub fn user(&self) -> User {
        self.process.as_ref().map(|p| p.user).unwrap_or_default()
    }

    /// Whether the container gets a mount namespace of its own.
    pub fn has_mount_namespace(&self) -> bool {
        self.linux
            .as_ref()
            .is_some_and(|l| l.namespaces.iter().any(|n| n.kind == "mount"))
    }

    /// The host uid and gid of the container's process user, through the user namespace
    /// mappings when there are any. `None` when the user is not mapped.
    pub fn host_user(&self) -> Option<(u32, u32)> {
        let user = self.user();
        let (uids, gids) = match &self.linux {
            Some(l) => (l.uid_mappings.as_slice(), l.gid_mappings.as_slice()),
            None => (&[][..], &[][..]),
        };
        Some((map_id(uids, user.uid)?, map_id(gids, user.gid)?))
    }
}

/// Maps a container id to the host through `mappings`; no mappings is the identity.
pub fn map_id(mappings: &[IdMapping], id: u32) -> Option<u32> {
    if mappings.is_empty() {
        return Some(id);
    }
    mappings.iter().find_map(|m| {
        let offset = id.checked_sub(m.container_id)?;
        (offset < m.size).then(|| m.host_id.checked_add(offset)).flatten()
    })
}

/// The value of `key` in a `KEY=value` env list (the first one, as getenv(3) finds it).
pub fn env_get<'a>(env: &'a [String], key: &str) -> Option<&'a str> {
    env.iter().find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then_some(v)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_and_spec_parse_what_runc_writes() {
        let state = read_state(
            &br#"{"ociVersion":"1.0.2-dev","id":"c1","status":"creating","pid":4242,"bundle":"/b","annotations":{"kcache.dev/cache":"llama"}}"#[..],
        )
        .unwrap();
        assert_eq!((state.id.as_str(), state.pid), ("c1", Some(4242)));
        assert_eq!(state.annotations.unwrap()["kcache.dev/cache"], "llama");
        let state = read_state(&br#"{"ociVersion":"1.0.2","id":"c1","status":"stopped","bundle":"/b"}"#[..]).unwrap();
        assert!(state.annotations.is_none() && state.pid.is_none());
        assert!(matches!(read_state(&b"{"[..]), Err(InputError::State(_))));

        let spec: Spec = serde_json::from_str(
            r#"{"ociVersion":"1.0.2","root":{"path":"rootfs"},"process":{"env":["PATH=/bin","HOME=/home/u","HOME=/second"],"user":{"uid":1000,"gid":100},"cwd":"/"},
                "linux":{"namespaces":[{"type":"pid"},{"type":"mount"}],"uidMappings":[{"containerID":0,"hostID":100000,"size":65536}],"gidMappings":[{"containerID":0,"hostID":200000,"size":65536}]}}"#,
        )
        .unwrap();
        assert_eq!(spec.rootfs(Path::new("/b")).unwrap(), Path::new("/b/rootfs"));
        assert_eq!(env_get(spec.env(), "HOME"), Some("/home/u"));
        assert_eq!(env_get(spec.env(), "HOM"), None);
        assert!(spec.has_mount_namespace());
        assert_eq!(spec.host_user(), Some((101000, 200100)));
    }

    #[test]
    fn id_mapping_edges() {
        let m = [IdMapping {
            container_id: 0,
            host_id: 1000,
            size: 10,
        }];
        assert_eq!(map_id(&m, 0), Some(1000));
        assert_eq!(map_id(&m, 9), Some(1009));
        assert_eq!(map_id(&m, 10), None);
        assert_eq!(map_id(&[], 7), Some(7));
        let top = [IdMapping {
            container_id: 0,
            host_id: u32::MAX,
            size: 2,
        }];
        assert_eq!(map_id(&top, 1), None);
    }
}

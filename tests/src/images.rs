//! Runnable images for the container E2E tests, built in memory and pushed to a
//! [`TestRegistry`]: Debian's static busybox as `/bin/busybox` (with `sh`, `sleep`, … links),
//! OCI manifests with uncompressed layers, and single-platform indexes.

use kcache_core::digest::Digest;

use crate::TestRegistry;

const BUSYBOX: &str = "/bin/busybox";
/// The applets the tests use, as links to `/bin/busybox`.
const APPLETS: &[&str] = &["sh", "sleep", "echo", "cat", "ls", "true"];

/// An image to push.
#[derive(Clone, Debug, Default)]
pub struct Image {
    /// Uncompressed layer tars, base first.
    pub layers: Vec<Vec<u8>>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
}

/// What [`Image::push`] pushed.
#[derive(Clone, Debug)]
pub struct Pushed {
    pub digest: Digest,
    pub manifest: Vec<u8>,
}

/// Whether Debian's static busybox is installed (`apt-get install -y busybox-static`).
pub fn have_busybox_static() -> bool {
    std::fs::read(BUSYBOX)
        // A dynamic busybox would need a libc in the image: a static one has no PT_INTERP.
        .map(|elf| !elf.windows(b"/lib64/ld-linux".len()).any(|w| w == b"/lib64/ld-linux"))
        .unwrap_or(false)
}

fn header(path: &str, kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_path(path).expect("tar path");
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(size);
    h
}

/// A layer with `/bin/busybox`, its applet links, `/tmp` and `/etc/kcache-e2e` = `marker` + newline.
pub fn busybox_layer(marker: &str) -> Vec<u8> {
    let busybox = std::fs::read(BUSYBOX).expect("busybox-static is not installed (apt-get install -y busybox-static)");
    let mut b = tar::Builder::new(Vec::new());
    for (dir, mode) in [
        ("bin/", 0o755),
        ("tmp/", 0o1777),
        ("etc/", 0o755),
        ("proc/", 0o755),
        ("dev/", 0o755),
    ] {
        let mut h = header(dir, tar::EntryType::Directory, mode, 0);
        h.set_cksum();
        b.append(&h, std::io::empty()).expect("tar dir");
    }
    let mut h = header("bin/busybox", tar::EntryType::Regular, 0o755, busybox.len() as u64);
    h.set_cksum();
    b.append(&h, busybox.as_slice()).expect("tar busybox");
    for applet in APPLETS {
        let mut h = header(&format!("bin/{applet}"), tar::EntryType::Symlink, 0o777, 0);
        h.set_link_name("busybox").expect("link name");
        h.set_cksum();
        b.append(&h, std::io::empty()).expect("tar link");
    }
    // One line: the CRI logger holds a partial line back until the container exits.
    let marker = format!("{marker}\n");
    let mut h = header("etc/kcache-e2e", tar::EntryType::Regular, 0o644, marker.len() as u64);
    h.set_cksum();
    b.append(&h, marker.as_bytes()).expect("tar marker");
    b.into_inner().expect("tar")
}

/// A layer holding one file `/data/<name>` of `size` incompressible pseudo-random bytes.
pub fn random_layer(name: &str, seed: u64, size: usize) -> Vec<u8> {
    let mut data = vec![0u8; size];
    let mut x = seed | 1;
    for chunk in data.chunks_mut(8) {
        // xorshift64*
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        let v = x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
        chunk.copy_from_slice(&v[..chunk.len()]);
    }
    let mut b = tar::Builder::new(Vec::new());
    let mut h = header("data/", tar::EntryType::Directory, 0o755, 0);
    h.set_cksum();
    b.append(&h, std::io::empty()).expect("tar dir");
    let mut h = header(&format!("data/{name}"), tar::EntryType::Regular, 0o644, size as u64);
    h.set_cksum();
    b.append(&h, data.as_slice()).expect("tar data");
    b.into_inner().expect("tar")
}

impl Image {
    /// A busybox image running `entrypoint` (e.g. `["/bin/busybox", "sleep", "3600"]`).
    pub fn busybox(marker: &str, entrypoint: &[&str]) -> Self {
        Self {
            layers: vec![busybox_layer(marker)],
            entrypoint: entrypoint.iter().map(|s| (*s).to_owned()).collect(),
            cmd: Vec::new(),
        }
    }

    /// Pushes the blobs and an OCI manifest under `repo_tag` (`repo:tag`).
    pub async fn push(&self, reg: &TestRegistry, repo_tag: &str) -> Pushed {
        let client = reg.client();
        let r = reg.reference(repo_tag);
        let mut layers = Vec::new();
        for layer in &self.layers {
            let d = client.push_blob(&r, layer).await.expect("push layer");
            layers.push((d, layer.len()));
        }
        let config = serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {
                "Entrypoint": self.entrypoint,
                "Cmd": if self.cmd.is_empty() { serde_json::Value::Null } else { serde_json::json!(self.cmd) },
                "Env": ["PATH=/bin"],
                "WorkingDir": "/",
            },
            "rootfs": {
                "type": "layers",
                "diff_ids": layers.iter().map(|(d, _)| d.to_string()).collect::<Vec<_>>(),
            },
        })
        .to_string();
        let cd = client.push_blob(&r, config.as_bytes()).await.expect("push config");
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd.to_string(), "size": config.len()},
            "layers": layers.iter().map(|(d, size)| serde_json::json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": d.to_string(),
                "size": size,
            })).collect::<Vec<_>>(),
        })
        .to_string()
        .into_bytes();
        let digest = push_manifest(reg, repo_tag, "application/vnd.oci.image.manifest.v1+json", &manifest).await;
        Pushed { digest, manifest }
    }
}

/// Pushes raw manifest bytes under `repo_tag` (for re-tagging one image's manifest as another).
pub async fn push_manifest(reg: &TestRegistry, repo_tag: &str, media_type: &str, bytes: &[u8]) -> Digest {
    let r = reg.reference(repo_tag);
    reg.client()
        .push_manifest(&r, &r.reference(), media_type, bytes)
        .await
        .expect("push manifest")
}

/// Pushes an OCI index with one linux/amd64 entry, `image` (already in the same repository).
pub async fn push_index(reg: &TestRegistry, repo_tag: &str, image: &Pushed) -> Digest {
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": image.digest.to_string(),
            "size": image.manifest.len(),
            "platform": {"architecture": "amd64", "os": "linux"},
        }],
    })
    .to_string();
    push_manifest(
        reg,
        repo_tag,
        "application/vnd.oci.image.index.v1+json",
        index.as_bytes(),
    )
    .await
}

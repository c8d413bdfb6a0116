//! A synthetic node store for tests: the layout kcached writes (`state.json`, `<hex>/record.json`,
//! `<hex>/tree/`), with a small Triton cache holding one kernel and its `__grp__` file whose
//! child paths are absolute under the build root, as Triton writes them.

use std::{
    fs,
    path::{Path, PathBuf},
};

use kcache_core::{
    cache::{
        meta::{Arch, Backend, CacheTarget, Gpu, GpuInventory, InventorySource},
        store::{CacheRecord, CacheState, CacheStatus, NodeCaches, StoreLayout, VerificationRecord},
    },
    digest::Digest,
    fsutil::write_atomic,
    gpu::compat::CacheRequirements,
};

/// The Triton cache key dir of the fixture kernel.
pub const KEY: &str = "7CLRBQYZ4ZU6KQEBOGNPTWNT4HHLDPGUYOQXTRAEPSC5BQPWPUHA";
/// The kernel's files (besides its `__grp__` file).
pub const FILES: [&str; 3] = ["add_kernel.json", "add_kernel.cubin", "add_kernel.ttir"];
/// The group file.
pub const GRP_FILE: &str = "__grp__add_kernel.json";
/// Where the fixture caches were "built".
pub const BUILD_ROOT: &str = "/build/.triton/cache";

/// How [`FakeStore::add_cache_with`] makes an entry; [`Default`] is what
/// [`FakeStore::add_cache`] makes.
#[derive(Debug, Clone)]
pub struct CacheSpec<'a> {
    /// One CUDA target per compute capability.
    pub archs: &'a [u32],
    /// The dir the `__grp__` child paths name (where Triton wrote the cache).
    pub grp_root: &'a str,
    /// The record's build-cache-root (from the image label); `None`: an image without it.
    pub label: Option<&'a str>,
    /// The Triton version the record says the cache was built with.
    pub triton_version: Option<&'a str>,
    /// `triton` or `vllm` (kept under `io.vllm.cache`).
    pub kind: &'a str,
}

impl Default for CacheSpec<'_> {
    fn default() -> Self {
        Self {
            archs: &[90],
            grp_root: BUILD_ROOT,
            label: Some(BUILD_ROOT),
            triton_version: None,
            kind: "triton",
        }
    }
}

/// A store under one directory: `<base>/store` and `<base>/run`.
#[derive(Debug, Clone)]
pub struct FakeStore {
    /// The layout.
    pub layout: StoreLayout,
}

fn write(path: &Path, data: &[u8]) {
    if let Some(p) = path.parent() {
        fs::create_dir_all(p).expect("create fixture dir");
    }
    write_atomic(path, data, 0o644, true).expect("write fixture file");
}

impl FakeStore {
    /// An empty store under `base`, with an inventory of one sm_90 GPU.
    pub fn new(base: &Path) -> Self {
        let layout = StoreLayout::new(base.join("store"), base.join("run"));
        fs::create_dir_all(layout.root()).expect("store root");
        fs::create_dir_all(layout.run_dir()).expect("run dir");
        let s = Self { layout };
        s.set_gpus(&[90]);
        s
    }

    /// Writes `gpus.json` with one CUDA GPU per compute capability in `archs`.
    pub fn set_gpus(&self, archs: &[u32]) {
        let inv = GpuInventory {
            source: InventorySource::File,
            gpus: archs
                .iter()
                .enumerate()
                .map(|(i, cc)| Gpu {
                    id: format!("GPU-{i}"),
                    index: i as u32,
                    name: format!("Test sm_{cc}"),
                    backend: Backend::Cuda,
                    arch: Arch::Cuda(*cc),
                    warp_size: 32,
                    driver_version: None,
                    cuda_driver_version: None,
                })
                .collect(),
            notes: vec![],
        };
        write(
            &self.layout.gpus_path(),
            &serde_json::to_vec(&inv).expect("serialize inventory"),
        );
    }

    /// The state file as it is.
    pub fn state(&self) -> NodeCaches {
        self.layout.read_state().expect("read fixture state")
    }

    /// Rewrites the state file through `f`.
    pub fn update_state(&self, f: impl FnOnce(&mut NodeCaches)) {
        let mut s = self.state();
        f(&mut s);
        s.generation += 1;
        write(
            &self.layout.state_path(),
            &serde_json::to_vec(&s).expect("serialize state"),
        );
    }

    /// Adds an extracted, verified cache entry with kernels for `archs`, approved as `name` (in
    /// `namespace`, or cluster-wide) and ready. `n` makes the digest unique. Returns the digest.
    pub fn add_cache(&self, name: &str, namespace: Option<&str>, archs: &[u32], n: u32) -> Digest {
        self.add_cache_with(
            name,
            namespace,
            n,
            CacheSpec {
                archs,
                ..CacheSpec::default()
            },
        )
    }

    /// [`FakeStore::add_cache`] as `spec` says.
    pub fn add_cache_with(&self, name: &str, namespace: Option<&str>, n: u32, spec: CacheSpec<'_>) -> Digest {
        let digest = Digest::parse(&format!("sha256:{n:064x}")).expect("fixture digest");
        let subdir = if spec.kind == "vllm" {
            "io.vllm.cache"
        } else {
            "io.triton.cache"
        };
        let cache = self.layout.tree_dir(&digest).join(subdir);
        let kdir = cache.join(KEY);
        for f in FILES {
            write(&kdir.join(f), format!("{f} of cache {n}\n").as_bytes());
        }
        let root = spec.grp_root.trim_end_matches('/');
        let children: serde_json::Map<String, serde_json::Value> = FILES
            .iter()
            .map(|f| (f.to_string(), format!("{root}/{KEY}/{f}").into()))
            .collect();
        write(
            &kdir.join(GRP_FILE),
            &serde_json::to_vec(&serde_json::json!({ "child_paths": children })).expect("grp json"),
        );
        let record = CacheRecord {
            digest: digest.clone(),
            image: format!("registry.test/caches/{name}@{digest}"),
            kind: spec.kind.into(),
            targets: spec
                .archs
                .iter()
                .map(|cc| CacheTarget {
                    backend: Backend::Cuda,
                    arch: Arch::Cuda(*cc),
                    warp_size: 32,
                })
                .collect(),
            requirements: CacheRequirements {
                min_driver_version: None,
                triton_version: spec.triton_version.map(Into::into),
            },
            build_cache_root: spec.label.map(Into::into),
            cache_subdir: subdir.into(),
            files: 4,
            bytes: 100,
            extracted_at: 1,
            verification: VerificationRecord {
                rule: "caches".into(),
                decision: "verified".into(),
                signer: Some("test-key".into()),
                tlog_index: None,
                verified_at: 1,
                policy_generation: 1,
            },
        };
        write(
            &self.layout.record_path(&digest),
            &serde_json::to_vec(&record).expect("record json"),
        );
        self.approve(name, namespace, Some(&digest), CacheState::Ready);
        digest
    }

    /// Sets (or adds) the state entry for `name` in `namespace`.
    pub fn approve(&self, name: &str, namespace: Option<&str>, digest: Option<&Digest>, state: CacheState) {
        self.update_state(|s| {
            s.caches
                .retain(|c| !(c.name == name && c.namespace.as_deref() == namespace));
            s.caches.push(CacheStatus {
                name: name.into(),
                namespace: namespace.map(Into::into),
                image: format!("registry.test/caches/{name}:v1"),
                state,
                digest: digest.cloned(),
                reason: (state != CacheState::Ready).then(|| "fixture says so".to_string()),
                compatible_gpus: vec![],
                incompatible_gpus: vec![],
                updated_at: 1,
            });
        });
    }

    /// Edits an entry's record.
    pub fn update_record(&self, digest: &Digest, f: impl FnOnce(&mut CacheRecord)) {
        let mut r = self
            .layout
            .read_record(digest)
            .expect("read record")
            .expect("record exists");
        f(&mut r);
        write(
            &self.layout.record_path(digest),
            &serde_json::to_vec(&r).expect("record json"),
        );
    }

    /// `<run>/containers`.
    pub fn containers_dir(&self) -> PathBuf {
        self.layout.run_dir().join("containers")
    }
}

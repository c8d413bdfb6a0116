//! Scanning a Triton cache directory as Triton writes it.
//!
//! Triton's `FileCacheManager` (python/triton/runtime/cache.py) keeps one directory per
//! compilation under `$TRITON_CACHE_DIR` (default `~/.triton/cache`), named by the base32 of a
//! sha256 key. `compile()` (python/triton/compiler/compiler.py) puts there one file per stage,
//! `<name>.ttir`, `.ttgir`, `.llir`, `.ptx` + `.cubin` (CUDA) or `.amdgcn` + `.hsaco` (HIP),
//! the metadata `<name>.json` (`{"hash", "target": {"backend", "arch", "warp_size"}, "name",
//! "num_warps", "num_stages", ...options}`; CUDA `arch` is an int, HIP a gfx string), and
//! `__grp__<name>.json` = `{"child_paths": {"<name>.<ext>": "<absolute path>"}}`, which is what
//! a cache lookup reads: children whose absolute path does not exist are dropped, so a cache
//! mounted elsewhere misses unless those paths are rewritten ([`super::grp`]).
//! Launchers are cached the same way (`__triton_launcher.so`).
//!
//! vLLM caches nest Triton caches (`torch_compile_cache/<hash>/rank_0_0/triton_cache/`), so the
//! scan walks the whole tree. Triton's in-flight temp dirs (`tmp.pid_*`) are skipped. Metadata of
//! Triton before 3.0 has no `target` and is not counted as a kernel.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::cache::{
    format::{parse_arch, parse_backend, CacheKind},
    meta::{CacheSummary, CacheTarget},
};

/// Largest metadata JSON read (real ones are a few KiB).
const MAX_METADATA_BYTES: u64 = 1 << 20;

/// Why a cache directory could not be scanned.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// A directory or file could not be read.
    #[error("failed to read triton cache {path}")]
    Read {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Something other than a plain file or directory (a symlink, a socket...).
    #[error("triton cache entry {0} is not a plain file or directory")]
    NotPlain(PathBuf),
    /// A file name is not UTF-8.
    #[error("triton cache entry {0:?} has a name that is not utf-8")]
    NotUtf8(PathBuf),
}

type Result<T> = std::result::Result<T, ScanError>;

/// One compiled kernel: a metadata `<name>.json` with a `target`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kernel {
    /// The metadata file, relative to the cache root, `/`-separated.
    pub path: String,
    /// Kernel name.
    pub name: String,
    /// Triton's cache hash, when recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
    /// The compile target.
    pub target: CacheTarget,
    /// `num_warps`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_warps: Option<u32>,
    /// `num_stages`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_stages: Option<u32>,
    /// `ptx_version` (CUDA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ptx_version: Option<u32>,
    /// `triton_version`, when the metadata records it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub triton_version: Option<String>,
}

/// What a scan found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TritonScan {
    /// Every kernel, sorted by path.
    pub kernels: Vec<Kernel>,
    /// Every regular file, relative and `/`-separated, sorted, with its size.
    pub files: Vec<(String, u64)>,
    /// Every directory, relative and `/`-separated, sorted (parents first).
    pub dirs: Vec<String>,
}

#[derive(Deserialize)]
struct RawMetadata {
    target: Option<RawTarget>,
    name: Option<String>,
    hash: Option<String>,
    num_warps: Option<u32>,
    num_stages: Option<u32>,
    ptx_version: Option<u32>,
    triton_version: Option<String>,
}

#[derive(Deserialize)]
struct RawTarget {
    backend: String,
    arch: serde_json::Value,
    warp_size: u32,
}

impl TritonScan {
    /// Kernels found (the `entry-count` label).
    pub fn entry_count(&self) -> u64 {
        self.kernels.len() as u64
    }

    /// Total bytes of regular files (the `cache-size-bytes` label).
    pub fn size_bytes(&self) -> u64 {
        self.files.iter().map(|(_, s)| s).sum()
    }

    /// The targets, deduplicated, in first-seen order (kernels are sorted by path).
    pub fn summary(&self) -> CacheSummary {
        let mut targets: Vec<CacheTarget> = Vec::new();
        for k in &self.kernels {
            if !targets.contains(&k.target) {
                targets.push(k.target.clone());
            }
        }
        CacheSummary { targets }
    }

    /// The Triton version, if any kernel records one (the first, by path).
    pub fn triton_version(&self) -> Option<String> {
        self.kernels.iter().find_map(|k| k.triton_version.clone())
    }

    /// Every Triton version the kernels record, sorted, each once.
    pub fn triton_versions(&self) -> Vec<String> {
        let mut v: Vec<String> = self.kernels.iter().filter_map(|k| k.triton_version.clone()).collect();
        v.sort();
        v.dedup();
        v
    }

    /// `io.triton.manifest/manifest.json`, in MCV's shape (`{"triton": [entries]}`, entries with
    /// `hash`, `backend`, `arch` as a string, `warp_size`, `ptx_version`, `num_stages`,
    /// `num_warps`), plus kcache's `name` and `path` per entry. MCV's `dummy_key` is not written.
    pub fn manifest_json(&self, kind: CacheKind) -> Vec<u8> {
        let entries: Vec<_> = self
            .kernels
            .iter()
            .map(|k| {
                let arch = match &k.target.arch {
                    crate::cache::meta::Arch::Cuda(cc) => cc.to_string(),
                    crate::cache::meta::Arch::Gfx(g) => g.clone(),
                };
                let mut e = serde_json::json!({
                    "hash": k.hash.clone().unwrap_or_default(),
                    "backend": k.target.backend,
                    "arch": arch,
                    "warp_size": k.target.warp_size,
                    "name": k.name,
                    "path": k.path,
                });
                for (key, v) in [
                    ("num_warps", k.num_warps),
                    ("num_stages", k.num_stages),
                    ("ptx_version", k.ptx_version),
                ] {
                    if let Some(v) = v {
                        e[key] = v.into();
                    }
                }
                e
            })
            .collect();
        let mut out = serde_json::to_vec_pretty(&serde_json::json!({ kind.name(): entries })).unwrap_or_default();
        out.push(b'\n');
        out
    }
}

/// Scans the cache rooted at `root`.
pub fn scan_dir(root: &Path) -> Result<TritonScan> {
    let mut scan = TritonScan::default();
    walk(root, "", &mut scan)?;
    scan.files.sort();
    scan.dirs.sort();
    scan.kernels.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(scan)
}

fn walk(dir: &Path, rel: &str, scan: &mut TritonScan) -> Result<()> {
    let read = |source| ScanError::Read {
        path: dir.to_path_buf(),
        source,
    };
    let mut entries = fs::read_dir(dir)
        .map_err(read)?
        .collect::<io::Result<Vec<_>>>()
        .map_err(read)?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let name = e
            .file_name()
            .into_string()
            .map_err(|_| ScanError::NotUtf8(path.clone()))?;
        let child = if rel.is_empty() {
            name.clone()
        } else {
            format!("{rel}/{name}")
        };
        let ft = e.file_type().map_err(|source| ScanError::Read {
            path: path.clone(),
            source,
        })?;
        if ft.is_dir() {
            if name.starts_with("tmp.pid_") {
                continue; // a compile in flight when the cache was copied
            }
            scan.dirs.push(child.clone());
            walk(&path, &child, scan)?;
        } else if ft.is_file() {
            let len = e
                .metadata()
                .map_err(|source| ScanError::Read {
                    path: path.clone(),
                    source,
                })?
                .len();
            scan.files.push((child.clone(), len));
            if name.ends_with(".json") && !name.starts_with("__grp__") && len <= MAX_METADATA_BYTES {
                let bytes = fs::read(&path).map_err(|source| ScanError::Read {
                    path: path.clone(),
                    source,
                })?;
                if let Some(k) = kernel_from_metadata(&child, &name, &bytes) {
                    scan.kernels.push(k);
                }
            }
        } else {
            return Err(ScanError::NotPlain(path));
        }
    }
    Ok(())
}

/// A kernel from a metadata file; `None` when the JSON is not Triton kernel metadata (vLLM keeps
/// other JSON files in its cache, and pre-3.0 Triton wrote no `target`).
fn kernel_from_metadata(path: &str, file_name: &str, bytes: &[u8]) -> Option<Kernel> {
    let m: RawMetadata = serde_json::from_slice(bytes).ok()?;
    let t = m.target?;
    let backend = parse_backend(&t.backend)?;
    let arch = parse_arch(backend, &t.arch)?;
    Some(Kernel {
        path: path.to_string(),
        name: m
            .name
            .unwrap_or_else(|| file_name.trim_end_matches(".json").to_string()),
        hash: m.hash,
        target: CacheTarget {
            backend,
            arch,
            warp_size: t.warp_size,
        },
        num_warps: m.num_warps,
        num_stages: m.num_stages,
        ptx_version: m.ptx_version,
        triton_version: m.triton_version,
    })
}

#[cfg(test)]
pub(crate) mod fixtures {
    //! A realistic Triton cache: two CUDA kernels (sm_90, sm_80), one HIP kernel (gfx942), with
    //! `__grp__` files pointing at absolute paths under the cache root, as Triton 3.x writes them.
    //! Triton 3.x records its `__version__` in each kernel's metadata (`compile()` in
    //! python/triton/compiler/compiler.py: `metadata["triton_version"] = __version__`); the CUDA
    //! kernels here carry it, the HIP one does not (as from an older Triton), so the scan must
    //! take it from the kernels that have it.
    use std::{fs, path::Path};

    /// Key dirs as Triton names them (base32 of a sha256, 52 chars).
    pub const KEY_H100: &str = "QWJ3OZ3CR4HNZ6LOHG7LYCUUQYZFXAY6SY62SNYRVQHW3G4FOCLQ";
    /// An sm_80 kernel.
    pub const KEY_A100: &str = "7CLRBQYZ4ZU6KQEBOGNPTWNT4HHLDPGUYOQXTRAEPSC5BQPWPUHA";
    /// A gfx942 kernel.
    pub const KEY_MI300: &str = "CLGERUUZRLHT73J2VAUCCDR5ZG34VIZXGHFLZH6HGZRILMOKHGQQ";

    fn cuda_meta(hash: &str, name: &str, arch: u32) -> String {
        format!(
            r#"{{"hash": "{hash}", "target": {{"backend": "cuda", "arch": {arch}, "warp_size": 32}}, "num_warps": 4, "num_ctas": 1, "num_stages": 3, "num_buffers_warp_spec": 0, "num_consumer_groups": 0, "reg_dec_producer": 0, "reg_inc_consumer": 0, "maxnreg": null, "cluster_dims": [1, 1, 1], "ptx_version": null, "enable_fp_fusion": true, "launch_cooperative_grid": false, "supported_fp8_dtypes": ["fp8e4b15", "fp8e4nv", "fp8e5"], "deprecated_fp8_dtypes": ["fp8e4b15"], "default_dot_input_precision": "tf32", "allowed_dot_input_precisions": ["tf32", "tf32x3", "ieee"], "max_num_imprecise_acc_default": 1073741824, "extern_libs": [["libdevice", "/usr/local/lib/python3.12/dist-packages/triton/backends/nvidia/lib/libdevice.10.bc"]], "debug": false, "backend_name": "cuda", "sanitize_overflow": true, "arch": "sm{arch}", "triton_version": "3.3.1", "shared": 0, "tmem_size": 0, "global_scratch_size": 0, "global_scratch_align": 1, "name": "{name}"}}"#
        )
    }

    fn hip_meta(hash: &str, name: &str) -> String {
        format!(
            r#"{{"hash": "{hash}", "target": {{"backend": "hip", "arch": "gfx942", "warp_size": 64}}, "num_warps": 4, "waves_per_eu": 1, "num_stages": 2, "num_ctas": 1, "extern_libs": [["ocml", "/opt/rocm/lib/ocml.bc"], ["ockl", "/opt/rocm/lib/ockl.bc"]], "cluster_dims": [1, 1, 1], "debug": false, "sanitize_overflow": true, "arch": "gfx942", "supported_fp8_dtypes": ["fp8e4nv", "fp8e5"], "default_dot_input_precision": "ieee", "allowed_dot_input_precisions": ["ieee"], "enable_fp_fusion": true, "matrix_instr_nonkdim": 0, "kpack": 1, "allow_flush_denorm": false, "max_num_imprecise_acc_default": 0, "backend_name": "hip", "instruction_sched_variant": "none", "warp_size": 64, "shared": 0, "name": "{name}"}}"#
        )
    }

    fn kernel(root: &Path, key: &str, name: &str, meta: String, exts: &[&str]) {
        let dir = root.join(key);
        fs::create_dir_all(&dir).unwrap();
        let mut children = serde_json::Map::new();
        for ext in exts {
            let file = format!("{name}.{ext}");
            let body = if *ext == "json" {
                meta.clone().into_bytes()
            } else {
                format!("{ext} of {name}\n").into_bytes()
            };
            fs::write(dir.join(&file), body).unwrap();
            children.insert(file.clone(), dir.join(&file).to_str().unwrap().into());
        }
        let grp = serde_json::json!({ "child_paths": children });
        fs::write(
            dir.join(format!("__grp__{name}.json")),
            serde_json::to_vec(&grp).unwrap(),
        )
        .unwrap();
    }

    /// `cp -r` of a tree of plain files and dirs (a cache copied before it is built into an
    /// image: its `__grp__` files still name the dir Triton wrote them in).
    pub fn copy_tree(from: &Path, to: &Path) {
        fs::create_dir_all(to).unwrap();
        for e in fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            let dest = to.join(e.file_name());
            if e.file_type().unwrap().is_dir() {
                copy_tree(&e.path(), &dest);
            } else {
                fs::copy(e.path(), dest).unwrap();
            }
        }
    }

    /// Writes the cache under `root` (which should be absolute, as Triton's is).
    pub fn write_cache(root: &Path) {
        kernel(
            root,
            KEY_H100,
            "matmul_kernel",
            cuda_meta("a1f3", "matmul_kernel", 90),
            &["ttir", "ttgir", "llir", "ptx", "cubin", "json"],
        );
        kernel(
            root,
            KEY_A100,
            "add_kernel",
            cuda_meta("b2e4", "add_kernel", 80),
            &["ttir", "ttgir", "llir", "ptx", "cubin", "json"],
        );
        kernel(
            root,
            KEY_MI300,
            "add_kernel",
            hip_meta("c3d5", "add_kernel"),
            &["ttir", "ttgir", "llir", "amdgcn", "hsaco", "json"],
        );
        // A launcher, cached by Triton under its own key, and a compile that was in flight.
        let launcher = root.join("K4QNJ3ZXG6RAMWO3M7VWBPOD2LA4FZ4HGJ4HRL3GX6RIQT5J6T3Q");
        fs::create_dir_all(&launcher).unwrap();
        fs::write(launcher.join("__triton_launcher.so"), b"\x7fELF launcher").unwrap();
        let tmp = root
            .join(KEY_H100)
            .join("tmp.pid_4242_0b6e2f0e-6c1f-4c43-9d0b-6f1a0f3b5d11");
        fs::create_dir_all(&tmp).unwrap();
        fs::write(tmp.join("matmul_kernel.cubin"), b"partial").unwrap();
    }
}

#[cfg(test)]
mod tests {
    use super::{fixtures::*, *};
    use crate::cache::meta::{Arch, Backend};

    #[test]
    fn scan_finds_kernels_targets_sizes_and_version() {
        let dir = tempfile::tempdir().unwrap();
        write_cache(dir.path());
        let scan = scan_dir(dir.path()).unwrap();
        assert_eq!(scan.entry_count(), 3);
        let targets = scan.summary().targets;
        assert_eq!(
            targets,
            vec![
                CacheTarget {
                    backend: Backend::Cuda,
                    arch: Arch::Cuda(80),
                    warp_size: 32
                },
                CacheTarget {
                    backend: Backend::Hip,
                    arch: Arch::Gfx("gfx942".into()),
                    warp_size: 64
                },
                CacheTarget {
                    backend: Backend::Cuda,
                    arch: Arch::Cuda(90),
                    warp_size: 32
                },
            ]
        );
        assert_eq!(scan.triton_version().as_deref(), Some("3.3.1"));
        assert_eq!(scan.triton_versions(), ["3.3.1"]);
        // 3 kernels x (6 files + __grp__) + the launcher; the tmp.pid_ dir is skipped.
        assert_eq!(scan.files.len(), 22);
        assert!(scan.files.iter().all(|(p, _)| !p.contains("tmp.pid_")));
        let on_disk: u64 = scan
            .files
            .iter()
            .map(|(p, _)| fs::metadata(dir.path().join(p)).unwrap().len())
            .sum();
        assert_eq!(scan.size_bytes(), on_disk);
        assert_eq!(scan.dirs.len(), 4);
    }

    #[test]
    fn manifest_is_mcv_shaped() {
        let dir = tempfile::tempdir().unwrap();
        write_cache(dir.path());
        let m: serde_json::Value =
            serde_json::from_slice(&scan_dir(dir.path()).unwrap().manifest_json(CacheKind::Triton)).unwrap();
        let entries = m["triton"].as_array().unwrap();
        assert_eq!(entries.len(), 3);
        let h100 = entries.iter().find(|e| e["arch"] == "90").unwrap();
        assert_eq!(h100["backend"], "cuda");
        assert_eq!(h100["hash"], "a1f3");
        assert_eq!(h100["num_warps"], 4);
        assert_eq!(h100["path"], format!("{KEY_H100}/matmul_kernel.json"));
        assert!(entries.iter().any(|e| e["arch"] == "gfx942" && e["warp_size"] == 64));
    }

    #[test]
    fn other_json_and_old_metadata_are_not_kernels() {
        assert!(kernel_from_metadata("a.json", "a.json", br#"{"child_paths": {}}"#).is_none());
        assert!(kernel_from_metadata("cache_key_factors.json", "cache_key_factors.json", b"[1,2]").is_none());
        // Triton 2.x: no target.
        assert!(kernel_from_metadata("k.json", "k.json", br#"{"num_warps":4,"cc":80,"name":"k"}"#).is_none());
        let k = kernel_from_metadata(
            "d/k.json",
            "k.json",
            br#"{"target":{"backend":"cuda","arch":86,"warp_size":32}}"#,
        )
        .unwrap();
        assert_eq!((k.name.as_str(), &k.target.arch), ("k", &Arch::Cuda(86)));
    }

    #[test]
    fn symlinks_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        write_cache(dir.path());
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join(KEY_A100).join("evil.cubin")).unwrap();
        let err = scan_dir(dir.path()).unwrap_err();
        assert!(matches!(err, ScanError::NotPlain(_)), "{err}");
        assert!(err.to_string().contains("evil.cubin"), "{err}");
    }
}

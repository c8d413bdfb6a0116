//! Does a cache fit a GPU? Per GPU: some cache target must have the GPU's backend, exactly its
//! arch and its warp size; and where the cache records the driver it was built with, the GPU's
//! driver must be at least that.
//!
//! Exact arch match on both backends: a cubin runs only on the sm it was built for (within a
//! major version a newer minor can run it, but Triton's cache key includes the target arch, so a
//! cache for sm_80 is never looked up on sm_86), and an hsaco only on its gfx target. PTX JIT
//! forward compatibility is out of scope: Triton would not find the entry anyway.

use serde::{Deserialize, Serialize};

use crate::cache::meta::{Arch, Backend, CacheTarget, Gpu};

/// What the cache records beyond its targets (from the `cache.kcache.dev/*` labels).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheRequirements {
    /// The driver version the cache was built with (e.g. NVIDIA `550.54.15`); GPUs with an older
    /// driver are incompatible. `None`: not recorded, not checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_driver_version: Option<String>,
    /// The Triton version that built the cache. Not a GPU property, so not checked here: the
    /// hook compares it with the Triton it finds in the container (kcache-hook's `triton`
    /// module) and does not mount the cache when they differ, since Triton's cache key includes
    /// its version and every kernel would miss. `None`: not recorded, not checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub triton_version: Option<String>,
}

/// Why a GPU cannot use a cache: the first check that failed, most general first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Reason {
    /// The cache has no targets at all (empty or missing summary).
    #[error("cache records no targets")]
    NoTargets,
    /// No target for the GPU's backend.
    #[error("cache has {} kernels only; GPU is {gpu}", list(cache))]
    BackendMismatch {
        /// The cache's backends.
        cache: Vec<Backend>,
        /// The GPU's backend.
        gpu: Backend,
    },
    /// The backend matches but no target has the GPU's arch.
    #[error("cache has {}; GPU is {gpu}", list(cache))]
    ArchMismatch {
        /// The cache's arches for this backend.
        cache: Vec<Arch>,
        /// The GPU's arch.
        gpu: Arch,
    },
    /// The arch matches but not the warp size.
    #[error("cache has warp size {} for {arch}; GPU runs {gpu}", list(cache))]
    WarpSizeMismatch {
        /// The arch.
        arch: Arch,
        /// The cache's warp sizes for this arch.
        cache: Vec<u32>,
        /// The GPU's warp size.
        gpu: u32,
    },
    /// The GPU's driver is older than the one the cache was built with.
    #[error("driver {gpu} is older than {cache}, which the cache was built with")]
    DriverTooOld {
        /// The cache's driver version.
        cache: String,
        /// The GPU's driver version.
        gpu: String,
    },
}

/// The verdict for every GPU.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compatibility {
    /// Ids of the GPUs that can use the cache.
    pub compatible: Vec<String>,
    /// Ids of the others, each with its reason.
    pub incompatible: Vec<(String, Reason)>,
}

/// Checks `gpus` against a cache's targets and requirements.
pub fn check(cache_targets: &[CacheTarget], cache_meta: &CacheRequirements, gpus: &[Gpu]) -> Compatibility {
    let mut out = Compatibility::default();
    for gpu in gpus {
        match check_one(cache_targets, cache_meta, gpu) {
            None => out.compatible.push(gpu.id.clone()),
            Some(r) => out.incompatible.push((gpu.id.clone(), r)),
        }
    }
    out
}

fn check_one(targets: &[CacheTarget], req: &CacheRequirements, gpu: &Gpu) -> Option<Reason> {
    if targets.is_empty() {
        return Some(Reason::NoTargets);
    }
    let same_backend: Vec<_> = targets.iter().filter(|t| t.backend == gpu.backend).collect();
    if same_backend.is_empty() {
        return Some(Reason::BackendMismatch {
            cache: dedup(targets.iter().map(|t| t.backend)),
            gpu: gpu.backend,
        });
    }
    let same_arch: Vec<_> = same_backend.iter().filter(|t| t.arch == gpu.arch).collect();
    if same_arch.is_empty() {
        return Some(Reason::ArchMismatch {
            cache: dedup(same_backend.iter().map(|t| t.arch.clone())),
            gpu: gpu.arch.clone(),
        });
    }
    if !same_arch.iter().any(|t| t.warp_size == gpu.warp_size) {
        return Some(Reason::WarpSizeMismatch {
            arch: gpu.arch.clone(),
            cache: dedup(same_arch.iter().map(|t| t.warp_size)),
            gpu: gpu.warp_size,
        });
    }
    if let (Some(want), Some(have)) = (&req.min_driver_version, &gpu.driver_version) {
        if version_less(have, want) {
            return Some(Reason::DriverTooOld {
                cache: want.clone(),
                gpu: have.clone(),
            });
        }
    }
    None
}

/// Compares dotted numeric versions (`535.104.05` < `550.54.15`); a non-numeric part compares
/// as text, so odd strings still order deterministically.
fn version_less(a: &str, b: &str) -> bool {
    let parts = |s: &str| -> Vec<(u64, String)> {
        s.split(['.', '-'])
            .map(|p| (p.parse::<u64>().unwrap_or(u64::MAX), p.to_string()))
            .collect()
    };
    parts(a) < parts(b)
}

fn dedup<T: PartialEq>(items: impl Iterator<Item = T>) -> Vec<T> {
    let mut out = Vec::new();
    for i in items {
        if !out.contains(&i) {
            out.push(i);
        }
    }
    out
}

fn list<T: std::fmt::Display>(items: &[T]) -> String {
    items.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(backend: Backend, arch: Arch, warp_size: u32) -> CacheTarget {
        CacheTarget {
            backend,
            arch,
            warp_size,
        }
    }

    fn gpu(id: &str, backend: Backend, arch: Arch, warp_size: u32, driver: Option<&str>) -> Gpu {
        Gpu {
            id: id.into(),
            index: 0,
            name: id.into(),
            backend,
            arch,
            warp_size,
            driver_version: driver.map(Into::into),
            cuda_driver_version: None,
        }
    }

    fn cuda_80_90() -> Vec<CacheTarget> {
        vec![
            t(Backend::Cuda, Arch::Cuda(80), 32),
            t(Backend::Cuda, Arch::Cuda(90), 32),
        ]
    }

    /// name, cache targets, cache requirements, the GPU, the expected reason (`Ok` = compatible).
    type Case = (
        &'static str,
        Vec<CacheTarget>,
        CacheRequirements,
        Gpu,
        Result<(), &'static str>,
    );

    #[test]
    fn each_gpu_gets_one_verdict_with_the_most_general_reason() {
        let mi300 = || Arch::Gfx("gfx942".into());
        let cases: Vec<Case> = vec![
            (
                "h100_exact",
                cuda_80_90(),
                Default::default(),
                gpu("h100", Backend::Cuda, Arch::Cuda(90), 32, None),
                Ok(()),
            ),
            (
                "a10_sm86_not_forward_compatible",
                cuda_80_90(),
                Default::default(),
                gpu("a10", Backend::Cuda, Arch::Cuda(86), 32, None),
                Err("cache has sm_80, sm_90; GPU is sm_86"),
            ),
            (
                "mi300x_on_cuda_cache",
                cuda_80_90(),
                Default::default(),
                gpu("mi300x", Backend::Hip, mi300(), 64, None),
                Err("cache has cuda kernels only; GPU is hip"),
            ),
            (
                "gfx90a_on_gfx942_cache",
                vec![t(Backend::Hip, mi300(), 64), t(Backend::Cuda, Arch::Cuda(90), 32)],
                Default::default(),
                gpu("mi210", Backend::Hip, Arch::Gfx("gfx90a".into()), 64, None),
                Err("cache has gfx942; GPU is gfx90a"),
            ),
            (
                "rdna_wave32_vs_wave64_cache",
                vec![t(Backend::Hip, Arch::Gfx("gfx1100".into()), 64)],
                Default::default(),
                gpu("rx7900", Backend::Hip, Arch::Gfx("gfx1100".into()), 32, None),
                Err("cache has warp size 64 for gfx1100; GPU runs 32"),
            ),
            (
                "driver_older_than_build",
                cuda_80_90(),
                CacheRequirements {
                    min_driver_version: Some("550.54.15".into()),
                    triton_version: None,
                },
                gpu("h100", Backend::Cuda, Arch::Cuda(90), 32, Some("535.104.05")),
                Err("driver 535.104.05 is older than 550.54.15, which the cache was built with"),
            ),
            (
                "driver_newer_than_build",
                cuda_80_90(),
                CacheRequirements {
                    min_driver_version: Some("550.54.15".into()),
                    triton_version: None,
                },
                gpu("h100", Backend::Cuda, Arch::Cuda(90), 32, Some("550.127.5")),
                Ok(()),
            ),
            (
                "driver_unknown_on_gpu_is_not_checked",
                vec![t(Backend::Hip, mi300(), 64)],
                CacheRequirements {
                    min_driver_version: Some("6.8.5".into()),
                    triton_version: None,
                },
                gpu("mi300x", Backend::Hip, mi300(), 64, None),
                Ok(()),
            ),
            (
                "empty_cache",
                vec![],
                Default::default(),
                gpu("h100", Backend::Cuda, Arch::Cuda(90), 32, None),
                Err("cache records no targets"),
            ),
        ];
        for (name, targets, req, g, want) in cases {
            let c = check(&targets, &req, std::slice::from_ref(&g));
            match want {
                Ok(()) => assert_eq!(c.compatible, vec![g.id.clone()], "{name}: {c:?}"),
                Err(msg) => {
                    assert!(c.compatible.is_empty(), "{name}");
                    assert_eq!(c.incompatible.len(), 1, "{name}");
                    assert_eq!(c.incompatible[0].1.to_string(), msg, "{name}");
                }
            }
        }
    }

    #[test]
    fn mixed_node_splits_gpus_and_reasons_serialize_with_a_kind() {
        let gpus = vec![
            gpu("GPU-a", Backend::Cuda, Arch::Cuda(90), 32, None),
            gpu("GPU-b", Backend::Cuda, Arch::Cuda(86), 32, None),
            gpu("amd-1", Backend::Hip, Arch::Gfx("gfx942".into()), 64, None),
        ];
        let c = check(&cuda_80_90(), &CacheRequirements::default(), &gpus);
        assert_eq!(c.compatible, vec!["GPU-a"]);
        let ids: Vec<_> = c.incompatible.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(ids, vec!["GPU-b", "amd-1"]);
        let json = serde_json::to_value(&c.incompatible[0].1).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"kind": "arch_mismatch", "cache": [80, 90], "gpu": 86})
        );
    }

    #[test]
    fn versions_compare_numerically() {
        assert!(version_less("535.104.05", "550.54.15"));
        assert!(version_less("550.54.9", "550.54.15"));
        assert!(!version_less("550.54.15", "550.54.15"));
        assert!(!version_less("560.1", "550.54.15"));
    }
}

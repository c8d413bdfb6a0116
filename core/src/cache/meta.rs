//! Shared kernel-cache and GPU types: the cache image's `cache.triton.image/summary` targets,
//! and the node's GPU inventory (`/run/kcache/gpus.json`, written by kcached, read by the hook).

use serde::{Deserialize, Serialize};

/// GPU programming backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// NVIDIA CUDA.
    Cuda,
    /// AMD HIP (ROCm).
    Hip,
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Cuda => "cuda",
            Self::Hip => "hip",
        })
    }
}

/// A GPU architecture: CUDA compute capability as `major*10+minor` (JSON int), or an AMD gfx
/// target name (JSON string, e.g. `gfx942`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Arch {
    /// CUDA compute capability, e.g. 90 for sm_90.
    Cuda(u32),
    /// AMD gfx target, e.g. `gfx942`.
    Gfx(String),
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Cuda(cc) => write!(f, "sm_{cc}"),
            Self::Gfx(g) => f.write_str(g),
        }
    }
}

/// One compile target of a cache (`{"backend","arch","warp_size"}` in the summary label).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CacheTarget {
    /// Backend.
    pub backend: Backend,
    /// Architecture.
    pub arch: Arch,
    /// Warp (wavefront) size: 32 on NVIDIA, 64 (or 32) on AMD.
    pub warp_size: u32,
}

/// The `cache.triton.image/summary` label.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheSummary {
    /// Every target the cache holds kernels for.
    pub targets: Vec<CacheTarget>,
}

/// One GPU on the node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gpu {
    /// Stable id: the NVML UUID (`GPU-…`) or the KFD node's unique id (`amd-<gpu_id>`).
    pub id: String,
    /// Index on the node.
    pub index: u32,
    /// Product name as the driver reports it.
    pub name: String,
    /// Backend.
    pub backend: Backend,
    /// Architecture.
    pub arch: Arch,
    /// Warp size.
    pub warp_size: u32,
    /// Driver version, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver_version: Option<String>,
    /// CUDA driver API version (e.g. `12.4`), NVIDIA only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cuda_driver_version: Option<String>,
}

/// Where an inventory came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InventorySource {
    /// NVIDIA NVML.
    Nvml,
    /// AMD KFD sysfs topology.
    Kfd,
    /// An admin- or test-provided file.
    File,
    /// Several of the above.
    Mixed,
    /// No GPU found by any probe.
    None,
}

/// The node's GPUs, as written to `/run/kcache/gpus.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuInventory {
    /// Where it came from.
    pub source: InventorySource,
    /// The GPUs (may be empty).
    pub gpus: Vec<Gpu>,
    /// Why a probe found nothing (e.g. "no NVIDIA driver: libnvidia-ml.so.1 not found").
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_label_parses_cuda_ints_and_hip_gfx_strings() {
        let s: CacheSummary = serde_json::from_str(
            r#"{"targets":[{"backend":"cuda","arch":90,"warp_size":32},{"backend":"hip","arch":"gfx942","warp_size":64}]}"#,
        )
        .unwrap();
        assert_eq!(s.targets[0].arch, Arch::Cuda(90));
        assert_eq!(s.targets[1].arch, Arch::Gfx("gfx942".into()));
        assert_eq!(s.targets[1].backend, Backend::Hip);
        assert_eq!(serde_json::to_value(&s.targets[0]).unwrap()["arch"], 90);
    }
}

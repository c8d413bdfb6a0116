//! NVIDIA GPU inventory through NVML. `libnvidia-ml.so.1` is loaded at run time (nvml-wrapper
//! dlopens it in `Nvml::init`), so kcache builds and runs on nodes without the driver: there the
//! probe finds nothing and says why in a note.

use nvml_wrapper::{error::NvmlError, Nvml};

use crate::cache::meta::{Arch, Backend, Gpu};

/// NVIDIA GPUs run 32-thread warps on every architecture Triton supports.
const WARP_SIZE: u32 = 32;

/// What the NVML probe found: the GPUs and, when something failed, notes saying what.
#[derive(Debug, Default)]
pub struct NvmlProbe {
    /// The GPUs, in NVML index order.
    pub gpus: Vec<Gpu>,
    /// Why none (or not all) were found.
    pub notes: Vec<String>,
}

/// Probes NVML. Never fails: no driver, no GPU or an NVML error give an empty result and a note.
pub fn probe() -> NvmlProbe {
    let nvml = match Nvml::init() {
        Ok(n) => n,
        Err(e) => {
            return NvmlProbe {
                gpus: vec![],
                notes: vec![format!("no NVIDIA GPU: NVML not available: {}", describe(&e))],
            };
        }
    };
    let mut out = NvmlProbe::default();
    let driver_version = nvml.sys_driver_version().ok();
    let cuda_driver_version = nvml.sys_cuda_driver_version().ok().map(format_cuda_version);
    let count = match nvml.device_count() {
        Ok(c) => c,
        Err(e) => {
            out.notes
                .push(format!("no NVIDIA GPU: NVML device count failed: {}", describe(&e)));
            return out;
        }
    };
    if count == 0 {
        out.notes.push("no NVIDIA GPU: NVML reports 0 devices".to_string());
    }
    for index in 0..count {
        let gpu = nvml.device_by_index(index).and_then(|d| {
            let cc = d.cuda_compute_capability()?;
            Ok(Gpu {
                id: d.uuid()?,
                index,
                name: d.name()?,
                backend: Backend::Cuda,
                arch: Arch::Cuda(compute_capability(cc.major, cc.minor)),
                warp_size: WARP_SIZE,
                driver_version: driver_version.clone(),
                cuda_driver_version: cuda_driver_version.clone(),
            })
        });
        match gpu {
            Ok(g) => out.gpus.push(g),
            Err(e) => out.notes.push(format!("NVIDIA GPU {index} skipped: {}", describe(&e))),
        }
    }
    out
}

/// Compute capability as `major*10 + minor` (sm_90 -> 90), the form Triton's metadata uses.
fn compute_capability(major: i32, minor: i32) -> u32 {
    u32::try_from(major * 10 + minor).unwrap_or(0)
}

/// NVML's CUDA driver version (`1000*major + 10*minor`, e.g. 12040) as `12.4`.
pub fn format_cuda_version(v: i32) -> String {
    format!("{}.{}", v / 1000, (v % 1000) / 10)
}

/// A one-line description of an NVML error, with its cause (e.g. the dlopen error).
fn describe(e: &NvmlError) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(cause) = src {
        // Some errors already print their source; do not say it twice.
        let c = cause.to_string();
        if !s.contains(&c) {
            s.push_str(": ");
            s.push_str(&c);
        }
        src = cause.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuda_versions_and_compute_capabilities_format_as_triton_and_nvidia_smi_do() {
        assert_eq!(format_cuda_version(12040), "12.4");
        assert_eq!(format_cuda_version(11080), "11.8");
        assert_eq!(format_cuda_version(12090), "12.9");
        assert_eq!(compute_capability(9, 0), 90);
        assert_eq!(compute_capability(8, 6), 86);
        assert_eq!(compute_capability(12, 0), 120);
    }

    /// On a machine with no NVIDIA driver (CI, this one) the probe is empty and says why.
    /// Where a driver is installed it must list GPUs with sm arches instead.
    #[test]
    fn probe_without_a_driver_is_empty_with_a_note_and_never_panics() {
        let p = probe();
        if std::path::Path::new("/proc/driver/nvidia/version").exists() {
            assert!(p
                .gpus
                .iter()
                .all(|g| matches!(g.arch, Arch::Cuda(cc) if cc >= 30) && g.warp_size == 32));
        } else {
            assert!(p.gpus.is_empty());
            assert_eq!(p.notes.len(), 1, "{:?}", p.notes);
            assert!(
                p.notes[0].starts_with("no NVIDIA GPU: NVML not available: "),
                "{:?}",
                p.notes
            );
        }
    }
}

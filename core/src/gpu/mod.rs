//! The node's GPUs: NVIDIA through NVML (feature `nvml`), AMD through the KFD sysfs topology, or
//! an admin-pinned inventory file; and whether a cache's targets fit them ([`compat`]).
//!
//! kcached probes once at start and writes `/run/kcache/gpus.json` with [`file::save`]; the hook
//! only reads that file ([`file::load`]) and never loads NVML. Probing never fails: what a probe
//! could not do is recorded in [`GpuInventory::notes`].

pub mod compat;
pub mod file;
pub mod kfd;
#[cfg(feature = "nvml")]
pub mod nvml;

use std::path::PathBuf;

use crate::cache::meta::{GpuInventory, InventorySource};

/// What [`probe`] looks at.
#[derive(Debug, Clone)]
pub struct ProbeOptions {
    /// An admin-pinned inventory file. When set, it wins: nothing else is probed, and a file that
    /// cannot be read gives an empty inventory with a note (the node has no usable GPU list).
    pub pinned_file: Option<PathBuf>,
    /// Probe NVIDIA GPUs through NVML (only with the `nvml` feature).
    pub nvml: bool,
    /// The KFD topology root; `None` skips the AMD probe.
    pub kfd_root: Option<PathBuf>,
}

impl Default for ProbeOptions {
    fn default() -> Self {
        Self {
            pinned_file: None,
            nvml: true,
            kfd_root: Some(PathBuf::from(kfd::DEFAULT_TOPOLOGY_ROOT)),
        }
    }
}

/// Finds the node's GPUs. `source` says which probe found them: `nvml`, `kfd`, `mixed` when
/// both found some, `file` for a pinned file and `none` when nothing was found.
pub fn probe(opts: &ProbeOptions) -> GpuInventory {
    if let Some(path) = &opts.pinned_file {
        return match file::load(path) {
            Ok(mut inv) => {
                inv.source = InventorySource::File;
                inv
            }
            Err(e) => GpuInventory {
                source: InventorySource::None,
                gpus: vec![],
                notes: vec![format!("pinned gpu inventory unusable: {}", error_chain(&e))],
            },
        };
    }
    let mut gpus = Vec::new();
    let mut notes = Vec::new();
    let mut found = (false, false);
    if opts.nvml {
        #[cfg(feature = "nvml")]
        {
            let p = nvml::probe();
            found.0 = !p.gpus.is_empty();
            gpus.extend(p.gpus);
            notes.extend(p.notes);
        }
        #[cfg(not(feature = "nvml"))]
        notes.push("no NVIDIA GPU: kcache was built without the nvml feature".to_string());
    }
    if let Some(root) = &opts.kfd_root {
        match kfd::read_topology(root) {
            Ok(amd) if amd.is_empty() => {
                notes.push(format!("no AMD GPU: kfd topology {} has no gpu node", root.display()))
            }
            Ok(amd) => {
                found.1 = true;
                // Index across the whole node, after any NVIDIA GPUs.
                let base = gpus.len() as u32;
                gpus.extend(amd.into_iter().map(|mut g| {
                    g.index += base;
                    g
                }));
            }
            Err(e) => notes.push(format!("no AMD GPU: {}", error_chain(&e))),
        }
    }
    let source = match found {
        (true, true) => InventorySource::Mixed,
        (true, false) => InventorySource::Nvml,
        (false, true) => InventorySource::Kfd,
        (false, false) => InventorySource::None,
    };
    GpuInventory { source, gpus, notes }
}

/// An error and its causes on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(cause) = src {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        src = cause.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::meta::{Arch, Backend};

    #[test]
    fn kfd_only_probe_reports_kfd_source() {
        let root = tempfile::tempdir().unwrap();
        kfd::fixtures::write_node(root.path(), 0, kfd::fixtures::CPU_NODE, Some("0"), None);
        kfd::fixtures::write_node(
            root.path(),
            1,
            &kfd::fixtures::gpu_props(1216, 90402, 64, 29857, 0),
            Some("53234"),
            None,
        );
        let inv = probe(&ProbeOptions {
            pinned_file: None,
            nvml: false,
            kfd_root: Some(root.path().into()),
        });
        assert_eq!(inv.source, InventorySource::Kfd);
        assert_eq!(inv.gpus.len(), 1);
        assert_eq!(
            (inv.gpus[0].backend, &inv.gpus[0].arch),
            (Backend::Hip, &Arch::Gfx("gfx942".into()))
        );
    }

    #[test]
    fn nothing_found_gives_source_none_and_a_note_per_probe() {
        let root = tempfile::tempdir().unwrap();
        let inv = probe(&ProbeOptions {
            pinned_file: None,
            nvml: false,
            kfd_root: Some(root.path().join("absent")),
        });
        assert_eq!(inv.source, InventorySource::None);
        assert!(inv.gpus.is_empty());
        assert_eq!(inv.notes.len(), 1);
        assert!(
            inv.notes[0].starts_with("no AMD GPU: no kfd topology"),
            "{:?}",
            inv.notes
        );
    }

    #[test]
    fn a_pinned_file_wins_over_probes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pinned.json");
        std::fs::write(
            &path,
            r#"{"source":"nvml","gpus":[{"id":"GPU-1","index":0,"name":"NVIDIA A100-SXM4-80GB","backend":"cuda","arch":80,"warp_size":32}]}"#,
        )
        .unwrap();
        let kfd = tempfile::tempdir().unwrap();
        kfd::fixtures::write_node(
            kfd.path(),
            1,
            &kfd::fixtures::gpu_props(1216, 90402, 64, 29857, 0),
            None,
            None,
        );
        let inv = probe(&ProbeOptions {
            pinned_file: Some(path),
            nvml: true,
            kfd_root: Some(kfd.path().into()),
        });
        assert_eq!(inv.source, InventorySource::File);
        assert_eq!(inv.gpus.len(), 1);
        assert_eq!(inv.gpus[0].arch, Arch::Cuda(80));

        let inv = probe(&ProbeOptions {
            pinned_file: Some(dir.path().join("gone.json")),
            ..Default::default()
        });
        assert_eq!(inv.source, InventorySource::None);
        assert!(inv.notes[0].contains("gone.json"), "{:?}", inv.notes);
    }

    #[cfg(feature = "nvml")]
    #[test]
    fn default_probe_on_a_machine_without_gpus_is_empty_with_notes() {
        if std::path::Path::new("/proc/driver/nvidia/version").exists()
            || std::path::Path::new(kfd::DEFAULT_TOPOLOGY_ROOT).exists()
        {
            return; // a GPU node: covered by the device tests
        }
        let inv = probe(&ProbeOptions::default());
        assert_eq!(inv.source, InventorySource::None);
        assert!(inv.gpus.is_empty());
        assert!(
            inv.notes
                .iter()
                .any(|n| n.starts_with("no NVIDIA GPU: NVML not available")),
            "{:?}",
            inv.notes
        );
        assert!(inv.notes.iter().any(|n| n.starts_with("no AMD GPU")), "{:?}", inv.notes);
    }
}

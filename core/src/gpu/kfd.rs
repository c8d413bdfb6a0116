//! AMD GPU inventory from the KFD (amdkfd) sysfs topology: `/sys/class/kfd/kfd/topology/nodes/<n>/`
//! with a `properties` file of `key value` lines, a `gpu_id` file and a `name` file per node.
//!
//! The gfx target comes from `gfx_target_version` alone (decimal `major*10000 + minor*100 +
//! stepping`, as amdkfd's `kfd_topology.c` prints it and ROCr decodes it): no product-name
//! tables, so new parts need no update here.

use std::{
    collections::BTreeMap,
    fs, io,
    path::{Path, PathBuf},
};

use crate::cache::meta::{Arch, Backend, Gpu};

/// The default topology root.
pub const DEFAULT_TOPOLOGY_ROOT: &str = "/sys/class/kfd/kfd/topology/nodes";

/// The wavefront size when a node does not report one (GCN and CDNA parts run wave64).
const DEFAULT_WAVEFRONT: u32 = 64;

/// Why the KFD topology could not be read.
#[derive(Debug, thiserror::Error)]
pub enum KfdError {
    /// The topology root does not exist: no amdgpu/amdkfd driver loaded.
    #[error("no kfd topology at {0} (amdgpu driver not loaded?)")]
    NoTopology(PathBuf),
    /// A directory or file could not be read.
    #[error("failed to read kfd topology {path}")]
    Read {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A property value is not a number.
    #[error("kfd property {key} in {path} is not a number: {value:?}")]
    BadProperty {
        /// The properties file.
        path: PathBuf,
        /// The key.
        key: String,
        /// The value found.
        value: String,
    },
}

type Result<T> = std::result::Result<T, KfdError>;

/// The gfx target name for a KFD `gfx_target_version`: `gfx{major}{minor:x}{stepping:x}`
/// (90402 -> gfx942, 90010 -> gfx90a, 110000 -> gfx1100). `None` for 0 (a CPU node).
pub fn gfx_name(gfx_target_version: u64) -> Option<String> {
    if gfx_target_version == 0 {
        return None;
    }
    let major = gfx_target_version / 10000;
    let minor = (gfx_target_version / 100) % 100;
    let stepping = gfx_target_version % 100;
    Some(format!("gfx{major}{minor:x}{stepping:x}"))
}

/// Reads every GPU node under `root` (see [`DEFAULT_TOPOLOGY_ROOT`]), in node order, skipping
/// CPU-only nodes (`simd_count 0` or `gfx_target_version 0`).
pub fn read_topology(root: &Path) -> Result<Vec<Gpu>> {
    let entries = match fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(KfdError::NoTopology(root.to_path_buf())),
        Err(source) => {
            return Err(KfdError::Read {
                path: root.to_path_buf(),
                source,
            })
        }
    };
    let mut nodes = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| KfdError::Read {
            path: root.to_path_buf(),
            source,
        })?;
        // Node directories are numbered; sort numerically so node 10 follows node 9.
        if let Some(n) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) {
            nodes.push((n, entry.path()));
        }
    }
    nodes.sort();
    let mut gpus = Vec::new();
    for (_, dir) in nodes {
        if let Some(gpu) = read_node(&dir, gpus.len() as u32)? {
            gpus.push(gpu);
        }
    }
    Ok(gpus)
}

/// Reads one topology node; `None` for a CPU-only node.
fn read_node(dir: &Path, index: u32) -> Result<Option<Gpu>> {
    let props_path = dir.join("properties");
    let props = parse_properties(&props_path)?;
    let num = |key: &str| -> Result<Option<u64>> {
        props
            .get(key)
            .map(|v| {
                v.parse::<u64>().map_err(|_| KfdError::BadProperty {
                    path: props_path.clone(),
                    key: key.to_string(),
                    value: v.clone(),
                })
            })
            .transpose()
    };
    if num("simd_count")?.unwrap_or(0) == 0 {
        return Ok(None);
    }
    let Some(gfx) = num("gfx_target_version")?.and_then(gfx_name) else {
        return Ok(None);
    };
    let warp_size = num("wave_front_size")?
        .and_then(|w| u32::try_from(w).ok())
        .filter(|w| *w > 0)
        .unwrap_or(DEFAULT_WAVEFRONT);
    let id = match num("unique_id")?.filter(|u| *u != 0) {
        Some(u) => format!("amd-{u:016x}"),
        None => match read_trimmed(&dir.join("gpu_id"))? {
            Some(g) if !g.is_empty() => format!("amd-{g}"),
            _ => format!("amd-node-{index}"),
        },
    };
    let name = read_trimmed(&dir.join("name"))?
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| gfx.clone());
    Ok(Some(Gpu {
        id,
        index,
        name,
        backend: Backend::Hip,
        arch: Arch::Gfx(gfx),
        warp_size,
        driver_version: None,
        cuda_driver_version: None,
    }))
}

/// Parses `key value` lines; lines without a value are ignored.
fn parse_properties(path: &Path) -> Result<BTreeMap<String, String>> {
    let text = fs::read_to_string(path).map_err(|source| KfdError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(text
        .lines()
        .filter_map(|l| l.trim().split_once(char::is_whitespace))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect())
}

/// A small sysfs file, trimmed; `None` when it does not exist.
fn read_trimmed(path: &Path) -> Result<Option<String>> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(Some(s.trim().to_string())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(KfdError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
pub(crate) mod fixtures {
    //! Topology directories laid out like sysfs, with properties as amdkfd prints them.
    use std::{fs, path::Path};

    /// Node 0 of every AMD system: the CPU.
    pub const CPU_NODE: &str = "cpu_cores_count 96\nsimd_count 0\nmem_banks_count 1\ncaches_count 0\n\
io_links_count 9\np2p_links_count 0\ncpu_core_id_base 0\nsimd_id_base 0\nmax_waves_per_simd 0\nlds_size_in_kb 0\n\
gds_size_in_kb 0\nnum_gws 0\nwave_front_size 0\narray_count 0\nsimd_arrays_per_engine 0\ncu_per_simd_array 0\n\
simd_per_cu 0\nmax_slots_scratch_cu 0\ngfx_target_version 0\nvendor_id 0\ndevice_id 0\nlocation_id 0\ndomain 0\n\
drm_render_minor 0\nhive_id 0\nnum_sdma_engines 0\nnum_sdma_xgmi_engines 0\nnum_sdma_queues_per_engine 0\n\
num_cp_queues 0\nmax_engine_clk_ccompute 3700\n";

    /// A GPU node's properties.
    pub fn gpu_props(simd: u32, gfx: u32, wave: u32, device_id: u32, unique_id: u64) -> String {
        format!(
            "cpu_cores_count 0\nsimd_count {simd}\nmem_banks_count 1\ncaches_count 512\nio_links_count 1\n\
p2p_links_count 7\ncpu_core_id_base 0\nsimd_id_base 2147487744\nmax_waves_per_simd 8\nlds_size_in_kb 64\n\
gds_size_in_kb 0\nnum_gws 64\nwave_front_size {wave}\narray_count 32\nsimd_arrays_per_engine 1\n\
cu_per_simd_array 10\nsimd_per_cu 4\nmax_slots_scratch_cu 32\ngfx_target_version {gfx}\nvendor_id 4098\n\
device_id {device_id}\nlocation_id 3072\ndomain 0\ndrm_render_minor 128\nhive_id 0\nnum_sdma_engines 2\n\
num_sdma_xgmi_engines 14\nnum_sdma_queues_per_engine 8\nnum_cp_queues 24\nmax_engine_clk_fcompute 2100\n\
local_mem_size 0\nfw_version 151\ncapability 746586112\ndebug_prop 1495\nsdma_fw_version 19\nunique_id {unique_id}\n\
num_xcc 8\nmax_engine_clk_ccompute 3700\n"
        )
    }

    /// Writes node `n` with `properties` and optional `gpu_id` / `name` files.
    pub fn write_node(root: &Path, n: u32, properties: &str, gpu_id: Option<&str>, name: Option<&str>) {
        let dir = root.join(n.to_string());
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("properties"), properties).unwrap();
        if let Some(g) = gpu_id {
            fs::write(dir.join("gpu_id"), format!("{g}\n")).unwrap();
        }
        if let Some(name) = name {
            fs::write(dir.join("name"), format!("{name}\n")).unwrap();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{fixtures::*, *};

    #[test]
    fn gfx_names_come_from_the_version_number_alone() {
        for (version, want) in [
            (90402, Some("gfx942")),
            (90010, Some("gfx90a")),
            (90008, Some("gfx908")),
            (110000, Some("gfx1100")),
            (100300, Some("gfx1030")),
            (120001, Some("gfx1201")),
            (0, None),
        ] {
            assert_eq!(gfx_name(version).as_deref(), want, "{version}");
        }
    }

    #[test]
    fn topology_with_cpu_mi300x_mi210_and_rx7900_yields_three_gpus_in_node_order() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        write_node(r, 0, CPU_NODE, Some("0"), Some(""));
        write_node(
            r,
            1,
            &gpu_props(1216, 90402, 64, 29857, 0x5f3a_1c2b_4d6e_7f80),
            Some("53234"),
            Some("ip discovery"),
        );
        write_node(
            r,
            2,
            &gpu_props(416, 90010, 64, 29711, 0),
            Some("11896"),
            Some("aldebaran"),
        );
        // Node 10 sorts after node 2; RDNA3 reports wave32; no name file.
        write_node(r, 10, &gpu_props(192, 110000, 32, 29772, 0), None, None);
        fs::create_dir_all(r.join("not-a-node")).unwrap();

        let gpus = read_topology(r).unwrap();
        let got: Vec<_> = gpus
            .iter()
            .map(|g| (g.index, g.id.as_str(), g.name.as_str(), g.arch.to_string(), g.warp_size))
            .collect();
        assert_eq!(
            got,
            vec![
                (0, "amd-5f3a1c2b4d6e7f80", "ip discovery", "gfx942".to_string(), 64),
                (1, "amd-11896", "aldebaran", "gfx90a".to_string(), 64),
                (2, "amd-node-2", "gfx1100", "gfx1100".to_string(), 32),
            ]
        );
        assert!(gpus.iter().all(|g| g.backend == Backend::Hip));
    }

    #[test]
    fn missing_wavefront_defaults_to_64_and_zero_gfx_version_is_skipped() {
        let root = tempfile::tempdir().unwrap();
        write_node(
            root.path(),
            1,
            "simd_count 304\ngfx_target_version 90402\n",
            Some("7"),
            None,
        );
        write_node(root.path(), 2, "simd_count 8\ngfx_target_version 0\n", Some("8"), None);
        let gpus = read_topology(root.path()).unwrap();
        assert_eq!(gpus.len(), 1);
        assert_eq!((gpus[0].warp_size, gpus[0].id.as_str()), (64, "amd-7"));
    }

    #[test]
    fn missing_root_and_bad_numbers_are_clear_errors() {
        let root = tempfile::tempdir().unwrap();
        let err = read_topology(&root.path().join("nodes")).unwrap_err();
        assert!(matches!(err, KfdError::NoTopology(_)), "{err}");

        write_node(root.path(), 1, "simd_count lots\n", None, None);
        let err = read_topology(root.path()).unwrap_err();
        assert!(err.to_string().contains("simd_count"), "{err}");
        assert!(err.to_string().contains("properties"), "{err}");
    }
}

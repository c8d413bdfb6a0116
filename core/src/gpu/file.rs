//! The GPU inventory as a JSON file: the admin-pinned inventory (for nodes where probing is not
//! wanted, and for tests) and `/run/kcache/gpus.json`, which kcached writes at start and the hook
//! reads (the hook never loads NVML).

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use crate::cache::meta::GpuInventory;

/// Why an inventory file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The file could not be read.
    #[error("failed to read gpu inventory {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The file is not a valid inventory.
    #[error("gpu inventory {path} is not valid json")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// The file could not be written (temp file, fsync or rename).
    #[error("failed to write gpu inventory {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

type Result<T> = std::result::Result<T, FileError>;

/// Reads an inventory file.
pub fn load(path: &Path) -> Result<GpuInventory> {
    let bytes = fs::read(path).map_err(|source| FileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_slice(&bytes).map_err(|source| FileError::Parse {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes an inventory file atomically: a temp file in the same directory, fsync, rename, then
/// fsync of the directory, so a reader (the hook) sees the old file or the new one, never half.
pub fn save(path: &Path, inventory: &GpuInventory) -> Result<()> {
    let werr = |source| FileError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut bytes = serde_json::to_vec_pretty(inventory).map_err(|e| werr(io::Error::other(e)))?;
    bytes.push(b'\n');
    crate::fsutil::write_atomic(path, &bytes, 0o644, true).map_err(werr)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::meta::{Arch, Backend, Gpu, InventorySource};

    fn inventory() -> GpuInventory {
        GpuInventory {
            source: InventorySource::Nvml,
            gpus: vec![Gpu {
                id: "GPU-5b3c7a52-9c1e-4f7e-8d6a-1c2b3d4e5f60".into(),
                index: 0,
                name: "NVIDIA H100 80GB HBM3".into(),
                backend: Backend::Cuda,
                arch: Arch::Cuda(90),
                warp_size: 32,
                driver_version: Some("550.54.15".into()),
                cuda_driver_version: Some("12.4".into()),
            }],
            notes: vec![],
        }
    }

    #[test]
    fn save_then_load_round_trips_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gpus.json");
        save(&path, &inventory()).unwrap();
        save(&path, &inventory()).unwrap();
        assert_eq!(load(&path).unwrap(), inventory());
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("gpus.json")]);
    }

    #[test]
    fn errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("absent.json");
        let err = load(&missing).unwrap_err();
        assert!(matches!(err, FileError::Read { .. }));
        assert!(err.to_string().contains("absent.json"), "{err}");

        let bad = dir.path().join("bad.json");
        fs::write(&bad, b"{\"source\":\"nvml\",\"gpus\":[{}]}").unwrap();
        let err = load(&bad).unwrap_err();
        assert!(matches!(err, FileError::Parse { .. }));
        assert!(err.to_string().contains("bad.json"), "{err}");

        let err = save(&dir.path().join("no/such/dir/gpus.json"), &inventory()).unwrap_err();
        assert!(err.to_string().contains("gpus.json"), "{err}");
    }
}

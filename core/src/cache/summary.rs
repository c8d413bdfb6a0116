//! What a Triton cache holds, as a user wants to see it: kernels, per-target counts and sizes,
//! Triton versions, the largest kernels. `kcache cache inspect` and `kcache cache ls` print it
//! for a store entry or a cache directory.
//!
//! A kernel's size is the bytes of every file in its key directory (Triton writes one
//! compilation per directory: the IRs, the binary, the metadata and the `__grp__` file). Files
//! outside any kernel's directory (launchers `__triton_launcher.so`, vLLM's own files) count
//! toward the cache's total only.

use std::{collections::BTreeMap, fmt, path::Path};

use serde::Serialize;

use crate::cache::{
    meta::{Arch, CacheTarget},
    triton::{scan_dir, ScanError, TritonScan},
};

/// How many of the largest kernels a summary lists by default.
pub const DEFAULT_LARGEST: usize = 5;

/// Kernels and bytes of one target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TargetCount {
    /// The target.
    pub target: CacheTarget,
    /// Kernels compiled for it.
    pub kernels: u64,
    /// Bytes of those kernels' directories.
    pub bytes: u64,
}

/// How many compilations a kernel name has (block sizes, specialisations, targets).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NameCount {
    /// The kernel name.
    pub name: String,
    /// Compilations of it.
    pub kernels: u64,
}

/// One compiled kernel and its size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KernelSize {
    /// The kernel name.
    pub name: String,
    /// Its directory, relative to the cache root (the cache key for Triton).
    pub dir: String,
    /// The target.
    pub target: CacheTarget,
    /// Bytes of its directory.
    pub bytes: u64,
    /// Files in its directory.
    pub files: u64,
}

/// The summary of one cache.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KernelSummary {
    /// Compiled kernels (metadata files with a target).
    pub kernels: u64,
    /// Regular files.
    pub files: u64,
    /// Bytes of regular files.
    pub bytes: u64,
    /// Every Triton version the kernels record, sorted.
    pub triton_versions: Vec<String>,
    /// Per target, most kernels first (then by target).
    pub targets: Vec<TargetCount>,
    /// Per kernel name, most compilations first (then by name).
    pub names: Vec<NameCount>,
    /// The largest kernels, largest first.
    pub largest: Vec<KernelSize>,
}

/// Summarises a scan, listing the `largest` biggest kernels.
pub fn summarize(scan: &TritonScan, largest: usize) -> KernelSummary {
    // Bytes and files per directory.
    let mut per_dir: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    for (path, size) in &scan.files {
        let dir = path.rsplit_once('/').map_or("", |(d, _)| d);
        let e = per_dir.entry(dir).or_default();
        e.0 += size;
        e.1 += 1;
    }
    let mut sizes: Vec<KernelSize> = scan
        .kernels
        .iter()
        .map(|k| {
            let dir = k.path.rsplit_once('/').map_or("", |(d, _)| d);
            let (bytes, files) = per_dir.get(dir).copied().unwrap_or_default();
            KernelSize {
                name: k.name.clone(),
                dir: dir.to_string(),
                target: k.target.clone(),
                bytes,
                files,
            }
        })
        .collect();

    let mut targets: Vec<TargetCount> = Vec::new();
    for k in &sizes {
        match targets.iter_mut().find(|t| t.target == k.target) {
            Some(t) => {
                t.kernels += 1;
                t.bytes += k.bytes;
            }
            None => targets.push(TargetCount {
                target: k.target.clone(),
                kernels: 1,
                bytes: k.bytes,
            }),
        }
    }
    targets.sort_by(|a, b| {
        b.kernels
            .cmp(&a.kernels)
            .then_with(|| target_order(&a.target).cmp(&target_order(&b.target)))
    });

    let mut names: BTreeMap<&str, u64> = BTreeMap::new();
    for k in &scan.kernels {
        *names.entry(k.name.as_str()).or_default() += 1;
    }
    let mut names: Vec<NameCount> = names
        .into_iter()
        .map(|(name, kernels)| NameCount {
            name: name.to_string(),
            kernels,
        })
        .collect();
    names.sort_by(|a, b| b.kernels.cmp(&a.kernels).then_with(|| a.name.cmp(&b.name)));

    sizes.sort_by(|a, b| b.bytes.cmp(&a.bytes).then_with(|| a.dir.cmp(&b.dir)));
    sizes.truncate(largest);
    KernelSummary {
        kernels: scan.entry_count(),
        files: scan.files.len() as u64,
        bytes: scan.size_bytes(),
        triton_versions: scan.triton_versions(),
        targets,
        names,
        largest: sizes,
    }
}

/// Scans the cache at `dir` (a `TRITON_CACHE_DIR`, or a store entry's cache subdir) and
/// summarises it.
pub fn summarize_dir(dir: &Path, largest: usize) -> Result<KernelSummary, ScanError> {
    Ok(summarize(&scan_dir(dir)?, largest))
}

/// Backend, then CUDA compute capability numerically (sm_80 before sm_100), then gfx name.
fn target_order(t: &CacheTarget) -> (String, u32, String) {
    match &t.arch {
        Arch::Cuda(cc) => (t.backend.to_string(), *cc, String::new()),
        Arch::Gfx(g) => (t.backend.to_string(), 0, g.clone()),
    }
}

/// Bytes for people: `512 B`, `3.4 KiB`, `1.2 MiB`, `2.0 GiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

fn target_label(t: &CacheTarget) -> String {
    format!("{}:{} (warp {})", t.backend, t.arch, t.warp_size)
}

/// The multi-line text `kcache cache inspect` prints.
impl fmt::Display for KernelSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "kernels:  {} ({} files, {})",
            self.kernels,
            self.files,
            human_bytes(self.bytes)
        )?;
        let versions = if self.triton_versions.is_empty() {
            "not recorded".to_string()
        } else {
            self.triton_versions.join(", ")
        };
        writeln!(f, "triton:   {versions}")?;
        writeln!(f, "per target:")?;
        for t in &self.targets {
            writeln!(
                f,
                "  {:<24} {:>5} kernels {:>10}",
                target_label(&t.target),
                t.kernels,
                human_bytes(t.bytes)
            )?;
        }
        writeln!(f, "per kernel name:")?;
        for n in &self.names {
            writeln!(f, "  {:<32} {:>5}", n.name, n.kernels)?;
        }
        writeln!(f, "largest kernels:")?;
        for k in &self.largest {
            writeln!(
                f,
                "  {:>10}  {:<24} {:<20} {}",
                human_bytes(k.bytes),
                k.name,
                format!("{}:{}", k.target.backend, k.target.arch),
                k.dir
            )?;
        }
        Ok(())
    }
}

impl KernelSummary {
    /// One line for `kcache cache ls`: `28 kernels, 4.1 MiB, triton 3.9.0, cuda:sm_80 7, ...`.
    pub fn one_line(&self) -> String {
        let targets: Vec<String> = self
            .targets
            .iter()
            .map(|t| format!("{}:{} {}", t.target.backend, t.target.arch, t.kernels))
            .collect();
        format!(
            "{} kernels, {}, triton {}, {}",
            self.kernels,
            human_bytes(self.bytes),
            if self.triton_versions.is_empty() {
                "?".to_string()
            } else {
                self.triton_versions.join("/")
            },
            targets.join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::{meta::Backend, triton::fixtures::*};

    #[test]
    fn counts_per_target_names_and_the_largest_kernel_by_its_directory() {
        let dir = tempfile::tempdir().unwrap();
        write_cache(dir.path());
        // Make the sm_80 add_kernel the biggest one.
        std::fs::write(dir.path().join(KEY_A100).join("add_kernel.cubin"), vec![0u8; 10_000]).unwrap();
        let s = summarize_dir(dir.path(), 2).unwrap();
        assert_eq!((s.kernels, s.files), (3, 22));
        assert_eq!(s.triton_versions, ["3.3.1"]);
        let sm80 = CacheTarget {
            backend: Backend::Cuda,
            arch: Arch::Cuda(80),
            warp_size: 32,
        };
        // One kernel per target: ordered by backend, then arch.
        let order: Vec<String> = s.targets.iter().map(|t| t.target.arch.to_string()).collect();
        assert_eq!(order, ["sm_80", "sm_90", "gfx942"]);
        assert!(s.targets.iter().all(|t| t.kernels == 1));
        let a100_bytes: u64 = std::fs::read_dir(dir.path().join(KEY_A100))
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum();
        assert_eq!(s.targets[0].bytes, a100_bytes);
        assert_eq!(
            s.names,
            [
                NameCount {
                    name: "add_kernel".into(),
                    kernels: 2
                },
                NameCount {
                    name: "matmul_kernel".into(),
                    kernels: 1
                }
            ]
        );
        assert_eq!(s.largest.len(), 2);
        assert_eq!(
            s.largest[0],
            KernelSize {
                name: "add_kernel".into(),
                dir: KEY_A100.into(),
                target: sm80,
                bytes: a100_bytes,
                files: 7
            }
        );
        // The launcher counts toward the total, not toward any kernel.
        let kernel_bytes: u64 = s.targets.iter().map(|t| t.bytes).sum();
        assert!(s.bytes > kernel_bytes);
        let text = s.to_string();
        assert!(text.contains("kernels:  3 (22 files,"), "{text}");
        assert!(text.contains("cuda:sm_80 (warp 32)"), "{text}");
        let line = s.one_line();
        assert!(
            line.starts_with(&format!("3 kernels, {}, ", human_bytes(s.bytes))),
            "{line}"
        );
        assert!(s
            .one_line()
            .ends_with("triton 3.3.1, cuda:sm_80 1, cuda:sm_90 1, hip:gfx942 1"));
    }

    #[test]
    fn human_bytes_uses_binary_units() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(5 << 20), "5.0 MiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
    }
}

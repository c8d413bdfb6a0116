//! Building a cache image layer from a Triton (or vLLM) cache directory (`kcache cache build`).
//!
//! The layer is a deterministic tar.gz in MCV's "compat" layout: entries sorted by name, mtime 0,
//! uid/gid 0, no user names, modes normalized to 0755 (dirs and files with an exec bit) or 0644,
//! holding `io.triton.cache/<the cache>` and `io.triton.manifest/manifest.json` (vLLM:
//! `io.vllm.*`). The same directory always gives the same bytes, so the same digests.
//!
//! The `cache.kcache.dev/build-cache-root` label is the dir the cache's `__grp__` files say
//! Triton wrote it in ([`grp::infer_root`]), which is not the directory built from when the
//! cache was copied or moved first, or is reached through a symlink: then the build warns
//! ([`BuiltCache::warnings`]). Only without any `__grp__` child path is it the directory itself.

use std::{
    collections::BTreeMap,
    fs,
    io::{self, Write},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use flate2::{write::GzEncoder, Compression};
use sha2::{Digest as _, Sha256};

use crate::{
    cache::{
        format::{self, CacheKind, LABEL_BUILD_CACHE_ROOT, LABEL_DRIVER_VERSION, LABEL_TRITON_VERSION},
        grp::{self, GrpError},
        meta::CacheSummary,
        triton::{self, ScanError},
    },
    digest::Digest,
};

/// Why a layer could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The cache directory could not be resolved.
    #[error("failed to resolve cache directory {path}")]
    Resolve {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The cache directory is not UTF-8 (it becomes a label).
    #[error("cache directory {0:?} is not utf-8")]
    NotUtf8(PathBuf),
    /// The cache could not be scanned.
    #[error(transparent)]
    Scan(#[from] ScanError),
    /// The `__grp__` files cannot be read, or disagree on where the cache was.
    #[error(transparent)]
    Grp(#[from] GrpError),
    /// No kernel metadata found: not a Triton cache.
    #[error("no triton kernel metadata found under {0}")]
    Empty(PathBuf),
    /// A version given for the label is not one (or contradicts the kernels' metadata).
    #[error("{0}")]
    Version(String),
    /// A file could not be read or the layer written.
    #[error("failed to write cache layer entry {entry}")]
    Write {
        /// The layer entry.
        entry: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

type Result<T> = std::result::Result<T, BuildError>;

/// A built layer and what goes into the image config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltCache {
    /// Triton or vLLM.
    pub kind: CacheKind,
    /// The targets.
    pub summary: CacheSummary,
    /// Kernels in the cache.
    pub entry_count: u64,
    /// Bytes of cache files.
    pub size_bytes: u64,
    /// The image labels: the three GKM/MCV ones and kcache's.
    pub labels: BTreeMap<String, String>,
    /// sha256 of the uncompressed tar (the config's `rootfs.diff_ids`).
    pub diff_id: Digest,
    /// sha256 of the gzip stream (the manifest's layer digest).
    pub layer_digest: Digest,
    /// Size of the gzip stream.
    pub layer_size: u64,
    /// What the caller should tell the user (the image is built all the same).
    pub warnings: Vec<String>,
}

/// What the builder cannot read from the cache itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BuildOptions {
    /// The Triton version that compiled the kernels, for a cache whose metadata does not record
    /// it (Triton before 3.x). It may not contradict a version the metadata records.
    pub triton_version: Option<String>,
    /// The driver version the cache was built with: nodes treat GPUs with an older driver as
    /// incompatible. Nothing in a Triton cache records it.
    pub driver_version: Option<String>,
}

/// Whether `v` looks like a version (Triton's `3.2.0+git4ce833eb`, NVIDIA's `550.54.15`).
fn check_version(what: &str, v: &str) -> Result<String> {
    let v = v.trim();
    let ok = !v.is_empty() && v.len() <= 64 && v.bytes().all(|b| b.is_ascii_alphanumeric() || b"._+!-".contains(&b));
    if ok {
        Ok(v.to_string())
    } else {
        Err(BuildError::Version(format!(
            "{what} {v:?} is not a version (letters, digits and . _ + ! -, at most 64)"
        )))
    }
}

/// The Triton version label: the one the kernels record, or the one given for kernels that
/// record none. Kernels from several versions get none (and a warning): no one container
/// Triton can hit them all.
fn triton_label(recorded: &[String], given: Option<&str>, warnings: &mut Vec<String>) -> Result<Option<String>> {
    let given = given.map(|v| check_version("Triton version", v)).transpose()?;
    match (recorded, given) {
        ([], Some(v)) => Ok(Some(v)),
        ([], None) => {
            warnings.push(
                "no kernel records the Triton version that built it (Triton before 3.x?): without one, nodes \
                 cannot check that a container's Triton can use the cache (kcache cache build --triton-version)"
                    .into(),
            );
            Ok(None)
        }
        (rec, Some(v)) if rec.iter().any(|r| *r != v) => Err(BuildError::Version(format!(
            "the kernels' metadata records Triton {}, not {v} as given: Triton's cache key is computed with \
             the version that compiled them",
            rec.join(", ")
        ))),
        ([one], _) => Ok(Some(one.clone())),
        (many, _) => {
            warnings.push(format!(
                "the kernels were compiled by Triton {}: no triton-version label, so nodes do not check the \
                 container's Triton (a container hits only the kernels of its own version; build one cache per version)",
                many.join(", ")
            ));
            Ok(None)
        }
    }
}

/// A writer that hashes and counts what passes through.
struct HashWriter<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> HashWriter<W> {
    fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    fn digest(&self) -> Digest {
        Digest::from_sha256_bytes(&self.hasher.clone().finalize().into())
    }
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Builds the layer for the cache in `dir` into `out` (a gzip stream).
pub fn build_cache_layer(dir: &Path, kind: CacheKind, out: impl Write) -> Result<BuiltCache> {
    build_cache_layer_with(dir, kind, &BuildOptions::default(), out)
}

/// [`build_cache_layer`], with what the cache does not record given in `opts`.
pub fn build_cache_layer_with(dir: &Path, kind: CacheKind, opts: &BuildOptions, out: impl Write) -> Result<BuiltCache> {
    let root = fs::canonicalize(dir).map_err(|source| BuildError::Resolve {
        path: dir.to_path_buf(),
        source,
    })?;
    let root_str = root
        .to_str()
        .ok_or_else(|| BuildError::NotUtf8(root.clone()))?
        .to_string();
    let scan = triton::scan_dir(&root)?;
    if scan.kernels.is_empty() {
        return Err(BuildError::Empty(root));
    }
    let mut warnings = Vec::new();
    let triton_version = triton_label(&scan.triton_versions(), opts.triton_version.as_deref(), &mut warnings)?;
    let driver_version = opts
        .driver_version
        .as_deref()
        .map(|v| check_version("driver version", v))
        .transpose()?;
    let build_root = match grp::infer_root(&root)? {
        Some(g) => {
            if g.root != root_str {
                warnings.push(format!(
                    "the __grp__ files point into {} ({} for one), not {root_str}: the cache was copied or moved \
                     after Triton wrote it, or is reached through a symlink; labelling {} as the build cache root, \
                     the dir nodes rewrite the paths from",
                    g.root, g.file, g.root
                ));
            }
            g.root
        }
        None => root_str,
    };

    let gz = GzEncoder::new(HashWriter::new(out), Compression::default());
    let mut tar = tar::Builder::new(HashWriter::new(gz));
    let cache_dir = kind.cache_dir();
    let manifest_dir = kind.manifest_dir();
    let manifest = scan.manifest_json(kind);

    // Every entry by its layer path; a BTreeMap sorts them, parents before children.
    enum Item<'a> {
        Dir,
        File(&'a str, u64),
        Bytes(&'a [u8]),
    }
    let mut items: BTreeMap<String, Item> = BTreeMap::new();
    items.insert(format!("{cache_dir}/"), Item::Dir);
    for d in &scan.dirs {
        items.insert(format!("{cache_dir}/{d}/"), Item::Dir);
    }
    for (f, size) in &scan.files {
        items.insert(format!("{cache_dir}/{f}"), Item::File(f, *size));
    }
    items.insert(format!("{manifest_dir}/"), Item::Dir);
    items.insert(format!("{manifest_dir}/manifest.json"), Item::Bytes(&manifest));

    for (entry, item) in &items {
        let werr = |source| BuildError::Write {
            entry: entry.clone(),
            source,
        };
        let mut h = tar::Header::new_gnu();
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        match item {
            Item::Dir => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                tar.append_data(&mut h, entry, io::empty()).map_err(werr)?;
            }
            Item::Bytes(b) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o644);
                h.set_size(b.len() as u64);
                tar.append_data(&mut h, entry, *b).map_err(werr)?;
            }
            Item::File(rel, size) => {
                let path = root.join(rel);
                let f = fs::File::open(&path).map_err(werr)?;
                let meta = f.metadata().map_err(werr)?;
                if meta.len() != *size || !meta.is_file() {
                    return Err(werr(io::Error::other("file changed while the cache was being built")));
                }
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(if meta.permissions().mode() & 0o111 != 0 {
                    0o755
                } else {
                    0o644
                });
                h.set_size(*size);
                // `take` keeps the entry at the size in its header if the file grows meanwhile.
                tar.append_data(&mut h, entry, io::Read::take(f, *size)).map_err(werr)?;
            }
        }
    }
    let werr = |source| BuildError::Write {
        entry: "(end of layer)".into(),
        source,
    };
    let tar_out = tar.into_inner().map_err(werr)?;
    let diff_id = tar_out.digest();
    let mut gz_out = tar_out.inner.finish().map_err(werr)?;
    gz_out.flush().map_err(werr)?;

    let summary = scan.summary();
    let mut labels = BTreeMap::new();
    labels.insert(kind.summary_label(), format::summary_label(&summary));
    labels.insert(kind.entry_count_label(), scan.entry_count().to_string());
    labels.insert(kind.size_label(), scan.size_bytes().to_string());
    labels.insert(LABEL_BUILD_CACHE_ROOT.to_string(), build_root);
    if let Some(v) = triton_version {
        labels.insert(LABEL_TRITON_VERSION.to_string(), v);
    }
    if let Some(v) = driver_version {
        labels.insert(LABEL_DRIVER_VERSION.to_string(), v);
    }
    Ok(BuiltCache {
        kind,
        summary,
        entry_count: scan.entry_count(),
        size_bytes: scan.size_bytes(),
        labels,
        diff_id,
        layer_digest: gz_out.digest(),
        layer_size: gz_out.count,
        warnings,
    })
}

/// The image config for a built cache: OCI image config with the labels and the layer's diff id.
/// No `created` time, so the config (and the image digest) is reproducible.
pub fn image_config_json(built: &BuiltCache) -> Vec<u8> {
    let architecture = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "powerpc64" => "ppc64le",
        other => other,
    };
    let config = serde_json::json!({
        "architecture": architecture,
        "os": "linux",
        "config": { "Labels": built.labels },
        "rootfs": { "type": "layers", "diff_ids": [built.diff_id.to_string()] },
    });
    serde_json::to_vec(&config).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;
    use crate::cache::{
        format::CacheImageMeta,
        meta::{Arch, Backend, CacheTarget},
        triton::fixtures::{self, KEY_H100, KEY_MI300},
    };

    fn untar(gz: &[u8]) -> Vec<(String, tar::EntryType, u32, u64, Vec<u8>)> {
        let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(gz));
        ar.entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let h = e.header().clone();
                let mut body = Vec::new();
                e.read_to_end(&mut body).unwrap();
                let path = e.path().unwrap().to_str().unwrap().to_string();
                (path, h.entry_type(), h.mode().unwrap(), h.mtime().unwrap(), body)
            })
            .collect()
    }

    #[test]
    fn built_layer_round_trips_through_the_config_parser_and_has_the_mcv_layout() {
        let dir = tempfile::tempdir().unwrap();
        fixtures::write_cache(dir.path());
        let mut layer = Vec::new();
        let built = build_cache_layer(dir.path(), CacheKind::Triton, &mut layer).unwrap();
        assert_eq!(built.entry_count, 3);
        assert_eq!(built.layer_size, layer.len() as u64);
        assert_eq!(built.layer_digest, Digest::sha256_of(&layer));

        let meta = CacheImageMeta::from_config_json(&image_config_json(&built)).unwrap();
        assert_eq!(meta.kind, CacheKind::Triton);
        assert_eq!(meta.summary, built.summary);
        assert!(meta.summary.targets.contains(&CacheTarget {
            backend: Backend::Cuda,
            arch: Arch::Cuda(90),
            warp_size: 32
        }));
        assert!(meta.summary.targets.contains(&CacheTarget {
            backend: Backend::Cuda,
            arch: Arch::Cuda(80),
            warp_size: 32
        }));
        assert!(meta.summary.targets.contains(&CacheTarget {
            backend: Backend::Hip,
            arch: Arch::Gfx("gfx942".into()),
            warp_size: 64
        }));
        assert_eq!(meta.entry_count, Some(3));
        assert_eq!(meta.cache_size_bytes, Some(built.size_bytes));
        let root = fs::canonicalize(dir.path()).unwrap();
        assert_eq!(meta.build_cache_root.as_deref(), root.to_str());
        assert!(built.warnings.is_empty(), "{:?}", built.warnings);
        assert_eq!(meta.triton_version.as_deref(), Some("3.3.1"));
        let config: serde_json::Value = serde_json::from_slice(&image_config_json(&built)).unwrap();
        assert_eq!(config["rootfs"]["diff_ids"][0], built.diff_id.to_string());

        let entries = untar(&layer);
        let uncompressed = {
            let mut v = Vec::new();
            flate2::read::GzDecoder::new(&layer[..]).read_to_end(&mut v).unwrap();
            v
        };
        assert_eq!(built.diff_id, Digest::sha256_of(&uncompressed));
        let names: Vec<_> = entries.iter().map(|e| e.0.as_str()).collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted, "entries are sorted");
        assert_eq!(names[0], "io.triton.cache/");
        assert!(names.contains(&format!("io.triton.cache/{KEY_H100}/matmul_kernel.cubin").as_str()));
        assert!(names.contains(&format!("io.triton.cache/{KEY_MI300}/__grp__add_kernel.json").as_str()));
        assert!(names
            .iter()
            .all(|n| n.starts_with("io.triton.cache/") || n.starts_with("io.triton.manifest/")));
        assert!(names.iter().all(|n| !n.contains("tmp.pid_")));
        assert!(entries.iter().all(|e| e.3 == 0));
        assert!(entries
            .iter()
            .all(|e| (e.1 == tar::EntryType::Directory && e.2 == 0o755)
                || (e.1 == tar::EntryType::Regular && e.2 == 0o644)));
        let manifest = entries
            .iter()
            .find(|e| e.0 == "io.triton.manifest/manifest.json")
            .unwrap();
        let m: serde_json::Value = serde_json::from_slice(&manifest.4).unwrap();
        assert_eq!(m["triton"].as_array().unwrap().len(), 3);
        // The __grp__ files keep their absolute build-time paths: the node rewrites them.
        let grp = entries
            .iter()
            .find(|e| e.0.ends_with(&format!("{KEY_H100}/__grp__matmul_kernel.json")))
            .unwrap();
        assert!(String::from_utf8_lossy(&grp.4).contains(root.to_str().unwrap()));
    }

    #[test]
    fn the_same_directory_builds_the_same_bytes_and_vllm_uses_its_own_names() {
        let dir = tempfile::tempdir().unwrap();
        fixtures::write_cache(dir.path());
        let (mut a, mut b) = (Vec::new(), Vec::new());
        let ba = build_cache_layer(dir.path(), CacheKind::Triton, &mut a).unwrap();
        // Touch a file: mtimes must not matter.
        let f = dir.path().join(KEY_H100).join("matmul_kernel.ptx");
        fs::write(&f, fs::read(&f).unwrap()).unwrap();
        let bb = build_cache_layer(dir.path(), CacheKind::Triton, &mut b).unwrap();
        assert_eq!(a, b);
        assert_eq!(ba, bb);

        let mut v = Vec::new();
        let built = build_cache_layer(dir.path(), CacheKind::Vllm, &mut v).unwrap();
        assert!(built.labels.contains_key("cache.vllm.image/summary"));
        assert!(!built.labels.keys().any(|k| k.starts_with("cache.triton.image/")));
        let names: Vec<_> = untar(&v).into_iter().map(|e| e.0).collect();
        assert!(names
            .iter()
            .all(|n| n.starts_with("io.vllm.cache/") || n.starts_with("io.vllm.manifest/")));
        assert_eq!(
            CacheImageMeta::from_config_json(&image_config_json(&built))
                .unwrap()
                .kind,
            CacheKind::Vllm
        );
    }

    /// Triton wrote the cache in one dir; it was copied to another before the build. The label
    /// names Triton's dir (what the `__grp__` paths hold), and the build says so.
    #[test]
    fn a_copied_cache_is_labelled_with_the_dir_its_group_files_name() {
        let orig = tempfile::tempdir().unwrap();
        fixtures::write_cache(orig.path());
        let orig_root = orig.path().to_str().unwrap().to_string();
        let copy = tempfile::tempdir().unwrap();
        fixtures::copy_tree(orig.path(), copy.path());
        drop(orig);
        let built = build_cache_layer(copy.path(), CacheKind::Triton, io::sink()).unwrap();
        assert_eq!(built.labels[LABEL_BUILD_CACHE_ROOT], orig_root);
        let copy_root = fs::canonicalize(copy.path()).unwrap();
        assert_eq!(built.warnings.len(), 1, "{:?}", built.warnings);
        let w = &built.warnings[0];
        assert!(
            w.contains(&format!("point into {orig_root} ")) && w.contains(copy_root.to_str().unwrap()),
            "{w}"
        );

        // Through a symlink to the dir Triton wrote: the label is the path Triton used.
        let real = tempfile::tempdir().unwrap();
        let link = real.path().join("link");
        let target = real.path().join("cache");
        fs::create_dir(&target).unwrap();
        std::os::unix::fs::symlink(&target, &link).unwrap();
        fixtures::write_cache(&link);
        let built = build_cache_layer(&link, CacheKind::Triton, io::sink()).unwrap();
        assert_eq!(built.labels[LABEL_BUILD_CACHE_ROOT], link.to_str().unwrap());
        assert_eq!(built.warnings.len(), 1);

        // Group files that disagree: no image, and the reason names them.
        let bad = tempfile::tempdir().unwrap();
        fixtures::write_cache(bad.path());
        let grp = bad.path().join(KEY_MI300).join("__grp__add_kernel.json");
        let other = fs::read_to_string(&grp)
            .unwrap()
            .replace(bad.path().to_str().unwrap(), "/elsewhere/cache");
        fs::write(&grp, other).unwrap();
        let err = build_cache_layer(bad.path(), CacheKind::Triton, io::sink()).unwrap_err();
        assert!(matches!(err, BuildError::Grp(GrpError::Inconsistent { .. })), "{err}");
        assert!(err.to_string().contains("/elsewhere/cache"), "{err}");
    }

    #[test]
    fn versions_come_from_the_metadata_or_the_options() {
        let build = |dir: &Path, triton: Option<&str>, driver: Option<&str>| {
            let opts = BuildOptions {
                triton_version: triton.map(Into::into),
                driver_version: driver.map(Into::into),
            };
            build_cache_layer_with(dir, CacheKind::Triton, &opts, io::sink())
        };
        let label = |b: &BuiltCache, l: &str| b.labels.get(l).cloned();
        let dir = tempfile::tempdir().unwrap();
        fixtures::write_cache(dir.path());

        // Recorded by the kernels (3.3.1); the same version given is fine, another is refused.
        let b = build(dir.path(), None, Some("550.54.15")).unwrap();
        assert_eq!(label(&b, LABEL_TRITON_VERSION).as_deref(), Some("3.3.1"));
        assert_eq!(label(&b, LABEL_DRIVER_VERSION).as_deref(), Some("550.54.15"));
        let meta = CacheImageMeta::from_config_json(&image_config_json(&b)).unwrap();
        assert_eq!(meta.requirements().min_driver_version.as_deref(), Some("550.54.15"));
        assert_eq!(meta.requirements().triton_version.as_deref(), Some("3.3.1"));
        assert!(build(dir.path(), Some("3.3.1"), None).unwrap().warnings.is_empty());
        let err = build(dir.path(), Some("3.1.0"), None).unwrap_err().to_string();
        assert!(err.contains("records Triton 3.3.1, not 3.1.0"), "{err}");
        assert!(build(dir.path(), None, Some("550 54")).is_err());
        assert!(build(dir.path(), Some(""), None).is_err());

        // Recorded by none (an older Triton): given, or a warning and no label.
        let old = tempfile::tempdir().unwrap();
        fixtures::write_cache(old.path());
        for key in [KEY_H100, fixtures::KEY_A100] {
            for e in fs::read_dir(old.path().join(key)).unwrap() {
                let p = e.unwrap().path();
                if p.extension().is_some_and(|x| x == "json") {
                    let text = fs::read_to_string(&p)
                        .unwrap()
                        .replace(r#", "triton_version": "3.3.1""#, "");
                    fs::write(&p, text).unwrap();
                }
            }
        }
        let b = build(old.path(), Some("3.0.0"), None).unwrap();
        assert_eq!(label(&b, LABEL_TRITON_VERSION).as_deref(), Some("3.0.0"));
        assert!(b.warnings.is_empty(), "{:?}", b.warnings);
        let b = build(old.path(), None, None).unwrap();
        assert_eq!(label(&b, LABEL_TRITON_VERSION), None);
        assert!(
            b.warnings.iter().any(|w| w.contains("--triton-version")),
            "{:?}",
            b.warnings
        );

        // Kernels from two Tritons: no label, and a warning naming both.
        let p = old.path().join(KEY_H100).join("matmul_kernel.json");
        let text = fs::read_to_string(&p)
            .unwrap()
            .replace(r#""name""#, r#""triton_version": "3.1.0", "name""#);
        fs::write(&p, text).unwrap();
        let p = old.path().join(fixtures::KEY_A100).join("add_kernel.json");
        let text = fs::read_to_string(&p)
            .unwrap()
            .replace(r#""name""#, r#""triton_version": "3.2.0", "name""#);
        fs::write(&p, text).unwrap();
        let b = build(old.path(), None, None).unwrap();
        assert_eq!(label(&b, LABEL_TRITON_VERSION), None);
        assert!(
            b.warnings.iter().any(|w| w.contains("Triton 3.1.0, 3.2.0")),
            "{:?}",
            b.warnings
        );
        assert!(build(old.path(), Some("3.1.0"), None).is_err());
    }

    #[test]
    fn a_directory_without_kernels_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("notes.txt"), b"hi").unwrap();
        let err = build_cache_layer(dir.path(), CacheKind::Triton, io::sink()).unwrap_err();
        assert!(matches!(err, BuildError::Empty(_)), "{err}");
        let err = build_cache_layer(&dir.path().join("absent"), CacheKind::Triton, io::sink()).unwrap_err();
        assert!(err.to_string().contains("absent"), "{err}");
    }
}

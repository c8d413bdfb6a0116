//! Cache image format: GKM/MCV's labels and layer layout, read as those tools write them, plus
//! kcache's own labels for what a node needs to predict a real Triton cache hit.
//!
//! An MCV "compat" cache image has one layer (gzip or plain tar) holding `io.triton.cache/<key
//! dirs>/...` and `io.triton.manifest/manifest.json` (vLLM: `io.vllm.cache/`,
//! `io.vllm.manifest/`), and config labels:
//!
//! | label | value |
//! |---|---|
//! | `cache.triton.image/summary` | `{"targets":[{"backend":"cuda","arch":"90","warp_size":32}]}` |
//! | `cache.triton.image/entry-count` | kernels in the cache, decimal |
//! | `cache.triton.image/cache-size-bytes` | bytes of cache files, decimal |
//! | `cache.kcache.dev/triton-version` | the Triton that built it (kcache) |
//! | `cache.kcache.dev/build-cache-root` | the dir Triton wrote the cache in, as its `__grp__` files name it (kcache; informational: nodes infer it from the files) |
//! | `cache.kcache.dev/driver-version` | the driver it was built with, optional (kcache) |
//!
//! MCV writes `arch` as a string (`"90"`, `"gfx942"`; redhat-et/MCU `mcv/pkg/cache/triton.go`
//! `ConvertArchToString`), Triton's own metadata as an int for CUDA; both are read here, and
//! [`summary_label`] writes strings so MCV/GKM readers (Go `Arch string`) accept kcache's images.
//! MCV's vLLM summary may be a placeholder that is not JSON ("vllm cache (summary pending)"):
//! for vLLM images that reads as no targets rather than an error.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::{
    cache::meta::{Arch, Backend, CacheSummary, CacheTarget},
    gpu::compat::CacheRequirements,
};

/// kcache label: the Triton version that built the cache.
pub const LABEL_TRITON_VERSION: &str = "cache.kcache.dev/triton-version";
/// kcache label: the absolute dir Triton wrote the cache in (what its `__grp__` files point
/// into). Informational: the node's rewrite infers the root from the files ([`super::grp`]).
pub const LABEL_BUILD_CACHE_ROOT: &str = "cache.kcache.dev/build-cache-root";
/// kcache label: the driver version the cache was built with.
pub const LABEL_DRIVER_VERSION: &str = "cache.kcache.dev/driver-version";

/// Docker's gzip layer media type.
pub const MEDIA_TYPE_DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// OCI's gzip layer media type.
pub const MEDIA_TYPE_OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// OCI's uncompressed layer media type.
pub const MEDIA_TYPE_OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// Docker's uncompressed layer media type (rare, but registries serve it).
pub const MEDIA_TYPE_DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";

/// How a cache layer is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerCompression {
    /// gzip.
    Gzip,
    /// A plain tar.
    None,
}

/// The compression of a layer with this media type; `None` for media types a cache image may
/// not use (zstd, foreign or non-distributable layers).
pub fn layer_compression(media_type: &str) -> Option<LayerCompression> {
    match media_type {
        MEDIA_TYPE_DOCKER_LAYER_GZIP | MEDIA_TYPE_OCI_LAYER_GZIP => Some(LayerCompression::Gzip),
        MEDIA_TYPE_OCI_LAYER_TAR | MEDIA_TYPE_DOCKER_LAYER_TAR => Some(LayerCompression::None),
        _ => None,
    }
}

/// Which cache an image holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheKind {
    /// A Triton cache (`TRITON_CACHE_DIR`).
    Triton,
    /// A vLLM cache (`VLLM_CACHE_ROOT`), holding Triton caches under `torch_compile_cache/`.
    Vllm,
}

impl CacheKind {
    /// `triton` or `vllm`: the manifest's top-level key.
    pub fn name(self) -> &'static str {
        match self {
            Self::Triton => "triton",
            Self::Vllm => "vllm",
        }
    }

    /// The label prefix, `cache.triton.image/` or `cache.vllm.image/`.
    pub fn label_prefix(self) -> &'static str {
        match self {
            Self::Triton => "cache.triton.image/",
            Self::Vllm => "cache.vllm.image/",
        }
    }

    /// The layer directory holding the cache, `io.triton.cache` or `io.vllm.cache`.
    pub fn cache_dir(self) -> &'static str {
        match self {
            Self::Triton => "io.triton.cache",
            Self::Vllm => "io.vllm.cache",
        }
    }

    /// The layer directory holding `manifest.json`, `io.triton.manifest` or `io.vllm.manifest`.
    pub fn manifest_dir(self) -> &'static str {
        match self {
            Self::Triton => "io.triton.manifest",
            Self::Vllm => "io.vllm.manifest",
        }
    }

    /// `<prefix>summary`.
    pub fn summary_label(self) -> String {
        format!("{}summary", self.label_prefix())
    }

    /// `<prefix>entry-count`.
    pub fn entry_count_label(self) -> String {
        format!("{}entry-count", self.label_prefix())
    }

    /// `<prefix>cache-size-bytes`.
    pub fn size_label(self) -> String {
        format!("{}cache-size-bytes", self.label_prefix())
    }
}

/// Why an image config is not a usable cache image.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// The config blob is not JSON of the expected shape.
    #[error("image config is not valid json")]
    Config(#[source] serde_json::Error),
    /// No cache labels at all.
    #[error("image config has no cache.triton.image/ or cache.vllm.image/ labels: not a cache image")]
    NotACacheImage,
    /// The summary label is not valid JSON.
    #[error("label {label} is not a valid cache summary")]
    Summary {
        /// The label.
        label: String,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// A summary target is not understood.
    #[error("label {label}: target {index} is not valid: {detail}")]
    Target {
        /// The label.
        label: String,
        /// The target's position.
        index: usize,
        /// What is wrong.
        detail: String,
    },
    /// A count label is not a decimal number.
    #[error("label {label} is not a number: {value:?}")]
    Count {
        /// The label.
        label: String,
        /// The value.
        value: String,
    },
    /// The build cache root label is not an absolute, normal path.
    #[error("label {LABEL_BUILD_CACHE_ROOT} is not an absolute path without '..': {0:?}")]
    BuildRoot(String),
}

type Result<T> = std::result::Result<T, FormatError>;

/// What kcache knows about a cache image from its config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheImageMeta {
    /// Triton or vLLM.
    pub kind: CacheKind,
    /// The targets (empty when the image records none).
    pub summary: CacheSummary,
    /// Kernel count, when labelled.
    pub entry_count: Option<u64>,
    /// Cache size in bytes, when labelled.
    pub cache_size_bytes: Option<u64>,
    /// `cache.kcache.dev/triton-version`.
    pub triton_version: Option<String>,
    /// `cache.kcache.dev/build-cache-root`, absolute.
    pub build_cache_root: Option<String>,
    /// `cache.kcache.dev/driver-version`.
    pub driver_version: Option<String>,
}

#[derive(Deserialize)]
struct ImageConfig {
    #[serde(default)]
    config: Option<ContainerConfig>,
}

#[derive(Deserialize)]
struct ContainerConfig {
    #[serde(rename = "Labels", default)]
    labels: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
struct RawSummary {
    #[serde(default)]
    targets: Vec<RawTarget>,
}

#[derive(Deserialize)]
struct RawTarget {
    backend: String,
    arch: serde_json::Value,
    warp_size: u32,
}

impl CacheImageMeta {
    /// Reads an OCI (or Docker) image config blob.
    pub fn from_config_json(config: &[u8]) -> Result<Self> {
        let c: ImageConfig = serde_json::from_slice(config).map_err(FormatError::Config)?;
        let labels = c.config.and_then(|c| c.labels).unwrap_or_default();
        Self::from_labels(&labels)
    }

    /// Reads the image's labels.
    pub fn from_labels(labels: &BTreeMap<String, String>) -> Result<Self> {
        let has = |k: CacheKind| labels.keys().any(|l| l.starts_with(k.label_prefix()));
        // MCV detects vLLM caches before Triton ones (a vLLM cache holds Triton caches).
        let kind = if has(CacheKind::Vllm) {
            CacheKind::Vllm
        } else if has(CacheKind::Triton) {
            CacheKind::Triton
        } else {
            return Err(FormatError::NotACacheImage);
        };
        let summary = match labels.get(&kind.summary_label()) {
            None => CacheSummary::default(),
            Some(s) => parse_summary(&kind.summary_label(), s, kind == CacheKind::Vllm)?,
        };
        let count = |label: String| -> Result<Option<u64>> {
            labels
                .get(&label)
                .map(|v| {
                    v.trim().parse::<u64>().map_err(|_| FormatError::Count {
                        label: label.clone(),
                        value: v.clone(),
                    })
                })
                .transpose()
        };
        let text = |label: &str| {
            labels
                .get(label)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let build_cache_root = text(LABEL_BUILD_CACHE_ROOT);
        if let Some(root) = &build_cache_root {
            if !root.starts_with('/') || root.split('/').any(|c| c == "..") {
                return Err(FormatError::BuildRoot(root.clone()));
            }
        }
        Ok(Self {
            kind,
            summary,
            entry_count: count(kind.entry_count_label())?,
            cache_size_bytes: count(kind.size_label())?,
            triton_version: text(LABEL_TRITON_VERSION),
            build_cache_root,
            driver_version: text(LABEL_DRIVER_VERSION),
        })
    }

    /// What [`crate::gpu::compat::check`] needs beyond the targets.
    pub fn requirements(&self) -> CacheRequirements {
        CacheRequirements {
            min_driver_version: self.driver_version.clone(),
            triton_version: self.triton_version.clone(),
        }
    }
}

/// Parses a summary label value. `lenient`: a value that is not JSON at all means "no targets".
fn parse_summary(label: &str, value: &str, lenient: bool) -> Result<CacheSummary> {
    let raw: RawSummary = match serde_json::from_str(value) {
        Ok(r) => r,
        Err(e) if lenient && e.is_syntax() => return Ok(CacheSummary::default()),
        Err(source) => {
            return Err(FormatError::Summary {
                label: label.to_string(),
                source,
            })
        }
    };
    let mut targets: Vec<CacheTarget> = Vec::new();
    for (index, t) in raw.targets.into_iter().enumerate() {
        let bad = |detail: String| FormatError::Target {
            label: label.to_string(),
            index,
            detail,
        };
        let backend = parse_backend(&t.backend).ok_or_else(|| bad(format!("unknown backend {:?}", t.backend)))?;
        let arch = parse_arch(backend, &t.arch).ok_or_else(|| bad(format!("bad {backend} arch {}", t.arch)))?;
        let target = CacheTarget {
            backend,
            arch,
            warp_size: t.warp_size,
        };
        if !targets.contains(&target) {
            targets.push(target);
        }
    }
    Ok(CacheSummary { targets })
}

/// `cuda`, or `hip` (MCV and some tools say `rocm`).
pub fn parse_backend(s: &str) -> Option<Backend> {
    match s.to_ascii_lowercase().as_str() {
        "cuda" => Some(Backend::Cuda),
        "hip" | "rocm" => Some(Backend::Hip),
        _ => None,
    }
}

/// An arch as Triton or MCV writes it: CUDA `90`, `"90"`, `"sm_90"`, `"sm_9.0"`; HIP `"gfx942"`.
pub fn parse_arch(backend: Backend, v: &serde_json::Value) -> Option<Arch> {
    match (backend, v) {
        (Backend::Cuda, serde_json::Value::Number(n)) => n.as_u64().and_then(|n| u32::try_from(n).ok()).map(Arch::Cuda),
        (Backend::Cuda, serde_json::Value::String(s)) => {
            let s = s.trim().trim_start_matches("sm_");
            match s.split_once('.') {
                Some((maj, min)) => Some(Arch::Cuda(maj.parse::<u32>().ok()? * 10 + min.parse::<u32>().ok()?)),
                None => s.parse().ok().map(Arch::Cuda),
            }
        }
        (Backend::Hip, serde_json::Value::String(s)) if s.starts_with("gfx") && s.len() > 3 => {
            Some(Arch::Gfx(s.to_string()))
        }
        _ => None,
    }
}

/// The summary label's value as MCV writes it: arch as a string.
pub fn summary_label(summary: &CacheSummary) -> String {
    let targets: Vec<_> = summary
        .targets
        .iter()
        .map(|t| {
            let arch = match &t.arch {
                Arch::Cuda(cc) => cc.to_string(),
                Arch::Gfx(g) => g.clone(),
            };
            serde_json::json!({"backend": t.backend, "arch": arch, "warp_size": t.warp_size})
        })
        .collect();
    serde_json::json!({ "targets": targets }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(labels: serde_json::Value) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "config": {"Labels": labels},
            "rootfs": {"type": "layers", "diff_ids": ["sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef"]}
        }))
        .unwrap()
    }

    #[test]
    fn mcv_triton_image_with_string_arches_parses() {
        let c = config(serde_json::json!({
            "cache.triton.image/summary": r#"{"targets":[{"backend":"cuda","arch":"90","warp_size":32},{"backend":"hip","arch":"gfx90a","warp_size":64},{"backend":"cuda","arch":"90","warp_size":32}]}"#,
            "cache.triton.image/entry-count": "12",
            "cache.triton.image/cache-size-bytes": "1048576",
        }));
        let m = CacheImageMeta::from_config_json(&c).unwrap();
        assert_eq!(m.kind, CacheKind::Triton);
        assert_eq!(
            m.summary.targets,
            vec![
                CacheTarget {
                    backend: Backend::Cuda,
                    arch: Arch::Cuda(90),
                    warp_size: 32
                },
                CacheTarget {
                    backend: Backend::Hip,
                    arch: Arch::Gfx("gfx90a".into()),
                    warp_size: 64
                },
            ]
        );
        assert_eq!((m.entry_count, m.cache_size_bytes), (Some(12), Some(1048576)));
        assert_eq!(
            (m.triton_version, m.build_cache_root, m.driver_version),
            (None, None, None)
        );
    }

    #[test]
    fn kcache_labels_and_int_arches_parse() {
        let c = config(serde_json::json!({
            "cache.triton.image/summary": r#"{"targets":[{"backend":"cuda","arch":80,"warp_size":32}]}"#,
            "cache.kcache.dev/triton-version": "3.3.1",
            "cache.kcache.dev/build-cache-root": "/root/.triton/cache",
            "cache.kcache.dev/driver-version": "550.54.15",
        }));
        let m = CacheImageMeta::from_config_json(&c).unwrap();
        assert_eq!(m.summary.targets[0].arch, Arch::Cuda(80));
        assert_eq!(m.build_cache_root.as_deref(), Some("/root/.triton/cache"));
        assert_eq!(m.entry_count, None);
        let req = m.requirements();
        assert_eq!(req.min_driver_version.as_deref(), Some("550.54.15"));
        assert_eq!(req.triton_version.as_deref(), Some("3.3.1"));
    }

    #[test]
    fn vllm_images_parse_including_mcv_placeholder_summaries() {
        for (summary, want) in [
            (
                r#"{"targets":[{"backend":"cuda","arch":"sm_12.0","warp_size":32}]}"#,
                vec![Arch::Cuda(120)],
            ),
            ("vllm cache (summary pending)", vec![]),
            ("{}", vec![]),
        ] {
            let c = config(serde_json::json!({
                "cache.vllm.image/summary": summary,
                "cache.vllm.image/entry-count": "1",
                "cache.vllm.image/cache-size-bytes": "35702329",
                "cache.vllm.image/format": "binary",
            }));
            let m = CacheImageMeta::from_config_json(&c).unwrap();
            assert_eq!(m.kind, CacheKind::Vllm);
            assert_eq!(
                m.summary.targets.iter().map(|t| t.arch.clone()).collect::<Vec<_>>(),
                want,
                "{summary}"
            );
        }
        assert_eq!(
            (CacheKind::Vllm.cache_dir(), CacheKind::Vllm.manifest_dir()),
            ("io.vllm.cache", "io.vllm.manifest")
        );
    }

    #[test]
    fn bad_configs_give_errors_naming_the_label() {
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            ("not_json", b"{".to_vec(), "image config is not valid json"),
            (
                "no_labels",
                config(serde_json::json!({"maintainer": "x"})),
                "not a cache image",
            ),
            (
                "malformed_summary",
                config(serde_json::json!({"cache.triton.image/summary": "{\"targets\": ["})),
                "label cache.triton.image/summary is not a valid cache summary",
            ),
            (
                "unknown_backend",
                config(
                    serde_json::json!({"cache.triton.image/summary": r#"{"targets":[{"backend":"xpu","arch":"pvc","warp_size":16}]}"#}),
                ),
                "target 0 is not valid: unknown backend \"xpu\"",
            ),
            (
                "hip_numeric_arch",
                config(
                    serde_json::json!({"cache.triton.image/summary": r#"{"targets":[{"backend":"hip","arch":942,"warp_size":64}]}"#}),
                ),
                "bad hip arch 942",
            ),
            (
                "non_numeric_count",
                config(serde_json::json!({"cache.triton.image/entry-count": "twelve"})),
                "label cache.triton.image/entry-count is not a number: \"twelve\"",
            ),
            (
                "negative_size",
                config(serde_json::json!({"cache.triton.image/cache-size-bytes": "-1"})),
                "label cache.triton.image/cache-size-bytes is not a number",
            ),
            (
                "relative_build_root",
                config(
                    serde_json::json!({"cache.triton.image/entry-count": "1", "cache.kcache.dev/build-cache-root": "cache/../x"}),
                ),
                "cache.kcache.dev/build-cache-root is not an absolute path",
            ),
        ];
        for (name, c, want) in cases {
            let err = CacheImageMeta::from_config_json(&c).unwrap_err();
            assert!(err.to_string().contains(want), "{name}: {err}");
        }
    }

    #[test]
    fn layer_media_types() {
        assert_eq!(
            layer_compression(MEDIA_TYPE_DOCKER_LAYER_GZIP),
            Some(LayerCompression::Gzip)
        );
        assert_eq!(
            layer_compression(MEDIA_TYPE_OCI_LAYER_GZIP),
            Some(LayerCompression::Gzip)
        );
        assert_eq!(
            layer_compression(MEDIA_TYPE_OCI_LAYER_TAR),
            Some(LayerCompression::None)
        );
        assert_eq!(layer_compression("application/vnd.oci.image.layer.v1.tar+zstd"), None);
        assert_eq!(
            layer_compression("application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"),
            None
        );
    }

    #[test]
    fn summary_label_writes_string_arches_and_reads_back() {
        let s = CacheSummary {
            targets: vec![
                CacheTarget {
                    backend: Backend::Cuda,
                    arch: Arch::Cuda(90),
                    warp_size: 32,
                },
                CacheTarget {
                    backend: Backend::Hip,
                    arch: Arch::Gfx("gfx942".into()),
                    warp_size: 64,
                },
            ],
        };
        let v = summary_label(&s);
        assert_eq!(
            v,
            r#"{"targets":[{"arch":"90","backend":"cuda","warp_size":32},{"arch":"gfx942","backend":"hip","warp_size":64}]}"#
        );
        assert_eq!(parse_summary("l", &v, false).unwrap(), s);
    }
}

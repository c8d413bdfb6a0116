//! Where the cache goes inside the container.
//!
//! `kcache.dev/cache-path` wins. Otherwise the path the container's own Triton (or vLLM) would
//! use, from the process env in `config.json`:
//!
//! - Triton caches: `TRITON_CACHE_DIR`, else `$TRITON_HOME/.triton/cache`, else
//!   `$HOME/.triton/cache` (Triton's `knobs.cache.dir` default);
//! - vLLM caches: `VLLM_CACHE_ROOT`, else `$XDG_CACHE_HOME/vllm`, else `$HOME/.cache/vllm`.
//!
//! Without `HOME`, uid 0 means `/root` (what runc would set from the image's passwd for root);
//! any other user needs the annotation. Every candidate is checked as untrusted input: absolute,
//! no `..`, not `/`, and not under `/proc`, `/sys` or `/dev`.

use crate::oci::env_get;

/// Where the target came from, for logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `kcache.dev/cache-path`.
    Annotation,
    /// An env variable of the container.
    Env(&'static str),
    /// `$HOME` (or the root default).
    Home,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Annotation => f.write_str(crate::request::PATH),
            Self::Env(v) => write!(f, "${v}"),
            Self::Home => f.write_str("$HOME"),
        }
    }
}

/// A checked, normalised absolute path inside the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `/a/b/c`: no `.`, `..` or empty components.
    pub path: String,
    /// Where it came from.
    pub source: Source,
}

impl Target {
    /// The components (`["a", "b", "c"]`).
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.path.split('/').filter(|c| !c.is_empty())
    }
}

/// Why no target could be chosen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// Not absolute.
    #[error("target {path:?} (from {from}) is not an absolute path")]
    Relative {
        /// The path.
        path: String,
        /// Where it came from.
        from: Source,
    },
    /// Has a `..` component.
    #[error("target {path:?} (from {from}) contains '..'")]
    DotDot {
        /// The path.
        path: String,
        /// Where it came from.
        from: Source,
    },
    /// The container root, or a kernel filesystem.
    #[error(
        "target {path:?} (from {from}) is not allowed: the cache cannot cover / or anything under /proc, /sys or /dev"
    )]
    Forbidden {
        /// The path.
        path: String,
        /// Where it came from.
        from: Source,
    },
    /// NUL, too long, or a component longer than NAME_MAX.
    #[error("target {path:?} (from {from}) is not a usable path (NUL byte, or too long)")]
    Malformed {
        /// The path.
        path: String,
        /// Where it came from.
        from: Source,
    },
    /// No env to derive it from.
    #[error(
        "the container's env has no HOME and its user is uid {uid}: set {}",
        crate::request::PATH
    )]
    NoHome {
        /// The container user.
        uid: u32,
    },
}

/// The cache kinds the store records (`CacheRecord::kind`).
pub const KIND_VLLM: &str = "vllm";

/// Chooses and checks the target: `annotation`, else from `env` for a cache of `kind`.
pub fn choose(annotation: Option<&str>, kind: &str, env: &[String], uid: u32) -> Result<Target, TargetError> {
    if let Some(p) = annotation {
        return check(p, Source::Annotation);
    }
    let nonempty = |k| env_get(env, k).filter(|v| !v.is_empty());
    let home = || match nonempty("HOME") {
        Some(h) => Ok(h.trim_end_matches('/').to_string()),
        None if uid == 0 => Ok("/root".to_string()),
        None => Err(TargetError::NoHome { uid }),
    };
    if kind == KIND_VLLM {
        if let Some(v) = nonempty("VLLM_CACHE_ROOT") {
            return check(v, Source::Env("VLLM_CACHE_ROOT"));
        }
        if let Some(v) = nonempty("XDG_CACHE_HOME") {
            return check(
                &format!("{}/vllm", v.trim_end_matches('/')),
                Source::Env("XDG_CACHE_HOME"),
            );
        }
        return check(&format!("{}/.cache/vllm", home()?), Source::Home);
    }
    if let Some(v) = nonempty("TRITON_CACHE_DIR") {
        return check(v, Source::Env("TRITON_CACHE_DIR"));
    }
    if let Some(v) = nonempty("TRITON_HOME") {
        return check(
            &format!("{}/.triton/cache", v.trim_end_matches('/')),
            Source::Env("TRITON_HOME"),
        );
    }
    check(&format!("{}/.triton/cache", home()?), Source::Home)
}

/// Checks and normalises one candidate path.
pub fn check(path: &str, source: Source) -> Result<Target, TargetError> {
    let err_path = path.to_string();
    if path.contains('\0') || path.len() > 4096 {
        return Err(TargetError::Malformed {
            path: err_path,
            from: source,
        });
    }
    if !path.starts_with('/') {
        return Err(TargetError::Relative {
            path: err_path,
            from: source,
        });
    }
    let mut parts = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                return Err(TargetError::DotDot {
                    path: err_path,
                    from: source,
                })
            }
            c if c.len() > 255 => {
                return Err(TargetError::Malformed {
                    path: err_path,
                    from: source,
                })
            }
            c => parts.push(c),
        }
    }
    if parts.is_empty() || matches!(parts[0], "proc" | "sys" | "dev") {
        return Err(TargetError::Forbidden {
            path: err_path,
            from: source,
        });
    }
    Ok(Target {
        path: format!("/{}", parts.join("/")),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[&str]) -> Vec<String> {
        vars.iter().map(|s| s.to_string()).collect()
    }

    /// name, annotation, kind, env, uid, expected path or error prefix.
    type Case = (
        &'static str,
        Option<&'static str>,
        &'static str,
        Vec<String>,
        u32,
        Result<&'static str, &'static str>,
    );

    #[test]
    fn choice_order() {
        let cases: Vec<Case> = vec![
            (
                "annotation_wins",
                Some("/models/cache"),
                "triton",
                env(&["TRITON_CACHE_DIR=/t"]),
                0,
                Ok("/models/cache"),
            ),
            (
                "triton_cache_dir",
                None,
                "triton",
                env(&["HOME=/home/u", "TRITON_CACHE_DIR=/t/c"]),
                1000,
                Ok("/t/c"),
            ),
            (
                "triton_home",
                None,
                "triton",
                env(&["HOME=/home/u", "TRITON_HOME=/th/"]),
                1000,
                Ok("/th/.triton/cache"),
            ),
            (
                "home",
                None,
                "triton",
                env(&["HOME=/home/u/"]),
                1000,
                Ok("/home/u/.triton/cache"),
            ),
            (
                "root_without_home",
                None,
                "triton",
                env(&[]),
                0,
                Ok("/root/.triton/cache"),
            ),
            (
                "empty_var_is_unset",
                None,
                "triton",
                env(&["TRITON_CACHE_DIR=", "HOME=/h"]),
                5,
                Ok("/h/.triton/cache"),
            ),
            (
                "vllm_root",
                None,
                "vllm",
                env(&["VLLM_CACHE_ROOT=/v", "TRITON_CACHE_DIR=/t"]),
                0,
                Ok("/v"),
            ),
            ("vllm_xdg", None, "vllm", env(&["XDG_CACHE_HOME=/x"]), 0, Ok("/x/vllm")),
            ("vllm_home", None, "vllm", env(&["HOME=/h"]), 0, Ok("/h/.cache/vllm")),
            (
                "user_without_home",
                None,
                "triton",
                env(&[]),
                1000,
                Err("the container's env has no HOME"),
            ),
            (
                "dot_dot_annotation",
                Some("/root/../../etc"),
                "triton",
                env(&[]),
                0,
                Err("target \"/root/../../etc\" (from kcache.dev/cache-path) contains '..'"),
            ),
            (
                "dot_dot_env",
                None,
                "triton",
                env(&["TRITON_CACHE_DIR=/a/../b"]),
                0,
                Err("target \"/a/../b\" (from $TRITON_CACHE_DIR) contains '..'"),
            ),
            (
                "relative",
                Some("cache"),
                "triton",
                env(&[]),
                0,
                Err("target \"cache\""),
            ),
            (
                "relative_home",
                None,
                "triton",
                env(&["HOME=home"]),
                0,
                Err("target \"home/.triton/cache\""),
            ),
            ("root", Some("//./"), "triton", env(&[]), 0, Err("target \"//./\"")),
            (
                "proc",
                Some("/proc/self"),
                "triton",
                env(&[]),
                0,
                Err("target \"/proc/self\""),
            ),
            ("sys", Some("//sys/x"), "triton", env(&[]), 0, Err("target \"//sys/x\"")),
            ("nul", Some("/a\0b"), "triton", env(&[]), 0, Err("target \"/a\\0b\"")),
            ("normalised", Some("//a/./b//"), "triton", env(&[]), 0, Ok("/a/b")),
            (
                "proc_lookalike",
                Some("/procfs/x"),
                "triton",
                env(&[]),
                0,
                Ok("/procfs/x"),
            ),
        ];
        for (name, annotation, kind, env, uid, want) in cases {
            let got = choose(annotation, kind, &env, uid);
            match want {
                Ok(p) => assert_eq!(got.as_ref().map(|t| t.path.as_str()), Ok(p), "{name}"),
                Err(prefix) => {
                    let e = got.expect_err(name).to_string();
                    assert!(e.starts_with(prefix), "{name}: {e}");
                }
            }
        }
    }

    #[test]
    fn components() {
        let t = check("/home/u/.triton/cache", Source::Home).unwrap();
        assert_eq!(t.components().collect::<Vec<_>>(), ["home", "u", ".triton", "cache"]);
    }
}

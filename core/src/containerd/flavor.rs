//! Which containerd line a node runs: the lines configure differently.

use std::{fmt, path::Path, process::Command};

use super::{ContainerdError, Result};

/// The containerd lines that configure differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Flavor {
    /// 1.6 and 1.7: config version 2, CRI plugin `io.containerd.grpc.v1.cri`.
    V1,
    /// 2.0: config version 3, CRI pulls through the client.
    V2_0,
    /// 2.1 and later: CRI pulls through the transfer service.
    V2_1,
}

impl fmt::Display for Flavor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Flavor::V1 => "1.6/1.7",
            Flavor::V2_0 => "2.0",
            Flavor::V2_1 => "2.1+",
        })
    }
}

impl Flavor {
    /// 2.0 or later.
    pub fn is_2x(self) -> bool {
        self != Flavor::V1
    }

    /// The config version this line writes by default.
    pub fn default_schema(self) -> i64 {
        if self.is_2x() {
            3
        } else {
            2
        }
    }

    /// Parses `1.6`, `1.7.13`, `v2.0.1`, `2`.
    pub fn parse(v: &str) -> Result<Self> {
        let v = v.trim().trim_start_matches('v');
        let mut parts = v.split(['.', '~', '-', '+']);
        let major: u32 = parts
            .next()
            .unwrap_or("")
            .parse()
            .map_err(|_| ContainerdError::UnknownVersion(v.to_owned()))?;
        let minor: Option<u32> = parts.next().and_then(|m| m.parse().ok());
        Ok(match (major, minor) {
            (1, Some(6 | 7)) => Flavor::V1,
            (1, m) => {
                return Err(ContainerdError::Unsupported(format!(
                    "1.{}",
                    m.map_or("?".into(), |m| m.to_string())
                )))
            }
            (2, Some(0)) => Flavor::V2_0,
            (2, _) => Flavor::V2_1,
            (m, _) if m > 2 => Flavor::V2_1,
            _ => return Err(ContainerdError::UnknownVersion(v.to_owned())),
        })
    }
}

/// The version in `containerd --version` output, e.g.
/// `containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+deb12u3` or
/// `containerd containerd.io v2.0.4 1a43cb6a…`.
pub fn version_from_output(out: &str) -> Option<&str> {
    out.split_whitespace().skip(1).find(|t| {
        let t = t.trim_start_matches('v');
        let mut it = t.split('.');
        matches!((it.next(), it.next()), (Some(a), Some(b)) if !a.is_empty() && a.bytes().all(|c| c.is_ascii_digit())
            && b.bytes().take_while(u8::is_ascii_digit).count() > 0)
    })
}

/// `version` (`auto`: what `containerd_bin --version` says) as a containerd line.
pub fn detect_flavor(version: &str, containerd_bin: &Path) -> Result<Flavor> {
    if version != "auto" {
        return Flavor::parse(version);
    }
    let out = Command::new(containerd_bin)
        .arg("--version")
        .output()
        .map_err(|source| ContainerdError::VersionCommand {
            bin: containerd_bin.to_owned(),
            source,
        })?;
    let text = String::from_utf8_lossy(&out.stdout);
    let v = version_from_output(&text).ok_or_else(|| ContainerdError::NoVersion(text.trim().to_owned()))?;
    Flavor::parse(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(Flavor::parse("1.6").unwrap(), Flavor::V1);
        assert_eq!(Flavor::parse("1.7.13").unwrap(), Flavor::V1);
        assert_eq!(Flavor::parse("1.6.20~ds1").unwrap(), Flavor::V1);
        assert_eq!(Flavor::parse("v2.0.4").unwrap(), Flavor::V2_0);
        assert_eq!(Flavor::parse("2.1").unwrap(), Flavor::V2_1);
        assert_eq!(Flavor::parse("2").unwrap(), Flavor::V2_1);
        assert!(matches!(Flavor::parse("1.5"), Err(ContainerdError::Unsupported(_))));
        assert!(matches!(Flavor::parse("x"), Err(ContainerdError::UnknownVersion(_))));
        assert_eq!(
            version_from_output("containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+deb12u3\n"),
            Some("1.6.20~ds1")
        );
        assert_eq!(
            version_from_output("containerd containerd.io v2.0.4 1a43cb6a1035441f9aca8f5666a9b3ef9e70ab20"),
            Some("v2.0.4")
        );
        assert_eq!(
            version_from_output("containerd github.com/containerd/containerd/v2 v2.1.0 06b99ca"),
            Some("v2.1.0")
        );
    }
}

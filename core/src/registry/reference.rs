//! Image references (`registry/repo[:tag][@digest]`), normalized as docker does
//! (`nginx` = `docker.io/library/nginx`), validated by the distribution grammar so hostile
//! strings never reach a URL.

use std::fmt;

use crate::digest::Digest;

/// A parsed, normalized image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    /// Registry host (and port), e.g. `docker.io`, `127.0.0.1:5000`.
    pub registry: String,
    /// Repository path, e.g. `library/nginx`.
    pub repository: String,
    /// Tag, if any.
    pub tag: Option<String>,
    /// Digest, if any.
    pub digest: Option<Digest>,
}

/// Why a string is not an image reference.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid image reference {input:?}: {reason}")]
pub struct ReferenceError {
    input: String,
    reason: String,
}

const MAX_NAME: usize = 255;

fn component_ok(c: &str) -> bool {
    // [a-z0-9]+ ((\.|_|__|-+) [a-z0-9]+)*
    let b = c.as_bytes();
    if b.is_empty() || !b[0].is_ascii_alphanumeric() || !b[b.len() - 1].is_ascii_alphanumeric() {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        let ch = b[i];
        if ch.is_ascii_digit() || ch.is_ascii_lowercase() {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && matches!(b[i], b'.' | b'_' | b'-') {
            i += 1;
        }
        let sep = &c[start..i];
        if sep.is_empty() {
            return false; // a character that is neither lowercase alphanumeric nor a separator
        }
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    b.iter()
        .all(|x| x.is_ascii_lowercase() || x.is_ascii_digit() || matches!(x, b'.' | b'_' | b'-'))
}

fn tag_ok(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|x| x.is_ascii_alphanumeric() || matches!(x, b'_' | b'.' | b'-'))
}

fn host_ok(h: &str) -> bool {
    let port_ok =
        |p: Option<&str>| p.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
    // An IPv6 literal: `[addr]` or `[addr]:port`.
    if let Some(rest) = h.strip_prefix('[') {
        let Some((addr, after)) = rest.split_once(']') else {
            return false;
        };
        let port = match after {
            "" => None,
            a => match a.strip_prefix(':') {
                Some(p) => Some(p),
                None => return false,
            },
        };
        return addr.parse::<std::net::Ipv6Addr>().is_ok() && port_ok(port);
    }
    let (host, port) = match h.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (h, None),
    };
    port_ok(port)
        && !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-'))
        && !host.starts_with('-')
        && !host.contains("..")
}

impl Reference {
    /// Parses and normalizes a reference.
    pub fn parse(input: &str) -> Result<Self, ReferenceError> {
        let fail = |reason: &str| ReferenceError {
            input: input.chars().take(300).collect(),
            reason: reason.to_string(),
        };
        if input.is_empty() || input.len() > 512 || input.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(fail("empty, too long, or contains whitespace"));
        }
        let (name, digest) = match input.split_once('@') {
            Some((n, d)) => (n, Some(Digest::parse(d).map_err(|e| fail(&e.to_string()))?)),
            None => (input, None),
        };
        let (name, tag) = match name.rsplit_once(':') {
            Some((n, t)) if !t.contains('/') => {
                if !tag_ok(t) {
                    return Err(fail("invalid tag"));
                }
                (n, Some(t.to_string()))
            }
            _ => (name, None),
        };
        let (mut registry, mut repository) = match name.split_once('/') {
            Some((first, rest)) if first.contains('.') || first.contains(':') || first == "localhost" => {
                (first.to_string(), rest.to_string())
            }
            _ => ("docker.io".to_string(), name.to_string()),
        };
        if registry == "index.docker.io" || registry == "registry-1.docker.io" {
            registry = "docker.io".into();
        }
        if !host_ok(&registry) {
            return Err(fail("invalid registry host"));
        }
        if registry == "docker.io" && !repository.contains('/') {
            repository = format!("library/{repository}");
        }
        if repository.len() > MAX_NAME || !repository.split('/').all(component_ok) {
            return Err(fail(
                "invalid repository (lowercase letters, digits and . _ __ - separators per path component)",
            ));
        }
        Ok(Self {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// `registry/repository`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The tag or digest to ask the registry for: the digest wins.
    pub fn reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".into(),
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.name())?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_normalize_like_docker() {
        let cases = [
            ("nginx", "docker.io/library/nginx", None),
            ("nginx:1.25", "docker.io/library/nginx", Some("1.25")),
            ("index.docker.io/foo/bar:v1", "docker.io/foo/bar", Some("v1")),
            ("127.0.0.1:5000/demo/app:v1", "127.0.0.1:5000/demo/app", Some("v1")),
            ("localhost/x", "localhost/x", None),
            ("[::1]:5000/demo/app:v1", "[::1]:5000/demo/app", Some("v1")),
            ("[::1]/demo/app", "[::1]/demo/app", None),
            ("[fd00::2]/demo/app:v2", "[fd00::2]/demo/app", Some("v2")),
            ("quay.io/gkm/cache__a.b-c", "quay.io/gkm/cache__a.b-c", None),
        ];
        for (input, name, tag) in cases {
            let r = Reference::parse(input).unwrap();
            assert_eq!(r.name(), name, "{input}");
            assert_eq!(r.tag.as_deref(), tag, "{input}");
        }
        assert_eq!(Reference::parse("nginx").unwrap().reference(), "latest");
        let d = format!("sha256:{}", "a".repeat(64));
        let r = Reference::parse(&format!("ghcr.io/o/r:v1@{d}")).unwrap();
        assert_eq!(r.reference(), d);
        assert_eq!(r.to_string(), format!("ghcr.io/o/r:v1@{d}"));
    }

    proptest::proptest! {
        /// Any input parses or fails quickly (no panic, no loop), and what parses round-trips
        /// through its own Display.
        #[test]
        fn parsing_never_panics_and_round_trips(input in "[a-zA-Z0-9./:@_\\-]{0,80}") {
            if let Ok(r) = Reference::parse(&input) {
                proptest::prop_assert_eq!(Reference::parse(&r.to_string()).unwrap(), r);
            }
        }

        #[test]
        fn valid_names_parse(repo in "[a-z0-9]{1,8}(/[a-z0-9]{1,8}){0,3}", tag in "[a-zA-Z0-9_][a-zA-Z0-9_.-]{0,20}") {
            let r = Reference::parse(&format!("reg.example:5000/{repo}:{tag}")).unwrap();
            proptest::prop_assert_eq!(r.repository, repo);
            proptest::prop_assert_eq!(r.tag.as_deref(), Some(tag.as_str()));
        }
    }

    #[test]
    fn hostile_references_are_rejected() {
        for bad in [
            "",
            "UPPER/case",
            "a/../b",
            "a//b",
            "a b",
            "reg.io/x:",
            "reg.io/x:-bad",
            "reg.io/x@sha256:zz",
            "reg.io/-x",
            "reg.io/x-",
            "reg.io/x/.hidden",
            "re g.io/x",
            "reg.io:99999999/x",
            "[::1/x",
            "[zz]:5000/x",
            "[::1]x/y",
            "[::1]:/x",
            "::1:5000/x",
            "reg[1].io/x",
            "a\nb",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(Reference::parse(&format!("reg.io/{}", "a".repeat(300))).is_err());
        assert!(Reference::parse(&format!("reg.io/x:{}", "t".repeat(129))).is_err());
    }
}

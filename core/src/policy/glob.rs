//! Image patterns: globs over normalized image names (`registry/repo[/…]`), an optional tag glob
//! and an optional digest pin.
//!
//! | pattern                               | matches                                              |
//! |---------------------------------------|------------------------------------------------------|
//! | `quay.io/gkm/*`                       | `quay.io/gkm/x`, any tag or digest; not `quay.io/gkm/a/b` |
//! | `quay.io/gkm/**`                      | `quay.io/gkm`, `quay.io/gkm/x`, `quay.io/gkm/a/b`    |
//! | `quay.io/gkm/cache-*`                 | `quay.io/gkm/cache-vllm` (`*` stays inside one segment) |
//! | `registry.k8s.io/pause:*`             | `registry.k8s.io/pause` with any tag (a tag is required) |
//! | `ghcr.io/x/y:v1.*`                    | `ghcr.io/x/y:v1.2`, not `ghcr.io/x/y:v2`             |
//! | `ghcr.io/x/y@sha256:<hex>`            | exactly that manifest digest                         |
//!
//! `*` in a name segment matches any characters except `/`; `**` must be a whole segment and
//! matches zero or more segments; `*` in a tag matches any characters. Everything else is literal.

use std::{cmp::Reverse, fmt, str::FromStr};

use crate::digest::{Digest, DigestError};

/// Why a string is not an image pattern.
#[derive(Debug, thiserror::Error)]
pub enum PatternError {
    /// The empty string.
    #[error("empty image pattern")]
    Empty,
    /// Spaces, tabs, newlines or other control characters.
    #[error("image pattern {0:?} contains whitespace or control characters")]
    Whitespace(String),
    /// `a//b`, a leading or a trailing `/`.
    #[error("image pattern {0:?} has an empty path segment")]
    EmptySegment(String),
    /// `***` or longer runs of `*`.
    #[error("image pattern {0:?} contains `***`; use `*` (one segment) or `**` (any segments)")]
    TripleStar(String),
    /// `**` inside a segment (`foo**`).
    #[error("image pattern {0:?} uses `**` inside a segment; `**` must be a whole segment")]
    DoubleStarInSegment(String),
    /// A character images never contain.
    #[error("image pattern {pattern:?} contains {ch:?}, which is not allowed in {part}")]
    BadChar {
        /// The pattern.
        pattern: String,
        /// The offending character.
        ch: char,
        /// `the registry`, `a repository name` or `a tag`.
        part: &'static str,
    },
    /// The first segment is not a registry host, so the pattern could never match a normalized name.
    #[error(
        "image pattern {0:?} does not start with a registry host; patterns match normalized names \
         such as docker.io/library/nginx"
    )]
    NoRegistry(String),
    /// `docker.io/nginx`: normalized Docker Hub names always carry `library/`.
    #[error("image pattern {0:?} can never match: official Docker Hub images are named docker.io/library/<name>")]
    DockerHubLibrary(String),
    /// `name:tag@digest`.
    #[error("image pattern {0:?} has both a tag and a digest; a digest pin already names one image")]
    TagAndDigest(String),
    /// `name:` with nothing after the colon.
    #[error("image pattern {0:?} has an empty tag")]
    EmptyTag(String),
    /// `name@sha256:…` where the digest is malformed.
    #[error("image pattern {pattern:?} has an invalid digest")]
    Digest {
        /// The pattern.
        pattern: String,
        /// Why.
        #[source]
        source: DigestError,
    },
}

/// One segment of a name pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    /// `**`: zero or more whole segments.
    AnyPath,
    /// Literal text with `*` wildcards that stay inside the segment.
    Glob(String),
}

/// A parsed, validated image pattern. See the [module docs](self) for the syntax.
#[derive(Clone, PartialEq, Eq)]
pub struct ImagePattern {
    raw: String,
    name: Vec<Segment>,
    tag: Option<String>,
    digest: Option<Digest>,
}

/// How specific a pattern is; a larger value wins. Fields compare in declaration order, so this is
/// exactly the precedence documented on [`crate::policy`]:
/// digest pin > no wildcard at all > fewer `**` > more literal segments > more literal characters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Specificity {
    digest_pinned: bool,
    exact: bool,
    fewer_any_paths: Reverse<u32>,
    literal_segments: u32,
    literal_chars: u32,
}

impl ImagePattern {
    /// Parses and validates a pattern.
    pub fn parse(s: &str) -> Result<Self, PatternError> {
        let err_s = || s.to_string();
        if s.is_empty() {
            return Err(PatternError::Empty);
        }
        if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(PatternError::Whitespace(err_s()));
        }
        if s.contains("***") {
            return Err(PatternError::TripleStar(err_s()));
        }
        let (rest, digest) = match s.rsplit_once('@') {
            Some((name, d)) => {
                let digest = Digest::parse(d).map_err(|source| PatternError::Digest {
                    pattern: err_s(),
                    source,
                })?;
                (name, Some(digest))
            }
            None => (s, None),
        };
        let mut segs: Vec<&str> = rest.split('/').collect();
        if segs.iter().any(|seg| seg.is_empty()) {
            return Err(PatternError::EmptySegment(err_s()));
        }
        // A `:` in the last segment (never the registry's, which may carry a port) starts the tag.
        let mut tag = None;
        if segs.len() > 1 {
            if let Some(last) = segs.last_mut() {
                if let Some((name, t)) = last.split_once(':') {
                    if t.is_empty() {
                        return Err(PatternError::EmptyTag(err_s()));
                    }
                    if name.is_empty() {
                        return Err(PatternError::EmptySegment(err_s()));
                    }
                    *last = name;
                    tag = Some(t.to_string());
                }
            }
        }
        if tag.is_some() && digest.is_some() {
            return Err(PatternError::TagAndDigest(err_s()));
        }
        if segs.len() == 1 && segs[0] != "**" {
            return Err(PatternError::NoRegistry(err_s()));
        }
        let mut name = Vec::with_capacity(segs.len());
        for (i, seg) in segs.iter().enumerate() {
            if *seg == "**" {
                name.push(Segment::AnyPath);
                continue;
            }
            if seg.contains("**") {
                return Err(PatternError::DoubleStarInSegment(err_s()));
            }
            let (part, ok): (&'static str, fn(char) -> bool) = if i == 0 {
                ("the registry", |c| c.is_ascii_alphanumeric() || ".-_:[]*".contains(c))
            } else {
                ("a repository name", |c| {
                    c.is_ascii_lowercase() || c.is_ascii_digit() || "._-*".contains(c)
                })
            };
            if let Some(ch) = seg.chars().find(|c| !ok(*c)) {
                return Err(PatternError::BadChar {
                    pattern: err_s(),
                    ch,
                    part,
                });
            }
            name.push(Segment::Glob(seg.to_string()));
        }
        if let Segment::Glob(first) = &name[0] {
            let host_like = first.contains(['.', ':', '*']) || first == "localhost";
            if !host_like {
                return Err(PatternError::NoRegistry(err_s()));
            }
            if first == "docker.io" && name.len() == 2 && matches!(&name[1], Segment::Glob(g) if g != "*") {
                return Err(PatternError::DockerHubLibrary(err_s()));
            }
        }
        if let Some(t) = &tag {
            if let Some(ch) = t.chars().find(|c| !(c.is_ascii_alphanumeric() || "._-*".contains(*c))) {
                return Err(PatternError::BadChar {
                    pattern: err_s(),
                    ch,
                    part: "a tag",
                });
            }
        }
        Ok(Self {
            raw: s.to_string(),
            name,
            tag,
            digest,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// The name segments (`None` for `**`, else the segment glob), the tag glob and the digest
    /// pin: the pattern's structure, for rendering it into other policy languages.
    pub fn parts(&self) -> (Vec<Option<&str>>, Option<&str>, Option<&Digest>) {
        let name = self
            .name
            .iter()
            .map(|s| match s {
                Segment::AnyPath => None,
                Segment::Glob(g) => Some(g.as_str()),
            })
            .collect();
        (name, self.tag.as_deref(), self.digest.as_ref())
    }

    /// The pinned digest, for `name@sha256:…` patterns.
    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// Whether the normalized image `name` (`registry/repo`), with its tag and digest if known,
    /// matches. A pattern with a tag part needs a tag; one with a digest pin needs that digest;
    /// one with neither matches any tag or digest.
    pub fn matches(&self, name: &str, tag: Option<&str>, digest: Option<&Digest>) -> bool {
        if let Some(want) = &self.digest {
            if digest != Some(want) {
                return false;
            }
        }
        if let Some(want) = &self.tag {
            match tag {
                Some(t) if wildcard(want.as_bytes(), t.as_bytes()) => {}
                _ => return false,
            }
        }
        match_segments(&self.name, name)
    }

    /// How specific this pattern is; see [`Specificity`].
    pub fn specificity(&self) -> Specificity {
        let mut any_paths = 0;
        let mut literal_segments = 0;
        let mut literal_chars = 0;
        let mut wildcards = false;
        let globs = self
            .name
            .iter()
            .filter_map(|s| match s {
                Segment::AnyPath => {
                    any_paths += 1;
                    None
                }
                Segment::Glob(g) => Some(g.as_str()),
            })
            .chain(self.tag.as_deref());
        for g in globs {
            if g.contains('*') {
                wildcards = true;
            } else {
                literal_segments += 1;
            }
            literal_chars += g.chars().filter(|c| *c != '*').count() as u32;
        }
        Specificity {
            digest_pinned: self.digest.is_some(),
            exact: !wildcards && any_paths == 0,
            fewer_any_paths: Reverse(any_paths),
            literal_segments,
            literal_chars,
        }
    }
}

/// `name` split on `/` against the segments, `**` spanning zero or more whole segments.
/// Dynamic programming over (pattern, name) prefixes, so `**/**/…` cannot go exponential.
fn match_segments(pattern: &[Segment], name: &str) -> bool {
    let parts: Vec<&str> = name.split('/').collect();
    // reach[j]: the first i pattern segments can consume exactly the first j name segments.
    let mut reach = vec![false; parts.len() + 1];
    reach[0] = true;
    for seg in pattern {
        let mut next = vec![false; parts.len() + 1];
        match seg {
            Segment::AnyPath => {
                let mut seen = false;
                for j in 0..=parts.len() {
                    seen |= reach[j];
                    next[j] = seen;
                }
            }
            Segment::Glob(g) => {
                for j in 0..parts.len() {
                    next[j + 1] = reach[j] && wildcard(g.as_bytes(), parts[j].as_bytes());
                }
            }
        }
        reach = next;
    }
    reach[parts.len()]
}

/// Classic `*` wildcard match (no `?`, no classes), linear with one backtrack point.
fn wildcard(pat: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pat.len() && pat[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pat.len() && pat[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pat[p..].iter().all(|b| *b == b'*')
}

impl FromStr for ImagePattern {
    type Err = PatternError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for ImagePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

impl fmt::Debug for ImagePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ImagePattern({})", self.raw)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use rstest::rstest;

    use super::*;

    fn digest(c: char) -> Digest {
        Digest::parse(&format!("sha256:{}", c.to_string().repeat(64))).unwrap()
    }

    #[rstest]
    #[case::star_is_one_segment("quay.io/gkm/*", "quay.io/gkm/cache", None, true)]
    #[case::star_does_not_cross_slash("quay.io/gkm/*", "quay.io/gkm/a/b", None, false)]
    #[case::star_needs_a_segment("quay.io/gkm/*", "quay.io/gkm", None, false)]
    #[case::double_star_matches_zero("quay.io/gkm/**", "quay.io/gkm", None, true)]
    #[case::double_star_matches_many("quay.io/gkm/**", "quay.io/gkm/a/b/c", None, true)]
    #[case::double_star_keeps_prefix("quay.io/gkm/**", "quay.io/gkmx/a", None, false)]
    #[case::double_star_in_middle("ghcr.io/**/app", "ghcr.io/a/b/app", None, true)]
    #[case::double_star_in_middle_zero("ghcr.io/**/app", "ghcr.io/app", None, true)]
    #[case::star_inside_segment("quay.io/gkm/cache-*", "quay.io/gkm/cache-vllm", None, true)]
    #[case::star_inside_segment_no_slash("quay.io/gkm/cache-*", "quay.io/gkm/cache-a/b", None, false)]
    #[case::literal("docker.io/library/nginx", "docker.io/library/nginx", Some("1.27"), true)]
    #[case::literal_is_whole_name("docker.io/library/nginx", "docker.io/library/nginx2", None, false)]
    #[case::port_is_not_a_tag("127.0.0.1:5000/demo/app", "127.0.0.1:5000/demo/app", Some("v1"), true)]
    #[case::wildcard_registry("*/demo/app", "127.0.0.1:5000/demo/app", None, true)]
    #[case::tag_star_any_tag("registry.k8s.io/pause:*", "registry.k8s.io/pause", Some("3.10"), true)]
    #[case::tag_pattern_needs_tag("registry.k8s.io/pause:*", "registry.k8s.io/pause", None, false)]
    #[case::tag_glob("ghcr.io/x/y:v1.*", "ghcr.io/x/y", Some("v1.2.3"), true)]
    #[case::tag_glob_mismatch("ghcr.io/x/y:v1.*", "ghcr.io/x/y", Some("v2.0"), false)]
    #[case::tag_literal("ghcr.io/x/y:latest", "ghcr.io/x/y", Some("latest"), true)]
    #[case::everything("**", "docker.io/library/nginx", Some("x"), true)]
    fn patterns_match_names_and_tags(
        #[case] pattern: &str,
        #[case] name: &str,
        #[case] tag: Option<&str>,
        #[case] expected: bool,
    ) {
        let p = ImagePattern::parse(pattern).unwrap();
        assert_eq!(p.matches(name, tag, None), expected, "{pattern} vs {name}:{tag:?}");
    }

    #[test]
    fn digest_pins_match_only_that_digest() {
        let d = digest('a');
        let p = ImagePattern::parse(&format!("ghcr.io/x/y@{d}")).unwrap();
        assert!(p.matches("ghcr.io/x/y", Some("v1"), Some(&d)));
        assert!(!p.matches("ghcr.io/x/y", Some("v1"), Some(&digest('b'))));
        assert!(!p.matches("ghcr.io/x/y", Some("v1"), None));
        assert!(!p.matches("ghcr.io/x/z", None, Some(&d)));
        // A pattern without a digest matches any digest.
        assert!(ImagePattern::parse("ghcr.io/x/y")
            .unwrap()
            .matches("ghcr.io/x/y", None, Some(&d)));
    }

    #[rstest]
    #[case::empty("")]
    #[case::space("quay.io/gkm /x")]
    #[case::tab("quay.io/gkm/\tx")]
    #[case::empty_segment("quay.io//x")]
    #[case::leading_slash("/quay.io/x")]
    #[case::trailing_slash("quay.io/x/")]
    #[case::triple_star("quay.io/***")]
    #[case::double_star_in_segment("quay.io/gkm**")]
    #[case::no_registry("library/nginx")]
    #[case::single_segment("nginx")]
    #[case::docker_hub_without_library("docker.io/nginx")]
    #[case::uppercase_repo("quay.io/GKM/x")]
    #[case::empty_tag("quay.io/x:")]
    #[case::bad_tag_char("quay.io/x:v1+2")]
    #[case::tag_and_digest("quay.io/x:v1@sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa")]
    #[case::bad_digest("quay.io/x@sha256:zz")]
    #[case::colon_in_middle("quay.io/a:b/c")]
    fn malformed_patterns_are_rejected(#[case] pattern: &str) {
        assert!(ImagePattern::parse(pattern).is_err(), "{pattern:?} accepted");
    }

    #[test]
    fn specificity_orders_as_documented() {
        let d = digest('c');
        // Each pattern is strictly more specific than the next one.
        let ordered = [
            format!("ghcr.io/**@{d}"),
            "ghcr.io/x/y:v1".to_string(),
            "ghcr.io/x/y".to_string(),
            "ghcr.io/x/y:v1.*".to_string(),
            "ghcr.io/x/*".to_string(),
            "ghcr.io/*/*".to_string(),
            "ghcr.io/x/**".to_string(),
            "ghcr.io/**".to_string(),
            "**/x/**".to_string(),
        ];
        for w in ordered.windows(2) {
            let (a, b) = (ImagePattern::parse(&w[0]).unwrap(), ImagePattern::parse(&w[1]).unwrap());
            assert!(a.specificity() > b.specificity(), "{a} should beat {b}");
        }
        let longer = ImagePattern::parse("ghcr.io/x/cache-*").unwrap();
        let shorter = ImagePattern::parse("ghcr.io/x/c*").unwrap();
        assert!(
            longer.specificity() > shorter.specificity(),
            "more literal characters win"
        );
    }

    fn segment() -> impl Strategy<Value = String> {
        "[a-z0-9._-]{1,6}"
    }

    proptest! {
        /// `*` (alone or inside a segment) never matches across a `/`.
        #[test]
        fn star_never_crosses_a_slash(
            pre in segment(), a in segment(), b in segment(), tail in proptest::collection::vec(segment(), 0..3),
        ) {
            let inner = format!("{a}/{b}");
            let name = format!("r.io/{pre}/{inner}");
            let star = ImagePattern::parse(&format!("r.io/{pre}/*")).unwrap();
            prop_assert!(!star.matches(&name, None, None));
            let p = ImagePattern::parse(&format!("r.io/{pre}/{}*", &a[..1])).unwrap();
            prop_assert!(!p.matches(&name, None, None));
            let one = format!("r.io/{pre}/{a}");
            prop_assert!(p.matches(&one, None, None));
            // A pattern of n single-star segments matches exactly the names with n segments.
            let mut parts = vec![pre.clone(), a.clone()];
            parts.extend(tail);
            let name = format!("r.io/{}", parts.join("/"));
            for n in 1..=5 {
                let p = ImagePattern::parse(&format!("r.io{}", "/*".repeat(n))).unwrap();
                prop_assert_eq!(p.matches(&name, None, None), n == parts.len());
            }
        }
    }
}

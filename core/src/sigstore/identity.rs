//! Who must have signed: an OIDC issuer and a subject (SAN), each matched exactly or by an
//! anchored regular expression. There is deliberately no "any" matcher.

use std::fmt;

/// Matches one string exactly or against an anchored regular expression.
#[derive(Clone)]
pub enum Matcher {
    /// Byte-for-byte equality.
    Exact(String),
    /// A regular expression that must start with `^` and end with `$`.
    Regex(regex::Regex),
}

/// Why a matcher could not be built.
#[derive(Debug, thiserror::Error)]
pub enum MatcherError {
    /// The expression is not anchored at both ends, so it could match a substring
    /// (`https://github.com/myorg/` would match `https://evil.example/https://github.com/myorg/x`).
    #[error("regular expression {0:?} must be anchored with ^ at the start and $ at the end")]
    Unanchored(String),
    /// Does not compile.
    #[error("invalid regular expression {pattern:?}")]
    Invalid {
        /// The expression.
        pattern: String,
        /// What the regex crate said.
        #[source]
        source: regex::Error,
    },
    /// An empty exact value would only match a certificate without the field.
    #[error("empty identity value")]
    Empty,
}

impl Matcher {
    /// An exact matcher; empty strings are refused.
    pub fn exact(value: impl Into<String>) -> Result<Self, MatcherError> {
        let v = value.into();
        if v.is_empty() {
            return Err(MatcherError::Empty);
        }
        Ok(Self::Exact(v))
    }

    /// An anchored regular-expression matcher. The whole expression must be wrapped in `^…$`;
    /// a top-level alternation such as `^a$|^b$` is accepted only because every branch is
    /// anchored, which we check by compiling `^(?:…)$` and requiring both to agree.
    pub fn regex(pattern: &str) -> Result<Self, MatcherError> {
        if !pattern.starts_with('^') || !pattern.ends_with('$') || pattern.ends_with("\\$") {
            return Err(MatcherError::Unanchored(pattern.to_string()));
        }
        // Wrap so that `^a|b$` (anchored only on the outer branches) is still anchored as a whole.
        let wrapped = format!("^(?:{})$", pattern);
        let re = regex::Regex::new(&wrapped).map_err(|source| MatcherError::Invalid {
            pattern: pattern.to_string(),
            source,
        })?;
        Ok(Self::Regex(re))
    }

    /// Whether `value` matches.
    pub fn matches(&self, value: &str) -> bool {
        match self {
            Self::Exact(v) => v == value,
            Self::Regex(re) => re.is_match(value),
        }
    }
}

impl fmt::Debug for Matcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Matcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exact(v) => write!(f, "{v:?}"),
            // Show what the user wrote, without our wrapping group.
            Self::Regex(re) => {
                let s = re.as_str();
                let inner = s.strip_prefix("^(?:").and_then(|s| s.strip_suffix(")$")).unwrap_or(s);
                write!(f, "/{inner}/")
            }
        }
    }
}

/// A keyless signer identity: both the issuer and the subject must match.
#[derive(Clone, Debug)]
pub struct Identity {
    /// OIDC issuer (Fulcio extension 1.3.6.1.4.1.57264.1.8, or the legacy .1.1).
    pub issuer: Matcher,
    /// Certificate SAN: email, URI or other name.
    pub subject: Matcher,
}

impl Identity {
    /// Both exact.
    pub fn exact(issuer: &str, subject: &str) -> Result<Self, MatcherError> {
        Ok(Self {
            issuer: Matcher::exact(issuer)?,
            subject: Matcher::exact(subject)?,
        })
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "issuer {} subject {}", self.issuer, self.subject)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regex_matchers_must_be_anchored() {
        for bad in ["https://github.com/myorg/.*", "^https://github.com/.*", ".*$", "^a\\$"] {
            assert!(matches!(Matcher::regex(bad), Err(MatcherError::Unanchored(_))), "{bad}");
        }
        assert!(matches!(
            Matcher::regex("^(unclosed$"),
            Err(MatcherError::Invalid { .. })
        ));
        let m = Matcher::regex(r"^https://github\.com/myorg/.*$").unwrap();
        assert!(m.matches("https://github.com/myorg/repo/.github/workflows/x.yml@refs/heads/main"));
        assert!(!m.matches("https://evil.example/https://github.com/myorg/x"));
    }

    #[test]
    fn alternation_stays_anchored_as_a_whole() {
        let m = Matcher::regex("^a|b$").unwrap();
        assert!(m.matches("a") && m.matches("b"));
        assert!(!m.matches("ab-and-more") && !m.matches("xxb"));
    }

    #[test]
    fn exact_matchers_refuse_empty() {
        assert!(matches!(Matcher::exact(""), Err(MatcherError::Empty)));
        assert!(!Matcher::exact("a@b").unwrap().matches("a@b.evil"));
    }
}

//! Policy load errors: every problem found, each with its file and field path.

use std::{error::Error as _, fmt, io, path::PathBuf, sync::Arc};

use super::glob::PatternError;
use crate::{
    keys::KeyError,
    sigstore::{MatcherError, TrustRootError},
};

/// Everything wrong with a policy; never empty.
#[derive(Debug)]
pub struct PolicyError {
    /// In file order, then field order.
    pub problems: Vec<Problem>,
}

/// One problem: where, and what.
#[derive(Debug)]
pub struct Problem {
    /// The file (as given, or joined onto the policy.d directory).
    pub file: PathBuf,
    /// The field path, as `rules[0].authorities[1].keyless`; empty for the whole file.
    pub field: String,
    /// What is wrong.
    pub kind: ProblemKind,
}

/// What is wrong with one field.
#[derive(Debug, thiserror::Error)]
pub enum ProblemKind {
    /// The file cannot be read.
    #[error("cannot read policy file")]
    ReadFile(#[source] io::Error),
    /// The policy.d directory cannot be listed.
    #[error("cannot read policy directory")]
    ReadDir(#[source] io::Error),
    /// Not YAML at all.
    #[error("not valid YAML")]
    Yaml(#[source] serde_yaml::Error),
    /// Wrong shape: unknown or missing field, wrong type, unknown enum value (serde's words).
    #[error("{0}")]
    Shape(String),
    /// `mode` or `default` in a policy.d fragment.
    #[error("{0} can only be set in the main policy file")]
    MainOnly(&'static str),
    /// Empty, or characters outside `[A-Za-z0-9._-]`.
    #[error("rule name {0:?} must be non-empty and use only letters, digits, '.', '_' and '-'")]
    BadName(String),
    /// Two rules with one name.
    #[error("duplicate rule name {name:?} (first defined at {first})")]
    DuplicateName {
        /// The name.
        name: String,
        /// `file: field` of the first definition.
        first: String,
    },
    /// `images: []`.
    #[error("at least one image pattern is required")]
    NoImages,
    /// A pattern that does not parse.
    #[error("bad image pattern")]
    Pattern(#[source] PatternError),
    /// A rule with neither authorities nor `allow: true`.
    #[error("at least one authority is required (or `allow: true` for an unsigned allow-list)")]
    NoAuthority,
    /// `allow: true` together with authorities.
    #[error("an allow rule must not have authorities")]
    AllowWithAuthorities,
    /// `allow: true` together with a signature setting.
    #[error("{0} has no effect on an allow rule")]
    AllowWith(&'static str),
    /// `signatureFormats: []`.
    #[error("at least one signature format is required")]
    NoFormats,
    /// An authority entry with both or neither of `key` and `keyless`.
    #[error("set exactly one of `key` and `keyless`")]
    AuthorityKind,
    /// Keyless without an issuer.
    #[error("an issuer (issuer or issuerRegExp) is required")]
    NoIssuer,
    /// Keyless without a subject.
    #[error("an identity (subject or subjectRegExp) is required")]
    NoSubject,
    /// `subject` and `subjectRegExp` (or the issuer pair) together.
    #[error("set only one of {0} and {1}")]
    Both(&'static str, &'static str),
    /// Unanchored, invalid or empty matcher.
    #[error("bad identity matcher")]
    Matcher(#[source] MatcherError),
    /// An anchored regexp that still matches everything (`^.*$`).
    #[error("regular expression {0} accepts any signer; name the identity")]
    AcceptsAnySigner(String),
    /// Key file unreadable.
    #[error("cannot read key file {0}")]
    KeyRead(PathBuf, #[source] io::Error),
    /// Key file not a supported public key.
    #[error("bad public key in {0}")]
    Key(PathBuf, #[source] KeyError),
    /// Trusted root unreadable or invalid.
    #[error("bad trusted root")]
    TrustedRoot(#[source] Arc<TrustRootError>),
}

impl fmt::Display for Problem {
    /// `file: field: reason: cause: cause…`. The causes are printed here, unlike in single
    /// errors, because a list of problems has no one chain a caller could walk.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.file.display())?;
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        write!(f, "{}", self.kind)?;
        let mut cause = self.kind.source();
        while let Some(c) = cause {
            write!(f, ": {c}")?;
            cause = c.source();
        }
        Ok(())
    }
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        write!(f, "invalid policy ({n} problem{})", if n == 1 { "" } else { "s" })?;
        for p in &self.problems {
            write!(f, "\n  {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for PolicyError {}

//! The verification policy: which images must be signed, by whom, and what happens otherwise.
//!
//! One main file (`/etc/kcache/policy.yaml`) plus a `policy.d/` directory of fragments, modelled
//! on sigstore policy-controller's ClusterImagePolicy and containers-policy.json:
//!
//! ```yaml
//! mode: enforce            # enforce | warn | off           (main file only; default enforce)
//! default: deny            # images no rule matches: deny | allow (main file only; default deny)
//! rules:
//!   - name: kernel-caches
//!     images: ["quay.io/gkm/**", "registry.example.com/caches/*"]
//!     authorities:         # any one suffices
//!       - key: {path: keys/caches.pub}      # relative to the policy file's directory
//!       - keyless:
//!           issuer: https://token.actions.githubusercontent.com   # or issuerRegExp
//!           subjectRegExp: '^https://github\.com/myorg/.*$'      # or subject; required
//!           trustedRoot: /etc/kcache/trusted_root.json           # default: public-good
//!     transparencyLog: required    # required | optional | off
//!     signatureFormats: [cosign-v2, cosign-v3]
//!   - name: bootstrap
//!     images: ["registry.k8s.io/pause:*"]
//!     allow: true          # allow-listed without a signature
//! ```
//!
//! Fragments in `policy.d/` (`*.yaml`, `*.yml`, hidden files skipped) hold only `rules:`.
//! Loading ([`Policy::load`]) validates everything up front and reports every problem at once.
//! Keyless authorities always need an identity: there is no "accept any signer".
//!
//! # Precedence: the most specific match wins
//!
//! An image is decided by exactly one rule, or by `default` when no rule matches. Among the
//! rules with a matching pattern, the one whose best matching pattern is most specific wins;
//! specificity compares, in order ([`Specificity`]):
//!
//! 1. an exact digest pin (`name@sha256:…`) beats everything else;
//! 2. a pattern with no wildcard at all beats one with wildcards;
//! 3. fewer `**` segments win;
//! 4. more literal (wildcard-free) segments win (a literal tag counts as a segment);
//! 5. more literal characters win.
//!
//! Only exact ties fall back to load order: the main file first, then `policy.d/` by file name,
//! rules in file order. So a fragment's effect does not depend on its file name unless two rules
//! are equally specific. Rules do not combine: the winning rule's authorities alone decide.

pub mod crio;
mod error;
mod glob;
mod load;

use std::{path::PathBuf, sync::Arc};

/// The policy's mode, the decision and the signature formats are API types too.
pub use crate::api::{Decision, Mode, SignatureFormat};
pub use error::{PolicyError, Problem, ProblemKind};
pub use glob::{ImagePattern, PatternError, Specificity};
use serde::Deserialize;

use crate::{
    digest::Digest,
    keys::PublicKey,
    sigstore::{Identity, TrustedRoot},
};

/// What happens to images no rule matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DefaultAction {
    /// Refuse them (subject to [`Mode`]).
    Deny,
    /// Let them through unverified.
    Allow,
}

/// Whether a signature must be backed by a transparency-log (Rekor) entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlogRequirement {
    /// An inclusion proof or promise must verify.
    Required,
    /// Checked when present, not needed.
    Optional,
    /// Not looked at.
    Off,
}

/// Who may sign. Any one authority of a rule suffices.
#[derive(Clone, Debug)]
pub enum Authority {
    /// A public key (ECDSA P-256/P-384, Ed25519, RSA).
    Key {
        /// The file it was read from (resolved).
        path: PathBuf,
        /// The key.
        key: PublicKey,
    },
    /// A Fulcio certificate for this identity, chaining to `trusted_root`.
    Keyless {
        /// Issuer and subject; both always present.
        identity: Identity,
        /// Shared between all authorities that name the same file.
        trusted_root: Arc<TrustedRoot>,
        /// The file, or `None` for the public-good root shipped in kcache.
        trusted_root_path: Option<PathBuf>,
    },
}

/// One rule: images it covers and how they must be signed.
#[derive(Clone, Debug)]
pub struct Rule {
    /// Unique across the whole policy.
    pub name: String,
    /// Never empty.
    pub images: Vec<ImagePattern>,
    /// Empty exactly when `allow` is set.
    pub authorities: Vec<Authority>,
    /// As written; `None` means the per-authority default, see [`Rule::tlog_requirement`].
    pub transparency_log: Option<TlogRequirement>,
    /// Accepted formats; never empty (default: both).
    pub formats: Vec<SignatureFormat>,
    /// Allow-listed without a signature.
    pub allow: bool,
    /// The file the rule came from.
    pub source: PathBuf,
}

impl Rule {
    /// The transparency-log requirement for one of this rule's authorities: the rule's setting,
    /// else `required` for keyless (a short-lived certificate needs a trusted signing time) and
    /// `optional` for keys.
    pub fn tlog_requirement(&self, authority: &Authority) -> TlogRequirement {
        self.transparency_log.unwrap_or(match authority {
            Authority::Keyless { .. } => TlogRequirement::Required,
            Authority::Key { .. } => TlogRequirement::Optional,
        })
    }

    /// This rule's most specific pattern matching the image, if any.
    pub fn best_match(&self, name: &str, tag: Option<&str>, digest: Option<&Digest>) -> Option<&ImagePattern> {
        self.images
            .iter()
            .filter(|p| p.matches(name, tag, digest))
            .max_by_key(|p| p.specificity())
    }
}

/// A loaded, validated policy. Immutable; reload by loading a new one.
#[derive(Clone, Debug)]
pub struct Policy {
    /// From the main file.
    pub mode: Mode,
    /// From the main file.
    pub default: DefaultAction,
    /// In load order: main file, then `policy.d/` by file name, each in file order.
    pub rules: Vec<Rule>,
    /// A hash of every byte the policy was built from (policy files, keys, trusted roots):
    /// identical inputs give the same generation, any change gives a new one. Cached verdicts
    /// are keyed by it.
    pub generation: u64,
    /// Every file read, in order: policy files first, then keys and trusted roots.
    pub sources: Vec<PathBuf>,
}

/// What decides an image.
#[derive(Clone, Copy, Debug)]
pub enum Match<'a> {
    /// The most specific matching rule, and its pattern that matched.
    Rule {
        /// The rule.
        rule: &'a Rule,
        /// Its most specific matching pattern.
        pattern: &'a ImagePattern,
    },
    /// No rule matches.
    Default(DefaultAction),
}

impl Match<'_> {
    /// The rule's name, or `None` for the default.
    pub fn rule_name(&self) -> Option<&str> {
        match self {
            Match::Rule { rule, .. } => Some(&rule.name),
            Match::Default(_) => None,
        }
    }
}

impl Policy {
    /// Which rule decides the image: the most specific match, ties to the earliest rule (see the
    /// [module docs](self)). `name` is the normalized `registry/repository`
    /// (`docker.io/library/nginx`, `127.0.0.1:5000/demo/app`); `tag` and `digest` as referenced.
    pub fn match_image(&self, name: &str, tag: Option<&str>, digest: Option<&Digest>) -> Match<'_> {
        let mut best: Option<(&Rule, &ImagePattern, Specificity)> = None;
        for rule in &self.rules {
            if let Some(p) = rule.best_match(name, tag, digest) {
                let s = p.specificity();
                // Strictly greater: an equally specific later rule loses to the earlier one.
                if best.is_none_or(|(_, _, b)| s > b) {
                    best = Some((rule, p, s));
                }
            }
        }
        match best {
            Some((rule, pattern, _)) => Match::Rule { rule, pattern },
            None => Match::Default(self.default),
        }
    }

    /// The enforced outcome of a raw verdict under this policy's mode.
    pub fn decide(&self, verdict: Verdict) -> Decision {
        Decision::new(self.mode, verdict)
    }
}

/// The raw result of checking an image against its rule (or the default).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Signed as required, allow-listed, or allowed by default.
    Allowed,
    /// Anything else.
    Denied,
}

impl Decision {
    /// Applies `mode` to `verdict`.
    pub fn new(mode: Mode, verdict: Verdict) -> Self {
        match (mode, verdict) {
            (Mode::Off, _) => Self::Unchecked,
            (_, Verdict::Allowed) => Self::Allow,
            (Mode::Enforce, Verdict::Denied) => Self::Deny,
            (Mode::Warn, Verdict::Denied) => Self::AllowWithWarning,
        }
    }
}

#[cfg(test)]
mod tests;

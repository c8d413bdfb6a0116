//! A TrustPolicy as a policy.d fragment: the same `rules:` shape, with inline keys and trusted
//! roots written to files under [`MATERIAL_DIR`] and named by absolute path.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use serde::Serialize;

use super::{safe, FILE_PREFIX, HEADER_MARK, MATERIAL_DIR};
use crate::crd::{DefaultAction, PolicyMode, SignatureFormat, TlogSetting, TrustPolicySpec};

/// TrustRoot objects by name: their trusted_root.json.
pub type TrustRoots = BTreeMap<String, String>;

/// What a TrustPolicy needs that the policy loader cannot check: the objects it refers to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    /// `trustRootRef` names a TrustRoot that does not exist.
    #[error("{field}: TrustRoot {name:?} not found")]
    MissingTrustRoot {
        /// `spec.rules[i].authorities[j].keyless.trustRootRef`.
        field: String,
        /// The name.
        name: String,
    },
    /// Both `trustedRoot` and `trustRootRef`.
    #[error("{field}: set only one of trustedRoot and trustRootRef")]
    BothRoots {
        /// `spec.rules[i].authorities[j].keyless`.
        field: String,
    },
}

/// The files one TrustPolicy becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedPolicy {
    /// The fragment's file name in policy.d.
    pub fragment_name: String,
    /// The fragment (header comment, then `rules:`).
    pub fragment: Vec<u8>,
    /// Key and trusted-root files: path relative to policy.d, content.
    pub material: Vec<(PathBuf, Vec<u8>)>,
    /// The policy's `mode`, for the node's guard (a fragment cannot carry it).
    pub mode: Option<PolicyMode>,
    /// The policy's `default`, for the node's guard.
    pub default: Option<DefaultAction>,
}

#[derive(Serialize)]
struct Fragment<'a> {
    rules: Vec<Rule<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Rule<'a> {
    name: &'a str,
    images: &'a [String],
    #[serde(skip_serializing_if = "Vec::is_empty")]
    authorities: Vec<Authority<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    transparency_log: Option<TlogSetting>,
    #[serde(skip_serializing_if = "Option::is_none")]
    signature_formats: Option<&'a [SignatureFormat]>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    allow: bool,
}

#[derive(Serialize)]
struct Authority<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<Key>,
    #[serde(skip_serializing_if = "Option::is_none")]
    keyless: Option<Keyless<'a>>,
}

#[derive(Serialize)]
struct Key {
    path: PathBuf,
}

#[derive(Serialize)]
struct Keyless<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    issuer: Option<&'a str>,
    #[serde(rename = "issuerRegExp", skip_serializing_if = "Option::is_none")]
    issuer_regexp: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    subject: Option<&'a str>,
    #[serde(rename = "subjectRegExp", skip_serializing_if = "Option::is_none")]
    subject_regexp: Option<&'a str>,
    #[serde(rename = "trustedRoot", skip_serializing_if = "Option::is_none")]
    trusted_root: Option<PathBuf>,
}

/// The directory (under [`MATERIAL_DIR`]) of one generation's key and trusted-root files.
pub fn material_dir(name: &str, generation: Option<i64>) -> String {
    format!("trustpolicy-{}-g{}", safe(name), generation.unwrap_or(0))
}

/// The fragment file name for TrustPolicy `name`.
pub fn fragment_name(name: &str) -> String {
    format!("{FILE_PREFIX}trustpolicy-{}.yaml", safe(name))
}

/// Renders TrustPolicy `name` (at `generation`). `policy_d` is the node's policy.d directory:
/// the fragment names its key and trusted-root files by absolute path below it, so the
/// fragment can be validated anywhere before it is put in place. A `mode` or `default` in the
/// spec is not rendered (only the node's main file sets them); it is returned for the guard.
pub fn render_policy(
    name: &str,
    generation: Option<i64>,
    spec: &TrustPolicySpec,
    roots: &TrustRoots,
    policy_d: &Path,
) -> Result<RenderedPolicy, Vec<RenderError>> {
    // One directory per generation: a new generation's keys never overwrite the files the
    // fragment in force still names (it stays in force when the new one is refused).
    let dir = PathBuf::from(MATERIAL_DIR).join(material_dir(name, generation));
    let mut material = Vec::new();
    let mut errors = Vec::new();
    let mut rules = Vec::with_capacity(spec.rules.len());
    for (i, r) in spec.rules.iter().enumerate() {
        let mut authorities = Vec::with_capacity(r.authorities.len());
        for (j, a) in r.authorities.iter().enumerate() {
            let key = a.key.as_ref().map(|k| {
                let rel = dir.join(format!("rules-{i}-authorities-{j}-key.pem"));
                material.push((rel.clone(), k.data.as_bytes().to_vec()));
                Key {
                    path: policy_d.join(rel),
                }
            });
            let keyless = a.keyless.as_ref().map(|k| {
                let field = format!("spec.rules[{i}].authorities[{j}].keyless");
                let json = match (&k.trusted_root, &k.trust_root_ref) {
                    (Some(_), Some(_)) => {
                        errors.push(RenderError::BothRoots { field });
                        None
                    }
                    (Some(inline), None) => Some(inline.clone()),
                    (None, Some(r)) => match roots.get(r) {
                        Some(json) => Some(json.clone()),
                        None => {
                            errors.push(RenderError::MissingTrustRoot {
                                field: format!("{field}.trustRootRef"),
                                name: r.clone(),
                            });
                            None
                        }
                    },
                    (None, None) => None,
                };
                let trusted_root = json.map(|json| {
                    let rel = dir.join(format!("rules-{i}-authorities-{j}-trusted_root.json"));
                    material.push((rel.clone(), json.into_bytes()));
                    policy_d.join(rel)
                });
                Keyless {
                    issuer: k.issuer.as_deref(),
                    issuer_regexp: k.issuer_regexp.as_deref(),
                    subject: k.subject.as_deref(),
                    subject_regexp: k.subject_regexp.as_deref(),
                    trusted_root,
                }
            });
            authorities.push(Authority { key, keyless });
        }
        rules.push(Rule {
            name: &r.name,
            images: &r.images,
            authorities,
            transparency_log: r.transparency_log,
            signature_formats: r.signature_formats.as_deref(),
            allow: r.allow,
        });
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let body = serde_yaml::to_string(&Fragment { rules }).unwrap_or_default();
    let generation = generation.map_or_else(|| "?".to_string(), |g| g.to_string());
    let fragment = format!(
        "{HEADER_MARK} TrustPolicy {name} generation {generation}. Written by the node agent; \
         edits are overwritten, and the file goes when the TrustPolicy does.\n{body}"
    );
    Ok(RenderedPolicy {
        fragment_name: fragment_name(name),
        fragment: fragment.into_bytes(),
        material,
        mode: spec.mode,
        default: spec.default,
    })
}

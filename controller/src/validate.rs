//! A TrustPolicy checked by the node's own policy loader (`kcache_core::policy::Policy::load`):
//! rendered into a fragment exactly as a node renders it, then loaded. Every problem the loader
//! finds is reported at once, in its words, with the field path rebased onto the object
//! (`spec.rules[0].authorities[0].keyless.subjectRegExp`).

use std::{io, path::Path};

use kcache_core::policy::{Policy, Problem};

use crate::render::{render_policy, RenderedPolicy, TrustRoots};

/// Why a TrustPolicy could not even be checked.
#[derive(Debug, thiserror::Error)]
pub enum ValidateError {
    /// The scratch directory could not be written.
    #[error("cannot write the scratch policy files")]
    Scratch(#[source] io::Error),
}

/// Loads `rendered` as the only fragment beside `main` (an empty main file when `None`). The
/// fragment's material must already be in place (its paths are absolute). Returns the loader's
/// problems, each as `spec.<field>: <reason>`, paths under `strip` shortened; empty when it loads.
pub fn load_fragment(
    main: Option<&Path>,
    rendered: &RenderedPolicy,
    strip: &Path,
) -> Result<Result<Policy, Vec<String>>, ValidateError> {
    let scratch = tempfile::tempdir().map_err(ValidateError::Scratch)?;
    let frag_dir = scratch.path().join("policy.d");
    std::fs::create_dir(&frag_dir).map_err(ValidateError::Scratch)?;
    let frag = frag_dir.join(&rendered.fragment_name);
    std::fs::write(&frag, &rendered.fragment).map_err(ValidateError::Scratch)?;
    let empty_main = scratch.path().join("policy.yaml");
    let main = match main {
        Some(m) => m.to_path_buf(),
        None => {
            std::fs::write(&empty_main, b"").map_err(ValidateError::Scratch)?;
            empty_main
        }
    };
    Ok(match Policy::load(&main, Some(&frag_dir)) {
        Ok(p) => Ok(p),
        Err(e) => Err(e.problems.iter().map(|p| describe(p, &frag, strip)).collect()),
    })
}

/// One problem in the loader's words: fields of the fragment become `spec.` fields of the
/// object; problems in the node's own main file keep their file name.
pub fn describe(p: &Problem, fragment: &Path, strip: &Path) -> String {
    let mut text = p.to_string();
    let prefix = format!("{}: ", p.file.display());
    if p.file == fragment {
        if let Some(rest) = text.strip_prefix(&prefix) {
            text = match p.field.is_empty() {
                true => format!("spec: {rest}"),
                false => format!("spec.{rest}"),
            };
        }
        // A key or trusted root is inline in the object: name the field, not the scratch file.
        text = text.replace(".key.path:", ".key.data:");
    }
    let strip = format!("{}/", strip.display());
    text.replace(&strip, "")
}

/// What the controller reports in a TrustPolicy's `Valid` condition: the render errors (a
/// missing TrustRoot), else every problem the node loader finds in the rules alone.
pub fn validate(
    name: &str,
    generation: Option<i64>,
    spec: &crate::crd::TrustPolicySpec,
    roots: &TrustRoots,
) -> Result<Vec<String>, ValidateError> {
    let scratch = tempfile::tempdir().map_err(ValidateError::Scratch)?;
    let policy_d = scratch.path().join("policy.d");
    let rendered = match render_policy(name, generation, spec, roots, &policy_d) {
        Ok(r) => r,
        Err(errors) => return Ok(errors.iter().map(ToString::to_string).collect()),
    };
    for (rel, bytes) in &rendered.material {
        let path = policy_d.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(ValidateError::Scratch)?;
        }
        std::fs::write(&path, bytes).map_err(ValidateError::Scratch)?;
    }
    Ok(load_fragment(None, &rendered, &policy_d)?.err().unwrap_or_default())
}

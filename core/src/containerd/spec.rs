//! The base runtime spec CRI starts every container of the hooked runtime from: containerd's
//! default spec (or the node's own base spec) plus kcache-hook at prestart and poststop.

use std::{path::Path, process::Command};

use super::{ContainerdError, Result, HOOK_TIMEOUT_S};

/// One kcache-hook entry of an OCI spec's `hooks`: what the base spec carries, and what the NRI
/// plugin adds to an opted-in container (the same path, argv and timeout on both routes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookEntry {
    /// `prestart` or `poststop`.
    pub phase: &'static str,
    /// The hook binary.
    pub path: String,
    /// Its argv: the binary's file name and the phase.
    pub args: Vec<String>,
    /// Seconds before runc kills it ([`HOOK_TIMEOUT_S`]).
    pub timeout: u64,
}

/// kcache-hook at prestart and poststop.
pub fn hook_entries(hook: &Path) -> [HookEntry; 2] {
    let path = hook.to_string_lossy().into_owned();
    let argv0 = hook
        .file_name()
        .map_or_else(|| path.clone(), |n| n.to_string_lossy().into_owned());
    ["prestart", "poststop"].map(|phase| HookEntry {
        phase,
        path: path.clone(),
        args: vec![argv0.clone(), phase.to_string()],
        timeout: HOOK_TIMEOUT_S,
    })
}

/// `default_spec` plus the kcache hooks (each added once: a second run changes nothing).
pub fn base_spec(default_spec: &[u8], hook: &Path) -> Result<String> {
    let mut spec: serde_json::Value = serde_json::from_slice(default_spec).map_err(ContainerdError::SpecJson)?;
    let obj = spec.as_object_mut().ok_or(ContainerdError::Spec("not a JSON object"))?;
    if !obj.contains_key("ociVersion") {
        return Err(ContainerdError::Spec("no ociVersion"));
    }
    let hooks = obj
        .entry("hooks")
        .or_insert_with(|| serde_json::json!({}))
        .as_object_mut()
        .ok_or(ContainerdError::Spec("`hooks` is not an object"))?;
    for entry in hook_entries(hook) {
        let list = hooks
            .entry(entry.phase)
            .or_insert_with(|| serde_json::json!([]))
            .as_array_mut()
            .ok_or(ContainerdError::Spec("a hooks phase is not an array"))?;
        if !list
            .iter()
            .any(|h| h.get("path").and_then(|p| p.as_str()) == Some(entry.path.as_str()))
        {
            list.push(serde_json::json!({"path": entry.path, "args": entry.args, "timeout": entry.timeout}));
        }
    }
    Ok(serde_json::to_string_pretty(&spec).map_err(ContainerdError::SpecJson)? + "\n")
}

/// `spec` without the kcache hooks (those running `hook`); None when it has none.
pub fn without_hooks(spec: &[u8], hook: &Path) -> Result<Option<String>> {
    let mut spec: serde_json::Value = serde_json::from_slice(spec).map_err(ContainerdError::SpecJson)?;
    let path = hook.to_string_lossy();
    let mut removed = false;
    if let Some(hooks) = spec.get_mut("hooks").and_then(|h| h.as_object_mut()) {
        for phase in ["prestart", "poststop"] {
            if let Some(list) = hooks.get_mut(phase).and_then(|l| l.as_array_mut()) {
                let before = list.len();
                list.retain(|h| h.get("path").and_then(|p| p.as_str()) != Some(&*path));
                removed |= list.len() != before;
                if list.is_empty() {
                    hooks.remove(phase);
                }
            }
        }
        if hooks.is_empty() {
            if let Some(o) = spec.as_object_mut() {
                o.remove("hooks");
            }
        }
    }
    if !removed {
        return Ok(None);
    }
    Ok(Some(
        serde_json::to_string_pretty(&spec).map_err(ContainerdError::SpecJson)? + "\n",
    ))
}

/// containerd's default OCI spec, as `ctr oci spec` prints it.
pub fn ctr_default_spec(ctr: &Path) -> Result<Vec<u8>> {
    match Command::new(ctr).args(["oci", "spec"]).output() {
        Ok(o) if o.status.success() => Ok(o.stdout),
        Ok(o) => Err(ContainerdError::CtrFailed {
            ctr: ctr.to_owned(),
            status: o.status,
            stderr: String::from_utf8_lossy(&o.stderr).trim().to_owned(),
        }),
        Err(source) => Err(ContainerdError::CtrMissing {
            ctr: ctr.to_owned(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_spec_adds_the_hooks_once_and_without_hooks_takes_them_out() {
        let spec = br#"{"ociVersion":"1.0.2-dev","process":{"cwd":"/"},"hooks":{"prestart":[{"path":"/other"}]}}"#;
        let out = base_spec(spec, Path::new("/usr/bin/kcache-hook")).unwrap();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["hooks"]["prestart"].as_array().unwrap().len(), 2);
        assert_eq!(v["hooks"]["prestart"][1]["path"], "/usr/bin/kcache-hook");
        assert_eq!(
            v["hooks"]["prestart"][1]["args"],
            serde_json::json!(["kcache-hook", "prestart"])
        );
        assert_eq!(
            v["hooks"]["poststop"][0]["args"],
            serde_json::json!(["kcache-hook", "poststop"])
        );
        assert_eq!(v["process"]["cwd"], "/");
        let again = base_spec(out.as_bytes(), Path::new("/usr/bin/kcache-hook")).unwrap();
        assert_eq!(again, out);
        assert!(base_spec(b"{}", Path::new("/h")).is_err());
        assert!(base_spec(b"nope", Path::new("/h")).is_err());

        let back = without_hooks(out.as_bytes(), Path::new("/usr/bin/kcache-hook"))
            .unwrap()
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&back).unwrap();
        assert_eq!(v["hooks"], serde_json::json!({"prestart": [{"path": "/other"}]}));
        assert_eq!(
            without_hooks(back.as_bytes(), Path::new("/usr/bin/kcache-hook")).unwrap(),
            None
        );
    }
}

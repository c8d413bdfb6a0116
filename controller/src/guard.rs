//! The node-local guard: what cluster objects may change on this node.
//!
//! Read from the `[cluster]` table of kcached's `/etc/kcache/config.toml` (the rest of the file
//! is kcached's):
//!
//! ```toml
//! [cluster]
//! allow_lower_mode = false      # a TrustPolicy asking for a lower mode than policy.yaml's
//! allow_default_allow = false   # a TrustPolicy asking for `default: allow`
//! ```
//!
//! A node never takes `mode` or `default` from the cluster: its own policy.yaml sets them, and
//! cluster policies add rules. A TrustPolicy that asks to loosen the node (a lower `mode`, or
//! `default: allow` where the node denies) is refused as a whole, with the reason in the node's
//! status, unless the knob above allows it; then its rules are added and the node's own `mode`
//! and `default` still stand.

use std::path::Path;

use serde::Deserialize;

use crate::crd::{DefaultAction, PolicyMode};

/// `[cluster]` in config.toml. Defaults: the cluster may add rules, nothing else.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Guard {
    /// Accept TrustPolicies whose `mode` is below the node's.
    #[serde(default)]
    pub allow_lower_mode: bool,
    /// Accept TrustPolicies with `default: allow` on a node whose default is deny.
    #[serde(default)]
    pub allow_default_allow: bool,
}

/// Why config.toml's `[cluster]` table could not be read.
#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    /// Unreadable file.
    #[error("cannot read {0}")]
    Read(String, #[source] std::io::Error),
    /// Not TOML, or `[cluster]` has unknown keys or wrong types.
    #[error("bad [cluster] table in {0}")]
    Parse(String, #[source] toml::de::Error),
}

impl Guard {
    /// Reads `[cluster]` from `path`; a missing file or table gives the defaults. The file is
    /// kcached's: other tables are not looked at.
    pub fn load(path: &Path) -> Result<Self, GuardError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::debug!(path = %path.display(), "no config.toml; the cluster may add rules only");
                return Ok(Self::default());
            }
            Err(e) => return Err(GuardError::Read(path.display().to_string(), e)),
        };
        let table: toml::Table = toml::from_str(&text).map_err(|e| GuardError::Parse(path.display().to_string(), e))?;
        let cluster = table.get("cluster").cloned().map(toml::Value::try_into::<Guard>);
        match cluster {
            None => Ok(Self::default()),
            Some(Ok(g)) => Ok(g),
            Some(Err(e)) => Err(GuardError::Parse(path.display().to_string(), e)),
        }
    }

    /// Whether a TrustPolicy asking for `mode`/`default` may be applied on a node whose own
    /// policy has `node_mode`/`node_default`. `Err` says why not, naming the knob.
    pub fn check(
        &self,
        node_mode: PolicyMode,
        node_default: DefaultAction,
        mode: Option<PolicyMode>,
        default: Option<DefaultAction>,
    ) -> Result<(), String> {
        let mut why = Vec::new();
        if let Some(m) = mode {
            if m < node_mode && !self.allow_lower_mode {
                why.push(format!(
                    "mode {} would lower this node's mode {} (config.toml [cluster] allow_lower_mode is false)",
                    mode_name(m),
                    mode_name(node_mode)
                ));
            }
        }
        if default == Some(DefaultAction::Allow) && node_default == DefaultAction::Deny && !self.allow_default_allow {
            why.push(
                "default: allow would let unmatched images through on a node that denies them \
                 (config.toml [cluster] allow_default_allow is false)"
                    .to_string(),
            );
        }
        match why.is_empty() {
            true => Ok(()),
            false => Err(why.join("; ")),
        }
    }
}

/// `enforce`, `warn`, `off`.
pub fn mode_name(m: PolicyMode) -> &'static str {
    match m {
        PolicyMode::Enforce => "enforce",
        PolicyMode::Warn => "warn",
        PolicyMode::Off => "off",
    }
}

/// The CRD's mode for core's.
pub fn from_core_mode(m: kcache_core::policy::Mode) -> PolicyMode {
    match m {
        kcache_core::policy::Mode::Enforce => PolicyMode::Enforce,
        kcache_core::policy::Mode::Warn => PolicyMode::Warn,
        kcache_core::policy::Mode::Off => PolicyMode::Off,
    }
}

/// The CRD's default for core's.
pub fn from_core_default(d: kcache_core::policy::DefaultAction) -> DefaultAction {
    match d {
        kcache_core::policy::DefaultAction::Deny => DefaultAction::Deny,
        kcache_core::policy::DefaultAction::Allow => DefaultAction::Allow,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn by_default_the_cluster_may_not_lower_the_mode_or_default_to_allow() {
        let g = Guard::default();
        use DefaultAction::*;
        use PolicyMode::*;
        assert!(g.check(Enforce, Deny, None, None).is_ok());
        assert!(g.check(Enforce, Deny, Some(Enforce), Some(Deny)).is_ok());
        assert!(
            g.check(Warn, Deny, Some(Enforce), None).is_ok(),
            "raising is no loosening"
        );
        let e = g.check(Enforce, Deny, Some(Warn), None).unwrap_err();
        assert!(e.contains("mode warn would lower this node's mode enforce"), "{e}");
        assert!(e.contains("allow_lower_mode"), "{e}");
        let e = g.check(Enforce, Deny, Some(Off), Some(Allow)).unwrap_err();
        assert!(e.contains("mode off") && e.contains("allow_default_allow"), "{e}");
        assert!(g.check(Enforce, Allow, None, Some(Allow)).is_ok());
    }

    #[test]
    fn the_knobs_let_it_through() {
        let g = Guard {
            allow_lower_mode: true,
            allow_default_allow: true,
        };
        assert!(g
            .check(
                PolicyMode::Enforce,
                DefaultAction::Deny,
                Some(PolicyMode::Off),
                Some(DefaultAction::Allow)
            )
            .is_ok());
    }

    #[test]
    fn the_cluster_table_is_read_from_kcacheds_config_and_typos_are_errors() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("config.toml");
        assert_eq!(Guard::load(&p).unwrap(), Guard::default());
        std::fs::write(
            &p,
            "policy = \"/x\"\n[registry]\ninsecure = []\n[cluster]\nallow_lower_mode = true\n",
        )
        .unwrap();
        assert!(Guard::load(&p).unwrap().allow_lower_mode);
        std::fs::write(&p, "[cluster]\nallow_lower_mod = true\n").unwrap();
        let e = Guard::load(&p).unwrap_err();
        assert!(format!("{:#}", anyhow::Error::from(e)).contains("allow_lower_mod"));
    }
}

//! Docker-style registry credentials (`config.json` `auths`). Secrets never reach Debug output.

use std::{collections::HashMap, fmt, path::Path};

use base64::Engine as _;
use serde::Deserialize;

/// Credentials per registry host.
#[derive(Default, Clone)]
pub struct AuthFile {
    basic: HashMap<String, (String, String)>,
}

impl fmt::Debug for AuthFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthFile")
            .field("registries", &self.basic.keys().collect::<Vec<_>>())
            .finish()
    }
}

#[derive(Deserialize)]
struct Raw {
    #[serde(default)]
    auths: HashMap<String, RawEntry>,
}

#[derive(Deserialize)]
struct RawEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

fn host_of(key: &str) -> String {
    let k = key.trim_start_matches("https://").trim_start_matches("http://");
    let host = k.split('/').next().unwrap_or(k);
    match host {
        "index.docker.io" | "registry-1.docker.io" => "docker.io".into(),
        h => h.to_string(),
    }
}

impl AuthFile {
    /// Loads a `config.json`; errors name the file (never a secret).
    pub fn load(path: &Path) -> Result<Self, String> {
        let bytes = std::fs::read(path).map_err(|e| format!("cannot read auth file {}: {e}", path.display()))?;
        Self::from_json(&bytes).map_err(|e| format!("auth file {}: {e}", path.display()))
    }

    /// Parses `config.json` bytes.
    pub fn from_json(bytes: &[u8]) -> Result<Self, String> {
        let raw: Raw = serde_json::from_slice(bytes).map_err(|e| format!("not valid JSON: {e}"))?;
        let mut basic = HashMap::new();
        for (key, e) in raw.auths {
            let creds = match (e.auth, e.username, e.password) {
                (Some(a), _, _) if !a.is_empty() => {
                    let dec = base64::engine::general_purpose::STANDARD
                        .decode(a.trim())
                        .map_err(|_| format!("auths[{key}].auth is not base64"))?;
                    let s = String::from_utf8(dec).map_err(|_| format!("auths[{key}].auth is not UTF-8"))?;
                    let (u, p) = s
                        .split_once(':')
                        .ok_or_else(|| format!("auths[{key}].auth is not user:password"))?;
                    (u.to_string(), p.to_string())
                }
                (_, Some(u), Some(p)) => (u, p),
                _ => continue,
            };
            basic.insert(host_of(&key), creds);
        }
        Ok(Self { basic })
    }

    /// Basic credentials for a registry host.
    pub fn basic(&self, registry: &str) -> Option<(&str, &str)> {
        self.basic.get(registry).map(|(u, p)| (u.as_str(), p.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_entries_map_to_hosts_and_stay_out_of_debug() {
        let a = AuthFile::from_json(
            br#"{"auths":{"https://index.docker.io/v1/":{"auth":"dXNlcjpwYXNz"},"127.0.0.1:5000":{"username":"u","password":"s3cret"}}}"#,
        )
        .unwrap();
        assert_eq!(a.basic("docker.io"), Some(("user", "pass")));
        assert_eq!(a.basic("127.0.0.1:5000"), Some(("u", "s3cret")));
        assert!(!format!("{a:?}").contains("s3cret"));
        assert!(AuthFile::from_json(br#"{"auths":{"x":{"auth":"!!"}}}"#).is_err());
    }
}

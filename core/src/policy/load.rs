//! Loading and validating policy files. Every problem is collected, across rules and files, so
//! that one run shows the user everything to fix; each names its file and field path.

use std::{
    collections::HashMap,
    io,
    path::{Path, PathBuf},
    sync::Arc,
};

use serde::{de::DeserializeOwned, Deserialize};
use serde_yaml::Value;
use sha2::{Digest as _, Sha256};

use super::{
    error::{PolicyError, Problem, ProblemKind},
    glob::ImagePattern,
    Authority, DefaultAction, Mode, Policy, Rule, SignatureFormat, TlogRequirement,
};
use crate::{
    keys::PublicKey,
    sigstore::{trust_root::PUBLIC_GOOD_JSON, Identity, Matcher, TrustRootError, TrustedRoot},
};

/// Strings a sane identity matcher never accepts. A regexp matching one of them would accept
/// (nearly) any signer, which the policy refuses to express.
const ANY_SIGNER_PROBES: &[&str] = &[
    "",
    "x",
    "kcache-probe@invalid.example",
    "https://kcache-probe.invalid/any",
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: String,
    images: Vec<String>,
    #[serde(default)]
    authorities: Vec<RawAuthority>,
    #[serde(default, rename = "transparencyLog")]
    transparency_log: Option<TlogRequirement>,
    #[serde(default, rename = "signatureFormats")]
    signature_formats: Option<Vec<SignatureFormat>>,
    #[serde(default)]
    allow: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuthority {
    key: Option<RawKey>,
    keyless: Option<RawKeyless>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKey {
    path: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKeyless {
    issuer: Option<String>,
    #[serde(rename = "issuerRegExp")]
    issuer_regexp: Option<String>,
    subject: Option<String>,
    #[serde(rename = "subjectRegExp")]
    subject_regexp: Option<String>,
    #[serde(rename = "trustedRoot")]
    trusted_root: Option<PathBuf>,
}

type RootResult = Result<Arc<TrustedRoot>, Arc<TrustRootError>>;

/// Builds a [`Policy`] file by file, collecting problems instead of stopping.
struct Loader {
    mode: Mode,
    default: DefaultAction,
    rules: Vec<Rule>,
    problems: Vec<Problem>,
    /// One parsed root per path (`None`: public-good), shared by every authority naming it.
    roots: HashMap<Option<PathBuf>, RootResult>,
    names: HashMap<String, String>,
    hasher: Sha256,
    policy_files: Vec<PathBuf>,
    material: Vec<PathBuf>,
}

impl Loader {
    fn new() -> Self {
        Self {
            mode: Mode::Enforce,
            default: DefaultAction::Deny,
            rules: Vec::new(),
            problems: Vec::new(),
            roots: HashMap::new(),
            names: HashMap::new(),
            hasher: Sha256::new(),
            policy_files: Vec::new(),
            material: Vec::new(),
        }
    }

    fn problem(&mut self, file: &Path, field: impl Into<String>, kind: ProblemKind) {
        self.problems.push(Problem {
            file: file.to_path_buf(),
            field: field.into(),
            kind,
        });
    }

    /// Feeds the generation hash, with framing so that moving bytes between inputs changes it.
    fn hash(&mut self, label: &str, bytes: &[u8]) {
        for part in [label.as_bytes(), bytes] {
            self.hasher.update((part.len() as u64).to_le_bytes());
            self.hasher.update(part);
        }
    }

    /// `label` names the file in the generation hash: `main` or the fragment's file name, so
    /// identical content at another path keeps its generation.
    fn file(&mut self, path: &Path, label: &str, bytes: &[u8], main: bool) {
        self.hash(label, bytes);
        self.policy_files.push(path.to_path_buf());
        let doc: Value = match serde_yaml::from_slice(bytes) {
            Ok(v) => v,
            Err(e) => return self.problem(path, "", ProblemKind::Yaml(e)),
        };
        let map = match doc {
            Value::Null => return,
            Value::Mapping(m) => m,
            _ => return self.problem(path, "", ProblemKind::Shape("expected a mapping with `rules:`".into())),
        };
        for (k, v) in map {
            match k.as_str() {
                Some(f @ ("mode" | "default")) if !main => self.problem(
                    path,
                    f,
                    ProblemKind::MainOnly(if f == "mode" { "mode" } else { "default" }),
                ),
                Some("mode") => {
                    if let Some(m) = self.shape(path, "mode", v) {
                        self.mode = m;
                    }
                }
                Some("default") => {
                    if let Some(d) = self.shape(path, "default", v) {
                        self.default = d;
                    }
                }
                Some("rules") => match v {
                    Value::Sequence(items) => {
                        for (i, item) in items.into_iter().enumerate() {
                            self.rule(path, i, item);
                        }
                    }
                    Value::Null => {}
                    _ => self.problem(path, "rules", ProblemKind::Shape("expected a list of rules".into())),
                },
                _ => {
                    let key = serde_yaml::to_string(&k).unwrap_or_default();
                    let msg = format!(
                        "unknown field `{}`, expected one of `mode`, `default`, `rules`",
                        key.trim()
                    );
                    self.problem(path, key.trim(), ProblemKind::Shape(msg));
                }
            }
        }
    }

    /// Deserializes `value` at `field`, recording a shape problem with the full field path.
    fn shape<T: DeserializeOwned>(&mut self, file: &Path, field: &str, value: Value) -> Option<T> {
        match serde_path_to_error::deserialize::<_, T>(value) {
            Ok(t) => Some(t),
            Err(e) => {
                let inner = e.path().to_string();
                let at = match inner.as_str() {
                    "." => field.to_string(),
                    p if p.starts_with('[') => format!("{field}{p}"),
                    p => format!("{field}.{p}"),
                };
                self.problem(file, at, ProblemKind::Shape(e.into_inner().to_string()));
                None
            }
        }
    }

    fn rule(&mut self, file: &Path, index: usize, value: Value) {
        let at = format!("rules[{index}]");
        let Some(raw) = self.shape::<RawRule>(file, &at, value) else {
            return;
        };
        let before = self.problems.len();

        let name_ok = !raw.name.is_empty() && raw.name.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
        if !name_ok {
            self.problem(file, format!("{at}.name"), ProblemKind::BadName(raw.name.clone()));
        } else if let Some(first) = self.names.get(&raw.name) {
            let kind = ProblemKind::DuplicateName {
                name: raw.name.clone(),
                first: first.clone(),
            };
            self.problem(file, format!("{at}.name"), kind);
        } else {
            self.names.insert(raw.name.clone(), format!("{}: {at}", file.display()));
        }

        if raw.images.is_empty() {
            self.problem(file, format!("{at}.images"), ProblemKind::NoImages);
        }
        let mut images = Vec::with_capacity(raw.images.len());
        for (i, s) in raw.images.iter().enumerate() {
            match ImagePattern::parse(s) {
                Ok(p) => images.push(p),
                Err(e) => self.problem(file, format!("{at}.images[{i}]"), ProblemKind::Pattern(e)),
            }
        }

        if raw.allow {
            if !raw.authorities.is_empty() {
                self.problem(file, format!("{at}.authorities"), ProblemKind::AllowWithAuthorities);
            }
            if raw.transparency_log.is_some() {
                self.problem(
                    file,
                    format!("{at}.transparencyLog"),
                    ProblemKind::AllowWith("transparencyLog"),
                );
            }
            if raw.signature_formats.is_some() {
                self.problem(
                    file,
                    format!("{at}.signatureFormats"),
                    ProblemKind::AllowWith("signatureFormats"),
                );
            }
        } else if raw.authorities.is_empty() {
            self.problem(file, format!("{at}.authorities"), ProblemKind::NoAuthority);
        }
        let formats = raw
            .signature_formats
            .unwrap_or_else(|| vec![SignatureFormat::CosignV2, SignatureFormat::CosignV3]);
        if formats.is_empty() {
            self.problem(file, format!("{at}.signatureFormats"), ProblemKind::NoFormats);
        }

        let base = file.parent().unwrap_or(Path::new("")).to_path_buf();
        let mut authorities = Vec::with_capacity(raw.authorities.len());
        for (j, a) in raw.authorities.into_iter().enumerate() {
            let at = format!("{at}.authorities[{j}]");
            let built = match (a.key, a.keyless) {
                (Some(k), None) => self.key(file, &at, &base, k),
                (None, Some(k)) => self.keyless(file, &at, &base, k),
                _ => {
                    self.problem(file, at, ProblemKind::AuthorityKind);
                    None
                }
            };
            authorities.extend(built);
        }

        if self.problems.len() == before {
            let transparency_log = raw.transparency_log;
            let source = file.to_path_buf();
            self.rules.push(Rule {
                name: raw.name,
                images,
                authorities,
                transparency_log,
                formats,
                allow: raw.allow,
                source,
            });
        }
    }

    fn key(&mut self, file: &Path, at: &str, base: &Path, raw: RawKey) -> Option<Authority> {
        let path = base.join(raw.path);
        let field = format!("{at}.key.path");
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) => {
                self.problem(file, field, ProblemKind::KeyRead(path, e));
                return None;
            }
        };
        self.hash("key", &bytes);
        self.material.push(path.clone());
        match PublicKey::from_pem(&bytes) {
            Ok(key) => Some(Authority::Key { path, key }),
            Err(e) => {
                self.problem(file, field, ProblemKind::Key(path, e));
                None
            }
        }
    }

    fn keyless(&mut self, file: &Path, at: &str, base: &Path, raw: RawKeyless) -> Option<Authority> {
        let at = format!("{at}.keyless");
        let issuer = self.matcher(
            file,
            &at,
            ("issuer", raw.issuer),
            ("issuerRegExp", raw.issuer_regexp),
            ProblemKind::NoIssuer,
        );
        let subject = self.matcher(
            file,
            &at,
            ("subject", raw.subject),
            ("subjectRegExp", raw.subject_regexp),
            ProblemKind::NoSubject,
        );
        let trusted_root_path = raw.trusted_root.map(|p| base.join(p));
        let root = self.trusted_root(trusted_root_path.clone());
        let trusted_root = match root {
            Ok(r) => Some(r),
            Err(e) => {
                self.problem(file, format!("{at}.trustedRoot"), ProblemKind::TrustedRoot(e));
                None
            }
        };
        Some(Authority::Keyless {
            identity: Identity {
                issuer: issuer?,
                subject: subject?,
            },
            trusted_root: trusted_root?,
            trusted_root_path,
        })
    }

    /// Exactly one of the exact and the regexp field; the regexp anchored and not accepting
    /// any signer.
    fn matcher(
        &mut self,
        file: &Path,
        at: &str,
        (exact_name, exact): (&'static str, Option<String>),
        (re_name, re): (&'static str, Option<String>),
        missing: ProblemKind,
    ) -> Option<Matcher> {
        let (field, result) = match (exact, re) {
            (Some(_), Some(_)) => {
                self.problem(file, at, ProblemKind::Both(exact_name, re_name));
                return None;
            }
            (None, None) => {
                self.problem(file, at, missing);
                return None;
            }
            (Some(v), None) => (exact_name, Matcher::exact(v)),
            (None, Some(r)) => (re_name, Matcher::regex(&r)),
        };
        let field = format!("{at}.{field}");
        match result {
            Ok(m @ Matcher::Regex(_)) if ANY_SIGNER_PROBES.iter().any(|p| m.matches(p)) => {
                self.problem(file, field, ProblemKind::AcceptsAnySigner(m.to_string()));
                None
            }
            Ok(m) => Some(m),
            Err(e) => {
                self.problem(file, field, ProblemKind::Matcher(e));
                None
            }
        }
    }

    fn trusted_root(&mut self, path: Option<PathBuf>) -> RootResult {
        if let Some(r) = self.roots.get(&path) {
            return r.clone();
        }
        let r = match &path {
            None => {
                self.hash("public-good", PUBLIC_GOOD_JSON.as_bytes());
                Ok(Arc::new(TrustedRoot::public_good()))
            }
            Some(p) => match std::fs::read(p) {
                Ok(bytes) => {
                    self.hash("trusted-root", &bytes);
                    self.material.push(p.clone());
                    TrustedRoot::from_json(&bytes).map(Arc::new).map_err(Arc::new)
                }
                Err(source) => Err(Arc::new(TrustRootError::Read {
                    path: p.display().to_string(),
                    source,
                })),
            },
        };
        self.roots.insert(path, r.clone());
        r
    }

    fn finish(self) -> Result<Policy, PolicyError> {
        if !self.problems.is_empty() {
            return Err(PolicyError {
                problems: self.problems,
            });
        }
        let hash = self.hasher.finalize();
        let mut first = [0u8; 8];
        first.copy_from_slice(&hash[..8]);
        let mut sources = self.policy_files;
        sources.extend(self.material);
        Ok(Policy {
            mode: self.mode,
            default: self.default,
            rules: self.rules,
            generation: u64::from_be_bytes(first),
            sources,
        })
    }
}

impl Policy {
    /// Loads the main file and, if given, the fragments in `dir` (`*.yaml`, `*.yml`; hidden
    /// files such as atomic-write temporaries skipped; sorted by file name). A missing `dir`
    /// counts as empty. Every problem in every file is reported.
    pub fn load(main: &Path, dir: Option<&Path>) -> Result<Self, PolicyError> {
        let mut loader = Loader::new();
        match std::fs::read(main) {
            Ok(bytes) => loader.file(main, "main", &bytes, true),
            Err(e) => loader.problem(main, "", ProblemKind::ReadFile(e)),
        }
        if let Some(dir) = dir {
            for (name, path) in fragments(&mut loader, dir) {
                match std::fs::read(&path) {
                    Ok(bytes) => loader.file(&path, &name, &bytes, false),
                    Err(e) => loader.problem(&path, "", ProblemKind::ReadFile(e)),
                }
            }
        }
        loader.finish()
    }

    /// Parses one main-file document. `source` names it in errors, and relative key and
    /// trusted-root paths resolve against its directory.
    pub fn from_yaml_str(yaml: &str, source: &Path) -> Result<Self, PolicyError> {
        let mut loader = Loader::new();
        loader.file(source, "main", yaml.as_bytes(), true);
        loader.finish()
    }
}

/// The fragment files in `dir`, sorted by file name.
fn fragments(loader: &mut Loader, dir: &Path) -> Vec<(String, PathBuf)> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            tracing::debug!(dir = %dir.display(), "no policy.d directory; no fragments");
            return Vec::new();
        }
        Err(e) => {
            loader.problem(dir, "", ProblemKind::ReadDir(e));
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = match entry {
            Ok(e) => e,
            Err(e) => {
                loader.problem(dir, "", ProblemKind::ReadDir(e));
                continue;
            }
        };
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        let wanted = !name.starts_with('.') && (name.ends_with(".yaml") || name.ends_with(".yml"));
        // metadata() follows symlinks, as Kubernetes ConfigMap mounts need.
        if wanted && std::fs::metadata(entry.path()).is_ok_and(|m| m.is_file()) {
            out.push((name, entry.path()));
        }
    }
    out.sort();
    out
}

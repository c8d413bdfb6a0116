//! Rendering a [`Policy`] for CRI-O's own verifier (containers/image): a
//! `containers-policy.json(5)` and a `containers-registries.d(5)` fragment that turns on
//! `use-sigstore-attachments`, plus the key files they name.
//!
//! containers/image cannot say everything kcache can. Every rule, or part of a rule, it cannot
//! express is rendered **at least as strictly** (a `reject`, a narrower authority set, a
//! required transparency log) and reported as an [`Issue`]; the only renderings that may accept
//! more than kcache are reported as [`Effect::Wider`]: mode `off`, `default: allow` over rules that
//! could not be rendered, an allow-listed repository scope that also covers nested repositories
//! and other precedence differences the probes find, and checks containers/image has no setting
//! for (the SCT).
//!
//! The differences that drive the mapping:
//!
//! - **Scopes are prefixes.** A `docker` scope `host/ns` covers `host/ns` and every repository
//!   below it, which is exactly kcache's `host/ns/**`. A repository scope `host/ns/app` also
//!   covers `host/ns/app/…`; `repo:tag` and `repo@digest` scopes name one image. There are no
//!   wildcards inside a path, so `*` segments and partial globs cannot be expressed.
//! - **The longest scope wins**, where kcache picks the most specific pattern. After rendering,
//!   probe images under every rendered scope are decided both ways and each disagreement is
//!   reported.
//! - **Requirements are ANDed**, where kcache accepts any one authority: only one authority per
//!   rule is rendered.
//! - `sigstoreSigned` reads cosign v2 `.sig` attachments only, takes one key (or one Fulcio CA
//!   pool with an exact e-mail subject and issuer) and at most one Rekor key, which it needs
//!   for Fulcio signatures and uses to require a SET otherwise. `signedIdentity` is
//!   `matchRepository`, the identity cosign signs.

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    path::{Path, PathBuf},
};

use serde::Serialize;
use serde_json::{json, Value};

use super::{Authority, DefaultAction, Mode, Policy, Rule, SignatureFormat, TlogRequirement};
use crate::{
    digest::Digest,
    keys::{pem_encode, PublicKey},
    sigstore::{Matcher, TrustedRoot},
};

/// What [`render_crio`] produces.
#[derive(Clone, Debug)]
pub struct CrioRender {
    /// The `policy.json` document.
    pub policy_json: Value,
    /// The `registries.d` YAML fragment.
    pub registries_d: String,
    /// Files `policy_json` names, relative to the key directory given to [`render_crio`]:
    /// `(file name, contents)`.
    pub files: Vec<(String, Vec<u8>)>,
    /// Everything that could not be expressed exactly, in policy order.
    pub report: Vec<Issue>,
}

/// How a rendering differs from what kcache would decide.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Effect {
    /// containers/image rejects images kcache would accept.
    Stricter,
    /// containers/image may accept images kcache would reject.
    Wider,
    /// The decision for some images comes from another rule or requirement set than in kcache.
    Differs,
}

impl fmt::Display for Effect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Stricter => "stricter",
            Self::Wider => "WIDER",
            Self::Differs => "differs",
        })
    }
}

/// One thing containers/image cannot express.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Issue {
    /// The rule, or `None` for the policy as a whole (mode, default).
    pub rule: Option<String>,
    /// The file the rule (or the main policy file) came from.
    pub source: Option<PathBuf>,
    /// What it does to decisions.
    pub effect: Effect,
    /// Why, and what was rendered instead.
    pub message: String,
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.rule {
            Some(r) => write!(f, "rule {r:?}")?,
            None => f.write_str("policy")?,
        }
        if let Some(s) = &self.source {
            write!(f, " ({})", s.display())?;
        }
        write!(f, ": {}: {}", self.effect, self.message)
    }
}

/// How one image pattern maps onto a `docker` scope.
#[derive(Debug, PartialEq, Eq)]
enum Scope {
    /// The scope covers exactly the pattern's images, except that a repository scope also
    /// covers repositories nested below it (the probes report those).
    Exact(String),
    /// The scope covers more; the string says what.
    Widened(String, String),
    /// No scope expresses it.
    No(String),
}

/// The `docker` scope for a pattern (see the module docs).
fn scope_of(pattern: &super::ImagePattern) -> Scope {
    let (segs, tag, digest) = pattern.parts();
    let literal = |s: &Option<&str>| matches!(s, Some(g) if !g.contains('*'));
    let last = segs.len() - 1;
    let prefix = |n: usize| {
        segs[..n]
            .iter()
            .map(|s| s.unwrap_or_default())
            .collect::<Vec<_>>()
            .join("/")
    };
    let any_paths = segs.iter().filter(|s| s.is_none()).count();
    if any_paths > 0 {
        if any_paths == 1 && segs[last].is_none() && segs[..last].iter().all(literal) {
            if tag.is_some() || digest.is_some() {
                return Scope::No("a tag or digest after `**` applies across repositories".into());
            }
            return Scope::Exact(prefix(last));
        }
        return Scope::No("`**` is only expressible as the last segment after literal ones".into());
    }
    if !segs.iter().all(literal) {
        if segs[last] == Some("*") && last >= 1 && segs[..last].iter().all(literal) && tag.is_none() && digest.is_none()
        {
            let ns = prefix(last);
            return Scope::Widened(
                ns.clone(),
                format!("`{ns}` itself and repositories nested below `{ns}/*`"),
            );
        }
        return Scope::No("wildcards inside a segment or before the last segment have no scope equivalent".into());
    }
    let repo = prefix(segs.len());
    match (tag, digest) {
        (_, Some(d)) => Scope::Exact(format!("{repo}@{d}")),
        (Some("*"), None) => Scope::Widened(
            repo.clone(),
            format!("digest references of `{repo}` and repositories nested below it"),
        ),
        (Some(t), None) if t.contains('*') => Scope::No(format!("tag glob `{t}` has no scope equivalent")),
        (Some(t), None) => Scope::Exact(format!("{repo}:{t}")),
        (None, None) => Scope::Exact(repo),
    }
}

/// One rendered `docker` scope.
struct Entry {
    /// Indices into `policy.rules` whose requirements this is.
    rules: Vec<usize>,
    reqs: Vec<Value>,
}

/// A trust-material file's path plus notes on what was left out of it, or why there is none.
type Material = Result<(String, Vec<String>), String>;

/// Which file of a trusted root.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Part {
    Fulcio,
    Rekor,
}

struct Renderer<'a> {
    policy: &'a Policy,
    keys_dir: &'a Path,
    files: Vec<(String, Vec<u8>)>,
    report: Vec<Issue>,
    /// Trust material per (trusted root path (`None`: public-good), part), written once.
    roots: HashMap<(Option<PathBuf>, Part), Material>,
    /// File-name prefixes per trusted root.
    prefixes: HashMap<Option<PathBuf>, String>,
    public_good: Option<TrustedRoot>,
}

fn accept() -> Value {
    json!({"type": "insecureAcceptAnything"})
}

fn reject() -> Value {
    json!({"type": "reject"})
}

/// A file-name-safe form of a rule name (already `[A-Za-z0-9._-]`, but never trust that here).
fn safe(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

impl<'a> Renderer<'a> {
    fn issue(&mut self, rule: Option<&Rule>, effect: Effect, message: impl Into<String>) {
        let issue = Issue {
            rule: rule.map(|r| r.name.clone()),
            source: rule
                .map(|r| r.source.clone())
                .or_else(|| self.policy.sources.first().cloned()),
            effect,
            message: message.into(),
        };
        if !self.report.contains(&issue) {
            self.report.push(issue);
        }
    }

    fn path(&self, name: &str) -> String {
        self.keys_dir.join(name).display().to_string()
    }

    fn add_file(&mut self, name: String, bytes: Vec<u8>) {
        if !self.files.iter().any(|(n, _)| *n == name) {
            self.files.push((name, bytes));
        }
    }

    /// The Fulcio CA bundle or Rekor key file of a trusted root (`None`: public-good), written
    /// once, when first needed.
    fn material(&mut self, path: Option<&Path>, root: &TrustedRoot, part: Part) -> Material {
        let path = path.map(Path::to_path_buf);
        if let Some(m) = self.roots.get(&(path.clone(), part)) {
            return m.clone();
        }
        let n = self.prefixes.len();
        let prefix = self
            .prefixes
            .entry(path.clone())
            .or_insert_with(|| match &path {
                None => "public-good".to_string(),
                Some(_) => format!("root{n}"),
            })
            .clone();
        let m = match part {
            Part::Fulcio => self.fulcio_file(&prefix, root),
            Part::Rekor => self.rekor_file(&prefix, root),
        };
        self.roots.insert((path, part), m.clone());
        m
    }

    fn fulcio_file(&mut self, prefix: &str, root: &TrustedRoot) -> Material {
        let mut notes = Vec::new();
        let mut pem = String::new();
        for ca in &root.certificate_authorities {
            if let Some(end) = ca.valid_for.end {
                // containers/image knows no validity periods: a CA that kcache trusts only until
                // `end` would be trusted for later certificates too. Leave it out.
                notes.push(format!(
                    "Fulcio CA {} (valid until {end}) left out: containers/image cannot limit a CA to a \
                     period, so certificates it issued are rejected",
                    ca.uri
                ));
                continue;
            }
            for der in &ca.chain {
                pem.push_str(&pem_encode("CERTIFICATE", der));
            }
        }
        if pem.is_empty() {
            return Err("the trusted root has no Fulcio CA without an end date".into());
        }
        let name = format!("{prefix}-fulcio.pem");
        self.add_file(name.clone(), pem.into_bytes());
        Ok((self.path(&name), notes))
    }

    fn rekor_file(&mut self, prefix: &str, root: &TrustedRoot) -> Material {
        let mut notes = Vec::new();
        let mut chosen: Option<&PublicKey> = None;
        for log in &root.tlogs {
            let ecdsa = matches!(log.key, PublicKey::P256(_) | PublicKey::P384(_));
            if !ecdsa {
                notes.push(format!(
                    "entries in the Rekor log {} are not accepted: containers/image verifies ECDSA-signed \
                     SETs only (no Rekor v2 / non-ECDSA keys)",
                    log.base_url
                ));
            } else if log.valid_for.end.is_some() {
                notes.push(format!(
                    "Rekor log {} left out: containers/image cannot limit its key to a validity period",
                    log.base_url
                ));
            } else if chosen.is_some() {
                notes.push(format!(
                    "Rekor log {} left out: containers/image takes one Rekor key",
                    log.base_url
                ));
            } else {
                chosen = Some(&log.key);
            }
        }
        let Some(key) = chosen else {
            return Err("the trusted root has no open-ended ECDSA Rekor key".into());
        };
        let pem = key.to_pem().into_bytes();
        let name = format!("{prefix}-rekor.pub");
        self.add_file(name.clone(), pem);
        Ok((self.path(&name), notes))
    }

    /// One authority as a `sigstoreSigned` requirement, with notes on what it narrows or does
    /// not check (each `(effect, text)`), or why it cannot be expressed.
    fn authority(
        &mut self,
        rule: &Rule,
        index: usize,
        authority: &Authority,
    ) -> Result<(Value, Vec<(Effect, String)>), String> {
        let tlog = rule.tlog_requirement(authority);
        let mut notes = Vec::new();
        match authority {
            Authority::Key { key, path } => {
                let name = format!("{}-authority{index}.pub", safe(&rule.name));
                self.add_file(name.clone(), key.to_pem().into_bytes());
                let mut req = json!({
                    "type": "sigstoreSigned",
                    "keyPath": self.path(&name),
                    "signedIdentity": {"type": "matchRepository"},
                });
                if tlog == TlogRequirement::Optional {
                    // Ignoring a present entry accepts no other image: whoever holds the key can
                    // sign without a log entry, which kcache accepts under `optional` too.
                    notes.push((
                        Effect::Differs,
                        format!(
                            "key {}: transparencyLog optional has no equivalent (containers/image requires a \
                             Rekor SET or ignores the log); rendered as off: a log entry that is present is not \
                             checked, the key signature still is",
                            path.display()
                        ),
                    ));
                }
                if tlog == TlogRequirement::Required {
                    let public_good = self.public_good.get_or_insert_with(TrustedRoot::public_good).clone();
                    let (rekor, rekor_notes) = self
                        .material(None, &public_good, Part::Rekor)
                        .map_err(|e| format!("public-good root: {e}"))?;
                    req["rekorPublicKeyPath"] = rekor.into();
                    notes.extend(rekor_notes.into_iter().map(|n| (Effect::Stricter, n)));
                }
                Ok((req, notes))
            }
            Authority::Keyless {
                identity,
                trusted_root,
                trusted_root_path,
            } => {
                let (Matcher::Exact(issuer), Matcher::Exact(subject)) = (&identity.issuer, &identity.subject) else {
                    return Err(format!(
                        "keyless issuer {} / subject {}: containers/image matches an exact issuer and e-mail \
                         subject only, no regular expressions",
                        identity.issuer, identity.subject
                    ));
                };
                if !subject.contains('@') || subject.contains("://") {
                    return Err(format!(
                        "keyless subject {subject:?} is not an e-mail address: containers/image matches e-mail \
                         SANs only (no URI SANs such as CI workflow identities)"
                    ));
                }
                if tlog != TlogRequirement::Required {
                    notes.push((
                        Effect::Stricter,
                        "containers/image needs a Rekor SET for Fulcio signatures; transparencyLog rendered as \
                         required (RFC 3161 timestamps alone are not accepted)"
                            .to_string(),
                    ));
                }
                let (ca, ca_notes) = self.material(trusted_root_path.as_deref(), trusted_root, Part::Fulcio)?;
                let (rekor, rekor_notes) = self.material(trusted_root_path.as_deref(), trusted_root, Part::Rekor)?;
                notes.extend(ca_notes.into_iter().chain(rekor_notes).map(|n| (Effect::Stricter, n)));
                if !trusted_root.ctlogs.is_empty() {
                    notes.push((
                        Effect::Wider,
                        "containers/image has no setting for CT log keys: kcache's check of the certificate's \
                         embedded SCT against the trusted root is not expressed"
                            .to_string(),
                    ));
                }
                let req = json!({
                    "type": "sigstoreSigned",
                    "fulcio": {"caPath": ca, "oidcIssuer": issuer, "subjectEmail": subject},
                    "rekorPublicKeyPath": rekor,
                    "signedIdentity": {"type": "matchRepository"},
                });
                Ok((req, notes))
            }
        }
    }

    /// The requirement list for a rule.
    fn requirements(&mut self, rule: &Rule) -> Vec<Value> {
        if rule.allow {
            return vec![accept()];
        }
        if !rule.formats.contains(&SignatureFormat::CosignV2) {
            self.issue(
                Some(rule),
                Effect::Stricter,
                "signatureFormats [cosign-v3] only: containers/image reads cosign v2 `.sig` attachments only; \
                 rendered as reject",
            );
            return vec![reject()];
        }
        if rule.formats.contains(&SignatureFormat::CosignV3) {
            self.issue(
                Some(rule),
                Effect::Stricter,
                "cosign-v3 signatures (Sigstore bundles as OCI referrers) are not read by containers/image; \
                 only cosign v2 `.sig` signatures are accepted",
            );
        }
        let mut chosen = None;
        let mut skipped = Vec::new();
        for (j, a) in rule.authorities.iter().enumerate() {
            match self.authority(rule, j, a) {
                Ok(r) if chosen.is_none() => chosen = Some((j, r)),
                Ok(_) => skipped.push(format!(
                    "authorities[{j}] not rendered: kcache accepts any one authority, containers/image requires \
                     all requirements of a scope, so only one authority is rendered; its signatures are rejected{}",
                    if matches!(a, Authority::Key { .. }) {
                        " (newer containers/image has `keyPaths` for several keys, which older releases refuse)"
                    } else {
                        ""
                    }
                )),
                Err(why) => skipped.push(format!("authorities[{j}] not representable: {why}")),
            }
        }
        match chosen {
            Some((j, (req, notes))) => {
                for s in skipped {
                    self.issue(Some(rule), Effect::Stricter, s);
                }
                for (effect, n) in notes {
                    self.issue(Some(rule), effect, format!("authorities[{j}]: {n}"));
                }
                vec![req]
            }
            None => {
                for s in skipped {
                    self.issue(Some(rule), Effect::Stricter, s);
                }
                self.issue(
                    Some(rule),
                    Effect::Stricter,
                    "no authority containers/image can express; its scopes are rendered as reject",
                );
                vec![reject()]
            }
        }
    }
}

/// Renders `policy` for containers/image. Key files are named as `keys_dir/<name>` in the
/// policy (so `keys_dir` should be absolute: where [`CrioRender::files`] will be written).
pub fn render_crio(policy: &Policy, keys_dir: &Path) -> CrioRender {
    let mut r = Renderer {
        policy,
        keys_dir,
        files: Vec::new(),
        report: Vec::new(),
        roots: HashMap::new(),
        prefixes: HashMap::new(),
        public_good: None,
    };
    if policy.mode == Mode::Off {
        r.issue(
            None,
            Effect::Wider,
            "mode off: nothing is verified; rendered as insecureAcceptAnything for every image, rules ignored",
        );
        return CrioRender {
            policy_json: json!({"default": [accept()]}),
            registries_d: "# Generated by `kcache policy render crio` (mode: off).\ndocker: {}\n".into(),
            files: Vec::new(),
            report: r.report,
        };
    }
    if policy.mode == Mode::Warn {
        r.issue(
            None,
            Effect::Stricter,
            "mode warn has no equivalent (containers/image cannot log and allow); rendered as enforce",
        );
    }
    let default_allows = policy.default == DefaultAction::Allow;

    let mut entries: BTreeMap<String, Entry> = BTreeMap::new();
    for (i, rule) in policy.rules.iter().enumerate() {
        let mut reqs = None;
        for pattern in &rule.images {
            let scope = match scope_of(pattern) {
                Scope::Exact(s) => s,
                Scope::Widened(s, what) if rule.allow => {
                    let default = if default_allows { "allow" } else { "reject" };
                    r.issue(
                        Some(rule),
                        Effect::Stricter,
                        format!(
                            "image pattern `{pattern}` not rendered: its scope `{s}` would also allow {what}; \
                             its images get a broader rendered scope's requirements or the default ({default})"
                        ),
                    );
                    continue;
                }
                Scope::Widened(s, what) => {
                    r.issue(
                        Some(rule),
                        Effect::Differs,
                        format!(
                            "image pattern `{pattern}` rendered as scope `{s}`, which also requires this rule's \
                             signature for {what} (kcache decides those by other rules or the default)"
                        ),
                    );
                    s
                }
                Scope::No(why) => {
                    let (effect, outcome) = match (default_allows, rule.allow) {
                        (false, _) => (Effect::Stricter, "rejected by the default"),
                        (true, false) => (Effect::Wider, "ALLOWED UNVERIFIED by the default (default: allow)"),
                        (true, true) => (Effect::Differs, "allowed by the default"),
                    };
                    r.issue(
                        Some(rule),
                        effect,
                        format!(
                            "image pattern `{pattern}` not representable ({why}); not rendered: its images are \
                             decided by a broader rendered scope or {outcome}"
                        ),
                    );
                    continue;
                }
            };
            let reqs = reqs.get_or_insert_with(|| r.requirements(rule)).clone();
            match entries.get_mut(&scope) {
                None => {
                    entries.insert(scope, Entry { rules: vec![i], reqs });
                }
                Some(e) if e.reqs == reqs => {
                    if !e.rules.contains(&i) {
                        e.rules.push(i);
                    }
                }
                Some(e) => {
                    let others: Vec<&str> = e.rules.iter().map(|&k| policy.rules[k].name.as_str()).collect();
                    let msg = if reqs == [accept()] {
                        "its allow is dropped there (stricter)".to_string()
                    } else if e.reqs == [accept()] {
                        e.reqs = reqs;
                        "their allow is dropped there (stricter)".to_string()
                    } else {
                        e.reqs.extend(reqs);
                        e.reqs.dedup();
                        "both requirement sets are rendered, and containers/image requires all of them".to_string()
                    };
                    r.issue(
                        Some(rule),
                        Effect::Stricter,
                        format!(
                            "image pattern `{pattern}` renders to scope `{scope}`, as do rules {others:?}; a scope \
                             holds one requirement list: {msg}"
                        ),
                    );
                    e.rules.push(i);
                }
            }
        }
    }

    probe(&mut r, &entries);

    let default = if default_allows { accept() } else { reject() };
    let mut docker = serde_json::Map::new();
    let mut attachments = serde_json::Map::new();
    for (scope, e) in &entries {
        docker.insert(scope.clone(), Value::Array(e.reqs.clone()));
        if e.reqs.iter().any(|q| q["type"] == "sigstoreSigned") {
            let on = json!({"use-sigstore-attachments": true});
            match repo_of(scope) {
                "" => {
                    attachments.insert("default-docker".into(), on);
                }
                repo => {
                    attachments
                        .entry("docker")
                        .or_insert_with(|| json!({}))
                        .as_object_mut()
                        .map(|m| m.insert(repo.to_string(), on));
                }
            }
        }
    }
    let mut policy_json = json!({"default": [default]});
    if !docker.is_empty() {
        policy_json["transports"] = json!({"docker": docker});
    }
    if !attachments.contains_key("docker") {
        attachments.insert("docker".into(), json!({}));
    }
    let yaml = serde_yaml::to_string(&Value::Object(attachments)).unwrap_or_default();
    CrioRender {
        policy_json,
        registries_d: format!(
            "# Generated by `kcache policy render crio`: containers/image reads cosign signatures\n\
             # (sha256-<digest>.sig tags) for the scopes kcache's policy requires signatures for.\n{yaml}"
        ),
        files: r.files,
        report: r.report,
    }
}

/// The repository (or namespace, host) part of a scope: without its tag or digest.
fn repo_of(scope: &str) -> &str {
    if let Some((repo, _)) = scope.split_once('@') {
        return repo;
    }
    match scope.rfind(':') {
        Some(c) if c > scope.rfind('/').unwrap_or(0) && scope.contains('/') => &scope[..c],
        _ => scope,
    }
}

/// The rendered scope containers/image uses for an image: its identity with tag or digest, then
/// the repository, then each enclosing namespace up to the host, then the transport default.
fn cimage_lookup<'e>(
    entries: &'e BTreeMap<String, Entry>,
    name: &str,
    tag: Option<&str>,
    digest: Option<&Digest>,
) -> Option<(&'e str, &'e Entry)> {
    let mut candidates = Vec::new();
    if let Some(d) = digest {
        candidates.push(format!("{name}@{d}"));
    } else if let Some(t) = tag {
        candidates.push(format!("{name}:{t}"));
    }
    let mut n = name;
    loop {
        candidates.push(n.to_string());
        match n.rfind('/') {
            Some(i) => n = &n[..i],
            None => break,
        }
    }
    candidates.push(String::new());
    candidates
        .into_iter()
        .find_map(|c| entries.get_key_value(&c).map(|(k, e)| (k.as_str(), e)))
}

/// Decides probe images under every rendered scope both ways (kcache's most specific pattern,
/// containers/image's longest scope) and reports each disagreement.
fn probe(r: &mut Renderer<'_>, entries: &BTreeMap<String, Entry>) {
    let probe_digest = Digest::parse(&format!("sha256:{}", "0".repeat(64))).expect("valid digest");
    for scope in entries.keys() {
        // (name, tag, digest): with both, a pull by tag that resolves to the digest, which
        // kcache matches against digest pins and containers/image only by its tag.
        let mut probes: Vec<(String, Option<String>, Option<Digest>)> = Vec::new();
        if let Some((repo, d)) = scope.split_once('@') {
            if let Ok(d) = Digest::parse(d) {
                probes.push((repo.to_string(), None, Some(d.clone())));
                probes.push((repo.to_string(), Some("latest".into()), Some(d)));
            }
        } else if repo_of(scope) != scope {
            let repo = repo_of(scope);
            probes.push((repo.to_string(), Some(scope[repo.len() + 1..].to_string()), None));
        } else {
            let base = if scope.is_empty() {
                "kcache-probe.invalid"
            } else {
                scope.as_str()
            };
            if base.contains('/') {
                probes.push((base.to_string(), Some("latest".into()), None));
                probes.push((base.to_string(), None, Some(probe_digest.clone())));
            }
            probes.push((format!("{base}/kcache-probe"), Some("latest".into()), None));
            probes.push((format!("{base}/kcache-probe/nested"), Some("latest".into()), None));
        }
        for (name, tag, digest) in probes {
            let kc = r.policy.match_image(&name, tag.as_deref(), digest.as_ref());
            let ci_digest = if tag.is_some() { None } else { digest.as_ref() };
            let ci = cimage_lookup(entries, &name, tag.as_deref(), ci_digest);
            let kc_rule = kc.rule_name().map(str::to_string);
            let agree = match (&kc_rule, ci) {
                (None, None) => true,
                (Some(k), Some((_, e))) => e.rules.iter().any(|&i| r.policy.rules[i].name == *k),
                _ => false,
            };
            if agree {
                continue;
            }
            let image = match (&tag, &digest) {
                (Some(t), Some(d)) => format!("{name}:{t} (resolving to {d})"),
                (_, Some(d)) => format!("{name}@{d}"),
                (Some(t), None) => format!("{name}:{t}"),
                (None, None) => name.clone(),
            };
            let kc_text = match &kc_rule {
                Some(k) => format!("rule {k:?}"),
                None => format!(
                    "the default ({})",
                    if r.policy.default == DefaultAction::Allow {
                        "allow"
                    } else {
                        "deny"
                    }
                ),
            };
            let (ci_rule, ci_text, ci_accepts) = match ci {
                Some((s, e)) => {
                    let names: Vec<&str> = e.rules.iter().map(|&i| r.policy.rules[i].name.as_str()).collect();
                    let scope = if s.is_empty() {
                        "the docker transport default"
                    } else {
                        s
                    };
                    (
                        e.rules.first().map(|&i| &r.policy.rules[i]),
                        format!("scope `{scope}` (rules {names:?})"),
                        e.reqs == [accept()],
                    )
                }
                None => (
                    None,
                    "the default".to_string(),
                    r.policy.default == DefaultAction::Allow,
                ),
            };
            let kc_allows = match kc {
                super::Match::Rule { rule, .. } => rule.allow,
                super::Match::Default(d) => d == DefaultAction::Allow,
            };
            let effect = if ci_accepts && !kc_allows {
                Effect::Wider
            } else {
                Effect::Differs
            };
            let rule = ci_rule.or(match kc {
                super::Match::Rule { rule, .. } => Some(rule),
                super::Match::Default(_) => None,
            });
            r.issue(
                rule,
                effect,
                format!(
                    "precedence differs: image {image} is decided by {kc_text} in kcache, by {ci_text} in \
                     containers/image (its scopes are prefixes and the longest one wins)"
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests;

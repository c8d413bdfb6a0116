//! The approved caches: `/etc/kcache/caches.d/*.yaml`.
//!
//! Each file holds one entry or a list of entries:
//!
//! ```yaml
//! - name: llama-70b            # what pods name in the kcache.dev/cache annotation
//!   namespace: ml              # optional: without it the cache is cluster-wide
//!   image: registry.example.com/caches/llama-70b:h100
//! ```
//!
//! Files are read in name order (`*.yaml`, `*.yml`; hidden files such as atomic-write
//! temporaries skipped). Every problem names the file and the field; one `(namespace, name)` in
//! two places is an error naming both.

use std::{
    collections::BTreeMap,
    fmt, io,
    path::{Path, PathBuf},
    time::UNIX_EPOCH,
};

use serde::{Deserialize, Serialize};

use crate::{cache::store::is_plain_name, registry::Reference};

/// Default caches.d directory.
pub const DEFAULT_CACHES_DIR: &str = crate::paths::CACHES_DIR;

/// One approved cache.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovedCache {
    /// The name pods use.
    pub name: String,
    /// The namespace it is approved for; `None`: cluster-wide.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The image (tag or digest reference).
    pub image: String,
    /// The file it came from.
    #[serde(skip)]
    pub source: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    name: String,
    #[serde(default)]
    namespace: Option<String>,
    image: String,
}

/// One problem in caches.d.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file (or the directory, when it cannot be listed).
    pub file: PathBuf,
    /// The field path, e.g. `[1].image`; empty for the whole file.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.field.is_empty() {
            true => write!(f, "{}: {}", self.file.display(), self.message),
            false => write!(f, "{}: {}: {}", self.file.display(), self.field, self.message),
        }
    }
}

/// Everything wrong with caches.d; never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovedError {
    /// In file order.
    pub problems: Vec<Problem>,
}

impl fmt::Display for ApprovedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid approved caches")?;
        for p in &self.problems {
            write!(f, "\n  {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ApprovedError {}

/// What `kcache cache pull TARGET` names: an image reference as given (it has a `/`, `:` or
/// `@`), else the image of the cache approved as `TARGET` (for `namespace`, or cluster-wide
/// with `None`) in `dir`.
pub fn image_for(dir: &Path, target: &str, namespace: Option<&str>) -> Result<String, LookupError> {
    if target.contains(['/', ':', '@']) {
        return Ok(target.to_owned());
    }
    load_dir(dir)?
        .into_iter()
        .find(|c| c.name == target && c.namespace.as_deref() == namespace)
        .map(|c| c.image)
        .ok_or_else(|| LookupError::NotApproved {
            name: target.to_owned(),
            namespace: namespace.map(str::to_owned),
            dir: dir.to_owned(),
        })
}

/// Why [`image_for`] found no image.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    /// caches.d is broken.
    #[error(transparent)]
    Invalid(#[from] ApprovedError),
    /// No such approved cache.
    #[error("no approved cache {name}{} in {}", namespace.as_deref().map(|n| format!(" in namespace {n}")).unwrap_or_default(), dir.display())]
    NotApproved {
        /// The name.
        name: String,
        /// The namespace.
        namespace: Option<String>,
        /// caches.d.
        dir: PathBuf,
    },
}

/// Loads every file in `dir`; any problem fails the whole load. A missing `dir` is empty.
pub fn load_dir(dir: &Path) -> Result<Vec<ApprovedCache>, ApprovedError> {
    let (caches, problems) = load_dir_lenient(dir);
    match problems.is_empty() {
        true => Ok(caches),
        false => Err(ApprovedError { problems }),
    }
}

/// Loads what is valid and reports the rest: a broken file contributes no entry (fail closed:
/// its caches are not approved), the others still count. For the daemon, which must keep
/// serving the good entries while an admin fixes a file. Of a duplicate, the first file (in
/// name order) wins.
pub fn load_dir_lenient(dir: &Path) -> (Vec<ApprovedCache>, Vec<Problem>) {
    let mut problems = Vec::new();
    let files = match list(dir) {
        Ok(f) => f,
        Err(e) => {
            problems.push(Problem {
                file: dir.to_owned(),
                field: String::new(),
                message: format!("cannot read directory: {e}"),
            });
            return (Vec::new(), problems);
        }
    };
    let mut out: Vec<ApprovedCache> = Vec::new();
    let mut seen: BTreeMap<(Option<String>, String), (PathBuf, String)> = BTreeMap::new();
    for path in files {
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) => {
                problems.push(Problem {
                    file: path,
                    field: String::new(),
                    message: format!("cannot read file: {e}"),
                });
                continue;
            }
        };
        let entries = match parse_file(&path, &bytes) {
            Ok(e) => e,
            Err(mut p) => {
                problems.append(&mut p);
                continue;
            }
        };
        for (field, entry) in entries {
            let key = (entry.namespace.clone(), entry.name.clone());
            if let Some((first, first_field)) = seen.get(&key) {
                problems.push(Problem {
                    file: path.clone(),
                    field: field.clone(),
                    message: format!(
                        "duplicate cache {} (first defined at {}{})",
                        describe(&key),
                        first.display(),
                        if first_field.is_empty() {
                            String::new()
                        } else {
                            format!(": {first_field}")
                        }
                    ),
                });
                continue;
            }
            seen.insert(key, (path.clone(), field));
            out.push(entry);
        }
    }
    out.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    (out, problems)
}

fn describe((ns, name): &(Option<String>, String)) -> String {
    match ns {
        Some(ns) => format!("{ns}/{name}"),
        None => format!("{name} (cluster-wide)"),
    }
}

/// Parses one file: its entries, each with its field path (`""` for a single entry, `[i]` in a
/// list).
pub fn parse_file(path: &Path, bytes: &[u8]) -> Result<Vec<(String, ApprovedCache)>, Vec<Problem>> {
    let problem = |field: String, message: String| Problem {
        file: path.to_owned(),
        field,
        message,
    };
    let doc: serde_yaml::Value =
        serde_yaml::from_slice(bytes).map_err(|e| vec![problem(String::new(), format!("not valid YAML: {e}"))])?;
    let raw: Vec<(String, serde_yaml::Value)> = match doc {
        serde_yaml::Value::Sequence(items) => items
            .into_iter()
            .enumerate()
            .map(|(i, v)| (format!("[{i}]"), v))
            .collect(),
        serde_yaml::Value::Null => Vec::new(),
        v @ serde_yaml::Value::Mapping(_) => vec![(String::new(), v)],
        _ => {
            return Err(vec![problem(
                String::new(),
                "expected an entry (name, namespace, image) or a list of entries".into(),
            )])
        }
    };
    let mut out = Vec::new();
    let mut problems = Vec::new();
    for (prefix, value) in raw {
        let join = |field: &str| match (prefix.is_empty(), field.is_empty()) {
            (_, true) => prefix.clone(),
            (true, false) => field.to_string(),
            (false, false) => format!("{prefix}.{field}"),
        };
        let entry: RawEntry = match serde_path_to_error::deserialize(value) {
            Ok(e) => e,
            Err(e) => {
                let path = e.path().to_string();
                let field = if path == "." { String::new() } else { path };
                problems.push(problem(join(&field), e.into_inner().to_string()));
                continue;
            }
        };
        let mut ok = true;
        if !valid_name(&entry.name) {
            problems.push(problem(
                join("name"),
                format!(
                    "cache name {:?} must be 1-253 characters of lowercase letters, digits, '.', '_' and '-'",
                    entry.name
                ),
            ));
            ok = false;
        }
        if let Some(ns) = &entry.namespace {
            if !valid_namespace(ns) {
                problems.push(problem(
                    join("namespace"),
                    format!("namespace {ns:?} is not a Kubernetes namespace name (lowercase letters, digits, '-')"),
                ));
                ok = false;
            }
        }
        if let Err(e) = Reference::parse(&entry.image) {
            problems.push(problem(join("image"), format!("not an image reference: {e}")));
            ok = false;
        }
        if ok {
            out.push((
                prefix.clone(),
                ApprovedCache {
                    name: entry.name,
                    namespace: entry.namespace,
                    image: entry.image,
                    source: path.to_owned(),
                },
            ));
        }
    }
    match problems.is_empty() {
        true => Ok(out),
        false => Err(problems),
    }
}

fn valid_name(s: &str) -> bool {
    is_plain_name(s)
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
}

fn valid_namespace(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && !s.starts_with('-')
        && !s.ends_with('-')
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// The caches.d files, sorted by name. A missing directory is empty.
fn list(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry?;
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if name.starts_with('.') || !(name.ends_with(".yaml") || name.ends_with(".yml")) {
            continue;
        }
        if entry.file_type()?.is_dir() {
            continue;
        }
        out.push(entry.path());
    }
    out.sort();
    Ok(out)
}

/// A cheap fingerprint of caches.d (names, sizes, mtimes): the daemon re-reads the directory
/// when it changes.
pub fn dir_fingerprint(dir: &Path) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut mix = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    for path in list(dir).unwrap_or_default() {
        mix(path.as_os_str().as_encoded_bytes());
        if let Ok(m) = std::fs::metadata(&path) {
            mix(&m.len().to_le_bytes());
            let mtime = m.modified().ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok());
            mix(&mtime.map_or(0, |d| d.as_nanos()).to_le_bytes());
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    #[test]
    fn single_entries_and_lists_load_sorted() {
        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            "a.yaml",
            "name: llama\nnamespace: ml\nimage: reg.example/caches/llama:h100\n",
        );
        write(
            d.path(),
            "b.yml",
            "- name: mistral\n  image: reg.example/caches/mistral:v1\n- name: llama\n  image: reg.example/caches/llama:all\n",
        );
        write(d.path(), ".a.yaml.tmp-1-2", "garbage: [");
        write(d.path(), "README", "not yaml: [");
        let caches = load_dir(d.path()).unwrap();
        let names: Vec<_> = caches
            .iter()
            .map(|c| format!("{}/{}", c.namespace.as_deref().unwrap_or("*"), c.name))
            .collect();
        assert_eq!(names, ["*/llama", "*/mistral", "ml/llama"]);
        assert!(caches[0].source.ends_with("b.yml"));
    }

    #[test]
    fn problems_name_the_file_and_field() {
        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            "a.yaml",
            "- name: ok\n  image: reg.example/c:v1\n- name: x\n  image: 'UPPER CASE'\n",
        );
        write(d.path(), "b.yaml", "name: y\nimage: reg.example/c:v1\ncolour: blue\n");
        write(d.path(), "c.yaml", "name: Bad/Name\nimage: reg.example/c:v1\n");
        write(d.path(), "d0.yaml", "name: dup\nimage: reg.example/c:v1\n");
        write(d.path(), "d1.yaml", "- name: dup\n  image: reg.example/other:v1\n");
        write(d.path(), "e.yaml", "[unclosed\n");
        let err = load_dir(d.path()).unwrap_err().to_string();
        assert!(err.contains("a.yaml: [1].image: not an image reference"), "{err}");
        assert!(err.contains("b.yaml") && err.contains("colour"), "{err}");
        assert!(err.contains("c.yaml: name: cache name \"Bad/Name\""), "{err}");
        assert!(
            err.contains("d1.yaml: [0]: duplicate cache dup (cluster-wide) (first defined at ")
                && err.contains("d0.yaml)"),
            "{err}"
        );
        assert!(err.contains("e.yaml: not valid YAML"), "{err}");
        let (good, problems) = load_dir_lenient(d.path());
        assert_eq!(problems.len(), 5);
        // a.yaml has a bad entry, so its good one is out too; of the duplicate, d0 wins.
        assert_eq!(good.len(), 1, "{good:?}");
        assert!(good[0].source.ends_with("d0.yaml"));
    }

    #[test]
    fn missing_dir_is_empty_and_fingerprint_tracks_changes() {
        assert!(load_dir(Path::new("/nonexistent/caches.d")).unwrap().is_empty());
        let d = tempfile::tempdir().unwrap();
        let before = dir_fingerprint(d.path());
        write(d.path(), "a.yaml", "name: a\nimage: reg.example/c:v1\n");
        assert_ne!(before, dir_fingerprint(d.path()));
    }
}

//! The subset of containerd's filter syntax (`github.com/containerd/containerd/filters`) that
//! `ctr snapshots ls` and CRI send to a snapshotter:
//!
//! ```text
//! filters   := filter ( "|" filter )*        any filter may match
//! filter    := selector ( "," selector )*    every selector must match
//! selector  := fieldpath ( ( "==" | "!=" ) value )?
//! fieldpath := field ( "." field )*
//! field     := quoted | [A-Za-z0-9_]+
//! value     := quoted | [^\s,|]+
//! ```
//!
//! Fields are those of containerd's snapshot adaptor: `kind` (`active`, `view`, `committed`),
//! `name`, `parent` and `labels.<key>`, where the key is the rest of the path joined with `.`
//! (`labels."containerd.io/snapshot.ref"`). A selector without an operator tests presence. The
//! regexp operator `~=` is not supported and fails with InvalidArgument.

use super::{Info, Result, SnapshotError};

/// Parsed filters: matches when any of the alternatives matches.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Filter {
    any_of: Vec<Vec<Selector>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Selector {
    path: Vec<String>,
    op: Option<(Op, String)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Equal,
    NotEqual,
}

impl Filter {
    /// Parses a list of filters, any of which may match (containerd's `filters.ParseAll`). An
    /// empty list, or one of blank strings, matches everything.
    pub fn parse_all<S: AsRef<str>>(filters: &[S]) -> Result<Self> {
        let mut any_of = Vec::new();
        for f in filters {
            let parsed = Self::parse(f.as_ref())?;
            if parsed.any_of.is_empty() {
                return Ok(Self::default());
            }
            any_of.extend(parsed.any_of);
        }
        Ok(Self { any_of })
    }

    /// Parses one filter string. A blank string matches everything.
    pub fn parse(input: &str) -> Result<Self> {
        if input.trim().is_empty() {
            return Ok(Self::default());
        }
        let mut p = Parser { input, pos: 0 };
        let mut any_of = vec![p.conjunction()?];
        while p.eat('|') {
            any_of.push(p.conjunction()?);
        }
        p.skip_ws();
        if p.pos != input.len() {
            return Err(p.error("unexpected input"));
        }
        Ok(Self { any_of })
    }

    /// Whether `info` matches.
    pub fn matches(&self, info: &Info) -> bool {
        self.any_of.is_empty() || self.any_of.iter().any(|all| all.iter().all(|s| s.matches(info)))
    }
}

impl Selector {
    fn matches(&self, info: &Info) -> bool {
        let Some(value) = field(info, &self.path) else {
            return false;
        };
        match &self.op {
            None => true,
            Some((Op::Equal, want)) => value == want,
            Some((Op::NotEqual, want)) => value != want,
        }
    }
}

/// containerd's `adaptSnapshot`: the value of a field path, if the snapshot has it.
fn field<'a>(info: &'a Info, path: &[String]) -> Option<&'a str> {
    match (path.first().map(String::as_str), path.len()) {
        (Some("kind"), 1) => Some(info.kind.as_str()),
        (Some("name"), 1) => Some(&info.name),
        (Some("parent"), 1) => Some(&info.parent),
        (Some("labels"), n) if n > 1 => info.labels.get(&path[1..].join(".")).map(String::as_str),
        _ => None,
    }
}

struct Parser<'a> {
    input: &'a str,
    pos: usize,
}

impl Parser<'_> {
    fn rest(&self) -> &str {
        &self.input[self.pos..]
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn skip_ws(&mut self) {
        let trimmed = self.rest().trim_start();
        self.pos = self.input.len() - trimmed.len();
    }

    fn eat(&mut self, c: char) -> bool {
        self.skip_ws();
        if self.peek() == Some(c) {
            self.pos += c.len_utf8();
            true
        } else {
            false
        }
    }

    fn error(&self, what: &str) -> SnapshotError {
        SnapshotError::InvalidArgument(format!("filter {:?}: {what} at offset {}", self.input, self.pos))
    }

    fn conjunction(&mut self) -> Result<Vec<Selector>> {
        let mut all = vec![self.selector()?];
        while self.eat(',') {
            all.push(self.selector()?);
        }
        Ok(all)
    }

    fn selector(&mut self) -> Result<Selector> {
        let mut path = vec![self.field()?];
        while self.eat('.') {
            path.push(self.field()?);
        }
        self.skip_ws();
        let op = if self.rest().starts_with("==") {
            Some(Op::Equal)
        } else if self.rest().starts_with("!=") {
            Some(Op::NotEqual)
        } else if self.rest().starts_with("~=") {
            return Err(self.error("the regexp operator ~= is not supported"));
        } else {
            None
        };
        let op = match op {
            Some(op) => {
                self.pos += 2;
                Some((op, self.value()?))
            }
            None => None,
        };
        Ok(Selector { path, op })
    }

    fn field(&mut self) -> Result<String> {
        self.skip_ws();
        if self.peek() == Some('"') {
            return self.quoted();
        }
        let len = self
            .rest()
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(self.rest().len());
        if len == 0 {
            return Err(self.error("expected a field"));
        }
        let field = self.rest()[..len].to_owned();
        self.pos += len;
        Ok(field)
    }

    fn value(&mut self) -> Result<String> {
        self.skip_ws();
        if self.peek() == Some('"') {
            return self.quoted();
        }
        let len = self
            .rest()
            .find(|c: char| c.is_whitespace() || c == ',' || c == '|')
            .unwrap_or(self.rest().len());
        if len == 0 {
            return Err(self.error("expected a value"));
        }
        let value = self.rest()[..len].to_owned();
        self.pos += len;
        Ok(value)
    }

    /// A double-quoted string with Go's common escapes.
    fn quoted(&mut self) -> Result<String> {
        let start = self.pos;
        let mut out = String::new();
        let mut chars = self.rest().char_indices().skip(1);
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => {
                    self.pos += i + 1;
                    return Ok(out);
                }
                '\\' => match chars.next().map(|(_, c)| c) {
                    Some('n') => out.push('\n'),
                    Some('t') => out.push('\t'),
                    Some(c @ ('"' | '\\' | '/')) => out.push(c),
                    _ => {
                        self.pos = start + i;
                        return Err(self.error("unsupported escape"));
                    }
                },
                c => out.push(c),
            }
        }
        Err(self.error("unterminated quoted string"))
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::HashMap, time::SystemTime};

    use super::*;
    use crate::snapshot::Kind;

    fn info() -> Info {
        Info {
            name: "sha256:abc".into(),
            parent: "sha256:def".into(),
            kind: Kind::Committed,
            labels: HashMap::from([
                ("containerd.io/snapshot.ref".into(), "sha256:abc".into()),
                ("a.b".into(), "c".into()),
            ]),
            created_at: SystemTime::UNIX_EPOCH,
            updated_at: SystemTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn filters_match_like_containerds_snapshot_adaptor() {
        let cases = [
            ("", true),
            ("kind==committed", true),
            ("kind==active", false),
            ("kind!=active", true),
            ("name==sha256:abc", true),
            ("name==\"sha256:abc\"", true),
            ("parent==sha256:def", true),
            ("parent!=sha256:def", false),
            ("labels.\"containerd.io/snapshot.ref\"==sha256:abc", true),
            ("labels.\"containerd.io/snapshot.ref\"", true),
            ("labels.\"containerd.io/snapshot.gc\"", false),
            ("labels.a.b==c", true),
            ("labels.a.b", true),
            ("labels.a", false),
            ("labels", false),
            ("kind==committed,name==sha256:abc", true),
            ("kind==committed, name==other", false),
            ("kind==active|name==sha256:abc", true),
            ("kind==active|name==x", false),
            ("unknown", false),
            ("unknown!=x", false),
        ];
        for (filter, want) in cases {
            let f = Filter::parse(filter).unwrap();
            assert_eq!(f.matches(&info()), want, "{filter}");
        }
    }

    #[test]
    fn a_list_of_filters_matches_when_any_of_them_does() {
        let f = Filter::parse_all(&["kind==active", "name==sha256:abc"]).unwrap();
        assert!(f.matches(&info()));
        let f = Filter::parse_all(&["kind==active", "name==x"]).unwrap();
        assert!(!f.matches(&info()));
        assert!(Filter::parse_all::<&str>(&[]).unwrap().matches(&info()));
    }

    #[test]
    fn malformed_filters_are_invalid_arguments() {
        for bad in [
            "==x",
            "name==",
            "name==\"open",
            "labels.\"a\\q\"",
            "name~=x",
            "kind==a b",
            ",",
        ] {
            let err = Filter::parse(bad).unwrap_err();
            assert!(matches!(err, SnapshotError::InvalidArgument(_)), "{bad}: {err}");
        }
    }
}

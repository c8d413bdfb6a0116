//! Pure checks on entry names and symlink targets (no I/O).

use super::{
    error::{lossy, ExtractError, Result},
    ExtractLimits,
};

/// Checks an entry name and writes its normalized form into `out` (components joined by `/`,
/// without `.` or empty components; empty for the root itself). Returns the depth (number of
/// components).
pub(crate) fn normalize_name(raw: &[u8], limits: &ExtractLimits, out: &mut Vec<u8>) -> Result<usize> {
    out.clear();
    if raw.is_empty() {
        return Err(ExtractError::EmptyName);
    }
    if raw.contains(&0) {
        return Err(ExtractError::NulInName { entry: lossy(raw) });
    }
    if raw.len() > limits.max_path_len {
        return Err(ExtractError::PathTooLong {
            entry: lossy(raw),
            len: raw.len(),
            limit: limits.max_path_len,
        });
    }
    if raw[0] == b'/' {
        return Err(ExtractError::AbsolutePath { entry: lossy(raw) });
    }
    let mut depth = 0;
    for comp in raw.split(|b| *b == b'/') {
        match comp {
            b"" | b"." => continue,
            b".." => return Err(ExtractError::ParentComponent { entry: lossy(raw) }),
            _ => {}
        }
        depth += 1;
        if depth > limits.max_depth {
            return Err(ExtractError::TooDeep {
                entry: lossy(raw),
                depth,
                limit: limits.max_depth,
            });
        }
        if !out.is_empty() {
            out.push(b'/');
        }
        out.extend_from_slice(comp);
    }
    Ok(depth)
}

/// Checks a symlink target for a link at depth `link_depth` (its directory is `link_depth - 1`
/// levels below the root).
///
/// Lexical resolution alone is not enough: with `x -> .`, the target `x/..` is lexically the
/// link's own directory but physically the root's parent. So `..` is allowed only as leading
/// components (at most as many as the link's directory is deep), followed by plain names. Since
/// every link's directory is a real directory of the tree (parents are never symlinks), each
/// link then resolves inside the tree, by induction over the links it passes through.
pub(crate) fn check_link_target(entry: &[u8], target: &[u8], link_depth: usize, limits: &ExtractLimits) -> Result<()> {
    if target.contains(&0) {
        return Err(ExtractError::NulInName { entry: lossy(entry) });
    }
    if target.len() > limits.max_path_len {
        return Err(ExtractError::PathTooLong {
            entry: lossy(entry),
            len: target.len(),
            limit: limits.max_path_len,
        });
    }
    let escapes = || ExtractError::SymlinkEscapes {
        entry: lossy(entry),
        target: lossy(target),
    };
    if target.is_empty() {
        return Err(escapes());
    }
    if target[0] == b'/' {
        return Err(ExtractError::SymlinkAbsolute {
            entry: lossy(entry),
            target: lossy(target),
        });
    }
    let mut ups = 0usize;
    let mut named = false;
    for comp in target.split(|b| *b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." if named => return Err(escapes()),
            b".." => ups += 1,
            _ => named = true,
        }
    }
    if ups > link_depth.saturating_sub(1) {
        return Err(escapes());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(raw: &str) -> Result<(String, usize)> {
        let mut out = Vec::new();
        let depth = normalize_name(raw.as_bytes(), &ExtractLimits::default(), &mut out)?;
        Ok((String::from_utf8(out).unwrap(), depth))
    }

    #[test]
    fn names_normalize_dots_and_slashes_away() {
        assert_eq!(norm("./a//b/./c/").unwrap(), ("a/b/c".into(), 3));
        assert_eq!(norm("./").unwrap(), (String::new(), 0));
        assert_eq!(
            norm("io.triton.cache/K/x.json").unwrap(),
            ("io.triton.cache/K/x.json".into(), 3)
        );
    }

    #[test]
    fn bad_names_are_rejected_by_rule() {
        assert!(matches!(norm(""), Err(ExtractError::EmptyName)));
        assert!(matches!(norm("/etc/passwd"), Err(ExtractError::AbsolutePath { .. })));
        assert!(matches!(norm("a/../../b"), Err(ExtractError::ParentComponent { .. })));
        assert!(matches!(norm("a\0b"), Err(ExtractError::NulInName { .. })));
        let deep = "d/".repeat(65);
        assert!(matches!(norm(&deep), Err(ExtractError::TooDeep { depth: 65, .. })));
        let long = "x".repeat(4097);
        assert!(matches!(norm(&long), Err(ExtractError::PathTooLong { len: 4097, .. })));
    }

    fn component() -> impl proptest::strategy::Strategy<Value = &'static str> {
        proptest::sample::select(vec!["a", "b", ".", "..", "", "/x"])
    }

    proptest::proptest! {
        #[test]
        fn accepted_names_are_relative_and_never_climb(comps in proptest::collection::vec(component(), 1..8)) {
            let raw = comps.join("/");
            let mut out = Vec::new();
            if let Ok(depth) = normalize_name(raw.as_bytes(), &ExtractLimits::default(), &mut out) {
                let parts: Vec<&[u8]> = out.split(|b| *b == b'/').filter(|c| !c.is_empty()).collect();
                proptest::prop_assert!(!out.starts_with(b"/"));
                proptest::prop_assert!(parts.iter().all(|c| *c != b".." && *c != b"."));
                proptest::prop_assert_eq!(parts.len(), depth);
            }
        }

        #[test]
        fn accepted_link_targets_stay_at_or_below_the_root(
            comps in proptest::collection::vec(component(), 1..8),
            link_depth in 1usize..5,
        ) {
            let target = comps.join("/");
            if check_link_target(b"l", target.as_bytes(), link_depth, &ExtractLimits::default()).is_ok() {
                // Walk from the link's directory; a name may be a symlink to anywhere inside,
                // so after the first name only the climb before it matters.
                let mut level = link_depth as i64 - 1;
                for c in target.split('/') {
                    match c {
                        "" | "." => {}
                        ".." => level -= 1,
                        _ => break,
                    }
                    proptest::prop_assert!(level >= 0, "{target} climbs out from depth {link_depth}");
                }
                let names_then_up = target.split('/').skip_while(|c| *c != "a" && *c != "b" && *c != "x")
                    .any(|c| c == "..");
                proptest::prop_assert!(!names_then_up, "{target}");
            }
        }
    }

    #[test]
    fn link_targets_may_climb_only_as_deep_as_the_link_is() {
        let l = ExtractLimits::default();
        let ok = |t: &str, depth| check_link_target(b"l", t.as_bytes(), depth, &l).is_ok();
        assert!(ok("b", 1));
        assert!(ok("./b/c", 1));
        assert!(ok("../b", 2));
        assert!(ok("..", 2));
        assert!(ok(".", 1));
        assert!(!ok("..", 1));
        assert!(!ok("../../x", 2));
        assert!(!ok("x/..", 1), "'..' after a name could climb through a symlink");
        assert!(!ok("x/../..", 3));
        assert!(!ok("", 1));
        assert!(matches!(
            check_link_target(b"l", b"/tmp/x", 1, &l),
            Err(ExtractError::SymlinkAbsolute { .. })
        ));
    }
}

//! The one line every kcache refusal of an image carries, whichever part of kcache refused it:
//! the snapshotter gate (a CRI pull's unpack) or the image verifier (containerd 2.x's bindir
//! verifier on transfer-service pulls). containerd passes either to the CRI client inside its
//! own error text, so `kcache doctor`'s canary (and anyone reading a kubelet event) recognises
//! kcache's refusal by this marker and reads the image, digest and rule back with [`find`].

use std::fmt;

/// What every refusal line starts with: `kcache: image <image> (<digest>) denied by rule …`.
pub const MARKER: &str = "kcache: image ";
/// Between the digest and the rule.
const RULE: &str = ") denied by rule ";

/// kcache refusing an image, as the gate and the image verifier both print it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal<'a> {
    /// The image reference as the puller named it.
    pub image: &'a str,
    /// The manifest digest that was refused (`<unresolved>` when there is none).
    pub digest: &'a str,
    /// The policy rule that decided (`<default>`: the policy default; `<none>`: no rule was
    /// reached, e.g. the request itself was malformed).
    pub rule: &'a str,
    /// Why, in words.
    pub reason: &'a str,
}

impl fmt::Display for Refusal<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{MARKER}{} ({}{RULE}{}: {}",
            self.image, self.digest, self.rule, self.reason
        )
    }
}

/// The first refusal in `text` (a containerd or CRI error message that wraps one), or None
/// when kcache did not refuse. The reason runs to the end of `text`.
pub fn find(text: &str) -> Option<Refusal<'_>> {
    let mut from = 0;
    while let Some(at) = text[from..].find(MARKER) {
        let start = from + at;
        if let Some(r) = parse(&text[start..]) {
            return Some(r);
        }
        from = start + MARKER.len();
    }
    None
}

/// The text of the first refusal in `text`, from the marker on.
pub fn find_text(text: &str) -> Option<&str> {
    let r = find(text)?;
    let start = text.find(&format!("{MARKER}{} (", r.image))?;
    Some(&text[start..])
}

fn parse(line: &str) -> Option<Refusal<'_>> {
    let rest = line.strip_prefix(MARKER)?;
    // An image reference has no spaces; the digest has no parentheses.
    let (image, rest) = rest.split_once(" (")?;
    if image.is_empty() || image.contains(' ') {
        return None;
    }
    let (digest, rest) = rest.split_once(RULE)?;
    if digest.contains([' ', '(', ')']) {
        return None;
    }
    let (rule, reason) = rest.split_once(": ")?;
    if rule.contains(' ') {
        return None;
    }
    Some(Refusal {
        image,
        digest,
        rule,
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_reads_back_from_inside_containerds_error_text() {
        let r = Refusal {
            image: "127.0.0.1:5000/e2e/app:v1",
            digest: "sha256:abcd",
            rule: "apps",
            reason: "no signature found",
        };
        let line = r.to_string();
        assert_eq!(
            line,
            "kcache: image 127.0.0.1:5000/e2e/app:v1 (sha256:abcd) denied by rule apps: no signature found"
        );
        // The gate's (through CRI) and the verifier's (through the transfer service) wrappings.
        for wrapped in [
            format!("rpc error: code = PermissionDenied desc = failed to pull and unpack image \"x\": {line} (snapshot k)"),
            format!("failed to pull and unpack image \"x\": image verifier 00-kcache rejected image \"x\" (exit status 1): {line} [kcached]\n"),
        ] {
            let got = find(&wrapped).unwrap();
            assert_eq!((got.image, got.digest, got.rule), (r.image, r.digest, r.rule));
            assert!(got.reason.starts_with("no signature found"), "{}", got.reason);
            assert!(find_text(&wrapped).unwrap().starts_with(&line));
        }
    }

    #[test]
    fn text_that_only_resembles_a_refusal_is_none() {
        for text in [
            "",
            "kcache: image",
            "failed to pull: kcache: image x: connection refused",
            "kcache: image a b (sha256:1) denied by rule r: x",
            "kcache: image x (sha256:1) denied by rule two words: x",
            "kcache: allowed: image x digest sha256:1 rule r: ok",
        ] {
            assert_eq!(find(text), None, "{text:?}");
        }
        // A look-alike first, the real one after it.
        let t = "kcache: image nope; kcache: image x (sha256:1) denied by rule r: why";
        assert_eq!(find(t).unwrap().image, "x");
    }
}

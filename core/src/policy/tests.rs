use std::{fs, path::Path, sync::Arc};

use rstest::rstest;

use super::*;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures");

fn key_path() -> String {
    format!("{FIXTURES}/cosign-v2-containers-image/cosign.pub")
}

fn root_path() -> String {
    format!("{FIXTURES}/trusted-roots/sigstore-python-4.5.1/public-good/trusted_root.json")
}

fn parse(yaml: &str) -> Result<Policy, PolicyError> {
    Policy::from_yaml_str(yaml, Path::new("/etc/kcache/policy.yaml"))
}

/// A rule per pattern, named r0, r1…, all allow-listed; for matching tests.
fn allow_rules(patterns: &[&str]) -> Policy {
    let mut yaml = String::from("default: deny\nrules:\n");
    for (i, p) in patterns.iter().enumerate() {
        yaml += &format!("  - {{name: r{i}, images: [\"{p}\"], allow: true}}\n");
    }
    parse(&yaml).unwrap()
}

fn digest(c: char) -> Digest {
    Digest::parse(&format!("sha256:{}", c.to_string().repeat(64))).unwrap()
}

#[test]
fn full_example_loads_with_defaults_and_shared_roots() {
    let yaml = format!(
        r#"
mode: warn
default: allow
rules:
  - name: kernel-caches
    images: ["quay.io/gkm/**", "registry.example.com/caches/*"]
    authorities:
      - key: {{path: {key}}}
      - keyless:
          issuer: https://token.actions.githubusercontent.com
          subjectRegExp: '^https://github\.com/myorg/.*$'
          trustedRoot: {root}
      - keyless:
          issuerRegExp: '^https://accounts\.google\.com$'
          subject: ci@example.com
          trustedRoot: {root}
  - name: bootstrap
    images: ["registry.k8s.io/pause:*"]
    allow: true
"#,
        key = key_path(),
        root = root_path()
    );
    let p = parse(&yaml).unwrap();
    assert_eq!((p.mode, p.default), (Mode::Warn, DefaultAction::Allow));
    assert_eq!(p.rules.len(), 2);
    let r = &p.rules[0];
    assert_eq!(r.formats, vec![SignatureFormat::CosignV2, SignatureFormat::CosignV3]);
    assert_eq!(r.transparency_log, None);
    assert_eq!(r.tlog_requirement(&r.authorities[0]), TlogRequirement::Optional);
    assert_eq!(r.tlog_requirement(&r.authorities[1]), TlogRequirement::Required);
    let (Authority::Keyless { trusted_root: a, .. }, Authority::Keyless { trusted_root: b, .. }) =
        (&r.authorities[1], &r.authorities[2])
    else {
        panic!("expected keyless authorities");
    };
    assert!(Arc::ptr_eq(a, b), "one Arc<TrustedRoot> per path");
    assert_eq!(p.sources.len(), 3, "policy, key, trusted root: {:?}", p.sources);
    assert!(p.rules[1].allow && p.rules[1].authorities.is_empty());
}

#[test]
fn defaults_are_enforce_deny_and_public_good() {
    let p = parse("rules:\n  - name: a\n    images: [ghcr.io/x/*]\n    authorities:\n      - keyless: {issuer: https://i.example, subject: me@example.com}\n").unwrap();
    assert_eq!((p.mode, p.default), (Mode::Enforce, DefaultAction::Deny));
    assert!(matches!(
        &p.rules[0].authorities[0],
        Authority::Keyless {
            trusted_root_path: None,
            ..
        }
    ));
    assert!(parse("").unwrap().rules.is_empty());
}

#[test]
fn generation_follows_content_only() {
    let a = parse("mode: enforce\n").unwrap();
    let b = Policy::from_yaml_str("mode: enforce\n", Path::new("/elsewhere/p.yaml")).unwrap();
    let c = parse("mode: warn\n").unwrap();
    assert_eq!(a.generation, b.generation);
    assert_ne!(a.generation, c.generation);
}

#[test]
fn relative_key_paths_resolve_against_the_policy_file() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("keys")).unwrap();
    fs::copy(key_path(), dir.path().join("keys/k.pub")).unwrap();
    let main = dir.path().join("policy.yaml");
    fs::write(
        &main,
        "rules:\n  - {name: a, images: [ghcr.io/x/y], authorities: [{key: {path: keys/k.pub}}]}\n",
    )
    .unwrap();
    let p = Policy::load(&main, None).unwrap();
    let Authority::Key { path, .. } = &p.rules[0].authorities[0] else {
        panic!("key")
    };
    assert_eq!(path, &dir.path().join("keys/k.pub"));

    // Rotating the key changes the generation even though the YAML is the same.
    let before = p.generation;
    fs::copy(
        format!("{FIXTURES}/cosign-v2-containers-image/cosign2.pub"),
        dir.path().join("keys/k.pub"),
    )
    .unwrap();
    assert_ne!(Policy::load(&main, None).unwrap().generation, before);
}

#[test]
fn policy_d_fragments_load_in_file_name_order_and_skip_other_files() {
    let dir = tempfile::tempdir().unwrap();
    let main = dir.path().join("policy.yaml");
    let d = dir.path().join("policy.d");
    fs::create_dir(&d).unwrap();
    fs::write(
        &main,
        "mode: enforce\nrules:\n  - {name: m, images: [ghcr.io/m/*], allow: true}\n",
    )
    .unwrap();
    fs::write(
        d.join("20-b.yml"),
        "rules:\n  - {name: b, images: [ghcr.io/x/*], allow: true}\n",
    )
    .unwrap();
    fs::write(
        d.join("10-a.yaml"),
        "rules:\n  - {name: a, images: [ghcr.io/x/*], allow: true}\n",
    )
    .unwrap();
    fs::write(d.join(".10-a.yaml.tmp"), "garbage: [").unwrap();
    fs::write(d.join("README.md"), "not yaml").unwrap();
    let p = Policy::load(&main, Some(&d)).unwrap();
    let names: Vec<_> = p.rules.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["m", "a", "b"]);
    // Equally specific: load order decides, so 10-a beats 20-b.
    assert_eq!(p.match_image("ghcr.io/x/app", None, None).rule_name(), Some("a"));
    // A missing policy.d is just empty.
    assert_eq!(
        Policy::load(&main, Some(&dir.path().join("nope"))).unwrap().rules.len(),
        1
    );
}

#[rstest]
#[case::literal_beats_wildcards(&["ghcr.io/**", "ghcr.io/x/*", "ghcr.io/x/app"], "ghcr.io/x/app", None, "r2")]
#[case::single_star_beats_double_star(&["ghcr.io/x/**", "ghcr.io/x/*"], "ghcr.io/x/app", None, "r1")]
#[case::fewer_double_stars(&["**/app", "ghcr.io/**"], "ghcr.io/x/app", None, "r1")]
#[case::more_literal_segments(&["ghcr.io/*/*", "ghcr.io/x/*"], "ghcr.io/x/app", None, "r1")]
#[case::more_literal_chars(&["ghcr.io/x/a*", "ghcr.io/x/ap*"], "ghcr.io/x/app", None, "r1")]
#[case::tag_pin_beats_untagged(&["ghcr.io/x/app", "ghcr.io/x/app:v1"], "ghcr.io/x/app", Some("v1"), "r1")]
#[case::exact_beats_tag_glob(&["ghcr.io/x/app:v*", "ghcr.io/x/app"], "ghcr.io/x/app", Some("v1"), "r1")]
#[case::tie_goes_to_first_rule(&["ghcr.io/x/*", "ghcr.io/x/*"], "ghcr.io/x/app", None, "r0")]
#[case::tag_pattern_skipped_without_tag(&["ghcr.io/**", "ghcr.io/x/app:v1"], "ghcr.io/x/app", None, "r0")]
fn most_specific_rule_wins(
    #[case] patterns: &[&str],
    #[case] name: &str,
    #[case] tag: Option<&str>,
    #[case] winner: &str,
) {
    let p = allow_rules(patterns);
    assert_eq!(p.match_image(name, tag, None).rule_name(), Some(winner));
}

#[test]
fn digest_pin_beats_everything_and_default_applies_otherwise() {
    let d = digest('d');
    let p = allow_rules(&["ghcr.io/x/app:v1", &format!("ghcr.io/**@{d}")]);
    assert_eq!(
        p.match_image("ghcr.io/x/app", Some("v1"), Some(&d)).rule_name(),
        Some("r1")
    );
    assert_eq!(
        p.match_image("ghcr.io/x/app", Some("v1"), Some(&digest('e')))
            .rule_name(),
        Some("r0")
    );
    assert!(matches!(
        p.match_image("quay.io/x/app", None, None),
        Match::Default(DefaultAction::Deny)
    ));
}

#[test]
fn a_rules_best_pattern_is_its_specificity() {
    // r0's literal pattern beats r1's single wildcard even though r0 also has a broad one.
    let p = parse("rules:\n  - {name: r0, images: ['**', 'ghcr.io/x/app'], allow: true}\n  - {name: r1, images: [ghcr.io/x/*], allow: true}\n").unwrap();
    let Match::Rule { rule, pattern } = p.match_image("ghcr.io/x/app", None, None) else {
        panic!("no match")
    };
    assert_eq!((rule.name.as_str(), pattern.as_str()), ("r0", "ghcr.io/x/app"));
}

#[rstest]
#[case::enforce_allows(Mode::Enforce, Verdict::Allowed, Decision::Allow, true)]
#[case::enforce_blocks(Mode::Enforce, Verdict::Denied, Decision::Deny, false)]
#[case::warn_lets_through(Mode::Warn, Verdict::Denied, Decision::AllowWithWarning, true)]
#[case::warn_allows(Mode::Warn, Verdict::Allowed, Decision::Allow, true)]
#[case::off_skips(Mode::Off, Verdict::Denied, Decision::Unchecked, true)]
fn mode_turns_verdicts_into_decisions(
    #[case] mode: Mode,
    #[case] verdict: Verdict,
    #[case] want: Decision,
    #[case] permits: bool,
) {
    let d = Decision::new(mode, verdict);
    assert_eq!((d, d.permits()), (want, permits));
}

const KEYLESS_HEAD: &str = "rules:\n  - name: a\n    images: [ghcr.io/x/*]\n    authorities:\n      - keyless:\n";

/// Each case: YAML, then fragments of the expected message (field path and reason).
#[rstest]
#[case::unknown_top_field("modes: warn\n", &["policy.yaml: modes: unknown field `modes`"])]
#[case::unknown_mode("mode: strict\n", &["policy.yaml: mode: unknown variant `strict`"])]
#[case::unknown_default("default: maybe\n", &["default: unknown variant `maybe`"])]
#[case::unknown_rule_field("rules:\n  - {name: a, images: [ghcr.io/x], allow: true, allwo: true}\n", &["rules[0].allwo: unknown field `allwo`"])]
#[case::missing_images("rules:\n  - {name: a, allow: true}\n", &["rules[0]: missing field `images`"])]
#[case::empty_images("rules:\n  - {name: a, images: [], allow: true}\n", &["rules[0].images: at least one image pattern"])]
#[case::bad_pattern("rules:\n  - {name: a, images: [ok.io/x, 'quay.io/***'], allow: true}\n", &["rules[0].images[1]: bad image pattern: image pattern \"quay.io/***\" contains `***`"])]
#[case::whitespace_pattern("rules:\n  - {name: a, images: ['quay.io/a b'], allow: true}\n", &["rules[0].images[0]: bad image pattern"])]
#[case::allow_with_authorities("rules:\n  - {name: a, images: [ghcr.io/x], allow: true, authorities: [{keyless: {issuer: i, subject: s}}]}\n", &["rules[0].authorities: an allow rule must not have authorities"])]
#[case::allow_with_tlog("rules:\n  - {name: a, images: [ghcr.io/x], allow: true, transparencyLog: off}\n", &["rules[0].transparencyLog: transparencyLog has no effect"])]
#[case::no_authority("rules:\n  - {name: a, images: [ghcr.io/x]}\n", &["rules[0].authorities: at least one authority"])]
#[case::bad_tlog("rules:\n  - {name: a, images: [ghcr.io/x], transparencyLog: maybe, authorities: [{keyless: {issuer: i, subject: s}}]}\n", &["rules[0].transparencyLog: unknown variant `maybe`"])]
#[case::bad_format("rules:\n  - {name: a, images: [ghcr.io/x], signatureFormats: [cosign-v1], authorities: [{keyless: {issuer: i, subject: s}}]}\n", &["rules[0].signatureFormats[0]: unknown variant `cosign-v1`"])]
#[case::empty_formats("rules:\n  - {name: a, images: [ghcr.io/x], signatureFormats: [], authorities: [{keyless: {issuer: i, subject: s}}]}\n", &["rules[0].signatureFormats: at least one signature format"])]
#[case::bad_name("rules:\n  - {name: 'a b', images: [ghcr.io/x], allow: true}\n", &["rules[0].name: rule name \"a b\""])]
#[case::duplicate_name("rules:\n  - {name: a, images: [ghcr.io/x], allow: true}\n  - {name: a, images: [ghcr.io/y], allow: true}\n", &["rules[1].name: duplicate rule name \"a\" (first defined at /etc/kcache/policy.yaml: rules[0])"])]
#[case::key_and_keyless("rules:\n  - {name: a, images: [ghcr.io/x], authorities: [{key: {path: /k}, keyless: {issuer: i, subject: s}}]}\n", &["rules[0].authorities[0]: set exactly one of `key` and `keyless`"])]
#[case::empty_authority("rules:\n  - {name: a, images: [ghcr.io/x], authorities: [{}]}\n", &["rules[0].authorities[0]: set exactly one"])]
#[case::unknown_authority_field("rules:\n  - {name: a, images: [ghcr.io/x], authorities: [{keyles: {}}]}\n", &["rules[0].authorities[0].keyles: unknown field `keyles`, expected `key` or `keyless`"])]
#[case::unreadable_key("rules:\n  - {name: a, images: [ghcr.io/x], authorities: [{key: {path: /nonexistent/k.pub}}]}\n", &["rules[0].authorities[0].key.path: cannot read key file /nonexistent/k.pub"])]
#[case::unparsable_key(&format!("rules:\n  - {{name: a, images: [ghcr.io/x], authorities: [{{key: {{path: {}}}}}]}}\n", root_path()), &["rules[0].authorities[0].key.path: bad public key in /", "trusted_root.json: not a PEM public key"])]
#[case::no_subject(&format!("{KEYLESS_HEAD}          issuer: https://i.example\n"), &["rules[0].authorities[0].keyless: an identity (subject or subjectRegExp) is required"])]
#[case::no_issuer(&format!("{KEYLESS_HEAD}          subject: me@example.com\n"), &["rules[0].authorities[0].keyless: an issuer (issuer or issuerRegExp) is required"])]
#[case::subject_and_regexp(&format!("{KEYLESS_HEAD}          issuer: https://i.example\n          subject: a\n          subjectRegExp: '^a$'\n"), &["rules[0].authorities[0].keyless: set only one of subject and subjectRegExp"])]
#[case::unanchored_regexp(&format!("{KEYLESS_HEAD}          issuer: https://i.example\n          subjectRegExp: 'https://github\\.com/myorg/.*'\n"), &["rules[0].authorities[0].keyless.subjectRegExp: bad identity matcher: regular expression", "must be anchored"])]
#[case::invalid_regexp(&format!("{KEYLESS_HEAD}          issuerRegExp: '^(https$'\n          subject: s\n"), &["rules[0].authorities[0].keyless.issuerRegExp: bad identity matcher: invalid regular expression"])]
#[case::any_signer_regexp(&format!("{KEYLESS_HEAD}          issuer: https://i.example\n          subjectRegExp: '^.*$'\n"), &["keyless.subjectRegExp: regular expression /^.*$/ accepts any signer"])]
#[case::empty_subject(&format!("{KEYLESS_HEAD}          issuer: https://i.example\n          subject: ''\n"), &["keyless.subject: bad identity matcher: empty identity value"])]
#[case::missing_trusted_root(&format!("{KEYLESS_HEAD}          issuer: i\n          subject: s\n          trustedRoot: /nonexistent/root.json\n"), &["rules[0].authorities[0].keyless.trustedRoot: bad trusted root: cannot read trusted root /nonexistent/root.json"])]
#[case::unparsable_trusted_root(&format!("{KEYLESS_HEAD}          issuer: i\n          subject: s\n          trustedRoot: {}\n", key_path()), &["rules[0].authorities[0].keyless.trustedRoot: bad trusted root: trusted root is not valid JSON"])]
#[case::not_yaml("rules: [\n", &["/etc/kcache/policy.yaml: not valid YAML"])]
#[case::rules_not_a_list("rules: {a: 1}\n", &["policy.yaml: rules: expected a list of rules"])]
fn load_errors_name_file_and_field(#[case] yaml: &str, #[case] expected: &[&str]) {
    let msg = parse(yaml).expect_err("policy should not load").to_string();
    for want in expected {
        assert!(msg.contains(want), "{want:?} not in:\n{msg}");
    }
}

#[test]
fn every_error_in_every_file_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let main = dir.path().join("policy.yaml");
    let d = dir.path().join("policy.d");
    fs::create_dir(&d).unwrap();
    fs::write(&main, "mode: sometimes\nrules:\n  - {name: dup, images: [], allow: true}\n  - {name: ok, images: [ghcr.io/x], allow: true, bogus: 1}\n").unwrap();
    fs::write(
        d.join("10-caches.yaml"),
        "mode: warn\nrules:\n  - name: dup\n    images: [quay.io/gkm/**]\n    authorities:\n      - key: {path: /nonexistent.pub}\n      - keyless: {issuer: https://i.example}\n",
    )
    .unwrap();
    let err = Policy::load(&main, Some(&d)).unwrap_err();
    let msg = err.to_string();
    let frag = d.join("10-caches.yaml").display().to_string();
    let main = main.display().to_string();
    for want in [
        format!("{main}: mode: unknown variant `sometimes`"),
        format!("{main}: rules[0].images: at least one image pattern"),
        format!("{main}: rules[1].bogus: unknown field `bogus`"),
        format!("{frag}: mode: mode can only be set in the main policy file"),
        format!("{frag}: rules[0].name: duplicate rule name \"dup\""),
        format!("{frag}: rules[0].authorities[0].key.path: cannot read key file"),
        format!("{frag}: rules[0].authorities[1].keyless: an identity (subject or subjectRegExp) is required"),
    ] {
        assert!(msg.contains(&want), "{want:?} not in:\n{msg}");
    }
    assert_eq!(err.problems.len(), 7, "{msg}");
}

#[test]
fn unreadable_main_file_is_an_error() {
    let err = Policy::load(Path::new("/nonexistent/policy.yaml"), None).unwrap_err();
    assert!(
        err.to_string()
            .contains("/nonexistent/policy.yaml: cannot read policy file"),
        "{err}"
    );
}

use std::path::Path;

use rstest::rstest;
use serde_json::json;

use super::*;
use crate::policy::{ImagePattern, PolicyError};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures");
const KEYS: &str = "/etc/kcache/crio/keys";

fn key_path() -> String {
    format!("{FIXTURES}/cosign-v2-containers-image/cosign.pub")
}

fn key2_path() -> String {
    format!("{FIXTURES}/cosign-v2-containers-image/cosign2.pub")
}

fn parse(yaml: &str) -> Result<Policy, PolicyError> {
    Policy::from_yaml_str(yaml, Path::new("/etc/kcache/policy.yaml"))
}

fn render(yaml: &str) -> CrioRender {
    render_crio(&parse(yaml).unwrap(), Path::new(KEYS))
}

/// The issues whose message contains `needle`, as (rule, effect).
fn issues<'a>(r: &'a CrioRender, needle: &str) -> Vec<(Option<&'a str>, Effect)> {
    r.report
        .iter()
        .filter(|i| i.message.contains(needle))
        .map(|i| (i.rule.as_deref(), i.effect))
        .collect()
}

fn scope(p: &str) -> Scope {
    scope_of(&ImagePattern::parse(p).unwrap())
}

#[rstest]
#[case("quay.io/gkm/**", "quay.io/gkm")]
#[case("127.0.0.1:5000/**", "127.0.0.1:5000")]
#[case("**", "")]
#[case("quay.io/gkm/app", "quay.io/gkm/app")]
#[case("quay.io/gkm/app:v1", "quay.io/gkm/app:v1")]
#[case("localhost:5000/a/b:v1.2", "localhost:5000/a/b:v1.2")]
#[case(
    "quay.io/gkm/app@sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "quay.io/gkm/app@sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
)]
fn exact_scopes(#[case] pattern: &str, #[case] want: &str) {
    assert_eq!(scope(pattern), Scope::Exact(want.into()));
}

#[rstest]
#[case("quay.io/gkm/*", "quay.io/gkm")]
#[case("quay.io/*", "quay.io")]
#[case("registry.k8s.io/pause:*", "registry.k8s.io/pause")]
fn widened_scopes(#[case] pattern: &str, #[case] want: &str) {
    assert!(matches!(scope(pattern), Scope::Widened(s, _) if s == want), "{pattern}");
}

#[rstest]
#[case("quay.io/gkm/cache-*")]
#[case("quay.io/*/app")]
#[case("quay.io/**/app")]
#[case("quay.io/**/**")]
#[case("*.example.com/app")]
#[case("ghcr.io/x/y:v1.*")]
#[case("quay.io/gkm/*:v1")]
fn unrepresentable_scopes(#[case] pattern: &str) {
    assert!(
        matches!(scope(pattern), Scope::No(_)),
        "{pattern}: {:?}",
        scope(pattern)
    );
}

#[test]
fn repo_of_strips_tag_and_digest_not_port() {
    assert_eq!(repo_of("h:5000/a/b:v1"), "h:5000/a/b");
    assert_eq!(repo_of("h:5000/a/b@sha256:00"), "h:5000/a/b");
    assert_eq!(repo_of("h:5000/a/b"), "h:5000/a/b");
    assert_eq!(repo_of("h:5000"), "h:5000");
    assert_eq!(repo_of(""), "");
}

fn key_and_allow(extra: &str) -> String {
    format!(
        r#"
default: deny
rules:
  - name: apps
    images: ["h.example:5000/apps/**"]
    authorities: [{{key: {{path: "{}"}}}}]
    transparencyLog: off
    signatureFormats: [cosign-v2]
  - name: open
    images: ["h.example:5000/open/**"]
    allow: true
{extra}"#,
        key_path()
    )
}

#[test]
fn key_rule_allow_rule_and_default_deny_render_exactly() {
    let r = render(&key_and_allow(""));
    assert_eq!(
        r.policy_json,
        json!({
            "default": [{"type": "reject"}],
            "transports": {"docker": {
                "h.example:5000/apps": [{
                    "type": "sigstoreSigned",
                    "keyPath": format!("{KEYS}/apps-authority0.pub"),
                    "signedIdentity": {"type": "matchRepository"},
                }],
                "h.example:5000/open": [{"type": "insecureAcceptAnything"}],
            }},
        })
    );
    assert!(r.report.is_empty(), "{:#?}", r.report);
    let yaml: serde_yaml::Value = serde_yaml::from_str(&r.registries_d).unwrap();
    let want: serde_yaml::Value =
        serde_yaml::from_str("docker: {'h.example:5000/apps': {use-sigstore-attachments: true}}").unwrap();
    assert_eq!(yaml, want, "{}", r.registries_d);
    assert_eq!(r.files.len(), 1);
    let key = crate::keys::PublicKey::from_pem(&std::fs::read(key_path()).unwrap()).unwrap();
    assert_eq!(
        r.files[0],
        ("apps-authority0.pub".to_string(), key.to_pem().into_bytes())
    );
}

#[test]
fn default_allow_is_accept_and_unrenderable_signed_rule_is_a_loud_widening() {
    let r = render(&format!(
        r#"
default: allow
rules:
  - name: partial
    images: ["h.example/apps/cache-*"]
    authorities: [{{key: {{path: "{}"}}}}]
    transparencyLog: off
    signatureFormats: [cosign-v2]
"#,
        key_path()
    ));
    assert_eq!(r.policy_json, json!({"default": [{"type": "insecureAcceptAnything"}]}));
    assert_eq!(issues(&r, "ALLOWED UNVERIFIED"), [(Some("partial"), Effect::Wider)]);
}

#[test]
fn unrenderable_pattern_under_default_deny_is_stricter() {
    let r = render(&key_and_allow(
        "  - {name: pause, images: [\"h.example/pause:v3.*\"], allow: true}\n",
    ));
    assert_eq!(issues(&r, "tag glob `v3.*`"), [(Some("pause"), Effect::Stricter)]);
    assert!(r.policy_json["transports"]["docker"].get("h.example/pause").is_none());
}

#[test]
fn warn_renders_as_enforce_and_off_accepts_everything() {
    let warn = render(&format!("mode: warn\n{}", key_and_allow("")));
    let enforce = render(&key_and_allow(""));
    assert_eq!(warn.policy_json, enforce.policy_json);
    assert_eq!(issues(&warn, "mode warn"), [(None, Effect::Stricter)]);
    assert_eq!(
        warn.report[0].source.as_deref(),
        Some(Path::new("/etc/kcache/policy.yaml"))
    );

    let off = render(&format!("mode: off\n{}", key_and_allow("")));
    assert_eq!(
        off.policy_json,
        json!({"default": [{"type": "insecureAcceptAnything"}]})
    );
    assert_eq!(issues(&off, "mode off"), [(None, Effect::Wider)]);
}

#[test]
fn several_keys_render_the_first_and_report_the_rest() {
    let r = render(&format!(
        r#"
rules:
  - name: two
    images: ["h.example/apps/**"]
    authorities: [{{key: {{path: "{}"}}}}, {{key: {{path: "{}"}}}}]
    transparencyLog: off
    signatureFormats: [cosign-v2]
"#,
        key_path(),
        key2_path()
    ));
    let reqs = &r.policy_json["transports"]["docker"]["h.example/apps"];
    assert_eq!(reqs.as_array().unwrap().len(), 1);
    assert_eq!(reqs[0]["keyPath"], format!("{KEYS}/two-authority0.pub"));
    assert_eq!(
        issues(&r, "authorities[1] not rendered"),
        [(Some("two"), Effect::Stricter)]
    );
}

#[test]
fn key_transparency_log_required_optional_and_off() {
    let rule = |tlog: &str| {
        format!(
            "rules:\n  - name: k\n    images: [\"h.example/apps/**\"]\n    authorities: [{{key: {{path: \"{}\"}}}}]\n    signatureFormats: [cosign-v2]\n{tlog}",
            key_path()
        )
    };
    let rekor = format!("{KEYS}/public-good-rekor.pub");
    let required = render(&rule("    transparencyLog: required\n"));
    let req = &required.policy_json["transports"]["docker"]["h.example/apps"][0];
    assert_eq!(req["rekorPublicKeyPath"], rekor);
    assert!(required
        .files
        .iter()
        .any(|(n, b)| n == "public-good-rekor.pub" && b.starts_with(b"-----BEGIN PUBLIC KEY")));
    assert!(
        !required.files.iter().any(|(n, _)| n.contains("fulcio")),
        "a key rule needs no Fulcio CA"
    );
    // The public-good root also trusts the Ed25519 Rekor v2 log, which containers/image cannot use.
    assert_eq!(
        issues(&required, "log2025-1.rekor.sigstore.dev"),
        [(Some("k"), Effect::Stricter)]
    );
    assert!(issues(&required, "transparencyLog optional").is_empty());

    // The key default is optional: rendered as off (the key signature is what matters), reported.
    let optional = render(&rule(""));
    assert!(optional.policy_json["transports"]["docker"]["h.example/apps"][0]
        .get("rekorPublicKeyPath")
        .is_none());
    assert_eq!(
        issues(&optional, "transparencyLog optional"),
        [(Some("k"), Effect::Differs)]
    );
    assert!(optional.files.iter().all(|(n, _)| !n.contains("rekor")));

    let off = render(&rule("    transparencyLog: off\n"));
    assert!(off.policy_json["transports"]["docker"]["h.example/apps"][0]
        .get("rekorPublicKeyPath")
        .is_none());
    assert!(off.report.is_empty(), "{:#?}", off.report);
}

#[test]
fn keyless_email_renders_fulcio_with_open_cas_and_rekor() {
    let r = render(
        r#"
rules:
  - name: mail
    images: ["h.example/apps/**"]
    authorities:
      - keyless: {issuer: "https://accounts.google.com", subject: "dev@example.com"}
    signatureFormats: [cosign-v2]
"#,
    );
    assert_eq!(
        r.policy_json["transports"]["docker"]["h.example/apps"],
        json!([{
            "type": "sigstoreSigned",
            "fulcio": {
                "caPath": format!("{KEYS}/public-good-fulcio.pem"),
                "oidcIssuer": "https://accounts.google.com",
                "subjectEmail": "dev@example.com",
            },
            "rekorPublicKeyPath": format!("{KEYS}/public-good-rekor.pub"),
            "signedIdentity": {"type": "matchRepository"},
        }])
    );
    let (_, pem) = r.files.iter().find(|(n, _)| n == "public-good-fulcio.pem").unwrap();
    let certs = crate::keys::pem_blocks(std::str::from_utf8(pem).unwrap()).unwrap();
    // The open-ended public-good CA (intermediate + root); the 2021–2022 CA has an end date.
    let root = TrustedRoot::public_good();
    let open: Vec<_> = root
        .certificate_authorities
        .iter()
        .filter(|c| c.valid_for.end.is_none())
        .collect();
    assert_eq!(certs.len(), open.iter().map(|c| c.chain.len()).sum::<usize>());
    assert!(!certs.is_empty() && certs.iter().all(|(l, _)| l == "CERTIFICATE"));
    assert_eq!(certs[0].1, open[0].chain[0]);
    assert_eq!(issues(&r, "valid until"), [(Some("mail"), Effect::Stricter)]);
    assert_eq!(issues(&r, "SCT"), [(Some("mail"), Effect::Wider)]);
}

#[rstest]
#[case(r#"{issuer: "https://token.actions.githubusercontent.com", subject: "https://github.com/o/r/.github/workflows/b.yml@refs/heads/main"}"#, "not an e-mail address")]
#[case(
    r#"{issuer: "https://accounts.google.com", subjectRegExp: '^.*@example\.com$'}"#,
    "no regular expressions"
)]
#[case(
    r#"{issuerRegExp: '^https://accounts\.google\.com$', subject: "a@example.com"}"#,
    "no regular expressions"
)]
fn unrepresentable_keyless_renders_reject(#[case] keyless: &str, #[case] why: &str) {
    let r = render(&format!(
        "rules:\n  - name: kl\n    images: [\"h.example/apps/**\"]\n    authorities: [{{keyless: {keyless}}}]\n    signatureFormats: [cosign-v2]\n"
    ));
    assert_eq!(
        r.policy_json["transports"]["docker"]["h.example/apps"],
        json!([{"type": "reject"}])
    );
    assert_eq!(issues(&r, why), [(Some("kl"), Effect::Stricter)]);
    assert_eq!(issues(&r, "no authority"), [(Some("kl"), Effect::Stricter)]);
    // Nothing asks for attachments where nothing is verified.
    assert!(!r.registries_d.contains("h.example/apps"), "{}", r.registries_d);
}

#[test]
fn an_unrepresentable_authority_beside_a_key_is_reported_and_the_key_rendered() {
    let r = render(&format!(
        "rules:\n  - name: mix\n    images: [\"h.example/apps/**\"]\n    authorities:\n      - keyless: {{issuer: \"https://i.example\", subjectRegExp: '^https://x\\.example/.+$'}}\n      - key: {{path: \"{}\"}}\n    transparencyLog: off\n    signatureFormats: [cosign-v2]\n",
        key_path()
    ));
    assert_eq!(
        r.policy_json["transports"]["docker"]["h.example/apps"][0]["keyPath"],
        format!("{KEYS}/mix-authority1.pub")
    );
    assert_eq!(
        issues(&r, "authorities[0] not representable"),
        [(Some("mix"), Effect::Stricter)]
    );
}

#[test]
fn signature_formats() {
    let rule = |formats: &str| {
        format!(
            "rules:\n  - name: f\n    images: [\"h.example/apps/**\"]\n    authorities: [{{key: {{path: \"{}\"}}}}]\n    transparencyLog: off\n    signatureFormats: {formats}\n",
            key_path()
        )
    };
    let v3 = render(&rule("[cosign-v3]"));
    assert_eq!(
        v3.policy_json["transports"]["docker"]["h.example/apps"],
        json!([{"type": "reject"}])
    );
    assert_eq!(issues(&v3, "[cosign-v3] only"), [(Some("f"), Effect::Stricter)]);
    let both = render(&rule("[cosign-v2, cosign-v3]"));
    assert_eq!(
        both.policy_json["transports"]["docker"]["h.example/apps"][0]["type"],
        "sigstoreSigned"
    );
    assert_eq!(issues(&both, "cosign-v3 signatures"), [(Some("f"), Effect::Stricter)]);
}

#[test]
fn single_star_signed_is_widened_and_reported_allow_is_not_rendered() {
    let r = render(&format!(
        "rules:\n  - name: s\n    images: [\"h.example/apps/*\"]\n    authorities: [{{key: {{path: \"{}\"}}}}]\n    transparencyLog: off\n    signatureFormats: [cosign-v2]\n  - name: a\n    images: [\"h.example/open/*\", \"registry.k8s.io/pause:*\"]\n    allow: true\n",
        key_path()
    ));
    let docker = &r.policy_json["transports"]["docker"];
    assert_eq!(docker["h.example/apps"][0]["type"], "sigstoreSigned");
    assert!(docker.get("h.example/open").is_none() && docker.get("registry.k8s.io/pause").is_none());
    assert_eq!(
        issues(&r, "rendered as scope `h.example/apps`"),
        [(Some("s"), Effect::Differs)]
    );
    assert_eq!(
        issues(&r, "`h.example/open/*` not rendered"),
        [(Some("a"), Effect::Stricter)]
    );
    assert_eq!(
        issues(&r, "`registry.k8s.io/pause:*` not rendered"),
        [(Some("a"), Effect::Stricter)]
    );
    // The probes name the concrete images: the namespace itself and a nested repository.
    assert_eq!(
        issues(&r, "image h.example/apps:latest is decided by the default"),
        [(Some("s"), Effect::Differs)]
    );
    assert_eq!(
        issues(
            &r,
            "image h.example/apps/kcache-probe/nested:latest is decided by the default"
        ),
        [(Some("s"), Effect::Differs)]
    );
    assert!(issues(&r, "image h.example/apps/kcache-probe:latest").is_empty());
}

#[test]
fn exact_allow_repository_is_rendered_and_its_nested_repositories_reported_wider() {
    let r = render("rules:\n  - {name: pause, images: [\"registry.k8s.io/pause\"], allow: true}\n");
    assert_eq!(
        r.policy_json["transports"]["docker"]["registry.k8s.io/pause"],
        json!([accept()])
    );
    assert_eq!(
        issues(
            &r,
            "image registry.k8s.io/pause/kcache-probe:latest is decided by the default (deny)"
        ),
        [(Some("pause"), Effect::Wider)]
    );
    assert!(issues(&r, "image registry.k8s.io/pause:latest").is_empty());
}

#[test]
fn precedence_conflict_between_single_star_and_deeper_double_star_is_reported() {
    // kcache: `h.example/ns/*` (no `**`) beats `h.example/ns/x/**` for h.example/ns/x;
    // containers/image: the longer scope h.example/ns/x wins.
    let r = render(&format!(
        "rules:\n  - name: star\n    images: [\"h.example/ns/*\"]\n    authorities: [{{key: {{path: \"{}\"}}}}]\n    transparencyLog: off\n    signatureFormats: [cosign-v2]\n  - {{name: deep, images: [\"h.example/ns/x/**\"], allow: true}}\n",
        key_path()
    ));
    assert_eq!(
        issues(
            &r,
            "image h.example/ns/x:latest is decided by rule \"star\" in kcache, by scope `h.example/ns/x`"
        ),
        [(Some("deep"), Effect::Wider)]
    );
}

#[test]
fn two_rules_on_one_scope_keep_the_stricter_requirements() {
    let r = render(&format!(
        "rules:\n  - name: signed\n    images: [\"h.example/ns/**\"]\n    authorities: [{{key: {{path: \"{}\"}}}}]\n    transparencyLog: off\n    signatureFormats: [cosign-v2]\n  - {{name: open, images: [\"h.example/ns/**:v1\", \"h.example/ns/*\"], allow: true}}\n",
        key_path()
    ));
    // `h.example/ns/*` is an allow widening, so it is not rendered; nothing collides.
    assert_eq!(
        r.policy_json["transports"]["docker"]["h.example/ns"][0]["type"],
        "sigstoreSigned"
    );

    let r = render(&format!(
        "rules:\n  - {{name: open, images: [\"h.example/ns/**\"], allow: true}}\n  - name: signed\n    images: [\"h.example/ns/*\"]\n    authorities: [{{key: {{path: \"{}\"}}}}]\n    transparencyLog: off\n    signatureFormats: [cosign-v2]\n",
        key_path()
    ));
    assert_eq!(
        r.policy_json["transports"]["docker"]["h.example/ns"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        r.policy_json["transports"]["docker"]["h.example/ns"][0]["type"],
        "sigstoreSigned"
    );
    assert_eq!(
        issues(&r, "their allow is dropped"),
        [(Some("signed"), Effect::Stricter)]
    );
    assert!(r.registries_d.contains("h.example/ns"));
}

#[test]
fn catch_all_double_star_is_the_docker_transport_default() {
    let r = render(&format!(
        "default: allow\nrules:\n  - name: all\n    images: [\"**\"]\n    authorities: [{{key: {{path: \"{}\"}}}}]\n    transparencyLog: off\n    signatureFormats: [cosign-v2]\n",
        key_path()
    ));
    assert_eq!(r.policy_json["transports"]["docker"][""][0]["type"], "sigstoreSigned");
    let yaml: serde_yaml::Value = serde_yaml::from_str(&r.registries_d).unwrap();
    assert_eq!(
        yaml["default-docker"]["use-sigstore-attachments"],
        serde_yaml::Value::Bool(true)
    );
    assert!(r.report.is_empty(), "{:#?}", r.report);
}

#[test]
fn issue_lines_name_rule_source_effect_and_reason() {
    let i = Issue {
        rule: Some("apps".into()),
        source: Some("/etc/kcache/policy.d/10-apps.yaml".into()),
        effect: Effect::Wider,
        message: "why".into(),
    };
    assert_eq!(
        i.to_string(),
        "rule \"apps\" (/etc/kcache/policy.d/10-apps.yaml): WIDER: why"
    );
}

#[test]
fn a_custom_trusted_root_is_written_once_for_all_rules_naming_it() {
    let root = format!("{FIXTURES}/trusted-roots/sigstore-python-4.5.1/public-good/trusted_root.json");
    let rule = |name: &str, ns: &str| {
        format!(
            "  - name: {name}\n    images: [\"h.example/{ns}/**\"]\n    authorities:\n      - keyless: {{issuer: \"https://i.example\", subject: \"a@example.com\", trustedRoot: \"{root}\"}}\n    signatureFormats: [cosign-v2]\n"
        )
    };
    let r = render(&format!("rules:\n{}{}", rule("one", "a"), rule("two", "b")));
    let mut names: Vec<&str> = r.files.iter().map(|(n, _)| n.as_str()).collect();
    names.sort();
    assert_eq!(names, ["root0-fulcio.pem", "root0-rekor.pub"]);
    for ns in ["a", "b"] {
        let req = &r.policy_json["transports"]["docker"][format!("h.example/{ns}")][0];
        assert_eq!(req["fulcio"]["caPath"], format!("{KEYS}/root0-fulcio.pem"));
        assert_eq!(req["rekorPublicKeyPath"], format!("{KEYS}/root0-rekor.pub"));
    }
}

#[test]
fn a_digest_pin_applies_to_tag_pulls_in_kcache_but_not_in_containers_image() {
    let d = format!("sha256:{}", "a".repeat(64));
    let r = render(&format!(
        "rules:\n  - {{name: open, images: [\"h.example/ns/**\"], allow: true}}\n  - name: pinned\n    images: [\"h.example/ns/app@{d}\"]\n    authorities: [{{key: {{path: \"{}\"}}}}]\n    transparencyLog: off\n    signatureFormats: [cosign-v2]\n",
        key_path()
    ));
    assert_eq!(
        r.policy_json["transports"]["docker"][format!("h.example/ns/app@{d}")][0]["type"],
        "sigstoreSigned"
    );
    // Pulled by digest both agree; pulled by a tag that resolves to it, containers/image sees only
    // the tag and allows it unsigned.
    assert!(
        issues(&r, &format!("image h.example/ns/app@{d} is")).is_empty(),
        "{:#?}",
        r.report
    );
    assert_eq!(
        issues(
            &r,
            &format!("image h.example/ns/app:latest (resolving to {d}) is decided by rule \"pinned\"")
        ),
        [(Some("open"), Effect::Wider)]
    );
}

//! Real registries as production has them (issue 17), each against real parts on loopback:
//!
//! - TLS: docker-registry 2.8 serving a certificate from a CA the test makes with openssl;
//!   kcache trusts it only through a containerd-style registry host dir (`hosts.toml` `ca`,
//!   `client`, `skip_verify`, or docker-style `*.crt` files); TLS failures name the host and
//!   the cause.
//! - Bearer tokens: docker-registry with `auth: token` trusting a token issuer the test runs
//!   (`kcache_tests::token_issuer`: the registry and the protocol are real, the issuer is a test
//!   server because no real one runs here); anonymous and authenticated pulls, token caching
//!   and expiry, an expired token refreshed once, a 401 loop, a realm on another host.
//! - Blob GETs redirected to separate storage (the registry's `redirect` middleware; the storage
//!   server is a static file server over the registry's own blob files): no credentials reach it.
//! - A mirror (a second docker-registry holding the image and its signatures) named in the
//!   upstream's `hosts.toml`, with the upstream stopped; a mirror serving another digest for
//!   the tag is refused, naming that digest.
//! - The real cosign 3.1 CLI signing through the TLS + token registry.
//!
//! Verification goes through `kcache_core::registry::Client` + `Verifier`, the code the kcache
//! CLI, kcached and kcache-image-verifier share.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use kcache_core::{
    cosign::sign,
    digest::Digest,
    policy::Policy,
    registry::{Client, RegistryConfig, RegistryError},
    signing::PrivateKey,
    verifier::{ImageVerdict, Verifier},
};
use kcache_tests::{
    cosign::{output_text, Cosign},
    http_server::BlobStorage,
    tls::TestPki,
    token_issuer::{Knobs, TokenIssuer, SERVICE},
    TestRegistry,
};

const RULE: &str = "apps";

/// A temp dir with the test PKI, a signing key and a policy trusting it for `<host>/apps/**`.
struct Env {
    dir: tempfile::TempDir,
    pki: TestPki,
    key: PrivateKey,
}

impl Env {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let pki = TestPki::create(&dir.path().join("pki"));
        let key = PrivateKey::generate_p256();
        std::fs::write(dir.path().join("trusted.pub"), key.public_key().to_pem()).unwrap();
        Self { dir, pki, key }
    }

    fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A policy whose one rule, [`RULE`], trusts the key for `<host>/apps/**`; default deny.
    fn policy(&self, host: &str) -> Policy {
        self.policy_formats(host, "[cosign-v2, cosign-v3]")
    }

    /// The key rule for `host`, accepting the signature formats `formats`.
    fn policy_formats(&self, host: &str, formats: &str) -> Policy {
        let p = self
            .dir()
            .join(format!("policy-{}-{}.yaml", host.replace(':', "_"), formats.len()));
        std::fs::write(
            &p,
            format!(
                "mode: enforce\ndefault: deny\nrules:\n  - name: {RULE}\n    images: [\"{host}/apps/**\"]\n    authorities:\n      - key: {{path: {}}}\n    transparencyLog: off\n    signatureFormats: {formats}\n",
                self.dir().join("trusted.pub").display()
            ),
        )
        .unwrap();
        Policy::load(&p, None).unwrap()
    }

    /// Pushes `apps/web:v1` and signs it (`.sig` and bundle) through the harness's client.
    async fn signed_image(&self, reg: &TestRegistry) -> Digest {
        let (d, _) = reg.push_image("apps/web:v1", "web").await;
        sign::sign_and_push(&reg.client(), &self.key, &reg.reference("apps/web:v1"), true)
            .await
            .unwrap();
        d
    }

    /// How a client reaches `reg`: over HTTPS trusting the test CA through a hosts.toml
    /// (the server's top-level `ca = "ca.crt"`), or plain HTTP.
    fn base(&self, reg: &TestRegistry) -> RegistryConfig {
        if !reg.url().starts_with("https://") {
            return RegistryConfig {
                insecure: vec![reg.host()],
                ..RegistryConfig::default()
            };
        }
        let host = reg.host();
        with_hosts(self.hosts_dir(
            "base.d",
            &host,
            Some(&format!("server = \"https://{host}\"\nca = \"ca.crt\"\n")),
            &[("ca.crt", self.pki.ca_cert())],
        ))
    }

    /// A registry host dir `<certs.d>/<dir_name>/` with `hosts_toml` (None: no hosts.toml, the
    /// docker-style layout) and `files` copied in as (name, source).
    fn hosts_dir(&self, certs_d: &str, dir_name: &str, hosts_toml: Option<&str>, files: &[(&str, PathBuf)]) -> PathBuf {
        let root = self.dir().join(certs_d);
        let d = root.join(dir_name);
        std::fs::create_dir_all(&d).unwrap();
        if let Some(t) = hosts_toml {
            std::fs::write(d.join("hosts.toml"), t).unwrap();
        }
        for (name, src) in files {
            std::fs::copy(src, d.join(name)).unwrap();
        }
        root
    }
}

fn client(cfg: RegistryConfig) -> Arc<Client> {
    Arc::new(
        Client::new(RegistryConfig {
            timeout: Duration::from_secs(5),
            ..cfg
        })
        .unwrap(),
    )
}

fn with_hosts(config_path: PathBuf) -> RegistryConfig {
    RegistryConfig {
        config_path: vec![config_path],
        ..RegistryConfig::default()
    }
}

fn auth_file(dir: &Path, name: &str, host: &str, user: &str, password: &str) -> PathBuf {
    use base64::Engine as _;
    let p = dir.join(name);
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    std::fs::write(&p, format!(r#"{{"auths":{{"{host}":{{"auth":"{token}"}}}}}}"#)).unwrap();
    p
}

async fn verify(client: Arc<Client>, policy: &Policy, image: &str) -> ImageVerdict {
    Verifier::new(client).verify(policy, image).await.unwrap()
}

#[track_caller]
fn assert_allowed(v: &ImageVerdict, digest: &Digest) {
    assert!(v.permits() && v.verified, "{}", v.summary());
    assert_eq!(v.digest.as_ref(), Some(digest), "{}", v.summary());
    assert_eq!(v.rule.as_deref(), Some(RULE), "{}", v.summary());
}

/// The error of resolving `image` through `client`, which must fail as unreachable (TLS),
/// naming the registry host and containing one of `causes`.
#[track_caller]
fn assert_tls_error(
    res: Result<kcache_core::registry::Resolved, RegistryError>,
    host: &str,
    causes: &[&str],
) -> String {
    let e = res.expect_err("the TLS handshake must fail");
    let msg = e.to_string();
    let RegistryError::Unreachable { reason, .. } = &e else {
        panic!("want Unreachable for a TLS failure, got {e:?}");
    };
    assert!(reason.contains(host), "the reason names the host {host}: {msg}");
    assert!(
        causes.iter().any(|c| reason.contains(c)),
        "the reason names the TLS cause (one of {causes:?}): {msg}"
    );
    msg
}

// --- TLS ---------------------------------------------------------------------------------------

#[tokio::test]
async fn tls_private_ca_fails_without_it_and_verifies_with_hosts_toml_ca() {
    let env = Env::new();
    let reg = TestRegistry::builder().tls(&env.pki).start();
    let d = env.signed_image(&reg).await;
    let (host, image) = (reg.host(), format!("{}/apps/web:v1", reg.host()));
    let policy = env.policy(&host);

    // No CA configured: the system roots do not know the test CA.
    let c = client(RegistryConfig::default());
    assert_tls_error(
        c.resolve(&reg.reference("apps/web:v1")).await,
        &host,
        &["UnknownIssuer", "certificate"],
    );
    let v = verify(c, &policy, &image).await;
    assert!(!v.permits(), "{}", v.summary());

    // hosts.toml with the CA as the server's (top-level) setting, relative to the host dir.
    let top = env.hosts_dir(
        "certs.d",
        &host,
        Some(&format!("server = \"https://{host}\"\nca = \"ca.crt\"\n")),
        &[("ca.crt", env.pki.ca_cert())],
    );
    assert_allowed(&verify(client(with_hosts(top)), &policy, &image).await, &d);

    // The docker-style layout: no hosts.toml, a `*.crt` CA file in the host dir.
    let docker_d = env.hosts_dir("docker-certs.d", &host, None, &[("test-ca.crt", env.pki.ca_cert())]);
    assert_allowed(&verify(client(with_hosts(docker_d)), &policy, &image).await, &d);
}

/// containerd's documented form (docs/hosts.md): a `[host]` entry for the server's own URL that
/// carries the CA. containerd lists that entry, then the server (without the CA); a lookup the
/// entry answers with 404 (an absent signature tag, the referrers API of a 2.8 registry) must
/// end as "not found", not as the server's TLS failure.
#[tokio::test]
async fn tls_ca_on_a_host_entry_naming_the_server_itself() {
    let env = Env::new();
    let reg = TestRegistry::builder().tls(&env.pki).start();
    let d = env.signed_image(&reg).await;
    let (host, image) = (reg.host(), format!("{}/apps/web:v1", reg.host()));
    let policy = env.policy(&host);
    let entry = env.hosts_dir(
        "entry-certs.d",
        &host,
        Some(&format!(
            "server = \"https://{host}\"\n\n[host.\"https://{host}\"]\n  capabilities = [\"pull\", \"resolve\"]\n  ca = \"ca.crt\"\n"
        )),
        &[("ca.crt", env.pki.ca_cert())],
    );
    let c = client(with_hosts(entry));
    assert_allowed(&verify(c.clone(), &policy, &image).await, &d);
    let (unsigned, _) = reg.push_image("apps/unsigned:v1", "unsigned").await;
    let v = verify(c, &policy, &format!("{host}/apps/unsigned:v1")).await;
    assert!(!v.permits(), "{}", v.summary());
    assert_eq!(v.digest.as_ref(), Some(&unsigned), "{}", v.summary());
    assert!(
        v.reason.contains("no signature found"),
        "an absent signature is absent, not a TLS failure of the next host: {}",
        v.summary()
    );
}

#[tokio::test]
async fn tls_ca_that_did_not_issue_the_certificate_fails_and_skip_verify_passes() {
    let env = Env::new();
    let reg = TestRegistry::builder().tls(&env.pki).start();
    let d = env.signed_image(&reg).await;
    let (host, image) = (reg.host(), format!("{}/apps/web:v1", reg.host()));
    let policy = env.policy(&host);

    let wrong = env.hosts_dir(
        "wrong.d",
        &host,
        Some(&format!("[host.\"https://{host}\"]\n  ca = \"other-ca.crt\"\n")),
        &[("other-ca.crt", env.pki.untrusted_ca_cert())],
    );
    let c = client(with_hosts(wrong));
    assert_tls_error(
        c.resolve(&reg.reference("apps/web:v1")).await,
        &host,
        &["UnknownIssuer", "certificate"],
    );
    assert!(!verify(c, &policy, &image).await.permits());

    // skip_verify, in containerd's `host_port_` directory form.
    let skip = env.hosts_dir(
        "skip.d",
        &format!("127.0.0.1_{}_", reg.port()),
        Some(&format!("server = \"https://{host}\"\nskip_verify = true\n")),
        &[],
    );
    assert_allowed(&verify(client(with_hosts(skip)), &policy, &image).await, &d);
}

#[tokio::test]
async fn tls_client_certificate_required_by_the_registry() {
    let env = Env::new();
    let reg = TestRegistry::builder().require_client_certs(&env.pki).start();
    let d = env.signed_image(&reg).await;
    let (host, image) = (reg.host(), format!("{}/apps/web:v1", reg.host()));
    let policy = env.policy(&host);

    let ca_only = env.hosts_dir(
        "ca-only.d",
        &host,
        Some(&format!("server = \"https://{host}\"\nca = \"ca.crt\"\n")),
        &[("ca.crt", env.pki.ca_cert())],
    );
    let c = client(with_hosts(ca_only));
    let e = c
        .resolve(&reg.reference("apps/web:v1"))
        .await
        .expect_err("no client certificate");
    assert!(
        matches!(&e, RegistryError::Unreachable { reason, .. } if reason.contains(&host)),
        "a clear, host-naming failure without a client certificate: {e:?}"
    );
    assert!(!verify(c, &policy, &image).await.permits());

    let with_client = env.hosts_dir(
        "client.d",
        &host,
        Some(&format!(
            "server = \"https://{host}\"\nca = \"ca.crt\"\nclient = [[\"client.crt\", \"client.key\"]]\n"
        )),
        &[
            ("ca.crt", env.pki.ca_cert()),
            ("client.crt", env.pki.client().cert),
            ("client.key", env.pki.client().key),
        ],
    );
    assert_allowed(&verify(client(with_hosts(with_client)), &policy, &image).await, &d);
}

// --- bearer tokens -----------------------------------------------------------------------------

/// Where the token realm is.
#[derive(Clone, Copy)]
enum Realm {
    /// HTTPS (test CA), with a TLS registry: credentials may go there.
    Https,
    /// Plain HTTP on another host (`localhost`) than the plain-HTTP registry (`127.0.0.1`).
    HttpOtherHost,
}

/// A registry with `auth: token` trusting a fresh issuer whose knobs are open (everyone gets
/// every action) while the signed image is pushed, then set to `knobs`.
async fn token_registry(env: &Env, knobs: Knobs, realm: Realm) -> (TestRegistry, TokenIssuer, Digest) {
    let open = Knobs {
        credentials: None,
        ..Knobs::default()
    };
    let (issuer, reg) = match realm {
        Realm::Https => {
            let issuer = TokenIssuer::start(&env.pki.token_signer(), Some(&env.pki.server()), open);
            let reg = TestRegistry::builder()
                .tls(&env.pki)
                .token_auth(&issuer.realm(), &env.pki.ca_cert())
                .start();
            (issuer, reg)
        }
        Realm::HttpOtherHost => {
            let issuer = TokenIssuer::start(&env.pki.token_signer(), None, open);
            let reg = TestRegistry::builder()
                .token_auth(&issuer.realm_via_localhost(), &env.pki.ca_cert())
                .start();
            (issuer, reg)
        }
    };
    let d = env.signed_image(&reg).await;
    issuer.set(|k| *k = knobs);
    issuer.clear_requests();
    (reg, issuer, d)
}

fn creds_knobs() -> Knobs {
    Knobs {
        credentials: Some(("puller".into(), "s3cret".into())),
        anonymous: vec!["pull".into()],
        ..Knobs::default()
    }
}

#[tokio::test]
async fn token_anonymous_pull_fetches_one_token_per_scope_and_caches_it() {
    let env = Env::new();
    let (reg, issuer, d) = token_registry(&env, creds_knobs(), Realm::Https).await;
    let image = format!("{}/apps/web:v1", reg.host());
    let c = client(env.base(&reg));
    assert_allowed(&verify(c.clone(), &env.policy(&reg.host()), &image).await, &d);

    let reqs = issuer.requests();
    assert_eq!(
        reqs.len(),
        1,
        "one token for one scope across a verification: {reqs:#?}"
    );
    assert_eq!(reqs[0].query_all("scope"), ["repository:apps/web:pull"], "{reqs:#?}");
    assert_eq!(reqs[0].query_all("service"), [SERVICE], "{reqs:#?}");
    assert_eq!(reqs[0].header("authorization"), None, "anonymous: {reqs:#?}");

    // More reads of the same repository reuse the cached token.
    let r = reg.reference("apps/web:v1");
    for _ in 0..3 {
        let m = c.manifest(&r, "v1").await.unwrap();
        assert_eq!(m.digest, d);
    }
    assert_eq!(issuer.count(), 1, "{:#?}", issuer.requests());

    // Another repository is another scope: one more token.
    issuer.set(|k| k.credentials = None);
    reg.push_image("apps/other:v1", "other").await;
    issuer.set(|k| *k = creds_knobs());
    issuer.clear_requests();
    c.resolve(&reg.reference("apps/other:v1")).await.unwrap();
    c.resolve(&reg.reference("apps/other:v1")).await.unwrap();
    let reqs = issuer.requests();
    assert_eq!(reqs.len(), 1, "{reqs:#?}");
    assert_eq!(reqs[0].query_all("scope"), ["repository:apps/other:pull"], "{reqs:#?}");
}

#[tokio::test]
async fn token_with_credentials_from_the_auth_file_and_wrong_ones_are_unauthorized() {
    let env = Env::new();
    let (reg, issuer, d) = token_registry(
        &env,
        Knobs {
            anonymous: vec![],
            ..creds_knobs()
        },
        Realm::Https,
    )
    .await;
    let image = format!("{}/apps/web:v1", reg.host());
    let good = auth_file(env.dir(), "good.json", &reg.host(), "puller", "s3cret");
    let c = client(RegistryConfig {
        auth_file: Some(good),
        ..env.base(&reg)
    });
    assert_allowed(&verify(c, &env.policy(&reg.host()), &image).await, &d);
    let reqs = issuer.requests();
    assert!(!reqs.is_empty());
    for r in &reqs {
        // base64("puller:s3cret")
        assert_eq!(
            r.header("authorization"),
            Some("Basic cHVsbGVyOnMzY3JldA=="),
            "{reqs:#?}"
        );
    }

    // Without credentials the issuer refuses; with wrong ones too: Unauthorized naming the realm.
    for cfg in [
        env.base(&reg),
        RegistryConfig {
            auth_file: Some(auth_file(env.dir(), "bad.json", &reg.host(), "puller", "wrong")),
            ..env.base(&reg)
        },
    ] {
        let e = client(cfg)
            .resolve(&reg.reference("apps/web:v1"))
            .await
            .expect_err("the issuer refuses");
        assert!(matches!(e, RegistryError::Unauthorized { .. }), "{e:?}");
        assert!(e.to_string().contains(&issuer.realm()), "names the realm: {e}");
    }
}

#[tokio::test]
async fn token_is_fetched_again_after_its_expires_in() {
    let env = Env::new();
    let (reg, issuer, d) = token_registry(
        &env,
        Knobs {
            // kcache stops using a token a little before it expires (at most half its life).
            expires_in: Some(4),
            ..creds_knobs()
        },
        Realm::Https,
    )
    .await;
    let c = client(env.base(&reg));
    let r = reg.reference("apps/web:v1");
    assert_eq!(c.resolve(&r).await.unwrap().digest, d);
    assert_eq!(c.resolve(&r).await.unwrap().digest, d);
    assert_eq!(issuer.count(), 1, "cached within expires_in: {:#?}", issuer.requests());
    tokio::time::sleep(Duration::from_millis(4500)).await;
    assert_eq!(c.resolve(&r).await.unwrap().digest, d);
    assert_eq!(
        issuer.count(),
        2,
        "a new token after expires_in: {:#?}",
        issuer.requests()
    );
}

#[tokio::test]
async fn cached_token_the_registry_rejects_is_refreshed_once() {
    let env = Env::new();
    // The registry's trust bundle is a file the test rewrites: the issuer rotates its key.
    let bundle = env.dir().join("token-roots.pem");
    std::fs::copy(env.pki.ca_cert(), &bundle).unwrap();
    let issuer = TokenIssuer::start(&env.pki.token_signer(), Some(&env.pki.server()), Knobs::default());
    let mut reg = TestRegistry::builder()
        .tls(&env.pki)
        .token_auth(&issuer.realm(), &bundle)
        .start();
    let d = env.signed_image(&reg).await;
    issuer.set(|k| *k = creds_knobs());
    issuer.clear_requests();
    let c = client(env.base(&reg));
    let r = reg.reference("apps/web:v1");
    assert_eq!(c.resolve(&r).await.unwrap().digest, d);
    assert_eq!(c.resolve(&r).await.unwrap().digest, d);
    assert_eq!(issuer.count(), 1, "{:#?}", issuer.requests());

    // Key rotation: the registry now trusts only the new key; the cached token (300 s left by
    // its expires_in) is refused with 401, and one new token fixes it.
    issuer.rotate(&env.pki.rotated_token_signer());
    std::fs::copy(env.pki.untrusted_ca_cert(), &bundle).unwrap();
    reg.restart();
    // Let the client's pooled connections to the old process see it go (this test runs on a
    // current-thread runtime: nothing polls them while the registry restarts).
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(c.resolve(&r).await.unwrap().digest, d);
    assert_eq!(issuer.count(), 2, "one refresh after the 401: {:#?}", issuer.requests());
    assert_allowed(
        &verify(c, &env.policy(&reg.host()), &format!("{}/apps/web:v1", reg.host())).await,
        &d,
    );
    assert_eq!(issuer.count(), 2, "the fresh token is reused: {:#?}", issuer.requests());
}

#[tokio::test]
async fn expired_tokens_end_in_unauthorized_after_a_bounded_number_of_requests() {
    let env = Env::new();
    let (reg, issuer, _) = token_registry(
        &env,
        Knobs {
            // `expires_in` says 300 s, but every token's `exp` is ten minutes past.
            expired_tokens: u32::MAX,
            ..creds_knobs()
        },
        Realm::Https,
    )
    .await;
    let c = client(env.base(&reg));
    let e = tokio::time::timeout(Duration::from_secs(10), c.resolve(&reg.reference("apps/web:v1")))
        .await
        .expect("no endless 401 loop")
        .expect_err("expired tokens are refused");
    assert!(matches!(e, RegistryError::Unauthorized { status: 401, .. }), "{e:?}");
    let n = issuer.count();
    assert!((1..=2).contains(&n), "at most one refresh, got {n} token requests");
}

#[tokio::test]
async fn token_granting_nothing_ends_in_unauthorized_after_a_bounded_number_of_requests() {
    let env = Env::new();
    let (reg, issuer, _) = token_registry(
        &env,
        Knobs {
            grant_nothing: true,
            ..creds_knobs()
        },
        Realm::Https,
    )
    .await;
    let c = client(env.base(&reg));
    let e = tokio::time::timeout(Duration::from_secs(10), c.resolve(&reg.reference("apps/web:v1")))
        .await
        .expect("no endless 401 loop")
        .expect_err("nothing granted");
    assert!(matches!(e, RegistryError::Unauthorized { status: 401, .. }), "{e:?}");
    let n = issuer.count();
    assert!((1..=2).contains(&n), "at most one refresh, got {n} token requests");
    let v = verify(c, &env.policy(&reg.host()), &format!("{}/apps/web:v1", reg.host())).await;
    assert!(!v.permits(), "{}", v.summary());
    assert!(v.reason.contains("unauthorized"), "{}", v.summary());
}

#[tokio::test]
async fn token_realm_on_another_host_over_plain_http_gets_no_credentials() {
    let env = Env::new();
    // The registry is 127.0.0.1:PORT; its realm is http://localhost:PORT2/token.
    let (reg, issuer, d) = token_registry(&env, creds_knobs(), Realm::HttpOtherHost).await;
    let creds = auth_file(env.dir(), "auth.json", &reg.host(), "puller", "s3cret");
    let c = client(RegistryConfig {
        auth_file: Some(creds),
        ..env.base(&reg)
    });
    // Anonymous pull still works there.
    assert_allowed(
        &verify(c, &env.policy(&reg.host()), &format!("{}/apps/web:v1", reg.host())).await,
        &d,
    );
    let reqs = issuer.requests();
    assert!(!reqs.is_empty(), "the realm was asked");
    for r in &reqs {
        assert_eq!(
            r.header("authorization"),
            None,
            "credentials went to another host: {reqs:#?}"
        );
    }
}

// --- redirects to blob storage -----------------------------------------------------------------

#[tokio::test]
async fn blob_redirects_to_storage_carry_no_authorization() {
    let env = Env::new();
    let issuer = TokenIssuer::start(&env.pki.token_signer(), Some(&env.pki.server()), Knobs::default());
    let b = TestRegistry::builder()
        .tls(&env.pki)
        .token_auth(&issuer.realm(), &env.pki.ca_cert());
    let storage = BlobStorage::start(&b.storage(), Some(&env.pki.server()));
    let reg = b.redirect_blobs(&storage.base_url()).start();
    let d = env.signed_image(&reg).await;
    issuer.set(|k| {
        *k = Knobs {
            anonymous: vec![],
            ..creds_knobs()
        }
    });
    issuer.clear_requests();

    let creds = auth_file(env.dir(), "auth.json", &reg.host(), "puller", "s3cret");
    let c = client(RegistryConfig {
        auth_file: Some(creds),
        ..env.base(&reg)
    });
    let before = storage.requests().len();
    // The bundle: a `.sig` payload is rebuilt from the image's name and digest, not read.
    assert_allowed(
        &verify(
            c,
            &env.policy_formats(&reg.host(), "[cosign-v3]"),
            &format!("{}/apps/web:v1", reg.host()),
        )
        .await,
        &d,
    );
    let reqs = storage.requests();
    assert!(
        reqs.len() > before,
        "the signature blobs were read from the storage server: {reqs:#?}"
    );
    for r in &reqs {
        assert!(r.path.starts_with("/docker/registry/v2/blobs/sha256/"), "{reqs:#?}");
        assert_eq!(
            r.header("authorization"),
            None,
            "credentials followed the redirect: {reqs:#?}"
        );
    }
    assert!(
        issuer.requests().iter().any(|r| r.header("authorization").is_some()),
        "credentials were in play (sent to the realm): {:#?}",
        issuer.requests()
    );
}

// --- mirrors -----------------------------------------------------------------------------------

#[tokio::test]
async fn mirror_serves_the_image_and_its_signatures_while_upstream_is_down() {
    let env = Env::new();
    let mut upstream = TestRegistry::start();
    let mirror = TestRegistry::start();
    let d = env.signed_image(&upstream).await;
    // The image, its `.sig` and its referrers-tag index, as a pull-through mirror holds them.
    for tag in ["v1".to_string(), format!("{}.sig", d.tag_prefix()), d.tag_prefix()] {
        upstream.copy_to(&mirror, &format!("apps/web:{tag}")).await;
    }
    upstream.stop();

    let (up, mir) = (upstream.host(), mirror.host());
    let certs_d = env.hosts_dir(
        "certs.d",
        &up,
        Some(&format!(
            "server = \"http://{up}\"\n\n[host.\"http://{mir}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
        )),
        &[],
    );
    let c = client(with_hosts(certs_d));
    // The rule names the upstream name; the reference stays the upstream name.
    let policy = env.policy(&up);
    let image = format!("{up}/apps/web:v1");
    let v = verify(c.clone(), &policy, &image).await;
    assert_allowed(&v, &d);
    assert_eq!(v.image, image);

    // The mirror now serves another (unsigned) image for the tag: refused, naming its digest.
    let (other, _) = mirror.push_image("apps/web:v1", "not what upstream has").await;
    assert_ne!(other, d);
    let v = verify(c, &policy, &image).await;
    assert!(!v.permits(), "{}", v.summary());
    assert_eq!(v.digest.as_ref(), Some(&other), "{}", v.summary());
    assert!(v.summary().contains(other.as_str()), "{}", v.summary());
}

#[tokio::test]
async fn mirror_with_token_auth_never_gets_the_upstream_credentials() {
    let env = Env::new();
    let mut upstream = TestRegistry::start();
    let (mirror, issuer, _) = token_registry(&env, creds_knobs(), Realm::Https).await;
    let d = env.signed_image(&upstream).await;
    issuer.set(|k| k.credentials = None);
    for tag in ["v1".to_string(), format!("{}.sig", d.tag_prefix()), d.tag_prefix()] {
        upstream.copy_to(&mirror, &format!("apps/web:{tag}")).await;
    }
    issuer.set(|k| *k = creds_knobs());
    issuer.clear_requests();
    upstream.stop();

    let (up, mir) = (upstream.host(), mirror.host());
    let certs_d = env.hosts_dir(
        "certs.d",
        &up,
        Some(&format!(
            "server = \"http://{up}\"\n\n[host.\"https://{mir}\"]\n  capabilities = [\"pull\", \"resolve\"]\n  ca = \"ca.crt\"\n"
        )),
        &[("ca.crt", env.pki.ca_cert())],
    );
    // Credentials for the upstream only: the mirror (and its realm) must not see them.
    let creds = auth_file(env.dir(), "auth.json", &up, "upstream-user", "upstream-secret");
    let c = client(RegistryConfig {
        config_path: vec![certs_d],
        auth_file: Some(creds),
        ..RegistryConfig::default()
    });
    assert_allowed(&verify(c, &env.policy(&up), &format!("{up}/apps/web:v1")).await, &d);
    let reqs = issuer.requests();
    assert!(!reqs.is_empty(), "the mirror asked for a token");
    for r in &reqs {
        assert_eq!(
            r.header("authorization"),
            None,
            "the upstream's credentials went to the mirror's realm: {reqs:#?}"
        );
    }
}

// --- the cosign CLI through TLS and tokens ---------------------------------------------------

#[tokio::test]
async fn cosign_3_1_signs_through_the_tls_token_registry_and_kcache_verifies() {
    let Some(cosign) = Cosign::v3_1("cosign_3_1_signs_through_the_tls_token_registry") else {
        return;
    };
    let env = Env::new();
    let issuer = TokenIssuer::start(&env.pki.token_signer(), Some(&env.pki.server()), Knobs::default());
    let reg = TestRegistry::builder()
        .tls(&env.pki)
        .token_auth(&issuer.realm(), &env.pki.ca_cert())
        .start();
    let (d, _) = reg.push_image("apps/web:v1", "web").await;
    // From now on pushing needs credentials: cosign's come from DOCKER_CONFIG.
    issuer.set(|k| *k = creds_knobs());
    issuer.clear_requests();

    let docker_config = env.dir().join("docker");
    std::fs::create_dir_all(&docker_config).unwrap();
    auth_file(&docker_config, "config.json", &reg.host(), "puller", "s3cret");
    let cosign = cosign
        .with_env("SSL_CERT_FILE", env.pki.ca_cert())
        .with_env("DOCKER_CONFIG", docker_config);
    let (key, public) = cosign.generate_key_pair(env.dir(), "k");
    let image = format!("{}/apps/web@{d}", reg.host());
    let out = cosign.sign(env.dir(), &key, &image, &[]);
    assert!(
        out.status.success(),
        "cosign sign over HTTPS + token:\n{}",
        output_text(&out)
    );
    assert!(
        issuer
            .requests()
            .iter()
            .any(|r| r.query_all("scope").iter().any(|s| s.contains("push")) && r.header("authorization").is_some()),
        "cosign pushed with a token it got with credentials: {:#?}",
        issuer.requests()
    );

    let policy_path = env.dir().join("cosign-policy.yaml");
    std::fs::write(
        &policy_path,
        format!(
            "mode: enforce\ndefault: deny\nrules:\n  - name: {RULE}\n    images: [\"{}/apps/**\"]\n    authorities:\n      - key: {{path: {}}}\n    transparencyLog: off\n",
            reg.host(),
            public.display()
        ),
    )
    .unwrap();
    let policy = Policy::load(&policy_path, None).unwrap();
    let v = verify(client(env.base(&reg)), &policy, &format!("{}/apps/web:v1", reg.host())).await;
    assert_allowed(&v, &d);
}

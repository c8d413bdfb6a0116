//! A token issuer for the Docker registry token protocol, run by the test.
//!
//! The registry (docker-registry 2.8 with `auth: token`) and the protocol (WWW-Authenticate
//! Bearer challenge, `GET <realm>?service=...&scope=...`, a JWT the registry verifies) are the
//! real ones; the issuer is a small test server because no real one (docker's auth server,
//! Harbor core, a cloud registry's token endpoint) runs on this machine. It signs ES256 JWTs
//! with a key whose certificate the test CA issued (sent in the `x5c` header; the registry's
//! `rootcertbundle` holds the CA), with the claims distribution 2.8 checks: `iss`, `sub`, `aud`
//! (a string: 2.8 takes no array), `exp`, `nbf`, `iat`, `jti` and `access`.
//!
//! Knobs (changeable while it runs): the credentials it demands, what an anonymous caller gets,
//! the `expires_in` it sends and the lifetime it signs, already-expired tokens, granting
//! nothing (for a 401 loop), and a rotated signing key. Every request is recorded with its Authorization header and query.

use std::{
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use base64::Engine as _;
use p256::{
    ecdsa::{signature::Signer, Signature, SigningKey},
    pkcs8::DecodePrivateKey,
};
use serde_json::{json, Value};

use crate::{
    http_server::{HttpServer, Request, Response},
    tls::CertPair,
};

/// The `service` the registry names in its challenge and the issuer puts in `aud`.
pub const SERVICE: &str = "kcache-test-registry";
/// The `iss` claim the registry trusts.
pub const ISSUER: &str = "kcache-test-issuer";

/// What the issuer does; change it with [`TokenIssuer::set`].
#[derive(Debug, Clone)]
pub struct Knobs {
    /// Basic credentials that get every action asked for; wrong ones get 401. None: everyone
    /// gets every action asked for.
    pub credentials: Option<(String, String)>,
    /// The actions a caller without credentials gets when `credentials` is set (`["pull"]`:
    /// anonymous pull); empty: such a caller gets 401.
    pub anonymous: Vec<String>,
    /// The `expires_in` sent (None: left out, the client assumes 60 s).
    pub expires_in: Option<u64>,
    /// How long the signed token is valid (`exp - iat`).
    pub lifetime: Duration,
    /// How many of the next tokens are issued already expired (`exp` ten minutes ago, past
    /// the registry's leeway) while `expires_in` says they are fresh.
    pub expired_tokens: u32,
    /// Sign tokens granting no access at all (the registry answers 401 to every use).
    pub grant_nothing: bool,
}

impl Default for Knobs {
    fn default() -> Self {
        Self {
            credentials: None,
            anonymous: vec!["pull".into()],
            expires_in: Some(300),
            lifetime: Duration::from_secs(300),
            expired_tokens: 0,
            grant_nothing: false,
        }
    }
}

struct TokenSigner {
    key: SigningKey,
    x5c: String,
}

/// A running issuer; stops on drop.
pub struct TokenIssuer {
    server: HttpServer,
    knobs: Arc<Mutex<Knobs>>,
    signer: Arc<Mutex<TokenSigner>>,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn basic_credentials(req: &Request) -> Option<(String, String)> {
    let h = req.header("authorization")?;
    let b64 = h.strip_prefix("Basic ").or_else(|| h.strip_prefix("basic "))?;
    let dec = base64::engine::general_purpose::STANDARD.decode(b64.trim()).ok()?;
    let s = String::from_utf8(dec).ok()?;
    let (u, p) = s.split_once(':')?;
    Some((u.to_string(), p.to_string()))
}

/// `repository:NAME:a,b` -> its access entry, keeping only the actions in `allowed` (None: all).
fn access_entry(scope: &str, allowed: Option<&[String]>) -> Option<Value> {
    let mut parts = scope.splitn(3, ':');
    let (kind, rest) = (parts.next()?, parts.collect::<Vec<_>>());
    // A name may hold a port (`host:5000/x`), so the actions are after the last colon.
    let joined = rest.join(":");
    let (name, actions) = joined.rsplit_once(':')?;
    let actions: Vec<&str> = actions
        .split(',')
        .filter(|a| allowed.is_none_or(|ok| ok.iter().any(|x| x == a)))
        .collect();
    Some(json!({"type": kind, "name": name, "actions": actions}))
}

impl TokenSigner {
    fn load(pair: &CertPair) -> Self {
        let key_pem = std::fs::read_to_string(&pair.key).expect("read token signing key");
        let key = SigningKey::from_pkcs8_pem(&key_pem).expect("token signing key is PKCS#8 P-256");
        let cert_pem = std::fs::read_to_string(&pair.cert).expect("read token signing certificate");
        let x5c = base64::engine::general_purpose::STANDARD.encode(crate::tls::pem_to_der(&cert_pem, "CERTIFICATE"));
        Self { key, x5c }
    }

    fn token(&self, sub: &str, access: Vec<Value>, knobs: &mut Knobs) -> String {
        let iat = now();
        let exp = if knobs.expired_tokens > 0 {
            knobs.expired_tokens -= 1;
            iat - 600
        } else {
            iat + knobs.lifetime.as_secs()
        };
        let nbf = iat.min(exp) - 1;
        static JTI: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let jti = JTI.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let header = json!({"typ": "JWT", "alg": "ES256", "x5c": [self.x5c]});
        let claims = json!({
            "iss": ISSUER,
            "sub": sub,
            "aud": SERVICE,
            "exp": exp,
            "nbf": nbf,
            "iat": iat,
            "jti": format!("kcache-test-{iat}-{jti}"),
            "access": access,
        });
        let signing_input = format!(
            "{}.{}",
            b64url(header.to_string().as_bytes()),
            b64url(claims.to_string().as_bytes())
        );
        // JOSE ES256: the raw r || s, 64 bytes.
        let sig: Signature = self.key.sign(signing_input.as_bytes());
        format!("{signing_input}.{}", b64url(&sig.to_bytes()))
    }
}

impl TokenIssuer {
    /// Starts an issuer signing with `signer` (issued by the CA in the registry's
    /// rootcertbundle), at `/token`; with `tls` (certificate, key) over HTTPS.
    pub fn start(signer: &CertPair, tls: Option<&CertPair>, knobs: Knobs) -> Self {
        let signer = Arc::new(Mutex::new(TokenSigner::load(signer)));
        let knobs = Arc::new(Mutex::new(knobs));
        let (k, sign) = (knobs.clone(), signer.clone());
        let server = HttpServer::start(tls.map(|t| (t.cert.as_path(), t.key.as_path())), move |req| {
            if req.path != "/token" {
                return Response::json(404, &json!({"error": "not found"}));
            }
            let mut knobs = k.lock().expect("knobs");
            let scopes = req.query_all("scope");
            let (sub, allowed): (String, Option<Vec<String>>) = match (&knobs.credentials, basic_credentials(req)) {
                (None, creds) => (creds.map(|c| c.0).unwrap_or_default(), None),
                (Some(want), Some(got)) if *want == got => (got.0, None),
                (Some(_), Some(_)) => {
                    return Response::json(401, &json!({"details": "incorrect username or password"}))
                }
                (Some(_), None) if knobs.anonymous.is_empty() => {
                    return Response::json(401, &json!({"details": "authentication required"}))
                }
                (Some(_), None) => (String::new(), Some(knobs.anonymous.clone())),
            };
            let access = if knobs.grant_nothing {
                Vec::new()
            } else {
                scopes
                    .iter()
                    .filter_map(|s| access_entry(s, allowed.as_deref()))
                    .collect()
            };
            let token = sign.lock().expect("signer").token(&sub, access, &mut knobs);
            let mut body = json!({"token": token, "access_token": token, "issued_at": "2026-01-01T00:00:00Z"});
            if let Some(e) = knobs.expires_in {
                body["expires_in"] = json!(e);
            }
            Response::json(200, &body)
        });
        Self { server, knobs, signer }
    }

    /// Signs from now on with `signer` (a key rotation).
    pub fn rotate(&self, signer: &CertPair) {
        *self.signer.lock().expect("signer") = TokenSigner::load(signer);
    }

    /// Changes the knobs.
    pub fn set(&self, f: impl FnOnce(&mut Knobs)) {
        f(&mut self.knobs.lock().expect("knobs"));
    }

    /// `http(s)://127.0.0.1:PORT/token`: the realm the registry is configured with.
    pub fn realm(&self) -> String {
        format!("{}/token", self.server.url())
    }

    /// The same realm named `localhost` (another host than a registry at 127.0.0.1).
    pub fn realm_via_localhost(&self) -> String {
        self.realm().replace("127.0.0.1", "localhost")
    }

    /// Every request so far (token requests are those at `/token`).
    pub fn requests(&self) -> Vec<Request> {
        self.server.requests()
    }

    /// How many token requests it answered so far.
    pub fn count(&self) -> usize {
        self.requests().iter().filter(|r| r.path == "/token").count()
    }

    /// Forgets the requests so far.
    pub fn clear_requests(&self) {
        self.server.clear_requests();
    }

    /// The registry's `auth: token` section trusting this issuer, with `realm` (one of
    /// [`Self::realm`], [`Self::realm_via_localhost`]) and the CA bundle at `root_bundle`.
    pub fn registry_auth_yaml(realm: &str, root_bundle: &Path) -> String {
        format!(
            "auth:\n  token:\n    realm: {realm}\n    service: {SERVICE}\n    issuer: {ISSUER}\n    rootcertbundle: {}\n",
            root_bundle.display()
        )
    }
}

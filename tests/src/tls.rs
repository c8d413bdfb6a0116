//! A test PKI made on the spot with the `openssl` CLI (scripts/deps.sh installs it), all files
//! in the test's temp dir: a CA, a server certificate for `127.0.0.1`/`localhost` (SAN IP and
//! DNS), a client certificate and a token-signing certificate issued by that CA, and a second,
//! "untrusted" CA that issued nothing a server here presents (only a rotated token-signing
//! certificate).
//!
//! Keys are P-256, written as unencrypted PKCS#8 PEM (`BEGIN PRIVATE KEY`).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

/// The files of one test PKI.
pub struct TestPki {
    dir: PathBuf,
}

/// A certificate and its key.
#[derive(Debug, Clone)]
pub struct CertPair {
    /// PEM certificate.
    pub cert: PathBuf,
    /// PEM PKCS#8 key.
    pub key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run openssl (run `make deps`: scripts/deps.sh installs it): {e}"));
    assert!(
        out.status.success(),
        "openssl {} failed:\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl TestPki {
    /// Makes every file under `dir` (created if missing).
    pub fn create(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).expect("pki dir");
        let pki = Self { dir: dir.to_owned() };
        pki.make_ca("ca", "kcache test CA");
        pki.make_ca("untrusted-ca", "kcache untrusted test CA");
        pki.issue(
            "ca",
            "server",
            "127.0.0.1",
            "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n",
        );
        pki.issue("ca", "client", "kcache test client", "extendedKeyUsage=clientAuth\n");
        // The token issuer's signing certificate: docker distribution checks the x5c chain
        // against its rootcertbundle with any extended key usage.
        pki.issue("ca", "token-signer", "kcache test token issuer", "");
        // A rotated token-signing key, under the other CA (a registry trusting only that CA
        // refuses tokens from the first).
        pki.issue(
            "untrusted-ca",
            "token-signer-2",
            "kcache test token issuer (rotated)",
            "",
        );
        pki
    }

    fn make_ca(&self, name: &str, cn: &str) {
        openssl(
            &self.dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.crt"),
                "-days",
                "2",
                "-subj",
                &format!("/CN={cn}"),
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
    }

    fn issue(&self, ca: &str, name: &str, cn: &str, extensions: &str) {
        openssl(
            &self.dir,
            &[
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                &format!("/CN={cn}"),
            ],
        );
        std::fs::write(
            self.dir.join(format!("{name}.ext")),
            format!("basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n{extensions}"),
        )
        .expect("extensions file");
        openssl(
            &self.dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                &format!("{ca}.crt"),
                "-CAkey",
                &format!("{ca}.key"),
                "-CAserial",
                &format!("{ca}.srl"),
                "-CAcreateserial",
                "-days",
                "2",
                "-out",
                &format!("{name}.crt"),
                "-extfile",
                &format!("{name}.ext"),
            ],
        );
    }

    /// The directory holding every file.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The CA certificate that issued the server, client and token-signing certificates.
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// A CA certificate that issued nothing a server here presents.
    pub fn untrusted_ca_cert(&self) -> PathBuf {
        self.dir.join("untrusted-ca.crt")
    }

    /// The server certificate (SAN IP 127.0.0.1, DNS localhost).
    pub fn server(&self) -> CertPair {
        self.pair("server")
    }

    /// A client certificate (extended key usage clientAuth) issued by the CA.
    pub fn client(&self) -> CertPair {
        self.pair("client")
    }

    /// The token issuer's signing certificate and key.
    pub fn token_signer(&self) -> CertPair {
        self.pair("token-signer")
    }

    /// A second token-signing certificate, issued by the untrusted CA (a key rotation).
    pub fn rotated_token_signer(&self) -> CertPair {
        self.pair("token-signer-2")
    }

    fn pair(&self, name: &str) -> CertPair {
        CertPair {
            cert: self.dir.join(format!("{name}.crt")),
            key: self.dir.join(format!("{name}.key")),
        }
    }
}

/// The DER bytes of the first PEM block labelled `label` in `pem`.
pub fn pem_to_der(pem: &str, label: &str) -> Vec<u8> {
    use base64::Engine as _;
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = pem.find(&begin).unwrap_or_else(|| panic!("no {label} PEM block")) + begin.len();
    let stop = start
        + pem[start..]
            .find(&end)
            .unwrap_or_else(|| panic!("unterminated {label} PEM block"));
    let b64: String = pem[start..stop].split_whitespace().collect();
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("PEM body is base64")
}

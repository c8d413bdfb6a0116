use std::os::unix::fs::PermissionsExt as _;

use sha2::Sha384;

use super::*;
use crate::keys::HashAlgorithm;

/// An input and the error it must give.
type Case = (String, fn(&SigningError) -> bool);

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/cosign-keys");

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{DATA}/{name}")).unwrap()
}

fn rsa_2048() -> PrivateKey {
    PrivateKey::Rsa(rsa::RsaPrivateKey::new(&mut OsRng, 2048).unwrap())
}

#[test]
fn signatures_from_every_algorithm_verify_with_the_public_key_and_not_another() {
    let keys = [
        PrivateKey::generate_p256(),
        PrivateKey::generate_p384(),
        PrivateKey::generate_ed25519(),
        rsa_2048(),
    ];
    for key in &keys {
        let public = key.public_key();
        let sig = key.sign(b"payload");
        public.verify(b"payload", &sig).unwrap();
        assert!(
            matches!(public.verify(b"payloaD", &sig), Err(KeyError::BadSignature { .. })),
            "{key:?}"
        );
        let other = match key {
            PrivateKey::P256(_) => PrivateKey::generate_p256(),
            PrivateKey::P384(_) => PrivateKey::generate_p384(),
            PrivateKey::Ed25519(_) => PrivateKey::generate_ed25519(),
            PrivateKey::Rsa(_) => continue,
        };
        assert!(other.public_key().verify(b"payload", &sig).is_err());
    }
}

#[test]
fn ecdsa_signatures_are_der_over_sha256_as_cosign_key_verification_expects() {
    let p256 = PrivateKey::generate_p256();
    let sig = p256.sign(b"msg");
    assert_eq!(sig[0], 0x30, "ASN.1 DER SEQUENCE");
    p256.public_key()
        .verify_digest(HashAlgorithm::Sha256, &Sha256::digest(b"msg"), &sig)
        .unwrap();

    // P-384 too: cosign 2.5 and 3.1 verify `--key` signatures with SHA-256 whatever the curve
    // (cosign 3.1 even fails its own SHA-384 P-384 bundles; tests/tests/cosign_interop.rs).
    let p384 = PrivateKey::generate_p384();
    let sig = p384.sign(b"msg");
    assert_eq!(sig[0], 0x30);
    p384.public_key()
        .verify_digest(HashAlgorithm::Sha256, &Sha256::digest(b"msg"), &sig)
        .unwrap();
    assert!(p384
        .public_key()
        .verify_digest(HashAlgorithm::Sha384, &Sha384::digest(b"msg"), &sig)
        .is_err());

    let rsa = rsa_2048();
    rsa.public_key()
        .verify_digest(HashAlgorithm::Sha256, &Sha256::digest(b"msg"), &rsa.sign(b"msg"))
        .unwrap();
}

#[test]
fn ed25519_signatures_are_pure_and_refuse_digest_verification() {
    let key = PrivateKey::generate_ed25519();
    let sig = key.sign(b"msg");
    assert_eq!(sig.len(), 64);
    assert!(matches!(
        key.public_key().verify_digest(HashAlgorithm::Sha256, &[0; 32], &sig),
        Err(KeyError::PrehashUnsupported)
    ));
}

#[test]
fn encrypted_pem_round_trips_for_every_algorithm_and_wrong_password_is_named() {
    for key in [
        PrivateKey::generate_p256(),
        PrivateKey::generate_p384(),
        PrivateKey::generate_ed25519(),
    ] {
        let pem = key.to_encrypted_pem(b"correct horse").unwrap();
        assert!(pem.starts_with("-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\n"));
        let back = PrivateKey::from_pem(pem.as_bytes(), b"correct horse").unwrap();
        assert_eq!(back.public_key(), key.public_key());
        back.public_key().verify(b"m", &back.sign(b"m")).unwrap();
        let err = PrivateKey::from_pem(pem.as_bytes(), b"wrong").unwrap_err();
        assert!(matches!(err, SigningError::WrongPassword), "{err}");
    }
}

#[test]
fn empty_password_is_allowed_as_in_cosign() {
    let key = PrivateKey::generate_p256();
    let pem = key.to_encrypted_pem(b"").unwrap();
    assert_eq!(
        PrivateKey::from_pem(pem.as_bytes(), b"").unwrap().public_key(),
        key.public_key()
    );
    assert!(matches!(
        PrivateKey::from_pem(pem.as_bytes(), b" "),
        Err(SigningError::WrongPassword)
    ));
}

#[test]
fn tampered_encrypted_pem_is_refused_without_panic() {
    let pem = PrivateKey::generate_p256().to_encrypted_pem(b"pw").unwrap();
    let (_, der) = pem_decode(&pem).unwrap();
    let mut env: serde_json::Value = serde_json::from_slice(&der).unwrap();
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut ct = b64.decode(env["ciphertext"].as_str().unwrap()).unwrap();
    let last = ct.len() - 1;
    ct[last] ^= 0x80;
    env["ciphertext"] = b64.encode(ct).into();
    let tampered = pem_encode(SIGSTORE_PRIVATE_KEY_LABEL, &serde_json::to_vec(&env).unwrap());
    assert!(matches!(
        PrivateKey::from_pem(tampered.as_bytes(), b"pw"),
        Err(SigningError::WrongPassword)
    ));
}

#[test]
fn ed25519_pkcs8_is_v1_without_public_key_like_go() {
    let key = PrivateKey::generate_ed25519();
    let der = key.to_pkcs8_der().unwrap();
    // Go's x509.MarshalPKCS8PrivateKey: 48 bytes, version 0, OCTET STRING { OCTET STRING seed }.
    assert_eq!(der.as_bytes().len(), 48);
    assert_eq!(
        &der.as_bytes()[..16],
        &[0x30, 0x2e, 2, 1, 0, 0x30, 5, 6, 3, 0x2b, 0x65, 0x70, 4, 0x22, 4, 0x20]
    );
}

#[test]
fn unencrypted_pkcs8_sec1_and_pkcs1_keys_load_and_ignore_the_password() {
    // cosign pkg/cosign/keys_test.go `validecp256` (SEC1) and `ed25519key` (PKCS#8).
    let sec1 = "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIIGhcmCI5F7BPMH4r3pWCpQdAsveErdU5DjvVQerErJuoAoGCCqGSM49\nAwEHoUQDQgAE+9E3Qe+h25ofmz3Uo2T004Dfy49iX06MMbxf9rsGmLkOPrS0KYDl\n1QMfFuSbrtf8wTWNT9HNxrW/Foz39mDhHw==\n-----END EC PRIVATE KEY-----\n";
    assert!(matches!(
        PrivateKey::from_pem(sec1.as_bytes(), b"x").unwrap(),
        PrivateKey::P256(_)
    ));
    let ed = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIALEbo1EFnWFqBK/wC+hhypG/8hXEerwdNetAoFoFVdv\n-----END PRIVATE KEY-----\n";
    assert!(matches!(
        PrivateKey::from_pem(ed.as_bytes(), b"").unwrap(),
        PrivateKey::Ed25519(_)
    ));

    let p384 = PrivateKey::generate_p384();
    let PrivateKey::P384(k) = &p384 else { unreachable!() };
    let sec1 = pem_encode("EC PRIVATE KEY", &p384::SecretKey::from(k).to_sec1_der().unwrap());
    assert_eq!(
        PrivateKey::from_pem(sec1.as_bytes(), b"").unwrap().public_key(),
        p384.public_key()
    );
    let pkcs8 = pem_encode("PRIVATE KEY", p384.to_pkcs8_der().unwrap().as_bytes());
    assert_eq!(
        PrivateKey::from_pem(pkcs8.as_bytes(), b"").unwrap().public_key(),
        p384.public_key()
    );

    let rsa = rsa_2048();
    let PrivateKey::Rsa(k) = &rsa else { unreachable!() };
    use rsa::pkcs1::EncodeRsaPrivateKey;
    let pkcs1 = pem_encode("RSA PRIVATE KEY", k.to_pkcs1_der().unwrap().as_bytes());
    assert_eq!(
        PrivateKey::from_pem(pkcs1.as_bytes(), b"").unwrap().public_key(),
        rsa.public_key()
    );
}

#[test]
fn junk_and_unsupported_keys_are_clear_errors_never_panics() {
    let cases: Vec<Case> = vec![
        ("hello".into(), |e| matches!(e, SigningError::Pem(_))),
        (pem_encode("CERTIFICATE", b"\x30\x00"), |e| matches!(e, SigningError::UnsupportedLabel(_))),
        (pem_encode("ENCRYPTED PRIVATE KEY", b"\x30\x00"), |e| matches!(e, SigningError::UnsupportedLabel(_))),
        (pem_encode(SIGSTORE_PRIVATE_KEY_LABEL, b"not a key"), |e| matches!(e, SigningError::Envelope(_))),
        (pem_encode(COSIGN_PRIVATE_KEY_LABEL, b"{}"), |e| matches!(e, SigningError::Envelope(_))),
        (pem_encode("PRIVATE KEY", b"\x30\x03\x02\x01\x00"), |e| matches!(e, SigningError::MalformedKey { .. })),
        (pem_encode("EC PRIVATE KEY", &[0x30; 40]), |e| matches!(e, SigningError::MalformedKey { format: "SEC1", .. })),
        (pem_encode("RSA PRIVATE KEY", b"junk"), |e| matches!(e, SigningError::MalformedKey { format: "PKCS#1", .. })),
        // cosign keys_test.go `validecp521`: a real key on a curve we do not sign with.
        ("-----BEGIN EC PRIVATE KEY-----\nMIHcAgEBBEIA3JhHw1bhJyNnK80SPnvuIY9h++IaEhZcHR7SDHzMnFf72O5fF/RI\nc+Dbd9lTfrP3Oy9BOC1opvXHvr5tqzV0MregBwYFK4EEACOhgYkDgYYABAALA20e\nWqTf2chokKaCmxfnhs1lW70/J8slBzKBG6x3OjJX+yrpkDqe8zpkN08E+RZA8RSE\n9TqbcXVHGtR6tj0IMgEFmybW+efJr4nz/iBvchGeIg1HtOX5V97z0bmwsCgQCD8L\n4cNcYkeNJazrzzXte5Y5DK4Vm8QE4Jkux6FCw19QhQ==\n-----END EC PRIVATE KEY-----\n".into(),
            |e| matches!(e, SigningError::MalformedKey { format: "SEC1", .. })),
    ];
    for (pem, want) in cases {
        let err = PrivateKey::from_pem(pem.as_bytes(), b"pw").unwrap_err();
        assert!(want(&err), "{pem}: {err:?}");
    }
    assert!(matches!(
        PrivateKey::from_pem(&[0xff, 0xfe], b""),
        Err(SigningError::Pem(_))
    ));
}

#[test]
fn rsa_keys_below_2048_bits_are_refused() {
    let small = rsa::RsaPrivateKey::new(&mut OsRng, 1024).unwrap();
    let der = small.to_pkcs8_der().unwrap();
    assert!(matches!(
        PrivateKey::from_pkcs8_der(der.as_bytes()),
        Err(SigningError::RsaKeySize(1024))
    ));
}

/// cosign's own test keys (pkg/cosign/keys_test.go), password "hello"; see tests/data/README.md.
#[test]
fn cosign_made_encrypted_keys_decrypt_with_their_password() {
    for (name, label) in [
        ("cosign-keys-test-sigstore-hello.key", "SIGSTORE"),
        ("cosign-keys-test-rsa-hello.key", "COSIGN"),
    ] {
        let pem = fixture(name);
        assert!(String::from_utf8_lossy(&pem).contains(label));
        let key = PrivateKey::from_pem(&pem, b"hello").unwrap_or_else(|e| panic!("{name}: {e:?}"));
        key.public_key().verify(b"m", &key.sign(b"m")).unwrap();
        assert!(
            matches!(PrivateKey::from_pem(&pem, b"hellO"), Err(SigningError::WrongPassword)),
            "{name}"
        );
    }
}

/// cosign's `pemcosigneckey` holds SEC1 inside the envelope; cosign's LoadPrivateKey refuses it
/// ("use ParseECPrivateKey instead"), and so do we, after decrypting it (N=65536) successfully.
#[test]
fn cosign_envelope_around_sec1_decrypts_but_is_refused_like_cosign() {
    let pem = fixture("cosign-keys-test-sec1-hello.key");
    let err = PrivateKey::from_pem(&pem, b"hello").unwrap_err();
    assert!(
        matches!(err, SigningError::MalformedKey { format: "PKCS#8", .. }),
        "{err:?}"
    );
    assert!(matches!(
        PrivateKey::from_pem(&pem, b"nope"),
        Err(SigningError::WrongPassword)
    ));
}

/// A `cosign generate-key-pair` output with an empty password and its `.pub`, from
/// oasysgames/oasys-validator txfilter/testdata; see tests/data/README.md.
#[test]
fn cosign_generated_key_pair_decrypts_and_matches_its_public_key() {
    let key = PrivateKey::from_pem(&fixture("oasys-cosign-test.key"), b"").unwrap();
    let public = PublicKey::from_pem(&fixture("oasys-cosign-test.pub")).unwrap();
    assert_eq!(key.public_key(), public);
    public.verify(b"payload", &key.sign(b"payload")).unwrap();
    // Our PEM export of the public key is byte-identical to cosign's `cosign.pub`.
    assert_eq!(key.public_key().to_pem().as_bytes(), fixture("oasys-cosign-test.pub"));
}

#[test]
fn generated_key_pair_is_what_cosign_writes() {
    let (private_pem, public_pem) = generate_key_pair(b"pw").unwrap();
    assert!(private_pem.starts_with("-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\n"));
    assert!(public_pem.starts_with("-----BEGIN PUBLIC KEY-----\n"));
    let key = PrivateKey::from_pem(private_pem.as_bytes(), b"pw").unwrap();
    assert!(matches!(key, PrivateKey::P256(_)));
    assert_eq!(key.public_key(), PublicKey::from_pem(public_pem.as_bytes()).unwrap());
}

#[test]
fn write_key_pair_sets_0600_and_refuses_to_overwrite_without_force() {
    let dir = tempfile::tempdir().unwrap();
    let paths = write_key_pair(dir.path(), "cosign", b"pw", false).unwrap();
    assert_eq!(paths.private_key, dir.path().join("cosign.key"));
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&paths.private_key), 0o600);
    assert_eq!(mode(&paths.public_key) & 0o600, 0o600);
    let key = PrivateKey::from_pem(&std::fs::read(&paths.private_key).unwrap(), b"pw").unwrap();
    let public = PublicKey::from_pem(&std::fs::read(&paths.public_key).unwrap()).unwrap();
    assert_eq!(key.public_key(), public);

    let before = std::fs::read(&paths.private_key).unwrap();
    let err = write_key_pair(dir.path(), "cosign", b"pw", false).unwrap_err();
    assert!(matches!(err, SigningError::Exists(_)), "{err}");
    assert_eq!(std::fs::read(&paths.private_key).unwrap(), before);

    // Only the .pub existing is enough to refuse, and nothing is written.
    std::fs::write(dir.path().join("other.pub"), "x").unwrap();
    assert!(matches!(
        write_key_pair(dir.path(), "other", b"pw", false),
        Err(SigningError::Exists(_))
    ));
    assert!(!dir.path().join("other.key").exists());

    write_key_pair(dir.path(), "cosign", b"new", true).unwrap();
    assert_ne!(std::fs::read(&paths.private_key).unwrap(), before);
    assert_eq!(mode(&paths.private_key), 0o600);
    assert!(PrivateKey::from_pem(&std::fs::read(&paths.private_key).unwrap(), b"new").is_ok());
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty());

    for bad in ["", "a/b", ".."] {
        assert!(matches!(
            write_key_pair(dir.path(), bad, b"", false),
            Err(SigningError::BadPrefix(_))
        ));
    }
}

/// Runs `password_from_env` in a child process (env is process-global): the child is this test
/// binary running [`password_from_env_child`] with `KCACHE_TEST_EXPECT` set.
#[test]
fn password_from_env_reads_cosign_password_and_keeps_empty() {
    let exe = std::env::current_exe().unwrap();
    for (value, expect) in [(None, "unset"), (Some(""), "empty"), (Some("s3cret"), "s3cret")] {
        let mut cmd = std::process::Command::new(&exe);
        cmd.args([
            "--exact",
            "signing::tests::password_from_env_child",
            "--include-ignored",
            "--quiet",
        ]);
        cmd.env("KCACHE_TEST_EXPECT", expect).env_remove(PASSWORD_ENV);
        if let Some(v) = value {
            cmd.env(PASSWORD_ENV, v);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{expect}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("1 passed"), "{expect}");
    }
}

#[test]
#[ignore = "run by password_from_env_reads_cosign_password_and_keeps_empty in a child process"]
fn password_from_env_child() {
    let got = password_from_env();
    match std::env::var("KCACHE_TEST_EXPECT").unwrap().as_str() {
        "unset" => assert_eq!(got, None),
        "empty" => assert_eq!(got, Some(vec![])),
        other => assert_eq!(got, Some(other.as_bytes().to_vec())),
    }
}

#[test]
fn debug_output_shows_no_key_material() {
    let key = PrivateKey::generate_p256();
    let PrivateKey::P256(k) = &key else { unreachable!() };
    let secret_hex = hex::encode(k.to_bytes());
    let dbg = format!("{key:?}");
    assert!(dbg.starts_with("PrivateKey(ecdsa-p256 SHA256:"));
    assert!(!dbg.contains(&secret_hex));
}

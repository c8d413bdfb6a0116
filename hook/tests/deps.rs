//! The hook links no async runtime, network or crypto code: `cargo tree` of its normal
//! dependencies must not name any of them.

use std::process::Command;

/// Crates that would mean tokio, an HTTP/TLS stack or crypto got linked into the hook.
const FORBIDDEN: &[&str] = &[
    "tokio",
    "mio",
    "hyper",
    "h2",
    "reqwest",
    "tonic",
    "rustls",
    "ring",
    "aws-lc-rs",
    "openssl",
    "native-tls",
    "sha2",
    "p256",
    "p384",
    "ecdsa",
    "ed25519-dalek",
    "rsa",
    "scrypt",
    "crypto_secretbox",
    "x509-cert",
    "redb",
    "nvml-wrapper",
    "tar",
    "flate2",
];

#[test]
fn the_hook_links_no_tokio_network_or_crypto() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    let out = Command::new(cargo)
        .args([
            "tree",
            "--offline",
            "-e",
            "normal",
            "--prefix",
            "none",
            "-p",
            "kcache-hook",
            "--manifest-path",
        ])
        .arg(manifest)
        .output()
        .expect("run cargo tree");
    let tree = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "cargo tree: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let crates: Vec<&str> = tree.lines().filter_map(|l| l.split_whitespace().next()).collect();
    assert!(crates.contains(&"kcache-core") && crates.contains(&"rustix"), "{tree}");
    let bad: Vec<&&str> = crates.iter().filter(|c| FORBIDDEN.contains(c)).collect();
    assert!(bad.is_empty(), "kcache-hook links {bad:?}:\n{tree}");
}

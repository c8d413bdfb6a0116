//! `cosign generate-key-pair` on disk: `<prefix>.key` (0600) and `<prefix>.pub`.

use std::{
    fs,
    path::{Path, PathBuf},
};

use super::{PrivateKey, Result, SigningError};

/// The environment variable cosign reads the key password from.
///
/// cosign uses it when set, even when empty (an empty password is allowed and common in CI);
/// when unset it prompts on a terminal. We never prompt: callers decide what unset means.
pub const PASSWORD_ENV: &str = "COSIGN_PASSWORD";

/// The key password from `COSIGN_PASSWORD`, as raw bytes; `None` when the variable is unset.
/// `Some(vec![])` when it is set but empty, which cosign accepts as the password.
pub fn password_from_env() -> Option<Vec<u8>> {
    use std::os::unix::ffi::OsStringExt;
    std::env::var_os(PASSWORD_ENV).map(OsStringExt::into_vec)
}

/// A fresh ECDSA P-256 key pair as cosign writes it: (`cosign.key`, `cosign.pub`) contents.
pub fn generate_key_pair(password: &[u8]) -> Result<(String, String)> {
    let key = PrivateKey::generate_p256();
    Ok((key.to_encrypted_pem(password)?, key.public_key().to_pem()))
}

/// Where [`write_key_pair`] put the two files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPairPaths {
    /// `<dir>/<prefix>.key`, the encrypted private key, mode 0600.
    pub private_key: PathBuf,
    /// `<dir>/<prefix>.pub`, the PEM public key, mode 0644.
    pub public_key: PathBuf,
}

/// Generates a key pair and writes `<dir>/<prefix>.key` and `<dir>/<prefix>.pub`, like
/// `cosign generate-key-pair --output-key-prefix <prefix>`.
///
/// Without `force`, fails with [`SigningError::Exists`] before writing anything if either file
/// exists, and the final link refuses to replace a file that appeared meanwhile. Each file is
/// written to a temporary file in `dir`, fsynced, then moved into place, so a crash leaves
/// either no file or a whole one; the private key is never readable by others, not even briefly.
pub fn write_key_pair(dir: &Path, prefix: &str, password: &[u8], force: bool) -> Result<KeyPairPaths> {
    if prefix.is_empty() || prefix.contains('/') || prefix == "." || prefix == ".." {
        return Err(SigningError::BadPrefix(prefix.to_string()));
    }
    let paths = KeyPairPaths {
        private_key: dir.join(format!("{prefix}.key")),
        public_key: dir.join(format!("{prefix}.pub")),
    };
    if !force {
        for p in [&paths.private_key, &paths.public_key] {
            if fs::symlink_metadata(p).is_ok() {
                return Err(SigningError::Exists(p.clone()));
            }
        }
    }
    let (private_pem, public_pem) = generate_key_pair(password)?;
    write_atomic(&paths.private_key, private_pem.as_bytes(), 0o600, force)?;
    write_atomic(&paths.public_key, public_pem.as_bytes(), 0o644, force)?;
    Ok(paths)
}

/// [`crate::fsutil::write_atomic`], with "exists" reported as [`SigningError::Exists`].
fn write_atomic(path: &Path, data: &[u8], mode: u32, force: bool) -> Result<()> {
    crate::fsutil::write_atomic(path, data, mode, force).map_err(|source| {
        if source.kind() == std::io::ErrorKind::AlreadyExists {
            SigningError::Exists(path.to_path_buf())
        } else {
            SigningError::Write {
                path: path.to_path_buf(),
                source,
            }
        }
    })
}

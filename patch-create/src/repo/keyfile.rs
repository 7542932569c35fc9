//! Key files on disk: `release.key` (secret, mode 0600) and `release.pub`.

use std::path::Path;

use formats::keys::{KeyPair, PublicKey};

use crate::error::{Error, IoContext, Result};

/// Generates a key pair and writes `DIR/NAME.key` (mode 0600) and `DIR/NAME.pub`. Refuses to
/// overwrite an existing key.
pub fn generate(dir: &Path, name: &str) -> Result<(std::path::PathBuf, std::path::PathBuf)> {
    std::fs::create_dir_all(dir).at(dir)?;
    let key = KeyPair::generate()?;
    let secret = dir.join(format!("{name}.key"));
    let public = dir.join(format!("{name}.pub"));
    for p in [&secret, &public] {
        if p.exists() {
            return Err(Error::io(
                p,
                std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "refusing to overwrite an existing key",
                ),
            ));
        }
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    use std::io::Write;
    let mut f = opts.open(&secret).at(&secret)?;
    f.write_all(&key.to_json()).at(&secret)?;
    f.sync_all().at(&secret)?;
    std::fs::write(&public, key.public().to_json()).at(&public)?;
    Ok((secret, public))
}

/// Reads a secret key file; a public key file is refused, naming the file.
pub fn load_secret(path: &Path) -> Result<KeyPair> {
    let bytes = std::fs::read(path).at(path)?;
    Ok(KeyPair::from_json(&path.display().to_string(), &bytes)?)
}

/// Reads a public key file; a secret key file is refused, naming the file (see
/// [`PublicKey::from_json`]).
pub fn load_public(path: &Path) -> Result<PublicKey> {
    let bytes = std::fs::read(path).at(path)?;
    Ok(PublicKey::from_json(&path.display().to_string(), &bytes)?)
}

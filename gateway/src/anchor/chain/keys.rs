//! The gateway's anchoring key: a secp256k1 key in a file of its own,
//! hex on one line, readable by its owner only (mode 0600).

use std::path::Path;

use alloy::signers::local::PrivateKeySigner;

use super::ChainError;

/// Reads the gateway's key: hex, one line, readable by its owner only.
pub fn load_key(path: &Path) -> Result<PrivateKeySigner, ChainError> {
    let bad = |reason: String| ChainError::Key {
        path: path.to_owned(),
        reason,
    };
    let meta = std::fs::metadata(path).map_err(|e| {
        bad(format!(
            "{e} (create one with `biota-gateway keygen --out {}`)",
            path.display()
        ))
    })?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(bad(format!(
                "mode {mode:04o} lets others read the key; run `chmod 600 {}`",
                path.display()
            )));
        }
    }
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let bytes = alloy::hex::decode(text.trim())
        .ok()
        .filter(|b| b.len() == 32)
        .ok_or_else(|| bad("not a secp256k1 key (64 hex digits)".into()))?;
    PrivateKeySigner::from_slice(&bytes).map_err(|e| bad(format!("not a valid key: {e}")))
}

/// Writes a new random key with mode 0600; refuses to overwrite one.
pub fn generate_key(path: &Path) -> Result<PrivateKeySigner, ChainError> {
    use std::io::Write;
    let bad = |reason: String| ChainError::Key {
        path: path.to_owned(),
        reason,
    };
    let signer = PrivateKeySigner::random();
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            bad("exists already; a gateway keeps its key (remove it first to replace it)".into())
        } else {
            bad(e.to_string())
        }
    })?;
    writeln!(file, "{}", alloy::hex::encode_prefixed(signer.to_bytes()))
        .and_then(|()| file.sync_all())
        .map_err(|e| bad(e.to_string()))?;
    Ok(signer)
}

//! Bearer tokens: scopes, hashing, the token file and the check every
//! request passes.
//!
//! A token is `bgw_` and 64 hex digits (32 random bytes). Only its SHA-256
//! is stored — in `[api] tokens` or in the token file (`tokens.json` in
//! the state directory, mode 0600, managed by `biota-gateway token`). The
//! file is re-read when it changes, so a token created or revoked while
//! the gateway runs takes effect on the next request.
//!
//! Scopes: `read` (queries, the stream, the console), `write` (writes to
//! devices), `admin` (every scope). A token holds a list of them.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Read,
    Write,
    Admin,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::Admin => "admin",
        }
    }
}

/// A stored token: `{ name = "scada", scopes = ["read"], sha256 = "<hex>" }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    /// Who or what holds it (unique; `token revoke` takes it).
    pub name: String,
    /// Non-empty.
    pub scopes: Vec<Scope>,
    /// SHA-256 of the token, 64 lowercase hex digits.
    pub sha256: String,
    /// When it was created (RFC 3339), for `token list`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
}

impl TokenEntry {
    pub fn validate(&self) -> Result<(), String> {
        if self.name.is_empty()
            || self.name.len() > 64
            || !self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b))
        {
            return Err(format!(
                "name `{}`: 1..=64 of A-Z a-z 0-9 - _ . @",
                self.name
            ));
        }
        if self.scopes.is_empty() {
            return Err(format!("token `{}` has no scopes", self.name));
        }
        if decode_hex32(&self.sha256).is_none() {
            return Err(format!(
                "token `{}`: sha256 must be 64 hex digits (the SHA-256 of the token)",
                self.name
            ));
        }
        Ok(())
    }

    fn grants(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope) || self.scopes.contains(&Scope::Admin)
    }
}

/// The token file's content.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenFile {
    tokens: Vec<TokenEntry>,
}

/// Why the token file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("token file {path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("a token named `{name}` exists already (revoke it first)")]
    Exists { name: String },
    #[error("{0}")]
    Invalid(String),
}

/// A new random token.
pub fn generate() -> Result<String, TokenError> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| TokenError::Invalid("the system's random source failed".into()))?;
    Ok(format!("bgw_{}", alloy::hex::encode(bytes)))
}

/// The SHA-256 of a token, as stored.
pub fn hash(token: &str) -> String {
    alloy::hex::encode(ring::digest::digest(
        &ring::digest::SHA256,
        token.as_bytes(),
    ))
}

/// 64 hex digits (no prefix) as 32 bytes.
fn decode_hex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    alloy::hex::decode(s).ok()?.try_into().ok()
}

/// Equal in time independent of where they differ.
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Reads the token file; a missing file holds no tokens.
pub fn load_file(path: &Path) -> Result<Vec<TokenEntry>, TokenError> {
    let err = |reason: String| TokenError::File {
        path: path.to_owned(),
        reason,
    };
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(err(e.to_string())),
    };
    let file: TokenFile = serde_json::from_str(&text).map_err(|e| err(e.to_string()))?;
    for entry in &file.tokens {
        entry.validate().map_err(err)?;
    }
    Ok(file.tokens)
}

/// Writes the token file atomically, mode 0600.
fn save_file(path: &Path, tokens: Vec<TokenEntry>) -> Result<(), TokenError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let err = |e: std::io::Error| TokenError::File {
        path: path.to_owned(),
        reason: e.to_string(),
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let text = serde_json::to_string_pretty(&TokenFile { tokens }).map_err(std::io::Error::other);
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(err)?;
    file.write_all(text.map_err(err)?.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// Adds a token to the file and returns it (the only time it is shown).
pub fn create(path: &Path, name: &str, scopes: &[Scope]) -> Result<String, TokenError> {
    let mut tokens = load_file(path)?;
    if tokens.iter().any(|t| t.name == name) {
        return Err(TokenError::Exists { name: name.into() });
    }
    let token = generate()?;
    let mut scopes = scopes.to_vec();
    scopes.dedup();
    let entry = TokenEntry {
        name: name.into(),
        scopes,
        sha256: hash(&token),
        created: Some(biota_common::time::format_rfc3339(
            biota_common::time::now_ns(),
        )),
    };
    entry.validate().map_err(TokenError::Invalid)?;
    tokens.push(entry);
    save_file(path, tokens)?;
    Ok(token)
}

/// Removes the token named `name`; false if there was none.
pub fn revoke(path: &Path, name: &str) -> Result<bool, TokenError> {
    let mut tokens = load_file(path)?;
    let before = tokens.len();
    tokens.retain(|t| t.name != name);
    if tokens.len() == before {
        return Ok(false);
    }
    save_file(path, tokens)?;
    Ok(true)
}

/// A token entry with its decoded digest.
type Hashed = (TokenEntry, [u8; 32]);

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// No token, or one that is not known: 401.
    Unauthenticated(&'static str),
    /// A known token without the scope: 403.
    Forbidden { name: String, scope: Scope },
}

/// The tokens the running API accepts: the configuration's and the
/// file's, the latter re-read when its modification time changes.
#[derive(Debug)]
pub struct Tokens {
    configured: Vec<Hashed>,
    file: PathBuf,
    cached: Mutex<(Option<SystemTime>, Vec<Hashed>)>,
}

impl Tokens {
    pub fn new(configured: &[TokenEntry], file: PathBuf) -> Self {
        Self {
            configured: with_hashes(configured.to_vec()),
            file,
            cached: Mutex::new((None, Vec::new())),
        }
    }

    /// Checks an `Authorization` header value for `scope`; the token's name
    /// on success.
    pub fn authorize(&self, header: Option<&str>, scope: Scope) -> Result<String, Denied> {
        let token = header
            .ok_or(Denied::Unauthenticated("a bearer token is required"))?
            .strip_prefix("Bearer ")
            .ok_or(Denied::Unauthenticated(
                "the Authorization header must be `Bearer <token>`",
            ))?
            .trim();
        let presented = decode_hex32(&hash(token)).unwrap_or_default();
        let matching = |entries: &[Hashed]| {
            // Compare with every entry, so timing does not tell which matched.
            let mut found = None;
            for (entry, digest) in entries {
                if constant_time_eq(digest, &presented) {
                    found = Some(entry.clone());
                }
            }
            found
        };
        let entry = match matching(&self.configured) {
            Some(e) => Some(e),
            None => matching(&self.file_tokens()),
        }
        .ok_or(Denied::Unauthenticated("the token is not valid"))?;
        if entry.grants(scope) {
            Ok(entry.name)
        } else {
            Err(Denied::Forbidden {
                name: entry.name,
                scope,
            })
        }
    }

    fn file_tokens(&self) -> Vec<Hashed> {
        let modified = std::fs::metadata(&self.file)
            .and_then(|m| m.modified())
            .ok();
        let mut cached = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        if cached.0 != modified || modified.is_none() {
            let entries = load_file(&self.file).unwrap_or_else(|e| {
                tracing::error!(error = %e, "API tokens from the token file are not accepted");
                Vec::new()
            });
            *cached = (modified, with_hashes(entries));
        }
        cached.1.clone()
    }
}

fn with_hashes(entries: Vec<TokenEntry>) -> Vec<Hashed> {
    entries
        .into_iter()
        .filter_map(|e| decode_hex32(&e.sha256).map(|d| (e, d)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_stored_hashed_and_checked_by_scope() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tokens.json");
        let reader = create(&file, "scada", &[Scope::Read]).unwrap();
        let admin = create(&file, "ops", &[Scope::Admin]).unwrap();
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(!text.contains(&reader), "the token itself is not stored");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(matches!(
            create(&file, "scada", &[Scope::Read]),
            Err(TokenError::Exists { .. })
        ));

        let tokens = Tokens::new(&[], file.clone());
        let bearer = |t: &str| format!("Bearer {t}");
        assert_eq!(
            tokens.authorize(Some(&bearer(&reader)), Scope::Read),
            Ok("scada".into())
        );
        assert!(matches!(
            tokens.authorize(Some(&bearer(&reader)), Scope::Write),
            Err(Denied::Forbidden { .. })
        ));
        assert!(
            tokens
                .authorize(Some(&bearer(&admin)), Scope::Write)
                .is_ok()
        );
        assert!(matches!(
            tokens.authorize(Some("Bearer bgw_nope"), Scope::Read),
            Err(Denied::Unauthenticated(_))
        ));
        assert!(matches!(
            tokens.authorize(None, Scope::Read),
            Err(Denied::Unauthenticated(_))
        ));
        assert!(revoke(&file, "scada").unwrap());
        assert!(!revoke(&file, "scada").unwrap());
        // mtime granularity: force a re-read by clearing the cache.
        tokens.cached.lock().unwrap().0 = None;
        assert!(
            tokens
                .authorize(Some(&bearer(&reader)), Scope::Read)
                .is_err()
        );
    }
}

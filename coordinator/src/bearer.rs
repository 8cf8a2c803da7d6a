//! Bearer tokens: client principals named by a secret the coordinator
//! verifies, on top of a client certificate.
//!
//! Every connection still runs mutual TLS. A workload that serves many
//! users (a gateway, a notebook server) holds one client certificate, and
//! each of its calls can say for whom it is made with `authorization:
//! Bearer <token>`. The coordinator then checks the path roles of that
//! user (`client/<name>`) instead of the certificate's. Chunk tokens are
//! still issued to the certificate's principal, because a datanode
//! authenticates the connection that presents them.
//!
//! `--client-tokens FILE` holds one `<name> sha256:<64 hex digits>` per
//! line: the SHA-256 of each token, never the token itself, so the file
//! (a Secret) does not give the tokens away. It is read again when it
//! changes, like the access file; one that does not parse is refused and
//! the tokens in use kept. A bearer token is honoured only over a client
//! certificate: a datanode, coordinator or operator certificate never
//! speaks for a user.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The token file, kept current.
pub type TokenFile = dfs_common::watched::Watched<ClientTokens, TokenFileError>;

/// Opens the token file at `path`.
pub fn open(path: &Path) -> Result<TokenFile, TokenFileError> {
    TokenFile::open(
        path,
        "client token file",
        ClientTokens::parse,
        |path, source| TokenFileError::Read { path, source },
    )
}

/// Most tokens a file may hold.
pub const MAX_TOKENS: usize = 100_000;

/// Longest bearer token accepted on a call, in bytes.
pub const MAX_TOKEN_BYTES: usize = 4096;

/// Why a token file was refused.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("cannot read client token file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("client token file {path}, line {line}: {reason}")]
    Line {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("client token file {path} holds more than {MAX_TOKENS} tokens")]
    TooMany { path: PathBuf },
}

/// The tokens of one file: client name by SHA-256 of its token.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientTokens {
    by_digest: HashMap<[u8; 32], String>,
}

use dfs_common::token::bearer_digest as digest;
pub use dfs_common::token::bearer_line as line_for;

fn unhex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

impl ClientTokens {
    /// Parses a token file (see the module documentation).
    pub fn parse(path: &Path, text: &str) -> Result<Self, TokenFileError> {
        let mut by_digest = HashMap::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let bad = |reason: String| TokenFileError::Line {
                path: path.to_path_buf(),
                line: i + 1,
                reason,
            };
            let mut parts = line.split_whitespace();
            let (Some(name), Some(hash), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err(bad("expected `<name> sha256:<64 hex digits>`".into()));
            };
            if name.is_empty()
                || name.len() > 128
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'))
            {
                return Err(bad(format!(
                    "client name {name:?}: letters, digits, - _ . @ only"
                )));
            }
            let d = hash
                .strip_prefix("sha256:")
                .and_then(unhex)
                .ok_or_else(|| bad("the hash must be sha256:<64 hex digits>".into()))?;
            if name == dfs_common::tls::ADMIN_CLIENT {
                return Err(bad(format!(
                    "{name:?} is the built-in admin: a bearer token may not name it"
                )));
            }
            if by_digest.insert(d, name.to_string()).is_some() {
                return Err(bad("the same token is listed twice".into()));
            }
            if by_digest.len() > MAX_TOKENS {
                return Err(TokenFileError::TooMany {
                    path: path.to_path_buf(),
                });
            }
        }
        Ok(Self { by_digest })
    }

    /// The client a token names, if it is listed. The lookup is by the
    /// token's SHA-256, so its time says nothing about the tokens listed.
    pub fn verify(&self, token: &str) -> Option<&str> {
        if token.is_empty() || token.len() > MAX_TOKEN_BYTES {
            return None;
        }
        self.by_digest.get(&digest(token)).map(String::as_str)
    }

    /// Tokens listed.
    pub fn len(&self) -> usize {
        self.by_digest.len()
    }

    /// No token listed.
    pub fn is_empty(&self) -> bool {
        self.by_digest.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_listed_by_hash_and_bad_files_are_refused() {
        let p = Path::new("tokens");
        let text = format!(
            "# users of the notebook gateway\n{}\n{}  # bob\n",
            line_for("alice", "s3cret-a"),
            line_for("bob", "s3cret-b")
        );
        assert!(!text.contains("s3cret"), "the file holds no token");
        let t = ClientTokens::parse(p, &text).unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t.verify("s3cret-a"), Some("alice"));
        assert_eq!(t.verify("s3cret-b"), Some("bob"));
        assert_eq!(t.verify("s3cret-c"), None);
        assert_eq!(t.verify(""), None);
        assert_eq!(t.verify(&"x".repeat(MAX_TOKEN_BYTES + 1)), None);
        for bad in [
            "alice",
            "alice sha256:00",
            "alice md5:0000",
            &format!("al/ice {}", &line_for("x", "y")[2..]),
            &format!("{}\n{}", line_for("a", "same"), line_for("b", "same")),
            &line_for("admin", "t"),
        ] {
            assert!(ClientTokens::parse(p, bad).is_err(), "{bad}");
        }
        assert!(ClientTokens::parse(p, "").unwrap().is_empty());
    }
}

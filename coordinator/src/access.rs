//! Roles on path prefixes: who may read, write or administer which part of
//! the namespace.
//!
//! Without an access file every client may read and write the whole
//! namespace and only the built-in admins ([`crate::service::is_admin`])
//! may make admin calls. With `--access-file`, a client may do only what a
//! rule grants it: `<principal> <role> <prefix>` per line, where the
//! principal is `client/<name>` (or `client/*`, any client), the role is
//! `read`, `write` (implies read) or `admin` (implies both, and on `/` the
//! admin calls), and the prefix a namespace path that covers itself and
//! everything below it. The built-in admins keep every right, so a broken
//! file never locks the operator out. The file is read again when it
//! changes; one that does not parse is refused and the rules in use kept.

use std::path::{Path, PathBuf};

use dfs_common::tls::{Kind, Principal};

/// The access file, kept current.
pub type AccessFile = dfs_common::watched::Watched<AccessList, AccessFileError>;

/// Opens the access file at `path`.
pub fn open(path: &Path) -> Result<AccessFile, AccessFileError> {
    AccessFile::open(path, "access file", AccessList::parse, |path, source| {
        AccessFileError::Read { path, source }
    })
}

/// What a call needs on a path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Read,
    Write,
    Admin,
}

impl Role {
    fn parse(s: &str) -> Option<Role> {
        Some(match s {
            "read" => Role::Read,
            "write" => Role::Write,
            "admin" => Role::Admin,
            _ => return None,
        })
    }

    /// Its name in files and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Write => "write",
            Role::Admin => "admin",
        }
    }
}

/// Most rules a file may hold.
pub const MAX_RULES: usize = 10_000;

/// Why an access file was refused.
#[derive(Debug, thiserror::Error)]
pub enum AccessFileError {
    #[error("cannot read access file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("access file {path}, line {line}: {reason}")]
    Line {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("access file {path} holds more than {MAX_RULES} rules")]
    TooMany { path: PathBuf },
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Rule {
    /// A client's name, or `None` for every client.
    client: Option<String>,
    role: Role,
    /// Normalised: `/` or `/a/b` (no trailing slash).
    prefix: String,
}

/// The rules of one access file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AccessList {
    rules: Vec<Rule>,
}

/// True when `path` is `prefix` or below it.
fn covers(prefix: &str, path: &str) -> bool {
    prefix == "/"
        || path == prefix
        || (path.starts_with(prefix) && path.as_bytes().get(prefix.len()) == Some(&b'/'))
}

impl AccessList {
    /// Parses an access file (see the module documentation).
    pub fn parse(path: &Path, text: &str) -> Result<Self, AccessFileError> {
        let mut rules = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let bad = |reason: String| AccessFileError::Line {
                path: path.to_path_buf(),
                line: i + 1,
                reason,
            };
            let mut parts = line.split_whitespace();
            let (Some(who), Some(role), Some(prefix), None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return Err(bad("expected `<principal> <role> <prefix>`".into()));
            };
            let client = match who.strip_prefix("client/") {
                Some("*") => None,
                Some(name) if !name.is_empty() && !name.contains('/') => Some(name.to_string()),
                _ => {
                    return Err(bad(format!(
                        "principal {who:?} must be client/<name> or client/*"
                    )));
                }
            };
            let role = Role::parse(role)
                .ok_or_else(|| bad(format!("role {role:?} must be read, write or admin")))?;
            let normalised = crate::path::NsPath::parse(prefix)
                .map_err(|e| bad(format!("prefix {prefix:?}: {e}")))?
                .to_string();
            rules.push(Rule {
                client,
                role,
                prefix: normalised,
            });
            if rules.len() > MAX_RULES {
                return Err(AccessFileError::TooMany {
                    path: path.to_path_buf(),
                });
            }
        }
        Ok(Self { rules })
    }

    /// True when a rule grants `principal` at least `role` on `path`.
    /// Only clients get rules; other kinds are decided by the caller.
    pub fn allows(&self, principal: &Principal, role: Role, path: &str) -> bool {
        principal.kind == Kind::Client
            && self.rules.iter().any(|r| {
                r.role >= role
                    && r.client.as_deref().is_none_or(|c| c == principal.name)
                    && covers(&r.prefix, path)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(name: &str) -> Principal {
        Principal::new(Kind::Client, name)
    }

    #[test]
    fn rules_grant_a_role_and_the_ones_below_it_on_a_prefix_and_below() {
        let list = AccessList::parse(
            Path::new("access"),
            "# team\nclient/alice write /home/alice\nclient/* read /pub/\nclient/ops admin /\n",
        )
        .unwrap();
        let alice = client("alice");
        assert!(list.allows(&alice, Role::Write, "/home/alice"));
        assert!(list.allows(&alice, Role::Read, "/home/alice/a/b"));
        assert!(!list.allows(&alice, Role::Write, "/home/alicex"));
        assert!(!list.allows(&alice, Role::Admin, "/home/alice"));
        assert!(list.allows(&alice, Role::Read, "/pub/x"));
        assert!(!list.allows(&alice, Role::Write, "/pub/x"));
        assert!(!list.allows(&client("bob"), Role::Read, "/home/alice"));
        assert!(list.allows(&client("bob"), Role::Read, "/pub"));
        assert!(list.allows(&client("ops"), Role::Admin, "/"));
        assert!(list.allows(&client("ops"), Role::Write, "/anything"));
        // Rules are for clients: a datanode named alice gets nothing.
        assert!(!list.allows(&Principal::new(Kind::Datanode, "alice"), Role::Read, "/pub"));
    }

    #[test]
    fn a_bad_line_names_itself() {
        for (text, want) in [
            ("client/a read", "expected"),
            ("alice read /", "client/<name>"),
            ("client/ read /", "client/<name>"),
            ("client/a delete /", "role"),
            ("client/a read relative", "prefix"),
            ("client/a read /x extra", "expected"),
        ] {
            let e = AccessList::parse(Path::new("f"), text)
                .unwrap_err()
                .to_string();
            assert!(e.contains("line 1") && e.contains(want), "{text:?}: {e}");
        }
        assert_eq!(
            AccessList::parse(Path::new("f"), "\n# nothing\n").unwrap(),
            AccessList::default()
        );
    }
}

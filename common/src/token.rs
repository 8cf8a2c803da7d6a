//! Chunk capabilities and replica receipts: HMAC-SHA256 under a key ring
//! the coordinator holds.
//!
//! The coordinator's ring ([`KeyRing`], from a file such as a mounted
//! Secret, reloaded without a restart) signs a [`ChunkToken`] for every chunk
//! of an upload plan, a chunk map and a repair command. A token names the
//! chunk, the operations it allows, the principal it was issued to, the
//! datanodes it is valid on and its expiry, and carries one tag per datanode
//! under that datanode's own key ([`derive`]): each datanode receives only its
//! own keys ([`KeyRing::node_keys`], over the mutually authenticated heartbeat
//! stream), so a datanode that is taken over can forge tokens for itself and
//! nobody else. The same per-node derivation gives each datanode a receipt
//! key: its [`ReplicaReceipt`] tag over what it stored is the coordinator's
//! proof that this replica, and not a client or a primary speaking for it,
//! holds the bytes.
//!
//! Rotation is current → next: add the next key to the file (datanodes
//! learn it at their next heartbeat), move it first (it signs from then
//! on), and drop the old one once the tokens it signed have expired.
//! Verification uses `ring::hmac::verify`, which compares in constant time.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use dfs_proto::{ChunkToken, ReplicaReceipt, TokenKey};
use ring::hmac;

/// Operations a token can allow (the bits of `ChunkToken.ops`).
pub mod ops {
    /// Upload the chunk (and forward it to the token's other nodes).
    pub const WRITE: u32 = 1;
    /// Read the chunk.
    pub const READ: u32 = 2;
    /// Copy the chunk to this node (repair).
    pub const REPLICATE: u32 = 4;
    /// Delete the chunk.
    pub const DELETE: u32 = 8;

    /// The name of one operation bit, for messages.
    pub fn name(op: u32) -> &'static str {
        match op {
            WRITE => "write",
            READ => "read",
            REPLICATE => "replicate",
            DELETE => "delete",
            _ => "unknown",
        }
    }
}

/// Bytes of every secret: HMAC-SHA256's block of security.
pub const SECRET_BYTES: usize = 32;
/// Most keys a ring holds (current, next and a retiring one, with room).
pub const MAX_KEYS: usize = 16;
/// How far a datanode's clock may lag the coordinator's before a fresh
/// token looks expired (and how long an expired one is still taken).
pub const CLOCK_SKEW: Duration = Duration::from_secs(30);
/// Most nodes one token may name (replication 16 at most).
pub const MAX_TOKEN_NODES: usize = 16;

/// Why a key file was refused.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("cannot read token key file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("token key file {path}, line {line}: {reason}")]
    Line {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("token key file {0} holds no key")]
    Empty(PathBuf),
    #[error("token key file {path} holds {count} keys; at most {MAX_KEYS}")]
    TooMany { path: PathBuf, count: usize },
    #[error("cannot write token key file {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Why a token or a receipt was refused. `Unauthenticated` kinds say the
/// token proves nothing; `Denied` kinds say it is genuine but does not
/// cover this call.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error(
        "no chunk token (the cluster runs mutual TLS: chunk calls need the coordinator's token)"
    )]
    Missing,
    #[error("chunk token under unknown key {0}")]
    UnknownKey(u32),
    #[error("chunk token expired at {0} (Unix seconds)")]
    Expired(u64),
    #[error("chunk token tag does not verify (forged or altered)")]
    Forged,
    #[error("chunk token is malformed: {0}")]
    Malformed(&'static str),
    #[error("chunk token is for chunk {0}, not this one")]
    OtherChunk(String),
    #[error("chunk token does not allow {0}")]
    OtherOperation(&'static str),
    #[error("chunk token is not valid on this datanode")]
    OtherNode,
    #[error("chunk token was issued to {issued}, not to {caller}")]
    OtherPrincipal { issued: String, caller: String },
    #[error("this datanode has no token keys yet (not registered with a coordinator)")]
    NoKeys,
}

impl TokenError {
    /// True when the token proves nothing (UNAUTHENTICATED); false when it
    /// is genuine but does not cover the call (PERMISSION_DENIED).
    pub fn unauthenticated(&self) -> bool {
        matches!(
            self,
            TokenError::Missing
                | TokenError::UnknownKey(_)
                | TokenError::Expired(_)
                | TokenError::Forged
                | TokenError::Malformed(_)
        )
    }

    /// A short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            TokenError::Missing => "missing",
            TokenError::UnknownKey(_) => "unknown_key",
            TokenError::Expired(_) => "expired",
            TokenError::Forged => "forged",
            TokenError::Malformed(_) => "malformed",
            TokenError::OtherChunk(_) => "other_chunk",
            TokenError::OtherOperation(_) => "other_operation",
            TokenError::OtherNode => "other_node",
            TokenError::OtherPrincipal { .. } => "other_principal",
            TokenError::NoKeys => "no_keys",
        }
    }

    /// The gRPC status for a refused call.
    pub fn status(&self) -> tonic::Status {
        if matches!(self, TokenError::NoKeys) {
            tonic::Status::unavailable(self.to_string())
        } else if self.unauthenticated() {
            tonic::Status::unauthenticated(self.to_string())
        } else {
            tonic::Status::permission_denied(self.to_string())
        }
    }
}

/// Every metric label of [`TokenError::reason`], for series at zero.
pub const REASONS: &[&str] = &[
    "missing",
    "unknown_key",
    "expired",
    "forged",
    "malformed",
    "other_chunk",
    "other_operation",
    "other_node",
    "other_principal",
    "no_keys",
];

/// One datanode's key for `purpose` under `master`: what makes its tags its
/// own.
fn derive(master: &hmac::Key, purpose: &str, node_id: &str) -> [u8; SECRET_BYTES] {
    let mut ctx = hmac::Context::with_key(master);
    ctx.update(b"dfs key v1\0");
    ctx.update(purpose.as_bytes());
    ctx.update(b"\0");
    ctx.update(node_id.as_bytes());
    let tag = ctx.sign();
    let mut out = [0u8; SECRET_BYTES];
    out.copy_from_slice(tag.as_ref());
    out
}

fn put_str(ctx: &mut hmac::Context, s: &str) {
    ctx.update(&(s.len() as u32).to_be_bytes());
    ctx.update(s.as_bytes());
}

/// The signed bytes of a token: every field but the tags, length-prefixed
/// so that no two tokens share them.
fn token_mac(key: &hmac::Key, t: &ChunkToken) -> hmac::Tag {
    let mut ctx = hmac::Context::with_key(key);
    ctx.update(b"dfs chunk token v1\0");
    ctx.update(&t.key_id.to_be_bytes());
    ctx.update(&t.expires_at_unix_s.to_be_bytes());
    ctx.update(&t.ops.to_be_bytes());
    put_str(&mut ctx, &t.chunk_id);
    put_str(&mut ctx, &t.principal);
    ctx.update(&(t.nodes.len() as u32).to_be_bytes());
    for n in &t.nodes {
        put_str(&mut ctx, n);
    }
    ctx.sign()
}

fn receipt_message(chunk_id: &str, r: &ReplicaReceipt) -> Vec<u8> {
    let mut m = Vec::with_capacity(96);
    m.extend_from_slice(b"dfs replica receipt v1\0");
    for s in [chunk_id, r.node_id.as_str()] {
        m.extend_from_slice(&(s.len() as u32).to_be_bytes());
        m.extend_from_slice(s.as_bytes());
    }
    m.extend_from_slice(&r.checksum.to_be_bytes());
    m.extend_from_slice(&r.size.to_be_bytes());
    m.push(r.created as u8);
    m
}

/// The coordinator's keys: the first signs, all verify.
#[derive(Clone)]
pub struct KeyRing {
    /// (key id, master key), the signing key first.
    keys: Vec<(u32, hmac::Key)>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<u32> = self.keys.iter().map(|(id, _)| *id).collect();
        f.debug_struct("KeyRing").field("key_ids", &ids).finish()
    }
}

impl KeyRing {
    /// A ring of `(key id, secret)`, the signing key first.
    pub fn new(keys: &[(u32, [u8; SECRET_BYTES])]) -> Self {
        Self {
            keys: keys
                .iter()
                .map(|(id, s)| (*id, hmac::Key::new(hmac::HMAC_SHA256, s)))
                .collect(),
        }
    }

    /// Parses a key file: one key per line, `<key id> <64 hex digits>`;
    /// `#` starts a comment; the first key signs.
    pub fn parse(path: &Path, text: &str) -> Result<Self, KeyFileError> {
        let mut keys: Vec<(u32, [u8; SECRET_BYTES])> = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let bad = |reason: String| KeyFileError::Line {
                path: path.to_path_buf(),
                line: i + 1,
                reason,
            };
            let mut parts = line.split_whitespace();
            let (Some(id), Some(hex), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err(bad("expected `<key id> <64 hex digits>`".into()));
            };
            let id: u32 = id
                .parse()
                .map_err(|_| bad(format!("key id {id:?} is not a number")))?;
            let secret = parse_hex(hex).ok_or_else(|| {
                bad(format!(
                    "the secret must be {} hex digits",
                    SECRET_BYTES * 2
                ))
            })?;
            if keys.iter().any(|(k, _)| *k == id) {
                return Err(bad(format!("key id {id} appears twice")));
            }
            keys.push((id, secret));
        }
        if keys.is_empty() {
            return Err(KeyFileError::Empty(path.to_path_buf()));
        }
        if keys.len() > MAX_KEYS {
            return Err(KeyFileError::TooMany {
                path: path.to_path_buf(),
                count: keys.len(),
            });
        }
        Ok(Self::new(&keys))
    }

    /// Reads and parses a key file.
    pub fn load(path: &Path) -> Result<Self, KeyFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| KeyFileError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// The key ids, the signing one first.
    pub fn key_ids(&self) -> Vec<u32> {
        self.keys.iter().map(|(id, _)| *id).collect()
    }

    /// A token for `chunk_id` allowing `ops` to `principal` on `nodes`
    /// until `expires_at_unix_s`, signed with the current key.
    pub fn sign(
        &self,
        chunk_id: &str,
        ops: u32,
        principal: &str,
        nodes: &[String],
        expires_at_unix_s: u64,
    ) -> ChunkToken {
        let (key_id, master) = &self.keys[0];
        let mut t = ChunkToken {
            key_id: *key_id,
            expires_at_unix_s,
            ops,
            chunk_id: chunk_id.to_string(),
            principal: principal.to_string(),
            nodes: nodes.to_vec(),
            tags: Vec::with_capacity(nodes.len()),
        };
        for n in nodes {
            let key = hmac::Key::new(hmac::HMAC_SHA256, &derive(master, "token", n));
            t.tags.push(token_mac(&key, &t).as_ref().to_vec());
        }
        t
    }

    /// The keys of `node_id`, one per key id of the ring.
    pub fn node_keys(&self, node_id: &str) -> Vec<TokenKey> {
        self.keys
            .iter()
            .map(|(id, master)| TokenKey {
                key_id: *id,
                token_secret: derive(master, "token", node_id).to_vec(),
                receipt_secret: derive(master, "receipt", node_id).to_vec(),
            })
            .collect()
    }

    /// True when `receipt` of `chunk_id` carries a tag its own node made
    /// under a key of this ring.
    pub fn verify_receipt(&self, chunk_id: &str, receipt: &ReplicaReceipt) -> bool {
        let Some((_, master)) = self.keys.iter().find(|(id, _)| *id == receipt.key_id) else {
            return false;
        };
        let key = hmac::Key::new(
            hmac::HMAC_SHA256,
            &derive(master, "receipt", &receipt.node_id),
        );
        hmac::verify(&key, &receipt_message(chunk_id, receipt), &receipt.tag).is_ok()
    }
}

fn parse_hex(s: &str) -> Option<[u8; SECRET_BYTES]> {
    if s.len() != SECRET_BYTES * 2 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; SECRET_BYTES];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// A new key file at `path` with one random key (id 1), mode 0600, made
/// durable; for `dfs up` and tests. An existing file is kept.
pub fn create_key_file(path: &Path) -> Result<(), KeyFileError> {
    if path.exists() {
        return Ok(());
    }
    write_key_file(path, &new_key_file_text())
}

/// The SHA-256 of a bearer token: what a coordinator's `--client-tokens`
/// file lists instead of the token.
pub fn bearer_digest(token: &str) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// The `--client-tokens` line that names client `name` with `token`.
pub fn bearer_line(name: &str, token: &str) -> String {
    let hex: String = bearer_digest(token)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{name} sha256:{hex}")
}

/// The text of a new key file with one random key (id 1): what
/// [`create_key_file`] writes, and what the operator puts in a cluster's
/// token-key Secret.
pub fn new_key_file_text() -> String {
    let secret: [u8; SECRET_BYTES] = rand::random();
    let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    format!("# dfs chunk-token keys: the first signs\n1 {hex}\n")
}

/// Writes a key file atomically (temporary file, rename), mode 0600.
pub fn write_key_file(path: &Path, text: &str) -> Result<(), KeyFileError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| KeyFileError::Write {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(err)?;
    f.write_all(text.as_bytes()).map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)?;
    Ok(())
}

/// The coordinator's ring as its file says, kept current (see
/// [`crate::watched`]).
pub type KeyFile = crate::watched::Watched<KeyRing, KeyFileError>;

/// Opens the key file at `path`.
pub fn open_key_file(path: &Path) -> Result<KeyFile, KeyFileError> {
    KeyFile::open(path, "token key file", KeyRing::parse, |path, source| {
        KeyFileError::Read { path, source }
    })
}

/// A datanode's own keys, as the coordinator sent them.
pub struct NodeKeys {
    node_id: String,
    /// key id → (token key, receipt key).
    keys: HashMap<u32, (hmac::Key, hmac::Key)>,
    /// The key id receipts are signed with (the ring's signing key when
    /// the coordinator sent it first).
    signing: u32,
    /// How long past its expiry a token is still accepted (clocks differ).
    skew_s: u64,
}

impl NodeKeys {
    /// The keys of `node_id` from the wire; `None` when there are none or
    /// one has the wrong length.
    pub fn from_wire(node_id: &str, wire: &[TokenKey]) -> Option<Self> {
        if wire.is_empty() || wire.len() > MAX_KEYS {
            return None;
        }
        let mut keys = HashMap::with_capacity(wire.len());
        for k in wire {
            if k.token_secret.len() != SECRET_BYTES || k.receipt_secret.len() != SECRET_BYTES {
                return None;
            }
            keys.insert(
                k.key_id,
                (
                    hmac::Key::new(hmac::HMAC_SHA256, &k.token_secret),
                    hmac::Key::new(hmac::HMAC_SHA256, &k.receipt_secret),
                ),
            );
        }
        Some(Self {
            node_id: node_id.to_string(),
            keys,
            signing: wire[0].key_id,
            skew_s: CLOCK_SKEW.as_secs(),
        })
    }

    /// Accepts tokens for `skew` past their expiry instead of
    /// [`CLOCK_SKEW`] (a cluster whose clocks agree more closely).
    pub fn with_clock_skew(mut self, skew: Duration) -> Self {
        self.skew_s = skew.as_secs();
        self
    }

    /// The key ids held, for logs.
    pub fn key_ids(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = self.keys.keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// Checks that `token` is genuine, current, valid on this node and
    /// covers `op` on `chunk_id` for `caller` (its principal as
    /// `kind/name`; a datanode caller named by the token speaks for it).
    pub fn check(
        &self,
        token: Option<&ChunkToken>,
        chunk_id: &str,
        op: u32,
        caller: &str,
        now_unix_s: u64,
    ) -> Result<(), TokenError> {
        let t = token.ok_or(TokenError::Missing)?;
        if t.nodes.len() > MAX_TOKEN_NODES || t.tags.len() != t.nodes.len() {
            return Err(TokenError::Malformed("one tag per node, at most 16 nodes"));
        }
        let (key, _) = self
            .keys
            .get(&t.key_id)
            .ok_or(TokenError::UnknownKey(t.key_id))?;
        let Some(i) = t.nodes.iter().position(|n| *n == self.node_id) else {
            return Err(TokenError::OtherNode);
        };
        // The tag first: nothing else of an unverified token is believed.
        let expected = token_mac(key, t);
        if !constant_time_eq(expected.as_ref(), &t.tags[i]) {
            return Err(TokenError::Forged);
        }
        if t.expires_at_unix_s.saturating_add(self.skew_s) < now_unix_s {
            return Err(TokenError::Expired(t.expires_at_unix_s));
        }
        if t.chunk_id != chunk_id {
            return Err(TokenError::OtherChunk(t.chunk_id.clone()));
        }
        if t.ops & op == 0 {
            return Err(TokenError::OtherOperation(ops::name(op)));
        }
        let forwarded = caller
            .strip_prefix("datanode/")
            .is_some_and(|n| t.nodes.iter().any(|m| m == n));
        if t.principal != caller && !forwarded {
            return Err(TokenError::OtherPrincipal {
                issued: t.principal.clone(),
                caller: caller.to_string(),
            });
        }
        Ok(())
    }

    /// This node's receipt for `chunk_id`: `r` with its key id and tag.
    pub fn sign_receipt(&self, chunk_id: &str, mut r: ReplicaReceipt) -> ReplicaReceipt {
        let (_, key) = &self.keys[&self.signing];
        r.key_id = self.signing;
        r.tag = hmac::sign(key, &receipt_message(chunk_id, &r))
            .as_ref()
            .to_vec();
        r
    }
}

/// Compares two byte strings in time that depends only on their lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(ids: &[u32]) -> KeyRing {
        let keys: Vec<(u32, [u8; SECRET_BYTES])> = ids
            .iter()
            .map(|id| (*id, [*id as u8; SECRET_BYTES]))
            .collect();
        KeyRing::new(&keys)
    }

    fn nodes() -> Vec<String> {
        vec!["a".into(), "b".into(), "c".into()]
    }

    const CHUNK: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn a_token_is_valid_only_for_its_chunk_operation_nodes_principal_and_time() {
        let r = ring(&[1]);
        let t = r.sign(CHUNK, ops::WRITE, "client/alice", &nodes(), 1000);
        let b = NodeKeys::from_wire("b", &r.node_keys("b")).unwrap();
        assert_eq!(
            b.check(Some(&t), CHUNK, ops::WRITE, "client/alice", 1000),
            Ok(())
        );
        // A datanode it names forwards it; one it does not name cannot.
        assert_eq!(
            b.check(Some(&t), CHUNK, ops::WRITE, "datanode/a", 1000),
            Ok(())
        );
        assert!(matches!(
            b.check(Some(&t), CHUNK, ops::WRITE, "datanode/z", 1000),
            Err(TokenError::OtherPrincipal { .. })
        ));
        assert!(matches!(
            b.check(Some(&t), CHUNK, ops::WRITE, "client/bob", 1000),
            Err(TokenError::OtherPrincipal { .. })
        ));
        assert_eq!(
            b.check(
                Some(&t),
                &CHUNK.replace('0', "1"),
                ops::WRITE,
                "client/alice",
                1000
            ),
            Err(TokenError::OtherChunk(CHUNK.into()))
        );
        assert_eq!(
            b.check(Some(&t), CHUNK, ops::DELETE, "client/alice", 1000),
            Err(TokenError::OtherOperation("delete"))
        );
        assert_eq!(
            b.check(Some(&t), CHUNK, ops::WRITE, "client/alice", 1000 + 31),
            Err(TokenError::Expired(1000))
        );
        assert_eq!(
            b.check(None, CHUNK, ops::WRITE, "client/alice", 1000),
            Err(TokenError::Missing)
        );
        let z = NodeKeys::from_wire("z", &r.node_keys("z")).unwrap();
        assert_eq!(
            z.check(Some(&t), CHUNK, ops::WRITE, "client/alice", 1000),
            Err(TokenError::OtherNode)
        );
    }

    #[test]
    fn an_altered_or_self_made_token_is_forged() {
        let r = ring(&[1]);
        let t = r.sign(CHUNK, ops::READ, "client/alice", &nodes(), 1000);
        let b = NodeKeys::from_wire("b", &r.node_keys("b")).unwrap();
        for alter in [
            (|t: &mut ChunkToken| t.ops |= ops::DELETE) as fn(&mut ChunkToken),
            |t| t.expires_at_unix_s += 3600,
            |t| t.principal = "client/mallory".into(),
            |t| t.nodes.push("d".into()),
            |t| t.tags[1][0] ^= 1,
        ] {
            let mut bad = t.clone();
            alter(&mut bad);
            if bad.tags.len() != bad.nodes.len() {
                bad.tags.push(vec![0; 32]);
            }
            assert_eq!(
                b.check(Some(&bad), CHUNK, ops::READ, "client/alice", 1000),
                Err(TokenError::Forged)
            );
        }
        // Node a's keys make a's tags, never b's: a taken-over datanode
        // cannot mint a token another one accepts.
        let a_key = hmac::Key::new(hmac::HMAC_SHA256, &r.node_keys("a")[0].token_secret);
        let mut minted = t.clone();
        minted.ops = ops::DELETE;
        minted.principal = "datanode/a".into();
        let tag = token_mac(&a_key, &minted).as_ref().to_vec();
        minted.tags = vec![tag.clone(), tag.clone(), tag];
        let a = NodeKeys::from_wire("a", &r.node_keys("a")).unwrap();
        assert_eq!(
            a.check(Some(&minted), CHUNK, ops::DELETE, "datanode/a", 1000),
            Ok(()),
            "a's own tag is genuine to a"
        );
        assert_eq!(
            b.check(Some(&minted), CHUNK, ops::DELETE, "datanode/a", 1000),
            Err(TokenError::Forged)
        );
        // Another ring's key id is unknown.
        let other = ring(&[2]).sign(CHUNK, ops::READ, "client/alice", &nodes(), 1000);
        assert_eq!(
            b.check(Some(&other), CHUNK, ops::READ, "client/alice", 1000),
            Err(TokenError::UnknownKey(2))
        );
    }

    #[test]
    fn rotation_keeps_tokens_of_the_old_key_valid_while_the_new_one_signs() {
        let old = ring(&[1]);
        let t_old = old.sign(CHUNK, ops::READ, "client/alice", &nodes(), 1000);
        // Next key added second, then moved first.
        let both = ring(&[2, 1]);
        let b = NodeKeys::from_wire("b", &both.node_keys("b")).unwrap();
        let t_new = both.sign(CHUNK, ops::READ, "client/alice", &nodes(), 1000);
        assert_eq!(t_new.key_id, 2);
        for t in [&t_old, &t_new] {
            assert_eq!(
                b.check(Some(t), CHUNK, ops::READ, "client/alice", 1000),
                Ok(())
            );
        }
        // The old key dropped: its tokens stop working.
        let b = NodeKeys::from_wire("b", &ring(&[2]).node_keys("b")).unwrap();
        assert_eq!(
            b.check(Some(&t_old), CHUNK, ops::READ, "client/alice", 1000),
            Err(TokenError::UnknownKey(1))
        );
    }

    #[test]
    fn receipts_verify_only_for_the_node_and_bytes_they_name() {
        let r = ring(&[1]);
        let b = NodeKeys::from_wire("b", &r.node_keys("b")).unwrap();
        let receipt = b.sign_receipt(
            CHUNK,
            ReplicaReceipt {
                node_id: "b".into(),
                checksum: 7,
                size: 100,
                created: true,
                ..Default::default()
            },
        );
        assert!(r.verify_receipt(CHUNK, &receipt));
        assert!(!r.verify_receipt(&CHUNK.replace('0', "1"), &receipt));
        for alter in [
            (|r: &mut ReplicaReceipt| r.checksum = 8) as fn(&mut ReplicaReceipt),
            |r| r.size = 99,
            |r| r.node_id = "c".into(),
            |r| r.tag.clear(),
            |r| r.key_id = 9,
        ] {
            let mut bad = receipt.clone();
            alter(&mut bad);
            assert!(!r.verify_receipt(CHUNK, &bad));
        }
    }

    #[test]
    fn key_files_are_checked_line_by_line() {
        let p = Path::new("keys");
        let hex = "ab".repeat(32);
        let ring = KeyRing::parse(
            p,
            &format!("# c\n\n7 {hex}\n3 {}  # next\n", "cd".repeat(32)),
        )
        .unwrap();
        assert_eq!(ring.key_ids(), vec![7, 3]);
        for (bad, want) in [
            ("", "holds no key"),
            ("x ab", "line 1: key id"),
            (&format!("1 {}", "ab".repeat(31)) as &str, "64 hex digits"),
            (&format!("1 {hex}\n1 {hex}"), "appears twice"),
            (&format!("1 {hex} extra"), "expected"),
            (&format!("1 {}", "zz".repeat(32)), "64 hex digits"),
        ] {
            let e = KeyRing::parse(p, bad).unwrap_err().to_string();
            assert!(e.contains(want), "{bad:?}: {e}");
        }
    }

    #[test]
    fn a_reload_keeps_the_ring_when_the_file_is_damaged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token-keys");
        create_key_file(&path).unwrap();
        let f = open_key_file(&path).unwrap();
        assert_eq!(f.get().key_ids(), vec![1]);
        assert!(!f.reload());
        std::fs::write(&path, "garbage").unwrap();
        assert!(!f.reload());
        assert_eq!(f.get().key_ids(), vec![1]);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, "garbage");
        std::fs::write(
            &path,
            format!("2 {}\n1 {}\n", "11".repeat(32), "22".repeat(32)),
        )
        .unwrap();
        assert!(f.reload());
        assert_eq!(f.get().key_ids(), vec![2, 1]);
    }
}

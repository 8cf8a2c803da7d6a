//! Which confirmed replicas vouch for their bytes: the ConfirmUpload
//! decision as a pure function (no lock, no clock, no I/O).
//!
//! A client names, for each chunk, the replicas it believes stored it. A
//! replica counts only if it vouched for the confirmed checksum and size
//! itself: by the receipt the primary collected from it, or by its own
//! chunk report to this coordinator. The gRPC edge calls [`check`] until no
//! chunk is short of its write quorum or its wait is over, then [`finish`]:
//! the caller owns the waiting, this module owns the rule.

use std::collections::HashMap;

use crate::namespace::{ChunkId, ChunkRecord, NodeId};

/// What a replica said it stored: (crc32c, size).
pub type Said = (u32, u64);

/// A chunk's receipts by replica, as the primary collected them.
pub type Receipts = HashMap<NodeId, Said>;

/// Why a confirm is refused (nothing is committed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfirmError {
    /// A replica stored other bytes than the confirm says.
    #[error(
        "chunk {index} ({chunk}): replica {node} stored {size} bytes with crc32c {crc:08x}, but \
         the confirm says {want_size} bytes with crc32c {want_crc:08x}; nothing was committed"
    )]
    Mismatch {
        index: usize,
        chunk: ChunkId,
        node: NodeId,
        crc: u32,
        size: u64,
        want_crc: u32,
        want_size: u64,
    },
    /// Too few replicas vouched for a chunk within the wait.
    #[error(
        "chunk {index} ({chunk}): {vouched} of the {named} replicas named vouched for crc32c \
         {crc:08x} (a receipt or their own chunk report within {waited}); the write quorum is \
         {quorum}; nothing was committed"
    )]
    QuorumShort {
        index: usize,
        chunk: ChunkId,
        vouched: usize,
        named: usize,
        crc: u32,
        quorum: usize,
        /// How long the edge waited for reports, for the message.
        waited: String,
    },
}

/// The replicas that vouched so far, per chunk, in the order named.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Vouched {
    per_chunk: Vec<Vec<NodeId>>,
}

impl Vouched {
    /// Nothing vouched yet for `chunks` chunks.
    pub fn new(chunks: usize) -> Self {
        Vouched {
            per_chunk: vec![Vec::new(); chunks],
        }
    }

    /// Replicas of chunk `i` that vouched.
    pub fn of(&self, i: usize) -> &[NodeId] {
        &self.per_chunk[i]
    }
}

/// One pass: adds every named replica whose receipt or chunk report (via
/// `reported`) matches, fails on the first that contradicts the confirm,
/// and returns whether some chunk is still short of `quorum` (at least 1).
pub fn check(
    records: &[ChunkRecord],
    receipts: &[Receipts],
    reported: impl Fn(&ChunkId, &NodeId) -> Option<u32>,
    quorum: usize,
    vouched: &mut Vouched,
) -> Result<bool, ConfirmError> {
    let mut short = false;
    for (i, rec) in records.iter().enumerate() {
        let done = &mut vouched.per_chunk[i];
        for node in &rec.replicas {
            if done.contains(node) {
                continue;
            }
            let said = receipts
                .get(i)
                .and_then(|r| r.get(node).copied())
                .or_else(|| reported(&rec.id, node).map(|crc| (crc, rec.size)));
            match said {
                Some((crc, size)) if crc == rec.checksum && size == rec.size => {
                    done.push(node.clone())
                }
                Some((crc, size)) => {
                    return Err(ConfirmError::Mismatch {
                        index: i,
                        chunk: rec.id.clone(),
                        node: node.clone(),
                        crc,
                        size,
                        want_crc: rec.checksum,
                        want_size: rec.size,
                    });
                }
                None => {}
            }
        }
        if done.len() < quorum.max(1) {
            short = true;
        }
    }
    Ok(short)
}

/// The records to commit: each chunk keeps only the replicas that
/// vouched, or the confirm fails if one is short of `quorum`.
pub fn finish(
    mut records: Vec<ChunkRecord>,
    vouched: &Vouched,
    quorum: usize,
    waited: std::time::Duration,
) -> Result<Vec<ChunkRecord>, ConfirmError> {
    for (i, rec) in records.iter_mut().enumerate() {
        let ok = vouched.of(i);
        if ok.len() < quorum.max(1) {
            return Err(ConfirmError::QuorumShort {
                index: i,
                chunk: rec.id.clone(),
                vouched: ok.len(),
                named: rec.replicas.len(),
                crc: rec.checksum,
                quorum,
                waited: format!("{waited:?}"),
            });
        }
        rec.replicas.retain(|n| ok.contains(n));
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn n(i: u128) -> NodeId {
        NodeId::from_u128(i)
    }

    fn rec(replicas: &[u128]) -> ChunkRecord {
        ChunkRecord {
            id: ChunkId::from_u128(99),
            checksum: 7,
            size: 100,
            algorithm: 1,
            replicas: replicas.iter().map(|&i| n(i)).collect(),
        }
    }

    #[test]
    fn a_replica_counts_by_its_receipt_or_its_own_report_and_nothing_else() {
        let records = vec![rec(&[1, 2, 3])];
        let receipts = vec![Receipts::from([(n(1), (7, 100))])];
        let mut v = Vouched::new(1);
        // Node 1 by receipt, node 2 by its report, node 3 said nothing.
        let reported = |_: &ChunkId, node: &NodeId| (*node == n(2)).then_some(7);
        let short = check(&records, &receipts, reported, 3, &mut v).unwrap();
        assert!(short, "two of three vouched");
        assert_eq!(v.of(0), &[n(1), n(2)]);
        // Quorum 2: enough, and the silent replica is dropped from the record.
        assert!(!check(&records, &receipts, reported, 2, &mut v).unwrap());
        let out = finish(records, &v, 2, Duration::ZERO).unwrap();
        assert_eq!(out[0].replicas, vec![n(1), n(2)]);
    }

    #[test]
    fn a_replica_that_stored_other_bytes_fails_the_confirm() {
        let records = vec![rec(&[1, 2])];
        let mut v = Vouched::new(1);
        let receipts = vec![Receipts::from([(n(2), (7, 99))])];
        let err = check(&records, &receipts, |_, _| None, 1, &mut v).unwrap_err();
        assert!(
            matches!(err, ConfirmError::Mismatch { size: 99, .. }),
            "{err}"
        );
        // A report with another checksum is as bad as a receipt.
        let mut v = Vouched::new(1);
        let err = check(&records, &[Receipts::new()], |_, _| Some(8), 1, &mut v).unwrap_err();
        assert!(
            matches!(err, ConfirmError::Mismatch { crc: 8, .. }),
            "{err}"
        );
    }

    #[test]
    fn too_few_vouching_replicas_fail_with_the_count_and_quorum() {
        let records = vec![rec(&[1, 2])];
        let mut v = Vouched::new(1);
        assert!(check(&records, &[Receipts::new()], |_, _| None, 2, &mut v).unwrap());
        let err = finish(records, &v, 2, Duration::from_secs(3)).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("0 of the 2 replicas"), "{msg}");
        assert!(msg.contains("the write quorum is 2"), "{msg}");
        // Quorum 0 still needs one replica that vouched.
        let records = vec![rec(&[1])];
        assert!(finish(records, &Vouched::new(1), 0, Duration::ZERO).is_err());
    }
}

//! Faults a test arms on the filesystem: an errno (EIO, ENOSPC, …) on
//! chosen operations and paths, after a number of bytes or at random with a
//! seed, and added latency (a slow disk).

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The operations a fault or a latency rule can match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Read,
    Write,
    /// fsync and fdatasync of files and directories.
    Fsync,
    /// create, mknod, mkdir, link.
    Create,
    Rename,
    /// unlink and rmdir.
    Unlink,
    Open,
    /// Any of the above.
    Any,
}

impl Op {
    fn matches(self, op: Op) -> bool {
        self == Op::Any || self == op
    }
}

/// One armed fault. Build with [`Fault::eio`] / [`Fault::enospc`] /
/// [`Fault::errno`] and the builder methods.
#[derive(Debug, Clone)]
pub struct Fault {
    op: Op,
    path: Option<String>,
    errno: i32,
    after_bytes: u64,
    probability: f64,
    seed: u64,
    limit: Option<u64>,
}

impl Fault {
    pub fn errno(op: Op, errno: i32) -> Self {
        Fault {
            op,
            path: None,
            errno,
            after_bytes: 0,
            probability: 1.0,
            seed: 0,
            limit: None,
        }
    }

    pub fn eio(op: Op) -> Self {
        Self::errno(op, libc::EIO)
    }

    pub fn enospc(op: Op) -> Self {
        Self::errno(op, libc::ENOSPC)
    }

    /// Only on paths (relative to the mount, `a/b/c`) containing `part`.
    pub fn path(mut self, part: impl Into<String>) -> Self {
        self.path = Some(part.into());
        self
    }

    /// Reads and writes: the first `n` matching bytes pass (a write that
    /// crosses the mark is cut short at it, a read that crosses it fails),
    /// everything after fails.
    pub fn after_bytes(mut self, n: u64) -> Self {
        self.after_bytes = n;
        self
    }

    /// Fails each matching operation with probability `p`, drawn from a
    /// generator seeded with `seed` (the same seed, the same choices).
    pub fn random(mut self, p: f64, seed: u64) -> Self {
        self.probability = p;
        self.seed = seed;
        self
    }

    /// Fires at most `n` times, then passes everything.
    pub fn times(mut self, n: u64) -> Self {
        self.limit = Some(n);
        self
    }
}

/// Handle of an armed fault (to disarm it or read how often it fired).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FaultId(pub u64);

#[derive(Debug)]
struct Armed {
    id: FaultId,
    fault: Fault,
    rng: StdRng,
    bytes_seen: u64,
    fired: u64,
}

/// A latency rule: every matching operation waits `delay` first.
#[derive(Debug, Clone)]
pub struct Latency {
    pub op: Op,
    pub path: Option<String>,
    pub delay: Duration,
}

/// The verdict on one operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Go ahead with up to this many bytes (the whole length if not cut).
    Pass(u64),
    Fail(i32),
}

#[derive(Debug, Default)]
pub struct Faults {
    armed: Vec<Armed>,
    latency: Vec<Latency>,
    next_id: u64,
    /// Faults fired by ids no longer armed.
    fired_disarmed: std::collections::HashMap<FaultId, u64>,
}

fn path_matches(rule: &Option<String>, path: &str) -> bool {
    rule.as_deref().is_none_or(|p| path.contains(p))
}

impl Faults {
    pub fn arm(&mut self, fault: Fault) -> FaultId {
        self.next_id += 1;
        let id = FaultId(self.next_id);
        let rng = StdRng::seed_from_u64(fault.seed);
        self.armed.push(Armed {
            id,
            fault,
            rng,
            bytes_seen: 0,
            fired: 0,
        });
        id
    }

    pub fn disarm(&mut self, id: FaultId) {
        if let Some(pos) = self.armed.iter().position(|a| a.id == id) {
            let a = self.armed.remove(pos);
            self.fired_disarmed.insert(id, a.fired);
        }
    }

    pub fn clear(&mut self) {
        let ids: Vec<FaultId> = self.armed.iter().map(|a| a.id).collect();
        for id in ids {
            self.disarm(id);
        }
        self.latency.clear();
    }

    pub fn fired(&self, id: FaultId) -> u64 {
        self.armed
            .iter()
            .find(|a| a.id == id)
            .map(|a| a.fired)
            .or_else(|| self.fired_disarmed.get(&id).copied())
            .unwrap_or(0)
    }

    pub fn add_latency(&mut self, rule: Latency) {
        self.latency.push(rule);
    }

    pub fn delay(&self, op: Op, path: &str) -> Duration {
        self.latency
            .iter()
            .filter(|l| l.op.matches(op) && path_matches(&l.path, path))
            .map(|l| l.delay)
            .sum()
    }

    /// Decides one operation of `len` bytes (0 for operations without
    /// bytes) on `path`.
    pub fn check(&mut self, op: Op, path: &str, len: u64) -> Verdict {
        let mut allowed = len;
        for a in &mut self.armed {
            if !a.fault.op.matches(op) || !path_matches(&a.fault.path, path) {
                continue;
            }
            if a.fault.limit.is_some_and(|l| a.fired >= l) {
                continue;
            }
            if a.fault.after_bytes > 0 {
                let budget = a.fault.after_bytes.saturating_sub(a.bytes_seen);
                if len > 0 && budget >= len {
                    // Wholly before the mark.
                    a.bytes_seen += len;
                    continue;
                }
                if budget > 0 && (len == 0 || op == Op::Write) {
                    // A write crossing the mark is cut short at it (the
                    // next one fails), as a filling disk does; a read that
                    // crosses it fails whole (a short read would look like
                    // the end of the file). An operation without bytes
                    // before the mark passes.
                    a.bytes_seen += budget.min(len);
                    if len > 0 {
                        allowed = allowed.min(budget);
                    }
                    continue;
                }
            }
            if a.fault.probability < 1.0 && a.rng.random::<f64>() >= a.fault.probability {
                continue;
            }
            a.fired += 1;
            return Verdict::Fail(a.fault.errno);
        }
        Verdict::Pass(allowed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fault_matches_its_operation_and_path_only() {
        let mut f = Faults::default();
        let id = f.arm(Fault::eio(Op::Read).path("chunks/"));
        assert_eq!(f.check(Op::Write, "chunks/ab/x", 10), Verdict::Pass(10));
        assert_eq!(f.check(Op::Read, "tmp/x", 10), Verdict::Pass(10));
        assert_eq!(
            f.check(Op::Read, "chunks/ab/x", 10),
            Verdict::Fail(libc::EIO)
        );
        assert_eq!(f.fired(id), 1);
        f.disarm(id);
        assert_eq!(f.check(Op::Read, "chunks/ab/x", 10), Verdict::Pass(10));
        assert_eq!(f.fired(id), 1);
    }

    #[test]
    fn after_bytes_lets_that_many_through_then_fails() {
        let mut f = Faults::default();
        let id = f.arm(Fault::enospc(Op::Write).after_bytes(25));
        assert_eq!(f.check(Op::Write, "a", 10), Verdict::Pass(10));
        assert_eq!(f.check(Op::Write, "a", 10), Verdict::Pass(10));
        // Crosses the mark: cut short at it.
        assert_eq!(f.check(Op::Write, "a", 10), Verdict::Pass(5));
        assert_eq!(f.check(Op::Write, "a", 10), Verdict::Fail(libc::ENOSPC));
        assert_eq!(f.check(Op::Write, "a", 1), Verdict::Fail(libc::ENOSPC));
        assert_eq!(f.fired(id), 2);
        // Operations without bytes are not counted against the mark.
        assert_eq!(f.check(Op::Fsync, "a", 0), Verdict::Pass(0));

        // A read crossing the mark fails whole.
        let mut f = Faults::default();
        f.arm(Fault::eio(Op::Read).after_bytes(15));
        assert_eq!(f.check(Op::Read, "a", 10), Verdict::Pass(10));
        assert_eq!(f.check(Op::Read, "a", 10), Verdict::Fail(libc::EIO));
    }

    #[test]
    fn random_faults_follow_their_seed_and_limit() {
        let run = |seed| {
            let mut f = Faults::default();
            f.arm(Fault::eio(Op::Any).random(0.3, seed));
            (0..200)
                .map(|_| f.check(Op::Read, "x", 1) == Verdict::Pass(1))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(1), run(1));
        assert_ne!(run(1), run(2));
        let failures = run(1).iter().filter(|ok| !**ok).count();
        assert!((30..90).contains(&failures), "{failures} of 200 at p = 0.3");

        let mut f = Faults::default();
        let id = f.arm(Fault::eio(Op::Fsync).times(2));
        let verdicts: Vec<_> = (0..4).map(|_| f.check(Op::Fsync, "x", 0)).collect();
        assert_eq!(
            verdicts,
            [
                Verdict::Fail(libc::EIO),
                Verdict::Fail(libc::EIO),
                Verdict::Pass(0),
                Verdict::Pass(0)
            ]
        );
        assert_eq!(f.fired(id), 2);
    }

    #[test]
    fn latency_adds_up_over_matching_rules() {
        let mut f = Faults::default();
        f.add_latency(Latency {
            op: Op::Write,
            path: None,
            delay: Duration::from_millis(5),
        });
        f.add_latency(Latency {
            op: Op::Any,
            path: Some("slow".into()),
            delay: Duration::from_millis(7),
        });
        assert_eq!(f.delay(Op::Write, "fast"), Duration::from_millis(5));
        assert_eq!(f.delay(Op::Write, "slow/x"), Duration::from_millis(12));
        assert_eq!(f.delay(Op::Read, "fast"), Duration::ZERO);
    }
}

//! A linearizability checker for recorded histories of concurrent
//! operations (issue 17), and the model of the dfs namespace it checks
//! coordinator groups against ([`NamespaceModel`]; with puts, whole-file
//! reads and listings, [`FileModel`]).
//!
//! A history is linearizable when every operation can be given one instant
//! between its call and its return at which it took effect, such that the
//! operations, applied one at a time in the order of those instants to a
//! sequential model, return exactly what was recorded. That is what
//! "the group behaves like one coordinator" means to a client, across
//! leader changes included.
//!
//! ```text
//!   history (call/return times, results) ──▶ check(model, history)
//!       │ calls and returns in time order in linked lists (dancing links)
//!       │ depth-first search (Wing & Gong, with Lowe's memoisation):
//!       │   try to linearize each op whose call precedes the earliest
//!       │   return not yet linearized; model.step says whether its result
//!       │   fits; dead end at that return ⇒ undo the last choice
//!       ▼
//!   Linearizable | NotLinearizable(longest prefix, the op that could not
//!                  be placed, the model state there) | Unknown (work bound)
//! ```
//!
//! **Indeterminate operations.** A call whose outcome the client never
//! learnt (a timeout, UNAVAILABLE, a connection lost after the request was
//! sent) may have been applied, at any instant after its call, even long
//! after the client gave up (the command may sit in a Raft log and commit
//! under the next leader), or never. It is recorded with no return
//! ([`Event::ret`] `None`) and treated as returning at +∞: the search may
//! linearize it anywhere after its call, with whatever result the model
//! gives, and it does not have to linearize it at all: once every operation
//! with a known outcome is placed the history is accepted, the others
//! "never happened" (equivalently: happened after everything observed).
//!
//! **Memoisation.** Lowe's cache of explored (set of linearized ops, model
//! state) pairs, refined so that long histories stay cheap:
//!
//! - The set of linearized *determinate* ops is stored as (the earliest
//!   return not yet linearized, the few linearized ops returning after it):
//!   every determinate op returning earlier must already be linearized, so
//!   this names the set exactly in O(concurrency) space instead of a bitset
//!   of the whole history.
//! - Indeterminate ops are compared by dominance: a configuration that
//!   applied a *subset* of the indeterminate ops another one applied, with
//!   the same determinate set and the same state, can do everything the
//!   other can (it may still refrain from the rest). So once the first has
//!   been explored without success, the second is skipped.
//!
//! A configuration enters the cache when its subtree has been fully
//! explored (on backtrack), so a skipped configuration is dominated by one
//! that failed.
//!
//! **Search order and pruning** (each keeps the search complete; without
//! them, histories of a few thousand calls with a few dozen indeterminate
//! ones or eight concurrent clients ran into the work bound):
//!
//! 1. Read-only ops first ([`Model::read_only`]: a Stat, a call that
//!    failed): one that fits is placed and nothing else is tried at that
//!    point, since placing it at once never hurts (it changes no state, and
//!    everything still unplaced returns after its call).
//! 2. Then the other determinate ops, in call order.
//! 3. Indeterminate ops only when no determinate one fits, the latest call
//!    first: a lost call is applied lazily, just before the first answer
//!    that needs its effect, and one that never took effect is not tried
//!    until something is stuck.
//! 4. An indeterminate op is not applied where it changes nothing, nor
//!    where it only returns to a state the current path had since its last
//!    determinate op (renames back and forth): the configuration without it
//!    can do the same.
//! 5. Of identical indeterminate ops (the same call lost twice), only the
//!    earliest unapplied one is tried: they are interchangeable.
//!
//! **Work bound.** The problem is NP-complete; a pathological history (many
//! concurrent indeterminate ops whose combinations all differ) could make
//! the search run for ever. [`check_with`] counts model steps and returns
//! [`Outcome::Unknown`] past a bound, which tests treat as a failure.
//! Refuting costs more than accepting: every alternative must be explored,
//! so a non-linearizable history with many indeterminate ops may end as
//! `Unknown` (with the furthest dead end met) rather than
//! `NotLinearizable`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::{self, Debug};
use std::hash::Hash;
use std::time::{Duration, Instant};

use dfs_coordinator::path::NsPath;
use tonic::Code;

/// A sequential specification: what each operation does to a state and
/// returns. Deterministic: an op applied in a state has one result and one
/// next state.
pub trait Model {
    /// The model's state; compared and hashed for memoisation, so keep it
    /// small and canonical (equal states must compare equal).
    type State: Clone + Eq + Hash + Debug;
    /// An operation, with its arguments (equal ops do the same thing).
    type Op: Debug + PartialEq;
    /// What an operation returned.
    type Ret: Debug;

    /// The state before the history's first operation.
    fn init(&self) -> Self::State;

    /// Applies `op` in `state`. With `ret` `Some`, the state after `op`
    /// when `op` returns exactly `ret` in `state`, `None` when it cannot
    /// have returned that there. With `ret` `None` (an indeterminate op,
    /// whatever it returned is unknown), the state after `op`, or `None`
    /// when `op` cannot be applied in `state` at all. The possibility that
    /// an indeterminate op was never applied is the checker's business, not
    /// the model's.
    fn step(
        &self,
        state: &Self::State,
        op: &Self::Op,
        ret: Option<&Self::Ret>,
    ) -> Option<Self::State>;

    /// True when `op` returning `ret` never changes the state: in every
    /// state `s`, `step(s, op, Some(ret))` is `None` or `Some(s)` (a read,
    /// or a call that failed and so did nothing). The search places such an
    /// op as soon as it fits and tries nothing else there (placing it at
    /// once is never worse: it leaves the state as it is, and every op
    /// still unplaced returns after its call), which keeps many concurrent
    /// clients cheap. False when unsure: that only costs time.
    fn read_only(&self, _op: &Self::Op, _ret: &Self::Ret) -> bool {
        false
    }
}

/// One recorded call. Times are in any monotonic unit (nanoseconds since
/// the recording started, say) shared by every event of a history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event<Op, Ret> {
    /// Who called (for the explanation of a failure; the search itself uses
    /// only the times).
    pub client: usize,
    /// What was called.
    pub op: Op,
    /// When the call was sent.
    pub call: u64,
    /// What it returned and when the answer arrived; `None` when the
    /// outcome is unknown (indeterminate: applied at some instant after
    /// `call`, or never).
    pub ret: Option<(Ret, u64)>,
}

impl<Op, Ret> Event<Op, Ret> {
    /// A call that returned `ret` at `returned`.
    pub fn new(client: usize, op: Op, call: u64, ret: Ret, returned: u64) -> Self {
        Event {
            client,
            op,
            call,
            ret: Some((ret, returned)),
        }
    }

    /// A call whose outcome is unknown.
    pub fn indeterminate(client: usize, op: Op, call: u64) -> Self {
        Event {
            client,
            op,
            call,
            ret: None,
        }
    }

    /// True when the outcome is unknown.
    pub fn is_indeterminate(&self) -> bool {
        self.ret.is_none()
    }
}

/// Model steps a [`check`] may take before giving up with
/// [`Outcome::Unknown`]: about a minute of the namespace model in a debug
/// build, where the histories of the tests take well under a million.
pub const DEFAULT_MAX_STEPS: u64 = 20_000_000;

/// What the search did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Events in the history.
    pub ops: usize,
    /// Of them, indeterminate.
    pub indeterminate: usize,
    /// Model steps taken.
    pub steps: u64,
    /// Explored configurations remembered.
    pub cached: usize,
    /// Times the search undid a choice.
    pub backtracks: u64,
    /// Wall time of the check.
    pub elapsed: Duration,
}

/// Why a history is not linearizable: where the search got furthest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Ops (determinate and applied indeterminate ones) in the longest
    /// linearizable prefix found.
    pub linearized: usize,
    /// Its last ops, in linearization order (`#index client op -> result`).
    pub prefix_tail: Vec<String>,
    /// The model state after that prefix.
    pub state: String,
    /// The op whose answer arrived before it could be placed anywhere.
    pub stuck: String,
    /// The ops that were candidates there (invoked, not linearized), none
    /// of which could be placed next in a way that led further.
    pub candidates: Vec<String>,
}

/// The verdict of [`check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Some linearization explains every determinate result.
    Linearizable(Stats),
    /// None does.
    NotLinearizable(Box<Failure>, Stats),
    /// The work bound was reached first: neither proven nor refuted. With
    /// the furthest dead end met so far, where the search was stuck.
    Unknown(Option<Box<Failure>>, Stats),
}

impl Outcome {
    /// True only for [`Outcome::Linearizable`].
    pub fn is_linearizable(&self) -> bool {
        matches!(self, Outcome::Linearizable(_))
    }

    /// The search's figures, whatever the verdict.
    pub fn stats(&self) -> &Stats {
        match self {
            Outcome::Linearizable(s) | Outcome::NotLinearizable(_, s) | Outcome::Unknown(_, s) => s,
        }
    }
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ops ({} indeterminate), {} model steps, {} backtracks, {} cached, {:?}",
            self.ops, self.indeterminate, self.steps, self.backtracks, self.cached, self.elapsed
        )
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Linearizable(s) => write!(f, "linearizable: {s}"),
            Outcome::Unknown(None, s) => write!(
                f,
                "unknown: the work bound was reached before a verdict: {s}"
            ),
            Outcome::Unknown(Some(x), s) => {
                writeln!(
                    f,
                    "unknown: the work bound was reached before a verdict: {s}"
                )?;
                write!(f, "{x}")
            }
            Outcome::NotLinearizable(x, s) => {
                writeln!(f, "NOT linearizable: {s}")?;
                write!(f, "{x}")
            }
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "longest linearizable prefix: {} ops, ending with:",
            self.linearized
        )?;
        for op in &self.prefix_tail {
            writeln!(f, "    {op}")?;
        }
        writeln!(f, "model state after it: {}", self.state)?;
        writeln!(f, "could not be placed: {}", self.stuck)?;
        writeln!(f, "candidates at that point:")?;
        for op in &self.candidates {
            writeln!(f, "    {op}")?;
        }
        Ok(())
    }
}

/// [`check_with`] under [`DEFAULT_MAX_STEPS`].
pub fn check<M: Model>(model: &M, history: &[Event<M::Op, M::Ret>]) -> Outcome {
    check_with(model, history, DEFAULT_MAX_STEPS)
}

/// Ops shown of the prefix and of the candidates in a [`Failure`].
const SHOWN: usize = 16;

/// The search's memo key: (earliest unlinearized determinate return, by
/// return rank; the linearized determinate ops returning after it, by
/// rank; the interned model state).
type Key = (u32, Vec<u32>, u32);

/// One choice on the search path: `op` was linearized from state
/// `before`, reaching the configuration `key`. `forced`: `op` was a
/// read-only op that fit, so no other choice at that point needs trying.
struct Frame {
    op: usize,
    before: u32,
    key: Key,
    forced: bool,
}

/// Where the scan for the next op to linearize is, in the order the
/// candidates are tried.
#[derive(Clone, Copy)]
enum Scan {
    /// Read-only determinate ops, at this position of the determinate
    /// list.
    Reads(usize),
    /// The other determinate ops, at this position of the determinate
    /// list.
    Determinate(usize),
    /// At this position of the indeterminate list, backwards (latest call
    /// first), taking calls before position `limit` (the earliest
    /// unlinearized return).
    Indeterminate(usize, usize),
}

/// A history's calls and known returns in time order, as two doubly
/// linked lists over one position space (position = rank in time order):
/// the calls and returns of determinate ops, and the calls of
/// indeterminate ones. Linearized ops are unlinked, and relinked on
/// backtracking (dancing links). Plus the sets of linearized ops.
///
/// Two lists, so that the search tries the determinate candidates first
/// and an indeterminate op only when no determinate one fits: an
/// indeterminate op is then applied late, just before the first answer
/// that needs its effect, and one that never took effect is not tried at
/// all until something is stuck. Applying them eagerly (plain WGL order)
/// made every lost call that never took effect a detour through the rest
/// of the history.
struct Search {
    next: Vec<usize>,
    prev: Vec<usize>,
    is_return: Vec<bool>,
    op_of: Vec<usize>,
    call_pos: Vec<usize>,
    /// `None` for an indeterminate op (its return is at +∞, not listed).
    ret_pos: Vec<Option<usize>>,
    /// Order of each determinate op's return among all returns.
    rank: Vec<u32>,
    determinate: usize,
    /// Heads and tails of the two lists.
    det_head: usize,
    ind_head: usize,
    ind_tail: usize,
    /// Ranks of the linearized determinate ops.
    done: BTreeSet<u32>,
    /// The linearized (applied) indeterminate ops, sorted.
    applied: Vec<u32>,
}

impl Search {
    fn new<Op, Ret>(history: &[Event<Op, Ret>]) -> Search {
        // At a tie a call comes first, so that ops touching at one instant
        // count as concurrent.
        let mut entries: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * history.len());
        for (i, e) in history.iter().enumerate() {
            entries.push((e.call, false, i));
            if let Some((_, at)) = &e.ret {
                assert!(
                    *at >= e.call,
                    "event #{i} returned at {at}, before its call at {}",
                    e.call
                );
                entries.push((*at, true, i));
            }
        }
        entries.sort_unstable();
        let m = entries.len();
        let n = history.len();
        // Positions: 1..=m the entries, 0 and m + 1 the determinate list's
        // head and tail, m + 2 and m + 3 the indeterminate list's.
        let (det_head, det_tail, ind_head, ind_tail) = (0, m + 1, m + 2, m + 3);
        let mut s = Search {
            next: vec![usize::MAX; m + 4],
            prev: vec![usize::MAX; m + 4],
            is_return: vec![false; m + 4],
            op_of: vec![usize::MAX; m + 4],
            call_pos: vec![0; n],
            ret_pos: vec![None; n],
            rank: vec![u32::MAX; n],
            determinate: 0,
            det_head,
            ind_head,
            ind_tail,
            done: BTreeSet::new(),
            applied: Vec::new(),
        };
        let (mut det_last, mut ind_last) = (det_head, ind_head);
        for (i, &(_, is_return, op)) in entries.iter().enumerate() {
            let pos = i + 1;
            s.is_return[pos] = is_return;
            s.op_of[pos] = op;
            let last = if is_return {
                s.ret_pos[op] = Some(pos);
                s.rank[op] = s.determinate as u32;
                s.determinate += 1;
                &mut det_last
            } else {
                s.call_pos[op] = pos;
                if history[op].ret.is_some() {
                    &mut det_last
                } else {
                    &mut ind_last
                }
            };
            s.next[*last] = pos;
            s.prev[pos] = *last;
            *last = pos;
        }
        s.next[det_last] = det_tail;
        s.prev[det_tail] = det_last;
        s.next[ind_last] = ind_tail;
        s.prev[ind_tail] = ind_last;
        s.is_return[det_tail] = true; // never reached while an op is unplaced
        s
    }

    fn unlink(&mut self, p: usize) {
        let (a, b) = (self.prev[p], self.next[p]);
        self.next[a] = b;
        self.prev[b] = a;
    }

    fn relink(&mut self, p: usize) {
        let (a, b) = (self.prev[p], self.next[p]);
        self.next[a] = p;
        self.prev[b] = p;
    }

    fn all_placed(&self) -> bool {
        self.done.len() == self.determinate
    }

    /// Linearizes `op` next.
    fn place(&mut self, op: usize) {
        self.unlink(self.call_pos[op]);
        match self.ret_pos[op] {
            Some(r) => {
                self.unlink(r);
                self.done.insert(self.rank[op]);
            }
            None => {
                let at = self.applied.binary_search(&(op as u32)).unwrap_err();
                self.applied.insert(at, op as u32);
            }
        }
    }

    /// Undoes [`Search::place`] of the op placed last (in the reverse
    /// order of its unlinking, as dancing links require).
    fn unplace(&mut self, op: usize) {
        match self.ret_pos[op] {
            Some(r) => {
                self.relink(r);
                self.done.remove(&self.rank[op]);
            }
            None => {
                let at = self.applied.binary_search(&(op as u32)).unwrap();
                self.applied.remove(at);
            }
        }
        self.relink(self.call_pos[op]);
    }

    /// The position of the earliest unlinearized return: the first return
    /// in the determinate list (only calls of pending ops precede it).
    fn first_return(&self) -> usize {
        let mut p = self.next[self.det_head];
        while !self.is_return[p] {
            p = self.next[p];
        }
        p
    }

    /// The memo key of the current configuration in `state`.
    fn key(&self, state: u32) -> Key {
        if self.all_placed() {
            return (u32::MAX, Vec::new(), state);
        }
        let first = self.rank[self.op_of[self.first_return()]];
        (first, self.done.range(first..).copied().collect(), state)
    }

    /// The last unplaced indeterminate call before position `limit` (the
    /// list's head when there is none).
    fn last_call_before(&self, limit: usize) -> usize {
        let mut p = self.prev[self.ind_tail];
        while p != self.ind_head && p > limit {
            p = self.prev[p];
        }
        p
    }

    /// The unplaced calls before position `limit`, determinate first.
    fn candidates(&self, limit: usize) -> Vec<usize> {
        let mut out = Vec::new();
        let mut p = self.next[self.det_head];
        while p < limit && out.len() < SHOWN {
            if !self.is_return[p] {
                out.push(self.op_of[p]);
            }
            p = self.next[p];
        }
        let mut p = self.next[self.ind_head];
        while p != self.ind_tail && p < limit && out.len() < SHOWN {
            out.push(self.op_of[p]);
            p = self.next[p];
        }
        out
    }
}

/// Checks `history` against `model`, taking at most `max_steps` model
/// steps. Panics when an event returns before it was called (a recording
/// bug, not a property of the system).
pub fn check_with<M: Model>(
    model: &M,
    history: &[Event<M::Op, M::Ret>],
    max_steps: u64,
) -> Outcome {
    let started = Instant::now();
    let mut stats = Stats {
        ops: history.len(),
        indeterminate: history.iter().filter(|e| e.is_indeterminate()).count(),
        ..Stats::default()
    };
    let mut s = Search::new(history);
    let read_only: Vec<bool> = history
        .iter()
        .map(|e| {
            e.ret
                .as_ref()
                .is_some_and(|(r, _)| model.read_only(&e.op, r))
        })
        .collect();
    // Identical indeterminate ops are interchangeable: of those invoked,
    // the search applies the earliest unapplied one only (applying a later
    // twin instead leads to the same states and leaves a twin that is
    // available wherever the earlier one would be). For each, its nearest
    // earlier twin.
    let mut twin: Vec<Option<usize>> = vec![None; history.len()];
    let mut lost: Vec<usize> = (0..history.len())
        .filter(|&i| history[i].is_indeterminate())
        .collect();
    lost.sort_by_key(|&i| s.call_pos[i]);
    for (k, &i) in lost.iter().enumerate() {
        twin[i] = lost[..k]
            .iter()
            .rev()
            .find(|&&j| history[j].op == history[i].op)
            .copied();
    }

    // Interned model states: the memo and the stack hold small ids.
    let mut states: Vec<M::State> = vec![model.init()];
    let mut state_ids: HashMap<M::State, u32> = HashMap::from([(states[0].clone(), 0)]);
    // Failed configurations: key → the sets of applied indeterminate ops
    // (sorted) it was explored with, none a subset of another.
    let mut cache: HashMap<Key, Vec<Vec<u32>>> = HashMap::new();
    let mut stack: Vec<Frame> = Vec::new();
    let mut state: u32 = 0;
    let mut best: Option<Failure> = None;

    let describe = |i: usize| -> String {
        let e = &history[i];
        match &e.ret {
            Some((r, at)) => format!(
                "#{i} client {} {:?} -> {:?} [{}..{}]",
                e.client, e.op, r, e.call, at
            ),
            None => format!(
                "#{i} client {} {:?} -> ? (indeterminate) [{}..]",
                e.client, e.op, e.call
            ),
        }
    };
    let finish = |mut stats: Stats, cache: &HashMap<Key, Vec<Vec<u32>>>| {
        stats.cached = cache.len();
        stats.elapsed = started.elapsed();
        stats
    };

    let mut scan = Scan::Reads(s.next[s.det_head]);
    loop {
        if s.all_placed() {
            return Outcome::Linearizable(finish(stats, &cache));
        }
        // The next candidate, or the position of the return at which the
        // current configuration is a dead end.
        let candidate = match scan {
            Scan::Reads(p) if s.is_return[p] => {
                scan = Scan::Determinate(s.next[s.det_head]);
                continue;
            }
            Scan::Determinate(p) if s.is_return[p] => {
                // No determinate call before this return fits: the
                // indeterminate ones invoked before it, then.
                scan = Scan::Indeterminate(s.last_call_before(p), p);
                continue;
            }
            // Tried in the other phase.
            Scan::Reads(p) if !read_only[s.op_of[p]] => {
                scan = Scan::Reads(s.next[p]);
                continue;
            }
            Scan::Determinate(p) if read_only[s.op_of[p]] => {
                scan = Scan::Determinate(s.next[p]);
                continue;
            }
            Scan::Reads(p) | Scan::Determinate(p) => Ok(s.op_of[p]),
            Scan::Indeterminate(p, limit) if p == s.ind_head => Err(limit),
            Scan::Indeterminate(p, limit) => {
                let op = s.op_of[p];
                if let Some(j) = twin[op]
                    && s.applied.binary_search(&(j as u32)).is_err()
                {
                    scan = Scan::Indeterminate(s.prev[p], limit);
                    continue;
                }
                Ok(op)
            }
        };
        let dead_end = match candidate {
            Err(limit) => Some(limit),
            Ok(op) => {
                stats.steps += 1;
                if stats.steps > max_steps {
                    return Outcome::Unknown(best.map(Box::new), finish(stats, &cache));
                }
                let e = &history[op];
                let ret = e.ret.as_ref().map(|r| &r.0);
                let mut placed = false;
                let mut refuted = false;
                if let Some(after) = model.step(&states[state as usize], &e.op, ret) {
                    let after = match state_ids.get(&after) {
                        Some(id) => *id,
                        None => {
                            let id = states.len() as u32;
                            states.push(after.clone());
                            state_ids.insert(after, id);
                            id
                        }
                    };
                    // An indeterminate op that changes nothing here is
                    // better left unapplied (it may still be applied later,
                    // or never): applying it would only double the work
                    // below. Likewise one that returns to the state of a
                    // configuration on the path that differs only by
                    // indeterminate ops applied since (renames back and
                    // forth): that configuration, still being explored,
                    // can do all this one can.
                    let back = ret.is_none()
                        && (after == state
                            || stack
                                .iter()
                                .rev()
                                .take_while(|f| history[f.op].ret.is_none())
                                .any(|f| f.before == after));
                    if !back {
                        s.place(op);
                        let key = s.key(after);
                        let dominated = cache
                            .get(&key)
                            .is_some_and(|sets| sets.iter().any(|a| is_subset(a, &s.applied)));
                        if dominated {
                            s.unplace(op);
                            // A read-only op that fits here is as good as
                            // any choice (below); what it leads to failed.
                            refuted = read_only[op];
                        } else {
                            stack.push(Frame {
                                op,
                                before: state,
                                key,
                                forced: read_only[op],
                            });
                            state = after;
                            placed = true;
                        }
                    }
                }
                if placed {
                    scan = Scan::Reads(s.next[s.det_head]);
                    None
                } else if refuted {
                    Some(s.first_return())
                } else {
                    scan = match scan {
                        Scan::Reads(p) => Scan::Reads(s.next[p]),
                        Scan::Determinate(p) => Scan::Determinate(s.next[p]),
                        Scan::Indeterminate(p, limit) => Scan::Indeterminate(s.prev[p], limit),
                    };
                    None
                }
            }
        };
        let Some(limit) = dead_end else {
            continue;
        };
        // The answer at `limit` arrived and that op is not placed: every
        // op linearized from here on would follow it. Dead end.
        if best.as_ref().is_none_or(|b| stack.len() > b.linearized) {
            best = Some(Failure {
                linearized: stack.len(),
                prefix_tail: stack[stack.len().saturating_sub(SHOWN)..]
                    .iter()
                    .map(|f| describe(f.op))
                    .collect(),
                state: format!("{:?}", states[state as usize]),
                stuck: describe(s.op_of[limit]),
                candidates: s.candidates(limit).into_iter().map(describe).collect(),
            });
        }
        loop {
            let Some(frame) = stack.pop() else {
                let failure = best.expect("recorded at the dead end above");
                return Outcome::NotLinearizable(Box::new(failure), finish(stats, &cache));
            };
            stats.backtracks += 1;
            // The configuration `frame.op` reached is fully explored.
            let sets = cache.entry(frame.key).or_default();
            sets.retain(|a| !is_subset(&s.applied, a));
            sets.push(s.applied.clone());
            s.unplace(frame.op);
            state = frame.before;
            // A read-only op that fit leaves nothing else to try where it
            // was placed: that configuration is explored too.
            if frame.forced {
                continue;
            }
            let at = s.call_pos[frame.op];
            scan = if history[frame.op].ret.is_some() {
                Scan::Determinate(s.next[at])
            } else {
                Scan::Indeterminate(s.prev[at], s.first_return())
            };
            break;
        }
    }
}

/// Whether sorted `a` ⊆ sorted `b`.
fn is_subset(a: &[u32], b: &[u32]) -> bool {
    let mut b = b.iter();
    a.iter().all(|x| b.any(|y| y == x))
}

// ---------------------------------------------------------------------------
// The dfs namespace.

/// An entry of the namespace, as a Stat shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Node {
    /// A directory (Stat reports version 0).
    Dir,
    /// A confirmed file and its version.
    File {
        /// `FileInfo.version`.
        version: u64,
    },
}

/// Every entry below the root by normalised path (`/a/b`); the root is
/// implicit and always a directory.
pub type NsState = BTreeMap<String, Node>;

/// The namespace calls a history records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NsOp {
    /// `Mkdir`.
    Mkdir {
        /// Path.
        path: String,
        /// Create missing parents; an existing directory is no error.
        parents: bool,
    },
    /// `Delete`.
    Delete {
        /// Path.
        path: String,
        /// Also a non-empty directory.
        recursive: bool,
    },
    /// `Rename`.
    Rename {
        /// From.
        source: String,
        /// To.
        destination: String,
    },
    /// `Stat` (a linearizable read).
    Stat {
        /// Path.
        path: String,
    },
}

/// What a namespace call returned, as finely as the wire tells it apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NsRet {
    /// A `FileInfo`: Stat's entry, Mkdir's directory, Rename's moved entry.
    Entry(Node),
    /// `DeleteResponse`: the files removed.
    Deleted {
        /// `files_deleted`.
        files: u64,
    },
    /// The gRPC code of a namespace error (coordinator/src/service/convert.rs:
    /// NotFound and ParentNotFound → NOT_FOUND, AlreadyExists →
    /// ALREADY_EXISTS, NotADirectory, IsADirectory and DirectoryNotEmpty →
    /// FAILED_PRECONDITION, a bad path, Root and IntoItself →
    /// INVALID_ARGUMENT).
    Err(Code),
}

/// The dfs namespace as `coordinator/src/namespace.rs` defines Mkdir,
/// Delete, Rename and Stat (the unit tests below compare it with the real
/// [`dfs_coordinator::namespace::Namespace`] on random sequences), from an
/// initial set of entries.
#[derive(Debug, Clone, Default)]
pub struct NamespaceModel {
    initial: NsState,
}

type NsResult<T> = Result<T, Code>;

impl NamespaceModel {
    /// An empty namespace (only the root).
    pub fn new() -> Self {
        NamespaceModel::default()
    }

    /// A namespace holding `entries` (missing parents become directories),
    /// for histories recorded after some setup.
    pub fn with_entries(entries: impl IntoIterator<Item = (String, Node)>) -> Self {
        let mut initial = NsState::new();
        for (path, node) in entries {
            let p = NsPath::parse(&path).expect("a valid path");
            let mut prefix = String::new();
            for c in &p.components()[..p.components().len() - 1] {
                prefix.push('/');
                prefix.push_str(c);
                initial.insert(prefix.clone(), Node::Dir);
            }
            initial.insert(p.to_string(), node);
        }
        NamespaceModel { initial }
    }

    /// Applies `op` to `state` the way the coordinator does; what it
    /// returns. A failed op changes nothing.
    pub fn apply(state: &mut NsState, op: &NsOp) -> NsRet {
        let r = match op {
            NsOp::Mkdir { path, parents } => mkdir(state, path, *parents),
            NsOp::Delete { path, recursive } => delete(state, path, *recursive),
            NsOp::Rename {
                source,
                destination,
            } => rename(state, source, destination),
            NsOp::Stat { path } => parse(path).and_then(|p| stat(state, &p)).map(NsRet::Entry),
        };
        r.unwrap_or_else(NsRet::Err)
    }
}

impl Model for NamespaceModel {
    type State = NsState;
    type Op = NsOp;
    type Ret = NsRet;

    fn init(&self) -> NsState {
        self.initial.clone()
    }

    fn step(&self, state: &NsState, op: &NsOp, ret: Option<&NsRet>) -> Option<NsState> {
        let mut next = state.clone();
        let got = NamespaceModel::apply(&mut next, op);
        ret.is_none_or(|r| *r == got).then_some(next)
    }

    /// A Stat, and any call that failed: the coordinator validates a
    /// command before applying it, and one that fails changes nothing
    /// (coordinator/src/namespace.rs).
    fn read_only(&self, op: &NsOp, ret: &NsRet) -> bool {
        matches!(op, NsOp::Stat { .. }) || matches!(ret, NsRet::Err(_))
    }
}

fn parse(path: &str) -> NsResult<NsPath> {
    NsPath::parse(path).map_err(|_| Code::InvalidArgument)
}

/// `/a/b` and its ancestors below the root, top down: `/a`, `/a/b`.
fn prefixes(p: &NsPath) -> Vec<String> {
    let mut out = Vec::with_capacity(p.components().len());
    let mut s = String::new();
    for c in p.components() {
        s.push('/');
        s.push_str(c);
        out.push(s.clone());
    }
    out
}

/// `Namespace::dir`: `p` must be a directory, every component too.
fn dir(state: &NsState, p: &NsPath) -> NsResult<()> {
    for q in prefixes(p) {
        match state.get(&q) {
            Some(Node::Dir) => {}
            Some(Node::File { .. }) => return Err(Code::FailedPrecondition),
            None => return Err(Code::NotFound),
        }
    }
    Ok(())
}

/// `Namespace::lookup` of a non-root path.
fn lookup(state: &NsState, p: &NsPath) -> NsResult<Node> {
    dir(state, &p.parent())?;
    state.get(&p.to_string()).copied().ok_or(Code::NotFound)
}

fn stat(state: &NsState, p: &NsPath) -> NsResult<Node> {
    if p.is_root() {
        return Ok(Node::Dir);
    }
    lookup(state, p)
}

/// The keys of `p` and everything below it.
fn subtree<V>(state: &BTreeMap<String, V>, p: &str) -> Vec<String> {
    let below = format!("{p}/");
    let mut keys: Vec<String> = state
        .range(below.clone()..)
        .take_while(|(k, _)| k.starts_with(&below))
        .map(|(k, _)| k.clone())
        .collect();
    if state.contains_key(p) {
        keys.push(p.to_string());
    }
    keys
}

fn mkdir(state: &mut NsState, path: &str, parents: bool) -> NsResult<NsRet> {
    let p = parse(path)?;
    if p.is_root() {
        return if parents {
            Ok(NsRet::Entry(Node::Dir))
        } else {
            Err(Code::AlreadyExists)
        };
    }
    let all = prefixes(&p);
    for (i, q) in all.iter().enumerate() {
        let last = i + 1 == all.len();
        match state.get(q) {
            Some(Node::Dir) if last => {
                return if parents {
                    Ok(NsRet::Entry(Node::Dir))
                } else {
                    Err(Code::AlreadyExists)
                };
            }
            Some(Node::Dir) => {}
            Some(Node::File { .. }) if last => return Err(Code::AlreadyExists),
            Some(Node::File { .. }) => return Err(Code::FailedPrecondition),
            None => {
                if !last && !parents {
                    return Err(Code::NotFound);
                }
                break;
            }
        }
    }
    for q in all {
        state.entry(q).or_insert(Node::Dir);
    }
    Ok(NsRet::Entry(Node::Dir))
}

fn delete(state: &mut NsState, path: &str, recursive: bool) -> NsResult<NsRet> {
    let p = parse(path)?;
    if p.is_root() {
        return Err(Code::InvalidArgument);
    }
    let node = lookup(state, &p)?;
    let keys = subtree(state, &p.to_string());
    if node == Node::Dir && !recursive && keys.len() > 1 {
        return Err(Code::FailedPrecondition);
    }
    let mut files = 0;
    for k in keys {
        if let Some(Node::File { .. }) = state.remove(&k) {
            files += 1;
        }
    }
    Ok(NsRet::Deleted { files })
}

fn rename(state: &mut NsState, source: &str, destination: &str) -> NsResult<NsRet> {
    let (s, d) = (parse(source)?, parse(destination)?);
    if s.is_root() || d.is_root() {
        return Err(Code::InvalidArgument);
    }
    let node = lookup(state, &s)?;
    if d.starts_with(&s) && d != s {
        return Err(Code::InvalidArgument);
    }
    dir(state, &d.parent())?;
    if lookup(state, &d).is_ok() {
        return Err(Code::AlreadyExists);
    }
    let (from, to) = (s.to_string(), d.to_string());
    for k in subtree(state, &from) {
        let v = state.remove(&k).expect("listed above");
        state.insert(format!("{to}{}", &k[from.len()..]), v);
    }
    Ok(NsRet::Entry(node))
}

// ---------------------------------------------------------------------------
// Files with contents: the namespace, plus which put's bytes each file
// holds (issue 19, scenario 10: clients racing puts, renames, deletes,
// mkdirs, listings and reads on a few shared paths).

/// The calls on files with contents: the namespace calls, puts, whole-file
/// reads and listings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileOp {
    /// A namespace call.
    Ns(NsOp),
    /// A put (UploadFile, the chunks, ConfirmUpload), taking effect at its
    /// confirm: writes the bytes the test calls `content` (an id unique to
    /// this put) at `path`, creating missing parents; with `overwrite` a
    /// file there is replaced (its version + 1), else it is
    /// ALREADY_EXISTS. A directory there, or a file among the parents, is
    /// FAILED_PRECONDITION (`Namespace::check_upload_target`, at the plan
    /// and again at the confirm: one answer of one state either way).
    Put {
        /// Path.
        path: String,
        /// Which bytes (the test's id of them).
        content: u64,
        /// Replace an existing file.
        overwrite: bool,
    },
    /// A whole-file read (DownloadFile, then the chunks): the file as of
    /// its chunk map.
    Read {
        /// Path.
        path: String,
    },
    /// ListDirectory (one page).
    List {
        /// Path.
        path: String,
    },
}

/// What a [`FileOp`] returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileRet {
    /// A namespace call's answer; a put's (the file's entry, or the error);
    /// the error of a read or a listing.
    Ns(NsRet),
    /// A read's file: its version and which put's bytes it holds.
    Read {
        /// `FileInfo.version`.
        version: u64,
        /// The content id of the bytes read (0 for a file of the initial
        /// namespace).
        content: u64,
    },
    /// A listing: (name, entry) of every child, in name order.
    Listing(Vec<(String, Node)>),
}

/// The state of [`FileModel`]: the namespace, and the content of every file
/// a put wrote, by path (following renames, gone with deletes).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct FileState {
    /// The namespace.
    pub ns: NsState,
    /// Content ids by path (files of the initial namespace have none).
    pub contents: BTreeMap<String, u64>,
}

/// [`NamespaceModel`] with puts, reads and listings: files hold one put's
/// bytes each, known by the test's id of them.
#[derive(Debug, Clone, Default)]
pub struct FileModel {
    namespace: NamespaceModel,
}

impl FileModel {
    /// Over `namespace`'s initial entries (its files read as content 0).
    pub fn new(namespace: NamespaceModel) -> Self {
        FileModel { namespace }
    }

    /// Applies `op` to `state` the way the coordinator does; what it
    /// returns. A failed op changes nothing.
    pub fn apply(state: &mut FileState, op: &FileOp) -> FileRet {
        let r = match op {
            FileOp::Ns(op) => {
                let r = NamespaceModel::apply(&mut state.ns, op);
                if !matches!(r, NsRet::Err(_)) {
                    follow_contents(&mut state.contents, op);
                }
                return FileRet::Ns(r);
            }
            FileOp::Put {
                path,
                content,
                overwrite,
            } => put(state, path, *content, *overwrite).map(FileRet::Ns),
            FileOp::Read { path } => read(state, path),
            FileOp::List { path } => list(&state.ns, path),
        };
        r.unwrap_or_else(|code| FileRet::Ns(NsRet::Err(code)))
    }
}

impl Model for FileModel {
    type State = FileState;
    type Op = FileOp;
    type Ret = FileRet;

    fn init(&self) -> FileState {
        FileState {
            ns: self.namespace.init(),
            contents: BTreeMap::new(),
        }
    }

    fn step(&self, state: &FileState, op: &FileOp, ret: Option<&FileRet>) -> Option<FileState> {
        let mut next = state.clone();
        let got = FileModel::apply(&mut next, op);
        ret.is_none_or(|r| *r == got).then_some(next)
    }

    /// Reads, listings, Stats, and any call that failed.
    fn read_only(&self, op: &FileOp, ret: &FileRet) -> bool {
        matches!(
            op,
            FileOp::Read { .. } | FileOp::List { .. } | FileOp::Ns(NsOp::Stat { .. })
        ) || matches!(ret, FileRet::Ns(NsRet::Err(_)))
    }
}

/// The contents after a namespace call `op` that succeeded: moved with a
/// rename, gone with a delete.
fn follow_contents(contents: &mut BTreeMap<String, u64>, op: &NsOp) {
    let key = |p: &str| NsPath::parse(p).expect("the call succeeded").to_string();
    match op {
        NsOp::Delete { path, .. } => {
            for k in subtree(contents, &key(path)) {
                contents.remove(&k);
            }
        }
        NsOp::Rename {
            source,
            destination,
        } => {
            let (from, to) = (key(source), key(destination));
            for k in subtree(contents, &from) {
                let v = contents.remove(&k).expect("listed above");
                contents.insert(format!("{to}{}", &k[from.len()..]), v);
            }
        }
        NsOp::Mkdir { .. } | NsOp::Stat { .. } => {}
    }
}

fn put(state: &mut FileState, path: &str, content: u64, overwrite: bool) -> NsResult<NsRet> {
    let p = parse(path)?;
    if p.is_root() {
        return Err(Code::FailedPrecondition);
    }
    let all = prefixes(&p);
    let (target, parents) = all.split_last().expect("not the root");
    for q in parents {
        match state.ns.get(q) {
            Some(Node::Dir) => {}
            Some(Node::File { .. }) => return Err(Code::FailedPrecondition),
            // Nothing below exists either: created at the confirm.
            None => break,
        }
    }
    let version = match state.ns.get(target) {
        None => 1,
        Some(Node::Dir) => return Err(Code::FailedPrecondition),
        Some(Node::File { .. }) if !overwrite => return Err(Code::AlreadyExists),
        Some(Node::File { version }) => version + 1,
    };
    for q in parents {
        state.ns.entry(q.clone()).or_insert(Node::Dir);
    }
    state.ns.insert(target.clone(), Node::File { version });
    state.contents.insert(target.clone(), content);
    Ok(NsRet::Entry(Node::File { version }))
}

/// `Namespace::file`: a file's entry; a directory (the root too) is
/// FAILED_PRECONDITION.
fn read(state: &FileState, path: &str) -> NsResult<FileRet> {
    let p = parse(path)?;
    if p.is_root() {
        return Err(Code::FailedPrecondition);
    }
    match lookup(&state.ns, &p)? {
        Node::Dir => Err(Code::FailedPrecondition),
        Node::File { version } => Ok(FileRet::Read {
            version,
            content: state.contents.get(&p.to_string()).copied().unwrap_or(0),
        }),
    }
}

/// `Namespace::list`: the children of a directory, in name order.
fn list(state: &NsState, path: &str) -> NsResult<FileRet> {
    let p = parse(path)?;
    dir(state, &p)?;
    let below = if p.is_root() {
        "/".to_string()
    } else {
        format!("{p}/")
    };
    Ok(FileRet::Listing(
        state
            .range(below.clone()..)
            .take_while(|(k, _)| k.starts_with(&below))
            .filter(|(k, _)| !k[below.len()..].contains('/'))
            .map(|(k, v)| (k[below.len()..].to_string(), *v))
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    type NsEvent = Event<NsOp, NsRet>;

    fn mkdir(p: &str) -> NsOp {
        NsOp::Mkdir {
            path: p.into(),
            parents: false,
        }
    }
    fn rm(p: &str, recursive: bool) -> NsOp {
        NsOp::Delete {
            path: p.into(),
            recursive,
        }
    }
    fn mv(a: &str, b: &str) -> NsOp {
        NsOp::Rename {
            source: a.into(),
            destination: b.into(),
        }
    }
    fn stat(p: &str) -> NsOp {
        NsOp::Stat { path: p.into() }
    }
    const DIR: NsRet = NsRet::Entry(Node::Dir);
    const NOT_FOUND: NsRet = NsRet::Err(Code::NotFound);
    const EXISTS: NsRet = NsRet::Err(Code::AlreadyExists);

    /// `(client, op, call, ret, returned)`; `ret` None: indeterminate.
    fn history(events: Vec<(usize, NsOp, u64, Option<NsRet>, u64)>) -> Vec<NsEvent> {
        events
            .into_iter()
            .map(|(c, op, call, ret, at)| match ret {
                Some(r) => Event::new(c, op, call, r, at),
                None => Event::indeterminate(c, op, call),
            })
            .collect()
    }

    fn verdict(events: Vec<(usize, NsOp, u64, Option<NsRet>, u64)>) -> Outcome {
        let outcome = check(&NamespaceModel::new(), &history(events));
        eprintln!("{outcome}");
        outcome
    }

    fn assert_linearizable(events: Vec<(usize, NsOp, u64, Option<NsRet>, u64)>) {
        let outcome = verdict(events);
        assert!(outcome.is_linearizable(), "{outcome}");
    }

    fn assert_not_linearizable(events: Vec<(usize, NsOp, u64, Option<NsRet>, u64)>) -> Failure {
        match verdict(events) {
            Outcome::NotLinearizable(f, _) => *f,
            other => panic!("expected NOT linearizable, got {other}"),
        }
    }

    #[test]
    fn the_model_follows_the_namespace_rules() {
        let mut s = NsState::new();
        let mut ap = |op| NamespaceModel::apply(&mut s, &op);
        assert_eq!(ap(mkdir("/")), EXISTS);
        assert_eq!(ap(mkdir("/a/b")), NOT_FOUND, "no parents");
        assert_eq!(
            ap(NsOp::Mkdir {
                path: "/a/b".into(),
                parents: true
            }),
            DIR
        );
        assert_eq!(ap(mkdir("/a/b")), EXISTS);
        assert_eq!(ap(rm("/a", false)), NsRet::Err(Code::FailedPrecondition));
        assert_eq!(ap(mv("/a", "/a/b/c")), NsRet::Err(Code::InvalidArgument));
        assert_eq!(ap(mv("/a", "/a")), EXISTS);
        assert_eq!(ap(mv("/a", "/x/y")), NOT_FOUND, "destination parent");
        assert_eq!(ap(mv("/", "/x")), NsRet::Err(Code::InvalidArgument));
        assert_eq!(ap(mv("/a", "/c")), DIR);
        assert_eq!(ap(stat("/c/b")), DIR, "moved with its subtree");
        assert_eq!(ap(stat("/a")), NOT_FOUND);
        assert_eq!(ap(rm("/c", true)), NsRet::Deleted { files: 0 });
        assert_eq!(ap(stat("/c/b")), NOT_FOUND);
        assert_eq!(ap(stat("relative")), NsRet::Err(Code::InvalidArgument));
        assert_eq!(ap(rm("/", true)), NsRet::Err(Code::InvalidArgument));
        assert!(s.is_empty());

        let model = NamespaceModel::with_entries([("/d/f".to_string(), Node::File { version: 3 })]);
        let mut s = model.init();
        let mut ap = |op| NamespaceModel::apply(&mut s, &op);
        assert_eq!(ap(stat("/d/f")), NsRet::Entry(Node::File { version: 3 }));
        assert_eq!(ap(stat("/d/f/x")), NsRet::Err(Code::FailedPrecondition));
        assert_eq!(ap(mkdir("/d/f/x")), NsRet::Err(Code::FailedPrecondition));
        assert_eq!(ap(mkdir("/d/f")), EXISTS);
        assert_eq!(
            ap(mv("/d/f", "/g")),
            NsRet::Entry(Node::File { version: 3 })
        );
        assert_eq!(ap(rm("/g", false)), NsRet::Deleted { files: 1 });
    }

    /// The model answers every call as the coordinator's own state machine
    /// does, on random sequences over a few paths with files and
    /// directories (the errors as the gRPC codes convert.rs gives them).
    #[test]
    fn the_model_agrees_with_the_coordinators_namespace() {
        use dfs_coordinator::namespace::{
            Command, FileRecord, Namespace, Outcome as Applied, Snapshot, SnapshotEntry,
        };
        let file = |path: &str, version| SnapshotEntry::File {
            path: path.into(),
            file: FileRecord {
                size: 0,
                replication: 1,
                chunk_size: 1,
                chunks: Vec::new(),
                created_ms: 1,
                modified_ms: 1,
                version,
            },
        };
        let code = |e| tonic::Status::from(e).code();
        let paths = [
            "/", "/a", "/b", "/f", "/a/b", "/a/f", "/b/a", "/a/b/c", "/f/x", "//", "x",
        ];
        for seed in 0..40 {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut real = Namespace::restore(Snapshot {
                entries: vec![file("/f", 2), file("/a/f", 5)],
                ..Snapshot::default()
            })
            .unwrap();
            let model = NamespaceModel::with_entries([
                ("/f".to_string(), Node::File { version: 2 }),
                ("/a/f".to_string(), Node::File { version: 5 }),
            ]);
            let mut state = model.init();
            for step in 0..300 {
                let p = paths[rng.random_range(0..paths.len())].to_string();
                let q = paths[rng.random_range(0..paths.len())].to_string();
                let (op, want) = match rng.random_range(0..4) {
                    0 => {
                        let parents = rng.random_bool(0.3);
                        let got = real.apply(&Command::Mkdir {
                            path: p.clone(),
                            parents,
                            now_ms: step,
                        });
                        let want = match got {
                            Ok(Applied::Entry(e)) => {
                                assert!(e.is_dir);
                                DIR
                            }
                            Ok(o) => panic!("mkdir returned {o:?}"),
                            Err(e) => NsRet::Err(code(e)),
                        };
                        (NsOp::Mkdir { path: p, parents }, want)
                    }
                    1 => {
                        let recursive = rng.random_bool(0.3);
                        let got = real.apply(&Command::Delete {
                            path: p.clone(),
                            recursive,
                        });
                        let want = match got {
                            Ok(Applied::Deleted { files, .. }) => NsRet::Deleted { files },
                            Ok(o) => panic!("delete returned {o:?}"),
                            Err(e) => NsRet::Err(code(e)),
                        };
                        (rm(&p, recursive), want)
                    }
                    2 => {
                        let got = real.apply(&Command::Rename {
                            source: p.clone(),
                            destination: q.clone(),
                            now_ms: step,
                        });
                        let want = match got {
                            Ok(Applied::Entry(e)) if e.is_dir => DIR,
                            Ok(Applied::Entry(e)) => {
                                NsRet::Entry(Node::File { version: e.version })
                            }
                            Ok(o) => panic!("rename returned {o:?}"),
                            Err(e) => NsRet::Err(code(e)),
                        };
                        (mv(&p, &q), want)
                    }
                    _ => {
                        let want = match NsPath::parse(&p) {
                            Err(e) => NsRet::Err(tonic::Status::from(e).code()),
                            Ok(path) => match real.stat(&path) {
                                Ok(e) if e.is_dir => DIR,
                                Ok(e) => NsRet::Entry(Node::File { version: e.version }),
                                Err(e) => NsRet::Err(code(e)),
                            },
                        };
                        (stat(&p), want)
                    }
                };
                let got = NamespaceModel::apply(&mut state, &op);
                assert_eq!(got, want, "seed {seed} step {step}: {op:?} in {state:?}");
            }
        }
    }

    #[test]
    fn sequential_and_overlapping_histories_are_linearizable() {
        assert_linearizable(vec![]);
        assert_linearizable(vec![
            (0, mkdir("/a"), 0, Some(DIR), 10),
            (0, stat("/a"), 20, Some(DIR), 30),
            (0, mv("/a", "/b"), 40, Some(DIR), 50),
            (0, stat("/a"), 60, Some(NOT_FOUND), 70),
            (
                0,
                rm("/b", false),
                80,
                Some(NsRet::Deleted { files: 0 }),
                90,
            ),
        ]);
        // A mkdir overlapping two reads: they may see before and after it.
        assert_linearizable(vec![
            (0, mkdir("/a"), 0, Some(DIR), 100),
            (1, stat("/a"), 10, Some(NOT_FOUND), 20),
            (1, stat("/a"), 30, Some(DIR), 40),
        ]);
        // Two concurrent mkdirs of one path: one wins, in either order of
        // the answers.
        assert_linearizable(vec![
            (0, mkdir("/a"), 0, Some(EXISTS), 10),
            (1, mkdir("/a"), 5, Some(DIR), 50),
        ]);
        // Read answers that only a later-invoked op explains, placed first.
        assert_linearizable(vec![
            (0, stat("/b"), 0, Some(DIR), 100),
            (1, mkdir("/a"), 10, Some(DIR), 20),
            (1, mv("/a", "/b"), 30, Some(DIR), 40),
            (2, stat("/a"), 50, Some(NOT_FOUND), 60),
        ]);
    }

    #[test]
    fn an_indeterminate_op_may_take_effect_after_its_call_or_never() {
        // It took effect.
        assert_linearizable(vec![
            (0, mkdir("/a"), 0, None, 0),
            (1, stat("/a"), 10, Some(DIR), 20),
        ]);
        // It never did.
        assert_linearizable(vec![
            (0, mkdir("/a"), 0, None, 0),
            (1, stat("/a"), 10, Some(NOT_FOUND), 20),
            (1, stat("/a"), 30, Some(NOT_FOUND), 40),
        ]);
        // Long after the caller gave up (a command committed by the next
        // leader), and with the effect another call then observes.
        assert_linearizable(vec![
            (0, mkdir("/a"), 0, None, 0),
            (1, stat("/a"), 10, Some(NOT_FOUND), 20),
            (1, mkdir("/a"), 30, Some(EXISTS), 40),
            (
                1,
                rm("/a", false),
                50,
                Some(NsRet::Deleted { files: 0 }),
                60,
            ),
        ]);
        // Not before its call.
        assert_not_linearizable(vec![
            (1, stat("/a"), 10, Some(DIR), 20),
            (0, mkdir("/a"), 50, None, 0),
        ]);
        // Once at most: seen, then gone with nothing that removes it.
        assert_not_linearizable(vec![
            (0, mkdir("/a"), 0, None, 0),
            (1, stat("/a"), 10, Some(DIR), 20),
            (1, stat("/a"), 30, Some(NOT_FOUND), 40),
        ]);
    }

    #[test]
    fn a_stale_read_after_a_completed_write_is_caught() {
        // The history a follower answering from its own (behind) state
        // gives: the mkdir was acknowledged before the stat was sent.
        let f = assert_not_linearizable(vec![
            (0, mkdir("/k0"), 0, Some(DIR), 10),
            (1, stat("/k0"), 15, Some(NOT_FOUND), 25),
        ]);
        assert!(f.stuck.contains("Stat"), "{f:?}");
        assert!(f.state.contains("/k0"), "{f:?}");
        assert_eq!(f.linearized, 1);
    }

    #[test]
    fn a_lost_acknowledged_mkdir_is_caught() {
        assert_not_linearizable(vec![
            (0, mkdir("/a"), 0, Some(DIR), 10),
            (1, mkdir("/a/b"), 20, Some(NOT_FOUND), 30),
        ]);
    }

    #[test]
    fn an_op_applied_twice_is_caught() {
        // Rename acknowledged, yet its source is still there.
        assert_not_linearizable(vec![
            (0, mkdir("/a"), 0, Some(DIR), 10),
            (0, mv("/a", "/b"), 20, Some(DIR), 30),
            (1, stat("/a"), 40, Some(DIR), 50),
        ]);
        // One mkdir acknowledged twice, to concurrent callers.
        assert_not_linearizable(vec![
            (0, mkdir("/a"), 0, Some(DIR), 10),
            (1, mkdir("/a"), 0, Some(DIR), 10),
        ]);
    }

    #[test]
    fn a_read_seeing_a_value_then_an_older_one_is_caught() {
        assert_not_linearizable(vec![
            (0, mkdir("/a"), 0, Some(DIR), 100),
            (1, stat("/a"), 10, Some(DIR), 20),
            (2, stat("/a"), 30, Some(NOT_FOUND), 40),
        ]);
    }

    #[test]
    fn the_failure_names_the_op_that_could_not_be_placed() {
        let f = assert_not_linearizable(vec![
            (0, mkdir("/a"), 0, Some(DIR), 10),
            (0, mkdir("/a/b"), 20, Some(DIR), 30),
            (
                0,
                rm("/a", false),
                40,
                Some(NsRet::Deleted { files: 0 }),
                50,
            ),
        ]);
        assert_eq!(f.linearized, 2);
        assert!(f.stuck.starts_with("#2 client 0 Delete"), "{f:?}");
        assert_eq!(f.prefix_tail.len(), 2);
        assert!(f.state.contains("/a/b"));
    }

    /// A generated history of `n` ops by `clients` callers, each making
    /// one call at a time (as the integration test's clients do): every
    /// call gets a random duration and an instant inside it at which it
    /// takes effect; the model applied in the order of those instants
    /// gives the results (a real sequential run). One call in `lost_one_in`
    /// loses its answer after it was applied, another as many before (it
    /// never takes effect); both are recorded as indeterminate. Some calls
    /// are slow (a failover), so overlaps vary. Linearizable by
    /// construction.
    fn generated(seed: u64, n: usize, clients: usize, lost_one_in: u32) -> Vec<NsEvent> {
        let mut rng = StdRng::seed_from_u64(seed);
        let paths = ["/k0", "/k1", "/k2", "/k0/n", "/k1/n", "/k2/n"];
        let mut free = vec![0u64; clients];
        // (instant, client, op, call, return, applied, answered)
        let mut calls = Vec::with_capacity(n);
        for _ in 0..n {
            let client = (0..clients).min_by_key(|&c| free[c]).unwrap();
            let p = paths[rng.random_range(0..paths.len())];
            let q = paths[rng.random_range(0..paths.len())];
            let op = match rng.random_range(0..10) {
                0..=2 => mkdir(p),
                3 => rm(p, rng.random_bool(0.3)),
                4 | 5 => mv(p, q),
                _ => stat(p),
            };
            let call = free[client] + rng.random_range(0..30);
            let took = if rng.random_ratio(1, 100) {
                rng.random_range(100..2_000)
            } else {
                rng.random_range(1..100)
            };
            let returned = call + took;
            free[client] = returned;
            let instant = rng.random_range(call..=returned);
            let write = !matches!(op, NsOp::Stat { .. });
            let applied = !(write && rng.random_ratio(1, lost_one_in));
            let answered = applied && !(write && rng.random_ratio(1, lost_one_in));
            calls.push((instant, client, op, call, returned, applied, answered));
        }
        calls.sort_by_key(|c| c.0);
        let mut state = NsState::new();
        let mut out = Vec::with_capacity(n);
        for (_, client, op, call, returned, applied, answered) in calls {
            if !applied {
                out.push(Event::indeterminate(client, op, call));
                continue;
            }
            let ret = NamespaceModel::apply(&mut state, &op);
            out.push(if answered {
                Event::new(client, op, call, ret, returned)
            } else {
                Event::indeterminate(client, op, call)
            });
        }
        out
    }

    #[test]
    fn a_long_generated_history_is_accepted_within_the_work_bound() {
        for (seed, n, clients, lost_one_in) in [(1, 20_000, 4, 400), (2, 5_000, 8, 100)] {
            let history = generated(seed, n, clients, lost_one_in);
            let outcome = check_with(&NamespaceModel::new(), &history, 5_000_000);
            eprintln!("seed {seed}, {clients} clients: {outcome}");
            assert!(outcome.is_linearizable(), "seed {seed}: {outcome}");
        }
    }

    /// The removers of `path`: deletes and renames of it or an ancestor.
    fn may_remove(op: &NsOp, path: &str) -> bool {
        let covers = |p: &str| path == p || path.starts_with(&format!("{p}/"));
        match op {
            NsOp::Delete { path: p, .. } => covers(p),
            NsOp::Rename { source, .. } => covers(source),
            _ => false,
        }
    }

    #[test]
    fn a_stale_read_injected_into_a_long_history_is_caught() {
        // After an acknowledged mkdir, with nothing that could remove the
        // directory running since the mkdir was sent, a read answers that
        // it does not exist: a follower's stale answer.
        let mut history = generated(3, 5_000, 4, 100);
        let mkdir = (1_000..history.len())
            .find(|&i| {
                let e = &history[i];
                let (NsOp::Mkdir { path, .. }, Some((DIR, returned))) = (&e.op, &e.ret) else {
                    return false;
                };
                !history.iter().any(|o| {
                    may_remove(&o.op, path)
                        && o.call <= returned + 1
                        && o.ret.as_ref().is_none_or(|(_, r)| *r >= e.call)
                })
            })
            .expect("a mkdir with no remover around it");
        let (path, returned) = match &history[mkdir] {
            Event {
                op: NsOp::Mkdir { path, .. },
                ret: Some((_, at)),
                ..
            } => (path.clone(), *at),
            _ => unreachable!(),
        };
        let outcome = check(&NamespaceModel::new(), &history);
        assert!(outcome.is_linearizable(), "{outcome}");
        history.push(Event::new(
            9,
            stat(&path),
            returned + 1,
            NOT_FOUND,
            returned + 1,
        ));
        let outcome = check(&NamespaceModel::new(), &history);
        eprintln!("{outcome}");
        let Outcome::NotLinearizable(f, _) = outcome else {
            panic!("the stale read was accepted: {outcome}");
        };
        assert!(f.stuck.contains("client 9"), "{f:?}");
    }

    #[test]
    fn a_corrupted_answer_in_a_long_history_is_caught() {
        // A stat answering a file where there only ever were directories.
        let mut history = generated(4, 5_000, 4, 1_000);
        let i = history
            .iter()
            .rposition(|e| matches!(e.op, NsOp::Stat { .. }) && e.ret.is_some())
            .unwrap();
        history[i].ret.as_mut().unwrap().0 = NsRet::Entry(Node::File { version: 9 });
        let outcome = check(&NamespaceModel::new(), &history);
        eprintln!("{outcome}");
        let Outcome::NotLinearizable(f, _) = outcome else {
            panic!("the corrupted answer was accepted: {outcome}");
        };
        assert!(f.stuck.starts_with(&format!("#{i} ")), "{f:?}");
    }

    #[test]
    fn a_pathological_history_hits_the_work_bound() {
        // 24 concurrent indeterminate mkdirs of distinct paths (2^24
        // different states), then an answer none of them explains.
        let mut events: Vec<_> = (0..24)
            .map(|i| (i, mkdir(&format!("/p{i}")), 0, None, 0))
            .collect();
        events.push((99, stat("/never"), 10, Some(DIR), 20));
        let outcome = check_with(&NamespaceModel::new(), &history(events), 100_000);
        assert!(matches!(outcome, Outcome::Unknown(..)), "{outcome}");
        assert_eq!(outcome.stats().steps, 100_001);
    }

    /// A register, to show the checker is not tied to the namespace.
    struct Register;
    impl Model for Register {
        type State = u64;
        type Op = Option<u64>; // Some(v): write v; None: read
        type Ret = u64; // the value read (0 for a write)
        fn init(&self) -> u64 {
            0
        }
        fn step(&self, s: &u64, op: &Option<u64>, ret: Option<&u64>) -> Option<u64> {
            match op {
                Some(v) => ret.is_none_or(|r| *r == 0).then_some(*v),
                None => ret.is_none_or(|r| r == s).then_some(*s),
            }
        }
    }

    #[test]
    fn any_model_can_be_checked() {
        let ok = [
            Event::new(0, Some(1), 0, 0, 10),
            Event::new(1, None, 5, 1, 15),
            Event::new(1, None, 20, 1, 30),
        ];
        assert!(check(&Register, &ok).is_linearizable());
        let stale = [
            Event::new(0, Some(1), 0, 0, 10),
            Event::new(1, None, 20, 0, 30),
        ];
        assert!(!check(&Register, &stale).is_linearizable());
    }

    // Files with contents (FileModel).

    fn put(p: &str, content: u64) -> FileOp {
        FileOp::Put {
            path: p.into(),
            content,
            overwrite: true,
        }
    }
    fn read(p: &str) -> FileOp {
        FileOp::Read { path: p.into() }
    }
    fn ns(op: NsOp) -> FileOp {
        FileOp::Ns(op)
    }
    fn file(version: u64) -> FileRet {
        FileRet::Ns(NsRet::Entry(Node::File { version }))
    }
    fn holds(version: u64, content: u64) -> FileRet {
        FileRet::Read { version, content }
    }
    const F_NOT_FOUND: FileRet = FileRet::Ns(NOT_FOUND);
    const F_PRECONDITION: FileRet = FileRet::Ns(NsRet::Err(Code::FailedPrecondition));

    #[test]
    fn the_file_model_follows_puts_renames_and_deletes() {
        let mut s = FileModel::new(NamespaceModel::new()).init();
        let mut ap = |op| FileModel::apply(&mut s, &op);
        assert_eq!(ap(put("/d/f", 1)), file(1), "parents created");
        assert_eq!(ap(ns(stat("/d"))), FileRet::Ns(DIR));
        assert_eq!(ap(read("/d/f")), holds(1, 1));
        assert_eq!(ap(put("/d/f", 2)), file(2), "overwritten");
        assert_eq!(ap(read("/d/f")), holds(2, 2));
        assert_eq!(
            ap(FileOp::Put {
                path: "/d/f".into(),
                content: 3,
                overwrite: false
            }),
            FileRet::Ns(EXISTS)
        );
        assert_eq!(ap(put("/d", 4)), F_PRECONDITION, "a directory there");
        assert_eq!(ap(put("/d/f/g", 4)), F_PRECONDITION, "a file among parents");
        assert_eq!(ap(put("/", 4)), F_PRECONDITION);
        assert_eq!(ap(read("/d")), F_PRECONDITION);
        assert_eq!(ap(read("/")), F_PRECONDITION);
        assert_eq!(ap(read("/x")), F_NOT_FOUND);
        assert_eq!(ap(ns(mv("/d", "/e"))), FileRet::Ns(DIR));
        assert_eq!(ap(read("/e/f")), holds(2, 2), "the bytes moved along");
        assert_eq!(ap(read("/d/f")), F_NOT_FOUND);
        assert_eq!(ap(put("/e/g", 5)), file(1));
        assert_eq!(
            ap(FileOp::List { path: "/e".into() }),
            FileRet::Listing(vec![
                ("f".into(), Node::File { version: 2 }),
                ("g".into(), Node::File { version: 1 }),
            ])
        );
        assert_eq!(
            ap(FileOp::List { path: "/".into() }),
            FileRet::Listing(vec![("e".into(), Node::Dir)])
        );
        assert_eq!(
            ap(FileOp::List {
                path: "/e/f".into()
            }),
            F_PRECONDITION
        );
        assert_eq!(ap(FileOp::List { path: "/d".into() }), F_NOT_FOUND);
        assert_eq!(
            ap(ns(rm("/e", true))),
            FileRet::Ns(NsRet::Deleted { files: 2 })
        );
        assert_eq!(ap(put("/e/f", 6)), file(1), "a new file after the delete");
        assert_eq!(ap(read("/e/f")), holds(1, 6));
        assert_eq!(s.contents, BTreeMap::from([("/e/f".to_string(), 6)]));
    }

    /// Puts, reads and listings answer as the coordinator's own state
    /// machine does: a put as BeginUpload then ConfirmUpload of an upload
    /// with no chunks whose size is the content id (so the real file
    /// carries it through renames), a read as `Namespace::file`, a listing
    /// as `Namespace::list`; mixed with the namespace calls.
    #[test]
    fn the_file_model_agrees_with_the_coordinators_namespace() {
        use dfs_coordinator::namespace::{
            Command, Namespace, Outcome as Applied, Upload, UploadId,
        };
        let code = |e| tonic::Status::from(e).code();
        let node = |e: &dfs_coordinator::namespace::EntryInfo| {
            if e.is_dir {
                Node::Dir
            } else {
                Node::File { version: e.version }
            }
        };
        let paths = ["/", "/a", "/b", "/a/b", "/a/f", "/b/f", "/a/b/f", "/f"];
        let model = FileModel::new(NamespaceModel::new());
        for seed in 0..40 {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut real = Namespace::new();
            let mut state = model.init();
            let mut uploads = 0u128;
            for step in 0..300u64 {
                let p = paths[rng.random_range(0..paths.len())].to_string();
                let q = paths[rng.random_range(0..paths.len())].to_string();
                let (op, want) = match rng.random_range(0..6) {
                    0 | 1 => {
                        uploads += 1;
                        let upload_id = UploadId::try_from(format!("{uploads:032x}")).unwrap();
                        let overwrite = rng.random_ratio(4, 5);
                        let content = 100 + step;
                        let begin = real.apply(&Command::BeginUpload(Upload {
                            upload_id: upload_id.clone(),
                            path: p.clone(),
                            size: content,
                            chunk_size: 1,
                            replication: 1,
                            write_quorum: 1,
                            overwrite,
                            chunks: Vec::new(),
                            expires_at_ms: u64::MAX,
                        }));
                        let got = begin.and_then(|_| {
                            real.apply(&Command::ConfirmUpload {
                                upload_id,
                                chunks: Vec::new(),
                                now_ms: step,
                            })
                        });
                        let want = match got {
                            Ok(Applied::Entry(e)) => FileRet::Ns(NsRet::Entry(node(&e))),
                            Ok(o) => panic!("put returned {o:?}"),
                            Err(e) => FileRet::Ns(NsRet::Err(code(e))),
                        };
                        (
                            FileOp::Put {
                                path: p,
                                content,
                                overwrite,
                            },
                            want,
                        )
                    }
                    2 => {
                        let path = NsPath::parse(&p).unwrap();
                        let want = match real.file(&path) {
                            Ok((e, f)) => FileRet::Read {
                                version: e.version,
                                content: f.size,
                            },
                            Err(e) => FileRet::Ns(NsRet::Err(code(e))),
                        };
                        (read(&p), want)
                    }
                    3 => {
                        let path = NsPath::parse(&p).unwrap();
                        let want = match real.list(&path, "", 1000) {
                            Ok((entries, _)) => FileRet::Listing(
                                entries.iter().map(|e| (e.name.clone(), node(e))).collect(),
                            ),
                            Err(e) => FileRet::Ns(NsRet::Err(code(e))),
                        };
                        (FileOp::List { path: p }, want)
                    }
                    4 => {
                        let recursive = rng.random_bool(0.5);
                        let want = match real.apply(&Command::Delete {
                            path: p.clone(),
                            recursive,
                        }) {
                            Ok(Applied::Deleted { files, .. }) => NsRet::Deleted { files },
                            Ok(o) => panic!("delete returned {o:?}"),
                            Err(e) => NsRet::Err(code(e)),
                        };
                        (ns(rm(&p, recursive)), FileRet::Ns(want))
                    }
                    _ => {
                        let want = match real.apply(&Command::Rename {
                            source: p.clone(),
                            destination: q.clone(),
                            now_ms: step,
                        }) {
                            Ok(Applied::Entry(e)) => NsRet::Entry(node(&e)),
                            Ok(o) => panic!("rename returned {o:?}"),
                            Err(e) => NsRet::Err(code(e)),
                        };
                        (ns(mv(&p, &q)), FileRet::Ns(want))
                    }
                };
                let got = FileModel::apply(&mut state, &op);
                assert_eq!(got, want, "seed {seed} step {step}: {op:?} in {state:?}");
            }
        }
    }

    /// `(client, op, call, ret, returned)`; `ret` None: indeterminate.
    fn file_verdict(events: Vec<(usize, FileOp, u64, Option<FileRet>, u64)>) -> Outcome {
        let history: Vec<Event<FileOp, FileRet>> = events
            .into_iter()
            .map(|(c, op, call, ret, at)| match ret {
                Some(r) => Event::new(c, op, call, r, at),
                None => Event::indeterminate(c, op, call),
            })
            .collect();
        let outcome = check(&FileModel::new(NamespaceModel::new()), &history);
        eprintln!("{outcome}");
        outcome
    }

    #[test]
    fn racing_puts_and_reads_are_checked() {
        // Concurrent overwrites: either order, and reads in between.
        let ok = file_verdict(vec![
            (0, put("/f", 1), 0, Some(file(2)), 100),
            (1, put("/f", 2), 0, Some(file(1)), 100),
            (2, read("/f"), 10, Some(holds(1, 2)), 20),
            (2, read("/f"), 30, Some(holds(2, 1)), 40),
        ]);
        assert!(ok.is_linearizable(), "{ok}");
        // The bytes of the overwritten put read after the overwrite was
        // acknowledged.
        let stale = file_verdict(vec![
            (0, put("/f", 1), 0, Some(file(1)), 10),
            (0, put("/f", 2), 20, Some(file(2)), 30),
            (1, read("/f"), 40, Some(holds(2, 1)), 50),
        ]);
        assert!(matches!(stale, Outcome::NotLinearizable(..)), "{stale}");
        // Bytes no put wrote.
        let ghost = file_verdict(vec![
            (0, put("/f", 1), 0, Some(file(1)), 10),
            (1, read("/f"), 20, Some(holds(1, 7)), 30),
        ]);
        assert!(matches!(ghost, Outcome::NotLinearizable(..)), "{ghost}");
        // A put whose answer was lost, seen after a rename moved it; its
        // version counts in the overwrite that follows.
        let lost = file_verdict(vec![
            (0, put("/f", 1), 0, None, 0),
            (1, ns(mv("/f", "/g")), 10, Some(file(1)), 20),
            (1, read("/g"), 30, Some(holds(1, 1)), 40),
            (1, put("/g", 2), 50, Some(file(2)), 60),
        ]);
        assert!(lost.is_linearizable(), "{lost}");
        // An acknowledged put lost: the file is gone with nothing removing
        // it.
        let gone = file_verdict(vec![
            (0, put("/d/f", 1), 0, Some(file(1)), 10),
            (
                1,
                FileOp::List { path: "/d".into() },
                20,
                Some(FileRet::Listing(vec![])),
                30,
            ),
        ]);
        assert!(matches!(gone, Outcome::NotLinearizable(..)), "{gone}");
    }
}

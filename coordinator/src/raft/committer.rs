//! Proposals through the Raft group: the same [`Committer`] handle the
//! handlers use with a single coordinator, backed by `Raft::client_write`.
//!
//! Proposals that arrive together become one entry (group commit, as in
//! [`crate::store`]); a few entries are in flight at once so that one
//! batch's replication round does not stall the next. Each caller is
//! answered with its own command's result once the entry is committed by a
//! majority and applied here. On a follower every proposal fails with
//! [`ProposeError::NotLeader`], naming the leader when it is known.

use std::sync::Arc;

use openraft::Raft;
use openraft::error::{ClientWriteError, RaftError};
use tokio::sync::{Semaphore, mpsc, watch};

use super::TypeConfig;
use crate::store::{Committer, MAX_BATCH, Proposal, ProposeError};

/// Entries being replicated at once.
pub const MAX_IN_FLIGHT: usize = 8;

/// Starts proposing through `raft`. The task ends when every handle is
/// dropped; the handle reports a failure once Raft stopped on a fatal error
/// (a storage failure: this member must not act on its state any more).
pub fn start(
    raft: Raft<TypeConfig>,
    metrics: crate::metrics::Metrics,
) -> (Committer, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::unbounded_channel::<Proposal>();
    let (failure_tx, failure) = watch::channel(None::<String>);
    {
        let mut m = raft.metrics();
        let failure_tx = failure_tx.clone();
        tokio::spawn(async move {
            loop {
                if let Err(e) = &m.borrow().running_state {
                    failure_tx.send_replace(Some(format!("Raft stopped: {e}")));
                    return;
                }
                if m.changed().await.is_err() {
                    return;
                }
            }
        });
    }
    let handle = tokio::spawn(async move {
        let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
        while let Some(first) = rx.recv().await {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(p) => batch.push(p),
                    Err(_) => break,
                }
            }
            let Ok(permit) = in_flight.clone().acquire_owned().await else {
                return;
            };
            let raft = raft.clone();
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let started = std::time::Instant::now();
                let commands = batch.iter().map(|p| p.cmd.clone()).collect();
                let written = raft.client_write(commands).await;
                drop(permit);
                match written {
                    Ok(resp) => {
                        metrics.commits.inc();
                        metrics.commit_batch.observe(batch.len() as f64);
                        metrics
                            .commit_duration
                            .observe(started.elapsed().as_secs_f64());
                        for (mut p, r) in batch.into_iter().zip(resp.data) {
                            p.answer(r.map_err(ProposeError::from));
                        }
                    }
                    Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                        let leader = f.leader_node.map(|n| n.addr);
                        for mut p in batch {
                            p.answer(Err(ProposeError::NotLeader {
                                leader: leader.clone(),
                            }));
                        }
                    }
                    Err(e) => {
                        let reason = e.to_string();
                        for mut p in batch {
                            p.answer(Err(ProposeError::Replication(reason.clone())));
                        }
                    }
                }
            });
        }
    });
    (Committer::from_parts(tx, failure), handle)
}

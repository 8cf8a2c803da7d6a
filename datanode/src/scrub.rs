//! The scrubber: re-reads every stored chunk at a throttled rate and
//! verifies it block by block, so bit rot is found (and the chunk reported
//! as corrupt, then repaired by the coordinator) before a client needs it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::watch;

use crate::node::Node;
use crate::read::{Pacer, read_failed};
use crate::store::StoreError;

/// Runs scrub passes until shutdown, pausing `--scrub-interval` between them.
pub async fn run(node: Arc<Node>, rate: Arc<AtomicU64>, mut shutdown: watch::Receiver<bool>) {
    loop {
        if rate.load(Ordering::Relaxed) > 0 {
            let node = node.clone();
            let rate = rate.clone();
            let stop = shutdown.clone();
            let pass = tokio::task::spawn_blocking(move || scrub_pass(&node, &rate, &stop));
            if let Ok((chunks, corrupt)) = pass.await {
                tracing::debug!(chunks, corrupt, "scrub pass done");
            }
        }
        tokio::select! {
            _ = shutdown.wait_for(|s| *s) => return,
            () = tokio::time::sleep(node.config.scrub_interval) => {}
        }
    }
}

/// One pass over every chunk; returns (chunks verified, corrupt found).
fn scrub_pass(node: &Node, rate: &AtomicU64, stop: &watch::Receiver<bool>) -> (u64, u64) {
    let store = &node.store;
    let scrubbed = node
        .metrics
        .scrubbed_bytes
        .with_label_values(&[] as &[&str]);
    let mut pacer = Pacer::new();
    let mut scratch = bytes::BytesMut::new();
    let (mut chunks, mut corrupt) = (0, 0);
    for id in store.ids() {
        if *stop.borrow() {
            break;
        }
        let result = store.open_reader(&id).and_then(|r| {
            r.read_range(0, 0, &mut scratch, |p| {
                let n = p.data.len() as u64;
                scrubbed.inc_by(n);
                pacer.consume(n, rate.load(Ordering::Relaxed));
                !*stop.borrow()
            })
        });
        match result {
            Ok(()) => chunks += 1,
            // Deleted meanwhile, or stopped for shutdown.
            Err(StoreError::NotFound { .. } | StoreError::Cancelled) => {}
            Err(e @ StoreError::Corrupt { .. }) => {
                corrupt += 1;
                read_failed(store, &id, e, "scrub");
            }
            Err(e @ StoreError::Io { .. }) => {
                tracing::warn!(chunk_id = %id, "scrubber failed to read chunk: {e}");
                read_failed(store, &id, e, "scrub");
            }
            Err(e) => tracing::warn!(chunk_id = %id, "scrubber failed to read chunk: {e}"),
        }
    }
    (chunks, corrupt)
}

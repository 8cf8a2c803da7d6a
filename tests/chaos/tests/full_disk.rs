//! Scenario 6: a full disk on one datanode (a low `--capacity`). Uploads are
//! placed elsewhere, the full node reports itself full, and nothing
//! half-written stays on disk.

use std::time::Duration;

use dfs_chaos::{
    Cluster, ClusterOptions, check_replicas, check_status, payload, read_all, run, wait_for,
};
use dfs_client::PutOptions;
use dfs_client::{NodeState, ReportedHealth};

/// Room for exactly two 4 MiB chunks and less than one 256 KiB frame: the
/// datanode reports itself FULL only when less than a frame is free (the
/// coordinator already stops placing on it when a chunk no longer fits).
const CAPACITY: u64 = (8 << 20) + (128 << 10);

#[test]
fn full_datanode_is_skipped_and_keeps_nothing_half_written() {
    run(Duration::from_secs(180), async {
        let small = vec!["--capacity".to_string(), CAPACITY.to_string()];
        let big = vec!["--capacity".to_string(), "64MiB".to_string()];
        let cluster = Cluster::start(ClusterOptions {
            datanodes: 4,
            chunk_size: "4MiB".into(),
            // Placement draws nodes weighted by free space: cap the others
            // too (64 MiB), or the small node is almost never drawn.
            per_datanode_args: vec![small, big.clone(), big.clone(), big],
            ..Default::default()
        })
        .await;
        let client = cluster.client().await;
        let full_id = cluster.datanodes[0].node_id().unwrap();

        // Two files at replication 4 span all four nodes, so the small node
        // fills deterministically (placement draws by free space, and a
        // random draw left it with one chunk in about 9% of runs). Then 12
        // files at the default replication 3: 168 MiB of replicas for 4
        // nodes, far more than the small node may hold, so they must go
        // elsewhere.
        let mut files = Vec::new();
        for i in 0..14u64 {
            let data = payload(600 + i, 4 << 20);
            let path = format!("/full/f{i}.bin");
            let replication = if i < 2 { 4 } else { 3 };
            let opts = PutOptions {
                replication,
                ..PutOptions::default()
            };
            client
                .put_bytes(data.clone(), &path, &opts)
                .await
                .unwrap_or_else(|e| panic!("put {path} with one full node failed: {e}"));
            files.push((path, data, replication));
        }
        // The small node says it is full, and the coordinator agrees.
        let nodes = wait_for(
            "the small node to report itself full",
            Duration::from_secs(30),
            || async {
                let nodes = client.nodes().await.map_err(|e| e.to_string())?;
                let n = nodes
                    .iter()
                    .find(|n| n.node_id == full_id)
                    .ok_or("missing node")?;
                if n.reported_health == Some(ReportedHealth::Full)
                    && n.state == Some(NodeState::Full)
                {
                    Ok(nodes)
                } else {
                    Err(format!(
                        "health {:?} state {:?} used {} free {}",
                        n.reported_health, n.state, n.used_bytes, n.free_bytes
                    ))
                }
            },
        )
        .await;
        let info = nodes.iter().find(|n| n.node_id == full_id).unwrap();
        assert!(
            info.used_bytes <= CAPACITY,
            "used {} > capacity {CAPACITY}",
            info.used_bytes
        );
        let on_disk: u64 = cluster.datanodes[0]
            .chunk_files()
            .iter()
            .map(|p| std::fs::metadata(p).map_or(0, |m| m.len()))
            .sum();
        assert!(
            on_disk <= CAPACITY + (64 << 10),
            "{on_disk} bytes of chunk files on the small node"
        );

        // Every file is whole, on 3 nodes; no temp file anywhere.
        for (path, data, _) in &files {
            assert!(
                read_all(&client, path).await.unwrap() == *data,
                "{path} differs"
            );
        }
        wait_for(
            "every chunk at its replication, off the full node",
            Duration::from_secs(60),
            || async {
                for (path, _, replication) in &files {
                    let map = client.chunk_map(path).await.map_err(|e| e.to_string())?;
                    // The replication-3 files live on the three big nodes
                    // (a replica planned on the small node just before it
                    // reported full is refused there and repaired elsewhere).
                    let excluded: &[&str] = if *replication == 3 { &[&full_id] } else { &[] };
                    check_replicas(&map, *replication as usize, excluded)
                        .map_err(|e| format!("{path}: {e}"))?;
                }
                check_status(&client.status().await.map_err(|e| e.to_string())?, false)
            },
        )
        .await;
        let temps = cluster.temp_files();
        assert!(temps.is_empty(), "half-written chunks left: {temps:?}");

        // New uploads keep working and avoid the full node.
        let data = payload(700, 4 << 20);
        client
            .put_bytes(data.clone(), "/full/after.bin", &PutOptions::default())
            .await
            .unwrap();
        dfs_chaos::replicated_map(&client, "/full/after.bin", 3, &[&full_id]).await;
        println!(
            "scenario 6: 15 uploads with one node capped at {} MiB all succeeded; it reports FULL with {} bytes used, {} bytes of chunk files; no temp files",
            CAPACITY >> 20,
            info.used_bytes,
            on_disk
        );
    });
}

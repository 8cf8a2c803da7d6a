//! Scenario 2: a datanode gone for good. It is declared dead within the
//! configured interval, every chunk it held is re-replicated back to the
//! replication factor, and the time that takes is reported.
//!
//! Size: `DFS_CHAOS_REPAIR_MIB` (default 256 MiB in 4 MiB chunks). The
//! coordinator runs with its default repair throttle (100 MiB/s per node).

use std::time::{Duration, Instant};

use dfs_chaos::{
    Cluster, ClusterOptions, DEAD_AFTER, check_replicas, check_status, env_u64, file_digest, run,
    state_of, wait_for, write_payload_file,
};
use dfs_client::NodeState;
use dfs_client::PutOptions;

#[test]
fn dead_datanode_is_declared_dead_and_its_chunks_re_replicated() {
    run(Duration::from_secs(300), async {
        let mib = env_u64("DFS_CHAOS_REPAIR_MIB", 256);
        let size = mib << 20;
        let mut cluster = Cluster::start(ClusterOptions {
            datanodes: 4,
            ..Default::default()
        })
        .await;
        let client = cluster.client().await;
        let work = tempfile::tempdir().unwrap();
        let src = work.path().join("data.bin");
        let want = write_payload_file(&src, 2, size);
        client
            .put_file(&src, "/repair/data.bin", &PutOptions::default())
            .await
            .unwrap();
        let map = dfs_chaos::replicated_map(&client, "/repair/data.bin", 3, &[]).await;

        let victim = 2;
        let victim_id = cluster.datanodes[victim].node_id().unwrap();
        let held: u64 = map
            .chunks
            .iter()
            .filter(|c| c.replicas.iter().any(|r| r.node_id == victim_id))
            .map(|c| c.size)
            .sum();
        cluster.datanodes[victim].kill9();
        let killed = Instant::now();

        wait_for(
            "the killed node to be declared dead",
            DEAD_AFTER + Duration::from_secs(10),
            || async {
                let nodes = client.nodes().await.map_err(|e| e.to_string())?;
                match state_of(&nodes, &victim_id) {
                    Some(NodeState::Dead) => Ok(()),
                    s => Err(format!("state {s:?}")),
                }
            },
        )
        .await;
        let dead_after = killed.elapsed();

        wait_for(
            "re-replication to 3 replicas",
            Duration::from_secs(240),
            || async {
                let map = client
                    .chunk_map("/repair/data.bin")
                    .await
                    .map_err(|e| e.to_string())?;
                check_replicas(&map, 3, &[&victim_id])?;
                check_status(&client.status().await.map_err(|e| e.to_string())?, false)
            },
        )
        .await;
        let total = killed.elapsed();
        let repair = total - dead_after;
        println!(
            "scenario 2: {mib} MiB file, node held {} MiB; declared dead {:.1}s after SIGKILL \
             (dead-after {:?}); back at 3 replicas {:.1}s after SIGKILL, repair {:.1}s \
             ({:.0} MiB/s)",
            held >> 20,
            dead_after.as_secs_f64(),
            DEAD_AFTER,
            total.as_secs_f64(),
            repair.as_secs_f64(),
            (held as f64 / (1 << 20) as f64) / repair.as_secs_f64().max(0.001)
        );
        let status = cluster.status_json();
        assert_eq!(status["under_replicated_chunks"], 0);
        assert_eq!(status["missing_chunks"], 0);
        // Stat via the CLI agrees: every chunk on 3 live nodes.
        let stat = cluster.stat_json("/repair/data.bin");
        for c in stat["chunks"].as_array().unwrap() {
            let r: Vec<&str> = c["replicas"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap())
                .collect();
            assert_eq!(r.len(), 3, "{c}");
            assert!(!r.contains(&victim_id.as_str()), "{c}");
        }
        let copy = work.path().join("copy.bin");
        client.get_file("/repair/data.bin", &copy).await.unwrap();
        assert_eq!(file_digest(&copy), (want, size));
    });
}

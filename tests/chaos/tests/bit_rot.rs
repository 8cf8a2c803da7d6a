//! Scenario 5: bit rot. Bytes flipped in a chunk file on disk are detected on
//! read (the read is served from another replica) and by the scrubber, and
//! the bad replica is replaced from a good copy.

use std::time::Duration;

use dfs_chaos::{
    Cluster, ClusterOptions, check_replicas, check_replicas_on_disk, check_status, flip_byte,
    metric_sum, metrics_text, payload, read_all, run, wait_for,
};
use dfs_client::PutOptions;

const FAILURES: &str = "dfs_datanode_checksum_failures_total";

#[test]
fn flipped_bytes_are_detected_served_around_and_repaired() {
    run(Duration::from_secs(180), async {
        // datanode-3 scrubs every second; the others only at start-up.
        let fast_scrub: Vec<String> =
            ["--scrub-interval", "1s", "--scrub-bytes-per-second", "1GiB"]
                .map(String::from)
                .to_vec();
        let cluster = Cluster::start(ClusterOptions {
            datanodes: 4,
            chunk_size: "1MiB".into(),
            per_datanode_args: vec![vec![], vec![], vec![], fast_scrub],
            ..Default::default()
        })
        .await;
        let client = cluster.client().await;
        // 33 chunks over 4 nodes: the read step needs a chunk that datanode-3
        // does not hold (each chunk misses one of the 4 nodes; with 9 chunks
        // none might miss datanode-3: (3/4)^9 = 7.5%; with 33, < 0.01%).
        let data = payload(5, (32 << 20) + 4321);
        client
            .put_bytes(data.clone(), "/rot.bin", &PutOptions::default())
            .await
            .unwrap();
        let map = dfs_chaos::replicated_map(&client, "/rot.bin", 3, &[]).await;
        check_replicas_on_disk(&cluster, &map, &data).unwrap();
        let scrubber = cluster.datanodes[3].node_id().unwrap();

        // 1. On read: corrupt one replica of a chunk the scrubbing node does
        //    not hold, then read until a reader has tried that replica (the
        //    coordinator lists healthy replicas in a per-chunk hash order,
        //    so the first-listed one is tried first while every node stays
        //    healthy). Every read must return the written bytes.
        //    Let the heartbeats after the upload settle before taking the
        //    first-listed replica, so no node is still ranked suspect.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let settled = client.chunk_map("/rot.bin").await.unwrap();
        let read_chunk = settled
            .chunks
            .iter()
            // A whole 1 MiB chunk: the flipped byte is at 300,000, and the
            // 4,321-byte tail chunk lives in a volume, not a chunk file.
            .find(|c| is_big(c) && c.replicas.iter().all(|r| r.node_id != scrubber))
            .expect("a chunk not on the scrubbing node");
        let read_node = cluster.index_of(&read_chunk.replicas[0].node_id).unwrap();
        let read_id = read_chunk.chunk_id.to_string();
        flip_byte(&cluster.datanodes[read_node].chunk_path(&read_id), 300_000);
        let mut detected = false;
        for _ in 0..40 {
            let got = read_all(&client, "/rot.bin")
                .await
                .expect("read served around the bad replica");
            assert!(got == data, "read returned corrupt bytes");
            let m = metrics_text(cluster.datanodes[read_node].metrics).unwrap();
            if metric_sum(&m, FAILURES, "\"read\"") >= 1.0 {
                detected = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        assert!(
            detected,
            "datanode-{read_node} never counted a read checksum failure in 40 reads"
        );

        // 2. By the scrubber: corrupt a chunk held by datanode-3 and nobody reads it.
        let scrub_chunk = map
            .chunks
            .iter()
            .find(|c| {
                is_big(c)
                    && c.index != read_chunk.index
                    && c.replicas.iter().any(|r| r.node_id == scrubber)
            })
            .expect("a chunk on the scrubbing node");
        let scrub_id = scrub_chunk.chunk_id.to_string();
        flip_byte(&cluster.datanodes[3].chunk_path(&scrub_id), 10);
        wait_for(
            "the scrubber to find the flipped byte",
            Duration::from_secs(30),
            || async {
                let m = metrics_text(cluster.datanodes[3].metrics)?;
                if metric_sum(&m, FAILURES, "\"scrub\"") >= 1.0 {
                    Ok(())
                } else {
                    Err("no scrub failure yet".into())
                }
            },
        )
        .await;

        // 3. Both bad replicas are replaced: 3 replicas per chunk, every one
        //    of them on disk with the written bytes.
        wait_for(
            "the corrupt replicas to be replaced",
            Duration::from_secs(60),
            || async {
                let map = client
                    .chunk_map("/rot.bin")
                    .await
                    .map_err(|e| e.to_string())?;
                check_replicas(&map, 3, &[])?;
                check_status(&client.status().await.map_err(|e| e.to_string())?, false)?;
                check_replicas_on_disk(&cluster, &map, &data)
            },
        )
        .await;
        let got = read_all(&client, "/rot.bin").await.unwrap();
        assert!(got == data);
        println!(
            "scenario 5: read-path and scrubber corruption detected; both replicas replaced; reads byte-identical"
        );
    });
}

/// A chunk stored in a chunk file of its own (not in a small-chunk volume).
fn is_big(c: &dfs_client::ChunkLocation) -> bool {
    c.size > 512 << 10
}

//! Scenario 1: a datanode SIGKILLed in the middle of a large upload.
//!
//! The upload either completes (the failed chunk streams are re-planned on
//! other nodes, or the write quorum holds) or fails with a clear error; a
//! confirmed file never has a missing chunk, reads back byte-identical and is
//! repaired back to the replication factor. Nothing half-written stays on
//! disk.
//!
//! Size: `DFS_CHAOS_UPLOAD_MIB` (default 256 MiB, the figure).

use std::time::{Duration, Instant};

use dfs_chaos::{
    Cluster, ClusterOptions, check_replicas, check_status, env_u64, file_digest, run, wait_for,
    write_payload_file,
};
use dfs_client::PutOptions;

#[test]
fn datanode_killed_mid_upload_never_confirms_a_file_with_a_missing_chunk() {
    run(Duration::from_secs(300), async {
        let mib = env_u64("DFS_CHAOS_UPLOAD_MIB", 256);
        let size = mib << 20;
        let cluster = Cluster::start(ClusterOptions {
            datanodes: 4,
            coordinator_args: vec!["--over-replication-grace".into(), "2s".into()],
            ..Default::default()
        })
        .await;
        let client = cluster.client().await;
        let work = tempfile::tempdir().unwrap();
        let src = work.path().join("big.bin");
        let want = write_payload_file(&src, 1, size);

        // Kill a datanode once a quarter of the bytes are acknowledged.
        let acked = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let progress = {
            let acked = acked.clone();
            std::sync::Arc::new(move |n: u64| {
                acked.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
            })
        };
        let options = PutOptions {
            progress: Some(progress),
            ..Default::default()
        };
        let started = Instant::now();
        let upload = {
            let client = client.clone();
            let src = src.clone();
            tokio::spawn(async move { client.put_file(&src, "/big.bin", &options).await })
        };
        let victim = 1;
        let mut cluster = cluster;
        let killed_at = wait_for("a quarter of the upload", Duration::from_secs(120), || {
            let acked = acked.load(std::sync::atomic::Ordering::Relaxed);
            async move {
                if acked >= size / 4 {
                    Ok(acked)
                } else {
                    Err(format!("{acked} bytes acknowledged"))
                }
            }
        })
        .await;
        let victim_id = cluster.datanodes[victim].node_id().expect("node id");
        cluster.datanodes[victim].kill9();
        let result = upload.await.expect("upload task");
        let took = started.elapsed();
        println!(
            "scenario 1: {mib} MiB upload, datanode {victim_id} SIGKILLed after {killed_at} bytes acknowledged; \
             outcome after {took:?}: {}",
            match &result {
                Ok(_) => "completed".to_string(),
                Err(e) => format!("failed: {e}"),
            }
        );

        match result {
            Ok(info) => {
                assert_eq!(info.size, size);
                // Never a confirmed file with a missing chunk: every chunk
                // has at least one live replica right away…
                let map = client.chunk_map("/big.bin").await.unwrap();
                assert_eq!(map.chunks.len() as u64, size.div_ceil(4 << 20));
                for c in &map.chunks {
                    assert!(
                        c.replicas.iter().any(|r| r.node_id != victim_id),
                        "chunk {} has no live replica",
                        c.index
                    );
                }
                // …it reads back byte-identical…
                let copy = work.path().join("copy.bin");
                client.get_file("/big.bin", &copy).await.unwrap();
                assert_eq!(file_digest(&copy), (want, size), "downloaded bytes differ");
                // …and it is repaired back to 3 replicas off the dead node.
                let repaired = Instant::now();
                wait_for("repair to 3 replicas", Duration::from_secs(120), || async {
                    let map = client
                        .chunk_map("/big.bin")
                        .await
                        .map_err(|e| e.to_string())?;
                    check_replicas(&map, 3, &[&victim_id])?;
                    check_status(&client.status().await.map_err(|e| e.to_string())?, false)
                })
                .await;
                println!(
                    "scenario 1: back at 3 replicas {:?} after the upload",
                    repaired.elapsed()
                );
            }
            Err(e) => {
                // A clear error, and the path does not exist.
                let msg = e.to_string();
                assert!(msg.contains("/big.bin"), "unclear error: {msg}");
                assert!(
                    client.stat("/big.bin").await.is_err(),
                    "failed upload is visible"
                );
            }
        }
        // Nothing half-written stays on the live nodes.
        wait_for("no temp files", Duration::from_secs(30), || async {
            let left: Vec<_> = cluster
                .datanodes
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != victim)
                .flat_map(|(_, d)| d.temp_files())
                .collect();
            if left.is_empty() {
                Ok(())
            } else {
                Err(format!("{left:?}"))
            }
        })
        .await;
        // The killed node comes back clean: its start-up removes its temp files.
        cluster.datanodes[victim].start();
        cluster.wait_healthy(4).await;
        assert!(cluster.datanodes[victim].temp_files().is_empty());
    });
}

//! Scenario 9: the coordinator's volume is lost (a wrong PVC, a restore, a
//! wrong `DFS_COORDINATOR`): a coordinator starts on an **empty** data
//! directory next to datanodes that hold every chunk of the cluster. Before
//! fencing, every datanode deleted every chunk within seconds (they were all
//! orphans to the new namespace). Now the datanodes refuse the foreign
//! coordinator, the coordinator refuses them, nothing is deleted, and with
//! the original coordinator back every file reads byte-identical.

use std::time::Duration;

use dfs_chaos::{
    Cluster, ClusterOptions, metric_sum, metrics_text, payload, read_all, run, wait_for,
};
use dfs_client::PutOptions;

#[test]
fn a_coordinator_on_an_empty_data_dir_deletes_nothing() {
    run(Duration::from_secs(240), async {
        let mut cluster = Cluster::start(ClusterOptions {
            chunk_size: "1MiB".into(),
            // Short graces: without fencing the orphans would go in ~1 s.
            coordinator_args: ["--orphan-grace", "1s", "--over-replication-grace", "1s"]
                .map(String::from)
                .to_vec(),
            ..Default::default()
        })
        .await;
        let client = cluster.client().await;
        client.mkdir("/keep", true).await.unwrap();
        let files: Vec<(String, u64, usize)> = [
            (1u64, 3 << 20),
            (2, 100 << 10),
            (3, 4096),
            (4, (5 << 20) / 2),
        ]
        .iter()
        .map(|&(seed, len)| (format!("/keep/f{seed}.bin"), seed, len))
        .collect();
        for (path, seed, len) in &files {
            client
                .put_bytes(payload(*seed, *len), path, &PutOptions::default())
                .await
                .unwrap();
        }
        let old_id = cluster.status_json()["cluster_id"]
            .as_str()
            .unwrap()
            .to_string();
        let held = |cluster: &Cluster| -> Vec<Vec<String>> {
            cluster
                .datanodes
                .iter()
                .map(|d| {
                    let mut ids = d.stored_chunks();
                    ids.sort();
                    ids
                })
                .collect()
        };
        let before = held(&cluster);
        let replicas: usize = before.iter().map(Vec::len).sum();
        assert!(replicas >= 3 * 7, "{replicas} replicas on disk");

        // The coordinator's volume is gone: a new coordinator, same address,
        // empty directory.
        cluster.coordinator.kill9();
        let data_dir = cluster.coordinator.data_dir.clone();
        let kept = data_dir.with_extension("orig");
        std::fs::rename(&data_dir, &kept).unwrap();
        cluster.coordinator.start();

        // Every datanode refuses it (and is refused), by its own metric.
        for d in &cluster.datanodes {
            let addr = d.metrics;
            wait_for(
                &format!("{} fenced", d.name),
                Duration::from_secs(30),
                || async move {
                    let text = metrics_text(addr)?;
                    let fenced = metric_sum(&text, "dfs_datanode_fenced", "");
                    if fenced == 1.0 {
                        Ok(())
                    } else {
                        Err(format!("fenced = {fenced}"))
                    }
                },
            )
            .await;
        }
        let status = cluster.status_json();
        let new_id = status["cluster_id"].as_str().unwrap().to_string();
        assert_ne!(new_id, old_id, "an empty coordinator has a new cluster id");
        assert_eq!(
            status["nodes"].as_array().unwrap().len(),
            0,
            "no datanode of the old cluster registered: {status}"
        );
        // Many times the orphan grace: before fencing, every chunk was gone
        // by now.
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert_eq!(held(&cluster), before, "a datanode deleted chunks");
        let log = std::fs::read_to_string(&cluster.coordinator.log).unwrap();
        assert!(
            log.contains(&format!("belongs to cluster \"{old_id}\""))
                && log.contains(&format!("this coordinator is cluster \"{new_id}\"")),
            "the refusal names both clusters"
        );
        for d in &cluster.datanodes {
            let dlog = std::fs::read_to_string(&d.log).unwrap();
            assert!(
                dlog.contains("coordinator refused this datanode") || dlog.contains("refusing it"),
                "{} logs the refusal",
                d.name
            );
        }

        // The original coordinator is back: everything is there.
        cluster.coordinator.kill9();
        std::fs::remove_dir_all(&data_dir).unwrap();
        std::fs::rename(&kept, &data_dir).unwrap();
        cluster.coordinator.start();
        cluster.wait_healthy(3).await;
        let client = cluster.client().await;
        for (path, seed, len) in &files {
            let got = read_all(&client, path).await.unwrap();
            assert!(got == payload(*seed, *len), "{path} differs");
        }
        assert_eq!(held(&cluster), before);
        println!(
            "scenario 9: {} files, {replicas} replicas kept through an empty coordinator (cluster {new_id} refused by 3 datanodes of {old_id})",
            files.len()
        );
    });
}

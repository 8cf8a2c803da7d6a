//! Scenario 10: the wall clock of the coordinator and of a datanode steps
//! forward an hour, then back an hour (NTP after a suspend, an admin, a VM
//! migration). Liveness, graces, upload expiry and maintenance windows run
//! on the monotonic clock, so no node is declared dead, no open upload
//! expires early, no maintenance window ends early, nothing is repaired or
//! deleted. The step is real: both processes run under Debian's libfaketime
//! with only the wall clock shifted. Run against one coordinator and
//! against a group of three (every member's clock steps).

use std::time::Duration;

use dfs_chaos::{Cluster, ClusterOptions, LIBFAKETIME, payload, read_all, run, shifted_clock_env};
use dfs_client::NodeState;
use dfs_client::PutOptions;
use dfs_proto::coordinator_client::CoordinatorClient;
use dfs_proto::{ReplanChunkRequest, UploadFileRequest};

#[test]
fn a_wall_clock_step_of_an_hour_either_way_changes_nothing() {
    scenario(1);
}

#[test]
fn a_wall_clock_step_on_a_coordinator_group_changes_nothing() {
    scenario(3);
}

/// Installs Debian's faketime package when it is missing (the machine is
/// Debian and root; CI installs it too). Once per process: the scenarios
/// run in parallel and dpkg takes one installer at a time.
fn ensure_faketime() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if !std::path::Path::new(LIBFAKETIME).exists() {
            let installed = std::process::Command::new("apt-get")
                .args(["install", "-y", "-qq", "faketime"])
                .env("DEBIAN_FRONTEND", "noninteractive")
                .status();
            eprintln!("apt-get install faketime: {installed:?}");
        }
    });
    assert!(
        std::path::Path::new(LIBFAKETIME).exists(),
        "scenario 10 needs {LIBFAKETIME} (Debian package faketime)"
    );
}

fn scenario(coordinators: usize) {
    ensure_faketime();
    run(Duration::from_secs(240), async {
        let scratch = tempfile::tempdir().unwrap();
        let coord_clock = scratch.path().join("coordinator.clock");
        let node_clock = scratch.path().join("datanode-0.clock");
        for f in [&coord_clock, &node_clock] {
            std::fs::write(f, "+0\n").unwrap();
        }
        let cluster = Cluster::start(ClusterOptions {
            coordinators,
            datanodes: 4,
            chunk_size: "1MiB".into(),
            coordinator_args: ["--orphan-grace", "2s", "--over-replication-grace", "2s"]
                .map(String::from)
                .to_vec(),
            coordinator_env: shifted_clock_env(&coord_clock),
            per_datanode_env: vec![shifted_clock_env(&node_clock)],
            ..Default::default()
        })
        .await;
        let client = cluster.client().await;
        client
            .put_bytes(payload(10, 3 << 20), "/f", &PutOptions::default())
            .await
            .unwrap();
        // An upload left open (1 h TTL), and a datanode in maintenance for
        // 10 minutes.
        let first = cluster.url.split(',').next().unwrap().to_string();
        let channel = dfs_common_endpoint(&first).await;
        let mut raw = CoordinatorClient::new(channel);
        let plan = raw
            .upload_file(UploadFileRequest {
                path: "/open".into(),
                size: 1000,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let nodes = client.nodes().await.unwrap();
        let resting = nodes[3].node_id.clone();
        client
            .set_maintenance(&resting, true, Duration::from_secs(600))
            .await
            .unwrap();

        for (step, label) in [("+3600", "forward"), ("-3600", "back")] {
            for f in [&coord_clock, &node_clock] {
                std::fs::write(f, format!("{step}\n")).unwrap();
            }
            // Past dead-after (3 s) and every grace.
            for _ in 0..10 {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let nodes = client.nodes().await.unwrap();
                for n in &nodes {
                    let want = if n.node_id == resting {
                        NodeState::Maintenance
                    } else {
                        NodeState::Healthy
                    };
                    assert_eq!(
                        n.state,
                        Some(want),
                        "clock stepped {label}: {} is {:?}",
                        n.node_id,
                        n.state
                    );
                }
                let status = client.status().await.unwrap();
                assert_eq!(status.under_replicated_chunks, 0, "stepped {label}");
                // The step is real: the coordinator's wall clock (which
                // labels heartbeats for humans) is an hour off ours.
                let ours = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_millis() as i64;
                let theirs = nodes[0].last_heartbeat_unix_ms as i64;
                let offset_s = (theirs - ours) / 1000;
                assert!(
                    (offset_s - step.parse::<i64>().unwrap()).abs() < 60,
                    "the coordinator's clock is {offset_s} s off, expected {step}"
                );
            }
            // The open upload is still open.
            raw.replan_chunk(ReplanChunkRequest {
                upload_id: plan.upload_id.clone(),
                index: 0,
                exclude_nodes: vec![],
            })
            .await
            .unwrap_or_else(|e| panic!("stepped {label}: the open upload expired: {e}"));
        }
        let got = read_all(&client, "/f").await.unwrap();
        assert!(got == payload(10, 3 << 20));
        for c in std::iter::once(&cluster.coordinator).chain(&cluster.peers) {
            let log = std::fs::read_to_string(&c.log).unwrap();
            assert!(
                !log.contains("\"repair\""),
                "nothing was repaired ({})",
                c.name
            );
            assert!(!log.contains("expired unconfirmed"), "{}", c.name);
        }
        println!(
            "scenario 10 ({coordinators} coordinators): wall clock stepped +1h and -1h on the coordinators and a datanode: 0 nodes dead, 0 repairs, the open upload and the maintenance window kept"
        );
    });
}

async fn dfs_common_endpoint(url: &str) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(url.to_string())
        .unwrap()
        .connect()
        .await
        .unwrap()
}

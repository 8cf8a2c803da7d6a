//! Scenario 4: a network partition of one datanode, made with
//! `docker network disconnect` on a user-defined Docker network (a real cut:
//! the container keeps running with its data, it just cannot talk to anyone).
//!
//! The cut node is marked dead and its chunks are repaired around it; when
//! it is connected again it re-joins on its own, and the now-surplus replicas
//! are deleted: no chunk ends below or stays above its factor.
//!
//! It needs a Docker engine (and builds the runtime image), which a fresh
//! machine with only the Rust toolchain lacks: so it is `#[ignore]`d, counted
//! as such by `cargo test --workspace`, and `.ci/run` runs it explicitly
//! (`cargo test -p dfs-chaos --test partition -- --ignored`), where it must
//! pass. It never passes without running.

use std::time::{Duration, Instant};

use dfs_chaos::docker::{DockerCluster, unavailable};
use dfs_chaos::{payload, run, wait_for};

fn node_states(c: &DockerCluster) -> Result<Vec<(String, String, String)>, String> {
    let nodes = c.cli_json(&["nodes", "--json"])?;
    Ok(nodes
        .as_array()
        .ok_or("nodes --json is not a list")?
        .iter()
        .map(|n| {
            (
                n["node_id"].as_str().unwrap_or_default().to_string(),
                n["address"].as_str().unwrap_or_default().to_string(),
                n["state"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect())
}

/// Replica lists per chunk from `stat --json`.
fn replicas(c: &DockerCluster, path: &str) -> Result<Vec<Vec<String>>, String> {
    let stat = c.cli_json(&["stat", "--json", path])?;
    Ok(stat["chunks"]
        .as_array()
        .ok_or("no chunks in stat --json")?
        .iter()
        .map(|ch| {
            ch["replicas"]
                .as_array()
                .map(|r| {
                    r.iter()
                        .filter_map(|v| v.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default()
        })
        .collect())
}

#[test]
#[ignore = "needs a Docker engine; .ci/run runs it with --ignored"]
fn partitioned_datanode_is_repaired_around_and_its_surplus_deleted_on_return() {
    if let Some(reason) = unavailable() {
        panic!("the container scenario cannot run: {reason}");
    }
    run(Duration::from_secs(300), async {
        let c = DockerCluster::start(4).expect("start containers");
        wait_for("4 healthy datanodes", Duration::from_secs(60), || async {
            let n = node_states(&c)?;
            let healthy = n.iter().filter(|(_, _, s)| s == "healthy").count();
            if healthy == 4 {
                Ok(())
            } else {
                Err(format!("{n:?}"))
            }
        })
        .await;
        let data = payload(4, (12 << 20) + 777);
        c.cli(&["put", "-", "/part.bin"], Some(&data)).expect("put");
        let before = replicas(&c, "/part.bin").unwrap();
        assert!(before.iter().all(|r| r.len() == 3), "{before:?}");

        // Cut the datanode holding the most replicas.
        let victim = c.datanodes[3].clone();
        let victim_id = node_states(&c)
            .unwrap()
            .into_iter()
            .find(|(_, a, _)| a.contains(&victim))
            .map(|(id, _, _)| id)
            .expect("victim registered");
        let held = before.iter().filter(|r| r.contains(&victim_id)).count();
        eprintln!("partition: cutting {victim} off");
        c.disconnect(&victim).expect("disconnect");
        let cut = Instant::now();
        wait_for(
            "the cut node to be declared dead",
            Duration::from_secs(30),
            || async {
                let n = node_states(&c)?;
                match n.iter().find(|(id, _, _)| *id == victim_id) {
                    Some((_, _, s)) if s == "dead" => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            },
        )
        .await;
        let dead_at = cut.elapsed();
        wait_for(
            "repair around the cut node",
            Duration::from_secs(120),
            || async {
                let r = replicas(&c, "/part.bin")?;
                if r.iter().all(|r| r.len() == 3 && !r.contains(&victim_id)) {
                    Ok(())
                } else {
                    Err(format!("{r:?}"))
                }
            },
        )
        .await;
        let repaired_at = cut.elapsed();
        eprintln!("partition: repaired after {repaired_at:?}; reading");
        // Reads are byte-identical while it is cut off.
        let got = c.cli_bytes(&["get", "/part.bin", "-"], None).expect("get");
        assert!(got == data, "read differs while the node is cut off");

        // Heal: it re-joins by itself and the surplus copies go away.
        eprintln!("partition: reconnecting {victim}");
        c.connect(&victim).expect("connect");
        let healed = Instant::now();
        wait_for("the node to re-join", Duration::from_secs(60), || async {
            let n = node_states(&c)?;
            match n.iter().find(|(id, _, _)| *id == victim_id) {
                Some((_, _, s)) if s == "healthy" => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
        let rejoined_at = healed.elapsed();
        wait_for(
            "exactly 3 replicas and a clean status",
            Duration::from_secs(90),
            || async {
                let r = replicas(&c, "/part.bin")?;
                if !r.iter().all(|r| r.len() == 3) {
                    return Err(format!("replicas {r:?}"));
                }
                let s = c.cli_json(&["status", "--json"])?;
                for k in [
                    "under_replicated_chunks",
                    "missing_chunks",
                    "over_replicated_chunks",
                ] {
                    if s[k] != 0 {
                        return Err(format!("{k} = {}", s[k]));
                    }
                }
                Ok(())
            },
        )
        .await;
        let settled_at = healed.elapsed();
        let got = c.cli_bytes(&["get", "/part.bin", "-"], None).expect("get");
        assert!(got == data, "read differs after the node re-joined");
        println!(
            "scenario 4: datanode cut off by docker network disconnect (held {held} of {} chunks): dead after {:.1}s, \
             repaired around after {:.1}s; reconnected: re-joined after {:.1}s, surplus deleted, exactly 3 replicas after {:.1}s",
            before.len(),
            dead_at.as_secs_f64(),
            repaired_at.as_secs_f64(),
            rejoined_at.as_secs_f64(),
            settled_at.as_secs_f64()
        );
    });
}

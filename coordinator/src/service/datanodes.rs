//! Datanodes: registration (with fencing by cluster id), the heartbeat
//! stream, and the cluster status built from what they report.

use super::*;

impl CoordinatorService {
    pub(super) async fn register_impl(
        &self,
        req: pb::RegisterDataNodeRequest,
    ) -> Result<pb::RegisterDataNodeResponse, Status> {
        let node_id: NodeId = parse_id(req.node_id)?;
        if !(req.address.starts_with("http://") || req.address.starts_with("https://"))
            || req.address.len() > 256
            || req.address.parse::<tonic::codegen::http::Uri>().is_err()
        {
            return Err(Status::invalid_argument(format!(
                "invalid address {:?}: expected a gRPC URL like http://host:port (at most 256 bytes)",
                truncate(&req.address, 80)
            )));
        }
        if self.ctx.security.is_tls() && !req.address.starts_with("https://") {
            return Err(Status::invalid_argument(format!(
                "invalid address {:?}: this cluster runs mutual TLS, a datanode registers an https:// address",
                truncate(&req.address, 80)
            )));
        }
        let topology = req.topology.unwrap_or_default();
        if [&topology.zone, &topology.rack, &topology.host, &req.version]
            .iter()
            .any(|f| f.len() > 256)
        {
            return Err(Status::invalid_argument(
                "topology fields and version are at most 256 bytes each",
            ));
        }
        self.check_cluster(&node_id, &req.cluster_id)?;
        self.ctx
            .propose(Command::RegisterNode(NodeRecord {
                node_id: node_id.clone(),
                address: req.address.clone(),
                topology: TopologyRecord {
                    zone: topology.zone,
                    rack: topology.rack,
                    host: topology.host,
                },
                version: req.version,
                draining: false,
                maintenance_until_ms: 0,
            }))
            .await?;
        let cluster_id = {
            let mut st = self.ctx.lock();
            st.cluster
                .on_register(&node_id, req.info.into(), monotonic_ms());
            cluster_id_wire(&st.ns)
        };
        tracing::info!(%node_id, address = %req.address, "datanode registered");
        let token_keys = self
            .ctx
            .ring()
            .map(|r| r.node_keys(node_id.as_str()))
            .unwrap_or_default();
        Ok(pb::RegisterDataNodeResponse {
            token_keys,
            node_id: node_id.into_string(),
            heartbeat_interval_ms: self.ctx.config.heartbeat_interval.as_millis() as u64,
            cluster_id,
        })
    }

    /// Fencing: a datanode that belongs to another cluster is refused, and
    /// nothing of it is touched. (An empty id: a datanode that never joined,
    /// or one older than cluster ids.)
    pub(super) fn check_cluster(&self, node_id: &NodeId, theirs: &str) -> Result<(), Status> {
        if theirs.is_empty() {
            return Ok(());
        }
        let st = self.ctx.lock();
        let ours = cluster_id_wire(&st.ns);
        if theirs == ours {
            return Ok(());
        }
        let files = st.ns.file_count();
        drop(st);
        self.ctx.metrics.foreign_datanodes.inc();
        let msg = format!(
            "datanode {node_id} belongs to cluster {:?}, this coordinator is cluster {ours:?} \
             ({files} files in its namespace: is its metadata empty, restored, or another \
             cluster's?); the datanode is refused and none of its chunks is deleted",
            truncate(theirs, 64)
        );
        tracing::error!(%node_id, theirs = %truncate(theirs, 64), ours, "{msg}");
        Err(Status::failed_precondition(msg))
    }

    pub(super) fn cluster_status(&self) -> pb::ClusterStatus {
        let now = monotonic_ms();
        let st = self.ctx.lock();
        let nodes = st.cluster.status(&st.ns, now);
        let stats = st.cluster.stats();
        let (total, used) = st.cluster.capacity(&st.ns, now);
        pb::ClusterStatus {
            cluster_id: cluster_id_wire(&st.ns),
            nodes: nodes.iter().map(status_to_proto).collect(),
            files: st.ns.file_count(),
            directories: st.ns.dir_count(),
            chunks: st.ns.chunk_count(),
            under_replicated_chunks: stats.under_replicated,
            missing_chunks: stats.missing,
            over_replicated_chunks: stats.over_replicated,
            capacity_total_bytes: total,
            capacity_used_bytes: used,
            repair_bytes_remaining: stats.repair_bytes_remaining,
            repair_eta_seconds: stats.repair_eta_seconds,
            replication: self.ctx.config.replication,
            safe_mode: Some(safe_mode_to_proto(&st.cluster.safe_mode(&st.ns))),
            delete_budget: Some(pb::DeleteBudgetStatus {
                deferred: stats.deletes_deferred,
                exhausted_nodes: st
                    .cluster
                    .budget_exhausted_nodes()
                    .into_iter()
                    .map(String::from)
                    .collect(),
                exhausted_total: stats.budget_exhausted_total,
            }),
            corrupt_replicas: stats.corrupt_replicas,
            coordinators: self.group_status(),
        }
    }
}

impl CoordinatorService {
    /// The coordinator group as this member sees it (empty when single).
    pub(super) fn group_status(&self) -> Vec<pb::CoordinatorMember> {
        let Some(group) = &self.ctx.group else {
            return Vec::new();
        };
        let raft = &group.raft;
        let m = raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let voters: std::collections::BTreeSet<u64> = membership.voter_ids().collect();
        let leader_log = m.last_log_index.unwrap_or(0);
        membership
            .nodes()
            .map(|(id, node)| {
                let me = *id == m.id;
                let role = if m.current_leader == Some(*id) {
                    "leader"
                } else if !voters.contains(id) {
                    "learner"
                } else if me && m.state == openraft::ServerState::Candidate {
                    "candidate"
                } else if me || m.current_leader.is_some() {
                    "follower"
                } else {
                    "unknown"
                };
                // The leader knows how far each member's log matches its own.
                let matched = m
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(id).copied().flatten())
                    .map(|l| l.index);
                pb::CoordinatorMember {
                    id: *id,
                    address: node.addr.clone(),
                    role: role.into(),
                    term: m.current_term,
                    last_log_index: if me { leader_log } else { matched.unwrap_or(0) },
                    applied_index: if me {
                        m.last_applied.map_or(0, |l| l.index)
                    } else {
                        0
                    },
                    // On the leader: a member it has not matched yet (a
                    // learner just added) lacks the whole log.
                    lag: if me || m.replication.is_none() {
                        0
                    } else {
                        leader_log.saturating_sub(matched.unwrap_or(0))
                    },
                    answering: me,
                    incarnation: node.incarnation,
                    reported_incarnation: if me {
                        group.me.incarnation
                    } else {
                        group.reported.get(*id)
                    },
                    voter: voters.contains(id),
                }
            })
            .collect()
    }
}

pub(super) async fn heartbeat_loop(
    ctx: Arc<Ctx>,
    mut inbound: Streaming<pb::Heartbeat>,
    tx: ResponseTx,
    caller: Option<Arc<Principal>>,
) {
    let mut shutdown = ctx.shutdown.clone();
    let mut node: Option<NodeId> = None;
    let mut sent_ring: Option<Arc<dfs_common::token::KeyRing>> = None;
    loop {
        let msg = tokio::select! {
            m = inbound.message() => m,
            _ = shutdown.wait_for(|v| *v) => break,
        };
        let mut hb = match msg {
            Ok(Some(hb)) => hb,
            Ok(None) => break,
            Err(e) => {
                tracing::debug!(node_id = ?node, "heartbeat stream ended: {e}");
                break;
            }
        };
        let start = Instant::now();
        if let Err(status) = speaks_for_itself(caller.as_deref(), &hb.node_id) {
            ctx.metrics.refused("itself");
            ctx.metrics.rpc("DataNodeHeartbeat", status.code(), 0.0);
            let _ = tx.send(Err(status)).await;
            break;
        }
        // Followers do not track datanodes: the stream ends with the
        // leader's address, and the datanode goes there.
        if let Err(status) = ctx.check_leader() {
            ctx.metrics.rpc("DataNodeHeartbeat", status.code(), 0.0);
            let _ = tx.send(Err(status)).await;
            break;
        }
        let cluster = std::mem::take(&mut hb.cluster_id);
        let ev = match HeartbeatEvent::try_from(hb) {
            Ok(ev) => ev,
            Err(status) => {
                ctx.metrics.rpc("DataNodeHeartbeat", status.code(), 0.0);
                let _ = tx.send(Err(status)).await;
                break;
            }
        };
        let id = ev.node_id.clone();
        if let Err(status) = CoordinatorService::new(ctx.clone()).check_cluster(&id, &cluster) {
            ctx.metrics.rpc("DataNodeHeartbeat", status.code(), 0.0);
            let _ = tx.send(Err(status)).await;
            break;
        }
        let result = {
            let mut guard = ctx.lock();
            let st = &mut *guard;
            st.cluster.on_heartbeat(&st.ns, ev, monotonic_ms())
        };
        match result {
            Ok((commands, state)) => {
                // Fail-stop: nothing is ordered once the log failed.
                let commands = if ctx.committer.has_failed() {
                    Vec::new()
                } else {
                    commands
                };
                if node.as_ref() != Some(&id) {
                    ctx.streams
                        .lock()
                        .expect("streams lock poisoned")
                        .insert(id.clone(), tx.clone());
                    node = Some(id.clone());
                }
                ctx.metrics.rpc(
                    "DataNodeHeartbeat",
                    tonic::Code::Ok,
                    start.elapsed().as_secs_f64(),
                );
                // This node's keys on the stream's first answer and after
                // every change of the ring (rotation).
                let ring = ctx.ring();
                let token_keys = match &ring {
                    Some(r) if !sent_ring.as_ref().is_some_and(|s| Arc::ptr_eq(s, r)) => {
                        r.node_keys(id.as_str())
                    }
                    _ => Vec::new(),
                };
                sent_ring = ring;
                let token = |chunk: &str, target: &str| ctx.replicate_token(&id, chunk, target);
                let resp = pb::HeartbeatResponse {
                    token_keys,
                    commands: commands
                        .into_iter()
                        .map(|c| command_to_proto(c, &token))
                        .collect(),
                    state: state_to_proto(state) as i32,
                    cluster_id: cluster_id_wire(&ctx.lock().ns),
                };
                if tx.send(Ok(resp)).await.is_err() {
                    break;
                }
            }
            Err(e) => {
                let status = Status::from(e);
                ctx.metrics.rpc("DataNodeHeartbeat", status.code(), 0.0);
                let _ = tx.send(Err(status)).await;
                break;
            }
        }
    }
    if let Some(id) = node {
        let mut streams = ctx.streams.lock().expect("streams lock poisoned");
        if streams.get(&id).is_some_and(|t| t.same_channel(&tx)) {
            streams.remove(&id);
        }
    }
}

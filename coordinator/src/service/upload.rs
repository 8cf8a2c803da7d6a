//! Uploads: planning (placement of every chunk), re-planning a chunk
//! around failed nodes, confirming with verified replicas, and the batched
//! forms of UploadFile and ConfirmUpload.

use super::*;

/// The 128 bits of a new upload or chunk id.
fn random_id() -> u128 {
    rand::random()
}

impl CoordinatorService {
    /// The node addresses of planned replicas, for the wire.
    fn addresses(st: &State, nodes: &[NodeId]) -> Vec<pb::NodeAddress> {
        nodes
            .iter()
            .map(|id| pb::NodeAddress {
                node_id: id.to_string(),
                address: st
                    .ns
                    .nodes()
                    .get(id)
                    .map(|n| n.address.clone())
                    .unwrap_or_default(),
            })
            .collect()
    }

    /// The write token of a planned chunk: write (and roll back) on the
    /// planned nodes, for the caller, while the plan lives.
    fn write_token(
        &self,
        chunk_id: &str,
        nodes: &[NodeId],
        caller: Option<&Principal>,
        expires_at_unix_s: u64,
    ) -> Option<pb::ChunkToken> {
        let nodes: Vec<String> = nodes.iter().map(|n| n.to_string()).collect();
        self.ctx.token(
            chunk_id,
            dfs_common::token::ops::WRITE,
            caller,
            &nodes,
            expires_at_unix_s,
        )
    }

    /// UploadFile: parse, plan (a pure decision, see [`crate::planning`]),
    /// make the plan durable, answer it.
    pub(super) async fn upload_file_impl(
        &self,
        req: pb::UploadFileRequest,
        caller: Option<&Principal>,
    ) -> Result<pb::UploadPlan, Status> {
        let cfg = &self.ctx.config;
        let request = planning::UploadRequest {
            path: parse_path(&req.path)?,
            size: req.size,
            replication: req.replication,
            chunk_size: req.chunk_size,
            overwrite: req.overwrite,
        };
        let defaults = planning::Defaults {
            replication: cfg.replication,
            chunk_size: cfg.chunk_size.0,
            write_quorum: cfg.write_quorum,
            upload_ttl_ms: cfg.upload_ttl.as_millis() as u64,
        };
        let now = planning::Now {
            monotonic_ms: monotonic_ms(),
            unix_ms: now_unix_ms(),
        };
        let (command, chunks) = {
            let mut guard = self.ctx.lock();
            let st = &mut *guard;
            let command = planning::plan_upload(
                &mut st.cluster,
                &st.ns,
                &defaults,
                &request,
                now,
                &mut random_id,
                &mut rand::rng(),
            )?;
            let Command::BeginUpload(upload) = &command else {
                unreachable!("plan_upload returns BeginUpload");
            };
            let expires = upload.expires_at_ms.div_ceil(1000);
            let chunks: Vec<pb::PlannedChunk> = upload
                .chunks
                .iter()
                .map(|c| {
                    let chunk_id = c.chunk_id.to_string();
                    let token = self.write_token(&chunk_id, &c.nodes, caller, expires);
                    pb::PlannedChunk {
                        index: c.index,
                        chunk_id,
                        offset: c.offset,
                        size: c.size,
                        nodes: Self::addresses(st, &c.nodes),
                        token,
                    }
                })
                .collect();
            (command, chunks)
        };
        let Command::BeginUpload(upload) = &command else {
            unreachable!("plan_upload returns BeginUpload");
        };
        let plan = pb::UploadPlan {
            upload_id: upload.upload_id.to_string(),
            chunks,
            chunk_size: upload.chunk_size,
            replication: upload.replication,
            write_quorum: upload.write_quorum,
            expires_at_unix_ms: upload.expires_at_ms,
        };
        // Answered once applied: a plan lost in a crash fails only its
        // ConfirmUpload (NOT_FOUND), and its chunks become orphans.
        self.ctx.propose_applied(command).await?;
        Ok(plan)
    }

    /// ReplanChunk: a new chunk id on other datanodes.
    pub(super) async fn replan_impl(
        &self,
        req: pb::ReplanChunkRequest,
        caller: Option<&Principal>,
    ) -> Result<pb::PlannedChunk, Status> {
        if req.exclude_nodes.len() > MAX_EXCLUDED_NODES {
            return Err(Status::invalid_argument(format!(
                "ReplanChunk excludes {} nodes; at most {MAX_EXCLUDED_NODES}",
                req.exclude_nodes.len()
            )));
        }
        let exclude: Vec<NodeId> = parse_ids(req.exclude_nodes)?;
        let upload_id: UploadId = parse_id(req.upload_id)?;
        let now = planning::Now {
            monotonic_ms: monotonic_ms(),
            unix_ms: now_unix_ms(),
        };
        let (chunk, command, nodes, ids, expires) = {
            let mut guard = self.ctx.lock();
            let st = &mut *guard;
            let Some((chunk, command)) = planning::plan_replan(
                &mut st.cluster,
                &st.ns,
                &upload_id,
                req.index,
                &exclude,
                now,
                &mut random_id,
                &mut rand::rng(),
            )?
            else {
                return Err(Status::invalid_argument(format!(
                    "upload {upload_id} has no chunk {}",
                    req.index
                )));
            };
            let Command::ReplanChunk { nodes, .. } = &command else {
                unreachable!("plan_replan returns ReplanChunk");
            };
            let ids = nodes.clone();
            let nodes = Self::addresses(st, nodes);
            let expires = st
                .ns
                .upload(&upload_id)
                .map(|u| u.expires_at_ms.div_ceil(1000))
                .unwrap_or_else(|_| self.ctx.token_expiry());
            (chunk, command, nodes, ids, expires)
        };
        let Command::ReplanChunk { chunk_id, .. } = &command else {
            unreachable!("plan_replan returns ReplanChunk");
        };
        let chunk_id = chunk_id.to_string();
        let token = self.write_token(&chunk_id, &ids, caller, expires);
        self.ctx.propose(command).await?;
        Ok(pb::PlannedChunk {
            index: chunk.index,
            chunk_id,
            offset: chunk.offset,
            size: chunk.size,
            nodes,
            token,
        })
    }

    /// ConfirmUpload: parse, check the plan, wait (briefly) until enough
    /// replicas vouched for their bytes ([`crate::confirm`] decides), then
    /// commit.
    pub(super) async fn confirm_impl(
        &self,
        req: pb::ConfirmUploadRequest,
    ) -> Result<pb::ConfirmUploadResponse, Status> {
        let ConfirmRequest {
            upload_id,
            records,
            receipts,
            pending,
            refused_receipts,
        } = ConfirmRequest::parse(req, self.ctx.ring().as_deref())?;
        self.ctx
            .metrics
            .receipts_refused
            .inc_by(refused_receipts as u64);
        // What follows reads the namespace (the first answer, the plan).
        // A leader that has just taken over may not have applied every
        // entry committed before it led: the plan a client holds, or the
        // first confirm of this retry, would be missing, and the confirm
        // refused NOT_FOUND (seen in the chaos leader-kill scenario). The
        // read barrier waits until it has (at once with one coordinator,
        // or under the leader's lease).
        self.ctx.reads.wait(&self.ctx.metrics).await?;
        // A retry of a confirm already applied (its answer lost, say in a
        // leader change) gets the first answer: the upload id is the key.
        let key = format!("confirm/{upload_id}");
        let first = self.ctx.lock().ns.once_outcome(&key).cloned();
        if let Some(outcome) = first {
            return Ok(pb::ConfirmUploadResponse {
                file: Some(file_info(&entry_of(outcome)?)),
            });
        }
        let records = self
            .verified_replicas(&upload_id, records, &receipts)
            .await?;
        let now_ms = now_unix_ms();
        // Replicas still writing: repair waits for their own reports. Noted
        // before the confirm is applied: a repair tick that ran between the
        // apply and a later note saw the chunk short of a copy and nothing
        // writing it, and copied it elsewhere (a fourth replica once the
        // pending one landed; seen in CI). Until the confirm applies, the
        // chunk belongs to the open upload and the note holds nothing back.
        if pending.iter().any(|p| !p.is_empty()) {
            let mut st = self.ctx.lock();
            let mono = monotonic_ms();
            for (r, nodes) in records.iter().zip(&pending) {
                st.cluster.expect_writing(&r.id, nodes, mono);
            }
        }
        let outcome = self
            .ctx
            .propose(Command::Once {
                request_id: key,
                now_ms,
                command: Box::new(Command::ConfirmUpload {
                    upload_id,
                    chunks: records,
                    now_ms,
                }),
            })
            .await?;
        Ok(pb::ConfirmUploadResponse {
            file: Some(file_info(&entry_of(outcome)?)),
        })
    }

    /// Keeps, for each chunk, only the claimed replicas that vouch for the
    /// confirmed checksum and size themselves ([`confirm::check`]); waits
    /// (a few heartbeats) for the reports of the others while the write
    /// quorum is not met.
    pub(super) async fn verified_replicas(
        &self,
        upload_id: &UploadId,
        records: Vec<ChunkRecord>,
        receipts: &[confirm::Receipts],
    ) -> Result<Vec<ChunkRecord>, Status> {
        let quorum = {
            let st = self.ctx.lock();
            // The plan first (ids, sizes, known nodes): a bad confirm fails
            // at once, before any wait for reports.
            st.ns.check_confirm(upload_id, &records)?;
            st.ns.upload(upload_id)?.write_quorum as usize
        };
        let wait = (self.ctx.config.heartbeat_interval * 3 + std::time::Duration::from_secs(1))
            .min(std::time::Duration::from_secs(15));
        let deadline = tokio::time::Instant::now() + wait;
        let mut vouched = confirm::Vouched::new(records.len());
        loop {
            let short = {
                let st = self.ctx.lock();
                confirm::check(
                    &records,
                    receipts,
                    |chunk, node| st.cluster.reported_checksum(chunk, node),
                    quorum,
                    &mut vouched,
                )
            };
            match short {
                Err(e @ confirm::ConfirmError::Mismatch { .. }) => {
                    self.ctx.metrics.confirm_mismatch.inc();
                    return Err(e.into());
                }
                Err(e) => return Err(e.into()),
                Ok(false) => break,
                Ok(true) if tokio::time::Instant::now() >= deadline => break,
                Ok(true) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
            }
        }
        Ok(confirm::finish(records, &vouched, quorum, wait)?)
    }

    /// UploadFiles: every request planned as UploadFile would plan it, all
    /// at once, so that their plans share the metadata log's group commits.
    pub(super) async fn upload_files_impl(
        &self,
        req: pb::UploadFilesRequest,
        caller: Option<&Principal>,
    ) -> Result<pb::UploadFilesResponse, Status> {
        check_batch_len(req.files.len())?;
        let default_chunk = self.ctx.config.chunk_size.0;
        let chunks: u64 = req
            .files
            .iter()
            .map(|f| {
                let chunk = if f.chunk_size == 0 {
                    default_chunk
                } else {
                    f.chunk_size
                };
                f.size.div_ceil(chunk.max(1))
            })
            .fold(0u64, u64::saturating_add);
        if chunks > MAX_BATCH_CHUNKS {
            return Err(Status::invalid_argument(format!(
                "the batch plans {chunks} chunks; one UploadFiles call plans at most \
                 {MAX_BATCH_CHUNKS} (use UploadFile for large files)"
            )));
        }
        let results = self
            .run_batch("UploadFile", req.files, |f| {
                self.upload_file_impl(f, caller)
            })
            .await;
        Ok(pb::UploadFilesResponse {
            results: results
                .into_iter()
                .map(|r| pb::UploadFileResult {
                    result: Some(match r {
                        Ok(plan) => pb::upload_file_result::Result::Plan(plan),
                        Err(st) => pb::upload_file_result::Result::Error(call_error(&st)),
                    }),
                })
                .collect(),
        })
    }

    /// ConfirmUploads: every request confirmed as ConfirmUpload would
    /// confirm it, all at once, so that they share group commits.
    pub(super) async fn confirm_uploads_impl(
        &self,
        req: pb::ConfirmUploadsRequest,
    ) -> Result<pb::ConfirmUploadsResponse, Status> {
        check_batch_len(req.uploads.len())?;
        let results = self
            .run_batch("ConfirmUpload", req.uploads, |u| self.confirm_impl(u))
            .await;
        Ok(pb::ConfirmUploadsResponse {
            results: results
                .into_iter()
                .map(|r| pb::ConfirmUploadResult {
                    result: Some(match r {
                        Ok(c) => pb::confirm_upload_result::Result::Confirmed(c),
                        Err(st) => pb::confirm_upload_result::Result::Error(call_error(&st)),
                    }),
                })
                .collect(),
        })
    }

    /// Runs every call of a batch at once, so that their commands share the
    /// metadata log's group commits, and counts each under its own method
    /// (the rate and latency of uploads read the same whether clients batch
    /// or not). Results come back in request order.
    pub(super) async fn run_batch<Req, T, Fut>(
        &self,
        method: &'static str,
        calls: Vec<Req>,
        call: impl Fn(Req) -> Fut,
    ) -> Vec<Result<T, Status>>
    where
        Fut: Future<Output = Result<T, Status>>,
    {
        let start = Instant::now();
        futures::future::join_all(calls.into_iter().map(|c| {
            let answer = call(c);
            async move {
                let r = answer.await;
                let code = match &r {
                    Ok(_) => tonic::Code::Ok,
                    Err(s) => s.code(),
                };
                self.ctx
                    .metrics
                    .batched_rpc(method, code, start.elapsed().as_secs_f64());
                r
            }
        }))
        .await
    }
}

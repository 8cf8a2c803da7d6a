//! Uploads: planning (placement of every chunk), re-planning a chunk
//! around failed nodes, confirming with verified replicas, and the batched
//! forms of UploadFile and ConfirmUpload.

use super::*;
use dfs_common::id::random_hex_id as random_id;

impl CoordinatorService {
    /// The node addresses of planned replicas, for the wire.
    fn addresses(st: &State, nodes: &[NodeId]) -> Vec<pb::NodeAddress> {
        nodes
            .iter()
            .map(|id| pb::NodeAddress {
                node_id: id.clone(),
                address: st
                    .ns
                    .nodes()
                    .get(id)
                    .map(|n| n.address.clone())
                    .unwrap_or_default(),
            })
            .collect()
    }

    /// UploadFile: parse, plan (a pure decision, see [`crate::planning`]),
    /// make the plan durable, answer it.
    pub(super) async fn upload_file_impl(
        &self,
        req: pb::UploadFileRequest,
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
            let chunks: Vec<pb::PlannedChunk> = upload
                .chunks
                .iter()
                .map(|c| pb::PlannedChunk {
                    index: c.index,
                    chunk_id: c.chunk_id.clone(),
                    offset: c.offset,
                    size: c.size,
                    nodes: Self::addresses(st, &c.nodes),
                })
                .collect();
            (command, chunks)
        };
        let Command::BeginUpload(upload) = &command else {
            unreachable!("plan_upload returns BeginUpload");
        };
        let plan = pb::UploadPlan {
            upload_id: upload.upload_id.clone(),
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
    ) -> Result<pb::PlannedChunk, Status> {
        if req.exclude_nodes.len() > MAX_EXCLUDED_NODES {
            return Err(Status::invalid_argument(format!(
                "ReplanChunk excludes {} nodes; at most {MAX_EXCLUDED_NODES}",
                req.exclude_nodes.len()
            )));
        }
        for n in &req.exclude_nodes {
            check_node_id(n)?;
        }
        let now = planning::Now {
            monotonic_ms: monotonic_ms(),
            unix_ms: now_unix_ms(),
        };
        let (chunk, command, nodes) = {
            let mut guard = self.ctx.lock();
            let st = &mut *guard;
            let Some((chunk, command)) = planning::plan_replan(
                &mut st.cluster,
                &st.ns,
                &req.upload_id,
                req.index,
                &req.exclude_nodes,
                now,
                &mut random_id,
                &mut rand::rng(),
            )?
            else {
                return Err(Status::invalid_argument(format!(
                    "upload {} has no chunk {}",
                    req.upload_id, req.index
                )));
            };
            let Command::ReplanChunk { nodes, .. } = &command else {
                unreachable!("plan_replan returns ReplanChunk");
            };
            let nodes = Self::addresses(st, nodes);
            (chunk, command, nodes)
        };
        let Command::ReplanChunk { chunk_id, .. } = &command else {
            unreachable!("plan_replan returns ReplanChunk");
        };
        let chunk_id = chunk_id.clone();
        self.ctx.propose(command).await?;
        Ok(pb::PlannedChunk {
            index: chunk.index,
            chunk_id,
            offset: chunk.offset,
            size: chunk.size,
            nodes,
        })
    }

    pub(super) async fn confirm_impl(
        &self,
        req: pb::ConfirmUploadRequest,
    ) -> Result<pb::ConfirmUploadResponse, Status> {
        let mut chunks = req.chunks;
        if chunks.len() as u64 > MAX_CHUNKS_PER_FILE {
            return Err(Status::invalid_argument(format!(
                "ConfirmUpload carries {} chunks; a file has at most {MAX_CHUNKS_PER_FILE}",
                chunks.len()
            )));
        }
        chunks.sort_by_key(|c| c.index);
        let mut records = Vec::with_capacity(chunks.len());
        let mut receipts = Vec::with_capacity(chunks.len());
        for (i, c) in chunks.into_iter().enumerate() {
            if c.index != i as u64 {
                return Err(Status::invalid_argument(format!(
                    "chunk indices must be 0..n without gaps or repeats (found {} at position {i})",
                    c.index
                )));
            }
            let Some(meta) = c.chunk else {
                return Err(Status::invalid_argument(format!(
                    "chunk {i} has no ChunkMeta"
                )));
            };
            check_chunk_id(&meta.chunk_id)?;
            if c.replicas.len() > MAX_CONFIRMED_REPLICAS
                || c.receipts.len() > MAX_CONFIRMED_REPLICAS
            {
                return Err(Status::invalid_argument(format!(
                    "chunk {i} names {} replicas and {} receipts; at most {MAX_CONFIRMED_REPLICAS} each",
                    c.replicas.len(),
                    c.receipts.len()
                )));
            }
            for r in &c.replicas {
                check_node_id(r)?;
            }
            receipts.push(
                c.receipts
                    .into_iter()
                    .map(|r| (r.node_id, (r.checksum, r.size)))
                    .collect::<HashMap<_, _>>(),
            );
            records.push(ChunkRecord {
                id: meta.chunk_id,
                checksum: meta.checksum,
                size: meta.size,
                algorithm: meta.checksum_algorithm,
                replicas: c.replicas,
            });
        }
        let records = self
            .verified_replicas(&req.upload_id, records, &receipts)
            .await?;
        let outcome = self
            .ctx
            .propose(Command::ConfirmUpload {
                upload_id: req.upload_id,
                chunks: records,
                now_ms: now_unix_ms(),
            })
            .await?;
        Ok(pb::ConfirmUploadResponse {
            file: Some(file_info(&entry_of(outcome)?)),
        })
    }

    /// Keeps, for each chunk, only the claimed replicas that vouch for the
    /// confirmed checksum and size themselves: by the receipt the primary
    /// collected from them, or by their own chunk report. A replica that
    /// stored something else fails the confirm. Replicas with neither are
    /// waited for (a few heartbeats) while the write quorum is not met.
    pub(super) async fn verified_replicas(
        &self,
        upload_id: &str,
        mut records: Vec<ChunkRecord>,
        receipts: &[HashMap<String, (u32, u64)>],
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
        let mut verified: Vec<Vec<String>> = vec![Vec::new(); records.len()];
        loop {
            let mut short = false;
            {
                let st = self.ctx.lock();
                for (i, rec) in records.iter().enumerate() {
                    let done = &mut verified[i];
                    for node in &rec.replicas {
                        if done.contains(node) {
                            continue;
                        }
                        let said = receipts[i].get(node).copied().or_else(|| {
                            st.cluster
                                .reported_checksum(&rec.id, node)
                                .map(|crc| (crc, rec.size))
                        });
                        match said {
                            Some((crc, size)) if crc == rec.checksum && size == rec.size => {
                                done.push(node.clone())
                            }
                            Some((crc, size)) => {
                                self.ctx.metrics.confirm_mismatch.inc();
                                return Err(Status::failed_precondition(format!(
                                    "chunk {i} ({}): replica {node} stored {size} bytes with crc32c \
                                     {crc:08x}, but the confirm says {} bytes with crc32c {:08x}; \
                                     nothing was committed",
                                    rec.id, rec.size, rec.checksum
                                )));
                            }
                            None => {}
                        }
                    }
                    if done.len() < quorum.max(1) {
                        short = true;
                    }
                }
            }
            if !short || tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        for (i, rec) in records.iter_mut().enumerate() {
            if verified[i].len() < quorum.max(1) {
                return Err(Status::failed_precondition(format!(
                    "chunk {i} ({}): {} of the {} replicas named vouched for crc32c {:08x} \
                     (a receipt or their own chunk report within {wait:?}); the write quorum is \
                     {quorum}; nothing was committed",
                    rec.id,
                    verified[i].len(),
                    rec.replicas.len(),
                    rec.checksum
                )));
            }
            rec.replicas.retain(|n| verified[i].contains(n));
        }
        Ok(records)
    }

    /// UploadFiles: every request planned as UploadFile would plan it, all
    /// at once, so that their plans share the metadata log's group commits.
    pub(super) async fn upload_files_impl(
        &self,
        req: pb::UploadFilesRequest,
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
            .run_batch("UploadFile", req.files, |f| self.upload_file_impl(f))
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

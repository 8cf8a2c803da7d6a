//! Reads of the namespace: chunk maps for downloads, directory listings
//! and one datanode's status.

use super::*;

impl CoordinatorService {
    pub(super) fn download_impl(
        &self,
        req: pb::DownloadFileRequest,
        caller: Option<&Principal>,
    ) -> Result<pb::DownloadFileResponse, Status> {
        let path = parse_path(&req.path)?;
        let now = monotonic_ms();
        let expires = self.ctx.token_expiry();
        let st = self.ctx.lock();
        let (info, file) = st.ns.file(&path)?;
        let mut offset = 0;
        let chunks = file
            .chunks
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let replicas: Vec<pb::NodeAddress> = st
                    .cluster
                    .read_replicas(&st.ns, &c.id, now)
                    .into_iter()
                    .map(|r| pb::NodeAddress {
                        node_id: r.node_id.into_string(),
                        address: r.address,
                    })
                    .collect();
                let ids: Vec<String> = replicas.iter().map(|r| r.node_id.clone()).collect();
                let chunk_id = c.id.to_string();
                let token = self.ctx.token(
                    &chunk_id,
                    dfs_common::token::ops::READ,
                    caller,
                    &ids,
                    expires,
                );
                let loc = pb::ChunkLocation {
                    index: i as u64,
                    offset,
                    chunk: Some(pb::ChunkMeta {
                        chunk_id,
                        checksum: c.checksum,
                        size: c.size,
                        checksum_algorithm: c.algorithm,
                    }),
                    replicas,
                    token,
                };
                offset += c.size;
                loc
            })
            .collect();
        Ok(pb::DownloadFileResponse {
            file: Some(file_info(&info)),
            chunks,
        })
    }

    pub(super) fn list_impl(
        &self,
        req: pb::ListDirectoryRequest,
    ) -> Result<pb::ListDirectoryResponse, Status> {
        let path = parse_path(&req.path)?;
        let limit = match req.page_size as usize {
            0 => DEFAULT_PAGE,
            n => n.min(MAX_PAGE),
        };
        let (entries, more) = self.ctx.lock().ns.list(&path, &req.page_token, limit)?;
        let next_page_token = if more {
            entries.last().map(|e| e.name.clone()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(pb::ListDirectoryResponse {
            entries: entries.iter().map(file_info).collect(),
            next_page_token,
        })
    }

    pub(super) fn node_status(&self, node_id: &NodeId) -> Result<pb::DataNodeStatus, Status> {
        let st = self.ctx.lock();
        st.cluster
            .status(&st.ns, monotonic_ms())
            .iter()
            .find(|s| &s.record.node_id == node_id)
            .map(status_to_proto)
            .ok_or_else(|| Status::not_found(format!("unknown datanode {node_id}")))
    }
}

//! Which cluster this datanode belongs to: the id it persisted in its data
//! directory the first time it joined one (fencing; see
//! [`crate::membership`]). Below the node state, so every layer can ask.

use crate::store::{StoreError, write_atomic};

/// The id of the cluster this node belongs to, persisted in its data
/// directory the first time it joins one.
pub struct ClusterIdentity {
    path: std::path::PathBuf,
    id: std::sync::Mutex<Option<String>>,
}

impl ClusterIdentity {
    /// Reads `<data_dir>/cluster_id` (absent: the node never joined).
    pub fn load(data_dir: &std::path::Path) -> Result<Self, StoreError> {
        let path = data_dir.join("cluster_id");
        let id = match std::fs::read_to_string(&path) {
            Ok(s) if dfs_proto::frame::is_valid_chunk_id(s.trim()) => Some(s.trim().to_string()),
            Ok(s) => {
                // Never guess: a damaged identity file must not let any
                // coordinator command this node.
                return Err(StoreError::Io {
                    action: "parse",
                    path,
                    source: std::io::Error::other(format!(
                        "invalid cluster id {:?}; fix or remove the file by hand",
                        s.trim().chars().take(64).collect::<String>()
                    )),
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => {
                return Err(StoreError::Io {
                    action: "read",
                    path,
                    source,
                });
            }
        };
        Ok(ClusterIdentity {
            path,
            id: std::sync::Mutex::new(id),
        })
    }

    /// The persisted cluster id, if the node joined one.
    pub fn get(&self) -> Option<String> {
        self.id.lock().expect("cluster id lock").clone()
    }

    /// Persists `id` (fsynced before it is used).
    pub(crate) fn adopt(&self, id: &str) -> Result<(), StoreError> {
        write_atomic(&self.path, format!("{id}\n").as_bytes())?;
        *self.id.lock().expect("cluster id lock") = Some(id.to_string());
        Ok(())
    }
}

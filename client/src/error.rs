//! What can go wrong talking to a cluster, typed so that callers (and the
//! CLI's one-line messages) can act on it.

use std::path::PathBuf;

use tonic::{Code, Status};

/// Errors of the client library.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The coordinator endpoint could not be reached.
    #[error("cannot reach the coordinator at {address}: {reason}")]
    CoordinatorUnreachable {
        /// The endpoint tried.
        address: String,
        /// Why (transport error).
        reason: String,
    },
    /// The endpoint URL is malformed.
    #[error("invalid coordinator address {address:?}: {reason}")]
    InvalidEndpoint {
        /// The URL given.
        address: String,
        /// Why it is invalid.
        reason: String,
    },
    /// The remote path does not exist.
    #[error("{path}: no such file or directory")]
    NotFound {
        /// The remote path.
        path: String,
    },
    /// The remote path already exists.
    #[error("{path}: already exists (use --overwrite to replace a file)")]
    AlreadyExists {
        /// The remote path.
        path: String,
    },
    /// The request was refused as malformed (bad path, bad size, …).
    #[error("invalid request: {0}")]
    InvalidArgument(String),
    /// The cluster cannot do it in its current state (e.g. too few datanodes
    /// for the replication factor, a non-empty directory without recursion).
    #[error("{0}")]
    FailedPrecondition(String),
    /// A chunk could not be stored after every retry.
    #[error("failed to upload chunk {index} of {path} after {attempts} attempts: {last_error}")]
    UploadChunk {
        /// Remote path being written.
        path: String,
        /// Index of the chunk.
        index: u64,
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        last_error: String,
    },
    /// No replica of a chunk could serve intact bytes.
    #[error("failed to read chunk {index} ({chunk_id}) of {path} from any replica: {last_error}")]
    DownloadChunk {
        /// Remote path being read.
        path: String,
        /// Index of the chunk.
        index: u64,
        /// The chunk id.
        chunk_id: String,
        /// The last failure.
        last_error: String,
    },
    /// A local file could not be read or written.
    #[error("{}: {source}", path.display())]
    Local {
        /// The local path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Local I/O on a stream (stdin/stdout or a caller's reader/writer).
    #[error("local I/O failed: {0}")]
    Io(#[from] std::io::Error),
    /// The coordinator answered with something this client cannot use (an
    /// id that breaks its rule, a missing field): a version mismatch or a bug.
    #[error("unexpected answer from the coordinator: {0}")]
    Protocol(String),
    /// The caller's credentials do not allow the call (PERMISSION_DENIED),
    /// or it presented none the server accepts (UNAUTHENTICATED).
    #[error("{method} refused: {message}")]
    Denied {
        /// The RPC that was refused.
        method: &'static str,
        /// The server's reason (who the caller is and what it needs).
        message: String,
    },
    /// Any other RPC failure.
    #[error("{method} failed: {}", status.message())]
    Rpc {
        /// The RPC that failed.
        method: &'static str,
        /// The status returned.
        status: Box<Status>,
    },
}

/// "tcp connect error: Connection refused (os error 111)": the status'
/// message and the root cause of its source chain, without debug dumps.
fn transport_reason(status: &Status) -> String {
    let mut root: Option<&dyn std::error::Error> = std::error::Error::source(status);
    while let Some(next) = root.and_then(|e| e.source()) {
        root = Some(next);
    }
    match root.map(|e| e.to_string()) {
        Some(cause) if !status.message().is_empty() && !cause.contains(status.message()) => {
            format!("{}: {cause}", status.message())
        }
        Some(cause) => cause,
        None => status.message().to_string(),
    }
}

impl ClientError {
    /// A status produced locally by the transport (connect refused, reset,
    /// timed out) rather than returned by the coordinator: the coordinator is
    /// unreachable, and the error says which address.
    fn unreachable(coordinator: &str, status: &Status) -> Option<Self> {
        let local = std::error::Error::source(status).is_some();
        let transport = matches!(
            status.code(),
            Code::Unavailable | Code::Unknown | Code::DeadlineExceeded | Code::Cancelled
        );
        (local && transport).then(|| ClientError::CoordinatorUnreachable {
            address: coordinator.to_string(),
            reason: transport_reason(status),
        })
    }

    /// Maps a coordinator status for an operation on `path` to a typed error.
    pub(crate) fn from_status(
        coordinator: &str,
        method: &'static str,
        path: &str,
        status: Status,
    ) -> Self {
        if let Some(e) = Self::unreachable(coordinator, &status) {
            return e;
        }
        match status.code() {
            Code::NotFound => ClientError::NotFound {
                path: path.to_string(),
            },
            Code::AlreadyExists => ClientError::AlreadyExists {
                path: path.to_string(),
            },
            Code::InvalidArgument => ClientError::InvalidArgument(status.message().to_string()),
            Code::FailedPrecondition | Code::ResourceExhausted => {
                ClientError::FailedPrecondition(status.message().to_string())
            }
            Code::PermissionDenied | Code::Unauthenticated => ClientError::Denied {
                method,
                message: status.message().to_string(),
            },
            _ => ClientError::Rpc {
                method,
                status: Box::new(status),
            },
        }
    }

    /// Maps a status of a call that is not about a path.
    pub(crate) fn rpc(coordinator: &str, method: &'static str, status: Status) -> Self {
        if let Some(e) = Self::unreachable(coordinator, &status) {
            return e;
        }
        match status.code() {
            Code::InvalidArgument => ClientError::InvalidArgument(status.message().to_string()),
            Code::FailedPrecondition | Code::NotFound => {
                ClientError::FailedPrecondition(status.message().to_string())
            }
            Code::PermissionDenied | Code::Unauthenticated => ClientError::Denied {
                method,
                message: status.message().to_string(),
            },
            _ => ClientError::Rpc {
                method,
                status: Box::new(status),
            },
        }
    }
}

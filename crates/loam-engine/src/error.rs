//! Engine errors. Each variant names a situation, not a gRPC code; the binary maps them to codes in one table.

use std::{io, path::PathBuf};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request field is malformed or names something loam does not support.
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },

    #[error("volume {id} does not exist on node {node}")]
    VolumeNotFound { id: String, node: String },

    /// A well-formed volume ID whose node is not this one.
    #[error("volume {id} belongs to node {owner}, not to this node ({node}); send the request to {owner}")]
    ForeignVolume { id: String, owner: String, node: String },

    /// A volume's record could not be read at start-up; the volume is held back until an operator repairs it.
    #[error("volume {id} is quarantined: {reason}")]
    Quarantined { id: String, reason: String },

    /// The same name was used before with an incompatible request.
    #[error("volume name {name:?} is already used by volume {id}, {reason}")]
    NameConflict {
        name: String,
        id: String,
        reason: String,
    },

    /// The request could be met by a pool, just not now: out of space or another node's topology.
    #[error("{0}")]
    Exhausted(String),

    /// The request can never be met by this node (bigger than the pool).
    #[error("{0}")]
    OutOfRange(String),

    /// A ListVolumes token that loam did not hand out.
    #[error("starting_token {0:?} is not a volume ID this driver handed out; list again from the start")]
    BadToken(String),

    /// Another operation on the same volume or name is running.
    #[error("an operation on {0} is already in progress; retry later")]
    Busy(String),

    /// The volume is mounted where the operation needs it not to be (or the reverse).
    #[error("{0}")]
    Precondition(String),

    /// Something different is already staged or published at the path.
    #[error("{0}")]
    MountConflict(String),

    /// The path named in a stats request does not hold the volume.
    #[error("volume {id} is not staged or published at {path}")]
    NotAtPath { id: String, path: PathBuf },

    #[error("pool {pool} is unusable: {reason}")]
    PoolUnusable { pool: String, reason: String },

    #[error("{op}: {source}")]
    Io {
        op: String,
        #[source]
        source: io::Error,
    },

    #[error("record {path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },
}

impl Error {
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Error::Invalid {
            field,
            reason: reason.into(),
        }
    }
}

/// Adds the operation to an I/O error, so the message says what loam was doing.
pub trait IoContext<T> {
    fn ctx(self, op: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, op: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| Error::Io { op: op(), source })
    }
}

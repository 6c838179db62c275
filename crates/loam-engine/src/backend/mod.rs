//! Pool kinds. Each kind makes, removes and measures the backing of a volume; the engine does the rest
//! (records, capacity, locking, mounts), so a new kind is one module behind this trait.

use std::{fmt, path::PathBuf};

use crate::{error::Result, types::Capability};

pub mod dir;

/// Space used inside one volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub bytes: u64,
    pub inodes: u64,
}

pub trait Backend: Send + Sync + fmt::Debug {
    /// The kind's name as it appears in configuration: `dir`, `image`, ...
    fn kind(&self) -> &'static str;

    /// Volumes are sized in multiples of this many bytes.
    fn granularity(&self) -> u64 {
        1
    }

    /// Whether the filesystem stops a volume at its size; otherwise sizes are only accounted.
    fn enforces_size(&self) -> bool {
        false
    }

    /// Why this kind cannot serve `cap`, if it cannot.
    fn unsupported(&self, cap: &Capability) -> Option<String>;

    /// Makes the backing of volume `stem` (32 hex digits). Must succeed when it already exists from an
    /// interrupted attempt.
    fn provision(&self, stem: &str, capacity_bytes: u64) -> Result<()>;

    /// Removes the backing of volume `stem`; succeeds when it is already gone.
    fn destroy(&self, stem: &str) -> Result<()>;

    /// Where a filesystem volume's data lives on this node (what NodeStage bind-mounts).
    fn data_path(&self, stem: &str) -> PathBuf;

    /// Whether the backing exists.
    fn exists(&self, stem: &str) -> bool;

    /// Space the volume's data takes now.
    fn usage(&self, stem: &str) -> Result<Usage>;

    /// Stems of every backing present, to find ones that have no record.
    fn backings(&self) -> Result<Vec<String>>;

    /// Why the pool cannot be used right now, if it cannot.
    fn health(&self) -> Option<String>;
}

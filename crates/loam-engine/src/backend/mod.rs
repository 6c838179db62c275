//! Pool kinds. Each kind has two halves:
//! - the controller half makes, removes and measures the backing of a volume from its full spec;
//! - the node half attaches a volume to this node and says what it is: a directory, or a block device (which
//!   the node code formats and mounts for filesystem access, or publishes raw).
//!
//! The engine does the rest (records, capacity, locking, and publishing the two shapes), so a new kind is one
//! module behind this trait.

use std::{
    fmt,
    path::{Path, PathBuf},
};

use crate::{capability::Refusal, error::Result, spec::PoolKind, types::Capability};

pub mod btrfs;
pub mod dir;
pub mod image;

/// Space used inside one volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub bytes: u64,
    pub inodes: u64,
}

/// A volume as its backend knows it: what its record says of its backing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VolumeRef<'a> {
    /// The volume's file-system name: 32 hex digits.
    pub stem: &'a str,
    pub capacity_bytes: u64,
    /// The project ID its directory carries, for pools that enforce sizes with project quota.
    pub project_id: Option<u32>,
}

/// What CreateVolume asks a backend to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProvisionSpec<'a> {
    /// The volume's file-system name: 32 hex digits.
    pub stem: &'a str,
    pub capacity_bytes: u64,
    /// Raw block access, not a filesystem.
    pub block: bool,
    /// The filesystem asked for, if any (already checked against the kind's allow-list).
    pub fs_type: Option<&'a str>,
    /// The project ID allocated for it, when the backend asks for one ([`Backend::project_ids`]).
    pub project_id: Option<u32>,
}

impl ProvisionSpec<'_> {
    pub fn volume(&self) -> VolumeRef<'_> {
        VolumeRef {
            stem: self.stem,
            capacity_bytes: self.capacity_bytes,
            project_id: self.project_id,
        }
    }
}

/// A block device node on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub path: PathBuf,
    pub major: u32,
    pub minor: u32,
}

/// What a volume is once attached to this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attachment {
    /// A directory, bind-mounted for filesystem access.
    Directory(PathBuf),
    /// A block device: formatted (when empty) and mounted for filesystem access, or published raw.
    Device(Device),
}

pub trait Backend: Send + Sync + fmt::Debug {
    fn kind(&self) -> PoolKind;

    /// Volumes are sized in multiples of this many bytes.
    fn granularity(&self) -> u64 {
        1
    }

    /// Whether the volume's size holds on the filesystem; otherwise sizes are only accounted.
    fn enforces_size(&self) -> bool;

    /// Why this kind cannot serve `cap`, if it cannot, naming what can.
    fn refusal(&self, cap: &Capability) -> Option<Refusal>;

    /// Project IDs this kind gives its volumes (one each, recorded, never shared), if it uses any.
    fn project_ids(&self) -> Option<std::ops::RangeInclusive<u32>> {
        None
    }

    /// Whether nothing on the filesystem holds project ID `id` (checked before it is given to a new volume).
    fn project_id_free(&self, _id: u32) -> bool {
        true
    }

    /// Makes the backing of a volume. Must succeed when it already exists from an interrupted attempt.
    fn provision(&self, spec: &ProvisionSpec<'_>) -> Result<()>;

    /// Removes the backing of a volume (detaching it first if it is attached and unused); succeeds when it is
    /// already gone.
    fn destroy(&self, v: &VolumeRef<'_>) -> Result<()>;

    /// Why the backing differs from what the record says, if it does: missing, the wrong size or limit, attached
    /// to a device that shows another file.
    fn check(&self, v: &VolumeRef<'_>) -> Option<String>;

    /// Space the volume's data takes now, measured in O(1) (quota accounting, or a cached measurement).
    fn usage(&self, v: &VolumeRef<'_>) -> Result<Usage>;

    /// Bytes of the volume's size already taken on the pool's filesystem: what is promised and not yet written is
    /// the rest, which capacity holds back from what it offers.
    fn written_bytes(&self, v: &VolumeRef<'_>) -> u64 {
        self.usage(v).map_or(0, |u| u.bytes.min(v.capacity_bytes))
    }

    /// Stems of every backing present, to find ones that have no record.
    fn backings(&self) -> Result<Vec<String>>;

    /// Why the pool cannot be used right now, if it cannot.
    fn health(&self) -> Option<String>;

    /// Attaches the volume to this node (idempotent: an existing attachment is returned, never a second one).
    fn attach(&self, stem: &str) -> Result<Attachment>;

    /// The volume's attachment if it has one now, without making one.
    fn attached(&self, stem: &str) -> Result<Option<Attachment>>;

    /// Undoes `attach`; succeeds when nothing is attached.
    fn detach(&self, stem: &str) -> Result<()>;
}

/// The directory under which a kind keeps its volumes' backings.
pub fn volumes_dir(root: &Path) -> PathBuf {
    root.join("volumes")
}

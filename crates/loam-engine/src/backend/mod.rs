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

use crate::{capability::Refusal, error::Result, record::DeviceClaim, spec::PoolKind, types::Capability};

pub mod btrfs;
pub mod device;
pub mod dir;
pub mod image;
mod settled;

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
    /// The disk it was given, in device pools.
    pub device: Option<&'a DeviceClaim>,
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
    /// The disk chosen for it, when the backend hands out whole entries ([`Backend::entries`]).
    pub device: Option<&'a DeviceClaim>,
}

impl ProvisionSpec<'_> {
    pub fn volume(&self) -> VolumeRef<'_> {
        VolumeRef {
            stem: self.stem,
            capacity_bytes: self.capacity_bytes,
            project_id: self.project_id,
            device: self.device,
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

    /// Why this one volume cannot serve `cap` though its kind can, if it cannot (a disk that is a mount point
    /// takes no mount flags but `ro`).
    fn volume_refusal(&self, _v: &VolumeRef<'_>, _cap: &Capability) -> Option<Refusal> {
        None
    }

    /// For kinds that hand out whole entries instead of bytes (device pools): every entry that serves all of
    /// `caps`, whether it is free to offer now or not. The pool picks among the free ones and holds the one it
    /// picks; `None` for kinds that hand out bytes.
    fn entries(&self, _caps: &[Capability]) -> Option<Vec<Offer>> {
        None
    }

    /// How each entry stands, for status; empty for kinds without entries.
    fn inventory(&self) -> Inventory {
        Inventory::default()
    }

    /// Looks for entries again now (device pools; also done periodically).
    fn rediscover(&self) {}

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

    /// Removes the backing of a volume whose create never finished, so it was never handed out: a disk goes back
    /// without cleaning, as nothing wrote to it.
    fn abandon(&self, v: &VolumeRef<'_>) -> Result<()> {
        self.destroy(v)
    }

    /// Why the backing differs from what the record says, if it does: missing, the wrong size or limit, attached
    /// to a device that shows another file.
    fn check(&self, v: &VolumeRef<'_>) -> Option<String>;

    /// [`Backend::check`] of many volumes at once (a ListVolumes page), in their order.
    fn check_many(&self, vs: &[VolumeRef<'_>]) -> Vec<Option<String>> {
        vs.iter().map(|v| self.check(v)).collect()
    }

    /// The checks of every volume at start-up, many at once, in their order: as [`Backend::check`], which also
    /// notes what each has written where the backend keeps such notes.
    fn check_all(&self, vs: &[VolumeRef<'_>]) -> Vec<Option<String>> {
        vs.iter().map(|v| self.check(v)).collect()
    }

    /// Space the volume's data takes now, measured in O(1) (quota accounting, or a cached measurement).
    fn usage(&self, v: &VolumeRef<'_>) -> Result<Usage>;

    /// Bytes of the volume's size already taken on the pool's filesystem: what is promised and not yet written is
    /// the rest, which capacity holds back from what it offers.
    fn written_bytes(&self, v: &VolumeRef<'_>) -> u64 {
        self.usage(v).map_or(0, |u| u.bytes.min(v.capacity_bytes))
    }

    /// For kinds whose [`Backend::written_bytes`] reads only memory (a cached measurement): a number that changes
    /// whenever any volume's measurement does. The pool then sums under its lock, and reuses the sum until this
    /// number changes or a volume comes or goes. `None`: measured anew each time.
    fn written_generation(&self) -> Option<u64> {
        None
    }

    /// With [`Backend::written_generation`]: bytes written by the volumes whose usage can change while loam
    /// looks away (attached thin images), measured now. [`Backend::written_bytes`] counts them as 0, so the
    /// pool adds this to its reused sum.
    fn written_live(&self) -> u64 {
        0
    }

    /// Told at start-up of each volume that loam's notes say is mounted: it may be written to now.
    fn note_in_use(&self, _v: &VolumeRef<'_>) {}

    /// Stems of every backing present, to find ones that have no record.
    fn backings(&self) -> Result<Vec<String>>;

    /// Whether create and delete write an intent record (state creating, deleting) before they touch the
    /// backing. Kinds whose interrupted creates and deletes leave a backing that start-up recognises
    /// ([`Backend::reclaim`], [`Backend::interrupted_delete`]) do without, saving two flushes each.
    fn intent_records(&self) -> bool {
        true
    }

    /// Whether the volume's delete was interrupted (its backing is being removed); start-up then finishes it.
    fn interrupted_delete(&self, _v: &VolumeRef<'_>) -> bool {
        false
    }

    /// Start-up, after the records are read (`known`: the stems that have one): removes what interrupted creates
    /// and deletes left that can hold no data, and returns the stems of the backings left for an operator.
    fn reclaim(&self, known: &std::collections::HashSet<String>) -> Result<Vec<String>> {
        Ok(self
            .backings()?
            .into_iter()
            .filter(|s| !known.contains(s))
            .collect())
    }

    /// Why the pool cannot be used right now, if it cannot.
    fn health(&self) -> Option<String>;

    /// Attaches the volume to this node (idempotent: an existing attachment is returned, never a second one).
    fn attach(&self, v: &VolumeRef<'_>) -> Result<Attachment>;

    /// The volume's attachment if it has one now, without making one.
    fn attached(&self, v: &VolumeRef<'_>) -> Result<Option<Attachment>>;

    /// Undoes `attach`; succeeds when nothing is attached.
    fn detach(&self, v: &VolumeRef<'_>) -> Result<()>;

    /// Whether the backend knows for certain that nothing was ever written to the volume (so there is no
    /// filesystem on it to probe for before formatting); `false` when it cannot tell.
    fn holds_no_data(&self, _v: &VolumeRef<'_>) -> bool {
        false
    }
}

/// An entry of a pool that hands out whole entries, as [`Backend::entries`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    pub claim: DeviceClaim,
    pub size: u64,
    /// The filesystem the volume will have: the mount point's, or what the device will be formatted with.
    pub fs_type: Option<String>,
    /// Present, adopted, clean and held by nothing else: the pool may give it to a volume.
    pub free: bool,
}

/// How a pool's entries stand.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inventory {
    pub entries: Vec<EntryStatus>,
    /// Paths in the discovery directory that are not used, and why.
    pub skipped: Vec<(PathBuf, String)>,
}

/// One entry: its identity, where it is, its size and its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryStatus {
    pub key: String,
    pub path: PathBuf,
    pub size: u64,
    /// `free`, `not adopted: …`, `busy: …`, `cleaning …`, `cleanup failed: …`, `missing …`; the pool says
    /// `in use by volume …` for the ones it holds.
    pub state: String,
    /// Whether it can be given to a volume now (before the pool's holds).
    pub free: bool,
}

/// The directory under which a kind keeps its volumes' backings.
pub fn volumes_dir(root: &Path) -> PathBuf {
    root.join("volumes")
}

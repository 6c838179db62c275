//! Plain request and answer types of the engine: what the binary builds from protobuf and reads back.

use std::{collections::BTreeMap, path::PathBuf};

use serde::{Deserialize, Serialize};

/// A topology segment: `{"loam.csi/node": "node-1", ...}`.
pub type Segment = BTreeMap<String, String>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AccessMode {
    SingleNodeWriter,
    SingleNodeReaderOnly,
    MultiNodeReaderOnly,
    MultiNodeSingleWriter,
    MultiNodeMultiWriter,
    SingleNodeSingleWriter,
    SingleNodeMultiWriter,
}

impl AccessMode {
    /// Node-local volumes can only be reached from one node.
    pub fn is_single_node(self) -> bool {
        matches!(
            self,
            AccessMode::SingleNodeWriter
                | AccessMode::SingleNodeReaderOnly
                | AccessMode::SingleNodeSingleWriter
                | AccessMode::SingleNodeMultiWriter
        )
    }

    pub fn is_read_only(self) -> bool {
        matches!(
            self,
            AccessMode::SingleNodeReaderOnly | AccessMode::MultiNodeReaderOnly
        )
    }

    /// Modes that allow one publication only (CSI: a second target path is FAILED_PRECONDITION).
    pub fn is_single_publication(self) -> bool {
        matches!(
            self,
            AccessMode::SingleNodeWriter | AccessMode::SingleNodeSingleWriter
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AccessType {
    Mount {
        fs_type: String,
        mount_flags: Vec<String>,
    },
    Block,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capability {
    pub access: AccessType,
    pub mode: AccessMode,
}

#[derive(Debug, Clone, Default)]
pub struct CreateRequest {
    pub name: String,
    /// 0 = unset.
    pub required_bytes: u64,
    /// 0 = unset.
    pub limit_bytes: u64,
    pub capabilities: Vec<Capability>,
    pub parameters: BTreeMap<String, String>,
    pub requisite: Vec<Segment>,
    pub preferred: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    pub id: String,
    pub name: String,
    pub pool: String,
    pub capacity_bytes: u64,
    pub context: BTreeMap<String, String>,
    pub topology: Segment,
    /// Why the volume is not healthy, if it is not.
    pub abnormal: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapacityReport {
    pub available_bytes: u64,
    pub maximum_volume_bytes: u64,
}

/// One row of NodeGetVolumeStats: bytes or inodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UsageRow {
    pub total: u64,
    pub used: u64,
    pub available: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeStats {
    pub bytes: UsageRow,
    /// None for raw block volumes, which have no inodes (and whose bytes row carries only the total).
    pub inodes: Option<UsageRow>,
    pub abnormal: Option<String>,
}

#[derive(Debug, Clone)]
pub struct StageRequest {
    pub volume_id: String,
    pub staging_path: PathBuf,
    pub capability: Capability,
}

#[derive(Debug, Clone)]
pub struct PublishRequest {
    pub volume_id: String,
    pub staging_path: PathBuf,
    pub target_path: PathBuf,
    pub capability: Capability,
    pub read_only: bool,
}

//! Protobuf ↔ engine conversions and the field checks every RPC shares. Messages name the field and say what
//! to send instead.

use std::{collections::BTreeMap, path::PathBuf};

use loam_engine::types::{AccessMode, AccessType, Capability, Segment, Volume};
use tonic::Status;

use crate::csi;

pub fn required<'a>(value: &'a str, field: &str) -> Result<&'a str, Status> {
    if value.is_empty() {
        return Err(Status::invalid_argument(format!("{field} is required")));
    }
    Ok(value)
}

/// A path from a request that loam will create or mount on: absolute, normalized, no `..`.
pub fn path(value: &str, field: &str) -> Result<PathBuf, Status> {
    required(value, field)?;
    loam_sys::fs::check_absolute_path(value).map_err(|e| Status::invalid_argument(format!("{field}: {e}")))
}

pub fn non_negative(v: i64, field: &str) -> Result<u64, Status> {
    u64::try_from(v).map_err(|_| Status::invalid_argument(format!("{field} must not be negative (got {v})")))
}

pub fn access_mode(m: Option<&csi::volume_capability::AccessMode>) -> Result<AccessMode, Status> {
    use csi::volume_capability::access_mode::Mode;
    let m = m.ok_or_else(|| Status::invalid_argument("volume_capability.access_mode is required"))?;
    Ok(match Mode::try_from(m.mode) {
        Ok(Mode::SingleNodeWriter) => AccessMode::SingleNodeWriter,
        Ok(Mode::SingleNodeReaderOnly) => AccessMode::SingleNodeReaderOnly,
        Ok(Mode::MultiNodeReaderOnly) => AccessMode::MultiNodeReaderOnly,
        Ok(Mode::MultiNodeSingleWriter) => AccessMode::MultiNodeSingleWriter,
        Ok(Mode::MultiNodeMultiWriter) => AccessMode::MultiNodeMultiWriter,
        Ok(Mode::SingleNodeSingleWriter) => AccessMode::SingleNodeSingleWriter,
        Ok(Mode::SingleNodeMultiWriter) => AccessMode::SingleNodeMultiWriter,
        Ok(Mode::Unknown) | Err(_) => {
            return Err(Status::invalid_argument(format!(
                "volume_capability.access_mode.mode {} is not a known access mode",
                m.mode
            )));
        }
    })
}

pub fn capability(c: &csi::VolumeCapability) -> Result<Capability, Status> {
    use csi::volume_capability::AccessType as Pb;
    let access = match &c.access_type {
        Some(Pb::Mount(m)) => AccessType::Mount {
            fs_type: m.fs_type.clone(),
            mount_flags: m.mount_flags.clone(),
        },
        Some(Pb::Block(_)) => AccessType::Block,
        None => {
            return Err(Status::invalid_argument(
                "volume_capability.access_type is required: set mount or block",
            ));
        }
    };
    Ok(Capability {
        access,
        mode: access_mode(c.access_mode.as_ref())?,
    })
}

pub fn one_capability(c: Option<&csi::VolumeCapability>, field: &str) -> Result<Capability, Status> {
    capability(c.ok_or_else(|| Status::invalid_argument(format!("{field} is required")))?)
}

pub fn capabilities(cs: &[csi::VolumeCapability]) -> Result<Vec<Capability>, Status> {
    if cs.is_empty() {
        return Err(Status::invalid_argument(
            "volume_capabilities is required: give at least one",
        ));
    }
    cs.iter().map(capability).collect()
}

pub fn params(m: &std::collections::HashMap<String, String>) -> BTreeMap<String, String> {
    m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

pub fn segment(t: &csi::Topology) -> Segment {
    params(&t.segments)
}

pub fn topology(seg: &Segment) -> csi::Topology {
    csi::Topology {
        segments: seg.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
    }
}

pub fn volume(v: &Volume) -> csi::Volume {
    csi::Volume {
        capacity_bytes: i64::try_from(v.capacity_bytes).unwrap_or(i64::MAX),
        volume_id: v.id.clone(),
        volume_context: v.context.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        content_source: None,
        accessible_topology: vec![topology(&v.topology)],
    }
}

pub fn condition(abnormal: &Option<String>) -> csi::VolumeCondition {
    csi::VolumeCondition {
        abnormal: abnormal.is_some(),
        message: abnormal.clone().unwrap_or_else(|| "volume is healthy".into()),
    }
}

pub fn bytes(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

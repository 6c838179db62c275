//! Volume IDs: `<node tag>_<pool>_<32 hex>`.
//!
//! IDs are generated, never taken from a request. The charset is `[a-z0-9.-_]`, no part is empty and `..` never
//! appears, so an ID can never form a path by itself; they fit CSI's 128-byte limit whatever the node's name.
//! The UUID is derived from the node and the request name, so CreateVolume finds its own volume again after a crash.

use std::fmt;

use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::error::{Error, Result};

/// Longest node name kept verbatim in IDs; longer (or unusual) names are replaced by a hash.
const MAX_NODE_TAG: usize = 63;
/// Longest pool name; with the node tag, two separators and 32 hex digits this keeps IDs within 128 bytes.
pub const MAX_POOL_NAME: usize = 31;
/// CSI's limit for strings such as volume IDs and names.
pub const MAX_CSI_STRING: usize = 128;

/// Namespace for name-derived UUIDs (a fixed random value; changing it would orphan every volume).
const NAME_NAMESPACE: Uuid = Uuid::from_u128(0x6c6f_616d_2d76_6f6c_8e1a_52f7_3c09_d4b1);

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VolumeId {
    pub node_tag: String,
    pub pool: String,
    pub uuid: Uuid,
}

impl VolumeId {
    pub fn new(node_tag: &str, pool: &str, name: &str) -> Self {
        VolumeId {
            node_tag: node_tag.to_owned(),
            pool: pool.to_owned(),
            uuid: name_uuid(node_tag, name),
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        let bad = |why: &str| Error::invalid("volume_id", format!("{s:?} is not a loam volume ID: {why}"));
        if s.len() > MAX_CSI_STRING {
            return Err(bad("longer than 128 bytes"));
        }
        let mut parts = s.rsplitn(3, '_');
        let (Some(hex), Some(pool), Some(node_tag)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad("expected <node>_<pool>_<uuid>"));
        };
        if !is_node_tag(node_tag) {
            return Err(bad("bad node part"));
        }
        if !is_pool_name(pool) {
            return Err(bad("bad pool part"));
        }
        if hex.len() != 32 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(bad("bad uuid part"));
        }
        let uuid = Uuid::parse_str(hex).map_err(|_| bad("bad uuid part"))?;
        Ok(VolumeId {
            node_tag: node_tag.to_owned(),
            pool: pool.to_owned(),
            uuid,
        })
    }

    /// The file-system name used for this volume's directory and record: 32 lowercase hex digits.
    pub fn file_stem(&self) -> String {
        self.uuid.simple().to_string()
    }
}

impl fmt::Display for VolumeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}_{}_{}", self.node_tag, self.pool, self.uuid.simple())
    }
}

pub fn name_uuid(node_tag: &str, name: &str) -> Uuid {
    let mut key = Vec::with_capacity(node_tag.len() + 1 + name.len());
    key.extend_from_slice(node_tag.as_bytes());
    key.push(0);
    key.extend_from_slice(name.as_bytes());
    Uuid::new_v5(&NAME_NAMESPACE, &key)
}

/// The node's part of volume IDs: the node name itself when it is a short DNS label-ish name, else `h` and
/// 20 hex digits of its SHA-256.
pub fn node_tag(node_id: &str) -> String {
    if is_node_tag(node_id) && !looks_hashed(node_id) {
        return node_id.to_owned();
    }
    format!("h{}", &sha256_hex(node_id.as_bytes())[..20])
}

/// SHA-256 of `data` as 64 lowercase hex digits: a name derived from untrusted bytes that can never be a path.
pub(crate) fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect()
}

/// A real node named like a hash tag is hashed too, so two nodes can never share a tag by accident.
fn looks_hashed(s: &str) -> bool {
    s.len() == 21 && s.starts_with('h') && s[1..].bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn is_node_tag(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_NODE_TAG
        && b.iter()
            .all(|c| matches!(c, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-'))
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && !s.contains("..")
}

/// Pool names: 1–31 of `[a-z0-9-]`, starting and ending with a letter or digit.
pub fn is_pool_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_POOL_NAME
        && b.iter().all(|c| matches!(c, b'a'..=b'z' | b'0'..=b'9' | b'-'))
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_length_bound() {
        let long_node = "n".repeat(63);
        for node in ["node-1", "worker.example.com", long_node.as_str()] {
            let id = VolumeId::new(&node_tag(node), &"p".repeat(MAX_POOL_NAME), "pvc-1234");
            let s = id.to_string();
            assert!(s.len() <= MAX_CSI_STRING, "{s} is {} bytes", s.len());
            assert_eq!(VolumeId::parse(&s).unwrap(), id);
        }
    }

    #[test]
    fn uuid_is_stable_per_node_and_name() {
        let a = VolumeId::new("n1", "default", "pvc-a");
        assert_eq!(a, VolumeId::new("n1", "default", "pvc-a"));
        assert_ne!(a.uuid, VolumeId::new("n1", "default", "pvc-b").uuid);
        assert_ne!(a.uuid, VolumeId::new("n2", "default", "pvc-a").uuid);
    }

    #[test]
    fn long_or_odd_node_names_are_hashed() {
        let long = "a".repeat(253);
        let t = node_tag(&long);
        assert_eq!(t.len(), 21);
        assert!(t.starts_with('h'));
        assert_ne!(node_tag(&"a".repeat(252)), t);
        for odd in ["Node_1", "a..b", "-x", "x/y", "../..", "", "UPPER"] {
            let t = node_tag(odd);
            assert!(is_node_tag(&t), "{odd:?} -> {t:?}");
            assert!(t.starts_with('h') && t.len() == 21, "{odd:?} -> {t:?}");
        }
        assert_eq!(node_tag("worker-7"), "worker-7");
    }

    #[test]
    fn hash_form_cannot_be_spoofed_by_a_real_name() {
        // A real node named like a hash tag is hashed itself, so two nodes never share a tag by accident.
        let hashed = node_tag(&"a".repeat(100));
        assert_ne!(node_tag(&hashed), hashed);
    }

    #[test]
    fn rejects_ids_that_could_be_paths_or_are_malformed() {
        let good = VolumeId::new("n1", "default", "x").to_string();
        assert!(VolumeId::parse(&good).is_ok());
        let cases = [
            "",
            "fake-vol-id",
            "../../etc_default_00000000000000000000000000000000",
            "n1/x_default_00000000000000000000000000000000",
            "n1_def/ault_00000000000000000000000000000000",
            "n1_default_0000000000000000000000000000000",
            "n1_default_0000000000000000000000000000000G",
            "n1_default_00000000-0000-0000-0000-000000000000",
            "n1__00000000000000000000000000000000",
            "_default_00000000000000000000000000000000",
            "n1_default_00000000000000000000000000000000\0",
            "..._default_00000000000000000000000000000000",
        ];
        for c in cases {
            assert!(VolumeId::parse(c).is_err(), "{c:?} parsed");
        }
        assert!(VolumeId::parse(&format!("{}{}", "a".repeat(100), good)).is_err());
    }

    #[test]
    fn pool_names() {
        assert!(is_pool_name("default"));
        assert!(is_pool_name("nvme-0"));
        for bad in ["", "-a", "a-", "A", "a_b", "a.b", "..", &"a".repeat(32)] {
            assert!(!is_pool_name(bad), "{bad:?}");
        }
    }
}

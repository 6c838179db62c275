//! What a pool kind can serve: access modes, filesystem types and mount flags, checked in one place so that
//! CreateVolume, ValidateVolumeCapabilities, GetCapacity and the node calls agree.

use crate::types::{AccessType, Capability};

/// Filesystems loam formats block devices with; the first is the default.
pub const FS_TYPES: &[&str] = &["ext4", "xfs"];

/// Mount flags accepted for filesystems loam mounts from a device.
pub const DEVICE_MOUNT_FLAGS: &[&str] = &[
    "ro",
    "noatime",
    "nodiratime",
    "relatime",
    "nosuid",
    "nodev",
    "noexec",
    "sync",
    "dirsync",
    "discard",
];

/// Mount flags accepted for directory volumes (bind mounts take no filesystem options).
pub const DIRECTORY_MOUNT_FLAGS: &[&str] = &["ro"];

/// Why a capability is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// A field off the allow-list: INVALID_ARGUMENT where a request is refused for it (ValidateVolumeCapabilities
    /// answers "not confirmed" instead, as the spec asks).
    Invalid(String),
    /// Well-formed, but this pool kind cannot serve it (the message names the kind that can).
    Unsupported(String),
}

impl Refusal {
    pub fn message(&self) -> &str {
        match self {
            Refusal::Invalid(m) | Refusal::Unsupported(m) => m,
        }
    }
}

/// Node-local volumes are reachable from one node only.
pub fn mode_refusal(cap: &Capability) -> Option<Refusal> {
    (!cap.mode.is_single_node()).then(|| {
        Refusal::Unsupported(format!(
            "access mode {:?} needs several nodes, but loam volumes are local to one node",
            cap.mode
        ))
    })
}

/// The mount flags of `cap` that are not in `allowed`, as a refusal naming the allowed ones.
pub fn flags_refusal(cap: &Capability, allowed: &[&str], kind: &str) -> Option<Refusal> {
    let AccessType::Mount { mount_flags, .. } = &cap.access else {
        return None;
    };
    let bad: Vec<&str> = mount_flags
        .iter()
        .map(String::as_str)
        .filter(|f| !allowed.contains(f))
        .collect();
    (!bad.is_empty()).then(|| {
        Refusal::Invalid(format!(
            "mount flags {bad:?} are not allowed on {kind} pools; allowed: {}",
            allowed.join(", ")
        ))
    })
}

/// An fs_type that loam does not format with.
pub fn fs_type_refusal(cap: &Capability) -> Option<Refusal> {
    match &cap.access {
        AccessType::Mount { fs_type, .. } if !fs_type.is_empty() && !FS_TYPES.contains(&fs_type.as_str()) => {
            Some(Refusal::Invalid(format!(
                "fs_type {fs_type:?} is not supported; use {} (default {})",
                FS_TYPES.join(" or "),
                FS_TYPES[0]
            )))
        }
        _ => None,
    }
}

/// The fs_type of a mount capability, `None` when unset or for block access.
pub fn fs_type(cap: &Capability) -> Option<&str> {
    match &cap.access {
        AccessType::Mount { fs_type, .. } if !fs_type.is_empty() => Some(fs_type),
        _ => None,
    }
}

/// The mount flags of a mount capability (none for block access).
pub fn mount_flags(cap: &Capability) -> &[String] {
    match &cap.access {
        AccessType::Mount { mount_flags, .. } => mount_flags,
        AccessType::Block => &[],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::AccessMode;

    fn mount(fs: &str, flags: &[&str]) -> Capability {
        Capability {
            access: AccessType::Mount {
                fs_type: fs.into(),
                mount_flags: flags.iter().map(|s| (*s).to_owned()).collect(),
            },
            mode: AccessMode::SingleNodeWriter,
        }
    }

    #[test]
    fn allow_lists() {
        assert_eq!(fs_type_refusal(&mount("", &[])), None);
        assert_eq!(fs_type_refusal(&mount("xfs", &[])), None);
        let r = fs_type_refusal(&mount("btrfs", &[])).unwrap();
        assert!(
            matches!(&r, Refusal::Invalid(m) if m.contains("ext4 or xfs")),
            "{r:?}"
        );
        assert_eq!(
            flags_refusal(&mount("", &["noatime", "discard"]), DEVICE_MOUNT_FLAGS, "image"),
            None
        );
        let r = flags_refusal(
            &mount("", &["noatime", "user_xattr=1"]),
            DEVICE_MOUNT_FLAGS,
            "image",
        )
        .unwrap();
        assert!(
            r.message().contains("user_xattr=1") && r.message().contains("noexec"),
            "{r:?}"
        );
        assert!(flags_refusal(&mount("", &["noatime"]), DIRECTORY_MOUNT_FLAGS, "dir").is_some());
        let multi = Capability {
            mode: AccessMode::MultiNodeMultiWriter,
            ..mount("", &[])
        };
        assert!(matches!(mode_refusal(&multi), Some(Refusal::Unsupported(_))));
    }
}

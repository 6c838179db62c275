//! Discovery: what the entries of a device pool's discovery directory are. Each entry matching the pool's
//! pattern is a mount point (a formatted disk the admin mounted there) or a block device (a device node, or a
//! link to one in `/dev`); anything else is skipped with the reason. An entry is known by what identifies its
//! disk across reboots and renames, never by its path: a different disk at the same path is a different entry.

use std::{
    os::unix::fs::FileTypeExt,
    path::{Path, PathBuf},
};

use loam_sys::{host::Host, mountinfo::MountTable};

use crate::{
    record::EntrySort,
    spec::{DeviceSpec, VolumeMode},
};

/// One disk found in the discovery directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Its identity (see [`crate::record::DeviceClaim::entry`]).
    pub key: String,
    /// The entry's path in the discovery directory.
    pub path: PathBuf,
    /// The block device node: the device itself, or the one mounted at a mount point.
    pub device: PathBuf,
    pub sort: EntrySort,
    /// A mount point's filesystem type.
    pub fs_type: Option<String>,
    /// Bytes a volume gets: the device's size, or the mounted filesystem's.
    pub size: u64,
    /// What it holds that keeps it from being adopted: a signature, files.
    pub holds: Option<String>,
    /// What else uses it: a mount elsewhere, holders.
    pub busy: Option<String>,
}

/// One look at the discovery directory.
#[derive(Debug, Default)]
pub struct Scan {
    pub found: Vec<Found>,
    pub skipped: Vec<(PathBuf, String)>,
    /// Why the directory could not be read at all.
    pub problem: Option<String>,
}

/// Whether `name` matches `pattern`, in which `*` stands for any run of characters and `?` for one.
pub fn matches(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    // Greedy matching with one backtrack point, at the last `*`.
    let (mut pi, mut ni, mut star, mut mark) = (0, 0, None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// Lists and identifies the pool's entries.
pub fn scan(spec: &DeviceSpec, host: &dyn Host) -> Scan {
    let dir = &spec.path;
    let mut scan = Scan::default();
    let names = match std::fs::read_dir(dir) {
        Ok(rd) => {
            let mut names: Vec<String> = rd
                .filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| matches(&spec.pattern, n))
                .collect();
            names.sort();
            names
        }
        Err(e) => {
            scan.problem = Some(format!(
                "the discovery directory {} cannot be read: {e}",
                dir.display()
            ));
            return scan;
        }
    };
    let table = match host.mount_table() {
        Ok(t) => t,
        Err(e) => {
            scan.problem = Some(format!("cannot read the mount table: {e}"));
            return scan;
        }
    };
    for name in names {
        let path = dir.join(&name);
        match identify(spec, host, &table, &path) {
            Ok(found) => {
                if let Some(first) = scan.found.iter().find(|f| f.key == found.key) {
                    let why = format!("the same disk ({}) as {}", found.key, first.path.display());
                    scan.skipped.push((path, why));
                } else {
                    scan.found.push(found);
                }
            }
            Err(why) => scan.skipped.push((path, why)),
        }
    }
    scan
}

/// What the entry at `path` is now, or why it is not used: one entry looked at again (before it is used or
/// cleaned).
pub fn probe(spec: &DeviceSpec, host: &dyn Host, path: &Path) -> Result<Found, String> {
    let table = host
        .mount_table()
        .map_err(|e| format!("cannot read the mount table: {e}"))?;
    identify(spec, host, &table, path)
}

/// What the entry at `path` is, or why it is not used.
fn identify(spec: &DeviceSpec, host: &dyn Host, table: &MountTable, path: &Path) -> Result<Found, String> {
    let meta = std::fs::symlink_metadata(path).map_err(|e| format!("cannot inspect it: {e}"))?;
    let ft = meta.file_type();
    if ft.is_dir() {
        if spec.volume_mode == VolumeMode::Block {
            return Err("a directory, but the pool serves block volumes (volume_mode = \"block\")".into());
        }
        return mount_entry(host, table, path);
    }
    let device = if ft.is_symlink() {
        let target = std::fs::canonicalize(path).map_err(|e| format!("a link that does not resolve: {e}"))?;
        if !target.starts_with("/dev/") {
            return Err(format!(
                "a link to {}, outside /dev: entries link to block devices only",
                target.display()
            ));
        }
        let is_block = std::fs::metadata(&target).is_ok_and(|m| m.file_type().is_block_device());
        if !is_block {
            return Err(format!(
                "a link to {}, which is not a block device",
                target.display()
            ));
        }
        target
    } else if ft.is_block_device() {
        path.to_owned()
    } else if ft.is_file() {
        return Err("a regular file, not a disk: link a block device or mount a disk here".into());
    } else {
        return Err("neither a mount point nor a block device".into());
    };
    if spec.volume_mode == VolumeMode::Filesystem && spec.fs_type.is_none() {
        return Err(
            "a block device, but the pool serves filesystem volumes and has no fs_type to format it with"
                .into(),
        );
    }
    block_entry(host, path, device)
}

fn mount_entry(host: &dyn Host, table: &MountTable, path: &Path) -> Result<Found, String> {
    let Some(mount) = table.top_mount_at(path) else {
        return Err("a directory that is not a mount point: mount a formatted disk there".into());
    };
    if mount.root != Path::new("/") {
        return Err(format!(
            "a bind mount of directory {} of its filesystem: mount the whole disk, one per entry",
            mount.root.display()
        ));
    }
    if !mount.source.starts_with("/dev/") {
        return Err(format!(
            "mounted from {} ({}), which is not a disk",
            mount.source, mount.fs_type
        ));
    }
    let device = PathBuf::from(&mount.source);
    let uuid = host
        .fs_uuid(&device)
        .map_err(|e| format!("cannot read the filesystem UUID of {}: {e}", device.display()))?
        .ok_or_else(|| {
            format!(
                "its filesystem ({}) on {} has no UUID",
                mount.fs_type,
                device.display()
            )
        })?;
    let fs = host.statfs(path).map_err(|e| format!("cannot measure it: {e}"))?;
    let src = mount.source_id();
    let elsewhere: Vec<String> = table
        .mounts_of(&src)
        .into_iter()
        .filter(|m| m.mount_point != path)
        .map(|m| m.mount_point.display().to_string())
        .collect();
    let holds = match std::fs::read_dir(path) {
        Ok(rd) => {
            let names: Vec<String> = rd
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n != "lost+found")
                .collect();
            (!names.is_empty()).then(|| format!("holds files ({} entries)", names.len()))
        }
        Err(e) => Some(format!("cannot be listed: {e}")),
    };
    Ok(Found {
        key: format!("fs:{uuid}"),
        path: path.to_owned(),
        device,
        sort: EntrySort::Mount,
        fs_type: Some(mount.fs_type.clone()),
        size: fs.total_bytes,
        holds,
        busy: (!elsewhere.is_empty()).then(|| format!("also mounted at {}", elsewhere.join(", "))),
    })
}

fn block_entry(host: &dyn Host, path: &Path, device: PathBuf) -> Result<Found, String> {
    let identity = host
        .device_identity(&device)
        .map_err(|e| format!("cannot identify {}: {e}", device.display()))?;
    let key = match identity {
        Some(id) => format!("dev:{id}"),
        None => by_id_name(path).map(|n| format!("by-id:{n}")).ok_or_else(|| {
            format!(
                "{} has no WWN or serial to know it by after a reboot: link it by its /dev/disk/by-id name",
                device.display()
            )
        })?,
    };
    let size = host
        .device_size(&device)
        .map_err(|e| format!("cannot measure {}: {e}", device.display()))?;
    let busy = host
        .device_users(&device)
        .map_err(|e| format!("cannot tell what uses {}: {e}", device.display()))?;
    let holds = match host.signature(&device) {
        Ok(sig) => sig.map(|s| format!("holds data ({s})")),
        Err(e) => Some(format!("cannot be probed: {e}")),
    };
    Ok(Found {
        key,
        path: path.to_owned(),
        device,
        sort: EntrySort::Block,
        fs_type: None,
        size,
        holds,
        busy,
    })
}

/// The `/dev/disk/by-id` name a link goes through, if it does.
fn by_id_name(path: &Path) -> Option<String> {
    let target = std::fs::read_link(path).ok()?;
    let parent = target.parent()?;
    (parent == Path::new("/dev/disk/by-id")).then(|| target.file_name()?.to_str().map(str::to_owned))?
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn wildcards_match_as_in_shell_patterns() {
        assert!(matches("*", "nvme0n1"));
        assert!(matches("*", ""));
        assert!(matches("nvme*", "nvme0n1"));
        assert!(!matches("nvme*", "sda"));
        assert!(matches("disk?", "disk1"));
        assert!(!matches("disk?", "disk10"));
        assert!(matches("*-part?", "wwn-0x5000-part1"));
        assert!(matches("a*b*c", "aXXbYYc"));
        assert!(!matches("a*b*c", "aXXbYY"));
        assert!(matches("exact", "exact"));
        assert!(!matches("exact", "exactly"));
    }
}

//! Bind mounts, filesystem mounts and unmounts.
//!
//! Publishing a volume to a pod is a bind mount of the volume's directory onto
//! the target path kubelet gives us (or a mount of the filesystem on its
//! device, [`mount_fs`]); unpublishing is an unmount. Whether
//! something is mounted is decided by the caller from the mount table
//! ([`crate::mountinfo`]), not from the errors here.

use std::{ffi::CString, io, path::Path};

use rustix::{
    fs::StatVfsMountFlags,
    mount::{MountFlags, UnmountFlags, mount, mount_bind, mount_remount, unmount as umount2},
};

/// Bind-mounts `source` on `target` (non-recursively), read-only if asked.
///
/// A read-only bind mount takes two calls: `MS_BIND` ignores `MS_RDONLY`, so
/// the new mount is then remounted with `MS_BIND|MS_REMOUNT|MS_RDONLY`. The
/// remount keeps the `nosuid`/`nodev`/`noexec` flags the new mount inherited
/// from the source's mount: omitting them would clear them (and fails with
/// `EPERM` where they are locked, e.g. in a user namespace). Atime flags are
/// kept by the kernel when none are given.
///
/// If the remount fails, the bind is undone, so a failed read-only publish
/// never leaves a writable mount behind.
pub fn bind(source: &Path, target: &Path, read_only: bool) -> io::Result<()> {
    mount_bind(source, target).map_err(|e| {
        crate::context(
            e,
            format!("bind-mounting {} on {}", source.display(), target.display()),
        )
    })?;
    if !read_only {
        return Ok(());
    }

    let mut flags = MountFlags::BIND | MountFlags::RDONLY;
    // Best effort: if statvfs fails, the remount may still succeed without
    // the inherited flags, and if it does not we report that error.
    if let Ok(st) = rustix::fs::statvfs(target) {
        for (have, keep) in [
            (StatVfsMountFlags::NOSUID, MountFlags::NOSUID),
            (StatVfsMountFlags::NODEV, MountFlags::NODEV),
            (StatVfsMountFlags::NOEXEC, MountFlags::NOEXEC),
        ] {
            if st.f_flag.contains(have) {
                flags |= keep;
            }
        }
    }
    if let Err(e) = mount_remount(target, flags, "") {
        let what = format!(
            "remounting bind mount of {} on {} read-only",
            source.display(),
            target.display()
        );
        return Err(match umount2(target, UnmountFlags::NOFOLLOW) {
            Ok(()) => crate::context(e, format!("{what} (bind undone)")),
            Err(undo) => crate::context(
                e,
                format!("{what} (undoing the bind also failed, it is still mounted: {undo})"),
            ),
        });
    }
    Ok(())
}

/// CSI mount flags that are `MS_*` flags of mount(2) rather than filesystem
/// options.
const FLAG_OPTIONS: &[(&str, MountFlags)] = &[
    ("ro", MountFlags::RDONLY),
    ("noatime", MountFlags::NOATIME),
    ("nodiratime", MountFlags::NODIRATIME),
    ("relatime", MountFlags::RELATIME),
    ("nosuid", MountFlags::NOSUID),
    ("nodev", MountFlags::NODEV),
    ("noexec", MountFlags::NOEXEC),
    ("sync", MountFlags::SYNCHRONOUS),
    ("dirsync", MountFlags::DIRSYNC),
];

/// Splits mount options into `MS_*` flags and the filesystem's data string
/// (the other options, comma-joined, in order). Empty options are dropped.
fn split_options(options: &[String], read_only: bool) -> (MountFlags, String) {
    let mut flags = if read_only {
        MountFlags::RDONLY
    } else {
        MountFlags::empty()
    };
    let mut data = Vec::new();
    for option in options.iter().filter(|o| !o.is_empty()) {
        match FLAG_OPTIONS.iter().find(|(name, _)| name == option) {
            Some((_, flag)) => flags |= *flag,
            None => data.push(option.as_str()),
        }
    }
    (flags, data.join(","))
}

/// Mounts the filesystem on `device` at `target` as `fs_type`.
///
/// `options` are CSI mount flags, already checked by the caller against an
/// allow-list: `ro`, `noatime`, `nodiratime`, `relatime`, `nosuid`, `nodev`,
/// `noexec`, `sync` and `dirsync` become `MS_*` flags, anything else (such as
/// `discard`) is passed to the filesystem as data, comma-joined. `read_only`
/// adds `MS_RDONLY`.
pub fn mount_fs(
    device: &Path,
    target: &Path,
    fs_type: &str,
    options: &[String],
    read_only: bool,
) -> io::Result<()> {
    let what = || {
        format!(
            "mounting {} ({fs_type}{}{}) on {}",
            device.display(),
            if read_only { ", read-only" } else { "" },
            if options.is_empty() {
                String::new()
            } else {
                format!(", options {}", options.join(","))
            },
            target.display()
        )
    };
    let (flags, data) = split_options(options, read_only);
    let data = CString::new(data)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("{}: NUL in options", what())))?;
    let data = (!data.is_empty()).then_some(data.as_c_str());
    mount(device, target, fs_type, flags, data).map_err(|e| crate::context(e, what()))
}

/// Unmounts the topmost mount at `target`, without following a symlink at
/// `target` (`umount2(target, UMOUNT_NOFOLLOW)`).
///
/// Every failure is returned, including `EINVAL` for "not a mount point"
/// (kind [`io::ErrorKind::InvalidInput`]): callers that want idempotence
/// should check the mount table first, since `EINVAL` has other causes too.
pub fn unmount(target: &Path) -> io::Result<()> {
    umount2(target, UnmountFlags::NOFOLLOW)
        .map_err(|e| crate::context(e, format!("unmounting {}", target.display())))
}

/// `statx` of `path` when it is the root of a mount, `None` when it is not or does not exist (also when a
/// component of it is not a directory). Asked of the path alone (`STATX_ATTR_MOUNT_ROOT`, Linux 5.8); where the
/// kernel does not say, the mount table decides. A symlink at `path` is not followed.
fn mount_root(path: &Path) -> io::Result<Option<rustix::fs::Statx>> {
    use rustix::fs::{AtFlags, CWD, StatxAttributes, StatxFlags, statx};
    let st = match statx(CWD, path, AtFlags::SYMLINK_NOFOLLOW, StatxFlags::INO) {
        Ok(st) => st,
        Err(rustix::io::Errno::NOENT | rustix::io::Errno::NOTDIR) => return Ok(None),
        Err(e) => return Err(crate::context(e, format!("stat of {}", path.display()))),
    };
    let root = if st.stx_attributes_mask.contains(StatxAttributes::MOUNT_ROOT) {
        st.stx_attributes.contains(StatxAttributes::MOUNT_ROOT)
    } else {
        crate::mountinfo::MountTable::read_self()?.is_mount_point(path)
    };
    Ok(root.then_some(st))
}

/// Whether something is mounted at `path` (it is the root of a mount), without reading the mount table where the
/// kernel can tell (see [`mount_root`]). A missing `path` is not a mount point.
pub fn is_mount_point(path: &Path) -> io::Result<bool> {
    Ok(mount_root(path)?.is_some())
}

/// The identity of a file or directory (device and inode): what a mount of it shows at its root, so two paths
/// show the same thing exactly when their identities are equal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
}

/// The topmost mount at a path, as the path itself tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MountedAt {
    /// What the mount shows at its root.
    pub root: FileId,
    /// Whether the mount (or its filesystem) is read-only.
    pub read_only: bool,
}

/// The device number `stat` gives for device `major:minor`.
pub fn dev_number(major: u32, minor: u32) -> u64 {
    rustix::fs::makedev(major, minor)
}

fn file_id_of(st: &rustix::fs::Statx) -> FileId {
    FileId {
        dev: rustix::fs::makedev(st.stx_dev_major, st.stx_dev_minor),
        ino: st.stx_ino,
    }
}

/// The identity of `path` itself (a symlink is not followed).
pub fn file_id(path: &Path) -> io::Result<FileId> {
    use rustix::fs::{AtFlags, CWD, StatxFlags, statx};
    statx(CWD, path, AtFlags::SYMLINK_NOFOLLOW, StatxFlags::INO)
        .map(|st| file_id_of(&st))
        .map_err(|e| crate::context(e, format!("stat of {}", path.display())))
}

/// What the topmost mount at `path` shows, from `statx` and `statvfs` of the path alone (see [`mount_root`]):
/// `None` when nothing is mounted there or the path does not exist; a path under a file does not exist.
pub fn mounted_at(path: &Path) -> io::Result<Option<MountedAt>> {
    let Some(st) = mount_root(path)? else {
        return Ok(None);
    };
    let read_only = rustix::fs::statvfs(path)
        .map_err(|e| crate::context(e, format!("statvfs of {}", path.display())))?
        .f_flag
        .contains(StatVfsMountFlags::RDONLY);
    Ok(Some(MountedAt {
        root: file_id_of(&st),
        read_only,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(options: &[&str]) -> Vec<String> {
        options.iter().map(|o| o.to_string()).collect()
    }

    #[test]
    fn options_split_into_flags_and_data() {
        let (flags, data) = split_options(
            &strings(&["noatime", "discard", "nodev", "errors=remount-ro"]),
            false,
        );
        assert_eq!(flags, MountFlags::NOATIME | MountFlags::NODEV);
        assert_eq!(data, "discard,errors=remount-ro");

        let all = strings(&[
            "ro",
            "noatime",
            "nodiratime",
            "relatime",
            "nosuid",
            "nodev",
            "noexec",
            "sync",
            "dirsync",
        ]);
        let (flags, data) = split_options(&all, false);
        assert_eq!(
            flags,
            MountFlags::RDONLY
                | MountFlags::NOATIME
                | MountFlags::NODIRATIME
                | MountFlags::RELATIME
                | MountFlags::NOSUID
                | MountFlags::NODEV
                | MountFlags::NOEXEC
                | MountFlags::SYNCHRONOUS
                | MountFlags::DIRSYNC
        );
        assert_eq!(data, "");
    }

    #[test]
    fn read_only_adds_rdonly_and_empty_options_are_dropped() {
        assert_eq!(split_options(&[], true), (MountFlags::RDONLY, String::new()));
        assert_eq!(
            split_options(&strings(&["", "discard", ""]), false),
            (MountFlags::empty(), "discard".to_owned())
        );
        assert_eq!(
            split_options(&strings(&["ro"]), true),
            (MountFlags::RDONLY, String::new())
        );
    }

    #[test]
    fn nul_in_options_is_invalid_input() {
        let err = mount_fs(
            Path::new("/dev/null"),
            Path::new("/nonexistent"),
            "ext4",
            &strings(&["a\0b"]),
            false,
        )
        .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}

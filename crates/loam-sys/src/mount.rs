//! Bind mounts and unmounts.
//!
//! Publishing a volume to a pod is a bind mount of the volume's directory onto
//! the target path kubelet gives us; unpublishing is an unmount. Whether
//! something is mounted is decided by the caller from the mount table
//! ([`crate::mountinfo`]), not from the errors here.

use std::{io, path::Path};

use rustix::{
    fs::StatVfsMountFlags,
    mount::{MountFlags, UnmountFlags, mount_bind, mount_remount, unmount as umount2},
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

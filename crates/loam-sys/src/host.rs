//! The one seam between the engine and the operating system's privileged calls: the mount table, bind mounts,
//! filesystem mounts, unmounts, statfs, loop devices, formatting, whole block devices (identity, users,
//! discard, zeroing), btrfs subvolumes and quotas, and project quota.
//!
//! The engine holds an `Arc<dyn Host>`. [`RealHost`] makes the real calls; [`crate::fake::FakeHost`] simulates
//! them in memory, records every call and can fail a chosen one, so the engine's failure paths (mkfs fails after
//! attach, mount fails after format, EBUSY on unmount) are unit-tested without root. Plain file work inside pool
//! directories (records, image files, volume directories) is not behind the seam: it needs no privilege and is
//! tested on real temporary directories.

use std::{
    fmt, io,
    path::{Path, PathBuf},
};

pub use crate::mount::{FileId, MountedAt};
pub use crate::{
    btrfs::{Limit, Qgroup, QuotaMode, Subvolume},
    loopdev::{LoopConfig, LoopDevice},
    quota::{ProjectQuotaState, ProjectUsage},
};
use crate::{mountinfo::MountTable, statfs::FsStats};

/// Every privileged operating-system call the engine makes.
pub trait Host: Send + Sync + fmt::Debug {
    /// The calling thread's mount table.
    fn mount_table(&self) -> io::Result<MountTable>;
    /// What the topmost mount at `path` shows, asked of the path alone: `None` when nothing is mounted there.
    fn mounted_at(&self, path: &Path) -> io::Result<Option<MountedAt>>;
    /// The identity of `path` itself: what a mount of it shows at its root.
    fn file_id(&self, path: &Path) -> io::Result<FileId>;
    /// Bind-mounts `source` (a directory, or a device node onto a file) on `target`, read-only if asked.
    fn bind(&self, source: &Path, target: &Path, read_only: bool) -> io::Result<()>;
    /// Mounts the filesystem on `device` at `target` (`options`: allow-listed CSI mount flags).
    fn mount(
        &self,
        device: &Path,
        target: &Path,
        fs_type: &str,
        options: &[String],
        read_only: bool,
    ) -> io::Result<()>;
    /// Unmounts the topmost mount at `target`.
    fn unmount(&self, target: &Path) -> io::Result<()>;
    /// Space and inodes of the filesystem holding `path`.
    fn statfs(&self, path: &Path) -> io::Result<FsStats>;
    /// Attaches `file` to a free loop device.
    fn loop_attach(&self, file: &Path, cfg: &LoopConfig) -> io::Result<LoopDevice>;
    /// The loop devices backed by `file` now.
    fn loop_find(&self, file: &Path) -> io::Result<Vec<LoopDevice>>;
    /// Whether loop device `dev` is backed by `file` now (one device asked, none scanned).
    fn loop_backs(&self, dev: &LoopDevice, file: &Path) -> io::Result<bool>;
    /// The loop devices backed by files directly in `dir` now, with each file's path (one look at all).
    fn loop_find_under(&self, dir: &Path) -> io::Result<Vec<(PathBuf, LoopDevice)>>;
    /// Detaches a loop device; one that is not attached counts as detached.
    fn loop_detach(&self, dev: &LoopDevice) -> io::Result<()>;
    /// How many loop devices are bound to files under `dir`.
    fn loop_count_under(&self, dir: &Path) -> io::Result<usize>;
    /// Size of a block device in bytes.
    fn device_size(&self, device: &Path) -> io::Result<u64>;
    /// The filesystem or partition-table signature on `device`, if any.
    fn signature(&self, device: &Path) -> io::Result<Option<String>>;
    /// Formats `device` with `fs_type` (ext4 or xfs).
    fn mkfs(&self, device: &Path, fs_type: &str) -> io::Result<()>;
    /// The UUID of the filesystem on `device`, if it holds one.
    fn fs_uuid(&self, device: &Path) -> io::Result<Option<String>>;

    /// What identifies block device `device` across reboots and renames (WWN, serial, a loop device's backing
    /// file), if anything does.
    fn device_identity(&self, device: &Path) -> io::Result<Option<String>>;
    /// What holds `device` that the mount table and sysfs show (mounts, holders, partitions), if anything.
    fn device_users(&self, device: &Path) -> io::Result<Option<String>>;
    /// Discards all of `device`, reporting `(done, total)` bytes; an error of kind `Unsupported` when it cannot.
    fn discard(&self, device: &Path, progress: &mut dyn FnMut(u64, u64)) -> io::Result<()>;
    /// Whether `device` supports discard and offloaded write-zeroes (a sign discarded blocks read as zeros).
    fn discard_zeroes(&self, device: &Path) -> io::Result<bool>;
    /// Zeroes all of `device`, reporting `(done, total)` bytes.
    fn zero(&self, device: &Path, progress: &mut dyn FnMut(u64, u64)) -> io::Result<()>;
    /// Zeroes the first and last MiB of `device`, where filesystem and partition signatures live.
    fn wipe_signatures(&self, device: &Path) -> io::Result<()>;
    /// The offset of the first non-zero byte in a sample of `device`, if the sample holds one.
    fn first_nonzero(&self, device: &Path) -> io::Result<Option<u64>>;

    /// Whether `path` is on a btrfs filesystem.
    fn is_btrfs(&self, path: &Path) -> io::Result<bool>;
    /// The quota accounting the btrfs filesystem holding `path` has on.
    fn btrfs_quota_mode(&self, path: &Path) -> io::Result<QuotaMode>;
    /// Turns on simple quotas, or full qgroups.
    fn btrfs_enable_quota(&self, path: &Path, simple: bool) -> io::Result<()>;
    /// Whether a qgroup rescan is running.
    fn btrfs_rescan_running(&self, path: &Path) -> io::Result<bool>;
    /// Creates subvolume `parent/name`; returns its id.
    fn btrfs_create_subvolume(&self, parent: &Path, name: &str) -> io::Result<u64>;
    /// The id of the subvolume whose root is `path`, if it is one.
    fn btrfs_subvolume_id(&self, path: &Path) -> io::Result<Option<u64>>;
    /// Deletes subvolume `parent/name` and its qgroup.
    fn btrfs_delete_subvolume(&self, parent: &Path, name: &str) -> io::Result<()>;
    /// Limits qgroup 0/`id` to `bytes` referenced.
    fn btrfs_set_limit(&self, path: &Path, id: u64, bytes: u64) -> io::Result<()>;
    /// Qgroup 0/`id`'s accounting and limits, if it exists.
    fn btrfs_qgroup(&self, path: &Path, id: u64) -> io::Result<Option<Qgroup>>;
    /// [`Host::btrfs_subvolume_id`] of `dir/<name>` and the limit [`Host::btrfs_qgroup`] shows for its id (and,
    /// with `referenced`, what it references), for each of `names`: many volumes checked at once.
    fn btrfs_subvolumes(
        &self,
        dir: &Path,
        names: &[&str],
        referenced: bool,
    ) -> io::Result<Vec<io::Result<Option<Subvolume>>>> {
        Ok(names
            .iter()
            .map(|name| {
                Ok(self.btrfs_subvolume_id(&dir.join(name))?.map(|id| {
                    let q = self.btrfs_qgroup(dir, id);
                    Subvolume {
                        id,
                        referenced: q
                            .as_ref()
                            .ok()
                            .and_then(|q| q.as_ref())
                            .filter(|_| referenced)
                            .map(|q| q.referenced),
                        limit: q.map(|q| Limit::of(q.as_ref())),
                    }
                }))
            })
            .collect())
    }

    /// Project quota on the filesystem holding `path`; `None` when it has none.
    fn project_quota_state(&self, path: &Path) -> io::Result<Option<ProjectQuotaState>>;
    /// The project ID of directory `path`, and whether new entries inherit it.
    fn get_project(&self, path: &Path) -> io::Result<(u32, bool)>;
    /// Gives directory `path` project ID `id`, inherited by what is made in it.
    fn set_project(&self, path: &Path, id: u32) -> io::Result<()>;
    /// Limits project `id` on the filesystem holding `path` to `bytes` and `inodes` (0: no limit).
    fn set_project_limit(&self, path: &Path, id: u32, bytes: u64, inodes: u64) -> io::Result<()>;
    /// Project `id`'s usage and limits.
    fn project_usage(&self, path: &Path, id: u32) -> io::Result<ProjectUsage>;
}

/// The real operating system.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealHost;

impl Host for RealHost {
    fn mount_table(&self) -> io::Result<MountTable> {
        MountTable::read_self()
    }

    fn mounted_at(&self, path: &Path) -> io::Result<Option<MountedAt>> {
        crate::mount::mounted_at(path)
    }

    fn file_id(&self, path: &Path) -> io::Result<FileId> {
        crate::mount::file_id(path)
    }

    fn bind(&self, source: &Path, target: &Path, read_only: bool) -> io::Result<()> {
        crate::mount::bind(source, target, read_only)
    }

    fn mount(
        &self,
        device: &Path,
        target: &Path,
        fs_type: &str,
        options: &[String],
        read_only: bool,
    ) -> io::Result<()> {
        crate::mount::mount_fs(device, target, fs_type, options, read_only)
    }

    fn unmount(&self, target: &Path) -> io::Result<()> {
        crate::mount::unmount(target)
    }

    fn statfs(&self, path: &Path) -> io::Result<FsStats> {
        crate::statfs::statfs(path)
    }

    fn loop_attach(&self, file: &Path, cfg: &LoopConfig) -> io::Result<LoopDevice> {
        crate::loopdev::attach(file, cfg)
    }

    fn loop_find(&self, file: &Path) -> io::Result<Vec<LoopDevice>> {
        crate::loopdev::find(file)
    }

    fn loop_backs(&self, dev: &LoopDevice, file: &Path) -> io::Result<bool> {
        crate::loopdev::backs(dev, file)
    }

    fn loop_find_under(&self, dir: &Path) -> io::Result<Vec<(PathBuf, LoopDevice)>> {
        crate::loopdev::find_under(dir)
    }

    fn loop_detach(&self, dev: &LoopDevice) -> io::Result<()> {
        crate::loopdev::detach(dev)
    }

    fn loop_count_under(&self, dir: &Path) -> io::Result<usize> {
        crate::loopdev::count_under(dir)
    }

    fn device_size(&self, device: &Path) -> io::Result<u64> {
        crate::blockdev::size_bytes(device)
    }

    fn signature(&self, device: &Path) -> io::Result<Option<String>> {
        crate::mkfs::signature(device)
    }

    fn mkfs(&self, device: &Path, fs_type: &str) -> io::Result<()> {
        crate::mkfs::make(device, fs_type)
    }

    fn fs_uuid(&self, device: &Path) -> io::Result<Option<String>> {
        crate::mkfs::fs_uuid(device)
    }

    fn device_identity(&self, device: &Path) -> io::Result<Option<String>> {
        crate::blockdev::identity(device)
    }

    fn device_users(&self, device: &Path) -> io::Result<Option<String>> {
        crate::blockdev::visible_users(device)
    }

    fn discard(&self, device: &Path, progress: &mut dyn FnMut(u64, u64)) -> io::Result<()> {
        crate::blockdev::discard(device, progress)
    }

    fn discard_zeroes(&self, device: &Path) -> io::Result<bool> {
        crate::blockdev::discard_zeroes(device)
    }

    fn zero(&self, device: &Path, progress: &mut dyn FnMut(u64, u64)) -> io::Result<()> {
        crate::blockdev::zero(device, progress)
    }

    fn wipe_signatures(&self, device: &Path) -> io::Result<()> {
        crate::blockdev::wipe_signatures(device)
    }

    fn first_nonzero(&self, device: &Path) -> io::Result<Option<u64>> {
        crate::blockdev::first_nonzero_sampled(device)
    }

    fn is_btrfs(&self, path: &Path) -> io::Result<bool> {
        crate::btrfs::is_btrfs(path)
    }

    fn btrfs_quota_mode(&self, path: &Path) -> io::Result<QuotaMode> {
        crate::btrfs::quota_mode(path)
    }

    fn btrfs_enable_quota(&self, path: &Path, simple: bool) -> io::Result<()> {
        crate::btrfs::enable_quota(path, simple)
    }

    fn btrfs_rescan_running(&self, path: &Path) -> io::Result<bool> {
        crate::btrfs::rescan_running(path)
    }

    fn btrfs_create_subvolume(&self, parent: &Path, name: &str) -> io::Result<u64> {
        crate::btrfs::create_subvolume(parent, name)
    }

    fn btrfs_subvolume_id(&self, path: &Path) -> io::Result<Option<u64>> {
        crate::btrfs::subvolume_id(path)
    }

    fn btrfs_delete_subvolume(&self, parent: &Path, name: &str) -> io::Result<()> {
        crate::btrfs::delete_subvolume(parent, name)
    }

    fn btrfs_set_limit(&self, path: &Path, id: u64, bytes: u64) -> io::Result<()> {
        crate::btrfs::set_limit(path, id, bytes)
    }

    fn btrfs_qgroup(&self, path: &Path, id: u64) -> io::Result<Option<Qgroup>> {
        crate::btrfs::qgroup(path, id)
    }

    fn btrfs_subvolumes(
        &self,
        dir: &Path,
        names: &[&str],
        referenced: bool,
    ) -> io::Result<Vec<io::Result<Option<Subvolume>>>> {
        crate::btrfs::subvolumes(dir, names, referenced)
    }

    fn project_quota_state(&self, path: &Path) -> io::Result<Option<ProjectQuotaState>> {
        crate::quota::state(path)
    }

    fn get_project(&self, path: &Path) -> io::Result<(u32, bool)> {
        crate::quota::get_project(path)
    }

    fn set_project(&self, path: &Path, id: u32) -> io::Result<()> {
        crate::quota::set_project(path, id)
    }

    fn set_project_limit(&self, path: &Path, id: u32, bytes: u64, inodes: u64) -> io::Result<()> {
        crate::quota::set_limit(path, id, bytes, inodes)
    }

    fn project_usage(&self, path: &Path, id: u32) -> io::Result<ProjectUsage> {
        crate::quota::usage(path, id)
    }
}

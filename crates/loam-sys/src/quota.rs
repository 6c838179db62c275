//! Project quotas of XFS and ext4, through `quotactl_fd(2)` and the
//! `FS_IOC_FSGETXATTR`/`FS_IOC_FSSETXATTR` ioctls (never by running
//! `xfs_quota`, `setquota` or `chattr`).
//!
//! A directory-backed volume on such a filesystem gets a project id of its
//! own ([`set_project`]): the id is set on the volume's directory together
//! with the inherit flag (`FS_XFLAG_PROJINHERIT`), so that everything created
//! below it later is charged to the same project. The project's limits
//! ([`set_limit`]) then bound the volume's bytes and inodes, and its usage is
//! read back from the kernel's accounting in O(1) ([`usage`]), never by
//! walking the tree.
//!
//! Project quota is there only on filesystems that have it on ([`state`]):
//! XFS mounted with `prjquota` (or `pquota`; `pqnoenforce` accounts without
//! enforcing), ext4 made with `-O quota,project` and mounted with
//! `prjquota`. Both need a kernel built with quota support for them
//! (`CONFIG_XFS_QUOTA`; `CONFIG_QUOTA` and `CONFIG_QFMT_V2` for ext4).
//!
//! The quota calls take a file descriptor of any directory on the filesystem
//! (`quotactl_fd(2)`, Linux 5.14+; rustix has no wrapper, so it is a raw
//! syscall), not the block device that `quotactl(2)` wants. The requests
//! they send are made by pure functions ([`quotactl_cmd`], [`state_request`],
//! [`limit_request`], [`with_project`]) and their answers read by others
//! ([`state_from`], [`usage_from`]), so that the exact arguments are tested
//! without a kernel that has project quota.
//!
//! Quota numbers are in 512-byte "basic blocks" at this interface; the
//! functions here take and give bytes.

use std::{
    ffi::c_void,
    io::{self, ErrorKind},
    os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd},
    path::Path,
};

use rustix::{
    fs::{Mode, OFlags, open},
    io::Errno,
    ioctl::{Getter, Opcode, Setter, ioctl, opcode},
};

/// Project quota as the filesystem holding a path has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProjectQuotaState {
    /// The filesystem counts each project's bytes and inodes.
    pub accounting: bool,
    /// The filesystem refuses to let a project go over its limits.
    pub enforcing: bool,
}

/// One project's usage and limits, in bytes and inodes (0 = no limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProjectUsage {
    /// Bytes charged to the project (including space reserved for writes
    /// not yet allocated).
    pub bytes: u64,
    /// Inodes charged to the project.
    pub inodes: u64,
    /// Hard limit on `bytes` (0: none).
    pub bytes_limit: u64,
    /// Hard limit on `inodes` (0: none).
    pub inodes_limit: u64,
}

/// The unit of block counts in the XFS quota interface ("basic blocks").
pub const BASIC_BLOCK: u64 = 512;

// Commands of linux/dqblk_xfs.h, `XQM_CMD(x)` = `('X' << 8) + x`.
/// Get the quota of one id (`struct fs_disk_quota`).
pub const Q_XGETQUOTA: u32 = ((b'X' as u32) << 8) + 3;
/// Set the limits of one id (`struct fs_disk_quota`).
pub const Q_XSETQLIM: u32 = ((b'X' as u32) << 8) + 4;
/// Get the quota state of the filesystem (`struct fs_quota_statv`).
pub const Q_XGETQSTATV: u32 = ((b'X' as u32) << 8) + 8;

/// The quota type of projects (linux/quota.h).
pub const PRJQUOTA: u32 = 2;

// `SUBCMDSHIFT` and `SUBCMDMASK` of linux/quota.h, for [`quotactl_cmd`].
const SUBCMDSHIFT: u32 = 8;
const SUBCMDMASK: u32 = 0xff;

/// `d_version` of `struct fs_disk_quota`.
pub const FS_DQUOT_VERSION: i8 = 1;
/// `d_flags` of `struct fs_disk_quota` for a project's quota.
pub const FS_PROJ_QUOTA: i8 = 2;
// `d_fieldmask` bits: which limits a `Q_XSETQLIM` sets.
/// `d_fieldmask`: set `d_ino_softlimit`.
pub const FS_DQ_ISOFT: u16 = 1 << 0;
/// `d_fieldmask`: set `d_ino_hardlimit`.
pub const FS_DQ_IHARD: u16 = 1 << 1;
/// `d_fieldmask`: set `d_blk_softlimit`.
pub const FS_DQ_BSOFT: u16 = 1 << 2;
/// `d_fieldmask`: set `d_blk_hardlimit`.
pub const FS_DQ_BHARD: u16 = 1 << 3;

/// `qs_version` of `struct fs_quota_statv`.
pub const FS_QSTATV_VERSION1: i8 = 1;
/// `qs_flags` of `struct fs_quota_statv`: project quota accounting is on.
pub const FS_QUOTA_PDQ_ACCT: u16 = 1 << 4;
/// `qs_flags` of `struct fs_quota_statv`: project quota limits are enforced.
pub const FS_QUOTA_PDQ_ENFD: u16 = 1 << 5;

/// `fsx_xflags` bit of `struct fsxattr`: new entries of a directory get its
/// project id.
pub const FS_XFLAG_PROJINHERIT: u32 = 0x0000_0200;

/// The project id the kernel calls invalid (`INVALID_PROJID`, `(u32)-1`).
const INVALID_PROJID: u32 = u32::MAX;

/// `FS_IOC_FSGETXATTR`, `_IOR('X', 31, struct fsxattr)`.
pub const FS_IOC_FSGETXATTR: Opcode = opcode::read::<FsXattr>(b'X', 31);
/// `FS_IOC_FSSETXATTR`, `_IOW('X', 32, struct fsxattr)`.
pub const FS_IOC_FSSETXATTR: Opcode = opcode::write::<FsXattr>(b'X', 32);

/// `struct fs_disk_quota` of linux/dqblk_xfs.h: one id's usage and limits,
/// block numbers in 512-byte basic blocks.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FsDiskQuota {
    pub d_version: i8,
    pub d_flags: i8,
    pub d_fieldmask: u16,
    pub d_id: u32,
    pub d_blk_hardlimit: u64,
    pub d_blk_softlimit: u64,
    pub d_ino_hardlimit: u64,
    pub d_ino_softlimit: u64,
    pub d_bcount: u64,
    pub d_icount: u64,
    pub d_itimer: i32,
    pub d_btimer: i32,
    pub d_iwarns: u16,
    pub d_bwarns: u16,
    pub d_itimer_hi: i8,
    pub d_btimer_hi: i8,
    pub d_rtbtimer_hi: i8,
    pub d_padding2: i8,
    pub d_rtb_hardlimit: u64,
    pub d_rtb_softlimit: u64,
    pub d_rtbcount: u64,
    pub d_rtbtimer: i32,
    pub d_rtbwarns: u16,
    pub d_padding3: i16,
    pub d_padding4: [u8; 8],
}

/// `struct fs_qfilestatv` of linux/dqblk_xfs.h: one quota type's quota file.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FsQfilestatv {
    pub qfs_ino: u64,
    pub qfs_nblks: u64,
    pub qfs_nextents: u32,
    pub qfs_pad: u32,
}

/// `struct fs_quota_statv` of linux/dqblk_xfs.h: the filesystem's quota
/// state.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FsQuotaStatv {
    pub qs_version: i8,
    pub qs_pad1: u8,
    pub qs_flags: u16,
    pub qs_incoredqs: u32,
    pub qs_uquota: FsQfilestatv,
    pub qs_gquota: FsQfilestatv,
    pub qs_pquota: FsQfilestatv,
    pub qs_btimelimit: i32,
    pub qs_itimelimit: i32,
    pub qs_rtbtimelimit: i32,
    pub qs_bwarnlimit: u16,
    pub qs_iwarnlimit: u16,
    pub qs_rtbwarnlimit: u16,
    pub qs_pad3: u16,
    pub qs_pad4: u32,
    pub qs_pad2: [u64; 7],
}

/// `struct fsxattr` of linux/fs.h: the extended attributes of an inode,
/// among them its project id.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FsXattr {
    pub fsx_xflags: u32,
    pub fsx_extsize: u32,
    pub fsx_nextents: u32,
    pub fsx_projid: u32,
    pub fsx_cowextsize: u32,
    pub fsx_pad: [u8; 8],
}

/// `QCMD(cmd, type)` of linux/quota.h: a quota command for one quota type.
pub fn quotactl_cmd(cmd: u32, kind: u32) -> u32 {
    (cmd << SUBCMDSHIFT) | (kind & SUBCMDMASK)
}

/// The `Q_XGETQSTATV` request: zeroed but for `qs_version` =
/// [`FS_QSTATV_VERSION1`] (the kernel refuses any other version).
pub fn state_request() -> FsQuotaStatv {
    FsQuotaStatv {
        qs_version: FS_QSTATV_VERSION1,
        ..FsQuotaStatv::default()
    }
}

/// The project quota state of a `Q_XGETQSTATV` answer.
pub fn state_from(statv: &FsQuotaStatv) -> ProjectQuotaState {
    ProjectQuotaState {
        accounting: statv.qs_flags & FS_QUOTA_PDQ_ACCT != 0,
        enforcing: statv.qs_flags & FS_QUOTA_PDQ_ENFD != 0,
    }
}

/// `bytes` in basic blocks, rounded up.
fn to_basic_blocks(bytes: u64) -> u64 {
    bytes.div_ceil(BASIC_BLOCK)
}

/// `blocks` basic blocks in bytes (saturating; the kernel's numbers never
/// get near).
fn from_basic_blocks(blocks: u64) -> u64 {
    blocks.saturating_mul(BASIC_BLOCK)
}

/// The `Q_XSETQLIM` request for project `id`: hard and soft limits on bytes
/// (in basic blocks, rounded up) and on inodes, all four set (0 clears a
/// limit).
pub fn limit_request(id: u32, bytes: u64, inodes: u64) -> FsDiskQuota {
    let blocks = to_basic_blocks(bytes);
    FsDiskQuota {
        d_version: FS_DQUOT_VERSION,
        d_flags: FS_PROJ_QUOTA,
        d_fieldmask: FS_DQ_BSOFT | FS_DQ_BHARD | FS_DQ_ISOFT | FS_DQ_IHARD,
        d_id: id,
        d_blk_hardlimit: blocks,
        d_blk_softlimit: blocks,
        d_ino_hardlimit: inodes,
        d_ino_softlimit: inodes,
        ..FsDiskQuota::default()
    }
}

/// The usage and hard limits of a `Q_XGETQUOTA` answer, in bytes and inodes.
pub fn usage_from(q: &FsDiskQuota) -> ProjectUsage {
    ProjectUsage {
        bytes: from_basic_blocks(q.d_bcount),
        inodes: q.d_icount,
        bytes_limit: from_basic_blocks(q.d_blk_hardlimit),
        inodes_limit: q.d_ino_hardlimit,
    }
}

/// `x` with project id `id` and [`FS_XFLAG_PROJINHERIT`] added; every other
/// field and flag as it was (the kernel ignores the read-only ones it
/// reported).
pub fn with_project(x: FsXattr, id: u32) -> FsXattr {
    FsXattr {
        fsx_xflags: x.fsx_xflags | FS_XFLAG_PROJINHERIT,
        fsx_projid: id,
        ..x
    }
}

/// Whether `Q_XGETQSTATV` failing with `errno` means that the filesystem has
/// no project quota (rather than that something went wrong).
///
/// - `ENOSYS`: no `quotactl_fd(2)` (Linux before 5.14); a filesystem without
///   quota operations at all (tmpfs without quota support or not mounted
///   with it, btrfs, XFS built without `CONFIG_XFS_QUOTA`, overlayfs, NFS,
///   FUSE); or quota operations but no quota of any type on (ext4 without
///   the quota feature or quota mount options, XFS mounted without quota
///   options): the kernel answers `ENOSYS` when the state has no flag set.
/// - `EINVAL`: quota, but not of the project type (tmpfs mounted with
///   `usrquota`/`grpquota`: its quota types are user and group only).
/// - `ESRCH`: the quota type is not on. Not what current kernels answer to
///   `Q_XGETQSTATV`, but their answer to every per-id command then.
///
/// `ENOTTY` and `EOPNOTSUPP` are not among them: the quota code never
/// answers those, so they mean something else (such as a seccomp filter),
/// and stay errors, like `EPERM`.
pub fn no_project_quota(errno: i32) -> bool {
    matches!(errno, libc::ENOSYS | libc::EINVAL | libc::ESRCH)
}

/// Opens directory `path` for the quota calls and ioctls: `O_RDONLY`
/// (`quotactl_fd` takes an `O_PATH` descriptor too, the ioctls do not),
/// refusing a symlink at `path`.
fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
    )
    .map_err(|e| crate::context(e, format!("opening directory {}", path.display())))
}

/// `quotactl_fd(fd, cmd, id, addr)`, which rustix does not wrap.
///
/// # Safety
///
/// `addr` must point to memory that `cmd` may read and write: a
/// `struct fs_quota_statv` for `Q_XGETQSTATV`, a `struct fs_disk_quota` for
/// `Q_XGETQUOTA` and `Q_XSETQLIM`.
unsafe fn quotactl_fd(fd: BorrowedFd<'_>, cmd: u32, id: u32, addr: *mut c_void) -> Result<(), Errno> {
    // SAFETY: quotactl_fd(2) takes (unsigned int fd, unsigned int cmd, qid_t
    // id, void __user *addr); the integers are passed as longs, which the
    // kernel truncates to their 32 bits; `fd` is open for the call, and the
    // caller vouches for `addr`.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_quotactl_fd,
            libc::c_long::from(fd.as_raw_fd()),
            libc::c_long::from(cmd),
            libc::c_long::from(id),
            addr,
        )
    };
    if rc < 0 {
        Err(Errno::from_raw_os_error(
            io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO),
        ))
    } else {
        Ok(())
    }
}

/// A hint to add to the message of a per-id quota command that failed with
/// `errno`.
fn quota_hint(errno: Errno) -> &'static str {
    match errno {
        Errno::NOSYS => " (the filesystem has no quota on)",
        Errno::SRCH => " (project quota is not on for the filesystem)",
        _ => "",
    }
}

/// Project quota as the filesystem holding directory `path` has it
/// (`Q_XGETQSTATV` for [`PRJQUOTA`] through `quotactl_fd(2)`):
/// `Ok(None)` when the filesystem has no project quota at all (see
/// [`no_project_quota`] for the errors that mean that). A filesystem with
/// other quota types on but not project quota is `Some` with both `false`.
///
/// `path` must be a directory, not a symlink to one.
pub fn state(path: &Path) -> io::Result<Option<ProjectQuotaState>> {
    let fd = open_dir(path)?;
    let mut statv = state_request();
    let cmd = quotactl_cmd(Q_XGETQSTATV, PRJQUOTA);
    // SAFETY: Q_XGETQSTATV reads the version byte of a `struct
    // fs_quota_statv` and writes the whole struct, which FsQuotaStatv
    // reproduces (#[repr(C)], size checked in the tests); `statv` outlives
    // the call.
    match unsafe { quotactl_fd(fd.as_fd(), cmd, 0, (&raw mut statv).cast()) } {
        Ok(()) => Ok(Some(state_from(&statv))),
        Err(e) if no_project_quota(e.raw_os_error()) => Ok(None),
        Err(e) => Err(crate::context(
            e,
            format!(
                "getting the project quota state of {} (quotactl_fd Q_XGETQSTATV)",
                path.display()
            ),
        )),
    }
}

/// `FS_IOC_FSGETXATTR` of `fd`.
fn get_xattr(fd: &OwnedFd) -> Result<FsXattr, Errno> {
    // SAFETY: FS_IOC_FSGETXATTR writes a whole `struct fsxattr`, which
    // FsXattr reproduces (#[repr(C)], size checked in the tests).
    unsafe { ioctl(fd, Getter::<FS_IOC_FSGETXATTR, FsXattr>::new()) }
}

/// `FS_IOC_FSSETXATTR` of `fd` to `x`.
fn set_xattr(fd: &OwnedFd, x: FsXattr) -> Result<(), Errno> {
    // SAFETY: FS_IOC_FSSETXATTR reads a `struct fsxattr`, which FsXattr
    // reproduces (#[repr(C)], size checked in the tests); the kernel only
    // reads it.
    unsafe { ioctl(fd, Setter::<FS_IOC_FSSETXATTR, FsXattr>::new(x)) }
}

fn get_xattr_of(fd: &OwnedFd, path: &Path) -> io::Result<FsXattr> {
    get_xattr(fd).map_err(|e| {
        crate::context(
            e,
            format!("getting the project id of {} (FS_IOC_FSGETXATTR)", path.display()),
        )
    })
}

/// The project id of directory `path` and whether its new entries inherit
/// it (`FS_IOC_FSGETXATTR`: `fsx_projid`, [`FS_XFLAG_PROJINHERIT`]).
/// Filesystems without project ids (tmpfs, btrfs) say `(0, false)`.
///
/// `path` must be a directory, not a symlink to one.
pub fn get_project(path: &Path) -> io::Result<(u32, bool)> {
    let fd = open_dir(path)?;
    let x = get_xattr_of(&fd, path)?;
    Ok((x.fsx_projid, x.fsx_xflags & FS_XFLAG_PROJINHERIT != 0))
}

/// Gives directory `path` project id `id` and makes its new entries inherit
/// it: `FS_IOC_FSGETXATTR`, then `FS_IOC_FSSETXATTR` with [`with_project`]
/// (other flags kept). Entries already in the directory keep their
/// project. Nothing is set when the directory has both already.
///
/// A filesystem without project ids refuses (`EOPNOTSUPP`, kind
/// [`ErrorKind::Unsupported`]): tmpfs, btrfs, ext4 without the `project`
/// feature. ext4 applies the flags of a request before it refuses its
/// project id, so on failure the attributes are put back as they were. The
/// answer is read back, and a filesystem that takes the request but does not
/// keep it is an error too. Setting a project id needs `CAP_FOWNER` or
/// owning the directory, and the initial user namespace.
pub fn set_project(path: &Path, id: u32) -> io::Result<()> {
    if id == INVALID_PROJID {
        return Err(io::Error::new(
            ErrorKind::InvalidInput,
            format!("{id} is not a valid project id (for {})", path.display()),
        ));
    }
    let fd = open_dir(path)?;
    let old = get_xattr_of(&fd, path)?;
    let new = with_project(old, id);
    if new == old {
        return Ok(());
    }
    let what = || format!("setting project id {id} with inheritance on {}", path.display());
    if let Err(e) = set_xattr(&fd, new) {
        let hint = if e == Errno::OPNOTSUPP {
            "; the filesystem has no project ids: ext4 needs the project feature, tmpfs and btrfs have none"
        } else {
            ""
        };
        let undo = restore_xattr(&fd, &old);
        return Err(crate::context(
            e,
            format!("{} (FS_IOC_FSSETXATTR{hint}){undo}", what()),
        ));
    }
    let now = get_xattr(&fd)
        .map_err(|e| crate::context(e, format!("{}: reading it back (FS_IOC_FSGETXATTR)", what())))?;
    if now.fsx_projid != id || now.fsx_xflags & FS_XFLAG_PROJINHERIT == 0 {
        return Err(io::Error::new(
            ErrorKind::Unsupported,
            format!(
                "{}: the filesystem took FS_IOC_FSSETXATTR but kept project id {} with flags {:#x}",
                what(),
                now.fsx_projid,
                now.fsx_xflags
            ),
        ));
    }
    Ok(())
}

/// After a failed `FS_IOC_FSSETXATTR`, puts the project id and flags of `fd`
/// back to `old` if the kernel changed part of them; what to add to the
/// error message (empty when nothing was left changed).
fn restore_xattr(fd: &OwnedFd, old: &FsXattr) -> String {
    let now = match get_xattr(fd) {
        Ok(now) => now,
        Err(e) => return format!(" (and reading the attributes back failed: {e})"),
    };
    if now.fsx_xflags == old.fsx_xflags && now.fsx_projid == old.fsx_projid {
        return String::new();
    }
    match set_xattr(fd, *old) {
        Ok(()) => String::new(),
        Err(e) => format!(
            " (the kernel left flags {:#x} and project id {}, and putting back flags {:#x} and project id \
             {} failed: {e})",
            now.fsx_xflags, now.fsx_projid, old.fsx_xflags, old.fsx_projid
        ),
    }
}

/// Checks that `id` may have limits: not 0 (on XFS the limits of project 0
/// are the default limits of every project) and not the invalid id.
fn check_limited_id(id: u32, path: &Path) -> io::Result<()> {
    if id == 0 || id == INVALID_PROJID {
        return Err(io::Error::new(
            ErrorKind::InvalidInput,
            format!(
                "project id {id} cannot have limits on {}: 0 holds the defaults of every project, \
                 {INVALID_PROJID} is invalid",
                path.display()
            ),
        ));
    }
    Ok(())
}

/// Limits project `id` of the filesystem holding directory `path` to `bytes`
/// (rounded up to 512) and `inodes`, hard and soft alike (`Q_XSETQLIM` with
/// [`limit_request`]); 0 clears a limit. Project 0 is refused (kind
/// [`ErrorKind::InvalidInput`]): on XFS its limits are the defaults of every
/// project.
///
/// Without project quota on, the kernel refuses: `ESRCH` (ext4 without it),
/// `ENOSYS` (no quota at all).
pub fn set_limit(path: &Path, id: u32, bytes: u64, inodes: u64) -> io::Result<()> {
    check_limited_id(id, path)?;
    let fd = open_dir(path)?;
    let mut request = limit_request(id, bytes, inodes);
    let cmd = quotactl_cmd(Q_XSETQLIM, PRJQUOTA);
    // SAFETY: Q_XSETQLIM reads a `struct fs_disk_quota`, which FsDiskQuota
    // reproduces (#[repr(C)], size checked in the tests); `request` outlives
    // the call.
    unsafe { quotactl_fd(fd.as_fd(), cmd, id, (&raw mut request).cast()) }.map_err(|e| {
        crate::context(
            e,
            format!(
                "limiting project {id} on {} to {bytes} bytes and {inodes} inodes (quotactl_fd \
                 Q_XSETQLIM){}",
                path.display(),
                quota_hint(e)
            ),
        )
    })
}

/// Usage and limits of project `id` of the filesystem holding directory
/// `path` (`Q_XGETQUOTA`, through [`usage_from`]). A project that has
/// neither usage nor limits (`ENOENT` from XFS; ext4 answers zeros) is
/// [`ProjectUsage::default()`].
///
/// Without project quota on, the kernel refuses: `ESRCH` (ext4 without it),
/// `ENOSYS` (no quota at all).
pub fn usage(path: &Path, id: u32) -> io::Result<ProjectUsage> {
    if id == INVALID_PROJID {
        return Err(io::Error::new(
            ErrorKind::InvalidInput,
            format!("{id} is not a valid project id (for {})", path.display()),
        ));
    }
    let fd = open_dir(path)?;
    let mut answer = FsDiskQuota::default();
    let cmd = quotactl_cmd(Q_XGETQUOTA, PRJQUOTA);
    // SAFETY: Q_XGETQUOTA writes a `struct fs_disk_quota`, which FsDiskQuota
    // reproduces (#[repr(C)], size checked in the tests); `answer` outlives
    // the call.
    match unsafe { quotactl_fd(fd.as_fd(), cmd, id, (&raw mut answer).cast()) } {
        Ok(()) => Ok(usage_from(&answer)),
        Err(Errno::NOENT) => Ok(ProjectUsage::default()),
        Err(e) => Err(crate::context(
            e,
            format!(
                "getting the quota of project {id} on {} (quotactl_fd Q_XGETQUOTA){}",
                path.display(),
                quota_hint(e)
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    const MIB: u64 = 1 << 20;

    #[test]
    fn structs_match_linux_headers() {
        assert_eq!(size_of::<FsDiskQuota>(), 112);
        assert_eq!(offset_of!(FsDiskQuota, d_fieldmask), 2);
        assert_eq!(offset_of!(FsDiskQuota, d_id), 4);
        assert_eq!(offset_of!(FsDiskQuota, d_blk_hardlimit), 8);
        assert_eq!(offset_of!(FsDiskQuota, d_blk_softlimit), 16);
        assert_eq!(offset_of!(FsDiskQuota, d_ino_hardlimit), 24);
        assert_eq!(offset_of!(FsDiskQuota, d_ino_softlimit), 32);
        assert_eq!(offset_of!(FsDiskQuota, d_bcount), 40);
        assert_eq!(offset_of!(FsDiskQuota, d_icount), 48);
        assert_eq!(offset_of!(FsDiskQuota, d_itimer), 56);
        assert_eq!(offset_of!(FsDiskQuota, d_iwarns), 64);
        assert_eq!(offset_of!(FsDiskQuota, d_itimer_hi), 68);
        assert_eq!(offset_of!(FsDiskQuota, d_rtb_hardlimit), 72);
        assert_eq!(offset_of!(FsDiskQuota, d_rtbcount), 88);
        assert_eq!(offset_of!(FsDiskQuota, d_rtbtimer), 96);
        assert_eq!(offset_of!(FsDiskQuota, d_rtbwarns), 100);
        assert_eq!(offset_of!(FsDiskQuota, d_padding4), 104);

        assert_eq!(size_of::<FsQfilestatv>(), 24);
        assert_eq!(offset_of!(FsQfilestatv, qfs_nextents), 16);
        assert_eq!(size_of::<FsQuotaStatv>(), 160);
        assert_eq!(offset_of!(FsQuotaStatv, qs_flags), 2);
        assert_eq!(offset_of!(FsQuotaStatv, qs_incoredqs), 4);
        assert_eq!(offset_of!(FsQuotaStatv, qs_uquota), 8);
        assert_eq!(offset_of!(FsQuotaStatv, qs_gquota), 32);
        assert_eq!(offset_of!(FsQuotaStatv, qs_pquota), 56);
        assert_eq!(offset_of!(FsQuotaStatv, qs_btimelimit), 80);
        assert_eq!(offset_of!(FsQuotaStatv, qs_bwarnlimit), 92);
        assert_eq!(offset_of!(FsQuotaStatv, qs_pad3), 98);
        assert_eq!(offset_of!(FsQuotaStatv, qs_pad4), 100);
        assert_eq!(offset_of!(FsQuotaStatv, qs_pad2), 104);

        assert_eq!(size_of::<FsXattr>(), 28);
        assert_eq!(offset_of!(FsXattr, fsx_extsize), 4);
        assert_eq!(offset_of!(FsXattr, fsx_nextents), 8);
        assert_eq!(offset_of!(FsXattr, fsx_projid), 12);
        assert_eq!(offset_of!(FsXattr, fsx_cowextsize), 16);
        assert_eq!(offset_of!(FsXattr, fsx_pad), 20);
    }

    #[test]
    fn constants_match_linux_headers() {
        assert_eq!(Q_XGETQSTATV, (u32::from(b'X') << 8) + 8);
        assert_eq!(Q_XSETQLIM, (u32::from(b'X') << 8) + 4);
        assert_eq!(Q_XGETQUOTA, (u32::from(b'X') << 8) + 3);
        assert_eq!(Q_XGETQSTATV, 0x5808);
        assert_eq!(Q_XSETQLIM, 0x5804);
        assert_eq!(Q_XGETQUOTA, 0x5803);
        assert_eq!(PRJQUOTA, 2);
        // The values of the header's macros on x86_64 and arm64.
        assert_eq!(FS_IOC_FSGETXATTR, 0x801c_581f);
        assert_eq!(FS_IOC_FSSETXATTR, 0x401c_5820);
        assert_eq!(FS_XFLAG_PROJINHERIT, 0x200);
        assert_eq!(FS_DQUOT_VERSION, 1);
        assert_eq!(FS_PROJ_QUOTA, 2);
        assert_eq!((FS_DQ_ISOFT, FS_DQ_IHARD, FS_DQ_BSOFT, FS_DQ_BHARD), (1, 2, 4, 8));
        assert_eq!(FS_QSTATV_VERSION1, 1);
        assert_eq!((FS_QUOTA_PDQ_ACCT, FS_QUOTA_PDQ_ENFD), (0x10, 0x20));
        assert_eq!(libc::SYS_quotactl_fd, 443);
    }

    #[test]
    fn qcmd_puts_the_command_above_the_type() {
        assert_eq!(quotactl_cmd(Q_XGETQSTATV, PRJQUOTA), 0x0058_0802);
        assert_eq!(quotactl_cmd(Q_XSETQLIM, PRJQUOTA), 0x0058_0402);
        assert_eq!(quotactl_cmd(Q_XGETQUOTA, PRJQUOTA), 0x0058_0302);
        // USRQUOTA is 0; the type is masked to 8 bits.
        assert_eq!(quotactl_cmd(Q_XGETQUOTA, 0), 0x0058_0300);
        assert_eq!(quotactl_cmd(Q_XGETQUOTA, 0x102), 0x0058_0302);
    }

    #[test]
    fn limit_request_sets_every_limit_in_basic_blocks() {
        let mask = FS_DQ_BSOFT | FS_DQ_BHARD | FS_DQ_ISOFT | FS_DQ_IHARD;
        assert_eq!(mask, 0xf);
        let q = limit_request(42, 4 * MIB, 1000);
        assert_eq!(
            q,
            FsDiskQuota {
                d_version: 1,
                d_flags: 2,
                d_fieldmask: 0xf,
                d_id: 42,
                d_blk_hardlimit: 8192,
                d_blk_softlimit: 8192,
                d_ino_hardlimit: 1000,
                d_ino_softlimit: 1000,
                ..FsDiskQuota::default()
            }
        );
        for (bytes, blocks) in [
            (0, 0),
            (1, 1),
            (511, 1),
            (512, 1),
            (513, 2),
            (1024, 2),
            (4095, 8),
            (4096, 8),
            (10 * (1 << 30), 20 * (1 << 20)),
            (u64::MAX, (u64::MAX >> 9) + 1),
        ] {
            let q = limit_request(7, bytes, 0);
            assert_eq!(
                (q.d_blk_hardlimit, q.d_blk_softlimit),
                (blocks, blocks),
                "{bytes}"
            );
        }
        // 0 clears: the fields are still in the mask, with zeros.
        let cleared = limit_request(7, 0, 0);
        assert_eq!(cleared.d_fieldmask, 0xf);
        assert_eq!(
            (
                cleared.d_blk_hardlimit,
                cleared.d_blk_softlimit,
                cleared.d_ino_hardlimit,
                cleared.d_ino_softlimit
            ),
            (0, 0, 0, 0)
        );
        // Nothing but the limits is asked for: no timers, warnings, counts.
        assert_eq!(
            (
                cleared.d_bcount,
                cleared.d_icount,
                cleared.d_itimer,
                cleared.d_btimer
            ),
            (0, 0, 0, 0)
        );
    }

    #[test]
    fn usage_is_converted_to_bytes() {
        let q = FsDiskQuota {
            d_version: 1,
            d_flags: 2,
            d_id: 42,
            d_bcount: 3,
            d_icount: 5,
            d_blk_hardlimit: 8192,
            d_blk_softlimit: 4096,
            d_ino_hardlimit: 100,
            d_ino_softlimit: 50,
            ..FsDiskQuota::default()
        };
        assert_eq!(
            usage_from(&q),
            ProjectUsage {
                bytes: 1536,
                inodes: 5,
                bytes_limit: 4 * MIB,
                inodes_limit: 100
            }
        );
        assert_eq!(usage_from(&FsDiskQuota::default()), ProjectUsage::default());
        let huge = FsDiskQuota {
            d_bcount: u64::MAX,
            ..FsDiskQuota::default()
        };
        assert_eq!(usage_from(&huge).bytes, u64::MAX);
        // What limit_request sets reads back as the size rounded up to 512.
        assert_eq!(usage_from(&limit_request(1, 1000, 3)).bytes_limit, 1024);
    }

    #[test]
    fn state_request_and_answer() {
        let req = state_request();
        assert_eq!(req.qs_version, 1);
        assert_eq!(
            req,
            FsQuotaStatv {
                qs_version: 1,
                ..FsQuotaStatv::default()
            }
        );
        let with = |flags| FsQuotaStatv {
            qs_flags: flags,
            ..req
        };
        let st = |accounting, enforcing| ProjectQuotaState {
            accounting,
            enforcing,
        };
        assert_eq!(state_from(&with(0x30)), st(true, true));
        assert_eq!(state_from(&with(0x10)), st(true, false));
        // User and group quota only.
        assert_eq!(state_from(&with(0x0f)), st(false, false));
        assert_eq!(state_from(&with(0x3f)), st(true, true));
    }

    #[test]
    fn with_project_keeps_other_flags() {
        let x = FsXattr {
            // FS_XFLAG_HASATTR | FS_XFLAG_NODUMP | FS_XFLAG_EXTSZINHERIT
            fsx_xflags: 0x8000_0000 | 0x80 | 0x1000,
            fsx_extsize: 65536,
            fsx_nextents: 3,
            fsx_projid: 5,
            fsx_cowextsize: 32,
            fsx_pad: [0; 8],
        };
        let y = with_project(x, 42);
        assert_eq!(
            y,
            FsXattr {
                fsx_xflags: 0x8000_0000 | 0x80 | 0x1000 | 0x200,
                fsx_projid: 42,
                ..x
            }
        );
        // Already inheriting: the flags stay as they are.
        assert_eq!(with_project(y, 7).fsx_xflags, y.fsx_xflags);
        assert_eq!(with_project(y, 42), y);
        assert_eq!(
            with_project(FsXattr::default(), 1),
            FsXattr {
                fsx_xflags: 0x200,
                fsx_projid: 1,
                ..FsXattr::default()
            }
        );
    }

    #[test]
    fn errors_that_mean_no_project_quota() {
        for errno in [libc::ENOSYS, libc::EINVAL, libc::ESRCH] {
            assert!(no_project_quota(errno), "{errno}");
        }
        for errno in [
            libc::EPERM,
            libc::EFAULT,
            libc::EIO,
            libc::ENOTTY,
            libc::EOPNOTSUPP,
            libc::ENOENT,
        ] {
            assert!(!no_project_quota(errno), "{errno}");
        }
    }

    #[test]
    fn bad_ids_are_refused_before_any_call() {
        let path = Path::new("/nonexistent/loam-quota");
        for id in [0, u32::MAX] {
            let err = set_limit(path, id, MIB, 0).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
            assert!(err.to_string().contains("/nonexistent/loam-quota"), "{err}");
        }
        let err = set_project(path, u32::MAX).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
        let err = usage(path, u32::MAX).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    }

    #[test]
    fn errors_name_the_path() {
        let path = Path::new("/nonexistent/loam-quota");
        for err in [
            state(path).unwrap_err(),
            get_project(path).unwrap_err(),
            set_project(path, 7).unwrap_err(),
            set_limit(path, 7, MIB, 0).unwrap_err(),
            usage(path, 7).unwrap_err(),
        ] {
            assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
            assert!(err.to_string().contains("/nonexistent/loam-quota"), "{err}");
            assert_eq!(crate::os_error(&err), Some(libc::ENOENT), "{err}");
        }
    }

    #[test]
    fn a_symlink_or_file_is_not_opened() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"").unwrap();
        let link = dir.path().join("l");
        std::os::unix::fs::symlink(dir.path(), &link).unwrap();
        for path in [&file, &link] {
            let err = get_project(path).unwrap_err();
            assert!(
                matches!(crate::os_error(&err), Some(libc::ENOTDIR | libc::ELOOP)),
                "{err}"
            );
            assert!(state(path).is_err());
        }
    }
}

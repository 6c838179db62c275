//! btrfs subvolumes and quota groups, through the kernel's ioctls and sysfs
//! (never by running the `btrfs` tool).
//!
//! A btrfs-backed volume is a subvolume ([`create_subvolume`]) whose size is
//! enforced by a limit on its level-0 quota group `0/<id>` ([`set_limit`]).
//! The kernel keeps quota groups only while quotas are on ([`quota_mode`],
//! [`enable_quota`]): either full qgroup accounting, which tracks shared and
//! exclusive extents exactly at the price of backref walks (and a rescan when
//! enabled), or simple quotas (`squota`, Linux 6.7+), which charge every extent
//! to the subvolume that wrote it and never walk backrefs.
//!
//! Usage and limits are read from sysfs, `/sys/fs/btrfs/<fsid>/qgroups/`
//! ([`qgroup`], [`qgroup_ids`]), which is O(1) per quota group; its numbers are
//! updated when a transaction commits, not on every write. A page of volumes
//! is checked with [`subvolumes`]: one `statx` and one search of the quota
//! tree for the limit item per subvolume, instead of a dozen opens and reads.
//!
//! Deleting a subvolume ([`delete_subvolume`]) only unlinks it: the kernel's
//! cleaner thread drops its trees later, and only then can its quota group go
//! (the kernel refuses to remove the quota group of a subvolume that still
//! exists, dead or not). The delete therefore also commits the transaction
//! and wakes the cleaner, and waits, bounded, until the quota group is gone.

use std::{
    ffi::OsStr,
    fs,
    io::{self, ErrorKind},
    mem::size_of,
    os::{
        fd::{AsFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use rustix::{
    fs::{AtFlags, FileType, Mode, OFlags, StatFs, Statx, StatxFlags, fstat, fstatfs, open, openat},
    io::Errno,
    ioctl::{NoArg, Opcode, Setter, Updater, ioctl, opcode},
};

/// Quota accounting a btrfs filesystem has on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaMode {
    /// No quotas: no quota groups, no limits.
    Off,
    /// Full qgroup accounting (`btrfs quota enable`).
    Full,
    /// Simple quotas (`btrfs quota enable --simple`, Linux 6.7+).
    Simple,
}

/// A level-0 quota group, as sysfs shows it after the last transaction commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Qgroup {
    /// Bytes of extents the subvolume refers to.
    pub referenced: u64,
    /// Bytes of extents only this subvolume refers to (with simple quotas,
    /// the same as `referenced`: extents are charged to their writer).
    pub exclusive: u64,
    /// Limit on `referenced`, if any.
    pub max_referenced: Option<u64>,
    /// Limit on `exclusive`, if any.
    pub max_exclusive: Option<u64>,
}

/// `BTRFS_SUPER_MAGIC` of linux/magic.h, the `f_type` of statfs(2).
const BTRFS_SUPER_MAGIC: u64 = 0x9123_683E;

/// The inode number of the root directory of every subvolume.
const BTRFS_FIRST_FREE_OBJECTID: u64 = 256;
/// The id of the top-level subvolume (the filesystem tree).
const BTRFS_FS_TREE_OBJECTID: u64 = 5;

/// How long [`delete_subvolume`] waits for the subvolume's quota group to go.
const DELETE_QGROUP_WAIT: Duration = Duration::from_secs(30);
/// How often [`delete_subvolume`] wakes the cleaner thread while it waits.
const KICK_INTERVAL: Duration = Duration::from_secs(1);

const SYSFS_BTRFS: &str = "/sys/fs/btrfs";

/// `STATX_SUBVOL` of linux/stat.h (Linux 6.10+): `stx_subvol` is the subvolume's id.
const STATX_SUBVOL: StatxFlags = StatxFlags::from_bits_retain(0x8000);

// Ioctls of linux/btrfs.h. Their numbers encode the argument's size, so they
// are computed from the structs below (and checked against the header's
// values in the tests).
const BTRFS_IOCTL_MAGIC: u8 = 0x94;
const BTRFS_IOC_SYNC: Opcode = opcode::none(BTRFS_IOCTL_MAGIC, 8);
const BTRFS_IOC_SUBVOL_CREATE: Opcode = opcode::write::<VolArgs>(BTRFS_IOCTL_MAGIC, 14);
const BTRFS_IOC_SNAP_DESTROY: Opcode = opcode::write::<VolArgs>(BTRFS_IOCTL_MAGIC, 15);
const BTRFS_IOC_TREE_SEARCH: Opcode = opcode::read_write::<SearchArgs>(BTRFS_IOCTL_MAGIC, 17);
const BTRFS_IOC_INO_LOOKUP: Opcode = opcode::read_write::<InoLookupArgs>(BTRFS_IOCTL_MAGIC, 18);
const BTRFS_IOC_FS_INFO: Opcode = opcode::read::<FsInfoArgs>(BTRFS_IOCTL_MAGIC, 31);
const BTRFS_IOC_QUOTA_CTL: Opcode = opcode::read_write::<QuotaCtlArgs>(BTRFS_IOCTL_MAGIC, 40);
const BTRFS_IOC_QGROUP_CREATE: Opcode = opcode::write::<QgroupCreateArgs>(BTRFS_IOCTL_MAGIC, 42);
// Declared _IOR in the header although the kernel only reads the argument.
const BTRFS_IOC_QGROUP_LIMIT: Opcode = opcode::read::<QgroupLimitArgs>(BTRFS_IOCTL_MAGIC, 43);
const BTRFS_IOC_QUOTA_RESCAN_STATUS: Opcode = opcode::read::<QuotaRescanArgs>(BTRFS_IOCTL_MAGIC, 45);

const BTRFS_QUOTA_CTL_ENABLE: u64 = 1;
const BTRFS_QUOTA_CTL_ENABLE_SIMPLE_QUOTA: u64 = 4;
const BTRFS_QGROUP_LIMIT_MAX_RFER: u64 = 1 << 0;
const BTRFS_QGROUP_LIMIT_MAX_EXCL: u64 = 1 << 1;

/// The tree of tree roots, and the key type of a subvolume's root item in it.
const BTRFS_ROOT_TREE_OBJECTID: u64 = 1;
const BTRFS_ROOT_ITEM_KEY: u32 = 132;
/// The quota tree, and the key type of its quota group limit items (the key
/// is `(0, BTRFS_QGROUP_LIMIT_KEY, qgroupid)`).
const BTRFS_QUOTA_TREE_OBJECTID: u64 = 8;
const BTRFS_QGROUP_LIMIT_KEY: u32 = 244;
/// `struct btrfs_ioctl_search_header`: transid, objectid, offset, type, len.
const SEARCH_HEADER_BYTES: usize = 32;

/// Longest name of a directory entry.
const NAME_MAX: usize = 255;
const BTRFS_PATH_NAME_MAX: usize = 4087;
const BTRFS_INO_LOOKUP_PATH_MAX: usize = 4080;
const BTRFS_FSID_SIZE: usize = 16;

/// `struct btrfs_ioctl_vol_args`.
#[repr(C)]
#[derive(Clone, Copy)]
struct VolArgs {
    fd: i64,
    name: [u8; BTRFS_PATH_NAME_MAX + 1],
}

/// `struct btrfs_ioctl_search_key`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct SearchKey {
    tree_id: u64,
    min_objectid: u64,
    max_objectid: u64,
    min_offset: u64,
    max_offset: u64,
    min_transid: u64,
    max_transid: u64,
    min_type: u32,
    max_type: u32,
    nr_items: u32,
    unused: u32,
    unused1: u64,
    unused2: u64,
    unused3: u64,
    unused4: u64,
}

/// `struct btrfs_ioctl_search_args`: a key and a buffer for the items found.
#[repr(C)]
#[derive(Clone, Copy)]
struct SearchArgs {
    key: SearchKey,
    buf: [u8; 4096 - size_of::<SearchKey>()],
}

/// `struct btrfs_ioctl_ino_lookup_args`.
#[repr(C)]
#[derive(Clone, Copy)]
struct InoLookupArgs {
    treeid: u64,
    objectid: u64,
    name: [u8; BTRFS_INO_LOOKUP_PATH_MAX],
}

/// `struct btrfs_ioctl_fs_info_args`.
#[repr(C)]
#[derive(Clone, Copy)]
struct FsInfoArgs {
    max_id: u64,
    num_devices: u64,
    fsid: [u8; BTRFS_FSID_SIZE],
    nodesize: u32,
    sectorsize: u32,
    clone_alignment: u32,
    csum_type: u16,
    csum_size: u16,
    flags: u64,
    generation: u64,
    metadata_uuid: [u8; BTRFS_FSID_SIZE],
    reserved: [u8; 944],
}

/// `struct btrfs_ioctl_quota_ctl_args`.
#[repr(C)]
#[derive(Clone, Copy)]
struct QuotaCtlArgs {
    cmd: u64,
    status: u64,
}

/// `struct btrfs_ioctl_quota_rescan_args`.
#[repr(C)]
#[derive(Clone, Copy)]
struct QuotaRescanArgs {
    flags: u64,
    progress: u64,
    reserved: [u64; 6],
}

/// `struct btrfs_qgroup_limit`.
#[repr(C)]
#[derive(Clone, Copy)]
struct QgroupLimit {
    flags: u64,
    max_rfer: u64,
    max_excl: u64,
    rsv_rfer: u64,
    rsv_excl: u64,
}

/// `struct btrfs_ioctl_qgroup_limit_args`.
#[repr(C)]
#[derive(Clone, Copy)]
struct QgroupLimitArgs {
    qgroupid: u64,
    lim: QgroupLimit,
}

/// `struct btrfs_ioctl_qgroup_create_args`.
#[repr(C)]
#[derive(Clone, Copy)]
struct QgroupCreateArgs {
    create: u64,
    qgroupid: u64,
}

/// Checks that `name` is one directory entry name: not empty, `.` or `..`,
/// without `/` or NUL, at most 255 bytes.
fn check_name(name: &str) -> io::Result<()> {
    let bad = if name.is_empty() {
        Some("it is empty")
    } else if name == "." || name == ".." {
        Some("it is . or ..")
    } else if name.contains('/') {
        Some("it contains /")
    } else if name.contains('\0') {
        Some("it contains NUL")
    } else if name.len() > NAME_MAX {
        Some("it is longer than 255 bytes")
    } else {
        None
    };
    match bad {
        Some(why) => Err(io::Error::new(
            ErrorKind::InvalidInput,
            format!("invalid subvolume name {name:?}: {why}"),
        )),
        None => Ok(()),
    }
}

/// Whether the filesystem of `fd` is btrfs.
fn fd_is_btrfs(fd: &OwnedFd) -> Result<bool, Errno> {
    Ok(btrfs_magic(&fstatfs(fd)?))
}

/// Whether statfs result `st` is of btrfs.
fn btrfs_magic(st: &StatFs) -> bool {
    // The type of f_type differs between architectures (i64, u32, i32...);
    // the magic numbers are 32 bits.
    st.f_type as u64 & 0xFFFF_FFFF == BTRFS_SUPER_MAGIC
}

/// Opens `path` (a directory or regular file, following symlinks) for ioctls,
/// refusing anything else (a device node would take the ioctl to its driver)
/// and anything not on btrfs.
fn open_on_btrfs(path: &Path) -> io::Result<OwnedFd> {
    let fd = open(
        path,
        OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| crate::context(e, format!("opening {}", path.display())))?;
    let st = fstat(&fd).map_err(|e| crate::context(e, format!("stat of {}", path.display())))?;
    if !matches!(
        FileType::from_raw_mode(st.st_mode),
        FileType::Directory | FileType::RegularFile
    ) {
        return Err(io::Error::new(
            ErrorKind::InvalidInput,
            format!("{} is not a directory or regular file", path.display()),
        ));
    }
    check_btrfs(&fd, path)?;
    Ok(fd)
}

/// Opens directory `path` (following symlinks), which must be on btrfs.
fn open_dir_on_btrfs(path: &Path) -> io::Result<OwnedFd> {
    let fd = open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| crate::context(e, format!("opening directory {}", path.display())))?;
    check_btrfs(&fd, path)?;
    Ok(fd)
}

fn check_btrfs(fd: &OwnedFd, path: &Path) -> io::Result<()> {
    if fd_is_btrfs(fd).map_err(|e| crate::context(e, format!("statfs of {}", path.display())))? {
        Ok(())
    } else {
        Err(io::Error::new(
            ErrorKind::InvalidInput,
            format!("{} is not on btrfs", path.display()),
        ))
    }
}

/// Whether `path` is on btrfs (statfs `f_type` is `BTRFS_SUPER_MAGIC`).
/// Follows symlinks.
pub fn is_btrfs(path: &Path) -> io::Result<bool> {
    let st =
        rustix::fs::statfs(path).map_err(|e| crate::context(e, format!("statfs of {}", path.display())))?;
    Ok(btrfs_magic(&st))
}

/// Formats a filesystem UUID as the kernel's `%pU` does (and so sysfs names
/// the filesystem's directory): 8-4-4-4-12 lowercase hex digits.
fn format_fsid(fsid: &[u8; BTRFS_FSID_SIZE]) -> String {
    let mut out = String::with_capacity(36);
    for (i, byte) in fsid.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out.push('-');
        }
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

/// `BTRFS_IOC_FS_INFO` of `fd`: the fsid, formatted.
fn fd_fsid(fd: &OwnedFd, path: &Path) -> io::Result<String> {
    let mut args = FsInfoArgs {
        max_id: 0,
        num_devices: 0,
        fsid: [0; BTRFS_FSID_SIZE],
        nodesize: 0,
        sectorsize: 0,
        clone_alignment: 0,
        csum_type: 0,
        csum_size: 0,
        flags: 0,
        generation: 0,
        metadata_uuid: [0; BTRFS_FSID_SIZE],
        reserved: [0; 944],
    };
    // SAFETY: BTRFS_IOC_FS_INFO reads the `flags` of a `struct
    // btrfs_ioctl_fs_info_args` and writes the whole struct, which FsInfoArgs
    // reproduces (#[repr(C)], size checked in the tests); `args` is zeroed.
    unsafe { ioctl(fd, Updater::<BTRFS_IOC_FS_INFO, FsInfoArgs>::new(&mut args)) }.map_err(|e| {
        crate::context(
            e,
            format!("getting the fsid of {} (BTRFS_IOC_FS_INFO)", path.display()),
        )
    })?;
    Ok(format_fsid(&args.fsid))
}

/// The filesystem's UUID as sysfs names its directory under
/// `/sys/fs/btrfs/` (the fsid of `BTRFS_IOC_FS_INFO`, formatted 8-4-4-4-12
/// lowercase). `path` is any directory or regular file on the filesystem.
pub fn fsid(path: &Path) -> io::Result<String> {
    let fd = open_on_btrfs(path)?;
    fd_fsid(&fd, path)
}

/// The sysfs directory of the filesystem of `fd`, which must exist.
fn sysfs_dir(fd: &OwnedFd, path: &Path) -> io::Result<PathBuf> {
    let dir = Path::new(SYSFS_BTRFS).join(fd_fsid(fd, path)?);
    match fs::symlink_metadata(&dir) {
        Ok(_) => Ok(dir),
        Err(e) => Err(crate::context(
            e,
            format!("looking for the sysfs directory of {}", path.display()),
        )),
    }
}

/// The quota mode from the filesystem's sysfs directory `dir`.
fn sysfs_quota_mode(dir: &Path) -> io::Result<QuotaMode> {
    let qgroups = dir.join("qgroups");
    let mode = qgroups.join("mode");
    match fs::read_to_string(&mode) {
        Ok(text) => match text.trim_end() {
            "qgroup" => Ok(QuotaMode::Full),
            "squota" => Ok(QuotaMode::Simple),
            other => Err(io::Error::new(
                ErrorKind::InvalidData,
                format!("{}: unexpected content {other:?}", mode.display()),
            )),
        },
        Err(e) if e.kind() == ErrorKind::NotFound => {
            // No `mode` file: quotas are off (no `qgroups` directory), or a
            // kernel before 6.7, which has only full accounting.
            match fs::symlink_metadata(&qgroups) {
                Ok(_) => Ok(QuotaMode::Full),
                Err(e) if e.kind() == ErrorKind::NotFound => Ok(QuotaMode::Off),
                Err(e) => Err(crate::context(e, format!("looking for {}", qgroups.display()))),
            }
        }
        Err(e) => Err(crate::context(e, format!("reading {}", mode.display()))),
    }
}

/// The quota accounting of the filesystem holding `path`, from
/// `/sys/fs/btrfs/<fsid>/qgroups`: no such directory is [`QuotaMode::Off`],
/// its `mode` file saying `qgroup` is [`QuotaMode::Full`], `squota`
/// [`QuotaMode::Simple`].
pub fn quota_mode(path: &Path) -> io::Result<QuotaMode> {
    let fd = open_on_btrfs(path)?;
    sysfs_quota_mode(&sysfs_dir(&fd, path)?)
}

/// Turns quotas on for the filesystem holding `path` (`BTRFS_IOC_QUOTA_CTL`):
/// simple quotas when `simple`, else full qgroup accounting, which starts a
/// rescan of the whole filesystem ([`rescan_running`]).
///
/// Quotas that are already on in the mode asked for are left alone (`Ok`);
/// on in the other mode is an error of kind [`ErrorKind::AlreadyExists`]
/// (the kernel silently keeps the mode it has).
pub fn enable_quota(path: &Path, simple: bool) -> io::Result<()> {
    let fd = open_on_btrfs(path)?;
    let (cmd, want, name) = if simple {
        (BTRFS_QUOTA_CTL_ENABLE_SIMPLE_QUOTA, QuotaMode::Simple, "simple")
    } else {
        (BTRFS_QUOTA_CTL_ENABLE, QuotaMode::Full, "full")
    };
    let mut args = QuotaCtlArgs { cmd, status: 0 };
    // SAFETY: BTRFS_IOC_QUOTA_CTL takes a `struct btrfs_ioctl_quota_ctl_args`,
    // which QuotaCtlArgs reproduces (#[repr(C)], size checked in the tests).
    unsafe { ioctl(&fd, Updater::<BTRFS_IOC_QUOTA_CTL, QuotaCtlArgs>::new(&mut args)) }.map_err(|e| {
        crate::context(
            e,
            format!(
                "enabling {name} quotas on {} (BTRFS_IOC_QUOTA_CTL)",
                path.display()
            ),
        )
    })?;
    let have = sysfs_quota_mode(&sysfs_dir(&fd, path)?)?;
    if have != want {
        return Err(io::Error::new(
            ErrorKind::AlreadyExists,
            format!(
                "enabling {name} quotas on {}: the filesystem has {have:?} quotas",
                path.display()
            ),
        ));
    }
    Ok(())
}

/// Whether a qgroup rescan is running on the filesystem holding `path`
/// (`BTRFS_IOC_QUOTA_RESCAN_STATUS`; needs `CAP_SYS_ADMIN`). Always `false`
/// with quotas off or simple.
pub fn rescan_running(path: &Path) -> io::Result<bool> {
    let fd = open_on_btrfs(path)?;
    let mut args = QuotaRescanArgs {
        flags: 0,
        progress: 0,
        reserved: [0; 6],
    };
    // SAFETY: BTRFS_IOC_QUOTA_RESCAN_STATUS writes a `struct
    // btrfs_ioctl_quota_rescan_args`, which QuotaRescanArgs reproduces
    // (#[repr(C)], size checked in the tests).
    unsafe {
        ioctl(
            &fd,
            Updater::<BTRFS_IOC_QUOTA_RESCAN_STATUS, QuotaRescanArgs>::new(&mut args),
        )
    }
    .map_err(|e| {
        crate::context(
            e,
            format!(
                "getting the qgroup rescan status of {} (BTRFS_IOC_QUOTA_RESCAN_STATUS)",
                path.display()
            ),
        )
    })?;
    Ok(args.flags != 0)
}

/// `struct btrfs_ioctl_vol_args` naming `name` (checked by [`check_name`]).
fn vol_args(name: &str) -> VolArgs {
    let mut args = VolArgs {
        fd: 0,
        name: [0; BTRFS_PATH_NAME_MAX + 1],
    };
    args.name[..name.len()].copy_from_slice(name.as_bytes());
    args
}

/// The id of the subvolume that `fd` is in (`BTRFS_IOC_INO_LOOKUP` of the
/// subvolume's root directory, which needs no privileges).
fn fd_subvolume_id(fd: &OwnedFd, path: &Path) -> io::Result<u64> {
    let mut args = InoLookupArgs {
        treeid: 0,
        objectid: BTRFS_FIRST_FREE_OBJECTID,
        name: [0; BTRFS_INO_LOOKUP_PATH_MAX],
    };
    // SAFETY: BTRFS_IOC_INO_LOOKUP reads and writes a `struct
    // btrfs_ioctl_ino_lookup_args`, which InoLookupArgs reproduces
    // (#[repr(C)], size checked in the tests).
    unsafe { ioctl(fd, Updater::<BTRFS_IOC_INO_LOOKUP, InoLookupArgs>::new(&mut args)) }.map_err(|e| {
        crate::context(
            e,
            format!(
                "looking up the subvolume of {} (BTRFS_IOC_INO_LOOKUP)",
                path.display()
            ),
        )
    })?;
    Ok(args.treeid)
}

/// What `parent_fd`'s entry `name` is, opened without following a symlink.
enum Entry {
    /// No such entry.
    Missing,
    /// Not a directory (a symlink, file or anything else).
    NotDir,
    /// A directory that is not the root of a subvolume of the filesystem of
    /// its parent (a plain directory, or a mount point).
    NotSubvolume(&'static str),
    /// The root of subvolume `id`, on the same mount as the parent.
    Subvolume(u64),
}

/// Opens `parent_fd`'s entry `name` with `O_NOFOLLOW|O_DIRECTORY` and tells
/// what it is.
fn entry(parent_fd: &OwnedFd, name: &str, path: &Path) -> io::Result<Entry> {
    let fd = match openat(
        parent_fd,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(Entry::Missing),
        Err(Errno::NOTDIR | Errno::LOOP) => return Ok(Entry::NotDir),
        Err(e) => return Err(crate::context(e, format!("opening {}", path.display()))),
    };
    if !fd_is_btrfs(&fd).map_err(|e| crate::context(e, format!("statfs of {}", path.display())))? {
        return Ok(Entry::NotSubvolume("it is not on btrfs"));
    }
    let st = fstat(&fd).map_err(|e| crate::context(e, format!("stat of {}", path.display())))?;
    if st.st_ino != BTRFS_FIRST_FREE_OBJECTID {
        return Ok(Entry::NotSubvolume("it is a plain directory"));
    }
    if mount_id(&fd, path)? != mount_id(parent_fd, path)? {
        return Ok(Entry::NotSubvolume("it is a mount point"));
    }
    Ok(Entry::Subvolume(fd_subvolume_id(&fd, path)?))
}

/// The id of the mount that `fd` is on (`statx` `STATX_MNT_ID`).
fn mount_id(fd: &OwnedFd, path: &Path) -> io::Result<u64> {
    use rustix::fs::{AtFlags, StatxFlags, statx};
    let st = statx(fd, "", AtFlags::EMPTY_PATH, StatxFlags::MNT_ID)
        .map_err(|e| crate::context(e, format!("statx of {}", path.display())))?;
    Ok(st.stx_mnt_id)
}

/// Creates subvolume `parent/name` (`BTRFS_IOC_SUBVOL_CREATE`) and returns
/// its id. `name` must be a single path component; `parent` (symlinks
/// followed) must be a directory on btrfs. With quotas on, the kernel creates
/// its level-0 quota group `0/<id>` with it.
///
/// An existing `parent/name` is an error of kind [`ErrorKind::AlreadyExists`].
pub fn create_subvolume(parent: &Path, name: &str) -> io::Result<u64> {
    check_name(name)?;
    let path = parent.join(name);
    let parent_fd = open_dir_on_btrfs(parent)?;
    // SAFETY: BTRFS_IOC_SUBVOL_CREATE reads a `struct btrfs_ioctl_vol_args`,
    // which VolArgs reproduces (#[repr(C)], size checked in the tests); the
    // name is NUL-terminated (checked to be at most 255 bytes).
    unsafe {
        ioctl(
            &parent_fd,
            Setter::<BTRFS_IOC_SUBVOL_CREATE, VolArgs>::new(vol_args(name)),
        )
    }
    .map_err(|e| {
        crate::context(
            e,
            format!("creating subvolume {} (BTRFS_IOC_SUBVOL_CREATE)", path.display()),
        )
    })?;
    match entry(&parent_fd, name, &path)? {
        Entry::Subvolume(id) => Ok(id),
        _ => Err(io::Error::other(format!(
            "created subvolume {}, but it is no longer there",
            path.display()
        ))),
    }
}

/// The id of the subvolume whose root directory is `path`, or `None` when
/// `path` is not the root of a subvolume: missing (or under a non-directory),
/// not a directory, a symlink (never followed: opened
/// `O_NOFOLLOW|O_DIRECTORY`), a plain directory (its inode number is not
/// 256), or not on btrfs.
pub fn subvolume_id(path: &Path) -> io::Result<Option<u64>> {
    let fd = match open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(Errno::NOENT | Errno::NOTDIR | Errno::LOOP) => return Ok(None),
        Err(e) => return Err(crate::context(e, format!("opening {}", path.display()))),
    };
    if !fd_is_btrfs(&fd).map_err(|e| crate::context(e, format!("statfs of {}", path.display())))? {
        return Ok(None);
    }
    let st = fstat(&fd).map_err(|e| crate::context(e, format!("stat of {}", path.display())))?;
    if st.st_ino != BTRFS_FIRST_FREE_OBJECTID {
        return Ok(None);
    }
    fd_subvolume_id(&fd, path).map(Some)
}

/// `BTRFS_IOC_QGROUP_CREATE` with `create = 0`: removes quota group `0/<id>`.
fn remove_qgroup(fd: &OwnedFd, id: u64) -> Result<(), Errno> {
    let args = QgroupCreateArgs {
        create: 0,
        qgroupid: id,
    };
    // SAFETY: BTRFS_IOC_QGROUP_CREATE reads a `struct
    // btrfs_ioctl_qgroup_create_args`, which QgroupCreateArgs reproduces
    // (#[repr(C)], size checked in the tests).
    unsafe { ioctl(fd, Setter::<BTRFS_IOC_QGROUP_CREATE, QgroupCreateArgs>::new(args)) }
}

/// Whether the root item of subvolume `id` is gone from the tree of tree
/// roots, that is, the cleaner has dropped the deleted subvolume
/// (`BTRFS_IOC_TREE_SEARCH`, needs `CAP_SYS_ADMIN`). This is what the kernel
/// checks before it lets a level-0 quota group be removed.
fn subvolume_dropped(fd: &OwnedFd, id: u64) -> Result<bool, Errno> {
    let mut args = search_args();
    search_first(
        fd,
        &mut args,
        BTRFS_ROOT_TREE_OBJECTID,
        id,
        BTRFS_ROOT_ITEM_KEY,
        0..=u64::MAX,
    )?;
    Ok(args.key.nr_items == 0)
}

/// `BTRFS_IOC_TREE_SEARCH` for the first item of tree `tree_id` with this
/// object id and key type and an offset in `offsets` (needs `CAP_SYS_ADMIN`),
/// into `args`, which a caller searching many times reuses (the kernel reads
/// only its key). `nr_items` of its key then says whether there is one; if so,
/// the buffer holds its `struct btrfs_ioctl_search_header` and then its data.
fn search_first(
    fd: &OwnedFd,
    args: &mut SearchArgs,
    tree_id: u64,
    objectid: u64,
    key_type: u32,
    offsets: std::ops::RangeInclusive<u64>,
) -> Result<(), Errno> {
    args.key = SearchKey {
        tree_id,
        min_objectid: objectid,
        max_objectid: objectid,
        min_offset: *offsets.start(),
        max_offset: *offsets.end(),
        max_transid: u64::MAX,
        min_type: key_type,
        max_type: key_type,
        nr_items: 1,
        ..SearchKey::default()
    };
    // SAFETY: BTRFS_IOC_TREE_SEARCH reads and writes a `struct
    // btrfs_ioctl_search_args` (a key and a 3992-byte buffer the kernel fills
    // with at most `nr_items` items), which SearchArgs reproduces
    // (#[repr(C)], size checked in the tests).
    unsafe { ioctl(fd, Updater::<BTRFS_IOC_TREE_SEARCH, SearchArgs>::new(args)) }
}

/// A search buffer for [`search_first`], zeroed.
fn search_args() -> Box<SearchArgs> {
    Box::new(SearchArgs {
        key: SearchKey::default(),
        buf: [0; 4096 - size_of::<SearchKey>()],
    })
}

/// `BTRFS_IOC_SYNC`: flushes delalloc, commits the transaction and wakes the
/// cleaner thread.
fn sync_and_wake_cleaner(fd: &OwnedFd) -> Result<(), Errno> {
    // SAFETY: BTRFS_IOC_SYNC takes no argument and touches no user memory.
    unsafe { ioctl(fd, NoArg::<BTRFS_IOC_SYNC>::new()) }
}

/// Deletes subvolume `parent/name` and its level-0 quota group.
///
/// `name` must be a single path component. `parent/name` is opened without
/// following a symlink; anything that is not the root of a subvolume on the
/// same mount as `parent` (a plain directory, a symlink, a file, a mount
/// point) is refused with [`ErrorKind::InvalidInput`] and left alone. A
/// missing `parent/name` is `Ok` (already deleted).
///
/// The subvolume is unlinked with `BTRFS_IOC_SNAP_DESTROY`; the kernel drops
/// its trees later, in its cleaner thread (and only once nothing has it open
/// any more), and refuses to remove the quota group (`EBUSY`) until it has.
/// So with quotas on, this then commits the transaction and wakes the cleaner
/// (`BTRFS_IOC_SYNC`, which also flushes the filesystem's dirty data, like
/// `syncfs`), again every second, and waits up to 30 seconds until quota
/// group `0/<id>` is gone: removed by the kernel itself once the subvolume is
/// dropped, or by this with `BTRFS_IOC_QGROUP_CREATE` as soon as the kernel
/// allows it. This usually takes 3-25 ms.
///
/// Once this has begun to delete, the subvolume is gone even when it fails:
/// a quota group still there after the wait (the subvolume is not dropped
/// yet, typically because a file in it is still open) is an error of kind
/// [`ErrorKind::TimedOut`]. With simple quotas, a dropped subvolume's quota
/// group that is still charged for extents other subvolumes share (reflinks,
/// snapshots) is kept by the kernel until those are freed: that is an error
/// of kind [`ErrorKind::ResourceBusy`], told at once. Calling this again then
/// finds no subvolume and returns `Ok`, leaving the quota group.
pub fn delete_subvolume(parent: &Path, name: &str) -> io::Result<()> {
    check_name(name)?;
    let path = parent.join(name);
    let parent_fd = open_dir_on_btrfs(parent)?;
    let id = match entry(&parent_fd, name, &path)? {
        Entry::Missing => return Ok(()),
        Entry::NotDir => {
            return Err(io::Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "not deleting {}: it is not a subvolume (not a directory)",
                    path.display()
                ),
            ));
        }
        Entry::NotSubvolume(why) => {
            return Err(io::Error::new(
                ErrorKind::InvalidInput,
                format!("not deleting {}: it is not a subvolume ({why})", path.display()),
            ));
        }
        Entry::Subvolume(id) if id == BTRFS_FS_TREE_OBJECTID => {
            return Err(io::Error::new(
                ErrorKind::InvalidInput,
                format!("not deleting {}: it is the top-level subvolume", path.display()),
            ));
        }
        Entry::Subvolume(id) => id,
    };
    // SAFETY: BTRFS_IOC_SNAP_DESTROY reads a `struct btrfs_ioctl_vol_args`,
    // which VolArgs reproduces (#[repr(C)], size checked in the tests); the
    // name is NUL-terminated (checked to be at most 255 bytes).
    match unsafe {
        ioctl(
            &parent_fd,
            Setter::<BTRFS_IOC_SNAP_DESTROY, VolArgs>::new(vol_args(name)),
        )
    } {
        // Gone since it was looked at: its quota group may still be there.
        Ok(()) | Err(Errno::NOENT) => {}
        Err(e) => {
            return Err(crate::context(
                e,
                format!("deleting subvolume {} (BTRFS_IOC_SNAP_DESTROY)", path.display()),
            ));
        }
    }
    remove_qgroup_when_dropped(&parent_fd, parent, id, &path)
}

/// After subvolume `id` was deleted, makes the kernel drop it and waits until
/// its quota group is gone, removing it once the kernel allows that.
///
/// Measured on Linux 6.18, with full and with simple quotas, empty or holding
/// data: the quota group cannot be removed (`EBUSY`) right after the delete;
/// the kernel removes it by itself once the cleaner thread has dropped the
/// subvolume, but left alone that happens only after the next periodic
/// commit and wake-up of the cleaner, some 30 seconds later. `syncfs` (a
/// commit alone) does not help, since the cleaner still sleeps;
/// `BTRFS_IOC_SUBVOL_SYNC_WAIT` only waits (in whole seconds, without a
/// bound). `BTRFS_IOC_SYNC` commits and wakes the cleaner, and the quota
/// group can be removed (or the kernel has removed it) some 3-25 ms later.
///
/// The subvolume is only queued for dropping once nothing has it open any
/// more, so the wake-up is repeated every second while waiting.
///
/// With simple quotas, extents stay charged to the subvolume that wrote them
/// even when other subvolumes share them (reflinks, snapshots), and the
/// kernel refuses to remove a quota group that is still charged: then, once
/// the subvolume is dropped and that is committed, waiting longer is useless.
fn remove_qgroup_when_dropped(fd: &OwnedFd, parent: &Path, id: u64, path: &Path) -> io::Result<()> {
    let dir = sysfs_dir(fd, parent)?;
    if sysfs_quota_mode(&dir)? == QuotaMode::Off {
        return Ok(());
    }
    let qgroup_dir = dir.join("qgroups").join(format!("0_{id}"));
    let kick = || {
        sync_and_wake_cleaner(fd).map_err(|e| {
            crate::context(
                e,
                format!(
                    "committing the deletion of subvolume {} (BTRFS_IOC_SYNC)",
                    path.display()
                ),
            )
        })
    };
    let start = Instant::now();
    let mut last_kick: Option<Instant> = None;
    let mut committed_after_drop = false;
    let mut pause = Duration::from_millis(2);
    loop {
        if !qgroup_dir.exists() {
            return Ok(());
        }
        match remove_qgroup(fd, id) {
            Ok(()) | Err(Errno::NOENT) => return Ok(()),
            // Not dropped yet, or (simple quotas) still charged.
            Err(Errno::BUSY) => {}
            Err(e) => {
                return Err(crate::context(
                    e,
                    format!(
                        "removing quota group 0/{id} of deleted subvolume {} (BTRFS_IOC_QGROUP_CREATE)",
                        path.display()
                    ),
                ));
            }
        }
        let dropped = subvolume_dropped(fd, id).map_err(|e| {
            crate::context(
                e,
                format!(
                    "looking for the root item of deleted subvolume {} (BTRFS_IOC_TREE_SEARCH)",
                    path.display()
                ),
            )
        })?;
        if dropped {
            if committed_after_drop {
                let charged = read_number(&qgroup_dir.join("exclusive"))?.unwrap_or(0);
                return Err(io::Error::new(
                    ErrorKind::ResourceBusy,
                    format!(
                        "deleted subvolume {}, but the kernel keeps its quota group 0/{id} (EBUSY): it is \
                         still charged {charged} bytes (with simple quotas, for extents that other \
                         subvolumes share)",
                        path.display()
                    ),
                ));
            }
            // Let the frees of the drop be accounted, then try once more.
            kick()?;
            committed_after_drop = true;
            continue;
        }
        if start.elapsed() >= DELETE_QGROUP_WAIT {
            return Err(io::Error::new(
                ErrorKind::TimedOut,
                format!(
                    "deleted subvolume {}, but it is not dropped yet after {} s, and its quota group 0/{id} \
                     cannot go before (is something keeping a file in it open?)",
                    path.display(),
                    DELETE_QGROUP_WAIT.as_secs()
                ),
            ));
        }
        if last_kick.is_none_or(|at| at.elapsed() >= KICK_INTERVAL) {
            kick()?;
            last_kick = Some(Instant::now());
            continue;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Checks that `id` names a level-0 quota group (a subvolume id: 5, or from
/// 256 up to below 2^48). 0 would mean "the subvolume of the fd" to the
/// kernel.
fn check_qgroup_id(id: u64) -> io::Result<()> {
    if id == BTRFS_FS_TREE_OBJECTID || (BTRFS_FIRST_FREE_OBJECTID..1 << 48).contains(&id) {
        Ok(())
    } else {
        Err(io::Error::new(
            ErrorKind::InvalidInput,
            format!("{id} is not a subvolume id"),
        ))
    }
}

/// Limits the referenced bytes of quota group `0/<id>` to `bytes`
/// (`BTRFS_IOC_QGROUP_LIMIT` with `BTRFS_QGROUP_LIMIT_MAX_RFER`); `u64::MAX`
/// removes the limit. `path` is any directory or regular file on the
/// filesystem. A missing quota group (or quotas off) is an error of kind
/// [`ErrorKind::NotFound`].
pub fn set_limit(path: &Path, id: u64, bytes: u64) -> io::Result<()> {
    check_qgroup_id(id)?;
    let fd = open_on_btrfs(path)?;
    let args = QgroupLimitArgs {
        qgroupid: id,
        lim: QgroupLimit {
            flags: BTRFS_QGROUP_LIMIT_MAX_RFER,
            max_rfer: bytes,
            max_excl: 0,
            rsv_rfer: 0,
            rsv_excl: 0,
        },
    };
    // SAFETY: BTRFS_IOC_QGROUP_LIMIT reads a `struct
    // btrfs_ioctl_qgroup_limit_args`, which QgroupLimitArgs reproduces
    // (#[repr(C)], size checked in the tests).
    unsafe { ioctl(&fd, Setter::<BTRFS_IOC_QGROUP_LIMIT, QgroupLimitArgs>::new(args)) }.map_err(|e| {
        crate::context(
            e,
            format!(
                "limiting quota group 0/{id} on {} to {bytes} bytes (BTRFS_IOC_QGROUP_LIMIT)",
                path.display()
            ),
        )
    })
}

/// Reads a number from sysfs attribute `attr`; `None` if it is missing.
fn read_number(attr: &Path) -> io::Result<Option<u64>> {
    read_number_at(rustix::fs::CWD, attr, Path::new(""))
}

/// Reads a number from sysfs attribute `rel` under directory `dir` (shown as
/// `shown`); `None` if it is missing.
fn read_number_at(dir: impl AsFd, rel: &Path, shown: &Path) -> io::Result<Option<u64>> {
    let attr = || shown.join(rel);
    let fd = match openat(dir, rel, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(None),
        Err(e) => return Err(crate::context(e, format!("opening {}", attr().display()))),
    };
    // A sysfs number is one short line, returned by the first read.
    let mut buf = [0u8; 32];
    let n = rustix::io::read(&fd, &mut buf)
        .map_err(|e| crate::context(e, format!("reading {}", attr().display())))?;
    let text = String::from_utf8_lossy(&buf[..n]);
    text.trim_end().parse().map(Some).map_err(|_| {
        io::Error::new(
            ErrorKind::InvalidData,
            format!("{}: unexpected content {:?}", attr().display(), text.trim_end()),
        )
    })
}

/// The filesystem's `qgroups` sysfs directory, opened, and its path; `None`
/// when quotas are off (there is no such directory).
fn open_qgroups(fd: &OwnedFd, path: &Path) -> io::Result<Option<(OwnedFd, PathBuf)>> {
    let dir = sysfs_dir(fd, path)?.join("qgroups");
    match open(
        &dir,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(qfd) => Ok(Some((qfd, dir))),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(crate::context(e, format!("opening {}", dir.display()))),
    }
}

/// Quota group `0/<id>` from the opened `qgroups` sysfs directory.
fn qgroup_at(qgroups: &OwnedFd, shown: &Path, id: u64) -> io::Result<Option<Qgroup>> {
    check_qgroup_id(id)?;
    // Any attribute missing means the quota group was removed meanwhile.
    let read = |name: &str| read_number_at(qgroups, Path::new(&format!("0_{id}/{name}")), shown);
    let Some(referenced) = read("referenced")? else {
        return Ok(None);
    };
    let Some(exclusive) = read("exclusive")? else {
        return Ok(None);
    };
    let Some(max_referenced) = read("max_referenced")? else {
        return Ok(None);
    };
    let Some(max_exclusive) = read("max_exclusive")? else {
        return Ok(None);
    };
    let Some(flags) = read("limit_flags")? else {
        return Ok(None);
    };
    let limit = |bit: u64, max: u64| (flags & bit != 0 && max != u64::MAX).then_some(max);
    Ok(Some(Qgroup {
        referenced,
        exclusive,
        max_referenced: limit(BTRFS_QGROUP_LIMIT_MAX_RFER, max_referenced),
        max_exclusive: limit(BTRFS_QGROUP_LIMIT_MAX_EXCL, max_exclusive),
    }))
}

/// Quota group `0/<id>` of the filesystem holding `path`, from sysfs
/// `/sys/fs/btrfs/<fsid>/qgroups/0_<id>/`; `None` when there is no such
/// quota group (or quotas are off). O(1): reads a few attributes, never walks
/// anything.
///
/// A limit is there when its bit is set in the quota group's `limit_flags`
/// (the kernel prints an unset `max_referenced` as 0).
pub fn qgroup(path: &Path, id: u64) -> io::Result<Option<Qgroup>> {
    check_qgroup_id(id)?;
    let fd = open_on_btrfs(path)?;
    match open_qgroups(&fd, path)? {
        Some((qfd, shown)) => qgroup_at(&qfd, &shown, id),
        None => Ok(None),
    }
}

/// A quota group's limit on the bytes its subvolume references.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// The subvolume has no quota group (or quotas are off).
    NoQgroup,
    /// It has one, without that limit.
    Unlimited,
    Bytes(u64),
}

impl Limit {
    /// The limit of quota group `q`, as [`qgroup`] reads it.
    pub fn of(q: Option<&Qgroup>) -> Limit {
        q.map_or(Limit::NoQgroup, |q| {
            q.max_referenced.map_or(Limit::Unlimited, Limit::Bytes)
        })
    }
}

/// A subvolume as [`subvolumes`] finds it.
#[derive(Debug)]
pub struct Subvolume {
    /// The subvolume's id.
    pub id: u64,
    /// Its quota group's limit.
    pub limit: io::Result<Limit>,
    /// What its quota group references, when asked for and readable.
    pub referenced: Option<u64>,
}

/// For each of `names`, what [`subvolume_id`] of `dir/<name>` gives and the
/// limit [`qgroup`] shows for that id, for many volumes at once: `dir` is
/// opened once, and each name costs one `statx` relative to it (which gives
/// the subvolume's id, Linux 6.10+) and one `BTRFS_IOC_TREE_SEARCH` for its
/// quota group's limit item (needs `CAP_SYS_ADMIN`; without it, sysfs is
/// read). The kernel writes that item in the same call that sets the limit,
/// so it is never behind. With `referenced`, what each quota group references
/// is read too, from sysfs relative to one open of its `qgroups` directory.
/// A name that is not a plain component is an error of its own; a `dir` that
/// cannot be opened or is not on btrfs fails them all.
pub fn subvolumes(
    dir: &Path,
    names: &[&str],
    referenced: bool,
) -> io::Result<Vec<io::Result<Option<Subvolume>>>> {
    let fd = open_dir_on_btrfs(dir)?;
    let here = rustix::fs::statx(&fd, "", AtFlags::EMPTY_PATH, StatxFlags::MNT_ID)
        .map_err(|e| crate::context(e, format!("statx of {}", dir.display())))?;
    let qgroups = if referenced { open_qgroups(&fd, dir)? } else { None };
    // One search buffer for them all.
    let mut args = search_args();
    let mut one = |name: &str| -> io::Result<Option<Subvolume>> {
        if !crate::fs::is_single_component(name) {
            return Err(io::Error::new(
                ErrorKind::InvalidInput,
                format!("{name:?} is not a file name"),
            ));
        }
        let Some(id) = subvolume_id_at(&fd, &here, dir, name)? else {
            return Ok(None);
        };
        let limit = match limit_item(&fd, &mut args, id) {
            Ok(limit) => Ok(limit),
            // Without CAP_SYS_ADMIN, sysfs still tells.
            Err(Errno::PERM) => qgroup(dir, id).map(|q| Limit::of(q.as_ref())),
            Err(e) => Err(crate::context(
                e,
                format!(
                    "reading the limit of quota group 0/{id} on {} (BTRFS_IOC_TREE_SEARCH)",
                    dir.display()
                ),
            )),
        };
        let referenced = qgroups.as_ref().and_then(|(qfd, shown)| {
            read_number_at(qfd, Path::new(&format!("0_{id}/referenced")), shown)
                .ok()
                .flatten()
        });
        Ok(Some(Subvolume {
            id,
            limit,
            referenced,
        }))
    };
    Ok(names.iter().map(|name| one(name)).collect())
}

/// Quota group `0/<id>`'s limit, from its limit item in the quota tree.
fn limit_item(fd: &OwnedFd, args: &mut SearchArgs, id: u64) -> Result<Limit, Errno> {
    match search_first(
        fd,
        args,
        BTRFS_QUOTA_TREE_OBJECTID,
        0,
        BTRFS_QGROUP_LIMIT_KEY,
        id..=id,
    ) {
        Ok(()) => {}
        // No quota tree: quotas are off.
        Err(Errno::NOENT) => return Ok(Limit::NoQgroup),
        Err(e) => return Err(e),
    }
    if args.key.nr_items == 0 {
        return Ok(Limit::NoQgroup);
    }
    // The header (in the CPU's byte order), then the item as stored on disk,
    // little-endian: `struct btrfs_qgroup_limit_item` (flags, max_rfer,
    // max_excl, rsv_rfer, rsv_excl).
    let bytes = |at: usize, n: usize| &args.buf[at..at + n];
    let offset = u64::from_ne_bytes(bytes(16, 8).try_into().expect("8 bytes"));
    let kind = u32::from_ne_bytes(bytes(24, 4).try_into().expect("4 bytes"));
    let len = u32::from_ne_bytes(bytes(28, 4).try_into().expect("4 bytes")) as usize;
    if offset != id || kind != BTRFS_QGROUP_LIMIT_KEY || len < 16 {
        return Err(Errno::IO);
    }
    let le = |at: usize| u64::from_le_bytes(bytes(SEARCH_HEADER_BYTES + at, 8).try_into().expect("8 bytes"));
    let (flags, max_rfer) = (le(0), le(8));
    Ok(
        if flags & BTRFS_QGROUP_LIMIT_MAX_RFER != 0 && max_rfer != u64::MAX {
            Limit::Bytes(max_rfer)
        } else {
            Limit::Unlimited
        },
    )
}

/// [`subvolume_id`] of `dir/<name>`, `dir` open as `fd` with `statx` `here`:
/// one `statx` when it shows a directory on `dir`'s mount and gives the
/// subvolume, else as [`subvolume_id`] asks.
fn subvolume_id_at(fd: &OwnedFd, here: &Statx, dir: &Path, name: &str) -> io::Result<Option<u64>> {
    let want = StatxFlags::TYPE | StatxFlags::INO | StatxFlags::MNT_ID | STATX_SUBVOL;
    let st = match rustix::fs::statx(fd, name, AtFlags::SYMLINK_NOFOLLOW, want) {
        Ok(st) => st,
        Err(Errno::NOENT | Errno::NOTDIR) => return Ok(None),
        Err(e) => {
            return Err(crate::context(
                e,
                format!("statx of {}", dir.join(name).display()),
            ));
        }
    };
    if FileType::from_raw_mode(st.stx_mode.into()) != FileType::Directory {
        return Ok(None);
    }
    let same_mount =
        st.stx_mask & here.stx_mask & StatxFlags::MNT_ID.bits() != 0 && st.stx_mnt_id == here.stx_mnt_id;
    if same_mount && st.stx_mask & STATX_SUBVOL.bits() != 0 {
        return Ok((st.stx_ino == BTRFS_FIRST_FREE_OBJECTID).then_some(st.stx_subvol));
    }
    // Another filesystem mounted there, or a kernel before 6.10.
    subvolume_id(&dir.join(name))
}

/// Ids of every level-0 quota group of the filesystem holding `path` (from
/// sysfs), sorted; empty with quotas off.
pub fn qgroup_ids(path: &Path) -> io::Result<Vec<u64>> {
    let fd = open_on_btrfs(path)?;
    let dir = sysfs_dir(&fd, path)?.join("qgroups");
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(crate::context(e, format!("listing {}", dir.display()))),
    };
    let mut ids = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| crate::context(e, format!("listing {}", dir.display())))?;
        if let Some(id) = level0_id(&entry.file_name()) {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

/// The id of a level-0 quota group's sysfs directory name, `0_<id>`.
fn level0_id(name: &OsStr) -> Option<u64> {
    std::str::from_utf8(name.as_bytes())
        .ok()?
        .strip_prefix("0_")?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::offset_of;

    #[test]
    fn structs_match_linux_btrfs_h() {
        assert_eq!(size_of::<VolArgs>(), 4096);
        assert_eq!(size_of::<InoLookupArgs>(), 4096);
        assert_eq!(size_of::<FsInfoArgs>(), 1024);
        assert_eq!(size_of::<QuotaCtlArgs>(), 16);
        assert_eq!(size_of::<QuotaRescanArgs>(), 64);
        assert_eq!(size_of::<QgroupLimit>(), 40);
        assert_eq!(size_of::<QgroupLimitArgs>(), 48);
        assert_eq!(size_of::<QgroupCreateArgs>(), 16);
        assert_eq!(size_of::<SearchKey>(), 104);
        assert_eq!(size_of::<SearchArgs>(), 4096);
        assert_eq!(offset_of!(VolArgs, name), 8);
        assert_eq!(offset_of!(InoLookupArgs, name), 16);
        assert_eq!(offset_of!(FsInfoArgs, fsid), 16);
        assert_eq!(offset_of!(FsInfoArgs, flags), 48);
        assert_eq!(offset_of!(FsInfoArgs, metadata_uuid), 64);
        assert_eq!(offset_of!(FsInfoArgs, reserved), 80);
        assert_eq!(offset_of!(QgroupLimitArgs, lim), 8);
    }

    #[test]
    fn ioctl_numbers_match_linux_btrfs_h() {
        // The values of the header's macros on x86_64 and arm64 (printed by a
        // C program including <linux/btrfs.h>).
        assert_eq!(BTRFS_IOC_SYNC, 0x9408);
        assert_eq!(BTRFS_IOC_SUBVOL_CREATE, 0x5000_940e);
        assert_eq!(BTRFS_IOC_SNAP_DESTROY, 0x5000_940f);
        assert_eq!(BTRFS_IOC_TREE_SEARCH, 0xd000_9411);
        assert_eq!(BTRFS_IOC_INO_LOOKUP, 0xd000_9412);
        assert_eq!(BTRFS_IOC_FS_INFO, 0x8400_941f);
        assert_eq!(BTRFS_IOC_QUOTA_CTL, 0xc010_9428);
        assert_eq!(BTRFS_IOC_QGROUP_CREATE, 0x4010_942a);
        assert_eq!(BTRFS_IOC_QGROUP_LIMIT, 0x8030_942b);
        assert_eq!(BTRFS_IOC_QUOTA_RESCAN_STATUS, 0x8040_942d);
    }

    #[test]
    fn fsid_is_formatted_like_uuid() {
        let fsid = [
            0x26, 0xf6, 0xf1, 0xdc, 0x48, 0xb8, 0x49, 0x35, 0xad, 0xa5, 0xc3, 0x7e, 0x0a, 0x2a, 0x79, 0xa7,
        ];
        assert_eq!(format_fsid(&fsid), "26f6f1dc-48b8-4935-ada5-c37e0a2a79a7");
        assert_eq!(format_fsid(&[0; 16]), "00000000-0000-0000-0000-000000000000");
        assert_eq!(format_fsid(&[0xff; 16]), "ffffffff-ffff-ffff-ffff-ffffffffffff");
    }

    #[test]
    fn names_must_be_one_component() {
        for good in ["a", "vol-1", "x.y", "..a", &"n".repeat(255)] {
            check_name(good).unwrap();
        }
        for bad in ["", ".", "..", "a/b", "/a", "a/", "a\0b", &"n".repeat(256)] {
            let err = check_name(bad).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidInput, "{bad:?}");
        }
        let err = create_subvolume(Path::new("/nonexistent"), "../x").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        let err = delete_subvolume(Path::new("/nonexistent"), "a/b").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
    }

    #[test]
    fn qgroup_ids_must_be_subvolume_ids() {
        for good in [5, 256, 257, (1 << 48) - 1] {
            check_qgroup_id(good).unwrap();
        }
        for bad in [0, 1, 4, 6, 255, 1 << 48, u64::MAX] {
            assert_eq!(check_qgroup_id(bad).unwrap_err().kind(), ErrorKind::InvalidInput);
        }
    }

    #[test]
    fn level0_directory_names() {
        assert_eq!(level0_id(OsStr::new("0_256")), Some(256));
        assert_eq!(level0_id(OsStr::new("0_5")), Some(5));
        assert_eq!(level0_id(OsStr::new("1_256")), None);
        assert_eq!(level0_id(OsStr::new("mode")), None);
        assert_eq!(level0_id(OsStr::new("0_")), None);
    }

    #[test]
    fn not_btrfs_is_told() {
        let dir = tempfile::tempdir().unwrap();
        if is_btrfs(dir.path()).unwrap() {
            return;
        }
        assert_eq!(subvolume_id(dir.path()).unwrap(), None);
        let err = fsid(dir.path()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
        let err = create_subvolume(dir.path(), "x").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
        assert!(err.to_string().contains("not on btrfs"), "{err}");
    }
}

//! Block devices: their size and logical block size, what identifies one ([`identity`]) and whether anything
//! holds it ([`in_use`]), and the destructive whole-device operations that handing out whole disks needs:
//! discarding ([`discard`]), zeroing ([`zero`]) and wiping signatures ([`wipe_signatures`]).
//!
//! All but the two size queries take the path of a device node (`/dev/sdb`, a `/dev/disk/by-id` link) and refuse
//! anything that is not a block device with an error of kind [`ErrorKind::InvalidInput`] naming it, checked
//! before it is opened (opening a FIFO blocks; opening some character devices does things). They open it
//! `O_CLOEXEC` and look it up in sysfs, `/sys/dev/block/<major>:<minor>`, by the device number of the node they
//! opened (`st_rdev`).
//!
//! The destructive ones open the device `O_RDWR | O_EXCL`. On a block device `O_EXCL` is an exclusive claim,
//! which the kernel refuses with `EBUSY` while the device is mounted (in any mount namespace), used as swap,
//! held by device mapper or md, claimed through one of its partitions, or open `O_EXCL` elsewhere; while it is
//! held nobody can mount or claim the device. Without it the kernel lets a mounted device be opened for writing
//! and written to (`CONFIG_BLK_DEV_WRITE_MOUNTED`, the default), and only refuses `BLKDISCARD` and `BLKZEROOUT`
//! on it (`EBUSY`). They refuse, with `EBUSY` as well, whatever [`in_use`] reports (a mount by device number,
//! holders, partitions: the error names it), also once they hold the claim. A refused claim that nothing in
//! the mount table or sysfs explains is tried again for a quarter of a second, as a forked child's copy of
//! someone's exclusive descriptor goes away when it execs. On a read-only device they fail with `EPERM`.

use std::{
    fs,
    io::{self, ErrorKind},
    os::fd::{AsRawFd, OwnedFd},
    path::{Path, PathBuf},
    time::Duration,
};

use rustix::{
    fs::{
        Dev, FileType, Mode, OFlags, Stat, fcntl_getfl, fcntl_setfl, fstat, fsync, ioctl_blksszget, major,
        minor, open,
    },
    io::{Errno, pwrite},
    ioctl::{Getter, Opcode, Setter, ioctl, opcode},
};

use crate::mountinfo::MountTable;

/// `BLKGETSIZE64` of linux/fs.h: `_IOR(0x12, 114, size_t)`. The `size_t` is a
/// historical mistake kept for compatibility; the kernel writes a `u64`.
const BLKGETSIZE64: Opcode = opcode::read::<usize>(0x12, 114);

/// `BLKDISCARD` of linux/fs.h: `_IO(0x12, 119)`, though it reads a `u64[2]`: start and length in bytes.
const BLKDISCARD: Opcode = opcode::none(0x12, 119);

/// `BLKZEROOUT` of linux/fs.h: `_IO(0x12, 127)`, with the same argument as `BLKDISCARD`.
const BLKZEROOUT: Opcode = opcode::none(0x12, 127);

/// The major number of loop devices (`LOOP_MAJOR` of linux/major.h). Their partitions have other majors.
const LOOP_MAJOR: u32 = 7;

/// How much of the device one `BLKDISCARD` or `BLKZEROOUT` covers; progress is reported after each.
const CHUNK: u64 = 1 << 30;

/// How much [`wipe_signatures`] zeroes at each end of the device.
const WIPE_BYTES: u64 = 1 << 20;

/// How much one write of zeros covers when [`zero`] writes them itself.
const WRITE_BYTES: usize = 1 << 20;

/// The memory alignment of that write's buffer for `O_DIRECT`: a page, more than any device asks for.
const DIRECT_ALIGN: usize = 4096;

/// How long an exclusive open that the kernel refuses while nothing visible holds the device is tried again.
const EXCLUSIVE_WAIT: Duration = Duration::from_millis(250);

/// How many mount points one reason of [`in_use`] names.
const MOUNTS_NAMED: usize = 4;

fn open_device(device: &Path) -> io::Result<OwnedFd> {
    open(device, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| crate::context(e, format!("opening {}", device.display())))
}

/// Size of the block device `device` in bytes (`BLKGETSIZE64`).
///
/// Anything but a block device is an error (`ENOTTY`).
pub fn size_bytes(device: &Path) -> io::Result<u64> {
    let fd = open_device(device)?;
    size_of(&fd, device)
}

/// `BLKGETSIZE64` of the open device `fd`, which is `device`.
fn size_of(fd: &OwnedFd, device: &Path) -> io::Result<u64> {
    // SAFETY: BLKGETSIZE64 writes one u64 through its argument and nothing
    // else; Getter passes a pointer to a u64 it owns.
    unsafe { ioctl(fd, Getter::<BLKGETSIZE64, u64>::new()) }.map_err(|e| {
        crate::context(
            e,
            format!("getting the size of {} (BLKGETSIZE64)", device.display()),
        )
    })
}

/// Logical block size of the block device `device` in bytes (`BLKSSZGET`):
/// the smallest unit it can address.
pub fn logical_block_size(device: &Path) -> io::Result<u32> {
    let fd = open_device(device)?;
    ioctl_blksszget(&fd).map_err(|e| {
        crate::context(
            e,
            format!(
                "getting the logical block size of {} (BLKSSZGET)",
                device.display()
            ),
        )
    })
}

/// Like [`crate::context`], but of kind `kind` rather than the source's.
fn context_as(kind: ErrorKind, source: impl Into<io::Error>, what: impl Into<String>) -> io::Error {
    io::Error::new(
        kind,
        crate::Context {
            what: what.into(),
            source: source.into(),
        },
    )
}

/// A block device node opened by [`open_block`].
struct Device<'a> {
    /// The path it was opened by, for messages.
    path: &'a Path,
    fd: OwnedFd,
    /// Its device number, `st_rdev` of the opened node.
    rdev: Dev,
}

impl Device<'_> {
    fn major(&self) -> u32 {
        major(self.rdev)
    }

    fn minor(&self) -> u32 {
        minor(self.rdev)
    }

    fn sysfs(&self) -> PathBuf {
        sysfs_dir(self.rdev)
    }

    fn size(&self) -> io::Result<u64> {
        size_of(&self.fd, self.path)
    }

    fn fsync(&self) -> io::Result<()> {
        fsync(&self.fd).map_err(|e| crate::context(e, format!("flushing {}", self.path.display())))
    }
}

/// The sysfs directory of device `rdev`, `/sys/dev/block/<major>:<minor>` (a link into `/sys/devices`).
fn sysfs_dir(rdev: Dev) -> PathBuf {
    PathBuf::from(format!("/sys/dev/block/{}:{}", major(rdev), minor(rdev)))
}

/// The error for `device`, which is of type `file_type` and not a block device.
fn not_a_block_device(device: &Path, file_type: FileType) -> io::Error {
    let what = match file_type {
        FileType::RegularFile => "a regular file",
        FileType::Directory => "a directory",
        FileType::Symlink => "a symbolic link",
        FileType::Fifo => "a FIFO",
        FileType::Socket => "a socket",
        FileType::CharacterDevice => "a character device",
        FileType::BlockDevice | FileType::Unknown => "of an unknown file type",
    };
    context_as(
        ErrorKind::InvalidInput,
        Errno::NOTBLK,
        format!("{} is not a block device but {what}", device.display()),
    )
}

/// The `stat` of `device`, which must be a block device; anything else is refused, before it is opened, with an
/// error of kind [`ErrorKind::InvalidInput`].
fn stat_block(device: &Path) -> io::Result<Stat> {
    let st =
        rustix::fs::stat(device).map_err(|e| crate::context(e, format!("opening {}", device.display())))?;
    check_block(device, &st)?;
    Ok(st)
}

fn check_block(device: &Path, st: &Stat) -> io::Result<()> {
    match FileType::from_raw_mode(st.st_mode) {
        FileType::BlockDevice => Ok(()),
        other => Err(not_a_block_device(device, other)),
    }
}

/// `device`, opened as `fd`, checked to still be the block device that was `before`.
fn opened<'a>(device: &'a Path, fd: OwnedFd, before: &Stat) -> io::Result<Device<'a>> {
    let st = fstat(&fd).map_err(|e| crate::context(e, format!("stat of {}", device.display())))?;
    check_block(device, &st)?;
    if st.st_rdev != before.st_rdev {
        return Err(io::Error::new(
            ErrorKind::InvalidInput,
            format!(
                "{} was replaced by another device while it was opened",
                device.display()
            ),
        ));
    }
    Ok(Device {
        path: device,
        fd,
        rdev: st.st_rdev,
    })
}

/// Opens the block device `device` with `flags` and `O_CLOEXEC` (see [`stat_block`]).
fn open_block(device: &Path, flags: OFlags) -> io::Result<Device<'_>> {
    let before = stat_block(device)?;
    let fd = open(device, flags | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| crate::context(e, format!("opening {}", device.display())))?;
    opened(device, fd, &before)
}

/// What an exclusive open found.
enum Exclusive {
    Opened(OwnedFd),
    /// Refused (`EBUSY`), for these reasons (see [`users`]), or [`HELD_UNSEEN`] if none shows.
    Busy(Vec<String>),
}

/// The reason for a device that the kernel will not let be opened exclusively while nothing that [`users`]
/// looks at holds it.
const HELD_UNSEEN: &str = "held exclusively by something that the mount table and sysfs do not show (a mount in \
                           another mount namespace, a btrfs filesystem, swap, or another program's exclusive open)";

/// Opens `path`, the device node of device `rdev`, with `flags`, `O_EXCL` and `O_CLOEXEC`.
///
/// A refusal (`EBUSY`) that nothing [`users`] finds explains is tried again, for up to [`EXCLUSIVE_WAIT`]: a
/// process that forked while it had the device open `O_EXCL` holds the claim until it execs or exits, and so
/// does this one's own child (a `blkid` or `mkfs` started by another thread) for the moment between its fork
/// and exec, past the close of the descriptor here.
fn open_exclusive(path: &Path, flags: OFlags, rdev: Dev) -> io::Result<Exclusive> {
    let mut pause = Duration::from_millis(1);
    let mut waited = Duration::ZERO;
    loop {
        match open(path, flags | OFlags::EXCL | OFlags::CLOEXEC, Mode::empty()) {
            Ok(fd) => return Ok(Exclusive::Opened(fd)),
            Err(Errno::BUSY) => {
                let reasons = users(rdev)?;
                if !reasons.is_empty() {
                    return Ok(Exclusive::Busy(reasons));
                }
                if waited >= EXCLUSIVE_WAIT {
                    return Ok(Exclusive::Busy(vec![HELD_UNSEEN.to_owned()]));
                }
                std::thread::sleep(pause);
                waited += pause;
                pause = (pause * 2).min(Duration::from_millis(20));
            }
            Err(e) => {
                return Err(crate::context(
                    e,
                    format!("opening {} exclusively (O_EXCL)", path.display()),
                ));
            }
        }
    }
}

/// The content of the sysfs (or udev) file `path` without surrounding white space; `None` if it does not exist
/// or the device gives it no value (`EINVAL`, `ENODEV`: a SCSI device without identification data, say).
fn read_attr(path: &Path) -> io::Result<Option<String>> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(String::from_utf8_lossy(&bytes).trim().to_owned())),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENODEV)) => Ok(None),
        Err(e) => Err(crate::context(e, format!("reading {}", path.display()))),
    }
}

/// A `<major>:<minor>` device number, as sysfs's `dev` files give it.
fn parse_dev(text: &str) -> Option<(u32, u32)> {
    let (major, minor) = text.trim().split_once(':')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// The value of property `key` in udev's database entry `text` (`E:<key>=<value>` lines).
fn udev_property<'t>(text: &'t str, key: &str) -> Option<&'t str> {
    text.lines()
        .filter_map(|line| line.strip_prefix("E:")?.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v.trim())
}

/// What identifies the block device `device` across reboots and renames, best first; `None` if nothing does.
///
/// The first non-empty one of these, looked up by the opened node's device number (`st_rdev`) in its sysfs
/// directory `/sys/dev/block/<major>:<minor>`:
///
/// 1. the WWN: `wwid` (NVMe namespaces have it there), `device/wwid` (SCSI and SATA disks, from their
///    identification data) or `device/wwn`;
/// 2. the serial: `serial` (virtio disks), `device/serial` (NVMe controllers, MMC cards), or else the
///    `ID_SERIAL` that udev recorded in `/run/udev/data/b<major>:<minor>`, when that file exists;
/// 3. for a loop device bound to a file, `loop:<dev>:<ino>`: the device and inode numbers of its backing file
///    in decimal, as `stat` gives them (`st_dev`, `st_ino`), from `LOOP_GET_STATUS64` (the struct
///    [`crate::loopdev`] reads, of which only these two fields are read here). It stays the same while the file
///    does, through detaching and attaching again; another file, also one that replaced this one at the same
///    path, has another inode number. It is no more stable than the file's `st_dev`, which changes if the
///    filesystem holding the file is mounted from another device number.
///
/// Values are as the kernel or udev gives them, with the white space around them trimmed. An unbound loop device
/// and a device with none of these give `None`.
///
/// A partition has its disk's identity followed by `-part<N>`, `N` its number, as udev names the links in
/// `/dev/disk/by-id` (udev's data for a partition repeats its disk's `ID_SERIAL`).
pub fn identity(device: &Path) -> io::Result<Option<String>> {
    let dev = open_block(device, OFlags::RDONLY)?;
    let sys = dev.sysfs();
    let Some(number) = read_attr(&sys.join("partition"))? else {
        return disk_identity(&dev, &sys, dev.major(), dev.minor());
    };
    let disk = sys.join("..");
    let disk_dev = disk.join("dev");
    let Some((major, minor)) = read_attr(&disk_dev)?.as_deref().and_then(parse_dev) else {
        return Err(io::Error::new(
            ErrorKind::InvalidData,
            format!(
                "{} is partition {number} but {} does not give its disk's device number",
                device.display(),
                disk_dev.display()
            ),
        ));
    };
    Ok(disk_identity(&dev, &disk, major, minor)?.map(|id| format!("{id}-part{number}")))
}

/// The identity of the disk `major:minor` with sysfs directory `sys`, opened as `dev` (the disk or one of its
/// partitions); see [`identity`].
fn disk_identity(dev: &Device, sys: &Path, major: u32, minor: u32) -> io::Result<Option<String>> {
    for attr in ["wwid", "device/wwid", "device/wwn", "serial", "device/serial"] {
        if let Some(value) = read_attr(&sys.join(attr))?.filter(|v| !v.is_empty()) {
            return Ok(Some(value));
        }
    }
    let udev = PathBuf::from(format!("/run/udev/data/b{major}:{minor}"));
    if let Some(text) = read_attr(&udev)?
        && let Some(serial) = udev_property(&text, "ID_SERIAL").filter(|v| !v.is_empty())
    {
        return Ok(Some(serial.to_owned()));
    }
    if major != LOOP_MAJOR {
        return Ok(None);
    }
    match crate::loopdev::status(&dev.fd) {
        Ok(info) => Ok(Some(format!("loop:{}:{}", info.lo_device, info.lo_inode))),
        // Not bound to a file.
        Err(Errno::NXIO) => Ok(None),
        Err(e) => Err(crate::context(
            e,
            format!(
                "getting the backing file of {} (LOOP_GET_STATUS64)",
                dev.path.display()
            ),
        )),
    }
}

/// A partition of a disk, from sysfs.
struct Partition {
    /// The kernel's name for it, such as `sda1` or `loop0p1`.
    name: String,
    major: u32,
    minor: u32,
    /// Its sysfs directory.
    sys: PathBuf,
}

/// The partitions of the disk with sysfs directory `sys`: its subdirectories with a `partition` attribute.
fn partitions(sys: &Path) -> io::Result<Vec<Partition>> {
    let entries = fs::read_dir(sys).map_err(|e| crate::context(e, format!("listing {}", sys.display())))?;
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| crate::context(e, format!("listing {}", sys.display())))?;
        let path = entry.path();
        if !path.join("partition").exists() {
            continue;
        }
        // A partition removed since the listing has no device number any more.
        let Some((major, minor)) = read_attr(&path.join("dev"))?.as_deref().and_then(parse_dev) else {
            continue;
        };
        found.push(Partition {
            name: entry.file_name().to_string_lossy().into_owned(),
            major,
            minor,
            sys: path,
        });
    }
    found.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(found)
}

/// The names in the sysfs directory `sys/holders`: the devices (device mapper, md) built on the device.
fn holders(sys: &Path) -> io::Result<Vec<String>> {
    let dir = sys.join("holders");
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(crate::context(e, format!("listing {}", dir.display()))),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| crate::context(e, format!("listing {}", dir.display())))?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(names)
}

/// Where the mount table `table` mounts the device `major:minor`, for a message.
fn mount_points(table: &MountTable, major: u32, minor: u32) -> Option<String> {
    let mut points: Vec<String> = table
        .mounts()
        .iter()
        .filter(|m| (m.major, m.minor) == (major, minor))
        .map(|m| m.mount_point.display().to_string())
        .collect();
    points.dedup();
    if points.is_empty() {
        return None;
    }
    let more = points.len().saturating_sub(MOUNTS_NAMED);
    points.truncate(MOUNTS_NAMED);
    let mut text = points.join(", ");
    if more > 0 {
        text.push_str(&format!(" and {more} more"));
    }
    Some(text)
}

/// What holds the device `rdev` that sysfs and the calling thread's mount table show: one phrase each for its mounts, its
/// partitions' mounts, its holders, its partitions' holders, and its partitions. Empty if nothing.
fn users(rdev: Dev) -> io::Result<Vec<String>> {
    let sys = sysfs_dir(rdev);
    let parts = partitions(&sys)?;
    let table = MountTable::read_self()?;
    let mut reasons = Vec::new();
    if let Some(points) = mount_points(&table, major(rdev), minor(rdev)) {
        reasons.push(format!("mounted at {points}"));
    }
    for part in &parts {
        if let Some(points) = mount_points(&table, part.major, part.minor) {
            reasons.push(format!("partition {} is mounted at {points}", part.name));
        }
    }
    let held_by = holders(&sys)?;
    if !held_by.is_empty() {
        reasons.push(format!("held by {}", held_by.join(", ")));
    }
    for part in &parts {
        let held_by = holders(&part.sys)?;
        if !held_by.is_empty() {
            reasons.push(format!(
                "partition {} is held by {}",
                part.name,
                held_by.join(", ")
            ));
        }
    }
    if !parts.is_empty() {
        let names: Vec<&str> = parts.iter().map(|p| p.name.as_str()).collect();
        reasons.push(format!("has partitions {}", names.join(", ")));
    }
    Ok(reasons)
}

/// Whether anything holds `device`, and if so what: a mount of it or of one of its partitions (by device number),
/// holders in sysfs (device mapper, md), or partitions present.
///
/// The reason names everything found, `; `-separated: `mounted at /mnt/a`, `partition sdb1 is mounted at
/// /mnt/b`, `held by dm-0`, `partition sdb2 is held by md0`, `has partitions sdb1, sdb2`. Mounts are those of
/// the calling thread's mount table (`/proc/thread-self/mountinfo`, [`MountTable::read_self`]); partitions are
/// the subdirectories of its sysfs directory that have a `partition` attribute, their holders in their own
/// `holders`.
///
/// When none of these shows anything, the device is briefly opened `O_EXCL`: if the kernel keeps refusing that
/// for a quarter of a second, the reason says that the device is held exclusively by something not shown, such
/// as a mount in another mount namespace, a filesystem that the mount table shows under another device number
/// (btrfs), swap, or another program's exclusive open (`mkfs`). That brief claim can make a mount tried at the
/// same moment fail with `EBUSY`.
pub fn in_use(device: &Path) -> io::Result<Option<String>> {
    let dev = open_block(device, OFlags::RDONLY)?;
    let reasons = users(dev.rdev)?;
    if !reasons.is_empty() {
        return Ok(Some(reasons.join("; ")));
    }
    // Reopened through our descriptor, so it is the same device whatever happened to the path.
    let reopen = PathBuf::from(format!("/proc/self/fd/{}", dev.fd.as_raw_fd()));
    match open_exclusive(&reopen, OFlags::RDONLY, dev.rdev)? {
        Exclusive::Opened(_) => Ok(None),
        Exclusive::Busy(reasons) => Ok(Some(reasons.join("; "))),
    }
}

/// What holds `device` that the mount table and sysfs show, as [`in_use`] reports it, but without its brief
/// exclusive open: safe while another thread may be mounting or formatting the device, so it is what periodic
/// discovery asks. `None` if nothing shows.
pub fn visible_users(device: &Path) -> io::Result<Option<String>> {
    let dev = open_block(device, OFlags::RDONLY)?;
    let reasons = users(dev.rdev)?;
    Ok((!reasons.is_empty()).then(|| reasons.join("; ")))
}

/// How many windows [`first_nonzero_sampled`] reads between the device's first and last MiB.
const SAMPLE_WINDOWS: u64 = 64;
/// The size of each of those windows.
const SAMPLE_BYTES: u64 = 64 << 10;

/// The offset of the first byte that is not zero in a sample of `device`: its first and last MiB and
/// [`SAMPLE_WINDOWS`] windows of 64 KiB spread evenly between them; `None` when the sample is all zeros.
///
/// A check that discarded blocks read back as zeros on this device, not a proof that all of it does. Reads go
/// through the page cache, which `BLKDISCARD` and `BLKZEROOUT` drop for the ranges they cover.
pub fn first_nonzero_sampled(device: &Path) -> io::Result<Option<u64>> {
    let dev = open_block(device, OFlags::RDONLY)?;
    let total = dev.size()?;
    let mut ranges = vec![(0, total.min(WIPE_BYTES))];
    let inner_start = WIPE_BYTES.min(total);
    let inner_end = total.saturating_sub(WIPE_BYTES).max(inner_start);
    let span = inner_end - inner_start;
    if span > 0 {
        for i in 0..SAMPLE_WINDOWS {
            let at = inner_start + span / SAMPLE_WINDOWS * i;
            ranges.push((at, (at + SAMPLE_BYTES).min(inner_end)));
        }
    }
    ranges.push((inner_end, total));
    let mut buf = vec![0u8; WIPE_BYTES as usize];
    for (start, end) in ranges {
        let mut at = start;
        while at < end {
            let want = usize::try_from(end - at).map_or(buf.len(), |n| n.min(buf.len()));
            let n = match rustix::io::pread(&dev.fd, &mut buf[..want], at) {
                Ok(0) => break,
                Ok(n) => n,
                Err(Errno::INTR) => continue,
                Err(e) => {
                    return Err(crate::context(
                        e,
                        format!("reading {} at byte {at}", device.display()),
                    ));
                }
            };
            if let Some(i) = buf[..n].iter().position(|b| *b != 0) {
                return Ok(Some(at + i as u64));
            }
            at += n as u64;
        }
    }
    Ok(None)
}

/// Opens `device` for `doing` (as in "discarding") something destructive: `O_RDWR | O_EXCL` (see
/// [`open_exclusive`]), and refuses it with `EBUSY` if the kernel does, or if [`in_use`] reports anything.
fn open_for_writing<'a>(device: &'a Path, doing: &str) -> io::Result<Device<'a>> {
    let busy = |reasons: Vec<String>| {
        crate::context(
            Errno::BUSY,
            format!(
                "not {doing} {}, which is in use: {}",
                device.display(),
                reasons.join("; ")
            ),
        )
    };
    let before = stat_block(device)?;
    let fd = match open_exclusive(device, OFlags::RDWR, before.st_rdev)? {
        Exclusive::Opened(fd) => fd,
        Exclusive::Busy(reasons) => return Err(busy(reasons)),
    };
    let dev = opened(device, fd, &before)?;
    // Partitions and holders that do not claim it (no partition is open), and what changed meanwhile.
    let reasons = users(dev.rdev)?;
    if !reasons.is_empty() {
        return Err(busy(reasons));
    }
    Ok(dev)
}

/// Runs the range ioctl `OPCODE` (`BLKDISCARD` or `BLKZEROOUT`) over bytes `start..start + len` of `dev`.
fn range_ioctl<const OPCODE: Opcode>(dev: &Device, start: u64, len: u64) -> Result<(), Errno> {
    // SAFETY: BLKDISCARD and BLKZEROOUT read a `uint64_t[2]` (start and length in bytes) through their argument
    // and write no user memory; Setter passes a pointer to the array it owns.
    unsafe { ioctl(&dev.fd, Setter::<OPCODE, [u64; 2]>::new([start, len])) }
}

/// Discards the whole device (`BLKDISCARD`), 1 GiB at a time, calling `progress(done_bytes, total_bytes)` after
/// each.
///
/// A device without discard support (`EOPNOTSUPP`) gives an error of kind [`ErrorKind::Unsupported`] (its
/// errno still reachable with [`crate::os_error`]), so that callers can fall back to [`zero`]. The kernel drops
/// its cached pages of each range first. What discarded blocks read back as is up to the device (see
/// [`discard_zeroes`]); on a loop device the backing file gets holes, which read back as zeros.
///
/// Refuses, with `EBUSY`, a device that is claimed (mounted, …) or that [`in_use`] reports (see the module's
/// documentation); a read-only device fails with `EPERM`.
pub fn discard(device: &Path, progress: &mut dyn FnMut(u64, u64)) -> io::Result<()> {
    let dev = open_for_writing(device, "discarding")?;
    let total = dev.size()?;
    let mut done = 0;
    while done < total {
        let len = (total - done).min(CHUNK);
        match range_ioctl::<BLKDISCARD>(&dev, done, len) {
            Ok(()) => {}
            Err(e @ Errno::OPNOTSUPP) => {
                return Err(context_as(
                    ErrorKind::Unsupported,
                    e,
                    format!(
                        "discarding {}: the device does not support discard",
                        device.display()
                    ),
                ));
            }
            Err(e) => {
                return Err(crate::context(
                    e,
                    format!(
                        "discarding bytes {done}..{} of {} (BLKDISCARD)",
                        done + len,
                        device.display()
                    ),
                ));
            }
        }
        done += len;
        progress(done, total);
    }
    Ok(())
}

/// Whether the device supports both discard and offloaded write-zeroes (sysfs `queue/discard_max_bytes` and
/// `queue/write_zeroes_max_bytes` both above 0; a partition's are its disk's): the best sign there is that
/// discarded blocks read back as zeros, and the sign that [`zero`] is cheap.
///
/// A sign, not a promise: Linux no longer tells whether discarded blocks read back as zeros
/// (`queue/discard_zeroes_data` has read 0 for every device since 4.12). On a loop device over a file both
/// discard and write-zeroes are hole punching and zeroing ranges of the file, and read back as zeros; on real
/// hardware what a discarded block reads back as stays the device's choice. So where the data must read back as
/// zeros, use [`zero`], which `true` here says the device does itself, without zeros being sent to it.
pub fn discard_zeroes(device: &Path) -> io::Result<bool> {
    let dev = open_block(device, OFlags::RDONLY)?;
    let mut sys = dev.sysfs();
    if sys.join("partition").exists() {
        sys.push("..");
    }
    let queue_number = |attr: &str| -> io::Result<u64> {
        let path = sys.join("queue").join(attr);
        let text = read_attr(&path)?.ok_or_else(|| {
            io::Error::new(ErrorKind::NotFound, format!("{} does not exist", path.display()))
        })?;
        text.parse().map_err(|_| {
            io::Error::new(
                ErrorKind::InvalidData,
                format!("{}: unexpected content {text:?}", path.display()),
            )
        })
    };
    Ok(queue_number("discard_max_bytes")? > 0 && queue_number("write_zeroes_max_bytes")? > 0)
}

/// Zeroes the whole device (`BLKZEROOUT`), 1 GiB at a time, calling `progress(done_bytes, total_bytes)` after
/// each, as [`discard`] does.
///
/// `BLKZEROOUT` never deallocates: the kernel has the device write zeros, with its write-zeroes command where it
/// has one, else writes zero pages itself, so it works on every device a current kernel knows. Only if the
/// ioctl fails with `EOPNOTSUPP` or `ENOTTY` are the zeros written here, 1 MiB at a time with `O_DIRECT`. The
/// device's cache is flushed at the end (`fsync`). Refused like [`discard`].
pub fn zero(device: &Path, progress: &mut dyn FnMut(u64, u64)) -> io::Result<()> {
    let dev = open_for_writing(device, "zeroing")?;
    let total = dev.size()?;
    let mut done = 0;
    while done < total {
        let len = (total - done).min(CHUNK);
        match range_ioctl::<BLKZEROOUT>(&dev, done, len) {
            Ok(()) => {
                done += len;
                progress(done, total);
            }
            Err(Errno::OPNOTSUPP | Errno::NOTTY) => {
                zero_by_writing(&dev, done, total, progress)?;
                break;
            }
            Err(e) => {
                return Err(crate::context(
                    e,
                    format!(
                        "zeroing bytes {done}..{} of {} (BLKZEROOUT)",
                        done + len,
                        device.display()
                    ),
                ));
            }
        }
    }
    dev.fsync()
}

/// Zeroes bytes `from..total` of `dev` by writing zeros with `O_DIRECT`, calling `progress` after each 1 GiB.
fn zero_by_writing(
    dev: &Device,
    from: u64,
    total: u64,
    progress: &mut dyn FnMut(u64, u64),
) -> io::Result<()> {
    let flags = fcntl_getfl(&dev.fd)
        .map_err(|e| crate::context(e, format!("getting the file flags of {}", dev.path.display())))?;
    fcntl_setfl(&dev.fd, flags | OFlags::DIRECT)
        .map_err(|e| crate::context(e, format!("turning on direct I/O to {}", dev.path.display())))?;
    let buf = vec![0u8; WRITE_BYTES + DIRECT_ALIGN];
    let skip = buf.as_ptr().addr().wrapping_neg() % DIRECT_ALIGN;
    let zeros = &buf[skip..skip + WRITE_BYTES];
    let mut done = from;
    while done < total {
        let end = (done + CHUNK).min(total);
        write_zeros(dev, zeros, done, end)?;
        done = end;
        progress(done, total);
    }
    Ok(())
}

/// Writes zeros over bytes `start..end` of `dev` from `zeros` (all zero), a piece of up to its length at a time.
fn write_zeros(dev: &Device, zeros: &[u8], start: u64, end: u64) -> io::Result<()> {
    let mut at = start;
    while at < end {
        let n = usize::try_from(end - at).map_or(zeros.len(), |left| left.min(zeros.len()));
        match pwrite(&dev.fd, &zeros[..n], at) {
            Ok(0) => {
                return Err(io::Error::new(
                    ErrorKind::WriteZero,
                    format!(
                        "writing zeros to {} at byte {at}: nothing written",
                        dev.path.display()
                    ),
                ));
            }
            Ok(written) => at += written as u64,
            Err(Errno::INTR) => {}
            Err(e) => {
                return Err(crate::context(
                    e,
                    format!("writing zeros to {} at byte {at}", dev.path.display()),
                ));
            }
        }
    }
    Ok(())
}

/// Wipes the signatures at the start and end of the device, like `wipefs -a` in effect: the first and last 1 MiB
/// are zeroed and flushed (`fsync`), after which [`crate::mkfs::signature`] finds nothing. Data elsewhere stays
/// readable.
///
/// That covers the superblocks, labels and partition tables that `blkid` looks for at the start (filesystems,
/// LVM, LUKS, MBR, GPT) and at the end (GPT's backup, md's 0.90 and 1.0 superblocks, ZFS's last labels, most
/// firmware RAID). It does not cover copies further in that `blkid` does not probe (ext4's backup superblocks,
/// btrfs's mirrors at 64 MiB and 256 GiB), nor the few signatures `blkid` finds beyond 1 MiB from either end:
/// VMFS at 1 and 2 MiB, Promise FastTrack RAID as far as 3087 sectors from the end. The zeros go through the
/// page cache. Refused like [`discard`].
pub fn wipe_signatures(device: &Path) -> io::Result<()> {
    let dev = open_for_writing(device, "wiping")?;
    let total = dev.size()?;
    let head = total.min(WIPE_BYTES);
    let tail = total.saturating_sub(WIPE_BYTES).max(head);
    let zeros = vec![0u8; WIPE_BYTES as usize];
    write_zeros(&dev, &zeros, 0, head)?;
    write_zeros(&dev, &zeros, tail, total)?;
    dev.fsync()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileExt;

    use super::*;

    #[test]
    fn opcodes_and_struct_are_the_kernels() {
        #[cfg(target_arch = "x86_64")]
        assert_eq!(BLKGETSIZE64, 0x8008_1272);
        assert_eq!(BLKDISCARD, 0x1277);
        assert_eq!(BLKZEROOUT, 0x127f);
    }

    #[test]
    fn regular_file_is_not_a_block_device() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let err = size_bytes(file.path()).unwrap_err();
        assert_eq!(crate::os_error(&err), Some(libc::ENOTTY), "{err}");
        assert!(err.to_string().contains(&*file.path().to_string_lossy()), "{err}");
        let err = logical_block_size(file.path()).unwrap_err();
        assert_eq!(crate::os_error(&err), Some(libc::ENOTTY), "{err}");
    }

    #[test]
    fn missing_device_names_it() {
        let err = size_bytes(Path::new("/nonexistent/loam-dev")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(err.to_string().contains("/nonexistent/loam-dev"), "{err}");
        let err = identity(Path::new("/nonexistent/loam-dev")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(err.to_string().contains("/nonexistent/loam-dev"), "{err}");
    }

    /// Every operation on `path` fails with InvalidInput naming it and saying what it is.
    #[track_caller]
    fn assert_refused(path: &Path, what: &str) {
        let results = [
            ("identity", identity(path).map(drop)),
            ("in_use", in_use(path).map(drop)),
            ("discard", discard(path, &mut |_, _| panic!("progress")).map(drop)),
            ("discard_zeroes", discard_zeroes(path).map(drop)),
            ("zero", zero(path, &mut |_, _| panic!("progress")).map(drop)),
            ("wipe_signatures", wipe_signatures(path).map(drop)),
        ];
        for (name, result) in results {
            let err = result.unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidInput, "{name}: {err}");
            assert_eq!(crate::os_error(&err), Some(libc::ENOTBLK), "{name}: {err}");
            let msg = err.to_string();
            assert!(
                msg.starts_with(&format!("{} is not a block device but {what}", path.display())),
                "{name}: {msg}"
            );
        }
    }

    #[test]
    fn anything_but_a_block_device_is_invalid_input() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        fs::write(&file, vec![0x5a; 4 << 20]).unwrap();
        assert_refused(&file, "a regular file");
        // Untouched.
        assert!(fs::read(&file).unwrap().iter().all(|&b| b == 0x5a));
        assert_refused(dir.path(), "a directory");
        assert_refused(Path::new("/dev/null"), "a character device");
        // Opening a FIFO would block until a writer came: it is never opened.
        let fifo = dir.path().join("fifo");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        assert_refused(&fifo, "a FIFO");
    }

    #[test]
    fn sysfs_and_udev_formats_are_parsed() {
        assert_eq!(parse_dev("7:12\n"), Some((7, 12)));
        assert_eq!(parse_dev("259:0"), Some((259, 0)));
        assert_eq!(parse_dev("7"), None);
        assert_eq!(parse_dev("a:b"), None);
        let udev =
            "S:disk/by-id/ata-X\nI:123\nE:ID_SERIAL=Samsung_SSD_860_S3Z\nE:ID_SERIAL_SHORT=S3Z\nG:systemd\n";
        assert_eq!(udev_property(udev, "ID_SERIAL"), Some("Samsung_SSD_860_S3Z"));
        assert_eq!(udev_property(udev, "ID_SERIAL_SHORT"), Some("S3Z"));
        assert_eq!(udev_property(udev, "ID_WWN"), None);
        assert_eq!(udev_property("S:ID_SERIAL=x\n", "ID_SERIAL"), None);
    }

    /// A loop device over a file in a temporary directory, detached on drop.
    struct Looped(crate::loopdev::LoopDevice, #[allow(dead_code)] tempfile::TempDir);

    impl Drop for Looped {
        fn drop(&mut self) {
            let _ = crate::loopdev::detach(&self.0);
        }
    }

    #[test]
    fn zeros_are_written_with_direct_io_where_the_ioctl_is_missing() {
        if !crate::testutil::require_root("zeros_are_written_with_direct_io_where_the_ioctl_is_missing") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("img");
        fs::File::create_new(&img).unwrap().set_len(6 << 20).unwrap();
        let cfg = crate::loopdev::LoopConfig {
            direct_io: true,
            block_size: 4096,
            read_only: false,
        };
        let looped = Looped(crate::loopdev::attach(&img, &cfg).unwrap(), dir);
        let path = looped.0.path.clone();
        let node = fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
        for at in [0, 3 << 20, (6 << 20) - 4096] {
            node.write_all_at(&[0xa5; 4096], at).unwrap();
        }
        node.sync_all().unwrap();

        let dev = open_for_writing(&path, "zeroing").unwrap();
        let mut calls = Vec::new();
        // From 1 MiB on; the first MiB stays.
        zero_by_writing(&dev, 1 << 20, 6 << 20, &mut |done, total| {
            calls.push((done, total))
        })
        .unwrap();
        dev.fsync().unwrap();
        drop(dev);
        assert_eq!(calls, [(6 << 20, 6 << 20)]);
        let mut back = vec![1u8; 6 << 20];
        node.read_exact_at(&mut back, 0).unwrap();
        assert!(back[..4096].iter().all(|&b| b == 0xa5));
        assert!(back[1 << 20..].iter().all(|&b| b == 0));
    }
}

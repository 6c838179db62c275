//! Loop devices, through the kernel's ioctls (never by running `losetup`).
//!
//! An image-backed volume is a file on the node's disks that is exposed to
//! pods as a block device by attaching it to a loop device ([`attach`]). The
//! attachment is not persistent: after a restart of loam (or of the node) the
//! volume's loop devices are found again from the kernel's own record of their
//! backing files ([`find`]), confirmed by device and inode number so that a
//! different file that now has the same path never matches.
//!
//! Devices are attached without `LO_FLAGS_AUTOCLEAR` (a device must survive
//! loam closing it) and without `LO_FLAGS_PARTSCAN` (partitions that a pod
//! writes into its volume must not appear on the node).

use std::{
    fs,
    io::{self, ErrorKind},
    os::{
        fd::{AsFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::{Path, PathBuf},
    time::Duration,
};

use rustix::{
    fs::{FileType, Mode, OFlags, Stat, fstat, major, minor, open},
    io::Errno,
    ioctl::{Getter, Ioctl, IoctlOutput, NoArg, Opcode, Setter, ioctl},
};

/// A loop device, by number and device node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoopDevice {
    /// `N` of `/dev/loopN`.
    pub number: u32,
    /// The device node, `/dev/loopN`.
    pub path: PathBuf,
    /// Major number of the device (7 for loop devices).
    pub major: u32,
    /// Minor number of the device.
    pub minor: u32,
}

/// How [`attach`] sets up a loop device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoopConfig {
    /// Ask for direct I/O to the backing file (bypassing the page cache, so
    /// data is not cached twice). Falls back to buffered I/O when the backing
    /// filesystem cannot do it; [`direct_io`] tells what the device does.
    pub direct_io: bool,
    /// Logical block size of the device in bytes: a power of two from 512 to
    /// the page size (0 means the kernel's default).
    pub block_size: u32,
    /// Attach read-only: the backing file is opened `O_RDONLY` and the device
    /// refuses writes.
    pub read_only: bool,
}

const LOOP_CONTROL: &str = "/dev/loop-control";

// Ioctl numbers of linux/loop.h. They are plain numbers, not `_IO()`
// encodings, so they are the same on every architecture.
const LOOP_CLR_FD: Opcode = 0x4C01;
const LOOP_GET_STATUS64: Opcode = 0x4C05;
const LOOP_CONFIGURE: Opcode = 0x4C0A;
const LOOP_CTL_GET_FREE: Opcode = 0x4C82;

const LO_FLAGS_READ_ONLY: u32 = 1;
const LO_FLAGS_DIRECT_IO: u32 = 16;

const LO_NAME_SIZE: usize = 64;
const LO_KEY_SIZE: usize = 32;

/// How many free devices [`attach`] tries before giving up when other
/// attachers keep taking them first. A stress test (12 threads attaching and
/// detaching in a tight loop) needed at most 8.
const ATTACH_ATTEMPTS: usize = 64;

/// How long [`detach`] waits for other openers of the device to close it.
const DETACH_WAIT: Duration = Duration::from_secs(1);

/// `struct loop_info64` of linux/loop.h.
#[repr(C)]
#[derive(Clone, Copy)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; LO_NAME_SIZE],
    lo_crypt_name: [u8; LO_NAME_SIZE],
    lo_encrypt_key: [u8; LO_KEY_SIZE],
    lo_init: [u64; 2],
}

impl LoopInfo64 {
    const ZERO: Self = Self {
        lo_device: 0,
        lo_inode: 0,
        lo_rdevice: 0,
        lo_offset: 0,
        lo_sizelimit: 0,
        lo_number: 0,
        lo_encrypt_type: 0,
        lo_encrypt_key_size: 0,
        lo_flags: 0,
        lo_file_name: [0; LO_NAME_SIZE],
        lo_crypt_name: [0; LO_NAME_SIZE],
        lo_encrypt_key: [0; LO_KEY_SIZE],
        lo_init: [0; 2],
    };
}

/// `struct loop_config` of linux/loop.h, the argument of `LOOP_CONFIGURE`.
#[repr(C)]
#[derive(Clone, Copy)]
struct RawLoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

/// `LOOP_CTL_GET_FREE`: no argument, the device number is the return value.
struct GetFree;

// SAFETY: LOOP_CTL_GET_FREE takes no argument (the pointer is null and
// ignored), writes no user memory, and returns the number of a free loop
// device (creating one if needed) as the ioctl's return value.
unsafe impl Ioctl for GetFree {
    type Output = IoctlOutput;

    const IS_MUTATING: bool = false;

    fn opcode(&self) -> Opcode {
        LOOP_CTL_GET_FREE
    }

    fn as_ptr(&mut self) -> *mut std::ffi::c_void {
        std::ptr::null_mut()
    }

    unsafe fn output_from_ptr(out: IoctlOutput, _: *mut std::ffi::c_void) -> rustix::io::Result<IoctlOutput> {
        Ok(out)
    }
}

/// The device node of loop device `number`.
fn node_path(number: u32) -> PathBuf {
    PathBuf::from(format!("/dev/loop{number}"))
}

/// The sysfs directory of loop device `number`'s loop attributes, which exists
/// only while the device is bound to a file.
fn sysfs_loop_dir(number: u32) -> PathBuf {
    PathBuf::from(format!("/sys/block/loop{number}/loop"))
}

/// Opens a loop device node and checks that it is a block device.
fn open_node(path: &Path, flags: OFlags) -> Result<(OwnedFd, Stat), Errno> {
    let fd = open(path, flags | OFlags::CLOEXEC, Mode::empty())?;
    let st = fstat(&fd)?;
    if FileType::from_raw_mode(st.st_mode) != FileType::BlockDevice {
        return Err(Errno::NOTBLK);
    }
    Ok((fd, st))
}

fn loop_device(number: u32, path: PathBuf, st: &Stat) -> LoopDevice {
    LoopDevice {
        number,
        path,
        major: major(st.st_rdev),
        minor: minor(st.st_rdev),
    }
}

/// Attaches `file` to a free loop device and returns the device.
///
/// Takes a free device from `/dev/loop-control` (`LOOP_CTL_GET_FREE`), opens
/// its node `/dev/loopN` and binds the file to it with one `LOOP_CONFIGURE`
/// (never `LO_FLAGS_AUTOCLEAR` or `LO_FLAGS_PARTSCAN`). The file is opened
/// `O_RDWR`, or `O_RDONLY` with `LO_FLAGS_READ_ONLY` when `cfg.read_only`.
///
/// Another process may take the same free device first (the kernel hands every
/// asker the lowest free one); then (`EBUSY`) another free device is tried,
/// after a short random pause, up to 64 times (as `losetup` does). If direct
/// I/O was asked for and the kernel refuses it (`EINVAL`: the backing
/// filesystem cannot do it with this block size), the attach is retried once
/// without it.
///
/// Attaching a file that is already attached gives a second device: callers
/// check with [`find`] first.
pub fn attach(file: &Path, cfg: &LoopConfig) -> io::Result<LoopDevice> {
    let access = if cfg.read_only {
        OFlags::RDONLY
    } else {
        OFlags::RDWR
    };
    let backing = open(file, access | OFlags::CLOEXEC, Mode::empty()).map_err(|e| {
        crate::context(
            e,
            format!("opening {} to attach it to a loop device", file.display()),
        )
    })?;
    let control = open(LOOP_CONTROL, OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| crate::context(e, format!("opening {LOOP_CONTROL}")))?;

    let mut flags = 0;
    if cfg.direct_io {
        flags |= LO_FLAGS_DIRECT_IO;
    }
    if cfg.read_only {
        flags |= LO_FLAGS_READ_ONLY;
    }
    let mut last_busy = None;
    for attempt in 0..ATTACH_ATTEMPTS {
        if attempt > 0 {
            backoff(attempt);
        }
        // SAFETY: GetFree describes LOOP_CTL_GET_FREE exactly (see its Ioctl
        // impl), and `control` is an open /dev/loop-control.
        let number = unsafe { ioctl(&control, GetFree) }
            .map_err(|e| crate::context(e, format!("getting a free loop device from {LOOP_CONTROL}")))?;
        let number = u32::try_from(number)
            .map_err(|_| io::Error::other(format!("{LOOP_CONTROL} returned loop device number {number}")))?;
        let path = node_path(number);
        let (device, st) = match open_node(&path, OFlags::RDWR) {
            Ok(opened) => opened,
            // Taken (or removed) by someone else since it was free.
            Err(e @ (Errno::BUSY | Errno::NXIO | Errno::ROFS)) => {
                last_busy = Some((path, e));
                continue;
            }
            Err(e) => return Err(crate::context(e, format!("opening {}", path.display()))),
        };
        loop {
            match configure(&device, &backing, file, flags, cfg.block_size) {
                Ok(()) => return Ok(loop_device(number, path, &st)),
                Err(Errno::INVAL) if flags & LO_FLAGS_DIRECT_IO != 0 => flags &= !LO_FLAGS_DIRECT_IO,
                Err(Errno::BUSY) => {
                    last_busy = Some((path, Errno::BUSY));
                    break;
                }
                Err(e) => {
                    return Err(crate::context(
                        e,
                        format!(
                            "attaching {} to {} (LOOP_CONFIGURE, block size {}{}{})",
                            file.display(),
                            path.display(),
                            cfg.block_size,
                            if cfg.read_only { ", read-only" } else { "" },
                            if cfg.direct_io && flags & LO_FLAGS_DIRECT_IO == 0 {
                                ", also without the direct I/O that was refused"
                            } else {
                                ""
                            },
                        ),
                    ));
                }
            }
        }
    }
    let what = format!(
        "attaching {}: no free loop device after {ATTACH_ATTEMPTS} tries, other attachers took them",
        file.display()
    );
    Err(match last_busy {
        Some((path, e)) => crate::context(e, format!("{what} (last: {})", path.display())),
        None => io::Error::new(ErrorKind::ResourceBusy, what),
    })
}

/// Sleeps before attach attempt `attempt` (from 1): a random part of a
/// doubling interval capped at 32 ms, so that attachers which keep colliding
/// on the same free device fall out of step.
fn backoff(attempt: usize) {
    let ceiling = 1u32 << attempt.min(5);
    let jitter = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let micros = 500 + jitter % (ceiling * 1000);
    std::thread::sleep(Duration::from_micros(micros.into()));
}

/// One `LOOP_CONFIGURE` of `device` with `backing`.
fn configure(
    device: &OwnedFd,
    backing: &OwnedFd,
    file: &Path,
    flags: u32,
    block_size: u32,
) -> Result<(), Errno> {
    use std::os::fd::AsRawFd;

    let mut info = LoopInfo64 {
        lo_flags: flags,
        ..LoopInfo64::ZERO
    };
    // Informational only (the kernel reports the real path in sysfs); the
    // kernel keeps at most LO_NAME_SIZE - 1 bytes and a NUL.
    let name = file.as_os_str().as_bytes();
    let len = name.len().min(LO_NAME_SIZE - 1);
    info.lo_file_name[..len].copy_from_slice(&name[..len]);
    let config = RawLoopConfig {
        fd: u32::try_from(backing.as_fd().as_raw_fd()).map_err(|_| Errno::BADF)?,
        block_size,
        info,
        reserved: [0; 8],
    };
    // SAFETY: LOOP_CONFIGURE reads a `struct loop_config`, which RawLoopConfig
    // reproduces (#[repr(C)], size checked in the tests); the kernel only
    // reads it. `config.fd` is an open fd that outlives the call.
    unsafe { ioctl(device, Setter::<LOOP_CONFIGURE, RawLoopConfig>::new(config)) }
}

/// Every loop device currently backed by `file`, by device number.
///
/// The kernel records each bound device's backing file as a path in
/// `/sys/block/loopN/loop/backing_file`; candidates whose path is the
/// canonical path of `file` are then confirmed with `LOOP_GET_STATUS64`: the
/// device's backing file must have the device and inode numbers of `file`.
/// So a device bound to a file that was deleted (its path then ends in
/// ` (deleted)`) or replaced by another file at the same path never matches.
///
/// A missing `file` gives no devices.
pub fn find(file: &Path) -> io::Result<Vec<LoopDevice>> {
    let Some((canonical, st)) = resolve(file)? else {
        return Ok(Vec::new());
    };

    let mut found = Vec::new();
    for number in loop_numbers()? {
        if !backed_by_path(number, &canonical)? {
            continue;
        }
        if let Some(dev) = confirm(number, &canonical, &st)? {
            found.push(dev);
        }
    }
    found.sort_by_key(|d| d.number);
    Ok(found)
}

/// Every loop device backed by a file directly in directory `dir`, with that file's path, from one look at all
/// of them; each is confirmed as [`find`] confirms its devices. A missing `dir` gives none.
pub fn find_under(dir: &Path) -> io::Result<Vec<(PathBuf, LoopDevice)>> {
    let dir = match fs::canonicalize(dir) {
        Ok(p) => p,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(crate::context(e, format!("resolving {}", dir.display()))),
    };
    let mut found = Vec::new();
    for number in loop_numbers()? {
        let Some(text) = backing_file(number)? else {
            continue;
        };
        let path = PathBuf::from(std::ffi::OsStr::from_bytes(&text));
        if path.parent() != Some(dir.as_path()) {
            continue;
        }
        // A deleted backing file (` (deleted)`) or one replaced since resolves to nothing, or fails to confirm.
        let Some((canonical, st)) = resolve(&path)? else {
            continue;
        };
        if canonical == path
            && let Some(dev) = confirm(number, &canonical, &st)?
        {
            found.push((path, dev));
        }
    }
    found.sort_by_key(|(_, d)| d.number);
    Ok(found)
}

/// Whether loop device `dev` is backed by `file` now: [`find`]'s test of one device, without looking at the
/// others.
pub fn backs(dev: &LoopDevice, file: &Path) -> io::Result<bool> {
    let Some((canonical, st)) = resolve(file)? else {
        return Ok(false);
    };
    if !backed_by_path(dev.number, &canonical)? {
        return Ok(false);
    }
    Ok(confirm(dev.number, &canonical, &st)?.is_some_and(|d| d == *dev))
}

/// `file`'s canonical path (as sysfs names backing files) and its `stat`; `None` when it does not exist.
fn resolve(file: &Path) -> io::Result<Option<(PathBuf, Stat)>> {
    let canonical = match fs::canonicalize(file) {
        Ok(p) => p,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(crate::context(e, format!("resolving {}", file.display()))),
    };
    match rustix::fs::stat(&canonical) {
        Ok(st) => Ok(Some((canonical, st))),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(crate::context(e, format!("stat of {}", canonical.display()))),
    }
}

/// The numbers of the loop devices in `/sys/block`.
fn loop_numbers() -> io::Result<Vec<u32>> {
    let entries = fs::read_dir("/sys/block").map_err(|e| crate::context(e, "listing /sys/block"))?;
    let mut numbers = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| crate::context(e, "listing /sys/block"))?;
        if let Some(n) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.strip_prefix("loop"))
            .and_then(|n| n.parse::<u32>().ok())
        {
            numbers.push(n);
        }
    }
    Ok(numbers)
}

/// How many loop devices are bound to files under directory `dir` now, by the paths sysfs shows (a deleted
/// backing file still counts: its device is still attached).
pub fn count_under(dir: &Path) -> io::Result<usize> {
    let prefix = dir.as_os_str().as_bytes();
    let mut n = 0;
    for number in loop_numbers()? {
        if backing_file(number)?.is_some_and(|f| f.starts_with(prefix) && f.get(prefix.len()) == Some(&b'/'))
        {
            n += 1;
        }
    }
    Ok(n)
}

/// Whether sysfs names `path` as the backing file of loop device `number`.
/// An unbound (or vanished) device has no backing file.
fn backed_by_path(number: u32, path: &Path) -> io::Result<bool> {
    Ok(backing_file(number)?.is_some_and(|text| text == path.as_os_str().as_bytes()))
}

/// What sysfs says the backing file of loop device `number` is (the path as
/// the kernel prints it, without the newline); `None` if it is not bound.
fn backing_file(number: u32) -> io::Result<Option<Vec<u8>>> {
    let attr = sysfs_loop_dir(number).join("backing_file");
    match fs::read(&attr) {
        Ok(mut text) => {
            if text.last() == Some(&b'\n') {
                text.pop();
            }
            Ok(Some(text))
        }
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        // Unbound while being read: the attribute fails with ENXIO or ENODEV.
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENXIO | libc::ENODEV)) => Ok(None),
        Err(e) => Err(crate::context(e, format!("reading {}", attr.display()))),
    }
}

/// The backing file's device and inode numbers, and the device's number, of the open loop device `fd`
/// (`LOOP_GET_STATUS64`; `ENXIO` when it is not bound to a file).
pub(crate) struct Status {
    pub(crate) lo_device: u64,
    pub(crate) lo_inode: u64,
    pub(crate) lo_number: u32,
}

pub(crate) fn status(fd: impl AsFd) -> Result<Status, Errno> {
    // SAFETY: LOOP_GET_STATUS64 writes one `struct loop_info64`, which
    // LoopInfo64 reproduces (#[repr(C)], size checked in the tests), and
    // nothing else.
    let info = unsafe { ioctl(fd, Getter::<LOOP_GET_STATUS64, LoopInfo64>::new()) }?;
    Ok(Status {
        lo_device: info.lo_device,
        lo_inode: info.lo_inode,
        lo_number: info.lo_number,
    })
}

/// Checks with `LOOP_GET_STATUS64` that loop device `number` is bound to the
/// file with `st`'s device and inode numbers. `None` if it is not (any more).
fn confirm(number: u32, file: &Path, st: &Stat) -> io::Result<Option<LoopDevice>> {
    let path = node_path(number);
    let (fd, node) = match open_node(&path, OFlags::RDONLY) {
        Ok(opened) => opened,
        // Being detached: the kernel refuses new opens while it tears the
        // device down (sysfs still shows the file until it is done).
        Err(Errno::NXIO) => return Ok(None),
        // Removed since sysfs was read, or /dev lacks the node. If sysfs still
        // names the file, saying "not attached" would be wrong.
        Err(e @ Errno::NOENT) => {
            return if backed_by_path(number, file)? {
                Err(crate::context(
                    e,
                    format!(
                        "opening {}, which sysfs says is backed by {}",
                        path.display(),
                        file.display()
                    ),
                ))
            } else {
                Ok(None)
            };
        }
        Err(e) => return Err(crate::context(e, format!("opening {}", path.display()))),
    };
    match status(&fd) {
        Ok(info) => {
            let matches =
                info.lo_number == number && info.lo_device == st.st_dev && info.lo_inode == st.st_ino;
            Ok(matches.then(|| loop_device(number, path, &node)))
        }
        // Unbound, or being detached, since sysfs was read.
        Err(Errno::NXIO) => Ok(None),
        Err(e) => Err(crate::context(
            e,
            format!(
                "checking the backing file of {} (LOOP_GET_STATUS64)",
                path.display()
            ),
        )),
    }
}

/// Detaches `dev` from its backing file (`LOOP_CLR_FD`).
///
/// A device that is not bound (`ENXIO`) counts as detached.
///
/// The kernel detaches at once only if nobody else has the device open;
/// otherwise it marks the device to be detached on its last close
/// (`LO_FLAGS_AUTOCLEAR`). Brief openers (udev's probe, another process's
/// [`find`]) are waited for, up to about a second, so that a [`find`] right
/// after this usually no longer sees the device. A device that stays open
/// (mounted, or in use) is left to the kernel's deferred detach, and this
/// returns `Ok` all the same.
///
/// The node at `dev.path` must still be the device `dev.major:dev.minor`.
pub fn detach(dev: &LoopDevice) -> io::Result<()> {
    let (fd, st) = match open_node(&dev.path, OFlags::RDONLY) {
        Ok(opened) => opened,
        Err(Errno::NXIO) => return Ok(()),
        Err(e) => return Err(crate::context(e, format!("opening {}", dev.path.display()))),
    };
    if (major(st.st_rdev), minor(st.st_rdev)) != (dev.major, dev.minor) {
        return Err(io::Error::new(
            ErrorKind::InvalidInput,
            format!(
                "not detaching {}: it is device {}:{}, not {}:{}",
                dev.path.display(),
                major(st.st_rdev),
                minor(st.st_rdev),
                dev.major,
                dev.minor
            ),
        ));
    }
    // To wait for below; best effort, like the wait.
    let backing = backing_file(dev.number).ok().flatten();
    // SAFETY: LOOP_CLR_FD takes no argument and touches no user memory.
    match unsafe { ioctl(&fd, NoArg::<LOOP_CLR_FD>::new()) } {
        Ok(()) => {}
        Err(Errno::NXIO) => return Ok(()),
        Err(e) => {
            return Err(crate::context(
                e,
                format!("detaching {} (LOOP_CLR_FD)", dev.path.display()),
            ));
        }
    }
    // Our own open counts too: the detach can only happen once it is closed.
    drop(fd);
    if let Some(backing) = backing {
        wait_unbound(dev.number, &backing);
    }
    Ok(())
}

/// Waits, for about a second at most, until loop device `number` is no longer
/// bound to `backing` (as sysfs names it). Reading sysfs does not open the
/// device, so it does not delay the detach itself.
fn wait_unbound(number: u32, backing: &[u8]) {
    let mut pause = Duration::from_millis(1);
    let mut waited = Duration::ZERO;
    while waited < DETACH_WAIT && backing_file(number).is_ok_and(|now| now.as_deref() == Some(backing)) {
        std::thread::sleep(pause);
        waited += pause;
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Whether `dev` does direct I/O to its backing file now
/// (`/sys/block/loopN/loop/dio`). An unbound device is an error of kind
/// [`ErrorKind::NotFound`].
pub fn direct_io(dev: &LoopDevice) -> io::Result<bool> {
    let attr = sysfs_loop_dir(dev.number).join("dio");
    let text =
        fs::read_to_string(&attr).map_err(|e| crate::context(e, format!("reading {}", attr.display())))?;
    match text.trim_end() {
        "1" => Ok(true),
        "0" => Ok(false),
        other => Err(io::Error::new(
            ErrorKind::InvalidData,
            format!("{}: unexpected content {other:?}", attr.display()),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn structs_match_linux_loop_h() {
        assert_eq!(std::mem::size_of::<LoopInfo64>(), 232);
        assert_eq!(std::mem::size_of::<RawLoopConfig>(), 304);
        assert_eq!(std::mem::offset_of!(LoopInfo64, lo_number), 40);
        assert_eq!(std::mem::offset_of!(LoopInfo64, lo_flags), 52);
        assert_eq!(std::mem::offset_of!(LoopInfo64, lo_file_name), 56);
        assert_eq!(std::mem::offset_of!(LoopInfo64, lo_init), 216);
        assert_eq!(std::mem::offset_of!(RawLoopConfig, info), 8);
        assert_eq!(std::mem::offset_of!(RawLoopConfig, reserved), 240);
    }

    #[test]
    fn find_of_missing_file_is_empty() {
        assert_eq!(find(Path::new("/nonexistent/loam-test.img")).unwrap(), Vec::new());
    }

    #[test]
    fn find_of_unattached_file_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("img");
        fs::write(&file, b"").unwrap();
        assert_eq!(find(&file).unwrap(), Vec::new());
    }

    #[test]
    fn attach_of_missing_file_names_it() {
        let cfg = LoopConfig {
            direct_io: false,
            block_size: 4096,
            read_only: false,
        };
        let err = attach(Path::new("/nonexistent/loam-test.img"), &cfg).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound);
        assert!(err.to_string().contains("/nonexistent/loam-test.img"), "{err}");
    }
}

//! Tests of the whole-device operations of `blockdev` on real loop devices, standing in for disks. They need
//! root. Each test makes its own sparse image files in a temporary directory, and every loop device it attaches
//! is detached by a guard, even on panic. Mounts are made in a private mount namespace of the test's own thread
//! and also undone by a guard, declared after the device's so that they go first.
//!
//! The partitions are added with `BLKPG` after turning on `LO_FLAGS_PARTSCAN` with `LOOP_SET_STATUS64`, both
//! here only: loopdev never sets that flag, and the kernel the tests run on has no partition table parsers
//! (neither `CONFIG_MSDOS_PARTITION` nor `CONFIG_EFI_PARTITION`), so a table written into the image would not be
//! read anyway.

mod common;

use std::{
    fs,
    io::{self, ErrorKind},
    os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt},
    path::{Path, PathBuf},
};

use common::{Attached, CONFIG, MIB, image, setup};
use loam_sys::{
    blockdev::{discard, discard_zeroes, identity, in_use, wipe_signatures, zero},
    loopdev::{LoopConfig, LoopDevice, attach},
    mkfs::{make, signature},
    mount::{mount_fs, unmount},
    os_error,
    testutil::{Mounted, enter_private_mount_namespace},
};
use rustix::ioctl::{Getter, Opcode, Setter, ioctl};

const GIB: u64 = 1 << 30;

/// What the tests write to see it again (or not): never zero.
const PATTERN: u8 = 0xa5;

/// `file` attached with [`CONFIG`], detached when the guard drops.
#[track_caller]
fn attached(file: &Path) -> Attached {
    Attached(attach(file, &CONFIG).unwrap())
}

/// Writes `len` bytes of [`PATTERN`] to `dev` at `at`, and flushes them.
#[track_caller]
fn write_pattern(dev: &Path, at: u64, len: usize) {
    let node = fs::OpenOptions::new().write(true).open(dev).unwrap();
    node.write_all_at(&vec![PATTERN; len], at).unwrap();
    node.sync_all().unwrap();
}

/// `len` bytes of `file` (a device or an image) at `at`.
#[track_caller]
fn read_at(file: &Path, at: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0x11; len];
    fs::File::open(file).unwrap().read_exact_at(&mut buf, at).unwrap();
    buf
}

#[track_caller]
fn assert_all(bytes: &[u8], value: u8, what: &str) {
    let wrong = bytes.iter().position(|&b| b != value);
    assert_eq!(wrong, None, "{what}: byte {wrong:?} is not {value:#x}");
}

/// An empty directory `base/name` to mount on.
fn mount_dir(base: &Path, name: &str) -> PathBuf {
    let target = base.join(name);
    fs::create_dir(&target).unwrap();
    target
}

/// Mounts the ext4 on `device` at `target`; unmounted when the guard drops.
#[track_caller]
fn mounted(device: &Path, target: &Path) -> Mounted {
    mount_fs(device, target, "ext4", &[], false).unwrap();
    Mounted(target.to_owned())
}

/// Unmounts what `mounted` guards, failing if that fails, and disarms the guard.
#[track_caller]
fn unmount_now(mounted: Mounted) {
    unmount(&mounted.0).unwrap();
    std::mem::forget(mounted);
}

/// Every destructive call on `dev` fails with `EBUSY`, never reporting progress; the message of each contains
/// `says` (if given).
#[track_caller]
fn assert_destructive_calls_busy(dev: &Path, says: Option<&str>) {
    let mut progress = |done, total| panic!("progress {done}/{total} of a refused call");
    let results: [(&str, io::Result<()>); 3] = [
        ("discard", discard(dev, &mut progress)),
        ("zero", zero(dev, &mut progress)),
        ("wipe_signatures", wipe_signatures(dev)),
    ];
    for (name, result) in results {
        let err = result.unwrap_err();
        assert_eq!(os_error(&err), Some(libc::EBUSY), "{name}: {err}");
        assert_eq!(err.kind(), ErrorKind::ResourceBusy, "{name}: {err}");
        let msg = err.to_string();
        assert!(msg.contains(&*dev.to_string_lossy()), "{name}: {msg}");
        if let Some(says) = says {
            assert!(msg.contains(says), "{name}: {msg}");
        }
    }
}

/// The start of `struct loop_info64` of linux/loop.h up to its flags, then the rest, for `LOOP_GET_STATUS64`
/// and `LOOP_SET_STATUS64`.
#[repr(C)]
#[derive(Clone, Copy)]
struct LoopInfo64 {
    numbers: [u64; 5],
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    rest: [u64; 22],
}

const LOOP_SET_STATUS64: Opcode = 0x4C04;
const LOOP_GET_STATUS64: Opcode = 0x4C05;
const LO_FLAGS_PARTSCAN: u32 = 8;

/// `BLKPG` of linux/fs.h, `_IO(0x12, 105)`, reading a `struct blkpg_ioctl_arg`.
const BLKPG: Opcode = 0x1269;
const BLKPG_ADD_PARTITION: i32 = 1;

/// `struct blkpg_ioctl_arg` of linux/blkpg.h.
#[repr(C)]
struct BlkpgIoctlArg {
    op: i32,
    flags: i32,
    datalen: i32,
    data: *mut BlkpgPartition,
}

/// `struct blkpg_partition` of linux/blkpg.h.
#[repr(C)]
struct BlkpgPartition {
    start: i64,
    length: i64,
    pno: i32,
    devname: [u8; 64],
    volname: [u8; 64],
}

/// Turns on partitions for `dev` (`LO_FLAGS_PARTSCAN`, with the rest of its status as it is), which
/// `loopdev::attach` never does.
fn enable_partitions(dev: &LoopDevice) {
    assert_eq!(std::mem::size_of::<LoopInfo64>(), 232);
    assert_eq!(std::mem::offset_of!(LoopInfo64, lo_flags), 52);
    let node = fs::File::open(&dev.path).unwrap();
    // SAFETY: LOOP_GET_STATUS64 writes one `struct loop_info64` (232 bytes, the size of LoopInfo64, checked
    // above) and nothing else.
    let mut info = unsafe { ioctl(&node, Getter::<LOOP_GET_STATUS64, LoopInfo64>::new()) }.unwrap();
    info.lo_flags |= LO_FLAGS_PARTSCAN;
    // SAFETY: LOOP_SET_STATUS64 reads one `struct loop_info64`, the one just read with a flag added, and
    // writes nothing.
    unsafe { ioctl(&node, Setter::<LOOP_SET_STATUS64, LoopInfo64>::new(info)) }.unwrap();
    let partscan = format!("/sys/block/loop{}/loop/partscan", dev.number);
    assert_eq!(fs::read_to_string(partscan).unwrap().trim(), "1");
}

/// Adds partition `number` of `dev`, over `length` bytes from `start`, with `BLKPG`.
fn add_partition(dev: &LoopDevice, number: i32, start: u64, length: u64) {
    let node = fs::File::open(&dev.path).unwrap();
    let mut part = BlkpgPartition {
        start: start.try_into().unwrap(),
        length: length.try_into().unwrap(),
        pno: number,
        devname: [0; 64],
        volname: [0; 64],
    };
    let arg = BlkpgIoctlArg {
        op: BLKPG_ADD_PARTITION,
        flags: 0,
        datalen: std::mem::size_of::<BlkpgPartition>().try_into().unwrap(),
        data: &mut part,
    };
    // SAFETY: BLKPG reads a `struct blkpg_ioctl_arg` (BlkpgIoctlArg, #[repr(C)]) and, for
    // BLKPG_ADD_PARTITION, the `struct blkpg_partition` it points to, `part`, which outlives the call; it
    // writes neither.
    unsafe { ioctl(&node, Setter::<BLKPG, BlkpgIoctlArg>::new(arg)) }.unwrap();
}

/// An unbound loop device, added with `LOOP_CTL_ADD` under a high number and removed again on drop, so that no
/// other test can be handed it meanwhile (see tests/loopdev.rs).
struct Spare(PathBuf, u32);

const LOOP_CTL_ADD: Opcode = 0x4C80;
const LOOP_CTL_REMOVE: Opcode = 0x4C81;

/// `ioctl(/dev/loop-control, request, number)`.
fn loop_control(request: Opcode, number: u32) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let control = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/loop-control")?;
    // SAFETY: LOOP_CTL_ADD and LOOP_CTL_REMOVE take the device number as an integer argument and touch no
    // user memory; the fd is open.
    let rc = unsafe { libc::ioctl(control.as_raw_fd(), request as _, libc::c_ulong::from(number)) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl Spare {
    fn add() -> Self {
        for number in 3200u32..3300 {
            match loop_control(LOOP_CTL_ADD, number) {
                Ok(()) => return Self(PathBuf::from(format!("/dev/loop{number}")), number),
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => continue,
                Err(e) => panic!("LOOP_CTL_ADD {number}: {e}"),
            }
        }
        panic!("no free loop device number in 3200..3300");
    }
}

impl Drop for Spare {
    fn drop(&mut self) {
        let _ = loop_control(LOOP_CTL_REMOVE, self.1);
    }
}

#[test]
fn identity_of_a_loop_device_is_its_backing_file() {
    let Some((_dir, base)) = setup("identity_of_a_loop_device_is_its_backing_file") else {
        return;
    };
    let img = image(&base, "img", 16 * MIB);
    let other = image(&base, "other", 16 * MIB);
    let st = fs::metadata(&img).unwrap();

    let first = attached(&img);
    let id = identity(&first.0.path).unwrap().unwrap();
    assert_eq!(id, format!("loop:{}:{}", st.dev(), st.ino()));
    drop(first);

    // Detached and attached again: the same, whatever device it is now.
    let again = attached(&img);
    assert_eq!(identity(&again.0.path).unwrap().as_deref(), Some(&*id));
    // Another file, attached at the same time.
    let other_dev = attached(&other);
    let other_id = identity(&other_dev.0.path).unwrap().unwrap();
    assert_ne!(other_id, id);
    drop(again);

    // Another file at the same path: made while the first still exists (so its inode number cannot be the
    // first's again), then renamed over it.
    let new = image(&base, "img.new", 16 * MIB);
    fs::rename(&new, &img).unwrap();
    let replaced = attached(&img);
    let replaced_id = identity(&replaced.0.path).unwrap().unwrap();
    assert_ne!(replaced_id, id);
    assert_ne!(replaced_id, other_id);

    // A loop device bound to nothing has none.
    let spare = Spare::add();
    assert_eq!(identity(&spare.0).unwrap(), None);
}

#[test]
fn in_use_is_none_for_a_fresh_device_and_names_its_mount() {
    let Some((_dir, base)) = setup("in_use_is_none_for_a_fresh_device_and_names_its_mount") else {
        return;
    };
    enter_private_mount_namespace().unwrap();
    let img = image(&base, "img", 64 * MIB);
    let dev = attached(&img);
    assert_eq!(in_use(&dev.0.path).unwrap(), None);
    // A filesystem on it is not a use.
    make(&dev.0.path, "ext4").unwrap();
    assert_eq!(in_use(&dev.0.path).unwrap(), None);

    let target = mount_dir(&base, "target");
    let mount = mounted(&dev.0.path, &target);
    let reason = in_use(&dev.0.path).unwrap().unwrap();
    assert_eq!(reason, format!("mounted at {}", target.display()));
    // Twice: both named.
    let second_target = mount_dir(&base, "second");
    let second = mounted(&dev.0.path, &second_target);
    let reason = in_use(&dev.0.path).unwrap().unwrap();
    assert_eq!(
        reason,
        format!("mounted at {}, {}", target.display(), second_target.display())
    );
    drop(second);
    unmount_now(mount);
    assert_eq!(in_use(&dev.0.path).unwrap(), None);
}

#[test]
fn destructive_calls_on_a_mounted_device_fail_with_ebusy_and_leave_the_data() {
    let test = "destructive_calls_on_a_mounted_device_fail_with_ebusy_and_leave_the_data";
    let Some((_dir, base)) = setup(test) else {
        return;
    };
    enter_private_mount_namespace().unwrap();
    let img = image(&base, "img", 64 * MIB);
    let dev = attached(&img);
    make(&dev.0.path, "ext4").unwrap();
    let target = mount_dir(&base, "target");
    let mount = mounted(&dev.0.path, &target);
    fs::write(target.join("f"), b"still here").unwrap();
    rustix::fs::syncfs(fs::File::open(&target).unwrap()).unwrap();

    // The kernel refuses the exclusive open; the error says why.
    let mounted_at = format!("which is in use: mounted at {}", target.display());
    assert_destructive_calls_busy(&dev.0.path, Some(&mounted_at));
    assert!(in_use(&dev.0.path).unwrap().unwrap().contains("mounted at"));

    unmount_now(mount);
    assert_eq!(signature(&dev.0.path).unwrap().as_deref(), Some("ext4"));
    let mount = mounted(&dev.0.path, &target);
    assert_eq!(fs::read(target.join("f")).unwrap(), b"still here");
    unmount_now(mount);
}

#[test]
fn a_device_held_exclusively_elsewhere_is_in_use() {
    let Some((_dir, base)) = setup("a_device_held_exclusively_elsewhere_is_in_use") else {
        return;
    };
    let img = image(&base, "img", 16 * MIB);
    let dev = attached(&img);
    write_pattern(&dev.0.path, 0, 4096);
    // As a mount in another mount namespace, or mkfs, would hold it.
    let holder = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_EXCL)
        .open(&dev.0.path)
        .unwrap();
    let reason = in_use(&dev.0.path).unwrap().unwrap();
    assert!(reason.starts_with("held exclusively"), "{reason}");
    assert_destructive_calls_busy(&dev.0.path, Some("which is in use: held exclusively"));
    drop(holder);
    assert_eq!(in_use(&dev.0.path).unwrap(), None);
    assert_all(&read_at(&dev.0.path, 0, 4096), PATTERN, "the pattern");
}

#[test]
fn partitions_and_their_mounts_are_in_use() {
    let Some((_dir, base)) = setup("partitions_and_their_mounts_are_in_use") else {
        return;
    };
    enter_private_mount_namespace().unwrap();
    let img = image(&base, "img", 64 * MIB);
    let dev = attached(&img);
    write_pattern(&dev.0.path, 48 * MIB, 4096);
    enable_partitions(&dev.0);
    assert_eq!(in_use(&dev.0.path).unwrap(), None);
    add_partition(&dev.0, 1, MIB, 32 * MIB);
    let name = format!("loop{}p1", dev.0.number);
    let part = PathBuf::from(format!("/dev/{name}"));

    let has = format!("has partitions {name}");
    assert_eq!(in_use(&dev.0.path).unwrap(), Some(has.clone()));
    assert_eq!(in_use(&part).unwrap(), None);
    // Refused by the check after the exclusive open, which the kernel allows.
    assert_destructive_calls_busy(&dev.0.path, Some(&has));

    // A partition is its disk's identity and number.
    let disk_id = identity(&dev.0.path).unwrap().unwrap();
    assert_eq!(identity(&part).unwrap(), Some(format!("{disk_id}-part1")));
    // And has its disk's queue.
    assert_eq!(
        discard_zeroes(&part).unwrap(),
        discard_zeroes(&dev.0.path).unwrap()
    );

    make(&part, "ext4").unwrap();
    let target = mount_dir(&base, "target");
    let mount = mounted(&part, &target);
    assert_eq!(
        in_use(&dev.0.path).unwrap(),
        Some(format!(
            "partition {name} is mounted at {}; {has}",
            target.display()
        ))
    );
    assert_eq!(
        in_use(&part).unwrap(),
        Some(format!("mounted at {}", target.display()))
    );
    // Now the kernel refuses the exclusive open of the disk too.
    let part_mounted = format!("partition {name} is mounted at {}", target.display());
    assert_destructive_calls_busy(&dev.0.path, Some(&part_mounted));
    assert_destructive_calls_busy(&part, Some(&format!("mounted at {}", target.display())));
    unmount_now(mount);

    assert_all(&read_at(&dev.0.path, 48 * MIB, 4096), PATTERN, "the pattern");
    assert_eq!(signature(&part).unwrap().as_deref(), Some("ext4"));
}

#[test]
fn discard_zeroes_what_reads_back_and_reports_progress() {
    let Some((_dir, base)) = setup("discard_zeroes_what_reads_back_and_reports_progress") else {
        return;
    };
    // Over 1 GiB, for two chunks; sparse, so discarding it costs nothing.
    let total = GIB + 8 * MIB;
    let img = image(&base, "img", total);
    let dev = attached(&img);
    let places = [0, 512 * MIB, GIB + 4 * MIB, total - MIB];
    for at in places {
        write_pattern(&dev.0.path, at, MIB as usize);
    }
    let allocated = fs::metadata(&img).unwrap().blocks() * 512;
    assert!(allocated >= 4 * MIB, "{allocated}");
    assert!(discard_zeroes(&dev.0.path).unwrap());

    let mut calls = Vec::new();
    discard(&dev.0.path, &mut |done, total| calls.push((done, total))).unwrap();
    assert_eq!(calls, [(GIB, total), (total, total)]);
    for at in places {
        assert_all(&read_at(&dev.0.path, at, MIB as usize), 0, "the device");
        assert_all(&read_at(&img, at, MIB as usize), 0, "the image");
    }
    // Holes punched in the image.
    let now = fs::metadata(&img).unwrap();
    assert_eq!(now.len(), total);
    assert!(now.blocks() * 512 < MIB, "{} bytes allocated", now.blocks() * 512);
}

#[test]
fn discard_without_support_is_unsupported_and_zero_still_works() {
    let test = "discard_without_support_is_unsupported_and_zero_still_works";
    let Some((_dir, base)) = setup(test) else {
        return;
    };
    // A loop device over a file on ramfs, which cannot punch holes: the device has no discard.
    enter_private_mount_namespace().unwrap();
    let ram = mount_dir(&base, "ram");
    rustix::mount::mount(
        "loam-test",
        &ram,
        "ramfs",
        rustix::mount::MountFlags::empty(),
        c"",
    )
    .unwrap();
    // Unmounted after the device is detached, which the guard below does first.
    let _ram = Mounted(ram.clone());
    let total = 16 * MIB;
    let img = image(&ram, "img", total);
    let dev = attached(&img);
    write_pattern(&dev.0.path, 5 * MIB, MIB as usize);
    assert!(!discard_zeroes(&dev.0.path).unwrap());

    let err = discard(&dev.0.path, &mut |done, total| panic!("progress {done}/{total}")).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
    assert_eq!(os_error(&err), Some(libc::EOPNOTSUPP), "{err}");
    assert!(err.to_string().contains(&*dev.0.path.to_string_lossy()), "{err}");
    assert_all(
        &read_at(&dev.0.path, 5 * MIB, MIB as usize),
        PATTERN,
        "the pattern",
    );

    // The kernel writes the zeros itself.
    let mut calls = Vec::new();
    zero(&dev.0.path, &mut |done, total| calls.push((done, total))).unwrap();
    assert_eq!(calls, [(total, total)]);
    assert_all(&read_at(&dev.0.path, 0, total as usize), 0, "the device");
}

#[test]
fn zero_zeroes_what_reads_back_and_reports_progress() {
    let Some((_dir, base)) = setup("zero_zeroes_what_reads_back_and_reports_progress") else {
        return;
    };
    let total = 64 * MIB;
    let img = image(&base, "img", total);
    let dev = attached(&img);
    let places = [0, 17 * MIB, total - MIB];
    for at in places {
        write_pattern(&dev.0.path, at, MIB as usize);
    }
    let mut calls = Vec::new();
    zero(&dev.0.path, &mut |done, total| calls.push((done, total))).unwrap();
    assert_eq!(calls, [(total, total)]);
    for at in places {
        assert_all(&read_at(&dev.0.path, at, MIB as usize), 0, "the device");
        assert_all(&read_at(&img, at, MIB as usize), 0, "the image");
    }
    assert_eq!(fs::metadata(&img).unwrap().len(), total);
    assert_eq!(in_use(&dev.0.path).unwrap(), None);
}

#[test]
fn wipe_signatures_removes_ext4_but_not_the_middle() {
    let Some((_dir, base)) = setup("wipe_signatures_removes_ext4_but_not_the_middle") else {
        return;
    };
    let total = 64 * MIB;
    let img = image(&base, "img", total);
    let dev = attached(&img);
    make(&dev.0.path, "ext4").unwrap();
    assert_eq!(signature(&dev.0.path).unwrap().as_deref(), Some("ext4"));
    write_pattern(&dev.0.path, 32 * MIB, MIB as usize);
    write_pattern(&dev.0.path, total - 8192, 4096);

    wipe_signatures(&dev.0.path).unwrap();
    assert_eq!(signature(&dev.0.path).unwrap(), None);
    assert_all(&read_at(&dev.0.path, 0, MIB as usize), 0, "the first MiB");
    assert_all(
        &read_at(&dev.0.path, total - MIB, MIB as usize),
        0,
        "the last MiB",
    );
    assert_all(
        &read_at(&dev.0.path, 32 * MIB, MIB as usize),
        PATTERN,
        "the middle",
    );
    // Through to the image.
    assert_all(&read_at(&img, 0, MIB as usize), 0, "the image's first MiB");
    assert_all(
        &read_at(&img, 32 * MIB, MIB as usize),
        PATTERN,
        "the image's middle",
    );
}

#[test]
fn a_read_only_device_is_refused_with_eperm() {
    let Some((_dir, base)) = setup("a_read_only_device_is_refused_with_eperm") else {
        return;
    };
    let img = image(&base, "img", 16 * MIB);
    fs::write(&img, vec![PATTERN; 16 * MIB as usize]).unwrap();
    let cfg = LoopConfig {
        read_only: true,
        ..CONFIG
    };
    let dev = Attached(attach(&img, &cfg).unwrap());
    let mut progress = |done, total| panic!("progress {done}/{total} of a refused call");
    let results: [(&str, io::Result<()>); 3] = [
        ("discard", discard(&dev.0.path, &mut progress)),
        ("zero", zero(&dev.0.path, &mut progress)),
        ("wipe_signatures", wipe_signatures(&dev.0.path)),
    ];
    for (name, result) in results {
        let err = result.unwrap_err();
        assert_eq!(os_error(&err), Some(libc::EPERM), "{name}: {err}");
    }
    assert_all(&fs::read(&img).unwrap(), PATTERN, "the image");
}

#[test]
fn a_regular_file_is_invalid_input() {
    // No root needed: the path is refused before it is opened.
    let file = tempfile::NamedTempFile::new().unwrap();
    fs::write(file.path(), vec![PATTERN; MIB as usize]).unwrap();
    let path = file.path();
    let mut progress = |done, total| panic!("progress {done}/{total} of a refused call");
    let results: [(&str, io::Result<()>); 6] = [
        ("identity", identity(path).map(drop)),
        ("in_use", in_use(path).map(drop)),
        ("discard_zeroes", discard_zeroes(path).map(drop)),
        ("discard", discard(path, &mut progress)),
        ("zero", zero(path, &mut progress)),
        ("wipe_signatures", wipe_signatures(path)),
    ];
    for (name, result) in results {
        let err = result.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{name}: {err}");
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("{} is not a block device", path.display())),
            "{name}: {msg}"
        );
    }
    assert_all(&fs::read(path).unwrap(), PATTERN, "the file");
}

//! Tests with real loop devices, block devices, mkfs and filesystem mounts.
//! They need root. Each test makes its own sparse image files in a temporary
//! directory, and every loop device it attaches is detached by a guard, even
//! on panic, so no test leaves a loop device behind. Mounts are made in a
//! private mount namespace of the test's own thread and also undone by a
//! guard.

mod common;

use std::{
    fs,
    io::{ErrorKind, Write},
    path::{Path, PathBuf},
};

use common::{CONFIG, MIB, image, installed, setup};
use loam_sys::{
    blockdev::{logical_block_size, size_bytes},
    loopdev::{LoopConfig, LoopDevice, attach, backs, detach, direct_io, find, find_under},
    mkfs::{make, signature},
    mount::{mount_fs, unmount},
    mountinfo::{MountInfo, MountTable},
    testutil::{Mounted, enter_private_mount_namespace, skip},
};

/// Loop devices this test attached and has not detached yet; detached on
/// drop. Declare it before any mount guard, so mounts go first.
#[derive(Default)]
struct Attached(Vec<LoopDevice>);

impl Attached {
    #[track_caller]
    fn attach(&mut self, file: &Path, cfg: &LoopConfig) -> LoopDevice {
        let dev = attach(file, cfg).unwrap();
        self.0.push(dev.clone());
        dev
    }

    /// Detaches `dev`, which this guard then forgets.
    #[track_caller]
    fn detach(&mut self, dev: &LoopDevice) {
        self.0.retain(|d| d != dev);
        detach(dev).unwrap();
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        for dev in &self.0 {
            if let Err(e) = detach(dev) {
                let _ = writeln!(std::io::stderr(), "leaking {}: {e}", dev.path.display());
            }
        }
    }
}

fn sysfs(dev: &LoopDevice, attr: &str) -> String {
    fs::read_to_string(format!("/sys/block/loop{}/{attr}", dev.number))
        .unwrap()
        .trim_end()
        .to_owned()
}

/// Asserts that no loop device is backed by `file`.
#[track_caller]
fn assert_not_found(file: &Path) {
    let found = find(file).unwrap();
    assert!(found.is_empty(), "{}: {found:?}", file.display());
}

/// In a private mount namespace of the thread: the sparse file `base/img` of `size` bytes attached with
/// [`CONFIG`] (detached by `attached`), and an empty directory `base/target` to mount it on. Returns the file,
/// the device and the directory.
fn attached_with_target(attached: &mut Attached, base: &Path, size: u64) -> (PathBuf, LoopDevice, PathBuf) {
    enter_private_mount_namespace().unwrap();
    let img = image(base, "img", size);
    let target = base.join("target");
    fs::create_dir(&target).unwrap();
    let dev = attached.attach(&img, &CONFIG);
    (img, dev, target)
}

/// Formats `dev` as `fs_type`, which the probe then finds where it found nothing before.
#[track_caller]
fn make_and_probe(dev: &LoopDevice, fs_type: &str) {
    assert_eq!(signature(&dev.path).unwrap(), None);
    make(&dev.path, fs_type).unwrap();
    assert_eq!(signature(&dev.path).unwrap().as_deref(), Some(fs_type));
}

/// Mounts `dev` read-write on `target` as `fs_type` with `noatime` (a VFS flag) and `discard` (a filesystem
/// option), which the mount table shows each in its place; returns the guard and the mount table's entry.
#[track_caller]
fn mount_with_options(dev: &LoopDevice, target: &Path, fs_type: &str) -> (Mounted, MountInfo) {
    let options = ["noatime".to_owned(), "discard".to_owned()];
    mount_fs(&dev.path, target, fs_type, &options, false).unwrap();
    let mounted = Mounted(target.to_owned());
    let table = MountTable::read_self().unwrap();
    let top = table.top_mount_at(target).unwrap();
    assert_eq!(top.fs_type, fs_type);
    assert!(top.mount_options.iter().any(|o| o == "noatime"), "{top:?}");
    assert!(top.super_options.iter().any(|o| o == "discard"), "{top:?}");
    (mounted, top.clone())
}

/// Writes `text` to `dir/f` and reads it back.
#[track_caller]
fn write_and_read_back(dir: &Path, text: &[u8]) {
    fs::write(dir.join("f"), text).unwrap();
    assert_eq!(fs::read(dir.join("f")).unwrap(), text);
}

/// Mounts `dev` read-only on `target` as `fs_type`: `f` there still holds `text`, and writing fails with
/// `EROFS`. Returns the guard.
#[track_caller]
fn mount_read_only(dev: &LoopDevice, target: &Path, fs_type: &str, text: &[u8]) -> Mounted {
    mount_fs(&dev.path, target, fs_type, &[], true).unwrap();
    let mounted = Mounted(target.to_owned());
    assert_eq!(fs::read(target.join("f")).unwrap(), text);
    let err = fs::write(target.join("g"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
    mounted
}

/// Unmounts what `mounted` guards, failing if that fails, and disarms the guard.
#[track_caller]
fn unmount_now(mounted: Mounted) {
    unmount(&mounted.0).unwrap();
    std::mem::forget(mounted);
}

#[test]
fn attach_gives_a_block_device_that_find_finds() {
    let Some((_dir, base)) = setup("attach_gives_a_block_device_that_find_finds") else {
        return;
    };
    let img = image(&base, "img", 64 * MIB);
    let other = image(&base, "other", 64 * MIB);
    let mut attached = Attached::default();

    let dev = attached.attach(&img, &CONFIG);
    assert_eq!(dev.path, PathBuf::from(format!("/dev/loop{}", dev.number)));
    assert_eq!(dev.major, 7, "{dev:?}");
    assert_eq!(sysfs(&dev, "dev"), format!("{}:{}", dev.major, dev.minor));
    assert_eq!(size_bytes(&dev.path).unwrap(), 64 * MIB);
    assert_eq!(logical_block_size(&dev.path).unwrap(), 4096);
    assert_eq!(sysfs(&dev, "loop/backing_file"), img.to_string_lossy());
    // Never autoclear, never partscan.
    assert_eq!(sysfs(&dev, "loop/autoclear"), "0");
    assert_eq!(sysfs(&dev, "loop/partscan"), "0");
    assert_eq!(sysfs(&dev, "ro"), "0");
    // Direct I/O depends on the temporary directory's filesystem.
    assert_eq!(direct_io(&dev).unwrap(), sysfs(&dev, "loop/dio") == "1");

    assert_eq!(find(&img).unwrap(), std::slice::from_ref(&dev));
    // Through another spelling of the same path, too.
    assert_eq!(
        find(&base.join(".").join("img")).unwrap(),
        std::slice::from_ref(&dev)
    );
    assert_not_found(&other);
    assert_not_found(&base.join("missing"));

    // Attaching twice is the caller's problem, but find shows both.
    let second = attached.attach(&img, &CONFIG);
    assert_ne!(second.number, dev.number);
    let mut both = vec![dev.clone(), second.clone()];
    both.sort_by_key(|d| d.number);
    assert_eq!(find(&img).unwrap(), both);

    attached.detach(&second);
    assert_eq!(find(&img).unwrap(), std::slice::from_ref(&dev));
    attached.detach(&dev);
    assert_not_found(&img);
    let err = direct_io(&dev).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
}

/// An unbound loop device, added with `LOOP_CTL_ADD` under a high number and
/// removed again on drop.
///
/// Detaching a device twice would be the obvious test of "not bound is
/// detached", but between the two calls the kernel may hand the freed device
/// to another attacher (it gives out the lowest free one), whose device the
/// second call would then take away. Nobody is handed this one unless all
/// lower devices are in use.
struct Spare(LoopDevice);

const LOOP_CTL_ADD: u32 = 0x4C80;
const LOOP_CTL_REMOVE: u32 = 0x4C81;

/// `ioctl(/dev/loop-control, request, number)`.
fn loop_control(request: u32, number: u32) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let control = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/loop-control")?;
    // SAFETY: LOOP_CTL_ADD and LOOP_CTL_REMOVE take the device number as an
    // integer argument and touch no user memory; the fd is open.
    let rc = unsafe { libc::ioctl(control.as_raw_fd(), request as _, libc::c_ulong::from(number)) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

impl Spare {
    fn add() -> Self {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        for number in 3000u32..3100 {
            match loop_control(LOOP_CTL_ADD, number) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => continue,
                Err(e) => panic!("LOOP_CTL_ADD {number}: {e}"),
            }
            // Removed on drop from here on, even if a check below fails.
            let mut spare = Self(LoopDevice {
                number,
                path: PathBuf::from(format!("/dev/loop{number}")),
                major: 0,
                minor: 0,
            });
            let st = fs::metadata(&spare.0.path).unwrap();
            assert!(st.file_type().is_block_device(), "{st:?}");
            spare.0.major = rustix::fs::major(st.rdev());
            spare.0.minor = rustix::fs::minor(st.rdev());
            return spare;
        }
        panic!("no free loop device number in 3000..3100");
    }
}

impl Drop for Spare {
    fn drop(&mut self) {
        let _ = loop_control(LOOP_CTL_REMOVE, self.0.number);
    }
}

#[test]
fn detach_of_a_detached_device_is_ok() {
    let Some((_dir, base)) = setup("detach_of_a_detached_device_is_ok") else {
        return;
    };
    let img = image(&base, "img", 16 * MIB);
    let mut attached = Attached::default();
    let dev = attached.attach(&img, &CONFIG);
    attached.detach(&dev);
    assert_not_found(&img);

    let spare = Spare::add();
    assert!(!Path::new(&format!("/sys/block/loop{}/loop", spare.0.number)).exists());
    detach(&spare.0).unwrap();
    detach(&spare.0).unwrap();
    // A stale description of a device is refused, not acted on.
    let wrong = LoopDevice {
        minor: spare.0.minor + 1,
        ..spare.0.clone()
    };
    let err = detach(&wrong).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
}

#[test]
fn a_replaced_or_deleted_file_is_not_found() {
    let Some((_dir, base)) = setup("a_replaced_or_deleted_file_is_not_found") else {
        return;
    };
    let mut attached = Attached::default();

    // Deleted and recreated: sysfs shows "<path> (deleted)".
    let img = image(&base, "img", 16 * MIB);
    let dev = attached.attach(&img, &CONFIG);
    assert!(backs(&dev, &img).unwrap());
    let other = image(&base, "other", 16 * MIB);
    assert!(!backs(&dev, &other).unwrap(), "another file");
    fs::remove_file(&img).unwrap();
    assert_not_found(&img);
    assert!(!backs(&dev, &img).unwrap(), "the path is gone");
    image(&base, "img", 16 * MIB);
    assert_eq!(
        sysfs(&dev, "loop/backing_file"),
        format!("{} (deleted)", img.display())
    );
    assert_not_found(&img);
    assert!(!backs(&dev, &img).unwrap(), "a new file at the path");
    attached.detach(&dev);
    assert!(!backs(&dev, &other).unwrap());
}

#[test]
fn find_under_gives_the_devices_of_a_directorys_own_files() {
    let Some((_dir, base)) = setup("find_under_gives_the_devices_of_a_directorys_own_files") else {
        return;
    };
    let mut attached = Attached::default();
    let (a, b) = (image(&base, "a.img", 16 * MIB), image(&base, "b.img", 16 * MIB));
    fs::create_dir(base.join("sub")).unwrap();
    let nested = image(&base.join("sub"), "c.img", 16 * MIB);
    let (da, db) = (attached.attach(&a, &CONFIG), attached.attach(&b, &CONFIG));
    let dc = attached.attach(&nested, &CONFIG);
    let mut want = vec![(a.clone(), da.clone()), (b.clone(), db.clone())];
    want.sort_by_key(|(_, d)| d.number);
    assert_eq!(
        find_under(&base).unwrap(),
        want,
        "only files directly in the directory"
    );
    assert_eq!(find_under(&base.join("sub")).unwrap(), vec![(nested.clone(), dc)]);
    // A deleted backing file is not listed; a detached device neither.
    fs::remove_file(&b).unwrap();
    assert_eq!(find_under(&base).unwrap(), vec![(a.clone(), da.clone())]);
    attached.detach(&da);
    assert!(find_under(&base).unwrap().is_empty());
    assert!(find_under(&base.join("missing")).unwrap().is_empty());
}

#[test]
fn a_different_file_at_the_same_path_is_not_found() {
    let Some((_dir, base)) = setup("a_different_file_at_the_same_path_is_not_found") else {
        return;
    };
    enter_private_mount_namespace().unwrap();
    let mut attached = Attached::default();
    let img = image(&base, "img", 16 * MIB);
    let dev = attached.attach(&img, &CONFIG);

    // A tmpfs over the directory hides the image behind another file at the
    // same path; sysfs still names the path, only the inode check tells.
    rustix::mount::mount(
        "loam-test",
        &base,
        "tmpfs",
        rustix::mount::MountFlags::empty(),
        c"size=1m",
    )
    .unwrap();
    let over = Mounted(base.clone());
    fs::write(&img, b"not the image").unwrap();
    assert_eq!(sysfs(&dev, "loop/backing_file"), img.to_string_lossy());
    assert_not_found(&img);
    assert!(!backs(&dev, &img).unwrap(), "only the inode check tells");

    drop(over);
    assert_eq!(find(&img).unwrap(), std::slice::from_ref(&dev));
    assert!(backs(&dev, &img).unwrap());
    attached.detach(&dev);
    assert!(!backs(&dev, &img).unwrap(), "detached");
}

#[test]
fn read_only_attach_refuses_writes() {
    let Some((_dir, base)) = setup("read_only_attach_refuses_writes") else {
        return;
    };
    let img = image(&base, "img", 16 * MIB);
    let mut attached = Attached::default();
    let cfg = LoopConfig {
        read_only: true,
        ..CONFIG
    };
    let dev = attached.attach(&img, &cfg);
    assert_eq!(sysfs(&dev, "ro"), "1");
    assert_eq!(find(&img).unwrap(), std::slice::from_ref(&dev));
    let written = fs::OpenOptions::new()
        .write(true)
        .open(&dev.path)
        .and_then(|mut f| f.write_all(&[1; 4096]).and_then(|()| f.sync_all()));
    let err = written.unwrap_err();
    assert!(
        matches!(err.raw_os_error(), Some(libc::EPERM | libc::EROFS | libc::EACCES)),
        "{err}"
    );
    assert!(fs::read(&img).unwrap().iter().all(|&b| b == 0));
}

#[test]
fn buffered_attach_when_direct_io_is_not_asked_for() {
    let Some((_dir, base)) = setup("buffered_attach_when_direct_io_is_not_asked_for") else {
        return;
    };
    let img = image(&base, "img", 16 * MIB);
    let mut attached = Attached::default();
    let cfg = LoopConfig {
        direct_io: false,
        block_size: 512,
        read_only: false,
    };
    let dev = attached.attach(&img, &cfg);
    assert!(!direct_io(&dev).unwrap());
    assert_eq!(logical_block_size(&dev.path).unwrap(), 512);
}

#[test]
fn ext4_is_made_probed_and_mounted() {
    let Some((_dir, base)) = setup("ext4_is_made_probed_and_mounted") else {
        return;
    };
    let mut attached = Attached::default();
    let (img, dev, target) = attached_with_target(&mut attached, &base, 64 * MIB);

    make_and_probe(&dev, "ext4");
    assert_eq!(fs::metadata(&img).unwrap().len(), 64 * MIB);

    let (mounted, top) = mount_with_options(&dev, &target, "ext4");
    assert_eq!(top.source, dev.path.to_string_lossy());
    assert_eq!((top.major, top.minor), (dev.major, dev.minor));
    assert!(!top.is_read_only());
    write_and_read_back(&target, b"hello ext4");
    unmount_now(mounted);
    assert!(!MountTable::read_self().unwrap().is_mount_point(&target));
    assert!(!target.join("f").exists());

    // Mounted again, read-only: the data is there and writes fail.
    let mounted = mount_read_only(&dev, &target, "ext4", b"hello ext4");
    assert!(
        MountTable::read_self()
            .unwrap()
            .top_mount_at(&target)
            .unwrap()
            .is_read_only()
    );
    unmount_now(mounted);

    attached.detach(&dev);
    assert_not_found(&img);
}

#[test]
fn mount_fs_errors_name_device_and_target() {
    let Some((_dir, base)) = setup("mount_fs_errors_name_device_and_target") else {
        return;
    };
    let mut attached = Attached::default();
    let (_img, dev, target) = attached_with_target(&mut attached, &base, 16 * MIB);
    // Nothing on the device.
    let err = mount_fs(&dev.path, &target, "ext4", &[], false).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.starts_with("mounting ") && msg.contains(&*dev.path.to_string_lossy()) && msg.contains("target"),
        "{msg}"
    );
    assert!(!MountTable::read_self().unwrap().is_mount_point(&target));
}

#[test]
fn xfs_is_made_probed_and_mounted() {
    let test = "xfs_is_made_probed_and_mounted";
    let Some((_dir, base)) = setup(test) else {
        return;
    };
    if !installed("mkfs.xfs") {
        skip(test, "mkfs.xfs (xfsprogs) is not installed");
        return;
    }
    let mut attached = Attached::default();
    let (_img, dev, target) = attached_with_target(&mut attached, &base, 320 * MIB);

    make_and_probe(&dev, "xfs");

    let (mounted, _) = mount_with_options(&dev, &target, "xfs");
    write_and_read_back(&target, b"hello xfs");
    unmount_now(mounted);

    let mounted = mount_read_only(&dev, &target, "xfs", b"hello xfs");

    // Formatting again over a filesystem: ext4 replaces xfs.
    unmount_now(mounted);
    make(&dev.path, "ext4").unwrap();
    assert_eq!(signature(&dev.path).unwrap().as_deref(), Some("ext4"));
}

#[test]
fn make_refuses_other_types() {
    let Some((_dir, base)) = setup("make_refuses_other_types") else {
        return;
    };
    let img = image(&base, "img", 16 * MIB);
    let mut attached = Attached::default();
    let dev = attached.attach(&img, &CONFIG);
    let err = make(&dev.path, "btrfs").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(err.to_string().contains("ext4, xfs"), "{err}");
    assert_eq!(signature(&dev.path).unwrap(), None);
}

#[test]
fn detach_of_a_mounted_device_completes_on_unmount() {
    let Some((_dir, base)) = setup("detach_of_a_mounted_device_completes_on_unmount") else {
        return;
    };
    let mut attached = Attached::default();
    let (img, dev, target) = attached_with_target(&mut attached, &base, 64 * MIB);
    make(&dev.path, "ext4").unwrap();
    mount_fs(&dev.path, &target, "ext4", &[], false).unwrap();
    let mounted = Mounted(target.clone());

    // The kernel defers the detach to the last close.
    detach(&dev).unwrap();
    assert_eq!(sysfs(&dev, "loop/autoclear"), "1");
    assert_eq!(find(&img).unwrap(), std::slice::from_ref(&dev));
    drop(mounted);
    // Detached now, and the number may be reused: not the guard's any more.
    attached.0.clear();
    assert_not_found(&img);
}

//! Tests of project quota on real filesystems: what the calls give where
//! there is no project quota (the temporary directory's filesystem, tmpfs,
//! btrfs, ext4 without the project feature), and project ids, limits and
//! usage on ext4 and XFS mounted with `prjquota` where the kernel has project
//! quota (where it has not, those tests report a kernel gap and stop).
//!
//! All but the first need root. Each makes its filesystems in sparse image
//! files in a temporary directory, attaches them to loop devices and mounts
//! them in a private mount namespace of the test's own thread; guards
//! unmount and detach on drop, even on panic.

mod common;

use std::{
    fs,
    io::{self, ErrorKind},
    path::{Path, PathBuf},
    process::Command,
};

use common::{Attached, CONFIG, MIB, image, root_with, syncfs, write_file};
use loam_sys::{
    loopdev::attach,
    mount::{mount_fs, unmount},
    mountinfo::MountTable,
    os_error,
    quota::{ProjectQuotaState, ProjectUsage, get_project, set_limit, set_project, state, usage},
    testutil::{Mounted, enter_private_mount_namespace, require_root, skip, skip_kernel_gap},
};

/// The project id the tests give their directories.
const ID: u32 = 4242;

/// A filesystem made in an image file of its own, attached to a loop device,
/// with an empty directory `mnt` to mount it on. Fields drop in order:
/// detach, remove the temporary directory; mount guards, made later by
/// [`Disk::mount`], drop before it.
struct Disk {
    attached: Attached,
    mnt: PathBuf,
    _dir: tempfile::TempDir,
}

impl Disk {
    /// Makes a `size`-byte image, attaches it, runs `mkfs` (a program and its
    /// arguments) on the device.
    fn new(size: u64, mkfs: &[&str]) -> Disk {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().canonicalize().unwrap();
        let img = image(&base, "img", size);
        let attached = Attached(attach(&img, &CONFIG).unwrap());
        // On the device, so mkfs fits the filesystem to its 4096-byte sectors.
        let out = Command::new(mkfs[0])
            .args(&mkfs[1..])
            .arg(&attached.0.path)
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", mkfs[0]));
        assert!(
            out.status.success(),
            "{}: {}",
            mkfs.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        let mnt = base.join("mnt");
        fs::create_dir(&mnt).unwrap();
        Disk {
            attached,
            mnt,
            _dir: dir,
        }
    }

    /// Mounts the filesystem on `mnt`; the guard unmounts it.
    fn mount(&self, fs_type: &str, options: &[&str], read_only: bool) -> io::Result<Mounted> {
        let options: Vec<String> = options.iter().map(|o| o.to_string()).collect();
        mount_fs(&self.attached.0.path, &self.mnt, fs_type, &options, read_only)?;
        Ok(Mounted(self.mnt.clone()))
    }
}

/// The errno of `err` by name, for messages.
fn errno_name(err: &io::Error) -> String {
    match os_error(err) {
        Some(libc::EINVAL) => "EINVAL".to_owned(),
        Some(libc::EOPNOTSUPP) => "EOPNOTSUPP".to_owned(),
        Some(libc::ENOSYS) => "ENOSYS".to_owned(),
        Some(libc::ESRCH) => "ESRCH".to_owned(),
        Some(libc::EPERM) => "EPERM".to_owned(),
        Some(libc::ENODEV) => "ENODEV".to_owned(),
        Some(n) => format!("errno {n}"),
        None => format!("{:?}", err.kind()),
    }
}

/// Asserts that `err` is errno `want` and that its message names `path`.
#[track_caller]
fn assert_errno(err: &io::Error, want: i32, path: &Path) {
    assert_eq!(os_error(err), Some(want), "{err}");
    assert!(err.to_string().contains(&*path.to_string_lossy()), "{err}");
}

/// What every call gives on a filesystem without project ids or quota:
/// `state` none, `get_project` (0, false), `set_project` refused with
/// `EOPNOTSUPP` and nothing left changed, `set_limit` and `usage` refused
/// with `quota_errno`.
fn assert_no_project_quota(mnt: &Path, quota_errno: i32) {
    let dir = mnt.join("d");
    fs::create_dir(&dir).unwrap();
    assert_eq!(state(mnt).unwrap(), None);
    assert_eq!(state(&dir).unwrap(), None);
    assert_eq!(get_project(&dir).unwrap(), (0, false));

    let err = set_project(&dir, ID).unwrap_err();
    assert_errno(&err, libc::EOPNOTSUPP, &dir);
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
    assert!(err.to_string().contains("FS_IOC_FSSETXATTR"), "{err}");
    assert!(err.to_string().contains("no project ids"), "{err}");
    // ext4 sets the inherit flag before it refuses the id: put back.
    assert_eq!(get_project(&dir).unwrap(), (0, false));

    let err = set_limit(mnt, ID, 4 * MIB, 100).unwrap_err();
    assert_errno(&err, quota_errno, mnt);
    assert!(err.to_string().contains("Q_XSETQLIM"), "{err}");
    let err = usage(mnt, ID).unwrap_err();
    assert_errno(&err, quota_errno, mnt);
    assert!(err.to_string().contains("Q_XGETQUOTA"), "{err}");
}

#[test]
fn the_temporary_directory_has_no_project_quota() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().canonicalize().unwrap();
    let table = MountTable::read_self().unwrap();
    let mount = table.containing(&path).unwrap();
    let has_quota = mount
        .super_options
        .iter()
        .chain(&mount.mount_options)
        .any(|o| o.contains("quota") || o.contains("qnoenforce"));
    let st = state(&path).unwrap();
    if has_quota {
        skip(
            "the_temporary_directory_has_no_project_quota",
            &format!(
                "{} ({}) is mounted with quota options: {st:?}",
                mount.mount_point.display(),
                mount.fs_type
            ),
        );
        return;
    }
    assert_eq!(st, None, "{} on {}", mount.fs_type, mount.mount_point.display());
}

#[test]
fn tmpfs_has_no_project_quota() {
    if !require_root("tmpfs_has_no_project_quota") {
        return;
    }
    enter_private_mount_namespace().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().canonicalize().unwrap().join("mnt");
    fs::create_dir(&mnt).unwrap();
    rustix::mount::mount(
        "loam-test",
        &mnt,
        "tmpfs",
        rustix::mount::MountFlags::empty(),
        c"size=4m",
    )
    .unwrap();
    let _mounted = Mounted(mnt.clone());
    // tmpfs has no quota operations unless mounted with quota options (and
    // built with CONFIG_TMPFS_QUOTA): ENOSYS.
    assert_no_project_quota(&mnt, libc::ENOSYS);
}

#[test]
fn btrfs_has_no_project_quota() {
    if !root_with("btrfs_has_no_project_quota", "mkfs.btrfs", "btrfs-progs") {
        return;
    }
    enter_private_mount_namespace().unwrap();
    let disk = Disk::new(256 * MIB, &["mkfs.btrfs", "-q", "-f"]);
    let _mounted = disk.mount("btrfs", &[], false).unwrap();
    // btrfs has no quota operations (its quotas are qgroups): ENOSYS.
    assert_no_project_quota(&disk.mnt, libc::ENOSYS);
}

#[test]
fn ext4_without_quota_has_no_project_ids() {
    if !require_root("ext4_without_quota_has_no_project_ids") {
        return;
    }
    enter_private_mount_namespace().unwrap();
    let disk = Disk::new(64 * MIB, &["mkfs.ext4", "-q", "-F", "-O", "^quota,^project"]);
    let _mounted = disk.mount("ext4", &[], false).unwrap();
    // ext4 has quota operations but no quota on: the per-id commands give
    // ESRCH, the state ENOSYS (no quota flag at all), which state() says is
    // no project quota.
    assert_no_project_quota(&disk.mnt, libc::ESRCH);

    // Project id 0 is accepted (ext4 refuses only other ids without the
    // feature), so a set_project that works proves nothing about quota.
    let dir = disk.mnt.join("zero");
    fs::create_dir(&dir).unwrap();
    set_project(&dir, 0).unwrap();
    assert_eq!(get_project(&dir).unwrap(), (0, true));
}

/// Makes a filesystem with `mkfs` and mounts it as `fs_type` with
/// `prjquota`; `None` (reported as a kernel gap) when this kernel refuses the
/// mount but mounts the same filesystem read-only without quota.
fn prjquota_disk(test: &str, fs_type: &str, size: u64, mkfs: &[&str]) -> Option<(Disk, Mounted)> {
    enter_private_mount_namespace().unwrap();
    let disk = Disk::new(size, mkfs);
    let err = match disk.mount(fs_type, &["prjquota"], false) {
        Ok(mounted) => return Some((disk, mounted)),
        Err(e) => e,
    };
    // The filesystem is good if it mounts read-only, where neither ext4 nor
    // XFS wants quota support: it is the kernel that lacks project quota.
    match disk.mount(fs_type, &[], true) {
        Ok(mounted) => {
            drop(mounted);
            skip_kernel_gap(
                test,
                &format!(
                    "{fs_type}: mount with prjquota failed ({}): this kernel has no project quota ({err})",
                    errno_name(&err)
                ),
            );
            None
        }
        Err(ro) => panic!("{fs_type} mounts neither with prjquota ({err}) nor read-only ({ro})"),
    }
}

/// Project ids, limits and usage on `mnt`, a filesystem mounted with
/// `prjquota`.
fn exercise_project_quota(mnt: &Path) {
    assert_eq!(
        state(mnt).unwrap(),
        Some(ProjectQuotaState {
            accounting: true,
            enforcing: true
        })
    );
    let vol = mnt.join("vol");
    fs::create_dir(&vol).unwrap();
    assert_eq!(state(&vol).unwrap(), state(mnt).unwrap());
    assert_eq!(get_project(&vol).unwrap(), (0, false));
    // A project nobody uses: no usage, no limits.
    assert_eq!(usage(mnt, ID).unwrap(), ProjectUsage::default());

    set_project(&vol, ID).unwrap();
    assert_eq!(get_project(&vol).unwrap(), (ID, true));
    set_project(&vol, ID).unwrap();
    assert_eq!(get_project(&vol).unwrap(), (ID, true));
    let sub = vol.join("sub");
    fs::create_dir(&sub).unwrap();
    assert_eq!(get_project(&sub).unwrap(), (ID, true), "not inherited");

    set_limit(mnt, ID, 4 * MIB, 1000).unwrap();
    let before = usage(mnt, ID).unwrap();
    assert_eq!(
        (before.bytes_limit, before.inodes_limit),
        (4 * MIB, 1000),
        "{before:?}"
    );
    assert!(before.inodes >= 2, "{before:?}");
    // Any directory of the filesystem will do.
    assert_eq!(usage(&sub, ID).unwrap().bytes_limit, 4 * MIB);

    let (err, held) = write_file(&sub.join("big"), 8 * MIB).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EDQUOT), "{err}");
    assert!((3 * MIB..=4 * MIB).contains(&held), "{held}");
    syncfs(mnt);
    let after = usage(mnt, ID).unwrap();
    assert!(
        (held..=5 * MIB).contains(&after.bytes),
        "{held} bytes written: {after:?}"
    );
    assert_eq!(after.inodes, before.inodes + 1, "{after:?}");
    assert_eq!((after.bytes_limit, after.inodes_limit), (4 * MIB, 1000));

    // Limits round up to 512 bytes.
    set_limit(mnt, ID, 5 * MIB + 1, 1000).unwrap();
    assert_eq!(usage(mnt, ID).unwrap().bytes_limit, 5 * MIB + 512);

    // Cleared: writing goes on.
    set_limit(mnt, ID, 0, 0).unwrap();
    let cleared = usage(mnt, ID).unwrap();
    assert_eq!((cleared.bytes_limit, cleared.inodes_limit), (0, 0), "{cleared:?}");
    write_file(&sub.join("more"), 8 * MIB).unwrap();
    syncfs(mnt);
    let more = usage(mnt, ID).unwrap();
    assert!(more.bytes >= held + 8 * MIB, "{more:?}");

    // An inode limit: one more file, then EDQUOT.
    set_limit(mnt, ID, 0, more.inodes + 1).unwrap();
    fs::File::create_new(sub.join("one")).unwrap();
    let err = fs::File::create_new(sub.join("two")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EDQUOT), "{err}");
    set_limit(mnt, ID, 0, 0).unwrap();

    // Another directory is not charged to the project.
    let other = mnt.join("other");
    fs::create_dir(&other).unwrap();
    write_file(&other.join("f"), MIB).unwrap();
    syncfs(mnt);
    assert_eq!(usage(mnt, ID).unwrap().inodes, more.inodes + 1);
}

#[test]
fn ext4_project_quota_limits_a_directory() {
    let test = "ext4_project_quota_limits_a_directory";
    if !require_root(test) {
        return;
    }
    let mkfs = ["mkfs.ext4", "-q", "-F", "-O", "quota,project"];
    let Some((disk, _mounted)) = prjquota_disk(test, "ext4", 64 * MIB, &mkfs) else {
        return;
    };
    exercise_project_quota(&disk.mnt);
}

#[test]
fn xfs_project_quota_limits_a_directory() {
    let test = "xfs_project_quota_limits_a_directory";
    if !root_with(test, "mkfs.xfs", "xfsprogs") {
        return;
    }
    let Some((disk, _mounted)) = prjquota_disk(test, "xfs", 320 * MIB, &["mkfs.xfs", "-q", "-f"]) else {
        return;
    };
    exercise_project_quota(&disk.mnt);
}

#[test]
fn xfs_without_quota_keeps_project_ids() {
    let test = "xfs_without_quota_keeps_project_ids";
    if !root_with(test, "mkfs.xfs", "xfsprogs") {
        return;
    }
    enter_private_mount_namespace().unwrap();
    let disk = Disk::new(320 * MIB, &["mkfs.xfs", "-q", "-f"]);
    let mounted = disk.mount("xfs", &[], false).unwrap();
    let mnt = &disk.mnt;
    // XFS mounted without quota (or built without it) has no quota on,
    // but every inode has a project id.
    assert_eq!(state(mnt).unwrap(), None);
    let vol = mnt.join("vol");
    fs::create_dir(&vol).unwrap();
    assert_eq!(get_project(&vol).unwrap(), (0, false));
    set_project(&vol, ID).unwrap();
    assert_eq!(get_project(&vol).unwrap(), (ID, true));
    let sub = vol.join("sub");
    fs::create_dir(&sub).unwrap();
    assert_eq!(get_project(&sub).unwrap(), (ID, true));
    // The quota calls: no quota on.
    let err = set_limit(mnt, ID, 4 * MIB, 0).unwrap_err();
    assert_errno(&err, libc::ENOSYS, mnt);
    let err = usage(mnt, ID).unwrap_err();
    assert_errno(&err, libc::ENOSYS, mnt);
    drop(mounted);
    // Unmounted: the mount point is an empty directory again.
    assert!(fs::read_dir(mnt).unwrap().next().is_none());
    let err = unmount(mnt).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
}

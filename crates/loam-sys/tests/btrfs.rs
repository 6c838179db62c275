//! Tests of btrfs subvolumes and quota groups on real btrfs filesystems. They
//! need root and mkfs.btrfs (btrfs-progs). Each test makes its own filesystem
//! in a sparse image file in a temporary directory, attaches it to a loop
//! device and mounts it in a private mount namespace of the test's own
//! thread; guards unmount and detach on drop, even on panic.

mod common;

use std::{
    fs,
    io::{ErrorKind, Write},
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use common::{Attached, CONFIG, MIB, image, root_with, syncfs, write_file};
use loam_sys::{
    btrfs::{
        Limit, QuotaMode, create_subvolume, delete_subvolume, enable_quota, fsid, is_btrfs, qgroup,
        qgroup_ids, quota_mode, rescan_running, set_limit, subvolume_id, subvolumes,
    },
    loopdev::{LoopDevice, attach},
    mount::mount_fs,
    os_error,
    testutil::{Mounted, enter_private_mount_namespace},
};

/// A btrfs filesystem of its own, mounted at `mnt`. Fields drop in order:
/// unmount, detach, remove the temporary directory.
struct Btrfs {
    mnt: PathBuf,
    dev: LoopDevice,
    _mounted: Mounted,
    _attached: Attached,
    dir: tempfile::TempDir,
}

/// Makes and mounts a fresh btrfs filesystem; `None` = skip.
fn btrfs(test: &str) -> Option<Btrfs> {
    if !root_with(test, "mkfs.btrfs", "btrfs-progs") {
        return None;
    }
    enter_private_mount_namespace().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().canonicalize().unwrap();
    let img = image(&base, "img", 256 * MIB);
    let out = Command::new("mkfs.btrfs")
        .arg("-q")
        .arg("-f")
        .arg(&img)
        .output()
        .unwrap();
    assert!(out.status.success(), "mkfs.btrfs: {out:?}");
    let attached = Attached(attach(&img, &CONFIG).unwrap());
    let mnt = base.join("mnt");
    fs::create_dir(&mnt).unwrap();
    mount_fs(&attached.0.path, &mnt, "btrfs", &[], false).unwrap();
    let mounted = Mounted(mnt.clone());
    Some(Btrfs {
        mnt,
        dev: attached.0.clone(),
        _mounted: mounted,
        _attached: attached,
        dir,
    })
}

fn sysfs_qgroups(fs: &Path) -> PathBuf {
    Path::new("/sys/fs/btrfs").join(fsid(fs).unwrap()).join("qgroups")
}

/// `btrfs qgroup show -r --raw` of `fs`, the btrfs tool's view, to cross-check.
fn qgroup_show(fs: &Path) -> String {
    let out = Command::new("btrfs")
        .args(["qgroup", "show", "-r", "--raw"])
        .arg(fs)
        .output()
        .unwrap();
    assert!(out.status.success(), "btrfs qgroup show: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// Whether `btrfs qgroup show` lists quota group `0/<id>`.
fn shown(show: &str, id: u64) -> bool {
    let want = format!("0/{id}");
    show.lines()
        .any(|line| line.split_whitespace().next() == Some(&want))
}

/// Turns quotas on and waits for the rescan that full quotas start.
fn enable(fs: &Path, simple: bool) {
    enable_quota(fs, simple).unwrap();
    wait_rescan(fs);
}

fn wait_rescan(fs: &Path) {
    let start = Instant::now();
    while rescan_running(fs).unwrap() {
        assert!(start.elapsed() < Duration::from_secs(30), "rescan still running");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn is_btrfs_and_fsid_name_the_sysfs_directory() {
    let test = "is_btrfs_and_fsid_name_the_sysfs_directory";
    let Some(b) = btrfs(test) else {
        return;
    };
    assert!(is_btrfs(&b.mnt).unwrap());
    fs::create_dir(b.mnt.join("d")).unwrap();
    fs::write(b.mnt.join("d/f"), b"x").unwrap();
    assert!(is_btrfs(&b.mnt.join("d/f")).unwrap());
    // The temporary directory's own filesystem (not btrfs here, but check).
    let base = b.dir.path();
    let out = Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(base)
        .output()
        .unwrap();
    let base_is_btrfs = String::from_utf8_lossy(&out.stdout).trim() == "btrfs";
    assert_eq!(is_btrfs(base).unwrap(), base_is_btrfs, "{out:?}");
    if !base_is_btrfs {
        let err = fsid(base).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
        assert_eq!(subvolume_id(base).unwrap(), None);
    }
    let err = is_btrfs(&b.mnt.join("missing")).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");

    let id = fsid(&b.mnt).unwrap();
    assert_eq!(id.len(), 36, "{id}");
    assert_eq!(id, id.to_lowercase());
    assert_eq!(fsid(&b.mnt.join("d/f")).unwrap(), id);
    let sys = Path::new("/sys/fs/btrfs").join(&id);
    // The directory of this filesystem: it lists this loop device.
    let dev_name = b.dev.path.file_name().unwrap();
    assert!(sys.join("devices").join(dev_name).exists(), "{}", sys.display());
    // And the btrfs tool agrees.
    let out = Command::new("btrfs")
        .args(["filesystem", "show"])
        .arg(&b.mnt)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains(&id), "{out:?}");
}

#[test]
fn quota_modes_off_simple_and_full() {
    let test = "quota_modes_off_simple_and_full";
    let Some(b) = btrfs(test) else {
        return;
    };
    assert_eq!(quota_mode(&b.mnt).unwrap(), QuotaMode::Off);
    assert_eq!(qgroup_ids(&b.mnt).unwrap(), Vec::<u64>::new());
    assert_eq!(qgroup(&b.mnt, 5).unwrap(), None);
    assert!(!rescan_running(&b.mnt).unwrap());
    enable_quota(&b.mnt, true).unwrap();
    assert_eq!(quota_mode(&b.mnt).unwrap(), QuotaMode::Simple);
    assert_eq!(
        fs::read_to_string(sysfs_qgroups(&b.mnt).join("mode")).unwrap(),
        "squota\n"
    );
    assert_eq!(qgroup_ids(&b.mnt).unwrap(), [5]);
    // Again: nothing changes.
    enable_quota(&b.mnt, true).unwrap();
    // The other mode is refused, not silently ignored.
    let err = enable_quota(&b.mnt, false).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists, "{err}");
    assert_eq!(quota_mode(&b.mnt).unwrap(), QuotaMode::Simple);
    assert!(!rescan_running(&b.mnt).unwrap());

    let Some(other) = btrfs(test) else {
        return;
    };
    assert_eq!(quota_mode(&other.mnt).unwrap(), QuotaMode::Off);
    // A fresh filesystem with data, so the rescan has something to do.
    write_file(&other.mnt.join("f"), 8 * MIB).unwrap();
    enable_quota(&other.mnt, false).unwrap();
    assert_eq!(quota_mode(&other.mnt).unwrap(), QuotaMode::Full);
    assert_eq!(
        fs::read_to_string(sysfs_qgroups(&other.mnt).join("mode")).unwrap(),
        "qgroup\n"
    );
    wait_rescan(&other.mnt);
    assert!(!rescan_running(&other.mnt).unwrap());
    let err = enable_quota(&other.mnt, true).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists, "{err}");
    syncfs(&other.mnt);
    let top = qgroup(&other.mnt, 5).unwrap().unwrap();
    assert!(top.referenced >= 8 * MIB, "{top:?}");
    // The first filesystem is unaffected.
    assert_eq!(quota_mode(&b.mnt).unwrap(), QuotaMode::Simple);
}

#[test]
fn subvolume_ids() {
    let test = "subvolume_ids";
    let Some(b) = btrfs(test) else {
        return;
    };
    assert_eq!(subvolume_id(&b.mnt).unwrap(), Some(5));
    let id = create_subvolume(&b.mnt, "v").unwrap();
    assert!(id >= 256, "{id}");
    assert_eq!(subvolume_id(&b.mnt.join("v")).unwrap(), Some(id));
    let nested = create_subvolume(&b.mnt.join("v"), "w").unwrap();
    assert_ne!(nested, id);
    assert_eq!(subvolume_id(&b.mnt.join("v/w")).unwrap(), Some(nested));

    fs::create_dir(b.mnt.join("plain")).unwrap();
    assert_eq!(subvolume_id(&b.mnt.join("plain")).unwrap(), None);
    fs::write(b.mnt.join("v/file"), b"x").unwrap();
    assert_eq!(subvolume_id(&b.mnt.join("v/file")).unwrap(), None);
    // A symlink to a subvolume is not followed.
    symlink("v", b.mnt.join("link")).unwrap();
    assert_eq!(subvolume_id(&b.mnt.join("link")).unwrap(), None);
    assert_eq!(subvolume_id(&b.mnt.join("missing")).unwrap(), None);
    // A missing parent directory, too; other errors are errors.
    assert_eq!(subvolume_id(&b.mnt.join("missing/v")).unwrap(), None);
    assert_eq!(subvolume_id(&b.mnt.join("v/file/x")).unwrap(), None);
    let err = subvolume_id(&b.mnt.join("n".repeat(300))).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidFilename, "{err}");

    let err = create_subvolume(&b.mnt, "v").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists, "{err}");
    assert!(err.to_string().contains("BTRFS_IOC_SUBVOL_CREATE"), "{err}");
    for bad in ["", ".", "..", "a/b", "x\0"] {
        let err = create_subvolume(&b.mnt, bad).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{bad:?}: {err}");
    }
    assert!(!b.mnt.join("a").exists());
    // Without quotas there are no quota groups.
    assert_eq!(qgroup(&b.mnt, id).unwrap(), None);
}

/// `subvolumes`, for a page of names, against `subvolume_id` and `qgroup` one at a time.
fn subvolumes_of_a_page(test: &str, simple: bool) {
    let Some(b) = btrfs(test) else {
        return;
    };
    let dir = b.mnt.join("volumes");
    fs::create_dir(&dir).unwrap();
    let a = create_subvolume(&dir, "a").unwrap();
    let c = create_subvolume(&dir, "c").unwrap();
    fs::create_dir(dir.join("plain")).unwrap();
    fs::write(dir.join("file"), b"x").unwrap();
    symlink("a", dir.join("link")).unwrap();
    // Another mount of subvolume a over a plain directory: not on the directory's own mount.
    fs::create_dir(dir.join("bound")).unwrap();
    loam_sys::mount::bind(&dir.join("a"), &dir.join("bound"), false).unwrap();
    let _bound = Mounted(dir.join("bound"));
    let names = ["a", "c", "plain", "file", "link", "missing", "bound"];
    let page = || -> Vec<Option<(u64, Limit)>> {
        subvolumes(&dir, &names, false)
            .unwrap()
            .into_iter()
            .map(|f| {
                f.unwrap().map(|s| {
                    assert_eq!(s.referenced, None, "not asked for");
                    (s.id, s.limit.unwrap())
                })
            })
            .collect()
    };
    // With what each references, against sysfs one at a time (once committed, so that neither moves).
    let referenced_agree = || {
        let got: Vec<Option<u64>> = subvolumes(&dir, &names, true)
            .unwrap()
            .into_iter()
            .map(|f| f.unwrap().and_then(|s| s.referenced))
            .collect();
        let want: Vec<Option<u64>> = names
            .iter()
            .map(|n| {
                subvolume_id(&dir.join(n))
                    .unwrap()
                    .and_then(|id| qgroup(&dir, id).unwrap())
                    .map(|q| q.referenced)
            })
            .collect();
        assert_eq!(got, want);
        got
    };
    let one_at_a_time = || -> Vec<Option<(u64, Limit)>> {
        names
            .iter()
            .map(|n| {
                subvolume_id(&dir.join(n))
                    .unwrap()
                    .map(|id| (id, Limit::of(qgroup(&dir, id).unwrap().as_ref())))
            })
            .collect()
    };
    let shown = |la: Limit, lc: Limit| {
        vec![
            Some((a, la)),
            Some((c, lc)),
            None,
            None,
            None,
            None,
            Some((a, la)),
        ]
    };

    // Without quotas, no quota groups.
    assert_eq!(page(), one_at_a_time());
    assert_eq!(page(), shown(Limit::NoQgroup, Limit::NoQgroup));
    assert_eq!(referenced_agree(), [None; 7]);

    // With quotas: a limit shows at once, before any commit, as sysfs shows it; so does its removal.
    enable(&b.mnt, simple);
    assert_eq!(page(), shown(Limit::Unlimited, Limit::Unlimited));
    set_limit(&dir, a, 8 * MIB).unwrap();
    assert_eq!(page(), one_at_a_time());
    assert_eq!(page(), shown(Limit::Bytes(8 * MIB), Limit::Unlimited));
    write_file(&dir.join("c/data"), 2 * MIB).unwrap();
    set_limit(&dir, c, 64 * MIB).unwrap();
    set_limit(&dir, a, u64::MAX).unwrap();
    assert_eq!(page(), one_at_a_time());
    assert_eq!(page(), shown(Limit::Unlimited, Limit::Bytes(64 * MIB)));
    syncfs(&b.mnt);
    assert_eq!(page(), one_at_a_time());
    let referenced = referenced_agree();
    assert!(referenced[1].unwrap() >= 2 * MIB, "{referenced:?}");
    // Without CAP_SYS_ADMIN (this thread's only), the tree cannot be searched and sysfs tells the same.
    let caps = rustix::thread::capabilities(None).unwrap();
    let without = rustix::thread::CapabilitySets {
        effective: caps.effective - rustix::thread::CapabilitySet::SYS_ADMIN,
        ..caps
    };
    rustix::thread::set_capabilities(None, without).unwrap();
    let unprivileged = page();
    rustix::thread::set_capabilities(None, caps).unwrap();
    assert_eq!(unprivileged, shown(Limit::Unlimited, Limit::Bytes(64 * MIB)));

    // A name that is not a plain component is refused on its own; the others are still answered.
    let found = subvolumes(&dir, &["../volumes/a", "a", ""], false).unwrap();
    for bad in [&found[0], &found[2]] {
        let err = bad.as_ref().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    }
    assert_eq!(found[1].as_ref().unwrap().as_ref().unwrap().id, a);
    // A directory not on btrfs fails the whole page.
    let err = subvolumes(b.dir.path(), &["a"], true).unwrap_err();
    assert!(err.to_string().contains("not on btrfs"), "{err}");
}

#[test]
fn subvolumes_of_a_page_with_simple_quotas() {
    subvolumes_of_a_page("subvolumes_of_a_page_with_simple_quotas", true);
}

#[test]
fn subvolumes_of_a_page_with_full_quotas() {
    subvolumes_of_a_page("subvolumes_of_a_page_with_full_quotas", false);
}

/// Limits, EDQUOT and usage, with simple or full quotas.
fn limits_are_enforced(test: &str, simple: bool) {
    let Some(b) = btrfs(test) else {
        return;
    };
    enable(&b.mnt, simple);
    let v = create_subvolume(&b.mnt, "v").unwrap();
    let w = create_subvolume(&b.mnt, "w").unwrap();
    assert_eq!(qgroup_ids(&b.mnt).unwrap(), [5, v, w]);
    let fresh = qgroup(&b.mnt, v).unwrap().unwrap();
    assert_eq!(fresh.max_referenced, None, "{fresh:?}");
    assert_eq!(fresh.max_exclusive, None, "{fresh:?}");
    assert!(fresh.referenced < MIB, "{fresh:?}");

    // Usage shows once the transaction is committed.
    write_file(&b.mnt.join("w/keep"), 4 * MIB).unwrap();
    syncfs(&b.mnt);
    let used = qgroup(&b.mnt, w).unwrap().unwrap();
    assert!(used.referenced >= 4 * MIB, "{used:?}");
    assert!(used.exclusive >= 4 * MIB, "{used:?}");
    assert!(qgroup(&b.mnt, v).unwrap().unwrap().referenced < MIB);

    let limit = 8 * MIB;
    set_limit(&b.mnt, v, limit).unwrap();
    let limited = qgroup(&b.mnt, v).unwrap().unwrap();
    assert_eq!(limited.max_referenced, Some(limit), "{limited:?}");
    assert_eq!(limited.max_exclusive, None, "{limited:?}");
    assert_eq!(qgroup(&b.mnt, w).unwrap().unwrap().max_referenced, None);
    let show = qgroup_show(&b.mnt);
    let line = show
        .lines()
        .find(|l| l.split_whitespace().next() == Some(&format!("0/{v}")))
        .unwrap_or_else(|| panic!("{show}"));
    assert!(line.split_whitespace().any(|f| f == limit.to_string()), "{show}");

    // Writing more than the limit fails with EDQUOT (on write or fsync).
    let (err, _) = write_file(&b.mnt.join("v/big"), 2 * limit).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EDQUOT), "{err}");
    // The neighbour is intact and still writable.
    let keep = fs::read(b.mnt.join("w/keep")).unwrap();
    assert_eq!(keep.len() as u64, 4 * MIB);
    assert!(keep.iter().all(|&byte| byte == 0x5a));
    write_file(&b.mnt.join("w/more"), 2 * MIB).unwrap();
    syncfs(&b.mnt);
    let over = qgroup(&b.mnt, v).unwrap().unwrap();
    assert!(over.referenced <= limit, "{over:?}");

    // Raising the limit lets writes through again; u64::MAX removes it.
    set_limit(&b.mnt, v, 64 * MIB).unwrap();
    fs::remove_file(b.mnt.join("v/big")).unwrap();
    write_file(&b.mnt.join("v/big"), 2 * limit).unwrap();
    set_limit(&b.mnt, v, u64::MAX).unwrap();
    assert_eq!(qgroup(&b.mnt, v).unwrap().unwrap().max_referenced, None);

    // Errors: no such quota group, not a subvolume id.
    let err = set_limit(&b.mnt, 999, limit).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert_eq!(qgroup(&b.mnt, 999).unwrap(), None);
    let err = set_limit(&b.mnt, 0, limit).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
}

#[test]
fn limits_are_enforced_with_simple_quotas() {
    limits_are_enforced("limits_are_enforced_with_simple_quotas", true);
}

#[test]
fn limits_are_enforced_with_full_quotas() {
    limits_are_enforced("limits_are_enforced_with_full_quotas", false);
}

/// Deletes, with simple or full quotas: nothing is left.
fn delete_leaves_nothing(test: &str, simple: bool) {
    let Some(b) = btrfs(test) else {
        return;
    };
    enable(&b.mnt, simple);
    let v = create_subvolume(&b.mnt, "v").unwrap();
    let w = create_subvolume(&b.mnt, "w").unwrap();
    set_limit(&b.mnt, v, 64 * MIB).unwrap();
    write_file(&b.mnt.join("v/f"), 4 * MIB).unwrap();
    write_file(&b.mnt.join("w/f"), MIB).unwrap();
    fs::create_dir(b.mnt.join("v/d")).unwrap();
    for i in 0..100 {
        fs::write(b.mnt.join(format!("v/d/{i}")), vec![1; 3000]).unwrap();
    }
    syncfs(&b.mnt);
    assert!(qgroup(&b.mnt, v).unwrap().unwrap().referenced >= 4 * MIB);
    assert!(shown(&qgroup_show(&b.mnt), v));

    let start = Instant::now();
    delete_subvolume(&b.mnt, "v").unwrap();
    let took = start.elapsed();
    let _ = writeln!(std::io::stderr(), "{test}: delete_subvolume took {took:?}");
    assert!(!b.mnt.join("v").exists());
    assert_eq!(qgroup(&b.mnt, v).unwrap(), None);
    assert_eq!(qgroup_ids(&b.mnt).unwrap(), [5, w]);
    let show = qgroup_show(&b.mnt);
    assert!(!shown(&show, v), "{show}");
    assert!(shown(&show, w), "{show}");
    // The neighbour is untouched.
    assert_eq!(fs::read(b.mnt.join("w/f")).unwrap().len() as u64, MIB);
    assert!(qgroup(&b.mnt, w).unwrap().is_some());

    // Again: already gone.
    delete_subvolume(&b.mnt, "v").unwrap();
    delete_subvolume(&b.mnt, "never").unwrap();

    // A plain directory is refused and left alone, as is a symlink to a
    // subvolume (and the subvolume), and a file.
    fs::create_dir(b.mnt.join("plain")).unwrap();
    fs::write(b.mnt.join("plain/f"), b"keep").unwrap();
    let err = delete_subvolume(&b.mnt, "plain").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    assert_eq!(fs::read(b.mnt.join("plain/f")).unwrap(), b"keep");
    symlink("w", b.mnt.join("link")).unwrap();
    let err = delete_subvolume(&b.mnt, "link").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    assert!(
        fs::symlink_metadata(b.mnt.join("link"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(subvolume_id(&b.mnt.join("w")).unwrap(), Some(w));
    let err = delete_subvolume(&b.mnt, "plain/f").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    let err = delete_subvolume(&b.mnt.join("plain"), "f").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    assert_eq!(fs::read(b.mnt.join("plain/f")).unwrap(), b"keep");

    // A nested subvolume, then its parent: both go, with their quota groups.
    let x = create_subvolume(&b.mnt.join("w"), "x").unwrap();
    let err = delete_subvolume(&b.mnt, "w").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::DirectoryNotEmpty, "{err}");
    assert_eq!(os_error(&err), Some(libc::ENOTEMPTY), "{err}");
    assert_eq!(subvolume_id(&b.mnt.join("w")).unwrap(), Some(w));
    delete_subvolume(&b.mnt.join("w"), "x").unwrap();
    delete_subvolume(&b.mnt, "w").unwrap();
    assert_eq!(qgroup_ids(&b.mnt).unwrap(), [5]);
    let show = qgroup_show(&b.mnt);
    for id in [v, w, x] {
        assert!(!shown(&show, id), "{show}");
    }
}

#[test]
fn delete_leaves_nothing_with_simple_quotas() {
    delete_leaves_nothing("delete_leaves_nothing_with_simple_quotas", true);
}

#[test]
fn delete_leaves_nothing_with_full_quotas() {
    delete_leaves_nothing("delete_leaves_nothing_with_full_quotas", false);
}

#[test]
fn delete_without_quotas() {
    let test = "delete_without_quotas";
    let Some(b) = btrfs(test) else {
        return;
    };
    create_subvolume(&b.mnt, "v").unwrap();
    write_file(&b.mnt.join("v/f"), MIB).unwrap();
    delete_subvolume(&b.mnt, "v").unwrap();
    assert!(!b.mnt.join("v").exists());
    assert_eq!(qgroup_ids(&b.mnt).unwrap(), Vec::<u64>::new());
}

#[test]
fn delete_waits_until_open_files_are_closed() {
    let test = "delete_waits_until_open_files_are_closed";
    let Some(b) = btrfs(test) else {
        return;
    };
    enable(&b.mnt, false);
    let v = create_subvolume(&b.mnt, "v").unwrap();
    write_file(&b.mnt.join("v/f"), MIB).unwrap();
    // The kernel drops the subvolume only once nothing has it open.
    let held = fs::File::open(b.mnt.join("v/f")).unwrap();
    let closer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1500));
        drop(held);
    });
    let start = Instant::now();
    delete_subvolume(&b.mnt, "v").unwrap();
    let took = start.elapsed();
    closer.join().unwrap();
    assert!(took >= Duration::from_millis(1500), "{took:?}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert_eq!(qgroup_ids(&b.mnt).unwrap(), [5]);
    assert!(!shown(&qgroup_show(&b.mnt), v));
}

#[test]
fn simple_quotas_keep_a_quota_group_still_charged() {
    let test = "simple_quotas_keep_a_quota_group_still_charged";
    let Some(b) = btrfs(test) else {
        return;
    };
    enable(&b.mnt, true);
    let v = create_subvolume(&b.mnt, "v").unwrap();
    let w = create_subvolume(&b.mnt, "w").unwrap();
    write_file(&b.mnt.join("v/f"), 4 * MIB).unwrap();
    // Share v's extents with w: simple quotas keep charging them to v.
    {
        use std::os::fd::AsRawFd;
        let src = fs::File::open(b.mnt.join("v/f")).unwrap();
        let dst = fs::File::create_new(b.mnt.join("w/f")).unwrap();
        const FICLONE: libc::c_ulong = 0x4004_9409;
        // SAFETY: FICLONE takes the source fd as its integer argument and
        // touches no user memory; both fds are open.
        let rc = unsafe { libc::ioctl(dst.as_raw_fd(), FICLONE as _, src.as_raw_fd()) };
        assert_eq!(rc, 0, "FICLONE: {}", std::io::Error::last_os_error());
    }
    syncfs(&b.mnt);
    let start = Instant::now();
    let err = delete_subvolume(&b.mnt, "v").unwrap_err();
    // Told at once, not after the whole wait.
    assert!(start.elapsed() < Duration::from_secs(10), "{:?}", start.elapsed());
    assert_eq!(err.kind(), ErrorKind::ResourceBusy, "{err}");
    assert!(err.to_string().contains(&format!("0/{v}")), "{err}");
    // The subvolume is gone all the same; deleting again is Ok.
    assert!(!b.mnt.join("v").exists());
    delete_subvolume(&b.mnt, "v").unwrap();
    assert!(qgroup(&b.mnt, v).unwrap().unwrap().referenced >= 4 * MIB);
    assert_eq!(fs::read(b.mnt.join("w/f")).unwrap().len() as u64, 4 * MIB);
    assert_eq!(qgroup_ids(&b.mnt).unwrap(), [5, v, w]);
}

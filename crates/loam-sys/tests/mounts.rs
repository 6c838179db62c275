//! Tests with real mounts. They need root and run each in a private mount
//! namespace of the test's own thread, so nothing leaks to the host; every
//! mount is also undone by a guard, even on panic.

use std::{
    fs,
    io::ErrorKind,
    path::{Path, PathBuf},
};

use loam_sys::{
    fs::{remove_tree_beneath, tree_usage},
    mount::{bind, unmount},
    mountinfo::MountTable,
    testutil::{Mounted, enter_private_mount_namespace, require_root},
};
use rustix::mount::{MountFlags, mount};

/// Checks for root, enters a private mount namespace and makes a temporary
/// directory (see [`tempdir`]); `None` = skip.
fn setup(test: &str) -> Option<(tempfile::TempDir, PathBuf)> {
    if !require_root(test) {
        return None;
    }
    enter_private_mount_namespace().expect("entering a private mount namespace");
    Some(tempdir())
}

/// A temporary directory by its canonical path, as the mount table shows it.
fn tempdir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().canonicalize().unwrap();
    (dir, path)
}

/// Creates the directory `base/name` and returns its path.
fn mkdir(base: &Path, name: &str) -> PathBuf {
    let dir = base.join(name);
    fs::create_dir(&dir).unwrap();
    dir
}

/// Creates `base/outside` holding a file `canary` ("alive") and returns it.
fn outside_with_canary(base: &Path) -> PathBuf {
    let outside = mkdir(base, "outside");
    fs::write(outside.join("canary"), b"alive").unwrap();
    outside
}

/// Asserts that `dir/canary` still reads "alive".
#[track_caller]
fn assert_canary(dir: &Path) {
    assert_eq!(fs::read(dir.join("canary")).unwrap(), b"alive");
}

#[test]
fn bind_shows_in_mount_table_and_unmount_removes_it() {
    let Some((_dir, base)) = setup("bind_shows_in_mount_table_and_unmount_removes_it") else {
        return;
    };
    let src = mkdir(&base, "src");
    let target = mkdir(&base, "target");
    fs::write(src.join("f"), b"hello").unwrap();

    let before = MountTable::read_self().unwrap();
    assert!(!before.is_mount_point(&target));
    let src_id = before.source_of(&src).unwrap();

    bind(&src, &target, false).unwrap();
    let guard = Mounted(target.clone());
    assert_eq!(fs::read(target.join("f")).unwrap(), b"hello");
    fs::write(target.join("g"), b"via bind").unwrap();
    assert_eq!(fs::read(src.join("g")).unwrap(), b"via bind");

    let table = MountTable::read_self().unwrap();
    assert_eq!(table.mounts_at(&target).len(), 1);
    let top = table.top_mount_at(&target).unwrap();
    assert!(!top.is_read_only());
    assert_eq!((top.major, top.minor), (src_id.major, src_id.minor));
    assert_eq!(top.root, src_id.root);
    // The target now is the same directory as the source...
    assert_eq!(table.source_of(&target).unwrap(), src_id);
    assert_eq!(
        table.source_of(&target.join("f")).unwrap().root,
        src_id.root.join("f")
    );
    // ...and the source's bind mounts include the target.
    let places: Vec<&Path> = table
        .mounts_of(&src_id)
        .iter()
        .map(|m| m.mount_point.as_path())
        .collect();
    assert!(places.contains(&target.as_path()), "{places:?}");

    unmount(&target).unwrap();
    std::mem::forget(guard);
    let after = MountTable::read_self().unwrap();
    assert!(!after.is_mount_point(&target));
    assert!(!target.join("f").exists());

    // Not a mount point any more: the error is returned, with context.
    let err = unmount(&target).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert_eq!(loam_sys::os_error(&err), Some(libc::EINVAL));
    assert!(err.to_string().contains(&*target.to_string_lossy()), "{err}");
}

#[test]
fn read_only_bind_rejects_writes_and_keeps_source_flags() {
    let Some((_dir, base)) = setup("read_only_bind_rejects_writes_and_keeps_source_flags") else {
        return;
    };
    let fs_dir = mkdir(&base, "fs");
    let target = mkdir(&base, "target");
    // A source mount with nosuid,nodev,noexec, which the read-only bind must
    // keep.
    mount(
        "loam-test",
        &fs_dir,
        "tmpfs",
        MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
        c"size=4m",
    )
    .unwrap();
    let _fs_guard = Mounted(fs_dir.clone());
    let src = mkdir(&fs_dir, "vol");
    fs::write(src.join("f"), b"data").unwrap();

    bind(&src, &target, true).unwrap();
    let _guard = Mounted(target.clone());

    assert_eq!(fs::read(target.join("f")).unwrap(), b"data");
    let err = fs::write(target.join("new"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
    let err = fs::write(target.join("f"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
    // The source stays writable.
    fs::write(src.join("new"), b"x").unwrap();

    let table = MountTable::read_self().unwrap();
    let top = table.top_mount_at(&target).unwrap();
    assert!(top.is_read_only(), "{top:?}");
    for opt in ["nosuid", "nodev", "noexec"] {
        assert!(top.mount_options.iter().any(|o| o == opt), "{opt}: {top:?}");
    }
    assert_eq!(top.root, Path::new("/vol"));
    assert_eq!(top.fs_type, "tmpfs");
    assert_eq!(top.source, "loam-test");
}

#[test]
fn bind_errors_name_both_paths() {
    let Some((_dir, base)) = setup("bind_errors_name_both_paths") else {
        return;
    };
    let target = mkdir(&base, "target");
    let err = bind(&base.join("missing"), &target, true).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    let msg = err.to_string();
    assert!(
        msg.starts_with("bind-mounting ") && msg.contains("missing") && msg.contains("target"),
        "{msg}"
    );
    assert!(!MountTable::read_self().unwrap().is_mount_point(&target));
}

#[test]
fn private_namespace_does_not_leak_to_other_threads() {
    if !require_root("private_namespace_does_not_leak_to_other_threads") {
        return;
    }
    let (_dir, base) = tempdir();
    let src = mkdir(&base, "src");
    let target = mkdir(&base, "target");

    let (t, s) = (target.clone(), src.clone());
    let (mounted_tx, mounted_rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let child = std::thread::spawn(move || {
        enter_private_mount_namespace().unwrap();
        bind(&s, &t, false).unwrap();
        let _guard = Mounted(t.clone());
        let visible = MountTable::read_self().unwrap().is_mount_point(&t);
        mounted_tx.send(visible).unwrap();
        // Keep the mount alive until the other thread has looked.
        done_rx.recv().unwrap();
    });
    assert!(mounted_rx.recv().unwrap(), "mount visible in its own thread");
    let here = MountTable::read_self().unwrap();
    let process = MountTable::read_pid(std::process::id()).unwrap();
    done_tx.send(()).unwrap();
    child.join().unwrap();
    assert!(!here.is_mount_point(&target));
    assert!(!process.is_mount_point(&target));
}

#[test]
fn remove_tree_beneath_stops_at_a_bind_mount() {
    let Some((_dir, base)) = setup("remove_tree_beneath_stops_at_a_bind_mount") else {
        return;
    };
    let outside = outside_with_canary(&base);

    let vol = base.join("volumes/vol");
    let mnt = vol.join("a/b/mnt");
    fs::create_dir_all(&mnt).unwrap();
    fs::write(vol.join("a/file"), b"x").unwrap();
    // Same filesystem as the tree: only the mount id tells it apart.
    bind(&outside, &mnt, false).unwrap();
    let guard = Mounted(mnt.clone());

    let usage = tree_usage(&vol).unwrap();
    // vol, a, a/file, a/b; not mnt nor what is below it.
    assert_eq!(usage.inodes, 4, "{usage:?}");

    let err = remove_tree_beneath(&base.join("volumes"), "vol").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ResourceBusy);
    assert_eq!(
        err.to_string(),
        format!("refusing to delete across a mount point at {}", mnt.display())
    );
    assert_canary(&outside);
    assert_canary(&mnt);
    assert!(vol.exists());

    // Once unmounted, the removal completes.
    drop(guard);
    remove_tree_beneath(&base.join("volumes"), "vol").unwrap();
    assert!(!vol.exists());
    assert_canary(&outside);
}

#[test]
fn remove_tree_beneath_refuses_a_mounted_top_and_bound_files() {
    let Some((_dir, base)) = setup("remove_tree_beneath_refuses_a_mounted_top_and_bound_files") else {
        return;
    };
    let outside = outside_with_canary(&base);

    // The volume directory itself is a mount point.
    let vol = mkdir(&base, "vol");
    bind(&outside, &vol, false).unwrap();
    let guard = Mounted(vol.clone());
    let err = remove_tree_beneath(&base, "vol").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ResourceBusy);
    assert!(
        err.to_string()
            .contains("refusing to delete across a mount point"),
        "{err}"
    );
    assert_canary(&outside);
    drop(guard);

    // A file bind-mounted inside the tree cannot be unlinked.
    fs::write(vol.join("target-file"), b"").unwrap();
    bind(&outside.join("canary"), &vol.join("target-file"), false).unwrap();
    let guard = Mounted(vol.join("target-file"));
    let err = remove_tree_beneath(&base, "vol").unwrap_err();
    assert_eq!(loam_sys::os_error(&err), Some(libc::EBUSY), "{err}");
    assert!(err.to_string().contains("target-file"), "{err}");
    assert_canary(&outside);
    drop(guard);
    remove_tree_beneath(&base, "vol").unwrap();
    assert_canary(&outside);
}

#[test]
fn is_mount_point_agrees_with_the_mount_table_without_reading_it() {
    let Some((_dir, base)) = setup("is_mount_point_agrees_with_the_mount_table_without_reading_it") else {
        return;
    };
    let src = mkdir(&base, "src");
    let dst = mkdir(&base, "dst");
    let link = base.join("link");
    std::os::unix::fs::symlink(&dst, &link).unwrap();
    assert!(!loam_sys::mount::is_mount_point(&dst).unwrap());
    assert!(!loam_sys::mount::is_mount_point(&base.join("missing")).unwrap());
    bind(&src, &dst, false).unwrap();
    let table = MountTable::read_self().unwrap();
    assert!(table.is_mount_point(&dst));
    assert!(loam_sys::mount::is_mount_point(&dst).unwrap());
    assert!(
        !loam_sys::mount::is_mount_point(&link).unwrap(),
        "a symlink to a mount point is not one"
    );
    assert!(
        !loam_sys::mount::is_mount_point(&src).unwrap(),
        "the source of a bind is not"
    );
    unmount(&dst).unwrap();
    assert!(!loam_sys::mount::is_mount_point(&dst).unwrap());
}

#[test]
fn mounted_at_tells_what_the_top_mount_shows() {
    use loam_sys::mount::{file_id, mounted_at};
    let Some((_dir, base)) = setup("mounted_at_tells_what_the_top_mount_shows") else {
        return;
    };
    let src = mkdir(&base, "src");
    let other = mkdir(&base, "other");
    let dst = mkdir(&base, "dst");
    let link = base.join("link");
    std::os::unix::fs::symlink(&dst, &link).unwrap();
    assert_eq!(mounted_at(&dst).unwrap(), None, "a plain directory");
    assert_eq!(mounted_at(&base.join("missing")).unwrap(), None);
    assert_ne!(file_id(&src).unwrap(), file_id(&other).unwrap());

    bind(&src, &dst, false).unwrap();
    let _g = Mounted(dst.clone());
    let m = mounted_at(&dst).unwrap().expect("a bind mount");
    assert_eq!(m.root, file_id(&src).unwrap(), "it shows its source");
    assert_ne!(m.root, file_id(&other).unwrap());
    assert!(!m.read_only);
    assert_eq!(mounted_at(&link).unwrap(), None, "a symlink is not followed");
    assert_eq!(
        mounted_at(&src).unwrap(),
        None,
        "the source of a bind is not a mount"
    );

    // A read-only bind of something else on top: the top one is what the path shows.
    bind(&other, &dst, true).unwrap();
    let _g2 = Mounted(dst.clone());
    let top = mounted_at(&dst).unwrap().expect("two mounts");
    assert_eq!(top.root, file_id(&other).unwrap());
    assert!(top.read_only);
    unmount(&dst).unwrap();
    assert_eq!(
        mounted_at(&dst).unwrap().map(|m| m.root),
        Some(file_id(&src).unwrap())
    );
    unmount(&dst).unwrap();
    assert_eq!(mounted_at(&dst).unwrap(), None);

    // A file bound onto a file (as a raw block volume is) shows the source file.
    let node = base.join("node");
    fs::write(&node, b"").unwrap();
    let target = base.join("target");
    fs::write(&target, b"").unwrap();
    bind(&node, &target, false).unwrap();
    let _g3 = Mounted(target.clone());
    assert_eq!(
        mounted_at(&target).unwrap().map(|m| m.root),
        Some(file_id(&node).unwrap())
    );
    assert_eq!(
        mounted_at(&target.join("x")).unwrap(),
        None,
        "a path under a file"
    );
}

//! Tests of `loam_sys::fs` against real directories (no root needed).

use std::{
    fs,
    io::ErrorKind,
    os::{
        fd::OwnedFd,
        unix::fs::{MetadataExt, PermissionsExt, symlink},
    },
    path::Path,
};

use loam_sys::fs::{
    Usage, create_dir_checked, fsync_dir, open_beneath, remove_file_durable, remove_tree_beneath, tree_usage,
    write_atomic,
};
use rustix::fs::{Mode, OFlags, mkdirat, openat, renameat};

fn mode_of(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
}

#[test]
fn write_atomic_creates_and_replaces() {
    let dir = tempfile::tempdir().unwrap();
    write_atomic(dir.path(), "state.json", b"first").unwrap();
    assert_eq!(fs::read(dir.path().join("state.json")).unwrap(), b"first");
    assert_eq!(mode_of(&dir.path().join("state.json")), 0o600);

    write_atomic(dir.path(), "state.json", b"second, longer").unwrap();
    assert_eq!(
        fs::read(dir.path().join("state.json")).unwrap(),
        b"second, longer"
    );
    // Only the target remains: the temporary file was renamed away.
    let names: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["state.json"]);
}

#[test]
fn write_atomic_resets_a_stale_temp_file() {
    let dir = tempfile::tempdir().unwrap();
    let tmp = dir.path().join(".s.tmp");
    fs::write(&tmp, b"leftover from a crash, longer than the data").unwrap();
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o644)).unwrap();
    write_atomic(dir.path(), "s", b"new").unwrap();
    assert_eq!(fs::read(dir.path().join("s")).unwrap(), b"new");
    assert_eq!(mode_of(&dir.path().join("s")), 0o600);
    assert!(!tmp.exists());
}

#[test]
fn write_atomic_rejects_bad_names() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["", ".", "..", "a/b", "/etc/passwd"] {
        let err = write_atomic(dir.path(), name, b"x").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{name:?}");
    }
}

#[test]
fn write_atomic_does_not_follow_a_planted_temp_symlink() {
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let victim = outside.path().join("victim");
    fs::write(&victim, b"precious").unwrap();
    symlink(&victim, dir.path().join(".s.tmp")).unwrap();

    let err = write_atomic(dir.path(), "s", b"evil").unwrap_err();
    assert_eq!(loam_sys::os_error(&err), Some(libc::ELOOP), "{err}");
    assert!(err.to_string().contains(".s.tmp"), "{err}");
    assert_eq!(fs::read(&victim).unwrap(), b"precious");
}

#[test]
fn remove_file_durable_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("f"), b"x").unwrap();
    remove_file_durable(dir.path(), "f").unwrap();
    assert!(!dir.path().join("f").exists());
    remove_file_durable(dir.path(), "f").unwrap();
    remove_file_durable(&dir.path().join("missing-dir"), "f").unwrap();
    assert_eq!(
        remove_file_durable(dir.path(), "..").unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
    fs::create_dir(dir.path().join("d")).unwrap();
    assert!(remove_file_durable(dir.path(), "d").is_err());
}

#[test]
fn fsync_dir_works_and_reports_missing() {
    let dir = tempfile::tempdir().unwrap();
    fsync_dir(dir.path()).unwrap();
    let err = fsync_dir(&dir.path().join("nope")).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert!(err.to_string().contains("nope"), "{err}");
}

#[test]
fn create_dir_checked_sets_exact_mode() {
    let dir = tempfile::tempdir().unwrap();
    // 0777 would be cut to 0755 by the usual umask: the chmod must win.
    assert!(create_dir_checked(dir.path(), "vol", 0o777).unwrap());
    assert_eq!(mode_of(&dir.path().join("vol")), 0o777);
    assert!(create_dir_checked(dir.path(), "priv", 0o700).unwrap());
    assert_eq!(mode_of(&dir.path().join("priv")), 0o700);
    assert!(create_dir_checked(dir.path(), "sticky", 0o2770).unwrap());
    assert_eq!(mode_of(&dir.path().join("sticky")), 0o2770);

    // Existing directory: Ok(false), mode untouched.
    assert!(!create_dir_checked(dir.path(), "vol", 0o700).unwrap());
    assert_eq!(mode_of(&dir.path().join("vol")), 0o777);
}

#[test]
fn create_dir_checked_refuses_symlinks_and_files() {
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    symlink(outside.path(), dir.path().join("link")).unwrap();
    let err = create_dir_checked(dir.path(), "link", 0o755).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists);
    assert!(err.to_string().contains("symlink"), "{err}");

    fs::write(dir.path().join("file"), b"").unwrap();
    let err = create_dir_checked(dir.path(), "file", 0o755).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists);
    assert!(err.to_string().contains("not a directory"), "{err}");

    // The parent itself must not be a symlink either.
    // (O_DIRECTORY|O_NOFOLLOW on a symlink fails with ENOTDIR.)
    let err = create_dir_checked(&dir.path().join("link"), "x", 0o755).unwrap_err();
    assert!(
        matches!(loam_sys::os_error(&err), Some(libc::ENOTDIR | libc::ELOOP)),
        "{err}"
    );
    assert!(!outside.path().join("x").exists());

    assert_eq!(
        create_dir_checked(dir.path(), "a/b", 0o755).unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
}

/// Builds `root/<name>` with nested directories, files, a symlink to a
/// directory outside holding a canary, and a hard link.
fn build_tree(root: &Path, outside: &Path) {
    let top = root.join("vol");
    fs::create_dir_all(top.join("a/b/c")).unwrap();
    fs::create_dir_all(top.join("empty")).unwrap();
    fs::write(top.join("f1"), vec![1u8; 5000]).unwrap();
    fs::write(top.join("a/f2"), vec![2u8; 7000]).unwrap();
    fs::write(top.join("a/b/c/f3"), b"three").unwrap();
    fs::hard_link(top.join("a/f2"), top.join("a/b/f2-link")).unwrap();
    symlink(outside, top.join("a/b/escape")).unwrap();
    symlink("/nonexistent", top.join("dangling")).unwrap();
    fs::write(outside.join("canary"), b"alive").unwrap();
}

#[test]
fn remove_tree_beneath_removes_everything_but_never_follows_symlinks() {
    let root = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    build_tree(root.path(), outside.path());

    remove_tree_beneath(root.path(), "vol").unwrap();
    assert!(!root.path().join("vol").exists());
    assert_eq!(fs::read(outside.path().join("canary")).unwrap(), b"alive");
    // Idempotent: already gone is fine.
    remove_tree_beneath(root.path(), "vol").unwrap();
}

#[test]
fn remove_tree_beneath_on_a_top_level_symlink_removes_only_the_link() {
    let root = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    fs::create_dir(outside.path().join("data")).unwrap();
    fs::write(outside.path().join("data/canary"), b"alive").unwrap();
    symlink(outside.path().join("data"), root.path().join("vol")).unwrap();

    remove_tree_beneath(root.path(), "vol").unwrap();
    assert!(fs::symlink_metadata(root.path().join("vol")).is_err());
    assert_eq!(fs::read(outside.path().join("data/canary")).unwrap(), b"alive");
}

#[test]
fn remove_tree_beneath_removes_a_plain_file() {
    let root = tempfile::tempdir().unwrap();
    fs::write(root.path().join("f"), b"x").unwrap();
    remove_tree_beneath(root.path(), "f").unwrap();
    assert!(!root.path().join("f").exists());
}

#[test]
fn remove_tree_beneath_rejects_bad_names() {
    let root = tempfile::tempdir().unwrap();
    fs::create_dir(root.path().join("keep")).unwrap();
    for name in ["", ".", "..", "keep/..", "/"] {
        let err = remove_tree_beneath(root.path(), name).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{name:?}");
    }
    assert!(root.path().join("keep").exists());
}

#[test]
fn remove_tree_beneath_handles_deep_and_wide_trees() {
    let root = tempfile::tempdir().unwrap();
    // Deeper than the number of directory fds the walk keeps open, so the
    // walk has to come back up through "..".
    let mut deep = root.path().join("vol");
    for i in 0..300 {
        deep.push(format!("d{i}"));
    }
    fs::create_dir_all(&deep).unwrap();
    fs::write(deep.join("bottom"), b"x").unwrap();
    // And a wide level with many subdirectories and files.
    let wide = root.path().join("vol/wide");
    fs::create_dir(&wide).unwrap();
    for i in 0..500 {
        fs::create_dir(wide.join(format!("sub{i}"))).unwrap();
        fs::write(wide.join(format!("sub{i}/f")), b"x").unwrap();
        fs::write(wide.join(format!("file{i}")), b"y").unwrap();
    }

    let usage = tree_usage(&root.path().join("vol")).unwrap();
    // vol + 300 nested dirs + bottom + wide + 500*(sub + f + file)
    assert_eq!(usage.inodes, 1 + 300 + 1 + 1 + 1500);

    remove_tree_beneath(root.path(), "vol").unwrap();
    assert!(!root.path().join("vol").exists());
}

#[test]
fn remove_tree_beneath_refuses_too_deep_trees() {
    let root = tempfile::tempdir().unwrap();
    // Build 4100 levels with relative mkdirs, as a full path would exceed
    // PATH_MAX.
    let top = root.path().join("vol");
    fs::create_dir(&top).unwrap();
    let mut cur: OwnedFd = fs::File::open(&top).unwrap().into();
    for _ in 0..4100 {
        mkdirat(&cur, "d", Mode::from_raw_mode(0o755)).unwrap();
        cur = openat(&cur, "d", OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap();
    }
    drop(cur);
    let err = remove_tree_beneath(root.path(), "vol").unwrap_err();
    assert!(err.to_string().contains("deeper than 4096"), "{err}");
    let err = tree_usage(&top).unwrap_err();
    assert!(err.to_string().contains("deeper than 4096"), "{err}");

    // Clean up: move the deepest 100 levels up next to the top so that both
    // pieces are within the limit, then remove them. (Walking down with fds
    // keeps every path short.)
    let top_fd: OwnedFd = fs::File::open(&top).unwrap().into();
    let mut cur = top_fd.try_clone().unwrap();
    for _ in 0..4000 {
        cur = openat(&cur, "d", OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap();
    }
    renameat(&cur, "d", &top_fd, "tail").unwrap();
    remove_tree_beneath(&top, "tail").unwrap();
    remove_tree_beneath(root.path(), "vol").unwrap();
}

#[test]
fn tree_usage_counts_like_du_one_file_system() {
    let root = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    build_tree(root.path(), outside.path());
    // A big file outside that the symlink points to: must not be counted.
    fs::write(outside.path().join("big"), vec![0xaau8; 1 << 20]).unwrap();

    let top = root.path().join("vol");
    let usage = tree_usage(&top).unwrap();
    // vol, a, a/b, a/b/c, empty, f1, a/f2 (+ its hard link, counted once),
    // a/b/c/f3, a/b/escape, dangling.
    assert_eq!(usage.inodes, 10, "{usage:?}");
    assert!(usage.bytes >= 5000 + 7000 + 5, "{usage:?}");
    assert!(usage.bytes < (1 << 20), "followed the symlink: {usage:?}");

    // Agrees with a straightforward sum of st_blocks over the same entries.
    let mut expected = 0;
    for rel in [
        "",
        "a",
        "a/b",
        "a/b/c",
        "empty",
        "f1",
        "a/f2",
        "a/b/c/f3",
        "a/b/escape",
        "dangling",
    ] {
        expected += fs::symlink_metadata(top.join(rel)).unwrap().blocks() * 512;
    }
    assert_eq!(
        usage,
        Usage {
            bytes: expected,
            inodes: 10
        }
    );
}

#[test]
fn tree_usage_of_single_entries() {
    let root = tempfile::tempdir().unwrap();
    let file = root.path().join("f");
    fs::write(&file, vec![7u8; 10_000]).unwrap();
    let usage = tree_usage(&file).unwrap();
    assert_eq!(usage.inodes, 1);
    assert!(usage.bytes >= 10_000);

    // A symlink to a directory counts as itself, like `du -s link`.
    symlink(root.path(), root.path().join("link")).unwrap();
    assert_eq!(tree_usage(&root.path().join("link")).unwrap().inodes, 1);

    let empty = root.path().join("empty");
    fs::create_dir(&empty).unwrap();
    assert_eq!(tree_usage(&empty).unwrap().inodes, 1);

    assert_eq!(
        tree_usage(&root.path().join("missing")).unwrap_err().kind(),
        ErrorKind::NotFound
    );
}

#[test]
fn open_beneath_stays_beneath() {
    let root = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    fs::create_dir_all(root.path().join("a/b")).unwrap();
    fs::write(root.path().join("a/b/f"), b"x").unwrap();
    symlink(outside.path(), root.path().join("a/out")).unwrap();
    symlink("b", root.path().join("a/in")).unwrap();

    let fd = open_beneath(root.path(), Path::new("a/b/f")).unwrap();
    let st = rustix::fs::fstat(&fd).unwrap();
    assert_eq!(st.st_ino, fs::metadata(root.path().join("a/b/f")).unwrap().ino());
    open_beneath(root.path(), Path::new("a/b")).unwrap();
    open_beneath(root.path(), Path::new("")).unwrap();
    // ".." that stays inside is fine.
    open_beneath(root.path(), Path::new("a/b/../b/f")).unwrap();

    // Symlinks are refused, even ones that point inside.
    let err = open_beneath(root.path(), Path::new("a/out")).unwrap_err();
    assert_eq!(loam_sys::os_error(&err), Some(libc::ELOOP), "{err}");
    let err = open_beneath(root.path(), Path::new("a/in/f")).unwrap_err();
    assert_eq!(loam_sys::os_error(&err), Some(libc::ELOOP), "{err}");

    // Escapes are refused.
    let err = open_beneath(root.path(), Path::new("../x")).unwrap_err();
    assert_eq!(loam_sys::os_error(&err), Some(libc::EXDEV), "{err}");
    let err = open_beneath(root.path(), Path::new("a/../../x")).unwrap_err();
    assert_eq!(loam_sys::os_error(&err), Some(libc::EXDEV), "{err}");
    let err = open_beneath(root.path(), Path::new("/etc")).unwrap_err();
    assert_eq!(loam_sys::os_error(&err), Some(libc::EXDEV), "{err}");
    assert!(err.to_string().contains("/etc"), "{err}");

    let err = open_beneath(root.path(), Path::new("a/missing")).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
}

//! Careful filesystem operations on the node's storage.
//!
//! loam keeps volume data and its own state on the node's disks, in
//! directories that pods can write into. So everything here assumes the tree
//! below a volume directory is hostile: names may be symlinks planted to
//! redirect us, subdirectories may be mount points, and files may vanish
//! while we look. The rules that follow from that:
//!
//! * state files are written atomically and durably ([`write_atomic`],
//!   [`remove_file_durable`], [`fsync_dir`]), so a crash leaves either the old
//!   or the new content;
//! * trees are walked through directory file descriptors, opening each level
//!   with `O_NOFOLLOW` relative to its parent, never by re-resolving full
//!   paths ([`remove_tree_beneath`], [`tree_usage`]);
//! * walks never cross into another mount;
//! * paths and names from RPC requests are validated before use
//!   ([`check_absolute_path`], [`is_single_component`]) and resolved with
//!   `openat2(RESOLVE_BENEATH)` where they must stay under a root
//!   ([`open_beneath`]).

use std::{
    collections::HashSet,
    ffi::{CStr, CString, OsStr},
    io::{self, Write},
    os::{fd::OwnedFd, unix::ffi::OsStrExt},
    path::{Path, PathBuf},
};

use rustix::{
    fd::{AsFd, BorrowedFd},
    fs::{
        AtFlags, CWD, Dir, FileType, Mode, OFlags, ResolveFlags, Statx, StatxFlags, fchmod, fsync, mkdirat,
        open, openat, openat2, renameat, statx, unlinkat,
    },
    io::Errno,
};

/// Longest file name component Linux filesystems accept (`NAME_MAX`).
const NAME_MAX: usize = 255;
/// Longest request path accepted, in bytes. This is Linux's `PATH_MAX`, which
/// counts the terminating NUL, so the longest one would still fail at the
/// syscall; the check is a cheap bound on input, not an exact kernel limit.
const PATH_MAX: usize = 4096;
/// Deepest directory nesting the tree walks will follow.
const MAX_DEPTH: usize = 4096;
/// The walks keep a directory fd for each of the first this-many levels; below
/// that, an ancestor's fd is closed while descending and reopened through
/// `..` (and verified) when coming back. This bounds the fds one walk holds,
/// so a deep tree cannot exhaust `RLIMIT_NOFILE` (often 1024).
const KEEP_FDS: usize = 64;

/// Whether `path` is a directory itself, not a symlink to one.
pub fn is_dir_no_follow(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir())
}

/// A directory held open to ask about many of its entries: each question then looks up one name, not the
/// whole path again.
pub struct DirEntries(OwnedFd);

impl DirEntries {
    pub fn open(dir: &Path) -> io::Result<DirEntries> {
        Ok(DirEntries(open(
            dir,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?))
    }

    /// Whether the entry `name` is a directory itself, not a symlink to one.
    pub fn is_dir(&self, name: &str) -> bool {
        statx(&self.0, name, AtFlags::SYMLINK_NOFOLLOW, StatxFlags::TYPE)
            .is_ok_and(|st| FileType::from_raw_mode(st.stx_mode.into()) == FileType::Directory)
    }
}

/// Whether `name` can be used as exactly one path component: non-empty, at
/// most 255 bytes, not `.` or `..`, without `/` or NUL.
pub fn is_single_component(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= NAME_MAX
        && name != "."
        && name != ".."
        && !name.bytes().any(|b| b == b'/' || b == 0)
}

fn check_component(name: &str) -> io::Result<()> {
    if is_single_component(name) {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("not a single path component: {name:?}"),
        ))
    }
}

fn open_dir(dir: &Path, extra: OFlags) -> io::Result<OwnedFd> {
    open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | extra,
        Mode::empty(),
    )
    .map_err(|e| crate::context(e, format!("opening directory {}", dir.display())))
}

/// Opens the subdirectory `name` of `dirfd` for reading, refusing symlinks.
fn open_subdir(dirfd: impl AsFd, name: &CStr) -> Result<OwnedFd, Errno> {
    openat(
        dirfd,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

fn fsync_fd(fd: impl AsFd, dir: &Path) -> io::Result<()> {
    fsync(fd).map_err(|e| crate::context(e, format!("fsync of directory {}", dir.display())))
}

/// Flushes `dir` itself to disk, making earlier creations, renames and
/// removals of its entries durable.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    let fd = open_dir(dir, OFlags::empty())?;
    fsync_fd(&fd, dir)
}

/// Replaces `dir/name` with `data` atomically and durably.
///
/// The data goes to `dir/.{name}.tmp` (created mode 0600, or truncated and
/// reset to 0600; never through a symlink), is fsynced, renamed over `name`,
/// and then `dir` is fsynced. Readers see the old or the new content, never a
/// mix, even across a crash. Concurrent writers of the same name must be
/// serialised by the caller, as they share the temporary file.
pub fn write_atomic(dir: &Path, name: &str, data: &[u8]) -> io::Result<()> {
    write_replacing(dir, name, data, true)
}

/// Replaces `dir/name` with `data` atomically, like [`write_atomic`], but without flushing anything: readers and
/// a restarted process see the old or the new content, while after a power loss either may be there or the file
/// may be missing. For state that a power loss makes moot anyway (notes on mounts, which a reboot removes).
pub fn write_replace(dir: &Path, name: &str, data: &[u8]) -> io::Result<()> {
    write_replacing(dir, name, data, false)
}

fn write_replacing(dir: &Path, name: &str, data: &[u8], durable: bool) -> io::Result<()> {
    check_component(name)?;
    let dirfd = open_dir(dir, OFlags::empty())?;
    let tmp = format!(".{name}.tmp");
    let target = dir.join(name);
    let fd = openat(
        &dirfd,
        tmp.as_str(),
        OFlags::CREATE | OFlags::TRUNC | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
    .map_err(|e| crate::context(e, format!("creating {}", dir.join(&tmp).display())))?;

    let written = (|| -> io::Result<()> {
        // A stale temporary file left by a crash keeps its old mode on
        // O_TRUNC; state files must not become more readable than 0600.
        fchmod(&fd, Mode::from_raw_mode(0o600))?;
        let mut file = std::fs::File::from(fd);
        file.write_all(data)?;
        if durable {
            file.sync_all()?;
        }
        renameat(&dirfd, tmp.as_str(), &dirfd, name)?;
        Ok(())
    })();
    if let Err(e) = written {
        // Best effort: the temporary file is harmless but untidy.
        let _ = unlinkat(&dirfd, tmp.as_str(), AtFlags::empty());
        return Err(crate::context(e, format!("writing {}", target.display())));
    }
    if durable {
        fsync_fd(&dirfd, dir)?;
    }
    Ok(())
}

/// Renames `dir/from` to `dir/to` (both single components; never following a symlink at either), and makes the
/// rename durable. A missing `from` is an error of kind `NotFound`.
pub fn rename_durable(dir: &Path, from: &str, to: &str) -> io::Result<()> {
    check_component(from)?;
    check_component(to)?;
    let dirfd = open_dir(dir, OFlags::NOFOLLOW)?;
    renameat(&dirfd, from, &dirfd, to)
        .map_err(|e| crate::context(e, format!("renaming {} to {}", dir.join(from).display(), to)))?;
    fsync_fd(&dirfd, dir)
}

/// Removes the file `dir/name` and makes the removal durable.
///
/// A file that does not exist (nor its directory) counts as removed. `name`
/// must not be a directory.
pub fn remove_file_durable(dir: &Path, name: &str) -> io::Result<()> {
    check_component(name)?;
    let dirfd = match open_dir(dir, OFlags::empty()) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        other => other?,
    };
    match unlinkat(&dirfd, name, AtFlags::empty()) {
        // Still fsync when it was already gone: an earlier attempt may have
        // unlinked it and crashed before the removal reached the disk.
        Ok(()) | Err(Errno::NOENT) => {}
        Err(e) => {
            return Err(crate::context(
                e,
                format!("removing {}", dir.join(name).display()),
            ));
        }
    }
    fsync_fd(&dirfd, dir)
}

/// Creates the directory `parent/name` with exactly `mode` (the umask does
/// not apply).
///
/// `parent` itself must not be a symlink. Returns `Ok(true)` if the directory
/// was created (the parent is then fsynced) and `Ok(false)` if a real
/// directory of that name already existed (its mode is left alone: it may
/// have been changed deliberately since). A symlink or non-directory in the
/// way is an error of kind [`io::ErrorKind::AlreadyExists`].
pub fn create_dir_checked(parent: &Path, name: &str, mode: u32) -> io::Result<bool> {
    create_dir(parent, name, mode, true)
}

/// [`create_dir_checked`] without making the new entry durable: for directories whose loss in a crash loses
/// nothing (a publish target, which the mount on it outlives only until the next boot).
pub fn create_dir_checked_unsynced(parent: &Path, name: &str, mode: u32) -> io::Result<bool> {
    create_dir(parent, name, mode, false)
}

fn create_dir(parent: &Path, name: &str, mode: u32, durable: bool) -> io::Result<bool> {
    check_component(name)?;
    let path = parent.join(name);
    let parent_fd = open_dir(parent, OFlags::NOFOLLOW)?;
    let mode = Mode::from_raw_mode(mode);
    match mkdirat(&parent_fd, name, mode) {
        Ok(()) => {
            let fd = open_subdir(&parent_fd, &cstring(name)?)
                .map_err(|e| crate::context(e, format!("opening {}", path.display())))?;
            // mkdir applies the umask; set what was asked for.
            fchmod(&fd, mode).map_err(|e| crate::context(e, format!("chmod of {}", path.display())))?;
            if durable {
                fsync_fd(&parent_fd, parent)?;
            }
            Ok(true)
        }
        Err(Errno::EXIST) => {
            let st = statx(&parent_fd, name, AtFlags::SYMLINK_NOFOLLOW, StatxFlags::TYPE)
                .map_err(|e| crate::context(e, format!("checking {}", path.display())))?;
            match file_type(&st) {
                FileType::Directory => Ok(false),
                FileType::Symlink => Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} already exists as a symlink", path.display()),
                )),
                other => Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!(
                        "{} already exists and is not a directory ({other:?})",
                        path.display()
                    ),
                )),
            }
        }
        Err(e) => Err(crate::context(
            e,
            format!("creating directory {}", path.display()),
        )),
    }
}

fn cstring(name: &str) -> io::Result<CString> {
    CString::new(name).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

fn file_type(st: &Statx) -> FileType {
    FileType::from_raw_mode(st.stx_mode.into())
}

/// `statx` of an open fd, with what the walks need to compare identities.
fn statx_fd(fd: impl AsFd, path: &Path) -> io::Result<Statx> {
    statx(
        fd,
        c"",
        AtFlags::EMPTY_PATH,
        StatxFlags::BASIC_STATS | StatxFlags::MNT_ID,
    )
    .map_err(|e| crate::context(e, format!("stat of {}", path.display())))
}

/// The identity of a directory, to recognise it again when reopened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct FileId {
    dev: (u32, u32),
    ino: u64,
}

impl FileId {
    fn of(st: &Statx) -> Self {
        FileId {
            dev: (st.stx_dev_major, st.stx_dev_minor),
            ino: st.stx_ino,
        }
    }
}

/// Whether `st` is on the same mount as `reference`.
///
/// The mount id catches bind mounts of the same filesystem (same `st_dev`);
/// `st_dev` alone is the fallback on kernels without `STATX_MNT_ID` (< 5.8).
fn same_mount(reference: &Statx, st: &Statx) -> bool {
    let has_mnt_id = |s: &Statx| s.stx_mask & StatxFlags::MNT_ID.bits() != 0;
    (reference.stx_dev_major, reference.stx_dev_minor) == (st.stx_dev_major, st.stx_dev_minor)
        && (!has_mnt_id(reference) || !has_mnt_id(st) || reference.stx_mnt_id == st.stx_mnt_id)
}

fn refuse_mount_point(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::ResourceBusy,
        format!("refusing to delete across a mount point at {}", path.display()),
    )
}

fn os_str(name: &CStr) -> &OsStr {
    OsStr::from_bytes(name.to_bytes())
}

/// One directory on the walk's current path.
struct Frame {
    /// Open fd of the directory; `None` only for an ancestor deeper than
    /// [`KEEP_FDS`] while the walk is below it. The top frame always has one.
    fd: Option<OwnedFd>,
    /// To verify the directory when it is reopened through `..`.
    id: FileId,
    /// Its name in its parent (empty for the walk's root).
    name: CString,
    /// Subdirectories still to visit.
    pending: Vec<CString>,
    /// Whether the directory's entries still need to be read.
    needs_listing: bool,
}

/// A depth-first walk over directory fds that never resolves a path from the
/// top again, so nothing renamed or swapped in the tree can redirect it.
struct Walk {
    stack: Vec<Frame>,
    /// Path of the current directory, for error messages only.
    path: PathBuf,
}

impl Walk {
    fn new(fd: OwnedFd, st: &Statx, path: PathBuf) -> Self {
        Walk {
            stack: vec![Frame {
                fd: Some(fd),
                id: FileId::of(st),
                name: CString::default(),
                pending: Vec::new(),
                needs_listing: true,
            }],
            path,
        }
    }

    fn top(&mut self) -> &mut Frame {
        self.stack.last_mut().expect("walk has a current directory")
    }

    fn fd(&self) -> BorrowedFd<'_> {
        self.stack
            .last()
            .and_then(|f| f.fd.as_ref())
            .expect("current directory is open")
            .as_fd()
    }

    /// Makes `name` (opened as `fd`, described by `st`) the current directory.
    fn descend(&mut self, name: CString, fd: OwnedFd, st: &Statx) -> io::Result<()> {
        let child_path = self.path.join(os_str(&name));
        if self.stack.len() >= MAX_DEPTH {
            return Err(io::Error::other(format!(
                "directory tree nested deeper than {MAX_DEPTH} levels at {}",
                child_path.display()
            )));
        }
        if self.stack.len() > KEEP_FDS {
            self.top().fd = None;
        }
        self.stack.push(Frame {
            fd: Some(fd),
            id: FileId::of(st),
            name,
            pending: Vec::new(),
            needs_listing: true,
        });
        self.path = child_path;
        Ok(())
    }

    /// Leaves the current directory. Returns its name, with the parent now
    /// current (and open), or `None` if it was the walk's root.
    fn ascend(&mut self) -> io::Result<Option<CString>> {
        let done = self.stack.pop().expect("walk has a current directory");
        let Some(parent) = self.stack.last_mut() else {
            return Ok(None);
        };
        self.path.pop();
        if parent.fd.is_none() {
            let child_fd = done.fd.expect("current directory is open");
            let fd = open_subdir(&child_fd, c"..")
                .map_err(|e| crate::context(e, format!("reopening {}", self.path.display())))?;
            // ".." is wherever the child is now; only carry on if that is
            // still the directory we came from.
            if FileId::of(&statx_fd(&fd, &self.path)?) != parent.id {
                return Err(io::Error::other(format!(
                    "{} was moved while being walked",
                    self.path.display()
                )));
            }
            parent.fd = Some(fd);
        }
        Ok(Some(done.name))
    }
}

/// Reads the entries of an open directory, without `.` and `..`.
fn list_dir(fd: BorrowedFd<'_>, path: &Path) -> io::Result<Vec<(CString, FileType)>> {
    let ctx = |e: Errno| crate::context(e, format!("reading directory {}", path.display()));
    let mut dir = Dir::read_from(fd).map_err(ctx)?;
    let mut entries = Vec::new();
    while let Some(entry) = dir.read() {
        let entry = entry.map_err(ctx)?;
        let name = entry.file_name();
        if name == c"." || name == c".." {
            continue;
        }
        entries.push((name.to_owned(), entry.file_type()));
    }
    Ok(entries)
}

/// Removes `parent/name` and everything below it, like `rm -rf`, but safely
/// in a tree others can write into.
///
/// * `name` must be a single component.
/// * Symlinks are removed, never followed: a symlink at `parent/name` itself
///   is unlinked and its target left alone.
/// * Every directory is opened relative to its parent with `O_NOFOLLOW`.
/// * It never crosses into another mount (including bind mounts of the same
///   filesystem): on meeting a mount point it stops with an error of kind
///   [`io::ErrorKind::ResourceBusy`] ("refusing to delete across a mount
///   point at ..."), leaving what was not yet removed. A file bind-mounted in
///   the tree makes the unlink fail with `EBUSY` likewise.
/// * A missing `parent/name` counts as removed.
///
/// On success `parent` is fsynced so the removal is durable.
pub fn remove_tree_beneath(parent: &Path, name: &str) -> io::Result<()> {
    remove_tree(parent, name, true)
}

/// [`remove_tree_beneath`] without the final fsync, for a tree whose removal a later durable step (or start-up)
/// finishes anyway.
pub fn remove_tree_beneath_unsynced(parent: &Path, name: &str) -> io::Result<()> {
    remove_tree(parent, name, false)
}

fn remove_tree(parent: &Path, name: &str, durable: bool) -> io::Result<()> {
    check_component(name)?;
    let top_path = parent.join(name);
    let parent_fd = open_dir(parent, OFlags::NOFOLLOW)?;
    let parent_st = statx_fd(&parent_fd, parent)?;
    let cname = cstring(name)?;

    let st = match statx(&parent_fd, &cname, AtFlags::SYMLINK_NOFOLLOW, StatxFlags::TYPE) {
        Ok(st) => st,
        Err(Errno::NOENT) => return Ok(()),
        Err(e) => return Err(crate::context(e, format!("stat of {}", top_path.display()))),
    };
    if file_type(&st) != FileType::Directory {
        match unlinkat(&parent_fd, &cname, AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => {}
            Err(e) => {
                return Err(crate::context(e, format!("removing {}", top_path.display())));
            }
        }
        return if durable {
            fsync_fd(&parent_fd, parent)
        } else {
            Ok(())
        };
    }

    let top_fd = match open_subdir(&parent_fd, &cname) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(()),
        Err(e) => return Err(crate::context(e, format!("opening {}", top_path.display()))),
    };
    let top_st = statx_fd(&top_fd, &top_path)?;
    if !same_mount(&parent_st, &top_st) {
        return Err(refuse_mount_point(&top_path));
    }
    empty_tree(Walk::new(top_fd, &top_st, top_path.clone()), &parent_st)?;
    match unlinkat(&parent_fd, &cname, AtFlags::REMOVEDIR) {
        Ok(()) | Err(Errno::NOENT) => {}
        Err(e) => {
            return Err(crate::context(e, format!("removing {}", top_path.display())));
        }
    }
    if durable {
        fsync_fd(&parent_fd, parent)?;
    }
    Ok(())
}

/// Removes everything below the walk's root (but not the root itself).
fn empty_tree(mut walk: Walk, reference: &Statx) -> io::Result<()> {
    loop {
        if let Some(child) = walk.top().pending.pop() {
            let child_path = walk.path.join(os_str(&child));
            let fd = match open_subdir(walk.fd(), &child) {
                Ok(fd) => fd,
                // Removed by someone else meanwhile: fine.
                Err(Errno::NOENT) => continue,
                Err(e) => {
                    return Err(crate::context(e, format!("opening {}", child_path.display())));
                }
            };
            let st = statx_fd(&fd, &child_path)?;
            if !same_mount(reference, &st) {
                return Err(refuse_mount_point(&child_path));
            }
            walk.descend(child, fd, &st)?;
            continue;
        }

        if walk.top().needs_listing {
            let entries = list_dir(walk.fd(), &walk.path)?;
            // After handling a non-empty listing, read the directory again:
            // entries may have been created meanwhile, and some filesystems
            // can skip entries of a directory that changes while it is read.
            // Only an empty listing proves the directory empty.
            walk.top().needs_listing = !entries.is_empty();
            for (name, ty) in entries {
                let is_dir = match ty {
                    FileType::Directory => true,
                    FileType::Unknown => {
                        match statx(walk.fd(), &name, AtFlags::SYMLINK_NOFOLLOW, StatxFlags::TYPE) {
                            Ok(st) => file_type(&st) == FileType::Directory,
                            Err(Errno::NOENT) => continue,
                            Err(e) => {
                                let p = walk.path.join(os_str(&name));
                                return Err(crate::context(e, format!("stat of {}", p.display())));
                            }
                        }
                    }
                    _ => false,
                };
                if is_dir {
                    walk.top().pending.push(name);
                    continue;
                }
                match unlinkat(walk.fd(), &name, AtFlags::empty()) {
                    Ok(()) | Err(Errno::NOENT) => {}
                    Err(e) => {
                        let p = walk.path.join(os_str(&name));
                        return Err(crate::context(e, format!("removing {}", p.display())));
                    }
                }
            }
            continue;
        }

        // The current directory is empty: remove it from its parent.
        let Some(name) = walk.ascend()? else {
            return Ok(());
        };
        match unlinkat(walk.fd(), &name, AtFlags::REMOVEDIR) {
            Ok(()) | Err(Errno::NOENT) => {}
            Err(e) => {
                let p = walk.path.join(os_str(&name));
                return Err(crate::context(e, format!("removing {}", p.display())));
            }
        }
    }
}

/// Space and inode use of a tree, as counted by [`tree_usage`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// Allocated bytes (`st_blocks * 512`), not apparent sizes.
    pub bytes: u64,
    /// Number of entries (files, directories, symlinks, ...), each inode once.
    pub inodes: u64,
}

/// Measures the tree at `path`, like `du -s --one-file-system`: the sum of the
/// allocated size of every entry including `path` itself, and their count.
///
/// Symlinks are counted, never followed (a symlink at `path` counts as
/// itself); other mounts are neither counted nor entered; a file with several
/// hard links in the tree counts once. Entries that disappear during the walk
/// are skipped.
pub fn tree_usage(path: &Path) -> io::Result<Usage> {
    let fd = match open_dir(path, OFlags::NOFOLLOW) {
        Ok(fd) => fd,
        Err(e) if matches!(crate::os_error(&e), Some(libc::ENOTDIR | libc::ELOOP)) => {
            // Not a directory (or a symlink): just the entry itself.
            let st = statx(CWD, path, AtFlags::SYMLINK_NOFOLLOW, StatxFlags::BASIC_STATS)
                .map_err(|e| crate::context(e, format!("stat of {}", path.display())))?;
            return Ok(Usage {
                bytes: st.stx_blocks.saturating_mul(512),
                inodes: 1,
            });
        }
        Err(e) => return Err(e),
    };
    let root_st = statx_fd(&fd, path)?;
    let mut usage = Usage {
        bytes: root_st.stx_blocks.saturating_mul(512),
        inodes: 1,
    };
    let mut seen: HashSet<FileId> = HashSet::new();
    let mut walk = Walk::new(fd, &root_st, path.to_path_buf());
    loop {
        if let Some(child) = walk.top().pending.pop() {
            let fd = match open_subdir(walk.fd(), &child) {
                Ok(fd) => fd,
                // Gone or replaced by a non-directory since it was listed.
                Err(Errno::NOENT | Errno::NOTDIR | Errno::LOOP) => continue,
                Err(e) => {
                    let p = walk.path.join(os_str(&child));
                    return Err(crate::context(e, format!("opening {}", p.display())));
                }
            };
            let p = walk.path.join(os_str(&child));
            let st = statx_fd(&fd, &p)?;
            if !same_mount(&root_st, &st) {
                continue;
            }
            walk.descend(child, fd, &st)?;
            continue;
        }

        if walk.top().needs_listing {
            walk.top().needs_listing = false;
            for (name, _) in list_dir(walk.fd(), &walk.path)? {
                let st = match statx(
                    walk.fd(),
                    &name,
                    AtFlags::SYMLINK_NOFOLLOW,
                    StatxFlags::BASIC_STATS | StatxFlags::MNT_ID,
                ) {
                    Ok(st) => st,
                    Err(Errno::NOENT) => continue,
                    Err(e) => {
                        let p = walk.path.join(os_str(&name));
                        return Err(crate::context(e, format!("stat of {}", p.display())));
                    }
                };
                // A mount point (directory or file) belongs to the other
                // mount: skip it entirely, as `du -x` does.
                if !same_mount(&root_st, &st) {
                    continue;
                }
                let is_dir = file_type(&st) == FileType::Directory;
                if !is_dir && st.stx_nlink > 1 && !seen.insert(FileId::of(&st)) {
                    continue;
                }
                usage.bytes = usage.bytes.saturating_add(st.stx_blocks.saturating_mul(512));
                usage.inodes += 1;
                if is_dir {
                    walk.top().pending.push(name);
                }
            }
            continue;
        }

        if walk.ascend()?.is_none() {
            return Ok(usage);
        }
    }
}

/// Why a path from a request was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The path is the empty string.
    #[error("path is empty")]
    Empty,
    /// Longer than 4096 bytes.
    #[error("path is too long ({len} bytes, at most {PATH_MAX})")]
    TooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// Contains a NUL byte.
    #[error("path contains a NUL byte: {path:?}")]
    ContainsNul {
        /// The offending path.
        path: String,
    },
    /// Does not start with `/`.
    #[error("path must be absolute: {path}")]
    NotAbsolute {
        /// The offending path.
        path: String,
    },
    /// Has a `.` component.
    #[error("path contains '.': {path}")]
    Dot {
        /// The offending path.
        path: String,
    },
    /// Has a `..` component.
    #[error("path contains '..': {path}")]
    DotDot {
        /// The offending path.
        path: String,
    },
}

/// Validates a path that came from an RPC request and returns it normalised.
///
/// It must be non-empty, absolute, at most 4096 bytes, free of NUL bytes and
/// of `.` and `..` components. Repeated and trailing slashes are collapsed
/// (`/a//b/` becomes `/a/b`); nothing else is rewritten. The result is still
/// subject to symlinks on the filesystem: use it with [`open_beneath`] or
/// `O_NOFOLLOW` where that matters.
pub fn check_absolute_path(path: &str) -> Result<PathBuf, PathError> {
    let owned = || path.to_string();
    if path.is_empty() {
        return Err(PathError::Empty);
    }
    if path.len() > PATH_MAX {
        return Err(PathError::TooLong { len: path.len() });
    }
    if path.contains('\0') {
        return Err(PathError::ContainsNul { path: owned() });
    }
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute { path: owned() });
    }
    let mut normalized = String::with_capacity(path.len());
    for component in path.split('/').filter(|c| !c.is_empty()) {
        match component {
            "." => return Err(PathError::Dot { path: owned() }),
            ".." => return Err(PathError::DotDot { path: owned() }),
            _ => {
                normalized.push('/');
                normalized.push_str(component);
            }
        }
    }
    if normalized.is_empty() {
        normalized.push('/');
    }
    Ok(PathBuf::from(normalized))
}

/// Opens `root/rel` as an `O_PATH` fd, guaranteeing that resolution stays
/// beneath `root`: `..` escapes and absolute `rel` fail with `EXDEV`, and any
/// symlink along the way (even one pointing inside) fails with `ELOOP`.
///
/// `root` itself is trusted and opened normally. An empty `rel` opens `root`.
pub fn open_beneath(root: &Path, rel: &Path) -> io::Result<OwnedFd> {
    let root_fd = open(
        root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| crate::context(e, format!("opening {}", root.display())))?;
    let rel_arg = if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    };
    let mut attempts = 0;
    loop {
        match openat2(
            &root_fd,
            rel_arg,
            OFlags::PATH | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
        ) {
            Ok(fd) => return Ok(fd),
            // The kernel answers EAGAIN when a concurrent rename could have
            // made a ".." check unreliable; retrying is the documented fix.
            Err(Errno::AGAIN) if attempts < 16 => attempts += 1,
            Err(e) => {
                return Err(crate::context(
                    e,
                    format!("opening {} beneath {}", rel.display(), root.display()),
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dir_entries_see_directories_only_and_never_follow() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("dir")).unwrap();
        std::fs::write(t.path().join("file"), b"x").unwrap();
        std::os::unix::fs::symlink(t.path().join("dir"), t.path().join("link")).unwrap();
        let e = DirEntries::open(t.path()).unwrap();
        assert!(e.is_dir("dir"));
        for not in ["file", "link", "missing", "dir/missing"] {
            assert!(!e.is_dir(not), "{not}");
            assert!(!is_dir_no_follow(&t.path().join(not)), "{not}");
        }
        assert!(DirEntries::open(&t.path().join("file")).is_err());
        assert!(DirEntries::open(&t.path().join("missing")).is_err());
    }

    #[test]
    fn single_component() {
        for ok in ["a", "pvc-123", ".hidden", "...", "a b", &"x".repeat(255)] {
            assert!(is_single_component(ok), "{ok:?}");
        }
        for bad in ["", ".", "..", "a/b", "/", "a\0b", &"x".repeat(256)] {
            assert!(!is_single_component(bad), "{bad:?}");
        }
    }

    #[test]
    fn absolute_paths_are_normalised() {
        let ok = |p: &str| check_absolute_path(p).unwrap();
        assert_eq!(ok("/"), Path::new("/"));
        assert_eq!(ok("//"), Path::new("/"));
        assert_eq!(ok("/a"), Path::new("/a"));
        assert_eq!(ok("/a//b/"), Path::new("/a/b"));
        assert_eq!(ok("/a/.b/..c/"), Path::new("/a/.b/..c"));
        assert_eq!(
            ok("/var/lib/kubelet/pods/x/volumes"),
            Path::new("/var/lib/kubelet/pods/x/volumes")
        );
        assert_eq!(ok(&format!("/{}", "a".repeat(4095))).as_os_str().len(), 4096);
    }

    #[test]
    fn bad_paths_are_rejected() {
        let err = |p: &str| check_absolute_path(p).unwrap_err();
        assert_eq!(err(""), PathError::Empty);
        assert!(matches!(err("a/b"), PathError::NotAbsolute { .. }));
        assert_eq!(err("a/b").to_string(), "path must be absolute: a/b");
        assert!(matches!(err("/a/\0"), PathError::ContainsNul { .. }));
        assert_eq!(err("/a/../b").to_string(), "path contains '..': /a/../b");
        assert!(matches!(err("/.."), PathError::DotDot { .. }));
        assert!(matches!(err("/a/."), PathError::Dot { .. }));
        assert!(matches!(err("/./a"), PathError::Dot { .. }));
        assert_eq!(
            err(&format!("/{}", "a".repeat(4096))),
            PathError::TooLong { len: 4097 }
        );
    }
}

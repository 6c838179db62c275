//! A recording, in-memory [`Host`] for unit tests that need no root: it keeps its own mount table and loop
//! devices, remembers what it formatted, records every call, and fails a chosen call with a chosen errno.
//!
//! It behaves like the kernel where the engine depends on it: a bind shows the source's directory at the
//! target, a mount of an unformatted device fails with `EINVAL`, unmounting a path with nothing mounted fails
//! with `EINVAL` and one with a mount beneath it with `EBUSY`, and detaching a loop device that is still mounted
//! is deferred until its last unmount (the kernel's autoclear on `LOOP_CLR_FD`).

use std::{
    collections::BTreeMap,
    io,
    path::{Path, PathBuf},
    sync::{Mutex, MutexGuard},
};

use crate::{
    host::{Host, LoopConfig, LoopDevice, ProjectQuotaState, ProjectUsage, Qgroup, QuotaMode},
    mountinfo::{MountInfo, MountTable},
    statfs::FsStats,
};

/// Major number of loop devices, as on Linux.
const LOOP_MAJOR: u32 = 7;

#[derive(Debug)]
struct Loop {
    backing: PathBuf,
    /// Detach asked for while mounted: goes away at the last unmount.
    autoclear: bool,
}

/// A btrfs filesystem the fake pretends is mounted at a directory: subvolumes are real directories under it.
#[derive(Debug)]
struct Btrfs {
    root: PathBuf,
    mode: QuotaMode,
    /// Whether enabling simple quotas fails (an old kernel).
    no_simple: bool,
    next_id: u64,
    subvolumes: BTreeMap<PathBuf, u64>,
    qgroups: BTreeMap<u64, Qgroup>,
}

/// A filesystem with project quota the fake pretends is mounted at a directory.
#[derive(Debug)]
struct Projects {
    root: PathBuf,
    state: ProjectQuotaState,
    /// Directory → (project ID, inherit).
    dirs: BTreeMap<PathBuf, (u32, bool)>,
    /// Project ID → usage and limits.
    usage: BTreeMap<u32, ProjectUsage>,
}

/// A whole block device the fake pretends exists at a path (see [`FakeHost::add_device`]).
#[derive(Debug, Clone, Default)]
pub struct FakeDevice {
    pub size: u64,
    pub identity: Option<String>,
    /// What holds it, as `device_users` reports.
    pub users: Option<String>,
    pub signature: Option<String>,
    pub fs_uuid: Option<String>,
    /// Whether `discard` works (else it fails as unsupported).
    pub discard: bool,
    /// What `discard_zeroes` answers.
    pub discard_zeroes: bool,
    /// Whether discarded blocks still read back as the old data.
    pub discard_keeps_data: bool,
    /// Whether anything written is still readable on it.
    pub dirty: bool,
}

#[derive(Debug, Default)]
struct State {
    devices: BTreeMap<PathBuf, FakeDevice>,
    btrfs: Vec<Btrfs>,
    projects: Vec<Projects>,
    mounts: Vec<MountInfo>,
    next_mount_id: u32,
    loops: BTreeMap<u32, Loop>,
    /// Backing file → filesystem type it was formatted with (the format lives on the file, across detaches).
    formatted: BTreeMap<PathBuf, String>,
    statfs: Vec<(PathBuf, FsStats)>,
    calls: Vec<String>,
    /// (operation, calls of it still to let through, errno).
    failures: Vec<(String, usize, i32)>,
}

/// See the module documentation.
#[derive(Debug)]
pub struct FakeHost {
    state: Mutex<State>,
}

impl Default for FakeHost {
    fn default() -> Self {
        let root = MountInfo {
            mount_id: 1,
            parent_id: 0,
            major: 0,
            minor: 1,
            root: PathBuf::from("/"),
            mount_point: PathBuf::from("/"),
            mount_options: vec!["rw".into()],
            optional_fields: vec![],
            fs_type: "fakefs".into(),
            source: "fake".into(),
            super_options: vec![],
        };
        FakeHost {
            state: Mutex::new(State {
                mounts: vec![root],
                next_mount_id: 2,
                ..State::default()
            }),
        }
    }
}

/// The fake's identity of a directory: its device and a hash of its path within that device, so a mount shows
/// what its source path is, as with real inodes.
fn fake_id(major: u32, minor: u32, root: &Path) -> crate::mount::FileId {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    root.hash(&mut h);
    crate::mount::FileId {
        dev: crate::mount::dev_number(major, minor),
        ino: h.finish(),
    }
}

fn errno(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

impl FakeHost {
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes the next call of `op` (a [`Host`] method name, such as `"mkfs"`) fail with `errno`.
    pub fn fail(&self, op: &str, errno: i32) {
        self.fail_after(op, 0, errno);
    }

    /// Lets `skip` calls of `op` through, then fails the next one with `errno`.
    pub fn fail_after(&self, op: &str, skip: usize, errno: i32) {
        self.state().failures.push((op.to_owned(), skip, errno));
    }

    /// Pretends `path` is the block device `dev`.
    pub fn add_device(&self, path: &Path, dev: FakeDevice) {
        self.state().devices.insert(path.to_owned(), dev);
    }

    /// The fake block device at `path`, as it is now.
    pub fn device(&self, path: &Path) -> Option<FakeDevice> {
        self.state().devices.get(path).cloned()
    }

    fn device_mut<'s>(st: &'s mut State, path: &Path) -> io::Result<&'s mut FakeDevice> {
        st.devices.get_mut(path).ok_or_else(|| errno(libc::ENOENT))
    }

    /// Every call so far, as `"<op> <arguments>"`, in order.
    pub fn calls(&self) -> Vec<String> {
        self.state().calls.clone()
    }

    /// The calls of one operation, with their arguments.
    pub fn calls_of(&self, op: &str) -> Vec<String> {
        let prefix = format!("{op} ");
        self.calls()
            .into_iter()
            .filter(|c| c.starts_with(&prefix) || c == op)
            .collect()
    }

    /// Reports `stats` for every path under `path` (the longest matching override wins).
    pub fn set_statfs(&self, path: &Path, stats: FsStats) {
        let mut st = self.state();
        st.statfs.retain(|(p, _)| p != path);
        st.statfs.push((path.to_owned(), stats));
    }

    /// Loop devices attached now: (number, backing file).
    pub fn loops(&self) -> Vec<(u32, PathBuf)> {
        self.state()
            .loops
            .iter()
            .map(|(n, l)| (*n, l.backing.clone()))
            .collect()
    }

    /// What the kernel does when a loop device's backing file is deleted: the device keeps the old file, so it is
    /// no longer found by the new file at that path.
    pub fn unlink_backing(&self, file: &Path) {
        for l in self.state().loops.values_mut() {
            if l.backing == file {
                l.backing = PathBuf::from(format!("{} (deleted)", file.display()));
            }
        }
    }

    /// Pretends `root` is a btrfs filesystem with quotas in `mode`; `simple_ok` says whether simple quotas can be
    /// enabled on it.
    pub fn add_btrfs(&self, root: &Path, mode: QuotaMode, simple_ok: bool) {
        self.state().btrfs.push(Btrfs {
            root: root.to_owned(),
            mode,
            no_simple: !simple_ok,
            next_id: 256,
            subvolumes: BTreeMap::new(),
            qgroups: BTreeMap::new(),
        });
    }

    /// Sets what qgroup 0/`id` has referenced (as if the volume wrote it), or drops the qgroup with `None`.
    pub fn set_qgroup(&self, id: u64, qgroup: Option<Qgroup>) {
        for fs in &mut self.state().btrfs {
            if fs.subvolumes.values().any(|v| *v == id) {
                match qgroup {
                    Some(q) => fs.qgroups.insert(id, q),
                    None => fs.qgroups.remove(&id),
                };
            }
        }
    }

    /// The qgroups of the btrfs filesystem at `root`, by id.
    pub fn qgroups(&self, root: &Path) -> Vec<(u64, Qgroup)> {
        self.state()
            .btrfs
            .iter()
            .filter(|fs| fs.root == root)
            .flat_map(|fs| fs.qgroups.iter().map(|(id, q)| (*id, *q)))
            .collect()
    }

    /// Pretends `root` is a filesystem with project quota in `state`.
    pub fn add_project_quota(&self, root: &Path, state: ProjectQuotaState) {
        self.state().projects.push(Projects {
            root: root.to_owned(),
            state,
            dirs: BTreeMap::new(),
            usage: BTreeMap::new(),
        });
    }

    /// Sets what project `id` uses (as if its directory were written to), keeping its limits.
    pub fn set_project_used(&self, id: u32, bytes: u64, inodes: u64) {
        for fs in &mut self.state().projects {
            let u = fs.usage.entry(id).or_default();
            u.bytes = bytes;
            u.inodes = inodes;
        }
    }

    fn projects_of<'s>(st: &'s mut State, path: &Path) -> io::Result<&'s mut Projects> {
        st.projects
            .iter_mut()
            .find(|fs| path.starts_with(&fs.root))
            .ok_or_else(|| errno(libc::EOPNOTSUPP))
    }

    fn btrfs_of<'s>(st: &'s mut State, path: &Path) -> io::Result<&'s mut Btrfs> {
        st.btrfs
            .iter_mut()
            .find(|fs| path.starts_with(&fs.root))
            .ok_or_else(|| errno(libc::ENOTTY))
    }

    /// Forgets every mount and loop device, as a reboot does (formatting stays: it is on the files).
    pub fn reboot(&self) {
        let mut st = self.state();
        st.mounts.truncate(1);
        st.loops.clear();
    }

    /// Records the call and returns the injected failure for it, if one is due.
    fn enter(&self, st: &mut State, op: &str, args: String) -> io::Result<()> {
        st.calls.push(if args.is_empty() {
            op.to_owned()
        } else {
            format!("{op} {args}")
        });
        if let Some(i) = st.failures.iter().position(|(o, _, _)| o == op) {
            let (_, skip, code) = &mut st.failures[i];
            if *skip == 0 {
                let code = *code;
                st.failures.remove(i);
                return Err(errno(code));
            }
            *skip -= 1;
        }
        Ok(())
    }

    fn push_mount(
        st: &mut State,
        major: u32,
        minor: u32,
        root: PathBuf,
        target: &Path,
        fs_type: &str,
        ro: bool,
    ) {
        let parent_id = MountTable::new(st.mounts.clone())
            .containing(target)
            .map_or(1, |m| m.mount_id);
        let id = st.next_mount_id;
        st.next_mount_id += 1;
        st.mounts.push(MountInfo {
            mount_id: id,
            parent_id,
            major,
            minor,
            root,
            mount_point: target.to_owned(),
            mount_options: vec![if ro { "ro" } else { "rw" }.into()],
            optional_fields: vec![],
            fs_type: fs_type.to_owned(),
            source: "fake".into(),
            super_options: vec![],
        });
    }

    fn loop_device(number: u32) -> LoopDevice {
        LoopDevice {
            number,
            path: PathBuf::from(format!("/dev/loop{number}")),
            major: LOOP_MAJOR,
            minor: number,
        }
    }

    fn loop_of(st: &State, device: &Path) -> Option<u32> {
        let n: u32 = device.to_str()?.strip_prefix("/dev/loop")?.parse().ok()?;
        st.loops.contains_key(&n).then_some(n)
    }

    /// The backing file of an attached loop device, or ENOENT.
    fn backing_of(st: &State, device: &Path) -> io::Result<PathBuf> {
        Self::loop_of(st, device)
            .map(|n| st.loops[&n].backing.clone())
            .ok_or_else(|| errno(libc::ENOENT))
    }
}

impl Host for FakeHost {
    fn mount_table(&self) -> io::Result<MountTable> {
        let mut st = self.state();
        self.enter(&mut st, "mount_table", String::new())?;
        Ok(MountTable::new(st.mounts.clone()))
    }

    fn mounted_at(&self, path: &Path) -> io::Result<Option<crate::mount::MountedAt>> {
        let mut st = self.state();
        self.enter(&mut st, "mounted_at", path.display().to_string())?;
        Ok(MountTable::new(st.mounts.clone())
            .top_mount_at(path)
            .map(|m| crate::mount::MountedAt {
                root: fake_id(m.major, m.minor, &m.root),
                read_only: m.is_read_only(),
            }))
    }

    fn file_id(&self, path: &Path) -> io::Result<crate::mount::FileId> {
        let mut st = self.state();
        self.enter(&mut st, "file_id", path.display().to_string())?;
        let src = MountTable::new(st.mounts.clone())
            .source_of(path)
            .ok_or_else(|| errno(rustix::io::Errno::NOENT.raw_os_error()))?;
        Ok(fake_id(src.major, src.minor, &src.root))
    }

    fn bind(&self, source: &Path, target: &Path, read_only: bool) -> io::Result<()> {
        let mut st = self.state();
        self.enter(
            &mut st,
            "bind",
            format!("{} {} ro={read_only}", source.display(), target.display()),
        )?;
        if std::fs::symlink_metadata(target).is_err() {
            return Err(errno(libc::ENOENT));
        }
        let src = MountTable::new(st.mounts.clone())
            .source_of(source)
            .ok_or_else(|| errno(libc::ENOENT))?;
        let fs_type = MountTable::new(st.mounts.clone())
            .containing(source)
            .map(|m| m.fs_type.clone())
            .unwrap_or_default();
        Self::push_mount(
            &mut st, src.major, src.minor, src.root, target, &fs_type, read_only,
        );
        Ok(())
    }

    fn mount(
        &self,
        device: &Path,
        target: &Path,
        fs_type: &str,
        options: &[String],
        read_only: bool,
    ) -> io::Result<()> {
        let mut st = self.state();
        self.enter(
            &mut st,
            "mount",
            format!(
                "{} {} {fs_type} [{}] ro={read_only}",
                device.display(),
                target.display(),
                options.join(",")
            ),
        )?;
        let n = Self::loop_of(&st, device).ok_or_else(|| errno(libc::ENOENT))?;
        if st.formatted.get(&st.loops[&n].backing).map(String::as_str) != Some(fs_type) {
            return Err(errno(libc::EINVAL));
        }
        let ro = read_only || options.iter().any(|o| o == "ro");
        Self::push_mount(&mut st, LOOP_MAJOR, n, PathBuf::from("/"), target, fs_type, ro);
        Ok(())
    }

    fn unmount(&self, target: &Path) -> io::Result<()> {
        let mut st = self.state();
        self.enter(&mut st, "unmount", target.display().to_string())?;
        let Some(i) = st.mounts.iter().rposition(|m| m.mount_point == target) else {
            return Err(errno(libc::EINVAL));
        };
        let id = st.mounts[i].mount_id;
        if st.mounts.iter().any(|m| m.parent_id == id) {
            return Err(errno(libc::EBUSY));
        }
        let gone = st.mounts.remove(i);
        // A detached-while-mounted loop device goes away with its last mount.
        if gone.major == LOOP_MAJOR
            && !st
                .mounts
                .iter()
                .any(|m| m.major == LOOP_MAJOR && m.minor == gone.minor)
            && st.loops.get(&gone.minor).is_some_and(|l| l.autoclear)
        {
            st.loops.remove(&gone.minor);
        }
        Ok(())
    }

    fn statfs(&self, path: &Path) -> io::Result<FsStats> {
        let mut st = self.state();
        self.enter(&mut st, "statfs", path.display().to_string())?;
        let over = st
            .statfs
            .iter()
            .filter(|(p, _)| path.starts_with(p))
            .max_by_key(|(p, _)| p.as_os_str().len())
            .map(|(_, s)| *s);
        drop(st);
        match over {
            Some(s) => Ok(s),
            None => crate::statfs::statfs(path),
        }
    }

    fn loop_attach(&self, file: &Path, cfg: &LoopConfig) -> io::Result<LoopDevice> {
        let mut st = self.state();
        self.enter(
            &mut st,
            "loop_attach",
            format!(
                "{} dio={} bs={} ro={}",
                file.display(),
                cfg.direct_io,
                cfg.block_size,
                cfg.read_only
            ),
        )?;
        if !std::fs::symlink_metadata(file).is_ok_and(|m| m.is_file()) {
            return Err(errno(libc::ENOENT));
        }
        let n = (0..).find(|n| !st.loops.contains_key(n)).expect("a free number");
        st.loops.insert(
            n,
            Loop {
                backing: file.to_owned(),
                autoclear: false,
            },
        );
        Ok(Self::loop_device(n))
    }

    fn loop_find(&self, file: &Path) -> io::Result<Vec<LoopDevice>> {
        let mut st = self.state();
        self.enter(&mut st, "loop_find", file.display().to_string())?;
        Ok(st
            .loops
            .iter()
            .filter(|(_, l)| l.backing == file)
            .map(|(n, _)| Self::loop_device(*n))
            .collect())
    }

    fn loop_backs(&self, dev: &LoopDevice, file: &Path) -> io::Result<bool> {
        let mut st = self.state();
        self.enter(
            &mut st,
            "loop_backs",
            format!("{} {}", dev.path.display(), file.display()),
        )?;
        Ok(st.loops.get(&dev.number).is_some_and(|l| l.backing == file))
    }

    fn loop_find_under(&self, dir: &Path) -> io::Result<Vec<(PathBuf, LoopDevice)>> {
        let mut st = self.state();
        self.enter(&mut st, "loop_find_under", dir.display().to_string())?;
        Ok(st
            .loops
            .iter()
            .filter(|(_, l)| l.backing.parent() == Some(dir))
            .map(|(n, l)| (l.backing.clone(), Self::loop_device(*n)))
            .collect())
    }

    fn loop_detach(&self, dev: &LoopDevice) -> io::Result<()> {
        let mut st = self.state();
        self.enter(&mut st, "loop_detach", dev.path.display().to_string())?;
        let mounted = st
            .mounts
            .iter()
            .any(|m| m.major == LOOP_MAJOR && m.minor == dev.number);
        if mounted {
            if let Some(l) = st.loops.get_mut(&dev.number) {
                l.autoclear = true;
            }
        } else {
            st.loops.remove(&dev.number);
        }
        Ok(())
    }

    fn loop_count_under(&self, dir: &Path) -> io::Result<usize> {
        let mut st = self.state();
        self.enter(&mut st, "loop_count_under", dir.display().to_string())?;
        Ok(st.loops.values().filter(|l| l.backing.starts_with(dir)).count())
    }

    fn device_size(&self, device: &Path) -> io::Result<u64> {
        let mut st = self.state();
        self.enter(&mut st, "device_size", device.display().to_string())?;
        if let Some(d) = st.devices.get(device) {
            return Ok(d.size);
        }
        let file = Self::backing_of(&st, device)?;
        Ok(std::fs::metadata(file)?.len())
    }

    fn signature(&self, device: &Path) -> io::Result<Option<String>> {
        let mut st = self.state();
        self.enter(&mut st, "signature", device.display().to_string())?;
        if let Some(d) = st.devices.get(device) {
            return Ok(d.signature.clone());
        }
        let file = Self::backing_of(&st, device)?;
        Ok(st.formatted.get(&file).cloned())
    }

    fn mkfs(&self, device: &Path, fs_type: &str) -> io::Result<()> {
        let mut st = self.state();
        self.enter(&mut st, "mkfs", format!("{} {fs_type}", device.display()))?;
        if let Some(d) = st.devices.get_mut(device) {
            d.signature = Some(fs_type.to_owned());
            d.dirty = true;
            return Ok(());
        }
        let file = Self::backing_of(&st, device)?;
        // Like a real mkfs, it writes to the device, so the backing file holds data from now on.
        {
            use std::io::{Seek, SeekFrom, Write};
            let mut f = std::fs::OpenOptions::new().write(true).open(&file)?;
            f.seek(SeekFrom::Start(1024))?;
            f.write_all(format!("fake {fs_type} superblock").as_bytes())?;
        }
        st.formatted.insert(file, fs_type.to_owned());
        Ok(())
    }

    fn fs_uuid(&self, device: &Path) -> io::Result<Option<String>> {
        let mut st = self.state();
        self.enter(&mut st, "fs_uuid", device.display().to_string())?;
        Ok(Self::device_mut(&mut st, device)?.fs_uuid.clone())
    }

    fn device_identity(&self, device: &Path) -> io::Result<Option<String>> {
        let mut st = self.state();
        self.enter(&mut st, "device_identity", device.display().to_string())?;
        Ok(Self::device_mut(&mut st, device)?.identity.clone())
    }

    fn device_users(&self, device: &Path) -> io::Result<Option<String>> {
        let mut st = self.state();
        self.enter(&mut st, "device_users", device.display().to_string())?;
        Ok(Self::device_mut(&mut st, device)?.users.clone())
    }

    fn discard(&self, device: &Path, progress: &mut dyn FnMut(u64, u64)) -> io::Result<()> {
        let size = {
            let mut st = self.state();
            self.enter(&mut st, "discard", device.display().to_string())?;
            let d = Self::device_mut(&mut st, device)?;
            if !d.discard {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!(
                        "discarding {}: the device does not support discard",
                        device.display()
                    ),
                ));
            }
            if !d.discard_keeps_data {
                d.dirty = false;
                d.signature = None;
                d.fs_uuid = None;
            }
            d.size
        };
        progress(size, size);
        Ok(())
    }

    fn discard_zeroes(&self, device: &Path) -> io::Result<bool> {
        let mut st = self.state();
        self.enter(&mut st, "discard_zeroes", device.display().to_string())?;
        Ok(Self::device_mut(&mut st, device)?.discard_zeroes)
    }

    fn zero(&self, device: &Path, progress: &mut dyn FnMut(u64, u64)) -> io::Result<()> {
        let size = {
            let mut st = self.state();
            self.enter(&mut st, "zero", device.display().to_string())?;
            let d = Self::device_mut(&mut st, device)?;
            d.dirty = false;
            d.signature = None;
            d.fs_uuid = None;
            d.size
        };
        progress(size / 2, size);
        progress(size, size);
        Ok(())
    }

    fn wipe_signatures(&self, device: &Path) -> io::Result<()> {
        let mut st = self.state();
        self.enter(&mut st, "wipe_signatures", device.display().to_string())?;
        let d = Self::device_mut(&mut st, device)?;
        d.signature = None;
        d.fs_uuid = None;
        Ok(())
    }

    fn first_nonzero(&self, device: &Path) -> io::Result<Option<u64>> {
        let mut st = self.state();
        self.enter(&mut st, "first_nonzero", device.display().to_string())?;
        Ok(Self::device_mut(&mut st, device)?.dirty.then_some(4096))
    }

    fn is_btrfs(&self, path: &Path) -> io::Result<bool> {
        let mut st = self.state();
        self.enter(&mut st, "is_btrfs", path.display().to_string())?;
        Ok(Self::btrfs_of(&mut st, path).is_ok())
    }

    fn btrfs_quota_mode(&self, path: &Path) -> io::Result<QuotaMode> {
        let mut st = self.state();
        self.enter(&mut st, "btrfs_quota_mode", path.display().to_string())?;
        Ok(Self::btrfs_of(&mut st, path)?.mode)
    }

    fn btrfs_enable_quota(&self, path: &Path, simple: bool) -> io::Result<()> {
        let mut st = self.state();
        self.enter(
            &mut st,
            "btrfs_enable_quota",
            format!("{} simple={simple}", path.display()),
        )?;
        let fs = Self::btrfs_of(&mut st, path)?;
        if simple && fs.no_simple {
            return Err(errno(libc::EINVAL));
        }
        fs.mode = if simple {
            QuotaMode::Simple
        } else {
            QuotaMode::Full
        };
        Ok(())
    }

    fn btrfs_rescan_running(&self, path: &Path) -> io::Result<bool> {
        let mut st = self.state();
        self.enter(&mut st, "btrfs_rescan_running", path.display().to_string())?;
        Self::btrfs_of(&mut st, path)?;
        Ok(false)
    }

    fn btrfs_create_subvolume(&self, parent: &Path, name: &str) -> io::Result<u64> {
        let mut st = self.state();
        self.enter(
            &mut st,
            "btrfs_create_subvolume",
            format!("{} {name}", parent.display()),
        )?;
        let path = parent.join(name);
        let fs = Self::btrfs_of(&mut st, &path)?;
        std::fs::create_dir(&path)?;
        let id = fs.next_id;
        fs.next_id += 1;
        fs.subvolumes.insert(path, id);
        if fs.mode != QuotaMode::Off {
            fs.qgroups.insert(
                id,
                Qgroup {
                    referenced: 16384,
                    exclusive: 16384,
                    max_referenced: None,
                    max_exclusive: None,
                },
            );
        }
        Ok(id)
    }

    fn btrfs_subvolume_id(&self, path: &Path) -> io::Result<Option<u64>> {
        let mut st = self.state();
        self.enter(&mut st, "btrfs_subvolume_id", path.display().to_string())?;
        // A subvolume removed behind the fake's back is gone, as it would be on btrfs.
        Ok(Self::btrfs_of(&mut st, path)
            .ok()
            .and_then(|fs| fs.subvolumes.get(path).copied())
            .filter(|_| path.is_dir()))
    }

    fn btrfs_delete_subvolume(&self, parent: &Path, name: &str) -> io::Result<()> {
        let mut st = self.state();
        self.enter(
            &mut st,
            "btrfs_delete_subvolume",
            format!("{} {name}", parent.display()),
        )?;
        let path = parent.join(name);
        let fs = Self::btrfs_of(&mut st, &path)?;
        let Some(id) = fs.subvolumes.remove(&path) else {
            return if path.exists() {
                Err(errno(libc::EINVAL))
            } else {
                Ok(())
            };
        };
        fs.qgroups.remove(&id);
        std::fs::remove_dir_all(&path)
    }

    fn btrfs_set_limit(&self, path: &Path, id: u64, bytes: u64) -> io::Result<()> {
        let mut st = self.state();
        self.enter(
            &mut st,
            "btrfs_set_limit",
            format!("{} {id} {bytes}", path.display()),
        )?;
        let fs = Self::btrfs_of(&mut st, path)?;
        let q = fs.qgroups.get_mut(&id).ok_or_else(|| errno(libc::ENOENT))?;
        q.max_referenced = Some(bytes);
        Ok(())
    }

    fn btrfs_qgroup(&self, path: &Path, id: u64) -> io::Result<Option<Qgroup>> {
        let mut st = self.state();
        self.enter(&mut st, "btrfs_qgroup", format!("{} {id}", path.display()))?;
        Ok(Self::btrfs_of(&mut st, path)?.qgroups.get(&id).copied())
    }

    fn project_quota_state(&self, path: &Path) -> io::Result<Option<ProjectQuotaState>> {
        let mut st = self.state();
        self.enter(&mut st, "project_quota_state", path.display().to_string())?;
        Ok(Self::projects_of(&mut st, path).ok().map(|fs| fs.state))
    }

    fn get_project(&self, path: &Path) -> io::Result<(u32, bool)> {
        let mut st = self.state();
        self.enter(&mut st, "get_project", path.display().to_string())?;
        if !path.is_dir() {
            return Err(errno(libc::ENOENT));
        }
        Ok(Self::projects_of(&mut st, path)?
            .dirs
            .get(path)
            .copied()
            .unwrap_or((0, false)))
    }

    fn set_project(&self, path: &Path, id: u32) -> io::Result<()> {
        let mut st = self.state();
        self.enter(&mut st, "set_project", format!("{} {id}", path.display()))?;
        if !path.is_dir() {
            return Err(errno(libc::ENOENT));
        }
        Self::projects_of(&mut st, path)?
            .dirs
            .insert(path.to_owned(), (id, true));
        Ok(())
    }

    fn set_project_limit(&self, path: &Path, id: u32, bytes: u64, inodes: u64) -> io::Result<()> {
        let mut st = self.state();
        self.enter(
            &mut st,
            "set_project_limit",
            format!("{} {id} {bytes} {inodes}", path.display()),
        )?;
        let u = Self::projects_of(&mut st, path)?.usage.entry(id).or_default();
        u.bytes_limit = bytes;
        u.inodes_limit = inodes;
        Ok(())
    }

    fn project_usage(&self, path: &Path, id: u32) -> io::Result<ProjectUsage> {
        let mut st = self.state();
        self.enter(&mut st, "project_usage", format!("{} {id}", path.display()))?;
        Ok(Self::projects_of(&mut st, path)?
            .usage
            .get(&id)
            .copied()
            .unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_mounts_and_failures_behave_like_the_kernel() {
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("img");
        std::fs::write(&img, vec![0; 4096]).unwrap();
        let (src, tgt) = (d.path().join("src"), d.path().join("tgt"));
        std::fs::create_dir(&src).unwrap();
        std::fs::create_dir(&tgt).unwrap();
        let h = FakeHost::new();

        h.bind(&src, &tgt, true).unwrap();
        let t = h.mount_table().unwrap();
        let top = t.top_mount_at(&tgt).unwrap();
        assert!(top.is_read_only());
        assert!(top.shows(&t.source_of(&src).unwrap()));
        h.unmount(&tgt).unwrap();
        assert_eq!(h.unmount(&tgt).unwrap_err().raw_os_error(), Some(libc::EINVAL));

        let dev = h
            .loop_attach(
                &img,
                &LoopConfig {
                    direct_io: true,
                    block_size: 4096,
                    read_only: false,
                },
            )
            .unwrap();
        assert_eq!(dev.path, Path::new("/dev/loop0"));
        assert_eq!(h.loop_find(&img).unwrap(), vec![dev.clone()]);
        // Unformatted: the mount fails as the kernel's would.
        assert_eq!(
            h.mount(&dev.path, &tgt, "ext4", &[], false)
                .unwrap_err()
                .raw_os_error(),
            Some(libc::EINVAL)
        );
        assert_eq!(h.signature(&dev.path).unwrap(), None);
        h.fail("mkfs", libc::EIO);
        assert_eq!(
            h.mkfs(&dev.path, "ext4").unwrap_err().raw_os_error(),
            Some(libc::EIO)
        );
        h.mkfs(&dev.path, "ext4").unwrap();
        h.mount(&dev.path, &tgt, "ext4", &["noatime".into()], false)
            .unwrap();
        // Detach while mounted is deferred to the last unmount.
        h.loop_detach(&dev).unwrap();
        assert_eq!(h.loops().len(), 1);
        h.fail_after("unmount", 0, libc::EBUSY);
        assert_eq!(h.unmount(&tgt).unwrap_err().raw_os_error(), Some(libc::EBUSY));
        h.unmount(&tgt).unwrap();
        assert!(h.loops().is_empty());
        assert_eq!(
            h.calls_of("mkfs"),
            ["mkfs /dev/loop0 ext4", "mkfs /dev/loop0 ext4"]
        );
    }
}

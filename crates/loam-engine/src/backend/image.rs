//! `image` pools: a volume is one file in the pool (`volumes/<stem>.img`), attached to a loop device on this
//! node. The file's size is the volume's size, so it holds on the device: writing past it fails with ENOSPC.
//!
//! Thick pools allocate the whole file at create (fallocate), so the space is physically taken; thin pools make
//! it sparse and take blocks as the volume writes them. Loop devices are configured with direct I/O (no second
//! copy in the page cache; refused by some backing filesystems, then buffered), 4096-byte logical blocks and no
//! autoclear, and found again after a restart through sysfs, so a volume is never attached twice.

use std::{
    collections::HashMap,
    io,
    os::unix::fs::{MetadataExt, OpenOptionsExt},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, Ordering},
    },
};

use loam_sys::host::{Host, LoopConfig, LoopDevice};

use super::{Attachment, Backend, Device, ProvisionSpec, Usage, VolumeRef, dir::DELETING, settled::Settled};
use crate::{
    capability::{self, Refusal},
    error::{Error, IoContext, Result},
    spec::{Allocation, PoolKind},
    types::Capability,
};

/// Logical block size of the loop devices, and so the volumes' size granularity.
pub const BLOCK_SIZE: u64 = 4096;
const SUFFIX: &str = ".img";

#[derive(Debug)]
pub struct ImageBackend {
    volumes: PathBuf,
    allocation: Allocation,
    host: Arc<dyn Host>,
    /// What this process last learnt of each volume's loop device, so that most calls ask sysfs about one device
    /// (or none) instead of looking at every loop device on the node. Filled by scans, attaches and detaches; a
    /// remembered device is confirmed before it is used, and a process starts knowing nothing.
    known: Mutex<HashMap<String, Known>>,
    /// Bytes allocated to each image this process knows has no loop device. Such an image changes only by
    /// loam's own hand, so a thin pool's capacity reads these from memory and asks the filesystem only about
    /// attached images. Measured when an image is made, detached or checked; dropped when it is attached or
    /// removed.
    settled: Settled,
    /// Whether one look at all loop devices has told which images have one (see [`ImageBackend::learn`]).
    learned: AtomicBool,
}

#[derive(Debug, Clone)]
enum Known {
    Attached(LoopDevice),
    Detached,
}

impl ImageBackend {
    /// `volumes` is the pool's `volumes/` directory.
    pub fn new(volumes: PathBuf, allocation: Allocation, host: Arc<dyn Host>) -> Self {
        ImageBackend {
            volumes,
            allocation,
            host,
            known: Mutex::default(),
            settled: Settled::default(),
            learned: AtomicBool::new(false),
        }
    }

    fn file_name(stem: &str) -> String {
        format!("{stem}{SUFFIX}")
    }

    /// The image file of volume `stem`.
    pub fn file(&self, stem: &str) -> PathBuf {
        self.volumes.join(Self::file_name(stem))
    }

    fn remember(&self, stem: &str, k: Option<Known>) {
        let mut known = self.known_map();
        // An attached or removed image's allocation is no longer settled.
        if !matches!(k, Some(Known::Detached)) {
            self.settled.forget(stem);
        }
        match k {
            Some(k) => known.insert(stem.to_owned(), k),
            None => known.remove(stem),
        };
    }

    /// After [`ImageBackend::learn`]: an image not known is detached; whether it was not known.
    fn mark_detached_if_unknown(&self, stem: &str) -> bool {
        let mut known = self.known_map();
        if known.contains_key(stem) {
            return false;
        }
        known.insert(stem.to_owned(), Known::Detached);
        true
    }

    /// Notes what image `stem`, known to have no loop device, has allocated (`m` is its file's metadata).
    fn settle(&self, stem: &str, m: &std::fs::Metadata) {
        // Held while settling, so an attach (which unsettles under it) cannot come between the look and the note.
        let known = self.known_map();
        if !matches!(known.get(stem), Some(Known::Detached)) {
            return;
        }
        self.settled.set(stem, m.blocks().saturating_mul(512));
    }

    /// [`ImageBackend::settle`] with a fresh look at the file; a file that cannot be read is left unsettled.
    fn settle_now(&self, stem: &str) {
        if let Ok(m) = std::fs::symlink_metadata(self.file(stem)) {
            self.settle(stem, &m);
        }
    }

    fn known_map(&self) -> MutexGuard<'_, HashMap<String, Known>> {
        self.known.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn known(&self, stem: &str) -> Option<Known> {
        self.known_map().get(stem).cloned()
    }

    /// Learns from one look at all loop devices which images have one, once, so that checking every volume at
    /// start-up is not a look at all loop devices per volume. Afterwards an image this process knows nothing
    /// of had no device then, and loam has attached none to it since (an attach is remembered).
    fn learn(&self) -> bool {
        if self.learned.load(Ordering::Acquire) {
            return true;
        }
        let found = match self.host.loop_find_under(&self.volumes) {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(path = %self.volumes.display(), error = %e,
                               "cannot list the loop devices of the pool's images; each is looked up alone");
                return false;
            }
        };
        let mut known = self.known_map();
        for (path, dev) in found {
            let stem = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(SUFFIX));
            // A second device of the same image is found again by the check's own look, which reports it.
            if let Some(stem) = stem.filter(|s| !s.starts_with('.')) {
                self.settled.forget(stem);
                known.entry(stem.to_owned()).or_insert(Known::Attached(dev));
            }
        }
        self.learned.store(true, Ordering::Release);
        true
    }

    /// `volumes/.deleting-<stem>.img`: the name an image is set aside under while it is removed.
    fn aside_name(stem: &str) -> String {
        format!("{DELETING}{}", Self::file_name(stem))
    }

    /// Every loop device backed by the volume's image, from a look at all of them.
    fn loops(&self, stem: &str) -> Result<Vec<LoopDevice>> {
        let file = self.file(stem);
        let found = self
            .host
            .loop_find(&file)
            .ctx(|| format!("finding the loop devices of {}", file.display()))?;
        self.remember(
            stem,
            Some(match found.first() {
                Some(l) => Known::Attached(l.clone()),
                None => Known::Detached,
            }),
        );
        Ok(found)
    }

    /// The volume's loop device, if it has one: the remembered one once confirmed, else from a look at all.
    fn first_loop(&self, stem: &str) -> Result<Option<LoopDevice>> {
        match self.known(stem) {
            Some(Known::Detached) => return Ok(None),
            Some(Known::Attached(l)) => {
                let file = self.file(stem);
                if self
                    .host
                    .loop_backs(&l, &file)
                    .ctx(|| format!("checking loop device {}", l.path.display()))?
                {
                    return Ok(Some(l));
                }
            }
            None => {}
        }
        Ok(self.loops(stem)?.into_iter().next())
    }

    /// Detaches every loop device backed by `file`, found by a look at all of them.
    fn detach_file(&self, file: &Path) -> Result<()> {
        for l in self
            .host
            .loop_find(file)
            .ctx(|| format!("finding the loop devices of {}", file.display()))?
        {
            self.host
                .loop_detach(&l)
                .ctx(|| format!("detaching loop device {}", l.path.display()))?;
            tracing::debug!(device = %l.path.display(), "loop device detached");
        }
        Ok(())
    }

    /// Detaches and removes `volumes/<name>`, an image set aside for removal. The removal is not flushed: if a
    /// crash undoes it, start-up finds the image still set aside and removes it again.
    fn remove_aside(&self, name: &str) -> Result<()> {
        let path = self.volumes.join(name);
        self.detach_file(&path)?;
        remove_file_unsynced(&path)
    }

    fn make_file(&self, stem: &str, size: u64) -> io::Result<()> {
        let path = self.file(stem);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)?;
        if !file.metadata()?.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a regular file", path.display()),
            ));
        }
        file.set_len(size)?;
        if self.allocation == Allocation::Thick {
            rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, size)?;
        }
        file.sync_all()?;
        loam_sys::fs::fsync_dir(&self.volumes)
    }
}

/// Removes `path`; a file already gone counts as removed.
fn remove_file_unsynced(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(Error::Io {
            op: format!("removing image file {}", path.display()),
            source: e,
        }),
        _ => Ok(()),
    }
}

/// Whether `file` holds no data at all: every byte reads as zero because none was ever written (a hole, or an
/// allocated but unwritten extent), as the filesystem tells with `SEEK_DATA`.
fn holds_no_data(file: &Path) -> io::Result<bool> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(file)?;
    match rustix::fs::seek(&f, rustix::fs::SeekFrom::Data(0)) {
        Err(rustix::io::Errno::NXIO) => Ok(true),
        Ok(_) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

fn device(l: &LoopDevice) -> Attachment {
    Attachment::Device(Device {
        path: l.path.clone(),
        major: l.major,
        minor: l.minor,
    })
}

impl Backend for ImageBackend {
    fn kind(&self) -> PoolKind {
        PoolKind::Image
    }

    fn granularity(&self) -> u64 {
        BLOCK_SIZE
    }

    fn enforces_size(&self) -> bool {
        true
    }

    fn refusal(&self, cap: &Capability) -> Option<Refusal> {
        capability::mode_refusal(cap)
            .or_else(|| capability::fs_type_refusal(cap))
            .or_else(|| capability::flags_refusal(cap, capability::DEVICE_MOUNT_FLAGS, "image"))
            .or_else(|| {
                let discard = capability::mount_flags(cap).iter().any(|f| f == "discard");
                (discard && self.allocation == Allocation::Thick).then(|| {
                    Refusal::Invalid(
                        "mount flag discard is not allowed on a thick image pool: discards would punch holes in its \
                         fully allocated images; use a thin pool to give freed blocks back"
                            .into(),
                    )
                })
            })
    }

    fn provision(&self, spec: &ProvisionSpec<'_>) -> Result<()> {
        let path = self.file(spec.stem);
        let made = self.make_file(spec.stem, spec.capacity_bytes);
        if made.is_ok() {
            self.remember(spec.stem, Some(Known::Detached));
            self.settle_now(spec.stem);
        }
        made.map_err(|e| {
            if e.raw_os_error() == Some(libc::ENOSPC) {
                // The filesystem had less room than it said (another writer took it meanwhile).
                let _ = std::fs::remove_file(&path);
                Error::Exhausted(format!(
                    "allocating {} bytes for {}: the pool's filesystem is full",
                    spec.capacity_bytes,
                    path.display()
                ))
            } else {
                Error::Io {
                    op: format!("creating image file {}", path.display()),
                    source: e,
                }
            }
        })
    }

    /// Sets the image aside durably as `.deleting-<stem>.img` before removing it, so a delete interrupted at any
    /// point is recognised and finished at start-up, and the record needs no intent written first.
    fn destroy(&self, v: &VolumeRef<'_>) -> Result<()> {
        let name = Self::file_name(v.stem);
        let doomed = Self::aside_name(v.stem);
        // Every device is detached, found by a look at all of them: none may outlive the file.
        self.detach(v)?;
        self.remember(v.stem, None);
        match loam_sys::fs::rename_durable(&self.volumes, &name, &doomed) {
            Ok(()) => {}
            // Set aside by an earlier attempt, which may have been interrupted before it detached everything.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return self.remove_aside(&doomed),
            Err(e) => {
                return Err(Error::Io {
                    op: format!("setting {} aside for removal", self.file(v.stem).display()),
                    source: e,
                });
            }
        }
        remove_file_unsynced(&self.volumes.join(&doomed))
    }

    /// No intent records: a create interrupted before its record leaves an image that holds no data, and a delete
    /// leaves `.deleting-<stem>.img`; start-up tells both apart from volumes ([`Backend::reclaim`]).
    fn intent_records(&self) -> bool {
        false
    }

    fn interrupted_delete(&self, v: &VolumeRef<'_>) -> bool {
        std::fs::symlink_metadata(self.file(v.stem)).is_err()
            && std::fs::symlink_metadata(self.volumes.join(Self::aside_name(v.stem))).is_ok()
    }

    /// Removes what interrupted creates and deletes left: an image set aside for removal, and an image without a
    /// record that holds no data (its create never answered, so nothing wrote to it). An image without a record
    /// that holds data is left for an operator.
    fn reclaim(&self, known: &std::collections::HashSet<String>) -> Result<Vec<String>> {
        let mut left = Vec::new();
        for stem in self.backings()? {
            if let Some(of) = stem.strip_prefix(DELETING) {
                if !known.contains(of) {
                    self.remove_aside(&format!("{stem}{SUFFIX}"))?;
                }
                continue;
            }
            if known.contains(&stem) || stem.starts_with('.') {
                continue;
            }
            match holds_no_data(&self.file(&stem)) {
                Ok(true) => {
                    tracing::info!(backing = %stem, "removing the empty image of a create that did not finish");
                    self.destroy(&VolumeRef {
                        stem: &stem,
                        capacity_bytes: 0,
                        project_id: None,
                        device: None,
                    })?;
                }
                _ => left.push(stem),
            }
        }
        Ok(left)
    }

    fn check(&self, v: &VolumeRef<'_>) -> Option<String> {
        let (stem, capacity_bytes) = (v.stem, v.capacity_bytes);
        let path = self.file(stem);
        match std::fs::symlink_metadata(&path) {
            Err(e) => Some(format!(
                "the volume's image file {} is missing: {e}",
                path.display()
            )),
            Ok(m) if !m.is_file() => Some(format!("{} is not a regular file", path.display())),
            Ok(m) if m.len() != capacity_bytes => Some(format!(
                "the volume's image file {} is {} bytes, not its {capacity_bytes}",
                path.display(),
                m.len()
            )),
            // A volume this process detached (or made) has no device unless one was attached behind its back.
            // So is one not found attached by the one look at all devices, nor attached by loam since.
            Ok(m)
                if matches!(self.known(stem), Some(Known::Detached))
                    || (self.learn() && self.mark_detached_if_unknown(stem)) =>
            {
                self.settle(stem, &m);
                None
            }
            Ok(m) => match self.loops(stem) {
                Ok(l) if l.len() > 1 => Some(format!(
                    "{} is attached to {} loop devices ({}); loam attaches it once",
                    path.display(),
                    l.len(),
                    l.iter()
                        .map(|d| d.path.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
                Ok(l) if l.is_empty() => {
                    self.settle(stem, &m);
                    None
                }
                _ => None,
            },
        }
    }

    /// A thick image holds its whole size from create on (fallocated, and discard is refused on thick pools), so
    /// what it has taken needs no look at the file. A thin image: what it had when last settled; an attached one
    /// is measured by `written_live`, and one this process knows nothing of yet counts as nothing written, which
    /// holds back all its size.
    fn written_bytes(&self, v: &VolumeRef<'_>) -> u64 {
        match self.allocation {
            Allocation::Thick => v.capacity_bytes,
            Allocation::Thin => self.settled.get(v.stem).map_or(0, |b| b.min(v.capacity_bytes)),
        }
    }

    /// Thick pools' sums change only when a volume comes or goes, which the pool tracks itself; thin pools' also
    /// when an image is settled anew.
    fn written_generation(&self) -> Option<u64> {
        Some(match self.allocation {
            Allocation::Thick => 0,
            Allocation::Thin => self.settled.generation(),
        })
    }

    /// The images attached now, whose blocks their volumes are writing: each measured (at most its size).
    fn written_live(&self) -> u64 {
        if self.allocation == Allocation::Thick {
            return 0;
        }
        let attached: Vec<String> = self
            .known_map()
            .iter()
            .filter(|(_, k)| matches!(k, Known::Attached(_)))
            .map(|(stem, _)| stem.clone())
            .collect();
        attached
            .iter()
            .filter_map(|stem| std::fs::symlink_metadata(self.file(stem)).ok())
            .map(|m| m.blocks().saturating_mul(512).min(m.len()))
            .fold(0u64, u64::saturating_add)
    }

    fn usage(&self, v: &VolumeRef<'_>) -> Result<Usage> {
        let stem = v.stem;
        let path = self.file(stem);
        let m = std::fs::symlink_metadata(&path).ctx(|| format!("measuring {}", path.display()))?;
        Ok(Usage {
            bytes: m.blocks().saturating_mul(512),
            inodes: 1,
        })
    }

    fn backings(&self) -> Result<Vec<String>> {
        super::dir::list_names(&self.volumes, SUFFIX)
    }

    fn health(&self) -> Option<String> {
        super::dir::writable_dir_problem(&self.volumes)
    }

    fn attach(&self, v: &VolumeRef<'_>) -> Result<Attachment> {
        let stem = v.stem;
        if let Some(l) = self.first_loop(stem)? {
            return Ok(device(&l));
        }
        let file = self.file(stem);
        let cfg = LoopConfig {
            direct_io: true,
            block_size: BLOCK_SIZE as u32,
            read_only: false,
        };
        let l = self
            .host
            .loop_attach(&file, &cfg)
            .ctx(|| format!("attaching {} to a loop device", file.display()))?;
        tracing::debug!(file = %file.display(), device = %l.path.display(), "loop device attached");
        self.remember(stem, Some(Known::Attached(l.clone())));
        Ok(device(&l))
    }

    /// The image file holds no data at all (`SEEK_DATA` finds none): a new volume, formatted without probing.
    fn holds_no_data(&self, v: &VolumeRef<'_>) -> bool {
        holds_no_data(&self.file(v.stem)).unwrap_or(false)
    }

    fn attached(&self, v: &VolumeRef<'_>) -> Result<Option<Attachment>> {
        Ok(self.first_loop(v.stem)?.as_ref().map(device))
    }

    /// Detaches every loop device of the volume, found by a look at all of them.
    fn detach(&self, v: &VolumeRef<'_>) -> Result<()> {
        self.detach_file(&self.file(v.stem))?;
        self.remember(v.stem, Some(Known::Detached));
        self.settle_now(v.stem);
        Ok(())
    }
}

//! `dir` pools: a volume is a directory in the pool, in one of two modes chosen at start-up:
//! - **project quota**, where the pool's filesystem has it on (XFS mounted with `prjquota`, ext4 with the
//!   `project` feature and `prjquota`): each volume directory carries its own project ID (inherited by everything
//!   made in it) with a hard limit of its size, so writes past it fail with EDQUOT, usage comes from the quota in
//!   O(1), and `df` in the pod shows the volume's size;
//! - **accounted**, elsewhere: sizes are accounted, not enforced, and usage comes from a background measurement
//!   refreshed at an interval, never from a tree walk inside an RPC.

use std::{
    collections::HashMap,
    ops::RangeInclusive,
    path::{Path, PathBuf},
    sync::{Arc, Condvar, Mutex},
    time::Duration,
};

use loam_sys::host::Host;
use tracing::{debug, info, warn};

use super::{Attachment, Backend, ProvisionSpec, Usage, VolumeRef};
use crate::{
    capability::{self, Refusal},
    error::{Error, IoContext, Result},
    spec::{DEFAULT_PROJECT_IDS, DEFAULT_USAGE_REFRESH_SECONDS, DirQuota, DirSpec, PoolKind},
    types::{AccessType, Capability},
};

/// Volume directories are world-writable like a fresh disk, so pods of any UID can use them; kubelet applies
/// fsGroup on top (CSIDriver fsGroupPolicy: File). The parent directory is private to root.
pub(crate) const VOLUME_DIR_MODE: u32 = 0o777;

/// Quota limits are whole 4 KiB blocks.
const QUOTA_GRANULARITY: u64 = 4096;

#[derive(Debug)]
enum Mode {
    Quota {
        ids: RangeInclusive<u32>,
        /// 0: none.
        inode_limit: u64,
    },
    Accounted(Arc<Measurer>),
}

#[derive(Debug)]
pub struct DirBackend {
    volumes: PathBuf,
    host: Arc<dyn Host>,
    mode: Mode,
}

/// Picks the mode of a dir pool: project quota where its filesystem enforces it (unless the config says off),
/// accounted otherwise. A pool whose config requires quota on a filesystem without it is a configuration error.
pub fn choose_mode(spec: &DirSpec, root: &Path, host: &dyn Host) -> Result<bool> {
    if spec.quota == DirQuota::Off {
        return Ok(false);
    }
    let state = host.project_quota_state(root);
    let enforcing = matches!(state, Ok(Some(s)) if s.enforcing);
    if enforcing {
        info!(pool = %spec.name, "project quota enforcing on the pool's filesystem: sizes enforced");
        return Ok(true);
    }
    let why = match state {
        Ok(Some(_)) => "project quota is accounting but not enforcing".to_owned(),
        Ok(None) => "the filesystem has no project quota".to_owned(),
        Err(e) => format!("project quota cannot be read: {e}"),
    };
    if spec.quota == DirQuota::Required {
        return Err(Error::invalid(
            "pool",
            format!(
                "pool {}: quota = \"required\", but at {} {why}: mount XFS with prjquota, or make ext4 with \
                 -O quota,project and mount it with prjquota; or set quota = \"auto\" to accept accounted sizes",
                spec.name,
                root.display()
            ),
        ));
    }
    warn!(pool = %spec.name, path = %root.display(), reason = %why,
          "sizes accounted, not enforced: volumes can write past their size");
    Ok(false)
}

impl DirBackend {
    /// `volumes` is the pool's `volumes/` directory; `quota` says whether sizes are enforced with project quota
    /// (see [`choose_mode`]).
    pub fn new(volumes: PathBuf, spec: &DirSpec, quota: bool, host: Arc<dyn Host>) -> Self {
        let mode = if quota {
            let [first, last] = spec.project_ids.unwrap_or(DEFAULT_PROJECT_IDS);
            Mode::Quota {
                ids: first..=last,
                inode_limit: spec.inode_limit.unwrap_or(0),
            }
        } else {
            let every = Duration::from_secs(
                spec.usage_refresh_seconds
                    .unwrap_or(DEFAULT_USAGE_REFRESH_SECONDS),
            );
            Mode::Accounted(Measurer::start(volumes.clone(), every))
        };
        DirBackend { volumes, host, mode }
    }

    fn path(&self, stem: &str) -> PathBuf {
        self.volumes.join(stem)
    }

    /// Removes `volumes/<name>`, the leftover backing of volume `stem`, and the quota limit its project had.
    fn forget_leftover(&self, stem: &str, name: &str) -> Result<()> {
        let path = self.path(name);
        let project = match self.mode {
            Mode::Quota { .. } => self
                .host
                .get_project(&path)
                .ok()
                .map(|(id, _)| id)
                .filter(|id| *id != 0),
            Mode::Accounted(_) => None,
        };
        loam_sys::fs::remove_tree_beneath(&self.volumes, name)
            .ctx(|| format!("removing leftover {}", path.display()))?;
        if let Some(id) = project {
            self.host
                .set_project_limit(&self.volumes, id, 0, 0)
                .ctx(|| format!("clearing the limit of project {id}"))?;
        }
        if let Mode::Accounted(m) = &self.mode {
            m.forget(stem);
        }
        Ok(())
    }

    /// The rest of [`Backend::check`], once whether the volume's directory is there is known.
    fn check_found(&self, v: &VolumeRef<'_>, is_dir: bool) -> Option<String> {
        if !is_dir {
            return Some(format!(
                "the volume's directory {} is missing",
                self.path(v.stem).display()
            ));
        }
        let Mode::Quota { .. } = self.mode else {
            return None;
        };
        let path = self.path(v.stem);
        let want = match Self::project(v) {
            Ok(id) => id,
            Err(e) => return Some(e.to_string()),
        };
        match self.host.get_project(&path) {
            Ok((id, _)) if id != want => {
                return Some(format!(
                    "{} carries project ID {id}, but the volume's record says {want}",
                    path.display()
                ));
            }
            Ok((_, false)) => {
                return Some(format!(
                    "{} has lost its project-inherit flag: new files in it escape the volume's quota",
                    path.display()
                ));
            }
            Ok(_) => {}
            Err(e) => return Some(format!("cannot read the project ID of {}: {e}", path.display())),
        }
        match self.host.project_usage(&self.volumes, want) {
            Ok(u) if u.bytes_limit == v.capacity_bytes => None,
            Ok(u) => Some(format!(
                "the quota limit of project {want} ({}) is {} bytes, not the volume's size {} (changed by hand?); \
                 loam leaves it as it is",
                path.display(),
                u.bytes_limit,
                v.capacity_bytes
            )),
            Err(e) => Some(format!("cannot read the quota of project {want}: {e}")),
        }
    }

    fn project(v: &VolumeRef<'_>) -> Result<u32> {
        v.project_id.ok_or_else(|| {
            Error::Precondition(format!(
                "volume {} has no project ID in its record, but its pool enforces sizes with project quota",
                v.stem
            ))
        })
    }
}

impl Drop for DirBackend {
    fn drop(&mut self) {
        if let Mode::Accounted(m) = &self.mode {
            m.stop();
        }
    }
}

impl Backend for DirBackend {
    fn kind(&self) -> PoolKind {
        PoolKind::Dir
    }

    fn granularity(&self) -> u64 {
        match self.mode {
            Mode::Quota { .. } => QUOTA_GRANULARITY,
            Mode::Accounted(_) => 1,
        }
    }

    fn enforces_size(&self) -> bool {
        matches!(self.mode, Mode::Quota { .. })
    }

    fn refusal(&self, cap: &Capability) -> Option<Refusal> {
        directory_refusal(cap, "dir")
    }

    fn project_ids(&self) -> Option<RangeInclusive<u32>> {
        match &self.mode {
            Mode::Quota { ids, .. } => Some(ids.clone()),
            Mode::Accounted(_) => None,
        }
    }

    fn project_id_free(&self, id: u32) -> bool {
        // Free only if nothing on the filesystem is charged to it and no limit is set: a directory made by
        // someone else (or a volume whose record is unreadable) may hold it.
        self.host
            .project_usage(&self.volumes, id)
            .is_ok_and(|u| u == loam_sys::host::ProjectUsage::default())
    }

    fn provision(&self, spec: &ProvisionSpec<'_>) -> Result<()> {
        let path = self.path(spec.stem);
        loam_sys::fs::create_dir_checked(&self.volumes, spec.stem, VOLUME_DIR_MODE)
            .ctx(|| format!("creating directory {}", path.display()))?;
        match &self.mode {
            Mode::Quota { inode_limit, .. } => {
                let id = Self::project(&spec.volume())?;
                self.host
                    .set_project(&path, id)
                    .ctx(|| format!("giving {} project ID {id}", path.display()))?;
                self.host
                    .set_project_limit(&self.volumes, id, spec.capacity_bytes, *inode_limit)
                    .ctx(|| {
                        format!(
                            "limiting project {id} ({}) to {} bytes",
                            path.display(),
                            spec.capacity_bytes
                        )
                    })
            }
            Mode::Accounted(m) => {
                m.measure(spec.stem);
                Ok(())
            }
        }
    }

    /// The directory is first renamed to `.deleting-<stem>`, durably: from then on an interruption leaves a
    /// backing that start-up recognises and finishes removing, never a volume that looks whole with half its
    /// files gone. The tree itself is removed without a flush.
    fn destroy(&self, v: &VolumeRef<'_>) -> Result<()> {
        let doomed = format!("{DELETING}{}", v.stem);
        match loam_sys::fs::rename_durable(&self.volumes, v.stem, &doomed) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(Error::Io {
                    op: format!("setting {} aside for removal", self.path(v.stem).display()),
                    source: e,
                });
            }
        }
        loam_sys::fs::remove_tree_beneath_unsynced(&self.volumes, &doomed)
            .ctx(|| format!("removing directory {}", self.path(&doomed).display()))?;
        match &self.mode {
            Mode::Quota { .. } => {
                // The limit goes once nothing is charged to the project any more; a volume whose create was
                // interrupted before it had an ID has no limit to clear.
                if let Some(id) = v.project_id {
                    self.host
                        .set_project_limit(&self.volumes, id, 0, 0)
                        .ctx(|| format!("clearing the limit of project {id}"))?;
                }
            }
            Mode::Accounted(m) => m.forget(v.stem),
        }
        Ok(())
    }

    fn check(&self, v: &VolumeRef<'_>) -> Option<String> {
        self.check_found(v, loam_sys::fs::is_dir_no_follow(&self.path(v.stem)))
    }

    fn check_many(&self, vs: &[VolumeRef<'_>]) -> Vec<Option<String>> {
        // One open of volumes/ for the page; if even that fails, each volume is checked by its full path.
        let entries = loam_sys::fs::DirEntries::open(&self.volumes).ok();
        vs.iter()
            .map(|v| match &entries {
                Some(e) => self.check_found(v, e.is_dir(v.stem)),
                None => self.check(v),
            })
            .collect()
    }

    fn check_all(&self, vs: &[VolumeRef<'_>]) -> Vec<Option<String>> {
        self.check_many(vs)
    }

    fn usage(&self, v: &VolumeRef<'_>) -> Result<Usage> {
        match &self.mode {
            Mode::Quota { .. } => {
                let id = Self::project(v)?;
                let u = self
                    .host
                    .project_usage(&self.volumes, id)
                    .ctx(|| format!("reading the quota of project {id}"))?;
                Ok(Usage {
                    bytes: u.bytes,
                    inodes: u.inodes,
                })
            }
            Mode::Accounted(m) => Ok(m.get(v.stem)),
        }
    }

    fn backings(&self) -> Result<Vec<String>> {
        list_names(&self.volumes, "")
    }

    fn intent_records(&self) -> bool {
        false
    }

    fn written_generation(&self) -> Option<u64> {
        match &self.mode {
            Mode::Accounted(m) => Some(m.generation.load(std::sync::atomic::Ordering::Acquire)),
            Mode::Quota { .. } => None,
        }
    }

    fn interrupted_delete(&self, v: &VolumeRef<'_>) -> bool {
        !loam_sys::fs::is_dir_no_follow(&self.path(v.stem))
            && std::fs::symlink_metadata(self.path(&format!("{DELETING}{}", v.stem))).is_ok()
    }

    /// Without intent records, a create interrupted before its record leaves an empty directory, and a delete
    /// interrupted after its record was removed leaves `.deleting-<stem>`: both are removed here. A directory
    /// without a record that holds anything is left for an operator.
    fn reclaim(&self, known: &std::collections::HashSet<String>) -> Result<Vec<String>> {
        let mut left = Vec::new();
        for name in self.backings()? {
            if let Some(stem) = name.strip_prefix(DELETING) {
                if known.contains(stem) {
                    continue;
                }
                self.forget_leftover(stem, &name)?;
                continue;
            }
            if known.contains(&name) || name.starts_with('.') {
                continue;
            }
            let empty = std::fs::read_dir(self.path(&name)).is_ok_and(|mut d| d.next().is_none());
            if empty {
                tracing::info!(backing = %name, "removing the empty directory of a create that did not finish");
                self.forget_leftover(&name, &name)?;
            } else {
                left.push(name);
            }
        }
        Ok(left)
    }

    fn health(&self) -> Option<String> {
        writable_dir_problem(&self.volumes)
    }

    fn attach(&self, v: &VolumeRef<'_>) -> Result<Attachment> {
        Ok(Attachment::Directory(self.path(v.stem)))
    }

    fn attached(&self, v: &VolumeRef<'_>) -> Result<Option<Attachment>> {
        self.attach(v).map(Some)
    }

    fn detach(&self, _v: &VolumeRef<'_>) -> Result<()> {
        Ok(())
    }
}

/// Measures every volume directory of an accounted pool in the background, one tree walk per volume per
/// interval, so reading a volume's usage never walks it. The measurement is as old as the interval at most.
#[derive(Debug)]
struct Measurer {
    volumes: PathBuf,
    every: Duration,
    usage: Mutex<HashMap<String, Usage>>,
    /// Bumped whenever a measurement changes (see [`Backend::written_generation`]).
    generation: std::sync::atomic::AtomicU64,
    stopped: Mutex<bool>,
    wake: Condvar,
}

impl Measurer {
    fn start(volumes: PathBuf, every: Duration) -> Arc<Measurer> {
        let m = Arc::new(Measurer {
            volumes,
            every,
            usage: Mutex::default(),
            generation: std::sync::atomic::AtomicU64::new(0),
            stopped: Mutex::new(false),
            wake: Condvar::new(),
        });
        let worker = m.clone();
        let spawned = std::thread::Builder::new()
            .name("loam-usage".into())
            .spawn(move || worker.run());
        if let Err(e) = spawned {
            warn!(error = %e, "cannot start the usage measurement; dir volumes report what was last measured");
        }
        m
    }

    fn run(&self) {
        loop {
            let stems = list_names(&self.volumes, "").unwrap_or_default();
            for stem in &stems {
                if self.is_stopped() {
                    return;
                }
                self.measure(stem);
            }
            debug!(volumes = stems.len(), path = %self.volumes.display(), "volume usage measured");
            let stopped = self.stopped.lock().unwrap_or_else(|e| e.into_inner());
            let (stopped, _) = self
                .wake
                .wait_timeout_while(stopped, self.every, |s| !*s)
                .unwrap_or_else(|e| e.into_inner());
            if *stopped {
                return;
            }
        }
    }

    fn is_stopped(&self) -> bool {
        *self.stopped.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn stop(&self) {
        *self.stopped.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.wake.notify_all();
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<String, Usage>> {
        self.usage.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Walks one volume now (a new, empty one at create costs nothing).
    fn measure(&self, stem: &str) {
        if let Ok(u) = loam_sys::fs::tree_usage(&self.volumes.join(stem)) {
            let usage = Usage {
                bytes: u.bytes,
                inodes: u.inodes,
            };
            let before = self.cache().insert(stem.to_owned(), usage);
            if before != Some(usage) {
                self.generation.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
            }
        }
    }

    /// The last measurement; nothing for a volume not measured yet.
    fn get(&self, stem: &str) -> Usage {
        self.cache()
            .get(stem)
            .copied()
            .unwrap_or(Usage { bytes: 0, inodes: 0 })
    }

    fn forget(&self, stem: &str) {
        if self.cache().remove(stem).is_some() {
            self.generation.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        }
    }
}

/// What kinds whose volumes are directories (`kind`: dir, btrfs) cannot serve. Reader-only modes are served:
/// their bind mounts are made read-only.
pub(crate) fn directory_refusal(cap: &Capability, kind: &str) -> Option<Refusal> {
    match &cap.access {
        AccessType::Block => Some(Refusal::Unsupported(format!(
            "block access is not possible on a {kind} pool (its volumes are directories); use a pool of kind image"
        ))),
        AccessType::Mount { fs_type, .. } if !fs_type.is_empty() => Some(Refusal::Unsupported(format!(
            "fs_type {fs_type:?} cannot be applied: {kind} pool volumes are directories on the pool's filesystem; \
             leave fsType empty or use a pool of kind image"
        ))),
        AccessType::Mount { .. } => capability::mode_refusal(cap)
            .or_else(|| capability::flags_refusal(cap, capability::DIRECTORY_MOUNT_FLAGS, kind)),
    }
}

/// Names in `dir` that end in `suffix`, with the suffix removed.
pub(crate) fn list_names(dir: &Path, suffix: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).ctx(|| format!("reading {}", dir.display()))? {
        let e = e.ctx(|| format!("reading {}", dir.display()))?;
        if let Some(stem) = e.file_name().to_str().and_then(|n| n.strip_suffix(suffix)) {
            out.push(stem.to_owned());
        }
    }
    Ok(out)
}

/// The prefix a volume's directory (or image file) is renamed with while it is being removed.
pub(crate) const DELETING: &str = ".deleting-";

/// Why `dir` cannot hold new volumes: not a directory, or not writable.
pub(crate) fn writable_dir_problem(dir: &Path) -> Option<String> {
    if !loam_sys::fs::is_dir_no_follow(dir) {
        return Some(format!("{} is not a directory", dir.display()));
    }
    rustix::fs::access(dir, rustix::fs::Access::WRITE_OK | rustix::fs::Access::EXEC_OK)
        .err()
        .map(|e| format!("{} is not writable: {e}", dir.display()))
}

//! `btrfs` pools: a volume is a btrfs subvolume (`volumes/<stem>`) whose qgroup limits what it references to its
//! size, so writing past it fails with EDQUOT, and whose usage comes from the quota accounting in O(1), never from
//! walking its files. The node publishes it like a directory.
//!
//! btrfs reports the whole filesystem in statfs, also inside a subvolume: `df` in a pod shows the pool's size, and
//! NodeGetVolumeStats reports the volume's own size and usage from its qgroup.

use std::{
    collections::{HashMap, HashSet},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard},
};

use loam_sys::host::{Host, Limit, Qgroup, QuotaMode, Subvolume};
use tracing::{info, warn};

use super::{Attachment, Backend, ProvisionSpec, Usage, VolumeRef, dir, settled::Settled};
use crate::{
    capability::Refusal,
    error::{Error, IoContext, Result},
    spec::{PoolKind, QuotaChoice},
    types::Capability,
};

/// Quota limits are kept to whole 4 KiB blocks, btrfs's usual sector size.
const GRANULARITY: u64 = 4096;

#[derive(Debug)]
pub struct BtrfsBackend {
    volumes: PathBuf,
    host: Arc<dyn Host>,
    /// Volumes staged now (attached, or found with mounts at start-up): only these can be written, so only these
    /// are measured afresh for capacity.
    in_use: Mutex<HashSet<String>>,
    /// What every other volume's qgroup referenced when last read: at create, unstage and each check.
    settled: Settled,
    /// Each volume's subvolume ID, which never changes.
    ids: Mutex<HashMap<String, u64>>,
}

/// Makes sure the filesystem holding `root` is btrfs with quotas on, turning them on as `choice` says when they are
/// off. Returns the accounting in use, or why the pool cannot be used.
pub fn prepare(
    pool: &str,
    root: &Path,
    choice: QuotaChoice,
    host: &dyn Host,
) -> std::result::Result<QuotaMode, String> {
    match host.is_btrfs(root) {
        Ok(true) => {}
        Ok(false) => {
            return Err(format!(
                "{} is not on a btrfs filesystem: put the pool on btrfs, or use kind dir or image",
                root.display()
            ));
        }
        Err(e) => return Err(format!("cannot tell the filesystem of {}: {e}", root.display())),
    }
    let mode = host
        .btrfs_quota_mode(root)
        .map_err(|e| format!("cannot read the quota state of {}: {e}", root.display()))?;
    if mode != QuotaMode::Off {
        if mode == QuotaMode::Full && host.btrfs_rescan_running(root).unwrap_or(false) {
            warn!(
                pool,
                "a qgroup rescan is running: usage figures are not exact until it ends"
            );
        }
        info!(pool, quota = ?mode, "btrfs quotas already on");
        return Ok(mode);
    }
    let simple_first = matches!(choice, QuotaChoice::Auto | QuotaChoice::Simple);
    if simple_first {
        match host.btrfs_enable_quota(root, true) {
            Ok(()) => {
                info!(
                    pool,
                    "btrfs simple quotas enabled: instant, and they account what is written from now on"
                );
                return Ok(QuotaMode::Simple);
            }
            Err(e) if choice == QuotaChoice::Simple => {
                return Err(format!(
                    "simple quotas cannot be enabled on {} ({e}): they need kernel 6.7 or later; set quota = \"full\" \
                     or \"auto\" to use full qgroups",
                    root.display()
                ));
            }
            Err(e) => warn!(pool, error = %e, "simple quotas cannot be enabled; trying full qgroups"),
        }
    }
    host.btrfs_enable_quota(root, false).map_err(|e| {
        format!(
            "quotas cannot be enabled on {} ({e}); enable them by hand (btrfs quota enable) and restart loam",
            root.display()
        )
    })?;
    warn!(
        pool,
        "btrfs full qgroups enabled: the kernel rescans the whole filesystem in the background, which takes \
                 long on a large one; usage figures are not exact until it ends"
    );
    Ok(QuotaMode::Full)
}

impl BtrfsBackend {
    /// `volumes` is the pool's `volumes/` directory, on btrfs with quotas on (see [`prepare`]).
    pub fn new(volumes: PathBuf, host: Arc<dyn Host>) -> Self {
        BtrfsBackend {
            volumes,
            host,
            in_use: Mutex::default(),
            settled: Settled::default(),
            ids: Mutex::default(),
        }
    }

    fn in_use(&self) -> MutexGuard<'_, HashSet<String>> {
        self.in_use.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn ids(&self) -> MutexGuard<'_, HashMap<String, u64>> {
        self.ids.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes what volume `stem` references, unless it is in use (checked under the same lock that marks it so).
    fn settle(&self, stem: &str, referenced: u64) {
        let in_use = self.in_use();
        if !in_use.contains(stem) {
            self.settled.set(stem, referenced);
        }
    }

    /// The volume's qgroup now, for measuring; `None` when it cannot be read.
    fn measured_qgroup(&self, stem: &str) -> Option<Qgroup> {
        let id = self.measured_id(stem)?;
        self.host.btrfs_qgroup(&self.volumes, id).ok()?
    }

    fn path(&self, stem: &str) -> PathBuf {
        self.volumes.join(stem)
    }

    /// The subvolume ID at the volume's path now (checks and deletes ask afresh: the path may have been
    /// replaced by a plain directory); remembered for measuring.
    fn id(&self, stem: &str) -> Result<Option<u64>> {
        let path = self.path(stem);
        let id = self
            .host
            .btrfs_subvolume_id(&path)
            .ctx(|| format!("looking up subvolume {}", path.display()))?;
        self.note_id(stem, id);
        Ok(id)
    }

    /// Remembers the subvolume ID found at the volume's path (or that there is none there).
    fn note_id(&self, stem: &str, id: Option<u64>) {
        let mut ids = self.ids();
        match id {
            Some(id) if ids.get(stem) == Some(&id) => {}
            Some(id) => {
                ids.insert(stem.to_owned(), id);
            }
            None => {
                ids.remove(stem);
            }
        }
    }

    /// The volume's subvolume ID for measuring its qgroup: remembered, since a subvolume's ID never changes.
    fn measured_id(&self, stem: &str) -> Option<u64> {
        let known = self.ids().get(stem).copied();
        known.or_else(|| self.id(stem).ok().flatten())
    }

    /// Checks `vs` with one lookup of their subvolumes; with `settle`, also notes what each references.
    fn check_batch(&self, vs: &[VolumeRef<'_>], settle: bool) -> Vec<Option<String>> {
        let names: Vec<&str> = vs.iter().map(|v| v.stem).collect();
        match self.host.btrfs_subvolumes(&self.volumes, &names, settle) {
            Ok(found) => vs
                .iter()
                .zip(found)
                .map(|(v, f)| {
                    if let Ok(Some(Subvolume {
                        referenced: Some(b), ..
                    })) = &f
                    {
                        self.settle(v.stem, *b);
                    }
                    self.judge(v, f)
                })
                .collect(),
            Err(e) => {
                let why = format!("cannot look up the subvolumes in {}: {e}", self.volumes.display());
                vs.iter().map(|_| Some(why.clone())).collect()
            }
        }
    }

    /// What a check makes of the subvolume found at the volume's path: why the volume is not healthy, if it is
    /// not. Remembers the subvolume's ID.
    fn judge(&self, v: &VolumeRef<'_>, found: std::io::Result<Option<Subvolume>>) -> Option<String> {
        let (stem, capacity_bytes) = (v.stem, v.capacity_bytes);
        let path = self.path(stem);
        let found = match found {
            Ok(found) => found,
            Err(e) => return Some(format!("looking up subvolume {}: {e}", path.display())),
        };
        self.note_id(stem, found.as_ref().map(|f| f.id));
        let limit = match found {
            Some(f) => f.limit,
            None if path.exists() => return Some(format!("{} is not a subvolume", path.display())),
            None => return Some(format!("the volume's subvolume {} is missing", path.display())),
        };
        let differs = |shown: String| {
            Some(format!(
                "the quota limit of subvolume {} is {shown}, not the volume's size {capacity_bytes} (changed by \
                 hand?); loam leaves it as it is",
                path.display()
            ))
        };
        match limit {
            Ok(Limit::Bytes(b)) if b == capacity_bytes => None,
            Ok(Limit::Bytes(b)) => differs(b.to_string()),
            Ok(Limit::Unlimited) => differs("none".to_owned()),
            Ok(Limit::NoQgroup) => Some(format!(
                "subvolume {} has no qgroup: its size is not enforced",
                path.display()
            )),
            Err(e) => Some(format!("cannot read the qgroup of {}: {e}", path.display())),
        }
    }

    fn forget(&self, stem: &str) {
        self.in_use().remove(stem);
        self.settled.forget(stem);
        self.ids().remove(stem);
    }
}

impl Backend for BtrfsBackend {
    fn kind(&self) -> PoolKind {
        PoolKind::Btrfs
    }

    fn granularity(&self) -> u64 {
        GRANULARITY
    }

    fn enforces_size(&self) -> bool {
        true
    }

    fn refusal(&self, cap: &Capability) -> Option<Refusal> {
        dir::directory_refusal(cap, "btrfs")
    }

    fn provision(&self, spec: &ProvisionSpec<'_>) -> Result<()> {
        let path = self.path(spec.stem);
        let id = match self.id(spec.stem)? {
            Some(id) => id,
            None => self
                .host
                .btrfs_create_subvolume(&self.volumes, spec.stem)
                .ctx(|| format!("creating subvolume {}", path.display()))?,
        };
        // World-writable like a fresh disk, as dir volumes are; kubelet applies fsGroup on top.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(dir::VOLUME_DIR_MODE))
            .ctx(|| format!("chmod of {}", path.display()))?;
        self.host
            .btrfs_set_limit(&self.volumes, id, spec.capacity_bytes)
            .ctx(|| {
                format!(
                    "limiting subvolume {} to {} bytes",
                    path.display(),
                    spec.capacity_bytes
                )
            })?;
        if let Some(q) = self.measured_qgroup(spec.stem) {
            self.settle(spec.stem, q.referenced);
        }
        Ok(())
    }

    fn destroy(&self, v: &VolumeRef<'_>) -> Result<()> {
        let stem = v.stem;
        let path = self.path(stem);
        match std::fs::symlink_metadata(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => {
                return Err(Error::Io {
                    op: format!("inspecting {}", path.display()),
                    source: e,
                });
            }
            Ok(_) => {}
        }
        if self.id(stem)?.is_none() {
            return Err(Error::Precondition(format!(
                "{} is not a subvolume; loam deletes only the subvolumes it made, so it is left for an operator",
                path.display()
            )));
        }
        self.host
            .btrfs_delete_subvolume(&self.volumes, stem)
            .ctx(|| format!("deleting subvolume {}", path.display()))?;
        self.forget(stem);
        Ok(())
    }

    /// One volume's check, which also settles what it references.
    fn check(&self, v: &VolumeRef<'_>) -> Option<String> {
        self.check_batch(std::slice::from_ref(v), true).pop().flatten()
    }

    /// The checks of a ListVolumes page: one lookup of all the page's subvolumes and their limits.
    fn check_many(&self, vs: &[VolumeRef<'_>]) -> Vec<Option<String>> {
        self.check_batch(vs, false)
    }

    /// The start-up checks, which also settle what each volume references.
    fn check_all(&self, vs: &[VolumeRef<'_>]) -> Vec<Option<String>> {
        self.check_batch(vs, true)
    }

    fn usage(&self, v: &VolumeRef<'_>) -> Result<Usage> {
        let stem = v.stem;
        let path = self.path(stem);
        let id = self
            .id(stem)?
            .ok_or_else(|| Error::Precondition(format!("{} is not a subvolume", path.display())))?;
        let q = self
            .host
            .btrfs_qgroup(&self.volumes, id)
            .ctx(|| format!("reading the qgroup of {}", path.display()))?
            .ok_or_else(|| Error::Precondition(format!("subvolume {} has no qgroup", path.display())))?;
        // btrfs keeps no inode counts: it reports none, and so does loam.
        Ok(Usage {
            bytes: q.referenced,
            inodes: 0,
        })
    }

    fn backings(&self) -> Result<Vec<String>> {
        dir::list_names(&self.volumes, "")
    }

    fn health(&self) -> Option<String> {
        dir::writable_dir_problem(&self.volumes)
    }

    fn attach(&self, v: &VolumeRef<'_>) -> Result<Attachment> {
        self.note_in_use(v);
        Ok(Attachment::Directory(self.path(v.stem)))
    }

    fn attached(&self, v: &VolumeRef<'_>) -> Result<Option<Attachment>> {
        Ok(Some(Attachment::Directory(self.path(v.stem))))
    }

    /// Unstaged, nothing writes to the subvolume any more: what it references is read once and kept.
    fn detach(&self, v: &VolumeRef<'_>) -> Result<()> {
        self.in_use().remove(v.stem);
        match self.measured_qgroup(v.stem) {
            Some(q) => self.settle(v.stem, q.referenced),
            None => self.settled.forget(v.stem),
        }
        Ok(())
    }

    fn note_in_use(&self, v: &VolumeRef<'_>) {
        let mut in_use = self.in_use();
        in_use.insert(v.stem.to_owned());
        self.settled.forget(v.stem);
    }

    /// What each settled volume referenced (at most its size); a volume in use, or not read yet, counts as
    /// nothing here (which holds back its whole size) and the former is measured by `written_live`.
    fn written_bytes(&self, v: &VolumeRef<'_>) -> u64 {
        self.settled.get(v.stem).map_or(0, |b| b.min(v.capacity_bytes))
    }

    fn written_generation(&self) -> Option<u64> {
        Some(self.settled.generation())
    }

    /// The volumes staged now, each read from its qgroup (at most its limit).
    fn written_live(&self) -> u64 {
        let staged: Vec<String> = self.in_use().iter().cloned().collect();
        staged
            .iter()
            .filter_map(|stem| self.measured_qgroup(stem))
            .map(|q| q.referenced.min(q.max_referenced.unwrap_or(u64::MAX)))
            .fold(0u64, u64::saturating_add)
    }
}

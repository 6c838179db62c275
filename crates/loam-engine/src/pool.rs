//! A pool: one place on this node's disks where volumes live, with its backend, its records, its identity and
//! its capacity accounting. The in-memory state is guarded by one short-held mutex per pool, never held across
//! I/O.
//!
//! A pool proves it is the pool it was: on first use it writes a marker (its name, kind and a generated UUID) at
//! its root and the node remembers the UUID in its state directory. A root or marker that is missing or
//! different later (a disk that is not mounted, the wrong disk) is never recreated: the pool is *degraded*,
//! with the reason, and offers nothing until a restart finds it whole again. A pool that cannot be opened for
//! any other reason (read-only, unreadable) is degraded too; only a configuration mistake or another server
//! holding the pool stops start-up.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use loam_sys::{host::Host, lockfile::LockFile};
use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::{
    backend::{
        Backend, Inventory, Offer, VolumeRef,
        btrfs::{self, BtrfsBackend},
        device::DeviceBackend,
        dir::{self, DirBackend},
        image::ImageBackend,
        volumes_dir,
    },
    capacity,
    error::{Error, IoContext, Result},
    id::is_pool_name,
    record::{DeviceClaim, RecordStore, VolumeRecord},
    spec::{PoolKind, PoolSpec},
    types::{Capability, CapacityReport},
};

/// The marker file at a pool's root.
pub const MARKER_FILE: &str = "loam-pool.json";
/// The lock file at a pool's root, held by the serving process.
pub const LOCK_FILE: &str = "loam.lock";

/// What a pool's marker says, and what the node remembers of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Marker {
    pub name: String,
    pub kind: PoolKind,
    pub uuid: String,
}

/// What the pool knows of a volume.
#[derive(Debug, Clone)]
pub enum Entry {
    /// Shared, so a lookup or a ListVolumes page copies no record.
    Ready(Arc<VolumeRecord>),
    /// Its record could not be used; operations on it are refused until an operator repairs it.
    Quarantined(String),
}

#[derive(Debug, Default)]
struct State {
    reserved: u64,
    /// By volume ID, so listing is sorted.
    volumes: BTreeMap<String, Entry>,
    /// Project IDs held by volumes (and creates in flight), or found taken on the filesystem.
    projects: std::collections::BTreeSet<u32>,

    /// Disks (device pools) held by volumes and creates in flight, by identity.
    disks: std::collections::BTreeSet<String>,
    /// The bytes the volumes have written and the backend's measurement generation they were summed at, for kinds
    /// that measure in memory; dropped whenever a volume comes or goes.
    written: Option<(u64, u64)>,
}

#[derive(Debug)]
pub struct Pool {
    pub name: String,
    pub spec: PoolSpec,
    /// The pool's directory (canonical when it exists); a device pool's is its state directory in the node's.
    pub root: PathBuf,
    /// Bytes the pool may hand out before overcommit.
    pub total_bytes: u64,
    pub backend: Box<dyn Backend>,
    pub store: RecordStore,
    /// The marker's UUID, when the pool was identified.
    pub uuid: Option<String>,
    host: Arc<dyn Host>,
    /// Why the pool was found unusable at start-up (or when its records could not be recovered).
    degraded: Mutex<Option<String>>,
    _lock: Option<LockFile>,
    state: Mutex<State>,
}

/// The outcome of identifying a pool's root.
struct Identified {
    root: PathBuf,
    uuid: Option<String>,
    lock: Option<LockFile>,
    degraded: Option<String>,
}

impl Pool {
    /// Opens the pool declared by `spec`: checks its identity, takes its lock, makes its directories on first use
    /// and builds its backend. Records are loaded by the engine. `state_dir` is the node's own state directory,
    /// where pool identities are remembered.
    /// `owners` is shared by the node's device pools, so that a disk listed in two discovery directories serves
    /// only the pool that found it first.
    pub fn open(
        spec: &PoolSpec,
        host: Arc<dyn Host>,
        state_dir: &Path,
        owners: &crate::backend::device::DiskOwners,
    ) -> Result<Pool> {
        let name = spec.name();
        if !is_pool_name(name) {
            return Err(Error::invalid(
                "pool name",
                format!("{name:?}: use 1-31 of a-z, 0-9 and '-', starting and ending with a letter or digit"),
            ));
        }
        if !spec.path().is_absolute() {
            return Err(Error::invalid(
                "pool path",
                format!(
                    "pool {name}: {}: pool paths must be absolute",
                    spec.path().display()
                ),
            ));
        }
        spec.check().map_err(|e| Error::invalid("pool", e))?;
        let known_dir = state_dir.join("pools");
        std::fs::create_dir_all(&known_dir).ctx(|| format!("creating {}", known_dir.display()))?;
        // A btrfs pool on another filesystem is found out before its identity is written there: the marker would
        // otherwise sit under the btrfs filesystem once it is mounted.
        let wrong_fs = match spec {
            PoolSpec::Btrfs(_) => {
                // The pool's directory, or the nearest existing directory above it (where it would be made).
                let at = spec
                    .path()
                    .ancestors()
                    .find(|p| p.exists())
                    .unwrap_or(spec.path());
                match host.is_btrfs(at) {
                    Ok(true) => None,
                    Ok(false) => Some(format!(
                        "{} is not on a btrfs filesystem: put the pool on btrfs, or use kind dir or image",
                        spec.path().display()
                    )),
                    Err(e) => Some(format!("cannot tell the filesystem of {}: {e}", at.display())),
                }
            }
            _ => None,
        };
        // A device pool's disks are handed out whole, so its records live in the node's state directory.
        let home = match spec {
            PoolSpec::Device(_) => state_dir.join("devices").join(name),
            _ => spec.path().to_owned(),
        };
        let id = match wrong_fs {
            Some(why) => Identified {
                root: home,
                uuid: None,
                lock: None,
                degraded: Some(why),
            },
            None => identify(spec, &home, &known_dir)?,
        };
        let volumes = volumes_dir(&id.root);
        let mut degraded = id.degraded;
        if degraded.is_none() {
            let volumes_made = match spec {
                PoolSpec::Device(_) => Ok(volumes.clone()),
                _ => private_subdir(&id.root, "volumes"),
            };
            degraded = volumes_made
                .and_then(|_| private_subdir(&id.root, "records"))
                .err()
                .map(|e| e.to_string());
        }
        if degraded.is_none()
            && let PoolSpec::Btrfs(b) = spec
        {
            degraded = btrfs::prepare(name, &id.root, b.quota, host.as_ref()).err();
        }
        let backend: Box<dyn Backend> = match spec {
            PoolSpec::Dir(d) => {
                let quota = degraded.is_none() && dir::choose_mode(d, &id.root, host.as_ref())?;
                Box::new(DirBackend::new(volumes, d, quota, host.clone()))
            }
            PoolSpec::Image(s) => Box::new(ImageBackend::new(volumes, s.allocation, host.clone())),
            PoolSpec::Btrfs(_) => Box::new(BtrfsBackend::new(volumes, host.clone())),
            PoolSpec::Device(d) => Box::new(DeviceBackend::open(d, &id.root, host.clone(), owners.clone())),
        };
        // One look at the pool's filesystem: its size is the default budget, and a read-only one takes nothing.
        let fs = match &degraded {
            Some(_) => None,
            // Its disks are its size, measured by discovery.
            None if spec.kind() == PoolKind::Device => None,
            None => match host.statfs(&id.root) {
                Ok(fs) if fs.read_only => {
                    degraded = Some(format!("{} is on a read-only filesystem", id.root.display()));
                    None
                }
                Ok(fs) => Some(fs),
                // Only the default budget needs the measurement; without it, capacity offers nothing anyway.
                Err(e) if spec.capacity().is_none() => {
                    degraded = Some(format!("cannot measure {}: {e}", id.root.display()));
                    None
                }
                Err(_) => None,
            },
        };
        let total_bytes = spec.capacity().or(fs.map(|f| f.total_bytes)).unwrap_or(0);
        let degraded = degraded.map(|r| format!("pool {name}: {r}"));
        Ok(Pool {
            name: name.to_owned(),
            spec: spec.clone(),
            store: RecordStore::new(id.root.join("records")),
            root: id.root,
            total_bytes,
            backend,
            uuid: id.uuid,
            host,
            degraded: Mutex::new(degraded),
            _lock: id.lock,
            state: Mutex::new(State::default()),
        })
    }

    pub fn kind(&self) -> PoolKind {
        self.spec.kind()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get(&self, id: &str) -> Option<Entry> {
        self.state().volumes.get(id).cloned()
    }

    pub fn ids(&self) -> Vec<String> {
        self.state().volumes.keys().cloned().collect()
    }

    /// Up to `limit` records of usable (not quarantined) volumes from ID `start` on, in ID order: one page's
    /// worth, without copying the rest.
    pub fn page_from(&self, start: &str, limit: usize) -> Vec<Arc<VolumeRecord>> {
        self.state()
            .volumes
            .range::<str, _>((std::ops::Bound::Included(start), std::ops::Bound::Unbounded))
            .filter_map(|(_, e)| match e {
                Entry::Ready(r) => Some(r.clone()),
                Entry::Quarantined(_) => None,
            })
            .take(limit)
            .collect()
    }

    pub fn len(&self) -> usize {
        self.state().volumes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn reserved(&self) -> u64 {
        self.state().reserved
    }

    /// Volumes whose records could not be used.
    pub fn quarantined(&self) -> usize {
        self.state()
            .volumes
            .values()
            .filter(|e| matches!(e, Entry::Quarantined(_)))
            .count()
    }

    /// Bytes the pool's volumes have written (what capacity counts as taken on the filesystem).
    pub fn used(&self) -> u64 {
        self.measure().1
    }

    /// Bytes the pool holds: its budget, or for a device pool the disks it has adopted or given out now.
    pub fn total(&self) -> u64 {
        match self.backend.entries(&[]) {
            None => self.total_bytes,
            Some(all) => {
                let st = self.state();
                all.iter()
                    .filter(|o| o.free || st.disks.contains(&o.claim.entry))
                    .map(|o| o.size)
                    .fold(0, u64::saturating_add)
            }
        }
    }

    /// What a new volume with these capabilities can get now: for a device pool, the free disks that serve
    /// them (the largest is the largest volume); otherwise bytes, as [`Pool::available`].
    pub fn offer(&self, caps: &[Capability]) -> CapacityReport {
        let Some(entries) = self.backend.entries(caps) else {
            let available = self.available();
            let g = self.backend.granularity();
            return CapacityReport {
                available_bytes: available,
                maximum_volume_bytes: available / g * g,
            };
        };
        if self.degraded().is_some() {
            return CapacityReport {
                available_bytes: 0,
                maximum_volume_bytes: 0,
            };
        }
        if self.quarantined() > 0 {
            return CapacityReport {
                available_bytes: 0,
                maximum_volume_bytes: 0,
            };
        }
        let free = self.free_disks(entries);
        CapacityReport {
            available_bytes: free.iter().map(|o| o.size).fold(0, u64::saturating_add),
            maximum_volume_bytes: free.iter().map(|o| o.size).max().unwrap_or(0),
        }
    }

    fn free_disks(&self, entries: Vec<Offer>) -> Vec<Offer> {
        let st = self.state();
        entries
            .into_iter()
            .filter(|o| o.free && !st.disks.contains(&o.claim.entry))
            .collect()
    }

    /// Holds the smallest free disk that serves `caps` and whose size is within `required..=limit` (0: no
    /// bound), for a new volume: best fit. RESOURCE_EXHAUSTED names the largest free size when a disk of the pool
    /// could fit but none is free; OUT_OF_RANGE when no disk the pool has could.
    pub fn take_disk(&self, required: u64, limit: u64, caps: &[Capability]) -> Result<Offer> {
        if let Some(reason) = self.degraded() {
            return Err(Error::Exhausted(format!(
                "{reason}; it takes no new volumes until it is repaired"
            )));
        }
        let unreadable = self.quarantined();
        if unreadable > 0 {
            // Such a record may name any of the disks: none is given until an operator repairs or removes it.
            return Err(Error::Exhausted(format!(
                "pool {}: {unreadable} volume record(s) cannot be read, and each may name one of its disks; no disk \
                 is given to a new volume until they are repaired or removed (see the start-up log)",
                self.name
            )));
        }
        let all = self.backend.entries(caps).unwrap_or_default();
        let fits = |o: &Offer| o.size >= required && (limit == 0 || o.size <= limit);
        let range = match (required, limit) {
            (0, 0) => "any size".to_owned(),
            (_, 0) => format!("at least {required} bytes"),
            _ => format!("{required} to {limit} bytes"),
        };
        let mut st = self.state();
        let best = all
            .iter()
            .filter(|o| o.free && !st.disks.contains(&o.claim.entry) && fits(o))
            .min_by_key(|o| (o.size, o.claim.entry.clone()));
        if let Some(best) = best {
            st.disks.insert(best.claim.entry.clone());
            st.reserved = st.reserved.saturating_add(best.size);
            return Ok(best.clone());
        }
        let largest_free = all
            .iter()
            .filter(|o| o.free && !st.disks.contains(&o.claim.entry))
            .map(|o| o.size)
            .max();
        let sizes: Vec<String> = {
            let mut s: Vec<u64> = all.iter().map(|o| o.size).collect();
            s.sort_unstable();
            s.dedup();
            s.iter().map(u64::to_string).collect()
        };
        if !all.iter().any(fits) {
            return Err(Error::OutOfRange(format!(
                "pool {} has no disk of {range} for these capabilities; its disk sizes: {}",
                self.name,
                if sizes.is_empty() {
                    "none".into()
                } else {
                    sizes.join(", ")
                }
            )));
        }
        Err(Error::Exhausted(match largest_free {
            Some(l) => format!(
                "pool {}: no free disk of {range}; the largest free disk has {l} bytes",
                self.name
            ),
            None => format!(
                "pool {}: no free disk of {range}; every disk that fits is in use, being cleaned or not adopted",
                self.name
            ),
        }))
    }

    /// Gives back a disk held by [`Pool::take_disk`] for a create that failed.
    pub fn release_disk(&self, claim: &DeviceClaim, size: u64) {
        let mut st = self.state();
        st.disks.remove(&claim.entry);
        st.reserved = st.reserved.saturating_sub(size);
    }

    /// Every disk of a device pool and how it stands, the ones held named by their volume.
    pub fn inventory(&self) -> Inventory {
        let mut inv = self.backend.inventory();
        let st = self.state();
        let holders: BTreeMap<&str, &str> = st
            .volumes
            .values()
            .filter_map(|e| match e {
                Entry::Ready(r) => r.device.as_ref().map(|d| (d.entry.as_str(), r.id.as_str())),
                Entry::Quarantined(_) => None,
            })
            .collect();
        for e in &mut inv.entries {
            if let Some(id) = holders.get(e.key.as_str()) {
                e.state = if e.state.starts_with("missing") {
                    format!("in use by volume {id}, {}", e.state)
                } else {
                    format!("in use by volume {id}")
                };
                e.free = false;
            } else if st.disks.contains(&e.key) {
                e.state = "being given to a new volume".into();
                e.free = false;
            }
        }
        // Disks of volumes that have not shown since start-up.
        let listed: std::collections::BTreeSet<String> = inv.entries.iter().map(|e| e.key.clone()).collect();
        for e in st.volumes.values() {
            if let Entry::Ready(r) = e
                && let Some(d) = &r.device
                && !listed.contains(&d.entry)
            {
                inv.entries.push(crate::backend::EntryStatus {
                    key: d.entry.clone(),
                    path: d.path.clone(),
                    size: r.capacity_bytes,
                    state: format!(
                        "in use by volume {}, missing (it was at {})",
                        r.id,
                        d.path.display()
                    ),
                    free: false,
                });
            }
        }
        inv
    }

    /// Why the pool cannot take new volumes now, if it cannot: degraded at start-up, or its directories broke
    /// since.
    pub fn degraded(&self) -> Option<String> {
        if let Some(r) = self.degraded.lock().unwrap_or_else(|e| e.into_inner()).clone() {
            return Some(r);
        }
        if !loam_sys::fs::is_dir_no_follow(self.store.dir()) {
            return Some(format!(
                "pool {}: {} is missing",
                self.name,
                self.store.dir().display()
            ));
        }
        if let Some(r) = self.backend.health() {
            return Some(format!("pool {}: {r}", self.name));
        }
        let ids = self.backend.project_ids()?;
        let count = u64::from(*ids.end() - *ids.start()) + 1;
        (self.state().projects.len() as u64 >= count).then(|| {
            format!(
                "pool {}: every project ID from {} to {} is in use; widen project_ids in its config",
                self.name,
                ids.start(),
                ids.end()
            )
        })
    }

    /// Whether the pool was found whole at start-up (its records are loaded).
    pub fn is_open(&self) -> bool {
        self.degraded.lock().unwrap_or_else(|e| e.into_inner()).is_none()
    }

    /// Degrades the pool for the rest of this process's life.
    pub fn fail(&self, reason: String) {
        *self.degraded.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason);
    }

    /// Free bytes on the pool's filesystem and bytes its volumes have written, measured outside the lock. A
    /// filesystem that cannot be read has 0 free, so a broken disk is never offered.
    fn measure(&self) -> (u64, u64) {
        let fs_free = match self.host.statfs(&self.root) {
            Ok(fs) => fs.available_bytes,
            Err(e) => {
                warn!(pool = %self.name, error = %e, "cannot read the pool's filesystem; offering no space");
                0
            }
        };
        if let Some(generation) = self.backend.written_generation() {
            // Measured after the reused sum and outside the lock: the few volumes whose usage is not in memory.
            let live = || self.backend.written_live();
            let mut st = self.state();
            if let Some((g, sum)) = st.written
                && g == generation
            {
                drop(st);
                return (fs_free, sum.saturating_add(live()));
            }
            let written = st
                .volumes
                .values()
                .filter_map(|e| match e {
                    // A volume ID ends with its file stem, the 32 hex digits of its UUID.
                    Entry::Ready(r) if r.id.len() >= 32 => Some(self.backend.written_bytes(&VolumeRef {
                        stem: &r.id[r.id.len() - 32..],
                        capacity_bytes: r.capacity_bytes,
                        project_id: r.project_id,
                        device: None,
                    })),
                    _ => None,
                })
                .fold(0u64, u64::saturating_add);
            st.written = Some((generation, written));
            drop(st);
            return (fs_free, written.saturating_add(live()));
        }
        // What the backend needs of each volume, copied out so that no lock is held while it measures.
        let volumes: Vec<(String, u64, Option<u32>)> = self
            .state()
            .volumes
            .values()
            .filter_map(|e| match e {
                Entry::Ready(r) => r
                    .volume_id()
                    .ok()
                    .map(|v| (v.file_stem(), r.capacity_bytes, r.project_id)),
                Entry::Quarantined(_) => None,
            })
            .collect();
        let written = volumes
            .iter()
            .map(|(stem, capacity_bytes, project_id)| {
                self.backend.written_bytes(&VolumeRef {
                    stem,
                    capacity_bytes: *capacity_bytes,
                    project_id: *project_id,
                    device: None,
                })
            })
            .fold(0u64, u64::saturating_add);
        (fs_free, written)
    }

    fn bounds(&self, fs_free: u64, written: u64) -> capacity::Bounds {
        capacity::Bounds {
            budget: self.total_bytes,
            fs_free,
            written,
            ratio: self.spec.overcommit_ratio(),
        }
    }

    /// Bytes a new volume may take now (see `capacity::Bounds`); 0 while degraded.
    pub fn available(&self) -> u64 {
        if self.degraded().is_some() {
            return 0;
        }
        let (fs_free, written) = self.measure();
        self.bounds(fs_free, written).available(self.reserved())
    }

    /// Takes `size` bytes from the pool, or says why it cannot. Check and update are one step, so two
    /// concurrent creates can never both take the last bytes.
    pub fn reserve(&self, size: u64) -> Result<()> {
        if let Some(reason) = self.degraded() {
            return Err(Error::Exhausted(format!(
                "{reason}; it takes no new volumes until it is repaired and loam restarted"
            )));
        }
        let (fs_free, written) = self.measure();
        let bounds = self.bounds(fs_free, written);
        let mut st = self.state();
        bounds.check_fits(&self.name, size, st.reserved)?;
        st.reserved += size;
        Ok(())
    }

    pub fn release(&self, size: u64) {
        let mut st = self.state();
        st.reserved = st.reserved.saturating_sub(size);
    }

    /// Gives a new volume a project ID from `range` that no volume and nothing on the filesystem holds. Held
    /// until [`Pool::release_project`] or the volume is removed.
    pub fn allocate_project(&self, range: std::ops::RangeInclusive<u32>) -> Result<u32> {
        let (first, last) = (*range.start(), *range.end());
        loop {
            let candidate = {
                let mut st = self.state();
                let free = range.clone().find(|id| !st.projects.contains(id));
                let Some(id) = free else {
                    return Err(Error::Exhausted(format!(
                        "pool {}: every project ID from {first} to {last} is in use; widen project_ids in its config",
                        self.name
                    )));
                };
                st.projects.insert(id);
                id
            };
            // Checked outside the lock: it reads the filesystem's quota. A taken ID stays marked, so it is
            // skipped from now on.
            if self.backend.project_id_free(candidate) {
                return Ok(candidate);
            }
            warn!(pool = %self.name, project = candidate, "project ID already used on the filesystem; skipping it");
        }
    }

    pub fn release_project(&self, id: u32) {
        self.state().projects.remove(&id);
    }

    /// Adds a record whose bytes (and project ID) were already reserved.
    pub fn insert_reserved(&self, rec: VolumeRecord) {
        let mut st = self.state();
        st.written = None;
        st.volumes.insert(rec.id.clone(), Entry::Ready(Arc::new(rec)));
    }

    /// Adds a record found at start-up, taking its bytes even past the total: what exists is counted.
    pub fn insert_loaded(&self, rec: VolumeRecord) {
        let mut st = self.state();
        st.written = None;
        st.reserved = st.reserved.saturating_add(rec.capacity_bytes);
        if let Some(id) = rec.project_id {
            st.projects.insert(id);
        }
        if let Some(d) = &rec.device {
            st.disks.insert(d.entry.clone());
        }
        st.volumes.insert(rec.id.clone(), Entry::Ready(Arc::new(rec)));
    }

    pub fn quarantine(&self, id: String, reason: String) {
        self.state().volumes.insert(id, Entry::Quarantined(reason));
    }

    /// Forgets a volume and gives its bytes back.
    pub fn remove(&self, id: &str) {
        let mut st = self.state();
        st.written = None;
        if let Some(Entry::Ready(rec)) = st.volumes.remove(id) {
            st.reserved = st.reserved.saturating_sub(rec.capacity_bytes);
            if let Some(p) = rec.project_id {
                st.projects.remove(&p);
            }
            if let Some(d) = &rec.device {
                st.disks.remove(&d.entry);
            }
        }
    }
}

/// Finds out whether the pool's root is the pool this node knows, creating it only on first use.
fn identify(spec: &PoolSpec, path: &Path, known_dir: &Path) -> Result<Identified> {
    let name = spec.name();
    let known_file = format!("{name}.json");
    let known: Option<Marker> = read_json(&known_dir.join(&known_file));
    let degraded = |root: &Path, why: String| Identified {
        root: root.to_owned(),
        uuid: known.as_ref().map(|k| k.uuid.clone()),
        lock: None,
        degraded: Some(why),
    };
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if known.is_some() {
                return Ok(degraded(
                    path,
                    format!("{} is missing: is the disk mounted?", path.display()),
                ));
            }
            if let Err(e) = std::fs::create_dir_all(path) {
                return Ok(degraded(path, format!("cannot create {}: {e}", path.display())));
            }
        }
        Err(e) => return Ok(degraded(path, format!("cannot inspect {}: {e}", path.display()))),
        Ok(_) => {}
    }
    let root = match path.canonicalize() {
        Ok(r) if r.is_dir() => r,
        Ok(r) => return Ok(degraded(&r, format!("{} is not a directory", r.display()))),
        Err(e) => return Ok(degraded(path, format!("cannot resolve {}: {e}", path.display()))),
    };
    let marker_path = root.join(MARKER_FILE);
    let marker: Option<Marker> = read_json(&marker_path);
    if marker.is_none() && marker_path.exists() {
        return Ok(degraded(
            &root,
            format!(
                "the marker {} is unreadable; repair or remove it",
                marker_path.display()
            ),
        ));
    }
    // Identity is decided before anything is written at the root, so a wrong disk gets nothing, not even a lock
    // file. `Ok((marker, remember))`: the pool is this one.
    let verdict: std::result::Result<(Marker, bool), String> = match (marker, &known) {
        (Some(m), _) if m.name != name => Err(format!(
            "{} holds pool {:?}, not {name:?}: is the right disk mounted there?",
            root.display(),
            m.name
        )),
        (Some(m), _) if m.kind != spec.kind() => Err(format!(
            "{} holds a pool of kind {}, but it is configured as kind {}",
            root.display(),
            m.kind,
            spec.kind()
        )),
        (Some(m), Some(k)) if m.uuid != k.uuid => Err(format!(
            "the marker at {} says pool id {}, but this node knows pool {name} as {}: a different disk?",
            root.display(),
            m.uuid,
            k.uuid
        )),
        (Some(m), Some(_)) => Ok((m, false)),
        // A pool this node has not seen (a new data dir, or a disk moved here): adopted as it says.
        (Some(m), None) => Ok((m, true)),
        (None, Some(_)) => Err(format!(
            "marker {MARKER_FILE} missing at {}: is the disk mounted?",
            root.display()
        )),
        // First use.
        (None, None) => Ok((
            Marker {
                name: name.to_owned(),
                kind: spec.kind(),
                uuid: uuid::Uuid::new_v4().to_string(),
            },
            true,
        )),
    };
    let (m, is_new) = match verdict {
        Ok(v) => v,
        Err(why) => return Ok(degraded(&root, why)),
    };
    let lock = match LockFile::acquire(&root.join(LOCK_FILE)) {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
            return Err(Error::PoolUnusable {
                pool: name.to_owned(),
                reason: format!("it is served by another loam: {e}; stop that server first"),
            });
        }
        Err(e) => return Ok(degraded(&root, format!("cannot lock {}: {e}", root.display()))),
    };
    if !marker_path.exists() {
        let data = serde_json::to_vec_pretty(&m).expect("a marker serializes");
        if let Err(e) = loam_sys::fs::write_atomic(&root, MARKER_FILE, &data) {
            return Ok(degraded(&root, format!("cannot write its marker: {e}")));
        }
    }
    if is_new {
        remember(known_dir, &known_file, &m)?;
    }
    Ok(Identified {
        root,
        uuid: Some(m.uuid),
        lock: Some(lock),
        degraded: None,
    })
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Option<T> {
    let data = std::fs::read(path).ok()?;
    serde_json::from_slice(&data).ok()
}

fn remember(dir: &Path, file: &str, m: &Marker) -> Result<()> {
    let data = serde_json::to_vec_pretty(m).expect("a marker serializes");
    loam_sys::fs::write_atomic(dir, file, &data)
        .ctx(|| format!("remembering pool {} in {}", m.name, dir.display()))
}

/// Makes `root/name` as a directory only root can enter, refusing a symlink in its place.
fn private_subdir(root: &Path, name: &str) -> Result<PathBuf> {
    loam_sys::fs::create_dir_checked(root, name, 0o700)
        .ctx(|| format!("creating {}", root.join(name).display()))?;
    Ok(root.join(name))
}

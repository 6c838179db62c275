//! The engine: this node's pools and volumes. Controller-side operations live here, node-side ones in
//! `node.rs`. Every method is synchronous and may block on I/O; callers keep a blocked call from freezing the
//! async runtime.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use loam_sys::{host::Host, lockfile::LockFile};
use tracing::{info, warn};

use crate::{
    backend::{Inventory, ProvisionSpec, VolumeRef},
    capability::{self, Refusal},
    capacity,
    error::{Error, IoContext, Result},
    id::{self, VolumeId},
    locks::{LockTable, OpGuard},
    notes::Notes,
    pool::{Entry, Pool},
    record::{RECORD_VERSION, VolumeRecord, VolumeState},
    spec::PoolSpec,
    types::{AccessType, Capability, CapacityReport, CreateRequest, Segment, Volume},
};

/// StorageClass parameter that picks the pool.
pub const PARAM_POOL: &str = "pool";
/// Parameters loam understands; `csi.storage.k8s.io/*` keys are also accepted and ignored.
pub const KNOWN_PARAMETERS: &[&str] = &[PARAM_POOL];
const RESERVED_PREFIX: &str = "csi.storage.k8s.io/";
/// Volume context key carrying the pool name to node calls.
pub const CONTEXT_POOL: &str = "loam.csi/pool";

/// How many volumes start-up checks at once.
const START_CHECK_BATCH: usize = 512;

#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub node_id: String,
    /// Topology key whose value is this node (e.g. `loam.csi/node`).
    pub topology_key: String,
    /// More segments this node reports, such as a zone.
    pub extra_topology: Segment,
    pub pools: Vec<PoolSpec>,
    /// The pool used when a request names none.
    pub default_pool: String,
    pub max_volumes_per_node: u64,
    /// This node's own state (mount notes, pool identities, the server lock), apart from the pools.
    pub state_dir: PathBuf,
    /// The operating system, or a fake of it.
    pub host: Arc<dyn Host>,
}

/// How one pool stands, for logs and `loam client info`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolStatus {
    pub name: String,
    pub kind: &'static str,
    pub volumes: usize,
    pub total_bytes: u64,
    pub reserved_bytes: u64,
    pub available_bytes: u64,
    pub size_enforced: bool,
    /// Bytes its volumes have written.
    pub used_bytes: u64,
    /// Volumes whose records could not be used.
    pub quarantined: usize,
    /// Loop devices attached to its image files.
    pub loop_devices: usize,
    pub degraded: Option<String>,
    /// A device pool's disks, and the discovery entries it skips.
    pub inventory: Inventory,
}

/// The server lock in the state directory.
pub const SERVER_LOCK_FILE: &str = "loam.lock";

#[derive(Debug)]
pub struct Engine {
    node_id: String,
    node_tag: String,
    topology: Segment,
    pools: BTreeMap<String, Arc<Pool>>,
    default_pool: String,
    max_volumes_per_node: u64,
    locks: LockTable,
    pub(crate) notes: Notes,
    pub(crate) host: Arc<dyn Host>,
    /// What start-up reconciliation repaired: interrupted operations finished, stale mount notes dropped.
    repairs: std::sync::atomic::AtomicU64,
    _lock: LockFile,
}

impl Engine {
    /// Opens every pool, loads its records and repairs what an interrupted operation left behind.
    pub fn open(cfg: EngineConfig) -> Result<Engine> {
        if cfg.node_id.is_empty() || cfg.node_id.len() > 256 {
            return Err(Error::invalid("node id", "must be 1-256 bytes"));
        }
        let node_tag = id::node_tag(&cfg.node_id);
        let mut topology = cfg.extra_topology.clone();
        topology.insert(cfg.topology_key.clone(), node_tag.clone());
        let mut names = std::collections::BTreeSet::new();
        for spec in &cfg.pools {
            if !names.insert(spec.name()) {
                return Err(Error::invalid(
                    "pools",
                    format!("pool {} is declared twice", spec.name()),
                ));
            }
        }
        if !names.contains(cfg.default_pool.as_str()) {
            return Err(Error::invalid(
                "default pool",
                format!("{} is not a declared pool", cfg.default_pool),
            ));
        }
        std::fs::create_dir_all(&cfg.state_dir).ctx(|| format!("creating {}", cfg.state_dir.display()))?;
        let lock = LockFile::acquire(&cfg.state_dir.join(SERVER_LOCK_FILE)).map_err(|e| {
            Error::Precondition(format!(
                "another loam serve uses the data directory holding {}: {e}; stop it first",
                cfg.state_dir.display()
            ))
        })?;
        let mut pools = BTreeMap::new();
        let owners = crate::backend::device::DiskOwners::default();
        for spec in &cfg.pools {
            let pool = Pool::open(spec, cfg.host.clone(), &cfg.state_dir, &owners)?;
            pools.insert(pool.name.clone(), Arc::new(pool));
        }
        let notes = Notes::open(cfg.state_dir.join("mounts"))?;
        let mut pruned = 0;
        match cfg.host.mount_table() {
            Ok(table) => {
                pruned = notes.prune(&table);
                if pruned > 0 {
                    info!(pruned, "dropped notes of mounts that are gone");
                }
            }
            Err(e) => warn!(error = %e, "cannot read the mount table; mount notes not pruned"),
        }
        let engine = Engine {
            node_id: cfg.node_id,
            node_tag,
            topology,
            pools,
            default_pool: cfg.default_pool,
            max_volumes_per_node: cfg.max_volumes_per_node,
            locks: LockTable::default(),
            notes,
            host: cfg.host,
            repairs: std::sync::atomic::AtomicU64::new(pruned as u64),
            _lock: lock,
        };
        for pool in engine.pools.values() {
            if !pool.is_open() {
                let reason = pool.degraded().unwrap_or_default();
                warn!(pool = %pool.name, kind = %pool.kind(), path = %pool.root.display(), %reason,
                      "pool degraded: it offers no capacity, takes no volumes and refuses to delete its volumes");
                continue;
            }
            // A pool that opened loads its records even while something it needs is missing for now (a device
            // pool's discovery directory): its volumes stay known, and their disks held.
            if let Err(e) = engine.recover(pool) {
                // One pool that cannot be read must not stop the node.
                pool.fail(format!("pool {}: recovery failed: {e}", pool.name));
                warn!(pool = %pool.name, error = %e, "pool degraded: its records could not be recovered");
                continue;
            }
            if let Some(reason) = pool.degraded() {
                warn!(pool = %pool.name, kind = %pool.kind(), %reason,
                      "pool cannot take new volumes until this is fixed; its volumes are kept");
            }
        }
        // Volumes mounted across the restart may be written to now.
        for id in engine.notes.volumes() {
            if let Ok(vid) = VolumeId::parse(&id)
                && let Some(pool) = engine.pools.get(&vid.pool)
                && let Some(Entry::Ready(rec)) = pool.get(&id)
            {
                pool.backend.note_in_use(&rec.backing(&vid.file_stem()));
            }
        }
        Ok(engine)
    }

    /// Start-up reconciliation of one pool: half-made volumes are rolled back, half-deleted ones finished,
    /// unreadable records quarantined (that volume only) and backings without a record reported.
    fn recover(&self, pool: &Pool) -> Result<()> {
        let loaded = pool.store.load_all(&pool.name)?;
        // Backings accounted for by a record, good or not.
        let mut known = std::collections::HashSet::new();
        for (stem, reason) in loaded.corrupt {
            warn!(pool = %pool.name, record = %stem, %reason, "quarantining volume with an unusable record");
            let id = match uuid::Uuid::parse_str(&stem) {
                Ok(u) => VolumeId {
                    node_tag: self.node_tag.clone(),
                    pool: pool.name.clone(),
                    uuid: u,
                }
                .to_string(),
                Err(_) => format!("{}_{}_{stem}", self.node_tag, pool.name),
            };
            pool.quarantine(id, reason);
            known.insert(stem);
        }
        // Volumes that need no repair, checked many at a time once the loop is done.
        let mut ready: Vec<(String, VolumeRecord)> = Vec::new();
        for rec in loaded.records {
            let vid = rec.volume_id()?;
            match rec.state {
                VolumeState::Ready if pool.backend.interrupted_delete(&rec.backing(&vid.file_stem())) => {
                    info!(volume.id = %rec.id, "finishing an interrupted delete");
                    let stem = vid.file_stem();
                    let finished = pool
                        .backend
                        .destroy(&rec.backing(&stem))
                        .and_then(|()| pool.store.remove(&vid));
                    match finished {
                        Ok(()) => {
                            self.repairs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        Err(e) => {
                            warn!(volume.id = %rec.id, error = %e, "cannot finish deleting the volume; quarantined");
                            known.insert(stem);
                            pool.quarantine(
                                rec.id.clone(),
                                format!("an interrupted delete could not be finished: {e}"),
                            );
                        }
                    }
                }
                VolumeState::Ready => {
                    let stem = vid.file_stem();
                    known.insert(stem.clone());
                    ready.push((stem, rec));
                }
                VolumeState::Creating | VolumeState::Deleting => {
                    info!(volume.id = %rec.id, state = ?rec.state, "finishing an interrupted operation by removing the volume");
                    let stem = vid.file_stem();
                    let backing = rec.backing(&stem);
                    let removed = match rec.state {
                        VolumeState::Creating => pool.backend.abandon(&backing),
                        _ => pool.backend.destroy(&backing),
                    }
                    .and_then(|()| pool.store.remove(&vid));
                    if removed.is_ok() {
                        self.repairs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    if let Err(e) = removed {
                        // Held back, not fatal: one volume that cannot be cleaned up must not stop the node.
                        warn!(volume.id = %rec.id, error = %e, "cannot finish removing the volume; quarantined");
                        known.insert(vid.file_stem());
                        pool.quarantine(
                            rec.id.clone(),
                            format!("an interrupted {:?} could not be finished: {e}", rec.state),
                        );
                    }
                }
            }
        }
        for chunk in ready.chunks(START_CHECK_BATCH) {
            let refs: Vec<VolumeRef<'_>> = chunk.iter().map(|(stem, rec)| rec.backing(stem)).collect();
            for ((_, rec), problem) in chunk.iter().zip(pool.backend.check_all(&refs)) {
                if let Some(problem) = problem {
                    warn!(volume.id = %rec.id, pool = %pool.name, %problem, "volume is abnormal");
                }
            }
        }
        for (_, rec) in ready {
            pool.insert_loaded(rec);
        }
        for stem in pool.backend.reclaim(&known)? {
            warn!(pool = %pool.name, backing = %stem, "backing has no record; left in place for an operator");
        }
        let sizes = if pool.backend.enforces_size() {
            "sizes enforced"
        } else {
            "sizes accounted, not enforced"
        };
        info!(pool = %pool.name, kind = %pool.kind(), volumes = pool.len(), total_bytes = pool.total(),
              reserved_bytes = pool.reserved(), overcommit_ratio = pool.spec.overcommit_ratio(),
              uuid = pool.uuid.as_deref().unwrap_or(""), "pool ready: {sizes}");
        if pool.spec.overcommit_ratio() > 1.0 {
            warn!(pool = %pool.name, ratio = pool.spec.overcommit_ratio(),
                  "thin pool overcommits: volumes may promise more than its filesystem holds and fail to write when it fills");
        }
        Ok(())
    }

    /// How many repairs start-up reconciliation made.
    pub fn repairs(&self) -> u64 {
        self.repairs.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Looks at every device pool's discovery directory again now (SIGHUP).
    pub fn rediscover(&self) {
        for pool in self.pools.values() {
            pool.backend.rediscover();
        }
    }

    /// How every pool stands now.
    pub fn pool_status(&self) -> Vec<PoolStatus> {
        self.pools
            .values()
            .map(|p| PoolStatus {
                name: p.name.clone(),
                kind: p.kind().name(),
                volumes: p.len(),
                total_bytes: p.total(),
                reserved_bytes: p.reserved(),
                available_bytes: p.offer(&[]).available_bytes,
                size_enforced: p.backend.enforces_size(),
                used_bytes: p.used(),
                quarantined: p.quarantined(),
                loop_devices: match p.kind() {
                    crate::spec::PoolKind::Image => self
                        .host
                        .loop_count_under(&crate::backend::volumes_dir(&p.root))
                        .unwrap_or(0),
                    _ => 0,
                },
                degraded: p.degraded(),
                inventory: p.inventory(),
            })
            .collect()
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    pub fn topology(&self) -> &Segment {
        &self.topology
    }

    pub fn max_volumes_per_node(&self) -> u64 {
        self.max_volumes_per_node
    }

    pub fn pools(&self) -> impl Iterator<Item = &Arc<Pool>> {
        self.pools.values()
    }

    pub fn pool(&self, name: &str) -> Option<&Arc<Pool>> {
        self.pools.get(name)
    }

    /// A segment is served by this node when every key in it is one of ours with our value.
    pub fn segment_is_local(&self, seg: &Segment) -> bool {
        seg.iter().all(|(k, v)| self.topology.get(k) == Some(v))
    }

    /// Picks the pool named by the parameters, refusing keys loam does not know.
    pub fn pool_for(&self, params: &BTreeMap<String, String>) -> Result<&Arc<Pool>> {
        for key in params.keys() {
            if !KNOWN_PARAMETERS.contains(&key.as_str()) && !key.starts_with(RESERVED_PREFIX) {
                return Err(Error::invalid(
                    "parameters",
                    format!(
                        "unknown parameter {key:?}; loam knows {} (and ignores csi.storage.k8s.io/* keys)",
                        KNOWN_PARAMETERS.join(", ")
                    ),
                ));
            }
        }
        let name = params.get(PARAM_POOL).unwrap_or(&self.default_pool);
        self.pools.get(name).ok_or_else(|| {
            Error::invalid(
                "parameters",
                format!(
                    "pool {name:?} does not exist on node {}; pools here: {}",
                    self.node_id,
                    self.pools.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            )
        })
    }

    /// Parameters as they are stored and compared: loam's own keys only.
    fn own_parameters(params: &BTreeMap<String, String>) -> BTreeMap<String, String> {
        params
            .iter()
            .filter(|(k, _)| !k.starts_with(RESERVED_PREFIX))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    pub(crate) fn lock(&self, vid: &VolumeId) -> Result<OpGuard> {
        self.locks.try_lock(&vid.uuid.simple().to_string())
    }

    /// Finds a volume by ID. Malformed IDs and unknown ones are NOT_FOUND; a well-formed ID of another node that
    /// is not in our records is refused by name.
    pub(crate) fn lookup(&self, id: &str) -> Result<(VolumeId, Arc<Pool>, Arc<VolumeRecord>)> {
        let not_found = || Error::VolumeNotFound {
            id: id.to_owned(),
            node: self.node_id.clone(),
        };
        let vid = VolumeId::parse(id).map_err(|_| not_found())?;
        if let Some(pool) = self.pools.get(&vid.pool) {
            if vid.node_tag == self.node_tag && !pool.is_open() {
                return Err(Error::PoolUnusable {
                    pool: pool.name.clone(),
                    reason: pool.degraded().unwrap_or_default(),
                });
            }
            match pool.get(id) {
                Some(Entry::Ready(rec)) => return Ok((vid, pool.clone(), rec)),
                Some(Entry::Quarantined(reason)) => {
                    return Err(Error::Quarantined {
                        id: id.to_owned(),
                        reason,
                    });
                }
                None => {}
            }
        }
        if vid.node_tag != self.node_tag {
            return Err(Error::ForeignVolume {
                id: id.to_owned(),
                owner: vid.node_tag,
                node: self.node_id.clone(),
            });
        }
        Err(not_found())
    }

    fn to_volume(&self, pool: &Pool, rec: &VolumeRecord) -> Volume {
        let abnormal = pool.degraded().or_else(|| match rec.volume_id() {
            Ok(vid) => pool.backend.check(&rec.backing(&vid.file_stem())),
            Err(e) => Some(e.to_string()),
        });
        self.volume_of(rec, abnormal)
    }

    fn volume_of(&self, rec: &VolumeRecord, abnormal: Option<String>) -> Volume {
        Volume {
            id: rec.id.clone(),
            name: rec.name.clone(),
            pool: rec.pool.clone(),
            capacity_bytes: rec.capacity_bytes,
            context: BTreeMap::from([(CONTEXT_POOL.to_owned(), rec.pool.clone())]),
            topology: self.topology.clone(),
            abnormal,
        }
    }

    pub fn create_volume(&self, req: &CreateRequest) -> Result<Volume> {
        if req.name.is_empty() {
            return Err(Error::invalid("name", "a volume name is required"));
        }
        if req.name.len() > id::MAX_CSI_STRING {
            return Err(Error::invalid(
                "name",
                format!("{} bytes is longer than the 128 allowed", req.name.len()),
            ));
        }
        if req.capabilities.is_empty() {
            return Err(Error::invalid(
                "volume_capabilities",
                "at least one capability is required",
            ));
        }
        let pool = self.pool_for(&req.parameters)?.clone();
        for cap in &req.capabilities {
            if let Some(r) = pool.backend.refusal(cap) {
                return Err(Error::invalid(
                    "volume_capabilities",
                    format!("pool {} (kind {}): {}", pool.name, pool.kind(), r.message()),
                ));
            }
        }
        let block = req.capabilities.iter().any(|c| c.access == AccessType::Block);
        if block && req.capabilities.iter().any(|c| c.access != AccessType::Block) {
            return Err(Error::invalid(
                "volume_capabilities",
                "a volume is either a block device or a filesystem: ask for block or for mount access, not both",
            ));
        }
        let mut fs_types: Vec<&str> = req.capabilities.iter().filter_map(capability::fs_type).collect();
        fs_types.dedup();
        if fs_types.len() > 1 {
            return Err(Error::invalid(
                "volume_capabilities",
                format!(
                    "the capabilities ask for different filesystems: {}",
                    fs_types.join(", ")
                ),
            ));
        }
        let asked_fs = fs_types.first().map(|s| (*s).to_owned());
        let fs_type = asked_fs.clone().or_else(|| {
            (!block)
                .then(|| pool.spec.default_fs_type().map(str::to_owned))
                .flatten()
        });
        let vid = VolumeId::new(&self.node_tag, &pool.name, &req.name);
        let _guard = self.lock(&vid)?;
        let params = Self::own_parameters(&req.parameters);

        // Same name seen before (in any pool): answer the same volume, or refuse if the request differs.
        for other in self.pools.values() {
            let other_id = VolumeId {
                pool: other.name.clone(),
                ..vid.clone()
            }
            .to_string();
            match other.get(&other_id) {
                None => continue,
                Some(Entry::Quarantined(reason)) => {
                    return Err(Error::Quarantined { id: other_id, reason });
                }
                Some(Entry::Ready(rec)) => {
                    let conflict = |reason: String| Error::NameConflict {
                        name: req.name.clone(),
                        id: rec.id.clone(),
                        reason,
                    };
                    if rec.pool != pool.name {
                        return Err(conflict(format!(
                            "which is in pool {}, not {}",
                            rec.pool, pool.name
                        )));
                    }
                    if !capacity::size_compatible(rec.capacity_bytes, req.required_bytes, req.limit_bytes) {
                        return Err(conflict(format!(
                            "which has {} bytes, outside the requested range (required {}, limit {})",
                            rec.capacity_bytes, req.required_bytes, req.limit_bytes
                        )));
                    }
                    if rec.block != block {
                        return Err(conflict(format!(
                            "which was made for {} access",
                            if rec.block { "block" } else { "mount" }
                        )));
                    }
                    if asked_fs.is_some() && rec.fs_type.is_some() && rec.fs_type != asked_fs {
                        return Err(conflict(format!(
                            "which was made with fs_type {}",
                            rec.fs_type.as_deref().unwrap_or_default()
                        )));
                    }
                    if rec.parameters != params {
                        return Err(conflict(format!(
                            "which was made with parameters {:?}",
                            rec.parameters
                        )));
                    }
                    if !req.requisite.is_empty() && !req.requisite.iter().any(|s| self.segment_is_local(s)) {
                        return Err(conflict(
                            "which is on this node, outside the requested topology".into(),
                        ));
                    }
                    return Ok(self.to_volume(&pool, &rec));
                }
            }
        }

        if !req.requisite.is_empty() && !req.requisite.iter().any(|s| self.segment_is_local(s)) {
            return Err(Error::Exhausted(format!(
                "node {} ({:?}) is not in the requisite topology {:?}",
                self.node_id, self.topology, req.requisite
            )));
        }
        // A device pool gives a whole disk, of the size it has; other kinds give bytes.
        let (size, disk, fs_type) = if pool.backend.entries(&[]).is_some() {
            let offer = pool.take_disk(req.required_bytes, req.limit_bytes, &req.capabilities)?;
            let fs = if block { None } else { offer.fs_type.clone() };
            (offer.size, Some(offer.claim), fs)
        } else {
            let size =
                capacity::choose_size(req.required_bytes, req.limit_bytes, pool.backend.granularity())?;
            pool.reserve(size)?;
            (size, None, fs_type)
        };
        let give_back = || match &disk {
            Some(d) => pool.release_disk(d, size),
            None => pool.release(size),
        };
        let project_id = match pool.backend.project_ids() {
            Some(range) => match pool.allocate_project(range) {
                Ok(id) => Some(id),
                Err(e) => {
                    give_back();
                    return Err(e);
                }
            },
            None => None,
        };
        let mut rec = VolumeRecord {
            version: RECORD_VERSION,
            id: vid.to_string(),
            name: req.name.clone(),
            pool: pool.name.clone(),
            node: self.node_id.clone(),
            capacity_bytes: size,
            block,
            fs_type: fs_type.clone(),
            project_id,
            device: disk.clone(),
            parameters: params,
            state: VolumeState::Creating,
            created_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        };
        let stem = vid.file_stem();
        let intent = pool.backend.intent_records();
        let made = (|| {
            // For a device pool this names the disk before anything else happens: a crash from here on finds it
            // held by this record, never free for a second volume. Kinds whose half-made backings start-up
            // recognises go without.
            if intent {
                pool.store.save(&rec)?;
            }
            pool.backend.provision(&ProvisionSpec {
                stem: &stem,
                capacity_bytes: size,
                block,
                fs_type: fs_type.as_deref(),
                project_id,
                device: disk.as_ref(),
            })?;
            rec.state = VolumeState::Ready;
            pool.store.save(&rec)
        })();
        if let Err(e) = made {
            // Undo in reverse; a failure here is logged and left to start-up recovery (the record says Creating).
            if let Err(u) = pool
                .backend
                .abandon(&rec.backing(&stem))
                .and_then(|()| pool.store.remove(&vid))
            {
                warn!(volume.id = %rec.id, error = %u, "could not undo a failed create; start-up will retry");
            }
            give_back();
            if let Some(p) = project_id {
                pool.release_project(p);
            }
            return Err(e);
        }
        pool.insert_reserved(rec.clone());
        tracing::debug!(volume.id = %rec.id, volume.name = %rec.name, pool = %pool.name, bytes = size, "volume created");
        Ok(self.to_volume(&pool, &rec))
    }

    pub fn delete_volume(&self, id: &str) -> Result<()> {
        let (vid, pool, mut rec) = match self.lookup(id) {
            Ok(found) => found,
            Err(Error::VolumeNotFound { .. }) => return Ok(()),
            Err(e) => return Err(e),
        };
        let _guard = self.lock(&vid)?;
        // Re-read under the lock: a concurrent delete may have finished.
        let Some(Entry::Ready(current)) = pool.get(id) else {
            return Ok(());
        };
        rec.clone_from(&current);
        let mounts = self.mounts_of(&pool, &rec)?;
        if !mounts.is_empty() {
            return Err(Error::Precondition(format!(
                "volume {id} is still staged or published on node {} at {}; unpublish and unstage it first",
                self.node_id,
                mounts
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        if pool.backend.intent_records() {
            Arc::make_mut(&mut rec).state = VolumeState::Deleting;
            pool.store.save(&rec)?;
        }
        pool.backend.destroy(&rec.backing(&vid.file_stem()))?;
        pool.store.remove(&vid)?;
        pool.remove(id);
        tracing::debug!(volume.id = %id, pool = %pool.name, bytes = rec.capacity_bytes, "volume deleted");
        Ok(())
    }

    /// A volume by ID. One in a degraded pool is reported with what its ID tells (size unknown: 0) and the
    /// pool's reason as an abnormal condition.
    pub fn get_volume(&self, id: &str) -> Result<Volume> {
        match self.lookup(id) {
            Ok((_, pool, rec)) => Ok(self.to_volume(&pool, &rec)),
            Err(Error::PoolUnusable { pool, reason }) => Ok(Volume {
                id: id.to_owned(),
                name: String::new(),
                pool: pool.clone(),
                capacity_bytes: 0,
                context: BTreeMap::from([(CONTEXT_POOL.to_owned(), pool)]),
                topology: self.topology.clone(),
                abnormal: Some(format!("{reason}; the volume's data cannot be reached")),
            }),
            Err(e) => Err(e),
        }
    }

    /// Why `cap` cannot be used with the volume of `rec` in `pool`, if it cannot.
    pub(crate) fn refusal(pool: &Pool, rec: &VolumeRecord, cap: &Capability) -> Option<Refusal> {
        if let Some(r) = pool.backend.refusal(cap) {
            return Some(r);
        }
        if let Ok(vid) = rec.volume_id()
            && let Some(r) = pool.backend.volume_refusal(&rec.backing(&vid.file_stem()), cap)
        {
            return Some(r);
        }
        let is_block = cap.access == AccessType::Block;
        if rec.block && !is_block {
            return Some(Refusal::Unsupported(
                "the volume was created for block access; it holds no filesystem to mount".into(),
            ));
        }
        if !rec.block && is_block {
            return Some(Refusal::Unsupported(
                "the volume was created for mount access; block access needs a volume created for it".into(),
            ));
        }
        match (capability::fs_type(cap), rec.fs_type.as_deref()) {
            (Some(want), Some(made)) if want != made => Some(Refusal::Unsupported(format!(
                "the volume was created with fs_type {made}, not {want}"
            ))),
            _ => None,
        }
    }

    /// `Ok(None)` when every capability is supported, else the reason one is not.
    pub fn validate_capabilities(
        &self,
        id: &str,
        caps: &[Capability],
        params: &BTreeMap<String, String>,
    ) -> Result<Option<String>> {
        let (_, pool, rec) = self.lookup(id)?;
        for cap in caps {
            if let Some(r) = Self::refusal(&pool, &rec, cap) {
                return Ok(Some(r.message().to_owned()));
            }
        }
        if !params.is_empty() && Self::own_parameters(params) != rec.parameters {
            return Ok(Some(format!(
                "volume was made with parameters {:?}",
                rec.parameters
            )));
        }
        Ok(None)
    }

    /// One page of volumes in ID order. The token is the ID to start at, so pages stay correct while volumes come
    /// and go; a token that is not a volume ID is refused (ABORTED, the caller restarts).
    pub fn list_volumes(&self, start: &str, max_entries: usize) -> Result<(Vec<Volume>, Option<String>)> {
        if !start.is_empty() && VolumeId::parse(start).is_err() {
            return Err(Error::BadToken(start.to_owned()));
        }
        // One page and the next token from each pool's ordered records, merged: never every volume.
        let want = if max_entries == 0 {
            usize::MAX
        } else {
            max_entries + 1
        };
        let mut recs: Vec<(Arc<VolumeRecord>, &Arc<Pool>)> = self
            .pools
            .values()
            .flat_map(|p| p.page_from(start, want).into_iter().map(move |r| (r, p)))
            .collect();
        recs.sort_by(|a, b| a.0.id.cmp(&b.0.id));
        let next = match recs.get(max_entries) {
            Some((rec, _)) if max_entries != 0 => Some(rec.id.clone()),
            _ => None,
        };
        recs.truncate(if max_entries == 0 { usize::MAX } else { max_entries });
        // Each pool's state, and its volumes' checks, once per page.
        let mut abnormal: Vec<Option<String>> = vec![None; recs.len()];
        for pool in self.pools.values() {
            let mine: Vec<usize> = (0..recs.len())
                .filter(|&i| Arc::ptr_eq(recs[i].1, pool))
                .collect();
            if mine.is_empty() {
                continue;
            }
            if let Some(why) = pool.degraded() {
                mine.iter().for_each(|&i| abnormal[i] = Some(why.clone()));
                continue;
            }
            let stems: Vec<Result<String>> = mine
                .iter()
                .map(|&i| recs[i].0.volume_id().map(|v| v.file_stem()))
                .collect();
            let refs: Vec<VolumeRef<'_>> = mine
                .iter()
                .zip(&stems)
                .filter_map(|(&i, stem)| stem.as_ref().ok().map(|s| recs[i].0.backing(s)))
                .collect();
            let mut checked = pool.backend.check_many(&refs).into_iter();
            for (&i, stem) in mine.iter().zip(&stems) {
                abnormal[i] = match stem {
                    Ok(_) => checked.next().flatten(),
                    Err(e) => Some(e.to_string()),
                };
            }
        }
        let out = recs
            .iter()
            .zip(abnormal)
            .map(|((rec, _), abnormal)| self.volume_of(rec, abnormal))
            .collect();
        Ok((out, next))
    }

    /// What can still be allocated for a request with these parameters, capabilities and topology.
    pub fn capacity(
        &self,
        params: &BTreeMap<String, String>,
        caps: &[Capability],
        topology: Option<&Segment>,
    ) -> Result<CapacityReport> {
        let pool = self.pool_for(params)?;
        let none = CapacityReport {
            available_bytes: 0,
            maximum_volume_bytes: 0,
        };
        if topology.is_some_and(|seg| !self.segment_is_local(seg)) {
            return Ok(none);
        }
        if caps.iter().any(|c| pool.backend.refusal(c).is_some()) {
            return Ok(none);
        }
        let report = pool.offer(caps);
        if pool.backend.enforces_size() {
            tracing::debug!(pool = %pool.name, available = report.available_bytes, "capacity");
        } else {
            tracing::debug!(pool = %pool.name, available = report.available_bytes,
                            "capacity: sizes accounted, not enforced");
        }
        Ok(report)
    }
}

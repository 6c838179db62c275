//! A pool: one place on this node's disks where volumes live, with its backend, its records and its capacity
//! accounting. The in-memory state is guarded by one short-held mutex per pool and never held across I/O.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Mutex,
};

use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::{
    backend::{Backend, dir::DirBackend},
    capacity,
    error::{Error, IoContext, Result},
    id::is_pool_name,
    record::{RecordStore, VolumeRecord},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolKind {
    Dir,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    pub name: String,
    pub kind: PoolKind,
    /// Directory holding the pool (`volumes/` and `records/` are made inside it).
    pub path: PathBuf,
    /// Bytes the pool may hand out; default: the size of the filesystem holding it.
    #[serde(default)]
    pub capacity_bytes: Option<u64>,
}

/// What the pool knows of a volume.
#[derive(Debug, Clone)]
pub enum Entry {
    Ready(VolumeRecord),
    /// Its record could not be used; operations on it are refused until an operator repairs it.
    Quarantined(String),
}

#[derive(Debug, Default)]
struct State {
    reserved: u64,
    /// By volume ID, so listing is sorted.
    volumes: BTreeMap<String, Entry>,
}

#[derive(Debug)]
pub struct Pool {
    pub name: String,
    pub kind: PoolKind,
    pub root: PathBuf,
    pub total_bytes: u64,
    pub backend: Box<dyn Backend>,
    pub store: RecordStore,
    state: Mutex<State>,
}

impl Pool {
    /// Creates the pool's directories if needed and builds its backend. Records are loaded by the engine.
    pub fn open(cfg: &PoolConfig) -> Result<Pool> {
        if !is_pool_name(&cfg.name) {
            return Err(Error::invalid(
                "pool name",
                format!(
                    "{:?}: use 1-31 of a-z, 0-9 and '-', starting and ending with a letter or digit",
                    cfg.name
                ),
            ));
        }
        if !cfg.path.is_absolute() {
            return Err(Error::invalid(
                "pool path",
                format!("{}: pool paths must be absolute", cfg.path.display()),
            ));
        }
        std::fs::create_dir_all(&cfg.path)
            .ctx(|| format!("creating pool directory {}", cfg.path.display()))?;
        // Canonical, because mount-table lookups compare paths literally.
        let root = cfg
            .path
            .canonicalize()
            .ctx(|| format!("resolving {}", cfg.path.display()))?;
        let volumes = private_subdir(&root, "volumes")?;
        let records = private_subdir(&root, "records")?;
        let backend: Box<dyn Backend> = match cfg.kind {
            PoolKind::Dir => Box::new(DirBackend::new(volumes)),
        };
        let total_bytes = match cfg.capacity_bytes {
            Some(b) => b,
            None => {
                loam_sys::statfs::statfs(&root)
                    .ctx(|| format!("measuring {}", root.display()))?
                    .total_bytes
            }
        };
        Ok(Pool {
            name: cfg.name.clone(),
            kind: cfg.kind,
            root,
            total_bytes,
            backend,
            store: RecordStore::new(records),
            state: Mutex::new(State::default()),
        })
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

    pub fn len(&self) -> usize {
        self.state().volumes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn reserved(&self) -> u64 {
        self.state().reserved
    }

    /// Free bytes on the pool's filesystem now; 0 when it cannot be read, so a broken disk is never offered.
    fn fs_free(&self) -> u64 {
        match loam_sys::statfs::statfs(&self.root) {
            Ok(fs) => fs.available_bytes,
            Err(e) => {
                warn!(pool = %self.name, error = %e, "cannot read the pool's filesystem; offering no space");
                0
            }
        }
    }

    /// Bytes a new volume may take now (see `capacity::available`).
    pub fn available(&self) -> u64 {
        let fs_free = self.fs_free();
        capacity::available(self.total_bytes, self.reserved(), fs_free)
    }

    /// Takes `size` bytes from the pool, or says why it cannot. Check and update are one step, so two
    /// concurrent creates can never both take the last unreserved bytes.
    pub fn reserve(&self, size: u64) -> Result<()> {
        let fs_free = self.fs_free();
        let mut st = self.state();
        capacity::check_fits(&self.name, size, self.total_bytes, st.reserved, fs_free)?;
        st.reserved += size;
        Ok(())
    }

    pub fn release(&self, size: u64) {
        let mut st = self.state();
        st.reserved = st.reserved.saturating_sub(size);
    }

    /// Adds a record whose bytes were already reserved.
    pub fn insert_reserved(&self, rec: VolumeRecord) {
        self.state().volumes.insert(rec.id.clone(), Entry::Ready(rec));
    }

    /// Adds a record found at start-up, taking its bytes even past the total: what exists is counted.
    pub fn insert_loaded(&self, rec: VolumeRecord) {
        let mut st = self.state();
        st.reserved = st.reserved.saturating_add(rec.capacity_bytes);
        st.volumes.insert(rec.id.clone(), Entry::Ready(rec));
    }

    pub fn quarantine(&self, id: String, reason: String) {
        self.state().volumes.insert(id, Entry::Quarantined(reason));
    }

    /// Forgets a volume and gives its bytes back.
    pub fn remove(&self, id: &str) {
        let mut st = self.state();
        if let Some(Entry::Ready(rec)) = st.volumes.remove(id) {
            st.reserved = st.reserved.saturating_sub(rec.capacity_bytes);
        }
    }

    pub fn data_path(&self, rec: &VolumeRecord) -> Result<PathBuf> {
        Ok(self.backend.data_path(&rec.volume_id()?.file_stem()))
    }

    pub fn health(&self) -> Option<String> {
        if !self.store.dir().is_dir() {
            return Some(format!("{} is missing", self.store.dir().display()));
        }
        self.backend.health()
    }
}

/// Makes `root/name` as a directory only root can enter, refusing a symlink in its place.
fn private_subdir(root: &Path, name: &str) -> Result<PathBuf> {
    loam_sys::fs::create_dir_checked(root, name, 0o700)
        .ctx(|| format!("creating {}", root.join(name).display()))?;
    Ok(root.join(name))
}

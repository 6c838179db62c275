//! `dir` pools: a volume is a directory in the pool. Sizes are accounted by the engine, not enforced here (the
//! quota-aware dir pool enforces them where the filesystem has project quota).

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::Mutex,
    time::{Duration, Instant},
};

use super::{Attachment, Backend, ProvisionSpec, Usage};
use crate::{
    capability::{self, Refusal},
    error::{IoContext, Result},
    spec::PoolKind,
    types::{AccessType, Capability},
};

/// Volume directories are world-writable like a fresh disk, so pods of any UID can use them; kubelet applies
/// fsGroup on top (CSIDriver fsGroupPolicy: File). The parent directory is private to root.
pub(crate) const VOLUME_DIR_MODE: u32 = 0o777;

/// How long a measured usage counts for capacity: measuring walks the volume's tree.
const WRITTEN_TTL: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct DirBackend {
    volumes: PathBuf,
    /// Bytes each volume had written when last measured, and when.
    written: Mutex<HashMap<String, (Instant, u64)>>,
}

impl DirBackend {
    /// `volumes` is the pool's `volumes/` directory.
    pub fn new(volumes: PathBuf) -> Self {
        DirBackend {
            volumes,
            written: Mutex::default(),
        }
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Instant, u64)>> {
        self.written.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn path(&self, stem: &str) -> PathBuf {
        self.volumes.join(stem)
    }
}

impl Backend for DirBackend {
    fn kind(&self) -> PoolKind {
        PoolKind::Dir
    }

    fn enforces_size(&self) -> bool {
        false
    }

    fn refusal(&self, cap: &Capability) -> Option<Refusal> {
        directory_refusal(cap, "dir")
    }

    fn provision(&self, spec: &ProvisionSpec<'_>) -> Result<()> {
        loam_sys::fs::create_dir_checked(&self.volumes, spec.stem, VOLUME_DIR_MODE)
            .ctx(|| format!("creating directory {}", self.path(spec.stem).display()))?;
        Ok(())
    }

    fn destroy(&self, stem: &str) -> Result<()> {
        self.cache().remove(stem);
        loam_sys::fs::remove_tree_beneath(&self.volumes, stem)
            .ctx(|| format!("removing directory {}", self.path(stem).display()))
    }

    fn check(&self, stem: &str, _capacity_bytes: u64) -> Option<String> {
        let path = self.path(stem);
        (!loam_sys::fs::is_dir_no_follow(&path))
            .then(|| format!("the volume's directory {} is missing", path.display()))
    }

    fn usage(&self, stem: &str) -> Result<Usage> {
        let path = self.path(stem);
        let u = loam_sys::fs::tree_usage(&path).ctx(|| format!("measuring {}", path.display()))?;
        Ok(Usage {
            bytes: u.bytes,
            inodes: u.inodes,
        })
    }

    fn written_bytes(&self, stem: &str, capacity_bytes: u64) -> u64 {
        if let Some((at, bytes)) = self.cache().get(stem)
            && at.elapsed() < WRITTEN_TTL
        {
            return (*bytes).min(capacity_bytes);
        }
        // Unmeasurable counts as nothing written: the whole size stays held back.
        let bytes = self.usage(stem).map_or(0, |u| u.bytes);
        self.cache().insert(stem.to_owned(), (Instant::now(), bytes));
        bytes.min(capacity_bytes)
    }

    fn backings(&self) -> Result<Vec<String>> {
        list_names(&self.volumes, "")
    }

    fn health(&self) -> Option<String> {
        writable_dir_problem(&self.volumes)
    }

    fn attach(&self, stem: &str) -> Result<Attachment> {
        Ok(Attachment::Directory(self.path(stem)))
    }

    fn attached(&self, stem: &str) -> Result<Option<Attachment>> {
        self.attach(stem).map(Some)
    }

    fn detach(&self, _stem: &str) -> Result<()> {
        Ok(())
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
pub(crate) fn list_names(dir: &std::path::Path, suffix: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).ctx(|| format!("reading {}", dir.display()))? {
        let e = e.ctx(|| format!("reading {}", dir.display()))?;
        if let Some(stem) = e.file_name().to_str().and_then(|n| n.strip_suffix(suffix)) {
            out.push(stem.to_owned());
        }
    }
    Ok(out)
}

/// Why `dir` cannot hold new volumes: not a directory, or not writable.
pub(crate) fn writable_dir_problem(dir: &std::path::Path) -> Option<String> {
    if !loam_sys::fs::is_dir_no_follow(dir) {
        return Some(format!("{} is not a directory", dir.display()));
    }
    rustix::fs::access(dir, rustix::fs::Access::WRITE_OK | rustix::fs::Access::EXEC_OK)
        .err()
        .map(|e| format!("{} is not writable: {e}", dir.display()))
}

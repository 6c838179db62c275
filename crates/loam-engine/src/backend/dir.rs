//! `dir` pools: a volume is a directory in the pool. Sizes are accounted by the engine; on filesystems with
//! project quota they are also enforced (not on this layer yet: accounted only, and said so at start-up).

use std::path::PathBuf;

use super::{Backend, Usage};
use crate::{
    error::{IoContext, Result},
    types::{AccessType, Capability},
};

/// Volume directories are world-writable like a fresh disk, so pods of any UID can use them; kubelet applies
/// fsGroup on top (CSIDriver fsGroupPolicy: File). The parent directory is private to root.
const VOLUME_DIR_MODE: u32 = 0o777;

#[derive(Debug)]
pub struct DirBackend {
    volumes: PathBuf,
}

impl DirBackend {
    /// `volumes` is the pool's `volumes/` directory, which must exist.
    pub fn new(volumes: PathBuf) -> Self {
        DirBackend { volumes }
    }
}

/// Capability checks shared by every kind that serves filesystem volumes as plain directories.
pub fn directory_capability_problem(cap: &Capability) -> Option<String> {
    match &cap.access {
        AccessType::Block => Some(
            "block access is not possible on a dir pool; use a pool with block support (kind: image)".into(),
        ),
        AccessType::Mount { fs_type, .. } if !fs_type.is_empty() => Some(format!(
            "fs_type {fs_type:?} cannot be applied: dir pool volumes are directories on the pool's filesystem; \
             leave fsType empty or use an image pool"
        )),
        AccessType::Mount { .. } if !cap.mode.is_single_node() => Some(format!(
            "access mode {:?} needs several nodes, but loam volumes are local to one node",
            cap.mode
        )),
        AccessType::Mount { .. } => None,
    }
}

impl Backend for DirBackend {
    fn kind(&self) -> &'static str {
        "dir"
    }

    fn unsupported(&self, cap: &Capability) -> Option<String> {
        // Reader-only modes are served too: their bind mounts are made read-only.
        directory_capability_problem(cap)
    }

    fn provision(&self, stem: &str, _capacity_bytes: u64) -> Result<()> {
        loam_sys::fs::create_dir_checked(&self.volumes, stem, VOLUME_DIR_MODE)
            .ctx(|| format!("creating directory {}", self.volumes.join(stem).display()))?;
        Ok(())
    }

    fn destroy(&self, stem: &str) -> Result<()> {
        loam_sys::fs::remove_tree_beneath(&self.volumes, stem)
            .ctx(|| format!("removing directory {}", self.volumes.join(stem).display()))
    }

    fn data_path(&self, stem: &str) -> PathBuf {
        self.volumes.join(stem)
    }

    fn exists(&self, stem: &str) -> bool {
        loam_sys::fs::is_dir_no_follow(&self.volumes.join(stem))
    }

    fn usage(&self, stem: &str) -> Result<Usage> {
        let path = self.volumes.join(stem);
        let u = loam_sys::fs::tree_usage(&path).ctx(|| format!("measuring {}", path.display()))?;
        Ok(Usage {
            bytes: u.bytes,
            inodes: u.inodes,
        })
    }

    fn backings(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(&self.volumes).ctx(|| format!("reading {}", self.volumes.display()))? {
            let e = e.ctx(|| format!("reading {}", self.volumes.display()))?;
            if let Some(name) = e.file_name().to_str() {
                out.push(name.to_owned());
            }
        }
        Ok(out)
    }

    fn health(&self) -> Option<String> {
        if !loam_sys::fs::is_dir_no_follow(&self.volumes) {
            return Some(format!("{} is not a directory", self.volumes.display()));
        }
        rustix::fs::access(
            &self.volumes,
            rustix::fs::Access::WRITE_OK | rustix::fs::Access::EXEC_OK,
        )
        .err()
        .map(|e| format!("{} is not writable: {e}", self.volumes.display()))
    }
}

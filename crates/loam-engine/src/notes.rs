//! Notes on the mounts loam made at staging and target paths: the capability each was asked for. The mount table
//! says whether a path shows a volume; a note says how it was asked for, so a repeat with other arguments is
//! refused (ALREADY_EXISTS, as CSI asks) instead of being accepted because the mount looks the same. Notes are
//! hints: where one is missing (lost, or the mount predates it) the mount table alone decides.
//!
//! They are written atomically but never flushed: a restarted process reads them from the page cache, and after a
//! power loss the mounts they describe are gone too (start-up drops notes of paths that are not mounted).

use std::path::{Path, PathBuf};

use loam_sys::mountinfo::MountTable;
use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::{
    error::{IoContext, Result},
    id::sha256_hex,
    types::Capability,
};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountNote {
    pub volume_id: String,
    pub path: PathBuf,
    pub capability: Capability,
    pub read_only: bool,
}

#[derive(Debug)]
pub struct Notes {
    dir: PathBuf,
}

impl Notes {
    /// Opens (creating if needed) the notes directory.
    pub fn open(dir: PathBuf) -> Result<Notes> {
        std::fs::create_dir_all(&dir).ctx(|| format!("creating {}", dir.display()))?;
        Ok(Notes { dir })
    }

    /// Paths are hashed into file names, so no request string ever becomes a path here.
    fn file_name(path: &Path) -> String {
        format!("{}.json", sha256_hex(path.as_os_str().as_encoded_bytes()))
    }

    pub fn get(&self, path: &Path) -> Option<MountNote> {
        let data = std::fs::read(self.dir.join(Self::file_name(path))).ok()?;
        let note: MountNote = serde_json::from_slice(&data).ok()?;
        (note.path == path).then_some(note)
    }

    /// Records how `note.path` was mounted. A note that cannot be written is logged, not fatal: the mount is made
    /// and the mount table still decides repeats.
    pub fn put(&self, note: &MountNote) {
        let written = serde_json::to_vec(note)
            .map_err(std::io::Error::other)
            .and_then(|data| loam_sys::fs::write_replace(&self.dir, &Self::file_name(&note.path), &data));
        if let Err(e) = written {
            warn!(path = %note.path.display(), error = %e, "could not write a mount note");
        }
    }

    pub fn remove(&self, path: &Path) {
        let removed = match std::fs::remove_file(self.dir.join(Self::file_name(path))) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            other => other,
        };
        if let Err(e) = removed {
            warn!(path = %path.display(), error = %e, "could not remove a mount note");
        }
    }

    /// Drops notes whose path is no longer a mount point (after a reboot, or a manual unmount).
    pub fn prune(&self, table: &MountTable) -> Result<usize> {
        let mut pruned = 0;
        for entry in std::fs::read_dir(&self.dir).ctx(|| format!("reading {}", self.dir.display()))? {
            let entry = entry.ctx(|| format!("reading {}", self.dir.display()))?;
            let keep = std::fs::read(entry.path())
                .ok()
                .and_then(|d| serde_json::from_slice::<MountNote>(&d).ok())
                .is_some_and(|n| table.is_mount_point(&n.path));
            if !keep && let Some(name) = entry.file_name().to_str() {
                loam_sys::fs::remove_file_durable(&self.dir, name)
                    .ctx(|| format!("removing {}", entry.path().display()))?;
                pruned += 1;
            }
        }
        Ok(pruned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{AccessMode, AccessType};

    fn note(path: &str, mode: AccessMode) -> MountNote {
        MountNote {
            volume_id: "n_default_00000000000000000000000000000000".into(),
            path: path.into(),
            capability: Capability {
                access: AccessType::Mount {
                    fs_type: String::new(),
                    mount_flags: vec![],
                },
                mode,
            },
            read_only: false,
        }
    }

    #[test]
    fn put_get_remove_prune() {
        let d = tempfile::tempdir().unwrap();
        let notes = Notes::open(d.path().join("notes")).unwrap();
        let a = note("/var/lib/kubelet/pods/x/mount", AccessMode::SingleNodeWriter);
        assert_eq!(notes.get(&a.path), None);
        notes.put(&a);
        assert_eq!(notes.get(&a.path), Some(a.clone()));
        notes.remove(&a.path);
        assert_eq!(notes.get(&a.path), None);
        // "/" is always a mount point; the other path is not.
        let root = note("/", AccessMode::SingleNodeWriter);
        notes.put(&root);
        notes.put(&a);
        let table = MountTable::read_self().unwrap();
        assert_eq!(notes.prune(&table).unwrap(), 1);
        assert_eq!(notes.get(&root.path), Some(root));
        assert_eq!(notes.get(&a.path), None);
    }
}

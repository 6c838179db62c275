//! Node-side operations: stage, publish, unpublish, unstage and stats. Every decision comes from the live mount
//! table, not from remembered state, so repeats add no mount and a restart or reboot loses nothing.

use std::path::{Path, PathBuf};

use loam_sys::mountinfo::{MountSource, MountTable};
use tracing::info;

use crate::{
    engine::Engine,
    error::{Error, IoContext, Result},
    notes::MountNote,
    pool::Pool,
    record::VolumeRecord,
    types::{Capability, PublishRequest, StageRequest, VolumeStats},
};

/// Mode of a publish target directory we create; the bind mount on top decides what pods see.
const TARGET_DIR_MODE: u32 = 0o750;

fn mount_table() -> Result<MountTable> {
    MountTable::read_self().ctx(|| "reading /proc/self/mountinfo".into())
}

fn list(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Splits an absolute, normalized path into its parent and last component.
fn split(path: &Path) -> Result<(&Path, &str)> {
    match (path.parent(), path.file_name().and_then(|n| n.to_str())) {
        (Some(parent), Some(name)) => Ok((parent, name)),
        _ => Err(Error::invalid(
            "path",
            format!("{} has no parent directory", path.display()),
        )),
    }
}

/// Whether `path` already shows the volume (`src`) with the wanted read-only setting, so a repeated call has
/// nothing to do. Anything else mounted there, or the volume with the other setting, is a conflict.
fn already_mounted(
    table: &MountTable,
    path: &Path,
    src: &MountSource,
    read_only: bool,
    volume_id: &str,
    done: &str,
) -> Result<bool> {
    let Some(top) = table.top_mount_at(path) else {
        return Ok(false);
    };
    if !top.shows(src) {
        return Err(Error::MountConflict(format!(
            "{} already has another filesystem mounted ({})",
            path.display(),
            top.source
        )));
    }
    if top.is_read_only() != read_only {
        let how = if top.is_read_only() {
            "read-only"
        } else {
            "read-write"
        };
        return Err(Error::MountConflict(format!(
            "volume {volume_id} is already {done} at {} {how}",
            path.display()
        )));
    }
    Ok(true)
}

impl Engine {
    /// The identity of the volume's data in the mount table (device and directory), from which every mount of it
    /// can be found.
    fn source(&self, table: &MountTable, pool: &Pool, rec: &VolumeRecord) -> Result<(PathBuf, MountSource)> {
        let data = pool.data_path(rec)?;
        let src = table.source_of(&data).ok_or_else(|| Error::Io {
            op: format!("finding the mount holding {}", data.display()),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        })?;
        Ok((data, src))
    }

    /// Every place the volume is mounted (staging paths and publish targets).
    pub(crate) fn mounts_of(&self, pool: &Pool, rec: &VolumeRecord) -> Result<Vec<PathBuf>> {
        let table = mount_table()?;
        let (_, src) = self.source(&table, pool, rec)?;
        Ok(table
            .mounts_of(&src)
            .into_iter()
            .map(|m| m.mount_point.clone())
            .collect())
    }

    fn check_capability(pool: &Pool, cap: &Capability) -> Result<()> {
        match pool.backend.unsupported(cap) {
            Some(why) => Err(Error::Precondition(format!(
                "capability not supported by this volume: {why}"
            ))),
            None => Ok(()),
        }
    }

    pub fn stage(&self, req: &StageRequest) -> Result<()> {
        let (vid, pool, rec) = self.lookup(&req.volume_id)?;
        let _guard = self.lock(&vid)?;
        Self::check_capability(&pool, &req.capability)?;
        let staging = &req.staging_path;
        if !loam_sys::fs::is_dir_no_follow(staging) {
            return Err(Error::Precondition(format!(
                "staging path {} is not an existing directory; the CO creates it before NodeStageVolume",
                staging.display()
            )));
        }
        let read_only = req.capability.mode.is_read_only();
        let table = mount_table()?;
        let (data, src) = self.source(&table, &pool, &rec)?;
        if already_mounted(&table, staging, &src, read_only, &req.volume_id, "staged")? {
            return self.check_note(staging, &req.volume_id, &req.capability, read_only, "staged");
        }
        loam_sys::mount::bind(&data, staging, read_only)
            .ctx(|| format!("staging volume {}", req.volume_id))?;
        self.notes.put(&MountNote {
            volume_id: req.volume_id.clone(),
            path: staging.clone(),
            capability: req.capability.clone(),
            read_only,
        });
        info!(volume.id = %req.volume_id, staging.path = %staging.display(), read_only, "volume staged");
        Ok(())
    }

    pub fn unstage(&self, volume_id: &str, staging: &Path) -> Result<()> {
        let (vid, pool, rec) = self.lookup(volume_id)?;
        let _guard = self.lock(&vid)?;
        let table = mount_table()?;
        let (_, src) = self.source(&table, &pool, &rec)?;
        let mounts = table.mounts_of(&src);
        if !mounts.iter().any(|m| m.mount_point == staging) {
            self.notes.remove(staging);
            return Ok(());
        }
        let published: Vec<PathBuf> = mounts
            .iter()
            .filter(|m| m.mount_point != staging)
            .map(|m| m.mount_point.clone())
            .collect();
        if !published.is_empty() {
            return Err(Error::Precondition(format!(
                "volume {volume_id} is still published at {}; unpublish it first",
                list(&published)
            )));
        }
        self.unmount_all(staging, &src, volume_id)?;
        self.notes.remove(staging);
        info!(volume.id = %volume_id, staging.path = %staging.display(), "volume unstaged");
        Ok(())
    }

    /// A repeat at a path that already shows the volume is OK only if it asks for what the note says was asked for.
    fn check_note(
        &self,
        path: &Path,
        volume_id: &str,
        cap: &Capability,
        read_only: bool,
        done: &str,
    ) -> Result<()> {
        match self.notes.get(path) {
            Some(n) if n.volume_id == volume_id && (n.capability != *cap || n.read_only != read_only) => {
                Err(Error::MountConflict(format!(
                    "volume {volume_id} is already {done} at {} with {:?} (read_only: {}); this request asks for \
                     {cap:?} (read_only: {read_only})",
                    path.display(),
                    n.capability,
                    n.read_only
                )))
            }
            _ => Ok(()),
        }
    }

    /// Unmounts every layer of the volume at `path`, refusing to touch a mount of something else.
    fn unmount_all(&self, path: &Path, src: &MountSource, volume_id: &str) -> Result<()> {
        loop {
            let table = mount_table()?;
            let Some(top) = table.top_mount_at(path) else {
                return Ok(());
            };
            if !top.shows(src) {
                return Err(Error::Precondition(format!(
                    "{} has a mount of something other than volume {volume_id} ({}); not touching it",
                    path.display(),
                    top.source
                )));
            }
            loam_sys::mount::unmount(path).ctx(|| format!("unmounting {}", path.display()))?;
        }
    }

    pub fn publish(&self, req: &PublishRequest) -> Result<()> {
        let (vid, pool, rec) = self.lookup(&req.volume_id)?;
        let _guard = self.lock(&vid)?;
        Self::check_capability(&pool, &req.capability)?;
        let read_only = req.read_only || req.capability.mode.is_read_only();
        let target = &req.target_path;
        let table = mount_table()?;
        let (_, src) = self.source(&table, &pool, &rec)?;
        if !table
            .top_mount_at(&req.staging_path)
            .is_some_and(|m| m.shows(&src))
        {
            return Err(Error::Precondition(format!(
                "volume {} is not staged at {}; call NodeStageVolume first",
                req.volume_id,
                req.staging_path.display()
            )));
        }
        if already_mounted(&table, target, &src, read_only, &req.volume_id, "published")? {
            return self.check_note(target, &req.volume_id, &req.capability, read_only, "published");
        }
        if req.capability.mode.is_single_publication() {
            let others: Vec<PathBuf> = table
                .mounts_of(&src)
                .into_iter()
                .map(|m| m.mount_point.clone())
                .filter(|p| p != &req.staging_path && p != target)
                .collect();
            if !others.is_empty() {
                return Err(Error::Precondition(format!(
                    "volume {} allows one publication ({:?}) and is already published at {}",
                    req.volume_id,
                    req.capability.mode,
                    list(&others)
                )));
            }
        }
        let (parent, name) = split(target)?;
        if !loam_sys::fs::is_dir_no_follow(parent) {
            return Err(Error::Precondition(format!(
                "the parent of target path {} is not an existing directory; the CO creates it",
                target.display()
            )));
        }
        let created = match loam_sys::fs::create_dir_checked(parent, name, TARGET_DIR_MODE) {
            Ok(created) => created,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(Error::Precondition(format!(
                    "target path {} exists and is not a directory loam can mount on: {e}",
                    target.display()
                )));
            }
            Err(e) => {
                return Err(Error::Io {
                    op: format!("creating target directory {}", target.display()),
                    source: e,
                });
            }
        };
        if let Err(e) = loam_sys::mount::bind(&req.staging_path, target, read_only) {
            if created {
                let _ = std::fs::remove_dir(target);
            }
            return Err(Error::Io {
                op: format!("publishing volume {}", req.volume_id),
                source: e,
            });
        }
        self.notes.put(&MountNote {
            volume_id: req.volume_id.clone(),
            path: target.clone(),
            capability: req.capability.clone(),
            read_only,
        });
        info!(volume.id = %req.volume_id, target.path = %target.display(), read_only, "volume published");
        Ok(())
    }

    pub fn unpublish(&self, volume_id: &str, target: &Path) -> Result<()> {
        let (vid, pool, rec) = self.lookup(volume_id)?;
        let _guard = self.lock(&vid)?;
        let table = mount_table()?;
        let (_, src) = self.source(&table, &pool, &rec)?;
        self.unmount_all(target, &src, volume_id)?;
        match std::fs::symlink_metadata(target) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(Error::Io {
                    op: format!("inspecting {}", target.display()),
                    source: e,
                });
            }
            Ok(m) if m.is_dir() => {
                std::fs::remove_dir(target).ctx(|| format!("removing {}", target.display()))?
            }
            Ok(m) if m.is_file() => {
                std::fs::remove_file(target).ctx(|| format!("removing {}", target.display()))?
            }
            Ok(_) => {
                return Err(Error::Precondition(format!(
                    "{} is neither a directory nor a file loam created; not removing it",
                    target.display()
                )));
            }
        }
        self.notes.remove(target);
        info!(volume.id = %volume_id, target.path = %target.display(), "volume unpublished");
        Ok(())
    }

    /// Usage of a volume seen at `path`, which must be one of its staging paths or publish targets.
    pub fn stats(&self, volume_id: &str, path: &Path) -> Result<VolumeStats> {
        let (vid, pool, rec) = self.lookup(volume_id)?;
        let table = mount_table()?;
        let (data, src) = self.source(&table, &pool, &rec)?;
        if !table.mounts_of(&src).iter().any(|m| m.mount_point == path) {
            return Err(Error::NotAtPath {
                id: volume_id.to_owned(),
                path: path.to_owned(),
            });
        }
        let stem = vid.file_stem();
        if !pool.backend.exists(&stem) {
            return Ok(VolumeStats {
                total_bytes: rec.capacity_bytes,
                used_bytes: 0,
                available_bytes: 0,
                total_inodes: 0,
                used_inodes: 0,
                available_inodes: 0,
                abnormal: Some(format!("the volume's data at {} is gone", data.display())),
            });
        }
        let usage = pool.backend.usage(&stem)?;
        let fs = loam_sys::statfs::statfs(&data).ctx(|| format!("statfs {}", data.display()))?;
        let total = rec.capacity_bytes;
        let over = usage.bytes > total;
        Ok(VolumeStats {
            total_bytes: total,
            used_bytes: usage.bytes,
            available_bytes: total.saturating_sub(usage.bytes).min(fs.available_bytes),
            total_inodes: usage.inodes + fs.free_inodes,
            used_inodes: usage.inodes,
            available_inodes: fs.free_inodes,
            abnormal: over.then(|| {
                format!(
                    "volume uses {} bytes, more than its {total}; pool {} does not enforce sizes",
                    usage.bytes, pool.name
                )
            }),
        })
    }
}

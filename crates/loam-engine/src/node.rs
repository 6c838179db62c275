//! Node-side operations: stage, publish, unpublish, unstage and stats, for the two shapes a backend attaches:
//! - a directory: staged by a bind mount, published by a bind of the staging mount;
//! - a block device: for filesystem access formatted once (never reformatted), mounted at the staging path and
//!   published by a bind of that mount; for block access bind-mounted onto a file in the staging directory and
//!   onto a file at each target.
//!
//! What a path shows is asked of the path itself (`statx`: is it a mount root, and of which directory or
//! device), never of remembered state, so repeats add no mount and a restart or reboot loses nothing: after a
//! reboot NodeStage attaches and mounts again. Where a volume is mounted (before unstage, delete or a second
//! publication) is asked of the paths loam's notes name for it, so no call reads the whole mount table, whose
//! size grows with every pod on the node.

use std::path::{Path, PathBuf};

use loam_sys::host::{FileId, MountedAt};
use tracing::{info, warn};

use crate::{
    backend::{Attachment, Device},
    capability::{self, Refusal},
    engine::Engine,
    error::{Error, IoContext, Result},
    notes::MountNote,
    pool::Pool,
    record::VolumeRecord,
    types::{AccessType, Capability, PublishRequest, StageRequest, UsageRow, VolumeStats},
};

/// Mode of a publish target directory we create; the bind mount on top decides what pods see.
const TARGET_DIR_MODE: u32 = 0o750;
/// Mode of the files block devices are bind-mounted onto.
const TARGET_FILE_MODE: u32 = 0o600;

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

/// What a mount must show at its root to be a mount of the volume: its directory or device node (bound raw), or
/// the filesystem on its device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shows {
    File(FileId),
    Fs { dev: u64 },
}

impl Shows {
    fn matches(self, m: &MountedAt) -> bool {
        match self {
            Shows::File(id) => m.root == id,
            Shows::Fs { dev } => m.root.dev == dev,
        }
    }
}

fn fs_of(dev: &Device) -> Shows {
    Shows::Fs {
        dev: loam_sys::mount::dev_number(dev.major, dev.minor),
    }
}

/// Makes `parent/name` as an empty file to bind a device node onto; an existing regular file is reused.
fn make_target_file(parent: &Path, name: &str) -> Result<bool> {
    let path = parent.join(name);
    match std::fs::symlink_metadata(&path) {
        Ok(m) if m.is_file() => return Ok(false),
        Ok(_) => {
            return Err(Error::Precondition(format!(
                "{} exists and is not a file loam can bind a block device onto",
                path.display()
            )));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(Error::Io {
                op: format!("inspecting {}", path.display()),
                source: e,
            });
        }
    }
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(TARGET_FILE_MODE)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)
        .ctx(|| format!("creating {}", path.display()))?;
    Ok(true)
}

/// Removes what loam made at a target or staging file path: a directory or a file, never anything else.
fn remove_target(target: &Path) -> Result<()> {
    match std::fs::symlink_metadata(target) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::Io {
            op: format!("inspecting {}", target.display()),
            source: e,
        }),
        Ok(m) if m.is_dir() => std::fs::remove_dir(target).ctx(|| format!("removing {}", target.display())),
        Ok(m) if m.is_file() => std::fs::remove_file(target).ctx(|| format!("removing {}", target.display())),
        Ok(_) => Err(Error::Precondition(format!(
            "{} is neither a directory nor a file loam created; not removing it",
            target.display()
        ))),
    }
}

/// Where a block volume's device is bind-mounted inside its staging directory.
fn staged_device_file(staging: &Path, volume_id: &str) -> PathBuf {
    staging.join(volume_id)
}

impl Engine {
    fn mounted_at(&self, path: &Path) -> Result<Option<MountedAt>> {
        self.host
            .mounted_at(path)
            .ctx(|| format!("asking what is mounted at {}", path.display()))
    }

    fn file_id(&self, path: &Path) -> Result<Shows> {
        self.host
            .file_id(path)
            .map(Shows::File)
            .ctx(|| "telling what a mount of the volume shows".into())
    }

    /// Every way a mount can show the volume: its directory; or its device's filesystem and its device node.
    fn shows(&self, att: &Attachment) -> Result<Vec<Shows>> {
        Ok(match att {
            Attachment::Directory(d) => vec![self.file_id(d)?],
            Attachment::Device(dev) => vec![fs_of(dev), self.file_id(&dev.path)?],
        })
    }

    /// Every path loam mounted the volume at that still shows it: the paths its notes name (for a block volume's
    /// staging directory, the device file in it), each asked what it shows. When the volume's directory or device
    /// node is gone, so that what its mounts show cannot be told, every noted path still mounted counts.
    fn uses(&self, volume_id: &str, att: &Attachment) -> Result<Vec<PathBuf>> {
        let noted = self.notes.paths_of(volume_id);
        if noted.is_empty() {
            return Ok(vec![]);
        }
        let shows = self.shows_if_present(att)?;
        let mut found = Vec::new();
        for noted in noted {
            for path in [staged_device_file(&noted, volume_id), noted] {
                if let Some(m) = self.mounted_at(&path)?
                    && shows.as_ref().is_none_or(|s| s.iter().any(|s| s.matches(&m)))
                {
                    found.push(path);
                    break;
                }
            }
        }
        Ok(found)
    }

    /// [`Engine::shows`], or `None` when the volume's directory or device node no longer exists.
    fn shows_if_present(&self, att: &Attachment) -> Result<Option<Vec<Shows>>> {
        match self.shows(att) {
            Ok(s) => Ok(Some(s)),
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Unmounts the volume at `path` (see [`Engine::unmount_all`]); when what its mounts show cannot be told (its
    /// directory is gone), only as loam's note at `noted` allows ([`Engine::unmount_by_note`]).
    fn unmount_volume(
        &self,
        path: &Path,
        noted: &Path,
        att: &Attachment,
        volume_id: &str,
        pool: &str,
    ) -> Result<()> {
        match self.shows_if_present(att)? {
            Some(shows) => self.unmount_all(path, &shows, volume_id),
            None => self.unmount_by_note(
                volume_id,
                path,
                noted,
                pool,
                "the volume's directory or device is gone",
            ),
        }
    }

    /// Whether `path` already shows the volume (`want`) with the wanted read-only setting, so a repeated call has
    /// nothing to do. Anything else mounted there, or the volume with the other setting, is a conflict.
    fn already_mounted(
        &self,
        path: &Path,
        want: Shows,
        read_only: bool,
        volume_id: &str,
        done: &str,
    ) -> Result<bool> {
        let Some(top) = self.mounted_at(path)? else {
            return Ok(false);
        };
        if !want.matches(&top) {
            return Err(Error::MountConflict(format!(
                "{} already has something other than volume {volume_id} mounted on it",
                path.display()
            )));
        }
        if top.read_only != read_only {
            let how = if top.read_only { "read-only" } else { "read-write" };
            return Err(Error::MountConflict(format!(
                "volume {volume_id} is already {done} at {} {how}",
                path.display()
            )));
        }
        Ok(true)
    }

    /// Every place the volume is mounted (staging paths and publish targets).
    pub(crate) fn mounts_of(&self, pool: &Pool, rec: &VolumeRecord) -> Result<Vec<PathBuf>> {
        let stem = rec.volume_id()?.file_stem();
        match pool.backend.attached(&rec.backing(&stem))? {
            Some(att) => self.uses(&rec.id, &att),
            None => Ok(vec![]),
        }
    }

    /// Refuses a capability the volume cannot be used with: an off-list field is INVALID_ARGUMENT, anything the
    /// volume cannot serve FAILED_PRECONDITION, as the spec asks of the node calls.
    fn check_capability(pool: &Pool, rec: &VolumeRecord, cap: &Capability) -> Result<()> {
        match Self::refusal(pool, rec, cap) {
            Some(Refusal::Invalid(why)) => Err(Error::invalid("volume_capability", why)),
            Some(Refusal::Unsupported(why)) => Err(Error::Precondition(format!(
                "capability not supported by this volume: {why}"
            ))),
            None => Ok(()),
        }
    }

    pub fn stage(&self, req: &StageRequest) -> Result<()> {
        let (vid, pool, rec) = self.lookup(&req.volume_id)?;
        let _guard = self.lock(&vid)?;
        Self::check_capability(&pool, &rec, &req.capability)?;
        let staging = &req.staging_path;
        if !loam_sys::fs::is_dir_no_follow(staging) {
            return Err(Error::Precondition(format!(
                "staging path {} is not an existing directory; the CO creates it before NodeStageVolume",
                staging.display()
            )));
        }
        let read_only = req.capability.mode.is_read_only();
        let stem = vid.file_stem();
        let att = pool.backend.attach(&rec.backing(&stem))?;
        let id = &req.volume_id;
        // Whatever fails from here leaves the volume attached only if something shows it.
        let blank = matches!(att, Attachment::Device(_))
            && matches!(req.capability.access, AccessType::Mount { .. })
            && pool.backend.holds_no_data(&rec.backing(&stem));
        let done = self
            .stage_attached(&rec, &att, req, read_only, blank)
            .inspect_err(|_| self.detach_if_unused(&pool, &rec, &stem, &att))?;
        if done {
            return self.check_note(staging, id, &req.capability, read_only, "staged");
        }
        self.notes.put(&MountNote {
            volume_id: id.clone(),
            path: staging.clone(),
            capability: req.capability.clone(),
            read_only,
        });
        tracing::debug!(volume.id = %id, staging.path = %staging.display(), read_only, "volume staged");
        Ok(())
    }

    /// Stages an attached volume at `req.staging_path`; `Ok(true)` when it already was (a repeat). `blank`: the
    /// backend knows the volume holds no data, so there is no filesystem to probe for before formatting.
    fn stage_attached(
        &self,
        rec: &VolumeRecord,
        att: &Attachment,
        req: &StageRequest,
        read_only: bool,
        blank: bool,
    ) -> Result<bool> {
        let id = &req.volume_id;
        let staging = &req.staging_path;
        Ok(match (att, &req.capability.access) {
            (Attachment::Directory(dir), AccessType::Mount { .. }) => {
                if self.already_mounted(staging, self.file_id(dir)?, read_only, id, "staged")? {
                    true
                } else {
                    self.host
                        .bind(dir, staging, read_only)
                        .ctx(|| format!("staging volume {id}"))?;
                    false
                }
            }
            (Attachment::Device(dev), AccessType::Mount { .. }) => {
                if self.already_mounted(staging, fs_of(dev), read_only, id, "staged")? {
                    true
                } else {
                    self.format_and_mount(rec, dev, staging, &req.capability, read_only, blank)?;
                    false
                }
            }
            (Attachment::Device(dev), AccessType::Block) => {
                let file = staged_device_file(staging, id);
                if self.already_mounted(&file, self.file_id(&dev.path)?, read_only, id, "staged")? {
                    true
                } else {
                    let bound = make_target_file(staging, id).and_then(|_| {
                        self.host
                            .bind(&dev.path, &file, read_only)
                            .ctx(|| format!("staging block volume {id}"))
                    });
                    if let Err(e) = bound {
                        let _ = remove_target(&file);
                        return Err(e);
                    }
                    false
                }
            }
            (Attachment::Directory(_), AccessType::Block) => {
                return Err(Error::Precondition(format!(
                    "volume {id} is a directory and cannot be staged for block access"
                )));
            }
        })
    }

    /// Formats the device if it holds nothing (never when it holds a filesystem), then mounts it at `staging`.
    /// `blank`: known to hold no data, so not probed.
    fn format_and_mount(
        &self,
        rec: &VolumeRecord,
        dev: &Device,
        staging: &Path,
        cap: &Capability,
        read_only: bool,
        blank: bool,
    ) -> Result<()> {
        let asked = capability::fs_type(cap).or(rec.fs_type.as_deref());
        let found = if blank {
            None
        } else {
            self.host
                .signature(&dev.path)
                .ctx(|| format!("probing {} for a filesystem", dev.path.display()))?
        };
        let fs_type = match (found.as_deref(), asked) {
            (None, _) => {
                let fs_type = asked.unwrap_or(capability::FS_TYPES[0]);
                self.host.mkfs(&dev.path, fs_type).ctx(|| {
                    format!(
                        "formatting {} as {fs_type} for volume {}",
                        dev.path.display(),
                        rec.id
                    )
                })?;
                info!(volume.id = %rec.id, device = %dev.path.display(), fs_type, "volume formatted");
                fs_type.to_owned()
            }
            (Some(have), Some(want)) if have != want => {
                return Err(Error::Precondition(format!(
                    "volume {} holds {have}, not the {want} asked for; loam never reformats a volume",
                    rec.id
                )));
            }
            (Some(have), _) if capability::FS_TYPES.contains(&have) => have.to_owned(),
            (Some(have), None) => {
                return Err(Error::Precondition(format!(
                    "volume {} holds {have}, which loam does not mount; loam never reformats a volume",
                    rec.id
                )));
            }
            (Some(have), Some(_)) => have.to_owned(),
        };
        self.host
            .mount(
                &dev.path,
                staging,
                &fs_type,
                capability::mount_flags(cap),
                read_only,
            )
            .ctx(|| {
                format!(
                    "mounting {} ({fs_type}) at {} for volume {}",
                    dev.path.display(),
                    staging.display(),
                    rec.id
                )
            })
    }

    /// Detaches the volume when nothing shows it any more (after a failed stage, or at unstage). Failures are
    /// logged: a leftover attachment is found again and reused by the next stage.
    fn detach_if_unused(&self, pool: &Pool, rec: &VolumeRecord, stem: &str, att: &Attachment) {
        let Attachment::Device(_) = att else {
            return;
        };
        match self.uses(&rec.id, att).map(|u| !u.is_empty()) {
            Ok(false) => {
                if let Err(e) = pool.backend.detach(&rec.backing(stem)) {
                    warn!(pool = %pool.name, volume.stem = %stem, error = %e, "cannot detach the volume");
                }
            }
            Ok(true) => {}
            Err(e) => warn!(error = %e, "cannot tell whether the volume is still mounted; left attached"),
        }
    }

    pub fn unstage(&self, volume_id: &str, staging: &Path) -> Result<()> {
        let (vid, pool, rec) = match self.lookup(volume_id) {
            Err(Error::PoolUnusable { pool, reason }) => {
                // The record cannot be read: the note says whether it was staged for block access.
                let block = self
                    .notes
                    .get(staging)
                    .is_some_and(|n| n.capability.access == AccessType::Block);
                self.unstage_by_note(volume_id, staging, block, &pool, &reason)?;
                if let Some(p) = self.pool(&pool)
                    && let Ok(vid) = crate::id::VolumeId::parse(volume_id)
                    && let Err(e) = p.backend.detach(&crate::backend::VolumeRef {
                        stem: &vid.file_stem(),
                        capacity_bytes: 0,
                        project_id: None,
                        device: None,
                    })
                {
                    warn!(volume.id = %volume_id, error = %e, "cannot detach the volume of a degraded pool");
                }
                return Ok(());
            }
            other => other?,
        };
        let _guard = self.lock(&vid)?;
        let stem = vid.file_stem();
        let file = staged_device_file(staging, volume_id);
        let Some(att) = pool.backend.attached(&rec.backing(&stem))? else {
            // Not attached: normally nothing of it is mounted (after a reboot), but a device that lost its image file
            // may still be; loam's note says whether it mounted that.
            return self.unstage_by_note(
                volume_id,
                staging,
                rec.block,
                &pool.name,
                "the volume is not attached",
            );
        };
        let staged_at = if rec.block { &file } else { staging };
        let others: Vec<PathBuf> = self
            .uses(volume_id, &att)?
            .into_iter()
            .filter(|p| p != staged_at)
            .collect();
        if !others.is_empty() {
            return Err(Error::Precondition(format!(
                "volume {volume_id} is still published at {}; unpublish it first",
                list(&others)
            )));
        }
        self.unmount_volume(staged_at, staging, &att, volume_id, &pool.name)?;
        if rec.block {
            remove_target(&file)?;
        }
        self.detach_if_unused(&pool, &rec, &stem, &att);
        self.notes.remove(staging);
        tracing::debug!(volume.id = %volume_id, staging.path = %staging.display(), "volume unstaged");
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
    fn unmount_all(&self, path: &Path, shows: &[Shows], volume_id: &str) -> Result<()> {
        while let Some(top) = self.mounted_at(path)? {
            if !shows.iter().any(|s| s.matches(&top)) {
                return Err(Error::Precondition(format!(
                    "{} has a mount of something other than volume {volume_id}; not touching it",
                    path.display()
                )));
            }
            self.host
                .unmount(path)
                .ctx(|| format!("unmounting {}", path.display()))?;
        }
        Ok(())
    }

    /// Unpublish or unstage when the volume's backing cannot tell what shows it (its pool is degraded, or its
    /// device lost its image file): the mount at `path` is taken down only if loam's note at `noted` (the path
    /// itself, or for a block volume's device file its staging directory) says it mounted this volume there.
    fn unmount_by_note(
        &self,
        volume_id: &str,
        path: &Path,
        noted: &Path,
        pool: &str,
        reason: &str,
    ) -> Result<()> {
        if self.mounted_at(path)?.is_none() {
            return Ok(());
        }
        if self.notes.get(noted).is_none_or(|n| n.volume_id != volume_id) {
            return Err(Error::Precondition(format!(
                "{} is mounted, but loam has no note that it mounted volume {volume_id} there and cannot tell from \
                 pool {pool} ({reason}); not touching it",
                path.display()
            )));
        }
        while self.mounted_at(path)?.is_some() {
            self.host
                .unmount(path)
                .ctx(|| format!("unmounting {}", path.display()))?;
        }
        Ok(())
    }

    /// Unstage by loam's notes (see [`Engine::unmount_by_note`]): the staging mount, or a block volume's device
    /// file and the file itself; then the volume's device is detached if its backend can still find it.
    fn unstage_by_note(
        &self,
        volume_id: &str,
        staging: &Path,
        block: bool,
        pool: &str,
        reason: &str,
    ) -> Result<()> {
        let file = staged_device_file(staging, volume_id);
        if block {
            self.unmount_by_note(volume_id, &file, staging, pool, reason)?;
            remove_target(&file)?;
        } else {
            self.unmount_by_note(volume_id, staging, staging, pool, reason)?;
        }
        self.notes.remove(staging);
        info!(volume.id = %volume_id, staging.path = %staging.display(), %reason, "volume unstaged by loam's notes");
        Ok(())
    }

    pub fn publish(&self, req: &PublishRequest) -> Result<()> {
        let (vid, pool, rec) = self.lookup(&req.volume_id)?;
        let _guard = self.lock(&vid)?;
        Self::check_capability(&pool, &rec, &req.capability)?;
        let id = &req.volume_id;
        let read_only = req.read_only || req.capability.mode.is_read_only();
        let target = &req.target_path;
        let not_staged = || {
            Error::Precondition(format!(
                "volume {id} is not staged at {}; call NodeStageVolume first",
                req.staging_path.display()
            ))
        };
        let stem = vid.file_stem();
        let att = pool
            .backend
            .attached(&rec.backing(&stem))?
            .ok_or_else(not_staged)?;
        let block = req.capability.access == AccessType::Block;
        // What the target will show, where it shows staged, and what to bind from.
        let (src, staged_at, bind_from) = match (&att, block) {
            (Attachment::Directory(d), false) => (
                self.file_id(d)?,
                req.staging_path.clone(),
                req.staging_path.clone(),
            ),
            (Attachment::Device(dev), false) => {
                (fs_of(dev), req.staging_path.clone(), req.staging_path.clone())
            }
            (Attachment::Device(dev), true) => (
                self.file_id(&dev.path)?,
                staged_device_file(&req.staging_path, id),
                dev.path.clone(),
            ),
            (Attachment::Directory(_), true) => return Err(not_staged()),
        };
        if !self.mounted_at(&staged_at)?.is_some_and(|m| src.matches(&m)) {
            return Err(not_staged());
        }
        if self.already_mounted(target, src, read_only, id, "published")? {
            return self.check_note(target, id, &req.capability, read_only, "published");
        }
        if req.capability.mode.is_single_publication() {
            let others: Vec<PathBuf> = self
                .uses(id, &att)?
                .into_iter()
                .filter(|p| p != &staged_at && p != target)
                .collect();
            if !others.is_empty() {
                return Err(Error::Precondition(format!(
                    "volume {id} allows one publication ({:?}) and is already published at {}",
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
        let created = if block {
            make_target_file(parent, name)?
        } else {
            match loam_sys::fs::create_dir_checked_unsynced(parent, name, TARGET_DIR_MODE) {
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
            }
        };
        if let Err(e) = self.host.bind(&bind_from, target, read_only) {
            if created {
                let _ = remove_target(target);
            }
            return Err(Error::Io {
                op: format!("publishing volume {id}"),
                source: e,
            });
        }
        self.notes.put(&MountNote {
            volume_id: id.clone(),
            path: target.clone(),
            capability: req.capability.clone(),
            read_only,
        });
        tracing::debug!(volume.id = %id, target.path = %target.display(), read_only, block, "volume published");
        Ok(())
    }

    pub fn unpublish(&self, volume_id: &str, target: &Path) -> Result<()> {
        let (vid, pool, rec) = match self.lookup(volume_id) {
            Err(Error::PoolUnusable { pool, reason }) => {
                self.unmount_by_note(volume_id, target, target, &pool, &reason)?;
                remove_target(target)?;
                self.notes.remove(target);
                return Ok(());
            }
            other => other?,
        };
        let _guard = self.lock(&vid)?;
        match pool.backend.attached(&rec.backing(&vid.file_stem()))? {
            Some(att) => self.unmount_volume(target, target, &att, volume_id, &pool.name)?,
            None => self.unmount_by_note(
                volume_id,
                target,
                target,
                &pool.name,
                "the volume is not attached",
            )?,
        }
        remove_target(target)?;
        self.notes.remove(target);
        tracing::debug!(volume.id = %volume_id, target.path = %target.display(), "volume unpublished");
        Ok(())
    }

    /// Usage of a volume seen at `path`, which must be one of its staging paths or publish targets.
    pub fn stats(&self, volume_id: &str, path: &Path) -> Result<VolumeStats> {
        let (vid, pool, rec) = self.lookup(volume_id)?;
        let stem = vid.file_stem();
        let att = pool.backend.attached(&rec.backing(&stem))?;
        let at = self.mounted_at(path)?;
        let shown = match (&att, &at) {
            (Some(a), Some(m)) => self
                .shows_if_present(a)?
                .is_some_and(|shows| shows.iter().any(|s| s.matches(m))),
            _ => false,
        };
        if !shown {
            // A mount loam made for this volume that no longer shows its backing: the image file was deleted or
            // replaced under a mounted loop device. Say so rather than "not here".
            if at.is_some() && self.notes.get(path).is_some_and(|n| n.volume_id == volume_id) {
                let why = pool.backend.check(&rec.backing(&stem)).unwrap_or_else(|| {
                    format!(
                        "the device mounted at {} is no longer attached to the volume's backing",
                        path.display()
                    )
                });
                return Ok(VolumeStats {
                    bytes: UsageRow {
                        total: rec.capacity_bytes,
                        ..UsageRow::default()
                    },
                    inodes: None,
                    abnormal: Some(why),
                });
            }
            return Err(Error::NotAtPath {
                id: volume_id.to_owned(),
                path: path.to_owned(),
            });
        }
        let abnormal = pool.backend.check(&rec.backing(&stem));
        match att.expect("shown implies attached") {
            Attachment::Directory(dir) => self.directory_stats(&pool, &rec, &stem, &dir, abnormal),
            Attachment::Device(dev) if rec.block => {
                let total = self
                    .host
                    .device_size(&dev.path)
                    .ctx(|| format!("measuring {}", dev.path.display()))?;
                Ok(VolumeStats {
                    bytes: UsageRow {
                        total,
                        ..UsageRow::default()
                    },
                    inodes: None,
                    abnormal,
                })
            }
            Attachment::Device(_) => {
                let fs = self
                    .host
                    .statfs(path)
                    .ctx(|| format!("statfs {}", path.display()))?;
                Ok(VolumeStats {
                    bytes: UsageRow {
                        total: fs.total_bytes,
                        used: fs.total_bytes.saturating_sub(fs.free_bytes),
                        available: fs.available_bytes,
                    },
                    inodes: Some(UsageRow {
                        total: fs.total_inodes,
                        used: fs.total_inodes.saturating_sub(fs.free_inodes),
                        available: fs.free_inodes,
                    }),
                    abnormal,
                })
            }
        }
    }

    fn directory_stats(
        &self,
        pool: &Pool,
        rec: &VolumeRecord,
        stem: &str,
        dir: &Path,
        abnormal: Option<String>,
    ) -> Result<VolumeStats> {
        let total = rec.capacity_bytes;
        if let Some(why) = abnormal {
            return Ok(VolumeStats {
                bytes: UsageRow {
                    total,
                    ..UsageRow::default()
                },
                inodes: Some(UsageRow::default()),
                abnormal: Some(why),
            });
        }
        let usage = pool.backend.usage(&rec.backing(stem))?;
        let fs = self
            .host
            .statfs(dir)
            .ctx(|| format!("statfs {}", dir.display()))?;
        let over = usage.bytes > total && !pool.backend.enforces_size();
        Ok(VolumeStats {
            bytes: UsageRow {
                total,
                used: usage.bytes,
                available: total.saturating_sub(usage.bytes).min(fs.available_bytes),
            },
            inodes: Some(UsageRow {
                total: usage.inodes + fs.free_inodes,
                used: usage.inodes,
                available: fs.free_inodes,
            }),
            abnormal: over.then(|| {
                format!(
                    "volume uses {} bytes, more than its {total}; pool {} does not enforce sizes",
                    usage.bytes, pool.name
                )
            }),
        })
    }
}

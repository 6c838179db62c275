//! `device` pools: a volume is a whole disk, found in the pool's discovery directory (the job of the static
//! local-volume provisioner, done dynamically).
//!
//! - Discovery ([`discover`]) runs at start-up, every `discovery_interval_seconds` and on request (SIGHUP). It
//!   knows each disk by what identifies it across reboots and renames, remembers the ones it has seen for the
//!   life of the process (a disk that goes away is *missing*, never forgotten while a volume has it), and never
//!   mistakes another disk at the same path for the old one.
//! - Only *adopted* disks are offered: by default ones that hold nothing (no signature; an empty mount but for
//!   `lost+found`), and nothing else holds. The pool (not this module) picks the best fit among the free ones
//!   and writes it into the volume's record before anything else happens.
//! - Deleting a volume writes a cleaning note (`cleaning/<stem>.json` in the pool's state directory) and returns;
//!   a background thread cleans the disk ([`clean`]) and only then removes the note, so the disk is offered
//!   again only once clean. A note found at start-up is cleaning that a crash interrupted: it resumes. A disk
//!   whose cleaning failed stays out of the free set, and the failure is reported, until a later pass succeeds.
//!   A disk is only ever cleaned after checking, just before, that it is still the disk the note names.

mod clean;
pub mod discover;

use std::{
    collections::BTreeMap,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::{Arc, Condvar, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use loam_sys::host::Host;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use self::discover::Found;
use super::{Attachment, Backend, Device, EntryStatus, Inventory, Offer, ProvisionSpec, Usage, VolumeRef};
use crate::{
    capability::{self, Refusal},
    error::{Error, IoContext, Result},
    record::{DeviceClaim, EntrySort},
    spec::{DEFAULT_DISCOVERY_SECONDS, DeviceSpec, PoolKind, VolumeMode},
    types::{AccessType, Capability},
};

/// Which device pool each disk belongs to, by identity: the first that found it. Shared by a node's device
/// pools.
pub type DiskOwners = Arc<Mutex<BTreeMap<String, String>>>;

/// The directory of cleaning notes in the pool's state directory.
pub const CLEANING_DIR: &str = "cleaning";

/// A disk waiting to be cleaned, as its note says.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Note {
    /// The file stem of the volume that had it, for the logs.
    volume: String,
    claim: DeviceClaim,
}

#[derive(Debug, Clone)]
struct Cleaning {
    /// The note's file name.
    file: String,
    note: Note,
    running: bool,
    done: u64,
    total: u64,
    error: Option<String>,
}

impl Cleaning {
    fn new(file: String, note: Note) -> Cleaning {
        Cleaning {
            file,
            note,
            running: false,
            done: 0,
            total: 0,
            error: None,
        }
    }
}

#[derive(Debug, Clone)]
struct Known {
    found: Found,
    present: bool,
}

#[derive(Debug, Default)]
struct State {
    /// Every disk seen since start-up, by identity.
    known: BTreeMap<String, Known>,
    skipped: Vec<(PathBuf, String)>,
    problem: Option<String>,
    /// By identity.
    cleaning: BTreeMap<String, Cleaning>,
}

#[derive(Debug)]
struct Shared {
    pool: String,
    spec: DeviceSpec,
    cleaning_dir: PathBuf,
    host: Arc<dyn Host>,
    state: Mutex<State>,
    /// Why nothing may be offered at all (an unreadable cleaning note).
    broken: Option<String>,
    owners: DiskOwners,
    stopped: Mutex<bool>,
    wake: Condvar,
    /// Discovery passes run one at a time.
    pass: Mutex<()>,
}

#[derive(Debug)]
pub struct DeviceBackend {
    shared: Arc<Shared>,
}

impl DeviceBackend {
    /// Opens the device pool `spec` whose state lives in `root`: reads its cleaning notes, looks at the discovery
    /// directory once, starts the cleaning the notes ask for and the periodic discovery.
    pub fn open(spec: &DeviceSpec, root: &Path, host: Arc<dyn Host>, owners: DiskOwners) -> DeviceBackend {
        let cleaning_dir = root.join(CLEANING_DIR);
        let mut cleaning = BTreeMap::new();
        let mut broken = None;
        let names = loam_sys::fs::create_dir_checked(root, CLEANING_DIR, 0o700)
            .ctx(|| format!("creating {}", cleaning_dir.display()))
            .and_then(|_| super::dir::list_names(&cleaning_dir, ".json"));
        let names = match names {
            Ok(n) => n,
            Err(e) => {
                broken = Some(format!("its cleaning notes cannot be read: {e}"));
                vec![]
            }
        };
        for name in names {
            let file = format!("{name}.json");
            let path = cleaning_dir.join(&file);
            let note: Result<Note> = std::fs::read(&path)
                .ctx(|| format!("reading {}", path.display()))
                .and_then(|d| serde_json::from_slice(&d).map_err(|e| Error::Precondition(e.to_string())));
            let note = match note {
                Ok(n) => n,
                Err(e) => {
                    // Some disk may hold a deleted volume's data: nothing is offered until an operator looks.
                    broken = Some(format!(
                        "cleaning note {} is unreadable ({e}); clean the disk it names by hand and remove the note",
                        path.display()
                    ));
                    continue;
                }
            };
            info!(pool = %spec.name, disk = %note.claim.entry, volume.stem = %note.volume,
                  "resuming the cleaning of a disk that a restart interrupted");
            cleaning.insert(note.claim.entry.clone(), Cleaning::new(file, note));
        }
        let shared = Arc::new(Shared {
            pool: spec.name.clone(),
            spec: spec.clone(),
            cleaning_dir,
            host,
            state: Mutex::new(State {
                cleaning,
                ..State::default()
            }),
            broken,
            owners,
            stopped: Mutex::new(false),
            wake: Condvar::new(),
            pass: Mutex::new(()),
        });
        Shared::discover(&shared);
        let every = Duration::from_secs(
            spec.discovery_interval_seconds
                .unwrap_or(DEFAULT_DISCOVERY_SECONDS),
        );
        let looper = shared.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("discover-{}", spec.name))
            .spawn(move || looper.run(every));
        if let Err(e) = spawned {
            warn!(pool = %spec.name, error = %e, "cannot start periodic discovery; it runs at start-up and on SIGHUP only");
        }
        DeviceBackend { shared }
    }

    fn claim<'a>(&self, v: &VolumeRef<'a>) -> Result<&'a DeviceClaim> {
        v.device.ok_or_else(|| {
            Error::Precondition(format!(
                "the record of volume {} names no disk of pool {}",
                v.stem, self.shared.pool
            ))
        })
    }

    /// The volume's disk where it is now, checked to be that disk right now.
    fn locate(&self, claim: &DeviceClaim) -> Result<Found> {
        let last = {
            let st = self.shared.state();
            st.known.get(&claim.entry).cloned()
        };
        let path = match &last {
            Some(k) if k.present => k.found.path.clone(),
            _ => claim.path.clone(),
        };
        match discover::probe(&self.shared.spec, self.shared.host.as_ref(), &path) {
            Ok(f) if f.key == claim.entry => Ok(f),
            Ok(f) => Err(Error::Precondition(format!(
                "the volume's disk {} is missing: {} now holds another disk ({})",
                claim.entry,
                path.display(),
                f.key
            ))),
            Err(why) => Err(Error::Precondition(format!(
                "the volume's disk {} is missing: {}: {why}",
                claim.entry,
                path.display()
            ))),
        }
    }
}

impl Drop for DeviceBackend {
    fn drop(&mut self) {
        *self.shared.stopped.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.shared.wake.notify_all();
    }
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn is_stopped(&self) -> bool {
        *self.stopped.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn run(self: Arc<Self>, every: Duration) {
        loop {
            let stopped = self.stopped.lock().unwrap_or_else(|e| e.into_inner());
            let (stopped, _) = self
                .wake
                .wait_timeout_while(stopped, every, |s| !*s)
                .unwrap_or_else(|e| e.into_inner());
            if *stopped {
                return;
            }
            drop(stopped);
            Shared::discover(&self);
        }
    }

    /// One discovery pass, then the cleaning it makes possible.
    fn discover(this: &Arc<Self>) {
        let _pass = this.pass.lock().unwrap_or_else(|e| e.into_inner());
        let mut scan = discover::scan(&this.spec, this.host.as_ref());
        {
            let mut owners = this.owners.lock().unwrap_or_else(|e| e.into_inner());
            let (mine, theirs): (Vec<Found>, Vec<Found>) = std::mem::take(&mut scan.found)
                .into_iter()
                .partition(|f| owners.get(&f.key).is_none_or(|p| *p == this.pool));
            for f in &mine {
                owners.insert(f.key.clone(), this.pool.clone());
            }
            for f in theirs {
                let why = format!("the same disk ({}) is in device pool {}", f.key, owners[&f.key]);
                scan.skipped.push((f.path, why));
            }
            scan.found = mine;
        }
        let pool = &this.pool;
        let mut st = this.state();
        if scan.problem != st.problem {
            match &scan.problem {
                Some(p) => warn!(pool = %pool, problem = %p, "device pool cannot discover its disks"),
                None => {
                    info!(pool = %pool, dir = %this.spec.path.display(), "discovery directory readable again")
                }
            }
            st.problem = scan.problem.clone();
        }
        if scan.problem.is_none() {
            let seen: std::collections::BTreeSet<&str> = scan.found.iter().map(|f| f.key.as_str()).collect();
            for (key, k) in st.known.iter_mut() {
                if k.present && !seen.contains(key.as_str()) {
                    k.present = false;
                    warn!(pool = %pool, disk = %key, path = %k.found.path.display(),
                          "disk missing: it is not offered, and a volume on it is abnormal, until it returns");
                }
            }
            for f in scan.found {
                match st.known.get(&f.key) {
                    None => info!(pool = %pool, disk = %f.key, path = %f.path.display(), bytes = f.size,
                                  holds = f.holds.as_deref().unwrap_or(""), busy = f.busy.as_deref().unwrap_or(""),
                                  "disk found"),
                    Some(k) if !k.present => {
                        info!(pool = %pool, disk = %f.key, path = %f.path.display(), "disk returned")
                    }
                    Some(k) if k.found.path != f.path => {
                        info!(pool = %pool, disk = %f.key, from = %k.found.path.display(), to = %f.path.display(), "disk moved")
                    }
                    Some(_) => {}
                }
                st.known.insert(
                    f.key.clone(),
                    Known {
                        found: f,
                        present: true,
                    },
                );
            }
            for (path, why) in &scan.skipped {
                if !st.skipped.iter().any(|(p, w)| p == path && w == why) {
                    warn!(pool = %pool, path = %path.display(), reason = %why, "discovery entry skipped");
                }
            }
            st.skipped = scan.skipped;
        }
        let ready: Vec<String> = st
            .cleaning
            .iter()
            .filter(|(key, c)| !c.running && st.known.get(*key).is_some_and(|k| k.present))
            .map(|(key, _)| key.clone())
            .collect();
        for key in &ready {
            if let Some(c) = st.cleaning.get_mut(key) {
                c.running = true;
            }
        }
        drop(st);
        for key in ready {
            let me = this.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("clean-{}", this.pool))
                .spawn(move || me.clean(&key));
            if let Err(e) = spawned {
                warn!(pool = %pool, error = %e, "cannot start a cleaning thread; retried at the next discovery");
            }
        }
    }

    /// Cleans the disk `key` (marked running), then offers it again or records why not.
    fn clean(&self, key: &str) {
        let Some(c) = self.state().cleaning.get(key).cloned() else {
            return;
        };
        let started = Instant::now();
        let outcome = self.clean_disk(key, &c);
        let mut st = self.state();
        match outcome {
            Ok(did) => {
                let removed = loam_sys::fs::remove_file_durable(&self.cleaning_dir, &c.file);
                if let Err(e) = removed {
                    warn!(pool = %self.pool, disk = %key, error = %e, "disk cleaned, but its cleaning note cannot be removed");
                    if let Some(c) = st.cleaning.get_mut(key) {
                        c.running = false;
                        c.error = Some(format!("cleaned, but {} cannot be removed: {e}", c.file));
                    }
                    return;
                }
                st.cleaning.remove(key);
                drop(st);
                info!(pool = %self.pool, disk = %key, volume.stem = %c.note.volume, seconds = started.elapsed().as_secs_f64(),
                      "disk cleaned: {did}");
                self.refresh(key);
            }
            Err(why) => {
                warn!(pool = %self.pool, disk = %key, volume.stem = %c.note.volume, reason = %why,
                      "cleaning failed: the disk is not offered; retried at the next discovery");
                if let Some(c) = st.cleaning.get_mut(key) {
                    c.running = false;
                    c.error = Some(why);
                }
            }
        }
    }

    fn clean_disk(&self, key: &str, c: &Cleaning) -> std::result::Result<String, String> {
        if self.is_stopped() {
            return Err("the server is stopping".into());
        }
        let path = self
            .state()
            .known
            .get(key)
            .map(|k| k.found.path.clone())
            .unwrap_or_else(|| c.note.claim.path.clone());
        // Checked just before: only the disk the note names is ever cleaned.
        let found = discover::probe(&self.spec, self.host.as_ref(), &path)?;
        if found.key != key {
            return Err(format!(
                "{} now holds another disk ({}); waiting for {key} to return",
                path.display(),
                found.key
            ));
        }
        match found.sort {
            EntrySort::Mount => clean::mount(&found.path)
                .map(|n| format!("{n} entries removed below {}", found.path.display()))
                .map_err(|e| format!("emptying {}: {e}", found.path.display())),
            EntrySort::Block => {
                let mut last_logged = 0u64;
                let mut progress = |done: u64, total: u64| {
                    if let Some(c) = self.state().cleaning.get_mut(key) {
                        (c.done, c.total) = (done, total);
                    }
                    let percent = done.saturating_mul(100) / total.max(1);
                    if percent >= last_logged + 10 || done == total {
                        last_logged = percent;
                        info!(pool = %self.pool, disk = %key, done, total, "cleaning: {percent}%");
                    }
                };
                info!(pool = %self.pool, disk = %key, device = %found.device.display(),
                      method = self.spec.cleanup.name(), "cleaning disk");
                clean::block(
                    self.host.as_ref(),
                    &found.device,
                    self.spec.cleanup,
                    &mut progress,
                )
                .map_err(|e| format!("cleaning {}: {e}", found.device.display()))
            }
        }
    }

    /// Looks at disk `key` again (after cleaning: what it holds now).
    fn refresh(&self, key: &str) {
        let path = match self.state().known.get(key) {
            Some(k) => k.found.path.clone(),
            None => return,
        };
        match discover::probe(&self.spec, self.host.as_ref(), &path) {
            Ok(f) if f.key == key => {
                self.state().known.insert(
                    f.key.clone(),
                    Known {
                        found: f,
                        present: true,
                    },
                );
            }
            _ => {
                if let Some(k) = self.state().known.get_mut(key) {
                    k.present = false;
                }
            }
        }
    }

    fn is_free(&self, st: &State, k: &Known) -> bool {
        k.present
            && (k.found.holds.is_none() || self.spec.adopt_non_empty)
            && k.found.busy.is_none()
            && !st.cleaning.contains_key(&k.found.key)
    }

    /// Whether the disk can serve `cap` (the kind-level checks of [`Backend::refusal`] passed).
    fn serves(&self, f: &Found, cap: &Capability) -> bool {
        match (&cap.access, f.sort) {
            (AccessType::Block, EntrySort::Block) => self.spec.volume_mode == VolumeMode::Block,
            (AccessType::Block, EntrySort::Mount) => false,
            (AccessType::Mount { .. }, EntrySort::Mount) => {
                capability::fs_type(cap).is_none_or(|want| f.fs_type.as_deref() == Some(want))
                    && capability::flags_refusal(cap, capability::DIRECTORY_MOUNT_FLAGS, "").is_none()
            }
            (AccessType::Mount { .. }, EntrySort::Block) => {
                self.spec.volume_mode == VolumeMode::Filesystem && self.spec.fs_type.is_some()
            }
        }
    }

    fn state_of(&self, st: &State, k: &Known) -> String {
        if let Some(c) = st.cleaning.get(&k.found.key) {
            return match (&c.error, c.running, k.present) {
                (Some(e), false, _) => format!("cleanup failed: {e}"),
                (_, true, _) if c.total > 0 => format!(
                    "cleaning ({}, {}%)",
                    self.spec.cleanup.name(),
                    c.done.saturating_mul(100) / c.total
                ),
                (_, true, _) if k.found.sort == EntrySort::Mount => "cleaning (emptying the mount)".into(),
                (_, true, _) => format!("cleaning ({})", self.spec.cleanup.name()),
                (_, false, false) => "missing; cleaned when it returns".into(),
                (_, false, true) => "to be cleaned".into(),
            };
        }
        if !k.present {
            return format!("missing (last seen at {})", k.found.path.display());
        }
        if let Some(b) = &k.found.busy {
            return format!("busy: {b}");
        }
        match &k.found.holds {
            Some(h) if !self.spec.adopt_non_empty => format!(
                "not adopted: {h}; empty it, or set adopt_non_empty = true for pool {}",
                self.pool
            ),
            _ => "free".into(),
        }
    }
}

fn attachment(found: Found) -> Result<Attachment> {
    Ok(match found.sort {
        EntrySort::Mount => Attachment::Directory(found.path),
        EntrySort::Block => {
            let rdev = std::fs::metadata(&found.device)
                .ctx(|| format!("inspecting {}", found.device.display()))?
                .rdev();
            Attachment::Device(Device {
                major: rustix::fs::major(rdev),
                minor: rustix::fs::minor(rdev),
                path: found.device,
            })
        }
    })
}

impl Backend for DeviceBackend {
    fn kind(&self) -> PoolKind {
        PoolKind::Device
    }

    fn enforces_size(&self) -> bool {
        true
    }

    fn refusal(&self, cap: &Capability) -> Option<Refusal> {
        let spec = &self.shared.spec;
        if let Some(r) = capability::mode_refusal(cap) {
            return Some(r);
        }
        match (&cap.access, spec.volume_mode) {
            (AccessType::Block, VolumeMode::Filesystem) => {
                return Some(Refusal::Unsupported(format!(
                    "device pool {} serves filesystem volumes (volume_mode = \"filesystem\"); block volumes need a \
                     device pool with volume_mode = \"block\", or an image pool",
                    spec.name
                )));
            }
            (AccessType::Mount { .. }, VolumeMode::Block) => {
                return Some(Refusal::Unsupported(format!(
                    "device pool {} serves raw block volumes (volume_mode = \"block\"); filesystem volumes need a \
                     device pool with volume_mode = \"filesystem\"",
                    spec.name
                )));
            }
            _ => {}
        }
        capability::fs_type_refusal(cap)
            .or_else(|| capability::flags_refusal(cap, capability::DEVICE_MOUNT_FLAGS, "device"))
    }

    fn volume_refusal(&self, v: &VolumeRef<'_>, cap: &Capability) -> Option<Refusal> {
        let claim = v.device?;
        (claim.sort == EntrySort::Mount)
            .then(|| capability::flags_refusal(cap, capability::DIRECTORY_MOUNT_FLAGS, "mounted-disk"))
            .flatten()
            .map(|r| {
                Refusal::Unsupported(format!(
                    "{}: the volume is a disk the admin mounted, bind-mounted as it is; set mount options where it \
                     is mounted",
                    r.message()
                ))
            })
    }

    fn entries(&self, caps: &[Capability]) -> Option<Vec<Offer>> {
        let sh = &self.shared;
        let st = sh.state();
        Some(
            st.known
                .values()
                .filter(|k| caps.iter().all(|c| sh.serves(&k.found, c)))
                .map(|k| Offer {
                    claim: DeviceClaim {
                        entry: k.found.key.clone(),
                        path: k.found.path.clone(),
                        sort: k.found.sort,
                    },
                    size: k.found.size,
                    fs_type: match k.found.sort {
                        EntrySort::Mount => k.found.fs_type.clone(),
                        EntrySort::Block => caps
                            .iter()
                            .find_map(capability::fs_type)
                            .map(str::to_owned)
                            .or_else(|| sh.spec.fs_type.clone()),
                    },
                    free: sh.is_free(&st, k),
                })
                .collect(),
        )
    }

    fn inventory(&self) -> Inventory {
        let sh = &self.shared;
        let st = sh.state();
        let mut entries: Vec<EntryStatus> = st
            .known
            .values()
            .map(|k| EntryStatus {
                key: k.found.key.clone(),
                path: k.found.path.clone(),
                size: k.found.size,
                state: sh.state_of(&st, k),
                free: sh.is_free(&st, k),
            })
            .collect();
        // Disks to be cleaned that have not shown since start-up.
        entries.extend(
            st.cleaning
                .iter()
                .filter(|(key, _)| !st.known.contains_key(*key))
                .map(|(key, c)| EntryStatus {
                    key: key.clone(),
                    path: c.note.claim.path.clone(),
                    size: 0,
                    state: "missing; cleaned when it returns".into(),
                    free: false,
                }),
        );
        Inventory {
            entries,
            skipped: st.skipped.clone(),
        }
    }

    fn rediscover(&self) {
        Shared::discover(&self.shared);
    }

    fn provision(&self, spec: &ProvisionSpec<'_>) -> Result<()> {
        let claim = spec
            .device
            .ok_or_else(|| Error::Precondition(format!("volume {} was given no disk", spec.stem)))?;
        // The disk is still the one chosen (a swap since the last discovery is caught here), and still holds
        // nothing that keeps it from being adopted (written to since).
        let found = self.locate(claim)?;
        let refused = match (&found.holds, &found.busy) {
            (_, Some(b)) => Some(format!("is busy: {b}")),
            (Some(h), None) if !self.shared.spec.adopt_non_empty => Some(format!("now {h}")),
            _ => None,
        };
        let Some(why) = refused else {
            return Ok(());
        };
        let key = found.key.clone();
        self.shared
            .state()
            .known
            .insert(key.clone(), Known { found, present: true });
        warn!(pool = %self.shared.pool, disk = %key, reason = %why, "disk no longer offered");
        Err(Error::Exhausted(format!(
            "pool {}: disk {key} {why}; it is no longer offered, try again",
            self.shared.pool
        )))
    }

    fn destroy(&self, v: &VolumeRef<'_>) -> Result<()> {
        let Some(claim) = v.device else {
            return Ok(());
        };
        let sh = &self.shared;
        let file = format!("{}.json", v.stem);
        let note = Note {
            volume: v.stem.to_owned(),
            claim: claim.clone(),
        };
        if sh.state().cleaning.contains_key(&claim.entry) {
            return Ok(());
        }
        let data = serde_json::to_vec_pretty(&note).expect("a cleaning note serializes");
        loam_sys::fs::write_atomic(&sh.cleaning_dir, &file, &data)
            .ctx(|| format!("writing cleaning note {}", sh.cleaning_dir.join(&file).display()))?;
        sh.state()
            .cleaning
            .insert(claim.entry.clone(), Cleaning::new(file, note));
        info!(pool = %sh.pool, disk = %claim.entry, "disk released; cleaning it before it is offered again");
        // Cleaning starts now, off this call.
        let me = sh.clone();
        std::thread::Builder::new()
            .name(format!("discover-{}", sh.pool))
            .spawn(move || Shared::discover(&me))
            .ctx(|| "starting the cleaning".into())?;
        Ok(())
    }

    fn abandon(&self, _v: &VolumeRef<'_>) -> Result<()> {
        // Nothing was written to the disk: the pool's hold on it is all there was.
        Ok(())
    }

    fn check(&self, v: &VolumeRef<'_>) -> Option<String> {
        let Some(claim) = v.device else {
            return Some("the volume's record names no disk".into());
        };
        let st = self.shared.state();
        match st.known.get(&claim.entry) {
            Some(k) if k.present => None,
            Some(k) => Some(format!(
                "its disk {} is missing (last seen at {})",
                claim.entry,
                k.found.path.display()
            )),
            None => Some(format!(
                "its disk {} is missing (it was at {})",
                claim.entry,
                claim.path.display()
            )),
        }
    }

    fn usage(&self, v: &VolumeRef<'_>) -> Result<Usage> {
        let claim = self.claim(v)?;
        if claim.sort == EntrySort::Block {
            return Ok(Usage {
                bytes: v.capacity_bytes,
                inodes: 0,
            });
        }
        let path = {
            let st = self.shared.state();
            st.known
                .get(&claim.entry)
                .map_or(claim.path.clone(), |k| k.found.path.clone())
        };
        let fs = self
            .shared
            .host
            .statfs(&path)
            .ctx(|| format!("measuring {}", path.display()))?;
        Ok(Usage {
            bytes: fs.total_bytes.saturating_sub(fs.free_bytes),
            inodes: fs.total_inodes.saturating_sub(fs.free_inodes),
        })
    }

    fn backings(&self) -> Result<Vec<String>> {
        Ok(vec![])
    }

    fn health(&self) -> Option<String> {
        self.shared
            .broken
            .clone()
            .or_else(|| self.shared.state().problem.clone())
    }

    fn attach(&self, v: &VolumeRef<'_>) -> Result<Attachment> {
        attachment(self.locate(self.claim(v)?)?)
    }

    /// From what discovery last saw, without probing the disk again (stats and unpublish ask this often).
    fn attached(&self, v: &VolumeRef<'_>) -> Result<Option<Attachment>> {
        let claim = self.claim(v)?;
        let found = {
            let st = self.shared.state();
            match st.known.get(&claim.entry) {
                Some(k) if k.present => k.found.clone(),
                _ => return Ok(None),
            }
        };
        attachment(found).map(Some)
    }

    fn detach(&self, _v: &VolumeRef<'_>) -> Result<()> {
        Ok(())
    }
}

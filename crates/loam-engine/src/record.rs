//! Durable per-volume records: one small JSON file per volume in its pool's `records/` directory, written to a
//! temp file, fsynced, renamed and the directory fsynced, so a crash leaves the old record or the new one.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::{
    error::{Error, IoContext, Result},
    id::VolumeId,
};

/// The version this build writes. Records gain fields additively (with defaults), so every version from
/// [`OLDEST_RECORD_VERSION`] up to this one reads correctly; a newer one, written by a later loam, is held back.
pub const RECORD_VERSION: u32 = 3;
pub const OLDEST_RECORD_VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VolumeState {
    /// Written before the backing is made; a record still in this state at start-up is rolled back.
    Creating,
    Ready,
    /// Written before the backing is removed; a record in this state at start-up is deleted to the end.
    Deleting,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeRecord {
    pub version: u32,
    pub id: String,
    pub name: String,
    pub pool: String,
    /// The node that created the volume (its full node ID, which the ID may only carry as a hash).
    pub node: String,
    pub capacity_bytes: u64,
    pub block: bool,
    /// The filesystem asked for at create, if any (version 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fs_type: Option<String>,
    /// The project ID of its directory, in pools that enforce sizes with project quota (version 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project_id: Option<u32>,
    /// The disk it was given, in device pools (version 3): written before anything else is done for the volume,
    /// so a disk is never given twice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<DeviceClaim>,
    pub parameters: BTreeMap<String, String>,
    pub state: VolumeState,
    pub created_unix: u64,
}

/// A device pool's disk, as a volume's record names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DeviceClaim {
    /// What identifies the disk across reboots and renames: `fs:<uuid>` for a mounted filesystem,
    /// `dev:<wwn or serial or loop backing>` or `by-id:<name>` for a block device.
    pub entry: String,
    /// Its path in the discovery directory when it was given.
    pub path: PathBuf,
    pub sort: EntrySort,
}

/// The two sorts of device-pool entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntrySort {
    /// A mounted filesystem: the whole mount is the volume.
    Mount,
    /// A block device.
    Block,
}

impl VolumeRecord {
    pub fn volume_id(&self) -> Result<VolumeId> {
        VolumeId::parse(&self.id)
    }

    /// What the backend needs to know of this volume, whose file stem is `stem`.
    pub fn backing<'a>(&'a self, stem: &'a str) -> crate::backend::VolumeRef<'a> {
        crate::backend::VolumeRef {
            stem,
            capacity_bytes: self.capacity_bytes,
            project_id: self.project_id,
            device: self.device.as_ref(),
        }
    }
}

/// A pool's `records/` directory.
#[derive(Debug, Clone)]
pub struct RecordStore {
    dir: PathBuf,
}

/// What `RecordStore::load_all` found: good records, and files it could not use (by file stem).
#[derive(Debug, Default)]
pub struct Loaded {
    pub records: Vec<VolumeRecord>,
    pub corrupt: Vec<(String, String)>,
}

impl RecordStore {
    pub fn new(dir: PathBuf) -> Self {
        RecordStore { dir }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn file_name(stem: &str) -> String {
        format!("{stem}.json")
    }

    pub fn save(&self, rec: &VolumeRecord) -> Result<()> {
        let id = rec.volume_id()?;
        let data = serde_json::to_vec_pretty(rec).map_err(|e| Error::Corrupt {
            path: self.dir.join(Self::file_name(&id.file_stem())),
            reason: e.to_string(),
        })?;
        loam_sys::fs::write_atomic(&self.dir, &Self::file_name(&id.file_stem()), &data)
            .ctx(|| format!("writing record of volume {}", rec.id))
    }

    pub fn remove(&self, id: &VolumeId) -> Result<()> {
        loam_sys::fs::remove_file_durable(&self.dir, &Self::file_name(&id.file_stem()))
            .ctx(|| format!("removing record of volume {id}"))
    }

    /// Reads every record. A file that does not parse, or whose content disagrees with its name or pool, is
    /// reported in `corrupt` and never stops the others from loading. Leftover temp files are removed.
    pub fn load_all(&self, pool: &str) -> Result<Loaded> {
        let mut out = Loaded::default();
        let entries = std::fs::read_dir(&self.dir).ctx(|| format!("reading {}", self.dir.display()))?;
        for entry in entries {
            let entry = entry.ctx(|| format!("reading {}", self.dir.display()))?;
            let fname = entry.file_name();
            let Some(fname) = fname.to_str() else {
                continue;
            };
            if fname.starts_with('.') && fname.ends_with(".tmp") {
                let _ = loam_sys::fs::remove_file_durable(&self.dir, fname);
                continue;
            }
            let Some(stem) = fname.strip_suffix(".json") else {
                continue;
            };
            match self.load_one(&entry.path(), stem, pool) {
                Ok(rec) => out.records.push(rec),
                Err(reason) => out.corrupt.push((stem.to_owned(), reason)),
            }
        }
        out.records.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    fn load_one(&self, path: &Path, stem: &str, pool: &str) -> std::result::Result<VolumeRecord, String> {
        let meta = std::fs::symlink_metadata(path).map_err(|e| e.to_string())?;
        if !meta.file_type().is_file() {
            return Err("not a regular file".into());
        }
        let data = std::fs::read(path).map_err(|e| e.to_string())?;
        let rec: VolumeRecord = serde_json::from_slice(&data).map_err(|e| format!("unreadable JSON: {e}"))?;
        if !(OLDEST_RECORD_VERSION..=RECORD_VERSION).contains(&rec.version) {
            return Err(format!(
                "record version {} is not one this loam reads ({OLDEST_RECORD_VERSION} to {RECORD_VERSION}); \
                 was it written by a newer loam?",
                rec.version
            ));
        }
        let id = rec.volume_id().map_err(|e| e.to_string())?;
        if id.file_stem() != stem {
            return Err(format!(
                "record names volume {} but is stored as {stem}.json",
                rec.id
            ));
        }
        if rec.pool != pool || id.pool != pool {
            return Err(format!(
                "record belongs to pool {}, found in pool {pool}",
                rec.pool
            ));
        }
        Ok(rec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(name: &str) -> VolumeRecord {
        VolumeRecord {
            version: RECORD_VERSION,
            id: VolumeId::new("n1", "default", name).to_string(),
            name: name.into(),
            pool: "default".into(),
            node: "n1".into(),
            capacity_bytes: 42,
            block: false,
            fs_type: None,
            project_id: None,
            device: None,
            parameters: BTreeMap::new(),
            state: VolumeState::Ready,
            created_unix: 1,
        }
    }

    #[test]
    fn a_device_claim_round_trips_and_version_2_records_have_none() {
        let d = tempfile::tempdir().unwrap();
        let store = RecordStore::new(d.path().to_owned());
        let mut want = rec("disk");
        want.device = Some(DeviceClaim {
            entry: "dev:wwn-0x5000c500a1b2c3d4".into(),
            path: "/mnt/disks/ssd/d1".into(),
            sort: EntrySort::Block,
        });
        store.save(&want).unwrap();
        let text = std::fs::read_to_string(
            d.path()
                .join(format!("{}.json", want.volume_id().unwrap().file_stem())),
        )
        .unwrap();
        assert!(text.contains(r#""sort": "block""#), "{text}");
        assert_eq!(store.load_all("default").unwrap().records, vec![want.clone()]);
        // What version 2 wrote (no device field) reads as a volume without a disk.
        let mut v2: serde_json::Value = serde_json::from_str(&text).unwrap();
        v2["version"] = 2.into();
        v2.as_object_mut().unwrap().remove("device");
        std::fs::write(
            d.path()
                .join(format!("{}.json", want.volume_id().unwrap().file_stem())),
            v2.to_string(),
        )
        .unwrap();
        let loaded = store.load_all("default").unwrap().records;
        assert_eq!(loaded[0].device, None);
        assert_eq!(loaded[0].version, 2);
    }

    #[test]
    fn records_of_the_previous_version_are_read_and_newer_ones_held_back() {
        let d = tempfile::tempdir().unwrap();
        let store = RecordStore::new(d.path().to_owned());
        let want = rec("old");
        let stem = want.volume_id().unwrap().file_stem();
        // Exactly what version 1 wrote: no fs_type field.
        let v1 = format!(
            r#"{{"version":1,"id":"{}","name":"old","pool":"default","node":"n1","capacity_bytes":42,
               "block":false,"parameters":{{}},"state":"ready","created_unix":1}}"#,
            want.id
        );
        std::fs::write(d.path().join(format!("{stem}.json")), v1).unwrap();
        let loaded = store.load_all("default").unwrap();
        assert_eq!(
            loaded.records,
            vec![VolumeRecord {
                version: 1,
                ..want.clone()
            }]
        );
        let v9 = serde_json::to_vec(&VolumeRecord { version: 9, ..want }).unwrap();
        std::fs::write(d.path().join(format!("{stem}.json")), v9).unwrap();
        let loaded = store.load_all("default").unwrap();
        assert!(loaded.corrupt[0].1.contains("newer loam"), "{:?}", loaded.corrupt);
    }

    #[test]
    fn save_load_remove() {
        let d = tempfile::tempdir().unwrap();
        let store = RecordStore::new(d.path().to_owned());
        let (a, b) = (rec("a"), rec("b"));
        store.save(&a).unwrap();
        store.save(&b).unwrap();
        let loaded = store.load_all("default").unwrap();
        assert!(loaded.corrupt.is_empty());
        let mut want = vec![a.clone(), b];
        want.sort_by(|x, y| x.id.cmp(&y.id));
        assert_eq!(loaded.records, want);
        store.remove(&a.volume_id().unwrap()).unwrap();
        assert_eq!(store.load_all("default").unwrap().records.len(), 1);
    }

    #[test]
    fn corrupt_records_are_isolated() {
        let d = tempfile::tempdir().unwrap();
        let store = RecordStore::new(d.path().to_owned());
        let good = rec("good");
        store.save(&good).unwrap();
        std::fs::write(
            d.path().join("0123456789abcdef0123456789abcdef.json"),
            b"{not json",
        )
        .unwrap();
        // A valid record stored under another volume's name.
        let other = rec("other");
        std::fs::write(
            d.path().join("ffffffffffffffffffffffffffffffff.json"),
            serde_json::to_vec(&other).unwrap(),
        )
        .unwrap();
        std::fs::write(d.path().join(".x.json.tmp"), b"partial").unwrap();
        let loaded = store.load_all("default").unwrap();
        assert_eq!(loaded.records, vec![good]);
        let mut stems: Vec<_> = loaded.corrupt.iter().map(|(s, _)| s.as_str()).collect();
        stems.sort();
        assert_eq!(
            stems,
            [
                "0123456789abcdef0123456789abcdef",
                "ffffffffffffffffffffffffffffffff"
            ]
        );
        assert!(
            !d.path().join(".x.json.tmp").exists(),
            "temp files are cleaned up"
        );
        // Wrong pool.
        assert!(store.load_all("other").unwrap().records.is_empty());
    }
}

//! Notes on the mounts loam made at staging and target paths: the volume and the capability each was asked for.
//! A path says itself whether it shows a volume (see `Host::mounted_at`); a note says how it was asked for, so a
//! repeat with other arguments is refused (ALREADY_EXISTS, as CSI asks) instead of being accepted because the
//! mount looks the same, and which paths to ask when the question is where a volume is mounted (before unstage,
//! delete, or a second publication), so that no call reads the whole mount table.
//!
//! They are kept in memory, indexed by path and by volume, and every change is appended as one JSON line to
//! `notes.log`, never flushed: a restarted process replays it from the page cache, and after a power loss the
//! mounts the notes describe are gone too (start-up drops notes of paths that are not mounted). A torn last line
//! is skipped. The log is rewritten with only the live notes at start-up and whenever it has grown to several
//! times their number.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fs::File,
    io::{BufRead, Write},
    path::{Path, PathBuf},
    sync::{Mutex, MutexGuard},
};

use loam_sys::mountinfo::MountTable;
use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::{
    error::{IoContext, Result},
    types::Capability,
};

/// The journal of note changes in the notes directory.
pub const LOG_FILE: &str = "notes.log";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountNote {
    pub volume_id: String,
    pub path: PathBuf,
    pub capability: Capability,
    pub read_only: bool,
}

/// One line of the log.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Change {
    Put(MountNote),
    Remove(PathBuf),
}

#[derive(Debug, Default)]
struct Index {
    by_path: HashMap<PathBuf, MountNote>,
    by_volume: BTreeMap<String, BTreeSet<PathBuf>>,
}

impl Index {
    fn insert(&mut self, note: MountNote) {
        self.unlink(&note.path);
        self.by_volume
            .entry(note.volume_id.clone())
            .or_default()
            .insert(note.path.clone());
        self.by_path.insert(note.path.clone(), note);
    }

    fn unlink(&mut self, path: &Path) -> Option<MountNote> {
        let old = self.by_path.remove(path)?;
        if let Some(paths) = self.by_volume.get_mut(&old.volume_id) {
            paths.remove(path);
            if paths.is_empty() {
                self.by_volume.remove(&old.volume_id);
            }
        }
        Some(old)
    }
}

#[derive(Debug)]
struct State {
    index: Index,
    /// The log, opened for appending; `None` after it could not be written (changes then stay in memory until
    /// the next rewrite succeeds).
    log: Option<File>,
    /// Lines appended since the log was last rewritten.
    appended: usize,
}

#[derive(Debug)]
pub struct Notes {
    dir: PathBuf,
    state: Mutex<State>,
}

/// Lines the log may gain past the live notes before it is rewritten.
const SLACK_LINES: usize = 4096;

impl Notes {
    /// Opens (creating if needed) the notes directory, replays its log and rewrites it with the live notes. A line
    /// that cannot be used is skipped (notes are hints). Per-path note files of earlier versions are read and
    /// removed.
    pub fn open(dir: PathBuf) -> Result<Notes> {
        std::fs::create_dir_all(&dir).ctx(|| format!("creating {}", dir.display()))?;
        let mut index = Index::default();
        let mut old_files = Vec::new();
        for entry in std::fs::read_dir(&dir).ctx(|| format!("reading {}", dir.display()))? {
            let entry = entry.ctx(|| format!("reading {}", dir.display()))?;
            let name = entry.file_name();
            if name.to_str().is_some_and(|n| n.ends_with(".json")) {
                if let Some(n) = std::fs::read(entry.path())
                    .ok()
                    .and_then(|d| serde_json::from_slice::<MountNote>(&d).ok())
                {
                    index.insert(n);
                }
                old_files.push(entry.path());
            }
        }
        let log_path = dir.join(LOG_FILE);
        match File::open(&log_path) {
            Ok(f) => {
                for (n, line) in std::io::BufReader::new(f).split(b'\n').enumerate() {
                    let line = line.ctx(|| format!("reading {}", log_path.display()))?;
                    match serde_json::from_slice::<Change>(&line) {
                        Ok(Change::Put(note)) => index.insert(note),
                        Ok(Change::Remove(path)) => {
                            index.unlink(&path);
                        }
                        Err(e) => warn!(file = %log_path.display(), line = n + 1, error = %e,
                                        "skipping an unreadable line of the mount notes"),
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).ctx(|| format!("reading {}", log_path.display())),
        }
        let notes = Notes {
            dir,
            state: Mutex::new(State {
                index,
                log: None,
                appended: 0,
            }),
        };
        {
            let mut st = notes.state();
            notes
                .rewrite(&mut st)
                .ctx(|| format!("rewriting {}", log_path.display()))?;
        }
        for f in old_files {
            let _ = std::fs::remove_file(f);
        }
        Ok(notes)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Replaces the log with one line per live note, and opens it for appending.
    fn rewrite(&self, st: &mut State) -> std::io::Result<()> {
        let mut data = Vec::new();
        for note in st.index.by_path.values() {
            serde_json::to_writer(&mut data, &Change::Put(note.clone()))?;
            data.push(b'\n');
        }
        st.log = None;
        loam_sys::fs::write_replace(&self.dir, LOG_FILE, &data)?;
        st.log = Some(
            std::fs::OpenOptions::new()
                .append(true)
                .open(self.dir.join(LOG_FILE))?,
        );
        st.appended = 0;
        Ok(())
    }

    /// Appends one change; a log that cannot be written is logged and rewritten at the next change.
    fn append(&self, st: &mut State, change: &Change) {
        let written = (|| {
            if st.log.is_none() || st.appended > st.index.by_path.len().saturating_mul(3) + SLACK_LINES {
                return self.rewrite(st);
            }
            let mut line = serde_json::to_vec(change)?;
            line.push(b'\n');
            st.log.as_mut().expect("checked above").write_all(&line)?;
            st.appended += 1;
            Ok(())
        })();
        if let Err(e) = written {
            warn!(file = %self.dir.join(LOG_FILE).display(), error = %e, "could not write the mount notes");
            st.log = None;
        }
    }

    pub fn get(&self, path: &Path) -> Option<MountNote> {
        self.state().index.by_path.get(path).cloned()
    }

    /// Every path noted for `volume_id`.
    pub fn paths_of(&self, volume_id: &str) -> Vec<PathBuf> {
        self.state()
            .index
            .by_volume
            .get(volume_id)
            .map(|p| p.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Every volume some note is for.
    pub fn volumes(&self) -> Vec<String> {
        self.state().index.by_volume.keys().cloned().collect()
    }

    /// How many notes there are.
    pub fn len(&self) -> usize {
        self.state().index.by_path.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Records how `note.path` was mounted.
    pub fn put(&self, note: &MountNote) {
        let mut st = self.state();
        st.index.insert(note.clone());
        self.append(&mut st, &Change::Put(note.clone()));
    }

    pub fn remove(&self, path: &Path) {
        let mut st = self.state();
        if st.index.unlink(path).is_some() {
            self.append(&mut st, &Change::Remove(path.to_owned()));
        }
    }

    /// Drops notes whose path is no longer a mount point (after a reboot, or a manual unmount).
    pub fn prune(&self, table: &MountTable) -> usize {
        let mut st = self.state();
        let gone: Vec<PathBuf> = st
            .index
            .by_path
            .keys()
            .filter(|p| !table.is_mount_point(p))
            .cloned()
            .collect();
        for path in &gone {
            st.index.unlink(path);
            self.append(&mut st, &Change::Remove(path.clone()));
        }
        gone.len()
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
        assert_eq!(notes.prune(&table), 1);
        assert_eq!(notes.get(&root.path), Some(root));
        assert_eq!(notes.get(&a.path), None);
    }

    fn lines(dir: &Path) -> usize {
        std::fs::read(dir.join(LOG_FILE))
            .unwrap()
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
    }

    #[test]
    fn the_log_replays_across_a_restart_and_skips_a_torn_line() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("notes");
        let notes = Notes::open(dir.clone()).unwrap();
        let a = note("/t/a", AccessMode::SingleNodeWriter);
        let mut b = note("/t/b", AccessMode::MultiNodeMultiWriter);
        b.volume_id = "n_default_11111111111111111111111111111111".into();
        let c = note("/t/c", AccessMode::SingleNodeWriter);
        notes.put(&a);
        notes.put(&b);
        notes.put(&c);
        notes.remove(&c.path);
        assert_eq!(notes.paths_of(&a.volume_id), vec![a.path.clone()]);
        assert_eq!(notes.paths_of(&b.volume_id), vec![b.path.clone()]);
        drop(notes);
        // A crash in the middle of an append leaves a partial line.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(dir.join(LOG_FILE))
            .unwrap();
        f.write_all(br#"{"put":{"volume_id":"n_def"#).unwrap();
        drop(f);
        let notes = Notes::open(dir.clone()).unwrap();
        assert_eq!(notes.len(), 2);
        assert_eq!(notes.get(&a.path), Some(a.clone()));
        assert_eq!(notes.get(&b.path), Some(b));
        assert_eq!(notes.get(&c.path), None);
        // Rewritten at start-up: one line per live note.
        assert_eq!(lines(&dir), 2);
        // Moving a path to another volume leaves it under that volume only.
        let mut moved = a.clone();
        moved.volume_id = "n_default_22222222222222222222222222222222".into();
        notes.put(&moved);
        assert!(notes.paths_of(&a.volume_id).is_empty());
        assert_eq!(notes.paths_of(&moved.volume_id), vec![a.path.clone()]);
    }

    #[test]
    fn the_log_is_rewritten_before_it_grows_without_bound() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("notes");
        let notes = Notes::open(dir.clone()).unwrap();
        let keep = note("/t/keep", AccessMode::SingleNodeWriter);
        notes.put(&keep);
        for i in 0..(SLACK_LINES * 3) {
            let n = note(&format!("/t/{i}"), AccessMode::SingleNodeWriter);
            notes.put(&n);
            notes.remove(&n.path);
        }
        assert!(lines(&dir) <= SLACK_LINES + 8, "{} lines", lines(&dir));
        drop(notes);
        let notes = Notes::open(dir).unwrap();
        assert_eq!(notes.len(), 1);
        assert_eq!(notes.get(&keep.path), Some(keep));
    }

    #[test]
    fn note_files_of_earlier_versions_are_read_and_removed() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("notes");
        std::fs::create_dir_all(&dir).unwrap();
        let a = note("/t/a", AccessMode::SingleNodeWriter);
        std::fs::write(dir.join("0123abcd.json"), serde_json::to_vec(&a).unwrap()).unwrap();
        std::fs::write(dir.join("bad.json"), b"{").unwrap();
        let notes = Notes::open(dir.clone()).unwrap();
        assert_eq!(notes.get(&a.path), Some(a));
        let left: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from(LOG_FILE)]);
    }
}

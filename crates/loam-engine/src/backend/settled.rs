//! What each volume that nothing can write to now has written, as last measured, so that a pool's capacity sums
//! memory instead of asking the filesystem about every volume (see [`super::Backend::written_live`]).

use std::{
    collections::HashMap,
    sync::{
        Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
};

#[derive(Debug, Default)]
pub(crate) struct Settled {
    bytes: Mutex<HashMap<String, u64>>,
    /// Bumped on every change (see [`super::Backend::written_generation`]).
    generation: AtomicU64,
}

impl Settled {
    fn map(&self) -> MutexGuard<'_, HashMap<String, u64>> {
        self.bytes.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get(&self, stem: &str) -> Option<u64> {
        self.map().get(stem).copied()
    }

    pub fn set(&self, stem: &str, bytes: u64) {
        if self.map().insert(stem.to_owned(), bytes) != Some(bytes) {
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
    }

    pub fn forget(&self, stem: &str) {
        if self.map().remove(stem).is_some() {
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generation_moves_only_when_a_note_changes() {
        let s = Settled::default();
        let g0 = s.generation();
        s.set("a", 10);
        let g1 = s.generation();
        assert!(g1 > g0);
        s.set("a", 10);
        assert_eq!(s.generation(), g1, "the same value again");
        s.forget("b");
        assert_eq!(s.generation(), g1, "nothing to forget");
        s.forget("a");
        assert!(s.generation() > g1);
        assert_eq!(s.get("a"), None);
    }
}

//! Per-volume operation guards. A second operation on a busy key fails at once (ABORTED) instead of
//! queueing, as CSI allows; different keys never wait on each other.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
};

use crate::error::{Error, Result};

#[derive(Debug, Default, Clone)]
pub struct LockTable {
    held: Arc<Mutex<HashSet<String>>>,
}

/// Releases its key when dropped, also on early return or panic.
#[derive(Debug)]
pub struct OpGuard {
    table: LockTable,
    key: String,
}

impl LockTable {
    pub fn try_lock(&self, key: &str) -> Result<OpGuard> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if !held.insert(key.to_owned()) {
            return Err(Error::Busy(key.to_owned()));
        }
        Ok(OpGuard {
            table: self.clone(),
            key: key.to_owned(),
        })
    }

    pub fn held(&self) -> usize {
        self.held.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

impl Drop for OpGuard {
    fn drop(&mut self) {
        self.table
            .held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_on_same_key_is_busy_until_release() {
        let t = LockTable::default();
        let g = t.try_lock("a").unwrap();
        assert!(matches!(t.try_lock("a"), Err(Error::Busy(k)) if k == "a"));
        let _b = t.try_lock("b").expect("other keys are independent");
        drop(g);
        assert!(t.try_lock("a").is_ok());
    }

    #[test]
    fn guard_released_on_panic() {
        let t = LockTable::default();
        let t2 = t.clone();
        let r = std::panic::catch_unwind(move || {
            let _g = t2.try_lock("x").unwrap();
            panic!("boom");
        });
        assert!(r.is_err());
        assert_eq!(t.held(), 0);
        assert!(t.try_lock("x").is_ok());
    }
}

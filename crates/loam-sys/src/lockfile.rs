//! Exclusive lock files: one `loam serve` per data directory and per pool.
//!
//! The lock is an `flock` on the file, so it is released by the kernel when the holder exits, also on a crash:
//! a stale file never blocks a restart. The holder writes its pid into the file so a second server can name it.

use std::{
    fs::File,
    io::{self, Read, Seek, Write},
    os::unix::fs::OpenOptionsExt,
    path::Path,
};

use rustix::fs::{FlockOperation, flock};

/// Held for as long as it lives.
#[derive(Debug)]
pub struct LockFile {
    _file: File,
}

impl LockFile {
    /// Takes the exclusive lock on `path` (created 0600 if missing) without waiting. When another process holds
    /// it, the error is of kind [`io::ErrorKind::WouldBlock`] and names the holder's pid.
    pub fn acquire(path: &Path) -> io::Result<LockFile> {
        let mut file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| crate::context(e, format!("opening lock file {}", path.display())))?;
        if let Err(e) = flock(&file, FlockOperation::NonBlockingLockExclusive) {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            let who = if holder.is_empty() {
                "another process".to_owned()
            } else {
                format!("process {holder}")
            };
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!("{} is locked by {who} ({e})", path.display()),
            ));
        }
        file.set_len(0)?;
        file.rewind()?;
        write!(file, "{}", std::process::id())?;
        Ok(LockFile { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_fails_naming_the_holder_until_released() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.lock");
        let held = LockFile::acquire(&p).unwrap();
        // flock locks belong to the open file description, so a second open in this process conflicts too.
        let e = LockFile::acquire(&p).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        assert!(
            e.to_string().contains(&format!("process {}", std::process::id())),
            "{e}"
        );
        drop(held);
        LockFile::acquire(&p).unwrap();
    }
}

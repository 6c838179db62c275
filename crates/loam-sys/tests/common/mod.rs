//! What the tests on real devices and filesystems share: how they attach their images, a guard for a loop
//! device, the tools they need, and writing and committing data.

// Each test binary uses a different subset of the helpers.
#![allow(dead_code)]

use std::{
    fs,
    io::{self, Write},
    path::{Path, PathBuf},
};

use loam_sys::{
    loopdev::{LoopConfig, LoopDevice, detach},
    testutil::{require_root, skip},
};

pub const MIB: u64 = 1 << 20;

/// How the tests attach their images: direct I/O, 4096-byte blocks, read-write.
pub const CONFIG: LoopConfig = LoopConfig {
    direct_io: true,
    block_size: 4096,
    read_only: false,
};

/// Detaches its loop device on drop.
pub struct Attached(pub LoopDevice);

impl Drop for Attached {
    fn drop(&mut self) {
        if let Err(e) = detach(&self.0) {
            let _ = writeln!(io::stderr(), "leaking {}: {e}", self.0.path.display());
        }
    }
}

/// Whether `program` is on the PATH.
pub fn installed(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|p| p.join(program).is_file()))
}

/// Whether `test` can run: as root, with `program` (from `package`) installed. Says why not (see [`skip`]).
pub fn root_with(test: &str, program: &str, package: &str) -> bool {
    if !require_root(test) {
        return false;
    }
    if !installed(program) {
        skip(test, &format!("{program} ({package}) is not installed"));
        return false;
    }
    true
}

/// Writes `len` bytes of non-zero data to a new file `path` and fsyncs it;
/// on error, how many bytes the file holds.
pub fn write_file(path: &Path, len: u64) -> Result<(), (io::Error, u64)> {
    let mut f = fs::File::create_new(path).map_err(|e| (e, 0))?;
    let chunk = vec![0x5a_u8; MIB as usize];
    let mut left = len;
    let result = (|| {
        while left > 0 {
            let n = left.min(MIB) as usize;
            f.write_all(&chunk[..n])?;
            left -= n as u64;
        }
        f.sync_all()
    })();
    result.map_err(|e| {
        let held = f.metadata().map_or(0, |m| m.len());
        (e, held)
    })
}

/// Commits the filesystem holding `path` (syncfs(2)), so that its usage and quota numbers are current.
pub fn syncfs(path: &Path) {
    let dir = fs::File::open(path).unwrap();
    rustix::fs::syncfs(&dir).unwrap();
}

/// A temporary directory by its canonical path, as the mount table and sysfs show it; `None` = skip (not root).
pub fn setup(test: &str) -> Option<(tempfile::TempDir, PathBuf)> {
    if !require_root(test) {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().canonicalize().unwrap();
    Some((dir, path))
}

/// Creates the sparse file `dir/name` of `size` bytes.
pub fn image(dir: &Path, name: &str, size: u64) -> PathBuf {
    let path = dir.join(name);
    fs::File::create_new(&path).unwrap().set_len(size).unwrap();
    path
}

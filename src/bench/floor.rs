//! The floor: the filesystem, mount and loop work of one volume's full cycle done directly, with no driver in
//! between, so a driver's speed can be told as a fraction of what the machine can do.
//!
//! - `dir`: mkdir the volume, write one durable record (temp file, fsync, rename, fsync the directory), mkdir
//!   the staging dir and bind the volume there, bind it on to the target, then unmount both, rmdir all three and
//!   remove the record durably.
//! - `image`: the same record, and a file of the volume's size (fallocated), attached to a loop device with the
//!   ioctls, formatted ext4 and mounted at staging (mount access) or bound raw (block access), bound to the target,
//!   then unmounted, detached and removed.
//!
//! Everything runs in the caller's mount namespace, like the driver's work, and what a cycle made is undone also
//! when one of its steps fails.

use std::{
    io,
    path::{Path, PathBuf},
};

use loam_sys::{
    fs::{remove_file_durable, write_atomic},
    loopdev::{self, LoopConfig},
    mkfs, mount,
};

/// What the floor does, matching the pool kind under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FloorKind {
    Dir,
    Image,
}

impl FloorKind {
    pub fn name(self) -> &'static str {
        match self {
            FloorKind::Dir => "dir",
            FloorKind::Image => "image",
        }
    }
}

/// One cycle's work in directory `root` (on the pool's filesystem).
#[derive(Debug, Clone)]
pub struct Floor {
    pub kind: FloorKind,
    pub root: PathBuf,
    pub block: bool,
    pub size: u64,
}

/// Undoes, in reverse order, what a cycle did so far.
#[derive(Default)]
struct Undo(Vec<Box<dyn FnOnce() -> io::Result<()>>>);

impl Undo {
    fn push(&mut self, f: impl FnOnce() -> io::Result<()> + 'static) {
        self.0.push(Box::new(f));
    }

    /// Runs every step, the last pushed first; the first failure is returned after all have run.
    fn run(&mut self) -> io::Result<()> {
        let mut first = Ok(());
        while let Some(f) = self.0.pop() {
            if let Err(e) = f()
                && first.is_ok()
            {
                first = Err(e);
            }
        }
        first
    }
}

impl Undo {
    fn made_dir(&mut self, path: &Path) -> io::Result<()> {
        std::fs::create_dir(path)
            .map_err(|e| io::Error::new(e.kind(), format!("mkdir {}: {e}", path.display())))?;
        let p = path.to_owned();
        self.push(move || std::fs::remove_dir(&p));
        Ok(())
    }

    fn made_file(&mut self, path: &Path) -> io::Result<()> {
        std::fs::File::create_new(path)?;
        let p = path.to_owned();
        self.push(move || std::fs::remove_file(&p));
        Ok(())
    }

    fn bound(&mut self, source: &Path, target: &Path) -> io::Result<()> {
        mount::bind(source, target, false)?;
        let p = target.to_owned();
        self.push(move || mount::unmount(&p));
        Ok(())
    }
}

impl Drop for Undo {
    fn drop(&mut self) {
        let _ = self.run();
    }
}

impl Floor {
    /// Makes the directories the cycles work in.
    pub fn prepare(&self) -> io::Result<()> {
        for d in ["volumes", "records", "staging", "targets"] {
            std::fs::create_dir_all(self.root.join(d))?;
        }
        Ok(())
    }

    /// One full cycle for volume `name`.
    pub fn cycle(&self, name: &str) -> io::Result<()> {
        let mut undo = Undo::default();
        let records = self.root.join("records");
        let record = format!("{name}.json");
        let data = format!(
            r#"{{"name":"{name}","capacity_bytes":{},"state":"ready"}}"#,
            self.size
        );
        write_atomic(&records, &record, data.as_bytes())?;
        undo.push(move || remove_file_durable(&records, &record));
        let staging = self.root.join("staging").join(name);
        undo.made_dir(&staging)?;
        let target = self.root.join("targets").join(name);
        match self.kind {
            FloorKind::Dir => {
                let vol = self.root.join("volumes").join(name);
                undo.made_dir(&vol)?;
                undo.bound(&vol, &staging)?;
                undo.made_dir(&target)?;
                undo.bound(&staging, &target)?;
            }
            FloorKind::Image => {
                let file = self.root.join("volumes").join(format!("{name}.img"));
                make_image(&file, self.size)?;
                let f = file.clone();
                undo.push(move || std::fs::remove_file(&f));
                let cfg = LoopConfig {
                    direct_io: true,
                    block_size: 4096,
                    read_only: false,
                };
                let dev = loopdev::attach(&file, &cfg)?;
                let d = dev.clone();
                undo.push(move || loopdev::detach(&d));
                if self.block {
                    let node = staging.join("dev");
                    undo.made_file(&node)?;
                    undo.bound(&dev.path, &node)?;
                    undo.made_file(&target)?;
                    undo.bound(&dev.path, &target)?;
                } else {
                    mkfs::make(&dev.path, "ext4")?;
                    mount::mount_fs(&dev.path, &staging, "ext4", &[], false)?;
                    let s = staging.clone();
                    undo.push(move || mount::unmount(&s));
                    undo.made_dir(&target)?;
                    undo.bound(&staging, &target)?;
                }
            }
        }
        undo.run()
    }
}

/// A fully allocated image file of `size` bytes, flushed.
fn make_image(path: &Path, size: u64) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.set_len(size)?;
    rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, size)?;
    file.sync_all()
}

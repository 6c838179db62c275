//! Filesystem statistics, for capacity reporting (`GetCapacity`,
//! `NodeGetVolumeStats`).

use std::{io, path::Path};

/// Space and inode counts of the filesystem holding a path, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsStats {
    /// The fundamental block size (`f_frsize`) that the counts are based on.
    pub block_size: u64,
    /// Size of the filesystem.
    pub total_bytes: u64,
    /// Free space, including blocks reserved for root.
    pub free_bytes: u64,
    /// Free space available to unprivileged users.
    pub available_bytes: u64,
    /// Total inodes (0 on filesystems without a fixed inode table).
    pub total_inodes: u64,
    /// Free inodes.
    pub free_inodes: u64,
    /// Mounted read-only.
    pub read_only: bool,
}

/// `statvfs(path)`, converted to bytes.
pub fn statfs(path: &Path) -> io::Result<FsStats> {
    let st =
        rustix::fs::statvfs(path).map_err(|e| crate::context(e, format!("statfs {}", path.display())))?;
    // Block counts are in units of f_frsize; f_bsize is only the preferred
    // I/O size. Some old filesystems report f_frsize as 0.
    let block_size = if st.f_frsize != 0 { st.f_frsize } else { st.f_bsize };
    Ok(FsStats {
        block_size,
        total_bytes: st.f_blocks.saturating_mul(block_size),
        free_bytes: st.f_bfree.saturating_mul(block_size),
        available_bytes: st.f_bavail.saturating_mul(block_size),
        total_inodes: st.f_files,
        free_inodes: st.f_ffree,
        read_only: st.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statfs_of_temp_dir_is_consistent() {
        let dir = tempfile::tempdir().unwrap();
        let st = statfs(dir.path()).unwrap();
        assert!(st.block_size > 0);
        assert!(st.total_bytes > 0);
        assert!(st.free_bytes <= st.total_bytes);
        assert!(st.available_bytes <= st.free_bytes);
        assert!(st.free_inodes <= st.total_inodes);
        assert_eq!(st.total_bytes % st.block_size, 0);
    }

    #[test]
    fn statfs_of_missing_path_names_it() {
        let err = statfs(Path::new("/nonexistent/loam-test")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(err.to_string().contains("/nonexistent/loam-test"), "{err}");
    }
}

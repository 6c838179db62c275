//! Block device queries: size and logical block size.

use std::{io, os::fd::OwnedFd, path::Path};

use rustix::{
    fs::{Mode, OFlags, ioctl_blksszget, open},
    ioctl::{Getter, Opcode, ioctl, opcode},
};

/// `BLKGETSIZE64` of linux/fs.h: `_IOR(0x12, 114, size_t)`. The `size_t` is a
/// historical mistake kept for compatibility; the kernel writes a `u64`.
const BLKGETSIZE64: Opcode = opcode::read::<usize>(0x12, 114);

fn open_device(device: &Path) -> io::Result<OwnedFd> {
    open(device, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| crate::context(e, format!("opening {}", device.display())))
}

/// Size of the block device `device` in bytes (`BLKGETSIZE64`).
///
/// Anything but a block device is an error (`ENOTTY`).
pub fn size_bytes(device: &Path) -> io::Result<u64> {
    let fd = open_device(device)?;
    // SAFETY: BLKGETSIZE64 writes one u64 through its argument and nothing
    // else; Getter passes a pointer to a u64 it owns.
    unsafe { ioctl(&fd, Getter::<BLKGETSIZE64, u64>::new()) }.map_err(|e| {
        crate::context(
            e,
            format!("getting the size of {} (BLKGETSIZE64)", device.display()),
        )
    })
}

/// Logical block size of the block device `device` in bytes (`BLKSSZGET`):
/// the smallest unit it can address.
pub fn logical_block_size(device: &Path) -> io::Result<u32> {
    let fd = open_device(device)?;
    ioctl_blksszget(&fd).map_err(|e| {
        crate::context(
            e,
            format!(
                "getting the logical block size of {} (BLKSSZGET)",
                device.display()
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blkgetsize64_opcode_is_the_kernels() {
        #[cfg(target_arch = "x86_64")]
        assert_eq!(BLKGETSIZE64, 0x8008_1272);
    }

    #[test]
    fn regular_file_is_not_a_block_device() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let err = size_bytes(file.path()).unwrap_err();
        assert_eq!(crate::os_error(&err), Some(libc::ENOTTY), "{err}");
        assert!(err.to_string().contains(&*file.path().to_string_lossy()), "{err}");
        let err = logical_block_size(file.path()).unwrap_err();
        assert_eq!(crate::os_error(&err), Some(libc::ENOTTY), "{err}");
    }

    #[test]
    fn missing_device_names_it() {
        let err = size_bytes(Path::new("/nonexistent/loam-dev")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(err.to_string().contains("/nonexistent/loam-dev"), "{err}");
    }
}

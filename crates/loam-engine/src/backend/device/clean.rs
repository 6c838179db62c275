//! Cleaning a disk before it is offered again: the pool's method for a block device, removing everything below
//! the mount for a mount point.

use std::{io, path::Path};

use loam_sys::host::Host;

use crate::spec::Cleanup;

/// Cleans block device `device` with `method`, reporting `(done, total)` bytes; says what it did.
///
/// `discard` falls back to zeroing where the device cannot discard, gives no sign that discarded blocks read
/// back as zeros, or still reads old data in a sample afterwards: with it, nothing the previous volume wrote is
/// readable by the next.
pub fn block(
    host: &dyn Host,
    device: &Path,
    method: Cleanup,
    progress: &mut dyn FnMut(u64, u64),
) -> io::Result<String> {
    match method {
        Cleanup::ZeroHeader => {
            host.wipe_signatures(device)?;
            Ok("signatures wiped (zero-header: the old data is still readable)".into())
        }
        Cleanup::Zero => {
            host.zero(device, progress)?;
            Ok("zeroed".into())
        }
        Cleanup::Discard => {
            match host.discard(device, progress) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Unsupported => {
                    host.zero(device, progress)?;
                    return Ok("zeroed (the device does not support discard)".into());
                }
                Err(e) => return Err(e),
            }
            if !host.discard_zeroes(device)? {
                host.zero(device, progress)?;
                return Ok(
                    "discarded, then zeroed (the device gives no sign that discarded blocks read as zeros)"
                        .into(),
                );
            }
            if let Some(at) = host.first_nonzero(device)? {
                host.zero(device, progress)?;
                return Ok(format!(
                    "discarded, then zeroed (discarded blocks still read old data, at byte {at})"
                ));
            }
            Ok("discarded".into())
        }
    }
}

/// Removes everything below mount point `root` but its `lost+found` directory, whose contents go too. Symlinks
/// are removed, never followed, and nothing is removed across another mount (that is an error).
pub fn mount(root: &Path) -> io::Result<usize> {
    let mut removed = 0;
    for entry in std::fs::read_dir(root)? {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: a name that is not UTF-8", root.display()),
            ));
        };
        if name == "lost+found" && loam_sys::fs::is_dir_no_follow(&root.join(name)) {
            removed += mount(&root.join(name))?;
            continue;
        }
        loam_sys::fs::remove_tree_beneath(root, name)?;
        removed += 1;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use loam_sys::fake::{FakeDevice, FakeHost};

    use super::*;

    fn host_with(dev: FakeDevice) -> FakeHost {
        let host = FakeHost::new();
        host.add_device(Path::new("/dev/sdx"), FakeDevice { dirty: true, ..dev });
        host
    }

    fn clean(host: &FakeHost, method: Cleanup) -> String {
        let mut seen = Vec::new();
        let did = block(host, Path::new("/dev/sdx"), method, &mut |d, t| seen.push((d, t))).unwrap();
        assert!(
            seen.iter().all(|(d, t)| d <= t),
            "progress never passes the total: {seen:?}"
        );
        did
    }

    #[test]
    fn discard_alone_when_the_device_reads_zeros_after_it() {
        let host = host_with(FakeDevice {
            size: 1 << 20,
            discard: true,
            discard_zeroes: true,
            ..FakeDevice::default()
        });
        assert_eq!(clean(&host, Cleanup::Discard), "discarded");
        assert!(host.calls_of("zero").is_empty());
        assert!(!host.device(Path::new("/dev/sdx")).unwrap().dirty);
    }

    #[test]
    fn discard_falls_back_to_zeroing_whenever_old_data_could_stay_readable() {
        // No discard at all.
        let host = host_with(FakeDevice {
            size: 1 << 20,
            ..FakeDevice::default()
        });
        assert!(clean(&host, Cleanup::Discard).contains("does not support discard"));
        assert_eq!(host.calls_of("zero").len(), 1);
        // Discard, but no sign that it zeroes.
        let host = host_with(FakeDevice {
            size: 1 << 20,
            discard: true,
            ..FakeDevice::default()
        });
        assert!(clean(&host, Cleanup::Discard).contains("no sign"));
        assert_eq!(host.calls_of("zero").len(), 1);
        // The sign, but the sample still reads old data.
        let host = host_with(FakeDevice {
            size: 1 << 20,
            discard: true,
            discard_zeroes: true,
            discard_keeps_data: true,
            ..FakeDevice::default()
        });
        assert!(clean(&host, Cleanup::Discard).contains("still read old data"));
        assert_eq!(host.calls_of("zero").len(), 1);
        assert!(!host.device(Path::new("/dev/sdx")).unwrap().dirty);
    }

    #[test]
    fn a_failing_discard_is_an_error_not_a_fallback() {
        let host = host_with(FakeDevice {
            size: 1 << 20,
            discard: true,
            discard_zeroes: true,
            ..FakeDevice::default()
        });
        host.fail("discard", libc::EBUSY);
        let e = block(&host, Path::new("/dev/sdx"), Cleanup::Discard, &mut |_, _| {}).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EBUSY));
        assert!(host.calls_of("zero").is_empty());
        assert!(host.device(Path::new("/dev/sdx")).unwrap().dirty);
    }

    #[test]
    fn zero_and_zero_header_do_what_they_say() {
        let host = host_with(FakeDevice {
            size: 1 << 20,
            signature: Some("ext4".into()),
            ..FakeDevice::default()
        });
        assert!(clean(&host, Cleanup::ZeroHeader).contains("still readable"));
        let d = host.device(Path::new("/dev/sdx")).unwrap();
        assert_eq!(d.signature, None);
        assert!(d.dirty, "zero-header leaves the data");
        assert_eq!(clean(&host, Cleanup::Zero), "zeroed");
        assert!(!host.device(Path::new("/dev/sdx")).unwrap().dirty);
        assert!(host.calls_of("discard").is_empty());
    }

    #[test]
    fn a_mount_point_is_emptied_but_for_lost_and_found_and_links_are_not_followed() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("disk");
        let outside = t.path().join("outside");
        std::fs::create_dir_all(root.join("lost+found/#123")).unwrap();
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("keep"), b"x").unwrap();
        std::fs::write(root.join("a/b/f"), b"data").unwrap();
        std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("a/link")).unwrap();
        assert_eq!(mount(&root).unwrap(), 3);
        let left: Vec<_> = std::fs::read_dir(&root)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["lost+found"]);
        assert_eq!(std::fs::read_dir(root.join("lost+found")).unwrap().count(), 0);
        assert_eq!(std::fs::read(outside.join("keep")).unwrap(), b"x");
    }
}

//! loam's operating-system layer.
//!
//! Everything here is a thin, synchronous wrapper over Linux syscalls that the
//! rest of loam needs: bind mounts ([`mount`]), reading and querying the mount
//! table ([`mountinfo`]), filesystem statistics ([`statfs`]), and careful
//! filesystem manipulation ([`fs`]): durable writes, tree removal that never
//! follows symlinks or crosses mounts, usage accounting and path validation.
//! Image-backed volumes add loop devices ([`loopdev`]), block device sizes
//! ([`blockdev`]), and probing and formatting filesystems with the system's
//! tools ([`mkfs`]).
//! Btrfs-backed volumes are subvolumes with quota group limits ([`btrfs`]).
//! Directories on XFS and ext4 are bounded by project quotas ([`quota`]).
//!
//! The engine reaches the privileged calls through one seam, [`host::Host`], with a real implementation and
//! an in-memory recording fake ([`fake::FakeHost`]) for unit tests without root.
//!
//! Nothing in this crate is async; callers run it on blocking threads.
//!
//! Errors from syscalls are `std::io::Error`s whose message names the
//! operation and path. The original OS error stays reachable through
//! [`std::error::Error::source`] (see [`os_error`]).

pub mod blockdev;
pub mod btrfs;
pub mod fake;
pub mod fs;
pub mod host;
pub mod lockfile;
pub mod loopdev;
pub mod mkfs;
pub mod mount;
pub mod mountinfo;
pub mod quota;
pub mod statfs;

#[doc(hidden)]
pub mod testutil;

use std::{error::Error, fmt, io};

/// Returns the raw OS error number (`errno`) behind `err`, looking through the
/// context that this crate adds to its errors.
///
/// Context-wrapped errors keep the original error's [`io::ErrorKind`], but
/// `raw_os_error()` on them returns `None`; use this when a caller must tell
/// apart errnos that share a kind.
pub fn os_error(err: &io::Error) -> Option<i32> {
    if let Some(code) = err.raw_os_error() {
        return Some(code);
    }
    err.get_ref()
        .and_then(|inner| inner.downcast_ref::<Context>())
        .and_then(|ctx| os_error(&ctx.source))
}

/// An I/O error with a human description of what was being done.
///
/// Kept as a real error (rather than a formatted string) so the original
/// `io::Error`, with its errno, remains available as `source()`.
#[derive(Debug)]
struct Context {
    what: String,
    source: io::Error,
}

impl fmt::Display for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.what, self.source)
    }
}

impl Error for Context {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&self.source)
    }
}

/// Wraps `source` so its message starts with `what`, keeping its kind.
pub(crate) fn context(source: impl Into<io::Error>, what: impl Into<String>) -> io::Error {
    let source = source.into();
    io::Error::new(
        source.kind(),
        Context {
            what: what.into(),
            source,
        },
    )
}

//! Helpers for tests that need root, shared with loam's other crates.
//!
//! Tests that mount things or need `CAP_SYS_ADMIN` call [`require_root`]
//! first and return early when it says no. With `LOAM_STRICT=1` in the
//! environment (as CI running as root sets it), such a skip is a failure
//! instead, so a broken setup cannot turn the privileged tests into silent
//! no-ops.

use std::{io, path::PathBuf};

use rustix::mount::{MountPropagationFlags, mount_change};

/// Whether `test` may run its root-only part. If not root, prints
/// `SKIP: <test>: needs root` and returns `false`, or panics when
/// `LOAM_STRICT=1`.
pub fn require_root(test: &str) -> bool {
    if rustix::process::geteuid().is_root() {
        return true;
    }
    skip(test, "needs root");
    false
}

/// Reports a skipped test on stderr, past the test harness's output capture so the reason shows in a normal
/// `cargo test` run; with `LOAM_STRICT=1` it panics instead.
pub fn skip(test: &str, why: &str) {
    use std::io::Write;
    if strict() {
        panic!("strict mode: {test} cannot be skipped ({why})");
    }
    let _ = writeln!(io::stderr(), "SKIP: {test}: {why}");
}

/// Reports a test skipped for a kernel feature this machine lacks and that is an allowed gap (such as project
/// quota): prints `SKIP (kernel gap): <test>: <why>` past the harness's capture, even in strict mode, never
/// panics.
pub fn skip_kernel_gap(test: &str, why: &str) {
    use std::io::Write;
    let _ = writeln!(io::stderr(), "SKIP (kernel gap): {test}: {why}");
}

fn strict() -> bool {
    std::env::var_os("LOAM_STRICT").is_some_and(|v| v == "1")
}

/// Moves the calling thread into a new, private mount namespace, so mounts it
/// makes are invisible to (and cannot propagate to) the host and to other
/// threads, and vanish when the thread exits.
///
/// `unshare(CLONE_NEWNS)` is allowed in a multithreaded process: it implies
/// `CLONE_FS`, which gives the calling thread its own copy of the
/// cwd/root/umask, and only this thread changes namespace. Every mount is
/// then made recursively private, so that nothing done here propagates back
/// through shared peer groups.
///
/// Use this in a test's own thread (each libtest test has one); read the
/// thread's mount table with `MountTable::read_self`, which reads
/// `/proc/thread-self`. Needs `CAP_SYS_ADMIN`.
pub fn enter_private_mount_namespace() -> io::Result<()> {
    // SAFETY: unshare(2) has no memory-safety preconditions. The only flag
    // passed is CLONE_NEWNS (implying CLONE_FS); it does not unshare the fd
    // table (CLONE_FILES), which is what could invalidate fds other threads
    // rely on.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNS) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("unshare(CLONE_NEWNS): {e}")));
    }
    mount_change("/", MountPropagationFlags::PRIVATE | MountPropagationFlags::REC)
        .map_err(|e| crate::context(e, "making / recursively private"))
}

/// Unmounts its path on drop (ignoring errors), so a failing test does not leave its mount behind.
#[derive(Debug)]
pub struct Mounted(pub PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = crate::mount::unmount(&self.0);
    }
}

//! Probing block devices for signatures and creating filesystems on them.
//!
//! Both run the system's tools (`blkid` of util-linux, `mkfs.ext4` of
//! e2fsprogs, `mkfs.xfs` of xfsprogs) as child processes with fixed
//! arguments, no shell. A failure carries the tool's exit status and its
//! standard error.

use std::{
    ffi::OsStr,
    io::{self, ErrorKind},
    path::Path,
    process::{Command, Output, Stdio},
};

use rustix::fs::{Mode, OFlags};

/// The filesystem types [`make`] can create.
pub const FS_TYPES: &[&str] = &["ext4", "xfs"];

/// `blkid`'s exit status when it found nothing.
const BLKID_NOTHING_FOUND: i32 = 2;

/// A program and the package that provides it, for "not installed" errors.
struct Tool {
    program: &'static str,
    package: &'static str,
}

const BLKID: Tool = Tool {
    program: "blkid",
    package: "util-linux",
};
const MKFS_EXT4: Tool = Tool {
    program: "mkfs.ext4",
    package: "e2fsprogs",
};
const MKFS_XFS: Tool = Tool {
    program: "mkfs.xfs",
    package: "xfsprogs",
};

/// The device must be an absolute path, so it can never be read as an option
/// by the tools.
fn check_device(device: &Path) -> io::Result<()> {
    if device.is_absolute() {
        Ok(())
    } else {
        Err(io::Error::new(
            ErrorKind::InvalidInput,
            format!("device path {} is not absolute", device.display()),
        ))
    }
}

/// The command line, for messages.
fn command_line(tool: &Tool, args: &[&OsStr]) -> String {
    let mut line = tool.program.to_owned();
    for arg in args {
        line.push(' ');
        line.push_str(&arg.to_string_lossy());
    }
    line
}

/// Runs `tool` with `args`, stdin from /dev/null, capturing its output.
fn run(tool: &Tool, args: &[&OsStr]) -> io::Result<Output> {
    Command::new(tool.program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            // A PATH directory that cannot be searched turns "not found" into
            // EACCES (execvp's rule), so look for the program by hand then.
            let missing = e.kind() == ErrorKind::NotFound
                || (e.kind() == ErrorKind::PermissionDenied && !on_path(tool.program));
            if missing {
                io::Error::new(
                    ErrorKind::NotFound,
                    format!(
                        "{} is not installed (it comes with the {} package)",
                        tool.program, tool.package
                    ),
                )
            } else {
                crate::context(e, format!("running {}", command_line(tool, args)))
            }
        })
}

/// Whether a file named `program` is in one of the `PATH` directories.
fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

/// The error for a tool that ran and failed.
fn failed(tool: &Tool, args: &[&OsStr], output: &Output) -> io::Error {
    let stderr = String::from_utf8_lossy(&output.stderr);
    let mut said = stderr.trim();
    let stdout;
    if said.is_empty() {
        stdout = String::from_utf8_lossy(&output.stdout);
        said = stdout.trim();
    }
    io::Error::other(format!(
        "{} failed ({}){}{}",
        command_line(tool, args),
        output.status,
        if said.is_empty() { "" } else { ": " },
        said
    ))
}

/// What signature `device` holds, if any: a filesystem type such as `"ext4"`
/// or `"xfs"`, or `"partition table (gpt)"` and the like.
///
/// Runs `blkid -p -o export <device>`, a low-level probe of the device itself
/// that bypasses blkid's cache. Exit status 2 (nothing found) gives `None`.
/// Any other failure is an error, including an ambivalent result (exit
/// status 8, several signatures): such a device is not blank either.
///
/// blkid also says "nothing found" for a device it cannot open, so the device
/// is opened for reading here first: a missing or unreadable one is an error.
pub fn signature(device: &Path) -> io::Result<Option<String>> {
    Ok(probe(device)?.map(|text| parse_export(&text)))
}

/// The UUID of the filesystem on `device` (`blkid -p`'s `UUID`), if it holds one that has a UUID.
pub fn fs_uuid(device: &Path) -> io::Result<Option<String>> {
    Ok(probe(device)?.and_then(|text| export_value(&text, "UUID").map(str::to_owned)))
}

/// `blkid -p -o export <device>`'s output, or `None` when it finds nothing (see [`signature`]).
fn probe(device: &Path) -> io::Result<Option<String>> {
    check_device(device)?;
    rustix::fs::open(device, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| crate::context(e, format!("opening {} to probe it", device.display())))?;
    let args = [
        OsStr::new("-p"),
        OsStr::new("-o"),
        OsStr::new("export"),
        device.as_os_str(),
    ];
    let output = run(&BLKID, &args)?;
    match output.status.code() {
        Some(0) => Ok(Some(String::from_utf8_lossy(&output.stdout).into_owned())),
        Some(BLKID_NOTHING_FOUND) => Ok(None),
        _ => Err(failed(&BLKID, &args, &output)),
    }
}

/// The value of `key` in `blkid -o export` output.
fn export_value<'t>(text: &'t str, key: &str) -> Option<&'t str> {
    text.lines()
        .filter_map(|line| line.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v.trim())
        .filter(|v| !v.is_empty())
}

/// Names what `blkid -o export` output (`KEY=value` lines) describes.
fn parse_export(text: &str) -> String {
    let value = |key: &str| export_value(text, key);
    if let Some(fs_type) = value("TYPE") {
        return fs_type.to_owned();
    }
    if let Some(table) = value("PTTYPE") {
        return format!("partition table ({table})");
    }
    // blkid found something without naming it; that is still not blank.
    let summary: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    if summary.is_empty() {
        "unknown signature".to_owned()
    } else {
        format!("unknown signature ({})", summary.join(", "))
    }
}

/// Creates a filesystem of type `fs_type` (one of [`FS_TYPES`]) on `device`,
/// overwriting whatever is there.
///
/// * `ext4`: `mkfs.ext4 -q -F -m 0 -E nodiscard <device>` (no blocks reserved
///   for root: the volume belongs to the pod);
/// * `xfs`: `mkfs.xfs -q -f -K <device>`.
///
/// Neither discards the device first: on a loop device that would punch holes
/// in a fully allocated image file. Check with [`signature`] before calling
/// this on a device that may hold data.
///
/// Another type is an error of kind [`ErrorKind::InvalidInput`]; a missing
/// tool one of kind [`ErrorKind::NotFound`] naming its package.
pub fn make(device: &Path, fs_type: &str) -> io::Result<()> {
    let (tool, options): (&Tool, &[&str]) = match fs_type {
        "ext4" => (&MKFS_EXT4, &["-q", "-F", "-m", "0", "-E", "nodiscard"]),
        "xfs" => (&MKFS_XFS, &["-q", "-f", "-K"]),
        _ => {
            return Err(io::Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "cannot create a filesystem of type {fs_type:?}: the allowed types are {}",
                    FS_TYPES.join(", ")
                ),
            ));
        }
    };
    check_device(device)?;
    let mut args: Vec<&OsStr> = options.iter().map(OsStr::new).collect();
    args.push(device.as_os_str());
    let output = run(tool, &args)?;
    if output.status.success() {
        Ok(())
    } else {
        Err(failed(tool, &args, &output))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_output_names_the_type() {
        let ext4 = "DEVNAME=/dev/loop0\nUUID=1234\nBLOCK_SIZE=4096\nTYPE=ext4\nUSAGE=filesystem\n";
        assert_eq!(parse_export(ext4), "ext4");
        let gpt = "DEVNAME=/dev/loop0\nPTUUID=abcd\nPTTYPE=gpt\n";
        assert_eq!(parse_export(gpt), "partition table (gpt)");
        // TYPE wins over PTTYPE (a filesystem with a stale table).
        assert_eq!(parse_export("PTTYPE=dos\nTYPE=xfs\n"), "xfs");
        assert_eq!(
            parse_export("DEVNAME=/dev/loop0\nUSAGE=raid\n"),
            "unknown signature (DEVNAME=/dev/loop0, USAGE=raid)"
        );
        assert_eq!(parse_export(""), "unknown signature");
    }

    #[test]
    fn unsupported_type_is_invalid_input_naming_the_allowed_ones() {
        let err = make(Path::new("/dev/null"), "btrfs").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        let msg = err.to_string();
        assert!(msg.contains("btrfs") && msg.contains("ext4, xfs"), "{msg}");
    }

    #[test]
    fn relative_device_is_refused() {
        let err = make(Path::new("-n"), "ext4").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        let err = signature(Path::new("dev/loop0")).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
    }

    #[test]
    fn missing_tool_names_its_package() {
        let tool = Tool {
            program: "loam-no-such-mkfs",
            package: "loam-test-package",
        };
        let err = run(&tool, &[]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound);
        let msg = err.to_string();
        assert!(
            msg.contains("loam-no-such-mkfs") && msg.contains("loam-test-package"),
            "{msg}"
        );
    }

    #[test]
    fn failure_carries_status_and_stderr() {
        let tool = Tool {
            program: "sh",
            package: "dash",
        };
        let args = [OsStr::new("-c"), OsStr::new("echo oops >&2; exit 3")];
        let output = run(&tool, &args).unwrap();
        let msg = failed(&tool, &args, &output).to_string();
        assert!(msg.starts_with("sh -c echo oops >&2; exit 3 failed ("), "{msg}");
        assert!(msg.contains("exit status: 3") && msg.ends_with(": oops"), "{msg}");
    }

    #[test]
    fn signature_of_a_missing_device_is_an_error() {
        let err = signature(Path::new("/nonexistent/loam-dev")).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound);
        assert!(err.to_string().contains("/nonexistent/loam-dev"), "{err}");
    }

    #[test]
    fn signature_of_a_zeroed_file_is_none() {
        // blkid probes regular files too, which needs no root.
        let file = tempfile::NamedTempFile::new().unwrap();
        file.as_file().set_len(1 << 20).unwrap();
        match signature(file.path()) {
            Ok(sig) => assert_eq!(sig, None),
            Err(e) if e.kind() == ErrorKind::NotFound => {
                crate::testutil::skip("signature_of_a_zeroed_file_is_none", "blkid is not installed")
            }
            Err(e) => panic!("{e}"),
        }
    }
}

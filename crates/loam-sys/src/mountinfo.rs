//! Parsing and querying `/proc/<pid>/mountinfo`.
//!
//! The mount table is the source of truth for "is this volume published
//! here?" and "where else is this directory mounted?": loam never keeps its
//! own record of mounts, it asks the kernel. [`parse`] is a pure function over
//! the text so it can be tested on fixtures; [`MountTable`] adds the queries
//! the driver needs.
//!
//! Format (see proc(5)), one mount per line:
//!
//! ```text
//! 36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
//! (1)(2) (3)   (4)   (5)      (6)      (7)   (8) (9)   (10)         (11)
//! ```
//!
//! Field 7 is zero or more optional fields, terminated by a lone `-`. Paths
//! and the source are escaped by the kernel: space, tab, newline and
//! backslash appear as `\040`, `\011`, `\012` and `\134`.

use std::{
    ffi::OsString,
    io,
    os::unix::ffi::OsStringExt,
    path::{Path, PathBuf},
};

/// One line of mountinfo: one mount in the calling process's namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountInfo {
    /// Unique id of this mount (may be reused after unmount).
    pub mount_id: u32,
    /// Id of the mount this one is attached to (for an overmount: the mount
    /// it covers).
    pub parent_id: u32,
    /// Major number of the device (`st_dev`) of the mounted filesystem.
    pub major: u32,
    /// Minor number of the device (`st_dev`) of the mounted filesystem.
    pub minor: u32,
    /// The directory within the filesystem that forms the root of this mount
    /// (not `/` for bind mounts of a subdirectory). Escapes decoded.
    pub root: PathBuf,
    /// Where it is mounted, relative to the process's root. Escapes decoded.
    pub mount_point: PathBuf,
    /// Per-mount options, e.g. `rw`, `nosuid`, `relatime`.
    pub mount_options: Vec<String>,
    /// Optional fields such as `shared:1` or `master:2`; often empty.
    pub optional_fields: Vec<String>,
    /// Filesystem type, e.g. `ext4`, `tmpfs`, `fuse.sshfs`.
    pub fs_type: String,
    /// Filesystem-specific source, e.g. `/dev/sda1` or `tmpfs`. Escapes
    /// decoded (lossily, if not UTF-8).
    pub source: String,
    /// Per-superblock options.
    pub super_options: Vec<String>,
}

impl MountInfo {
    /// Whether this mount is read-only (`ro` among the per-mount options).
    pub fn is_read_only(&self) -> bool {
        self.mount_options.iter().any(|o| o == "ro")
    }

    /// What this mount shows: its device and the directory within that device's filesystem.
    pub fn source_id(&self) -> MountSource {
        MountSource {
            major: self.major,
            minor: self.minor,
            root: self.root.clone(),
        }
    }

    /// Whether this mount shows exactly the directory `src`.
    pub fn shows(&self, src: &MountSource) -> bool {
        self.major == src.major && self.minor == src.minor && self.root == src.root
    }
}

/// A mountinfo line that could not be understood.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// The line is structurally wrong; `line` is 1-based.
    #[error("mountinfo line {line}: {reason}")]
    Malformed {
        /// 1-based line number within the parsed text.
        line: usize,
        /// What was wrong with it.
        reason: String,
    },
}

impl ParseError {
    /// The 1-based line number the error refers to.
    pub fn line(&self) -> usize {
        match self {
            ParseError::Malformed { line, .. } => *line,
        }
    }
}

/// Parses the full text of a mountinfo file. Empty lines are ignored.
pub fn parse(text: &str) -> Result<Vec<MountInfo>, ParseError> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(idx, line)| {
            parse_line(line).map_err(|reason| ParseError::Malformed {
                line: idx + 1,
                reason,
            })
        })
        .collect()
}

fn parse_line(line: &str) -> Result<MountInfo, String> {
    // Split on single spaces, not on runs of whitespace: the kernel escapes
    // whitespace inside fields, and a field can legitimately be empty (a
    // filesystem with an empty source prints two spaces in a row).
    let fields: Vec<&str> = line.split(' ').collect();
    if fields.len() < 10 {
        return Err(format!(
            "expected at least 10 fields, found {}: {line:?}",
            fields.len()
        ));
    }
    let mount_id = parse_u32(fields[0], "mount id")?;
    let parent_id = parse_u32(fields[1], "parent id")?;
    let (major, minor) = fields[2]
        .split_once(':')
        .ok_or_else(|| format!("expected major:minor, found {:?}", fields[2]))?;
    let major = parse_u32(major, "major device number")?;
    let minor = parse_u32(minor, "minor device number")?;
    let root = PathBuf::from(OsString::from_vec(unescape(fields[3])));
    let mount_point = PathBuf::from(OsString::from_vec(unescape(fields[4])));
    if fields[3].is_empty() || fields[4].is_empty() {
        return Err("empty root or mount point".to_string());
    }
    let mount_options = split_options(fields[5]);

    // Any number of optional fields, then a lone "-".
    let sep = fields[6..]
        .iter()
        .position(|f| *f == "-")
        .map(|p| p + 6)
        .ok_or_else(|| "missing \"-\" separator after optional fields".to_string())?;
    let optional_fields = fields[6..sep]
        .iter()
        .filter(|f| !f.is_empty())
        .map(|f| f.to_string())
        .collect();

    // Exactly three fields are documented after the separator; tolerate more
    // in case a future kernel appends some.
    let rest = &fields[sep + 1..];
    if rest.len() < 3 {
        return Err(format!(
            "expected filesystem type, source and super options after \"-\", found {} fields",
            rest.len()
        ));
    }
    if rest[0].is_empty() {
        return Err("empty filesystem type".to_string());
    }
    Ok(MountInfo {
        mount_id,
        parent_id,
        major,
        minor,
        root,
        mount_point,
        mount_options,
        optional_fields,
        fs_type: unescape_lossy(rest[0]),
        source: unescape_lossy(rest[1]),
        super_options: split_options(rest[2]),
    })
}

fn parse_u32(field: &str, what: &str) -> Result<u32, String> {
    field.parse().map_err(|_| format!("invalid {what}: {field:?}"))
}

/// Splits a comma-separated option list; escapes are decoded per option so an
/// escaped comma (`\054`) stays inside its option.
fn split_options(field: &str) -> Vec<String> {
    if field.is_empty() {
        return Vec::new();
    }
    field.split(',').map(unescape_lossy).collect()
}

fn unescape_lossy(field: &str) -> String {
    String::from_utf8_lossy(&unescape(field)).into_owned()
}

/// Decodes the kernel's `\ooo` octal escapes into raw bytes. A backslash not
/// followed by three octal digits (which the kernel never produces) is kept
/// literally rather than rejected, so one odd line cannot make the whole table
/// unreadable.
fn unescape(field: &str) -> Vec<u8> {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && let Some(digits) = bytes.get(i + 1..i + 4)
            && digits.iter().all(|d| (b'0'..=b'7').contains(d))
        {
            let value = digits.iter().fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
            if let Ok(byte) = u8::try_from(value) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

/// Identifies "what is mounted": a directory within a filesystem. Two mounts
/// with the same `MountSource` show the same directory (bind mounts of it).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MountSource {
    /// Major device number of the filesystem.
    pub major: u32,
    /// Minor device number of the filesystem.
    pub minor: u32,
    /// The directory, relative to the filesystem's own root.
    pub root: PathBuf,
}

/// A snapshot of a mount namespace's mount table.
#[derive(Debug, Clone, Default)]
pub struct MountTable {
    /// In mountinfo order: a later line is mounted on top of (or after) an
    /// earlier one.
    mounts: Vec<MountInfo>,
}

/// Reads `path` whole: its text and how many `read` calls returned data (the kernel gives mountinfo a page or
/// so per call, each produced under its lock).
fn read_chunks(path: &Path) -> io::Result<(String, usize)> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut buf = Vec::with_capacity(16 << 10);
    let mut chunks = 0;
    loop {
        if buf.capacity() - buf.len() < 8192 {
            buf.reserve(buf.capacity());
        }
        let len = buf.len();
        let spare = buf.capacity() - len;
        buf.resize(len + spare, 0);
        match file.read(&mut buf[len..]) {
            Ok(0) => {
                buf.truncate(len);
                break;
            }
            Ok(n) => {
                buf.truncate(len + n);
                chunks += 1;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => buf.truncate(len),
            Err(e) => return Err(e),
        }
    }
    let text = String::from_utf8(buf).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    Ok((text, chunks))
}

/// How many times to read mountinfo while looking for two identical reads.
const READ_ATTEMPTS: usize = 5;

impl MountTable {
    /// Builds a table from already-parsed mounts, in mountinfo order.
    pub fn new(mounts: Vec<MountInfo>) -> Self {
        MountTable { mounts }
    }

    /// Reads the mount table of the calling thread's mount namespace.
    ///
    /// This reads `/proc/thread-self/mountinfo` (falling back to
    /// `/proc/self/mountinfo` on kernels without it): `/proc/self` describes
    /// the process's main thread, which differs from the calling thread's
    /// namespace when that thread has unshared its mount namespace (as the
    /// tests do). In an ordinary process both are the same table.
    pub fn read_self() -> io::Result<Self> {
        match read_stable(Path::new("/proc/thread-self/mountinfo")) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => read_stable(Path::new("/proc/self/mountinfo")),
            other => other,
        }
    }

    /// Reads the mount table of process `pid`'s mount namespace.
    pub fn read_pid(pid: u32) -> io::Result<Self> {
        read_stable(&PathBuf::from(format!("/proc/{pid}/mountinfo")))
    }

    /// All mounts, in mountinfo order.
    pub fn mounts(&self) -> &[MountInfo] {
        &self.mounts
    }

    /// Every mount whose mount point is exactly `path`, bottom first.
    pub fn mounts_at(&self, path: &Path) -> Vec<&MountInfo> {
        self.mounts.iter().filter(|m| m.mount_point == path).collect()
    }

    /// The visible (topmost) mount at exactly `path`, if `path` is a mount
    /// point.
    pub fn top_mount_at(&self, path: &Path) -> Option<&MountInfo> {
        self.mounts.iter().rev().find(|m| m.mount_point == path)
    }

    /// Whether anything is mounted at exactly `path`.
    pub fn is_mount_point(&self, path: &Path) -> bool {
        self.mounts.iter().any(|m| m.mount_point == path)
    }

    /// The mount under which `path` lives: the one with the longest mount
    /// point that is a component-wise prefix of `path` (so `/a/bc` is not
    /// under `/a/b`); among equals, the later (upper) one.
    ///
    /// `path` must be absolute and canonical (no symlinks, `.` or `..`);
    /// this is a pure lookup and does not touch the filesystem.
    pub fn containing(&self, path: &Path) -> Option<&MountInfo> {
        let mut best: Option<(&MountInfo, usize)> = None;
        for m in &self.mounts {
            if !path.starts_with(&m.mount_point) {
                continue;
            }
            let depth = m.mount_point.components().count();
            // `>=` so that a later line at the same depth (an overmount) wins.
            if best.is_none_or(|(_, d)| depth >= d) {
                best = Some((m, depth));
            }
        }
        best.map(|(m, _)| m)
    }

    /// What directory `path` really is: its filesystem's device and its
    /// location within that filesystem. `path` is absolute and canonical.
    pub fn source_of(&self, path: &Path) -> Option<MountSource> {
        let m = self.containing(path)?;
        let rel = path.strip_prefix(&m.mount_point).ok()?;
        let root = if rel.as_os_str().is_empty() {
            m.root.clone()
        } else {
            m.root.join(rel)
        };
        Some(MountSource {
            major: m.major,
            minor: m.minor,
            root,
        })
    }

    /// Every mount of exactly the directory `src`: every place that directory
    /// is bind-mounted (including the original mount if `src` is a
    /// filesystem root).
    pub fn mounts_of(&self, src: &MountSource) -> Vec<&MountInfo> {
        self.mounts.iter().filter(|m| m.shows(src)).collect()
    }
}

/// Reads and parses a mountinfo file until two consecutive reads agree.
///
/// The kernel produces mountinfo in page-sized chunks; if mounts change
/// between chunks the result can be torn (lines missing or duplicated). A
/// table that came in one chunk is consistent; otherwise two identical reads
/// in a row are very likely a consistent snapshot. After
/// [`READ_ATTEMPTS`] reads the last one is used anyway: a table that never
/// settles is still better than none.
fn read_stable(path: &Path) -> io::Result<MountTable> {
    let read = || read_chunks(path).map_err(|e| crate::context(e, format!("reading {}", path.display())));
    let (mut previous, chunks) = read()?;
    // One chunk is one pass of the kernel under its lock: consistent as it is.
    if chunks > 1 {
        for _ in 1..READ_ATTEMPTS {
            let (current, _) = read()?;
            if current == previous {
                break;
            }
            previous = current;
        }
    }
    let mounts = parse(&previous).map_err(|e| {
        crate::context(
            io::Error::new(io::ErrorKind::InvalidData, e),
            format!("parsing {}", path.display()),
        )
    })?;
    Ok(MountTable::new(mounts))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Real-looking lines covering the cases the parser must handle.
    const FIXTURE: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw,errors=remount-ro
23 22 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
24 22 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:2 master:7 - sysfs sysfs rw
25 22 0:23 / /tmp rw,nosuid,nodev - tmpfs tmpfs rw,size=1024k,mode=1777
40 22 8:1 /var/lib/x /mnt/bind ro,relatime - ext4 /dev/sda1 rw,errors=remount-ro
41 22 8:1 /var/lib/with\\040space /mnt/my\\040dir rw,relatime shared:1 - ext4 /dev/sda1 rw
42 22 8:17 / /a/b rw,relatime - xfs /dev/sdb1 rw,attr2
43 22 8:33 / /a/bc rw,relatime - xfs /dev/sdc1 rw
44 42 0:50 / /a/b rw,relatime - tmpfs tmpfs rw
45 22 8:1 /var/lib/x /srv/again rw,relatime - ext4 /dev/sda1 rw,errors=remount-ro
";

    fn fixture() -> MountTable {
        MountTable::new(parse(FIXTURE).expect("fixture parses"))
    }

    #[test]
    fn parses_root_line() {
        let mounts = parse(FIXTURE).unwrap();
        assert_eq!(mounts.len(), 10);
        let root = &mounts[0];
        assert_eq!(
            *root,
            MountInfo {
                mount_id: 22,
                parent_id: 1,
                major: 8,
                minor: 1,
                root: "/".into(),
                mount_point: "/".into(),
                mount_options: vec!["rw".into(), "relatime".into()],
                optional_fields: vec!["shared:1".into()],
                fs_type: "ext4".into(),
                source: "/dev/sda1".into(),
                super_options: vec!["rw".into(), "errors=remount-ro".into()],
            }
        );
        assert!(!root.is_read_only());
    }

    #[test]
    fn parses_bind_mount_with_subdirectory_root() {
        let mounts = parse(FIXTURE).unwrap();
        let bind = &mounts[4];
        assert_eq!(bind.root, Path::new("/var/lib/x"));
        assert_eq!(bind.mount_point, Path::new("/mnt/bind"));
        assert!(bind.is_read_only());
        assert!(bind.optional_fields.is_empty());
    }

    #[test]
    fn parses_optional_fields() {
        let mounts = parse(FIXTURE).unwrap();
        assert_eq!(mounts[2].optional_fields, vec!["shared:2", "master:7"]);
        assert_eq!(mounts[2].fs_type, "sysfs");
        assert!(mounts[3].optional_fields.is_empty());
    }

    #[test]
    fn parses_tmpfs() {
        let mounts = parse(FIXTURE).unwrap();
        let tmp = &mounts[3];
        assert_eq!((tmp.major, tmp.minor), (0, 23));
        assert_eq!(tmp.fs_type, "tmpfs");
        assert_eq!(tmp.source, "tmpfs");
        assert_eq!(tmp.mount_options, vec!["rw", "nosuid", "nodev"]);
        assert_eq!(tmp.super_options, vec!["rw", "size=1024k", "mode=1777"]);
    }

    #[test]
    fn decodes_escapes() {
        let mounts = parse(FIXTURE).unwrap();
        assert_eq!(mounts[5].root, Path::new("/var/lib/with space"));
        assert_eq!(mounts[5].mount_point, Path::new("/mnt/my dir"));

        let line = r"1 0 0:1 /a\011b\012c\134d /x\040y rw - tmpfs we\040ird rw";
        let m = &parse(line).unwrap()[0];
        assert_eq!(m.root, Path::new("/a\tb\nc\\d"));
        assert_eq!(m.mount_point, Path::new("/x y"));
        assert_eq!(m.source, "we ird");
    }

    #[test]
    fn decodes_non_utf8_paths() {
        use std::os::unix::ffi::OsStrExt;
        let line = r"1 0 0:1 / /mnt/\377\376 rw - tmpfs tmpfs rw";
        let m = &parse(line).unwrap()[0];
        assert_eq!(m.mount_point.as_os_str().as_bytes(), b"/mnt/\xff\xfe");
    }

    #[test]
    fn keeps_invalid_escapes_literally() {
        assert_eq!(unescape(r"a\9b"), b"a\\9b");
        assert_eq!(unescape(r"a\04"), b"a\\04");
        assert_eq!(unescape(r"\400"), b"\\400");
        assert_eq!(unescape(r"\134\134"), b"\\\\");
    }

    #[test]
    fn parses_empty_source_and_nsfs_root() {
        // nsfs mounts have a root that is not a path.
        let text = "30 22 0:4 net:[4026532000] /run/netns/a rw shared:5 - nsfs nsfs rw\n\
                    31 22 0:60 / /mnt/e rw - fuse  rw\n";
        let mounts = parse(text).unwrap();
        assert_eq!(mounts[0].root, Path::new("net:[4026532000]"));
        // An empty source shows up as two spaces in a row.
        assert_eq!(mounts[1].fs_type, "fuse");
        assert_eq!(mounts[1].source, "");
        assert_eq!(mounts[1].super_options, vec!["rw"]);
    }

    #[test]
    fn skips_blank_lines() {
        let text = "\n1 0 0:1 / / rw - tmpfs tmpfs rw\n\n";
        assert_eq!(parse(text).unwrap().len(), 1);
        assert!(parse("").unwrap().is_empty());
    }

    #[test]
    fn rejects_malformed_lines() {
        let cases = [
            // Too few fields.
            "1 0 0:1 / / rw",
            // Non-numeric mount id.
            "x 0 0:1 / / rw - tmpfs tmpfs rw",
            // Bad device number.
            "1 0 01 / / rw - tmpfs tmpfs rw",
            "1 0 a:1 / / rw - tmpfs tmpfs rw",
            // No separator.
            "1 0 0:1 / / rw shared:1 tmpfs tmpfs rw",
            // Too few fields after the separator.
            "1 0 0:1 / / rw a b c d - tmpfs rw",
            // Empty filesystem type.
            "1 0 0:1 / / rw -  tmpfs rw",
        ];
        for case in cases {
            let text = format!("1 0 0:1 / / rw - tmpfs tmpfs rw\n{case}\n");
            let err = parse(&text).expect_err(case);
            assert_eq!(err.line(), 2, "{case}: {err}");
            assert!(err.to_string().starts_with("mountinfo line 2: "), "{err}");
        }
    }

    #[test]
    fn mounts_at_and_top_mount_at() {
        let t = fixture();
        let at: Vec<u32> = t
            .mounts_at(Path::new("/a/b"))
            .iter()
            .map(|m| m.mount_id)
            .collect();
        assert_eq!(at, vec![42, 44]);
        assert_eq!(t.top_mount_at(Path::new("/a/b")).unwrap().mount_id, 44);
        assert!(t.is_mount_point(Path::new("/a/b")));
        assert!(t.is_mount_point(Path::new("/mnt/my dir")));
        assert!(!t.is_mount_point(Path::new("/a")));
        assert!(t.top_mount_at(Path::new("/a")).is_none());
        assert!(t.mounts_at(Path::new("/nowhere")).is_empty());
    }

    #[test]
    fn containing_picks_longest_component_prefix() {
        let t = fixture();
        let id = |p: &str| t.containing(Path::new(p)).map(|m| m.mount_id);
        assert_eq!(id("/"), Some(22));
        assert_eq!(id("/etc/passwd"), Some(22));
        assert_eq!(id("/tmp"), Some(25));
        assert_eq!(id("/tmp/x/y"), Some(25));
        assert_eq!(id("/tmpfoo"), Some(22));
        // Overmount: the later line at the same mount point wins.
        assert_eq!(id("/a/b"), Some(44));
        assert_eq!(id("/a/b/c"), Some(44));
        // "/a/bc" is its own mount, and "/a/bcd" is under "/", not "/a/b".
        assert_eq!(id("/a/bc/d"), Some(43));
        assert_eq!(id("/a/bcd"), Some(22));
        assert_eq!(MountTable::default().containing(Path::new("/")), None);
    }

    #[test]
    fn source_of_joins_root_and_relative_path() {
        let t = fixture();
        let src = |p: &str| t.source_of(Path::new(p)).unwrap();
        assert_eq!(
            src("/mnt/bind/sub/dir"),
            MountSource {
                major: 8,
                minor: 1,
                root: "/var/lib/x/sub/dir".into()
            }
        );
        // The mount point itself maps to the mount's root, unchanged.
        assert_eq!(src("/mnt/bind").root.as_os_str(), "/var/lib/x");
        // Root "/" joined with a relative path.
        assert_eq!(src("/a/b").root.as_os_str(), "/");
        assert_eq!(src("/a/bc/x/y").root.as_os_str(), "/x/y");
        assert_eq!(
            src("/var/lib/x"),
            MountSource {
                major: 8,
                minor: 1,
                root: "/var/lib/x".into()
            }
        );
        assert_eq!(
            src("/a/b/f"),
            MountSource {
                major: 0,
                minor: 50,
                root: "/f".into()
            }
        );
    }

    #[test]
    fn mounts_of_finds_every_bind_mount() {
        let t = fixture();
        // "/var/lib/x" on the root filesystem is bind-mounted twice.
        let src = t.source_of(Path::new("/var/lib/x")).unwrap();
        let ids: Vec<u32> = t.mounts_of(&src).iter().map(|m| m.mount_id).collect();
        assert_eq!(ids, vec![40, 45]);
        // Going through a bind mount leads to the same source.
        assert_eq!(t.source_of(Path::new("/srv/again")).unwrap(), src);
        // A subdirectory is not bind-mounted anywhere by itself.
        let sub = t.source_of(Path::new("/var/lib/x/y")).unwrap();
        assert!(t.mounts_of(&sub).is_empty());
        // The root filesystem's root.
        let root = t.source_of(Path::new("/")).unwrap();
        let ids: Vec<u32> = t.mounts_of(&root).iter().map(|m| m.mount_id).collect();
        assert_eq!(ids, vec![22]);
    }

    #[test]
    fn reads_own_mount_table() {
        let t = MountTable::read_self().unwrap();
        assert!(!t.mounts().is_empty());
        assert!(t.containing(Path::new("/")).is_some());
        let pid = std::process::id();
        assert!(!MountTable::read_pid(pid).unwrap().mounts().is_empty());
    }
}

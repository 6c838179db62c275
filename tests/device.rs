//! Device pools end to end, against the real binary over real gRPC, with loop devices over image files standing
//! in for disks: discovery and identity, safe adoption, best fit, block and filesystem publishing, cleanup on
//! delete, crash safety, a disk that disappears and comes back, and a discovery directory that is missing.
//!
//! Every test needs root. The disks of a test live in a temporary directory of its own ([`Disks`]): image
//! files, the discovery directory and the mounts of formatted disks, made in the test thread's private mount
//! namespace before the server starts, so the server (whose namespace is a copy of the thread's) sees them.
//! When a test ends, also by a panic, the server goes first (its namespace, and the mounts in it, with it),
//! then [`Disks`] unmounts what it mounted, detaches every loop device bound to a file in its directory and
//! removes the directory.
//!
//! Device pools here discover only at start-up and on SIGHUP (`discovery_interval_seconds` is an hour), so
//! what a test sees changes only when it says so; the background cleaning after DeleteVolume is waited for by
//! polling the disks' states.

mod common;

use std::{
    fs::File,
    os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use common::*;
use loam::csi::{self, volume_capability::access_mode::Mode, volume_usage::Unit};
use loam_sys::{loopdev::LoopDevice, mountinfo::MountTable, testutil::require_root};
use serde_json::Value;
use tonic::{Code, transport::Channel};

type Ctl = csi::controller_client::ControllerClient<Channel>;

/// The alignment O_DIRECT wants of buffers and offsets, and the loop devices' logical block size.
const BLOCK: usize = 4096;

/// How long a device pool's background work (a discovery pass after SIGHUP, a cleaning) may take.
const WAIT: Duration = Duration::from_secs(20);

const SNW: Mode = Mode::SingleNodeWriter;

// ---------------------------------------------------------------------------------------------------------
// Disks: image files on loop devices, linked or mounted in a discovery directory

/// One disk: an image file attached to a loop device, and its entry in the discovery directory (a symlink to
/// the device, or the directory it is mounted on).
#[derive(Debug, Clone)]
struct Disk {
    image: PathBuf,
    dev: LoopDevice,
    entry: PathBuf,
}

impl Disk {
    /// What loam calls a loop device over this disk's image file: `dev:loop:<st_dev>:<st_ino>` of the file.
    fn loop_identity(&self) -> String {
        loop_identity(&self.image)
    }

    /// What loam calls the filesystem on this disk: `fs:<UUID>`, the UUID as blkid reads it.
    fn fs_identity(&self) -> String {
        format!(
            "fs:{}",
            blkid_value(&self.dev.path, "UUID")
                .unwrap_or_else(|| panic!("{} holds no filesystem with a UUID", self.dev.path.display()))
        )
    }
}

fn loop_identity(image: &Path) -> String {
    let m = std::fs::metadata(image).unwrap_or_else(|e| panic!("{}: {e}", image.display()));
    format!("dev:loop:{}:{}", m.dev(), m.ino())
}

/// A temporary directory holding a test's disks: `img/` (image files) and `disks/` (the discovery directory).
/// Made from the test's thread, which it moves into a private mount namespace. Declare it before the
/// [`Server`], so that it drops after it.
struct Disks {
    /// Detaches, on drop, every loop device bound to a file in the directory.
    _loops: LoopGuard,
    _tmp: tempfile::TempDir,
    /// Canonical path of the temporary directory.
    dir: PathBuf,
}

impl Disks {
    fn new() -> Disks {
        private_mount_namespace();
        let tmp = tempfile::Builder::new()
            .prefix("loam-test-devices-")
            .tempdir()
            .expect("creating a temp dir");
        let dir = tmp.path().canonicalize().expect("resolving the temp dir");
        let loops = LoopGuard::new();
        loops.watch(&dir);
        for sub in ["img", "disks"] {
            std::fs::create_dir(dir.join(sub)).expect("creating a dir for the disks");
        }
        Disks {
            _loops: loops,
            _tmp: tmp,
            dir,
        }
    }

    /// The discovery directory.
    fn discovery(&self) -> PathBuf {
        self.dir.join("disks")
    }

    /// A new sparse image file `img/<name>.img` of `size` bytes.
    fn image(&self, name: &str, size: i64) -> PathBuf {
        let path = self.dir.join("img").join(format!("{name}.img"));
        File::create_new(&path)
            .and_then(|f| f.set_len(size as u64))
            .unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        path
    }

    /// Attaches `image` to a free loop device.
    fn attach(&self, image: &Path) -> LoopDevice {
        let cfg = loam_sys::loopdev::LoopConfig {
            direct_io: false,
            block_size: BLOCK as u32,
            read_only: false,
        };
        loam_sys::loopdev::attach(image, &cfg)
            .unwrap_or_else(|e| panic!("attaching {}: {e}", image.display()))
    }

    /// Links `dev` as `disks/<name>`, replacing what was there.
    fn link(&self, name: &str, dev: &LoopDevice) -> PathBuf {
        let entry = self.discovery().join(name);
        let _ = std::fs::remove_file(&entry);
        std::os::unix::fs::symlink(&dev.path, &entry)
            .unwrap_or_else(|e| panic!("linking {}: {e}", entry.display()));
        entry
    }

    /// A raw disk of `size` bytes, linked as `disks/<name>`.
    fn raw(&self, name: &str, size: i64) -> Disk {
        let image = self.image(name, size);
        let dev = self.attach(&image);
        let entry = self.link(name, &dev);
        Disk { image, dev, entry }
    }

    /// A disk of `size` bytes holding an ext4 filesystem with `files`, linked as `disks/<name>` (not mounted).
    fn raw_ext4(&self, name: &str, size: i64, files: &[(&str, &[u8])]) -> Disk {
        let image = self.image(name, size);
        self.mkfs_ext4(&image, name, files);
        let dev = self.attach(&image);
        let entry = self.link(name, &dev);
        Disk { image, dev, entry }
    }

    /// A disk of `size` bytes holding an ext4 filesystem with `files`, mounted at `disks/<name>` in the calling
    /// thread's mount namespace (a server started afterwards sees the mount).
    fn mounted(&self, name: &str, size: i64, files: &[(&str, &[u8])]) -> Disk {
        let image = self.image(name, size);
        self.mkfs_ext4(&image, name, files);
        let dev = self.attach(&image);
        let entry = self.discovery().join(name);
        std::fs::create_dir(&entry).expect("creating a mount point");
        loam_sys::mount::mount_fs(&dev.path, &entry, "ext4", &[], false)
            .unwrap_or_else(|e| panic!("mounting {}: {e}", dev.path.display()));
        Disk { image, dev, entry }
    }

    /// Formats `target` (an image file or a device) as ext4 holding `files` (made from `src-<name>/`).
    fn mkfs_ext4(&self, target: &Path, name: &str, files: &[(&str, &[u8])]) {
        let mut cmd = Command::new("mkfs.ext4");
        cmd.args(["-q", "-F", "-b", "4096", "-E", "nodiscard"]);
        if !files.is_empty() {
            let src = self.dir.join(format!("src-{name}"));
            std::fs::create_dir(&src).expect("creating the filesystem's source dir");
            for (file, data) in files {
                std::fs::write(src.join(file), data).expect("writing a source file");
            }
            cmd.arg("-d").arg(src);
        }
        run_ok(cmd.arg(target));
    }
}

impl Drop for Disks {
    fn drop(&mut self) {
        // The server and its namespace are gone by now; these are the calling thread's own mounts. The loop
        // devices are detached by the guard, then the directory is removed.
        if let Ok(table) = MountTable::read_self() {
            let mut points = mounts_under(&table, &self.dir);
            points.reverse();
            for p in points {
                if let Err(e) = rustix::mount::unmount(&p, rustix::mount::UnmountFlags::DETACH) {
                    eprintln!("warning: unmounting {}: {e}", p.display());
                }
            }
        }
    }
}

/// Runs `cmd` (stdin closed), which must succeed; returns its output.
#[track_caller]
fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `blkid -p -o export` of `dev`: what signature it holds (`None`: nothing found).
fn blkid(dev: &Path) -> Option<String> {
    let out = Command::new("blkid")
        .args(["-p", "-o", "export"])
        .arg(dev)
        .stdin(Stdio::null())
        .output()
        .expect("running blkid");
    match out.status.code() {
        Some(0) => Some(String::from_utf8_lossy(&out.stdout).into_owned()),
        Some(2) => None,
        _ => panic!(
            "blkid -p {}: {}\n{}",
            dev.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// The value of `key` (`TYPE`, `UUID`) that blkid finds on `dev`.
fn blkid_value(dev: &Path, key: &str) -> Option<String> {
    blkid(dev)?.lines().find_map(|l| {
        l.strip_prefix(key)
            .and_then(|r| r.strip_prefix('='))
            .map(|v| v.trim().to_owned())
    })
}

/// `len` bytes at a 4096-byte aligned address, as O_DIRECT wants.
struct Aligned {
    buf: Vec<u8>,
    start: usize,
    len: usize,
}

impl Aligned {
    fn new(len: usize) -> Aligned {
        let buf = vec![0; len + BLOCK];
        let start = buf.as_ptr().align_offset(BLOCK);
        Aligned { buf, start, len }
    }

    fn bytes(&self) -> &[u8] {
        &self.buf[self.start..self.start + self.len]
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..self.start + self.len]
    }
}

/// Writes `data` at `offset` of `path` with O_DIRECT (so it reaches the device) and syncs.
fn write_direct(path: &Path, offset: u64, data: &[u8]) {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .unwrap_or_else(|e| panic!("opening {} O_DIRECT for writing: {e}", path.display()));
    let mut buf = Aligned::new(data.len());
    buf.bytes_mut().copy_from_slice(data);
    f.write_all_at(buf.bytes(), offset)
        .unwrap_or_else(|e| panic!("writing {} O_DIRECT: {e}", path.display()));
    f.sync_all().expect("fsync");
}

/// Reads `len` bytes at `offset` of `path` with O_DIRECT: what the device holds, not what a cache remembers.
fn read_direct(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .unwrap_or_else(|e| panic!("opening {} O_DIRECT for reading: {e}", path.display()));
    let mut buf = Aligned::new(len);
    f.read_exact_at(buf.bytes_mut(), offset)
        .unwrap_or_else(|e| panic!("reading {} O_DIRECT: {e}", path.display()));
    buf.bytes().to_vec()
}

/// The offset of the first byte of `path` (read whole, O_DIRECT) that is not zero, if any.
fn first_nonzero(path: &Path, size: i64) -> Option<usize> {
    read_direct(path, 0, size as usize).iter().position(|b| *b != 0)
}

// ---------------------------------------------------------------------------------------------------------
// The server: config, signals, what it says about its disks

/// A `[[pools]]` table of a device pool at `dir` that discovers only at start-up and on SIGHUP.
fn device_pool(name: &str, dir: &Path, extra: &str) -> String {
    pool_toml(
        name,
        "device",
        dir,
        &format!("discovery_interval_seconds = 3600\n{extra}"),
    )
}

/// SIGHUP: the server's device pools discover again.
fn sighup(srv: &Server) {
    let pid = rustix::process::Pid::from_raw(srv.pid as i32).expect("a server pid");
    rustix::process::kill_process(pid, rustix::process::Signal::HUP).expect("sending SIGHUP");
}

/// One disk as GetPluginInfo's manifest lists it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct DiskRow {
    identity: String,
    size: u64,
    path: PathBuf,
    state: String,
}

/// Pool `pool`'s disks and skipped entries (path, reason), from GetPluginInfo's manifest, sorted.
async fn inventory(srv: &Server, pool: &str) -> (Vec<DiskRow>, Vec<(PathBuf, String)>) {
    let info = ok(srv
        .identity()
        .await
        .get_plugin_info(csi::GetPluginInfoRequest {})
        .await);
    let (disk_prefix, skip_prefix) = (format!("disk/{pool}/"), format!("skipped/{pool}/"));
    let mut disks = Vec::new();
    let mut skipped = Vec::new();
    for (k, v) in &info.manifest {
        if let Some(identity) = k.strip_prefix(&disk_prefix) {
            let d: Value = serde_json::from_str(v).unwrap_or_else(|e| panic!("{k} = {v}: {e}"));
            disks.push(DiskRow {
                identity: identity.to_owned(),
                size: d["size"].as_u64().unwrap_or_else(|| panic!("{k} = {v}: no size")),
                path: PathBuf::from(d["path"].as_str().unwrap_or_else(|| panic!("{k} = {v}: no path"))),
                state: d["state"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{k} = {v}: no state"))
                    .to_owned(),
            });
        } else if let Some(path) = k.strip_prefix(&skip_prefix) {
            skipped.push((PathBuf::from(path), v.clone()));
        }
    }
    disks.sort();
    skipped.sort();
    (disks, skipped)
}

/// The row of disk `identity` in pool `pool`; fails if the pool does not list it.
async fn disk_row(srv: &Server, pool: &str, identity: &str) -> DiskRow {
    let (disks, _) = inventory(srv, pool).await;
    disks
        .iter()
        .find(|d| d.identity == identity)
        .cloned()
        .unwrap_or_else(|| panic!("pool {pool} does not list disk {identity}: {disks:#?}"))
}

/// The state of disk `identity` in pool `pool`.
async fn state_of(srv: &Server, pool: &str, identity: &str) -> String {
    disk_row(srv, pool, identity).await.state
}

/// Waits until disk `identity` of pool `pool` is listed with a state for which `want` holds, and returns its
/// row; fails after [`WAIT`] with the disks and the log.
async fn wait_state(
    srv: &Server,
    pool: &str,
    identity: &str,
    what: &str,
    want: impl Fn(&str) -> bool,
) -> DiskRow {
    let deadline = Instant::now() + WAIT;
    loop {
        let (disks, _) = inventory(srv, pool).await;
        if let Some(d) = disks.iter().find(|d| d.identity == identity)
            && want(&d.state)
        {
            return d.clone();
        }
        if Instant::now() > deadline {
            panic!(
                "disk {identity} of pool {pool} is not {what} after {WAIT:?}: {disks:#?}\nlog:\n{}",
                srv.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until disk `identity` of pool `pool` is free.
async fn wait_free(srv: &Server, pool: &str, identity: &str) -> DiskRow {
    wait_state(srv, pool, identity, "free", |s| s == "free").await
}

/// Lines of `log` that contain every one of `parts`.
fn lines_with<'l>(log: &'l str, parts: &[&str]) -> Vec<&'l str> {
    log.lines()
        .filter(|l| parts.iter().all(|p| l.contains(p)))
        .collect()
}

/// Asserts that some line of the server's log holds every one of `parts`.
#[track_caller]
fn assert_logged(srv: &Server, parts: &[&str]) {
    let log = srv.log();
    assert!(
        !lines_with(&log, parts).is_empty(),
        "no log line with all of {parts:?}:\n{log}"
    );
}

/// A CreateVolume request for `required..=limit` bytes (0: no bound) with capability `cap` in `pool`.
fn create_range(
    pool: &str,
    name: &str,
    required: i64,
    limit: i64,
    cap: csi::VolumeCapability,
) -> csi::CreateVolumeRequest {
    csi::CreateVolumeRequest {
        capacity_range: Some(csi::CapacityRange {
            required_bytes: required,
            limit_bytes: limit,
        }),
        ..create_in(pool, name, required, vec![cap])
    }
}

/// GetCapacity of `pool` for `cap`: (available, maximum volume size).
async fn capacity_for(ctl: &mut Ctl, pool: &str, cap: csi::VolumeCapability) -> (i64, i64) {
    let r = ok(ctl
        .get_capacity(csi::GetCapacityRequest {
            volume_capabilities: vec![cap],
            parameters: in_pool(pool),
            ..Default::default()
        })
        .await);
    (
        r.available_capacity,
        r.maximum_volume_size.expect("maximum_volume_size"),
    )
}

/// A device pool's state directory in the server's data dir.
fn pool_state_dir(srv: &Server, pool: &str) -> PathBuf {
    srv.data_dir().join("node/devices").join(pool)
}

/// The record file of volume `id` of device pool `pool`.
fn device_record(srv: &Server, pool: &str, id: &str) -> PathBuf {
    pool_state_dir(srv, pool)
        .join("records")
        .join(format!("{}.json", volume_hex(id)))
}

/// The cleaning notes of device pool `pool`.
fn cleaning_notes(srv: &Server, pool: &str) -> Vec<String> {
    entries(&pool_state_dir(srv, pool).join("cleaning"))
}

fn read_json(path: &Path) -> Value {
    let data = std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_slice(&data).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

fn write_json(path: &Path, v: &Value) {
    std::fs::write(path, serde_json::to_vec_pretty(v).unwrap())
        .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

/// `loam client --endpoint <srv> [--json] disks <args>`, which must succeed; returns its stdout.
fn client_disks(srv: &Server, json: bool, args: &[&str]) -> String {
    let out = loam_command()
        .args(["client", "--endpoint", &srv.endpoint, "--timeout", "10"])
        .args(json.then_some("--json"))
        .arg("disks")
        .args(args)
        .output()
        .expect("running loam client");
    assert!(
        out.status.success(),
        "loam client disks {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// The disk claim in the record of volume `id` of device pool `pool`.
fn claim_of(srv: &Server, pool: &str, id: &str) -> Value {
    read_json(&device_record(srv, pool, id))["device"].clone()
}

/// A 16 MiB block volume `name` in `pool` is refused: every disk that fits is taken (or not offered).
async fn all_in_use(ctl: &mut Ctl, pool: &str, name: &str) {
    let req = create_in(pool, name, 16 * MIB, vec![block_cap(SNW)]);
    let st = expect_code(ctl.create_volume(req).await, Code::ResourceExhausted);
    assert!(
        st.message()
            .contains("every disk that fits is in use, being cleaned or not adopted"),
        "{}",
        st.message()
    );
}

/// Pool `pool`'s one 16 MiB disk is not offered: a create is refused and GetCapacity offers nothing.
async fn not_offered(ctl: &mut Ctl, pool: &str) {
    all_in_use(ctl, pool, "not-offered").await;
    assert_eq!(capacity_for(ctl, pool, block_cap(SNW)).await, (0, 0));
}

/// The state a disk holding volume `id` shows.
fn in_use_by(id: &str) -> String {
    format!("in use by volume {id}")
}

/// How many times the server's log says it formatted volume `id`.
fn formatted(srv: &Server, id: &str) -> usize {
    lines_with(&srv.log(), &["volume formatted", id]).len()
}

/// The one mount the server has at `path`.
#[track_caller]
fn the_mount_at(srv: &Server, path: &Path) -> loam_sys::mountinfo::MountInfo {
    let table = srv.mount_table();
    let at = table.mounts_at(path);
    assert_eq!(at.len(), 1, "mounts at {}: {at:?}", path.display());
    at[0].clone()
}

// ---------------------------------------------------------------------------------------------------------
// 1. Discovery and identity

#[tokio::test]
async fn device_discovery_knows_each_disk_by_identity_and_skips_what_is_not_a_disk() {
    if !require_root("device_discovery_knows_each_disk_by_identity_and_skips_what_is_not_a_disk") {
        return;
    }
    let disks = Disks::new();
    let dir = disks.discovery();
    // Disks: a mounted ext4 filesystem, two raw devices, one holding ext4, one mounted elsewhere.
    let mnt = disks.mounted("d-mnt", 32 * MIB, &[]);
    let b = disks.raw("d-raw-b", 16 * MIB);
    let c = disks.raw("d-raw-c", 24 * MIB);
    let sig = disks.raw_ext4("d-sig", 20 * MIB, &[]);
    let busy = disks.raw_ext4("d-busy", 28 * MIB, &[]);
    let elsewhere = disks.dir.join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    loam_sys::mount::mount_fs(&busy.dev.path, &elsewhere, "ext4", &[], false).unwrap();
    // Not disks: a regular file, a link out of /dev, a plain directory, the same device linked twice.
    std::fs::write(dir.join("d-file"), b"not a disk\n").unwrap();
    std::os::unix::fs::symlink("/etc/passwd", dir.join("d-passwd")).unwrap();
    std::fs::create_dir(dir.join("d-plain")).unwrap();
    std::os::unix::fs::symlink(&b.dev.path, dir.join("d-zz-again")).unwrap();
    // A disk whose name the pattern leaves out.
    let excluded = disks.raw("x-excluded", 16 * MIB);

    let mut srv = Server::start_with_config(
        NODE,
        |_| device_pool("found", &dir, "fs_type = \"ext4\"\npattern = \"d-*\""),
        &[],
    );

    let mnt_id = mnt.fs_identity();
    assert!(mnt_id.len() > "fs:".len() + 30, "{mnt_id}");
    let mnt_size = loam_sys::statfs::statfs(&mnt.entry).unwrap().total_bytes;
    let adopt_hint = "empty it, or set adopt_non_empty = true for pool found";
    let mut want = vec![
        DiskRow {
            identity: mnt_id.clone(),
            size: mnt_size,
            path: mnt.entry.clone(),
            state: "free".into(),
        },
        DiskRow {
            identity: b.loop_identity(),
            size: 16 * MIB as u64,
            path: b.entry.clone(),
            state: "free".into(),
        },
        DiskRow {
            identity: c.loop_identity(),
            size: 24 * MIB as u64,
            path: c.entry.clone(),
            state: "free".into(),
        },
        DiskRow {
            identity: sig.loop_identity(),
            size: 20 * MIB as u64,
            path: sig.entry.clone(),
            state: format!("not adopted: holds data (ext4); {adopt_hint}"),
        },
        DiskRow {
            identity: busy.loop_identity(),
            size: 28 * MIB as u64,
            path: busy.entry.clone(),
            state: format!("busy: mounted at {}", elsewhere.display()),
        },
    ];
    want.sort();
    let passwd = std::fs::canonicalize("/etc/passwd").unwrap();
    let want_skipped: Vec<(PathBuf, String)> = vec![
        (dir.join("d-file"), "a regular file, not a disk".to_owned()),
        (
            dir.join("d-passwd"),
            format!("a link to {}, outside /dev", passwd.display()),
        ),
        (
            dir.join("d-plain"),
            "a directory that is not a mount point".to_owned(),
        ),
        (
            dir.join("d-zz-again"),
            format!("the same disk ({}) as {}", b.loop_identity(), b.entry.display()),
        ),
    ];

    // `loam client disks --json`: each disk with its identity, size, path and state; each skipped entry.
    let doc: Value = serde_json::from_str(&client_disks(&srv, true, &["--pool", "found"])).unwrap();
    let mut got: Vec<DiskRow> = doc["disks"]
        .as_array()
        .unwrap_or_else(|| panic!("no disks in {doc}"))
        .iter()
        .map(|d| {
            assert_eq!(d["pool"], "found", "{d}");
            DiskRow {
                identity: d["identity"].as_str().unwrap().to_owned(),
                size: d["size"].as_u64().unwrap(),
                path: PathBuf::from(d["path"].as_str().unwrap()),
                state: d["state"].as_str().unwrap().to_owned(),
            }
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        want,
        "loam client disks --json:\n{doc:#}\nlog:\n{}",
        srv.log()
    );
    let mut skipped: Vec<(PathBuf, String)> = doc["skipped"]
        .as_array()
        .unwrap_or_else(|| panic!("no skipped in {doc}"))
        .iter()
        .map(|s| {
            assert_eq!(s["pool"], "found", "{s}");
            (
                PathBuf::from(s["path"].as_str().unwrap()),
                s["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    skipped.sort();
    assert_eq!(
        skipped.iter().map(|(p, _)| p).collect::<Vec<_>>(),
        want_skipped.iter().map(|(p, _)| p).collect::<Vec<_>>(),
        "{doc:#}"
    );
    for ((path, reason), (_, want_reason)) in skipped.iter().zip(&want_skipped) {
        assert!(
            reason.contains(want_reason.as_str()),
            "{}: reason {reason:?} does not say {want_reason:?}",
            path.display()
        );
    }
    // The manifest says the same.
    let (rows, manifest_skipped) = inventory(&srv, "found").await;
    assert_eq!(rows, want);
    assert_eq!(manifest_skipped, skipped);
    // Each identity is what the disk is: its filesystem's UUID, its image file's device and inode.
    let st = std::fs::metadata(&b.image).unwrap();
    assert_eq!(b.loop_identity(), format!("dev:loop:{}:{}", st.dev(), st.ino()));
    assert_eq!(
        mnt_id,
        format!("fs:{}", blkid_value(&mnt.dev.path, "UUID").unwrap())
    );

    // The text form: a table row per disk and a line per skipped entry.
    let text = client_disks(&srv, false, &["--pool", "found"]);
    assert!(
        text.lines().next().is_some_and(|h| {
            ["POOL", "IDENTITY", "BYTES", "PATH", "STATE"]
                .iter()
                .all(|c| h.contains(c))
        }),
        "{text}"
    );
    let b_entry = s(&b.entry);
    let b_id = b.loop_identity();
    assert!(
        !lines_with(&text, &["found", &b_id, "16777216", &b_entry, "free"]).is_empty(),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "skipped {}: a regular file, not a disk",
            dir.join("d-file").display()
        )),
        "{text}"
    );

    // The log names each disk found, with its identity, path and size, and each skipped entry with its reason.
    let log = srv.log();
    for (d, what) in [
        (&sig, "holds data (ext4)"),
        (&busy, &format!("mounted at {}", elsewhere.display())),
    ] {
        let disk = format!("disk={}", d.loop_identity());
        assert!(
            !lines_with(&log, &["disk found", &disk, what]).is_empty(),
            "the `disk found` line of {} does not say {what}:\n{log}",
            d.entry.display()
        );
    }
    for d in &want {
        let (disk, path, bytes) = (
            format!("disk={}", d.identity),
            format!("path={}", d.path.display()),
            format!("bytes={}", d.size),
        );
        assert!(
            !lines_with(&log, &["disk found", &disk, &path, &bytes]).is_empty(),
            "no `disk found` line for {d:?}:\n{log}"
        );
    }
    for (path, reason) in &want_skipped {
        let path = format!("path={}", path.display());
        assert!(
            !lines_with(&log, &["discovery entry skipped", &path, reason]).is_empty(),
            "no `discovery entry skipped` line for {path} ({reason}):\n{log}"
        );
        assert!(
            lines_with(&log, &["WARN", &path]).len() == 1,
            "a skipped entry is warned about once:\n{log}"
        );
    }
    assert!(
        !log.contains("x-excluded") && !log.contains(&excluded.loop_identity()),
        "the pattern should leave x-excluded out:\n{log}"
    );

    // GetCapacity: the free disks that serve a filesystem volume.
    let mut ctl = srv.controller().await;
    let free = mnt_size as i64 + 16 * MIB + 24 * MIB;
    let largest = (mnt_size as i64).max(24 * MIB);
    assert_eq!(
        capacity_for(&mut ctl, "found", mount_cap(SNW)).await,
        (free, largest)
    );

    // Disk c is replaced by another of the same size at the same name: a new identity, and c is missing.
    loam_sys::loopdev::detach(&c.dev).unwrap();
    let c2_image = disks.image("d-raw-c-new", 24 * MIB);
    let c2_dev = disks.attach(&c2_image);
    disks.link("d-raw-c", &c2_dev);
    let (c_id, c2_id) = (c.loop_identity(), loop_identity(&c2_image));
    assert_ne!(c_id, c2_id);
    sighup(&srv);
    let row = wait_free(&srv, "found", &c2_id).await;
    assert_eq!((row.path, row.size), (c.entry.clone(), 24 * MIB as u64));
    assert_eq!(
        state_of(&srv, "found", &c_id).await,
        format!("missing (last seen at {})", c.entry.display())
    );
    assert_logged(&srv, &["disk missing", &format!("disk={c_id}")]);
    assert_logged(&srv, &["disk found", &format!("disk={c2_id}")]);
    // The others are as they were; the capacity is the same, from the new disk.
    let (rows, _) = inventory(&srv, "found").await;
    assert_eq!(rows.len(), want.len() + 1, "{rows:#?}");
    for d in want.iter().filter(|d| d.identity != c_id) {
        assert!(rows.contains(d), "{d:?} changed: {rows:#?}");
    }
    assert_eq!(
        capacity_for(&mut ctl, "found", mount_cap(SNW)).await,
        (free, largest)
    );
    drop(ctl);
    srv.stop();
}

// ---------------------------------------------------------------------------------------------------------
// 2. Safe adoption

#[tokio::test]
async fn device_disks_holding_data_are_adopted_only_when_the_pool_opts_in_and_never_reformatted() {
    if !require_root("device_disks_holding_data_are_adopted_only_when_the_pool_opts_in_and_never_reformatted")
    {
        return;
    }
    let disks = Disks::new();
    let dir = disks.discovery();
    let keep: &[u8] = b"data on a raw disk\n";
    let kept: &[u8] = b"a file on a mounted disk\n";
    let sig = disks.raw_ext4("sig", 20 * MIB, &[("keep", keep)]);
    let full = disks.mounted("full", 24 * MIB, &[("kept", kept)]);
    let spare = disks.raw("spare", 16 * MIB);
    let sig_uuid = blkid_value(&sig.dev.path, "UUID").expect("a UUID");
    let (sig_id, full_id, spare_id) = (sig.loop_identity(), full.fs_identity(), spare.loop_identity());
    let full_size = loam_sys::statfs::statfs(&full.entry).unwrap().total_bytes as i64;
    let config = |adopt: bool| {
        device_pool(
            "strict",
            &dir,
            if adopt {
                "fs_type = \"ext4\"\nadopt_non_empty = true"
            } else {
                "fs_type = \"ext4\""
            },
        )
    };
    let mut srv = Server::start_with_config(NODE, |_| config(false), &[]);
    let mut ctl = srv.controller().await;

    // Not adopted: listed with why, never offered.
    let hint = "empty it, or set adopt_non_empty = true for pool strict";
    assert_eq!(
        state_of(&srv, "strict", &sig_id).await,
        format!("not adopted: holds data (ext4); {hint}")
    );
    assert_eq!(
        state_of(&srv, "strict", &full_id).await,
        format!("not adopted: holds files (1 entries); {hint}")
    );
    assert_eq!(state_of(&srv, "strict", &spare_id).await, "free");
    assert_eq!(
        capacity_for(&mut ctl, "strict", mount_cap(SNW)).await,
        (16 * MIB, 16 * MIB)
    );
    for (name, size) in [("want-sig", 20 * MIB), ("want-full", full_size)] {
        let st = expect_code(
            ctl.create_volume(create_range("strict", name, size, size, mount_cap(SNW)))
                .await,
            Code::ResourceExhausted,
        );
        let m = st.message();
        assert!(
            m.contains(&format!("pool strict: no free disk of {size} to {size} bytes"))
                && m.contains("the largest free disk has 16777216 bytes"),
            "{m}"
        );
    }
    // A free disk written to since discovery (no SIGHUP): not given to a volume, and no longer offered.
    run_ok(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-E", "nodiscard"])
            .arg(&spare.dev.path),
    );
    let st = expect_code(
        ctl.create_volume(create_range(
            "strict",
            "want-spare",
            16 * MIB,
            16 * MIB,
            mount_cap(SNW),
        ))
        .await,
        Code::ResourceExhausted,
    );
    assert!(
        st.message().contains(&format!(
            "pool strict: disk {spare_id} now holds data (ext4); it is no longer offered"
        )),
        "{}",
        st.message()
    );
    assert_eq!(
        state_of(&srv, "strict", &spare_id).await,
        format!("not adopted: holds data (ext4); {hint}")
    );
    assert_eq!(capacity_for(&mut ctl, "strict", mount_cap(SNW)).await, (0, 0));
    assert_logged(&srv, &["disk no longer offered", &format!("disk={spare_id}")]);
    assert!(entries(&pool_state_dir(&srv, "strict").join("records")).is_empty());
    assert_eq!(
        blkid_value(&sig.dev.path, "UUID").as_deref(),
        Some(sig_uuid.as_str())
    );
    assert_eq!(std::fs::read(full.entry.join("kept")).unwrap(), kept);
    drop(ctl);

    // The same disks in a pool that adopts what holds data: offered.
    srv.stop();
    std::fs::write(srv.config_file(), config(true)).unwrap();
    srv.start_again();
    let (mut ctl, mut node) = (srv.controller().await, srv.node().await);
    for id in [&sig_id, &full_id, &spare_id] {
        assert_eq!(state_of(&srv, "strict", id).await, "free", "{id}");
    }
    assert_eq!(
        capacity_for(&mut ctl, "strict", mount_cap(SNW)).await,
        (16 * MIB + 20 * MIB + full_size, full_size.max(20 * MIB))
    );

    // A filesystem volume on the device holding ext4 mounts that filesystem, its file intact.
    let v = create_with(
        &mut ctl,
        create_range("strict", "on-sig", 20 * MIB, 20 * MIB, mount_cap(SNW)),
    )
    .await;
    assert_eq!(v.capacity_bytes, 20 * MIB);
    let sid = v.volume_id;
    assert_eq!(state_of(&srv, "strict", &sig_id).await, in_use_by(&sid));
    let staging = srv.staging_dir("staging-sig");
    let target = srv.target_path("sig");
    stage_and_publish(&mut node, &sid, &staging, &target, mount_cap(SNW)).await;
    let m = the_mount_at(&srv, &staging);
    assert_eq!(m.fs_type, "ext4", "{m:?}");
    assert_eq!((m.major, m.minor), (sig.dev.major, sig.dev.minor), "{m:?}");
    assert_eq!(std::fs::read(srv.in_ns(&target).join("keep")).unwrap(), keep);
    assert_eq!(formatted(&srv, &sid), 0, "the adopted disk was formatted");
    assert_eq!(
        blkid_value(&sig.dev.path, "UUID").as_deref(),
        Some(sig_uuid.as_str())
    );

    // A volume on the mount point holding a file: the file is there.
    let v = create_with(
        &mut ctl,
        create_range("strict", "on-full", full_size, full_size, mount_cap(SNW)),
    )
    .await;
    assert_eq!(v.capacity_bytes, full_size);
    let fid = v.volume_id;
    assert_eq!(state_of(&srv, "strict", &full_id).await, in_use_by(&fid));
    let full_staging = srv.staging_dir("staging-full");
    let full_target = srv.target_path("full");
    stage_and_publish(&mut node, &fid, &full_staging, &full_target, mount_cap(SNW)).await;
    let m = the_mount_at(&srv, &full_target);
    assert_eq!(
        (m.major, m.minor, m.root.as_path()),
        (full.dev.major, full.dev.minor, Path::new("/"))
    );
    assert_eq!(std::fs::read(srv.in_ns(&full_target).join("kept")).unwrap(), kept);

    unpublish_and_unstage(&mut node, &sid, &staging, &target).await;
    unpublish_and_unstage(&mut node, &fid, &full_staging, &full_target).await;
    srv.assert_no_mounts();
    delete(&mut ctl, &sid).await;
    delete(&mut ctl, &fid).await;
    wait_free(&srv, "strict", &sig_id).await;
    wait_free(&srv, "strict", &full_id).await;
    drop((ctl, node));
    srv.stop();
}

// ---------------------------------------------------------------------------------------------------------
// 3. Best fit

#[tokio::test]
async fn device_best_fit_gives_the_smallest_disk_that_fits_and_capacity_follows() {
    if !require_root("device_best_fit_gives_the_smallest_disk_that_fits_and_capacity_follows") {
        return;
    }
    let disks = Disks::new();
    let d16 = disks.raw("d16", 16 * MIB);
    let d32 = disks.raw("d32", 32 * MIB);
    let d48 = disks.raw("d48", 48 * MIB);
    let dir = disks.discovery();
    let srv = Server::start_with_config(NODE, |_| device_pool("fit", &dir, "volume_mode = \"block\""), &[]);
    let mut ctl = srv.controller().await;
    let blk = || block_cap(SNW);
    // A block pool serves block capabilities only; mount capabilities get nothing.
    macro_rules! capacity_is {
        ($avail:expr, $max:expr) => {
            assert_eq!(
                capacity_for(&mut ctl, "fit", blk()).await,
                ($avail, $max),
                "block capacity"
            );
            assert_eq!(
                capacity_for(&mut ctl, "fit", mount_cap(SNW)).await,
                (0, 0),
                "mount capacity of a block pool"
            );
        };
    }
    capacity_is!(96 * MIB, 48 * MIB);
    let st = expect_code(
        ctl.create_volume(create_range("fit", "fs", 16 * MIB, 0, mount_cap(SNW)))
            .await,
        Code::InvalidArgument,
    );
    assert!(
        st.message().contains("device pool fit serves raw block volumes"),
        "{}",
        st.message()
    );

    // 20 MiB: the 32 MiB disk, whose whole size the volume gets.
    let v = create_with(&mut ctl, create_range("fit", "a", 20 * MIB, 0, blk())).await;
    assert_eq!(v.capacity_bytes, 32 * MIB);
    let a = v.volume_id;
    assert_eq!(state_of(&srv, "fit", &d32.loop_identity()).await, in_use_by(&a));
    let rec = read_json(&device_record(&srv, "fit", &a));
    assert_eq!(rec["state"], "ready", "{rec}");
    assert_eq!(rec["device"]["entry"], d32.loop_identity().as_str(), "{rec}");
    assert_eq!(rec["device"]["path"], s(&d32.entry).as_str(), "{rec}");
    assert_eq!(rec["capacity_bytes"], 32 * MIB, "{rec}");
    capacity_is!(64 * MIB, 48 * MIB);

    // Exactly 16 MiB: the 16 MiB disk.
    let v = create_with(&mut ctl, create_range("fit", "b", 16 * MIB, 16 * MIB, blk())).await;
    assert_eq!(v.capacity_bytes, 16 * MIB);
    let b = v.volume_id;
    assert_eq!(state_of(&srv, "fit", &d16.loop_identity()).await, in_use_by(&b));
    capacity_is!(48 * MIB, 48 * MIB);

    // 20 to 40 MiB: only the 32 MiB disk fits, and it is taken; the largest free one is named.
    let st = expect_code(
        ctl.create_volume(create_range("fit", "c", 20 * MIB, 40 * MIB, blk()))
            .await,
        Code::ResourceExhausted,
    );
    assert!(
        st.message().contains(&format!(
            "pool fit: no free disk of {} to {} bytes; the largest free disk has {} bytes",
            20 * MIB,
            40 * MIB,
            48 * MIB
        )),
        "{}",
        st.message()
    );
    // More than any disk the pool has: OUT_OF_RANGE, with the sizes it has.
    let st = expect_code(
        ctl.create_volume(create_range("fit", "huge", 48 * MIB + 1, 0, blk()))
            .await,
        Code::OutOfRange,
    );
    assert!(
        st.message().contains(&format!(
            "pool fit has no disk of at least {} bytes",
            48 * MIB + 1
        )) && st
            .message()
            .contains("its disk sizes: 16777216, 33554432, 50331648"),
        "{}",
        st.message()
    );
    capacity_is!(48 * MIB, 48 * MIB);

    // The last disk; then nothing is free.
    let v = create_with(&mut ctl, create_range("fit", "d", 33 * MIB, 0, blk())).await;
    assert_eq!(v.capacity_bytes, 48 * MIB);
    let d = v.volume_id;
    capacity_is!(0, 0);
    let st = expect_code(
        ctl.create_volume(create_range("fit", "e", MIB, 0, blk())).await,
        Code::ResourceExhausted,
    );
    assert!(
        st.message()
            .contains("every disk that fits is in use, being cleaned or not adopted"),
        "{}",
        st.message()
    );

    // A deleted volume's disk comes back once cleaned, and best fit gives it again.
    delete(&mut ctl, &a).await;
    wait_free(&srv, "fit", &d32.loop_identity()).await;
    capacity_is!(32 * MIB, 32 * MIB);
    let v = create_with(&mut ctl, create_range("fit", "f", 17 * MIB, 0, blk())).await;
    assert_eq!(v.capacity_bytes, 32 * MIB);
    assert_eq!(
        state_of(&srv, "fit", &d32.loop_identity()).await,
        in_use_by(&v.volume_id)
    );
    for id in [&v.volume_id, &b, &d] {
        delete(&mut ctl, id).await;
    }
    for disk in [&d16, &d32, &d48] {
        wait_free(&srv, "fit", &disk.loop_identity()).await;
    }
    capacity_is!(96 * MIB, 48 * MIB);
}

// ---------------------------------------------------------------------------------------------------------
// 4. Block and filesystem publishing

#[tokio::test]
async fn device_volumes_publish_raw_formatted_once_or_bind_mounted_with_stats() {
    if !require_root("device_volumes_publish_raw_formatted_once_or_bind_mounted_with_stats") {
        return;
    }
    let disks = Disks::new();
    let raw_dir = disks.dir.join("raw-disks");
    std::fs::create_dir(&raw_dir).unwrap();
    // The block pool's disk, linked in its own discovery directory.
    let blk_image = disks.image("blk", 16 * MIB);
    let blk_dev = disks.attach(&blk_image);
    std::os::unix::fs::symlink(&blk_dev.path, raw_dir.join("blk")).unwrap();
    // The filesystem pool's: a raw disk (formatted at first stage) and a mounted one.
    let fmt = disks.raw("fmt", 32 * MIB);
    let mnt = disks.mounted("mnt", 24 * MIB, &[]);
    let fs_dir = disks.discovery();
    let mut srv = Server::start_with_config(
        NODE,
        |_| {
            format!(
                "default_pool = \"fs\"\n{}{}",
                device_pool("raw", &raw_dir, "volume_mode = \"block\""),
                device_pool("fs", &fs_dir, "fs_type = \"ext4\"")
            )
        },
        &[],
    );
    let (mut ctl, mut node) = (srv.controller().await, srv.node().await);

    // Raw block: the device node is bound at the target; what is written there is on the disk.
    let blk = block_cap(SNW);
    let id = create_with(&mut ctl, create_in("raw", "blk", 16 * MIB, vec![blk.clone()]))
        .await
        .volume_id;
    let staging = srv.staging_dir("staging-blk");
    let target = srv.target_path("blk");
    stage_and_publish(&mut node, &id, &staging, &target, blk.clone()).await;
    let rdev = std::fs::metadata(&blk_dev.path).unwrap().rdev();
    let m = std::fs::metadata(srv.in_ns(&target)).unwrap();
    assert!(m.file_type().is_block_device(), "{}", target.display());
    assert_eq!(m.rdev(), rdev);
    let data = pattern(256 * KIB as usize, 7);
    let at = 5 * MIB as u64 + 3 * BLOCK as u64;
    write_direct(&srv.in_ns(&target), at, &data);
    assert!(
        read_direct(&blk_dev.path, at, data.len()) == data,
        "what was written through the target is not on the disk"
    );
    let r = ok(node.node_get_volume_stats(stats_req(&id, &s(&target))).await);
    let bytes = r
        .usage
        .iter()
        .find(|u| u.unit == Unit::Bytes as i32)
        .unwrap_or_else(|| panic!("no bytes row: {r:?}"));
    assert_eq!(bytes.total, 16 * MIB, "{r:?}");
    assert!(!r.volume_condition.expect("a condition").abnormal);
    unpublish_and_unstage(&mut node, &id, &staging, &target).await;
    delete(&mut ctl, &id).await;

    // A raw disk for a filesystem volume: formatted at the first stage only.
    assert_eq!(blkid(&fmt.dev.path), None);
    let v = create_with(
        &mut ctl,
        create_range("fs", "fmt", 32 * MIB, 32 * MIB, mount_cap(SNW)),
    )
    .await;
    assert_eq!(v.capacity_bytes, 32 * MIB);
    let fid = v.volume_id;
    assert_eq!(state_of(&srv, "fs", &fmt.loop_identity()).await, in_use_by(&fid));
    let staging = srv.staging_dir("staging-fmt");
    let target = srv.target_path("fmt");
    stage_and_publish(&mut node, &fid, &staging, &target, mount_cap(SNW)).await;
    assert_eq!(blkid_value(&fmt.dev.path, "TYPE").as_deref(), Some("ext4"));
    let uuid = blkid_value(&fmt.dev.path, "UUID").unwrap();
    assert_eq!(formatted(&srv, &fid), 1);
    let m = the_mount_at(&srv, &staging);
    assert_eq!(
        (m.fs_type.as_str(), m.major, m.minor),
        ("ext4", fmt.dev.major, fmt.dev.minor)
    );
    assert_eq!(srv.mounts_at(&target), 1);
    let data = pattern(300 * KIB as usize, 3);
    write_synced(&srv.in_ns(&target).join("data"), &data);
    let r = ok(node.node_get_volume_stats(stats_req(&fid, &s(&target))).await);
    let st = loam_sys::statfs::statfs(&srv.in_ns(&target)).unwrap();
    let (bytes, inodes) = usage_rows(&r);
    assert_eq!(bytes.total as u64, st.total_bytes, "{bytes:?} vs {st:?}");
    assert_eq!(
        bytes.used as u64,
        st.total_bytes - st.free_bytes,
        "{bytes:?} vs {st:?}"
    );
    assert_eq!(bytes.available as u64, st.available_bytes, "{bytes:?} vs {st:?}");
    assert_eq!(inodes.total as u64, st.total_inodes, "{inodes:?} vs {st:?}");
    assert!(
        st.total_bytes < 32 * MIB as u64 && st.total_bytes > 24 * MIB as u64,
        "{st:?}"
    );
    unpublish_and_unstage(&mut node, &fid, &staging, &target).await;
    assert_eq!(srv.mounts_at(&staging), 0);
    // Staged again: the same filesystem, the file intact, not formatted again.
    stage_and_publish(&mut node, &fid, &staging, &target, mount_cap(SNW)).await;
    assert!(std::fs::read(srv.in_ns(&target).join("data")).unwrap() == data);
    assert_eq!(formatted(&srv, &fid), 1, "formatted again");
    assert_eq!(blkid_value(&fmt.dev.path, "UUID").as_deref(), Some(uuid.as_str()));
    unpublish_and_unstage(&mut node, &fid, &staging, &target).await;
    // Across a restart too.
    drop((ctl, node));
    srv.restart();
    let (mut ctl, mut node) = (srv.controller().await, srv.node().await);
    stage_and_publish(&mut node, &fid, &staging, &target, mount_cap(SNW)).await;
    assert!(std::fs::read(srv.in_ns(&target).join("data")).unwrap() == data);
    assert_eq!(formatted(&srv, &fid), 1, "formatted again after a restart");
    unpublish_and_unstage(&mut node, &fid, &staging, &target).await;

    // A mounted disk: bind-mounted, its whole filesystem the volume.
    let mnt_size = loam_sys::statfs::statfs(&mnt.entry).unwrap().total_bytes as i64;
    let v = create_with(
        &mut ctl,
        create_range("fs", "mnt", mnt_size, mnt_size, mount_cap(SNW)),
    )
    .await;
    assert_eq!(v.capacity_bytes, mnt_size);
    let mid = v.volume_id;
    assert_eq!(state_of(&srv, "fs", &mnt.fs_identity()).await, in_use_by(&mid));
    let staging = srv.staging_dir("staging-mnt");
    let target = srv.target_path("mnt");
    stage_and_publish(&mut node, &mid, &staging, &target, mount_cap(SNW)).await;
    for at in [&staging, &target] {
        let m = the_mount_at(&srv, at);
        assert_eq!(
            (m.major, m.minor, m.root.as_path()),
            (mnt.dev.major, mnt.dev.minor, Path::new("/")),
            "{m:?}"
        );
    }
    write_synced(&srv.in_ns(&target).join("hello"), b"hello\n");
    assert_eq!(std::fs::read(mnt.entry.join("hello")).unwrap(), b"hello\n");
    let r = ok(node.node_get_volume_stats(stats_req(&mid, &s(&target))).await);
    let st = loam_sys::statfs::statfs(&mnt.entry).unwrap();
    let (bytes, _) = usage_rows(&r);
    assert_eq!(bytes.total, mnt_size, "{bytes:?}");
    assert_eq!(
        bytes.used as u64,
        st.total_bytes - st.free_bytes,
        "{bytes:?} vs {st:?}"
    );
    assert!(!r.volume_condition.expect("a condition").abnormal);
    unpublish_and_unstage(&mut node, &mid, &staging, &target).await;
    srv.assert_no_mounts();

    delete(&mut ctl, &fid).await;
    delete(&mut ctl, &mid).await;
    wait_free(&srv, "raw", &loop_identity(&blk_image)).await;
    wait_free(&srv, "fs", &fmt.loop_identity()).await;
    wait_free(&srv, "fs", &mnt.fs_identity()).await;
    drop((ctl, node));
    srv.stop();
}

// ---------------------------------------------------------------------------------------------------------
// 5. Cleanup on delete

/// A block volume on pool `pool`'s one disk (`disk`, 16 MiB) writes a pattern at its start, middle and end and
/// is deleted; the next volume gets the same disk and reads zeros everywhere. The log says the disk was cleaned
/// with `method` and what was done (`did`, the start of it).
async fn next_volume_reads_zeros(srv: &Server, pool: &str, disk: &Disk, method: &str, did: &str) {
    let (mut ctl, mut node) = (srv.controller().await, srv.node().await);
    let identity = disk.loop_identity();
    let cap = block_cap(SNW);
    let size = 16 * MIB;
    let first = create_with(&mut ctl, create_in(pool, "first", size, vec![cap.clone()]))
        .await
        .volume_id;
    let staging = srv.staging_dir(&format!("staging-{pool}"));
    let target = srv.target_path(pool);
    stage_and_publish(&mut node, &first, &staging, &target, cap.clone()).await;
    let offsets = [0, 8 * MIB as u64 + 3 * BLOCK as u64, (size - 64 * KIB) as u64];
    for (i, at) in offsets.iter().enumerate() {
        let data = pattern(64 * KIB as usize, i as u8 + 1);
        write_direct(&srv.in_ns(&target), *at, &data);
        assert!(read_direct(&disk.dev.path, *at, data.len()) == data);
    }
    unpublish_and_unstage(&mut node, &first, &staging, &target).await;
    delete(&mut ctl, &first).await;
    wait_free(srv, pool, &identity).await;
    let disk_field = format!("disk={identity}");
    assert_logged(
        srv,
        &[
            "disk released; cleaning it before it is offered again",
            &disk_field,
        ],
    );
    assert_logged(
        srv,
        &["cleaning disk", &disk_field, &format!("method=\"{method}\"")],
    );
    assert_logged(srv, &["cleaning: 100%", &disk_field]);
    assert_logged(srv, &[&format!("disk cleaned: {did}"), &disk_field]);
    assert!(cleaning_notes(srv, pool).is_empty());
    assert_eq!(
        first_nonzero(&disk.dev.path, size),
        None,
        "the disk still holds data"
    );

    let second = create_with(&mut ctl, create_in(pool, "second", size, vec![cap.clone()]))
        .await
        .volume_id;
    assert_eq!(state_of(srv, pool, &identity).await, in_use_by(&second));
    stage_and_publish(&mut node, &second, &staging, &target, cap).await;
    assert_eq!(
        first_nonzero(&srv.in_ns(&target), size),
        None,
        "the next volume reads what the previous one wrote"
    );
    unpublish_and_unstage(&mut node, &second, &staging, &target).await;
    delete(&mut ctl, &second).await;
    wait_free(srv, pool, &identity).await;
}

#[tokio::test]
async fn device_cleanup_by_discard_or_zero_leaves_the_next_volume_only_zeros() {
    if !require_root("device_cleanup_by_discard_or_zero_leaves_the_next_volume_only_zeros") {
        return;
    }
    let disks = Disks::new();
    let (dis_dir, zer_dir) = (disks.dir.join("dis"), disks.dir.join("zer"));
    let mut made = Vec::new();
    for (dir, name) in [(&dis_dir, "dis"), (&zer_dir, "zer")] {
        std::fs::create_dir(dir).unwrap();
        let image = disks.image(name, 16 * MIB);
        let dev = disks.attach(&image);
        let entry = dir.join(name);
        std::os::unix::fs::symlink(&dev.path, &entry).unwrap();
        made.push(Disk { image, dev, entry });
    }
    let srv = Server::start_with_config(
        NODE,
        |_| {
            format!(
                "default_pool = \"dis\"\n{}{}",
                device_pool("dis", &dis_dir, "volume_mode = \"block\""),
                device_pool("zer", &zer_dir, "volume_mode = \"block\"\ncleanup = \"zero\"")
            )
        },
        &[],
    );
    // The default (discard): a loop device discards by punching holes, which read back as zeros.
    next_volume_reads_zeros(&srv, "dis", &made[0], "discard", "discarded").await;
    next_volume_reads_zeros(&srv, "zer", &made[1], "zero", "zeroed").await;
    srv.assert_no_mounts();
}

#[tokio::test]
async fn device_cleanup_zero_header_wipes_signatures_and_leaves_the_data_readable() {
    if !require_root("device_cleanup_zero_header_wipes_signatures_and_leaves_the_data_readable") {
        return;
    }
    let disks = Disks::new();
    let disk = disks.raw("hdr", 16 * MIB);
    let dir = disks.discovery();
    let srv = Server::start_with_config(
        NODE,
        |_| device_pool("hdr", &dir, "volume_mode = \"block\"\ncleanup = \"zero-header\""),
        &[],
    );
    let (mut ctl, mut node) = (srv.controller().await, srv.node().await);
    let identity = disk.loop_identity();
    let cap = block_cap(SNW);
    let id = create_with(&mut ctl, create_in("hdr", "first", 16 * MIB, vec![cap.clone()]))
        .await
        .volume_id;
    let staging = srv.staging_dir("staging");
    let target = srv.target_path("hdr");
    stage_and_publish(&mut node, &id, &staging, &target, cap.clone()).await;
    // The volume makes a filesystem on its disk, and writes data past its first MiB.
    run_ok(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-E", "nodiscard"])
            .arg(srv.in_ns(&target)),
    );
    assert_eq!(blkid_value(&disk.dev.path, "TYPE").as_deref(), Some("ext4"));
    let data = pattern(128 * KIB as usize, 9);
    let at = 12 * MIB as u64;
    write_direct(&srv.in_ns(&target), at, &data);
    unpublish_and_unstage(&mut node, &id, &staging, &target).await;
    delete(&mut ctl, &id).await;
    wait_free(&srv, "hdr", &identity).await;
    assert_logged(
        &srv,
        &[
            "disk cleaned: signatures wiped (zero-header: the old data is still readable)",
            &format!("disk={identity}"),
        ],
    );
    // No signature is left, so the disk is free (not "holds data"); what lay further in is still there.
    assert_eq!(blkid(&disk.dev.path), None);
    assert_eq!(
        first_nonzero(&disk.dev.path, MIB),
        None,
        "the first MiB is not wiped"
    );
    let tail = read_direct(&disk.dev.path, (15 * MIB) as u64, MIB as usize);
    assert!(tail.iter().all(|b| *b == 0), "the last MiB is not wiped");
    assert!(
        read_direct(&disk.dev.path, at, data.len()) == data,
        "zero-header is documented to leave the old data readable"
    );
    let next = create_with(&mut ctl, create_in("hdr", "next", 16 * MIB, vec![cap]))
        .await
        .volume_id;
    assert_eq!(state_of(&srv, "hdr", &identity).await, in_use_by(&next));
    delete(&mut ctl, &next).await;
    wait_free(&srv, "hdr", &identity).await;
}

#[tokio::test]
async fn device_mount_disk_cleanup_keeps_lost_found_and_never_follows_links() {
    if !require_root("device_mount_disk_cleanup_keeps_lost_found_and_never_follows_links") {
        return;
    }
    let disks = Disks::new();
    let disk = disks.mounted("m", 32 * MIB, &[]);
    let outside = disks.dir.join("outside");
    std::fs::create_dir_all(outside.join("sub")).unwrap();
    std::fs::write(outside.join("keep"), b"keep me\n").unwrap();
    std::fs::write(outside.join("sub/also"), b"and me\n").unwrap();
    let dir = disks.discovery();
    let srv = Server::start_with_config(NODE, |_| device_pool("mnt", &dir, ""), &[]);
    let (mut ctl, mut node) = (srv.controller().await, srv.node().await);
    let identity = disk.fs_identity();
    assert_eq!(entries(&disk.entry), ["lost+found"]);
    assert_eq!(state_of(&srv, "mnt", &identity).await, "free");

    let id = create_with(&mut ctl, create_in("mnt", "v", MIB, vec![snw()]))
        .await
        .volume_id;
    let staging = srv.staging_dir("staging");
    let target = srv.target_path("v");
    stage_and_publish(&mut node, &id, &staging, &target, snw()).await;
    let t = srv.in_ns(&target);
    std::fs::create_dir_all(t.join("a/b/c")).unwrap();
    write_synced(&t.join("a/b/c/deep"), b"deep\n");
    write_synced(&t.join("top"), &pattern(64 * KIB as usize, 1));
    std::os::unix::fs::symlink(&outside, t.join("link-to-dir")).unwrap();
    std::os::unix::fs::symlink(outside.join("keep"), t.join("a/link-to-file")).unwrap();
    std::fs::create_dir(t.join("lost+found/#12")).unwrap();
    write_synced(&t.join("lost+found/#13"), b"orphan\n");
    unpublish_and_unstage(&mut node, &id, &staging, &target).await;
    delete(&mut ctl, &id).await;
    wait_free(&srv, "mnt", &identity).await;
    assert_logged(
        &srv,
        &[
            "disk cleaned: ",
            &format!("entries removed below {}", disk.entry.display()),
            &format!("disk={identity}"),
        ],
    );
    // Empty but for lost+found, itself emptied; what the links pointed to is untouched.
    assert_eq!(entries(&disk.entry), ["lost+found"]);
    assert!(entries(&disk.entry.join("lost+found")).is_empty());
    assert_eq!(std::fs::read(outside.join("keep")).unwrap(), b"keep me\n");
    assert_eq!(std::fs::read(outside.join("sub/also")).unwrap(), b"and me\n");
    assert_eq!(entries(&outside), ["keep", "sub"]);
    srv.assert_no_mounts();
}

#[tokio::test]
async fn device_cleanup_of_a_busy_disk_fails_until_it_is_released() {
    if !require_root("device_cleanup_of_a_busy_disk_fails_until_it_is_released") {
        return;
    }
    let disks = Disks::new();
    let disk = disks.raw("busy", 16 * MIB);
    let dir = disks.discovery();
    let srv = Server::start_with_config(
        NODE,
        |_| device_pool("busy", &dir, "volume_mode = \"block\""),
        &[],
    );
    let mut ctl = srv.controller().await;
    let identity = disk.loop_identity();
    let blk = || block_cap(SNW);
    let id = create_with(&mut ctl, create_in("busy", "v", 16 * MIB, vec![blk()]))
        .await
        .volume_id;
    // The volume's data: a filesystem.
    run_ok(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-E", "nodiscard"])
            .arg(&disk.dev.path),
    );

    // Held open O_EXCL by someone else: the cleaning fails, and the disk is not offered.
    let hold = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_EXCL)
        .open(&disk.dev.path)
        .expect("opening the disk O_EXCL");
    delete(&mut ctl, &id).await;
    let row = wait_state(&srv, "busy", &identity, "cleanup failed", |s| {
        s.starts_with("cleanup failed:")
    })
    .await;
    assert!(
        row.state.contains(&s(&disk.dev.path))
            && row.state.contains("in use")
            && row.state.contains("held exclusively"),
        "{}",
        row.state
    );
    assert_logged(
        &srv,
        &[
            "cleaning failed: the disk is not offered; retried at the next discovery",
            &format!("disk={identity}"),
        ],
    );
    not_offered(&mut ctl, "busy").await;
    assert_eq!(cleaning_notes(&srv, "busy").len(), 1);
    assert_eq!(blkid_value(&disk.dev.path, "TYPE").as_deref(), Some("ext4"));

    // Let go, but mounted elsewhere: the next pass fails too, and says where it is mounted.
    drop(hold);
    let elsewhere = disks.dir.join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    srv.in_mount_ns(|| loam_sys::mount::mount_fs(&disk.dev.path, &elsewhere, "ext4", &[], false).unwrap());
    let mounted_at = format!("mounted at {}", elsewhere.display());
    sighup(&srv);
    let row = wait_state(&srv, "busy", &identity, "cleanup failed: mounted", |s| {
        s.starts_with("cleanup failed:") && s.contains(&mounted_at)
    })
    .await;
    assert!(row.state.contains("in use"), "{}", row.state);
    not_offered(&mut ctl, "busy").await;
    assert_eq!(blkid_value(&disk.dev.path, "TYPE").as_deref(), Some("ext4"));

    // Released: the next pass cleans it and it is offered again.
    srv.in_mount_ns(|| loam_sys::mount::unmount(&elsewhere).unwrap());
    sighup(&srv);
    wait_free(&srv, "busy", &identity).await;
    assert_logged(&srv, &["disk cleaned: ", &format!("disk={identity}")]);
    assert!(cleaning_notes(&srv, "busy").is_empty());
    assert_eq!(blkid(&disk.dev.path), None);
    assert_eq!(first_nonzero(&disk.dev.path, 16 * MIB), None);
    assert_eq!(capacity_for(&mut ctl, "busy", blk()).await, (16 * MIB, 16 * MIB));
    let next = create_with(&mut ctl, create_in("busy", "w", 16 * MIB, vec![blk()]))
        .await
        .volume_id;
    assert_eq!(state_of(&srv, "busy", &identity).await, in_use_by(&next));
}

// ---------------------------------------------------------------------------------------------------------
// 6. Crash safety

#[tokio::test]
async fn device_records_hold_disks_across_crashes_and_restarts() {
    if !require_root("device_records_hold_disks_across_crashes_and_restarts") {
        return;
    }
    let disks = Disks::new();
    let one = disks.raw("one", 16 * MIB);
    let two = disks.raw("two", 16 * MIB);
    let dir = disks.discovery();
    let mut srv = Server::start_with_config(
        NODE,
        |_| device_pool("crash", &dir, "volume_mode = \"block\""),
        &[],
    );
    let blk = || block_cap(SNW);
    let mut ctl = srv.controller().await;
    let a = create_with(&mut ctl, create_in("crash", "a", 16 * MIB, vec![blk()]))
        .await
        .volume_id;
    let b = create_with(&mut ctl, create_in("crash", "b", 16 * MIB, vec![blk()]))
        .await
        .volume_id;
    let (a_claim, b_claim) = (claim_of(&srv, "crash", &a), claim_of(&srv, "crash", &b));
    let disk_of = |claim: &Value| -> Disk {
        [&one, &two]
            .into_iter()
            .find(|d| claim["entry"] == d.loop_identity().as_str())
            .unwrap_or_else(|| panic!("the claim {claim} names neither disk"))
            .clone()
    };
    let (a_disk, b_disk) = (disk_of(&a_claim), disk_of(&b_claim));
    assert_ne!(a_disk.image, b_disk.image, "one disk given twice");
    assert_eq!(b_claim["sort"], "block");
    assert_eq!(b_claim["path"], s(&b_disk.entry).as_str());
    drop(ctl);

    // (a) A crash between the record and the rest: b's record says "creating". The disk had been written to
    // (by someone, say): a roll-back does not clean, so the data stays.
    srv.stop();
    let record = device_record(&srv, "crash", &b);
    let mut rec = read_json(&record);
    rec["state"] = "creating".into();
    write_json(&record, &rec);
    let data = pattern(64 * KIB as usize, 5);
    write_direct(&b_disk.dev.path, MIB as u64, &data);
    let mark = srv.log().len();
    srv.start_again();
    let mut ctl = srv.controller().await;
    let log = srv.log()[mark..].to_owned();
    assert!(
        !lines_with(
            &log,
            &["finishing an interrupted operation by removing the volume", &b]
        )
        .is_empty(),
        "{log}"
    );
    assert!(!record.exists(), "the creating record is still there");
    expect_code(
        ctl.controller_get_volume(csi::ControllerGetVolumeRequest { volume_id: b.clone() })
            .await,
        Code::NotFound,
    );
    assert_eq!(
        state_of(&srv, "crash", &b_disk.loop_identity()).await,
        "free",
        "the rolled-back disk is not free at once"
    );
    assert_eq!(
        state_of(&srv, "crash", &a_disk.loop_identity()).await,
        in_use_by(&a)
    );
    assert!(cleaning_notes(&srv, "crash").is_empty());
    let log = srv.log()[mark..].to_owned();
    for never in ["disk released", "cleaning disk", "disk cleaned"] {
        assert!(
            lines_with(&log, &[never]).is_empty(),
            "a rolled-back disk was cleaned:\n{log}"
        );
    }
    assert!(
        read_direct(&b_disk.dev.path, MIB as u64, data.len()) == data,
        "the rolled-back disk was written to"
    );

    // (b) The Ready record holds a's disk: the next volume gets the other one, then there is none.
    let c = create_with(&mut ctl, create_in("crash", "c", 16 * MIB, vec![blk()]))
        .await
        .volume_id;
    assert_eq!(
        claim_of(&srv, "crash", &c)["entry"],
        b_disk.loop_identity().as_str()
    );
    assert_eq!(
        state_of(&srv, "crash", &b_disk.loop_identity()).await,
        in_use_by(&c)
    );
    all_in_use(&mut ctl, "crash", "d").await;
    drop(ctl);
    srv.restart();
    let mut ctl = srv.controller().await;
    assert_eq!(
        state_of(&srv, "crash", &a_disk.loop_identity()).await,
        in_use_by(&a)
    );
    assert_eq!(
        state_of(&srv, "crash", &b_disk.loop_identity()).await,
        in_use_by(&c)
    );
    all_in_use(&mut ctl, "crash", "e").await;
    drop(ctl);

    // (c) A crash right after DeleteVolume of c: its record gone, its cleaning note left. The cleaning resumes
    // at start-up, and only then is the disk free.
    srv.stop();
    let record = device_record(&srv, "crash", &c);
    let note = serde_json::json!({"volume": volume_hex(&c), "claim": read_json(&record)["device"]});
    std::fs::remove_file(&record).unwrap();
    let note_file = pool_state_dir(&srv, "crash")
        .join("cleaning")
        .join(format!("{}.json", volume_hex(&c)));
    write_json(&note_file, &note);
    srv.start_again();
    let mut ctl = srv.controller().await;
    let b_id = b_disk.loop_identity();
    assert_logged(
        &srv,
        &[
            "resuming the cleaning of a disk that a restart interrupted",
            &format!("disk={b_id}"),
        ],
    );
    wait_free(&srv, "crash", &b_id).await;
    assert_logged(&srv, &["disk cleaned: ", &format!("disk={b_id}")]);
    assert!(!note_file.exists(), "the cleaning note is left");
    assert_eq!(
        first_nonzero(&b_disk.dev.path, 16 * MIB),
        None,
        "the resumed cleaning left data"
    );
    expect_code(
        ctl.controller_get_volume(csi::ControllerGetVolumeRequest { volume_id: c.clone() })
            .await,
        Code::NotFound,
    );
    assert_eq!(
        state_of(&srv, "crash", &a_disk.loop_identity()).await,
        in_use_by(&a)
    );
    let f = create_with(&mut ctl, create_in("crash", "f", 16 * MIB, vec![blk()]))
        .await
        .volume_id;
    assert_eq!(claim_of(&srv, "crash", &f)["entry"], b_id.as_str());
}

// ---------------------------------------------------------------------------------------------------------
// 7. A disk that disappears

#[tokio::test]
async fn device_disk_that_disappears_makes_its_volume_abnormal_and_is_cleaned_when_it_returns() {
    if !require_root("device_disk_that_disappears_makes_its_volume_abnormal_and_is_cleaned_when_it_returns") {
        return;
    }
    let disks = Disks::new();
    let x = disks.raw("x", 16 * MIB);
    let y = disks.raw("y", 32 * MIB);
    let dir = disks.discovery();
    let mut srv = Server::start_with_config(
        NODE,
        |_| device_pool("gone", &dir, "volume_mode = \"block\""),
        &[],
    );
    let mut ctl = srv.controller().await;
    let blk = || block_cap(SNW);
    let (x_id, y_id) = (x.loop_identity(), y.loop_identity());
    let a = create_with(&mut ctl, create_in("gone", "a", 16 * MIB, vec![blk()]))
        .await
        .volume_id;
    assert_eq!(state_of(&srv, "gone", &x_id).await, in_use_by(&a));
    let data = pattern(64 * KIB as usize, 3);
    write_direct(&x.dev.path, 4 * MIB as u64, &data);

    // The disk goes: its loop device detached, its link removed.
    loam_sys::loopdev::detach(&x.dev).unwrap();
    std::fs::remove_file(&x.entry).unwrap();
    sighup(&srv);
    let last_seen = format!("missing (last seen at {})", x.entry.display());
    wait_state(&srv, "gone", &x_id, "in use and missing", |s| {
        s == format!("{}, {last_seen}", in_use_by(&a))
    })
    .await;
    assert_logged(&srv, &["disk missing", &format!("disk={x_id}")]);
    let why = format!("its disk {x_id} is missing (last seen at {})", x.entry.display());
    let cond = controller_condition(&mut ctl, &a).await;
    assert!(cond.abnormal && cond.message.contains(&why), "{cond:?}");
    let listed = ok(ctl.list_volumes(csi::ListVolumesRequest::default()).await);
    let entry = listed
        .entries
        .iter()
        .find(|e| e.volume.as_ref().is_some_and(|v| v.volume_id == a))
        .unwrap_or_else(|| panic!("ListVolumes lacks {a}: {listed:?}"));
    let cond = entry
        .status
        .as_ref()
        .and_then(|s| s.volume_condition.as_ref())
        .unwrap_or_else(|| panic!("no condition: {entry:?}"));
    assert!(cond.abnormal && cond.message.contains(&why), "{cond:?}");
    // Not handed out: exactly its size is refused, naming the free one; the other disk is still offered.
    let exactly_x = || create_range("gone", "b", 16 * MIB, 16 * MIB, blk());
    let st = expect_code(ctl.create_volume(exactly_x()).await, Code::ResourceExhausted);
    assert!(
        st.message().contains("the largest free disk has 33554432 bytes"),
        "{}",
        st.message()
    );
    assert_eq!(capacity_for(&mut ctl, "gone", blk()).await, (32 * MIB, 32 * MIB));
    assert_eq!(state_of(&srv, "gone", &y_id).await, "free");

    // Deleting the volume succeeds; the disk is cleaned when it returns.
    delete(&mut ctl, &a).await;
    assert_eq!(
        state_of(&srv, "gone", &x_id).await,
        "missing; cleaned when it returns"
    );
    assert_eq!(cleaning_notes(&srv, "gone").len(), 1);
    let st = expect_code(ctl.create_volume(exactly_x()).await, Code::ResourceExhausted);
    assert!(st.message().contains("33554432"), "{}", st.message());

    // Another disk at its name meanwhile: a new entry, free, and not cleaned for the old volume.
    let other_image = disks.image("x-other", 16 * MIB);
    let other = disks.attach(&other_image);
    disks.link("x", &other);
    let other_id = loop_identity(&other_image);
    let other_data = pattern(64 * KIB as usize, 8);
    write_direct(&other.path, 4 * MIB as u64, &other_data);
    sighup(&srv);
    let row = wait_free(&srv, "gone", &other_id).await;
    assert_eq!(row.path, x.entry);
    assert_eq!(
        state_of(&srv, "gone", &x_id).await,
        "missing; cleaned when it returns"
    );
    assert_eq!(cleaning_notes(&srv, "gone").len(), 1);

    // The same image file attached again (maybe at another loop device): the same disk, cleaned, free.
    let back = disks.attach(&x.image);
    disks.link("x", &back);
    assert_eq!(loop_identity(&x.image), x_id);
    sighup(&srv);
    let row = wait_free(&srv, "gone", &x_id).await;
    assert_eq!(row.path, x.entry);
    assert_eq!(
        state_of(&srv, "gone", &other_id).await,
        format!("missing (last seen at {})", x.entry.display())
    );
    assert!(
        read_direct(&other.path, 4 * MIB as u64, other_data.len()) == other_data,
        "the disk that stood in at the same name was cleaned"
    );
    assert!(
        lines_with(
            &srv.log(),
            &["cleaning disk", &format!("device={}", other.path.display())]
        )
        .is_empty()
            && lines_with(&srv.log(), &["disk cleaned", &format!("disk={other_id}")]).is_empty(),
        "the disk that stood in at the same name was cleaned:\n{}",
        srv.log()
    );
    assert_logged(&srv, &["disk returned", &format!("disk={x_id}")]);
    assert_logged(&srv, &["disk cleaned: ", &format!("disk={x_id}")]);
    assert!(cleaning_notes(&srv, "gone").is_empty());
    assert_eq!(
        first_nonzero(&back.path, 16 * MIB),
        None,
        "the returned disk was not cleaned"
    );
    let b = create_with(&mut ctl, exactly_x()).await.volume_id;
    assert_eq!(state_of(&srv, "gone", &x_id).await, in_use_by(&b));

    // A disk that is not there when the server starts: its volume's disk is listed as missing, the volume is
    // abnormal; deleted, the disk is to be cleaned when it shows; it shows, it is cleaned.
    let c = create_with(&mut ctl, create_in("gone", "c", 17 * MIB, vec![blk()]))
        .await
        .volume_id;
    assert_eq!(state_of(&srv, "gone", &y_id).await, in_use_by(&c));
    write_direct(&y.dev.path, 20 * MIB as u64, &data);
    drop(ctl);
    srv.stop();
    loam_sys::loopdev::detach(&y.dev).unwrap();
    std::fs::remove_file(&y.entry).unwrap();
    srv.start_again();
    let mut ctl = srv.controller().await;
    let row = disk_row(&srv, "gone", &y_id).await;
    assert_eq!(
        row.state,
        format!("{}, missing (it was at {})", in_use_by(&c), y.entry.display())
    );
    assert_eq!(row.path, y.entry);
    let cond = controller_condition(&mut ctl, &c).await;
    assert!(
        cond.abnormal
            && cond.message.contains(&format!(
                "its disk {y_id} is missing (it was at {})",
                y.entry.display()
            )),
        "{cond:?}"
    );
    delete(&mut ctl, &c).await;
    assert_eq!(
        state_of(&srv, "gone", &y_id).await,
        "missing; cleaned when it returns"
    );
    let y_back = disks.attach(&y.image);
    disks.link("y", &y_back);
    sighup(&srv);
    wait_free(&srv, "gone", &y_id).await;
    assert_eq!(first_nonzero(&y_back.path, 32 * MIB), None, "not cleaned");
    assert!(cleaning_notes(&srv, "gone").is_empty());
}

// ---------------------------------------------------------------------------------------------------------
// 8. Bad input

#[tokio::test]
async fn device_missing_discovery_directory_degrades_only_its_pool() {
    if !require_root("device_missing_discovery_directory_degrades_only_its_pool") {
        return;
    }
    let disks = Disks::new();
    let disk = disks.raw("ok", 16 * MIB);
    let missing = disks.dir.join("no-such-dir");
    let dir = disks.discovery();
    let srv = Server::start_with_config(
        NODE,
        |_| {
            format!(
                "default_pool = \"works\"\n{}{}",
                device_pool("lost", &missing, "volume_mode = \"block\""),
                device_pool("works", &dir, "volume_mode = \"block\"")
            )
        },
        &[],
    );
    let mut ctl = srv.controller().await;
    let blk = || block_cap(SNW);
    let cannot = format!("the discovery directory {} cannot be read", missing.display());
    let state = pool_state(&srv, "lost").await;
    assert!(
        state.starts_with("degraded:") && state.contains(&cannot),
        "{state}"
    );
    assert_logged(&srv, &["device pool cannot discover its disks", &cannot]);
    let st = expect_code(
        ctl.create_volume(create_in("lost", "v", 16 * MIB, vec![blk()]))
            .await,
        Code::ResourceExhausted,
    );
    assert!(
        st.message().contains("pool lost") && st.message().contains(&cannot),
        "{}",
        st.message()
    );
    assert_eq!(capacity_for(&mut ctl, "lost", blk()).await, (0, 0));
    assert!(!missing.exists(), "loam made the missing discovery directory");

    // The other pool works.
    assert!(pool_state(&srv, "works").await.starts_with("ready:"));
    assert_eq!(capacity_for(&mut ctl, "works", blk()).await, (16 * MIB, 16 * MIB));
    let id = create_with(&mut ctl, create_in("works", "v", 16 * MIB, vec![blk()]))
        .await
        .volume_id;
    assert_eq!(
        state_of(&srv, "works", &disk.loop_identity()).await,
        in_use_by(&id)
    );
    delete(&mut ctl, &id).await;
    wait_free(&srv, "works", &disk.loop_identity()).await;

    // The directory appears (empty): the pool is ready, with no disk.
    std::fs::create_dir(&missing).unwrap();
    sighup(&srv);
    let deadline = Instant::now() + WAIT;
    while !pool_state(&srv, "lost").await.starts_with("ready:") {
        assert!(
            Instant::now() < deadline,
            "pool lost: {}\n{}",
            pool_state(&srv, "lost").await,
            srv.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_logged(&srv, &["discovery directory readable again", "pool=lost"]);
    let st = expect_code(
        ctl.create_volume(create_in("lost", "v", 16 * MIB, vec![blk()]))
            .await,
        Code::OutOfRange,
    );
    assert!(st.message().contains("its disk sizes: none"), "{}", st.message());
}

#[tokio::test]
async fn device_discovery_directory_missing_at_start_up_keeps_the_pools_volumes() {
    if !require_root("device_discovery_directory_missing_at_start_up_keeps_the_pools_volumes") {
        return;
    }
    let disks = Disks::new();
    let disk = disks.raw("only", 16 * MIB);
    let dir = disks.discovery();
    let away = disks.dir.join("away");
    let mut srv = Server::start_with_config(
        NODE,
        |_| device_pool("later", &dir, "volume_mode = \"block\""),
        &[],
    );
    let blk = || block_cap(SNW);
    let mut ctl = srv.controller().await;
    let a = create_with(&mut ctl, create_in("later", "a", 16 * MIB, vec![blk()]))
        .await
        .volume_id;
    let identity = disk.loop_identity();
    assert_eq!(state_of(&srv, "later", &identity).await, in_use_by(&a));
    drop(ctl);

    // The node restarts before the discovery directory is there (a mount not made yet, say).
    srv.stop();
    std::fs::rename(&dir, &away).unwrap();
    srv.start_again();
    let mut ctl = srv.controller().await;
    let state = pool_state(&srv, "later").await;
    assert!(
        state.starts_with("degraded:")
            && state.contains(&format!(
                "the discovery directory {} cannot be read",
                dir.display()
            )),
        "{state}"
    );
    let record = device_record(&srv, "later", &a);
    assert!(record.is_file(), "the record of {a} is gone");
    // Everything that goes wrong is collected, so that one run shows it all.
    let mut problems: Vec<String> = Vec::new();
    // The volume is still the pool's: reported (abnormal, its pool degraded), not unknown.
    match ctl
        .controller_get_volume(csi::ControllerGetVolumeRequest { volume_id: a.clone() })
        .await
    {
        Ok(r) => {
            let cond = r.into_inner().status.and_then(|s| s.volume_condition);
            if !cond.as_ref().is_some_and(|c| c.abnormal) {
                problems.push(format!(
                    "ControllerGetVolume of {a} while its pool is degraded: condition {cond:?}, not abnormal"
                ));
            }
        }
        Err(st) => problems.push(format!(
            "ControllerGetVolume of {a} while its pool's discovery directory is missing: {:?}: {}",
            st.code(),
            st.message()
        )),
    }
    let listed = list_ids(&mut ctl).await;
    if !listed.contains(&a) {
        problems.push(format!(
            "ListVolumes while the discovery directory is missing does not list {a}: {listed:?}"
        ));
    }

    // The directory is back: the disk is still the volume's, never given to another.
    std::fs::rename(&away, &dir).unwrap();
    sighup(&srv);
    let deadline = Instant::now() + WAIT;
    while !pool_state(&srv, "later").await.starts_with("ready:") {
        assert!(Instant::now() < deadline, "{}", srv.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let row = disk_row(&srv, "later", &identity).await;
    if row.state != in_use_by(&a) {
        problems.push(format!(
            "once the discovery directory is back, the disk of volume {a} is {:?}, not {:?}",
            row.state,
            in_use_by(&a)
        ));
    }
    match ctl
        .create_volume(create_in("later", "b", 16 * MIB, vec![blk()]))
        .await
    {
        Ok(r) => problems.push(format!(
            "the disk of volume {a} (whose record {} is still there) was given to another volume, {}",
            record.display(),
            r.into_inner().volume.map(|v| v.volume_id).unwrap_or_default()
        )),
        Err(st) if st.code() == Code::ResourceExhausted => {}
        Err(st) => problems.push(format!(
            "a second create on the held disk: {:?}: {}",
            st.code(),
            st.message()
        )),
    }
    let listed = list_ids(&mut ctl).await;
    if !listed.contains(&a) {
        problems.push(format!(
            "ListVolumes once the discovery directory is back does not list {a}: {listed:?}"
        ));
    }
    assert!(
        problems.is_empty(),
        "a device pool whose discovery directory is missing at start-up:\n- {}\nlog:\n{}",
        problems.join("\n- "),
        srv.log()
    );
}

#[tokio::test]
async fn device_pool_with_an_unreadable_record_gives_no_disk() {
    if !require_root("device_pool_with_an_unreadable_record_gives_no_disk") {
        return;
    }
    let disks = Disks::new();
    let _one = disks.raw("one", 16 * MIB);
    let _two = disks.raw("two", 16 * MIB);
    let dir = disks.discovery();
    let mut srv = Server::start_with_config(
        NODE,
        |_| device_pool("torn", &dir, "volume_mode = \"block\""),
        &[],
    );
    let blk = || block_cap(SNW);
    let mut ctl = srv.controller().await;
    let a = create_with(&mut ctl, create_in("torn", "a", 16 * MIB, vec![blk()]))
        .await
        .volume_id;
    drop(ctl);
    // The record is torn: nothing tells which disk it holds, so the other disk may be it as well as not.
    srv.stop();
    std::fs::write(device_record(&srv, "torn", &a), b"{\"version\":3,\"id\":").unwrap();
    srv.start_again();
    let mut ctl = srv.controller().await;
    let st = expect_code(
        ctl.create_volume(create_in("torn", "b", 16 * MIB, vec![blk()]))
            .await,
        Code::ResourceExhausted,
    );
    assert!(st.message().contains("cannot be read"), "{}", st.message());
    assert_eq!(capacity_for(&mut ctl, "torn", blk()).await, (0, 0));
    // Once the operator removes the record, the disks are offered again.
    srv.stop();
    std::fs::remove_file(device_record(&srv, "torn", &a)).unwrap();
    srv.start_again();
    let mut ctl = srv.controller().await;
    assert_eq!(capacity_for(&mut ctl, "torn", blk()).await, (32 * MIB, 16 * MIB));
}

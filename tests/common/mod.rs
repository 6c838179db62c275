//! Harness for loam's end-to-end tests: runs the real `loam` binary on a unix socket in a temporary directory
//! and talks CSI to it.
//!
//! Each [`Server`] has its own temporary directory (socket, data dir, log, staging and target paths) so tests
//! run in parallel. When the tests run as root the server runs in its own private mount namespace: every mount
//! it makes lives and dies with that namespace, so nothing leaks to the host even when a test panics. The
//! namespace is kept alive across [`Server::restart`] (the harness holds a descriptor to it), as a real node's
//! mounts outlive a restarted driver; it is released when the `Server` is dropped.
//!
//! Paths in node requests are paths as the server sees them. Its namespace is a copy of the host's, so
//! directories made on the host (staging directories, target parents) are visible to it; only what is
//! mounted differs. To look through its mounts use [`Server::in_ns`].

// Each test binary uses a different subset of the helpers.
#![allow(dead_code)]

use std::{
    collections::HashMap,
    fmt::Debug,
    fs::File,
    io,
    os::{
        fd::{AsRawFd, OwnedFd},
        unix::process::CommandExt,
    },
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use loam::csi::{
    self, controller_client::ControllerClient, controller_service_capability,
    identity_client::IdentityClient, node_client::NodeClient, node_service_capability, plugin_capability,
    volume_capability::access_mode::Mode,
};
use loam_sys::{loopdev::LoopDevice, mountinfo::MountTable};
use tonic::{Code, Response, Status, transport::Channel};

pub const KIB: i64 = 1 << 10;
pub const MIB: i64 = 1 << 20;
pub const GIB: i64 = 1 << 30;

/// Node ID most tests use.
pub const NODE: &str = "node-1";
/// Topology key whose value is the node.
pub const TOPOLOGY_KEY: &str = "loam.csi/node";
/// How long a server may take to start answering, or to exit after SIGTERM.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Environment variables `loam` reads; cleared so the caller's environment cannot change a test.
const LOAM_ENV: &[&str] = &[
    "CSI_ENDPOINT",
    "NODE_ID",
    "LOAM_DRIVER_NAME",
    "LOAM_DATA_DIR",
    "LOAM_CAPACITY",
    "LOAM_MAX_VOLUMES_PER_NODE",
    "LOAM_LOG_FORMAT",
    "LOAM_CONFIG",
    "LOAM_USAGE_REFRESH_SECONDS",
];

pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// A command running the `loam` binary under test, with the [`LOAM_ENV`] variables cleared.
pub fn loam_command() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_loam"));
    for var in LOAM_ENV {
        cmd.env_remove(var);
    }
    cmd
}

/// A running `loam serve` with its own temporary directory.
pub struct Server {
    child: Option<Child>,
    /// Kept for its `Drop` (removes the directory); `root` is its canonical path.
    dir: tempfile::TempDir,
    /// Canonical path of the temporary directory: mount points are compared literally.
    pub root: PathBuf,
    pub endpoint: String,
    pub socket: PathBuf,
    pub pid: u32,
    pub node_id: String,
    extra_args: Vec<String>,
    /// The server's private mount namespace (root only), kept open so it outlives restarts.
    mount_ns: Option<OwnedFd>,
}

impl Server {
    /// Starts `loam serve --node-id <node_id> <extra_args>` in a fresh temporary directory and waits until
    /// GetPluginInfo answers.
    ///
    /// Call it (and [`Server::restart`]) from the test's own thread, not from a spawned task: the server is
    /// killed when the thread that started it exits (`PR_SET_PDEATHSIG`), so no server outlives a killed test.
    pub fn start(node_id: &str, extra_args: &[&str]) -> Server {
        let mut server = Server::prepare(node_id, extra_args);
        server.spawn();
        server
    }

    /// Like [`Server::start`], with `--config <root>/loam.toml`: `config` is given the server's temporary
    /// directory before the server starts and returns the TOML text, so pool paths can live inside it.
    pub fn start_with_config(
        node_id: &str,
        config: impl FnOnce(&Path) -> String,
        extra_args: &[&str],
    ) -> Server {
        let mut server = Server::prepare(node_id, extra_args);
        let file = server.config_file();
        std::fs::write(&file, config(&server.root)).expect("writing the config file");
        let mut args = vec!["--config".to_owned(), s(&file)];
        args.append(&mut server.extra_args);
        server.extra_args = args;
        server.spawn();
        server
    }

    /// A `Server` whose temporary directory exists but whose process is not started yet.
    fn prepare(node_id: &str, extra_args: &[&str]) -> Server {
        let dir = tempfile::Builder::new()
            .prefix("loam-test-")
            .tempdir()
            .expect("creating a temp dir");
        let root = dir.path().canonicalize().expect("resolving the temp dir");
        let socket = root.join("csi.sock");
        Server {
            child: None,
            dir,
            endpoint: format!("unix://{}", socket.display()),
            socket,
            root,
            pid: 0,
            node_id: node_id.to_owned(),
            extra_args: extra_args.iter().map(|s| (*s).to_owned()).collect(),
            mount_ns: None,
        }
    }

    /// The configuration file [`Server::start_with_config`] writes.
    pub fn config_file(&self) -> PathBuf {
        self.root.join("loam.toml")
    }

    /// The data directory given to `--data-dir`.
    pub fn data_dir(&self) -> PathBuf {
        self.root.join("data")
    }

    /// The default pool's directory of volume directories.
    pub fn volumes_dir(&self) -> PathBuf {
        self.data_dir().join("pools/default/volumes")
    }

    /// The default pool's directory of volume records.
    pub fn records_dir(&self) -> PathBuf {
        self.data_dir().join("pools/default/records")
    }

    /// The directory backing volume `id` (on the host, which is also where the server sees it).
    pub fn volume_dir(&self, id: &str) -> PathBuf {
        self.volumes_dir().join(volume_hex(id))
    }

    /// The record file of volume `id`.
    pub fn record_file(&self, id: &str) -> PathBuf {
        self.records_dir().join(format!("{}.json", volume_hex(id)))
    }

    pub fn log_file(&self) -> PathBuf {
        self.root.join("loam.log")
    }

    /// The server's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_file()).unwrap_or_default()
    }

    /// Creates `<root>/<name>` as a staging directory (the CO's job) and returns it.
    pub fn staging_dir(&self, name: &str) -> PathBuf {
        let p = self.root.join(name);
        std::fs::create_dir_all(&p).expect("creating a staging dir");
        p
    }

    /// A target path `<root>/mnt/<name>`: its parent is created (the CO's job), the leaf is not (loam's job).
    pub fn target_path(&self, name: &str) -> PathBuf {
        let parent = self.root.join("mnt");
        std::fs::create_dir_all(&parent).expect("creating the target parent");
        parent.join(name)
    }

    /// `path` as the server sees it: through `/proc/<pid>/root`, so its mounts are visible.
    pub fn in_ns(&self, path: impl AsRef<Path>) -> PathBuf {
        let path = path.as_ref();
        let rel = path.strip_prefix("/").unwrap_or(path);
        PathBuf::from(format!("/proc/{}/root", self.pid)).join(rel)
    }

    /// The server's mount table.
    pub fn mount_table(&self) -> MountTable {
        MountTable::read_pid(self.pid).expect("reading the server's mountinfo")
    }

    /// How many mounts the server has exactly at `path`.
    pub fn mounts_at(&self, path: &Path) -> usize {
        self.mount_table().mounts_at(path).len()
    }

    /// Mount points in the server's namespace at or under this server's temporary directory.
    pub fn mounts_under_root(&self) -> Vec<PathBuf> {
        mounts_under(&self.mount_table(), &self.root)
    }

    /// Asserts that the server has no mounts left at or under its temporary directory.
    #[track_caller]
    pub fn assert_no_mounts(&self) {
        let left = self.mounts_under_root();
        assert!(left.is_empty(), "mounts left behind: {left:?}");
    }

    pub async fn channel(&self) -> Channel {
        loam::endpoint::connect(&self.endpoint)
            .await
            .unwrap_or_else(|e| panic!("connecting to {}: {e:#}\nlog:\n{}", self.endpoint, self.log()))
    }

    pub async fn identity(&self) -> IdentityClient<Channel> {
        IdentityClient::new(self.channel().await)
    }

    pub async fn controller(&self) -> ControllerClient<Channel> {
        ControllerClient::new(self.channel().await)
    }

    pub async fn node(&self) -> NodeClient<Channel> {
        NodeClient::new(self.channel().await)
    }

    /// SIGTERM, wait, and start again with the same data dir, socket and (as root) mount namespace.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Starts the server again after [`Server::stop`], with the same arguments, data dir, socket and (as root)
    /// mount namespace: for tests that change the node while the driver is down.
    pub fn start_again(&mut self) {
        self.spawn();
    }

    /// Runs `f` on a new thread that has joined the server's mount namespace (root only) and returns what it
    /// returns; a panic in `f` is the caller's. The namespace outlives the server process (see
    /// [`Server::restart`]), so this works while the server is stopped too: to take its mounts down as a reboot
    /// would, or to unmount and mount a pool's disk. Paths in `f` are paths as the server sees them.
    pub fn in_mount_ns<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let ns = self
            .mount_ns
            .as_ref()
            .expect("the server has a mount namespace of its own only when the tests run as root")
            .as_raw_fd();
        std::thread::scope(|scope| {
            let joined = scope
                .spawn(move || {
                    join_mount_namespace(ns).expect("joining the server's mount namespace");
                    f()
                })
                .join();
            joined.unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// SIGTERM and wait. Asserts a clean exit (code 0) and that the server removed its socket.
    pub fn stop(&mut self) -> ExitStatus {
        let status = self.terminate().expect("stop: the server is not running");
        self.assert_clean_exit(Some(status));
        status
    }

    /// Asserts that the server exited with code 0 (`status`, if it was still running) and removed its socket.
    fn assert_clean_exit(&self, status: Option<ExitStatus>) {
        if let Some(status) = status {
            assert!(
                status.success(),
                "loam exited with {status} after SIGTERM\nlog:\n{}",
                self.log()
            );
        }
        assert!(
            !self.socket.exists(),
            "loam left its socket {} behind",
            self.socket.display()
        );
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "server already running");
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_file())
            .expect("opening the log file");
        let mut cmd = loam_command();
        cmd.arg("serve")
            .arg("--endpoint")
            .arg(&self.endpoint)
            .arg("--node-id")
            .arg(&self.node_id)
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(&self.extra_args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("cloning the log file"))
            .stderr(log);
        if is_root() {
            let ns = self.mount_ns.as_ref().map(AsRawFd::as_raw_fd);
            // SAFETY: the closure runs in the forked child before exec and only makes async-signal-safe
            // syscalls (prctl, setns, unshare, mount) on values captured by copy; it allocates nothing except
            // in the error path, where the child is about to fail anyway.
            unsafe {
                cmd.pre_exec(move || enter_server_namespace(ns));
            }
        }
        let child = cmd.spawn().expect("spawning loam");
        self.pid = child.id();
        self.child = Some(child);
        if is_root() && self.mount_ns.is_none() {
            // The child unshared before exec, so its namespace is already the private one.
            let ns = File::open(format!("/proc/{}/ns/mnt", self.pid)).expect("opening the server's mount ns");
            self.mount_ns = Some(OwnedFd::from(ns));
        }
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + TIMEOUT;
        let mut last = String::from("socket not created");
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().expect("polling loam"))
            {
                self.child = None;
                panic!("loam exited with {status} before serving\nlog:\n{}", self.log());
            }
            if self.socket.exists() {
                match probe(&self.endpoint) {
                    Ok(()) => return,
                    Err(e) => last = e,
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "loam did not answer GetPluginInfo within {TIMEOUT:?}: {last}\nlog:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, wait up to [`TIMEOUT`], then SIGKILL. `None` if it was not running.
    fn terminate(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        signal(child.id(), libc::SIGTERM);
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().expect("polling loam") {
                return Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let status = child.wait().expect("waiting for loam");
                if !std::thread::panicking() {
                    panic!(
                        "loam did not exit within {TIMEOUT:?} of SIGTERM; killed ({status})\nlog:\n{}",
                        self.log()
                    );
                }
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let status = self.terminate();
        // Releasing the namespace unmounts whatever the server left in it.
        self.mount_ns = None;
        if std::thread::panicking() {
            return;
        }
        self.assert_clean_exit(status);
        let host = MountTable::read_self().expect("reading the test's own mountinfo");
        let leaked = mounts_under(&host, &self.root);
        assert!(leaked.is_empty(), "mounts leaked to the host: {leaked:?}");
    }
}

/// In the child between fork and exec: die with the test, and join (or create) the server's private mount
/// namespace. Only async-signal-safe calls.
fn enter_server_namespace(ns: Option<i32>) -> io::Result<()> {
    let check = |rc: libc::c_int| {
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    };
    // SAFETY: plain syscalls on integers and static C strings; no memory is shared with other threads (the
    // child has only this one).
    unsafe {
        // If the test process dies, so does its server (no stray servers holding temp dirs).
        check(libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        ))?;
        match ns {
            Some(fd) => check(libc::setns(fd, libc::CLONE_NEWNS)),
            None => {
                check(libc::unshare(libc::CLONE_NEWNS))?;
                check(libc::mount(
                    std::ptr::null(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ))
            }
        }
    }
}

/// Moves the calling thread into the mount namespace `ns` (a descriptor of one). The thread first takes its own
/// copy of the cwd and root (`CLONE_FS`), which setns(2) into a mount namespace requires; so only this thread
/// moves, and it should be a thread of its own that ends afterwards.
fn join_mount_namespace(ns: i32) -> io::Result<()> {
    // SAFETY: unshare(2) and setns(2) take plain integers and touch no memory of ours; unsharing CLONE_FS only
    // gives this thread a private cwd/root/umask, and `ns` stays open for the call (the Server holds it).
    unsafe {
        if libc::unshare(libc::CLONE_FS) != 0 || libc::setns(ns, libc::CLONE_NEWNS) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

fn signal(pid: u32, sig: libc::c_int) {
    let pid = libc::pid_t::try_from(pid).expect("pid fits pid_t");
    // SAFETY: kill(2) has no memory-safety preconditions; `pid` is our own unreaped child.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// One GetPluginInfo call on a runtime of its own, so it works from sync code and from inside async tests.
fn probe(endpoint: &str) -> Result<(), String> {
    let endpoint = endpoint.to_owned();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(async {
            let channel = loam::endpoint::connect(&endpoint)
                .await
                .map_err(|e| format!("{e:#}"))?;
            IdentityClient::new(channel)
                .get_plugin_info(csi::GetPluginInfoRequest {})
                .await
                .map_err(|e| e.to_string())?;
            Ok(())
        })
    })
    .join()
    .map_err(|_| "probe thread panicked".to_owned())?
}

/// Mount points in `table` at or under `dir`.
pub fn mounts_under(table: &MountTable, dir: &Path) -> Vec<PathBuf> {
    table
        .mounts()
        .iter()
        .filter(|m| m.mount_point.starts_with(dir))
        .map(|m| m.mount_point.clone())
        .collect()
}

/// The 32-hex-digit part of a volume ID (its directory and record name).
pub fn volume_hex(id: &str) -> &str {
    let hex = id.rsplit('_').next().unwrap_or(id);
    assert!(
        hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
        "volume id {id:?} does not end in 32 hex digits"
    );
    hex
}

/// One `[[pools]]` table of a configuration file; `extra` is more `key = value` lines.
pub fn pool_toml(name: &str, kind: &str, path: &Path, extra: &str) -> String {
    format!(
        "[[pools]]\nname = \"{name}\"\nkind = \"{kind}\"\npath = \"{}\"\n{extra}\n",
        path.display()
    )
}

/// The record file of volume `id` in the pool at `pool_root`.
pub fn record_file(pool_root: &Path, id: &str) -> PathBuf {
    pool_root.join("records").join(format!("{}.json", volume_hex(id)))
}

/// A path as a request string.
pub fn s(p: &Path) -> String {
    p.to_str().expect("test paths are UTF-8").to_owned()
}

// ---------------------------------------------------------------------------------------------------------
// Results

/// Asserts that `res` failed with `code` and returns the status.
#[track_caller]
pub fn expect_code<T: std::fmt::Debug>(res: Result<Response<T>, Status>, code: Code) -> Status {
    match res {
        Ok(r) => panic!("expected {code:?}, got OK: {:?}", r.into_inner()),
        Err(st) => {
            assert_eq!(st.code(), code, "unexpected status: {st:?}");
            assert!(
                !st.message().is_empty(),
                "status message must be human readable, got empty"
            );
            st
        }
    }
}

/// Unwraps an OK response, with the status in the panic message otherwise.
#[track_caller]
pub fn ok<T>(res: Result<Response<T>, Status>) -> T {
    match res {
        Ok(r) => r.into_inner(),
        Err(st) => panic!("expected OK, got {:?}: {}", st.code(), st.message()),
    }
}

// ---------------------------------------------------------------------------------------------------------
// Request builders

pub fn mount_cap(mode: Mode) -> csi::VolumeCapability {
    csi::VolumeCapability {
        access_mode: Some(csi::volume_capability::AccessMode { mode: mode as i32 }),
        access_type: Some(csi::volume_capability::AccessType::Mount(
            csi::volume_capability::MountVolume::default(),
        )),
    }
}

pub fn block_cap(mode: Mode) -> csi::VolumeCapability {
    csi::VolumeCapability {
        access_mode: Some(csi::volume_capability::AccessMode { mode: mode as i32 }),
        access_type: Some(csi::volume_capability::AccessType::Block(
            csi::volume_capability::BlockVolume {},
        )),
    }
}

/// A mount capability with a filesystem type ("" for the default) and mount flags.
pub fn mount_cap_fs(mode: Mode, fs_type: &str, flags: &[&str]) -> csi::VolumeCapability {
    csi::VolumeCapability {
        access_mode: Some(csi::volume_capability::AccessMode { mode: mode as i32 }),
        access_type: Some(csi::volume_capability::AccessType::Mount(
            csi::volume_capability::MountVolume {
                fs_type: fs_type.to_owned(),
                mount_flags: flags.iter().map(|f| (*f).to_owned()).collect(),
                ..Default::default()
            },
        )),
    }
}

/// The capability most tests use: a mount volume, SINGLE_NODE_WRITER.
pub fn snw() -> csi::VolumeCapability {
    mount_cap(Mode::SingleNodeWriter)
}

/// A CreateVolume request for a mount volume (SINGLE_NODE_WRITER); `size` 0 sends no capacity range.
pub fn create_req(name: &str, size: i64) -> csi::CreateVolumeRequest {
    csi::CreateVolumeRequest {
        name: name.to_owned(),
        capacity_range: (size != 0).then_some(csi::CapacityRange {
            required_bytes: size,
            limit_bytes: 0,
        }),
        volume_capabilities: vec![snw()],
        ..Default::default()
    }
}

/// StorageClass parameters picking `pool`.
pub fn in_pool(pool: &str) -> HashMap<String, String> {
    HashMap::from([("pool".to_owned(), pool.to_owned())])
}

/// [`create_req`] in `pool` with `caps`.
pub fn create_in(
    pool: &str,
    name: &str,
    size: i64,
    caps: Vec<csi::VolumeCapability>,
) -> csi::CreateVolumeRequest {
    csi::CreateVolumeRequest {
        volume_capabilities: caps,
        parameters: in_pool(pool),
        ..create_req(name, size)
    }
}

pub fn topology(node: &str) -> csi::Topology {
    csi::Topology {
        segments: HashMap::from([(TOPOLOGY_KEY.to_owned(), node.to_owned())]),
    }
}

/// What external-provisioner asks for with --strict-topology: requisite = preferred = [`segment`].
pub fn strict_topology(segment: &csi::Topology) -> Option<csi::TopologyRequirement> {
    Some(csi::TopologyRequirement {
        requisite: vec![segment.clone()],
        preferred: vec![segment.clone()],
    })
}

pub fn stage_req(id: &str, staging: &Path, cap: csi::VolumeCapability) -> csi::NodeStageVolumeRequest {
    csi::NodeStageVolumeRequest {
        volume_id: id.to_owned(),
        staging_target_path: s(staging),
        volume_capability: Some(cap),
        ..Default::default()
    }
}

pub fn unstage_req(id: &str, staging: &Path) -> csi::NodeUnstageVolumeRequest {
    csi::NodeUnstageVolumeRequest {
        volume_id: id.to_owned(),
        staging_target_path: s(staging),
    }
}

pub fn publish_req(
    id: &str,
    staging: &Path,
    target: &Path,
    cap: csi::VolumeCapability,
    readonly: bool,
) -> csi::NodePublishVolumeRequest {
    csi::NodePublishVolumeRequest {
        volume_id: id.to_owned(),
        staging_target_path: s(staging),
        target_path: s(target),
        volume_capability: Some(cap),
        readonly,
        ..Default::default()
    }
}

pub fn unpublish_req(id: &str, target: &Path) -> csi::NodeUnpublishVolumeRequest {
    csi::NodeUnpublishVolumeRequest {
        volume_id: id.to_owned(),
        target_path: s(target),
    }
}

/// A DeleteVolume request for volume `id`.
pub fn delete_req(id: &str) -> csi::DeleteVolumeRequest {
    csi::DeleteVolumeRequest {
        volume_id: id.to_owned(),
        ..Default::default()
    }
}

pub fn stats_req(id: &str, path: &str) -> csi::NodeGetVolumeStatsRequest {
    csi::NodeGetVolumeStatsRequest {
        volume_id: id.to_owned(),
        volume_path: path.to_owned(),
        ..Default::default()
    }
}

// ---------------------------------------------------------------------------------------------------------
// Common flows

/// Creates a volume with [`create_req`] and returns it.
pub async fn create(ctl: &mut ControllerClient<Channel>, name: &str, size: i64) -> csi::Volume {
    create_with(ctl, create_req(name, size)).await
}

/// Sends CreateVolume `req`, which must answer OK with a volume, and returns the volume.
pub async fn create_with(ctl: &mut ControllerClient<Channel>, req: csi::CreateVolumeRequest) -> csi::Volume {
    ok(ctl.create_volume(req).await)
        .volume
        .expect("CreateVolume returned no volume")
}

/// Deletes volume `id`; the answer must be OK.
pub async fn delete(ctl: &mut ControllerClient<Channel>, id: &str) {
    ok(ctl.delete_volume(delete_req(id)).await);
}

/// GetCapacity of `pool`: available bytes.
pub async fn available_in(ctl: &mut ControllerClient<Channel>, pool: &str) -> i64 {
    ok(ctl
        .get_capacity(csi::GetCapacityRequest {
            parameters: in_pool(pool),
            ..Default::default()
        })
        .await)
    .available_capacity
}

/// GetPluginInfo's manifest entry of `pool`.
pub async fn pool_state(srv: &Server, pool: &str) -> String {
    let info = ok(srv
        .identity()
        .await
        .get_plugin_info(csi::GetPluginInfoRequest {})
        .await);
    info.manifest
        .get(&format!("pool/{pool}"))
        .unwrap_or_else(|| panic!("no pool/{pool} in the manifest {:?}", info.manifest))
        .clone()
}

/// ControllerGetVolume's condition of volume `id`.
pub async fn controller_condition(ctl: &mut ControllerClient<Channel>, id: &str) -> csi::VolumeCondition {
    ok(ctl
        .controller_get_volume(csi::ControllerGetVolumeRequest {
            volume_id: id.to_owned(),
        })
        .await)
    .status
    .and_then(|s| s.volume_condition)
    .unwrap_or_else(|| panic!("ControllerGetVolume of {id}: no volume condition"))
}

/// Volume IDs of each ListVolumes page of `max_entries` (0: no limit), following next_token (up to 10 pages).
pub async fn list_pages(ctl: &mut ControllerClient<Channel>, max_entries: i32) -> Vec<Vec<String>> {
    list_entry_pages(ctl, max_entries)
        .await
        .into_iter()
        .map(|page| {
            page.into_iter()
                .map(|e| e.volume.expect("ListVolumes entry without volume").volume_id)
                .collect()
        })
        .collect()
}

/// Every page of ListVolumes with `max_entries` per page, as the entries the driver returned.
pub async fn list_entry_pages(
    ctl: &mut ControllerClient<Channel>,
    max_entries: i32,
) -> Vec<Vec<csi::list_volumes_response::Entry>> {
    let mut pages = Vec::new();
    let mut token = String::new();
    loop {
        let page = ok(ctl
            .list_volumes(csi::ListVolumesRequest {
                max_entries,
                starting_token: token.clone(),
            })
            .await);
        pages.push(page.entries);
        if page.next_token.is_empty() {
            return pages;
        }
        token = page.next_token;
        assert!(pages.len() < 10, "pagination does not end");
    }
}

pub async fn list_ids(ctl: &mut ControllerClient<Channel>) -> Vec<String> {
    list_pages(ctl, 0).await.concat()
}

/// GetCapacity for the default pool, no topology: (available, maximum volume size).
pub async fn capacity(ctl: &mut ControllerClient<Channel>) -> (i64, Option<i64>) {
    let r = ok(ctl.get_capacity(csi::GetCapacityRequest::default()).await);
    (r.available_capacity, r.maximum_volume_size)
}

/// NodeStage of volume `id` at `staging`, then NodePublish read-write at `target`, both with `cap` and OK.
pub async fn stage_and_publish(
    node: &mut NodeClient<Channel>,
    id: &str,
    staging: &Path,
    target: &Path,
    cap: csi::VolumeCapability,
) {
    ok(node.node_stage_volume(stage_req(id, staging, cap.clone())).await);
    ok(node
        .node_publish_volume(publish_req(id, staging, target, cap, false))
        .await);
}

/// NodeUnpublish of volume `id` from `target`, then NodeUnstage from `staging`; both must answer OK.
pub async fn unpublish_and_unstage(node: &mut NodeClient<Channel>, id: &str, staging: &Path, target: &Path) {
    ok(node.node_unpublish_volume(unpublish_req(id, target)).await);
    ok(node.node_unstage_volume(unstage_req(id, staging)).await);
}

/// The plugin's service types (GetPluginCapabilities), sorted; anything but a known service type fails.
pub async fn plugin_caps(identity: &mut IdentityClient<Channel>) -> Vec<plugin_capability::service::Type> {
    let caps = ok(identity
        .get_plugin_capabilities(csi::GetPluginCapabilitiesRequest {})
        .await);
    known_types("plugin", &caps.capabilities, |c| match &c.r#type {
        Some(plugin_capability::Type::Service(s)) => Some(s.r#type),
        _ => None,
    })
}

/// The controller's RPC types (ControllerGetCapabilities), sorted; anything but a known RPC type fails.
pub async fn controller_caps(
    ctl: &mut ControllerClient<Channel>,
) -> Vec<controller_service_capability::rpc::Type> {
    let caps = ok(ctl
        .controller_get_capabilities(csi::ControllerGetCapabilitiesRequest {})
        .await);
    known_types("controller", &caps.capabilities, |c| match &c.r#type {
        Some(controller_service_capability::Type::Rpc(r)) => Some(r.r#type),
        _ => None,
    })
}

/// The node's RPC types (NodeGetCapabilities), sorted; anything but a known RPC type fails.
pub async fn node_caps(node: &mut NodeClient<Channel>) -> Vec<node_service_capability::rpc::Type> {
    let caps = ok(node
        .node_get_capabilities(csi::NodeGetCapabilitiesRequest {})
        .await);
    known_types("node", &caps.capabilities, |c| match &c.r#type {
        Some(node_service_capability::Type::Rpc(r)) => Some(r.r#type),
        _ => None,
    })
}

/// Sorted types of `caps` by `raw` (type number, `None`: other kind); other kinds, unknown and UNKNOWN fail.
fn known_types<C: Debug, T: TryFrom<i32> + Ord>(
    kind: &str,
    caps: &[C],
    raw: impl Fn(&C) -> Option<i32>,
) -> Vec<T> {
    let mut types: Vec<T> = caps
        .iter()
        .map(|c| {
            let n = raw(c).unwrap_or_else(|| panic!("unexpected {kind} capability {c:?}"));
            assert_ne!(n, 0, "{kind} capability of type UNKNOWN");
            T::try_from(n).unwrap_or_else(|_| panic!("unknown {kind} capability type {n}"))
        })
        .collect();
    types.sort();
    types
}

/// NodeGetVolumeStats of `req`, asked again (every 100 ms, for up to 10 s) until `done` holds for it: dir volumes
/// without project quota report a background measurement, which catches up within its interval (run such servers
/// with `--usage-refresh-seconds 1`).
pub async fn stats_until(
    node: &mut NodeClient<Channel>,
    req: csi::NodeGetVolumeStatsRequest,
    done: impl Fn(&csi::NodeGetVolumeStatsResponse) -> bool,
) -> csi::NodeGetVolumeStatsResponse {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = ok(node.node_get_volume_stats(req.clone()).await);
        if done(&r) || Instant::now() > deadline {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The (bytes, inodes) rows of NodeGetVolumeStats.
pub fn usage_rows(r: &csi::NodeGetVolumeStatsResponse) -> (csi::VolumeUsage, csi::VolumeUsage) {
    use csi::volume_usage::Unit;
    let row = |unit: Unit| {
        r.usage
            .iter()
            .find(|u| u.unit == unit as i32)
            .copied()
            .unwrap_or_else(|| panic!("no {unit:?} row in {r:?}"))
    };
    (row(Unit::Bytes), row(Unit::Inodes))
}

/// Writes `len` bytes of non-zero data to `path` and syncs them, so the blocks are allocated.
pub fn write_data(path: &Path, len: usize) -> io::Result<()> {
    use std::io::Write;
    let mut f = File::create(path)?;
    f.write_all(&vec![0x5a; len])?;
    f.sync_all()
}

/// Reproducible non-uniform bytes, so a misplaced or stale block shows.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u64 * 131 + (i as u64 >> 12) * 7 + u64::from(seed)) as u8)
        .collect()
}

/// Writes `data` to a new file at `path` and syncs it.
pub fn write_synced(path: &Path, data: &[u8]) {
    use std::io::Write;
    let mut f = File::create(path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
    f.write_all(data)
        .and_then(|()| f.sync_all())
        .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

/// Writes 1 MiB chunks of non-zero data to a new file at `path` until `limit` bytes are written or a write
/// fails, then syncs; returns the first error (of a write or of the sync), or `None` if everything fit.
pub fn fill(path: &Path, limit: u64) -> Option<io::Error> {
    use std::io::Write;
    let mut f = File::create(path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
    let chunk = vec![0xa5u8; MIB as usize];
    let mut written = 0u64;
    while written < limit {
        if let Err(e) = f.write_all(&chunk) {
            return Some(e);
        }
        written += chunk.len() as u64;
    }
    f.sync_all().err()
}

/// Entries in the directory `dir`, sorted.
pub fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

// ---------------------------------------------------------------------------------------------------------
// Loop devices and pool filesystems (image and btrfs pools; root)

/// Loop devices bound to a file at or under `path`, as sysfs names their backing files
/// (`/sys/block/loopN/loop/backing_file`). A file deleted since counts when `path` is a directory above it (sysfs
/// adds " (deleted)" to the file's name).
pub fn loops_under(path: &Path) -> Vec<LoopDevice> {
    use std::os::unix::ffi::OsStrExt;
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/sys/block").expect("listing /sys/block") {
        let name = entry.expect("listing /sys/block").file_name();
        let Some(number) = name
            .to_str()
            .and_then(|n| n.strip_prefix("loop"))
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let sys = Path::new("/sys/block").join(&name);
        // Unbound devices have no backing_file; one being unbound may fail to read (ENXIO): not bound either.
        let Ok(mut backing) = std::fs::read(sys.join("loop/backing_file")) else {
            continue;
        };
        if backing.last() == Some(&b'\n') {
            backing.pop();
        }
        if !Path::new(std::ffi::OsStr::from_bytes(&backing)).starts_with(path) {
            continue;
        }
        let Ok(dev) = std::fs::read_to_string(sys.join("dev")) else {
            continue;
        };
        let (major, minor) = dev
            .trim()
            .split_once(':')
            .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
            .unwrap_or_else(|| panic!("{}/dev: unexpected {dev:?}", sys.display()));
        found.push(LoopDevice {
            number,
            path: PathBuf::from(format!("/dev/loop{number}")),
            major,
            minor,
        });
    }
    found.sort_by_key(|d| d.number);
    found
}

/// Loop devices bound to a file on the filesystem of block device `major:minor`, whatever its path: once the
/// mount namespace a file was opened through is gone, sysfs names it relative to its filesystem's root only, so
/// [`loops_under`] no longer finds it. Asks `losetup` (the backing file's device is only in `LOOP_GET_STATUS64`).
pub fn loops_on_device(major: u32, minor: u32) -> Vec<LoopDevice> {
    let out = Command::new("losetup")
        .args(["--list", "--noheadings", "--output", "NAME,BACK-MAJ:MIN"])
        .output()
        .expect("running losetup");
    assert!(
        out.status.success(),
        "losetup --list: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let want = format!("{major}:{minor}");
    let mut found: Vec<LoopDevice> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let mut cols = line.split_whitespace();
            let (name, back) = (cols.next()?, cols.next()?);
            let number: u32 = name.strip_prefix("/dev/loop")?.parse().ok()?;
            let dev = std::fs::read_to_string(format!("/sys/block/loop{number}/dev")).ok()?;
            let (a, b) = dev.trim().split_once(':')?;
            (back == want).then_some(LoopDevice {
                number,
                path: PathBuf::from(name),
                major: a.parse().ok()?,
                minor: b.parse().ok()?,
            })
        })
        .collect();
    found.sort_by_key(|d| d.number);
    found
}

/// Detaches `devs`. A device still in use (mounted somewhere) is detached by the kernel when its last user lets
/// go.
fn detach_all(devs: Vec<LoopDevice>, what: &str) {
    for dev in devs {
        if let Err(e) = loam_sys::loopdev::detach(&dev) {
            eprintln!("warning: detaching {} ({what}): {e}", dev.path.display());
        }
    }
}

/// Detaches every loop device bound to a file at or under `path`. A device still in use (mounted somewhere) is
/// detached by the kernel when its last user lets go.
pub fn detach_loops_under(path: &Path) {
    detach_all(loops_under(path), &format!("backing under {}", path.display()));
}

/// Detaches, when dropped (also when the test panics), every loop device bound to a file under the directories
/// it watches, so a failed test leaves no device behind. Declare it before the [`Server`] whose directory it
/// watches, so that it drops after it: the server's namespace, and the filesystems mounted from the devices in
/// it, are gone by then and the devices detach at once.
#[derive(Debug, Default)]
pub struct LoopGuard {
    dirs: std::sync::Mutex<Vec<PathBuf>>,
}

impl LoopGuard {
    pub fn new() -> LoopGuard {
        LoopGuard::default()
    }

    /// Also detach the loop devices of files under `dir`.
    pub fn watch(&self, dir: &Path) {
        self.dirs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(dir.to_owned());
    }
}

impl Drop for LoopGuard {
    fn drop(&mut self) {
        for dir in self.dirs.get_mut().unwrap_or_else(|e| e.into_inner()).iter() {
            detach_loops_under(dir);
        }
    }
}

/// Moves the calling thread into a private mount namespace of its own, unless it already has one (its namespace
/// differs from the process's). Mounts it makes afterwards are seen by no other test, and a [`Server`] it starts
/// afterwards inherits them (the server's namespace is made as a copy of the spawning thread's).
pub fn private_mount_namespace() {
    let own = std::fs::read_link("/proc/thread-self/ns/mnt").expect("reading the thread's mount namespace");
    let process = std::fs::read_link("/proc/self/ns/mnt").expect("reading the process's mount namespace");
    if own == process {
        loam_sys::testutil::enter_private_mount_namespace().expect("entering a private mount namespace");
    }
}

/// A small real filesystem (ext4 or btrfs), as a disk of the node's for pools to live on: an image file in a
/// temporary directory of its own (`loam-test-disk-*`), attached to a loop device and mounted at
/// [`PoolFs::mount_point`] in the calling thread's private mount namespace (entered here if need be, see
/// [`private_mount_namespace`]).
///
/// Make it before starting the [`Server`], from the test's thread: the server's namespace is a copy of the
/// thread's, so it sees the mount. Mounts made or removed afterwards on one side stay on that side (use
/// [`Server::in_mount_ns`] for the server's). Declare it before the `Server`, so that it drops after it; when
/// dropped (also on panic) it detaches the loop devices of files on it (volumes of pools on it), unmounts it
/// from the thread's namespace, detaches its own device and removes its directory.
///
/// [`PoolFs::new`] formats it ext4 with 4096-byte blocks (the device's), no blocks reserved for root, one
/// inode per 64 KiB and the inode tables and journal written at once, so its free space is predictable and
/// nothing writes to it later. [`PoolFs::btrfs`] makes a btrfs filesystem (quotas off, as `mkfs.btrfs` leaves
/// them); [`PoolFs::with_mkfs`] takes any `mkfs` command.
#[derive(Debug)]
pub struct PoolFs {
    _dir: tempfile::TempDir,
    /// Canonical path of its temporary directory.
    pub dir: PathBuf,
    /// The image file holding the filesystem.
    pub image: PathBuf,
    /// Where it is mounted: `<dir>/mnt`.
    pub mount_point: PathBuf,
    pub device: LoopDevice,
    /// The filesystem type it is mounted as.
    pub fs_type: String,
}

/// The smallest btrfs filesystem [`PoolFs::btrfs`] makes: smaller ones are cramped (metadata is duplicated
/// and allocated in chunks of tens of MiB) and mkfs.btrfs refuses the smallest.
pub const MIN_BTRFS_BYTES: u64 = 256 << 20;

impl PoolFs {
    /// An ext4 filesystem of `size` bytes, mounted.
    pub fn new(size: u64) -> PoolFs {
        let mut mkfs = Command::new("mkfs.ext4");
        mkfs.args(["-q", "-F", "-b", "4096", "-m", "0", "-i", "65536", "-E"])
            .arg("nodiscard,lazy_itable_init=0,lazy_journal_init=0");
        PoolFs::with_mkfs(size, "ext4", mkfs)
    }

    /// A btrfs filesystem of `size` bytes (at least [`MIN_BTRFS_BYTES`]), mounted, with quotas off.
    pub fn btrfs(size: u64) -> PoolFs {
        assert!(
            size >= MIN_BTRFS_BYTES,
            "a btrfs PoolFs needs at least {MIN_BTRFS_BYTES} bytes, {size} asked for"
        );
        let mut mkfs = Command::new("mkfs.btrfs");
        mkfs.args(["-q", "-f"]);
        PoolFs::with_mkfs(size, "btrfs", mkfs)
    }

    /// Whether [`PoolFs::btrfs`] can work here: `mkfs.btrfs` (btrfs-progs) runs.
    pub fn can_make_btrfs() -> bool {
        Command::new("mkfs.btrfs")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// A filesystem of `size` bytes made by `mkfs` (run with the image file as its last argument), mounted as
    /// `fs_type`.
    pub fn with_mkfs(size: u64, fs_type: &str, mut mkfs: Command) -> PoolFs {
        private_mount_namespace();
        let tmp = tempfile::Builder::new()
            .prefix("loam-test-disk-")
            .tempdir()
            .expect("creating a temp dir");
        let dir = tmp.path().canonicalize().expect("resolving the temp dir");
        let image = dir.join("disk.img");
        let mount_point = dir.join("mnt");
        std::fs::create_dir(&mount_point).expect("creating the mount point");
        File::create(&image)
            .and_then(|f| f.set_len(size))
            .expect("creating the disk image");
        let program = mkfs.get_program().to_string_lossy().into_owned();
        let out = mkfs
            .arg(&image)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running {program}: {e}"));
        assert!(
            out.status.success(),
            "{program} {}: {}",
            image.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let cfg = loam_sys::loopdev::LoopConfig {
            direct_io: false,
            block_size: 4096,
            read_only: false,
        };
        let device = loam_sys::loopdev::attach(&image, &cfg).expect("attaching the disk image");
        let fs = PoolFs {
            _dir: tmp,
            dir,
            image,
            mount_point,
            device,
            fs_type: fs_type.to_owned(),
        };
        fs.mount();
        fs
    }

    /// Mounts it at [`PoolFs::mount_point`] in the calling thread's mount namespace.
    pub fn mount(&self) {
        loam_sys::mount::mount_fs(&self.device.path, &self.mount_point, &self.fs_type, &[], false)
            .expect("mounting the pool filesystem");
    }

    /// Unmounts it from [`PoolFs::mount_point`] in the calling thread's mount namespace.
    pub fn unmount(&self) {
        loam_sys::mount::unmount(&self.mount_point).expect("unmounting the pool filesystem");
    }

    /// Free bytes on it for unprivileged writers (`statvfs` f_bavail), as loam measures them.
    pub fn available_bytes(&self) -> u64 {
        loam_sys::statfs::statfs(&self.mount_point)
            .expect("statfs of the pool filesystem")
            .available_bytes
    }
}

impl Drop for PoolFs {
    fn drop(&mut self) {
        // Files on it attached to loop devices keep it busy: detach those first, found by path while the
        // namespace that opened them lives, by device number after.
        detach_loops_under(&self.mount_point);
        detach_all(
            loops_on_device(self.device.major, self.device.minor),
            &format!("backing on {}", self.image.display()),
        );
        if let Ok(table) = MountTable::read_self() {
            for _ in table.mounts_at(&self.mount_point) {
                if let Err(e) = rustix::mount::unmount(&self.mount_point, rustix::mount::UnmountFlags::DETACH)
                {
                    eprintln!("warning: unmounting {}: {e}", self.mount_point.display());
                }
            }
        }
        if let Err(e) = loam_sys::loopdev::detach(&self.device) {
            eprintln!("warning: detaching {}: {e}", self.device.path.display());
        }
    }
}

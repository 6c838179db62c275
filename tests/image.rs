//! Image pools end to end, against the real binary over real gRPC: volumes that are image files on loop devices,
//! formatted (ext4, xfs) or raw block; their sizes holding on the device; a restart and a simulated reboot; capacity
//! on a filesystem shared with other writers; a pool whose disk is not mounted; two servers on one data dir or
//! pool; and refused capabilities.
//!
//! Every test that attaches loop devices or mounts a filesystem needs root. Each one leaves no loop device, mount
//! or file behind, also when it fails: [`LoopGuard`] and [`PoolFs`] clean up on drop, and the harness checks the
//! mounts.

mod common;

use std::{
    fs::File,
    os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt},
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use common::*;
use loam::csi::{self, volume_capability::access_mode::Mode, volume_usage::Unit};
use loam_sys::{
    mountinfo::MountTable,
    testutil::{require_root, skip},
};
use tonic::Code;

/// The loop devices' logical block size, and so the image volumes' size granularity.
const BLOCK: i64 = 4096;

// ---------------------------------------------------------------------------------------------------------
// Helpers

/// A thick image pool `thick` (the default) and a thin one `thin`, in the server's directory.
fn thick_and_thin(root: &Path) -> String {
    format!(
        "default_pool = \"thick\"\n{}{}",
        pool_toml("thick", "image", &root.join("thick"), ""),
        pool_toml("thin", "image", &root.join("thin"), "allocation = \"thin\"")
    )
}

/// A server with the pools of [`thick_and_thin`], and a [`LoopGuard`] watching its directory. Bind the guard to a
/// name (not `_`): declared before the server, it drops after it.
fn start_thick_and_thin() -> (LoopGuard, Server) {
    let loops = LoopGuard::new();
    let srv = Server::start_with_config(NODE, thick_and_thin, &[]);
    loops.watch(&srv.root);
    (loops, srv)
}

fn smw_block() -> csi::VolumeCapability {
    block_cap(Mode::SingleNodeMultiWriter)
}

/// The image file of volume `id` in the image pool at `pool_root`.
fn image_file(pool_root: &Path, id: &str) -> PathBuf {
    pool_root.join("volumes").join(format!("{}.img", volume_hex(id)))
}

/// The one loop device bound to `image`.
#[track_caller]
fn the_loop_of(image: &Path) -> loam_sys::loopdev::LoopDevice {
    let mut devs = loops_under(image);
    assert_eq!(
        devs.len(),
        1,
        "expected one loop device bound to {}: {devs:?}",
        image.display()
    );
    devs.remove(0)
}

/// `len` bytes at a 4096-byte aligned address, as O_DIRECT wants.
struct Aligned {
    buf: Vec<u8>,
    start: usize,
    len: usize,
}

impl Aligned {
    fn new(len: usize) -> Aligned {
        let buf = vec![0; len + BLOCK as usize];
        let start = buf.as_ptr().align_offset(BLOCK as usize);
        Aligned { buf, start, len }
    }

    fn bytes(&self) -> &[u8] {
        &self.buf[self.start..self.start + self.len]
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..self.start + self.len]
    }
}

/// Writes `data` at `offset` with O_DIRECT (so it reaches the device, not only a page cache) and syncs.
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

/// Reads `len` bytes at `offset` with O_DIRECT: what the device holds, not what a page cache remembers.
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

/// How many times the server's log says it formatted volume `id`.
fn formatted(srv: &Server, id: &str) -> usize {
    srv.log()
        .lines()
        .filter(|l| l.contains("volume formatted") && l.contains(id))
        .count()
}

/// Runs `cmd` (stdin and stdout closed, stderr kept) and waits up to `within` for it to exit; kills it and
/// fails if it does not. Returns its status, its stderr and how long it ran.
fn run_briefly(mut cmd: Command, within: Duration) -> (ExitStatus, String, Duration) {
    let dir = tempfile::Builder::new()
        .prefix("loam-test-out-")
        .tempdir()
        .unwrap();
    let err_path = dir.path().join("stderr");
    let err = File::create(&err_path).unwrap();
    let started = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err)
        .spawn()
        .expect("spawning loam");
    let status = loop {
        if let Some(status) = child.try_wait().expect("polling loam") {
            break status;
        }
        if started.elapsed() > within {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the second loam serve still runs after {within:?}; killed. stderr:\n{}",
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (
        status,
        std::fs::read_to_string(&err_path).unwrap(),
        started.elapsed(),
    )
}

// ---------------------------------------------------------------------------------------------------------
// 1. Filesystem volumes: ext4 by default, xfs by fs_type; thick and thin

/// A filesystem volume's whole life in image pool `pool` (of [`thick_and_thin`]), with `fs_type` ("" for the
/// default, ext4) and `requested` bytes, next to a neighbour volume in the same pool holding data.
async fn filesystem_volume_life(pool: &str, fs_type: &str, requested: i64) {
    let (_loops, srv) = start_thick_and_thin();
    let (mut ctl, mut node) = (srv.controller().await, srv.node().await);
    let pool_root = srv.root.join(pool);
    let thick = pool == "thick";
    let want_fs = if fs_type.is_empty() { "ext4" } else { fs_type };

    // A neighbour in the same pool, staged, published and holding data before the volume under test exists.
    let nb = create_with(&mut ctl, create_in(pool, "neighbour", 16 * MIB, vec![snw()]))
        .await
        .volume_id;
    let nb_staging = srv.staging_dir("staging-neighbour");
    let nb_target = srv.target_path("neighbour");
    stage_and_publish(&mut node, &nb, &nb_staging, &nb_target, snw()).await;
    let nb_data = pattern(4 * MIB as usize, 3);
    write_synced(&srv.in_ns(&nb_target).join("data"), &nb_data);
    let nb_image = image_file(&pool_root, &nb);
    assert_eq!(std::fs::metadata(&nb_image).unwrap().len(), 16 * MIB as u64);

    // Create: the size is rounded up to the block size, and the image file is exactly that big.
    let cap = mount_cap_fs(Mode::SingleNodeWriter, fs_type, &[]);
    let vol = create_with(&mut ctl, create_in(pool, "vol", requested, vec![cap.clone()])).await;
    let id = vol.volume_id.clone();
    let size = (requested + BLOCK - 1) / BLOCK * BLOCK;
    assert_eq!(vol.capacity_bytes, size, "{requested} bytes asked for");
    let image = image_file(&pool_root, &id);
    let meta = std::fs::symlink_metadata(&image).unwrap_or_else(|e| panic!("{}: {e}", image.display()));
    assert!(meta.is_file());
    assert_eq!(meta.len(), size as u64, "image file size");
    let taken = meta.blocks() * 512;
    if thick {
        assert!(taken >= size as u64, "thick image takes {taken} of {size} bytes");
    } else {
        assert!(
            taken < size as u64,
            "thin image is not sparse: {taken} of {size} bytes taken"
        );
    }
    assert!(record_file(&pool_root, &id).is_file());
    assert!(loops_under(&image).is_empty(), "attached at CreateVolume already");

    // Stage: formatted and mounted from the image's one loop device.
    let staging = srv.staging_dir("staging");
    ok(node
        .node_stage_volume(stage_req(&id, &staging, cap.clone()))
        .await);
    let dev = the_loop_of(&image);
    let table = srv.mount_table();
    let at = table.mounts_at(&staging);
    assert_eq!(at.len(), 1, "{at:?}");
    assert_eq!(at[0].fs_type, want_fs, "{at:?}");
    assert_eq!(
        (at[0].major, at[0].minor),
        (dev.major, dev.minor),
        "{at:?} vs {dev:?}"
    );
    assert!(!at[0].is_read_only());

    // Publish: a bind of the staged filesystem at a directory loam creates.
    let target = srv.target_path("pod");
    ok(node
        .node_publish_volume(publish_req(&id, &staging, &target, cap.clone(), false))
        .await);
    assert!(target.is_dir(), "NodePublish creates the target");
    let table = srv.mount_table();
    let at = table.mounts_at(&target);
    assert_eq!(at.len(), 1, "{at:?}");
    assert_eq!((at[0].major, at[0].minor), (dev.major, dev.minor), "{at:?}");
    assert_eq!(at[0].root, Path::new("/"));

    // The filesystem is about the volume's size.
    let st = loam_sys::statfs::statfs(&srv.in_ns(&target)).unwrap();
    assert!(
        st.total_bytes <= size as u64 && st.total_bytes * 5 >= size as u64 * 4,
        "{want_fs} on a {size}-byte volume has {} bytes",
        st.total_bytes
    );

    let st = expect_code(ctl.delete_volume(delete_req(&id)).await, Code::FailedPrecondition);
    assert!(st.message().contains(&s(&target)), "{}", st.message());

    // Data, and the stats of the mounted filesystem.
    std::fs::write(srv.in_ns(&target).join("hello"), b"hello\n").unwrap();
    write_data(&srv.in_ns(&target).join("data"), MIB as usize).unwrap();
    let before = loam_sys::statfs::statfs(&srv.in_ns(&target)).unwrap();
    let r = ok(node.node_get_volume_stats(stats_req(&id, &s(&target))).await);
    let (bytes, inodes) = usage_rows(&r);
    assert_eq!(bytes.total as u64, before.total_bytes, "{bytes:?} vs {before:?}");
    let near = |a: i64, b: u64| a.abs_diff(b as i64) <= MIB as u64;
    assert!(
        near(bytes.used, before.total_bytes - before.free_bytes),
        "{bytes:?} vs {before:?}"
    );
    assert!(
        near(bytes.available, before.available_bytes),
        "{bytes:?} vs {before:?}"
    );
    assert!(bytes.used >= MIB, "1 MiB written, {bytes:?}");
    assert_eq!(
        inodes.total as u64, before.total_inodes,
        "{inodes:?} vs {before:?}"
    );
    assert_eq!(
        inodes.used as u64,
        before.total_inodes - before.free_inodes,
        "{inodes:?} vs {before:?}"
    );
    assert_eq!(inodes.available as u64, before.free_inodes);
    let cond = r.volume_condition.expect("VOLUME_CONDITION");
    assert!(!cond.abnormal, "{cond:?}");

    // Writing past the volume's size fails with ENOSPC; the image file does not grow.
    let err = fill(&srv.in_ns(&target).join("fill"), size as u64 + 16 * MIB as u64)
        .expect("wrote more than the volume's size");
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    assert_eq!(std::fs::metadata(&image).unwrap().len(), size as u64);
    std::fs::remove_file(srv.in_ns(&target).join("fill")).unwrap();
    assert_eq!(
        std::fs::read(srv.in_ns(&target).join("hello")).unwrap(),
        b"hello\n"
    );
    // The neighbour is untouched: its data as written, read from its device (O_DIRECT), its file its size.
    assert!(
        read_direct(&srv.in_ns(&nb_target).join("data"), 0, nb_data.len()) == nb_data,
        "the neighbour's data changed"
    );
    assert_eq!(std::fs::metadata(&nb_image).unwrap().len(), 16 * MIB as u64);

    // Unpublish, unstage: the mounts and the target go, the loop device is detached.
    ok(node.node_unpublish_volume(unpublish_req(&id, &target)).await);
    assert_eq!(srv.mounts_at(&target), 0);
    assert!(!srv.in_ns(&target).exists(), "target not removed");
    ok(node.node_unstage_volume(unstage_req(&id, &staging)).await);
    assert_eq!(srv.mounts_at(&staging), 0);
    assert!(entries(&srv.in_ns(&staging)).is_empty(), "staging dir not empty");
    assert!(
        loops_under(&image).is_empty(),
        "loop device left bound after NodeUnstage: {:?}",
        loops_under(&image)
    );

    // Delete: the image file and the record are gone.
    delete(&mut ctl, &id).await;
    assert!(!image.exists(), "image file left behind");
    assert!(!record_file(&pool_root, &id).exists(), "record left behind");

    unpublish_and_unstage(&mut node, &nb, &nb_staging, &nb_target).await;
    delete(&mut ctl, &nb).await;
    assert!(entries(&pool_root.join("volumes")).is_empty());
    srv.assert_no_mounts();
    assert!(loops_under(&srv.root).is_empty(), "{:?}", loops_under(&srv.root));
    drop((ctl, node));
    drop(srv);
}

#[tokio::test]
async fn image_ext4_thick_volume_holds_its_size_and_leaves_nothing() {
    if !require_root("image_ext4_thick_volume_holds_its_size_and_leaves_nothing") {
        return;
    }
    // 64 MiB and a bit: rounded up to the next 4096 bytes.
    filesystem_volume_life("thick", "", 64 * MIB + 1).await;
}

#[tokio::test]
async fn image_ext4_thin_volume_is_sparse_and_holds_its_size() {
    if !require_root("image_ext4_thin_volume_is_sparse_and_holds_its_size") {
        return;
    }
    filesystem_volume_life("thin", "ext4", 64 * MIB - 100).await;
}

#[tokio::test]
async fn image_xfs_volume_by_fs_type() {
    if !require_root("image_xfs_volume_by_fs_type") {
        return;
    }
    if Command::new("mkfs.xfs").arg("-V").output().is_err() {
        skip(
            "image_xfs_volume_by_fs_type",
            "mkfs.xfs is not installed (xfsprogs)",
        );
        return;
    }
    // New xfs filesystems must be at least 300 MiB.
    filesystem_volume_life("thick", "xfs", 400 * MIB - 100).await;
}

// ---------------------------------------------------------------------------------------------------------
// 2. Block volumes

#[tokio::test]
async fn image_block_volume_published_twice_survives_restart() {
    if !require_root("image_block_volume_published_twice_survives_restart") {
        return;
    }
    let (_loops, mut srv) = start_thick_and_thin();
    let (mut ctl, mut node) = (srv.controller().await, srv.node().await);
    let pool_root = srv.root.join("thick");
    let size = 32 * MIB;
    let id = create_with(&mut ctl, create_in("thick", "raw", size, vec![smw_block()]))
        .await
        .volume_id;
    let image = image_file(&pool_root, &id);
    assert_eq!(std::fs::metadata(&image).unwrap().len(), size as u64);

    // A block volume cannot be staged for filesystem access; nothing is attached for trying.
    let wrong = srv.staging_dir("staging-mount");
    let st = expect_code(
        node.node_stage_volume(stage_req(&id, &wrong, mount_cap(Mode::SingleNodeMultiWriter)))
            .await,
        Code::FailedPrecondition,
    );
    assert!(st.message().contains("block"), "{}", st.message());
    assert!(loops_under(&image).is_empty());
    assert!(entries(&wrong).is_empty());
    assert_eq!(srv.mounts_at(&wrong), 0);

    // Stage: the device is bound onto a file in the staging directory.
    let staging = srv.staging_dir("staging");
    ok(node
        .node_stage_volume(stage_req(&id, &staging, smw_block()))
        .await);
    let dev = the_loop_of(&image);
    let dev_rdev = std::fs::metadata(&dev.path).unwrap().rdev();
    let staged = staging.join(&id);
    let m = std::fs::metadata(srv.in_ns(&staged)).unwrap();
    assert!(m.file_type().is_block_device(), "{}", staged.display());
    assert_eq!(m.rdev(), dev_rdev);

    // Publish at two targets (SINGLE_NODE_MULTI_WRITER): each a node of the same device.
    let (a, b) = (srv.target_path("pod-a"), srv.target_path("pod-b"));
    for t in [&a, &b] {
        ok(node
            .node_publish_volume(publish_req(&id, &staging, t, smw_block(), false))
            .await);
        let m = std::fs::metadata(srv.in_ns(t)).unwrap();
        assert!(
            m.file_type().is_block_device(),
            "{} is not a block device",
            t.display()
        );
        assert_eq!(m.rdev(), dev_rdev, "{} is another device", t.display());
        assert_eq!(srv.mounts_at(t), 1);
    }

    // What one pod writes the other reads, from the device.
    let data = pattern(MIB as usize, 9);
    let offset = 8 * MIB as u64 + 3 * BLOCK as u64;
    write_direct(&srv.in_ns(&a), offset, &data);
    assert!(
        read_direct(&srv.in_ns(&b), offset, data.len()) == data,
        "data written through one target does not read back through the other"
    );

    let r = ok(node.node_get_volume_stats(stats_req(&id, &s(&a))).await);
    let bytes = r
        .usage
        .iter()
        .find(|u| u.unit == Unit::Bytes as i32)
        .unwrap_or_else(|| panic!("no bytes row in {r:?}"));
    assert_eq!(bytes.total, size, "{r:?}");

    let mounts = srv.mounts_under_root().len();
    assert_eq!(mounts, 3, "{:?}", srv.mounts_under_root());
    let pool_loops = loops_under(&pool_root).len();
    assert_eq!(pool_loops, 1);

    // Restart: the data is still there, and repeating stage and publish adds no mount and no loop device.
    drop((ctl, node));
    srv.restart();
    let (mut ctl, mut node) = (srv.controller().await, srv.node().await);
    assert!(
        read_direct(&srv.in_ns(&b), offset, data.len()) == data,
        "data lost across the restart"
    );
    ok(node
        .node_stage_volume(stage_req(&id, &staging, smw_block()))
        .await);
    for t in [&a, &b] {
        ok(node
            .node_publish_volume(publish_req(&id, &staging, t, smw_block(), false))
            .await);
    }
    assert_eq!(
        srv.mounts_under_root().len(),
        mounts,
        "{:?}",
        srv.mounts_under_root()
    );
    assert_eq!(
        loops_under(&pool_root).len(),
        pool_loops,
        "{:?}",
        loops_under(&pool_root)
    );
    assert_eq!(the_loop_of(&image), dev);

    // While published, delete and unstage refuse, naming the targets (block targets are files, not directories).
    let st = expect_code(ctl.delete_volume(delete_req(&id)).await, Code::FailedPrecondition);
    for t in [&a, &b] {
        assert!(st.message().contains(&s(t)), "{}", st.message());
    }
    let st = expect_code(
        node.node_unstage_volume(unstage_req(&id, &staging)).await,
        Code::FailedPrecondition,
    );
    assert!(st.message().contains(&s(&a)), "{}", st.message());
    // A publication that must be the only one is refused while the others stand.
    let c = srv.target_path("pod-c");
    let st = expect_code(
        node.node_publish_volume(publish_req(
            &id,
            &staging,
            &c,
            block_cap(Mode::SingleNodeSingleWriter),
            false,
        ))
        .await,
        Code::FailedPrecondition,
    );
    assert!(st.message().contains("one publication"), "{}", st.message());
    assert!(!srv.in_ns(&c).exists());

    // Unpublish both and unstage: nothing left in the staging directory, no device bound.
    for t in [&a, &b] {
        ok(node.node_unpublish_volume(unpublish_req(&id, t)).await);
        assert!(!srv.in_ns(t).exists(), "{} not removed", t.display());
    }
    ok(node.node_unstage_volume(unstage_req(&id, &staging)).await);
    assert!(
        entries(&srv.in_ns(&staging)).is_empty(),
        "staging dir not empty: {:?}",
        entries(&srv.in_ns(&staging))
    );
    srv.assert_no_mounts();
    assert!(
        loops_under(&pool_root).is_empty(),
        "{:?}",
        loops_under(&pool_root)
    );
    // The data is in the image file itself.
    let mut back = vec![0; data.len()];
    File::open(&image)
        .unwrap()
        .read_exact_at(&mut back, offset)
        .unwrap();
    assert!(back == data, "the image file does not hold the data");

    delete(&mut ctl, &id).await;
    assert!(!image.exists());
    drop((ctl, node));
    drop(srv);
}

// ---------------------------------------------------------------------------------------------------------
// 3. A reboot: mounts and loop devices gone, the image files stay

#[tokio::test]
async fn image_volume_after_reboot_is_attached_and_mounted_again_without_reformatting() {
    if !require_root("image_volume_after_reboot_is_attached_and_mounted_again_without_reformatting") {
        return;
    }
    let (_loops, mut srv) = start_thick_and_thin();
    let (mut ctl, mut node) = (srv.controller().await, srv.node().await);
    let pool_root = srv.root.join("thick");

    // A filesystem volume with a file on it.
    let id = create(&mut ctl, "durable", 64 * MIB).await.volume_id;
    let image = image_file(&pool_root, &id);
    let staging = srv.staging_dir("staging");
    let target = srv.target_path("pod");
    stage_and_publish(&mut node, &id, &staging, &target, snw()).await;
    let data = pattern(256 * KIB as usize, 5);
    write_synced(&srv.in_ns(&target).join("before"), &data);
    assert_eq!(formatted(&srv, &id), 1);
    // A block volume with data on it.
    let raw = create_with(&mut ctl, create_in("thick", "raw", 16 * MIB, vec![smw_block()]))
        .await
        .volume_id;
    let raw_staging = srv.staging_dir("staging-raw");
    let raw_target = srv.target_path("pod-raw");
    stage_and_publish(&mut node, &raw, &raw_staging, &raw_target, smw_block()).await;
    let raw_data = pattern(64 * KIB as usize, 11);
    write_direct(&srv.in_ns(&raw_target), 5 * BLOCK as u64, &raw_data);
    // A volume whose pod goes away while the node is down: kubelet only cleans up after the reboot.
    let gone = create(&mut ctl, "gone", 16 * MIB).await.volume_id;
    let gone_staging = srv.staging_dir("staging-gone");
    let gone_target = srv.target_path("pod-gone");
    stage_and_publish(&mut node, &gone, &gone_staging, &gone_target, snw()).await;
    assert_eq!(loops_under(&pool_root).len(), 3);
    drop((ctl, node));

    // The node goes down: the driver stops, then every mount and loop device disappears (as the server sees
    // them); the directories and files kubelet and loam made, and the image files, stay.
    srv.stop();
    let root = srv.root.clone();
    srv.in_mount_ns(|| {
        loop {
            let left = mounts_under(&MountTable::read_self().unwrap(), &root);
            let Some(path) = left.last() else {
                break;
            };
            loam_sys::mount::unmount(path).unwrap_or_else(|e| panic!("{e}"));
        }
        for dev in loops_under(&root) {
            loam_sys::loopdev::detach(&dev).unwrap();
        }
    });
    assert!(loops_under(&root).is_empty());
    assert!(target.is_dir() && raw_target.is_file() && raw_staging.join(&raw).is_file());
    srv.start_again();
    let (mut ctl, mut node) = (srv.controller().await, srv.node().await);
    assert!(srv.mounts_under_root().is_empty());

    // Before NodeStage the volume is nowhere.
    expect_code(
        node.node_get_volume_stats(stats_req(&id, &s(&target))).await,
        Code::NotFound,
    );
    expect_code(
        node.node_publish_volume(publish_req(&id, &staging, &target, snw(), false))
            .await,
        Code::FailedPrecondition,
    );

    // NodeStage attaches and mounts again, and does not format: the file written before is there.
    ok(node.node_stage_volume(stage_req(&id, &staging, snw())).await);
    let dev = the_loop_of(&image);
    let at = srv.mount_table();
    let at = at.mounts_at(&staging);
    assert_eq!(at.len(), 1, "{at:?}");
    assert_eq!((at[0].major, at[0].minor), (dev.major, dev.minor));
    assert_eq!(formatted(&srv, &id), 1, "the volume was formatted again");
    assert!(std::fs::read(srv.in_ns(&staging).join("before")).unwrap() == data);
    ok(node
        .node_publish_volume(publish_req(&id, &staging, &target, snw(), false))
        .await);
    assert_eq!(srv.mounts_at(&target), 1);
    assert!(std::fs::read(srv.in_ns(&target).join("before")).unwrap() == data);
    std::fs::write(srv.in_ns(&target).join("after"), b"after\n").unwrap();

    // The block volume too, onto the files left from before.
    stage_and_publish(&mut node, &raw, &raw_staging, &raw_target, smw_block()).await;
    let raw_dev = the_loop_of(&image_file(&pool_root, &raw));
    let m = std::fs::metadata(srv.in_ns(&raw_target)).unwrap();
    assert!(m.file_type().is_block_device());
    assert_eq!(m.rdev(), std::fs::metadata(&raw_dev.path).unwrap().rdev());
    assert!(read_direct(&srv.in_ns(&raw_target), 5 * BLOCK as u64, raw_data.len()) == raw_data);

    // The volume nobody stages again is unpublished and unstaged from what is left of it, and deletes.
    ok(node
        .node_unpublish_volume(unpublish_req(&gone, &gone_target))
        .await);
    assert!(!gone_target.exists(), "target directory left behind");
    ok(node.node_unstage_volume(unstage_req(&gone, &gone_staging)).await);
    assert!(entries(&gone_staging).is_empty());
    delete(&mut ctl, &gone).await;
    assert!(!image_file(&pool_root, &gone).exists());

    unpublish_and_unstage(&mut node, &id, &staging, &target).await;
    assert!(loops_under(&image).is_empty());
    delete(&mut ctl, &id).await;
    assert!(!image.exists());
    unpublish_and_unstage(&mut node, &raw, &raw_staging, &raw_target).await;
    assert!(entries(&srv.in_ns(&raw_staging)).is_empty());
    delete(&mut ctl, &raw).await;
    srv.assert_no_mounts();
    assert!(loops_under(&root).is_empty(), "{:?}", loops_under(&root));
    drop((ctl, node));
    drop(srv);
}

// ---------------------------------------------------------------------------------------------------------
// 4. Capacity on a filesystem shared with other writers

/// A pool of `kind` on its own 200 MiB ext4 filesystem holding 120 MiB of unrelated files: what GetCapacity
/// offers plus what the pool has promised never exceeds the filesystem's free space plus what the pool's
/// volumes have written, and 40 MiB volumes fit only once.
async fn capacity_on_a_shared_filesystem(kind: &str) {
    let fs = PoolFs::new(200 * MIB as u64);
    let unrelated = fs.mount_point.join("unrelated");
    std::fs::create_dir(&unrelated).unwrap();
    for i in 0..4 {
        write_data(&unrelated.join(format!("f{i}")), 30 * MIB as usize).unwrap();
    }
    let pool_root = fs.mount_point.join("pool");
    let (pool_kind, extra) = match kind {
        "thin" => ("image", "allocation = \"thin\""),
        other => (other, ""),
    };
    let mut srv = Server::start_with_config(NODE, |_| pool_toml("shared", pool_kind, &pool_root, extra), &[]);
    let (mut ctl, mut node) = (srv.controller().await, srv.node().await);
    let backing = |id: &str| match kind {
        "dir" => pool_root.join("volumes").join(volume_hex(id)),
        _ => image_file(&pool_root, id),
    };
    let mut volumes: Vec<(String, u64)> = Vec::new();

    // The invariant, checked now; returns what GetCapacity offers.
    macro_rules! check {
        ($when:expr) => {{
            let offered = available_in(&mut ctl, "shared").await as u64;
            let free = fs.available_bytes();
            let promised: u64 = volumes.iter().map(|(_, size)| size).sum();
            let written: u64 = volumes
                .iter()
                .map(|(id, size)| {
                    loam_sys::fs::tree_usage(&backing(id))
                        .unwrap()
                        .bytes
                        .min(*size)
                })
                .sum();
            assert!(
                offered + promised <= free + written,
                "{}: {kind} pool offers {offered} bytes and promised {promised}, but its filesystem has {free} \
                 free and its volumes wrote {written}",
                $when
            );
            offered
        }};
    }

    let first = check!("at start");
    assert!(
        (40 * MIB as u64..80 * MIB as u64).contains(&first),
        "test setup: the pool should offer room for one 40 MiB volume and not two, offers {first}"
    );
    let mut refusal = None;
    for i in 0..4 {
        match ctl.create_volume(create_req(&format!("v{i}"), 40 * MIB)).await {
            Ok(r) => {
                let v = r.into_inner().volume.unwrap();
                volumes.push((v.volume_id, v.capacity_bytes as u64));
                check!(format!("after creating v{i}"));
            }
            Err(st) => {
                refusal = Some(st);
                break;
            }
        }
    }
    let st = refusal.expect("40 MiB volumes never stopped fitting");
    assert_eq!(st.code(), Code::ResourceExhausted, "{st:?}");
    assert!(
        st.message().contains("shared"),
        "does not name the pool: {}",
        st.message()
    );
    assert_eq!(volumes.len(), 1, "{volumes:?}");
    let before = check!("after the refusal");
    // What a thin pool offers does not move while its volumes write: each block written takes as much from the
    // filesystem's free space as it adds to what the volumes wrote (up to the metadata of the image files).
    let steady = |now: u64, when: &str| {
        if kind == "thin" {
            assert!(
                now.abs_diff(before) <= MIB as u64,
                "{when}: the thin pool offers {now} bytes, {before} before the volume wrote"
            );
        }
    };

    // The volume writes data; another writer fills the filesystem further.
    let (id, _) = volumes[0].clone();
    let staging = srv.staging_dir("staging");
    let target = srv.target_path("pod");
    stage_and_publish(&mut node, &id, &staging, &target, snw()).await;
    write_data(&srv.in_ns(&target).join("data"), 8 * MIB as usize).unwrap();
    steady(check!("after the volume wrote 8 MiB"), "attached, 8 MiB written");
    write_data(&unrelated.join("more"), 8 * MIB as usize).unwrap();
    let offered = check!("after 8 MiB more unrelated data");
    expect_code(
        ctl.create_volume(create_req("late", offered as i64 + 4 * MIB))
            .await,
        Code::ResourceExhausted,
    );
    check!("after a refused create");
    std::fs::remove_file(unrelated.join("more")).unwrap();

    unpublish_and_unstage(&mut node, &id, &staging, &target).await;
    // Detached, the image is measured once and then read from memory; after a restart, from the start-up check.
    steady(check!("after unstage"), "detached");
    srv.restart();
    (ctl, node) = (srv.controller().await, srv.node().await);
    steady(check!("after a restart"), "after a restart");
    stage_and_publish(&mut node, &id, &staging, &target, snw()).await;
    write_data(&srv.in_ns(&target).join("data2"), 4 * MIB as usize).unwrap();
    steady(check!("after 4 MiB more"), "attached again, 4 MiB more");
    unpublish_and_unstage(&mut node, &id, &staging, &target).await;
    delete(&mut ctl, &id).await;
    volumes.clear();
    check!("after delete");
    assert!(entries(&pool_root.join("volumes")).is_empty());
    drop((ctl, node));
    srv.stop();
}

#[tokio::test]
async fn image_capacity_of_a_dir_pool_on_a_shared_filesystem_never_overcommits() {
    if !require_root("image_capacity_of_a_dir_pool_on_a_shared_filesystem_never_overcommits") {
        return;
    }
    capacity_on_a_shared_filesystem("dir").await;
}

#[tokio::test]
async fn image_capacity_of_a_thin_image_pool_on_a_shared_filesystem_is_exact_and_never_overcommits() {
    if !require_root(
        "image_capacity_of_a_thin_image_pool_on_a_shared_filesystem_is_exact_and_never_overcommits",
    ) {
        return;
    }
    capacity_on_a_shared_filesystem("thin").await;
}

#[tokio::test]
async fn image_capacity_of_a_thick_image_pool_on_a_shared_filesystem_never_overcommits() {
    if !require_root("image_capacity_of_a_thick_image_pool_on_a_shared_filesystem_never_overcommits") {
        return;
    }
    capacity_on_a_shared_filesystem("image").await;
}

// ---------------------------------------------------------------------------------------------------------
// 5. A pool whose disk is not mounted

#[tokio::test]
async fn image_pool_on_an_unmounted_disk_is_degraded_and_untouched() {
    if !require_root("image_pool_on_an_unmounted_disk_is_degraded_and_untouched") {
        return;
    }
    let fs = PoolFs::new(200 * MIB as u64);
    // Pool `disk` is the disk's root, as an admin mounting a disk for loam would set it; pool `sub` is a
    // directory on it.
    let disk = fs.mount_point.clone();
    let sub = disk.join("loam");
    let loops = LoopGuard::new();
    let mut srv = Server::start_with_config(
        NODE,
        |root| {
            format!(
                "default_pool = \"disk\"\n{}{}{}",
                pool_toml("disk", "image", &disk, ""),
                pool_toml("sub", "dir", &sub, ""),
                pool_toml("local", "image", &root.join("local"), "allocation = \"thin\"")
            )
        },
        &[],
    );
    loops.watch(&srv.root);
    let mut ctl = srv.controller().await;
    let id = create(&mut ctl, "on-disk", 16 * MIB).await.volume_id;
    let image = image_file(&disk, &id);
    assert!(image.is_file());
    assert!(pool_state(&srv, "disk").await.starts_with("ready:"));
    assert!(pool_state(&srv, "sub").await.starts_with("ready:"));
    drop(ctl);

    // The disk is not there at the next start: `disk` is an empty directory on the parent filesystem, `sub`
    // is missing.
    srv.stop();
    srv.in_mount_ns(|| fs.unmount());
    fs.unmount();
    assert!(entries(&disk).is_empty() && !sub.exists());
    srv.start_again();
    let mut ctl = srv.controller().await;

    assert_eq!(available_in(&mut ctl, "disk").await, 0);
    let cap = ok(ctl.get_capacity(csi::GetCapacityRequest::default()).await);
    assert_eq!((cap.available_capacity, cap.maximum_volume_size), (0, Some(0)));
    let st = expect_code(
        ctl.create_volume(create_req("new", 16 * MIB)).await,
        Code::ResourceExhausted,
    );
    assert!(
        st.message().contains("disk") && st.message().contains("is the disk mounted"),
        "{}",
        st.message()
    );
    let st = expect_code(ctl.delete_volume(delete_req(&id)).await, Code::FailedPrecondition);
    assert!(st.message().contains("disk"), "{}", st.message());
    let cond = controller_condition(&mut ctl, &id).await;
    assert!(cond.abnormal, "{cond:?}");
    assert!(!cond.message.is_empty());
    let state = pool_state(&srv, "disk").await;
    assert!(
        state.starts_with("degraded:") && state.contains("is the disk mounted"),
        "{state}"
    );
    assert_eq!(available_in(&mut ctl, "sub").await, 0);
    let st = expect_code(
        ctl.create_volume(create_in("sub", "new-sub", 16 * MIB, vec![snw()]))
            .await,
        Code::ResourceExhausted,
    );
    assert!(
        st.message().contains("sub") && st.message().contains("is the disk mounted"),
        "{}",
        st.message()
    );
    let state = pool_state(&srv, "sub").await;
    assert!(
        state.starts_with("degraded:") && state.contains("is the disk mounted"),
        "{state}"
    );
    let probe = ok(srv.identity().await.probe(csi::ProbeRequest {}).await);
    assert_eq!(probe.ready, Some(true));
    // Nothing was made where the disk should be, neither as the server sees it nor on the host.
    assert!(
        entries(&srv.in_ns(&disk)).is_empty(),
        "loam wrote to the pool path of a missing disk: {:?}",
        entries(&srv.in_ns(&disk))
    );
    assert!(entries(&disk).is_empty());
    assert!(
        !srv.in_ns(&sub).exists() && !sub.exists(),
        "loam created {}",
        sub.display()
    );

    // The other pool works as before.
    assert!(pool_state(&srv, "local").await.starts_with("ready:"));
    assert!(available_in(&mut ctl, "local").await > 0);
    let other = create_with(&mut ctl, create_in("local", "elsewhere", 16 * MIB, vec![snw()]))
        .await
        .volume_id;
    assert!(image_file(&srv.root.join("local"), &other).is_file());
    delete(&mut ctl, &other).await;
    assert!(!image_file(&srv.root.join("local"), &other).exists());
    drop(ctl);

    // The disk is back: the pool is ready and its volume deletes.
    srv.stop();
    fs.mount();
    srv.in_mount_ns(|| fs.mount());
    srv.start_again();
    let mut ctl = srv.controller().await;
    for pool in ["disk", "sub"] {
        let state = pool_state(&srv, pool).await;
        assert!(state.starts_with("ready:"), "{pool}: {state}");
        assert!(available_in(&mut ctl, pool).await > 0, "{pool}");
    }
    let cond = controller_condition(&mut ctl, &id).await;
    assert!(!cond.abnormal, "{cond:?}");
    delete(&mut ctl, &id).await;
    assert!(!image.exists());
    drop(ctl);
    srv.stop();
    assert!(loops_under(&srv.root).is_empty() && loops_under(&disk).is_empty());
}

// ---------------------------------------------------------------------------------------------------------
// 6. One server per data dir and per pool

#[tokio::test]
async fn image_second_server_on_the_same_data_dir_or_pool_fails_at_once() {
    // Needs no root: nothing is mounted or attached.
    let srv = Server::start_with_config(NODE, |root| pool_toml("img", "image", &root.join("img"), ""), &[]);
    let pool_root = srv.root.join("img");
    let marker = std::fs::read(pool_root.join("loam-pool.json")).expect("the pool's marker");
    let other_dir = tempfile::Builder::new()
        .prefix("loam-test-second-")
        .tempdir()
        .unwrap();
    let other = other_dir.path().canonicalize().unwrap();
    let holder = format!("process {}", srv.pid);

    let second = |data_dir: &Path, config: &Path, socket: &Path| {
        let mut cmd = loam_command();
        cmd.arg("serve")
            .arg("--endpoint")
            .arg(format!("unix://{}", socket.display()))
            .arg("--node-id")
            .arg(NODE)
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--config")
            .arg(config);
        run_briefly(cmd, Duration::from_secs(5))
    };

    // The same data dir.
    let socket = other.join("same-data.sock");
    let (status, stderr, took) = second(&srv.data_dir(), &srv.config_file(), &socket);
    assert!(
        !status.success(),
        "second server on the data dir: {status}\n{stderr}"
    );
    let lock = srv.data_dir().join("node/loam.lock");
    assert!(
        stderr.contains(&s(&lock)) && stderr.contains(&holder),
        "stderr does not name the lock {} and the holder ({holder}):\n{stderr}",
        lock.display()
    );
    assert!(took < Duration::from_secs(3), "took {took:?}");
    assert!(!socket.exists(), "the refused server made its socket");

    // Another data dir, but a pool the first server holds.
    let config = other.join("loam.toml");
    std::fs::write(&config, pool_toml("img", "image", &pool_root, "")).unwrap();
    let socket = other.join("same-pool.sock");
    let (status, stderr, took) = second(&other.join("data"), &config, &socket);
    assert!(!status.success(), "second server on the pool: {status}\n{stderr}");
    let lock = pool_root.join("loam.lock");
    assert!(
        stderr.contains(&s(&lock)) && stderr.contains(&holder) && stderr.contains("img"),
        "stderr does not name the pool, its lock {} and the holder ({holder}):\n{stderr}",
        lock.display()
    );
    assert!(took < Duration::from_secs(3), "took {took:?}");
    assert!(!socket.exists(), "the refused server made its socket");
    assert_eq!(
        std::fs::read(pool_root.join("loam-pool.json")).unwrap(),
        marker,
        "the refused server changed the pool's marker"
    );

    // The first server is unaffected and still holds both locks.
    assert_eq!(
        std::fs::read_to_string(srv.data_dir().join("node/loam.lock")).unwrap(),
        srv.pid.to_string()
    );
    assert_eq!(
        std::fs::read_to_string(pool_root.join("loam.lock")).unwrap(),
        srv.pid.to_string()
    );
    let mut ctl = srv.controller().await;
    let id = create(&mut ctl, "still-works", 16 * MIB).await.volume_id;
    assert!(image_file(&pool_root, &id).is_file());
    delete(&mut ctl, &id).await;
    let probe = ok(srv.identity().await.probe(csi::ProbeRequest {}).await);
    assert_eq!(probe.ready, Some(true));
}

// ---------------------------------------------------------------------------------------------------------
// 7. Capabilities image and dir pools refuse

#[tokio::test]
async fn image_pools_refuse_unsupported_capabilities() {
    // Needs no root: refused requests attach and mount nothing, and image files need no privilege.
    let srv = Server::start_with_config(
        NODE,
        |root| {
            format!(
                "default_pool = \"img\"\n{}{}",
                pool_toml("img", "image", &root.join("img"), ""),
                pool_toml("plain", "dir", &root.join("plain"), "")
            )
        },
        &[],
    );
    let mut ctl = srv.controller().await;
    let snw = Mode::SingleNodeWriter;

    let st = expect_code(
        ctl.create_volume(create_in(
            "img",
            "btrfs",
            16 * MIB,
            vec![mount_cap_fs(snw, "btrfs", &[])],
        ))
        .await,
        Code::InvalidArgument,
    );
    let m = st.message();
    assert!(
        m.contains("btrfs") && m.contains("ext4") && m.contains("xfs"),
        "{m}"
    );

    let st = expect_code(
        ctl.create_volume(create_in(
            "img",
            "xattr",
            16 * MIB,
            vec![mount_cap_fs(snw, "", &["noatime", "user_xattr"])],
        ))
        .await,
        Code::InvalidArgument,
    );
    let m = st.message();
    assert!(
        m.contains("user_xattr") && m.contains("noatime") && m.contains("discard"),
        "does not name the flag and the allowed ones: {m}"
    );

    let st = expect_code(
        ctl.create_volume(create_in("plain", "raw", 16 * MIB, vec![block_cap(snw)]))
            .await,
        Code::InvalidArgument,
    );
    assert!(st.message().contains("kind image"), "{}", st.message());

    // Nothing was made for the refused requests.
    for pool in ["img", "plain"] {
        let volumes = srv.root.join(pool).join("volumes");
        assert!(entries(&volumes).is_empty(), "{pool}: {:?}", entries(&volumes));
    }

    // ValidateVolumeCapabilities: what the volume cannot serve gets no confirmation, and a reason.
    let ext4 = mount_cap_fs(snw, "ext4", &[]);
    let id = create_with(&mut ctl, create_in("img", "fs", 16 * MIB, vec![ext4.clone()]))
        .await
        .volume_id;
    let validate = |cap: csi::VolumeCapability| csi::ValidateVolumeCapabilitiesRequest {
        volume_id: id.clone(),
        volume_capabilities: vec![cap],
        ..Default::default()
    };
    let r = ok(ctl.validate_volume_capabilities(validate(mount_cap(snw))).await);
    assert!(r.confirmed.is_some(), "{r:?}");
    for cap in [
        block_cap(snw),
        mount_cap(Mode::MultiNodeMultiWriter),
        mount_cap_fs(snw, "xfs", &[]),
    ] {
        let r = ok(ctl.validate_volume_capabilities(validate(cap.clone())).await);
        assert!(r.confirmed.is_none(), "{cap:?} confirmed: {r:?}");
        assert!(!r.message.is_empty(), "{cap:?}: no message");
    }
    delete(&mut ctl, &id).await;
}

//! btrfs pools end to end, against the real binary over real gRPC, on real btrfs filesystems in loop-mounted
//! image files: volumes that are subvolumes whose qgroup limit holds their size (EDQUOT past it) and whose usage
//! comes from the qgroup, with simple quotas and with full qgroups; deletion that leaves no subvolume and no
//! qgroup; a restart, and a limit changed by hand; a btrfs pool on another filesystem; refused capabilities.
//!
//! Every test needs root (loop devices, mounts, btrfs ioctls) and mkfs.btrfs (btrfs-progs); without them it
//! prints `SKIP` and passes, unless `LOAM_STRICT=1`. Each one leaves no loop device, mount or file behind, also
//! when it fails: [`PoolFs`] cleans up on drop, and the harness checks the mounts.

mod common;

use std::{
    fs::File,
    io::Read,
    os::fd::AsFd,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use common::*;
use loam::csi::{self, volume_capability::access_mode::Mode};
use loam_sys::{
    btrfs::{Qgroup, QuotaMode},
    testutil::{require_root, skip},
};
use tonic::{Code, transport::Channel};

/// The btrfs filesystems the tests make: room for a few 16 MiB volumes, and past mkfs.btrfs's minimum.
const FS_BYTES: u64 = 512 << 20;
/// The volumes' size.
const SIZE: i64 = 16 * MIB;
/// The pool most tests use.
const POOL: &str = "bt";

// ---------------------------------------------------------------------------------------------------------
// Helpers

/// Whether `test` can run: as root, with mkfs.btrfs. Prints why not (or fails with `LOAM_STRICT=1`).
fn can_run(test: &str) -> bool {
    if !require_root(test) {
        return false;
    }
    if !PoolFs::can_make_btrfs() {
        skip(test, "mkfs.btrfs (btrfs-progs) is not installed");
        return false;
    }
    true
}

/// How the pool's filesystem comes to have quotas on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Quotas {
    /// A fresh filesystem and the default `quota = "auto"`: loam turns simple quotas on.
    Simple,
    /// A fresh filesystem and `quota = "full"`: loam turns full qgroups on.
    Full,
    /// Full qgroups turned on by hand before loam starts (`quota = "auto"`): loam keeps them.
    FullByHand,
}

impl Quotas {
    /// The pool's `quota` line.
    fn config(self) -> &'static str {
        match self {
            Quotas::Full => "quota = \"full\"",
            Quotas::Simple | Quotas::FullByHand => "quota = \"auto\"",
        }
    }

    fn mode(self) -> QuotaMode {
        match self {
            Quotas::Simple => QuotaMode::Simple,
            Quotas::Full | Quotas::FullByHand => QuotaMode::Full,
        }
    }

    /// What must be done to the fresh filesystem `fs` before loam starts.
    fn prepare(self, fs: &PoolFs) {
        assert_eq!(
            loam_sys::btrfs::quota_mode(&fs.mount_point).unwrap(),
            QuotaMode::Off,
            "a fresh filesystem has quotas off"
        );
        if self == Quotas::FullByHand {
            loam_sys::btrfs::enable_quota(&fs.mount_point, false).expect("enabling full qgroups");
            // The rescan of an empty filesystem is over at once; wait for it so that figures are exact.
            let deadline = Instant::now() + Duration::from_secs(10);
            while loam_sys::btrfs::rescan_running(&fs.mount_point).unwrap() {
                assert!(Instant::now() < deadline, "the qgroup rescan does not end");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Asserts that the server's log says the pool uses this accounting, and how it came to.
    #[track_caller]
    fn assert_logged(self, srv: &Server) {
        let log = srv.log();
        let said = |words: &[&str]| {
            log.lines()
                .any(|l| l.contains(POOL) && words.iter().all(|w| l.contains(w)))
        };
        let found = match self {
            Quotas::Simple => said(&["btrfs simple quotas enabled"]),
            Quotas::Full => said(&["btrfs full qgroups enabled"]),
            Quotas::FullByHand => said(&["btrfs quotas already on", "Full"]),
        };
        assert!(found, "the log does not say pool {POOL} uses {self:?}:\n{log}");
        let wrong = match self {
            Quotas::Simple => said(&["full qgroups"]),
            Quotas::Full | Quotas::FullByHand => said(&["simple quotas enabled"]),
        };
        assert!(!wrong, "the log names the other quota mode for {self:?}:\n{log}");
    }
}

/// The subvolume of volume `id` in the btrfs pool at `pool_root`.
fn subvolume(pool_root: &Path, id: &str) -> PathBuf {
    pool_root.join("volumes").join(volume_hex(id))
}

/// The subvolume id of `path`, which must be a subvolume.
#[track_caller]
fn subvolume_id(path: &Path) -> u64 {
    loam_sys::btrfs::subvolume_id(path)
        .unwrap_or_else(|e| panic!("looking up {}: {e}", path.display()))
        .unwrap_or_else(|| panic!("{} is not a subvolume", path.display()))
}

/// The qgroup `0/<id>` of the filesystem holding `path`, which must exist.
#[track_caller]
fn qgroup(path: &Path, id: u64) -> Qgroup {
    loam_sys::btrfs::qgroup(path, id)
        .unwrap_or_else(|e| panic!("reading qgroup 0/{id}: {e}"))
        .unwrap_or_else(|| panic!("no qgroup 0/{id} on the filesystem of {}", path.display()))
}

/// Commits the filesystem holding `path` (syncfs(2)), so that its qgroups in sysfs show what was written.
fn syncfs(path: &Path) {
    let f = File::open(path).unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    rustix::fs::syncfs(f.as_fd()).unwrap_or_else(|e| panic!("syncfs of {}: {e}", path.display()));
}

/// Reads the whole file at `path`.
fn read_all(path: &Path) -> Vec<u8> {
    let mut data = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut data))
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    data
}

/// The level-0 qgroups `btrfs qgroup show -r --raw <mnt>` lists (its first column, `0/<id>`).
fn qgroups_shown(mnt: &Path) -> Vec<String> {
    let out = Command::new("btrfs")
        .args(["qgroup", "show", "-r", "--raw"])
        .arg(mnt)
        .output()
        .expect("running btrfs qgroup show");
    assert!(
        out.status.success(),
        "btrfs qgroup show {}: {}",
        mnt.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| w.starts_with("0/"))
        .map(str::to_owned)
        .collect()
}

/// NodeGetVolumeStats of volume `id` at `path`.
async fn stats(
    node: &mut csi::node_client::NodeClient<Channel>,
    id: &str,
    path: &Path,
) -> csi::NodeGetVolumeStatsResponse {
    ok(node.node_get_volume_stats(stats_req(id, &s(path))).await)
}

/// The pool `bt` on the btrfs filesystem `fs` (at `<mnt>/pool`), with `extra` lines.
fn btrfs_pool(fs: &PoolFs, extra: &str) -> (PathBuf, String) {
    let root = fs.mount_point.join("pool");
    let toml = pool_toml(POOL, "btrfs", &root, extra);
    (root, toml)
}

/// A fresh btrfs filesystem and a server with the pool `bt` on it, quotas as the pool turns them on. Returns the
/// filesystem, the pool's directory and the server.
fn start_pool() -> (PoolFs, PathBuf, Server) {
    let fs = PoolFs::btrfs(FS_BYTES);
    let (pool_root, toml) = btrfs_pool(&fs, "");
    let srv = Server::start_with_config(NODE, |_| toml, &[]);
    (fs, pool_root, srv)
}

/// A fresh btrfs filesystem made ready as `quotas` says, and a server with the pool `bt` on it (`extra` lines,
/// then `quotas`'s `quota` line); checks that the server's log and the filesystem show the accounting `quotas`
/// wants. Returns the filesystem, the pool's directory and the server.
fn start_with_quotas(quotas: Quotas, extra: &str) -> (PoolFs, PathBuf, Server) {
    let fs = PoolFs::btrfs(FS_BYTES);
    quotas.prepare(&fs);
    let (pool_root, toml) = btrfs_pool(&fs, &format!("{extra}{}", quotas.config()));
    let srv = Server::start_with_config(NODE, |_| toml, &[]);
    quotas.assert_logged(&srv);
    assert_eq!(
        loam_sys::btrfs::quota_mode(&fs.mount_point).unwrap(),
        quotas.mode()
    );
    (fs, pool_root, srv)
}

// ---------------------------------------------------------------------------------------------------------
// 1. Sizes enforced by the qgroup limit, usage from the qgroup, capacity

/// Two 16 MiB volumes in a pool on a fresh 512 MiB btrfs, with quotas as `quotas` says; `capacity` is the
/// pool's configured budget, if any. Checks the subvolumes and their limits, the stats of a volume holding
/// 4 MiB, EDQUOT past the size with the neighbour intact, and GetCapacity all along.
async fn enforcement_and_usage(quotas: Quotas, capacity: Option<i64>) {
    let budget = capacity.map_or(String::new(), |c| format!("capacity = {c}\n"));
    let (fs, pool_root, mut srv) = start_with_quotas(quotas, &budget);
    let (mut ctl, mut node) = (srv.controller().await, srv.node().await);
    let state = pool_state(&srv, POOL).await;
    assert!(
        state.starts_with("ready:") && state.contains("btrfs") && state.contains("sizes enforced"),
        "{state}"
    );
    let mut volumes: Vec<(String, u64)> = Vec::new();

    // The invariant, checked now; returns what GetCapacity offers. The filesystem's free space is read before
    // and after GetCapacity and the larger taken, so that nothing written meanwhile fails it.
    macro_rules! check {
        ($when:expr) => {{
            let free_before = fs.available_bytes();
            let offered = available_in(&mut ctl, POOL).await as u64;
            let free = free_before.max(fs.available_bytes());
            let promised: u64 = volumes.iter().map(|(_, size)| size).sum();
            let written: u64 = volumes
                .iter()
                .map(|(id, size)| {
                    let path = subvolume(&pool_root, id);
                    qgroup(&path, subvolume_id(&path)).referenced.min(*size)
                })
                .sum();
            assert!(
                offered + promised <= free + written,
                "{}: the pool offers {offered} bytes and promised {promised}, but its filesystem has {free} \
                 free and its volumes wrote {written}",
                $when
            );
            if let Some(c) = capacity {
                assert!(offered + promised <= c as u64, "{}: {offered} offered", $when);
            }
            offered
        }};
    }

    let start = check!("at start");
    let mut offered = start;
    assert!(offered >= 4 * SIZE as u64, "the pool offers only {offered} bytes");
    if let Some(c) = capacity {
        assert_eq!(offered, c as u64, "the budget bounds an empty pool");
    }

    // Create: each volume a subvolume whose qgroup limits what it references to its size, rounded up to 4096.
    for (name, requested) in [("a", SIZE), ("b", SIZE - 100)] {
        let vol = create_with(&mut ctl, create_in(POOL, name, requested, vec![snw()])).await;
        assert_eq!(vol.capacity_bytes, SIZE, "{requested} bytes asked for");
        let path = subvolume(&pool_root, &vol.volume_id);
        let id = subvolume_id(&path);
        assert!(id >= 256, "subvolume id {id}");
        let q = qgroup(&path, id);
        assert_eq!(q.max_referenced, Some(SIZE as u64), "{q:?}");
        assert!(q.referenced < 64 * KIB as u64, "a new subvolume references {q:?}");
        volumes.push((vol.volume_id, SIZE as u64));
        let now = check!(format!("after creating {name}"));
        let less = offered as i64 - now as i64;
        match capacity {
            Some(_) => assert_eq!(
                less, SIZE,
                "creating {name}: offered {offered} bytes before, {now} after"
            ),
            // The filesystem's free space may move a little with the new subvolume's metadata.
            None => assert!(
                less.abs_diff(SIZE) <= MIB as u64,
                "creating {name}: offered {offered} bytes before, {now} after"
            ),
        }
        offered = now;
    }
    let (a, b) = (volumes[0].0.clone(), volumes[1].0.clone());
    let (a_path, b_path) = (subvolume(&pool_root, &a), subvolume(&pool_root, &b));
    let (a_sub, b_sub) = (subvolume_id(&a_path), subvolume_id(&b_path));
    assert_ne!(a_sub, b_sub);

    // Stage and publish both: the target shows the subvolume.
    let (a_staging, a_target) = (srv.staging_dir("staging-a"), srv.target_path("pod-a"));
    let (b_staging, b_target) = (srv.staging_dir("staging-b"), srv.target_path("pod-b"));
    stage_and_publish(&mut node, &a, &a_staging, &a_target, snw()).await;
    stage_and_publish(&mut node, &b, &b_staging, &b_target, snw()).await;
    let table = srv.mount_table();
    let at = table.mounts_at(&a_target);
    assert_eq!(at.len(), 1, "{at:?}");
    assert_eq!(at[0].fs_type, "btrfs", "{at:?}");
    assert!(
        at[0].root.ends_with(Path::new("volumes").join(volume_hex(&a))),
        "{at:?}"
    );
    let (a_dir, b_dir) = (srv.in_ns(&a_target), srv.in_ns(&b_target));

    // The neighbour holds data.
    let b_data = pattern(2 * MIB as usize, 7);
    write_synced(&b_dir.join("data"), &b_data);

    // 4 MiB in a: the stats are the volume's size and its qgroup's usage.
    write_synced(&a_dir.join("data"), &pattern(4 * MIB as usize, 1));
    syncfs(&a_dir);
    let r = stats(&mut node, &a, &a_target).await;
    let referenced = qgroup(&a_path, a_sub).referenced;
    let (bytes, _) = usage_rows(&r);
    assert_eq!(bytes.total, SIZE, "{bytes:?}");
    assert_eq!(
        bytes.used as u64, referenced,
        "{bytes:?}: the qgroup references {referenced}"
    );
    assert!(
        (4 * MIB..4 * MIB + 512 * KIB).contains(&bytes.used),
        "4 MiB written: {bytes:?}"
    );
    assert!(
        bytes.available > 0 && bytes.available <= bytes.total - bytes.used,
        "{bytes:?}"
    );
    let cond = r.volume_condition.expect("VOLUME_CONDITION");
    assert!(!cond.abnormal, "{cond:?}");
    // The stats at the staging path are the same volume's.
    let (staged, _) = usage_rows(&stats(&mut node, &a, &a_staging).await);
    assert_eq!(
        (staged.total, staged.used),
        (bytes.total, bytes.used),
        "{staged:?}"
    );
    let now = check!("after a wrote 4 MiB");
    assert!(
        now + 2 * MIB as u64 >= offered,
        "writing into promised space took {} bytes off the offer",
        offered - now
    );

    // Writing past the size fails with EDQUOT, and what a holds stays within its size.
    let err = fill(&a_dir.join("fill"), 2 * SIZE as u64).expect("wrote twice the volume's size into it");
    assert_eq!(
        err.raw_os_error(),
        Some(libc::EDQUOT),
        "writing past the size: {err}"
    );
    syncfs(&a_dir);
    let filled = std::fs::metadata(a_dir.join("fill")).unwrap().len();
    assert!(
        filled + 4 * MIB as u64 <= SIZE as u64,
        "{filled} bytes written next to 4 MiB in a {SIZE}-byte volume"
    );
    assert!(
        filled >= 8 * MIB as u64,
        "only {filled} bytes fit next to 4 MiB in a {SIZE}-byte volume"
    );
    let q = qgroup(&a_path, a_sub);
    assert!(q.referenced <= SIZE as u64, "{q:?}");
    let (bytes, _) = usage_rows(&stats(&mut node, &a, &a_target).await);
    assert!(
        bytes.used <= SIZE && bytes.available <= SIZE - bytes.used,
        "{bytes:?}"
    );
    check!("after a filled up");
    // The neighbour is untouched.
    assert!(
        read_all(&b_dir.join("data")) == b_data,
        "the neighbour's data changed"
    );
    let qb = qgroup(&b_path, b_sub);
    assert!(
        (2 * MIB as u64..2 * MIB as u64 + 512 * KIB as u64).contains(&qb.referenced),
        "{qb:?}"
    );
    assert_eq!(qb.max_referenced, Some(SIZE as u64));

    // What the pool offers does not move while its volumes write or free, is staged across a restart, or is
    // unstaged: each block takes from the filesystem's free space what it adds to what the volumes wrote.
    std::fs::remove_file(a_dir.join("fill")).unwrap();
    syncfs(&a_dir);
    let steady = |now: u64, when: &str| {
        assert!(
            now.abs_diff(offered) <= 2 * MIB as u64,
            "{when}: the pool offers {now} bytes, {offered} after a first wrote"
        );
    };
    steady(check!("after the fill was removed"), "fill removed");
    srv.restart();
    (ctl, node) = (srv.controller().await, srv.node().await);
    steady(check!("after a restart"), "after a restart, staged");
    let a_dir = srv.in_ns(&a_target);
    // Staged across the restart, a is still measured as it writes.
    write_synced(&a_dir.join("more"), &pattern(6 * MIB as usize, 3));
    syncfs(&a_dir);
    steady(check!("after a wrote 6 MiB more"), "6 MiB more after the restart");
    unpublish_and_unstage(&mut node, &a, &a_staging, &a_target).await;
    unpublish_and_unstage(&mut node, &b, &b_staging, &b_target).await;
    steady(check!("after unstage"), "unstaged");
    // Unstaged across a restart: what each references is read again at start-up.
    srv.restart();
    (ctl, node) = (srv.controller().await, srv.node().await);
    steady(check!("after a restart, unstaged"), "after a restart, unstaged");

    // Everything goes; the pool offers what it did at start, about.
    for (id, _) in &volumes {
        delete(&mut ctl, id).await;
    }
    volumes.clear();
    let end = check!("after delete");
    assert!(
        end.abs_diff(start) <= MIB as u64,
        "the pool offered {start} bytes at start, {end} after its volumes were deleted"
    );
    assert!(entries(&pool_root.join("volumes")).is_empty());
    srv.assert_no_mounts();
    drop((ctl, node));
    drop(srv);
}

#[tokio::test]
async fn btrfs_simple_quotas_enforce_sizes_and_report_usage() {
    if !can_run("btrfs_simple_quotas_enforce_sizes_and_report_usage") {
        return;
    }
    enforcement_and_usage(Quotas::Simple, None).await;
}

#[tokio::test]
async fn btrfs_full_qgroups_enforce_sizes_and_report_usage() {
    if !can_run("btrfs_full_qgroups_enforce_sizes_and_report_usage") {
        return;
    }
    enforcement_and_usage(Quotas::Full, Some(256 * MIB)).await;
}

// ---------------------------------------------------------------------------------------------------------
// 2. Deletion leaves no subvolume and no qgroup

/// A volume holding data is unpublished, unstaged and deleted: its subvolume, its qgroup and its record go.
async fn deletion_leaves_nothing(quotas: Quotas) {
    let (fs, pool_root, srv) = start_with_quotas(quotas, "");
    let (mut ctl, mut node) = (srv.controller().await, srv.node().await);
    let mnt = &fs.mount_point;
    let before = loam_sys::btrfs::qgroup_ids(mnt).unwrap();

    let id = create_with(&mut ctl, create_in(POOL, "doomed", SIZE, vec![snw()]))
        .await
        .volume_id;
    let path = subvolume(&pool_root, &id);
    let sub = subvolume_id(&path);
    assert!(loam_sys::btrfs::qgroup_ids(mnt).unwrap().contains(&sub));
    let shown = format!("0/{sub}");
    assert!(
        qgroups_shown(mnt).contains(&shown),
        "btrfs qgroup show lacks {shown}: {:?}",
        qgroups_shown(mnt)
    );
    let record = record_file(&pool_root, &id);
    assert!(record.is_file());

    let (staging, target) = (srv.staging_dir("staging"), srv.target_path("pod"));
    stage_and_publish(&mut node, &id, &staging, &target, snw()).await;
    write_synced(&srv.in_ns(&target).join("data"), &pattern(3 * MIB as usize, 2));
    syncfs(&srv.in_ns(&target));
    assert!(qgroup(&path, sub).referenced >= 3 * MIB as u64);
    unpublish_and_unstage(&mut node, &id, &staging, &target).await;
    delete(&mut ctl, &id).await;

    assert!(!path.exists(), "subvolume {} left behind", path.display());
    assert!(!record.exists(), "record left behind");
    let after = loam_sys::btrfs::qgroup_ids(mnt).unwrap();
    assert!(!after.contains(&sub), "qgroup 0/{sub} left behind: {after:?}");
    assert_eq!(after, before, "qgroups before the volume and after it");
    let shown_now = qgroups_shown(mnt);
    assert!(
        !shown_now.contains(&shown),
        "btrfs qgroup show still lists {shown}: {shown_now:?}"
    );
    assert!(entries(&pool_root.join("volumes")).is_empty());
    assert!(entries(&pool_root.join("records")).is_empty());
    // Deleting again is fine and changes nothing.
    delete(&mut ctl, &id).await;
    assert_eq!(loam_sys::btrfs::qgroup_ids(mnt).unwrap(), before);
    srv.assert_no_mounts();
    drop((ctl, node));
    drop(srv);
}

#[tokio::test]
async fn btrfs_delete_leaves_no_subvolume_and_no_qgroup_with_simple_quotas() {
    if !can_run("btrfs_delete_leaves_no_subvolume_and_no_qgroup_with_simple_quotas") {
        return;
    }
    deletion_leaves_nothing(Quotas::Simple).await;
}

#[tokio::test]
async fn btrfs_delete_leaves_no_subvolume_and_no_qgroup_with_full_qgroups() {
    if !can_run("btrfs_delete_leaves_no_subvolume_and_no_qgroup_with_full_qgroups") {
        return;
    }
    deletion_leaves_nothing(Quotas::FullByHand).await;
}

// ---------------------------------------------------------------------------------------------------------
// 3. A restart, and a limit changed by hand

#[tokio::test]
async fn btrfs_volume_survives_restart_and_a_limit_changed_by_hand_is_abnormal_and_kept() {
    if !can_run("btrfs_volume_survives_restart_and_a_limit_changed_by_hand_is_abnormal_and_kept") {
        return;
    }
    let (fs, pool_root, mut srv) = start_pool();
    let (mut ctl, mut node) = (srv.controller().await, srv.node().await);
    let id = create_with(&mut ctl, create_in(POOL, "durable", SIZE, vec![snw()]))
        .await
        .volume_id;
    let path = subvolume(&pool_root, &id);
    let sub = subvolume_id(&path);
    let (staging, target) = (srv.staging_dir("staging"), srv.target_path("pod"));
    stage_and_publish(&mut node, &id, &staging, &target, snw()).await;
    let data = pattern(MIB as usize, 4);
    write_synced(&srv.in_ns(&target).join("data"), &data);
    syncfs(&srv.in_ns(&target));
    let mounts = srv.mounts_under_root();
    assert_eq!(mounts.len(), 2, "{mounts:?}");

    // Restart: the volume is there with its size, its stats work, and staging and publishing again add nothing.
    drop((ctl, node));
    srv.restart();
    let (mut ctl, mut node) = (srv.controller().await, srv.node().await);
    let listed = ok(ctl.list_volumes(csi::ListVolumesRequest::default()).await);
    let vols: Vec<(String, i64)> = listed
        .entries
        .iter()
        .filter_map(|e| e.volume.as_ref())
        .map(|v| (v.volume_id.clone(), v.capacity_bytes))
        .collect();
    assert_eq!(vols, vec![(id.clone(), SIZE)]);
    let r = stats(&mut node, &id, &target).await;
    let (bytes, _) = usage_rows(&r);
    assert_eq!(bytes.total, SIZE, "{bytes:?}");
    assert!(
        (MIB..MIB + 512 * KIB).contains(&bytes.used),
        "1 MiB written: {bytes:?}"
    );
    assert!(!r.volume_condition.expect("VOLUME_CONDITION").abnormal);
    assert!(!controller_condition(&mut ctl, &id).await.abnormal);
    ok(node.node_stage_volume(stage_req(&id, &staging, snw())).await);
    ok(node
        .node_publish_volume(publish_req(&id, &staging, &target, snw(), false))
        .await);
    assert_eq!(
        srv.mounts_under_root(),
        mounts,
        "staging and publishing again added mounts"
    );
    assert!(
        read_all(&srv.in_ns(&target).join("data")) == data,
        "data lost across the restart"
    );
    assert_eq!(qgroup(&path, sub).max_referenced, Some(SIZE as u64));

    // Someone sets the limit to 1 MiB by hand: the volume is abnormal, and says why. (Through the pool's
    // directory: the ioctl's transaction is charged to the subvolume it is called in, which is over 1 MiB.)
    let volumes = pool_root.join("volumes");
    loam_sys::btrfs::set_limit(&volumes, sub, MIB as u64).unwrap();
    assert_eq!(qgroup(&path, sub).max_referenced, Some(MIB as u64));
    let says_limit_differs =
        |m: &str| m.contains("limit") && m.contains(&MIB.to_string()) && m.contains(&SIZE.to_string());
    let cond = controller_condition(&mut ctl, &id).await;
    assert!(cond.abnormal && says_limit_differs(&cond.message), "{cond:?}");
    let r = stats(&mut node, &id, &target).await;
    let cond = r.volume_condition.clone().expect("VOLUME_CONDITION");
    assert!(cond.abnormal && says_limit_differs(&cond.message), "{cond:?}");
    assert_eq!(usage_rows(&r).0.total, SIZE, "{r:?}");

    // loam does not change it back, neither now nor at a restart; it warns about it when it starts.
    assert_eq!(qgroup(&path, sub).max_referenced, Some(MIB as u64));
    drop((ctl, node));
    srv.restart();
    let (mut ctl, mut node) = (srv.controller().await, srv.node().await);
    assert_eq!(
        qgroup(&path, sub).max_referenced,
        Some(MIB as u64),
        "loam changed a limit set by hand"
    );
    let log = srv.log();
    assert!(
        log.lines()
            .any(|l| l.contains("volume is abnormal") && l.contains(&id) && l.contains("limit")),
        "no warning about the changed limit at start-up:\n{log}"
    );
    let cond = controller_condition(&mut ctl, &id).await;
    assert!(cond.abnormal && says_limit_differs(&cond.message), "{cond:?}");
    let cond = stats(&mut node, &id, &target)
        .await
        .volume_condition
        .expect("VOLUME_CONDITION");
    assert!(cond.abnormal && says_limit_differs(&cond.message), "{cond:?}");

    // Set right again by hand, the volume is normal again.
    loam_sys::btrfs::set_limit(&volumes, sub, SIZE as u64).unwrap();
    assert!(!controller_condition(&mut ctl, &id).await.abnormal);
    let cond = stats(&mut node, &id, &target)
        .await
        .volume_condition
        .expect("VOLUME_CONDITION");
    assert!(!cond.abnormal, "{cond:?}");

    unpublish_and_unstage(&mut node, &id, &staging, &target).await;
    delete(&mut ctl, &id).await;
    assert!(!path.exists());
    assert!(
        !loam_sys::btrfs::qgroup_ids(&fs.mount_point)
            .unwrap()
            .contains(&sub)
    );
    srv.assert_no_mounts();
    drop((ctl, node));
    drop(srv);
}

/// ListVolumes checks a page's subvolumes in one batch; what it says of each must be what ControllerGetVolume,
/// which checks one volume on its own, says.
#[tokio::test]
async fn btrfs_list_volumes_pages_say_what_each_volume_checked_alone_says() {
    if !can_run("btrfs_list_volumes_pages_say_what_each_volume_checked_alone_says") {
        return;
    }
    let (_fs, pool_root, srv) = start_pool();
    let mut ctl = srv.controller().await;
    let mut ids = Vec::new();
    for name in ["healthy", "gone", "plain", "limit", "unlimited"] {
        let id = create_with(&mut ctl, create_in(POOL, name, SIZE, vec![snw()]))
            .await
            .volume_id;
        ids.push((name, id));
    }
    let volumes = pool_root.join("volumes");
    let path = |name: &str| subvolume(&pool_root, &ids.iter().find(|(n, _)| *n == name).unwrap().1);
    // By hand: one subvolume deleted, one replaced by a plain directory, one limit changed, one removed.
    let stem = |name: &str| path(name).file_name().unwrap().to_str().unwrap().to_owned();
    loam_sys::btrfs::delete_subvolume(&volumes, &stem("gone")).unwrap();
    loam_sys::btrfs::delete_subvolume(&volumes, &stem("plain")).unwrap();
    std::fs::create_dir(path("plain")).unwrap();
    loam_sys::btrfs::set_limit(&volumes, subvolume_id(&path("limit")), MIB as u64).unwrap();
    loam_sys::btrfs::set_limit(&volumes, subvolume_id(&path("unlimited")), u64::MAX).unwrap();

    let want = |name: &str, m: &str| match name {
        "healthy" => m == "volume is healthy",
        "gone" => m.contains("missing"),
        "plain" => m.contains("is not a subvolume"),
        "limit" => m.contains("quota limit") && m.contains(&MIB.to_string()) && m.contains(&SIZE.to_string()),
        "unlimited" => m.contains("quota limit") && m.contains("is none"),
        _ => unreachable!(),
    };
    for max_entries in [0, 2] {
        let entries: Vec<_> = list_entry_pages(&mut ctl, max_entries)
            .await
            .into_iter()
            .flatten()
            .collect();
        assert_eq!(entries.len(), ids.len(), "max_entries {max_entries}: {entries:?}");
        for e in entries {
            let id = e.volume.expect("volume").volume_id;
            let (name, _) = ids.iter().find(|(_, i)| *i == id).unwrap();
            let listed = e
                .status
                .and_then(|s| s.volume_condition)
                .expect("VOLUME_CONDITION");
            assert_eq!(listed.abnormal, *name != "healthy", "{name}: {listed:?}");
            assert!(want(name, &listed.message), "{name}: {listed:?}");
            assert_eq!(
                listed,
                controller_condition(&mut ctl, &id).await,
                "{name}: ListVolumes and ControllerGetVolume disagree"
            );
        }
    }

    // Put right by hand, all are healthy again in the listing.
    std::fs::remove_dir(path("plain")).unwrap();
    for name in ["gone", "plain"] {
        loam_sys::btrfs::create_subvolume(&volumes, &stem(name)).unwrap();
        loam_sys::btrfs::set_limit(&volumes, subvolume_id(&path(name)), SIZE as u64).unwrap();
    }
    for name in ["limit", "unlimited"] {
        loam_sys::btrfs::set_limit(&volumes, subvolume_id(&path(name)), SIZE as u64).unwrap();
    }
    let listed = ok(ctl.list_volumes(csi::ListVolumesRequest::default()).await);
    assert_eq!(listed.entries.len(), ids.len());
    for e in listed.entries {
        let cond = e
            .status
            .and_then(|s| s.volume_condition)
            .expect("VOLUME_CONDITION");
        assert!(!cond.abnormal, "{cond:?}");
    }
    for (_, id) in &ids {
        delete(&mut ctl, id).await;
    }
    srv.assert_no_mounts();
    drop(ctl);
    drop(srv);
}

// ---------------------------------------------------------------------------------------------------------
// 4. A btrfs pool on another filesystem

#[tokio::test]
async fn btrfs_pool_not_on_btrfs_is_degraded_and_untouched() {
    if !can_run("btrfs_pool_not_on_btrfs_is_degraded_and_untouched") {
        return;
    }
    let ext4 = PoolFs::new(64 * MIB as u64);
    let fs = PoolFs::btrfs(FS_BYTES);
    // `wrong` is the ext4 disk's root; `wrong-sub` a directory not made yet on it.
    let wrong = ext4.mount_point.clone();
    let wrong_sub = wrong.join("loam");
    let ext4_entries = entries(&wrong);
    let (pool_root, good) = btrfs_pool(&fs, "");
    let config = format!(
        "default_pool = \"{POOL}\"\n{}{}{good}",
        pool_toml("wrong", "btrfs", &wrong, ""),
        pool_toml("wrong-sub", "btrfs", &wrong_sub, "capacity = \"1Gi\""),
    );
    let srv = Server::start_with_config(NODE, |_| config, &[]);
    let mut ctl = srv.controller().await;

    for (pool, path) in [("wrong", &wrong), ("wrong-sub", &wrong_sub)] {
        let state = pool_state(&srv, pool).await;
        assert!(
            state.starts_with("degraded:") && state.contains("is not on a btrfs filesystem"),
            "{pool}: {state}"
        );
        assert!(
            state.contains(&s(path)),
            "{pool}: does not name {}: {state}",
            path.display()
        );
        assert_eq!(available_in(&mut ctl, pool).await, 0, "{pool}");
        let st = expect_code(
            ctl.create_volume(create_in(pool, "nope", SIZE, vec![snw()]))
                .await,
            Code::ResourceExhausted,
        );
        assert!(
            st.message().contains(pool) && st.message().contains("not on a btrfs filesystem"),
            "{pool}: {}",
            st.message()
        );
    }
    let probe = ok(srv.identity().await.probe(csi::ProbeRequest {}).await);
    assert_eq!(probe.ready, Some(true));
    // Nothing was written at the pool paths, neither as the server sees them nor on the host.
    for dir in [wrong.clone(), srv.in_ns(&wrong)] {
        let now = entries(&dir);
        assert_eq!(now, ext4_entries, "loam wrote to {}", dir.display());
        assert!(!dir.join("loam-pool.json").exists() && !dir.join("loam.lock").exists());
    }
    assert!(
        !wrong_sub.exists() && !srv.in_ns(&wrong_sub).exists(),
        "loam created {}",
        wrong_sub.display()
    );
    let log = srv.log();
    assert!(
        log.lines()
            .any(|l| l.contains("pool degraded") && l.contains("wrong") && l.contains("not on a btrfs")),
        "the log does not say the pool is degraded:\n{log}"
    );

    // The healthy pool works.
    let state = pool_state(&srv, POOL).await;
    assert!(state.starts_with("ready:"), "{state}");
    assert!(available_in(&mut ctl, POOL).await >= SIZE);
    let id = create(&mut ctl, "fine", SIZE).await.volume_id;
    let path = subvolume(&pool_root, &id);
    let sub = subvolume_id(&path);
    assert_eq!(qgroup(&path, sub).max_referenced, Some(SIZE as u64));
    delete(&mut ctl, &id).await;
    assert!(!path.exists());
    drop(ctl);
    drop(srv);
}

// ---------------------------------------------------------------------------------------------------------
// 5. Capabilities a btrfs pool refuses

#[tokio::test]
async fn btrfs_pool_refuses_block_and_fs_types() {
    if !can_run("btrfs_pool_refuses_block_and_fs_types") {
        return;
    }
    let (_fs, pool_root, srv) = start_pool();
    let mut ctl = srv.controller().await;
    let snw_mode = Mode::SingleNodeWriter;

    let st = expect_code(
        ctl.create_volume(create_in(POOL, "raw", SIZE, vec![block_cap(snw_mode)]))
            .await,
        Code::InvalidArgument,
    );
    assert!(
        st.message().contains("kind image") && st.message().contains("block"),
        "{}",
        st.message()
    );
    for fs_type in ["ext4", "btrfs"] {
        let st = expect_code(
            ctl.create_volume(create_in(
                POOL,
                fs_type,
                SIZE,
                vec![mount_cap_fs(snw_mode, fs_type, &[])],
            ))
            .await,
            Code::InvalidArgument,
        );
        assert!(st.message().contains(fs_type), "{fs_type}: {}", st.message());
    }
    // Nothing was made for the refused requests.
    assert!(entries(&pool_root.join("volumes")).is_empty());
    assert!(entries(&pool_root.join("records")).is_empty());

    // ValidateVolumeCapabilities: what a subvolume cannot serve gets no confirmation, and a reason.
    let id = create(&mut ctl, "fs", SIZE).await.volume_id;
    let validate = |cap: csi::VolumeCapability| csi::ValidateVolumeCapabilitiesRequest {
        volume_id: id.clone(),
        volume_capabilities: vec![cap],
        ..Default::default()
    };
    let r = ok(ctl.validate_volume_capabilities(validate(snw())).await);
    assert!(r.confirmed.is_some(), "{r:?}");
    for cap in [block_cap(snw_mode), mount_cap_fs(snw_mode, "ext4", &[])] {
        let r = ok(ctl.validate_volume_capabilities(validate(cap.clone())).await);
        assert!(r.confirmed.is_none(), "{cap:?} confirmed: {r:?}");
        assert!(!r.message.is_empty(), "{cap:?}: no message");
    }

    // NodeStage refuses them too, and mounts nothing.
    let mut node = srv.node().await;
    let staging = srv.staging_dir("staging");
    for cap in [block_cap(snw_mode), mount_cap_fs(snw_mode, "ext4", &[])] {
        let st = expect_code(
            node.node_stage_volume(stage_req(&id, &staging, cap.clone()))
                .await,
            Code::FailedPrecondition,
        );
        assert!(st.message().contains("btrfs"), "{cap:?}: {}", st.message());
        assert!(
            srv.mounts_under_root().is_empty(),
            "{:?}",
            srv.mounts_under_root()
        );
        assert!(entries(&srv.in_ns(&staging)).is_empty());
    }
    delete(&mut ctl, &id).await;
    assert!(entries(&pool_root.join("volumes")).is_empty());
    drop((ctl, node));
    drop(srv);
}

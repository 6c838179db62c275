//! Pools that cannot lie: identity markers, degraded pools that fail alone, one server per data dir and per
//! pool, and capacity that never offers space already promised. Real directories in a temp dir; the fake host
//! stands in for statfs where a test needs a filesystem of a chosen fullness.

mod common;

use std::{collections::BTreeMap, sync::Arc};

use common::{MIB, Setup, available, engine_config, in_pool};
use loam_engine::{Engine, EngineConfig, Error, pool::MARKER_FILE, spec::PoolSpec, types::CreateRequest};
use loam_sys::statfs::FsStats;

/// [`engine_config`] on the real host.
fn config(root: &std::path::Path, pools: Vec<PoolSpec>) -> EngineConfig {
    engine_config(root, pools, Arc::new(loam_sys::host::RealHost))
}

/// [`common::req`] in `pool`.
fn req(name: &str, size: u64, pool: &str) -> CreateRequest {
    CreateRequest {
        parameters: in_pool(pool),
        ..common::req(name, size)
    }
}

impl Setup {
    /// Two pools: `nvme` on a "disk" directory that tests take away, and `spare` that always stays.
    fn specs(&self) -> Vec<PoolSpec> {
        vec![
            PoolSpec::dir("nvme", self.root.join("disk/loam")).with_capacity(Some(100 * MIB)),
            PoolSpec::image("spare", self.root.join("spare")).with_capacity(Some(100 * MIB)),
        ]
    }

    /// The engine with [`Setup::specs`], on the real host.
    fn open(&self) -> Engine {
        Engine::open(config(&self.root, self.specs())).unwrap()
    }
}

fn degraded(e: &Engine, pool: &str) -> Option<String> {
    e.pool_status()
        .into_iter()
        .find(|p| p.name == pool)
        .unwrap()
        .degraded
}

/// What a pool whose disk is gone must do: offer nothing, refuse creates with RESOURCE_EXHAUSTED naming itself,
/// never answer OK to deleting its volumes, report them abnormal; and the other pool goes on.
fn assert_fails_alone(e: &Engine, id: &str, why: &str) {
    let reason = degraded(e, "nvme").expect("pool nvme is degraded");
    assert!(reason.contains("pool nvme") && reason.contains(why), "{reason}");
    assert_eq!(
        e.capacity(&in_pool("nvme"), &[], None).unwrap().available_bytes,
        0
    );
    match e.create_volume(&req("new", MIB, "nvme")) {
        Err(Error::Exhausted(m)) => assert!(m.contains("pool nvme") && m.contains(why), "{m}"),
        other => panic!("{other:?}"),
    }
    match e.delete_volume(id) {
        Err(Error::PoolUnusable { pool, reason }) => {
            assert!(pool == "nvme" && reason.contains(why), "{reason}")
        }
        other => panic!("delete of a volume on a missing disk must never be OK: {other:?}"),
    }
    let v = e.get_volume(id).unwrap();
    assert!(v.abnormal.as_deref().is_some_and(|m| m.contains(why)), "{v:?}");
    assert!(degraded(e, "spare").is_none());
    let spare = e.create_volume(&req("spare-vol", MIB, "spare")).unwrap();
    e.delete_volume(&spare.id).unwrap();
}

#[test]
fn a_missing_disk_degrades_its_pool_and_nothing_is_created_in_its_place() {
    let d = Setup::new();
    let e = d.open();
    let v = e.create_volume(&req("data", 10 * MIB, "nvme")).unwrap();
    drop(e);
    // The disk is not mounted after a reboot: its directory is gone.
    std::fs::rename(d.root.join("disk"), d.root.join("disk-elsewhere")).unwrap();
    let e = d.open();
    assert_fails_alone(&e, &v.id, "is the disk mounted?");
    assert!(
        !d.root.join("disk").exists(),
        "the pool path must not be recreated"
    );
    drop(e);
    // The disk comes back: after a restart the pool is whole and its volume deletes.
    std::fs::rename(d.root.join("disk-elsewhere"), d.root.join("disk")).unwrap();
    let e = d.open();
    assert!(degraded(&e, "nvme").is_none());
    e.delete_volume(&v.id).unwrap();
}

#[test]
fn an_empty_directory_where_the_disk_was_is_not_the_pool() {
    let d = Setup::new();
    let e = d.open();
    let v = e.create_volume(&req("data", 10 * MIB, "nvme")).unwrap();
    drop(e);
    // The mount point is there, empty, on the root disk.
    std::fs::rename(d.root.join("disk"), d.root.join("disk-elsewhere")).unwrap();
    std::fs::create_dir_all(d.root.join("disk/loam")).unwrap();
    let e = d.open();
    assert_fails_alone(&e, &v.id, "marker loam-pool.json missing");
    assert_eq!(
        std::fs::read_dir(d.root.join("disk/loam")).unwrap().count(),
        0,
        "nothing is written to the wrong disk"
    );
}

#[test]
fn another_pools_disk_or_another_disk_of_the_same_name_is_not_the_pool() {
    let d = Setup::new();
    let e = d.open();
    let v = e.create_volume(&req("data", 10 * MIB, "nvme")).unwrap();
    drop(e);
    let marker = d.root.join("disk/loam").join(MARKER_FILE);
    let original = std::fs::read_to_string(&marker).unwrap();
    // Same name, another identity: a different disk with a pool of the same name.
    let mut m: serde_json::Value = serde_json::from_str(&original).unwrap();
    m["uuid"] = "00000000-0000-4000-8000-000000000000".into();
    std::fs::write(&marker, m.to_string()).unwrap();
    assert_fails_alone(&d.open(), &v.id, "a different disk?");
    // Another pool's disk.
    m["name"] = "sata".into();
    std::fs::write(&marker, m.to_string()).unwrap();
    assert_fails_alone(&d.open(), &v.id, "holds pool \"sata\"");
    std::fs::write(&marker, original).unwrap();
    assert!(degraded(&d.open(), "nvme").is_none());
}

#[test]
fn a_pool_the_node_has_not_seen_is_adopted_by_its_marker() {
    // A pool moved from another node (or a data dir made anew) describes itself.
    let d = Setup::new();
    let e = d.open();
    let v = e.create_volume(&req("data", 10 * MIB, "nvme")).unwrap();
    drop(e);
    std::fs::remove_dir_all(d.root.join("node")).unwrap();
    let e = d.open();
    assert!(degraded(&e, "nvme").is_none());
    assert_eq!(e.get_volume(&v.id).unwrap().capacity_bytes, 10 * MIB);
}

#[test]
fn one_server_per_data_dir_and_per_pool() {
    let d = Setup::new();
    let first = d.open();
    match Engine::open(config(&d.root, d.specs())) {
        Err(Error::Precondition(m)) => {
            assert!(m.contains(&format!("process {}", std::process::id())), "{m}")
        }
        other => panic!("a second server on one data dir must fail: {other:?}"),
    }
    // Another data dir, same pool path.
    let other = d.root.join("other");
    match Engine::open(config(&other, d.specs())) {
        Err(Error::PoolUnusable { pool, reason }) => {
            assert_eq!(pool, "nvme");
            assert!(reason.contains("another loam"), "{reason}");
        }
        other => panic!("a second server on one pool must fail: {other:?}"),
    }
    drop(first);
    d.open();
}

#[test]
fn a_pool_that_cannot_be_recovered_degrades_alone() {
    let d = Setup::new();
    let e = d.open();
    e.create_volume(&req("data", 10 * MIB, "nvme")).unwrap();
    drop(e);
    // Records unreadable as a directory: recovery of that pool fails, the node starts.
    let records = d.root.join("disk/loam/records");
    std::fs::rename(&records, d.root.join("records-away")).unwrap();
    std::fs::write(&records, b"not a directory").unwrap();
    let e = d.open();
    assert!(degraded(&e, "nvme").is_some());
    assert!(degraded(&e, "spare").is_none());
}

#[test]
fn promised_space_not_yet_written_is_never_offered_twice() {
    // A 200 MiB filesystem with 48 MiB free, shared with other files: four 40 MiB dir volumes used to be accepted.
    let d = Setup::new();
    let cfg = d.config(vec![PoolSpec::dir("nvme", d.root.join("disk/loam"))]);
    let fs = |free: u64| FsStats {
        block_size: 4096,
        total_bytes: 200 * MIB,
        free_bytes: free,
        available_bytes: free,
        total_inodes: 1000,
        free_inodes: 900,
        read_only: false,
    };
    d.host.set_statfs(&d.root.join("disk/loam"), fs(48 * MIB));
    let e = Engine::open(cfg).unwrap();
    assert_eq!(available(&e), 48 * MIB);
    e.create_volume(&req("a", 40 * MIB, "nvme")).unwrap();
    // Nothing written yet: the filesystem still says 48 free, but 40 of them are promised. (The volume's own
    // directory block counts as written, and this fake filesystem does not shrink for it.)
    const DIR_BLOCK: u64 = 4096;
    assert!(available(&e) <= 8 * MIB + DIR_BLOCK, "{}", available(&e));
    for name in ["b", "c", "d"] {
        match e.create_volume(&req(name, 40 * MIB, "nvme")) {
            Err(Error::Exhausted(m)) => assert!(m.contains("promised"), "{m}"),
            other => panic!("overcommit: {other:?}"),
        }
    }
    let rep = e.capacity(&BTreeMap::new(), &[], None).unwrap();
    assert!(rep.available_bytes + 40 * MIB <= 48 * MIB + DIR_BLOCK);
    assert_eq!(rep.maximum_volume_bytes, rep.available_bytes);
}

//! Engine behaviour on a real directory pool in a temp dir: idempotency, capacity accounting under
//! concurrency, and start-up recovery from interrupted operations and corrupt records. No root needed.

mod common;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Arc,
};

use common::{MIB, available, engine_config, req};
use loam_engine::{
    Engine, EngineConfig, Error,
    id::VolumeId,
    record::{VolumeRecord, VolumeState},
    spec::PoolSpec,
};

/// [`engine_config`] of one dir pool `default` of `capacity` bytes in `dir`, on the real host.
fn config(dir: &Path, capacity: u64) -> EngineConfig {
    engine_config(
        dir,
        vec![PoolSpec::dir("default", dir.join("pools/default")).with_capacity(Some(capacity))],
        Arc::new(loam_sys::host::RealHost),
    )
}

#[test]
fn create_is_idempotent_by_name_and_survives_reopen() {
    let d = tempfile::tempdir().unwrap();
    let e = Engine::open(config(d.path(), 100 * MIB)).unwrap();
    let v = e.create_volume(&req("pvc-1", 10 * MIB)).unwrap();
    assert_eq!(e.create_volume(&req("pvc-1", 10 * MIB)).unwrap(), v);
    assert!(matches!(
        e.create_volume(&req("pvc-1", 20 * MIB)),
        Err(Error::NameConflict { .. })
    ));
    assert_eq!(available(&e), 90 * MIB);
    drop(e);
    let e = Engine::open(config(d.path(), 100 * MIB)).unwrap();
    assert_eq!(available(&e), 90 * MIB, "reservations come back from the records");
    assert_eq!(e.create_volume(&req("pvc-1", 10 * MIB)).unwrap().id, v.id);
    e.delete_volume(&v.id).unwrap();
    assert_eq!(available(&e), 100 * MIB);
    e.delete_volume(&v.id).unwrap();
}

#[test]
fn concurrent_creates_never_overcommit() {
    let d = tempfile::tempdir().unwrap();
    let e = Arc::new(Engine::open(config(d.path(), 50 * MIB)).unwrap());
    let handles: Vec<_> = (0..16)
        .map(|i| {
            let e = e.clone();
            std::thread::spawn(move || e.create_volume(&req(&format!("pvc-{i}"), 7 * MIB)))
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let made = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(made, 7, "50 MiB holds exactly seven 7 MiB volumes");
    for r in results.iter().filter_map(|r| r.as_ref().err()) {
        assert!(matches!(r, Error::Exhausted(_)), "{r}");
    }
    assert_eq!(available(&e), MIB);
    assert_eq!(e.list_volumes("", 0).unwrap().0.len(), 7);
}

#[test]
fn same_name_in_flight_is_busy_not_duplicated() {
    let d = tempfile::tempdir().unwrap();
    let e = Arc::new(Engine::open(config(d.path(), 100 * MIB)).unwrap());
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let e = e.clone();
            std::thread::spawn(move || e.create_volume(&req("same", MIB)))
        })
        .collect();
    let mut ids = std::collections::BTreeSet::new();
    for h in handles {
        match h.join().unwrap() {
            Ok(v) => {
                ids.insert(v.id);
            }
            Err(Error::Busy(_)) => {}
            Err(other) => panic!("unexpected {other}"),
        }
    }
    assert_eq!(ids.len(), 1);
    assert_eq!(available(&e), 99 * MIB);
}

#[test]
fn recovery_rolls_back_creates_finishes_deletes_and_quarantines_corrupt_records() {
    let d = tempfile::tempdir().unwrap();
    let e = Engine::open(config(d.path(), 100 * MIB)).unwrap();
    let keep = e.create_volume(&req("keep", MIB)).unwrap();
    let half_made = e.create_volume(&req("half-made", MIB)).unwrap();
    let half_gone = e.create_volume(&req("half-gone", MIB)).unwrap();
    let corrupt = e.create_volume(&req("corrupt", MIB)).unwrap();
    drop(e);

    let pool = d.path().join("pools/default");
    let rec_path = |id: &str| {
        pool.join("records")
            .join(format!("{}.json", VolumeId::parse(id).unwrap().file_stem()))
    };
    let set_state = |id: &str, state: VolumeState| {
        let mut r: VolumeRecord = serde_json::from_slice(&std::fs::read(rec_path(id)).unwrap()).unwrap();
        r.state = state;
        std::fs::write(rec_path(id), serde_json::to_vec(&r).unwrap()).unwrap();
    };
    set_state(&half_made.id, VolumeState::Creating);
    set_state(&half_gone.id, VolumeState::Deleting);
    std::fs::write(rec_path(&corrupt.id), b"{ truncated").unwrap();

    let e = Engine::open(config(d.path(), 100 * MIB)).unwrap();
    let ids: Vec<String> = e
        .list_volumes("", 0)
        .unwrap()
        .0
        .into_iter()
        .map(|v| v.id)
        .collect();
    assert_eq!(ids, vec![keep.id.clone()]);
    for gone in [&half_made, &half_gone] {
        assert!(!rec_path(&gone.id).exists());
        let stem = VolumeId::parse(&gone.id).unwrap().file_stem();
        assert!(!pool.join("volumes").join(stem).exists());
    }
    // The corrupt one is held back, by itself, with its data untouched.
    assert!(matches!(
        e.get_volume(&corrupt.id),
        Err(Error::Quarantined { .. })
    ));
    assert!(matches!(
        e.delete_volume(&corrupt.id),
        Err(Error::Quarantined { .. })
    ));
    assert!(matches!(
        e.create_volume(&req("corrupt", MIB)),
        Err(Error::Quarantined { .. })
    ));
    assert!(
        pool.join("volumes")
            .join(VolumeId::parse(&corrupt.id).unwrap().file_stem())
            .exists()
    );
    assert!(e.get_volume(&keep.id).is_ok());
    assert!(
        e.pool_status()[0].degraded.is_none(),
        "a quarantined volume does not degrade its pool"
    );
}

#[test]
fn deletion_never_follows_a_symlink_out_of_the_pool() {
    let d = tempfile::tempdir().unwrap();
    let outside = d.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("precious"), b"keep").unwrap();
    let e = Engine::open(config(d.path(), 100 * MIB)).unwrap();
    let v = e.create_volume(&req("v", MIB)).unwrap();
    let vol_dir = d
        .path()
        .join("pools/default/volumes")
        .join(VolumeId::parse(&v.id).unwrap().file_stem());
    std::os::unix::fs::symlink(&outside, vol_dir.join("escape")).unwrap();
    std::fs::write(vol_dir.join("data"), b"x").unwrap();
    e.delete_volume(&v.id).unwrap();
    assert!(!vol_dir.exists());
    assert_eq!(std::fs::read(outside.join("precious")).unwrap(), b"keep");
}

#[test]
fn foreign_and_malformed_ids() {
    let d = tempfile::tempdir().unwrap();
    let e = Engine::open(config(d.path(), 100 * MIB)).unwrap();
    let foreign = "node-b_default_0123456789abcdef0123456789abcdef";
    match e.delete_volume(foreign) {
        Err(Error::ForeignVolume { owner, .. }) => assert_eq!(owner, "node-b"),
        other => panic!("{other:?}"),
    }
    assert!(
        e.delete_volume("../../etc").is_ok(),
        "a malformed ID names nothing here"
    );
    assert!(matches!(
        e.get_volume("../../etc"),
        Err(Error::VolumeNotFound { .. })
    ));
}

#[test]
fn parameters_and_topology() {
    let d = tempfile::tempdir().unwrap();
    let e = Engine::open(config(d.path(), 100 * MIB)).unwrap();
    let mut r = req("p", MIB);
    r.parameters.insert("bogus".into(), "1".into());
    match e.create_volume(&r) {
        Err(Error::Invalid { reason, .. }) => {
            assert!(reason.contains("bogus") && reason.contains("pool"))
        }
        other => panic!("{other:?}"),
    }
    let mut r = req("p", MIB);
    r.parameters
        .insert("csi.storage.k8s.io/pvc/name".into(), "x".into());
    r.parameters.insert("pool".into(), "nope".into());
    match e.create_volume(&r) {
        Err(Error::Invalid { reason, .. }) => assert!(reason.contains("default"), "{reason}"),
        other => panic!("{other:?}"),
    }
    let mut r = req("p", MIB);
    r.requisite = vec![BTreeMap::from([(
        "loam.csi/node".to_owned(),
        "node-b".to_owned(),
    )])];
    assert!(matches!(e.create_volume(&r), Err(Error::Exhausted(_))));
    assert!(matches!(
        e.create_volume(&req("big", 101 * MIB)),
        Err(Error::OutOfRange(_))
    ));
    let other = BTreeMap::from([("loam.csi/node".to_owned(), "node-b".to_owned())]);
    assert_eq!(
        e.capacity(&BTreeMap::new(), &[], Some(&other))
            .unwrap()
            .available_bytes,
        0
    );
    let mine = e.topology().clone();
    assert_eq!(
        e.capacity(&BTreeMap::new(), &[], Some(&mine))
            .unwrap()
            .available_bytes,
        100 * MIB
    );
}

#[test]
fn node_paths_the_co_should_have_made_are_failed_precondition() {
    if !loam_sys::testutil::require_root("node_paths_the_co_should_have_made_are_failed_precondition") {
        return;
    }
    // This thread's own mount namespace: mounts made here vanish with it.
    loam_sys::testutil::enter_private_mount_namespace().unwrap();
    use loam_engine::types::{PublishRequest, StageRequest};
    let d = tempfile::tempdir().unwrap();
    let root = d.path().canonicalize().unwrap();
    let e = Engine::open(config(&root, 100 * MIB)).unwrap();
    let v = e.create_volume(&req("v", MIB)).unwrap();
    let cap = req("v", MIB).capabilities[0].clone();
    let stage = |path: &Path| StageRequest {
        volume_id: v.id.clone(),
        staging_path: path.to_owned(),
        capability: cap.clone(),
    };
    let missing = root.join("no-such-staging");
    match e.stage(&stage(&missing)) {
        Err(Error::Precondition(m)) => assert!(m.contains("no-such-staging"), "{m}"),
        other => panic!("{other:?}"),
    }
    let staging = root.join("staging");
    std::fs::create_dir(&staging).unwrap();
    e.stage(&stage(&staging)).unwrap();
    let publish = |target: PathBuf| PublishRequest {
        volume_id: v.id.clone(),
        staging_path: staging.clone(),
        target_path: target,
        capability: cap.clone(),
        read_only: false,
    };
    let file = root.join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let link = root.join("a-link");
    std::os::unix::fs::symlink(&staging, &link).unwrap();
    for target in [root.join("no-parent/mount"), file.clone(), link.clone()] {
        match e.publish(&publish(target.clone())) {
            Err(Error::Precondition(m)) => assert!(m.contains(target.to_str().unwrap()), "{m}"),
            other => panic!("{target:?}: {other:?}"),
        }
    }
    assert_eq!(std::fs::read(&file).unwrap(), b"x", "the file is left alone");
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
    e.unstage(&v.id, &staging).unwrap();
    e.delete_volume(&v.id).unwrap();
}

#[test]
fn capacity_never_promises_more_than_the_filesystem_has_free() {
    if !loam_sys::testutil::require_root("capacity_never_promises_more_than_the_filesystem_has_free") {
        return;
    }
    loam_sys::testutil::enter_private_mount_namespace().unwrap();
    let d = tempfile::tempdir().unwrap();
    let small = d.path().canonicalize().unwrap().join("small");
    std::fs::create_dir(&small).unwrap();
    rustix::mount::mount(
        "tmpfs",
        &small,
        "tmpfs",
        rustix::mount::MountFlags::empty(),
        c"size=64m",
    )
    .unwrap();
    let mut cfg = config(d.path(), 0);
    cfg.pools[0] = PoolSpec::dir("default", small.join("pool"));
    let e = Engine::open(cfg).unwrap();
    let total = e.pools().next().unwrap().total_bytes;
    assert_eq!(total, 64 * MIB, "an unset capacity is the filesystem's size");
    assert!(available(&e) > 60 * MIB);
    // Something else fills 40 MiB of the disk: loam offers only what is left.
    std::fs::write(small.join("other-data"), vec![1u8; 40 * MIB as usize]).unwrap();
    let left = available(&e);
    assert!(left <= 24 * MIB && left > 20 * MIB, "{left}");
    let rep = e.capacity(&BTreeMap::new(), &[], None).unwrap();
    assert_eq!(rep.maximum_volume_bytes, rep.available_bytes);
    match e.create_volume(&req("too-big-for-the-disk", 30 * MIB)) {
        Err(Error::Exhausted(m)) => assert!(m.contains("filesystem"), "{m}"),
        other => panic!("{other:?}"),
    }
    let v = e.create_volume(&req("fits", 10 * MIB)).unwrap();
    e.delete_volume(&v.id).unwrap();
    drop(e); // it holds the pool's lock file open
    rustix::mount::unmount(&small, rustix::mount::UnmountFlags::empty()).unwrap();
}

#[test]
fn a_volume_whose_interrupted_delete_cannot_finish_is_quarantined_not_fatal() {
    if !loam_sys::testutil::require_root(
        "a_volume_whose_interrupted_delete_cannot_finish_is_quarantined_not_fatal",
    ) {
        return;
    }
    loam_sys::testutil::enter_private_mount_namespace().unwrap();
    let d = tempfile::tempdir().unwrap();
    let root = d.path().canonicalize().unwrap();
    let e = Engine::open(config(&root, 100 * MIB)).unwrap();
    let stuck = e.create_volume(&req("stuck", MIB)).unwrap();
    let fine = e.create_volume(&req("fine", MIB)).unwrap();
    drop(e);
    // Something is mounted inside the volume, which deletion never crosses; and a crash left it "deleting".
    let vol_dir = root
        .join("pools/default/volumes")
        .join(VolumeId::parse(&stuck.id).unwrap().file_stem());
    let inner = vol_dir.join("mnt");
    std::fs::create_dir(&inner).unwrap();
    let elsewhere = root.join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    std::fs::write(elsewhere.join("keep"), b"k").unwrap();
    rustix::mount::mount_bind(&elsewhere, &inner).unwrap();
    let rec_path = root.join("pools/default/records").join(format!(
        "{}.json",
        VolumeId::parse(&stuck.id).unwrap().file_stem()
    ));
    let mut r: VolumeRecord = serde_json::from_slice(&std::fs::read(&rec_path).unwrap()).unwrap();
    r.state = VolumeState::Deleting;
    std::fs::write(&rec_path, serde_json::to_vec(&r).unwrap()).unwrap();

    let e = Engine::open(config(&root, 100 * MIB)).expect("one stuck volume must not stop the node");
    match e.get_volume(&stuck.id) {
        Err(Error::Quarantined { reason, .. }) => assert!(reason.contains("mount"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert!(e.get_volume(&fine.id).is_ok());
    assert_eq!(std::fs::read(elsewhere.join("keep")).unwrap(), b"k");
    // The delete had set the directory aside before it met the mount.
    let set_aside = vol_dir
        .parent()
        .unwrap()
        .join(format!(
            ".deleting-{}",
            VolumeId::parse(&stuck.id).unwrap().file_stem()
        ))
        .join("mnt");
    assert!(!inner.exists() && set_aside.exists());
    rustix::mount::unmount(&set_aside, rustix::mount::UnmountFlags::empty()).unwrap();
}

/// Dir pools write no intent records: what an interrupted create or delete leaves is recognised at start-up.
#[test]
fn dir_pool_leftovers_of_interrupted_creates_and_deletes_are_finished_at_start_up() {
    let d = tempfile::tempdir().unwrap();
    let volumes = d.path().join("pools/default/volumes");
    let records = d.path().join("pools/default/records");
    let e = Engine::open(config(d.path(), 100 * MIB)).unwrap();
    let kept = e.create_volume(&req("kept", MIB)).unwrap();
    let halfway = e.create_volume(&req("halfway", MIB)).unwrap();
    let stem = |id: &str| VolumeId::parse(id).unwrap().file_stem();
    // A create leaves no record in state "creating" behind.
    let rec: VolumeRecord =
        serde_json::from_slice(&std::fs::read(records.join(format!("{}.json", stem(&kept.id)))).unwrap())
            .unwrap();
    assert_eq!(rec.state, VolumeState::Ready);
    std::fs::write(volumes.join(stem(&kept.id)).join("data"), b"keep me").unwrap();
    drop(e);

    // A create that stopped before its record: an empty directory. One that holds files has lost its record:
    // it is left alone. A delete that stopped after its record went: a set-aside directory.
    let empty_orphan = "0123456789abcdef0123456789abcdef";
    std::fs::create_dir(volumes.join(empty_orphan)).unwrap();
    let full_orphan = "fedcba9876543210fedcba9876543210";
    std::fs::create_dir(volumes.join(full_orphan)).unwrap();
    std::fs::write(volumes.join(full_orphan).join("f"), b"x").unwrap();
    std::fs::create_dir_all(volumes.join(".deleting-00000000000000000000000000000042/sub")).unwrap();
    // A delete that stopped after setting the directory aside, before removing the record.
    std::fs::rename(
        volumes.join(stem(&halfway.id)),
        volumes.join(format!(".deleting-{}", stem(&halfway.id))),
    )
    .unwrap();

    let e = Engine::open(config(d.path(), 100 * MIB)).unwrap();
    let mut left: Vec<String> = std::fs::read_dir(&volumes)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    let mut want = vec![full_orphan.to_owned(), stem(&kept.id)];
    want.sort();
    assert_eq!(left, want);
    assert!(matches!(
        e.get_volume(&halfway.id),
        Err(Error::VolumeNotFound { .. })
    ));
    assert!(!records.join(format!("{}.json", stem(&halfway.id))).exists());
    assert_eq!(e.repairs(), 1, "the finished delete is counted");
    assert_eq!(
        std::fs::read(volumes.join(stem(&kept.id)).join("data")).unwrap(),
        b"keep me"
    );
    assert_eq!(available(&e), 99 * MIB);
}

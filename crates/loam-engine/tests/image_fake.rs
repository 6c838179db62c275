//! Image pools and the node code on the recording fake host: every failure path (mkfs fails after attach, mount
//! fails after format, EBUSY on unmount), restarts and reboots, without root. Image files, records and staging
//! directories are real files in a temp dir; mounts and loop devices are the fake's.

mod common;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use common::{MIB, Setup, hex, in_pool, mount_cap, req};
use loam_engine::{
    Engine, EngineConfig, Error,
    spec::PoolSpec,
    types::{AccessMode, AccessType, Capability, CreateRequest, PublishRequest, StageRequest},
};
use loam_sys::host::Host;

impl Setup {
    /// Pools `img` (the default) and `dir`, of 100 MiB each.
    fn pools_config(&self) -> EngineConfig {
        self.config(vec![
            PoolSpec::image("img", self.root.join("img")).with_capacity(Some(100 * MIB)),
            PoolSpec::dir("dir", self.root.join("dir")).with_capacity(Some(100 * MIB)),
        ])
    }

    fn open(&self) -> Engine {
        Engine::open(self.pools_config()).unwrap()
    }

    fn dir(&self, name: &str) -> PathBuf {
        let p = self.root.join(name);
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    fn image(&self, id: &str) -> PathBuf {
        self.root.join("img/volumes").join(format!("{}.img", hex(id)))
    }

    fn count(&self, op: &str) -> usize {
        self.host.calls_of(op).len()
    }
}

fn block_cap() -> Capability {
    Capability {
        access: AccessType::Block,
        mode: AccessMode::SingleNodeMultiWriter,
    }
}

fn create(e: &Engine, name: &str, size: u64, cap: Capability) -> String {
    e.create_volume(&CreateRequest {
        capabilities: vec![cap],
        ..req(name, size)
    })
    .unwrap()
    .id
}

fn stage(e: &Engine, id: &str, staging: &Path, cap: &Capability) -> loam_engine::Result<()> {
    e.stage(&StageRequest {
        volume_id: id.into(),
        staging_path: staging.into(),
        capability: cap.clone(),
    })
}

fn publish(e: &Engine, id: &str, staging: &Path, target: &Path, cap: &Capability) -> loam_engine::Result<()> {
    e.publish(&PublishRequest {
        volume_id: id.into(),
        staging_path: staging.into(),
        target_path: target.into(),
        capability: cap.clone(),
        read_only: false,
    })
}

/// A 10 MiB volume `v` with the default filesystem, and a staging directory `<root>/staging` for it: returns the
/// capability, the volume's ID and the staging path.
fn new_volume(s: &Setup, e: &Engine) -> (Capability, String, PathBuf) {
    let cap = mount_cap("");
    let id = create(e, "v", 10 * MIB, cap.clone());
    let staging = s.dir("staging");
    (cap, id, staging)
}

/// [`new_volume`], staged, and published at `<root>/pod/mount`: returns the volume's ID, the staging path and the
/// target.
fn published_volume(s: &Setup, e: &Engine) -> (String, PathBuf, PathBuf) {
    let (cap, id, staging) = new_volume(s, e);
    let target = s.dir("pod").join("mount");
    stage(e, &id, &staging, &cap).unwrap();
    publish(e, &id, &staging, &target, &cap).unwrap();
    (id, staging, target)
}

#[test]
fn filesystem_volume_is_formatted_once_mounted_and_bind_published() {
    let s = Setup::new();
    let e = s.open();
    let cap = mount_cap("");
    let id = create(&e, "fs", 10 * MIB + 1, cap.clone());
    let vol = e.get_volume(&id).unwrap();
    assert_eq!(
        vol.capacity_bytes,
        10 * MIB + 4096,
        "rounded up to the 4096-byte block"
    );
    let img = s.image(&id);
    assert_eq!(std::fs::metadata(&img).unwrap().len(), vol.capacity_bytes);
    let staging = s.dir("staging");
    let target = s.dir("pod").join("mount");
    stage(&e, &id, &staging, &cap).unwrap();
    publish(&e, &id, &staging, &target, &cap).unwrap();
    assert_eq!(
        s.host.calls_of("loop_attach"),
        [format!("loop_attach {} dio=true bs=4096 ro=false", img.display())]
    );
    assert_eq!(s.host.calls_of("mkfs"), ["mkfs /dev/loop0 ext4"]);
    assert_eq!(
        s.count("signature"),
        0,
        "an image holding no data is formatted without a probe"
    );
    assert_eq!(
        s.host.calls_of("mount"),
        [format!("mount /dev/loop0 {} ext4 [] ro=false", staging.display())]
    );
    assert_eq!(
        s.host.calls_of("bind"),
        [format!(
            "bind {} {} ro=false",
            staging.display(),
            target.display()
        )]
    );
    // Repeats add nothing.
    for _ in 0..3 {
        stage(&e, &id, &staging, &cap).unwrap();
        publish(&e, &id, &staging, &target, &cap).unwrap();
    }
    assert_eq!(
        (
            s.count("loop_attach"),
            s.count("mkfs"),
            s.count("mount"),
            s.count("bind")
        ),
        (1, 1, 1, 1)
    );
    assert_eq!(
        s.count("loop_find"),
        0,
        "a new image is known to be detached, and its device once attached is asked about alone"
    );
    assert!(e.stats(&id, &target).unwrap().inodes.is_some());
    // Delete while in use is refused, with where.
    match e.delete_volume(&id) {
        Err(Error::Precondition(m)) => assert!(m.contains(staging.to_str().unwrap()), "{m}"),
        other => panic!("{other:?}"),
    }
    e.unpublish(&id, &target).unwrap();
    assert!(!target.exists(), "unpublish removes the target it made");
    e.unstage(&id, &staging).unwrap();
    assert!(
        s.host.loops().is_empty(),
        "unstage detaches once nothing uses the device"
    );
    e.unstage(&id, &staging).unwrap();
    assert_eq!(
        s.count("loop_find"),
        2,
        "stats (for a second device) and detaching look at every device, once each"
    );
    // Staged again, it holds a filesystem now: probed, found, and mounted without formatting.
    stage(&e, &id, &staging, &cap).unwrap();
    assert_eq!((s.count("signature"), s.count("mkfs")), (1, 1));
    e.unstage(&id, &staging).unwrap();
    e.delete_volume(&id).unwrap();
    assert!(!img.exists());
}

#[test]
fn xfs_is_formatted_when_asked_and_a_volume_is_never_reformatted() {
    let s = Setup::new();
    let e = s.open();
    let id = create(&e, "x", 10 * MIB, mount_cap("xfs"));
    let staging = s.dir("staging");
    stage(&e, &id, &staging, &mount_cap("xfs")).unwrap();
    assert_eq!(s.host.calls_of("mkfs"), ["mkfs /dev/loop0 xfs"]);
    e.unstage(&id, &staging).unwrap();
    // Asking for another filesystem later is refused as the volume was made with xfs.
    match stage(&e, &id, &staging, &mount_cap("ext4")) {
        Err(Error::Precondition(m)) => assert!(m.contains("xfs"), "{m}"),
        other => panic!("{other:?}"),
    }
    // No fs_type: the filesystem it holds is used.
    stage(&e, &id, &staging, &mount_cap("")).unwrap();
    assert_eq!(s.count("mkfs"), 1);
    assert!(s.host.calls_of("mount").last().unwrap().contains(" xfs "));
}

#[test]
fn mkfs_failing_after_attach_leaves_nothing_attached() {
    let s = Setup::new();
    let e = s.open();
    let (cap, id, staging) = new_volume(&s, &e);
    s.host.fail("mkfs", libc::EIO);
    match stage(&e, &id, &staging, &cap) {
        Err(Error::Io { op, .. }) => assert!(op.contains("formatting /dev/loop0 as ext4"), "{op}"),
        other => panic!("{other:?}"),
    }
    assert!(s.host.loops().is_empty(), "the loop device is detached again");
    assert_eq!(s.count("mount"), 0);
    stage(&e, &id, &staging, &cap).unwrap();
    assert_eq!(s.count("mkfs"), 2);
    assert_eq!(s.host.loops().len(), 1);
}

#[test]
fn mount_failing_after_format_detaches_and_the_retry_does_not_reformat() {
    let s = Setup::new();
    let e = s.open();
    let (cap, id, staging) = new_volume(&s, &e);
    s.host.fail("mount", libc::EINVAL);
    assert!(matches!(stage(&e, &id, &staging, &cap), Err(Error::Io { .. })));
    assert!(s.host.loops().is_empty());
    assert!(!s.host.mount_table().unwrap().is_mount_point(&staging));
    stage(&e, &id, &staging, &cap).unwrap();
    assert_eq!(
        s.count("mkfs"),
        1,
        "the filesystem made before the failed mount is kept"
    );
    assert_eq!(s.count("mount"), 2);
}

#[test]
fn busy_unmount_keeps_the_volume_staged_and_attached_until_a_retry() {
    let s = Setup::new();
    let e = s.open();
    let (cap, id, staging) = new_volume(&s, &e);
    stage(&e, &id, &staging, &cap).unwrap();
    s.host.fail("unmount", libc::EBUSY);
    match e.unstage(&id, &staging) {
        Err(Error::Io { source, .. }) => assert_eq!(source.raw_os_error(), Some(libc::EBUSY)),
        other => panic!("{other:?}"),
    }
    assert!(s.host.mount_table().unwrap().is_mount_point(&staging));
    assert_eq!(s.host.loops().len(), 1, "never detached under a mount");
    e.unstage(&id, &staging).unwrap();
    assert!(s.host.loops().is_empty());
}

#[test]
fn block_volume_is_bound_onto_files_at_staging_and_targets() {
    let s = Setup::new();
    let e = s.open();
    let cap = block_cap();
    let id = create(&e, "b", 8 * MIB, cap.clone());
    let staging = s.dir("staging");
    let (t1, t2) = (s.dir("pod1").join("dev"), s.dir("pod2").join("dev"));
    stage(&e, &id, &staging, &cap).unwrap();
    let staged = staging.join(&id);
    assert!(std::fs::metadata(&staged).unwrap().is_file());
    publish(&e, &id, &staging, &t1, &cap).unwrap();
    publish(&e, &id, &staging, &t2, &cap).unwrap();
    publish(&e, &id, &staging, &t2, &cap).unwrap();
    assert_eq!(
        s.host.calls_of("bind"),
        [
            format!("bind /dev/loop0 {} ro=false", staged.display()),
            format!("bind /dev/loop0 {} ro=false", t1.display()),
            format!("bind /dev/loop0 {} ro=false", t2.display()),
        ]
    );
    assert_eq!(
        s.count("mkfs") + s.count("mount"),
        0,
        "block volumes are never formatted"
    );
    let st = e.stats(&id, &t1).unwrap();
    assert_eq!((st.bytes.total, st.inodes), (8 * MIB, None));
    // The volume holds no filesystem to mount.
    assert!(matches!(
        stage(&e, &id, &staging, &mount_cap("")),
        Err(Error::Precondition(_))
    ));
    match e.unstage(&id, &staging) {
        Err(Error::Precondition(m)) => assert!(m.contains("published"), "{m}"),
        other => panic!("{other:?}"),
    }
    e.unpublish(&id, &t1).unwrap();
    e.unpublish(&id, &t2).unwrap();
    assert!(!t1.exists() && !t2.exists());
    e.unstage(&id, &staging).unwrap();
    assert_eq!(
        std::fs::read_dir(&staging).unwrap().count(),
        0,
        "the staging directory is left empty"
    );
    assert!(s.host.loops().is_empty());
}

#[test]
fn a_restart_finds_the_attachment_and_a_reboot_reattaches_without_reformatting() {
    let s = Setup::new();
    let cap = mount_cap("");
    let staging = s.dir("staging");
    let target = s.dir("pod").join("mount");
    let id = {
        let e = s.open();
        let id = create(&e, "v", 10 * MIB, cap.clone());
        stage(&e, &id, &staging, &cap).unwrap();
        publish(&e, &id, &staging, &target, &cap).unwrap();
        id
    };
    // Restart: same mounts and devices; repeats add nothing.
    let e = s.open();
    stage(&e, &id, &staging, &cap).unwrap();
    publish(&e, &id, &staging, &target, &cap).unwrap();
    assert_eq!(
        (s.count("loop_attach"), s.count("mount"), s.count("bind")),
        (1, 1, 1)
    );
    drop(e);
    // Reboot: no mounts, no loop devices; the format is on the file.
    s.host.reboot();
    let e = s.open();
    stage(&e, &id, &staging, &cap).unwrap();
    publish(&e, &id, &staging, &target, &cap).unwrap();
    assert_eq!(
        (s.count("loop_attach"), s.count("mkfs"), s.count("mount")),
        (2, 1, 2)
    );
    e.unpublish(&id, &target).unwrap();
    e.unstage(&id, &staging).unwrap();
    e.delete_volume(&id).unwrap();
    assert!(s.host.loops().is_empty());
}

#[test]
fn a_start_looks_at_all_loop_devices_once_not_once_per_image() {
    let s = Setup::new();
    let cap = mount_cap("");
    let staging = s.dir("staging");
    let ids: Vec<String> = {
        let e = s.open();
        let ids: Vec<String> = (0..5)
            .map(|i| create(&e, &format!("v{i}"), 10 * MIB, cap.clone()))
            .collect();
        stage(&e, &ids[0], &staging, &cap).unwrap();
        ids
    };
    let (finds, unders) = (s.count("loop_find"), s.count("loop_find_under"));
    let e = s.open();
    // One look at all devices for the pool, and one for the image found attached (its own check).
    assert_eq!(s.count("loop_find_under") - unders, 1);
    assert_eq!(s.count("loop_find") - finds, 1);
    // What it learnt holds: the staged volume is still attached, and the others stage on new devices.
    stage(&e, &ids[0], &staging, &cap).unwrap();
    assert_eq!(s.count("loop_attach"), 1);
    let other = s.dir("staging-1");
    stage(&e, &ids[1], &other, &cap).unwrap();
    assert_eq!(s.count("loop_attach"), 2);
    e.unstage(&ids[0], &staging).unwrap();
    e.unstage(&ids[1], &other).unwrap();
    for id in &ids {
        e.delete_volume(id).unwrap();
    }
    assert!(s.host.loops().is_empty());
}

#[test]
fn delete_detaches_a_leftover_attachment() {
    let s = Setup::new();
    let e = s.open();
    let id = create(&e, "v", 10 * MIB, mount_cap(""));
    let img = s.image(&id);
    // Attached but not mounted (an interrupted stage on a crashed server).
    s.host
        .loop_attach(
            &img,
            &loam_sys::host::LoopConfig {
                direct_io: true,
                block_size: 4096,
                read_only: false,
            },
        )
        .unwrap();
    e.delete_volume(&id).unwrap();
    assert!(s.host.loops().is_empty());
    assert!(!img.exists());
}

#[test]
fn capabilities_off_the_allow_list_are_invalid_everywhere() {
    let s = Setup::new();
    let e = s.open();
    let flagged = |flags: &[&str]| Capability {
        access: AccessType::Mount {
            fs_type: String::new(),
            mount_flags: flags.iter().map(|f| (*f).to_owned()).collect(),
        },
        mode: AccessMode::SingleNodeWriter,
    };
    let bad = [mount_cap("btrfs"), flagged(&["user_xattr"])];
    for cap in &bad {
        match e.create_volume(&CreateRequest {
            name: "bad".into(),
            required_bytes: MIB,
            capabilities: vec![cap.clone()],
            ..Default::default()
        }) {
            Err(Error::Invalid { reason, .. }) => assert!(reason.contains("pool img"), "{reason}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            e.capacity(&BTreeMap::new(), std::slice::from_ref(cap), None)
                .unwrap()
                .available_bytes,
            0
        );
    }
    let id = create(&e, "ok", MIB, flagged(&["noatime", "nodev"]));
    let staging = s.dir("staging");
    // Discards would punch holes in a thick image, giving its space back: refused, naming the thin pool.
    let discard = flagged(&["discard"]);
    match stage(&e, &id, &staging, &discard) {
        Err(Error::Invalid { reason, .. }) => assert!(reason.contains("thin pool"), "{reason}"),
        other => panic!("{other:?}"),
    }
    for cap in bad.iter().chain([&discard]) {
        assert!(matches!(
            stage(&e, &id, &staging, cap),
            Err(Error::Invalid { .. })
        ));
        assert!(
            e.validate_capabilities(&id, std::slice::from_ref(cap), &BTreeMap::new())
                .unwrap()
                .is_some()
        );
    }
    stage(&e, &id, &staging, &flagged(&["noatime", "nodev"])).unwrap();
    assert!(s.host.calls_of("mount")[0].contains("[noatime,nodev]"));
    // Block on a dir pool names the kind that can.
    match e.create_volume(&CreateRequest {
        name: "blk".into(),
        required_bytes: MIB,
        capabilities: vec![block_cap()],
        parameters: in_pool("dir"),
        ..Default::default()
    }) {
        Err(Error::Invalid { reason, .. }) => assert!(reason.contains("kind image"), "{reason}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn thick_images_are_allocated_and_thin_ones_sparse() {
    use std::os::unix::fs::MetadataExt;
    let s = Setup::new();
    let mut cfg = s.pools_config();
    cfg.pools.push(PoolSpec::Image(loam_engine::spec::ImageSpec {
        name: "thin".into(),
        path: s.root.join("thin"),
        capacity: None,
        allocation: loam_engine::spec::Allocation::Thin,
        overcommit_ratio: None,
        fs_type: None,
    }));
    let e = Engine::open(cfg).unwrap();
    let thick = create(&e, "thick", 8 * MIB, mount_cap(""));
    let thin = e
        .create_volume(&CreateRequest {
            name: "thin".into(),
            required_bytes: 8 * MIB,
            capabilities: vec![mount_cap("")],
            parameters: in_pool("thin"),
            ..Default::default()
        })
        .unwrap()
        .id;
    let thick_m = std::fs::metadata(s.image(&thick)).unwrap();
    assert!(
        thick_m.blocks() * 512 >= 8 * MIB,
        "thick: {} blocks",
        thick_m.blocks()
    );
    let thin_m = std::fs::metadata(s.root.join(format!("thin/volumes/{}.img", hex(&thin)))).unwrap();
    assert_eq!(thin_m.len(), 8 * MIB);
    assert!(thin_m.blocks() * 512 < MIB, "thin: {} blocks", thin_m.blocks());
}

#[test]
fn a_backing_file_gone_under_a_mounted_volume_is_abnormal_in_stats_and_get() {
    let s = Setup::new();
    let e = s.open();
    let (id, _, target) = published_volume(&s, &e);
    assert!(e.stats(&id, &target).unwrap().abnormal.is_none());
    // Someone removes the image file and puts another in its place; the loop device keeps the old one.
    let img = s.image(&id);
    std::fs::remove_file(&img).unwrap();
    std::fs::write(&img, b"x").unwrap();
    s.host.unlink_backing(&img);
    let st = e.stats(&id, &target).unwrap();
    let why = st.abnormal.expect("abnormal");
    assert!(why.contains("is 1 bytes, not its"), "{why}");
    assert_eq!(e.get_volume(&id).unwrap().abnormal.as_deref(), Some(why.as_str()));
    // A path that never showed the volume is still NOT_FOUND.
    assert!(matches!(
        e.stats(&id, &s.dir("elsewhere")),
        Err(Error::NotAtPath { .. })
    ));
}

#[test]
fn a_volume_whose_device_lost_its_file_still_unpublishes_and_unstages() {
    let s = Setup::new();
    let e = s.open();
    let (id, staging, target) = published_volume(&s, &e);
    s.host.unlink_backing(&s.image(&id));
    e.unpublish(&id, &target).unwrap();
    e.unstage(&id, &staging).unwrap();
    let table = s.host.mount_table().unwrap();
    assert!(!table.is_mount_point(&target) && !table.is_mount_point(&staging));
    // Something loam did not mount is never taken down.
    let other = s.dir("other");
    s.host.bind(&s.dir("elsewhere"), &other, false).unwrap();
    assert!(matches!(e.unpublish(&id, &other), Err(Error::Precondition(_))));
    assert!(s.host.mount_table().unwrap().is_mount_point(&other));
}

#[test]
fn a_block_volume_whose_device_lost_its_file_still_unpublishes_and_unstages() {
    let s = Setup::new();
    let e = s.open();
    let cap = block_cap();
    let id = create(&e, "b", 8 * MIB, cap.clone());
    let staging = s.dir("staging");
    let target = s.dir("pod").join("dev");
    stage(&e, &id, &staging, &cap).unwrap();
    publish(&e, &id, &staging, &target, &cap).unwrap();
    s.host.unlink_backing(&s.image(&id));
    e.unpublish(&id, &target).unwrap();
    // The device file in the staging directory carries no note itself: the staging directory's note vouches.
    e.unstage(&id, &staging).unwrap();
    let table = s.host.mount_table().unwrap();
    assert!(!table.is_mount_point(&target) && !table.is_mount_point(&staging.join(&id)));
    assert_eq!(
        std::fs::read_dir(&staging).unwrap().count(),
        0,
        "the staging directory is left empty"
    );
}

#[test]
fn interrupted_creates_and_deletes_of_images_are_finished_at_start_up() {
    use std::io::{Seek, SeekFrom, Write};
    let s = Setup::new();
    let e = s.open();
    let kept = create(&e, "kept", 10 * MIB, mount_cap(""));
    let halfway = create(&e, "halfway", 10 * MIB, mount_cap(""));
    let deleted = create(&e, "deleted", 10 * MIB, mount_cap(""));
    e.delete_volume(&deleted).unwrap();
    let volumes = s.root.join("img/volumes");
    // A delete leaves neither the image nor anything set aside, and writes no intent: only the kept records.
    let mut left: Vec<String> = std::fs::read_dir(&volumes)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    let mut want = vec![format!("{}.img", hex(&kept)), format!("{}.img", hex(&halfway))];
    want.sort();
    assert_eq!(left, want);
    drop(e);
    // A delete that crashed after setting the image aside, with its record still there.
    std::fs::rename(
        s.image(&halfway),
        volumes.join(format!(".deleting-{}.img", hex(&halfway))),
    )
    .unwrap();
    // A delete that crashed after its record was removed, before the image went.
    let orphan_aside = volumes.join(".deleting-0000000000000000000000000000abcd.img");
    std::fs::write(&orphan_aside, b"data").unwrap();
    // Creates that crashed before their record: one image never written to, one that holds data.
    let empty = volumes.join("0000000000000000000000000000e000.img");
    std::fs::File::create(&empty).unwrap().set_len(10 * MIB).unwrap();
    let written = volumes.join("0000000000000000000000000000d000.img");
    let mut f = std::fs::File::create(&written).unwrap();
    f.set_len(10 * MIB).unwrap();
    f.seek(SeekFrom::Start(MIB)).unwrap();
    f.write_all(b"someone's data").unwrap();
    drop(f);

    let e = s.open();
    assert_eq!(e.repairs(), 1, "the interrupted delete is finished");
    assert!(matches!(
        e.get_volume(&halfway),
        Err(Error::VolumeNotFound { .. })
    ));
    assert!(e.get_volume(&kept).is_ok());
    assert!(s.image(&kept).exists());
    assert!(!orphan_aside.exists());
    assert!(!empty.exists(), "an image no one wrote to is removed");
    assert!(written.exists(), "an image holding data is left for an operator");
    assert!(!volumes.join(format!(".deleting-{}.img", hex(&halfway))).exists());
    let (ids, _) = e.list_volumes("", 0).unwrap();
    assert_eq!(
        ids.iter().map(|v| v.id.as_str()).collect::<Vec<_>>(),
        vec![kept.as_str()]
    );
}

//! btrfs pools on the recording fake host: quota detection and enabling, subvolumes with limits, usage from the
//! qgroup, limits changed by hand, and the degraded cases, without root. Real btrfs is in tests/btrfs.rs.

mod common;

use std::path::PathBuf;

use common::{MIB, Setup, available, cap, hex, req};
use loam_engine::{
    Engine, Error,
    spec::{BtrfsSpec, PoolSpec, QuotaChoice},
    types::{AccessMode, AccessType, Capability, CreateRequest, PublishRequest, StageRequest},
};
use loam_sys::host::{Host, Qgroup, QuotaMode};

impl Setup {
    /// A fake btrfs filesystem at `<tmp>/fs` with quotas in `mode`.
    fn btrfs(mode: QuotaMode, simple_ok: bool) -> Setup {
        let s = Setup::new();
        s.host.add_btrfs(&s.make_fs(), mode, simple_ok);
        s
    }

    fn open_with(&self, path: PathBuf, quota: QuotaChoice) -> Engine {
        Engine::open(self.config(vec![PoolSpec::Btrfs(BtrfsSpec {
            name: "bt".into(),
            path,
            capacity: Some(loam_engine::spec::ByteSize(100 * MIB)),
            quota,
        })]))
        .unwrap()
    }

    fn open(&self) -> Engine {
        self.open_with(self.pool_root(), QuotaChoice::Auto)
    }
}

fn create(e: &Engine, name: &str, size: u64) -> String {
    e.create_volume(&req(name, size)).unwrap().id
}

fn degraded(e: &Engine) -> Option<String> {
    e.pool_status()[0].degraded.clone()
}

#[test]
fn quotas_off_turn_on_simple_where_the_kernel_can_else_full() {
    let s = Setup::btrfs(QuotaMode::Off, true);
    let e = s.open();
    assert!(degraded(&e).is_none());
    assert_eq!(
        s.host.calls_of("btrfs_enable_quota"),
        [format!(
            "btrfs_enable_quota {} simple=true",
            s.pool_root().display()
        )]
    );
    drop(e);
    // Already on: nothing to enable.
    let e = s.open();
    assert!(degraded(&e).is_none());
    assert_eq!(s.host.calls_of("btrfs_enable_quota").len(), 1);

    let old = Setup::btrfs(QuotaMode::Off, false);
    let e = old.open();
    assert!(degraded(&e).is_none());
    assert_eq!(
        old.host.calls_of("btrfs_enable_quota"),
        [
            format!("btrfs_enable_quota {} simple=true", old.pool_root().display()),
            format!("btrfs_enable_quota {} simple=false", old.pool_root().display()),
        ]
    );
}

#[test]
fn quotas_that_cannot_be_enabled_degrade_the_pool_naming_what_to_do() {
    let s = Setup::btrfs(QuotaMode::Off, false);
    let e = s.open_with(s.pool_root(), QuotaChoice::Simple);
    let why = degraded(&e).unwrap();
    assert!(
        why.contains("pool bt") && why.contains("6.7") && why.contains("quota = \"full\""),
        "{why}"
    );
    assert!(matches!(
        e.create_volume(&req("x", MIB)),
        Err(Error::Exhausted(_))
    ));
    let both = Setup::btrfs(QuotaMode::Off, false);
    both.host.fail_after("btrfs_enable_quota", 1, libc::EPERM);
    let why = degraded(&both.open()).unwrap();
    assert!(why.contains("enable them by hand"), "{why}");
}

#[test]
fn a_pool_on_another_filesystem_is_degraded_and_left_untouched() {
    let s = Setup::btrfs(QuotaMode::Simple, true);
    let elsewhere = s.root.join("ext4");
    std::fs::create_dir(&elsewhere).unwrap();
    let e = s.open_with(elsewhere.clone(), QuotaChoice::Auto);
    let why = degraded(&e).unwrap();
    assert!(
        why.contains("pool bt") && why.contains("is not on a btrfs filesystem"),
        "{why}"
    );
    assert_eq!(
        std::fs::read_dir(&elsewhere).unwrap().count(),
        0,
        "no marker, no lock, nothing"
    );
}

#[test]
fn a_volume_is_a_subvolume_limited_to_its_size_and_measured_by_its_qgroup() {
    let s = Setup::btrfs(QuotaMode::Simple, true);
    let e = s.open();
    let id = create(&e, "v", 10 * MIB + 1);
    let size = 10 * MIB + 4096;
    assert_eq!(e.get_volume(&id).unwrap().capacity_bytes, size);
    let sub = s.volume_dir(&id);
    assert!(sub.is_dir());
    let (qid, q) = s.host.qgroups(&s.root.join("fs"))[0];
    assert_eq!(q.max_referenced, Some(size));
    assert!(e.get_volume(&id).unwrap().abnormal.is_none());

    // Usage comes from the qgroup, whatever the directory holds.
    s.host.set_qgroup(
        qid,
        Some(Qgroup {
            referenced: 3 * MIB,
            exclusive: 3 * MIB,
            max_referenced: Some(size),
            max_exclusive: None,
        }),
    );
    let staging = s.root.join("staging");
    std::fs::create_dir(&staging).unwrap();
    e.stage(&StageRequest {
        volume_id: id.clone(),
        staging_path: staging.clone(),
        capability: cap(),
    })
    .unwrap();
    let st = e.stats(&id, &staging).unwrap();
    assert_eq!((st.bytes.total, st.bytes.used), (size, 3 * MIB));
    assert!(st.bytes.available <= size - 3 * MIB);
    assert!(st.abnormal.is_none());
    // Capacity: what the volume has written counts as written, the rest stays promised.
    let before = available(&e);
    assert!(before <= 100 * MIB - size, "{before}");
    assert!(matches!(
        e.publish(&PublishRequest {
            volume_id: id.clone(),
            staging_path: staging.clone(),
            target_path: s.root.join("target"),
            capability: cap(),
            read_only: false,
        }),
        Ok(())
    ));
    e.unpublish(&id, &s.root.join("target")).unwrap();
    e.unstage(&id, &staging).unwrap();
    e.delete_volume(&id).unwrap();
    assert!(!sub.exists());
    assert!(s.host.qgroups(&s.root.join("fs")).is_empty(), "no qgroup is left");
}

#[test]
fn a_limit_changed_by_hand_is_reported_never_fixed() {
    let s = Setup::btrfs(QuotaMode::Full, true);
    let e = s.open();
    let id = create(&e, "v", 8 * MIB);
    let (qid, mut q) = s.host.qgroups(&s.root.join("fs"))[0];
    q.max_referenced = Some(MIB);
    s.host.set_qgroup(qid, Some(q));
    let why = e.get_volume(&id).unwrap().abnormal.unwrap();
    assert!(
        why.contains("changed by hand") && why.contains(&MIB.to_string()),
        "{why}"
    );
    drop(e);
    let e = s.open();
    assert!(e.get_volume(&id).unwrap().abnormal.is_some());
    assert_eq!(
        s.host.calls_of("btrfs_set_limit").len(),
        1,
        "the limit is set at create only"
    );
    // A lost qgroup, and a lost subvolume.
    s.host.set_qgroup(qid, None);
    assert!(e.get_volume(&id).unwrap().abnormal.unwrap().contains("no qgroup"));
    std::fs::remove_dir_all(s.volume_dir(&id)).unwrap();
    let why = e.get_volume(&id).unwrap().abnormal.unwrap();
    assert!(why.contains("is missing"), "{why}");
}

#[test]
fn directories_in_place_of_subvolumes_are_never_deleted() {
    let s = Setup::btrfs(QuotaMode::Simple, true);
    let e = s.open();
    let id = create(&e, "v", MIB);
    let sub = s.volume_dir(&id);
    // Swap the subvolume for a plain directory holding data.
    s.host
        .btrfs_delete_subvolume(sub.parent().unwrap(), hex(&id))
        .unwrap();
    std::fs::create_dir(&sub).unwrap();
    std::fs::write(sub.join("keep"), b"x").unwrap();
    assert!(
        e.get_volume(&id)
            .unwrap()
            .abnormal
            .unwrap()
            .contains("not a subvolume")
    );
    assert!(matches!(e.delete_volume(&id), Err(Error::Precondition(_))));
    assert!(sub.join("keep").exists());
}

#[test]
fn block_access_and_fs_types_are_refused_naming_the_kind_that_can() {
    let s = Setup::btrfs(QuotaMode::Simple, true);
    let e = s.open();
    let block = Capability {
        access: AccessType::Block,
        mode: AccessMode::SingleNodeWriter,
    };
    match e.create_volume(&CreateRequest {
        name: "b".into(),
        required_bytes: MIB,
        capabilities: vec![block],
        ..Default::default()
    }) {
        Err(Error::Invalid { reason, .. }) => {
            assert!(
                reason.contains("btrfs pool") && reason.contains("kind image"),
                "{reason}"
            )
        }
        other => panic!("{other:?}"),
    }
}

//! dir pools with and without project quota, on the recording fake host (this kernel has no project quota):
//! detection at start-up, the exact quota calls per volume, project IDs that are recorded and never shared, limits
//! changed by hand, and the accounted mode whose usage comes from a background measurement, never from a walk in
//! an RPC. Volume directories are real; mounts and quotas are the fake's.

mod common;

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use common::{MIB, Setup, available, cap, hex, req};
use loam_engine::{
    Engine, EngineConfig, Error,
    spec::{DirQuota, DirSpec, PoolSpec},
    types::StageRequest,
};
use loam_sys::host::ProjectQuotaState;

fn dir_spec(path: PathBuf) -> DirSpec {
    DirSpec {
        name: "d".into(),
        path,
        capacity: Some(loam_engine::spec::ByteSize(100 * MIB)),
        quota: DirQuota::Auto,
        project_ids: Some([500, 502]),
        inode_limit: Some(1000),
        usage_refresh_seconds: Some(1),
    }
}

impl Setup {
    /// A fake filesystem at `<tmp>/fs`, with project quota in `state` (None: none at all).
    fn with_fs(state: Option<ProjectQuotaState>) -> Setup {
        let s = Setup::new();
        let fs = s.make_fs();
        if let Some(state) = state {
            s.host.add_project_quota(&fs, state);
        }
        s
    }

    fn dir_config(&self, spec: DirSpec) -> EngineConfig {
        self.config(vec![PoolSpec::Dir(spec)])
    }

    fn open(&self) -> Engine {
        Engine::open(self.dir_config(dir_spec(self.pool_root()))).unwrap()
    }

    fn stage(&self, e: &Engine, id: &str) -> PathBuf {
        let staging = self.root.join(format!("staging-{}", &id[id.len() - 6..]));
        std::fs::create_dir_all(&staging).unwrap();
        e.stage(&StageRequest {
            volume_id: id.into(),
            staging_path: staging.clone(),
            capability: cap(),
        })
        .unwrap();
        staging
    }
}

const ENFORCING: ProjectQuotaState = ProjectQuotaState {
    accounting: true,
    enforcing: true,
};

fn status(e: &Engine) -> loam_engine::PoolStatus {
    e.pool_status().remove(0)
}

#[test]
fn project_quota_is_used_where_the_filesystem_enforces_it() {
    let s = Setup::with_fs(Some(ENFORCING));
    let e = s.open();
    assert!(status(&e).size_enforced);
    let v = e.create_volume(&req("v", 10 * MIB + 1)).unwrap();
    assert_eq!(v.capacity_bytes, 10 * MIB + 4096, "limits are whole 4 KiB blocks");
    let dir = s.volume_dir(&v.id);
    let volumes = s.pool_root().join("volumes");
    assert_eq!(
        s.host.calls_of("set_project"),
        [format!("set_project {} 500", dir.display())]
    );
    assert_eq!(
        s.host.calls_of("set_project_limit"),
        [format!(
            "set_project_limit {} 500 {} 1000",
            volumes.display(),
            v.capacity_bytes
        )]
    );
    // The project ID is in the record.
    let record =
        std::fs::read_to_string(s.pool_root().join("records").join(format!("{}.json", hex(&v.id)))).unwrap();
    assert!(record.contains("\"project_id\": 500"), "{record}");
    assert!(e.get_volume(&v.id).unwrap().abnormal.is_none());

    // Usage comes from the quota, in O(1).
    s.host.set_project_used(500, 3 * MIB, 42);
    let staging = s.stage(&e, &v.id);
    let st = e.stats(&v.id, &staging).unwrap();
    assert_eq!((st.bytes.total, st.bytes.used), (v.capacity_bytes, 3 * MIB));
    assert_eq!(st.inodes.unwrap().used, 42);
    assert!(st.abnormal.is_none());
    e.unstage(&v.id, &staging).unwrap();

    // Deleting clears the limit.
    s.host.set_project_used(500, 0, 0);
    e.delete_volume(&v.id).unwrap();
    assert!(!dir.exists());
    assert_eq!(
        s.host.calls_of("set_project_limit").last().unwrap(),
        &format!("set_project_limit {} 500 0 0", volumes.display())
    );
}

#[test]
fn project_ids_are_never_shared_and_their_range_can_run_out() {
    let s = Setup::with_fs(Some(ENFORCING));
    let e = s.open();
    // Something else on the filesystem holds 501 already.
    s.host.set_project_used(501, 4096, 1);
    let a = e.create_volume(&req("a", MIB)).unwrap();
    let b = e.create_volume(&req("b", MIB)).unwrap();
    let project = |id: &str| {
        loam_sys::host::Host::get_project(s.host.as_ref(), &s.volume_dir(id))
            .unwrap()
            .0
    };
    assert_eq!((project(&a.id), project(&b.id)), (500, 502), "501 is skipped");
    match e.create_volume(&req("c", MIB)) {
        Err(Error::Exhausted(m)) => assert!(m.contains("pool d") && m.contains("project_ids"), "{m}"),
        other => panic!("{other:?}"),
    }
    // A pool out of IDs offers nothing, so the scheduler looks elsewhere, and says why.
    assert_eq!(available(&e), 0);
    assert!(status(&e).degraded.unwrap().contains("widen project_ids"));
    // A restart knows which IDs the records hold; a deleted volume's ID is free again.
    drop(e);
    let e = s.open();
    assert!(matches!(
        e.create_volume(&req("c", MIB)),
        Err(Error::Exhausted(_))
    ));
    e.delete_volume(&a.id).unwrap();
    let c = e.create_volume(&req("c", MIB)).unwrap();
    assert_eq!(project(&c.id), 500);
}

#[test]
fn a_limit_or_project_changed_by_hand_is_reported_never_fixed() {
    let s = Setup::with_fs(Some(ENFORCING));
    let e = s.open();
    let v = e.create_volume(&req("v", 8 * MIB)).unwrap();
    let volumes = s.pool_root().join("volumes");
    loam_sys::host::Host::set_project_limit(s.host.as_ref(), &volumes, 500, MIB, 0).unwrap();
    let why = e.get_volume(&v.id).unwrap().abnormal.unwrap();
    assert!(
        why.contains("changed by hand") && why.contains(&MIB.to_string()),
        "{why}"
    );
    let limits = s.host.calls_of("set_project_limit").len();
    drop(e);
    let e = s.open();
    assert!(e.get_volume(&v.id).unwrap().abnormal.is_some());
    assert_eq!(
        s.host.calls_of("set_project_limit").len(),
        limits,
        "loam never sets it back"
    );
    loam_sys::host::Host::set_project(s.host.as_ref(), &s.volume_dir(&v.id), 7).unwrap();
    let why = e.get_volume(&v.id).unwrap().abnormal.unwrap();
    assert!(why.contains("project ID 7") && why.contains("says 500"), "{why}");
}

#[test]
fn without_enforcing_quota_sizes_are_accounted_and_said_so() {
    for state in [
        None,
        Some(ProjectQuotaState {
            accounting: true,
            enforcing: false,
        }),
    ] {
        let s = Setup::with_fs(state);
        let e = s.open();
        let st = status(&e);
        assert!(!st.size_enforced);
        let v = e.create_volume(&req("v", 10 * MIB + 1)).unwrap();
        assert_eq!(v.capacity_bytes, 10 * MIB + 1, "accounted sizes are exact");
        assert!(s.host.calls_of("set_project").is_empty());
    }
    // Off: no quota even where the filesystem has it.
    let s = Setup::with_fs(Some(ENFORCING));
    let mut spec = dir_spec(s.pool_root());
    spec.quota = DirQuota::Off;
    let e = Engine::open(s.dir_config(spec)).unwrap();
    assert!(!status(&e).size_enforced);
}

#[test]
fn required_quota_without_it_refuses_to_start_naming_what_to_do() {
    let s = Setup::with_fs(None);
    let mut spec = dir_spec(s.pool_root());
    spec.quota = DirQuota::Required;
    match Engine::open(s.dir_config(spec)) {
        Err(Error::Invalid { reason, .. }) => {
            assert!(
                reason.contains("pool d")
                    && reason.contains("prjquota")
                    && reason.contains("quota = \"auto\""),
                "{reason}"
            )
        }
        other => panic!("required quota must stop start-up: {other:?}"),
    }
}

#[test]
fn accounted_stats_read_the_measurement_and_never_walk_the_volume() {
    // One measurement an hour: whatever the volume holds meanwhile, stats answers from the last one.
    let s = Setup::with_fs(None);
    let mut spec = dir_spec(s.pool_root());
    spec.usage_refresh_seconds = Some(3600);
    let e = Engine::open(s.dir_config(spec)).unwrap();
    let v = e.create_volume(&req("v", 64 * MIB)).unwrap();
    let staging = s.stage(&e, &v.id);
    let empty = e.stats(&v.id, &staging).unwrap();
    let files = s.volume_dir(&v.id).join("files");
    std::fs::create_dir(&files).unwrap();
    for i in 0..100_000 {
        std::fs::File::create(files.join(i.to_string())).unwrap();
    }
    let full = e.stats(&v.id, &staging).unwrap();
    // (The filesystem's free inodes did drop by 100,000: that comes from statfs, which costs the same.)
    assert_eq!(
        (full.bytes.used, full.inodes.unwrap().used),
        (empty.bytes.used, empty.inodes.unwrap().used),
        "stats walked the volume instead of reading the measurement"
    );
    e.unstage(&v.id, &staging).unwrap();
    std::fs::remove_dir_all(&files).unwrap();
}

#[test]
fn the_background_measurement_catches_up_within_its_interval() {
    let s = Setup::with_fs(None);
    let e = s.open(); // measures every second
    let v = e.create_volume(&req("v", 64 * MIB)).unwrap();
    let staging = s.stage(&e, &v.id);
    let files = s.volume_dir(&v.id).join("files");
    std::fs::create_dir(&files).unwrap();
    for i in 0..1000 {
        std::fs::write(files.join(i.to_string()), b"x").unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let st = e.stats(&v.id, &staging).unwrap();
        if st.inodes.unwrap().used > 1000 {
            assert!(st.bytes.used >= 1000 * 4096 / 2, "{st:?}");
            break;
        }
        assert!(Instant::now() < deadline, "usage never measured: {st:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Capacity counts what the volume has written as written, from the same measurement.
    let avail = available(&e);
    assert!(avail <= 100 * MIB - 64 * MIB + 1000 * 4096, "{avail}");
    e.unstage(&v.id, &staging).unwrap();
}

//! The Kubernetes side, played through the exact CSI calls the sidecars and kubelet make (csi-facts §3–§6):
//! external-provisioner in node-deployment mode with capacity tracking, node-driver-registrar's kubelet
//! registration, kubelet's stage/publish/stats, and two nodes side by side.

mod common;

use std::collections::HashMap;

use common::*;
use loam::csi::{
    self, controller_service_capability, plugin_capability, volume_capability::access_mode::Mode,
};
use tonic::Code;

/// A StorageClass's raw parameters as the provisioner passes them to GetCapacity (reserved keys included).
fn storage_class_params() -> HashMap<String, String> {
    HashMap::from([
        ("pool".to_owned(), "default".to_owned()),
        ("csi.storage.k8s.io/fstype".to_owned(), String::new()),
    ])
}

async fn poll_capacity(
    ctl: &mut loam::csi::controller_client::ControllerClient<tonic::transport::Channel>,
    segment: &csi::Topology,
) -> (i64, i64) {
    let r = ok(ctl
        .get_capacity(csi::GetCapacityRequest {
            volume_capabilities: vec![],
            parameters: storage_class_params(),
            accessible_topology: Some(segment.clone()),
        })
        .await);
    assert!(r.available_capacity >= 0);
    (
        r.available_capacity,
        r.maximum_volume_size.expect("maximum_volume_size is set"),
    )
}

#[tokio::test]
async fn provisioner_and_kubelet_sequence() {
    if !loam_sys::testutil::require_root("provisioner_and_kubelet_sequence") {
        return;
    }
    let srv = Server::start(NODE, &["--capacity", "1Gi", "--usage-refresh-seconds", "1"]);
    let (mut id, mut ctl, mut node) = (srv.identity().await, srv.controller().await, srv.node().await);

    // external-provisioner start-up.
    let info = ok(id.get_plugin_info(csi::GetPluginInfoRequest {}).await);
    assert_eq!(info.name, "loam.csi");
    let plugin_caps = plugin_caps(&mut id).await;
    use plugin_capability::service::Type as Svc;
    assert!(plugin_caps.contains(&Svc::ControllerService));
    assert!(plugin_caps.contains(&Svc::VolumeAccessibilityConstraints));
    let ctl_caps = controller_caps(&mut ctl).await;
    use controller_service_capability::rpc::Type as Rpc;
    assert!(ctl_caps.contains(&Rpc::CreateDeleteVolume));
    assert!(ctl_caps.contains(&Rpc::GetCapacity));
    assert!(
        !ctl_caps.contains(&Rpc::PublishUnpublishVolume),
        "attachRequired is false"
    );
    let probe = ok(id.probe(csi::ProbeRequest {}).await);
    assert_ne!(probe.ready, Some(false));
    let ni = ok(node.node_get_info(csi::NodeGetInfoRequest {}).await);
    assert_eq!(ni.node_id, NODE);
    let segment = ni.accessible_topology.expect("NodeGetInfo has topology");
    assert_eq!(segment, topology(NODE));

    // Capacity poll for the StorageClass.
    let (before, max_before) = poll_capacity(&mut ctl, &segment).await;
    assert_eq!(before, GIB);
    assert_eq!(max_before, GIB);

    // Provision for a claim whose selected node is ours (--strict-topology: requisite = preferred = [node]).
    let size = 100 * MIB;
    let req = csi::CreateVolumeRequest {
        name: "pvc-5f0c6b2e-8f7a-4f0e-9d55-2b1c3a4d5e6f".into(),
        capacity_range: Some(csi::CapacityRange {
            required_bytes: size,
            limit_bytes: 0,
        }),
        volume_capabilities: vec![mount_cap(Mode::SingleNodeMultiWriter)],
        parameters: in_pool("default"),
        accessibility_requirements: strict_topology(&segment),
        ..Default::default()
    };
    let vol = create_with(&mut ctl, req.clone()).await;
    assert_eq!(vol.capacity_bytes, size);
    assert_eq!(
        vol.accessible_topology,
        vec![segment.clone()],
        "the PV's nodeAffinity is built from this"
    );
    // The provisioner refreshes capacity right after provisioning: exactly the volume's size is gone.
    assert_eq!(poll_capacity(&mut ctl, &segment).await, (GIB - size, GIB - size));
    // A retry after a timeout gets the same volume and takes nothing more.
    let again = create_with(&mut ctl, req).await;
    assert_eq!(again.volume_id, vol.volume_id);
    assert_eq!(poll_capacity(&mut ctl, &segment).await.0, GIB - size);

    // Kubelet: registration, then stage, publish, stats, unpublish, unstage.
    assert!(!node_caps(&mut node).await.is_empty());
    let staging = srv
        .root
        .join("kubelet/plugins/kubernetes.io/csi/loam.csi/4f1d0c0e/globalmount");
    std::fs::create_dir_all(&staging).unwrap();
    let pod_dir = srv
        .root
        .join("kubelet/pods/7d3a/volumes/kubernetes.io~csi/pvc-5f0c");
    std::fs::create_dir_all(&pod_dir).unwrap();
    let target = pod_dir.join("mount");
    let cap = mount_cap(Mode::SingleNodeMultiWriter);
    let mut stage = stage_req(&vol.volume_id, &staging, cap.clone());
    stage.volume_context = vol.volume_context.clone();
    ok(node.node_stage_volume(stage).await);
    let mut publish = publish_req(&vol.volume_id, &staging, &target, cap, false);
    publish.volume_context = vol.volume_context.clone();
    for (k, v) in [
        ("csi.storage.k8s.io/pod.name", "db-0"),
        ("csi.storage.k8s.io/pod.namespace", "default"),
        ("csi.storage.k8s.io/pod.uid", "7d3a"),
        ("csi.storage.k8s.io/serviceAccount.name", "default"),
        ("csi.storage.k8s.io/ephemeral", "false"),
    ] {
        publish.volume_context.insert(k.into(), v.into());
    }
    ok(node.node_publish_volume(publish).await);
    assert_eq!(srv.mounts_at(&target), 1);
    write_data(&srv.in_ns(target.join("table.db")), 3 * MIB as usize).unwrap();
    let mut stats_req = stats_req(&vol.volume_id, &s(&target));
    stats_req.staging_target_path = s(&staging);
    // The dir pool measures usage in the background (every second here): kubelet sees it within that interval.
    let stats = stats_until(&mut node, stats_req, |r| usage_rows(r).0.used >= 3 * MIB).await;
    let (bytes, inodes) = usage_rows(&stats);
    assert_eq!(bytes.total, size);
    assert!(bytes.used >= 3 * MIB, "{bytes:?}");
    assert_eq!(bytes.available, size - bytes.used);
    assert!(inodes.used >= 2, "{inodes:?}");
    assert!(!stats.volume_condition.expect("condition").abnormal);
    unpublish_and_unstage(&mut node, &vol.volume_id, &staging, &target).await;
    assert!(!target.exists(), "loam removes the target it created");
    assert!(staging.is_dir(), "the CO's staging directory stays");
    srv.assert_no_mounts();

    // Reclaim: DeleteVolume, and capacity comes back exactly.
    delete(&mut ctl, &vol.volume_id).await;
    assert_eq!(poll_capacity(&mut ctl, &segment).await, (GIB, GIB));

    // A claim bigger than what is left is RESOURCE_EXHAUSTED: the provisioner sends it back to the scheduler.
    let mut big = create_req("pvc-too-big", GIB + 1);
    big.accessibility_requirements = strict_topology(&segment);
    let st = expect_code(ctl.create_volume(big).await, Code::OutOfRange);
    assert!(
        st.message().contains("more than pool default can ever hold"),
        "{}",
        st.message()
    );
    ok(ctl.create_volume(create_req("pvc-fill", GIB - 10 * MIB)).await);
    let st = expect_code(
        ctl.create_volume(create_req("pvc-no-room", 20 * MIB)).await,
        Code::ResourceExhausted,
    );
    assert!(st.message().contains("left to give"), "{}", st.message());
}

#[tokio::test]
async fn unknown_storage_class_parameter_is_refused_by_name() {
    let srv = Server::start(NODE, &[]);
    let mut ctl = srv.controller().await;
    let mut params = storage_class_params();
    params.insert("fstpye".into(), "xfs".into());
    let st = expect_code(
        ctl.get_capacity(csi::GetCapacityRequest {
            parameters: params.clone(),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
    );
    assert!(
        st.message().contains("fstpye") && st.message().contains("pool"),
        "{}",
        st.message()
    );
    let mut req = create_req("pvc-typo", MIB);
    req.parameters = params;
    let st = expect_code(ctl.create_volume(req).await, Code::InvalidArgument);
    assert!(st.message().contains("fstpye"), "{}", st.message());
    let mut req = create_req("pvc-pool", MIB);
    req.parameters = in_pool("ssd");
    let st = expect_code(ctl.create_volume(req).await, Code::InvalidArgument);
    assert!(
        st.message().contains("ssd") && st.message().contains("default"),
        "{}",
        st.message()
    );
}

#[tokio::test]
async fn extra_topology_segments_are_reported_and_honoured() {
    let srv = Server::start(NODE, &["--topology", "topology.kubernetes.io/zone=z1"]);
    let mut node = srv.node().await;
    let mut ctl = srv.controller().await;
    let seg = ok(node.node_get_info(csi::NodeGetInfoRequest {}).await)
        .accessible_topology
        .unwrap();
    assert_eq!(
        seg.segments
            .get("topology.kubernetes.io/zone")
            .map(String::as_str),
        Some("z1")
    );
    assert_eq!(seg.segments.get(TOPOLOGY_KEY).map(String::as_str), Some(NODE));
    let zone_only = csi::Topology {
        segments: HashMap::from([("topology.kubernetes.io/zone".to_owned(), "z1".to_owned())]),
    };
    let other_zone = csi::Topology {
        segments: HashMap::from([("topology.kubernetes.io/zone".to_owned(), "z2".to_owned())]),
    };
    assert!(poll_capacity(&mut ctl, &seg).await.0 > 0);
    assert!(poll_capacity(&mut ctl, &zone_only).await.0 > 0);
    assert_eq!(poll_capacity(&mut ctl, &other_zone).await, (0, 0));
    let mut req = create_req("pvc-z", MIB);
    req.accessibility_requirements = Some(csi::TopologyRequirement {
        requisite: vec![other_zone],
        preferred: vec![],
    });
    expect_code(ctl.create_volume(req).await, Code::ResourceExhausted);
    let v = create(&mut ctl, "pvc-z1", MIB).await;
    assert_eq!(v.accessible_topology, vec![seg]);
}

#[tokio::test]
async fn two_nodes_on_one_machine_keep_to_their_own() {
    let a = Server::start("node-a", &["--capacity", "1Gi"]);
    let b = Server::start("node-b", &["--capacity", "1Gi"]);
    let (mut ca, mut cb) = (a.controller().await, b.controller().await);
    let (seg_a, seg_b) = (topology("node-a"), topology("node-b"));

    // Each provisions only for its own segment.
    let with_req = |name: &str, seg: &csi::Topology| {
        let mut r = create_req(name, 64 * MIB);
        r.accessibility_requirements = strict_topology(seg);
        r
    };
    let va = create_with(&mut ca, with_req("pvc-a", &seg_a)).await;
    let vb = create_with(&mut cb, with_req("pvc-b", &seg_b)).await;
    assert_eq!(va.accessible_topology, vec![seg_a.clone()]);
    assert_eq!(vb.accessible_topology, vec![seg_b.clone()]);
    expect_code(
        ca.create_volume(with_req("pvc-x", &seg_b)).await,
        Code::ResourceExhausted,
    );
    expect_code(
        cb.create_volume(with_req("pvc-x", &seg_a)).await,
        Code::ResourceExhausted,
    );
    // The same claim name on two nodes gives two different volumes.
    let same_a = create_with(&mut ca, with_req("pvc-same", &seg_a)).await;
    let same_b = create_with(&mut cb, with_req("pvc-same", &seg_b)).await;
    assert_ne!(same_a.volume_id, same_b.volume_id);

    // Capacity: own segment shows what is left, the other's is 0.
    assert_eq!(poll_capacity(&mut ca, &seg_a).await.0, GIB - 128 * MIB);
    assert_eq!(poll_capacity(&mut ca, &seg_b).await, (0, 0));
    assert_eq!(poll_capacity(&mut cb, &seg_a).await, (0, 0));

    // The other node's volumes are refused by name, never treated as "not found, so gone".
    let st = expect_code(
        ca.delete_volume(delete_req(&vb.volume_id)).await,
        Code::FailedPrecondition,
    );
    assert!(st.message().contains("node-b"), "{}", st.message());
    let st = expect_code(
        ca.controller_get_volume(csi::ControllerGetVolumeRequest {
            volume_id: vb.volume_id.clone(),
        })
        .await,
        Code::FailedPrecondition,
    );
    assert!(st.message().contains("node-b"), "{}", st.message());
    assert!(
        b.volume_dir(&vb.volume_id).is_dir(),
        "node-b's volume is untouched"
    );
    let ids_a = list_ids(&mut ca).await;
    assert!(ids_a.contains(&va.volume_id) && !ids_a.contains(&vb.volume_id));

    // Each deletes its own.
    for (c, v) in [(&mut ca, [&va, &same_a]), (&mut cb, [&vb, &same_b])] {
        for v in v {
            delete(c, &v.volume_id).await;
        }
    }
    assert_eq!(poll_capacity(&mut ca, &seg_a).await.0, GIB);
    assert_eq!(poll_capacity(&mut cb, &seg_b).await.0, GIB);
}

#[tokio::test]
async fn sigterm_exits_promptly_while_sidecars_stay_connected() {
    // The provisioner, registrar and livenessprobe keep their connections open for ever; a stopping pod must not
    // wait for them to hang up.
    let mut srv = Server::start(NODE, &[]);
    let mut id = srv.identity().await;
    let mut ctl = srv.controller().await;
    ok(id.probe(csi::ProbeRequest {}).await);
    ok(ctl.get_capacity(csi::GetCapacityRequest::default()).await);
    // stop() fails if loam has not exited 10 s after SIGTERM, well before loam's 25 s drain limit: so this
    // passes only if idle connections are not waited for.
    srv.stop();
    drop((id, ctl));
}

#[tokio::test]
async fn probe_answers_for_the_process_while_a_broken_pool_reports_itself() {
    // livenessprobe turns a failed Probe into a restart, which never brings a disk back: Probe stays ready, the pool
    // offers nothing, refuses new volumes with RESOURCE_EXHAUSTED (the provisioner tries another node) and says why
    // in GetPluginInfo's manifest (`loam client info`).
    let srv = Server::start(NODE, &[]);
    let mut id = srv.identity().await;
    let mut ctl = srv.controller().await;
    assert_eq!(ok(id.probe(csi::ProbeRequest {}).await).ready, Some(true));
    let volumes = srv.volumes_dir();
    let moved = srv.root.join("volumes-moved");
    std::fs::rename(&volumes, &moved).unwrap();
    assert_eq!(ok(id.probe(csi::ProbeRequest {}).await).ready, Some(true));
    assert_eq!(capacity(&mut ctl).await, (0, Some(0)));
    let st = expect_code(
        ctl.create_volume(create_req("pvc-broken", MIB)).await,
        Code::ResourceExhausted,
    );
    assert!(
        st.message().contains("pool default") && st.message().contains("volumes"),
        "{}",
        st.message()
    );
    let info = ok(id.get_plugin_info(csi::GetPluginInfoRequest {}).await);
    let state = &info.manifest["pool/default"];
    assert!(state.starts_with("degraded: pool default"), "{state}");
    std::fs::rename(&moved, &volumes).unwrap();
    let info = ok(id.get_plugin_info(csi::GetPluginInfoRequest {}).await);
    assert!(
        info.manifest["pool/default"].starts_with("ready: kind dir"),
        "{:?}",
        info.manifest
    );
    ok(ctl.create_volume(create_req("pvc-after", MIB)).await);
}

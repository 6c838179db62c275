//! CSI conformance: one test per csi-sanity case (csi-test v5.4, see csi-facts §2.4) that applies to loam's
//! capabilities, named after the case, plus the rules of the CSI spec that loam's design adds to (`loam_*`).
//!
//! Every test runs its own server in its own temporary directory. Tests that mount need root; they print SKIP
//! and pass otherwise (or fail with `LOAM_STRICT=1`).

mod common;

use std::{collections::HashMap, path::Path};

use common::*;
use loam::csi::{
    self, controller_service_capability, node_service_capability, plugin_capability,
    volume_capability::access_mode::Mode,
};
use loam_sys::testutil::require_root;
use tonic::Code;

/// A server with a pool of exactly 16 GiB, so capacity arithmetic is exact whatever the disk.
fn start() -> Server {
    // A dir pool offers at most what its filesystem has free: these tests count on all of its 16 GiB.
    let free = loam_sys::statfs::statfs(&std::env::temp_dir())
        .expect("statfs of the temp directory")
        .available_bytes;
    assert!(
        free >= 16 * GIB as u64,
        "the conformance tests need 16 GiB free on the temp directory's filesystem ({} has {free} bytes)",
        std::env::temp_dir().display()
    );
    Server::start(NODE, &["--capacity", "16Gi"])
}

const FOREIGN_ID: &str = "othernode_default_0123456789abcdef0123456789abcdef";

// ============================================================================================================
// Identity Service

#[tokio::test]
async fn identity_get_plugin_capabilities_should_return_appropriate_capabilities() {
    use plugin_capability::service::Type;
    let srv = start();
    assert_eq!(
        plugin_caps(&mut srv.identity().await).await,
        vec![Type::ControllerService, Type::VolumeAccessibilityConstraints]
    );
}

#[tokio::test]
async fn identity_probe_should_return_appropriate_information() {
    let srv = start();
    let r = ok(srv.identity().await.probe(csi::ProbeRequest {}).await);
    // Unset counts as ready; false would mean "still starting", which a started server is not.
    assert_ne!(r.ready, Some(false));
}

#[tokio::test]
async fn identity_get_plugin_info_should_return_appropriate_information() {
    let srv = start();
    let r = ok(srv
        .identity()
        .await
        .get_plugin_info(csi::GetPluginInfoRequest {})
        .await);
    // csi-sanity: ^[a-zA-Z][A-Za-z0-9-\.\_]{0,61}[a-zA-Z]$
    let b = r.name.as_bytes();
    assert!(
        (2..=63).contains(&b.len())
            && b[0].is_ascii_alphabetic()
            && b[b.len() - 1].is_ascii_alphabetic()
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_')),
        "bad plugin name {:?}",
        r.name
    );
    assert_eq!(r.name, "loam.csi");
    assert!(!r.vendor_version.is_empty());
}

// ============================================================================================================
// Controller Service

#[tokio::test]
async fn controller_get_capabilities_should_return_appropriate_capabilities() {
    use controller_service_capability::rpc::Type;
    let srv = start();
    assert_eq!(
        controller_caps(&mut srv.controller().await).await,
        vec![
            Type::CreateDeleteVolume,
            Type::ListVolumes,
            Type::GetCapacity,
            Type::VolumeCondition,
            Type::GetVolume,
            Type::SingleNodeMultiWriter,
        ]
    );
}

#[tokio::test]
async fn controller_get_capacity_should_return_capacity() {
    let srv = start();
    let mut ctl = srv.controller().await;
    let (available, max) = capacity(&mut ctl).await;
    assert_eq!(available, 16 * GIB);
    assert_eq!(max, Some(16 * GIB));
}

#[tokio::test]
async fn controller_list_volumes_should_return_appropriate_values() {
    let srv = start();
    let mut ctl = srv.controller().await;
    let empty = ok(ctl.list_volumes(csi::ListVolumesRequest::default()).await);
    assert!(empty.entries.is_empty(), "{empty:?}");
    assert!(empty.next_token.is_empty());

    let vol = create(&mut ctl, "list-me", GIB).await;
    let r = ok(ctl.list_volumes(csi::ListVolumesRequest::default()).await);
    assert!(r.next_token.is_empty());
    assert_eq!(r.entries.len(), 1, "{r:?}");
    let entry = &r.entries[0];
    let listed = entry.volume.as_ref().expect("entry without volume");
    assert_eq!(listed.volume_id, vol.volume_id);
    assert_eq!(listed.capacity_bytes, GIB);
    assert_eq!(listed.accessible_topology, vec![topology(NODE)]);
    let cond = entry
        .status
        .as_ref()
        .and_then(|s| s.volume_condition.as_ref())
        .expect("VOLUME_CONDITION status");
    assert!(!cond.abnormal, "{cond:?}");
}

#[tokio::test]
async fn controller_list_volumes_should_fail_when_an_invalid_starting_token_is_passed() {
    let srv = start();
    let mut ctl = srv.controller().await;
    create(&mut ctl, "some-volume", GIB).await;
    let req = csi::ListVolumesRequest {
        max_entries: 0,
        starting_token: "invalid-token".into(),
    };
    expect_code(ctl.list_volumes(req).await, Code::Aborted);
}

#[tokio::test]
async fn controller_list_volumes_check_the_presence_of_new_volumes_and_absence_of_deleted_ones() {
    let srv = start();
    let mut ctl = srv.controller().await;
    create(&mut ctl, "existing", GIB).await;
    let before = list_ids(&mut ctl).await;

    let vol = create(&mut ctl, "new-one", GIB).await;
    let after_create = list_ids(&mut ctl).await;
    assert_eq!(after_create.len(), before.len() + 1);
    assert!(after_create.contains(&vol.volume_id));

    delete(&mut ctl, &vol.volume_id).await;
    let after_delete = list_ids(&mut ctl).await;
    assert_eq!(after_delete.len(), before.len());
    assert!(!after_delete.contains(&vol.volume_id));
}

#[tokio::test]
async fn controller_create_volume_should_fail_when_no_name_is_provided() {
    let srv = start();
    let mut ctl = srv.controller().await;
    expect_code(
        ctl.create_volume(create_req("", GIB)).await,
        Code::InvalidArgument,
    );
    assert!(list_ids(&mut ctl).await.is_empty());
}

#[tokio::test]
async fn controller_create_volume_should_fail_when_no_volume_capabilities_are_provided() {
    let srv = start();
    let mut ctl = srv.controller().await;
    let req = csi::CreateVolumeRequest {
        volume_capabilities: vec![],
        ..create_req("no-caps", GIB)
    };
    expect_code(ctl.create_volume(req).await, Code::InvalidArgument);
    assert!(list_ids(&mut ctl).await.is_empty());
}

#[tokio::test]
async fn controller_create_volume_should_return_appropriate_values_single_node_writer_no_capacity() {
    let srv = start();
    let mut ctl = srv.controller().await;
    let vol = create(&mut ctl, "no-capacity", 0).await;
    assert!(!vol.volume_id.is_empty());
    // No size asked: loam's default, 1 GiB.
    assert_eq!(vol.capacity_bytes, GIB);
    assert_eq!(vol.accessible_topology, vec![topology(NODE)]);
    assert!(srv.volume_dir(&vol.volume_id).is_dir());
    assert!(srv.record_file(&vol.volume_id).is_file());
}

#[tokio::test]
async fn controller_create_volume_should_return_appropriate_values_single_node_writer_with_capacity_1gi() {
    let srv = start();
    let mut ctl = srv.controller().await;
    let vol = create(&mut ctl, "with-capacity", GIB).await;
    assert!(!vol.volume_id.is_empty());
    assert!(vol.capacity_bytes >= GIB, "{vol:?}");
    assert_eq!(vol.accessible_topology, vec![topology(NODE)]);
    assert!(srv.volume_dir(&vol.volume_id).is_dir());
}

#[tokio::test]
async fn controller_create_volume_should_not_fail_when_requesting_to_create_a_volume_with_already_existing_name_and_same_capacity()
 {
    let srv = start();
    let mut ctl = srv.controller().await;
    let first = create(&mut ctl, "twice", GIB).await;
    let second = create(&mut ctl, "twice", GIB).await;
    assert_eq!(
        first, second,
        "a repeated CreateVolume must answer the same volume"
    );
    assert_eq!(list_ids(&mut ctl).await, vec![first.volume_id.clone()]);
    assert_eq!(std::fs::read_dir(srv.volumes_dir()).unwrap().count(), 1);
}

#[tokio::test]
async fn controller_create_volume_should_fail_when_requesting_to_create_a_volume_with_already_existing_name_and_different_capacity()
 {
    let srv = start();
    let mut ctl = srv.controller().await;
    let exact = |size: i64| csi::CreateVolumeRequest {
        capacity_range: Some(csi::CapacityRange {
            required_bytes: size,
            limit_bytes: size,
        }),
        ..create_req("sized", 0)
    };
    let vol = create_with(&mut ctl, exact(GIB)).await;
    assert_eq!(
        vol.capacity_bytes, GIB,
        "required = limit must give exactly that size"
    );
    let st = expect_code(ctl.create_volume(exact(2 * GIB)).await, Code::AlreadyExists);
    assert!(st.message().contains("sized"), "{st:?}");
    // The first volume is untouched.
    assert_eq!(list_ids(&mut ctl).await, vec![vol.volume_id]);
    assert_eq!(capacity(&mut ctl).await.0, 15 * GIB);
}

#[tokio::test]
async fn controller_create_volume_should_not_fail_when_creating_volume_with_maximum_length_name() {
    let srv = start();
    let mut ctl = srv.controller().await;
    let name = "a".repeat(128);
    let vol = create(&mut ctl, &name, GIB).await;
    assert!(
        vol.volume_id.len() <= 128,
        "volume ids must fit CSI's 128 bytes: {}",
        vol.volume_id
    );
    assert_eq!(create(&mut ctl, &name, GIB).await.volume_id, vol.volume_id);
    delete(&mut ctl, &vol.volume_id).await;
}

#[tokio::test]
async fn controller_delete_volume_should_fail_when_no_volume_id_is_provided() {
    let srv = start();
    let mut ctl = srv.controller().await;
    expect_code(
        ctl.delete_volume(csi::DeleteVolumeRequest::default()).await,
        Code::InvalidArgument,
    );
}

#[tokio::test]
async fn controller_delete_volume_should_succeed_when_an_invalid_volume_id_is_used() {
    let srv = start();
    let mut ctl = srv.controller().await;
    let keep = create(&mut ctl, "keep", GIB).await;
    for id in [
        "reallyfakevolumeid",
        "node-1_default_0123456789abcdef0123456789abcdef",
    ] {
        delete(&mut ctl, id).await;
    }
    assert_eq!(list_ids(&mut ctl).await, vec![keep.volume_id.clone()]);
    assert!(srv.volume_dir(&keep.volume_id).is_dir());
}

#[tokio::test]
async fn controller_delete_volume_should_return_appropriate_values() {
    let srv = start();
    let mut ctl = srv.controller().await;
    let vol = create(&mut ctl, "delete-me", GIB).await;
    let dir = srv.volume_dir(&vol.volume_id);
    let record = srv.record_file(&vol.volume_id);
    assert!(dir.is_dir() && record.is_file());
    delete(&mut ctl, &vol.volume_id).await;
    assert!(!dir.exists(), "volume dir left behind");
    assert!(!record.exists(), "record left behind");
    assert!(list_ids(&mut ctl).await.is_empty());
    // Deleting again is not an error.
    delete(&mut ctl, &vol.volume_id).await;
    assert_eq!(capacity(&mut ctl).await.0, 16 * GIB);
}

#[tokio::test]
async fn controller_validate_volume_capabilities_should_fail_when_no_volume_id_is_provided() {
    let srv = start();
    let mut ctl = srv.controller().await;
    let req = csi::ValidateVolumeCapabilitiesRequest {
        volume_capabilities: vec![snw()],
        ..Default::default()
    };
    expect_code(ctl.validate_volume_capabilities(req).await, Code::InvalidArgument);
}

#[tokio::test]
async fn controller_validate_volume_capabilities_should_fail_when_no_volume_capabilities_are_provided() {
    let srv = start();
    let mut ctl = srv.controller().await;
    let vol = create(&mut ctl, "validate", GIB).await;
    let req = csi::ValidateVolumeCapabilitiesRequest {
        volume_id: vol.volume_id,
        ..Default::default()
    };
    expect_code(ctl.validate_volume_capabilities(req).await, Code::InvalidArgument);
}

#[tokio::test]
async fn controller_validate_volume_capabilities_should_return_appropriate_values() {
    let srv = start();
    let mut ctl = srv.controller().await;
    let vol = create(&mut ctl, "validate", GIB).await;
    for caps in [
        vec![snw()],
        vec![
            snw(),
            mount_cap(Mode::SingleNodeMultiWriter),
            mount_cap(Mode::SingleNodeReaderOnly),
        ],
    ] {
        let req = csi::ValidateVolumeCapabilitiesRequest {
            volume_id: vol.volume_id.clone(),
            volume_context: vol.volume_context.clone(),
            volume_capabilities: caps.clone(),
            ..Default::default()
        };
        let r = ok(ctl.validate_volume_capabilities(req).await);
        let confirmed = r
            .confirmed
            .unwrap_or_else(|| panic!("not confirmed: {}", r.message));
        assert_eq!(confirmed.volume_capabilities, caps);
    }
}

#[tokio::test]
async fn controller_validate_volume_capabilities_should_fail_when_the_requested_volume_does_not_exist() {
    let srv = start();
    let mut ctl = srv.controller().await;
    for id in ["some-vol-id", "node-1_default_0123456789abcdef0123456789abcdef"] {
        let req = csi::ValidateVolumeCapabilitiesRequest {
            volume_id: id.into(),
            volume_capabilities: vec![snw()],
            ..Default::default()
        };
        expect_code(ctl.validate_volume_capabilities(req).await, Code::NotFound);
    }
}

// ============================================================================================================
// Node Service

#[tokio::test]
async fn node_get_capabilities_should_return_appropriate_capabilities() {
    use node_service_capability::rpc::Type;
    let srv = start();
    assert_eq!(
        node_caps(&mut srv.node().await).await,
        vec![
            Type::StageUnstageVolume,
            Type::GetVolumeStats,
            Type::VolumeCondition,
            Type::SingleNodeMultiWriter
        ]
    );
}

#[tokio::test]
async fn node_get_info_should_return_appropriate_values() {
    let srv = start();
    let r = ok(srv.node().await.node_get_info(csi::NodeGetInfoRequest {}).await);
    assert_eq!(r.node_id, NODE);
    assert_eq!(r.max_volumes_per_node, 0);
    assert_eq!(r.accessible_topology, Some(topology(NODE)));
}

#[tokio::test]
async fn node_publish_volume_should_fail_when_no_volume_id_is_provided() {
    let srv = start();
    let staging = srv.staging_dir("staging");
    let target = srv.target_path("target");
    let req = publish_req("", &staging, &target, snw(), false);
    expect_code(
        srv.node().await.node_publish_volume(req).await,
        Code::InvalidArgument,
    );
    assert!(!target.exists());
}

#[tokio::test]
async fn node_publish_volume_should_fail_when_no_target_path_is_provided() {
    let srv = start();
    let staging = srv.staging_dir("staging");
    let req = csi::NodePublishVolumeRequest {
        target_path: String::new(),
        ..publish_req(
            "fake-vol-id-0123456789",
            &staging,
            Path::new("/unused"),
            snw(),
            false,
        )
    };
    expect_code(
        srv.node().await.node_publish_volume(req).await,
        Code::InvalidArgument,
    );
}

#[tokio::test]
async fn node_publish_volume_should_fail_when_no_volume_capability_is_provided() {
    let srv = start();
    let staging = srv.staging_dir("staging");
    let target = srv.target_path("target");
    let req = csi::NodePublishVolumeRequest {
        volume_capability: None,
        ..publish_req("fake-vol-id-0123456789", &staging, &target, snw(), false)
    };
    expect_code(
        srv.node().await.node_publish_volume(req).await,
        Code::InvalidArgument,
    );
    assert!(!target.exists());
}

#[tokio::test]
async fn node_publish_volume_with_single_node_multi_writer_capability_should_fail_when_volume_with_access_mode_single_node_single_writer_is_already_mounted_at_a_different_target_path()
 {
    const NAME: &str = "node_publish_volume_single_node_single_writer_at_other_target";
    if !require_root(NAME) {
        return;
    }
    let srv = start();
    let (mut ctl, mut node) = (srv.controller().await, srv.node().await);
    let cap = mount_cap(Mode::SingleNodeSingleWriter);
    let req = csi::CreateVolumeRequest {
        volume_capabilities: vec![cap.clone()],
        ..create_req("snsw", GIB)
    };
    let id = create_with(&mut ctl, req).await.volume_id;
    let staging = srv.staging_dir("staging");
    let target = srv.target_path("target");
    let other = srv.target_path("other_target");
    stage_and_publish(&mut node, &id, &staging, &target, cap.clone()).await;
    expect_code(
        node.node_publish_volume(publish_req(&id, &staging, &other, cap.clone(), false))
            .await,
        Code::FailedPrecondition,
    );
    assert_eq!(srv.mounts_at(&other), 0);
    assert!(
        !other.exists(),
        "a refused publish must not leave its target directory"
    );
    // The first publication is still there and repeating it is fine.
    ok(node
        .node_publish_volume(publish_req(&id, &staging, &target, cap, false))
        .await);
    assert_eq!(srv.mounts_at(&target), 1);

    unpublish_and_unstage(&mut node, &id, &staging, &target).await;
    delete(&mut ctl, &id).await;
    srv.assert_no_mounts();
}

#[tokio::test]
async fn node_unpublish_volume_should_fail_when_no_volume_id_is_provided() {
    let srv = start();
    let target = srv.target_path("target");
    expect_code(
        srv.node()
            .await
            .node_unpublish_volume(unpublish_req("", &target))
            .await,
        Code::InvalidArgument,
    );
}

#[tokio::test]
async fn node_unpublish_volume_should_fail_when_no_target_path_is_provided() {
    let srv = start();
    let req = csi::NodeUnpublishVolumeRequest {
        volume_id: "fake-vol-id-0123456789".into(),
        target_path: String::new(),
    };
    expect_code(
        srv.node().await.node_unpublish_volume(req).await,
        Code::InvalidArgument,
    );
}

#[tokio::test]
async fn node_unpublish_volume_should_remove_target_path() {
    if !require_root("node_unpublish_volume_should_remove_target_path") {
        return;
    }
    let srv = start();
    let (mut ctl, mut node) = (srv.controller().await, srv.node().await);
    let id = create(&mut ctl, "remove-target", GIB).await.volume_id;
    let staging = srv.staging_dir("staging");
    let target = srv.target_path("target");
    stage_and_publish(&mut node, &id, &staging, &target, snw()).await;
    assert!(target.is_dir(), "NodePublish must create the target");
    assert_eq!(srv.mounts_at(&target), 1);

    ok(node.node_unpublish_volume(unpublish_req(&id, &target)).await);
    assert_eq!(srv.mounts_at(&target), 0);
    assert!(
        !srv.in_ns(&target).exists(),
        "NodeUnpublish must remove the target it created"
    );
    assert!(!target.exists());
    // Again: nothing there, still OK.
    ok(node.node_unpublish_volume(unpublish_req(&id, &target)).await);

    ok(node.node_unstage_volume(unstage_req(&id, &staging)).await);
    delete(&mut ctl, &id).await;
    srv.assert_no_mounts();
}

#[tokio::test]
async fn node_stage_volume_should_fail_when_no_volume_id_is_provided() {
    let srv = start();
    let staging = srv.staging_dir("staging");
    expect_code(
        srv.node()
            .await
            .node_stage_volume(stage_req("", &staging, snw()))
            .await,
        Code::InvalidArgument,
    );
}

#[tokio::test]
async fn node_stage_volume_should_fail_when_no_staging_target_path_is_provided() {
    let srv = start();
    let req = csi::NodeStageVolumeRequest {
        staging_target_path: String::new(),
        ..stage_req("fake-vol-id-0123456789", Path::new("/unused"), snw())
    };
    expect_code(
        srv.node().await.node_stage_volume(req).await,
        Code::InvalidArgument,
    );
}

#[tokio::test]
async fn node_stage_volume_should_fail_when_no_volume_capability_is_provided() {
    let srv = start();
    let mut ctl = srv.controller().await;
    let id = create(&mut ctl, "stage-no-cap", GIB).await.volume_id;
    let staging = srv.staging_dir("staging");
    let req = csi::NodeStageVolumeRequest {
        volume_capability: None,
        publish_context: HashMap::from([("device".to_owned(), "/dev/mock".to_owned())]),
        ..stage_req(&id, &staging, snw())
    };
    expect_code(
        srv.node().await.node_stage_volume(req).await,
        Code::InvalidArgument,
    );
    if is_root() {
        assert_eq!(srv.mounts_at(&staging), 0);
    }
}

#[tokio::test]
async fn node_unstage_volume_should_fail_when_no_volume_id_is_provided() {
    let srv = start();
    let staging = srv.staging_dir("staging");
    expect_code(
        srv.node()
            .await
            .node_unstage_volume(unstage_req("", &staging))
            .await,
        Code::InvalidArgument,
    );
}

#[tokio::test]
async fn node_unstage_volume_should_fail_when_no_staging_target_path_is_provided() {
    let srv = start();
    let req = csi::NodeUnstageVolumeRequest {
        volume_id: "fake-vol-id-0123456789".into(),
        staging_target_path: String::new(),
    };
    expect_code(
        srv.node().await.node_unstage_volume(req).await,
        Code::InvalidArgument,
    );
}

#[tokio::test]
async fn node_get_volume_stats_should_fail_when_no_volume_id_is_provided() {
    let srv = start();
    expect_code(
        srv.node()
            .await
            .node_get_volume_stats(stats_req("", "some/path"))
            .await,
        Code::InvalidArgument,
    );
}

#[tokio::test]
async fn node_get_volume_stats_should_fail_when_no_volume_path_is_provided() {
    let srv = start();
    let mut ctl = srv.controller().await;
    let id = create(&mut ctl, "stats-no-path", GIB).await.volume_id;
    expect_code(
        srv.node().await.node_get_volume_stats(stats_req(&id, "")).await,
        Code::InvalidArgument,
    );
}

#[tokio::test]
async fn node_get_volume_stats_should_fail_when_volume_is_not_found() {
    let srv = start();
    let mut node = srv.node().await;
    for id in [
        "fake-vol-id-0123456789",
        "node-1_default_0123456789abcdef0123456789abcdef",
    ] {
        expect_code(
            node.node_get_volume_stats(stats_req(id, "some/path")).await,
            Code::NotFound,
        );
    }
}

#[tokio::test]
async fn node_get_volume_stats_should_fail_when_volume_does_not_exist_on_the_specified_path() {
    if !require_root("node_get_volume_stats_should_fail_when_volume_does_not_exist_on_the_specified_path") {
        return;
    }
    let srv = start();
    let (mut ctl, mut node) = (srv.controller().await, srv.node().await);
    let id = create(&mut ctl, "stats-path", GIB).await.volume_id;
    let other = create(&mut ctl, "other", GIB).await.volume_id;
    let staging = srv.staging_dir("staging");
    let other_staging = srv.staging_dir("other-staging");
    let target = srv.target_path("target");
    stage_and_publish(&mut node, &id, &staging, &target, snw()).await;
    ok(node
        .node_stage_volume(stage_req(&other, &other_staging, snw()))
        .await);

    for path in [
        "some/path".to_owned(),
        s(&srv.root),
        s(&srv.volume_dir(&id)),
        s(&other_staging),
    ] {
        expect_code(
            node.node_get_volume_stats(stats_req(&id, &path)).await,
            Code::NotFound,
        );
    }
    // The real paths work.
    ok(node.node_get_volume_stats(stats_req(&id, &s(&target))).await);
    ok(node.node_get_volume_stats(stats_req(&id, &s(&staging))).await);

    unpublish_and_unstage(&mut node, &id, &staging, &target).await;
    ok(node
        .node_unstage_volume(unstage_req(&other, &other_staging))
        .await);
    srv.assert_no_mounts();
}

/// NodeGetInfo -> CreateVolume(requisite = node topology) -> NodeStage -> NodePublish -> NodeGetVolumeStats,
/// then the reverse. `repeats` is how often NodeStage and NodePublish are sent.
async fn node_flow(srv: &Server, repeats: usize) {
    let (mut ctl, mut node) = (srv.controller().await, srv.node().await);
    let info = ok(node.node_get_info(csi::NodeGetInfoRequest {}).await);
    let topo = info.accessible_topology.expect("NodeGetInfo without topology");
    let req = csi::CreateVolumeRequest {
        accessibility_requirements: strict_topology(&topo),
        ..create_req("node-flow", GIB)
    };
    let vol = create_with(&mut ctl, req).await;
    assert_eq!(vol.accessible_topology, vec![topo]);
    let id = vol.volume_id;
    let staging = srv.staging_dir("staging");
    let target = srv.target_path("target");

    for _ in 0..repeats {
        let req = csi::NodeStageVolumeRequest {
            volume_context: vol.volume_context.clone(),
            ..stage_req(&id, &staging, snw())
        };
        ok(node.node_stage_volume(req).await);
    }
    assert_eq!(
        srv.mounts_at(&staging),
        1,
        "staging: {:?}",
        srv.mount_table().mounts_at(&staging)
    );
    for _ in 0..repeats {
        let req = csi::NodePublishVolumeRequest {
            volume_context: vol.volume_context.clone(),
            ..publish_req(&id, &staging, &target, snw(), false)
        };
        ok(node.node_publish_volume(req).await);
    }
    assert_eq!(
        srv.mounts_at(&target),
        1,
        "target: {:?}",
        srv.mount_table().mounts_at(&target)
    );
    assert_eq!(srv.mounts_at(&staging), 1);

    let stats = ok(node.node_get_volume_stats(stats_req(&id, &s(&target))).await);
    assert!(!stats.usage.is_empty());
    let (bytes, _) = usage_rows(&stats);
    assert_eq!(bytes.total, GIB);

    for _ in 0..repeats {
        ok(node.node_unpublish_volume(unpublish_req(&id, &target)).await);
    }
    assert!(!target.exists());
    for _ in 0..repeats {
        ok(node.node_unstage_volume(unstage_req(&id, &staging)).await);
    }
    srv.assert_no_mounts();
    delete(&mut ctl, &id).await;
    assert!(!srv.volume_dir(&id).exists());
}

#[tokio::test]
async fn node_should_work() {
    if !require_root("node_should_work") {
        return;
    }
    let srv = start();
    node_flow(&srv, 1).await;
}

#[tokio::test]
async fn node_should_be_idempotent() {
    if !require_root("node_should_be_idempotent") {
        return;
    }
    let srv = start();
    node_flow(&srv, 10).await;
}

// ============================================================================================================
// loam's own rules (from the CSI spec and loam's design)

#[tokio::test]
async fn loam_node_get_info_reports_flags() {
    let srv = Server::start(
        "node-7",
        &[
            "--max-volumes-per-node",
            "7",
            "--topology",
            "topology.kubernetes.io/zone=a",
        ],
    );
    let r = ok(srv.node().await.node_get_info(csi::NodeGetInfoRequest {}).await);
    assert_eq!(r.node_id, "node-7");
    assert_eq!(r.max_volumes_per_node, 7);
    let want = HashMap::from([
        (TOPOLOGY_KEY.to_owned(), "node-7".to_owned()),
        ("topology.kubernetes.io/zone".to_owned(), "a".to_owned()),
    ]);
    assert_eq!(r.accessible_topology.unwrap().segments, want);
}

#[tokio::test]
async fn loam_create_volume_name_longer_than_128_bytes_is_invalid_argument() {
    let srv = start();
    let mut ctl = srv.controller().await;
    expect_code(
        ctl.create_volume(create_req(&"a".repeat(129), GIB)).await,
        Code::InvalidArgument,
    );
    assert!(list_ids(&mut ctl).await.is_empty());
}

#[tokio::test]
async fn loam_create_volume_block_access_is_invalid_argument() {
    let srv = start();
    let mut ctl = srv.controller().await;
    let req = csi::CreateVolumeRequest {
        volume_capabilities: vec![block_cap(Mode::SingleNodeWriter)],
        ..create_req("block", GIB)
    };
    expect_code(ctl.create_volume(req).await, Code::InvalidArgument);
    assert!(list_ids(&mut ctl).await.is_empty());
    assert_eq!(std::fs::read_dir(srv.volumes_dir()).unwrap().count(), 0);
}

#[tokio::test]
async fn loam_validate_volume_capabilities_unsupported_is_not_confirmed() {
    let srv = start();
    let mut ctl = srv.controller().await;
    let vol = create(&mut ctl, "validate", GIB).await;
    let ext4 = csi::VolumeCapability {
        access_type: Some(csi::volume_capability::AccessType::Mount(
            csi::volume_capability::MountVolume {
                fs_type: "ext4".into(),
                ..Default::default()
            },
        )),
        ..snw()
    };
    for caps in [
        vec![block_cap(Mode::SingleNodeWriter)],
        vec![mount_cap(Mode::MultiNodeMultiWriter)],
        vec![snw(), ext4],
    ] {
        let req = csi::ValidateVolumeCapabilitiesRequest {
            volume_id: vol.volume_id.clone(),
            volume_capabilities: caps.clone(),
            ..Default::default()
        };
        // Unsupported capabilities are not an error: OK without `confirmed`.
        let r = ok(ctl.validate_volume_capabilities(req).await);
        assert!(r.confirmed.is_none(), "{caps:?} confirmed");
        assert!(!r.message.is_empty());
    }
}

#[tokio::test]
async fn loam_node_publish_other_readonly_at_same_target_is_already_exists() {
    if !require_root("loam_node_publish_other_readonly_at_same_target_is_already_exists") {
        return;
    }
    let srv = start();
    let (mut ctl, mut node) = (srv.controller().await, srv.node().await);
    let id = create(&mut ctl, "ro-conflict", GIB).await.volume_id;
    let staging = srv.staging_dir("staging");
    let target = srv.target_path("target");
    stage_and_publish(&mut node, &id, &staging, &target, snw()).await;
    expect_code(
        node.node_publish_volume(publish_req(&id, &staging, &target, snw(), true))
            .await,
        Code::AlreadyExists,
    );
    let table = srv.mount_table();
    let at = table.mounts_at(&target);
    assert_eq!(at.len(), 1, "{at:?}");
    assert!(
        !at[0].is_read_only(),
        "the read-write publication must stay read-write"
    );
    ok(node
        .node_publish_volume(publish_req(&id, &staging, &target, snw(), false))
        .await);

    unpublish_and_unstage(&mut node, &id, &staging, &target).await;
    srv.assert_no_mounts();
}

#[tokio::test]
async fn loam_node_stage_with_other_access_mode_at_same_path_is_already_exists() {
    if !require_root("loam_node_stage_with_other_access_mode_at_same_path_is_already_exists") {
        return;
    }
    let srv = start();
    let (mut ctl, mut node) = (srv.controller().await, srv.node().await);
    let id = create(&mut ctl, "stage-conflict", GIB).await.volume_id;
    let staging = srv.staging_dir("staging");
    ok(node.node_stage_volume(stage_req(&id, &staging, snw())).await);
    expect_code(
        node.node_stage_volume(stage_req(&id, &staging, mount_cap(Mode::SingleNodeReaderOnly)))
            .await,
        Code::AlreadyExists,
    );
    assert_eq!(srv.mounts_at(&staging), 1);
    ok(node.node_unstage_volume(unstage_req(&id, &staging)).await);
    srv.assert_no_mounts();
}

#[tokio::test]
async fn loam_node_repeat_with_other_capability_is_already_exists_also_after_restart() {
    // Same path, same read-only flag, other access mode: the mount table alone cannot tell these apart, so loam
    // keeps a note of how each mount was asked for (CSI: T1=T2, P1!=P2 is ALREADY_EXISTS).
    if !require_root("loam_node_repeat_with_other_capability_is_already_exists_also_after_restart") {
        return;
    }
    let mut srv = start();
    let id = create(&mut srv.controller().await, "cap-conflict", GIB)
        .await
        .volume_id;
    let staging = srv.staging_dir("staging");
    let target = srv.target_path("target");
    let multi = mount_cap(Mode::SingleNodeMultiWriter);
    for round in 0..2 {
        let mut node = srv.node().await;
        if round == 0 {
            stage_and_publish(&mut node, &id, &staging, &target, snw()).await;
        }
        let st = expect_code(
            node.node_stage_volume(stage_req(&id, &staging, multi.clone()))
                .await,
            Code::AlreadyExists,
        );
        assert!(st.message().contains("SingleNodeWriter"), "{}", st.message());
        expect_code(
            node.node_publish_volume(publish_req(&id, &staging, &target, multi.clone(), false))
                .await,
            Code::AlreadyExists,
        );
        // The same arguments are still fine, and nothing was mounted twice.
        ok(node.node_stage_volume(stage_req(&id, &staging, snw())).await);
        ok(node
            .node_publish_volume(publish_req(&id, &staging, &target, snw(), false))
            .await);
        assert_eq!(srv.mounts_at(&staging), 1);
        assert_eq!(srv.mounts_at(&target), 1);
        drop(node);
        if round == 0 {
            srv.restart();
        }
    }
    let mut node = srv.node().await;
    unpublish_and_unstage(&mut node, &id, &staging, &target).await;
    // With the mounts gone their notes are gone too: the other mode is accepted now.
    ok(node
        .node_stage_volume(stage_req(&id, &staging, multi.clone()))
        .await);
    ok(node.node_unstage_volume(unstage_req(&id, &staging)).await);
    srv.assert_no_mounts();
    // The notes' log, replayed, holds none.
    let log = srv.data_dir().join("node/mounts/notes.log");
    let mut live = std::collections::BTreeSet::new();
    for line in std::fs::read_to_string(&log).unwrap().lines() {
        let change: serde_json::Value = serde_json::from_str(line).unwrap();
        if let Some(p) = change["put"]["path"].as_str() {
            live.insert(p.to_owned());
        } else {
            live.remove(change["remove"].as_str().unwrap());
        }
    }
    assert!(live.is_empty(), "notes left in {}: {live:?}", log.display());
}

#[tokio::test]
async fn loam_node_publish_without_staging_path_is_failed_precondition() {
    let srv = start();
    let mut ctl = srv.controller().await;
    let id = create(&mut ctl, "no-staging", GIB).await.volume_id;
    let target = srv.target_path("target");
    let req = csi::NodePublishVolumeRequest {
        staging_target_path: String::new(),
        ..publish_req(&id, Path::new("/unused"), &target, snw(), false)
    };
    expect_code(
        srv.node().await.node_publish_volume(req).await,
        Code::FailedPrecondition,
    );
    assert!(!target.exists());
}

#[tokio::test]
async fn loam_node_publish_without_prior_stage_is_failed_precondition() {
    let srv = start();
    let mut ctl = srv.controller().await;
    let id = create(&mut ctl, "not-staged", GIB).await.volume_id;
    let staging = srv.staging_dir("staging");
    let target = srv.target_path("target");
    let st = expect_code(
        srv.node()
            .await
            .node_publish_volume(publish_req(&id, &staging, &target, snw(), false))
            .await,
        Code::FailedPrecondition,
    );
    assert!(st.message().contains("NodeStageVolume"), "{st:?}");
    assert!(!target.exists());
    if is_root() {
        srv.assert_no_mounts();
    }
}

#[tokio::test]
async fn loam_node_unstage_while_published_is_failed_precondition() {
    if !require_root("loam_node_unstage_while_published_is_failed_precondition") {
        return;
    }
    let srv = start();
    let (mut ctl, mut node) = (srv.controller().await, srv.node().await);
    let id = create(&mut ctl, "busy", GIB).await.volume_id;
    let staging = srv.staging_dir("staging");
    let target = srv.target_path("target");
    stage_and_publish(&mut node, &id, &staging, &target, snw()).await;
    let st = expect_code(
        node.node_unstage_volume(unstage_req(&id, &staging)).await,
        Code::FailedPrecondition,
    );
    assert!(
        st.message().contains(&s(&target)),
        "the message should name the publication: {st:?}"
    );
    assert_eq!(srv.mounts_at(&staging), 1);
    assert_eq!(srv.mounts_at(&target), 1);

    unpublish_and_unstage(&mut node, &id, &staging, &target).await;
    srv.assert_no_mounts();
}

#[tokio::test]
async fn loam_node_unpublish_and_unstage_when_nothing_is_there_are_ok() {
    let srv = start();
    let mut ctl = srv.controller().await;
    let id = create(&mut ctl, "idle", GIB).await.volume_id;
    let staging = srv.staging_dir("staging");
    let target = srv.target_path("target");
    let mut node = srv.node().await;
    unpublish_and_unstage(&mut node, &id, &staging, &target).await;
    assert!(
        staging.is_dir(),
        "the CO's staging directory is not loam's to remove"
    );
}

#[tokio::test]
async fn loam_create_volume_requisite_topology_excluding_node_is_resource_exhausted() {
    let srv = start();
    let mut ctl = srv.controller().await;
    let with = |requisite: Vec<csi::Topology>| csi::CreateVolumeRequest {
        accessibility_requirements: Some(csi::TopologyRequirement {
            requisite,
            preferred: vec![],
        }),
        ..create_req("elsewhere", GIB)
    };
    expect_code(
        ctl.create_volume(with(vec![topology("other-node")])).await,
        Code::ResourceExhausted,
    );
    assert!(list_ids(&mut ctl).await.is_empty());
    assert_eq!(std::fs::read_dir(srv.volumes_dir()).unwrap().count(), 0);
    assert_eq!(capacity(&mut ctl).await.0, 16 * GIB);
    // Accessible from at least one requisite segment is enough.
    let vol = create_with(&mut ctl, with(vec![topology("other-node"), topology(NODE)])).await;
    assert_eq!(vol.accessible_topology, vec![topology(NODE)]);
}

#[tokio::test]
async fn loam_create_volume_more_than_free_is_resource_exhausted() {
    let srv = Server::start(NODE, &["--capacity", "100Mi"]);
    let mut ctl = srv.controller().await;
    create(&mut ctl, "first", 60 * MIB).await;
    let st = expect_code(
        ctl.create_volume(create_req("second", 60 * MIB)).await,
        Code::ResourceExhausted,
    );
    assert!(!st.message().is_empty());
    assert_eq!(list_ids(&mut ctl).await.len(), 1);
    assert_eq!(capacity(&mut ctl).await.0, 40 * MIB);
    // Exactly what is left still fits.
    create(&mut ctl, "third", 40 * MIB).await;
    assert_eq!(capacity(&mut ctl).await, (0, Some(0)));
}

#[tokio::test]
async fn loam_create_volume_more_than_pool_is_out_of_range() {
    let srv = Server::start(NODE, &["--capacity", "100Mi"]);
    let mut ctl = srv.controller().await;
    expect_code(
        ctl.create_volume(create_req("huge", 200 * MIB)).await,
        Code::OutOfRange,
    );
    assert!(list_ids(&mut ctl).await.is_empty());
    assert_eq!(capacity(&mut ctl).await.0, 100 * MIB);
}

#[tokio::test]
async fn loam_delete_volume_of_another_node_is_failed_precondition_naming_it() {
    let srv = start();
    let mut ctl = srv.controller().await;
    let st = expect_code(
        ctl.delete_volume(delete_req(FOREIGN_ID)).await,
        Code::FailedPrecondition,
    );
    assert!(
        st.message().contains("othernode"),
        "the message must name the owning node: {st:?}"
    );
}

#[tokio::test]
async fn loam_delete_volume_while_staged_is_failed_precondition() {
    if !require_root("loam_delete_volume_while_staged_is_failed_precondition") {
        return;
    }
    let mut srv = start();
    let (mut ctl, mut node) = (srv.controller().await, srv.node().await);
    let id = create(&mut ctl, "staged", GIB).await.volume_id;
    let staging = srv.staging_dir("staging");
    let target = srv.target_path("target");
    ok(node.node_stage_volume(stage_req(&id, &staging, snw())).await);
    expect_code(ctl.delete_volume(delete_req(&id)).await, Code::FailedPrecondition);
    assert!(srv.volume_dir(&id).is_dir());
    assert!(srv.record_file(&id).is_file());
    assert_eq!(list_ids(&mut ctl).await, vec![id.clone()]);
    assert_eq!(srv.mounts_at(&staging), 1);

    // Published, then the driver restarts: where the volume is mounted is still known, from the notes' log.
    ok(node
        .node_publish_volume(publish_req(&id, &staging, &target, snw(), false))
        .await);
    drop((ctl, node));
    srv.restart();
    let (mut ctl, mut node) = (srv.controller().await, srv.node().await);
    let st = expect_code(ctl.delete_volume(delete_req(&id)).await, Code::FailedPrecondition);
    assert!(
        st.message().contains(staging.to_str().unwrap()) && st.message().contains(target.to_str().unwrap()),
        "names both places: {}",
        st.message()
    );
    let st = expect_code(
        node.node_unstage_volume(unstage_req(&id, &staging)).await,
        Code::FailedPrecondition,
    );
    assert!(
        st.message().contains(target.to_str().unwrap()),
        "{}",
        st.message()
    );
    ok(node.node_unpublish_volume(unpublish_req(&id, &target)).await);

    ok(node.node_unstage_volume(unstage_req(&id, &staging)).await);
    delete(&mut ctl, &id).await;
    assert!(!srv.volume_dir(&id).exists());
    srv.assert_no_mounts();
}

#[tokio::test]
async fn loam_volume_whose_directory_was_removed_still_unpublishes_unstages_and_deletes() {
    if !require_root("loam_volume_whose_directory_was_removed_still_unpublishes_unstages_and_deletes") {
        return;
    }
    let srv = start();
    let (mut ctl, mut node) = (srv.controller().await, srv.node().await);
    let id = create(&mut ctl, "removed", GIB).await.volume_id;
    let staging = srv.staging_dir("staging");
    let target = srv.target_path("target");
    stage_and_publish(&mut node, &id, &staging, &target, snw()).await;
    // Someone removes the volume's directory under its mounts.
    std::fs::remove_dir_all(srv.volume_dir(&id)).unwrap();

    let r = ok(node.node_get_volume_stats(stats_req(&id, &s(&target))).await);
    let cond = r.volume_condition.expect("a condition");
    assert!(cond.abnormal && cond.message.contains("missing"), "{cond:?}");
    // Where it is mounted is still known: delete refuses.
    expect_code(ctl.delete_volume(delete_req(&id)).await, Code::FailedPrecondition);
    // loam's notes say it mounted the volume at both paths, so both come down.
    ok(node.node_unpublish_volume(unpublish_req(&id, &target)).await);
    ok(node.node_unstage_volume(unstage_req(&id, &staging)).await);
    srv.assert_no_mounts();
    delete(&mut ctl, &id).await;
    assert!(list_ids(&mut ctl).await.is_empty());
}

#[tokio::test]
async fn loam_list_volumes_paginates_five_volumes_two_per_page() {
    let srv = start();
    let mut ctl = srv.controller().await;
    let mut created = Vec::new();
    for i in 0..5 {
        created.push(create(&mut ctl, &format!("page-{i}"), GIB).await.volume_id);
    }
    let all = list_ids(&mut ctl).await;
    let pages = list_pages(&mut ctl, 2).await;
    assert_eq!(
        pages.iter().map(Vec::len).collect::<Vec<_>>(),
        vec![2, 2, 1],
        "{pages:?}"
    );
    let paged: Vec<String> = pages.concat();
    assert_eq!(
        paged, all,
        "pages must list every volume once, in the order of the full listing"
    );
    let mut sorted = paged.clone();
    sorted.sort();
    sorted.dedup();
    created.sort();
    assert_eq!(sorted, created);
    expect_code(
        ctl.list_volumes(csi::ListVolumesRequest {
            max_entries: -1,
            starting_token: String::new(),
        })
        .await,
        Code::InvalidArgument,
    );
}

#[tokio::test]
async fn loam_list_volumes_pages_say_which_volumes_lost_their_directory() {
    let srv = start();
    let mut ctl = srv.controller().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(create(&mut ctl, &format!("cond-{i}"), GIB).await.volume_id);
    }
    ids.sort();
    // One directory removed, one replaced by a symlink to a directory elsewhere (never followed).
    std::fs::remove_dir_all(srv.volume_dir(&ids[1])).unwrap();
    let elsewhere = srv.root.join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    std::fs::remove_dir_all(srv.volume_dir(&ids[3])).unwrap();
    std::os::unix::fs::symlink(&elsewhere, srv.volume_dir(&ids[3])).unwrap();

    for max_entries in [0, 2] {
        let seen: Vec<(String, bool, String)> = list_entry_pages(&mut ctl, max_entries)
            .await
            .concat()
            .into_iter()
            .map(|e| {
                let cond = e.status.and_then(|s| s.volume_condition).expect("a condition");
                (e.volume.expect("a volume").volume_id, cond.abnormal, cond.message)
            })
            .collect();
        assert_eq!(
            seen.iter().map(|s| &s.0).collect::<Vec<_>>(),
            ids.iter().collect::<Vec<_>>()
        );
        for (i, (id, abnormal, message)) in seen.iter().enumerate() {
            if i == 1 || i == 3 {
                assert!(
                    *abnormal && message.contains("missing"),
                    "{id} (page size {max_entries}): {message}"
                );
            } else {
                assert!(!abnormal, "{id} (page size {max_entries}): {message}");
            }
        }
    }
}

#[tokio::test]
async fn loam_get_capacity_is_exact_and_zero_for_foreign_topology() {
    let srv = start();
    let mut ctl = srv.controller().await;
    assert_eq!(capacity(&mut ctl).await, (16 * GIB, Some(16 * GIB)));
    let vol = create(&mut ctl, "three", 3 * GIB).await;
    assert_eq!(vol.capacity_bytes, 3 * GIB);
    assert_eq!(capacity(&mut ctl).await, (13 * GIB, Some(13 * GIB)));
    // A repeated create takes nothing more.
    create(&mut ctl, "three", 3 * GIB).await;
    assert_eq!(capacity(&mut ctl).await.0, 13 * GIB);
    delete(&mut ctl, &vol.volume_id).await;
    assert_eq!(capacity(&mut ctl).await, (16 * GIB, Some(16 * GIB)));

    let at = |topo: csi::Topology| csi::GetCapacityRequest {
        accessible_topology: Some(topo),
        ..Default::default()
    };
    let mine = ok(ctl.get_capacity(at(topology(NODE))).await);
    assert_eq!(mine.available_capacity, 16 * GIB);
    let foreign = ok(ctl.get_capacity(at(topology("other-node"))).await);
    assert_eq!(foreign.available_capacity, 0);
    assert!(foreign.maximum_volume_size.unwrap_or(0) == 0, "{foreign:?}");
    // The provisioner sends StorageClass parameters unstripped: csi.storage.k8s.io/* keys are ignored.
    let req = csi::GetCapacityRequest {
        parameters: HashMap::from([("csi.storage.k8s.io/fstype".to_owned(), String::new())]),
        volume_capabilities: vec![snw()],
        accessible_topology: Some(topology(NODE)),
    };
    assert_eq!(ok(ctl.get_capacity(req).await).available_capacity, 16 * GIB);
}

#[tokio::test]
async fn loam_create_volume_unknown_parameter_is_invalid_argument_naming_the_key() {
    let srv = start();
    let mut ctl = srv.controller().await;
    let with = |name: &str, params: &[(&str, &str)]| csi::CreateVolumeRequest {
        parameters: params
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        ..create_req(name, GIB)
    };
    let st = expect_code(
        ctl.create_volume(with("colourful", &[("colour", "blue")])).await,
        Code::InvalidArgument,
    );
    assert!(
        st.message().contains("colour"),
        "the message must name the key: {st:?}"
    );
    expect_code(
        ctl.create_volume(with("nopool", &[("pool", "nope")])).await,
        Code::InvalidArgument,
    );
    assert!(list_ids(&mut ctl).await.is_empty());

    ok(ctl
        .create_volume(with("reserved", &[("csi.storage.k8s.io/pvc/name", "claim")]))
        .await);
    ok(ctl.create_volume(with("pooled", &[("pool", "default")])).await);
    assert_eq!(list_ids(&mut ctl).await.len(), 2);
}

#[tokio::test]
async fn loam_create_volume_path_like_name_stays_in_pool() {
    let srv = start();
    let mut ctl = srv.controller().await;
    let mut ids = Vec::new();
    for name in ["../../etc", "/abs/path", "a/../../b"] {
        let vol = create(&mut ctl, name, GIB).await;
        assert!(
            !vol.volume_id.contains('/') && !vol.volume_id.contains(".."),
            "{}",
            vol.volume_id
        );
        assert_eq!(create(&mut ctl, name, GIB).await.volume_id, vol.volume_id);
        assert!(srv.volume_dir(&vol.volume_id).is_dir());
        ids.push(volume_hex(&vol.volume_id).to_owned());
    }
    ids.sort();
    assert_eq!(entries(&srv.volumes_dir()), ids);
    assert_eq!(entries(&srv.root), vec!["csi.sock", "data", "loam.log"]);
    assert_eq!(entries(&srv.data_dir()), vec!["node", "pools"]);
    assert_eq!(
        entries(&srv.data_dir().join("node")),
        vec!["loam.lock", "mounts", "pools"]
    );
    assert_eq!(entries(&srv.data_dir().join("pools")), vec!["default"]);
    assert_eq!(
        entries(&srv.data_dir().join("pools/default")),
        vec!["loam-pool.json", "loam.lock", "records", "volumes"]
    );
}

#[tokio::test]
async fn loam_node_calls_with_path_like_volume_id_are_not_found() {
    let srv = start();
    let mut node = srv.node().await;
    let staging = srv.staging_dir("staging");
    let target = srv.target_path("target");
    for id in ["../../x", "/etc/passwd", "node-1_default_../../../x"] {
        expect_code(
            node.node_stage_volume(stage_req(id, &staging, snw())).await,
            Code::NotFound,
        );
        expect_code(
            node.node_publish_volume(publish_req(id, &staging, &target, snw(), false))
                .await,
            Code::NotFound,
        );
        expect_code(
            node.node_unpublish_volume(unpublish_req(id, &target)).await,
            Code::NotFound,
        );
        expect_code(
            node.node_unstage_volume(unstage_req(id, &staging)).await,
            Code::NotFound,
        );
        expect_code(
            node.node_get_volume_stats(stats_req(id, &s(&staging))).await,
            Code::NotFound,
        );
    }
    assert!(!target.exists());
    if is_root() {
        srv.assert_no_mounts();
    }
}

#[tokio::test]
async fn loam_node_paths_with_dotdot_are_invalid_argument() {
    let srv = start();
    let mut ctl = srv.controller().await;
    let id = create(&mut ctl, "dotdot", GIB).await.volume_id;
    let mut node = srv.node().await;
    let staging = srv.staging_dir("staging");
    srv.target_path("target");
    let escape = srv.root.join("mnt/../escape");
    expect_code(
        node.node_publish_volume(publish_req(&id, &staging, &escape, snw(), false))
            .await,
        Code::InvalidArgument,
    );
    expect_code(
        node.node_unpublish_volume(unpublish_req(&id, &escape)).await,
        Code::InvalidArgument,
    );
    let bad_staging = srv.root.join("mnt/../staging");
    expect_code(
        node.node_stage_volume(stage_req(&id, &bad_staging, snw())).await,
        Code::InvalidArgument,
    );
    expect_code(
        node.node_unstage_volume(unstage_req(&id, &bad_staging)).await,
        Code::InvalidArgument,
    );
    assert!(!srv.root.join("escape").exists());
    if is_root() {
        srv.assert_no_mounts();
    }
}

#[tokio::test]
async fn loam_node_relative_paths_are_invalid_argument() {
    let srv = start();
    let mut ctl = srv.controller().await;
    let id = create(&mut ctl, "relative", GIB).await.volume_id;
    let mut node = srv.node().await;
    let staging = srv.staging_dir("staging");
    let rel = Path::new("relative/target");
    expect_code(
        node.node_publish_volume(publish_req(&id, &staging, rel, snw(), false))
            .await,
        Code::InvalidArgument,
    );
    expect_code(
        node.node_unpublish_volume(unpublish_req(&id, rel)).await,
        Code::InvalidArgument,
    );
    expect_code(
        node.node_stage_volume(stage_req(&id, Path::new("staging"), snw()))
            .await,
        Code::InvalidArgument,
    );
    expect_code(
        node.node_unstage_volume(unstage_req(&id, Path::new("staging")))
            .await,
        Code::InvalidArgument,
    );
    if is_root() {
        srv.assert_no_mounts();
    }
}

#[tokio::test]
async fn loam_create_volume_concurrent_same_name() {
    let srv = start();
    let ctl = srv.controller().await;
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let mut ctl = ctl.clone();
        set.spawn(async move { ctl.create_volume(create_req("racy", GIB)).await });
    }
    let mut ids = Vec::new();
    let mut aborted = 0;
    while let Some(res) = set.join_next().await {
        match res.expect("task panicked") {
            Ok(r) => ids.push(r.into_inner().volume.unwrap().volume_id),
            Err(st) => {
                assert_eq!(
                    st.code(),
                    Code::Aborted,
                    "concurrent creates may only fail with ABORTED: {st:?}"
                );
                aborted += 1;
            }
        }
    }
    assert!(!ids.is_empty(), "all {aborted} creates were aborted");
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 1, "different volume ids for one name: {ids:?}");
    let mut ctl = ctl;
    assert_eq!(list_ids(&mut ctl).await, ids);
    assert_eq!(std::fs::read_dir(srv.volumes_dir()).unwrap().count(), 1);
    assert_eq!(std::fs::read_dir(srv.records_dir()).unwrap().count(), 1);
    assert_eq!(capacity(&mut ctl).await.0, 15 * GIB);
    // Whoever was aborted retries and gets the same volume.
    assert_eq!(create(&mut ctl, "racy", GIB).await.volume_id, ids[0]);
}

#[tokio::test]
async fn loam_create_volume_idempotent_across_restart() {
    let mut srv = start();
    let mut ctl = srv.controller().await;
    let vol = create(&mut ctl, "survivor", 3 * GIB).await;
    create(&mut ctl, "other", GIB).await;
    let before = capacity(&mut ctl).await;
    assert_eq!(before.0, 12 * GIB);
    let listed = list_ids(&mut ctl).await;
    drop(ctl);

    srv.restart();
    let mut ctl = srv.controller().await;
    assert_eq!(
        capacity(&mut ctl).await,
        before,
        "capacity accounting must be restored from the records"
    );
    assert_eq!(list_ids(&mut ctl).await, listed);
    let again = create(&mut ctl, "survivor", 3 * GIB).await;
    assert_eq!(again, vol);
    assert_eq!(capacity(&mut ctl).await, before);
    expect_code(
        ctl.create_volume(create_req("survivor", 4 * GIB)).await,
        Code::AlreadyExists,
    );
}

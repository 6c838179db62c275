//! A volume's whole life with real bind mounts, as kubelet drives it, checked against the server's mount table
//! and the files on disk; surviving a driver restart; and clean shutdown on SIGTERM.

mod common;

use std::path::Path;

use common::*;
use loam::csi::{self, volume_capability::access_mode::Mode};
use loam_sys::testutil::require_root;

const DATA: &[u8] = b"hello from a pod\n";
const BIG: usize = 1 << 20;

fn smw() -> csi::VolumeCapability {
    mount_cap(Mode::SingleNodeMultiWriter)
}

/// The one mount at `path` in the server's namespace must show volume `id`'s directory, read-only or not.
fn assert_mount_of(srv: &Server, path: &Path, id: &str, read_only: bool) {
    let table = srv.mount_table();
    let at = table.mounts_at(path);
    assert_eq!(
        at.len(),
        1,
        "expected exactly one mount at {}: {at:?}",
        path.display()
    );
    assert!(
        at[0].root.ends_with(Path::new("volumes").join(volume_hex(id))),
        "{} shows {} instead of the volume's directory",
        path.display(),
        at[0].root.display()
    );
    assert_eq!(
        at[0].is_read_only(),
        read_only,
        "{}: {:?}",
        path.display(),
        at[0].mount_options
    );
}

#[tokio::test]
async fn lifecycle_create_stage_publish_write_stats_unpublish_unstage_delete() {
    if !require_root("lifecycle_create_stage_publish_write_stats_unpublish_unstage_delete") {
        return;
    }
    let mut srv = Server::start(NODE, &["--capacity", "4Gi", "--usage-refresh-seconds", "1"]);
    let (mut ctl, mut node) = (srv.controller().await, srv.node().await);

    // Create.
    let req = csi::CreateVolumeRequest {
        volume_capabilities: vec![smw()],
        ..create_req("life", 64 * MIB)
    };
    let vol = create_with(&mut ctl, req).await;
    let id = vol.volume_id.clone();
    assert_eq!(vol.capacity_bytes, 64 * MIB);
    let voldir = srv.volume_dir(&id);
    let record = srv.record_file(&id);
    assert!(voldir.is_dir() && record.is_file());

    // Stage.
    let staging = srv.staging_dir("kubelet/staging");
    ok(node.node_stage_volume(stage_req(&id, &staging, smw())).await);
    assert_mount_of(&srv, &staging, &id, false);
    let (bytes0, inodes0) = usage_rows(&ok(node
        .node_get_volume_stats(stats_req(&id, &s(&staging)))
        .await));

    // Publish read-write and write through the target.
    let rw = srv.target_path("pod-a");
    ok(node
        .node_publish_volume(publish_req(&id, &staging, &rw, smw(), false))
        .await);
    assert!(rw.is_dir(), "NodePublish creates the target");
    assert_mount_of(&srv, &rw, &id, false);
    std::fs::write(srv.in_ns(&rw).join("hello.txt"), DATA).expect("writing through the published target");
    write_data(&srv.in_ns(&rw).join("big"), BIG).expect("writing 1 MiB through the target");
    std::fs::create_dir(srv.in_ns(&rw).join("sub")).unwrap();
    std::fs::write(srv.in_ns(&rw).join("sub/f"), DATA).unwrap();
    // The same data in the staging path and in the volume's directory; not in the bare target directory.
    assert_eq!(
        std::fs::read(srv.in_ns(&staging).join("hello.txt")).unwrap(),
        DATA
    );
    assert_eq!(std::fs::read(voldir.join("hello.txt")).unwrap(), DATA);
    assert_eq!(std::fs::read(voldir.join("sub/f")).unwrap(), DATA);
    assert!(
        !rw.join("hello.txt").exists(),
        "the write went to the target directory on the host, not the volume"
    );

    // A second target, read-only (SINGLE_NODE_MULTI_WRITER allows several).
    let ro = srv.target_path("pod-b");
    ok(node
        .node_publish_volume(publish_req(&id, &staging, &ro, smw(), true))
        .await);
    assert_mount_of(&srv, &ro, &id, true);
    assert_mount_of(&srv, &rw, &id, false);
    // The mounts live in the server's namespace only: the host (this process) sees none of them.
    let host = loam_sys::mountinfo::MountTable::read_self().unwrap();
    assert!(
        mounts_under(&host, &srv.root).is_empty(),
        "mounts leaked to the host"
    );
    assert_eq!(std::fs::read(srv.in_ns(&ro).join("hello.txt")).unwrap(), DATA);
    let err =
        std::fs::write(srv.in_ns(&ro).join("nope"), DATA).expect_err("wrote through a read-only publication");
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
    let err = std::fs::remove_file(srv.in_ns(&ro).join("hello.txt"))
        .expect_err("deleted through a read-only mount");
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
    assert!(!voldir.join("nope").exists());

    // Stats, the same through every path of the volume.
    for path in [&rw, &ro, &staging] {
        // The dir pool measures usage in the background, every second here.
        let r = stats_until(&mut node, stats_req(&id, &s(path)), |r| {
            usage_rows(r).0.used >= bytes0.used + BIG as i64
        })
        .await;
        let (bytes, inodes) = usage_rows(&r);
        assert_eq!(bytes.total, 64 * MIB);
        assert!(
            bytes.used >= bytes0.used + BIG as i64,
            "used {} after writing {BIG} (was {})",
            bytes.used,
            bytes0.used
        );
        assert!(bytes.available <= bytes.total - bytes.used, "{bytes:?}");
        assert!(bytes.available >= 0);
        // hello.txt, big, sub and sub/f.
        assert!(
            inodes.used >= inodes0.used + 4,
            "inodes {inodes:?} (were {inodes0:?})"
        );
        assert!(inodes.total >= inodes.used && inodes.available >= 0, "{inodes:?}");
        let cond = r.volume_condition.expect("VOLUME_CONDITION");
        assert!(!cond.abnormal, "{cond:?}");
    }

    // Unpublish both: mounts and target directories are gone, the data stays.
    for target in [&rw, &ro] {
        ok(node.node_unpublish_volume(unpublish_req(&id, target)).await);
        assert_eq!(srv.mounts_at(target), 0);
        assert!(!target.exists(), "{} not removed", target.display());
        assert!(!srv.in_ns(target).exists());
    }
    assert_eq!(std::fs::read(voldir.join("hello.txt")).unwrap(), DATA);

    // Unstage: the CO's staging directory stays, empty and unmounted.
    ok(node.node_unstage_volume(unstage_req(&id, &staging)).await);
    assert_eq!(srv.mounts_at(&staging), 0);
    assert!(staging.is_dir());
    assert_eq!(
        std::fs::read_dir(srv.in_ns(&staging)).unwrap().count(),
        0,
        "staging dir not empty"
    );
    srv.assert_no_mounts();

    // Delete: the volume's directory and record are gone, the capacity is back.
    delete(&mut ctl, &id).await;
    assert!(!voldir.exists(), "volume dir left behind");
    assert!(!record.exists(), "record left behind");
    assert_eq!(capacity(&mut ctl).await.0, 4 * GIB);
    assert!(list_ids(&mut ctl).await.is_empty());

    srv.assert_no_mounts();
    drop((ctl, node));
    srv.stop();
}

#[tokio::test]
async fn lifecycle_publish_and_stage_survive_server_restart() {
    if !require_root("lifecycle_publish_and_stage_survive_server_restart") {
        return;
    }
    let mut srv = Server::start(NODE, &["--capacity", "4Gi"]);
    let (mut ctl, mut node) = (srv.controller().await, srv.node().await);
    let id = create(&mut ctl, "durable", GIB).await.volume_id;
    let staging = srv.staging_dir("staging");
    let target = srv.target_path("target");
    stage_and_publish(&mut node, &id, &staging, &target, snw()).await;
    std::fs::write(srv.in_ns(&target).join("before"), DATA).unwrap();
    drop((ctl, node));

    let old_pid = srv.pid;
    srv.restart();
    assert_ne!(srv.pid, old_pid);
    let (mut ctl, mut node) = (srv.controller().await, srv.node().await);

    // The mounts outlived the driver (they belong to the node, not to the process).
    assert_mount_of(&srv, &staging, &id, false);
    assert_mount_of(&srv, &target, &id, false);
    assert_eq!(std::fs::read(srv.in_ns(&target).join("before")).unwrap(), DATA);

    // The restarted driver recognises them from the mount table: repeats add nothing, conflicts are seen.
    stage_and_publish(&mut node, &id, &staging, &target, snw()).await;
    assert_mount_of(&srv, &staging, &id, false);
    assert_mount_of(&srv, &target, &id, false);
    expect_code(
        node.node_publish_volume(publish_req(&id, &staging, &target, snw(), true))
            .await,
        tonic::Code::AlreadyExists,
    );
    expect_code(
        node.node_unstage_volume(unstage_req(&id, &staging)).await,
        tonic::Code::FailedPrecondition,
    );
    expect_code(
        ctl.delete_volume(delete_req(&id)).await,
        tonic::Code::FailedPrecondition,
    );
    let (bytes, _) = usage_rows(&ok(node.node_get_volume_stats(stats_req(&id, &s(&target))).await));
    assert_eq!(bytes.total, GIB);

    unpublish_and_unstage(&mut node, &id, &staging, &target).await;
    assert!(!target.exists());
    srv.assert_no_mounts();
    delete(&mut ctl, &id).await;
    assert!(!srv.volume_dir(&id).exists());
    drop((ctl, node));
    srv.stop();
}

#[tokio::test]
async fn lifecycle_sigterm_exits_zero_and_removes_socket() {
    let mut srv = Server::start(NODE, &["--capacity", "4Gi"]);
    let mut ctl = srv.controller().await;
    create(&mut ctl, "before-stop", GIB).await;
    drop(ctl);
    assert!(srv.socket.exists());

    let status = srv.stop();
    assert_eq!(status.code(), Some(0));
    assert!(!srv.socket.exists());
    assert!(
        loam::endpoint::connect(&srv.endpoint).await.is_err(),
        "connected to a stopped server"
    );
    // The data stays for the next start.
    assert_eq!(std::fs::read_dir(srv.volumes_dir()).unwrap().count(), 1);
}

//! CSI Node: stage, publish and measure volumes on this node with bind mounts.

use loam_engine::types::{PublishRequest, StageRequest};
use tonic::{Request, Response, Status};

use super::{Driver, convert};
use crate::csi::{self, node_server::Node, node_service_capability, volume_usage};

#[tonic::async_trait]
impl Node for Driver {
    async fn node_stage_volume(
        &self,
        req: Request<csi::NodeStageVolumeRequest>,
    ) -> Result<Response<csi::NodeStageVolumeResponse>, Status> {
        super::observe::volume_id(&req.get_ref().volume_id);
        let r = req.into_inner();
        let volume_id = convert::required(&r.volume_id, "volume_id")?.to_owned();
        let staging_path = convert::path(&r.staging_target_path, "staging_target_path")?;
        let capability = convert::one_capability(r.volume_capability.as_ref(), "volume_capability")?;
        let sreq = StageRequest {
            volume_id,
            staging_path,
            capability,
        };
        self.run(move |e| e.stage(&sreq)).await?;
        Ok(Response::new(csi::NodeStageVolumeResponse {}))
    }

    async fn node_unstage_volume(
        &self,
        req: Request<csi::NodeUnstageVolumeRequest>,
    ) -> Result<Response<csi::NodeUnstageVolumeResponse>, Status> {
        super::observe::volume_id(&req.get_ref().volume_id);
        let r = req.into_inner();
        let id = convert::required(&r.volume_id, "volume_id")?.to_owned();
        let staging = convert::path(&r.staging_target_path, "staging_target_path")?;
        self.run(move |e| e.unstage(&id, &staging)).await?;
        Ok(Response::new(csi::NodeUnstageVolumeResponse {}))
    }

    async fn node_publish_volume(
        &self,
        req: Request<csi::NodePublishVolumeRequest>,
    ) -> Result<Response<csi::NodePublishVolumeResponse>, Status> {
        super::observe::volume_id(&req.get_ref().volume_id);
        let r = req.into_inner();
        let volume_id = convert::required(&r.volume_id, "volume_id")?.to_owned();
        let target_path = convert::path(&r.target_path, "target_path")?;
        let capability = convert::one_capability(r.volume_capability.as_ref(), "volume_capability")?;
        if r.staging_target_path.is_empty() {
            return Err(Status::failed_precondition(
                "staging_target_path is required: loam has STAGE_UNSTAGE_VOLUME, so NodeStageVolume comes first",
            ));
        }
        let staging_path = convert::path(&r.staging_target_path, "staging_target_path")?;
        let preq = PublishRequest {
            volume_id,
            staging_path,
            target_path,
            capability,
            read_only: r.readonly,
        };
        self.run(move |e| e.publish(&preq)).await?;
        Ok(Response::new(csi::NodePublishVolumeResponse {}))
    }

    async fn node_unpublish_volume(
        &self,
        req: Request<csi::NodeUnpublishVolumeRequest>,
    ) -> Result<Response<csi::NodeUnpublishVolumeResponse>, Status> {
        super::observe::volume_id(&req.get_ref().volume_id);
        let r = req.into_inner();
        let id = convert::required(&r.volume_id, "volume_id")?.to_owned();
        let target = convert::path(&r.target_path, "target_path")?;
        self.run(move |e| e.unpublish(&id, &target)).await?;
        Ok(Response::new(csi::NodeUnpublishVolumeResponse {}))
    }

    async fn node_get_volume_stats(
        &self,
        req: Request<csi::NodeGetVolumeStatsRequest>,
    ) -> Result<Response<csi::NodeGetVolumeStatsResponse>, Status> {
        super::observe::volume_id(&req.get_ref().volume_id);
        let r = req.into_inner();
        let id = convert::required(&r.volume_id, "volume_id")?.to_owned();
        // Only compared with mount points, never opened: a path that is not one is NOT_FOUND, as CSI asks.
        let path = std::path::PathBuf::from(convert::required(&r.volume_path, "volume_path")?);
        let st = self.run(move |e| e.stats(&id, &path)).await?;
        let usage = |unit: volume_usage::Unit, total: u64, used: u64, available: u64| csi::VolumeUsage {
            available: convert::bytes(available),
            total: convert::bytes(total),
            used: convert::bytes(used),
            unit: unit as i32,
        };
        let mut rows = vec![usage(
            volume_usage::Unit::Bytes,
            st.bytes.total,
            st.bytes.used,
            st.bytes.available,
        )];
        if let Some(i) = st.inodes {
            rows.push(usage(volume_usage::Unit::Inodes, i.total, i.used, i.available));
        }
        Ok(Response::new(csi::NodeGetVolumeStatsResponse {
            usage: rows,
            volume_condition: Some(convert::condition(&st.abnormal)),
        }))
    }

    async fn node_get_capabilities(
        &self,
        _req: Request<csi::NodeGetCapabilitiesRequest>,
    ) -> Result<Response<csi::NodeGetCapabilitiesResponse>, Status> {
        use node_service_capability::rpc::Type;
        let rpc = |t: Type| csi::NodeServiceCapability {
            r#type: Some(node_service_capability::Type::Rpc(node_service_capability::Rpc {
                r#type: t as i32,
            })),
        };
        Ok(Response::new(csi::NodeGetCapabilitiesResponse {
            capabilities: vec![
                rpc(Type::StageUnstageVolume),
                rpc(Type::GetVolumeStats),
                rpc(Type::VolumeCondition),
                rpc(Type::SingleNodeMultiWriter),
            ],
        }))
    }

    async fn node_get_info(
        &self,
        _req: Request<csi::NodeGetInfoRequest>,
    ) -> Result<Response<csi::NodeGetInfoResponse>, Status> {
        Ok(Response::new(csi::NodeGetInfoResponse {
            node_id: self.engine.node_id().to_owned(),
            max_volumes_per_node: i64::try_from(self.engine.max_volumes_per_node()).unwrap_or(i64::MAX),
            accessible_topology: Some(convert::topology(self.engine.topology())),
        }))
    }
}

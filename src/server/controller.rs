//! CSI Controller: volumes on this node's pools. Topology always names this node.

use loam_engine::types::CreateRequest;
use tonic::{Request, Response, Status};

use super::{Driver, convert};
use crate::csi::{
    self, controller_server::Controller, controller_service_capability, list_volumes_response,
    validate_volume_capabilities_response,
};

#[tonic::async_trait]
impl Controller for Driver {
    async fn create_volume(
        &self,
        req: Request<csi::CreateVolumeRequest>,
    ) -> Result<Response<csi::CreateVolumeResponse>, Status> {
        super::observe::volume_name(&req.get_ref().name);
        let r = req.into_inner();
        convert::required(&r.name, "name")?;
        let capabilities = convert::capabilities(&r.volume_capabilities)?;
        if r.volume_content_source.is_some() {
            return Err(Status::invalid_argument(
                "volume_content_source is not supported: loam does not create volumes from snapshots or clones yet",
            ));
        }
        if !r.mutable_parameters.is_empty() {
            return Err(Status::invalid_argument(
                "mutable_parameters are not supported: loam does not advertise MODIFY_VOLUME",
            ));
        }
        let (required_bytes, limit_bytes) = match &r.capacity_range {
            Some(c) => (
                convert::non_negative(c.required_bytes, "capacity_range.required_bytes")?,
                convert::non_negative(c.limit_bytes, "capacity_range.limit_bytes")?,
            ),
            None => (0, 0),
        };
        let (requisite, preferred) = match &r.accessibility_requirements {
            Some(t) => (
                t.requisite.iter().map(convert::segment).collect(),
                t.preferred.iter().map(convert::segment).collect(),
            ),
            None => (vec![], vec![]),
        };
        let creq = CreateRequest {
            name: r.name,
            required_bytes,
            limit_bytes,
            capabilities,
            parameters: convert::params(&r.parameters),
            requisite,
            preferred,
        };
        let vol = self.run(move |e| e.create_volume(&creq)).await?;
        super::observe::volume_id(&vol.id);
        Ok(Response::new(csi::CreateVolumeResponse {
            volume: Some(convert::volume(&vol)),
        }))
    }

    async fn delete_volume(
        &self,
        req: Request<csi::DeleteVolumeRequest>,
    ) -> Result<Response<csi::DeleteVolumeResponse>, Status> {
        super::observe::volume_id(&req.get_ref().volume_id);
        let id = convert::required(&req.get_ref().volume_id, "volume_id")?.to_owned();
        self.run(move |e| e.delete_volume(&id)).await?;
        Ok(Response::new(csi::DeleteVolumeResponse {}))
    }

    async fn validate_volume_capabilities(
        &self,
        req: Request<csi::ValidateVolumeCapabilitiesRequest>,
    ) -> Result<Response<csi::ValidateVolumeCapabilitiesResponse>, Status> {
        super::observe::volume_id(&req.get_ref().volume_id);
        let r = req.into_inner();
        let id = convert::required(&r.volume_id, "volume_id")?.to_owned();
        let caps = convert::capabilities(&r.volume_capabilities)?;
        let params = convert::params(&r.parameters);
        let verdict = self
            .run(move |e| e.validate_capabilities(&id, &caps, &params))
            .await?;
        Ok(Response::new(match verdict {
            None => csi::ValidateVolumeCapabilitiesResponse {
                confirmed: Some(validate_volume_capabilities_response::Confirmed {
                    volume_context: r.volume_context,
                    volume_capabilities: r.volume_capabilities,
                    parameters: r.parameters,
                    mutable_parameters: r.mutable_parameters,
                }),
                message: String::new(),
            },
            Some(why) => csi::ValidateVolumeCapabilitiesResponse {
                confirmed: None,
                message: why,
            },
        }))
    }

    async fn list_volumes(
        &self,
        req: Request<csi::ListVolumesRequest>,
    ) -> Result<Response<csi::ListVolumesResponse>, Status> {
        let r = req.into_inner();
        let max = usize::try_from(r.max_entries).map_err(|_| {
            Status::invalid_argument(format!(
                "max_entries must not be negative (got {})",
                r.max_entries
            ))
        })?;
        let token = r.starting_token;
        let (vols, next) = self.run(move |e| e.list_volumes(&token, max)).await?;
        Ok(Response::new(csi::ListVolumesResponse {
            entries: vols
                .iter()
                .map(|v| list_volumes_response::Entry {
                    volume: Some(convert::volume(v)),
                    status: Some(list_volumes_response::VolumeStatus {
                        published_node_ids: vec![],
                        volume_condition: Some(convert::condition(&v.abnormal)),
                    }),
                })
                .collect(),
            next_token: next.unwrap_or_default(),
        }))
    }

    async fn get_capacity(
        &self,
        req: Request<csi::GetCapacityRequest>,
    ) -> Result<Response<csi::GetCapacityResponse>, Status> {
        let r = req.into_inner();
        let caps = r
            .volume_capabilities
            .iter()
            .map(convert::capability)
            .collect::<Result<Vec<_>, _>>()?;
        let params = convert::params(&r.parameters);
        let topology = r.accessible_topology.as_ref().map(convert::segment);
        let rep = self
            .run(move |e| e.capacity(&params, &caps, topology.as_ref()))
            .await?;
        Ok(Response::new(csi::GetCapacityResponse {
            available_capacity: convert::bytes(rep.available_bytes),
            maximum_volume_size: Some(convert::bytes(rep.maximum_volume_bytes)),
            minimum_volume_size: None,
        }))
    }

    async fn controller_get_capabilities(
        &self,
        _req: Request<csi::ControllerGetCapabilitiesRequest>,
    ) -> Result<Response<csi::ControllerGetCapabilitiesResponse>, Status> {
        use controller_service_capability::rpc::Type;
        let rpc = |t: Type| csi::ControllerServiceCapability {
            r#type: Some(controller_service_capability::Type::Rpc(
                controller_service_capability::Rpc { r#type: t as i32 },
            )),
        };
        Ok(Response::new(csi::ControllerGetCapabilitiesResponse {
            capabilities: vec![
                rpc(Type::CreateDeleteVolume),
                rpc(Type::ListVolumes),
                rpc(Type::GetCapacity),
                rpc(Type::GetVolume),
                rpc(Type::VolumeCondition),
                rpc(Type::SingleNodeMultiWriter),
            ],
        }))
    }

    async fn controller_get_volume(
        &self,
        req: Request<csi::ControllerGetVolumeRequest>,
    ) -> Result<Response<csi::ControllerGetVolumeResponse>, Status> {
        super::observe::volume_id(&req.get_ref().volume_id);
        let id = convert::required(&req.get_ref().volume_id, "volume_id")?.to_owned();
        let v = self.run(move |e| e.get_volume(&id)).await?;
        Ok(Response::new(csi::ControllerGetVolumeResponse {
            volume: Some(convert::volume(&v)),
            status: Some(csi::controller_get_volume_response::VolumeStatus {
                published_node_ids: vec![],
                volume_condition: Some(convert::condition(&v.abnormal)),
            }),
        }))
    }
}

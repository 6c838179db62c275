//! CSI Identity: who we are, what we offer, whether we are healthy.

use tonic::{Request, Response, Status};

use super::{Driver, status};
use crate::csi::{self, identity_server::Identity, plugin_capability};

#[tonic::async_trait]
impl Identity for Driver {
    async fn get_plugin_info(
        &self,
        _req: Request<csi::GetPluginInfoRequest>,
    ) -> Result<Response<csi::GetPluginInfoResponse>, Status> {
        Ok(Response::new(csi::GetPluginInfoResponse {
            name: self.name.clone(),
            vendor_version: self.version.clone(),
            manifest: Default::default(),
        }))
    }

    async fn get_plugin_capabilities(
        &self,
        _req: Request<csi::GetPluginCapabilitiesRequest>,
    ) -> Result<Response<csi::GetPluginCapabilitiesResponse>, Status> {
        use plugin_capability::service::Type;
        let service = |t: Type| csi::PluginCapability {
            r#type: Some(plugin_capability::Type::Service(plugin_capability::Service {
                r#type: t as i32,
            })),
        };
        Ok(Response::new(csi::GetPluginCapabilitiesResponse {
            capabilities: vec![
                service(Type::ControllerService),
                service(Type::VolumeAccessibilityConstraints),
            ],
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn probe(&self, _req: Request<csi::ProbeRequest>) -> Result<Response<csi::ProbeResponse>, Status> {
        // Pool checks stat directories, so they run on the blocking pool like every engine call.
        let engine = self.engine.clone();
        let health = tokio::task::spawn_blocking(move || engine.probe())
            .await
            .map_err(|e| Status::internal(format!("probe task failed: {e}")))?;
        match health {
            Ok(()) => Ok(Response::new(csi::ProbeResponse { ready: Some(true) })),
            Err(e) => Err(status::to_status(&e)),
        }
    }
}

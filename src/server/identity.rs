//! CSI Identity: who we are, what we offer, whether we are healthy.

use tonic::{Request, Response, Status};

use super::Driver;
use crate::csi::{self, identity_server::Identity, plugin_capability};

#[tonic::async_trait]
impl Identity for Driver {
    async fn get_plugin_info(
        &self,
        _req: Request<csi::GetPluginInfoRequest>,
    ) -> Result<Response<csi::GetPluginInfoResponse>, Status> {
        // Pool health travels in the manifest, for `loam client info` and anyone debugging a node.
        let engine = self.engine.clone();
        let pools = tokio::task::spawn_blocking(move || engine.pool_status())
            .await
            .map_err(|e| Status::internal(format!("pool status task failed: {e}")))?;
        let mut manifest: std::collections::HashMap<String, String> = std::collections::HashMap::new();
        // A device pool's disks, one key each (`disk/<pool>/<identity>`), and the entries it skips.
        for p in &pools {
            for d in &p.inventory.entries {
                let value = serde_json::json!({"size": d.size, "path": d.path, "state": d.state});
                manifest.insert(format!("disk/{}/{}", p.name, d.key), value.to_string());
            }
            for (path, why) in &p.inventory.skipped {
                manifest.insert(format!("skipped/{}/{}", p.name, path.display()), why.clone());
            }
        }
        let pool_lines = pools.into_iter().map(|p| {
            let state = match &p.degraded {
                Some(reason) => format!("degraded: {reason}"),
                None => format!(
                    "ready: kind {}, {} volumes, {} of {} bytes available, sizes {}",
                    p.kind,
                    p.volumes,
                    p.available_bytes,
                    p.total_bytes,
                    if p.size_enforced {
                        "enforced"
                    } else {
                        "accounted, not enforced"
                    }
                ),
            };
            (format!("pool/{}", p.name), state)
        });
        manifest.extend(pool_lines);
        Ok(Response::new(csi::GetPluginInfoResponse {
            name: self.name.clone(),
            vendor_version: self.version.clone(),
            manifest,
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

    /// Answers for the process, not for its pools: the livenessprobe restarts the container on failure, which
    /// never brings a disk back. Pool health is in the logs, GetPluginInfo's manifest and `loam client info`.
    async fn probe(&self, _req: Request<csi::ProbeRequest>) -> Result<Response<csi::ProbeResponse>, Status> {
        Ok(Response::new(csi::ProbeResponse { ready: Some(true) }))
    }
}

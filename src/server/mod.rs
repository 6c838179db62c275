//! The CSI services. One `Driver` serves Identity, Controller and Node; RPC bodies check fields, call the
//! engine off the async executor, and map errors through `status`.

use std::sync::Arc;

use loam_engine::Engine;
use tonic::Status;

pub mod controller;
pub mod convert;
pub mod identity;
pub mod node;
pub mod status;

#[derive(Debug, Clone)]
pub struct Driver {
    pub engine: Arc<Engine>,
    pub name: String,
    pub version: String,
}

impl Driver {
    pub fn new(engine: Arc<Engine>, name: String) -> Self {
        Driver {
            engine,
            name,
            version: env!("CARGO_PKG_VERSION").to_owned(),
        }
    }

    /// Runs a blocking engine call on the blocking pool (mounts, fsyncs and tree walks block).
    pub async fn run<T, F>(&self, f: F) -> Result<T, Status>
    where
        T: Send + 'static,
        F: FnOnce(&Engine) -> loam_engine::Result<T> + Send + 'static,
    {
        let engine = self.engine.clone();
        match tokio::task::spawn_blocking(move || f(&engine)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                let st = status::to_status(&e);
                tracing::warn!(code = ?st.code(), message = st.message(), "request failed");
                Err(st)
            }
            Err(join) => Err(Status::internal(format!("engine task failed: {join}"))),
        }
    }
}

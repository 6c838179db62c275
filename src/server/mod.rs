//! The CSI services. One `Driver` serves Identity, Controller and Node; RPC bodies check fields, call the
//! engine off the async executor, and map errors through `status`.

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use loam_engine::Engine;
use tonic::Status;

pub mod controller;
pub mod convert;
pub mod identity;
pub mod node;
pub mod observe;
pub mod status;

#[derive(Debug, Clone)]
pub struct Driver {
    pub engine: Arc<Engine>,
    pub name: String,
    pub version: String,
    /// Engine calls running now; shutdown waits for these, not for idle connections.
    inflight: Arc<AtomicUsize>,
}

/// Counts one engine call for as long as it lives.
struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Driver {
    pub fn new(engine: Arc<Engine>, name: String) -> Self {
        Driver {
            engine,
            name,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            inflight: Arc::default(),
        }
    }

    /// Engine calls running now.
    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::SeqCst)
    }

    /// Runs a blocking engine call on the blocking pool (mounts, fsyncs and tree walks block).
    pub async fn run<T, F>(&self, f: F) -> Result<T, Status>
    where
        T: Send + 'static,
        F: FnOnce(&Engine) -> loam_engine::Result<T> + Send + 'static,
    {
        let engine = self.engine.clone();
        // The engine's own log lines belong to the call's span.
        let span = tracing::Span::current();
        self.inflight.fetch_add(1, Ordering::SeqCst);
        // Moved into the task, so the count drops when the engine call ends even if the RPC was cancelled.
        let counted = InFlight(self.inflight.clone());
        match tokio::task::spawn_blocking(move || {
            let _counted = counted;
            let _span = span.enter();
            f(&engine)
        })
        .await
        {
            Ok(Ok(v)) => Ok(v),
            // The call's one log line (observe) gives the code and the message.
            Ok(Err(e)) => Err(status::to_status(&e)),
            Err(join) => Err(Status::internal(format!("engine task failed: {join}"))),
        }
    }
}

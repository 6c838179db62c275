//! The CSI services. One `Driver` serves Identity, Controller and Node; RPC bodies check fields, call the
//! engine off the async executor, and map errors through `status`.

use std::{
    panic::AssertUnwindSafe,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use loam_engine::Engine;
use tokio::runtime::RuntimeFlavor;
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

    /// Runs a blocking engine call (mounts, fsyncs and tree walks block). On the multi-threaded runtime it runs
    /// on this thread with `block_in_place`, which first hands this worker's other tasks to another thread: a
    /// disk that stops answering then holds one thread, never Probe or another pool's calls, and the call costs
    /// no wake-up of a second thread and back (about 0.15 ms a call on a virtual machine). Elsewhere (tests on a
    /// single-threaded runtime) it goes to the blocking pool.
    pub async fn run<T, F>(&self, f: F) -> Result<T, Status>
    where
        T: Send + 'static,
        F: FnOnce(&Engine) -> loam_engine::Result<T> + Send + 'static,
    {
        let engine = self.engine.clone();
        self.inflight.fetch_add(1, Ordering::SeqCst);
        let counted = InFlight(self.inflight.clone());
        let outcome = if tokio::runtime::Handle::current().runtime_flavor() == RuntimeFlavor::MultiThread {
            tokio::task::block_in_place(move || {
                let _counted = counted;
                std::panic::catch_unwind(AssertUnwindSafe(|| f(&engine))).map_err(|p| panic_text(&*p))
            })
        } else {
            // The engine's own log lines belong to the call's span.
            let span = tracing::Span::current();
            // Moved into the task, so the count drops when the engine call ends even if the RPC was cancelled.
            tokio::task::spawn_blocking(move || {
                let _counted = counted;
                let _span = span.enter();
                f(&engine)
            })
            .await
            .map_err(|join| join.to_string())
        };
        match outcome {
            Ok(Ok(v)) => Ok(v),
            // The call's one log line (observe) gives the code and the message.
            Ok(Err(e)) => Err(status::to_status(&e)),
            Err(why) => Err(Status::internal(format!("engine task failed: {why}"))),
        }
    }
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    match (p.downcast_ref::<&str>(), p.downcast_ref::<String>()) {
        (Some(s), _) => format!("panicked: {s}"),
        (_, Some(s)) => format!("panicked: {s}"),
        _ => "panicked".to_owned(),
    }
}

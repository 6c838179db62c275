//! The CSI services. One `Driver` serves Identity, Controller and Node; RPC bodies check fields, call the
//! engine so that a blocked disk never freezes the runtime (`Driver::run`), and map errors through `status`.

use std::{
    panic::AssertUnwindSafe,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
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
    /// Whether an engine call is running inline on a runtime thread now (see [`Driver::run`]).
    inline: Arc<AtomicBool>,
}

/// Frees the inline slot when its call ends, even by a panic.
struct InlineSlot<'a>(&'a AtomicBool);

impl Drop for InlineSlot<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
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
            inline: Arc::default(),
        }
    }

    /// Engine calls running now.
    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::SeqCst)
    }

    /// Runs a blocking engine call (mounts, fsyncs and tree walks block) so that a disk that stops answering
    /// holds threads of its own, never Probe or another pool's calls. On the multi-threaded runtime (which
    /// `serve` starts with at least two threads):
    /// - one call at a time runs inline on the runtime thread that received it: it costs no wake-up of another
    ///   thread (0.1 to 0.3 ms a call on a virtual machine), and if it never returns it holds that one thread
    ///   while the others serve everything else;
    /// - any call made while that one runs first hands its thread's other tasks to another thread
    ///   (`block_in_place`), then runs where it is.
    ///
    /// On a single-threaded runtime (tests) every call goes to the blocking pool.
    pub async fn run<T, F>(&self, f: F) -> Result<T, Status>
    where
        T: Send + 'static,
        F: FnOnce(&Engine) -> loam_engine::Result<T> + Send + 'static,
    {
        let engine = self.engine.clone();
        self.inflight.fetch_add(1, Ordering::SeqCst);
        let counted = InFlight(self.inflight.clone());
        let outcome = if tokio::runtime::Handle::current().runtime_flavor() == RuntimeFlavor::MultiThread {
            let call = move || {
                let _counted = counted;
                std::panic::catch_unwind(AssertUnwindSafe(|| f(&engine))).map_err(|p| panic_text(&*p))
            };
            match self
                .inline
                .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            {
                Ok(_) => {
                    let _slot = InlineSlot(&self.inline);
                    call()
                }
                Err(_) => tokio::task::block_in_place(call),
            }
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

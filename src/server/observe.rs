//! One span and one log line per CSI call, and its metrics: a tower layer around the gRPC services. The span
//! (`rpc`, with the volume's name or ID once the handler records it) covers the handler and the engine work it
//! runs; when the call ends one line at info gives the outcome (gRPC code, milliseconds, and the error for a
//! failure), with each key once in the JSON form.

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Instant,
};

use tonic::Code;
use tower::{Layer, Service};
use tracing::{Instrument, field::Empty};

use crate::{codes::code_name, metrics::Metrics};

/// Records the volume a call is about in the call's span.
pub fn volume_id(id: &str) {
    tracing::Span::current().record("volume.id", tracing::field::display(id));
}

/// Records the name of the volume a call creates in the call's span.
pub fn volume_name(name: &str) {
    tracing::Span::current().record("volume.name", tracing::field::display(name));
}

#[derive(Debug, Clone, Default)]
pub struct ObserveLayer {
    metrics: Arc<Metrics>,
}

impl ObserveLayer {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        ObserveLayer { metrics }
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Observe<S> {
        Observe {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Observe<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

/// The method of a gRPC path, `/csi.v1.Controller/CreateVolume` → `CreateVolume`.
fn rpc_name(path: &str) -> String {
    path.rsplit('/').next().unwrap_or(path).to_owned()
}

/// The code and message of a response: an error answer carries `grpc-status` in its headers; an answer
/// without one is a success (its status follows in the trailers).
fn outcome(headers: &http::HeaderMap) -> (Code, String) {
    let code = headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map_or(Code::Ok, Code::from_i32);
    let message = headers
        .get("grpc-message")
        .map(|v| percent_decode(v.as_bytes()))
        .unwrap_or_default();
    (code, message)
}

/// gRPC's percent-encoding of `grpc-message`.
fn percent_decode(raw: &[u8]) -> String {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let hex = raw.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match (raw[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl<S, B, RB> Service<http::Request<B>> for Observe<S>
where
    S: Service<http::Request<B>, Response = http::Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let rpc = rpc_name(req.uri().path());
        let span = tracing::info_span!("rpc", rpc = %rpc, volume.id = Empty, volume.name = Empty);
        // The clone that was made ready serves this call; the fresh one waits for the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let metrics = self.metrics.clone();
        Box::pin(async move {
            metrics.started();
            let start = Instant::now();
            let res = inner.call(req).instrument(span.clone()).await;
            let took = start.elapsed();
            let (code, error) = match &res {
                Ok(r) => outcome(r.headers()),
                Err(_) => (Code::Unknown, "the transport failed".to_owned()),
            };
            metrics.finished(&rpc, code_name(code), took);
            // Milliseconds to the microsecond: a log line, not a float's every digit.
            let ms = (took.as_secs_f64() * 1e6).round() / 1e3;
            let _entered = span.enter();
            match code {
                Code::Ok => tracing::info!(code = "OK", ms, "done"),
                Code::Internal | Code::Unknown | Code::DataLoss => {
                    tracing::warn!(code = code_name(code), ms, error = %error, "failed")
                }
                _ => tracing::info!(code = code_name(code), ms, error = %error, "refused"),
            }
            res
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_reads_the_trailers_only_status() {
        let mut h = http::HeaderMap::new();
        assert_eq!(outcome(&h), (Code::Ok, String::new()));
        h.insert("grpc-status", "5".parse().unwrap());
        h.insert(
            "grpc-message",
            "volume%20x%20does%20not%20exist%3A%20100%25".parse().unwrap(),
        );
        assert_eq!(
            outcome(&h),
            (Code::NotFound, "volume x does not exist: 100%".to_owned())
        );
        assert_eq!(percent_decode(b"bad %zz end%"), "bad %zz end%");
        assert_eq!(rpc_name("/csi.v1.Controller/CreateVolume"), "CreateVolume");
    }
}

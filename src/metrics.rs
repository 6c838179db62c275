//! Prometheus metrics (`--metrics-address`): calls by RPC and code, latency by RPC and calls in flight, counted
//! as they happen; and, measured at each scrape, every pool's capacity, reserved, available and used bytes, its
//! volumes by state, whether it is degraded and why, a device pool's disks by state, the loop devices attached,
//! and what start-up reconciliation repaired. `docs/metrics.md` lists every series.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use http_body_util::Full;
use hyper::{Request, Response, body::Bytes, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use loam_engine::Engine;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    rpc: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabels {
    rpc: String,
}

type Histograms = Family<RpcLabels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 50 µs to about 13 s.
    Histogram::new(exponential_buckets(0.00005, 2.0, 19))
}

/// The counters the gRPC layer updates on every call.
#[derive(Debug)]
pub struct Metrics {
    calls: Family<CallLabels, Counter>,
    latency: Histograms,
    in_flight: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            calls: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            in_flight: Gauge::default(),
        }
    }
}

impl Metrics {
    pub fn started(&self) {
        self.in_flight.inc();
    }

    /// One call of `rpc` ended with `code` after `took`.
    pub fn finished(&self, rpc: &str, code: &str, took: Duration) {
        self.in_flight.dec();
        self.calls
            .get_or_create(&CallLabels {
                rpc: rpc.to_owned(),
                code: code.to_owned(),
            })
            .inc();
        self.latency
            .get_or_create(&RpcLabels { rpc: rpc.to_owned() })
            .observe(took.as_secs_f64());
    }

    /// The registry to encode: these counters and the engine's state, read at each scrape.
    pub fn registry(self: &Arc<Self>, engine: Arc<Engine>) -> Registry {
        let mut r = Registry::with_prefix("loam");
        r.register(
            "rpc_calls",
            "CSI calls answered, by RPC and gRPC code",
            self.calls.clone(),
        );
        r.register(
            "rpc_duration_seconds",
            "Time to answer a CSI call, by RPC",
            self.latency.clone(),
        );
        r.register(
            "rpc_in_flight",
            "CSI calls being answered now",
            self.in_flight.clone(),
        );
        r.register_collector(Box::new(EngineCollector { engine }));
        r
    }
}

/// The engine's state, measured when scraped.
#[derive(Debug)]
struct EngineCollector {
    engine: Arc<Engine>,
}

type Labeled = Family<Vec<(String, String)>, Gauge>;

fn gauge(family: &Labeled, labels: &[(&str, &str)], value: u64) {
    let key = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    family
        .get_or_create(&key)
        .set(i64::try_from(value).unwrap_or(i64::MAX));
}

fn emit(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    family: &Labeled,
) -> Result<(), std::fmt::Error> {
    let m = enc.encode_descriptor(name, help, None, family.metric_type())?;
    family.encode(m)
}

/// The state word of a device-pool disk's state text, as a label value.
fn disk_state(text: &str) -> &'static str {
    const STATES: [(&str, &str); 9] = [
        ("free", "free"),
        ("in use", "in_use"),
        ("being given", "in_use"),
        ("not adopted", "not_adopted"),
        ("busy", "busy"),
        ("cleanup failed", "cleanup_failed"),
        ("cleaning", "cleaning"),
        ("to be cleaned", "cleaning"),
        ("missing", "missing"),
    ];
    STATES
        .iter()
        .find(|(prefix, _)| text.starts_with(prefix))
        .map_or("other", |(_, s)| s)
}

impl Collector for EngineCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let pools = self.engine.pool_status();
        let fams: [(&str, &str, Labeled); 8] = [
            (
                "pool_capacity_bytes",
                "Bytes the pool may hand out (a device pool: its disks')",
                Labeled::default(),
            ),
            (
                "pool_reserved_bytes",
                "Bytes promised to the pool's volumes",
                Labeled::default(),
            ),
            (
                "pool_available_bytes",
                "Bytes a new volume may take now (what GetCapacity offers)",
                Labeled::default(),
            ),
            (
                "pool_used_bytes",
                "Bytes the pool's volumes have written",
                Labeled::default(),
            ),
            (
                "pool_volumes",
                "Volumes in the pool, by state (ready, quarantined)",
                Labeled::default(),
            ),
            (
                "pool_degraded",
                "1 when the pool is degraded (takes no volumes), with the reason",
                Labeled::default(),
            ),
            (
                "pool_disks",
                "A device pool's disks, by state",
                Labeled::default(),
            ),
            (
                "loop_devices_attached",
                "Loop devices attached to the pool's image files",
                Labeled::default(),
            ),
        ];
        let [cap, res, avail, used, vols, degr, disks, loops] = &fams;
        for p in &pools {
            let base = [("pool", p.name.as_str()), ("kind", p.kind)];
            gauge(&cap.2, &base, p.total_bytes);
            gauge(&res.2, &base, p.reserved_bytes);
            gauge(&avail.2, &base, p.available_bytes);
            gauge(&used.2, &base, p.used_bytes);
            let ready = p.volumes.saturating_sub(p.quarantined) as u64;
            gauge(&vols.2, &[("pool", &p.name), ("state", "ready")], ready);
            gauge(
                &vols.2,
                &[("pool", &p.name), ("state", "quarantined")],
                p.quarantined as u64,
            );
            let reason = p.degraded.as_deref().unwrap_or("");
            gauge(
                &degr.2,
                &[("pool", &p.name), ("reason", reason)],
                u64::from(p.degraded.is_some()),
            );
            if p.kind == "device" {
                let mut by_state = std::collections::BTreeMap::<&str, u64>::new();
                for s in [
                    "free",
                    "in_use",
                    "not_adopted",
                    "busy",
                    "cleaning",
                    "cleanup_failed",
                    "missing",
                ] {
                    by_state.insert(s, 0);
                }
                for d in &p.inventory.entries {
                    *by_state.entry(disk_state(&d.state)).or_default() += 1;
                }
                for (state, n) in by_state {
                    gauge(&disks.2, &[("pool", &p.name), ("state", state)], n);
                }
            }
            if p.kind == "image" {
                gauge(&loops.2, &[("pool", &p.name)], p.loop_devices as u64);
            }
        }
        for (name, help, family) in &fams {
            emit(&mut enc, name, help, family)?;
        }
        let repairs = ConstCounter::new(self.engine.repairs());
        let m = enc.encode_descriptor(
            "reconcile_repairs",
            "Repairs start-up reconciliation made: interrupted operations finished, stale mount notes dropped",
            None,
            repairs.metric_type(),
        )?;
        repairs.encode(m)
    }
}

/// Binds the metrics address (before the CSI socket is served, so a taken port stops start-up).
pub async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the metrics address {addr}"))?;
    tracing::info!(address = %listener.local_addr().unwrap_or(addr), "serving metrics at /metrics");
    Ok(listener)
}

/// Serves `GET /metrics` on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, registry: Registry) -> anyhow::Result<()> {
    let registry = Arc::new(registry);
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot accept a metrics connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let registry = registry.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                let registry = registry.clone();
                async move { Ok::<_, std::convert::Infallible>(answer(&req, registry).await) }
            });
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                tracing::debug!(error = %e, "metrics connection ended");
            }
        });
    }
}

async fn answer(req: &Request<hyper::body::Incoming>, registry: Arc<Registry>) -> Response<Full<Bytes>> {
    let reply = |status: u16, ctype: &str, body: String| {
        Response::builder()
            .status(status)
            .header("content-type", ctype)
            .body(Full::new(Bytes::from(body)))
            .expect("a valid response")
    };
    if req.uri().path() != "/metrics" {
        return reply(404, "text/plain", "not found: metrics are at /metrics\n".into());
    }
    if req.method() != hyper::Method::GET {
        return reply(405, "text/plain", "use GET\n".into());
    }
    // Reading the pools blocks (statfs, quota), so off the executor.
    let text = tokio::task::spawn_blocking(move || {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).map(|()| out)
    })
    .await;
    match text {
        Ok(Ok(body)) => reply(
            200,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            body,
        ),
        Ok(Err(e)) => reply(500, "text/plain", format!("encoding metrics: {e}\n")),
        Err(e) => reply(500, "text/plain", format!("encoding metrics: {e}\n")),
    }
}

#[cfg(test)]
mod tests {
    use super::disk_state;

    #[test]
    fn disk_states_are_classed() {
        assert_eq!(disk_state("free"), "free");
        assert_eq!(disk_state("in use by volume n1_ssd_x"), "in_use");
        assert_eq!(
            disk_state("in use by volume x, missing (last seen at /d)"),
            "in_use"
        );
        assert_eq!(disk_state("not adopted: holds data (ext4); ..."), "not_adopted");
        assert_eq!(disk_state("cleaning (discard, 40%)"), "cleaning");
        assert_eq!(disk_state("cleanup failed: EBUSY"), "cleanup_failed");
        assert_eq!(disk_state("missing; cleaned when it returns"), "missing");
        assert_eq!(disk_state("busy: mounted at /x"), "busy");
    }
}

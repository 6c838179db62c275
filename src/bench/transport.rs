//! The transport's own cost: empty calls (GetPluginCapabilities, which any CSI driver answers from memory) at
//! the run's concurrency, over the same socket. Beside the floor it bounds what any driver could reach here: a
//! cycle can be no faster than the floor's work plus six calls that each cost what an empty one does.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, anyhow};
use serde_json::{Value, json};
use tonic::transport::Channel;

use super::{RPCS, latency_json, stats::Samples};
use crate::csi::{self, identity_client::IdentityClient};

/// Empty calls made, how long they took and, given the driver's pid, the CPU time it spent on them.
#[derive(Debug, Default)]
pub struct Transport {
    pub calls: u64,
    pub elapsed: Duration,
    pub samples: Samples,
    pub driver_cpu: Option<Duration>,
}

impl Transport {
    pub fn calls_per_second(&self) -> f64 {
        self.calls as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Cycles/s of a driver that does exactly the floor's work and whose calls each cost what an empty one does:
    /// at any concurrency, a cycle then takes the floor's share of the machine plus six empty calls' share.
    pub fn ceiling(&self, floor_cycles_per_second: f64) -> f64 {
        let per_cycle =
            1.0 / floor_cycles_per_second.max(1e-9) + RPCS.len() as f64 / self.calls_per_second().max(1e-9);
        1.0 / per_cycle
    }

    /// The driver's CPU time per empty call.
    pub fn driver_cpu_per_call(&self) -> Option<Duration> {
        self.driver_cpu
            .map(|c| c / u32::try_from(self.calls.max(1)).unwrap_or(u32::MAX))
    }

    /// The driver CPU per cycle of one that does exactly the floor's work and whose calls each cost what an
    /// empty one does, as a multiple of the floor's CPU per cycle: the least that any driver can reach here.
    pub fn cpu_ceiling_ratio(&self, floor_cpu_per_cycle: Duration) -> Option<f64> {
        let per_call = self.driver_cpu_per_call()?.as_secs_f64();
        let floor = floor_cpu_per_cycle.as_secs_f64().max(1e-9);
        Some((floor + RPCS.len() as f64 * per_call) / floor)
    }

    /// Adds another round's calls.
    pub fn add_run(&mut self, other: Transport) {
        self.calls += other.calls;
        self.elapsed += other.elapsed;
        self.samples.extend(&other.samples);
        self.driver_cpu = match (self.driver_cpu, other.driver_cpu) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        };
    }

    /// `{calls, calls_per_second, latency}`, the driver's CPU per call when measured, and with the floor's
    /// speed and CPU per cycle the ceilings they set.
    pub fn json(&self, floor: Option<(f64, Duration)>) -> Value {
        let mut doc = json!({
            "rpc": "GetPluginCapabilities",
            "calls": self.calls,
            "calls_per_second": self.calls_per_second(),
            "latency": latency_json(&self.samples),
        });
        if let Some(c) = self.driver_cpu_per_call() {
            doc["driver_cpu_per_call_us"] = json!(c.as_secs_f64() * 1e6);
        }
        if let Some((f, cpu)) = floor {
            doc["ceiling_cycles_per_second"] = json!(self.ceiling(f));
            doc["ceiling_ratio"] = json!(self.ceiling(f) / f.max(1e-9));
            if let Some(r) = self.cpu_ceiling_ratio(cpu) {
                doc["cpu_ceiling_ratio"] = json!(r);
            }
        }
        doc
    }
}

/// Makes `calls` empty calls, `concurrency` at a time; any failure ends the run with its message.
pub async fn empty_calls(
    channel: &Channel,
    calls: u64,
    concurrency: u64,
    timeout: Duration,
) -> anyhow::Result<Transport> {
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (mut client, next) = (IdentityClient::new(channel.clone()), next.clone());
            tokio::spawn(async move {
                let mut samples = Samples::default();
                while next.fetch_add(1, Ordering::Relaxed) < calls {
                    let mut req = tonic::Request::new(csi::GetPluginCapabilitiesRequest {});
                    req.set_timeout(timeout);
                    let start = Instant::now();
                    client
                        .get_plugin_capabilities(req)
                        .await
                        .map_err(|st| anyhow!("GetPluginCapabilities: {:?}: {}", st.code(), st.message()))?;
                    samples.push(start.elapsed());
                }
                anyhow::Ok(samples)
            })
        })
        .collect();
    let mut out = Transport::default();
    for t in tasks {
        let samples = t.await.context("an empty-call worker failed")??;
        out.calls += samples.len() as u64;
        out.samples.extend(&samples);
    }
    out.elapsed = started.elapsed();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ceiling_adds_six_calls_to_the_floor_cycle() {
        // 1,000 empty calls/s and a floor of 250 cycles/s: 4 ms + 6 ms a cycle, so 100 cycles/s.
        let t = Transport {
            calls: 1000,
            elapsed: Duration::from_secs(1),
            samples: Samples::default(),
            driver_cpu: None,
        };
        assert!((t.ceiling(250.0) - 100.0).abs() < 1e-9, "{}", t.ceiling(250.0));
        let doc = t.json(Some((250.0, Duration::from_millis(1))));
        assert!(
            (doc["ceiling_ratio"].as_f64().unwrap() - 0.4).abs() < 1e-9,
            "{doc}"
        );
        assert!(doc.get("cpu_ceiling_ratio").is_none(), "{doc}");
        assert!(t.json(None).get("ceiling_ratio").is_none());
    }

    #[test]
    fn the_cpu_ceiling_adds_six_calls_cpu_to_the_floors() {
        // Two rounds: 600 calls in 30 ms of driver CPU, then 400 in 20 ms: 50 µs a call. Against a floor that
        // spends 1 ms a cycle, six such calls make 1.3 ms, so 1.3 × the floor.
        let mut t = Transport {
            calls: 600,
            elapsed: Duration::from_secs(1),
            samples: Samples::default(),
            driver_cpu: Some(Duration::from_millis(30)),
        };
        t.add_run(Transport {
            calls: 400,
            elapsed: Duration::from_secs(1),
            samples: Samples::default(),
            driver_cpu: Some(Duration::from_millis(20)),
        });
        assert_eq!(t.driver_cpu_per_call(), Some(Duration::from_micros(50)));
        let r = t.cpu_ceiling_ratio(Duration::from_millis(1)).unwrap();
        assert!((r - 1.3).abs() < 1e-9, "{r}");
        let doc = t.json(Some((250.0, Duration::from_millis(1))));
        assert!(
            (doc["driver_cpu_per_call_us"].as_f64().unwrap() - 50.0).abs() < 1e-6,
            "{doc}"
        );
        assert!(
            (doc["cpu_ceiling_ratio"].as_f64().unwrap() - 1.3).abs() < 1e-9,
            "{doc}"
        );
        // Without the driver's pid there is nothing to say about its CPU.
        let mut none = Transport::default();
        none.add_run(Transport::default());
        assert_eq!(none.driver_cpu_per_call(), None);
    }
}

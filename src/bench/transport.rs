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

/// Empty calls made and how long they took.
#[derive(Debug, Default)]
pub struct Transport {
    pub calls: u64,
    pub elapsed: Duration,
    pub samples: Samples,
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

    /// Adds another round's calls.
    pub fn add_run(&mut self, other: Transport) {
        self.calls += other.calls;
        self.elapsed += other.elapsed;
        self.samples.extend(&other.samples);
    }

    /// `{calls, calls_per_second, latency}`, and with the floor's speed the ceiling it sets.
    pub fn json(&self, floor_cycles_per_second: Option<f64>) -> Value {
        let mut doc = json!({
            "rpc": "GetPluginCapabilities",
            "calls": self.calls,
            "calls_per_second": self.calls_per_second(),
            "latency": latency_json(&self.samples),
        });
        if let Some(f) = floor_cycles_per_second {
            doc["ceiling_cycles_per_second"] = json!(self.ceiling(f));
            doc["ceiling_ratio"] = json!(self.ceiling(f) / f.max(1e-9));
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
        };
        assert!((t.ceiling(250.0) - 100.0).abs() < 1e-9, "{}", t.ceiling(250.0));
        let doc = t.json(Some(250.0));
        assert!(
            (doc["ceiling_ratio"].as_f64().unwrap() - 0.4).abs() < 1e-9,
            "{doc}"
        );
        assert!(t.json(None).get("ceiling_ratio").is_none());
    }
}

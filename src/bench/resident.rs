//! A node with many volumes: `--populate N` creates N resident volumes (idempotently, by fixed names, so a kept set
//! is reused), then times the calls that must stay cheap however many volumes there are: GetCapacity, a
//! ListVolumes page of 100 from a random volume, ControllerGetVolume of a random volume and NodeGetVolumeStats of
//! a published one. `--startup -- COMMAND` times a driver's start until its Probe answers ready.

use std::{
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use tonic::transport::Channel;

use super::{BenchArgs, stats::Samples};
use crate::csi::{
    self, controller_client::ControllerClient, identity_client::IdentityClient, node_client::NodeClient,
};

/// The RPCs timed against the resident volumes.
pub const LOOKUPS: [&str; 4] = [
    "GetCapacity",
    "ListVolumes",
    "ControllerGetVolume",
    "NodeGetVolumeStats",
];

/// What the resident run measured.
#[derive(Debug, Default)]
pub struct Resident {
    pub volumes: Vec<String>,
    pub populate: Duration,
    pub rpcs: std::collections::BTreeMap<&'static str, Samples>,
}

impl Resident {
    pub fn json(&self) -> Value {
        let rpcs: serde_json::Map<String, Value> = LOOKUPS
            .iter()
            .map(|rpc| {
                let s = self.rpcs.get(rpc).cloned().unwrap_or_default();
                ((*rpc).to_owned(), super::latency_json(&s))
            })
            .collect();
        json!({
            "volumes": self.volumes.len(),
            "populate_seconds": self.populate.as_secs_f64(),
            "created_per_second": self.volumes.len() as f64 / self.populate.as_secs_f64().max(1e-9),
            "rpcs": rpcs,
        })
    }
}

/// A tiny deterministic generator for picking volumes (no crate for ten lines).
struct Pick(u64);

impl Pick {
    fn next(&mut self, n: usize) -> usize {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n as u64) as usize
    }
}

fn req<T>(msg: T, timeout: Duration) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.set_timeout(timeout);
    r
}

async fn timed<T>(
    samples: &mut Samples,
    what: &str,
    fut: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> anyhow::Result<T> {
    let start = Instant::now();
    let r = fut
        .await
        .map_err(|s| anyhow::anyhow!("{what}: {}: {}", crate::codes::code_name(s.code()), s.message()))?;
    samples.push(start.elapsed());
    Ok(r.into_inner())
}

/// Creates the resident volumes `concurrency` at a time; their IDs in name order.
async fn populate(
    args: &BenchArgs,
    channel: &Channel,
    cap: &csi::VolumeCapability,
) -> anyhow::Result<Vec<String>> {
    let n = args.populate as usize;
    let timeout = Duration::from_secs(args.timeout);
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency {
        let (mut ctl, next, cap) = (ControllerClient::new(channel.clone()), next.clone(), cap.clone());
        let params: std::collections::HashMap<String, String> = args.params.iter().cloned().collect();
        let size = i64::try_from(args.size).context("--size is too large")?;
        tasks.push(tokio::spawn(async move {
            let mut made = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    return Ok::<_, anyhow::Error>(made);
                }
                let r = ctl
                    .create_volume(req(
                        csi::CreateVolumeRequest {
                            name: format!("bench-resident-{i}"),
                            capacity_range: Some(csi::CapacityRange {
                                required_bytes: size,
                                limit_bytes: 0,
                            }),
                            volume_capabilities: vec![cap.clone()],
                            parameters: params.clone(),
                            ..Default::default()
                        },
                        timeout,
                    ))
                    .await
                    .map_err(|s| anyhow::anyhow!("creating resident volume {i}: {}", s.message()))?;
                let id = r.into_inner().volume.map(|v| v.volume_id).unwrap_or_default();
                made.push((i, id));
            }
        }));
    }
    let mut all = Vec::with_capacity(n);
    for t in tasks {
        all.extend(t.await.context("a populating task failed")??);
    }
    all.sort();
    Ok(all.into_iter().map(|(_, id)| id).collect())
}

/// Populates, then times the lookups, `args.lookups` calls of each, one at a time.
pub async fn run(
    args: &BenchArgs,
    channel: &Channel,
    cap: &csi::VolumeCapability,
    work: &Path,
) -> anyhow::Result<Resident> {
    let started = Instant::now();
    let volumes = populate(args, channel, cap).await?;
    let mut out = Resident {
        populate: started.elapsed(),
        ..Resident::default()
    };
    let timeout = Duration::from_secs(args.timeout);
    let mut ctl = ControllerClient::new(channel.clone());
    let mut node = NodeClient::new(channel.clone());
    let params: std::collections::HashMap<String, String> = args.params.iter().cloned().collect();
    let mut pick = Pick(0x9E37_79B9_7F4A_7C15);
    let mut cap_samples = Samples::default();
    let mut list_samples = Samples::default();
    let mut get_samples = Samples::default();
    let mut stats_samples = Samples::default();
    for _ in 0..args.lookups {
        let capacity = csi::GetCapacityRequest {
            volume_capabilities: vec![cap.clone()],
            parameters: params.clone(),
            ..Default::default()
        };
        timed(
            &mut cap_samples,
            "GetCapacity",
            ctl.get_capacity(req(capacity, timeout)),
        )
        .await?;
        let start = volumes[pick.next(volumes.len())].clone();
        let list = csi::ListVolumesRequest {
            max_entries: 100,
            starting_token: start,
        };
        timed(
            &mut list_samples,
            "ListVolumes",
            ctl.list_volumes(req(list, timeout)),
        )
        .await?;
        let id = volumes[pick.next(volumes.len())].clone();
        let get = csi::ControllerGetVolumeRequest { volume_id: id };
        timed(
            &mut get_samples,
            "ControllerGetVolume",
            ctl.controller_get_volume(req(get, timeout)),
        )
        .await?;
    }
    // One resident volume staged and published, as kubelet would poll it.
    let id = volumes[0].clone();
    let staging = work.join("resident-staging");
    let target = work.join("resident-target");
    std::fs::create_dir_all(&staging).with_context(|| format!("creating {}", staging.display()))?;
    let s = |p: &Path| p.display().to_string();
    let mut unused = Samples::default();
    timed(
        &mut unused,
        "NodeStageVolume",
        node.node_stage_volume(req(
            csi::NodeStageVolumeRequest {
                volume_id: id.clone(),
                staging_target_path: s(&staging),
                volume_capability: Some(cap.clone()),
                ..Default::default()
            },
            timeout,
        )),
    )
    .await?;
    let published = timed(
        &mut unused,
        "NodePublishVolume",
        node.node_publish_volume(req(
            csi::NodePublishVolumeRequest {
                volume_id: id.clone(),
                staging_target_path: s(&staging),
                target_path: s(&target),
                volume_capability: Some(cap.clone()),
                ..Default::default()
            },
            timeout,
        )),
    )
    .await;
    let mut polled = Ok(());
    if published.is_ok() {
        for _ in 0..args.lookups {
            let r = csi::NodeGetVolumeStatsRequest {
                volume_id: id.clone(),
                volume_path: s(&target),
                ..Default::default()
            };
            if let Err(e) = timed(
                &mut stats_samples,
                "NodeGetVolumeStats",
                node.node_get_volume_stats(req(r, timeout)),
            )
            .await
            {
                polled = Err(e);
                break;
            }
        }
    }
    let _ = node
        .node_unpublish_volume(req(
            csi::NodeUnpublishVolumeRequest {
                volume_id: id.clone(),
                target_path: s(&target),
            },
            timeout,
        ))
        .await;
    let _ = node
        .node_unstage_volume(req(
            csi::NodeUnstageVolumeRequest {
                volume_id: id,
                staging_target_path: s(&staging),
            },
            timeout,
        ))
        .await;
    let _ = std::fs::remove_dir(&staging);
    published?;
    polled?;
    out.rpcs.insert("GetCapacity", cap_samples);
    out.rpcs.insert("ListVolumes", list_samples);
    out.rpcs.insert("ControllerGetVolume", get_samples);
    out.rpcs.insert("NodeGetVolumeStats", stats_samples);
    out.volumes = volumes;
    Ok(out)
}

/// Deletes the resident volumes.
pub async fn remove(args: &BenchArgs, channel: &Channel, volumes: &[String]) -> anyhow::Result<()> {
    let timeout = Duration::from_secs(args.timeout);
    let chunks: Vec<Vec<String>> = volumes
        .chunks(volumes.len().div_ceil(args.concurrency as usize).max(1))
        .map(<[String]>::to_vec)
        .collect();
    let mut tasks = Vec::new();
    for chunk in chunks {
        let mut ctl = ControllerClient::new(channel.clone());
        tasks.push(tokio::spawn(async move {
            for id in chunk {
                ctl.delete_volume(req(
                    csi::DeleteVolumeRequest {
                        volume_id: id.clone(),
                        ..Default::default()
                    },
                    timeout,
                ))
                .await
                .map_err(|s| anyhow::anyhow!("deleting resident volume {id}: {}", s.message()))?;
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await.context("a deleting task failed")??;
    }
    Ok(())
}

/// Starts `command`, polls Probe on `endpoint` every millisecond until it answers ready, and stops the command
/// with SIGTERM: the time to ready, and the driver's memory then.
pub async fn startup(args: &BenchArgs) -> anyhow::Result<Value> {
    let Some((program, rest)) = args.command.split_first() else {
        bail!("--startup needs a command after --");
    };
    let started = Instant::now();
    let mut child = tokio::process::Command::new(program)
        .args(rest)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {program}"))?;
    let pid = child.id().context("the started command has no pid")?;
    let deadline = started + Duration::from_secs(args.timeout);
    let ready = loop {
        if Instant::now() > deadline {
            bail!("{program} did not answer Probe ready within {} s", args.timeout);
        }
        if let Some(status) = child.try_wait()? {
            bail!("{program} exited before it was ready ({status})");
        }
        if let Ok(channel) = crate::endpoint::connect(&args.endpoint).await {
            let mut id = IdentityClient::new(channel);
            if let Ok(r) = id.probe(csi::ProbeRequest {}).await
                && r.into_inner().ready.unwrap_or(true)
            {
                break started.elapsed();
            }
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    // Settled a moment, as an idle node is.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mem = super::stats::ProcSample::read(pid).ok();
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid as i32).context("a pid of 0")?,
        rustix::process::Signal::TERM,
    )?;
    let _ = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
    Ok(json!({
        "command": args.command,
        "ready_ms": ready.as_secs_f64() * 1e3,
        "rss_bytes": mem.map(|m| m.rss),
        "peak_rss_bytes": mem.map(|m| m.peak_rss),
    }))
}

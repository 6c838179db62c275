//! `loam bench`: drives a CSI endpoint through full volume cycles (CreateVolume, NodeStageVolume,
//! NodePublishVolume, NodeUnpublishVolume, NodeUnstageVolume, DeleteVolume) at a chosen concurrency, and reports
//! cycles per second, latency per RPC, errors by code and, given the driver's pid, its CPU time per cycle and
//! peak memory. With `--floor`, the same work done directly ([`floor`]) in the same run gives the machine's
//! floor, and every result is also a ratio to it.

pub mod floor;
pub mod resident;
pub mod stats;
pub mod transport;

use std::{
    collections::BTreeMap,
    io::IsTerminal,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use clap::Args;
use serde_json::{Value, json};
use tonic::transport::Channel;

use self::{
    floor::{Floor, FloorKind},
    stats::{Errors, ProcSample, Samples},
    transport::Transport,
};
use crate::{
    cli::{parse_key_value, parse_size},
    csi::{
        self, controller_client::ControllerClient, node_client::NodeClient, volume_capability,
        volume_capability::access_mode::Mode,
    },
};

/// The RPCs of one cycle, in order.
pub const RPCS: [&str; 6] = [
    "CreateVolume",
    "NodeStageVolume",
    "NodePublishVolume",
    "NodeUnpublishVolume",
    "NodeUnstageVolume",
    "DeleteVolume",
];

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Socket of the CSI driver under test.
    #[arg(long, env = "CSI_ENDPOINT", default_value = "unix:///run/loam/csi.sock")]
    pub endpoint: String,
    /// Full cycles to run in all (0 with --populate: only the lookups).
    #[arg(long, default_value_t = 200)]
    pub cycles: u64,
    /// Cycles running at once.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub concurrency: u64,
    /// Raw block volumes instead of mounted filesystems.
    #[arg(long)]
    pub block: bool,
    /// Size of each volume (suffixes K, M, G, T, Ki, Mi, Gi, Ti).
    #[arg(long, default_value = "1Mi", value_parser = parse_size)]
    pub size: u64,
    /// StorageClass parameter such as pool=fast (repeatable).
    #[arg(long = "param", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub params: Vec<(String, String)>,
    /// Directory for staging and target paths (default: a new one under /tmp); it must be reachable by the
    /// driver at the same path.
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// The driver's process ID, to report its CPU time per cycle and peak memory.
    #[arg(long)]
    pub pid: Option<u32>,
    /// Also run the floor (the same work done directly) in this directory, which should be on the pool's
    /// filesystem, and time empty calls over the socket, to report the ceiling a driver doing exactly the
    /// floor's work could reach over it; needs root.
    #[arg(long, value_name = "DIR")]
    pub floor: Option<PathBuf>,
    /// The pool kind the floor does the work of.
    #[arg(long, value_enum, default_value_t = FloorKind::Dir, requires = "floor")]
    pub floor_kind: FloorKind,
    /// Split the cycles into this many rounds, the driver's and the floor's taking turns, so that both meet the
    /// same conditions on a shared machine; the figures are over all rounds.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub rounds: u64,
    /// Print one JSON document instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Seconds to wait for each RPC.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout: u64,
    /// First create this many resident volumes (named bench-resident-N, so a kept set is reused) and time
    /// GetCapacity, ListVolumes pages of 100, ControllerGetVolume and NodeGetVolumeStats among them.
    #[arg(long, default_value_t = 0)]
    pub populate: u64,
    /// Calls of each of those RPCs to time.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub lookups: u64,
    /// Leave the resident volumes in place at the end.
    #[arg(long, requires = "populate")]
    pub keep: bool,
    /// Instead of cycles: start this driver command (which serves --endpoint), time it until Probe answers ready,
    /// report its memory, and stop it with SIGTERM. Give it after `--`.
    #[arg(long, requires = "command")]
    pub startup: bool,
    /// The command of --startup.
    #[arg(last = true, id = "command", value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// What one run measured.
#[derive(Debug, Default)]
pub struct Outcome {
    pub cycles_done: u64,
    pub cycles_failed: u64,
    pub elapsed: Duration,
    pub rpcs: BTreeMap<&'static str, Samples>,
    pub errors: Errors,
    /// First error message per (RPC, code), to show what went wrong.
    pub examples: BTreeMap<(String, String), String>,
}

impl Outcome {
    pub fn cycles_per_second(&self) -> f64 {
        self.cycles_done as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Adds another run's figures, its time included.
    fn add_run(&mut self, other: Outcome) {
        self.elapsed += other.elapsed;
        self.merge(other);
    }

    fn merge(&mut self, other: Outcome) {
        self.cycles_done += other.cycles_done;
        self.cycles_failed += other.cycles_failed;
        for (k, v) in other.rpcs {
            self.rpcs.entry(k).or_default().extend(&v);
        }
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
        for (k, v) in other.examples {
            self.examples.entry(k).or_insert(v);
        }
    }
}

/// The floor's figures.
#[derive(Debug)]
pub struct FloorOutcome {
    pub kind: FloorKind,
    pub cycles_done: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub elapsed: Duration,
    pub cpu: Duration,
}

impl FloorOutcome {
    pub fn cycles_per_second(&self) -> f64 {
        self.cycles_done as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The floor's CPU time per cycle.
    pub fn cpu_per_cycle(&self) -> Duration {
        self.cpu / u32::try_from(self.cycles_done.max(1)).unwrap_or(u32::MAX)
    }

    /// Adds another round's figures.
    fn add_run(&mut self, other: FloorOutcome) {
        self.cycles_done += other.cycles_done;
        self.errors += other.errors;
        self.elapsed += other.elapsed;
        self.cpu += other.cpu;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

/// Cycles of round `r` of `rounds` when `total` are shared out as evenly as can be.
fn round_share(total: u64, rounds: u64, r: u64) -> u64 {
    total / rounds + u64::from(r < total % rounds)
}

struct Worker {
    ctl: ControllerClient<Channel>,
    node: NodeClient<Channel>,
    cap: csi::VolumeCapability,
    params: std::collections::HashMap<String, String>,
    size: i64,
    work: PathBuf,
    timeout: Duration,
    out: Outcome,
}

impl Worker {
    /// Times one RPC; a failure is counted under its code and ends the cycle.
    async fn timed<T>(
        &mut self,
        rpc: &'static str,
        fut: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Option<T> {
        let start = Instant::now();
        let res = tokio::time::timeout(self.timeout, fut).await;
        let took = start.elapsed();
        let res =
            res.unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("no answer within the timeout")));
        match res {
            Ok(r) => {
                self.out.rpcs.entry(rpc).or_default().push(took);
                Some(r.into_inner())
            }
            Err(st) => {
                let key = (rpc.to_owned(), crate::codes::code_name(st.code()).to_owned());
                *self.out.errors.entry(key.clone()).or_default() += 1;
                self.out
                    .examples
                    .entry(key)
                    .or_insert_with(|| st.message().to_owned());
                None
            }
        }
    }

    fn req<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        r.set_timeout(self.timeout);
        r
    }

    async fn cycle(&mut self, name: String) {
        let dir = self.work.join(&name);
        let staging = dir.join("staging");
        let target = dir.join("target");
        if let Err(e) = std::fs::create_dir_all(&staging) {
            let key = ("bench".to_owned(), "IO".to_owned());
            *self.out.errors.entry(key.clone()).or_default() += 1;
            self.out.examples.entry(key).or_insert(e.to_string());
            self.out.cycles_failed += 1;
            return;
        }
        let ok = self.cycle_rpcs(&name, &staging, &target).await;
        let _ = std::fs::remove_dir(&staging);
        let _ = std::fs::remove_dir(&dir);
        if ok {
            self.out.cycles_done += 1;
        } else {
            self.out.cycles_failed += 1;
        }
    }

    async fn cycle_rpcs(&mut self, name: &str, staging: &Path, target: &Path) -> bool {
        let s = |p: &Path| p.display().to_string();
        let create = csi::CreateVolumeRequest {
            name: name.to_owned(),
            capacity_range: Some(csi::CapacityRange {
                required_bytes: self.size,
                limit_bytes: 0,
            }),
            volume_capabilities: vec![self.cap.clone()],
            parameters: self.params.clone(),
            ..Default::default()
        };
        let mut ctl = self.ctl.clone();
        let Some(created) = self
            .timed("CreateVolume", ctl.create_volume(self.req(create)))
            .await
        else {
            return false;
        };
        let Some(vol) = created.volume else {
            return false;
        };
        let id = vol.volume_id;
        let mut node = self.node.clone();
        let stage = csi::NodeStageVolumeRequest {
            volume_id: id.clone(),
            staging_target_path: s(staging),
            volume_capability: Some(self.cap.clone()),
            volume_context: vol.volume_context.clone(),
            ..Default::default()
        };
        let mut ok = self
            .timed("NodeStageVolume", node.node_stage_volume(self.req(stage)))
            .await
            .is_some();
        if ok {
            let publish = csi::NodePublishVolumeRequest {
                volume_id: id.clone(),
                staging_target_path: s(staging),
                target_path: s(target),
                volume_capability: Some(self.cap.clone()),
                volume_context: vol.volume_context.clone(),
                ..Default::default()
            };
            ok = self
                .timed("NodePublishVolume", node.node_publish_volume(self.req(publish)))
                .await
                .is_some();
        }
        // Undone whatever happened before, so a failed cycle leaves nothing behind.
        let unpublish = csi::NodeUnpublishVolumeRequest {
            volume_id: id.clone(),
            target_path: s(target),
        };
        ok &= self
            .timed(
                "NodeUnpublishVolume",
                node.node_unpublish_volume(self.req(unpublish)),
            )
            .await
            .is_some();
        let unstage = csi::NodeUnstageVolumeRequest {
            volume_id: id.clone(),
            staging_target_path: s(staging),
        };
        ok &= self
            .timed("NodeUnstageVolume", node.node_unstage_volume(self.req(unstage)))
            .await
            .is_some();
        let delete = csi::DeleteVolumeRequest {
            volume_id: id,
            ..Default::default()
        };
        ok &= self
            .timed("DeleteVolume", ctl.delete_volume(self.req(delete)))
            .await
            .is_some();
        ok
    }
}

/// A progress line on stderr, at most once a second, when stderr is a terminal or the run is long.
struct Progress {
    started: Instant,
    last: Mutex<Instant>,
    total: u64,
    show: bool,
}

impl Progress {
    fn new(total: u64) -> Progress {
        let now = Instant::now();
        Progress {
            started: now,
            last: Mutex::new(now),
            total,
            show: std::io::stderr().is_terminal(),
        }
    }

    fn tick(&self, what: &str, done: usize, errors: usize) {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let long = self.started.elapsed() > Duration::from_secs(5);
        if !(self.show || long) || last.elapsed() < Duration::from_secs(1) {
            return;
        }
        *last = Instant::now();
        let rate = done as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
        eprintln!(
            "bench: {what}: {done}/{} cycles, {rate:.0}/s, {errors} failed",
            self.total
        );
    }
}

async fn connect(args: &BenchArgs) -> anyhow::Result<Channel> {
    tokio::time::timeout(
        Duration::from_secs(args.timeout),
        crate::endpoint::connect(&args.endpoint),
    )
    .await
    .map_err(|_| anyhow::anyhow!("connecting to {}: no answer", args.endpoint))?
}

/// The capability every volume of the run is made and used with.
fn capability(args: &BenchArgs) -> csi::VolumeCapability {
    let access = if args.block {
        volume_capability::AccessType::Block(volume_capability::BlockVolume {})
    } else {
        volume_capability::AccessType::Mount(volume_capability::MountVolume::default())
    };
    csi::VolumeCapability {
        access_mode: Some(volume_capability::AccessMode {
            mode: Mode::SingleNodeWriter as i32,
        }),
        access_type: Some(access),
    }
}

/// Runs the cycles against the endpoint.
pub async fn drive(args: &BenchArgs, work: &Path) -> anyhow::Result<Outcome> {
    let channel = connect(args).await?;
    let cap = capability(args);
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() % 1_000_000_000);
    let prefix = format!("bench-{}-{nonce:09}", std::process::id());
    let next = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let progress = Arc::new(Progress::new(args.cycles));
    let total = args.cycles as usize;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency {
        let mut w = Worker {
            ctl: ControllerClient::new(channel.clone()),
            node: NodeClient::new(channel.clone()),
            cap: cap.clone(),
            params: args.params.iter().cloned().collect(),
            size: i64::try_from(args.size).context("--size is too large")?,
            work: work.to_owned(),
            timeout: Duration::from_secs(args.timeout),
            out: Outcome::default(),
        };
        let (next, failed, progress, prefix) =
            (next.clone(), failed.clone(), progress.clone(), prefix.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let before = w.out.cycles_failed;
                w.cycle(format!("{prefix}-{i}")).await;
                if w.out.cycles_failed > before {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
                progress.tick("driver", i + 1, failed.load(Ordering::Relaxed));
            }
            w.out
        }));
    }
    let mut out = Outcome::default();
    for t in tasks {
        out.merge(t.await.context("a bench worker failed")?);
    }
    out.elapsed = started.elapsed();
    Ok(out)
}

/// Runs the floor's cycles, `concurrency` threads at once.
pub fn floor(args: &BenchArgs, dir: &Path) -> anyhow::Result<FloorOutcome> {
    let root = dir.join(format!("loam-bench-floor-{}", std::process::id()));
    let f = Floor {
        kind: args.floor_kind,
        root: root.clone(),
        block: args.block,
        size: args.size,
    };
    f.prepare()
        .with_context(|| format!("preparing the floor in {}", root.display()))?;
    let before = ProcSample::read(std::process::id())?;
    let next = Arc::new(AtomicUsize::new(0));
    let progress = Arc::new(Progress::new(args.cycles));
    let total = args.cycles as usize;
    let started = Instant::now();
    let results: Vec<(u64, u64, Option<String>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..args.concurrency)
            .map(|_| {
                let (f, next, progress) = (&f, next.clone(), progress.clone());
                scope.spawn(move || {
                    let (mut done, mut errors, mut first) = (0u64, 0u64, None);
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= total {
                            break;
                        }
                        match f.cycle(&format!("v{i}")) {
                            Ok(()) => done += 1,
                            Err(e) => {
                                errors += 1;
                                first.get_or_insert(e.to_string());
                            }
                        }
                        progress.tick("floor", i + 1, errors as usize);
                    }
                    (done, errors, first)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or((0, 1, Some("a floor thread panicked".into()))))
            .collect()
    });
    let elapsed = started.elapsed();
    let after = ProcSample::read(std::process::id())?;
    let _ = std::fs::remove_dir_all(&root);
    let mut out = FloorOutcome {
        kind: args.floor_kind,
        cycles_done: 0,
        errors: 0,
        first_error: None,
        elapsed,
        cpu: after.cpu.saturating_sub(before.cpu),
    };
    for (d, e, first) in results {
        out.cycles_done += d;
        out.errors += e;
        if out.first_error.is_none() {
            out.first_error = first;
        }
    }
    Ok(out)
}

/// `{count, p50_us, p99_us, max_us}` of some latencies.
pub fn latency_json(s: &Samples) -> Value {
    json!({
        "count": s.len(),
        "p50_us": micros(s.quantile(0.5)),
        "p99_us": micros(s.quantile(0.99)),
        "max_us": micros(s.max()),
    })
}

fn micros(d: Option<Duration>) -> Value {
    d.map_or(Value::Null, |d| json!((d.as_secs_f64() * 1e6).round() as u64))
}

fn ms(d: Option<Duration>) -> String {
    d.map_or("-".into(), |d| format!("{:.2} ms", d.as_secs_f64() * 1e3))
}

/// What the rounds measured: the driver's outcome, its CPU time and last sample, and with `--floor` the floor's
/// outcome and the transport's empty calls.
#[derive(Default)]
struct Measured {
    out: Outcome,
    driver: Option<(Duration, ProcSample)>,
    floor: Option<FloorOutcome>,
    transport: Option<Transport>,
}

/// The driver's cycles and, with `--floor`, the transport's empty calls and the floor's cycles, taking turns
/// for `--rounds` rounds.
async fn rounds(args: &BenchArgs, work: &Path) -> anyhow::Result<Measured> {
    let mut m = Measured::default();
    for r in 0..args.rounds {
        let mut a = args.clone();
        a.cycles = round_share(args.cycles, args.rounds, r);
        if a.cycles == 0 {
            continue;
        }
        let sample = || {
            args.pid
                .map(ProcSample::read)
                .transpose()
                .context("reading the driver's /proc")
        };
        let before = sample()?;
        let o = drive(&a, work).await?;
        let after = sample()?;
        m.out.add_run(o);
        if let (Some(b), Some(after)) = (before, after) {
            let cpu = after.cpu.saturating_sub(b.cpu) + m.driver.as_ref().map_or(Duration::ZERO, |d| d.0);
            m.driver = Some((cpu, after));
        }
        if let Some(dir) = &args.floor {
            // As many empty calls as the round's cycles made calls.
            let calls = a.cycles * RPCS.len() as u64;
            let before = sample()?;
            let mut t = transport::empty_calls(
                &connect(args).await?,
                calls,
                args.concurrency,
                Duration::from_secs(args.timeout),
            )
            .await?;
            if let (Some(b), Some(after)) = (before, sample()?) {
                t.driver_cpu = Some(after.cpu.saturating_sub(b.cpu));
            }
            m.transport.get_or_insert_default().add_run(t);
            let dir = dir.clone();
            let f = tokio::task::spawn_blocking(move || floor(&a, &dir)).await??;
            match &mut m.floor {
                Some(total) => total.add_run(f),
                None => m.floor = Some(f),
            }
        }
    }
    Ok(m)
}

/// `loam bench`: exit status 0 when every cycle succeeded (the driver's and the floor's).
pub async fn main(args: BenchArgs) -> anyhow::Result<std::process::ExitCode> {
    if args.floor.is_some() && !rustix::process::geteuid().is_root() {
        bail!("--floor mounts and attaches loop devices: run as root");
    }
    let (work, made) = match &args.work_dir {
        Some(d) => (d.clone(), false),
        None => (
            std::env::temp_dir().join(format!("loam-bench-{}", std::process::id())),
            true,
        ),
    };
    if args.startup {
        let doc = resident::startup(&args).await?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&doc)?);
        } else {
            println!(
                "ready after {:.1} ms; RSS {}",
                doc["ready_ms"].as_f64().unwrap_or_default(),
                doc["rss_bytes"]
                    .as_u64()
                    .map_or("-".into(), |b| format!("{:.1} MiB", b as f64 / 1048576.0))
            );
        }
        return Ok(std::process::ExitCode::SUCCESS);
    }
    if args.cycles == 0 && args.populate == 0 {
        bail!("--cycles 0 runs nothing; give --populate N to time lookups among N volumes");
    }
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let resident = if args.populate > 0 {
        let channel = connect(&args).await?;
        let res = resident::run(&args, &channel, &capability(&args), &work).await?;
        Some((channel, res))
    } else {
        None
    };
    let resident_rss = args.pid.map(ProcSample::read).transpose().ok().flatten();
    let Measured {
        out,
        driver,
        floor: fl,
        transport,
    } = match rounds(&args, &work).await {
        Ok(done) => done,
        Err(e) => {
            if made {
                let _ = std::fs::remove_dir(&work);
            }
            return Err(e);
        }
    };
    if made {
        let _ = std::fs::remove_dir(&work);
    }
    let mut report = report(&args, &out, driver, fl.as_ref());
    if let Some(t) = &transport {
        report["transport"] = t.json(fl.as_ref().map(|f| (f.cycles_per_second(), f.cpu_per_cycle())));
    }
    if let Some((channel, res)) = &resident {
        report["resident"] = res.json();
        if let Some(p) = resident_rss {
            report["resident"]["driver_rss_bytes"] = json!(p.rss);
        }
        if !args.keep {
            resident::remove(&args, channel, &res.volumes).await?;
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        if let Some((_, res)) = &resident {
            print_resident(res, resident_rss);
        }
        if args.cycles > 0 {
            print_report(&args, &out, driver, fl.as_ref(), transport.as_ref());
        }
    }
    let failed = out.cycles_failed > 0 || fl.as_ref().is_some_and(|f| f.errors > 0);
    Ok(if failed {
        std::process::ExitCode::FAILURE
    } else {
        std::process::ExitCode::SUCCESS
    })
}

/// The JSON document of a run.
pub fn report(
    args: &BenchArgs,
    out: &Outcome,
    driver: Option<(Duration, ProcSample)>,
    fl: Option<&FloorOutcome>,
) -> Value {
    let per_cycle =
        |cpu: Duration, cycles: u64| (cpu.as_secs_f64() * 1e6 / cycles.max(1) as f64).round() as u64;
    let rpcs: serde_json::Map<String, Value> = RPCS
        .iter()
        .map(|rpc| {
            let s = out.rpcs.get(rpc).cloned().unwrap_or_default();
            ((*rpc).to_owned(), latency_json(&s))
        })
        .collect();
    let mut errors = serde_json::Map::new();
    for ((rpc, code), n) in &out.errors {
        let e = errors.entry(rpc.clone()).or_insert_with(|| json!({}));
        e[code.as_str()] = json!(n);
    }
    let examples: Vec<Value> = out
        .examples
        .iter()
        .map(|((rpc, code), msg)| json!({"rpc": rpc, "code": code, "message": msg}))
        .collect();
    let mut doc = json!({
        "endpoint": args.endpoint,
        "mode": if args.block { "block" } else { "mount" },
        "size_bytes": args.size,
        "concurrency": args.concurrency,
        "rounds": args.rounds,
        "cycles": args.cycles,
        "cycles_done": out.cycles_done,
        "cycles_failed": out.cycles_failed,
        "seconds": out.elapsed.as_secs_f64(),
        "cycles_per_second": out.cycles_per_second(),
        "rpcs": rpcs,
        "errors": errors,
        "error_examples": examples,
    });
    if let Some((cpu, p)) = driver {
        doc["driver"] = json!({
            "pid": args.pid,
            "cpu_per_cycle_us": per_cycle(cpu, out.cycles_done),
            "peak_rss_bytes": p.peak_rss,
            "rss_bytes": p.rss,
        });
    }
    if let Some(f) = fl {
        let mut floor = json!({
            "kind": f.kind.name(),
            "cycles_done": f.cycles_done,
            "errors": f.errors,
            "first_error": f.first_error,
            "seconds": f.elapsed.as_secs_f64(),
            "cycles_per_second": f.cycles_per_second(),
            "cpu_per_cycle_us": per_cycle(f.cpu, f.cycles_done),
            "speed_ratio": out.cycles_per_second() / f.cycles_per_second().max(1e-9),
        });
        if let Some((cpu, _)) = driver {
            let d = cpu.as_secs_f64() / out.cycles_done.max(1) as f64;
            let fc = f.cpu_per_cycle().as_secs_f64();
            floor["cpu_ratio"] = json!(d / fc.max(1e-9));
        }
        doc["floor"] = floor;
    }
    doc
}

fn print_resident(res: &resident::Resident, rss: Option<ProcSample>) {
    println!(
        "{} resident volumes, created at {:.0}/s{}",
        res.volumes.len(),
        res.volumes.len() as f64 / res.populate.as_secs_f64().max(1e-9),
        rss.map_or(String::new(), |p| format!(
            "; driver RSS {:.1} MiB",
            p.rss as f64 / 1048576.0
        ))
    );
    print_latencies("lookup", &resident::LOOKUPS, &res.rpcs);
    println!();
}

/// One row per RPC: calls, p50, p99, max.
fn print_latencies(title: &str, rpcs: &[&'static str], samples: &BTreeMap<&'static str, Samples>) {
    println!(
        "{:<20} {:>7} {:>10} {:>10} {:>10}",
        title, "calls", "p50", "p99", "max"
    );
    for rpc in rpcs {
        let s = samples.get(rpc).cloned().unwrap_or_default();
        println!(
            "{:<20} {:>7} {:>10} {:>10} {:>10}",
            rpc,
            s.len(),
            ms(s.quantile(0.5)),
            ms(s.quantile(0.99)),
            ms(s.max())
        );
    }
}

fn print_report(
    args: &BenchArgs,
    out: &Outcome,
    driver: Option<(Duration, ProcSample)>,
    fl: Option<&FloorOutcome>,
    transport: Option<&Transport>,
) {
    println!(
        "{} cycles of {} volumes ({} bytes) at concurrency {} against {}{}",
        args.cycles,
        if args.block { "block" } else { "mount" },
        args.size,
        args.concurrency,
        args.endpoint,
        if args.rounds > 1 && fl.is_some() {
            format!(", in {} rounds taking turns with the floor", args.rounds)
        } else {
            String::new()
        }
    );
    println!(
        "driver: {:.1} cycles/s, {} done, {} failed, {:.2} s",
        out.cycles_per_second(),
        out.cycles_done,
        out.cycles_failed,
        out.elapsed.as_secs_f64()
    );
    if let Some((cpu, p)) = driver {
        println!(
            "driver CPU: {:.3} ms per cycle; peak RSS {:.1} MiB (now {:.1} MiB)",
            cpu.as_secs_f64() * 1e3 / out.cycles_done.max(1) as f64,
            p.peak_rss as f64 / 1048576.0,
            p.rss as f64 / 1048576.0
        );
    }
    if let Some(f) = fl {
        println!(
            "floor ({}): {:.1} cycles/s, CPU {:.3} ms per cycle, {} failed{}",
            f.kind.name(),
            f.cycles_per_second(),
            f.cpu_per_cycle().as_secs_f64() * 1e3,
            f.errors,
            f.first_error
                .as_deref()
                .map(|e| format!(" (first: {e})"))
                .unwrap_or_default()
        );
        print!(
            "ratio to the floor: speed {:.2}",
            out.cycles_per_second() / f.cycles_per_second().max(1e-9)
        );
        if let Some((cpu, _)) = driver {
            let d = cpu.as_secs_f64() / out.cycles_done.max(1) as f64;
            let fc = f.cpu_per_cycle().as_secs_f64();
            print!(", CPU per cycle {:.2}", d / fc.max(1e-9));
        }
        println!();
        if let Some(t) = transport {
            let ceiling = t.ceiling(f.cycles_per_second());
            println!(
                "transport: {:.0} empty calls/s at concurrency {} (p50 {}); the floor's work plus {} such calls \
                 a cycle: at most {ceiling:.1} cycles/s, {:.2} x the floor",
                t.calls_per_second(),
                args.concurrency,
                ms(t.samples.quantile(0.5)),
                RPCS.len(),
                ceiling / f.cycles_per_second().max(1e-9)
            );
            if let (Some(c), Some(r)) = (t.driver_cpu_per_call(), t.cpu_ceiling_ratio(f.cpu_per_cycle())) {
                println!(
                    "transport CPU: the driver spends {:.1} µs per empty call; the floor's work plus {} such calls: \
                     {r:.2} x the floor's CPU per cycle",
                    c.as_secs_f64() * 1e6,
                    RPCS.len()
                );
            }
        }
    }
    println!();
    print_latencies("RPC", &RPCS, &out.rpcs);
    if !out.errors.is_empty() {
        println!();
        for ((rpc, code), n) in &out.errors {
            let msg = out
                .examples
                .get(&(rpc.clone(), code.clone()))
                .map(String::as_str)
                .unwrap_or("");
            println!("error: {rpc} {code} x{n}: {msg}");
        }
    }
}

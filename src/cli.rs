//! The command line: `loam serve` runs the driver, `loam client` talks to any CSI socket, `loam bench` times one.

use std::{collections::BTreeMap, path::PathBuf, process::ExitCode, sync::Arc};

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
pub use loam_engine::spec::parse_size;
use loam_engine::{Engine, EngineConfig, spec::PoolSpec};
use tokio_stream::wrappers::UnixListenerStream;
use tracing::info;

use crate::{
    client,
    config::{FileConfig, NodePools},
    csi, endpoint,
    server::Driver,
};

/// Topology key whose value names the node a volume lives on.
pub const TOPOLOGY_NODE_KEY: &str = "loam.csi/node";
pub const DEFAULT_POOL: &str = "default";

#[derive(Debug, Parser)]
#[command(name = "loam", version, about = "CSI driver for node-local storage")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the CSI Identity, Controller and Node services on one unix socket.
    Serve(ServeArgs),
    /// Call a CSI driver's RPCs from the command line.
    Client(client::ClientArgs),
    /// Time full volume cycles against a CSI driver, optionally beside the same work done directly (the floor).
    Bench(crate::bench::BenchArgs),
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Socket to serve on.
    #[arg(long, env = "CSI_ENDPOINT", default_value = "unix:///run/loam/csi.sock")]
    pub endpoint: String,
    /// This node's name as Kubernetes knows it (default: the host name).
    #[arg(long, env = "NODE_ID")]
    pub node_id: Option<String>,
    /// Driver name reported by GetPluginInfo; must match the CSIDriver object.
    #[arg(long, env = "LOAM_DRIVER_NAME", default_value = "loam.csi")]
    pub driver_name: String,
    /// Directory for loam's state; the default pool lives in <data-dir>/pools/default.
    #[arg(long, env = "LOAM_DATA_DIR", default_value = "/var/lib/loam")]
    pub data_dir: PathBuf,
    /// Configuration file declaring pools (TOML; see the README). Without it, one dir pool named `default`
    /// lives in <data-dir>/pools/default.
    #[arg(long, env = "LOAM_CONFIG")]
    pub config: Option<PathBuf>,
    /// Bytes the default pool may hand out (suffixes K, M, G, T, Ki, Mi, Gi, Ti); default: its filesystem's size.
    #[arg(long, env = "LOAM_CAPACITY", value_parser = parse_size)]
    pub capacity: Option<u64>,
    /// Seconds between measurements of each volume's usage in the default dir pool, where sizes are accounted
    /// rather than enforced by project quota (default 60).
    #[arg(long, env = "LOAM_USAGE_REFRESH_SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    pub usage_refresh_seconds: Option<u64>,
    /// Volumes kubelet may place on this node (0: no limit).
    #[arg(long, env = "LOAM_MAX_VOLUMES_PER_NODE", default_value_t = 0)]
    pub max_volumes_per_node: u64,
    /// Extra topology segment this node reports, such as topology.kubernetes.io/zone=a (repeatable).
    #[arg(long = "topology", value_parser = parse_segment_flag)]
    pub topology: Vec<(String, String)>,
    /// Log format.
    #[arg(long, env = "LOAM_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
    /// Serve Prometheus metrics at http://<ADDRESS>/metrics, such as 0.0.0.0:9808 (default: off).
    #[arg(long, env = "LOAM_METRICS_ADDRESS", value_name = "ADDRESS")]
    pub metrics_address: Option<std::net::SocketAddr>,
}

/// `KEY=VALUE`; the value may be empty, the key may not.
pub fn parse_key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}

/// A topology segment flag: `KEY=VALUE` with a value (Kubernetes node labels cannot match an empty one here).
fn parse_segment_flag(s: &str) -> Result<(String, String), String> {
    match parse_key_value(s)? {
        (_, v) if v.is_empty() => Err(format!("{s:?} has an empty value")),
        kv => Ok(kv),
    }
}

/// CSI plugin names: domain-name style, at most 63 characters, starting and ending with a letter or digit.
fn check_driver_name(name: &str) -> anyhow::Result<()> {
    let b = name.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_'));
    if !ok {
        bail!(
            "driver name {name:?} must be 1-63 of letters, digits, '-', '.', '_', starting and ending with a letter or digit"
        );
    }
    Ok(())
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour only on a terminal: container logs and journald get plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if format == "json" {
        // One object per line with each key once: the event's fields at the top (`message` among them), the
        // call's span (`rpc`, `volume.id`) under `span`.
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .init();
    } else {
        builder.init();
    }
}

pub fn main(cli: Cli) -> ExitCode {
    // The bench drives its calls from one thread: a client whose replies wake another of its own threads would
    // add that wake-up (0.1 ms on a virtual machine) to every figure it reports of the driver.
    let built = match cli.command {
        Command::Bench(_) => tokio::runtime::Builder::new_current_thread().enable_all().build(),
        // At least two threads: one engine call at a time may hold one (see `Driver::run`).
        _ => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(std::thread::available_parallelism().map_or(2, |n| n.get().max(2)))
            .enable_all()
            .build(),
    };
    let rt = match built {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loam: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Serve(args) => {
            init_logging(&args.log_format);
            rt.block_on(serve(args))
        }
        Command::Client(args) => rt.block_on(client::run(args)),
        Command::Bench(args) => {
            return match rt.block_on(crate::bench::main(args)) {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("loam bench: {e:#}");
                    ExitCode::FAILURE
                }
            };
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loam: {e:#}");
            ExitCode::FAILURE
        }
    }
}

pub fn engine_config(args: &ServeArgs) -> anyhow::Result<EngineConfig> {
    let node_id = match &args.node_id {
        Some(n) if !n.is_empty() => n.clone(),
        _ => rustix::system::uname().nodename().to_string_lossy().into_owned(),
    };
    let data_dir = if args.data_dir.is_absolute() {
        args.data_dir.clone()
    } else {
        std::env::current_dir()?.join(&args.data_dir)
    };
    let NodePools { pools, default_pool } = match &args.config {
        Some(path) => {
            if args.capacity.is_some() || args.usage_refresh_seconds.is_some() {
                bail!(
                    "--capacity and --usage-refresh-seconds apply to the implicit default pool; with --config set \
                     capacity and usage_refresh_seconds per pool"
                );
            }
            FileConfig::load(path)?.for_node(&node_id)?
        }
        None => NodePools {
            pools: vec![
                PoolSpec::dir(DEFAULT_POOL, data_dir.join("pools").join(DEFAULT_POOL))
                    .with_capacity(args.capacity)
                    .with_usage_refresh(args.usage_refresh_seconds),
            ],
            default_pool: DEFAULT_POOL.to_owned(),
        },
    };
    Ok(EngineConfig {
        node_id,
        topology_key: TOPOLOGY_NODE_KEY.to_owned(),
        extra_topology: args.topology.iter().cloned().collect::<BTreeMap<_, _>>(),
        pools,
        default_pool,
        max_volumes_per_node: args.max_volumes_per_node,
        state_dir: data_dir.join("node"),
        host: std::sync::Arc::new(loam_sys::host::RealHost),
    })
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    check_driver_name(&args.driver_name)?;
    if args.topology.iter().any(|(k, _)| k == TOPOLOGY_NODE_KEY) {
        bail!("--topology cannot set {TOPOLOGY_NODE_KEY}; it is always this node");
    }
    let socket = endpoint::socket_path(&args.endpoint)?;
    // Before anything is created or opened: a start that fails here leaves nothing behind.
    endpoint::check(&socket)?;
    let cfg = engine_config(&args)?;
    let engine = tokio::task::spawn_blocking(move || Engine::open(cfg))
        .await
        .context("opening pools")?
        .context("opening pools")?;
    let listener = endpoint::bind(&socket)?;
    info!(endpoint = %args.endpoint, node.id = engine.node_id(), driver = %args.driver_name,
          version = env!("CARGO_PKG_VERSION"), "serving CSI");
    let engine = Arc::new(engine);
    tokio::spawn(rediscover_on_sighup(engine.clone(), hup));
    let metrics = Arc::new(crate::metrics::Metrics::default());
    if let Some(addr) = args.metrics_address {
        let registry = metrics.registry(engine.clone());
        let listener = crate::metrics::bind(addr).await?;
        tokio::spawn(async move {
            if let Err(e) = crate::metrics::serve(listener, registry).await {
                tracing::error!(error = %e, "metrics server stopped");
            }
        });
    }
    let driver = Driver::new(engine, args.driver_name.clone());
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let server = tonic::transport::Server::builder()
        .layer(crate::server::observe::ObserveLayer::new(metrics))
        .add_service(csi::identity_server::IdentityServer::new(driver.clone()))
        .add_service(csi::controller_server::ControllerServer::new(driver.clone()))
        .add_service(csi::node_server::NodeServer::new(driver.clone()))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async move {
            let _ = stop_rx.changed().await;
        });
    tokio::pin!(server);
    let served = tokio::select! {
        r = &mut server => r,
        () = shutdown_signal() => {
            let _ = stop_tx.send(true);
            drain(&driver, server).await
        }
    };
    if let Err(e) = std::fs::remove_file(&socket) {
        tracing::warn!(error = %e, socket = %socket.display(), "could not remove the socket");
    }
    served.context("serving")?;
    info!("stopped");
    Ok(())
}

/// Longest wait for in-flight calls after SIGTERM; kubelet's default grace period is 30 s.
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(25);

/// Waits until the calls in flight have finished. Idle connections do not count: the sidecars keep theirs open
/// for ever, so waiting for them would hold a stopping node plugin until it is killed.
async fn drain<F>(driver: &Driver, mut server: std::pin::Pin<&mut F>) -> Result<(), tonic::transport::Error>
where
    F: std::future::Future<Output = Result<(), tonic::transport::Error>>,
{
    let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
    loop {
        tokio::select! {
            r = &mut server => return r,
            () = tokio::time::sleep(std::time::Duration::from_millis(20)) => {}
        }
        let n = driver.inflight();
        if n == 0 {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(
                inflight = n,
                "calls still running after the drain timeout; exiting"
            );
            return Ok(());
        }
    }
}

/// Device pools look at their discovery directories again on each SIGHUP. `hup` is made before anything is
/// served, so an early SIGHUP never gets the default action (ending the process).
async fn rediscover_on_sighup(engine: Arc<Engine>, hup: Option<tokio::signal::unix::Signal>) {
    let Some(mut hup) = hup else {
        tracing::warn!("cannot install the SIGHUP handler; device pools rediscover on their interval only");
        return;
    };
    while hup.recv().await.is_some() {
        info!("SIGHUP: discovering the device pools' disks again");
        let e = engine.clone();
        if let Err(err) = tokio::task::spawn_blocking(move || e.rediscover()).await {
            tracing::warn!(error = %err, "rediscovery failed");
        }
    }
}

/// Resolves on SIGTERM or SIGINT; tonic then stops accepting and drains the calls in flight.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: draining"),
        _ = int.recv() => info!("SIGINT: draining"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_values() {
        assert_eq!(parse_key_value("a=b").unwrap(), ("a".into(), "b".into()));
        assert_eq!(
            parse_key_value("fstype=").unwrap(),
            ("fstype".into(), String::new())
        );
        assert!(parse_key_value("=b").is_err());
        assert!(parse_key_value("ab").is_err());
        assert_eq!(
            parse_segment_flag("zone=a=b").unwrap(),
            ("zone".into(), "a=b".into())
        );
        assert!(parse_segment_flag("zone=").is_err());
    }

    #[test]
    fn driver_names() {
        assert!(check_driver_name("loam.csi").is_ok());
        assert!(check_driver_name("a").is_ok());
        for bad in ["", ".a", "a.", "a/b", &"a".repeat(64)] {
            assert!(check_driver_name(bad).is_err(), "{bad:?}");
        }
    }
}

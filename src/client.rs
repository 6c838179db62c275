//! `loam client`: a command-line CSI client for people (like csc) that talks to any CSI driver's socket.
//!
//! Each subcommand makes one RPC (or a few, for `info` and `caps`) and prints a short aligned `key: value`
//! block or table, or with `--json` one JSON document on stdout whose field names are the CSI proto's. A
//! failed RPC becomes an error naming the RPC, the gRPC code and the server's message, such as
//! `CreateVolume failed: ALREADY_EXISTS: ...`; `main` prints it and exits with status 1.

use std::{collections::BTreeMap, collections::HashMap, future::Future, time::Duration};

use anyhow::{Context, anyhow, bail};
use clap::{Args, Subcommand, ValueEnum};

use crate::codes::code_name;
use serde_json::{Value, json};
use tonic::{Code, Status, transport::Channel};

use crate::{
    cli::{parse_key_value, parse_size},
    csi::{
        self, controller_client::ControllerClient, controller_service_capability,
        identity_client::IdentityClient, node_client::NodeClient, node_service_capability, plugin_capability,
        volume_capability, volume_capability::access_mode, volume_content_source, volume_usage,
    },
};

/// Help heading of the options every subcommand takes.
const GLOBAL: &str = "Global options";

#[derive(Debug, Args)]
pub struct ClientArgs {
    /// Socket of the CSI driver.
    #[arg(
        long,
        env = "CSI_ENDPOINT",
        default_value = "unix:///run/loam/csi.sock",
        global = true,
        help_heading = GLOBAL
    )]
    pub endpoint: String,
    /// Print one JSON document per command (field names as in the CSI proto) instead of text.
    #[arg(long, global = true, help_heading = GLOBAL)]
    pub json: bool,
    /// Seconds to wait for the connection and for each RPC.
    #[arg(long, value_name = "SECONDS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..), global = true, help_heading = GLOBAL)]
    pub timeout: u64,
    #[command(subcommand)]
    pub command: ClientCommand,
}

#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Who the driver is and whether it is ready (GetPluginInfo, GetPluginCapabilities, Probe).
    Info,
    /// What the controller and node services offer (ControllerGetCapabilities, NodeGetCapabilities).
    Caps,
    /// This node's ID, volume limit and topology (NodeGetInfo).
    NodeInfo,
    /// The disks of the device pools: identity, size, path and state (free, in use by a volume, not adopted
    /// and why, cleaning, missing), and the discovery entries skipped (from GetPluginInfo).
    Disks {
        /// Only this pool's.
        #[arg(long)]
        pool: Option<String>,
    },
    /// Create a volume, or find the one made earlier under the same name (CreateVolume).
    Create {
        /// Volume name; the same name always means the same volume.
        name: String,
        /// Smallest acceptable size (suffixes K, M, G, T, Ki, Mi, Gi, Ti); default: the driver's choice.
        #[arg(long, value_parser = parse_size)]
        size: Option<u64>,
        /// Largest acceptable size.
        #[arg(long, value_name = "SIZE", value_parser = parse_size)]
        limit: Option<u64>,
        #[command(flatten)]
        cap: CapabilityArgs,
        /// StorageClass parameter such as pool=fast (repeatable).
        #[arg(long = "param", value_name = "KEY=VALUE", value_parser = parse_key_value)]
        params: Vec<(String, String)>,
        /// Topology segment the volume must be reachable from, such as loam.csi/node=n1 (repeatable).
        #[arg(long, value_name = "KEY=VALUE[,KEY=VALUE]", value_parser = parse_segment)]
        requisite: Vec<Segment>,
        /// Topology segment the driver should prefer, in order (repeatable).
        #[arg(long, value_name = "KEY=VALUE[,KEY=VALUE]", value_parser = parse_segment)]
        preferred: Vec<Segment>,
    },
    /// Delete a volume; deleting one that is already gone succeeds (DeleteVolume).
    Delete {
        /// Volume ID, as create printed it.
        volume_id: String,
    },
    /// Show one volume and its condition (ControllerGetVolume).
    Get {
        /// Volume ID, as create printed it.
        volume_id: String,
    },
    /// List volumes, one page or all of them (ListVolumes).
    List {
        /// Most entries per page (0: the driver decides).
        #[arg(long, value_name = "N", default_value_t = 0)]
        max: i32,
        /// Page to start at: the next token a previous listing printed.
        #[arg(long, value_name = "TOKEN", default_value = "")]
        token: String,
        /// Follow next tokens to the end and list everything.
        #[arg(long)]
        all: bool,
    },
    /// Ask whether a volume supports an access type and mode (ValidateVolumeCapabilities).
    Validate {
        /// Volume ID, as create printed it.
        volume_id: String,
        #[command(flatten)]
        cap: CapabilityArgs,
        /// StorageClass parameter the volume should have been made with (repeatable).
        #[arg(long = "param", value_name = "KEY=VALUE", value_parser = parse_key_value)]
        params: Vec<(String, String)>,
    },
    /// Space available for new volumes (GetCapacity).
    Capacity {
        /// StorageClass parameter such as pool=fast (repeatable).
        #[arg(long = "param", value_name = "KEY=VALUE", value_parser = parse_key_value)]
        params: Vec<(String, String)>,
        /// Only count space reachable from this topology segment.
        #[arg(long, value_name = "KEY=VALUE[,KEY=VALUE]", value_parser = parse_segment)]
        topology: Option<Segment>,
        /// Ask about raw block volumes (default: no capability, so any kind of volume).
        #[arg(long)]
        block: bool,
    },
    /// Prepare a volume at a node-global staging path (NodeStageVolume).
    Stage {
        /// Volume ID, as create printed it.
        volume_id: String,
        /// Node-global directory to stage at (kubelet's .../globalmount).
        staging_path: String,
        #[command(flatten)]
        cap: CapabilityArgs,
        /// Volume context from CreateVolume, such as loam.csi/pool=default (repeatable).
        #[arg(long = "context", value_name = "KEY=VALUE", value_parser = parse_key_value)]
        context: Vec<(String, String)>,
    },
    /// Undo stage (NodeUnstageVolume).
    Unstage {
        /// Volume ID, as create printed it.
        volume_id: String,
        /// The path it was staged at.
        staging_path: String,
    },
    /// Make a staged volume appear at a target path (NodePublishVolume).
    Publish {
        /// Volume ID, as create printed it.
        volume_id: String,
        /// Where the pod sees the volume: a directory, or a file for --block.
        target_path: String,
        /// Where the volume was staged; required by drivers with STAGE_UNSTAGE_VOLUME, such as loam.
        #[arg(long, value_name = "STAGING_PATH")]
        staging: Option<String>,
        /// Publish read-only.
        #[arg(long)]
        readonly: bool,
        #[command(flatten)]
        cap: CapabilityArgs,
        /// Volume context from CreateVolume (repeatable).
        #[arg(long = "context", value_name = "KEY=VALUE", value_parser = parse_key_value)]
        context: Vec<(String, String)>,
    },
    /// Undo publish (NodeUnpublishVolume).
    Unpublish {
        /// Volume ID, as create printed it.
        volume_id: String,
        /// The path it was published at.
        target_path: String,
    },
    /// Space and inodes used by a published or staged volume, and its condition (NodeGetVolumeStats).
    Stats {
        /// Volume ID, as create printed it.
        volume_id: String,
        /// A path the volume is published or staged at.
        path: String,
        /// The volume's staging path, for drivers that want it.
        #[arg(long, value_name = "STAGING_PATH")]
        staging: Option<String>,
    },
}

/// How the volume will be used: the CSI VolumeCapability of a request.
#[derive(Debug, Args)]
pub struct CapabilityArgs {
    /// A raw block device instead of a mounted file system.
    #[arg(long)]
    block: bool,
    /// File system type of a mount volume (default: the driver's).
    #[arg(long, value_name = "TYPE", conflicts_with = "block")]
    fs_type: Option<String>,
    /// Access mode.
    #[arg(long, value_enum, default_value_t = Mode::SingleNodeWriter)]
    mode: Mode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// One node, read-write.
    SingleNodeWriter,
    /// One node, read-only.
    SingleNodeReaderOnly,
    /// One node, one writing workload.
    SingleNodeSingleWriter,
    /// One node, many writing workloads.
    SingleNodeMultiWriter,
    /// Many nodes, read-only.
    MultiNodeReaderOnly,
    /// Many nodes, one of them writing.
    MultiNodeSingleWriter,
    /// Many nodes, all writing.
    MultiNodeMultiWriter,
}

/// One topology segment, `key=value[,key=value]`.
pub type Segment = BTreeMap<String, String>;

impl CapabilityArgs {
    fn capability(&self) -> csi::VolumeCapability {
        let access_type = if self.block {
            volume_capability::AccessType::Block(volume_capability::BlockVolume {})
        } else {
            volume_capability::AccessType::Mount(volume_capability::MountVolume {
                fs_type: self.fs_type.clone().unwrap_or_default(),
                ..Default::default()
            })
        };
        capability(access_type, self.mode)
    }
}

fn capability(access_type: volume_capability::AccessType, mode: Mode) -> csi::VolumeCapability {
    use access_mode::Mode as Pb;
    let mode = match mode {
        Mode::SingleNodeWriter => Pb::SingleNodeWriter,
        Mode::SingleNodeReaderOnly => Pb::SingleNodeReaderOnly,
        Mode::SingleNodeSingleWriter => Pb::SingleNodeSingleWriter,
        Mode::SingleNodeMultiWriter => Pb::SingleNodeMultiWriter,
        Mode::MultiNodeReaderOnly => Pb::MultiNodeReaderOnly,
        Mode::MultiNodeSingleWriter => Pb::MultiNodeSingleWriter,
        Mode::MultiNodeMultiWriter => Pb::MultiNodeMultiWriter,
    };
    csi::VolumeCapability {
        access_mode: Some(volume_capability::AccessMode { mode: mode as i32 }),
        access_type: Some(access_type),
    }
}

fn parse_segment(s: &str) -> Result<Segment, String> {
    let mut seg = Segment::new();
    for part in s.split(',') {
        let (k, v) = parse_key_value(part)?;
        if seg.insert(k.clone(), v).is_some() {
            return Err(format!("{k:?} appears twice in {s:?}"));
        }
    }
    Ok(seg)
}

/// The three CSI services behind one socket, and the deadline for each call.
struct Conn {
    identity: IdentityClient<Channel>,
    controller: ControllerClient<Channel>,
    node: NodeClient<Channel>,
    timeout: Duration,
}

impl Conn {
    async fn open(endpoint: &str, timeout: Duration) -> anyhow::Result<Self> {
        let channel = tokio::time::timeout(timeout, crate::endpoint::connect(endpoint))
            .await
            .map_err(|_| {
                anyhow!(
                    "connecting to {endpoint}: no answer within {}s",
                    timeout.as_secs()
                )
            })??;
        Ok(Conn {
            identity: IdentityClient::new(channel.clone()),
            controller: ControllerClient::new(channel.clone()),
            node: NodeClient::new(channel),
            timeout,
        })
    }

    // Clients are cheap handles on the shared channel; a clone per call keeps `call` free to borrow `self`.
    fn id(&self) -> IdentityClient<Channel> {
        self.identity.clone()
    }

    fn ctl(&self) -> ControllerClient<Channel> {
        self.controller.clone()
    }

    fn node(&self) -> NodeClient<Channel> {
        self.node.clone()
    }

    /// A request that also tells the server our deadline (the grpc-timeout header).
    fn req<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        r.set_timeout(self.timeout);
        r
    }

    /// Awaits one RPC under the deadline; failures name the RPC, the gRPC code and the server's message.
    async fn call<T>(
        &self,
        rpc: &str,
        fut: impl Future<Output = Result<tonic::Response<T>, Status>>,
    ) -> anyhow::Result<T> {
        self.send(fut).await.map_err(|status| rpc_error(rpc, &status))
    }

    /// Like `call`, but a service the driver does not offer (UNIMPLEMENTED) is `None`.
    async fn call_if_offered<T>(
        &self,
        rpc: &str,
        fut: impl Future<Output = Result<tonic::Response<T>, Status>>,
    ) -> anyhow::Result<Option<T>> {
        match self.send(fut).await {
            Ok(v) => Ok(Some(v)),
            Err(status) if status.code() == Code::Unimplemented => Ok(None),
            Err(status) => Err(rpc_error(rpc, &status)),
        }
    }

    async fn send<T>(
        &self,
        fut: impl Future<Output = Result<tonic::Response<T>, Status>>,
    ) -> Result<T, Status> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(r) => r.map(tonic::Response::into_inner),
            Err(_) => Err(Status::deadline_exceeded(format!(
                "no answer within {}s",
                self.timeout.as_secs()
            ))),
        }
    }
}

fn rpc_error(rpc: &str, status: &Status) -> anyhow::Error {
    match status.message() {
        "" => anyhow!("{rpc} failed: {}", code_name(status.code())),
        msg => anyhow!("{rpc} failed: {}: {msg}", code_name(status.code())),
    }
}

pub async fn run(args: ClientArgs) -> anyhow::Result<()> {
    let c = Conn::open(&args.endpoint, Duration::from_secs(args.timeout)).await?;
    let out = Output { json: args.json };
    match args.command {
        ClientCommand::Info => info(&c, out).await,
        ClientCommand::Caps => caps(&c, out).await,
        ClientCommand::NodeInfo => node_info(&c, out).await,
        ClientCommand::Disks { pool } => disks(&c, out, pool.as_deref()).await,
        ClientCommand::Create {
            name,
            size,
            limit,
            cap,
            params,
            requisite,
            preferred,
        } => {
            let capacity_range = (size.is_some() || limit.is_some()).then(|| csi::CapacityRange {
                required_bytes: to_i64(size.unwrap_or(0)),
                limit_bytes: to_i64(limit.unwrap_or(0)),
            });
            let topology = |segs: Vec<Segment>| segs.into_iter().map(topology).collect::<Vec<_>>();
            let accessibility_requirements =
                (!requisite.is_empty() || !preferred.is_empty()).then(|| csi::TopologyRequirement {
                    requisite: topology(requisite),
                    preferred: topology(preferred),
                });
            let req = csi::CreateVolumeRequest {
                name,
                capacity_range,
                volume_capabilities: vec![cap.capability()],
                parameters: params.into_iter().collect(),
                accessibility_requirements,
                ..Default::default()
            };
            let r = c.call("CreateVolume", c.ctl().create_volume(c.req(req))).await?;
            let vol = r.volume.context("CreateVolume answered without a volume")?;
            out.print(volume_json(&vol), || print_block(&volume_rows(&vol)))
        }
        ClientCommand::Delete { volume_id } => {
            let req = csi::DeleteVolumeRequest {
                volume_id: volume_id.clone(),
                ..Default::default()
            };
            c.call("DeleteVolume", c.ctl().delete_volume(c.req(req))).await?;
            out.print(json!({ "volume_id": volume_id }), || {
                println!("deleted {volume_id}")
            })
        }
        ClientCommand::Get { volume_id } => {
            let req = csi::ControllerGetVolumeRequest { volume_id };
            let r = c
                .call("ControllerGetVolume", c.ctl().controller_get_volume(c.req(req)))
                .await?;
            let vol = r
                .volume
                .context("ControllerGetVolume answered without a volume")?;
            let status = r.status.as_ref();
            let nodes = status.map(|s| s.published_node_ids.as_slice());
            let cond = status.and_then(|s| s.volume_condition.as_ref());
            let doc = json!({ "volume": volume_json(&vol), "status": status_json(nodes, cond) });
            out.print(doc, || {
                let mut rows = volume_rows(&vol);
                if let Some(nodes) = nodes {
                    rows.push(("published_node_ids", list_or_dash(nodes.iter().cloned())));
                }
                rows.push(("condition", condition_text(cond, true)));
                print_block(&rows);
            })
        }
        ClientCommand::List { max, token, all } => list(&c, out, max, token, all).await,
        ClientCommand::Validate {
            volume_id,
            cap,
            params,
        } => {
            let req = csi::ValidateVolumeCapabilitiesRequest {
                volume_id,
                volume_capabilities: vec![cap.capability()],
                parameters: params.into_iter().collect(),
                ..Default::default()
            };
            let r = c
                .call(
                    "ValidateVolumeCapabilities",
                    c.ctl().validate_volume_capabilities(c.req(req)),
                )
                .await?;
            let confirmed = r.confirmed.as_ref().map(|conf| {
                json!({
                    "volume_context": sorted(&conf.volume_context),
                    "volume_capabilities":
                        conf.volume_capabilities.iter().map(capability_json).collect::<Vec<_>>(),
                    "parameters": sorted(&conf.parameters),
                    "mutable_parameters": sorted(&conf.mutable_parameters),
                })
            });
            out.print(json!({ "confirmed": confirmed, "message": r.message }), || {
                let mut rows = vec![(
                    "confirmed",
                    if r.confirmed.is_some() { "yes" } else { "no" }.to_owned(),
                )];
                if !r.message.is_empty() {
                    rows.push(("message", r.message.clone()));
                }
                print_block(&rows);
            })
        }
        ClientCommand::Capacity {
            params,
            topology: seg,
            block,
        } => {
            let volume_capabilities = if block {
                vec![capability(
                    volume_capability::AccessType::Block(volume_capability::BlockVolume {}),
                    Mode::SingleNodeWriter,
                )]
            } else {
                vec![]
            };
            let req = csi::GetCapacityRequest {
                volume_capabilities,
                parameters: params.into_iter().collect(),
                accessible_topology: seg.map(topology),
            };
            let r = c.call("GetCapacity", c.ctl().get_capacity(c.req(req))).await?;
            let doc = json!({
                "available_capacity": r.available_capacity,
                "maximum_volume_size": r.maximum_volume_size,
                "minimum_volume_size": r.minimum_volume_size,
            });
            out.print(doc, || {
                let mut rows = vec![("available_capacity", bytes(r.available_capacity))];
                rows.extend(r.maximum_volume_size.map(|n| ("maximum_volume_size", bytes(n))));
                rows.extend(r.minimum_volume_size.map(|n| ("minimum_volume_size", bytes(n))));
                print_block(&rows);
            })
        }
        ClientCommand::Stage {
            volume_id,
            staging_path,
            cap,
            context,
        } => {
            let req = csi::NodeStageVolumeRequest {
                volume_id: volume_id.clone(),
                staging_target_path: staging_path.clone(),
                volume_capability: Some(cap.capability()),
                volume_context: context.into_iter().collect(),
                ..Default::default()
            };
            c.call("NodeStageVolume", c.node().node_stage_volume(c.req(req)))
                .await?;
            out.print(
                json!({ "volume_id": volume_id, "staging_target_path": staging_path }),
                || println!("staged {volume_id} at {staging_path}"),
            )
        }
        ClientCommand::Unstage {
            volume_id,
            staging_path,
        } => {
            let req = csi::NodeUnstageVolumeRequest {
                volume_id: volume_id.clone(),
                staging_target_path: staging_path.clone(),
            };
            c.call("NodeUnstageVolume", c.node().node_unstage_volume(c.req(req)))
                .await?;
            out.print(
                json!({ "volume_id": volume_id, "staging_target_path": staging_path }),
                || println!("unstaged {volume_id} from {staging_path}"),
            )
        }
        ClientCommand::Publish {
            volume_id,
            target_path,
            staging,
            readonly,
            cap,
            context,
        } => {
            let req = csi::NodePublishVolumeRequest {
                volume_id: volume_id.clone(),
                staging_target_path: staging.clone().unwrap_or_default(),
                target_path: target_path.clone(),
                volume_capability: Some(cap.capability()),
                readonly,
                volume_context: context.into_iter().collect(),
                ..Default::default()
            };
            c.call("NodePublishVolume", c.node().node_publish_volume(c.req(req)))
                .await?;
            let doc = json!({
                "volume_id": volume_id,
                "target_path": target_path,
                "staging_target_path": staging.unwrap_or_default(),
                "readonly": readonly,
            });
            out.print(doc, || {
                println!(
                    "published {volume_id} at {target_path}{}",
                    if readonly { " (read-only)" } else { "" }
                )
            })
        }
        ClientCommand::Unpublish {
            volume_id,
            target_path,
        } => {
            let req = csi::NodeUnpublishVolumeRequest {
                volume_id: volume_id.clone(),
                target_path: target_path.clone(),
            };
            c.call("NodeUnpublishVolume", c.node().node_unpublish_volume(c.req(req)))
                .await?;
            out.print(
                json!({ "volume_id": volume_id, "target_path": target_path }),
                || println!("unpublished {volume_id} from {target_path}"),
            )
        }
        ClientCommand::Stats {
            volume_id,
            path,
            staging,
        } => {
            let req = csi::NodeGetVolumeStatsRequest {
                volume_id,
                volume_path: path,
                staging_target_path: staging.unwrap_or_default(),
            };
            let r = c
                .call("NodeGetVolumeStats", c.node().node_get_volume_stats(c.req(req)))
                .await?;
            stats(out, &r)
        }
    }
}

async fn info(c: &Conn, out: Output) -> anyhow::Result<()> {
    let info = c
        .call(
            "GetPluginInfo",
            c.id().get_plugin_info(c.req(csi::GetPluginInfoRequest {})),
        )
        .await?;
    let pcaps = c
        .call(
            "GetPluginCapabilities",
            c.id()
                .get_plugin_capabilities(c.req(csi::GetPluginCapabilitiesRequest {})),
        )
        .await?;
    let probe = c.call("Probe", c.id().probe(c.req(csi::ProbeRequest {}))).await?;
    let capabilities: Vec<String> = pcaps
        .capabilities
        .iter()
        .filter_map(|p| p.r#type.as_ref())
        .map(plugin_cap_name)
        .collect();
    // CSI: a Probe answer without `ready` means ready.
    let ready = probe.ready.unwrap_or(true);
    let doc = json!({
        "name": info.name,
        "vendor_version": info.vendor_version,
        "manifest": sorted(&info.manifest),
        "capabilities": capabilities,
        "ready": ready,
    });
    out.print(doc, || {
        let mut rows = vec![
            ("name", info.name.clone()),
            ("vendor_version", info.vendor_version.clone()),
        ];
        let other: HashMap<String, String> = info
            .manifest
            .iter()
            .filter(|(k, _)| !["pool/", "disk/", "skipped/"].iter().any(|p| k.starts_with(p)))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if !other.is_empty() {
            rows.push(("manifest", pairs(&other)));
        }
        rows.push(("capabilities", list_or_dash(capabilities.iter().cloned())));
        rows.push(("ready", ready.to_string()));
        print_block(&rows);
        // loam puts each pool's state in the manifest as `pool/<name>`: one line each, easier to read.
        for (k, v) in sorted(&info.manifest) {
            if let Some(pool) = k.strip_prefix("pool/") {
                println!("pool {pool}: {v}");
            }
        }
    })
}

/// The device pools' disks, from the `disk/<pool>/<identity>` and `skipped/<pool>/<path>` keys loam puts in
/// GetPluginInfo's manifest.
async fn disks(c: &Conn, out: Output, only: Option<&str>) -> anyhow::Result<()> {
    let info = c
        .call(
            "GetPluginInfo",
            c.id().get_plugin_info(c.req(csi::GetPluginInfoRequest {})),
        )
        .await?;
    let wanted = |pool: &str| only.is_none_or(|o| o == pool);
    let mut disks = Vec::new();
    let mut skipped = Vec::new();
    for (k, v) in sorted(&info.manifest) {
        if let Some((pool, key)) = k.strip_prefix("disk/").and_then(|r| r.split_once('/'))
            && wanted(pool)
        {
            let d: Value = serde_json::from_str(v).unwrap_or_else(|_| json!({"state": v}));
            disks.push(json!({
                "pool": pool,
                "identity": key,
                "size": d["size"],
                "path": d["path"],
                "state": d["state"],
            }));
        } else if let Some((pool, path)) = k.strip_prefix("skipped/").and_then(|r| r.split_once('/'))
            && wanted(pool)
        {
            skipped.push(json!({"pool": pool, "path": path, "reason": v}));
        }
    }
    if let Some(o) = only
        && !info.manifest.contains_key(&format!("pool/{o}"))
    {
        anyhow::bail!("no pool {o:?} on this node");
    }
    let doc = json!({"disks": disks, "skipped": skipped});
    out.print(doc, || {
        let text = |v: &Value| match v {
            Value::String(s) => s.clone(),
            Value::Null => "-".into(),
            other => other.to_string(),
        };
        let rows: Vec<Vec<String>> = disks
            .iter()
            .map(|d| {
                ["pool", "identity", "size", "path", "state"]
                    .iter()
                    .map(|f| text(&d[*f]))
                    .collect()
            })
            .collect();
        if rows.is_empty() {
            println!("no disks found");
        } else {
            print_table(&["POOL", "IDENTITY", "BYTES", "PATH", "STATE"], &rows);
        }
        for s in &skipped {
            println!("skipped {}: {}", text(&s["path"]), text(&s["reason"]));
        }
    })
}

fn plugin_cap_name(t: &plugin_capability::Type) -> String {
    match t {
        plugin_capability::Type::Service(s) => enum_name(
            plugin_capability::service::Type::try_from(s.r#type).map(|t| t.as_str_name()),
            s.r#type,
        ),
        plugin_capability::Type::VolumeExpansion(v) => format!(
            "VOLUME_EXPANSION_{}",
            enum_name(
                plugin_capability::volume_expansion::Type::try_from(v.r#type).map(|t| t.as_str_name()),
                v.r#type
            )
        ),
    }
}

/// Controller and node capabilities. A driver without one of the services (UNIMPLEMENTED) shows null / none.
async fn caps(c: &Conn, out: Output) -> anyhow::Result<()> {
    let ctl_req = c.req(csi::ControllerGetCapabilitiesRequest {});
    let ctl = c
        .call_if_offered(
            "ControllerGetCapabilities",
            c.ctl().controller_get_capabilities(ctl_req),
        )
        .await?;
    let node_req = c.req(csi::NodeGetCapabilitiesRequest {});
    let node = c
        .call_if_offered("NodeGetCapabilities", c.node().node_get_capabilities(node_req))
        .await?;
    let controller = ctl.map(|r| {
        r.capabilities
            .iter()
            .filter_map(|cap| cap.r#type)
            .map(|controller_service_capability::Type::Rpc(rpc)| {
                enum_name(
                    controller_service_capability::rpc::Type::try_from(rpc.r#type).map(|t| t.as_str_name()),
                    rpc.r#type,
                )
            })
            .collect::<Vec<_>>()
    });
    let node = node.map(|r| {
        r.capabilities
            .iter()
            .filter_map(|cap| cap.r#type)
            .map(|node_service_capability::Type::Rpc(rpc)| {
                enum_name(
                    node_service_capability::rpc::Type::try_from(rpc.r#type).map(|t| t.as_str_name()),
                    rpc.r#type,
                )
            })
            .collect::<Vec<_>>()
    });
    out.print(json!({ "controller": controller, "node": node }), || {
        let show = |caps: &Option<Vec<String>>| match caps {
            Some(caps) => list_or_dash(caps.iter().cloned()),
            None => "(service not offered)".to_owned(),
        };
        print_block(&[("controller", show(&controller)), ("node", show(&node))]);
    })
}

async fn node_info(c: &Conn, out: Output) -> anyhow::Result<()> {
    let r = c
        .call(
            "NodeGetInfo",
            c.node().node_get_info(c.req(csi::NodeGetInfoRequest {})),
        )
        .await?;
    let topology = r.accessible_topology.as_ref().map(|t| sorted(&t.segments));
    let doc = json!({
        "node_id": r.node_id,
        "max_volumes_per_node": r.max_volumes_per_node,
        "accessible_topology": topology.as_ref().map(|segments| json!({ "segments": segments })),
    });
    out.print(doc, || {
        let limit = match r.max_volumes_per_node {
            0 => "no limit".to_owned(),
            n => n.to_string(),
        };
        print_block(&[
            ("node_id", r.node_id.clone()),
            ("max_volumes_per_node", limit),
            (
                "accessible_topology",
                r.accessible_topology
                    .as_ref()
                    .map_or_else(|| "-".to_owned(), |t| pairs(&t.segments)),
            ),
        ]);
    })
}

async fn list(c: &Conn, out: Output, max: i32, token: String, all: bool) -> anyhow::Result<()> {
    let mut entries = Vec::new();
    let mut token = token;
    loop {
        let req = csi::ListVolumesRequest {
            max_entries: max,
            starting_token: token.clone(),
        };
        let r = c.call("ListVolumes", c.ctl().list_volumes(c.req(req))).await?;
        entries.extend(r.entries);
        if !all || r.next_token.is_empty() {
            token = r.next_token;
            break;
        }
        if r.next_token == token {
            bail!("ListVolumes returned the same next_token {token:?} again; stopping");
        }
        token = r.next_token;
    }
    let doc = json!({
        "entries": entries.iter().map(|e| json!({
            "volume": e.volume.as_ref().map(volume_json),
            "status": e.status.as_ref()
                .map(|s| status_json(Some(&s.published_node_ids), s.volume_condition.as_ref())),
        })).collect::<Vec<_>>(),
        "next_token": token,
    });
    out.print(doc, || {
        if entries.is_empty() {
            println!("no volumes");
        } else {
            let rows = entries
                .iter()
                .map(|e| {
                    let (id, cap) = e.volume.as_ref().map_or(("-".to_owned(), "-".to_owned()), |v| {
                        (v.volume_id.clone(), bytes(v.capacity_bytes))
                    });
                    let cond = e.status.as_ref().and_then(|s| s.volume_condition.as_ref());
                    vec![id, cap, condition_text(cond, false)]
                })
                .collect::<Vec<_>>();
            print_table(&["VOLUME_ID", "CAPACITY", "CONDITION"], &rows);
        }
        if !token.is_empty() {
            println!("next token: {token}");
        }
    })
}

fn stats(out: Output, r: &csi::NodeGetVolumeStatsResponse) -> anyhow::Result<()> {
    let unit = |u: i32| enum_name(volume_usage::Unit::try_from(u).map(|t| t.as_str_name()), u);
    let doc = json!({
        "usage": r.usage.iter().map(|u| json!({
            "unit": unit(u.unit),
            "total": u.total,
            "used": u.used,
            "available": u.available,
        })).collect::<Vec<_>>(),
        "volume_condition": r.volume_condition.as_ref().map(condition_json),
    });
    out.print(doc, || {
        let rows = r
            .usage
            .iter()
            .map(|u| {
                let n = |v: i64| {
                    if u.unit == volume_usage::Unit::Bytes as i32 {
                        bytes(v)
                    } else {
                        v.to_string()
                    }
                };
                vec![unit(u.unit), n(u.total), n(u.used), n(u.available)]
            })
            .collect::<Vec<_>>();
        print_table(&["UNIT", "TOTAL", "USED", "AVAILABLE"], &rows);
        println!("condition: {}", condition_text(r.volume_condition.as_ref(), true));
    })
}

/// Where results go: text for people or one JSON document.
#[derive(Clone, Copy)]
struct Output {
    json: bool,
}

impl Output {
    fn print(self, doc: Value, text: impl FnOnce()) -> anyhow::Result<()> {
        if self.json {
            println!("{}", serde_json::to_string_pretty(&doc)?);
        } else {
            text();
        }
        Ok(())
    }
}

/// `key: value` lines with the values lined up.
fn print_block(rows: &[(&str, String)]) {
    let width = rows.iter().map(|(k, _)| k.len() + 1).max().unwrap_or(0);
    for (k, v) in rows {
        println!("{:<width$} {v}", format!("{k}:"));
    }
}

/// A table with a header; every column but the last is padded to its widest cell.
fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        let text: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, cell)| {
                if i == last {
                    (*cell).to_owned()
                } else {
                    format!("{cell:<0$}", widths[i])
                }
            })
            .collect();
        println!("{}", text.join("  "));
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

fn volume_json(v: &csi::Volume) -> Value {
    let content_source = v
        .content_source
        .as_ref()
        .and_then(|s| s.r#type.as_ref())
        .map(|t| match t {
            volume_content_source::Type::Snapshot(s) => {
                json!({ "snapshot": { "snapshot_id": s.snapshot_id } })
            }
            volume_content_source::Type::Volume(s) => json!({ "volume": { "volume_id": s.volume_id } }),
        });
    json!({
        "volume_id": v.volume_id,
        "capacity_bytes": v.capacity_bytes,
        "volume_context": sorted(&v.volume_context),
        "content_source": content_source,
        "accessible_topology": v.accessible_topology.iter()
            .map(|t| json!({ "segments": sorted(&t.segments) }))
            .collect::<Vec<_>>(),
    })
}

fn volume_rows(v: &csi::Volume) -> Vec<(&'static str, String)> {
    let mut rows = vec![
        ("volume_id", v.volume_id.clone()),
        ("capacity_bytes", bytes(v.capacity_bytes)),
    ];
    let topology: Vec<String> = v.accessible_topology.iter().map(|t| pairs(&t.segments)).collect();
    rows.push((
        "accessible_topology",
        if topology.is_empty() {
            "-".to_owned()
        } else {
            topology.join(" | ")
        },
    ));
    if !v.volume_context.is_empty() {
        rows.push(("volume_context", pairs(&v.volume_context)));
    }
    rows
}

fn status_json(published_node_ids: Option<&[String]>, cond: Option<&csi::VolumeCondition>) -> Value {
    json!({
        "published_node_ids": published_node_ids.unwrap_or_default(),
        "volume_condition": cond.map(condition_json),
    })
}

fn condition_json(c: &csi::VolumeCondition) -> Value {
    json!({ "abnormal": c.abnormal, "message": c.message })
}

/// `ok` or `ABNORMAL: why`; `full` adds the message of a healthy volume too.
fn condition_text(c: Option<&csi::VolumeCondition>, full: bool) -> String {
    match c {
        None => "-".to_owned(),
        Some(c) if c.abnormal => format!("ABNORMAL: {}", c.message),
        Some(c) if full && !c.message.is_empty() => format!("ok ({})", c.message),
        Some(_) => "ok".to_owned(),
    }
}

fn capability_json(c: &csi::VolumeCapability) -> Value {
    let mode = c
        .access_mode
        .map(|m| {
            enum_name(
                access_mode::Mode::try_from(m.mode).map(|t| t.as_str_name()),
                m.mode,
            )
        })
        .map(|mode| json!({ "mode": mode }));
    match &c.access_type {
        Some(volume_capability::AccessType::Block(_)) => json!({ "block": {}, "access_mode": mode }),
        Some(volume_capability::AccessType::Mount(m)) => json!({
            "mount": {
                "fs_type": m.fs_type,
                "mount_flags": m.mount_flags,
                "volume_mount_group": m.volume_mount_group,
            },
            "access_mode": mode,
        }),
        None => json!({ "access_mode": mode }),
    }
}

fn topology(seg: Segment) -> csi::Topology {
    csi::Topology {
        segments: seg.into_iter().collect(),
    }
}

/// A protobuf map in key order, for stable output.
fn sorted(m: &HashMap<String, String>) -> BTreeMap<&str, &str> {
    m.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// `k=v,k=v` in key order.
fn pairs(m: &HashMap<String, String>) -> String {
    sorted(m)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn list_or_dash(items: impl Iterator<Item = String>) -> String {
    let items: Vec<String> = items.collect();
    if items.is_empty() {
        "-".to_owned()
    } else {
        items.join(", ")
    }
}

/// The proto name of an enum value, or the number when this build does not know it.
fn enum_name<E>(name: Result<&'static str, E>, raw: i32) -> String {
    name.map_or_else(|_| format!("UNKNOWN({raw})"), str::to_owned)
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Bytes exactly and for people: `1073741824 (1.0 GiB)`; below 1 KiB just `512 B`.
fn bytes(n: i64) -> String {
    if n.unsigned_abs() < 1024 {
        format!("{n} B")
    } else {
        format!("{n} ({})", human(n))
    }
}

/// Binary units with one decimal: `1.5 GiB`.
fn human(n: i64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v.abs() >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_sizes() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1 << 30), "1073741824 (1.0 GiB)");
        assert_eq!(bytes(1536 << 20), "1610612736 (1.5 GiB)");
        assert_eq!(human(64 << 20), "64.0 MiB");
        assert_eq!(human(i64::MAX), "8.0 EiB");
    }

    #[test]
    fn code_names() {
        assert_eq!(code_name(Code::NotFound), "NOT_FOUND");
        let e = rpc_error("CreateVolume", &Status::already_exists("volume name x is taken"));
        assert_eq!(
            e.to_string(),
            "CreateVolume failed: ALREADY_EXISTS: volume name x is taken"
        );
    }

    #[test]
    fn segments_and_params() {
        assert_eq!(parse_key_value("a=").unwrap(), ("a".into(), String::new()));
        assert!(parse_key_value("=b").is_err());
        assert!(parse_key_value("ab").is_err());
        let seg = parse_segment("loam.csi/node=n1,zone=a").unwrap();
        assert_eq!(seg.get("zone").map(String::as_str), Some("a"));
        assert!(parse_segment("a=1,a=2").is_err());
    }
}

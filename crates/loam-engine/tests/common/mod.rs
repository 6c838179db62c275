//! What the engine's integration tests share: a temporary directory with a recording fake host, the engine
//! configuration they open, and the requests most of them send.

// Each test binary uses a different subset of the helpers.
#![allow(dead_code)]

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Arc,
};

use loam_engine::{
    Engine, EngineConfig,
    spec::PoolSpec,
    types::{AccessMode, AccessType, Capability, CreateRequest},
};
use loam_sys::{fake::FakeHost, host::Host};

pub const MIB: u64 = 1 << 20;

/// A temporary directory, by its canonical path `root`, and a fresh recording fake host.
pub struct Setup {
    _dir: tempfile::TempDir,
    pub root: PathBuf,
    pub host: Arc<FakeHost>,
}

impl Setup {
    pub fn new() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        Setup {
            _dir: dir,
            root,
            host: Arc::new(FakeHost::new()),
        }
    }

    /// Makes `<root>/fs`, a directory that stands for a filesystem of its own (the test tells the fake host what
    /// it is), and returns it.
    pub fn make_fs(&self) -> PathBuf {
        let fs = self.root.join("fs");
        std::fs::create_dir(&fs).unwrap();
        fs
    }

    /// The directory of the pool on [`Setup::make_fs`]'s filesystem.
    pub fn pool_root(&self) -> PathBuf {
        self.root.join("fs/loam")
    }

    /// The directory of volume `id` in [`Setup::pool_root`].
    pub fn volume_dir(&self, id: &str) -> PathBuf {
        self.pool_root().join("volumes").join(hex(id))
    }

    /// [`engine_config`] of `pools` in this directory, on the fake host.
    pub fn config(&self, pools: Vec<PoolSpec>) -> EngineConfig {
        engine_config(&self.root, pools, self.host.clone())
    }
}

/// The configuration of node `node-a` (topology key `loam.csi/node`, no volume limit) with `pools`, the first the
/// default, its own state in `<root>/node`, on `host`.
pub fn engine_config(root: &Path, pools: Vec<PoolSpec>, host: Arc<dyn Host>) -> EngineConfig {
    EngineConfig {
        node_id: "node-a".into(),
        topology_key: "loam.csi/node".into(),
        extra_topology: BTreeMap::new(),
        default_pool: pools[0].name().to_owned(),
        pools,
        max_volumes_per_node: 0,
        state_dir: root.join("node"),
        host,
    }
}

/// A mount capability with filesystem type `fs_type` ("" for the default), SINGLE_NODE_WRITER.
pub fn mount_cap(fs_type: &str) -> Capability {
    Capability {
        access: AccessType::Mount {
            fs_type: fs_type.into(),
            mount_flags: vec![],
        },
        mode: AccessMode::SingleNodeWriter,
    }
}

/// The capability most tests use: a mount volume with the default filesystem, SINGLE_NODE_WRITER.
pub fn cap() -> Capability {
    mount_cap("")
}

/// A CreateVolume request for `size` bytes with [`cap`], in the default pool.
pub fn req(name: &str, size: u64) -> CreateRequest {
    CreateRequest {
        name: name.into(),
        required_bytes: size,
        capabilities: vec![cap()],
        ..Default::default()
    }
}

/// StorageClass parameters picking `pool`.
pub fn in_pool(pool: &str) -> BTreeMap<String, String> {
    BTreeMap::from([("pool".to_owned(), pool.to_owned())])
}

/// What the engine offers for any volume, anywhere (GetCapacity without parameters, capabilities or topology).
pub fn available(e: &Engine) -> u64 {
    e.capacity(&BTreeMap::new(), &[], None).unwrap().available_bytes
}

/// The 32-hex-digit part of a volume ID (its directory and record name).
pub fn hex(id: &str) -> &str {
    id.rsplit('_').next().unwrap()
}

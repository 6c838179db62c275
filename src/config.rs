//! The configuration file (`--config`, TOML; shipped as a ConfigMap): pools, with per-node overrides in the
//! spirit of local-path-provisioner's nodePathMap.
//!
//! ```toml
//! default_pool = "nvme"
//! [[pools]]
//! name = "nvme"
//! kind = "dir"
//! path = "/mnt/nvme0/loam"
//! capacity = "800Gi"        # optional; default: the size of the filesystem holding the pool
//!
//! [[nodes]]                  # nodes listed here use these pools instead
//! names = ["db-7"]
//! default_pool = "nvme"
//! [[nodes.pools]]
//! name = "nvme"
//! kind = "dir"
//! path = "/mnt/nvme1/loam"
//! ```

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use loam_engine::pool::{PoolConfig, PoolKind};
use serde::Deserialize;

use crate::cli::parse_size;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub default_pool: Option<String>,
    #[serde(default)]
    pub pools: Vec<PoolEntry>,
    #[serde(default)]
    pub nodes: Vec<NodeOverride>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolEntry {
    pub name: String,
    pub kind: PoolKind,
    pub path: PathBuf,
    /// Bytes as a number or a string with a unit (`"500Gi"`).
    pub capacity: Option<Size>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Size {
    Bytes(u64),
    Text(String),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeOverride {
    pub names: Vec<String>,
    pub default_pool: Option<String>,
    pub pools: Vec<PoolEntry>,
}

/// The pools and default pool for `node`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodePools {
    pub pools: Vec<PoolConfig>,
    pub default_pool: String,
}

impl FileConfig {
    pub fn load(path: &Path) -> anyhow::Result<FileConfig> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }

    /// Resolves the pools this node serves: the first override naming the node, else the top-level pools.
    pub fn for_node(&self, node: &str) -> anyhow::Result<NodePools> {
        let (entries, default) = match self.nodes.iter().find(|o| o.names.iter().any(|n| n == node)) {
            Some(o) => (&o.pools, o.default_pool.as_ref().or(self.default_pool.as_ref())),
            None => (&self.pools, self.default_pool.as_ref()),
        };
        if entries.is_empty() {
            bail!("no pools are configured for node {node}");
        }
        let pools = entries
            .iter()
            .map(PoolEntry::to_pool)
            .collect::<anyhow::Result<Vec<_>>>()?;
        let default_pool = match default {
            Some(d) => d.clone(),
            None if pools.len() == 1 => pools[0].name.clone(),
            None => bail!("several pools are configured for node {node}; set default_pool"),
        };
        Ok(NodePools { pools, default_pool })
    }
}

impl PoolEntry {
    fn to_pool(&self) -> anyhow::Result<PoolConfig> {
        let capacity_bytes = match &self.capacity {
            None => None,
            Some(Size::Bytes(b)) => Some(*b),
            Some(Size::Text(t)) => {
                Some(parse_size(t).map_err(|e| anyhow::anyhow!("pool {}: capacity: {e}", self.name))?)
            }
        };
        Ok(PoolConfig {
            name: self.name.clone(),
            kind: self.kind,
            path: self.path.clone(),
            capacity_bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"
default_pool = "fast"
[[pools]]
name = "fast"
kind = "dir"
path = "/mnt/a"
capacity = "10Gi"
[[pools]]
name = "slow"
kind = "dir"
path = "/mnt/b"
capacity = 1000

[[nodes]]
names = ["special"]
[[nodes.pools]]
name = "fast"
kind = "dir"
path = "/mnt/c"
"#;

    #[test]
    fn top_level_and_override() {
        let c: FileConfig = toml::from_str(SAMPLE).unwrap();
        let n = c.for_node("any").unwrap();
        assert_eq!(n.default_pool, "fast");
        assert_eq!(n.pools.len(), 2);
        assert_eq!(n.pools[0].capacity_bytes, Some(10 << 30));
        assert_eq!(n.pools[1].capacity_bytes, Some(1000));
        let s = c.for_node("special").unwrap();
        assert_eq!(s.pools.len(), 1);
        assert_eq!(s.pools[0].path, PathBuf::from("/mnt/c"));
        assert_eq!(s.default_pool, "fast");
    }

    #[test]
    fn mistakes_are_reported() {
        assert!(toml::from_str::<FileConfig>("poools = []").is_err());
        assert!(toml::from_str::<FileConfig>("[[pools]]\nname='a'\nkind='lvm'\npath='/x'").is_err());
        let c: FileConfig =
            toml::from_str("[[pools]]\nname='a'\nkind='dir'\npath='/x'\ncapacity='1Zi'").unwrap();
        assert!(c.for_node("n").unwrap_err().to_string().contains("capacity"));
        let two: FileConfig = toml::from_str(
            "[[pools]]\nname='a'\nkind='dir'\npath='/x'\n[[pools]]\nname='b'\nkind='dir'\npath='/y'",
        )
        .unwrap();
        assert!(
            two.for_node("n")
                .unwrap_err()
                .to_string()
                .contains("default_pool")
        );
        let none: FileConfig = toml::from_str("").unwrap();
        assert!(none.for_node("n").is_err());
    }
}

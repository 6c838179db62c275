//! The configuration file (`--config`, TOML; shipped as a ConfigMap): pools, with per-node overrides in the
//! spirit of local-path-provisioner's nodePathMap.
//!
//! ```toml
//! default_pool = "nvme"
//! [[pools]]
//! name = "nvme"
//! kind = "image"            # dir | image | btrfs | device
//! path = "/mnt/nvme0/loam"
//! capacity = "800Gi"        # optional; default: the size of the filesystem holding the pool
//! allocation = "thick"      # image pools: thick (default) or thin
//!
//! [[pools]]
//! name = "ssd"
//! kind = "device"           # whole disks: mount points and /dev links in a discovery directory
//! path = "/mnt/disks/ssd"
//! fs_type = "ext4"          # formats linked block devices for filesystem volumes
//!
//! [[nodes]]                  # nodes listed here use these pools instead
//! names = ["db-7"]
//! default_pool = "nvme"
//! [[nodes.pools]]
//! name = "nvme"
//! kind = "dir"
//! path = "/mnt/nvme1/loam"
//! ```

use std::path::Path;

use anyhow::{Context, bail};
use loam_engine::spec::PoolSpec;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub default_pool: Option<String>,
    #[serde(default)]
    pub pools: Vec<PoolSpec>,
    #[serde(default)]
    pub nodes: Vec<NodeOverride>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeOverride {
    pub names: Vec<String>,
    pub default_pool: Option<String>,
    pub pools: Vec<PoolSpec>,
}

/// The pools and default pool for `node`.
#[derive(Debug, Clone, PartialEq)]
pub struct NodePools {
    pub pools: Vec<PoolSpec>,
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
        for p in entries {
            p.check().map_err(anyhow::Error::msg)?;
        }
        let pools = entries.clone();
        let default_pool = match default {
            Some(d) => d.clone(),
            None if pools.len() == 1 => pools[0].name().to_owned(),
            None => bail!("several pools are configured for node {node}; set default_pool"),
        };
        Ok(NodePools { pools, default_pool })
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

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
        assert_eq!(n.pools[0].capacity(), Some(10 << 30));
        assert_eq!(n.pools[1].capacity(), Some(1000));
        let s = c.for_node("special").unwrap();
        assert_eq!(s.pools.len(), 1);
        assert_eq!(s.pools[0].path(), PathBuf::from("/mnt/c"));
        assert_eq!(s.default_pool, "fast");
    }

    #[test]
    fn mistakes_are_reported() {
        assert!(toml::from_str::<FileConfig>("poools = []").is_err());
        assert!(toml::from_str::<FileConfig>("[[pools]]\nname='a'\nkind='lvm'\npath='/x'").is_err());
        let e = toml::from_str::<FileConfig>("[[pools]]\nname='a'\nkind='dir'\npath='/x'\ncapacity='1Zi'")
            .unwrap_err();
        assert!(e.to_string().contains("unknown size unit"), "{e}");
        let thick_ratio: FileConfig =
            toml::from_str("[[pools]]\nname='a'\nkind='image'\npath='/x'\novercommit_ratio=2.0").unwrap();
        assert!(
            thick_ratio
                .for_node("n")
                .unwrap_err()
                .to_string()
                .contains("thin pools only")
        );
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

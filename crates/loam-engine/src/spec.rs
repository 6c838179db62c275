//! Pool specifications: one kind-tagged type that the configuration file deserializes and the engine opens.
//!
//! ```toml
//! [[pools]]
//! name = "nvme"
//! kind = "image"
//! path = "/mnt/nvme0/loam"
//! capacity = "800Gi"
//! allocation = "thin"
//! overcommit_ratio = 1.5
//! ```

use std::{fmt, path::PathBuf};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A pool as configured: its kind and the kind's own settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum PoolSpec {
    /// Volumes are directories in the pool.
    Dir(DirSpec),
    /// Volumes are image files in the pool, attached to loop devices.
    Image(ImageSpec),
    /// Volumes are btrfs subvolumes with a quota limit.
    Btrfs(BtrfsSpec),
    /// Volumes are whole disks, found in a discovery directory.
    Device(DeviceSpec),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirSpec {
    pub name: String,
    /// Directory holding the pool (`volumes/` and `records/` are made inside it).
    pub path: PathBuf,
    /// Bytes the pool may hand out; default: the size of the filesystem holding it.
    #[serde(default)]
    pub capacity: Option<ByteSize>,
    /// Whether sizes are enforced with project quota.
    #[serde(default)]
    pub quota: DirQuota,
    /// Project IDs the pool gives its volumes, first and last (default 1000000 to 1999999).
    #[serde(default)]
    pub project_ids: Option<[u32; 2]>,
    /// Inodes each volume may hold, with project quota (default: no limit).
    #[serde(default)]
    pub inode_limit: Option<u64>,
    /// Seconds between measurements of each volume's usage, without project quota (default 60).
    #[serde(default)]
    pub usage_refresh_seconds: Option<u64>,
}

/// Whether a dir pool enforces sizes with project quota.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DirQuota {
    /// Where the filesystem has project quota on (XFS prjquota, ext4 project + prjquota); accounted otherwise.
    #[default]
    Auto,
    /// Project quota or nothing: the pool refuses to start without it.
    Required,
    /// Never: sizes are accounted only.
    Off,
}

/// Project IDs of dir pools unless configured.
pub const DEFAULT_PROJECT_IDS: [u32; 2] = [1_000_000, 1_999_999];
/// Seconds between usage measurements of accounted-only dir volumes unless configured.
pub const DEFAULT_USAGE_REFRESH_SECONDS: u64 = 60;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageSpec {
    pub name: String,
    pub path: PathBuf,
    #[serde(default)]
    pub capacity: Option<ByteSize>,
    #[serde(default)]
    pub allocation: Allocation,
    /// How far a thin pool may promise beyond what its filesystem holds (1.0: not at all). Thick pools take none.
    #[serde(default)]
    pub overcommit_ratio: Option<f64>,
    /// Filesystem for volumes whose request names none (default ext4).
    #[serde(default)]
    pub fs_type: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BtrfsSpec {
    pub name: String,
    /// A directory on a btrfs filesystem.
    pub path: PathBuf,
    #[serde(default)]
    pub capacity: Option<ByteSize>,
    /// Which quota accounting to turn on when the filesystem has none.
    #[serde(default)]
    pub quota: QuotaChoice,
}

/// A pool of whole disks: each entry of a discovery directory that matches a name pattern is one disk, handed
/// out whole to one volume and cleaned when that volume is deleted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceSpec {
    pub name: String,
    /// The discovery directory: mount points of formatted disks, and links to block devices (best by
    /// `/dev/disk/by-id` name).
    pub path: PathBuf,
    /// Entry names to use, with `*` and `?` wildcards (default `*`).
    #[serde(default = "default_pattern")]
    pub pattern: String,
    /// What the entries serve.
    #[serde(default)]
    pub volume_mode: VolumeMode,
    /// Filesystem made on a block device used for a filesystem volume, on its first stage; without it block
    /// devices serve only block volumes.
    #[serde(default)]
    pub fs_type: Option<String>,
    /// How a block device is cleaned when its volume is deleted.
    #[serde(default)]
    pub cleanup: Cleanup,
    /// Offer entries that hold data (a signature, files) too; by default only empty ones are used.
    #[serde(default)]
    pub adopt_non_empty: bool,
    /// Seconds between looks at the discovery directory (default 60; also on SIGHUP).
    #[serde(default)]
    pub discovery_interval_seconds: Option<u64>,
}

fn default_pattern() -> String {
    "*".to_owned()
}

/// Seconds between discoveries of a device pool unless configured.
pub const DEFAULT_DISCOVERY_SECONDS: u64 = 60;

/// The volume mode a device pool's entries serve.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VolumeMode {
    /// Filesystem volumes: mount points, and block devices formatted with the pool's `fs_type`.
    #[default]
    Filesystem,
    /// Raw block volumes: block devices only.
    Block,
}

/// How a device pool cleans a block device before offering it again.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Cleanup {
    /// Discard the whole device (BLKDISCARD), then check a sample reads back as zeros; zero it where the device
    /// cannot discard, gives no sign that discarded blocks read as zeros, or the sample shows old data.
    #[default]
    Discard,
    /// Zero the whole device (BLKZEROOUT).
    Zero,
    /// Wipe only the signatures in the first and last MiB: quick, but the old data stays readable.
    ZeroHeader,
}

impl Cleanup {
    pub fn name(self) -> &'static str {
        match self {
            Cleanup::Discard => "discard",
            Cleanup::Zero => "zero",
            Cleanup::ZeroHeader => "zero-header",
        }
    }
}

/// The quota accounting a btrfs pool turns on when its filesystem has none on yet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QuotaChoice {
    /// Simple quotas where the kernel has them (6.7 and later), full qgroups otherwise.
    #[default]
    Auto,
    /// Simple quotas only (cheap; accounts what is written from now on).
    Simple,
    /// Full qgroups only (enabling rescans the whole filesystem).
    Full,
}

/// How an image file takes its space.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Allocation {
    /// Fully allocated at create (fallocate): the space is physically taken.
    #[default]
    Thick,
    /// Sparse: blocks are taken as the volume writes them.
    Thin,
}

/// The kinds of pool, by their configuration name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolKind {
    Dir,
    Image,
    Btrfs,
    Device,
}

impl PoolKind {
    pub fn name(self) -> &'static str {
        match self {
            PoolKind::Dir => "dir",
            PoolKind::Image => "image",
            PoolKind::Btrfs => "btrfs",
            PoolKind::Device => "device",
        }
    }
}

impl fmt::Display for PoolKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl PoolSpec {
    /// A dir pool without a configured capacity.
    pub fn dir(name: &str, path: impl Into<PathBuf>) -> PoolSpec {
        PoolSpec::Dir(DirSpec {
            name: name.to_owned(),
            path: path.into(),
            capacity: None,
            quota: DirQuota::Auto,
            project_ids: None,
            inode_limit: None,
            usage_refresh_seconds: None,
        })
    }

    /// A btrfs pool choosing its quota accounting itself, without a configured capacity.
    pub fn btrfs(name: &str, path: impl Into<PathBuf>) -> PoolSpec {
        PoolSpec::Btrfs(BtrfsSpec {
            name: name.to_owned(),
            path: path.into(),
            capacity: None,
            quota: QuotaChoice::Auto,
        })
    }

    /// A device pool of block devices and mount points under `path`, for filesystem volumes, cleaned by discard.
    pub fn device(name: &str, path: impl Into<PathBuf>) -> PoolSpec {
        PoolSpec::Device(DeviceSpec {
            name: name.to_owned(),
            path: path.into(),
            pattern: default_pattern(),
            volume_mode: VolumeMode::Filesystem,
            fs_type: None,
            cleanup: Cleanup::Discard,
            adopt_non_empty: false,
            discovery_interval_seconds: None,
        })
    }

    /// A thick image pool without a configured capacity.
    pub fn image(name: &str, path: impl Into<PathBuf>) -> PoolSpec {
        PoolSpec::Image(ImageSpec {
            name: name.to_owned(),
            path: path.into(),
            capacity: None,
            allocation: Allocation::Thick,
            overcommit_ratio: None,
            fs_type: None,
        })
    }

    pub fn kind(&self) -> PoolKind {
        match self {
            PoolSpec::Dir(_) => PoolKind::Dir,
            PoolSpec::Image(_) => PoolKind::Image,
            PoolSpec::Btrfs(_) => PoolKind::Btrfs,
            PoolSpec::Device(_) => PoolKind::Device,
        }
    }

    pub fn name(&self) -> &str {
        match self {
            PoolSpec::Dir(s) => &s.name,
            PoolSpec::Image(s) => &s.name,
            PoolSpec::Btrfs(s) => &s.name,
            PoolSpec::Device(s) => &s.name,
        }
    }

    pub fn path(&self) -> &std::path::Path {
        match self {
            PoolSpec::Dir(s) => &s.path,
            PoolSpec::Image(s) => &s.path,
            PoolSpec::Btrfs(s) => &s.path,
            PoolSpec::Device(s) => &s.path,
        }
    }

    pub fn capacity(&self) -> Option<u64> {
        match self {
            PoolSpec::Dir(s) => s.capacity,
            PoolSpec::Image(s) => s.capacity,
            PoolSpec::Btrfs(s) => s.capacity,
            // The disks found are the budget.
            PoolSpec::Device(_) => None,
        }
        .map(|b| b.0)
    }

    /// Sets the budget (builder style, for the command line's `--capacity` and tests).
    pub fn with_capacity(mut self, bytes: Option<u64>) -> PoolSpec {
        let c = bytes.map(ByteSize);
        match &mut self {
            PoolSpec::Dir(s) => s.capacity = c,
            PoolSpec::Image(s) => s.capacity = c,
            PoolSpec::Btrfs(s) => s.capacity = c,
            PoolSpec::Device(_) => {}
        }
        self
    }

    /// Sets how often a dir pool measures its volumes' usage without project quota (no effect on other kinds).
    pub fn with_usage_refresh(mut self, seconds: Option<u64>) -> PoolSpec {
        if let PoolSpec::Dir(d) = &mut self {
            d.usage_refresh_seconds = seconds;
        }
        self
    }

    /// The overcommit ratio in force: 1.0 unless a thin image pool sets one. Checked by [`PoolSpec::check`].
    pub fn overcommit_ratio(&self) -> f64 {
        match self {
            PoolSpec::Image(s) => s.overcommit_ratio.unwrap_or(1.0),
            PoolSpec::Dir(_) | PoolSpec::Btrfs(_) | PoolSpec::Device(_) => 1.0,
        }
    }

    /// The filesystem a filesystem volume gets when its request names none: the pool's `fs_type`, else the
    /// first of the formats loam makes; none for kinds that format nothing.
    pub fn default_fs_type(&self) -> Option<&str> {
        match self {
            PoolSpec::Image(s) => Some(s.fs_type.as_deref().unwrap_or(crate::capability::FS_TYPES[0])),
            PoolSpec::Device(s) => s.fs_type.as_deref(),
            PoolSpec::Dir(_) | PoolSpec::Btrfs(_) => None,
        }
    }

    /// Settings that contradict each other, named so the admin can fix the file.
    pub fn check(&self) -> Result<(), String> {
        if let PoolSpec::Dir(d) = self {
            if let Some([first, last]) = d.project_ids
                && (first == 0 || first > last)
            {
                return Err(format!(
                    "pool {}: project_ids [{first}, {last}] must be a range of IDs from 1 up, first <= last",
                    d.name
                ));
            }
            if d.usage_refresh_seconds == Some(0) {
                return Err(format!(
                    "pool {}: usage_refresh_seconds must be at least 1",
                    d.name
                ));
            }
        }
        let fs_type = match self {
            PoolSpec::Image(s) => s.fs_type.as_ref(),
            PoolSpec::Device(s) => s.fs_type.as_ref(),
            _ => None,
        };
        if let PoolSpec::Device(d) = self {
            if d.pattern.is_empty() || d.pattern.contains('/') {
                return Err(format!(
                    "pool {}: pattern {:?} must be a non-empty entry name (with * and ?), without '/'",
                    d.name, d.pattern
                ));
            }
            if d.discovery_interval_seconds == Some(0) {
                return Err(format!(
                    "pool {}: discovery_interval_seconds must be at least 1",
                    d.name
                ));
            }
            if d.volume_mode == VolumeMode::Block && d.fs_type.is_some() {
                return Err(format!(
                    "pool {}: fs_type formats block devices for filesystem volumes; a pool with volume_mode \
                     \"block\" serves raw devices and never formats them",
                    d.name
                ));
            }
        }
        if let Some(fs) = fs_type
            && !crate::capability::FS_TYPES.contains(&fs.as_str())
        {
            return Err(format!(
                "pool {}: fs_type {fs:?} is not one loam formats with; use {}",
                self.name(),
                crate::capability::FS_TYPES.join(" or ")
            ));
        }
        if let PoolSpec::Image(s) = self
            && let Some(r) = s.overcommit_ratio
        {
            if s.allocation == Allocation::Thick {
                return Err(format!(
                    "pool {}: overcommit_ratio applies to thin pools only; a thick pool never overcommits",
                    s.name
                ));
            }
            if !(r.is_finite() && (1.0..=100.0).contains(&r)) {
                return Err(format!(
                    "pool {}: overcommit_ratio must be between 1.0 and 100 (got {r})",
                    s.name
                ));
            }
        }
        Ok(())
    }
}

/// A byte count that reads as a number or as a string with a unit (`"500Gi"`, `"1T"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bytes(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Bytes(b) => Ok(ByteSize(b)),
            Raw::Text(t) => parse_size(&t).map(ByteSize).map_err(serde::de::Error::custom),
        }
    }
}

/// Parses `10`, `500G`, `1Ti`...: decimal (K, M, G, T) and binary (Ki, Mi, Gi, Ti) units.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size such as 10Gi or 500G"))?;
    let mult: u64 = match unit {
        "" => 1,
        "K" | "k" => 1000,
        "M" => 1000u64.pow(2),
        "G" => 1000u64.pow(3),
        "T" => 1000u64.pow(4),
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        _ => {
            return Err(format!(
                "unknown size unit {unit:?} in {s:?}; use K, M, G, T, Ki, Mi, Gi or Ti"
            ));
        }
    };
    n.checked_mul(mult).ok_or_else(|| format!("{s:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct File {
        pools: Vec<PoolSpec>,
    }

    #[test]
    fn kind_tagged_specs() {
        let f: File = toml::from_str(
            r#"
            [[pools]]
            name = "a"
            kind = "dir"
            path = "/a"
            capacity = "10Gi"
            [[pools]]
            name = "b"
            kind = "image"
            path = "/b"
            capacity = 1000
            allocation = "thin"
            overcommit_ratio = 1.5
            fs_type = "xfs"
            [[pools]]
            name = "c"
            kind = "btrfs"
            path = "/c"
            quota = "simple"
            "#,
        )
        .unwrap();
        assert_eq!(f.pools[0], PoolSpec::dir("a", "/a").with_capacity(Some(10 << 30)));
        assert_eq!(f.pools[1].kind(), PoolKind::Image);
        assert_eq!(f.pools[1].capacity(), Some(1000));
        assert_eq!(f.pools[1].overcommit_ratio(), 1.5);
        assert_eq!(f.pools[1].default_fs_type(), Some("xfs"));
        assert_eq!(f.pools[2].kind(), PoolKind::Btrfs);
        assert!(matches!(&f.pools[2], PoolSpec::Btrfs(b) if b.quota == QuotaChoice::Simple));
        assert!(f.pools[1].check().is_ok());
        let thick: File = toml::from_str("[[pools]]\nname='c'\nkind='image'\npath='/c'").unwrap();
        assert_eq!(thick.pools[0], PoolSpec::image("c", "/c"));
    }

    #[test]
    fn mistakes_are_refused() {
        for bad in [
            "[[pools]]\nname='a'\nkind='lvm'\npath='/x'",
            "[[pools]]\nname='a'\nkind='dir'\npath='/x'\nallocation='thin'",
            "[[pools]]\nname='a'\nkind='image'\npath='/x'\nallocation='lazy'",
            "[[pools]]\nname='a'\nkind='image'\npath='/x'\ncapacity='1Zi'",
            "[[pools]]\nname='a'\npath='/x'",
            "[[pools]]\nname='a'\nkind='btrfs'\npath='/x'\nquota='some'",
            "[[pools]]\nname='a'\nkind='btrfs'\npath='/x'\nallocation='thin'",
            "[[pools]]\nname='a'\nkind='dir'\npath='/x'\nquota='maybe'",
            "[[pools]]\nname='a'\nkind='device'\npath='/x'\ncleanup='shred'",
            "[[pools]]\nname='a'\nkind='device'\npath='/x'\nvolume_mode='both'",
            "[[pools]]\nname='a'\nkind='device'\npath='/x'\ncapacity='1Gi'",
        ] {
            assert!(toml::from_str::<File>(bad).is_err(), "{bad}");
        }
        let f: File =
            toml::from_str("[[pools]]\nname='a'\nkind='image'\npath='/x'\novercommit_ratio=2.0").unwrap();
        assert!(f.pools[0].check().unwrap_err().contains("thin pools only"));
        let f: File = toml::from_str(
            "[[pools]]\nname='a'\nkind='image'\npath='/x'\nallocation='thin'\novercommit_ratio=0.5",
        )
        .unwrap();
        assert!(f.pools[0].check().unwrap_err().contains("between"));
        let f: File =
            toml::from_str("[[pools]]\nname='a'\nkind='image'\npath='/x'\nfs_type='btrfs'").unwrap();
        assert!(f.pools[0].check().unwrap_err().contains("ext4 or xfs"));
        for bad in [
            "project_ids=[0, 9]",
            "project_ids=[9, 8]",
            "usage_refresh_seconds=0",
        ] {
            let f: File =
                toml::from_str(&format!("[[pools]]\nname='a'\nkind='dir'\npath='/x'\n{bad}")).unwrap();
            assert!(f.pools[0].check().is_err(), "{bad}");
        }
        let f: File = toml::from_str(
            "[[pools]]\nname='a'\nkind='dir'\npath='/x'\nquota='required'\nproject_ids=[10, 20]\ninode_limit=5",
        )
        .unwrap();
        assert!(f.pools[0].check().is_ok());
        assert!(
            matches!(&f.pools[0], PoolSpec::Dir(d) if d.quota == DirQuota::Required && d.inode_limit == Some(5))
        );
        for (bad, says) in [
            ("pattern=''", "pattern"),
            ("pattern='ssd/*'", "without '/'"),
            ("discovery_interval_seconds=0", "at least 1"),
            ("volume_mode='block'\nfs_type='ext4'", "never formats"),
            ("fs_type='zfs'", "ext4 or xfs"),
        ] {
            let f: File =
                toml::from_str(&format!("[[pools]]\nname='a'\nkind='device'\npath='/x'\n{bad}")).unwrap();
            let e = f.pools[0].check().unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn device_pools_parse_with_their_defaults() {
        let f: File = toml::from_str("[[pools]]\nname='ssd'\nkind='device'\npath='/mnt/disks/ssd'").unwrap();
        assert_eq!(f.pools[0], PoolSpec::device("ssd", "/mnt/disks/ssd"));
        assert_eq!(f.pools[0].kind(), PoolKind::Device);
        assert_eq!(f.pools[0].capacity(), None);
        assert_eq!(f.pools[0].default_fs_type(), None);
        let f: File = toml::from_str(
            "[[pools]]\nname='raw'\nkind='device'\npath='/d'\npattern='nvme*'\nvolume_mode='block'\n\
             cleanup='zero-header'\nadopt_non_empty=true\ndiscovery_interval_seconds=5",
        )
        .unwrap();
        let PoolSpec::Device(d) = &f.pools[0] else {
            panic!("not a device pool: {:?}", f.pools[0]);
        };
        assert_eq!(
            (
                d.volume_mode,
                d.cleanup,
                d.adopt_non_empty,
                d.discovery_interval_seconds
            ),
            (VolumeMode::Block, Cleanup::ZeroHeader, true, Some(5))
        );
        assert_eq!(d.pattern, "nvme*");
        assert!(f.pools[0].check().is_ok());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("10").unwrap(), 10);
        assert_eq!(parse_size("1Gi").unwrap(), 1 << 30);
        assert_eq!(parse_size("5G").unwrap(), 5_000_000_000);
        assert!(parse_size("1.5Gi").is_err());
        assert!(parse_size("Gi").is_err());
        assert!(parse_size("1Pi").is_err());
        assert!(parse_size("99999999999Ti").is_err());
    }
}

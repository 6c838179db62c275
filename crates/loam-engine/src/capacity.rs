//! Capacity arithmetic: what size a request gets, and whether it fits. Pure, so it is tested exhaustively.

use crate::error::{Error, Result};

/// Size of a volume whose request names no size: 1 GiB, or the limit when that is smaller.
pub const DEFAULT_VOLUME_BYTES: u64 = 1 << 30;

/// The size to allocate for `required`/`limit` (0 = unset), given the allocation granularity.
/// Rounds up to the granularity unless that would pass the limit, in which case the exact size is used when
/// it is itself a multiple; otherwise the range is unsatisfiable.
pub fn choose_size(required: u64, limit: u64, granularity: u64) -> Result<u64> {
    if limit != 0 && limit < required {
        return Err(Error::invalid(
            "capacity_range",
            format!("limit_bytes {limit} is smaller than required_bytes {required}"),
        ));
    }
    let want = if required == 0 {
        if limit == 0 {
            DEFAULT_VOLUME_BYTES
        } else {
            DEFAULT_VOLUME_BYTES.min(limit)
        }
    } else {
        required
    };
    let rounded = want.div_ceil(granularity).saturating_mul(granularity);
    if limit == 0 || rounded <= limit {
        return Ok(rounded);
    }
    // Round down instead, as long as the result still meets `required`.
    let down = limit / granularity * granularity;
    if down >= required && down > 0 {
        return Ok(down);
    }
    Err(Error::OutOfRange(format!(
        "no size between required_bytes {required} and limit_bytes {limit} is a multiple of the pool's \
         {granularity}-byte allocation unit"
    )))
}

/// What a new volume may take: the unreserved part of the pool, and never more than its filesystem has free
/// (volumes whose size the filesystem does not hold back take space as they are written, so space that is not
/// on the disk must not be promised).
pub fn available(total: u64, reserved: u64, fs_free: u64) -> u64 {
    total.saturating_sub(reserved).min(fs_free)
}

/// Whether `size` fits a pool of `total` bytes of which `reserved` are taken, on a filesystem with `fs_free`
/// bytes free.
pub fn check_fits(pool: &str, size: u64, total: u64, reserved: u64, fs_free: u64) -> Result<()> {
    if size > total {
        return Err(Error::OutOfRange(format!(
            "{size} bytes is more than pool {pool} can ever hold ({total} bytes)"
        )));
    }
    let unreserved = total.saturating_sub(reserved);
    if size > unreserved {
        return Err(Error::Exhausted(format!(
            "pool {pool} has {unreserved} bytes free, {size} requested"
        )));
    }
    if size > fs_free {
        return Err(Error::Exhausted(format!(
            "pool {pool}'s filesystem has {fs_free} bytes free, {size} requested"
        )));
    }
    Ok(())
}

/// Whether an existing volume of `size` satisfies a repeated request for `required`/`limit`.
pub fn size_compatible(size: u64, required: u64, limit: u64) -> bool {
    size >= required && (limit == 0 || size <= limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_exact_sizes() {
        assert_eq!(choose_size(0, 0, 1).unwrap(), DEFAULT_VOLUME_BYTES);
        assert_eq!(choose_size(0, 4096, 1).unwrap(), 4096);
        assert_eq!(choose_size(1, 0, 1).unwrap(), 1);
        assert_eq!(choose_size(1 << 30, 1 << 30, 1).unwrap(), 1 << 30);
    }

    #[test]
    fn rounding_respects_the_limit() {
        assert_eq!(choose_size(1, 0, 4096).unwrap(), 4096);
        assert_eq!(choose_size(5000, 10000, 4096).unwrap(), 8192);
        assert_eq!(choose_size(4096, 4096, 4096).unwrap(), 4096);
        // 8193 rounds to 12288 > 10000, so round down to 8192 which is < 8193: impossible.
        assert!(matches!(
            choose_size(8193, 10000, 4096),
            Err(Error::OutOfRange(_))
        ));
        assert!(matches!(choose_size(10, 5, 1), Err(Error::Invalid { .. })));
        assert_eq!(choose_size(u64::MAX, 0, 4096).unwrap(), u64::MAX);
    }

    #[test]
    fn fits() {
        let big = u64::MAX;
        assert!(check_fits("p", 10, 100, 90, big).is_ok());
        assert!(matches!(
            check_fits("p", 11, 100, 90, big),
            Err(Error::Exhausted(_))
        ));
        assert!(matches!(
            check_fits("p", 101, 100, 0, big),
            Err(Error::OutOfRange(_))
        ));
        assert!(matches!(
            check_fits("p", 1, 100, 200, big),
            Err(Error::Exhausted(_))
        ));
        // The disk is fuller than the accounting knows: its free space is the bound.
        assert!(check_fits("p", 5, 100, 0, 5).is_ok());
        match check_fits("p", 6, 100, 0, 5) {
            Err(Error::Exhausted(m)) => assert!(m.contains("filesystem"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn available_is_the_smaller_bound() {
        assert_eq!(available(100, 30, 1000), 70);
        assert_eq!(available(100, 30, 20), 20);
        assert_eq!(available(100, 200, 1000), 0);
        for (total, reserved, free) in [(100, 30, 1000), (100, 30, 20), (100, 0, 0), (7, 3, 4)] {
            let a = available(total, reserved, free);
            assert!(check_fits("p", a, total, reserved, free).is_ok());
            assert!(check_fits("p", a + 1, total, reserved, free).is_err());
        }
    }

    #[test]
    fn compatibility() {
        assert!(size_compatible(10, 10, 10));
        assert!(size_compatible(10, 0, 0));
        assert!(!size_compatible(10, 20, 20));
        assert!(!size_compatible(10, 0, 5));
    }
}

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

/// What bounds a pool's promises, measured just before they are checked.
///
/// The invariant, for every kind: what the pool has promised (`reserved`, every volume's full size, including
/// creates in flight) plus what it offers never exceeds `ratio` times the smaller of its budget and what its
/// filesystem can hold for its volumes, which is the free space plus what the volumes have already written.
/// So space promised to a volume but not yet written is never offered again, whoever else uses the
/// filesystem; a thin pool may go past the filesystem only by its explicit overcommit ratio.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bounds {
    /// Bytes the pool may hand out (configured, or the filesystem's size).
    pub budget: u64,
    /// Free bytes on the pool's filesystem now.
    pub fs_free: u64,
    /// Bytes the pool's volumes have already written to it (each at most its size).
    pub written: u64,
    /// Overcommit ratio (1.0: none).
    pub ratio: f64,
}

impl Bounds {
    fn scaled(&self, bytes: u64) -> u64 {
        if self.ratio <= 1.0 {
            return bytes;
        }
        // Saturating float-to-int conversion; the ratio is checked to be finite and at most 100.
        (bytes as f64 * self.ratio) as u64
    }

    /// The most the pool may ever promise: its budget, times the overcommit ratio.
    pub fn ceiling(&self) -> u64 {
        self.scaled(self.budget)
    }

    /// The most the pool may promise now.
    fn limit(&self) -> u64 {
        self.scaled(self.budget.min(self.fs_free.saturating_add(self.written)))
    }

    /// What a new volume may take now, with `reserved` already promised.
    pub fn available(&self, reserved: u64) -> u64 {
        self.limit().saturating_sub(reserved)
    }

    /// Whether a volume of `size` fits with `reserved` already promised, or why not.
    pub fn check_fits(&self, pool: &str, size: u64, reserved: u64) -> Result<()> {
        if size > self.ceiling() {
            return Err(Error::OutOfRange(format!(
                "{size} bytes is more than pool {pool} can ever hold ({} bytes)",
                self.ceiling()
            )));
        }
        let unpromised = self.ceiling().saturating_sub(reserved);
        if size > unpromised {
            return Err(Error::Exhausted(format!(
                "pool {pool} has {unpromised} bytes left to give, {size} requested"
            )));
        }
        let available = self.available(reserved);
        if size > available {
            return Err(Error::Exhausted(format!(
                "pool {pool}'s filesystem has {} bytes free and {} bytes already promised to volumes but not \
                 yet written, so {available} bytes can be given, {size} requested",
                self.fs_free,
                reserved.saturating_sub(self.written),
            )));
        }
        Ok(())
    }
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

    fn b(budget: u64, fs_free: u64, written: u64, ratio: f64) -> Bounds {
        Bounds {
            budget,
            fs_free,
            written,
            ratio,
        }
    }

    #[test]
    fn fits() {
        let big = u64::MAX / 4;
        assert!(b(100, big, 0, 1.0).check_fits("p", 10, 90).is_ok());
        assert!(matches!(
            b(100, big, 0, 1.0).check_fits("p", 11, 90),
            Err(Error::Exhausted(_))
        ));
        assert!(matches!(
            b(100, big, 0, 1.0).check_fits("p", 101, 0),
            Err(Error::OutOfRange(_))
        ));
        assert!(matches!(
            b(100, big, 0, 1.0).check_fits("p", 1, 200),
            Err(Error::Exhausted(_))
        ));
        // The disk is fuller than the accounting knows: its free space is the bound.
        assert!(b(100, 5, 0, 1.0).check_fits("p", 5, 0).is_ok());
        match b(100, 5, 0, 1.0).check_fits("p", 6, 0) {
            Err(Error::Exhausted(m)) => assert!(m.contains("filesystem"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn promised_but_unwritten_space_is_never_offered_twice() {
        // 48 free on the filesystem; a 40-byte volume promised and nothing written yet: only 8 may be offered.
        assert_eq!(b(200, 48, 0, 1.0).available(40), 8);
        // Once it has written 30 of its 40 bytes, the filesystem has 18 free: still 8.
        assert_eq!(b(200, 18, 30, 1.0).available(40), 8);
        // Fully written (thick): 8 free, 8 offered.
        assert_eq!(b(200, 8, 40, 1.0).available(40), 8);
        // A thin pool at 1.5 may promise half again as much as the filesystem holds.
        assert_eq!(b(200, 48, 0, 1.5).available(40), 32);
        assert_eq!(b(200, 1000, 0, 1.5).ceiling(), 300);
        assert!(b(200, 1000, 0, 1.5).check_fits("p", 250, 0).is_ok());
    }

    #[test]
    fn available_is_the_largest_fit() {
        for (budget, free, written, reserved, ratio) in [
            (100, 1000, 0, 30, 1.0),
            (100, 20, 0, 30, 1.0),
            (100, 0, 0, 0, 1.0),
            (7, 4, 3, 3, 1.0),
            (1000, 100, 50, 120, 2.0),
        ] {
            let bounds = b(budget, free, written, ratio);
            let a = bounds.available(reserved);
            if a > 0 {
                assert!(bounds.check_fits("p", a, reserved).is_ok(), "{bounds:?} {a}");
            }
            assert!(bounds.check_fits("p", a + 1, reserved).is_err(), "{bounds:?} {a}");
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

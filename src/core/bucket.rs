//! A token bucket on the core's clock, for the limits that refill with time (registrations per
//! address, and the quotas per account).
//!
//! A [`Rate`] is `capacity` tokens refilled at `capacity` per `period`: a client may use the whole
//! capacity at once, then as much again over each period. A [`Bucket`] holds only its level and
//! when it was last looked at (16 bytes); the rate comes from the settings, so changing a setting
//! applies to every bucket at once. The clock is the core's (milliseconds), so tests and fuzzers
//! are deterministic.

/// `capacity` tokens, refilled at `capacity` per `period_ms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Rate {
    capacity: u64,
    period_ms: i64,
}

impl Rate {
    /// A rate of `capacity` per `period_ms`; `None` when `capacity` is 0, which means no limit.
    pub(crate) fn new(capacity: u64, period_ms: i64) -> Option<Rate> {
        (capacity > 0 && period_ms > 0).then_some(Rate {
            capacity,
            period_ms,
        })
    }
}

/// A bucket's level. It starts full.
///
/// The arithmetic is exact: one token is `period_ms` units, and a millisecond refills `capacity`
/// units, so the wait before a token is back is a whole number of milliseconds, rounded up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Bucket {
    /// Units used and not yet refilled, as of `at` (0: full).
    used: i128,
    /// When `used` was last brought up to date (milliseconds).
    at: i64,
}

impl Bucket {
    fn refill(&mut self, rate: Rate, now: i64) {
        if now > self.at {
            let refilled = i128::from(now - self.at) * i128::from(rate.capacity);
            self.used = (self.used - refilled).max(0);
            self.at = now;
        }
    }

    /// Takes `cost` tokens if the bucket holds that many; otherwise takes nothing and returns how
    /// many milliseconds until it will (`i64::MAX` when `cost` is over the capacity: never).
    pub(crate) fn take(&mut self, rate: Rate, cost: u64, now: i64) -> Result<(), i64> {
        self.refill(rate, now);
        let unit = i128::from(rate.period_ms);
        let full = i128::from(rate.capacity) * unit;
        let want = i128::from(cost) * unit;
        let missing = self.used + want - full;
        if missing <= 0 {
            self.used += want;
            return Ok(());
        }
        if cost > rate.capacity {
            return Err(i64::MAX);
        }
        let per_ms = i128::from(rate.capacity);
        let wait = (missing + per_ms - 1) / per_ms;
        Err(i64::try_from(wait).unwrap_or(i64::MAX))
    }

    /// Whether `cost` tokens could be taken now, without taking them.
    pub(crate) fn check(&self, rate: Rate, cost: u64, now: i64) -> Result<(), i64> {
        let mut copy = *self;
        copy.take(rate, cost, now)
    }

    /// True when the bucket is full again (nothing to remember about it).
    pub(crate) fn is_full(&self, rate: Rate, now: i64) -> bool {
        let mut copy = *self;
        copy.refill(rate, now);
        copy.used <= 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_capacity_at_once_then_the_rate() {
        // 10 per hour.
        let rate = Rate::new(10, 3_600_000).unwrap();
        let mut b = Bucket::default();
        for _ in 0..10 {
            assert_eq!(b.take(rate, 1, 0), Ok(()));
        }
        // The 11th waits for one token: 6 minutes.
        assert_eq!(b.take(rate, 1, 0), Err(360_000));
        assert_eq!(b.check(rate, 1, 359_999), Err(1));
        assert_eq!(b.take(rate, 1, 360_000), Ok(()));
        assert_eq!(b.take(rate, 1, 360_000), Err(360_000));
        assert!(!b.is_full(rate, 360_000));
        assert!(b.is_full(rate, 360_000 + 3_600_000));
        // More than the capacity can never be taken; nothing is taken by the attempt.
        let mut fresh = Bucket::default();
        assert_eq!(fresh.take(rate, 11, 0), Err(i64::MAX));
        assert_eq!(fresh.take(rate, 10, 0), Ok(()));
        assert_eq!(Rate::new(0, 1000), None);
    }
}

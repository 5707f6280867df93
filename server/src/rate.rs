//! A token bucket that refills continuously, shared by the LLM path's
//! limits (per minute, waited for) and the API keys' limits (per second,
//! refused with a retry hint).

use std::time::Duration;
use tokio::time::Instant;

#[derive(Debug)]
pub(crate) struct TokenBucket {
    per_second: f64,
    capacity: f64,
    level: f64,
    at: Instant,
}

impl TokenBucket {
    /// A full bucket refilling at `per_second` up to `capacity`.
    pub fn new(per_second: f64, capacity: f64, now: Instant) -> Self {
        Self {
            per_second,
            capacity,
            level: capacity,
            at: now,
        }
    }

    pub fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.level = (self.level + elapsed * self.per_second).min(self.capacity);
        self.at = now;
    }

    /// How long until `amount` is available (zero when it is now). An amount
    /// above the capacity waits for a full bucket and then overdraws it.
    pub fn wait_for(&self, amount: f64) -> Duration {
        let needed = amount.min(self.capacity) - self.level;
        if needed <= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(needed / self.per_second)
        }
    }

    /// Takes `amount` (negative: gives it back); the level may go below
    /// zero, which later callers wait out.
    pub fn take(&mut self, amount: f64) {
        self.level -= amount;
    }

    /// Takes `amount` if it is available at `now`, else says how long until
    /// it is.
    pub fn try_take(&mut self, amount: f64, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        let wait = self.wait_for(amount);
        if wait.is_zero() {
            self.take(amount);
            Ok(())
        } else {
            Err(wait)
        }
    }

    pub fn per_second(&self) -> f64 {
        self.per_second
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refills_at_its_rate_up_to_its_capacity() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(2.0, 4.0, start);
        assert_eq!(bucket.wait_for(4.0), Duration::ZERO);
        bucket.take(4.0);
        assert_eq!(bucket.wait_for(1.0), Duration::from_millis(500));
        bucket.refill(start + Duration::from_secs(1));
        assert_eq!(bucket.wait_for(2.0), Duration::ZERO);
        bucket.refill(start + Duration::from_secs(60));
        assert_eq!(bucket.wait_for(4.0), Duration::ZERO);
        assert_eq!(
            bucket.wait_for(5.0),
            Duration::ZERO,
            "capped at a full bucket"
        );
        bucket.take(10.0);
        assert_eq!(
            bucket.try_take(1.0, start + Duration::from_secs(60)),
            Err(Duration::from_millis(3500))
        );
        assert_eq!(
            bucket.wait_for(1.0),
            Duration::from_millis(3500),
            "an overdraft is waited out"
        );
        let later = start + Duration::from_millis(63_500);
        assert_eq!(bucket.try_take(1.0, later), Ok(()));
        assert_eq!(bucket.wait_for(1.0), Duration::from_millis(500));
        assert_eq!(bucket.per_second(), 2.0);
    }
}

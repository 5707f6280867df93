//! What keeps the summary path polite and self-limiting: a rate limit on
//! requests and tokens per minute, a circuit breaker that pauses the queue
//! while the provider fails, and jittered exponential back-off.
//!
//! The rate limit is written here rather than taken from `governor`: a
//! request's token cost is only an estimate when it is sent, and the
//! bucket must be charged the difference once the provider reports what
//! the call really used, which `governor`'s cells cannot be.

use crate::rate::TokenBucket;
use parking_lot::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// Requests and tokens per minute; 0 turns a limit off.
#[derive(Debug)]
pub struct RateLimiter {
    buckets: Mutex<(Option<TokenBucket>, Option<TokenBucket>)>,
}

impl RateLimiter {
    pub fn new(requests_per_minute: u32, tokens_per_minute: u32) -> Self {
        let now = Instant::now();
        // A minute's worth at most.
        let bucket = |rate: u32| {
            (rate > 0).then(|| TokenBucket::new(f64::from(rate) / 60.0, f64::from(rate), now))
        };
        Self {
            buckets: Mutex::new((bucket(requests_per_minute), bucket(tokens_per_minute))),
        }
    }

    /// Waits until one request of about `tokens` tokens may go, and takes it.
    pub async fn acquire(&self, tokens: u32) {
        loop {
            let wait = {
                let now = Instant::now();
                let mut buckets = self.buckets.lock();
                let (requests, token_bucket) = &mut *buckets;
                let mut wait = Duration::ZERO;
                if let Some(b) = requests.as_mut() {
                    b.refill(now);
                    wait = wait.max(b.wait_for(1.0));
                }
                if let Some(b) = token_bucket.as_mut() {
                    b.refill(now);
                    wait = wait.max(b.wait_for(f64::from(tokens)));
                }
                if wait.is_zero() {
                    if let Some(b) = requests.as_mut() {
                        b.take(1.0);
                    }
                    if let Some(b) = token_bucket.as_mut() {
                        b.take(f64::from(tokens));
                    }
                    return;
                }
                wait
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// Charges the difference between what a call used and what was taken
    /// for it beforehand (a refund when it used less).
    pub fn settle(&self, estimated: u32, used: u32) {
        if let Some(b) = self.buckets.lock().1.as_mut() {
            b.take(f64::from(used) - f64::from(estimated));
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls flow.
    Closed,
    /// The provider kept failing: nothing is sent until the cool-down ends.
    Open,
    /// The cool-down ended: one trial call decides.
    HalfOpen,
}

impl BreakerState {
    /// The state as the `pulse_llm_breaker_state` gauge reports it.
    pub fn gauge(self) -> f64 {
        match self {
            Self::Closed => 0.0,
            Self::HalfOpen => 0.5,
            Self::Open => 1.0,
        }
    }
}

#[derive(Debug)]
struct BreakerInner {
    consecutive_failures: u32,
    open_until: Option<Instant>,
    trial_in_flight: bool,
}

/// Opens after `threshold` consecutive failed calls, stays open for
/// `cool_down`, then lets one trial call through: success closes it,
/// failure opens it again.
#[derive(Debug)]
pub struct CircuitBreaker {
    threshold: u32,
    cool_down: Duration,
    inner: Mutex<BreakerInner>,
}

/// Permission to make one call; report how it went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    Call,
    Trial,
}

impl CircuitBreaker {
    pub fn new(threshold: u32, cool_down: Duration) -> Self {
        Self {
            threshold: threshold.max(1),
            cool_down,
            inner: Mutex::new(BreakerInner {
                consecutive_failures: 0,
                open_until: None,
                trial_in_flight: false,
            }),
        }
    }

    pub fn state(&self) -> BreakerState {
        let inner = self.inner.lock();
        match inner.open_until {
            None => BreakerState::Closed,
            Some(until) if Instant::now() < until => BreakerState::Open,
            Some(_) => BreakerState::HalfOpen,
        }
    }

    /// A permit now, or how long to wait before asking again.
    pub fn try_permit(&self) -> Result<Permit, Duration> {
        let mut inner = self.inner.lock();
        match inner.open_until {
            None => Ok(Permit::Call),
            Some(until) => {
                let now = Instant::now();
                if now < until {
                    Err(until - now)
                } else if inner.trial_in_flight {
                    // Another worker's trial decides; look again shortly.
                    Err(self.cool_down.min(Duration::from_millis(100)))
                } else {
                    inner.trial_in_flight = true;
                    Ok(Permit::Trial)
                }
            }
        }
    }

    /// Waits until a call may be made.
    pub async fn permit(&self) -> Permit {
        loop {
            match self.try_permit() {
                Ok(permit) => return permit,
                Err(wait) => tokio::time::sleep(wait).await,
            }
        }
    }

    pub fn succeeded(&self, permit: Permit) {
        let mut inner = self.inner.lock();
        inner.consecutive_failures = 0;
        if permit == Permit::Trial || inner.open_until.is_some() {
            inner.open_until = None;
            inner.trial_in_flight = false;
        }
    }

    /// Counts a failed call; true when this failure opened the breaker.
    pub fn failed(&self, permit: Permit) -> bool {
        let mut inner = self.inner.lock();
        inner.consecutive_failures = inner.consecutive_failures.saturating_add(1);
        let reopen = permit == Permit::Trial;
        if permit == Permit::Trial {
            inner.trial_in_flight = false;
        }
        if reopen || (inner.open_until.is_none() && inner.consecutive_failures >= self.threshold) {
            inner.open_until = Some(Instant::now() + self.cool_down);
            return true;
        }
        false
    }
}

/// Jittered exponential back-off: attempt `n` (from 1) waits a uniformly
/// random time in `[base·2ⁿ⁻¹ / 2, base·2ⁿ⁻¹]`, capped at `max`; a
/// provider's `Retry-After` wins when it asks for longer.
pub fn back_off(
    attempt: u32,
    base: Duration,
    max: Duration,
    retry_after: Option<Duration>,
) -> Duration {
    let exponent = attempt.saturating_sub(1).min(20);
    let ceiling = base.saturating_mul(1 << exponent).min(max);
    let jittered = ceiling.mul_f64(0.5 + 0.5 * fastrand::f64());
    match retry_after {
        Some(asked) => jittered.max(asked.min(max)),
        None => jittered,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Real clocks, short rates: the waits asserted are lower bounds that
    // only the limiter can explain, with loose upper bounds.
    #[tokio::test]
    async fn the_request_bucket_spaces_calls_once_empty() {
        // 600 a minute: a full bucket of 600, then one every 100 ms.
        let limiter = RateLimiter::new(600, 0);
        let started = Instant::now();
        for _ in 0..600 {
            limiter.acquire(10).await;
        }
        assert!(started.elapsed() < Duration::from_millis(90));
        let emptied = Instant::now();
        limiter.acquire(10).await;
        limiter.acquire(10).await;
        let waited = emptied.elapsed();
        assert!(
            waited >= Duration::from_millis(180) && waited < Duration::from_secs(2),
            "{waited:?}"
        );
    }

    #[tokio::test]
    async fn the_token_bucket_charges_what_calls_really_used() {
        let limiter = RateLimiter::new(0, 6000);
        limiter.acquire(3000).await;
        // The call used 6000, not 3000: the bucket is now empty.
        limiter.settle(3000, 6000);
        let started = Instant::now();
        limiter.acquire(20).await;
        let waited = started.elapsed();
        // 20 tokens at 6000 a minute take 200 ms to come back.
        assert!(
            waited >= Duration::from_millis(190) && waited < Duration::from_secs(2),
            "{waited:?}"
        );
        // A refund makes room at once.
        limiter.acquire(100).await;
        limiter.settle(100, 0);
        let started = Instant::now();
        limiter.acquire(90).await;
        assert!(started.elapsed() < Duration::from_millis(150));
    }

    #[tokio::test]
    async fn the_breaker_opens_cools_down_and_closes_on_a_good_trial() {
        let cool_down = Duration::from_millis(200);
        let breaker = CircuitBreaker::new(3, cool_down);
        for i in 0..3 {
            assert_eq!(breaker.try_permit(), Ok(Permit::Call));
            assert_eq!(breaker.failed(Permit::Call), i == 2);
        }
        assert_eq!(breaker.state(), BreakerState::Open);
        assert!(breaker.try_permit().is_err());
        tokio::time::sleep(cool_down).await;
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        assert_eq!(breaker.try_permit(), Ok(Permit::Trial));
        // Only one trial at a time.
        assert!(breaker.try_permit().is_err());
        // A failed trial opens it again for a whole cool-down.
        assert!(breaker.failed(Permit::Trial));
        assert_eq!(breaker.state(), BreakerState::Open);
        let started = Instant::now();
        let trial = breaker.permit().await;
        assert!(started.elapsed() >= cool_down - Duration::from_millis(10));
        assert_eq!(trial, Permit::Trial);
        breaker.succeeded(trial);
        assert_eq!(breaker.state(), BreakerState::Closed);
        assert_eq!(breaker.try_permit(), Ok(Permit::Call));
        // A success resets the count of consecutive failures.
        breaker.failed(Permit::Call);
        breaker.failed(Permit::Call);
        breaker.succeeded(Permit::Call);
        assert!(!breaker.failed(Permit::Call));
        assert_eq!(breaker.state(), BreakerState::Closed);
    }

    #[test]
    fn back_off_grows_jitters_caps_and_honours_retry_after() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(5);
        for attempt in 1..=4 {
            let ceiling = base * (1 << (attempt - 1));
            for _ in 0..50 {
                let wait = back_off(attempt, base, max, None);
                assert!(
                    wait >= ceiling / 2 && wait <= ceiling,
                    "{attempt}: {wait:?}"
                );
            }
        }
        assert!(back_off(30, base, max, None) <= max);
        let asked = Duration::from_secs(2);
        assert!(back_off(1, base, max, Some(asked)) >= asked);
        assert!(back_off(1, base, max, Some(Duration::from_secs(60))) <= max);
    }
}

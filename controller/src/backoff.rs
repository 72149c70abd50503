//! Waiting on other systems: the one retry policy and the one polling schedule.
//!
//! Owns how long tollgate waits before asking a remote system (AWS, GitHub) again, in the two
//! situations where it has to:
//! - [`Backoff`]: a call failed with [`PortError::Retryable`] (throttling, 5xx, a timeout).
//!   It is tried again after a full-jitter exponential delay, a bounded number of times; only
//!   when that budget is spent does the caller see `Retryable`. Every adapter uses it for its
//!   own temporary failures (the AWS adapters through [`crate::aws::retry::Limiter`], which
//!   adds rate limiting in front of each attempt).
//! - [`PollSettings`]: something is still in progress (a stack updating, a pipeline running,
//!   a workflow run queued). The waiter looks at once, then after `initial`, each interval the
//!   next step of the 1-2-5 series (0.1 s, 0.2 s, 0.5 s, 1 s, 2 s, 5 s, 10 s, …) up to `max`,
//!   until `timeout` has passed.
//!
//! # The production schedule ([`PollSettings::default`])
//! Looks at 0 s, then 0.1, 0.2, 0.5, 1, 2, 5, 10 s apart, then every 15 s: at 0, 0.1, 0.3,
//! 0.8, 1.8, 3.8, 8.8, 18.8, 33.8, 48.8 s, … An operation that is already over (the emulator,
//! an empty update) is seen at the first look; one that takes a few seconds is seen within
//! about half its duration; a long one within 15 s of finishing. A change set ready after
//! 20 s costs 9 looks; a 3-minute stack update about 19 (8 in the first 19 s, then one per
//! 15 s).
//!
//! # Guarantees
//! - Bounded: a retried call sleeps at most [`Backoff::max_total`] in all; a poll returns once
//!   its timeout has passed (the last look happens at the deadline).
//! - A poll never sleeps before its first look.
//! - Only `Retryable` is retried; every other error is returned at once.
//!
//! # Must never
//! - retry around a call that already retries through this policy (attempts would multiply):
//!   each operation has exactly one retrying layer, the adapter's.
//! - read the system clock: delays use tokio's time, so tests run it paused.

use std::future::Future;
use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;

use crate::engine::ports::PortError;

/// How a temporary failure is retried: full jitter, uniform in
/// `[0, min(cap, base × 2^(retry-1))]`, at most `max_attempts` attempts in all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// First backoff ceiling; doubled on each retry.
    pub base: Duration,
    /// Largest backoff ceiling.
    pub cap: Duration,
    /// Attempts in all, the first included.
    pub max_attempts: u32,
}

impl Default for Backoff {
    /// About 25 s of sleeping at most over 8 attempts: long enough to ride out a burst of
    /// throttling, short enough that a real outage is reported while someone is watching.
    fn default() -> Self {
        Backoff {
            base: Duration::from_millis(200),
            cap: Duration::from_secs(20),
            max_attempts: 8,
        }
    }
}

impl Backoff {
    /// Runs `op`, trying again after a jittered delay while it fails with a temporary error.
    /// `what` names the call in the log.
    pub async fn retry<T, F, Fut>(&self, what: &str, mut op: F) -> Result<T, PortError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, PortError>>,
    {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match op().await {
                Err(e) if e.is_retryable() && attempt < self.max_attempts => {
                    let delay = self.delay(attempt);
                    tracing::warn!(call = what, attempt, error = %e, ?delay, "temporary failure; retrying");
                    tokio::time::sleep(delay).await;
                }
                other => return other,
            }
        }
    }

    /// The delay after failed attempt `attempt` (1-based): uniform up to its ceiling.
    pub fn delay(&self, attempt: u32) -> Duration {
        let millis = self.ceiling(attempt).as_millis() as u64;
        Duration::from_millis(rand::thread_rng().gen_range(0..=millis))
    }

    /// The longest delay after failed attempt `attempt`: `min(cap, base × 2^(attempt-1))`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(16));
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// The longest one call can spend sleeping between its attempts.
    pub fn max_total(&self) -> Duration {
        (1..self.max_attempts).map(|a| self.ceiling(a)).sum()
    }
}

/// How a waiter polls: a look at once, the next after `initial`, each interval the next step
/// of the 1-2-5 series up to `max`, giving up once `timeout` has passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PollSettings {
    pub initial: Duration,
    pub max: Duration,
    pub timeout: Duration,
}

impl Default for PollSettings {
    /// For real AWS, where an operation takes from nothing to minutes: short intervals first
    /// (0.1 s, 0.2 s, 0.5 s, …), so a quick one is seen at once, growing to 15 s, so a long one
    /// costs about four looks a minute (see the module's schedule).
    fn default() -> Self {
        PollSettings {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(15),
            timeout: Duration::from_secs(60 * 60),
        }
    }
}

impl PollSettings {
    /// For an emulator or a stub that answers at once.
    pub fn fast() -> Self {
        PollSettings {
            initial: Duration::from_millis(10),
            max: Duration::from_millis(100),
            timeout: Duration::from_secs(30),
        }
    }

    /// The same interval every time.
    pub fn every(interval: Duration, timeout: Duration) -> Self {
        PollSettings {
            initial: interval,
            max: interval,
            timeout,
        }
    }

    pub fn with_timeout(self, timeout: Duration) -> Self {
        PollSettings { timeout, ..self }
    }

    /// Calls `check` at once and then on the schedule until it returns `Some`; `Ok(None)` once
    /// `timeout` has passed. An error from `check` ends the wait.
    pub async fn poll<T, F, Fut>(&self, mut check: F) -> Result<Option<T>, PortError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<Option<T>, PortError>>,
    {
        let deadline = Instant::now() + self.timeout;
        let mut delay = self.initial.max(Duration::from_millis(1));
        loop {
            if let Some(done) = check().await? {
                return Ok(Some(done));
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            tokio::time::sleep(delay.min(deadline - now)).await;
            delay = next_step(delay).min(self.max.max(self.initial));
        }
    }
}

/// The next interval after `delay`: the smallest value of the 1-2-5 series (1, 2, 5, 10, 20,
/// 50, … ms) larger than it.
fn next_step(delay: Duration) -> Duration {
    let mut decade = Duration::from_millis(1);
    loop {
        for step in [1, 2, 5] {
            let candidate = decade.saturating_mul(step);
            if candidate > delay {
                return candidate;
            }
        }
        if decade >= Duration::from_secs(86_400) {
            return delay.saturating_mul(2);
        }
        decade = decade.saturating_mul(10);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_poll_looks_at_once_then_backs_off_until_the_timeout() {
        let settings = PollSettings {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(4),
            timeout: Duration::from_secs(20),
        };
        let start = Instant::now();
        let looks = Mutex::new(Vec::new());
        let got: Option<()> = settings
            .poll(|| async {
                looks.lock().unwrap().push(start.elapsed().as_secs());
                Ok(None)
            })
            .await
            .unwrap();
        assert_eq!(got, None);
        assert_eq!(start.elapsed(), Duration::from_secs(20));
        // At once, then 1, 2, 4 (5 capped at the max), 4, 4 s apart, and a last look at the
        // deadline.
        assert_eq!(*looks.lock().unwrap(), [0, 1, 3, 7, 11, 15, 19, 20]);
    }

    /// The production schedule: quick looks first, then one every 15 s, so a 3-minute stack
    /// update is seen within 15 s of finishing at the cost of about 19 looks.
    #[tokio::test(start_paused = true)]
    async fn the_default_schedule_looks_quickly_first_then_every_fifteen_seconds() {
        let start = Instant::now();
        let looks = Mutex::new(Vec::new());
        let done_at = Duration::from_secs(180);
        let seen = PollSettings::default()
            .poll(|| async {
                looks.lock().unwrap().push(start.elapsed().as_millis());
                Ok((start.elapsed() >= done_at).then_some(()))
            })
            .await
            .unwrap();
        assert_eq!(seen, Some(()));
        let looks = looks.into_inner().unwrap();
        assert_eq!(
            looks[..10],
            [
                0, 100, 300, 800, 1_800, 3_800, 8_800, 18_800, 33_800, 48_800
            ]
        );
        assert_eq!(looks.len(), 19);
        assert!(start.elapsed() - done_at <= Duration::from_secs(15));
    }

    #[test]
    fn steps_follow_the_one_two_five_series() {
        let ms = Duration::from_millis;
        assert_eq!(next_step(ms(10)), ms(20));
        assert_eq!(next_step(ms(100)), ms(200));
        assert_eq!(next_step(ms(200)), ms(500));
        assert_eq!(next_step(ms(500)), ms(1_000));
        assert_eq!(next_step(ms(3_000)), ms(5_000));
        assert_eq!(next_step(Duration::ZERO), ms(1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_poll_that_finds_it_done_at_once_does_not_sleep() {
        let start = Instant::now();
        let found = PollSettings::default()
            .poll(|| async { Ok(Some(7)) })
            .await
            .unwrap();
        assert_eq!(found, Some(7));
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn an_error_ends_the_poll() {
        let looks = AtomicU32::new(0);
        let got: Result<Option<()>, _> = PollSettings::default()
            .poll(|| async {
                looks.fetch_add(1, Ordering::SeqCst);
                Err(PortError::Failed("stack rolled back".into()))
            })
            .await;
        assert_eq!(got, Err(PortError::Failed("stack rolled back".into())));
        assert_eq!(looks.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn temporary_failures_are_retried_within_the_budget() {
        let backoff = Backoff::default();
        let calls = AtomicU32::new(0);
        let start = Instant::now();
        let got = backoff
            .retry("op", || async {
                match calls.fetch_add(1, Ordering::SeqCst) {
                    0..3 => Err(PortError::Retryable("HTTP 503".into())),
                    n => Ok(n + 1),
                }
            })
            .await;
        assert_eq!(got, Ok(4));
        assert!(start.elapsed() <= backoff.max_total());

        let calls = AtomicU32::new(0);
        let start = Instant::now();
        let got: Result<(), _> = backoff
            .retry("op", || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(PortError::Retryable("HTTP 503".into()))
            })
            .await;
        assert!(got.unwrap_err().is_retryable());
        assert_eq!(calls.load(Ordering::SeqCst), backoff.max_attempts);
        assert!(start.elapsed() <= backoff.max_total());
    }

    #[tokio::test(start_paused = true)]
    async fn other_failures_are_returned_at_once() {
        let calls = AtomicU32::new(0);
        let got: Result<(), _> = Backoff::default()
            .retry("op", || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(PortError::Denied("AccessDenied".into()))
            })
            .await;
        assert!(matches!(got, Err(PortError::Denied(_))));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn backoff_ceilings_double_up_to_the_cap() {
        let b = Backoff::default();
        assert_eq!(b.ceiling(1), Duration::from_millis(200));
        assert_eq!(b.ceiling(2), Duration::from_millis(400));
        assert_eq!(b.ceiling(8), Duration::from_secs(20));
        assert_eq!(b.ceiling(40), Duration::from_secs(20));
        assert!(b.delay(3) <= Duration::from_millis(800));
        assert_eq!(b.max_total(), Duration::from_millis(25_400));
    }
}

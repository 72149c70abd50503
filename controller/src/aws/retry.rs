//! Per-account, per-API rate limiting and retry for every AWS call.
//!
//! Owns one token bucket per (account, API name) and the retry loop: a call waits for a
//! token, runs, and when it fails with [`PortError::Retryable`] (throttling, 5xx, timeouts)
//! sleeps a full-jitter exponential backoff and tries again.
//!
//! # Guarantees
//! - A throttled call never becomes a failure unless every attempt ([`RetrySettings::max_attempts`])
//!   was throttled; the backoff of one call is bounded (base × 2ⁿ, capped, jittered).
//! - Buckets are independent: one busy account or API never slows another.
//!
//! # Caveats
//! - Time is tokio's, so tests can run it paused.
//! - The SDK's own retries should be off for configs used through this (see
//!   [`super::sts::Credentials`]), or attempts multiply.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;

use crate::engine::ports::PortError;

/// How fast and how often calls are made and retried.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetrySettings {
    /// Tokens added per second to each (account, API) bucket.
    pub rate: f64,
    /// Bucket size: how many calls may go at once after a quiet period.
    pub burst: f64,
    /// First backoff ceiling; doubled on each retry.
    pub base: Duration,
    /// Largest backoff ceiling.
    pub cap: Duration,
    /// Attempts in all, the first included.
    pub max_attempts: u32,
}

impl Default for RetrySettings {
    fn default() -> Self {
        RetrySettings {
            rate: 10.0,
            burst: 20.0,
            base: Duration::from_millis(200),
            cap: Duration::from_secs(20),
            max_attempts: 8,
        }
    }
}

/// Token buckets plus the retry loop. Share one per controller (`Arc<Limiter>`).
#[derive(Debug)]
pub struct Limiter {
    settings: RetrySettings,
    buckets: Mutex<HashMap<(String, &'static str), Bucket>>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Default for Limiter {
    fn default() -> Self {
        Limiter::new(RetrySettings::default())
    }
}

impl Limiter {
    pub fn new(settings: RetrySettings) -> Limiter {
        Limiter {
            settings,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Runs `op` under the (`account`, `api`) bucket, retrying temporary failures.
    pub async fn call<T, F, Fut>(
        &self,
        account: &str,
        api: &'static str,
        mut op: F,
    ) -> Result<T, PortError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, PortError>>,
    {
        let mut attempt = 0;
        loop {
            self.acquire(account, api).await;
            attempt += 1;
            match op().await {
                Err(e) if e.is_retryable() && attempt < self.settings.max_attempts => {
                    let delay = self.backoff(attempt);
                    tracing::warn!(account, api, attempt, error = %e, ?delay, "temporary AWS failure; retrying");
                    tokio::time::sleep(delay).await;
                }
                other => return other,
            }
        }
    }

    /// Waits until the bucket has a token and takes it.
    async fn acquire(&self, account: &str, api: &'static str) {
        while let Some(wait) = self.try_take(account, api) {
            tokio::time::sleep(wait).await;
        }
    }

    /// `None`: a token was taken. `Some(wait)`: none yet; one will be there after `wait`.
    fn try_take(&self, account: &str, api: &'static str) -> Option<Duration> {
        let s = &self.settings;
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let bucket = buckets.entry((account.to_string(), api)).or_insert(Bucket {
            tokens: s.burst,
            last: now,
        });
        let refill = now.duration_since(bucket.last).as_secs_f64() * s.rate;
        bucket.tokens = (bucket.tokens + refill).min(s.burst);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return None;
        }
        Some(Duration::from_secs_f64((1.0 - bucket.tokens) / s.rate))
    }

    /// Full jitter: uniform in `[0, min(cap, base × 2^(attempt-1))]`.
    fn backoff(&self, attempt: u32) -> Duration {
        let ceiling = self.ceiling(attempt);
        let millis = ceiling.as_millis() as u64;
        Duration::from_millis(rand::thread_rng().gen_range(0..=millis))
    }

    fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(16));
        self.settings
            .base
            .saturating_mul(factor)
            .min(self.settings.cap)
    }

    /// The longest a call can spend sleeping between attempts (not counting rate limiting).
    pub fn max_backoff(&self) -> Duration {
        (1..self.settings.max_attempts)
            .map(|a| self.ceiling(a))
            .sum()
    }
}

/// How a waiter polls: first check after `initial`, the interval doubling up to `max`, giving up
/// after `timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PollSettings {
    pub initial: Duration,
    pub max: Duration,
    pub timeout: Duration,
}

impl Default for PollSettings {
    /// For real AWS: CloudFormation and CodePipeline take seconds to minutes.
    fn default() -> Self {
        PollSettings {
            initial: Duration::from_secs(2),
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

    pub fn with_timeout(self, timeout: Duration) -> Self {
        PollSettings { timeout, ..self }
    }

    /// Sleeps, then calls `check` until it returns `Some`; `Ok(None)` once `timeout` has passed.
    pub async fn poll<T, F, Fut>(&self, mut check: F) -> Result<Option<T>, PortError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<Option<T>, PortError>>,
    {
        let deadline = Instant::now() + self.timeout;
        let mut delay = self.initial;
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            tokio::time::sleep(delay.min(deadline - now)).await;
            if let Some(done) = check().await? {
                return Ok(Some(done));
            }
            delay = (delay * 2).min(self.max);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    fn throttled(n: u32, calls: &AtomicU32) -> Result<u32, PortError> {
        let seen = calls.fetch_add(1, Ordering::SeqCst) + 1;
        if seen <= n {
            Err(PortError::Retryable("Throttling: Rate exceeded".into()))
        } else {
            Ok(seen)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn throttling_is_retried_until_it_succeeds() {
        let limiter = Limiter::default();
        let calls = AtomicU32::new(0);
        let start = Instant::now();
        let got = limiter
            .call("222222222222", "DescribeStacks", || async {
                throttled(5, &calls)
            })
            .await;
        assert_eq!(got, Ok(6));
        assert!(start.elapsed() <= limiter.max_backoff());
    }

    #[tokio::test(start_paused = true)]
    async fn retries_are_bounded() {
        let limiter = Limiter::default();
        let calls = AtomicU32::new(0);
        let start = Instant::now();
        let got = limiter
            .call("a", "Op", || async { throttled(100, &calls) })
            .await;
        assert!(got.unwrap_err().is_retryable());
        assert_eq!(calls.load(Ordering::SeqCst), 8);
        assert!(start.elapsed() <= limiter.max_backoff());
    }

    #[tokio::test(start_paused = true)]
    async fn other_failures_are_not_retried() {
        let limiter = Limiter::default();
        let calls = AtomicU32::new(0);
        let got: Result<(), _> = limiter
            .call("a", "Op", || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(PortError::Denied("AccessDenied: no".into()))
            })
            .await;
        assert!(matches!(got, Err(PortError::Denied(_))));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_bucket_limits_the_rate_per_account_and_api() {
        let limiter = Limiter::new(RetrySettings {
            rate: 10.0,
            burst: 5.0,
            ..RetrySettings::default()
        });
        let start = Instant::now();
        for _ in 0..15 {
            limiter
                .call("a", "Op", || async { Ok::<_, PortError>(()) })
                .await
                .unwrap();
        }
        // 5 from the burst, then 10 more at 10/s.
        let elapsed = start.elapsed();
        assert!(
            elapsed >= Duration::from_millis(990) && elapsed <= Duration::from_millis(1100),
            "{elapsed:?}"
        );
        let other = Instant::now();
        limiter
            .call("b", "Op", || async { Ok::<_, PortError>(()) })
            .await
            .unwrap();
        limiter
            .call("a", "Other", || async { Ok::<_, PortError>(()) })
            .await
            .unwrap();
        assert_eq!(other.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn polling_backs_off_and_gives_up_at_the_timeout() {
        let settings = PollSettings {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(4),
            timeout: Duration::from_secs(20),
        };
        let calls = AtomicU32::new(0);
        let start = Instant::now();
        let got: Option<()> = settings
            .poll(|| async {
                calls.fetch_add(1, Ordering::SeqCst);
                Ok(None)
            })
            .await
            .unwrap();
        assert_eq!(got, None);
        assert_eq!(start.elapsed(), Duration::from_secs(20));
        // 1, 2, 4, 4, 4, 4, then the last 1 s up to the deadline.
        assert_eq!(calls.load(Ordering::SeqCst), 7);
        let found = settings.poll(|| async { Ok(Some(7)) }).await.unwrap();
        assert_eq!(found, Some(7));
    }

    #[test]
    fn backoff_ceilings_double_up_to_the_cap() {
        let limiter = Limiter::default();
        assert_eq!(limiter.ceiling(1), Duration::from_millis(200));
        assert_eq!(limiter.ceiling(2), Duration::from_millis(400));
        assert_eq!(limiter.ceiling(8), Duration::from_secs(20));
        assert_eq!(limiter.ceiling(40), Duration::from_secs(20));
        assert!(limiter.backoff(3) <= Duration::from_millis(800));
    }
}

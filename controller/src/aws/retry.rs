//! Per-account, per-API rate limiting and retry for every AWS call.
//!
//! Owns one token bucket per (account, API name) and runs every AWS call under it: a call
//! waits for a token, runs, and when it fails with [`PortError::Retryable`] (throttling, 5xx,
//! timeouts) is tried again under the controller's one retry policy ([`Backoff`]: full-jitter
//! exponential backoff, bounded attempts), waiting for a token again before each attempt.
//!
//! # Guarantees
//! - A throttled call never becomes a failure unless every attempt ([`RetrySettings::max_attempts`])
//!   was throttled; the backoff of one call is bounded (base × 2ⁿ, capped, jittered).
//! - Buckets are independent: one busy account or API never slows another.
//! - This is the only retrying layer of an AWS call: the SDK's own retries are off for every
//!   config handed out by [`super::sts::Credentials`], and nothing above the adapters retries.
//!
//! - No attempt waits for ever: every SDK config handed out by [`super::sts::Credentials`]
//!   carries [`CallTimeouts`] (connect, read, per attempt, per operation). A call that connects
//!   and never answers ends in a timeout, which [`super::errors`] reports as `Retryable`, so it
//!   is abandoned and tried again here, with the same request (and so the same idempotency
//!   token or change-set name).
//!
//! # Caveats
//! - Time is tokio's, so tests can run it paused.
//! - Waiting for something in progress is not retrying: that is [`PollSettings::poll`].
//!
//! # Why not the SDK's retry modes
//! The AWS SDK for Rust has two retry modes (`aws_config::retry::RetryConfig::standard()` and
//! `::adaptive()`), read here from `aws-smithy-runtime` 1.9.4
//! (`src/client/retries/strategy/standard.rs`, `token_bucket.rs`, `client_rate_limiter.rs`),
//! `aws-runtime` 1.5.16 (`src/retries/classifiers.rs`), the generated `config.rs` of
//! `aws-sdk-cloudformation` 1.83 (`default_retry_partition`) and the AWS SDKs' reference page
//! "Retry behavior" (docs.aws.amazon.com/sdkref/latest/guide/feature-retry-behavior.html).
//! What they do, and why this module keeps its own bucket and loop:
//! - **Partitioned by service and region, shared by the whole process.** Both the retry quota
//!   and the adaptive client-side rate limiter live in process-wide static maps keyed by the
//!   client's retry partition, by default `"<service>-<region>"` (`"cloudformation-us-east-1"`).
//!   Every account tollgate deploys to would share one limiter per service and region, and
//!   every API of a service would share it too. AWS throttles per account and per API, so a
//!   throttled Prod `DescribeStacks` would slow Beta's `CreateChangeSet`. A custom
//!   `RetryPartition` could be made per account, but still not per API, and a custom
//!   partition is never shared between clients, which are built per call here.
//! - **A retry quota that turns throttling into failures.** Standard and adaptive modes draw
//!   every retry from a bucket of 500 tokens per partition (5 per throttled or 5xx retry, 10
//!   per timeout, 1 back per success). Fifty concurrent promotions throttled together empty it
//!   after about a hundred retries, and from then on a throttled call fails on its first
//!   error. The design's "throttling never turns into a failed deploy" rules that out.
//! - **Adaptive is reactive only.** Its rate limiter (CUBIC, wall-clock `SystemTime`) is off
//!   until a throttling error has been seen in the partition and cannot be given a ceiling
//!   beforehand; ours starts at a configured rate per account and API, so a burst of 50
//!   promotions is smoothed before AWS has to refuse anything. AWS's page itself recommends
//!   adaptive only for a client working against a single resource.
//! - **A different idea of "temporary".** The SDK's throttling list (`THROTTLING_ERRORS`)
//!   includes `LimitExceededException` and `TransactionInProgressException`. For
//!   CloudFormation and ECR, `LimitExceededException` is a quota (too many stacks or
//!   repositories) that no retry fixes; [`super::errors`] reports it as a failure at once.
//! - **Covers SDK calls only.** Every operation of an SDK client does go through its retry
//!   strategy, but the approval sender's store writes and the GitHub calls do not; one policy
//!   ([`Backoff`]) covers all of them, so every adapter gives up after the same budget.
//!
//! What the SDK could have replaced is the backoff formula alone: its standard mode computes
//! `rand(0..1) × min(max_backoff, initial_backoff × 2ⁿ)`, the same full jitter as
//! [`Backoff::delay`]. That function is private to `aws-smithy-runtime`, and taking the loop
//! from the SDK would bring the quota and the partitioning with it, so the few lines stay
//! here, shared with GitHub. The SDK's classification of error codes is not public API
//! either; [`super::errors`] keeps the table, with the SDK's throttling codes minus the quotas.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::backoff::Backoff;
pub use crate::backoff::PollSettings;
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
    /// How long one attempt may take before it is abandoned (and retried).
    pub timeouts: CallTimeouts,
}

/// The SDK's timeouts for every AWS call (`aws_config::timeout::TimeoutConfig`).
///
/// CloudFormation and CodePipeline waits are polling loops of short describe calls
/// ([`PollSettings`]), never one long call, so every single call is expected to answer within
/// seconds; one that does not is abandoned and retried under [`Backoff`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallTimeouts {
    /// Establishing the TCP and TLS connection.
    pub connect: Duration,
    /// From sending the request to the first byte of its response.
    pub read: Duration,
    /// One attempt: request sent to response read, connection included.
    pub attempt: Duration,
    /// The whole SDK operation, credentials and signing included. The SDK's own retries are
    /// off, so this bounds one attempt plus its set-up; [`Limiter`] bounds the attempts.
    pub operation: Duration,
}

impl Default for CallTimeouts {
    /// Connect 3 s, read 20 s, attempt 30 s, operation 40 s: AWS's control-plane APIs answer
    /// in well under a second, and the largest request tollgate sends (a `CreateChangeSet`
    /// with a 51 200-byte template body) in a few.
    fn default() -> Self {
        CallTimeouts {
            connect: Duration::from_secs(3),
            read: Duration::from_secs(20),
            attempt: Duration::from_secs(30),
            operation: Duration::from_secs(40),
        }
    }
}

impl CallTimeouts {
    /// The same timeouts in the SDK's terms.
    pub fn sdk(&self) -> aws_config::timeout::TimeoutConfig {
        aws_config::timeout::TimeoutConfig::builder()
            .connect_timeout(self.connect)
            .read_timeout(self.read)
            .operation_attempt_timeout(self.attempt)
            .operation_timeout(self.operation)
            .build()
    }
}

impl Default for RetrySettings {
    fn default() -> Self {
        let backoff = Backoff::default();
        RetrySettings {
            rate: 10.0,
            burst: 20.0,
            base: backoff.base,
            cap: backoff.cap,
            max_attempts: backoff.max_attempts,
            timeouts: CallTimeouts::default(),
        }
    }
}

impl RetrySettings {
    /// The retry half of the settings.
    pub fn backoff(&self) -> Backoff {
        Backoff {
            base: self.base,
            cap: self.cap,
            max_attempts: self.max_attempts,
        }
    }
}

/// Token buckets plus the retry policy. Share one per controller (`Arc<Limiter>`).
#[derive(Debug)]
pub struct Limiter {
    settings: RetrySettings,
    buckets: Mutex<HashMap<(String, &'static str), Bucket>>,
    /// When a call in each account was last refused as denied (see [`Limiter::denied_at`]).
    denied: Mutex<HashMap<String, Instant>>,
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
            denied: Mutex::new(HashMap::new()),
        }
    }

    /// Runs `op` under the (`account`, `api`) bucket, retrying temporary failures. Each attempt
    /// is built by `op`, then waits for a token before it is sent.
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
        let what = format!("AWS {api} in {account}");
        let attempts = std::sync::atomic::AtomicU32::new(0);
        let result = self
            .settings
            .backoff()
            .retry(&what, || {
                if attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed) > 0 {
                    let labels = crate::metrics::OperationLabels { operation: api };
                    crate::metrics::global()
                        .aws_retries
                        .get_or_create(&labels)
                        .inc();
                }
                let attempt = op();
                async move {
                    self.acquire(account, api).await;
                    attempt.await
                }
            })
            .await;
        if let Err(PortError::Denied(_)) = &result {
            let mut denied = self.denied.lock().unwrap_or_else(|e| e.into_inner());
            denied.insert(account.to_string(), Instant::now());
        }
        result
    }

    /// When a call in `account` was last refused as denied (access denied, an expired or
    /// unknown token): the assumed-role session it used may have been revoked, and the next
    /// call assumes the role again (`aws::sts`).
    pub fn denied_at(&self, account: &str) -> Option<Instant> {
        let denied = self.denied.lock().unwrap_or_else(|e| e.into_inner());
        denied.get(account).copied()
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

    /// The settings this limiter was made with.
    pub fn settings(&self) -> &RetrySettings {
        &self.settings
    }

    /// The controller's retry policy, for an adapter that must try a whole step again.
    pub fn backoff(&self) -> Backoff {
        self.settings.backoff()
    }

    /// The longest a call can spend sleeping between attempts (not counting rate limiting).
    pub fn max_backoff(&self) -> Duration {
        self.settings.backoff().max_total()
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
}

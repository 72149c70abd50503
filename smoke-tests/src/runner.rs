//! Running a suite: one HTTP client, checks in file order, samples and retries with capped
//! exponential backoff. Owns all network I/O of the crate.
//!
//! # Guarantees
//! - Nothing is sent unless every check resolves (see `prepare`).
//! - Bounded: at most `samples × (retries + 1)` requests per check, each with its timeout,
//!   and a body read stops at [`MAX_BODY_BYTES`].
//! - Redirects are not followed: a check sees the status the stage answered with.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use reqwest::{Client, Response, redirect};

use crate::error::RunError;
use crate::expect::{self, Observed};
use crate::prepare::{Prepared, prepare};
use crate::report::{CheckOutcome, LatencyStats, Report};
use crate::stats;
use crate::suite::Suite;

/// The longest wait between two attempts of a check.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// How much of a response body is read and judged.
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// Where and with what variables to run a suite.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// The stage's base URL; each check's path is appended to it.
    pub base_url: String,
    /// Values for `${NAME}` in checks, e.g. `STAGE_URL`, `COMMIT_SHA`.
    pub env: BTreeMap<String, String>,
}

impl RunOptions {
    pub fn new(base_url: impl Into<String>) -> Self {
        Self {
            base_url: base_url.into(),
            env: BTreeMap::new(),
        }
    }
}

/// Runs every check of `suite` against `options.base_url`.
pub async fn run(suite: &Suite, options: &RunOptions) -> Report {
    let started = Instant::now();
    let ready =
        prepare(suite, &options.base_url, &options.env).and_then(|checks| Ok((client()?, checks)));
    let (client, checks) = match ready {
        Ok(ready) => ready,
        Err(reason) => return Report::not_started(suite, &options.base_url, reason),
    };
    let mut outcomes = Vec::with_capacity(checks.len());
    for check in &checks {
        outcomes.push(run_check(&client, check).await);
    }
    Report {
        suite: suite.name.clone(),
        origin: suite.origin.clone(),
        base_url: options.base_url.clone(),
        passed: outcomes.iter().all(|outcome| outcome.passed),
        aborted: None,
        checks: outcomes,
        elapsed_ms: stats::millis(started.elapsed()),
    }
}

fn client() -> Result<Client, RunError> {
    Client::builder()
        .user_agent(concat!("tollgate-smoke-tests/", env!("CARGO_PKG_VERSION")))
        .redirect(redirect::Policy::none())
        .build()
        .map_err(|err| RunError::Client(error_chain(&err)))
}

/// What one attempt (a round of samples) found.
struct Round {
    latencies: Vec<Duration>,
    failure: Option<String>,
}

async fn run_check(client: &Client, check: &Prepared) -> CheckOutcome {
    let mut attempts = 1;
    let mut round = run_round(client, check).await;
    while round.failure.is_some() && attempts <= check.retries {
        tokio::time::sleep(backoff_delay(check.backoff, attempts)).await;
        attempts += 1;
        round = run_round(client, check).await;
    }
    outcome(check, attempts, round)
}

fn outcome(check: &Prepared, attempts: u32, round: Round) -> CheckOutcome {
    let stats = (check.samples > 1)
        .then(|| LatencyStats::from_samples(&round.latencies))
        .flatten();
    CheckOutcome {
        name: check.name.clone(),
        request: check.request_line(),
        passed: round.failure.is_none(),
        attempts,
        failure: round
            .failure
            .map(|what| format!("check {:?}: {}: {what}", check.name, check.request_line())),
        latencies_ms: round.latencies.iter().copied().map(stats::millis).collect(),
        stats,
    }
}

/// Takes every sample; stops at the first wrong answer, but measures all samples for latency.
async fn run_round(client: &Client, check: &Prepared) -> Round {
    let mut latencies = Vec::new();
    for index in 1..=check.samples {
        let problem = match sample(client, check).await {
            Err(problem) => problem,
            Ok((seen, latency)) => {
                latencies.push(latency);
                let problems = expect::mismatches(&check.expect, &seen);
                if problems.is_empty() {
                    continue;
                }
                problems.join("; ")
            }
        };
        let failure = match check.samples {
            1 => problem,
            total => format!("sample {index} of {total}: {problem}"),
        };
        return Round {
            latencies,
            failure: Some(failure),
        };
    }
    let failure = expect::latency_failure(check.expect.max_latency, &latencies);
    Round { latencies, failure }
}

/// Sends one request and reads its body; the latency covers both.
async fn sample(client: &Client, check: &Prepared) -> Result<(Observed, Duration), String> {
    let mut request = client
        .request(check.method.clone(), check.url.clone())
        .headers(check.headers.clone())
        .timeout(check.timeout);
    if let Some(body) = &check.body {
        request = request.body(body.clone());
    }
    let started = Instant::now();
    let response = request
        .send()
        .await
        .map_err(|err| describe(err, check.timeout))?;
    let status = response.status().as_u16();
    let body = read_body(response)
        .await
        .map_err(|err| describe(err, check.timeout))?;
    let latency = started.elapsed();
    Ok((Observed { status, body }, latency))
}

/// Reads at most [`MAX_BODY_BYTES`] of the body, as text.
async fn read_body(mut response: Response) -> Result<String, reqwest::Error> {
    let mut bytes = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = MAX_BODY_BYTES - bytes.len();
        bytes.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if bytes.len() == MAX_BODY_BYTES {
            break;
        }
    }
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// A transport error as one line; the URL is left out, the message already names it.
fn describe(err: reqwest::Error, timeout: Duration) -> String {
    let err = err.without_url();
    if err.is_timeout() {
        return format!(
            "no complete response within the {} timeout",
            stats::format_duration(timeout)
        );
    }
    if err.is_connect() {
        return format!("cannot connect: {}", root_cause(&err));
    }
    error_chain(&err)
}

/// The innermost cause of an error, usually the operating system's own words.
fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = err;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// An error and its causes on one line, without repeating the URL.
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text = format!("{text}: {cause_text}");
        }
        source = cause.source();
    }
    text
}

/// The wait before retry number `retry` (1-based): `initial × 2^(retry-1)`, at most [`MAX_BACKOFF`].
pub(crate) fn backoff_delay(initial: Duration, retry: u32) -> Duration {
    let factor = 1u32
        .checked_shl(retry.saturating_sub(1))
        .unwrap_or(u32::MAX);
    initial.saturating_mul(factor).min(MAX_BACKOFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let ms = Duration::from_millis;
        let table = [
            (1, ms(500)),
            (2, ms(1_000)),
            (3, ms(2_000)),
            (5, ms(8_000)),
            (6, MAX_BACKOFF),
            (40, MAX_BACKOFF),
        ];
        for (retry, want) in table {
            assert_eq!(backoff_delay(ms(500), retry), want, "retry {retry}");
        }
        assert_eq!(backoff_delay(Duration::ZERO, 3), Duration::ZERO);
    }
}

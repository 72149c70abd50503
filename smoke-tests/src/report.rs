//! The outcome of a run: per-check results, latency figures, and the human summary whose last
//! lines say what failed and why. Owns presentation only; nothing here sends a request.

use std::fmt::Write as _;
use std::time::Duration;

use serde::{Serialize, Serializer};

use crate::error::RunError;
use crate::stats::{self, format_ms};

/// What a run found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub suite: String,
    /// The suite file (or label) the checks came from.
    pub origin: String,
    pub base_url: String,
    /// Every check passed and the run was not aborted.
    pub passed: bool,
    /// Why no request was sent, when the run could not start.
    #[serde(serialize_with = "display_option")]
    pub aborted: Option<RunError>,
    pub checks: Vec<CheckOutcome>,
    pub elapsed_ms: f64,
}

/// What one check found, in its last attempt.
#[derive(Debug, Clone, Serialize)]
pub struct CheckOutcome {
    pub name: String,
    /// Method and URL, e.g. `GET https://gamma.example.com/healthz`.
    pub request: String,
    pub passed: bool,
    /// Attempts made, the first one included.
    pub attempts: u32,
    /// Names the check and says what differed, when it failed.
    pub failure: Option<String>,
    /// Latency of each sample of the last attempt, in milliseconds.
    pub latencies_ms: Vec<f64>,
    /// Present when the check takes more than one sample.
    pub stats: Option<LatencyStats>,
}

/// Latency figures over a check's samples, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LatencyStats {
    pub samples: usize,
    pub min_ms: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl LatencyStats {
    /// Figures over `latencies`; `None` when there are none.
    pub fn from_samples(latencies: &[Duration]) -> Option<Self> {
        if latencies.is_empty() {
            return None;
        }
        let mut sorted = latencies.to_vec();
        sorted.sort_unstable();
        let at = |pct| stats::millis(stats::nearest_rank(&sorted, pct));
        Some(Self {
            samples: sorted.len(),
            min_ms: stats::millis(*sorted.first()?),
            p50_ms: at(50.0),
            p95_ms: at(95.0),
            p99_ms: at(99.0),
            max_ms: stats::millis(*sorted.last()?),
        })
    }
}

impl Report {
    /// The checks that failed.
    pub fn failures(&self) -> impl Iterator<Item = &CheckOutcome> {
        self.checks.iter().filter(|check| !check.passed)
    }

    /// A report for a run that stopped before any request.
    pub(crate) fn not_started(suite: &crate::Suite, base_url: &str, reason: RunError) -> Self {
        Self {
            suite: suite.name.clone(),
            origin: suite.origin.clone(),
            base_url: base_url.to_string(),
            passed: false,
            aborted: Some(reason),
            checks: Vec::new(),
            elapsed_ms: 0.0,
        }
    }

    /// A multi-line summary for a log; its last lines name each failure and its cause.
    pub fn summary(&self) -> String {
        let mut out = format!(
            "smoke suite {:?} ({}) against {}\n",
            self.suite, self.origin, self.base_url
        );
        if let Some(reason) = &self.aborted {
            let _ = writeln!(out, "ABORTED before any request: {reason}");
            return out;
        }
        let width = self.checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
        for check in &self.checks {
            let _ = writeln!(out, "  {}", check.line(width));
        }
        out.push_str(&self.verdict());
        out
    }

    fn verdict(&self) -> String {
        let took = format!("{:.1} s", self.elapsed_ms / 1_000.0);
        let failed: Vec<&CheckOutcome> = self.failures().collect();
        if failed.is_empty() {
            let count = u32::try_from(self.checks.len()).unwrap_or(u32::MAX);
            return format!("PASSED: {} in {took}\n", plural(count, "check"));
        }
        let mut out = format!(
            "FAILED: {} of {} checks failed in {took}\n",
            failed.len(),
            self.checks.len()
        );
        for check in failed {
            let _ = writeln!(out, "  {}", check.explanation());
        }
        out
    }
}

impl CheckOutcome {
    /// One aligned line: verdict, name, attempts and latency.
    fn line(&self, width: usize) -> String {
        let verdict = if self.passed { "ok  " } else { "FAIL" };
        let attempts = plural(self.attempts, "attempt");
        format!(
            "{verdict}  {:<width$}  {attempts:<10}  {}",
            self.name,
            self.latency()
        )
        .trim_end()
        .to_string()
    }

    fn latency(&self) -> String {
        match (&self.stats, self.latencies_ms.as_slice()) {
            (Some(s), _) => format!(
                "{} samples: p50 {}, p95 {}, p99 {}",
                s.samples,
                format_ms(s.p50_ms),
                format_ms(s.p95_ms),
                format_ms(s.p99_ms)
            ),
            (None, [only]) => format_ms(*only),
            (None, _) => String::new(),
        }
    }

    /// The failure with how many attempts it took to give up.
    fn explanation(&self) -> String {
        let failure = self.failure.as_deref().unwrap_or("failed");
        match self.attempts {
            1 => failure.to_string(),
            n => format!("{failure} [gave up after {n} attempts]"),
        }
    }
}

fn plural(count: u32, noun: &str) -> String {
    match count {
        1 => format!("1 {noun}"),
        n => format!("{n} {noun}s"),
    }
}

fn display_option<S: Serializer>(
    value: &Option<RunError>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match value {
        Some(reason) => serializer.collect_str(reason),
        None => serializer.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(name: &str, failure: Option<&str>, attempts: u32) -> CheckOutcome {
        CheckOutcome {
            name: name.into(),
            request: format!("GET http://127.0.0.1:9/{name}"),
            passed: failure.is_none(),
            attempts,
            failure: failure.map(str::to_string),
            latencies_ms: vec![4.2],
            stats: None,
        }
    }

    fn report(checks: Vec<CheckOutcome>) -> Report {
        Report {
            suite: "backend".into(),
            origin: "backend.toml".into(),
            base_url: "http://127.0.0.1:9".into(),
            passed: checks.iter().all(|c| c.passed),
            aborted: None,
            checks,
            elapsed_ms: 1_234.0,
        }
    }

    #[test]
    fn failure_summary_ends_with_the_cause() {
        let failure =
            r#"check "version": GET http://127.0.0.1:9/api/version: expected status 200, got 503"#;
        let report = report(vec![
            outcome("health", None, 1),
            outcome("version", Some(failure), 3),
        ]);
        let summary = report.summary();
        let last = summary.lines().last().unwrap();
        assert_eq!(
            last,
            format!("  {failure} [gave up after 3 attempts]"),
            "{summary}"
        );
        assert!(
            summary.contains("FAILED: 1 of 2 checks failed in 1.2 s"),
            "{summary}"
        );
        assert!(
            summary.contains("ok    health   1 attempt   4.2 ms"),
            "{summary}"
        );
    }

    #[test]
    fn passing_summary_says_so_last() {
        let summary = report(vec![outcome("health", None, 1)]).summary();
        assert_eq!(summary.lines().last(), Some("PASSED: 1 check in 1.2 s"));
    }

    #[test]
    fn stats_use_nearest_rank() {
        let samples: Vec<Duration> = (1..=20).map(Duration::from_millis).collect();
        let stats = LatencyStats::from_samples(&samples).unwrap();
        assert_eq!(
            (stats.p50_ms, stats.p95_ms, stats.p99_ms),
            (10.0, 19.0, 20.0)
        );
        assert_eq!((stats.min_ms, stats.max_ms, stats.samples), (1.0, 20.0, 20));
        assert_eq!(LatencyStats::from_samples(&[]), None);
    }
}

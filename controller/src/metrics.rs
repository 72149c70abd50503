//! The controller's Prometheus metrics: one registry per process, every series named
//! `tollgate_…`, rendered in the Prometheus/OpenMetrics text format by [`render`].
//!
//! Owns the series and the few helpers that feed them from typed facts: the engine's run
//! transitions and effects ([`Metrics::run_transition`], [`Metrics::effect_finished`]), the
//! outcome each release reaches ([`release_outcome`]), webhook answers, every AWS SDK
//! attempt ([`crate::aws::observe::CallMetrics`]), GitHub calls, the reconcile loop and the
//! API's refused calls.
//! The HTTP route that serves them is [`crate::http::metrics`].
//!
//! # Why `prometheus-client`
//! It is the Prometheus project's own Rust client (github.com/prometheus/client_rust): typed
//! label sets (a struct per family, so a series can only be given the labels it was declared
//! with), no global recorder macros, and an encoder that follows the OpenMetrics text format
//! Prometheus scrapes. `metrics` + `metrics-exporter-prometheus` would add a facade whose
//! labels are free-form strings at every call site, which is exactly what keeps cardinality
//! from being checked by the compiler.
//!
//! # Guarantees
//! - Label values are bounded: pipelines and stages come from the configuration, statuses,
//!   outcomes and results from fixed enums, AWS services and operations from the SDK's own
//!   operation metadata (a fixed set per SDK). No series carries a commit sha, a release id,
//!   an effect key, a token or a URL.
//! - Values come from typed state (run statuses, effect kinds and outcomes, HTTP statuses),
//!   never from parsing a reason or a message.
//!
//! # Caveats
//! - Counters and histograms start at zero with the process (the Prometheus convention);
//!   a stage run that started before a restart is not observed in the run-duration histogram.
//! - The registry is process-wide ([`global`]): tests that need exact values run the real
//!   binary, one process per test.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::config::Pipeline;
use crate::domain::{ReleaseId, RunStatus, StageRun};

/// The content type of [`render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PipelineLabels {
    pub pipeline: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabels {
    pub pipeline: String,
    pub stage: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RunLabels {
    pub pipeline: String,
    pub stage: String,
    pub status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EffectLabels {
    pub pipeline: String,
    pub stage: String,
    /// `succeeded` or `failed`.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReleaseLabels {
    pub pipeline: String,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookLabels {
    pub source: &'static str,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AwsLabels {
    pub service: String,
    pub operation: String,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    pub operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GithubLabels {
    pub method: &'static str,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabels {
    /// The route's template, e.g. `/api/v1/pipelines/{pipeline}/pause`.
    pub route: String,
    pub status: &'static str,
}

/// Where a webhook delivery came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookSource {
    Github,
    Sns,
}

impl WebhookSource {
    fn as_str(self) -> &'static str {
        match self {
            WebhookSource::Github => "github",
            WebhookSource::Sns => "sns",
        }
    }
}

/// A histogram family whose histograms share one set of buckets.
#[derive(Clone)]
pub struct Buckets(&'static [f64]);

impl MetricConstructor<Histogram> for Buckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(self.0.iter().copied())
    }
}

type Histograms<L> = Family<L, Histogram, Buckets>;

/// Stage runs last from seconds (no gates) to days (an approval that waits).
const RUN_BUCKETS: &[f64] = &[
    1.0, 5.0, 15.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 43200.0, 86400.0,
    259200.0,
];
/// A deploy or rollback takes from well under a second (emulator) to the 1 h poll timeout.
const DEPLOY_BUCKETS: &[f64] = &[
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0,
];
/// The design's target is p99 < 250 ms from alarm to the first rollback call.
const ALARM_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.175, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A reconcile takes milliseconds; a busy store or a slow snapshot shows as seconds.
const LAG_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

fn histograms<L: Clone + std::hash::Hash + Eq>(buckets: &'static [f64]) -> Histograms<L> {
    Family::new_with_constructor(Buckets(buckets))
}

/// Every series of the controller.
pub struct Metrics {
    registry: Registry,
    pub releases: Family<ReleaseLabels, Counter>,
    pub stage_runs: Histograms<RunLabels>,
    pub deploys: Histograms<EffectLabels>,
    pub rollbacks: Histograms<EffectLabels>,
    pub alarm_to_rollback: Histograms<StageLabels>,
    pub approvals_pending: Family<StageLabels, Gauge>,
    approval_age: Family<StageLabels, Gauge<f64, AtomicU64>>,
    pub webhooks: Family<WebhookLabels, Counter>,
    pub aws_calls: Family<AwsLabels, Counter>,
    pub aws_retries: Family<OperationLabels, Counter>,
    pub github_calls: Family<GithubLabels, Counter>,
    /// Unlabelled, and absent until GitHub first answered with the header (a zero would
    /// read as "exhausted").
    github_rate_remaining: Family<[(&'static str, &'static str); 0], Gauge>,
    pub reconcile_lag: Histograms<PipelineLabels>,
    pub api_refused: Family<RefusedLabels, Counter>,
    /// When each in-flight run left `waiting` (this process saw it), by pipeline, release and
    /// stage: the start of its run-duration observation. Bounded by the runs in flight.
    run_started: Mutex<HashMap<(String, ReleaseId, String), DateTime<Utc>>>,
    /// The oldest pending approval per (pipeline, stage) (`None`: none pending), for the age
    /// gauge at scrape time.
    pending_since: Mutex<HashMap<StageLabels, Option<DateTime<Utc>>>>,
    /// 1 while this controller may reconcile and perform effects (sole, or leading), else 0.
    leader: Gauge,
    /// The leader lease's epoch as this controller last saw it (absent when sole).
    leader_epoch: Family<[(&'static str, &'static str); 0], Gauge>,
    /// 1 while this controller declines the lead because the configuration it would act with
    /// is refused against the work in flight, else 0.
    lead_declined: Gauge,
}

/// The process's metrics.
pub fn global() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

/// The process's metrics in the text exposition format, with approval ages as of `now`.
pub fn render(now: DateTime<Utc>) -> String {
    let m = global();
    m.refresh_ages(now);
    let mut text = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &m.registry) {
        tracing::error!(error = %e, "cannot encode the metrics");
    }
    text
}

impl Metrics {
    fn new() -> Metrics {
        let mut m = Metrics {
            registry: Registry::with_prefix("tollgate"),
            releases: Family::default(),
            stage_runs: histograms(RUN_BUCKETS),
            deploys: histograms(DEPLOY_BUCKETS),
            rollbacks: histograms(DEPLOY_BUCKETS),
            alarm_to_rollback: histograms(ALARM_BUCKETS),
            approvals_pending: Family::default(),
            approval_age: Family::default(),
            webhooks: Family::default(),
            aws_calls: Family::default(),
            aws_retries: Family::default(),
            github_calls: Family::default(),
            github_rate_remaining: Family::default(),
            reconcile_lag: histograms(LAG_BUCKETS),
            api_refused: Family::default(),
            run_started: Mutex::default(),
            pending_since: Mutex::default(),
            leader: Gauge::default(),
            leader_epoch: Family::default(),
            lead_declined: Gauge::default(),
        };
        m.register();
        m
    }

    fn register(&mut self) {
        let r = &mut self.registry;
        r.register(
            "releases",
            "Releases that reached an outcome, by pipeline and outcome (succeeded: its last stage succeeded; else the final status of its first run that did not succeed: rolled_back, failed, rejected, expired, superseded)",
            self.releases.clone(),
        );
        r.register(
            "stage_run_duration_seconds",
            "Stage runs from leaving waiting to their final status (a succeeded run rolled back later: from its rollback's start), by pipeline, stage and final status",
            self.stage_runs.clone(),
        );
        r.register(
            "deploy_duration_seconds",
            "Deploys of one wave (promote, change set, execute, wait), by pipeline, stage and result",
            self.deploys.clone(),
        );
        r.register(
            "rollback_duration_seconds",
            "Rollbacks of one wave to the last known-good release, by pipeline, stage and result",
            self.rollbacks.clone(),
        );
        r.register(
            "alarm_to_rollback_seconds",
            "From an SNS alarm notification's arrival to the first rollback call it caused, by pipeline and stage",
            self.alarm_to_rollback.clone(),
        );
        r.register(
            "approvals_pending",
            "Stage runs awaiting approval, by pipeline and stage",
            self.approvals_pending.clone(),
        );
        r.register(
            "approval_oldest_pending_age_seconds",
            "Age of the oldest stage run awaiting approval (0 when none), by pipeline and stage",
            self.approval_age.clone(),
        );
        r.register(
            "webhook_deliveries",
            "Webhook deliveries answered, by source (github, sns) and result",
            self.webhooks.clone(),
        );
        r.register(
            "aws_calls",
            "AWS API attempts (every retry is one), by service, operation and outcome (success, throttled, client_error, server_error, timeout, transport_error)",
            self.aws_calls.clone(),
        );
        r.register(
            "aws_retries",
            "AWS calls tried again after a temporary failure (throttling, 5xx, timeout), by operation",
            self.aws_retries.clone(),
        );
        r.register(
            "github_calls",
            "GitHub REST API requests, by method and outcome (success, rate_limited, client_error, server_error, transport_error)",
            self.github_calls.clone(),
        );
        r.register(
            "github_rate_limit_remaining",
            "The x-ratelimit-remaining of GitHub's latest answer",
            self.github_rate_remaining.clone(),
        );
        r.register(
            "reconcile_lag_seconds",
            "From a pipeline's wake-up (a fact recorded, an effect finished, a deadline) to its reconcile finishing, by pipeline",
            self.reconcile_lag.clone(),
        );
        r.register(
            "api_refused",
            "Calls to the API's mutating routes refused before they acted: 401 (no valid key), 403 (a role that may not), 429 (rate limited), by route template and status",
            self.api_refused.clone(),
        );
        r.register(
            "leader",
            "1 while this controller reconciles and performs effects (the only controller on its state, or the holder of the leader lease), 0 while another leads",
            self.leader.clone(),
        );
        r.register(
            "leader_epoch",
            "The leader lease's epoch as this controller last saw it (one more at every change of leader; absent on a SQLite state)",
            self.leader_epoch.clone(),
        );
        r.register(
            "lead_declined",
            "1 while this controller declines the leader lease it took because the configuration it would act with moves or drops work in flight (the reason is in the log and in the event logs' config entries), else 0",
            self.lead_declined.clone(),
        );
        self.leader.set(1);
    }

    /// Whether this controller declines the lead over its configuration (see
    /// [`crate::engine::Engine`]'s lease holding).
    pub fn lead_declined(&self, declined: bool) {
        self.lead_declined.set(i64::from(declined));
    }

    /// This controller's standing after a lease claim.
    pub fn leadership(&self, standing: &crate::engine::Standing) {
        use crate::engine::Standing;
        let (acts, epoch) = match standing {
            Standing::Sole => (true, None),
            Standing::Leading { epoch, until } => {
                (std::time::Instant::now() < *until, Some(*epoch))
            }
            Standing::Taking { epoch, .. } => (false, Some(*epoch)),
            Standing::Following { epoch, .. } => (false, *epoch),
        };
        self.leader.set(i64::from(acts));
        if let Some(e) = epoch {
            self.leader_epoch.get_or_create(&[]).set(e);
        }
    }

    /// `run` moves to `to` at `now`: a run leaving `waiting` starts its observation, a run
    /// reaching a final status ends it. A run that leaves a final status (a succeeded run that
    /// a late alarm rolls back) is observed again from that moment to its next final status.
    pub fn run_transition(
        &self,
        pipeline: &str,
        run: &StageRun,
        to: RunStatus,
        now: DateTime<Utc>,
    ) {
        let key = (pipeline.to_string(), run.release, run.stage.to_string());
        let mut started = self.run_started.lock().unwrap_or_else(|e| e.into_inner());
        // Leaving `waiting` starts a run; leaving a final status (a succeeded run rolled back
        // by a late alarm, a retried one) starts a new observation of what follows.
        let starts = run.status == RunStatus::Waiting || run.status.is_terminal();
        if starts && !to.is_terminal() && to != RunStatus::Waiting {
            started.insert(key.clone(), now);
        }
        if !to.is_terminal() {
            return;
        }
        if let Some(since) = started.remove(&key) {
            let labels = RunLabels {
                pipeline: key.0,
                stage: key.2,
                status: to.as_str(),
            };
            self.stage_runs
                .get_or_create(&labels)
                .observe(seconds(now - since));
        }
    }

    /// A deploy or rollback effect of one wave ended after `took`.
    pub fn effect_finished(&self, rollback: bool, labels: EffectLabels, took: Duration) {
        let family = if rollback {
            &self.rollbacks
        } else {
            &self.deploys
        };
        family.get_or_create(&labels).observe(took.as_secs_f64());
    }

    /// A rollback call was made `latency` after the alarm that caused it arrived.
    pub fn alarm_to_rollback(&self, pipeline: &str, stage: &str, latency: chrono::Duration) {
        let labels = StageLabels {
            pipeline: pipeline.to_string(),
            stage: stage.to_string(),
        };
        self.alarm_to_rollback
            .get_or_create(&labels)
            .observe(seconds(latency));
    }

    /// A release reached `outcome` ([`release_outcome`]).
    pub fn release_outcome(&self, pipeline: &str, outcome: &'static str) {
        let labels = ReleaseLabels {
            pipeline: pipeline.to_string(),
            outcome,
        };
        self.releases.get_or_create(&labels).inc();
    }

    /// The runs of `pipeline` awaiting approval now, from a fresh snapshot.
    pub fn approvals(&self, pipeline: &Pipeline, runs: &[StageRun]) {
        let mut since = self.pending_since.lock().unwrap_or_else(|e| e.into_inner());
        for stage in &pipeline.stages {
            let labels = StageLabels {
                pipeline: pipeline.name.to_string(),
                stage: stage.name.to_string(),
            };
            let waiting = runs
                .iter()
                .filter(|r| r.stage == stage.name && r.status == RunStatus::AwaitingApproval);
            let (count, oldest) = waiting.fold((0, None), |(n, old), r| {
                (
                    n + 1,
                    Some(old.map_or(r.since, |o: DateTime<Utc>| o.min(r.since))),
                )
            });
            self.approvals_pending.get_or_create(&labels).set(count);
            since.insert(labels, oldest);
        }
    }

    /// Sets each stage's oldest-approval age as of `now` (zero for stages with none pending).
    fn refresh_ages(&self, now: DateTime<Utc>) {
        let since = self.pending_since.lock().unwrap_or_else(|e| e.into_inner());
        for (labels, oldest) in since.iter() {
            let age = oldest.map_or(0.0, |t| seconds(now - t));
            self.approval_age.get_or_create(labels).set(age);
        }
    }

    /// GitHub's latest `x-ratelimit-remaining`.
    pub fn github_rate_remaining(&self, remaining: i64) {
        self.github_rate_remaining.get_or_create(&[]).set(remaining);
    }

    /// A webhook delivery was answered with `result` (the answer's machine-readable result).
    pub fn webhook(&self, source: WebhookSource, result: &'static str) {
        let labels = WebhookLabels {
            source: source.as_str(),
            result,
        };
        self.webhooks.get_or_create(&labels).inc();
    }

    /// A mutating API call to `route` (its template) was answered `status`: counted when it
    /// is a refusal (401, 403, 429).
    pub fn api_refused(&self, route: &str, status: axum::http::StatusCode) {
        let status = match status.as_u16() {
            401 => "401",
            403 => "403",
            429 => "429",
            _ => return,
        };
        let labels = RefusedLabels {
            route: route.to_owned(),
            status,
        };
        self.api_refused.get_or_create(&labels).inc();
    }

    /// One pipeline reconcile finished `lag` after the wake-up it answered.
    pub fn reconciled(&self, pipeline: &str, lag: Duration) {
        let labels = PipelineLabels {
            pipeline: pipeline.to_string(),
        };
        self.reconcile_lag
            .get_or_create(&labels)
            .observe(lag.as_secs_f64());
    }
}

/// The outcome a release reaches when its run in `stage` moves to `to`, if this is the move
/// that decides it: its run in the pipeline's last stage succeeding (`succeeded`), or the first
/// of its runs to end without succeeding (`rolled_back`, `failed`, `rejected`, `expired`,
/// `superseded`). `runs` are the release's runs before the move. A release that is sent again
/// (`tollgate retry`) counts again when it reaches its next outcome.
pub fn release_outcome(
    pipeline: &Pipeline,
    runs: &[StageRun],
    release: ReleaseId,
    stage: &str,
    to: RunStatus,
) -> Option<&'static str> {
    let last = pipeline.stages.last().is_some_and(|s| s.name == stage);
    if to == RunStatus::Succeeded {
        return last.then_some("succeeded");
    }
    (to.is_terminal() && !stopped(runs, release)).then(|| to.as_str())
}

/// A release that could not be promoted at all: `failed`, unless one of its runs had already
/// decided its outcome.
pub fn release_failed(runs: &[StageRun], release: ReleaseId) -> Option<&'static str> {
    (!stopped(runs, release)).then_some("failed")
}

/// One of the release's runs ended without succeeding.
fn stopped(runs: &[StageRun], release: ReleaseId) -> bool {
    runs.iter()
        .any(|r| r.release == release && r.status.is_terminal() && r.status != RunStatus::Succeeded)
}

fn seconds(d: chrono::Duration) -> f64 {
    d.to_std().map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Reason;
    use crate::domain::tests::sim::{t0, three_stages};

    fn run(release: i64, stage: &str, status: RunStatus) -> StageRun {
        StageRun {
            release: ReleaseId(release),
            stage: stage.into(),
            status,
            reason: Reason::PreviousStage,
            attempt: 1,
            since: t0(),
            rollback_alarm: None,
            deploy_started: None,
        }
    }

    #[test]
    fn a_release_succeeds_in_the_last_stage_only() {
        let p = three_stages();
        let last = p.stages.last().unwrap().name.to_string();
        let first = p.stages[0].name.to_string();
        let r = ReleaseId(1);
        let ok = RunStatus::Succeeded;
        assert_eq!(release_outcome(&p, &[], r, &first, ok), None);
        assert_eq!(release_outcome(&p, &[], r, &last, ok), Some("succeeded"));
        let going = RunStatus::Deploying;
        assert_eq!(release_outcome(&p, &[], r, &last, going), None);
    }

    #[test]
    fn the_first_run_that_ends_without_succeeding_decides_and_later_ones_do_not() {
        let p = three_stages();
        let (first, second) = (p.stages[0].name.to_string(), p.stages[1].name.to_string());
        let r = ReleaseId(7);
        let before = [run(7, &first, RunStatus::Succeeded)];
        let rolled = release_outcome(&p, &before, r, &first, RunStatus::RolledBack);
        assert_eq!(rolled, Some("rolled_back"));
        let after = [
            run(7, &first, RunStatus::RolledBack),
            run(7, &second, RunStatus::Verifying),
        ];
        assert_eq!(
            release_outcome(&p, &after, r, &second, RunStatus::Failed),
            None
        );
        assert_eq!(release_failed(&after, r), None);
        // Another release's stopped run does not decide this one's.
        assert_eq!(
            release_outcome(&p, &after, ReleaseId(8), &second, RunStatus::Superseded),
            Some("superseded")
        );
        assert_eq!(release_failed(&[], r), Some("failed"));
    }

    #[test]
    fn a_run_is_observed_from_leaving_waiting_to_its_final_status_and_again_after_a_late_rollback()
    {
        let m = Metrics::new();
        let at = |s: i64| t0() + chrono::Duration::seconds(s);
        let mut r = run(3, "beta", RunStatus::Waiting);
        m.run_transition("shop", &r, RunStatus::Queued, at(10));
        r.status = RunStatus::Queued;
        m.run_transition("shop", &r, RunStatus::Deploying, at(20));
        r.status = RunStatus::Deploying;
        m.run_transition("shop", &r, RunStatus::Succeeded, at(70));
        r.status = RunStatus::Succeeded;
        m.run_transition("shop", &r, RunStatus::RollingBack, at(100));
        r.status = RunStatus::RollingBack;
        m.run_transition("shop", &r, RunStatus::RolledBack, at(130));
        let text = {
            let mut s = String::new();
            prometheus_client::encoding::text::encode(&mut s, &m.registry).unwrap();
            s
        };
        let labels = |status| format!("{{pipeline=\"shop\",stage=\"beta\",status=\"{status}\"}}");
        let sum = |status| format!("tollgate_stage_run_duration_seconds_sum{} ", labels(status));
        assert!(
            text.contains(&format!("{}60.0\n", sum("succeeded"))),
            "{text}"
        );
        assert!(
            text.contains(&format!("{}30.0\n", sum("rolled_back"))),
            "{text}"
        );
        assert!(m.run_started.lock().unwrap().is_empty(), "nothing kept");
    }
}

//! `tollgate status` and `tollgate history`: the state of every pipeline × stage, for people
//! (a table) and for scripts (`--json`), read from a controller's API (`--server`).
//!
//! Owns reading the state for people and rendering it. Everything goes through the API's
//! views ([`PipelineView`], [`EventView`]): the command receives them from the controller, and
//! [`collect`]/[`events`] build the same views from a store (as the API does) for in-process
//! callers; one function turns them into rows ([`rows`]) and one renders them ([`render`],
//! [`render_history`]). Reasons are rendered from their typed value here, at the edge, with the
//! time left counted from now.
//!
//! Must never: write the state database (it uses the store's read-only face).

use std::io::Write;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::cli::remote::{Client, Failure};
use crate::config::Config;
use crate::http::api::reads::pipeline_view;
use crate::http::api::views::{ConfigView, EventView, PipelineView, ReleaseRef};
use crate::store::{Reads, StoreError};

/// One pipeline × stage.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct StageStatus {
    pub pipeline: String,
    pub stage: String,
    /// The release the stage trusts now: `r12 (abc123def456)`.
    pub known_good: Option<String>,
    /// The release being worked on in the stage, if any.
    pub in_flight: Option<String>,
    pub status: Option<String>,
    /// Why it waits, or what it is doing, for people.
    pub reason: Option<String>,
    /// The same, as typed data with its deadlines (for scripts).
    pub wait: Option<crate::domain::Reason>,
    pub paused: Option<String>,
}

fn label(r: &ReleaseRef) -> String {
    format!("{} ({})", r.id, crate::domain::short_sha(&r.sha))
}

/// The rows of `views`, reasons rendered as of `now`.
pub fn rows(views: &[PipelineView], now: DateTime<Utc>) -> Vec<StageStatus> {
    let mut out = Vec::new();
    for p in views {
        for s in &p.stages {
            let current = s.current.as_ref();
            out.push(StageStatus {
                pipeline: p.name.clone(),
                stage: s.name.clone(),
                known_good: s.known_good.as_ref().map(label),
                in_flight: current.map(|c| label(&c.release)),
                status: current.map(|c| c.run.status.to_string()),
                reason: current.map(|c| c.run.wait.describe(now)),
                wait: current.map(|c| c.run.wait.clone()),
                paused: p
                    .paused
                    .as_ref()
                    .map(|r| format!("pipeline: {r}"))
                    .or(s.paused.as_ref().map(|r| format!("stage: {r}"))),
            });
        }
    }
    out
}

/// Collects the status of every stage of every pipeline from the store.
pub async fn collect(
    store: &Reads,
    config: &Config,
    now: DateTime<Utc>,
) -> Result<Vec<StageStatus>, StoreError> {
    let overview = store.overview().await?;
    let views: Vec<PipelineView> = config
        .pipelines
        .iter()
        .map(|p| pipeline_view(&overview, p, now))
        .collect();
    Ok(rows(&views, now))
}

/// What `status` shows at one moment: where the configuration comes from, and the rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub source: String,
    pub rows: Vec<StageStatus>,
}

/// Where `status` reads from: a controller's API, with where its configuration came from
/// when the command started.
pub struct Source {
    client: Client,
    source: String,
}

impl Source {
    /// `client`'s controller; asks once where its configuration comes from (`GET
    /// /api/v1/config`, which reads and validates the file again, so not at every watch
    /// tick).
    pub async fn remote(client: Client) -> Result<Source, Failure> {
        let config: ConfigView = client.get("/api/v1/config").await?;
        let mut source = source_line(&config);
        if let Some(l) = &config.leader {
            source = format!("{source}\n{}", l.line(Utc::now()));
        }
        Ok(Source { client, source })
    }

    /// The state now.
    pub async fn snapshot(&self, now: DateTime<Utc>) -> Result<Snapshot, Failure> {
        let views: Vec<PipelineView> = self.client.get("/api/v1/pipelines").await?;
        Ok(Snapshot {
            source: self.source.clone(),
            rows: rows(&views, now),
        })
    }
}

/// Where a controller's configuration comes from.
fn source_line(c: &ConfigView) -> String {
    match (&c.repository, &c.commit, c.applied_at) {
        (Some(repo), Some(sha), Some(at)) => format!(
            "configuration from {repo}@{sha} (applied {}) in force; the file on disk is not read",
            at.format("%Y-%m-%d %H:%M:%S UTC")
        ),
        _ => format!("configuration file {}", c.file),
    }
}

/// `tollgate status [--json]` once: the source line (not with `--json`) and the rows.
pub async fn run(source: &Source, json: bool, out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    match source.snapshot(Utc::now()).await {
        Ok(s) => {
            if !json {
                let _ = writeln!(out, "{}\n", s.source);
            }
            let _ = render(&s.rows, json, out);
            0
        }
        Err(f) => f.report(err),
    }
}

/// Prints the status table (or JSON).
pub fn render(rows: &[StageStatus], json: bool, out: &mut dyn Write) -> std::io::Result<()> {
    if json {
        return writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(rows).unwrap_or_default()
        );
    }
    table(rows, None, out)
}

/// The status table; with `countdown_at`, each reason is rendered as of that moment and a
/// stage whose wait has a deadline shows the time left to it ([`countdown`]).
pub fn table(
    rows: &[StageStatus],
    countdown_at: Option<DateTime<Utc>>,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<12} {:<8} {:<24} {:<24} {:<18} WHY",
        "PIPELINE", "STAGE", "KNOWN-GOOD", "IN FLIGHT", "STATUS"
    )?;
    for r in rows {
        let reason = match (countdown_at, &r.wait) {
            (Some(now), Some(wait)) => Some(match wait.deadline() {
                Some(deadline) => format!("{} ({})", wait.describe(now), countdown(deadline, now)),
                None => wait.describe(now),
            }),
            _ => r.reason.clone(),
        };
        let why = match (&r.paused, reason) {
            (Some(p), Some(reason)) => format!("paused ({p}); {reason}"),
            (Some(p), None) => format!("paused ({p})"),
            (None, Some(reason)) => reason,
            (None, None) => "idle".into(),
        };
        writeln!(
            out,
            "{:<12} {:<8} {:<24} {:<24} {:<18} {}",
            r.pipeline,
            r.stage,
            r.known_good.as_deref().unwrap_or("-"),
            r.in_flight.as_deref().unwrap_or("-"),
            r.status.as_deref().unwrap_or("-"),
            why
        )?;
    }
    Ok(())
}

/// The time left until `deadline`, to the second: `1d 02h 03m 04s left`, `3m 04s left`,
/// `4s left`; `due now` once it has passed (the controller acts on it within a moment).
pub fn countdown(deadline: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let left = (deadline - now).num_seconds();
    if left <= 0 {
        return "due now".into();
    }
    let (d, h, m, s) = (left / 86_400, left / 3_600 % 24, left / 60 % 60, left % 60);
    let text = match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s:02}s"),
        (0, _, _) => format!("{h}h {m:02}m {s:02}s"),
        _ => format!("{d}d {h:02}h {m:02}m {s:02}s"),
    };
    format!("{text} left")
}

/// A pipeline's newest `limit` events, oldest first, from the store.
pub async fn events(
    store: &Reads,
    pipeline: &str,
    limit: i64,
) -> Result<Vec<EventView>, StoreError> {
    let rows = store.events(pipeline, limit).await?;
    Ok(rows
        .into_iter()
        .map(|e| EventView::of(pipeline.to_owned(), e))
        .collect())
}

/// Prints a pipeline's event log from the store.
pub async fn history(
    store: &Reads,
    pipeline: &str,
    limit: i64,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), StoreError> {
    let events = events(store, pipeline, limit).await?;
    let _ = render_history(&events, json, out);
    Ok(())
}

/// `tollgate history PIPELINE [--limit N] [--json]` from `client`'s controller.
pub async fn run_history(
    client: &Client,
    (pipeline, limit, json): (&str, i64, bool),
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> i32 {
    let path = format!(
        "/api/v1/pipelines/{}/history?limit={limit}",
        urlencoding::encode(pipeline)
    );
    match client.get::<Vec<EventView>>(&path).await {
        Ok(events) => {
            let _ = render_history(&events, json, out);
            0
        }
        Err(f) => f.report(err),
    }
}

/// Prints events (oldest first) as lines, or as a JSON array.
pub fn render_history(
    events: &[EventView],
    json: bool,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    if json {
        return writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(events).unwrap_or_default()
        );
    }
    for e in events {
        writeln!(
            out,
            "{} {:<22} {:<16} {:<5} {:<6} {}",
            e.at.format("%Y-%m-%d %H:%M:%S%.3f"),
            e.actor,
            e.kind,
            e.release.as_deref().unwrap_or_default(),
            e.stage.as_deref().unwrap_or_default(),
            e.detail
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Reason, RequestState};

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn a_countdown_shows_the_time_left_to_the_second_and_due_once_passed() {
        let deadline = at("2026-01-02T10:00:00Z");
        let cases = [
            ("2026-01-02T09:59:56Z", "4s left"),
            ("2026-01-02T09:56:56Z", "3m 04s left"),
            ("2026-01-02T07:56:56Z", "2h 03m 04s left"),
            ("2025-12-31T07:56:56Z", "2d 02h 03m 04s left"),
            ("2026-01-02T10:00:00Z", "due now"),
            ("2026-01-02T10:00:07Z", "due now"),
        ];
        for (now, want) in cases {
            assert_eq!(countdown(deadline, at(now)), want, "at {now}");
        }
    }

    fn awaiting(expires_at: DateTime<Utc>) -> StageStatus {
        StageStatus {
            pipeline: "backend".into(),
            stage: "prod".into(),
            known_good: None,
            in_flight: Some("r2 (abc)".into()),
            status: Some("awaiting_approval".into()),
            reason: Some("stale text".into()),
            wait: Some(Reason::AwaitingApproval {
                approved: 0,
                needed: 1,
                expires_at,
                request: RequestState::Sending,
            }),
            paused: None,
        }
    }

    #[test]
    fn with_a_clock_the_table_renders_the_reason_then_and_counts_down_to_its_deadline() {
        let row = awaiting(at("2026-01-02T10:00:00Z"));
        let draw = |now: &str| {
            let mut out = Vec::new();
            table(std::slice::from_ref(&row), Some(at(now)), &mut out).unwrap();
            String::from_utf8(out).unwrap()
        };
        let early = draw("2026-01-02T08:59:30Z");
        assert!(
            early.contains("awaiting approval: 0 of 1, expires in 1h1m (1h 00m 30s left)"),
            "{early}"
        );
        let later = draw("2026-01-02T09:59:59Z");
        assert!(later.contains("(1s left)"), "{later}");
        assert!(!later.contains("stale text"));
        let mut plain = Vec::new();
        table(std::slice::from_ref(&row), None, &mut plain).unwrap();
        let plain = String::from_utf8(plain).unwrap();
        assert!(
            plain.contains("stale text") && !plain.contains("left)"),
            "{plain}"
        );
    }
}

//! Reads for the API's lists: releases page by page (newest first, by id cursor) and the event
//! log filtered. Read-only; every filter is a bound parameter.

use std::collections::HashMap;

use sqlx::Row;

use super::rows::{EventRow, RELEASE_COLUMNS, event_row, release_row, run_row};
use super::{Reads, Result};
use crate::domain::{Release, ReleaseId, RunStatus, StageRun};

/// (pipeline, stage).
pub type StageKey = (String, String);

/// What every stage of every pipeline is doing, read at one moment (one transaction): the
/// same facts as [`Reads::last_good`], [`Reads::in_flight`] and [`Reads::paused`] per stage,
/// in five queries whatever the number of pipelines.
#[derive(Debug, Clone, Default)]
pub struct Overview {
    pub known_good: HashMap<StageKey, Release>,
    /// Newest first, as [`Reads::in_flight`].
    pub in_flight: HashMap<StageKey, Vec<(Release, StageRun)>>,
    pub pipeline_paused: HashMap<String, String>,
    pub stage_paused: HashMap<StageKey, String>,
}

/// Which releases to list.
#[derive(Debug, Clone, Default)]
pub struct ReleaseFilter {
    pub pipeline: Option<String>,
    /// A commit sha or its start (at least 4 hex characters; checked by the caller).
    pub sha_prefix: Option<String>,
    /// Only releases older than this one (the cursor).
    pub before: Option<ReleaseId>,
}

/// Which events to list.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub pipeline: Option<String>,
    /// Only events after this id (the cursor).
    pub after: Option<i64>,
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    pub kind: Option<String>,
    pub release: Option<ReleaseId>,
    pub stage: Option<String>,
}

/// One page of events with the pipeline each belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipelineEvent {
    pub pipeline: String,
    pub event: EventRow,
}

impl Reads {
    /// Every stage's known-good release, runs in flight and pause reasons.
    pub async fn overview(&self) -> Result<Overview> {
        let mut tx = self.read_tx().await?;
        let mut out = Overview::default();
        let good = sqlx::query(
            "SELECT * FROM (SELECT h.pipeline AS h_pipeline, h.stage AS h_stage, r.*, \
             ROW_NUMBER() OVER (PARTITION BY h.pipeline, h.stage ORDER BY h.id DESC) AS n \
             FROM stage_history h JOIN releases r ON r.id = h.release_id \
             WHERE r.bad_stage IS NULL) AS good WHERE n = 1",
        )
        .fetch_all(&mut *tx)
        .await?;
        for row in &good {
            let key = (row.get("h_pipeline"), row.get("h_stage"));
            out.known_good.insert(key, release_row(row)?);
        }
        let active = sqlx::query(&format!(
            "SELECT {RELEASE_COLUMNS} FROM releases WHERE active = 1"
        ))
        .fetch_all(&mut *tx)
        .await?;
        let mut releases = HashMap::new();
        for row in &active {
            let r = release_row(row)?;
            releases.insert(r.id, r);
        }
        let flying = RunStatus::sql_set(RunStatus::in_flight);
        let runs = sqlx::query(&format!(
            "SELECT s.* FROM stage_runs s JOIN releases r ON r.id = s.release_id \
             WHERE r.active = 1 AND s.status IN ({flying}) ORDER BY s.release_id DESC"
        ))
        .fetch_all(&mut *tx)
        .await?;
        for row in &runs {
            let run = run_row(row)?;
            if let Some(r) = releases.get(&run.release) {
                let key = (r.pipeline.to_string(), run.stage.to_string());
                out.in_flight.entry(key).or_default().push((r.clone(), run));
            }
        }
        let paused = sqlx::query("SELECT pipeline, paused FROM pipelines WHERE paused IS NOT NULL")
            .fetch_all(&mut *tx)
            .await?;
        for row in &paused {
            out.pipeline_paused
                .insert(row.get("pipeline"), row.get("paused"));
        }
        let paused =
            sqlx::query("SELECT pipeline, stage, paused FROM stages WHERE paused IS NOT NULL")
                .fetch_all(&mut *tx)
                .await?;
        for row in &paused {
            let key = (row.get("pipeline"), row.get("stage"));
            out.stage_paused.insert(key, row.get("paused"));
        }
        tx.rollback().await?;
        Ok(out)
    }

    /// Up to `limit` releases matching `f`, newest first.
    pub async fn releases_page(&self, f: &ReleaseFilter, limit: i64) -> Result<Vec<Release>> {
        let sql = format!(
            "SELECT {RELEASE_COLUMNS} FROM releases \
             WHERE ($1 IS NULL OR pipeline = $1) \
             AND ($2 IS NULL OR substr(sha, 1, length($2)) = $2) \
             AND ($3 IS NULL OR id < $3) \
             ORDER BY id DESC LIMIT $4"
        );
        let rows = sqlx::query(&sql)
            .bind(&f.pipeline)
            .bind(f.sha_prefix.as_deref().map(str::to_ascii_lowercase))
            .bind(f.before.map(|r| r.0))
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(release_row).collect()
    }

    /// Up to `limit` events matching `f`, oldest first.
    pub async fn events_page(&self, f: &EventFilter, limit: i64) -> Result<Vec<PipelineEvent>> {
        let rows = sqlx::query(
            "SELECT * FROM events \
             WHERE ($1 IS NULL OR pipeline = $1) AND ($2 IS NULL OR id > $2) \
             AND ($3 IS NULL OR at >= $3) AND ($4 IS NULL OR kind = $4) \
             AND ($5 IS NULL OR release_id = $5) AND ($6 IS NULL OR stage = $6) \
             ORDER BY id LIMIT $7",
        )
        .bind(&f.pipeline)
        .bind(f.after)
        .bind(f.since.map(super::ms))
        .bind(&f.kind)
        .bind(f.release.map(|r| r.0))
        .bind(&f.stage)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| PipelineEvent {
                pipeline: r.get("pipeline"),
                event: event_row(r),
            })
            .collect())
    }
}

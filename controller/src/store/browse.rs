//! Reads for the API's lists: releases page by page (newest first, by id cursor) and the event
//! log filtered. Read-only; every filter is a bound parameter.

use sqlx::Row;

use super::rows::{EventRow, RELEASE_COLUMNS, event_row, release_row};
use super::{Reads, Result};
use crate::domain::{Release, ReleaseId};

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

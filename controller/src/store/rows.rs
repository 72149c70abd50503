//! Row mapping and the larger queries of the store: loading a snapshot and applying the
//! planner's actions.
//!
//! Owns the translation between rows and domain types: status and kind columns to their
//! enums, typed JSON columns (reasons, effect kinds and outcomes) to their values. A row that
//! does not decode is reported as [`StoreError::Corrupt`], never guessed at.
//! Must never: decide anything, or read a fact out of a key or a text column.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, AnyPool, Row};

use super::{Result, StoreError, from_ms, ms};
use crate::domain::*;

/// One entry of the event log.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct EventRow {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub actor: String,
    pub kind: String,
    pub release: Option<i64>,
    pub stage: Option<String>,
    pub detail: String,
}

pub(super) const RELEASE_COLUMNS: &str = "id, pipeline, sha, branch, author_name, author_email, author_login, contributors, pulls_checked, message, url, digest, created_at, bad_stage, bad_reason, alarm_override, window_override, failed";

/// The contributors column: typed JSON written by [`contributors_json`]. A value that is not
/// (written by hand into the database) makes the release unreadable rather than approvable.
pub(super) fn contributors_of(text: &str) -> Result<Vec<Contributor>> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt {
        table: "releases",
        detail: format!("contributors: {e}"),
    })
}

pub(super) fn contributors_json(people: &[Contributor]) -> String {
    serde_json::to_string(people).unwrap_or_else(|_| "[]".into())
}

pub(super) fn release_row(r: &AnyRow) -> Result<Release> {
    let bad = match (
        r.get::<Option<String>, _>("bad_stage"),
        r.get::<Option<String>, _>("bad_reason"),
    ) {
        (Some(stage), reason) => Some(BadMark {
            stage: stage.into(),
            reason: reason_of(reason.unwrap_or_default()),
        }),
        _ => None,
    };
    Ok(Release {
        id: ReleaseId(r.get("id")),
        pipeline: r.get("pipeline"),
        sha: r.get("sha"),
        branch: r.get("branch"),
        author_name: r.get("author_name"),
        author_email: r.get("author_email"),
        author_login: r.get("author_login"),
        contributors: contributors_of(&r.get::<String, _>("contributors"))?,
        pulls_checked: r.get::<i64, _>("pulls_checked") != 0,
        message: r.get("message"),
        url: r.get("url"),
        digest: r.get("digest"),
        created_at: from_ms(r.get("created_at")),
        bad,
        alarm_override: r.get("alarm_override"),
        window_override: r.get("window_override"),
        failed: r.get("failed"),
    })
}

/// A reason column: typed JSON. Text that is not (written by hand into the database) is shown
/// as it is and never read.
fn reason_of(text: String) -> Reason {
    serde_json::from_str(&text).unwrap_or(Reason::Recorded { text })
}

/// A typed JSON column.
fn json_column<T: serde::de::DeserializeOwned>(
    r: &AnyRow,
    table: &'static str,
    column: &str,
) -> Result<T> {
    parse_json(table, column, &r.get::<String, _>(column))
}

/// [`json_column`] of a nullable column: NULL reads as `None`.
fn optional_json_column<T: serde::de::DeserializeOwned>(
    r: &AnyRow,
    table: &'static str,
    column: &str,
) -> Result<Option<T>> {
    r.get::<Option<String>, _>(column)
        .map(|text| parse_json(table, column, &text))
        .transpose()
}

fn parse_json<T: serde::de::DeserializeOwned>(
    table: &'static str,
    column: &str,
    text: &str,
) -> Result<T> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt {
        table,
        detail: format!("{column} `{text}`: {e}"),
    })
}

pub(super) fn run_row(r: &AnyRow) -> Result<StageRun> {
    let status: String = r.get("status");
    Ok(StageRun {
        release: ReleaseId(r.get("release_id")),
        stage: r.get("stage"),
        status: RunStatus::parse(&status).ok_or(StoreError::Corrupt {
            table: "stage_runs",
            detail: format!("status `{status}`"),
        })?,
        reason: reason_of(r.get("reason")),
        attempt: r.get::<i64, _>("attempt") as u32,
        since: from_ms(r.get("since")),
        rollback_alarm: r.get("rollback_alarm"),
        deploy_started: r.get::<Option<i64>, _>("deploy_started").map(from_ms),
    })
}

fn effect_row(r: &AnyRow) -> Result<EffectRecord> {
    let status: String = r.get("status");
    Ok(EffectRecord {
        key: r.get("key"),
        release: ReleaseId(r.get("release_id")),
        stage: r.get("stage"),
        kind: json_column(r, "effects", "spec")?,
        attempt: r.get::<i64, _>("attempt") as u32,
        status: EffectStatus::parse(&status).ok_or(StoreError::Corrupt {
            table: "effects",
            detail: format!("status `{status}`"),
        })?,
        detail: r.get("detail"),
        output: json_column(r, "effects", "output")?,
        place: optional_json_column(r, "effects", "place")?,
        started_at: from_ms(r.get("started_at")),
        finished_at: r.get::<Option<i64>, _>("finished_at").map(from_ms),
    })
}

/// A reason as stored.
pub(super) fn reason_json(reason: &Reason) -> String {
    serde_json::to_string(reason).unwrap_or_else(|_| "{}".into())
}

fn approval_row(r: &AnyRow) -> Result<ApprovalRecord> {
    let d: String = r.get("decision");
    Ok(ApprovalRecord {
        release: ReleaseId(r.get("release_id")),
        stage: r.get("stage"),
        attempt: r.get::<i64, _>("attempt") as u32,
        approver: r.get("approver"),
        verified: r.get::<i64, _>("verified") != 0,
        decision: Decision::parse(&d).ok_or(StoreError::Corrupt {
            table: "approvals",
            detail: format!("decision `{d}`"),
        })?,
        at: from_ms(r.get("at")),
    })
}

pub(super) async fn load_snapshot(
    c: &mut AnyConnection,
    pipeline: &str,
    stages: &[StageName],
    since_alarms: DateTime<Utc>,
) -> Result<Snapshot> {
    let paused = pause_reason(c, pipeline, None).await?;
    let mut snap = Snapshot {
        paused,
        ..Snapshot::default()
    };
    for name in stages {
        snap.stages.push(stage_state(c, pipeline, name).await?);
    }
    let named: BTreeSet<i64> = snap
        .stages
        .iter()
        .flat_map(|s| s.history.iter().map(|id| id.0))
        .collect();
    // The releases named by a stage's history, one placeholder each (at most a few hundred:
    // the history read is bounded).
    let named_in = if named.is_empty() {
        String::new()
    } else {
        let marks: Vec<String> = (0..named.len()).map(|i| format!("${}", i + 2)).collect();
        format!(" OR id IN ({})", marks.join(", "))
    };
    let sql = format!(
        "SELECT {RELEASE_COLUMNS} FROM releases WHERE pipeline = $1 AND (active = 1{named_in})"
    );
    let mut query = sqlx::query(&sql).bind(pipeline);
    for id in &named {
        query = query.bind(*id);
    }
    for r in query.fetch_all(&mut *c).await? {
        let rel = release_row(&r)?;
        snap.releases.insert(rel.id, rel);
    }
    let active = "SELECT id FROM releases WHERE pipeline = $1 AND active = 1";
    for r in sqlx::query(&format!(
        "SELECT * FROM stage_runs WHERE release_id IN ({active}) ORDER BY rowid"
    ))
    .bind(pipeline)
    .fetch_all(&mut *c)
    .await?
    {
        snap.runs.push(run_row(&r)?);
    }
    for r in sqlx::query(&format!(
        "SELECT * FROM effects WHERE release_id IN ({active}) ORDER BY rowid"
    ))
    .bind(pipeline)
    .fetch_all(&mut *c)
    .await?
    {
        snap.effects.push(effect_row(&r)?);
    }
    for r in sqlx::query(&format!(
        "SELECT * FROM approvals WHERE release_id IN ({active}) ORDER BY id"
    ))
    .bind(pipeline)
    .fetch_all(&mut *c)
    .await?
    {
        snap.approvals.push(approval_row(&r)?);
    }
    for r in sqlx::query("SELECT id, stage, alarm, firing, at, COALESCE(changed_at, at) AS changed_at FROM alarm_events WHERE pipeline = $1 AND at >= $2 ORDER BY id")
        .bind(pipeline)
        .bind(ms(since_alarms))
        .fetch_all(&mut *c)
        .await?
    {
        snap.alarms.push(AlarmFact {
            id: r.get("id"),
            stage: r.get("stage"),
            alarm: r.get("alarm"),
            firing: r.get::<i64, _>("firing") != 0,
            at: from_ms(r.get("at")),
            changed_at: from_ms(r.get("changed_at")),
        });
    }
    for r in sqlx::query("SELECT id, release_id, actor FROM retry_requests WHERE pipeline = $1 AND handled_at IS NULL ORDER BY id")
        .bind(pipeline)
        .fetch_all(&mut *c)
        .await?
    {
        snap.retry_requests.push(RetryRequest {
            id: r.get("id"),
            release: ReleaseId(r.get("release_id")),
            by: r.get("actor"),
        });
    }
    Ok(snap)
}

/// How many of a stage's newest history entries the planner sees.
pub(super) const HISTORY_KEPT: i64 = 50;

/// The part of a stage's history the planner needs, oldest first: the newest
/// [`HISTORY_KEPT`] entries, plus the newest entries of the two newest releases not marked bad
/// (the stage's last known-good and the rollback target when that one is the run rolling
/// back), however far back they are. The snapshot then stays the same size however many
/// releases the stage ran.
///
/// Caveat: a retry is refused when the stage ran a newer release ([`crate::domain::retry`]);
/// an entry older than the newest [`HISTORY_KEPT`] is not seen by that check, which only
/// matters if the stage went back below the retried release 50 times since.
async fn recent_history(
    c: &mut AnyConnection,
    pipeline: &str,
    stage: &str,
) -> Result<Vec<ReleaseId>> {
    let mut entries: BTreeMap<i64, i64> = BTreeMap::new();
    for r in sqlx::query("SELECT id, release_id FROM stage_history WHERE pipeline = $1 AND stage = $2 ORDER BY id DESC LIMIT $3")
        .bind(pipeline)
        .bind(stage)
        .bind(HISTORY_KEPT)
        .fetch_all(&mut *c)
        .await?
    {
        entries.insert(r.get("id"), r.get("release_id"));
    }
    // Walks back from the newest entry and stops at the first match (bad releases are rare).
    let good = "SELECT h.id, h.release_id FROM stage_history h JOIN releases r ON r.id = h.release_id \
                WHERE h.pipeline = $1 AND h.stage = $2 AND r.bad_stage IS NULL AND h.release_id <> $3 \
                ORDER BY h.id DESC LIMIT 1";
    let mut skip = 0;
    for _ in 0..2 {
        let Some(r) = sqlx::query(good)
            .bind(pipeline)
            .bind(stage)
            .bind(skip)
            .fetch_optional(&mut *c)
            .await?
        else {
            break;
        };
        skip = r.get("release_id");
        entries.insert(r.get("id"), skip);
    }
    Ok(entries.into_values().map(ReleaseId).collect())
}

async fn stage_state(c: &mut AnyConnection, pipeline: &str, name: &str) -> Result<StageState> {
    let paused = pause_reason(c, pipeline, Some(name)).await?;
    let history = recent_history(c, pipeline, name).await?;
    let rollback_request = sqlx::query("SELECT id, actor FROM rollback_requests WHERE pipeline = $1 AND stage = $2 AND handled_at IS NULL ORDER BY id LIMIT 1")
        .bind(pipeline)
        .bind(name)
        .fetch_optional(&mut *c)
        .await?
        .map(|r| RollbackRequest {
            id: r.get("id"),
            by: r.get("actor"),
        });
    Ok(StageState {
        name: name.to_string().into(),
        paused,
        history,
        rollback_request,
    })
}

pub(super) async fn apply_one(
    tx: &mut AnyConnection,
    pipeline: &str,
    a: &Action,
    now: DateTime<Utc>,
) -> Result<()> {
    match a {
        Action::Transition {
            release,
            stage,
            to,
            reason,
            alarm,
        } => {
            // The alarm behind a rollback stays with the run until it goes again (retry); the
            // watch window opens when the run starts deploying.
            sqlx::query("UPDATE stage_runs SET status = $1, reason = $2, since = $3, rollback_alarm = COALESCE($4, rollback_alarm), deploy_started = CASE WHEN $1 = 'deploying' THEN $3 ELSE deploy_started END WHERE release_id = $5 AND stage = $6")
                .bind(to.as_str())
                .bind(reason_json(reason))
                .bind(ms(now))
                .bind(alarm)
                .bind(release.0)
                .bind(stage)
                .execute(&mut *tx)
                .await?;
        }
        Action::Note {
            release,
            stage,
            reason,
        } => {
            sqlx::query("UPDATE stage_runs SET reason = $1 WHERE release_id = $2 AND stage = $3")
                .bind(reason_json(reason))
                .bind(release.0)
                .bind(stage)
                .execute(&mut *tx)
                .await?;
        }
        Action::MarkBad {
            release,
            stage,
            reason,
        } => {
            sqlx::query("UPDATE releases SET bad_stage = $1, bad_reason = $2 WHERE id = $3 AND bad_stage IS NULL")
                .bind(stage)
                .bind(reason_json(reason))
                .bind(release.0)
                .execute(&mut *tx)
                .await?;
        }
        Action::AddRun { release, stage } => {
            sqlx::query("INSERT INTO stage_runs (release_id, stage, status, reason, attempt, since) VALUES ($1, $2, 'waiting', $3, 1, $4) ON CONFLICT DO NOTHING")
                .bind(release.0)
                .bind(stage)
                .bind(reason_json(&Reason::PreviousStage))
                .bind(ms(now))
                .execute(&mut *tx)
                .await?;
        }
        Action::ReopenRun { release, stage } => reopen_run(tx, *release, stage, now).await?,
        Action::Retry {
            request,
            release,
            stages,
            by,
        } => {
            retry(tx, *request, *release, stages, by, now).await?;
        }
        Action::RefuseRetry { request, .. } => {
            handle_retry_request(tx, *request, now).await?;
        }
        Action::FailRelease { release, reason } => {
            sqlx::query("UPDATE releases SET failed = $1 WHERE id = $2 AND failed IS NULL")
                .bind(reason)
                .bind(release.0)
                .execute(&mut *tx)
                .await?;
        }
        Action::RecordGood { stage, release } => {
            sqlx::query("INSERT INTO stage_history (pipeline, stage, release_id, at) VALUES ($1, $2, $3, $4)")
                .bind(pipeline)
                .bind(stage)
                .bind(release.0)
                .bind(ms(now))
                .execute(&mut *tx)
                .await?;
        }
        Action::PauseStage { stage, reason } => {
            set_pause(tx, pipeline, Some(stage), Some(reason)).await?;
        }
        Action::ConsumeRollbackRequest { request, .. } => {
            sqlx::query("UPDATE rollback_requests SET handled_at = $1 WHERE id = $2")
                .bind(ms(now))
                .bind(request)
                .execute(&mut *tx)
                .await?;
        }
        Action::Abandon { key } => {
            sqlx::query("UPDATE effects SET status = 'failed', detail = 'abandoned: no longer needed', finished_at = $1 WHERE key = $2 AND status = 'pending'")
                .bind(ms(now))
                .bind(key)
                .execute(&mut *tx)
                .await?;
        }
        Action::Retire { release } => {
            sqlx::query("UPDATE releases SET active = 0 WHERE id = $1")
                .bind(release.0)
                .execute(&mut *tx)
                .await?;
        }
        Action::Start(_) => {}
    }
    Ok(())
}

/// Reopens `release`'s run in `stage` ([`Action::ReopenRun`]): only a run the removal of its
/// stage ended (superseded, [`Reason::StageRemoved`], both read as typed values) waits again,
/// under its next attempt. Any other run, or none, is refused ([`StoreError::Invalid`]) and
/// nothing is written.
async fn reopen_run(
    tx: &mut AnyConnection,
    release: ReleaseId,
    stage: &str,
    now: DateTime<Utc>,
) -> Result<()> {
    let refused =
        |why: String| StoreError::Invalid(format!("cannot reopen {release} in {stage}: {why}"));
    let row =
        sqlx::query("SELECT status, reason FROM stage_runs WHERE release_id = $1 AND stage = $2")
            .bind(release.0)
            .bind(stage)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| refused("it has no run there".into()))?;
    let status: String = row.get("status");
    let stored: String = row.get("reason");
    let reason = reason_of(stored.clone());
    if RunStatus::parse(&status) != Some(RunStatus::Superseded) || reason != Reason::StageRemoved {
        let why = format!(
            "only a run the removal of its stage ended waits again, and this one is {status} ({})",
            reason.describe(now)
        );
        return Err(refused(why));
    }
    // The row as read: nothing changed it in between.
    let reopened = sqlx::query("UPDATE stage_runs SET status = 'waiting', reason = $1, attempt = attempt + 1, since = $2, rollback_alarm = NULL, deploy_started = NULL WHERE release_id = $3 AND stage = $4 AND status = $5 AND reason = $6")
        .bind(reason_json(&Reason::PreviousStage))
        .bind(ms(now))
        .bind(release.0)
        .bind(stage)
        .bind(&status)
        .bind(&stored)
        .execute(&mut *tx)
        .await?;
    if reopened.rows_affected() != 1 {
        return Err(refused("the run changed while it was reopened".into()));
    }
    Ok(())
}

/// Sends `release` again in `stages`: its failed or expired runs there go back to waiting
/// under the next attempt (new idempotency keys for everything they do).
async fn retry(
    tx: &mut AnyConnection,
    request: i64,
    release: ReleaseId,
    stages: &[StageName],
    by: &str,
    now: DateTime<Utc>,
) -> Result<()> {
    let reason = reason_json(&Reason::RetryRequested { by: by.to_string() });
    let retryable = RunStatus::sql_set(RunStatus::retryable);
    for stage in stages {
        sqlx::query(&format!("UPDATE stage_runs SET status = 'waiting', reason = $1, attempt = attempt + 1, since = $2, rollback_alarm = NULL, deploy_started = NULL WHERE release_id = $3 AND stage = $4 AND status IN ({retryable})"))
            .bind(&reason)
            .bind(ms(now))
            .bind(release.0)
            .bind(stage)
            .execute(&mut *tx)
            .await?;
    }
    activate(tx, release).await?;
    handle_retry_request(tx, request, now).await
}

/// Brings a release back into the working set (the planner sees it again).
pub(super) async fn activate(tx: &mut AnyConnection, release: ReleaseId) -> Result<()> {
    sqlx::query("UPDATE releases SET active = 1 WHERE id = $1")
        .bind(release.0)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

async fn handle_retry_request(
    tx: &mut AnyConnection,
    request: i64,
    now: DateTime<Utc>,
) -> Result<()> {
    sqlx::query("UPDATE retry_requests SET handled_at = $1 WHERE id = $2")
        .bind(ms(now))
        .bind(request)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

pub(super) async fn events(pool: &AnyPool, pipeline: &str, limit: i64) -> Result<Vec<EventRow>> {
    let rows = sqlx::query("SELECT * FROM (SELECT * FROM events WHERE pipeline = $1 ORDER BY id DESC LIMIT $2) AS newest ORDER BY id")
        .bind(pipeline)
        .bind(limit)
        .fetch_all(pool)
        .await?;
    Ok(rows.iter().map(event_row).collect())
}

pub(super) async fn release_events(
    pool: &AnyPool,
    pipeline: &str,
    release: ReleaseId,
) -> Result<Vec<EventRow>> {
    let rows =
        sqlx::query("SELECT * FROM events WHERE pipeline = $1 AND release_id = $2 ORDER BY id")
            .bind(pipeline)
            .bind(release.0)
            .fetch_all(pool)
            .await?;
    Ok(rows.iter().map(event_row).collect())
}

pub(super) fn event_row(r: &AnyRow) -> EventRow {
    EventRow {
        id: r.get("id"),
        at: from_ms(r.get("at")),
        actor: r.get("actor"),
        kind: r.get("kind"),
        release: r.get("release_id"),
        stage: r.get("stage"),
        detail: r.get("detail"),
    }
}

pub(super) async fn release(pool: &AnyPool, id: ReleaseId) -> Result<Option<Release>> {
    let sql = format!("SELECT {RELEASE_COLUMNS} FROM releases WHERE id = $1");
    sqlx::query(&sql)
        .bind(id.0)
        .fetch_optional(pool)
        .await?
        .map(|r| release_row(&r))
        .transpose()
}

/// Release `id` if it is one of `pipeline`'s.
pub(super) async fn release_in(
    c: &mut AnyConnection,
    pipeline: &str,
    id: ReleaseId,
) -> Result<Option<Release>> {
    let sql = format!("SELECT {RELEASE_COLUMNS} FROM releases WHERE id = $1 AND pipeline = $2");
    sqlx::query(&sql)
        .bind(id.0)
        .bind(pipeline)
        .fetch_optional(&mut *c)
        .await?
        .map(|r| release_row(&r))
        .transpose()
}

pub(super) async fn recent_runs(
    pool: &AnyPool,
    pipeline: &str,
    n: i64,
) -> Result<Vec<(Release, Vec<StageRun>)>> {
    let sql = format!(
        "SELECT {RELEASE_COLUMNS} FROM releases WHERE pipeline = $1 ORDER BY id DESC LIMIT $2"
    );
    let mut out = Vec::new();
    for r in sqlx::query(&sql)
        .bind(pipeline)
        .bind(n)
        .fetch_all(pool)
        .await?
    {
        let rel = release_row(&r)?;
        let runs = sqlx::query("SELECT * FROM stage_runs WHERE release_id = $1 ORDER BY rowid")
            .bind(rel.id.0)
            .fetch_all(pool)
            .await?
            .iter()
            .map(run_row)
            .collect::<Result<Vec<_>>>()?;
        out.push((rel, runs));
    }
    Ok(out)
}

pub(super) async fn effects_of(
    pool: &AnyPool,
    release: ReleaseId,
    stage: &str,
) -> Result<Vec<EffectRecord>> {
    sqlx::query(
        "SELECT * FROM effects WHERE release_id = $1 AND stage = $2 ORDER BY started_at, key",
    )
    .bind(release.0)
    .bind(stage)
    .fetch_all(pool)
    .await?
    .iter()
    .map(effect_row)
    .collect()
}

pub(super) async fn effects_with_prefix(pool: &AnyPool, prefix: &str) -> Result<Vec<EffectRecord>> {
    sqlx::query(
        "SELECT * FROM effects WHERE substr(key, 1, length($1)) = $1 ORDER BY started_at, key",
    )
    .bind(prefix)
    .fetch_all(pool)
    .await?
    .iter()
    .map(effect_row)
    .collect()
}

pub(super) async fn approvals_of(
    pool: &AnyPool,
    release: ReleaseId,
    stage: &str,
) -> Result<Vec<ApprovalRecord>> {
    sqlx::query("SELECT * FROM approvals WHERE release_id = $1 AND stage = $2 ORDER BY id")
        .bind(release.0)
        .bind(stage)
        .fetch_all(pool)
        .await?
        .iter()
        .map(approval_row)
        .collect()
}

pub(super) async fn last_good(
    pool: &AnyPool,
    pipeline: &str,
    stage: &str,
) -> Result<Option<Release>> {
    let sql = "SELECT r.* FROM stage_history h JOIN releases r ON r.id = h.release_id
         WHERE h.pipeline = $1 AND h.stage = $2 AND r.bad_stage IS NULL ORDER BY h.id DESC LIMIT 1";
    sqlx::query(sql)
        .bind(pipeline)
        .bind(stage)
        .fetch_optional(pool)
        .await?
        .map(|r| release_row(&r))
        .transpose()
}

pub(super) async fn in_flight(
    pool: &AnyPool,
    pipeline: &str,
    stage: &str,
) -> Result<Vec<(Release, StageRun)>> {
    let flying = RunStatus::sql_set(RunStatus::in_flight);
    let rows = sqlx::query(&format!(
        "SELECT s.* FROM stage_runs s JOIN releases r ON r.id = s.release_id
         WHERE r.pipeline = $1 AND s.stage = $2 AND r.active = 1 AND s.status IN ({flying})
         ORDER BY s.release_id DESC",
    ))
    .bind(pipeline)
    .bind(stage)
    .fetch_all(pool)
    .await?;
    let mut out = Vec::new();
    for r in rows {
        let run = run_row(&r)?;
        if let Some(rel) = release(pool, run.release).await? {
            out.push((rel, run));
        }
    }
    Ok(out)
}

pub(super) async fn paused(
    pool: &AnyPool,
    pipeline: &str,
    stage: &str,
) -> Result<(Option<String>, Option<String>)> {
    let mut c = pool.acquire().await?;
    let p = pause_reason(&mut c, pipeline, None).await?;
    let s = pause_reason(&mut c, pipeline, Some(stage)).await?;
    Ok((p, s))
}

/// Why a pipeline (`stage` None) or one of its stages is paused; None when it runs.
pub(super) async fn pause_reason(
    c: &mut AnyConnection,
    pipeline: &str,
    stage: Option<&str>,
) -> Result<Option<String>> {
    let row = match stage {
        Some(s) => {
            sqlx::query("SELECT paused FROM stages WHERE pipeline = $1 AND stage = $2")
                .bind(pipeline)
                .bind(s)
                .fetch_optional(&mut *c)
                .await?
        }
        None => {
            sqlx::query("SELECT paused FROM pipelines WHERE pipeline = $1")
                .bind(pipeline)
                .fetch_optional(&mut *c)
                .await?
        }
    };
    Ok(row.and_then(|r| r.get("paused")))
}

/// Pauses (`reason` Some) or resumes (None) a pipeline (`stage` None) or one of its stages.
pub(super) async fn set_pause(
    c: &mut AnyConnection,
    pipeline: &str,
    stage: Option<&str>,
    reason: Option<&str>,
) -> Result<()> {
    match stage {
        Some(s) => {
            sqlx::query("INSERT INTO stages (pipeline, stage, paused) VALUES ($1, $2, $3) ON CONFLICT (pipeline, stage) DO UPDATE SET paused = excluded.paused")
                .bind(pipeline)
                .bind(s)
                .bind(reason)
                .execute(&mut *c)
                .await?;
        }
        None => {
            sqlx::query("INSERT INTO pipelines (pipeline, paused) VALUES ($1, $2) ON CONFLICT (pipeline) DO UPDATE SET paused = excluded.paused")
                .bind(pipeline)
                .bind(reason)
                .execute(&mut *c)
                .await?;
        }
    }
    Ok(())
}

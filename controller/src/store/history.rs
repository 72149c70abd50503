//! What the controller knows of a branch's history without GitHub: the `before → after` links
//! of the pushes it received. Used to tell whether a build's commit is newer than the releases
//! already recorded when the compare API cannot be asked.

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::{Reads, Result, Store, ms};
use crate::domain::RunStatus;

/// How many pushes back a history walk may go.
const MAX_WALK: usize = 10_000;

/// A pipeline's newest release, as far as the intake needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Newest {
    pub id: crate::domain::ReleaseId,
    pub sha: String,
}

/// A push to a branch: its head moved from `before` to `after`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushLink {
    pub repository: String,
    pub branch: String,
    pub before: String,
    pub after: String,
    pub forced: bool,
}

impl Store {
    /// Records a push's link (a redelivery changes nothing).
    pub async fn record_push(&self, push: &PushLink, now: DateTime<Utc>) -> Result<()> {
        let mut tx = self.write().await?;
        insert_push(&mut tx, push, now).await?;
        tx.commit().await?;
        Ok(())
    }
}

/// Writes a push's link inside a write unit (a redelivery changes nothing).
pub(super) async fn insert_push(
    c: &mut sqlx::AnyConnection,
    push: &PushLink,
    now: DateTime<Utc>,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO pushes (repository, branch, before, after, forced, received_at) \
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
    )
    .bind(push.repository.to_ascii_lowercase())
    .bind(&push.branch)
    .bind(&push.before)
    .bind(&push.after)
    .bind(i64::from(push.forced))
    .bind(ms(now))
    .execute(c)
    .await?;
    Ok(())
}

impl Reads {
    /// Whether `ancestor` is `head` or comes before it on `branch`, following the pushes
    /// received from `head` back: `Some(true)` when the chain reaches it without a force push
    /// in between, `Some(false)` when the chain goes back to the branch's creation without
    /// meeting it, `None` when a link is missing or a force push breaks the chain (unknown).
    pub async fn push_descends(
        &self,
        repository: &str,
        branch: &str,
        head: &str,
        ancestor: &str,
    ) -> Result<Option<bool>> {
        let mut at = head.to_owned();
        for _ in 0..MAX_WALK {
            if at == ancestor {
                return Ok(Some(true));
            }
            // GitHub gives an all-zero `before` when the push created the branch.
            if at.bytes().all(|b| b == b'0') {
                return Ok(Some(false));
            }
            let link = sqlx::query(
                "SELECT before, forced FROM pushes WHERE repository = $1 AND branch = $2 AND after = $3",
            )
            .bind(repository.to_ascii_lowercase())
            .bind(branch)
            .bind(&at)
            .fetch_optional(&self.pool)
            .await?;
            let Some(link) = link else {
                return Ok(None);
            };
            if link.get::<i64, _>("forced") != 0 {
                return Ok(None);
            }
            at = link.get("before");
        }
        Ok(None)
    }

    /// Whether some run of `stage` watched for alarms at `at`: its window opened (the gate
    /// read, `lead` before its deploy started) at or before `at`, and it had not ended by then
    /// (the window of [`crate::domain::StageRun::watch_from`] until the run ended, as one query).
    pub async fn stage_watched(
        &self,
        pipeline: &str,
        stage: &str,
        at: DateTime<Utc>,
        lead: chrono::Duration,
    ) -> Result<bool> {
        let open = RunStatus::sql_set(|s| !s.is_terminal());
        let query = format!(
            "SELECT CASE WHEN EXISTS (SELECT 1 FROM stage_runs sr JOIN releases r ON r.id = sr.release_id \
             WHERE r.pipeline = $1 AND sr.stage = $2 AND sr.deploy_started IS NOT NULL \
             AND sr.deploy_started - $3 <= $4 AND (sr.status IN ({open}) OR $4 <= sr.since)) \
             THEN 1 ELSE 0 END"
        );
        let watched: i64 = sqlx::query(&query)
            .bind(pipeline)
            .bind(stage)
            .bind(lead.num_milliseconds())
            .bind(ms(at))
            .fetch_one(&self.pool)
            .await?
            .get(0);
        Ok(watched != 0)
    }

    /// Whether the delivery `source`/`id` was recorded (a dedupe seen before).
    pub async fn delivery_seen(&self, source: &str, id: &str) -> Result<bool> {
        let found = sqlx::query("SELECT 1 FROM deliveries WHERE source = $1 AND id = $2")
            .bind(source)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(found.is_some())
    }

    /// The id and commit of `pipeline`'s newest release, as the intake checks a new one
    /// against it: what this controller last recorded or read, unless `fresh` (then, or when
    /// it knows none, read from the database). A stale answer is safe: a release's write checks
    /// the newest release again in its own unit and refuses when it moved
    /// ([`Store::record_release_after`]); the caller then asks again with `fresh`.
    pub async fn newest_of(&self, pipeline: &str, fresh: bool) -> Result<Option<Newest>> {
        if !fresh && let Some(known) = self.intake.newest(pipeline) {
            return Ok(Some(known));
        }
        let row = sqlx::query(
            "SELECT id, sha FROM releases WHERE pipeline = $1 ORDER BY id DESC LIMIT 1",
        )
        .bind(pipeline)
        .fetch_optional(&self.pool)
        .await?;
        let newest = row.map(|r| Newest {
            id: crate::domain::ReleaseId(r.get(0)),
            sha: r.get(1),
        });
        if let Some(n) = &newest {
            self.intake.saw(pipeline, n);
        }
        Ok(newest)
    }
}

//! Retention: the event log, the delivery ids and the approval links are pruned once they are
//! older than `[controller.retention]` says, so the state stops growing with time.
//!
//! Guarantees:
//! - Only rows older than their horizon go: events by `at`, deliveries by `received_at`,
//!   approval links by `created_at` and only once used, replaced or expired. Releases, runs,
//!   effects and history are never pruned (the planner's snapshot is bounded by itself).
//! - The event log stays append-only for everything else: its delete trigger (migration 0014)
//!   refuses a delete unless a `pruning` marker row exists, and the pruner writes that marker,
//!   deletes and removes it in one transaction, so it is never committed.
//! - With `archive_dir`, the events of one run are written to one JSON-lines file
//!   (`events-<time>.jsonl`, one [`ArchivedEvent`] a line) and fsynced, file and directory,
//!   before the transaction deleting them commits: an event is deleted only once archived.
//! - The delivery that marks an approval link used is kept as long as the link is, so a link
//!   never becomes usable again by losing that record.
//!
//! Caveat: a GitHub delivery redelivered after its id was forgotten is taken as new; what it
//! carries is deduplicated by its facts (a release by pipeline and commit).

use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::Row;

use super::approvals::DELIVERY_SOURCE;
use super::{Result, Store, StoreError, ms};
use crate::config::RetentionSettings;

/// Events archived and deleted per transaction.
const BATCH: i64 = 5_000;

/// One line of an events archive: an event-log row as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchivedEvent {
    pub id: i64,
    pub pipeline: String,
    /// Milliseconds since the Unix epoch (UTC).
    pub at: i64,
    pub actor: String,
    pub kind: String,
    pub release_id: Option<i64>,
    pub stage: Option<String>,
    pub detail: String,
}

/// What one pruning removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pruned {
    pub events: u64,
    pub deliveries: u64,
    pub approval_tokens: u64,
    /// The archive written, when events were pruned with `archive_dir` set.
    pub archive: Option<PathBuf>,
}

impl Store {
    /// Prunes what is older than `r`'s horizons at `now`. Events go in batches, each archived
    /// (when asked) before the transaction deleting it commits.
    pub async fn prune(&self, r: &RetentionSettings, now: DateTime<Utc>) -> Result<Pruned> {
        let horizon =
            |d: std::time::Duration| ms(now) - i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        let mut out = Pruned::default();
        let events_before = horizon(r.events);
        let mut archive: Option<Archive> = None;
        loop {
            let batch = self.old_events(events_before, BATCH).await?;
            let Some(last) = batch.last().map(|e| e.id) else {
                break;
            };
            if let Some(dir) = &r.archive_dir {
                if archive.is_none() {
                    archive = Some(Archive::create(dir, now)?);
                }
                if let Some(a) = archive.as_mut() {
                    a.append(&batch)?;
                }
            }
            let mut tx = self.write().await?;
            sqlx::query("INSERT INTO pruning (id, started_at) VALUES (1, $1)")
                .bind(ms(now))
                .execute(&mut *tx)
                .await?;
            let deleted = sqlx::query("DELETE FROM events WHERE at < $1 AND id <= $2")
                .bind(events_before)
                .bind(last)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            sqlx::query("DELETE FROM pruning").execute(&mut *tx).await?;
            tx.commit().await?;
            out.events += deleted;
            if (batch.len() as i64) < BATCH {
                break;
            }
        }
        out.archive = archive.map(|a| a.path);

        let mut tx = self.write().await?;
        out.approval_tokens = sqlx::query(
            "DELETE FROM approval_tokens WHERE created_at < $1 AND (expires_at <= $2
               OR replaced_at IS NOT NULL
               OR EXISTS (SELECT 1 FROM deliveries d WHERE d.source = $3 AND d.id = token_hash))",
        )
        .bind(horizon(r.approval_tokens))
        .bind(ms(now))
        .bind(DELIVERY_SOURCE)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        out.deliveries = sqlx::query(
            "DELETE FROM deliveries WHERE received_at < $1 AND NOT (source = $2
               AND id IN (SELECT token_hash FROM approval_tokens))",
        )
        .bind(horizon(r.deliveries))
        .bind(DELIVERY_SOURCE)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(out)
    }

    /// Up to `limit` events older than `before`, oldest first.
    async fn old_events(&self, before: i64, limit: i64) -> Result<Vec<ArchivedEvent>> {
        let rows = sqlx::query(
            "SELECT id, pipeline, at, actor, kind, release_id, stage, detail FROM events
             WHERE at < $1 ORDER BY id LIMIT $2",
        )
        .bind(before)
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        Ok(rows
            .iter()
            .map(|r| ArchivedEvent {
                id: r.get("id"),
                pipeline: r.get("pipeline"),
                at: r.get("at"),
                actor: r.get("actor"),
                kind: r.get("kind"),
                release_id: r.get("release_id"),
                stage: r.get("stage"),
                detail: r.get("detail"),
            })
            .collect())
    }
}

/// One run's archive file.
struct Archive {
    path: PathBuf,
    file: std::fs::File,
}

impl Archive {
    fn create(dir: &Path, now: DateTime<Utc>) -> Result<Archive> {
        let io = |e: std::io::Error| {
            StoreError::Invalid(format!("events archive {}: {e}", dir.display()))
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let path = dir.join(format!("events-{}.jsonl", now.format("%Y%m%dT%H%M%S%.3fZ")));
        let file = std::fs::OpenOptions::new()
            .append(true)
            .create_new(true)
            .open(&path)
            .map_err(io)?;
        Ok(Archive { path, file })
    }

    /// Writes `events` and makes them durable (the file's data, and its name in the directory).
    fn append(&mut self, events: &[ArchivedEvent]) -> Result<()> {
        let io = |e: std::io::Error| {
            StoreError::Invalid(format!("events archive {}: {e}", self.path.display()))
        };
        let mut text = String::new();
        for e in events {
            let line = serde_json::to_string(e).map_err(|e| io(std::io::Error::other(e)))?;
            text.push_str(&line);
            text.push('\n');
        }
        self.file.write_all(text.as_bytes()).map_err(io)?;
        self.file.sync_all().map_err(io)?;
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io)?;
        }
        Ok(())
    }
}

/// How often [`spawn_pruner`] prunes.
pub const PRUNE_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);

/// How often a controller that does not lead looks again whether a due pruning is its to do.
pub const LEAD_CHECK: std::time::Duration = std::time::Duration::from_secs(30);

/// Prunes at once and then every [`PRUNE_EVERY`], each time only if `may_act()` (the
/// controller leads: one pruner per state); a controller that does not lead when a pruning is
/// due looks again every [`LEAD_CHECK`]. Failures are logged and retried at the next turn.
pub fn spawn_pruner(
    store: Store,
    settings: RetentionSettings,
    may_act: impl Fn() -> bool + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            if !may_act() {
                tokio::time::sleep(LEAD_CHECK).await;
                continue;
            }
            match store.prune(&settings, Utc::now()).await {
                Ok(p) => tracing::info!(
                    events = p.events,
                    deliveries = p.deliveries,
                    approval_tokens = p.approval_tokens,
                    archive = p.archive.as_ref().map(|a| a.display().to_string()),
                    "retention: pruned"
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "retention: pruning failed; next try in an hour")
                }
            }
            tokio::time::sleep(PRUNE_EVERY).await;
        }
    })
}

#[cfg(test)]
mod tests {
    use chrono::{Duration, Utc};

    use super::*;
    use crate::domain::ReleaseId;
    use crate::engine::facts::{Delivery, NewRelease};
    use crate::store::approvals::{Issued, NewToken};

    fn delivery(source: &str, id: &str) -> Delivery {
        Delivery {
            source: source.into(),
            id: id.into(),
        }
    }

    async fn count(store: &Store, sql: &str) -> i64 {
        sqlx::query_scalar(sql)
            .fetch_one(store.pool())
            .await
            .unwrap()
    }

    async fn token(
        store: &Store,
        approver: &str,
        created: DateTime<Utc>,
        expires: DateTime<Utc>,
    ) -> String {
        let t = NewToken {
            request_key: format!("shop/r1/prod/a1/approval-{approver}"),
            pipeline: "shop".into(),
            release: ReleaseId(1),
            stage: "prod".into(),
            attempt: 1,
            approver: Some(approver.into()),
            recipient: None,
            expires_at: expires,
        };
        match store.issue_approval_token(&t, created).await.unwrap() {
            Issued::New(issued) => issued.record.hash,
            Issued::AlreadyPublished(_) => panic!("a first link is new"),
        }
    }

    #[tokio::test]
    async fn old_rows_are_pruned_and_archived_recent_ones_kept_and_the_log_stays_append_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&tollgate_testkit::state::url(dir.path()))
            .await
            .unwrap();
        let now = Utc::now();
        let old = now - Duration::days(100);
        let recent = now - Duration::days(2);
        let release = NewRelease {
            pipeline: "shop".into(),
            sha: "a".repeat(40),
            branch: "main".into(),
            author_name: "A".into(),
            author_email: "a@x".into(),
            message: "m".into(),
            ..NewRelease::default()
        };
        store
            .record_release(
                &release,
                &["prod".into()],
                &delivery("github", "push-old"),
                old,
            )
            .await
            .unwrap();
        for (i, at) in [old, old + Duration::hours(1), recent]
            .into_iter()
            .enumerate()
        {
            store
                .log_event(
                    "shop",
                    "ops",
                    "note",
                    Some((ReleaseId(1), "prod")),
                    &format!("note {i}\nline two"),
                    at,
                )
                .await
                .unwrap();
        }
        store
            .record_delivery(&delivery("sns", "recent"), None, recent)
            .await
            .unwrap();
        // Approval links: old and expired, old and used (not expired), old but still live,
        // and expired only recently.
        let expired = token(&store, "ann", old, old + Duration::hours(4)).await;
        let used = token(&store, "bob", old, now + Duration::days(1)).await;
        store
            .record_delivery(&delivery(DELIVERY_SOURCE, &used), None, old)
            .await
            .unwrap();
        let live = token(&store, "cid", old, now + Duration::days(1)).await;
        let lately = token(&store, "dan", recent, recent + Duration::hours(1)).await;
        let before = store.events("shop", 100).await.unwrap();
        let old_events: Vec<_> = before
            .iter()
            .filter(|e| e.at < now - Duration::days(90))
            .cloned()
            .collect();
        assert_eq!(
            old_events.len(),
            3,
            "the release's entry and two notes are old"
        );

        let archive = dir.path().join("archive");
        let settings = RetentionSettings {
            archive_dir: Some(archive.clone()),
            ..RetentionSettings::default()
        };
        let pruned = store.prune(&settings, now).await.unwrap();
        assert_eq!(
            (pruned.events, pruned.approval_tokens, pruned.deliveries),
            (3, 2, 2)
        );

        let after = store.events("shop", 100).await.unwrap();
        let kept: Vec<_> = before
            .iter()
            .filter(|e| e.at >= now - Duration::days(90))
            .cloned()
            .collect();
        assert_eq!(after, kept);
        let text = std::fs::read_to_string(pruned.archive.as_ref().unwrap()).unwrap();
        assert!(pruned.archive.unwrap().starts_with(&archive));
        let lines: Vec<ArchivedEvent> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        // The event log's rows as read before pruning, each as its archive line must say.
        let mut want: Vec<ArchivedEvent> = old_events
            .iter()
            .map(|e| ArchivedEvent {
                id: e.id,
                pipeline: "shop".into(),
                at: ms(e.at),
                actor: e.actor.clone(),
                kind: e.kind.clone(),
                release_id: e.release,
                stage: e.stage.clone(),
                detail: e.detail.clone(),
            })
            .collect();
        want.sort_by_key(|e| e.id);
        assert_eq!(lines, want);

        let tokens: Vec<String> =
            sqlx::query_scalar("SELECT token_hash FROM approval_tokens ORDER BY token_hash")
                .fetch_all(store.pool())
                .await
                .unwrap();
        let mut want = vec![live, lately];
        want.sort();
        assert_eq!(tokens, want);
        assert!(!tokens.contains(&expired) && !tokens.contains(&used));
        let deliveries: Vec<String> = sqlx::query_scalar("SELECT id FROM deliveries ORDER BY id")
            .fetch_all(store.pool())
            .await
            .unwrap();
        assert_eq!(deliveries, ["recent"]);
        // Releases and runs are never pruned.
        assert_eq!(count(&store, "SELECT count(*) FROM releases").await, 1);
        assert_eq!(count(&store, "SELECT count(*) FROM stage_runs").await, 1);

        // Outside the pruner, the log is still append-only.
        let delete = sqlx::query("DELETE FROM events")
            .execute(store.pool())
            .await;
        assert!(delete.unwrap_err().to_string().contains("append-only"));
        let update = sqlx::query("UPDATE events SET detail = 'x'")
            .execute(store.pool())
            .await;
        assert!(update.unwrap_err().to_string().contains("append-only"));
        assert_eq!(count(&store, "SELECT count(*) FROM events").await, 1);
        assert_eq!(
            count(&store, "SELECT count(*) FROM pruning").await,
            0,
            "no marker is left"
        );

        // Nothing more to prune: no archive file is written.
        let again = store.prune(&settings, now).await.unwrap();
        assert_eq!(again, Pruned::default());
        assert_eq!(std::fs::read_dir(&archive).unwrap().count(), 1);
    }
}

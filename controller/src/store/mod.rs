//! The durable store: SQLite through sqlx (embedded default), migrations embedded in the binary.
//!
//! Owns every SQL statement of tollgate. Guarantees: each ingest call and each `apply` is one
//! transaction; incoming deliveries are deduplicated by (source, id) in the same transaction
//! as the fact and its event-log entry; the event log is append-only (enforced by triggers);
//! commits are durable (WAL, `synchronous = FULL`); writes are committed in groups by one
//! writer ([`writer`]), each returning only once its group is committed.
//! Must never: decide what happens next (that is `domain::plan`), or store a secret.
//!
//! Two faces: [`Store`] writes, and only the engine holds one (its ingest API is the one way
//! a fact enters); [`Reads`] only reads, for pages, the CLI and tests. A `Store` dereferences
//! to its `Reads`.

pub mod applied;
pub mod approvals;
pub mod browse;
pub mod copy;
pub mod history;
mod intake;
pub mod keys;
#[cfg(test)]
mod known_good_tests;
pub mod leader_config;
pub mod lease;
pub mod lock;
#[cfg(test)]
mod migration_tests;
#[cfg(test)]
mod model_tests;
mod names;
#[cfg(test)]
mod reopen_tests;
pub mod retention;
mod rows;
#[cfg(test)]
mod scale_tests;
mod subscriptions;
mod timings;
mod writer;

use std::ops::Deref;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Row};

use crate::domain::approval::contributor_set;
use crate::domain::*;
use crate::engine::facts::*;
pub use applied::AppliedConfig;
pub use history::{Newest, PushLink};
pub use rows::*;

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("state database migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("unsupported state URL `{0}`: use sqlite://PATH or postgres://USER@HOST/DATABASE")]
    Url(String),
    #[error("corrupt row in {table}: {detail}")]
    Corrupt { table: &'static str, detail: String },
    #[error("refused: {0}")]
    Invalid(String),
    #[error("state database: the write was not committed: {0}")]
    Commit(String),
    #[error("refused: this controller no longer leads: {0}")]
    Fenced(String),
    #[error("state database {0}: cannot connect: {1}")]
    Connect(String, String),
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// The durable store: every write of tollgate.
#[derive(Clone, Debug)]
pub struct Store {
    reads: Reads,
}

/// The store's read-only face.
#[derive(Clone, Debug)]
pub struct Reads {
    pool: AnyPool,
    writer: writer::Writer,
    backend: Backend,
    /// Set on the reconciler's store of a controller that may lose the lead ([`lease`]).
    fence: Option<lease::Fence>,
    /// Release writes waiting to be recorded together ([`intake`]).
    intake: intake::Batcher,
}

/// The database engine holding the state: SQLite (embedded, one controller) or PostgreSQL
/// (several controllers, one of them leading). The SQL is the same for both except where
/// [`Backend`] is matched on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// The engine a state URL names: `sqlite:…` or `postgres://…` (`postgresql://…`).
    pub fn of_url(url: &str) -> Result<Backend> {
        if url.starts_with("sqlite:") {
            Ok(Backend::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Backend::Postgres)
        } else {
            Err(StoreError::Url(redact_url(url)))
        }
    }
}

/// A state URL fit for an error message or a log line: a PostgreSQL URL's password, in its
/// user part or as a `password=` parameter, is replaced by `***`.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            let secret = |k: &str| k.eq_ignore_ascii_case("password");
            if u.query_pairs().any(|(k, _)| secret(&k)) {
                let pairs: Vec<(String, String)> = u
                    .query_pairs()
                    .map(|(k, v)| {
                        let v = if secret(&k) {
                            "***".into()
                        } else {
                            v.into_owned()
                        };
                        (k.into_owned(), v)
                    })
                    .collect();
                u.query_pairs_mut().clear().extend_pairs(pairs);
            }
            if u.as_str() == url {
                url.to_string()
            } else {
                u.to_string()
            }
        }
        Err(_) if url.contains('@') || url.contains("password") => {
            "(a URL that does not parse)".to_string()
        }
        Err(_) => url.to_string(),
    }
}

#[cfg(test)]
mod redact_tests {
    use super::redact_url;

    #[test]
    fn passwords_never_reach_a_message() {
        assert_eq!(
            redact_url("postgres://tg:s3cret@db.internal/tollgate"),
            "postgres://tg:***@db.internal/tollgate"
        );
        let shown =
            redact_url("postgres://tg@db.internal/tollgate?sslmode=require&password=s3cret");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(
            shown.contains("sslmode=require") && shown.contains("password=***"),
            "{shown}"
        );
        assert_eq!(redact_url("sqlite://tollgate.db"), "sqlite://tollgate.db");
        assert_eq!(
            redact_url("postgres://tg@db.internal/tollgate"),
            "postgres://tg@db.internal/tollgate"
        );
    }
}

/// The SQLite URL with `mode=rwc` (create the file if absent) unless it names a mode. An
/// in-memory database gets a name of its own, shared by the pool's connections (each is
/// opened from the URL).
fn sqlite_create_url(url: &str) -> String {
    static MEMORY: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    if url.contains(":memory:") {
        let n = MEMORY.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!(
            "sqlite:file:tollgate-memory-{}-{n}?mode=memory&cache=shared",
            std::process::id()
        )
    } else if url.contains("mode=") {
        url.to_string()
    } else if url.contains('?') {
        format!("{url}&mode=rwc")
    } else {
        format!("{url}?mode=rwc")
    }
}

/// Every PostgreSQL session's settings: a controller stalled inside a write transaction (a
/// paused process, a lost host) has its session ended after 5 s idle, which frees the
/// writers' lock for the others; a write waits at most 5 s for a lock, then fails (and is
/// retried by its caller) rather than queueing behind a stalled one.
const POSTGRES_SESSION: &str =
    "SET idle_in_transaction_session_timeout = '5s'; SET lock_timeout = '5s';";

/// Every SQLite connection's settings: WAL, durable commits, foreign keys, and a busy
/// timeout for other processes' writes (`tollgate keys`, `tollgate state copy`).
const SQLITE_PRAGMAS: &str = "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
    PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 10000;";

impl Deref for Store {
    type Target = Reads;

    fn deref(&self) -> &Reads {
        &self.reads
    }
}

/// An event-log entry that goes with an acknowledged delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventNote {
    pub pipeline: String,
    pub kind: String,
    pub detail: String,
}

pub(crate) fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

pub(crate) fn from_ms(v: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(v).single().unwrap_or_default()
}

impl Store {
    /// Opens (creating if absent) the database at `url` (`sqlite://PATH` or `sqlite::memory:`)
    /// and brings its schema up to date.
    pub async fn open(url: &str) -> Result<Store> {
        let backend = Backend::of_url(url)?;
        sqlx::any::install_default_drivers();
        let pool = match backend {
            Backend::Sqlite => {
                // The writer takes one connection out of the pool for good ([`writer`]); sqlx
                // shares an in-memory database between its connections.
                let max = if url.contains(":memory:") { 1 } else { 4 };
                AnyPoolOptions::new()
                    .max_connections(max)
                    .after_connect(|conn, _| {
                        Box::pin(async move {
                            sqlx::Executor::execute(conn, SQLITE_PRAGMAS).await?;
                            Ok(())
                        })
                    })
                    .connect(&sqlite_create_url(url))
                    .await
                    .map_err(|e| match e {
                        sqlx::Error::Configuration(_) => StoreError::Url(url.to_string()),
                        e => e.into(),
                    })?
            }
            Backend::Postgres => AnyPoolOptions::new()
                .max_connections(8)
                .acquire_timeout(Duration::from_secs(10))
                .after_connect(|conn, _| {
                    Box::pin(async move {
                        sqlx::Executor::execute(conn, POSTGRES_SESSION).await?;
                        Ok(())
                    })
                })
                .connect(url)
                .await
                .map_err(|e| StoreError::Connect(redact_url(url), e.to_string()))?,
        };
        match backend {
            Backend::Sqlite => sqlx::migrate!("./migrations").run(&pool).await?,
            Backend::Postgres => sqlx::migrate!("./migrations-postgres").run(&pool).await?,
        }
        // An in-memory database has one connection (the writer's) and no WAL.
        let checkpoint = backend == Backend::Sqlite && !url.contains(":memory:");
        let writer = writer::Writer::new(&pool, backend, checkpoint).await?;
        Ok(Store {
            reads: Reads {
                pool,
                writer,
                backend,
                fence: None,
                intake: intake::Batcher::default(),
            },
        })
    }

    /// The read-only face of this store.
    pub fn reads(&self) -> &Reads {
        &self.reads
    }

    // ----- ingest: facts from outside ---------------------------------------------------

    /// Records a delivery id; false if it was seen before (the caller then changes nothing).
    async fn first_delivery(
        tx: &mut sqlx::AnyConnection,
        d: &Delivery,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let r = sqlx::query("INSERT INTO deliveries (source, id, received_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
            .bind(&d.source)
            .bind(&d.id)
            .bind(ms(now))
            .execute(&mut *tx)
            .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Records that a delivery arrived (for events that are acknowledged and ignored, or
    /// refused), with its event-log entry when `note` is given, in one transaction.
    pub async fn record_delivery(
        &self,
        d: &Delivery,
        note: Option<&EventNote>,
        now: DateTime<Utc>,
    ) -> Result<Ingested<()>> {
        let mut tx = self.write().await?;
        let fresh = Self::first_delivery(&mut tx, d, now).await?;
        if let (true, Some(n)) = (fresh, note) {
            log(
                &mut tx,
                &n.pipeline,
                now,
                &actor_of(d),
                &n.kind,
                None,
                None,
                &n.detail,
            )
            .await?;
        }
        tx.commit().await?;
        Ok(if fresh {
            Ingested::Recorded(())
        } else {
            Ingested::Duplicate
        })
    }

    /// Records a new release with a `waiting` run in every stage. A delivery seen before, or
    /// a commit the pipeline already has, changes nothing.
    pub async fn record_release(
        &self,
        r: &NewRelease,
        stages: &[StageName],
        d: &Delivery,
        now: DateTime<Utc>,
    ) -> Result<Ingested<ReleaseId>> {
        let recorded = self
            .record_release_after(r, stages, d, now, None, None)
            .await?;
        Ok(recorded.unwrap_or(Ingested::Duplicate))
    }

    /// [`Store::record_release`], only while the pipeline's newest release is still `newest`
    /// (`Some(None)`: it has none) when `newest` is given: `None` (nothing recorded, the
    /// delivery not consumed) when another release was recorded meanwhile. `push`, the link of
    /// the push that brought the release, is kept in the same unit (one durable write per
    /// delivery), whether the release is new or a duplicate.
    ///
    /// Writes arriving together are recorded together ([`intake`]).
    pub async fn record_release_after(
        &self,
        r: &NewRelease,
        stages: &[StageName],
        d: &Delivery,
        now: DateTime<Utc>,
        newest: Option<Option<ReleaseId>>,
        push: Option<&PushLink>,
    ) -> Result<Option<Ingested<ReleaseId>>> {
        self.record_release_batched(intake::ReleaseWrite {
            r: r.clone(),
            stages: stages.to_vec(),
            d: d.clone(),
            now,
            newest,
            push: push.cloned(),
        })
        .await
    }

    /// [`Store::record_release_after`] in a unit of its own.
    async fn record_release_unit(
        &self,
        r: &NewRelease,
        stages: &[StageName],
        d: &Delivery,
        now: DateTime<Utc>,
        newest: Option<Option<ReleaseId>>,
        push: Option<&PushLink>,
    ) -> Result<Option<Ingested<ReleaseId>>> {
        let mut tx = self.write().await?;
        if let Some(expected) = newest {
            let current: Option<i64> =
                sqlx::query("SELECT max(id) FROM releases WHERE pipeline = $1")
                    .bind(&r.pipeline)
                    .fetch_one(&mut *tx)
                    .await?
                    .get(0);
            if current != expected.map(|id| id.0) {
                return Ok(None);
            }
        }
        if let Some(push) = push {
            history::insert_push(&mut tx, push, now).await?;
        }
        if !Self::first_delivery(&mut tx, d, now).await? {
            tx.commit().await?;
            return Ok(Some(Ingested::Duplicate));
        }
        let exists = sqlx::query("SELECT id FROM releases WHERE pipeline = $1 AND sha = $2")
            .bind(&r.pipeline)
            .bind(&r.sha)
            .fetch_optional(&mut *tx)
            .await?;
        if exists.is_some() {
            tx.commit().await?;
            return Ok(Some(Ingested::Duplicate));
        }
        let people = release_people(r, pushed_people(&mut tx, &r.sha).await?);
        let id: i64 = sqlx::query(
            "INSERT INTO releases (pipeline, sha, branch, author_name, author_email, author_login, message, url, created_at, alarm_override, window_override, contributors)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING id",
        )
        .bind(&r.pipeline)
        .bind(&r.sha)
        .bind(&r.branch)
        .bind(&r.author_name)
        .bind(&r.author_email)
        .bind(&r.author_login)
        .bind(&r.message)
        .bind(&r.url)
        .bind(ms(now))
        .bind(&r.alarm_override)
        .bind(&r.window_override)
        .bind(rows::contributors_json(&people))
        .fetch_one(&mut *tx)
        .await?
        .get(0);
        let reason = reason_json(&Reason::PreviousStage);
        for stage in stages {
            sqlx::query("INSERT INTO stage_runs (release_id, stage, status, reason, attempt, since) VALUES ($1, $2, 'waiting', $3, 1, $4)")
                .bind(id)
                .bind(stage)
                .bind(&reason)
                .bind(ms(now))
                .execute(&mut *tx)
                .await?;
        }
        let detail = format!(
            "release r{id}: {} by {} — {}",
            crate::domain::short_sha(&r.sha),
            r.author_name,
            first_line(&r.message)
        );
        log(
            &mut tx,
            &r.pipeline,
            now,
            &actor_of(d),
            "release",
            Some(id),
            None,
            &detail,
        )
        .await?;
        tx.commit().await?;
        Ok(Some(Ingested::Recorded(ReleaseId(id))))
    }

    /// Records an approval or rejection (one per approver per release, stage and attempt),
    /// only while the run is at that attempt.
    pub async fn record_approval(
        &self,
        a: &NewApproval,
        d: &Delivery,
        now: DateTime<Utc>,
    ) -> Result<Ingested<()>> {
        let mut tx = self.write().await?;
        if !Self::first_delivery(&mut tx, d, now).await? {
            return Ok(Ingested::Duplicate);
        }
        // A decision belongs to the run's attempt it was given in: one given as a retry moved
        // the run to its next attempt records nothing (and leaves its link unused).
        let current: Option<i64> =
            sqlx::query("SELECT attempt FROM stage_runs WHERE release_id = $1 AND stage = $2")
                .bind(a.release.0)
                .bind(&a.stage)
                .fetch_optional(&mut *tx)
                .await?
                .map(|r| r.get(0));
        if current != Some(i64::from(a.attempt)) {
            return Ok(Ingested::Duplicate);
        }
        let r = sqlx::query(
            "INSERT INTO approvals (pipeline, release_id, stage, approver, decision, verified, at, actor, attempt)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT DO NOTHING",
        )
        .bind(&a.pipeline)
        .bind(a.release.0)
        .bind(&a.stage)
        .bind(&a.approver)
        .bind(a.decision.as_str())
        .bind(i64::from(a.verified))
        .bind(ms(now))
        .bind(&a.actor)
        .bind(i64::from(a.attempt))
        .execute(&mut *tx)
        .await?;
        if r.rows_affected() == 0 {
            tx.commit().await?;
            return Ok(Ingested::Duplicate);
        }
        let verified = if a.verified {
            ""
        } else {
            " (identity not verified)"
        };
        let detail = format!(
            "{} {}s{verified} (attempt {}); {}",
            a.approver,
            a.decision.as_str(),
            a.attempt,
            a.context
        );
        log(
            &mut tx,
            &a.pipeline,
            now,
            &a.actor,
            "approval",
            Some(a.release.0),
            Some(&a.stage),
            &detail,
        )
        .await?;
        tx.commit().await?;
        Ok(Ingested::Recorded(()))
    }

    /// Keeps the people a `push` of `sha` names, for the release a build of that commit makes
    /// later; a release of `sha` that exists already gets them at once. Idempotent.
    pub async fn record_push_contributors(
        &self,
        sha: &str,
        people: &[Contributor],
        now: DateTime<Utc>,
    ) -> Result<()> {
        let mut tx = self.write().await?;
        let all = contributor_set(
            pushed_people(&mut tx, sha)
                .await?
                .into_iter()
                .chain(people.iter().cloned()),
        );
        sqlx::query("INSERT INTO push_contributors (sha, contributors, at) VALUES ($1, $2, $3) ON CONFLICT (sha) DO UPDATE SET contributors = excluded.contributors")
            .bind(sha)
            .bind(rows::contributors_json(&all))
            .bind(ms(now))
            .execute(&mut *tx)
            .await?;
        let existing = sqlx::query("SELECT id, contributors FROM releases WHERE sha = $1")
            .bind(sha)
            .fetch_all(&mut *tx)
            .await?;
        for row in existing {
            let known = rows::contributors_of(&row.get::<String, _>(1))?;
            let merged = contributor_set(known.into_iter().chain(all.iter().cloned()));
            sqlx::query("UPDATE releases SET contributors = $1 WHERE id = $2")
                .bind(rows::contributors_json(&merged))
                .bind(row.get::<i64, _>(0))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Adds the authors and mergers of the commit's pull requests to a release's contributors
    /// and notes that they were looked up. Returns the release as it is now.
    pub async fn add_pull_contributors(
        &self,
        release: ReleaseId,
        people: &[Contributor],
    ) -> Result<Option<Release>> {
        let mut tx = self.write().await?;
        let Some(row) = sqlx::query("SELECT contributors FROM releases WHERE id = $1")
            .bind(release.0)
            .fetch_optional(&mut *tx)
            .await?
        else {
            return Ok(None);
        };
        let known = rows::contributors_of(&row.get::<String, _>(0))?;
        let all = contributor_set(known.into_iter().chain(people.iter().cloned()));
        sqlx::query("UPDATE releases SET contributors = $1, pulls_checked = 1 WHERE id = $2")
            .bind(rows::contributors_json(&all))
            .bind(release.0)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        rows::release(&self.pool, release).await
    }

    /// Records an alarm notification for a stage.
    ///
    /// `watched` false: the change fell in no watch window of the stage; it is logged as
    /// `alarm-ignored` (the fact is kept all the same, for the record).
    pub async fn record_alarm(
        &self,
        a: &NewAlarm,
        d: &Delivery,
        now: DateTime<Utc>,
        watched: bool,
    ) -> Result<Ingested<()>> {
        let mut tx = self.write().await?;
        if !Self::first_delivery(&mut tx, d, now).await? {
            return Ok(Ingested::Duplicate);
        }
        sqlx::query("INSERT INTO alarm_events (pipeline, stage, alarm, firing, at, changed_at) VALUES ($1, $2, $3, $4, $5, $6)")
            .bind(&a.pipeline)
            .bind(&a.stage)
            .bind(&a.alarm)
            .bind(i64::from(a.firing))
            .bind(ms(now))
            .bind(a.changed_at.map(ms))
            .execute(&mut *tx)
            .await?;
        let state = if a.firing { "ALARM" } else { "OK" };
        let (kind, detail) = if watched {
            (
                "alarm",
                format!("alarm {} is {state}: {}", a.alarm, a.reason),
            )
        } else {
            let at = a.changed_at.unwrap_or(now).format("%Y-%m-%d %H:%M:%S UTC");
            let detail = format!(
                "alarm {} went to {state} at {at}, outside every watch window of {} \
                 (nothing of it was deploying, being tested or baking then): nothing changes",
                a.alarm, a.stage
            );
            ("alarm-ignored", detail)
        };
        log(
            &mut tx,
            &a.pipeline,
            now,
            &actor_of(d),
            kind,
            None,
            Some(&a.stage),
            &detail,
        )
        .await?;
        tx.commit().await?;
        Ok(Ingested::Recorded(()))
    }

    /// Pauses (`reason` Some) or resumes (None) a pipeline or one of its stages.
    pub async fn set_paused(
        &self,
        pipeline: &str,
        stage: Option<&str>,
        reason: Option<&str>,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let mut tx = self.write().await?;
        rows::set_pause(&mut tx, pipeline, stage, reason).await?;
        let what = stage.map_or_else(|| "pipeline".to_string(), |s| format!("stage {s}"));
        let detail = match reason {
            Some(r) => format!("{what} paused: {r}"),
            None => format!("{what} resumed"),
        };
        log(
            &mut tx,
            pipeline,
            now,
            actor,
            if reason.is_some() { "pause" } else { "resume" },
            None,
            stage,
            &detail,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Asks for a manual rollback of a stage to its previous known-good release.
    pub async fn request_rollback(
        &self,
        pipeline: &str,
        stage: &str,
        actor: &str,
        d: &Delivery,
        now: DateTime<Utc>,
    ) -> Result<Ingested<()>> {
        let mut tx = self.write().await?;
        if !Self::first_delivery(&mut tx, d, now).await? {
            return Ok(Ingested::Duplicate);
        }
        sqlx::query(
            "INSERT INTO rollback_requests (pipeline, stage, actor, at) VALUES ($1, $2, $3, $4)",
        )
        .bind(pipeline)
        .bind(stage)
        .bind(actor)
        .bind(ms(now))
        .execute(&mut *tx)
        .await?;
        // The stage's current release may have finished: bring it back into the working set.
        sqlx::query("UPDATE releases SET active = 1 WHERE id = (SELECT release_id FROM stage_history WHERE pipeline = $1 AND stage = $2 ORDER BY id DESC LIMIT 1)")
            .bind(pipeline)
            .bind(stage)
            .execute(&mut *tx)
            .await?;
        log(
            &mut tx,
            pipeline,
            now,
            actor,
            "rollback-request",
            None,
            Some(stage),
            &format!("manual rollback of {stage} requested"),
        )
        .await?;
        tx.commit().await?;
        Ok(Ingested::Recorded(()))
    }

    /// Sets an explicit override on a release, in one transaction with its event-log entry
    /// (kind `override`): `Override::Alarms` lets it enter stages whose alarms are in ALARM,
    /// `Override::Window` lets it deploy outside deployment windows. False when the release
    /// is not one of `pipeline`'s. Setting it again replaces the reason.
    pub async fn set_override(
        &self,
        pipeline: &str,
        release: ReleaseId,
        which: Override,
        reason: &str,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let mut tx = self.write().await?;
        let column = match which {
            Override::Alarms => "alarm_override",
            Override::Window => "window_override",
        };
        let r = sqlx::query(&format!(
            "UPDATE releases SET {column} = $1 WHERE id = $2 AND pipeline = $3"
        ))
        .bind(reason)
        .bind(release.0)
        .bind(pipeline)
        .execute(&mut *tx)
        .await?;
        if r.rows_affected() == 0 {
            return Ok(false);
        }
        let detail = format!("{release} {}: {reason}", which.lifts());
        log(
            &mut tx,
            pipeline,
            now,
            actor,
            "override",
            Some(release.0),
            None,
            &detail,
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Records a `tollgate retry` request for a release of `pipeline`; the planner sends the
    /// release again or refuses, and logs which. Brings the release back into the working set
    /// so the planner sees it. `None` when the release is not one of the pipeline's.
    pub async fn request_retry(
        &self,
        pipeline: &str,
        release: ReleaseId,
        actor: &str,
        d: &Delivery,
        now: DateTime<Utc>,
    ) -> Result<Option<Ingested<()>>> {
        let mut tx = self.write().await?;
        if rows::release_in(&mut tx, pipeline, release)
            .await?
            .is_none()
        {
            return Ok(None);
        }
        if !Self::first_delivery(&mut tx, d, now).await? {
            return Ok(Some(Ingested::Duplicate));
        }
        // One request at a time per release: the same command repeated before the controller
        // acted is the same request.
        let pending = sqlx::query(
            "SELECT 1 FROM retry_requests WHERE release_id = $1 AND handled_at IS NULL",
        )
        .bind(release.0)
        .fetch_optional(&mut *tx)
        .await?;
        if pending.is_some() {
            tx.commit().await?;
            return Ok(Some(Ingested::Duplicate));
        }
        sqlx::query(
            "INSERT INTO retry_requests (pipeline, release_id, actor, at) VALUES ($1, $2, $3, $4)",
        )
        .bind(pipeline)
        .bind(release.0)
        .bind(actor)
        .bind(ms(now))
        .execute(&mut *tx)
        .await?;
        rows::activate(&mut tx, release).await?;
        let detail = format!("retry of {release} requested");
        log(
            &mut tx,
            pipeline,
            now,
            actor,
            "retry-request",
            Some(release.0),
            None,
            &detail,
        )
        .await?;
        tx.commit().await?;
        Ok(Some(Ingested::Recorded(())))
    }

    /// Appends a free-form entry to the event log, about the pipeline as a whole (`scope`
    /// None) or about one release in one stage. Not fenced: any controller records facts
    /// (the API, webhooks, SNS), leader or not. The reconciler's own entries go through
    /// [`Store::log_reconciler_event`].
    pub async fn log_event(
        &self,
        pipeline: &str,
        actor: &str,
        kind: &str,
        scope: Option<(ReleaseId, &str)>,
        detail: &str,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let mut tx = self.write().await?;
        let (release, stage) = (scope.map(|(r, _)| r.0), scope.map(|(_, s)| s));
        log(&mut tx, pipeline, now, actor, kind, release, stage, detail).await?;
        tx.commit().await?;
        Ok(())
    }

    // ----- the reconciler's side ---------------------------------------------------------

    /// Appends an entry of the reconciler's own (actor `controller`: a rollback's latency or
    /// fallback, an effect past its deadline) to the event log, as [`Store::log_event`] does,
    /// but fenced like the reconciler's other writes ([`lease`]): on a store whose controller
    /// no longer holds the lease at its epoch it is refused with [`StoreError::Fenced`] and
    /// nothing is written.
    pub async fn log_reconciler_event(
        &self,
        pipeline: &str,
        kind: &str,
        scope: Option<(ReleaseId, &str)>,
        detail: &str,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let mut tx = self.write_fenced().await?;
        let (release, stage) = (scope.map(|(r, _)| r.0), scope.map(|(_, s)| s));
        log(
            &mut tx,
            pipeline,
            now,
            "controller",
            kind,
            release,
            stage,
            detail,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Everything `plan` needs about one pipeline.
    pub async fn snapshot(
        &self,
        pipeline: &str,
        stages: &[StageName],
        since_alarms: DateTime<Utc>,
    ) -> Result<Snapshot> {
        // One read transaction: every query sees the same state. Read one by one, an effect
        // finishing in between (its outcome and the release's digest written together) could
        // be seen half: the outcome without the digest, and the release failed for it.
        let mut tx = self.read_tx().await?;
        let snap = rows::load_snapshot(&mut tx, pipeline, stages, since_alarms).await?;
        tx.rollback().await?;
        Ok(snap)
    }

    /// Applies the planner's state changes in one transaction, logging each.
    pub async fn apply(
        &self,
        pipeline: &str,
        actions: &[Action],
        now: DateTime<Utc>,
    ) -> Result<()> {
        let mut tx = self.write_fenced().await?;
        for a in actions.iter().filter(|a| a.is_state_change()) {
            rows::apply_one(&mut tx, pipeline, a, now).await?;
            log(
                &mut tx,
                pipeline,
                now,
                "controller",
                action_kind(a),
                action_release(a),
                action_stage(a),
                &a.describe(now),
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Records the intent to perform an effect, with the place a deploy is about to go to
    /// (`None` for any other effect: a place given for one is refused); false if it was
    /// recorded before (its first record, place included, stays).
    pub async fn begin_effect(
        &self,
        e: &Effect,
        place: Option<&crate::domain::DeployedTo>,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        if place.is_some() && !matches!(e.kind, EffectKind::Deploy { .. }) {
            return Err(StoreError::Invalid(format!(
                "{}: only a deploy records a place",
                e.key
            )));
        }
        let spec = serde_json::to_string(&e.kind).unwrap_or_default();
        let place = place.map(|p| serde_json::to_string(p).unwrap_or_default());
        let mut tx = self.write_fenced().await?;
        let r = sqlx::query(
            "INSERT INTO effects (key, pipeline, release_id, stage, attempt, kind, spec, status, started_at, place) VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending', $8, $9) ON CONFLICT DO NOTHING",
        )
        .bind(&e.key)
        .bind(&e.pipeline)
        .bind(e.release.0)
        .bind(&e.stage)
        .bind(i64::from(e.attempt))
        .bind(e.kind.tag())
        .bind(spec)
        .bind(ms(now))
        .bind(place)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(r.rows_affected() == 1)
    }

    /// Records an effect's outcome (once; a second outcome for the same key is ignored).
    /// A resolved artifact's digest is stored on its release in the same transaction.
    pub async fn finish_effect(
        &self,
        e: &Effect,
        outcome: &EffectOutcome,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let mut tx = self.write_fenced().await?;
        let output =
            serde_json::to_string(&outcome.output).unwrap_or_else(|_| r#"{"kind":"none"}"#.into());
        let status = if outcome.ok {
            EffectStatus::Succeeded
        } else {
            EffectStatus::Failed
        };
        let r = sqlx::query("UPDATE effects SET status = $1, detail = $2, output = $3, finished_at = $4 WHERE key = $5 AND status = 'pending'")
            .bind(status.as_str())
            .bind(&outcome.detail)
            .bind(output)
            .bind(ms(now))
            .bind(&e.key)
            .execute(&mut *tx)
            .await?;
        if r.rows_affected() == 0 {
            return Ok(());
        }
        if let (EffectKind::ResolveArtifact, EffectOutput::Resolved { digest: d }) =
            (&e.kind, &outcome.output)
        {
            if outcome.ok {
                sqlx::query("UPDATE releases SET digest = $1 WHERE id = $2 AND digest IS NULL")
                    .bind(d)
                    .bind(e.release.0)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        if let EffectOutput::Deployed {
            timing: Some(t), ..
        }
        | EffectOutput::RolledBack {
            timing: Some(t), ..
        } = &outcome.output
        {
            timings::record(&mut tx, &e.key, t, now).await?;
        }
        let stage = (!e.stage.is_empty()).then_some(e.stage.as_str());
        let detail = format!(
            "{} {}: {}",
            e.kind.key_part(),
            status.as_str(),
            outcome.detail
        );
        log(
            &mut tx,
            &e.pipeline,
            now,
            "controller",
            "effect",
            Some(e.release.0),
            stage,
            &detail,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }
}

impl Store {
    /// Stores a template body under its sha256 (hex), once: the same body stored again
    /// changes nothing. Refuses a `sha256` that is not the body's.
    pub async fn put_template(&self, sha256: &str, body: &str, now: DateTime<Utc>) -> Result<()> {
        use sha2::Digest as _;
        let actual = hex::encode(sha2::Sha256::digest(body.as_bytes()));
        if actual != sha256 {
            return Err(StoreError::Invalid(format!(
                "template sha256 {sha256} does not match its body ({actual})"
            )));
        }
        let mut tx = self.write_fenced().await?;
        sqlx::query("INSERT INTO templates (sha256, body, stored_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
            .bind(sha256)
            .bind(body)
            .bind(ms(now))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }
}

impl Reads {
    /// A write transaction: one unit of the store's writer ([`writer`]), committed in a group
    /// with the units of other writers waiting at the same time. Use it as the connection
    /// (`&mut *tx`), then `tx.commit().await?`: it returns once the write is durable.
    async fn write(&self) -> Result<writer::WriteTx> {
        self.writer.begin().await
    }

    /// A read transaction whose queries all see one state. SQLite's transactions do; a
    /// PostgreSQL transaction must ask for it (its default gives each statement a snapshot of
    /// its own).
    async fn read_tx(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>> {
        let mut tx = self.pool.begin().await?;
        if self.backend == Backend::Postgres {
            sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                .execute(&mut *tx)
                .await?;
        }
        Ok(tx)
    }
}

/// What a succeeded deploy of a wave applied, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeployedWave {
    pub applied: Option<crate::domain::AppliedSpec>,
    pub to: Option<crate::domain::DeployedTo>,
}

impl Reads {
    /// A template body stored by [`Store::put_template`], by its sha256.
    pub async fn template(&self, sha256: &str) -> Result<Option<String>> {
        let row: Option<(String,)> = sqlx::query_as("SELECT body FROM templates WHERE sha256 = $1")
            .bind(sha256)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|(body,)| body))
    }

    /// What the newest succeeded deploy of `release` to `stage`'s wave `wave` applied (`None`:
    /// never deployed there, or deployed before the applied spec was recorded).
    pub async fn applied(
        &self,
        release: ReleaseId,
        stage: &str,
        wave: usize,
    ) -> Result<Option<crate::domain::AppliedSpec>> {
        let deployed = self.deployed_wave(release, stage, wave).await?;
        Ok(deployed.and_then(|d| d.applied))
    }

    /// The newest succeeded deploy of `release` to `stage`'s wave `wave`: what it applied and
    /// where (each `None` in deploys recorded before it was kept); `None`: never deployed there.
    pub async fn deployed_wave(
        &self,
        release: ReleaseId,
        stage: &str,
        wave: usize,
    ) -> Result<Option<DeployedWave>> {
        let effects = self.effects_of(release, stage).await?;
        Ok(effects
            .into_iter()
            .rev()
            .filter(|e| e.status == EffectStatus::Succeeded)
            .filter(|e| matches!(e.kind, EffectKind::Deploy { wave: w } if w == wave))
            .find_map(|e| match e.output {
                EffectOutput::Deployed { applied, to, .. } => Some(DeployedWave {
                    applied,
                    to: to.map(|to| *to),
                }),
                _ => None,
            }))
    }

    /// Where the watch for facts from other processes stands: the newest event-log id, and the
    /// pipelines named by entries after `after` that the reconciler did not write itself (actor
    /// `controller`; its own loops already know). `None`: only the newest id, where watching
    /// starts. Reads only the new entries (by primary key), whatever the log's size.
    pub async fn facts_after(&self, after: Option<i64>) -> Result<(i64, Vec<String>)> {
        let last: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(id), 0) FROM events")
            .fetch_one(&self.pool)
            .await?;
        let Some(after) = after.filter(|a| *a < last) else {
            return Ok((last, Vec::new()));
        };
        let pipelines = sqlx::query_scalar(
            "SELECT DISTINCT pipeline FROM events WHERE id > $1 AND id <= $2 AND actor <> 'controller'",
        )
        .bind(after)
        .bind(last)
        .fetch_all(&self.pool)
        .await?;
        Ok((last, pipelines))
    }

    /// The engine holding the state.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Is the database reachable? (for `/readyz`)
    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }

    /// The connection pool, for tests that inspect rows directly.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    // ----- reading for people ------------------------------------------------------------

    /// The event log of a pipeline, oldest first (at most `limit`, the newest ones).
    pub async fn events(&self, pipeline: &str, limit: i64) -> Result<Vec<EventRow>> {
        rows::events(&self.pool, pipeline, limit).await
    }

    /// The event-log entries about one release, oldest first.
    pub async fn release_events(
        &self,
        pipeline: &str,
        release: ReleaseId,
    ) -> Result<Vec<EventRow>> {
        rows::release_events(&self.pool, pipeline, release).await
    }

    /// One release by id.
    pub async fn release(&self, id: ReleaseId) -> Result<Option<Release>> {
        rows::release(&self.pool, id).await
    }

    /// A pipeline's stage runs of its most recent releases (newest first).
    pub async fn recent_runs(
        &self,
        pipeline: &str,
        releases: i64,
    ) -> Result<Vec<(Release, Vec<StageRun>)>> {
        rows::recent_runs(&self.pool, pipeline, releases).await
    }

    /// The release a stage trusts now (its newest history entry not marked bad).
    pub async fn last_good(&self, pipeline: &str, stage: &str) -> Result<Option<Release>> {
        rows::last_good(&self.pool, pipeline, stage).await
    }

    /// Every run of an active release whose stage's live system it is changing (deploying,
    /// verifying, baking or rolling back), with its pipeline, in pipeline and stage order.
    pub async fn changing_runs(&self) -> Result<Vec<(String, StageRun)>> {
        let changing = RunStatus::sql_set(RunStatus::changes_stage);
        let rows = sqlx::query(&format!(
            "SELECT r.pipeline AS pipeline_name, s.* FROM stage_runs s \
             JOIN releases r ON r.id = s.release_id \
             WHERE r.active = 1 AND s.status IN ({changing}) \
             ORDER BY r.pipeline, s.stage, s.release_id",
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.get("pipeline_name"), rows::run_row(r)?)))
            .collect()
    }

    /// The run in a stage that is past `waiting` and not finished, newest first.
    pub async fn in_flight(&self, pipeline: &str, stage: &str) -> Result<Vec<(Release, StageRun)>> {
        rows::in_flight(&self.pool, pipeline, stage).await
    }

    /// The pause reason of a pipeline and of one of its stages.
    pub async fn paused(
        &self,
        pipeline: &str,
        stage: &str,
    ) -> Result<(Option<String>, Option<String>)> {
        rows::paused(&self.pool, pipeline, stage).await
    }

    /// The effect records of one run.
    pub async fn effects_of(&self, release: ReleaseId, stage: &str) -> Result<Vec<EffectRecord>> {
        rows::effects_of(&self.pool, release, stage).await
    }

    /// Whether the effect `key` has finished (succeeded or failed); false when pending or
    /// never begun.
    pub async fn effect_finished(&self, key: &str) -> Result<bool> {
        let row: Option<(String,)> = sqlx::query_as("SELECT status FROM effects WHERE key = $1")
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some_and(|(status,)| status != EffectStatus::Pending.as_str()))
    }

    /// All effect records whose key starts with `prefix` (tests and the status page).
    pub async fn effects_with_prefix(&self, prefix: &str) -> Result<Vec<EffectRecord>> {
        rows::effects_with_prefix(&self.pool, prefix).await
    }

    /// Approvals recorded for a release in a stage.
    pub async fn approvals_of(
        &self,
        release: ReleaseId,
        stage: &str,
    ) -> Result<Vec<ApprovalRecord>> {
        rows::approvals_of(&self.pool, release, stage).await
    }
}

/// What an effect produced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EffectOutcome {
    pub ok: bool,
    pub detail: String,
    pub output: EffectOutput,
}

impl EffectOutcome {
    pub fn success(detail: impl Into<String>) -> Self {
        Self {
            ok: true,
            detail: detail.into(),
            output: EffectOutput::None,
        }
    }

    pub fn failure(detail: impl Into<String>) -> Self {
        Self {
            ok: false,
            detail: detail.into(),
            output: EffectOutput::None,
        }
    }

    /// The same outcome with what the effect produced.
    pub fn with(mut self, output: EffectOutput) -> Self {
        self.output = output;
        self
    }
}

/// The tables whose ids the database assigns.
pub(crate) const ID_TABLES: [&str; 11] = [
    "releases",
    "alarm_events",
    "stage_history",
    "rollback_requests",
    "events",
    "approval_tokens",
    "retry_requests",
    "approvals",
    "stack_timings",
    "stage_runs",
    "effects",
];

/// After rows were written with explicit ids (a copy, a test's seed): the ids the database
/// assigns next follow the highest present. SQLite does so by itself (AUTOINCREMENT); a
/// PostgreSQL identity is moved on here.
pub(crate) async fn follow_explicit_ids(
    c: &mut sqlx::AnyConnection,
    backend: Backend,
) -> Result<()> {
    if backend != Backend::Postgres {
        return Ok(());
    }
    for table in ID_TABLES {
        let column = if matches!(table, "stage_runs" | "effects") {
            "rowid"
        } else {
            "id"
        };
        sqlx::query(&format!(
            "SELECT setval(pg_get_serial_sequence('{table}', '{column}'), \
             COALESCE((SELECT MAX({column}) FROM {table}), 0) + 1, false)"
        ))
        .execute(&mut *c)
        .await?;
    }
    Ok(())
}

/// The people pushes of `sha` named (kept by [`Store::record_push_contributors`]).
async fn pushed_people(c: &mut sqlx::AnyConnection, sha: &str) -> Result<Vec<Contributor>> {
    let row = sqlx::query("SELECT contributors FROM push_contributors WHERE sha = $1")
        .bind(sha)
        .fetch_optional(&mut *c)
        .await?;
    match row {
        Some(r) => rows::contributors_of(&r.get::<String, _>(0)),
        None => Ok(Vec::new()),
    }
}

/// The people a new release is recorded with: those its commit names, and the people of
/// its push (kept by `record_push_contributors` for a release built by a workflow).
fn release_people(r: &NewRelease, pushed: Vec<Contributor>) -> Vec<Contributor> {
    if pushed.is_empty() {
        r.all_contributors()
    } else {
        contributor_set(r.all_contributors().into_iter().chain(pushed))
    }
}

fn actor_of(d: &Delivery) -> String {
    format!("{}:{}", d.source, d.id)
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

#[allow(clippy::too_many_arguments)]
async fn log(
    tx: &mut sqlx::AnyConnection,
    pipeline: &str,
    at: DateTime<Utc>,
    actor: &str,
    kind: &str,
    release: Option<i64>,
    stage: Option<&str>,
    detail: &str,
) -> Result<()> {
    sqlx::query("INSERT INTO events (pipeline, at, actor, kind, release_id, stage, detail) VALUES ($1, $2, $3, $4, $5, $6, $7)")
        .bind(pipeline)
        .bind(ms(at))
        .bind(actor)
        .bind(kind)
        .bind(release)
        .bind(stage)
        .bind(detail)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

fn action_kind(a: &Action) -> &'static str {
    match a {
        Action::Transition { .. } => "transition",
        Action::Note { .. } => "note",
        Action::MarkBad { .. } => "mark-bad",
        Action::AddRun { .. } => "run-added",
        Action::ReopenRun { .. } => "run-reopened",
        Action::FailRelease { .. } => "release-failed",
        Action::RecordGood { .. } => "known-good",
        Action::PauseStage { .. } => "pause",
        Action::ConsumeRollbackRequest { .. } => "rollback-request-handled",
        Action::Retry { .. } => "retry",
        Action::RefuseRetry { .. } => "retry-refused",
        Action::Retire { .. } => "finished",
        Action::Abandon { .. } => "abandoned",
        Action::Start(_) => "effect",
    }
}

fn action_release(a: &Action) -> Option<i64> {
    match a {
        Action::Transition { release, .. }
        | Action::Note { release, .. }
        | Action::MarkBad { release, .. }
        | Action::AddRun { release, .. }
        | Action::ReopenRun { release, .. }
        | Action::FailRelease { release, .. }
        | Action::RecordGood { release, .. }
        | Action::Retry { release, .. }
        | Action::RefuseRetry { release, .. }
        | Action::Retire { release } => Some(release.0),
        Action::Start(e) => Some(e.release.0),
        _ => None,
    }
}

fn action_stage(a: &Action) -> Option<&str> {
    match a {
        Action::Transition { stage, .. }
        | Action::Note { stage, .. }
        | Action::MarkBad { stage, .. }
        | Action::AddRun { stage, .. }
        | Action::ReopenRun { stage, .. }
        | Action::RecordGood { stage, .. }
        | Action::PauseStage { stage, .. }
        | Action::ConsumeRollbackRequest { stage, .. } => Some(stage),
        Action::Retry { stages, .. } => stages.first().map(StageName::as_str),
        _ => None,
    }
}

//! Releases recorded together: the writes of deliveries arriving at once share one unit of
//! the writer and a handful of multi-row statements.
//!
//! [`Store::record_release_after`] queues its write and waits for its answer. The first write
//! of a burst starts a flusher task that takes every write queued (up to [`MOST`]) and records
//! them in one unit ([`Store::record_releases`]): four reads (the pipelines' newest releases,
//! the deliveries and commits seen before, the people pushes named) and five multi-row inserts
//! (push links, deliveries, releases, stage runs, event-log entries), instead of about twelve
//! statements per delivery. Writes queued while a batch is being written form the next batch.
//!
//! # Guarantees
//! - Each write gets the answer it would get if the writes of its batch had been recorded one
//!   after the other in the order they were queued: a delivery or a commit seen earlier in the
//!   batch is a duplicate; a newest-release check fails when an earlier write of the batch
//!   recorded a release of the same pipeline.
//! - An answer is given only after the batch's unit committed (durable, as every write).
//! - A batch that fails is written again one write at a time (each in its own unit), so a
//!   write the database refuses fails alone.
//! - The flusher is its own task: a caller that stops waiting does not stop its batch.
//!
//! # Caveats
//! - A caller that stops waiting does not learn its outcome (the write may be committed).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use sqlx::Row;
use tokio::sync::oneshot;

use super::history::{Newest, PushLink};
use super::rows::{contributors_json, contributors_of, reason_json};
use super::{Backend, Result, Store, StoreError, actor_of, first_line, ms, release_people};
use crate::domain::{Reason, ReleaseId, StageName};
use crate::engine::facts::{Delivery, Ingested, NewRelease};

/// The most rows one statement of a batch reads or writes. With numbered `$N` parameters
/// SQLite's cost per statement grows with the square of its parameters (see [`placeholder`]):
/// one statement per table for a burst of 200 (2,400 parameters for the stage runs) spent most
/// of its time there. SQLite's statements take anonymous parameters, and 128 rows measured
/// no better than 32 (docs/benchmarks.md), so statements stay small, in the few shapes
/// [`parts`] cuts.
const ROWS: usize = 32;

/// The most writes recorded in one batch, and the most stage runs their releases may have
/// between them: what one writer unit holds (its statements take [`ROWS`] rows each). A burst
/// of 200 deliveries answered faster in batches of at most 100 (the first half is answered
/// while the second is written) than in one batch of 200: p99 about 100 ms against 115–150 ms
/// (docs/benchmarks.md).
pub(super) const MOST: usize = 100;
const MOST_RUNS: usize = 5000;

/// One release to record, as [`Store::record_release_after`] takes it.
#[derive(Debug, Clone)]
pub(super) struct ReleaseWrite {
    pub r: NewRelease,
    pub stages: Vec<StageName>,
    pub d: Delivery,
    pub now: DateTime<Utc>,
    pub newest: Option<Option<ReleaseId>>,
    pub push: Option<PushLink>,
}

/// What a write leads to: `None` when its newest-release check failed.
pub(super) type Answer = Result<Option<Ingested<ReleaseId>>>;

type Waiting = Vec<(ReleaseWrite, oneshot::Sender<Answer>)>;

/// The newest release of each pipeline this controller recorded or read (by id: a later
/// id always wins, so a read that raced a write cannot set it back).
#[derive(Default)]
struct Known(HashMap<String, Newest>);

#[derive(Default)]
struct Queue {
    waiting: Waiting,
    /// A flusher task is running (it takes whatever is queued before it stops).
    flushing: bool,
}

/// The queue of release writes waiting for the flusher.
#[derive(Clone, Default)]
pub(super) struct Batcher {
    queue: Arc<Mutex<Queue>>,
    known: Arc<Mutex<Known>>,
}

impl Batcher {
    /// The newest release of `pipeline` this controller knows of.
    pub(super) fn newest(&self, pipeline: &str) -> Option<Newest> {
        let known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        known.0.get(pipeline).cloned()
    }

    /// Notes that `n` is (or was) a release of `pipeline`.
    pub(super) fn saw(&self, pipeline: &str, n: &Newest) {
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        match known.0.get_mut(pipeline) {
            Some(k) if k.id >= n.id => {}
            Some(k) => *k = n.clone(),
            None => {
                known.0.insert(pipeline.to_string(), n.clone());
            }
        }
    }

    /// Notes the release `w` recorded, if it did.
    fn recorded(&self, w: &ReleaseWrite, answer: Option<&Ingested<ReleaseId>>) {
        if let Some(Ingested::Recorded(id)) = answer {
            let sha = w.r.sha.clone();
            self.saw(&w.r.pipeline, &Newest { id: *id, sha });
        }
    }
}

impl std::fmt::Debug for Batcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Batcher")
    }
}

/// Ends the flusher's turn however its task ends: a task dropped by its runtime's shutdown
/// fails the writes still queued (their callers see an error) instead of leaving them waiting
/// for a flusher that will not come.
struct Turn(Arc<Mutex<Queue>>);

impl Drop for Turn {
    fn drop(&mut self) {
        let mut q = self.0.lock().unwrap_or_else(|p| p.into_inner());
        q.flushing = false;
        q.waiting.clear();
    }
}

impl Store {
    /// Queues `w` and waits until its batch is recorded.
    pub(super) async fn record_release_batched(&self, w: ReleaseWrite) -> Answer {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut q = self.intake.queue.lock().unwrap_or_else(|p| p.into_inner());
            q.waiting.push((w, tx));
            !std::mem::replace(&mut q.flushing, true)
        };
        if start {
            let store = self.clone();
            tokio::spawn(async move { store.flush_releases().await });
        }
        rx.await.map_err(|_| {
            StoreError::Commit("the controller stopped before the release was recorded".into())
        })?
    }

    /// Records the queued writes, a batch at a time, until none is left.
    async fn flush_releases(&self) {
        let turn = Turn(self.intake.queue.clone());
        loop {
            let batch: Waiting = {
                let mut q = turn.0.lock().unwrap_or_else(|p| p.into_inner());
                if q.waiting.is_empty() {
                    q.flushing = false;
                    return;
                }
                let mut runs = 0;
                let n = q
                    .waiting
                    .iter()
                    .take(MOST)
                    .take_while(|(w, _)| {
                        runs += w.stages.len();
                        runs <= MOST_RUNS
                    })
                    .count()
                    .max(1);
                q.waiting.drain(..n).collect()
            };
            let (writes, answers): (Vec<ReleaseWrite>, Vec<_>) = batch.into_iter().unzip();
            let results: Vec<Answer> = match self.record_releases(&writes).await {
                Ok(done) => done.into_iter().map(Ok).collect(),
                Err(e) if writes.len() == 1 => vec![Err(e)],
                Err(e) => {
                    tracing::warn!(error = %e, writes = writes.len(), "releases recorded together failed; recording them one at a time");
                    let mut each = Vec::with_capacity(writes.len());
                    for w in &writes {
                        each.push(self.record_release_alone(w).await);
                    }
                    each
                }
            };
            for (answer, result) in answers.into_iter().zip(results) {
                let _ = answer.send(result);
            }
        }
    }

    /// Records `ws` in one unit, answering each as if they had been recorded in turn.
    pub(super) async fn record_releases(
        &self,
        ws: &[ReleaseWrite],
    ) -> Result<Vec<Option<Ingested<ReleaseId>>>> {
        let b = self.backend;
        let mut tx = self.write().await?;
        let pipelines: Vec<&str> = distinct(ws.iter().map(|w| w.r.pipeline.as_str()));
        let shas: Vec<&str> = distinct(ws.iter().map(|w| w.r.sha.as_str()));

        // What the database holds already.
        let newest: HashMap<String, i64> = keyed(
            &mut tx,
            b,
            (
                "SELECT pipeline, max(id) FROM releases WHERE pipeline IN (",
                ") GROUP BY pipeline",
            ),
            &pipelines,
        )
        .await?;
        let mut seen_deliveries: HashSet<(String, String)> = HashSet::new();
        for source in distinct(ws.iter().map(|w| w.d.source.as_str())) {
            let ids: Vec<&str> = distinct(
                ws.iter()
                    .filter(|w| w.d.source == source)
                    .map(|w| w.d.id.as_str()),
            );
            for part in parts(&ids) {
                let sql = format!(
                    "SELECT id FROM deliveries WHERE source = {} AND id IN ({})",
                    params(b, 1, 1),
                    params(b, 2, part.len())
                );
                let mut q = sqlx::query(&sql).bind(source);
                for id in part {
                    q = q.bind(*id);
                }
                for row in q.fetch_all(&mut *tx).await? {
                    seen_deliveries.insert((source.to_string(), row.get(0)));
                }
            }
        }
        // Exactly the (pipeline, sha) pairs written, joined to the unique index: one probe
        // each. (Two IN lists probe every pipeline with every sha, 40,000 probes for 200
        // writes, 22 ms; a row-value IN over VALUES scans the whole table.)
        let mut seen_releases: HashSet<(String, String)> = HashSet::new();
        let mut pairs: Vec<(&str, &str)> = ws
            .iter()
            .map(|w| (w.r.pipeline.as_str(), w.r.sha.as_str()))
            .collect();
        pairs.sort_unstable();
        pairs.dedup();
        for part in parts(&pairs) {
            let sql = format!(
                "WITH w (p, s) AS (VALUES {}) \
                 SELECT r.pipeline, r.sha FROM w JOIN releases r ON r.pipeline = w.p AND r.sha = w.s",
                rows(b, part.len(), 2)
            );
            let mut q = sqlx::query(&sql);
            for (p, s) in part {
                q = q.bind(*p).bind(*s);
            }
            for row in q.fetch_all(&mut *tx).await? {
                seen_releases.insert((row.get(0), row.get(1)));
            }
        }
        let pushed: HashMap<String, String> = keyed(
            &mut tx,
            b,
            (
                "SELECT sha, contributors FROM push_contributors WHERE sha IN (",
                ")",
            ),
            &shas,
        )
        .await?;

        // Each write in turn, as the one-at-a-time path decides it.
        let mut answers = Vec::with_capacity(ws.len());
        let mut released: HashSet<&str> = HashSet::new();
        let mut links: Vec<(&PushLink, DateTime<Utc>)> = Vec::new();
        let mut deliveries: Vec<&ReleaseWrite> = Vec::new();
        let mut fresh: Vec<&ReleaseWrite> = Vec::new();
        for w in ws {
            let p = w.r.pipeline.as_str();
            if let Some(expected) = w.newest {
                let current = newest.get(p).copied();
                if released.contains(p) || current != expected.map(|id| id.0) {
                    answers.push(None);
                    continue;
                }
            }
            if let Some(push) = &w.push {
                links.push((push, w.now));
            }
            if !seen_deliveries.insert((w.d.source.clone(), w.d.id.clone())) {
                answers.push(Some(Ingested::Duplicate));
                continue;
            }
            deliveries.push(w);
            if !seen_releases.insert((w.r.pipeline.clone(), w.r.sha.clone())) {
                answers.push(Some(Ingested::Duplicate));
                continue;
            }
            released.insert(p);
            fresh.push(w);
            // The id is known once the release row is inserted below.
            answers.push(Some(Ingested::Recorded(ReleaseId(0))));
        }

        for part in parts(&links) {
            let sql = format!(
                "INSERT INTO pushes (repository, branch, before, after, forced, received_at) \
                 VALUES {} ON CONFLICT DO NOTHING",
                rows(b, part.len(), 6)
            );
            let mut q = sqlx::query(&sql);
            for (push, now) in part {
                q = q
                    .bind(push.repository.to_ascii_lowercase())
                    .bind(&push.branch)
                    .bind(&push.before)
                    .bind(&push.after)
                    .bind(i64::from(push.forced))
                    .bind(ms(*now));
            }
            q.execute(&mut *tx).await?;
        }
        for part in parts(&deliveries) {
            let sql = format!(
                "INSERT INTO deliveries (source, id, received_at) VALUES {}",
                rows(b, part.len(), 3)
            );
            let mut q = sqlx::query(&sql);
            for w in part {
                q = q.bind(&w.d.source).bind(&w.d.id).bind(ms(w.now));
            }
            q.execute(&mut *tx).await?;
        }
        let mut ids: HashMap<(String, String), i64> = HashMap::new();
        if !fresh.is_empty() {
            for part in parts(&fresh) {
                let sql = format!(
                    "INSERT INTO releases (pipeline, sha, branch, author_name, author_email, author_login, message, url, created_at, alarm_override, window_override, contributors) \
                     VALUES {} RETURNING id, pipeline, sha",
                    rows(b, part.len(), 12)
                );
                let mut q = sqlx::query(&sql);
                for w in part {
                    let r = &w.r;
                    let named = match pushed.get(&r.sha) {
                        Some(json) => contributors_of(json)?,
                        None => Vec::new(),
                    };
                    let people = release_people(r, named);
                    q = q
                        .bind(&r.pipeline)
                        .bind(&r.sha)
                        .bind(&r.branch)
                        .bind(&r.author_name)
                        .bind(&r.author_email)
                        .bind(&r.author_login)
                        .bind(&r.message)
                        .bind(&r.url)
                        .bind(ms(w.now))
                        .bind(&r.alarm_override)
                        .bind(&r.window_override)
                        .bind(contributors_json(&people));
                }
                for row in q.fetch_all(&mut *tx).await? {
                    ids.insert((row.get(1), row.get(2)), row.get(0));
                }
            }
            let id_of = |w: &ReleaseWrite| -> Result<i64> {
                ids.get(&(w.r.pipeline.clone(), w.r.sha.clone()))
                    .copied()
                    .ok_or_else(|| StoreError::Corrupt {
                        table: "releases",
                        detail: format!("no id returned for {} {}", w.r.pipeline, w.r.sha),
                    })
            };
            let reason = reason_json(&Reason::PreviousStage);
            let mut runs: Vec<(i64, &StageName, i64)> = Vec::new();
            for w in &fresh {
                let id = id_of(w)?;
                runs.extend(w.stages.iter().map(|stage| (id, stage, ms(w.now))));
            }
            for part in parts(&runs) {
                let sql = format!(
                    "INSERT INTO stage_runs (release_id, stage, status, reason, attempt, since) VALUES {}",
                    rows_with(b, part.len(), &["$", "$", "'waiting'", "$", "1", "$"])
                );
                let mut q = sqlx::query(&sql);
                for (id, stage, since) in part {
                    q = q.bind(*id).bind(*stage).bind(&reason).bind(*since);
                }
                q.execute(&mut *tx).await?;
            }
            for part in parts(&fresh) {
                let sql = format!(
                    "INSERT INTO events (pipeline, at, actor, kind, release_id, stage, detail) VALUES {}",
                    rows_with(
                        b,
                        part.len(),
                        &["$", "$", "$", "'release'", "$", "NULL", "$"]
                    )
                );
                let mut q = sqlx::query(&sql);
                for w in part {
                    let id = id_of(w)?;
                    let detail = format!(
                        "release r{id}: {} by {} — {}",
                        crate::domain::short_sha(&w.r.sha),
                        w.r.author_name,
                        first_line(&w.r.message)
                    );
                    q = q
                        .bind(&w.r.pipeline)
                        .bind(ms(w.now))
                        .bind(actor_of(&w.d))
                        .bind(Some(id))
                        .bind(detail);
                }
                q.execute(&mut *tx).await?;
            }
            for (w, answer) in ws.iter().zip(answers.iter_mut()) {
                if let Some(Ingested::Recorded(id)) = answer {
                    *id = ReleaseId(id_of(w)?);
                }
            }
        }
        tx.commit().await?;
        for (w, answer) in ws.iter().zip(&answers) {
            self.intake.recorded(w, answer.as_ref());
        }
        Ok(answers)
    }

    /// One write in a unit of its own (the path a failed batch falls back to).
    async fn record_release_alone(&self, w: &ReleaseWrite) -> Answer {
        let answer = self
            .record_release_unit(&w.r, &w.stages, &w.d, w.now, w.newest, w.push.as_ref())
            .await;
        if let Ok(done) = &answer {
            self.intake.recorded(w, done.as_ref());
        }
        answer
    }
}

/// Each `(key, value)` row of a query around an `IN` list (`head` … `tail`) whose list is
/// `keys`, asked [`ROWS`] keys at a time.
async fn keyed<V>(
    c: &mut sqlx::AnyConnection,
    b: Backend,
    (head, tail): (&str, &str),
    keys: &[&str],
) -> Result<HashMap<String, V>>
where
    V: for<'r> sqlx::Decode<'r, sqlx::Any> + sqlx::Type<sqlx::Any>,
{
    let mut found = HashMap::new();
    for part in parts(keys) {
        let sql = format!("{head}{}{tail}", params(b, 1, part.len()));
        let mut q = sqlx::query(&sql);
        for k in part {
            q = q.bind(*k);
        }
        for row in q.fetch_all(&mut *c).await? {
            found.insert(row.get(0), row.get(1));
        }
    }
    Ok(found)
}

/// The distinct values of `it`, in first-seen order.
fn distinct<'a>(it: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let mut seen = HashSet::new();
    it.filter(|v| seen.insert(*v)).collect()
}

/// `items` in the parts one statement takes: [`ROWS`] at a time, then what is left in parts
/// of a power of two (at most five more), so that a statement has one of a few shapes whatever
/// the batch's size and each is prepared once (a statement of every length from 1 to [`ROWS`]
/// would not stay in the connection's cache of 100 prepared statements).
fn parts<T>(items: &[T]) -> Vec<&[T]> {
    let mut out = Vec::new();
    let mut rest = items;
    while !rest.is_empty() {
        let n = if rest.len() >= ROWS {
            ROWS
        } else {
            1 << rest.len().ilog2()
        };
        let (part, more) = rest.split_at(n);
        out.push(part);
        rest = more;
    }
    out
}

/// The placeholder of parameter `n` (from 1). SQLite's is an anonymous `?`: SQLite looks a
/// numbered `$N` up by a linear scan of the statement's parameter list, when it parses the
/// statement and again when sqlx binds each parameter by name, so a statement with numbered
/// parameters costs the square of their count; anonymous ones are numbered in order and never
/// looked up. PostgreSQL's are numbered.
fn placeholder(b: Backend, n: usize) -> String {
    match b {
        Backend::Sqlite => "?".to_string(),
        Backend::Postgres => format!("${n}"),
    }
}

/// The placeholders of parameters `from`, `from + 1`, … (`n` of them), comma-separated.
fn params(b: Backend, from: usize, n: usize) -> String {
    (from..from + n)
        .map(|i| placeholder(b, i))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `(…), (…)`: `n` rows of `cols` placeholders, numbered from 1.
fn rows(b: Backend, n: usize, cols: usize) -> String {
    rows_with(b, n, &vec!["$"; cols])
}

/// `n` rows of `shape`, where each `"$"` is the next placeholder and anything else is written
/// as it is (a constant of every row).
fn rows_with(b: Backend, n: usize, shape: &[&str]) -> String {
    let mut next = 0;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let row: Vec<String> = shape
            .iter()
            .map(|c| {
                if *c == "$" {
                    next += 1;
                    placeholder(b, next)
                } else {
                    (*c).to_string()
                }
            })
            .collect();
        out.push(format!("({})", row.join(", ")));
    }
    out.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Contributor, ContributorRole};
    use chrono::TimeZone;

    const STAGES: [&str; 3] = ["beta", "gamma", "prod"];

    fn at(s: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_790_000_000 + s, 0).unwrap()
    }

    fn sha(n: u32) -> String {
        format!("{n:040x}")
    }

    fn write(
        pipeline: &str,
        n: u32,
        delivery: &str,
        newest: Option<Option<i64>>,
        push: Option<(u32, u32)>,
    ) -> ReleaseWrite {
        ReleaseWrite {
            r: NewRelease {
                pipeline: pipeline.into(),
                sha: sha(n),
                branch: "main".into(),
                author_name: "Carol".into(),
                author_email: "carol@example.com".into(),
                author_login: Some("carol".into()),
                message: format!("change {n}\n\nbody"),
                url: Some(format!("https://github.com/acme/{pipeline}/commit/{n}")),
                ..NewRelease::default()
            },
            stages: STAGES.map(StageName::from).to_vec(),
            d: Delivery {
                source: "github".into(),
                id: delivery.into(),
            },
            now: at(i64::from(n)),
            newest: newest.map(|o| o.map(ReleaseId)),
            push: push.map(|(before, after)| PushLink {
                repository: format!("Acme/{pipeline}"),
                branch: "main".into(),
                before: sha(before),
                after: sha(after),
                forced: false,
            }),
        }
    }

    /// What a store holds after intake, row by row, as text.
    async fn dump(store: &Store) -> Vec<String> {
        let tables = [
            "SELECT 'release ' || CAST(id AS TEXT) || ' ' || pipeline || ' ' || sha || ' ' || branch || ' ' || author_name || ' ' || author_email || ' ' || COALESCE(author_login, '-') || ' ' || message || ' ' || COALESCE(url, '-') || ' ' || CAST(created_at AS TEXT) || ' ' || contributors FROM releases ORDER BY id",
            "SELECT 'run ' || CAST(release_id AS TEXT) || ' ' || stage || ' ' || status || ' ' || COALESCE(reason, '-') || ' ' || CAST(attempt AS TEXT) || ' ' || CAST(since AS TEXT) FROM stage_runs ORDER BY release_id, stage",
            "SELECT 'delivery ' || source || ' ' || id || ' ' || CAST(received_at AS TEXT) FROM deliveries ORDER BY source, id",
            "SELECT 'push ' || repository || ' ' || branch || ' ' || before || ' ' || after || ' ' || CAST(forced AS TEXT) || ' ' || CAST(received_at AS TEXT) FROM pushes ORDER BY repository, branch, after",
            "SELECT 'event ' || CAST(id AS TEXT) || ' ' || pipeline || ' ' || CAST(at AS TEXT) || ' ' || actor || ' ' || kind || ' ' || COALESCE(CAST(release_id AS TEXT), '-') || ' ' || COALESCE(stage, '-') || ' ' || detail FROM events ORDER BY id",
        ];
        let mut out = Vec::new();
        for sql in tables {
            for row in sqlx::query(sql).fetch_all(&store.pool).await.unwrap() {
                out.push(row.get::<String, _>(0));
            }
        }
        out
    }

    /// A store with what the batch below meets: a release of `svc-c` (id 1), a delivery seen
    /// before, and the people a push of commit 40 named.
    async fn seeded(dir: &tempfile::TempDir) -> Store {
        let store = Store::open(&tollgate_testkit::state::url(dir.path()))
            .await
            .unwrap();
        let first = store
            .record_release_unit(
                &write("svc-c", 1, "seed", None, None).r,
                &[],
                &Delivery {
                    source: "github".into(),
                    id: "seed".into(),
                },
                at(0),
                None,
                None,
            )
            .await
            .unwrap();
        assert_eq!(first, Some(Ingested::Recorded(ReleaseId(1))));
        let pusher = Contributor::new(ContributorRole::Pusher, Some("dave"), None).unwrap();
        store
            .record_push_contributors(&sha(40), &[pusher], at(0))
            .await
            .unwrap();
        store
    }

    /// Every case of the one-at-a-time path in one batch: each write gets the answer, and the
    /// database the rows, that recording them one after the other gives.
    #[tokio::test]
    async fn a_batch_answers_and_writes_what_writing_each_in_turn_does() {
        let ws = vec![
            // Recorded, with its push link.
            write("svc-a", 10, "d-10", Some(None), Some((9, 10))),
            // The pipeline's newest changed earlier in the batch: refused, link not kept.
            write("svc-a", 11, "d-11", Some(None), Some((10, 11))),
            // A commit recorded earlier in the batch: a duplicate, its delivery consumed and
            // its push link kept.
            write("svc-a", 10, "d-12", None, Some((10, 12))),
            // A delivery recorded earlier in the batch: a duplicate.
            write("svc-b", 20, "d-10", None, None),
            // A delivery recorded before the batch: a duplicate.
            write("svc-b", 21, "seed", None, None),
            // Checked against the newest release already stored: recorded.
            write("svc-c", 30, "d-30", Some(Some(1)), None),
            // Checked against a stale newest release: refused.
            write("svc-c", 31, "d-31", Some(Some(99)), None),
            // A commit whose push named people: they are the release's contributors too.
            write("svc-d", 40, "d-40", Some(None), None),
            // No stages at all: a release without runs.
            ReleaseWrite {
                stages: Vec::new(),
                ..write("svc-e", 50, "d-50", None, None)
            },
            // A commit the store already has (svc-c's first): a duplicate.
            write("svc-c", 1, "d-1", None, None),
        ];
        let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (together, in_turn) = (seeded(&one).await, seeded(&two).await);
        let batched = together.record_releases(&ws).await.unwrap();
        let mut each = Vec::new();
        for w in &ws {
            each.push(in_turn.record_release_alone(w).await.unwrap());
        }
        assert_eq!(batched, each);
        use Ingested::{Duplicate, Recorded};
        assert_eq!(
            batched,
            vec![
                Some(Recorded(ReleaseId(2))),
                None,
                Some(Duplicate),
                Some(Duplicate),
                Some(Duplicate),
                Some(Recorded(ReleaseId(3))),
                None,
                Some(Recorded(ReleaseId(4))),
                Some(Recorded(ReleaseId(5))),
                Some(Duplicate),
            ]
        );
        let (rows, expected) = (dump(&together).await, dump(&in_turn).await);
        assert_eq!(rows, expected);
        assert!(
            rows.iter()
                .any(|r| r.starts_with("release 4 svc-d") && r.contains("dave")),
            "{rows:#?}"
        );
        assert_eq!(rows.iter().filter(|r| r.starts_with("run ")).count(), 9);
        assert_eq!(rows.iter().filter(|r| r.starts_with("push ")).count(), 2);
    }

    /// The newest release a controller knows is only a first guess: a release recorded by
    /// another controller makes the write checked against it refuse, and a fresh read knows
    /// the other one's release.
    #[tokio::test]
    async fn a_batch_larger_than_a_statement_is_written_in_parts_as_in_turn() {
        // 100 pipelines' releases (3 runs each, 300 runs) take several statements per table;
        // then duplicates of commits and deliveries from every part, and a stale check.
        let mut ws: Vec<ReleaseWrite> = (0..100)
            .map(|i| {
                let p = format!("svc-{i}");
                write(
                    &p,
                    100 + i,
                    &format!("d-{i}"),
                    Some(None),
                    Some((i, 100 + i)),
                )
            })
            .collect();
        for i in [0, 31, 32, 63, 64, 99] {
            ws.push(write(
                &format!("svc-{i}"),
                100 + i,
                &format!("again-{i}"),
                None,
                None,
            ));
            ws.push(write("svc-x", 500 + i, &format!("d-{i}"), None, None));
        }
        ws.push(write("svc-7", 900, "late", Some(None), None));
        assert!(ws.len() > 3 * ROWS);
        let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (together, in_turn) = (seeded(&one).await, seeded(&two).await);
        let batched = together.record_releases(&ws).await.unwrap();
        let mut each = Vec::new();
        for w in &ws {
            each.push(in_turn.record_release_alone(w).await.unwrap());
        }
        assert_eq!(batched, each);
        let recorded = batched
            .iter()
            .filter(|a| matches!(a, Some(Ingested::Recorded(_))))
            .count();
        assert_eq!(recorded, 100, "{batched:?}");
        assert_eq!(batched.last(), Some(&None), "svc-7 has a newer release now");
        let (rows, expected) = (dump(&together).await, dump(&in_turn).await);
        assert_eq!(rows, expected);
        assert_eq!(rows.iter().filter(|r| r.starts_with("run ")).count(), 300);
    }

    #[tokio::test]
    async fn a_stale_newest_release_is_refused_by_the_write_and_a_fresh_read_corrects_it() {
        let dir = tempfile::tempdir().unwrap();
        let url = tollgate_testkit::state::url(dir.path());
        let (a, b) = (
            Store::open(&url).await.unwrap(),
            Store::open(&url).await.unwrap(),
        );
        let stages = STAGES.map(StageName::from).to_vec();
        let record = |s: &Store, n: u32, newest: Option<Option<ReleaseId>>| {
            let (s, w, stages) = (
                s.clone(),
                write("svc", n, &format!("d-{n}"), None, None),
                stages.clone(),
            );
            async move {
                s.record_release_after(&w.r, &stages, &w.d, w.now, newest, None)
                    .await
                    .unwrap()
            }
        };
        let newest = |id: i64, n: u32| {
            Some(Newest {
                id: ReleaseId(id),
                sha: sha(n),
            })
        };
        assert_eq!(a.newest_of("svc", false).await.unwrap(), None);
        assert_eq!(
            record(&a, 1, Some(None)).await,
            Some(Ingested::Recorded(ReleaseId(1)))
        );
        assert_eq!(a.newest_of("svc", false).await.unwrap(), newest(1, 1));
        // Another controller records release 2: this one still believes release 1 is newest.
        assert_eq!(
            record(&b, 2, None).await,
            Some(Ingested::Recorded(ReleaseId(2)))
        );
        assert_eq!(a.newest_of("svc", false).await.unwrap(), newest(1, 1));
        assert_eq!(
            record(&a, 3, Some(Some(ReleaseId(1)))).await,
            None,
            "refused: stale"
        );
        assert_eq!(a.newest_of("svc", true).await.unwrap(), newest(2, 2));
        assert_eq!(a.newest_of("svc", false).await.unwrap(), newest(2, 2));
        assert_eq!(
            record(&a, 3, Some(Some(ReleaseId(2)))).await,
            Some(Ingested::Recorded(ReleaseId(3)))
        );
        // A read that raced the write cannot set what is known back.
        a.intake.saw(
            "svc",
            &Newest {
                id: ReleaseId(2),
                sha: sha(2),
            },
        );
        assert_eq!(a.newest_of("svc", false).await.unwrap(), newest(3, 3));
    }

    /// A batch the database refuses is written again one write at a time: the write it
    /// refuses fails alone, the others are recorded.
    #[tokio::test]
    async fn a_refused_batch_is_written_one_at_a_time_and_only_the_bad_write_fails() {
        let dir = tempfile::tempdir().unwrap();
        let store = seeded(&dir).await;
        let mut bad = write("svc-b", 20, "d-20", None, Some((19, 20)));
        // The pushes table takes only full commit ids.
        bad.push.as_mut().unwrap().before = "short".into();
        let ws = [
            write("svc-a", 10, "d-10", None, None),
            bad,
            write("svc-c", 30, "d-30", None, None),
        ];
        assert!(
            store.record_releases(&ws).await.is_err(),
            "the batch as a whole is refused"
        );
        let mut answers = Vec::new();
        {
            let mut q = store.intake.queue.lock().unwrap();
            q.flushing = true;
            for w in ws {
                let (tx, rx) = oneshot::channel();
                q.waiting.push((w, tx));
                answers.push(rx);
            }
        }
        store.flush_releases().await;
        let mut outcomes = Vec::new();
        for rx in answers {
            outcomes.push(rx.await.unwrap());
        }
        assert!(matches!(outcomes[0], Ok(Some(Ingested::Recorded(_)))));
        assert!(outcomes[1].is_err(), "{:?}", outcomes[1]);
        assert!(matches!(outcomes[2], Ok(Some(Ingested::Recorded(_)))));
        let rows = dump(&store).await;
        assert!(!rows.iter().any(|r| r.contains(" svc-b ")), "{rows:#?}");
        assert!(!rows.iter().any(|r| r.contains("d-20")), "{rows:#?}");
        assert!(!store.intake.queue.lock().unwrap().flushing);
    }

    #[test]
    fn placeholders_are_numbered_across_rows_and_constants_kept() {
        let pg = Backend::Postgres;
        assert_eq!(params(pg, 3, 2), "$3, $4");
        assert_eq!(rows(pg, 2, 2), "($1, $2), ($3, $4)");
        assert_eq!(
            rows_with(pg, 2, &["$", "'waiting'", "$"]),
            "($1, 'waiting', $2), ($3, 'waiting', $4)"
        );
        // SQLite's are anonymous, bound in the order they appear.
        let lite = Backend::Sqlite;
        assert_eq!(params(lite, 3, 2), "?, ?");
        assert_eq!(
            rows_with(lite, 2, &["$", "'waiting'", "$"]),
            "(?, 'waiting', ?), (?, 'waiting', ?)"
        );
    }

    #[test]
    fn a_batch_is_cut_into_full_statements_and_powers_of_two() {
        let sizes = |n: usize| {
            let items: Vec<usize> = (0..n).collect();
            let cut = parts(&items);
            // Nothing lost, nothing repeated, order kept.
            assert_eq!(cut.concat(), items);
            cut.iter().map(|p| p.len()).collect::<Vec<_>>()
        };
        assert_eq!(sizes(0), Vec::<usize>::new());
        assert_eq!(sizes(1), [1]);
        assert_eq!(sizes(ROWS), [ROWS]);
        assert_eq!(sizes(2 * ROWS + 7), [ROWS, ROWS, 4, 2, 1]);
        assert_eq!(sizes(ROWS - 1).len(), (ROWS - 1).count_ones() as usize);
        // Every part has one of a few lengths, whatever the batch.
        let shapes: HashSet<usize> = (0..=500).flat_map(sizes).collect();
        assert!(shapes.len() <= ROWS.ilog2() as usize + 1, "{shapes:?}");
    }
}

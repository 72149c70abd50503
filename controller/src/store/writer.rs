//! The store's one writer: every write transaction runs on one connection, one at a time,
//! and commits in groups.
//!
//! A write ([`Writer::begin`]) is a *unit*: a savepoint inside a shared SQLite transaction.
//! [`WriteTx::commit`] releases the savepoint, hands the connection to the next unit and waits
//! until the shared transaction is committed. A committer task commits it as soon as no unit is
//! queued before it (the writer's lock is first come, first served), so when 200 webhooks
//! arrive at once they share a few commits — a few WAL fsyncs — instead of paying one each,
//! and our own connections never meet SQLite's busy handler (which sleeps up to 100 ms
//! between retries). A lone write commits at once.
//!
//! # Guarantees
//! - [`WriteTx::commit`] returns `Ok` only after the transaction holding the unit committed
//!   (WAL, `synchronous = FULL`: durable). An error means the unit is not durable.
//! - A unit is atomic and isolated from the others of its group: dropped or failed before its
//!   commit, its statements are rolled back to its savepoint; the other units are unaffected.
//! - Units apply in the order they took the writer; each sees the units before it.
//!
//! - Any doubt about the connection's transaction state poisons the group: a step that changes
//!   it (`BEGIN`, `SAVEPOINT`, `RELEASE`, `ROLLBACK TO`, `COMMIT`) that failed, or whose caller
//!   was cancelled before it finished (sqlx still runs a statement once it was sent), marks the
//!   connection `dirty`; the next holder rolls the whole transaction back and fails every unit
//!   of the group. A unit is never told `Ok` for work that was rolled back, nor committed half.
//!
//! # Caveats
//! - A failed `COMMIT`, or a poisoned group, fails every unit of it (none of them is durable).
//! - A caller that stops waiting in [`WriteTx::commit`] after its unit was released does not
//!   learn the outcome: the unit commits, or fails, with its group.
//! - Reads on other connections see a unit only once its group committed.
//! - Other processes (`tollgate keys`) write through SQLite's own locking, waiting for the group in
//!   progress up to the busy timeout.
//!
//! # Checkpoints (SQLite)
//! With SQLite's default (`wal_autocheckpoint = 1000`), the commit that takes the WAL past
//! 1,000 pages copies it into the database file, and every unit of its group waits about 7–10 ms
//! longer for its answer (the 200-delivery burst of `docs/benchmarks.md`, one round in four or
//! five). Here a checkpointer task does it instead, on one of the pool's read connections,
//! [`CHECKPOINT_DELAY`] after the first commit since its last run, as a passive checkpoint
//! (it waits for no reader or writer). A burst shorter than that delay is answered before it
//! runs; under steady writes it runs about every [`CHECKPOINT_DELAY`], beside the commits,
//! never inside one. The writer's own automatic checkpoint stays as a backstop at
//! [`BACKSTOP_PAGES`], the only case where a commit checkpoints; and the `-wal` file is cut
//! back to [`WAL_LIMIT_BYTES`] whenever SQLite starts it over.

use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use sqlx::{AnyConnection, AnyPool};
use tokio::sync::{Mutex, Notify, OwnedMutexGuard, watch};

use super::{Backend, Result, StoreError};

/// The PostgreSQL advisory lock every controller's writer holds for its group's transaction:
/// writes are serialised across controllers as SQLite serialises them across processes, so a
/// unit's reads and checks see every write committed before it (no lost update between two
/// controllers recording facts at once).
/// The key is "tollgate" in ASCII (0x746f6c6c67617465).
const PG_WRITE_LOCK: &str = "SELECT pg_advisory_xact_lock(8390043843661231205)";

/// The statements opening a group's transaction.
fn begin_sql(backend: Backend) -> &'static [&'static str] {
    match backend {
        // IMMEDIATE: take SQLite's write lock now, so no statement of the group can be
        // refused it later (deferred transactions that read first are refused at once).
        Backend::Sqlite => &["BEGIN IMMEDIATE"],
        Backend::Postgres => &["BEGIN", PG_WRITE_LOCK],
    }
}

/// How long after a commit the checkpointer copies the WAL into the database file: a burst of
/// writes (200 webhooks at once) shorter than this is answered before it runs.
const CHECKPOINT_DELAY: std::time::Duration = std::time::Duration::from_millis(250);

/// The writer connection's own `wal_autocheckpoint`, in pages (about 40 MiB with 4 KiB pages):
/// only if the checkpointer falls that far behind does a commit checkpoint.
const BACKSTOP_PAGES: u32 = 10_000;

/// The writer connection's `journal_size_limit`: the size the `-wal` file is cut back to when
/// SQLite starts it over, after steady writes (a checkpoint beside them rarely copies every
/// frame before the next commit) let it grow.
const WAL_LIMIT_BYTES: u32 = 4 * 1024 * 1024;

/// A group's end: `None` while open, then whether its commit succeeded.
type Outcome = Option<std::result::Result<(), String>>;

struct State {
    conn: AnyConnection,
    /// Where a new connection comes from when this one is lost (a database restart, a
    /// session ended by the server).
    pool: AnyPool,
    /// The open shared transaction, if any.
    group: Option<watch::Sender<Outcome>>,
    /// A unit ended without committing: rolled back before the connection is used again.
    abandoned: bool,
    /// A step that changes the transaction state did not finish (failed, or its caller was
    /// cancelled): the state is unknown, so the group is rolled back before anything else.
    dirty: bool,
    /// The checkpointer runs: a replacement connection gets the backstop too.
    checkpointer: bool,
}

struct Shared {
    state: Arc<Mutex<State>>,
    begin: &'static [&'static str],
    wake: Notify,
    /// A group committed since the checkpointer last ran (SQLite files only).
    committed: Notify,
    closed: AtomicBool,
}

/// Stops the committer when the last [`Writer`] goes.
struct Closer(Arc<Shared>);

impl Drop for Closer {
    fn drop(&mut self) {
        self.0.closed.store(true, Ordering::Release);
        self.0.wake.notify_one();
        self.0.committed.notify_one();
    }
}

#[derive(Clone)]
pub(super) struct Writer {
    shared: Arc<Shared>,
    _closer: Arc<Closer>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Writer")
    }
}

impl Writer {
    /// Takes one connection out of `pool` for writing and starts the committer, and, when
    /// `checkpoint` (a SQLite file, with connections to spare), the checkpointer.
    pub(super) async fn new(pool: &AnyPool, backend: Backend, checkpoint: bool) -> Result<Writer> {
        let mut conn = pool.acquire().await?.detach();
        if checkpoint {
            backstop(&mut conn).await?;
        }
        let shared = Arc::new(Shared {
            state: Arc::new(Mutex::new(State {
                conn,
                pool: pool.clone(),
                group: None,
                abandoned: false,
                dirty: false,
                checkpointer: checkpoint,
            })),
            begin: begin_sql(backend),
            wake: Notify::new(),
            committed: Notify::new(),
            closed: AtomicBool::new(false),
        });
        tokio::spawn(commit_groups(shared.clone()));
        if checkpoint {
            tokio::spawn(checkpoints(shared.clone(), pool.clone()));
        }
        Ok(Writer {
            _closer: Arc::new(Closer(shared.clone())),
            shared,
        })
    }

    /// Starts a unit: waits for the writer, joins (or opens) the shared transaction.
    pub(super) async fn begin(&self) -> Result<WriteTx> {
        let mut state = self.shared.state.clone().lock_owned().await;
        settle(&mut state).await;
        if state.group.is_none() {
            state.dirty = true;
            let mut opened = Ok(());
            for step in self.shared.begin {
                opened = sqlx::query(step).execute(&mut state.conn).await.map(drop);
                if opened.is_err() {
                    break;
                }
            }
            if let Err(e) = opened {
                poison(&mut state, &e.to_string()).await;
                return Err(e.into());
            }
            state.group = Some(watch::channel(None).0);
            state.dirty = false;
        }
        state.dirty = true;
        if let Err(e) = sqlx::query("SAVEPOINT unit").execute(&mut state.conn).await {
            poison(&mut state, &e.to_string()).await;
            return Err(e.into());
        }
        state.dirty = false;
        Ok(WriteTx {
            state: Some(state),
            shared: self.shared.clone(),
        })
    }
}

/// Brings the connection back to a known state before it is used: undoes an abandoned unit,
/// or, when that fails or the state is unknown, rolls the whole group back.
async fn settle(state: &mut State) {
    if state.abandoned && !state.dirty {
        state.dirty = true;
        let undone = async {
            sqlx::query("ROLLBACK TO unit")
                .execute(&mut state.conn)
                .await?;
            sqlx::query("RELEASE unit").execute(&mut state.conn).await
        }
        .await;
        match undone {
            Ok(_) => {
                state.abandoned = false;
                state.dirty = false;
            }
            Err(e) => return poison(state, &format!("undoing an abandoned write: {e}")).await,
        }
    }
    if state.dirty {
        poison(state, "a write was interrupted").await;
    }
}

/// Rolls back whatever transaction the connection has open and fails its group's units. The
/// `ROLLBACK`'s own error is ignored: it fails only when no transaction is open, which is the
/// state wanted.
async fn poison(state: &mut State, why: &str) {
    state.dirty = true;
    let _ = sqlx::query("ROLLBACK").execute(&mut state.conn).await;
    // A connection that no longer answers is replaced: the next write opens a new group on a
    // new connection instead of failing for ever.
    if sqlx::Connection::ping(&mut state.conn).await.is_err() {
        match state.pool.acquire().await {
            Ok(fresh) => {
                state.conn = fresh.detach();
                if state.checkpointer
                    && let Err(e) = backstop(&mut state.conn).await
                {
                    tracing::warn!(error = %e, "the state database's new writer connection may checkpoint in its commits");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "the state database's writer cannot reconnect yet")
            }
        }
    }
    if let Some(group) = state.group.take() {
        group.send_replace(Some(Err(format!("rolled back: {why}"))));
    }
    state.abandoned = false;
    state.dirty = false;
}

/// Commits each group once the units queued before the committer have joined it.
async fn commit_groups(shared: Arc<Shared>) {
    loop {
        shared.wake.notified().await;
        let mut state = shared.state.lock().await;
        settle(&mut state).await;
        if state.group.is_some() {
            state.dirty = true;
            match sqlx::query("COMMIT").execute(&mut state.conn).await {
                Ok(_) => {
                    state.dirty = false;
                    if let Some(group) = state.group.take() {
                        group.send_replace(Some(Ok(())));
                    }
                    shared.committed.notify_one();
                }
                Err(e) => poison(&mut state, &e.to_string()).await,
            }
        }
        drop(state);
        if shared.closed.load(Ordering::Acquire) {
            return;
        }
    }
}

/// Sets the writer connection's automatic checkpoint to the backstop ([`BACKSTOP_PAGES`]) and
/// its `-wal` size limit ([`WAL_LIMIT_BYTES`]).
async fn backstop(conn: &mut AnyConnection) -> Result<()> {
    sqlx::query(&format!("PRAGMA wal_autocheckpoint = {BACKSTOP_PAGES}"))
        .execute(&mut *conn)
        .await?;
    sqlx::query(&format!("PRAGMA journal_size_limit = {WAL_LIMIT_BYTES}"))
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Copies the WAL into the database file, [`CHECKPOINT_DELAY`] after the first commit since
/// the last time, on a connection of `pool` (not the writer's: a commit never waits for it).
/// Passive: frames a reader still needs, or written meanwhile, stay for the next run, which
/// comes [`CHECKPOINT_DELAY`] later even without another commit. A failure is logged and
/// retried after the next commit; the backstop bounds the WAL meanwhile.
async fn checkpoints(shared: Arc<Shared>, pool: AnyPool) {
    loop {
        shared.committed.notified().await;
        if shared.closed.load(Ordering::Acquire) {
            return;
        }
        tokio::time::sleep(CHECKPOINT_DELAY).await;
        if shared.closed.load(Ordering::Acquire) {
            return;
        }
        let done: std::result::Result<(i64, i64, i64), sqlx::Error> =
            sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)")
                .fetch_one(&pool)
                .await;
        match done {
            Ok((busy, log, copied)) => {
                tracing::debug!(busy, log, copied, "state database checkpointed");
                if busy != 0 || copied < log {
                    shared.committed.notify_one();
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "the state database's checkpoint failed; retried after the next write")
            }
        }
    }
}

/// One unit of writing: use it as the connection (`&mut *tx`), then [`WriteTx::commit`].
pub struct WriteTx {
    state: Option<OwnedMutexGuard<State>>,
    shared: Arc<Shared>,
}

impl WriteTx {
    /// Ends the unit and waits until its group is committed.
    pub async fn commit(mut self) -> Result<()> {
        let mut state = self
            .state
            .take()
            .ok_or(StoreError::Commit("unit already ended".into()))?;
        state.dirty = true;
        if let Err(e) = sqlx::query("RELEASE unit").execute(&mut state.conn).await {
            poison(&mut state, &e.to_string()).await;
            return Err(e.into());
        }
        state.dirty = false;
        let mut done = match &state.group {
            Some(group) => group.subscribe(),
            None => return Err(StoreError::Commit("no transaction open".into())),
        };
        drop(state);
        self.shared.wake.notify_one();
        let outcome = done
            .wait_for(Option::is_some)
            .await
            .map_err(|_| StoreError::Commit("the writer stopped".into()))?
            .clone();
        match outcome {
            Some(Ok(())) => Ok(()),
            Some(Err(e)) => Err(StoreError::Commit(e)),
            None => Err(StoreError::Commit("not committed".into())),
        }
    }
}

impl Drop for WriteTx {
    fn drop(&mut self) {
        if let Some(mut state) = self.state.take() {
            state.abandoned = true;
            self.shared.wake.notify_one();
        }
    }
}

impl Deref for WriteTx {
    type Target = AnyConnection;

    fn deref(&self) -> &AnyConnection {
        // Present until `commit` or drop, which consume the unit.
        &self.state.as_ref().expect("an open unit").conn
    }
}

impl DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        &mut self.state.as_mut().expect("an open unit").conn
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use sqlx::any::AnyPoolOptions;

    use super::*;

    async fn pool(dir: &std::path::Path) -> AnyPool {
        sqlx::any::install_default_drivers();
        let url = format!("sqlite://{}?mode=rwc", dir.join("w.db").display());
        let pool = AnyPoolOptions::new()
            .max_connections(3)
            .after_connect(|conn, _| {
                Box::pin(async move {
                    sqlx::Executor::execute(
                        conn,
                        "PRAGMA journal_mode = WAL; PRAGMA busy_timeout = 10000;",
                    )
                    .await?;
                    Ok(())
                })
            })
            .connect(&url)
            .await
            .unwrap();
        sqlx::query("CREATE TABLE t (v INTEGER NOT NULL)")
            .execute(&pool)
            .await
            .unwrap();
        pool
    }

    async fn values(pool: &AnyPool) -> Vec<i64> {
        sqlx::query_scalar("SELECT v FROM t ORDER BY v")
            .fetch_all(pool)
            .await
            .unwrap()
    }

    async fn insert(writer: &Writer, v: i64) -> Result<()> {
        let mut tx = writer.begin().await?;
        sqlx::query("INSERT INTO t (v) VALUES ($1)")
            .bind(v)
            .execute(&mut *tx)
            .await?;
        tx.commit().await
    }

    #[tokio::test]
    async fn a_unit_dropped_before_its_commit_leaves_nothing_and_the_others_commit() {
        let dir = tempfile::tempdir().unwrap();
        let pool = pool(dir.path()).await;
        let writer = Writer::new(&pool, Backend::Sqlite, true).await.unwrap();
        insert(&writer, 1).await.unwrap();
        {
            let mut tx = writer.begin().await.unwrap();
            sqlx::query("INSERT INTO t (v) VALUES (2)")
                .execute(&mut *tx)
                .await
                .unwrap();
            // Dropped: an error path that returned before commit.
        }
        insert(&writer, 3).await.unwrap();
        assert_eq!(values(&pool).await, vec![1, 3]);
    }

    #[tokio::test]
    async fn a_begin_cancelled_while_waiting_for_the_database_does_not_stop_later_writes() {
        let dir = tempfile::tempdir().unwrap();
        let pool = pool(dir.path()).await;
        let writer = Writer::new(&pool, Backend::Sqlite, true).await.unwrap();
        // Another process holds SQLite's write lock (as `tollgate keys create` does while it
        // records a key).
        let mut other = pool.acquire().await.unwrap();
        sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut *other)
            .await
            .unwrap();
        // A request gives up while the writer's BEGIN waits for that lock; sqlx still runs the
        // BEGIN once the lock is free, so the connection opens a transaction nobody owns.
        let gave_up = tokio::time::timeout(Duration::from_millis(200), writer.begin()).await;
        assert!(gave_up.is_err(), "the begin was still waiting");
        sqlx::query("INSERT INTO t (v) VALUES (10)")
            .execute(&mut *other)
            .await
            .unwrap();
        sqlx::query("COMMIT").execute(&mut *other).await.unwrap();
        drop(other);
        insert(&writer, 11).await.unwrap();
        insert(&writer, 12).await.unwrap();
        assert_eq!(values(&pool).await, vec![10, 11, 12]);
    }

    #[tokio::test]
    async fn a_commit_cancelled_while_releasing_never_reports_rolled_back_work_as_durable() {
        let dir = tempfile::tempdir().unwrap();
        let pool = pool(dir.path()).await;
        let writer = Writer::new(&pool, Backend::Sqlite, true).await.unwrap();
        for round in 0..20 {
            let mut tx = writer.begin().await.unwrap();
            sqlx::query("INSERT INTO t (v) VALUES ($1)")
                .bind(round)
                .execute(&mut *tx)
                .await
                .unwrap();
            // Cancelled at whatever point the first poll reached.
            let _ = tokio::time::timeout(Duration::ZERO, tx.commit()).await;
            // Every write after it is told the truth: Ok means it is in the database.
            let later = 1000 + round;
            if insert(&writer, later).await.is_ok() {
                assert!(values(&pool).await.contains(&later), "round {round}");
            }
        }
        insert(&writer, 5000).await.unwrap();
        assert!(values(&pool).await.contains(&5000));
    }

    #[tokio::test]
    async fn the_wal_reaches_the_database_file_through_the_checkpointer_not_a_commit() {
        let dir = tempfile::tempdir().unwrap();
        let pool = pool(dir.path()).await;
        sqlx::query("CREATE TABLE big (v TEXT NOT NULL)")
            .execute(&pool)
            .await
            .unwrap();
        let writer = Writer::new(&pool, Backend::Sqlite, true).await.unwrap();
        let file = dir.path().join("w.db");
        let before = std::fs::metadata(&file).unwrap().len();
        // About 1,200 pages of 4 KiB: past SQLite's default automatic checkpoint (1,000), far
        // below the writer's backstop.
        for unit in 0..12 {
            let mut tx = writer.begin().await.unwrap();
            let pages: i64 = sqlx::query_scalar("PRAGMA wal_autocheckpoint")
                .fetch_one(&mut *tx)
                .await
                .unwrap();
            assert_eq!(
                pages,
                i64::from(BACKSTOP_PAGES),
                "the writer's own checkpoint"
            );
            let limit: i64 = sqlx::query_scalar("PRAGMA journal_size_limit")
                .fetch_one(&mut *tx)
                .await
                .unwrap();
            assert_eq!(limit, i64::from(WAL_LIMIT_BYTES), "the -wal file's limit");
            for row in 0..100 {
                sqlx::query("INSERT INTO big (v) VALUES ($1)")
                    .bind(format!("{unit}-{row}-{}", "x".repeat(4000)))
                    .execute(&mut *tx)
                    .await
                    .unwrap();
            }
            tx.commit().await.unwrap();
        }
        // Only a checkpoint writes to the database file; the writer's commits did not.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let now = std::fs::metadata(&file).unwrap().len();
            if now >= before + 4_000_000 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the database file is {now} bytes ({before} before 4.8 MB were written)"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM big")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(rows, 1200);
    }
}

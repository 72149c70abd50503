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
//! # Caveats
//! - A failed `COMMIT` fails every unit of its group (none of them is durable).
//! - Reads on other connections see a unit only once its group committed.
//! - Other processes (the CLI) write through SQLite's own locking, waiting for the group in
//!   progress up to the busy timeout.

use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use sqlx::{SqliteConnection, SqlitePool};
use tokio::sync::{Mutex, Notify, OwnedMutexGuard, watch};

use super::{Result, StoreError};

/// A group's end: `None` while open, then whether its commit succeeded.
type Outcome = Option<std::result::Result<(), String>>;

struct State {
    conn: SqliteConnection,
    /// The open shared transaction, if any.
    group: Option<watch::Sender<Outcome>>,
    /// A unit ended without committing: rolled back before the connection is used again.
    abandoned: bool,
}

struct Shared {
    state: Arc<Mutex<State>>,
    wake: Notify,
    closed: AtomicBool,
}

/// Stops the committer when the last [`Writer`] goes.
struct Closer(Arc<Shared>);

impl Drop for Closer {
    fn drop(&mut self) {
        self.0.closed.store(true, Ordering::Release);
        self.0.wake.notify_one();
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
    /// Takes one connection out of `pool` for writing and starts the committer.
    pub(super) async fn new(pool: &SqlitePool) -> Result<Writer> {
        let conn = pool.acquire().await?.detach();
        let shared = Arc::new(Shared {
            state: Arc::new(Mutex::new(State {
                conn,
                group: None,
                abandoned: false,
            })),
            wake: Notify::new(),
            closed: AtomicBool::new(false),
        });
        tokio::spawn(commit_groups(shared.clone()));
        Ok(Writer {
            _closer: Arc::new(Closer(shared.clone())),
            shared,
        })
    }

    /// Starts a unit: waits for the writer, joins (or opens) the shared transaction.
    pub(super) async fn begin(&self) -> Result<WriteTx> {
        let mut state = self.shared.state.clone().lock_owned().await;
        undo_abandoned(&mut state).await?;
        if state.group.is_none() {
            sqlx::query("BEGIN IMMEDIATE")
                .execute(&mut state.conn)
                .await?;
            state.group = Some(watch::channel(None).0);
        }
        if let Err(e) = sqlx::query("SAVEPOINT unit").execute(&mut state.conn).await {
            // Nothing of this unit to undo; the group stays for the committer.
            self.shared.wake.notify_one();
            return Err(e.into());
        }
        Ok(WriteTx {
            state: Some(state),
            shared: self.shared.clone(),
        })
    }
}

/// Rolls back a unit that ended without committing.
async fn undo_abandoned(state: &mut State) -> Result<()> {
    if std::mem::take(&mut state.abandoned) {
        sqlx::query("ROLLBACK TO unit")
            .execute(&mut state.conn)
            .await?;
        sqlx::query("RELEASE unit").execute(&mut state.conn).await?;
    }
    Ok(())
}

/// Commits each group once the units queued before the committer have joined it.
async fn commit_groups(shared: Arc<Shared>) {
    loop {
        shared.wake.notified().await;
        let mut state = shared.state.lock().await;
        let undone = undo_abandoned(&mut state).await;
        if let Some(group) = state.group.take() {
            let committed = match undone {
                Ok(()) => sqlx::query("COMMIT")
                    .execute(&mut state.conn)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            if committed.is_err() {
                let _ = sqlx::query("ROLLBACK").execute(&mut state.conn).await;
            }
            group.send_replace(Some(committed));
        }
        drop(state);
        if shared.closed.load(Ordering::Acquire) {
            return;
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
        if let Err(e) = sqlx::query("RELEASE unit").execute(&mut state.conn).await {
            state.abandoned = true;
            self.shared.wake.notify_one();
            return Err(e.into());
        }
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
    type Target = SqliteConnection;

    fn deref(&self) -> &SqliteConnection {
        // Present until `commit` or drop, which consume the unit.
        &self.state.as_ref().expect("an open unit").conn
    }
}

impl DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        &mut self.state.as_mut().expect("an open unit").conn
    }
}

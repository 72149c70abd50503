//! `tollgate state copy`: a stopped controller's whole state, from one database to another
//! (SQLite → PostgreSQL to move up; back, or PostgreSQL → PostgreSQL, just as well).
//!
//! Guarantees: nothing is written unless the source is stopped (SQLite: its serve lock is free,
//! and is held by the copy while it runs; PostgreSQL: no unexpired leader lease) and every
//! table of the destination is empty. Every table of the schema ([`TABLES`]) is copied in one
//! destination transaction, ids included (then [`follow_explicit_ids`]), so the destination
//! reads exactly as the source did. Afterwards each table is read back on both sides and
//! compared by row count and checksum ([`checksum_tables`]).
//!
//! Caveat: each table is read into memory once to be copied and once per side to be checked;
//! retention ([`super::retention`]) keeps the large ones (events, deliveries) bounded.

use std::cmp::Ordering;

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use sqlx::{AnyPool, Row};

use super::lock::{Holder, ServeLock};
use super::{Backend, Reads, Result, Store, StoreError, follow_explicit_ids, redact_url};

/// Every table of the schema, in an order that inserts a row only after the rows it refers to,
/// with the columns that order its rows (its primary key).
pub const TABLES: &[(&str, &[&str])] = &[
    ("releases", &["id"]),
    ("alarm_events", &["id"]),
    ("stage_runs", &["release_id", "stage"]),
    ("pipelines", &["pipeline"]),
    ("stages", &["pipeline", "stage"]),
    ("stage_history", &["id"]),
    ("rollback_requests", &["id"]),
    ("deliveries", &["source", "id"]),
    ("events", &["id"]),
    ("approval_tokens", &["id"]),
    ("effects", &["key"]),
    ("retry_requests", &["id"]),
    ("templates", &["sha256"]),
    ("approvals", &["id"]),
    ("push_contributors", &["sha"]),
    ("applied_config", &["id"]),
    ("pushes", &["repository", "branch", "after"]),
    ("stack_timings", &["id"]),
    ("api_keys", &["name"]),
    ("api_idempotency", &["key_name", "idempotency_key"]),
    ("leader_lease", &["id"]),
    ("leader_config", &["id"]),
    ("pruning", &["id"]),
    ("subscription_policies", &["subscription_arn"]),
];

/// Why a copy did not happen, or did not verify.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// Refused before anything was written.
    #[error("refused: {0}")]
    Refused(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Copied, but the destination does not read back as the source.
    #[error("the copy does not match its source in {0}")]
    Mismatch(String),
}

/// One column as the copy reads and writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Integer,
    Text,
}

/// A value of a row, rendered the same way whichever engine it was read from.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Value {
    Null,
    Integer(i64),
    Text(String),
}

impl Value {
    /// The canonical bytes of the value: a tag, then its content (text with its length, so no
    /// two rows render alike).
    fn render(&self, out: &mut Vec<u8>) {
        match self {
            Value::Null => out.push(b'n'),
            Value::Integer(v) => {
                out.push(b'i');
                out.extend_from_slice(&v.to_be_bytes());
            }
            Value::Text(s) => {
                out.push(b't');
                out.extend_from_slice(&(s.len() as u64).to_be_bytes());
                out.extend_from_slice(s.as_bytes());
            }
        }
    }
}

/// One table's rows on one side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSum {
    pub rows: u64,
    /// SHA-256 (hex) over the rows in primary-key order, each column in name order rendered by
    /// [`Value::render`].
    pub checksum: String,
}

/// One table compared on both sides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableCheck {
    pub table: String,
    pub source: TableSum,
    pub destination: TableSum,
}

impl TableCheck {
    pub fn matches(&self) -> bool {
        self.source == self.destination
    }
}

/// What a copy did: every table compared.
#[derive(Debug, Clone)]
pub struct CopyReport {
    pub tables: Vec<TableCheck>,
}

impl CopyReport {
    pub fn matches(&self) -> bool {
        self.tables.iter().all(TableCheck::matches)
    }

    /// `table rows checksum` per table, with the destination's values where they differ.
    pub fn render(&self) -> String {
        let mut out = format!("{:<20} {:>9}  {}\n", "table", "rows", "checksum (sha256)");
        for t in &self.tables {
            out.push_str(&format!(
                "{:<20} {:>9}  {}\n",
                t.table, t.source.rows, t.source.checksum
            ));
            if !t.matches() {
                out.push_str(&format!(
                    "{:<20} {:>9}  {}  MISMATCH in the destination\n",
                    "", t.destination.rows, t.destination.checksum
                ));
            }
        }
        out
    }
}

/// Copies the state at `from` into the empty state at `to`, then verifies it. `now` judges the
/// source's leader lease.
pub async fn copy_state(
    from: &str,
    to: &str,
    now: DateTime<Utc>,
) -> std::result::Result<CopyReport, CopyError> {
    let (from_backend, to_backend) = (Backend::of_url(from)?, Backend::of_url(to)?);
    if from_backend == to_backend && same_database(from, to) {
        return Err(CopyError::Refused(
            "the source and the destination are the same database".into(),
        ));
    }
    if let Ok(Some(file)) = super::lock::database_file(from)
        && !file.exists()
    {
        return Err(CopyError::Refused(format!(
            "the source {from} does not exist"
        )));
    }
    // SQLite: hold both files' serve locks for the copy (no controller starts meanwhile).
    let _source_lock = serve_lock(from, "source")?;
    let source = Store::open(from).await?;
    if let Some(lease) = source.lease().await?
        && lease.expires_at > now
    {
        return Err(CopyError::Refused(format!(
            "the source {} is held by a running controller ({} leads until {}); stop every \
             controller on it first",
            redact_url(from),
            lease.holder,
            lease.expires_at.to_rfc3339()
        )));
    }
    let _destination_lock = serve_lock(to, "destination")?;
    let destination = Store::open(to).await?;
    let mut tx = destination.write().await?;
    for (table, _) in TABLES {
        let any: Option<i64> = sqlx::query(&format!("SELECT 1 FROM {table} LIMIT 1"))
            .fetch_optional(&mut *tx)
            .await
            .map_err(StoreError::from)?
            .map(|r| r.get(0));
        if any.is_some() {
            return Err(CopyError::Refused(format!(
                "the destination {} is not empty (table {table} has rows); copy only into a \
                 new, empty database",
                redact_url(to)
            )));
        }
    }
    for (table, key) in TABLES {
        let columns = columns(source.pool(), source.backend(), table).await?;
        let rows = read_table(source.pool(), table, &columns, key).await?;
        let list = columns.iter().map(|(c, _)| quote(c)).collect::<Vec<_>>();
        let marks = (1..=columns.len())
            .map(|i| format!("${i}"))
            .collect::<Vec<_>>();
        let insert = format!(
            "INSERT INTO {table} ({}) VALUES ({})",
            list.join(", "),
            marks.join(", ")
        );
        for row in rows {
            let mut q = sqlx::query(&insert);
            for ((_, kind), value) in columns.iter().zip(row) {
                q = match (value, kind) {
                    (Value::Integer(v), _) => q.bind(v),
                    (Value::Text(s), _) => q.bind(s),
                    (Value::Null, Kind::Integer) => q.bind(None::<i64>),
                    (Value::Null, Kind::Text) => q.bind(None::<String>),
                };
            }
            q.execute(&mut *tx).await.map_err(StoreError::from)?;
        }
    }
    follow_explicit_ids(&mut tx, to_backend).await?;
    tx.commit().await?;
    let report = verify(&source, &destination).await?;
    Ok(report)
}

/// Reads every table on both sides and compares them.
pub async fn verify(source: &Reads, destination: &Reads) -> Result<CopyReport> {
    let a = checksum_tables(source).await?;
    let b = checksum_tables(destination).await?;
    let tables = a
        .into_iter()
        .zip(b)
        .map(|((table, source), (_, destination))| TableCheck {
            table,
            source,
            destination,
        })
        .collect();
    Ok(CopyReport { tables })
}

/// Row count and checksum of every table of `state`, computed the same way on either engine.
pub async fn checksum_tables(state: &Reads) -> Result<Vec<(String, TableSum)>> {
    let mut out = Vec::new();
    for (table, key) in TABLES {
        let columns = columns(state.pool(), state.backend(), table).await?;
        let rows = read_table(state.pool(), table, &columns, key).await?;
        let mut hash = Sha256::new();
        let mut buf = Vec::new();
        for row in &rows {
            buf.clear();
            for v in row {
                v.render(&mut buf);
            }
            hash.update((buf.len() as u64).to_be_bytes());
            hash.update(&buf);
        }
        out.push((
            table.to_string(),
            TableSum {
                rows: rows.len() as u64,
                checksum: hex::encode(hash.finalize()),
            },
        ));
    }
    Ok(out)
}

/// The serve lock of a SQLite state, or a refusal naming the controller that holds it.
fn serve_lock(url: &str, side: &str) -> std::result::Result<Option<ServeLock>, CopyError> {
    ServeLock::acquire(url, Holder::this_process())
        .map_err(|e| CopyError::Refused(format!("the {side}: {e}")))
}

/// Do two URLs of one engine name the same database?
fn same_database(a: &str, b: &str) -> bool {
    let path = |u: &str| {
        let u = u.split('?').next().unwrap_or(u).to_string();
        match u.strip_prefix("sqlite://") {
            Some(p) => std::fs::canonicalize(p)
                .map(|p| p.display().to_string())
                .unwrap_or(u),
            None => u,
        }
    };
    path(a) == path(b)
}

fn quote(column: &str) -> String {
    format!("\"{column}\"")
}

/// A table's columns, sorted by name, with how they are read and written. SQLite's implicit
/// `rowid` of `stage_runs` and `effects` (the order their rows were created in) is a column as
/// in PostgreSQL.
async fn columns(pool: &AnyPool, backend: Backend, table: &str) -> Result<Vec<(String, Kind)>> {
    let rows: Vec<(String, String)> = match backend {
        Backend::Sqlite => {
            sqlx::query_as("SELECT name, type FROM pragma_table_info($1)")
                .bind(table)
                .fetch_all(pool)
                .await?
        }
        Backend::Postgres => {
            sqlx::query_as(
                "SELECT column_name::text, data_type::text FROM information_schema.columns \
                 WHERE table_schema = current_schema() AND table_name = $1",
            )
            .bind(table)
            .fetch_all(pool)
            .await?
        }
    };
    if rows.is_empty() {
        return Err(StoreError::Invalid(format!(
            "the state has no table {table}"
        )));
    }
    let mut out = Vec::new();
    for (name, ty) in rows {
        let kind = match ty.to_ascii_lowercase().as_str() {
            "integer" | "bigint" => Kind::Integer,
            "text" => Kind::Text,
            other => {
                return Err(StoreError::Corrupt {
                    table: "schema",
                    detail: format!("{table}.{name} has type {other}, which a copy cannot carry"),
                });
            }
        };
        out.push((name, kind));
    }
    if backend == Backend::Sqlite
        && matches!(table, "stage_runs" | "effects")
        && !out.iter().any(|(n, _)| n == "rowid")
    {
        out.push(("rowid".into(), Kind::Integer));
    }
    out.sort();
    Ok(out)
}

/// Every row of `table`, its columns in `columns`' order, sorted by `key` (compared as values:
/// integers by number, text byte by byte, whatever the engine's collation).
async fn read_table(
    pool: &AnyPool,
    table: &str,
    columns: &[(String, Kind)],
    key: &[&str],
) -> Result<Vec<Vec<Value>>> {
    let list = columns.iter().map(|(c, _)| quote(c)).collect::<Vec<_>>();
    let rows = sqlx::query(&format!("SELECT {} FROM {table}", list.join(", ")))
        .fetch_all(pool)
        .await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let mut values = Vec::with_capacity(columns.len());
        for (i, (name, kind)) in columns.iter().enumerate() {
            let v = match kind {
                Kind::Integer => row
                    .try_get::<Option<i64>, _>(i)
                    .map(|v| v.map(Value::Integer)),
                Kind::Text => row
                    .try_get::<Option<String>, _>(i)
                    .map(|v| v.map(Value::Text)),
            }
            .map_err(|e| StoreError::Corrupt {
                table: "copy",
                detail: format!("{table}.{name}: {e}"),
            })?;
            values.push(v.unwrap_or(Value::Null));
        }
        out.push(values);
    }
    let at: Vec<usize> = key
        .iter()
        .map(|k| columns.iter().position(|(c, _)| c == k))
        .collect::<Option<_>>()
        .ok_or_else(|| StoreError::Invalid(format!("{table} lacks its key {key:?}")))?;
    out.sort_by(|a, b| {
        at.iter()
            .map(|&i| a[i].cmp(&b[i]))
            .find(|o| *o != Ordering::Equal)
            .unwrap_or(Ordering::Equal)
    });
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A table added by a migration but not to [`TABLES`] would be left out of every copy.
    #[tokio::test]
    async fn the_copy_knows_every_table_of_the_schema() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&tollgate_testkit::state::url(dir.path()))
            .await
            .unwrap();
        let sql = match store.backend() {
            Backend::Sqlite => {
                "SELECT name FROM sqlite_master WHERE type = 'table' \
                 AND name NOT LIKE 'sqlite_%' AND name <> '_sqlx_migrations'"
            }
            Backend::Postgres => {
                "SELECT table_name::text FROM information_schema.tables \
                 WHERE table_schema = current_schema() AND table_name <> '_sqlx_migrations'"
            }
        };
        let mut schema: Vec<String> = sqlx::query_scalar(sql)
            .fetch_all(store.pool())
            .await
            .unwrap();
        schema.sort();
        let mut known: Vec<String> = TABLES.iter().map(|(t, _)| t.to_string()).collect();
        known.sort();
        assert_eq!(schema, known);
    }

    /// SQLite's schema after its migrations and PostgreSQL's after its own have the same
    /// tables with the same columns, of the same kinds (needs TOLLGATE_TEST_POSTGRES).
    #[tokio::test]
    async fn both_backends_have_the_same_columns_in_every_table() {
        let Some(server) = tollgate_testkit::state::postgres_server() else {
            eprintln!("skipped: no PostgreSQL server (TOLLGATE_TEST_POSTGRES)");
            return;
        };
        let sqlite = Store::open("sqlite::memory:").await.unwrap();
        let url = tollgate_testkit::state::fresh_postgres_database(&server);
        let postgres = Store::open(&url).await.unwrap();
        for (table, _) in TABLES {
            let a = columns(sqlite.pool(), Backend::Sqlite, table)
                .await
                .unwrap();
            let b = columns(postgres.pool(), Backend::Postgres, table)
                .await
                .unwrap();
            assert_eq!(a, b, "{table}");
        }
    }
}

//! State databases for tests: a SQLite file in the test's directory, or, when
//! `TOLLGATE_TEST_POSTGRES` names a PostgreSQL server (`postgres://USER@HOST:PORT/`, as
//! `scripts/test` starts one), a fresh database of its own on that server. Suites that must
//! hold on both engines take their state URL from here and are run once per engine.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use sqlx::{Connection, Executor};

/// The PostgreSQL server the tests run against, when one is configured.
pub fn postgres_server() -> Option<String> {
    std::env::var("TOLLGATE_TEST_POSTGRES")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .map(|s| if s.ends_with('/') { s } else { format!("{s}/") })
}

/// A state URL for one test: `sqlite://DIR/state.db`, or a new, empty PostgreSQL database.
pub fn url(dir: &Path) -> String {
    match postgres_server() {
        Some(server) => fresh_postgres_database(&server),
        None => format!("sqlite://{}", dir.join("state.db").display()),
    }
}

/// Creates an empty database on `server` and returns its URL. Runs on a thread of its own so
/// it can be called from synchronous and asynchronous tests alike.
pub fn fresh_postgres_database(server: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let name = format!(
        "tollgate_test_{}_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed),
        rand::random::<u32>()
    );
    let admin = format!("{server}postgres");
    let create = format!("CREATE DATABASE {name}");
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        rt.block_on(async {
            let mut conn = sqlx::PgConnection::connect(&admin)
                .await
                .unwrap_or_else(|e| panic!("connecting to {admin}: {e}"));
            conn.execute(create.as_str())
                .await
                .unwrap_or_else(|e| panic!("{create}: {e}"));
            let _ = conn.close().await;
        });
    })
    .join()
    .expect("creating a PostgreSQL database");
    format!("{server}{name}")
}

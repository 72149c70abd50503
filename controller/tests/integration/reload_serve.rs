//! SIGHUP through the real `tollgate serve` binary: the file on disk is read again, a valid one
//! put in force with its warnings noted, an invalid one refused with the configuration in force
//! kept; each outcome is a `config` event by `signal:SIGHUP` in the pipeline's event log.
//!
//! The binary runs as the edge tests launch it (its own SQLite file, AWS at a closed loopback
//! port: nothing here deploys). Each wait is bounded.

use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::edge_serve::Served;

/// The longest a reload may take to be noted before the test fails.
const BOUND: Duration = Duration::from_secs(30);

/// The prod approval's approvers in the engine tests' pipeline.
const APPROVERS: &str = "approvers = [
  { name = \"alice\", email = \"alice@example.com\", github = \"alice\" },
  { name = \"bob\", email = \"bob@example.com\" },
]
";

/// The `config` events of the pipeline so far, oldest first.
async fn config_events(served: &Served) -> Vec<(String, String)> {
    let url = format!("{}?mode=ro", served.state());
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT actor, detail FROM events WHERE pipeline = 'backend' AND kind = 'config' ORDER BY id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    pool.close().await;
    rows
}

/// Sends SIGHUP and waits for the `config` event it writes.
async fn hang_up(served: &Served) -> (String, String) {
    let before = config_events(served).await.len();
    let pid = Pid::from_raw(i32::try_from(served.pid()).unwrap());
    kill(pid, Signal::SIGHUP).unwrap();
    let start = Instant::now();
    loop {
        let events = config_events(served).await;
        if events.len() > before {
            return events[before].clone();
        }
        assert!(
            start.elapsed() < BOUND,
            "no config event after SIGHUP:\n{}",
            served.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn reload_serve_sighup_applies_a_valid_file_with_its_warnings_and_refuses_an_invalid_one() {
    let served = Served::start("");
    let path = served.dir.path().join("stages.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(APPROVERS));

    // Valid, with one warning: prod's approval names no approvers.
    std::fs::write(&path, text.replace(APPROVERS, "")).unwrap();
    let (actor, detail) = hang_up(&served).await;
    assert_eq!(actor, "signal:SIGHUP");
    let applied = format!(
        "configuration reloaded from {} (SIGHUP), with 1 warning:\nwarning: {}:",
        path.display(),
        path.display()
    );
    assert!(detail.starts_with(&applied), "{detail}");
    assert!(
        detail.contains("the approval lists no approvers"),
        "{detail}"
    );

    // Invalid: refused, naming the file, and the configuration in force stays.
    std::fs::write(&path, "[[pipelines]]\nname = 1\n").unwrap();
    let (actor, detail) = hang_up(&served).await;
    assert_eq!(actor, "signal:SIGHUP");
    assert!(
        detail.starts_with(&format!("configuration from {} refused:", path.display())),
        "{detail}"
    );
    let health = reqwest::get(served.url("/readyz")).await.unwrap();
    assert!(health.status().is_success(), "{}", served.log());
}

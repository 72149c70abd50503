//! Reopening a run ([`Action::ReopenRun`]) writes only over a run the removal of its stage
//! ended: any other is refused and left as it was, with nothing logged. On SQLite, or on
//! PostgreSQL when `TOLLGATE_TEST_POSTGRES` names a server.

use chrono::{TimeZone, Utc};
use sqlx::Row;

use super::{Store, StoreError, rows::reason_json};
use crate::domain::*;

async fn store(dir: &tempfile::TempDir) -> Store {
    let url = tollgate_testkit::state::url(dir.path());
    Store::open(&url).await.unwrap()
}

/// Release 1 of `shop`, with its run in `gamma` as given.
async fn run_in_gamma(store: &Store, status: RunStatus, reason: &Reason) {
    sqlx::query("INSERT INTO releases (id, pipeline, sha, branch, author_name, author_email, message, created_at) VALUES (1, 'shop', 'abc1', 'main', 'A', 'a@x', 'm', 0)")
        .execute(store.pool())
        .await
        .unwrap();
    sqlx::query("INSERT INTO stage_runs (release_id, stage, status, reason, attempt, since) VALUES (1, 'gamma', $1, $2, 1, 0)")
        .bind(status.as_str())
        .bind(reason_json(reason))
        .execute(store.pool())
        .await
        .unwrap();
}

/// The run's status, reason and attempt, as stored.
async fn gamma(store: &Store) -> (String, String, i64) {
    let r = sqlx::query(
        "SELECT status, reason, attempt FROM stage_runs WHERE release_id = 1 AND stage = 'gamma'",
    )
    .fetch_one(store.pool())
    .await
    .unwrap();
    (r.get("status"), r.get("reason"), r.get("attempt"))
}

async fn reopen(store: &Store) -> super::Result<()> {
    let reopen = Action::ReopenRun {
        release: ReleaseId(1),
        stage: "gamma".into(),
    };
    let now = Utc.with_ymd_and_hms(2026, 11, 23, 10, 0, 0).unwrap();
    store.apply("shop", &[reopen], now).await
}

async fn reopened_events(store: &Store) -> usize {
    let events = store.reads().events("shop", 100).await.unwrap();
    events.iter().filter(|e| e.kind == "run-reopened").count()
}

#[tokio::test]
async fn a_run_its_stages_removal_ended_waits_again_under_its_next_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir).await;
    run_in_gamma(&store, RunStatus::Superseded, &Reason::StageRemoved).await;
    reopen(&store).await.unwrap();
    let waiting = ("waiting".into(), reason_json(&Reason::PreviousStage), 2);
    assert_eq!(gamma(&store).await, waiting);
    assert_eq!(reopened_events(&store).await, 1);
}

/// Superseded by a newer release, superseded in another stage, failed, rolled back: none of
/// them was ended by the stage's removal, so none is reopened.
#[tokio::test]
async fn a_run_ended_otherwise_is_refused_and_left_as_it_was() {
    let ended = [
        (
            RunStatus::Superseded,
            Reason::SupersededBy {
                release: ReleaseId(2),
            },
        ),
        (
            RunStatus::Superseded,
            Reason::SupersededIn {
                stage: "beta".into(),
            },
        ),
        (RunStatus::Failed, Reason::StageRemoved),
        (
            RunStatus::RolledBack,
            Reason::Recorded {
                text: "rolled back".into(),
            },
        ),
    ];
    for (status, reason) in ended {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir).await;
        run_in_gamma(&store, status, &reason).await;
        let before = gamma(&store).await;
        let err = reopen(&store).await.unwrap_err();
        assert!(
            matches!(&err, StoreError::Invalid(why) if why.starts_with("cannot reopen r1 in gamma: only a run the removal of its stage ended waits again")),
            "{status:?} {reason:?}: {err}"
        );
        assert_eq!(gamma(&store).await, before, "{status:?} {reason:?}");
        assert_eq!(reopened_events(&store).await, 0, "{status:?} {reason:?}");
    }
}

#[tokio::test]
async fn a_run_that_is_not_there_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir).await;
    let err = reopen(&store).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::Invalid(why) if why == "cannot reopen r1 in gamma: it has no run there"),
        "{err}"
    );
    assert_eq!(reopened_events(&store).await, 0);
}

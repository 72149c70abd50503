//! `tollgate state copy`: a promoted pipeline's state, kept in SQLite, copied into an empty
//! database (PostgreSQL when `TOLLGATE_TEST_POSTGRES` names a server, SQLite otherwise) reads
//! the same, and copies back into SQLite; a destination with rows or a running source is
//! refused; a tampered row is reported by the verification.
//!
//! The main test's source is SQLite whatever the engine under test: moving up from the
//! embedded default is the direction operators take. The other tests' source and destination
//! are the engine under test (PostgreSQL to PostgreSQL when one is configured), except where
//! a test names its engine (the serve lock guards SQLite; the lease guards PostgreSQL).

use chrono::{Duration, Utc};
use tollgate::domain::{Decision, ReleaseId, RunStatus};
use tollgate::engine::Ingested;
use tollgate::store::copy::{checksum_tables, copy_state, verify};
use tollgate::store::keys::{NewKey, Role};
use tollgate::store::lock::{Holder, ServeLock};
use tollgate::store::{Reads, Store};

use crate::engine_support::*;

/// `h`'s state (at `h.db_url()`) after a release went beta → gamma → approval → prod, with
/// API keys, a pause and an approval link: returns the promoted release.
async fn promoted(h: &Harness) -> ReleaseId {
    let engine = h.engine(None).await;
    let Ingested::Recorded(id) = engine
        .record_release(&release(1), &delivery("push-1"))
        .await
        .unwrap()
    else {
        panic!("release not recorded");
    };
    settle(&engine).await.unwrap();
    assert_eq!(
        status(&engine, id, "prod").await,
        RunStatus::AwaitingApproval
    );
    engine
        .record_approval(&approval(id, "alice", Decision::Approve), &delivery("a1"))
        .await
        .unwrap();
    settle(&engine).await.unwrap();
    h.clock.advance(Duration::minutes(11));
    settle(&engine).await.unwrap();
    assert_eq!(status(&engine, id, "prod").await, RunStatus::Succeeded);
    let store = Store::open(&h.db_url()).await.unwrap();
    for (name, role, approver) in [
        ("ci", Role::Operator, None),
        ("alice-key", Role::Approver, Some("alice".to_string())),
    ] {
        let key = NewKey {
            name: name.into(),
            role,
            approver,
            expires_at: None,
        };
        store.create_api_key(&key, Utc::now()).await.unwrap();
    }
    let token = tollgate::store::approvals::NewToken {
        request_key: "backend/r1/prod/a1/approval-request".into(),
        pipeline: "backend".into(),
        release: id,
        stage: "prod".into(),
        attempt: 1,
        approver: Some("bob".into()),
        recipient: None,
        expires_at: Utc::now() + Duration::hours(4),
    };
    store
        .issue_approval_token(&token, Utc::now())
        .await
        .unwrap();
    store
        .set_paused("backend", Some("gamma"), Some("freeze"), "ops", Utc::now())
        .await
        .unwrap();
    id
}

/// What a person reads of a state: releases and runs, the event log, approvals, keys.
async fn reads_of(r: &Reads, id: ReleaseId) -> String {
    let runs = r.recent_runs("backend", 10).await.unwrap();
    let events = r.events("backend", 1000).await.unwrap();
    let approvals = r.approvals_of(id, "prod").await.unwrap();
    let keys = r.api_keys().await.unwrap();
    let effects = r.effects_with_prefix("backend/").await.unwrap();
    let paused = r.paused("backend", "gamma").await.unwrap();
    format!("{runs:?}\n{events:?}\n{approvals:?}\n{keys:?}\n{effects:?}\n{paused:?}")
}

fn destination(dir: &tempfile::TempDir) -> String {
    if tollgate_testkit::state::postgres_server().is_none() {
        eprintln!("note: TOLLGATE_TEST_POSTGRES is unset: copying SQLite to SQLite only");
    }
    tollgate_testkit::state::url(dir.path())
}

/// SQLite → PostgreSQL (SQLite → SQLite without a server), then back into SQLite.
#[tokio::test]
async fn a_promoted_state_copies_into_an_empty_database_and_reads_the_same() {
    // The source is SQLite always; the destination is the engine under test.
    let h = Harness::sqlite_at(start_time());
    assert!(h.db_url().starts_with("sqlite://"), "{}", h.db_url());
    let id = promoted(&h).await;
    let to_dir = tempfile::tempdir().unwrap();
    let to = destination(&to_dir);
    if tollgate_testkit::state::postgres_server().is_some() {
        assert!(to.starts_with("postgres://"), "{to}");
    }

    let report = copy_state(&h.db_url(), &to, Utc::now()).await.unwrap();
    assert!(report.matches(), "{}", report.render());
    let rows = |t: &str| {
        report
            .tables
            .iter()
            .find(|c| c.table == t)
            .map(|c| c.source.rows)
            .unwrap()
    };
    assert_eq!(rows("releases"), 1);
    assert_eq!(rows("stage_runs"), 3);
    assert_eq!(rows("api_keys"), 2);
    assert_eq!(rows("approval_tokens"), 1);
    assert_eq!(rows("approvals"), 1);
    assert!(rows("effects") > 5 && rows("events") > 5 && rows("deliveries") >= 2);

    let source = Store::open(&h.db_url()).await.unwrap();
    let copy = Store::open(&to).await.unwrap();
    assert_eq!(reads_of(&source, id).await, reads_of(&copy, id).await);

    // The copy goes on where the source stopped: the next release gets the next id.
    let next = copy
        .record_release(
            &release(2),
            &["beta".into(), "gamma".into(), "prod".into()],
            &delivery("push-2"),
            Utc::now(),
        )
        .await
        .unwrap();
    assert_eq!(next, Ingested::Recorded(ReleaseId(id.0 + 1)));

    // And back again, into SQLite: the same tables as the copy now holds.
    let back_dir = tempfile::tempdir().unwrap();
    let back = format!("sqlite://{}", back_dir.path().join("back.db").display());
    let report = copy_state(&to, &back, Utc::now()).await.unwrap();
    assert!(report.matches(), "{}", report.render());
    let back = Store::open(&back).await.unwrap();
    assert_eq!(
        checksum_tables(&copy).await.unwrap(),
        checksum_tables(&back).await.unwrap()
    );
}

#[tokio::test]
async fn a_destination_with_rows_is_refused_and_left_unchanged() {
    let h = Harness::new();
    promoted(&h).await;
    let to_dir = tempfile::tempdir().unwrap();
    let to = destination(&to_dir);
    let other = Store::open(&to).await.unwrap();
    other
        .record_release(&release(7), &["beta".into()], &delivery("p7"), Utc::now())
        .await
        .unwrap();
    let before = checksum_tables(&other).await.unwrap();

    let err = copy_state(&h.db_url(), &to, Utc::now()).await.unwrap_err();
    assert!(err.to_string().contains("not empty"), "{err}");
    assert_eq!(checksum_tables(&other).await.unwrap(), before);

    // Through the command: exit 2, the reason on stderr, nothing on stdout.
    let (code, out, err) = tollgate::cli::state::copy(&h.db_url(), &to).await;
    assert_eq!((code, out.as_str()), (2, ""));
    assert!(
        err.contains("is not empty (table releases has rows)"),
        "{err}"
    );
}

#[tokio::test]
async fn a_source_held_by_a_running_serve_is_refused_before_anything_is_written() {
    // The serve lock guards a SQLite state (a PostgreSQL one is guarded by the lease).
    let h = Harness::sqlite_at(crate::engine_support::start_time());
    promoted(&h).await;
    let held = ServeLock::acquire(&h.db_url(), Holder::this_process())
        .unwrap()
        .unwrap();
    let to_dir = tempfile::tempdir().unwrap();
    let to = format!("sqlite://{}", to_dir.path().join("to.db").display());
    let (code, _, err) = tollgate::cli::state::copy(&h.db_url(), &to).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("another tollgate serve is running"), "{err}");
    assert!(
        !to_dir.path().join("to.db").exists(),
        "the destination was not created"
    );
    drop(held);
    let (code, out, err) = tollgate::cli::state::copy(&h.db_url(), &to).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("releases") && out.contains("events"), "{out}");
}

#[tokio::test]
async fn a_postgresql_source_with_a_live_lease_is_refused() {
    let Some(server) = tollgate_testkit::state::postgres_server() else {
        eprintln!("note: skipped: TOLLGATE_TEST_POSTGRES is unset");
        return;
    };
    let from = tollgate_testkit::state::fresh_postgres_database(&server);
    let source = Store::open(&from).await.unwrap();
    source
        .claim_lease(
            "controller-a",
            std::time::Duration::from_secs(60),
            Utc::now(),
        )
        .await
        .unwrap();
    let to_dir = tempfile::tempdir().unwrap();
    let to = format!("sqlite://{}", to_dir.path().join("to.db").display());
    let err = copy_state(&from, &to, Utc::now()).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("held by a running controller (controller-a"),
        "{err}"
    );
    let created = std::fs::read_dir(to_dir.path()).unwrap().count();
    assert_eq!(created, 0, "no destination file, no lock file");
    // Once the lease ran out (the controller stopped), the copy goes ahead.
    let later = Utc::now() + Duration::minutes(2);
    assert!(copy_state(&from, &to, later).await.unwrap().matches());
}

#[tokio::test]
async fn a_row_changed_in_the_copy_is_reported_by_the_verification() {
    let h = Harness::new();
    promoted(&h).await;
    let to_dir = tempfile::tempdir().unwrap();
    let to = destination(&to_dir);
    assert!(
        copy_state(&h.db_url(), &to, Utc::now())
            .await
            .unwrap()
            .matches()
    );

    let copy = Store::open(&to).await.unwrap();
    sqlx::query("UPDATE releases SET message = 'tampered' WHERE id = 1")
        .execute(copy.pool())
        .await
        .unwrap();
    let source = Store::open(&h.db_url()).await.unwrap();
    let report = verify(&source, &copy).await.unwrap();
    assert!(!report.matches());
    let bad: Vec<&str> = report
        .tables
        .iter()
        .filter(|t| !t.matches())
        .map(|t| t.table.as_str())
        .collect();
    assert_eq!(bad, ["releases"]);
    let release = report
        .tables
        .iter()
        .find(|t| t.table == "releases")
        .unwrap();
    assert_eq!(
        release.source.rows, release.destination.rows,
        "same count, other content"
    );
    assert!(report.render().contains("MISMATCH"), "{}", report.render());
}

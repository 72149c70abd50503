//! `tollgate pause`, `resume` and `rollback` through the real binary, on a real SQLite file.

use std::path::Path;
use std::process::{Command, Output};

use tollgate::store::Store;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/config");

fn tollgate(state: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(args)
        .args([
            "--config",
            &format!("{FIXTURES}/stages.toml"),
            "--state",
            state,
        ])
        .env("TOLLGATE_ACTOR", "dana")
        .output()
        .unwrap()
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn state_url(dir: &Path) -> String {
    format!("sqlite://{}", dir.join("state.db").display())
}

#[tokio::test]
async fn pause_and_resume_are_recorded_with_the_operator() {
    let dir = tempfile::tempdir().unwrap();
    let state = state_url(dir.path());
    let o = tollgate(
        &state,
        &["pause", "svc", "--stage", "prod", "--reason", "incident 42"],
    );
    assert!(o.status.success(), "{:?}", text(&o));
    assert!(
        text(&o).0.contains("stage svc/prod paused"),
        "{:?}",
        text(&o)
    );

    let store = Store::open(&state).await.unwrap();
    let (pipeline, stage) = store.paused("svc", "prod").await.unwrap();
    assert_eq!(pipeline, None);
    assert!(stage.unwrap().contains("incident 42"));
    let (_, beta) = store.paused("svc", "beta").await.unwrap();
    assert_eq!(beta, None, "only the named stage is paused");

    let o = tollgate(&state, &["resume", "svc", "--stage", "prod"]);
    assert!(o.status.success(), "{:?}", text(&o));
    assert_eq!(store.paused("svc", "prod").await.unwrap(), (None, None));
    let events = store.events("svc", 100).await.unwrap();
    assert!(
        events.iter().filter(|e| e.actor == "cli:dana").count() >= 2,
        "{events:?}"
    );
}

#[tokio::test]
async fn a_rollback_request_is_recorded_once_for_what_the_stage_runs() {
    let dir = tempfile::tempdir().unwrap();
    let state = state_url(dir.path());
    let first = tollgate(&state, &["rollback", "svc", "prod"]);
    assert!(first.status.success(), "{:?}", text(&first));
    assert!(text(&first).0.contains("requested"), "{:?}", text(&first));
    let again = tollgate(&state, &["rollback", "svc", "prod"]);
    assert!(again.status.success(), "{:?}", text(&again));
    assert!(
        text(&again).0.contains("already requested"),
        "{:?}",
        text(&again)
    );
    let store = Store::open(&state).await.unwrap();
    let requests = store
        .events("svc", 100)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == "rollback-request")
        .count();
    assert_eq!(requests, 1);
}

#[test]
fn unknown_pipelines_and_stages_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let state = state_url(dir.path());
    let o = tollgate(&state, &["rollback", "svc", "qa"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o)
            .1
            .contains("pipeline `svc` has no stage `qa` (stages: beta, prod)"),
        "{:?}",
        text(&o)
    );
    let o = tollgate(&state, &["pause", "nope", "--reason", "x"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).1.contains("no pipeline `nope`"), "{:?}", text(&o));
    assert!(
        !dir.path().join("state.db").exists(),
        "a refused command does not even create the state database"
    );
}

#[tokio::test]
async fn an_override_is_set_on_the_release_and_logged_with_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let state = state_url(dir.path());
    let store = Store::open(&state).await.unwrap();
    let new = tollgate::engine::NewRelease {
        pipeline: "svc".into(),
        sha: "a".repeat(40),
        branch: "main".into(),
        ..Default::default()
    };
    let delivery = tollgate::engine::Delivery {
        source: "github".into(),
        id: "d1".into(),
    };
    let tollgate::engine::Ingested::Recorded(id) = store
        .record_release(
            &new,
            &["beta".into(), "prod".into()],
            &delivery,
            chrono::Utc::now(),
        )
        .await
        .unwrap()
    else {
        panic!("not recorded")
    };

    let o = tollgate(
        &state,
        &[
            "override",
            "svc",
            "r1",
            "--alarms",
            "--reason",
            "fixes the 5xx alarm",
        ],
    );
    assert!(o.status.success(), "{:?}", text(&o));
    assert!(
        text(&o)
            .0
            .contains("may enter stages whose alarms are in ALARM")
    );
    let r = store.release(id).await.unwrap().unwrap();
    assert_eq!(r.alarm_override.as_deref(), Some("fixes the 5xx alarm"));
    assert_eq!(r.window_override, None, "only the rule named is lifted");
    let logged = store.events("svc", 100).await.unwrap();
    assert!(
        logged.iter().any(|e| e.kind == "override"
            && e.actor == "cli:dana"
            && e.detail.contains("fixes the 5xx alarm")),
        "{logged:?}"
    );

    for (args, says) in [
        (
            vec!["override", "svc", "r7", "--window", "--reason", "x"],
            "has no release r7",
        ),
        (
            vec!["override", "svc", "seven", "--window", "--reason", "x"],
            "is not a release",
        ),
        (
            vec!["override", "svc", "r1", "--window", "--reason", " "],
            "needs a reason",
        ),
    ] {
        let o = tollgate(&state, &args);
        assert_eq!(o.status.code(), Some(1), "refused: {args:?}");
        assert!(text(&o).1.contains(says), "{args:?}: {:?}", text(&o));
    }
    let o = tollgate(&state, &["override", "svc", "r1", "--reason", "x"]);
    assert_eq!(o.status.code(), Some(2), "clap: one of --alarms/--window");
    let r = store.release(id).await.unwrap().unwrap();
    assert_eq!(r.window_override, None, "refused commands change nothing");
}

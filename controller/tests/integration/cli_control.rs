//! `pause`, `resume`, `rollback` and `override` as a controller carries them out for the API
//! (and so for `tollgate pause … --server`): [`tollgate::cli::control::carry_out`] on a real
//! SQLite file. The command line's side (the request, unknown names, the exit codes, what is
//! printed) is tested through the real binary and a running controller in `api_remote`.

use std::path::Path;
use std::sync::Arc;

use tollgate::cli::control::{Control, carry_out};
use tollgate::engine::{Ingest, Override, SystemClock, shared_config};
use tollgate::store::Store;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/config");

/// The actor the API records for a key named `dana`.
const DANA: &str = "api-key:dana";

fn state_url(dir: &Path) -> String {
    format!("sqlite://{}", dir.join("state.db").display())
}

/// Carries `control` out on `state` with the fixture configuration. `Ok` is what the operator
/// is told, `Err` why it is refused.
async fn act(state: &str, control: Control) -> Result<String, String> {
    let config = tollgate::config::load(Path::new(&format!("{FIXTURES}/stages.toml")))
        .unwrap()
        .config;
    let store = Store::open(state).await.unwrap();
    let ingest = Ingest::new(store, shared_config(config), Arc::new(SystemClock));
    carry_out(&ingest, &control, DANA, "api").await.unwrap()
}

#[tokio::test]
async fn pause_and_resume_are_recorded_with_the_operator() {
    let dir = tempfile::tempdir().unwrap();
    let state = state_url(dir.path());
    let said = act(
        &state,
        Control::Pause {
            pipeline: "svc".into(),
            stage: Some("prod".into()),
            reason: "incident 42".into(),
        },
    )
    .await
    .unwrap();
    assert!(said.contains("stage svc/prod paused"), "{said}");

    let store = Store::open(&state).await.unwrap();
    let (pipeline, stage) = store.paused("svc", "prod").await.unwrap();
    assert_eq!(pipeline, None);
    assert!(stage.unwrap().contains("incident 42"));
    let (_, beta) = store.paused("svc", "beta").await.unwrap();
    assert_eq!(beta, None, "only the named stage is paused");

    let resume = Control::Resume {
        pipeline: "svc".into(),
        stage: Some("prod".into()),
        reason: Some("incident over".into()),
    };
    act(&state, resume).await.unwrap();
    assert_eq!(store.paused("svc", "prod").await.unwrap(), (None, None));
    let events = store.events("svc", 100).await.unwrap();
    assert!(
        events.iter().filter(|e| e.actor == DANA).count() >= 2,
        "{events:?}"
    );
}

#[tokio::test]
async fn a_rollback_request_is_recorded_once_for_what_the_stage_runs() {
    let dir = tempfile::tempdir().unwrap();
    let state = state_url(dir.path());
    let rollback = || Control::Rollback {
        pipeline: "svc".into(),
        stage: "prod".into(),
    };
    let first = act(&state, rollback()).await.unwrap();
    assert!(first.contains("requested"), "{first}");
    let again = act(&state, rollback()).await.unwrap();
    assert!(again.contains("already requested"), "{again}");
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
    let lift = |release: &str, which: Override, reason: &str| Control::Override {
        pipeline: "svc".into(),
        release: release.into(),
        which,
        reason: reason.into(),
    };

    let said = act(&state, lift("r1", Override::Alarms, "fixes the 5xx alarm"))
        .await
        .unwrap();
    assert!(
        said.contains("may enter stages whose alarms are in ALARM"),
        "{said}"
    );
    let r = store.release(id).await.unwrap().unwrap();
    assert_eq!(r.alarm_override.as_deref(), Some("fixes the 5xx alarm"));
    assert_eq!(r.window_override, None, "only the rule named is lifted");
    let logged = store.events("svc", 100).await.unwrap();
    assert!(
        logged.iter().any(|e| e.kind == "override"
            && e.actor == DANA
            && e.detail.contains("fixes the 5xx alarm")),
        "{logged:?}"
    );

    for (release, reason, says) in [
        ("r7", "x", "has no release r7"),
        ("seven", "x", "is not a release"),
        ("r1", " ", "needs a reason"),
    ] {
        let why = act(&state, lift(release, Override::Window, reason))
            .await
            .unwrap_err();
        assert!(why.contains(says), "{release} {reason:?}: {why}");
    }
    let r = store.release(id).await.unwrap().unwrap();
    assert_eq!(r.window_override, None, "refused commands change nothing");
}

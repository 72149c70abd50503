//! End to end on moto, the alarm rules: the same rig as `e2e_moto` (the engine with its real
//! adapters, moto, the CloudWatch stub, the real `POST /webhooks/sns` route), driven through
//! the cases where an alarm's timing decides what happens.
//!
//! - An approval that waits two days while the prod alarm goes into ALARM: the approval does
//!   not start the deploy; prod waits, saying why, and deploys once the alarm is OK again.
//! - An alarm while a stage's post-deploy tests run rolls the stage back (the watch window opens
//!   at the deploy's start, not at the bake's).
//! - A late SNS delivery, after the stage succeeded, of a state change that happened inside its
//!   watch window rolls the stage back and stops the release where it got to.
//! - An old, validly signed alarm replayed today (its `StateChangeTime` outside every watch
//!   window) changes nothing and is logged.
//!
//! Post-deploy tests are held open with a file the test removes: the `command` test waits while
//! the file exists. Bounded in time; loopback only.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tollgate::domain::{AlarmProblem, Reason, ReleaseId, RunStatus};
use tollgate::http::sns::PATH;
use tollgate::http::sns_verify::AlarmState;
use tollgate_testkit::clock::ShiftedClock;
use tollgate_testkit::sns::TestSigner;
use tollgate_testkit::world::{REGION, World, WorldBuilder};

use crate::e2e_moto::{
    Rig, STAGE_TIMEOUT, TEST_TIMEOUT, account_config, run_of, serve_sns, sha, stack_exists,
    wait_run, wait_status,
};

/// A `command` test that passes once `hold` no longer exists.
fn held_while(hold: &Path) -> Vec<String> {
    let script = format!("while [ -e '{}' ]; do sleep 0.05; done", hold.display());
    vec!["sh".into(), "-c".into(), script]
}

/// Posts an SNS body to the route; panics unless it was recorded or answered 200.
async fn post_sns(addr: SocketAddr, body: String) -> serde_json::Value {
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let response = http
        .post(format!("http://{addr}{PATH}"))
        .header("content-type", "text/plain; charset=UTF-8")
        .header("x-amz-sns-message-type", "Notification")
        .body(body)
        .send()
        .await
        .expect("POST /webhooks/sns");
    let status = response.status();
    let answer: serde_json::Value = response.json().await.expect("JSON answer");
    assert_eq!(status, reqwest::StatusCode::OK, "{answer}");
    answer
}

/// The signed notification of `stage`'s alarm going to ALARM at `changed_at`, signed now.
fn alarm_at(
    rig: &Rig,
    signer: &TestSigner,
    stage: &str,
    changed_at: chrono::DateTime<Utc>,
) -> String {
    let s = rig.world.stage(stage).expect("stage");
    signer.alarm_notification_at(
        &s.alarm_topic,
        &s.alarm,
        &s.account_id,
        REGION,
        AlarmState::Alarm,
        changed_at,
    )
}

/// The rig with the SNS route served and its certificates seeded.
async fn rig_with_sns(
    world: WorldBuilder,
) -> (Rig, TestSigner, SocketAddr, tokio::task::JoinHandle<()>) {
    let rig = Rig::start(world).await;
    let signer = TestSigner::new();
    let certs = rig.world.seed_sns_certificates(&signer).expect("certs");
    let (addr, server) = serve_sns(&rig.engine, &certs).await;
    (rig, signer, addr, server)
}

/// Promotes two releases everywhere and returns the second's digest: the last good release a
/// rollback restores. (moto gap, see `e2e_moto`: a rollback to the parameters a stack was
/// created with changes nothing, so the stacks are created by the first release.)
async fn last_good_of_two(rig: &Rig) -> String {
    let (first, _) = rig.release(&sha(1)).await;
    wait_status(&rig.engine, first, "prod", RunStatus::Succeeded).await;
    let (good, digest) = rig.release(&sha(2)).await;
    wait_status(&rig.engine, good, "prod", RunStatus::Succeeded).await;
    digest
}

/// Waits until `id`'s run in `stage` satisfies `done`, through any status on the way.
async fn wait_until(
    rig: &Rig,
    id: ReleaseId,
    stage: &str,
    what: &str,
    done: impl Fn(&tollgate::domain::StageRun) -> bool,
) -> tollgate::domain::StageRun {
    let deadline = std::time::Instant::now() + STAGE_TIMEOUT;
    loop {
        let run = run_of(&rig.engine, id, stage).await;
        if let Some(run) = run.as_ref().filter(|r| done(r)) {
            return run.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{id} in {stage}: not {what} in time; last {run:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `id` in `stage` reaches a terminal status (any), and returns the run.
async fn wait_settled(rig: &Rig, id: ReleaseId, stage: &str) -> tollgate::domain::StageRun {
    wait_until(rig, id, stage, "settled", |r| r.status.is_terminal()).await
}

// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_prod_alarm_during_a_two_day_approval_wait_keeps_the_approved_deploy_from_starting() {
    tokio::time::timeout(TEST_TIMEOUT, two_day_approval())
        .await
        .expect("finished in time");
}

async fn two_day_approval() {
    let world = World::builder()
        .bake_all(Duration::from_millis(200))
        .approval_timeout(Duration::from_secs(3 * 86_400));
    let clock = Arc::new(ShiftedClock::new());
    let rig = Rig::start_clocked(world, clock.clone()).await;
    let prod_alarm = rig.world.stage("prod").unwrap().alarm.clone();

    let (id, digest) = rig.release(&sha(1)).await;
    wait_status(&rig.engine, id, "prod", RunStatus::AwaitingApproval).await;
    // A day passes, the prod alarm fires, another day passes; then the approver approves.
    clock.advance(chrono::Duration::days(1));
    rig.stub.set_alarm(&prod_alarm, "ALARM");
    clock.advance(chrono::Duration::days(1));
    let still = run_of(&rig.engine, id, "prod").await.unwrap();
    assert_eq!(
        still.status,
        RunStatus::AwaitingApproval,
        "{:?}",
        still.reason
    );
    rig.approve(id).await;

    let blocked = |r: &Reason| {
        matches!(r, Reason::AlarmsBlockEntry { problem: AlarmProblem::InAlarm { alarms }, .. }
            if alarms.contains(&prod_alarm))
    };
    let prod = wait_run(&rig.engine, id, "prod", "the alarm gate", |r| {
        blocked(&r.reason)
    })
    .await;
    println!(
        "approved after two days into a live alarm: {} ({})",
        prod.reason.describe(rig.engine.now()),
        prod.status.as_str()
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let prod = run_of(&rig.engine, id, "prod").await.unwrap();
    assert!(blocked(&prod.reason), "{:?}", prod.reason);
    assert_eq!(prod.deploy_started, None, "the deploy has not started");
    let executions = rig.executions().await;
    assert_eq!(executions.get("backend-prod"), None, "{executions:?}");
    let prod_config = account_config(&rig.moto, &rig.world.stage("prod").unwrap().account_id).await;
    assert!(!stack_exists(&prod_config, "backend-prod").await);

    // The alarm clears: the approved release goes in, once (at the gate's next look, a
    // minute later: the clock moves there).
    rig.stub.set_alarm(&prod_alarm, "OK");
    clock.advance(chrono::Duration::seconds(61));
    // The loop sleeps towards the gate's next look on the real clock: moving the test's clock
    // is a change it must be told of.
    rig.engine.wake(rig.world.pipeline());
    wait_status(&rig.engine, id, "prod", RunStatus::Succeeded).await;
    let image = rig.world.image_uri(&digest);
    assert_eq!(rig.deployed("prod").await.as_deref(), Some(image.as_str()));
    assert_eq!(rig.executions().await.get("backend-prod"), Some(&1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_alarm_during_the_post_deploy_tests_rolls_the_stage_back() {
    tokio::time::timeout(TEST_TIMEOUT, alarm_during_tests())
        .await
        .expect("finished in time");
}

async fn alarm_during_tests() {
    let dir = tempfile::tempdir().unwrap();
    let hold = dir.path().join("hold-beta");
    let world = World::builder()
        .bake_all(Duration::from_millis(200))
        .prod_approval(false)
        .after_test("beta", "held", held_while(&hold));
    let (rig, signer, addr, server) = rig_with_sns(world).await;

    let good_digest = last_good_of_two(&rig).await;

    std::fs::write(&hold, "").unwrap();
    let (bad, bad_digest) = rig.release(&sha(3)).await;
    let beta = wait_status(&rig.engine, bad, "beta", RunStatus::Verifying).await;
    let started = beta.deploy_started.expect("the deploy started");
    let bad_image = rig.world.image_uri(&bad_digest);
    assert_eq!(
        rig.deployed("beta").await.as_deref(),
        Some(bad_image.as_str())
    );
    let gamma_before = rig.executions().await.get("backend-gamma").copied();

    // The alarm fires while the post-deploy test still runs.
    let answer = post_sns(addr, alarm_at(&rig, &signer, "beta", Utc::now())).await;
    assert_eq!(answer["result"], "recorded", "{answer}");
    let beta = wait_settled(&rig, bad, "beta").await;
    std::fs::remove_file(&hold).unwrap();
    assert_eq!(beta.status, RunStatus::RolledBack, "{:?}", beta.reason);
    assert!(
        matches!(beta.reason.root(), Reason::AlarmFired { .. }),
        "{:?}",
        beta.reason
    );
    assert!(started <= beta.since, "{started} vs {}", beta.since);
    let good_image = rig.world.image_uri(&good_digest);
    assert_eq!(
        rig.deployed("beta").await.as_deref(),
        Some(good_image.as_str()),
        "beta runs the last good release again"
    );
    let release = rig.engine.reads().release(bad).await.unwrap().unwrap();
    assert_eq!(
        release.bad.map(|b| b.stage.to_string()).as_deref(),
        Some("beta")
    );
    assert_eq!(
        rig.executions().await.get("backend-gamma").copied(),
        gamma_before,
        "the release went no further"
    );
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_late_alarm_delivery_after_the_stage_succeeded_rolls_it_back_and_stops_the_release() {
    tokio::time::timeout(TEST_TIMEOUT, late_delivery())
        .await
        .expect("finished in time");
}

async fn late_delivery() {
    let dir = tempfile::tempdir().unwrap();
    let hold = dir.path().join("hold-gamma");
    let world = World::builder()
        .bake_all(Duration::from_millis(200))
        .prod_approval(false)
        .after_test("gamma", "held", held_while(&hold));
    let (rig, signer, addr, server) = rig_with_sns(world).await;

    let good_digest = last_good_of_two(&rig).await;

    // The third release passes beta and is held in gamma's post-deploy tests.
    std::fs::write(&hold, "").unwrap();
    let (bad, _) = rig.release(&sha(3)).await;
    let beta = wait_status(&rig.engine, bad, "beta", RunStatus::Succeeded).await;
    wait_status(&rig.engine, bad, "gamma", RunStatus::Verifying).await;
    let prod_before = rig.executions().await.get("backend-prod").copied();

    // CloudWatch changed beta's alarm during beta's bake; SNS delivers it only now.
    let started = beta.deploy_started.expect("beta's deploy started");
    assert!(started < beta.since);
    let changed_at = started + (beta.since - started) / 2;
    let answer = post_sns(addr, alarm_at(&rig, &signer, "beta", changed_at)).await;
    assert_eq!(answer["result"], "recorded", "{answer}");

    let beta = wait_until(&rig, bad, "beta", "rolled back", |r| {
        r.status == RunStatus::RolledBack
    })
    .await;
    assert!(
        matches!(beta.reason.root(), Reason::AlarmFired { .. }),
        "{:?}",
        beta.reason
    );
    let good_image = rig.world.image_uri(&good_digest);
    assert_eq!(
        rig.deployed("beta").await.as_deref(),
        Some(good_image.as_str())
    );
    let release = rig.engine.reads().release(bad).await.unwrap().unwrap();
    assert_eq!(
        release.bad.map(|b| b.stage.to_string()).as_deref(),
        Some("beta")
    );

    // The release stops where it got to: released from gamma's tests, it never reaches prod.
    std::fs::remove_file(&hold).unwrap();
    let gamma = wait_settled(&rig, bad, "gamma").await;
    assert_ne!(gamma.status, RunStatus::Succeeded, "{gamma:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let prod = run_of(&rig.engine, bad, "prod").await;
    assert!(
        prod.as_ref().is_none_or(|p| p.deploy_started.is_none()),
        "{prod:?}"
    );
    assert_eq!(
        rig.executions().await.get("backend-prod").copied(),
        prod_before
    );
    println!(
        "late delivery: beta {} ({}); gamma {} ({})",
        beta.status.as_str(),
        beta.reason.describe(rig.engine.now()),
        gamma.status.as_str(),
        gamma.reason.describe(rig.engine.now())
    );
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_old_signed_alarm_replayed_today_changes_nothing() {
    tokio::time::timeout(TEST_TIMEOUT, replayed_alarm())
        .await
        .expect("finished in time");
}

async fn replayed_alarm() {
    let dir = tempfile::tempdir().unwrap();
    let hold = dir.path().join("hold-beta");
    let world = World::builder()
        .bake_all(Duration::from_millis(200))
        .prod_approval(false)
        .after_test("beta", "held", held_while(&hold));
    let (rig, signer, addr, server) = rig_with_sns(world).await;

    std::fs::write(&hold, "").unwrap();
    let (id, digest) = rig.release(&sha(1)).await;
    wait_status(&rig.engine, id, "beta", RunStatus::Verifying).await;
    let events_before = rig.events("alarm").await.len();

    // A validly signed message about a state change of yesterday, replayed now.
    let yesterday = Utc::now() - chrono::Duration::days(1);
    let answer = post_sns(addr, alarm_at(&rig, &signer, "beta", yesterday)).await;
    println!("replayed alarm answered: {answer}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let beta = run_of(&rig.engine, id, "beta").await.unwrap();
    assert_eq!(beta.status, RunStatus::Verifying, "{:?}", beta.reason);

    std::fs::remove_file(&hold).unwrap();
    let beta = wait_settled(&rig, id, "beta").await;
    assert_eq!(beta.status, RunStatus::Succeeded, "{:?}", beta.reason);
    let image = rig.world.image_uri(&digest);
    assert_eq!(rig.deployed("beta").await.as_deref(), Some(image.as_str()));
    assert_eq!(rig.executions().await.get("backend-beta"), Some(&1));
    let release = rig.engine.reads().release(id).await.unwrap().unwrap();
    assert!(release.bad.is_none(), "{:?}", release.bad);
    let ignored = rig.events("alarm-ignored").await;
    println!(
        "the replay in the event log: {:?}",
        ignored.iter().map(|e| &e.detail).collect::<Vec<_>>()
    );
    assert_eq!(
        ignored.len(),
        1,
        "the replayed alarm is logged as changing nothing"
    );
    assert_eq!(
        ignored[0].stage.as_deref(),
        Some("beta"),
        "{:?}",
        ignored[0]
    );
    assert_eq!(
        rig.events("alarm").await.len(),
        events_before,
        "no alarm acted on"
    );
    server.abort();
}

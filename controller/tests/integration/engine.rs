//! The engine end to end with in-memory fakes and a real SQLite file: promotions, gates,
//! rollbacks, superseding, and crash safety.

use crate::engine_support;

use chrono::Duration;
use engine_support::*;
use tollgate::domain::{
    DataGap, Decision, EffectKind, EffectOutput, EffectStatus, Phase, Reason, ReleaseId, RunStatus,
};
use tollgate::engine::Ingested;
use tollgate_testkit::fakes::fake_digest;

async fn promote_fully(h: &Harness, engine: &tollgate::engine::Engine, n: u32) -> ReleaseId {
    let id = recorded(engine, n).await;
    settle(engine).await.unwrap();
    assert_eq!(
        status(engine, id, "prod").await,
        RunStatus::AwaitingApproval
    );
    engine
        .record_approval(
            &approval(id, "alice", Decision::Approve),
            &delivery(&format!("appr-{n}")),
        )
        .await
        .unwrap();
    settle(engine).await.unwrap();
    assert_eq!(status(engine, id, "prod").await, RunStatus::Baking);
    h.clock.advance(Duration::minutes(11));
    settle(engine).await.unwrap();
    assert_eq!(status(engine, id, "prod").await, RunStatus::Succeeded);
    id
}

/// Release 2, recorded after release 1 went all the way, approved by `approver` and baking
/// in prod.
async fn second_baking_in_prod(engine: &tollgate::engine::Engine, approver: &str) -> ReleaseId {
    let Ingested::Recorded(id) = engine
        .record_release(&release(2), &delivery("push-2"))
        .await
        .unwrap()
    else {
        panic!("release 2 not recorded")
    };
    settle(engine).await.unwrap();
    engine
        .record_approval(&approval(id, approver, Decision::Approve), &delivery("a2"))
        .await
        .unwrap();
    settle(engine).await.unwrap();
    assert_eq!(status(engine, id, "prod").await, RunStatus::Baking);
    id
}

#[tokio::test]
async fn a_release_goes_beta_gamma_approval_prod() {
    let h = Harness::new();
    let engine = h.engine(None).await;
    let id = engine
        .record_release(&release(1), &delivery("push-1"))
        .await
        .unwrap();
    let Ingested::Recorded(id) = id else {
        panic!("not recorded")
    };
    settle(&engine).await.unwrap();

    assert_eq!(status(&engine, id, "beta").await, RunStatus::Succeeded);
    assert_eq!(status(&engine, id, "gamma").await, RunStatus::Succeeded);
    let prod = run(&engine, id, "prod").await;
    assert_eq!(prod.status, RunStatus::AwaitingApproval);
    assert!(
        matches!(
            prod.reason,
            Reason::AwaitingApproval {
                approved: 0,
                needed: 1,
                ..
            }
        ),
        "{:?}",
        prod.reason
    );
    let requests = h.fakes.with(|w| w.approval_requests.clone());
    assert_eq!(requests.len(), 1);
    assert!(
        requests[0].summary.contains(&sha(1)),
        "the request names the commit"
    );
    assert!(
        h.fakes
            .with(|w| w.deployed.iter().all(|(stage, _, _)| stage != "prod")),
        "nothing in prod before approval"
    );

    engine
        .record_approval(&approval(id, "alice", Decision::Approve), &delivery("a1"))
        .await
        .unwrap();
    settle(&engine).await.unwrap();
    assert_eq!(status(&engine, id, "prod").await, RunStatus::Baking);
    h.clock.advance(Duration::minutes(11));
    settle(&engine).await.unwrap();
    assert_eq!(status(&engine, id, "prod").await, RunStatus::Succeeded);

    let deployed = h.fakes.with(|w| w.deployed.clone());
    let stages: Vec<&str> = deployed.iter().map(|(s, _, _)| s.as_str()).collect();
    assert_eq!(
        stages,
        ["beta", "gamma", "prod", "prod"],
        "two prod waves, in order"
    );
    let digest = fake_digest(&sha(1));
    assert!(
        deployed.iter().all(|(_, _, uri)| uri.ends_with(&digest)),
        "every deploy uses the digest"
    );
    assert_eq!(deployed[3].1, "prod/us-east-1");
    let reports = h.fakes.with(|w| w.reports.clone());
    let prod_states: Vec<&str> = reports
        .iter()
        .filter(|r| r.environment == "prod")
        .map(|r| r.state.as_str())
        .collect();
    assert_eq!(prod_states, ["queued", "in_progress", "success"]);
}

#[tokio::test]
async fn a_failing_gamma_test_stops_the_release_before_prod() {
    let h = Harness::new();
    let engine = h.engine(None).await;
    let first = promote_fully(&h, &engine, 1).await;
    h.fakes
        .with(|w| w.failing_tests.insert("gamma:smoke".into()));
    let id = recorded(&engine, 2).await;
    settle(&engine).await.unwrap();

    let gamma = run(&engine, id, "gamma").await;
    assert_eq!(gamma.status, RunStatus::RolledBack, "{:?}", gamma.reason);
    assert!(
        matches!(gamma.reason.root(), Reason::TestFailed { test, phase: Phase::After, .. } if test == "smoke"),
        "{:?}",
        gamma.reason
    );
    assert!(
        matches!(gamma.reason.root(), Reason::TestFailed { detail, .. } if detail.contains("GET /healthz returned 503")),
        "the failure shows the test's last output: {:?}",
        gamma.reason
    );
    assert_eq!(status(&engine, id, "prod").await, RunStatus::Failed);
    let prod_deploys = h.fakes.with(|w| {
        w.deployed
            .iter()
            .filter(|(s, _, uri)| s == "prod" && uri.ends_with(&fake_digest(&sha(2))))
            .count()
    });
    assert_eq!(prod_deploys, 0, "the bad release never reached prod");
    let restored = h.fakes.with(|w| w.rolled_back.clone());
    assert_eq!(restored.len(), 1);
    assert!(
        restored[0].2.ends_with(&fake_digest(&sha(1))),
        "gamma restored to {first}"
    );
    let rollbacks: Vec<_> = h.fakes.with(|w| {
        w.published
            .iter()
            .filter(|m| m.subject.contains("ROLLED BACK"))
            .cloned()
            .collect()
    });
    assert_eq!(rollbacks.len(), 1, "one rollback notification");
    let body = &rollbacks[0].body;
    for wanted in [
        "Stage gamma was rolled back",
        "Where: pipeline backend, stage gamma",
        "Why: after test `smoke` failed",
        "What you can do:",
        &format!("{id} is marked bad and is never promoted again automatically; push a fix"),
        "tollgate history backend",
    ] {
        assert!(body.contains(wanted), "missing {wanted:?} in:\n{body}");
    }
    // GitHub hears the same: the stage's deployment ends in failure.
    let gamma: Vec<String> = h.fakes.with(|w| {
        w.reports
            .iter()
            .filter(|r| r.environment == "gamma" && r.release == id)
            .map(|r| r.state.as_str().to_string())
            .collect()
    });
    assert_eq!(
        gamma.last().map(String::as_str),
        Some("failure"),
        "{gamma:?}"
    );
}

#[tokio::test]
async fn an_alarm_during_prod_bake_rolls_prod_back_to_the_previous_release() {
    let h = Harness::new();
    let engine = h.engine(None).await;
    let first = promote_fully(&h, &engine, 1).await;
    let id = second_baking_in_prod(&engine, "bob").await;

    h.clock.advance(Duration::minutes(2));
    engine
        .record_alarm(&alarm("prod", "prod-5xx"), &delivery("sns-1"))
        .await
        .unwrap();
    settle(&engine).await.unwrap();

    let prod = run(&engine, id, "prod").await;
    assert_eq!(prod.status, RunStatus::RolledBack);
    assert!(
        matches!(prod.reason.root(), Reason::AlarmFired { alarm, .. } if alarm == "prod-5xx"),
        "{:?}",
        prod.reason
    );
    assert!(
        prod.rollback_alarm.is_some(),
        "the run records the alarm event"
    );
    let restored = h.fakes.with(|w| w.rolled_back.clone());
    assert_eq!(restored.len(), 2, "both prod waves restored");
    assert!(
        restored
            .iter()
            .all(|(s, _, uri)| s == "prod" && uri.ends_with(&fake_digest(&sha(1))))
    );
    let rel = engine.reads().release(id).await.unwrap().unwrap();
    assert_eq!(rel.bad.map(|b| b.stage), Some("prod".into()));
    // The metric: alarm arrival to the deployer's first rollback call, per wave. The manual
    // clock does not move while the engine works, so the figure is exactly 0 here.
    let latencies: Vec<String> = engine
        .reads()
        .events("backend", 500)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == "rollback-latency")
        .map(|e| e.detail)
        .collect();
    assert_eq!(
        latencies,
        [
            "rollback of prod wave 1 to r1 called the deployer 0 ms after alarm prod-5xx arrived",
            "rollback of prod wave 2 to r1 called the deployer 0 ms after alarm prod-5xx arrived",
        ]
    );
    assert_eq!(
        status(&engine, id, "gamma").await,
        RunStatus::Succeeded,
        "earlier stages untouched"
    );

    // The previous release is prod's known-good again: a third release rolls back to it too.
    let third = recorded(&engine, 3).await;
    settle(&engine).await.unwrap();
    assert_eq!(
        status(&engine, third, "prod").await,
        RunStatus::AwaitingApproval
    );
    let good = engine.reads().last_good("backend", "prod").await.unwrap();
    assert_eq!(
        good.map(|r| r.id),
        Some(first),
        "prod trusts release 1 again"
    );
}

/// Release 2 baking in prod (both waves deployed) when a reload changes prod's second wave to
/// `second` (`None`: drops it), then prod's alarm fires.
async fn alarm_after_prod_reload(
    second: Option<&str>,
) -> (Harness, tollgate::engine::Engine, ReleaseId) {
    let h = Harness::new();
    let engine = h.engine(None).await;
    promote_fully(&h, &engine, 1).await;
    let id = second_baking_in_prod(&engine, "alice").await;

    let waves = r#"targets = [{ account = "prod" }, { account = "prod", region = "us-east-1" }]"#;
    assert!(STAGES.contains(waves));
    let now = match second {
        Some(t) => format!(r#"targets = [{{ account = "prod" }}, {t}]"#),
        None => r#"targets = [{ account = "prod" }]"#.to_string(),
    };
    std::fs::write(
        h.dir.path().join("stages.toml"),
        STAGES.replace(waves, &now),
    )
    .unwrap();
    let reloaded = tollgate::config::load(&h.dir.path().join("stages.toml")).unwrap();
    engine.replace_config(reloaded.config, &engine.hold_starts().await);
    h.clock.advance(Duration::minutes(2));
    engine
        .record_alarm(&alarm("prod", "prod-5xx"), &delivery("sns-1"))
        .await
        .unwrap();
    settle(&engine).await.unwrap();
    (h, engine, id)
}

/// While a release bakes in prod, a configuration without prod (dropped, renamed, or its
/// whole pipeline gone), or one that puts a wave it deployed elsewhere, is refused, naming the
/// run; one that keeps prod where it is is not, nor any of them once the bake is over.
#[tokio::test]
async fn a_configuration_dropping_a_stage_being_changed_is_refused_until_the_run_is_done() {
    let h = Harness::new();
    let engine = h.engine(None).await;
    promote_fully(&h, &engine, 1).await;
    let id = second_baking_in_prod(&engine, "alice").await;

    let load = |text: String| {
        std::fs::write(h.dir.path().join("changed.toml"), text).unwrap();
        tollgate::config::load(&h.dir.path().join("changed.toml"))
            .unwrap()
            .config
    };
    let renamed = load(STAGES.replace(r#"name = "prod""#, r#"name = "production""#));
    let other_pipeline = load(STAGES.replace(r#"name = "backend""#, r#"name = "api""#));
    let kept = load(STAGES.replace(r#"bake = "10m""#, r#"bake = "20m""#));
    let held = format!("backend/prod: {id} baking");
    for config in [&renamed, &other_pipeline] {
        let why = engine.refuse_config(config).await.expect("refused");
        assert!(why.contains(&held), "{why}");
    }
    assert_eq!(engine.refuse_config(&kept).await, None);

    // Where its waves went: moved to another region, a wave inserted before them, or the
    // account given another id.
    let waves = r#"targets = [{ account = "prod" }, { account = "prod", region = "us-east-1" }]"#;
    let moved = load(STAGES.replace(
        waves,
        r#"targets = [{ account = "prod" }, { account = "prod", region = "ap-southeast-2" }]"#,
    ));
    let why = engine.refuse_config(&moved).await.expect("refused");
    assert!(
        why.contains(&format!("{held}, its wave 2 deployed to stack backend-prod in account prod (444444444444) us-east-1, now stack backend-prod in account prod (444444444444) ap-southeast-2")),
        "{why}"
    );
    let inserted = load(STAGES.replace(
        waves,
        r#"targets = [{ account = "gamma" }, { account = "prod" }, { account = "prod", region = "us-east-1" }]"#,
    ));
    assert!(engine.refuse_config(&inserted).await.is_some());
    let accounts = h.dir.path().join("accounts/accounts.toml");
    let ids = std::fs::read_to_string(&accounts).unwrap();
    std::fs::write(&accounts, ids.replace("444444444444", "555555555555")).unwrap();
    let other_id = load(STAGES.to_string());
    std::fs::write(&accounts, ids).unwrap();
    let why = engine.refuse_config(&other_id).await.expect("refused");
    assert!(
        why.contains("now stack backend-prod in account prod (555555555555)"),
        "{why}"
    );

    h.clock.advance(Duration::minutes(11));
    settle(&engine).await.unwrap();
    assert_eq!(status(&engine, id, "prod").await, RunStatus::Succeeded);
    for config in [&renamed, &moved, &inserted, &other_id] {
        assert_eq!(engine.refuse_config(config).await, None);
    }
}

/// Release 2 approved for prod after release 1 went all the way, its prod deploy (wave 1)
/// started and never answering.
pub(crate) async fn prod_deploy_hanging(
    h: &Harness,
    engine: &tollgate::engine::Engine,
) -> ReleaseId {
    promote_fully(h, engine, 1).await;
    let id = recorded(engine, 2).await;
    settle(engine).await.unwrap();
    h.fakes.with(|w| w.hanging_deploys = 1);
    engine
        .record_approval(&approval(id, "alice", Decision::Approve), &delivery("a2"))
        .await
        .unwrap();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), settle(engine)).await;
    assert_eq!(status(engine, id, "prod").await, RunStatus::Deploying);
    assert_eq!(h.fakes.with(|w| w.hung_deploys), 1);
    id
}

/// The engine tests' configuration with prod's first wave in ap-southeast-2 instead of
/// eu-west-1.
pub(crate) fn prod_wave_1_moved(h: &Harness) -> tollgate::config::Config {
    let waves = r#"targets = [{ account = "prod" }, { account = "prod", region = "us-east-1" }]"#;
    assert!(STAGES.contains(waves));
    let moved = STAGES.replace(
        waves,
        r#"targets = [{ account = "prod", region = "ap-southeast-2" }, { account = "prod", region = "us-east-1" }]"#,
    );
    std::fs::write(h.dir.path().join("moved.toml"), moved).unwrap();
    tollgate::config::load(&h.dir.path().join("moved.toml"))
        .unwrap()
        .config
}

/// prod's first wave where the engine tests' configuration puts it, and where
/// [`prod_wave_1_moved`] does.
pub(crate) const PROD_EU: &str = "stack backend-prod in account prod (444444444444) eu-west-1";
pub(crate) const PROD_AP: &str = "stack backend-prod in account prod (444444444444) ap-southeast-2";

/// A deploy still running has recorded where it began: moving its wave is refused while it
/// runs.
#[tokio::test]
async fn moving_a_wave_whose_deploy_is_still_running_is_refused() {
    let h = Harness::new();
    let engine = h.engine(None).await;
    let id = prod_deploy_hanging(&h, &engine).await;

    let why = engine
        .refuse_config(&prod_wave_1_moved(&h))
        .await
        .expect("refused");
    assert!(
        why.contains(&format!(
            "backend/prod: {id} deploying, its wave 1 began deploying to {PROD_EU}, now {PROD_AP}"
        )),
        "{why}"
    );
}

/// A configuration change holds back the start of deploys from its check until it is in
/// force: release 2's prod deploy, approved while a change moving prod's first wave is being
/// checked, does not begin under the configuration being replaced (where the check, having
/// read no deploy there, could not refuse the move); it begins once the change is in force,
/// and goes where the new configuration puts the wave.
#[tokio::test]
async fn a_deploy_approved_during_a_configuration_change_starts_under_the_new_one() {
    let h = Harness::new();
    let engine = h.engine(None).await;
    promote_fully(&h, &engine, 1).await;
    let id = recorded(&engine, 2).await;
    settle(&engine).await.unwrap();
    assert_eq!(
        status(&engine, id, "prod").await,
        RunStatus::AwaitingApproval
    );

    let moved = prod_wave_1_moved(&h);
    let held = engine.hold_starts().await;
    engine
        .record_approval(&approval(id, "alice", Decision::Approve), &delivery("a2"))
        .await
        .unwrap();
    let reconciling = tokio::spawn({
        let engine = engine.clone();
        async move { engine.reconcile("backend").await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let begun = engine.reads().effects_of(id, "prod").await.unwrap();
    assert!(
        !begun
            .iter()
            .any(|e| matches!(e.kind, EffectKind::Deploy { .. })),
        "a deploy began during the change: {begun:?}"
    );
    assert_eq!(engine.refuse_config(&moved).await, None);
    engine.replace_config(moved, &held);
    drop(held);
    reconciling.await.unwrap().unwrap();
    settle(&engine).await.unwrap();

    let effects = engine.reads().effects_of(id, "prod").await.unwrap();
    let deploy = effects
        .iter()
        .find(|e| e.kind == EffectKind::Deploy { wave: 0 })
        .expect("the prod deploy");
    assert_eq!(deploy.status, EffectStatus::Succeeded, "{}", deploy.detail);
    assert_eq!(
        deploy.deploy_place().map(|p| p.to_string()).as_deref(),
        Some(PROD_AP)
    );
    let second = fake_digest(&sha(2));
    let places: Vec<String> = h.fakes.with(|w| {
        w.deployed
            .iter()
            .filter(|(stage, _, uri)| stage == "prod" && uri.ends_with(&second))
            .map(|(_, at, _)| at.clone())
            .collect()
    });
    assert_eq!(places, ["prod/ap-southeast-2", "prod/us-east-1"]);
}

/// A deploy still running in a CloudFormation stack: a reload that deploys the stage with a
/// CodePipeline pipeline of the same name, in the same account and region, is refused while
/// it runs, naming both (the stack's deploy would be left out of the run, its bake and its
/// rollback).
#[tokio::test]
async fn switching_a_deploying_stage_to_a_pipeline_of_the_same_name_is_refused() {
    let h = Harness::new();
    let engine = h.engine(None).await;
    let id = prod_deploy_hanging(&h, &engine).await;

    let stack = "kind = \"cloudformation\"\nstack = \"backend-prod\"\ntemplate = \"service.yaml\"\nimage_parameter = \"ImageUri\"";
    assert_eq!(STAGES.matches(stack).count(), 1);
    let pipeline = "kind = \"codepipeline\"\npipeline = \"backend-prod\"\nvariable = \"ImageUri\"\nrollback_stage = \"Deploy\"";
    std::fs::write(
        h.dir.path().join("switched.toml"),
        STAGES.replace(stack, pipeline),
    )
    .unwrap();
    let switched = tollgate::config::load(&h.dir.path().join("switched.toml"))
        .unwrap()
        .config;
    let why = engine.refuse_config(&switched).await.expect("refused");
    let now = "CodePipeline pipeline backend-prod in account prod (444444444444) eu-west-1";
    assert!(
        why.contains(&format!(
            "backend/prod: {id} deploying, its wave 1 began deploying to {PROD_EU}, now {now}"
        )),
        "{why}"
    );
}

/// Release 2's prod deploy hanging when the controller is dropped, and a controller started on
/// its state with [`prod_wave_1_moved`] in force.
async fn restarted_with_prod_wave_1_moved() -> (Harness, tollgate::engine::Engine, ReleaseId) {
    let h = Harness::new();
    let before = h.engine(None).await;
    let id = prod_deploy_hanging(&h, &before).await;
    drop(before);
    let restarted = engine_with(&h, prod_wave_1_moved(&h)).await;
    (h, restarted, id)
}

/// The controller is killed while prod's deploy runs, and restarted with a file that moves
/// that deploy's wave. At start-up the configuration in force is the new file, so only the
/// place the deploy's intent recorded shows the move: it is refused, naming where the deploy
/// began; the file it began under is not.
#[tokio::test]
async fn a_restart_with_a_file_moving_a_wave_whose_deploy_was_interrupted_is_refused() {
    let (h, restarted, id) = restarted_with_prod_wave_1_moved().await;
    let moved = prod_wave_1_moved(&h);
    let why = restarted.refuse_config(&moved).await.expect("refused");
    assert!(
        why.contains(&format!(
            "backend/prod: {id} deploying, its wave 1 began deploying to {PROD_EU}, now {PROD_AP}"
        )),
        "{why}"
    );
    let kept = config_in(h.dir.path());
    assert_eq!(restarted.refuse_config(&kept).await, None);
}

/// Restarted with prod's first wave moved anyway, the interrupted deploy is not performed
/// again at the new place: it fails naming both places and what to do, the deployer is not
/// called again, and the run's rollback refuses the new place too, so the stage halts with
/// nothing done in ap-southeast-2.
#[tokio::test]
async fn an_interrupted_deploy_never_resumes_where_a_restart_moved_its_wave() {
    let (h, restarted, id) = restarted_with_prod_wave_1_moved().await;
    settle(&restarted).await.unwrap();

    let effects = restarted.reads().effects_of(id, "prod").await.unwrap();
    let deploy = effects
        .iter()
        .find(|e| e.kind == EffectKind::Deploy { wave: 0 })
        .expect("the prod deploy");
    assert_eq!(deploy.status, EffectStatus::Failed);
    let EffectOutput::Misplaced { began, now } = &deploy.output else {
        panic!("{:?}", deploy.output)
    };
    assert_eq!(began.to_string(), PROD_EU);
    assert_eq!(
        now.as_ref().map(|p| p.to_string()).as_deref(),
        Some(PROD_AP)
    );
    for wanted in [
        format!("{id}'s deploy of wave 1 of prod began at {PROD_EU} and was interrupted"),
        format!("the configuration now puts wave 1 at {PROD_AP}: not deployed there"),
        format!(
            "restore the configuration that puts wave 1 at {PROD_EU}, or finish or undo the deploy at {PROD_EU} by hand, then resume the stage"
        ),
    ] {
        assert!(deploy.detail.contains(&wanted), "{}", deploy.detail);
    }
    let second = fake_digest(&sha(2));
    let (calls, hung, prod) = h.fakes.with(|w| {
        let deployed = w
            .deployed
            .iter()
            .filter(|(_, _, uri)| uri.ends_with(&second));
        let prod: Vec<_> = deployed
            .chain(&w.rolled_back)
            .filter(|(stage, _, _)| stage == "prod")
            .cloned()
            .collect();
        (
            w.ledger.calls.get(deploy.key.as_str()).copied(),
            w.hung_deploys,
            prod,
        )
    });
    assert_eq!(
        (calls, hung),
        (None, 1),
        "the deployer was not called again"
    );
    assert_eq!(
        prod,
        [],
        "release 2 neither deployed nor rolled back in prod"
    );

    let refused = format!(
        "{id}'s deploy of wave 1 of prod began at {PROD_EU} and did not finish, and the configuration now puts wave 1 at {PROD_AP}: not rolled back there; restore {PROD_EU} to r1 by hand"
    );
    rollback_refused(&restarted, id, "eu-west-1", &refused).await;
}

/// prod's run of `id` failed on a rollback refused in `region`, saying `wanted`, and the stage
/// is paused.
async fn rollback_refused(
    engine: &tollgate::engine::Engine,
    id: ReleaseId,
    region: &str,
    wanted: &str,
) {
    let prod = run(engine, id, "prod").await;
    assert_eq!(prod.status, RunStatus::Failed, "{:?}", prod.reason);
    let Reason::RollbackFailed {
        region: refused_in,
        detail,
        ..
    } = &prod.reason
    else {
        panic!("{:?}", prod.reason)
    };
    assert_eq!(refused_in, region);
    assert!(detail.contains(wanted), "{detail}");
    let (_, paused) = engine.reads().paused("backend", "prod").await.unwrap();
    assert!(paused.is_some(), "the stage is paused");
}

/// A reload moved prod's second wave to another region while release 2 baked there: its
/// rollback would change a region the release never reached and leave the one it reached
/// running it. Wave 1 is restored, wave 2 is not touched, and the stage halts saying where
/// the release still runs.
#[tokio::test]
async fn a_rollback_never_goes_where_a_reload_moved_a_wave() {
    let moved = r#"{ account = "prod", region = "ap-southeast-2" }"#;
    let (h, engine, id) = alarm_after_prod_reload(Some(moved)).await;
    let restored: Vec<String> = h
        .fakes
        .with(|w| w.rolled_back.iter().map(|(_, at, _)| at.clone()).collect());
    assert_eq!(restored, ["prod/eu-west-1"], "only the wave still in place");
    let prod = run(&engine, id, "prod").await;
    assert_eq!(prod.status, RunStatus::Failed);
    let Reason::RollbackFailed {
        account,
        region,
        detail,
    } = &prod.reason
    else {
        panic!("{:?}", prod.reason)
    };
    assert_eq!((account.as_str(), region.as_str()), ("prod", "us-east-1"));
    assert!(
        detail.contains("r2 was deployed as wave 2 of prod to stack backend-prod in account prod (444444444444) us-east-1, and the configuration now puts wave 2 at stack backend-prod in account prod (444444444444) ap-southeast-2"),
        "{detail}"
    );
    assert!(
        detail.contains(
            "restore stack backend-prod in account prod (444444444444) us-east-1 to r1 by hand"
        ),
        "{detail}"
    );
    let (_, paused) = engine.reads().paused("backend", "prod").await.unwrap();
    assert!(
        paused.is_some_and(|p| p.contains("ROLLBACK FAILED for prod/us-east-1")),
        "the stage is paused"
    );
}

/// A reload dropped prod's second wave while release 2 baked there: the wave is still rolled
/// back, never skipped as if the release had not reached it; with nowhere configured to send
/// it, the stage halts saying where the release still runs.
#[tokio::test]
async fn a_rollback_of_a_wave_a_reload_dropped_halts_instead_of_skipping_it() {
    let (h, engine, id) = alarm_after_prod_reload(None).await;
    let restored = h.fakes.with(|w| w.rolled_back.len());
    assert_eq!(restored, 1, "wave 1 restored");
    let refused = "the configuration no longer has a wave 2: restore stack backend-prod in account prod (444444444444) us-east-1 to r1 by hand";
    rollback_refused(&engine, id, "us-east-1", refused).await;
    let good = engine.reads().last_good("backend", "prod").await.unwrap();
    assert_eq!(
        good.map(|r| r.id),
        Some(ReleaseId(1)),
        "prod's known-good stays r1"
    );
    let rel = engine.reads().release(id).await.unwrap().unwrap();
    assert!(
        rel.bad.is_none(),
        "not recorded as rolled back: {:?}",
        rel.bad
    );
}

#[tokio::test]
async fn a_newer_release_supersedes_one_waiting_for_approval() {
    let h = Harness::new();
    let engine = h.engine(None).await;
    let old = recorded(&engine, 1).await;
    settle(&engine).await.unwrap();
    assert_eq!(
        status(&engine, old, "prod").await,
        RunStatus::AwaitingApproval
    );
    let new = recorded(&engine, 2).await;
    settle(&engine).await.unwrap();

    let old_prod = run(&engine, old, "prod").await;
    assert_eq!(old_prod.status, RunStatus::Superseded);
    assert_eq!(old_prod.reason, Reason::SupersededBy { release: new });
    assert_eq!(
        status(&engine, new, "prod").await,
        RunStatus::AwaitingApproval
    );
    // A late approval of the stale release changes nothing.
    engine
        .record_approval(
            &approval(old, "alice", Decision::Approve),
            &delivery("late"),
        )
        .await
        .unwrap();
    settle(&engine).await.unwrap();
    assert_eq!(status(&engine, old, "prod").await, RunStatus::Superseded);
    assert!(
        h.fakes
            .with(|w| w.deployed.iter().all(|(s, _, _)| s != "prod"))
    );
}

/// Approvers whose email subscription is pending confirmation get nothing from SNS: the run
/// says nobody can receive the request (never "sent"), and the request goes out again on the
/// resend schedule to each approver once they confirmed.
#[tokio::test]
async fn a_request_no_approver_can_receive_says_so_and_reaches_them_once_they_confirm() {
    let h = Harness::new();
    let waiting = ["alice".to_string(), "bob".to_string()];
    h.fakes.with(|w| w.unconfirmed_approvers.extend(waiting));
    let engine = h.engine(None).await;
    let id = recorded(&engine, 1).await;
    settle(&engine).await.unwrap();
    let why = |run: tollgate::domain::StageRun| run.reason.describe(engine.now());
    let said = why(run(&engine, id, "prod").await);
    assert_eq!(
        said,
        "awaiting approval: 0 of 1, expires in 24h (request not sent: no approver can receive \
         the request yet: the email subscriptions of alice, bob to the approval topic are \
         pending confirmation, and SNS delivers nothing until the approver follows the link in \
         AWS's confirmation email; trying again in 5m)"
    );
    // Kept as typed state, not only as text.
    let prod = run(&engine, id, "prod").await;
    let tollgate::domain::Reason::AwaitingApproval { request, .. } = &prod.reason else {
        panic!("{:?}", prod.reason)
    };
    assert!(
        matches!(
            request,
            tollgate::domain::RequestState::Unconfirmed { awaiting, sent, .. }
                if awaiting == &["alice", "bob"] && sent.is_empty()
        ),
        "{request:?}"
    );

    h.fakes.with(|w| w.unconfirmed_approvers.remove("alice"));
    h.clock.advance(Duration::minutes(5));
    settle(&engine).await.unwrap();
    let said = why(run(&engine, id, "prod").await);
    assert!(
        said.contains("(no link sent to bob: their email subscription to the")
            && said.contains("; sent to alice; trying again in 5m)"),
        "{said}"
    );

    // Waiting for a person does not back off like a failing service: the request goes again
    // every 5 minutes for the first hour, then every 15, however long bob takes (the real
    // sender gives alice no second link).
    let key = h.fakes.with(|w| w.approval_requests[0].key.clone());
    let sent = || h.fakes.with(|w| w.ledger.calls[&key]);
    let before = sent();
    for round in 1..=11 {
        h.clock.advance(Duration::minutes(5));
        settle(&engine).await.unwrap();
        let said = why(run(&engine, id, "prod").await);
        let next = if round < 11 { "5m" } else { "15m" };
        assert!(
            said.contains(&format!("; trying again in {next})")),
            "{said}"
        );
        assert_eq!(sent(), before + round);
    }
    h.clock.advance(Duration::minutes(15));
    settle(&engine).await.unwrap();
    assert_eq!(sent(), before + 12);

    h.fakes.with(|w| w.unconfirmed_approvers.clear());
    h.clock.advance(Duration::minutes(15));
    settle(&engine).await.unwrap();
    let prod = run(&engine, id, "prod").await;
    assert_eq!(prod.status, RunStatus::AwaitingApproval);
    assert_eq!(why(prod), "awaiting approval: 0 of 1, expires in 22h30m");
}

#[tokio::test]
async fn a_rejection_ends_the_request_and_a_redelivered_push_is_ignored() {
    let h = Harness::new();
    let engine = h.engine(None).await;
    let id = recorded(&engine, 1).await;
    assert_eq!(
        engine
            .record_release(&release(1), &delivery("push-1"))
            .await
            .unwrap(),
        Ingested::Duplicate
    );
    assert_eq!(
        engine
            .record_release(&release(1), &delivery("push-1-again"))
            .await
            .unwrap(),
        Ingested::Duplicate
    );
    settle(&engine).await.unwrap();
    engine
        .record_approval(&approval(id, "bob", Decision::Reject), &delivery("r1"))
        .await
        .unwrap();
    settle(&engine).await.unwrap();
    let prod = run(&engine, id, "prod").await;
    assert_eq!(prod.status, RunStatus::Rejected);
    assert_eq!(prod.reason, Reason::Rejected { by: "bob".into() });
    assert_eq!(
        engine
            .reads()
            .recent_runs("backend", 10)
            .await
            .unwrap()
            .len(),
        1,
        "one release"
    );
}

#[tokio::test]
async fn a_paused_pipeline_starts_nothing_until_resumed() {
    let h = Harness::new();
    let engine = h.engine(None).await;
    engine
        .pause("backend", None, "incident 42", "api-key:ops")
        .await
        .unwrap();
    let id = recorded(&engine, 1).await;
    settle(&engine).await.unwrap();
    let beta = run(&engine, id, "beta").await;
    assert_eq!(beta.status, RunStatus::Queued);
    assert_eq!(
        beta.reason,
        Reason::PipelinePaused {
            reason: "incident 42".into()
        }
    );
    assert!(h.fakes.with(|w| w.deployed.is_empty()));
    engine.resume("backend", None, "api-key:ops").await.unwrap();
    settle(&engine).await.unwrap();
    assert_eq!(
        status(&engine, id, "prod").await,
        RunStatus::AwaitingApproval
    );
}

#[tokio::test]
async fn a_manual_rollback_returns_the_stage_to_its_previous_release() {
    let h = Harness::new();
    let engine = h.engine(None).await;
    promote_fully(&h, &engine, 1).await;
    let second = promote_fully(&h, &engine, 2).await;
    engine
        .request_rollback("backend", "prod", "api-key:ops", &delivery("rb-1"))
        .await
        .unwrap();
    settle(&engine).await.unwrap();
    assert_eq!(status(&engine, second, "prod").await, RunStatus::RolledBack);
    let restored = h.fakes.with(|w| w.rolled_back.clone());
    assert!(
        !restored.is_empty()
            && restored
                .iter()
                .all(|(_, _, uri)| uri.ends_with(&fake_digest(&sha(1))))
    );
    let history = engine.reads().events("backend", 500).await.unwrap();
    assert!(
        history
            .iter()
            .any(|e| e.actor == "api-key:ops" && e.kind == "rollback-request")
    );
    assert!(
        history.iter().all(|e| e.kind != "rollback-latency"),
        "no alarm, no alarm-to-rollback figure"
    );
}

#[tokio::test]
async fn status_shows_known_good_in_flight_and_why_it_waits() {
    let h = Harness::new();
    let engine = h.engine(None).await;
    let first = promote_fully(&h, &engine, 1).await;
    let second = recorded(&engine, 2).await;
    settle(&engine).await.unwrap();
    engine
        .pause(
            "backend",
            Some("gamma"),
            "freeze for the audit",
            "api-key:ops",
        )
        .await
        .unwrap();

    let rows = tollgate::cli::status::collect(engine.reads(), &engine.config(), engine.now())
        .await
        .unwrap();
    let prod = rows.iter().find(|r| r.stage == "prod").unwrap();
    assert_eq!(
        prod.known_good.as_deref(),
        Some(format!("{first} ({})", &sha(1)[..12]).as_str())
    );
    assert_eq!(
        prod.in_flight.as_deref(),
        Some(format!("{second} ({})", &sha(2)[..12]).as_str())
    );
    assert_eq!(prod.status.as_deref(), Some("awaiting_approval"));
    assert!(
        prod.reason.as_deref().unwrap().contains("expires in 24h"),
        "{prod:?}"
    );
    let gamma = rows.iter().find(|r| r.stage == "gamma").unwrap();
    assert_eq!(gamma.paused.as_deref(), Some("stage: freeze for the audit"));

    let mut table = Vec::new();
    tollgate::cli::status::render(&rows, false, &mut table).unwrap();
    let table = String::from_utf8(table).unwrap();
    assert!(table.contains("awaiting approval: 0 of 1"), "{table}");
    let mut json = Vec::new();
    tollgate::cli::status::render(&rows, true, &mut json).unwrap();
    let parsed: serde_json::Value = serde_json::from_slice(&json).unwrap();
    assert_eq!(parsed.as_array().unwrap().len(), 3);

    let mut log = Vec::new();
    tollgate::cli::status::history(engine.reads(), "backend", 1000, false, &mut log)
        .await
        .unwrap();
    let log = String::from_utf8(log).unwrap();
    assert!(
        log.contains("approver:alice"),
        "the approval and its actor are in the log"
    );
    assert!(log.contains("gamma paused: freeze for the audit"));
}

/// `tollgate retry` as a controller's API carries it out (its own store on the engine's
/// state, the system clock): (0, what the operator is told, "") or (1, "", why it is refused).
async fn retry(
    h: &Harness,
    engine: &tollgate::engine::Engine,
    release: &str,
) -> (i32, String, String) {
    let control = tollgate::cli::control::Control::Retry {
        pipeline: "backend".into(),
        release: release.into(),
    };
    let config = (*engine.config()).clone();
    let store = tollgate::store::Store::open(&h.db_url()).await.unwrap();
    let api = tollgate::engine::Ingest::new(
        store,
        tollgate::engine::shared_config(config),
        std::sync::Arc::new(tollgate::engine::SystemClock),
    );
    match tollgate::cli::control::carry_out(&api, &control, "api-key:dana", "api")
        .await
        .unwrap()
    {
        Ok(said) => (0, said, String::new()),
        Err(why) => (1, String::new(), why),
    }
}

#[tokio::test]
async fn a_release_stopped_by_a_failed_test_is_retried_from_that_stage_once() {
    let h = Harness::new();
    let engine = h.engine(None).await;
    h.fakes.with(|w| w.failing_tests.insert("beta:unit".into()));
    let Ingested::Recorded(id) = engine
        .record_release(&release(1), &delivery("push-1"))
        .await
        .unwrap()
    else {
        panic!("not recorded")
    };
    settle(&engine).await.unwrap();
    assert_eq!(status(&engine, id, "beta").await, RunStatus::Failed);
    assert_eq!(status(&engine, id, "prod").await, RunStatus::Failed);
    let halts: Vec<_> = h.fakes.with(|w| {
        w.published
            .iter()
            .filter(|m| m.subject.contains("stopped in beta"))
            .cloned()
            .collect()
    });
    assert_eq!(
        halts.len(),
        1,
        "one halt notification, for the stage where it stopped"
    );
    let body = &halts[0].body;
    for wanted in [
        "Release r1 stopped in stage beta.",
        "Why: before test `unit` failed",
        "`tollgate retry backend r1` sends it again from beta once the cause is fixed",
    ] {
        assert!(body.contains(wanted), "missing {wanted:?} in:\n{body}");
    }

    let (code, _, err) = retry(&h, &engine, "r9").await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("pipeline backend has no release r9"), "{err}");
    let (code, _, err) = retry(&h, &engine, "seven").await;
    assert_eq!(code, 1, "{err}");

    h.fakes.with(|w| w.failing_tests.clear());
    let (code, out, err) = retry(&h, &engine, "r1").await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("r1 sent again from beta"), "{out}");
    let (code, out, err) = retry(&h, &engine, "r1").await;
    assert_eq!(code, 0, "a second retry before the first ran: {err}");
    assert!(out.contains("retry of r1 was already requested"), "{out}");

    settle(&engine).await.unwrap();
    assert_eq!(status(&engine, id, "beta").await, RunStatus::Succeeded);
    assert_eq!(status(&engine, id, "gamma").await, RunStatus::Succeeded);
    let prod = run(&engine, id, "prod").await;
    assert_eq!(prod.status, RunStatus::AwaitingApproval);
    assert_eq!(prod.attempt, 2);
    let unit_runs = h.fakes.with(|w| {
        w.test_runs
            .iter()
            .filter(|(stage, test)| stage == "beta" && test == "unit")
            .count()
    });
    assert_eq!(unit_runs, 2, "the failed test ran again, once");
    let beta_deploys = h
        .fakes
        .with(|w| w.deployed.iter().filter(|d| d.0 == "beta").count());
    assert_eq!(beta_deploys, 1);
    let events = engine.reads().events("backend", 500).await.unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.kind == "retry-request" && e.actor == "api-key:dana"),
        "{events:#?}"
    );
    let retries: Vec<_> = events.iter().filter(|e| e.kind == "retry").collect();
    assert_eq!(retries.len(), 1, "{events:#?}");
    assert_eq!(retries[0].stage.as_deref(), Some("beta"));
    assert!(
        retries[0]
            .detail
            .contains("retry requested by api-key:dana")
    );

    let (code, _, err) = retry(&h, &engine, "r1").await;
    assert_eq!(code, 1);
    assert!(
        err.contains("r1 is still awaiting_approval in prod"),
        "{err}"
    );
}

#[tokio::test]
async fn a_retry_that_would_move_a_stage_backwards_or_revive_a_rolled_back_release_is_refused() {
    let h = Harness::new();
    let engine = h.engine(None).await;
    h.fakes.with(|w| w.failing_tests.insert("beta:unit".into()));
    engine
        .record_release(&release(1), &delivery("push-1"))
        .await
        .unwrap();
    settle(&engine).await.unwrap();
    h.fakes.with(|w| w.failing_tests.clear());
    let r2 = promote_fully(&h, &engine, 2).await;
    let before = engine.reads().events("backend", 1000).await.unwrap().len();

    let (code, _, err) = retry(&h, &engine, "r1").await;
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("r2 is newer and is succeeded in beta: retrying r1 would move beta backwards"),
        "{err}"
    );

    // r3 bakes in prod, an alarm rolls it back: it is marked bad and stays so.
    let r3 = promote_and_roll_back_in_prod(&h, &engine, 3).await;
    assert_ne!(r2, r3);
    let (code, _, err) = retry(&h, &engine, &r3.to_string()).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("r3 was rolled back in prod"), "{err}");
    let events = engine.reads().events("backend", 1000).await.unwrap();
    assert!(events.len() > before);
    assert!(events.iter().all(|e| e.kind != "retry"), "nothing retried");
}

/// Release `n` reaches the prod bake, then an alarm rolls prod back.
async fn promote_and_roll_back_in_prod(
    h: &Harness,
    engine: &tollgate::engine::Engine,
    n: u32,
) -> ReleaseId {
    let Ingested::Recorded(id) = engine
        .record_release(&release(n), &delivery(&format!("push-{n}")))
        .await
        .unwrap()
    else {
        panic!("release {n} not recorded")
    };
    settle(engine).await.unwrap();
    engine
        .record_approval(
            &approval(id, "bob", Decision::Approve),
            &delivery(&format!("appr-{n}")),
        )
        .await
        .unwrap();
    settle(engine).await.unwrap();
    h.clock.advance(Duration::minutes(2));
    engine
        .record_alarm(&alarm("prod", "prod-5xx"), &delivery(&format!("sns-{n}")))
        .await
        .unwrap();
    settle(engine).await.unwrap();
    assert_eq!(status(engine, id, "prod").await, RunStatus::RolledBack);
    id
}

/// Someone else's update left another image in gamma: the deploy reads it back as drift. The
/// run fails with that reason, gamma is paused, nothing is rolled back over their change, and
/// the release goes no further.
#[tokio::test]
async fn a_deploy_that_reads_back_another_image_halts_the_stage_as_drift() {
    let h = Harness::new();
    let engine = h.engine(None).await;
    promote_fully(&h, &engine, 1).await;
    let theirs = "444444444444.dkr.ecr.eu-west-1.amazonaws.com/backend@sha256:feed";
    h.fakes
        .with(|w| w.drifting_deploys.insert("gamma".into(), theirs.into()));
    let id = recorded(&engine, 2).await;
    settle(&engine).await.unwrap();

    assert_eq!(status(&engine, id, "beta").await, RunStatus::Succeeded);
    let gamma = run(&engine, id, "gamma").await;
    assert_eq!(gamma.status, RunStatus::Failed, "{:?}", gamma.reason);
    let Reason::Drift {
        expected,
        found,
        rollback: false,
        ..
    } = &gamma.reason
    else {
        panic!("{:?}", gamma.reason)
    };
    assert!(expected.ends_with(&fake_digest(&sha(2))), "{expected}");
    assert_eq!(found, theirs);
    let said = gamma.reason.describe(engine.now());
    assert!(
        said.starts_with("DRIFT in gamma/eu-west-1: the deploy asked for ")
            && said.contains(theirs)
            && said.contains("stage paused"),
        "{said}"
    );
    let (_, paused) = engine.reads().paused("backend", "gamma").await.unwrap();
    assert!(
        paused.is_some_and(|p| p.contains("DRIFT")),
        "gamma is paused"
    );
    assert_eq!(status(&engine, id, "prod").await, RunStatus::Failed);
    assert!(
        h.fakes.with(|w| w.rolled_back.is_empty()),
        "nothing is rolled back over someone else's change"
    );
    let to_prod = h.fakes.with(|w| {
        w.deployed
            .iter()
            .filter(|(s, _, uri)| s == "prod" && uri.ends_with(&fake_digest(&sha(2))))
            .count()
    });
    assert_eq!(to_prod, 0, "not promoted onward");
    let halted: Vec<String> = h.fakes.with(|w| {
        w.published
            .iter()
            .filter(|m| m.body.contains("DRIFT"))
            .map(|m| m.body.clone())
            .collect()
    });
    assert_eq!(halted.len(), 1, "one notification says so");
    assert!(
        halted[0].contains("tollgate resume backend --stage gamma"),
        "{}",
        halted[0]
    );
}

/// A known-good release whose deploy was recorded before deploys kept what they applied (the
/// fake deployer reports no applied spec, as the rows of that version hold none) still rolls
/// back: with its image and the stage's current configuration, and the rollback says so.
#[tokio::test]
async fn a_rollback_to_a_deploy_recorded_without_its_spec_falls_back_and_says_so() {
    let h = Harness::new();
    let engine = h.engine(None).await;
    let first = promote_fully(&h, &engine, 1).await;
    h.fakes
        .with(|w| w.failing_tests.insert("gamma:smoke".into()));
    let id = recorded(&engine, 2).await;
    settle(&engine).await.unwrap();

    assert_eq!(status(&engine, id, "gamma").await, RunStatus::RolledBack);
    let restored = h.fakes.with(|w| w.rolled_back.clone());
    assert_eq!(restored.len(), 1);
    assert!(restored[0].2.ends_with(&fake_digest(&sha(1))));
    let effects = engine.reads().effects_of(id, "gamma").await.unwrap();
    let rollback = effects
        .iter()
        .find(|e| matches!(e.kind, tollgate::domain::EffectKind::Rollback { .. }))
        .unwrap();
    assert!(
        rollback.detail.contains("no applicable recorded spec"),
        "{}",
        rollback.detail
    );
    let log = engine.reads().events("backend", 1000).await.unwrap();
    let fallback: Vec<_> = log
        .iter()
        .filter(|e| e.kind == "rollback-fallback")
        .collect();
    assert_eq!(fallback.len(), 1, "{fallback:?}");
    assert!(
        fallback[0].detail.contains(&format!(
            "{first} has no applicable recorded spec for gamma wave 1"
        )),
        "{}",
        fallback[0].detail
    );
}

#[tokio::test]
async fn a_quiet_beta_keeps_baking_for_data_then_halts_and_says_why() {
    let h = Harness::new();
    h.fakes.with(|w| w.datapoints.insert("beta-5xx".into(), 1));
    let engine = h.engine(None).await;
    let Ingested::Recorded(id) = engine
        .record_release(&release(1), &delivery("push-1"))
        .await
        .unwrap()
    else {
        panic!("not recorded")
    };
    settle(&engine).await.unwrap();
    let beta = run(&engine, id, "beta").await;
    assert_eq!(beta.status, RunStatus::Baking, "{:?}", beta.reason);
    assert!(
        matches!(
            &beta.reason,
            Reason::AwaitingData {
                gap: DataGap::Datapoints {
                    have: 1,
                    needed: 3,
                    ..
                },
                ..
            }
        ),
        "{:?}",
        beta.reason
    );
    assert_eq!(status(&engine, id, "gamma").await, RunStatus::Waiting);
    let reads = h.fakes.with(|w| w.bake_reads.clone());
    assert!(
        reads
            .iter()
            .all(|(names, since)| names == &["beta-5xx".to_string()] && since.is_some()),
        "every bake read counts data points from the deploy's end: {reads:?}"
    );

    // An hour past the bake time (bake_max_wait's default), still one data point short.
    h.clock.advance(Duration::minutes(61));
    settle(&engine).await.unwrap();
    h.clock.advance(Duration::seconds(10));
    settle(&engine).await.unwrap();
    let beta = run(&engine, id, "beta").await;
    assert_eq!(beta.status, RunStatus::Failed, "{:?}", beta.reason);
    assert!(
        matches!(
            &beta.reason,
            Reason::NotEnoughData {
                waited_secs: 3600,
                ..
            }
        ),
        "{:?}",
        beta.reason
    );
    assert_eq!(status(&engine, id, "gamma").await, RunStatus::Failed);
    let published = h.fakes.with(|w| w.published.clone());
    let halt = published
        .iter()
        .find(|m| m.subject.contains("stopped in beta"))
        .expect("the halt is announced");
    assert!(
        halt.body
            .contains("bake failed: alarm beta-5xx has 1 of 3 data points since"),
        "{}",
        halt.body
    );
    assert!(
        halt.body.contains("does not count it as known-good"),
        "{}",
        halt.body
    );
    assert!(
        h.fakes.with(|w| w.rolled_back.is_empty()),
        "nothing to undo"
    );
}

/// What a deploy measured of its stack is kept with its outcome and handed to the next deploy
/// of the same stack (and only of that stack), so its waits fit the stack.
#[tokio::test]
async fn a_stacks_measured_timings_reach_its_next_deploy() {
    use std::time::Duration as Std;
    use tollgate::domain::StackHistory;

    let h = Harness::new();
    let took = (Std::from_secs(20), Std::from_secs(180));
    h.fakes.with(|w| w.deploy_timings = Some(took));
    let engine = h.engine(None).await;
    promote_fully(&h, &engine, 1).await;
    promote_fully(&h, &engine, 2).await;

    let histories = h.fakes.with(|w| w.histories.clone());
    let of = |stage: &str| -> Vec<StackHistory> {
        let mine = histories.iter().filter(|(s, _)| s == stage);
        mine.map(|(_, history)| history.clone()).collect()
    };
    let kept = StackHistory {
        change_set: vec![took.0],
        update: vec![took.1],
    };
    assert_eq!(of("beta"), [StackHistory::default(), kept.clone()]);
    assert_eq!(of("gamma"), [StackHistory::default(), kept.clone()]);
    // Prod deploys one stack per region, each with its own history.
    assert_eq!(
        of("prod"),
        [
            StackHistory::default(),
            StackHistory::default(),
            kept.clone(),
            kept
        ]
    );
}

/// The engine tests' configuration without `stage` (a file written in the harness's
/// directory).
fn without_stage(h: &Harness, stage: &str) -> tollgate::config::Config {
    let name = format!(r#"name = "{stage}""#);
    let section = STAGES
        .split("[[pipelines.stages]]")
        .find(|s| s.contains(&name))
        .unwrap();
    let without = STAGES.replace(&format!("[[pipelines.stages]]{section}"), "");
    let path = h.dir.path().join(format!("without-{stage}.toml"));
    std::fs::write(&path, without).unwrap();
    tollgate::config::load(&path).unwrap().config
}

/// A reload removes prod while release 2 awaits approval there: its run ends superseded, and
/// GitHub hears that the deployment GitHub was told was queued in prod is over (`inactive`),
/// although the stage is no longer configured.
#[tokio::test]
async fn a_run_ended_by_a_reload_removing_its_stage_is_reported_to_github() {
    let h = Harness::new();
    let engine = h.engine(None).await;
    promote_fully(&h, &engine, 1).await;
    let id = recorded(&engine, 2).await;
    settle(&engine).await.unwrap();
    assert_eq!(
        status(&engine, id, "prod").await,
        RunStatus::AwaitingApproval
    );
    let two = without_stage(&h, "prod");
    let held = engine.hold_starts().await;
    assert_eq!(engine.refuse_config(&two).await, None);
    engine.replace_config(two, &held);
    drop(held);
    settle(&engine).await.unwrap();

    assert_eq!(status(&engine, id, "prod").await, RunStatus::Superseded);
    let states: Vec<(&str, bool)> = h.fakes.with(|w| {
        w.reports
            .iter()
            .filter(|r| r.release == id && r.environment == "prod")
            .map(|r| (r.state.as_str(), r.summary))
            .collect()
    });
    // The commit's status is left to the stages the release goes on through.
    assert_eq!(states, [("queued", true), ("inactive", false)]);
    let effects = engine.reads().effects_of(id, "prod").await.unwrap();
    let failed: Vec<_> = effects
        .iter()
        .filter(|e| e.status != EffectStatus::Succeeded)
        .collect();
    assert!(failed.is_empty(), "{failed:?}");
}

/// A reload removes gamma before release 1 reached it (its gamma run ends: superseded, the
/// stage removed), and a later one adds gamma back while the release awaits approval for prod:
/// the gamma run waits again under its next attempt, and the release goes through gamma before
/// prod, as the configuration says. Without it, prod would have taken the ended run as the
/// release's end.
#[tokio::test]
async fn a_release_on_its_way_goes_through_a_stage_removed_and_added_back() {
    let h = Harness::new();
    let full = config_in(h.dir.path());
    let two = without_stage(&h, "gamma");
    let engine = h.engine(None).await;
    let Ingested::Recorded(id) = engine
        .record_release(&release(1), &delivery("push-1"))
        .await
        .unwrap()
    else {
        panic!("not recorded")
    };

    engine.replace_config(two, &engine.hold_starts().await);
    settle(&engine).await.unwrap();
    let ended = run(&engine, id, "gamma").await;
    assert_eq!(
        (ended.status, &ended.reason),
        (RunStatus::Superseded, &Reason::StageRemoved)
    );
    assert_eq!(
        status(&engine, id, "prod").await,
        RunStatus::AwaitingApproval
    );

    engine.replace_config(full, &engine.hold_starts().await);
    settle(&engine).await.unwrap();
    let gamma = run(&engine, id, "gamma").await;
    assert_eq!((gamma.status, gamma.attempt), (RunStatus::Succeeded, 2));
    assert_eq!(
        status(&engine, id, "prod").await,
        RunStatus::AwaitingApproval
    );
    engine
        .record_approval(&approval(id, "alice", Decision::Approve), &delivery("a1"))
        .await
        .unwrap();
    settle(&engine).await.unwrap();
    assert_eq!(status(&engine, id, "prod").await, RunStatus::Baking);
    let deployed: Vec<String> = h.fakes.with(|w| {
        w.deployed
            .iter()
            .map(|(stage, _, _)| stage.clone())
            .collect()
    });
    assert_eq!(deployed, ["beta", "gamma", "prod", "prod"]);
    let events = engine.reads().events("backend", 200).await.unwrap();
    assert!(
        events.iter().any(|e| e.kind == "run-reopened"
            && e.stage.as_deref() == Some("gamma")
            && e.detail
                .starts_with(&format!("{id} goes through gamma, a stage added back"))),
        "{events:?}"
    );
}

/// A reload adds gamma between beta and prod after release 1 was recorded under beta → prod
/// (so it has no gamma run) and before it started: it goes through gamma before prod, as a
/// release recorded now does. Without a gamma run, prod would wait for it forever. (The
/// planner's tests cover releases further along: checking, awaiting approval, deploying.)
#[tokio::test]
async fn a_release_on_its_way_goes_through_a_stage_a_reload_added() {
    let h = Harness::new();
    let full = config_in(h.dir.path());
    let two = without_stage(&h, "gamma");
    assert_eq!(two.pipeline("backend").unwrap().stages.len(), 2);
    let store = tollgate::store::Store::open(&h.db_url()).await.unwrap();
    let engine = tollgate::engine::Engine::new(store, two, h.fakes.ports(), h.clock.clone());
    let Ingested::Recorded(id) = engine
        .record_release(&release(1), &delivery("push-1"))
        .await
        .unwrap()
    else {
        panic!("not recorded")
    };
    let runs = engine.reads().recent_runs("backend", 5).await.unwrap();
    let stages: Vec<String> = runs[0].1.iter().map(|r| r.stage.to_string()).collect();
    assert_eq!(stages, ["beta", "prod"]);

    engine.replace_config(full, &engine.hold_starts().await);
    settle(&engine).await.unwrap();
    assert_eq!(status(&engine, id, "gamma").await, RunStatus::Succeeded);
    assert_eq!(
        status(&engine, id, "prod").await,
        RunStatus::AwaitingApproval
    );
    let deployed: Vec<String> = h.fakes.with(|w| {
        w.deployed
            .iter()
            .map(|(stage, _, _)| stage.clone())
            .collect()
    });
    assert_eq!(deployed, ["beta", "gamma"]);
    let events = engine.reads().events("backend", 200).await.unwrap();
    assert!(
        events.iter().any(|e| e.kind == "run-added"
            && e.stage.as_deref() == Some("gamma")
            && e.detail == format!("{id} goes through gamma, a stage added after it was recorded")),
        "{events:?}"
    );
}

/// Records release `n` (delivery `push-n`), which must be new.
async fn recorded(engine: &tollgate::engine::Engine, n: u32) -> ReleaseId {
    match engine
        .record_release(&release(n), &delivery(&format!("push-{n}")))
        .await
        .unwrap()
    {
        Ingested::Recorded(id) => id,
        Ingested::Duplicate => panic!("release {n} was recorded before"),
    }
}

//! Whole promotions: the happy path, a failing test, a bad bake, supersede, idempotency.

use std::collections::{BTreeMap, BTreeSet};

use super::sim::*;
use crate::config::Pipeline;
use crate::domain::{
    Action, BadMark, Effect, EffectKind, EffectOutput, EffectStatus, Phase, Reason, ReleaseId,
    ReportState, RunStatus as S, idempotency_key,
};

/// Tests, alarms, bakes and two waves where it matters; prod needs two of three approvals.
fn rich_pipeline() -> Pipeline {
    let mut cfg = three_stages();
    let [beta, gamma, prod] = &mut cfg.stages[..] else {
        unreachable!()
    };
    beta.before = vec!["unit".into()];
    beta.after = vec!["smoke".into()];
    beta.bake = secs(300);
    beta.alarms = vec!["beta-5xx".into()];
    beta.min_datapoints = 1;
    gamma.after = vec!["smoke".into(), "load".into()];
    gamma.bake = secs(600);
    gamma.targets = vec![target("gamma", 0), target("gamma", 1)];
    gamma.alarms = vec!["gamma-5xx".into()];
    gamma.min_datapoints = 1;
    prod.before = vec!["change-record".into()];
    prod.after = vec!["smoke".into()];
    prod.bake = secs(1800);
    prod.targets = vec![target("prod", 0), target("prod", 1)];
    prod.alarms = vec!["prod-5xx".into(), "prod-latency".into()];
    prod.min_datapoints = 2;
    prod.approval = Some(approval(2));
    cfg
}

const STAGES: [&str; 3] = ["beta", "gamma", "prod"];

fn deploys_of(sim: &Sim, release: ReleaseId, stage: &str) -> usize {
    sim.started
        .iter()
        .filter(|e| e.release == release && e.stage == stage)
        .filter(|e| matches!(e.kind, EffectKind::Deploy { .. }))
        .count()
}

#[test]
fn a_release_goes_beta_gamma_approval_prod_and_every_history_records_it() {
    let mut sim = Sim::new(rich_pipeline());
    sim.auto_approve = false;
    let r = sim.new_release();
    sim.drive_to(r, "prod", S::AwaitingApproval);
    sim.settle();
    assert_eq!(sim.status(r, "beta"), S::Succeeded);
    assert_eq!(sim.status(r, "gamma"), S::Succeeded);
    assert_eq!(sim.history("beta"), vec![r]);
    assert_eq!(sim.history("gamma"), vec![r]);
    assert_eq!(sim.history("prod"), Vec::<ReleaseId>::new());
    assert_eq!(
        deploys_of(&sim, r, "prod"),
        0,
        "nothing reaches prod unapproved"
    );

    sim.approve(r, "prod", "ana");
    sim.settle();
    assert_eq!(sim.status(r, "prod"), S::AwaitingApproval);
    sim.approve(r, "prod", "bo");
    sim.drive_to(r, "prod", S::Succeeded);
    sim.drive_to_rest();

    for stage in STAGES {
        assert_eq!(sim.status(r, stage), S::Succeeded);
        assert_eq!(sim.reason(r, stage), Reason::Succeeded);
        assert_eq!(sim.history(stage), vec![r]);
        let success = sim.key(
            r,
            stage,
            EffectKind::Report {
                state: ReportState::Success,
            },
        );
        assert!(sim.effect(&success).is_some(), "{stage} reported");
    }
    assert_eq!(deploys_of(&sim, r, "beta"), 1);
    assert_eq!(deploys_of(&sim, r, "gamma"), 2);
    assert_eq!(deploys_of(&sim, r, "prod"), 2);
    let order: Vec<&str> = sim
        .started
        .iter()
        .filter(|e| matches!(e.kind, EffectKind::Deploy { .. }))
        .map(|e| e.stage.as_str())
        .collect();
    assert_eq!(order, ["beta", "gamma", "gamma", "prod", "prod"]);

    sim.auto_approve = true;
    let r2 = sim.promote();
    for stage in STAGES {
        assert_eq!(sim.history(stage), vec![r, r2]);
    }
}

#[test]
fn a_failing_gamma_test_stops_the_release_before_prod() {
    let mut cfg = rich_pipeline();
    cfg.stages[1].before = vec!["integration".into()];
    let mut sim = Sim::new(cfg);
    let r = sim.new_release();
    sim.drive_to(r, "gamma", S::Checking);
    sim.settle();
    let integration = sim.key(
        r,
        "gamma",
        EffectKind::RunTest {
            test: "integration".into(),
            phase: Phase::Before,
        },
    );
    sim.fail(&integration, "3 of 120 cases failed");
    sim.drive_to_rest();

    assert_eq!(sim.status(r, "beta"), S::Succeeded);
    assert_eq!(sim.status(r, "gamma"), S::Failed);
    assert_eq!(
        sim.reason(r, "gamma"),
        Reason::TestFailed {
            test: "integration".into(),
            phase: Phase::Before,
            detail: "3 of 120 cases failed".into()
        }
    );
    assert_eq!(sim.status(r, "prod"), S::Failed);
    assert_eq!(
        sim.reason(r, "prod"),
        Reason::PreviousStageEnded {
            stage: "gamma".into(),
            status: S::Failed
        }
    );
    assert_eq!(deploys_of(&sim, r, "gamma"), 0);
    assert!(
        sim.all_effects().all(|e| e.stage != "prod"),
        "prod never hears of it"
    );
    assert_eq!(sim.history("beta"), vec![r]);
    assert!(sim.history("gamma").is_empty() && sim.history("prod").is_empty());
    assert!(
        sim.release(r).bad.is_none(),
        "it failed; it was never rolled back"
    );
}

#[test]
fn a_failing_gamma_smoke_test_rolls_gamma_back_and_prod_keeps_the_previous_release() {
    let mut sim = Sim::new(rich_pipeline());
    let r1 = sim.promote();
    let r2 = sim.new_release();
    sim.drive_to(r2, "gamma", S::Verifying);
    sim.settle();
    let smoke = sim.key(
        r2,
        "gamma",
        EffectKind::RunTest {
            test: "smoke".into(),
            phase: Phase::After,
        },
    );
    sim.fail(&smoke, "GET /health: 503");
    sim.drive_to_rest();

    assert_eq!(sim.status(r2, "gamma"), S::RolledBack);
    assert_eq!(sim.history("gamma"), vec![r1, r1]);
    assert_eq!(sim.history("prod"), vec![r1]);
    assert_eq!(sim.status(r2, "prod"), S::Failed);
    assert!(
        matches!(sim.reason(r2, "prod"), Reason::BadRelease { stage, .. } if stage == "gamma"),
        "{:?}",
        sim.reason(r2, "prod")
    );
    assert_eq!(deploys_of(&sim, r2, "prod"), 0);
}

#[test]
fn an_alarm_during_the_prod_bake_rolls_prod_back_to_the_previous_release() {
    let mut sim = Sim::new(rich_pipeline());
    let r1 = sim.promote();
    let r2 = sim.new_release();
    sim.drive_to(r2, "prod", S::Baking);
    sim.advance(secs(120));
    sim.alarm("prod", "prod-latency", true);
    let fired_at = sim.now;
    sim.settle();
    assert_eq!(sim.status(r2, "prod"), S::RollingBack);
    sim.drive_to_rest();

    assert_eq!(sim.status(r2, "prod"), S::RolledBack);
    let rollbacks: Vec<&Effect> = sim
        .started
        .iter()
        .filter(|e| matches!(e.kind, EffectKind::Rollback { .. }))
        .collect();
    assert_eq!(rollbacks.len(), 2, "both prod waves go back");
    for e in &rollbacks {
        assert_eq!((e.release, e.stage.as_str()), (r2, "prod"));
        assert!(matches!(e.kind, EffectKind::Rollback { target, .. } if target == r1));
    }
    assert_eq!(
        sim.release(r2).bad,
        Some(BadMark {
            stage: "prod".into(),
            reason: Reason::AlarmFired {
                alarm: "prod-latency".into(),
                at: fired_at
            },
        })
    );
    assert_eq!(sim.history("prod"), vec![r1, r1]);
    assert_eq!(sim.snap.last_good("prod"), Some(r1));
    // Earlier stages keep running r2: only prod saw the alarm.
    assert_eq!(sim.history("gamma"), vec![r1, r2]);
    assert_eq!(sim.status(r2, "gamma"), S::Succeeded);

    // A later release is unaffected and goes all the way; r2 never comes back.
    sim.advance(secs(3600));
    let r3 = sim.promote();
    assert!(sim.release(r3).bad.is_none());
    for stage in STAGES {
        assert_eq!(sim.status(r3, stage), S::Succeeded);
    }
    assert_eq!(sim.history("prod"), vec![r1, r1, r3]);
    assert_eq!(deploys_of(&sim, r2, "prod"), 2, "r2 was not deployed again");
}

#[test]
fn a_newer_release_supersedes_an_older_one_waiting_for_approval() {
    let mut sim = Sim::new(rich_pipeline());
    sim.auto_approve = false;
    let r1 = sim.new_release();
    sim.drive_to(r1, "prod", S::AwaitingApproval);
    sim.settle();
    sim.approve(r1, "prod", "ana");
    let r2 = sim.new_release();
    sim.drive_to(r2, "gamma", S::Succeeded);
    sim.settle();
    assert_eq!(sim.status(r1, "prod"), S::Superseded);
    assert_eq!(sim.reason(r1, "prod"), Reason::SupersededBy { release: r2 });

    // A stale click on the old request deploys nothing.
    sim.approve(r1, "prod", "bo");
    sim.settle();
    assert_eq!(sim.status(r1, "prod"), S::Superseded);
    assert_eq!(deploys_of(&sim, r1, "prod"), 0);

    sim.drive_to(r2, "prod", S::AwaitingApproval);
    sim.approve(r2, "prod", "bo");
    sim.approve(r2, "prod", "cy");
    sim.drive_to(r2, "prod", S::Succeeded);
    assert_eq!(sim.history("prod"), vec![r2]);
    let inactive = sim.key(
        r1,
        "prod",
        EffectKind::Report {
            state: ReportState::Inactive,
        },
    );
    assert!(sim.effect(&inactive).is_some(), "GitHub shows it inactive");
}

/// Settles, then checks that planning again without new facts changes and starts nothing new.
fn settle_and_replan(sim: &mut Sim, seen: &mut BTreeMap<String, Effect>) {
    sim.settle();
    let p = sim.plan();
    assert_eq!(p, sim.plan(), "planning is deterministic");
    assert!(sim.changes(&p.actions).is_empty(), "{:?}", p.actions);
    for a in &p.actions {
        let Action::Start(e) = a else { continue };
        assert!(
            sim.is_pending(&e.key),
            "re-planning started a new key {}",
            e.key
        );
    }
    for e in &sim.starts_emitted {
        let prev = seen.entry(e.key.to_string()).or_insert_with(|| e.clone());
        assert_eq!(prev, e, "one key, two different effects");
    }
}

#[test]
fn every_effect_of_a_full_promotion_has_its_own_key_and_replanning_adds_none() {
    let mut sim = Sim::new(rich_pipeline());
    let mut seen = BTreeMap::new();
    let r1 = sim.new_release();
    let r2 = sim.new_release();
    for _ in 0..1000 {
        settle_and_replan(&mut sim, &mut seen);
        let all_done = [r1, r2]
            .iter()
            .all(|r| STAGES.iter().all(|s| sim.status(*r, s).is_terminal()));
        if all_done && sim.pending().is_empty() {
            break;
        }
        if let Some(e) = sim.pending().first() {
            let key = e.key.clone();
            sim.succeed(&key);
        } else if let Some(r) = [r1, r2]
            .into_iter()
            .find(|r| sim.status(*r, "prod") == S::AwaitingApproval)
        {
            sim.approve(r, "prod", "ana");
            sim.approve(r, "prod", "cy");
        } else {
            sim.now = sim.last_plan.wake_at.expect("something to wait for");
        }
    }
    // r1 was superseded by r2 in beta before it deployed; r2 went all the way.
    for stage in STAGES {
        assert_eq!(sim.status(r2, stage), S::Succeeded);
    }

    let keys: BTreeSet<&crate::domain::EffectKey> = sim.all_effects().map(|e| &e.key).collect();
    assert_eq!(keys.len(), sim.all_effects().count(), "one record per key");
    let effects: BTreeSet<String> = seen.values().map(|e| format!("{e:?}")).collect();
    assert_eq!(
        effects.len(),
        seen.len(),
        "distinct effects have distinct keys"
    );
    for (key, e) in &seen {
        let derived = idempotency_key(PIPELINE, e.release, &e.stage, e.attempt, &e.kind);
        assert_eq!(key, &derived);
        assert!(key.starts_with(&format!("{PIPELINE}/r{}/", e.release.0)));
    }
    assert!(sim.all_effects().all(|e| e.status != EffectStatus::Pending));
    assert_eq!(deploys_of(&sim, r2, "prod"), 2, "each wave deployed once");
}

// ----- a stage added by a reload ------------------------------------------------------------

/// beta → prod, then (a reload) beta → gamma → prod with the same beta and prod.
fn two_then_three() -> (Pipeline, Pipeline) {
    let three = three_stages();
    let mut two = three.clone();
    two.stages.retain(|s| s.name != "gamma");
    (two, three)
}

/// The order in which `release` began deploying in each stage.
fn deploy_order(sim: &Sim, release: ReleaseId) -> Vec<String> {
    let mut order: Vec<String> = Vec::new();
    for e in &sim.started {
        if e.release == release
            && matches!(e.kind, EffectKind::Deploy { .. })
            && !order.contains(&e.stage.to_string())
        {
            order.push(e.stage.to_string());
        }
    }
    order
}

#[test]
fn a_release_on_its_way_goes_through_a_stage_added_before_the_one_it_waits_for() {
    let (two, three) = two_then_three();
    let mut sim = Sim::new(two);
    let r = sim.new_release();
    sim.drive_to(r, "beta", S::Baking);
    sim.reload(three);
    let plan = sim.plan();
    assert!(
        plan.actions.contains(&Action::AddRun {
            release: r,
            stage: "gamma".into()
        }),
        "{:?}",
        plan.actions
    );
    // Without the run, prod would wait for gamma forever (the driver stops: stuck).
    sim.drive_to(r, "prod", S::Succeeded);
    assert_eq!(deploy_order(&sim, r), ["beta", "gamma", "prod"]);
    assert_eq!(sim.history("gamma"), vec![r]);
    assert_eq!(sim.status(r, "gamma"), S::Succeeded);
}

#[test]
fn a_release_deploying_past_the_added_stage_keeps_its_course_and_a_failed_one_gets_no_run() {
    let (two, three) = two_then_three();
    let mut sim = Sim::new(two);
    // A release whose image never appeared: failed, its runs still waiting.
    let failed = sim.new_release();
    sim.settle();
    sim.fail(&sim.resolve_key(failed), "no image");
    sim.settle();
    assert!(sim.release(failed).failed.is_some());
    let r = sim.new_release();
    sim.drive_to(r, "prod", S::Deploying);
    sim.reload(three);
    let plan = sim.plan();
    let added: Vec<&Action> = plan
        .actions
        .iter()
        .filter(|a| matches!(a, Action::AddRun { .. }))
        .collect();
    assert!(added.is_empty(), "{added:?}");
    sim.drive_to(r, "prod", S::Succeeded);
    sim.drive_to_rest();
    assert_eq!(deploy_order(&sim, r), ["beta", "prod"]);
    assert!(sim.snap.runs.iter().all(|x| x.stage != "gamma"));
}

/// Prod awaited approval when gamma was added before it: the approval given then does not
/// send the release to prod before gamma has run and succeeded.
#[test]
fn a_release_awaiting_approval_goes_through_a_stage_added_before_it_first() {
    let (two, three) = two_then_three();
    let mut sim = Sim::new(two);
    sim.auto_approve = false;
    let r = sim.new_release();
    sim.drive_to(r, "prod", S::AwaitingApproval);
    sim.settle();
    sim.reload(three);
    sim.settle();
    let gamma = sim.status(r, "gamma");
    assert!(
        matches!(gamma, S::Queued | S::Checking | S::Deploying),
        "{gamma:?}"
    );
    sim.approve(r, "prod", "ana");
    sim.settle();
    assert_eq!(deploys_of(&sim, r, "prod"), 0, "prod before gamma");
    sim.auto_approve = true;
    sim.drive_to(r, "prod", S::Succeeded);
    assert_eq!(deploy_order(&sim, r), ["beta", "gamma", "prod"]);
}

/// Gamma was checking when a stage was inserted before it: gamma deploys only after it.
#[test]
fn a_release_checking_in_the_next_stage_goes_through_a_stage_added_before_it_first() {
    let three = three_stages();
    let mut sim = Sim::new(three.clone());
    let r = sim.new_release();
    sim.drive_to(r, "gamma", S::Checking);
    let mut four = three;
    four.stages.insert(1, stage("staging"));
    sim.reload(four);
    sim.drive_to(r, "prod", S::Succeeded);
    assert_eq!(deploy_order(&sim, r), ["beta", "staging", "gamma", "prod"]);
}

/// Gamma renamed to staging while the release waits in gamma for approval: the release goes
/// through staging, its run in the stage that is gone ends, and the release finishes.
#[test]
fn a_run_in_a_stage_a_reload_removed_ends_and_the_release_finishes() {
    let mut cfg = three_stages();
    cfg.stages[1].approval = Some(approval(1));
    let mut sim = Sim::new(cfg.clone());
    sim.auto_approve = false;
    let r = sim.new_release();
    sim.drive_to(r, "gamma", S::AwaitingApproval);
    sim.settle();
    let mut renamed = cfg;
    renamed.stages[1].name = "staging".into();
    sim.reload(renamed);
    sim.settle();
    assert_eq!(sim.status(r, "gamma"), S::Superseded);
    assert_eq!(sim.reason(r, "gamma"), Reason::StageRemoved);
    sim.auto_approve = true;
    sim.drive_to(r, "prod", S::Succeeded);
    sim.drive_to_rest();
    assert_eq!(deploy_order(&sim, r), ["beta", "staging", "prod"]);
    // Once prod runs a newer release, this one has nothing left to do.
    sim.promote();
    assert!(sim.retired.contains(&r), "the release finished");
}

/// Gamma removed while the release bakes in beta (its gamma run ends), then added back before
/// the release leaves beta: the run waits again, and the release goes through gamma to prod.
/// Without it, prod would take gamma's ended run as the release's end there.
#[test]
fn a_release_on_its_way_goes_through_a_stage_removed_and_added_back() {
    let (two, three) = two_then_three();
    let mut sim = Sim::new(three.clone());
    let r = sim.new_release();
    sim.drive_to(r, "beta", S::Baking);
    sim.reload(two);
    sim.settle();
    assert_eq!(sim.status(r, "gamma"), S::Superseded);
    assert_eq!(sim.reason(r, "gamma"), Reason::StageRemoved);
    sim.reload(three);
    let plan = sim.plan();
    assert!(
        plan.actions.contains(&Action::ReopenRun {
            release: r,
            stage: "gamma".into()
        }),
        "{:?}",
        plan.actions
    );
    let prod_ended = plan.actions.iter().any(|a| {
        matches!(a, Action::Transition { release, stage, .. } if *release == r && stage == "prod")
    });
    assert!(!prod_ended, "{:?}", plan.actions);
    sim.drive_to(r, "prod", S::Succeeded);
    assert_eq!(deploy_order(&sim, r), ["beta", "gamma", "prod"]);
    assert_eq!(sim.status(r, "gamma"), S::Succeeded);
    assert_eq!(sim.run(r, "gamma").attempt, 2);
}

/// Gamma and prod, the last two stages, removed together while the release deploys in beta
/// (a configuration pushed by mistake), then added back together: both runs wait again, and
/// the release goes through both.
#[test]
fn a_release_goes_through_the_last_stages_removed_and_added_back_together() {
    let three = three_stages();
    let mut one = three.clone();
    one.stages.retain(|s| s.name == "beta");
    let mut sim = Sim::new(three.clone());
    let r = sim.new_release();
    sim.drive_to(r, "beta", S::Deploying);
    sim.reload(one);
    sim.settle();
    assert_eq!(sim.status(r, "beta"), S::Deploying);
    assert_eq!(sim.reason(r, "gamma"), Reason::StageRemoved);
    assert_eq!(sim.reason(r, "prod"), Reason::StageRemoved);
    sim.reload(three);
    sim.drive_to(r, "prod", S::Succeeded);
    assert_eq!(deploy_order(&sim, r), ["beta", "gamma", "prod"]);
}

#[test]
fn a_release_still_in_the_last_stage_goes_on_to_a_stage_added_after_it() {
    let (two, _) = two_then_three();
    let mut sim = Sim::new(two.clone());
    let done = sim.promote();
    let r = sim.new_release();
    sim.drive_to(r, "prod", S::Baking);
    let mut more = two;
    more.stages.push(stage("prod-eu"));
    sim.reload(more);
    sim.settle();
    sim.drive_to(r, "prod-eu", S::Succeeded);
    assert_eq!(deploy_order(&sim, r), ["beta", "prod", "prod-eu"]);
    // The release that had already finished is not sent to the new stage.
    assert_eq!(deploy_order(&sim, done), ["beta", "prod"]);
    sim.drive_to_rest();
    assert_eq!(sim.history("prod-eu"), vec![r]);
}

// ----- a deploy that began somewhere the configuration no longer puts its wave -------------

/// Where wave `wave` of `stage` began, as the engine records it with the deploy's intent.
fn began(sim: &mut Sim, release: ReleaseId, stage: &str, wave: usize) -> crate::domain::DeployedTo {
    let key = sim.key(release, stage, EffectKind::Deploy { wave });
    let t = target(stage, wave);
    let place = crate::domain::DeployedTo {
        account: t.account,
        account_id: "444444444444".into(),
        region: t.region,
        name: format!("{stage}-deploy"),
        kind: Some(crate::domain::DeployKind::CloudFormation),
    };
    let rec = sim.snap.effects.iter_mut().find(|e| e.key == key).unwrap();
    rec.place = Some(place.clone());
    place
}

/// The first release in beta (nothing to roll back to): its deploy, performed again after a
/// restart, refused to go where the configuration now puts the wave. The stage halts naming
/// where the deploy began (without the halt, beta failed unpaused and the next release went
/// on to deploy at the new place).
#[test]
fn a_refused_resumed_deploy_with_nothing_to_roll_back_to_halts_the_stage() {
    let mut sim = Sim::new(three_stages());
    let r = sim.new_release();
    sim.drive_to(r, "beta", S::Deploying);
    sim.settle();
    let there = began(&mut sim, r, "beta", 0);
    let key = sim.key(r, "beta", EffectKind::Deploy { wave: 0 });
    let output = EffectOutput::Misplaced {
        began: Box::new(there),
        now: None,
    };
    sim.finish(
        &key,
        EffectStatus::Failed,
        "began at … and was interrupted",
        output,
    );
    sim.settle();
    assert_eq!(sim.status(r, "beta"), S::Failed);
    let Reason::DeployFailed { region, .. } = sim.reason(r, "beta") else {
        panic!("{:?}", sim.reason(r, "beta"))
    };
    assert_eq!(region, "eu-west-1");
    assert!(sim.snap.stages[0].paused.is_some(), "beta is paused");
}

/// Prod's second wave was being deployed when a controller started with a file without it:
/// that deploy is performed again (to refuse), not abandoned while the run goes on to verify
/// and bake as if the wave had never begun; refused, the run rolls back.
#[test]
fn a_deploy_begun_in_a_wave_the_configuration_dropped_is_not_abandoned() {
    let mut cfg = three_stages();
    cfg.stages[2].targets = vec![target("prod", 0), target("prod", 1)];
    let mut sim = Sim::new(cfg.clone());
    sim.promote();
    let r = sim.new_release();
    sim.drive_to(r, "prod", S::Deploying);
    sim.settle();
    let wave0 = sim.key(r, "prod", EffectKind::Deploy { wave: 0 });
    sim.succeed(&wave0);
    sim.settle();
    let wave1 = sim.key(r, "prod", EffectKind::Deploy { wave: 1 });
    assert!(sim.is_pending(&wave1));
    let there = began(&mut sim, r, "prod", 1);
    let mut one = cfg;
    one.stages[2].targets.truncate(1);
    sim.reload(one);
    let plan = sim.plan();
    assert!(
        plan.actions
            .iter()
            .any(|a| matches!(a, Action::Start(e) if e.key.as_str() == wave1)),
        "{:?}",
        plan.actions
    );
    assert!(
        !plan
            .actions
            .iter()
            .any(|a| matches!(a, Action::Abandon { .. }))
    );
    sim.settle();
    assert_eq!(sim.status(r, "prod"), S::Deploying);
    let output = EffectOutput::Misplaced {
        began: Box::new(there),
        now: None,
    };
    sim.finish(
        &wave1,
        EffectStatus::Failed,
        "no longer has a wave 2",
        output,
    );
    sim.settle();
    assert_eq!(sim.status(r, "prod"), S::RollingBack);
}

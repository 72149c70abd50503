//! One test per transition of a run's status: the plan that makes it, and what follows.

use chrono::{DateTime, TimeZone, Utc};

use super::sim::*;
use crate::config::{AlarmDelay, InsufficientData};
use crate::domain::{
    Action, AlarmProblem, AlarmState, DataGap, Effect, EffectKind, EffectOutput, EffectStatus,
    NotifyEvent, Phase, Reason, ReleaseId, ReportState, RequestState, RunStatus as S,
};

fn test(name: &str, phase: Phase) -> EffectKind {
    EffectKind::RunTest {
        test: name.into(),
        phase,
    }
}

fn with_beta(f: impl FnOnce(&mut crate::config::Stage)) -> Sim {
    let mut cfg = three_stages();
    f(&mut cfg.stages[0]);
    Sim::new(cfg)
}

/// A stage with an alarm, a ten-minute bake and one clean poll needed.
fn baking_beta(sim_cfg: impl FnOnce(&mut crate::config::Stage)) -> Sim {
    with_beta(|s| {
        s.bake = secs(600);
        s.alarms = vec!["beta-5xx".into()];
        s.min_datapoints = 1;
        sim_cfg(s);
    })
}

/// r1 promoted everywhere, r2 baking in beta.
fn second_release_baking(sim: &mut Sim) -> (ReleaseId, ReleaseId) {
    let r1 = sim.promote();
    let r2 = sim.new_release();
    sim.drive_to(r2, "beta", S::Baking);
    (r1, r2)
}

// ----- Waiting ---------------------------------------------------------------------------------

#[test]
fn waiting_to_queued_once_the_artifact_is_resolved() {
    let mut sim = Sim::new(three_stages());
    let r = sim.new_release();
    sim.settle();
    let p = sim.plan();
    assert!(transitions(&p).is_empty(), "{:?}", p.actions);
    assert_eq!(
        starts(&p),
        vec![Effect::new(PIPELINE, r, "", 0, EffectKind::ResolveArtifact)]
    );

    let key = sim.resolve_key(r);
    sim.succeed(&key);
    let p = sim.plan();
    assert_eq!(
        transitions(&p),
        vec![(r, "beta".into(), S::Queued, Reason::Queued)],
        "only the first stage queues"
    );
}

#[test]
fn waiting_to_superseded_when_superseded_in_the_previous_stage() {
    let mut sim = with_beta(|s| s.before = vec!["lint".into()]);
    let r1 = sim.resolved_release();
    sim.settle();
    assert_eq!(sim.status(r1, "beta"), S::Checking);
    let r2 = sim.resolved_release();
    let p = sim.plan();
    assert_eq!(
        transition_of(&p, r1, "beta"),
        Some((S::Superseded, Reason::SupersededBy { release: r2 }))
    );
    sim.step();
    let p = sim.plan();
    assert_eq!(
        transition_of(&p, r1, "gamma"),
        Some((
            S::Superseded,
            Reason::SupersededIn {
                stage: "beta".into()
            }
        ))
    );
    sim.settle();
    assert_eq!(sim.status(r1, "prod"), S::Superseded);
    assert_eq!(sim.status(r2, "beta"), S::Checking);
}

#[test]
fn waiting_to_failed_when_the_previous_stage_failed() {
    let mut sim = with_beta(|s| s.before = vec!["lint".into()]);
    let r = sim.resolved_release();
    sim.settle();
    let lint = sim.key(r, "beta", test("lint", Phase::Before));
    sim.fail(&lint, "exit status 1");
    sim.step();
    assert_eq!(sim.status(r, "beta"), S::Failed);
    let p = sim.plan();
    assert_eq!(
        transition_of(&p, r, "gamma"),
        Some((
            S::Failed,
            Reason::PreviousStageEnded {
                stage: "beta".into(),
                status: S::Failed
            }
        ))
    );
    sim.settle();
    assert_eq!(
        sim.reason(r, "prod"),
        Reason::PreviousStageEnded {
            stage: "gamma".into(),
            status: S::Failed
        }
    );
}

#[test]
fn waiting_to_failed_when_the_artifact_never_appears() {
    let mut sim = Sim::new(three_stages());
    let r = sim.new_release();
    sim.settle();
    let key = sim.resolve_key(r);
    sim.fail(&key, "no image shop:abc after 10m");
    let p = sim.plan();
    assert_eq!(
        p.actions,
        vec![Action::FailRelease {
            release: r,
            reason: "artifact not resolved: no image shop:abc after 10m".into()
        }]
    );
    sim.settle();
    for stage in ["beta", "gamma", "prod"] {
        assert_eq!(sim.status(r, stage), S::Failed);
        assert_eq!(
            sim.reason(r, stage),
            Reason::ReleaseFailed {
                why: "artifact not resolved: no image shop:abc after 10m".into()
            }
        );
    }
}

#[test]
fn waiting_to_failed_when_the_release_was_rolled_back_earlier() {
    let mut sim = baking_beta(|_| {});
    let (_, r2) = second_release_baking(&mut sim);
    sim.alarm("beta", "beta-5xx", true);
    sim.settle();
    let back = sim
        .pending()
        .into_iter()
        .find(|e| e.key.contains("/rollback-"));
    sim.succeed(&back.unwrap().key);
    // The plan that marks r2 bad also stops it where it has not gone yet.
    let p = sim.plan();
    assert_eq!(
        transition_of(&p, r2, "beta").map(|t| t.0),
        Some(S::RolledBack)
    );
    let (to, why) = transition_of(&p, r2, "gamma").unwrap();
    assert_eq!(to, S::Failed);
    assert!(
        matches!(&why, Reason::BadRelease { stage, cause }
            if stage == "beta" && matches!(**cause, Reason::AlarmFired { ref alarm, .. } if alarm == "beta-5xx")),
        "{why:?}"
    );
}

// ----- Queued --------------------------------------------------------------------------------

#[test]
fn queued_to_checking() {
    let mut sim = Sim::new(three_stages());
    let r = sim.resolved_release();
    sim.step();
    assert_eq!(sim.status(r, "beta"), S::Queued);
    let p = sim.plan();
    assert_eq!(
        transition_of(&p, r, "beta"),
        Some((S::Checking, Reason::RunningChecks))
    );
}

#[test]
fn queued_stays_queued_with_a_reason_while_paused() {
    let mut sim = Sim::new(three_stages());
    sim.pause_pipeline("release freeze");
    let r = sim.resolved_release();
    sim.step();
    let p = sim.plan();
    assert_eq!(transition_of(&p, r, "beta"), None);
    assert_eq!(
        notes_of(&p, r, "beta"),
        vec![Reason::PipelinePaused {
            reason: "release freeze".into()
        }]
    );
    sim.settle();
    assert_eq!(sim.status(r, "beta"), S::Queued);
    assert_eq!(
        sim.reason(r, "beta"),
        Reason::PipelinePaused {
            reason: "release freeze".into()
        }
    );

    sim.resume_pipeline();
    sim.pause_stage("beta", "investigating INC-42");
    let p = sim.plan();
    assert_eq!(transition_of(&p, r, "beta"), None);
    assert_eq!(
        notes_of(&p, r, "beta"),
        vec![Reason::StagePaused {
            reason: "investigating INC-42".into()
        }]
    );
    sim.settle();
    assert_eq!(sim.status(r, "beta"), S::Queued);

    sim.resume_stage("beta");
    let p = sim.plan();
    assert_eq!(transition_of(&p, r, "beta").map(|t| t.0), Some(S::Checking));
}

// ----- Checking ------------------------------------------------------------------------------

#[test]
fn checking_to_awaiting_approval_in_a_stage_with_approval() {
    let mut sim = Sim::new(three_stages());
    let r = sim.new_release();
    sim.drive_to(r, "prod", S::Checking);
    let p = sim.plan();
    assert_eq!(
        transition_of(&p, r, "prod"),
        Some((
            S::AwaitingApproval,
            Reason::AwaitingApproval {
                approved: 0,
                needed: 1,
                expires_at: sim.now + chrono::Duration::hours(4),
                request: RequestState::Sending
            }
        ))
    );
    sim.step();
    let p = sim.plan();
    let request = Effect::new(
        PIPELINE,
        r,
        "prod",
        1,
        EffectKind::RequestApproval { round: 0 },
    );
    assert!(starts(&p).contains(&request), "{:?}", p.actions);
}

#[test]
fn checking_runs_the_before_tests_in_parallel_then_deploys() {
    let mut sim = with_beta(|s| s.before = vec!["lint".into(), "unit".into()]);
    let r = sim.new_release();
    sim.drive_to(r, "beta", S::Checking);
    let p = sim.plan();
    let lint = Effect::new(PIPELINE, r, "beta", 1, test("lint", Phase::Before));
    let unit = Effect::new(PIPELINE, r, "beta", 1, test("unit", Phase::Before));
    assert!(starts(&p).contains(&lint) && starts(&p).contains(&unit));
    assert_eq!(transition_of(&p, r, "beta"), None);
    sim.settle();

    sim.succeed(&lint.key);
    assert_eq!(transition_of(&sim.plan(), r, "beta"), None);
    sim.succeed(&unit.key);
    assert_eq!(
        transition_of(&sim.plan(), r, "beta"),
        Some((S::Deploying, Reason::Deploying { wave: 1, waves: 1 }))
    );
}

#[test]
fn checking_to_failed_when_a_before_test_fails() {
    let mut sim = with_beta(|s| s.before = vec!["lint".into()]);
    let r = sim.new_release();
    sim.drive_to(r, "beta", S::Checking);
    sim.settle();
    let lint = sim.key(r, "beta", test("lint", Phase::Before));
    sim.fail(&lint, "exit status 1");
    assert_eq!(
        transition_of(&sim.plan(), r, "beta"),
        Some((
            S::Failed,
            Reason::TestFailed {
                test: "lint".into(),
                phase: Phase::Before,
                detail: "exit status 1".into()
            }
        ))
    );
    sim.settle();
    let deploy = sim.key(r, "beta", EffectKind::Deploy { wave: 0 });
    assert!(sim.effect(&deploy).is_none(), "never deployed");
    let halted = sim.key(
        r,
        "beta",
        EffectKind::Notify {
            event: NotifyEvent::Halted,
        },
    );
    assert!(sim.effect(&halted).is_some(), "people are told");
}

#[test]
fn checking_waits_while_an_entry_alarm_fires_and_rechecks_every_minute() {
    let mut sim = with_beta(|s| s.alarms = vec!["beta-5xx".into()]);
    let r = sim.new_release();
    sim.drive_to(r, "beta", S::Checking);
    sim.settle();
    let check0 = sim.key(r, "beta", EffectKind::CheckAlarms { round: 0 });
    sim.succeed_in_alarm(&check0, "beta-5xx");
    sim.settle();
    assert_eq!(sim.status(r, "beta"), S::Checking);
    assert!(
        matches!(
            sim.reason(r, "beta"),
            Reason::AlarmsBlockEntry { problem: AlarmProblem::InAlarm { alarms }, every_secs: 60 }
                if alarms == ["beta-5xx"]
        ),
        "{:?}",
        sim.reason(r, "beta")
    );
    assert_eq!(
        sim.last_plan.wake_at,
        Some(sim.now + chrono::Duration::seconds(60))
    );

    sim.advance(secs(60));
    sim.settle();
    let check1 = sim.key(r, "beta", EffectKind::CheckAlarms { round: 1 });
    assert!(sim.is_pending(&check1));
    sim.succeed(&check1);
    assert_eq!(
        transition_of(&sim.plan(), r, "beta").map(|t| t.0),
        Some(S::Deploying)
    );
}

#[test]
fn checking_with_an_alarm_override_settles_while_the_deploy_is_blocked() {
    let mut sim = with_beta(|s| {
        s.alarms = vec!["beta-5xx".into()];
        s.before = vec!["lint".into()];
    });
    let r = sim.new_release();
    sim.snap.releases.get_mut(&r).unwrap().alarm_override = Some("hotfix INC-7".into());
    sim.drive_to(r, "beta", S::Checking);
    sim.settle();
    sim.pause_stage("beta", "hold");
    let check0 = sim.key(r, "beta", EffectKind::CheckAlarms { round: 0 });
    let lint = sim.key(r, "beta", test("lint", Phase::Before));
    sim.succeed_in_alarm(&check0, "beta-5xx");
    sim.succeed(&lint);
    sim.settle();
    assert_eq!(sim.status(r, "beta"), S::Checking);
    assert_eq!(
        sim.reason(r, "beta"),
        Reason::StagePaused {
            reason: "hold".into()
        }
    );
    sim.resume_stage("beta");
    sim.settle();
    assert_eq!(sim.status(r, "beta"), S::Deploying);
}

// ----- AwaitingApproval ------------------------------------------------------------------------

fn awaiting_prod(min: u32) -> (Sim, ReleaseId) {
    let mut cfg = three_stages();
    cfg.stages[2].approval = Some(approval(min));
    let mut sim = Sim::new(cfg);
    sim.auto_approve = false;
    let r = sim.new_release();
    sim.drive_to(r, "prod", S::AwaitingApproval);
    sim.settle();
    (sim, r)
}

#[test]
fn awaiting_approval_to_deploying_with_enough_distinct_approvers() {
    let (mut sim, r) = awaiting_prod(2);
    sim.approve(r, "prod", "ana");
    sim.settle();
    assert_eq!(sim.status(r, "prod"), S::AwaitingApproval);
    assert!(matches!(
        sim.reason(r, "prod"),
        Reason::AwaitingApproval {
            approved: 1,
            needed: 2,
            request: RequestState::Sending,
            ..
        }
    ));
    assert_eq!(
        sim.reason(r, "prod").describe(sim.now),
        "awaiting approval: 1 of 2, expires in 4h"
    );
    // The same person's decision twice (the store keeps one per attempt; were the record
    // there twice, it still counts once).
    let again = sim.snap.approvals.last().unwrap().clone();
    sim.snap.approvals.push(again);
    assert_eq!(
        transition_of(&sim.plan(), r, "prod"),
        None,
        "same person twice"
    );
    sim.approve(r, "gamma", "bo");
    assert_eq!(transition_of(&sim.plan(), r, "prod"), None, "another stage");
    sim.approve(r, "prod", "bo");
    assert_eq!(
        transition_of(&sim.plan(), r, "prod"),
        Some((S::Deploying, Reason::Deploying { wave: 1, waves: 1 }))
    );
}

#[test]
fn awaiting_approval_to_rejected() {
    let (mut sim, r) = awaiting_prod(2);
    sim.approve(r, "prod", "ana");
    sim.reject(r, "prod", "cy");
    assert_eq!(
        transition_of(&sim.plan(), r, "prod"),
        Some((S::Rejected, Reason::Rejected { by: "cy".into() }))
    );
    sim.settle();
    let halted = sim.key(
        r,
        "prod",
        EffectKind::Notify {
            event: NotifyEvent::Halted,
        },
    );
    assert!(sim.is_pending(&halted));
}

#[test]
fn awaiting_approval_to_expired() {
    let (mut sim, r) = awaiting_prod(1);
    let since = sim.run(r, "prod").since;
    let expires = since + chrono::Duration::hours(4);
    assert_eq!(sim.last_plan.wake_at, Some(expires));
    sim.now = expires - chrono::Duration::seconds(1);
    sim.settle();
    assert_eq!(sim.status(r, "prod"), S::AwaitingApproval);
    assert!(matches!(
        sim.reason(r, "prod"),
        Reason::AwaitingApproval { approved: 0, needed: 1, expires_at: at, .. } if at == expires
    ));
    assert_eq!(
        sim.reason(r, "prod").describe(sim.now),
        "awaiting approval: 0 of 1, expires in less than 1m"
    );
    sim.now = expires;
    assert_eq!(
        transition_of(&sim.plan(), r, "prod"),
        Some((
            S::Expired,
            Reason::ApprovalExpired {
                after_secs: 4 * 3600
            }
        ))
    );
}

#[test]
fn awaiting_approval_to_superseded_by_a_newer_release() {
    let (mut sim, r1) = awaiting_prod(1);
    let r2 = sim.new_release();
    sim.drive_to(r2, "gamma", S::Succeeded);
    assert_eq!(sim.status(r1, "prod"), S::AwaitingApproval);
    let p = sim.plan();
    assert_eq!(
        transition_of(&p, r1, "prod"),
        Some((S::Superseded, Reason::SupersededBy { release: r2 }))
    );
    assert_eq!(transition_of(&p, r2, "prod").map(|t| t.0), Some(S::Queued));
}

// ----- Deploying -------------------------------------------------------------------------------

#[test]
fn deploying_goes_wave_by_wave_then_verifies() {
    let mut sim = with_beta(|s| s.targets = vec![target("beta", 0), target("beta", 1)]);
    let r = sim.new_release();
    sim.drive_to(r, "beta", S::Deploying);
    let wave0 = Effect::new(PIPELINE, r, "beta", 1, EffectKind::Deploy { wave: 0 });
    let wave1 = Effect::new(PIPELINE, r, "beta", 1, EffectKind::Deploy { wave: 1 });
    let p = sim.plan();
    assert!(starts(&p).contains(&wave0));
    assert!(!starts(&p).contains(&wave1), "one wave at a time");
    sim.settle();

    sim.succeed(&wave0.key);
    let p = sim.plan();
    assert!(starts(&p).contains(&wave1));
    assert_eq!(
        notes_of(&p, r, "beta"),
        vec![Reason::Deploying { wave: 2, waves: 2 }]
    );
    assert_eq!(transition_of(&p, r, "beta"), None);
    sim.settle();

    sim.succeed(&wave1.key);
    assert_eq!(
        transition_of(&sim.plan(), r, "beta"),
        Some((S::Verifying, Reason::Verifying))
    );
}

#[test]
fn deploying_to_rolling_back_when_a_wave_fails_and_a_known_good_exists() {
    let mut sim = Sim::new(three_stages());
    let r1 = sim.promote();
    let r2 = sim.new_release();
    sim.drive_to(r2, "beta", S::Deploying);
    sim.settle();
    let deploy = sim.key(r2, "beta", EffectKind::Deploy { wave: 0 });
    sim.fail(&deploy, "stack UPDATE_FAILED");
    assert_eq!(
        transition_of(&sim.plan(), r2, "beta"),
        Some((
            S::RollingBack,
            Reason::DeployFailed {
                account: "acct-beta".into(),
                region: "eu-west-1".into(),
                detail: "stack UPDATE_FAILED".into()
            }
        ))
    );
    sim.step();
    let back = Effect::new(
        PIPELINE,
        r2,
        "beta",
        1,
        EffectKind::Rollback {
            wave: 0,
            target: r1,
        },
    );
    assert!(starts(&sim.plan()).contains(&back));
}

#[test]
fn deploying_to_failed_and_the_stage_paused_when_the_target_reads_back_as_drift() {
    let mut sim = Sim::new(three_stages());
    sim.promote();
    let r2 = sim.new_release();
    sim.drive_to(r2, "beta", S::Deploying);
    sim.settle();
    let deploy = sim.key(r2, "beta", EffectKind::Deploy { wave: 0 });
    let drift = EffectOutput::Drift {
        expected: "repo@sha256:2".into(),
        found: "repo@sha256:ff".into(),
    };
    sim.finish(&deploy, EffectStatus::Failed, "drift", drift);
    let p = sim.plan();
    let why = Reason::Drift {
        account: "acct-beta".into(),
        region: "eu-west-1".into(),
        expected: "repo@sha256:2".into(),
        found: "repo@sha256:ff".into(),
        rollback: false,
    };
    let said = why.describe(sim.now);
    assert_eq!(transition_of(&p, r2, "beta"), Some((S::Failed, why)));
    assert!(p.actions.contains(&Action::PauseStage {
        stage: "beta".into(),
        reason: said
    }));
    assert!(
        !starts(&p)
            .iter()
            .any(|e| matches!(e.kind, EffectKind::Rollback { .. })),
        "nothing is rolled back over someone else's change"
    );
    sim.settle();
    assert_eq!(sim.status(r2, "gamma"), S::Failed, "not promoted onward");
}

#[test]
fn rolling_back_to_failed_as_drift_when_the_restored_target_reads_back_otherwise() {
    let mut sim = baking_beta(|_| {});
    let (r1, r2) = second_release_baking(&mut sim);
    sim.request_rollback("beta", "ops");
    sim.settle();
    let back = sim.key(
        r2,
        "beta",
        EffectKind::Rollback {
            wave: 0,
            target: r1,
        },
    );
    let drift = EffectOutput::Drift {
        expected: "repo@sha256:1".into(),
        found: "repo@sha256:ff".into(),
    };
    sim.finish(&back, EffectStatus::Failed, "drift", drift);
    let p = sim.plan();
    assert!(
        matches!(
            transition_of(&p, r2, "beta"),
            Some((S::Failed, Reason::Drift { rollback: true, .. }))
        ),
        "{:?}",
        transition_of(&p, r2, "beta")
    );
    assert!(
        p.actions
            .iter()
            .any(|a| matches!(a, Action::PauseStage { stage, .. } if stage == "beta"))
    );
}

#[test]
fn deploying_to_failed_when_there_is_no_known_good_release() {
    let mut sim = Sim::new(three_stages());
    let r = sim.new_release();
    sim.drive_to(r, "beta", S::Deploying);
    sim.settle();
    let deploy = sim.key(r, "beta", EffectKind::Deploy { wave: 0 });
    sim.fail(&deploy, "boom");
    assert_eq!(
        transition_of(&sim.plan(), r, "beta"),
        Some((
            S::Failed,
            Reason::NoKnownGood {
                cause: Box::new(Reason::DeployFailed {
                    account: "acct-beta".into(),
                    region: "eu-west-1".into(),
                    detail: "boom".into()
                })
            }
        ))
    );
    sim.settle();
    assert!(
        !sim.started
            .iter()
            .any(|e| matches!(e.kind, EffectKind::Rollback { .. }))
    );
}

// ----- Verifying -------------------------------------------------------------------------------

#[test]
fn verifying_to_baking_when_the_after_tests_pass() {
    let mut sim = with_beta(|s| {
        s.after = vec!["smoke".into()];
        s.bake = secs(600);
    });
    let r = sim.new_release();
    sim.drive_to(r, "beta", S::Verifying);
    let smoke = Effect::new(PIPELINE, r, "beta", 1, test("smoke", Phase::After));
    assert!(starts(&sim.plan()).contains(&smoke));
    sim.settle();
    assert_eq!(sim.status(r, "beta"), S::Verifying);
    sim.succeed(&smoke.key);
    let until = sim.now + chrono::Duration::minutes(10);
    assert_eq!(
        transition_of(&sim.plan(), r, "beta"),
        Some((S::Baking, Reason::Baking { until }))
    );
}

#[test]
fn verifying_to_rolling_back_when_an_after_test_fails() {
    let mut sim = with_beta(|s| s.after = vec!["smoke".into()]);
    sim.promote();
    let r2 = sim.new_release();
    sim.drive_to(r2, "beta", S::Verifying);
    sim.settle();
    let smoke = sim.key(r2, "beta", test("smoke", Phase::After));
    sim.fail(&smoke, "GET /health: 503");
    assert_eq!(
        transition_of(&sim.plan(), r2, "beta"),
        Some((
            S::RollingBack,
            Reason::TestFailed {
                test: "smoke".into(),
                phase: Phase::After,
                detail: "GET /health: 503".into()
            }
        ))
    );
}

// ----- Baking ----------------------------------------------------------------------------------

#[test]
fn baking_to_succeeded_after_the_bake_time_and_a_clean_poll() {
    let mut sim = baking_beta(|_| {});
    let r = sim.new_release();
    sim.drive_to(r, "beta", S::Baking);
    let since = sim.run(r, "beta").since;
    let poll0 = Effect::new(PIPELINE, r, "beta", 1, EffectKind::PollAlarms { round: 0 });
    let p = sim.plan();
    assert!(starts(&p).contains(&poll0));
    assert_eq!(p.wake_at, Some(since + chrono::Duration::minutes(10)));
    sim.settle();
    assert_eq!(
        sim.reason(r, "beta"),
        Reason::Baking {
            until: since + chrono::Duration::minutes(10)
        }
    );

    sim.succeed(&poll0.key);
    sim.advance(secs(599));
    sim.settle();
    assert_eq!(sim.status(r, "beta"), S::Baking);
    sim.advance(secs(1));
    let p = sim.plan();
    assert_eq!(
        transition_of(&p, r, "beta"),
        Some((S::Succeeded, Reason::Succeeded))
    );
    assert!(p.actions.contains(&Action::RecordGood {
        stage: "beta".into(),
        release: r
    }));
}

/// Finishes the pending bake poll of `r` in beta with a clean reading of `beta-5xx` whose alarm
/// reports a breach within `reports_within_secs`.
fn read_beta_reporting_within(sim: &mut Sim, r: ReleaseId, reports_within_secs: Option<u64>) {
    let poll = bake_poll(sim, r);
    let mut readings = sim.readings("beta", 5, None);
    for reading in &mut readings {
        reading.reports_within_secs = reports_within_secs;
    }
    sim.succeed_with(&poll.key, readings);
}

/// CloudWatch puts an alarm in ALARM only once `DatapointsToAlarm` data points of `Period`
/// breach, so a breach that began as the bake time ran out is reported after it: the bake
/// holds that long (here 3 × 60 s, as the read says), and an alarm whose state changed within
/// the hold rolls the stage back before the release moves on.
#[test]
fn the_bake_holds_until_the_alarms_can_report_a_breach_begun_by_its_end() {
    let mut sim = baking_beta(|_| {});
    let (r1, r2) = second_release_baking(&mut sim);
    let since = sim.run(r2, "beta").since;
    sim.settle();
    read_beta_reporting_within(&mut sim, r2, Some(180));
    sim.advance(secs(600));
    sim.settle();
    read_beta_reporting_within(&mut sim, r2, Some(180));
    let p = sim.plan();
    assert_eq!(
        transition_of(&p, r2, "beta"),
        None,
        "held past the bake time"
    );
    sim.settle();
    let held = since + chrono::Duration::minutes(13);
    assert_eq!(sim.reason(r2, "beta"), Reason::Baking { until: held });
    assert_eq!(sim.reason(r2, "beta").describe(sim.now), "baking, 3m left");

    // The breach that began at the bake's end, reported 170 s later.
    sim.advance(secs(170));
    let changed = sim.now;
    sim.alarm_changed_at("beta", "beta-5xx", true, changed);
    let (to, why) = transition_of(&sim.plan(), r2, "beta").unwrap();
    assert_eq!(to, S::RollingBack);
    assert_eq!(
        why,
        Reason::AlarmFired {
            alarm: "beta-5xx".into(),
            at: changed
        }
    );
    sim.drive_to_rest();
    assert_eq!(sim.status(r2, "beta"), S::RolledBack);
    assert_eq!(sim.snap.last_good("beta"), Some(r1));
}

#[test]
fn the_bake_passes_once_the_hold_is_over_and_a_fixed_delay_overrides_the_alarms() {
    let mut sim = baking_beta(|_| {});
    let r = sim.new_release();
    sim.drive_to(r, "beta", S::Baking);
    let since = sim.run(r, "beta").since;
    sim.settle();
    read_beta_reporting_within(&mut sim, r, Some(180));
    sim.advance(secs(600));
    sim.settle();
    read_beta_reporting_within(&mut sim, r, Some(180));
    sim.settle();
    assert_eq!(sim.status(r, "beta"), S::Baking);
    assert_eq!(
        sim.reason(r, "beta"),
        Reason::Baking {
            until: since + chrono::Duration::minutes(13)
        }
    );
    sim.advance(secs(179));
    sim.settle();
    read_beta_reporting_within(&mut sim, r, Some(180));
    sim.settle();
    assert_eq!(sim.status(r, "beta"), S::Baking);
    sim.advance(secs(1));
    assert_eq!(
        transition_of(&sim.plan(), r, "beta"),
        Some((S::Succeeded, Reason::Succeeded))
    );

    // `alarm_delay = "0s"`: no hold, whatever the alarms say.
    let mut sim = baking_beta(|s| s.alarm_delay = AlarmDelay::Fixed(secs(0)));
    let r = sim.new_release();
    sim.drive_to(r, "beta", S::Baking);
    sim.settle();
    read_beta_reporting_within(&mut sim, r, Some(180));
    sim.advance(secs(600));
    assert_eq!(
        transition_of(&sim.plan(), r, "beta"),
        Some((S::Succeeded, Reason::Succeeded))
    );

    // A fixed delay holds that long even when the alarms give none (a composite alarm).
    let mut sim = baking_beta(|s| s.alarm_delay = AlarmDelay::Fixed(secs(300)));
    let r = sim.new_release();
    sim.drive_to(r, "beta", S::Baking);
    let since = sim.run(r, "beta").since;
    sim.settle();
    read_beta_reporting_within(&mut sim, r, None);
    sim.advance(secs(600));
    sim.settle();
    assert_eq!(
        sim.reason(r, "beta"),
        Reason::Baking {
            until: since + chrono::Duration::minutes(15)
        }
    );
}

/// Beta baking r1 with `min_datapoints` 5 and `insufficient_data` as given: (sim, release,
/// when the deploy finished, when the bake time ends).
fn baking_for_data(policy: InsufficientData) -> (Sim, ReleaseId, DateTime<Utc>, DateTime<Utc>) {
    let mut sim = baking_beta(|s| {
        s.min_datapoints = 5;
        s.insufficient_data = policy;
    });
    let r = sim.new_release();
    sim.drive_to(r, "beta", S::Baking);
    sim.settle();
    let deploy = sim.key(r, "beta", EffectKind::Deploy { wave: 0 });
    let deployed = sim.effect(&deploy).and_then(|e| e.finished_at).unwrap();
    let bake_end = sim.run(r, "beta").since + chrono::Duration::minutes(10);
    (sim, r, deployed, bake_end)
}

/// The bake poll of `r` now running.
fn bake_poll(sim: &Sim, r: ReleaseId) -> crate::domain::EffectRecord {
    sim.pending()
        .into_iter()
        .find(|e| e.release == r && matches!(e.kind, EffectKind::PollAlarms { .. }))
        .expect("a bake poll is running")
}

/// Finishes the pending bake poll of `r` in beta with one reading of `beta-5xx`.
fn read_beta(sim: &mut Sim, r: ReleaseId, state: AlarmState, datapoints: u32) {
    let poll = bake_poll(sim, r);
    let readings = sim.readings("beta", datapoints, Some(state));
    sim.succeed_with(&poll.key, readings);
}

#[test]
fn bake_time_over_with_too_few_data_points_waits_and_says_for_what() {
    let (mut sim, r, deployed, bake_end) = baking_for_data(InsufficientData::Wait);
    read_beta(&mut sim, r, AlarmState::Ok, 1);
    sim.advance(secs(600));
    sim.settle();
    read_beta(&mut sim, r, AlarmState::Ok, 2);
    sim.settle();
    assert_eq!(sim.status(r, "beta"), S::Baking);
    let gives_up = bake_end + chrono::Duration::hours(1);
    assert_eq!(
        sim.reason(r, "beta"),
        Reason::AwaitingData {
            gap: DataGap::Datapoints {
                alarm: "beta-5xx".into(),
                have: 2,
                needed: 5
            },
            since: deployed,
            gives_up,
        }
    );
    assert!(
        sim.reason(r, "beta")
            .describe(sim.now)
            .starts_with("baking: waiting for data: alarm beta-5xx has 2 of 5 data points since"),
        "{}",
        sim.reason(r, "beta").describe(sim.now)
    );
    assert!(sim.history("beta").is_empty(), "not known-good yet");

    sim.advance(secs(10));
    sim.settle();
    read_beta(&mut sim, r, AlarmState::Ok, 5);
    let p = sim.plan();
    assert_eq!(
        transition_of(&p, r, "beta"),
        Some((S::Succeeded, Reason::Succeeded))
    );
    assert!(p.actions.contains(&Action::RecordGood {
        stage: "beta".into(),
        release: r
    }));
}

#[test]
fn enough_data_points_by_the_end_of_the_bake_succeed_at_once() {
    let (mut sim, r, _, _) = baking_for_data(InsufficientData::Wait);
    read_beta(&mut sim, r, AlarmState::Ok, 9);
    sim.advance(secs(599));
    sim.settle();
    assert_eq!(
        sim.status(r, "beta"),
        S::Baking,
        "the bake time is not over"
    );
    sim.advance(secs(1));
    assert_eq!(
        transition_of(&sim.plan(), r, "beta"),
        Some((S::Succeeded, Reason::Succeeded))
    );
}

#[test]
fn insufficient_data_with_wait_waits_then_fails_after_bake_max_wait() {
    let (mut sim, r, deployed, bake_end) = baking_for_data(InsufficientData::Wait);
    read_beta(&mut sim, r, AlarmState::InsufficientData, 0);
    sim.advance(secs(600));
    sim.settle();
    read_beta(&mut sim, r, AlarmState::InsufficientData, 0);
    sim.settle();
    let gap = DataGap::InsufficientData {
        alarm: "beta-5xx".into(),
    };
    assert_eq!(
        sim.reason(r, "beta"),
        Reason::AwaitingData {
            gap: gap.clone(),
            since: deployed,
            gives_up: bake_end + chrono::Duration::hours(1),
        }
    );
    // An hour of polls, one every ten seconds, all still without data.
    for _ in 0..360 {
        sim.advance(secs(10));
        sim.settle();
        if sim.status(r, "beta") != S::Baking {
            break;
        }
        read_beta(&mut sim, r, AlarmState::InsufficientData, 0);
        sim.settle();
    }
    assert_eq!(sim.status(r, "beta"), S::Failed);
    assert_eq!(
        sim.reason(r, "beta"),
        Reason::NotEnoughData {
            gap,
            since: deployed,
            waited_secs: 3600
        }
    );
    let polls = sim
        .all_effects()
        .filter(|e| e.release == r && matches!(e.kind, EffectKind::PollAlarms { .. }))
        .count();
    assert!(
        polls <= 60 + 360 + 2,
        "one poll per ten seconds at most: {polls}"
    );
    let notify = sim.key(
        r,
        "beta",
        EffectKind::Notify {
            event: NotifyEvent::Halted,
        },
    );
    assert!(sim.effect(&notify).is_some(), "the halt is announced");
    assert!(sim.history("beta").is_empty());
}

/// `insufficient_data = "roll_back"`: a service whose alarm has no data at the bake's end
/// (it stopped publishing its metrics: crashed, or not serving) is rolled back like one in
/// ALARM, and its release is stopped; with no known-good release to go back to it fails.
#[test]
fn insufficient_data_with_roll_back_rolls_the_stage_back_once_the_bake_time_is_over() {
    let mut sim = baking_beta(|s| {
        s.min_datapoints = 5;
        s.insufficient_data = InsufficientData::RollBack;
    });
    let (r1, r2) = second_release_baking(&mut sim);
    sim.settle();
    let deployed = sim
        .effect(&sim.key(r2, "beta", EffectKind::Deploy { wave: 0 }))
        .and_then(|e| e.finished_at)
        .unwrap();
    read_beta(&mut sim, r2, AlarmState::InsufficientData, 9);
    sim.advance(secs(300));
    sim.settle();
    assert_eq!(
        sim.status(r2, "beta"),
        S::Baking,
        "during the bake time it waits"
    );
    sim.advance(secs(300));
    sim.settle();
    read_beta(&mut sim, r2, AlarmState::InsufficientData, 9);
    let why = Reason::NotEnoughData {
        gap: DataGap::InsufficientData {
            alarm: "beta-5xx".into(),
        },
        since: deployed,
        waited_secs: 0,
    };
    assert_eq!(
        transition_of(&sim.plan(), r2, "beta"),
        Some((S::RollingBack, why.clone()))
    );
    sim.drive_to_rest();
    assert_eq!(sim.status(r2, "beta"), S::RolledBack);
    assert_eq!(sim.snap.last_good("beta"), Some(r1));
    assert!(sim.release(r2).bad.is_some(), "r2 is never promoted on");

    // The first release of the stage: nothing to roll back to.
    let (mut sim, r, deployed, _) = baking_for_data(InsufficientData::RollBack);
    read_beta(&mut sim, r, AlarmState::InsufficientData, 9);
    sim.advance(secs(600));
    sim.settle();
    read_beta(&mut sim, r, AlarmState::InsufficientData, 9);
    let why = Reason::NotEnoughData {
        gap: DataGap::InsufficientData {
            alarm: "beta-5xx".into(),
        },
        since: deployed,
        waited_secs: 0,
    };
    assert_eq!(
        transition_of(&sim.plan(), r, "beta"),
        Some((
            S::Failed,
            Reason::NoKnownGood {
                cause: Box::new(why)
            }
        ))
    );
}

/// `roll_back` acts on an alarm in INSUFFICIENT_DATA even when an alarm listed before it is
/// only short of data points (one with `TreatMissingData = notBreaching` stays OK, without data,
/// while the service is down).
#[test]
fn insufficient_data_with_roll_back_acts_on_any_alarm_not_only_the_first_short_of_data() {
    let mut sim = baking_beta(|s| {
        s.alarms = vec!["beta-latency".into(), "beta-5xx".into()];
        s.min_datapoints = 5;
        s.insufficient_data = InsufficientData::RollBack;
    });
    let (r1, r2) = second_release_baking(&mut sim);
    sim.settle();
    sim.advance(secs(600));
    sim.settle();
    let poll = bake_poll(&sim, r2);
    let mut readings = sim.readings("beta", 0, None);
    readings[1].state = AlarmState::InsufficientData;
    sim.succeed_with(&poll.key, readings);
    let (to, why) = transition_of(&sim.plan(), r2, "beta").unwrap();
    assert_eq!(to, S::RollingBack);
    assert!(
        matches!(
            why,
            Reason::NotEnoughData { gap: DataGap::InsufficientData { ref alarm }, .. }
                if alarm == "beta-5xx"
        ),
        "{why:?}"
    );
    sim.drive_to_rest();
    assert_eq!(sim.snap.last_good("beta"), Some(r1));
}

#[test]
fn insufficient_data_with_fail_fails_once_the_bake_time_is_over() {
    let (mut sim, r, deployed, _) = baking_for_data(InsufficientData::Fail);
    read_beta(&mut sim, r, AlarmState::InsufficientData, 9);
    sim.advance(secs(300));
    sim.settle();
    assert_eq!(
        sim.status(r, "beta"),
        S::Baking,
        "during the bake time it only waits"
    );
    sim.advance(secs(300));
    sim.settle();
    assert_eq!(
        sim.status(r, "beta"),
        S::Baking,
        "judged on a read taken after the bake time"
    );
    read_beta(&mut sim, r, AlarmState::InsufficientData, 9);
    let why = Reason::NotEnoughData {
        gap: DataGap::InsufficientData {
            alarm: "beta-5xx".into(),
        },
        since: deployed,
        waited_secs: 0,
    };
    assert_eq!(
        transition_of(&sim.plan(), r, "beta"),
        Some((S::Failed, why))
    );
}

#[test]
fn insufficient_data_with_pass_counts_as_clean() {
    let (mut sim, r, _, _) = baking_for_data(InsufficientData::Pass);
    read_beta(&mut sim, r, AlarmState::InsufficientData, 5);
    sim.advance(secs(600));
    assert_eq!(
        transition_of(&sim.plan(), r, "beta"),
        Some((S::Succeeded, Reason::Succeeded))
    );
}

#[test]
fn missing_data_points_with_pass_wait_for_bake_max_wait_then_fail() {
    let (mut sim, r, _, bake_end) = baking_for_data(InsufficientData::Pass);
    read_beta(&mut sim, r, AlarmState::Ok, 1);
    sim.advance(secs(600));
    sim.settle();
    read_beta(&mut sim, r, AlarmState::Ok, 1);
    sim.settle();
    assert_eq!(sim.status(r, "beta"), S::Baking);
    assert!(matches!(sim.reason(r, "beta"), Reason::AwaitingData { .. }));
    sim.advance(secs(3600));
    assert!(sim.now >= bake_end + chrono::Duration::hours(1));
    sim.settle();
    read_beta(&mut sim, r, AlarmState::Ok, 1);
    // `pass` is about alarms in INSUFFICIENT_DATA; a quiet service never passes its bake.
    let failed = transition_of(&sim.plan(), r, "beta");
    assert!(
        matches!(
            &failed,
            Some((
                S::Failed,
                Reason::NotEnoughData {
                    gap: DataGap::Datapoints {
                        have: 1,
                        needed: 5,
                        ..
                    },
                    waited_secs: 3600,
                    ..
                }
            ))
        ),
        "{failed:?}"
    );
}

#[test]
fn an_alarm_in_insufficient_data_with_pass_counts_as_clean_once_it_has_its_data_points() {
    let (mut sim, r, _, _) = baking_for_data(InsufficientData::Pass);
    sim.advance(secs(600));
    sim.settle();
    read_beta(&mut sim, r, AlarmState::InsufficientData, 5);
    assert_eq!(
        transition_of(&sim.plan(), r, "beta"),
        Some((S::Succeeded, Reason::Succeeded))
    );
}

#[test]
fn alarms_never_read_fail_the_bake_whatever_insufficient_data_says() {
    let (mut sim, r, _, _) = baking_for_data(InsufficientData::Pass);
    // The bake time, an hour's wait and the minute's grace for a read after it.
    for _ in 0..500 {
        if sim.status(r, "beta") != S::Baking {
            break;
        }
        if let Some(poll) = sim
            .pending()
            .into_iter()
            .find(|e| matches!(e.kind, EffectKind::PollAlarms { .. }))
        {
            sim.fail(&poll.key, "AccessDenied: cloudwatch:DescribeAlarms");
        }
        sim.settle();
        let wake = sim.last_plan.wake_at;
        assert!(
            wake.is_none_or(|w| w > sim.now),
            "waiting never asks to be woken at once (a busy loop): {wake:?} at {}",
            sim.now
        );
        sim.advance(secs(10));
        sim.settle();
    }
    assert_eq!(sim.status(r, "beta"), S::Failed);
    assert!(
        matches!(
            sim.reason(r, "beta"),
            Reason::NotEnoughData {
                gap: DataGap::Unread,
                ..
            }
        ),
        "{:?}",
        sim.reason(r, "beta")
    );
}

#[test]
fn a_bake_with_no_alarms_needs_no_data_and_reads_nothing() {
    let mut sim = Sim::new(three_stages());
    let r = sim.promote();
    assert_eq!(sim.status(r, "prod"), S::Succeeded);
    assert!(
        sim.all_effects()
            .all(|e| !matches!(e.kind, EffectKind::PollAlarms { .. })),
        "no alarm, no poll"
    );
}

#[test]
fn baking_polls_no_more_often_than_every_ten_seconds() {
    let mut sim = baking_beta(|_| {});
    let r = sim.new_release();
    sim.drive_to(r, "beta", S::Baking);
    sim.settle();
    let poll0 = sim.key(r, "beta", EffectKind::PollAlarms { round: 0 });
    sim.succeed(&poll0);
    sim.settle();
    assert_eq!(
        sim.last_plan.wake_at,
        Some(sim.now + chrono::Duration::seconds(10))
    );
    sim.advance(secs(9));
    sim.settle();
    let poll1 = sim.key(r, "beta", EffectKind::PollAlarms { round: 1 });
    assert!(sim.effect(&poll1).is_none());
    sim.advance(secs(1));
    sim.settle();
    assert!(sim.is_pending(&poll1));
}

#[test]
fn baking_to_rolling_back_on_an_alarm_notification() {
    let mut sim = baking_beta(|_| {});
    let (_, r2) = second_release_baking(&mut sim);
    sim.alarm("beta", "some-other-alarm", true);
    sim.alarm("beta", "beta-5xx", false);
    sim.alarm("gamma", "beta-5xx", true);
    assert_eq!(transition_of(&sim.plan(), r2, "beta"), None);
    sim.advance(secs(30));
    sim.alarm("beta", "beta-5xx", true);
    let at = sim.now;
    assert_eq!(
        transition_of(&sim.plan(), r2, "beta"),
        Some((
            S::RollingBack,
            Reason::AlarmFired {
                alarm: "beta-5xx".into(),
                at
            }
        ))
    );
    let alarm = sim.snap.alarms.last().map(|a| a.id);
    assert!(
        sim.plan().actions.iter().any(|a| matches!(a,
            Action::Transition { alarm: a, .. } if *a == alarm)),
        "the rollback records the alarm event that caused it"
    );
}

#[test]
fn baking_to_rolling_back_on_an_alarm_poll() {
    let mut sim = baking_beta(|_| {});
    let (_, r2) = second_release_baking(&mut sim);
    sim.settle();
    let poll0 = sim.key(r2, "beta", EffectKind::PollAlarms { round: 0 });
    sim.succeed_in_alarm(&poll0, "beta-5xx");
    let at = sim.now;
    assert_eq!(
        transition_of(&sim.plan(), r2, "beta"),
        Some((
            S::RollingBack,
            Reason::AlarmPolled {
                alarms: vec!["beta-5xx".into()],
                at
            }
        ))
    );
}

#[test]
fn baking_to_rolling_back_on_a_manual_request() {
    let mut sim = baking_beta(|_| {});
    let (_, r2) = second_release_baking(&mut sim);
    sim.request_rollback("beta", "ops@acme.test");
    let p = sim.plan();
    assert!(p.actions.contains(&Action::ConsumeRollbackRequest {
        stage: "beta".into(),
        request: 1
    }));
    assert_eq!(
        transition_of(&p, r2, "beta"),
        Some((
            S::RollingBack,
            Reason::ManualRollback {
                by: "ops@acme.test".into()
            }
        ))
    );
}

// ----- RollingBack -----------------------------------------------------------------------------

#[test]
fn rolling_back_to_rolled_back_marks_bad_and_restores_the_known_good() {
    let mut sim = baking_beta(|_| {});
    let (r1, r2) = second_release_baking(&mut sim);
    sim.alarm("beta", "beta-5xx", true);
    sim.settle();
    assert_eq!(sim.status(r2, "beta"), S::RollingBack);
    let back = sim.key(
        r2,
        "beta",
        EffectKind::Rollback {
            wave: 0,
            target: r1,
        },
    );
    assert!(sim.is_pending(&back));
    sim.succeed(&back);
    let p = sim.plan();
    let (to, why) = transition_of(&p, r2, "beta").unwrap();
    assert_eq!(to, S::RolledBack);
    assert!(
        matches!(&why, Reason::RolledBack { cause, restored }
            if *restored == r1 && matches!(**cause, Reason::AlarmFired { .. })),
        "{why:?}"
    );
    assert!(p.actions.iter().any(|a| matches!(a,
        Action::MarkBad { release, stage, .. } if *release == r2 && stage == "beta")));
    assert!(p.actions.contains(&Action::RecordGood {
        stage: "beta".into(),
        release: r1
    }));
    sim.settle();
    assert_eq!(
        sim.history("beta"),
        vec![r1, r1],
        "r2 never succeeded in beta"
    );
    assert_eq!(sim.snap.last_good("beta"), Some(r1));
    let told = sim.key(
        r2,
        "beta",
        EffectKind::Notify {
            event: NotifyEvent::RolledBack,
        },
    );
    assert!(sim.is_pending(&told));
}

#[test]
fn rolling_back_to_failed_pauses_the_stage_when_the_rollback_fails() {
    let mut sim = baking_beta(|_| {});
    let (r1, r2) = second_release_baking(&mut sim);
    sim.request_rollback("beta", "ops");
    sim.settle();
    let back = sim.key(
        r2,
        "beta",
        EffectKind::Rollback {
            wave: 0,
            target: r1,
        },
    );
    sim.fail(&back, "stack UPDATE_ROLLBACK_FAILED");
    let p = sim.plan();
    let failed = Reason::RollbackFailed {
        account: "acct-beta".into(),
        region: "eu-west-1".into(),
        detail: "stack UPDATE_ROLLBACK_FAILED".into(),
    };
    let why = "ROLLBACK FAILED for acct-beta/eu-west-1: stack UPDATE_ROLLBACK_FAILED; \
               stage paused until a person resumes it";
    assert_eq!(transition_of(&p, r2, "beta"), Some((S::Failed, failed)));
    assert!(p.actions.contains(&Action::PauseStage {
        stage: "beta".into(),
        reason: why.into()
    }));
    sim.settle();

    // Nothing new starts in the stage until a person resumes it.
    let r3 = sim.resolved_release();
    sim.settle();
    assert_eq!(sim.status(r3, "beta"), S::Queued);
    assert_eq!(
        sim.reason(r3, "beta"),
        Reason::StagePaused { reason: why.into() }
    );
    sim.resume_stage("beta");
    sim.settle();
    assert_eq!(sim.status(r3, "beta"), S::Checking);
    sim.drive_to(r3, "beta", S::Baking);
}

#[test]
fn rolling_back_with_two_waves_returns_every_deployed_wave_in_order() {
    let mut sim = baking_beta(|s| s.targets = vec![target("beta", 0), target("beta", 1)]);
    let (r1, r2) = second_release_baking(&mut sim);
    sim.request_rollback("beta", "ops");
    sim.settle();
    let back = |w| {
        sim.key(
            r2,
            "beta",
            EffectKind::Rollback {
                wave: w,
                target: r1,
            },
        )
    };
    let (back0, back1) = (back(0), back(1));
    assert!(sim.is_pending(&back0));
    assert!(sim.effect(&back1).is_none(), "one wave at a time");
    sim.succeed(&back0);
    sim.settle();
    assert!(sim.is_pending(&back1));
    sim.succeed(&back1);
    sim.settle();
    assert_eq!(sim.status(r2, "beta"), S::RolledBack);
}

// ----- windows -----------------------------------------------------------------------------------

fn prod_in_a_window() -> Sim {
    let mut cfg = three_stages();
    cfg.stages[2].windows = Some(office_hours(chrono_tz::Europe::Berlin));
    let mut sim = Sim::new(cfg);
    // Friday 6 March 2026, 11:00 in Berlin: outside Mon–Thu.
    sim.now = Utc.with_ymd_and_hms(2026, 3, 6, 10, 0, 0).unwrap();
    sim
}

#[test]
fn a_closed_window_holds_the_deploy_and_wakes_at_the_next_opening() {
    let mut sim = prod_in_a_window();
    let r = sim.new_release();
    sim.drive_to(r, "prod", S::AwaitingApproval);
    sim.approve(r, "prod", "ana");
    let p = sim.plan();
    assert_eq!(transition_of(&p, r, "prod"), None);
    assert_eq!(
        notes_of(&p, r, "prod"),
        vec![Reason::OutsideWindow {
            opens: Some(Utc.with_ymd_and_hms(2026, 3, 9, 8, 0, 0).unwrap()),
            timezone: "Europe/Berlin".into()
        }]
    );
    let monday_nine_berlin = Utc.with_ymd_and_hms(2026, 3, 9, 8, 0, 0).unwrap();
    assert_eq!(p.wake_at, Some(monday_nine_berlin));
    sim.settle();

    sim.now = monday_nine_berlin - chrono::Duration::seconds(1);
    sim.settle();
    assert_eq!(sim.status(r, "prod"), S::AwaitingApproval);
    sim.now = monday_nine_berlin;
    assert_eq!(
        transition_of(&sim.plan(), r, "prod").map(|t| t.0),
        Some(S::Deploying)
    );
}

#[test]
fn a_window_override_deploys_outside_the_window() {
    let mut sim = prod_in_a_window();
    let r = sim.new_release();
    sim.snap.releases.get_mut(&r).unwrap().window_override = Some("INC-9 hotfix".into());
    sim.drive_to(r, "prod", S::AwaitingApproval);
    sim.approve(r, "prod", "ana");
    assert_eq!(
        transition_of(&sim.plan(), r, "prod").map(|t| t.0),
        Some(S::Deploying)
    );
}

// ----- side effects follow the statuses ----------------------------------------------------------

#[test]
fn reports_follow_the_run_and_skip_stages_never_reached() {
    let mut sim = with_beta(|s| s.before = vec!["lint".into()]);
    let r = sim.new_release();
    sim.drive_to(r, "beta", S::Checking);
    sim.settle();
    let lint = sim.key(r, "beta", test("lint", Phase::Before));
    sim.fail(&lint, "exit status 1");
    sim.settle();
    let failure = sim.key(
        r,
        "beta",
        EffectKind::Report {
            state: ReportState::Failure,
        },
    );
    assert!(
        sim.effect(&failure).is_none(),
        "the queued status goes out first"
    );
    sim.drive_to_rest();
    let reported: Vec<(String, String)> = sim
        .started
        .iter()
        .filter(|e| matches!(e.kind, EffectKind::Report { .. }))
        .map(|e| (e.stage.to_string(), e.kind.key_part()))
        .collect();
    assert_eq!(
        reported,
        vec![
            ("beta".to_string(), "report-queued".to_string()),
            ("beta".to_string(), "report-failure".to_string())
        ],
        "gamma and prod were never reached, so GitHub hears nothing about them"
    );
    assert!(
        sim.all_effects()
            .all(|e| e.stage != "gamma" && e.stage != "prod")
    );
}

// ----- manual rollback of what a stage runs now ----------------------------------------------------

#[test]
fn succeeded_to_rolling_back_on_a_manual_request_for_the_current_release() {
    let mut sim = Sim::new(three_stages());
    let r1 = sim.promote();
    let r2 = sim.promote();
    sim.request_rollback("prod", "ops");
    let p = sim.plan();
    assert_eq!(
        transition_of(&p, r2, "prod"),
        Some((S::RollingBack, Reason::ManualRollback { by: "ops".into() }))
    );
    sim.drive_to_rest();
    assert_eq!(sim.status(r2, "prod"), S::RolledBack);
    assert_eq!(sim.history("prod"), vec![r1, r2, r1]);
    assert_eq!(
        sim.release(r2).bad.as_ref().map(|b| b.stage.as_str()),
        Some("prod")
    );
    // Earlier stages keep r2; the later release r3 still goes everywhere.
    assert_eq!(sim.status(r2, "gamma"), S::Succeeded);
    let r3 = sim.promote();
    assert_eq!(sim.history("prod"), vec![r1, r2, r1, r3]);
}

#[test]
fn a_manual_request_with_nothing_to_return_to_leaves_the_current_release_alone() {
    let mut sim = Sim::new(three_stages());
    let r1 = sim.promote();
    sim.request_rollback("prod", "ops");
    let p = sim.plan();
    assert!(p.actions.contains(&Action::ConsumeRollbackRequest {
        stage: "prod".into(),
        request: 1
    }));
    assert_eq!(transition_of(&p, r1, "prod"), None);
    assert_eq!(
        notes_of(&p, r1, "prod"),
        vec![Reason::ManualRollbackImpossible { by: "ops".into() }]
    );
    sim.settle();
    assert_eq!(sim.status(r1, "prod"), S::Succeeded);
    assert_eq!(sim.history("prod"), vec![r1]);
    assert!(sim.release(r1).bad.is_none());
}

#[test]
fn a_manual_rollback_and_an_approved_deploy_never_run_at_once() {
    let mut cfg = three_stages();
    cfg.stages[2].approval = Some(approval(1));
    let mut sim = Sim::new(cfg);
    let r1 = sim.promote();
    let r2 = sim.promote();
    sim.auto_approve = false;
    let r3 = sim.new_release();
    sim.drive_to(r3, "prod", S::AwaitingApproval);
    sim.settle();
    // Both facts arrive before the next reconcile.
    sim.approve(r3, "prod", "ana");
    sim.request_rollback("prod", "ops");
    let p = sim.plan();
    assert_eq!(
        transition_of(&p, r2, "prod").map(|t| t.0),
        Some(S::RollingBack)
    );
    assert_eq!(transition_of(&p, r3, "prod"), None);
    assert_eq!(
        notes_of(&p, r3, "prod"),
        vec![Reason::StageBusy {
            release: r2,
            status: S::RollingBack
        }]
    );
    sim.drive_to(r3, "prod", S::Deploying);
    assert_eq!(sim.status(r2, "prod"), S::RolledBack);
    assert_eq!(sim.history("prod"), vec![r1, r2, r1]);
}

#[test]
fn waiting_to_superseded_when_a_newer_release_entered_the_stage_first() {
    let mut sim = with_beta(|s| s.before = vec!["lint".into()]);
    let r1 = sim.new_release();
    let r2 = sim.new_release();
    sim.settle();
    // r2's image appears first and r2 enters beta; r1's is still being resolved.
    let resolve2 = sim.resolve_key(r2);
    sim.succeed(&resolve2);
    let p = sim.plan();
    assert_eq!(transition_of(&p, r2, "beta").map(|t| t.0), Some(S::Queued));
    assert_eq!(
        transition_of(&p, r1, "beta"),
        Some((S::Superseded, Reason::SupersededBy { release: r2 }))
    );
    sim.settle();
    // r2 fails its checks; r1, older, must not deploy in its place.
    let lint = sim.key(r2, "beta", test("lint", Phase::Before));
    sim.fail(&lint, "exit status 1");
    let resolve1 = sim.resolve_key(r1);
    sim.succeed(&resolve1);
    sim.drive_to_rest();
    assert_eq!(sim.status(r1, "beta"), S::Superseded);
    assert!(
        !sim.all_effects()
            .any(|e| e.release == r1 && e.key.contains("/deploy-")),
        "the older release never deploys after a newer one entered the stage"
    );
}

#[test]
fn a_retried_release_goes_again_from_the_stage_where_it_failed_under_the_next_attempt() {
    let mut sim = Sim::new(three_stages());
    let r = sim.new_release();
    sim.drive_to(r, "beta", S::Deploying);
    sim.settle();
    let deploy = sim.key(r, "beta", EffectKind::Deploy { wave: 0 });
    sim.fail(&deploy, "boom");
    sim.drive_to_rest();
    assert_eq!(sim.status(r, "beta"), S::Failed);
    assert_eq!(sim.status(r, "gamma"), S::Failed);

    sim.request_retry(r, "ops");
    let p = sim.plan();
    assert!(p.actions.contains(&Action::Retry {
        request: 1,
        release: r,
        stages: vec!["beta".into(), "gamma".into(), "prod".into()],
        by: "ops".into(),
    }));
    assert_eq!(
        transition_of(&p, r, "beta"),
        None,
        "nothing else moves the run"
    );
    sim.step();
    assert_eq!(sim.status(r, "beta"), S::Waiting);
    assert_eq!(sim.run(r, "beta").attempt, 2);
    assert_eq!(
        sim.reason(r, "beta"),
        Reason::RetryRequested { by: "ops".into() }
    );
    assert!(sim.snap.retry_requests.is_empty(), "handled once");
    sim.drive_to(r, "beta", S::Deploying);
    sim.settle();
    let again = Effect::new(PIPELINE, r, "beta", 2, EffectKind::Deploy { wave: 0 });
    assert!(
        sim.is_pending(&again.key),
        "the deploy runs under a new key"
    );
}

#[test]
fn a_retry_of_a_release_still_in_flight_is_refused_and_changes_nothing() {
    let mut sim = Sim::new(three_stages());
    let r = sim.new_release();
    sim.drive_to(r, "beta", S::Deploying);
    sim.request_retry(r, "ops");
    let p = sim.plan();
    let refused = p.actions.iter().find_map(|a| match a {
        Action::RefuseRetry { why, .. } => Some(why.clone()),
        _ => None,
    });
    assert_eq!(
        refused.as_deref(),
        Some("r1 is still deploying in beta: wait until it stops")
    );
    assert!(!p.actions.iter().any(|a| matches!(a, Action::Retry { .. })));
    sim.step();
    assert!(sim.snap.retry_requests.is_empty());
    assert_eq!(sim.status(r, "beta"), S::Deploying);
    assert_eq!(sim.run(r, "beta").attempt, 1);
}

#[test]
fn the_alarm_gate_is_read_again_right_before_the_deploy_not_when_the_release_entered() {
    let mut cfg = three_stages();
    cfg.stages[2].alarms = vec!["prod-5xx".into()];
    cfg.stages[2].approval = Some(approval(1));
    let mut sim = Sim::new(cfg);
    sim.auto_approve = false;
    let r = sim.new_release();
    sim.drive_to(r, "prod", S::AwaitingApproval);
    sim.settle();
    // The approver acts three hours later; meanwhile the prod alarm went off.
    sim.advance(secs(3 * 3600));
    sim.approve(r, "prod", "ana");
    sim.settle();
    assert_eq!(
        sim.status(r, "prod"),
        S::AwaitingApproval,
        "no deploy on a read of the alarms three hours old"
    );
    let check = sim.key(r, "prod", EffectKind::CheckAlarms { round: 1 });
    assert!(sim.is_pending(&check), "the alarms are read again first");
    sim.succeed_in_alarm(&check, "prod-5xx");
    sim.settle();
    assert_eq!(sim.status(r, "prod"), S::AwaitingApproval);
    assert!(
        matches!(sim.reason(r, "prod"), Reason::AlarmsBlockEntry { problem: AlarmProblem::InAlarm { ref alarms }, .. } if alarms == &["prod-5xx"]),
        "{:?}",
        sim.reason(r, "prod")
    );
    let deploy = sim.key(r, "prod", EffectKind::Deploy { wave: 0 });
    assert!(
        sim.effect(&deploy).is_none(),
        "nothing deployed into the incident"
    );

    // A minute later the alarm has cleared: the deploy starts.
    sim.advance(secs(61));
    sim.settle();
    let again = sim.key(r, "prod", EffectKind::CheckAlarms { round: 2 });
    sim.succeed(&again);
    sim.settle();
    assert_eq!(sim.status(r, "prod"), S::Deploying);
    assert!(sim.is_pending(&deploy));
}

#[test]
fn each_further_wave_passes_the_alarm_gate_first() {
    let mut sim = with_beta(|s| {
        s.alarms = vec!["beta-5xx".into()];
        s.targets = vec![target("beta", 0), target("beta", 1)];
    });
    let r = sim.new_release();
    sim.drive_to(r, "beta", S::Deploying);
    sim.settle();
    let wave0 = sim.key(r, "beta", EffectKind::Deploy { wave: 0 });
    sim.advance(secs(120));
    sim.succeed(&wave0);
    sim.settle();
    let wave1 = sim.key(r, "beta", EffectKind::Deploy { wave: 1 });
    assert!(
        sim.effect(&wave1).is_none(),
        "the second wave waits for a fresh read"
    );
    let check = sim.key(r, "beta", EffectKind::CheckAlarms { round: 1 });
    sim.succeed_in_alarm(&check, "beta-5xx");
    sim.settle();
    assert!(
        sim.effect(&wave1).is_none(),
        "no second wave while the alarm fires"
    );
}

#[test]
fn a_rejected_release_is_not_retried_even_where_a_later_stage_failed_with_it() {
    let (mut sim, r) = awaiting_prod(1);
    sim.reject(r, "prod", "cy");
    sim.drive_to_rest();
    assert_eq!(sim.status(r, "prod"), S::Rejected);
    sim.request_retry(r, "ops");
    let refused = sim.plan().actions.iter().find_map(|a| match a {
        Action::RefuseRetry { why, .. } => Some(why.clone()),
        _ => None,
    });
    assert_eq!(
        refused.as_deref(),
        Some("r1 was rejected in prod: that is not retried; push a new commit")
    );
}

// ----- the alarm watch window (deploy start → bake end) ----------------------------------------------

#[test]
fn an_alarm_during_the_post_deploy_tests_rolls_the_stage_back() {
    let mut sim = baking_beta(|s| s.after = vec!["smoke".into()]);
    let r1 = sim.promote();
    let r2 = sim.new_release();
    sim.drive_to(r2, "beta", S::Verifying);
    sim.settle();
    sim.advance(secs(5));
    sim.alarm("beta", "beta-5xx", true);
    let (to, why) = transition_of(&sim.plan(), r2, "beta").unwrap();
    assert_eq!(to, S::RollingBack);
    assert!(matches!(why, Reason::AlarmFired { ref alarm, .. } if alarm == "beta-5xx"));
    sim.drive_to_rest();
    assert_eq!(sim.status(r2, "beta"), S::RolledBack);
    assert_eq!(sim.snap.last_good("beta"), Some(r1));
}

#[test]
fn a_late_delivery_of_an_alarm_inside_the_window_rolls_back_a_stage_that_already_succeeded() {
    let mut sim = baking_beta(|_| {});
    let (r1, r2) = second_release_baking(&mut sim);
    let fired = sim.now + chrono::Duration::seconds(30);
    sim.advance(secs(601));
    sim.settle();
    let polls: Vec<String> = sim.pending().iter().map(|e| e.key.to_string()).collect();
    for k in polls {
        sim.succeed(&k);
    }
    sim.drive_to(r2, "beta", S::Succeeded);
    sim.settle();
    // SNS delivers, an hour later, the alarm that went off 30 s into the bake.
    sim.advance(secs(3600));
    sim.alarm_changed_at("beta", "beta-5xx", true, fired);
    let (to, why) = transition_of(&sim.plan(), r2, "beta").unwrap();
    assert_eq!(to, S::RollingBack);
    assert_eq!(
        why,
        Reason::AlarmFired {
            alarm: "beta-5xx".into(),
            at: fired
        }
    );
    sim.drive_to_rest();
    assert_eq!(sim.status(r2, "beta"), S::RolledBack);
    assert_eq!(sim.snap.last_good("beta"), Some(r1));
    assert!(
        sim.release(r2).bad.is_some(),
        "r2 is stopped wherever it got to"
    );
}

#[test]
fn a_replayed_old_alarm_outside_every_watch_window_changes_nothing() {
    let mut sim = baking_beta(|_| {});
    let before_everything = sim.now - chrono::Duration::days(1);
    let (_r1, r2) = second_release_baking(&mut sim);
    sim.advance(secs(30));
    sim.alarm_changed_at("beta", "beta-5xx", true, before_everything);
    let p = sim.plan();
    assert_eq!(transition_of(&p, r2, "beta"), None, "{:?}", p.actions);
    assert!(
        !p.actions
            .iter()
            .any(|a| matches!(a, Action::MarkBad { .. }))
    );
}

// ----- invariant 9: which approvals count ------------------------------------------------------

#[test]
fn an_approval_by_someone_who_brought_the_change_does_not_count() {
    use crate::domain::{Contributor, ContributorRole};
    let (mut sim, r) = awaiting_prod(1);
    // ana merged the pull request (recorded by email, in another case).
    let merger = Contributor::new(
        ContributorRole::PullRequestMerger,
        None,
        Some("ANA@example.com"),
    );
    sim.snap
        .releases
        .get_mut(&r)
        .unwrap()
        .contributors
        .extend(merger);
    sim.approve(r, "prod", "ana");
    sim.settle();
    assert_eq!(sim.status(r, "prod"), S::AwaitingApproval);
    assert!(
        matches!(
            sim.reason(r, "prod"),
            Reason::AwaitingApproval { approved: 0, .. }
        ),
        "{:?}",
        sim.reason(r, "prod")
    );
    sim.approve(r, "prod", "bo");
    sim.settle();
    assert_eq!(sim.status(r, "prod"), S::Deploying);
}

#[test]
fn approvals_of_an_earlier_attempt_do_not_count_after_a_retry() {
    let (mut sim, r) = awaiting_prod(1);
    sim.approve(r, "prod", "ana");
    sim.settle();
    assert_eq!(sim.status(r, "prod"), S::Deploying);
    let deploy = sim.key(r, "prod", EffectKind::Deploy { wave: 0 });
    sim.fail(&deploy, "stack update failed");
    sim.settle();
    assert_eq!(sim.status(r, "prod"), S::Failed);

    sim.request_retry(r, "dana");
    sim.drive_to(r, "prod", S::AwaitingApproval);
    sim.settle();
    assert_eq!(sim.run(r, "prod").attempt, 2);
    assert_eq!(sim.status(r, "prod"), S::AwaitingApproval, "asks again");
    let request = sim.key(r, "prod", EffectKind::RequestApproval { round: 0 });
    assert!(
        sim.effect(&request).is_some(),
        "a new request for attempt 2"
    );
    // ana approves again, in this attempt: now it counts.
    sim.approve(r, "prod", "ana");
    sim.settle();
    assert_eq!(sim.status(r, "prod"), S::Deploying);
}

/// When the request goes again after a round, by what that round met.
fn next_send(sim: &Sim, r: ReleaseId) -> chrono::Duration {
    match sim.reason(r, "prod") {
        Reason::AwaitingApproval {
            request:
                RequestState::Unconfirmed { retry_at, .. }
                | RequestState::Failed { retry_at, .. }
                | RequestState::Withheld { retry_at, .. },
            ..
        } => retry_at - sim.now,
        other => panic!("{other:?}"),
    }
}

/// Ends the newest approval-request round with `output` (failed), then lets the next round
/// start when it is due.
fn request_round_fails(sim: &mut Sim, r: ReleaseId, output: EffectOutput) -> chrono::Duration {
    let pending = sim
        .snap
        .effects
        .iter()
        .find(|e| {
            matches!(e.kind, EffectKind::RequestApproval { .. })
                && e.status == EffectStatus::Pending
        })
        .map(|e| e.key.clone())
        .expect("a request round running");
    sim.finish(&pending, EffectStatus::Failed, "not sent", output);
    sim.settle();
    let wait = next_send(sim, r);
    sim.advance(wait.to_std().unwrap());
    sim.settle();
    wait
}

/// Approvers who have not confirmed their subscription are waited for every 5 minutes for
/// the first hour, then every 15 (not on the failure back-off that grows to an hour); a real
/// failure after such rounds backs off from 5 minutes, counting only failures in a row.
#[test]
fn a_request_waits_for_unconfirmed_approvers_on_a_schedule_of_its_own() {
    let (mut sim, r) = awaiting_prod(1);
    let unconfirmed = || EffectOutput::ApprovalUnconfirmed {
        awaiting: vec!["bo".into()],
        sent: vec!["ana".into()],
    };
    let minutes = |m| chrono::Duration::minutes(m);
    let mut waits = Vec::new();
    for _ in 0..14 {
        waits.push(request_round_fails(&mut sim, r, unconfirmed()));
    }
    let mut expected = vec![minutes(5); 12];
    expected.extend([minutes(15), minutes(15)]);
    assert_eq!(waits, expected);

    // SNS fails twice, then bo is still unconfirmed, then SNS fails again.
    let failed = request_round_fails(&mut sim, r, EffectOutput::None);
    let failed_again = request_round_fails(&mut sim, r, EffectOutput::None);
    assert_eq!((failed, failed_again), (minutes(5), minutes(10)));
    assert_eq!(request_round_fails(&mut sim, r, unconfirmed()), minutes(15));
    assert_eq!(
        request_round_fails(&mut sim, r, EffectOutput::None),
        minutes(5)
    );
    assert_eq!(sim.status(r, "prod"), S::AwaitingApproval);
}

/// A round withheld only while SNS applies a changed filter policy is sent again exactly when
/// the policy has settled, is not a failure for the back-off, and sends no withheld notice
/// (nobody has anything to do); a round withheld for a subscription a person must fix still
/// does, and backs off as before.
#[test]
fn a_request_held_for_a_settling_filter_policy_goes_again_when_it_has_settled() {
    use crate::domain::{ExposedSubscription, Exposure};
    let (mut sim, r) = awaiting_prod(1);
    let minutes = |m| chrono::Duration::minutes(m);
    let sub = |exposure| ExposedSubscription {
        arn: "arn:aws:sns:eu-west-1:111111111111:approvals:1".into(),
        protocol: "email".into(),
        endpoint: "ana@example.com".into(),
        exposure,
    };
    let failed = request_round_fails(&mut sim, r, EffectOutput::None);
    assert_eq!(failed, minutes(5));
    let until = sim.now + minutes(12);
    let settling = EffectOutput::ApprovalWithheld {
        exposed: vec![sub(Exposure::PolicySettling { until })],
    };
    assert_eq!(request_round_fails(&mut sim, r, settling), minutes(12));
    let notices = |sim: &Sim| {
        sim.snap
            .effects
            .iter()
            .filter(|e| matches!(e.kind, EffectKind::Notify { .. }))
            .count()
    };
    assert_eq!(
        notices(&sim),
        0,
        "no notice for a delay nobody has to act on"
    );
    // The wait broke the failures in a row, as a wait for confirmation does: a real failure
    // after it backs off from 5 minutes again, the next from 10.
    assert_eq!(
        request_round_fails(&mut sim, r, EffectOutput::None),
        minutes(5)
    );
    let exposed = EffectOutput::ApprovalWithheld {
        exposed: vec![sub(Exposure::Unfiltered)],
    };
    assert_eq!(request_round_fails(&mut sim, r, exposed), minutes(10));
    assert_eq!(notices(&sim), 1, "a subscription to fix is announced");
}

#[test]
fn an_approver_no_longer_listed_or_unverified_does_not_count() {
    let (mut sim, r) = awaiting_prod(1);
    sim.approve(r, "prod", "ana");
    // A name typed on a shared link that happens to be a listed approver's.
    sim.snap.approvals.last_mut().unwrap().verified = false;
    sim.approve(r, "prod", "zed");
    sim.settle();
    assert_eq!(sim.status(r, "prod"), S::AwaitingApproval);
    // bo approves, then is dropped from the list by a reload.
    sim.cfg.stages[2]
        .approval
        .as_mut()
        .unwrap()
        .approvers
        .retain(|a| a.name != "bo");
    sim.approve(r, "prod", "bo");
    sim.settle();
    assert_eq!(sim.status(r, "prod"), S::AwaitingApproval);
    sim.approve(r, "prod", "cy");
    sim.settle();
    assert_eq!(sim.status(r, "prod"), S::Deploying);
}

#[test]
fn a_late_alarm_inside_the_window_of_a_bake_that_failed_for_lack_of_data_still_acts() {
    let (mut sim, r, _, bake_end) = baking_for_data(InsufficientData::Wait);
    let fired = sim.now + chrono::Duration::seconds(30);
    for _ in 0..500 {
        if sim.status(r, "beta") != S::Baking {
            break;
        }
        if let Some(poll) = sim
            .pending()
            .into_iter()
            .find(|e| matches!(e.kind, EffectKind::PollAlarms { .. }))
        {
            let readings = sim.readings("beta", 1, Some(AlarmState::Ok));
            sim.succeed_with(&poll.key, readings);
        }
        sim.settle();
        sim.advance(secs(60));
    }
    assert_eq!(sim.status(r, "beta"), S::Failed);
    assert!(matches!(
        sim.reason(r, "beta"),
        Reason::NotEnoughData { .. }
    ));
    assert!(sim.now > bake_end);
    // SNS delivers now an alarm that went off 30 s into the bake: the release it found is
    // still running in beta, so it is stopped (no earlier release to restore here).
    sim.alarm_changed_at("beta", "beta-5xx", true, fired);
    let p = sim.plan();
    assert!(
        p.actions
            .iter()
            .any(|a| matches!(a, Action::MarkBad { release, .. } if *release == r)),
        "{:?}",
        p.actions
    );
}

#[test]
fn an_alarm_between_the_gate_read_and_the_deploy_start_is_watched_unless_it_cleared_before() {
    let mut sim = baking_beta(|_| {});
    let (_r1, r2) = second_release_baking(&mut sim);
    let started = sim.run(r2, "beta").deploy_started.expect("deploy started");
    let before = |s: i64| started - chrono::Duration::seconds(s);
    // Fired and cleared again before the deploy started: what the gate's read saw.
    sim.alarm_changed_at("beta", "beta-5xx", true, before(8));
    sim.alarm_changed_at("beta", "beta-5xx", false, before(6));
    let p = sim.plan();
    assert_eq!(transition_of(&p, r2, "beta"), None, "{:?}", p.actions);
    // Fired after the gate's read (at most 10 s before the deploy) and never cleared: watched.
    sim.alarm_changed_at("beta", "beta-5xx", true, before(3));
    let (to, why) = transition_of(&sim.plan(), r2, "beta").expect("a transition");
    assert_eq!(to, S::RollingBack);
    assert_eq!(
        why,
        Reason::AlarmFired {
            alarm: "beta-5xx".into(),
            at: before(3)
        }
    );
}

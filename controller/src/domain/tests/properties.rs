//! Property tests: random pipelines and random sequences of outside events, with the
//! invariants of the design checked after every plan the simulated engine applies (invariant 9
//! with invariant 2: releases are sometimes brought by one of the approvers, who may approve
//! anyway, and retries start new attempts).

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;

use super::sim::*;
use crate::config::{Approval, InsufficientData, Pipeline};
use crate::domain::{
    Action, Contributor, ContributorRole, Decision, Effect, EffectKind, Reason, ReleaseId,
    RunStatus as S, Snapshot, idempotency_key,
};

const STAGES: [&str; 3] = ["beta", "gamma", "prod"];

// ----- random pipelines --------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct Knobs {
    min_approvals: u32,
    prod_window: bool,
    notify: bool,
    before: [bool; 3],
    after: [bool; 3],
    alarms: [bool; 3],
    min_datapoints: [u32; 3],
    bake: [u64; 3],
    waves: [usize; 3],
    /// The stage's service gets no traffic: its bake reads find its alarms in
    /// INSUFFICIENT_DATA with no data points.
    quiet: [bool; 3],
    insufficient_data: [InsufficientData; 3],
}

fn policy() -> impl Strategy<Value = InsufficientData> {
    prop::sample::select(vec![
        InsufficientData::Wait,
        InsufficientData::Fail,
        InsufficientData::Pass,
    ])
}

pub fn knobs() -> impl Strategy<Value = Knobs> {
    (
        (1u32..=2, any::<bool>(), any::<bool>()),
        (any::<[bool; 3]>(), any::<[bool; 3]>(), any::<[bool; 3]>()),
        (
            [0u32..=2, 0u32..=2, 0u32..=2],
            [
                prop::sample::select(vec![0u64, 60, 600]),
                prop::sample::select(vec![0u64, 60, 600]),
                prop::sample::select(vec![0u64, 60, 600]),
            ],
            [1usize..=2, 1usize..=2, 1usize..=2],
        ),
        (
            [
                prop::bool::weighted(0.2),
                prop::bool::weighted(0.2),
                prop::bool::weighted(0.2),
            ],
            [policy(), policy(), policy()],
        ),
    )
        .prop_map(
            |(
                (min_approvals, prod_window, notify),
                (before, after, alarms),
                (ev, bake, waves),
                (quiet, insufficient_data),
            )| {
                Knobs {
                    quiet,
                    insufficient_data,
                    min_approvals,
                    prod_window,
                    notify,
                    before,
                    after,
                    alarms,
                    min_datapoints: ev,
                    bake,
                    waves,
                }
            },
        )
}

pub fn build(k: &Knobs) -> Pipeline {
    let mut cfg = three_stages();
    for (i, s) in cfg.stages.iter_mut().enumerate() {
        if k.before[i] {
            s.before = vec!["pre".into()];
        }
        if k.after[i] {
            s.after = vec!["smoke".into()];
        }
        if k.alarms[i] {
            s.alarms = vec![format!("{}-5xx", s.name)];
            s.min_datapoints = k.min_datapoints[i];
            s.insufficient_data = k.insufficient_data[i];
        }
        s.bake = secs(k.bake[i]);
        s.targets = (0..k.waves[i]).map(|w| target(&s.name, w)).collect();
    }
    cfg.stages[2].approval = Some(approval(k.min_approvals));
    if k.prod_window {
        cfg.stages[2].windows = Some(office_hours(chrono_tz::Europe::Berlin));
    }
    if !k.notify {
        cfg.notifications.topic = None;
    }
    cfg
}

// ----- random events -------------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub enum Ev {
    Release {
        alarm_override: bool,
        window_override: bool,
        /// One of the approvers brought the change (merged its pull request, say).
        brought_by: Option<usize>,
    },
    Finish {
        pick: usize,
        ok: bool,
        in_alarm: bool,
    },
    Decide {
        pick: usize,
        who: usize,
        approve: bool,
    },
    Alarm {
        stage: usize,
        firing: bool,
    },
    PausePipeline,
    ResumePipeline,
    PauseStage(usize),
    ResumeStage(usize),
    Rollback(usize),
    /// `tollgate retry` of one of the releases (any: most are refused).
    Retry(usize),
    Advance(u64),
    Wake,
    Crash,
    /// Every running effect succeeds.
    FinishAll,
    /// The world cooperates once: effects succeed, or else approvals come, or else time
    /// passes until the next wake-up.
    Progress,
}

fn release() -> impl Strategy<Value = Ev> {
    (
        prop::bool::weighted(0.1),
        prop::bool::weighted(0.1),
        prop::option::weighted(0.3, 0usize..3),
    )
        .prop_map(|(a, w, b)| Ev::Release {
            alarm_override: a,
            window_override: w,
            brought_by: b,
        })
}

fn finish(p_ok: f64, p_alarm: f64) -> impl Strategy<Value = Ev> {
    (
        any::<usize>(),
        prop::bool::weighted(p_ok),
        prop::bool::weighted(p_alarm),
    )
        .prop_map(|(pick, ok, in_alarm)| Ev::Finish { pick, ok, in_alarm })
}

fn decide(p_approve: f64) -> impl Strategy<Value = Ev> {
    (any::<usize>(), 0usize..3, prop::bool::weighted(p_approve))
        .prop_map(|(pick, who, approve)| Ev::Decide { pick, who, approve })
}

fn advance() -> impl Strategy<Value = Ev> {
    prop::sample::select(vec![1u64, 10, 61, 600, 3 * 3600, 3 * 86_400]).prop_map(Ev::Advance)
}

/// Anything can happen: failures, alarms, pauses and rollback requests are common.
pub fn chaotic() -> impl Strategy<Value = Ev> {
    prop_oneof![
        3 => release(),
        10 => finish(0.75, 0.15),
        3 => decide(0.8),
        1 => (0usize..3, prop::bool::weighted(0.8))
            .prop_map(|(stage, firing)| Ev::Alarm { stage, firing }),
        1 => Just(Ev::PausePipeline),
        1 => Just(Ev::ResumePipeline),
        1 => (0usize..3).prop_map(Ev::PauseStage),
        2 => (0usize..3).prop_map(Ev::ResumeStage),
        1 => (0usize..3).prop_map(Ev::Rollback),
        1 => any::<usize>().prop_map(Ev::Retry),
        2 => advance(),
        2 => Just(Ev::Wake),
        1 => Just(Ev::Crash),
        2 => Just(Ev::FinishAll),
        1 => Just(Ev::Progress),
    ]
}

/// The world mostly cooperates, so releases get far (prod, bakes, supersedes).
pub fn cooperative() -> impl Strategy<Value = Ev> {
    prop_oneof![
        2 => release(),
        10 => finish(0.93, 0.03),
        6 => Just(Ev::FinishAll),
        8 => Just(Ev::Progress),
        6 => decide(0.95),
        1 => (0usize..3, prop::bool::weighted(0.9))
            .prop_map(|(stage, firing)| Ev::Alarm { stage, firing }),
        1 => (0usize..3).prop_map(Ev::Rollback),
        1 => prop_oneof![
            1 => Just(Ev::PausePipeline),
            2 => Just(Ev::ResumePipeline),
            1 => (0usize..3).prop_map(Ev::PauseStage),
            2 => (0usize..3).prop_map(Ev::ResumeStage),
        ],
        1 => advance(),
        4 => Just(Ev::Wake),
        1 => Just(Ev::Crash),
    ]
}

pub fn apply_event(sim: &mut Sim, ev: &Ev) {
    // Outside events never arrive at the very same instant.
    sim.advance(secs(1));
    match *ev {
        Ev::Release {
            alarm_override,
            window_override,
            brought_by,
        } => {
            let r = sim.new_release();
            let rel = sim.snap.releases.get_mut(&r).unwrap();
            rel.alarm_override = alarm_override.then(|| "override".into());
            rel.window_override = window_override.then(|| "override".into());
            if let Some(who) = brought_by {
                // Recorded by login in a different case: people are compared without it.
                rel.contributors.push(Contributor {
                    role: ContributorRole::PullRequestMerger,
                    login: None,
                    email: Some(format!("{}@EXAMPLE.com", APPROVERS[who].to_uppercase())),
                });
            }
        }
        Ev::Finish { pick, ok, in_alarm } => {
            let pending = sim.pending();
            if pending.is_empty() {
                return;
            }
            let e = &pending[pick % pending.len()];
            let alarm = sim
                .cfg
                .stage(&e.stage)
                .and_then(|s| s.alarms.first().cloned());
            let reads_alarms = matches!(
                e.kind,
                EffectKind::CheckAlarms { .. } | EffectKind::PollAlarms { .. }
            );
            match (ok, alarm) {
                (true, Some(a)) if in_alarm && reads_alarms => sim.succeed_in_alarm(&e.key, &a),
                (true, _) => sim.succeed(&e.key),
                (false, _) => sim.fail(&e.key, "it broke"),
            }
        }
        Ev::Decide { pick, who, approve } => {
            let waiting: Vec<(ReleaseId, crate::domain::StageName)> = sim
                .snap
                .runs
                .iter()
                .filter(|r| r.status == S::AwaitingApproval)
                .map(|r| (r.release, r.stage.clone()))
                .collect();
            if waiting.is_empty() {
                return;
            }
            let (r, s) = &waiting[pick % waiting.len()];
            let d = if approve {
                Decision::Approve
            } else {
                Decision::Reject
            };
            sim.decide(*r, s, APPROVERS[who], d);
        }
        Ev::Alarm { stage, firing } => {
            let s = &sim.cfg.stages[stage];
            let (name, alarm) = (
                s.name.clone(),
                s.alarms.first().cloned().unwrap_or("unrelated".into()),
            );
            sim.alarm(&name, &alarm, firing);
        }
        Ev::PausePipeline => sim.pause_pipeline("freeze"),
        Ev::ResumePipeline => sim.resume_pipeline(),
        Ev::PauseStage(i) => sim.pause_stage(STAGES[i], "hold"),
        Ev::ResumeStage(i) => sim.resume_stage(STAGES[i]),
        Ev::Rollback(i) => sim.request_rollback(STAGES[i], "ops"),
        Ev::Retry(pick) => {
            let ids: Vec<ReleaseId> = sim
                .snap
                .releases
                .keys()
                .chain(sim.archive.releases.keys())
                .copied()
                .collect();
            if !ids.is_empty() {
                let r = ids[pick % ids.len()];
                if !sim.snap.retry_requests.iter().any(|q| q.release == r) {
                    sim.request_retry(r, "ops");
                }
            }
        }
        Ev::Advance(s) => sim.advance(secs(s)),
        Ev::Crash => sim.crash(),
        Ev::FinishAll => {
            for e in sim.pending() {
                sim.succeed(&e.key);
            }
        }
        Ev::Progress => sim.progress(),
        Ev::Wake => {
            if let Some(at) = sim.last_plan.wake_at.filter(|at| *at > sim.now) {
                sim.now = at;
            }
        }
    }
}

// ----- the invariants --------------------------------------------------------------------------------

fn paused(snap: &Snapshot, stage: &str) -> bool {
    snap.paused.is_some() || snap.stage(stage).is_some_and(|s| s.paused.is_some())
}

/// Invariant 6's target, computed independently: the newest history entry not marked bad,
/// other than the rolled-back release itself.
fn last_known_good(snap: &Snapshot, stage: &str, not: ReleaseId) -> Option<ReleaseId> {
    let history = &snap.stage(stage)?.history;
    history
        .iter()
        .rev()
        .copied()
        .find(|id| *id != not && snap.releases.get(id).is_none_or(|r| r.bad.is_none()))
}

/// Invariant 9, stated on its own: distinct approvers who approved this run's current
/// attempt, are listed, and did not bring the change (by email, whatever its case).
fn distinct_approvals(snap: &Snapshot, cfg: &Approval, release: ReleaseId, stage: &str) -> usize {
    let attempt = snap.run(release, stage).map_or(1, |r| r.attempt);
    let brought = |who: &str| {
        let listed = cfg.approvers.iter().find(|a| a.name == who);
        let rel = snap.releases.get(&release);
        match (listed, rel) {
            (Some(a), Some(r)) => r.contributors.iter().any(|c| {
                c.email
                    .as_deref()
                    .is_some_and(|e| e.eq_ignore_ascii_case(&a.email))
            }),
            _ => true,
        }
    };
    snap.approvals
        .iter()
        .filter(|a| a.release == release && a.stage == stage && a.decision == Decision::Approve)
        .filter(|a| a.attempt == attempt && !brought(&a.approver))
        .map(|a| a.approver.as_str())
        .collect::<BTreeSet<_>>()
        .len()
}

/// Watches every applied plan; remembers what invariant 4 and the key checks need.
pub struct Checker {
    cfg: Pipeline,
    /// Per stage, the newest release whose run there has been queued.
    queued: BTreeMap<String, ReleaseId>,
    keys: BTreeMap<String, Effect>,
}

macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+));
        }
    };
}

impl Checker {
    pub fn new(cfg: &Pipeline) -> Self {
        Self {
            cfg: cfg.clone(),
            queued: BTreeMap::new(),
            keys: BTreeMap::new(),
        }
    }

    pub fn step(&mut self, step: &Step<'_>) -> Result<(), String> {
        for a in step.actions {
            if let Action::Transition {
                release, stage, to, ..
            } = a
            {
                if *to == S::Queued {
                    let max = self.queued.entry(stage.to_string()).or_insert(*release);
                    *max = (*max).max(*release);
                }
            }
        }
        for a in step.actions {
            match a {
                Action::Transition {
                    release, stage, to, ..
                } => self.transition(step, *release, stage, *to)?,
                Action::Start(e) => self.start(step, e)?,
                _ => {}
            }
        }
        for stage in STAGES {
            let busy: Vec<String> = step
                .after
                .runs
                .iter()
                .filter(|r| r.stage == stage && r.status.changes_stage())
                .map(|r| format!("{} {}", r.release, r.status))
                .collect();
            ensure!(
                busy.len() <= 1,
                "invariant 3: {stage} has {busy:?} in flight at once"
            );
        }
        Ok(())
    }

    fn transition(&self, step: &Step<'_>, r: ReleaseId, stage: &str, to: S) -> Result<(), String> {
        let (before, after) = (&step.before, &step.after);
        let from = before
            .run(r, stage)
            .ok_or_else(|| format!("transition of a run that does not exist: {r} {stage}"))?
            .status;
        ensure!(
            from != to,
            "{r} {stage}: transition {from} → {to} changes nothing"
        );
        ensure!(
            !from.is_terminal() || (from == S::Succeeded && to == S::RollingBack),
            "{r} {stage}: left the terminal status {from} for {to}"
        );
        let bad = |s: &Snapshot| s.releases.get(&r).and_then(|x| x.bad.clone());
        if matches!(to, S::Queued | S::Checking | S::Deploying) {
            ensure!(
                bad(before).is_none() && bad(after).is_none(),
                "invariant 5: {r} is bad ({:?}) yet {stage} moved {from} → {to}",
                bad(after)
            );
        }
        if from == S::Queued && to == S::Checking {
            ensure!(
                !paused(before, stage),
                "invariant 7: {r} {stage} checks while paused"
            );
        }
        if to != S::Deploying {
            return Ok(());
        }
        let k = self.cfg.stage_index(stage).unwrap();
        if k > 0 {
            let prev = &self.cfg.stages[k - 1].name;
            for (when, snap) in [("before", before), ("after", after)] {
                let st = snap.run(r, prev).map(|p| p.status);
                ensure!(
                    st == Some(S::Succeeded),
                    "invariant 1: {r} deploys to {stage} while {prev} is {st:?} ({when})"
                );
            }
            let digest = before.releases.get(&r).and_then(|x| x.digest.clone());
            ensure!(
                digest.is_some(),
                "invariant 1: {r} deploys without a digest"
            );
        }
        if let Some(a) = &self.cfg.stages[k].approval {
            let n = distinct_approvals(before, a, r, stage);
            ensure!(
                n >= a.min_approvals as usize,
                "invariants 2 and 9: {r} deploys to {stage} with {n} of {} approvals from this attempt by listed approvers who did not bring the change",
                a.min_approvals
            );
        }
        if let Some(newer) = self.queued.get(stage).filter(|q| **q > r) {
            // `tollgate retry` may send an older release again into a stage a newer one was
            // queued in, once that newer one left it without deploying there (it failed,
            // expired, was rejected or superseded) or was marked bad.
            let attempt = before.run(r, stage).map_or(1, |x| x.attempt);
            let newer_out = before
                .run(*newer, stage)
                .is_none_or(|x| !x.status.entered())
                || before.releases.get(newer).is_some_and(|x| x.bad.is_some());
            if attempt == 1 || !newer_out {
                return Err(format!(
                    "invariant 4: {r} deploys to {stage} after newer {newer} was queued there"
                ));
            }
        }
        ensure!(
            !paused(before, stage),
            "invariant 7: {r} starts deploying to paused {stage}"
        );
        Ok(())
    }

    fn start(&mut self, step: &Step<'_>, e: &Effect) -> Result<(), String> {
        let derived = idempotency_key(&e.pipeline, e.release, &e.stage, e.attempt, &e.kind);
        ensure!(
            e.key == derived,
            "key {} is not derived from its effect",
            e.key
        );
        let first = self
            .keys
            .entry(e.key.to_string())
            .or_insert_with(|| e.clone());
        ensure!(
            first == e,
            "key {} names two effects: {first:?} and {e:?}",
            e.key
        );
        if let EffectKind::Rollback { target, .. } = e.kind {
            let want = last_known_good(step.before, &e.stage, e.release);
            ensure!(
                want == Some(target),
                "invariant 6: {} {} rolls back to {target}, last known-good is {want:?}",
                e.release,
                e.stage
            );
        }
        Ok(())
    }

    /// After a settle: planning again (now that the started effects are recorded) gives the
    /// same plan, changes nothing and starts no new key.
    pub fn at_rest(&self, sim: &Sim) -> Result<(), String> {
        let p = sim.plan();
        ensure!(
            p == sim.last_plan,
            "planning again without new facts differs:\n{:?}\n{:?}",
            sim.last_plan.actions,
            p.actions
        );
        ensure!(
            sim.changes(&p.actions).is_empty(),
            "settled, yet the plan still changes state: {:?}",
            p.actions
        );
        for a in &p.actions {
            if let Action::Start(e) = a {
                ensure!(
                    sim.is_pending(&e.key),
                    "re-planning starts a new key {}",
                    e.key
                );
            }
        }
        if let Some(at) = p.wake_at {
            ensure!(at >= sim.now, "wake_at {at} is in the past");
        }
        Ok(())
    }
}

/// Runs one sequence of events, checking every applied plan; returns the simulator at the end.
/// Each event says whether the engine reconciles right after it, or only after more facts
/// arrived (as when several webhooks land while it is busy).
pub fn run_checked(k: &Knobs, events: &[(Ev, bool)], seen: &mut Seen) -> Result<Sim, String> {
    let cfg = build(k);
    let mut checker = Checker::new(&cfg);
    let mut sim = Sim::new(cfg);
    sim.auto_approve = false;
    for (i, name) in STAGES.iter().enumerate() {
        if k.quiet[i] {
            sim.quiet.insert((*name).to_string());
        }
    }
    for (i, (ev, reconcile)) in events.iter().enumerate() {
        apply_event(&mut sim, ev);
        if !reconcile && i + 1 < events.len() {
            continue;
        }
        let mut failed = None;
        sim.settle_with(|step| {
            seen.step(step);
            if let (None, Err(e)) = (&failed, checker.step(step)) {
                failed = Some(format!("after event {i} ({ev:?}) at {}: {e}", step.at));
            }
        });
        if let Some(e) = failed {
            return Err(e);
        }
        checker
            .at_rest(&sim)
            .map_err(|e| format!("after event {i} ({ev:?}): {e}"))?;
    }
    Ok(sim)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn invariants_hold_whatever_the_world_does(
        k in knobs(),
        events in prop::collection::vec((chaotic(), prop::bool::weighted(0.75)), 1..60),
    ) {
        if let Err(e) = run_checked(&k, &events, &mut Seen::default()) {
            return Err(TestCaseError::fail(e));
        }
    }

    #[test]
    fn invariants_hold_when_releases_get_far(
        k in knobs(),
        events in prop::collection::vec((cooperative(), prop::bool::weighted(0.75)), 1..150),
    ) {
        if let Err(e) = run_checked(&k, &events, &mut Seen::default()) {
            return Err(TestCaseError::fail(e));
        }
    }
}

// ----- the generators reach the interesting states ---------------------------------------------------

/// How often the random worlds reached the states worth checking.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    prod_deploys: usize,
    prod_succeeded: usize,
    rolled_back: usize,
    rollback_failed: usize,
    manual_rollback: usize,
    current_rolled_back: usize,
    superseded_awaiting: usize,
    expired: usize,
    rejected: usize,
    window_wait: usize,
    paused_wait: usize,
    abandoned: usize,
    bake_without_data: usize,
}

impl Seen {
    fn step(&mut self, step: &Step<'_>) {
        for a in step.actions {
            match a {
                Action::Transition {
                    release,
                    stage,
                    to,
                    reason,
                    ..
                } => {
                    let from = step.before.run(*release, stage).map(|r| r.status);
                    let prod = stage == "prod";
                    match to {
                        S::Deploying if prod => self.prod_deploys += 1,
                        S::Succeeded if prod => self.prod_succeeded += 1,
                        S::RolledBack => self.rolled_back += 1,
                        S::Failed if matches!(reason, Reason::RollbackFailed { .. }) => {
                            self.rollback_failed += 1
                        }
                        S::Failed if matches!(reason, Reason::NotEnoughData { .. }) => {
                            self.bake_without_data += 1
                        }
                        S::RollingBack if from == Some(S::Succeeded) => {
                            self.current_rolled_back += 1
                        }
                        S::RollingBack if matches!(reason, Reason::ManualRollback { .. }) => {
                            self.manual_rollback += 1
                        }
                        S::Superseded if from == Some(S::AwaitingApproval) => {
                            self.superseded_awaiting += 1
                        }
                        S::Expired => self.expired += 1,
                        S::Rejected => self.rejected += 1,
                        _ => {}
                    }
                }
                Action::Note {
                    reason: Reason::OutsideWindow { .. },
                    ..
                } => self.window_wait += 1,
                Action::Note {
                    reason: Reason::PipelinePaused { .. } | Reason::StagePaused { .. },
                    ..
                } => self.paused_wait += 1,
                Action::Abandon { key } => {
                    let done = step.after.effect(key).map(|e| e.status);
                    if done == Some(crate::domain::EffectStatus::Failed) {
                        self.abandoned += 1;
                    }
                }
                _ => {}
            }
        }
    }

    fn all(&self) -> [usize; 13] {
        [
            self.current_rolled_back,
            self.prod_deploys,
            self.prod_succeeded,
            self.rolled_back,
            self.rollback_failed,
            self.manual_rollback,
            self.superseded_awaiting,
            self.expired,
            self.rejected,
            self.window_wait,
            self.paused_wait,
            self.abandoned,
            self.bake_without_data,
        ]
    }
}

/// The property tests above would prove little if their random worlds never reached prod,
/// never rolled back or never superseded a pending approval: check that they do.
#[test]
fn the_random_worlds_reach_every_interesting_state() {
    let mut runner = TestRunner::deterministic();
    let mut seen = Seen::default();
    for strategy in [chaotic().boxed(), cooperative().boxed()] {
        let world = (
            knobs(),
            prop::collection::vec((strategy, prop::bool::weighted(0.75)), 60..150),
        );
        for _ in 0..150 {
            let (k, events) = world.new_tree(&mut runner).unwrap().current();
            run_checked(&k, &events, &mut seen).unwrap();
        }
    }
    eprintln!("{seen:?}");
    assert!(seen.all().iter().all(|n| *n > 0), "{seen:?}");
}

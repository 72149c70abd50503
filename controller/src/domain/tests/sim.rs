//! A small in-memory engine for the planner's tests: it holds a snapshot, applies plan actions
//! the way the real engine does, and lets a test script the outside world (releases, effect
//! outcomes, approvals, alarms, pauses, rollback requests, the clock).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc, Weekday};
use chrono_tz::Tz;

use crate::config::{
    AlarmDelay, Approval, Approver, Artifact, Deploy, InsufficientData, Notifications, Pipeline,
    Promote, Source, Stage, Target, Window, Windows,
};
use crate::domain::{
    Action, AlarmFact, AlarmReading, AlarmState, ApprovalRecord, BadMark, Contributor,
    ContributorRole, Decision, Effect, EffectKind, EffectOutput, EffectRecord, EffectStatus, Plan,
    Reason, Release, ReleaseId, RetryRequest, RollbackRequest, RunStatus, Snapshot, StageName,
    StageRun, StageState, plan,
};

pub const PIPELINE: &str = "shop";
pub const APPROVERS: [&str; 3] = ["ana", "bo", "cy"];

/// Monday 2 March 2026, 10:00 UTC (11:00 in Berlin): inside the Mon–Thu 09–16 window.
pub fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 2, 10, 0, 0).unwrap()
}

pub fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// A stage with one target, no tests, no alarms, no bake, no approval, no windows.
pub fn stage(name: &str) -> Stage {
    Stage {
        name: name.to_string().into(),
        targets: vec![target(name, 0)],
        deploy: Deploy::CodePipeline {
            pipeline: format!("{name}-deploy"),
            variable: "IMAGE".into(),
            rollback_stage: "Deploy".into(),
        },
        before: vec![],
        after: vec![],
        bake: Duration::ZERO,
        alarms: vec![],
        min_datapoints: 0,
        insufficient_data: InsufficientData::Wait,
        bake_max_wait: secs(3600),
        alarm_delay: AlarmDelay::Auto,
        promote: Promote::Retag,
        approval: None,
        windows: None,
    }
}

pub fn target(stage: &str, wave: usize) -> Target {
    let regions = ["eu-west-1", "us-east-1", "ap-southeast-2"];
    Target {
        account: format!("acct-{stage}"),
        region: regions[wave % regions.len()].to_string(),
    }
}

/// An approval gate with three approvers and a four-hour timeout.
pub fn approval(min: u32) -> Approval {
    Approval {
        topic: "arn:aws:sns:eu-west-1:111111111111:approvals".into(),
        approvers: APPROVERS
            .iter()
            .map(|n| Approver {
                name: (*n).to_string(),
                email: format!("{n}@example.com"),
                github: None,
            })
            .collect(),
        min_approvals: min,
        timeout: secs(4 * 3600),
        allow_author: false,
    }
}

/// Mon–Thu 09:00–16:00 in `tz`.
pub fn office_hours(tz: Tz) -> Windows {
    Windows {
        timezone: tz,
        allow: vec![Window {
            days: vec![Weekday::Mon, Weekday::Tue, Weekday::Wed, Weekday::Thu],
            start: chrono::NaiveTime::from_hms_opt(9, 0, 0).unwrap(),
            end: chrono::NaiveTime::from_hms_opt(16, 0, 0).unwrap(),
        }],
        blackouts: vec![],
    }
}

pub fn pipeline(stages: Vec<Stage>) -> Pipeline {
    Pipeline {
        name: PIPELINE.into(),
        source: Source {
            repository: "acme/shop".into(),
            branch: "main".into(),
            build_workflow: None,
        },
        artifact: Artifact {
            repository: "shop".into(),
            account: "build".into(),
            region: "eu-west-1".into(),
            tag: "{sha}".into(),
            wait: secs(600),
        },
        tests: BTreeMap::new(),
        notifications: Notifications {
            topic: Some("arn:aws:sns:eu-west-1:111111111111:tollgate".into()),
        },
        alarm_topics: vec![],
        stages,
    }
}

/// beta → gamma → prod, prod gated by one approval of three.
pub fn three_stages() -> Pipeline {
    let mut prod = stage("prod");
    prod.approval = Some(approval(1));
    pipeline(vec![stage("beta"), stage("gamma"), prod])
}

/// One plan and what applying it did.
pub struct Step<'a> {
    pub at: DateTime<Utc>,
    pub before: &'a Snapshot,
    pub actions: &'a [Action],
    pub after: &'a Snapshot,
}

/// One plan as the engine applies it to the store.
#[derive(Debug, Clone)]
pub struct Applied {
    pub at: DateTime<Utc>,
    /// Effects recorded as begun (pending) before the state changes.
    pub begun: Vec<Effect>,
    pub changes: Vec<Action>,
}

/// What retired releases leave in the store, out of the planner's sight.
#[derive(Debug, Default)]
pub struct Archive {
    pub releases: BTreeMap<ReleaseId, Release>,
    pub runs: Vec<StageRun>,
    pub effects: Vec<EffectRecord>,
    pub approvals: Vec<ApprovalRecord>,
}

pub struct Sim {
    pub cfg: Pipeline,
    /// What the store loads for the planner: active releases with their runs, effects and
    /// approvals, plus the releases named in stage histories.
    pub snap: Snapshot,
    /// Releases that left the working set, and what they leave behind.
    pub retired: BTreeSet<ReleaseId>,
    pub archive: Archive,
    /// Effects running in the (simulated) process; a crash forgets them.
    pub running: BTreeSet<String>,
    pub now: DateTime<Utc>,
    /// The plan of the last call that changed nothing (what the engine would sleep on).
    pub last_plan: Plan,
    /// Every effect started, in order, the first time its key was seen.
    pub started: Vec<Effect>,
    /// Every Start action the planner emitted (including resumes of pending effects).
    pub starts_emitted: Vec<Effect>,
    /// Give the approvals a run needs when `drive` finds nothing else to do.
    pub auto_approve: bool,
    /// When set, every applied plan is written here as the engine would hand it to the store:
    /// (time, effects begun, state changes).
    pub journal: Option<Vec<Applied>>,
    /// Stages whose service gets no traffic: their bake reads find every alarm in
    /// INSUFFICIENT_DATA with no data points.
    pub quiet: BTreeSet<String>,
    next_release: i64,
    next_request: i64,
}

impl Sim {
    pub fn new(cfg: Pipeline) -> Self {
        let stages = cfg
            .stages
            .iter()
            .map(|s| StageState {
                name: s.name.clone(),
                ..StageState::default()
            })
            .collect();
        Self {
            cfg,
            snap: Snapshot {
                stages,
                ..Snapshot::default()
            },
            retired: BTreeSet::new(),
            archive: Archive::default(),
            running: BTreeSet::new(),
            now: t0(),
            last_plan: Plan::default(),
            quiet: BTreeSet::new(),
            started: vec![],
            starts_emitted: vec![],
            auto_approve: true,
            journal: None,
            next_release: 1,
            next_request: 1,
        }
    }

    // ----- the engine's side -----------------------------------------------------------------

    pub fn plan(&self) -> Plan {
        plan(&self.cfg, &self.snap, self.now)
    }

    /// The release leaves the working set: the planner no longer sees its runs, effects and
    /// approvals, nor the release itself unless a stage history names it.
    fn retire(&mut self, id: ReleaseId) {
        if !self.retired.insert(id) {
            return;
        }
        let (snap, a) = (&mut self.snap, &mut self.archive);
        a.runs.extend(take(&mut snap.runs, |r| r.release == id));
        a.effects
            .extend(take(&mut snap.effects, |e| e.release == id));
        a.approvals
            .extend(take(&mut snap.approvals, |x| x.release == id));
        if !snap.stages.iter().any(|s| s.history.contains(&id)) {
            if let Some(r) = snap.releases.remove(&id) {
                a.releases.insert(id, r);
            }
        }
    }

    /// The state changes the engine applies: all but abandoning an effect that still runs.
    pub fn changes(&self, actions: &[Action]) -> Vec<Action> {
        actions
            .iter()
            .filter(|a| a.is_state_change())
            .filter(
                |a| !matches!(a, Action::Abandon { key } if self.running.contains(key.as_str())),
            )
            .cloned()
            .collect()
    }

    /// Applies a plan's actions the way the engine does: effects first, then state changes.
    /// Returns whether the store changed.
    pub fn apply(&mut self, actions: &[Action]) -> bool {
        let changes = self.changes(actions);
        let mut begun = Vec::new();
        for a in actions {
            if let Action::Start(e) = a {
                if self.snap.effect(&e.key).is_none() {
                    begun.push(e.clone());
                }
                self.start(e);
            }
        }
        if let Some(j) = &mut self.journal {
            j.push(Applied {
                at: self.now,
                begun,
                changes: changes.clone(),
            });
        }
        for a in &changes {
            self.apply_change(a);
        }
        !changes.is_empty()
    }

    fn start(&mut self, e: &Effect) {
        self.starts_emitted.push(e.clone());
        if let Some(rec) = self.snap.effect(&e.key) {
            if rec.status == EffectStatus::Pending {
                self.running.insert(e.key.to_string());
            }
            return;
        }
        self.running.insert(e.key.to_string());
        self.started.push(e.clone());
        self.snap.effects.push(EffectRecord {
            key: e.key.clone(),
            release: e.release,
            stage: e.stage.clone(),
            kind: e.kind.clone(),
            attempt: e.attempt,
            status: EffectStatus::Pending,
            detail: String::new(),
            output: EffectOutput::None,
            place: None,
            started_at: self.now,
            finished_at: None,
        });
    }

    fn apply_change(&mut self, a: &Action) {
        let now = self.now;
        match a {
            Action::Transition {
                release,
                stage,
                to,
                reason,
                alarm,
            } => {
                let run = self.run_mut(*release, stage);
                run.status = *to;
                run.reason = reason.clone();
                run.since = now;
                if alarm.is_some() {
                    run.rollback_alarm = *alarm;
                }
                if *to == RunStatus::Deploying {
                    run.deploy_started = Some(now);
                }
            }
            Action::Note {
                release,
                stage,
                reason,
                ..
            } => self.run_mut(*release, stage).reason = reason.clone(),
            Action::MarkBad {
                release,
                stage,
                reason,
            } => {
                let r = self.release_mut(*release);
                if r.bad.is_none() {
                    r.bad = Some(BadMark {
                        stage: stage.clone(),
                        reason: reason.clone(),
                    });
                }
            }
            Action::ReopenRun { release, stage } => {
                let run = self.snap.runs.iter_mut().find(|r| {
                    r.release == *release && r.stage == *stage && r.status == RunStatus::Superseded
                });
                if let Some(run) = run {
                    run.status = RunStatus::Waiting;
                    run.reason = Reason::PreviousStage;
                    run.attempt += 1;
                    run.since = now;
                    run.rollback_alarm = None;
                    run.deploy_started = None;
                }
            }
            Action::AddRun { release, stage } => {
                let exists = self
                    .snap
                    .runs
                    .iter()
                    .any(|r| r.release == *release && r.stage == *stage);
                if !exists {
                    self.snap.runs.push(StageRun {
                        release: *release,
                        stage: stage.clone(),
                        status: RunStatus::Waiting,
                        reason: Reason::PreviousStage,
                        attempt: 1,
                        since: now,
                        rollback_alarm: None,
                        deploy_started: None,
                    });
                }
            }
            Action::FailRelease { release, reason } => {
                let r = self.release_mut(*release);
                if r.failed.is_none() {
                    r.failed = Some(reason.clone());
                }
            }
            Action::RecordGood { stage, release } => {
                self.stage_mut(stage).history.push(*release);
                // A release named in a history is loaded even when retired.
                if let Some(r) = self.archive.releases.remove(release) {
                    self.snap.releases.insert(*release, r);
                }
            }
            Action::PauseStage { stage, reason } => {
                self.stage_mut(stage).paused = Some(reason.clone());
            }
            Action::ConsumeRollbackRequest { stage, request } => {
                let s = self.stage_mut(stage);
                if s.rollback_request
                    .as_ref()
                    .is_some_and(|r| r.id == *request)
                {
                    s.rollback_request = None;
                }
            }
            Action::Retry {
                request,
                release,
                stages,
                by,
            } => {
                for stage in stages {
                    let run = self.run_mut(*release, stage);
                    if run.status.retryable() {
                        run.status = RunStatus::Waiting;
                        run.reason = Reason::RetryRequested { by: by.clone() };
                        run.attempt += 1;
                        run.since = now;
                        run.rollback_alarm = None;
                        run.deploy_started = None;
                    }
                }
                self.snap.retry_requests.retain(|r| r.id != *request);
            }
            Action::RefuseRetry { request, .. } => {
                self.snap.retry_requests.retain(|r| r.id != *request);
            }
            Action::Retire { release } => self.retire(*release),
            Action::Abandon { key } => {
                if let Some(e) = self.snap.effects.iter_mut().find(|e| &e.key == key) {
                    if e.status == EffectStatus::Pending {
                        e.status = EffectStatus::Failed;
                        e.detail = "abandoned: no longer needed".into();
                        e.finished_at = Some(now);
                    }
                }
            }
            Action::Start(_) => {}
        }
    }

    /// One plan applied; false when it changed nothing (the plan is kept in `last_plan`).
    pub fn step(&mut self) -> bool {
        self.step_with(|_| {})
    }

    fn step_with(&mut self, see: impl FnOnce(&Step<'_>)) -> bool {
        let p = self.plan();
        let before = self.snap.clone();
        if !self.apply(&p.actions) {
            self.last_plan = p;
            return false;
        }
        see(&Step {
            at: self.now,
            before: &before,
            actions: &p.actions,
            after: &self.snap,
        });
        true
    }

    /// Plans and applies until nothing changes; panics when that does not happen.
    pub fn settle(&mut self) {
        self.settle_with(|_| {});
    }

    /// [`Sim::settle`], showing every applied plan to `see`.
    pub fn settle_with(&mut self, mut see: impl FnMut(&Step<'_>)) {
        let mut tail = Vec::new();
        let now = self.now;
        for _ in 0..50 {
            let changed = self.step_with(|s| {
                tail = s.actions.iter().map(|a| a.describe(now)).collect();
                see(s);
            });
            if !changed {
                return;
            }
        }
        panic!("plan did not converge in 50 rounds; last actions: {tail:#?}");
    }

    // ----- the outside world -----------------------------------------------------------------

    /// A new release (newer than every earlier one), with a run waiting in every stage.
    pub fn new_release(&mut self) -> ReleaseId {
        let id = ReleaseId(self.next_release);
        self.next_release += 1;
        self.snap.releases.insert(
            id,
            Release {
                id,
                pipeline: PIPELINE.into(),
                sha: format!("{:040x}", id.0).into(),
                branch: "main".into(),
                author_name: "Dee Veloper".into(),
                author_email: "dee@example.com".into(),
                author_login: Some("dee".into()),
                contributors: vec![Contributor {
                    role: ContributorRole::Author,
                    login: Some("dee".into()),
                    email: Some("dee@example.com".into()),
                }],
                pulls_checked: false,
                message: format!("change {}", id.0),
                url: None,
                digest: None,
                created_at: self.now,
                bad: None,
                alarm_override: None,
                window_override: None,
                failed: None,
            },
        );
        for s in &self.cfg.stages {
            self.snap.runs.push(StageRun {
                release: id,
                stage: s.name.clone(),
                status: RunStatus::Waiting,
                reason: Reason::PreviousStage,
                attempt: 1,
                since: self.now,
                rollback_alarm: None,
                deploy_started: None,
            });
        }
        id
    }

    /// Finishes a pending effect. A resolved artifact gives the release its digest.
    pub fn finish(&mut self, key: &str, status: EffectStatus, detail: &str, output: EffectOutput) {
        let now = self.now;
        let rec = self
            .snap
            .effects
            .iter_mut()
            .find(|e| e.key == key)
            .unwrap_or_else(|| panic!("no effect {key}"));
        assert_eq!(rec.status, EffectStatus::Pending, "{key} already finished");
        rec.status = status;
        rec.detail = detail.to_string();
        rec.output = output;
        rec.finished_at = Some(now);
        self.running.remove(key);
        if let (EffectStatus::Succeeded, EffectOutput::Resolved { digest }) = (status, &rec.output)
        {
            let (release, digest) = (rec.release, digest.clone());
            let r = self.release_mut(release);
            if r.digest.is_none() {
                r.digest = Some(digest);
            }
        }
    }

    /// Finishes an effect successfully with what its kind produces (an artifact's digest, no
    /// alarm in ALARM, a deployed image).
    pub fn succeed(&mut self, key: &str) {
        let rec = self
            .snap
            .effect(key)
            .unwrap_or_else(|| panic!("no effect {key}"));
        let output = match &rec.kind {
            EffectKind::ResolveArtifact => EffectOutput::Resolved {
                digest: format!("sha256:{:064x}", rec.release.0).into(),
            },
            EffectKind::CheckAlarms { .. } => EffectOutput::Alarms {
                in_alarm: vec![],
                readings: vec![],
            },
            EffectKind::PollAlarms { .. } if self.quiet.contains(rec.stage.as_str()) => {
                EffectOutput::alarms(self.readings(
                    &rec.stage,
                    0,
                    Some(AlarmState::InsufficientData),
                ))
            }
            EffectKind::PollAlarms { round } => {
                EffectOutput::alarms(self.readings(&rec.stage, *round + 1, None))
            }
            _ => EffectOutput::None,
        };
        self.finish(key, EffectStatus::Succeeded, "ok", output);
    }

    pub fn fail(&mut self, key: &str, detail: &str) {
        self.finish(key, EffectStatus::Failed, detail, EffectOutput::None);
    }

    /// A succeeded alarm read that found `alarm` in ALARM.
    pub fn succeed_in_alarm(&mut self, key: &str, alarm: &str) {
        let stage = self
            .effect(key)
            .map(|e| e.stage.clone())
            .unwrap_or_default();
        let mut readings = self.readings(&stage, 1, None);
        readings.push(AlarmReading {
            alarm: alarm.to_string(),
            state: AlarmState::Alarm,
            datapoints: Some(1),
            reports_within_secs: None,
        });
        let out = EffectOutput::Alarms {
            in_alarm: vec![alarm.to_string()],
            readings,
        };
        self.finish(key, EffectStatus::Succeeded, "read alarms", out);
    }

    /// A bake read of `stage`'s alarms in each of its targets: `state` (default OK) and
    /// `datapoints` each.
    pub fn readings(
        &self,
        stage: &str,
        datapoints: u32,
        state: Option<AlarmState>,
    ) -> Vec<AlarmReading> {
        let Some(s) = self.cfg.stage(stage) else {
            return vec![];
        };
        let one = |alarm: &String| AlarmReading {
            alarm: alarm.clone(),
            state: state.unwrap_or(AlarmState::Ok),
            datapoints: Some(datapoints),
            reports_within_secs: None,
        };
        s.targets
            .iter()
            .flat_map(|_| s.alarms.iter().map(one))
            .collect()
    }

    /// A succeeded bake read with these readings.
    pub fn succeed_with(&mut self, key: &str, readings: Vec<AlarmReading>) {
        let out = EffectOutput::alarms(readings);
        self.finish(key, EffectStatus::Succeeded, "read alarms", out);
    }

    /// Effects running now, which the world may finish.
    pub fn pending(&self) -> Vec<EffectRecord> {
        self.snap
            .effects
            .iter()
            .filter(|e| e.status == EffectStatus::Pending && self.running.contains(e.key.as_str()))
            .cloned()
            .collect()
    }

    /// The run's current attempt (a decision is recorded against it).
    pub fn attempt_of(&self, release: ReleaseId, stage: &str) -> u32 {
        self.snap
            .run(release, stage)
            .or_else(|| {
                self.archive
                    .runs
                    .iter()
                    .find(|r| r.release == release && r.stage == stage)
            })
            .map_or(1, |r| r.attempt)
    }

    /// An approver's decision. Like the store (`record_approval`), the first decision an
    /// approver gives for a run's attempt is the one kept: a second one records nothing.
    pub fn decide(&mut self, release: ReleaseId, stage: &str, approver: &str, d: Decision) {
        let attempt = self.attempt_of(release, stage);
        let given = self
            .snap
            .approvals
            .iter()
            .chain(&self.archive.approvals)
            .any(|a| {
                a.release == release
                    && a.stage == stage
                    && a.attempt == attempt
                    && a.approver == approver
            });
        if given {
            return;
        }
        let a = ApprovalRecord {
            release,
            stage: stage.into(),
            attempt,
            approver: approver.into(),
            verified: true,
            decision: d,
            at: self.now,
        };
        if self.retired.contains(&release) {
            self.archive.approvals.push(a);
        } else {
            self.snap.approvals.push(a);
        }
    }

    pub fn approve(&mut self, release: ReleaseId, stage: &str, approver: &str) {
        self.decide(release, stage, approver, Decision::Approve);
    }

    pub fn reject(&mut self, release: ReleaseId, stage: &str, approver: &str) {
        self.decide(release, stage, approver, Decision::Reject);
    }

    pub fn alarm(&mut self, stage: &str, alarm: &str, firing: bool) {
        self.alarm_changed_at(stage, alarm, firing, self.now);
    }

    /// An alarm notification arriving now about a state change at `changed_at` (a late or a
    /// replayed delivery when that is earlier).
    pub fn alarm_changed_at(
        &mut self,
        stage: &str,
        alarm: &str,
        firing: bool,
        changed_at: DateTime<Utc>,
    ) {
        let id = self.snap.alarms.len() as i64 + 1;
        self.snap.alarms.push(AlarmFact {
            id,
            stage: stage.into(),
            alarm: alarm.into(),
            firing,
            at: self.now,
            changed_at,
        });
    }

    /// A configuration reload: the pipeline becomes `cfg`; a stage it adds gets its (empty)
    /// state, as the store's snapshot gives every configured stage.
    pub fn reload(&mut self, cfg: Pipeline) {
        for s in &cfg.stages {
            if !self.snap.stages.iter().any(|x| x.name == s.name) {
                self.snap.stages.push(StageState {
                    name: s.name.clone(),
                    ..StageState::default()
                });
            }
        }
        self.cfg = cfg;
    }

    pub fn pause_pipeline(&mut self, why: &str) {
        self.snap.paused = Some(why.into());
    }

    pub fn resume_pipeline(&mut self) {
        self.snap.paused = None;
    }

    pub fn pause_stage(&mut self, stage: &str, why: &str) {
        self.stage_mut(stage).paused = Some(why.into());
    }

    pub fn resume_stage(&mut self, stage: &str) {
        self.stage_mut(stage).paused = None;
    }

    pub fn request_rollback(&mut self, stage: &str, who: &str) {
        let id = self.next_request;
        self.next_request += 1;
        self.stage_mut(stage).rollback_request = Some(RollbackRequest { id, by: who.into() });
    }

    /// `tollgate retry`: the request is recorded and the release is back in the working set.
    pub fn request_retry(&mut self, release: ReleaseId, who: &str) {
        let id = self.next_request;
        self.next_request += 1;
        self.unretire(release);
        self.snap.retry_requests.push(RetryRequest {
            id,
            release,
            by: who.into(),
        });
    }

    /// The release returns to the working set (the store sets it active again).
    fn unretire(&mut self, id: ReleaseId) {
        if !self.retired.remove(&id) {
            return;
        }
        let (snap, a) = (&mut self.snap, &mut self.archive);
        snap.runs.extend(take(&mut a.runs, |r| r.release == id));
        snap.effects
            .extend(take(&mut a.effects, |e| e.release == id));
        snap.approvals
            .extend(take(&mut a.approvals, |x| x.release == id));
        if let Some(r) = a.releases.remove(&id) {
            snap.releases.insert(id, r);
        }
    }

    /// The controller restarts: nothing runs until a plan starts (resumes) it again.
    pub fn crash(&mut self) {
        self.running.clear();
    }

    pub fn advance(&mut self, d: Duration) {
        self.now += chrono::Duration::from_std(d).unwrap();
    }

    // ----- reading -----------------------------------------------------------------------------

    /// A run, live or retired.
    pub fn run(&self, release: ReleaseId, stage: &str) -> &StageRun {
        self.snap
            .run(release, stage)
            .or_else(|| {
                self.archive
                    .runs
                    .iter()
                    .find(|r| r.release == release && r.stage == stage)
            })
            .unwrap_or_else(|| panic!("no run of {release} in {stage}"))
    }

    /// Every effect record, live or retired.
    pub fn all_effects(&self) -> impl Iterator<Item = &EffectRecord> {
        self.snap.effects.iter().chain(&self.archive.effects)
    }

    /// An effect record, live or retired.
    pub fn effect(&self, key: &str) -> Option<&EffectRecord> {
        self.all_effects().find(|e| e.key == key)
    }

    pub fn status(&self, release: ReleaseId, stage: &str) -> RunStatus {
        self.run(release, stage).status
    }

    pub fn reason(&self, release: ReleaseId, stage: &str) -> Reason {
        self.run(release, stage).reason.clone()
    }

    /// A release, live or retired.
    pub fn release(&self, id: ReleaseId) -> &Release {
        self.snap
            .releases
            .get(&id)
            .or_else(|| self.archive.releases.get(&id))
            .unwrap_or_else(|| panic!("no release {id}"))
    }

    pub fn history(&self, stage: &str) -> Vec<ReleaseId> {
        self.snap.stage(stage).unwrap().history.clone()
    }

    /// The idempotency key of a run's effect (attempt taken from the run).
    pub fn key(&self, release: ReleaseId, stage: &str, kind: EffectKind) -> String {
        let attempt = if stage.is_empty() {
            0
        } else {
            self.run(release, stage).attempt
        };
        Effect::new(PIPELINE, release, stage, attempt, kind)
            .key
            .to_string()
    }

    pub fn resolve_key(&self, release: ReleaseId) -> String {
        self.key(release, "", EffectKind::ResolveArtifact)
    }

    pub fn is_pending(&self, key: &str) -> bool {
        self.snap
            .effect(key)
            .is_some_and(|e| e.status == EffectStatus::Pending)
    }

    // ----- driving -----------------------------------------------------------------------------

    /// A new release whose artifact resolves; settled.
    pub fn resolved_release(&mut self) -> ReleaseId {
        let r = self.new_release();
        self.settle();
        let key = self.resolve_key(r);
        self.succeed(&key);
        r
    }

    /// Lets the world cooperate — every pending effect succeeds, approvals are given (when
    /// `auto_approve`), the clock jumps to the next wake-up — one plan at a time, until `done`.
    pub fn drive_until(&mut self, done: impl Fn(&Sim) -> bool) {
        for _ in 0..2000 {
            if done(self) {
                return;
            }
            if self.step() {
                continue;
            }
            if let Some(e) = self.pending().first() {
                let key = e.key.clone();
                self.succeed(&key);
            } else if !(self.auto_approve && self.give_approvals()) {
                match self.last_plan.wake_at {
                    Some(at) if at > self.now => self.now = at,
                    _ => panic!("stuck: nothing pending and nothing to wait for"),
                }
            }
        }
        panic!("drive_until did not finish");
    }

    /// One cooperative move of the world: running effects succeed; if none runs, the
    /// approvals a run waits for arrive; if none waits, the clock jumps to the next wake-up.
    pub fn progress(&mut self) {
        let pending = self.pending();
        for e in &pending {
            self.succeed(&e.key);
        }
        if pending.is_empty() && !self.give_approvals() {
            if let Some(at) = self.last_plan.wake_at.filter(|at| *at > self.now) {
                self.now = at;
            }
        }
    }

    /// Approvals from approvers who have not decided yet, for every run still short of them.
    fn give_approvals(&mut self) -> bool {
        let mut gave = false;
        let waiting: Vec<(ReleaseId, StageName)> = self
            .snap
            .runs
            .iter()
            .filter(|r| r.status == RunStatus::AwaitingApproval)
            .map(|r| (r.release, r.stage.clone()))
            .collect();
        for (r, s) in waiting {
            let Some(a) = self.cfg.stage(&s).and_then(|st| st.approval.clone()) else {
                continue;
            };
            let attempt = self.attempt_of(r, &s);
            let decided: BTreeSet<String> = self
                .snap
                .approvals
                .iter()
                .filter(|x| x.release == r && x.stage == s && x.attempt == attempt)
                .map(|x| x.approver.clone())
                .collect();
            let brought = |who: &str| {
                self.snap.releases.get(&r).is_some_and(|rel| {
                    rel.contributors
                        .iter()
                        .any(|c| c.email.as_deref() == Some(&format!("{who}@example.com")))
                })
            };
            let mut missing = (a.min_approvals as usize).saturating_sub(decided.len());
            let eligible: Vec<&str> = APPROVERS
                .iter()
                .copied()
                .filter(|w| !decided.contains(*w) && !brought(w))
                .collect();
            for who in eligible {
                if missing == 0 {
                    break;
                }
                self.approve(r, &s, who);
                missing -= 1;
                gave = true;
            }
        }
        gave
    }

    pub fn drive_to(&mut self, release: ReleaseId, stage: &str, status: RunStatus) {
        let stage = stage.to_string();
        self.drive_until(move |s| s.status(release, &stage) == status);
    }

    /// Drives until nothing is left to do for any run.
    pub fn drive_to_rest(&mut self) {
        self.drive_until(|s| {
            s.snap.runs.iter().all(|r| r.status.is_terminal())
                && s.pending().is_empty()
                && s.plan().actions.is_empty()
        });
    }

    /// A new release promoted through every stage.
    pub fn promote(&mut self) -> ReleaseId {
        let r = self.new_release();
        let last = self.cfg.stages.last().unwrap().name.clone();
        self.drive_to(r, &last, RunStatus::Succeeded);
        self.drive_to_rest();
        r
    }

    // ----- internals -----------------------------------------------------------------------------

    fn run_mut(&mut self, release: ReleaseId, stage: &str) -> &mut StageRun {
        self.snap
            .runs
            .iter_mut()
            .find(|r| r.release == release && r.stage == stage)
            .unwrap_or_else(|| panic!("no run of {release} in {stage}"))
    }

    fn release_mut(&mut self, id: ReleaseId) -> &mut Release {
        self.snap
            .releases
            .get_mut(&id)
            .unwrap_or_else(|| panic!("no release {id}"))
    }

    fn stage_mut(&mut self, name: &str) -> &mut StageState {
        self.snap
            .stages
            .iter_mut()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no stage {name}"))
    }
}

/// Removes and returns the elements matching `f`.
fn take<T>(v: &mut Vec<T>, f: impl Fn(&T) -> bool) -> Vec<T> {
    let (gone, kept) = std::mem::take(v).into_iter().partition(|x| f(x));
    *v = kept;
    gone
}

/// The transitions of a plan, as (release, stage, to, reason).
pub fn transitions(p: &Plan) -> Vec<(ReleaseId, StageName, RunStatus, Reason)> {
    p.actions
        .iter()
        .filter_map(|a| match a {
            Action::Transition {
                release,
                stage,
                to,
                reason,
                ..
            } => Some((*release, stage.clone(), *to, reason.clone())),
            _ => None,
        })
        .collect()
}

/// The transition a plan makes for one run, if any: (to, reason).
pub fn transition_of(p: &Plan, release: ReleaseId, stage: &str) -> Option<(RunStatus, Reason)> {
    transitions(p)
        .into_iter()
        .find(|(r, s, _, _)| *r == release && s == stage)
        .map(|(_, _, to, why)| (to, why))
}

/// The effects a plan starts.
pub fn starts(p: &Plan) -> Vec<Effect> {
    p.actions
        .iter()
        .filter_map(|a| match a {
            Action::Start(e) => Some(e.clone()),
            _ => None,
        })
        .collect()
}

/// The notes a plan writes for one run.
pub fn notes_of(p: &Plan, release: ReleaseId, stage: &str) -> Vec<Reason> {
    p.actions
        .iter()
        .filter_map(|a| match a {
            Action::Note {
                release: r,
                stage: s,
                reason,
                ..
            } if *r == release && s == stage => Some(reason.clone()),
            _ => None,
        })
        .collect()
}

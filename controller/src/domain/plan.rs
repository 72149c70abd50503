//! `plan(pipeline, snapshot, now)`: the whole promotion logic as a pure function.
//!
//! Guarantees: no I/O, no clock of its own, deterministic. Each call looks at the current
//! facts and returns what to do next; calling it again with the same facts returns the same
//! actions, so the executor can crash and resume anywhere. At most one status change per run
//! per call: the engine applies them and plans again until nothing changes.
//!
//! The invariants (each is a property test in `tests/properties.rs`):
//! 1. A stage deploys a release only after the previous stage succeeded with that release.
//! 2. A stage with `approval` deploys only with enough recorded approvals for that release.
//! 3. At most one deploy or rollback in flight per stage.
//! 4. A newer release supersedes older ones that have not started deploying in a stage.
//! 5. A release rolled back anywhere is never promoted again automatically.
//! 6. Rollback targets the stage's last known-good release.
//! 7. A paused pipeline or stage starts nothing new.
//! 9. An approval counts only for the attempt it was given in, from a currently listed
//!    approver who did not bring the change ([`super::approval::counts`]).

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::action::{Action, Effect, EffectKind, NotifyEvent, Phase, ReportState};
use super::approval;
use super::bake;
use super::names::{EffectKey, StageName};
use super::reason::{AlarmProblem, Reason, RequestState};
use super::retry::retry_from;
use super::types::*;
use super::window;
use crate::config::{InsufficientData, Pipeline, Stage};

/// Re-check a stage's alarms this often while they block entry.
pub const ALARM_RECHECK: Duration = Duration::from_secs(60);
/// The alarm gate in front of a deploy (and of each further wave) trusts a clean read of the
/// stage's alarms at most this old; an older one is read again first.
pub const ALARM_GATE_FRESH: Duration = Duration::from_secs(10);
/// Poll the alarms during bake at most this often (the SNS push is the fast path).
pub const BAKE_POLL: Duration = Duration::from_secs(10);
/// A verdict on a bake for lack of data waits this long past its deadline for a read taken
/// after it, then is given on the latest read there is.
pub const BAKE_VERDICT_GRACE: Duration = Duration::from_secs(60);
/// A failed approval request is sent again after this long, doubling with each failure in a
/// row up to `APPROVAL_RESEND_MAX`, for as long as the request has not expired.
pub const APPROVAL_RESEND: Duration = Duration::from_secs(5 * 60);
pub const APPROVAL_RESEND_MAX: Duration = Duration::from_secs(60 * 60);
/// A request some approvers cannot receive yet (their subscription awaits confirmation) is
/// sent again every `APPROVAL_RESEND` for this long after the run began waiting, then every
/// `APPROVAL_UNCONFIRMED_LATER`: waiting for people, not backing off from a failing service.
pub const APPROVAL_UNCONFIRMED_FAST: Duration = Duration::from_secs(60 * 60);
pub const APPROVAL_UNCONFIRMED_LATER: Duration = Duration::from_secs(15 * 60);

fn grace() -> chrono::Duration {
    chrono::Duration::from_std(BAKE_VERDICT_GRACE).unwrap_or_default()
}

/// A bake's alarm polls, as the snapshot has them.
#[derive(Default)]
struct BakeReads<'a> {
    /// The highest round started.
    latest: u32,
    /// The record of the latest round (pending, failed or succeeded).
    last: Option<&'a EffectRecord>,
    /// The latest successful read.
    last_read: Option<&'a EffectRecord>,
}

/// What to do now, and when to look again if nothing else happens.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub actions: Vec<Action>,
    pub wake_at: Option<DateTime<Utc>>,
}

/// Plans one pipeline.
pub fn plan(pipeline: &Pipeline, snap: &Snapshot, now: DateTime<Utc>) -> Plan {
    let mut p = Planner {
        cfg: pipeline,
        snap,
        now,
        out: Plan::default(),
        touched: HashSet::new(),
    };
    p.retry_requests();
    p.resolve_artifacts();
    p.add_runs();
    for (j, stage) in pipeline.stages.iter().enumerate() {
        p.rollback_request(j, stage);
        p.propagate_bad(j, stage);
        p.supersede(j, stage);
        p.stage_runs(j, stage);
    }
    p.side_reports();
    p.out
}

struct Planner<'a> {
    cfg: &'a Pipeline,
    snap: &'a Snapshot,
    now: DateTime<Utc>,
    out: Plan,
    /// Runs that already got a status change in this call.
    touched: HashSet<(ReleaseId, StageName)>,
}

impl<'a> Planner<'a> {
    // ----- output helpers -------------------------------------------------------------

    fn transition(&mut self, run: &StageRun, to: RunStatus, reason: Reason) {
        self.transition_by(run, to, reason, None);
    }

    /// A transition caused by the alarm event `alarm` (a rollback), recorded with the run.
    fn transition_by(&mut self, run: &StageRun, to: RunStatus, reason: Reason, alarm: Option<i64>) {
        if !self.touched.insert((run.release, run.stage.clone())) {
            return;
        }
        self.out.actions.push(Action::Transition {
            release: run.release,
            stage: run.stage.clone(),
            to,
            reason,
            alarm,
        });
    }

    /// Says what a run waits for. The last note of a call wins: two different notes for one
    /// run in one call would overwrite each other on every call and never settle.
    fn note(&mut self, run: &StageRun, reason: Reason) {
        self.out.actions.retain(|a| {
            !matches!(a, Action::Note { release, stage, .. }
                if *release == run.release && *stage == run.stage)
        });
        if run.reason != reason && !self.touched.contains(&(run.release, run.stage.clone())) {
            self.out.actions.push(Action::Note {
                release: run.release,
                stage: run.stage.clone(),
                reason,
            });
        }
    }

    fn wake(&mut self, at: DateTime<Utc>) {
        let at = at.max(self.now);
        self.out.wake_at = Some(self.out.wake_at.map_or(at, |w| w.min(at)));
    }

    fn effect(&self, run: &StageRun, kind: EffectKind) -> Effect {
        Effect::new(&self.cfg.name, run.release, &run.stage, run.attempt, kind)
    }

    /// The record of an effect, starting it when it has none or is still pending.
    fn ensure(&mut self, effect: Effect) -> Option<&'a EffectRecord> {
        let rec = self.snap.effect(&effect.key);
        if rec.is_none_or(|r| r.status == EffectStatus::Pending) {
            self.out.actions.push(Action::Start(effect));
        }
        rec.filter(|r| r.status != EffectStatus::Pending)
    }

    fn is_touched(&self, run: &StageRun) -> bool {
        self.touched.contains(&(run.release, run.stage.clone()))
    }

    fn runs_in(&self, stage: &str) -> Vec<StageRun> {
        let mut runs: Vec<StageRun> = self
            .snap
            .runs
            .iter()
            .filter(|r| r.stage == stage)
            .cloned()
            .collect();
        runs.sort_by_key(|r| r.release);
        runs
    }

    fn release(&self, id: ReleaseId) -> Option<&Release> {
        self.snap.releases.get(&id)
    }

    /// How long after the `failures`-th failed send in a row (from 1) the approval request
    /// goes again.
    fn resend_after(failures: u32) -> Duration {
        APPROVAL_RESEND
            .saturating_mul(1 << failures.saturating_sub(1).min(16))
            .min(APPROVAL_RESEND_MAX)
    }

    /// How long after a send that some approvers could not receive yet, which ended at
    /// `ended`, the request goes again: see [`APPROVAL_UNCONFIRMED_FAST`].
    fn unconfirmed_resend(run: &StageRun, ended: DateTime<Utc>) -> Duration {
        let fast = chrono::Duration::from_std(APPROVAL_UNCONFIRMED_FAST).unwrap_or_default();
        if ended < run.since + fast {
            APPROVAL_RESEND
        } else {
            APPROVAL_UNCONFIRMED_LATER
        }
    }

    // ----- releases -------------------------------------------------------------------

    /// Acts on `tollgate retry` requests: the release goes again from where it stopped, or
    /// the request is refused with the reason; either way it is handled once.
    fn retry_requests(&mut self) {
        for req in &self.snap.retry_requests {
            match retry_from(self.cfg, self.snap, req.release) {
                Ok(from) => {
                    let start = self.cfg.stage_index(&from).unwrap_or(0);
                    let stages: Vec<StageName> = self.cfg.stages[start..]
                        .iter()
                        .map(|s| s.name.clone())
                        .collect();
                    for s in &stages {
                        self.touched.insert((req.release, s.clone()));
                    }
                    self.out.actions.push(Action::Retry {
                        request: req.id,
                        release: req.release,
                        stages,
                        by: req.by.clone(),
                    });
                }
                Err(why) => self.out.actions.push(Action::RefuseRetry {
                    request: req.id,
                    release: req.release,
                    why,
                }),
            }
        }
    }

    fn resolve_artifacts(&mut self) {
        let pending: Vec<&Release> = self
            .snap
            .releases
            .values()
            .filter(|r| r.digest.is_none() && r.failed.is_none())
            .collect();
        for r in pending {
            let e = Effect::new(&self.cfg.name, r.id, "", 0, EffectKind::ResolveArtifact);
            let key = e.key.clone();
            let rec = self.snap.effect(&key);
            match rec.map(|r| r.status) {
                None | Some(EffectStatus::Pending) => self.out.actions.push(Action::Start(e)),
                Some(EffectStatus::Failed) | Some(EffectStatus::Succeeded) => {
                    let detail = rec.map(|r| r.detail.clone()).unwrap_or_default();
                    self.out.actions.push(Action::FailRelease {
                        release: r.id,
                        reason: format!("artifact not resolved: {detail}"),
                    });
                }
            }
        }
    }

    /// A stage the configuration added after a release was recorded (a reload) has no run of
    /// it, and the stage after it would wait for that run forever. The release goes through
    /// the added stage when it has not started deploying in the stage that follows (that run
    /// waiting, queued, checking or awaiting approval: it goes on only once the added stage
    /// succeeded, as [`Planner::eligible`] asks before any deploy), or, for a stage added last,
    /// while it is still on its way through the one before. A release that has deployed past
    /// that point, stopped or failed keeps its course.
    ///
    /// A run in a stage the configuration no longer has (dropped or renamed; a reload refuses
    /// that while the run deploys, verifies, bakes or rolls back there) is no stage's any more:
    /// one that had not started deploying is ended (superseded), so that the release can
    /// finish and leave the working set. Should a later reload add the stage back under the
    /// same name, that run waits again (its next attempt) on the same terms as a run added.
    fn add_runs(&mut self) {
        let gone: Vec<StageRun> = self
            .snap
            .runs
            .iter()
            .filter(|r| self.cfg.stage(&r.stage).is_none() && r.status.supersedable())
            .cloned()
            .collect();
        for run in &gone {
            self.transition(run, RunStatus::Superseded, Reason::StageRemoved);
        }
        let releases: BTreeSet<ReleaseId> = self.snap.runs.iter().map(|r| r.release).collect();
        let stages = &self.cfg.stages;
        for release in releases {
            let stopped = self
                .release(release)
                .is_none_or(|r| self.stop_reason(r).is_some());
            if stopped {
                continue;
            }
            let run = |s: &Stage| self.snap.run(release, &s.name);
            // The runs the release goes on with: one a removal ended counts as none (stages
            // removed together and added back together are reopened together).
            let live = |s: &Stage| run(s).filter(|r| !ended_by_removal(r));
            for (j, stage) in stages.iter().enumerate() {
                let again = match run(stage) {
                    None => false,
                    Some(r) if ended_by_removal(r) => true,
                    Some(_) => continue,
                };
                let add = match stages[j + 1..].iter().find_map(live) {
                    Some(next) => next.status.supersedable(),
                    None => stages[..j]
                        .iter()
                        .rev()
                        .find_map(live)
                        .is_some_and(|prev| !prev.status.is_terminal()),
                };
                let stage = stage.name.clone();
                match (add, again) {
                    (false, _) => {}
                    (true, false) => self.out.actions.push(Action::AddRun { release, stage }),
                    (true, true) => self.out.actions.push(Action::ReopenRun { release, stage }),
                }
            }
        }
    }

    /// The release's run in `stage` waits again in this plan ([`Action::ReopenRun`]): the
    /// stage after it must not take it as ended.
    fn reopening(&self, release: ReleaseId, stage: &str) -> bool {
        self.out.actions.iter().any(|a| {
            matches!(a, Action::ReopenRun { release: r, stage: s } if *r == release && s == stage)
        })
    }

    /// Is the release allowed to enter stage `j` at all (previous stage done with it)?
    /// Both as the snapshot has it and as this call leaves it: a run this call moves out of
    /// Succeeded (a rollback starting) or a release it marks bad stops promotion at once.
    fn eligible(&self, j: usize, release: ReleaseId) -> bool {
        let Some(r) = self.release(release) else {
            return false;
        };
        if r.digest.is_none() || self.bad_mark(release).is_some() || r.failed.is_some() {
            return false;
        }
        if j == 0 {
            return true;
        }
        let prev = &self.cfg.stages[j - 1].name;
        self.snap
            .run(release, prev)
            .is_some_and(|p| p.status == RunStatus::Succeeded)
            && self.status_after(release, prev) == Some(RunStatus::Succeeded)
    }

    /// A run's status once this call's transitions are applied.
    fn status_after(&self, release: ReleaseId, stage: &str) -> Option<RunStatus> {
        let moved = self.out.actions.iter().rev().find_map(|a| match a {
            Action::Transition {
                release: r,
                stage: s,
                to,
                ..
            } if *r == release && s == stage => Some(*to),
            _ => None,
        });
        moved.or_else(|| self.snap.run(release, stage).map(|r| r.status))
    }

    /// Another run changing the stage (invariant 3), counting the runs this call moves.
    fn in_flight_besides(&self, stage: &str, release: ReleaseId) -> Option<(ReleaseId, RunStatus)> {
        self.snap.runs.iter().find_map(|r| {
            let after = self.status_after(r.release, &r.stage)?;
            let other = r.stage == stage && r.release != release;
            let status = if r.status.changes_stage() {
                r.status
            } else {
                after
            };
            (other && status.changes_stage()).then_some((r.release, status))
        })
    }

    /// Where and why the release was marked bad, in the snapshot or by this call.
    fn bad_mark(&self, release: ReleaseId) -> Option<BadMark> {
        let now = self.out.actions.iter().find_map(|a| match a {
            Action::MarkBad {
                release: r,
                stage,
                reason,
            } if *r == release => Some(BadMark {
                stage: stage.clone(),
                reason: reason.clone(),
            }),
            _ => None,
        });
        self.release(release).and_then(|r| r.bad.clone()).or(now)
    }

    // ----- stage-wide rules -------------------------------------------------------------

    fn rollback_request(&mut self, _j: usize, stage: &Stage) {
        let Some(RollbackRequest { id: request, by }) = self
            .snap
            .stage(&stage.name)
            .and_then(|s| s.rollback_request.clone())
        else {
            return;
        };
        self.out.actions.push(Action::ConsumeRollbackRequest {
            stage: stage.name.clone(),
            request,
        });
        let runs = self.runs_in(&stage.name);
        let reason = Reason::ManualRollback { by: by.clone() };
        if let Some(run) = runs.iter().find(|r| r.status.changes_stage()) {
            if run.status != RunStatus::RollingBack {
                self.transition(run, RunStatus::RollingBack, reason);
            }
            return;
        }
        let current = self.snap.last_good(&stage.name);
        if let Some(run) = runs
            .iter()
            .find(|r| Some(r.release) == current && r.status == RunStatus::Succeeded)
        {
            // With nothing to return to, the release the stage runs stays as it is.
            if self.rollback_target(stage, run).is_some() {
                self.transition(run, RunStatus::RollingBack, reason);
            } else {
                self.note(run, Reason::ManualRollbackImpossible { by });
            }
        }
    }

    /// A release rolled back in an earlier stage leaves the later stages that run it.
    fn propagate_bad(&mut self, j: usize, stage: &Stage) {
        let current = self
            .snap
            .stage(&stage.name)
            .and_then(|s| s.history.last().copied());
        for run in self.runs_in(&stage.name) {
            let Some(bad) = self.release(run.release).and_then(|r| r.bad.clone()) else {
                continue;
            };
            let origin = self.cfg.stage_index(&bad.stage).unwrap_or(usize::MAX);
            if bad.stage == stage.name || j < origin {
                continue;
            }
            let live = matches!(
                run.status,
                RunStatus::Deploying | RunStatus::Verifying | RunStatus::Baking
            );
            // A stage already changing (a rollback, say) is looked at again once it is done.
            let current_good = run.status == RunStatus::Succeeded
                && current == Some(run.release)
                && self.in_flight_besides(&stage.name, run.release).is_none();
            if live || current_good {
                self.transition(
                    &run,
                    RunStatus::RollingBack,
                    Reason::RolledBackUpstream {
                        stage: bad.stage.clone(),
                        cause: Box::new(bad.reason.clone()),
                    },
                );
            }
        }
    }

    /// Invariant 4: the newest eligible release wins in each stage.
    fn supersede(&mut self, j: usize, stage: &Stage) {
        let runs = self.runs_in(&stage.name);
        let newest = runs
            .iter()
            .filter(|r| {
                (r.status.supersedable() && self.eligible(j, r.release))
                    || r.status.changes_stage()
                    || r.status == RunStatus::Succeeded
            })
            .map(|r| r.release)
            .max();
        let good = self.snap.last_good(&stage.name);
        let Some(newest) = newest.max(good) else {
            return;
        };
        // Older runs go even while they wait for their artifact or the previous stage: once a
        // newer release entered the stage, an older one deploying there would go backwards.
        for run in runs
            .iter()
            .filter(|r| r.status.supersedable() && r.release < newest)
        {
            self.transition(
                run,
                RunStatus::Superseded,
                Reason::SupersededBy { release: newest },
            );
        }
    }

    fn stage_runs(&mut self, j: usize, stage: &Stage) {
        for run in self.runs_in(&stage.name) {
            if self.is_touched(&run) {
                continue;
            }
            match run.status {
                RunStatus::Waiting => self.waiting(j, &run),
                RunStatus::Queued => self.queued(j, stage, &run),
                RunStatus::Checking => self.checking(j, stage, &run),
                RunStatus::AwaitingApproval => self.awaiting_approval(j, stage, &run),
                RunStatus::Deploying | RunStatus::Verifying | RunStatus::Baking
                    if self.alarm_rolls_back(stage, &run) => {}
                RunStatus::Deploying => self.deploying(stage, &run),
                RunStatus::Verifying => self.verifying(stage, &run),
                RunStatus::Baking => self.baking(stage, &run),
                RunStatus::Succeeded => self.late_alarm(stage, &run),
                // A bake that ended for lack of data leaves the release running in the stage:
                // a late alarm of its window still acts on it.
                RunStatus::Failed if matches!(run.reason, Reason::NotEnoughData { .. }) => {
                    self.late_alarm(stage, &run)
                }
                RunStatus::RollingBack => self.rolling_back(stage, &run),
                _ => {}
            }
        }
    }

    // ----- one run ----------------------------------------------------------------------

    /// A release that cannot continue leaves every stage it has not reached.
    fn stopped(&mut self, run: &StageRun) -> bool {
        let Some(r) = self.release(run.release) else {
            return true;
        };
        match self.stop_reason(r) {
            Some(reason) => {
                self.transition(run, RunStatus::Failed, reason);
                true
            }
            None => false,
        }
    }

    /// Why the release cannot continue, if it cannot: marked bad, or failed.
    fn stop_reason(&self, r: &Release) -> Option<Reason> {
        if let Some(bad) = self.bad_mark(r.id) {
            return Some(Reason::BadRelease {
                stage: bad.stage,
                cause: Box::new(bad.reason),
            });
        }
        r.failed
            .as_ref()
            .map(|f| Reason::ReleaseFailed { why: f.clone() })
    }

    fn waiting(&mut self, j: usize, run: &StageRun) {
        if self.stopped(run) {
            return;
        }
        if j > 0 {
            let prev = &self.cfg.stages[j - 1].name;
            if let Some(p) = self
                .snap
                .run(run.release, prev)
                .filter(|p| p.status.is_terminal() && !self.reopening(run.release, prev))
            {
                match p.status {
                    RunStatus::Succeeded => {}
                    RunStatus::Superseded => {
                        self.transition(
                            run,
                            RunStatus::Superseded,
                            Reason::SupersededIn {
                                stage: prev.clone(),
                            },
                        );
                        return;
                    }
                    other => {
                        self.transition(
                            run,
                            RunStatus::Failed,
                            Reason::PreviousStageEnded {
                                stage: prev.clone(),
                                status: other,
                            },
                        );
                        return;
                    }
                }
            }
        }
        if self.eligible(j, run.release) {
            self.transition(run, RunStatus::Queued, Reason::Queued);
        }
    }

    fn queued(&mut self, j: usize, stage: &Stage, run: &StageRun) {
        if self.stopped(run) {
            return;
        }
        if let Some(why) = self.paused(stage) {
            self.note(run, why);
            return;
        }
        let _ = j;
        self.transition(run, RunStatus::Checking, Reason::RunningChecks);
    }

    fn paused(&self, stage: &Stage) -> Option<Reason> {
        if let Some(p) = &self.snap.paused {
            return Some(Reason::PipelinePaused { reason: p.clone() });
        }
        let s = self.snap.stage(&stage.name)?;
        s.paused
            .as_ref()
            .map(|p| Reason::StagePaused { reason: p.clone() })
    }

    fn checking(&mut self, j: usize, stage: &Stage, run: &StageRun) {
        if self.stopped(run) {
            return;
        }
        let alarms_clear = self.entry_alarms_clear(stage, run);
        let Some(tests_ok) = self.tests(stage, run, Phase::Before) else {
            return;
        };
        if !tests_ok {
            return;
        }
        if !alarms_clear {
            return;
        }
        match &stage.approval {
            Some(a) => {
                let reason = Reason::AwaitingApproval {
                    approved: 0,
                    needed: a.min_approvals,
                    expires_at: self.now
                        + chrono::Duration::from_std(a.timeout).unwrap_or_default(),
                    request: RequestState::Sending,
                };
                self.transition(run, RunStatus::AwaitingApproval, reason);
            }
            None => self.try_deploy(j, stage, run),
        }
    }

    /// Before entry, a stage's alarms must not be in ALARM (unless the release overrides it).
    fn entry_alarms_clear(&mut self, stage: &Stage, run: &StageRun) -> bool {
        self.alarms_clear(stage, run, None)
    }

    /// The alarm gate: the stage's alarms are not in ALARM (unless the release overrides it),
    /// by a read at most `fresh` old when given — the gate in front of a deploy is checked at
    /// that moment, not when the release entered the stage days before.
    fn alarms_clear(&mut self, stage: &Stage, run: &StageRun, fresh: Option<Duration>) -> bool {
        if stage.alarms.is_empty() {
            return true;
        }
        let round = self.latest_round(run, |r| EffectKind::CheckAlarms { round: r });
        let Some(rec) = self
            .ensure(self.effect(run, EffectKind::CheckAlarms { round }))
            .cloned()
        else {
            return false;
        };
        let firing = rec.output.in_alarm();
        let problem = match rec.status {
            EffectStatus::Failed => AlarmProblem::Unreadable {
                detail: rec.detail.clone(),
            },
            _ if !firing.is_empty() => AlarmProblem::InAlarm {
                alarms: firing.to_vec(),
            },
            _ => {
                let read = rec.finished_at.unwrap_or(self.now);
                let stale = fresh.is_some_and(|f| {
                    read + chrono::Duration::from_std(f).unwrap_or_default() < self.now
                });
                if stale {
                    self.ensure(self.effect(run, EffectKind::CheckAlarms { round: round + 1 }));
                }
                return !stale;
            }
        };
        if let Some(why) = self
            .release(run.release)
            .and_then(|r| r.alarm_override.clone())
        {
            if rec.status == EffectStatus::Succeeded {
                let reason = Reason::AlarmOverride {
                    problem,
                    override_reason: why,
                };
                self.note(run, reason);
                return true;
            }
        }
        let finished = rec.finished_at.unwrap_or(self.now);
        let recheck_at = finished + chrono::Duration::from_std(ALARM_RECHECK).unwrap_or_default();
        if recheck_at <= self.now {
            self.ensure(self.effect(run, EffectKind::CheckAlarms { round: round + 1 }));
        } else {
            self.wake(recheck_at);
        }
        self.note(
            run,
            Reason::AlarmsBlockEntry {
                problem,
                every_secs: ALARM_RECHECK.as_secs(),
            },
        );
        false
    }

    /// The records of the effects of a run's current attempt.
    fn run_effects(&self, run: &StageRun) -> impl Iterator<Item = &'a EffectRecord> {
        let (release, stage, attempt) = (run.release, run.stage.clone(), run.attempt);
        self.snap
            .effects
            .iter()
            .filter(move |e| e.release == release && e.stage == stage && e.attempt == attempt)
    }

    /// The run's records of the repeated effect `kind` makes, with their rounds, in no order.
    fn rounds(
        &self,
        run: &StageRun,
        kind: impl Fn(u32) -> EffectKind,
    ) -> impl Iterator<Item = (u32, &'a EffectRecord)> {
        let same = std::mem::discriminant(&kind(0));
        self.run_effects(run)
            .filter(move |e| std::mem::discriminant(&e.kind) == same)
            .filter_map(|e| Some((e.kind.round()?, e)))
    }

    /// The newest round of a repeated effect that has a record (0 when none has). One pass
    /// over the records, whatever the number of rounds (a long bake polls hundreds of times).
    fn latest_round(&self, run: &StageRun, kind: impl Fn(u32) -> EffectKind) -> u32 {
        self.rounds(run, kind)
            .map(|(round, _)| round)
            .max()
            .unwrap_or(0)
    }

    /// Runs a phase's tests in parallel. `Some(true)` all passed, `Some(false)` one failed
    /// (and the run was moved on), `None` still running.
    fn tests(&mut self, stage: &Stage, run: &StageRun, phase: Phase) -> Option<bool> {
        let names = match phase {
            Phase::Before => &stage.before,
            Phase::After => &stage.after,
        };
        let mut done = true;
        for test in names {
            let e = self.effect(
                run,
                EffectKind::RunTest {
                    test: test.clone(),
                    phase,
                },
            );
            match self.ensure(e).cloned() {
                None => done = false,
                Some(rec) if rec.status == EffectStatus::Failed => {
                    let why = Reason::TestFailed {
                        test: test.clone(),
                        phase,
                        detail: rec.detail.clone(),
                    };
                    self.fail_or_roll_back(stage, run, phase, why);
                    return Some(false);
                }
                Some(_) => {}
            }
        }
        done.then_some(true)
    }

    fn fail_or_roll_back(&mut self, stage: &Stage, run: &StageRun, phase: Phase, why: Reason) {
        if phase == Phase::Before {
            self.transition(run, RunStatus::Failed, why);
        } else {
            self.roll_back_or_fail(stage, run, why);
        }
    }

    fn roll_back_or_fail(&mut self, stage: &Stage, run: &StageRun, why: Reason) {
        self.roll_back_or_fail_by(stage, run, why, None);
    }

    fn roll_back_or_fail_by(
        &mut self,
        stage: &Stage,
        run: &StageRun,
        why: Reason,
        alarm: Option<i64>,
    ) {
        if self.rollback_target(stage, run).is_some() {
            self.transition_by(run, RunStatus::RollingBack, why, alarm);
        } else {
            let reason = Reason::NoKnownGood {
                cause: Box::new(why),
            };
            self.transition(run, RunStatus::Failed, reason);
        }
    }

    /// Invariant 9: the approvers whose approval counts for this run's attempt, and who
    /// rejected it in this attempt.
    fn approvals(&self, stage: &Stage, run: &StageRun) -> (BTreeSet<String>, Option<String>) {
        let mut approved = BTreeSet::new();
        let mut rejected = None;
        let (Some(cfg), Some(release)) = (&stage.approval, self.release(run.release)) else {
            return (approved, rejected);
        };
        for a in self
            .snap
            .approvals
            .iter()
            .filter(|a| a.release == run.release && a.stage == stage.name)
        {
            if approval::rejects(run.attempt, a) {
                rejected = Some(a.approver.clone());
            } else if approval::counts(cfg, release, run.attempt, a) {
                approved.insert(a.approver.clone());
            }
        }
        (approved, rejected)
    }

    fn awaiting_approval(&mut self, j: usize, stage: &Stage, run: &StageRun) {
        if self.stopped(run) {
            return;
        }
        let Some(cfg) = &stage.approval else {
            self.try_deploy(j, stage, run);
            return;
        };
        let round = self.latest_round(run, |round| EffectKind::RequestApproval { round });
        let request = self
            .ensure(self.effect(run, EffectKind::RequestApproval { round }))
            .cloned();
        let (approved, rejected) = self.approvals(stage, run);
        if let Some(who) = rejected {
            self.transition(run, RunStatus::Rejected, Reason::Rejected { by: who });
            return;
        }
        if approved.len() as u32 >= cfg.min_approvals {
            self.try_deploy(j, stage, run);
            return;
        }
        let expires = run.since + chrono::Duration::from_std(cfg.timeout).unwrap_or_default();
        if self.now >= expires {
            let reason = Reason::ApprovalExpired {
                after_secs: cfg.timeout.as_secs(),
            };
            self.transition(run, RunStatus::Expired, reason);
            return;
        }
        self.wake(expires);
        let request = match request {
            Some(r) if r.status == EffectStatus::Failed => {
                // Waiting for approvers to confirm their subscriptions is waiting for people,
                // not backing off from a failing service; the back-off after failures counts
                // only the failures in a row, not the rounds that waited for confirmation.
                let ended = r.finished_at.unwrap_or(self.now);
                let again = match &r.output {
                    EffectOutput::ApprovalUnconfirmed { .. } => {
                        Self::unconfirmed_resend(run, ended)
                    }
                    // Waiting only for SNS to apply filter policies: again when it has.
                    EffectOutput::ApprovalWithheld { exposed }
                        if approval::only_settling(exposed).is_some() =>
                    {
                        let until = approval::only_settling(exposed).unwrap_or(ended);
                        (until - ended).to_std().unwrap_or_default()
                    }
                    _ => Self::resend_after(self.failures_in_a_row(run)),
                };
                let at = ended + chrono::Duration::from_std(again).unwrap_or_default();
                if at <= self.now {
                    self.ensure(self.effect(run, EffectKind::RequestApproval { round: round + 1 }));
                    RequestState::Resending
                } else {
                    self.wake(at);
                    match &r.output {
                        EffectOutput::ApprovalWithheld { exposed } => {
                            // Announced once the run's reason names the subscriptions.
                            let noted = matches!(
                                &run.reason,
                                Reason::AwaitingApproval {
                                    request: RequestState::Withheld { .. },
                                    ..
                                }
                            );
                            // A delay for SNS alone needs nobody: the one notice of the attempt
                            // is kept for a subscription a person must fix.
                            if noted && approval::only_settling(exposed).is_none() {
                                self.withheld_notice(run);
                            }
                            RequestState::Withheld {
                                exposed: exposed.clone(),
                                retry_at: at,
                            }
                        }
                        EffectOutput::ApprovalUnconfirmed { awaiting, sent } => {
                            RequestState::Unconfirmed {
                                awaiting: awaiting.clone(),
                                sent: sent.clone(),
                                retry_at: at,
                            }
                        }
                        _ => RequestState::Failed {
                            detail: r.detail.clone(),
                            retry_at: at,
                        },
                    }
                }
            }
            // Sent, for other approvers, addresses, topic or expiry than the configuration's
            // now (a reload): sent again, and only what changed goes out.
            Some(r) if self.sent_for_other(&r, cfg, expires) => {
                self.ensure(self.effect(run, EffectKind::RequestApproval { round: round + 1 }));
                RequestState::Resending
            }
            _ => RequestState::Sending,
        };
        let reason = Reason::AwaitingApproval {
            approved: approved.len() as u32,
            needed: cfg.min_approvals,
            expires_at: expires,
            request,
        };
        self.note(run, reason);
    }

    /// Whether the sent request `r` went out for other approvers, addresses, topic or expiry
    /// than `cfg` and `expires` say now. A round recorded before that was kept says nothing.
    fn sent_for_other(
        &self,
        r: &EffectRecord,
        cfg: &crate::config::Approval,
        expires: DateTime<Utc>,
    ) -> bool {
        let EffectOutput::ApprovalSent(sent) = &r.output else {
            return false;
        };
        let mut now: Vec<(String, String)> = cfg
            .approvers
            .iter()
            .map(|a| (a.name.clone(), a.email.to_ascii_lowercase()))
            .collect();
        let mut then: Vec<(String, String)> = sent
            .approvers
            .iter()
            .map(|(n, e)| (n.clone(), e.to_ascii_lowercase()))
            .collect();
        now.sort();
        then.sort();
        now != then || *sent.topic != cfg.topic || sent.expires_at != expires
    }

    /// How many of the run's newest approval-request rounds failed, in a row, other than for
    /// approvers awaiting confirmation or filter policies settling.
    fn failures_in_a_row(&self, run: &StageRun) -> u32 {
        let mut rounds: Vec<(u32, &EffectRecord)> = self
            .rounds(run, |round| EffectKind::RequestApproval { round })
            .collect();
        rounds.sort_by_key(|(round, _)| std::cmp::Reverse(*round));
        let failed = |e: &EffectRecord| {
            let waited = match &e.output {
                EffectOutput::ApprovalUnconfirmed { .. } => true,
                EffectOutput::ApprovalWithheld { exposed } => {
                    approval::only_settling(exposed).is_some()
                }
                _ => false,
            };
            e.status == EffectStatus::Failed && !waited
        };
        rounds.iter().take_while(|(_, e)| failed(e)).count() as u32
    }

    /// A withheld approval request is announced on the notification topic, once per attempt.
    fn withheld_notice(&mut self, run: &StageRun) {
        if self.cfg.notifications.topic.is_some() {
            let event = NotifyEvent::ApprovalWithheld;
            self.ensure(self.effect(run, EffectKind::Notify { event }));
        }
    }

    /// Starts the deploy if nothing forbids it now; otherwise says what it waits for.
    fn try_deploy(&mut self, j: usize, stage: &Stage, run: &StageRun) {
        if let Some(why) = self.deploy_blocker(j, stage, run) {
            self.note(run, why);
            return;
        }
        if !self.alarms_clear(stage, run, Some(ALARM_GATE_FRESH)) {
            return;
        }
        let waves = stage.targets.len();
        self.transition(
            run,
            RunStatus::Deploying,
            Reason::Deploying { wave: 1, waves },
        );
    }

    fn deploy_blocker(&mut self, j: usize, stage: &Stage, run: &StageRun) -> Option<Reason> {
        if let Some(why) = self.paused(stage) {
            return Some(why);
        }
        // Invariant 1, checked again at the door.
        if !self.eligible(j, run.release) {
            return Some(Reason::PreviousStageNotSucceeded);
        }
        // Invariant 2, checked again at the door.
        if let Some(a) = &stage.approval {
            if (self.approvals(stage, run).0.len() as u32) < a.min_approvals {
                return Some(Reason::ApprovalMissing);
            }
        }
        // Invariant 3.
        if let Some((other, status)) = self.in_flight_besides(&stage.name, run.release) {
            return Some(Reason::StageBusy {
                release: other,
                status,
            });
        }
        let overridden = self
            .release(run.release)
            .is_some_and(|r| r.window_override.is_some());
        match &stage.windows {
            Some(w) if !overridden && !window::is_open(w, self.now) => {
                let next = window::next_open(w, self.now);
                if let Some(at) = next {
                    self.wake(at);
                }
                Some(Reason::OutsideWindow {
                    opens: next,
                    timezone: w.timezone.name().to_string(),
                })
            }
            _ => None,
        }
    }

    fn deploying(&mut self, stage: &Stage, run: &StageRun) {
        if self.misplaced_deploys(stage, run) {
            return;
        }
        for wave in 0..stage.targets.len() {
            let deploy = self.effect(run, EffectKind::Deploy { wave });
            let next_wave = wave > 0 && self.snap.effect(&deploy.key).is_none();
            if next_wave && !self.alarms_clear(stage, run, Some(ALARM_GATE_FRESH)) {
                return;
            }
            let Some(rec) = self.ensure(deploy).cloned() else {
                if wave > 0 {
                    let reason = Reason::Deploying {
                        wave: wave + 1,
                        waves: stage.targets.len(),
                    };
                    self.note(run, reason);
                }
                return;
            };
            if rec.status == EffectStatus::Failed {
                let t = &stage.targets[wave];
                if let Some(drift) = drift(t, &rec, false) {
                    self.halt(stage, run, drift);
                    return;
                }
                let why = Reason::DeployFailed {
                    account: t.account.clone(),
                    region: t.region.clone(),
                    detail: rec.detail.clone(),
                };
                self.roll_back_or_fail(stage, run, why);
                return;
            }
        }
        self.transition(run, RunStatus::Verifying, Reason::Verifying);
    }

    /// Deploys of this run that began somewhere the configuration no longer puts their wave
    /// (a reload that raced their start, or a controller started with another file): one
    /// still pending for a wave the configuration no longer has is performed again (it then
    /// refuses, see `engine::exec`), never abandoned as if it had not begun; one refused
    /// ([`EffectOutput::Misplaced`]) sends the run into rollback, or, with nothing to roll back
    /// to, halts the stage, naming where it began. True when the run waits on them.
    fn misplaced_deploys(&mut self, stage: &Stage, run: &StageRun) -> bool {
        let records: Vec<&'a EffectRecord> = self.run_effects(run).collect();
        for rec in &records {
            let (
                EffectKind::Deploy { .. },
                EffectStatus::Failed,
                EffectOutput::Misplaced { began, .. },
            ) = (&rec.kind, rec.status, &rec.output)
            else {
                continue;
            };
            let why = Reason::DeployFailed {
                account: began.account.clone(),
                region: began.region.clone(),
                detail: rec.detail.clone(),
            };
            if self.rollback_target(stage, run).is_some() {
                self.transition(run, RunStatus::RollingBack, why);
            } else {
                self.halt(stage, run, why);
            }
            return true;
        }
        let mut waiting = false;
        for rec in records {
            if let EffectKind::Deploy { wave } = rec.kind {
                let dropped = wave >= stage.targets.len();
                if dropped && rec.status == EffectStatus::Pending && rec.place.is_some() {
                    self.ensure(self.effect(run, EffectKind::Deploy { wave }));
                    waiting = true;
                }
            }
        }
        waiting
    }

    fn verifying(&mut self, stage: &Stage, run: &StageRun) {
        if self.tests(stage, run, Phase::After) == Some(true) {
            // A fixed alarm_delay is known now; `auto` once the alarms have been read.
            let held = stage.bake + bake::hold(stage, None);
            let until = self.now + chrono::Duration::from_std(held).unwrap_or_default();
            self.transition(run, RunStatus::Baking, Reason::Baking { until });
        }
    }

    /// Bake: the time is over, held for as long as the alarms may take to report a breach that
    /// began by then ([`bake::hold`]), and each alarm's metric has had `min_datapoints` data
    /// points since the deploy finished, none in ALARM (see [`super::bake`] for what is
    /// missing); short of data, the stage waits up to `bake_max_wait` past that and is then
    /// judged by `insufficient_data`.
    fn baking(&mut self, stage: &Stage, run: &StageRun) {
        let reads = match self.bake_reads(stage, run) {
            Ok(reads) => reads,
            Err(why) => {
                self.transition(run, RunStatus::RollingBack, why);
                return;
            }
        };
        let last = reads.last_read.map(|r| r.output.readings());
        let held = stage.bake + bake::hold(stage, last);
        let bake_end = run.since + chrono::Duration::from_std(held).unwrap_or_default();
        let gap = bake::gap(stage, last);
        if self.now < bake_end {
            self.schedule_poll(stage, run, &reads);
            self.wake(bake_end);
            self.note(run, Reason::Baking { until: bake_end });
            return;
        }
        let Some(gap) = gap else {
            self.bake_passed(stage, run);
            return;
        };
        let since = self.snap.deploy_finished(run).unwrap_or(run.since);
        let gives_up =
            bake_end + chrono::Duration::from_std(stage.bake_max_wait).unwrap_or_default();
        let read_at = reads.last_read.and_then(|r| r.finished_at);
        // `fail` and `roll_back` act on any alarm in INSUFFICIENT_DATA, even when an alarm
        // before it in the stage's order is short of data points.
        let quiet = matches!(
            stage.insufficient_data,
            InsufficientData::Fail | InsufficientData::RollBack
        )
        .then(|| bake::insufficient(stage, last))
        .flatten()
        .filter(|_| self.judged_after(read_at, bake_end));
        if let Some(quiet) = quiet {
            let why = Reason::NotEnoughData {
                gap: quiet,
                since,
                waited_secs: 0,
            };
            if stage.insufficient_data == InsufficientData::RollBack {
                self.roll_back_or_fail(stage, run, why);
            } else {
                self.transition(run, RunStatus::Failed, why);
            }
        } else if self.judged_after(read_at, gives_up) {
            // Too few data points fail the bake whatever `insufficient_data` says: that policy
            // only decides about alarms in INSUFFICIENT_DATA (which `pass` counts as clean), and
            // a quiet service must not pass a bake by having no traffic.
            let waited_secs = stage.bake_max_wait.as_secs();
            let why = Reason::NotEnoughData {
                gap,
                since,
                waited_secs,
            };
            self.transition(run, RunStatus::Failed, why);
        } else {
            // Polls go on every BAKE_POLL, each waking the planner, until a verdict.
            self.schedule_poll(stage, run, &reads);
            if gives_up > self.now {
                self.wake(gives_up);
            }
            self.note(
                run,
                Reason::AwaitingData {
                    gap,
                    since,
                    gives_up,
                },
            );
        }
    }

    /// A verdict on the bake at `deadline` waits for a read that finished after it (the next
    /// poll comes within [`BAKE_POLL`]), or for [`BAKE_VERDICT_GRACE`] when reads fail.
    fn judged_after(&self, read_at: Option<DateTime<Utc>>, deadline: DateTime<Utc>) -> bool {
        self.now >= deadline
            && (read_at.is_some_and(|t| t >= deadline) || self.now >= deadline + grace())
    }

    fn bake_passed(&mut self, stage: &Stage, run: &StageRun) {
        self.transition(run, RunStatus::Succeeded, Reason::Succeeded);
        self.out.actions.push(Action::RecordGood {
            stage: stage.name.clone(),
            release: run.release,
        });
    }

    /// Invariant 10: the first alarm notification for this stage whose state change falls in
    /// the run's watch window — from the gate read that let its deploy start
    /// ([`StageRun::watch_from`]) to `until` (the end of its bake;
    /// open while it is still deploying, verifying or baking). When it arrived does not
    /// matter: a late delivery of a change inside the window counts, a replay of an old one
    /// does not.
    fn alarm_in_window(
        &self,
        stage: &Stage,
        run: &StageRun,
        until: Option<DateTime<Utc>>,
    ) -> Option<&'a AlarmFact> {
        let (from, started) = (run.watch_from()?, run.deploy_started?);
        let alarms = &self.snap.alarms;
        // A change to ALARM before the deploy started that a later change to OK cleared, also
        // before the deploy started, is what the gate's read may have seen cleared: not this
        // run's alarm.
        let cleared_before_start = |a: &AlarmFact| {
            alarms.iter().any(|b| {
                b.stage == a.stage
                    && b.alarm == a.alarm
                    && !b.firing
                    && b.changed_at > a.changed_at
                    && b.changed_at <= started
            })
        };
        alarms
            .iter()
            .filter(|a| a.stage == stage.name && a.firing && stage.alarms.contains(&a.alarm))
            .filter(|a| a.changed_at >= from && until.is_none_or(|u| a.changed_at <= u))
            .filter(|a| a.changed_at >= started || !cleared_before_start(a))
            .min_by_key(|a| a.changed_at)
    }

    fn alarm_reason(alarm: &AlarmFact) -> Reason {
        Reason::AlarmFired {
            alarm: alarm.alarm.clone(),
            at: alarm.changed_at,
        }
    }

    /// A run being deployed, verified or baked rolls back on an alarm in its window.
    fn alarm_rolls_back(&mut self, stage: &Stage, run: &StageRun) -> bool {
        let Some(alarm) = self.alarm_in_window(stage, run, None) else {
            return false;
        };
        let why = Self::alarm_reason(alarm);
        self.roll_back_or_fail_by(stage, run, why, Some(alarm.id));
        true
    }

    /// A notification that arrived after the run succeeded, of an alarm whose state changed
    /// inside its window (SNS delivered it late): the stage rolls back if it still runs this
    /// release, and the release is stopped wherever it has got to.
    fn late_alarm(&mut self, stage: &Stage, run: &StageRun) {
        let Some(alarm) = self
            .alarm_in_window(stage, run, Some(run.since))
            .filter(|a| a.at > run.since)
        else {
            return;
        };
        let why = Self::alarm_reason(alarm);
        let current = self
            .snap
            .stage(&stage.name)
            .and_then(|s| s.history.last().copied());
        let free = self.in_flight_besides(&stage.name, run.release).is_none();
        if current == Some(run.release) && free && self.rollback_target(stage, run).is_some() {
            self.transition_by(run, RunStatus::RollingBack, why, Some(alarm.id));
        } else if self.bad_mark(run.release).is_none() {
            self.out.actions.push(Action::MarkBad {
                release: run.release,
                stage: stage.name.clone(),
                reason: why,
            });
        }
    }

    /// The bake's alarm polls so far: the reason to roll back when one found an alarm in
    /// ALARM, else the latest successful read and the latest round.
    fn bake_reads(&self, stage: &Stage, run: &StageRun) -> Result<BakeReads<'a>, Reason> {
        let mut reads = BakeReads::default();
        if stage.alarms.is_empty() {
            return Ok(reads);
        }
        reads.latest = self.latest_round(run, |r| EffectKind::PollAlarms { round: r });
        for round in 0..=reads.latest {
            let key = self.effect(run, EffectKind::PollAlarms { round }).key;
            let Some(rec) = self.snap.effect(&key) else {
                continue;
            };
            reads.last = Some(rec);
            if rec.status != EffectStatus::Succeeded {
                continue;
            }
            let firing = rec.output.in_alarm();
            if !firing.is_empty() {
                return Err(Reason::AlarmPolled {
                    alarms: firing.to_vec(),
                    at: rec.finished_at.unwrap_or(self.now),
                });
            }
            reads.last_read = Some(rec);
        }
        Ok(reads)
    }

    /// Starts the next alarm poll, at most one per [`BAKE_POLL`].
    fn schedule_poll(&mut self, stage: &Stage, run: &StageRun, reads: &BakeReads<'a>) {
        if stage.alarms.is_empty() {
            return;
        }
        let latest = reads.latest;
        match reads.last {
            None => {
                self.ensure(self.effect(run, EffectKind::PollAlarms { round: 0 }));
            }
            Some(rec) if rec.status == EffectStatus::Pending => {
                self.ensure(self.effect(run, EffectKind::PollAlarms { round: latest }));
            }
            Some(rec) => {
                let next = rec.finished_at.unwrap_or(self.now)
                    + chrono::Duration::from_std(BAKE_POLL).unwrap_or_default();
                if next <= self.now {
                    self.ensure(self.effect(run, EffectKind::PollAlarms { round: latest + 1 }));
                } else {
                    self.wake(next);
                }
            }
        }
    }

    /// Invariant 6: the newest release the stage ran successfully, other than this one.
    fn rollback_target(&self, stage: &Stage, run: &StageRun) -> Option<ReleaseId> {
        let s = self.snap.stage(&stage.name)?;
        s.history
            .iter()
            .rev()
            .copied()
            .find(|id| *id != run.release && self.release(*id).is_none_or(|r| r.bad.is_none()))
    }

    fn rolling_back(&mut self, stage: &Stage, run: &StageRun) {
        let Some(target) = self.rollback_target(stage, run) else {
            let reason = Reason::NoKnownGood {
                cause: Box::new(run.reason.clone()),
            };
            self.transition(run, RunStatus::Failed, reason);
            return;
        };
        for wave in self.deployed_waves(run) {
            let e = self.effect(run, EffectKind::Rollback { wave, target });
            let Some(rec) = self.ensure(e).cloned() else {
                return;
            };
            if rec.status == EffectStatus::Failed {
                // Where the wave was deployed, or (a deploy recorded before that was kept)
                // where the configuration puts it.
                let t =
                    match self.deployed_to(run, wave) {
                        Some(to) => crate::config::Target {
                            account: to.account.clone(),
                            region: to.region.clone(),
                        },
                        None => stage.targets.get(wave).cloned().unwrap_or_else(|| {
                            crate::config::Target {
                                account: format!("wave {}", wave + 1),
                                region: "(no longer configured)".into(),
                            }
                        }),
                    };
                let why = drift(&t, &rec, true).unwrap_or_else(|| Reason::RollbackFailed {
                    account: t.account.clone(),
                    region: t.region.clone(),
                    detail: rec.detail.clone(),
                });
                self.halt(stage, run, why);
                return;
            }
        }
        let reason = Reason::RolledBack {
            cause: Box::new(run.reason.clone()),
            restored: target,
        };
        self.transition(run, RunStatus::RolledBack, reason);
        if self.release(run.release).is_some_and(|r| r.bad.is_none()) {
            self.out.actions.push(Action::MarkBad {
                release: run.release,
                stage: stage.name.clone(),
                reason: run.reason.clone(),
            });
        }
        self.out.actions.push(Action::RecordGood {
            stage: stage.name.clone(),
            release: target,
        });
    }

    /// The run fails with `why` and the stage is paused until a person resumes it.
    fn halt(&mut self, stage: &Stage, run: &StageRun, why: Reason) {
        let pause = why.describe(self.now);
        self.transition(run, RunStatus::Failed, why);
        self.out.actions.push(Action::PauseStage {
            stage: stage.name.clone(),
            reason: pause,
        });
    }

    /// Waves this run touched (a deploy was at least attempted there), whether or not the
    /// configuration still has them: a wave a reload dropped is still rolled back (its
    /// rollback refuses to go elsewhere, and halts the stage, see `engine::exec`), never
    /// skipped as if it had not run the release.
    fn deployed_waves(&self, run: &StageRun) -> Vec<usize> {
        let waves: BTreeSet<usize> = self
            .run_effects(run)
            .filter_map(|e| match e.kind {
                EffectKind::Deploy { wave } => Some(wave),
                _ => None,
            })
            .collect();
        waves.into_iter().collect()
    }

    /// Where this run deployed `wave` (or, a deploy that did not succeed, where it began),
    /// when its deploy recorded it.
    fn deployed_to(&self, run: &StageRun, wave: usize) -> Option<&'a DeployedTo> {
        self.run_effects(run)
            .filter(|e| e.kind == EffectKind::Deploy { wave })
            .find_map(EffectRecord::deploy_place)
    }

    // ----- reporting ---------------------------------------------------------------------

    /// GitHub deployment statuses and SNS notifications follow the runs' statuses.
    fn side_reports(&mut self) {
        let notify = self.cfg.notifications.topic.is_some();
        let mut unfinished: BTreeSet<ReleaseId> = BTreeSet::new();
        // Reports go out stage by stage: a later stage's report waits while an earlier
        // stage's is undelivered, so a retried old report never lands after a newer summary.
        let order = |stage: &str| self.cfg.stages.iter().position(|s| s.name == stage);
        let mut runs: Vec<&StageRun> = self.snap.runs.iter().collect();
        runs.sort_by_key(|r| (r.release, order(&r.stage)));
        let mut reporting: BTreeSet<ReleaseId> = BTreeSet::new();
        for run in runs {
            if !run.status.is_terminal() {
                unfinished.insert(run.release);
            }
            if self.is_touched(run) {
                unfinished.insert(run.release);
                continue;
            }
            // A run that ended without ever leaving Waiting was never reported: GitHub
            // hears nothing about a stage the release did not reach.
            let reached = !run.status.is_terminal() || self.snap.effects_of(run).next().is_some();
            if reporting.contains(&run.release) || !self.report(run, reached) {
                unfinished.insert(run.release);
                reporting.insert(run.release);
            }
            let acted = self
                .snap
                .effects_of(run)
                .any(|e| !matches!(e.kind, EffectKind::Report { .. }));
            let event = match run.status {
                RunStatus::RolledBack => Some(NotifyEvent::RolledBack),
                RunStatus::Failed | RunStatus::Rejected | RunStatus::Expired if acted => {
                    Some(NotifyEvent::Halted)
                }
                _ => None,
            };
            if let (true, Some(event)) = (notify, event) {
                if self
                    .ensure(self.effect(run, EffectKind::Notify { event }))
                    .is_none()
                {
                    unfinished.insert(run.release);
                }
            }
        }
        self.retire(&unfinished);
        self.abandon_stale();
    }

    /// GitHub statuses in order: a report left pending by a crash is finished before the
    /// current one is sent. True when the current status has been reported.
    fn report(&mut self, run: &StageRun, reached: bool) -> bool {
        let pending: Vec<ReportState> = self
            .snap
            .effects_of(run)
            .filter(|e| e.status == EffectStatus::Pending)
            .filter_map(|e| match e.kind {
                EffectKind::Report { state } => Some(state),
                _ => None,
            })
            .collect();
        if !pending.is_empty() {
            for state in pending {
                self.ensure(self.effect(run, EffectKind::Report { state }));
            }
            return false;
        }
        let Some(target) = ReportState::for_status(run.status).filter(|_| reached) else {
            return true;
        };
        // Each status in order, the next only once the one before it was delivered, so GitHub
        // sees `queued` even for a run that went Queued -> Deploying within one plan.
        let deployed = self.snap.effects_of(run).any(|e| e.kind.is_deploy());
        for state in target.path(deployed) {
            if self
                .ensure(self.effect(run, EffectKind::Report { state }))
                .is_none()
            {
                return false;
            }
        }
        true
    }

    /// Pending effects this plan no longer asks for are closed, so none is left hanging.
    /// (A run changing status in this plan is looked at again in the next round.)
    fn abandon_stale(&mut self) {
        let wanted: HashSet<EffectKey> = self
            .out
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::Start(e) => Some(e.key.clone()),
                _ => None,
            })
            .collect();
        for e in &self.snap.effects {
            let moving = self.touched.contains(&(e.release, e.stage.clone()));
            if e.status == EffectStatus::Pending && !wanted.contains(&e.key) && !moving {
                self.out
                    .actions
                    .push(Action::Abandon { key: e.key.clone() });
            }
        }
    }

    /// Releases with every run ended and every effect finished leave the working set.
    fn retire(&mut self, unfinished: &BTreeSet<ReleaseId>) {
        let pending: BTreeSet<ReleaseId> = self
            .snap
            .effects
            .iter()
            .filter(|e| e.status == EffectStatus::Pending)
            .map(|e| e.release)
            .collect();
        let touched: BTreeSet<ReleaseId> = self.touched.iter().map(|(r, _)| *r).collect();
        let started: BTreeSet<ReleaseId> = self
            .out
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::Start(e) => Some(e.release),
                _ => None,
            })
            .collect();
        // What a stage runs now stays: a manual rollback or a bad mark upstream needs its run.
        let current: BTreeSet<ReleaseId> = self
            .snap
            .stages
            .iter()
            .flat_map(|s| [s.history.last().copied(), self.snap.last_good(&s.name)])
            .flatten()
            .collect();
        let done: Vec<ReleaseId> = self
            .snap
            .releases
            .values()
            .filter(|r| r.digest.is_some() || r.failed.is_some())
            .filter(|r| !current.contains(&r.id))
            .filter(|r| self.snap.runs.iter().any(|run| run.release == r.id))
            .map(|r| r.id)
            .filter(|id| {
                !unfinished.contains(id)
                    && !pending.contains(id)
                    && !touched.contains(id)
                    && !started.contains(id)
            })
            .collect();
        for release in done {
            self.out.actions.push(Action::Retire { release });
        }
    }
}

/// A deploy or rollback whose target, read back, runs something else: drift, not a failure
/// to roll back from (rolling back would overwrite what someone else put there).
fn drift(t: &crate::config::Target, rec: &EffectRecord, rollback: bool) -> Option<Reason> {
    let EffectOutput::Drift { expected, found } = &rec.output else {
        return None;
    };
    Some(Reason::Drift {
        account: t.account.clone(),
        region: t.region.clone(),
        expected: expected.clone(),
        found: found.clone(),
        rollback,
    })
}

/// A run a reload ended by removing its stage ([`Reason::StageRemoved`]).
fn ended_by_removal(run: &StageRun) -> bool {
    run.status == RunStatus::Superseded && run.reason == Reason::StageRemoved
}

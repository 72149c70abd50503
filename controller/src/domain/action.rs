//! What the planner asks for: state changes the executor applies in one transaction, and
//! side effects it performs through a port, each under a stable idempotency key.
//!
//! Owns [`Action`], [`Effect`] and [`EffectKind`], and the idempotency key derived from an
//! effect's place and kind. Must never: be read back from a key (the key is written once; the
//! kind is stored beside it as data), or do I/O.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::names::*;
use super::reason::Reason;
use super::types::{ReleaseId, RunStatus};

/// Before or after the deploy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Before,
    After,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Before => "before",
            Phase::After => "after",
        }
    }
}

/// What a notification is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotifyEvent {
    /// The release stopped: a test failed, approval was rejected or expired, a deploy failed.
    Halted,
    /// The stage was rolled back to its last known-good release.
    RolledBack,
    /// An approval request was not sent: a subscription on the approval topic would have
    /// received every approver's personal link.
    ApprovalWithheld,
}

impl NotifyEvent {
    pub fn as_str(self) -> &'static str {
        match self {
            NotifyEvent::Halted => "halted",
            NotifyEvent::RolledBack => "rolled-back",
            NotifyEvent::ApprovalWithheld => "approval-withheld",
        }
    }
}

/// A GitHub Deployment status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReportState {
    Queued,
    InProgress,
    Success,
    Failure,
    Inactive,
}

impl ReportState {
    pub fn as_str(self) -> &'static str {
        match self {
            ReportState::Queued => "queued",
            ReportState::InProgress => "in_progress",
            ReportState::Success => "success",
            ReportState::Failure => "failure",
            ReportState::Inactive => "inactive",
        }
    }

    pub fn parse(s: &str) -> Option<ReportState> {
        [
            ReportState::Queued,
            ReportState::InProgress,
            ReportState::Success,
            ReportState::Failure,
            ReportState::Inactive,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
    }

    /// The statuses GitHub is told, in order, to arrive at `self`: a Deployment always starts
    /// `queued`; `in_progress` precedes `success`, and `failure` when the run had deployed.
    pub fn path(self, deployed: bool) -> Vec<ReportState> {
        use ReportState as R;
        match self {
            R::Queued => vec![R::Queued],
            R::InProgress | R::Success => {
                let mut p = vec![R::Queued, R::InProgress];
                if self == R::Success {
                    p.push(R::Success);
                }
                p
            }
            R::Failure if deployed => vec![R::Queued, R::InProgress, R::Failure],
            R::Failure => vec![R::Queued, R::Failure],
            R::Inactive => vec![R::Queued, R::Inactive],
        }
    }

    /// The status GitHub should show for a run in `status`; `None` before it is queued.
    pub fn for_status(status: RunStatus) -> Option<ReportState> {
        use RunStatus as S;
        Some(match status {
            S::Waiting => return None,
            S::Queued | S::Checking | S::AwaitingApproval => ReportState::Queued,
            S::Deploying | S::Verifying | S::Baking | S::RollingBack => ReportState::InProgress,
            S::Succeeded => ReportState::Success,
            S::Failed | S::Rejected | S::Expired | S::RolledBack => ReportState::Failure,
            S::Superseded => ReportState::Inactive,
        })
    }
}

/// The kind of a side effect, with what distinguishes one from another of the same run.
/// Stored with the effect: its tag in a checked column ([`EffectKind::tag`]), the whole value
/// as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EffectKind {
    /// Resolve the commit's image tag to a digest (waits, bounded, for the image).
    ResolveArtifact,
    /// Read the stage's alarms before entering it; `round` counts re-checks.
    CheckAlarms {
        round: u32,
    },
    RunTest {
        test: String,
        phase: Phase,
    },
    /// Publish the approval request (one message per approver). A failed send is tried again
    /// in a later `round`, which sends only what no earlier round got out.
    RequestApproval {
        round: u32,
    },
    /// Deploy one wave (target) of the stage.
    Deploy {
        wave: usize,
    },
    /// Return one wave to `target`, the stage's last known-good release.
    Rollback {
        wave: usize,
        target: ReleaseId,
    },
    /// Backstop poll of the alarms during bake; `round` counts polls.
    PollAlarms {
        round: u32,
    },
    Notify {
        event: NotifyEvent,
    },
    Report {
        state: ReportState,
    },
}

impl EffectKind {
    /// The round of a repeated effect (alarm checks, approval requests, bake polls).
    pub fn round(&self) -> Option<u32> {
        match self {
            EffectKind::CheckAlarms { round }
            | EffectKind::RequestApproval { round }
            | EffectKind::PollAlarms { round } => Some(*round),
            _ => None,
        }
    }

    /// Every tag, in the order of the variants (the store's CHECK constraint lists the same).
    pub const TAGS: [&'static str; 9] = [
        "resolve_artifact",
        "check_alarms",
        "run_test",
        "request_approval",
        "deploy",
        "rollback",
        "poll_alarms",
        "notify",
        "report",
    ];

    /// The variant's name, as stored in the effect's `kind` column.
    pub fn tag(&self) -> &'static str {
        match self {
            EffectKind::ResolveArtifact => "resolve_artifact",
            EffectKind::CheckAlarms { .. } => "check_alarms",
            EffectKind::RunTest { .. } => "run_test",
            EffectKind::RequestApproval { .. } => "request_approval",
            EffectKind::Deploy { .. } => "deploy",
            EffectKind::Rollback { .. } => "rollback",
            EffectKind::PollAlarms { .. } => "poll_alarms",
            EffectKind::Notify { .. } => "notify",
            EffectKind::Report { .. } => "report",
        }
    }

    /// Part of the idempotency key; stable across versions (it is stored). Written, never
    /// read back: the kind is stored as data beside the key.
    pub fn key_part(&self) -> String {
        match self {
            EffectKind::ResolveArtifact => "resolve".into(),
            EffectKind::CheckAlarms { round } => format!("check-alarms-{round}"),
            EffectKind::RunTest { test, phase } => format!("test-{}-{test}", phase.as_str()),
            EffectKind::RequestApproval { round: 0 } => "approval-request".into(),
            EffectKind::RequestApproval { round } => format!("approval-request-{round}"),
            EffectKind::Deploy { wave } => format!("deploy-{wave}"),
            EffectKind::Rollback { wave, target } => format!("rollback-{wave}-to-{}", target.0),
            EffectKind::PollAlarms { round } => format!("poll-alarms-{round}"),
            EffectKind::Notify { event } => format!("notify-{}", event.as_str()),
            EffectKind::Report { state } => format!("report-{}", state.as_str()),
        }
    }

    /// A deploy of one wave (not a rollback).
    pub fn is_deploy(&self) -> bool {
        matches!(self, EffectKind::Deploy { .. })
    }

    /// Effects whose failure must not change the release's course.
    pub fn is_advisory(&self) -> bool {
        matches!(self, EffectKind::Notify { .. } | EffectKind::Report { .. })
    }
}

/// A side effect to perform, under its idempotency key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Effect {
    pub key: EffectKey,
    pub pipeline: PipelineName,
    pub release: ReleaseId,
    /// Empty for release-level effects.
    pub stage: StageName,
    pub attempt: u32,
    pub kind: EffectKind,
}

impl Effect {
    pub fn new(
        pipeline: &str,
        release: ReleaseId,
        stage: &str,
        attempt: u32,
        kind: EffectKind,
    ) -> Self {
        let key = idempotency_key(pipeline, release, stage, attempt, &kind);
        Self {
            key,
            pipeline: pipeline.into(),
            release,
            stage: stage.into(),
            attempt,
            kind,
        }
    }
}

/// `pipeline/r12/stage/a1/deploy-0`: derived only from (release, stage, attempt, what).
pub fn idempotency_key(
    pipeline: &str,
    release: ReleaseId,
    stage: &str,
    attempt: u32,
    kind: &EffectKind,
) -> EffectKey {
    let stage = if stage.is_empty() { "-" } else { stage };
    EffectKey::new(format!(
        "{pipeline}/r{}/{stage}/a{attempt}/{}",
        release.0,
        kind.key_part()
    ))
}

/// One step the executor takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Move a run to a new status (the reason says why). `alarm` is the alarm event that
    /// sends it into rollback, when one does.
    Transition {
        release: ReleaseId,
        stage: StageName,
        to: RunStatus,
        reason: Reason,
        alarm: Option<i64>,
    },
    /// Update what a run is waiting for, without changing its status. Planned only when the
    /// reason's value changes: a deadline is part of the value, a countdown is not, so a long
    /// wait writes no entry per minute.
    Note {
        release: ReleaseId,
        stage: StageName,
        reason: Reason,
    },
    /// The release was rolled back in `stage`: never promote it again automatically.
    MarkBad {
        release: ReleaseId,
        stage: StageName,
        reason: Reason,
    },
    /// A stage the configuration added after the release was recorded (a reload): the
    /// release goes through it, from a waiting run as a release recorded now would.
    AddRun {
        release: ReleaseId,
        stage: StageName,
    },
    /// A stage a reload removed, then one added back under the same name: the release's run
    /// there, ended by the removal (superseded, [`super::Reason::StageRemoved`]), waits again
    /// under its next attempt, and the release goes through the stage.
    ReopenRun {
        release: ReleaseId,
        stage: StageName,
    },
    /// The release could not be promoted at all (e.g. its image never appeared).
    FailRelease { release: ReleaseId, reason: String },
    /// The stage now runs `release` and trusts it.
    RecordGood {
        stage: StageName,
        release: ReleaseId,
    },
    /// Stop starting anything in the stage until a person resumes it.
    PauseStage { stage: StageName, reason: String },
    /// A manual rollback request was acted upon.
    ConsumeRollbackRequest { stage: StageName, request: i64 },
    /// Send a stopped release through `stages` again (the stage where it stopped and those
    /// after it): its failed or expired runs there go back to waiting under the next attempt.
    Retry {
        request: i64,
        release: ReleaseId,
        stages: Vec<StageName>,
        by: String,
    },
    /// A retry request that cannot be carried out; nothing else changes.
    RefuseRetry {
        request: i64,
        release: ReleaseId,
        why: String,
    },
    /// The release has nothing left to do (every run ended, every report and notification
    /// done): it leaves the working set and stays in the history.
    Retire { release: ReleaseId },
    /// A side effect recorded as pending that is no longer wanted (its run moved on while
    /// the controller was down): record it as abandoned. Skipped if it is still running.
    Abandon { key: EffectKey },
    /// Perform a side effect (or resume it after a crash) under its idempotency key.
    Start(Effect),
}

impl Action {
    /// Changes the store by itself (as opposed to starting a side effect).
    pub fn is_state_change(&self) -> bool {
        !matches!(self, Action::Start(_))
    }

    /// The event log's text for the action, with deadlines shown as time left from `now`.
    pub fn describe(&self, now: DateTime<Utc>) -> String {
        match self {
            Action::Transition {
                release,
                stage,
                to,
                reason,
                ..
            } => format!("{release} {stage} → {to}: {}", reason.describe(now)),
            Action::Note {
                release,
                stage,
                reason,
            } => format!("{release} {stage}: {}", reason.describe(now)),
            Action::MarkBad {
                release,
                stage,
                reason,
            } => format!("{release} marked bad in {stage}: {}", reason.describe(now)),
            Action::AddRun { release, stage } => {
                format!("{release} goes through {stage}, a stage added after it was recorded")
            }
            Action::ReopenRun { release, stage } => format!(
                "{release} goes through {stage}, a stage added back after a reload removed it \
                 and ended its run there"
            ),
            Action::FailRelease { release, reason } => format!("{release} failed: {reason}"),
            Action::RecordGood { stage, release } => format!("{stage} now runs {release}"),
            Action::PauseStage { stage, reason } => format!("{stage} paused: {reason}"),
            Action::ConsumeRollbackRequest { stage, request } => {
                format!("{stage} rollback request {request} handled")
            }
            Action::Retry {
                release,
                stages,
                by,
                ..
            } => format!(
                "{release} sent again from {} (retry requested by {by})",
                stages.first().map_or("-", StageName::as_str)
            ),
            Action::RefuseRetry { release, why, .. } => {
                format!("retry of {release} refused: {why}")
            }
            Action::Retire { release } => format!("{release} finished"),
            Action::Abandon { key } => format!("abandoned {key}"),
            Action::Start(e) => format!("start {}", e.key),
        }
    }
}

//! What the planner asks for: state changes the executor applies in one transaction, and
//! side effects it performs through a port, each under a stable idempotency key.

use std::fmt;

use super::types::{ReleaseId, RunStatus};

/// Before or after the deploy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NotifyEvent {
    /// The release stopped: a test failed, approval was rejected or expired, a deploy failed.
    Halted,
    /// The stage was rolled back to its last known-good release.
    RolledBack,
}

impl NotifyEvent {
    pub fn as_str(self) -> &'static str {
        match self {
            NotifyEvent::Halted => "halted",
            NotifyEvent::RolledBack => "rolled-back",
        }
    }
}

/// A GitHub Deployment status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
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
    /// Part of the idempotency key; stable across versions (it is stored).
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

    /// Effects whose failure must not change the release's course.
    pub fn is_advisory(&self) -> bool {
        matches!(self, EffectKind::Notify { .. } | EffectKind::Report { .. })
    }
}

/// A side effect to perform, under its idempotency key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Effect {
    pub key: String,
    pub pipeline: String,
    pub release: ReleaseId,
    /// Empty for release-level effects.
    pub stage: String,
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
            pipeline: pipeline.to_string(),
            release,
            stage: stage.to_string(),
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
) -> String {
    let stage = if stage.is_empty() { "-" } else { stage };
    format!(
        "{pipeline}/r{}/{stage}/a{attempt}/{}",
        release.0,
        kind.key_part()
    )
}

/// One step the executor takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Move a run to a new status (the reason says why).
    Transition {
        release: ReleaseId,
        stage: String,
        to: RunStatus,
        reason: String,
    },
    /// Update what a run is waiting for, without changing its status. `logged` is false when
    /// only a countdown in the reason moved ("expires in 3h" → "2h59m"): the run's reason is
    /// kept current, but the event log gets no entry per minute of a long wait.
    Note {
        release: ReleaseId,
        stage: String,
        reason: String,
        logged: bool,
    },
    /// The release was rolled back in `stage`: never promote it again automatically.
    MarkBad {
        release: ReleaseId,
        stage: String,
        reason: String,
    },
    /// The release could not be promoted at all (e.g. its image never appeared).
    FailRelease { release: ReleaseId, reason: String },
    /// The stage now runs `release` and trusts it.
    RecordGood { stage: String, release: ReleaseId },
    /// Stop starting anything in the stage until a person resumes it.
    PauseStage { stage: String, reason: String },
    /// A manual rollback request was acted upon.
    ConsumeRollbackRequest { stage: String, request: i64 },
    /// The release has nothing left to do (every run ended, every report and notification
    /// done): it leaves the working set and stays in the history.
    Retire { release: ReleaseId },
    /// A side effect recorded as pending that is no longer wanted (its run moved on while
    /// the controller was down): record it as abandoned. Skipped if it is still running.
    Abandon { key: String },
    /// Perform a side effect (or resume it after a crash) under its idempotency key.
    Start(Effect),
}

impl Action {
    /// Changes the store by itself (as opposed to starting a side effect).
    pub fn is_state_change(&self) -> bool {
        !matches!(self, Action::Start(_))
    }

    /// Written to the event log when applied.
    pub fn is_logged(&self) -> bool {
        !matches!(self, Action::Note { logged: false, .. })
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Transition {
                release,
                stage,
                to,
                reason,
            } => write!(f, "{release} {stage} → {to}: {reason}"),
            Action::Note {
                release,
                stage,
                reason,
                ..
            } => write!(f, "{release} {stage}: {reason}"),
            Action::MarkBad {
                release,
                stage,
                reason,
            } => write!(f, "{release} marked bad in {stage}: {reason}"),
            Action::FailRelease { release, reason } => write!(f, "{release} failed: {reason}"),
            Action::RecordGood { stage, release } => write!(f, "{stage} now runs {release}"),
            Action::PauseStage { stage, reason } => write!(f, "{stage} paused: {reason}"),
            Action::ConsumeRollbackRequest { stage, request } => {
                write!(f, "{stage} rollback request {request} handled")
            }
            Action::Retire { release } => write!(f, "{release} finished"),
            Action::Abandon { key } => write!(f, "abandoned {key}"),
            Action::Start(e) => write!(f, "start {}", e.key),
        }
    }
}

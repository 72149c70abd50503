//! What `/api/v1` answers with: the JSON shapes of pipelines, releases, runs, events and the
//! configuration, built from the store's typed rows. Reasons go out twice: as their typed
//! value (`wait`, tagged by `kind`) and rendered for people (`reason`), with `deadline` when
//! the wait ends by itself.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::domain::{ApprovalRecord, Reason, Release, RunStatus, StageRun};

/// A release, by id and commit.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ReleaseRef {
    /// `r12`.
    pub id: String,
    pub sha: String,
}

impl ReleaseRef {
    pub fn of(r: &Release) -> ReleaseRef {
        ReleaseRef {
            id: r.id.to_string(),
            sha: r.sha.to_string(),
        }
    }
}

/// One release's run in one stage.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RunView {
    pub stage: String,
    /// `waiting`, `queued`, `checking`, `awaiting_approval`, `deploying`, `verifying`,
    /// `baking`, `succeeded`, `failed`, `rejected`, `expired`, `superseded`, `rolling_back`,
    /// `rolled_back`.
    #[schema(value_type = String)]
    pub status: RunStatus,
    pub attempt: u32,
    /// When the run entered its status.
    pub since: DateTime<Utc>,
    /// Why it is where it is, for people.
    pub reason: String,
    /// The same reason as typed data (`kind` names the variant).
    #[schema(value_type = Object)]
    pub wait: Reason,
    /// When the wait ends by itself (an approval's expiry, a bake's end, a window opening).
    pub deadline: Option<DateTime<Utc>>,
}

impl RunView {
    pub fn of(run: &StageRun, now: DateTime<Utc>) -> RunView {
        RunView {
            stage: run.stage.to_string(),
            status: run.status,
            attempt: run.attempt,
            since: run.since,
            reason: run.reason.describe(now),
            wait: run.reason.clone(),
            deadline: run.reason.deadline(),
        }
    }
}

/// The release a stage works on now.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct StageRelease {
    pub release: ReleaseRef,
    pub run: RunView,
}

/// One stage of a pipeline.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct StageView {
    pub name: String,
    /// The stage's pause reason, when paused.
    pub paused: Option<String>,
    /// The release the stage trusts now.
    pub known_good: Option<ReleaseRef>,
    /// The release in flight there, with its run.
    pub current: Option<StageRelease>,
}

/// A pipeline and its stages, in order.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PipelineView {
    pub name: String,
    /// The pipeline's pause reason, when paused.
    pub paused: Option<String>,
    pub stages: Vec<StageView>,
}

/// Where a release stands as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReleaseStatus {
    /// Some stage still has work for it.
    InProgress,
    /// Every stage succeeded with it.
    Succeeded,
    Failed,
    Rejected,
    Expired,
    Superseded,
    /// Rolled back somewhere: never promoted again automatically.
    RolledBack,
}

impl ReleaseStatus {
    /// From the release and its runs: a bad mark first, then the first way a run ended.
    pub fn of(r: &Release, runs: &[StageRun]) -> ReleaseStatus {
        let any = |s: RunStatus| runs.iter().any(|x| x.status == s);
        if r.bad.is_some() || any(RunStatus::RolledBack) || any(RunStatus::RollingBack) {
            return ReleaseStatus::RolledBack;
        }
        if r.failed.is_some() || any(RunStatus::Failed) {
            return ReleaseStatus::Failed;
        }
        let ended = [
            (RunStatus::Rejected, ReleaseStatus::Rejected),
            (RunStatus::Expired, ReleaseStatus::Expired),
            (RunStatus::Superseded, ReleaseStatus::Superseded),
        ];
        if let Some((_, s)) = ended.into_iter().find(|(run, _)| any(*run)) {
            return s;
        }
        if !runs.is_empty() && runs.iter().all(|x| x.status == RunStatus::Succeeded) {
            return ReleaseStatus::Succeeded;
        }
        ReleaseStatus::InProgress
    }
}

/// A release.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ReleaseView {
    /// `r12`.
    pub id: String,
    pub pipeline: String,
    pub sha: String,
    pub branch: String,
    pub author_name: String,
    pub author_email: String,
    pub message: String,
    pub url: Option<String>,
    /// `sha256:…`, once resolved.
    pub digest: Option<String>,
    pub created_at: DateTime<Utc>,
    pub status: ReleaseStatus,
    /// The stage it was rolled back in, if any.
    pub rolled_back_in: Option<String>,
    /// Why it could not be promoted at all, if so.
    pub failed: Option<String>,
}

impl ReleaseView {
    pub fn of(r: &Release, runs: &[StageRun]) -> ReleaseView {
        ReleaseView {
            id: r.id.to_string(),
            pipeline: r.pipeline.to_string(),
            sha: r.sha.to_string(),
            branch: r.branch.clone(),
            author_name: r.author_name.clone(),
            author_email: r.author_email.clone(),
            message: r.message.clone(),
            url: r.url.clone(),
            digest: r.digest.as_ref().map(|d| d.to_string()),
            created_at: r.created_at,
            status: ReleaseStatus::of(r, runs),
            rolled_back_in: r.bad.as_ref().map(|b| b.stage.to_string()),
            failed: r.failed.clone(),
        }
    }
}

/// A page of releases, newest first.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ReleasePage {
    pub releases: Vec<ReleaseView>,
    /// Pass as `cursor` for the next page; absent on the last.
    pub next_cursor: Option<String>,
}

/// An approval or rejection recorded for a run.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DecisionView {
    pub approver: String,
    /// `approve` or `reject`.
    pub decision: String,
    pub attempt: u32,
    pub at: DateTime<Utc>,
}

impl DecisionView {
    pub fn of(a: &ApprovalRecord) -> DecisionView {
        DecisionView {
            approver: a.approver.clone(),
            decision: a.decision.as_str().into(),
            attempt: a.attempt,
            at: a.at,
        }
    }
}

/// A stage run of a release, with its decisions.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ReleaseRun {
    #[serde(flatten)]
    pub run: RunView,
    pub decisions: Vec<DecisionView>,
}

/// One release with its run in each stage (in the pipeline's order).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ReleaseDetail {
    pub release: ReleaseView,
    pub runs: Vec<ReleaseRun>,
}

/// An event-log entry.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EventView {
    pub id: i64,
    pub pipeline: String,
    pub at: DateTime<Utc>,
    pub actor: String,
    pub kind: String,
    /// `r12`.
    pub release: Option<String>,
    pub stage: Option<String>,
    pub detail: String,
}

impl EventView {
    /// An entry of `pipeline`'s event log.
    pub fn of(pipeline: String, e: crate::store::EventRow) -> EventView {
        EventView {
            id: e.id,
            pipeline,
            at: e.at,
            actor: e.actor,
            kind: e.kind,
            release: e.release.map(|r| crate::domain::ReleaseId(r).to_string()),
            stage: e.stage,
            detail: e.detail,
        }
    }
}

/// A page of events, oldest first.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct EventPage {
    pub events: Vec<EventView>,
    /// Pass as `after` for the next page; absent when this page was not full.
    pub next_after: Option<i64>,
}

/// The configuration in force and whether its source validates.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ConfigView {
    /// `file` or `repository`.
    pub source: String,
    /// The file the controller was started with.
    pub file: String,
    /// When applied from the configuration repository: `owner/name`, commit and path.
    pub repository: Option<String>,
    pub commit: Option<String>,
    pub path: Option<String>,
    pub applied_at: Option<DateTime<Utc>>,
    pub pipelines: Vec<String>,
    pub validation: Validation,
    /// The controller leading, when several share a PostgreSQL state (absent on SQLite).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<LeaderView>,
}

/// The holder of the leader lease: the controller that reconciles and performs effects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LeaderView {
    /// `HOST/PID/XXXX`.
    pub holder: String,
    /// One more at every change of leader.
    pub epoch: i64,
    /// When the lease runs out unless renewed (every fifth of its length).
    pub expires_at: DateTime<Utc>,
}

impl From<crate::store::lease::Lease> for LeaderView {
    fn from(l: crate::store::lease::Lease) -> LeaderView {
        LeaderView {
            holder: l.holder,
            epoch: l.epoch,
            expires_at: l.expires_at,
        }
    }
}

impl LeaderView {
    /// The line `tollgate status` prints about it at `now`.
    pub fn line(&self, now: DateTime<Utc>) -> String {
        let until = self.expires_at.format("%Y-%m-%d %H:%M:%S UTC");
        if self.expires_at > now {
            format!(
                "leader: {} (epoch {}; lease until {until})",
                self.holder, self.epoch
            )
        } else {
            format!(
                "leader: none; the lease of {} (epoch {}) ran out at {until}",
                self.holder, self.epoch
            )
        }
    }
}

/// The result of validating the configuration's source as it is now.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Validation {
    pub valid: bool,
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
}

/// What an act did.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Done {
    /// What was recorded, for people.
    pub detail: String,
    /// The release concerned (`r12`), when there is one.
    pub release: Option<String>,
}

// ----- request bodies and parameters --------------------------------------------------------

/// `GET /api/v1/releases` parameters.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ReleaseQuery {
    pub pipeline: Option<String>,
    pub status: Option<ReleaseStatus>,
    /// A commit sha or its first characters (at least 4).
    pub sha: Option<String>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// At most 100; default 20.
    pub limit: Option<i64>,
}

/// `GET /api/v1/events` parameters.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventQuery {
    pub pipeline: Option<String>,
    /// Only events at or after this time (RFC 3339).
    pub since: Option<DateTime<Utc>>,
    /// Only events after this id (`next_after` of the previous page).
    pub after: Option<i64>,
    pub kind: Option<String>,
    /// `r12` or `12`.
    pub release: Option<String>,
    pub stage: Option<String>,
    /// At most 1000; default 100.
    pub limit: Option<i64>,
}

/// `GET /api/v1/pipelines/{pipeline}/history` parameters.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// How many of the newest events: at most 5000; default 200.
    pub limit: Option<i64>,
}

/// Approve or reject.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DecideBody {
    /// The approver deciding; when given, it must be the key's own approver.
    pub approver: Option<String>,
    /// Kept in the event log with the decision.
    pub comment: Option<String>,
}

/// Pause or resume.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PauseBody {
    /// Only this stage; the whole pipeline when absent.
    pub stage: Option<String>,
    /// Why (kept in the event log; shown by `tollgate status` for a pause).
    pub reason: String,
}

/// Which rule an override lifts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OverrideWhich {
    /// Enter stages although their alarms are in ALARM.
    Alarms,
    /// Deploy outside the stages' deployment windows.
    Window,
}

/// Override one rule for one release.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OverrideBody {
    pub which: OverrideWhich,
    pub reason: String,
}

/// Start a release of a commit by hand.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PromoteBody {
    /// The full 40-character commit sha, on the pipeline's branch; its image must exist.
    pub sha: String,
}

/// A body that may be absent (`{}` or none).
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReasonBody {
    /// Kept in the event log.
    pub reason: Option<String>,
}

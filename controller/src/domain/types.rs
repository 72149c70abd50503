//! The domain's data: releases, stage runs, their status, effect records and their typed
//! outcomes, and the facts the planner reads ([`Snapshot`]).
//!
//! Owns the shape of every fact the planner decides on. Every fact is a typed field: an
//! effect's kind is an [`EffectKind`], its outcome an [`EffectOutput`], a run's situation a
//! [`Reason`], the alarm behind a rollback an alarm event id.
//! Must never: recover a fact from a key, a reason's text or a joined string; do I/O.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::action::EffectKind;
use super::approval::{Contributor, ExposedSubscription};
use super::names::*;
use super::reason::Reason;

/// A release's id: assigned by the store in arrival order, so a larger id is a newer release.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct ReleaseId(pub i64);

impl fmt::Display for ReleaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "r{}", self.0)
    }
}

/// `r12` or `12`: what people type and what [`Display`](fmt::Display) prints.
impl std::str::FromStr for ReleaseId {
    type Err = String;

    fn from_str(text: &str) -> Result<ReleaseId, String> {
        let t = text.trim();
        t.strip_prefix('r')
            .unwrap_or(t)
            .parse::<i64>()
            .ok()
            .filter(|n| *n > 0)
            .map(ReleaseId)
            .ok_or_else(|| format!("`{text}` is not a release; write r12 or 12"))
    }
}

/// The first 12 characters of a commit sha, as people read it.
pub fn short_sha(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}

/// One candidate for one pipeline: a commit and, once resolved, its image digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    pub id: ReleaseId,
    pub pipeline: PipelineName,
    pub sha: CommitSha,
    pub branch: String,
    pub author_name: String,
    pub author_email: String,
    pub author_login: Option<String>,
    /// Everyone who brought the change, with their role (the head commit's author among
    /// them); none of them may approve it (invariant 9).
    pub contributors: Vec<Contributor>,
    /// The pull requests of the commit were looked up on GitHub (their authors and mergers
    /// are among `contributors`).
    pub pulls_checked: bool,
    pub message: String,
    pub url: Option<String>,
    /// `sha256:…`, once the artifact was resolved.
    pub digest: Option<Digest>,
    pub created_at: DateTime<Utc>,
    /// Set when the release was rolled back anywhere: it is never promoted again automatically.
    pub bad: Option<BadMark>,
    /// An explicit, logged override: may enter a stage while its alarms are in ALARM.
    pub alarm_override: Option<String>,
    /// An explicit, logged override: may deploy outside the stage's windows.
    pub window_override: Option<String>,
    /// Why the release could not be promoted at all (e.g. its image never appeared).
    pub failed: Option<String>,
}

/// Where and why a release was marked bad.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadMark {
    pub stage: StageName,
    pub reason: Reason,
}

/// The life of one release in one stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Waiting,
    Queued,
    Checking,
    AwaitingApproval,
    Deploying,
    Verifying,
    Baking,
    Succeeded,
    Failed,
    Rejected,
    Expired,
    Superseded,
    RollingBack,
    RolledBack,
}

impl RunStatus {
    pub const ALL: [RunStatus; 14] = [
        RunStatus::Waiting,
        RunStatus::Queued,
        RunStatus::Checking,
        RunStatus::AwaitingApproval,
        RunStatus::Deploying,
        RunStatus::Verifying,
        RunStatus::Baking,
        RunStatus::Succeeded,
        RunStatus::Failed,
        RunStatus::Rejected,
        RunStatus::Expired,
        RunStatus::Superseded,
        RunStatus::RollingBack,
        RunStatus::RolledBack,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Waiting => "waiting",
            RunStatus::Queued => "queued",
            RunStatus::Checking => "checking",
            RunStatus::AwaitingApproval => "awaiting_approval",
            RunStatus::Deploying => "deploying",
            RunStatus::Verifying => "verifying",
            RunStatus::Baking => "baking",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Rejected => "rejected",
            RunStatus::Expired => "expired",
            RunStatus::Superseded => "superseded",
            RunStatus::RollingBack => "rolling_back",
            RunStatus::RolledBack => "rolled_back",
        }
    }

    pub fn parse(s: &str) -> Option<RunStatus> {
        RunStatus::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// No further transition happens on its own.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RunStatus::Succeeded
                | RunStatus::Failed
                | RunStatus::Rejected
                | RunStatus::Expired
                | RunStatus::Superseded
                | RunStatus::RolledBack
        )
    }

    /// The stage's live system is being changed by this run (invariant 3: at most one).
    pub fn changes_stage(self) -> bool {
        matches!(
            self,
            RunStatus::Deploying
                | RunStatus::Verifying
                | RunStatus::Baking
                | RunStatus::RollingBack
        )
    }

    /// Stopped without succeeding in a way `tollgate retry` can send again.
    pub fn retryable(self) -> bool {
        matches!(self, RunStatus::Failed | RunStatus::Expired)
    }

    /// Past `waiting` and not finished: what `tollgate status` shows as in flight.
    pub fn in_flight(self) -> bool {
        self != RunStatus::Waiting && !self.is_terminal()
    }

    /// A newer release's run in one of these has entered (or is entering) the stage, so an
    /// older release sent there again would move the stage backwards.
    pub fn entered(self) -> bool {
        !matches!(
            self,
            RunStatus::Waiting
                | RunStatus::Failed
                | RunStatus::Expired
                | RunStatus::Rejected
                | RunStatus::Superseded
        )
    }

    /// The statuses for which `pred` holds, as a SQL list (`'a', 'b'`) for the store's
    /// queries: one definition of each set, here.
    pub fn sql_set(pred: impl Fn(RunStatus) -> bool) -> String {
        RunStatus::ALL
            .into_iter()
            .filter(|s| pred(*s))
            .map(|s| format!("'{}'", s.as_str()))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Has not started deploying: may still be superseded by a newer release.
    pub fn supersedable(self) -> bool {
        matches!(
            self,
            RunStatus::Waiting
                | RunStatus::Queued
                | RunStatus::Checking
                | RunStatus::AwaitingApproval
        )
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One release in one stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageRun {
    pub release: ReleaseId,
    pub stage: StageName,
    pub status: RunStatus,
    /// Why it is in this status, or what it waits for; shown by `tollgate status`.
    pub reason: Reason,
    pub attempt: u32,
    pub since: DateTime<Utc>,
    /// The alarm event ([`AlarmFact::id`]) that sent the run into rollback, if one did.
    pub rollback_alarm: Option<i64>,
    /// When the run started deploying in this attempt: its alarm watch window opens here.
    pub deploy_started: Option<DateTime<Utc>>,
}

impl StageRun {
    /// Where this run's alarm watch window opens: at the alarm gate's read that let its deploy
    /// start, which may be up to [`super::plan::ALARM_GATE_FRESH`] before the deploy — a change
    /// after that read was not seen by the gate, so the run watches for it.
    pub fn watch_from(&self) -> Option<DateTime<Utc>> {
        let lead = chrono::Duration::from_std(super::plan::ALARM_GATE_FRESH).unwrap_or_default();
        self.deploy_started.map(|started| started - lead)
    }
}

/// What became of an effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EffectStatus {
    Pending,
    Succeeded,
    Failed,
}

impl EffectStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            EffectStatus::Pending => "pending",
            EffectStatus::Succeeded => "succeeded",
            EffectStatus::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(EffectStatus::Pending),
            "succeeded" => Some(EffectStatus::Succeeded),
            "failed" => Some(EffectStatus::Failed),
            _ => None,
        }
    }
}

/// The durable record of one side effect, by idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EffectRecord {
    pub key: EffectKey,
    pub release: ReleaseId,
    /// Empty for release-level effects (artifact resolution).
    pub stage: StageName,
    /// What the effect is (stored as its own typed column, never read from the key).
    pub kind: EffectKind,
    /// The run's attempt it belongs to (0 for release-level effects).
    pub attempt: u32,
    pub status: EffectStatus,
    /// Human-readable outcome: the failure reason, or a summary.
    pub detail: String,
    /// What the effect produced, typed by its kind.
    pub output: EffectOutput,
    /// Where a deploy goes, recorded with its intent before it began (`None` for other
    /// effects, and for deploys begun before it was kept).
    pub place: Option<DeployedTo>,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl EffectRecord {
    /// Where a deploy went, or (still running, failed or interrupted) where it began; `None`
    /// for other effects, and for a deploy recorded before either was kept that has not
    /// succeeded.
    pub fn deploy_place(&self) -> Option<&DeployedTo> {
        if !matches!(self.kind, EffectKind::Deploy { .. }) {
            return None;
        }
        match &self.output {
            EffectOutput::Deployed { to: Some(to), .. } => Some(to),
            _ => self.place.as_ref(),
        }
    }
}

/// What a finished effect produced, one variant per kind of result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EffectOutput {
    /// Nothing beyond its status and detail.
    #[default]
    None,
    /// The artifact's image digest (`sha256:…`).
    Resolved { digest: Digest },
    /// The stage's alarms that were in ALARM when read (empty: none) and, for a read during
    /// bake, each alarm's state and data points (empty for an entry check, and in outcomes
    /// recorded before data points were counted).
    Alarms {
        in_alarm: Vec<String>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        readings: Vec<AlarmReading>,
    },
    /// A wave deployed: the image it runs, the stack's (or pipeline's) outputs, and exactly
    /// what was applied (`None` in deploys recorded before it was kept: a rollback to such a
    /// release redeploys today's configuration with its image, and says so).
    Deployed {
        image_uri: String,
        outputs: BTreeMap<String, String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        applied: Option<AppliedSpec>,
        /// How long the stack's change set and update took (CloudFormation only).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timing: Option<super::StackTiming>,
        /// Where the wave was deployed (`None` in deploys recorded before it was kept). A
        /// rollback of the wave goes there only while the configuration still puts the wave
        /// there.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        to: Option<Box<DeployedTo>>,
    },
    /// A wave restored, and how long after the triggering alarm the deployer was called.
    RolledBack {
        image_uri: String,
        latency_ms: Option<i64>,
        /// How long the stack's change set and update took (CloudFormation only).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timing: Option<super::StackTiming>,
    },
    /// A deploy or rollback whose target, read back afterwards, does not run what was asked
    /// (someone else's update, or an update that never ran): never a success.
    Drift { expected: String, found: String },
    /// A deploy performed again under its key (after a crash, or past its deadline) that was
    /// not done: it began at `began`, and the configuration now puts its wave at `now`
    /// (`None`: it has no such wave any more). Nothing was done at either place; the stage
    /// halts (after rolling back what it can) naming `began`.
    Misplaced {
        began: Box<DeployedTo>,
        now: Option<Box<DeployedTo>>,
    },
    /// An approval request not sent: these subscriptions would have received every
    /// approver's personal link.
    ApprovalWithheld { exposed: Vec<ExposedSubscription> },
    /// An approval request not sent to every listed approver: `awaiting` have no confirmed
    /// email subscription to the topic (SNS would deliver them nothing) and were sent nothing;
    /// `sent` have their link. Each in the stage's order.
    ApprovalUnconfirmed {
        awaiting: Vec<String>,
        sent: Vec<String>,
    },
    /// An approval request whose links are all out, and what it was sent for: the listed
    /// approvers with their addresses (empty: a shared link), the topic and the expiry. When
    /// the configuration says otherwise later (a reload), the request is sent again: a new
    /// address or approver gets a link, and every link the new expiry.
    ApprovalSent(Box<ApprovalSent>),
}

/// See [`EffectOutput::ApprovalSent`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalSent {
    /// (name, email) of each listed approver, in the stage's order.
    pub approvers: Vec<(String, String)>,
    pub topic: String,
    pub expires_at: DateTime<Utc>,
}

/// Where a wave was deployed: the account (its name in the configuration then, and its id),
/// the region, and the CloudFormation stack or CodePipeline pipeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployedTo {
    pub account: String,
    pub account_id: String,
    pub region: String,
    /// The stack's name, or the CodePipeline pipeline's.
    pub name: String,
    /// Whether `name` is a stack or a pipeline: the same name in the same account and region
    /// is two different places. `None` in places recorded before it was kept; see
    /// [`DeployedTo::same_place`] for what such a place matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<DeployKind>,
}

/// What a place is: the two things a stage deploys to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeployKind {
    #[serde(rename = "cloudformation")]
    CloudFormation,
    #[serde(rename = "codepipeline")]
    CodePipeline,
}

impl DeployedTo {
    /// Where `deploy` goes at `target`, in `account`.
    pub fn at(
        target: &crate::config::Target,
        account: &crate::config::Account,
        deploy: &crate::config::Deploy,
    ) -> DeployedTo {
        let (kind, name) = match deploy {
            crate::config::Deploy::CloudFormation { stack, .. } => {
                (DeployKind::CloudFormation, stack)
            }
            crate::config::Deploy::CodePipeline { pipeline, .. } => {
                (DeployKind::CodePipeline, pipeline)
            }
        };
        DeployedTo {
            account: target.account.clone(),
            account_id: account.id.to_string(),
            region: target.region.clone(),
            name: name.clone(),
            kind: Some(kind),
        }
    }

    /// Where `stage`'s wave `wave` goes with `accounts`; `None` when the stage has no such wave
    /// or its account is not among them.
    pub fn of_wave(
        accounts: &BTreeMap<String, crate::config::Account>,
        stage: &crate::config::Stage,
        wave: usize,
    ) -> Option<DeployedTo> {
        let target = stage.targets.get(wave)?;
        let account = accounts.get(&target.account)?;
        Some(DeployedTo::at(target, account, &stage.deploy))
    }

    /// The same place: account id, region, name and kind (an account renamed in the
    /// configuration is still the same account; a stack and a CodePipeline pipeline of one
    /// name are not the same place).
    ///
    /// A place recorded before its kind was kept (no `kind`) matches either kind: which one it
    /// was cannot be known for certain from the record, and it was written by a controller that
    /// compared names only. Treating it as another place would refuse every reload, halt every
    /// resumed deploy and refuse every rollback of a run in flight across the upgrade, though
    /// nothing moved; treated as matching, such a run is checked as before the upgrade, and
    /// every deploy begun after it records its kind.
    pub fn same_place(&self, other: &DeployedTo) -> bool {
        let same_kind = match (self.kind, other.kind) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        };
        same_kind
            && (&self.account_id, &self.region, &self.name)
                == (&other.account_id, &other.region, &other.name)
    }
}

impl std::fmt::Display for DeployedTo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.kind {
            Some(DeployKind::CloudFormation) => write!(f, "stack ")?,
            Some(DeployKind::CodePipeline) => write!(f, "CodePipeline pipeline ")?,
            None => {}
        }
        write!(
            f,
            "{} in account {} ({}) {}",
            self.name, self.account, self.account_id, self.region
        )
    }
}

/// What a deploy applied to its target, recorded so a rollback to the release applies exactly
/// it again (not today's configuration with the old image).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AppliedSpec {
    /// A change set's inputs. The template body is stored once, under its sha256 (hex), in the
    /// store's template table.
    CloudFormation {
        stack: String,
        template_sha256: String,
        /// Every parameter sent, the image parameter included.
        parameters: BTreeMap<String, String>,
        image_parameter: String,
        capabilities: Vec<String>,
        execution_role: Option<String>,
        /// The stack's parameter values once the deploy completed, as `DescribeStacks` gave
        /// them; `NoEcho` parameters (masked) are left out. A rollback to this deploy gives a
        /// parameter that today's configuration sets, and this deploy did not, its value from
        /// here. Empty in deploys recorded before it was kept.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        observed: BTreeMap<String, String>,
    },
    /// The pipeline variables an execution was started with.
    CodePipeline {
        pipeline: String,
        variables: BTreeMap<String, String>,
    },
}

impl AppliedSpec {
    /// The CloudFormation template's sha256, when there is one.
    pub fn template_sha256(&self) -> Option<&str> {
        match self {
            AppliedSpec::CloudFormation {
                template_sha256, ..
            } => Some(template_sha256),
            AppliedSpec::CodePipeline { .. } => None,
        }
    }
}

impl EffectOutput {
    /// The alarms in ALARM, for an alarm read.
    pub fn in_alarm(&self) -> &[String] {
        match self {
            EffectOutput::Alarms { in_alarm, .. } => in_alarm,
            _ => &[],
        }
    }

    /// Each alarm's state and data points, for an alarm read during bake.
    pub fn readings(&self) -> &[AlarmReading] {
        match self {
            EffectOutput::Alarms { readings, .. } => readings,
            _ => &[],
        }
    }

    /// An alarm read from its readings: the names in ALARM, and the readings.
    pub fn alarms(readings: Vec<AlarmReading>) -> EffectOutput {
        let mut in_alarm: Vec<String> = readings
            .iter()
            .filter(|r| r.state == AlarmState::Alarm)
            .map(|r| r.alarm.clone())
            .collect();
        in_alarm.sort();
        in_alarm.dedup();
        EffectOutput::Alarms { in_alarm, readings }
    }
}

/// A CloudWatch alarm's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AlarmState {
    Ok,
    Alarm,
    InsufficientData,
}

impl AlarmState {
    pub fn as_str(self) -> &'static str {
        match self {
            AlarmState::Ok => "OK",
            AlarmState::Alarm => "ALARM",
            AlarmState::InsufficientData => "INSUFFICIENT_DATA",
        }
    }
}

/// One alarm as read during bake, in one target (account and region).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlarmReading {
    pub alarm: String,
    pub state: AlarmState,
    /// Data points of the alarm's metric (or of its metric-math expression) since the deploy
    /// finished; `None` when none were counted (a composite alarm has no metric of its own,
    /// and a stage that asks for no data points is not counted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datapoints: Option<u32>,
    /// How long CloudWatch may take from the start of a breach to putting this alarm in
    /// `ALARM`, in seconds: `(DatapointsToAlarm + 1) × Period + 60 s` (`EvaluationPeriods`
    /// when `DatapointsToAlarm` is unset).
    /// `None` for a composite alarm, and in reads stored before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reports_within_secs: Option<u64>,
}

impl Snapshot {
    /// When the run's deploy finished in its current attempt: the last of its waves.
    pub fn deploy_finished(&self, run: &StageRun) -> Option<DateTime<Utc>> {
        self.effects_of(run)
            .filter(|e| e.kind.is_deploy() && e.status == EffectStatus::Succeeded)
            .filter_map(|e| e.finished_at)
            .max()
    }
}

/// An approver's decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Approve,
    Reject,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Approve => "approve",
            Decision::Reject => "reject",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "approve" => Some(Decision::Approve),
            "reject" => Some(Decision::Reject),
            _ => None,
        }
    }
}

/// A recorded approval or rejection of one release in one stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalRecord {
    pub release: ReleaseId,
    pub stage: StageName,
    /// The run's attempt the decision was given in: it counts for that attempt only.
    pub attempt: u32,
    pub approver: String,
    /// False for a name typed on a shared link.
    pub verified: bool,
    pub decision: Decision,
    pub at: DateTime<Utc>,
}

/// A CloudWatch alarm notification that reached the controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlarmFact {
    /// The alarm event's id in the store; a rollback it causes records it.
    pub id: i64,
    pub stage: StageName,
    pub alarm: String,
    /// True for ALARM, false for OK / INSUFFICIENT_DATA.
    pub firing: bool,
    /// When the notification arrived.
    pub at: DateTime<Utc>,
    /// When the alarm's state changed (CloudWatch's `StateChangeTime`): what decides whether
    /// it falls inside a run's watch window.
    pub changed_at: DateTime<Utc>,
}

/// A manual rollback asked for and not handled yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RollbackRequest {
    pub id: i64,
    pub by: String,
}

/// A `tollgate retry` asked for and not handled yet: the planner either sends the release
/// again or refuses, saying why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryRequest {
    pub id: i64,
    pub release: ReleaseId,
    pub by: String,
}

/// A stage's durable state.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StageState {
    pub name: StageName,
    pub paused: Option<String>,
    /// Releases this stage ran successfully, oldest first (a rollback appends its target).
    pub history: Vec<ReleaseId>,
    /// A manual rollback asked for and not handled yet.
    pub rollback_request: Option<RollbackRequest>,
}

/// Everything `plan` needs to know about one pipeline.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub paused: Option<String>,
    pub stages: Vec<StageState>,
    /// Releases with something left to do, plus those named in stage histories; by id.
    pub releases: BTreeMap<ReleaseId, Release>,
    pub runs: Vec<StageRun>,
    pub effects: Vec<EffectRecord>,
    pub approvals: Vec<ApprovalRecord>,
    pub alarms: Vec<AlarmFact>,
    /// Retry requests not handled yet, oldest first.
    pub retry_requests: Vec<RetryRequest>,
}

impl Snapshot {
    pub fn run(&self, release: ReleaseId, stage: &str) -> Option<&StageRun> {
        self.runs
            .iter()
            .find(|r| r.release == release && r.stage == stage)
    }

    pub fn effect(&self, key: &str) -> Option<&EffectRecord> {
        self.effects.iter().find(|e| e.key == key)
    }

    pub fn stage(&self, name: &str) -> Option<&StageState> {
        self.stages.iter().find(|s| s.name == name)
    }

    /// The release a stage runs now and trusts: the newest history entry not marked bad.
    pub fn last_good(&self, stage: &str) -> Option<ReleaseId> {
        self.stage(stage)?
            .history
            .iter()
            .rev()
            .copied()
            .find(|id| self.releases.get(id).is_none_or(|r| r.bad.is_none()))
    }

    /// Effects of one run in its current attempt, in the order they were started (what an
    /// earlier attempt did is not this run's).
    pub fn effects_of<'a>(&'a self, run: &'a StageRun) -> impl Iterator<Item = &'a EffectRecord> {
        self.effects.iter().filter(move |e| {
            e.release == run.release && e.stage == run.stage && e.attempt == run.attempt
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{DeployKind, DeployedTo};

    fn prod(kind: Option<DeployKind>) -> DeployedTo {
        DeployedTo {
            account: "prod".into(),
            account_id: "444444444444".into(),
            region: "eu-west-1".into(),
            name: "backend-prod".into(),
            kind,
        }
    }

    /// A stack and a CodePipeline pipeline of one name, in one account and region, are two
    /// places, and each says which it is.
    #[test]
    fn a_stack_and_a_pipeline_of_one_name_are_not_the_same_place() {
        let stack = prod(Some(DeployKind::CloudFormation));
        let pipeline = prod(Some(DeployKind::CodePipeline));
        assert!(!stack.same_place(&pipeline));
        assert!(!pipeline.same_place(&stack));
        let renamed = DeployedTo {
            account: "production".into(),
            ..stack.clone()
        };
        assert!(stack.same_place(&renamed), "the account's id decides");
        assert_eq!(
            stack.to_string(),
            "stack backend-prod in account prod (444444444444) eu-west-1"
        );
        assert_eq!(
            pipeline.to_string(),
            "CodePipeline pipeline backend-prod in account prod (444444444444) eu-west-1"
        );
    }

    /// A place as the previous version wrote it (no kind) still reads, matches a stack or a
    /// pipeline of its name (see `same_place`), and is written back without a kind.
    #[test]
    fn a_place_recorded_before_its_kind_was_kept_reads_and_matches_either_kind() {
        let old = r#"{"account":"prod","account_id":"444444444444","region":"eu-west-1","name":"backend-prod"}"#;
        let read: DeployedTo = serde_json::from_str(old).unwrap();
        assert_eq!(read, prod(None));
        assert!(read.same_place(&prod(Some(DeployKind::CloudFormation))));
        assert!(prod(Some(DeployKind::CodePipeline)).same_place(&read));
        assert!(!read.same_place(&DeployedTo {
            region: "us-east-1".into(),
            ..prod(Some(DeployKind::CloudFormation))
        }));
        assert_eq!(
            read.to_string(),
            "backend-prod in account prod (444444444444) eu-west-1"
        );
        assert_eq!(serde_json::to_string(&read).unwrap(), old);

        let new = serde_json::to_string(&prod(Some(DeployKind::CodePipeline))).unwrap();
        assert!(new.contains(r#""kind":"codepipeline""#), "{new}");
        let back: DeployedTo = serde_json::from_str(&new).unwrap();
        assert_eq!(back, prod(Some(DeployKind::CodePipeline)));
    }
}

//! The ports: small traits the engine performs side effects through.
//!
//! Each has one real implementation (`aws/`, `github/`, `gates/`) and an in-memory fake
//! (`tollgate_testkit::fakes`) for engine tests. Every call carries the effect's idempotency
//! key; a real adapter passes it on (CloudFormation `ClientRequestToken`, CodePipeline
//! `clientRequestToken`) or dedupes on it, so a call repeated after a crash changes nothing twice.
//!
//! Must never: carry a decision (a port does what it is asked, once per key) or a secret in a
//! request a fake or a log could show.

use std::collections::BTreeMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::config::{Account, Approver, Artifact, Deploy, Promote, Target, TestDef};
use crate::domain::{
    AlarmReading, AppliedSpec, Contributor, ExposedSubscription, ReleaseId, ReportState,
    StackHistory, StackTiming,
};

/// What went wrong in an adapter, in the few ways the engine branches on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortError {
    /// Throttling, 5xx, a timeout: trying again later may work.
    #[error("temporary failure: {0}")]
    Retryable(String),
    /// Credentials or permissions refused the call.
    #[error("access denied: {0}")]
    Denied(String),
    /// The thing asked for does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// The request itself is wrong (bad template, bad parameter).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The operation ran and failed (a stack that rolled back, a failed execution).
    #[error("{0}")]
    Failed(String),
    /// Read back afterwards, the target does not run what was asked (someone else's update,
    /// or an update that never ran): never counted as success.
    #[error("the target runs {found}, not the requested {expected}")]
    Drift { expected: String, found: String },
}

impl PortError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, PortError::Retryable(_))
    }
}

pub type PortResult<T> = Result<T, PortError>;

/// Where and what to deploy.
#[derive(Debug, Clone)]
pub struct DeployRequest {
    pub key: String,
    pub pipeline: String,
    pub stage: String,
    pub release: ReleaseId,
    pub target: Target,
    pub account: Account,
    pub deploy: Deploy,
    /// `repository@sha256:…`: deploys always use the digest.
    pub image_uri: String,
    /// Names the release and stage, for CloudTrail: `tollgate-backend-r12-prod`.
    pub session_name: String,
    /// A deploy of a release that overrides the alarm gate; always false for a rollback.
    pub alarm_override: bool,
    /// For a rollback: exactly what the known-good release's deploy applied, to apply again.
    /// `None` for a deploy, and for a release deployed before this was recorded (the stage's
    /// current configuration with `image_uri` is used then).
    pub restore: Option<Applied>,
    /// How long this stack's recent deploys took (CloudFormation; empty otherwise or when
    /// none is kept): the waits are shaped by it.
    pub history: StackHistory,
}

/// What a deploy applied: the typed record and, for CloudFormation, the template body (stored
/// once under its sha256).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub spec: AppliedSpec,
    pub template_body: Option<String>,
}

/// What a finished deploy reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeployResult {
    /// Stack outputs (or pipeline variables) handed to the stage's tests.
    pub outputs: BTreeMap<String, String>,
    pub summary: String,
    /// Exactly what was applied (what a rollback to this release applies again).
    pub applied: Option<Applied>,
    /// How long the stack's change set and update took (CloudFormation), to be kept.
    pub timing: Option<StackTiming>,
}

#[async_trait]
pub trait Deployer: Send + Sync {
    /// Deploys `image_uri` to one target and waits until it is done.
    async fn deploy(&self, req: &DeployRequest) -> PortResult<DeployResult>;
    /// Returns the target to `req.image_uri`, the last known-good release, and waits.
    async fn rollback(&self, req: &DeployRequest) -> PortResult<DeployResult>;
}

#[async_trait]
pub trait Artifacts: Send + Sync {
    /// The digest (`sha256:…`) of the image tagged `tag`, waiting (bounded) until it exists.
    async fn resolve(
        &self,
        artifact: &Artifact,
        account: &Account,
        tag: &str,
    ) -> PortResult<String>;
    /// Makes the image available to a stage target; returns the `repository@digest` URI to deploy.
    async fn promote(&self, req: &PromoteRequest) -> PortResult<String>;
}

/// Promote one digest for one stage target.
#[derive(Debug, Clone)]
pub struct PromoteRequest {
    pub artifact: Artifact,
    pub build_account: Account,
    pub digest: String,
    pub stage: String,
    pub target: Target,
    pub target_account: Account,
    pub mode: Promote,
}

/// A message for people, through SNS. Its `Debug` leaves the body out: an approval request's
/// body carries the approval link, whose token is a credential.
#[derive(Clone, PartialEq, Eq)]
pub struct Message {
    pub key: String,
    pub topic: String,
    pub subject: String,
    pub body: String,
    /// Message attributes (e.g. `approver`, matched by subscription filter policies).
    pub attributes: BTreeMap<String, String>,
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let body = format!("[redacted, {} bytes]", self.body.len());
        f.debug_struct("Message")
            .field("key", &self.key)
            .field("topic", &self.topic)
            .field("subject", &self.subject)
            .field("body", &format_args!("{body}"))
            .field("attributes", &self.attributes)
            .finish()
    }
}

#[async_trait]
pub trait Notifier: Send + Sync {
    /// Publishes; returns the message id.
    async fn publish(&self, msg: &Message) -> PortResult<String>;
}

#[async_trait]
pub trait Alarms: Send + Sync {
    /// The names among `names` that are in ALARM now in that account and region.
    async fn in_alarm(
        &self,
        account: &Account,
        region: &str,
        names: &[String],
    ) -> PortResult<Vec<String>>;

    /// The names among `names` that are composite alarms in that account and region (a
    /// rollback trigger's `Type` depends on it). An alarm that does not exist is an error.
    async fn composite(
        &self,
        account: &Account,
        region: &str,
        names: &[String],
    ) -> PortResult<Vec<String>>;

    /// Each alarm among `names` in that account and region, in the order asked: its state
    /// and what `asked` asks for besides (see [`BakeRead`]). An alarm that does not exist is
    /// an error, never a reading.
    async fn read(
        &self,
        account: &Account,
        region: &str,
        names: &[String],
        asked: BakeRead,
    ) -> PortResult<Vec<AlarmReading>>;
}

/// What a bake read needs besides the alarms' states.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BakeRead {
    /// Count the data points each metric (or metric-math expression) has had in this range
    /// (`None` for a composite alarm): the stage asks for `min_datapoints`.
    pub window: Option<DataWindow>,
    /// Work out how long a composite alarm may take to report a breach, from the alarms under
    /// it (calls of their own): the stage's `alarm_delay` is `auto`. A metric alarm's comes
    /// with its state either way.
    pub composite_delays: bool,
}

/// The time range a bake read counts data points in: from when the deploy finished until
/// the read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataWindow {
    pub from: DateTime<Utc>,
    pub until: DateTime<Utc>,
}

/// A GitHub Deployment status for one release in one stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeploymentReport {
    pub key: String,
    pub pipeline: String,
    pub repository: String,
    pub sha: String,
    pub release: ReleaseId,
    pub environment: String,
    pub state: ReportState,
    pub description: String,
    pub log_url: String,
    /// Whether the report moves the commit's `tollgate/<pipeline>` status: not for a stage the
    /// configuration no longer has (its run ended by the removal says nothing of the release,
    /// which goes on through the stages configured).
    pub summary: bool,
}

#[async_trait]
pub trait Forge: Send + Sync {
    async fn report(&self, r: &DeploymentReport) -> PortResult<()>;

    /// False when reports go nowhere (no GitHub token configured); the event log says so.
    fn enabled(&self) -> bool {
        true
    }

    /// The authors and mergers of the pull requests `sha` of `repository` belongs to;
    /// `None` when GitHub is not configured (nobody to ask).
    async fn pull_request_people(
        &self,
        repository: &str,
        sha: &str,
    ) -> PortResult<Option<Vec<Contributor>>> {
        let _ = (repository, sha);
        Ok(None)
    }
}

/// What a test run is told about the stage and the release.
#[derive(Debug, Clone, Default)]
pub struct TestContext {
    pub key: String,
    pub pipeline: String,
    pub stage: String,
    pub release: ReleaseId,
    pub repository: String,
    pub branch: String,
    pub sha: String,
    pub digest: String,
    pub image_uri: String,
    pub account_id: String,
    pub region: String,
    /// Stack outputs of the stage's deploy (empty before the deploy).
    pub outputs: BTreeMap<String, String>,
}

/// The outcome of one test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestResult {
    pub passed: bool,
    /// One line: what passed, or what failed and why.
    pub summary: String,
    /// The last lines of the test's output (bounded).
    pub output_tail: String,
}

#[async_trait]
pub trait TestRunner: Send + Sync {
    async fn run(&self, test: &TestDef, ctx: &TestContext) -> PortResult<TestResult>;
}

/// An approval request to send for one release in one stage.
#[derive(Debug, Clone)]
pub struct ApprovalRequest {
    pub key: String,
    pub pipeline: String,
    /// `owner/name` of the pipeline's repository (its pull requests are looked up).
    pub repository: String,
    pub stage: String,
    pub release: ReleaseId,
    /// The run's attempt: links and decisions belong to it.
    pub attempt: u32,
    pub topic: String,
    pub approvers: Vec<Approver>,
    pub expires_at: chrono::DateTime<chrono::Utc>,
    /// The facts an approver reads: commit, digest, what passed, what is queued.
    pub summary: String,
}

/// What became of an approval request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendOutcome {
    /// This many messages are out for the request.
    Sent(usize),
    /// Not every listed approver has their link: one entry per listed approver, in the
    /// stage's order. Approvers [`LinkDelivery::AwaitingConfirmation`] were sent nothing
    /// (possibly nobody was); sending the request again sends them their link once they
    /// confirmed.
    Unconfirmed(Vec<ApproverLink>),
    /// Nothing was sent: these subscriptions would have received every approver's
    /// personal link.
    Withheld(Vec<ExposedSubscription>),
}

/// Where one listed approver's personal link stands after a send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkDelivery {
    /// Published to the topic, by this send or an earlier one under the same key.
    Sent,
    /// Not published: the approver has no confirmed email subscription to the topic (it is
    /// pending confirmation, or was only just made), and SNS delivers nothing to a subscription
    /// until the approver follows the link in AWS's confirmation email.
    AwaitingConfirmation,
}

/// One listed approver and where their link stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApproverLink {
    pub approver: String,
    pub delivery: LinkDelivery,
}

/// The approvers of `links` who were sent nothing (their subscription awaits confirmation)
/// and those who have their link, each in the stage's order.
pub fn awaiting_and_sent(links: &[ApproverLink]) -> (Vec<String>, Vec<String>) {
    let names = |d: LinkDelivery| -> Vec<String> {
        let of = links.iter().filter(|l| l.delivery == d);
        of.map(|l| l.approver.clone()).collect()
    };
    (
        names(LinkDelivery::AwaitingConfirmation),
        names(LinkDelivery::Sent),
    )
}

#[async_trait]
pub trait ApprovalSender: Send + Sync {
    /// Issues the links and sends them, or withholds them all.
    async fn send(&self, req: &ApprovalRequest) -> PortResult<SendOutcome>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unconfirmed_request_names_who_waits_and_who_has_a_link() {
        let describe = |links: &[ApproverLink]| {
            let (awaiting, sent) = awaiting_and_sent(links);
            crate::domain::approval::describe_unconfirmed(&awaiting, &sent)
        };
        let link = |approver: &str, delivery| ApproverLink {
            approver: approver.into(),
            delivery,
        };
        let partial = [
            link("alice", LinkDelivery::Sent),
            link("bob", LinkDelivery::AwaitingConfirmation),
        ];
        assert_eq!(
            describe(&partial),
            "no link sent to bob: their email subscription to the approval topic is pending \
             confirmation, and SNS delivers nothing until the approver follows the link in AWS's \
             confirmation email; sent to alice"
        );
        let nobody = [link("bob", LinkDelivery::AwaitingConfirmation)];
        assert!(
            describe(&nobody).starts_with(
                "no approver can receive the request yet: the email subscription of bob to the \
                 approval topic is pending confirmation"
            ),
            "{}",
            describe(&nobody)
        );
    }

    #[test]
    fn a_message_debug_print_never_shows_its_body() {
        let token = "tok_5f0e2a9c1d7b4e3f";
        let msg = Message {
            key: "approval:r1:prod:1".into(),
            topic: "arn:aws:sns:eu-west-1:111111111111:approvals".into(),
            subject: "Approve backend r1 for prod".into(),
            body: format!("Approve or reject: https://tollgate.example.com/approvals/{token}\n"),
            attributes: BTreeMap::from([("approver".into(), "alice".into())]),
        };
        for shown in [format!("{msg:?}"), format!("{msg:#?}")] {
            assert!(!shown.contains(token), "{shown}");
            assert!(!shown.contains("/approvals/"), "{shown}");
            assert!(shown.contains("redacted"), "{shown}");
            assert!(
                shown.contains("approval:r1:prod:1"),
                "the key still identifies it: {shown}"
            );
        }
    }
}

//! The validated configuration the rest of tollgate uses.
//!
//! Every value here has passed [`super::validate`]: account references resolve, durations,
//! regions, ARNs, time zones and windows are parsed, paths exist. Nothing here can fail.

use crate::domain::names::{AccountId, Arn, CommitSha, PipelineName, StageName};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use chrono::{NaiveDate, NaiveTime, Weekday};
use chrono_tz::Tz;

/// The whole configuration: pipelines plus the accounts they use.
#[derive(Debug, Clone)]
pub struct Config {
    pub pipelines: Vec<Pipeline>,
    pub accounts: BTreeMap<String, Account>,
    pub controller: ControllerSettings,
    /// The stages.toml this came from.
    pub source_file: PathBuf,
    /// The commit of the configuration repository this was applied from; `None` for a file
    /// on disk.
    pub applied_from: Option<ConfigCommit>,
}

/// A commit of the configuration repository (`controller.config_repository`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigCommit {
    /// `owner/name` of the configuration repository.
    pub repository: String,
    pub sha: CommitSha,
}

impl Config {
    pub fn pipeline(&self, name: &str) -> Option<&Pipeline> {
        self.pipelines.iter().find(|p| p.name == name)
    }

    pub fn account(&self, name: &str) -> Option<&Account> {
        self.accounts.get(name)
    }

    /// The SNS topics the controller's own endpoint subscribes to: alarm topics and accounts'
    /// stack-events topics. An approval or notification topic is for people: a subscription
    /// of the endpoint to one is never confirmed (it would receive approval links, and count
    /// as an exposure that withholds every approval request on that topic).
    pub fn confirmable_topics(&self) -> Vec<String> {
        let mut topics: Vec<String> = self
            .accounts
            .values()
            .filter_map(|a| a.stack_events_topic.as_ref())
            .map(Arn::to_string)
            .collect();
        for p in &self.pipelines {
            topics.extend(p.alarm_topics.iter().map(Arn::to_string));
        }
        topics.sort();
        topics.dedup();
        topics
    }

    /// Every SNS topic ARN a message may legitimately come from: the
    /// [`Config::confirmable_topics`], and the notification and approval topics.
    pub fn known_topics(&self) -> Vec<String> {
        let mut topics = self.confirmable_topics();
        for p in &self.pipelines {
            topics.extend(p.notifications.topic.as_ref().map(Arn::to_string));
            for s in &p.stages {
                topics.extend(s.approval.as_ref().map(|a| a.topic.to_string()));
            }
        }
        topics.sort();
        topics.dedup();
        topics
    }
}

/// `[controller]`.
#[derive(Debug, Clone)]
pub struct ControllerSettings {
    pub public_url: String,
    pub config_repository: Option<String>,
    pub config_branch: String,
    pub config_path: String,
    pub http: HttpSettings,
    pub sns: SnsSettings,
    pub api: ApiSettings,
    pub retention: RetentionSettings,
}

/// `[controller.retention]`: how long pruned kinds of rows are kept (applied at start).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionSettings {
    pub events: Duration,
    pub deliveries: Duration,
    pub approval_tokens: Duration,
    /// Where pruned events are archived as JSON lines; `None`: not archived.
    pub archive_dir: Option<std::path::PathBuf>,
}

impl Default for RetentionSettings {
    fn default() -> Self {
        const DAY: u64 = 86_400;
        RetentionSettings {
            events: Duration::from_secs(90 * DAY),
            deliveries: Duration::from_secs(30 * DAY),
            approval_tokens: Duration::from_secs(30 * DAY),
            archive_dir: None,
        }
    }
}

/// `[controller.api]`: the rate limits of `/api/v1` (applied at start).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiSettings {
    pub per_key_per_minute: u32,
    pub per_key_burst: u32,
    pub per_address_per_minute: u32,
    pub per_address_burst: u32,
}

impl Default for ApiSettings {
    fn default() -> Self {
        ApiSettings {
            per_key_per_minute: 600,
            per_key_burst: 60,
            per_address_per_minute: 1200,
            per_address_burst: 120,
        }
    }
}

/// `[controller.http]`: the HTTP edge's timeouts and limits (applied at start).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpSettings {
    pub header_read_timeout: Duration,
    pub request_timeout: Duration,
    pub idle_timeout: Duration,
    pub shutdown_grace: Duration,
    /// Per route.
    pub max_concurrent_requests: u32,
    /// Across all requests, in bytes.
    pub max_unauthenticated_body_bytes: u32,
    pub rate_limit_per_minute: u32,
    pub rate_limit_burst: u32,
    /// The reverse proxies whose `X-Forwarded-For` names the client (address, prefix length).
    pub trusted_proxies: Vec<(std::net::IpAddr, u8)>,
}

impl HttpSettings {
    /// Whether `ip` is one of the trusted proxies.
    pub fn is_trusted_proxy(&self, ip: std::net::IpAddr) -> bool {
        self.trusted_proxies
            .iter()
            .any(|(net, len)| in_block(ip, *net, *len))
    }
}

/// Whether `ip` lies in the block `net`/`len` (the same address family only).
pub fn in_block(ip: std::net::IpAddr, net: std::net::IpAddr, len: u8) -> bool {
    use std::net::IpAddr::{V4, V6};
    match (ip, net) {
        (V4(a), V4(b)) => {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(len.min(32)))
                .unwrap_or(0);
            u32::from(a) & mask == u32::from(b) & mask
        }
        (V6(a), V6(b)) => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(len.min(128)))
                .unwrap_or(0);
            u128::from(a) & mask == u128::from(b) & mask
        }
        _ => false,
    }
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            header_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(10),
            max_concurrent_requests: 64,
            max_unauthenticated_body_bytes: 64 * 1024 * 1024,
            rate_limit_per_minute: 300,
            rate_limit_burst: 60,
            trusted_proxies: Vec::new(),
        }
    }
}

/// `[controller.sns]`: what SNS messages are accepted (applied on every request, so a reload
/// changes it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnsSettings {
    pub max_message_age: Duration,
    pub clock_skew: Duration,
    pub require_signature_v2: bool,
    pub cert_failure_ttl: Duration,
    pub cert_fetches_per_minute: u32,
}

impl Default for SnsSettings {
    fn default() -> Self {
        SnsSettings {
            max_message_age: Duration::from_secs(3600),
            clock_skew: Duration::from_secs(300),
            require_signature_v2: false,
            cert_failure_ttl: Duration::from_secs(10),
            cert_fetches_per_minute: 10,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Pipeline {
    pub name: PipelineName,
    pub source: Source,
    pub artifact: Artifact,
    pub tests: BTreeMap<String, TestDef>,
    pub notifications: Notifications,
    /// SNS topics whose CloudWatch alarm notifications this pipeline accepts.
    pub alarm_topics: Vec<Arn>,
    pub stages: Vec<Stage>,
}

impl Pipeline {
    pub fn stage(&self, name: &str) -> Option<&Stage> {
        self.stages.iter().find(|s| s.name == name)
    }

    pub fn stage_index(&self, name: &str) -> Option<usize> {
        self.stages.iter().position(|s| s.name == name)
    }

    /// `runs` in the order of the stages (the store lists a release's runs in the order they
    /// were made, and a reload can add a stage's run later); stages no longer configured last.
    pub fn sort_runs(&self, runs: &mut [crate::domain::StageRun]) {
        runs.sort_by_key(|run| self.stage_index(&run.stage).unwrap_or(usize::MAX));
    }
}

#[derive(Debug, Clone)]
pub struct Source {
    /// `owner/name`.
    pub repository: String,
    pub branch: String,
    pub build_workflow: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Artifact {
    pub repository: String,
    pub account: String,
    pub region: String,
    /// Tag template: `{sha}`, `{short_sha}`, `{branch}`.
    pub tag: String,
    pub wait: Duration,
}

impl Artifact {
    /// The image tag a commit is built as.
    pub fn tag_for(&self, sha: &str, branch: &str) -> String {
        let short = &sha[..sha.len().min(12)];
        self.tag
            .replace("{sha}", sha)
            .replace("{short_sha}", short)
            .replace("{branch}", branch)
    }
}

#[derive(Debug, Clone, Default)]
pub struct Notifications {
    pub topic: Option<Arn>,
}

#[derive(Debug, Clone)]
pub struct TestDef {
    pub name: String,
    pub timeout: Duration,
    pub kind: TestKind,
}

#[derive(Debug, Clone)]
pub enum TestKind {
    Command {
        argv: Vec<String>,
        env: BTreeMap<String, String>,
        workdir: PathBuf,
        /// Give the command the stage account's AWS session.
        stage_credentials: bool,
    },
    Http {
        suite: PathBuf,
        base_url_output: String,
    },
    GithubChecks {
        checks: Vec<String>,
    },
    GithubWorkflow {
        workflow: String,
        git_ref: Option<String>,
        inputs: BTreeMap<String, String>,
    },
}

impl TestKind {
    pub fn label(&self) -> &'static str {
        match self {
            TestKind::Command { .. } => "command",
            TestKind::Http { .. } => "http",
            TestKind::GithubChecks { .. } => "github-checks",
            TestKind::GithubWorkflow { .. } => "github-workflow",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Stage {
    pub name: StageName,
    pub targets: Vec<Target>,
    pub deploy: Deploy,
    pub before: Vec<String>,
    pub after: Vec<String>,
    pub bake: Duration,
    pub alarms: Vec<String>,
    /// Data points each alarm's metric must have had since the deploy finished.
    pub min_datapoints: u32,
    /// What an alarm in `INSUFFICIENT_DATA` means to the bake.
    pub insufficient_data: InsufficientData,
    /// How long past the bake time the stage waits for missing data.
    pub bake_max_wait: Duration,
    /// How long past the bake time the bake holds for the alarms to report a breach that
    /// began by its end.
    pub alarm_delay: AlarmDelay,
    pub promote: Promote,
    pub approval: Option<Approval>,
    pub windows: Option<Windows>,
}

/// The longest `alarm_delay` (and `auto` hold): CloudWatch evaluates an alarm over at most a
/// week of data (PutMetricAlarm: `Period` × `EvaluationPeriods` ≤ 604 800 s for periods of
/// an hour or more).
pub const MAX_ALARM_DELAY: Duration = Duration::from_secs(7 * 24 * 3600);

/// How long CloudWatch may take to put an alarm in `ALARM` after its metric starts to breach:
/// the bake holds that long past its time, so a breach that began within the bake is judged
/// by it rather than after the release has moved on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AlarmDelay {
    /// From each alarm, as `DescribeAlarms` gives it: `(DatapointsToAlarm + 1) × Period + 60 s`
    /// (`EvaluationPeriods` when `DatapointsToAlarm` is unset), the longest of the stage's
    /// alarms, at most [`MAX_ALARM_DELAY`]; for a composite alarm, which changes state as soon
    /// as one of the alarms it watches does, the longest of the metric alarms under it.
    #[default]
    Auto,
    /// This long, whatever the alarms say (`0s`: no hold).
    Fixed(Duration),
}

/// What an alarm in `INSUFFICIENT_DATA`, or a metric short of data points, means to a bake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InsufficientData {
    /// Not clean: the stage waits for data, up to `bake_max_wait` past the bake time, and
    /// then fails.
    #[default]
    Wait,
    /// Not clean: an alarm in `INSUFFICIENT_DATA` once the bake time is over fails the stage
    /// at once; missing data points are waited for up to `bake_max_wait`, then fail it.
    Fail,
    /// Clean: an alarm in `INSUFFICIENT_DATA` counts as `OK`; missing data points are waited
    /// for up to `bake_max_wait`, then fail the stage (a quiet service never passes by having
    /// no traffic).
    Pass,
    /// Bad: an alarm in `INSUFFICIENT_DATA` once the bake time is over rolls the stage back at
    /// once, as a service that stopped publishing its metrics (crashed, or not serving) does
    /// under CloudWatch's default `TreatMissingData = missing`; missing data points are waited
    /// for up to `bake_max_wait`, then fail it.
    RollBack,
}

impl InsufficientData {
    pub fn as_str(self) -> &'static str {
        match self {
            InsufficientData::Wait => "wait",
            InsufficientData::Fail => "fail",
            InsufficientData::Pass => "pass",
            InsufficientData::RollBack => "roll_back",
        }
    }

    pub fn parse(text: &str) -> Option<InsufficientData> {
        [Self::Wait, Self::Fail, Self::Pass, Self::RollBack]
            .into_iter()
            .find(|v| v.as_str() == text)
    }
}

/// One place a stage deploys to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub account: String,
    pub region: String,
}

#[derive(Debug, Clone)]
pub enum Deploy {
    CloudFormation {
        stack: String,
        template: PathBuf,
        parameters: BTreeMap<String, String>,
        image_parameter: String,
        capabilities: Vec<String>,
        execution_role: Option<Arn>,
    },
    CodePipeline {
        pipeline: String,
        variable: String,
        /// The stage of `pipeline` that `RollbackStage` rolls back.
        rollback_stage: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Promote {
    /// A per-stage tag in the build account's repository.
    Retag,
    /// A copy into the stage account's repository of the same name.
    Copy,
}

#[derive(Debug, Clone)]
pub struct Approval {
    pub topic: Arn,
    pub approvers: Vec<Approver>,
    pub min_approvals: u32,
    pub timeout: Duration,
    pub allow_author: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Approver {
    pub name: String,
    pub email: String,
    pub github: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Windows {
    pub timezone: Tz,
    pub allow: Vec<Window>,
    pub blackouts: Vec<NaiveDate>,
}

#[derive(Debug, Clone)]
pub struct Window {
    pub days: Vec<Weekday>,
    pub start: NaiveTime,
    pub end: NaiveTime,
}

#[derive(Debug, Clone)]
pub struct Account {
    pub name: String,
    pub id: AccountId,
    pub role_arn: Option<Arn>,
    pub external_id: Option<SecretRef>,
    pub region: String,
    pub controller: bool,
    pub session_duration: Duration,
    /// SNS topic CloudFormation publishes this account's stack events to (`NotificationARNs`
    /// of the stacks deployed in its region).
    pub stack_events_topic: Option<Arn>,
}

impl Account {
    /// The stack-events topic to name in a deploy to `region` (the topic's region only).
    pub fn stack_events_topic_for(&self, region: &str) -> Option<&Arn> {
        let topic = self.stack_events_topic.as_ref()?;
        let in_region = crate::config::values::topic_arn(topic).is_ok_and(|a| a.region == region);
        in_region.then_some(topic)
    }
}

/// Where a secret comes from; the value itself is read only when needed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretRef {
    Env(String),
    File(PathBuf),
}

//! The configuration files exactly as written: serde structs over TOML.
//!
//! Everything that needs checking beyond "is it a string / number / table" stays a string
//! here, so that [`super::validate`] can report every problem in one run, each located at
//! `file:line:col`. Unknown keys are collected by `serde_ignored`, not rejected one by one.
//! Nothing outside `config/` uses these types: the rest of tollgate sees [`super::model`].

use std::collections::BTreeMap;
use std::fmt;

use schemars::JsonSchema;
use serde::de::{self, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};

/// `stages.toml`: one or more pipelines.
#[derive(Debug, Deserialize, JsonSchema, Default)]
#[schemars(deny_unknown_fields)]
pub struct RawStages {
    /// Path of the accounts file, relative to this file. Default `accounts/accounts.toml`.
    pub accounts: Option<String>,
    /// Settings of the controller itself.
    #[serde(default)]
    pub controller: RawController,
    /// The pipelines, in order.
    #[serde(default)]
    pub pipelines: Vec<RawPipeline>,
}

/// `[controller]`: settings of the controller process that belong with the pipeline.
#[derive(Debug, Deserialize, JsonSchema, Default)]
#[schemars(deny_unknown_fields)]
pub struct RawController {
    /// The URL approvers and GitHub links use to reach the controller. Default `http://127.0.0.1:8080`.
    pub public_url: Option<String>,
    /// Follow this repository's `stages.toml` for self-update: `owner/repo`.
    pub config_repository: Option<String>,
    /// Branch of `config_repository` to follow. Default `main`.
    pub config_branch: Option<String>,
    /// Path of the file inside `config_repository`. Default `stages.toml`.
    pub config_path: Option<String>,
    /// `[controller.http]`: timeouts and limits of the HTTP server (read at start).
    #[serde(default)]
    pub http: RawHttp,
    /// `[controller.sns]`: what SNS messages are accepted.
    #[serde(default)]
    pub sns: RawSns,
    /// `[controller.api]`: the rate limits of `/api/v1`.
    #[serde(default)]
    pub api: RawApi,
    /// `[controller.retention]`: how long events, deliveries and approval links are kept.
    #[serde(default)]
    pub retention: RawRetention,
}

/// `[controller.retention]`: what the controller prunes, hourly. Every key has a default.
#[derive(Debug, Deserialize, JsonSchema, Default)]
#[schemars(deny_unknown_fields)]
pub struct RawRetention {
    /// Event-log entries older than this are pruned (archived first when `archive_dir` is
    /// set). Default `90d`.
    pub events: Option<String>,
    /// Delivery ids (webhook, SNS and API request deduplication) older than this are
    /// forgotten. Default `30d`.
    pub deliveries: Option<String>,
    /// Approval links used, replaced or expired longer ago than this are deleted. Default `30d`.
    pub approval_tokens: Option<String>,
    /// A directory where each pruning writes the events it removes as JSON lines (one file
    /// per run), fsynced before they are deleted. Default: none (events are not archived).
    pub archive_dir: Option<String>,
}

/// `[controller.api]`: token buckets of `/api/v1`, per API key and per source address. Every
/// key has a default.
#[derive(Debug, Deserialize, JsonSchema, Default)]
#[schemars(deny_unknown_fields)]
pub struct RawApi {
    /// Requests one API key may make per minute (the bucket's refill rate). Default 600.
    pub per_key_per_minute: Option<i64>,
    /// Requests one API key may make at once (the bucket's size). Default 60.
    pub per_key_burst: Option<i64>,
    /// Requests one source address may make per minute, whatever key it uses. Default 1200.
    pub per_address_per_minute: Option<i64>,
    /// Requests one source address may make at once. Default 120.
    pub per_address_burst: Option<i64>,
}

/// `[controller.http]`: the HTTP edge's timeouts and limits. Every key has a default.
#[derive(Debug, Deserialize, JsonSchema, Default)]
#[schemars(deny_unknown_fields)]
pub struct RawHttp {
    /// Time a client has to send a whole request head. Default `10s`.
    pub header_read_timeout: Option<String>,
    /// Time a request may take, body and answer included. Default `30s`.
    pub request_timeout: Option<String>,
    /// A keep-alive connection with no request for this long is closed. Default `60s`.
    pub idle_timeout: Option<String>,
    /// On SIGTERM, time given to requests in flight before the process exits. Default `10s`.
    pub shutdown_grace: Option<String>,
    /// Requests handled at once per route; more are answered 503. Default 64.
    pub max_concurrent_requests: Option<i64>,
    /// MiB of request bodies held at once, across all requests, before they are authenticated
    /// (webhooks); more are answered 503. At least 25 (GitHub's largest delivery). Default 64.
    pub max_unauthenticated_body_mib: Option<i64>,
    /// Requests per minute per source address on the webhook and approval routes. Default 300.
    pub rate_limit_per_minute: Option<i64>,
    /// Requests a source address may send at once above that rate. Default 60.
    pub rate_limit_burst: Option<i64>,
    /// Addresses or CIDR blocks of the reverse proxies in front of the controller. A request
    /// from one of them is rate-limited by the client address it appends to
    /// `X-Forwarded-For` (the rightmost address that is not a trusted proxy). Default: none
    /// (the TCP peer is the source; the header is never read).
    pub trusted_proxies: Option<Vec<String>>,
}

/// `[controller.sns]`: what SNS messages are accepted. Every key has a default.
#[derive(Debug, Deserialize, JsonSchema, Default)]
#[schemars(deny_unknown_fields)]
pub struct RawSns {
    /// A message whose `Timestamp` is older than this is refused. Default `1h`.
    pub max_message_age: Option<String>,
    /// How far in the future a `Timestamp` may be (clock skew). Default `5m`.
    pub clock_skew: Option<String>,
    /// Refuse `SignatureVersion` 1 (SHA1withRSA). Default false.
    pub require_signature_v2: Option<bool>,
    /// A signing certificate that could not be fetched is not fetched again for this long.
    /// Default `5m`.
    pub cert_failure_ttl: Option<String>,
    /// Signing-certificate fetches allowed per minute, all URLs together. Default 10.
    pub cert_fetches_per_minute: Option<i64>,
}

/// `[[pipelines]]`.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct RawPipeline {
    /// Unique name: letters, digits, `-` and `_`.
    pub name: String,
    pub source: RawSource,
    pub artifact: RawArtifact,
    /// Tests, defined once and referenced by name from stages.
    #[serde(default)]
    pub tests: BTreeMap<String, RawTest>,
    #[serde(default)]
    pub notifications: RawNotifications,
    /// Ordered stages: the first is deployed first.
    #[serde(default)]
    pub stages: Vec<RawStage>,
}

/// `[pipelines.source]`: the GitHub repository whose commits are promoted.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct RawSource {
    /// `owner/name`.
    pub repository: String,
    /// Branch whose pushes create releases. Default `main`.
    pub branch: Option<String>,
    /// Workflow file name (e.g. `build.yml`) whose successful run means the image exists.
    pub build_workflow: Option<String>,
}

/// `[pipelines.artifact]`: where the container image is built.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct RawArtifact {
    /// ECR repository name.
    pub repository: String,
    /// Account name (from accounts.toml) the image is built in.
    pub account: String,
    pub region: String,
    /// Image tag for a commit; `{sha}`, `{short_sha}` and `{branch}` are replaced. Default `{sha}`.
    pub tag: Option<String>,
    /// How long to wait for the image to appear after the build. Default `15m`.
    pub wait: Option<String>,
}

/// `[pipelines.notifications]`.
#[derive(Debug, Deserialize, JsonSchema, Default)]
#[schemars(deny_unknown_fields)]
pub struct RawNotifications {
    /// SNS topic ARN for halts and rollbacks.
    pub topic: Option<String>,
    /// SNS topic ARNs the stages' CloudWatch alarms notify; only these reach `/webhooks/sns`.
    #[serde(default)]
    pub alarm_topics: Vec<String>,
}

/// `[pipelines.tests.NAME]`: one test; `kind` decides which other keys apply.
#[derive(Debug, Deserialize, JsonSchema, Default)]
#[schemars(deny_unknown_fields)]
pub struct RawTest {
    /// `command`, `http`, `github-checks` or `github-workflow`.
    pub kind: String,
    /// Longest the test may run. Default `15m`.
    pub timeout: Option<String>,
    /// command: the program and its arguments.
    pub argv: Option<Vec<String>>,
    /// command: extra environment variables.
    pub env: Option<BTreeMap<String, String>>,
    /// command: working directory, relative to stages.toml.
    pub workdir: Option<String>,
    /// command: hand the command the stage account's session (the deploy role tollgate
    /// assumes) as `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`. Default
    /// false.
    pub stage_credentials: Option<bool>,
    /// http: smoke suite file, relative to stages.toml.
    pub suite: Option<String>,
    /// http: stack output holding the base URL. Default `ServiceUrl`.
    pub base_url_output: Option<String>,
    /// github-checks: names of check runs that must succeed on the commit.
    pub checks: Option<Vec<String>>,
    /// github-workflow: workflow file name to dispatch.
    pub workflow: Option<String>,
    /// github-workflow: git ref to run it on. Default the pipeline's branch.
    #[serde(rename = "ref")]
    pub git_ref: Option<String>,
    /// github-workflow: workflow_dispatch inputs.
    pub inputs: Option<BTreeMap<String, String>>,
}

/// `[[pipelines.stages]]`.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct RawStage {
    pub name: String,
    /// Where the stage deploys: a second target is a later wave of the same stage.
    #[serde(default)]
    pub targets: Vec<RawTarget>,
    pub deploy: RawDeploy,
    /// Tests run before the deploy.
    #[serde(default)]
    pub before: Vec<String>,
    /// Tests run after the deploy.
    #[serde(default)]
    pub after: Vec<String>,
    /// How long to watch the alarms after the deploy. Default `0s`.
    pub bake: Option<String>,
    /// CloudWatch alarm names in the stage's account, watched during bake and checked before entry.
    #[serde(default)]
    pub alarms: Vec<String>,
    /// Data points each alarm's metric must have had since the deploy finished before the
    /// bake passes. Default 3 when alarms are set, 0 without alarms.
    pub min_datapoints: Option<u32>,
    /// What an alarm in `INSUFFICIENT_DATA` means to the bake: `wait` (default), `fail`,
    /// `pass` or `roll_back`.
    pub insufficient_data: Option<String>,
    /// How long past the bake time the stage waits for missing data before treating it per
    /// `insufficient_data`. Default `1h`.
    pub bake_max_wait: Option<String>,
    /// How long past the bake time the bake holds so the alarms can report a breach that
    /// began by its end: `auto` (default: each alarm's `(DatapointsToAlarm + 1) × Period +
    /// 60 s`, the longest) or a duration (`0s`: no hold).
    pub alarm_delay: Option<String>,
    /// Replaced by `min_datapoints`; kept only to explain the change.
    #[schemars(skip)]
    pub min_alarm_evaluations: Option<toml::Value>,
    /// `retag` (default: a per-stage tag in the build account's repository) or `copy`.
    pub promote: Option<String>,
    pub approval: Option<RawApproval>,
    pub windows: Option<RawWindows>,
}

/// One deploy target.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct RawTarget {
    /// Account name from accounts.toml.
    pub account: String,
    /// Region. Default: the account's default region.
    pub region: Option<String>,
}

/// `[pipelines.stages.deploy]`: `kind` decides which other keys apply.
#[derive(Debug, Deserialize, JsonSchema, Default)]
#[schemars(deny_unknown_fields)]
pub struct RawDeploy {
    /// `cloudformation` or `codepipeline`.
    pub kind: String,
    /// cloudformation: stack name.
    pub stack: Option<String>,
    /// cloudformation: template file, relative to stages.toml.
    pub template: Option<String>,
    /// cloudformation: parameters.
    pub parameters: Option<BTreeMap<String, String>>,
    /// cloudformation: the parameter that receives `repository@sha256:…`.
    pub image_parameter: Option<String>,
    /// cloudformation: e.g. `CAPABILITY_IAM`.
    pub capabilities: Option<Vec<String>>,
    /// cloudformation: role CloudFormation uses to change the stack.
    pub execution_role: Option<String>,
    /// codepipeline: pipeline name in the stage account.
    pub pipeline: Option<String>,
    /// codepipeline: pipeline variable that receives the image.
    pub variable: Option<String>,
    /// codepipeline: the stage of that pipeline a rollback rolls back with `RollbackStage`
    /// (required; the stage that deploys the image).
    #[schemars(length(min = 1, max = 100), pattern(r"^[A-Za-z0-9.@\-_]+$"))]
    pub rollback_stage: Option<String>,
}

/// `[pipelines.stages.approval]`.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct RawApproval {
    /// SNS topic ARN the approval emails go to.
    pub topic: String,
    #[serde(default)]
    pub approvers: Vec<RawApprover>,
    /// Distinct approvals needed. Default 1.
    pub min_approvals: Option<u32>,
    /// How long the request stays open. Default `24h`.
    pub timeout: Option<String>,
    /// May the commit's author approve their own change? Default false.
    pub allow_author: Option<bool>,
}

/// One approver.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct RawApprover {
    pub name: String,
    pub email: String,
    /// GitHub login, used to recognise the commit's author.
    pub github: Option<String>,
}

/// `[pipelines.stages.windows]`: when the stage may start deploying.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct RawWindows {
    /// IANA time zone, e.g. `Europe/Berlin`.
    pub timezone: String,
    /// Allowed ranges.
    #[serde(default)]
    pub allow: Vec<RawWindow>,
    /// Dates (`YYYY-MM-DD`) on which nothing starts.
    #[serde(default)]
    pub blackouts: Vec<String>,
}

/// One allowed range: on these days, from `start` to `end` (`HH:MM`, local time).
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct RawWindow {
    /// `mon` … `sun`.
    pub days: Vec<String>,
    pub start: String,
    pub end: String,
}

/// `accounts/accounts.toml`.
#[derive(Debug, Deserialize, JsonSchema, Default)]
#[schemars(deny_unknown_fields)]
pub struct RawAccountsFile {
    #[serde(default)]
    pub accounts: BTreeMap<String, RawAccount>,
}

/// `[accounts.NAME]`.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct RawAccount {
    /// 12-digit AWS account id.
    pub id: String,
    /// Role to assume (not for the controller's own account).
    pub role_arn: Option<String>,
    /// Where the ExternalId comes from: `{ env = "VAR" }` or `{ file = "/path" }`.
    #[schemars(with = "Option<RawSecretTable>")]
    pub external_id: Option<RawSecretRef>,
    /// Default region of the account.
    pub region: String,
    /// True for the account the controller runs in: no AssumeRole.
    #[serde(default)]
    pub controller: bool,
    /// Session length of assumed roles, 15m to 12h. Default `1h`.
    pub session_duration: Option<String>,
    /// SNS topic in this account that CloudFormation publishes the events of the stacks
    /// tollgate deploys here to (`NotificationARNs`), subscribed to `/webhooks/sns`: a
    /// stack's completion then wakes its waiter at once. Stacks in other regions than the
    /// topic's are deployed without it.
    pub stack_events_topic: Option<String>,
}

/// A reference to a secret, never the secret itself. Anything but a table is a secret written
/// literally: its text is dropped while parsing, so no later message can quote it.
#[derive(Debug)]
pub enum RawSecretRef {
    Ref(RawSecretTable),
    Literal(LiteralSecret),
}

/// The key under which the `toml` crate hands a date-time to serde.
const TOML_DATETIME: &str = "$__toml_private_datetime";

impl<'de> Deserialize<'de> for RawSecretRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(SecretRefVisitor)
    }
}

struct SecretRefVisitor;

impl<'de> Visitor<'de> for SecretRefVisitor {
    type Value = RawSecretRef;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("`{ env = \"VAR\" }` or `{ file = \"/path\" }`")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawSecretRef, A::Error> {
        let mut table = RawSecretTable::default();
        let mut literal = false;
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "env" => table.env = Some(map.next_value()?),
                "file" => table.file = Some(map.next_value()?),
                TOML_DATETIME => {
                    map.next_value::<LiteralSecret>()?;
                    literal = true;
                }
                // Reported as an unknown key by the caller's `serde_ignored`.
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(if literal {
            RawSecretRef::Literal(LiteralSecret)
        } else {
            RawSecretRef::Ref(table)
        })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<RawSecretRef, A::Error> {
        Discard.visit_seq(seq)?;
        Ok(RawSecretRef::Literal(LiteralSecret))
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<RawSecretRef, E> {
        Ok(RawSecretRef::Literal(LiteralSecret))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<RawSecretRef, E> {
        Ok(RawSecretRef::Literal(LiteralSecret))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<RawSecretRef, E> {
        Ok(RawSecretRef::Literal(LiteralSecret))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<RawSecretRef, E> {
        Ok(RawSecretRef::Literal(LiteralSecret))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<RawSecretRef, E> {
        Ok(RawSecretRef::Literal(LiteralSecret))
    }
}

/// A secret written literally: rejected by validation, and its text is dropped at once.
#[derive(Debug)]
pub struct LiteralSecret;

impl<'de> Deserialize<'de> for LiteralSecret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(Discard).map(|()| LiteralSecret)
    }
}

/// Accepts any value and keeps nothing of it (unlike `IgnoredAny`, unseen by `serde_ignored`).
struct Discard;

impl<'de> Visitor<'de> for Discard {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while map.next_entry::<LiteralSecret, LiteralSecret>()?.is_some() {}
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element::<LiteralSecret>()?.is_some() {}
        Ok(())
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
}

/// `{ env = "VAR" }` or `{ file = "/path" }`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct RawSecretTable {
    /// Environment variable holding the ExternalId.
    pub env: Option<String>,
    /// File holding the ExternalId.
    pub file: Option<String>,
}

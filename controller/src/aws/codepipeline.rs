//! CodePipeline: a [`Deployer`] that starts the stage account's own pipeline with the image
//! as a pipeline variable, waits for it, and rolls its deploy stage back with `RollbackStage`.
//!
//! Owns `StartPipelineExecution` (idempotent through `clientRequestToken`), the wait on
//! `GetPipelineExecution` with backoff, the failure reason (the first failed action's summary,
//! from `ListActionExecutions`), and finding the execution to roll back to.
//!
//! # Guarantees
//! - The same idempotency key always sends the same `clientRequestToken`, so a deploy repeated
//!   after a crash re-attaches to the execution it started instead of starting another.
//! - A rollback whose `RollbackStage` already ran (the newest execution is a rollback to the
//!   same target) waits on that execution instead of rolling back twice.
//! - Rollback only ever targets a succeeded execution that ran the known-good deploy's recorded
//!   variables (or, for a deploy recorded before they were kept, deployed the requested image);
//!   when there is none it fails rather than guess.
//! - "Deployed" means the execution, read back (`GetPipelineExecution` variables), ran with the
//!   requested variables; otherwise `PortError::Drift`, after a deploy and after a rollback.
//! - A deploy first checks (`GetPipelineState`) that the pipeline has the configured
//!   `rollback_stage`, and fails without starting the pipeline when it has not: a wrong stage
//!   name is found at the first deploy, not by the `RollbackStage` of an incident.
//! - Every wait is bounded by [`Poll::timeout`].
//!
//! # Caveats
//! - The pipeline must declare the variable named in `stages.toml` and use it in its deploy
//!   stage; the stage rolled back is the deploy's `rollback_stage` from `stages.toml`.
//! - Only the last [`MAX_EXECUTIONS`] executions are searched for a rollback target.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_codepipeline::Client;
use aws_sdk_codepipeline::types::{
    ActionExecutionDetail, ActionExecutionFilter, ActionExecutionStatus, ExecutionType,
    PipelineExecution, PipelineExecutionStatus, PipelineExecutionSummary, PipelineVariable,
};
use sha2::{Digest, Sha256};

use super::errors::{context, sdk};
use super::observe::CallMetrics;
use super::retry::{Limiter, PollSettings};
use super::sts::Credentials;
use crate::config::Deploy;
use crate::domain::AppliedSpec;
use crate::engine::ports::{Applied, DeployRequest, DeployResult, Deployer, PortError, PortResult};

/// How many recent executions are searched for a rollback target.
pub const MAX_EXECUTIONS: usize = 100;
/// How many succeeded candidates are read (one `GetPipelineExecution` each) for their variables.
const MAX_CANDIDATES: usize = 25;
/// Bounds the action-execution pages read for a failure reason or output variables.
const MAX_ACTION_PAGES: usize = 5;

/// How an execution is waited for: a look at once, the next after `first`, then each wait the
/// next step of the 1-2-5 series up to `max` ([`PollSettings`]), giving up after `timeout`.
/// By default 0.1 s, 0.2 s, 0.5 s, 1 s, 2 s, 5 s, 10 s, 20 s, then every 30 s: an execution
/// that is already over is seen at once, a 5-minute one within 30 s of ending in about 18
/// looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Poll {
    pub first: Duration,
    pub max: Duration,
    pub timeout: Duration,
}

impl Default for Poll {
    fn default() -> Self {
        Poll {
            first: Duration::from_millis(100),
            max: Duration::from_secs(30),
            timeout: Duration::from_secs(60 * 60),
        }
    }
}

impl Poll {
    /// The same schedule in the controller's one polling utility.
    fn settings(&self) -> PollSettings {
        PollSettings {
            initial: self.first,
            max: self.max,
            timeout: self.timeout,
        }
    }
}

/// Deploys through a CodePipeline in the stage account; share one per controller.
pub struct CodePipelineDeployer {
    creds: Arc<Credentials>,
    limiter: Arc<Limiter>,
    poll: Poll,
    endpoint_url: Option<String>,
}

/// One pipeline in one account: what every call needs.
struct Target<'a> {
    client: Client,
    account: &'a str,
    pipeline: &'a str,
    variable: &'a str,
    /// The pipeline stage `RollbackStage` rolls back.
    rollback_stage: &'a str,
}

impl CodePipelineDeployer {
    /// A deployer for every CodePipeline stage; each request names its pipeline, variable and
    /// rollback stage.
    pub fn new(creds: Arc<Credentials>, limiter: Arc<Limiter>, poll: Poll) -> CodePipelineDeployer {
        CodePipelineDeployer {
            creds,
            limiter,
            poll,
            endpoint_url: None,
        }
    }

    /// Sends CodePipeline calls here instead of the regional endpoint (a VPC endpoint, or a
    /// loopback stub in tests); credentials still come from [`Credentials`]. Without it, the
    /// SDK's own settings apply (`AWS_ENDPOINT_URL_CODEPIPELINE`, then `AWS_ENDPOINT_URL`).
    pub fn with_endpoint_url(mut self, url: impl Into<String>) -> CodePipelineDeployer {
        self.endpoint_url = Some(url.into());
        self
    }

    async fn target<'a>(&self, req: &'a DeployRequest) -> PortResult<Target<'a>> {
        let Deploy::CodePipeline {
            pipeline,
            variable,
            rollback_stage,
        } = &req.deploy
        else {
            return Err(PortError::Invalid(format!(
                "stage `{}` does not deploy through CodePipeline",
                req.stage
            )));
        };
        let config = self
            .creds
            .config_for(&req.account, &req.target.region, &req.session_name)
            .await?;
        let mut builder =
            aws_sdk_codepipeline::config::Builder::from(&config).interceptor(CallMetrics);
        if let Some(url) = &self.endpoint_url {
            builder = builder.endpoint_url(url);
        }
        let client = Client::from_conf(builder.build());
        Ok(Target {
            client,
            account: &req.account.id,
            pipeline,
            variable,
            rollback_stage,
        })
    }

    /// `Invalid` unless the pipeline has a stage named [`Target::rollback_stage`].
    async fn check_rollback_stage(&self, t: &Target<'_>) -> PortResult<()> {
        let out = self
            .limiter
            .call(t.account, "GetPipelineState", || {
                sdk(t.client.get_pipeline_state().name(t.pipeline).send())
            })
            .await?;
        let stages: Vec<&str> = out
            .stage_states()
            .iter()
            .filter_map(|s| s.stage_name())
            .collect();
        if stages.contains(&t.rollback_stage) {
            return Ok(());
        }
        Err(PortError::Invalid(format!(
            "pipeline `{}` has no stage `{}` to roll back (its stages: {}); set `rollback_stage` \
             in stages.toml to the stage that deploys the image",
            t.pipeline,
            t.rollback_stage,
            stages.join(", ")
        )))
    }

    async fn start(&self, t: &Target<'_>, req: &DeployRequest) -> PortResult<String> {
        let variable = PipelineVariable::builder()
            .name(t.variable)
            .value(&req.image_uri)
            .build();
        let variable = variable
            .map_err(|_| PortError::Invalid("the pipeline variable is malformed".into()))?;
        let token = request_token(&req.key);
        let out = self
            .limiter
            .call(t.account, "StartPipelineExecution", || {
                let request = t
                    .client
                    .start_pipeline_execution()
                    .name(t.pipeline)
                    .variables(variable.clone());
                sdk(request.client_request_token(&token).send())
            })
            .await?;
        let id = out.pipeline_execution_id().unwrap_or_default().to_string();
        tracing::info!(pipeline = t.pipeline, execution = %id, key = %req.key, "pipeline execution started");
        Ok(id)
    }

    /// Waits until execution `id` ends; its outcome, with the failure reason when it failed.
    /// A succeeded execution whose variables, read back, are not `expected` is `Drift`.
    async fn wait(
        &self,
        t: &Target<'_>,
        id: &str,
        expected: &BTreeMap<String, String>,
    ) -> PortResult<DeployResult> {
        let last = std::sync::Mutex::new(PipelineExecutionStatus::InProgress);
        let ended = self
            .poll
            .settings()
            .poll(|| async {
                let execution = self.execution(t, id).await?;
                let status = execution.status().cloned();
                let status = status.unwrap_or(PipelineExecutionStatus::InProgress);
                let running = matches!(
                    status,
                    PipelineExecutionStatus::InProgress | PipelineExecutionStatus::Stopping
                );
                *last.lock().unwrap_or_else(|e| e.into_inner()) = status;
                Ok((!running).then_some(execution))
            })
            .await?;
        let Some(execution) = ended else {
            let status = last.into_inner().unwrap_or_else(|e| e.into_inner());
            return Err(PortError::Failed(format!(
                "pipeline `{}` execution {id} is still {status} after {:?}",
                t.pipeline, self.poll.timeout
            )));
        };
        match execution.status() {
            Some(PipelineExecutionStatus::Succeeded) => {
                read_back(t.pipeline, &execution, expected)?;
                let mut result = self.succeeded(t, id).await;
                result.applied = Some(Applied {
                    spec: AppliedSpec::CodePipeline {
                        pipeline: t.pipeline.to_string(),
                        variables: expected.clone(),
                    },
                    template_body: None,
                });
                Ok(result)
            }
            _ => Err(PortError::Failed(self.failure(t, &execution).await)),
        }
    }

    async fn execution(&self, t: &Target<'_>, id: &str) -> PortResult<PipelineExecution> {
        let out = self
            .limiter
            .call(t.account, "GetPipelineExecution", || {
                let request = t.client.get_pipeline_execution().pipeline_name(t.pipeline);
                sdk(request.pipeline_execution_id(id).send())
            })
            .await?;
        out.pipeline_execution.ok_or_else(|| {
            PortError::Failed(format!("GetPipelineExecution returned no execution {id}"))
        })
    }

    /// The result of a succeeded execution: its id and its actions' output variables.
    async fn succeeded(&self, t: &Target<'_>, id: &str) -> DeployResult {
        let mut outputs = BTreeMap::new();
        let actions = self.actions(t, id).await.unwrap_or_default();
        for a in actions
            .iter()
            .filter(|a| a.status() == Some(&ActionExecutionStatus::Succeeded))
        {
            let vars = a
                .output()
                .and_then(|o| o.output_variables())
                .into_iter()
                .flatten();
            outputs.extend(vars.map(|(k, v)| (k.clone(), v.clone())));
        }
        outputs.insert("pipeline_execution_id".to_string(), id.to_string());
        let summary = format!("pipeline `{}` execution {id} succeeded", t.pipeline);
        DeployResult {
            outputs,
            summary,
            applied: None,
            timing: None,
        }
    }

    /// Why an execution ended without success, for people: its status, then the first failed
    /// action's summary (or the execution's own status summary).
    async fn failure(&self, t: &Target<'_>, execution: &PipelineExecution) -> String {
        let id = execution.pipeline_execution_id().unwrap_or_default();
        let status = execution.status().map_or("ended", |s| s.as_str());
        let head = format!("pipeline `{}` execution {id} {status}", t.pipeline);
        let actions = self.actions(t, id).await.unwrap_or_default();
        let detail =
            first_failure(&actions).or_else(|| execution.status_summary().map(str::to_string));
        match detail {
            Some(detail) => format!("{head}: {detail}"),
            None => head,
        }
    }

    /// The action executions of execution `id` (bounded: [`MAX_ACTION_PAGES`] pages).
    async fn actions(&self, t: &Target<'_>, id: &str) -> PortResult<Vec<ActionExecutionDetail>> {
        let filter = ActionExecutionFilter::builder()
            .pipeline_execution_id(id)
            .build();
        let mut all = Vec::new();
        let mut token: Option<String> = None;
        for _ in 0..MAX_ACTION_PAGES {
            let page = self
                .limiter
                .call(t.account, "ListActionExecutions", || {
                    let request = t
                        .client
                        .list_action_executions()
                        .pipeline_name(t.pipeline)
                        .filter(filter.clone());
                    sdk(request.set_next_token(token.clone()).send())
                })
                .await?;
            all.extend(page.action_execution_details().iter().cloned());
            token = page
                .next_token()
                .filter(|t| !t.is_empty())
                .map(str::to_string);
            if token.is_none() {
                break;
            }
        }
        Ok(all)
    }

    /// The pipeline's recent executions, newest first (bounded: [`MAX_EXECUTIONS`]).
    async fn history(&self, t: &Target<'_>) -> PortResult<Vec<PipelineExecutionSummary>> {
        let mut all = Vec::new();
        let mut token: Option<String> = None;
        while all.len() < MAX_EXECUTIONS {
            let page = self
                .limiter
                .call(t.account, "ListPipelineExecutions", || {
                    let request = t
                        .client
                        .list_pipeline_executions()
                        .pipeline_name(t.pipeline)
                        .max_results(100);
                    sdk(request.set_next_token(token.clone()).send())
                })
                .await?;
            all.extend(page.pipeline_execution_summaries().iter().cloned());
            token = page
                .next_token()
                .filter(|t| !t.is_empty())
                .map(str::to_string);
            if token.is_none() || page.pipeline_execution_summaries().is_empty() {
                break;
            }
        }
        all.truncate(MAX_EXECUTIONS);
        Ok(all)
    }

    /// The newest succeeded (non-rollback) execution that ran with the `recorded` variables
    /// (the known-good deploy's), or else that deployed `image`; with the variables it ran.
    async fn rollback_target(
        &self,
        t: &Target<'_>,
        history: &[PipelineExecutionSummary],
        image: &str,
        recorded: Option<&BTreeMap<String, String>>,
    ) -> PortResult<(String, BTreeMap<String, String>)> {
        let candidates = history
            .iter()
            .filter(|e| e.status() == Some(&PipelineExecutionStatus::Succeeded))
            .filter(|e| e.execution_type() != Some(&ExecutionType::Rollback))
            .filter_map(|e| e.pipeline_execution_id())
            .take(MAX_CANDIDATES);
        for id in candidates {
            let execution = self.execution(t, id).await?;
            let found = match recorded {
                Some(vars) => ran_with(&execution, vars),
                None => deployed(&execution, t.variable, image),
            };
            if found {
                let vars = variables(&execution);
                let wanted = |k: &String| recorded.map_or(k == t.variable, |r| r.contains_key(k));
                let kept = vars.into_iter().filter(|(k, _)| wanted(k)).collect();
                return Ok((id.to_string(), kept));
            }
        }
        Err(PortError::NotFound(format!(
            "no succeeded execution of pipeline `{}` among the last {} deployed {image}; nothing to roll back to",
            t.pipeline,
            history.len()
        )))
    }

    async fn rollback_stage(&self, t: &Target<'_>, to: &str) -> PortResult<String> {
        let out = self
            .limiter
            .call(t.account, "RollbackStage", || {
                let request = t
                    .client
                    .rollback_stage()
                    .pipeline_name(t.pipeline)
                    .stage_name(t.rollback_stage);
                sdk(request.target_pipeline_execution_id(to).send())
            })
            .await?;
        let id = out.pipeline_execution_id().to_string();
        tracing::info!(pipeline = t.pipeline, stage = t.rollback_stage, to, execution = %id, "stage rollback started");
        Ok(id)
    }
}

#[async_trait]
impl Deployer for CodePipelineDeployer {
    async fn deploy(&self, req: &DeployRequest) -> PortResult<DeployResult> {
        let what = format!(
            "deploying {} to {} ({})",
            req.image_uri, req.account.name, req.target.region
        );
        let t = self.target(req).await.map_err(|e| context(e, &what))?;
        self.check_rollback_stage(&t)
            .await
            .map_err(|e| context(e, &what))?;
        let id = self.start(&t, req).await.map_err(|e| context(e, &what))?;
        let expected = BTreeMap::from([(t.variable.to_string(), req.image_uri.clone())]);
        self.wait(&t, &id, &expected).await
    }

    async fn rollback(&self, req: &DeployRequest) -> PortResult<DeployResult> {
        let what = format!("rolling {} back to {}", req.account.name, req.image_uri);
        let t = self.target(req).await.map_err(|e| context(e, &what))?;
        let history = self.history(&t).await.map_err(|e| context(e, &what))?;
        let recorded = match &req.restore {
            Some(Applied {
                spec: AppliedSpec::CodePipeline { variables, .. },
                ..
            }) => Some(variables),
            _ => None,
        };
        let (to, expected) = self
            .rollback_target(&t, &history, &req.image_uri, recorded)
            .await
            .map_err(|e| context(e, &what))?;
        let id = match rollback_in_flight(&history, &to) {
            Some(id) => id,
            None => self
                .rollback_stage(&t, &to)
                .await
                .map_err(|e| context(e, &what))?,
        };
        let mut result = self.wait(&t, &id, &expected).await?;
        result.summary = format!(
            "stage `{}` of pipeline `{}` rolled back to execution {to}: {}",
            t.rollback_stage, t.pipeline, result.summary
        );
        Ok(result)
    }
}

/// A `clientRequestToken` (`[a-zA-Z0-9-]{1,128}`) that is the same for the same key.
fn request_token(key: &str) -> String {
    let digest = hex::encode(Sha256::digest(key.as_bytes()));
    format!("tollgate-{}", &digest[..48])
}

/// The newest execution, when it is a rollback to `target` that has not failed: a
/// `RollbackStage` that already ran for this rollback.
fn rollback_in_flight(history: &[PipelineExecutionSummary], target: &str) -> Option<String> {
    let newest = history.first()?;
    let to = newest
        .rollback_metadata()
        .and_then(|m| m.rollback_target_pipeline_execution_id());
    let live = matches!(
        newest.status(),
        Some(
            PipelineExecutionStatus::InProgress
                | PipelineExecutionStatus::Stopping
                | PipelineExecutionStatus::Succeeded
        )
    );
    let rollback = newest.execution_type() == Some(&ExecutionType::Rollback);
    (rollback && live && to == Some(target)).then(|| {
        newest
            .pipeline_execution_id()
            .unwrap_or_default()
            .to_string()
    })
}

/// Whether `execution` ran with `variable` set to `image` (or another name for its digest).
fn deployed(execution: &PipelineExecution, variable: &str, image: &str) -> bool {
    let digest = |uri: &str| uri.rsplit_once('@').map(|(_, d)| d.to_string());
    execution.variables().iter().any(|v| {
        let value = v.resolved_value().unwrap_or_default();
        v.name() == Some(variable)
            && (value == image || (digest(value).is_some() && digest(value) == digest(image)))
    })
}

/// The variables an execution ran with, by name.
fn variables(execution: &PipelineExecution) -> BTreeMap<String, String> {
    let pair = |v: &aws_sdk_codepipeline::types::ResolvedPipelineVariable| {
        Some((v.name()?.to_string(), v.resolved_value()?.to_string()))
    };
    execution.variables().iter().filter_map(pair).collect()
}

/// Whether `execution` ran with every one of `vars` exactly.
fn ran_with(execution: &PipelineExecution, vars: &BTreeMap<String, String>) -> bool {
    let ran = variables(execution);
    vars.iter().all(|(k, v)| ran.get(k) == Some(v))
}

/// `Drift` unless the execution, read back, ran with the `expected` variables.
fn read_back(
    pipeline: &str,
    execution: &PipelineExecution,
    expected: &BTreeMap<String, String>,
) -> PortResult<()> {
    if ran_with(execution, expected) {
        return Ok(());
    }
    let ran = variables(execution);
    let show = |m: &BTreeMap<String, String>, keys: &mut dyn Iterator<Item = &String>| {
        keys.map(|k| format!("{k}={}", m.get(k).map_or("(unset)", String::as_str)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let found = show(&ran, &mut expected.keys());
    let expected = show(expected, &mut expected.keys());
    tracing::error!(pipeline, %expected, %found, "drift: the execution did not run with the requested variables");
    Err(PortError::Drift { expected, found })
}

/// `stage/action: summary` of the earliest failed action, if any failed.
fn first_failure(actions: &[ActionExecutionDetail]) -> Option<String> {
    let failed = actions
        .iter()
        .filter(|a| a.status() == Some(&ActionExecutionStatus::Failed))
        .min_by_key(|a| a.start_time().map(|t| (t.secs(), t.subsec_nanos())))?;
    let result = failed.output().and_then(|o| o.execution_result());
    let summary = result
        .and_then(|r| r.external_execution_summary())
        .filter(|s| !s.is_empty());
    let error = result
        .and_then(|r| r.error_details())
        .and_then(|e| e.message());
    let detail = summary.or(error).unwrap_or("failed without a summary");
    let stage = failed.stage_name().unwrap_or_default();
    let action = failed.action_name().unwrap_or_default();
    Some(format!("{stage}/{action}: {detail}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_codepipeline::types::{
        ActionExecutionOutput, ActionExecutionResult, ErrorDetails, PipelineRollbackMetadata,
        ResolvedPipelineVariable,
    };
    use aws_smithy_types::DateTime;

    #[test]
    fn request_tokens_are_stable_valid_and_distinct() {
        let a = request_token("backend/r12/prod/deploy-0/1");
        assert_eq!(a, request_token("backend/r12/prod/deploy-0/1"));
        assert_ne!(a, request_token("backend/r12/prod/deploy-0/2"));
        assert!(a.len() <= 128 && a.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
    }

    fn action(
        name: &str,
        status: ActionExecutionStatus,
        at: i64,
        summary: Option<&str>,
        error: Option<&str>,
    ) -> ActionExecutionDetail {
        let mut result = ActionExecutionResult::builder()
            .set_external_execution_summary(summary.map(String::from));
        if let Some(message) = error {
            result = result.error_details(ErrorDetails::builder().message(message).build());
        }
        let output = ActionExecutionOutput::builder()
            .execution_result(result.build())
            .build();
        ActionExecutionDetail::builder()
            .stage_name("Deploy")
            .action_name(name)
            .status(status)
            .start_time(DateTime::from_secs(at))
            .output(output)
            .build()
    }

    #[test]
    fn the_earliest_failed_action_explains_the_failure() {
        let actions = [
            action(
                "Later",
                ActionExecutionStatus::Failed,
                20,
                Some("later"),
                None,
            ),
            action(
                "Source",
                ActionExecutionStatus::Succeeded,
                1,
                Some("ok"),
                None,
            ),
            action(
                "Ecs",
                ActionExecutionStatus::Failed,
                10,
                None,
                Some("task failed health checks"),
            ),
        ];
        assert_eq!(
            first_failure(&actions).as_deref(),
            Some("Deploy/Ecs: task failed health checks")
        );
        assert_eq!(first_failure(&actions[1..2]), None);
    }

    fn summary(
        id: &str,
        status: PipelineExecutionStatus,
        rollback_to: Option<&str>,
    ) -> PipelineExecutionSummary {
        let kind = if rollback_to.is_some() {
            ExecutionType::Rollback
        } else {
            ExecutionType::Standard
        };
        let meta = rollback_to.map(|t| {
            PipelineRollbackMetadata::builder()
                .rollback_target_pipeline_execution_id(t)
                .build()
        });
        PipelineExecutionSummary::builder()
            .pipeline_execution_id(id)
            .status(status)
            .execution_type(kind)
            .set_rollback_metadata(meta)
            .build()
    }

    #[test]
    fn a_rollback_already_started_to_the_same_target_is_reused() {
        let history = [
            summary("r1", PipelineExecutionStatus::InProgress, Some("e1")),
            summary("e2", PipelineExecutionStatus::Failed, None),
        ];
        assert_eq!(rollback_in_flight(&history, "e1").as_deref(), Some("r1"));
        assert_eq!(rollback_in_flight(&history, "e0"), None);
        let failed = [summary("r1", PipelineExecutionStatus::Failed, Some("e1"))];
        assert_eq!(rollback_in_flight(&failed, "e1"), None);
        assert_eq!(rollback_in_flight(&history[1..], "e1"), None);
    }

    #[test]
    fn an_execution_that_ran_other_variables_is_drift() {
        let var = |n: &str, v: &str| {
            ResolvedPipelineVariable::builder()
                .name(n)
                .resolved_value(v)
                .build()
        };
        let execution = PipelineExecution::builder()
            .variables(var("ImageUri", "1.dkr.ecr/app@sha256:aa"))
            .variables(var("Tier", "one"))
            .build();
        let want = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let ours = want(&[("ImageUri", "1.dkr.ecr/app@sha256:aa")]);
        assert_eq!(read_back("p", &execution, &ours), Ok(()));
        let theirs = want(&[("ImageUri", "1.dkr.ecr/app@sha256:bb"), ("Tier", "one")]);
        assert_eq!(
            read_back("p", &execution, &theirs),
            Err(PortError::Drift {
                expected: "ImageUri=1.dkr.ecr/app@sha256:bb, Tier=one".into(),
                found: "ImageUri=1.dkr.ecr/app@sha256:aa, Tier=one".into(),
            })
        );
        let unset = want(&[("Other", "x")]);
        assert!(matches!(
            read_back("p", &execution, &unset),
            Err(PortError::Drift { found, .. }) if found == "Other=(unset)"
        ));
    }

    #[test]
    fn an_execution_deployed_an_image_by_uri_or_digest() {
        let var = |v: &str| {
            ResolvedPipelineVariable::builder()
                .name("ImageUri")
                .resolved_value(v)
                .build()
        };
        let execution = PipelineExecution::builder()
            .variables(var("1.dkr.ecr/app@sha256:aa"))
            .build();
        assert!(deployed(&execution, "ImageUri", "1.dkr.ecr/app@sha256:aa"));
        assert!(deployed(&execution, "ImageUri", "2.dkr.ecr/app@sha256:aa"));
        assert!(!deployed(&execution, "ImageUri", "1.dkr.ecr/app@sha256:bb"));
        assert!(!deployed(&execution, "Other", "1.dkr.ecr/app@sha256:aa"));
    }
}

//! [`StageTestRunner`]: the engine's [`TestRunner`], dispatching on a test's kind.
//!
//! Owns choosing how a test runs and what it is given: the stage's variables, the base URL of
//! an `http` test, the ref and the substituted inputs of a `github-workflow` test. Every
//! summary starts with the test's name and says whether it passed.
//!
//! # Guarantees
//! - Each kind is bounded by the test's `timeout` (the GitHub kinds through [`GithubTests`]).
//! - A test that cannot run is a failed result saying why; `Err` is returned only for what
//!   [`GithubTests`] reports as an error (so the engine can tell a temporary failure apart).
//!
//! - A `command` test with `stage_credentials` gets the stage account's session in its
//!   environment only; the keys never reach a summary, the output tail or the logs.
//!
//! # Must never
//! - send a workflow input with an unresolved `${NAME}`: the test fails before dispatching.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_credential_types::provider::ProvideCredentials;
use smoke_tests::{Report, RunOptions, Suite};

use super::command::{self, CommandTest};
use super::{GithubTests, failed, human, output_tail, passed, substitute, test_variables};
use crate::aws::sts::Credentials;
use crate::config::{TestDef, TestKind};
use crate::engine::SharedConfig;
use crate::engine::ports::{PortResult, TestContext, TestResult, TestRunner};

/// Runs stage tests for real: local commands, smoke suites and, given a [`GithubTests`], the
/// GitHub-backed kinds.
#[derive(Clone)]
pub struct StageTestRunner {
    github: Option<Arc<dyn GithubTests>>,
    aws: Option<StageAws>,
}

/// Where a `command` test with `stage_credentials` gets its AWS session.
#[derive(Clone)]
struct StageAws {
    creds: Arc<Credentials>,
    config: SharedConfig,
}

impl StageTestRunner {
    /// Without `github`, `github-checks` and `github-workflow` tests fail, saying that no
    /// GitHub token is configured.
    pub fn new(github: Option<Arc<dyn GithubTests>>) -> Self {
        Self { github, aws: None }
    }

    /// Lets `command` tests with `stage_credentials = true` have the stage account's
    /// session (the role tollgate assumes there), found by account id in `config`.
    pub fn with_stage_credentials(mut self, creds: Arc<Credentials>, config: SharedConfig) -> Self {
        self.aws = Some(StageAws { creds, config });
        self
    }

    /// The stage account's session as environment variables for a command that may run for
    /// `lasting`: the command cannot renew it, so it is one that lasts that long when the
    /// account's sessions can.
    async fn stage_session(
        &self,
        ctx: &TestContext,
        lasting: Duration,
    ) -> Result<BTreeMap<String, String>, String> {
        let aws = self.aws.as_ref().ok_or(
            "`stage_credentials` needs the controller's AWS credentials, which this runner \
             was not given",
        )?;
        let config = aws.config.read().unwrap_or_else(|e| e.into_inner()).clone();
        let account = config
            .accounts
            .values()
            .find(|a| a.id == ctx.account_id)
            .ok_or_else(|| format!("account {} is not configured", ctx.account_id))?;
        let session = format!(
            "tollgate-{}-{}-{}-test",
            ctx.pipeline, ctx.release, ctx.stage
        );
        let c = match aws
            .creds
            .session_lasting(account, &session, lasting)
            .await
            .map_err(|e| e.to_string())?
        {
            Some(c) => c,
            None => {
                let sdk = aws
                    .creds
                    .config_for(account, &ctx.region, &session)
                    .await
                    .map_err(|e| e.to_string())?;
                let provider = sdk
                    .credentials_provider()
                    .ok_or("no credentials provider for the stage account")?;
                provider
                    .provide_credentials()
                    .await
                    .map_err(|e| format!("cannot get the stage account's session: {e}"))?
            }
        };
        let mut env = BTreeMap::from([
            ("AWS_ACCESS_KEY_ID".to_owned(), c.access_key_id().to_owned()),
            (
                "AWS_SECRET_ACCESS_KEY".to_owned(),
                c.secret_access_key().to_owned(),
            ),
            ("AWS_REGION".to_owned(), ctx.region.clone()),
            ("AWS_DEFAULT_REGION".to_owned(), ctx.region.clone()),
        ]);
        if let Some(token) = c.session_token() {
            env.insert("AWS_SESSION_TOKEN".to_owned(), token.to_owned());
        }
        Ok(env)
    }
}

#[async_trait]
impl TestRunner for StageTestRunner {
    async fn run(&self, test: &TestDef, ctx: &TestContext) -> PortResult<TestResult> {
        let vars = test_variables(ctx);
        match &test.kind {
            TestKind::Command {
                argv,
                env,
                workdir,
                stage_credentials,
            } => {
                let mut vars = vars;
                if *stage_credentials {
                    // Its whole timeout, and a minute to stop in.
                    let lasting = test.timeout + Duration::from_secs(60);
                    match self.stage_session(ctx, lasting).await {
                        Ok(session) => vars.extend(session),
                        Err(why) => {
                            let summary = format!("test `{}` could not start: {why}", test.name);
                            return Ok(failed(summary, String::new()));
                        }
                    }
                }
                let spec = CommandTest {
                    name: &test.name,
                    argv,
                    env,
                    workdir,
                    timeout: test.timeout,
                };
                Ok(command::run(spec, &vars).await)
            }
            TestKind::Http {
                suite,
                base_url_output,
            } => Ok(http(test, suite, base_url_output, ctx, vars).await),
            TestKind::GithubChecks { checks } => self.checks(test, checks, ctx).await,
            TestKind::GithubWorkflow {
                workflow,
                git_ref,
                inputs,
            } => {
                let git_ref = git_ref.as_deref().unwrap_or(&ctx.branch);
                self.workflow(test, workflow, git_ref, inputs, ctx, &vars)
                    .await
            }
        }
    }
}

impl StageTestRunner {
    fn github(&self, test: &TestDef) -> Result<&dyn GithubTests, TestResult> {
        self.github.as_deref().ok_or_else(|| {
            let why = format!(
                "no GitHub token configured, so a `{}` test cannot run",
                test.kind.label()
            );
            failed(format!("test `{}` failed: {why}", test.name), String::new())
        })
    }

    async fn checks(
        &self,
        test: &TestDef,
        names: &[String],
        ctx: &TestContext,
    ) -> PortResult<TestResult> {
        let github = match self.github(test) {
            Ok(github) => github,
            Err(result) => return Ok(result),
        };
        let result = github
            .checks_gate(&ctx.repository, &ctx.sha, names, test.timeout)
            .await?;
        Ok(named(test, result))
    }

    async fn workflow(
        &self,
        test: &TestDef,
        workflow: &str,
        git_ref: &str,
        inputs: &BTreeMap<String, String>,
        ctx: &TestContext,
        vars: &BTreeMap<String, String>,
    ) -> PortResult<TestResult> {
        let github = match self.github(test) {
            Ok(github) => github,
            Err(result) => return Ok(result),
        };
        if git_ref.is_empty() {
            let why = format!("no ref to run `{workflow}` on (the release has no branch)");
            return Ok(failed(
                format!("test `{}` failed: {why}", test.name),
                String::new(),
            ));
        }
        let inputs = match substitute_inputs(inputs, vars) {
            Ok(inputs) => inputs,
            Err(why) => {
                return Ok(failed(
                    format!("test `{}` failed: {why}", test.name),
                    String::new(),
                ));
            }
        };
        let result = github
            .run_workflow(&ctx.repository, workflow, git_ref, &inputs, test.timeout)
            .await?;
        Ok(named(test, result))
    }
}

/// Every input with its `${NAME}`s replaced; an error names the input and the variable.
fn substitute_inputs(
    inputs: &BTreeMap<String, String>,
    vars: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, String> {
    inputs
        .iter()
        .map(|(key, value)| {
            let value = substitute(value, vars).map_err(|why| format!("input `{key}`: {why}"))?;
            Ok((key.clone(), value))
        })
        .collect()
}

/// Puts the test's name in front of a result from elsewhere and bounds its output.
fn named(test: &TestDef, result: TestResult) -> TestResult {
    let verdict = if result.passed { "passed" } else { "failed" };
    TestResult {
        passed: result.passed,
        summary: format!("test `{}` {verdict}: {}", test.name, result.summary),
        output_tail: output_tail(&result.output_tail),
    }
}

/// Runs a smoke suite against the URL in the deploy output `output`, within the test's timeout.
async fn http(
    test: &TestDef,
    suite: &Path,
    output: &str,
    ctx: &TestContext,
    vars: BTreeMap<String, String>,
) -> TestResult {
    let name = &test.name;
    let Some(base_url) = ctx.outputs.get(output) else {
        return failed(missing_output(name, output, &ctx.outputs), String::new());
    };
    let suite = match Suite::load(suite) {
        Ok(suite) => suite,
        Err(err) => return unloadable(name, &err.to_string()),
    };
    let options = RunOptions {
        base_url: base_url.clone(),
        env: vars,
    };
    match tokio::time::timeout(test.timeout, smoke_tests::run(&suite, &options)).await {
        Ok(report) => judge(name, &report),
        Err(_) => {
            let why = format!(
                "smoke suite {:?} timed out after {}",
                suite.name,
                human(test.timeout)
            );
            failed(format!("test `{name}` failed: {why}"), String::new())
        }
    }
}

fn missing_output(name: &str, output: &str, outputs: &BTreeMap<String, String>) -> String {
    let present = if outputs.is_empty() {
        "none".to_string()
    } else {
        outputs.keys().cloned().collect::<Vec<_>>().join(", ")
    };
    format!(
        "test `{name}` failed: the deploy has no output `{output}` to take the base URL from \
         (outputs present: {present})"
    )
}

/// A suite that cannot be read or is invalid: its first line in the summary, all in the tail.
fn unloadable(name: &str, err: &str) -> TestResult {
    let first = err.lines().next().unwrap_or_default();
    failed(format!("test `{name}` failed: {first}"), output_tail(err))
}

fn judge(name: &str, report: &Report) -> TestResult {
    let tail = output_tail(&report.summary());
    let suite = &report.suite;
    let total = report.checks.len();
    if report.passed {
        let what = format!(
            "smoke suite {suite:?}: {total} checks passed against {}",
            report.base_url
        );
        return passed(format!("test `{name}` passed: {what}"), tail);
    }
    let why = match &report.aborted {
        Some(reason) => format!("smoke suite {suite:?} did not start: {reason}"),
        None => {
            let bad = report.failures().count();
            format!(
                "smoke suite {suite:?}: {bad} of {total} checks failed against {}",
                report.base_url
            )
        }
    };
    failed(format!("test `{name}` failed: {why}"), tail)
}

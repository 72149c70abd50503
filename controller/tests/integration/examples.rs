//! The example pipelines in `docs/examples/` do what their READMEs say.
//!
//! - Every `docs/examples/*/stages.toml` loads and validates with [`tollgate::config::load`],
//!   without warnings; each pipeline goes Beta → Gamma → Prod through three accounts; every
//!   smoke suite loads, and every `${NAME}` its suites, workflow inputs and command scripts use
//!   is a variable tollgate gives that stage's tests.
//! - Every CloudFormation template in `docs/examples/` passes cfn-lint (`TOLLGATE_CFN_LINT`, or
//!   `.venv/bin/cfn-lint` when that is unset, as in `bootstrap_templates.rs`).
//! - On moto, through [`CloudFormationDeployer`] with per-account credentials (AssumeRole, the
//!   controller's own account without), each example's stage stacks are created in the
//!   example's own Beta, Gamma and Prod accounts, then updated to the next release's image; each
//!   stack exists in its own account only. The templates an example's README says to deploy by
//!   hand (repositories, network, platform) are deployed first, the same way.
//!
//! # What moto 5.2.5 cannot run, and what the tests do instead
//! - Resource types it does not implement ([`MOTO_UNSUPPORTED`]) are left out of the stack; the
//!   tests check that every other resource of the template was created.
//! - `Fn::GetAtt` of a load balancer's `CanonicalHostedZoneID` is not implemented, so no Route 53
//!   alias record can be made: stages deploy with `HostedZoneId = ""`, the templates' own case
//!   of DNS managed elsewhere.
//! - An ELBv2 listener needs its certificate in ACM: the tests request one in moto's ACM and pass
//!   its ARN instead of the one in stages.toml (CloudFront's, in us-east-1, is kept: moto never
//!   creates the distribution).
//! - A `Custom::` resource is reported complete without its function running (moto would need
//!   Docker to invoke Lambda), so shop-web's SiteContent publishes nothing here; an update that
//!   changes it drops it from the stack's resources.
//! - A resource naming an unsupported one through `Ref` gets nothing in its place:
//!   [`MOTO_LEFT_OUT`] lists those, deployed from a copy of the template without them.
//! - Stacks made through change sets report no Outputs (moto builds them before executing), so
//!   the tests read the stack's resources and parameters instead.
//! - `UsePreviousValue`, which tollgate's update sends for each parameter the stack has and the
//!   stage does not set, goes wrong: for a Systems Manager parameter type moto looks the
//!   stack's resolved value up as a parameter name (HTTP 500), and a parameter the stack's
//!   creation did not pass counts as changed, so moto updates every resource that refers to
//!   it and loses those whose type it cannot update (`AWS::Logs::LogGroup`). The stages deploy
//!   with every parameter their template declares with a `Default` set to that default, which
//!   is what CloudFormation would keep; `aws_cloudformation.rs` tests `UsePreviousValue` itself.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use aws_config::{Region, SdkConfig};
use aws_credential_types::provider::ProvideCredentials;
use tollgate::aws::cloudformation::CloudFormationDeployer;
use tollgate::aws::retry::{Limiter, PollSettings};
use tollgate::aws::sts::{Credentials, session_name};
use tollgate::config::{Account, Config, Deploy, Pipeline, SecretRef, Stage, Target, TestKind};
use tollgate::domain::ReleaseId;
use tollgate::engine::ports::{DeployRequest, TestContext};
use tollgate::gates::{substitute, test_variables};
use tollgate_testkit::moto::MotoServer;

/// The examples, each a directory of `docs/examples` with a `stages.toml`.
pub(crate) const EXAMPLES: [&str; 3] = ["ecs-fastapi-react", "nextjs-fastapi", "serverless-api"];

/// Resource types the examples use that moto 5.2.5 does not create through CloudFormation.
const MOTO_UNSUPPORTED: &[&str] = &[
    "AWS::ApiGateway::Stage",
    "AWS::ApplicationAutoScaling::ScalableTarget",
    "AWS::ApplicationAutoScaling::ScalingPolicy",
    "AWS::CloudFront::Distribution",
    "AWS::CloudFront::Function",
    "AWS::CloudFront::OriginAccessControl",
    "AWS::CloudWatch::Alarm",
    "AWS::CodeDeploy::Application",
    "AWS::CodeDeploy::DeploymentGroup",
    "AWS::IAM::OIDCProvider",
    "AWS::Lambda::Alias",
    "AWS::S3::BucketPolicy",
];

/// Resources left out of a template's copy for moto: (template file, logical ids).
/// - orders-api.yaml's ApiInvokePermission grants API Gateway the `live` alias
///   (AWS::Lambda::Alias); moto resolves the unsupported alias to nothing and then fails the
///   whole change set on the permission's missing FunctionName.
pub(crate) const MOTO_LEFT_OUT: &[(&str, &[&str])] =
    &[("orders-api.yaml", &["ApiInvokePermission"])];

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub(crate) fn examples_dir() -> PathBuf {
    workspace_root().join("docs/examples")
}

pub(crate) fn load(example: &str) -> Config {
    let path = examples_dir().join(example).join("stages.toml");
    let loaded =
        tollgate::config::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let warnings: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
    assert!(warnings.is_empty(), "{}: {warnings:#?}", path.display());
    loaded.config
}

pub(crate) fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

// ---- templates, read the way the examples write them --------------------------------------
// Top-level keys at column 0, logical ids and output names at two spaces, `Type:` and
// `Condition:` at four.

/// A logical id or output name: two spaces, letters and digits, a colon.
fn entry_key(line: &str) -> Option<&str> {
    let rest = line.strip_prefix("  ")?;
    let key = rest.trim_end().strip_suffix(':')?;
    let plain = !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric());
    plain.then_some(key)
}

/// A top-level key (`Resources:`), not a comment or an indented line.
fn top_level(line: &str) -> Option<&str> {
    let starts = line.chars().next()?;
    (starts != ' ' && starts != '#').then(|| line.trim_end())
}

/// The entries of a top-level section, each with its lines.
fn section<'t>(template: &'t str, name: &str) -> Vec<(&'t str, Vec<&'t str>)> {
    let header = format!("{name}:");
    let mut entries: Vec<(&str, Vec<&str>)> = Vec::new();
    let mut inside = false;
    for line in template.lines() {
        if let Some(top) = top_level(line) {
            inside = top == header;
            continue;
        }
        if !inside {
            continue;
        }
        if let Some(key) = entry_key(line) {
            entries.push((key, Vec::new()));
        } else if let Some((_, body)) = entries.last_mut() {
            body.push(line);
        }
    }
    entries
}

/// One resource of a template: logical id, type, condition.
#[derive(Debug)]
struct Resource {
    id: String,
    kind: String,
    condition: Option<String>,
}

/// The template's parameters that have a `Default`, with it (unquoted).
fn defaults(template: &str) -> BTreeMap<String, String> {
    let default = |body: &[&str]| {
        let value = body.iter().find_map(|l| l.strip_prefix("    Default: "))?;
        Some(value.trim().trim_matches('"').to_string())
    };
    section(template, "Parameters")
        .into_iter()
        .filter_map(|(id, body)| Some((id.to_string(), default(&body)?)))
        .collect()
}

fn resources(template: &str) -> Vec<Resource> {
    let field = |body: &[&str], name: &str| {
        let prefix = format!("    {name}: ");
        (body.iter()).find_map(|l| Some(l.strip_prefix(&prefix)?.trim().to_string()))
    };
    let resources: Vec<Resource> = section(template, "Resources")
        .into_iter()
        .map(|(id, body)| Resource {
            id: id.to_string(),
            kind: field(&body, "Type").unwrap_or_else(|| panic!("{id} has no Type")),
            condition: field(&body, "Condition"),
        })
        .collect();
    assert!(!resources.is_empty(), "no resources found");
    resources
}

pub(crate) fn outputs(template: &str) -> Vec<String> {
    let names = section(template, "Outputs").into_iter();
    names.map(|(name, _)| name.to_string()).collect()
}

/// `template` without the resources `drop`, which nothing else may name.
pub(crate) fn without_resources(template: &str, drop: &[&str]) -> String {
    let mut out = String::new();
    let (mut in_resources, mut dropping) = (false, false);
    for line in template.lines() {
        if let Some(top) = top_level(line) {
            (in_resources, dropping) = (top == "Resources:", false);
        } else if let Some(key) = entry_key(line).filter(|_| in_resources) {
            dropping = drop.contains(&key);
        }
        if !dropping {
            out.push_str(line);
            out.push('\n');
        }
    }
    // Only what follows the resources' header can name one (a description may mention it).
    let body = &out[out.find("\nResources:").unwrap_or(0)..];
    for id in drop {
        assert!(!names(body, id), "{id} is still named in the template");
    }
    out
}

/// `template` with its `Outputs` section replaced by `outputs` (name, literal value), in
/// order; no other line changes.
pub(crate) fn with_outputs(template: &str, outputs: &[(&str, String)]) -> String {
    let mut out = String::new();
    let mut skipping = false;
    for line in template.lines() {
        if let Some(top) = top_level(line) {
            skipping = top == "Outputs:";
            if skipping {
                out.push_str("Outputs:\n");
                for (name, value) in outputs {
                    let value = serde_json::Value::String(value.clone());
                    out.push_str(&format!("  {name}:\n    Value: {value}\n"));
                }
                continue;
            }
        }
        if !skipping {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// Whether `text` has `id` as a whole word.
fn names(text: &str, id: &str) -> bool {
    let word = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    text.match_indices(id).any(|(at, _)| {
        !word(text[..at].chars().next_back()) && !word(text[at + id.len()..].chars().next())
    })
}

/// The logical ids moto should list: all but unsupported types and false conditions, and
/// after an update no `Custom::` resource either.
fn creatable(template: &str, conditions_on: &[&str], updated: bool) -> BTreeSet<String> {
    let on = |r: &Resource| (r.condition.as_deref()).is_none_or(|c| conditions_on.contains(&c));
    let kept = |r: &Resource| !(updated && r.kind.starts_with("Custom::"));
    resources(template)
        .into_iter()
        .filter(|r| !MOTO_UNSUPPORTED.contains(&r.kind.as_str()) && on(r) && kept(r))
        .map(|r| r.id)
        .collect()
}

// ---- (a) the configurations ----------------------------------------------------------------

#[test]
fn every_example_pipeline_loads_and_validates() {
    let mut found: Vec<String> = std::fs::read_dir(examples_dir())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|dir| dir.join("stages.toml").is_file())
        .map(|dir| dir.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    found.sort();
    assert_eq!(found, EXAMPLES, "examples with a stages.toml");
    for example in EXAMPLES {
        let config = load(example);
        for pipeline in &config.pipelines {
            check_promotion(example, &config, pipeline);
            for stage in &pipeline.stages {
                check_stage_tests(example, pipeline, stage);
            }
        }
    }
}

/// Beta → Gamma → Prod, each in an account of its own; Prod needs an approval.
fn check_promotion(example: &str, config: &Config, pipeline: &Pipeline) {
    let what = format!("{example}: pipeline {}", pipeline.name);
    let names: Vec<&str> = pipeline.stages.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["beta", "gamma", "prod"], "{what}");
    let ids: BTreeSet<&str> = (pipeline.stages.iter())
        .flat_map(|s| &s.targets)
        .map(|t| config.accounts[&t.account].id.as_str())
        .collect();
    assert_eq!(ids.len(), 3, "{what}: stage accounts {ids:?}");
    assert!(
        pipeline.stages[2].approval.is_some(),
        "{what}: prod approval"
    );
}

/// The variables a test of `stage` gets: the fixed ones and, after the deploy, one `STACK_*` per
/// output of the stage's template.
fn stage_variables(
    pipeline: &Pipeline,
    stage: &Stage,
    outputs: &[String],
) -> BTreeMap<String, String> {
    let outputs = outputs.iter().map(|o| (o.clone(), "x".to_string()));
    let ctx = TestContext {
        key: "k".into(),
        pipeline: pipeline.name.to_string(),
        stage: stage.name.to_string(),
        release: ReleaseId(1),
        repository: pipeline.source.repository.clone(),
        branch: pipeline.source.branch.clone(),
        sha: "0".repeat(40),
        digest: format!("sha256:{}", "0".repeat(64)),
        image_uri: "image".into(),
        account_id: "000000000000".into(),
        region: "us-east-1".into(),
        outputs: outputs.collect(),
    };
    test_variables(&ctx)
}

/// Every test of the stage can run: its suite loads and uses known variables, its base URL
/// output exists, its workflow inputs resolve, its script exists and reads known `STACK_*`s.
fn check_stage_tests(example: &str, pipeline: &Pipeline, stage: &Stage) {
    let Deploy::CloudFormation { template, .. } = &stage.deploy else {
        panic!("{example}: {} deploys with CloudFormation", stage.name);
    };
    let template = read(template);
    let before = stage.before.iter().map(|name| (name, Vec::new()));
    let after = stage.after.iter().map(|name| (name, outputs(&template)));
    for (name, outputs) in before.chain(after) {
        let vars = stage_variables(pipeline, stage, &outputs);
        let what = format!("{example}: {}/{} test {name}", pipeline.name, stage.name);
        match &pipeline.tests[name].kind {
            TestKind::Http {
                suite,
                base_url_output,
            } => {
                let suite =
                    smoke_tests::Suite::load(suite).unwrap_or_else(|e| panic!("{what}: {e}"));
                let unknown: Vec<String> = (suite.variables().into_iter())
                    .filter(|v| !vars.contains_key(v))
                    .collect();
                assert!(unknown.is_empty(), "{what}: unknown {unknown:?}");
                assert!(outputs.contains(base_url_output), "{what}");
            }
            TestKind::GithubWorkflow { inputs, .. } => {
                for value in inputs.values() {
                    substitute(value, &vars).unwrap_or_else(|e| panic!("{what}: {e}"));
                }
            }
            TestKind::Command { argv, workdir, .. } => {
                assert_eq!(argv[0], "sh", "{what}: scripts run through sh");
                let script = workdir.join(&argv[1]);
                for used in stack_variables(&read(&script)) {
                    assert!(vars.contains_key(&used), "{what}: {used} is not an output");
                }
            }
            TestKind::GithubChecks { checks } => assert!(!checks.is_empty(), "{what}"),
        }
    }
}

/// The `STACK_*` names a script reads.
fn stack_variables(script: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for (at, _) in script.match_indices("STACK_") {
        let name: String = (script[at..].chars())
            .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        found.insert(name);
    }
    found
}

// ---- (b) cfn-lint ---------------------------------------------------------------------------

/// Every CloudFormation template under `dir`, in order.
fn templates_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(templates_under(&path));
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml")
            && read(&path).contains("AWSTemplateFormatVersion")
        {
            found.push(path);
        }
    }
    found.sort();
    found
}

/// cfn-lint from `TOLLGATE_CFN_LINT`, else the one `scripts/test` installs; never skipped.
fn cfn_lint() -> PathBuf {
    let path = std::env::var_os("TOLLGATE_CFN_LINT")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".venv/bin/cfn-lint"));
    assert!(
        path.is_file(),
        "cfn-lint not found at {} (scripts/test installs it)",
        path.display()
    );
    path
}

#[test]
fn cfn_lint_finds_nothing_in_the_example_templates() {
    let templates = templates_under(&examples_dir());
    for example in EXAMPLES {
        for stage in load(example).pipelines.iter().flat_map(|p| &p.stages) {
            let Deploy::CloudFormation { template, .. } = &stage.deploy else {
                continue;
            };
            let template = template.canonicalize().unwrap();
            let listed = templates
                .iter()
                .any(|t| t.canonicalize().unwrap() == template);
            assert!(listed, "{} is not linted", template.display());
        }
    }
    let output = Command::new(cfn_lint())
        .args(&templates)
        .output()
        .expect("running cfn-lint");
    assert!(
        output.status.success(),
        "cfn-lint exited with {}:\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

// ---- (c) on moto ----------------------------------------------------------------------------

/// An image of release `n` in the artifact repository, pinned by digest.
fn image(config: &Config, pipeline: &Pipeline, n: u32) -> String {
    let a = &pipeline.artifact;
    let account = &config.accounts[&a.account].id;
    let digest = format!("{n:064x}");
    format!(
        "{account}.dkr.ecr.{}.amazonaws.com/{}@sha256:{digest}",
        a.region, a.repository
    )
}

/// One stack to check: where it is, which template made it, which of its conditions hold.
struct Placed<'a> {
    account: &'a Account,
    region: &'a str,
    stack: &'a str,
    template: &'a str,
    conditions_on: &'a [&'a str],
}

/// One example's accounts on moto, and the deployer the controller would use with them.
pub(crate) struct Emulated {
    pub(crate) moto: &'static MotoServer,
    pub(crate) name: &'static str,
    pub(crate) config: Config,
    /// The example's accounts, with their ExternalIds in files.
    pub(crate) accounts: BTreeMap<String, Account>,
    deployer: CloudFormationDeployer,
    /// ExternalIds and template copies.
    scratch: tempfile::TempDir,
    keys: AtomicU32,
    /// (stack, region) → the accounts it was deployed to.
    placements: Mutex<BTreeMap<(String, String), BTreeSet<String>>>,
    /// (account id, region, domain) → the certificate moto's ACM made for it.
    certificates: tokio::sync::Mutex<BTreeMap<(String, String, String), String>>,
}

impl Emulated {
    /// The example on a moto of its own. Not the shared server: the examples deploy Lambda
    /// functions, and once moto holds one its `/moto-api/data.json` answers 500 (it reads
    /// every attribute of every model, and a Lambda function's Docker client fails without a
    /// Docker socket: `moto_api/_internal/responses.py`, `awslambda/models.py`), which the
    /// tests that read that state on the shared server would meet. Leaked: the server stops
    /// when the test process ends (its wrapper reads end of file on stdin).
    async fn start(name: &'static str) -> Emulated {
        let moto = tokio::task::spawn_blocking(MotoServer::start)
            .await
            .unwrap()
            .expect("moto_server starts");
        Emulated::start_on(Box::leak(Box::new(moto)), name).await
    }

    /// The example on `moto` (a server of its own, for a test that reads its recording).
    pub(crate) async fn start_on(moto: &'static MotoServer, name: &'static str) -> Emulated {
        let config = load(name);
        let scratch = tempfile::tempdir().unwrap();
        let mut accounts = config.accounts.clone();
        for account in accounts.values_mut() {
            if account.external_id.is_some() {
                let file = scratch.path().join(format!("external-id-{}", account.name));
                std::fs::write(&file, format!("{}-external-id\n", account.name)).unwrap();
                account.external_id = Some(SecretRef::File(file));
            }
        }
        let controller = accounts.values().find(|a| a.controller).unwrap();
        let base = moto.sdk_config_for_account(&controller.id).await.unwrap();
        let creds = Credentials::new(base, Arc::new(Limiter::default()));
        let deployer = CloudFormationDeployer::new(Arc::new(creds), PollSettings::fast());
        Emulated {
            moto,
            name,
            config,
            accounts,
            deployer,
            scratch,
            keys: AtomicU32::new(0),
            placements: Mutex::default(),
            certificates: tokio::sync::Mutex::default(),
        }
    }

    fn dir(&self) -> PathBuf {
        examples_dir().join(self.name)
    }

    /// A CloudFormation client in `account` and `region`, as the test itself (not tollgate).
    async fn cfn(&self, account: &Account, region: &str) -> aws_sdk_cloudformation::Client {
        let config = self.moto.sdk_config_for_account(&account.id).await.unwrap();
        let config = aws_sdk_cloudformation::config::Builder::from(&config)
            .region(Region::new(region.to_string()))
            .build();
        aws_sdk_cloudformation::Client::from_conf(config)
    }

    /// Deploys through tollgate's deployer, as part of `stage`, and returns its summary.
    async fn deploy(
        &self,
        stage: &str,
        account: &Account,
        region: &str,
        deploy: &Deploy,
        image: &str,
    ) -> String {
        let n = self.keys.fetch_add(1, Ordering::Relaxed);
        let Deploy::CloudFormation { stack, .. } = deploy else {
            unreachable!()
        };
        let request = DeployRequest {
            key: format!("{}/{stack}/{n}", self.name),
            pipeline: self.name.into(),
            stage: stage.into(),
            release: ReleaseId(i64::from(n)),
            target: Target {
                account: account.name.clone(),
                region: region.into(),
            },
            account: account.clone(),
            deploy: deploy.clone(),
            image_uri: image.into(),
            session_name: session_name(&format!("tollgate-{}-{n}", self.name)),
            alarm_override: false,
            restore: None,
            history: Default::default(),
        };
        let done = self.deployer.deploy_stack(&request, &[]).await;
        done.unwrap_or_else(|e| {
            panic!(
                "{}: deploying {stack} to {}: {e:?}",
                self.name, account.name
            )
        })
        .summary
    }

    /// A template the README deploys by hand, once per account. It takes no image, but the
    /// deployer always sets `image_parameter`: one of the template's own parameters, `carrier`,
    /// takes its value through it.
    async fn prerequisite(
        &self,
        account: &str,
        stack: &str,
        template: &str,
        carrier: (&str, &str),
        parameters: &[(&str, &str)],
        conditions_on: &[&str],
    ) {
        let deploy = Deploy::CloudFormation {
            stack: stack.into(),
            template: self.dir().join(template),
            parameters: (parameters.iter())
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            image_parameter: carrier.0.into(),
            capabilities: vec!["CAPABILITY_NAMED_IAM".into()],
            execution_role: None,
        };
        let account = &self.accounts[account];
        let summary = (self.deploy("setup", account, &account.region, &deploy, carrier.1)).await;
        assert!(summary.contains("CREATE_COMPLETE"), "{summary}");
        let text = read(&self.dir().join(template));
        let placed = Placed {
            account,
            region: &account.region,
            stack,
            template: &text,
            conditions_on,
        };
        self.check(&placed, "CREATE_COMPLETE").await;
    }

    /// The stack is `status` in its own account and region, with every resource moto can
    /// create; where it was put is recorded for [`Emulated::check_isolation`].
    async fn check(&self, placed: &Placed<'_>, status: &str) {
        let Placed {
            account,
            region,
            stack,
            ..
        } = placed;
        let own = self.cfn(account, region).await;
        assert_eq!(
            stack_status(&own, stack).await.as_deref(),
            Ok(status),
            "{stack} in {}",
            account.name
        );
        let created = created(&own, stack).await;
        assert_eq!(
            created,
            creatable(
                placed.template,
                placed.conditions_on,
                status == "UPDATE_COMPLETE"
            ),
            "{stack}: resources"
        );
        let mut placements = self.placements.lock().unwrap();
        let key = (stack.to_string(), region.to_string());
        placements
            .entry(key)
            .or_default()
            .insert(account.name.clone());
    }

    /// Every stack exists in the accounts it was deployed to and in no other account of the
    /// example (stacks the READMEs deploy by hand have one name in every account).
    async fn check_isolation(&self) {
        let placements = self.placements.lock().unwrap().clone();
        for ((stack, region), placed) in placements {
            let mut found = BTreeSet::new();
            for account in self.accounts.values() {
                match stack_status(&self.cfn(account, &region).await, &stack).await {
                    Ok(_) => found.insert(account.name.clone()),
                    Err(e) if e.contains("does not exist") => false,
                    Err(e) => panic!("{stack} in {}: {e}", account.name),
                };
            }
            assert_eq!(found, placed, "accounts with a stack {stack} in {region}");
        }
    }

    /// The certificate for `domain` in moto's ACM of `account` and `region`, made once.
    pub(crate) async fn certificate(
        &self,
        account: &Account,
        region: &str,
        domain: &str,
    ) -> String {
        let mut made = self.certificates.lock().await;
        let key = (
            account.id.to_string(),
            region.to_string(),
            domain.to_string(),
        );
        if let Some(arn) = made.get(&key) {
            return arn.clone();
        }
        let config = self.moto.sdk_config_for_account(&account.id).await.unwrap();
        let arn = request_certificate(self.moto, &config, region, domain).await;
        made.insert(key, arn.clone());
        arn
    }

    /// The stage's deploy, as moto can run it (see the module documentation).
    pub(crate) async fn for_moto(&self, stage: &Stage, target: &Target) -> Deploy {
        let mut deploy = stage.deploy.clone();
        let Deploy::CloudFormation {
            template,
            parameters,
            image_parameter,
            ..
        } = &mut deploy
        else {
            unreachable!()
        };
        for (key, default) in defaults(&read(template)) {
            if key != *image_parameter {
                parameters.entry(key).or_insert(default);
            }
        }
        if let Some(zone) = parameters.get_mut("HostedZoneId") {
            zone.clear();
        }
        let regional = |arn: &String| arn.split(':').nth(3) == Some(target.region.as_str());
        if parameters.get("CertificateArn").is_some_and(regional) {
            let account = &self.accounts[&target.account];
            let arn = self
                .certificate(account, &target.region, &parameters["DomainName"])
                .await;
            parameters.insert("CertificateArn".into(), arn);
        }
        let file = template.file_name().unwrap().to_string_lossy().into_owned();
        if let Some((_, drop)) = MOTO_LEFT_OUT.iter().find(|(name, _)| *name == file) {
            let copy = self.scratch.path().join(format!("{}-{file}", stage.name));
            std::fs::write(&copy, without_resources(&read(template), drop)).unwrap();
            *template = copy;
        }
        deploy
    }

    /// Release `n` of `pipeline` through every stage, in order: the stacks end up `status`.
    async fn release(&self, pipeline: &Pipeline, n: u32, status: &str) {
        let image = image(&self.config, pipeline, n);
        for stage in &pipeline.stages {
            for target in &stage.targets {
                let deploy = self.for_moto(stage, target).await;
                let account = &self.accounts[&target.account];
                let deployed = self.deploy(&stage.name, account, &target.region, &deploy, &image);
                let summary = deployed.await;
                let what = format!("{}/{}", pipeline.name, stage.name);
                assert!(summary.contains(status), "{what}: {summary}");
                let Deploy::CloudFormation {
                    stack,
                    template,
                    image_parameter,
                    ..
                } = &deploy
                else {
                    unreachable!()
                };
                let text = read(template);
                let placed = Placed {
                    account,
                    region: &target.region,
                    stack,
                    template: &text,
                    conditions_on: &[],
                };
                self.check(&placed, status).await;
                let cfn = self.cfn(account, &target.region).await;
                let deployed = parameter(&cfn, stack, image_parameter).await;
                assert_eq!(
                    deployed.as_deref(),
                    Some(image.as_str()),
                    "{stack}: {image_parameter}"
                );
            }
        }
    }

    /// Two releases of every pipeline, each through Beta, Gamma and Prod.
    async fn promote_everything(&self) {
        for pipeline in &self.config.pipelines {
            self.release(pipeline, 1, "CREATE_COMPLETE").await;
            self.release(pipeline, 2, "UPDATE_COMPLETE").await;
        }
        self.check_isolation().await;
    }

    pub(crate) fn id(&self, account: &str) -> &str {
        &self.accounts[account].id
    }
}

async fn stack_status(cfn: &aws_sdk_cloudformation::Client, stack: &str) -> Result<String, String> {
    let described = cfn.describe_stacks().stack_name(stack).send().await;
    let described = described
        .map_err(|e| aws_smithy_types::error::display::DisplayErrorContext(e).to_string())?;
    Ok(described.stacks()[0]
        .stack_status()
        .unwrap()
        .as_str()
        .to_owned())
}

/// The logical ids of the stack's resources. moto lists a resource it left out (unsupported
/// type, false condition) with an empty logical id; those are dropped here.
async fn created(cfn: &aws_sdk_cloudformation::Client, stack: &str) -> BTreeSet<String> {
    let listed = cfn
        .list_stack_resources()
        .stack_name(stack)
        .send()
        .await
        .unwrap();
    (listed.stack_resource_summaries().iter())
        .filter_map(|r| r.logical_resource_id())
        .filter(|id| !id.is_empty())
        .map(str::to_owned)
        .collect()
}

async fn parameter(
    cfn: &aws_sdk_cloudformation::Client,
    stack: &str,
    name: &str,
) -> Option<String> {
    let described = cfn
        .describe_stacks()
        .stack_name(stack)
        .send()
        .await
        .unwrap();
    let parameters = described.stacks()[0].parameters();
    let found = parameters.iter().find(|p| p.parameter_key() == Some(name));
    found.and_then(|p| p.parameter_value()).map(str::to_owned)
}

/// `RequestCertificate` in moto's ACM, as the account `config` is signed in to. The SDK has no
/// ACM client here; moto reads the account from the access key and ignores the signature.
async fn request_certificate(
    moto: &MotoServer,
    config: &SdkConfig,
    region: &str,
    domain: &str,
) -> String {
    let provider = config.credentials_provider().unwrap();
    let key = provider.provide_credentials().await.unwrap();
    let scope = format!("{}/20260101/{region}/acm/aws4_request", key.access_key_id());
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let answer = http
        .post(moto.endpoint())
        .header("Content-Type", "application/x-amz-json-1.1")
        .header("X-Amz-Target", "CertificateManager.RequestCertificate")
        .header(
            "Authorization",
            format!("AWS4-HMAC-SHA256 Credential={scope}, SignedHeaders=host, Signature=0"),
        )
        .json(&serde_json::json!({ "DomainName": domain, "ValidationMethod": "DNS" }))
        .send()
        .await
        .unwrap();
    assert!(
        answer.status().is_success(),
        "RequestCertificate: {}",
        answer.status()
    );
    let body: serde_json::Value = answer.json().await.unwrap();
    body["CertificateArn"].as_str().unwrap().to_owned()
}

/// The network each stage account gets once (its README); Prod with a NAT gateway per zone.
async fn networks(ex: &Emulated) {
    for stage in ["beta", "gamma", "prod"] {
        let (per_zone, on): (&str, &[&str]) = if stage == "prod" {
            ("true", &["NatPerZone"])
        } else {
            ("false", &[])
        };
        let params = [("NatGatewayPerZone", per_zone)];
        ex.prerequisite(
            stage,
            "network",
            "templates/network.yaml",
            ("VpcCidr", "10.40.0.0/16"),
            &params,
            on,
        )
        .await;
    }
}

/// What the example's README deploys by hand before its pipelines run, in every account it
/// names: the repositories, the network and (nextjs-fastapi) the shared platform.
pub(crate) async fn prerequisites(ex: &Emulated) {
    let ids = |names: &[&'static str]| -> Vec<(String, String)> {
        let ids = names
            .iter()
            .map(|n| (format!("{}AccountId", capitalised(n)), ex.id(n).to_owned()));
        ids.collect()
    };
    let (account, stack, others): (&str, &str, &[&'static str]) = match ex.name {
        "ecs-fastapi-react" => ("beta", "shop-ecr", &["gamma", "prod"]),
        "serverless-api" => ("tools", "orders-api-ecr", &["beta", "gamma", "prod"]),
        "nextjs-fastapi" => ("tools", "portal-ecr", &["beta", "gamma", "prod"]),
        other => panic!("no prerequisites known for {other}"),
    };
    let ids = ids(others);
    let ids: Vec<(&str, &str)> = ids.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    ex.prerequisite(
        account,
        stack,
        "templates/ecr.yaml",
        ("GitHubBranch", "main"),
        &ids,
        &["CreateProvider"],
    )
    .await;
    if ex.name != "serverless-api" {
        networks(ex).await;
    }
    if ex.name == "nextjs-fastapi" {
        platforms(ex).await;
    }
}

fn capitalised(name: &str) -> String {
    let mut chars = name.chars();
    let first = chars.next().map(|c| c.to_ascii_uppercase());
    first.into_iter().chain(chars).collect()
}

/// nextjs-fastapi: the shared cluster and load balancer of each stage, for the host name both
/// services answer on.
async fn platforms(ex: &Emulated) {
    let api = ex.config.pipeline("portal-api").unwrap();
    for stage in &api.stages {
        let Deploy::CloudFormation { parameters, .. } = &stage.deploy else {
            unreachable!()
        };
        let account = &ex.accounts[&stage.targets[0].account];
        let domain = &parameters["DomainName"];
        let certificate = ex.certificate(account, &account.region, domain).await;
        let params = [
            ("DomainName", domain.as_str()),
            ("CertificateArn", &certificate),
            ("HostedZoneId", ""),
        ];
        let stack = format!("portal-platform-{}", stage.name);
        ex.prerequisite(
            &account.name,
            &stack,
            "templates/platform.yaml",
            ("Environment", &stage.name),
            &params,
            &[],
        )
        .await;
    }
}

#[tokio::test]
async fn ecs_fastapi_react_deploys_into_its_own_accounts_on_moto() {
    let ex = Emulated::start("ecs-fastapi-react").await;
    prerequisites(&ex).await;
    ex.promote_everything().await;
}

#[tokio::test]
async fn serverless_api_deploys_into_its_own_accounts_on_moto() {
    let ex = Emulated::start("serverless-api").await;
    prerequisites(&ex).await;
    ex.promote_everything().await;
}

#[tokio::test]
async fn nextjs_fastapi_deploys_into_its_own_accounts_on_moto() {
    let ex = Emulated::start("nextjs-fastapi").await;
    prerequisites(&ex).await;
    ex.promote_everything().await;
}

#[test]
fn template_reading_finds_resources_conditions_and_outputs() {
    let template = "\
Resources:
  A:
    Type: AWS::S3::Bucket

  # about B
  B:
    Type: AWS::CloudWatch::Alarm
    Condition: On
  C:
    Type: AWS::SQS::Queue
    Condition: Off
    Properties:
      X: !Ref A
Outputs:
  Url:
    Value: x
";
    let found: Vec<(String, String, Option<String>)> = resources(template)
        .into_iter()
        .map(|r| (r.id, r.kind, r.condition))
        .collect();
    assert_eq!(
        found[1],
        (
            "B".into(),
            "AWS::CloudWatch::Alarm".into(),
            Some("On".into())
        )
    );
    assert_eq!(outputs(template), ["Url"]);
    assert_eq!(
        creatable(template, &["On"], false),
        BTreeSet::from(["A".to_string()])
    );
    let reduced = without_resources(template, &["C"]);
    assert!(
        reduced.contains("  B:\n")
            && !reduced.contains("  C:")
            && reduced.contains("Outputs:\n  Url:")
    );
}

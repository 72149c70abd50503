//! `aws::cloudformation::CloudFormationDeployer` through the real AWS SDK for Rust.
//!
//! Against `moto_server`: change sets create and update stacks in the assumed account only,
//! an unchanged deploy is a success, and a deploy repeated under its key executes nothing
//! twice. Against the scripted stub in `tollgate_testkit::aws_stubs::cloudformation` (each test names
//! the moto 5.2.5 gap it covers): waiting on `*_IN_PROGRESS`, `CancelUpdateStack`,
//! `ContinueUpdateRollback`, failure events, throttling, and rollback triggers that fire (through
//! `aws::deployer::AwsDeployer`, the deployer `tollgate serve` wires, with the stub's triggers
//! reading the alarms of the CloudWatch stub in `tollgate_testkit::aws_stubs::cloudwatch`).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::provider::SharedCredentialsProvider;
use tollgate::aws::cloudformation::{CloudFormationDeployer, Trigger, alarm_arn};
use tollgate::aws::cloudwatch::CloudWatchAlarms;
use tollgate::aws::codepipeline::{CodePipelineDeployer, Poll};
use tollgate::aws::deployer::AwsDeployer;
use tollgate::aws::retry::{Limiter, PollSettings, RetrySettings};
use tollgate::aws::sts::Credentials;
use tollgate::config::{Account, Deploy, SecretRef, Target};
use tollgate::domain::ReleaseId;
use tollgate::engine::ports::{Alarms, DeployRequest, Deployer, PortError};
use tollgate_testkit::aws_stubs::cloudformation::{CloudFormationStub, Event, Script, TOKEN};
use tollgate_testkit::aws_stubs::cloudwatch::{CloudWatchStub, Watches};
use tollgate_testkit::moto::{MotoServer, REGION};

const BETA: &str = "222222222222";
const GAMMA: &str = "333333333333";
const OLD: &str = "222222222222.dkr.ecr.us-east-1.amazonaws.com/app@sha256:0000";
const NEW: &str = "222222222222.dkr.ecr.us-east-1.amazonaws.com/app@sha256:1111";

/// One SSM parameter holding the image; the outputs echo the parameters.
const TEMPLATE: &str = r#"{
  "AWSTemplateFormatVersion": "2010-09-09",
  "Parameters": {
    "ImageUri": {"Type": "String"},
    "Env": {"Type": "String", "Default": "none"}
  },
  "Resources": {
    "Image": {
      "Type": "AWS::SSM::Parameter",
      "Properties": {"Name": {"Fn::Sub": "/${AWS::StackName}/image"}, "Type": "String", "Value": {"Ref": "ImageUri"}}
    }
  },
  "Outputs": {
    "ImageUri": {"Value": {"Ref": "ImageUri"}},
    "Env": {"Value": {"Ref": "Env"}}
  }
}"#;

struct Fixture {
    _dir: tempfile::TempDir,
    deploy: Deploy,
}

fn fixture(stack: &str) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let template = dir.path().join("app.json");
    std::fs::write(&template, TEMPLATE).unwrap();
    let deploy = Deploy::CloudFormation {
        stack: stack.into(),
        template,
        parameters: BTreeMap::from([("Env".to_string(), "beta".to_string())]),
        image_parameter: "ImageUri".into(),
        capabilities: vec!["CAPABILITY_IAM".into()],
        execution_role: None,
    };
    Fixture { _dir: dir, deploy }
}

fn external_id(dir: &Path) -> SecretRef {
    let file = dir.join("external-id");
    std::fs::write(&file, "beta-external-id\n").unwrap();
    SecretRef::File(file)
}

fn account(name: &str, id: &str, external_id: SecretRef) -> Account {
    Account {
        name: name.into(),
        id: id.into(),
        role_arn: Some(format!("arn:aws:iam::{id}:role/tollgate-deploy").into()),
        external_id: Some(external_id),
        region: REGION.into(),
        controller: false,
        session_duration: Duration::from_secs(3600),
        stack_events_topic: None,
    }
}

fn request(key: &str, account: &Account, deploy: &Deploy, image: &str) -> DeployRequest {
    DeployRequest {
        key: key.into(),
        pipeline: "backend".into(),
        stage: "beta".into(),
        release: ReleaseId(1),
        target: Target {
            account: account.name.clone(),
            region: REGION.into(),
        },
        account: account.clone(),
        deploy: deploy.clone(),
        image_uri: image.into(),
        session_name: "tollgate-backend-1-beta".into(),
        alarm_override: false,
        restore: None,
        history: Default::default(),
    }
}

fn deployer(base: SdkConfig, limiter: Limiter) -> CloudFormationDeployer {
    CloudFormationDeployer::new(
        Arc::new(Credentials::new(base, Arc::new(limiter))),
        PollSettings::fast(),
    )
}

async fn stack_status(config: &SdkConfig, stack: &str) -> Result<String, String> {
    let out = aws_sdk_cloudformation::Client::new(config)
        .describe_stacks()
        .stack_name(stack)
        .send()
        .await;
    let out =
        out.map_err(|e| aws_smithy_types::error::display::DisplayErrorContext(e).to_string())?;
    Ok(out.stacks()[0].stack_status().unwrap().as_str().to_owned())
}

#[tokio::test]
async fn a_stack_is_created_updated_and_left_alone_in_its_own_account_only() {
    let moto = MotoServer::shared();
    let f = fixture("cfn-lifecycle");
    let beta = account("beta", BETA, external_id(f._dir.path()));
    let cfn = deployer(moto.sdk_config(), Limiter::default());

    let created = cfn
        .deploy_stack(
            &request("lifecycle/1/beta/1/deploy-0", &beta, &f.deploy, OLD),
            &[],
        )
        .await
        .unwrap();
    // Moto 5.2.5 gap: a stack made or changed through a change set reports no Outputs (moto
    // builds them before executing and never again), so the moto tests read the resource
    // itself; the stub tests below check that outputs reach the caller.
    assert!(created.summary.contains("CREATE_COMPLETE"), "{created:?}");
    assert_eq!(
        moto.ssm_parameter(BETA, "/cfn-lifecycle/image")
            .await
            .unwrap()
            .as_deref(),
        Some(OLD)
    );
    let beta_cfg = moto.sdk_config_for_account(BETA).await.unwrap();
    let gamma_cfg = moto.sdk_config_for_account(GAMMA).await.unwrap();
    assert_eq!(
        stack_status(&beta_cfg, "cfn-lifecycle").await.unwrap(),
        "CREATE_COMPLETE"
    );
    let elsewhere = stack_status(&gamma_cfg, "cfn-lifecycle").await.unwrap_err();
    assert!(elsewhere.contains("does not exist"), "{elsewhere}");

    let updated = cfn
        .deploy_stack(
            &request("lifecycle/2/beta/1/deploy-0", &beta, &f.deploy, NEW),
            &[],
        )
        .await
        .unwrap();
    assert!(updated.summary.contains("UPDATE_COMPLETE"), "{updated:?}");
    assert_eq!(
        moto.ssm_parameter(BETA, "/cfn-lifecycle/image")
            .await
            .unwrap()
            .as_deref(),
        Some(NEW)
    );
    assert_eq!(
        moto.ssm_parameter(GAMMA, "/cfn-lifecycle/image")
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        stack_status(&beta_cfg, "cfn-lifecycle").await.unwrap(),
        "UPDATE_COMPLETE"
    );

    let same = cfn
        .deploy_stack(
            &request("lifecycle/3/beta/1/deploy-0", &beta, &f.deploy, NEW),
            &[],
        )
        .await
        .unwrap();
    assert!(same.summary.contains("no changes"), "{}", same.summary);
}

#[tokio::test]
async fn a_deploy_repeated_under_its_key_executes_once() {
    let moto = MotoServer::start().unwrap(); // private: the recorder counts calls
    let f = fixture("cfn-repeat");
    let beta = account("beta", BETA, external_id(f._dir.path()));
    let cfn = deployer(moto.sdk_config(), Limiter::default());
    let alarms = [
        Trigger::metric("api-5xx"),
        Trigger::composite("service-health"),
    ];
    cfn.deploy_stack(
        &request("repeat/1/beta/1/deploy-0", &beta, &f.deploy, OLD),
        &[],
    )
    .await
    .unwrap();

    moto.recorder_start().await.unwrap();
    let req = request("repeat/2/beta/1/deploy-0", &beta, &f.deploy, NEW);
    let first = cfn.deploy_stack(&req, &alarms).await.unwrap();
    let repeat = cfn.deploy_stack(&req, &alarms).await.unwrap(); // as after a crash
    moto.recorder_stop().await.unwrap();
    assert!(first.summary.contains("UPDATE_COMPLETE"), "{first:?}");
    assert!(repeat.summary.contains("UPDATE_COMPLETE"), "{repeat:?}");
    assert_eq!(
        moto.ssm_parameter(BETA, "/cfn-repeat/image")
            .await
            .unwrap()
            .as_deref(),
        Some(NEW)
    );

    let requests = moto.recorded_requests().await.unwrap();
    let named = |action: &str| {
        requests
            .iter()
            .filter(|r| r.action.as_deref() == Some(action))
            .count()
    };
    assert_eq!(
        named("ExecuteChangeSet"),
        1,
        "{:?}",
        requests.iter().map(|r| &r.action).collect::<Vec<_>>()
    );
    assert_eq!(named("AssumeRole"), 0, "the session from before is reused");
    let create = requests
        .iter()
        .find(|r| r.action.as_deref() == Some("CreateChangeSet"))
        .unwrap();
    let form: BTreeMap<String, String> = url::form_urlencoded::parse(&create.body)
        .into_owned()
        .collect();
    assert_eq!(form["ChangeSetType"], "UPDATE");
    assert_eq!(form["ChangeSetName"], "tollgate-repeat-2-beta-1-deploy-0");
    // The name makes a repeat find the change set; the ClientToken is the request's own (a
    // change set made again after going obsolete must not reuse it for another request).
    assert!(form["ClientToken"].starts_with("tollgate-"), "{form:?}");
    assert_ne!(form["ClientToken"], form["ChangeSetName"]);
    assert_eq!(
        form["RollbackConfiguration.RollbackTriggers.member.1.Arn"],
        "arn:aws:cloudwatch:us-east-1:222222222222:alarm:api-5xx"
    );
    assert_eq!(
        form["RollbackConfiguration.RollbackTriggers.member.1.Type"],
        "AWS::CloudWatch::Alarm"
    );
    // A composite alarm is named as one: with the other type CloudFormation would not find
    // the trigger and fail the whole operation (API_RollbackTrigger).
    assert_eq!(
        form["RollbackConfiguration.RollbackTriggers.member.2.Arn"],
        "arn:aws:cloudwatch:us-east-1:222222222222:alarm:service-health"
    );
    assert_eq!(
        form["RollbackConfiguration.RollbackTriggers.member.2.Type"],
        "AWS::CloudWatch::CompositeAlarm"
    );
    let execute = requests
        .iter()
        .find(|r| r.action.as_deref() == Some("ExecuteChangeSet"))
        .unwrap();
    assert!(
        execute
            .body_text()
            .contains("ClientRequestToken=tollgate-repeat-2-beta-1-deploy-0")
    );
}

/// Parameters `Extra` (set by hand, not in the configuration), `Gone` (dropped by the next
/// template) and `Fresh` (added by it), beside the two of [`TEMPLATE`].
fn template_with(parameters: &[&str]) -> String {
    let declared: Vec<String> = parameters
        .iter()
        .map(|p| format!("\"{p}\": {{\"Type\": \"String\", \"Default\": \"{p}-default\"}}"))
        .collect();
    TEMPLATE.replace(
        "\"Env\": {\"Type\": \"String\", \"Default\": \"none\"}",
        &format!(
            "\"Env\": {{\"Type\": \"String\", \"Default\": \"none\"}}, {}",
            declared.join(", ")
        ),
    )
}

async fn stack_parameters(config: &SdkConfig, stack: &str) -> BTreeMap<String, String> {
    let out = aws_sdk_cloudformation::Client::new(config)
        .describe_stacks()
        .stack_name(stack)
        .send()
        .await
        .unwrap();
    let param = |p: &aws_sdk_cloudformation::types::Parameter| {
        let key = p.parameter_key()?.to_string();
        Some((key, p.parameter_value()?.to_string()))
    };
    out.stacks()[0]
        .parameters()
        .iter()
        .filter_map(param)
        .collect()
}

/// The `Parameters` of a recorded `CreateChangeSet`: key to value, or to `None` when it was
/// sent as `UsePreviousValue=true` (and then must carry no value).
fn sent_parameters(body: &[u8]) -> BTreeMap<String, Option<String>> {
    let form: BTreeMap<String, String> = url::form_urlencoded::parse(body).into_owned().collect();
    let field = |n: usize, f: &str| form.get(&format!("Parameters.member.{n}.{f}")).cloned();
    (1..)
        .map_while(|n| Some((n, field(n, "ParameterKey")?)))
        .map(|(n, key)| {
            let value = field(n, "ParameterValue");
            let previous = field(n, "UsePreviousValue").as_deref() == Some("true");
            assert!(
                previous != value.is_some(),
                "{key}: value {value:?}, previous {previous}"
            );
            (key, value)
        })
        .collect()
}

/// A parameter set on the stack outside tollgate keeps its value through a deploy and a
/// rollback: CreateChangeSet names it with `UsePreviousValue` (API_Parameter: "During a stack
/// update, use the existing parameter value that the stack is using"), where leaving it out
/// would give it the template's default ("If you don't specify a key and value for a particular
/// parameter, CloudFormation uses the default value that's specified in your template").
///
/// moto 5.2.5 does both (responses.py `create_change_set` takes a `UsePreviousValue` key's value
/// from the stack's resolved parameters; parsing.py `load_parameters` gives every declared
/// parameter not passed its `Default`), but it neither rejects `UsePreviousValue` for a key the
/// new template does not declare (AWS: "Parameters: [X] do not exist in the template") nor
/// answers one the stack does not have with AWS's error ("Cannot specify usePreviousValue as true
/// for a parameter key not in the previous template"), and it keeps listing a parameter the
/// new template dropped: what was sent is read from moto's request recorder.
#[tokio::test]
async fn parameters_set_outside_tollgate_survive_a_deploy_and_a_rollback() {
    let moto = MotoServer::start().unwrap(); // private: the recorder
    let f = fixture("cfn-kept");
    let Deploy::CloudFormation { template, .. } = &f.deploy else {
        unreachable!()
    };
    std::fs::write(template, template_with(&["Extra", "Gone"])).unwrap();
    let beta = account("beta", BETA, external_id(f._dir.path()));
    let cfn = deployer(moto.sdk_config(), Limiter::default());
    let first = request("kept/1/beta/1/deploy-0", &beta, &f.deploy, OLD);
    let created = cfn.deploy_stack(&first, &[]).await.unwrap();
    let config = moto.sdk_config_for_account(BETA).await.unwrap();
    let by_hand = |k: &str, v: &str| {
        aws_sdk_cloudformation::types::Parameter::builder()
            .parameter_key(k)
            .parameter_value(v)
            .build()
    };
    aws_sdk_cloudformation::Client::new(&config)
        .update_stack()
        .stack_name("cfn-kept")
        .use_previous_template(true)
        .parameters(by_hand("ImageUri", OLD))
        .parameters(by_hand("Env", "beta"))
        .parameters(by_hand("Extra", "by-hand"))
        .parameters(by_hand("Gone", "by-hand"))
        .send()
        .await
        .unwrap();
    std::fs::write(template, template_with(&["Extra", "Fresh"])).unwrap();

    moto.recorder_start().await.unwrap();
    let second = request("kept/2/beta/1/deploy-0", &beta, &f.deploy, NEW);
    let updated = cfn.deploy_stack(&second, &[]).await.unwrap();
    assert!(updated.summary.contains("UPDATE_COMPLETE"), "{updated:?}");
    let now = stack_parameters(&config, "cfn-kept").await;
    assert_eq!(now["ImageUri"], NEW);
    assert_eq!(now["Extra"], "by-hand", "{now:?}");
    assert_eq!(now["Fresh"], "Fresh-default", "{now:?}");

    let mut back = request("kept/2/beta/1/rollback-0", &beta, &f.deploy, OLD);
    back.restore = created.applied.clone();
    let rolled = cfn.rollback_stack(&back).await.unwrap();
    moto.recorder_stop().await.unwrap();
    assert!(rolled.summary.contains("recorded template"), "{rolled:?}");
    let now = stack_parameters(&config, "cfn-kept").await;
    assert_eq!(now["ImageUri"], OLD);
    assert_eq!(now["Extra"], "by-hand", "{now:?}");

    let requests = moto.recorded_requests().await.unwrap();
    let sent: Vec<_> = requests
        .iter()
        .filter(|r| r.action.as_deref() == Some("CreateChangeSet"))
        .map(|r| sent_parameters(&r.body))
        .collect();
    assert_eq!(sent.len(), 2, "{sent:?}");
    let deploy = &sent[0];
    assert_eq!(deploy["ImageUri"].as_deref(), Some(NEW));
    assert_eq!(deploy["Env"].as_deref(), Some("beta"));
    assert_eq!(deploy["Extra"], None, "kept: {deploy:?}");
    assert!(
        !deploy.contains_key("Gone"),
        "no longer declared: {deploy:?}"
    );
    assert!(
        !deploy.contains_key("Fresh"),
        "new, so not on the stack: {deploy:?}"
    );
    let rollback = &sent[1];
    assert_eq!(rollback["ImageUri"].as_deref(), Some(OLD));
    assert_eq!(rollback["Extra"], None, "kept: {rollback:?}");
    assert!(
        !rollback.contains_key("Fresh"),
        "not in the recorded template: {rollback:?}"
    );
    let configured = |a: Option<tollgate::engine::ports::Applied>| match a.unwrap().spec {
        tollgate::domain::AppliedSpec::CloudFormation { parameters, .. } => parameters,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        configured(rolled.applied),
        configured(created.applied),
        "the record's parameters are the configured ones"
    );
}

/// A parameter the configuration started to set with a bad release goes back, with the
/// rollback, to the value the stack had after the known-good deploy (recorded then): kept at
/// the stack's value instead, it would keep the bad release's setting.
#[tokio::test]
async fn a_rollback_restores_a_parameter_the_configuration_set_since_the_known_good_deploy() {
    let moto = MotoServer::shared();
    let f = fixture("cfn-reset");
    let Deploy::CloudFormation { template, .. } = &f.deploy else {
        unreachable!()
    };
    std::fs::write(template, template_with(&["Flag"])).unwrap();
    let beta = account("beta", BETA, external_id(f._dir.path()));
    let cfn = deployer(moto.sdk_config(), Limiter::default());
    // Keys (and so change set names) of their own: moto 5.2.5 finds a change set by its name
    // among every stack of the account and region (`describe_change_set`,
    // `execute_change_set` in `moto/cloudformation/models.py`), where CloudFormation looks in
    // the named stack only, so the lifecycle test's change sets of the same name, made at the
    // same time in the same account, would be executed instead.
    let good = request("reset/1/beta/1/deploy-0", &beta, &f.deploy, OLD);
    let known_good = cfn.deploy_stack(&good, &[]).await.unwrap();
    let config = moto.sdk_config_for_account(BETA).await.unwrap();
    assert_eq!(
        stack_parameters(&config, "cfn-reset").await["Flag"],
        "Flag-default"
    );

    // The configuration sets Flag with release 2.
    let mut bad = request("reset/2/beta/1/deploy-0", &beta, &f.deploy, NEW);
    if let Deploy::CloudFormation { parameters, .. } = &mut bad.deploy {
        parameters.insert("Flag".into(), "on".into());
    }
    cfn.deploy_stack(&bad, &[]).await.unwrap();
    assert_eq!(stack_parameters(&config, "cfn-reset").await["Flag"], "on");

    let mut back = request("reset/2/beta/1/rollback-0", &beta, &bad.deploy, OLD);
    back.restore = known_good.applied.clone();
    cfn.rollback_stack(&back).await.unwrap();
    let now = stack_parameters(&config, "cfn-reset").await;
    assert_eq!(now["ImageUri"], OLD);
    assert_eq!(now["Flag"], "Flag-default", "{now:?}");
}

// ---- the scripted stub, for what moto cannot do ----

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn after(action: &str, statuses: &[&str]) -> (String, Vec<String>) {
    (action.to_string(), strings(statuses))
}

fn stub_config(stub: &CloudFormationStub) -> SdkConfig {
    let credentials = aws_credential_types::Credentials::new("stub", "stub", None, None, "stub");
    SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(REGION))
        .endpoint_url(stub.endpoint())
        .credentials_provider(SharedCredentialsProvider::new(credentials))
        .build()
}

/// The controller's own account: no AssumeRole, so the stub sees CloudFormation calls only.
fn own_account() -> Account {
    Account {
        name: "tools".into(),
        id: "123456789012".into(),
        role_arn: None,
        external_id: None,
        region: REGION.into(),
        controller: true,
        session_duration: Duration::from_secs(3600),
        stack_events_topic: None,
    }
}

fn fast_retries() -> Limiter {
    Limiter::new(RetrySettings {
        base: Duration::from_millis(5),
        cap: Duration::from_millis(50),
        ..RetrySettings::default()
    })
}

async fn stub_deployer(script: Script) -> (CloudFormationStub, CloudFormationDeployer) {
    let stub = CloudFormationStub::start(script).await.unwrap();
    let cfn = deployer(stub_config(&stub), fast_retries());
    (stub, cfn)
}

fn position(calls: &[String], action: &str) -> usize {
    calls
        .iter()
        .position(|c| c == action)
        .unwrap_or_else(|| panic!("no {action} in {calls:?}"))
}

/// moto gap: transitions are instant, so a stack is never `*_IN_PROGRESS`.
#[tokio::test]
async fn a_busy_stack_is_waited_for_before_and_after_the_change_set() {
    let (stub, cfn) = stub_deployer(Script {
        statuses: strings(&[
            "UPDATE_COMPLETE_CLEANUP_IN_PROGRESS",
            "UPDATE_IN_PROGRESS",
            "UPDATE_COMPLETE",
        ]),
        after: vec![after(
            "ExecuteChangeSet",
            &[
                "UPDATE_IN_PROGRESS",
                "UPDATE_IN_PROGRESS",
                "UPDATE_COMPLETE",
            ],
        )],
        outputs: vec![("ImageUri".into(), NEW.into())],
        ..Script::default()
    })
    .await;
    let f = fixture("stub");
    let done = cfn
        .deploy_stack(&request("k/1", &own_account(), &f.deploy, NEW), &[])
        .await
        .unwrap();
    assert_eq!(done.outputs["ImageUri"], NEW);

    let calls = stub.accepted();
    let create = position(&calls, "CreateChangeSet");
    assert_eq!(
        calls[..create]
            .iter()
            .filter(|c| *c == "DescribeStacks")
            .count(),
        3,
        "{calls:?}"
    );
    let waits = calls[create..]
        .iter()
        .filter(|c| *c == "DescribeStacks")
        .count();
    assert_eq!(waits, 3, "{calls:?}");
    assert_eq!(stub.count("ExecuteChangeSet"), 1);
}

/// moto gaps: no `UPDATE_IN_PROGRESS` to interrupt, and `CancelUpdateStack` is not implemented.
#[tokio::test]
async fn a_rollback_cancels_an_update_in_flight_first() {
    let (stub, cfn) = stub_deployer(Script {
        statuses: strings(&["UPDATE_IN_PROGRESS"]),
        after: vec![
            after(
                "CancelUpdateStack",
                &["UPDATE_ROLLBACK_IN_PROGRESS", "UPDATE_ROLLBACK_COMPLETE"],
            ),
            after(
                "ExecuteChangeSet",
                &["UPDATE_IN_PROGRESS", "UPDATE_COMPLETE"],
            ),
        ],
        outputs: vec![("ImageUri".into(), OLD.into())],
        ..Script::default()
    })
    .await;
    let f = fixture("stub");
    let done = cfn
        .rollback_stack(&request("k/rollback", &own_account(), &f.deploy, OLD))
        .await
        .unwrap();
    assert_eq!(done.outputs["ImageUri"], OLD);

    let calls = stub.accepted();
    assert!(
        position(&calls, "CancelUpdateStack") < position(&calls, "CreateChangeSet"),
        "{calls:?}"
    );
    assert_eq!(stub.count("ExecuteChangeSet"), 1);
    let create = stub
        .calls()
        .into_iter()
        .find(|c| c.action == "CreateChangeSet")
        .unwrap();
    assert_eq!(create.form["ChangeSetType"], "UPDATE");
    assert_eq!(
        create.form["Parameters.member.2.ParameterValue"], OLD,
        "{:?}",
        create.form
    );
}

/// moto gaps: no `UPDATE_ROLLBACK_FAILED`, and `ContinueUpdateRollback` is not implemented.
#[tokio::test]
async fn a_rollback_continues_a_failed_rollback_first() {
    let (stub, cfn) = stub_deployer(Script {
        statuses: strings(&["UPDATE_ROLLBACK_FAILED"]),
        after: vec![
            after(
                "ContinueUpdateRollback",
                &["UPDATE_ROLLBACK_IN_PROGRESS", "UPDATE_ROLLBACK_COMPLETE"],
            ),
            after(
                "ExecuteChangeSet",
                &["UPDATE_IN_PROGRESS", "UPDATE_COMPLETE"],
            ),
        ],
        ..Script::default()
    })
    .await;
    let f = fixture("stub");
    cfn.rollback_stack(&request("k/rollback", &own_account(), &f.deploy, OLD))
        .await
        .unwrap();

    let calls = stub.accepted();
    assert!(
        position(&calls, "ContinueUpdateRollback") < position(&calls, "CreateChangeSet"),
        "{calls:?}"
    );
    assert!(!calls.contains(&"CancelUpdateStack".to_string()));
    assert_eq!(stub.count("ExecuteChangeSet"), 1);
}

/// moto gap: a failing resource leaves moto's stack in `CREATE_IN_PROGRESS` with a 500; there
/// are no rollback states and no failure events.
#[tokio::test]
async fn a_failed_update_reports_the_first_failing_resource_of_this_attempt() {
    let event = |id: &str, status: &str, reason: &str, token: &str| Event {
        logical_id: id.into(),
        resource_type: "AWS::ECS::Service".into(),
        status: status.into(),
        reason: reason.into(),
        token: token.into(),
        at: None,
    };
    let (_stub, cfn) = stub_deployer(Script {
        statuses: strings(&["UPDATE_COMPLETE"]),
        after: vec![after(
            "ExecuteChangeSet",
            &[
                "UPDATE_IN_PROGRESS",
                "UPDATE_ROLLBACK_IN_PROGRESS",
                "UPDATE_ROLLBACK_COMPLETE",
            ],
        )],
        events: vec![
            event(
                "stub",
                "UPDATE_ROLLBACK_IN_PROGRESS",
                "The following resource(s) failed to update: [Service]",
                TOKEN,
            ),
            event(
                "Worker",
                "UPDATE_FAILED",
                "Resource update cancelled",
                TOKEN,
            ),
            event(
                "Service",
                "UPDATE_FAILED",
                "Invalid request provided: image not found",
                TOKEN,
            ),
            event(
                "Service",
                "UPDATE_FAILED",
                "an older attempt",
                "tollgate-older",
            ),
        ],
        ..Script::default()
    })
    .await;
    let f = fixture("stub");
    let err = cfn
        .deploy_stack(&request("k/2", &own_account(), &f.deploy, NEW), &[])
        .await
        .unwrap_err();
    assert_eq!(
        err,
        PortError::Failed(
            "stack stub is UPDATE_ROLLBACK_COMPLETE: Service (AWS::ECS::Service) UPDATE_FAILED: \
             Invalid request provided: image not found"
                .into()
        )
    );
}

/// A busy stack's events: the failure that started the rollback is past `DescribeStackEvents`'s
/// first page (moto gap: moto neither pages its events nor fails resources). Pages are read
/// while they hold this attempt's events, and no further than the first older event of
/// another token: 3 of the 10 pages.
#[tokio::test]
async fn the_first_failure_is_found_on_a_later_page_of_the_stack_events() {
    let event = |id: &str, status: &str, reason: &str, token: &str| Event {
        logical_id: id.into(),
        resource_type: "AWS::ECS::Service".into(),
        status: status.into(),
        reason: reason.into(),
        token: token.into(),
        at: None,
    };
    let failed = "The following resource(s) failed to update: [Service]";
    let mut events = vec![event("stub", "UPDATE_ROLLBACK_IN_PROGRESS", failed, TOKEN)];
    for n in 1..=5 {
        let cancelled = "Resource update cancelled";
        events.push(event(
            &format!("Worker{n}"),
            "UPDATE_FAILED",
            cancelled,
            TOKEN,
        ));
    }
    let reason = "Invalid request provided: image not found";
    events.push(event("Service", "UPDATE_FAILED", reason, TOKEN));
    events.push(event("stub", "UPDATE_IN_PROGRESS", "User Initiated", TOKEN));
    for n in 1..=20 {
        let older = format!("tollgate-older-{}", n / 4);
        events.push(event(
            "Service",
            "UPDATE_FAILED",
            "an older attempt",
            &older,
        ));
    }
    let (stub, cfn) = stub_deployer(Script {
        statuses: strings(&["UPDATE_COMPLETE"]),
        after: vec![after(
            "ExecuteChangeSet",
            &["UPDATE_ROLLBACK_IN_PROGRESS", "UPDATE_ROLLBACK_COMPLETE"],
        )],
        events,
        events_per_page: Some(3),
        ..Script::default()
    })
    .await;
    let f = fixture("stub");
    let err = cfn
        .deploy_stack(&request("k/2", &own_account(), &f.deploy, NEW), &[])
        .await
        .unwrap_err();
    assert_eq!(
        err,
        PortError::Failed(format!(
            "stack stub is UPDATE_ROLLBACK_COMPLETE: Service (AWS::ECS::Service) UPDATE_FAILED: \
             {reason}"
        ))
    );
    let pages: Vec<Option<String>> = stub
        .calls()
        .iter()
        .filter(|c| c.action == "DescribeStackEvents")
        .map(|c| c.form.get("NextToken").cloned())
        .collect();
    let expected = [None, Some("events-3"), Some("events-6")];
    assert_eq!(pages, expected.map(|t| t.map(String::from)));
}

/// However long the stack's history, at most 10 pages of its events are read for one failure.
#[tokio::test]
async fn at_most_ten_pages_of_stack_events_are_read() {
    let cancelled = |n: usize| Event {
        logical_id: format!("Worker{n}"),
        resource_type: "AWS::ECS::Service".into(),
        status: "UPDATE_FAILED".into(),
        reason: "Resource update cancelled".into(),
        token: TOKEN.into(),
        at: None,
    };
    let (stub, cfn) = stub_deployer(Script {
        statuses: strings(&["UPDATE_COMPLETE"]),
        after: vec![after("ExecuteChangeSet", &["UPDATE_ROLLBACK_COMPLETE"])],
        events: (1..=50).map(cancelled).collect(),
        events_per_page: Some(2),
        ..Script::default()
    })
    .await;
    let f = fixture("stub");
    let err = cfn
        .deploy_stack(&request("k/2", &own_account(), &f.deploy, NEW), &[])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("Worker20 "), "{err}");
    assert_eq!(stub.count("DescribeStackEvents"), 10);
}

/// moto gap: moto cannot be told to throttle.
#[tokio::test]
async fn throttling_is_retried_and_never_deploys_twice() {
    let (stub, cfn) = stub_deployer(Script {
        statuses: strings(&["UPDATE_COMPLETE"]),
        after: vec![after(
            "ExecuteChangeSet",
            &["UPDATE_IN_PROGRESS", "UPDATE_COMPLETE"],
        )],
        throttle: vec![("CreateChangeSet".into(), 2)],
        ..Script::default()
    })
    .await;
    let f = fixture("stub");
    cfn.deploy_stack(&request("k/3", &own_account(), &f.deploy, NEW), &[])
        .await
        .unwrap();

    let throttled: Vec<_> = stub
        .calls()
        .into_iter()
        .filter(|c| c.throttled)
        .map(|c| c.action)
        .collect();
    assert_eq!(throttled, ["CreateChangeSet", "CreateChangeSet"]);
    let executes = stub
        .calls()
        .into_iter()
        .filter(|c| c.action == "ExecuteChangeSet")
        .count();
    assert_eq!(executes, 1, "the stub saw exactly one ExecuteChangeSet");
}

/// moto gap: moto cannot be told to throttle. Throttling of `DescribeStacks` that outlasts one
/// call's retries (8 attempts) does not end the wait for the stack, which goes on looking on
/// its schedule: a wait of up to an hour is not failed, nor a rollback started, by a few
/// seconds of throttling while the stack carries on.
#[tokio::test]
async fn throttling_that_outlasts_a_calls_retries_does_not_end_a_wait() {
    let (stub, cfn) = running(
        OLD,
        Script {
            throttle: vec![("DescribeStacks".into(), 20)],
            ..Script::default()
        },
    )
    .await;
    let f = fixture("stub");
    cfn.deploy_stack(
        &request("k/throttled-wait", &own_account(), &f.deploy, NEW),
        &[],
    )
    .await
    .unwrap();

    let throttled = stub.calls().iter().filter(|c| c.throttled).count();
    assert_eq!(throttled, 20);
    assert_eq!(stub.executed(), 1);
    assert_eq!(stub.parameters()["ImageUri"], NEW);
}

/// Runs `run` (a deploy or a rollback) until the stub has executed a change set, then drops
/// it, as a crash would: its update goes on without it.
async fn stop_once_executed<T: std::fmt::Debug>(
    stub: &CloudFormationStub,
    run: impl std::future::Future<Output = T>,
) {
    tokio::select! {
        r = run => panic!("the run outlived its update: {r:?}"),
        () = async {
            while stub.executed() == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        } => {}
    }
}

/// moto gap: no update is ever in flight. A rollback run again under its key (after a crash,
/// by a new leader, or past its deadline) while its own change set is still executing waits
/// for it. Cancelling it would return the stack to the release being rolled back ("the stack
/// rolls back the update and reverts to the previous stack configuration",
/// API_CancelUpdateStack).
#[tokio::test]
async fn a_rollback_run_again_waits_for_its_own_update_instead_of_cancelling_it() {
    let (stub, cfn) = running(
        NEW,
        Script {
            update_takes: Some(Duration::from_secs(1)),
            ..Script::default()
        },
    )
    .await;
    let f = fixture("stub");
    let req = request("k/rollback-again", &own_account(), &f.deploy, OLD);
    // The first run stops (as at a crash) once its change set is executing.
    stop_once_executed(&stub, cfn.rollback_stack(&req)).await;

    cfn.rollback_stack(&req).await.unwrap();
    assert_eq!(stub.count("CancelUpdateStack"), 0, "{:?}", stub.accepted());
    assert_eq!(
        stub.executed(),
        1,
        "the first run's change set did the rollback"
    );
    assert_eq!(stub.parameters()["ImageUri"], OLD);
}

/// Someone else's update in flight (another change set's) is cancelled, as before: the stub
/// rolls it back as CloudFormation does, and the rollback's own change set runs after.
#[tokio::test]
async fn a_rollback_cancels_someone_elses_update_in_flight() {
    let (stub, cfn) = running(
        OLD,
        Script {
            update_takes: Some(Duration::from_secs(2)),
            ..Script::default()
        },
    )
    .await;
    let f = fixture("stub");
    // Their deploy of NEW, still in progress.
    let theirs = request("k/theirs", &own_account(), &f.deploy, NEW);
    stop_once_executed(&stub, cfn.deploy_stack(&theirs, &[])).await;

    let req = request("k/rollback-theirs", &own_account(), &f.deploy, OLD);
    cfn.rollback_stack(&req).await.unwrap();
    assert_eq!(stub.count("CancelUpdateStack"), 1, "{:?}", stub.accepted());
    assert_eq!(stub.executed(), 2, "theirs, then the rollback's own");
    assert_eq!(stub.parameters()["ImageUri"], OLD);
}

/// CloudFormation replaces a stack's `NotificationARNs` with the list a change set gives
/// (CreateChangeSet): the account's stack-events topic is added to the topics the stack
/// already publishes to, never sent alone in their place.
#[tokio::test]
async fn the_stack_events_topic_is_added_to_the_stacks_own_topics() {
    let ops = format!("arn:aws:sns:{REGION}:123456789012:ops-pager");
    let ours = format!("arn:aws:sns:{REGION}:123456789012:tollgate-stack-events");
    let (stub, cfn) = running(
        OLD,
        Script {
            notification_arns: vec![ops.clone()],
            ..Script::default()
        },
    )
    .await;
    let account = Account {
        stack_events_topic: Some(ours.as_str().into()),
        ..own_account()
    };
    let f = fixture("stub");
    cfn.deploy_stack(&request("k/topics", &account, &f.deploy, NEW), &[])
        .await
        .unwrap();
    assert_eq!(stub.notification_arns(), [ops.clone(), ours.clone()]);

    // Deployed again: the list stays as it is.
    cfn.deploy_stack(&request("k/topics-2", &account, &f.deploy, OLD), &[])
        .await
        .unwrap();
    assert_eq!(stub.notification_arns(), [ops, ours]);
}

/// A stack that already publishes to five topics (CloudFormation's most) cannot take the
/// account's stack-events topic: a clear error before any change set, the stack untouched.
#[tokio::test]
async fn a_stack_with_five_topics_is_an_error_naming_them() {
    let theirs: Vec<String> = (1..=5)
        .map(|n| format!("arn:aws:sns:{REGION}:123456789012:team-{n}"))
        .collect();
    let (stub, cfn) = running(
        OLD,
        Script {
            notification_arns: theirs.clone(),
            ..Script::default()
        },
    )
    .await;
    let ours = format!("arn:aws:sns:{REGION}:123456789012:tollgate-stack-events");
    let account = Account {
        stack_events_topic: Some(ours.as_str().into()),
        ..own_account()
    };
    let f = fixture("stub");
    let err = cfn
        .deploy_stack(&request("k/too-many", &account, &f.deploy, NEW), &[])
        .await
        .unwrap_err();
    let PortError::Invalid(message) = &err else {
        panic!("not invalid: {err:?}");
    };
    assert!(
        message.contains("team-5") && message.contains(&ours),
        "{message}"
    );
    assert_eq!(stub.count("CreateChangeSet"), 0);
    assert_eq!(stub.notification_arns(), theirs);
}

// ---- rollback triggers (moto gap: RollbackConfiguration is accepted and ignored) ----

const ALARMS: [&str; 3] = ["api-5xx", "latency-p99", "queue-depth"];

/// `AwsDeployer` against the CloudFormation stub, whose rollback triggers read the alarms of a
/// CloudWatch stub that the deployer also reads (for an alarm override).
struct Triggered {
    cfn: CloudFormationStub,
    cloudwatch: CloudWatchStub,
    deployer: AwsDeployer,
    /// The CloudWatch reader the deployer asks.
    states: Arc<CloudWatchAlarms>,
}

/// The stage's alarms are [`ALARMS`], those in `firing` in ALARM and the others OK; the stack
/// runs `image` and kept the stage's alarms as triggers from its last deploy.
async fn triggered(image: &str, firing: &[&str]) -> Triggered {
    let cloudwatch = CloudWatchStub::start().await.unwrap();
    for name in ALARMS {
        let state = if firing.contains(&name) {
            "ALARM"
        } else {
            "OK"
        };
        cloudwatch.set_alarm(name, state);
    }
    let own = own_account();
    let script = Script {
        statuses: strings(&["UPDATE_COMPLETE"]),
        parameters: vec![
            ("Env".into(), "beta".into()),
            ("ImageUri".into(), image.into()),
        ],
        triggers: ALARMS.map(|a| alarm_arn(a, REGION, &own.id)).to_vec(),
        alarms: Some(cloudwatch.states()),
        ..Script::default()
    };
    let cfn = CloudFormationStub::start(script).await.unwrap();
    let limiter = Arc::new(fast_retries());
    let creds = Arc::new(Credentials::new(stub_config(&cfn), limiter.clone()));
    let states = Arc::new(
        CloudWatchAlarms::new(creds.clone(), limiter.clone())
            .with_endpoint_url(cloudwatch.endpoint()),
    );
    let deployer = AwsDeployer::new(
        CloudFormationDeployer::new(creds.clone(), PollSettings::fast()),
        CodePipelineDeployer::new(creds, limiter, Poll::default()),
        Arc::new(|_: &str, _: &str| strings(&ALARMS)),
        states.clone(),
    );
    Triggered {
        cfn,
        cloudwatch,
        deployer,
        states,
    }
}

impl Triggered {
    /// The stack's status and parameters, read through the SDK.
    async fn stack(&self) -> (String, BTreeMap<String, String>) {
        let out = aws_sdk_cloudformation::Client::new(&stub_config(&self.cfn))
            .describe_stacks()
            .stack_name("stub")
            .send()
            .await
            .unwrap();
        let stack = &out.stacks()[0];
        let parameters = stack.parameters().iter().map(|p| {
            let key = p.parameter_key().unwrap_or_default().to_string();
            (key, p.parameter_value().unwrap_or_default().to_string())
        });
        let status = stack.stack_status().unwrap().as_str().to_string();
        (status, parameters.collect())
    }

    /// The alarm names the one `CreateChangeSet` listed as rollback triggers; `None` when it
    /// named no list at all (the stack would keep its old triggers).
    fn triggers_sent(&self) -> Option<Vec<String>> {
        let calls = self.cfn.calls();
        let creates: Vec<_> = calls
            .iter()
            .filter(|c| c.action == "CreateChangeSet")
            .collect();
        assert_eq!(creates.len(), 1, "{calls:?}");
        let form = &creates[0].form;
        let list = "RollbackConfiguration.RollbackTriggers";
        let arns: Vec<String> = (1..)
            .map_while(|n| form.get(&format!("{list}.member.{n}.Arn")))
            .map(|arn| arn.rsplit(':').next().unwrap().to_string())
            .collect();
        (form.contains_key(list) || !arns.is_empty()).then_some(arns)
    }
}

/// The alarm that sends a stage into rollback is still in ALARM while the rollback runs: the
/// rollback must not list it (or keep the stack's earlier triggers), or CloudFormation would
/// roll the rollback back and leave the bad release running.
#[tokio::test]
async fn a_rollback_while_the_alarm_fires_restores_the_known_good_image() {
    let t = triggered(NEW, &["api-5xx"]).await;
    let f = fixture("stub");
    let req = request("k/rollback", &own_account(), &f.deploy, OLD);

    let done = t.deployer.rollback(&req).await;
    let (status, parameters) = t.stack().await;
    assert_eq!(status, "UPDATE_COMPLETE", "{done:?}");
    assert_eq!(parameters["ImageUri"], OLD);
    assert!(done.unwrap().summary.contains("deployed"));
    assert_eq!(t.triggers_sent(), Some(vec![]), "an empty list clears them");
    assert_eq!(t.cfn.count("ExecuteChangeSet"), 1);
}

/// `tollgate override --alarms`: the deploy goes ahead while `api-5xx` fires, watched by the
/// other alarms only, and says which trigger it left out.
#[tokio::test]
async fn a_deploy_under_an_alarm_override_leaves_out_the_firing_trigger_and_says_so() {
    let t = triggered(OLD, &["api-5xx"]).await;
    let f = fixture("stub");
    let mut req = request("k/override", &own_account(), &f.deploy, NEW);
    req.alarm_override = true;

    let done = t.deployer.deploy(&req).await.unwrap();
    let (status, parameters) = t.stack().await;
    assert_eq!(status, "UPDATE_COMPLETE");
    assert_eq!(parameters["ImageUri"], NEW);
    assert_eq!(
        t.triggers_sent(),
        Some(strings(&["latency-p99", "queue-depth"]))
    );
    assert!(
        done.summary
            .ends_with("alarm override: left out the rollback triggers in ALARM: api-5xx"),
        "{}",
        done.summary
    );
    let asked = t.cloudwatch.calls();
    assert_eq!(asked.len(), 1, "{asked:?}");
    assert_eq!(asked[0].alarm_names, strings(&ALARMS));
}

/// Without an override, the stage's alarms are triggers: one in ALARM makes CloudFormation
/// roll the update back, and the deploy fails with the reason the stack gave.
#[tokio::test]
async fn a_deploy_while_a_trigger_alarm_fires_is_rolled_back_and_fails() {
    let t = triggered(OLD, &["api-5xx"]).await;
    let f = fixture("stub");
    let req = request("k/plain", &own_account(), &f.deploy, NEW);

    let err = t.deployer.deploy(&req).await.unwrap_err();
    let (status, parameters) = t.stack().await;
    assert_eq!(status, "UPDATE_ROLLBACK_COMPLETE");
    assert_eq!(parameters["ImageUri"], OLD, "the update was undone");
    assert_eq!(t.triggers_sent(), Some(strings(&ALARMS)));
    let PortError::Failed(reason) = &err else {
        panic!("{err:?}")
    };
    assert!(
        reason.starts_with("stack stub is UPDATE_ROLLBACK_COMPLETE: ")
            && reason.contains("api-5xx"),
        "{reason}"
    );
    // No override: the alarms are read only for their kinds (metric or composite), once.
    let asked = t.cloudwatch.calls();
    assert_eq!(asked.len(), 1, "{asked:?}");
    assert_eq!(asked[0].alarm_names, strings(&ALARMS));
}

/// A composite alarm among the stage's alarms is sent as a trigger of type
/// `AWS::CloudWatch::CompositeAlarm`: under `AWS::CloudWatch::Alarm` CloudFormation would not
/// find it and fail every deploy of the stage (API_RollbackTrigger: "If a specified trigger is
/// missing, the entire stack operation fails and is rolled back"). The kinds come from the
/// alarms the deployer's CloudWatch reader already read (the entry gate's read in the
/// controller), so a deploy after such a read costs no further `DescribeAlarms`.
#[tokio::test]
async fn a_composite_alarm_is_a_trigger_of_its_own_type() {
    let t = triggered(OLD, &[]).await;
    t.cloudwatch
        .set_alarm_watching("queue-depth", "OK", Watches::Alarms(vec!["api-5xx".into()]));
    let f = fixture("stub");
    let own = own_account();
    // The entry gate's read, through the same reader the deployer asks.
    t.states
        .in_alarm(&own, REGION, &strings(&ALARMS))
        .await
        .unwrap();

    let req = request("k/composite", &own, &f.deploy, NEW);
    t.deployer.deploy(&req).await.unwrap();
    let (status, parameters) = t.stack().await;
    assert_eq!(status, "UPDATE_COMPLETE");
    assert_eq!(parameters["ImageUri"], NEW);
    let calls = t.cfn.calls();
    let create = calls
        .iter()
        .find(|c| c.action == "CreateChangeSet")
        .unwrap();
    let types: Vec<&str> = (1..=3)
        .map(|n| {
            create.form[&format!("RollbackConfiguration.RollbackTriggers.member.{n}.Type")].as_str()
        })
        .collect();
    assert_eq!(
        types,
        [
            "AWS::CloudWatch::Alarm",
            "AWS::CloudWatch::Alarm",
            "AWS::CloudWatch::CompositeAlarm"
        ]
    );
    assert_eq!(t.cloudwatch.calls().len(), 1, "only the gate's read");
}

// ---- "deployed" is read back (moto gap: moto never refuses ExecuteChangeSet with
// InvalidChangeSetStatus, has no concurrent updates and never loses a reply) ----

const THEIRS: &str = "222222222222.dkr.ecr.us-east-1.amazonaws.com/app@sha256:9999";

/// A stack that runs `image` with `Env=beta`, and the stub's other behaviours from `script`.
async fn running(image: &str, script: Script) -> (CloudFormationStub, CloudFormationDeployer) {
    stub_deployer(Script {
        statuses: strings(&["UPDATE_COMPLETE"]),
        parameters: vec![
            ("Env".into(), "beta".into()),
            ("ImageUri".into(), image.into()),
        ],
        ..script
    })
    .await
}

/// The stub refuses `UsePreviousValue` where AWS does (see its module doc): for a parameter
/// the new template no longer declares and for one the stack does not have yet. moto accepts
/// both (the first silently, the second with an internal error), so the rule is checked here.
#[tokio::test]
async fn only_parameters_on_the_stack_and_in_the_new_template_keep_their_value() {
    let (stub, cfn) = stub_deployer(Script {
        statuses: strings(&["UPDATE_COMPLETE"]),
        parameters: [
            ("Env", "beta"),
            ("ImageUri", OLD),
            ("Extra", "by-hand"),
            ("Gone", "by-hand"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .into(),
        ..Script::default()
    })
    .await;
    let f = fixture("stub");
    let Deploy::CloudFormation { template, .. } = &f.deploy else {
        unreachable!()
    };
    std::fs::write(template, template_with(&["Extra", "Fresh"])).unwrap();

    let done = cfn
        .deploy_stack(&request("k/kept", &own_account(), &f.deploy, NEW), &[])
        .await
        .unwrap();
    assert!(done.summary.contains("UPDATE_COMPLETE"), "{done:?}");
    let expected = [
        ("Env", "beta"),
        ("Extra", "by-hand"),
        ("Fresh", "Fresh-default"),
        ("ImageUri", NEW),
    ]
    .map(|(k, v)| (k.to_string(), v.to_string()));
    assert_eq!(stub.parameters(), BTreeMap::from(expected));
}

/// Someone else's update lands while our change set is being made: the change set is seen
/// `OBSOLETE`, deleted, and made again under the same name with a `ClientToken` of its own (a
/// token reused for another request after a delete is not documented); the new one runs our
/// image, once, with the configured parameters, and keeps the value their update gave a
/// parameter the configuration does not set.
#[tokio::test]
async fn a_change_set_gone_obsolete_while_made_is_made_again_and_runs_once() {
    let param = |k: &str, v: &str| (k.to_string(), v.to_string());
    let theirs = vec![
        param("Env", "beta-theirs"),
        param("ImageUri", OLD),
        param("Flag", "theirs"),
    ];
    let (stub, cfn) = stub_deployer(Script {
        statuses: strings(&["UPDATE_COMPLETE"]),
        parameters: vec![
            param("Env", "beta"),
            param("ImageUri", OLD),
            param("Flag", "ours"),
        ],
        foreign_update: Some(theirs),
        foreign_update_before: Some("DescribeChangeSet".into()),
        ..Script::default()
    })
    .await;
    let f = fixture("stub");
    let Deploy::CloudFormation { template, .. } = &f.deploy else {
        unreachable!()
    };
    std::fs::write(template, template_with(&["Flag"])).unwrap();
    let req = request("k/obsolete", &own_account(), &f.deploy, NEW);

    let done = cfn.deploy_stack(&req, &[]).await.unwrap();
    assert!(done.summary.contains("deployed"), "{done:?}");
    assert_eq!(stub.count("CreateChangeSet"), 2, "{:?}", stub.accepted());
    assert_eq!(stub.count("DeleteChangeSet"), 1);
    assert_eq!(stub.count("ExecuteChangeSet"), 1);
    assert_eq!(stub.executed(), 1);
    let now = stub.parameters();
    assert_eq!(now["ImageUri"], NEW);
    assert_eq!(now["Env"], "beta", "the configuration's, over theirs");
    assert_eq!(now["Flag"], "theirs", "kept as the stack has it now");
    let creates: Vec<_> = stub
        .calls()
        .into_iter()
        .filter(|c| c.action == "CreateChangeSet")
        .collect();
    assert_eq!(
        creates[0].form["ChangeSetName"],
        creates[1].form["ChangeSetName"]
    );
    assert_ne!(
        creates[0].form["ClientToken"], creates[1].form["ClientToken"],
        "a new request, a new token"
    );
}

/// `CreateChangeSet` takes effect but its reply is lost: the retry carries the request's
/// `ClientToken`, which CloudFormation answers as that request (API_CreateChangeSet), and goes
/// on with the change set the first request made. One change set, run once.
#[tokio::test]
async fn a_change_set_whose_creation_reply_was_lost_is_made_once() {
    let (stub, cfn) = running(
        OLD,
        Script {
            lost_replies: vec!["CreateChangeSet".into()],
            ..Script::default()
        },
    )
    .await;
    let f = fixture("stub");
    let req = request("k/lost-create", &own_account(), &f.deploy, NEW);

    cfn.deploy_stack(&req, &[]).await.unwrap();
    assert_eq!(stub.count("CreateChangeSet"), 2, "{:?}", stub.accepted());
    assert_eq!(stub.count("ExecuteChangeSet"), 1);
    assert_eq!(stub.executed(), 1);
    assert_eq!(stub.parameters()["ImageUri"], NEW);
    let tokens: Vec<String> = stub
        .calls()
        .into_iter()
        .filter(|c| c.action == "CreateChangeSet")
        .map(|c| c.form["ClientToken"].clone())
        .collect();
    assert_eq!(tokens[0], tokens[1], "the retry is the same request");
}

/// Someone else's update lands between our change set and its execution: CloudFormation
/// refuses the now obsolete change set with `InvalidChangeSetStatus`. The stack runs their
/// image, so this is drift, not a deploy.
#[tokio::test]
async fn an_update_someone_else_made_first_is_drift_not_success() {
    let theirs = vec![
        ("Env".to_string(), "beta".to_string()),
        ("ImageUri".to_string(), THEIRS.to_string()),
    ];
    let (stub, cfn) = running(
        OLD,
        Script {
            foreign_update: Some(theirs),
            ..Script::default()
        },
    )
    .await;
    let f = fixture("stub");
    let req = request("k/foreign", &own_account(), &f.deploy, NEW);

    let err = cfn.deploy_stack(&req, &[]).await.unwrap_err();
    assert_eq!(
        err,
        PortError::Drift {
            expected: NEW.into(),
            found: THEIRS.into()
        }
    );
    assert_eq!(stub.count("ExecuteChangeSet"), 1, "{:?}", stub.accepted());
    assert_eq!(stub.executed(), 0, "our change set never ran");
    assert_eq!(stub.parameters()["ImageUri"], THEIRS, "their update stands");

    // A rollback meeting the same is drift too, never a restored stage.
    let (_stub, cfn) = running(
        NEW,
        Script {
            foreign_update: Some(vec![("ImageUri".into(), THEIRS.into())]),
            ..Script::default()
        },
    )
    .await;
    let back = request("k/foreign-rollback", &own_account(), &f.deploy, OLD);
    let err = cfn.rollback_stack(&back).await.unwrap_err();
    assert!(
        matches!(&err, PortError::Drift { expected, found } if expected == OLD && found == THEIRS),
        "{err:?}"
    );
}

/// Our `ExecuteChangeSet` ran but its reply was lost; the SDK's retry is refused with
/// `InvalidChangeSetStatus` (already executed). The stack, read back, runs our image: it is
/// our own update, and a success with exactly one execution that took effect.
#[tokio::test]
async fn our_own_change_set_executed_before_a_lost_reply_is_recognised_as_ours() {
    let (stub, cfn) = running(
        OLD,
        Script {
            lost_replies: strings(&["ExecuteChangeSet"]),
            ..Script::default()
        },
    )
    .await;
    let f = fixture("stub");
    let req = request("k/lost-reply", &own_account(), &f.deploy, NEW);

    let done = cfn.deploy_stack(&req, &[]).await.unwrap();
    assert_eq!(stub.count("ExecuteChangeSet"), 2, "{:?}", stub.accepted());
    assert_eq!(stub.executed(), 1, "one execution took effect");
    assert_eq!(stub.parameters()["ImageUri"], NEW);
    assert!(
        done.summary.contains("InvalidChangeSetStatus") && done.summary.contains("UPDATE_COMPLETE"),
        "{}",
        done.summary
    );

    // The whole deploy repeated under its key (after a crash): no second execution.
    let again = cfn.deploy_stack(&req, &[]).await.unwrap();
    assert_eq!(stub.executed(), 1);
    assert_eq!(stub.count("ExecuteChangeSet"), 2, "{:?}", stub.accepted());
    assert!(again.summary.contains("deployed"), "{}", again.summary);
}

/// A rollback with the recorded spec of the known-good deploy sends exactly that template,
/// those parameters, capabilities and role, whatever the stage's configuration says today.
#[tokio::test]
async fn a_rollback_applies_the_recorded_spec_not_todays_configuration() {
    use tollgate::domain::AppliedSpec;
    use tollgate::engine::ports::Applied;
    let (stub, cfn) = running(NEW, Script::default()).await;
    let f = fixture("stub"); // today's configuration: Env=beta, CAPABILITY_IAM, no role
    let recorded_body = TEMPLATE.replace("\"Default\": \"none\"", "\"Default\": \"old\"");
    let mut back = request("k/exact", &own_account(), &f.deploy, OLD);
    back.restore = Some(Applied {
        spec: AppliedSpec::CloudFormation {
            stack: "stub".into(),
            template_sha256: tollgate::aws::cloudformation::template_sha256(&recorded_body),
            parameters: BTreeMap::from([
                ("Env".to_string(), "then".to_string()),
                ("ImageUri".to_string(), OLD.to_string()),
            ]),
            image_parameter: "ImageUri".into(),
            capabilities: vec!["CAPABILITY_NAMED_IAM".into()],
            execution_role: Some("arn:aws:iam::123456789012:role/cfn-exec".into()),
            observed: BTreeMap::new(),
        },
        template_body: Some(recorded_body.clone()),
    });

    let done = cfn.rollback_stack(&back).await.unwrap();
    assert!(
        done.summary.contains("recorded template"),
        "{}",
        done.summary
    );
    let calls = stub.calls();
    let create = calls
        .iter()
        .find(|c| c.action == "CreateChangeSet")
        .unwrap();
    assert_eq!(create.form["TemplateBody"], recorded_body);
    assert_eq!(create.form["Parameters.member.1.ParameterKey"], "Env");
    assert_eq!(create.form["Parameters.member.1.ParameterValue"], "then");
    assert_eq!(create.form["Capabilities.member.1"], "CAPABILITY_NAMED_IAM");
    assert_eq!(
        create.form["RoleARN"],
        "arn:aws:iam::123456789012:role/cfn-exec"
    );
    assert_eq!(stub.parameters()["Env"], "then");
    assert_eq!(stub.parameters()["ImageUri"], OLD);
}

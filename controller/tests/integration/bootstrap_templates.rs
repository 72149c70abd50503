//! The bootstrap templates in `accounts/bootstrap/` are valid CloudFormation: cfn-lint (the
//! real linter, pinned by `scripts/test`) finds nothing, and each one creates as a stack in a
//! stage account emulated by moto, through the real AWS SDK's CloudFormation client.
//! A missing tool fails the test: it is never skipped.

use std::path::{Path, PathBuf};
use std::process::Command;

use aws_sdk_cloudformation::types::{Capability, Parameter, StackStatus};
use tollgate_testkit::moto::MotoServer;

const STAGE_ACCOUNT: &str = "222222222222";

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn templates() -> Vec<PathBuf> {
    let dir = workspace_root().join("accounts/bootstrap");
    let mut found: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    found.sort();
    let names: Vec<_> = found
        .iter()
        .map(|p| p.file_name().unwrap().to_owned())
        .collect();
    assert_eq!(
        names,
        ["deploy-role.yaml", "execution-role.yaml"],
        "templates in {}",
        dir.display()
    );
    found
}

fn cfn_lint() -> PathBuf {
    let path = match std::env::var_os("TOLLGATE_CFN_LINT") {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => workspace_root().join(".venv/bin/cfn-lint"),
    };
    assert!(
        path.is_file(),
        "cfn-lint not found at {}: run scripts/test once (it installs cfn-lint into .venv), or \
         set TOLLGATE_CFN_LINT",
        path.display()
    );
    path
}

#[test]
fn cfn_lint_finds_nothing_in_the_bootstrap_templates() {
    let output = Command::new(cfn_lint())
        .args(templates())
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

fn parameters(pairs: &[(&str, &str)]) -> Vec<Parameter> {
    let parameter = |(key, value): &(&str, &str)| {
        Parameter::builder()
            .parameter_key(*key)
            .parameter_value(*value)
            .build()
    };
    pairs.iter().map(parameter).collect()
}

/// The logical ids of the stack's resources. moto 5.2.5 lists a resource left out by a false
/// `Condition` as a summary with an empty logical id and type; those are dropped here.
async fn resources(cfn: &aws_sdk_cloudformation::Client, stack: &str) -> Vec<String> {
    let listed = cfn.list_stack_resources().stack_name(stack).send().await;
    let listed = listed.unwrap_or_else(|e| panic!("ListStackResources {stack}: {e:?}"));
    let mut ids: Vec<String> = (listed.stack_resource_summaries().iter())
        .filter_map(|r| r.logical_resource_id())
        .filter(|id| !id.is_empty())
        .map(str::to_owned)
        .collect();
    ids.sort();
    ids
}

/// Creates `template` as stack `name` and returns its outputs once it is CREATE_COMPLETE.
async fn create_stack(
    cfn: &aws_sdk_cloudformation::Client,
    name: &str,
    template: &str,
    params: &[(&str, &str)],
) -> Vec<(String, String)> {
    let body = std::fs::read_to_string(workspace_root().join("accounts/bootstrap").join(template))
        .unwrap();
    cfn.create_stack()
        .stack_name(name)
        .template_body(body)
        .set_parameters(Some(parameters(params)))
        .capabilities(Capability::CapabilityNamedIam)
        .send()
        .await
        .unwrap_or_else(|e| panic!("CreateStack {name} from {template}: {e:?}"));
    let described = cfn.describe_stacks().stack_name(name).send().await.unwrap();
    let stack = &described.stacks()[0];
    assert_eq!(
        stack.stack_status(),
        Some(&StackStatus::CreateComplete),
        "{name}: {:?}",
        stack.stack_status_reason()
    );
    let output = |o: &aws_sdk_cloudformation::types::Output| {
        (
            o.output_key().unwrap().to_owned(),
            o.output_value().unwrap().to_owned(),
        )
    };
    stack.outputs().iter().map(output).collect()
}

#[tokio::test]
async fn the_bootstrap_templates_create_in_a_stage_account() {
    let moto = MotoServer::shared();
    let config = moto.sdk_config_for_account(STAGE_ACCOUNT).await.unwrap();
    let cfn = aws_sdk_cloudformation::Client::new(&config);

    let stack = "tollgate-bootstrap-execution";
    let params = [("ResourceNamePrefix", "backend-")];
    let outputs = create_stack(&cfn, stack, "execution-role.yaml", &params).await;
    let role_arn = format!("arn:aws:iam::{STAGE_ACCOUNT}:role/tollgate-cfn-execution");
    assert!(
        outputs.contains(&("RoleArn".into(), role_arn)),
        "{outputs:?}"
    );
    assert_eq!(resources(&cfn, stack).await, ["ExecutionRole"]);

    let mut params = vec![
        (
            "ControllerRoleArn",
            "arn:aws:iam::111111111111:role/tollgate-controller",
        ),
        ("ExternalId", "0123456789abcdef0123456789abcdef"),
        ("StackNamePrefix", "backend-"),
        (
            "ArtifactRepositoryArn",
            "arn:aws:ecr:us-east-1:111111111111:repository/backend",
        ),
        ("AlarmNamePrefix", "backend-beta-"),
        ("DeployRegions", "us-east-1,eu-west-1"),
    ];
    let stack = "tollgate-bootstrap-deploy";
    let outputs = create_stack(&cfn, stack, "deploy-role.yaml", &params).await;
    let role_arn = format!("arn:aws:iam::{STAGE_ACCOUNT}:role/tollgate-deploy");
    assert!(
        outputs.contains(&("RoleArn".into(), role_arn)),
        "{outputs:?}"
    );
    assert_eq!(resources(&cfn, stack).await, ["DeployRole"]);

    // With an approval topic, the conditional publish policy is created too.
    let topic = format!("arn:aws:sns:us-east-1:{STAGE_ACCOUNT}:tollgate-approvals");
    params.push(("ApprovalTopicArn", &topic));
    params.push(("RoleName", "tollgate-deploy-with-topic"));
    let stack = "tollgate-bootstrap-deploy-topic";
    create_stack(&cfn, stack, "deploy-role.yaml", &params).await;
    assert_eq!(
        resources(&cfn, stack).await,
        ["ApprovalTopicPolicy", "DeployRole"]
    );

    // A stage with composite alarms gets DescribeAlarms on `*` (CloudWatch describes
    // composite alarms only under that scope), in a policy of its own.
    params.pop();
    params.pop();
    params.push(("CompositeAlarms", "true"));
    params.push(("RoleName", "tollgate-deploy-composite"));
    let stack = "tollgate-bootstrap-deploy-composite";
    create_stack(&cfn, stack, "deploy-role.yaml", &params).await;
    assert_eq!(
        resources(&cfn, stack).await,
        ["CompositeAlarmsPolicy", "DeployRole"]
    );

    // With the controller's URL, the stack-events topic and its HTTPS subscription too.
    params.pop();
    params.pop();
    params.push(("ControllerUrl", "https://tollgate.example.com"));
    params.push(("RoleName", "tollgate-deploy-with-stack-events"));
    let stack = "tollgate-bootstrap-deploy-stack-events";
    let outputs = create_stack(&cfn, stack, "deploy-role.yaml", &params).await;
    let topic = format!("arn:aws:sns:us-east-1:{STAGE_ACCOUNT}:backend-stack-events");
    assert!(
        outputs.contains(&("StackEventsTopicArn".into(), topic.clone())),
        "{outputs:?}"
    );
    assert_eq!(
        resources(&cfn, stack).await,
        ["DeployRole", "StackEventsTopic"]
    );
    let sns = aws_sdk_sns::Client::new(&config);
    let subscriptions = sns
        .list_subscriptions_by_topic()
        .topic_arn(&topic)
        .send()
        .await
        .unwrap();
    let endpoints: Vec<(&str, &str)> = subscriptions
        .subscriptions()
        .iter()
        .map(|s| (s.protocol().unwrap(), s.endpoint().unwrap()))
        .collect();
    assert_eq!(
        endpoints,
        [("https", "https://tollgate.example.com/webhooks/sns")]
    );
}

//! Nothing hangs: a call that connects and is never answered, and an effect that never
//! returns, are abandoned and tried again under the same idempotency key.
//!
//! - Through the real AWS SDK and `CloudFormationDeployer`, with the CloudFormation endpoint
//!   behind `tollgate_testkit::hang::HangProxy` (in front of moto, which never hangs): the
//!   first connection is accepted and never answered; the call times out by the SDK's attempt
//!   timeout, the limiter retries it, and the deploy completes with one `ExecuteChangeSet`.
//! - Through the engine with in-memory fakes: a deploy whose first call never returns runs past
//!   the effect deadline, is performed again under the same key, and the stage completes with
//!   one deploy applied.
//!
//! Short timeouts come from the settings (never the production defaults); each test is bounded.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use aws_config::SdkConfig;
use tollgate::aws::cloudformation::CloudFormationDeployer;
use tollgate::aws::retry::{CallTimeouts, Limiter, PollSettings, RetrySettings};
use tollgate::aws::sts::Credentials;
use tollgate::config::{Account, Deploy, Target};
use tollgate::domain::{ReleaseId, RunStatus};
use tollgate::engine::Ingested;
use tollgate::engine::ports::DeployRequest;
use tollgate_testkit::hang::HangProxy;
use tollgate_testkit::moto::{DEFAULT_ACCOUNT_ID, MotoServer, REGION};

use crate::engine_support::*;

/// The longest either test may take.
const TEST_TIMEOUT: Duration = Duration::from_secs(90);

const IMAGE: &str = "123456789012.dkr.ecr.us-east-1.amazonaws.com/app@sha256:1111";

const TEMPLATE: &str = r#"{
  "Parameters": {"ImageUri": {"Type": "String"}},
  "Resources": {
    "Image": {
      "Type": "AWS::SSM::Parameter",
      "Properties": {"Name": "/nohang/image", "Type": "String", "Value": {"Ref": "ImageUri"}}
    }
  }
}"#;

/// Timeouts short enough for a test, with the same shape as the defaults.
fn test_settings() -> RetrySettings {
    RetrySettings {
        base: Duration::from_millis(10),
        cap: Duration::from_millis(100),
        timeouts: CallTimeouts {
            connect: Duration::from_secs(1),
            read: Duration::from_secs(1),
            attempt: Duration::from_millis(1500),
            operation: Duration::from_secs(2),
        },
        ..RetrySettings::default()
    }
}

/// The controller's own account: no `AssumeRole`, so the first connection is CloudFormation's.
fn controller_account() -> Account {
    Account {
        name: "build".into(),
        id: DEFAULT_ACCOUNT_ID.into(),
        role_arn: None,
        external_id: None,
        region: REGION.into(),
        controller: true,
        session_duration: Duration::from_secs(3600),
        stack_events_topic: None,
    }
}

fn request(account: &Account, template: std::path::PathBuf) -> DeployRequest {
    DeployRequest {
        key: "backend/1/beta/deploy-0".into(),
        pipeline: "backend".into(),
        stage: "beta".into(),
        release: ReleaseId(1),
        target: Target {
            account: account.name.clone(),
            region: REGION.into(),
        },
        account: account.clone(),
        deploy: Deploy::CloudFormation {
            stack: "nohang".into(),
            template,
            parameters: BTreeMap::new(),
            image_parameter: "ImageUri".into(),
            capabilities: vec![],
            execution_role: None,
        },
        image_uri: IMAGE.into(),
        session_name: "tollgate-backend-1-beta".into(),
        alarm_override: false,
        restore: None,
        history: Default::default(),
    }
}

fn through(moto: &MotoServer, proxy: &HangProxy) -> SdkConfig {
    let mut builder = moto.sdk_config().to_builder();
    builder.set_endpoint_url(Some(proxy.endpoint()));
    builder.build()
}

#[tokio::test]
async fn a_call_that_is_never_answered_is_retried_and_the_deploy_happens_once() {
    let moto = tokio::task::spawn_blocking(MotoServer::start)
        .await
        .unwrap()
        .expect("moto_server starts");
    let upstream: SocketAddr = moto.endpoint()["http://".len()..].parse().unwrap();
    let proxy = HangProxy::start(upstream, 1).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let template = dir.path().join("app.json");
    std::fs::write(&template, TEMPLATE).unwrap();
    moto.recorder_start().await.unwrap();

    let limiter = Arc::new(Limiter::new(test_settings()));
    let creds = Credentials::new(through(&moto, &proxy), limiter);
    let deployer = CloudFormationDeployer::new(Arc::new(creds), PollSettings::fast());
    let req = request(&controller_account(), template);
    let result = tokio::time::timeout(TEST_TIMEOUT, deployer.deploy_stack(&req, &[]))
        .await
        .expect("the deploy does not hang");
    result.expect("the deploy succeeds after the hung attempt");

    assert_eq!(proxy.hung(), 1, "the first connection was left unanswered");
    let executions = moto
        .recorded_requests()
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.action.as_deref() == Some("ExecuteChangeSet"))
        .count();
    assert_eq!(executions, 1);
}

#[tokio::test]
async fn an_effect_past_its_deadline_is_performed_again_under_its_key() {
    let h = Harness::new();
    let engine = h.engine(None).await;
    engine.set_effect_deadline(Duration::from_millis(300));
    h.fakes.with(|w| w.hanging_deploys = 1);
    let recorded = engine
        .record_release(&release(1), &delivery("push-1"))
        .await
        .unwrap();
    let Ingested::Recorded(id) = recorded else {
        panic!("not recorded")
    };
    tokio::time::timeout(TEST_TIMEOUT, settle(&engine))
        .await
        .expect("the engine settles")
        .unwrap();

    assert_eq!(status(&engine, id, "beta").await, RunStatus::Succeeded);
    assert_eq!(h.fakes.with(|w| w.hung_deploys), 1);
    let beta: Vec<_> = h
        .fakes
        .with(|w| w.deployed.clone())
        .into_iter()
        .filter(|(stage, _, _)| stage == "beta")
        .collect();
    assert_eq!(beta.len(), 1, "one deploy in beta: {beta:?}");
    let ledger = h.fakes.ledger();
    let keys: Vec<_> = ledger
        .applied
        .keys()
        .filter(|k| k.contains("beta") && k.contains("deploy"))
        .collect();
    assert_eq!(keys.len(), 1, "one deploy key in beta: {keys:?}");
    let events = engine.reads().events("backend", 1000).await.unwrap();
    assert!(
        events.iter().any(|e| e.kind == "effect-deadline"),
        "the overrun is in the event log"
    );
}

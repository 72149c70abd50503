//! `aws::codepipeline::CodePipelineDeployer` through the real AWS SDK for Rust, against the
//! scripted stub in `tollgate_testkit::aws_stubs::codepipeline` — moto 5.2.5 gaps: its executions
//! succeed instantly (no `InProgress`, no failed action to report) and `RollbackStage` is not
//! implemented. The controller's own account is used, so the stub sees CodePipeline calls only.

use std::sync::Arc;
use std::time::Duration;

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::provider::SharedCredentialsProvider;
use tollgate::aws::codepipeline::{CodePipelineDeployer, Poll};
use tollgate::aws::retry::{Limiter, RetrySettings};
use tollgate::aws::sts::Credentials;
use tollgate::config::{Account, Deploy, Target};
use tollgate::domain::ReleaseId;
use tollgate::engine::ports::{DeployRequest, Deployer, PortError};
use tollgate_testkit::aws_stubs::codepipeline::{CodePipelineStub, Outcome, Run};

const REGION: &str = "us-east-1";
const PIPELINE: &str = "backend-beta";
/// The pipeline's stages: not named `Deploy`, so nothing can fall back on a default name.
const STAGES: [&str; 3] = ["Source", "Build", "DeployToBeta"];
/// The stage `RollbackStage` targets, from the deploy's `rollback_stage`.
const ROLLBACK_STAGE: &str = "DeployToBeta";
const OLD: &str = "123456789012.dkr.ecr.us-east-1.amazonaws.com/app@sha256:0000";
const NEW: &str = "123456789012.dkr.ecr.us-east-1.amazonaws.com/app@sha256:1111";
/// Every test is bounded.
const LIMIT: Duration = Duration::from_secs(30);

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

fn request(key: &str, image: &str) -> DeployRequest {
    let account = own_account();
    DeployRequest {
        key: key.into(),
        pipeline: "backend".into(),
        stage: "beta".into(),
        release: ReleaseId(1),
        target: Target {
            account: account.name.clone(),
            region: REGION.into(),
        },
        account,
        deploy: codepipeline(PIPELINE, ROLLBACK_STAGE),
        image_uri: image.into(),
        session_name: "tollgate-backend-1-beta".into(),
        alarm_override: false,
        restore: None,
        history: Default::default(),
    }
}

fn codepipeline(pipeline: &str, rollback_stage: &str) -> Deploy {
    Deploy::CodePipeline {
        pipeline: pipeline.into(),
        variable: "ImageUri".into(),
        rollback_stage: rollback_stage.into(),
    }
}

async fn stub_deployer() -> (CodePipelineStub, CodePipelineDeployer) {
    let stub = CodePipelineStub::start().await.unwrap();
    stub.create_pipeline(PIPELINE, &STAGES);
    let credentials = aws_credential_types::Credentials::new("stub", "stub", None, None, "stub");
    let base = SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(REGION))
        .credentials_provider(SharedCredentialsProvider::new(credentials))
        .build();
    let limiter = Arc::new(Limiter::new(RetrySettings {
        base: Duration::from_millis(5),
        cap: Duration::from_millis(50),
        ..RetrySettings::default()
    }));
    let fast = Poll {
        first: Duration::from_millis(10),
        max: Duration::from_millis(50),
        timeout: Duration::from_secs(10),
    };
    let deployer = CodePipelineDeployer::new(
        Arc::new(Credentials::new(base, limiter.clone())),
        limiter,
        fast,
    )
    .with_endpoint_url(stub.endpoint());
    (stub, deployer)
}

async fn bounded<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(LIMIT, f)
        .await
        .expect("the test finished in time")
}

#[tokio::test]
async fn a_deploy_starts_the_pipeline_with_the_image_and_waits_for_it_once_per_key() {
    bounded(async {
        let (stub, cp) = stub_deployer().await;
        stub.script(
            PIPELINE,
            Run {
                polls: 3,
                outcome: Outcome::Succeeded,
            },
        );
        let req = request("backend/r1/beta/a1/deploy-0", NEW);
        let done = cp.deploy(&req).await.unwrap();
        assert!(done.summary.ends_with("succeeded"), "{}", done.summary);
        let again = cp.deploy(&req).await.unwrap(); // as after a crash
        assert!(again.summary.ends_with("succeeded"), "{}", again.summary);

        assert_eq!(
            stub.execution_ids(PIPELINE).len(),
            1,
            "one execution per key"
        );
        let starts: Vec<_> = stub
            .calls()
            .into_iter()
            .filter(|c| c.operation == "StartPipelineExecution")
            .collect();
        assert_eq!(starts.len(), 2, "the repeat re-attached by its token");
        assert_eq!(
            starts[0].body["clientRequestToken"],
            starts[1].body["clientRequestToken"]
        );
        assert_eq!(
            starts[0].body["variables"],
            serde_json::json!([{"name": "ImageUri", "value": NEW}])
        );
        assert!(
            stub.count("GetPipelineExecution") >= 4,
            "it waited through InProgress"
        );
    })
    .await;
}

#[tokio::test]
async fn a_failed_execution_names_the_failing_action() {
    bounded(async {
        let (stub, cp) = stub_deployer().await;
        stub.script(
            PIPELINE,
            Run {
                polls: 1,
                outcome: Outcome::Failed {
                    action: "DeployService".into(),
                    summary: "ECS service did not stabilize".into(),
                },
            },
        );
        let err = cp
            .deploy(&request("backend/r1/beta/a1/deploy-0", NEW))
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, PortError::Failed(_)), "{err:?}");
        assert!(
            text.contains("DeployService") && text.contains("ECS service did not stabilize"),
            "{text}"
        );
    })
    .await;
}

#[tokio::test]
async fn a_rollback_returns_the_deploy_stage_to_the_last_execution_of_that_image() {
    bounded(async {
        let (stub, cp) = stub_deployer().await;
        cp.deploy(&request("backend/r1/beta/a1/deploy-0", OLD))
            .await
            .unwrap();
        cp.deploy(&request("backend/r2/beta/a1/deploy-0", NEW))
            .await
            .unwrap();
        let ids = stub.execution_ids(PIPELINE);
        let rollback = request("backend/r2/beta/a1/rollback-0-to-1", OLD);
        let done = cp.rollback(&rollback).await.unwrap();
        assert!(
            done.summary
                .contains(&format!("rolled back to execution {}", ids[0])),
            "{}",
            done.summary
        );
        let again = cp.rollback(&rollback).await.unwrap(); // as after a crash
        assert_eq!(again.summary, done.summary);
        let rollbacks = stub.rollbacks();
        assert_eq!(rollbacks.len(), 1, "RollbackStage ran once: {rollbacks:?}");
        assert_eq!(rollbacks[0].stage, ROLLBACK_STAGE);
        assert_eq!(rollbacks[0].target_execution_id, ids[0]);
        let calls: Vec<_> = stub
            .calls()
            .into_iter()
            .filter(|c| c.operation == "RollbackStage")
            .collect();
        assert_eq!(calls.len(), 1, "{calls:?}");
        assert_eq!(
            calls[0].body,
            serde_json::json!({
                "pipelineName": PIPELINE,
                "stageName": ROLLBACK_STAGE,
                "targetPipelineExecutionId": ids[0],
            }),
            "RollbackStage named exactly the configured stage"
        );
        assert!(done.summary.contains(ROLLBACK_STAGE), "{}", done.summary);

        let nowhere = cp
            .rollback(&request(
                "backend/r3/beta/a1/rollback-0-to-9",
                "app@sha256:9999",
            ))
            .await
            .unwrap_err();
        assert!(matches!(nowhere, PortError::NotFound(_)), "{nowhere:?}");
        assert!(nowhere.to_string().contains("nothing to roll back to"));
    })
    .await;
}

#[tokio::test]
async fn throttling_is_retried_and_a_missing_pipeline_is_not_found() {
    bounded(async {
        let (stub, cp) = stub_deployer().await;
        stub.throttle(3);
        cp.deploy(&request("backend/r1/beta/a1/deploy-0", NEW))
            .await
            .unwrap();
        assert_eq!(
            stub.execution_ids(PIPELINE).len(),
            1,
            "no duplicate execution"
        );

        let mut req = request("backend/r2/beta/a1/deploy-0", NEW);
        req.deploy = codepipeline("absent", ROLLBACK_STAGE);
        let err = cp.deploy(&req).await.unwrap_err();
        assert!(matches!(err, PortError::NotFound(_)), "{err:?}");
        assert!(err.to_string().contains("absent"), "{err}");
    })
    .await;
}

/// Throttling of `GetPipelineExecution` that outlasts one call's retries (8 attempts) does not
/// end the wait for the execution: the look counts as one that saw nothing new, and the
/// deploy is judged by the execution's outcome once the looks get through.
#[tokio::test]
async fn throttling_that_outlasts_a_calls_retries_does_not_end_the_wait() {
    bounded(async {
        let (stub, cp) = stub_deployer().await;
        stub.script(
            PIPELINE,
            Run {
                polls: 20,
                outcome: Outcome::Succeeded,
            },
        );
        let req = request("backend/r1/beta/a1/deploy-0", NEW);
        let deploy = cp.deploy(&req);
        let throttle = async {
            while stub.count("GetPipelineExecution") == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            stub.throttle(20);
        };
        let (done, ()) = tokio::join!(deploy, throttle);
        let done = done.unwrap();
        assert!(done.summary.ends_with("succeeded"), "{}", done.summary);
        assert_eq!(stub.execution_ids(PIPELINE).len(), 1);
        assert!(
            stub.count("GetPipelineExecution") >= 20 + 20,
            "20 throttled looks and the 20 in progress: {}",
            stub.count("GetPipelineExecution")
        );
    })
    .await;
}

#[tokio::test]
async fn a_deploy_to_a_pipeline_without_the_rollback_stage_fails_before_it_starts() {
    bounded(async {
        let (stub, cp) = stub_deployer().await;
        let mut req = request("backend/r1/beta/a1/deploy-0", NEW);
        req.deploy = codepipeline(PIPELINE, "Deploy");
        let err = cp.deploy(&req).await.unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, PortError::Invalid(_)), "{err:?}");
        assert!(
            text.contains("no stage `Deploy`")
                && text.contains("Source, Build, DeployToBeta")
                && text.contains("rollback_stage"),
            "{text}"
        );
        assert_eq!(stub.count("StartPipelineExecution"), 0, "nothing started");
        assert!(stub.execution_ids(PIPELINE).is_empty());
    })
    .await;
}

#[tokio::test]
async fn a_rollback_of_a_stage_the_pipeline_does_not_have_is_refused_like_aws_does() {
    bounded(async {
        let (stub, cp) = stub_deployer().await;
        cp.deploy(&request("backend/r1/beta/a1/deploy-0", OLD))
            .await
            .unwrap();
        cp.deploy(&request("backend/r2/beta/a1/deploy-0", NEW))
            .await
            .unwrap();
        // The pipeline changed under a running release (a stage renamed since its deploy).
        for (stage, code) in [
            ("Deploy", "StageNotFoundException"),
            ("Source", "UnableToRollbackStageException"),
        ] {
            let mut rollback = request("backend/r2/beta/a1/rollback-0-to-1", OLD);
            rollback.deploy = codepipeline(PIPELINE, stage);
            let err = cp.rollback(&rollback).await.unwrap_err();
            assert!(!err.is_retryable(), "{err:?}");
            assert!(err.to_string().contains(code), "{err}");
        }
        assert!(stub.rollbacks().is_empty(), "{:?}", stub.rollbacks());
        let asked: Vec<_> = stub
            .calls()
            .into_iter()
            .filter(|c| c.operation == "RollbackStage")
            .map(|c| c.body["stageName"].clone())
            .collect();
        assert_eq!(
            asked,
            [serde_json::json!("Deploy"), serde_json::json!("Source")]
        );
    })
    .await;
}

/// A deploy records the variables it started the pipeline with; a rollback with that record
/// returns the stage to the execution that ran exactly those variables, not to a newer one
/// that ran the same digest under another repository.
#[tokio::test]
async fn a_rollback_with_the_recorded_variables_targets_the_execution_that_ran_exactly_them() {
    use tollgate::domain::AppliedSpec;
    bounded(async {
        let (stub, cp) = stub_deployer().await;
        let first = cp
            .deploy(&request("backend/r1/beta/a1/deploy-0", OLD))
            .await
            .unwrap();
        let recorded = first
            .applied
            .clone()
            .expect("the deploy records what it applied");
        assert_eq!(
            recorded.spec,
            AppliedSpec::CodePipeline {
                pipeline: PIPELINE.into(),
                variables: [("ImageUri".to_string(), OLD.to_string())].into(),
            }
        );
        let same_digest = OLD.replace("123456789012.dkr.ecr", "999999999999.dkr.ecr");
        cp.deploy(&request("backend/r2/beta/a1/deploy-0", &same_digest))
            .await
            .unwrap();
        cp.deploy(&request("backend/r3/beta/a1/deploy-0", NEW))
            .await
            .unwrap();
        let ids = stub.execution_ids(PIPELINE);

        let mut rollback = request("backend/r3/beta/a1/rollback-0-to-1", OLD);
        rollback.restore = Some(recorded.clone());
        let done = cp.rollback(&rollback).await.unwrap();
        let rollbacks = stub.rollbacks();
        assert_eq!(rollbacks.len(), 1, "{rollbacks:?}");
        assert_eq!(
            rollbacks[0].target_execution_id, ids[0],
            "the execution with exactly the recorded variables, not {}",
            ids[1]
        );
        assert_eq!(done.applied.map(|a| a.spec), Some(recorded.spec));
    })
    .await;
}

//! A CodePipeline-deployed stage end to end: `tollgate::engine::Engine` with its real adapters
//! (STS, ECR, SNS and CloudFormation on moto; the real `CodePipelineDeployer` behind
//! `AwsDeployer`) promotes a release through beta and gamma (CloudFormation) into prod, which
//! deploys through a CodePipeline whose deploy stage is not called `Deploy`; a second release is
//! rolled back there by an alarm, with `RollbackStage` on exactly the configured stage.
//!
//! moto 5.2.5 gaps, covered by stubs: CodePipeline's `GetPipelineState` and `RollbackStage` are
//! not implemented (the CodePipeline stub in `tollgate_testkit::aws_stubs::codepipeline` serves
//! prod's pipeline, reached with prod's assumed-role credentials from moto's STS); CloudWatch
//! is served over RPCv2 CBOR, which moto does not speak (the CloudWatch stub). Production
//! poll schedules throughout.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_credential_types::provider::ProvideCredentials;
use chrono::Utc;
use tokio::task::JoinHandle;
use tollgate::aws::cloudformation::CloudFormationDeployer;
use tollgate::aws::cloudwatch::CloudWatchAlarms;
use tollgate::aws::codepipeline::{CodePipelineDeployer, Poll};
use tollgate::aws::deployer::{AwsDeployer, alarms_from_config};
use tollgate::aws::ecr::EcrArtifacts;
use tollgate::aws::retry::{Limiter, PollSettings};
use tollgate::aws::sns::SnsNotifier;
use tollgate::aws::sts::Credentials;
use tollgate::domain::{Reason, ReleaseId, RunStatus, StageRun};
use tollgate::engine::{Delivery, Engine, Ingested, NewAlarm, Ports, SystemClock, shared_config};
use tollgate::gates::approval::SnsApprovalSender;
use tollgate::gates::runner::StageTestRunner;
use tollgate::store::Store;
use tollgate_testkit::aws_stubs::codepipeline::CodePipelineStub;
use tollgate_testkit::fakes::Fakes;
use tollgate_testkit::moto::MotoServer;
use tollgate_testkit::world::{IMAGE_PARAMETER, World};

const TEST_TIMEOUT: Duration = Duration::from_secs(150);
const STAGE_TIMEOUT: Duration = Duration::from_secs(60);
/// Prod's pipeline in the prod account, and the stage of it that deploys the image.
const PIPELINE: &str = "backend-prod-release";
const ROLLBACK_STAGE: &str = "DeployToProd";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_codepipeline_stage_is_promoted_into_and_rolled_back_by_an_alarm() {
    tokio::time::timeout(TEST_TIMEOUT, promote_and_roll_back())
        .await
        .expect("the scenario finished in time");
}

async fn promote_and_roll_back() {
    let moto = tokio::task::spawn_blocking(MotoServer::start)
        .await
        .expect("moto start task")
        .expect("moto_server starts");
    let world = World::builder()
        .prod_approval(false)
        .stage_tests(false)
        .bake_all(Duration::from_millis(300))
        .bake("prod", Duration::from_secs(3))
        .codepipeline("prod", PIPELINE, ROLLBACK_STAGE)
        .build(&moto)
        .await
        .expect("world set up");
    let cloudwatch = world
        .start_cloudwatch_stub()
        .await
        .expect("CloudWatch stub");
    let pipelines = CodePipelineStub::start().await.expect("CodePipeline stub");
    pipelines.create_pipeline(PIPELINE, &["Source", "Build", ROLLBACK_STAGE]);

    let config = world.config().expect("the world's stages.toml is valid");
    let state = tempfile::tempdir().expect("state dir");
    // SQLite in `state`, or PostgreSQL when TOLLGATE_TEST_POSTGRES names a server.
    let url = tollgate_testkit::state::url(state.path());
    let store = Store::open(&url).await.expect("state store");
    let shared = shared_config(config.clone());

    // The adapters `tollgate serve` wires, with CodePipeline and CloudWatch on their stubs.
    let own = config.account("build").expect("build account").clone();
    let limiter = Arc::new(Limiter::default());
    let creds = Arc::new(Credentials::new(moto.sdk_config(), limiter.clone()));
    let alarms = CloudWatchAlarms::new(creds.clone(), limiter.clone());
    let alarms = Arc::new(alarms.with_endpoint_url(cloudwatch.endpoint()));
    let codepipeline = CodePipelineDeployer::new(creds.clone(), limiter.clone(), Poll::default())
        .with_endpoint_url(pipelines.endpoint());
    let deployer = AwsDeployer::new(
        CloudFormationDeployer::new(creds.clone(), PollSettings::fast()),
        codepipeline,
        alarms_from_config(shared.clone()),
        alarms.clone(),
    );
    let notifier = SnsNotifier::new(creds.clone(), limiter, own);
    let notifier = Arc::new(notifier.with_accounts(config.accounts.values().cloned()));
    let ports = Ports {
        deployer: Arc::new(deployer),
        artifacts: Arc::new(EcrArtifacts::new(creds, PollSettings::fast())),
        notifier: notifier.clone(),
        alarms,
        forge: Arc::new(Fakes::new()),
        tests: Arc::new(StageTestRunner::new(None)),
        approvals: Arc::new(
            SnsApprovalSender::new(
                store.clone(),
                notifier.clone(),
                &config.controller.public_url,
            )
            .with_subscriptions(notifier),
        ),
    };
    let engine = Engine::with_shared_config(store, shared, ports, Arc::new(SystemClock));
    let reconcilers = Reconcilers(engine.spawn());

    // Release 1 reaches prod through its pipeline, with the image by digest.
    let (first, first_digest) = release(&engine, &world, 1).await;
    let prod = wait_status(&engine, first, "prod", RunStatus::Succeeded).await;
    assert_eq!(prod.status, RunStatus::Succeeded);
    let old = world.image_uri(&first_digest);
    let executions = pipelines.execution_ids(PIPELINE);
    assert_eq!(executions.len(), 1, "one execution for release 1");
    let starts: Vec<_> = (pipelines.calls().into_iter())
        .filter(|c| c.operation == "StartPipelineExecution")
        .collect();
    assert_eq!(
        starts[0].body["variables"],
        serde_json::json!([{"name": IMAGE_PARAMETER, "value": old}])
    );
    assert!(
        pipelines.count("GetPipelineState") >= 1,
        "the deploy checked the rollback stage exists"
    );

    // Release 2 deploys to prod and, while baking, its alarm fires.
    let (second, second_digest) = release(&engine, &world, 2).await;
    let new = world.image_uri(&second_digest);
    assert_ne!(old, new);
    wait_status(&engine, second, "prod", RunStatus::Baking).await;
    assert_eq!(pipelines.execution_ids(PIPELINE).len(), 2);
    let alarm = world.stage("prod").expect("prod").alarm.clone();
    cloudwatch.set_alarm(&alarm, "ALARM");
    let fired = NewAlarm {
        pipeline: world.pipeline().into(),
        stage: "prod".into(),
        alarm: alarm.clone(),
        firing: true,
        reason: "Threshold Crossed: 1 datapoint [12.0] was greater than the threshold (5.0)".into(),
        changed_at: Some(Utc::now()),
    };
    let recorded = engine.record_alarm(&fired, &delivery("alarm-prod")).await;
    recorded.expect("alarm recorded");

    let prod = wait_status(&engine, second, "prod", RunStatus::RolledBack).await;
    assert!(
        matches!(prod.reason.root(), Reason::AlarmFired { alarm: a, .. } if *a == alarm),
        "{:?}",
        prod.reason
    );
    let rollbacks = pipelines.rollbacks();
    assert_eq!(rollbacks.len(), 1, "one RollbackStage: {rollbacks:?}");
    assert_eq!(rollbacks[0].pipeline, PIPELINE);
    assert_eq!(rollbacks[0].stage, ROLLBACK_STAGE, "the configured stage");
    assert_eq!(
        rollbacks[0].target_execution_id, executions[0],
        "back to release 1's execution"
    );
    let asked: Vec<_> = (pipelines.calls().into_iter())
        .filter(|c| c.operation == "RollbackStage")
        .map(|c| c.body["stageName"].clone())
        .collect();
    assert_eq!(asked, [serde_json::json!(ROLLBACK_STAGE)]);
    // Every CodePipeline call was signed with prod's assumed-role credentials, not the
    // controller's own.
    let own_key = moto
        .sdk_config()
        .credentials_provider()
        .expect("credentials");
    let own_key = own_key
        .provide_credentials()
        .await
        .expect("own credentials");
    let keys: BTreeSet<_> = (pipelines.calls().into_iter())
        .map(|c| c.access_key_id)
        .collect();
    assert_eq!(keys.len(), 1, "{keys:?}");
    let key = keys.into_iter().next().flatten().expect("signed");
    assert_ne!(key, own_key.access_key_id(), "prod's own credentials");
    let last_good = engine.reads().last_good("backend", "prod").await.unwrap();
    assert_eq!(last_good.map(|r| r.id), Some(first));
    let release = engine.reads().release(second).await.unwrap().unwrap();
    assert_eq!(release.bad.expect("marked bad").stage, "prod");
    // Release 1's deploy recorded the variables it started the pipeline with, and the rollback
    // applied exactly that record.
    let prod_effects = engine.reads().effects_of(second, "prod").await.unwrap();
    let restored = (prod_effects.iter())
        .find(|e| matches!(e.kind, tollgate::domain::EffectKind::Rollback { .. }))
        .expect("a rollback effect");
    assert!(
        restored.detail.contains("from its recorded spec"),
        "{}",
        restored.detail
    );
    let recorded = engine.reads().applied(first, "prod", 0).await.unwrap();
    assert_eq!(
        recorded,
        Some(tollgate::domain::AppliedSpec::CodePipeline {
            pipeline: PIPELINE.into(),
            variables: [(IMAGE_PARAMETER.to_string(), old.clone())].into(),
        })
    );
    // gamma (CloudFormation, on moto) keeps release 2: only prod was rolled back.
    let gamma = world.deployed_image(&moto, "gamma").await.expect("moto");
    assert_eq!(gamma.as_deref(), Some(new.as_str()));
    drop(reconcilers);
}

struct Reconcilers(Vec<JoinHandle<()>>);

impl Drop for Reconcilers {
    fn drop(&mut self) {
        self.0.iter().for_each(JoinHandle::abort);
    }
}

fn delivery(id: &str) -> Delivery {
    Delivery {
        source: "engine-codepipeline".into(),
        id: id.into(),
    }
}

/// Pushes an image for commit `n` and records its release; its id and digest.
async fn release(engine: &Engine, world: &World, n: u32) -> (ReleaseId, String) {
    let sha: String = format!("{n:08x}{}", "c0ffee".repeat(6))
        .chars()
        .take(40)
        .collect();
    let digest = world.push_image(&sha).await.expect("image pushed");
    let release = world.release(&sha, &format!("change {n}"));
    let pushed = delivery(&format!("push-{sha}"));
    match engine
        .record_release(&release, &pushed)
        .await
        .expect("release recorded")
    {
        Ingested::Recorded(id) => (id, digest),
        Ingested::Duplicate => panic!("release {sha} was a duplicate"),
    }
}

async fn run_of(engine: &Engine, id: ReleaseId, stage: &str) -> Option<StageRun> {
    let runs = engine.reads().recent_runs("backend", 50).await.ok()?;
    let (_, runs) = runs.into_iter().find(|(r, _)| r.id == id)?;
    runs.into_iter().find(|r| r.stage == stage)
}

/// Waits until the run has `status`; panics when it ends another way or time runs out.
async fn wait_status(engine: &Engine, id: ReleaseId, stage: &str, status: RunStatus) -> StageRun {
    let deadline = Instant::now() + STAGE_TIMEOUT;
    let mut last = None;
    while Instant::now() < deadline {
        if let Some(run) = run_of(engine, id, stage).await {
            if run.status == status {
                return run;
            }
            assert!(
                !run.status.is_terminal(),
                "{id} in {stage} ended {} ({:?}) while waiting for {}",
                run.status.as_str(),
                run.reason,
                status.as_str()
            );
            last = Some(run);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!(
        "{id} in {stage}: no {} within {STAGE_TIMEOUT:?}; last: {last:?}",
        status.as_str()
    );
}

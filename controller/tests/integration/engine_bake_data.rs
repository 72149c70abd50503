//! A bake that counts data points, end to end: `tollgate::engine::Engine` with its real
//! adapters (STS, ECR, SNS and CloudFormation on moto; `CloudWatchAlarms` reading alarm states
//! and `GetMetricData` from the CloudWatch stub) promotes a release whose stages ask for one
//! data point since the deploy. Beta's service is busy (its alarm's metric gets samples) and
//! passes its bake; gamma's is quiet and keeps baking, saying what it waits for, until traffic
//! reaches it too.
//!
//! moto 5.2.5 gap, covered by a stub: CloudWatch is served over a protocol moto does not
//! speak for the SDK in use, and moto's metrics cannot be scripted (the CloudWatch stub in
//! `tollgate_testkit::aws_stubs::cloudwatch`). Production poll schedules throughout.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::task::JoinHandle;
use tollgate::aws::cloudformation::CloudFormationDeployer;
use tollgate::aws::cloudwatch::CloudWatchAlarms;
use tollgate::aws::codepipeline::{CodePipelineDeployer, Poll};
use tollgate::aws::deployer::{AwsDeployer, alarms_from_config};
use tollgate::aws::ecr::EcrArtifacts;
use tollgate::aws::retry::{Limiter, PollSettings};
use tollgate::aws::sns::SnsNotifier;
use tollgate::aws::sts::Credentials;
use tollgate::domain::{DataGap, Reason, ReleaseId, RunStatus, StageRun};
use tollgate::engine::{Delivery, Engine, Ingested, Ports, SystemClock, shared_config};
use tollgate::gates::approval::SnsApprovalSender;
use tollgate::gates::runner::StageTestRunner;
use tollgate::store::Store;
use tollgate_testkit::aws_stubs::cloudwatch::{CloudWatchStub, MetricSpec};
use tollgate_testkit::fakes::Fakes;
use tollgate_testkit::moto::MotoServer;
use tollgate_testkit::world::World;

const TEST_TIMEOUT: Duration = Duration::from_secs(180);
const STAGE_TIMEOUT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_quiet_service_does_not_pass_its_bake_while_a_busy_one_does() {
    tokio::time::timeout(TEST_TIMEOUT, quiet_and_busy())
        .await
        .expect("the scenario finished in time");
}

async fn quiet_and_busy() {
    let moto = tokio::task::spawn_blocking(MotoServer::start)
        .await
        .expect("moto start task")
        .expect("moto_server starts");
    let world = World::builder()
        .prod_approval(false)
        .stage_tests(false)
        .bake_all(Duration::from_millis(300))
        .min_datapoints(1)
        .build(&moto)
        .await
        .expect("world set up");
    let cloudwatch = Arc::new(
        world
            .start_cloudwatch_stub()
            .await
            .expect("CloudWatch stub"),
    );
    let state = tempfile::tempdir().expect("state dir");
    let engine = engine(&moto, &world, &cloudwatch, state.path()).await;
    let reconcilers = Reconcilers(engine.spawn());

    let beta_metric = World::alarm_metric(world.stage("beta").expect("beta"));
    let _beta_traffic = Traffic::start(cloudwatch.clone(), beta_metric);
    let id = release(&engine, &world).await;
    wait_for(&engine, id, "beta", |r| r.status == RunStatus::Succeeded).await;

    // Gamma's service gets no traffic: its bake time passes, but no data point does.
    let gamma = wait_for(&engine, id, "gamma", |r| {
        matches!(
            &r.reason,
            Reason::AwaitingData {
                gap: DataGap::Datapoints { have: 0, .. },
                ..
            }
        )
    })
    .await;
    let said = gamma.reason.describe(chrono::Utc::now());
    assert!(
        said.contains("waiting for data: alarm backend-gamma-5xx has 0 of 1 data points since"),
        "{said}"
    );
    // Two more polls later (at most one per 10 s), it still waits, and prod has not started.
    let polls = metric_reads(&cloudwatch);
    while metric_reads(&cloudwatch) < polls + 2 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let gamma = run_of(&engine, id, "gamma").await.expect("gamma run");
    assert_eq!(gamma.status, RunStatus::Baking, "{:?}", gamma.reason);
    let prod = run_of(&engine, id, "prod").await.expect("prod run");
    assert_eq!(prod.status, RunStatus::Waiting);
    let last_good = engine.reads().last_good("backend", "gamma").await.unwrap();
    assert_eq!(last_good, None, "not known-good without data");

    // Traffic reaches gamma: its next data point lets the bake pass.
    let gamma_metric = World::alarm_metric(world.stage("gamma").expect("gamma"));
    let _gamma_traffic = Traffic::start(cloudwatch.clone(), gamma_metric);
    wait_for(&engine, id, "gamma", |r| r.status == RunStatus::Succeeded).await;
    let last_good = engine.reads().last_good("backend", "gamma").await.unwrap();
    assert_eq!(last_good.map(|r| r.id), Some(id));
    drop(reconcilers);
}

/// The engine with the adapters `tollgate serve` wires, CloudWatch on the stub.
async fn engine(
    moto: &MotoServer,
    world: &World,
    cloudwatch: &CloudWatchStub,
    state: &std::path::Path,
) -> Engine {
    let config = world.config().expect("the world's stages.toml is valid");
    // SQLite in `state`, or PostgreSQL when TOLLGATE_TEST_POSTGRES names a server.
    let url = tollgate_testkit::state::url(state);
    let store = Store::open(&url).await.expect("state store");
    let shared = shared_config(config.clone());
    let own = config.account("build").expect("build account").clone();
    let limiter = Arc::new(Limiter::default());
    let creds = Arc::new(Credentials::new(moto.sdk_config(), limiter.clone()));
    let alarms = CloudWatchAlarms::new(creds.clone(), limiter.clone());
    let alarms = Arc::new(alarms.with_endpoint_url(cloudwatch.endpoint()));
    let deployer = AwsDeployer::new(
        CloudFormationDeployer::new(creds.clone(), PollSettings::fast()),
        CodePipelineDeployer::new(creds.clone(), limiter.clone(), Poll::default()),
        alarms_from_config(shared.clone()),
        alarms.clone(),
    );
    let notifier = SnsNotifier::new(creds.clone(), limiter, own);
    let notifier = Arc::new(notifier.with_accounts(config.accounts.values().cloned()));
    let approvals = SnsApprovalSender::new(
        store.clone(),
        notifier.clone(),
        &config.controller.public_url,
    );
    let ports = Ports {
        deployer: Arc::new(deployer),
        artifacts: Arc::new(EcrArtifacts::new(creds, PollSettings::fast())),
        notifier: notifier.clone(),
        alarms,
        forge: Arc::new(Fakes::new()),
        tests: Arc::new(StageTestRunner::new(None)),
        approvals: Arc::new(approvals.with_subscriptions(notifier)),
    };
    Engine::with_shared_config(store, shared, ports, Arc::new(SystemClock))
}

fn metric_reads(stub: &CloudWatchStub) -> usize {
    let calls = stub.calls();
    calls
        .iter()
        .filter(|c| c.operation == "GetMetricData")
        .count()
}

/// A busy service: a sample on its alarm's metric every 200 ms until dropped.
struct Traffic(JoinHandle<()>);

impl Traffic {
    fn start(stub: Arc<CloudWatchStub>, metric: MetricSpec) -> Traffic {
        Traffic(tokio::spawn(async move {
            loop {
                let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
                stub.put_samples(&metric, &[(now.as_secs_f64(), 1.0)]);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }))
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct Reconcilers(Vec<JoinHandle<()>>);

impl Drop for Reconcilers {
    fn drop(&mut self) {
        self.0.iter().for_each(JoinHandle::abort);
    }
}

/// Pushes an image for one commit and records its release.
async fn release(engine: &Engine, world: &World) -> ReleaseId {
    let sha = "da7a".repeat(10);
    world.push_image(&sha).await.expect("image pushed");
    let release = world.release(&sha, "count the data points");
    let pushed = Delivery {
        source: "engine-bake-data".into(),
        id: format!("push-{sha}"),
    };
    match engine.record_release(&release, &pushed).await {
        Ok(Ingested::Recorded(id)) => id,
        other => panic!("release not recorded: {other:?}"),
    }
}

async fn run_of(engine: &Engine, id: ReleaseId, stage: &str) -> Option<StageRun> {
    let runs = engine.reads().recent_runs("backend", 50).await.ok()?;
    let (_, runs) = runs.into_iter().find(|(r, _)| r.id == id)?;
    runs.into_iter().find(|r| r.stage == stage)
}

/// Waits until the run satisfies `done`; panics when it ends otherwise or time runs out.
async fn wait_for(
    engine: &Engine,
    id: ReleaseId,
    stage: &str,
    done: impl Fn(&StageRun) -> bool,
) -> StageRun {
    let deadline = Instant::now() + STAGE_TIMEOUT;
    let mut last = None;
    while Instant::now() < deadline {
        if let Some(run) = run_of(engine, id, stage).await {
            if done(&run) {
                return run;
            }
            assert!(
                !run.status.is_terminal(),
                "{id} in {stage} ended {} ({:?})",
                run.status.as_str(),
                run.reason,
            );
            last = Some(run);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{id} in {stage}: not there within {STAGE_TIMEOUT:?}; last: {last:?}");
}

//! "Deployed" is read back, through the engine: beta deploys with the real
//! `aws::deployer::AwsDeployer` against the scripted CloudFormation stub in
//! `tollgate_testkit::aws_stubs::cloudformation` (moto 5.2.5 gap: moto never refuses an
//! `ExecuteChangeSet` with `InvalidChangeSetStatus`, has no concurrent updates and never loses a
//! reply); the other stages and ports are the in-memory fakes.
//!
//! - Someone else's update lands before beta's change set is executed: CloudFormation refuses
//!   the obsolete change set, the stack runs their image, and beta halts as drift — paused, not
//!   rolled back, the release promoted no further.
//! - Beta's `ExecuteChangeSet` took effect but its reply was lost: the retry is refused, the
//!   stack runs our image, and beta succeeds with one execution that took effect.
//! - Rollback triggers, as CloudFormation applies them (an operation is rolled back when a
//!   trigger alarm is in ALARM during it; the stub reads the CloudWatch stub's states): beta's
//!   alarm fires after release 2 deployed there, and the rollback to release 1 completes —
//!   it carries no triggers, so the firing alarm cannot undo it.

use std::sync::Arc;

use async_trait::async_trait;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::provider::SharedCredentialsProvider;
use tollgate::aws::cloudformation::CloudFormationDeployer;
use tollgate::aws::cloudwatch::CloudWatchAlarms;
use tollgate::aws::codepipeline::{CodePipelineDeployer, Poll};
use tollgate::aws::deployer::AwsDeployer;
use tollgate::aws::retry::{Limiter, PollSettings, RetrySettings};
use tollgate::aws::sts::Credentials;
use tollgate::config;
use tollgate::domain::{Reason, ReleaseId, RunStatus};
use tollgate::engine::ports::{Alarms, DeployRequest, DeployResult, Deployer, PortResult};
use tollgate::engine::{Engine, Ingested, Ports};
use tollgate::store::Store;
use tollgate_testkit::aws_stubs::cloudformation::{CloudFormationStub, Script};
use tollgate_testkit::aws_stubs::cloudwatch::CloudWatchStub;
use tollgate_testkit::fakes::{Fakes, fake_digest};

use crate::engine_support::*;

const PLACEHOLDER: &str = "placeholder@sha256:0000";
const THEIRS: &str = "111111111111.dkr.ecr.eu-west-1.amazonaws.com/backend@sha256:feed";

/// Beta through the real deployer (the stub's one stack), every other stage through the fakes.
struct BetaOnStub {
    real: AwsDeployer,
    fakes: Fakes,
}

#[async_trait]
impl Deployer for BetaOnStub {
    async fn deploy(&self, req: &DeployRequest) -> PortResult<DeployResult> {
        match req.stage.as_str() {
            "beta" => self.real.deploy(req).await,
            _ => self.fakes.deploy(req).await,
        }
    }

    async fn rollback(&self, req: &DeployRequest) -> PortResult<DeployResult> {
        match req.stage.as_str() {
            "beta" => self.real.rollback(req).await,
            _ => self.fakes.rollback(req).await,
        }
    }
}

/// The harness's pipeline with beta in the controller's own account (no AssumeRole: the stub
/// serves CloudFormation only), the stack running [`PLACEHOLDER`] and behaving as `script` says.
async fn engine_on_stub(h: &Harness, script: Script) -> (Engine, CloudFormationStub) {
    engine_on_stub_with(h, script, None).await
}

/// [`engine_on_stub`], with beta's alarms (`beta-5xx`) handed to the deployer as rollback
/// triggers and their states read from `cloudwatch` when given.
async fn engine_on_stub_with(
    h: &Harness,
    script: Script,
    cloudwatch: Option<&CloudWatchStub>,
) -> (Engine, CloudFormationStub) {
    let stub = CloudFormationStub::start(Script {
        statuses: vec!["UPDATE_COMPLETE".into()],
        parameters: vec![("ImageUri".into(), PLACEHOLDER.into())],
        ..script
    })
    .await
    .unwrap();
    config_in(h.dir.path());
    let stages = h.dir.path().join("stages.toml");
    let text = std::fs::read_to_string(&stages).unwrap().replacen(
        "targets = [{ account = \"beta\" }]",
        "targets = [{ account = \"build\" }]",
        1,
    );
    std::fs::write(&stages, text).unwrap();
    let cfg = config::load(&stages).unwrap().config;

    let credentials = aws_credential_types::Credentials::new("stub", "stub", None, None, "stub");
    let base = SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("eu-west-1"))
        .endpoint_url(stub.endpoint())
        .credentials_provider(SharedCredentialsProvider::new(credentials))
        .build();
    let limiter = Arc::new(Limiter::new(RetrySettings {
        base: std::time::Duration::from_millis(5),
        cap: std::time::Duration::from_millis(50),
        ..RetrySettings::default()
    }));
    let creds = Arc::new(Credentials::new(base, limiter.clone()));
    let (lookup, states): (tollgate::aws::deployer::AlarmLookup, Arc<dyn Alarms>) = match cloudwatch
    {
        Some(cw) => {
            let states = CloudWatchAlarms::new(creds.clone(), limiter.clone())
                .with_endpoint_url(cw.endpoint());
            (
                Arc::new(|_: &str, stage: &str| {
                    if stage == "beta" {
                        vec!["beta-5xx".to_string()]
                    } else {
                        Vec::new()
                    }
                }),
                Arc::new(states),
            )
        }
        None => (
            Arc::new(|_: &str, _: &str| Vec::new()),
            Arc::new(h.fakes.clone()),
        ),
    };
    let real = AwsDeployer::new(
        CloudFormationDeployer::new(creds.clone(), PollSettings::fast()),
        CodePipelineDeployer::new(creds, limiter, Poll::default()),
        lookup,
        states,
    );
    let ports = Ports {
        deployer: Arc::new(BetaOnStub {
            real,
            fakes: h.fakes.clone(),
        }),
        ..h.fakes.ports()
    };
    let store = Store::open(&h.db_url()).await.unwrap();
    (Engine::new(store, cfg, ports, h.clock.clone()), stub)
}

async fn first_release(engine: &Engine) -> ReleaseId {
    let recorded = engine
        .record_release(&release(1), &delivery("push-1"))
        .await;
    let Ingested::Recorded(id) = recorded.unwrap() else {
        panic!("release 1 not recorded")
    };
    settle(engine).await.unwrap();
    id
}

#[tokio::test]
async fn someone_elses_update_halts_beta_as_drift_and_the_release_goes_no_further() {
    let h = Harness::new();
    let theirs = vec![("ImageUri".to_string(), THEIRS.to_string())];
    let (engine, stub) = engine_on_stub(
        &h,
        Script {
            foreign_update: Some(theirs),
            ..Script::default()
        },
    )
    .await;
    let id = first_release(&engine).await;

    let beta = run(&engine, id, "beta").await;
    assert_eq!(beta.status, RunStatus::Failed, "{:?}", beta.reason);
    assert!(
        matches!(&beta.reason, Reason::Drift { found, expected, rollback: false, .. }
            if found == THEIRS && expected.ends_with(&fake_digest(&sha(1)))),
        "{:?}",
        beta.reason
    );
    let (_, paused) = engine.reads().paused("backend", "beta").await.unwrap();
    assert!(paused.is_some(), "beta is paused");
    assert_eq!(stub.executed(), 0, "our change set never ran");
    assert_eq!(stub.parameters()["ImageUri"], THEIRS, "their update stands");
    assert_eq!(status(&engine, id, "gamma").await, RunStatus::Failed);
    assert!(
        h.fakes.with(|w| w.deployed.is_empty()),
        "nothing deployed after beta"
    );
}

#[tokio::test]
async fn our_own_change_set_whose_reply_was_lost_succeeds_once_and_the_release_moves_on() {
    let h = Harness::new();
    let (engine, stub) = engine_on_stub(
        &h,
        Script {
            lost_replies: vec!["ExecuteChangeSet".into()],
            ..Script::default()
        },
    )
    .await;
    let id = first_release(&engine).await;

    let beta = run(&engine, id, "beta").await;
    assert_eq!(beta.status, RunStatus::Succeeded, "{:?}", beta.reason);
    assert_eq!(stub.executed(), 1, "one execution took effect");
    assert_eq!(stub.count("ExecuteChangeSet"), 2, "{:?}", stub.accepted());
    assert!(stub.parameters()["ImageUri"].ends_with(&fake_digest(&sha(1))));
    assert_eq!(
        status(&engine, id, "gamma").await,
        RunStatus::Succeeded,
        "promoted onward"
    );
}

#[tokio::test]
async fn a_rollback_while_beta_alarm_fires_completes_because_it_carries_no_triggers() {
    let h = Harness::new();
    let cloudwatch = CloudWatchStub::start().await.unwrap();
    cloudwatch.set_alarm("beta-5xx", "OK");
    let script = Script {
        alarms: Some(cloudwatch.states()),
        ..Script::default()
    };
    let (engine, stub) = engine_on_stub_with(&h, script, Some(&cloudwatch)).await;
    let first = first_release(&engine).await;
    assert_eq!(status(&engine, first, "beta").await, RunStatus::Succeeded);
    let recorded = engine
        .record_release(&release(2), &delivery("push-2"))
        .await;
    let Ingested::Recorded(second) = recorded.unwrap() else {
        panic!("release 2 not recorded")
    };
    settle(&engine).await.unwrap();
    let beta = run(&engine, second, "beta").await;
    assert_eq!(beta.status, RunStatus::Succeeded, "{:?}", beta.reason);
    assert!(stub.parameters()["ImageUri"].ends_with(&fake_digest(&sha(2))));
    let sent = |n: usize| {
        let calls = stub.calls();
        let creates: Vec<_> = calls
            .iter()
            .filter(|c| c.action == "CreateChangeSet")
            .collect();
        let form = &creates[n].form;
        (1..)
            .map_while(|i| {
                form.get(&format!(
                    "RollbackConfiguration.RollbackTriggers.member.{i}.Arn"
                ))
            })
            .cloned()
            .collect::<Vec<String>>()
    };
    assert_eq!(
        sent(1).len(),
        1,
        "release 2's deploy is watched by beta-5xx"
    );

    // beta-5xx goes to ALARM during release 2's watch window: it stays in ALARM while the
    // rollback runs, so a rollback that carried it as a trigger would be undone.
    cloudwatch.set_alarm("beta-5xx", "ALARM");
    h.fakes.with(|w| w.firing.insert("beta-5xx".into()));
    // The notification arrives a minute after beta succeeded (a late delivery).
    h.clock.advance(chrono::Duration::minutes(1));
    let mut fired = alarm("beta", "beta-5xx");
    fired.changed_at = beta.deploy_started;
    engine
        .record_alarm(&fired, &delivery("sns-beta"))
        .await
        .unwrap();
    settle(&engine).await.unwrap();

    let beta = run(&engine, second, "beta").await;
    let others = (
        status(&engine, second, "gamma").await,
        status(&engine, second, "prod").await,
        engine.reads().release(second).await.unwrap().unwrap().bad,
        engine
            .reads()
            .events("backend", 500)
            .await
            .unwrap()
            .iter()
            .filter(|e| e.kind.contains("alarm") || e.detail.contains("beta"))
            .map(|e| format!("{} {} {}", e.at, e.kind, e.detail))
            .collect::<Vec<_>>(),
    );
    assert_eq!(
        beta.status,
        RunStatus::RolledBack,
        "{:?} {others:#?}",
        beta.reason
    );
    assert!(
        stub.parameters()["ImageUri"].ends_with(&fake_digest(&sha(1))),
        "release 1 runs again: {:?}",
        stub.parameters()
    );
    assert_eq!(
        sent(2),
        Vec::<String>::new(),
        "the rollback carries no triggers"
    );
    let _ = first;
}

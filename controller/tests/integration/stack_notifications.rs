//! Stack notifications: CloudFormation's stack events, published to an account's
//! `stack_events_topic` and posted by SNS to `POST /webhooks/sns`, wake the deployer's waiter.
//!
//! The scripted CloudFormation stub (`tollgate_testkit::aws_stubs::cloudformation`; moto 5.2.5
//! gap: its operations are instant and it publishes no stack events) holds an update in
//! progress until the test ends it, and posts the stack's events, signed by the testkit's SNS
//! signer, to the real route served on loopback in front of a real engine (SQLite file, fake
//! ports). The deployer polls once an hour here, so only a wake-up can end its wait.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::Ipv4Addr;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::provider::SharedCredentialsProvider;
use tollgate::aws::cloudformation::CloudFormationDeployer;
use tollgate::aws::retry::{Limiter, PollSettings};
use tollgate::aws::stack_waiters::StackWaiters;
use tollgate::aws::sts::Credentials;
use tollgate::config::{self, Account, Config, Deploy, Target};
use tollgate::domain::{ReleaseId, StackKey};
use tollgate::engine::{DeployRequest, Engine, SystemClock};
use tollgate::http::sns::{PATH, SnsState, routes};
use tollgate::http::sns_verify::CertCache;
use tollgate::store::Store;
use tollgate_testkit::aws_stubs::cloudformation::{
    CloudFormationStub, Notifications, Published, Script,
};
use tollgate_testkit::fakes::Fakes;
use tollgate_testkit::sns::TestSigner;

use crate::engine_support::{ACCOUNTS, STAGES};

const REGION: &str = "eu-west-1";
const PROD: &str = "444444444444";
const TOPIC: &str = "arn:aws:sns:eu-west-1:444444444444:stack-events";
const STACK_ID: &str = "arn:aws:cloudformation:eu-west-1:444444444444:stack/app/7d1e5a20";
const OLD: &str = "444444444444.dkr.ecr.eu-west-1.amazonaws.com/app@sha256:0000";
const NEW: &str = "444444444444.dkr.ecr.eu-west-1.amazonaws.com/app@sha256:1111";

/// The engine tests' configuration, with prod's stack events on [`TOPIC`].
fn load_config(dir: &std::path::Path) -> Config {
    let accounts = ACCOUNTS.replace(
        "[accounts.prod]\n",
        &format!("[accounts.prod]\nstack_events_topic = \"{TOPIC}\"\n"),
    );
    assert!(accounts.contains(TOPIC), "the prod table moved");
    std::fs::create_dir_all(dir.join("accounts")).unwrap();
    std::fs::write(dir.join("accounts/accounts.toml"), accounts).unwrap();
    std::fs::write(dir.join("service.yaml"), "Resources: {}\n").unwrap();
    std::fs::write(dir.join("stages.toml"), STAGES).unwrap();
    config::load(&dir.join("stages.toml")).unwrap().config
}

/// The SNS route on a loopback port, with the registry the deployer registers in.
struct Intake {
    dir: tempfile::TempDir,
    engine: Engine,
    waiters: Arc<StackWaiters>,
    signer: Arc<TestSigner>,
    url: String,
    _certs: tempfile::TempDir,
}

impl Intake {
    async fn start() -> Intake {
        let dir = tempfile::tempdir().unwrap();
        let config = load_config(dir.path());
        let url = format!("sqlite://{}", dir.path().join("state.db").display());
        let store = Store::open(&url).await.unwrap();
        let engine = Engine::new(store, config, Fakes::new().ports(), Arc::new(SystemClock));
        let signer = Arc::new(TestSigner::new());
        let certs = tempfile::tempdir().unwrap();
        signer.seed_cache_dir(certs.path()).unwrap();
        let cache = CertCache::new(Some(certs.path().into())).unwrap();
        let waiters = StackWaiters::new();
        let state = SnsState::new(engine.clone(), Arc::new(cache))
            .unwrap()
            .with_waiters(waiters.clone());
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .unwrap();
        let url = format!("http://{}{PATH}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let _ = axum::serve(listener, routes(state)).await;
        });
        Intake {
            dir,
            engine,
            waiters,
            signer,
            url,
            _certs: certs,
        }
    }

    /// Posts a notification signed for `topic` carrying `message`: (status, result).
    async fn post(&self, topic: &str, message: &str) -> (u16, String) {
        let subject = Some("AWS CloudFormation Notification");
        let body = self.signer.notification(topic, subject, message);
        let answer = reqwest::Client::new()
            .post(&self.url)
            .header("content-type", "text/plain; charset=UTF-8")
            .header("x-amz-sns-message-type", "Notification")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = answer.status().as_u16();
        let json: serde_json::Value = answer.json().await.unwrap();
        (status, json["result"].as_str().unwrap_or_default().into())
    }

    async fn rows(&self, table: &str) -> i64 {
        let sql = format!("SELECT COUNT(*) FROM {table}");
        let query = sqlx::query_scalar(&sql);
        query.fetch_one(self.engine.reads().pool()).await.unwrap()
    }
}

fn prod() -> Account {
    Account {
        name: "prod".into(),
        id: PROD.into(),
        role_arn: None,
        external_id: None,
        region: REGION.into(),
        controller: true,
        session_duration: Duration::from_secs(3600),
        stack_events_topic: Some(TOPIC.into()),
    }
}

fn stack(account: &str, name: &str) -> StackKey {
    StackKey {
        account: account.into(),
        region: REGION.into(),
        stack: name.into(),
    }
}

/// A stack event as CloudFormation writes it into its SNS message.
fn stack_event(stack_id: &str, name: &str, status: &str) -> String {
    format!(
        "StackId='{stack_id}'\nTimestamp='2026-12-03T10:00:00.000Z'\nEventId='e-1'\n\
         LogicalResourceId='{name}'\nNamespace='{PROD}'\nPhysicalResourceId='{stack_id}'\n\
         PrincipalId='AIDAEXAMPLE'\nResourceProperties='null'\nResourceStatus='{status}'\n\
         ResourceStatusReason=''\nResourceType='AWS::CloudFormation::Stack'\nStackName='{name}'\n\
         ClientRequestToken='tollgate-backend-1-prod'\n"
    )
}

/// Has `notify` been notified (a wake-up kept for the next wait)? Consumes it if so.
fn woken(notify: &tokio::sync::Notify) -> bool {
    let mut notified = pin!(notify.notified());
    let mut cx = Context::from_waker(Waker::noop());
    matches!(notified.as_mut().poll(&mut cx), Poll::Ready(()))
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

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..3_000 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{what} did not happen");
}

#[tokio::test]
async fn a_stack_notification_wakes_the_waiter_which_reads_the_stack_once_more() {
    let intake = Intake::start().await;
    let script = Script {
        statuses: vec!["UPDATE_COMPLETE".into()],
        parameters: vec![("ImageUri".into(), OLD.into())],
        update_takes: Some(Duration::from_secs(3600)),
        notifications: Some(Notifications {
            endpoint: intake.url.clone(),
            signer: intake.signer.clone(),
        }),
        stack_id: Some(STACK_ID.into()),
        ..Script::default()
    };
    let stub = Arc::new(CloudFormationStub::start(script).await.unwrap());
    let creds = Credentials::new(stub_config(&stub), Arc::new(Limiter::default()));
    let hourly = PollSettings::every(Duration::from_secs(3600), Duration::from_secs(7200));
    let deployer =
        CloudFormationDeployer::new(Arc::new(creds), hourly).with_waiters(intake.waiters.clone());
    let template = intake.dir.path().join("app.json");
    std::fs::write(&template, r#"{"Resources": {}}"#).unwrap();
    let req = DeployRequest {
        key: "backend/r1/prod/1/deploy-0".into(),
        pipeline: "backend".into(),
        stage: "prod".into(),
        release: ReleaseId(1),
        target: Target {
            account: "prod".into(),
            region: REGION.into(),
        },
        account: prod(),
        deploy: Deploy::CloudFormation {
            stack: "app".into(),
            template,
            parameters: BTreeMap::new(),
            image_parameter: "ImageUri".into(),
            capabilities: vec![],
            execution_role: None,
        },
        image_uri: NEW.into(),
        session_name: "tollgate-backend-1-prod".into(),
        alarm_override: false,
        restore: None,
        history: Default::default(),
    };
    let deploy = tokio::spawn(async move { deployer.deploy_stack(&req, &[]).await });

    // The waiter looked at once after the execute, saw the update in progress, and sleeps
    // for an hour; the update's start was published and changed nothing.
    let described_after_execute = |calls: &[String]| {
        let execute = calls.iter().position(|c| c == "ExecuteChangeSet");
        execute.map_or(0, |i| {
            calls[i..].iter().filter(|c| *c == "DescribeStacks").count()
        })
    };
    until("the first look after the execute", || {
        described_after_execute(&stub.accepted()) == 1 && !stub.published().is_empty()
    })
    .await;
    let create = stub
        .calls()
        .into_iter()
        .find(|c| c.action == "CreateChangeSet");
    let form = create.unwrap().form;
    assert_eq!(
        form.get("NotificationARNs.member.1").map(String::as_str),
        Some(TOPIC)
    );
    assert_eq!(
        intake.waiters.waiting(&stack(PROD, "app")),
        1,
        "the waiter is registered for its stack"
    );

    stub.complete_now().await;
    let result = tokio::time::timeout(Duration::from_secs(60), deploy)
        .await
        .expect("the wake-up ended the hour-long sleep")
        .unwrap()
        .unwrap();

    assert_eq!(
        described_after_execute(&stub.accepted()),
        2,
        "one look after the wake-up"
    );
    assert_eq!(
        stub.published(),
        [
            Published {
                topic: TOPIC.into(),
                status: "UPDATE_IN_PROGRESS".into(),
                answer: 202
            },
            Published {
                topic: TOPIC.into(),
                status: "UPDATE_COMPLETE".into(),
                answer: 200
            },
        ]
    );
    assert!(result.summary.contains("deployed"), "{}", result.summary);
    let timing = result.timing.expect("the waits were measured");
    assert_eq!(timing.stack, stack(PROD, "app"));
    assert!(timing.update_ms.is_some());
    assert_eq!(
        intake.waiters.waiting(&stack(PROD, "app")),
        0,
        "unregistered"
    );
    assert_eq!(
        intake.rows("deliveries").await,
        0,
        "a wake-up records nothing"
    );
}

#[tokio::test]
async fn notifications_that_are_not_this_stacks_end_wake_nothing_and_record_nothing() {
    let intake = Intake::start().await;
    let app = stack(PROD, "app");
    let waiter = intake.waiters.register(app.clone());
    let done = stack_event(STACK_ID, "app", "UPDATE_COMPLETE");

    // A topic not in the configuration: refused like a bad signature.
    let other_topic = "arn:aws:sns:eu-west-1:444444444444:someone-elses";
    assert_eq!(
        intake.post(other_topic, &done).await,
        (403, "forbidden".into())
    );
    // Not a stack event.
    let alarm = r#"{"AlarmName":"prod-5xx","NewStateValue":"ALARM"}"#;
    assert_eq!(intake.post(TOPIC, alarm).await, (202, "ignored".into()));
    // A stack in another account than the topic's.
    let gamma = "arn:aws:cloudformation:eu-west-1:333333333333:stack/app/7d1e5a20";
    let foreign = stack_event(gamma, "app", "UPDATE_COMPLETE");
    assert_eq!(intake.post(TOPIC, &foreign).await, (202, "ignored".into()));
    // The stack still in progress: heard (pushes arrive), not woken.
    let started = stack_event(STACK_ID, "app", "UPDATE_IN_PROGRESS");
    assert!(!waiter.heard());
    assert_eq!(intake.post(TOPIC, &started).await, (202, "heard".into()));
    assert!(waiter.heard());
    // A stack nobody waits on.
    let elsewhere = "arn:aws:cloudformation:eu-west-1:444444444444:stack/web/9a8b";
    let unwatched = stack_event(elsewhere, "web", "UPDATE_COMPLETE");
    assert_eq!(
        intake.post(TOPIC, &unwatched).await,
        (202, "ignored".into())
    );
    assert!(!woken(waiter.notify()), "none of these woke the waiter");

    assert_eq!(intake.post(TOPIC, &done).await, (200, "woken".into()));
    assert!(woken(waiter.notify()));
    assert_eq!(intake.rows("deliveries").await, 0);
    assert_eq!(intake.rows("events").await, 0);
}

//! `aws::cloudwatch::CloudWatchAlarms` through the real AWS SDK for Rust against the scripted
//! CloudWatch stub (moto gap: moto does not serve CloudWatch over RPCv2 CBOR, and cannot
//! throttle). Credentials come from `aws::sts::Credentials` with a real STS on `moto_server`,
//! so a stage account's calls are signed with that account's assumed credentials.

use std::sync::Arc;
use std::time::Duration;

use tollgate::aws::cloudwatch::CloudWatchAlarms;
use tollgate::aws::retry::{Limiter, RetrySettings};
use tollgate::aws::sts::Credentials;
use tollgate::config::Account;
use tollgate::engine::ports::{Alarms, PortError};
use tollgate_testkit::aws_stubs::cloudwatch::CloudWatchStub;
use tollgate_testkit::moto::{DEFAULT_ACCOUNT_ID, MotoServer, REGION};

const BETA: &str = "222222222222";

fn account(name: &str, id: &str) -> Account {
    Account {
        name: name.into(),
        id: id.into(),
        role_arn: Some(format!("arn:aws:iam::{id}:role/tollgate-deploy").into()),
        external_id: None,
        region: REGION.into(),
        controller: false,
        session_duration: Duration::from_secs(3600),
    }
}

fn controller_account() -> Account {
    Account {
        role_arn: None,
        controller: true,
        ..account("tools", DEFAULT_ACCOUNT_ID)
    }
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|n| n.to_string()).collect()
}

/// The stub, and alarms read through it with quick retries.
async fn setup() -> (CloudWatchStub, CloudWatchAlarms) {
    let stub = CloudWatchStub::start().await.unwrap();
    let settings = RetrySettings {
        base: Duration::from_millis(5),
        cap: Duration::from_millis(50),
        ..RetrySettings::default()
    };
    let limiter = Arc::new(Limiter::new(settings));
    let creds = Arc::new(Credentials::new(
        MotoServer::shared().sdk_config(),
        limiter.clone(),
    ));
    let alarms = CloudWatchAlarms::new(creds, limiter).with_endpoint_url(stub.endpoint());
    (stub, alarms)
}

#[tokio::test]
async fn only_alarms_in_alarm_are_returned() {
    let (stub, alarms) = setup().await;
    stub.set_alarm("api-5xx", "ALARM");
    stub.set_alarm("api-latency", "OK");
    stub.set_alarm("queue-depth", "INSUFFICIENT_DATA");
    let asked = names(&["api-latency", "api-5xx", "queue-depth"]);
    let firing = alarms
        .in_alarm(&controller_account(), REGION, &asked)
        .await
        .unwrap();
    assert_eq!(firing, names(&["api-5xx"]));

    stub.set_alarm("api-latency", "ALARM");
    let firing = alarms
        .in_alarm(&controller_account(), REGION, &asked)
        .await
        .unwrap();
    assert_eq!(firing, names(&["api-latency", "api-5xx"]));
    let calls = stub.calls();
    assert_eq!(calls.len(), 2);
    assert!(
        calls
            .iter()
            .all(|c| c.operation == "DescribeAlarms" && c.alarm_names == asked),
        "{calls:?}"
    );
}

#[tokio::test]
async fn an_alarm_that_does_not_exist_is_not_found_and_named() {
    let (stub, alarms) = setup().await;
    stub.set_alarm("api-5xx", "OK");
    let asked = names(&["api-5xx", "api-5xxx"]);
    let err = alarms
        .in_alarm(&controller_account(), REGION, &asked)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, PortError::NotFound(m) if m.contains("`api-5xxx`") && !m.contains("`api-5xx`")),
        "{err}"
    );
}

#[tokio::test]
async fn throttling_is_retried_until_it_succeeds() {
    let (stub, alarms) = setup().await;
    stub.set_alarm("api-5xx", "ALARM");
    stub.throttle(2);
    let firing = alarms
        .in_alarm(&controller_account(), REGION, &names(&["api-5xx"]))
        .await
        .unwrap();
    assert_eq!(firing, names(&["api-5xx"]));
    assert_eq!(stub.calls().len(), 3);
}

#[tokio::test]
async fn more_than_a_hundred_names_are_asked_in_chunks_of_a_hundred() {
    let (stub, alarms) = setup().await;
    let asked: Vec<String> = (0..150).map(|i| format!("alarm-{i:03}")).collect();
    for name in &asked {
        stub.set_alarm(name, "OK");
    }
    stub.set_alarm("alarm-120", "ALARM");
    let firing = alarms
        .in_alarm(&controller_account(), REGION, &asked)
        .await
        .unwrap();
    assert_eq!(firing, names(&["alarm-120"]));
    let sizes: Vec<usize> = stub.calls().iter().map(|c| c.alarm_names.len()).collect();
    assert_eq!(sizes, [100, 50]);
}

#[tokio::test]
async fn no_names_means_no_call() {
    let (stub, alarms) = setup().await;
    assert_eq!(
        alarms
            .in_alarm(&controller_account(), REGION, &[])
            .await
            .unwrap(),
        Vec::<String>::new()
    );
    assert!(stub.calls().is_empty());
}

#[tokio::test]
async fn each_account_is_asked_with_its_own_credentials_in_the_stage_region() {
    let (stub, alarms) = setup().await;
    stub.set_alarm("api-5xx", "OK");
    let asked = names(&["api-5xx"]);
    alarms
        .in_alarm(&account("beta", BETA), "eu-west-1", &asked)
        .await
        .unwrap();
    alarms
        .in_alarm(&account("beta", BETA), "eu-west-1", &asked)
        .await
        .unwrap();
    alarms
        .in_alarm(&controller_account(), REGION, &asked)
        .await
        .unwrap();

    let counts = stub.calls_by_access_key();
    assert_eq!(counts.get("testing"), Some(&1), "{counts:?}");
    let beta: Vec<_> = counts.iter().filter(|(key, _)| *key != "testing").collect();
    assert_eq!(beta.len(), 1, "the assumed session is reused: {counts:?}");
    assert_eq!(*beta[0].1, 2);
    let regions: Vec<_> = stub
        .calls()
        .iter()
        .map(|c| c.region.clone().unwrap_or_default())
        .collect();
    assert_eq!(regions, ["eu-west-1", "eu-west-1", REGION]);
}

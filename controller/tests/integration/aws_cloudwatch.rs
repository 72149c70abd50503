//! `aws::cloudwatch::CloudWatchAlarms` through the real AWS SDK for Rust against the scripted
//! CloudWatch stub (moto gap: moto does not serve CloudWatch over RPCv2 CBOR, and cannot
//! throttle). Credentials come from `aws::sts::Credentials` with a real STS on `moto_server`,
//! so a stage account's calls are signed with that account's assumed credentials. Bake reads
//! count data points with `GetMetricData` on what each alarm watches.

use std::sync::Arc;
use std::time::Duration;

use tollgate::aws::cloudwatch::CloudWatchAlarms;
use tollgate::aws::retry::{Limiter, RetrySettings};
use tollgate::aws::sts::Credentials;
use tollgate::config::Account;
use tollgate::domain::{AlarmReading, AlarmState};
use tollgate::engine::ports::{Alarms, BakeRead, DataWindow, PortError};
use tollgate_testkit::aws_stubs::cloudwatch::{CloudWatchStub, MathQuery, MetricSpec, Watches};
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
        stack_events_topic: None,
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

// ----- bake reads: states and data points (DescribeAlarms + GetMetricData) -----------------

/// A minute-aligned epoch second ten minutes ago, and that instant plus `secs`.
fn ago_aligned() -> (f64, impl Fn(f64) -> chrono::DateTime<chrono::Utc>) {
    let now = chrono::Utc::now().timestamp();
    let m0 = (now - 600) / 60 * 60;
    let at = |secs: f64| chrono::DateTime::from_timestamp_millis((secs * 1000.0) as i64).unwrap();
    (m0 as f64, at)
}

/// A reading of a metric alarm over one 60 s period, in ALARM after one breaching data point:
/// it reports a breach within (1 + 1) × 60 s + 60 s.
/// A bake read of a stage whose `alarm_delay` is `auto`.
fn auto(window: Option<DataWindow>) -> BakeRead {
    BakeRead {
        window,
        composite_delays: true,
    }
}

fn reading(alarm: &str, state: AlarmState, datapoints: Option<u32>) -> AlarmReading {
    AlarmReading {
        alarm: alarm.into(),
        state,
        datapoints,
        reports_within_secs: Some(180),
    }
}

#[tokio::test]
async fn a_bake_read_counts_each_alarms_data_points_from_the_window_start() {
    let (stub, alarms) = setup().await;
    let (m0, at) = ago_aligned();
    // The deploy finished half a minute into m0: the period starting at m0 holds old code's
    // data, and CloudWatch hands it back (StartTime is rounded down), but it does not count.
    let since = m0 + 30.0;
    stub.set_alarm("api-5xx", "OK");
    stub.put_alarm_samples(
        "api-5xx",
        &[m0 + 10.0, m0 + 70.0, m0 + 75.0, m0 + 130.0, m0 + 190.0],
    );
    let latency = MetricSpec {
        namespace: "AWS/ApplicationELB".into(),
        name: "TargetResponseTime".into(),
        dimensions: vec![
            ("TargetGroup".into(), "tg/api".into()),
            ("LoadBalancer".into(), "app/api".into()),
        ],
        period: 60,
        stat: "p99".into(),
    };
    stub.set_alarm_watching("api-latency", "OK", Watches::Metric(latency.clone()));
    stub.put_samples(
        &latency,
        &[(m0 + 61.0, 0.2), (m0 + 62.0, 0.9), (m0 + 250.0, 0.3)],
    );
    stub.set_alarm("queue-depth", "INSUFFICIENT_DATA");
    let children = names(&["api-latency", "queue-depth"]);
    stub.set_alarm_watching("service-health", "OK", Watches::Alarms(children));
    // In ALARM once 3 of its last 5 one-minute data points breach: (3 + 1) × 60 s + 60 s.
    stub.set_evaluation("queue-depth", 5, Some(3));
    // 10 of 10 one-minute data points (DatapointsToAlarm unset): (10 + 1) × 60 s + 60 s.
    stub.set_evaluation("api-latency", 10, None);

    let asked = names(&["api-5xx", "api-latency", "queue-depth", "service-health"]);
    let window = DataWindow {
        from: at(since),
        until: chrono::Utc::now(),
    };
    let read = alarms
        .read(&controller_account(), REGION, &asked, auto(Some(window)))
        .await
        .unwrap();
    assert_eq!(
        read,
        vec![
            reading("api-5xx", AlarmState::Ok, Some(3)),
            AlarmReading {
                reports_within_secs: Some(720),
                ..reading("api-latency", AlarmState::Ok, Some(2))
            },
            AlarmReading {
                reports_within_secs: Some(300),
                ..reading("queue-depth", AlarmState::InsufficientData, Some(0))
            },
            // A composite alarm changes state as soon as one of the alarms under it does: it
            // reports within the longest of theirs.
            AlarmReading {
                reports_within_secs: Some(720),
                ..reading("service-health", AlarmState::Ok, None)
            },
        ]
    );
    let calls = stub.calls();
    let ops: Vec<&str> = calls.iter().map(|c| c.operation.as_str()).collect();
    assert_eq!(
        ops,
        [
            "DescribeAlarms",
            "DescribeAlarms",
            "DescribeAlarms",
            "GetMetricData"
        ],
        "the alarms; the composite's children, then those by name; one query per metric alarm"
    );
    assert_eq!(calls[1].children_of.as_deref(), Some("service-health"));
    assert_eq!(calls[2].alarm_names, names(&["api-latency", "queue-depth"]));
    assert_eq!(calls[3].query_ids.len(), 3, "{:?}", calls[3]);
    assert_eq!(calls[3].start_ms, Some((since * 1000.0) as i64));
}

/// A composite alarm under a composite alarm: the delay is the longest of every metric alarm
/// under the one listed, read once and then kept; the entry check reads no children.
#[tokio::test]
async fn a_composite_alarm_reports_within_the_longest_of_the_metric_alarms_under_it() {
    let (stub, alarms) = setup().await;
    stub.set_alarm("api-5xx", "OK");
    stub.set_alarm("db-errors", "OK");
    // 10 of 10 one-minute data points: (10 + 1) × 60 s + 60 s.
    stub.set_evaluation("db-errors", 10, None);
    stub.set_alarm_watching("deps", "OK", Watches::Alarms(names(&["db-errors"])));
    let under = names(&["api-5xx", "deps"]);
    stub.set_alarm_watching("service-health", "OK", Watches::Alarms(under));
    let asked = names(&["service-health"]);
    let account = controller_account();

    assert!(
        alarms
            .in_alarm(&account, REGION, &asked)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(stub.calls().len(), 1, "the entry check reads no children");

    let read = alarms
        .read(&account, REGION, &asked, auto(None))
        .await
        .unwrap();
    assert_eq!(
        read,
        vec![AlarmReading {
            reports_within_secs: Some(720),
            ..reading("service-health", AlarmState::Ok, None)
        }]
    );
    let calls = stub.calls();
    let asked_of = |c: &tollgate_testkit::aws_stubs::cloudwatch::Call| {
        (c.children_of.clone(), c.alarm_names.clone())
    };
    let seen: Vec<_> = calls[1..].iter().map(asked_of).collect();
    assert_eq!(
        seen,
        [
            (None, names(&["service-health"])),
            (Some("service-health".to_string()), vec![]),
            (None, names(&["api-5xx", "deps"])),
            (Some("deps".to_string()), vec![]),
            (None, names(&["db-errors"])),
        ]
    );

    // Read again: the composite's delay is kept, only its state is read.
    alarms
        .read(&account, REGION, &asked, auto(None))
        .await
        .unwrap();
    assert_eq!(stub.calls().len(), calls.len() + 1);
}

/// With `alarm_delay` fixed the bake never uses a composite alarm's delay: a bake read reads
/// the alarms' states and data points, and nothing under a composite.
#[tokio::test]
async fn a_bake_read_with_a_fixed_alarm_delay_reads_nothing_under_a_composite() {
    let (stub, alarms) = setup().await;
    let (m0, at) = ago_aligned();
    stub.set_alarm("api-5xx", "OK");
    stub.put_alarm_samples("api-5xx", &[m0 + 5.0]);
    stub.set_evaluation("api-5xx", 10, None);
    let under = names(&["api-5xx"]);
    stub.set_alarm_watching("service-health", "ALARM", Watches::Alarms(under));
    let asked = names(&["service-health", "api-5xx"]);
    let fixed = BakeRead {
        window: Some(DataWindow {
            from: at(m0),
            until: chrono::Utc::now(),
        }),
        composite_delays: false,
    };
    let read = alarms
        .read(&controller_account(), REGION, &asked, fixed)
        .await
        .unwrap();
    assert_eq!(
        read,
        vec![
            AlarmReading {
                reports_within_secs: None,
                ..reading("service-health", AlarmState::Alarm, None)
            },
            AlarmReading {
                reports_within_secs: Some(720),
                ..reading("api-5xx", AlarmState::Ok, Some(1))
            },
        ]
    );
    let calls = stub.calls();
    let ops: Vec<&str> = calls.iter().map(|c| c.operation.as_str()).collect();
    assert_eq!(ops, ["DescribeAlarms", "GetMetricData"]);
    assert!(calls.iter().all(|c| c.children_of.is_none()), "{calls:?}");
}

/// When what is under a composite alarm cannot be read (throttled past every retry), the bake
/// read still returns the states it read: a composite alarm in ALARM is seen, only its part
/// of the hold is missing.
#[tokio::test]
async fn a_composite_in_alarm_is_read_even_when_its_children_cannot_be() {
    let (stub, alarms) = setup().await;
    stub.set_alarm("api-5xx", "ALARM");
    stub.set_alarm_watching(
        "service-health",
        "ALARM",
        Watches::Alarms(names(&["api-5xx"])),
    );
    stub.throttle_children(100);
    let asked = names(&["service-health"]);
    let read = alarms
        .read(&controller_account(), REGION, &asked, auto(None))
        .await
        .unwrap();
    assert_eq!(
        read,
        vec![AlarmReading {
            reports_within_secs: None,
            ..reading("service-health", AlarmState::Alarm, None)
        }]
    );
}

/// The stub follows API_DescribeAlarms: `ChildrenOfAlarmName` goes with no other parameter
/// but `MaxRecords` and `NextToken`, and returns the children, not the composite.
#[tokio::test]
async fn the_stub_refuses_children_of_an_alarm_with_other_parameters() {
    let (stub, _) = setup().await;
    stub.set_alarm("api-5xx", "OK");
    stub.set_alarm_watching("health", "OK", Watches::Alarms(names(&["api-5xx"])));
    let config = MotoServer::shared()
        .sdk_config()
        .to_builder()
        .endpoint_url(stub.endpoint())
        .build();
    let client = aws_sdk_cloudwatch::Client::new(&config);
    let out = client
        .describe_alarms()
        .children_of_alarm_name("health")
        .max_records(100)
        .send()
        .await
        .unwrap();
    let listed: Vec<&str> = out
        .metric_alarms()
        .iter()
        .filter_map(|a| a.alarm_name())
        .collect();
    assert_eq!(listed, ["api-5xx"]);
    assert!(out.composite_alarms().is_empty());
    assert_eq!(out.metric_alarms()[0].period(), None, "name and state only");

    let refused = client
        .describe_alarms()
        .children_of_alarm_name("health")
        .alarm_names("api-5xx")
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        aws_sdk_cloudwatch::error::ProvideErrorMetadata::code(&refused),
        Some("ValidationError"),
        "{refused:?}"
    );
}

#[tokio::test]
async fn a_metric_math_alarm_counts_the_expression_it_evaluates() {
    let (stub, alarms) = setup().await;
    let (m0, at) = ago_aligned();
    let errors = MetricSpec::sum("Errors");
    let requests = MetricSpec::sum("Requests");
    let queries = vec![
        MathQuery {
            id: "e".into(),
            metric: Some(errors.clone()),
            expression: None,
            return_data: false,
        },
        MathQuery {
            id: "r".into(),
            metric: Some(requests.clone()),
            expression: None,
            return_data: false,
        },
        MathQuery {
            id: "rate".into(),
            metric: None,
            expression: Some("e / r".into()),
            return_data: true,
        },
    ];
    stub.set_alarm_watching("error-rate", "OK", Watches::Math(queries));
    stub.set_alarm("api-5xx", "OK");
    stub.put_alarm_samples("api-5xx", &[m0 + 5.0]);
    // Requests in three periods, errors (0 when none) reported in two of them.
    stub.put_samples(
        &requests,
        &[(m0 + 1.0, 5.0), (m0 + 61.0, 7.0), (m0 + 121.0, 4.0)],
    );
    stub.put_samples(&errors, &[(m0 + 2.0, 0.0), (m0 + 62.0, 1.0)]);

    let window = DataWindow {
        from: at(m0),
        until: chrono::Utc::now(),
    };
    let read = alarms
        .read(
            &controller_account(),
            REGION,
            &names(&["error-rate", "api-5xx"]),
            auto(Some(window)),
        )
        .await
        .unwrap();
    assert_eq!(
        read,
        vec![
            reading("error-rate", AlarmState::Ok, Some(2)),
            reading("api-5xx", AlarmState::Ok, Some(1)),
        ]
    );
    let metric_calls: Vec<Vec<String>> = stub
        .calls()
        .iter()
        .filter(|c| c.operation == "GetMetricData")
        .map(|c| c.query_ids.clone())
        .collect();
    assert_eq!(
        metric_calls,
        [names(&["e", "r", "rate"]), names(&["a0"])],
        "the alarm's own queries go in a call of their own"
    );
}

#[tokio::test]
async fn a_bake_read_without_a_window_reads_states_only() {
    let (stub, alarms) = setup().await;
    stub.set_alarm("api-5xx", "ALARM");
    let read = alarms
        .read(
            &controller_account(),
            REGION,
            &names(&["api-5xx"]),
            BakeRead::default(),
        )
        .await
        .unwrap();
    assert_eq!(read, vec![reading("api-5xx", AlarmState::Alarm, None)]);
    let ops: Vec<String> = stub.calls().into_iter().map(|c| c.operation).collect();
    assert_eq!(ops, ["DescribeAlarms"]);
}

#[tokio::test]
async fn a_bake_read_of_an_alarm_that_does_not_exist_is_not_found() {
    let (stub, alarms) = setup().await;
    stub.set_alarm("api-5xx", "OK");
    let window = DataWindow {
        from: chrono::Utc::now() - chrono::Duration::minutes(5),
        until: chrono::Utc::now(),
    };
    let err = alarms
        .read(
            &controller_account(),
            REGION,
            &names(&["api-5xx", "api-5xxx"]),
            auto(Some(window)),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, PortError::NotFound(m) if m.contains("`api-5xxx`")),
        "{err}"
    );
    assert!(
        stub.calls().iter().all(|c| c.operation != "GetMetricData"),
        "no data is read for a stage whose alarms are wrong"
    );
}

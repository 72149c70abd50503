//! SNS signature verification against messages signed by the test CA, whose certificate reaches
//! the verifier only through a pre-seeded cache directory. No test leaves loopback: the cache's
//! HTTP client resolves every name to 127.0.0.1 and ignores proxies.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tempfile::TempDir;
use tollgate::http::sns_verify::{
    AlarmState, CertCache, SignatureVersion, SnsMessage, SnsMessageAttribute, SnsType,
    SnsVerifyError, cache_file_name, check_cert_url, confirmation_url, fetch_client_builder,
    parse_alarm, signed_fields, string_to_sign, verify_at,
};
use tollgate_testkit::sns::{
    TestSigner, alarm_subject, body, unsigned_confirmation, unsigned_notification,
};
use url::Url;

const TOPIC: &str = "arn:aws:sns:us-east-1:111122223333:tollgate-alarms";

/// Resolves every host name to loopback, so a fetch can only reach 127.0.0.1:443.
struct LoopbackOnly;

impl reqwest::dns::Resolve for LoopbackOnly {
    fn resolve(&self, _name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 443);
        let addrs: reqwest::dns::Addrs = Box::new(std::iter::once(addr));
        Box::pin(async move { Ok(addrs) })
    }
}

fn loopback_client() -> reqwest::Client {
    fetch_client_builder()
        .no_proxy()
        .dns_resolver(Arc::new(LoopbackOnly))
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap()
}

struct Fixture {
    signer: TestSigner,
    dir: TempDir,
    cache: CertCache,
}

fn fixture() -> Fixture {
    let signer = TestSigner::new();
    let dir = tempfile::tempdir().unwrap();
    signer.seed_cache_dir_for(dir.path(), "us-east-1").unwrap();
    let cache = CertCache::with_client(Some(dir.path().to_path_buf()), loopback_client());
    Fixture { signer, dir, cache }
}

fn notification(f: &Fixture, subject: Option<&str>, version: SignatureVersion) -> SnsMessage {
    let msg = unsigned_notification(TOPIC, subject, "{\"hello\":\"world\"}\nline two");
    f.signer.signed(msg, version)
}

fn confirmation(f: &Fixture, kind: SnsType, version: SignatureVersion) -> SnsMessage {
    f.signer.signed(unsigned_confirmation(kind, TOPIC), version)
}

/// Every message kind the tests sign, with both signature versions.
fn all_valid(f: &Fixture) -> Vec<SnsMessage> {
    let mut out = Vec::new();
    for version in [SignatureVersion::V1, SignatureVersion::V2] {
        out.push(notification(f, Some("Deploy finished"), version));
        out.push(notification(f, None, version));
        out.push(confirmation(f, SnsType::SubscriptionConfirmation, version));
        out.push(confirmation(f, SnsType::UnsubscribeConfirmation, version));
    }
    out
}

fn reparse(msg: &SnsMessage) -> SnsMessage {
    SnsMessage::parse(body(msg).as_bytes()).unwrap()
}

#[tokio::test]
async fn valid_v1_and_v2_messages_verify_after_a_round_trip_through_the_body() {
    let f = fixture();
    for msg in all_valid(&f) {
        let parsed = reparse(&msg);
        assert_eq!(parsed, msg);
        let outcome = verify_at(&parsed, &f.cache, SystemTime::now()).await;
        assert!(
            outcome.is_ok(),
            "{:?} v{}: {outcome:?}",
            msg.message_type,
            msg.signature_version
        );
    }
}

#[test]
fn string_to_sign_follows_the_documented_field_order() {
    let mut msg = unsigned_notification(TOPIC, Some("S"), "M");
    msg.message_id = "id".into();
    msg.timestamp = "T".into();
    let expected = format!(
        "Message\nM\nMessageId\nid\nSubject\nS\nTimestamp\nT\nTopicArn\n{TOPIC}\nType\nNotification\n"
    );
    assert_eq!(string_to_sign(&msg).unwrap(), expected);
    msg.subject = None;
    assert!(!string_to_sign(&msg).unwrap().contains("Subject"));

    let mut conf = unsigned_confirmation(SnsType::SubscriptionConfirmation, TOPIC);
    conf.subject = Some("ignored".into());
    let names: Vec<&str> = signed_fields(&conf)
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    let documented = [
        "Message",
        "MessageId",
        "SubscribeURL",
        "Timestamp",
        "Token",
        "TopicArn",
        "Type",
    ];
    assert_eq!(names, documented);
    conf.token = None;
    assert!(matches!(
        string_to_sign(&conf),
        Err(SnsVerifyError::MissingField("Token"))
    ));
}

#[test]
fn bodies_are_laid_out_as_sns_sends_them() {
    let f = fixture();
    let text = f.signer.notification(TOPIC, Some("Hi"), "Hello world!");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "{");
    assert_eq!(lines[1], "  \"Type\" : \"Notification\",");
    let keys: Vec<&str> = lines[1..lines.len() - 1]
        .iter()
        .map(|l| l.trim().split(" : ").next().unwrap().trim_matches('"'))
        .collect();
    let expected = [
        "Type",
        "MessageId",
        "TopicArn",
        "Subject",
        "Message",
        "Timestamp",
        "SignatureVersion",
        "Signature",
        "SigningCertURL",
        "UnsubscribeURL",
    ];
    assert_eq!(keys, expected);
    assert_eq!(*lines.last().unwrap(), "}");
}

/// Seeds the signer's certificate under `url`'s name too, so only the URL check can refuse it.
fn seed_under(f: &Fixture, url: &str) {
    if let Ok(parsed) = Url::parse(url) {
        std::fs::write(
            f.dir.path().join(cache_file_name(&parsed)),
            f.signer.cert_pem(),
        )
        .unwrap();
    }
}

#[tokio::test]
async fn certificate_urls_off_the_sns_host_are_rejected_even_when_cached() {
    let f = fixture();
    let genuine = notification(&f, None, SignatureVersion::V2);
    let id = genuine
        .signing_cert_url
        .rsplit('/')
        .next()
        .unwrap()
        .to_owned();
    for url in [
        format!("https://s3.amazonaws.com/sns-certs/{id}"),
        format!("https://sns-certs.s3.us-east-1.amazonaws.com/{id}"),
        format!("https://sns.evil.com/{id}"),
        format!("https://sns.us-east-1.amazonaws.com.evil.com/{id}"),
        format!("https://sns.us-east-1.amazonaws.com/?file={id}"),
        format!("https://sns.us-east-1.amazonaws.com/SimpleNotificationService?{id}"),
        format!("http://sns.us-east-1.amazonaws.com/{id}"),
        format!("https://user:pw@sns.us-east-1.amazonaws.com/{id}"),
        format!("https://sns.us-east-1.amazonaws.com:8443/{id}"),
    ] {
        seed_under(&f, &url);
        let mut msg = genuine.clone();
        msg.signing_cert_url = url.clone();
        let err = verify_at(&msg, &f.cache, SystemTime::now())
            .await
            .unwrap_err();
        assert!(
            matches!(err, SnsVerifyError::BadCertUrl(_)),
            "{url}: {err:?}"
        );
    }
    assert!(
        verify_at(&genuine, &f.cache, SystemTime::now())
            .await
            .is_ok()
    );
}

fn tampered_notifications(msg: &SnsMessage) -> Vec<(&'static str, SnsMessage)> {
    let edit = |f: fn(&mut SnsMessage)| {
        let mut m = msg.clone();
        f(&mut m);
        m
    };
    vec![
        ("Message", edit(|m| m.message.push(' '))),
        (
            "MessageId",
            // Always a different first character, whatever the id starts with.
            edit(|m| {
                let first = if m.message_id.starts_with('f') {
                    "e"
                } else {
                    "f"
                };
                m.message_id.replace_range(0..1, first)
            }),
        ),
        (
            "Subject changed",
            edit(|m| m.subject = Some("Deploy failed".into())),
        ),
        ("Subject removed", edit(|m| m.subject = None)),
        (
            "Timestamp",
            edit(|m| m.timestamp.replace_range(0..4, "2099")),
        ),
        ("TopicArn", edit(|m| m.topic_arn.push('2'))),
        ("Type", edit(as_confirmation)),
    ]
}

/// A notification relabelled as a confirmation, given the fields a confirmation needs.
fn as_confirmation(m: &mut SnsMessage) {
    m.message_type = SnsType::SubscriptionConfirmation;
    m.token = Some("00".into());
    m.subscribe_url =
        Some("https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription".into());
}

fn tampered_confirmations(msg: &SnsMessage) -> Vec<(&'static str, SnsMessage)> {
    let edit = |f: fn(&mut SnsMessage)| {
        let mut m = msg.clone();
        f(&mut m);
        m
    };
    vec![
        ("Message", edit(|m| m.message.push('.'))),
        ("MessageId", edit(|m| m.message_id.push('0'))),
        (
            "SubscribeURL",
            edit(|m| m.subscribe_url.as_mut().unwrap().push('0')),
        ),
        (
            "Timestamp",
            edit(|m| m.timestamp.replace_range(0..4, "2001")),
        ),
        ("Token", edit(|m| m.token.as_mut().unwrap().push('0'))),
        ("TopicArn", edit(|m| m.topic_arn.push('2'))),
        (
            "Type",
            edit(|m| m.message_type = SnsType::UnsubscribeConfirmation),
        ),
    ]
}

#[tokio::test]
async fn tampering_with_any_signed_field_breaks_the_signature() {
    let f = fixture();
    for version in [SignatureVersion::V1, SignatureVersion::V2] {
        let note = notification(&f, Some("Deploy finished"), version);
        let conf = confirmation(&f, SnsType::SubscriptionConfirmation, version);
        let cases = tampered_notifications(&note)
            .into_iter()
            .chain(tampered_confirmations(&conf));
        for (field, msg) in cases {
            let Err(err) = verify_at(&reparse(&msg), &f.cache, SystemTime::now()).await else {
                panic!("{field} v{version:?}: a tampered message verified");
            };
            assert!(
                matches!(err, SnsVerifyError::BadSignature),
                "{field} v{version:?}: {err:?}"
            );
        }
    }
}

#[tokio::test]
async fn unsigned_fields_do_not_affect_verification() {
    let f = fixture();
    let mut msg = notification(&f, None, SignatureVersion::V1);
    msg.unsubscribe_url = Some("https://example.invalid/".into());
    let attr = SnsMessageAttribute {
        data_type: "String".into(),
        value: "mallory".into(),
    };
    msg.message_attributes.insert("approver".into(), attr);
    assert!(
        verify_at(&reparse(&msg), &f.cache, SystemTime::now())
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn a_signature_checked_under_the_other_version_fails() {
    let f = fixture();
    for (signed, claimed) in [(SignatureVersion::V1, "2"), (SignatureVersion::V2, "1")] {
        for mut msg in [
            notification(&f, Some("s"), signed),
            confirmation(&f, SnsType::SubscriptionConfirmation, signed),
        ] {
            msg.signature_version = claimed.into();
            let err = verify_at(&msg, &f.cache, SystemTime::now())
                .await
                .unwrap_err();
            assert!(
                matches!(err, SnsVerifyError::BadSignature),
                "{signed:?}->{claimed}: {err:?}"
            );
        }
    }
}

#[tokio::test]
async fn other_signature_versions_are_unsupported() {
    let f = fixture();
    for claimed in ["", "0", "3", "1 ", "v2", "SHA256"] {
        let mut msg = notification(&f, None, SignatureVersion::V2);
        msg.signature_version = claimed.into();
        let err = verify_at(&reparse(&msg), &f.cache, SystemTime::now())
            .await
            .unwrap_err();
        assert!(
            matches!(err, SnsVerifyError::UnsupportedVersion(_)),
            "{claimed:?}: {err:?}"
        );
    }
}

#[tokio::test]
async fn bad_signature_encodings_are_told_apart_from_wrong_signatures() {
    let f = fixture();
    let cases = [
        ("not base64!", true),
        ("QUJD=", true),
        ("", false),
        ("QUJD", false),
    ];
    for (signature, bad_encoding) in cases {
        let mut msg = notification(&f, None, SignatureVersion::V1);
        msg.signature = signature.into();
        let err = verify_at(&msg, &f.cache, SystemTime::now())
            .await
            .unwrap_err();
        let expected = if bad_encoding {
            matches!(err, SnsVerifyError::BadSignatureEncoding)
        } else {
            matches!(err, SnsVerifyError::BadSignature)
        };
        assert!(expected, "{signature:?}: {err:?}");
    }
}

fn body_with(f: &Fixture, key: &str, value: &str) -> String {
    let text = body(&notification(f, None, SignatureVersion::V1));
    let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
    json[key] = serde_json::Value::String(value.into());
    json.to_string()
}

#[test]
fn malformed_bodies_are_refused_with_a_named_error() {
    let f = fixture();
    let unknown = SnsMessage::parse(body_with(&f, "Type", "Notification2").as_bytes());
    assert!(matches!(unknown, Err(SnsVerifyError::UnknownType(t)) if t == "Notification2"));
    let text = body(&notification(&f, None, SignatureVersion::V1));
    let missing = text.replace("\"MessageId\"", "\"MessageID\"");
    let duplicated = text.replacen("{", "{\"Type\" : \"Notification\",", 1);
    for bad in [
        "",
        "[]",
        "not json",
        "{\"Type\":\"Notification\"}",
        &missing,
        &duplicated,
    ] {
        let err = SnsMessage::parse(bad.as_bytes()).unwrap_err();
        assert!(matches!(err, SnsVerifyError::BadJson(_)), "{bad}: {err:?}");
    }
}

#[tokio::test]
async fn a_certificate_neither_cached_nor_reachable_is_a_fetch_error_quickly() {
    let f = fixture();
    let empty = tempfile::tempdir().unwrap();
    let cache = CertCache::with_client(Some(empty.path().to_path_buf()), loopback_client());
    let msg = notification(&f, None, SignatureVersion::V2);
    let started = Instant::now();
    let err = verify_at(&msg, &cache, SystemTime::now())
        .await
        .unwrap_err();
    assert!(matches!(err, SnsVerifyError::CertFetch(_)), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let no_dir = CertCache::with_client(None, loopback_client());
    let err = verify_at(&msg, &no_dir, SystemTime::now())
        .await
        .unwrap_err();
    assert!(matches!(err, SnsVerifyError::CertFetch(_)), "{err:?}");
}

#[tokio::test]
async fn certificates_are_only_good_within_their_validity_period() {
    let f = fixture();
    let msg = notification(&f, None, SignatureVersion::V2);
    let year = Duration::from_secs(366 * 24 * 3600);
    let later = verify_at(&msg, &f.cache, SystemTime::now() + year).await;
    assert!(
        matches!(later, Err(SnsVerifyError::CertExpired)),
        "{later:?}"
    );
    let earlier = verify_at(
        &msg,
        &f.cache,
        SystemTime::now() - 2 * Duration::from_secs(3600),
    )
    .await;
    assert!(
        matches!(earlier, Err(SnsVerifyError::CertNotYetValid)),
        "{earlier:?}"
    );
}

fn overwrite_seeded(dir: &Path, msg: &SnsMessage, content: &str) {
    let url = check_cert_url(&msg.signing_cert_url).unwrap();
    std::fs::write(dir.join(cache_file_name(&url)), content).unwrap();
}

#[tokio::test]
async fn a_garbage_seeded_certificate_is_unusable() {
    let f = fixture();
    let msg = notification(&f, None, SignatureVersion::V1);
    overwrite_seeded(
        f.dir.path(),
        &msg,
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    );
    let err = verify_at(&msg, &f.cache, SystemTime::now())
        .await
        .unwrap_err();
    assert!(matches!(err, SnsVerifyError::BadCert(_)), "{err:?}");
}

#[tokio::test]
async fn a_certificate_once_loaded_is_served_from_memory() {
    let f = fixture();
    let msg = notification(&f, None, SignatureVersion::V1);
    verify_at(&msg, &f.cache, SystemTime::now()).await.unwrap();
    overwrite_seeded(f.dir.path(), &msg, "gone");
    assert!(verify_at(&msg, &f.cache, SystemTime::now()).await.is_ok());
}

#[test]
fn the_confirmation_url_is_the_topics_own() {
    let f = fixture();
    let conf = confirmation(&f, SnsType::SubscriptionConfirmation, SignatureVersion::V1);
    let url = confirmation_url(&conf).unwrap();
    assert_eq!(url.host_str(), Some("sns.us-east-1.amazonaws.com"));
    let mut other = conf.clone();
    other.subscribe_url = Some(
        other
            .subscribe_url
            .unwrap()
            .replace("us-east-1", "us-west-2"),
    );
    assert!(matches!(
        confirmation_url(&other),
        Err(SnsVerifyError::BadSubscribeUrl(_))
    ));
    let mut other_topic = conf.clone();
    other_topic.topic_arn = TOPIC.replace("tollgate-alarms", "other");
    assert!(confirmation_url(&other_topic).is_err());
    let note = notification(&f, None, SignatureVersion::V1);
    assert!(confirmation_url(&note).is_err());
}

/// A notification CloudWatch published for a real alarm (account id replaced).
const REAL_ALARM: &str = r#"{"AlarmName":"SharedInfra-Alpha-Database-DatabaseInstanceObservabilityHighDatabaseConnectionsAlarm5CD1334F-FetIEoRn5hgP","AlarmDescription":null,"AWSAccountId":"111122223333","AlarmConfigurationUpdatedTimestamp":"2024-07-05T15:19:31.960+0000","NewStateValue":"ALARM","NewStateReason":"Threshold Crossed: 1 datapoint [8.0 (05/07/24 15:19:00)] was greater than or equal to the threshold (5.0).","StateChangeTime":"2024-07-05T15:20:44.959+0000","Region":"EU (Milan)","AlarmArn":"arn:aws:cloudwatch:eu-south-1:111122223333:alarm:SharedInfra-Alpha-Database-DatabaseInstanceObservabilityHighDatabaseConnectionsAlarm5CD1334F-FetIEoRn5hgP","OldStateValue":"OK","OKActions":[],"AlarmActions":["arn:aws:sns:eu-south-1:111122223333:condense-alarms-topic"],"InsufficientDataActions":[],"Trigger":{"MetricName":"DatabaseConnections","Namespace":"AWS/RDS","StatisticType":"Statistic","Statistic":"AVERAGE","Unit":null,"Dimensions":[{"value":"sharedinfra-alpha-databas-databaseinstance24d16791-o3f70cahozc6","name":"DBInstanceIdentifier"}],"Period":60,"EvaluationPeriods":1,"ComparisonOperator":"GreaterThanOrEqualToThreshold","Threshold":5.0,"TreatMissingData":"","EvaluateLowSampleCountPercentile":""}}"#;

#[test]
fn a_real_cloudwatch_alarm_message_parses() {
    let alarm = parse_alarm(REAL_ALARM).unwrap();
    assert!(alarm.alarm_name.starts_with("SharedInfra-Alpha-Database-"));
    assert_eq!(alarm.aws_account_id, "111122223333");
    assert_eq!(alarm.new_state_value, AlarmState::Alarm);
    assert_eq!(alarm.old_state_value, AlarmState::Ok);
    assert_eq!(alarm.region, "EU (Milan)");
    assert_eq!(alarm.region_code(), "eu-south-1");
    assert_eq!(alarm.alarm_description, None);
    let changed = alarm.state_changed_at().unwrap();
    assert_eq!(changed.to_rfc3339(), "2024-07-05T15:20:44.959+00:00");
    let trigger = alarm.trigger.unwrap();
    assert_eq!(trigger.metric_name.as_deref(), Some("DatabaseConnections"));
    assert_eq!(trigger.threshold, Some(5.0));
    assert_eq!(trigger.dimensions[0].name, "DBInstanceIdentifier");
}

#[test]
fn alarm_messages_whose_arn_disagrees_are_refused() {
    for (from, to) in [
        (":111122223333:alarm:", ":999999999999:alarm:"),
        (":alarm:SharedInfra", ":alarm:Other"),
        ("arn:aws:cloudwatch:", "arn:aws:sns:"),
        (
            "\"NewStateValue\":\"ALARM\"",
            "\"NewStateValue\":\"BROKEN\"",
        ),
    ] {
        let changed = REAL_ALARM.replacen(from, to, 1);
        assert_ne!(changed, REAL_ALARM);
        let err = parse_alarm(&changed).unwrap_err();
        assert!(matches!(err, SnsVerifyError::BadAlarm(_)), "{to}: {err:?}");
    }
    assert!(parse_alarm("not json").is_err());
}

#[tokio::test]
async fn generated_alarm_notifications_verify_and_parse() {
    let f = fixture();
    let text = f.signer.alarm_notification(
        TOPIC,
        "beta-5xx",
        "111122223333",
        "us-east-1",
        AlarmState::Alarm,
    );
    let msg = SnsMessage::parse(text.as_bytes()).unwrap();
    verify_at(&msg, &f.cache, SystemTime::now()).await.unwrap();
    assert_eq!(
        msg.subject.as_deref(),
        Some("ALARM: \"beta-5xx\" in US East (N. Virginia)")
    );
    let alarm = parse_alarm(&msg.message).unwrap();
    assert_eq!(alarm.alarm_name, "beta-5xx");
    assert_eq!(alarm.region_code(), "us-east-1");
    assert_eq!(alarm.new_state_value, AlarmState::Alarm);
    assert!(alarm.state_changed_at().is_some());
}

#[test]
fn long_alarm_names_are_shortened_in_the_subject_as_cloudwatch_does() {
    let name = "SharedInfra-Alpha-Database-DatabaseInstanceObservabilityHighDatabaseConnectionsAlarm5CD1334F-FetIEoRn5hgP";
    let subject = alarm_subject(name, "eu-south-1", AlarmState::Alarm);
    let real = "ALARM: \"SharedInfra-Alpha-Database-DatabaseInstanceObservabilityHighDatabaseConnec...\" in EU (Milan)";
    assert_eq!(subject, real);
}

/// Receives SNS HTTP deliveries on loopback and hands their bodies over.
async fn delivery_receiver() -> (String, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
    let app = axum::Router::new().route(
        "/sns",
        axum::routing::post(move |body: String| async move {
            let _ = sender.send(body);
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}/sns", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (endpoint, receiver)
}

async fn publish_via_moto(
    sns: &aws_sdk_sns::Client,
    topic_arn: &str,
    subject: Option<&str>,
    deliveries: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
) -> SnsMessage {
    let publish = sns
        .publish()
        .topic_arn(topic_arn)
        .message("{\"moto\":true}");
    publish
        .set_subject(subject.map(str::to_owned))
        .send()
        .await
        .unwrap();
    let body = tokio::time::timeout(Duration::from_secs(10), deliveries.recv()).await;
    SnsMessage::parse(body.unwrap().unwrap().as_bytes()).unwrap()
}

/// moto 5.2.5 signs HTTP deliveries with SignatureVersion 2 and a per-subscription key whose
/// certificate it serves itself; it leaves `Subject` out of the signed string, so only
/// deliveries without a subject verify. If moto fixes that, the last assertion says so.
#[tokio::test]
async fn moto_deliveries_verify_once_its_certificate_is_seeded() {
    let moto = tollgate_testkit::moto::MotoServer::shared();
    let sns = aws_sdk_sns::Client::new(&moto.sdk_config());
    let (endpoint, mut deliveries) = delivery_receiver().await;
    let topic = sns
        .create_topic()
        .name("tollgate-sns-verify")
        .send()
        .await
        .unwrap();
    let topic_arn = topic.topic_arn().unwrap().to_owned();
    let subscribe = sns.subscribe().topic_arn(&topic_arn).protocol("http");
    subscribe.endpoint(&endpoint).send().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cache = CertCache::with_client(Some(dir.path().to_path_buf()), loopback_client());
    let moto_url = Url::parse(&moto.endpoint()).unwrap();

    let plain = publish_via_moto(&sns, &topic_arn, None, &mut deliveries).await;
    assert_eq!(plain.signature_version, "2");
    let unseeded = verify_at(&plain, &cache, SystemTime::now())
        .await
        .unwrap_err();
    assert!(
        matches!(unseeded, SnsVerifyError::CertFetch(_)),
        "{unseeded:?}"
    );
    let seeded =
        tollgate_testkit::sns::fetch_moto_cert(&moto_url, &plain.signing_cert_url, dir.path());
    seeded.await.unwrap();
    verify_at(&plain, &cache, SystemTime::now()).await.unwrap();

    let titled = publish_via_moto(&sns, &topic_arn, Some("hello"), &mut deliveries).await;
    let seeded =
        tollgate_testkit::sns::fetch_moto_cert(&moto_url, &titled.signing_cert_url, dir.path());
    seeded.await.unwrap();
    let quirk = verify_at(&titled, &cache, SystemTime::now())
        .await
        .unwrap_err();
    assert!(matches!(quirk, SnsVerifyError::BadSignature), "{quirk:?}");
}

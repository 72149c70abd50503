//! `POST /webhooks/sns` end to end: messages signed as SNS signs them (a test CA whose
//! certificate reaches the verifier only through a pre-seeded cache directory), sent through the
//! real route into a real engine on a SQLite file with in-memory fakes.
//!
//! Nothing leaves loopback: the certificate cache's client resolves every name to 127.0.0.1, and
//! subscription confirmations go to a [`Confirmer`] that records the URL instead of fetching it.

use crate::engine_support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use chrono::{DateTime, Utc};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;
use url::Url;

use engine_support::*;
use tollgate::config::{self, Config};
use tollgate::domain::{Decision, Reason, ReleaseId, RunStatus};
use tollgate::engine::Ingested;
use tollgate::engine::{Clock, Engine};
use tollgate::http::sns::{BODY_LIMIT, Confirmer, PATH, SnsState, routes};
use tollgate::http::sns_verify::{
    AlarmState, CertCache, SignatureVersion, SnsMessage, SnsType, fetch_client_builder,
};
use tollgate::store::Store;
use tollgate_testkit::fakes::fake_digest;
use tollgate_testkit::sns::{
    TestSigner, alarm_message, alarm_subject, body, unsigned_confirmation, unsigned_notification,
};

const ALARM_TOPIC: &str = "arn:aws:sns:eu-west-1:444444444444:alarms";
const UNKNOWN_TOPIC: &str = "arn:aws:sns:eu-west-1:444444444444:not-configured";
const TOPIC_LINE: &str = r#"topic = "arn:aws:sns:eu-west-1:111111111111:tollgate""#;
const PROD_ACCOUNT: &str = "444444444444";
const GAMMA_ACCOUNT: &str = "333333333333";
const PROD_ALARM: &str = "prod-5xx";
const REGION: &str = "eu-west-1";

// ---------------------------------------------------------------------------------------------
// Set-up
// ---------------------------------------------------------------------------------------------

const PUBLIC_URL_LINE: &str = r#"public_url = "https://tollgate.test""#;

/// The engine tests' configuration, with prod's alarms arriving on [`ALARM_TOPIC`]. The rig's
/// clock runs about an hour behind the wall clock (see [`Rig::new`]) while the messages carry
/// the wall clock's `Timestamp`, so the accepted clock skew is widened to 90 minutes.
fn stages_toml() -> String {
    let with_topic = format!("{TOPIC_LINE}\nalarm_topics = [\"{ALARM_TOPIC}\"]");
    let with_skew = format!("{PUBLIC_URL_LINE}\n\n[controller.sns]\nclock_skew = \"90m\"\n");
    let toml = STAGES
        .replace(TOPIC_LINE, &with_topic)
        .replace(PUBLIC_URL_LINE, &with_skew);
    assert!(
        toml.contains("alarm_topics") && toml.contains("clock_skew"),
        "the tables moved"
    );
    toml
}

fn load_config(dir: &std::path::Path) -> Config {
    std::fs::create_dir_all(dir.join("accounts")).unwrap();
    std::fs::write(dir.join("accounts/accounts.toml"), ACCOUNTS).unwrap();
    std::fs::write(dir.join("service.yaml"), "Resources: {}\n").unwrap();
    std::fs::write(dir.join("stages.toml"), stages_toml()).unwrap();
    config::load(&dir.join("stages.toml")).unwrap().config
}

/// Real time from a fixed offset that tests move forward (bake periods), so that latencies
/// measured on it are real.
#[derive(Default)]
struct ShiftedClock(Mutex<chrono::Duration>);

impl ShiftedClock {
    fn advance(&self, by: chrono::Duration) {
        *self.0.lock().unwrap() += by;
    }
}

impl Clock for ShiftedClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now() + *self.0.lock().unwrap()
    }
}

/// Resolves every host name to loopback, so a certificate fetch can only reach 127.0.0.1:443.
struct LoopbackOnly;

impl reqwest::dns::Resolve for LoopbackOnly {
    fn resolve(&self, _name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 443);
        let addrs: reqwest::dns::Addrs = Box::new(std::iter::once(addr));
        Box::pin(async move { Ok(addrs) })
    }
}

pub(crate) fn loopback_client() -> reqwest::Client {
    let builder = fetch_client_builder().no_proxy();
    let builder = builder.dns_resolver(Arc::new(LoopbackOnly));
    builder.timeout(Duration::from_secs(2)).build().unwrap()
}

/// Records each `SubscribeURL` it is asked to confirm; the first `failing` of them fail (as a
/// fetch that timed out would).
#[derive(Default)]
struct Recorder {
    urls: Mutex<Vec<String>>,
    failing: Mutex<usize>,
}

#[async_trait]
impl Confirmer for Recorder {
    async fn confirm(&self, url: &Url) -> Result<(), String> {
        self.urls.lock().unwrap().push(url.to_string());
        let mut failing = self.failing.lock().unwrap();
        if *failing > 0 {
            *failing -= 1;
            return Err("timed out".into());
        }
        Ok(())
    }
}

impl Recorder {
    fn urls(&self) -> Vec<String> {
        self.urls.lock().unwrap().clone()
    }

    fn fail_next(&self, n: usize) {
        *self.failing.lock().unwrap() = n;
    }
}

struct Rig {
    harness: Harness,
    clock: Arc<ShiftedClock>,
    engine: Engine,
    app: Router,
    confirmer: Arc<Recorder>,
    signer: TestSigner,
    _certs: tempfile::TempDir,
}

pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) json: Value,
}

impl Answer {
    pub(crate) fn result(&self) -> &str {
        self.json["result"].as_str().unwrap_or_default()
    }
}

impl Rig {
    async fn new() -> Rig {
        let harness = Harness::new();
        // The controller's clock starts an hour behind the wall clock: the alarm messages
        // carry the wall clock's time as their StateChangeTime, which must fall inside the
        // watch window of a deploy the test has moved forward in time.
        let clock = Arc::new(ShiftedClock(Mutex::new(-chrono::Duration::hours(1))));
        let store = Store::open(&harness.db_url()).await.unwrap();
        let cfg = load_config(harness.dir.path());
        let engine = Engine::new(store, cfg, harness.fakes.ports(), clock.clone());
        let signer = TestSigner::new();
        let certs = tempfile::tempdir().unwrap();
        signer.seed_cache_dir(certs.path()).unwrap();
        let cache = CertCache::with_client(Some(certs.path().into()), loopback_client());
        let confirmer = Arc::new(Recorder::default());
        let state = SnsState::new(engine.clone(), Arc::new(cache)).unwrap();
        let app = routes(state.with_confirmer(confirmer.clone()));
        Rig {
            harness,
            clock,
            engine,
            app,
            confirmer,
            signer,
            _certs: certs,
        }
    }

    async fn post(&self, body: impl Into<Body>) -> Answer {
        post_notification(&self.app, body).await
    }

    async fn count(&self, sql: &str) -> i64 {
        let query = sqlx::query_scalar(sql);
        query.fetch_one(self.engine.reads().pool()).await.unwrap()
    }

    async fn alarm_rows(&self) -> i64 {
        self.count("SELECT COUNT(*) FROM alarm_events").await
    }

    async fn sns_deliveries(&self) -> i64 {
        let sql = "SELECT COUNT(*) FROM deliveries WHERE source = 'sns'";
        self.count(sql).await
    }

    async fn sns_events(&self) -> i64 {
        self.count("SELECT COUNT(*) FROM events WHERE actor LIKE 'sns:%'")
            .await
    }

    async fn events_of_kind(&self, kind: &str) -> Vec<tollgate::store::EventRow> {
        let all = self.engine.reads().events("backend", 500).await.unwrap();
        all.into_iter().filter(|e| e.kind == kind).collect()
    }

    /// Release 1 promoted everywhere (prod's known-good), release 2 baking in prod.
    async fn prod_baking(&self) -> ReleaseId {
        self.promote(1).await;
        self.clock.advance(chrono::Duration::minutes(11));
        settle(&self.engine).await.unwrap();
        let second = self.promote(2).await;
        self.clock.advance(chrono::Duration::minutes(2));
        second
    }

    /// Records release `n` and approves it for prod; returns once prod is baking it.
    async fn promote(&self, n: u32) -> ReleaseId {
        let push = delivery(&format!("push-{n}"));
        let recorded = self.engine.record_release(&release(n), &push).await;
        let Ingested::Recorded(id) = recorded.unwrap() else {
            panic!("release {n} not recorded");
        };
        settle(&self.engine).await.unwrap();
        let approve = approval(id, "alice", Decision::Approve);
        let given = delivery(&format!("approve-{n}"));
        self.engine.record_approval(&approve, &given).await.unwrap();
        settle(&self.engine).await.unwrap();
        assert_eq!(status(&self.engine, id, "prod").await, RunStatus::Baking);
        id
    }

    fn rolled_back(&self) -> Vec<(String, String, String)> {
        self.harness.fakes.with(|w| w.rolled_back.clone())
    }
}

/// Posts an SNS `Notification` delivery to `app`'s SNS route.
pub(crate) async fn post_notification(app: &Router, body: impl Into<Body>) -> Answer {
    let request = Request::post(PATH)
        .header("content-type", "text/plain; charset=UTF-8")
        .header("x-amz-sns-message-type", "Notification")
        .body(body.into())
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
    Answer { status, json }
}

/// A CloudWatch alarm notification on [`ALARM_TOPIC`], signed with `version`.
fn alarm(
    signer: &TestSigner,
    name: &str,
    account: &str,
    region: &str,
    state: AlarmState,
    version: SignatureVersion,
) -> SnsMessage {
    let message = alarm_message(ALARM_TOPIC, name, account, region, state);
    let subject = alarm_subject(name, region, state);
    let unsigned = unsigned_notification(ALARM_TOPIC, Some(&subject), &message);
    signer.signed(unsigned, version)
}

fn prod_alarm(signer: &TestSigner, version: SignatureVersion) -> SnsMessage {
    let state = AlarmState::Alarm;
    alarm(signer, PROD_ALARM, PROD_ACCOUNT, REGION, state, version)
}

// ---------------------------------------------------------------------------------------------
// Alarms that roll back
// ---------------------------------------------------------------------------------------------

async fn assert_rolled_back(rig: &Rig, id: ReleaseId) {
    settle(&rig.engine).await.unwrap();
    let prod = run(&rig.engine, id, "prod").await;
    assert_eq!(prod.status, RunStatus::RolledBack, "{:?}", prod.reason);
    assert!(
        matches!(prod.reason.root(), Reason::AlarmFired { alarm, .. } if alarm == "prod-5xx"),
        "{:?}",
        prod.reason
    );
    let restored = rig.rolled_back();
    assert_eq!(
        restored.len(),
        2,
        "both prod targets restored: {restored:?}"
    );
    let to_first = |(stage, _, uri): &(String, String, String)| {
        stage == "prod" && uri.ends_with(&fake_digest(&sha(1)))
    };
    assert!(restored.iter().all(to_first), "{restored:?}");
}

#[tokio::test]
async fn an_old_signed_alarm_replayed_during_the_prod_bake_changes_nothing() {
    let rig = Rig::new().await;
    let id = rig.prod_baking().await;
    // A genuine notification from yesterday, validly signed, delivered again today.
    let yesterday = rig.clock.now() - chrono::Duration::days(1);
    let state = AlarmState::Alarm;
    let body = rig.signer.alarm_notification_at(
        ALARM_TOPIC,
        PROD_ALARM,
        PROD_ACCOUNT,
        REGION,
        state,
        yesterday,
    );
    let answer = rig.post(body).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
    settle(&rig.engine).await.unwrap();
    assert_eq!(status(&rig.engine, id, "prod").await, RunStatus::Baking);
    assert!(rig.rolled_back().is_empty(), "nothing rolled back");
    let arrival = &rig.events_of_kind("sns-alarm").await[0].detail;
    assert!(
        arrival.contains(&format!(
            "state changed at {}",
            yesterday.format("%Y-%m-%d")
        )),
        "{arrival}"
    );
}

#[tokio::test]
async fn a_signed_v1_alarm_during_prod_bake_rolls_prod_back() {
    let rig = Rig::new().await;
    let id = rig.prod_baking().await;
    let state = AlarmState::Alarm;
    let body = rig
        .signer
        .alarm_notification(ALARM_TOPIC, PROD_ALARM, PROD_ACCOUNT, REGION, state);
    assert!(body.contains("\"SignatureVersion\" : \"1\""));

    let answer = rig.post(body).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
    assert_eq!(answer.result(), "recorded");
    assert!(
        rig.events_of_kind("sns-alarm").await[0]
            .detail
            .contains("received_at=")
    );
    assert_rolled_back(&rig, id).await;
}

#[tokio::test]
async fn a_signed_v2_alarm_during_prod_bake_rolls_prod_back() {
    let rig = Rig::new().await;
    let id = rig.prod_baking().await;
    let msg = prod_alarm(&rig.signer, SignatureVersion::V2);

    let answer = rig.post(body(&msg)).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
    assert_rolled_back(&rig, id).await;
    let rows = rig.count("SELECT COUNT(*) FROM alarm_events WHERE firing = 1");
    assert_eq!(rows.await, 1);
}

/// The `received_at=` the route wrote into the `sns-alarm` event.
fn received_at(detail: &str) -> DateTime<Utc> {
    let value = detail.split("received_at=").nth(1).unwrap();
    let value = value.split_whitespace().next().unwrap();
    value.parse().unwrap()
}

/// Waits (bounded) until the running reconcilers have rolled prod back.
async fn wait_rolled_back(rig: &Rig, id: ReleaseId) {
    for _ in 0..4000 {
        if status(&rig.engine, id, "prod").await == RunStatus::RolledBack {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("prod was not rolled back within 20 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alarm_post_to_first_rollback_call_latency() {
    let rig = Rig::new().await;
    let id = rig.prod_baking().await;
    let loops = rig.engine.spawn();
    let msg = prod_alarm(&rig.signer, SignatureVersion::V2);
    let answer = rig.post(body(&msg)).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
    wait_rolled_back(&rig, id).await;
    loops.iter().for_each(|l| l.abort());

    let prefix = format!("backend/r{}/prod/", id.0);
    let effects = rig.engine.reads().effects_with_prefix(&prefix).await;
    let rollback = effects
        .unwrap()
        .into_iter()
        .find(|e| e.key.contains("/rollback-0-to-"));
    let started = rollback.expect("a rollback effect").started_at;
    let alarm_at = rig.events_of_kind("alarm").await[0].at;
    let arrived = received_at(&rig.events_of_kind("sns-alarm").await[0].detail);
    let from_post = (started - arrived).num_milliseconds();
    let from_fact = (started - alarm_at).num_milliseconds();
    println!(
        "SNS alarm latency: POST arrival → first rollback effect start {from_post} ms \
         (alarm fact → rollback start {from_fact} ms)"
    );
    assert!((0..5_000).contains(&from_post), "{from_post} ms");
    assert_eq!(rig.rolled_back().len(), 2);
}

// ---------------------------------------------------------------------------------------------
// Refusals: nothing recorded
// ---------------------------------------------------------------------------------------------

/// The signer's certificate path, `/SimpleNotificationService-<id>.pem`.
fn cert_path(signer: &TestSigner) -> String {
    Url::parse(&signer.cert_url(REGION))
        .unwrap()
        .path()
        .to_owned()
}

fn with_cert_url(mut msg: SnsMessage, url: String) -> String {
    msg.signing_cert_url = url;
    body(&msg)
}

fn cert_url_cases(signer: &TestSigner) -> Vec<(&'static str, String)> {
    let pem = cert_path(signer);
    let msg = || prod_alarm(signer, SignatureVersion::V1);
    let sns = format!("sns.{REGION}.amazonaws.com");
    vec![
        (
            "S3 host",
            with_cert_url(msg(), format!("https://s3.amazonaws.com/bucket{pem}")),
        ),
        (
            "regional S3 host",
            with_cert_url(msg(), format!("https://s3.{REGION}.amazonaws.com{pem}")),
        ),
        (
            "sns.evil.com",
            with_cert_url(msg(), format!("https://sns.evil.com{pem}")),
        ),
        (
            "SNS host as a prefix",
            with_cert_url(msg(), format!("https://{sns}.evil.com{pem}")),
        ),
        (
            "the .pem only in the query string",
            with_cert_url(msg(), format!("https://{sns}/?cert={}", &pem[1..])),
        ),
        (
            "http scheme",
            with_cert_url(msg(), format!("http://{sns}{pem}")),
        ),
    ]
}

fn tampered(signer: &TestSigner, change: impl FnOnce(&mut SnsMessage)) -> String {
    let mut msg = prod_alarm(signer, SignatureVersion::V1);
    change(&mut msg);
    body(&msg)
}

fn tamper_cases(signer: &TestSigner) -> Vec<(&'static str, String)> {
    let crossed = |m: &mut SnsMessage| m.message = m.message.replace("Crossed", "crossed");
    vec![
        ("tampered Message", tampered(signer, crossed)),
        (
            "tampered Subject",
            tampered(signer, |m| m.subject = Some("OK: all fine".into())),
        ),
        (
            "tampered Timestamp",
            tampered(signer, |m| m.timestamp.replace_range(0..4, "2099")),
        ),
        (
            "tampered MessageId",
            tampered(signer, |m| m.message_id = "0000".into()),
        ),
        (
            "signature not base64",
            tampered(signer, |m| m.signature = "%%%".into()),
        ),
        (
            "SignatureVersion 3",
            tampered(signer, |m| m.signature_version = "3".into()),
        ),
    ]
}

fn version_cases(signer: &TestSigner) -> Vec<(&'static str, String)> {
    let mut v2_as_v1 = prod_alarm(signer, SignatureVersion::V2);
    v2_as_v1.signature_version = "1".into();
    let mut v1_as_v2 = prod_alarm(signer, SignatureVersion::V1);
    v1_as_v2.signature_version = "2".into();
    vec![
        ("v2 signature labelled 1", body(&v2_as_v1)),
        ("v1 signature labelled 2", body(&v1_as_v2)),
    ]
}

fn topic_case(signer: &TestSigner) -> (&'static str, String) {
    let message = alarm_message(
        UNKNOWN_TOPIC,
        PROD_ALARM,
        PROD_ACCOUNT,
        REGION,
        AlarmState::Alarm,
    );
    let msg = unsigned_notification(UNKNOWN_TOPIC, None, &message);
    let signed = signer.signed(msg, SignatureVersion::V2);
    ("topic not in the configuration", body(&signed))
}

fn malformed_cases(signer: &TestSigner) -> Vec<(&'static str, String, StatusCode)> {
    let good = body(&prod_alarm(signer, SignatureVersion::V1));
    let unknown_type = good.replace("\"Type\" : \"Notification\"", "\"Type\" : \"Alarm\"");
    assert_ne!(unknown_type, good);
    let padding = " ".repeat(BODY_LIMIT);
    let too_large = good.replacen('{', &format!("{{{padding}"), 1);
    vec![
        ("unknown Type", unknown_type, StatusCode::BAD_REQUEST),
        (
            "not JSON",
            "Type=Notification".into(),
            StatusCode::BAD_REQUEST,
        ),
        ("empty body", String::new(), StatusCode::BAD_REQUEST),
        ("body too large", too_large, StatusCode::PAYLOAD_TOO_LARGE),
    ]
}

#[tokio::test]
async fn every_refused_delivery_changes_nothing() {
    let rig = Rig::new().await;
    let s = &rig.signer;
    let forbidden = cert_url_cases(s)
        .into_iter()
        .chain(tamper_cases(s))
        .chain(version_cases(s))
        .chain([topic_case(s)])
        .map(|(what, body)| (what, body, StatusCode::FORBIDDEN));
    let cases: Vec<_> = forbidden.chain(malformed_cases(s)).collect();
    assert_eq!(cases.len(), 19);
    for (what, body, expected) in cases {
        let answer = rig.post(body).await;
        assert_eq!(answer.status, expected, "{what}: {}", answer.json);
        println!("refused ({what}): {} {}", answer.status, answer.json);
    }
    assert_eq!(rig.alarm_rows().await, 0, "no alarm recorded");
    assert_eq!(rig.sns_deliveries().await, 0, "no delivery recorded");
    assert_eq!(rig.sns_events().await, 0, "nothing logged");
    assert!(rig.confirmer.urls().is_empty());
}

/// A sender cannot tell a topic the controller does not accept from a bad signature: the
/// answers are the same, status and body.
#[tokio::test]
async fn an_unknown_topic_is_answered_exactly_as_a_bad_signature() {
    let rig = Rig::new().await;
    let (_, unknown_topic) = topic_case(&rig.signer);
    let unknown = rig.post(unknown_topic).await;
    let mixed = &version_cases(&rig.signer)[0].1;
    let forged = rig.post(mixed.clone()).await;
    assert_eq!(unknown.status, StatusCode::FORBIDDEN);
    assert_eq!(
        (unknown.status, &unknown.json),
        (forged.status, &forged.json)
    );
    assert_eq!(rig.sns_deliveries().await, 0);
}

#[tokio::test]
async fn refusals_say_why() {
    let rig = Rig::new().await;
    let evil = &cert_url_cases(&rig.signer)[2].1;
    let detail = rig.post(evil.clone()).await.json["detail"].to_string();
    assert!(detail.contains("SigningCertURL rejected"), "{detail}");
    let mixed = &version_cases(&rig.signer)[0].1;
    let detail = rig.post(mixed.clone()).await.json["detail"].to_string();
    assert!(detail.contains("signature does not match"), "{detail}");
    let mut stale = prod_alarm(&rig.signer, SignatureVersion::V2);
    stale.timestamp = (Utc::now() - chrono::Duration::hours(3))
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string();
    let stale = rig.signer.signed(stale, SignatureVersion::V2);
    let answer = rig.post(body(&stale)).await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
    let detail = answer.json["detail"].to_string();
    assert!(
        detail.contains("stale") && detail.contains("1h"),
        "{detail}"
    );
    let (_, unknown_type, _) = &malformed_cases(&rig.signer)[0];
    let detail = rig.post(unknown_type.clone()).await.json["detail"].to_string();
    assert!(detail.contains("unknown SNS message Type"), "{detail}");
}

// ---------------------------------------------------------------------------------------------
// Deduplication and matching
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_redelivered_message_changes_nothing() {
    let rig = Rig::new().await;
    let msg = body(&prod_alarm(&rig.signer, SignatureVersion::V2));
    let first = rig.post(msg.clone()).await;
    assert_eq!((first.status, first.result()), (StatusCode::OK, "recorded"));
    let again = rig.post(msg).await;
    assert_eq!(
        (again.status, again.result()),
        (StatusCode::OK, "duplicate")
    );
    assert_eq!(rig.alarm_rows().await, 1);
    // Nothing is deployed in prod here, so the alarm is logged once, as changing nothing.
    assert_eq!(rig.events_of_kind("alarm-ignored").await.len(), 1);
    assert_eq!(rig.events_of_kind("alarm").await.len(), 0);
    assert_eq!(rig.events_of_kind("sns-alarm").await.len(), 1);
}

#[tokio::test]
async fn an_alarm_matches_only_stages_in_its_account_and_region() {
    let rig = Rig::new().await;
    let s = &rig.signer;
    let (v1, firing) = (SignatureVersion::V1, AlarmState::Alarm);
    let unmatched = [
        alarm(s, PROD_ALARM, GAMMA_ACCOUNT, REGION, firing, v1),
        alarm(s, PROD_ALARM, PROD_ACCOUNT, "ap-south-1", firing, v1),
        alarm(s, "gamma-5xx", PROD_ACCOUNT, REGION, firing, v1),
    ];
    for msg in &unmatched {
        let answer = rig.post(body(msg)).await;
        assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.json);
        assert!(answer.json["detail"].to_string().contains("no stage"));
    }
    assert_eq!(rig.alarm_rows().await, 0);

    // prod's second target is in us-east-1.
    let east = alarm(s, PROD_ALARM, PROD_ACCOUNT, "us-east-1", firing, v1);
    let answer = rig.post(body(&east)).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
    let sql = "SELECT COUNT(*) FROM alarm_events WHERE pipeline = 'backend' AND stage = 'prod'";
    assert_eq!(rig.count(sql).await, 1);
}

#[tokio::test]
async fn an_ok_notification_is_recorded_as_not_firing_and_rolls_nothing_back() {
    let rig = Rig::new().await;
    let id = rig.prod_baking().await;
    let (ok, v2) = (AlarmState::Ok, SignatureVersion::V2);
    let msg = alarm(&rig.signer, PROD_ALARM, PROD_ACCOUNT, REGION, ok, v2);
    let answer = rig.post(body(&msg)).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
    let firing = rig.count("SELECT COUNT(*) FROM alarm_events WHERE firing = 0");
    assert_eq!(firing.await, 1);
    settle(&rig.engine).await.unwrap();
    assert_eq!(status(&rig.engine, id, "prod").await, RunStatus::Baking);
    assert!(rig.rolled_back().is_empty());
}

#[tokio::test]
async fn a_notification_that_is_not_an_alarm_is_ignored() {
    let rig = Rig::new().await;
    let answer = rig
        .post(rig.signer.notification(ALARM_TOPIC, None, "hello"))
        .await;
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.json);
    assert_eq!(answer.result(), "ignored");
    assert_eq!(rig.alarm_rows().await, 0);
}

// ---------------------------------------------------------------------------------------------
// Subscriptions
// ---------------------------------------------------------------------------------------------

fn confirmation(signer: &TestSigner, topic: &str) -> SnsMessage {
    let msg = unsigned_confirmation(SnsType::SubscriptionConfirmation, topic);
    signer.signed(msg, SignatureVersion::V2)
}

#[tokio::test]
async fn a_subscription_to_an_allowed_topic_is_confirmed_once() {
    let rig = Rig::new().await;
    let msg = confirmation(&rig.signer, ALARM_TOPIC);
    let answer = rig.post(body(&msg)).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
    assert_eq!(answer.result(), "confirmed");
    let again = rig.post(body(&msg)).await;
    assert_eq!(again.result(), "duplicate");
    assert_eq!(rig.confirmer.urls(), [msg.subscribe_url.unwrap()]);
    let logged = rig.events_of_kind("sns-subscription").await;
    assert_eq!(logged.len(), 1);
    assert!(
        logged[0].detail.contains("confirmed"),
        "{}",
        logged[0].detail
    );
    assert!(!logged[0].detail.contains("Token"), "no token in the log");
}

/// SNS delivers a message again when it was answered 5xx: a confirmation that failed is tried
/// again then, and once confirmed it is not fetched again.
#[tokio::test]
async fn a_failed_confirmation_is_tried_again_when_sns_delivers_it_again() {
    let rig = Rig::new().await;
    rig.confirmer.fail_next(1);
    let msg = confirmation(&rig.signer, ALARM_TOPIC);
    let failed = rig.post(body(&msg)).await;
    assert_eq!(failed.status, StatusCode::BAD_GATEWAY, "{}", failed.json);
    assert_eq!(rig.sns_deliveries().await, 0, "nothing recorded");

    let again = rig.post(body(&msg)).await;
    assert_eq!(
        (again.status, again.result()),
        (StatusCode::OK, "confirmed"),
        "{}",
        again.json
    );
    let third = rig.post(body(&msg)).await;
    assert_eq!(third.result(), "duplicate");
    assert_eq!(
        rig.confirmer.urls().len(),
        2,
        "fetched until it worked, then never"
    );
    assert_eq!(rig.sns_deliveries().await, 1);
}

#[tokio::test]
async fn a_subscription_is_never_confirmed_unless_allowed_and_verified() {
    let rig = Rig::new().await;
    let unknown = confirmation(&rig.signer, UNKNOWN_TOPIC);
    let mut forged = confirmation(&rig.signer, ALARM_TOPIC);
    forged.subscribe_url = forged.subscribe_url.map(|u| u.replace("Token=", "Token=0"));
    let mut elsewhere = unsigned_confirmation(SnsType::SubscriptionConfirmation, ALARM_TOPIC);
    elsewhere.subscribe_url = Some(format!(
        "https://sns.{REGION}.amazonaws.com.evil.com/?Action=ConfirmSubscription&TopicArn={ALARM_TOPIC}"
    ));
    let elsewhere = rig.signer.signed(elsewhere, SignatureVersion::V1);
    for (what, msg) in [
        ("topic not allowed", unknown),
        ("bad signature", forged),
        ("SubscribeURL off the SNS host", elsewhere),
    ] {
        let answer = rig.post(body(&msg)).await;
        assert_eq!(
            answer.status,
            StatusCode::FORBIDDEN,
            "{what}: {}",
            answer.json
        );
    }
    // The pipeline's notification and approval topic, allowed and signed: for people, never
    // confirmed for the controller.
    let people = confirmation(&rig.signer, "arn:aws:sns:eu-west-1:111111111111:tollgate");
    let answer = rig.post(body(&people)).await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN, "{}", answer.json);
    assert!(
        answer.json["detail"]
            .to_string()
            .contains("alarm topics and stack-events topics only"),
        "{}",
        answer.json
    );
    assert!(rig.confirmer.urls().is_empty());
    assert_eq!(rig.sns_deliveries().await, 0);
    assert_eq!(rig.sns_events().await, 0);
}

#[tokio::test]
async fn an_unsubscribe_confirmation_is_only_logged() {
    let rig = Rig::new().await;
    let msg = unsigned_confirmation(SnsType::UnsubscribeConfirmation, ALARM_TOPIC);
    let msg = rig.signer.signed(msg, SignatureVersion::V1);
    let answer = rig.post(body(&msg)).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
    assert_eq!(answer.result(), "logged");
    assert!(rig.confirmer.urls().is_empty());
    assert_eq!(rig.events_of_kind("sns-subscription").await.len(), 1);
    assert_eq!(rig.alarm_rows().await, 0);
}

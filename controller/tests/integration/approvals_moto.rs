//! [`SnsApprovalSender`] publishing through the real [`SnsNotifier`] (the AWS SDK for Rust)
//! to a real `moto_server`.
//!
//! What the topic received is read back from moto's `GET /moto-api/data.json`: moto keeps every
//! message published to a topic in the topic's `sent_notifications` (`[message id, message,
//! subject, attributes, group]`) and every subscription, with its `FilterPolicy`, under
//! `sns.Subscription`; it stores no per-inbox copy of an email. So each approver's inbox is
//! also stood in for by an HTTP subscription with the same filter policy (moto honours filter
//! policies for HTTP deliveries), served by this test on 127.0.0.1.
//!
//! moto confirms an email subscription at once; the approvers whose subscription is pending
//! confirmation are modelled by the testkit's SNS proxy in front of moto. moto applies a filter
//! policy at once too, where SNS takes up to 15 minutes: the sender's clock is a
//! [`ManualClock`] that the tests move past [`FILTER_POLICY_SETTLE`].

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::routing::post;
use chrono::Utc;
use serde_json::{Value, json};
use tollgate::aws::retry::Limiter;
use tollgate::aws::sns::SnsNotifier;
use tollgate::aws::sts::Credentials;
use tollgate::config::{Account, Approver};
use tollgate::domain::approval::FILTER_POLICY_SETTLE;
use tollgate::domain::{ExposedSubscription, Exposure, ReleaseId};
use tollgate::engine::ports::{
    ApprovalRequest, ApprovalSender, ApproverLink, LinkDelivery, SendOutcome, awaiting_and_sent,
};
use tollgate::engine::{Delivery, Ingested, ManualClock, NewRelease};
use tollgate::gates::approval::SnsApprovalSender;
use tollgate::store::Store;
use tollgate_testkit::aws_stubs::sns::SnsProxy;
use tollgate_testkit::moto::{DEFAULT_ACCOUNT_ID, MotoServer, REGION};

const PUBLIC_URL: &str = "https://tollgate.example";
const APPROVERS: [&str; 3] = ["alice", "bob", "carol"];

fn controller_account() -> Account {
    Account {
        name: "tools".into(),
        id: DEFAULT_ACCOUNT_ID.into(),
        role_arn: None,
        external_id: None,
        region: REGION.into(),
        controller: true,
        session_duration: Duration::from_secs(3600),
        stack_events_topic: None,
    }
}

fn notifier(moto: &MotoServer) -> Arc<SnsNotifier> {
    let limiter = Arc::new(Limiter::default());
    let creds = Arc::new(Credentials::new(moto.sdk_config(), limiter.clone()));
    Arc::new(SnsNotifier::new(creds, limiter, controller_account()))
}

fn approver(name: &str) -> Approver {
    Approver {
        name: name.into(),
        email: format!("{name}@example.com"),
        github: Some(name.into()),
    }
}

async fn create_topic(moto: &MotoServer, name: &str) -> String {
    let out = aws_sdk_sns::Client::new(&moto.sdk_config())
        .create_topic()
        .name(name)
        .send()
        .await
        .unwrap();
    out.topic_arn().unwrap().to_owned()
}

/// A store in a temporary directory holding release r1 of `backend`.
async fn store_with_release() -> (tempfile::TempDir, Store, ReleaseId) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("state.db").display());
    let store = Store::open(&url).await.unwrap();
    let release = NewRelease {
        pipeline: "backend".into(),
        sha: "0123456789abcdef0123456789abcdef01234567".into(),
        branch: "main".into(),
        author_name: "Dana".into(),
        author_email: "dana@example.com".into(),
        author_login: Some("dana".into()),
        message: "Speed up checkout".into(),
        url: Some("https://github.com/acme/backend/commit/0123456789abcdef".into()),
        ..NewRelease::default()
    };
    let d = Delivery {
        source: "test".into(),
        id: "push-1".into(),
    };
    let stages = ["beta".into(), "prod".into()];
    let Ingested::Recorded(id) = store
        .record_release(&release, &stages, &d, Utc::now())
        .await
        .unwrap()
    else {
        panic!("release not recorded");
    };
    (dir, store, id)
}

fn request(id: ReleaseId, topic: &str, approvers: Vec<Approver>) -> ApprovalRequest {
    ApprovalRequest {
        key: format!("backend/{id}/prod/a1/approval-request"),
        pipeline: "backend".into(),
        repository: "acme/backend".into(),
        stage: "prod".into(),
        release: id,
        attempt: 1,
        topic: topic.into(),
        approvers,
        expires_at: Utc::now() + chrono::Duration::hours(24),
        summary: "Pipeline: backend\nImage:    backend@sha256:abc\n\nProgress so far:\n  beta: succeeded — baked\n".into(),
    }
}

/// The messages `topic` received, as moto keeps them.
async fn sent_notifications(moto: &MotoServer, topic: &str) -> Vec<Value> {
    let data = moto.data().await.unwrap();
    let topics = data["sns"]["Topic"].as_array().cloned().unwrap_or_default();
    let found = topics.into_iter().find(|t| t["arn"] == topic).unwrap();
    found["sent_notifications"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The subscriptions of `topic`, as moto keeps them.
async fn subscriptions(moto: &MotoServer, topic: &str) -> Vec<Value> {
    let data = moto.data().await.unwrap();
    let subs = data["sns"]["Subscription"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    subs.into_iter()
        .filter(|s| s["topic_arn"] == topic)
        .collect()
}

/// [`FILTER_POLICY_SETTLE`], as the clock counts.
fn settle() -> chrono::Duration {
    chrono::Duration::from_std(FILTER_POLICY_SETTLE).unwrap()
}

/// The exposures a person must fix: all but the subscriptions whose policy is settling.
fn leaky(exposed: Vec<ExposedSubscription>) -> Vec<ExposedSubscription> {
    exposed
        .into_iter()
        .filter(|e| !matches!(e.exposure, Exposure::PolicySettling { .. }))
        .collect()
}

fn link_token(body: &str) -> String {
    let prefix = format!("{PUBLIC_URL}/approvals/");
    let at = body.find(&prefix).expect("a link") + prefix.len();
    body[at..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .collect()
}

/// HTTP endpoints standing in for the approvers' inboxes: what each received.
#[derive(Clone, Default)]
struct Inboxes(Arc<Mutex<BTreeMap<String, Vec<String>>>>);

impl Inboxes {
    /// Serves `POST /inbox/{name}` on 127.0.0.1; returns the base URL.
    async fn serve(&self) -> String {
        async fn deliver(State(i): State<Inboxes>, Path(name): Path<String>, body: String) {
            let msg: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
            let text = msg["Message"].as_str().unwrap_or_default().to_string();
            i.0.lock().unwrap().entry(name).or_default().push(text);
        }
        let app = Router::new()
            .route("/inbox/{name}", post(deliver))
            .with_state(self.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}")
    }

    fn of(&self, name: &str) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .get(name)
            .cloned()
            .unwrap_or_default()
    }
}

async fn subscribe_inbox(moto: &MotoServer, topic: &str, base: &str, name: &str) {
    let policy = json!({ "approver": [name] }).to_string();
    aws_sdk_sns::Client::new(&moto.sdk_config())
        .subscribe()
        .topic_arn(topic)
        .protocol("http")
        .endpoint(format!("{base}/inbox/{name}"))
        .attributes("FilterPolicy", policy)
        .send()
        .await
        .unwrap();
}

#[tokio::test]
async fn each_approver_gets_one_message_with_their_own_link() {
    let moto = tokio::task::spawn_blocking(MotoServer::shared)
        .await
        .unwrap();
    let topic = create_topic(moto, "tollgate-approvals-personal").await;
    let (_dir, store, id) = store_with_release().await;
    let sns = notifier(moto);
    let clock = Arc::new(ManualClock::new(Utc::now()));
    let sender = SnsApprovalSender::new(store.clone(), sns.clone(), PUBLIC_URL)
        .with_subscriptions(sns.clone())
        .with_clock(clock.clone());
    let req = request(id, &topic, APPROVERS.iter().map(|n| approver(n)).collect());

    // moto confirms the new subscriptions at once: SNS may not apply their policies for 15
    // minutes, and nothing goes out before.
    let SendOutcome::Withheld(settling) = sender.send(&req).await.unwrap() else {
        panic!("links published before SNS applied the new filter policies")
    };
    assert_eq!(settling.len(), 3, "{settling:?}");
    assert!(sent_notifications(moto, &topic).await.is_empty());
    clock.advance(settle());
    assert_eq!(sender.send(&req).await.unwrap(), SendOutcome::Sent(3));

    // One email subscription per approver, filtered to their own messages.
    let subs = subscriptions(moto, &topic).await;
    for name in APPROVERS {
        let email: Vec<&Value> = subs
            .iter()
            .filter(|s| s["protocol"] == "email" && s["endpoint"] == format!("{name}@example.com"))
            .collect();
        assert_eq!(email.len(), 1, "{name}: {subs:?}");
        let policy: Value =
            serde_json::from_str(email[0]["attributes"]["FilterPolicy"].as_str().unwrap()).unwrap();
        assert_eq!(policy, json!({ "approver": [name] }));
    }

    // One message per approver, addressed by its attribute, each with its own link.
    let sent = sent_notifications(moto, &topic).await;
    assert_eq!(sent.len(), 3, "{sent:?}");
    let mut tokens = BTreeMap::new();
    for msg in &sent {
        let name = msg[3]["approver"]["Value"].as_str().unwrap().to_string();
        assert_eq!(msg[3]["approver"]["Type"], "String");
        let body = msg[1].as_str().unwrap();
        let subject = msg[2].as_str().unwrap();
        assert!(
            subject.contains("Approve backend r1 for prod?"),
            "{subject}"
        );
        for fact in [
            format!("Hello {name},"),
            "0123456789ab by Dana: Speed up checkout".to_string(),
            format!("personal to {name}"),
            "beta: succeeded".to_string(),
            "sha256:abc".to_string(),
        ] {
            assert!(body.contains(&fact), "{fact:?} not in {body}");
        }
        let token = link_token(body);
        let stored = store.approval_token(&token).await.unwrap().unwrap();
        assert_eq!(stored.approver.as_deref(), Some(name.as_str()));
        assert_eq!((stored.release, stored.stage.as_str()), (id, "prod"));
        assert!(stored.published_at.is_some());
        assert!(tokens.insert(name, token).is_none(), "one message each");
    }
    let distinct: std::collections::BTreeSet<&String> = tokens.values().collect();
    assert_eq!(distinct.len(), 3, "each link is different");

    // Sending again under the same key publishes nothing and subscribes nobody twice.
    assert_eq!(sender.send(&req).await.unwrap(), SendOutcome::Sent(3));
    assert_eq!(sent_notifications(moto, &topic).await.len(), 3);
    assert_eq!(subscriptions(moto, &topic).await.len(), 3);
}

/// An HTTP endpoint filtered to one approver would hand that approver's link to whoever runs
/// it (and one such endpoint per approver, every link): nothing is published, and the reason
/// names the subscription.
#[tokio::test]
async fn a_subscription_filtered_to_an_approver_but_not_their_inbox_withholds_every_link() {
    let moto = tokio::task::spawn_blocking(MotoServer::shared)
        .await
        .unwrap();
    let topic = create_topic(moto, "tollgate-approvals-not-their-inbox").await;
    let inboxes = Inboxes::default();
    let base = inboxes.serve().await;
    subscribe_inbox(moto, &topic, &base, APPROVERS[0]).await;
    let (_dir, store, id) = store_with_release().await;
    let sns = notifier(moto);
    let sender = SnsApprovalSender::new(store.clone(), sns.clone(), PUBLIC_URL)
        .with_subscriptions(sns.clone());
    let req = request(id, &topic, APPROVERS.iter().map(|n| approver(n)).collect());

    let SendOutcome::Withheld(exposed) = sender.send(&req).await.unwrap() else {
        panic!("links were published")
    };
    let exposed = leaky(exposed);
    assert_eq!(exposed.len(), 1, "{exposed:?}");
    assert_eq!(exposed[0].protocol, "http");
    // Named by its host (the path of an HTTP endpoint can hold a token).
    assert_eq!(exposed[0].endpoint, format!("{base}/…"));
    let said = exposed[0].to_string();
    assert!(
        said.contains("is not") && said.contains("own email address"),
        "{said}"
    );
    assert!(
        sent_notifications(moto, &topic).await.is_empty(),
        "nothing published"
    );
    assert!(inboxes.of(APPROVERS[0]).is_empty());
}

/// An HTTPS subscription's URL can hold credentials (basic authentication, a chat webhook's
/// token in its path, a key in its query). The exposure that withholds the links names the
/// subscription by its ARN and host only: what reaches the run's reason, the notification and
/// the store carries none of them.
#[tokio::test]
async fn an_exposed_https_subscription_is_named_without_the_credentials_in_its_url() {
    let moto = tokio::task::spawn_blocking(MotoServer::shared)
        .await
        .unwrap();
    let topic = create_topic(moto, "tollgate-approvals-secret-url").await;
    let inboxes = Inboxes::default();
    let base = inboxes.serve().await;
    let host = base.trim_start_matches("http://");
    let url = format!("http://ops:hunter2@{host}/services/T0/B0/s3cr3t-path?token=t0k3n");
    aws_sdk_sns::Client::new(&moto.sdk_config())
        .subscribe()
        .topic_arn(&topic)
        .protocol("http")
        .endpoint(&url)
        .send()
        .await
        .unwrap();
    let (_dir, store, id) = store_with_release().await;
    let sns = notifier(moto);
    let sender = SnsApprovalSender::new(store.clone(), sns.clone(), PUBLIC_URL)
        .with_subscriptions(sns.clone());
    let req = request(id, &topic, APPROVERS.iter().map(|n| approver(n)).collect());

    let SendOutcome::Withheld(exposed) = sender.send(&req).await.unwrap() else {
        panic!("links were published")
    };
    let exposed = leaky(exposed);
    assert_eq!(exposed.len(), 1, "{exposed:?}");
    assert_eq!(exposed[0].endpoint, format!("http://{host}/…"));
    let said = format!(
        "{} {}",
        tollgate::domain::approval::describe_exposed(&exposed),
        serde_json::to_string(&exposed).unwrap()
    );
    assert!(said.contains(&exposed[0].arn), "{said}");
    for secret in ["hunter2", "s3cr3t-path", "t0k3n", "services"] {
        assert!(!said.contains(secret), "{secret} in {said}");
    }
    assert!(sent_notifications(moto, &topic).await.is_empty());
}

#[tokio::test]
async fn with_no_listed_approvers_one_shared_message_goes_out() {
    let moto = tokio::task::spawn_blocking(MotoServer::shared)
        .await
        .unwrap();
    let topic = create_topic(moto, "tollgate-approvals-shared").await;
    let (_dir, store, id) = store_with_release().await;
    let sns = notifier(moto);
    let sender =
        SnsApprovalSender::new(store.clone(), sns.clone(), PUBLIC_URL).with_subscriptions(sns);

    assert_eq!(
        sender.send(&request(id, &topic, vec![])).await.unwrap(),
        SendOutcome::Sent(1)
    );
    let sent = sent_notifications(moto, &topic).await;
    assert_eq!(sent.len(), 1);
    assert!(sent[0][3].as_object().is_none_or(|a| a.is_empty()));
    let body = sent[0][1].as_str().unwrap();
    assert!(body.contains("shared by everyone"));
    let stored = store
        .approval_token(&link_token(body))
        .await
        .unwrap()
        .unwrap();
    assert!(stored.is_shared());
    assert!(subscriptions(moto, &topic).await.is_empty());
}

/// [`SnsNotifier`] through the testkit's SNS proxy, which keeps new email subscriptions
/// pending confirmation as SNS does. moto gap: moto confirms an email subscription the moment
/// it is made (`PendingConfirmation` false, its ARN listed by `ListSubscriptionsByTopic`), so
/// a pending approver exists only behind the proxy.
fn notifier_through(moto: &MotoServer, proxy: &SnsProxy) -> Arc<SnsNotifier> {
    let limiter = Arc::new(Limiter::default());
    let config = moto.sdk_config().to_builder();
    let config = config.endpoint_url(proxy.endpoint()).build();
    let creds = Arc::new(Credentials::new(config, limiter.clone()));
    Arc::new(SnsNotifier::new(creds, limiter, controller_account()))
}

fn link(approver: &str, delivery: LinkDelivery) -> ApproverLink {
    ApproverLink {
        approver: approver.into(),
        delivery,
    }
}

/// Approvers named in the `approver` attribute of what `topic` received, in order.
async fn addressed(moto: &MotoServer, topic: &str) -> Vec<String> {
    sent_notifications(moto, topic)
        .await
        .iter()
        .filter_map(|m| m[3]["approver"]["Value"].as_str().map(str::to_owned))
        .collect()
}

/// SNS delivers nothing to an email subscription pending confirmation: bob, whom the request
/// itself subscribes, is not sent a link (nor reported as sent) while alice, confirmed ahead
/// of time, is; once bob confirms, the same request sends him his link and nobody a second one.
#[tokio::test]
async fn an_approver_whose_subscription_is_pending_confirmation_is_not_sent_a_link() {
    let moto = tokio::task::spawn_blocking(MotoServer::shared)
        .await
        .unwrap();
    let proxy = SnsProxy::start(&moto.endpoint()).await.unwrap();
    let topic = create_topic(moto, "tollgate-approvals-pending").await;
    let (alice, bob) = (approver("alice"), approver("bob"));
    let sns = notifier_through(moto, &proxy);
    sns.ensure_approver_subscriptions(&topic, std::slice::from_ref(&alice))
        .await
        .unwrap();
    proxy.confirm(&alice.email);
    let (_dir, store, id) = store_with_release().await;
    let clock = Arc::new(ManualClock::new(Utc::now()));
    let sender = SnsApprovalSender::new(store.clone(), sns.clone(), PUBLIC_URL)
        .with_subscriptions(sns.clone())
        .with_clock(clock.clone());
    let req = request(id, &topic, vec![alice.clone(), bob.clone()]);

    // Bob's subscription, made now with his policy, is pending: it receives nothing, so it
    // holds nobody's link back while SNS applies its policy.
    let outcome = sender.send(&req).await.unwrap();
    assert_eq!(
        proxy.pending(),
        ["bob@example.com"],
        "the request subscribed bob"
    );
    assert_eq!(
        outcome,
        SendOutcome::Unconfirmed(vec![
            link("alice", LinkDelivery::Sent),
            link("bob", LinkDelivery::AwaitingConfirmation),
        ])
    );
    assert_eq!(
        addressed(moto, &topic).await,
        ["alice"],
        "nothing published for bob"
    );

    // Sent again while bob has not confirmed: nothing new.
    assert_eq!(sender.send(&req).await.unwrap(), outcome);
    assert_eq!(addressed(moto, &topic).await, ["alice"]);

    // Bob confirms within 15 minutes of his subscription being made with its policy: SNS may
    // not apply it before then.
    proxy.confirm(&bob.email);
    let SendOutcome::Withheld(settling) = sender.send(&req).await.unwrap() else {
        panic!("bob's link went out before SNS applied his filter policy")
    };
    assert!(
        matches!(&settling[..], [e] if e.endpoint == bob.email && matches!(e.exposure, Exposure::PolicySettling { .. })),
        "{settling:?}"
    );
    assert_eq!(addressed(moto, &topic).await, ["alice"]);
    clock.advance(settle());
    assert_eq!(sender.send(&req).await.unwrap(), SendOutcome::Sent(2));
    assert_eq!(
        addressed(moto, &topic).await,
        ["alice", "bob"],
        "bob's link once he confirmed, and alice's only once"
    );
    assert_eq!(subscriptions(moto, &topic).await.len(), 2);
}

/// An approver who has their link keeps it when their subscription goes (they unsubscribed,
/// and the next round subscribes them again, pending): the next round reports them as sent,
/// not as waiting, and publishes them nothing.
#[tokio::test]
async fn an_approver_who_unsubscribed_after_their_link_went_out_is_still_counted_as_sent() {
    let moto = tokio::task::spawn_blocking(MotoServer::shared)
        .await
        .unwrap();
    let proxy = SnsProxy::start(&moto.endpoint()).await.unwrap();
    let topic = create_topic(moto, "tollgate-approvals-unsubscribed").await;
    let (alice, bob) = (approver("alice"), approver("bob"));
    let sns = notifier_through(moto, &proxy);
    sns.ensure_approver_subscriptions(&topic, std::slice::from_ref(&alice))
        .await
        .unwrap();
    proxy.confirm(&alice.email);
    let (_dir, store, id) = store_with_release().await;
    let sender = SnsApprovalSender::new(store.clone(), sns.clone(), PUBLIC_URL)
        .with_subscriptions(sns.clone());
    let req = request(id, &topic, vec![alice.clone(), bob.clone()]);
    let first = sender.send(&req).await.unwrap();
    let expected = SendOutcome::Unconfirmed(vec![
        link("alice", LinkDelivery::Sent),
        link("bob", LinkDelivery::AwaitingConfirmation),
    ]);
    assert_eq!(first, expected);

    // Alice unsubscribes (the footer link of the email).
    let client = aws_sdk_sns::Client::new(&moto.sdk_config());
    let listed = client
        .list_subscriptions_by_topic()
        .topic_arn(&topic)
        .send()
        .await
        .unwrap();
    let hers = listed
        .subscriptions()
        .iter()
        .find(|s| s.endpoint() == Some(alice.email.as_str()))
        .and_then(|s| s.subscription_arn())
        .unwrap()
        .to_string();
    client
        .unsubscribe()
        .subscription_arn(hers)
        .send()
        .await
        .unwrap();

    assert_eq!(sender.send(&req).await.unwrap(), expected);
    assert_eq!(
        proxy.pending(),
        ["alice@example.com", "bob@example.com"],
        "alice was subscribed again, and has not confirmed"
    );
    assert_eq!(addressed(moto, &topic).await, ["alice"], "one link, once");
}

/// No listed approver has a confirmed subscription: nothing is published, and the outcome
/// names every approver as waiting, never as sent.
#[tokio::test]
async fn with_every_subscription_pending_nothing_is_published_and_nobody_counts_as_sent() {
    let moto = tokio::task::spawn_blocking(MotoServer::shared)
        .await
        .unwrap();
    let proxy = SnsProxy::start(&moto.endpoint()).await.unwrap();
    let topic = create_topic(moto, "tollgate-approvals-all-pending").await;
    let (_dir, store, id) = store_with_release().await;
    let sns = notifier_through(moto, &proxy);
    let sender = SnsApprovalSender::new(store.clone(), sns.clone(), PUBLIC_URL)
        .with_subscriptions(sns.clone());
    let req = request(id, &topic, APPROVERS.iter().map(|n| approver(n)).collect());

    let outcome = sender.send(&req).await.unwrap();
    let waiting = APPROVERS.map(|n| link(n, LinkDelivery::AwaitingConfirmation));
    assert_eq!(outcome, SendOutcome::Unconfirmed(waiting.to_vec()));
    assert!(sent_notifications(moto, &topic).await.is_empty());
    let (awaiting, sent) = awaiting_and_sent(&waiting);
    assert_eq!(
        tollgate::domain::approval::describe_unconfirmed(&awaiting, &sent),
        "no approver can receive the request yet: the email subscriptions of alice, bob, carol \
         to the approval topic are pending confirmation, and SNS delivers nothing until the \
         approver follows the link in AWS's confirmation email"
    );
}

/// The ARN of `topic`'s subscription to exactly `endpoint`.
async fn subscription_arn(moto: &MotoServer, topic: &str, endpoint: &str) -> String {
    let listed = aws_sdk_sns::Client::new(&moto.sdk_config())
        .list_subscriptions_by_topic()
        .topic_arn(topic)
        .send()
        .await
        .unwrap();
    let found = listed
        .subscriptions()
        .iter()
        .find(|s| s.endpoint() == Some(endpoint));
    found.unwrap().subscription_arn().unwrap().to_string()
}

/// A subscription attribute, as SNS answers `GetSubscriptionAttributes`.
async fn attribute(moto: &MotoServer, arn: &str, name: &str) -> Option<String> {
    let out = aws_sdk_sns::Client::new(&moto.sdk_config())
        .get_subscription_attributes()
        .subscription_arn(arn)
        .send()
        .await
        .unwrap();
    out.attributes().and_then(|a| a.get(name)).cloned()
}

/// An `email` subscription made by hand (confirmed at once by moto), with `attributes`.
async fn subscribe_by_hand(
    moto: &MotoServer,
    topic: &str,
    email: &str,
    attributes: &[(&str, &str)],
) {
    let mut request = aws_sdk_sns::Client::new(&moto.sdk_config())
        .subscribe()
        .topic_arn(topic)
        .protocol("email")
        .endpoint(email);
    for (name, value) in attributes {
        request = request.attributes(*name, *value);
    }
    request.send().await.unwrap();
}

/// A clock on a whole second (the store keeps milliseconds).
fn manual_clock() -> (Arc<ManualClock>, chrono::DateTime<Utc>) {
    use chrono::SubsecRound;
    let t0 = Utc::now().trunc_subsecs(0);
    (Arc::new(ManualClock::new(t0)), t0)
}

fn settling(arn: &str, endpoint: &str, until: chrono::DateTime<Utc>) -> ExposedSubscription {
    ExposedSubscription {
        arn: arn.into(),
        protocol: "email".into(),
        endpoint: endpoint.into(),
        exposure: Exposure::PolicySettling { until },
    }
}

/// Alice's subscription had no filter policy. Tollgate gives it hers, but SNS may go on
/// delivering under the old one for 15 minutes, so bob's link could still reach her: nothing
/// is published until then, and the reason says when the links go out. A controller started
/// again over the same store (a new sender and notifier) still knows.
#[tokio::test]
async fn a_corrected_policy_holds_every_link_until_sns_has_applied_it_even_across_a_restart() {
    let moto = tokio::task::spawn_blocking(MotoServer::shared)
        .await
        .unwrap();
    let topic = create_topic(moto, "tollgate-approvals-settle-corrected").await;
    let (alice, bob) = (approver("alice"), approver("bob"));
    subscribe_by_hand(moto, &topic, &alice.email, &[]).await;
    let sns = notifier(moto);
    sns.ensure_approver_subscriptions(&topic, std::slice::from_ref(&bob))
        .await
        .unwrap();
    let hers = subscription_arn(moto, &topic, &alice.email).await;
    let (dir, store, id) = store_with_release().await;
    let (clock, t0) = manual_clock();
    let sender = SnsApprovalSender::new(store.clone(), sns.clone(), PUBLIC_URL)
        .with_subscriptions(sns.clone())
        .with_clock(clock.clone());
    let req = request(id, &topic, vec![alice.clone(), bob.clone()]);

    let until = t0 + settle();
    let held = SendOutcome::Withheld(vec![settling(&hers, &alice.email, until)]);
    assert_eq!(sender.send(&req).await.unwrap(), held);
    let policy = attribute(moto, &hers, "FilterPolicy").await.unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&policy).unwrap(),
        json!({"approver": ["alice"]}),
        "corrected"
    );
    assert!(sent_notifications(moto, &topic).await.is_empty());
    let SendOutcome::Withheld(exposed) = &held else {
        unreachable!()
    };
    let said = tollgate::domain::approval::describe_exposed(exposed);
    let when = until.format("%Y-%m-%d %H:%M:%S UTC").to_string();
    assert!(
        said.contains("SNS takes up to 15 minutes to apply a filter policy")
            && said.contains(&when),
        "{said}"
    );

    // A restart: a new store handle, notifier and sender.
    drop((sender, store));
    let url = format!("sqlite://{}", dir.path().join("state.db").display());
    let store = Store::open(&url).await.unwrap();
    let sns = notifier(moto);
    let sender = SnsApprovalSender::new(store.clone(), sns.clone(), PUBLIC_URL)
        .with_subscriptions(sns)
        .with_clock(clock.clone());
    clock.advance(settle() - chrono::Duration::seconds(1));
    assert_eq!(sender.send(&req).await.unwrap(), held, "a second early");
    assert!(sent_notifications(moto, &topic).await.is_empty());

    clock.advance(chrono::Duration::seconds(1));
    assert_eq!(sender.send(&req).await.unwrap(), SendOutcome::Sent(2));
    assert_eq!(addressed(moto, &topic).await, ["alice", "bob"]);
}

/// Alice's address changes (a reload) after her link went out: her old link is replaced at
/// once, the old address's subscription (still filtered to her) is removed, the new address is
/// subscribed, and once SNS has had its 15 minutes for the new policy, only alice is sent a new
/// link, to the new address; bob keeps his.
#[tokio::test]
async fn an_approvers_new_address_gets_the_link_and_the_old_one_loses_it() {
    let moto = tokio::task::spawn_blocking(MotoServer::shared)
        .await
        .unwrap();
    let topic = create_topic(moto, "tollgate-approvals-moved").await;
    let (alice, bob) = (approver("alice"), approver("bob"));
    let sns = notifier(moto);
    sns.ensure_approver_subscriptions(&topic, &[alice.clone(), bob.clone()])
        .await
        .unwrap();
    let (_dir, store, id) = store_with_release().await;
    let (clock, _) = manual_clock();
    clock.advance(settle());
    let sender = SnsApprovalSender::new(store.clone(), sns.clone(), PUBLIC_URL)
        .with_subscriptions(sns.clone())
        .with_clock(clock.clone());
    let req = request(id, &topic, vec![alice.clone(), bob.clone()]);
    assert_eq!(sender.send(&req).await.unwrap(), SendOutcome::Sent(2));
    let sent = sent_notifications(moto, &topic).await;
    let old = sent
        .iter()
        .find(|m| m[3]["approver"]["Value"] == "alice")
        .map(|m| link_token(m[1].as_str().unwrap()))
        .unwrap();

    let moved = Approver {
        email: "alice@new.example.com".into(),
        ..alice.clone()
    };
    let req = request(id, &topic, vec![moved.clone(), bob.clone()]);
    let SendOutcome::Withheld(settling) = sender.send(&req).await.unwrap() else {
        panic!("a link went out before SNS applied the new subscription's policy")
    };
    assert_eq!(settling.len(), 1, "{settling:?}");
    assert_eq!(settling[0].endpoint, moved.email);
    let old_link = store.approval_token(&old).await.unwrap().unwrap();
    assert!(
        old_link.replaced_at.is_some(),
        "the old address's link is replaced"
    );
    let listed = aws_sdk_sns::Client::new(&moto.sdk_config())
        .list_subscriptions_by_topic()
        .topic_arn(&topic)
        .send()
        .await
        .unwrap();
    let endpoints: Vec<String> = listed
        .subscriptions()
        .iter()
        .filter_map(|s| s.endpoint().map(str::to_string))
        .collect();
    assert!(
        !endpoints.contains(&alice.email) && endpoints.contains(&moved.email),
        "{endpoints:?}"
    );

    clock.advance(settle());
    assert_eq!(sender.send(&req).await.unwrap(), SendOutcome::Sent(2));
    let sent = sent_notifications(moto, &topic).await;
    assert_eq!(sent.len(), 3, "only alice is sent again");
    assert_eq!(sent[2][3]["approver"]["Value"], "alice");
    let new = link_token(sent[2][1].as_str().unwrap());
    let record = store.approval_token(&new).await.unwrap().unwrap();
    assert_eq!(record.recipient.as_deref(), Some(moved.email.as_str()));
}

/// A second subscription of alice's address had no filter policy: the round is withheld. The
/// operator gives it alice's policy by hand; SNS may not apply it for 15 minutes after the
/// round that last saw it exposed, so the next round is withheld too, until then.
#[tokio::test]
async fn a_subscription_fixed_by_hand_holds_the_links_for_fifteen_minutes_after_it_was_seen_exposed()
 {
    let moto = tokio::task::spawn_blocking(MotoServer::shared)
        .await
        .unwrap();
    let topic = create_topic(moto, "tollgate-approvals-settle-by-hand").await;
    let (alice, bob) = (approver("alice"), approver("bob"));
    let sns = notifier(moto);
    sns.ensure_approver_subscriptions(&topic, &[alice.clone(), bob.clone()])
        .await
        .unwrap();
    let second = "Alice@Example.com";
    subscribe_by_hand(moto, &topic, second, &[]).await;
    let arn = subscription_arn(moto, &topic, second).await;
    let (_dir, store, id) = store_with_release().await;
    let (clock, t0) = manual_clock();
    let sender = SnsApprovalSender::new(store.clone(), sns.clone(), PUBLIC_URL)
        .with_subscriptions(sns.clone())
        .with_clock(clock.clone());
    let req = request(id, &topic, vec![alice.clone(), bob.clone()]);

    let SendOutcome::Withheld(exposed) = sender.send(&req).await.unwrap() else {
        panic!("links published to an unfiltered subscription")
    };
    assert_eq!(exposed.len(), 1, "{exposed:?}");
    assert_eq!(
        (exposed[0].arn.as_str(), &exposed[0].exposure),
        (arn.as_str(), &Exposure::Unfiltered)
    );

    aws_sdk_sns::Client::new(&moto.sdk_config())
        .set_subscription_attributes()
        .subscription_arn(&arn)
        .attribute_name("FilterPolicy")
        .attribute_value(r#"{"approver":["alice"]}"#)
        .send()
        .await
        .unwrap();
    clock.advance(chrono::Duration::minutes(5));
    assert_eq!(
        sender.send(&req).await.unwrap(),
        SendOutcome::Withheld(vec![settling(&arn, second, t0 + settle())])
    );
    assert!(sent_notifications(moto, &topic).await.is_empty());

    clock.advance(chrono::Duration::minutes(10));
    assert_eq!(sender.send(&req).await.unwrap(), SendOutcome::Sent(2));
    assert_eq!(addressed(moto, &topic).await, ["alice", "bob"]);
}

/// Alice's own subscription filters on the message body, where no approver attribute is:
/// tollgate sets its scope back to the message attributes (a policy change: SNS may take 15
/// minutes to apply it), then sends.
#[tokio::test]
async fn an_approvers_subscription_scoped_to_the_message_body_is_reset_and_then_settles() {
    let moto = tokio::task::spawn_blocking(MotoServer::shared)
        .await
        .unwrap();
    let topic = create_topic(moto, "tollgate-approvals-settle-scope").await;
    let (alice, bob) = (approver("alice"), approver("bob"));
    let policy = r#"{"approver":["alice"]}"#;
    let body_scoped = [
        ("FilterPolicy", policy),
        ("FilterPolicyScope", "MessageBody"),
    ];
    subscribe_by_hand(moto, &topic, &alice.email, &body_scoped).await;
    let hers = subscription_arn(moto, &topic, &alice.email).await;
    assert_eq!(
        attribute(moto, &hers, "FilterPolicyScope").await.as_deref(),
        Some("MessageBody")
    );
    let sns = notifier(moto);
    sns.ensure_approver_subscriptions(&topic, std::slice::from_ref(&bob))
        .await
        .unwrap();
    let (_dir, store, id) = store_with_release().await;
    let (clock, t0) = manual_clock();
    let sender = SnsApprovalSender::new(store.clone(), sns.clone(), PUBLIC_URL)
        .with_subscriptions(sns.clone())
        .with_clock(clock.clone());
    let req = request(id, &topic, vec![alice.clone(), bob.clone()]);

    assert_eq!(
        sender.send(&req).await.unwrap(),
        SendOutcome::Withheld(vec![settling(&hers, &alice.email, t0 + settle())])
    );
    assert_eq!(
        attribute(moto, &hers, "FilterPolicyScope").await.as_deref(),
        Some("MessageAttributes")
    );
    assert_eq!(
        attribute(moto, &hers, "FilterPolicy").await.as_deref(),
        Some(policy)
    );
    assert!(sent_notifications(moto, &topic).await.is_empty());

    clock.advance(settle());
    assert_eq!(sender.send(&req).await.unwrap(), SendOutcome::Sent(2));
    assert_eq!(addressed(moto, &topic).await, ["alice", "bob"]);
}

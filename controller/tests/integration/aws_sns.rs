//! `aws::sns::SnsNotifier` through the real AWS SDK for Rust against a real `moto_server`:
//! a publish reaches the topic with its subject, body and attributes, once per key; a topic in
//! a stage account is published to with that account's credentials; approvers get one email
//! subscription each, filtered to their own messages, and asking again changes nothing.
//!
//! What a topic received is read back from moto's `GET /moto-api/data.json` (each topic's
//! `sent_notifications`: id, message, subject, attributes).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tollgate::aws::retry::Limiter;
use tollgate::aws::sns::SnsNotifier;
use tollgate::aws::sts::Credentials;
use tollgate::config::{Account, Approver};
use tollgate::engine::ports::{Message, Notifier, PortError};
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

fn notifier(moto: &MotoServer) -> SnsNotifier {
    let limiter = Arc::new(Limiter::default());
    let creds = Arc::new(Credentials::new(moto.sdk_config(), limiter.clone()));
    SnsNotifier::new(creds, limiter, controller_account()).with_accounts([account("beta", BETA)])
}

async fn create_topic(config: &aws_config::SdkConfig, name: &str) -> String {
    let out = aws_sdk_sns::Client::new(config)
        .create_topic()
        .name(name)
        .send()
        .await
        .unwrap();
    out.topic_arn().unwrap().to_owned()
}

fn message(key: &str, topic: &str) -> Message {
    Message {
        key: key.into(),
        topic: topic.into(),
        subject: "Prod: approve backend r12?".into(),
        body: "backend r12 (abc1234) passed Gamma.\nApprove: https://tollgate.example/approvals/t"
            .into(),
        attributes: BTreeMap::from([("approver".to_string(), "alice".to_string())]),
    }
}

/// What moto says `topic` received: `[message id, message, subject, attributes, group]` each.
async fn sent_notifications(moto: &MotoServer, topic: &str) -> Vec<Value> {
    let url = format!("{}/moto-api/data.json", moto.endpoint());
    let data: Value = reqwest::get(url).await.unwrap().json().await.unwrap();
    let topics = data["sns"]["Topic"].as_array().cloned().unwrap_or_default();
    let found = topics
        .into_iter()
        .find(|t| t["arn"] == topic)
        .expect("the topic is in moto's data");
    found["sent_notifications"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[tokio::test]
async fn a_message_is_published_once_per_key_with_its_subject_body_and_attributes() {
    let moto = tokio::task::spawn_blocking(MotoServer::start)
        .await
        .unwrap()
        .unwrap();
    let topic = create_topic(&moto.sdk_config(), "tollgate-approvals").await;
    let sns = notifier(&moto);
    moto.recorder_start().await.unwrap();

    let msg = message("backend/r12/prod/approval/1", &topic);
    let id = sns.publish(&msg).await.unwrap();
    assert_eq!(
        sns.publish(&msg).await.unwrap(),
        id,
        "the same key returns the first message id"
    );

    let publishes: Vec<_> = moto
        .recorded_requests()
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.action.as_deref() == Some("Publish"))
        .collect();
    assert_eq!(publishes.len(), 1);
    let sent = sent_notifications(&moto, &topic).await;
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0][0], json!(id));
    assert_eq!(sent[0][1], json!(msg.body));
    assert_eq!(sent[0][2], json!(msg.subject));
    assert_eq!(
        sent[0][3],
        json!({"approver": {"Type": "String", "Value": "alice"}})
    );

    let other = Message {
        key: "backend/r12/prod/approval/2".into(),
        ..msg
    };
    assert_ne!(sns.publish(&other).await.unwrap(), id);
    assert_eq!(sent_notifications(&moto, &topic).await.len(), 2);
    drop(tokio::task::spawn_blocking(move || drop(moto)).await);
}

#[tokio::test]
async fn a_topic_in_a_stage_account_is_published_to_with_that_accounts_credentials() {
    let moto = MotoServer::shared();
    let beta = moto.sdk_config_for_account(BETA).await.unwrap();
    let topic = create_topic(&beta, "tollgate-beta-notices").await;
    assert!(topic.contains(BETA), "{topic}");
    let id = notifier(moto)
        .publish(&message("k-beta", &topic))
        .await
        .unwrap();
    let sent = sent_notifications(moto, &topic).await;
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0][0], json!(id));
}

/// `tollgate serve`'s notifier reads the accounts of the configuration in force at each
/// call: a reload that adds the account owning a topic (or changes its role) applies to the
/// next publish, with no restart.
#[tokio::test]
async fn a_reload_that_adds_a_topics_account_applies_to_the_next_publish() {
    let moto = MotoServer::shared();
    let beta = moto.sdk_config_for_account(BETA).await.unwrap();
    let topic = create_topic(&beta, "tollgate-reloaded-notices").await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = tollgate_testkit::engine_world::config_in(dir.path());
    config.accounts.clear();
    let shared = tollgate::engine::shared_config(config.clone());
    let limiter = Arc::new(Limiter::default());
    let creds = Arc::new(Credentials::new(moto.sdk_config(), limiter.clone()));
    let sns = SnsNotifier::new(creds, limiter, controller_account()).with_config(shared.clone());

    let before = sns.publish(&message("k-reload-1", &topic)).await;
    assert!(
        matches!(&before, Err(PortError::Invalid(m)) if m.contains(BETA)),
        "{before:?}"
    );
    config.accounts.insert("beta".into(), account("beta", BETA));
    *shared.write().unwrap() = Arc::new(config);
    let id = sns.publish(&message("k-reload-2", &topic)).await.unwrap();
    let sent = sent_notifications(moto, &topic).await;
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0][0], json!(id));
}

#[tokio::test]
async fn a_topic_in_an_unconfigured_account_or_a_bad_arn_is_invalid() {
    let sns = notifier(MotoServer::shared());
    let elsewhere = sns
        .publish(&message("k1", "arn:aws:sns:us-east-1:999999999999:t"))
        .await;
    assert!(
        matches!(&elsewhere, Err(PortError::Invalid(m)) if m.contains("999999999999")),
        "{elsewhere:?}"
    );
    let bad = sns.publish(&message("k2", "not-an-arn")).await;
    assert!(matches!(bad, Err(PortError::Invalid(_))), "{bad:?}");
}

fn approver(name: &str) -> Approver {
    Approver {
        name: name.into(),
        email: format!("{name}@example.com"),
        github: None,
    }
}

/// Email subscriptions of `topic`: endpoint → filter policy.
async fn email_subscriptions(
    config: &aws_config::SdkConfig,
    topic: &str,
) -> BTreeMap<String, Value> {
    let client = aws_sdk_sns::Client::new(config);
    let listed = client
        .list_subscriptions_by_topic()
        .topic_arn(topic)
        .send()
        .await
        .unwrap();
    let mut found = BTreeMap::new();
    for sub in listed
        .subscriptions()
        .iter()
        .filter(|s| s.protocol() == Some("email"))
    {
        let arn = sub.subscription_arn().unwrap();
        let attributes = client
            .get_subscription_attributes()
            .subscription_arn(arn)
            .send()
            .await
            .unwrap();
        let policy = attributes
            .attributes()
            .and_then(|a| a.get("FilterPolicy"))
            .cloned()
            .unwrap_or_default();
        found.insert(
            sub.endpoint().unwrap().to_owned(),
            serde_json::from_str(&policy).unwrap_or(Value::Null),
        );
    }
    found
}

#[tokio::test]
async fn each_approver_gets_one_filtered_email_subscription_and_asking_again_changes_nothing() {
    let moto = MotoServer::shared();
    let config = moto.sdk_config();
    let topic = create_topic(&config, "tollgate-approvers").await;
    let sns = notifier(moto);
    let approvers = [approver("alice"), approver("bob")];

    assert_eq!(
        sns.ensure_approver_subscriptions(&topic, &approvers)
            .await
            .unwrap(),
        2
    );
    let expected = BTreeMap::from([
        (
            "alice@example.com".to_string(),
            json!({"approver": ["alice"]}),
        ),
        ("bob@example.com".to_string(), json!({"approver": ["bob"]})),
    ]);
    assert_eq!(email_subscriptions(&config, &topic).await, expected);

    assert_eq!(
        sns.ensure_approver_subscriptions(&topic, &approvers)
            .await
            .unwrap(),
        0
    );
    assert_eq!(email_subscriptions(&config, &topic).await, expected);
}

/// An approver's address changed (a reload): the subscription of the old address, still
/// filtered to them, would receive their links; it is removed and the new address subscribed.
/// Another email subscription (not filtered to a listed approver) is left to the audit.
#[tokio::test]
async fn an_approvers_previous_address_is_unsubscribed_when_their_address_changes() {
    let moto = MotoServer::shared();
    let config = moto.sdk_config();
    let topic = create_topic(&config, "tollgate-approvers-moved").await;
    let sns = notifier(moto);
    sns.ensure_approver_subscriptions(&topic, &[approver("alice"), approver("bob")])
        .await
        .unwrap();
    aws_sdk_sns::Client::new(&config)
        .subscribe()
        .topic_arn(&topic)
        .protocol("email")
        .endpoint("team@example.com")
        .send()
        .await
        .unwrap();

    let moved = Approver {
        email: "alice@new.example.com".into(),
        ..approver("alice")
    };
    let changed = sns
        .ensure_approver_subscriptions(&topic, &[moved, approver("bob")])
        .await
        .unwrap();
    assert_eq!(
        changed, 2,
        "the old address removed, the new one subscribed"
    );
    let expected = BTreeMap::from([
        (
            "alice@new.example.com".to_string(),
            json!({"approver": ["alice"]}),
        ),
        ("bob@example.com".to_string(), json!({"approver": ["bob"]})),
        ("team@example.com".to_string(), Value::Null),
    ]);
    assert_eq!(email_subscriptions(&config, &topic).await, expected);
}

#[tokio::test]
async fn a_wrong_filter_policy_is_corrected() {
    let moto = MotoServer::shared();
    let config = moto.sdk_config();
    let topic = create_topic(&config, "tollgate-approvers-fix").await;
    let sns = notifier(moto);
    sns.ensure_approver_subscriptions(&topic, &[approver("alice")])
        .await
        .unwrap();
    let client = aws_sdk_sns::Client::new(&config);
    let listed = client
        .list_subscriptions_by_topic()
        .topic_arn(&topic)
        .send()
        .await
        .unwrap();
    let arn = listed.subscriptions()[0].subscription_arn().unwrap();
    let request = client
        .set_subscription_attributes()
        .subscription_arn(arn)
        .attribute_name("FilterPolicy");
    request
        .attribute_value(r#"{"approver":["mallory"]}"#)
        .send()
        .await
        .unwrap();

    assert_eq!(
        sns.ensure_approver_subscriptions(&topic, &[approver("alice")])
            .await
            .unwrap(),
        1
    );
    let subs = email_subscriptions(&config, &topic).await;
    assert_eq!(subs["alice@example.com"], json!({"approver": ["alice"]}));
}

//! SNS: the [`Notifier`] that tells people what happened (approval requests, halts,
//! rollbacks), and the approvers' email subscriptions.
//!
//! Owns publishing to a topic in the topic's own account and region (both read from its ARN)
//! with a subject, a plain-text body and String message attributes; and keeping exactly one
//! `email` subscription per approver, filtered to the messages addressed to that approver.
//!
//! Must never log a message body or attribute value: approval messages carry approval links.
//!
//! # Guarantees
//! - SNS has no idempotency token, so publishes are deduplicated here: within one process, a
//!   key that was published once returns its first message id and publishes nothing again,
//!   and concurrent publishes of one key publish once. (The engine records outcomes durably,
//!   so a restart does not repeat a publish whose outcome was recorded.)
//! - [`SnsNotifier::ensure_approver_subscriptions`] is idempotent: it lists the topic's
//!   subscriptions first and subscribes only the approvers who are missing. It is
//!   [`SnsNotifier::subscription_fixes`] then [`SnsNotifier::apply_fix`] for each, for a caller
//!   that must note a fix before it is made.
//!
//! # Caveats
//! - The dedupe memory holds the last [`DEDUPE_CAPACITY`] keys; older ones are forgotten.
//! - A topic in another account is published to with that account's credentials, so the
//!   account must be configured; its topic policy is not consulted.
//! - A new email subscription stays `PendingConfirmation` until the approver confirms it; its
//!   filter policy is set when it is created, and corrected later only once it is confirmed.
//!   SNS delivers nothing to it meanwhile: [`SnsNotifier::audit_subscriptions`] names the
//!   approvers in that state, so that nothing is published for them.
//! - SNS takes up to 15 minutes to apply a changed filter policy; this module does not know
//!   when a policy changed. The approval sender keeps that ([`crate::domain::PolicyHistory`]).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use aws_sdk_sns::Client;
use aws_sdk_sns::types::MessageAttributeValue;
use tokio::sync::OnceCell;

use super::errors::{context, sdk};
use super::observe::CallMetrics;
use super::retry::Limiter;
use super::sts::Credentials;
use crate::config::{Account, Approver};
use crate::domain::{ExposedSubscription, Exposure};
use crate::engine::ports::{Message, Notifier, PortError, PortResult};

/// How many publish keys the dedupe memory keeps.
pub const DEDUPE_CAPACITY: usize = 10_000;
/// SNS's limits: a subject "less than 100 characters long" (Publish, API reference), so 99
/// here; a message at most 256 KiB.
const SUBJECT_MAX: usize = 99;
const BODY_MAX: usize = 256 * 1024 - 1024;
/// Bounds the listing of a topic's subscriptions (100 per page).
const MAX_PAGES: usize = 100;
const SESSION_NAME: &str = "tollgate-notify";

/// Publishes through SNS; share one per controller.
pub struct SnsNotifier {
    creds: Arc<Credentials>,
    limiter: Arc<Limiter>,
    controller_account: Account,
    /// Other configured accounts, for topics outside the controller's account.
    accounts: Accounts,
    sent: Mutex<Sent>,
}

/// Where the other accounts come from.
enum Accounts {
    Listed(Vec<Account>),
    /// The configuration in force, read at each call: a reload that changes an account's role
    /// or ExternalId, or adds an account owning a topic, applies at once.
    InForce(crate::engine::SharedConfig),
}

/// Message ids by publish key, oldest key first in `order`.
#[derive(Default)]
struct Sent {
    ids: HashMap<String, Arc<OnceCell<String>>>,
    order: VecDeque<String>,
}

impl Sent {
    /// The slot for `key`, made (and the oldest forgotten, when full) if there is none.
    fn slot(&mut self, key: &str) -> Arc<OnceCell<String>> {
        if let Some(slot) = self.ids.get(key) {
            return slot.clone();
        }
        if self.order.len() >= DEDUPE_CAPACITY {
            if let Some(oldest) = self.order.pop_front() {
                self.ids.remove(&oldest);
            }
        }
        let slot = Arc::new(OnceCell::new());
        self.ids.insert(key.to_string(), slot.clone());
        self.order.push_back(key.to_string());
        slot
    }
}

/// The parts of `arn:<partition>:sns:<region>:<account>:<name>` we use.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TopicArn {
    region: String,
    account: String,
}

impl TopicArn {
    fn parse(arn: &str) -> PortResult<TopicArn> {
        let parts: Vec<&str> = arn.splitn(6, ':').collect();
        match parts.as_slice() {
            ["arn", _, "sns", region, account, name]
                if !region.is_empty() && account.len() == 12 && !name.is_empty() =>
            {
                Ok(TopicArn {
                    region: region.to_string(),
                    account: account.to_string(),
                })
            }
            _ => Err(PortError::Invalid(format!(
                "`{arn}` is not an SNS topic ARN"
            ))),
        }
    }
}

/// What an approval topic's subscriptions mean for the personal links of one request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubscriptionAudit {
    /// Confirmed subscriptions that would receive links meant for others.
    pub exposed: Vec<ExposedSubscription>,
    /// The approvers (by name, in the order given) with no confirmed `email` subscription to
    /// their own address: pending confirmation, or not made yet. SNS would deliver them nothing.
    pub unconfirmed: Vec<String>,
    /// The other confirmed subscriptions: each one listed approver's own, filtered to them.
    pub personal: Vec<PersonalSubscription>,
}

/// A confirmed subscription filtered to its approver, as the audit read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PersonalSubscription {
    pub arn: String,
    pub protocol: String,
    /// As [`ExposedSubscription::endpoint`] shows it.
    pub endpoint: String,
}

impl PersonalSubscription {
    /// This subscription, exposed until SNS has applied its filter policy at `until`.
    pub fn settling(&self, until: chrono::DateTime<chrono::Utc>) -> ExposedSubscription {
        ExposedSubscription {
            arn: self.arn.clone(),
            protocol: self.protocol.clone(),
            endpoint: self.endpoint.clone(),
            exposure: Exposure::PolicySettling { until },
        }
    }
}

/// A change that keeps an approver's email subscription theirs alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubscriptionFix {
    /// They have none: subscribe their address with their filter policy.
    Subscribe { approver: Approver },
    /// Their confirmed subscription `arn` has another filter policy (`policy`), or one scoped
    /// to the message body (`scope`).
    Correct {
        arn: String,
        approver: String,
        policy: bool,
        scope: bool,
    },
    /// A confirmed email subscription `arn` filtered to `approver` that is not their address
    /// (any more: a reload changed it): it would receive their links, so it goes.
    Unsubscribe { arn: String, approver: String },
}

impl SubscriptionFix {
    /// The subscription whose filter policy the fix sets, when it exists already.
    pub fn arn(&self) -> Option<&str> {
        match self {
            SubscriptionFix::Subscribe { .. } | SubscriptionFix::Unsubscribe { .. } => None,
            SubscriptionFix::Correct { arn, .. } => Some(arn),
        }
    }
}

/// One subscription of a topic, as listed.
struct Subscription {
    protocol: String,
    endpoint: String,
    arn: String,
}

impl Subscription {
    /// `PendingConfirmation` (or deleted) subscriptions have no ARN yet.
    fn confirmed(&self) -> bool {
        self.arn.starts_with("arn:")
    }
}

impl SnsNotifier {
    pub fn new(
        creds: Arc<Credentials>,
        limiter: Arc<Limiter>,
        controller_account: Account,
    ) -> SnsNotifier {
        SnsNotifier {
            creds,
            limiter,
            controller_account,
            accounts: Accounts::Listed(Vec::new()),
            sent: Mutex::new(Sent::default()),
        }
    }

    /// The other configured accounts, whose credentials publish to topics they own.
    pub fn with_accounts(mut self, accounts: impl IntoIterator<Item = Account>) -> SnsNotifier {
        self.accounts = Accounts::Listed(accounts.into_iter().collect());
        self
    }

    /// The accounts of the configuration in force, as it is at each call (`tollgate serve`:
    /// reloads apply at once).
    pub fn with_config(mut self, config: crate::engine::SharedConfig) -> SnsNotifier {
        self.accounts = Accounts::InForce(config);
        self
    }

    /// Makes sure each approver has one `email` subscription to `topic` with the filter
    /// policy `{"approver": ["<name>"]}` on the message attributes, and no other address has
    /// one filtered to them. Returns how many subscriptions were created, corrected or removed
    /// (0 when all were in place).
    pub async fn ensure_approver_subscriptions(
        &self,
        topic: &str,
        approvers: &[Approver],
    ) -> PortResult<usize> {
        let fixes = self.subscription_fixes(topic, approvers).await?;
        for fix in &fixes {
            self.apply_fix(topic, fix).await?;
        }
        Ok(fixes.len())
    }

    /// What [`Self::ensure_approver_subscriptions`] would change, changing nothing: an email
    /// subscription for each approver who has none, and a correction for each confirmed one
    /// whose filter policy or its scope is not theirs. (A subscription pending confirmation
    /// is corrected once confirmed.)
    pub async fn subscription_fixes(
        &self,
        topic: &str,
        approvers: &[Approver],
    ) -> PortResult<Vec<SubscriptionFix>> {
        let (client, account) = self.client(topic).await?;
        let existing = self.subscriptions(&client, &account, topic).await?;
        let mut fixes = Vec::new();
        for approver in approvers {
            let fix = match existing.iter().find(|s| is_inbox_of(s, approver)) {
                Some(sub) if sub.confirmed() => {
                    let filter = self.filter_of(&client, &account, &sub.arn).await?;
                    correction(sub, approver, filter)
                }
                Some(_) => None,
                None => Some(SubscriptionFix::Subscribe {
                    approver: approver.clone(),
                }),
            };
            fixes.extend(fix);
        }
        // An approver's previous address (a reload changed it) still filtered to them.
        let others = existing.iter().filter(|s| {
            s.confirmed() && s.protocol == "email" && !approvers.iter().any(|a| is_inbox_of(s, a))
        });
        for sub in others {
            let (policy, scope) = self.filter_of(&client, &account, &sub.arn).await?;
            if scope.as_deref() == Some(BODY_SCOPE) {
                continue;
            }
            let theirs = policy.as_deref().and_then(one_approver);
            if let Some(a) = theirs.and_then(|name| approvers.iter().find(|a| a.name == name)) {
                fixes.push(SubscriptionFix::Unsubscribe {
                    arn: sub.arn.clone(),
                    approver: a.name.clone(),
                });
            }
        }
        Ok(fixes)
    }

    /// Makes one fix; returns the ARN of the subscription whose filter policy it set (a new
    /// email subscription has one while pending: `ReturnSubscriptionArn`), `None` for a
    /// removal.
    pub async fn apply_fix(
        &self,
        topic: &str,
        fix: &SubscriptionFix,
    ) -> PortResult<Option<String>> {
        let (client, account) = self.client(topic).await?;
        match fix {
            SubscriptionFix::Subscribe { approver } => self
                .subscribe(&client, &account, topic, approver)
                .await
                .map(|arn| Some(arn).filter(|a| a.starts_with("arn:"))),
            SubscriptionFix::Unsubscribe { arn, approver } => {
                let removed = self
                    .limiter
                    .call(&account, "Unsubscribe", || {
                        sdk(client.unsubscribe().subscription_arn(arn).send())
                    })
                    .await;
                match removed {
                    Ok(_) => {
                        tracing::warn!(topic, approver = %approver, subscription = %arn, "removed an email subscription filtered to an approver that is not their address");
                    }
                    // Without sns:Unsubscribe (a deploy role from before it was granted) it
                    // stays: the audit then withholds the links, naming it.
                    Err(PortError::Denied(e)) => {
                        tracing::warn!(topic, approver = %approver, subscription = %arn, error = %e, "cannot remove an email subscription filtered to an approver that is not their address");
                    }
                    Err(e) => return Err(context(e, "removing a subscription")),
                }
                Ok(None)
            }
            SubscriptionFix::Correct {
                arn,
                approver,
                policy,
                scope,
            } => {
                if *scope {
                    self.set_attribute(&client, &account, arn, SCOPE, ATTRIBUTE_SCOPE)
                        .await?;
                }
                if *policy {
                    let value = filter_policy(approver);
                    self.set_attribute(&client, &account, arn, "FilterPolicy", &value)
                        .await?;
                }
                tracing::info!(topic, approver = %approver, "corrected an approver's filter policy");
                Ok(Some(arn.clone()))
            }
        }
    }

    /// What the subscriptions of `topic` mean for personal links: the confirmed ones that
    /// would receive a message meant for one approver (every one whose filter policy is not
    /// `{"approver": ["<name>"]}` for exactly one of `approvers`, on the message attributes,
    /// delivered to that approver's own address), and the approvers who have no confirmed
    /// `email` subscription of their own. A subscription still pending confirmation receives
    /// nothing: it exposes nothing, and reaches nobody. Any failure to list or read the
    /// subscriptions is an error: the caller then publishes nothing.
    pub async fn audit_subscriptions(
        &self,
        topic: &str,
        approvers: &[Approver],
    ) -> PortResult<SubscriptionAudit> {
        let (client, account) = self.client(topic).await?;
        let listed = self.subscriptions(&client, &account, topic).await?;
        let mut audit = SubscriptionAudit {
            unconfirmed: unconfirmed(&listed, approvers),
            ..SubscriptionAudit::default()
        };
        for sub in listed.iter().filter(|s| s.confirmed()) {
            let (policy, scope) = self.filter_of(&client, &account, &sub.arn).await?;
            let (arn, protocol) = (sub.arn.clone(), sub.protocol.clone());
            let endpoint = shown_endpoint(&sub.protocol, &sub.endpoint);
            match exposure(policy, scope, approvers, sub) {
                Some(exposure) => audit.exposed.push(ExposedSubscription {
                    arn,
                    protocol,
                    endpoint,
                    exposure,
                }),
                None => audit.personal.push(PersonalSubscription {
                    arn,
                    protocol,
                    endpoint,
                }),
            }
        }
        Ok(audit)
    }

    /// A subscription's `FilterPolicy` and `FilterPolicyScope` attributes.
    async fn filter_of(
        &self,
        client: &Client,
        account: &str,
        arn: &str,
    ) -> PortResult<(Option<String>, Option<String>)> {
        let out = self
            .limiter
            .call(account, "GetSubscriptionAttributes", || {
                sdk(client
                    .get_subscription_attributes()
                    .subscription_arn(arn)
                    .send())
            })
            .await
            .map_err(|e| context(e, &format!("reading subscription {arn}")))?;
        let attrs = out.attributes();
        let get = |k: &str| attrs.and_then(|a| a.get(k)).cloned();
        Ok((get("FilterPolicy"), get("FilterPolicyScope")))
    }

    /// A client for the topic's account and region, and that account's id (for the limiter).
    async fn client(&self, topic: &str) -> PortResult<(Client, String)> {
        let arn = TopicArn::parse(topic)?;
        let account = self.account_for(&arn)?;
        let config = self
            .creds
            .config_for(&account, &arn.region, SESSION_NAME)
            .await?;
        let conf = aws_sdk_sns::config::Builder::from(&config).interceptor(CallMetrics);
        Ok((Client::from_conf(conf.build()), account.id.to_string()))
    }

    fn account_for(&self, arn: &TopicArn) -> PortResult<Account> {
        if arn.account == self.controller_account.id {
            return Ok(self.controller_account.clone());
        }
        let found = match &self.accounts {
            Accounts::Listed(accounts) => accounts.iter().find(|a| a.id == arn.account).cloned(),
            Accounts::InForce(config) => {
                let config = config.read().unwrap_or_else(|e| e.into_inner()).clone();
                config
                    .accounts
                    .values()
                    .find(|a| a.id == arn.account)
                    .cloned()
            }
        };
        found.ok_or_else(|| {
            PortError::Invalid(format!(
                "the SNS topic is in account {}, which is not a configured account",
                arn.account
            ))
        })
    }

    async fn publish_once(&self, msg: &Message) -> PortResult<String> {
        let (client, account) = self.client(&msg.topic).await?;
        let attributes = message_attributes(msg)?;
        let subject = subject(&msg.subject);
        let body = body(&msg.body);
        let out = self
            .limiter
            .call(&account, "Publish", || {
                let request = client
                    .publish()
                    .topic_arn(&msg.topic)
                    .subject(&subject)
                    .message(&body);
                sdk(request
                    .set_message_attributes(Some(attributes.clone()))
                    .send())
            })
            .await
            .map_err(|e| context(e, &format!("publishing to {}", msg.topic)))?;
        let id = out.message_id().unwrap_or_default().to_string();
        tracing::info!(topic = %msg.topic, key = %msg.key, message_id = %id, "published");
        Ok(id)
    }

    /// Every subscription of `topic` (bounded: [`MAX_PAGES`] pages).
    async fn subscriptions(
        &self,
        client: &Client,
        account: &str,
        topic: &str,
    ) -> PortResult<Vec<Subscription>> {
        let mut all = Vec::new();
        let mut token: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let page = self
                .limiter
                .call(account, "ListSubscriptionsByTopic", || {
                    let request = client.list_subscriptions_by_topic().topic_arn(topic);
                    sdk(request.set_next_token(token.clone()).send())
                })
                .await
                .map_err(|e| context(e, &format!("listing the subscriptions of {topic}")))?;
            all.extend(page.subscriptions().iter().map(|s| Subscription {
                protocol: s.protocol().unwrap_or_default().to_string(),
                endpoint: s.endpoint().unwrap_or_default().to_string(),
                arn: s.subscription_arn().unwrap_or_default().to_string(),
            }));
            token = page
                .next_token()
                .filter(|t| !t.is_empty())
                .map(str::to_string);
            if token.is_none() {
                return Ok(all);
            }
        }
        Err(PortError::Failed(format!(
            "{topic} has more than {MAX_PAGES} pages of subscriptions"
        )))
    }

    /// Creates the approver's email subscription with its filter policy; returns its ARN.
    async fn subscribe(
        &self,
        client: &Client,
        account: &str,
        topic: &str,
        approver: &Approver,
    ) -> PortResult<String> {
        let policy = filter_policy(&approver.name);
        let policy = policy.as_str();
        let out = self
            .limiter
            .call(account, "Subscribe", || {
                let request = client
                    .subscribe()
                    .topic_arn(topic)
                    .protocol("email")
                    .endpoint(&approver.email);
                let request = request
                    .attributes("FilterPolicy", policy)
                    .return_subscription_arn(true);
                sdk(request.send())
            })
            .await
            .map_err(|e| {
                context(
                    e,
                    &format!("subscribing approver {} to {topic}", approver.name),
                )
            })?;
        tracing::info!(topic, approver = %approver.name, "subscribed approver");
        Ok(out.subscription_arn().unwrap_or_default().to_string())
    }

    /// Sets one attribute of a subscription.
    async fn set_attribute(
        &self,
        client: &Client,
        account: &str,
        arn: &str,
        name: &str,
        value: &str,
    ) -> PortResult<()> {
        self.limiter
            .call(account, "SetSubscriptionAttributes", || {
                let request = client.set_subscription_attributes().subscription_arn(arn);
                sdk(request.attribute_name(name).attribute_value(value).send())
            })
            .await
            .map_err(|e| context(e, &format!("setting {name} of an approver's subscription")))?;
        Ok(())
    }
}

/// The correction a confirmed subscription of `approver`'s needs, given its `FilterPolicy` and
/// `FilterPolicyScope`: their policy when it has another, and the message attributes as its
/// scope when it filters on the message body (which carries no approver attribute).
fn correction(
    sub: &Subscription,
    approver: &Approver,
    (policy, scope): (Option<String>, Option<String>),
) -> Option<SubscriptionFix> {
    let policy = !policy.is_some_and(|p| same_json(&p, &filter_policy(&approver.name)));
    let scope = scope.as_deref() == Some(BODY_SCOPE);
    (policy || scope).then(|| SubscriptionFix::Correct {
        arn: sub.arn.clone(),
        approver: approver.name.clone(),
        policy,
        scope,
    })
}

/// The `FilterPolicyScope` attribute, and its values: approval messages are filtered on their
/// attributes.
const SCOPE: &str = "FilterPolicyScope";
const ATTRIBUTE_SCOPE: &str = "MessageAttributes";
const BODY_SCOPE: &str = "MessageBody";

#[async_trait]
impl Notifier for SnsNotifier {
    async fn publish(&self, msg: &Message) -> PortResult<String> {
        let slot = self
            .sent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .slot(&msg.key);
        slot.get_or_try_init(|| self.publish_once(msg))
            .await
            .cloned()
    }
}

/// Why a subscription with this filter policy (and scope) would receive links meant for
/// others; `None` when it selects exactly one listed approver by the message attribute.
/// (SNS: a subscription without a filter policy receives every message; a policy's scope is
/// `MessageAttributes` unless `FilterPolicyScope` says `MessageBody`.
/// <https://docs.aws.amazon.com/sns/latest/dg/sns-message-filtering.html>)
///
/// A policy for one approver on a subscription that is not that approver's own email address
/// (an HTTP endpoint, a queue, another address) is an exposure too: whoever reads it gets the
/// approver's link, and several such subscriptions would give one person every approval.
fn exposure(
    policy: Option<String>,
    scope: Option<String>,
    approvers: &[Approver],
    sub: &Subscription,
) -> Option<Exposure> {
    let Some(policy) = policy.filter(|p| !p.trim().is_empty()) else {
        return Some(Exposure::Unfiltered);
    };
    if scope.as_deref() == Some(BODY_SCOPE) {
        return Some(Exposure::BodyScoped { policy });
    }
    match one_approver(&policy).and_then(|name| approvers.iter().find(|a| a.name == name)) {
        Some(a) if is_inbox_of(sub, a) => None,
        Some(a) => Some(Exposure::NotTheirInbox {
            approver: a.name.clone(),
        }),
        None => Some(Exposure::NotOneApprover { policy }),
    }
}

/// A subscription's endpoint as reasons, notifications and the store show it. The URL of an
/// `http`/`https` subscription can carry credentials (basic authentication in its user info,
/// a token in its path or query, as chat webhooks do; or in its host name, as a Lambda
/// function URL's random id; SNS returns it whole): only its scheme, the last two labels of
/// its host name (an IP address whole) and its port are kept, and `…` marks what was left out.
/// The subscription's ARN, shown beside it, names it exactly. Other endpoints (an email
/// address, a phone number, an ARN) are shown whole: they are what the operator looks for.
fn shown_endpoint(protocol: &str, endpoint: &str) -> String {
    if !matches!(protocol.to_ascii_lowercase().as_str(), "http" | "https") {
        return endpoint.to_string();
    }
    let Ok(url) = url::Url::parse(endpoint) else {
        return format!("({protocol} endpoint, not shown: not a URL)");
    };
    let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
    let host = match url.host() {
        Some(url::Host::Domain(name)) => {
            let labels: Vec<&str> = name.split('.').collect();
            match labels.len() {
                0..=2 => name.to_string(),
                n => format!("….{}", labels[n - 2..].join(".")),
            }
        }
        Some(ip) => ip.to_string(),
        None => String::new(),
    };
    let whole = url.username().is_empty()
        && url.password().is_none()
        && matches!(url.path(), "" | "/")
        && url.query().is_none()
        && url.fragment().is_none();
    let rest = if whole { "" } else { "/…" };
    format!("{}://{host}{port}{rest}", url.scheme())
}

/// The approvers none of whose own `email` subscriptions in `listed` is confirmed.
fn unconfirmed(listed: &[Subscription], approvers: &[Approver]) -> Vec<String> {
    let reached = |a: &Approver| listed.iter().any(|s| s.confirmed() && is_inbox_of(s, a));
    approvers
        .iter()
        .filter(|a| !reached(a))
        .map(|a| a.name.clone())
        .collect()
}

fn is_inbox_of(sub: &Subscription, approver: &Approver) -> bool {
    sub.protocol == "email" && sub.endpoint.eq_ignore_ascii_case(&approver.email)
}

/// The one approver a filter policy `{"approver":["<name>"]}` selects; `None` for any other.
fn one_approver(policy: &str) -> Option<String> {
    let v = serde_json::from_str::<serde_json::Value>(policy).ok()?;
    let map = v.as_object()?;
    let values = map.get(APPROVER_KEY)?.as_array()?;
    (map.len() == 1 && values.len() == 1).then(|| values[0].as_str().map(str::to_string))?
}

/// `{"approver":["<name>"]}`: only messages with that `approver` attribute reach the inbox.
fn filter_policy(approver: &str) -> String {
    serde_json::json!({ APPROVER_KEY: [approver] }).to_string()
}

/// The message attribute approval messages carry (the gate's `APPROVER_ATTRIBUTE`).
const APPROVER_KEY: &str = "approver";

fn same_json(a: &str, b: &str) -> bool {
    let parse = |s: &str| serde_json::from_str::<serde_json::Value>(s).ok();
    parse(a).is_some_and(|a| Some(a) == parse(b))
}

fn message_attributes(msg: &Message) -> PortResult<HashMap<String, MessageAttributeValue>> {
    let mut attributes = HashMap::new();
    for (name, value) in &msg.attributes {
        let value = MessageAttributeValue::builder()
            .data_type("String")
            .string_value(value)
            .build();
        let value = value
            .map_err(|_| PortError::Invalid(format!("message attribute `{name}` is malformed")))?;
        attributes.insert(name.clone(), value);
    }
    Ok(attributes)
}

/// A subject SNS accepts: printable ASCII on one line, shorter than 100 characters.
fn subject(raw: &str) -> String {
    let clean: String = raw
        .chars()
        .map(|c| match c {
            ' '..='~' => c,
            c if c.is_whitespace() => ' ',
            _ => '?',
        })
        .collect();
    let clean = clean.trim();
    if clean.len() <= SUBJECT_MAX {
        return clean.to_string();
    }
    format!("{}...", &clean[..SUBJECT_MAX - 3])
}

/// The body, cut (on a character boundary) to what SNS accepts.
fn body(raw: &str) -> String {
    if raw.len() <= BODY_MAX {
        return raw.to_string();
    }
    let mut end = BODY_MAX;
    while !raw.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}\n[truncated]", &raw[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_arns_give_region_and_account() {
        let arn = TopicArn::parse("arn:aws:sns:eu-west-1:222222222222:approvals").unwrap();
        assert_eq!(
            arn,
            TopicArn {
                region: "eu-west-1".into(),
                account: "222222222222".into()
            }
        );
        for bad in [
            "",
            "arn:aws:sqs:eu-west-1:222222222222:q",
            "arn:aws:sns:eu-west-1:22:t",
            "arn:aws:sns::222222222222:t",
        ] {
            assert!(
                matches!(TopicArn::parse(bad), Err(PortError::Invalid(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn subjects_are_one_line_of_ascii_within_the_limit() {
        assert_eq!(
            subject("Prod: r12 — approve?\nnow"),
            "Prod: r12 ? approve? now"
        );
        let long = subject(&"x".repeat(300));
        assert_eq!(long.len(), 99, "SNS takes less than 100 characters");
        assert!(long.ends_with("..."));
    }

    #[test]
    fn long_bodies_are_cut_on_a_character_boundary() {
        let cut = body(&"é".repeat(BODY_MAX));
        assert!(cut.len() <= BODY_MAX + 20 && cut.ends_with("[truncated]"));
        assert_eq!(body("short"), "short");
    }

    #[test]
    fn the_dedupe_memory_is_bounded_and_forgets_the_oldest() {
        let mut sent = Sent::default();
        let first = sent.slot("k0");
        assert!(Arc::ptr_eq(&first, &sent.slot("k0")));
        for i in 1..=DEDUPE_CAPACITY {
            sent.slot(&format!("k{i}"));
        }
        assert_eq!(sent.ids.len(), DEDUPE_CAPACITY);
        assert!(!sent.ids.contains_key("k0"));
    }

    fn approver(name: &str) -> Approver {
        Approver {
            name: name.into(),
            email: format!("{name}@example.com"),
            github: None,
        }
    }

    #[test]
    fn only_a_policy_for_exactly_one_listed_approver_keeps_links_personal() {
        let listed = [approver("alice"), approver("bob")];
        let inbox = |protocol: &str, endpoint: &str| Subscription {
            arn: "arn:aws:sns:eu-west-1:111111111111:approvals:1".into(),
            protocol: protocol.into(),
            endpoint: endpoint.into(),
        };
        let alice = inbox("email", "Alice@Example.com");
        let judge = |p: Option<&str>, scope: Option<&str>| {
            exposure(p.map(Into::into), scope.map(Into::into), &listed, &alice)
        };
        assert_eq!(judge(Some(r#"{"approver":["alice"]}"#), None), None);
        let bob = inbox("email", "bob@example.com");
        assert_eq!(
            exposure(
                Some(r#"{"approver":["bob"]}"#.into()),
                Some("MessageAttributes".into()),
                &listed,
                &bob
            ),
            None
        );
        // Filtered to one approver, delivered elsewhere: alice's link would reach its reader.
        for elsewhere in [
            inbox("http", "https://hooks.example.com/alice"),
            inbox("email", "team@example.com"),
            inbox("email", "bob@example.com"),
        ] {
            assert_eq!(
                exposure(
                    Some(r#"{"approver":["alice"]}"#.into()),
                    None,
                    &listed,
                    &elsewhere
                ),
                Some(Exposure::NotTheirInbox {
                    approver: "alice".into()
                }),
                "{} {}",
                elsewhere.protocol,
                elsewhere.endpoint
            );
        }
        assert_eq!(judge(None, None), Some(Exposure::Unfiltered));
        assert_eq!(judge(Some("  "), None), Some(Exposure::Unfiltered));
        for leaky in [
            r#"{"approver":["alice","bob"]}"#,
            r#"{"approver":["carol"]}"#,
            r#"{"approver":[{"exists":true}]}"#,
            r#"{"approver":["alice"],"team":["x"]}"#,
            r#"{"team":["x"]}"#,
            "not json",
        ] {
            assert_eq!(
                judge(Some(leaky), None),
                Some(Exposure::NotOneApprover {
                    policy: leaky.into()
                }),
                "{leaky}"
            );
        }
        assert!(matches!(
            judge(Some(r#"{"approver":["alice"]}"#), Some("MessageBody")),
            Some(Exposure::BodyScoped { .. })
        ));
    }

    #[test]
    fn only_a_confirmed_email_subscription_to_their_own_address_reaches_an_approver() {
        let sub = |arn: &str, protocol: &str, endpoint: &str| Subscription {
            arn: arn.into(),
            protocol: protocol.into(),
            endpoint: endpoint.into(),
        };
        let listed = [
            sub(
                "arn:aws:sns:eu-west-1:111111111111:approvals:1",
                "email",
                "Alice@Example.com",
            ),
            sub("PendingConfirmation", "email", "bob@example.com"),
            sub(
                "arn:aws:sns:eu-west-1:111111111111:approvals:2",
                "http",
                "carol@example.com",
            ),
        ];
        let approvers = ["alice", "bob", "carol", "dave"].map(approver);
        assert_eq!(unconfirmed(&listed, &approvers), ["bob", "carol", "dave"]);
        assert!(unconfirmed(&listed, &approvers[..1]).is_empty());
    }

    #[test]
    fn an_http_endpoint_is_shown_without_its_credentials_path_or_query() {
        let shown = |p, e| shown_endpoint(p, e);
        assert_eq!(
            shown(
                "https",
                "https://ops:hunter2@hooks.example.com/services/T0/B0/s3cr3t?token=t0k3n#x"
            ),
            "https://….example.com/…"
        );
        // A Lambda function URL's id is its only secret when it takes no authentication.
        assert_eq!(
            shown(
                "https",
                "https://abcdefghijklmnopqrstuvwxyz012345.lambda-url.eu-west-1.on.aws/"
            ),
            "https://….on.aws"
        );
        assert_eq!(shown("http", "http://[::1]:9000/x"), "http://[::1]:9000/…");
        assert_eq!(
            shown("http", "http://127.0.0.1:8080/inbox?key=k"),
            "http://127.0.0.1:8080/…"
        );
        assert_eq!(
            shown("https", "https://example.com/"),
            "https://example.com"
        );
        assert_eq!(
            shown("https", "not a url with s3cr3t"),
            "(https endpoint, not shown: not a URL)"
        );
        // What the operator looks for is kept whole.
        assert_eq!(shown("email", "dana@example.com"), "dana@example.com");
        let queue = "arn:aws:sqs:eu-west-1:111111111111:approvals";
        assert_eq!(shown("sqs", queue), queue);
    }

    #[test]
    fn an_approvers_subscription_is_corrected_to_their_policy_on_the_message_attributes() {
        let alice = approver("alice");
        let sub = Subscription {
            arn: "arn:aws:sns:eu-west-1:111111111111:approvals:1".into(),
            protocol: "email".into(),
            endpoint: alice.email.clone(),
        };
        let fix = |policy: Option<&str>, scope: Option<&str>| {
            correction(
                &sub,
                &alice,
                (policy.map(Into::into), scope.map(Into::into)),
            )
        };
        let correct = |policy, scope| {
            Some(SubscriptionFix::Correct {
                arn: sub.arn.clone(),
                approver: "alice".into(),
                policy,
                scope,
            })
        };
        let hers = r#"{ "approver": ["alice"] }"#;
        assert_eq!(fix(Some(hers), None), None);
        assert_eq!(fix(Some(hers), Some("MessageAttributes")), None);
        assert_eq!(fix(Some(hers), Some("MessageBody")), correct(false, true));
        assert_eq!(fix(None, None), correct(true, false));
        assert_eq!(
            fix(Some(r#"{"approver":["bob"]}"#), Some("MessageBody")),
            correct(true, true)
        );
        assert_eq!(correct(true, true).unwrap().arn(), Some(sub.arn.as_str()));
        let subscribe = SubscriptionFix::Subscribe { approver: alice };
        assert_eq!(subscribe.arn(), None);
    }

    #[test]
    fn filter_policies_compare_as_json() {
        assert_eq!(filter_policy("alice"), r#"{"approver":["alice"]}"#);
        assert!(same_json(
            r#"{ "approver": [ "alice" ] }"#,
            &filter_policy("alice")
        ));
        assert!(!same_json(
            r#"{"approver":["bob"]}"#,
            &filter_policy("alice")
        ));
    }
}

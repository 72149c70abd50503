//! `POST /webhooks/sns`: verified SNS deliveries — CloudWatch alarm notifications, stack
//! events, and the subscription (un)confirmations of alarm and stack-events topics.
//!
//! Owns the edge of SNS intake: body cap, parsing, the topic allow-list, signature verification
//! ([`crate::http::sns_verify`]), deduplication on `MessageId`, and turning an alarm into one
//! fact per stage that watches it ([`crate::engine::Ingest::record_alarm`]). The rollback is the reconciler's,
//! woken by that fact; nothing slow happens before the answer to a notification.
//!
//! | case | answer |
//! |---|---|
//! | body over [`BODY_LIMIT`] | 413 |
//! | not an SNS message, unknown `Type`, malformed `MessageId`, a required field missing | 400 |
//! | `Timestamp` older than `[controller.sns] max_message_age` (1 h) or further ahead than `clock_skew` (5 min), by the engine's clock | 403, nothing recorded or fetched |
//! | SignatureVersion 1 while `require_signature_v2` is set | 403, nothing recorded or fetched |
//! | version or certificate URL wrong, certificate expired | 403, nothing recorded |
//! | signature wrong, or `TopicArn` not in the configuration ([`Config::known_topics`]) | 403, one answer for both (a sender cannot probe which topics are configured), nothing recorded |
//! | `SubscribeURL` not on the topic's own SNS host | 403, nothing recorded or fetched |
//! | signing certificate could not be fetched, failed to within `cert_failure_ttl`, or the fetch budget (`cert_fetches_per_minute`) is spent | 503 (SNS retries), nothing recorded |
//! | a `MessageId` seen before | 200, nothing changes |
//! | an alarm recorded for at least one stage | 200 |
//! | an alarm no stage watches, or a notification that is not an alarm | 202, delivery recorded |
//! | a notification on an account's `stack_events_topic` | see [`super::stack_events`]: 200 `woken`, or 202; nothing recorded |
//! | `SubscriptionConfirmation` for an approval or notification topic | 403, nothing fetched or recorded |
//! | `SubscriptionConfirmation` confirmed | 200, `SubscribeURL` fetched once, logged |
//! | the confirmation fetch failed | 502, an `sns-subscription` event, no delivery recorded (a redelivery tries again) |
//! | `UnsubscribeConfirmation` | 200, logged |
//! | the store failed | 500 |
//!
//! A stage watches an alarm when its pipeline lists the topic in `alarm_topics`, the stage lists
//! the alarm's name in `alarms`, and one of its targets is in the alarm's account and region.
//!
//! # Guarantees
//! - Nothing is recorded, and nothing is fetched but the signing certificate from its pinned
//!   URL, before the message is found fresh, its signature verified and its topic allowed.
//! - A stale message is refused before any certificate is looked up; certificate fetches are
//!   bounded per minute and a failed one is not repeated within its TTL
//!   ([`CertCache::with_limits`]).
//! - A `SubscribeURL` is fetched only through a [`Confirmer`], never again once its
//!   `MessageId` is recorded (after a successful confirmation), and only after
//!   [`confirmation_url`] pinned it to `https://sns.<topic region>.amazonaws.com/`.
//! - Each pipeline that receives an alarm gets an `sns-alarm` event whose detail carries
//!   `received_at=` (the engine's clock when the request arrived), for latency measurement.
//!
//! # Caveats
//! - The `MessageId` is recorded before the per-stage alarm facts (each under
//!   `<MessageId>/<pipeline>/<stage>`): a crash between the two loses this push, and the
//!   bake-time CloudWatch poll is then what catches the alarm.
//! - A confirmation's `MessageId` is recorded only after the subscription is confirmed, so a
//!   failed confirmation is tried again on redelivery (SNS retries a delivery answered 5xx);
//!   two deliveries of it at once may both fetch the `SubscribeURL` (confirming twice is
//!   harmless), and one records it.
//!
//! Must never: log a body, a signature or a `SubscribeURL` (it carries the token).

use std::collections::BTreeSet;
use std::sync::Arc;

use async_trait::async_trait;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use chrono::{DateTime, Utc};
use tower_http::limit::RequestBodyLimitLayer;
use url::Url;

use super::reply::Reply;
use super::stack_events::{self, StackWaiters};
use crate::config::{Config, Pipeline, Stage, Target};
use crate::engine::Engine;
use crate::engine::{Delivery, Ingested, NewAlarm};
use crate::http::sns_verify::{
    AlarmNotification, AlarmState, CertCache, Freshness, SnsMessage, SnsType, SnsVerifyError,
    confirmation_url, fetch_client_builder, parse_alarm, verify_delivery,
};
use crate::metrics::WebhookSource;

/// The route's path.
pub const PATH: &str = "/webhooks/sns";
/// SNS messages are at most 256 KiB.
pub const BODY_LIMIT: usize = 256 * 1024;
/// The `source` of every delivery recorded here.
pub const DELIVERY_SOURCE: &str = "sns";
/// The longest `MessageId` accepted (SNS's are 36-character UUIDs).
const MAX_MESSAGE_ID: usize = 100;
/// Characters of an alarm's `NewStateReason` kept (CloudWatch writes at most 1023).
const MAX_REASON_CHARS: usize = 1024;
/// Characters of an untrusted `TopicArn` quoted in an answer.
const TOPIC_EXCERPT: usize = 256;

/// Visits a verified, pinned `SubscribeURL`, which confirms the subscription.
#[async_trait]
pub trait Confirmer: Send + Sync {
    /// Fetches `url`; the error says what failed, without the URL (it carries the token).
    async fn confirm(&self, url: &Url) -> Result<(), String>;
}

/// The real [`Confirmer`]: a GET with a client from [`fetch_client_builder`].
#[derive(Debug, Clone)]
pub struct HttpConfirmer {
    client: reqwest::Client,
}

impl HttpConfirmer {
    /// A confirmer with [`fetch_client_builder`]'s client (HTTPS only, no redirects, bounded).
    pub fn new() -> Result<HttpConfirmer, reqwest::Error> {
        Ok(Self::with_client(fetch_client_builder().build()?))
    }

    /// A confirmer with `client`; build it from [`fetch_client_builder`].
    pub fn with_client(client: reqwest::Client) -> HttpConfirmer {
        HttpConfirmer { client }
    }
}

#[async_trait]
impl Confirmer for HttpConfirmer {
    async fn confirm(&self, url: &Url) -> Result<(), String> {
        let response = self.client.get(url.clone()).send().await;
        let status = response.map_err(describe_fetch_error)?.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("SNS answered HTTP {}", status.as_u16()))
        }
    }
}

fn describe_fetch_error(e: reqwest::Error) -> String {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else {
        "request failed"
    };
    what.to_owned()
}

/// What the SNS route needs. Cheap to clone.
#[derive(Clone)]
pub struct SnsState {
    pub engine: Engine,
    pub certs: Arc<CertCache>,
    pub confirmer: Arc<dyn Confirmer>,
    /// The stack waits a stack notification wakes.
    pub waiters: Arc<StackWaiters>,
}

impl SnsState {
    /// State with the real [`HttpConfirmer`].
    pub fn new(engine: Engine, certs: Arc<CertCache>) -> Result<SnsState, reqwest::Error> {
        let confirmer = Arc::new(HttpConfirmer::new()?);
        Ok(SnsState {
            engine,
            certs,
            confirmer,
            waiters: StackWaiters::new(),
        })
    }

    /// Wakes the stack waits of this registry (the CloudFormation deployer's).
    pub fn with_waiters(mut self, waiters: Arc<StackWaiters>) -> SnsState {
        self.waiters = waiters;
        self
    }

    /// Replaces the confirmer (tests record the URLs instead of fetching them).
    pub fn with_confirmer(mut self, confirmer: Arc<dyn Confirmer>) -> SnsState {
        self.confirmer = confirmer;
        self
    }
}

/// `POST /webhooks/sns`, with its state applied: merge it into the application router.
pub fn routes(state: SnsState) -> Router {
    Router::new()
        .route(PATH, post(webhook))
        .layer(DefaultBodyLimit::disable())
        .layer(RequestBodyLimitLayer::new(BODY_LIMIT))
        .with_state(state)
}

impl Reply {
    fn store_failed(error: impl std::fmt::Display) -> Reply {
        tracing::error!(error = %error, "cannot record SNS delivery");
        let detail = "could not record the delivery";
        Reply::new(StatusCode::INTERNAL_SERVER_ERROR, "error", detail)
    }
}

async fn webhook(State(state): State<SnsState>, body: Result<Bytes, BytesRejection>) -> Response {
    let arrived = state.engine.now();
    match receive(&state, body, arrived).await {
        Ok(reply) | Err(reply) => reply.counted(WebhookSource::Sns).into_response(),
    }
}

async fn receive(
    state: &SnsState,
    body: Result<Bytes, BytesRejection>,
    arrived: DateTime<Utc>,
) -> Result<Reply, Reply> {
    let body = body.map_err(|r| Reply::new(r.status(), "rejected", r.body_text()))?;
    let msg = parse(&body)?;
    // The topic first: a message naming a topic not configured never makes the controller
    // fetch a certificate (so made-up messages cannot spend the bounded fetches real alarms
    // need), and it gets exactly the answer of a bad signature.
    check_topic(&state.engine.config(), &msg)?;
    authenticate(state, &msg, arrived).await?;
    let subscribe_url = pinned_subscribe_url(&msg)?;
    match msg.message_type {
        // An alarm notification is deduplicated with its fact, per stage, in the same
        // transaction (a crash between a dedupe and the fact would lose the alarm on
        // redelivery).
        SnsType::Notification => notification(state, &msg, arrived).await,
        SnsType::SubscriptionConfirmation => {
            let url = subscribe_url.ok_or_else(|| Reply::forbidden("no SubscribeURL"))?;
            subscribe(state, &msg, &url).await
        }
        SnsType::UnsubscribeConfirmation => {
            if !first_delivery(state, &msg).await? {
                return Ok(duplicate(&msg));
            }
            unsubscribed(state, &msg).await
        }
    }
}

fn parse(body: &[u8]) -> Result<SnsMessage, Reply> {
    let msg = SnsMessage::parse(body).map_err(|e| {
        tracing::warn!(reason = %e, "SNS delivery refused");
        Reply::bad_request(e.to_string())
    })?;
    let id = &msg.message_id;
    let valid = !id.is_empty()
        && id.len() <= MAX_MESSAGE_ID
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if !valid {
        return Err(Reply::bad_request("malformed MessageId"));
    }
    Ok(msg)
}

/// An unknown topic gets exactly the answer a bad signature gets ([`not_verified`]), so a
/// sender cannot learn which topics are configured.
fn check_topic(config: &Config, msg: &SnsMessage) -> Result<(), Reply> {
    if config.known_topics().contains(&msg.topic_arn) {
        return Ok(());
    }
    let topic: String = msg.topic_arn.chars().take(TOPIC_EXCERPT).collect();
    tracing::warn!(topic = %topic.escape_debug(), message = %msg.message_id, "SNS delivery from a topic not in the configuration refused");
    Err(not_verified())
}

/// The one answer for a signature that does not verify and for a topic not configured.
fn not_verified() -> Reply {
    Reply::forbidden(
        "signature does not match the message, or the topic is not one this controller accepts",
    )
}

/// Freshness and signature, as of `now` (the controller's clock, which also judges the
/// certificate's validity).
async fn authenticate(state: &SnsState, msg: &SnsMessage, now: DateTime<Utc>) -> Result<(), Reply> {
    let rules = Freshness::from(&state.engine.config().controller.sns);
    let Err(e) = verify_delivery(msg, &state.certs, now, &rules).await else {
        return Ok(());
    };
    tracing::warn!(reason = %e, message = %msg.message_id, topic = %msg.topic_arn, "SNS delivery failed verification");
    Err(match e {
        SnsVerifyError::CertFetch(_) => Reply::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!("{e}; try again later"),
        ),
        SnsVerifyError::MissingField(_) | SnsVerifyError::BadTimestamp => {
            Reply::bad_request(e.to_string())
        }
        SnsVerifyError::BadSignature => not_verified(),
        _ => Reply::forbidden(e.to_string()),
    })
}

/// The `SubscribeURL` to confirm, for a `SubscriptionConfirmation`; `None` for other types.
fn pinned_subscribe_url(msg: &SnsMessage) -> Result<Option<Url>, Reply> {
    if msg.message_type != SnsType::SubscriptionConfirmation {
        return Ok(None);
    }
    let url = confirmation_url(msg).map_err(|e| {
        tracing::warn!(reason = %e, message = %msg.message_id, topic = %msg.topic_arn, "SNS subscription confirmation refused");
        Reply::forbidden(e.to_string())
    })?;
    Ok(Some(url))
}

/// Records the `MessageId`; false when it was seen before (then nothing else happens).
async fn first_delivery(state: &SnsState, msg: &SnsMessage) -> Result<bool, Reply> {
    let (engine, delivery) = (&state.engine, message_delivery(msg));
    let recorded = engine.acknowledge(&delivery, None).await;
    match recorded.map_err(Reply::store_failed)? {
        Ingested::Recorded(()) => Ok(true),
        Ingested::Duplicate => Ok(false),
    }
}

fn message_delivery(msg: &SnsMessage) -> Delivery {
    Delivery {
        source: DELIVERY_SOURCE.into(),
        id: msg.message_id.clone(),
    }
}

fn actor(msg: &SnsMessage) -> String {
    format!("{DELIVERY_SOURCE}:{}", msg.message_id)
}

// ----- notifications ----------------------------------------------------------------------

/// A stage that watches an alarm.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Watcher {
    pub pipeline: String,
    pub stage: String,
}

/// The stages that watch `alarm` when it arrives on `topic`, in configuration order.
pub fn watchers(config: &Config, topic: &str, alarm: &AlarmNotification) -> Vec<Watcher> {
    let listens = |p: &&Pipeline| p.alarm_topics.iter().any(|t| t == topic);
    let mut out = Vec::new();
    for pipeline in config.pipelines.iter().filter(listens) {
        let watching = pipeline.stages.iter().filter(|s| watches(config, s, alarm));
        out.extend(watching.map(|s| Watcher {
            pipeline: pipeline.name.to_string(),
            stage: s.name.to_string(),
        }));
    }
    out
}

fn watches(config: &Config, stage: &Stage, alarm: &AlarmNotification) -> bool {
    stage.alarms.contains(&alarm.alarm_name)
        && stage.targets.iter().any(|t| in_scope(config, t, alarm))
}

fn in_scope(config: &Config, target: &Target, alarm: &AlarmNotification) -> bool {
    let account = config.account(&target.account);
    account.is_some_and(|a| a.id == alarm.aws_account_id) && target.region == alarm.region_code()
}

async fn notification(
    state: &SnsState,
    msg: &SnsMessage,
    arrived: DateTime<Utc>,
) -> Result<Reply, Reply> {
    if stack_events::is_stack_events_topic(&state.engine.config(), &msg.topic_arn) {
        return Ok(stack_events::notification(state, msg));
    }
    let alarm = match parse_alarm(&msg.message) {
        Ok(alarm) => alarm,
        Err(e) => return Ok(Reply::new(StatusCode::ACCEPTED, "ignored", e.to_string())),
    };
    let found = watchers(&state.engine.config(), &msg.topic_arn, &alarm);
    if found.is_empty() {
        return Ok(unwatched(msg, &alarm));
    }
    let mut fresh = false;
    for watcher in &found {
        fresh |= record_alarm(state, msg, &alarm, watcher).await?;
    }
    if !fresh {
        return Ok(duplicate(msg));
    }
    log_arrival(state, msg, &alarm, &found, arrived).await?;
    let stages: Vec<String> = found
        .iter()
        .map(|w| format!("{}/{}", w.pipeline, w.stage))
        .collect();
    let detail = format!(
        "alarm {} recorded for {}",
        alarm.alarm_name,
        stages.join(", ")
    );
    Ok(Reply::new(StatusCode::OK, "recorded", detail))
}

fn unwatched(msg: &SnsMessage, alarm: &AlarmNotification) -> Reply {
    let (account, region) = (&alarm.aws_account_id, alarm.region_code());
    tracing::info!(alarm = %alarm.alarm_name, %account, region, message = %msg.message_id, topic = %msg.topic_arn, "alarm notification matches no stage");
    let detail = format!(
        "alarm {} in {account}/{region} is watched by no stage",
        alarm.alarm_name
    );
    Reply::new(StatusCode::ACCEPTED, "ignored", detail)
}

async fn record_alarm(
    state: &SnsState,
    msg: &SnsMessage,
    alarm: &AlarmNotification,
    watcher: &Watcher,
) -> Result<bool, Reply> {
    let fact = NewAlarm {
        pipeline: watcher.pipeline.clone(),
        stage: watcher.stage.clone(),
        alarm: alarm.alarm_name.clone(),
        firing: alarm.new_state_value == AlarmState::Alarm,
        reason: alarm
            .new_state_reason
            .chars()
            .take(MAX_REASON_CHARS)
            .collect(),
        changed_at: alarm.state_changed_at(),
    };
    let delivery = Delivery {
        source: DELIVERY_SOURCE.into(),
        id: format!("{}/{}/{}", msg.message_id, watcher.pipeline, watcher.stage),
    };
    let recorded = state.engine.record_alarm(&fact, &delivery).await;
    let recorded = recorded.map_err(Reply::store_failed)?;
    Ok(matches!(recorded, Ingested::Recorded(())))
}

fn duplicate(msg: &SnsMessage) -> Reply {
    let detail = format!("message {} was received before", msg.message_id);
    Reply::new(StatusCode::OK, "duplicate", detail)
}

/// One `sns-alarm` event per pipeline, with the arrival time and the stages it went to.
async fn log_arrival(
    state: &SnsState,
    msg: &SnsMessage,
    alarm: &AlarmNotification,
    found: &[Watcher],
    arrived: DateTime<Utc>,
) -> Result<(), Reply> {
    let pipelines: BTreeSet<&str> = found.iter().map(|w| w.pipeline.as_str()).collect();
    for pipeline in pipelines {
        let stages: Vec<&str> = found
            .iter()
            .filter(|w| w.pipeline == pipeline)
            .map(|w| w.stage.as_str())
            .collect();
        let detail = format!(
            "alarm {} is {} in {}/{}; state changed at {}; SNS message received_at={} for stages {}",
            alarm.alarm_name,
            alarm.new_state_value.as_str(),
            alarm.aws_account_id,
            alarm.region_code(),
            alarm.state_change_time,
            arrived.format("%Y-%m-%dT%H:%M:%S%.3fZ"),
            stages.join(", ")
        );
        log_event(state, msg, pipeline, "sns-alarm", &detail).await?;
    }
    Ok(())
}

async fn log_event(
    state: &SnsState,
    msg: &SnsMessage,
    pipeline: &str,
    kind: &str,
    detail: &str,
) -> Result<(), Reply> {
    let (engine, actor) = (&state.engine, actor(msg));
    let logged = engine.log_event(pipeline, &actor, kind, None, detail).await;
    logged.map_err(Reply::store_failed)
}

// ----- subscriptions ----------------------------------------------------------------------

/// The pipelines that name `topic` anywhere: alarm, notification or approval topic.
fn pipelines_naming(config: &Config, topic: &str) -> Vec<String> {
    let names = |p: &Pipeline| {
        p.alarm_topics.iter().any(|t| t == topic)
            || p.notifications.topic.as_deref() == Some(topic)
            || p.stages
                .iter()
                .any(|s| s.approval.as_ref().is_some_and(|a| a.topic == topic))
    };
    let naming = config.pipelines.iter().filter(|p| names(p));
    naming.map(|p| p.name.to_string()).collect()
}

async fn log_for_topic(state: &SnsState, msg: &SnsMessage, detail: &str) -> Result<(), Reply> {
    let kind = "sns-subscription";
    for pipeline in pipelines_naming(&state.engine.config(), &msg.topic_arn) {
        log_event(state, msg, &pipeline, kind, detail).await?;
    }
    Ok(())
}

/// A `SubscriptionConfirmation`. Its `MessageId` is recorded only once the subscription is
/// confirmed: a confirmation that failed is tried again when SNS delivers the message again
/// (it retries a delivery answered 5xx), and one that succeeded is not fetched again.
async fn subscribe(state: &SnsState, msg: &SnsMessage, url: &Url) -> Result<Reply, Reply> {
    let topic = &msg.topic_arn;
    if !state.engine.config().confirmable_topics().contains(topic) {
        tracing::warn!(%topic, message = %msg.message_id, "SNS subscription confirmation refused: not an alarm or stack-events topic");
        return Err(Reply::forbidden(
            "the controller confirms subscriptions to alarm topics and stack-events topics only",
        ));
    }
    let delivery = message_delivery(msg);
    let seen = state
        .engine
        .reads()
        .delivery_seen(&delivery.source, &delivery.id)
        .await
        .map_err(Reply::store_failed)?;
    if seen {
        return Ok(duplicate(msg));
    }
    match state.confirmer.confirm(url).await {
        Ok(()) => {
            // Two deliveries of the message at once may both have confirmed (harmless): one
            // records and logs it.
            if !first_delivery(state, msg).await? {
                return Ok(duplicate(msg));
            }
            tracing::info!(%topic, message = %msg.message_id, "SNS subscription confirmed");
            let detail = format!("subscription to {topic} confirmed");
            log_for_topic(state, msg, &detail).await?;
            Ok(Reply::new(StatusCode::OK, "confirmed", detail))
        }
        Err(e) => {
            tracing::warn!(%topic, message = %msg.message_id, error = %e, "SNS subscription confirmation failed");
            let detail = format!(
                "confirming the subscription to {topic} failed: {e}; tried again when SNS delivers the confirmation again"
            );
            log_for_topic(state, msg, &detail).await?;
            Err(Reply::new(
                StatusCode::BAD_GATEWAY,
                "confirm-failed",
                detail,
            ))
        }
    }
}

async fn unsubscribed(state: &SnsState, msg: &SnsMessage) -> Result<Reply, Reply> {
    let topic = &msg.topic_arn;
    tracing::info!(%topic, message = %msg.message_id, "SNS subscription deactivated");
    let detail = format!("SNS reports a subscription to {topic} was deactivated");
    log_for_topic(state, msg, &detail).await?;
    Ok(Reply::new(StatusCode::OK, "logged", detail))
}

//! SNS message parsing and signature verification (SignatureVersion 1 and 2).
//!
//! Owns everything between the raw body of `POST /webhooks/sns` and a message we can trust:
//! parsing ([`SnsMessage::parse`]), the string SNS signs ([`string_to_sign`]), pinning
//! `SigningCertURL` and `SubscribeURL` to `sns.<region>.amazonaws.com[.cn]`
//! ([`check_cert_url`], [`check_subscribe_url`]), the signing-certificate cache ([`CertCache`])
//! and the CloudWatch alarm payload carried in a notification ([`parse_alarm`]). It changes no
//! state and never decides what a message means; the route does that after [`verify`].
//!
//! # Guarantees
//! - [`verify`] succeeds only for a `SHA1withRSA` (version `"1"`) or `SHA256withRSA` (version
//!   `"2"`) signature, over exactly the fields AWS documents for the message's `Type`, made by the
//!   key of a certificate that is valid at that moment and that came from a pinned HTTPS URL (or
//!   from the operator's pre-seeded directory, under that URL's name).
//! - [`verify_delivery`] also refuses a message whose `Timestamp` is older than the accepted
//!   age or too far in the future ([`check_fresh`]), before any certificate is looked up.
//! - [`CertCache`] fetches at most a set number of certificates per minute and does not fetch
//!   again, within a TTL, a URL whose fetch failed.
//! - There is no switch that turns verification off. Tests and the demo supply certificates only
//!   by pre-seeding the directory ([`cache_file_name`] is the naming rule).
//! - Error messages say what was wrong and quote at most a short, escaped excerpt of the input.
//!
//! # Assumptions
//! - The pre-seeded directory is as trusted as the binary: whoever can write to it can sign.
//! - TLS with the web PKI roots authenticates the SNS host when a certificate is fetched.
//!
//! # Caveats
//! - SNS does not sign `MessageAttributes`, `UnsubscribeURL`, `SigningCertURL` (pinned instead)
//!   or a confirmation's `Subject`: never authorise anything on them.
//! - Anyone allowed to `sns:Publish` to a topic can send a message that verifies. A verified
//!   alarm proves the topic, not CloudWatch: check `TopicArn` against the allow-list and match
//!   the alarm against the configured alarms.
//! - A genuine message replayed verifies again: deduplicate on `MessageId`.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use rsa::RsaPublicKey;
use rsa::pkcs1v15::{Signature, VerifyingKey};
use rsa::pkcs8::DecodePublicKey;
use rsa::signature::Verifier;
use serde::{Deserialize, Serialize};
use sha1::Sha1;
use sha2::{Digest, Sha256};
use url::Url;
use x509_cert::Certificate;
use x509_cert::der::{DecodePem, Encode};

/// The largest signing certificate we read, fetched or seeded (real ones are about 2 KiB).
pub const MAX_CERT_BYTES: usize = 16 * 1024;
/// Time allowed for one certificate fetch, connection included.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Certificates kept in memory; SNS uses a handful, so the map is simply cleared when full.
const MAX_MEMORY_CERTS: usize = 64;
/// Failed certificate URLs remembered; the map is cleared when full.
const MAX_REMEMBERED_FAILURES: usize = 1024;
/// Characters of untrusted input an error message may quote.
const EXCERPT_CHARS: usize = 40;
const JSON_ERROR_CHARS: usize = 160;
const CERT_PATH_PREFIX: &str = "/SimpleNotificationService-";

/// Why an SNS delivery (or the alarm inside it) was refused.
#[derive(Debug, thiserror::Error)]
pub enum SnsVerifyError {
    #[error("body is not an SNS message: {0}")]
    BadJson(String),
    #[error("unknown SNS message Type {0:?}")]
    UnknownType(String),
    #[error("SNS message has no {0}, which its Type requires")]
    MissingField(&'static str),
    #[error("unsupported SignatureVersion {0:?} (only \"1\" and \"2\" exist)")]
    UnsupportedVersion(String),
    #[error("SigningCertURL rejected: {0}")]
    BadCertUrl(&'static str),
    #[error("SubscribeURL rejected: {0}")]
    BadSubscribeUrl(&'static str),
    #[error("signing certificate could not be obtained: {0}")]
    CertFetch(String),
    #[error("signing certificate is unusable: {0}")]
    BadCert(String),
    #[error("signing certificate has expired")]
    CertExpired,
    #[error("signing certificate is not valid yet")]
    CertNotYetValid,
    #[error("Signature is not valid base64")]
    BadSignatureEncoding,
    #[error("signature does not match the message")]
    BadSignature,
    #[error("Message is not a CloudWatch alarm notification: {0}")]
    BadAlarm(String),
    #[error("Timestamp is not an RFC 3339 time")]
    BadTimestamp,
    #[error("message is stale: its Timestamp is {age} old, more than the {limit} accepted")]
    Stale { age: String, limit: String },
    #[error(
        "message Timestamp is {ahead} in the future, more than the {limit} of clock skew accepted"
    )]
    FromTheFuture { ahead: String, limit: String },
    #[error(
        "SignatureVersion 1 (SHA1withRSA) is refused: this controller requires SignatureVersion 2"
    )]
    VersionRefused,
}

type Result<T, E = SnsVerifyError> = std::result::Result<T, E>;

fn excerpt(text: &str, max_chars: usize) -> String {
    text.chars().take(max_chars).collect()
}

/// The `Type` of an SNS HTTP(S) delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SnsType {
    Notification,
    SubscriptionConfirmation,
    UnsubscribeConfirmation,
}

impl SnsType {
    /// The wire name, as it appears in `Type` and in the signed string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Notification => "Notification",
            Self::SubscriptionConfirmation => "SubscriptionConfirmation",
            Self::UnsubscribeConfirmation => "UnsubscribeConfirmation",
        }
    }
}

impl FromStr for SnsType {
    type Err = SnsVerifyError;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "Notification" => Ok(Self::Notification),
            "SubscriptionConfirmation" => Ok(Self::SubscriptionConfirmation),
            "UnsubscribeConfirmation" => Ok(Self::UnsubscribeConfirmation),
            other => Err(SnsVerifyError::UnknownType(excerpt(other, EXCERPT_CHARS))),
        }
    }
}

impl fmt::Display for SnsType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `SignatureVersion`: `"1"` is `SHA1withRSA`, `"2"` is `SHA256withRSA` (PKCS#1 v1.5 both).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SignatureVersion {
    V1,
    V2,
}

impl SignatureVersion {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::V1 => "1",
            Self::V2 => "2",
        }
    }
}

impl FromStr for SignatureVersion {
    type Err = SnsVerifyError;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "1" => Ok(Self::V1),
            "2" => Ok(Self::V2),
            other => Err(SnsVerifyError::UnsupportedVersion(excerpt(
                other,
                EXCERPT_CHARS,
            ))),
        }
    }
}

/// One entry of `MessageAttributes` (not covered by the signature).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnsMessageAttribute {
    #[serde(rename = "Type")]
    pub data_type: String,
    #[serde(rename = "Value")]
    pub value: String,
}

/// An SNS HTTP(S) delivery as parsed from the POST body; nothing in it is trusted before
/// [`verify`] succeeds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnsMessage {
    pub message_type: SnsType,
    pub message_id: String,
    pub topic_arn: String,
    pub subject: Option<String>,
    pub message: String,
    pub timestamp: String,
    pub token: Option<String>,
    pub subscribe_url: Option<String>,
    pub unsubscribe_url: Option<String>,
    pub signature_version: String,
    pub signature: String,
    pub signing_cert_url: String,
    pub message_attributes: BTreeMap<String, SnsMessageAttribute>,
}

/// The body's JSON as SNS writes it; a repeated key is an error (serde rejects duplicates).
#[derive(Deserialize)]
struct WireMessage {
    #[serde(rename = "Type")]
    message_type: String,
    #[serde(rename = "MessageId")]
    message_id: String,
    #[serde(rename = "TopicArn")]
    topic_arn: String,
    #[serde(rename = "Subject")]
    subject: Option<String>,
    #[serde(rename = "Message")]
    message: String,
    #[serde(rename = "Timestamp")]
    timestamp: String,
    #[serde(rename = "Token")]
    token: Option<String>,
    #[serde(rename = "SubscribeURL")]
    subscribe_url: Option<String>,
    #[serde(rename = "UnsubscribeURL")]
    unsubscribe_url: Option<String>,
    #[serde(rename = "SignatureVersion")]
    signature_version: String,
    #[serde(rename = "Signature")]
    signature: String,
    #[serde(rename = "SigningCertURL")]
    signing_cert_url: String,
    #[serde(rename = "MessageAttributes", default)]
    message_attributes: BTreeMap<String, SnsMessageAttribute>,
}

impl SnsMessage {
    /// Parses a POST body. An unknown `Type` is [`SnsVerifyError::UnknownType`]; anything
    /// else malformed (missing field, wrong type, repeated key) is [`SnsVerifyError::BadJson`].
    pub fn parse(body: &[u8]) -> Result<Self> {
        let wire: WireMessage = serde_json::from_slice(body)
            .map_err(|e| SnsVerifyError::BadJson(excerpt(&e.to_string(), JSON_ERROR_CHARS)))?;
        Ok(Self {
            message_type: wire.message_type.parse()?,
            message_id: wire.message_id,
            topic_arn: wire.topic_arn,
            subject: wire.subject,
            message: wire.message,
            timestamp: wire.timestamp,
            token: wire.token,
            subscribe_url: wire.subscribe_url,
            unsubscribe_url: wire.unsubscribe_url,
            signature_version: wire.signature_version,
            signature: wire.signature,
            signing_cert_url: wire.signing_cert_url,
            message_attributes: wire.message_attributes,
        })
    }

    /// The region of `TopicArn` (`arn:<partition>:sns:<region>:<account>:<name>`).
    pub fn topic_region(&self) -> Option<&str> {
        topic_region(&self.topic_arn)
    }
}

/// The region of an SNS topic ARN, if it is one.
pub fn topic_region(topic_arn: &str) -> Option<&str> {
    let parts: Vec<&str> = topic_arn.splitn(6, ':').collect();
    match parts.as_slice() {
        ["arn", _, "sns", region, _, _] if is_region(region) => Some(region),
        _ => None,
    }
}

/// The fields SNS signs, in the documented order, for this message's `Type`.
pub fn signed_fields(msg: &SnsMessage) -> Result<Vec<(&'static str, &str)>> {
    let mut fields = vec![("Message", msg.message.as_str())];
    fields.push(("MessageId", &msg.message_id));
    if msg.message_type == SnsType::Notification {
        if let Some(subject) = &msg.subject {
            fields.push(("Subject", subject));
        }
        fields.push(("Timestamp", &msg.timestamp));
    } else {
        fields.push((
            "SubscribeURL",
            required(&msg.subscribe_url, "SubscribeURL")?,
        ));
        fields.push(("Timestamp", &msg.timestamp));
        fields.push(("Token", required(&msg.token, "Token")?));
    }
    fields.push(("TopicArn", &msg.topic_arn));
    fields.push(("Type", msg.message_type.as_str()));
    Ok(fields)
}

fn required<'a>(value: &'a Option<String>, name: &'static str) -> Result<&'a str> {
    value.as_deref().ok_or(SnsVerifyError::MissingField(name))
}

/// The string SNS signs: each signed field as `Name\nvalue\n`, in [`signed_fields`] order.
pub fn string_to_sign(msg: &SnsMessage) -> Result<String> {
    let mut out = String::with_capacity(msg.message.len() + 512);
    for (name, value) in signed_fields(msg)? {
        out.push_str(name);
        out.push('\n');
        out.push_str(value);
        out.push('\n');
    }
    Ok(out)
}

/// `us-east-1`, `cn-north-1`, `us-gov-west-1`: two letters, words, then a number.
fn is_region(region: &str) -> bool {
    let parts: Vec<&str> = region.split('-').collect();
    let Some((number, words)) = parts.split_last() else {
        return false;
    };
    let lower = |w: &&str| !w.is_empty() && w.bytes().all(|b| b.is_ascii_lowercase());
    parts.len() >= 3
        && words[0].len() == 2
        && words.iter().all(lower)
        && (1..=2).contains(&number.len())
        && number.bytes().all(|b| b.is_ascii_digit())
}

/// The region named by an SNS host, `sns.<region>.amazonaws.com` or `….amazonaws.com.cn`.
fn sns_host_region(host: &str) -> Option<&str> {
    let rest = host.strip_prefix("sns.")?;
    let region = rest
        .strip_suffix(".amazonaws.com")
        .or_else(|| rest.strip_suffix(".amazonaws.com.cn"))?;
    is_region(region).then_some(region)
}

/// Checks shared by both kinds of SNS URL; returns the URL and the region of its host.
fn parse_sns_url(raw: &str) -> Result<(Url, String), &'static str> {
    let url = Url::parse(raw).map_err(|_| "not a URL")?;
    if url.scheme() != "https" {
        return Err("scheme is not https");
    }
    if url.as_str() != raw {
        return Err("URL is not in canonical form");
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("userinfo is not allowed");
    }
    if url.port().is_some() {
        return Err("an explicit port is not allowed");
    }
    if url.fragment().is_some() {
        return Err("a fragment is not allowed");
    }
    let region = url.host_str().and_then(sns_host_region);
    let region = region.ok_or("host is not sns.<region>.amazonaws.com[.cn]")?;
    let region = region.to_owned();
    Ok((url, region))
}

/// Pins `SigningCertURL`: `https://sns.<region>.amazonaws.com[.cn]/SimpleNotificationService-<hex>.pem`,
/// canonical, with no userinfo, port, query or fragment.
pub fn check_cert_url(raw: &str) -> Result<Url> {
    let (url, _) = parse_sns_url(raw).map_err(SnsVerifyError::BadCertUrl)?;
    if url.query().is_some() {
        return Err(SnsVerifyError::BadCertUrl("a query string is not allowed"));
    }
    if !is_cert_path(url.path()) {
        return Err(SnsVerifyError::BadCertUrl(
            "path is not /SimpleNotificationService-<hex>.pem",
        ));
    }
    Ok(url)
}

fn is_cert_path(path: &str) -> bool {
    let id = path
        .strip_prefix(CERT_PATH_PREFIX)
        .and_then(|rest| rest.strip_suffix(".pem"));
    id.is_some_and(|id| (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Pins a `SubscribeURL` before it is fetched: `https://sns.<region>.amazonaws.com[.cn]/?Action=ConfirmSubscription…`
/// on the given region (the topic's), canonical, with no userinfo, port or fragment.
pub fn check_subscribe_url(raw: &str, region: &str) -> Result<Url> {
    let (url, host_region) = parse_sns_url(raw).map_err(SnsVerifyError::BadSubscribeUrl)?;
    if host_region != region {
        return Err(SnsVerifyError::BadSubscribeUrl(
            "host is not in the topic's region",
        ));
    }
    if url.path() != "/" {
        return Err(SnsVerifyError::BadSubscribeUrl("path is not /"));
    }
    if query_values(&url, "Action") != ["ConfirmSubscription"] {
        return Err(SnsVerifyError::BadSubscribeUrl(
            "Action is not ConfirmSubscription",
        ));
    }
    Ok(url)
}

fn query_values(url: &Url, name: &str) -> Vec<String> {
    let pairs = url.query_pairs().filter(|(key, _)| key == name);
    pairs.map(|(_, value)| value.into_owned()).collect()
}

/// The URL that confirms a (verified) `SubscriptionConfirmation`: its `SubscribeURL`, pinned
/// to the topic's region and naming the message's own `TopicArn`.
pub fn confirmation_url(msg: &SnsMessage) -> Result<Url> {
    if msg.message_type != SnsType::SubscriptionConfirmation {
        return Err(SnsVerifyError::BadSubscribeUrl(
            "message is not a SubscriptionConfirmation",
        ));
    }
    let raw = required(&msg.subscribe_url, "SubscribeURL")?;
    let region = msg.topic_region();
    let region = region.ok_or(SnsVerifyError::BadSubscribeUrl(
        "TopicArn is not an SNS topic ARN",
    ))?;
    let url = check_subscribe_url(raw, region)?;
    if query_values(&url, "TopicArn") != [msg.topic_arn.as_str()] {
        return Err(SnsVerifyError::BadSubscribeUrl(
            "TopicArn differs from the message's",
        ));
    }
    Ok(url)
}

/// File name of a pre-seeded certificate: lowercase hex SHA-256 of the URL string, plus `.pem`.
pub fn cache_file_name(url: &Url) -> String {
    let digest = Sha256::digest(url.as_str().as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("{hex}.pem")
}

/// A client fit for fetching certificates: HTTPS only, no redirects, bounded time. Tests may
/// add to it (e.g. `resolve` to a loopback port) and pass it to [`CertCache::with_client`].
pub fn fetch_client_builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .https_only(true)
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(FETCH_TIMEOUT)
        .user_agent(concat!("tollgate/", env!("CARGO_PKG_VERSION")))
}

/// The key and validity period of one signing certificate.
struct SigningCert {
    v1: VerifyingKey<Sha1>,
    v2: VerifyingKey<Sha256>,
    not_before: SystemTime,
    not_after: SystemTime,
}

impl SigningCert {
    fn from_pem(pem: &[u8]) -> Result<Self> {
        let bad = |what: &str| SnsVerifyError::BadCert(what.to_owned());
        let cert = Certificate::from_pem(pem).map_err(|_| bad("not a PEM X.509 certificate"))?;
        let tbs = &cert.tbs_certificate;
        let spki = tbs.subject_public_key_info.to_der();
        let spki = spki.map_err(|_| bad("public key cannot be encoded"))?;
        let key = RsaPublicKey::from_public_key_der(&spki).map_err(|_| bad("key is not RSA"))?;
        Ok(Self {
            v1: VerifyingKey::new(key.clone()),
            v2: VerifyingKey::new(key),
            not_before: tbs.validity.not_before.to_system_time(),
            not_after: tbs.validity.not_after.to_system_time(),
        })
    }

    fn check_validity(&self, now: SystemTime) -> Result<()> {
        if now < self.not_before {
            Err(SnsVerifyError::CertNotYetValid)
        } else if now > self.not_after {
            Err(SnsVerifyError::CertExpired)
        } else {
            Ok(())
        }
    }

    fn verify(&self, version: SignatureVersion, data: &[u8], signature: &[u8]) -> Result<()> {
        let signature = Signature::try_from(signature).map_err(|_| SnsVerifyError::BadSignature)?;
        let outcome = match version {
            SignatureVersion::V1 => self.v1.verify(data, &signature),
            SignatureVersion::V2 => self.v2.verify(data, &signature),
        };
        outcome.map_err(|_| SnsVerifyError::BadSignature)
    }
}

/// Signing certificates by URL: memory, then the pre-seeded directory (if any), then HTTPS.
pub struct CertCache {
    memory: Mutex<HashMap<String, Arc<SigningCert>>>,
    /// URLs whose fetch failed, and when: not fetched again before [`CertCache::failure_ttl`].
    failures: Mutex<HashMap<String, Instant>>,
    failure_ttl: Duration,
    /// Fetches allowed per minute, all URLs together.
    fetches: DirectRateLimiter,
    seed_dir: Option<PathBuf>,
    client: reqwest::Client,
}

type DirectRateLimiter = governor::DefaultDirectRateLimiter;

/// How long a failed certificate fetch is remembered (see [`CertCache::with_limits`]): less
/// than the 20 s SNS waits between retries of an HTTP delivery by default ("Amazon SNS
/// message delivery retries", default delivery policy: 3 retries 20 s apart), so each retry
/// of an alarm whose certificate fetch failed once fetches again instead of being refused
/// until SNS gives up. The fetch budget per minute is what bounds fetches.
pub const DEFAULT_FAILURE_TTL: Duration = Duration::from_secs(10);
/// Certificate fetches per minute (see [`CertCache::with_limits`]).
pub const DEFAULT_FETCHES_PER_MINUTE: u32 = 10;

impl fmt::Debug for CertCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertCache")
            .field("cached", &self.lock().len())
            .field("seed_dir", &self.seed_dir)
            .finish_non_exhaustive()
    }
}

impl CertCache {
    /// A cache that fetches with [`fetch_client_builder`]'s client.
    pub fn new(seed_dir: Option<PathBuf>) -> Result<Self> {
        let client = fetch_client_builder().build();
        let client = client.map_err(|_| SnsVerifyError::CertFetch("HTTP client setup".into()))?;
        Ok(Self::with_client(seed_dir, client))
    }

    /// A cache that fetches with `client`; build it from [`fetch_client_builder`].
    pub fn with_client(seed_dir: Option<PathBuf>, client: reqwest::Client) -> Self {
        Self {
            memory: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            failure_ttl: DEFAULT_FAILURE_TTL,
            fetches: fetch_limiter(DEFAULT_FETCHES_PER_MINUTE),
            seed_dir,
            client,
        }
    }

    /// Remembers a failed fetch for `failure_ttl` (the URL is not fetched again before then)
    /// and allows at most `fetches_per_minute` fetches, all URLs together: an unauthenticated
    /// sender cannot make the controller fetch certificates in a loop.
    pub fn with_limits(mut self, failure_ttl: Duration, fetches_per_minute: u32) -> Self {
        self.failure_ttl = failure_ttl;
        self.fetches = fetch_limiter(fetches_per_minute);
        self
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Arc<SigningCert>>> {
        self.memory
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn failed(&self) -> MutexGuard<'_, HashMap<String, Instant>> {
        self.failures
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The certificate at a URL that [`check_cert_url`] accepted.
    async fn get(&self, url: &Url) -> Result<Arc<SigningCert>> {
        if let Some(cert) = self.lock().get(url.as_str()) {
            return Ok(Arc::clone(cert));
        }
        let pem = match self.read_seeded(url).await? {
            Some(pem) => pem,
            None => self.fetch_bounded(url).await?,
        };
        let cert = Arc::new(SigningCert::from_pem(&pem)?);
        let mut memory = self.lock();
        if memory.len() >= MAX_MEMORY_CERTS {
            memory.clear();
        }
        memory.insert(url.as_str().to_owned(), Arc::clone(&cert));
        Ok(cert)
    }

    async fn read_seeded(&self, url: &Url) -> Result<Option<Vec<u8>>> {
        let Some(dir) = &self.seed_dir else {
            return Ok(None);
        };
        match tokio::fs::read(dir.join(cache_file_name(url))).await {
            Ok(pem) if pem.len() > MAX_CERT_BYTES => Err(too_large()),
            Ok(pem) => Ok(Some(pem)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(SnsVerifyError::CertFetch(format!(
                "seeded file: {}",
                e.kind()
            ))),
        }
    }

    /// Fetches unless the URL failed within the TTL or the per-minute budget is spent; a
    /// failure (fetch or parse) is remembered.
    async fn fetch_bounded(&self, url: &Url) -> Result<Vec<u8>> {
        self.check_recent_failure(url)?;
        if self.fetches.check().is_err() {
            return Err(SnsVerifyError::CertFetch(
                "too many certificate fetches in the last minute".into(),
            ));
        }
        let fetched = self.fetch(url).await;
        let fetched = fetched.and_then(|pem| SigningCert::from_pem(&pem).map(|_| pem));
        if fetched.is_err() {
            self.remember_failure(url);
        }
        fetched
    }

    fn check_recent_failure(&self, url: &Url) -> Result<()> {
        let mut failed = self.failed();
        let ttl = self.failure_ttl;
        failed.retain(|_, at| at.elapsed() < ttl);
        if failed.contains_key(url.as_str()) {
            return Err(SnsVerifyError::CertFetch(format!(
                "it failed less than {} ago and is not fetched again before then",
                crate::config::values::format_duration(ttl)
            )));
        }
        Ok(())
    }

    fn remember_failure(&self, url: &Url) {
        let mut failed = self.failed();
        if failed.len() >= MAX_REMEMBERED_FAILURES {
            failed.clear();
        }
        failed.insert(url.as_str().to_owned(), Instant::now());
    }

    async fn fetch(&self, url: &Url) -> Result<Vec<u8>> {
        let response = self.client.get(url.clone()).send().await;
        let response = response.map_err(fetch_error)?;
        let status = response.status();
        if !status.is_success() {
            return Err(SnsVerifyError::CertFetch(format!(
                "HTTP status {}",
                status.as_u16()
            )));
        }
        read_capped(response, MAX_CERT_BYTES).await
    }
}

fn fetch_limiter(per_minute: u32) -> DirectRateLimiter {
    let per_minute = NonZeroU32::new(per_minute).unwrap_or(NonZeroU32::MIN);
    governor::RateLimiter::direct(governor::Quota::per_minute(per_minute))
}

fn too_large() -> SnsVerifyError {
    SnsVerifyError::CertFetch(format!("larger than {MAX_CERT_BYTES} bytes"))
}

fn fetch_error(e: reqwest::Error) -> SnsVerifyError {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else if e.is_builder() {
        "request refused by the client"
    } else {
        "request failed"
    };
    SnsVerifyError::CertFetch(what.to_owned())
}

/// Reads a response body, refusing more than `cap` bytes.
async fn read_capped(mut response: reqwest::Response, cap: usize) -> Result<Vec<u8>> {
    if response.content_length().is_some_and(|n| n > cap as u64) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(fetch_error)? {
        if body.len() + chunk.len() > cap {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Verifies a delivery as of `now`: version, certificate URL, signature encoding and signed
/// fields are checked before any certificate is looked up, then the certificate's validity
/// period and the signature.
pub async fn verify_at(msg: &SnsMessage, cache: &CertCache, now: SystemTime) -> Result<()> {
    let version: SignatureVersion = msg.signature_version.parse()?;
    let url = check_cert_url(&msg.signing_cert_url)?;
    let signature = BASE64.decode(msg.signature.as_bytes());
    let signature = signature.map_err(|_| SnsVerifyError::BadSignatureEncoding)?;
    let signed = string_to_sign(msg)?;
    let cert = cache.get(&url).await?;
    cert.check_validity(now)?;
    cert.verify(version, signed.as_bytes(), &signature)
}

/// What [`verify_delivery`] accepts beyond a valid signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Freshness {
    /// A `Timestamp` older than this is stale.
    pub max_age: Duration,
    /// A `Timestamp` at most this far ahead of `now` is accepted (clock skew).
    pub skew: Duration,
    /// SignatureVersion 1 is refused.
    pub require_v2: bool,
}

impl From<&crate::config::SnsSettings> for Freshness {
    fn from(s: &crate::config::SnsSettings) -> Self {
        Freshness {
            max_age: s.max_message_age,
            skew: s.clock_skew,
            require_v2: s.require_signature_v2,
        }
    }
}

/// Refuses a message whose `Timestamp` is older than `max_age` or further than `skew` ahead
/// of `now`, or (with `require_v2`) signed with SignatureVersion 1. Checked before any
/// certificate is looked up; a message that passes must still pass [`verify_at`].
pub fn check_fresh(
    msg: &SnsMessage,
    now: chrono::DateTime<chrono::Utc>,
    rules: &Freshness,
) -> Result<()> {
    if rules.require_v2
        && msg.signature_version.parse::<SignatureVersion>()? == SignatureVersion::V1
    {
        return Err(SnsVerifyError::VersionRefused);
    }
    let sent = chrono::DateTime::parse_from_rfc3339(&msg.timestamp)
        .map_err(|_| SnsVerifyError::BadTimestamp)?
        .with_timezone(&chrono::Utc);
    let human = |d: Duration| crate::config::values::format_duration(d);
    let age = (now - sent).to_std();
    let ahead = (sent - now).to_std();
    match (age, ahead) {
        (Ok(age), _) if age > rules.max_age => Err(SnsVerifyError::Stale {
            age: human(Duration::from_secs(age.as_secs())),
            limit: human(rules.max_age),
        }),
        (_, Ok(ahead)) if ahead > rules.skew => Err(SnsVerifyError::FromTheFuture {
            ahead: human(Duration::from_secs(ahead.as_secs())),
            limit: human(rules.skew),
        }),
        _ => Ok(()),
    }
}

/// [`check_fresh`], then [`verify_at`], both as of `now` (the controller's clock).
pub async fn verify_delivery(
    msg: &SnsMessage,
    cache: &CertCache,
    now: chrono::DateTime<chrono::Utc>,
    rules: &Freshness,
) -> Result<()> {
    check_fresh(msg, now, rules)?;
    verify_at(msg, cache, SystemTime::from(now)).await
}

/// A CloudWatch alarm state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AlarmState {
    Ok,
    Alarm,
    InsufficientData,
}

impl AlarmState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "OK",
            Self::Alarm => "ALARM",
            Self::InsufficientData => "INSUFFICIENT_DATA",
        }
    }
}

/// One metric dimension of an alarm's trigger (CloudWatch writes these keys in lower case).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlarmDimension {
    pub name: String,
    pub value: String,
}

/// What a metric alarm watches; absent for composite alarms, partial for metric-math alarms.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct AlarmTrigger {
    pub metric_name: Option<String>,
    pub namespace: Option<String>,
    pub statistic: Option<String>,
    pub unit: Option<String>,
    pub dimensions: Vec<AlarmDimension>,
    pub period: Option<u64>,
    pub evaluation_periods: Option<u64>,
    pub comparison_operator: Option<String>,
    pub threshold: Option<f64>,
}

/// The JSON CloudWatch publishes as an SNS notification's `Message` when an alarm changes state.
/// `region` is CloudWatch's display name (`"US East (N. Virginia)"`); see
/// [`AlarmNotification::region_code`].
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AlarmNotification {
    pub alarm_name: String,
    #[serde(default)]
    pub alarm_description: Option<String>,
    #[serde(rename = "AWSAccountId")]
    pub aws_account_id: String,
    pub alarm_arn: String,
    pub region: String,
    pub new_state_value: AlarmState,
    pub old_state_value: AlarmState,
    pub new_state_reason: String,
    pub state_change_time: String,
    #[serde(default)]
    pub trigger: Option<AlarmTrigger>,
}

impl AlarmNotification {
    /// The region code from `AlarmArn` (`arn:<partition>:cloudwatch:<region>:<account>:alarm:<name>`).
    pub fn region_code(&self) -> &str {
        self.alarm_arn.split(':').nth(3).unwrap_or_default()
    }

    /// `StateChangeTime` (`2024-07-05T15:20:44.959+0000`) as UTC, if it parses.
    pub fn state_changed_at(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        let time =
            chrono::DateTime::parse_from_str(&self.state_change_time, "%Y-%m-%dT%H:%M:%S%.f%z");
        time.ok().map(|t| t.with_timezone(&chrono::Utc))
    }

    /// `AlarmArn` must be a CloudWatch alarm ARN naming the same account and alarm.
    fn check_arn(&self) -> Result<()> {
        let parts: Vec<&str> = self.alarm_arn.splitn(7, ':').collect();
        let consistent = match parts.as_slice() {
            ["arn", _, "cloudwatch", region, account, "alarm", name] => {
                is_region(region) && *account == self.aws_account_id && *name == self.alarm_name
            }
            _ => false,
        };
        let account_ok = self.aws_account_id.len() == 12
            && self.aws_account_id.bytes().all(|b| b.is_ascii_digit());
        if consistent && account_ok {
            Ok(())
        } else {
            Err(SnsVerifyError::BadAlarm(
                "AlarmArn does not match AlarmName and AWSAccountId".into(),
            ))
        }
    }
}

/// Parses the `Message` of a verified notification as a CloudWatch alarm state change.
pub fn parse_alarm(message: &str) -> Result<AlarmNotification> {
    let alarm: AlarmNotification = serde_json::from_str(message)
        .map_err(|e| SnsVerifyError::BadAlarm(excerpt(&e.to_string(), JSON_ERROR_CHARS)))?;
    alarm.check_arn()?;
    Ok(alarm)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CERT: &str = "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-9c6465fa7f48f5cacd23014631ec1136.pem";

    #[test]
    fn accepts_documented_cert_hosts() {
        for url in [
            CERT,
            "https://sns.cn-north-1.amazonaws.com.cn/SimpleNotificationService-abc123.pem",
            "https://sns.us-gov-west-1.amazonaws.com/SimpleNotificationService-ABC123.pem",
        ] {
            assert!(check_cert_url(url).is_ok(), "{url}");
        }
    }

    #[test]
    fn rejects_cert_urls_off_the_sns_host() {
        let pem = "/SimpleNotificationService-abc.pem";
        for (url, why) in [
            (format!("http://sns.us-east-1.amazonaws.com{pem}"), "scheme"),
            (format!("https://sns.evil.com{pem}"), "host"),
            (
                format!("https://sns.us-east-1.amazonaws.com.evil.com{pem}"),
                "host",
            ),
            (format!("https://s3.amazonaws.com/bucket{pem}"), "host"),
            (
                format!("https://sns.us-east-1.amazonaws.com.s3.amazonaws.com{pem}"),
                "host",
            ),
            (
                format!("https://x.sns.us-east-1.amazonaws.com{pem}"),
                "host",
            ),
            (format!("https://sns.amazonaws.com{pem}"), "host"),
            (format!("https://sns.127.0.0.1.amazonaws.com{pem}"), "host"),
            (
                format!("https://user@sns.us-east-1.amazonaws.com{pem}"),
                "userinfo",
            ),
            (
                format!("https://sns.us-east-1.amazonaws.com:8443{pem}"),
                "port",
            ),
            (
                format!("https://sns.us-east-1.amazonaws.com:443{pem}"),
                "canonical",
            ),
            (
                format!("HTTPS://SNS.US-EAST-1.AMAZONAWS.COM{pem}"),
                "canonical",
            ),
            (
                format!(" https://sns.us-east-1.amazonaws.com{pem}"),
                "canonical",
            ),
            (
                format!("https://sns.us-east-1.amazonaws.com{pem}#x"),
                "fragment",
            ),
        ] {
            let err = check_cert_url(&url).unwrap_err();
            assert!(err.to_string().contains(why), "{url}: {err}");
        }
    }

    #[test]
    fn rejects_cert_paths_other_than_the_pem() {
        let host = "https://sns.us-east-1.amazonaws.com";
        for path in [
            "/?x=SimpleNotificationService-abc.pem",
            "/SimpleNotificationService-abc.pem?x=1",
            "/SimpleNotificationService-abc.pem.txt",
            "/SimpleNotificationService-.pem",
            "/SimpleNotificationService-xyz.pem",
            "/a/SimpleNotificationService-abc.pem",
            "/SimpleNotificationService-abc%2e.pem",
        ] {
            let url = format!("{host}{path}");
            assert!(
                matches!(check_cert_url(&url), Err(SnsVerifyError::BadCertUrl(_))),
                "{url}"
            );
        }
    }

    #[test]
    fn region_names() {
        for ok in [
            "us-east-1",
            "cn-northwest-1",
            "us-gov-west-1",
            "ap-southeast-2",
        ] {
            assert!(is_region(ok), "{ok}");
        }
        for bad in [
            "",
            "us",
            "us-east",
            "useast-1",
            "us-East-1",
            "us-east-123",
            "us--1",
            "1-a-1",
        ] {
            assert!(!is_region(bad), "{bad}");
        }
    }

    #[test]
    fn subscribe_url_is_pinned_to_the_region() {
        let good = "https://sns.us-west-2.amazonaws.com/?Action=ConfirmSubscription&TopicArn=arn:aws:sns:us-west-2:123456789012:MyTopic&Token=2336412f37";
        assert!(check_subscribe_url(good, "us-west-2").is_ok());
        assert!(check_subscribe_url(good, "us-east-1").is_err());
        for bad in [
            "http://sns.us-west-2.amazonaws.com/?Action=ConfirmSubscription",
            "https://sns.us-west-2.amazonaws.com.evil.com/?Action=ConfirmSubscription",
            "https://sns.us-west-2.amazonaws.com/x?Action=ConfirmSubscription",
            "https://sns.us-west-2.amazonaws.com/?Action=Unsubscribe",
            "https://sns.us-west-2.amazonaws.com/?Action=ConfirmSubscription&Action=Unsubscribe",
            "https://sns.us-west-2.amazonaws.com:444/?Action=ConfirmSubscription",
        ] {
            assert!(check_subscribe_url(bad, "us-west-2").is_err(), "{bad}");
        }
    }

    #[test]
    fn cache_file_name_is_sha256_of_the_url() {
        let url = Url::parse("https://sns.us-east-1.amazonaws.com/SimpleNotificationService-a.pem");
        assert_eq!(
            cache_file_name(&url.unwrap()),
            "600d09ac9acd70643373444c3706542273480969387a2e1f828d932e91119e45.pem"
        );
    }

    #[tokio::test]
    async fn oversized_certificate_bodies_are_refused() {
        let big = axum::http::Response::new(vec![b'A'; MAX_CERT_BYTES + 1]);
        let err = read_capped(reqwest::Response::from(big), MAX_CERT_BYTES).await;
        assert!(matches!(err, Err(SnsVerifyError::CertFetch(_))));
        let small = axum::http::Response::new(vec![b'A'; 10]);
        let body = read_capped(reqwest::Response::from(small), MAX_CERT_BYTES).await;
        assert_eq!(body.unwrap().len(), 10);
    }

    fn message_at(timestamp: &str, version: &str) -> SnsMessage {
        SnsMessage {
            message_type: SnsType::Notification,
            message_id: "m-1".into(),
            topic_arn: "arn:aws:sns:us-east-1:123456789012:t".into(),
            subject: None,
            message: "hello".into(),
            timestamp: timestamp.into(),
            token: None,
            subscribe_url: None,
            unsubscribe_url: None,
            signature_version: version.into(),
            signature: String::new(),
            signing_cert_url: CERT.into(),
            message_attributes: BTreeMap::new(),
        }
    }

    fn rules(require_v2: bool) -> Freshness {
        let defaults = crate::config::SnsSettings::default();
        Freshness {
            require_v2,
            ..Freshness::from(&defaults)
        }
    }

    #[test]
    fn stale_and_future_messages_are_refused_by_the_given_clock() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-06-01T12:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        let at = |t: &str| check_fresh(&message_at(t, "1"), now, &rules(false));
        assert!(at("2026-06-01T11:00:00.000Z").is_ok(), "exactly 1 h old");
        assert!(at("2026-06-01T12:05:00.000Z").is_ok(), "5 min ahead");
        let stale = at("2026-06-01T10:00:00.000Z").unwrap_err();
        assert!(matches!(stale, SnsVerifyError::Stale { .. }), "{stale}");
        assert!(stale.to_string().contains("2h old"), "{stale}");
        let future = at("2026-06-01T12:05:01.000Z").unwrap_err();
        assert!(
            matches!(future, SnsVerifyError::FromTheFuture { .. }),
            "{future}"
        );
        assert!(matches!(at("yesterday"), Err(SnsVerifyError::BadTimestamp)));
    }

    #[test]
    fn signature_version_1_is_refused_only_when_version_2_is_required() {
        let now = chrono::Utc::now();
        let stamp = now.to_rfc3339();
        let v1 = message_at(&stamp, "1");
        assert!(check_fresh(&v1, now, &rules(false)).is_ok());
        let refused = check_fresh(&v1, now, &rules(true));
        assert!(matches!(refused, Err(SnsVerifyError::VersionRefused)));
        assert!(check_fresh(&message_at(&stamp, "2"), now, &rules(true)).is_ok());
    }

    /// A loopback listener standing in for the SNS host: it counts connections and closes them
    /// (so every fetch fails), and a client that sends every SNS host there.
    async fn counting_peer() -> (Arc<std::sync::atomic::AtomicUsize>, reqwest::Client) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let count = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&count);
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                drop(socket);
            }
        });
        let mut builder = fetch_client_builder();
        for region in ["us-east-1", "us-west-2", "eu-west-1"] {
            builder = builder.resolve(&format!("sns.{region}.amazonaws.com"), addr);
        }
        (count, builder.build().unwrap())
    }

    #[tokio::test]
    async fn a_failed_certificate_fetch_is_not_repeated_within_its_ttl() {
        use std::sync::atomic::Ordering;
        let (connections, client) = counting_peer().await;
        let cache = CertCache::with_client(None, client).with_limits(Duration::from_secs(300), 100);
        let url = check_cert_url(CERT).unwrap();
        for _ in 0..5 {
            let err = cache
                .get(&url)
                .await
                .err()
                .expect("the peer closes every connection");
            assert!(matches!(err, SnsVerifyError::CertFetch(_)), "{err}");
        }
        assert_eq!(
            connections.load(Ordering::SeqCst),
            1,
            "fetched once, then remembered"
        );
        let again = cache.get(&url).await.err().unwrap().to_string();
        assert!(again.contains("not fetched again"), "{again}");
    }

    #[tokio::test]
    async fn certificate_fetches_are_bounded_per_minute() {
        use std::sync::atomic::Ordering;
        let (connections, client) = counting_peer().await;
        let cache = CertCache::with_client(None, client).with_limits(Duration::from_secs(300), 2);
        let urls = ["us-east-1", "us-west-2", "eu-west-1"].map(|region| {
            let raw =
                format!("https://sns.{region}.amazonaws.com/SimpleNotificationService-abc.pem");
            check_cert_url(&raw).unwrap()
        });
        let mut answers = Vec::new();
        for url in &urls {
            answers.push(cache.get(url).await.err().unwrap().to_string());
        }
        assert_eq!(connections.load(Ordering::SeqCst), 2, "{answers:?}");
        assert!(
            answers[2].contains("too many certificate fetches"),
            "{answers:?}"
        );
    }

    #[test]
    fn unknown_type_and_version_are_named_errors() {
        assert!(matches!(
            "Other".parse::<SnsType>(),
            Err(SnsVerifyError::UnknownType(_))
        ));
        assert!(matches!(
            "3".parse::<SignatureVersion>(),
            Err(SnsVerifyError::UnsupportedVersion(_))
        ));
        let long = "x".repeat(10_000);
        let err = long.parse::<SnsType>().unwrap_err().to_string();
        assert!(err.len() < 100, "{err}");
    }
}

//! Signing SNS messages as AWS does, with a test certificate authority (tests and demo only).
//!
//! Owns [`TestSigner`]: an RSA-2048 key and a self-signed certificate named like an SNS
//! signing certificate, bodies laid out byte for byte as SNS posts them, CloudWatch alarm
//! messages as CloudWatch publishes them, and the helpers that put the certificate where
//! [`CertCache`](tollgate::http::sns_verify::CertCache) looks for it. It must never be used by the
//! controller at run time, and nothing here turns verification off: the verifier accepts these
//! messages only because the certificate was pre-seeded into its directory.
//!
//! # Caveats
//! - RSA key generation is slow in unoptimised builds, so one key is made per process and
//!   shared by every signer; each [`TestSigner`] still has its own certificate and URL.
//! - moto 5.2.5 (`moto/sns/models.py`, `Subscription.get_post_data`) ships no signing
//!   certificate. Per HTTP(S) subscription it generates an RSA-2048 key, and per delivery a new
//!   certificate (subject `CN=sns.amazonaws.com`, issuer `C=US, O=Amazon, CN=Amazon RSA 2048 M01`
//!   but signed by that same key, valid from now for 365 days) published at
//!   `https://sns.<topic region>.amazonaws.com/SimpleNotificationService-<uuid4 hex>.pem`. It
//!   always signs with `SignatureVersion` `"2"` and leaves `Subject` out of the signed string,
//!   so its deliveries verify only when published without a subject. moto serves the PEM itself
//!   at `/SimpleNotificationService-<id>.pem`, stored under account 123456789012 in the topic's
//!   region; [`fetch_moto_cert`] copies it into a cache directory.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use anyhow::{Context, ensure};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use rand::Rng;
use rsa::RsaPrivateKey;
use rsa::pkcs1v15::SigningKey;
use rsa::signature::{SignatureEncoding, Signer};
use serde::Serialize;
use sha1::Sha1;
use sha2::Sha256;
use url::Url;
use x509_cert::builder::{Builder, CertificateBuilder, Profile};
use x509_cert::der::EncodePem;
use x509_cert::der::pem::LineEnding;
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::spki::SubjectPublicKeyInfoOwned;
use x509_cert::time::{Time, Validity};

use tollgate::http::sns_verify::{
    AlarmState, SignatureVersion, SnsMessage, SnsMessageAttribute, SnsType, SnsVerifyError,
    cache_file_name, check_cert_url, string_to_sign,
};

/// Regions with CloudWatch's display names, as they appear in alarm messages and subjects.
pub const REGIONS: &[(&str, &str)] = &[
    ("us-east-1", "US East (N. Virginia)"),
    ("us-east-2", "US East (Ohio)"),
    ("us-west-1", "US West (N. California)"),
    ("us-west-2", "US West (Oregon)"),
    ("ca-central-1", "Canada (Central)"),
    ("sa-east-1", "South America (Sao Paulo)"),
    ("eu-west-1", "EU (Ireland)"),
    ("eu-west-2", "EU (London)"),
    ("eu-west-3", "EU (Paris)"),
    ("eu-central-1", "EU (Frankfurt)"),
    ("eu-central-2", "EU (Zurich)"),
    ("eu-north-1", "EU (Stockholm)"),
    ("eu-south-1", "EU (Milan)"),
    ("eu-south-2", "EU (Spain)"),
    ("ap-east-1", "Asia Pacific (Hong Kong)"),
    ("ap-south-1", "Asia Pacific (Mumbai)"),
    ("ap-northeast-1", "Asia Pacific (Tokyo)"),
    ("ap-northeast-2", "Asia Pacific (Seoul)"),
    ("ap-northeast-3", "Asia Pacific (Osaka)"),
    ("ap-southeast-1", "Asia Pacific (Singapore)"),
    ("ap-southeast-2", "Asia Pacific (Sydney)"),
    ("me-south-1", "Middle East (Bahrain)"),
    ("af-south-1", "Africa (Cape Town)"),
    ("il-central-1", "Israel (Tel Aviv)"),
    ("cn-north-1", "China (Beijing)"),
    ("cn-northwest-1", "China (Ningxia)"),
    ("us-gov-west-1", "AWS GovCloud (US-West)"),
    ("us-gov-east-1", "AWS GovCloud (US-East)"),
];

/// SNS caps `Subject` at 100 characters; CloudWatch shortens the alarm name to fit.
const MAX_SUBJECT_CHARS: usize = 100;
const CERT_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);
const CLOCK_SKEW: Duration = Duration::from_secs(3600);

/// A test signing authority: a key, a self-signed certificate and the SNS-style URL it is
/// published under (one per region).
pub struct TestSigner {
    key: RsaPrivateKey,
    cert_pem: String,
    cert_id: String,
}

impl std::fmt::Debug for TestSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestSigner")
            .field("cert_id", &self.cert_id)
            .finish_non_exhaustive()
    }
}

impl Default for TestSigner {
    fn default() -> Self {
        Self::new()
    }
}

fn shared_key() -> RsaPrivateKey {
    static KEY: OnceLock<RsaPrivateKey> = OnceLock::new();
    let key = KEY.get_or_init(|| {
        RsaPrivateKey::new(&mut rand::thread_rng(), 2048).expect("generate an RSA-2048 key")
    });
    key.clone()
}

fn random_hex(bytes: usize) -> String {
    let mut rng = rand::thread_rng();
    (0..bytes)
        .map(|_| format!("{:02x}", rng.r#gen::<u8>()))
        .collect()
}

/// A UUID-shaped random id, as SNS uses for `MessageId`.
fn message_id() -> String {
    let hex = random_hex(16);
    let parts = [
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32],
    ];
    parts.join("-")
}

fn self_signed_pem(key: &RsaPrivateKey) -> anyhow::Result<String> {
    let now = SystemTime::now();
    let validity = Validity {
        not_before: Time::try_from(now - CLOCK_SKEW)?,
        not_after: Time::try_from(now + CERT_LIFETIME)?,
    };
    let subject: Name = "CN=sns.amazonaws.com,O=tollgate test CA".parse()?;
    let serial = SerialNumber::from(rand::thread_rng().gen_range(1..u32::MAX));
    let spki = SubjectPublicKeyInfoOwned::from_key(key.to_public_key())?;
    let signer = SigningKey::<Sha256>::new(key.clone());
    let builder = CertificateBuilder::new(Profile::Root, serial, validity, subject, spki, &signer)?;
    let cert = builder.build::<rsa::pkcs1v15::Signature>()?;
    Ok(cert.to_pem(LineEnding::LF)?)
}

/// `sns.<region>.amazonaws.com`, or `….amazonaws.com.cn` in the China regions.
pub fn sns_host(region: &str) -> String {
    if region.starts_with("cn-") {
        format!("sns.{region}.amazonaws.com.cn")
    } else {
        format!("sns.{region}.amazonaws.com")
    }
}

/// CloudWatch's display name of a region (the code itself when unknown).
pub fn region_display_name(region: &str) -> &str {
    let known = REGIONS.iter().find(|(code, _)| *code == region);
    known.map_or(region, |(_, name)| name)
}

fn topic_region_or_default(topic_arn: &str) -> &str {
    tollgate::http::sns_verify::topic_region(topic_arn).unwrap_or("us-east-1")
}

impl TestSigner {
    /// A new self-signed certificate (valid from an hour ago for a year) over the process key.
    pub fn new() -> Self {
        let key = shared_key();
        let cert_pem = self_signed_pem(&key).expect("build the test certificate");
        Self {
            key,
            cert_pem,
            cert_id: random_hex(16),
        }
    }

    /// The certificate, PEM-encoded.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Where SNS would publish this certificate for `region`.
    pub fn cert_url(&self, region: &str) -> String {
        let host = sns_host(region);
        format!(
            "https://{host}/SimpleNotificationService-{}.pem",
            self.cert_id
        )
    }

    /// Writes the certificate into a cache directory under [`Self::cert_url`]`(region)`'s name.
    pub fn seed_cache_dir_for(&self, dir: &Path, region: &str) -> anyhow::Result<PathBuf> {
        let url = check_cert_url(&self.cert_url(region))?;
        let path = dir.join(cache_file_name(&url));
        std::fs::write(&path, &self.cert_pem)
            .with_context(|| format!("write {}", path.display()))?;
        Ok(path)
    }

    /// Writes the certificate into a cache directory for every region in [`REGIONS`].
    pub fn seed_cache_dir(&self, dir: &Path) -> anyhow::Result<()> {
        for (region, _) in REGIONS {
            self.seed_cache_dir_for(dir, region)?;
        }
        Ok(())
    }

    /// Signs `msg` as SNS does: sets `SignatureVersion`, `SigningCertURL` (in the topic's
    /// region) and `Signature` over [`string_to_sign`].
    pub fn sign(
        &self,
        msg: &mut SnsMessage,
        version: SignatureVersion,
    ) -> Result<(), SnsVerifyError> {
        msg.signature_version = version.as_str().to_owned();
        msg.signing_cert_url = self.cert_url(topic_region_or_default(&msg.topic_arn));
        let text = string_to_sign(msg)?;
        msg.signature = BASE64.encode(self.raw_signature(version, text.as_bytes()));
        Ok(())
    }

    fn raw_signature(&self, version: SignatureVersion, data: &[u8]) -> Vec<u8> {
        match version {
            SignatureVersion::V1 => SigningKey::<Sha1>::new(self.key.clone())
                .sign(data)
                .to_vec(),
            SignatureVersion::V2 => SigningKey::<Sha256>::new(self.key.clone())
                .sign(data)
                .to_vec(),
        }
    }

    /// `msg` signed with `version`.
    pub fn signed(&self, mut msg: SnsMessage, version: SignatureVersion) -> SnsMessage {
        self.sign(&mut msg, version)
            .expect("a message built here has every signed field");
        msg
    }

    /// A signed `Notification` body (SignatureVersion 1, the topic default).
    pub fn notification(&self, topic_arn: &str, subject: Option<&str>, message: &str) -> String {
        let msg = unsigned_notification(topic_arn, subject, message);
        body(&self.signed(msg, SignatureVersion::V1))
    }

    /// A signed `SubscriptionConfirmation` body.
    pub fn subscription_confirmation(&self, topic_arn: &str, version: SignatureVersion) -> String {
        let msg = unsigned_confirmation(SnsType::SubscriptionConfirmation, topic_arn);
        body(&self.signed(msg, version))
    }

    /// A signed `Notification` body carrying a CloudWatch alarm state change, as CloudWatch
    /// publishes it (subject included, SignatureVersion 1).
    pub fn alarm_notification(
        &self,
        topic_arn: &str,
        alarm_name: &str,
        account: &str,
        region: &str,
        new_state: AlarmState,
    ) -> String {
        let message = alarm_message(topic_arn, alarm_name, account, region, new_state);
        let subject = alarm_subject(alarm_name, region, new_state);
        self.notification(topic_arn, Some(&subject), &message)
    }

    /// [`TestSigner::alarm_notification`] for a state change at `changed_at` (a late delivery,
    /// or an old message replayed now), signed now.
    pub fn alarm_notification_at(
        &self,
        topic_arn: &str,
        alarm_name: &str,
        account: &str,
        region: &str,
        new_state: AlarmState,
        changed_at: chrono::DateTime<chrono::Utc>,
    ) -> String {
        let message = alarm_message_at(
            topic_arn, alarm_name, account, region, new_state, changed_at,
        );
        let subject = alarm_subject(alarm_name, region, new_state);
        self.notification(topic_arn, Some(&subject), &message)
    }
}

fn timestamp() -> String {
    chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

fn empty_message(kind: SnsType, topic_arn: &str, message: &str) -> SnsMessage {
    SnsMessage {
        message_type: kind,
        message_id: message_id(),
        topic_arn: topic_arn.to_owned(),
        subject: None,
        message: message.to_owned(),
        timestamp: timestamp(),
        token: None,
        subscribe_url: None,
        unsubscribe_url: None,
        signature_version: String::new(),
        signature: String::new(),
        signing_cert_url: String::new(),
        message_attributes: Default::default(),
    }
}

/// An unsigned `Notification` with a fresh `MessageId`, `Timestamp` and `UnsubscribeURL`.
pub fn unsigned_notification(topic_arn: &str, subject: Option<&str>, message: &str) -> SnsMessage {
    let mut msg = empty_message(SnsType::Notification, topic_arn, message);
    msg.subject = subject.map(str::to_owned);
    let host = sns_host(topic_region_or_default(topic_arn));
    let subscription = format!("{topic_arn}:{}", message_id());
    msg.unsubscribe_url = Some(format!(
        "https://{host}/?Action=Unsubscribe&SubscriptionArn={subscription}"
    ));
    msg
}

/// An unsigned `SubscriptionConfirmation` or `UnsubscribeConfirmation`, with SNS's wording.
pub fn unsigned_confirmation(kind: SnsType, topic_arn: &str) -> SnsMessage {
    let text = match kind {
        SnsType::UnsubscribeConfirmation => format!(
            "You have chosen to deactivate subscription {topic_arn}:{}.\nTo cancel this operation and restore the subscription, visit the SubscribeURL included in this message.",
            message_id()
        ),
        _ => format!(
            "You have chosen to subscribe to the topic {topic_arn}.\nTo confirm the subscription, visit the SubscribeURL included in this message."
        ),
    };
    let mut msg = empty_message(kind, topic_arn, &text);
    let token = random_hex(128);
    let host = sns_host(topic_region_or_default(topic_arn));
    msg.subscribe_url = Some(format!(
        "https://{host}/?Action=ConfirmSubscription&TopicArn={topic_arn}&Token={token}"
    ));
    msg.token = Some(token);
    msg
}

/// `"Name" : "value"` as SNS writes each line of a body.
fn json_line(name: &str, value: &str) -> String {
    let value = serde_json::Value::String(value.to_owned());
    format!("  \"{name}\" : {value}")
}

fn attributes_line(attributes: &std::collections::BTreeMap<String, SnsMessageAttribute>) -> String {
    let entries: Vec<String> = attributes
        .iter()
        .map(|(name, attr)| {
            let name = serde_json::Value::String(name.clone());
            let attr = serde_json::to_string(attr).expect("attributes serialise");
            format!("    {name} : {attr}")
        })
        .collect();
    format!(
        "  \"MessageAttributes\" : {{\n{}\n  }}",
        entries.join(",\n")
    )
}

/// The POST body SNS sends for `msg`, with SNS's field order and layout.
pub fn body(msg: &SnsMessage) -> String {
    let mut lines = vec![
        json_line("Type", msg.message_type.as_str()),
        json_line("MessageId", &msg.message_id),
    ];
    let optional =
        |name: &str, value: &Option<String>| value.as_deref().map(|v| json_line(name, v));
    if msg.message_type == SnsType::Notification {
        lines.push(json_line("TopicArn", &msg.topic_arn));
        lines.extend(optional("Subject", &msg.subject));
        lines.push(json_line("Message", &msg.message));
    } else {
        lines.extend(optional("Token", &msg.token));
        lines.push(json_line("TopicArn", &msg.topic_arn));
        lines.push(json_line("Message", &msg.message));
        lines.extend(optional("SubscribeURL", &msg.subscribe_url));
    }
    lines.push(json_line("Timestamp", &msg.timestamp));
    lines.push(json_line("SignatureVersion", &msg.signature_version));
    lines.push(json_line("Signature", &msg.signature));
    lines.push(json_line("SigningCertURL", &msg.signing_cert_url));
    lines.extend(optional("UnsubscribeURL", &msg.unsubscribe_url));
    if !msg.message_attributes.is_empty() {
        lines.push(attributes_line(&msg.message_attributes));
    }
    format!("{{\n{}\n}}", lines.join(",\n"))
}

/// The subject CloudWatch gives an alarm notification: `ALARM: "name" in US East (N. Virginia)`,
/// the name shortened with `...` so that the whole fits in 100 characters.
pub fn alarm_subject(alarm_name: &str, region: &str, state: AlarmState) -> String {
    let prefix = format!("{}: \"", state.as_str());
    let suffix = format!("\" in {}", region_display_name(region));
    let room = MAX_SUBJECT_CHARS.saturating_sub(prefix.len() + suffix.chars().count());
    if alarm_name.chars().count() <= room {
        return format!("{prefix}{alarm_name}{suffix}");
    }
    let short: String = alarm_name.chars().take(room.saturating_sub(3)).collect();
    format!("{prefix}{short}...{suffix}")
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct AlarmMessageOut<'a> {
    alarm_name: &'a str,
    alarm_description: Option<&'a str>,
    #[serde(rename = "AWSAccountId")]
    aws_account_id: &'a str,
    alarm_configuration_updated_timestamp: String,
    new_state_value: AlarmState,
    new_state_reason: String,
    state_change_time: String,
    region: &'a str,
    alarm_arn: String,
    old_state_value: AlarmState,
    #[serde(rename = "OKActions")]
    ok_actions: [&'a str; 1],
    alarm_actions: [&'a str; 1],
    insufficient_data_actions: [&'a str; 0],
    trigger: TriggerOut,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct TriggerOut {
    metric_name: &'static str,
    namespace: &'static str,
    statistic_type: &'static str,
    statistic: &'static str,
    unit: Option<&'static str>,
    dimensions: [DimensionOut; 1],
    period: u64,
    evaluation_periods: u64,
    comparison_operator: &'static str,
    threshold: f64,
    treat_missing_data: &'static str,
    evaluate_low_sample_count_percentile: &'static str,
}

/// CloudWatch writes dimensions as `{"value": …, "name": …}`, value first.
#[derive(Serialize)]
struct DimensionOut {
    value: &'static str,
    name: &'static str,
}

fn old_state(new_state: AlarmState) -> AlarmState {
    match new_state {
        AlarmState::Alarm => AlarmState::Ok,
        AlarmState::Ok | AlarmState::InsufficientData => AlarmState::Alarm,
    }
}

fn state_reason(new_state: AlarmState, at: chrono::DateTime<chrono::Utc>) -> String {
    let when = at.format("%d/%m/%y %H:%M:00");
    match new_state {
        AlarmState::Alarm => format!(
            "Threshold Crossed: 1 out of the last 1 datapoints [5.0 ({when})] was greater than or equal to the threshold (1.0) (minimum 1 datapoint for OK -> ALARM transition)."
        ),
        AlarmState::Ok => format!(
            "Threshold Crossed: 1 out of the last 1 datapoints [0.0 ({when})] was not greater than or equal to the threshold (1.0) (minimum 1 datapoint for ALARM -> OK transition)."
        ),
        AlarmState::InsufficientData => "Insufficient Data: 1 datapoint was unknown.".to_owned(),
    }
}

fn error_count_trigger() -> TriggerOut {
    TriggerOut {
        metric_name: "HTTPCode_Target_5XX_Count",
        namespace: "AWS/ApplicationELB",
        statistic_type: "Statistic",
        statistic: "SUM",
        unit: None,
        dimensions: [DimensionOut {
            value: "app/service/0123456789abcdef",
            name: "LoadBalancer",
        }],
        period: 60,
        evaluation_periods: 1,
        comparison_operator: "GreaterThanOrEqualToThreshold",
        threshold: 1.0,
        treat_missing_data: "notBreaching",
        evaluate_low_sample_count_percentile: "",
    }
}

/// The JSON CloudWatch publishes as `Message` when `alarm_name` (in `account`, `region`)
/// changes to `new_state`, with the alarm's actions pointing at `topic_arn`.
pub fn alarm_message(
    topic_arn: &str,
    alarm_name: &str,
    account: &str,
    region: &str,
    new_state: AlarmState,
) -> String {
    let now = chrono::Utc::now();
    alarm_message_at(topic_arn, alarm_name, account, region, new_state, now)
}

/// [`alarm_message`] for a state change at `now`.
pub fn alarm_message_at(
    topic_arn: &str,
    alarm_name: &str,
    account: &str,
    region: &str,
    new_state: AlarmState,
    now: chrono::DateTime<chrono::Utc>,
) -> String {
    let partition = if region.starts_with("cn-") {
        "aws-cn"
    } else if region.starts_with("us-gov-") {
        "aws-us-gov"
    } else {
        "aws"
    };
    let message = AlarmMessageOut {
        alarm_name,
        alarm_description: None,
        aws_account_id: account,
        alarm_configuration_updated_timestamp: (now - chrono::Duration::hours(1))
            .format("%Y-%m-%dT%H:%M:%S%.3f%z")
            .to_string(),
        new_state_value: new_state,
        new_state_reason: state_reason(new_state, now),
        state_change_time: now.format("%Y-%m-%dT%H:%M:%S%.3f%z").to_string(),
        region: region_display_name(region),
        alarm_arn: format!("arn:{partition}:cloudwatch:{region}:{account}:alarm:{alarm_name}"),
        old_state_value: old_state(new_state),
        ok_actions: [topic_arn],
        alarm_actions: [topic_arn],
        insufficient_data_actions: [],
        trigger: error_count_trigger(),
    };
    serde_json::to_string(&message).expect("an alarm message serialises")
}

/// Copies the certificate a moto delivery names in `signing_cert_url` from the moto server at
/// `moto_endpoint` (loopback) into `dir`, under the cache's name for that URL.
///
/// moto routes a request to SNS by the SigV4 credential scope of its `Authorization` header and
/// does not check the signature, so a scope naming `sns` and the URL's region is enough.
pub async fn fetch_moto_cert(
    moto_endpoint: &Url,
    signing_cert_url: &str,
    dir: &Path,
) -> anyhow::Result<PathBuf> {
    let url = check_cert_url(signing_cert_url)?;
    let host = url.host_str().unwrap_or_default();
    let region = host
        .trim_start_matches("sns.")
        .split('.')
        .next()
        .unwrap_or_default();
    let scope = format!("test/20240101/{region}/sns/aws4_request");
    let response = reqwest::Client::new()
        .get(moto_endpoint.join(url.path())?)
        .header(
            "Authorization",
            format!("AWS4-HMAC-SHA256 Credential={scope}, SignedHeaders=host, Signature=00"),
        )
        .header("x-moto-account-id", crate::moto::DEFAULT_ACCOUNT_ID)
        .send()
        .await?;
    ensure!(
        response.status().is_success(),
        "moto answered {} for the certificate",
        response.status()
    );
    let path = dir.join(cache_file_name(&url));
    std::fs::write(&path, response.bytes().await?)?;
    Ok(path)
}

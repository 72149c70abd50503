//! `aws::sts::Credentials` through the real AWS SDK against `moto_server`: AssumeRole lands in
//! the account asked for, sessions are cached, the controller's own account assumes nothing,
//! and ExternalId problems are clear errors that never show a value.
//!
//! moto does not check ExternalId (nor any IAM policy): these tests prove what is sent, not
//! that AWS would accept it. The refusal test uses a wiremock STS on loopback for that reason.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use aws_credential_types::provider::ProvideCredentials;
use tollgate::aws::retry::Limiter;
use tollgate::aws::sts::Credentials;
use tollgate::config::{Account, SecretRef};
use tollgate::engine::ports::PortError;
use tollgate_testkit::moto::{DEFAULT_ACCOUNT_ID, MotoServer, REGION};
use wiremock::matchers::{body_string_contains, method};
use wiremock::{Mock, MockServer, ResponseTemplate};

const BETA: &str = "222222222222";
const GAMMA: &str = "333333333333";

fn account(name: &str, id: &str, external_id: Option<SecretRef>) -> Account {
    Account {
        name: name.into(),
        id: id.into(),
        role_arn: Some(format!("arn:aws:iam::{id}:role/tollgate-deploy").into()),
        external_id,
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
        ..account("tools", DEFAULT_ACCOUNT_ID, None)
    }
}

fn credentials(moto: &MotoServer) -> Credentials {
    Credentials::new(moto.sdk_config(), Arc::new(Limiter::default()))
}

fn id_file(value: &str) -> tempfile::NamedTempFile {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), value).unwrap();
    file
}

async fn identity(config: &aws_config::SdkConfig) -> (String, String) {
    let out = aws_sdk_sts::Client::new(config)
        .get_caller_identity()
        .send()
        .await
        .unwrap();
    (
        out.account().unwrap().to_owned(),
        out.arn().unwrap().to_owned(),
    )
}

#[tokio::test]
async fn each_account_gets_its_own_identity() {
    let moto = MotoServer::shared();
    let creds = credentials(moto);
    let ext = id_file("beta-external-id");
    let beta = account("beta", BETA, Some(SecretRef::File(ext.path().into())));
    let gamma = account("gamma", GAMMA, Some(SecretRef::File(ext.path().into())));
    let beta_cfg = creds
        .config_for(&beta, "eu-west-1", "tollgate-backend-r1-beta")
        .await
        .unwrap();
    let gamma_cfg = creds
        .config_for(&gamma, REGION, "tollgate-backend-r1-gamma")
        .await
        .unwrap();

    let (beta_id, beta_arn) = identity(&beta_cfg).await;
    assert_eq!(beta_id, BETA);
    assert!(
        beta_arn.ends_with(":assumed-role/tollgate-deploy/tollgate-backend-r1-beta"),
        "{beta_arn}"
    );
    assert_eq!(identity(&gamma_cfg).await.0, GAMMA);
    assert_eq!(beta_cfg.region().unwrap().as_ref(), "eu-west-1");
    assert_eq!(
        beta_cfg.endpoint_url(),
        Some(moto.endpoint().as_str()),
        "the endpoint carries over"
    );
}

#[tokio::test]
async fn sessions_are_cached_and_the_controller_account_assumes_nothing() {
    let moto = MotoServer::start().unwrap(); // private: the recorder counts calls
    let creds = credentials(&moto);
    let ext = id_file("  gamma-external-id\n");
    let gamma = account("gamma", GAMMA, Some(SecretRef::File(ext.path().into())));
    moto.recorder_start().await.unwrap();

    let first = creds
        .config_for(&gamma, REGION, "tollgate r1 gamma")
        .await
        .unwrap();
    let second = creds
        .config_for(&gamma, REGION, "tollgate-r2-gamma")
        .await
        .unwrap();
    let own = creds
        .config_for(&controller_account(), REGION, "unused")
        .await
        .unwrap();
    moto.recorder_stop().await.unwrap();

    let requests = moto.recorded_requests().await.unwrap();
    let assumes: Vec<_> = requests
        .iter()
        .filter(|r| r.action.as_deref() == Some("AssumeRole"))
        .collect();
    assert_eq!(assumes.len(), 1, "one AssumeRole for two config_for calls");
    let form: BTreeMap<String, String> = url::form_urlencoded::parse(&assumes[0].body)
        .into_owned()
        .collect();
    assert_eq!(form["ExternalId"], "gamma-external-id", "trimmed");
    assert_eq!(form["RoleSessionName"], "tollgate-r1-gamma", "sanitised");
    assert_eq!(form["DurationSeconds"], "3600");
    assert_eq!(identity(&first).await.0, GAMMA);
    assert_eq!(identity(&second).await, identity(&first).await);
    assert_eq!(identity(&own).await.0, DEFAULT_ACCOUNT_ID);
}

#[tokio::test]
async fn an_unset_external_id_variable_is_named_in_the_error() {
    let creds = credentials(MotoServer::shared());
    let var = "TOLLGATE_TEST_EXTERNAL_ID_THAT_IS_NEVER_SET";
    let beta = account("beta", BETA, Some(SecretRef::Env(var.into())));
    let err = creds.config_for(&beta, REGION, "s").await.unwrap_err();
    assert!(
        matches!(&err, PortError::Invalid(m) if m.contains(var) && m.contains("not set")),
        "{err}"
    );
    assert!(
        err.to_string().contains("account beta (222222222222)"),
        "{err}"
    );
}

#[tokio::test]
async fn an_empty_external_id_file_is_an_error_naming_the_file() {
    let creds = credentials(MotoServer::shared());
    let ext = id_file("\n");
    let beta = account("beta", BETA, Some(SecretRef::File(ext.path().into())));
    let err = creds.config_for(&beta, REGION, "s").await.unwrap_err();
    assert!(
        err.to_string().contains(&ext.path().display().to_string()),
        "{err}"
    );
}

/// `sts` answers exactly one request whose form contains `matching` with `status` and `body`.
async fn answer(sts: &MockServer, matching: &str, status: u16, body: &str) {
    Mock::given(method("POST"))
        .and(body_string_contains(matching))
        .respond_with(ResponseTemplate::new(status).set_body_raw(body.to_owned(), "text/xml"))
        .expect(1)
        .mount(sts)
        .await;
}

/// Credentials whose AWS calls all go to `sts`.
fn credentials_at(sts: &MockServer) -> Credentials {
    let base = MotoServer::shared().sdk_config().into_builder();
    let base = base.endpoint_url(sts.uri()).build();
    Credentials::new(base, Arc::new(Limiter::default()))
}

#[tokio::test]
async fn a_refused_assume_role_is_denied_and_says_what_was_refused() {
    let sts = MockServer::start().await;
    let refusal = r#"<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <Error><Type>Sender</Type><Code>AccessDenied</Code>
  <Message>User: arn:aws:iam::123456789012:user/tollgate is not authorized to perform: sts:AssumeRole</Message></Error>
  <RequestId>c6104cbe-af31-11e0-8154-cbc7ccf896c7</RequestId>
</ErrorResponse>"#;
    answer(&sts, "Action=AssumeRole", 403, refusal).await;
    let creds = credentials_at(&sts);
    let ext = id_file("beta-external-id");
    let beta = account("beta", BETA, Some(SecretRef::File(ext.path().into())));

    let err = creds.config_for(&beta, REGION, "s").await.unwrap_err();
    let PortError::Denied(message) = &err else {
        panic!("{err:?}")
    };
    assert!(
        message.starts_with("cannot assume arn:aws:iam::222222222222:role/tollgate-deploy for account beta (222222222222): AccessDenied: User:"),
        "{message}"
    );
    assert!(!message.contains("beta-external-id"));
}

/// An ExternalId AssumeRole would refuse (STS: 2 to 1,224 characters of `[\w+=,.@:/-]`) is
/// an error naming the file and what is wrong, never the value, and nothing is sent: STS's own
/// refusal would quote it.
#[tokio::test]
async fn an_external_id_sts_would_refuse_is_an_error_before_any_call() {
    let sts = MockServer::start().await;
    let creds = credentials_at(&sts);
    for (value, problem) in [
        ("hunter2 secret", "character 8 of 14"),
        ("%", "1 character long"),
    ] {
        let ext = id_file(value);
        let beta = account("beta", BETA, Some(SecretRef::File(ext.path().into())));
        let err = creds.config_for(&beta, REGION, "s").await.unwrap_err();
        let PortError::Invalid(message) = &err else {
            panic!("{err:?}")
        };
        assert!(
            message.contains(&ext.path().display().to_string()),
            "{message}"
        );
        assert!(message.contains(problem), "{message}");
        assert!(!message.contains(value), "{message}");
    }
    let sent = sts.received_requests().await.unwrap_or_default();
    assert!(sent.is_empty(), "{} requests sent", sent.len());
}

/// When STS refuses an ExternalId anyway and quotes it, the error keeps the refusal and drops
/// the value.
#[tokio::test]
async fn a_refusal_quoting_the_external_id_never_shows_it() {
    let sts = MockServer::start().await;
    let refusal = r#"<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <Error><Type>Sender</Type><Code>ValidationError</Code>
  <Message>1 validation error detected: Value 'beta-external-id' at 'externalId' failed to satisfy constraint: Member must satisfy regular expression pattern: [\w+=,.@:\/-]*</Message></Error>
  <RequestId>c6104cbe-af31-11e0-8154-cbc7ccf896c7</RequestId>
</ErrorResponse>"#;
    answer(&sts, "Action=AssumeRole", 400, refusal).await;
    let creds = credentials_at(&sts);
    let ext = id_file("beta-external-id");
    let beta = account("beta", BETA, Some(SecretRef::File(ext.path().into())));

    let err = creds.config_for(&beta, REGION, "s").await.unwrap_err();
    let message = err.to_string();
    assert!(!message.contains("beta-external-id"), "{message}");
    assert!(
        message.contains("ValidationError: 1 validation error detected: Value '…' at 'externalId'"),
        "{message}"
    );
}

/// A client built from a config handed out keeps working past its first session: its
/// credentials provider, asked on every call, returns the cached session while it is fresh and
/// assumes the role again once it is not. moto's sessions last the `DurationSeconds` asked, at
/// least 900 s, so here a session counts as due for renewal 897 s before it expires: after
/// about 3 s.
#[tokio::test]
async fn a_config_renews_its_session_when_the_old_one_is_due() {
    let moto = MotoServer::start().unwrap(); // private: the recorder counts calls
    let creds = Credentials::with_refresh_before(
        moto.sdk_config(),
        Arc::new(Limiter::default()),
        Duration::from_secs(897),
    );
    let ext = id_file("gamma-external-id");
    let gamma = Account {
        session_duration: Duration::from_secs(900),
        ..account("gamma", GAMMA, Some(SecretRef::File(ext.path().into())))
    };
    moto.recorder_start().await.unwrap();
    let config = creds
        .config_for(&gamma, REGION, "tollgate-long-wait")
        .await
        .unwrap();
    let client = aws_sdk_sts::Client::new(&config);
    for _ in 0..2 {
        client.get_caller_identity().send().await.unwrap();
    }
    assert_eq!(assumes(&moto).await, 1, "fresh: the session of config_for");
    let provider = config.credentials_provider().unwrap();
    let first = provider.provide_credentials().await.unwrap();

    tokio::time::sleep(Duration::from_millis(3500)).await;
    let who = client.get_caller_identity().send().await.unwrap();
    assert_eq!(who.account(), Some(GAMMA));
    assert_eq!(assumes(&moto).await, 2, "renewed by the client's own call");
    let renewed = provider.provide_credentials().await.unwrap();
    assert_ne!(renewed.access_key_id(), first.access_key_id());
    moto.recorder_stop().await.unwrap();
}

/// A process handed a session cannot renew it: `session_lasting` gives the cached session
/// only when it lasts long enough, else assumes the role again for the account's
/// `session_duration`; a session that cannot last long enough is still given (with a warning).
#[tokio::test]
async fn a_session_handed_to_a_process_lasts_as_long_as_it_may_run() {
    let moto = MotoServer::start().unwrap(); // private: the recorder counts calls
    let creds = credentials(&moto);
    let ext = id_file("gamma-external-id");
    let short = Account {
        session_duration: Duration::from_secs(900),
        ..account("gamma", GAMMA, Some(SecretRef::File(ext.path().into())))
    };
    let long = Account {
        session_duration: Duration::from_secs(1800),
        ..short.clone()
    };
    moto.recorder_start().await.unwrap();
    let config = creds.config_for(&short, REGION, "s").await.unwrap();
    let cached = config.credentials_provider().unwrap();
    let cached = cached.provide_credentials().await.unwrap();
    assert_eq!(assumes(&moto).await, 1);

    let minutes = |m: u64| Duration::from_secs(m * 60);
    let ten = creds
        .session_lasting(&long, "s", minutes(10))
        .await
        .unwrap();
    assert_eq!(
        ten.map(|c| c.access_key_id().to_string()),
        Some(cached.access_key_id().to_string()),
        "15 minutes left: the cached session"
    );
    assert_eq!(assumes(&moto).await, 1);

    let twenty = creds
        .session_lasting(&long, "s", minutes(20))
        .await
        .unwrap()
        .unwrap();
    assert_ne!(twenty.access_key_id(), cached.access_key_id());
    assert_eq!(assumes(&moto).await, 2, "a new session of 30 minutes");
    let expiry = twenty.expiry().unwrap();
    let left = expiry.duration_since(std::time::SystemTime::now()).unwrap();
    assert!(left > minutes(29), "{left:?}");

    // Longer than any session the account gets: a new one all the same, the longest it may.
    let forty = creds
        .session_lasting(&long, "s", minutes(40))
        .await
        .unwrap()
        .unwrap();
    assert_ne!(forty.access_key_id(), twenty.access_key_id());
    assert_eq!(assumes(&moto).await, 3);
    moto.recorder_stop().await.unwrap();

    assert!(
        creds
            .session_lasting(&controller_account(), "s", minutes(10))
            .await
            .unwrap()
            .is_none(),
        "the controller's account: its own credentials"
    );
}

/// An AssumeRole answer granting `key`, valid for an hour.
fn granted(key: &str) -> String {
    let expires = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    format!(
        r#"<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleResult>
    <Credentials><AccessKeyId>{key}</AccessKeyId><SecretAccessKey>secret</SecretAccessKey>
      <SessionToken>token-{key}</SessionToken><Expiration>{expires}</Expiration></Credentials>
    <AssumedRoleUser><Arn>arn:aws:sts::222222222222:assumed-role/tollgate-deploy/s</Arn>
      <AssumedRoleId>AROA:s</AssumedRoleId></AssumedRoleUser>
  </AssumeRoleResult>
  <ResponseMetadata><RequestId>1</RequestId></ResponseMetadata>
</AssumeRoleResponse>"#
    )
}

/// A session revoked in IAM ("Revoke active sessions" denies every session issued before it)
/// is not kept until it expires: once a call with it is denied, the next call assumes the role
/// again, and the new session works.
#[tokio::test]
async fn a_session_denied_after_it_was_assumed_is_replaced_on_the_next_call() {
    use wiremock::matchers::header_regex;
    let sts = MockServer::start().await;
    Mock::given(method("POST"))
        .and(body_string_contains("Action=AssumeRole"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(granted("ASIAOLD"), "text/xml"))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&sts)
        .await;
    Mock::given(method("POST"))
        .and(body_string_contains("Action=AssumeRole"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(granted("ASIANEW"), "text/xml"))
        .with_priority(2)
        .mount(&sts)
        .await;
    let revoked = r#"<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <Error><Type>Sender</Type><Code>AccessDenied</Code>
  <Message>User: arn:aws:sts::222222222222:assumed-role/tollgate-deploy/s is not authorized to perform: sts:GetCallerIdentity with an explicit deny in an identity-based policy</Message></Error>
  <RequestId>2</RequestId>
</ErrorResponse>"#;
    Mock::given(method("POST"))
        .and(body_string_contains("Action=GetCallerIdentity"))
        .and(header_regex("authorization", "Credential=ASIAOLD/"))
        .respond_with(ResponseTemplate::new(403).set_body_raw(revoked, "text/xml"))
        .mount(&sts)
        .await;
    let identity = r#"<GetCallerIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <GetCallerIdentityResult><Arn>arn:aws:sts::222222222222:assumed-role/tollgate-deploy/s</Arn>
    <UserId>AROA:s</UserId><Account>222222222222</Account></GetCallerIdentityResult>
  <ResponseMetadata><RequestId>3</RequestId></ResponseMetadata>
</GetCallerIdentityResponse>"#;
    Mock::given(method("POST"))
        .and(body_string_contains("Action=GetCallerIdentity"))
        .and(header_regex("authorization", "Credential=ASIANEW/"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(identity, "text/xml"))
        .mount(&sts)
        .await;

    let creds = credentials_at(&sts);
    let ext = id_file("beta-external-id");
    let beta = account("beta", BETA, Some(SecretRef::File(ext.path().into())));
    let config = creds.config_for(&beta, REGION, "s").await.unwrap();
    let client = aws_sdk_sts::Client::new(&config);
    let who = || async {
        creds
            .limiter()
            .call(BETA, "GetCallerIdentity", || {
                tollgate::aws::errors::sdk(client.get_caller_identity().send())
            })
            .await
    };
    let first = who().await.unwrap_err();
    assert!(matches!(first, PortError::Denied(_)), "{first:?}");
    let second = who().await.unwrap();
    assert_eq!(second.account(), Some(BETA));
    let assumed = sts
        .received_requests()
        .await
        .unwrap_or_default()
        .iter()
        .filter(|r| String::from_utf8_lossy(&r.body).contains("Action=AssumeRole"))
        .count();
    assert_eq!(assumed, 2, "assumed again once, after the denial");
}

/// How many `AssumeRole` calls moto's recorder holds.
async fn assumes(moto: &MotoServer) -> usize {
    let requests = moto.recorded_requests().await.unwrap();
    let assumed = requests
        .iter()
        .filter(|r| r.action.as_deref() == Some("AssumeRole"));
    assumed.count()
}

/// AWS refuses a session over an hour when the controller's own credentials are a role's
/// (role chaining: "The requested DurationSeconds exceeds the 1 hour session limit for roles
/// assumed by role chaining."). The role is then assumed for one hour.
#[tokio::test]
async fn a_session_over_an_hour_refused_for_role_chaining_is_asked_for_one_hour() {
    let sts = MockServer::start().await;
    let refusal = r#"<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <Error><Type>Sender</Type><Code>ValidationError</Code>
  <Message>The requested DurationSeconds exceeds the 1 hour session limit for roles assumed by role chaining.</Message></Error>
  <RequestId>c6104cbe-af31-11e0-8154-cbc7ccf896c8</RequestId>
</ErrorResponse>"#;
    let granted = r#"<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleResult>
    <Credentials>
      <AccessKeyId>ASIAEXAMPLECHAINED01</AccessKeyId>
      <SecretAccessKey>wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEY</SecretAccessKey>
      <SessionToken>FwoGZXIvYXdzEXAMPLETOKEN</SessionToken>
      <Expiration>2099-01-01T00:00:00Z</Expiration>
    </Credentials>
    <AssumedRoleUser>
      <AssumedRoleId>AROAEXAMPLE:s</AssumedRoleId>
      <Arn>arn:aws:sts::222222222222:assumed-role/tollgate-deploy/s</Arn>
    </AssumedRoleUser>
  </AssumeRoleResult>
  <ResponseMetadata><RequestId>c6104cbe-af31-11e0-8154-cbc7ccf896c9</RequestId></ResponseMetadata>
</AssumeRoleResponse>"#;
    answer(&sts, "DurationSeconds=7200", 400, refusal).await;
    answer(&sts, "DurationSeconds=3600", 200, granted).await;
    let creds = credentials_at(&sts);
    let ext = id_file("beta-external-id");
    let beta = Account {
        session_duration: Duration::from_secs(7200),
        ..account("beta", BETA, Some(SecretRef::File(ext.path().into())))
    };

    let config = creds.config_for(&beta, REGION, "s").await.unwrap();
    let key = config
        .credentials_provider()
        .unwrap()
        .provide_credentials()
        .await
        .unwrap();
    assert_eq!(key.access_key_id(), "ASIAEXAMPLECHAINED01");
}

//! STS through the real AWS SDK for Rust against a real `moto_server`: AssumeRole with an
//! ExternalId lands in the target account, moto keeps accounts apart by credentials, and the
//! request recorder sees exactly the calls made.

use aws_credential_types::Credentials;
use aws_credential_types::provider::SharedCredentialsProvider;
use tollgate_testkit::moto::{DEFAULT_ACCOUNT_ID, MotoServer};

const BETA: &str = "222222222222";
const GAMMA: &str = "333333333333";

fn sts(config: &aws_config::SdkConfig) -> aws_sdk_sts::Client {
    aws_sdk_sts::Client::new(config)
}

async fn account_of(config: &aws_config::SdkConfig) -> String {
    let identity = sts(config).get_caller_identity().send().await.unwrap();
    identity.account().unwrap().to_owned()
}

#[tokio::test]
async fn assume_role_with_an_external_id_lands_in_the_target_account() {
    let moto = MotoServer::shared();
    let role_arn = format!("arn:aws:iam::{BETA}:role/tollgate-deploy");
    let assumed = sts(&moto.sdk_config())
        .assume_role()
        .role_arn(&role_arn)
        .role_session_name("tollgate-beta")
        .external_id("tollgate-beta-external-id")
        .send()
        .await
        .unwrap();
    let user = assumed.assumed_role_user().unwrap();
    assert_eq!(
        user.arn(),
        format!("arn:aws:sts::{BETA}:assumed-role/tollgate-deploy/tollgate-beta")
    );

    let c = assumed.credentials().unwrap();
    let credentials = Credentials::new(
        c.access_key_id(),
        c.secret_access_key(),
        Some(c.session_token().to_owned()),
        None,
        "test",
    );
    let config = moto
        .sdk_config()
        .into_builder()
        .credentials_provider(SharedCredentialsProvider::new(credentials))
        .build();
    let identity = sts(&config).get_caller_identity().send().await.unwrap();
    assert_eq!(identity.account(), Some(BETA));
    assert_eq!(identity.arn(), Some(user.arn()));
}

#[tokio::test]
async fn each_account_sees_its_own_identity() {
    let moto = MotoServer::shared();
    assert_eq!(account_of(&moto.sdk_config()).await, DEFAULT_ACCOUNT_ID);
    for account in [BETA, GAMMA] {
        let config = moto.sdk_config_for_account(account).await.unwrap();
        assert_eq!(account_of(&config).await, account);
    }
}

#[tokio::test]
async fn the_recorder_sees_exactly_the_calls_made_while_it_runs() {
    let moto = MotoServer::start().unwrap();
    let client = sts(&moto.sdk_config());
    client.get_caller_identity().send().await.unwrap(); // before: not recorded

    moto.recorder_clear().await.unwrap();
    moto.recorder_start().await.unwrap();
    client.get_caller_identity().send().await.unwrap();
    client
        .assume_role()
        .role_arn(format!("arn:aws:iam::{GAMMA}:role/tollgate-deploy"))
        .role_session_name("tollgate-gamma")
        .external_id("gamma-external-id")
        .send()
        .await
        .unwrap();
    moto.recorder_stop().await.unwrap();
    client.get_caller_identity().send().await.unwrap(); // after: not recorded

    let requests = moto.recorded_requests().await.unwrap();
    let actions: Vec<_> = requests.iter().map(|r| r.action.as_deref()).collect();
    assert_eq!(actions, [Some("GetCallerIdentity"), Some("AssumeRole")]);
    let assume = &requests[1];
    assert_eq!(
        (assume.method.as_str(), assume.path.as_str()),
        ("POST", "/")
    );
    assert_eq!(assume.access_key_id.as_deref(), Some("testing"));
    assert!(
        assume.body_text().contains("ExternalId=gamma-external-id"),
        "{}",
        assume.body_text()
    );

    moto.recorder_clear().await.unwrap();
    assert!(moto.recorded_requests().await.unwrap().is_empty());
}

#[tokio::test]
async fn reset_and_drop_leave_nothing_behind() {
    let moto = MotoServer::start().unwrap();
    moto.reset().await.unwrap();
    let endpoint = moto.endpoint();
    drop(moto);
    let refused = reqwest::Client::builder().no_proxy().build().unwrap();
    let result = refused.get(format!("{endpoint}/moto-api/")).send().await;
    assert!(
        result.is_err(),
        "moto still answers at {endpoint} after drop"
    );
}

//! `aws::ecr::EcrArtifacts` through the real AWS SDK for Rust against `moto_server`: a tag
//! resolves to its digest in the build account (waiting, bounded, for it to appear), and a
//! digest is promoted by retagging it in the build repository or copying its manifest into
//! the stage account's repository.
//!
//! moto 5.2.5 computes digests from the layer digests, not the manifest bytes; the tests
//! compare digests with what moto itself reports, never with a sha256 of the manifest.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_config::SdkConfig;
use aws_sdk_ecr::types::{ImageIdentifier, ImageTagMutability};
use tollgate::aws::ecr::EcrArtifacts;
use tollgate::aws::retry::{Limiter, PollSettings, RetrySettings};
use tollgate::aws::sts::Credentials;
use tollgate::config::{Account, Artifact, Promote, SecretRef, Target};
use tollgate::engine::ports::{Artifacts, PortError, PromoteRequest};
use tollgate_testkit::aws_stubs::ecr::EcrProxy;
use tollgate_testkit::moto::{MotoServer, REGION};

const BUILD: &str = "111111111111";
const GAMMA: &str = "333333333333";

fn account(name: &str, id: &str, dir: &Path) -> Account {
    let file = dir.join(format!("{name}-external-id"));
    std::fs::write(&file, format!("{name}-external-id")).unwrap();
    Account {
        name: name.into(),
        id: id.into(),
        role_arn: Some(format!("arn:aws:iam::{id}:role/tollgate-deploy").into()),
        external_id: Some(SecretRef::File(file)),
        region: REGION.into(),
        controller: false,
        session_duration: Duration::from_secs(3600),
        stack_events_topic: None,
    }
}

fn artifact(repository: &str, wait: Duration) -> Artifact {
    Artifact {
        repository: repository.into(),
        account: "build".into(),
        region: REGION.into(),
        tag: "{sha}".into(),
        wait,
    }
}

fn artifacts(moto: &MotoServer) -> EcrArtifacts {
    let creds = Credentials::new(moto.sdk_config(), Arc::new(Limiter::default()));
    EcrArtifacts::new(Arc::new(creds), PollSettings::fast())
}

/// [`artifacts`] with every AWS call through the testkit's ECR proxy in front of `moto`.
fn artifacts_through(moto: &MotoServer, proxy: &EcrProxy) -> EcrArtifacts {
    let base = moto.sdk_config().to_builder();
    let base = base.endpoint_url(proxy.endpoint()).build();
    let creds = Credentials::new(base, Arc::new(Limiter::default()));
    EcrArtifacts::new(Arc::new(creds), PollSettings::fast())
}

fn manifest(layer: &str) -> String {
    format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{{"mediaType":"application/vnd.docker.container.image.v1+json","size":7023,"digest":"sha256:b5b2b2c507a0944348e0303114d8d93aaaa081732b86451d9bce1f432a537bc7"}},"layers":[{{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","size":32654,"digest":"sha256:{layer}"}}]}}"#
    )
}

/// Creates `repository` in the build account and pushes a manifest under `tag` (as CI would).
async fn push(config: &SdkConfig, repository: &str, tag: &str) {
    let ecr = aws_sdk_ecr::Client::new(config);
    let created = ecr
        .create_repository()
        .repository_name(repository)
        .send()
        .await;
    if let Err(e) = created {
        assert_eq!(
            aws_smithy_types::error::metadata::ProvideErrorMetadata::code(&e),
            Some("RepositoryAlreadyExistsException")
        );
    }
    let layer = format!("{:0>64}", hex_of(&format!("{repository}{tag}")));
    ecr.put_image()
        .repository_name(repository)
        .image_manifest(manifest(&layer))
        .image_tag(tag)
        .send()
        .await
        .unwrap();
}

fn hex_of(s: &str) -> String {
    s.bytes()
        .map(|b| format!("{b:02x}"))
        .collect::<String>()
        .chars()
        .take(64)
        .collect()
}

async fn digest_of(config: &SdkConfig, repository: &str, tag: &str) -> Option<String> {
    let id = ImageIdentifier::builder().image_tag(tag).build();
    let out = aws_sdk_ecr::Client::new(config)
        .describe_images()
        .repository_name(repository)
        .image_ids(id)
        .send()
        .await;
    out.ok()?
        .image_details()
        .first()?
        .image_digest()
        .map(str::to_owned)
}

#[tokio::test]
async fn a_tag_resolves_to_its_digest_in_the_build_account() {
    let moto = MotoServer::shared();
    let dir = tempfile::tempdir().unwrap();
    let build_cfg = moto.sdk_config_for_account(BUILD).await.unwrap();
    push(&build_cfg, "ecr-resolve", "abc123").await;
    let build = account("build", BUILD, dir.path());

    let digest = artifacts(moto)
        .resolve(
            &artifact("ecr-resolve", Duration::from_secs(5)),
            &build,
            "abc123",
        )
        .await
        .unwrap();
    assert!(digest.starts_with("sha256:"), "{digest}");
    assert_eq!(
        Some(digest),
        digest_of(&build_cfg, "ecr-resolve", "abc123").await
    );
}

#[tokio::test]
async fn resolve_waits_for_a_tag_that_appears_later() {
    let moto = MotoServer::shared();
    let dir = tempfile::tempdir().unwrap();
    let build_cfg = moto.sdk_config_for_account(BUILD).await.unwrap();
    push(&build_cfg, "ecr-later", "first").await;
    let pusher = {
        let cfg = build_cfg.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            push(&cfg, "ecr-later", "second").await;
        })
    };
    let build = account("build", BUILD, dir.path());
    let digest = artifacts(moto)
        .resolve(
            &artifact("ecr-later", Duration::from_secs(10)),
            &build,
            "second",
        )
        .await
        .unwrap();
    pusher.await.unwrap();
    assert_eq!(
        Some(digest),
        digest_of(&build_cfg, "ecr-later", "second").await
    );
}

/// moto gap: moto cannot be told to throttle. Throttling of `DescribeImages` that outlasts one
/// call's retries (8 attempts) does not end the wait for the tag: that look counts as one that
/// saw nothing, and the tag is resolved once the looks get through, within the artifact's wait.
#[tokio::test]
async fn throttling_that_outlasts_a_calls_retries_does_not_end_the_wait_for_a_tag() {
    let moto = MotoServer::shared();
    let proxy = EcrProxy::start(&moto.endpoint()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let build_cfg = moto.sdk_config_for_account(BUILD).await.unwrap();
    push(&build_cfg, "ecr-throttled", "abc").await;
    let limiter = Limiter::new(RetrySettings {
        base: Duration::from_millis(5),
        cap: Duration::from_millis(20),
        ..RetrySettings::default()
    });
    let base = moto.sdk_config().to_builder();
    let base = base.endpoint_url(proxy.endpoint()).build();
    let creds = Credentials::new(base, Arc::new(limiter));
    let ecr = EcrArtifacts::new(Arc::new(creds), PollSettings::fast());

    // Two looks' worth of attempts, and four of a third.
    proxy.throttle("DescribeImages", 20);
    let build = account("build", BUILD, dir.path());
    let digest = ecr
        .resolve(
            &artifact("ecr-throttled", Duration::from_secs(10)),
            &build,
            "abc",
        )
        .await
        .unwrap();
    assert_eq!(
        Some(digest),
        digest_of(&build_cfg, "ecr-throttled", "abc").await
    );

    // Still throttled at the end of the wait: the throttling is the error, not "not found".
    proxy.throttle("DescribeImages", usize::MAX);
    let err = ecr
        .resolve(
            &artifact("ecr-throttled", Duration::from_millis(300)),
            &build,
            "abc",
        )
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
    assert!(err.to_string().contains("Throttling"), "{err}");
}

#[tokio::test]
async fn a_tag_that_never_appears_is_not_found_after_the_wait() {
    let moto = MotoServer::shared();
    let dir = tempfile::tempdir().unwrap();
    push(
        &moto.sdk_config_for_account(BUILD).await.unwrap(),
        "ecr-missing",
        "present",
    )
    .await;
    let build = account("build", BUILD, dir.path());
    let wait = Duration::from_millis(400);

    let started = Instant::now();
    let err = artifacts(moto)
        .resolve(&artifact("ecr-missing", wait), &build, "never")
        .await
        .unwrap_err();
    assert!(started.elapsed() >= wait);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "bounded: {:?}",
        started.elapsed()
    );
    let PortError::NotFound(message) = &err else {
        panic!("{err:?}")
    };
    assert!(
        message.contains("ecr-missing:never") && message.contains(BUILD),
        "{message}"
    );
}

fn promote(
    build: &Account,
    target: &Account,
    repository: &str,
    digest: &str,
    mode: Promote,
) -> PromoteRequest {
    PromoteRequest {
        artifact: artifact(repository, Duration::from_secs(1)),
        build_account: build.clone(),
        digest: digest.into(),
        stage: "prod".into(),
        target: Target {
            account: target.name.clone(),
            region: REGION.into(),
        },
        target_account: target.clone(),
        mode,
    }
}

#[tokio::test]
async fn retagging_is_idempotent_and_keeps_the_digest() {
    let moto = MotoServer::shared();
    let dir = tempfile::tempdir().unwrap();
    let build_cfg = moto.sdk_config_for_account(BUILD).await.unwrap();
    push(&build_cfg, "ecr-retag", "abc").await;
    let digest = digest_of(&build_cfg, "ecr-retag", "abc").await.unwrap();
    let build = account("build", BUILD, dir.path());
    let gamma = account("gamma", GAMMA, dir.path());
    let ecr = artifacts(moto);
    let req = promote(&build, &gamma, "ecr-retag", &digest, Promote::Retag);

    let first = ecr.promote(&req).await.unwrap();
    let again = ecr.promote(&req).await.unwrap();
    assert_eq!(
        first,
        format!("{BUILD}.dkr.ecr.{REGION}.amazonaws.com/ecr-retag@{digest}")
    );
    assert_eq!(again, first);
    let hex = digest.strip_prefix("sha256:").unwrap();
    assert_eq!(
        digest_of(&build_cfg, "ecr-retag", &format!("prod-{}", &hex[..12])).await,
        Some(digest)
    );
}

#[tokio::test]
async fn copying_creates_the_stage_repository_with_the_same_digest() {
    let moto = MotoServer::shared();
    let dir = tempfile::tempdir().unwrap();
    let build_cfg = moto.sdk_config_for_account(BUILD).await.unwrap();
    let gamma_cfg = moto.sdk_config_for_account(GAMMA).await.unwrap();
    push(&build_cfg, "ecr-copy", "abc").await;
    let digest = digest_of(&build_cfg, "ecr-copy", "abc").await.unwrap();
    let build = account("build", BUILD, dir.path());
    let gamma = account("gamma", GAMMA, dir.path());
    let ecr = artifacts(moto);
    let req = promote(&build, &gamma, "ecr-copy", &digest, Promote::Copy);

    let uri = ecr.promote(&req).await.unwrap();
    assert_eq!(
        uri,
        format!("{GAMMA}.dkr.ecr.{REGION}.amazonaws.com/ecr-copy@{digest}")
    );
    let hex = digest.strip_prefix("sha256:").unwrap();
    assert_eq!(
        digest_of(&gamma_cfg, "ecr-copy", &format!("prod-{}", &hex[..12])).await,
        Some(digest)
    );
    assert_eq!(
        ecr.promote(&req).await.unwrap(),
        uri,
        "a second copy changes nothing"
    );
}

/// ECR refuses `PutImage` of a tag already in use in a repository with immutable tags with
/// `ImageTagAlreadyExistsException`, even when the tag holds the same image (moto answers
/// `ImageAlreadyExistsException`; the testkit's proxy answers as ECR does). Retagging the same
/// digest again, as a second wave, a retried attempt or a rollback to an earlier release do,
/// is success; a stage tag held by another image is an error naming both digests, and the tag
/// keeps its image.
#[tokio::test]
async fn retagging_into_a_repository_with_immutable_tags_never_moves_a_tag() {
    let moto = MotoServer::shared();
    let proxy = EcrProxy::start(&moto.endpoint()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let build_cfg = moto.sdk_config_for_account(BUILD).await.unwrap();
    aws_sdk_ecr::Client::new(&build_cfg)
        .create_repository()
        .repository_name("ecr-immutable")
        .image_tag_mutability(ImageTagMutability::Immutable)
        .send()
        .await
        .unwrap();
    push(&build_cfg, "ecr-immutable", "abc").await;
    push(&build_cfg, "ecr-immutable", "def").await;
    let good = digest_of(&build_cfg, "ecr-immutable", "abc").await.unwrap();
    let other = digest_of(&build_cfg, "ecr-immutable", "def").await.unwrap();
    assert_ne!(good, other);
    let ecr = artifacts_through(moto, &proxy);
    let build = account("build", BUILD, dir.path());
    let gamma = account("gamma", GAMMA, dir.path());
    let req = promote(&build, &gamma, "ecr-immutable", &good, Promote::Retag);

    let first = ecr.promote(&req).await.unwrap();
    assert_eq!(proxy.rewritten(), 0, "the first put tags the image");
    let again = ecr.promote(&req).await.unwrap();
    assert_eq!(again, first, "the same image under its own tag is success");
    assert_eq!(proxy.rewritten(), 1, "ECR refused the second put");

    // Someone else's image already holds the stage tag `other` would get.
    let taken = format!("prod-{}", &other.strip_prefix("sha256:").unwrap()[..12]);
    let layer = format!("{:0>64}", hex_of("someone-else"));
    aws_sdk_ecr::Client::new(&build_cfg)
        .put_image()
        .repository_name("ecr-immutable")
        .image_manifest(manifest(&layer))
        .image_tag(&taken)
        .send()
        .await
        .unwrap();
    let theirs = digest_of(&build_cfg, "ecr-immutable", &taken)
        .await
        .unwrap();
    let refused = ecr
        .promote(&promote(
            &build,
            &gamma,
            "ecr-immutable",
            &other,
            Promote::Retag,
        ))
        .await
        .unwrap_err();
    let PortError::Failed(message) = &refused else {
        panic!("not a failure: {refused:?}");
    };
    assert!(
        message.contains(&theirs) && message.contains(&other) && message.contains("immutable"),
        "{message}"
    );
    assert_eq!(proxy.rewritten(), 2);
    assert_eq!(
        digest_of(&build_cfg, "ecr-immutable", &taken).await,
        Some(theirs),
        "the tag keeps its image"
    );
}

/// ECR answers `LayersNotFoundException` to a manifest whose layers replication has not copied
/// into the stage registry yet (the testkit's proxy answers so; moto does not check layers). A
/// copy puts it again on the artifact's wait schedule until ECR takes it, and fails with a
/// clear error when the wait runs out.
#[tokio::test]
async fn copying_waits_for_replicated_layers_within_the_artifacts_wait() {
    let moto = MotoServer::shared();
    let proxy = EcrProxy::start(&moto.endpoint()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let build_cfg = moto.sdk_config_for_account(BUILD).await.unwrap();
    let gamma_cfg = moto.sdk_config_for_account(GAMMA).await.unwrap();
    push(&build_cfg, "ecr-replicating", "abc").await;
    let digest = digest_of(&build_cfg, "ecr-replicating", "abc")
        .await
        .unwrap();
    let ecr = artifacts_through(moto, &proxy);
    let build = account("build", BUILD, dir.path());
    let gamma = account("gamma", GAMMA, dir.path());
    let req = promote(&build, &gamma, "ecr-replicating", &digest, Promote::Copy);

    proxy.missing_layers(3);
    let uri = ecr.promote(&req).await.unwrap();
    assert_eq!(
        uri,
        format!("{GAMMA}.dkr.ecr.{REGION}.amazonaws.com/ecr-replicating@{digest}")
    );
    assert_eq!(proxy.refused_layers(), 3);
    let hex = digest.strip_prefix("sha256:").unwrap();
    assert_eq!(
        digest_of(
            &gamma_cfg,
            "ecr-replicating",
            &format!("prod-{}", &hex[..12])
        )
        .await,
        Some(digest.clone())
    );

    // Never replicated within the wait (1 s here): a failure that says what to set up.
    proxy.missing_layers(usize::MAX);
    let mut other = req.clone();
    other.stage = "beta".into();
    let err = ecr.promote(&other).await.unwrap_err();
    let PortError::Failed(message) = &err else {
        panic!("not a failure: {err:?}");
    };
    assert!(
        message.contains("replication") && message.contains(&digest),
        "{message}"
    );
}

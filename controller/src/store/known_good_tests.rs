//! What a deploy applied is kept for its rollback: template bodies stored once by their
//! sha256, the typed spec on the deploy effect, and deploys recorded before it was kept.

use std::collections::BTreeMap;

use chrono::Utc;
use sha2::Digest as _;

use super::{EffectOutcome, Store};
use crate::domain::*;

fn sha(body: &str) -> String {
    hex::encode(sha2::Sha256::digest(body.as_bytes()))
}

async fn store(dir: &tempfile::TempDir) -> Store {
    let url = tollgate_testkit::state::url(dir.path());
    Store::open(&url).await.unwrap()
}

async fn release(store: &Store, id: i64) {
    sqlx::query("INSERT INTO releases (id, pipeline, sha, branch, author_name, author_email, message, created_at) VALUES ($1, 'shop', 'abc' || $1, 'main', 'A', 'a@x', 'm', 0)")
        .bind(id)
        .execute(store.pool())
        .await
        .unwrap();
}

fn spec(body: &str, image: &str, env: &str) -> AppliedSpec {
    AppliedSpec::CloudFormation {
        stack: "shop-beta".into(),
        template_sha256: sha(body),
        parameters: BTreeMap::from([
            ("Env".to_string(), env.to_string()),
            ("ImageUri".to_string(), image.to_string()),
        ]),
        image_parameter: "ImageUri".into(),
        capabilities: vec!["CAPABILITY_IAM".into()],
        execution_role: Some("arn:aws:iam::222222222222:role/cfn-exec".into()),
        observed: BTreeMap::new(),
    }
}

fn beta_stack() -> DeployedTo {
    DeployedTo {
        account: "beta".into(),
        account_id: "222222222222".into(),
        region: "eu-west-1".into(),
        name: "shop-beta".into(),
    }
}

async fn deployed(store: &Store, release: i64, attempt: u32, applied: Option<AppliedSpec>) {
    let e = Effect::new(
        "shop",
        ReleaseId(release),
        "beta",
        attempt,
        EffectKind::Deploy { wave: 0 },
    );
    store.begin_effect(&e, Utc::now()).await.unwrap();
    let output = EffectOutput::Deployed {
        image_uri: format!("repo@sha256:{release}"),
        outputs: BTreeMap::new(),
        to: applied.as_ref().map(|_| Box::new(beta_stack())),
        applied,
        timing: None,
    };
    let outcome = EffectOutcome::success("deployed").with(output);
    store.finish_effect(&e, &outcome, Utc::now()).await.unwrap();
}

#[tokio::test]
async fn the_same_template_body_is_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir).await;
    let body = r#"{"Resources": {"A": {"Type": "AWS::SSM::Parameter"}}}"#;
    let other = r#"{"Resources": {"B": {"Type": "AWS::SSM::Parameter"}}}"#;
    for _ in 0..3 {
        store
            .put_template(&sha(body), body, Utc::now())
            .await
            .unwrap();
    }
    store
        .put_template(&sha(other), other, Utc::now())
        .await
        .unwrap();

    let (rows,): (i64,) = sqlx::query_as("SELECT count(*) FROM templates")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(rows, 2, "three stores of one body and one of another");
    let read = store.template(&sha(body)).await.unwrap();
    assert_eq!(read.as_deref(), Some(body));
    assert_eq!(store.template(&sha("absent")).await.unwrap(), None);
}

#[tokio::test]
async fn a_body_under_a_sha256_that_is_not_its_own_is_refused_and_nothing_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir).await;
    let refused = store.put_template(&sha("one"), "two", Utc::now()).await;
    assert!(refused.is_err());
    assert_eq!(store.template(&sha("one")).await.unwrap(), None);
    assert_eq!(store.template(&sha("two")).await.unwrap(), None);
}

#[tokio::test]
async fn the_newest_succeeded_deploy_of_a_release_gives_its_applied_spec() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir).await;
    release(&store, 1).await;
    release(&store, 2).await;
    let body = "{}";
    deployed(&store, 1, 1, Some(spec(body, "repo@sha256:1", "one"))).await;
    deployed(&store, 1, 2, Some(spec(body, "repo@sha256:1", "two"))).await;
    // Recorded before the applied spec was kept: nothing to restore exactly.
    deployed(&store, 2, 1, None).await;

    let applied = store.applied(ReleaseId(1), "beta", 0).await.unwrap();
    assert_eq!(applied, Some(spec(body, "repo@sha256:1", "two")));
    assert_eq!(store.applied(ReleaseId(1), "beta", 1).await.unwrap(), None);
    assert_eq!(store.applied(ReleaseId(1), "gamma", 0).await.unwrap(), None);
    assert_eq!(store.applied(ReleaseId(2), "beta", 0).await.unwrap(), None);
    // Where it went comes with it; a deploy recorded before that was kept says nothing.
    let wave = store.deployed_wave(ReleaseId(1), "beta", 0).await.unwrap();
    assert_eq!(wave.and_then(|w| w.to), Some(beta_stack()));
    let wave = store.deployed_wave(ReleaseId(2), "beta", 0).await.unwrap();
    assert_eq!(wave.map(|w| (w.applied, w.to)), Some((None, None)));

    // A deploy row as the previous version wrote it (no `applied`) still decodes.
    sqlx::query(r#"UPDATE effects SET output = '{"kind":"deployed","image_uri":"repo@sha256:2","outputs":{}}' WHERE release_id = 2"#)
        .execute(store.pool())
        .await
        .unwrap();
    let old = store.effects_of(ReleaseId(2), "beta").await.unwrap();
    assert!(
        matches!(&old[0].output, EffectOutput::Deployed { applied: None, image_uri, .. } if image_uri == "repo@sha256:2"),
        "{:?}",
        old[0].output
    );
    assert_eq!(store.applied(ReleaseId(2), "beta", 0).await.unwrap(), None);
}

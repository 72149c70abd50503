//! What a deploy applied is kept for its rollback: template bodies stored once by their
//! sha256, the typed spec on the deploy effect, where a deploy began (recorded with its
//! intent), and deploys recorded before either was kept.

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
        kind: Some(DeployKind::CloudFormation),
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
    store.begin_effect(&e, None, Utc::now()).await.unwrap();
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

fn deploy(release: i64, wave: usize) -> Effect {
    Effect::new(
        "shop",
        ReleaseId(release),
        "beta",
        1,
        EffectKind::Deploy { wave },
    )
}

/// The place a deploy's intent records reads back typed, stays while the deploy is pending or
/// failed, and yields to where a succeeded deploy went; a second begin under the key changes
/// nothing.
#[tokio::test]
async fn a_deploy_records_where_it_begins_and_keeps_it_until_it_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir).await;
    release(&store, 1).await;
    let (first, second) = (deploy(1, 0), deploy(1, 1));
    let began = beta_stack();
    let elsewhere = DeployedTo {
        region: "ap-southeast-2".into(),
        ..beta_stack()
    };
    assert!(
        store
            .begin_effect(&first, Some(&began), Utc::now())
            .await
            .unwrap()
    );
    assert!(
        store
            .begin_effect(&second, Some(&began), Utc::now())
            .await
            .unwrap()
    );
    let again = store.begin_effect(&first, Some(&elsewhere), Utc::now());
    assert!(!again.await.unwrap(), "recorded before");

    let read = |key: String| {
        let store = store.clone();
        async move {
            let all = store.effects_of(ReleaseId(1), "beta").await.unwrap();
            all.into_iter().find(|e| e.key == key).unwrap()
        }
    };
    let pending = read(first.key.to_string()).await;
    assert_eq!(
        pending.place,
        Some(began.clone()),
        "the first begin's place stays"
    );
    assert_eq!(pending.deploy_place(), Some(&began));

    let failed = EffectOutcome::failure("resource Service failed to stabilize");
    store
        .finish_effect(&first, &failed, Utc::now())
        .await
        .unwrap();
    assert_eq!(
        read(first.key.to_string()).await.deploy_place(),
        Some(&began)
    );

    let went = EffectOutput::Deployed {
        image_uri: "repo@sha256:1".into(),
        outputs: BTreeMap::new(),
        applied: None,
        timing: None,
        to: Some(Box::new(elsewhere.clone())),
    };
    let ok = EffectOutcome::success("deployed").with(went);
    store.finish_effect(&second, &ok, Utc::now()).await.unwrap();
    let succeeded = read(second.key.to_string()).await;
    assert_eq!(succeeded.place, Some(began));
    assert_eq!(succeeded.deploy_place(), Some(&elsewhere), "where it went");
}

/// Only a deploy has a place: the store refuses one for another effect, and so does the
/// database (and a place that is not a JSON object). A deploy row as the previous version
/// wrote it, with no place, reads as none.
#[tokio::test]
async fn only_a_deploy_has_a_place_and_deploys_begun_before_it_was_kept_have_none() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir).await;
    release(&store, 1).await;
    let alarms = Effect::new(
        "shop",
        ReleaseId(1),
        "beta",
        1,
        EffectKind::CheckAlarms { round: 0 },
    );
    let place = beta_stack();
    let refused = store.begin_effect(&alarms, Some(&place), Utc::now());
    assert!(refused.await.is_err());
    assert!(store.begin_effect(&alarms, None, Utc::now()).await.unwrap());
    let forged =
        sqlx::query(r#"UPDATE effects SET place = '{"account":"beta"}' WHERE kind <> 'deploy'"#)
            .execute(store.pool())
            .await;
    assert!(forged.is_err(), "a place on an alarm read");

    let old = deploy(1, 0);
    sqlx::query("INSERT INTO effects (key, pipeline, release_id, stage, attempt, kind, spec, status, started_at) VALUES ($1, 'shop', 1, 'beta', 1, 'deploy', $2, 'pending', 0)")
        .bind(&old.key)
        .bind(serde_json::to_string(&old.kind).unwrap())
        .execute(store.pool())
        .await
        .unwrap();
    let not_json = sqlx::query("UPDATE effects SET place = 'eu-west-1' WHERE kind = 'deploy'")
        .execute(store.pool())
        .await;
    assert!(not_json.is_err(), "a place that is not JSON");

    let effects = store.effects_of(ReleaseId(1), "beta").await.unwrap();
    assert_eq!(effects.len(), 2);
    assert!(effects.iter().all(|e| e.place.is_none()), "{effects:?}");
    assert!(effects.iter().all(|e| e.deploy_place().is_none()));
}

/// Deploy rows as the previous version wrote them, with places that do not say whether they
/// are a stack or a pipeline, still read (no migration rewrites them): the intent's place and
/// the succeeded deploy's `to` come back without a kind, and match the stack of their name
/// in their account and region, or a pipeline of that name (which of the two it was is not
/// recorded), and nothing elsewhere.
#[tokio::test]
async fn places_recorded_before_their_kind_was_kept_still_read_and_match_their_name() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir).await;
    release(&store, 1).await;
    let old =
        r#"{"account":"beta","account_id":"222222222222","region":"eu-west-1","name":"shop-beta"}"#;
    let output =
        format!(r#"{{"kind":"deployed","image_uri":"repo@sha256:1","outputs":{{}},"to":{old}}}"#);
    for (e, status, output) in [
        (deploy(1, 0), "pending", r#"{"kind":"none"}"#.to_string()),
        (deploy(1, 1), "succeeded", output),
    ] {
        sqlx::query("INSERT INTO effects (key, pipeline, release_id, stage, attempt, kind, spec, status, output, started_at, place) VALUES ($1, 'shop', 1, 'beta', 1, 'deploy', $2, $3, $4, 0, $5)")
            .bind(e.key.to_string())
            .bind(serde_json::to_string(&e.kind).unwrap())
            .bind(status)
            .bind(output)
            .bind(old)
            .execute(store.pool())
            .await
            .unwrap();
    }

    let effects = store.effects_of(ReleaseId(1), "beta").await.unwrap();
    let kindless = DeployedTo {
        kind: None,
        ..beta_stack()
    };
    let pipeline = DeployedTo {
        kind: Some(DeployKind::CodePipeline),
        ..beta_stack()
    };
    let elsewhere = DeployedTo {
        region: "ap-southeast-2".into(),
        ..beta_stack()
    };
    assert_eq!(effects.len(), 2);
    for e in &effects {
        let place = e.deploy_place().unwrap();
        assert_eq!(place, &kindless, "{e:?}");
        assert!(place.same_place(&beta_stack()));
        assert!(place.same_place(&pipeline));
        assert!(!place.same_place(&elsewhere));
    }
    let deployed = store.reads().deployed_wave(ReleaseId(1), "beta", 1).await;
    assert_eq!(deployed.unwrap().unwrap().to, Some(kindless));
}

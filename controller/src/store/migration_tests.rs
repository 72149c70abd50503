//! A state database written before facts were typed opens and reads correctly: its effects get
//! their kind and typed outcome, its reasons stay readable as recorded text.

use std::borrow::Cow;

use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection};

use super::Store;
use crate::domain::*;

/// A database at migration 3 with rows as that version wrote them.
async fn legacy(path: &std::path::Path) {
    let opts = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true);
    let mut c = opts.connect().await.unwrap();
    let mut m = sqlx::migrate!("./migrations");
    m.migrations = Cow::Owned(m.migrations[..3].to_vec());
    m.run(&mut c).await.unwrap();
    let rows = [
        "INSERT INTO releases (id, pipeline, sha, branch, author_name, author_email, message, created_at, digest, bad_stage, bad_reason) VALUES (1, 'shop', 'abc', 'main', 'A', 'a@x', 'm', 0, 'sha256:1', 'prod', 'alarm api-5xx fired at 2026-01-01 10:00:00 UTC')",
        "INSERT INTO stage_runs (release_id, stage, status, reason, attempt, since) VALUES (1, 'prod', 'rolled_back', 'alarm api-5xx fired; restored r0', 1, 0)",
        "INSERT INTO stage_runs (release_id, stage, status, reason, attempt, since) VALUES (1, 'beta', 'baking', 'baking, 3m left', 1, 0)",
        r#"INSERT INTO effects (key, pipeline, release_id, stage, status, output, started_at) VALUES ('shop/r1/-/a0/resolve', 'shop', 1, '', 'succeeded', '{"digest":"sha256:1"}', 0)"#,
        r#"INSERT INTO effects (key, pipeline, release_id, stage, status, output, started_at) VALUES ('shop/r1/deploy-eu/a1/deploy-1', 'shop', 1, 'deploy-eu', 'succeeded', '{"image_uri":"repo@sha256:1","Url":"https://x"}', 0)"#,
        r#"INSERT INTO effects (key, pipeline, release_id, stage, status, output, started_at) VALUES ('shop/r1/prod/a2/poll-alarms-3', 'shop', 1, 'prod', 'succeeded', '{"in_alarm":"api-5xx,api-4xx"}', 0)"#,
        r#"INSERT INTO effects (key, pipeline, release_id, stage, status, output, started_at) VALUES ('shop/r1/prod/a2/check-alarms-0', 'shop', 1, 'prod', 'succeeded', '{"in_alarm":""}', 0)"#,
        r#"INSERT INTO effects (key, pipeline, release_id, stage, status, output, started_at) VALUES ('shop/r1/prod/a1/rollback-0-to-7', 'shop', 1, 'prod', 'succeeded', '{"image_uri":"repo@sha256:7","rollback_latency_ms":"41"}', 0)"#,
        "INSERT INTO effects (key, pipeline, release_id, stage, status, started_at) VALUES ('shop/r1/prod/a1/test-after-smoke-eu', 'shop', 1, 'prod', 'failed', 0)",
        "INSERT INTO effects (key, pipeline, release_id, stage, status, started_at) VALUES ('shop/r1/prod/a1/approval-request-2', 'shop', 1, 'prod', 'pending', 0)",
        "INSERT INTO effects (key, pipeline, release_id, stage, status, started_at) VALUES ('shop/r1/prod/a1/notify-rolled-back', 'shop', 1, 'prod', 'succeeded', 0)",
        "INSERT INTO effects (key, pipeline, release_id, stage, status, started_at) VALUES ('shop/r1/prod/a1/report-in_progress', 'shop', 1, 'prod', 'pending', 0)",
    ];
    for sql in rows {
        sqlx::query(sql).execute(&mut c).await.unwrap();
    }
    c.close().await.unwrap();
}

#[tokio::test]
async fn a_database_from_before_typed_facts_is_converted_once_and_reads_as_typed_data() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    legacy(&path).await;
    let store = Store::open(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    let effects = store.effects_with_prefix("shop/r1/").await.unwrap();
    let by_key = |k: &str| effects.iter().find(|e| e.key.ends_with(k)).unwrap().clone();
    let kinds: Vec<(String, EffectKind, EffectOutput)> = [
        "/resolve",
        "/deploy-1",
        "/poll-alarms-3",
        "/check-alarms-0",
        "/rollback-0-to-7",
        "/test-after-smoke-eu",
        "/approval-request-2",
        "/notify-rolled-back",
        "/report-in_progress",
    ]
    .iter()
    .map(|k| {
        let e = by_key(k);
        (k.to_string(), e.kind, e.output)
    })
    .collect();
    let outputs = std::collections::BTreeMap::from([("Url".into(), "https://x".into())]);
    let want = vec![
        (
            EffectKind::ResolveArtifact,
            EffectOutput::Resolved {
                digest: "sha256:1".into(),
            },
        ),
        (
            EffectKind::Deploy { wave: 1 },
            EffectOutput::Deployed {
                image_uri: "repo@sha256:1".into(),
                outputs,
                applied: None,
                timing: None,
                to: None,
            },
        ),
        (
            EffectKind::PollAlarms { round: 3 },
            // Written before bake reads counted data points: no readings.
            EffectOutput::Alarms {
                in_alarm: vec!["api-5xx".into(), "api-4xx".into()],
                readings: vec![],
            },
        ),
        (
            EffectKind::CheckAlarms { round: 0 },
            EffectOutput::Alarms {
                in_alarm: vec![],
                readings: vec![],
            },
        ),
        (
            EffectKind::Rollback {
                wave: 0,
                target: ReleaseId(7),
            },
            EffectOutput::RolledBack {
                image_uri: "repo@sha256:7".into(),
                latency_ms: Some(41),
                timing: None,
            },
        ),
        (
            EffectKind::RunTest {
                test: "smoke-eu".into(),
                phase: Phase::After,
            },
            EffectOutput::None,
        ),
        (EffectKind::RequestApproval { round: 2 }, EffectOutput::None),
        (
            EffectKind::Notify {
                event: NotifyEvent::RolledBack,
            },
            EffectOutput::None,
        ),
        (
            EffectKind::Report {
                state: ReportState::InProgress,
            },
            EffectOutput::None,
        ),
    ];
    for ((key, kind, output), (want_kind, want_output)) in kinds.into_iter().zip(want) {
        assert_eq!((kind, output), (want_kind, want_output), "{key}");
    }

    let attempts: Vec<u32> = ["/resolve", "/poll-alarms-3", "/rollback-0-to-7"]
        .iter()
        .map(|k| by_key(k).attempt)
        .collect();
    assert_eq!(
        attempts,
        vec![0, 2, 1],
        "each effect keeps its run's attempt"
    );

    let runs = store.stage_runs_of(ReleaseId(1)).await.unwrap();
    let baking = runs.iter().find(|r| r.stage == "beta").unwrap();
    assert_eq!(
        baking.reason,
        Reason::Recorded {
            text: "baking, 3m left".into()
        }
    );
    let release = store.release(ReleaseId(1)).await.unwrap().unwrap();
    let bad = release.bad.unwrap();
    assert_eq!(
        bad.reason.describe(chrono::Utc::now()),
        "alarm api-5xx fired at 2026-01-01 10:00:00 UTC"
    );

    // A kind the effect does not have is refused by the database itself.
    let forged =
        sqlx::query("UPDATE effects SET kind = 'deploy' WHERE key = 'shop/r1/-/a0/resolve'")
            .execute(store.pool())
            .await;
    assert!(forged.is_err(), "the kind column must agree with the spec");
}

#[tokio::test]
async fn the_kind_column_admits_exactly_the_kinds_the_code_has() {
    let store = Store::open("sqlite::memory:").await.unwrap();
    sqlx::query("INSERT INTO releases (id, pipeline, sha, branch, author_name, author_email, message, created_at) VALUES (1, 'shop', 'abc', 'main', 'A', 'a@x', 'm', 0)")
        .execute(store.pool())
        .await
        .unwrap();
    let insert = |tag: &str| {
        let spec = format!(r#"{{"kind":"{tag}"}}"#);
        let sql = format!(
            "INSERT INTO effects (key, pipeline, release_id, stage, attempt, kind, spec, status, started_at) VALUES ('k-{tag}', 'shop', 1, '', 0, '{tag}', '{spec}', 'pending', 0)"
        );
        let pool = store.pool().clone();
        async move { sqlx::query(&sql).execute(&pool).await }
    };
    for tag in EffectKind::TAGS {
        assert!(insert(tag).await.is_ok(), "{tag} refused by the schema");
    }
    assert!(
        insert("reboot").await.is_err(),
        "an unknown kind is refused"
    );
}

/// A database at migration 4 (before approvals had an attempt) with a release and an approval.
async fn before_attempts(path: &std::path::Path) {
    let opts = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true);
    let mut c = opts.connect().await.unwrap();
    let mut m = sqlx::migrate!("./migrations");
    m.migrations = Cow::Owned(
        m.migrations
            .iter()
            .filter(|x| x.version <= 4)
            .cloned()
            .collect(),
    );
    m.run(&mut c).await.unwrap();
    let rows = [
        "INSERT INTO releases (id, pipeline, sha, branch, author_name, author_email, author_login, message, created_at) VALUES (1, 'shop', 'abc', 'main', 'Carol', 'carol@example.com', 'carol', 'm', 0)",
        "INSERT INTO releases (id, pipeline, sha, branch, author_name, author_email, message, created_at) VALUES (2, 'shop', 'def', 'main', 'Nobody', '', 'm', 0)",
        "INSERT INTO stage_runs (release_id, stage, status, reason, attempt, since) VALUES (1, 'prod', 'awaiting_approval', '{\"kind\":\"queued\"}', 2, 0)",
        "INSERT INTO approvals (pipeline, release_id, stage, approver, decision, verified, at, actor) VALUES ('shop', 1, 'prod', 'alice', 'approve', 1, 0, 'approver:alice')",
    ];
    for sql in rows {
        sqlx::query(sql).execute(&mut c).await.unwrap();
    }
    c.close().await.unwrap();
}

#[tokio::test]
async fn approvals_from_before_attempts_belong_to_attempt_one_and_authors_become_contributors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    before_attempts(&path).await;
    let store = Store::open(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    let approvals = store.approvals_of(ReleaseId(1), "prod").await.unwrap();
    assert_eq!(approvals.len(), 1);
    assert_eq!((approvals[0].attempt, approvals[0].verified), (1, true));
    let r = store.release(ReleaseId(1)).await.unwrap().unwrap();
    let author = Contributor::new(
        ContributorRole::Author,
        Some("carol"),
        Some("carol@example.com"),
    );
    assert_eq!(r.contributors, author.into_iter().collect::<Vec<_>>());
    assert!(!r.pulls_checked);
    let nobody = store.release(ReleaseId(2)).await.unwrap().unwrap();
    assert!(nobody.contributors.is_empty(), "{:?}", nobody.contributors);
}

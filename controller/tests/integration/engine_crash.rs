//! Crash safety: the engine is stopped dead after every possible step of a full promotion
//! (every store write and every port call is a step; after the fuse blows none of them
//! happens, and the runtime with all its tasks is dropped), then restarted on the same
//! SQLite file with the same outside world. Every run must reach the same final state as
//! an uninterrupted promotion, and every side effect must have happened exactly once.

use crate::engine_support;

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::Duration;
use engine_support::*;
use tollgate::domain::{Decision, RunStatus};
use tollgate::engine::Ingested;
use tollgate::engine::{Engine, EngineError};
use tollgate_testkit::fuse::Fuse;

/// Plays the outside world for one full promotion: a push, an approval, time passing.
async fn drive(h: &Harness, engine: &Engine) -> Result<(), EngineError> {
    let id = match engine
        .record_release(&release(1), &delivery("push-1"))
        .await?
    {
        Ingested::Recorded(id) => id,
        Ingested::Duplicate => engine.reads().recent_runs("backend", 1).await?[0].0.id,
    };
    for _ in 0..20 {
        settle(engine).await?;
        match status(engine, id, "prod").await {
            RunStatus::AwaitingApproval => {
                engine
                    .record_approval(
                        &approval(id, "alice", Decision::Approve),
                        &delivery("appr-1"),
                    )
                    .await?;
            }
            RunStatus::Baking => h.clock.advance(Duration::minutes(11)),
            RunStatus::Succeeded => return Ok(()),
            _ => {}
        }
    }
    panic!("the promotion did not finish");
}

/// What the outside world saw, in a comparable form.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    statuses: Vec<(String, RunStatus)>,
    /// Idempotency keys of effects that change something (alarm reads excluded), with the
    /// number of times each was applied.
    applied: BTreeMap<String, u32>,
    deployed: Vec<(String, String, String)>,
    published: usize,
    reports: Vec<(String, String)>,
}

async fn outcome(h: &Harness, engine: &Engine) -> Outcome {
    let runs = engine.reads().recent_runs("backend", 5).await.unwrap();
    let statuses = runs[0]
        .1
        .iter()
        .map(|r| (r.stage.to_string(), r.status))
        .collect();
    let pending = engine
        .reads()
        .effects_with_prefix("backend/")
        .await
        .unwrap();
    assert!(
        pending
            .iter()
            .all(|e| e.status != tollgate::domain::EffectStatus::Pending),
        "an effect was left pending"
    );
    let ledger = h.fakes.ledger();
    let applied = ledger
        .applied
        .into_iter()
        .filter(|(k, _)| !k.contains("alarms"))
        .collect();
    h.fakes.with(|w| Outcome {
        statuses,
        applied,
        deployed: w.deployed.clone(),
        published: w.published.len(),
        reports: w
            .reports
            .iter()
            .map(|r| (r.environment.clone(), r.state.as_str().to_string()))
            .collect(),
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// An uninterrupted promotion, and how many steps it took.
fn baseline() -> (Outcome, u64) {
    let h = Harness::new();
    let fuse = Fuse::new(u64::MAX);
    runtime().block_on(async {
        let engine = h.engine(Some(fuse.clone())).await;
        drive(&h, &engine).await.unwrap();
        (outcome(&h, &engine).await, fuse.steps())
    })
}

#[test]
fn a_crash_after_any_step_neither_loses_nor_repeats_a_side_effect() {
    let (expected, steps) = baseline();
    assert!(steps > 30, "a full promotion takes many steps ({steps})");
    assert!(
        expected
            .statuses
            .iter()
            .all(|(_, s)| *s == RunStatus::Succeeded),
        "{expected:?}"
    );
    assert_eq!(expected.deployed.len(), 4, "beta, gamma and two prod waves");
    for crash_at in 0..=steps {
        let h = Harness::new();
        let fuse = Fuse::new(crash_at);
        let first = runtime();
        first.block_on(async {
            let engine = h.engine(Some(fuse.clone())).await;
            let _ = drive(&h, &engine).await;
        });
        drop(first);
        let got = runtime().block_on(async {
            let engine = h.engine(None).await;
            drive(&h, &engine).await.unwrap();
            outcome(&h, &engine).await
        });
        assert_eq!(
            got.statuses, expected.statuses,
            "final statuses after a crash at step {crash_at}"
        );
        assert_eq!(
            got.deployed, expected.deployed,
            "deploys after a crash at step {crash_at}"
        );
        assert_eq!(
            got.applied.keys().collect::<Vec<_>>(),
            expected.applied.keys().collect::<Vec<_>>(),
            "side effects after a crash at step {crash_at}"
        );
        assert!(
            got.applied.values().all(|n| *n == 1),
            "each key applied once (crash at {crash_at})"
        );
        assert_eq!(
            got.published, expected.published,
            "notifications after a crash at step {crash_at}"
        );
        assert_eq!(
            got.reports, expected.reports,
            "GitHub statuses after a crash at step {crash_at}"
        );
    }
    println!(
        "crash-tested {} crash points of a full promotion",
        steps + 1
    );
    let _ = Arc::new(());
}

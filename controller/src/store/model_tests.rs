//! The model and the store agree: the planner's tests run against the simulated engine
//! (`Sim::apply_change`), the controller against SQL (`rows::apply_one`). Here random worlds
//! drive the simulator; before each reconcile the store is loaded with the simulator's state,
//! the very plans the simulator applied are applied to the store the way the engine does
//! (effects begun, then the state changes), and the snapshot the store then loads must equal
//! the simulator's.

use chrono::{DateTime, Utc};
use proptest::prelude::*;

use super::{Store, ms, rows};
use crate::domain::StageName;
use crate::domain::tests::properties::{Ev, apply_event, build, chaotic, knobs};
use crate::domain::tests::sim::{Applied, PIPELINE, Sim};
use crate::domain::*;

/// A retired release and the rows it leaves in the store.
type Retired = (
    Release,
    Vec<StageRun>,
    Vec<EffectRecord>,
    Vec<ApprovalRecord>,
);

/// What the simulator holds before a reconcile: the working set, and what left it.
struct Before {
    snap: Snapshot,
    retired: Vec<Retired>,
}

fn before(sim: &Sim) -> Before {
    let a = &sim.archive;
    let retired = sim
        .retired
        .iter()
        .filter_map(|id| {
            let rel = a
                .releases
                .get(id)
                .or_else(|| sim.snap.releases.get(id))?
                .clone();
            let runs = a.runs.iter().filter(|r| r.release == *id).cloned();
            let effects = a.effects.iter().filter(|e| e.release == *id).cloned();
            let approvals = a.approvals.iter().filter(|x| x.release == *id).cloned();
            Some((rel, runs.collect(), effects.collect(), approvals.collect()))
        })
        .collect();
    Before {
        snap: sim.snap.clone(),
        retired,
    }
}

/// Empties every table the snapshot reads (the event log is append-only and not read).
async fn reset(store: &Store) -> Result<()> {
    let mut tx = store.pool.begin().await?;
    for table in [
        "effects",
        "approvals",
        "stage_runs",
        "stage_history",
        "retry_requests",
        "rollback_requests",
        "alarm_events",
        "pipelines",
        "stages",
        "deliveries",
        "releases",
    ] {
        sqlx::query(&format!("DELETE FROM {table}"))
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

type Result<T> = std::result::Result<T, super::StoreError>;

async fn seed(store: &Store, b: &Before) -> Result<()> {
    let mut tx = store.pool.begin().await?;
    let c = &mut *tx;
    for a in &b.snap.alarms {
        sqlx::query("INSERT INTO alarm_events (id, pipeline, stage, alarm, firing, at, changed_at) VALUES ($1, $2, $3, $4, $5, $6, $7)")
            .bind(a.id).bind(PIPELINE).bind(&a.stage).bind(&a.alarm).bind(i64::from(a.firing)).bind(ms(a.at)).bind(ms(a.changed_at))
            .execute(&mut *c).await?;
    }
    let retired = b.retired.iter().map(|(r, ..)| (r, false));
    let live = b.snap.releases.values().map(|r| {
        let gone = b.retired.iter().any(|(x, ..)| x.id == r.id);
        (r, !gone)
    });
    let mut seen = std::collections::BTreeSet::new();
    for (r, active) in live.chain(retired) {
        if seen.insert(r.id) {
            insert_release(c, r, active).await?;
        }
    }
    let runs = b
        .snap
        .runs
        .iter()
        .chain(b.retired.iter().flat_map(|x| &x.1));
    for run in runs {
        sqlx::query("INSERT INTO stage_runs (release_id, stage, status, reason, attempt, since, rollback_alarm, deploy_started) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)")
            .bind(run.release.0).bind(&run.stage).bind(run.status.as_str())
            .bind(rows::reason_json(&run.reason)).bind(i64::from(run.attempt)).bind(ms(run.since))
            .bind(run.rollback_alarm).bind(run.deploy_started.map(ms))
            .execute(&mut *c).await?;
    }
    let effects = b
        .snap
        .effects
        .iter()
        .chain(b.retired.iter().flat_map(|x| &x.2));
    for e in effects {
        sqlx::query("INSERT INTO effects (key, pipeline, release_id, stage, attempt, kind, spec, status, detail, output, started_at, finished_at, place) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)")
            .bind(&e.key).bind(PIPELINE).bind(e.release.0).bind(&e.stage).bind(i64::from(e.attempt)).bind(e.kind.tag())
            .bind(serde_json::to_string(&e.kind).unwrap()).bind(e.status.as_str()).bind(&e.detail)
            .bind(serde_json::to_string(&e.output).unwrap()).bind(ms(e.started_at))
            .bind(e.finished_at.map(ms))
            .bind(e.place.as_ref().map(|p| serde_json::to_string(p).unwrap()))
            .execute(&mut *c).await?;
    }
    let approvals = b
        .snap
        .approvals
        .iter()
        .chain(b.retired.iter().flat_map(|x| &x.3));
    for a in approvals {
        sqlx::query("INSERT INTO approvals (pipeline, release_id, stage, approver, decision, verified, at, actor, attempt) VALUES ($1, $2, $3, $4, $5, $6, $7, 'test', $8)")
            .bind(PIPELINE).bind(a.release.0).bind(&a.stage).bind(&a.approver)
            .bind(a.decision.as_str()).bind(i64::from(a.verified)).bind(ms(a.at)).bind(i64::from(a.attempt))
            .execute(&mut *c).await?;
    }
    if let Some(why) = &b.snap.paused {
        rows::set_pause(c, PIPELINE, None, Some(why)).await?;
    }
    for s in &b.snap.stages {
        seed_stage(c, s).await?;
    }
    for r in &b.snap.retry_requests {
        sqlx::query("INSERT INTO retry_requests (id, pipeline, release_id, actor, at) VALUES ($1, $2, $3, $4, 0)")
            .bind(r.id).bind(PIPELINE).bind(r.release.0).bind(&r.by)
            .execute(&mut *c).await?;
    }
    super::follow_explicit_ids(c, store.backend).await?;
    tx.commit().await?;
    Ok(())
}

/// The store for these tests: one in memory, or a fresh PostgreSQL database when the tests
/// run against PostgreSQL.
fn test_url() -> String {
    match tollgate_testkit::state::postgres_server() {
        Some(server) => tollgate_testkit::state::fresh_postgres_database(&server),
        None => "sqlite::memory:".into(),
    }
}

async fn insert_release(c: &mut sqlx::AnyConnection, r: &Release, active: bool) -> Result<()> {
    let bad = r.bad.as_ref();
    sqlx::query("INSERT INTO releases (id, pipeline, sha, branch, author_name, author_email, author_login, message, url, digest, created_at, bad_stage, bad_reason, alarm_override, window_override, failed, active, contributors, pulls_checked) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19)")
        .bind(r.id.0).bind(&r.pipeline).bind(&r.sha).bind(&r.branch).bind(&r.author_name)
        .bind(&r.author_email).bind(&r.author_login).bind(&r.message).bind(&r.url).bind(&r.digest)
        .bind(ms(r.created_at)).bind(bad.map(|b| b.stage.clone()))
        .bind(bad.map(|b| rows::reason_json(&b.reason))).bind(&r.alarm_override)
        .bind(&r.window_override).bind(&r.failed).bind(i64::from(active))
        .bind(rows::contributors_json(&r.contributors)).bind(i64::from(r.pulls_checked))
        .execute(&mut *c).await?;
    Ok(())
}

async fn seed_stage(c: &mut sqlx::AnyConnection, s: &StageState) -> Result<()> {
    if let Some(why) = &s.paused {
        rows::set_pause(c, PIPELINE, Some(&s.name), Some(why)).await?;
    }
    for id in &s.history {
        sqlx::query(
            "INSERT INTO stage_history (pipeline, stage, release_id, at) VALUES ($1, $2, $3, 0)",
        )
        .bind(PIPELINE)
        .bind(&s.name)
        .bind(id.0)
        .execute(&mut *c)
        .await?;
    }
    if let Some(r) = &s.rollback_request {
        sqlx::query("INSERT INTO rollback_requests (id, pipeline, stage, actor, at) VALUES ($1, $2, $3, $4, 0)")
            .bind(r.id).bind(PIPELINE).bind(&s.name).bind(&r.by)
            .execute(&mut *c).await?;
    }
    Ok(())
}

/// Both sides in one order, so that equal states compare equal.
fn normal(mut s: Snapshot) -> Snapshot {
    s.runs
        .sort_by(|a, b| (a.release, &a.stage).cmp(&(b.release, &b.stage)));
    s.effects.sort_by(|a, b| a.key.cmp(&b.key));
    s.approvals.sort_by(|a, b| {
        (a.release, &a.stage, a.attempt, &a.approver).cmp(&(
            b.release,
            &b.stage,
            b.attempt,
            &b.approver,
        ))
    });
    s.alarms.sort_by_key(|a| a.id);
    s.retry_requests.sort_by_key(|r| r.id);
    s
}

/// Loads the simulator's state before a reconcile into the store, applies the same plans the
/// way the engine does, and says where the store's snapshot differs from the simulator's.
async fn replay(
    store: &Store,
    b: &Before,
    journal: &[Applied],
    sim: &Sim,
) -> Result<Option<String>> {
    reset(store).await?;
    seed(store, b).await?;
    for step in journal {
        for e in &step.begun {
            store.begin_effect(e, None, step.at).await?;
        }
        store.apply(PIPELINE, &step.changes, step.at).await?;
    }
    let stages: Vec<StageName> = sim.cfg.stages.iter().map(|s| s.name.clone()).collect();
    let since = DateTime::<Utc>::UNIX_EPOCH;
    let got = normal(store.snapshot(PIPELINE, &stages, since).await?);
    let want = normal(sim.snap.clone());
    Ok((got != want).then(|| difference(&got, &want)))
}

fn difference(got: &Snapshot, want: &Snapshot) -> String {
    let g = format!("{got:#?}");
    let w = format!("{want:#?}");
    let first = g
        .lines()
        .zip(w.lines())
        .position(|(a, b)| a != b)
        .unwrap_or(0);
    let around = |t: &str| {
        t.lines()
            .skip(first.saturating_sub(8))
            .take(16)
            .collect::<Vec<_>>()
            .join("\n")
    };
    format!("store:\n{}\nmodel:\n{}", around(&g), around(&w))
}

/// One runtime and one in-memory store for every case (each comparison empties it first).
fn shared() -> &'static (tokio::runtime::Runtime, Store) {
    static SHARED: std::sync::OnceLock<(tokio::runtime::Runtime, Store)> =
        std::sync::OnceLock::new();
    SHARED.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let store = rt.block_on(Store::open(&test_url())).unwrap();
        (rt, store)
    })
}

fn check(
    knobs: &crate::domain::tests::properties::Knobs,
    events: &[(Ev, bool)],
) -> std::result::Result<usize, String> {
    let (rt, store) = shared();
    let mut sim = Sim::new(build(knobs));
    sim.auto_approve = false;
    let mut compared = 0;
    for (i, (ev, reconcile)) in events.iter().enumerate() {
        apply_event(&mut sim, ev);
        if !reconcile && i + 1 < events.len() {
            continue;
        }
        let b = before(&sim);
        sim.journal = Some(Vec::new());
        sim.settle();
        let journal = sim.journal.take().unwrap_or_default();
        if journal
            .iter()
            .all(|j| j.changes.is_empty() && j.begun.is_empty())
        {
            continue;
        }
        compared += 1;
        let diff = rt
            .block_on(replay(store, &b, &journal, &sim))
            .map_err(|e| format!("after event {i} ({ev:?}): store error {e}"))?;
        if let Some(d) = diff {
            return Err(format!(
                "after event {i} ({ev:?}) the store and the model differ:\n{d}"
            ));
        }
    }
    Ok(compared)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn the_store_applies_every_plan_exactly_as_the_model_does(
        k in knobs(),
        events in prop::collection::vec((chaotic(), prop::bool::weighted(0.75)), 1..30),
    ) {
        if let Err(e) = check(&k, &events) {
            return Err(TestCaseError::fail(e));
        }
    }
}

#[test]
fn the_comparison_sees_a_difference_when_there_is_one() {
    // A store that applied one change less than the model must not pass.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let store = rt.block_on(Store::open(&test_url())).unwrap();
    let mut sim = Sim::new(crate::domain::tests::sim::three_stages());
    let r = sim.new_release();
    sim.settle();
    let resolve = sim.resolve_key(r);
    sim.succeed(&resolve);
    let b = before(&sim);
    sim.journal = Some(Vec::new());
    sim.settle();
    let mut journal = sim.journal.take().unwrap();
    assert!(journal.iter().any(|j| !j.changes.is_empty()), "{r} moved");
    let last = journal
        .iter_mut()
        .rev()
        .find(|j| !j.changes.is_empty())
        .unwrap();
    last.changes.pop();
    let diff = rt.block_on(replay(&store, &b, &journal, &sim)).unwrap();
    assert!(diff.is_some(), "a missing change went unnoticed");
}

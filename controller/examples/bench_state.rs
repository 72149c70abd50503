//! Benchmark: how the state grows with releases, and whether the planner's snapshot does.
//!
//! Runs the real engine (reconciler, planner, executor, store) in this process over a real
//! SQLite file, with the in-memory fakes of the testkit as AWS and GitHub and a manual clock,
//! on the engine tests' world ([`tollgate_testkit::engine_world`]): one pipeline, beta → gamma
//! → prod (prod in two regions), a test before beta and after each deploy, an approval and a
//! 10-minute bake in prod. Releases are recorded one after the other as deliveries are, and
//! each is driven until Prod succeeded (approved by alice when it asks, the clock moved past
//! the bake), so the database holds what the engine writes: releases, runs, approvals,
//! effects with their outcomes, the event log, the stage histories. Every write goes through
//! the store's writer as in `tollgate serve`; the benchmark only stops waiting for an effect as
//! soon as it has ended (it yields instead of sleeping a timer tick). 10,000 releases took
//! 59 minutes on the shared 2-core machine (docs/benchmarks.md).
//!
//! At 100, 1,000 and 10,000 releases it prints the database's size (after a WAL checkpoint),
//! the bytes per release and per event-log entry (from SQLite's `dbstat` table), and the size
//! of the snapshot the planner loads for each reconcile ([`Store::snapshot`]): its rows and
//! the length of its debug rendering; and, for comparison, the rows it would hold if it still
//! read every stage's whole history (as it did before the history was bounded).
//!
//! The file lives in /dev/shm when there is one (the figures are sizes, not times; there the
//! run takes minutes instead of many more).
//!
//! ```text
//! cargo build --release -p tollgate --example bench_state
//! target/release/examples/bench_state --releases 10000
//! ```
//! Bounded: at most 10,000 releases; each release at most 200 reconciles.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use sqlx::Row;
use tollgate::domain::{Decision, RunStatus, Snapshot, StageName};
use tollgate::engine::{Delivery, Engine, ManualClock};
use tollgate::store::Store;
use tollgate_testkit::engine_world::{approval, config_in, release, start_time};
use tollgate_testkit::fakes::Fakes;

const MAX_RELEASES: usize = 10_000;
const CHECKPOINTS: [usize; 3] = [100, 1_000, 10_000];

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("benchmark failed: {e:#}");
        std::process::exit(1);
    }
}

fn args() -> Result<usize> {
    let mut releases = MAX_RELEASES;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let value = it.next().with_context(|| format!("{a} needs a value"))?;
        match a.as_str() {
            "--releases" => releases = value.parse()?,
            other => return Err(anyhow!("unknown argument {other}")),
        }
    }
    ensure!(
        (1..=MAX_RELEASES).contains(&releases),
        "--releases must be 1..={MAX_RELEASES}"
    );
    Ok(releases)
}

fn workdir() -> Result<tempfile::TempDir> {
    let shm = Path::new("/dev/shm");
    Ok(if shm.is_dir() {
        tempfile::tempdir_in(shm)?
    } else {
        tempfile::tempdir()?
    })
}

/// Waits until no effect of the engine runs (bounded: 5 s).
async fn effects_ended(engine: &Engine) -> Result<()> {
    let began = Instant::now();
    while engine.in_flight() > 0 {
        ensure!(
            began.elapsed() < Duration::from_secs(5),
            "an effect ran for 5 s"
        );
        tokio::task::yield_now().await;
    }
    Ok(())
}

/// Records release `n` and reconciles until Prod succeeded, approving it when Prod asks and
/// moving the clock past the bake.
async fn promote(engine: &Engine, clock: &ManualClock, n: usize) -> Result<()> {
    let d = Delivery {
        source: "github".into(),
        id: format!("delivery-{n}"),
    };
    let number = u32::try_from(n)?;
    let id = match engine.record_release(&release(number), &d).await? {
        tollgate::engine::Ingested::Recorded(id) => id,
        tollgate::engine::Ingested::Duplicate => bail!("release {n} taken for a duplicate"),
    };
    for _ in 0..200 {
        let next = engine.reconcile("backend").await?;
        effects_ended(engine).await?;
        let run = engine.reads().stage_run(id, "prod").await?;
        match run.map(|r| r.status) {
            Some(RunStatus::Succeeded) => return Ok(()),
            Some(RunStatus::AwaitingApproval) => {
                let approved = approval(id, "alice", Decision::Approve);
                let d = Delivery {
                    source: "approval".into(),
                    id: format!("approval-{n}"),
                };
                engine.record_approval(&approved, &d).await?;
                continue;
            }
            Some(s) if s.is_terminal() => bail!("release {n} ended {s:?} in prod"),
            _ => {}
        }
        // Nothing running: the next thing due is a deadline (the bake's end); move time there.
        let now = engine.now();
        if let (0, Some(at)) = (engine.in_flight(), next)
            && at > now
        {
            clock.advance(at - now);
        }
    }
    bail!("release {n} did not reach prod in 200 reconciles")
}

struct Sizes {
    releases: usize,
    db_bytes: i64,
    events: i64,
    events_bytes: Option<i64>,
    snapshot_rows: usize,
    snapshot_bytes: usize,
    /// The rows the snapshot held when it read every stage's whole history (before the bound).
    unbounded_rows: usize,
}

fn rows(s: &Snapshot) -> usize {
    1 + s
        .stages
        .iter()
        .map(|st| 1 + st.history.len())
        .sum::<usize>()
        + s.releases.len()
        + s.runs.len()
        + s.effects.len()
        + s.approvals.len()
        + s.alarms.len()
        + s.retry_requests.len()
}

async fn sizes(store: &Store, engine: &Engine, releases: usize) -> Result<Sizes> {
    let pool = store.pool();
    sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
        .execute(pool)
        .await?;
    let pages: i64 = sqlx::query_scalar("PRAGMA page_count")
        .fetch_one(pool)
        .await?;
    let page: i64 = sqlx::query_scalar("PRAGMA page_size")
        .fetch_one(pool)
        .await?;
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(pool)
        .await?;
    // `dbstat` is there when SQLite was built with it; the per-event figure needs it.
    let events_bytes = sqlx::query(
        "SELECT sum(pgsize) AS bytes FROM dbstat WHERE name = 'events' OR name IN (SELECT name FROM sqlite_master WHERE tbl_name = 'events' AND type = 'index')",
    )
    .fetch_one(pool)
    .await
    .ok()
    .and_then(|r| r.try_get::<i64, _>("bytes").ok());
    let stages: Vec<StageName> = ["beta", "gamma", "prod"].map(StageName::from).to_vec();
    let since = engine.now() - chrono::Duration::days(7);
    let snap = store.snapshot("backend", &stages, since).await?;
    let bounded = snap.stages.iter().map(|s| s.history.len()).sum::<usize>() + snap.releases.len();
    let full: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM stage_history WHERE pipeline = 'backend') + (SELECT count(*) FROM releases WHERE pipeline = 'backend' AND (active = 1 OR id IN (SELECT release_id FROM stage_history WHERE pipeline = 'backend')))",
    )
    .fetch_one(pool)
    .await?;
    Ok(Sizes {
        unbounded_rows: rows(&snap) - bounded + usize::try_from(full)?,
        releases,
        db_bytes: pages * page,
        events,
        events_bytes,
        snapshot_rows: rows(&snap),
        snapshot_bytes: format!("{snap:?}").len(),
    })
}

async fn run() -> Result<()> {
    let releases = args()?;
    let dir = workdir()?;
    let config = config_in(dir.path());
    let url = format!("sqlite://{}", dir.path().join("state.db").display());
    let store = Store::open(&url).await?;
    let fakes = Fakes::new();
    let clock = Arc::new(ManualClock::new(start_time()));
    let engine = Engine::new(store.clone(), config, fakes.ports(), clock.clone());
    println!(
        "{releases} releases through the engine (fakes for AWS and GitHub) into {}",
        dir.path().join("state.db").display()
    );
    let began = Instant::now();
    let mut table = Vec::new();
    for n in 1..=releases {
        promote(&engine, &clock, n).await?;
        clock.advance(chrono::Duration::minutes(30));
        if CHECKPOINTS.contains(&n) || n == releases {
            let s = sizes(&store, &engine, n).await?;
            println!(
                "after {n} releases ({:.0} s): database {} bytes, snapshot {} rows / {} bytes",
                began.elapsed().as_secs_f64(),
                s.db_bytes,
                s.snapshot_rows,
                s.snapshot_bytes
            );
            table.push(s);
        }
    }
    report(&table);
    Ok(())
}

fn report(table: &[Sizes]) {
    println!(
        "\n| releases | database | bytes per release | events | bytes per event | planner's snapshot (rows / bytes) |"
    );
    println!("|---|---|---|---|---|---|");
    for s in table {
        let per_event = s.events_bytes.map_or("—".to_owned(), |b| {
            format!("{:.0}", b as f64 / s.events as f64)
        });
        println!(
            "| {} | {:.1} MiB | {:.0} | {} | {per_event} | {} / {} | {} |",
            s.releases,
            s.db_bytes as f64 / 1048576.0,
            s.db_bytes as f64 / s.releases as f64,
            s.events,
            s.snapshot_rows,
            s.snapshot_bytes,
            s.unbounded_rows
        );
    }
    if let (Some(first), Some(last)) = (table.first(), table.last()) {
        let same = first.snapshot_rows == last.snapshot_rows;
        println!(
            "\n| figure | value | target | result |\n|---|---|---|---|\n| planner's snapshot after {} vs {} releases | {} → {} rows | the same | {} |",
            first.releases,
            last.releases,
            first.snapshot_rows,
            last.snapshot_rows,
            if same { "PASS" } else { "FAIL" }
        );
    }
}

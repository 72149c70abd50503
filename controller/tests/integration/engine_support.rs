//! Shared setup for engine tests: a three-stage pipeline, a store in a temp dir, fakes, and
//! helpers that drive the engine until it settles.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tollgate::domain::{ReleaseId, RunStatus, StageRun};
use tollgate::engine::NewAlarm;
use tollgate::engine::{Engine, ManualClock};
use tollgate::store::Store;
use tollgate_testkit::fakes::Fakes;
use tollgate_testkit::fuse::Fuse;

pub use tollgate_testkit::engine_world::{
    ACCOUNTS, STAGES, approval, config_in, delivery, release, sha, start_time,
};

pub struct Harness {
    pub dir: tempfile::TempDir,
    pub fakes: Fakes,
    pub clock: Arc<ManualClock>,
    /// SQLite in `dir`, or a PostgreSQL database of its own (TOLLGATE_TEST_POSTGRES).
    state: String,
}

impl Harness {
    pub fn new() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let state = tollgate_testkit::state::url(dir.path());
        Harness {
            dir,
            fakes: Fakes::new(),
            clock: Arc::new(ManualClock::new(start_time())),
            state,
        }
    }

    /// A harness on a SQLite file in `dir` (`dir/state.db`) whatever the engine under test,
    /// its clock at `start`: for tests that hand that file to a `tollgate` process.
    pub fn sqlite_at(start: DateTime<Utc>) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let state = format!("sqlite://{}", dir.path().join("state.db").display());
        Harness {
            dir,
            fakes: Fakes::new(),
            clock: Arc::new(ManualClock::new(start)),
            state,
        }
    }

    pub fn db_url(&self) -> String {
        self.state.clone()
    }

    pub async fn engine(&self, fuse: Option<Arc<Fuse>>) -> Engine {
        let store = Store::open(&self.db_url()).await.unwrap();
        let cfg = config_in(self.dir.path());
        match fuse {
            Some(f) => Engine::with_fuse(store, cfg, self.fakes.ports(), self.clock.clone(), f),
            None => Engine::new(store, cfg, self.fakes.ports(), self.clock.clone()),
        }
    }
}

/// An engine on `h`'s state with `config` in force, as `tollgate serve` starts with the file
/// it is given.
pub async fn engine_with(h: &Harness, config: tollgate::config::Config) -> Engine {
    let store = Store::open(&h.db_url()).await.unwrap();
    Engine::new(store, config, h.fakes.ports(), h.clock.clone())
}

/// Reconciles until nothing changes and no effect is running (bounded).
pub async fn settle(engine: &Engine) -> Result<(), tollgate::engine::EngineError> {
    for _ in 0..400 {
        engine.reconcile("backend").await?;
        let mut waited = 0;
        while engine.in_flight() > 0 && waited < 2000 {
            tokio::time::sleep(Duration::from_millis(1)).await;
            waited += 1;
        }
        engine.reconcile("backend").await?;
        if engine.in_flight() == 0 {
            let a = engine.reads().events("backend", 1).await.unwrap();
            engine.reconcile("backend").await?;
            let b = engine.reads().events("backend", 1).await.unwrap();
            if a == b && engine.in_flight() == 0 {
                return Ok(());
            }
        }
    }
    panic!("the engine did not settle");
}

/// The run of release `id` in `stage`.
pub async fn run(engine: &Engine, id: ReleaseId, stage: &str) -> StageRun {
    let runs = engine.reads().recent_runs("backend", 50).await.unwrap();
    runs.into_iter()
        .find(|(r, _)| r.id == id)
        .and_then(|(_, runs)| runs.into_iter().find(|r| r.stage == stage))
        .unwrap_or_else(|| panic!("no run of {id} in {stage}"))
}

pub async fn status(engine: &Engine, id: ReleaseId, stage: &str) -> RunStatus {
    run(engine, id, stage).await.status
}

pub fn alarm(stage: &str, name: &str) -> NewAlarm {
    NewAlarm {
        pipeline: "backend".into(),
        stage: stage.into(),
        alarm: name.into(),
        firing: true,
        reason: "Threshold Crossed".into(),
        changed_at: None,
    }
}

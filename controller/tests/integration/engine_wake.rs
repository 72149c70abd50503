//! The reconcile loops run on facts, not on a timer: a fact recorded here wakes its pipeline,
//! an effect's end wakes it again, and a fact another process writes into the same database
//! (a follower controller's way in) is picked up by the watch over the event log.

use std::time::{Duration, Instant};

use crate::engine_support::*;
use tollgate::domain::{Decision, ReleaseId, RunStatus};
use tollgate::engine::{Engine, Ingest, Ingested, shared_config};
use tollgate::store::Store;

/// How long a step may take before the test fails (the loops need milliseconds).
const STEP_LIMIT: Duration = Duration::from_secs(20);

/// Aborts the loops when the test ends.
struct Loops(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Loops {
    fn drop(&mut self) {
        self.0.iter().for_each(|l| l.abort());
    }
}

async fn wait_for(engine: &Engine, id: ReleaseId, stage: &str, want: RunStatus) {
    let deadline = Instant::now() + STEP_LIMIT;
    loop {
        let now = run(engine, id, stage).await;
        if now.status == want {
            return;
        }
        assert!(
            Instant::now() < deadline && !now.status.is_terminal(),
            "{id} in {stage} is {:?} ({:?}), not {want:?}",
            now.status,
            now.reason
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_controller_acts_on_an_approval_recorded_by_another_process() {
    let h = Harness::new();
    let engine = h.engine(None).await;
    let _loops = Loops(engine.spawn());
    let recorded = engine
        .record_release(&release(1), &delivery("push-1"))
        .await;
    let Ingested::Recorded(id) = recorded.unwrap() else {
        panic!("release not recorded")
    };
    // Beta and Gamma deploy and test on their own: each effect's end wakes the loop.
    wait_for(&engine, id, "prod", RunStatus::AwaitingApproval).await;

    // The CLI's way in: its own connection and ingest API over the same database file, with
    // no way to wake this engine's loops.
    let store = Store::open(&h.db_url()).await.unwrap();
    let config = shared_config(config_in(h.dir.path()));
    let cli = Ingest::new(store, config, h.clock.clone());
    let approve = approval(id, "alice", Decision::Approve);
    cli.record_approval(&approve, &delivery("appr-1"))
        .await
        .unwrap();
    wait_for(&engine, id, "prod", RunStatus::Baking).await;
}

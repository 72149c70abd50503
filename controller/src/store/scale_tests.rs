//! The store under load: many writers at once on one SQLite file.

use chrono::Utc;

use super::Store;
use crate::domain::StageName;
use crate::engine::facts::{Delivery, Ingested, NewRelease};

async fn store(dir: &tempfile::TempDir) -> Store {
    let url = format!("sqlite://{}", dir.path().join("state.db").display());
    Store::open(&url).await.unwrap()
}

fn new_release(pipeline: &str, n: usize) -> NewRelease {
    NewRelease {
        pipeline: pipeline.into(),
        sha: format!("{n:040x}"),
        branch: "main".into(),
        author_name: "Carol".into(),
        author_email: "carol@example.com".into(),
        message: format!("change {n}"),
        ..NewRelease::default()
    }
}

/// 200 deliveries recorded at once (as 200 concurrent webhooks do), each reading the
/// pipeline's newest release before it writes: every one is recorded, none is refused as
/// "database is locked".
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_deliveries_are_all_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir).await;
    let stages: Vec<StageName> = ["beta", "gamma", "prod"].map(StageName::from).to_vec();
    let tasks: Vec<_> = (0..200)
        .map(|n| {
            let (store, stages) = (store.clone(), stages.clone());
            tokio::spawn(async move {
                let r = new_release(&format!("svc-{}", n % 20), n);
                let d = Delivery {
                    source: "github".into(),
                    id: format!("delivery-{n}"),
                };
                store.record_release(&r, &stages, &d, Utc::now()).await
            })
        })
        .collect();
    let mut recorded = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(Ingested::Recorded(_)) => recorded += 1,
            Ok(Ingested::Duplicate) => panic!("a fresh delivery was taken for a duplicate"),
            Err(e) => panic!("a delivery was not recorded: {e}"),
        }
    }
    assert_eq!(recorded, 200);
    let mut releases = 0;
    for p in 0..20 {
        releases += store.recent_runs(&format!("svc-{p}"), 100).await.unwrap().len();
    }
    assert_eq!(releases, 200, "every recorded delivery made its release");
}

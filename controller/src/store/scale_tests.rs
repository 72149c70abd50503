//! The store under load: many writers at once on one SQLite file.

use chrono::Utc;

use super::Store;
use crate::domain::StageName;
use crate::engine::facts::{Delivery, Ingested, NewRelease};

async fn store(dir: &tempfile::TempDir) -> Store {
    let url = tollgate_testkit::state::url(dir.path());
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
        releases += store
            .recent_runs(&format!("svc-{p}"), 100)
            .await
            .unwrap()
            .len();
    }
    assert_eq!(releases, 200, "every recorded delivery made its release");
}

/// Records releases `from..=to` of `svc` in beta, each run there successfully and retired,
/// as the engine records them.
async fn ran_in_beta(store: &Store, from: usize, to: usize) -> Vec<crate::domain::ReleaseId> {
    use crate::domain::Action;
    let stages: Vec<StageName> = ["beta"].map(StageName::from).to_vec();
    let mut ids = Vec::new();
    for n in from..=to {
        let d = Delivery {
            source: "github".into(),
            id: format!("d-{n}"),
        };
        let id = match store
            .record_release(&new_release("svc", n), &stages, &d, Utc::now())
            .await
            .unwrap()
        {
            Ingested::Recorded(id) => id,
            Ingested::Duplicate => panic!("release {n} taken for a duplicate"),
        };
        let done = [
            Action::RecordGood {
                stage: "beta".into(),
                release: id,
            },
            Action::Retire { release: id },
        ];
        store.apply("svc", &done, Utc::now()).await.unwrap();
        ids.push(id);
    }
    ids
}

/// The planner's snapshot does not grow with the releases a stage ran: after 60 and after 240
/// releases it holds as many history entries and releases. What the planner needs from the
/// history is still there: with the 60 newest releases all marked bad, the stage's last
/// known-good is the newest good one further back, and the rollback target past it too.
#[tokio::test]
async fn snapshot_stays_the_same_size_as_releases_accumulate() {
    use crate::domain::{Action, Reason};
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir).await;
    let stages: Vec<StageName> = ["beta"].map(StageName::from).to_vec();
    let since = Utc::now() - chrono::Duration::days(7);
    let ids = ran_in_beta(&store, 1, 60).await;
    let small = store.snapshot("svc", &stages, since).await.unwrap();
    let more = ran_in_beta(&store, 61, 240).await;
    let large = store.snapshot("svc", &stages, since).await.unwrap();
    let history = |s: &crate::domain::Snapshot| s.stage("beta").unwrap().history.clone();
    assert_eq!(history(&small).len(), history(&large).len());
    assert_eq!(small.releases.len(), large.releases.len());
    assert_eq!(
        history(&large).last(),
        more.last(),
        "the newest entry is kept"
    );

    // The 60 newest releases turn out bad: the known-good ones are further back than the
    // newest entries kept.
    let bad: Vec<Action> = more[more.len() - 60..]
        .iter()
        .map(|id| Action::MarkBad {
            release: *id,
            stage: "beta".into(),
            reason: Reason::Queued,
        })
        .collect();
    store.apply("svc", &bad, Utc::now()).await.unwrap();
    let snap = store.snapshot("svc", &stages, since).await.unwrap();
    let newest_good = more[more.len() - 61];
    assert_eq!(snap.last_good("beta"), Some(newest_good));
    let h = history(&snap);
    assert!(
        h.contains(&more[more.len() - 62]),
        "the good release before the last known-good (a rollback target) is kept"
    );
    assert!(!h.contains(&ids[0]), "old entries are left out");
}

/// A push's release and its `before → after` link are one write unit: refused because another
/// release was recorded meanwhile, neither is kept (the intake decides again with both still
/// unwritten); recorded, the link is there with the release, and a redelivery keeps it too.
#[tokio::test]
async fn a_release_and_its_push_link_are_written_together_or_not_at_all() {
    use super::PushLink;
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir).await;
    let stages: Vec<StageName> = ["beta", "gamma", "prod"].map(StageName::from).to_vec();
    let d = |id: &str| Delivery {
        source: "github".into(),
        id: id.into(),
    };
    let (first, second) = (new_release("svc", 1), new_release("svc", 2));
    let link = PushLink {
        repository: "acme/svc".into(),
        branch: "main".into(),
        before: first.sha.clone(),
        after: second.sha.clone(),
        forced: false,
    };
    let descends = || store.push_descends("acme/svc", "main", &second.sha, &first.sha);
    let Ingested::Recorded(r1) = store
        .record_release(&first, &stages, &d("a"), Utc::now())
        .await
        .unwrap()
    else {
        panic!("the first release was not recorded");
    };
    // Decided while the pipeline had no release: refused, and the link is not kept either.
    let stale = store
        .record_release_after(
            &second,
            &stages,
            &d("b"),
            Utc::now(),
            Some(None),
            Some(&link),
        )
        .await
        .unwrap();
    assert_eq!(stale, None);
    assert_eq!(
        descends().await.unwrap(),
        None,
        "no link without its release"
    );
    let recorded = store
        .record_release_after(
            &second,
            &stages,
            &d("b"),
            Utc::now(),
            Some(Some(r1)),
            Some(&link),
        )
        .await
        .unwrap();
    assert!(matches!(recorded, Some(Ingested::Recorded(_))));
    assert_eq!(descends().await.unwrap(), Some(true));
    let again = store
        .record_release_after(&second, &stages, &d("b"), Utc::now(), None, Some(&link))
        .await
        .unwrap();
    assert_eq!(again, Some(Ingested::Duplicate));
    assert_eq!(descends().await.unwrap(), Some(true));
}

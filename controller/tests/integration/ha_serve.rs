//! Two `tollgate serve` processes on one PostgreSQL state and one moto: one leads, the other
//! records facts and waits. The leader is killed (SIGKILL) while Prod deploys — after moto
//! executed Prod's change set, before the leader learned it had — and the other takes over and
//! finishes: moto's request recorder shows exactly one `ExecuteChangeSet` per stage, and the
//! approver got exactly one email; each controller's `/metrics` says who leads
//! (`tollgate_leader` 1 or 0) and at which epoch (`tollgate_leader_epoch`), before and after.
//! A leader paused (SIGSTOP) past its lease records and performs nothing once resumed.
//!
//! Needs a PostgreSQL server (`TOLLGATE_TEST_POSTGRES`, which `scripts/test` starts); without
//! one each test says so and passes without running. Nothing leaves 127.0.0.1.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tollgate::domain::{EffectKind, EffectStatus, RunStatus};
use tollgate_testkit::hold::HoldProxy;
use tollgate_testkit::serve::{ServeProcess, free_port};
use tollgate_testkit::world::APPROVER;

use crate::api_serve::key_on;
use crate::approvals_serve::{Serve, nothing_more, quick, sha};
use crate::e2e_moto::form_field;
use crate::observability_serve::Samples;

/// The lease in these tests; production's default is 10 s.
const LEASE: &str = "3s";
const LIMIT: Duration = Duration::from_secs(90);

fn postgres() -> Option<String> {
    let server = tollgate_testkit::state::postgres_server();
    if server.is_none() {
        eprintln!("skipped: no PostgreSQL server (set TOLLGATE_TEST_POSTGRES; scripts/test does)");
    }
    server.map(|s| tollgate_testkit::state::fresh_postgres_database(&s))
}

async fn readyz(http: &reqwest::Client, url: &str) -> String {
    match http.get(format!("{url}/readyz")).send().await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

async fn until(what: &str, log: impl Fn() -> String, mut ok: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + LIMIT;
    while !ok().await {
        assert!(Instant::now() < deadline, "no {what}\n{}", log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// (`tollgate_leader`, `tollgate_leader_epoch`) as the controller at `url` serves them on its
/// API port (`GET /metrics` with a viewer key), read with the Prometheus parser.
async fn leader_metrics(http: &reqwest::Client, url: &str, key: &str) -> (f64, f64) {
    let r = http
        .get(format!("{url}/metrics"))
        .bearer_auth(key)
        .send()
        .await
        .expect("GET /metrics");
    assert_eq!(r.status(), 200, "GET {url}/metrics");
    let m = Samples::parse(&r.text().await.unwrap());
    (
        m.get("tollgate_leader", &[]),
        m.get("tollgate_leader_epoch", &[]),
    )
}

/// A second controller on `serve`'s world and state, with moto as its only AWS endpoint.
async fn standby(serve: &Serve, name: &str) -> ServeProcess {
    let mut spec = serve.spec.clone();
    spec.port = free_port().unwrap();
    spec.env
        .retain(|(k, _)| k != "AWS_ENDPOINT_URL_CLOUDFORMATION");
    let dir = spec.log.parent().unwrap().to_path_buf();
    spec.log = dir.join(format!("{name}.log"));
    spec.stdout = Some(dir.join(format!("{name}.out")));
    ServeProcess::start(&spec)
        .await
        .expect("second tollgate serve")
}

/// Controller A on `state`, leading (epoch 1), its CloudFormation calls through a
/// [`HoldProxy`] that holds the next `ExecuteChangeSet` once armed.
async fn leader_behind_a_hold(state: String) -> (Serve, HoldProxy) {
    let proxy = HoldProxy::start(b"Action=ExecuteChangeSet").await.unwrap();
    let cfn = proxy.endpoint();
    let serve = Serve::start_on(
        quick(),
        nothing_more,
        |_| vec!["--lease-ttl".into(), LEASE.into()],
        Some(state),
        |_, moto| {
            let at = moto.endpoint()["http://".len()..].parse().unwrap();
            proxy.set_upstream(at).unwrap();
            vec![("AWS_ENDPOINT_URL_CLOUDFORMATION".into(), cfn.clone())]
        },
    )
    .await;
    let http = reqwest::Client::new();
    until(
        "leader A",
        || serve.log(),
        async || {
            readyz(&http, &serve.url)
                .await
                .contains("leader: this controller (epoch 1)")
        },
    )
    .await;
    (serve, proxy)
}

/// `ExecuteChangeSet` calls moto received, per stack.
async fn executions(serve: &Serve) -> BTreeMap<String, usize> {
    let mut per_stack = BTreeMap::new();
    for r in serve.moto.recorded_requests().await.unwrap() {
        if r.action.as_deref() == Some("ExecuteChangeSet") {
            let stack = form_field(&r, "StackName").unwrap_or_default();
            *per_stack.entry(stack).or_default() += 1;
        }
    }
    per_stack
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ha_the_leader_killed_while_prod_deploys_is_replaced_and_nothing_is_done_twice() {
    let Some(state) = postgres() else { return };
    let (mut serve, proxy) = leader_behind_a_hold(state).await;
    let http = reqwest::Client::new();
    let a_url = serve.url.clone();
    let mut b = standby(&serve, "b").await;
    let b_url = b.url().to_owned();
    assert!(
        readyz(&http, &b_url).await.contains("follower: "),
        "{}",
        readyz(&http, &b_url).await
    );
    serve.moto.recorder_start().await.unwrap();

    // The follower takes the webhook; the leader acts on it.
    let release = sha(1);
    serve.url = b_url.clone();
    serve.push(&release, "carol", "carol").await;
    serve.url = a_url.clone();
    serve
        .wait(&release, "prod", "approval request", |r| {
            r.status == RunStatus::AwaitingApproval
        })
        .await;
    proxy.arm();
    let token = serve.nth_link(1).await;
    let (status, _, page) = serve.decide(&token, "approve").await;
    assert_eq!(status, 200, "{page}");

    // Prod's change set is executed by moto; the leader never hears back, and dies.
    until(
        "Prod's ExecuteChangeSet held",
        || serve.log(),
        async || proxy.held(),
    )
    .await;
    let deploys = serve.store.reads().effects_with_prefix("").await.unwrap();
    let prod_deploy = deploys
        .iter()
        .find(|e| e.stage == "prod" && matches!(e.kind, EffectKind::Deploy { .. }))
        .expect("Prod's deploy recorded");
    assert_eq!(prod_deploy.status, EffectStatus::Pending);
    // Before the kill: A says it leads, at epoch 1; B that it does not.
    let viewer = key_on(&serve, "scraper", "viewer", &[]);
    let (a_leads, a_epoch) = leader_metrics(&http, &a_url, &viewer).await;
    assert_eq!((a_leads, a_epoch), (1.0, 1.0), "A's /metrics");
    let (b_leads, _) = leader_metrics(&http, &b_url, &viewer).await;
    assert_eq!(b_leads, 0.0, "B's /metrics while A leads");
    let killed = Instant::now();
    serve.serve.kill();
    until(
        "a takeover",
        || b.log(),
        async || {
            serve
                .store
                .reads()
                .lease()
                .await
                .ok()
                .flatten()
                .is_some_and(|l| l.epoch == 2)
        },
    )
    .await;
    let takeover = killed.elapsed();
    println!("takeover after the leader's kill: {takeover:?} (lease {LEASE})");
    until(
        "B's standing as the leader",
        || b.log(),
        async || {
            readyz(&http, &b_url)
                .await
                .contains("leader: this controller (epoch 2)")
        },
    )
    .await;
    // The command line asks the controller still standing.
    serve.url = b_url.clone();
    // B's /metrics: it leads now, at a higher epoch than A did.
    until(
        "B's /metrics saying it leads",
        || b.log(),
        async || leader_metrics(&http, &b_url, &viewer).await.0 == 1.0,
    )
    .await;
    let (b_leads, b_epoch) = leader_metrics(&http, &b_url, &viewer).await;
    assert_eq!(b_leads, 1.0);
    assert!(b_epoch > a_epoch, "B's epoch {b_epoch}, A's was {a_epoch}");
    assert_eq!(b_epoch, 2.0);
    let (ok, shown) = serve.cli(&["status"]);
    assert!(ok, "{shown}");
    let b_holder = serve.store.reads().lease().await.unwrap().unwrap().holder;
    assert!(
        shown.contains(&format!("leader: {b_holder} (epoch 2; lease until")),
        "{shown}"
    );

    serve
        .wait(&release, "prod", "success", |r| {
            r.status == RunStatus::Succeeded
        })
        .await;
    let per_stack = executions(&serve).await;
    for stage in ["beta", "gamma", "prod"] {
        let stack = &serve.world.stage(stage).unwrap().stack;
        assert_eq!(
            per_stack.get(stack.as_str()),
            Some(&1),
            "{stage}: {per_stack:?}\n{}",
            b.log()
        );
    }
    let to_approver = serve
        .approval_mail()
        .await
        .into_iter()
        .filter(|(who, _)| who.as_deref() == Some(APPROVER))
        .count();
    assert_eq!(to_approver, 1, "one approval email to {APPROVER}");
    b.check_alive().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ha_a_leader_paused_past_its_lease_records_and_performs_nothing_once_resumed() {
    let Some(state) = postgres() else { return };
    let (mut serve, proxy) = leader_behind_a_hold(state).await;
    let http = reqwest::Client::new();
    let a_url = serve.url.clone();
    let b = standby(&serve, "b").await;
    let b_url = b.url().to_owned();

    // A is deploying Beta when it stops: moto executed the change set, A has not heard back.
    proxy.arm();
    let release = sha(2);
    serve.push(&release, "carol", "carol").await;
    until(
        "Beta's ExecuteChangeSet held",
        || serve.log(),
        async || proxy.held(),
    )
    .await;
    let a_pid = serve.serve.pid().to_string();
    let signal = |sig: &str| {
        let ok = std::process::Command::new("kill")
            .args([sig, &a_pid])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig} {a_pid}");
    };
    // As a process paused by the kernel, a long stall or a partition would be.
    signal("-STOP");
    until(
        "a takeover",
        || b.log(),
        async || {
            readyz(&http, &b_url)
                .await
                .contains("leader: this controller (epoch 2)")
        },
    )
    .await;
    // B finishes Beta's deploy under the same key and takes the release to Prod's approval.
    serve
        .wait(&release, "prod", "approval request", |r| {
            r.status == RunStatus::AwaitingApproval
        })
        .await;
    serve.nth_link(1).await;
    until(
        "B idle",
        || b.log(),
        async || {
            let effects = serve.store.reads().effects_with_prefix("").await.unwrap();
            effects.iter().all(|e| e.status != EffectStatus::Pending)
        },
    )
    .await;
    let effects_before = serve.store.reads().effects_with_prefix("").await.unwrap();
    serve.moto.recorder_start().await.unwrap();

    // A resumes believing it leads at epoch 1, and hears back about its change set at once.
    proxy.release();
    signal("-CONT");
    until(
        "A back as a follower",
        || serve.log(),
        async || readyz(&http, &a_url).await.contains("follower: "),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let effects_after = serve.store.reads().effects_with_prefix("").await.unwrap();
    assert_eq!(
        effects_before, effects_after,
        "nothing recorded after A resumed"
    );
    let calls = serve.moto.recorded_requests().await.unwrap();
    let actions: Vec<_> = calls.iter().map(|c| c.action.clone()).collect();
    assert!(
        calls.is_empty(),
        "no AWS call after A resumed (its deploy must not go on): {actions:?}\n{}",
        serve.log()
    );
    let per_stack = executions(&serve).await;
    assert!(per_stack.is_empty(), "{per_stack:?}");
    assert_eq!(
        serve.store.reads().lease().await.unwrap().unwrap().epoch,
        2,
        "the lead stays with B"
    );
    serve.serve.check_alive().unwrap();
}

//! Two controllers on one PostgreSQL state with different configurations, in this process: the
//! leader works under its own, the other stands by with another, then takes the lease when
//! the leader dies. What the one taking the lease acts with: the configuration applied from
//! the configuration repository since it started, and never one that moves a deploy in flight
//! (it declines the lead instead, and one whose configuration keeps the deploy takes over).
//!
//! Needs a PostgreSQL server (`TOLLGATE_TEST_POSTGRES`, which `scripts/test` starts); without
//! one each test says so and passes without running.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tollgate::config::{Config, ConfigCommit};
use tollgate::domain::{EffectKind, EffectStatus, ReleaseId, RunStatus};
use tollgate::engine::{Clock, Engine, Leadership, shared_config};
use tollgate::github::intake::AppliedConfigWins;
use tollgate::store::lease::Claim;
use tollgate::store::{AppliedConfig, Store};

use crate::engine::{PROD_AP, PROD_EU, prod_deploy_hanging, prod_wave_1_moved};
use crate::engine_support::*;

/// The lease of the controllers that stand by and take over.
pub(crate) const LEASE: Duration = Duration::from_secs(3);
/// The lease of the first leader, which the test drives by hand: long enough never to run
/// out while it works; it "dies" when the clock of the state passes it.
const LONG_LEASE: Duration = Duration::from_secs(60);
const LIMIT: Duration = Duration::from_secs(30);

pub(crate) fn on_postgres() -> bool {
    let on = tollgate_testkit::state::postgres_server().is_some();
    if !on {
        eprintln!("skipped: no PostgreSQL server (set TOLLGATE_TEST_POSTGRES; scripts/test does)");
    }
    on
}

/// Controller `name` on `h`'s state with `config`, holding the lease it claims here (epoch 1)
/// and acting, for the test to drive with [`settle`].
async fn leading(h: &Harness, config: Config, name: &str) -> Engine {
    let store = Store::open(&h.db_url()).await.unwrap();
    let l = Leadership::elected(name, LONG_LEASE);
    let claim = store
        .claim_lease(name, LONG_LEASE, h.clock.now())
        .await
        .unwrap();
    let Claim::Held { epoch, .. } = claim else {
        panic!("{name} does not get the lease: {claim:?}")
    };
    assert!(l.record(&claim, Instant::now()));
    assert!(l.act(epoch));
    let ports = h.fakes.ports();
    Engine::elected(store, shared_config(config), ports, h.clock.clone(), l)
}

/// Controller `name` on `h`'s state with `config`, as `tollgate serve` starts one on
/// PostgreSQL: claiming the lease, and acting with the configuration in force once it holds it.
pub(crate) async fn standing_by(
    h: &Harness,
    config: Config,
    name: &str,
) -> (Engine, Vec<tokio::task::JoinHandle<()>>) {
    let store = Store::open(&h.db_url()).await.unwrap();
    let l = Leadership::elected(name, LEASE);
    let ports = h.fakes.ports();
    let engine = Engine::elected(store, shared_config(config), ports, h.clock.clone(), l);
    engine.take_lead_with(Arc::new(AppliedConfigWins::default()));
    let tasks = engine.spawn();
    (engine, tasks)
}

/// Controller `name` renews its lease at the time of the state's clock (which the test moves on
/// while it drives the leader by hand).
async fn renews(h: &Harness, name: &str) {
    let store = Store::open(&h.db_url()).await.unwrap();
    let claim = store
        .claim_lease(name, LONG_LEASE, h.clock.now())
        .await
        .unwrap();
    assert!(matches!(claim, Claim::Held { epoch: 1, .. }), "{claim:?}");
}

/// The leader is gone: the clock of the state passes its lease, so the next claim takes it.
fn leader_dies(h: &Harness) {
    h.clock.advance(chrono::Duration::seconds(61));
}

pub(crate) async fn until(what: &str, mut ok: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + LIMIT;
    while !ok().await {
        assert!(Instant::now() < deadline, "no {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub(crate) async fn config_entries(engine: &Engine) -> Vec<String> {
    let events = engine.reads().events("backend", 200).await.unwrap();
    events
        .into_iter()
        .filter(|e| e.kind == "config")
        .map(|e| e.detail)
        .collect()
}

pub(crate) fn deployed(h: &Harness, stage: &str) -> Vec<String> {
    h.fakes.with(|w| {
        w.deployed
            .iter()
            .filter(|(s, _, _)| s == stage)
            .map(|(_, at, _)| at.clone())
            .collect()
    })
}

/// The leader dies while release 2's prod deploy runs (its intent recorded in eu-west-1). The
/// controller standing by was started with a file that moves prod's first wave to
/// ap-southeast-2: on taking the lease it declines the lead, says why in the event log, and
/// does nothing; the deploy stays pending, not failed. A controller started with the file the
/// deploy began under then takes the lease and finishes it where it began.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ha_a_standby_whose_file_moves_a_deploy_in_flight_declines_the_lead() {
    if !on_postgres() {
        return;
    }
    let h = Harness::new();
    let a = leading(&h, config_in(h.dir.path()), "a").await;
    let id = prod_deploy_hanging(&h, &a).await;
    renews(&h, "a").await;
    let (b, b_tasks) = standing_by(&h, prod_wave_1_moved(&h), "b").await;
    until("b following", async || {
        matches!(
            b.leadership().standing(),
            tollgate::engine::Standing::Following {
                leader: Some(_),
                ..
            }
        )
    })
    .await;

    leader_dies(&h);
    until("b declining the lead in the event log", async || {
        config_entries(&b)
            .await
            .iter()
            .any(|n| n.contains("declined the lead"))
    })
    .await;
    assert!(b.lead_declined().is_some());
    let notes = config_entries(&b).await;
    let declined = notes
        .iter()
        .find(|n| n.contains("declined the lead"))
        .unwrap_or_else(|| panic!("no config entry saying b declined: {notes:?}"));
    assert!(
        declined.contains(&format!(
            "backend/prod: {id} deploying, its wave 1 began deploying to {PROD_EU}, now {PROD_AP}"
        )),
        "{declined}"
    );
    assert!(!b.leadership().may_act());
    let lease = b.reads().lease().await.unwrap().unwrap();
    assert!(
        lease.expires_at <= h.clock.now(),
        "b gave the lease up: {lease:?}"
    );
    // Tried again after a whole lease: declined again, written once.
    tokio::time::sleep(LEASE * 3).await;
    let again = config_entries(&b).await;
    assert_eq!(
        again.iter().filter(|n| n.contains("declined")).count(),
        1,
        "{again:?}"
    );

    let prod_deploy = async |engine: &Engine| {
        let effects = engine.reads().effects_of(id, "prod").await.unwrap();
        effects
            .into_iter()
            .find(|e| e.kind == EffectKind::Deploy { wave: 0 })
            .expect("the prod deploy")
    };
    assert_eq!(prod_deploy(&b).await.status, EffectStatus::Pending);
    assert_eq!(status(&b, id, "prod").await, RunStatus::Deploying);

    // A controller with the file the deploy began under takes over and finishes it there.
    let (c, c_tasks) = standing_by(&h, config_in(h.dir.path()), "c").await;
    until("prod deployed", async || {
        prod_deploy(&c).await.status == EffectStatus::Succeeded
    })
    .await;
    assert!(c.leadership().may_act());
    assert!(!b.leadership().may_act());
    let prod = deployed(&h, "prod");
    assert!(
        prod.iter()
            .all(|at| at.ends_with("eu-west-1") || at.ends_with("us-east-1")),
        "nothing deployed in ap-southeast-2: {prod:?}"
    );
    for t in b_tasks.into_iter().chain(c_tasks) {
        t.abort();
    }
}

/// `STAGES` with the configuration repository `acme/config` named.
pub(crate) fn managed(stages: &str) -> String {
    stages.replace(
        "[controller]\n",
        "[controller]\nconfig_repository = \"acme/config\"\n",
    )
}

/// [`managed`] `STAGES` with beta in us-east-1 instead of eu-west-1.
pub(crate) fn beta_in_us_east_1() -> String {
    let beta = r#"targets = [{ account = "beta" }]"#;
    assert!(STAGES.contains(beta));
    let moved = r#"targets = [{ account = "beta", region = "us-east-1" }]"#;
    managed(&STAGES.replace(beta, moved))
}

/// The configuration `text` as applied from `acme/config` at commit `sha`, with the files it
/// names read from `dir`.
pub(crate) fn applied(dir: &std::path::Path, text: &str, sha: &str) -> AppliedConfig {
    let mut files = BTreeMap::new();
    for name in tollgate::config::referenced_files(text).unwrap() {
        files.insert(
            name.clone(),
            std::fs::read_to_string(dir.join(&name)).unwrap(),
        );
    }
    files.insert("stages.toml".to_string(), text.to_string());
    AppliedConfig {
        repository: "acme/config".into(),
        sha: sha.into(),
        path: "stages.toml".into(),
        files,
        applied_at: start_time(),
    }
}

/// Both controllers start with the same file, which names a configuration repository. The
/// leader applies a commit of it that moves beta to us-east-1 (recorded in the state, as a
/// push to the repository does), then dies with nothing in flight. The controller taking the
/// lease acts with that commit, not with the file it started with: the next release deploys
/// beta in us-east-1.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ha_a_standby_taking_the_lease_acts_with_the_configuration_applied_since_it_started() {
    if !on_postgres() {
        return;
    }
    let h = Harness::new();
    config_in(h.dir.path());
    let file = h.dir.path().join("stages.toml");
    std::fs::write(&file, managed(STAGES)).unwrap();
    let load = || tollgate::config::load(&file).unwrap().config;
    let a = leading(&h, load(), "a").await;
    let (b, b_tasks) = standing_by(&h, load(), "b").await;

    let moved = beta_in_us_east_1();
    let commit = applied(h.dir.path(), &moved, &"c2".repeat(20));
    a.record_applied_config(&commit).await.unwrap();
    let config = tollgate::github::intake::load_applied(&commit)
        .unwrap()
        .config;
    a.replace_config(config, &a.hold_starts().await);

    leader_dies(&h);
    until("b leading", async || b.leadership().may_act()).await;
    b.record_release(&release(1), &delivery("push-1"))
        .await
        .unwrap();
    until("beta deployed", async || !deployed(&h, "beta").is_empty()).await;
    assert_eq!(deployed(&h, "beta"), ["beta/us-east-1"]);
    for t in b_tasks {
        t.abort();
    }
}

/// Two controllers on the state, both started with the same file naming the configuration
/// repository: `a` leads, `b` stands by.
async fn two_managed(h: &Harness) -> (Engine, Engine, Vec<tokio::task::JoinHandle<()>>) {
    two_managed_with(h, &managed(STAGES)).await
}

/// [`two_managed`] with the file `stages` (naming the configuration repository).
pub(crate) async fn two_managed_with(
    h: &Harness,
    stages: &str,
) -> (Engine, Engine, Vec<tokio::task::JoinHandle<()>>) {
    config_in(h.dir.path());
    let file = h.dir.path().join("stages.toml");
    std::fs::write(&file, stages).unwrap();
    let load = || tollgate::config::load(&file).unwrap().config;
    let (a, mut tasks) = standing_by(h, load(), "a").await;
    until("a leading", async || a.leadership().may_act()).await;
    let (b, b_tasks) = standing_by(h, load(), "b").await;
    tasks.extend(b_tasks);
    (a, b, tasks)
}

/// `a` leads and `b` stands by still; their tasks stop.
pub(crate) fn still_leads(a: &Engine, b: &Engine, tasks: Vec<tokio::task::JoinHandle<()>>) {
    assert!(a.leadership().may_act() && !b.leadership().may_act());
    for t in tasks {
        t.abort();
    }
}

/// `engine` applies `text` as commit `sha` of the configuration repository, as a push to it
/// that reached this controller does: recorded in the state, then put in force if it acts (a
/// controller standing by follows it once the leader acts with it). The commit.
pub(crate) async fn applies(h: &Harness, engine: &Engine, text: &str, sha: &str) -> ConfigCommit {
    let commit = applied(h.dir.path(), text, sha);
    engine.record_applied_config(&commit).await.unwrap();
    let config = tollgate::github::intake::load_applied(&commit)
        .unwrap()
        .config;
    if engine.leadership().may_act() {
        engine.replace_config(config, &engine.hold_starts().await);
    }
    commit.commit()
}

/// Whether `engine` runs the configuration applied from `commit`.
pub(crate) fn runs(engine: &Engine, commit: &ConfigCommit) -> bool {
    engine.config().applied_from.as_ref() == Some(commit)
}

/// The push to the configuration repository reached the controller standing by, which applied
/// it (moving beta to us-east-1): recorded, not yet in force there. The leader follows it, and
/// the standby once the leader acts with it: the next release deploys beta in us-east-1.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ha_the_leader_follows_a_configuration_a_standby_applied() {
    if !on_postgres() {
        return;
    }
    let h = Harness::new();
    let (a, b, tasks) = two_managed(&h).await;
    let moved = beta_in_us_east_1();
    let commit = applies(&h, &b, &moved, &"b3".repeat(20)).await;

    until("the leader following", async || runs(&a, &commit)).await;
    until("the standby following", async || runs(&b, &commit)).await;
    // The event log says when the commit took effect, once, by the leader.
    let marker = "put in force the configuration another controller applied";
    let took = async || {
        let entries = config_entries(&a).await.into_iter();
        entries.filter(|d| d.contains(marker)).collect::<Vec<_>>()
    };
    until("the leader's config entry", async || {
        !took().await.is_empty()
    })
    .await;
    let entries = took().await;
    assert_eq!(entries.len(), 1, "{entries:?}");
    let by = format!("the leader {} ", a.leadership().holder());
    assert!(entries[0].starts_with(&by), "{}", entries[0]);
    b.record_release(&release(1), &delivery("push-1"))
        .await
        .unwrap();
    until("beta deployed", async || !deployed(&h, "beta").is_empty()).await;
    assert_eq!(deployed(&h, "beta"), ["beta/us-east-1"]);
    still_leads(&a, &b, tasks);
}

/// The leader applied a commit adding the pipeline `web`. The controller standing by follows
/// it: a release of `web` it receives is recorded (not refused as an unknown pipeline), and the
/// leader deploys it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ha_a_standby_follows_a_configuration_the_leader_applied() {
    if !on_postgres() {
        return;
    }
    let h = Harness::new();
    let (a, b, tasks) = two_managed(&h).await;
    let start = STAGES.find("[[pipelines]]").unwrap();
    let web = STAGES[start..]
        .replace(r#"name = "backend""#, r#"name = "web""#)
        .replace("acme/backend", "acme/web")
        .replace(r#"repository = "backend""#, r#"repository = "web""#)
        .replace("backend-", "web-");
    let added = managed(&format!("{STAGES}\n{web}"));
    applies(&h, &a, &added, &"a4".repeat(20)).await;

    let mut web_release = release(1);
    web_release.pipeline = "web".into();
    until("the standby recording a release of web", async || {
        b.record_release(&web_release, &delivery("push-web-1"))
            .await
            .is_ok()
    })
    .await;
    until("web deployed in beta", async || {
        h.fakes.with(|w| {
            w.deployed
                .iter()
                .any(|(s, _, i)| s == "beta" && i.contains("web"))
        })
    })
    .await;
    still_leads(&a, &b, tasks);
}

/// Release 1, received by `b`, deploying in beta on the leader `a`, each deploy taking `secs`.
pub(crate) async fn beta_deploying(h: &Harness, a: &Engine, b: &Engine, secs: u64) -> ReleaseId {
    h.fakes
        .with(|w| w.deploy_delay = std::time::Duration::from_secs(secs));
    let first = b
        .record_release(&release(1), &delivery("push-1"))
        .await
        .unwrap();
    let tollgate::engine::Ingested::Recorded(first) = first else {
        panic!("{first:?}")
    };
    until("beta deploying", async || {
        let effects = a.reads().effects_of(first, "beta").await.unwrap();
        effects
            .iter()
            .any(|e| e.kind == EffectKind::Deploy { wave: 0 })
    })
    .await;
    first
}

/// A commit moving beta is recorded as applied while the leader deploys beta (the standby's
/// check ran just before the deploy began). The leader keeps its configuration while that
/// deploy runs, says so in the event log, and finishes it where it began; once beta's run is
/// done it follows the commit, and the next release deploys beta in us-east-1.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ha_the_leader_follows_an_applied_configuration_only_once_it_moves_nothing_in_flight() {
    if !on_postgres() {
        return;
    }
    let h = Harness::new();
    let (a, b, tasks) = two_managed(&h).await;
    let first = beta_deploying(&h, &a, &b, 2).await;
    let moved = beta_in_us_east_1();
    let commit = applies(&h, &b, &moved, &"b5".repeat(20)).await;

    until("the leader saying it keeps its configuration", async || {
        config_entries(&a)
            .await
            .iter()
            .any(|n| n.contains("the leader keeps the configuration"))
    })
    .await;
    let notes = config_entries(&a).await;
    let kept = notes.iter().find(|n| n.contains("keeps")).unwrap();
    assert!(
        kept.contains(&format!(
            "backend/beta: {first} deploying, its wave 1 began deploying to"
        )),
        "{kept}"
    );
    until("beta deployed", async || !deployed(&h, "beta").is_empty()).await;
    assert_eq!(deployed(&h, "beta"), ["beta/eu-west-1"]);

    until("release 1 through beta", async || {
        status(&a, first, "beta").await == RunStatus::Succeeded
    })
    .await;
    // Followed at the leader's next lease claim after that.
    until("the leader following", async || runs(&a, &commit)).await;
    b.record_release(&release(2), &delivery("push-2"))
        .await
        .unwrap();
    until("release 2 deployed in beta", async || {
        deployed(&h, "beta").len() == 2
    })
    .await;
    assert_eq!(deployed(&h, "beta"), ["beta/eu-west-1", "beta/us-east-1"]);
    still_leads(&a, &b, tasks);
}

/// As above, the leader keeps its configuration over a commit moving beta while its beta
/// deploy runs; the controller standing by, which received the commit, waits for the leader to
/// act with it. The leader then dies: the standby, taking the lease, finds the commit refused
/// for the deploy in flight, and acts with the configuration it runs (the one the deploy began
/// under), keeping it as the leader did, instead of declining and leaving every stage with no
/// controller. The deploy finishes in eu-west-1, and the commit is followed once it has.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ha_a_standby_replacing_a_leader_that_kept_its_configuration_keeps_it_too() {
    if !on_postgres() {
        return;
    }
    let h = Harness::new();
    config_in(h.dir.path());
    let file = h.dir.path().join("stages.toml");
    std::fs::write(&file, managed(STAGES)).unwrap();
    let load = || tollgate::config::load(&file).unwrap().config;
    let (a, a_tasks) = standing_by(&h, load(), "a").await;
    until("a leading", async || a.leadership().may_act()).await;
    let (b, b_tasks) = standing_by(&h, load(), "b").await;
    let first = beta_deploying(&h, &a, &b, 8).await;
    let commit = applies(&h, &b, &beta_in_us_east_1(), &"b6".repeat(20)).await;
    let keeps = async || {
        let notes = config_entries(&a).await;
        notes
            .iter()
            .filter(|n| n.contains("the leader keeps the configuration"))
            .count()
    };
    until("the leader keeping its configuration", async || {
        keeps().await == 1
    })
    .await;
    // The standby has looked at the commit at its claims meanwhile (one a fifth of a lease),
    // and waits: the leader does not act with it.
    tokio::time::sleep(LEASE).await;
    assert_eq!(b.config().source_file, file, "b waits for the leader");

    for t in a_tasks {
        t.abort();
    }
    leader_dies(&h);
    until("the standby leading", async || b.leadership().may_act()).await;
    assert_eq!(b.config().source_file, file, "b acts with the file's");
    assert!(b.lead_declined().is_none());
    until("the new leader keeping it too", async || keeps().await == 2).await;
    until("release 1 through beta", async || {
        status(&b, first, "beta").await == RunStatus::Succeeded
    })
    .await;
    assert_eq!(deployed(&h, "beta"), ["beta/eu-west-1"]);
    until("the commit followed", async || runs(&b, &commit)).await;
    for t in b_tasks {
        t.abort();
    }
}

/// A commit recorded as applied that this controller cannot use (it no longer validates: here
/// it names an unknown account) is not followed in silence: the leader keeps the configuration
/// it runs, says so in the event log with the reason, and follows the next commit that it can
/// use.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ha_a_commit_a_controller_cannot_use_is_reported_and_the_next_is_followed() {
    if !on_postgres() {
        return;
    }
    let h = Harness::new();
    let (a, b, tasks) = two_managed(&h).await;
    let file = a.config().source_file.clone();
    let unknown = managed(&STAGES.replacen(
        r#"targets = [{ account = "beta" }]"#,
        r#"targets = [{ account = "nope" }]"#,
        1,
    ));
    let commit = applied(h.dir.path(), &unknown, &"c7".repeat(20));
    b.record_applied_config(&commit).await.unwrap();
    until("the leader saying it cannot use the commit", async || {
        config_entries(&a).await.iter().any(|n| {
            n.contains("keeps the configuration it runs") && n.contains("no longer validates")
        })
    })
    .await;
    assert_eq!(a.config().source_file, file);

    let commit = applies(&h, &b, &beta_in_us_east_1(), &"c8".repeat(20)).await;
    until("the leader following the next commit", async || {
        runs(&a, &commit)
    })
    .await;
    still_leads(&a, &b, tasks);
}

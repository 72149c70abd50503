//! Two controllers on one PostgreSQL state, both started with a file naming the configuration
//! repository, while the leader keeps its configuration over a commit that moves beta with a
//! deploy in flight there: the controller standing by records the facts it receives (here a
//! CloudWatch alarm through its real SNS route, signed as SNS signs it) by the configuration the
//! leader acts with, and follows the commit once the leader does.
//!
//! Needs a PostgreSQL server (`TOLLGATE_TEST_POSTGRES`, which `scripts/test` starts); without
//! one each test says so and passes without running.

use std::sync::Arc;

use axum::Router;
use axum::http::StatusCode;
use tollgate::config::ConfigCommit;
use tollgate::domain::{EffectKind, Reason, ReleaseId, RunStatus};
use tollgate::engine::{Clock, Engine, Ingested, ManualClock};
use tollgate::http::sns::{SnsState, routes};
use tollgate::http::sns_verify::{AlarmState, CertCache, SignatureVersion};
use tollgate::store::leader_config::ActsWith;
use tollgate_testkit::sns::{
    TestSigner, alarm_message_at, alarm_subject, body, unsigned_notification,
};

use crate::engine_support::*;
use crate::ha_takeover::{
    LEASE, applied, beta_deploying, config_entries, deployed, managed, on_postgres, runs,
    still_leads, two_managed_with, until,
};
use crate::sns_intake::{Answer, loopback_client, post_notification};

const ALARM_TOPIC: &str = "arn:aws:sns:eu-west-1:444444444444:alarms";
const NOTIFY_LINE: &str = r#"topic = "arn:aws:sns:eu-west-1:111111111111:tollgate""#;
const BETA_ACCOUNT: &str = "222222222222";
const BETA_ALARM: &str = "beta-5xx";
const BETA_IN_EU: &str = r#"targets = [{ account = "beta" }]"#;

/// `STAGES` naming the configuration repository, with the pipeline's alarms on [`ALARM_TOPIC`].
fn alarmed(stages: &str) -> String {
    let with_topic = format!("{NOTIFY_LINE}\nalarm_topics = [\"{ALARM_TOPIC}\"]");
    assert!(
        stages.contains(NOTIFY_LINE),
        "the notifications table moved"
    );
    managed(&stages.replace(NOTIFY_LINE, &with_topic))
}

/// [`alarmed`] with beta in us-east-1 instead of eu-west-1.
fn beta_moved() -> String {
    assert!(STAGES.contains(BETA_IN_EU));
    let moved = r#"targets = [{ account = "beta", region = "us-east-1" }]"#;
    alarmed(&STAGES.replace(BETA_IN_EU, moved))
}

/// A harness whose clock starts at the wall clock's time: an SNS message's `Timestamp` and its
/// signing certificate are judged by the engine's clock.
fn harness() -> Harness {
    let mut h = Harness::new();
    h.clock = Arc::new(ManualClock::new(chrono::Utc::now()));
    h
}

/// `a` leads and `b` stands by, both with [`alarmed`] `STAGES` from their file; `b` serves the
/// SNS route, with the signer's certificate in its cache.
struct Pair {
    a: Engine,
    b: Engine,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    b_sns: Router,
    signer: TestSigner,
    _certs: tempfile::TempDir,
}

async fn pair(h: &Harness) -> Pair {
    let (a, b, tasks) = two_managed_with(h, &alarmed(STAGES)).await;
    let signer = TestSigner::new();
    let certs = tempfile::tempdir().unwrap();
    signer.seed_cache_dir(certs.path()).unwrap();
    let cache = CertCache::with_client(Some(certs.path().into()), loopback_client());
    let b_sns = routes(SnsState::new(b.clone(), Arc::new(cache)).unwrap());
    Pair {
        a,
        b,
        tasks,
        b_sns,
        signer,
        _certs: certs,
    }
}

impl Pair {
    /// `beta-5xx` going to ALARM now in the beta account's `region`, delivered by SNS to `b`.
    async fn beta_alarm_to_b(&self, h: &Harness, region: &str) -> Answer {
        let now = h.clock.now();
        let state = AlarmState::Alarm;
        let message = alarm_message_at(ALARM_TOPIC, BETA_ALARM, BETA_ACCOUNT, region, state, now);
        let subject = alarm_subject(BETA_ALARM, region, state);
        let mut msg = unsigned_notification(ALARM_TOPIC, Some(&subject), &message);
        msg.timestamp = now.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string();
        let signed = self.signer.signed(msg, SignatureVersion::V2);
        post_notification(&self.b_sns, body(&signed)).await
    }

    /// `b` records commit `sha` moving beta to us-east-1 as applied, as a push to the
    /// configuration repository that reached it does (it stands by: not put in force there).
    /// The leader keeps its configuration over it while its beta deploy runs.
    async fn moving_beta_kept(&self, h: &Harness, sha: &str) -> ConfigCommit {
        let commit = applied(h.dir.path(), &beta_moved(), &sha.repeat(20));
        self.b.record_applied_config(&commit).await.unwrap();
        until("the leader keeping its configuration", async || {
            config_entries(&self.a)
                .await
                .iter()
                .any(|n| n.contains("the leader keeps the configuration"))
        })
        .await;
        // The standby has looked at the commit at its claims meanwhile (one a fifth of a lease).
        tokio::time::sleep(LEASE).await;
        commit.commit()
    }

    /// What the leader recorded it acts with, at the epoch of the lease.
    async fn leader_acts_with(&self) -> ActsWith {
        let reads = self.b.reads();
        let lease = reads.lease().await.unwrap().unwrap();
        let record = reads.leader_config().await.unwrap().unwrap();
        assert_eq!((record.holder.as_str(), record.epoch), ("a", lease.epoch));
        record.acts_with
    }
}

/// SNS's delivery was answered 200 `recorded`: an alarm fact for at least one stage.
fn assert_recorded(answer: &Answer) {
    let got = (answer.status, answer.result());
    assert_eq!(got, (StatusCode::OK, "recorded"), "{}", answer.json);
}

/// Release `n`, received by `b`, recorded.
async fn received(b: &Engine, n: u32) -> ReleaseId {
    let push = delivery(&format!("push-{n}"));
    match b.record_release(&release(n), &push).await.unwrap() {
        Ingested::Recorded(id) => id,
        other => panic!("release {n}: {other:?}"),
    }
}

/// Release 1 is beta's known-good; release 2 deploys in beta (eu-west-1) on the leader, slowly,
/// while the leader keeps its configuration over a commit moving beta to us-east-1. CloudWatch's
/// alarm for beta in eu-west-1, delivered by SNS to the controller standing by, is recorded
/// there (by the configuration the leader acts with, not the commit), and the leader rolls beta
/// back in eu-west-1. A standby running the commit would answer 202 `ignored`, leaving the
/// rollback to the leader's slower CloudWatch poll.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ha_takeover_an_alarm_a_standby_receives_is_matched_by_what_the_leader_acts_with() {
    if !on_postgres() {
        return;
    }
    let h = harness();
    let p = pair(&h).await;
    let first = received(&p.b, 1).await;
    until("release 1 through beta", async || {
        status(&p.a, first, "beta").await == RunStatus::Succeeded
    })
    .await;
    h.fakes
        .with(|w| w.deploy_delay = std::time::Duration::from_secs(4));
    let second = received(&p.b, 2).await;
    until("release 2 deploying in beta", async || {
        let effects = p.a.reads().effects_of(second, "beta").await.unwrap();
        effects
            .iter()
            .any(|e| e.kind == EffectKind::Deploy { wave: 0 })
    })
    .await;
    p.moving_beta_kept(&h, "d1").await;
    assert_eq!(p.leader_acts_with().await, ActsWith::File);

    let answer = p.beta_alarm_to_b(&h, "eu-west-1").await;
    assert_recorded(&answer);
    assert_eq!(p.b.config().applied_from, None, "b waits for the leader");
    until("beta rolled back", async || {
        status(&p.a, second, "beta").await == RunStatus::RolledBack
    })
    .await;
    let beta = run(&p.a, second, "beta").await;
    assert!(
        matches!(beta.reason.root(), Reason::AlarmFired { alarm, .. } if alarm == BETA_ALARM),
        "{:?}",
        beta.reason
    );
    let restored = h.fakes.with(|w| w.rolled_back.clone());
    assert!(
        restored
            .iter()
            .any(|(s, at, _)| s == "beta" && at == "beta/eu-west-1"),
        "{restored:?}"
    );
    still_leads(&p.a, &p.b, p.tasks);
}

/// While the leader keeps its configuration over a commit moving beta (its beta deploy runs),
/// the controller standing by keeps the leader's too. Once the deploy is done the leader
/// follows the commit, records that it acts with it, and only then does the standby follow it:
/// an alarm for beta in us-east-1 reaching the standby is recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ha_takeover_a_standby_follows_a_commit_once_the_leader_acts_with_it() {
    if !on_postgres() {
        return;
    }
    let h = harness();
    let p = pair(&h).await;
    let first = beta_deploying(&h, &p.a, &p.b, 4).await;
    let commit = p.moving_beta_kept(&h, "d2").await;
    assert_eq!(p.leader_acts_with().await, ActsWith::File);
    assert_eq!(p.b.config().applied_from, None, "b waits for the leader");

    until("release 1 through beta", async || {
        status(&p.a, first, "beta").await == RunStatus::Succeeded
    })
    .await;
    // Never the standby before the leader: b is read first, then a.
    until("the standby following", async || {
        let b_follows = runs(&p.b, &commit);
        assert!(!b_follows || runs(&p.a, &commit), "b followed before a");
        b_follows
    })
    .await;
    assert_eq!(p.leader_acts_with().await, ActsWith::Applied(commit));
    assert_eq!(deployed(&h, "beta"), ["beta/eu-west-1"]);

    // Past release 1's watch window in beta: an alarm now concerns no run.
    h.clock.advance(chrono::Duration::seconds(1));
    let answer = p.beta_alarm_to_b(&h, "us-east-1").await;
    assert_recorded(&answer);
    still_leads(&p.a, &p.b, p.tasks);
}

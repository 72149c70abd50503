//! Benchmark: how fast does a stage start rolling back once its alarm fires?
//!
//! Runs the real `tollgate serve` against a three-account world in moto on 127.0.0.1 (as
//! `scripts/demo` does) and, for each round, promotes a new release to Prod, posts the Prod
//! alarm's signed SNS notification to `POST /webhooks/sns` while it bakes, and waits for the
//! rollback. It prints, per round and as percentiles: the controller's own figure (the
//! `rollback-latency` event: alarm arrival to the deployer's first rollback call), the SNS
//! route's answer time, and the wall-clock time from the POST to the rollback being finished.
//! The target (the design's): the first rollback call within 250 ms of the alarm's arrival at
//! the 99th percentile.
//!
//! ```text
//! cargo build -p tollgate --bin tollgate --example bench_rollback
//! TOLLGATE_MOTO_SERVER=$PWD/.venv/bin/moto_server \
//!     target/debug/examples/bench_rollback --tollgate target/debug/tollgate --rounds 5
//! ```
//! Bounded: at most 20 rounds, each step at most 60 s; loopback only.

mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use support::{
    Controller, REPO, Story, deliver_push, free_port, random_secret, serve_args, wait_ready,
};
use tollgate::domain::{EffectOutput, RunStatus};
use tollgate::http::sns_verify::AlarmState;
use tollgate::store::Store;
use tollgate_testkit::moto::MotoServer;
use tollgate_testkit::sns::TestSigner;
use tollgate_testkit::world::World;

const MAX_ROUNDS: usize = 20;
const TARGET: Duration = Duration::from_millis(250);

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("benchmark failed: {e:#}");
        std::process::exit(1);
    }
}

fn args() -> Result<(PathBuf, usize)> {
    support::binary_and_rounds("bench_rollback", 5, MAX_ROUNDS)
}

struct Round {
    controller_ms: i64,
    answer: Duration,
    restored: Duration,
}

async fn run() -> Result<()> {
    let (tollgate, rounds) = args()?;
    let moto = tokio::task::spawn_blocking(MotoServer::start).await??;
    let port = free_port()?;
    let public_url = format!("http://127.0.0.1:{port}");
    let world = World::builder()
        .source(REPO)
        .public_url(&public_url)
        .prod_approval(false)
        .stage_tests(false)
        .bake("beta", Duration::from_millis(200))
        .bake("gamma", Duration::from_millis(200))
        .bake("prod", Duration::from_secs(20))
        .build(&moto)
        .await?;
    world
        .bootstrap_stacks(&moto, "bootstrap-placeholder")
        .await?;
    let cloudwatch = world.start_cloudwatch_stub().await?;
    let signer = TestSigner::new();
    let certs = world.seed_sns_certificates(&signer)?;
    let state = format!("sqlite://{}", world.dir().join("tollgate.db").display());
    let secret = random_secret();
    let mut controller = Controller::start(
        &tollgate,
        &serve_args(&world, &state, port, &certs),
        &world.serve_env(&moto, &cloudwatch),
        &secret,
        &world.dir().join("tollgate.log"),
    )?;
    let http = reqwest::Client::builder().no_proxy().build()?;
    wait_ready(&http, &public_url, &mut controller).await?;
    let store = Store::open(&state).await?;
    let mut story = Story::quiet(store.clone(), world.pipeline().to_owned());
    let prod_alarm = world.stage("prod")?.alarm.clone();

    // Round 0 makes a known-good release in every stage to roll back to.
    let sha = |n: usize| format!("{n:040x}");
    world.push_image(&sha(0)).await?;
    deliver_push(&http, &public_url, &secret, &sha(0), "baseline", "bench-0").await?;
    let base = story.release_of(&sha(0)).await?;
    story
        .until(base, "prod", |s| s == RunStatus::Succeeded, &mut controller)
        .await?;
    println!("baseline release {base} is known-good in every stage; {rounds} round(s) follow");

    let mut results = Vec::new();
    for n in 1..=rounds {
        world.push_image(&sha(n)).await?;
        let delivery = format!("bench-{n}");
        deliver_push(&http, &public_url, &secret, &sha(n), "candidate", &delivery).await?;
        let id = story.release_of(&sha(n)).await?;
        story
            .until(id, "prod", |s| s == RunStatus::Baking, &mut controller)
            .await?;
        cloudwatch.set_alarm(&prod_alarm, "ALARM");
        let body = world.alarm_notification(&signer, "prod", AlarmState::Alarm)?;
        let posted = Instant::now();
        let answer = http
            .post(format!("{public_url}/webhooks/sns"))
            .header("x-amz-sns-message-type", "Notification")
            .body(body)
            .send()
            .await?;
        let answered = posted.elapsed();
        ensure!(
            answer.status().is_success(),
            "SNS route answered {}",
            answer.status()
        );
        story
            .until(id, "prod", |s| s == RunStatus::RolledBack, &mut controller)
            .await?;
        let restored = posted.elapsed();
        let effects = store.effects_of(id, "prod").await?;
        let controller_ms = effects
            .iter()
            .find_map(|e| match e.output {
                EffectOutput::RolledBack { latency_ms, .. } => latency_ms,
                _ => None,
            })
            .with_context(|| {
                let seen: Vec<String> = effects
                    .iter()
                    .map(|e| format!("{} {:?} {:?}: {}", e.key, e.status, e.output, e.detail))
                    .collect();
                format!(
                    "no rollback with a measured latency in the round; prod's effects: {seen:#?}"
                )
            })?;
        println!(
            "round {n}: rollback call {controller_ms} ms after the alarm arrived; SNS route answered in {} ms; stack restored {} ms after the POST",
            answered.as_millis(),
            restored.as_millis()
        );
        results.push(Round {
            controller_ms,
            answer: answered,
            restored,
        });
        // The alarm clears before the next candidate, or prod would not be entered.
        cloudwatch.set_alarm(&prod_alarm, "OK");
        let ok = world.alarm_notification(&signer, "prod", AlarmState::Ok)?;
        http.post(format!("{public_url}/webhooks/sns"))
            .header("x-amz-sns-message-type", "Notification")
            .body(ok)
            .send()
            .await?;
    }
    controller.stop()?;

    let ms = |mut v: Vec<u128>| {
        v.sort_unstable();
        let pick = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
        format!(
            "p50 {} ms, p95 {} ms, p99 {} ms, max {} ms",
            pick(0.5),
            pick(0.95),
            pick(0.99),
            v[v.len() - 1]
        )
    };
    let calls: Vec<u128> = results
        .iter()
        .map(|r| r.controller_ms.max(0) as u128)
        .collect();
    let p99 = {
        let mut v = calls.clone();
        v.sort_unstable();
        v.get(((v.len().max(1) - 1) as f64 * 0.99).round() as usize)
            .copied()
            .unwrap_or_default()
    };
    println!(
        "\nalarm arrival → first rollback call ({} rounds): {}",
        results.len(),
        ms(calls)
    );
    println!(
        "SNS route answer time:                  {}",
        ms(results.iter().map(|r| r.answer.as_millis()).collect())
    );
    println!(
        "POST → stack restored (moto):           {}",
        ms(results.iter().map(|r| r.restored.as_millis()).collect())
    );
    println!(
        "target: p99 ≤ {} ms from the alarm's arrival to the first rollback call — {}",
        TARGET.as_millis(),
        if p99 <= TARGET.as_millis() {
            "PASS"
        } else {
            "FAIL"
        }
    );
    Ok(())
}

//! Benchmark: how long does a release take from Beta to Prod when nothing holds it up?
//!
//! Runs the real `tollgate serve` **with its production defaults** (no poll or timer setting
//! is passed: the binary runs as shipped) against a three-account world in moto on 127.0.0.1,
//! with no stage tests, no bake and no approval on Prod. After a warm-up promotion (the first
//! one creates nothing new but fills the credential cache), it promotes `--rounds` releases,
//! one after the other: each is a signed GitHub `push` delivered to `POST /webhooks/github`,
//! and the round ends when the store says Prod succeeded.
//!
//! How each figure is taken:
//! - **wall**: from sending the push to the store showing Prod `Succeeded` (the store is read
//!   every 10 ms from this process, so the figure is at most ~10 ms late).
//! - **time in AWS calls**: every AWS call of the controller goes through a loopback HTTP
//!   proxy of this program (one in front of moto, one in front of the CloudWatch stub), which
//!   notes when each request arrived and when its answer was sent back. The figure is the
//!   union of those intervals inside the round (overlapping calls count once), so it includes
//!   the proxy's own loopback hop.
//! - **AWS calls**: moto's request recorder (`/moto-api/recorder/*`) counts the calls that
//!   reached moto in the round; the CloudWatch stub's calls are counted by its proxy.
//! - **controller CPU**: `utime + stime` of the `tollgate serve` process from
//!   `/proc/<pid>/stat` at the start and end of the round (clock ticks, usually 10 ms each).
//!
//! Every row is printed with its target and PASS or FAIL.
//!
//! ```text
//! cargo build --release -p tollgate --bin tollgate --example bench_promote
//! TOLLGATE_MOTO_SERVER=$PWD/.venv/bin/moto_server \
//!     target/release/examples/bench_promote --tollgate target/release/tollgate --rounds 10
//! ```
//! Bounded: at most 20 rounds, each step at most 60 s; loopback only.

mod support;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Result, bail, ensure};
use support::measure::{cpu_ms, pick, tick_ms, verdict};
use support::proxy::{Proxy, union};
use support::{Controller, REPO, STEP_LIMIT, deliver_push, free_port};
use tollgate::domain::{ReleaseId, RunStatus};
use tollgate::store::Store;
use tollgate_testkit::moto::MotoServer;
use tollgate_testkit::sns::TestSigner;
use tollgate_testkit::world::World;

const MAX_ROUNDS: usize = 20;
const STAGES: [&str; 3] = ["beta", "gamma", "prod"];

/// Targets (DESIGN.md §8).
const WALL_P50_TARGET: Duration = Duration::from_secs(1);
const RATIO_TARGET: f64 = 3.0;
const CPU_PER_STAGE_TARGET_MS: f64 = 50.0;
/// The fewest AWS calls one stage of a CloudFormation deploy with `promote = "retag"` can
/// make: DescribeStacks (is the stack there, is it busy), CreateChangeSet, DescribeChangeSet,
/// ExecuteChangeSet, DescribeStacks (read back); BatchGetImage and PutImage (the retag); one
/// DescribeAlarms (the alarm gate before the deploy). AssumeRole is cached, so counts 0.
const MIN_CALLS_PER_STAGE: f64 = 8.0;
const CALLS_TARGET_FACTOR: f64 = 1.2;

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("benchmark failed: {e:#}");
        std::process::exit(1);
    }
}

fn args() -> Result<(PathBuf, usize)> {
    support::binary_and_rounds("bench_promote", 10, MAX_ROUNDS)
}

// ----- one promotion ------------------------------------------------------------------------

struct Round {
    wall: Duration,
    aws: Duration,
    cpu_ms: f64,
    moto_calls: usize,
    cloudwatch_calls: usize,
    actions: BTreeMap<String, usize>,
}

struct Bench {
    http: reqwest::Client,
    url: String,
    secret: String,
    store: Store,
    pipeline: String,
    controller: Controller,
    moto: MotoServer,
    moto_proxy: Proxy,
    cloudwatch_proxy: Proxy,
    tick_ms: f64,
}

impl Bench {
    /// Waits, reading the store every 10 ms, until `release` succeeded in Prod.
    async fn until_prod(&mut self, release: ReleaseId) -> Result<()> {
        let deadline = Instant::now() + STEP_LIMIT;
        loop {
            self.controller.check_alive()?;
            if let Some(run) = self.store.stage_run(release, "prod").await? {
                if run.status == RunStatus::Succeeded {
                    return Ok(());
                }
                if run.status.is_terminal() {
                    bail!("{release} ended {:?} in prod", run.status);
                }
            }
            for stage in STAGES {
                if let Some(run) = self.store.stage_run(release, stage).await? {
                    if run.status.is_terminal() && run.status != RunStatus::Succeeded {
                        bail!("{release} ended {:?} in {stage}", run.status);
                    }
                }
            }
            ensure!(
                Instant::now() < deadline,
                "{release} did not reach prod within {STEP_LIMIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn promote(&mut self, world: &World, n: usize) -> Result<Round> {
        let sha = format!("{n:040x}");
        world.push_image(&sha).await?;
        self.moto.recorder_clear().await?;
        self.moto.recorder_start().await?;
        let cpu_before = cpu_ms(self.controller.pid(), self.tick_ms)?;
        let start = Instant::now();
        let delivery = format!("bench-promote-{n}");
        let (http, url, secret) = (&self.http, &self.url, &self.secret);
        deliver_push(http, url, secret, &sha, "candidate", &delivery).await?;
        let deadline = Instant::now() + STEP_LIMIT;
        let id = support::release_of(&self.store, &self.pipeline, &sha, deadline).await?;
        self.until_prod(id).await?;
        let end = Instant::now();
        let cpu_after = cpu_ms(self.controller.pid(), self.tick_ms)?;
        self.moto.recorder_stop().await?;
        let recorded = self.moto.recorded_requests().await?;
        let moto_calls = self.moto_proxy.calls_between(start, end);
        let cloudwatch_calls = self.cloudwatch_proxy.calls_between(start, end);
        let mut all = moto_calls.clone();
        all.extend(cloudwatch_calls.iter().cloned());
        let mut actions = BTreeMap::new();
        for c in &all {
            *actions.entry(c.action.clone()).or_default() += 1;
        }
        if recorded.len() != moto_calls.len() {
            eprintln!(
                "note: round {n}: moto recorded {} calls, its proxy saw {}",
                recorded.len(),
                moto_calls.len()
            );
        }
        Ok(Round {
            wall: end - start,
            aws: union(&all, start, end),
            cpu_ms: cpu_after - cpu_before,
            moto_calls: recorded.len(),
            cloudwatch_calls: cloudwatch_calls.len(),
            actions,
        })
    }
}

// ----- the report ---------------------------------------------------------------------------

fn report(rounds: &[Round]) {
    let secs = |d: Duration| d.as_secs_f64();
    let walls: Vec<f64> = rounds.iter().map(|r| secs(r.wall)).collect();
    let aws: Vec<f64> = rounds.iter().map(|r| secs(r.aws)).collect();
    let ratios: Vec<f64> = rounds.iter().map(|r| secs(r.wall) / secs(r.aws)).collect();
    let cpu: Vec<f64> = rounds.iter().map(|r| r.cpu_ms / 3.0).collect();
    let calls: Vec<f64> = rounds
        .iter()
        .map(|r| (r.moto_calls + r.cloudwatch_calls) as f64 / 3.0)
        .collect();
    let (wall50, wall95) = (pick(&walls, 0.5), pick(&walls, 0.95));
    let ratio50 = pick(&ratios, 0.5);
    let cpu50 = pick(&cpu, 0.5);
    let calls50 = pick(&calls, 0.5);
    let calls_max = MIN_CALLS_PER_STAGE * CALLS_TARGET_FACTOR;
    println!(
        "\n| figure ({} promotions Beta → Gamma → Prod) | p50 | p95 | target | result |",
        rounds.len()
    );
    println!("|---|---|---|---|---|");
    println!(
        "| promotion wall time | {wall50:.3} s | {wall95:.3} s | p50 ≤ {:.1} s | {} |",
        secs(WALL_P50_TARGET),
        verdict(wall50 <= secs(WALL_P50_TARGET))
    );
    println!(
        "| time in AWS calls in that promotion | {:.3} s | {:.3} s | (for the ratio) | — |",
        pick(&aws, 0.5),
        pick(&aws, 0.95)
    );
    println!(
        "| wall / AWS time | {ratio50:.1}× | {:.1}× | p50 ≤ {RATIO_TARGET:.0}× | {} |",
        pick(&ratios, 0.95),
        verdict(ratio50 <= RATIO_TARGET)
    );
    println!(
        "| controller CPU per stage | {cpu50:.0} ms | {:.0} ms | p50 ≤ {CPU_PER_STAGE_TARGET_MS:.0} ms | {} |",
        pick(&cpu, 0.95),
        verdict(cpu50 <= CPU_PER_STAGE_TARGET_MS)
    );
    println!(
        "| AWS calls per stage | {calls50:.1} | {:.1} | ≤ {calls_max:.1} (1.2 × {MIN_CALLS_PER_STAGE:.0}) | {} |",
        pick(&calls, 0.95),
        verdict(calls50 <= calls_max)
    );
    if let Some(last) = rounds.last() {
        let list: Vec<String> = last
            .actions
            .iter()
            .map(|(a, n)| format!("{a} {n}"))
            .collect();
        println!(
            "\nAWS calls in the last promotion ({} to moto, by its recorder; {} to the CloudWatch stub): {}",
            last.moto_calls,
            last.cloudwatch_calls,
            list.join(", ")
        );
    }
}

// ----- the run ------------------------------------------------------------------------------

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
        .bake_all(Duration::ZERO)
        .build(&moto)
        .await?;
    world
        .bootstrap_stacks(&moto, "bootstrap-placeholder")
        .await?;
    let cloudwatch = world.start_cloudwatch_stub().await?;
    let (moto_proxy, moto_url) = Proxy::start(moto.endpoint()).await?;
    let (cloudwatch_proxy, cloudwatch_url) = Proxy::start(cloudwatch.endpoint()).await?;
    let env: Vec<(String, String)> = world
        .serve_env(&moto, &cloudwatch)
        .into_iter()
        .map(|(k, v)| match k.as_str() {
            "AWS_ENDPOINT_URL" => (k, moto_url.clone()),
            "AWS_ENDPOINT_URL_CLOUDWATCH" => (k, cloudwatch_url.clone()),
            _ => (k, v),
        })
        .collect();
    let signer = TestSigner::new();
    let certs = world.seed_sns_certificates(&signer)?;
    let served = support::serve_world(&tollgate, &world, port, &certs, &env).await?;
    let mut bench = Bench {
        http: served.http,
        url: public_url,
        secret: served.secret,
        store: served.store,
        pipeline: world.pipeline().to_owned(),
        controller: served.controller,
        moto,
        moto_proxy,
        cloudwatch_proxy,
        tick_ms: tick_ms(),
    };
    let warm = bench.promote(&world, 0).await?;
    println!(
        "warm-up promotion (not counted): {:.3} s wall",
        warm.wall.as_secs_f64()
    );
    let mut results = Vec::new();
    for n in 1..=rounds {
        let r = bench.promote(&world, n).await?;
        println!(
            "promotion {n}: {:.3} s wall, {:.3} s in AWS calls, {:.0} ms controller CPU, {} AWS calls",
            r.wall.as_secs_f64(),
            r.aws.as_secs_f64(),
            r.cpu_ms,
            r.moto_calls + r.cloudwatch_calls
        );
        results.push(r);
    }
    bench.controller.stop()?;
    report(&results);
    Ok(())
}

//! Benchmark: GitHub webhook received → durable 2xx, with 200 signed deliveries at once.
//!
//! Runs the real `tollgate serve` (production defaults) over 200 pipelines
//! ([`support::fleet`]), with moto on 127.0.0.1 as AWS. Each round sends 200 signed GitHub
//! `push` deliveries at the same moment, one per pipeline, to `POST /webhooks/github`, and
//! times each from the start of its request to its 2xx answer (connection included). The
//! answer is durable: the route answers only after the delivery and its release are committed
//! to the SQLite file (WAL). After the rounds, the store is read back to check that every
//! delivery answered 2xx made its release.
//!
//! `[controller.http]` is set so that the edge admits all 200 at once (`max_concurrent_requests`
//! 256, a rate limit of 100,000 a minute with a burst of 10,000): all deliveries come from
//! 127.0.0.1, and with the defaults (64 at once, burst 60 per address) most would be refused
//! with 503/429 before reaching the controller. The figure measures the controller, not the
//! edge's refusals.
//!
//! ```text
//! cargo build --release -p tollgate --bin tollgate --example bench_webhook
//! TOLLGATE_MOTO_SERVER=$PWD/.venv/bin/moto_server \
//!     target/release/examples/bench_webhook --tollgate target/release/tollgate --rounds 5
//! ```
//! Bounded: at most 10 rounds, each request at most 30 s; loopback only.

mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, ensure};
use support::measure::{pick, verdict};
use support::{Controller, deliver, fleet, free_port, push_body, random_secret};
use tollgate::store::Store;
use tollgate_testkit::moto::MotoServer;

const CONCURRENT: usize = 200;
const MAX_ROUNDS: usize = 10;
const P99_TARGET: Duration = Duration::from_millis(20);
const REQUEST_LIMIT: Duration = Duration::from_secs(30);

/// Lets all 200 deliveries from one address through the edge at once (see the module doc).
const HTTP: &str =
    "max_concurrent_requests = 256\nrate_limit_per_minute = 100000\nrate_limit_burst = 10000";

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("benchmark failed: {e:#}");
        std::process::exit(1);
    }
}

fn args() -> Result<(PathBuf, usize)> {
    let (mut tollgate, mut rounds) = (None, 5);
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let value = it.next().with_context(|| format!("{a} needs a value"))?;
        match a.as_str() {
            "--tollgate" => tollgate = Some(PathBuf::from(value)),
            "--rounds" => rounds = value.parse().with_context(|| format!("--rounds {value}"))?,
            other => return Err(anyhow!("unknown argument {other}")),
        }
    }
    ensure!(
        (1..=MAX_ROUNDS).contains(&rounds),
        "--rounds must be 1..={MAX_ROUNDS}"
    );
    let tollgate = tollgate.ok_or_else(|| anyhow!("--tollgate PATH is required"))?;
    Ok((std::fs::canonicalize(&tollgate)?, rounds))
}

/// One delivery: how long until its answer, and the answer's status.
async fn one(
    http: reqwest::Client,
    url: String,
    secret: String,
    round: usize,
    i: usize,
) -> Result<(Duration, u16)> {
    let sha = format!("{round:08x}{i:032x}");
    let body = push_body(&fleet::repository(i), &sha, "bench");
    let delivery = format!("bench-webhook-{round}-{i}");
    let start = Instant::now();
    let (status, _) = tokio::time::timeout(
        REQUEST_LIMIT,
        deliver(&http, &url, &secret, "push", &delivery, body),
    )
    .await
    .context("no answer within 30 s")??;
    Ok((start.elapsed(), status.as_u16()))
}

async fn run() -> Result<()> {
    let (tollgate, rounds) = args()?;
    let moto = tokio::task::spawn_blocking(MotoServer::start).await??;
    let dir = tempfile::tempdir()?;
    let port = free_port()?;
    let url = format!("http://127.0.0.1:{port}");
    let stages = fleet::write(dir.path(), CONCURRENT, &url, HTTP)?;
    let state = format!("sqlite://{}", dir.path().join("tollgate.db").display());
    let secret = random_secret();
    let env = support::aws_env(&moto.endpoint());
    let mut controller = Controller::start(
        &tollgate,
        &support::serve_config_args(&stages, &state, port, None),
        &env,
        &secret,
        &dir.path().join("tollgate.log"),
    )?;
    let http = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .build()?;
    support::wait_ready(&http, &url, &mut controller).await?;
    println!(
        "tollgate serve over {CONCURRENT} pipelines; {rounds} rounds of {CONCURRENT} concurrent signed push deliveries"
    );
    let mut latencies = Vec::new();
    let mut refused: std::collections::BTreeMap<u16, usize> = Default::default();
    for round in 1..=rounds {
        let tasks: Vec<_> = (0..CONCURRENT)
            .map(|i| tokio::spawn(one(http.clone(), url.clone(), secret.clone(), round, i)))
            .collect();
        let mut this = Vec::new();
        for t in tasks {
            let (took, status) = t.await??;
            if (200..300).contains(&status) {
                this.push(took.as_secs_f64() * 1000.0);
            } else {
                *refused.entry(status).or_default() += 1;
            }
        }
        println!(
            "round {round}: {} answered 2xx, p50 {:.1} ms, p99 {:.1} ms, slowest {:.1} ms",
            this.len(),
            pick(&this, 0.5),
            pick(&this, 0.99),
            pick(&this, 1.0)
        );
        latencies.extend(this);
        controller.check_alive()?;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let store = Store::open(&state).await?;
    let mut recorded = 0;
    for i in 0..CONCURRENT {
        recorded += store.recent_runs(&format!("svc-{i}"), 100).await?.len();
    }
    controller.stop()?;
    if !refused.is_empty() {
        support::print_log_errors(&dir.path().join("tollgate.log"), 5);
    }
    let p99 = pick(&latencies, 0.99);
    println!(
        "\n| figure ({} deliveries, {CONCURRENT} at once) | p50 | p95 | p99 | target | result |",
        latencies.len()
    );
    println!("|---|---|---|---|---|---|");
    println!(
        "| webhook received → durable 2xx | {:.1} ms | {:.1} ms | {p99:.1} ms | p99 ≤ {} ms | {} |",
        pick(&latencies, 0.5),
        pick(&latencies, 0.95),
        P99_TARGET.as_millis(),
        verdict(refused.is_empty() && p99 <= P99_TARGET.as_secs_f64() * 1000.0)
    );
    println!(
        "\nanswers other than 2xx (status: count): {refused:?}; releases in the store afterwards: {recorded} (deliveries sent: {})",
        rounds * CONCURRENT
    );
    Ok(())
}

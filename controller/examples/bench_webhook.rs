//! Benchmark: GitHub webhook received → durable 2xx, with 200 signed deliveries at once.
//!
//! Runs the real `tollgate serve` (production defaults) over 200 pipelines
//! ([`support::fleet`]), with moto on 127.0.0.1 as AWS. Each round sends 200 signed GitHub
//! `push` deliveries at the same moment, one per pipeline, to `POST /webhooks/github`, and
//! times each from the moment its request is sent to its 2xx answer: "received → durable
//! 2xx". Each push moves its pipeline's branch on from the previous round's commit, as
//! GitHub's consecutive pushes do. The answer is durable: the route answers only after the
//! delivery and its release are committed to the SQLite file (WAL). After the rounds, the
//! store is read back to check that every delivery answered 2xx made its release.
//!
//! So that the figure is the controller's and not the client's, every request of a round is
//! built and signed before the round starts, and sent over one of 200 keep-alive connections
//! opened beforehand (GitHub keeps none between deliveries; the TCP connect on loopback is
//! not the controller's work); the 200 tasks start together from a barrier.
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
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, ensure};
use support::measure::{pick, verdict};
use support::{Controller, fleet, free_port, push_body_after, random_secret};
use tokio::sync::Barrier;
use tollgate::github::webhook::sign;
use tollgate::secret::Secret;
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

/// The commit pushed to pipeline `i`'s branch in `round` (round 0: the branch's creation).
fn sha(round: usize, i: usize) -> String {
    if round == 0 {
        return "0".repeat(40);
    }
    format!("{round:08x}{i:032x}")
}

/// Delivery `i` of `round`, built and signed: a push moving the branch on from the previous
/// round's commit.
fn request(
    http: &reqwest::Client,
    url: &str,
    secret: &Secret,
    round: usize,
    i: usize,
) -> Result<reqwest::Request> {
    let body = push_body_after(
        &fleet::repository(i),
        &sha(round - 1, i),
        &sha(round, i),
        "bench",
    );
    Ok(http
        .post(format!("{url}/webhooks/github"))
        .header("content-type", "application/json")
        .header("x-github-event", "push")
        .header("x-github-delivery", format!("bench-webhook-{round}-{i}"))
        .header("x-hub-signature-256", sign(secret, body.as_bytes()))
        .body(body)
        .build()?)
}

/// One delivery, sent when every task of the round is ready: how long until its answer, and
/// the answer's status.
async fn one(
    http: reqwest::Client,
    request: reqwest::Request,
    ready: Arc<Barrier>,
) -> Result<(Duration, u16)> {
    ready.wait().await;
    let start = Instant::now();
    let answer = tokio::time::timeout(REQUEST_LIMIT, async {
        let r = http.execute(request).await?;
        let status = r.status();
        r.bytes().await?;
        anyhow::Ok(status)
    })
    .await
    .context("no answer within 30 s")??;
    Ok((start.elapsed(), answer.as_u16()))
}

/// Opens (or keeps) `CONCURRENT` keep-alive connections to the controller: as many
/// `GET /healthz` at once.
async fn warm(http: &reqwest::Client, url: &str) -> Result<()> {
    let ready = Arc::new(Barrier::new(CONCURRENT));
    let tasks: Vec<_> = (0..CONCURRENT)
        .map(|_| {
            let (http, url, ready) = (http.clone(), format!("{url}/healthz"), ready.clone());
            tokio::spawn(async move {
                ready.wait().await;
                http.get(url).send().await?.bytes().await?;
                anyhow::Ok(())
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    Ok(())
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
        .http1_only()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(CONCURRENT)
        .pool_idle_timeout(None)
        .build()?;
    let signing = Secret::new(&secret);
    support::wait_ready(&http, &url, &mut controller).await?;
    println!(
        "tollgate serve over {CONCURRENT} pipelines; {rounds} rounds of {CONCURRENT} concurrent signed push deliveries"
    );
    let mut latencies = Vec::new();
    let mut refused: std::collections::BTreeMap<u16, usize> = Default::default();
    for round in 1..=rounds {
        warm(&http, &url).await?;
        let ready = Arc::new(Barrier::new(CONCURRENT));
        let tasks = (0..CONCURRENT)
            .map(|i| {
                let r = request(&http, &url, &signing, round, i)?;
                Ok(tokio::spawn(one(http.clone(), r, ready.clone())))
            })
            .collect::<Result<Vec<_>>>()?;
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

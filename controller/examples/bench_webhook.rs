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
//! built and signed before the round starts, as the bytes of an HTTP/1.1 request, and written
//! on one of 200 connections opened (and used once for `GET /healthz`) beforehand: GitHub
//! keeps none between deliveries, but the TCP connect on loopback is not the controller's
//! work. The 200 tasks start together from a barrier, write their request and read the
//! answer themselves: the client shares these cores with the controller, and an HTTP client
//! library (reqwest) cost about 95 µs of CPU a request, 19 ms of a round.
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
//! With `--no-release`, each push names a repository no pipeline follows: the delivery is
//! verified, parsed and decided as usual and records only its dedupe, and nothing is
//! reconciled after it. That measures the request path without a release (a reference, not
//! the target's figure); the store is then checked for every delivery and no release.
//!
//! With `--healthz`, each round sends `GET /healthz` on the same 200 connections instead of
//! deliveries: no body, no signature, no store. That is the HTTP floor of this machine, the
//! part of every answer that no change to the route can remove (a reference).
//!
//! With `--store-only`, no controller runs: each round's 200 pushes are parsed and decided by
//! the controller's own code in this process, and their releases recorded at once through
//! [`Store::record_release_after`], as the webhook route records them (the pipeline's newest
//! release checked, the push's link kept, the batched write), in a SQLite file with the
//! controller's settings, one round a second as above. It times each write from the moment
//! the round's barrier releases it to its durable answer (the newest-release read before it is
//! not timed): the part of the webhook figure that the store's write path alone takes (a
//! reference).
//!
//! Bounded: at most 10 rounds, each request at most 30 s; loopback only.

mod support;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, ensure};
use support::measure::{cpu_ms, pick, tick_ms, verdict};
use support::{Controller, fleet, free_port, push_body_after, random_secret};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Barrier;
use tollgate::domain::StageName;
use tollgate::engine::{Delivery, Ingested};
use tollgate::github::intake::{Decision, decide_push, pipeline_delivery, push_link};
use tollgate::github::webhook::{GithubEvent, PushEvent, parse_event, sign};
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

/// What each round sends (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Pushes that each make a release: the target's figure.
    Release,
    /// `--no-release`: pushes to a repository no pipeline follows.
    NoRelease,
    /// `--healthz`: `GET /healthz` instead of deliveries.
    Healthz,
    /// `--store-only`: the store's write path alone, in this process.
    StoreOnly,
}

struct Args {
    /// The binary to serve with; `None` only with `--store-only`.
    tollgate: Option<PathBuf>,
    rounds: usize,
    mode: Mode,
}

fn args() -> Result<Args> {
    let (mut tollgate, mut rounds, mut mode) = (None, 5, Mode::Release);
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let flag = match a.as_str() {
            "--no-release" => Some(Mode::NoRelease),
            "--healthz" => Some(Mode::Healthz),
            "--store-only" => Some(Mode::StoreOnly),
            _ => None,
        };
        if let Some(flag) = flag {
            ensure!(
                mode == Mode::Release,
                "--no-release, --healthz and --store-only exclude each other"
            );
            mode = flag;
            continue;
        }
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
    let tollgate = match tollgate {
        Some(path) => Some(std::fs::canonicalize(&path)?),
        None if mode == Mode::StoreOnly => None,
        None => return Err(anyhow!("--tollgate PATH is required")),
    };
    Ok(Args {
        tollgate,
        rounds,
        mode,
    })
}

/// The repository push `i` names: pipeline `i`'s, or one no pipeline follows.
fn repository(i: usize, no_release: bool) -> String {
    if no_release {
        format!("nobody/unfollowed-{i}")
    } else {
        fleet::repository(i)
    }
}

/// The commit pushed to pipeline `i`'s branch in `round` (round 0: the branch's creation).
fn sha(round: usize, i: usize) -> String {
    if round == 0 {
        return "0".repeat(40);
    }
    format!("{round:08x}{i:032x}")
}

/// The payload of push `i` in `round`: the branch moved on from the previous round's commit.
fn push_body(round: usize, i: usize, no_release: bool) -> String {
    push_body_after(
        &repository(i, no_release),
        &sha(round - 1, i),
        &sha(round, i),
        "bench",
    )
}

/// Request `i` of `round`, as the bytes of its HTTP/1.1 request: a signed delivery of a push
/// moving the branch on from the previous round's commit, or (`--healthz`) `GET /healthz`.
fn request(port: u16, secret: &Secret, round: usize, i: usize, mode: Mode) -> Vec<u8> {
    if mode == Mode::Healthz {
        return health_request(port).into_bytes();
    }
    let body = push_body(round, i, mode == Mode::NoRelease);
    let head = format!(
        "POST /webhooks/github HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n\
         content-type: application/json\r\nx-github-event: push\r\n\
         x-github-delivery: bench-webhook-{round}-{i}\r\nx-hub-signature-256: {}\r\n\
         content-length: {}\r\n\r\n",
        sign(secret, body.as_bytes()),
        body.len()
    );
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body.as_bytes());
    bytes
}

/// Sends `request` on `conn` and reads the answer: its status code.
async fn exchange(conn: &mut TcpStream, request: &[u8]) -> Result<u16> {
    conn.write_all(request).await?;
    let mut got = Vec::with_capacity(1024);
    let mut buf = [0u8; 4096];
    let (head_end, status, length) = loop {
        let n = conn.read(&mut buf).await?;
        ensure!(
            n > 0,
            "the controller closed the connection before answering"
        );
        got.extend_from_slice(&buf[..n]);
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = std::str::from_utf8(&got[..end])?;
            let status: u16 = head
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| anyhow!("malformed answer: {head}"))?;
            let length = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().ok())
                        .flatten()
                })
                .ok_or_else(|| anyhow!("an answer without content-length: {head}"))?;
            break (end + 4, status, length);
        }
    };
    while got.len() < head_end + length {
        let n = conn.read(&mut buf).await?;
        ensure!(
            n > 0,
            "the controller closed the connection in an answer's body"
        );
        got.extend_from_slice(&buf[..n]);
    }
    Ok(status)
}

/// One delivery, sent when every task of the round is ready: how long until its whole answer
/// was read, and the answer's status.
async fn one(
    mut conn: TcpStream,
    request: Vec<u8>,
    ready: Arc<Barrier>,
) -> Result<(Duration, u16)> {
    ready.wait().await;
    let start = Instant::now();
    let status = tokio::time::timeout(REQUEST_LIMIT, exchange(&mut conn, &request))
        .await
        .context("no answer within 30 s")??;
    Ok((start.elapsed(), status))
}

fn health_request(port: u16) -> String {
    format!("GET /healthz HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n\r\n")
}

/// Opens `CONCURRENT` connections to the controller, each used once for `GET /healthz` so
/// that the controller has accepted it before the round.
async fn connect(port: u16) -> Result<Vec<TcpStream>> {
    let health = health_request(port);
    let tasks: Vec<_> = (0..CONCURRENT)
        .map(|_| {
            let health = health.clone();
            tokio::spawn(async move {
                let mut conn = TcpStream::connect(("127.0.0.1", port)).await?;
                conn.set_nodelay(true)?;
                let status =
                    tokio::time::timeout(REQUEST_LIMIT, exchange(&mut conn, health.as_bytes()))
                        .await
                        .context("no answer to GET /healthz within 30 s")??;
                ensure!(status == 200, "GET /healthz answered {status}");
                anyhow::Ok(conn)
            })
        })
        .collect();
    let mut conns = Vec::with_capacity(CONCURRENT);
    for t in tasks {
        conns.push(t.await??);
    }
    Ok(conns)
}

async fn run() -> Result<()> {
    let Args {
        tollgate,
        rounds,
        mode,
    } = args()?;
    let Some(tollgate) = tollgate.filter(|_| mode != Mode::StoreOnly) else {
        return store_alone(rounds).await;
    };
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
    let http = reqwest::Client::builder().no_proxy().build()?;
    let signing = Secret::new(&secret);
    support::wait_ready(&http, &url, &mut controller).await?;
    let what = if mode == Mode::Healthz {
        "`GET /healthz` requests"
    } else {
        "signed push deliveries"
    };
    println!(
        "tollgate serve over {CONCURRENT} pipelines; {rounds} rounds of {CONCURRENT} concurrent {what}"
    );
    let mut latencies = Vec::new();
    let (tick, mut cpu) = (tick_ms(), 0.0);
    let mut refused: std::collections::BTreeMap<u16, usize> = Default::default();
    for round in 1..=rounds {
        let conns = connect(port).await?;
        let cpu_before = cpu_ms(controller.pid(), tick)?;
        let ready = Arc::new(Barrier::new(CONCURRENT));
        let tasks: Vec<_> = conns
            .into_iter()
            .enumerate()
            .map(|(i, conn)| {
                let r = request(port, &signing, round, i, mode);
                tokio::spawn(one(conn, r, ready.clone()))
            })
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
        cpu += cpu_ms(controller.pid(), tick)? - cpu_before;
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
    let deliveries: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM deliveries")
        .fetch_one(store.pool())
        .await?;
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
    let reference = |figure| (figure, "(reference)".to_owned(), "-");
    let (figure, target, result) = match mode {
        Mode::NoRelease => {
            reference("webhook received → durable 2xx, no release made (`--no-release`)")
        }
        Mode::Healthz => reference("`GET /healthz` → 200, the HTTP floor (`--healthz`)"),
        Mode::Release | Mode::StoreOnly => (
            "webhook received → durable 2xx",
            format!("p99 ≤ {} ms", P99_TARGET.as_millis()),
            verdict(refused.is_empty() && p99 <= P99_TARGET.as_secs_f64() * 1000.0),
        ),
    };
    println!(
        "| {figure} | {:.1} ms | {:.1} ms | {p99:.1} ms | {target} | {result} |",
        pick(&latencies, 0.5),
        pick(&latencies, 0.95),
    );
    println!(
        "\ncontroller CPU (utime + stime) while the rounds were answered: {cpu:.0} ms, {:.0} µs a request",
        cpu * 1000.0 / (rounds * CONCURRENT) as f64
    );
    println!(
        "answers other than 2xx (status: count): {refused:?}; releases in the store afterwards: {recorded}; deliveries recorded: {deliveries} (deliveries sent: {})",
        if mode == Mode::Healthz {
            0
        } else {
            rounds * CONCURRENT
        }
    );
    // Refusals are a FAIL in the table above; what was answered 2xx must be in the store.
    let answered = latencies.len();
    let (expected, delivered) = match mode {
        Mode::NoRelease => (0, answered),
        Mode::Healthz => (0, 0),
        Mode::Release | Mode::StoreOnly => (answered, answered),
    };
    ensure!(
        recorded == expected,
        "{recorded} releases in the store, {expected} expected"
    );
    ensure!(
        usize::try_from(deliveries)? >= delivered,
        "only {deliveries} deliveries recorded of {delivered} answered 2xx"
    );
    Ok(())
}

/// Push `i` of `round` as the controller receives it: parsed from its payload by the webhook
/// route's parser.
fn parsed_push(round: usize, i: usize) -> Result<PushEvent> {
    let body = push_body(round, i, false);
    match parse_event("push", body.as_bytes())? {
        GithubEvent::Push(push) => Ok(push),
        other => Err(anyhow!("not parsed as a push: {other:?}")),
    }
}

/// `--store-only`: the releases of each round's 200 pushes recorded at once through the
/// store, as the webhook route records them (see the module doc).
async fn store_alone(rounds: usize) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let stages = fleet::write(dir.path(), CONCURRENT, "http://127.0.0.1:1", HTTP)?;
    let config = tollgate::config::load(&stages)?.config;
    let state = format!("sqlite://{}", dir.path().join("tollgate.db").display());
    let store = Store::open(&state).await?;
    println!(
        "the store alone: {rounds} rounds of {CONCURRENT} releases recorded at once, in this process"
    );
    let (tick, pid) = (tick_ms(), std::process::id());
    let (mut latencies, mut cpu, mut walls) = (Vec::new(), 0.0, Vec::new());
    for round in 1..=rounds {
        // Decided before the round starts: what is timed is the store's part.
        let mut writes = Vec::with_capacity(CONCURRENT);
        for (i, p) in config.pipelines.iter().enumerate() {
            let push = parsed_push(round, i)?;
            let Decision::Release(r) = decide_push(p, &push) else {
                return Err(anyhow!("push {i} of round {round} makes no release"));
            };
            let link = push_link(&config, &push)
                .ok_or_else(|| anyhow!("push {i} of round {round} keeps no link"))?;
            let stages: Vec<StageName> = p.stages.iter().map(|s| s.name.clone()).collect();
            let delivery = pipeline_delivery(
                &Delivery {
                    source: "github".into(),
                    id: format!("bench-webhook-{round}-{i}"),
                },
                &p.name,
            );
            writes.push((r, stages, delivery, link));
        }
        let ready = Arc::new(Barrier::new(CONCURRENT + 1));
        let tasks: Vec<_> = writes
            .into_iter()
            .map(|(r, stages, delivery, link)| {
                let (store, ready) = (store.clone(), ready.clone());
                tokio::spawn(async move {
                    // As the route does: the newest release this controller knows, then the
                    // batched write that checks it is still the newest.
                    let newest = store.newest_of(&r.pipeline, false).await?.map(|n| n.id);
                    ready.wait().await;
                    let start = Instant::now();
                    let out = store
                        .record_release_after(
                            &r,
                            &stages,
                            &delivery,
                            chrono::Utc::now(),
                            Some(newest),
                            Some(&link),
                        )
                        .await?;
                    ensure!(
                        matches!(out, Some(Ingested::Recorded(_))),
                        "{}: not recorded: {out:?}",
                        r.pipeline
                    );
                    anyhow::Ok(start.elapsed())
                })
            })
            .collect();
        ready.wait().await;
        let (start, cpu_before) = (Instant::now(), cpu_ms(pid, tick)?);
        let mut this = Vec::with_capacity(CONCURRENT);
        for t in tasks {
            this.push(t.await??.as_secs_f64() * 1000.0);
        }
        let wall = start.elapsed().as_secs_f64() * 1000.0;
        cpu += cpu_ms(pid, tick)? - cpu_before;
        println!(
            "round {round}: {CONCURRENT} recorded in {wall:.1} ms, p50 {:.1} ms, p99 {:.1} ms",
            pick(&this, 0.5),
            pick(&this, 0.99)
        );
        walls.push(wall);
        latencies.extend(this);
        // As between the webhook rounds.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    println!(
        "\n| figure ({} releases, {CONCURRENT} at once) | p50 | p95 | p99 | target | result |",
        latencies.len()
    );
    println!("|---|---|---|---|---|---|");
    println!(
        "| the store alone: release recorded, durable (`--store-only`) | {:.1} ms | {:.1} ms | {:.1} ms | (reference) | - |",
        pick(&latencies, 0.5),
        pick(&latencies, 0.95),
        pick(&latencies, 0.99)
    );
    println!(
        "\nthis process's CPU (utime + stime) while the rounds were recorded: {cpu:.0} ms, {:.0} µs a release; a round took p50 {:.1} ms",
        cpu * 1000.0 / (rounds * CONCURRENT) as f64,
        pick(&walls, 0.5)
    );
    let releases: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM releases")
        .fetch_one(store.pool())
        .await?;
    ensure!(
        usize::try_from(releases)? == rounds * CONCURRENT,
        "{releases} releases in the store, {} expected",
        rounds * CONCURRENT
    );
    Ok(())
}

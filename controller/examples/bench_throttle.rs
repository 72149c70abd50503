//! Benchmark: 50 pipelines promoting at once while AWS throttles 20 % of the calls and fails
//! 2 % with server errors. Target: no deploy fails because of it.
//!
//! Builds 50 three-account worlds in one moto on 127.0.0.1 (pipelines `p0` … `p49`, each with
//! its own ECR repository, stacks, topics and alarms; no stage tests, no bake, no approval) and
//! runs the real `tollgate serve` over all of them with its production defaults. Every AWS call
//! goes through a fault-injecting loopback proxy of this program ([`support::proxy`]): one in
//! front of moto, one in front of the CloudWatch stub. From a seeded generator, 20 % of the
//! calls are answered by the proxy itself with the service's throttling error (query protocol:
//! `<Code>Throttling</Code>`, JSON protocols and CBOR: `ThrottlingException`, HTTP 400) and 2 %
//! with `InternalFailure` 500 or `ServiceUnavailable` 503, without being forwarded. moto's own
//! `/moto-api` is never faulted.
//!
//! Each pipeline gets one signed `push` at the same moment; a release counts as succeeded when
//! its Prod run is `Succeeded`, failed when any of its runs ends otherwise. Prints the count of
//! each, the completion time (push sent → Prod succeeded) p50/p99, and the faults injected.
//!
//! ```text
//! cargo build --release -p tollgate --bin tollgate --example bench_throttle
//! TOLLGATE_MOTO_SERVER=$PWD/.venv/bin/moto_server \
//!     target/release/examples/bench_throttle --tollgate target/release/tollgate
//! ```
//! Bounded: the promotions get at most 5 minutes; loopback only.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, ensure};
use support::measure::{pick, verdict};
use support::proxy::{Faults, Proxy};
use support::{Controller, deliver, free_port, push_body, random_secret, recorded_release};
use tollgate::domain::{ReleaseId, RunStatus};
use tollgate::store::Store;
use tollgate_testkit::aws_stubs::cloudwatch::{CloudWatchStub, Watches};
use tollgate_testkit::moto::MotoServer;
use tollgate_testkit::world::World;

const STAGES: [&str; 3] = ["beta", "gamma", "prod"];
const LIMIT: Duration = Duration::from_secs(300);

struct Args {
    tollgate: PathBuf,
    pipelines: usize,
    throttle: f64,
    server_error: f64,
    seed: u64,
}

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("benchmark failed: {e:#}");
        std::process::exit(1);
    }
}

fn args() -> Result<Args> {
    let mut out = Args {
        tollgate: PathBuf::new(),
        pipelines: 50,
        throttle: 0.20,
        server_error: 0.02,
        seed: 14,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let value = it.next().with_context(|| format!("{a} needs a value"))?;
        match a.as_str() {
            "--tollgate" => out.tollgate = PathBuf::from(value),
            "--pipelines" => out.pipelines = value.parse()?,
            "--throttle" => out.throttle = value.parse()?,
            "--server-errors" => out.server_error = value.parse()?,
            "--seed" => out.seed = value.parse()?,
            other => return Err(anyhow!("unknown argument {other}")),
        }
    }
    ensure!(
        (1..=100).contains(&out.pipelines),
        "--pipelines must be 1..=100"
    );
    ensure!(
        out.throttle >= 0.0 && out.server_error >= 0.0 && out.throttle + out.server_error < 0.9,
        "--throttle and --server-errors are shares (0.0 to 1.0), together below 0.9"
    );
    ensure!(out.tollgate.is_file(), "--tollgate PATH is required");
    out.tollgate = std::fs::canonicalize(&out.tollgate)?;
    Ok(out)
}

/// Builds one world per pipeline in `moto`, and one `stages.toml` holding all their pipelines
/// (written beside the first world's, whose accounts file and template it shares: every world
/// has the same accounts and template).
async fn worlds(moto: &MotoServer, n: usize, public_url: &str) -> Result<(Vec<World>, PathBuf)> {
    let mut worlds = Vec::new();
    for i in 0..n {
        let world = World::builder()
            .pipeline(format!("p{i}"))
            .repository(format!("p{i}"))
            .source(format!("acme/p{i}"))
            .public_url(public_url)
            .prod_approval(false)
            .stage_tests(false)
            .bake_all(Duration::ZERO)
            .build(moto)
            .await
            .with_context(|| format!("building world p{i}"))?;
        worlds.push(world);
    }
    let path = merge(&worlds)?;
    Ok((worlds, path))
}

fn merge(worlds: &[World]) -> Result<PathBuf> {
    let read = |p: &Path| -> Result<toml::Table> {
        let text = std::fs::read_to_string(p)?;
        Ok(text.parse::<toml::Table>()?)
    };
    let mut all = read(&worlds[0].stages_path())?;
    let mut pipelines = Vec::new();
    for w in worlds {
        let table = read(&w.stages_path())?;
        if let Some(toml::Value::Array(p)) = table.get("pipelines") {
            pipelines.extend(p.iter().cloned());
        }
    }
    all.insert("pipelines".into(), toml::Value::Array(pipelines));
    let path = worlds[0].dir().join("fleet.toml");
    std::fs::write(&path, toml::to_string(&all)?)?;
    Ok(path)
}

/// Where each pipeline's release stands: `Some(true)` Prod succeeded, `Some(false)` a run
/// ended otherwise, `None` still going.
async fn outcome(store: &Store, release: ReleaseId) -> Result<(Option<bool>, String)> {
    for stage in STAGES {
        if let Some(run) = store.stage_run(release, stage).await? {
            if run.status.is_terminal() && run.status != RunStatus::Succeeded {
                let why = format!(
                    "{stage} {:?}: {}",
                    run.status,
                    run.reason.describe(chrono::Utc::now())
                );
                return Ok((Some(false), why));
            }
            if stage == "prod" && run.status == RunStatus::Succeeded {
                return Ok((Some(true), String::new()));
            }
        }
    }
    Ok((None, String::new()))
}

async fn run() -> Result<()> {
    let args = args()?;
    let moto = tokio::task::spawn_blocking(MotoServer::start).await??;
    let port = free_port()?;
    let url = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    let (worlds, stages) = worlds(&moto, args.pipelines, &url).await?;
    let cloudwatch = CloudWatchStub::start().await?;
    for w in &worlds {
        for s in w.stages() {
            cloudwatch.set_alarm_watching(&s.alarm, "OK", Watches::Metric(World::alarm_metric(s)));
        }
    }
    let sha = format!("{:040x}", 0xbe7c4_u64);
    for w in &worlds {
        w.push_image(&sha).await?;
    }
    println!(
        "{} worlds in moto built in {:.1} s",
        worlds.len(),
        started.elapsed().as_secs_f64()
    );
    let faults = Arc::new(Faults::new(args.throttle, args.server_error, args.seed));
    let (moto_proxy, moto_url) = Proxy::start_with(moto.endpoint(), Some(faults.clone())).await?;
    let (cw_proxy, cw_url) = Proxy::start_with(cloudwatch.endpoint(), Some(faults.clone())).await?;
    let env: Vec<(String, String)> = worlds[0]
        .serve_env(&moto, &cloudwatch)
        .into_iter()
        .map(|(k, v)| match k.as_str() {
            "AWS_ENDPOINT_URL" => (k, moto_url.clone()),
            "AWS_ENDPOINT_URL_CLOUDWATCH" => (k, cw_url.clone()),
            _ => (k, v),
        })
        .collect();
    let state = format!("sqlite://{}", worlds[0].dir().join("tollgate.db").display());
    let secret = random_secret();
    let log = worlds[0].dir().join("tollgate.log");
    let mut controller = Controller::start(
        &args.tollgate,
        &support::serve_config_args(&stages, &state, port, None),
        &env,
        &secret,
        &log,
    )?;
    let http = reqwest::Client::builder().no_proxy().build()?;
    support::wait_ready(&http, &url, &mut controller).await?;
    let store = Store::open(&state).await?;
    println!(
        "{} pipelines promoting at once; {:.0} % of AWS calls throttled, {:.0} % answered 5xx (seed {})",
        worlds.len(),
        args.throttle * 100.0,
        args.server_error * 100.0,
        args.seed
    );
    let start = Instant::now();
    let sends: Vec<_> = (0..worlds.len())
        .map(|i| {
            let (http, url, secret) = (http.clone(), url.clone(), secret.clone());
            let body = push_body(&format!("acme/p{i}"), &sha, "promote");
            tokio::spawn(async move {
                deliver(&http, &url, &secret, "push", &format!("throttle-{i}"), body).await
            })
        })
        .collect();
    for s in sends {
        let (status, text) = s.await??;
        ensure!(status.is_success(), "a push was refused: {status} {text}");
    }
    let mut done: BTreeMap<usize, (bool, Duration, String)> = BTreeMap::new();
    let mut releases: BTreeMap<usize, ReleaseId> = BTreeMap::new();
    while done.len() < worlds.len() && start.elapsed() < LIMIT {
        controller.check_alive()?;
        for i in 0..worlds.len() {
            if done.contains_key(&i) {
                continue;
            }
            let pipeline = format!("p{i}");
            let id = match releases.get(&i) {
                Some(id) => *id,
                None => match recorded_release(&store, &pipeline, &sha).await? {
                    Some(id) => *releases.entry(i).or_insert(id),
                    None => continue,
                },
            };
            if let (Some(ok), why) = outcome(&store, id).await? {
                done.insert(i, (ok, start.elapsed(), why));
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let injected = moto_proxy.calls().iter().filter(|c| c.injected).count()
        + cw_proxy.calls().iter().filter(|c| c.injected).count();
    let forwarded = moto_proxy.calls().iter().filter(|c| !c.injected).count()
        + cw_proxy.calls().iter().filter(|c| !c.injected).count();
    controller.stop()?;
    report(&args, &worlds, &done, &faults, injected, forwarded);
    Ok(())
}

fn report(
    args: &Args,
    worlds: &[World],
    done: &BTreeMap<usize, (bool, Duration, String)>,
    faults: &Faults,
    injected: usize,
    forwarded: usize,
) {
    let succeeded: Vec<f64> = done
        .values()
        .filter(|(ok, _, _)| *ok)
        .map(|(_, t, _)| t.as_secs_f64())
        .collect();
    let failed: Vec<&String> = done
        .values()
        .filter(|(ok, _, _)| !*ok)
        .map(|(_, _, why)| why)
        .collect();
    let unfinished = worlds.len() - done.len();
    let (p50, p99) = if succeeded.is_empty() {
        (f64::NAN, f64::NAN)
    } else {
        (pick(&succeeded, 0.5), pick(&succeeded, 0.99))
    };
    println!(
        "\n| figure ({} pipelines at once, {:.0} % throttling + {:.0} % 5xx) | value | target | result |",
        worlds.len(),
        args.throttle * 100.0,
        args.server_error * 100.0
    );
    println!("|---|---|---|---|");
    println!(
        "| releases whose Prod succeeded / failed / unfinished after {} s | {} / {} / {unfinished} | 0 failed | {} |",
        LIMIT.as_secs(),
        succeeded.len(),
        failed.len(),
        verdict(failed.is_empty() && unfinished == 0)
    );
    println!(
        "| completion (push → Prod succeeded) p50 / p99 | {p50:.1} s / {p99:.1} s | (printed) | — |"
    );
    println!(
        "\nfaults injected: {injected} ({} throttling, {} server errors) of {} AWS calls",
        faults.throttled.load(Ordering::Relaxed),
        faults.server_errors.load(Ordering::Relaxed),
        injected + forwarded
    );
    for why in failed.iter().take(5) {
        support::say(format!("failed: {}", support::one_line(why)));
    }
}

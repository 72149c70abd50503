//! Benchmark: what 1,000 pipelines × 3 stages cost while nothing is in flight.
//!
//! Writes a `stages.toml` of 1,000 pipelines ([`support::fleet`]) into a temporary directory,
//! starts the real `tollgate serve` over it (production defaults) with every AWS call going
//! through a counting loopback proxy in front of moto, waits until it is ready and lets it
//! settle for 10 s, then measures 60 s:
//! - **CPU**: `utime + stime` of the process from `/proc/<pid>/stat`, as a share of one core;
//! - **memory**: `VmRSS` at the end and `VmHWM` (the peak since start) from `/proc/<pid>/status`;
//! - **AWS calls**: every request the proxy forwarded in the 60 s.
//!
//! ```text
//! cargo build --release -p tollgate --bin tollgate --example bench_idle
//! TOLLGATE_MOTO_SERVER=$PWD/.venv/bin/moto_server \
//!     target/release/examples/bench_idle --tollgate target/release/tollgate
//! ```
//! Bounded: about 75 s after moto and the controller are up; loopback only.

mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, ensure};
use support::measure::{cpu_ms, status_kib, tick_ms, verdict};
use support::proxy::Proxy;
use support::{Controller, fleet, free_port, random_secret};
use tollgate_testkit::moto::MotoServer;

const SETTLE: Duration = Duration::from_secs(10);
const CPU_TARGET_PERCENT: f64 = 1.0;
const RSS_TARGET_MIB: f64 = 150.0;

struct Args {
    tollgate: PathBuf,
    pipelines: usize,
    seconds: u64,
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
        pipelines: 1000,
        seconds: 60,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let value = it.next().with_context(|| format!("{a} needs a value"))?;
        match a.as_str() {
            "--tollgate" => out.tollgate = PathBuf::from(value),
            "--pipelines" => out.pipelines = value.parse()?,
            "--seconds" => out.seconds = value.parse()?,
            other => return Err(anyhow!("unknown argument {other}")),
        }
    }
    ensure!(
        (1..=5000).contains(&out.pipelines),
        "--pipelines must be 1..=5000"
    );
    ensure!(
        (1..=300).contains(&out.seconds),
        "--seconds must be 1..=300"
    );
    ensure!(
        out.tollgate.is_file(),
        "--tollgate PATH is required (the tollgate binary)"
    );
    out.tollgate = std::fs::canonicalize(&out.tollgate)?;
    Ok(out)
}

async fn run() -> Result<()> {
    let args = args()?;
    let moto = tokio::task::spawn_blocking(MotoServer::start).await??;
    let (proxy, proxy_url) = Proxy::start(moto.endpoint()).await?;
    let dir = tempfile::tempdir()?;
    let port = free_port()?;
    let url = format!("http://127.0.0.1:{port}");
    let stages = fleet::write(dir.path(), args.pipelines, &url, "")?;
    let state = format!("sqlite://{}", dir.path().join("tollgate.db").display());
    let started = Instant::now();
    let mut controller = Controller::start(
        &args.tollgate,
        &support::serve_config_args(&stages, &state, port, None),
        &support::aws_env(&proxy_url),
        &random_secret(),
        &dir.path().join("tollgate.log"),
    )?;
    let http = reqwest::Client::builder().no_proxy().build()?;
    support::wait_ready(&http, &url, &mut controller).await?;
    println!(
        "tollgate serve over {} pipelines × 3 stages ready after {:.1} s; settling {} s, then measuring {} s",
        args.pipelines,
        started.elapsed().as_secs_f64(),
        SETTLE.as_secs(),
        args.seconds
    );
    tokio::time::sleep(SETTLE).await;
    let (pid, tick) = (controller.pid(), tick_ms());
    let cpu_before = cpu_ms(pid, tick)?;
    let from = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    let to = Instant::now();
    let cpu = cpu_ms(pid, tick)? - cpu_before;
    controller.check_alive()?;
    let rss = status_kib(pid, "VmRSS")? as f64 / 1024.0;
    let hwm = status_kib(pid, "VmHWM")? as f64 / 1024.0;
    let calls = proxy.calls_between(from, to).len();
    let at_start = proxy.calls_between(started, from).len();
    controller.stop()?;
    let percent = cpu / (to - from).as_secs_f64() / 10.0;
    println!(
        "\n| figure ({} pipelines × 3 stages, nothing in flight, {} s) | value | target | result |",
        args.pipelines, args.seconds
    );
    println!("|---|---|---|---|");
    println!(
        "| CPU | {percent:.2} % of a core ({cpu:.0} ms) | ≤ {CPU_TARGET_PERCENT:.0} % | {} |",
        verdict(percent <= CPU_TARGET_PERCENT)
    );
    println!("| AWS calls | {calls} | 0 | {} |", verdict(calls == 0));
    println!(
        "| RSS at the end (peak since start) | {rss:.1} MiB ({hwm:.1} MiB) | ≤ {RSS_TARGET_MIB:.0} MiB | {} |",
        verdict(rss <= RSS_TARGET_MIB && hwm <= RSS_TARGET_MIB)
    );
    println!("\nAWS calls before the measurement (start-up and settling): {at_start}");
    Ok(())
}

//! How long a leader's death leaves the controllers without one: two `tollgate serve` on one
//! PostgreSQL state with the production lease (`--lease-ttl`, default 10 s), the leader killed
//! with SIGKILL 10 times. Each takeover is timed from the kill to the other controller's
//! `/readyz` saying it leads; the killed one is started again as the new follower. Prints p50
//! and max against the target (within 15 s).
//!
//! Needs a PostgreSQL server: `--postgres postgres://USER@127.0.0.1:PORT/` or
//! `TOLLGATE_TEST_POSTGRES` (a fresh database is made on it). AWS is never reached (a closed
//! loopback port). Loopback only; bounded (each takeover waits at most 60 s); stops by itself.
//!
//! `cargo run --release --example bench_failover -- [--tollgate PATH] [--postgres URL] [--kills N]`

mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

const TARGET: Duration = Duration::from_secs(15);
const TAKEOVER_LIMIT: Duration = Duration::from_secs(60);

struct Args {
    tollgate: PathBuf,
    postgres: String,
    kills: usize,
}

fn args() -> Result<Args> {
    let mut tollgate = None;
    let mut postgres = tollgate_testkit::state::postgres_server();
    let mut kills = 10;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--tollgate" => tollgate = Some(PathBuf::from(value()?)),
            "--postgres" => postgres = Some(value()?),
            "--kills" => kills = value()?.parse().context("--kills N")?,
            other => bail!("unknown argument {other}"),
        }
    }
    let tollgate = match tollgate {
        Some(t) => t,
        None => std::env::current_exe()?
            .parent()
            .and_then(|examples| examples.parent())
            .map(|dir| dir.join("tollgate"))
            .context("cannot find the tollgate binary next to this example")?,
    };
    let server =
        postgres.context("no PostgreSQL server: --postgres URL or TOLLGATE_TEST_POSTGRES")?;
    let server = if server.ends_with('/') {
        server
    } else {
        format!("{server}/")
    };
    ensure!(kills >= 1, "--kills must be at least 1");
    Ok(Args {
        tollgate,
        postgres: tollgate_testkit::state::fresh_postgres_database(&server),
        kills,
    })
}

/// Who `url`'s controller says leads: Some(true) itself, Some(false) another, None unknown.
async fn leads(http: &reqwest::Client, url: &str) -> Option<bool> {
    let text = http
        .get(format!("{url}/readyz"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    if text.contains("leader: this controller") {
        Some(true)
    } else if text.contains("follower: ") {
        Some(false)
    } else {
        None
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let a = args()?;
    let dir = tempfile::tempdir()?;
    let config = support::fleet::write(dir.path(), 1, "http://127.0.0.1:8080", "")?;
    let closed = format!("http://127.0.0.1:{}", tollgate_testkit::serve::free_port()?);
    let env = support::aws_env(&closed);
    let http = reqwest::Client::builder().no_proxy().build()?;
    let start = |name: &str| -> Result<(support::Controller, String)> {
        let port = tollgate_testkit::serve::free_port()?;
        let args: Vec<String> = [
            "serve",
            "--config",
            &config.display().to_string(),
            "--state",
            &a.postgres,
            "--listen",
            &format!("127.0.0.1:{port}"),
        ]
        .map(str::to_owned)
        .to_vec();
        let log = dir.path().join(format!("{name}.log"));
        let c = support::Controller::start(
            &a.tollgate,
            &args,
            &env,
            "bench-failover-webhook-secret-0123456789abcdef",
            &log,
        )?;
        Ok((c, format!("http://127.0.0.1:{port}")))
    };
    println!(
        "failover: {} kills of the leader, production lease (10 s)",
        a.kills
    );
    let (mut first, first_url) = start("c0")?;
    support::wait_ready(&http, &first_url, &mut first).await?;
    let deadline = Instant::now() + TAKEOVER_LIMIT;
    while leads(&http, &first_url).await != Some(true) {
        ensure!(Instant::now() < deadline, "the first controller never led");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (mut second, second_url) = start("c1")?;
    support::wait_ready(&http, &second_url, &mut second).await?;
    let mut leader = (first, first_url);
    let mut follower = (second, second_url);
    let mut takeovers = Vec::new();
    for round in 1..=a.kills {
        // The follower must know who leads before the kill (it has claimed once).
        let deadline = Instant::now() + TAKEOVER_LIMIT;
        while leads(&http, &follower.1).await != Some(false) {
            ensure!(Instant::now() < deadline, "round {round}: no follower");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let killed = Instant::now();
        drop(leader.0); // SIGKILL
        loop {
            follower.0.check_alive()?;
            if leads(&http, &follower.1).await == Some(true) {
                break;
            }
            ensure!(
                killed.elapsed() < TAKEOVER_LIMIT,
                "round {round}: no takeover within {TAKEOVER_LIMIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let took = killed.elapsed();
        println!(
            "  kill {round:>2}: taken over after {:.2} s",
            took.as_secs_f64()
        );
        takeovers.push(took);
        let (mut again, again_url) = start(&format!("c{}", round + 1))?;
        support::wait_ready(&http, &again_url, &mut again).await?;
        leader = follower;
        follower = (again, again_url);
    }
    takeovers.sort();
    let p50 = support::measure::pick(&takeovers, 0.5);
    let max = *takeovers.last().context("no takeover")?;
    println!(
        "takeover p50 {:.2} s, max {:.2} s over {} kills (target: within {} s) {}",
        p50.as_secs_f64(),
        max.as_secs_f64(),
        takeovers.len(),
        TARGET.as_secs(),
        support::measure::verdict(max <= TARGET)
    );
    Ok(())
}

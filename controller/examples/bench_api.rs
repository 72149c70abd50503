//! How fast `/api/v1` answers: `GET /api/v1/pipelines` with 100 pipelines (requests per
//! second) and `POST …/approve` (p50 and p99 latency).
//!
//! Prepares a SQLite file in which each of 100 pipelines (Beta → Gamma → Prod, Prod with an
//! approval) has one release waiting for Prod's approval, brought there by the engine with the
//! in-memory fakes; then starts the real `tollgate serve` on it (127.0.0.1, AWS never reached:
//! the endpoint is a closed loopback port), makes keys with `tollgate keys create`, and
//! measures:
//! - `GET /api/v1/pipelines` from 4 keep-alive clients for 5 s;
//! - one `POST …/releases/r<n>/stages/prod/approve` per pipeline, one after another.
//!
//! Rate limits are raised for the run (they are what is measured otherwise). Loopback only;
//! bounded in time; stops by itself.
//!
//! `cargo run --release --example bench_api -- [--tollgate target/release/tollgate]`

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use tollgate::domain::RunStatus;
use tollgate::engine::{Delivery, Engine, Ingested, NewRelease, SystemClock};
use tollgate::store::Store;
use tollgate_testkit::fakes::Fakes;

const PIPELINES: usize = 100;
const CLIENTS: usize = 4;
const READ_FOR: Duration = Duration::from_secs(5);

const ACCOUNTS: &str = r#"
[accounts.build]
id = "111111111111"
region = "eu-west-1"
controller = true
"#;

fn stages_toml() -> String {
    let mut s = String::from(
        "[controller]\npublic_url = \"http://127.0.0.1:8080\"\n\n[controller.api]\n\
         per_key_burst = 1000000\nper_key_per_minute = 1000000\n\
         per_address_burst = 1000000\nper_address_per_minute = 1000000\n\n\
         [controller.http]\nmax_concurrent_requests = 100000\n",
    );
    for n in 0..PIPELINES {
        s.push_str(&format!(
            r#"
[[pipelines]]
name = "svc-{n}"
[pipelines.source]
repository = "acme/svc-{n}"
[pipelines.artifact]
repository = "svc-{n}"
account = "build"
region = "eu-west-1"
"#
        ));
        for stage in ["beta", "gamma", "prod"] {
            s.push_str(&format!(
                r#"
[[pipelines.stages]]
name = "{stage}"
targets = [{{ account = "build" }}]
[pipelines.stages.deploy]
kind = "cloudformation"
stack = "svc-{n}-{stage}"
template = "service.yaml"
image_parameter = "ImageUri"
"#
            ));
        }
        s.push_str(
            r#"[pipelines.stages.approval]
topic = "arn:aws:sns:eu-west-1:111111111111:approvals"
approvers = [{ name = "bob", email = "bob@example.com" }]
"#,
        );
    }
    s
}

fn tollgate_binary() -> Result<PathBuf> {
    let mut it = std::env::args().skip(1);
    if let Some(flag) = it.next() {
        ensure!(flag == "--tollgate", "unknown argument {flag}");
        return Ok(it.next().context("--tollgate needs a path")?.into());
    }
    let exe = std::env::current_exe()?;
    exe.parent()
        .and_then(|examples| examples.parent())
        .map(|dir| dir.join("tollgate"))
        .context("cannot find the tollgate binary next to this example")
}

/// One release per pipeline, brought to Prod's approval by the engine with fakes.
async fn prepare(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir.join("accounts"))?;
    std::fs::write(dir.join("accounts/accounts.toml"), ACCOUNTS)?;
    std::fs::write(dir.join("service.yaml"), "Resources: {}\n")?;
    std::fs::write(dir.join("stages.toml"), stages_toml())?;
    let config = tollgate::config::load(&dir.join("stages.toml"))
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .config;
    let store = Store::open(&state_url(dir)).await?;
    let engine = Engine::new(store, config, Fakes::new().ports(), Arc::new(SystemClock));
    for n in 0..PIPELINES {
        let pipeline = format!("svc-{n}");
        let r = NewRelease {
            pipeline: pipeline.clone(),
            sha: format!("{:040x}", n + 1),
            branch: "main".into(),
            author_name: "Carol".into(),
            author_email: "carol@example.com".into(),
            message: format!("change {n}"),
            ..NewRelease::default()
        };
        let d = Delivery {
            source: "bench".into(),
            id: format!("push-{n}"),
        };
        let Ingested::Recorded(id) = engine.record_release(&r, &d).await? else {
            bail!("release of {pipeline} not recorded");
        };
        let deadline = Instant::now() + support::STEP_LIMIT;
        loop {
            engine.reconcile(&pipeline).await?;
            while engine.in_flight() > 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let run = engine.reads().stage_run(id, "prod").await?;
            if run.is_some_and(|r| r.status == RunStatus::AwaitingApproval) {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "{pipeline} never reached prod's approval"
            );
        }
    }
    Ok(())
}

fn state_url(dir: &Path) -> String {
    format!("sqlite://{}", dir.join("state.db").display())
}

fn make_key(tollgate: &Path, dir: &Path, name: &str, role: &[&str]) -> Result<String> {
    let out = Command::new(tollgate)
        .args(["keys", "create", "--name", name, "--role"])
        .args(role)
        .arg("--config")
        .arg(dir.join("stages.toml"))
        .arg("--state")
        .arg(state_url(dir))
        .output()?;
    ensure!(
        out.status.success(),
        "keys create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

#[tokio::main]
async fn main() -> Result<()> {
    let tollgate = tollgate_binary()?;
    let dir = tempfile::tempdir()?;
    println!("preparing {PIPELINES} pipelines, each with a release at prod's approval…");
    prepare(dir.path()).await?;
    let viewer = make_key(&tollgate, dir.path(), "bench-viewer", &["viewer"])?;
    let approver = make_key(
        &tollgate,
        dir.path(),
        "bench-bob",
        &["approver", "--approver", "bob"],
    )?;
    let port = support::free_port()?;
    let args: Vec<String> = vec![
        "serve".into(),
        "--config".into(),
        dir.path().join("stages.toml").display().to_string(),
        "--state".into(),
        state_url(dir.path()),
        "--listen".into(),
        format!("127.0.0.1:{port}"),
    ];
    let env: Vec<(String, String)> = [
        ("AWS_ENDPOINT_URL", "http://127.0.0.1:9"),
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
        ("RUST_LOG", "error"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let log = dir.path().join("serve.log");
    let secret = "b".repeat(64);
    let mut controller = support::Controller::start(&tollgate, &args, &env, &secret, &log)?;
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    support::wait_ready(&http, &base, &mut controller).await?;

    // Reads: 4 clients, 5 s.
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let (http, url, key) = (
            http.clone(),
            format!("{base}/api/v1/pipelines"),
            viewer.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while started.elapsed() < READ_FOR {
                let r = http.get(&url).bearer_auth(&key).send().await?;
                ensure!(
                    r.status() == 200,
                    "GET /api/v1/pipelines answered {}",
                    r.status()
                );
                let body: serde_json::Value = r.json().await?;
                ensure!(
                    body.as_array().map(Vec::len) == Some(PIPELINES),
                    "not {PIPELINES} pipelines"
                );
                n += 1;
            }
            Ok(n)
        }));
    }
    let mut reads = 0;
    for t in tasks {
        reads += t.await??;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "GET /api/v1/pipelines ({PIPELINES} pipelines × 3 stages, {CLIENTS} clients): {reads} requests in {secs:.1} s = {:.0} req/s",
        reads as f64 / secs
    );

    // Approvals: one per pipeline, one after another.
    let mut took = Vec::with_capacity(PIPELINES);
    for n in 0..PIPELINES {
        let url = format!(
            "{base}/api/v1/pipelines/svc-{n}/releases/r{}/stages/prod/approve",
            n + 1
        );
        let t = Instant::now();
        let r = http.post(&url).bearer_auth(&approver).send().await?;
        took.push(t.elapsed());
        ensure!(
            r.status() == 200,
            "approve svc-{n}: {} {}",
            r.status(),
            r.text().await?
        );
    }
    took.sort();
    println!(
        "POST …/approve ({PIPELINES} approvals, sequential): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        percentile(&took, 0.50).as_secs_f64() * 1000.0,
        percentile(&took, 0.99).as_secs_f64() * 1000.0,
        took.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    );
    drop(controller);
    Ok(())
}

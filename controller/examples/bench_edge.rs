//! How much memory unauthenticated webhook bodies can make the controller hold.
//!
//! Starts a real `tollgate serve` on 127.0.0.1 (its own temporary configuration and SQLite
//! file; AWS is never called), then opens 500 connections at once, each sending a 25 MiB body
//! with a wrong signature to `POST /webhooks/github` (GitHub's cap; the route reads the body
//! before it can check the HMAC). Prints how the requests were answered and the controller's
//! peak resident memory (`VmHWM` in /proc/<pid>/status) before and after. Loopback only; stops
//! by itself.
//!
//! The rate limit and the per-route concurrency limit are raised for the run so that every
//! request reaches the body budget (`max_unauthenticated_body_mib`, default 64 MiB): the worst
//! case for memory. With the defaults most requests would be refused earlier, by the rate limit.
//!
//! `cargo run --example bench_edge -- [--tollgate target/debug/tollgate] [--clients 500]`

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const BODY: usize = 25 * 1024 * 1024;
const CHUNK: usize = 256 * 1024;
/// The longest one request may take before it is counted as unanswered.
const REQUEST_LIMIT: Duration = Duration::from_secs(120);

const STAGES: &str = r#"
[controller]
public_url = "http://127.0.0.1:8080"

[controller.http]
max_concurrent_requests = 100000
rate_limit_per_minute = 1000000
rate_limit_burst = 100000

[[pipelines]]
name = "bench"
[pipelines.source]
repository = "acme/bench"
[pipelines.artifact]
repository = "bench"
account = "build"
region = "eu-west-1"

[[pipelines.stages]]
name = "beta"
targets = [{ account = "build" }]
[pipelines.stages.deploy]
kind = "cloudformation"
stack = "bench-beta"
template = "service.yaml"
image_parameter = "ImageUri"
"#;

const ACCOUNTS: &str = r#"
[accounts.build]
id = "111111111111"
region = "eu-west-1"
controller = true
"#;

struct Args {
    tollgate: PathBuf,
    clients: usize,
}

fn args() -> Result<Args> {
    let exe = std::env::current_exe()?;
    let default = exe
        .parent()
        .and_then(|examples| examples.parent())
        .map(|debug| debug.join("tollgate"))
        .context("cannot find the tollgate binary next to this example")?;
    let mut out = Args {
        tollgate: default,
        clients: 500,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--tollgate" => out.tollgate = value.into(),
            "--clients" => out.clients = value.parse()?,
            other => bail!("unknown argument {other}"),
        }
    }
    Ok(out)
}

struct Served {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(tollgate: &PathBuf) -> Result<Served> {
    let dir = tempfile::tempdir()?;
    std::fs::create_dir_all(dir.path().join("accounts"))?;
    std::fs::write(dir.path().join("accounts/accounts.toml"), ACCOUNTS)?;
    std::fs::write(dir.path().join("service.yaml"), "Resources: {}\n")?;
    std::fs::write(dir.path().join("stages.toml"), STAGES)?;
    let log = std::fs::File::create(dir.path().join("serve.log"))?;
    let mut child = Command::new(tollgate)
        .arg("serve")
        .arg("--config")
        .arg(dir.path().join("stages.toml"))
        .arg("--state")
        .arg(format!(
            "sqlite://{}",
            dir.path().join("state.db").display()
        ))
        .args(["--listen", "127.0.0.1:0"])
        .env("TOLLGATE_GITHUB_WEBHOOK_SECRET", "b".repeat(64))
        .env_remove("TOLLGATE_GITHUB_WEBHOOK_SECRET_FILE")
        .env_remove("TOLLGATE_GITHUB_TOKEN")
        .env_remove("TOLLGATE_GITHUB_TOKEN_FILE")
        .env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("RUST_LOG", "error")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", tollgate.display()))?;
    let stdout = child.stdout.take().context("no stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(addr) = line.strip_prefix("tollgate serving on http://") {
                let _ = tx.send(addr.to_owned());
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(60))
        .context("tollgate serve did not start")?;
    Ok(Served {
        child,
        addr,
        _dir: dir,
    })
}

/// `VmHWM` (peak resident set) of a process, in KiB.
fn peak_rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .context("no VmHWM line")?;
    let kib = line.split_whitespace().nth(1).context("no VmHWM value")?;
    Ok(kib.parse()?)
}

/// Sends one 25 MiB delivery with a wrong signature; returns the answer's status code
/// (0 when none came).
async fn one(addr: String, n: usize, chunk: Arc<Vec<u8>>) -> u16 {
    let Ok(stream) = TcpStream::connect(&addr).await else {
        return 0;
    };
    let (mut reader, mut writer) = stream.into_split();
    let head = format!(
        "POST /webhooks/github HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nX-GitHub-Event: push\r\nX-GitHub-Delivery: bench-{n}\r\nX-Hub-Signature-256: sha256={}\r\nContent-Length: {BODY}\r\n\r\n",
        "0".repeat(64)
    );
    let answer = tokio::spawn(async move {
        let mut buf = vec![0u8; 1024];
        match reader.read(&mut buf).await {
            Ok(n) if n >= 12 => String::from_utf8_lossy(&buf[9..12]).parse().unwrap_or(0),
            _ => 0,
        }
    });
    let send = async {
        writer.write_all(head.as_bytes()).await?;
        for _ in 0..BODY / CHUNK {
            writer.write_all(&chunk).await?;
        }
        std::io::Result::Ok(())
    };
    let _ = tokio::time::timeout(REQUEST_LIMIT, send).await;
    tokio::time::timeout(REQUEST_LIMIT, answer)
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or(0)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = args()?;
    let served = start(&args.tollgate)?;
    let pid = served.child.id();
    let before = peak_rss_kib(pid)?;
    println!(
        "tollgate serve (pid {pid}) on {}; peak RSS before the load: {:.1} MiB",
        served.addr,
        before as f64 / 1024.0
    );
    println!(
        "sending {} concurrent 25 MiB bodies with a wrong signature to POST /webhooks/github",
        args.clients
    );
    let chunk = Arc::new(vec![b' '; CHUNK]);
    let started = Instant::now();
    let tasks: Vec<_> = (0..args.clients)
        .map(|n| tokio::spawn(one(served.addr.clone(), n, chunk.clone())))
        .collect();
    let mut answers: BTreeMap<u16, usize> = BTreeMap::new();
    for t in tasks {
        *answers.entry(t.await.unwrap_or(0)).or_default() += 1;
    }
    let elapsed = started.elapsed();
    let after = peak_rss_kib(pid)?;
    let health = reqwest::get(format!("http://{}/healthz", served.addr)).await;
    let healthy = health.is_ok_and(|r| r.status().is_success());
    println!("answers (status: count; 0 = no answer): {answers:?}");
    println!("wall time: {:.2} s", elapsed.as_secs_f64());
    println!(
        "peak RSS (VmHWM) of the controller after the load: {:.1} MiB (budget for unauthenticated bodies: 64 MiB; 500 x 25 MiB would be 12,500 MiB)",
        after as f64 / 1024.0
    );
    println!(
        "/healthz after the load: {}",
        if healthy { "200" } else { "no answer" }
    );
    Ok(())
}

//! The HTTP edge of the real `tollgate serve` binary: stale SNS messages, slow clients, the
//! budget of unauthenticated body bytes and the per-address rate limit.
//!
//! Each test starts the binary on a loopback port over its own SQLite file and configuration
//! (the engine tests' pipeline, with `[controller.http]` set for the case). AWS is never
//! called: nothing here starts a deploy, and the endpoint points at a closed loopback port.
//! SNS certificates reach the verifier only through the pre-seeded cache directory.

use crate::engine_support::{ACCOUNTS, STAGES};

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tollgate::http::sns_verify::{AlarmState, SignatureVersion};
use tollgate_testkit::sns::{TestSigner, alarm_message, body, unsigned_notification};

const ALARM_TOPIC: &str = "arn:aws:sns:eu-west-1:444444444444:alarms";
const TOPIC_LINE: &str = r#"topic = "arn:aws:sns:eu-west-1:111111111111:tollgate""#;
const PUBLIC_URL_LINE: &str = r#"public_url = "https://tollgate.test""#;
const SECRET: &str = "edge-test-secret-0123456789abcdef0123456789";
/// The most any one wait in these tests may take before the test fails.
const BOUND: Duration = Duration::from_secs(30);
const MIB: usize = 1024 * 1024;

/// A running `tollgate serve`, killed on drop. Shared with the API tests (`api_serve`).
pub(crate) struct Served {
    child: Child,
    pub(crate) addr: String,
    pub(crate) dir: TempDir,
    signer: TestSigner,
}

impl Served {
    /// Starts the binary with `http` as the body of `[controller.http]`.
    pub(crate) fn start(http: &str) -> Served {
        Served::launch(tempfile::tempdir().unwrap(), &stages_toml(http))
    }

    /// Starts the binary in `dir` (whose `state.db` may hold state already) with `stages` as
    /// its pipeline file, the engine tests' accounts and pre-seeded SNS certificates.
    pub(crate) fn launch(dir: TempDir, stages: &str) -> Served {
        let signer = TestSigner::new();
        std::fs::create_dir_all(dir.path().join("accounts")).unwrap();
        std::fs::create_dir_all(dir.path().join("certs")).unwrap();
        std::fs::write(dir.path().join("accounts/accounts.toml"), ACCOUNTS).unwrap();
        std::fs::write(dir.path().join("service.yaml"), "Resources: {}\n").unwrap();
        std::fs::write(dir.path().join("stages.toml"), stages).unwrap();
        signer
            .seed_cache_dir_for(&dir.path().join("certs"), "eu-west-1")
            .unwrap();
        let log = std::fs::File::create(dir.path().join("serve.log")).unwrap();
        let mut child = serve_command(dir.path())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let addr = serving_address(&mut child, &dir);
        Served {
            child,
            addr,
            dir,
            signer,
        }
    }

    /// The binary's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The state database's URL.
    pub(crate) fn state(&self) -> String {
        format!("sqlite://{}", self.dir.path().join("state.db").display())
    }

    /// The binary's log so far.
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("serve.log")).unwrap_or_default()
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub(crate) async fn count(&self, sql: &str) -> i64 {
        let url = format!(
            "sqlite://{}?mode=ro",
            self.dir.path().join("state.db").display()
        );
        let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
        let n = sqlx::query_scalar(sql).fetch_one(&pool).await.unwrap();
        pool.close().await;
        n
    }

    /// Rows a delivery or a fact would add: deliveries, events, alarm facts.
    async fn footprint(&self) -> (i64, i64, i64) {
        (
            self.count("SELECT COUNT(*) FROM deliveries").await,
            self.count("SELECT COUNT(*) FROM events").await,
            self.count("SELECT COUNT(*) FROM alarm_events").await,
        )
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `tollgate serve` over the configuration and state in `dir`, on a free loopback port.
fn serve_command(dir: &std::path::Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tollgate"));
    command
        .arg("serve")
        .arg("--config")
        .arg(dir.join("stages.toml"))
        .arg("--state")
        .arg(format!("sqlite://{}", dir.join("state.db").display()))
        .args(["--listen", "127.0.0.1:0", "--sns-cert-cache"])
        .arg(dir.join("certs"))
        .env("TOLLGATE_GITHUB_WEBHOOK_SECRET", SECRET)
        .env_remove("TOLLGATE_GITHUB_WEBHOOK_SECRET_FILE")
        .env_remove("TOLLGATE_GITHUB_TOKEN")
        .env_remove("TOLLGATE_GITHUB_TOKEN_FILE")
        .env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .envs([("X_BETA", "x"), ("X_GAMMA", "x"), ("X_PROD", "x")])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null());
    command
}

pub(crate) fn stages_toml(http: &str) -> String {
    let with_topic = format!("{TOPIC_LINE}\nalarm_topics = [\"{ALARM_TOPIC}\"]");
    let with_http = format!("{PUBLIC_URL_LINE}\n\n[controller.http]\n{http}\n");
    let toml = STAGES
        .replace(TOPIC_LINE, &with_topic)
        .replace(PUBLIC_URL_LINE, &with_http);
    assert!(toml.contains("[controller.http]") && toml.contains("alarm_topics"));
    toml
}

/// Reads the binary's stdout until it says where it listens (or fails with its log).
fn serving_address(child: &mut Child, dir: &TempDir) -> String {
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(addr) = line.strip_prefix("tollgate serving on http://") {
                let _ = tx.send(addr.to_owned());
            }
        }
    });
    match rx.recv_timeout(BOUND) {
        Ok(addr) => addr,
        Err(_) => {
            let log = std::fs::read_to_string(dir.path().join("serve.log")).unwrap_or_default();
            panic!("tollgate serve did not start:\n{log}");
        }
    }
}

fn prod_alarm_at(signer: &TestSigner, sent: chrono::DateTime<chrono::Utc>) -> String {
    let message = alarm_message(
        ALARM_TOPIC,
        "prod-5xx",
        "444444444444",
        "eu-west-1",
        AlarmState::Alarm,
    );
    let mut msg = unsigned_notification(ALARM_TOPIC, None, &message);
    msg.timestamp = sent.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string();
    body(&signer.signed(msg, SignatureVersion::V2))
}

async fn healthy(served: &Served) -> bool {
    let http = reqwest::Client::builder().timeout(BOUND).build().unwrap();
    let answer = http.get(served.url("/healthz")).send().await;
    answer.is_ok_and(|r| r.status() == 200)
}

#[tokio::test]
async fn edge_serve_a_validly_signed_two_hour_old_sns_message_is_refused_and_changes_nothing() {
    let served = Served::start("");
    let http = reqwest::Client::new();
    let before = served.footprint().await;
    let stale = prod_alarm_at(
        &served.signer,
        chrono::Utc::now() - chrono::Duration::hours(2),
    );
    let answer = http
        .post(served.url("/webhooks/sns"))
        .body(stale)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 403);
    let detail = answer.text().await.unwrap();
    assert!(detail.contains("stale"), "{detail}");
    assert_eq!(served.footprint().await, before, "nothing recorded");

    // The same alarm, sent now, is recorded: the refusal above was about its age.
    let fresh = prod_alarm_at(&served.signer, chrono::Utc::now());
    let answer = http
        .post(served.url("/webhooks/sns"))
        .body(fresh)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200, "{}", answer.text().await.unwrap());
    let after = served.footprint().await;
    assert!(
        after.0 > before.0 && after.2 > before.2,
        "{before:?} -> {after:?}"
    );
}

#[tokio::test]
async fn edge_serve_a_slow_loris_client_is_dropped_at_the_header_timeout() {
    let served = Served::start("header_read_timeout = \"1s\"");
    let stream = TcpStream::connect(&served.addr).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let closed = tokio::spawn(async move {
        let mut buf = [0u8; 1024];
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    });
    let head = b"POST /webhooks/github HTTP/1.1\r\nHost: tollgate\r\nX-Padding: ";
    let endless = head.iter().copied().chain(std::iter::repeat(b'a'));
    let deadline = tokio::time::Instant::now() + BOUND;
    for byte in endless {
        if closed.is_finished() || tokio::time::Instant::now() > deadline {
            break;
        }
        if writer.write_all(&[byte]).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let result = tokio::time::timeout(BOUND, closed).await;
    assert!(
        result.is_ok(),
        "the connection was still open after {BOUND:?}"
    );
    assert!(healthy(&served).await, "the server still answers");
}

/// Starts a request declaring a 25 MiB body and sends `sent` bytes of it; returns the stream
/// and the answer if one came within `wait`.
async fn large_body(addr: &str, sent: usize, wait: Duration) -> (TcpStream, Option<String>) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /webhooks/github HTTP/1.1\r\nHost: tollgate\r\nContent-Type: application/json\r\nX-GitHub-Event: push\r\nX-GitHub-Delivery: d-1\r\nContent-Length: {}\r\n\r\n",
        25 * MIB
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let _ = stream.write_all(&vec![b' '; sent]).await;
    let mut buf = vec![0u8; 4096];
    let answer = match tokio::time::timeout(wait, stream.read(&mut buf)).await {
        Ok(Ok(n)) if n > 0 => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
        _ => None,
    };
    (stream, answer)
}

#[tokio::test]
async fn edge_serve_unauthenticated_bodies_beyond_the_budget_are_refused_at_once() {
    let served = Served::start("max_unauthenticated_body_mib = 25");
    // Requests that get no answer are holding budget (waiting for the rest of their body).
    let mut holders = Vec::new();
    let first_refusal = loop {
        let (stream, answer) = large_body(&served.addr, 1024, Duration::from_secs(3)).await;
        match answer {
            Some(answer) => break answer,
            None => holders.push(stream),
        }
        assert!(holders.len() <= 2, "more than the budget admitted");
    };
    assert!(first_refusal.starts_with("HTTP/1.1 503"), "{first_refusal}");
    assert!(
        first_refusal.to_ascii_lowercase().contains("retry-after:"),
        "{first_refusal}"
    );

    let addr = served.addr.clone();
    let many = (0..40).map(|_| {
        let addr = addr.clone();
        async move { large_body(&addr, 1024, BOUND).await }
    });
    let answers = futures_join_all(many).await;
    let refused = answers
        .iter()
        .filter(|(_, a)| a.as_deref().is_some_and(|a| a.starts_with("HTTP/1.1 503")))
        .count();
    assert_eq!(refused, 40, "every request beyond the budget is refused");
    assert!(
        healthy(&served).await,
        "the server answers while bodies are held"
    );
    // The GitHub route's budget is spent; an SNS alarm still gets through (its route has a
    // budget of its own).
    let alarm = prod_alarm_at(&served.signer, chrono::Utc::now());
    let answer = reqwest::Client::new()
        .post(served.url("/webhooks/sns"))
        .body(alarm)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200, "{}", answer.text().await.unwrap());

    drop(holders);
    drop(answers);
    // The budget is back: a small unsigned delivery is read and refused for its signature.
    let http = reqwest::Client::new();
    let mut status = 0;
    for _ in 0..50 {
        let answer = http
            .post(served.url("/webhooks/github"))
            .header("x-github-event", "push")
            .header("x-github-delivery", "d-2")
            .body("{}")
            .send()
            .await
            .unwrap();
        status = answer.status().as_u16();
        if status != 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, 401);
}

async fn futures_join_all<F: std::future::Future + Send + 'static>(
    futures: impl Iterator<Item = F>,
) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

#[tokio::test]
async fn edge_serve_one_address_over_its_rate_is_answered_429_with_retry_after() {
    let served = Served::start("rate_limit_per_minute = 1\nrate_limit_burst = 2");
    let http = reqwest::Client::new();
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for n in 0..3 {
        let answer = http
            .post(served.url("/webhooks/github"))
            .header("x-github-event", "push")
            .header("x-github-delivery", format!("d-{n}"))
            .body("{}")
            .send()
            .await
            .unwrap();
        statuses.push(answer.status().as_u16());
        retry_after = answer.headers().get("retry-after").cloned();
    }
    assert_eq!(statuses, [401, 401, 429]);
    let secs: u64 = retry_after.unwrap().to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&secs), "{secs}");
    // Other routes keep their own allowance; health has none.
    assert!(healthy(&served).await);
    let sns = http
        .post(served.url("/webhooks/sns"))
        .body("{}")
        .send()
        .await;
    assert_eq!(sns.unwrap().status(), 400);
}

#[tokio::test]
async fn edge_serve_shutdown_does_not_wait_for_a_slow_client_beyond_the_grace() {
    let mut served = Served::start("shutdown_grace = \"1s\"\nrequest_timeout = \"10m\"");
    // A request in flight that never finishes its body.
    let (slow, answer) = large_body(&served.addr, 1024, Duration::from_millis(500)).await;
    assert!(
        answer.is_none(),
        "the slow request is in flight: {answer:?}"
    );
    let pid = nix::unistd::Pid::from_raw(served.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let deadline = std::time::Instant::now() + BOUND;
    let status = loop {
        if let Some(status) = served.child.try_wait().unwrap() {
            break Some(status);
        }
        if std::time::Instant::now() > deadline {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    drop(slow);
    let status = status.expect("tollgate serve still running after SIGTERM");
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn edge_serve_a_second_controller_on_the_same_sqlite_state_is_refused() {
    let served = Served::start("");
    let before = served.footprint().await;
    let second = serve_command(served.dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Bounded: the refusal comes before anything is opened; a second controller that started
    // instead would never exit by itself.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(second.wait_with_output());
    });
    let out = rx
        .recv_timeout(BOUND)
        .expect("the second serve did not exit")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let first_pid = served.child.id();
    assert!(
        stderr.contains("another tollgate serve is running")
            && stderr.contains(&format!("pid {first_pid}"))
            && stderr.contains(&format!("listening on {}", served.addr)),
        "the refusal names the running controller: {stderr}"
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("tollgate serving on"),
        "the second one never served"
    );
    assert!(healthy(&served).await, "the first one still serves");
    assert_eq!(served.footprint().await, before, "nothing recorded");
}

#[tokio::test]
async fn edge_serve_a_killed_controller_leaves_no_lock_behind() {
    let mut served = Served::start("");
    served.child.kill().unwrap();
    served.child.wait().unwrap();
    let log = std::fs::File::create(served.dir.path().join("serve-2.log")).unwrap();
    let mut next = serve_command(served.dir.path())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .unwrap();
    let addr = serving_address(&mut next, &served.dir);
    served.child = next;
    served.addr = addr;
    assert!(
        healthy(&served).await,
        "the next controller starts after a kill -9"
    );
}

/// `serve` prunes what retention says is past keeping as soon as it starts: an event-log entry
/// and a delivery of 100 days ago go, archived first as a JSON line; today's stay.
#[tokio::test]
async fn edge_serve_prunes_what_retention_says_is_old_at_start_and_archives_it_first() {
    use tollgate::engine::Delivery;
    use tollgate::store::{EventNote, Store};

    let dir = tempfile::tempdir().unwrap();
    let state = format!("sqlite://{}", dir.path().join("state.db").display());
    {
        let store = Store::open(&state).await.unwrap();
        let now = chrono::Utc::now();
        for (id, at) in [("old", now - chrono::Duration::days(100)), ("new", now)] {
            let d = Delivery {
                source: "github".into(),
                id: format!("{id}-delivery"),
            };
            let note = EventNote {
                pipeline: "backend".into(),
                kind: "ignored".into(),
                detail: format!("the {id} delivery"),
            };
            store.record_delivery(&d, Some(&note), at).await.unwrap();
        }
    }
    let archive = dir.path().join("archive");
    let retention = format!(
        "\n[controller.retention]\narchive_dir = \"{}\"\n",
        archive.display()
    );
    let stages =
        stages_toml("").replacen("\n[[pipelines]]", &format!("{retention}\n[[pipelines]]"), 1);
    let served = Served::launch(dir, &stages);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while served
        .count("SELECT COUNT(*) FROM events WHERE detail = 'the old delivery'")
        .await
        > 0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the old entry was not pruned:\n{}",
            served.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        served
            .count("SELECT COUNT(*) FROM events WHERE detail = 'the new delivery'")
            .await,
        1
    );
    assert_eq!(
        served
            .count("SELECT COUNT(*) FROM deliveries WHERE id = 'old-delivery'")
            .await,
        0
    );
    assert_eq!(
        served
            .count("SELECT COUNT(*) FROM deliveries WHERE id = 'new-delivery'")
            .await,
        1
    );
    let archived: String = std::fs::read_dir(&archive)
        .unwrap()
        .map(|f| std::fs::read_to_string(f.unwrap().path()).unwrap())
        .collect();
    assert!(archived.contains("the old delivery"), "{archived}");
    assert!(!archived.contains("the new delivery"), "{archived}");
}

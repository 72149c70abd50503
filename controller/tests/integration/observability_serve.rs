//! Metrics and logs of the real `tollgate serve` process, on the same rig as `approvals_serve`
//! (moto, the CloudWatch stub, the GitHub fake, signed webhooks, approvals over HTTP).
//!
//! - JSON logs through a promotion with an approval: every line is a JSON object, every line
//!   written inside an effect names its pipeline, stage, release and effect key, HTTP lines carry
//!   the request id the answer returned as `X-Request-Id`, and no webhook secret, GitHub token,
//!   approval token or approval link appears anywhere in the output.
//! - `/metrics` on `--metrics-listen`, read with the Prometheus project's own exposition parser
//!   (`prometheus_client.parser` from PyPI's `prometheus-client`, run by `TOLLGATE_PYTHON`, else
//!   the workspace's `.venv/bin/python` that `scripts/test` installs it into), after two
//!   promotions and a rollback caused by a signed SNS alarm: the counters match what happened,
//!   `ExecuteChangeSet` attempts equal what moto's recorder saw, and two throttled CloudWatch
//!   reads (the stub's throttling) show as two `throttled` attempts and two retries.
//!
//! Loopback only; every wait is bounded.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tollgate::domain::RunStatus;
use tollgate::http::sns_verify::AlarmState;
use tollgate_testkit::sns::TestSigner;
use tollgate_testkit::world::REGION;

use crate::approvals_serve::{SECRET, Serve, TOKEN, nothing_more, quick, sha};
use tollgate_testkit::serve::free_port;

/// The longest one wait for a metric may take.
const LIMIT: Duration = Duration::from_secs(90);

// ----- JSON logs -----------------------------------------------------------------------------

#[tokio::test]
async fn json_logs_of_a_promotion_with_approval_name_each_effect_and_leak_no_secret() {
    let args = |_: &_| ["--log-format", "json"].map(String::from).to_vec();
    let s = Serve::start_with(quick(), nothing_more, args).await;
    let commit = sha(21);
    s.push(&commit, "carol", "carol").await;
    s.wait(&commit, "prod", "approval", |r| {
        r.status == RunStatus::AwaitingApproval
    })
    .await;
    let token = s.nth_link(1).await;
    let (status, _, answer) = s.decide(&token, "approve").await;
    assert_eq!(status, 200, "{answer}");
    s.wait(&commit, "prod", "success", |r| {
        r.status == RunStatus::Succeeded
    })
    .await;
    let ready = s
        .http
        .get(format!("{}/readyz", s.url))
        .send()
        .await
        .unwrap();
    let request_id = ready.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(request_id.len(), 32, "{request_id}");
    assert!(request_id.bytes().all(|b| b.is_ascii_hexdigit()));
    let lines = wait_for_log(&s, &request_id).await;

    for line in &lines {
        for e in spans_named(line, "effect") {
            for field in ["pipeline", "stage", "release", "effect_key"] {
                assert!(e.get(field).is_some(), "{field} missing: {line}");
            }
            assert_eq!(e["pipeline"], s.world.pipeline(), "{line}");
        }
    }
    for stage in ["beta", "gamma", "prod"] {
        let deployed = lines.iter().any(|l| {
            l["fields"]["message"] == "effect finished"
                && l["fields"]["ok"] == true
                && spans_named(l, "effect").any(|e| e["stage"] == stage && e["kind"] == "deploy")
        });
        assert!(deployed, "no finished deploy logged in {stage}");
    }
    let answered = lines.iter().any(|l| {
        l["fields"]["message"] == "answered"
            && spans_named(l, "request").any(|r| r["request_id"] == request_id.as_str())
    });
    assert!(answered, "no line carries the request id {request_id}");

    let all = format!("{}{}", s.log(), s.stdout());
    let link = format!("{}/approvals/", s.url);
    for secret in [SECRET, TOKEN, token.as_str(), link.as_str(), "/approvals/"] {
        assert!(!all.contains(secret), "`{secret}` appears in the output");
    }
}

/// The log's lines, parsed (each must be a JSON object), once one carries `request_id`.
async fn wait_for_log(s: &Serve, request_id: &str) -> Vec<Value> {
    let deadline = Instant::now() + LIMIT;
    loop {
        let text = s.log();
        if text.contains(request_id) {
            return text
                .lines()
                .map(|l| {
                    let v: Value =
                        serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
                    assert!(v.is_object(), "{l}");
                    v
                })
                .collect();
        }
        assert!(Instant::now() < deadline, "no line with {request_id}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The spans of a JSON line with this name (the current one and those around it).
fn spans_named<'a>(line: &'a Value, name: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    let list = line["spans"].as_array().into_iter().flatten();
    list.chain(std::iter::once(&line["span"]))
        .filter(move |s| s["name"] == name)
}

// ----- /metrics ------------------------------------------------------------------------------

#[tokio::test]
async fn metrics_after_two_promotions_and_an_alarm_rollback_count_what_happened() {
    let dir = tempfile::tempdir().unwrap();
    let hold = dir.path().join("hold-gamma");
    let signer = TestSigner::new();
    let metrics_port = free_port().unwrap();
    let builder = quick().after_test("gamma", "held", held_while(&hold));
    let args = |world: &tollgate_testkit::world::World| {
        let certs = world.seed_sns_certificates(&signer).expect("certs");
        vec![
            "--metrics-listen".into(),
            format!("127.0.0.1:{metrics_port}"),
            "--sns-cert-cache".into(),
            certs.display().to_string(),
        ]
    };
    let s = Serve::start_with(builder, nothing_more, args).await;
    // Before the first release: every ExecuteChangeSet is recorded.
    s.moto.recorder_start().await.expect("recorder on");
    let m = Scraper::new(&s, metrics_port);
    let pipeline = s.world.pipeline().to_owned();
    let p = pipeline.as_str();

    // CloudWatch throttles the first two alarm reads (beta's gate): retried, counted.
    s.stub.throttle(2);
    // Two releases promoted everywhere (the stacks are made by the first: see `e2e_moto`).
    for (n, commit) in [sha(31), sha(32)].iter().enumerate() {
        s.push(commit, "carol", "carol").await;
        s.wait(commit, "prod", "approval", |r| {
            r.status == RunStatus::AwaitingApproval
        })
        .await;
        let pending = m.wait("approvals pending", |x| {
            x.get("tollgate_approvals_pending", &[("stage", "prod")]) == 1.0
        });
        let pending = pending.await;
        assert!(
            pending.get(
                "tollgate_approval_oldest_pending_age_seconds",
                &[("stage", "prod")]
            ) >= 0.0
        );
        let token = s.nth_link(n + 1).await;
        let (status, _, answer) = s.decide(&token, "approve").await;
        assert_eq!(status, 200, "{answer}");
        s.wait(commit, "prod", "success", |r| {
            r.status == RunStatus::Succeeded
        })
        .await;
        let want = (n + 1) as f64;
        let x = m
            .wait("releases succeeded", |x| {
                x.get(
                    "tollgate_releases_total",
                    &[("pipeline", p), ("outcome", "succeeded")],
                ) == want
            })
            .await;
        assert_eq!(
            x.get("tollgate_approvals_pending", &[("stage", "prod")]),
            0.0
        );
        for stage in ["beta", "gamma", "prod"] {
            let deploys = x.get(
                "tollgate_deploy_duration_seconds_count",
                &[("stage", stage), ("result", "succeeded")],
            );
            assert_eq!(deploys, want, "deploys in {stage}");
        }
    }

    // The third passes beta and is held in gamma's tests; beta's alarm, signed by SNS, fired
    // during beta's deploy and arrives now: beta rolls back.
    std::fs::write(&hold, "").unwrap();
    let bad = sha(33);
    s.push(&bad, "carol", "carol").await;
    let (_, beta) = s
        .wait(&bad, "beta", "success", |r| {
            r.status == RunStatus::Succeeded
        })
        .await;
    s.wait(&bad, "gamma", "tests", |r| r.status == RunStatus::Verifying)
        .await;
    let started = beta.deploy_started.expect("beta's deploy started");
    let changed_at = started + (beta.since - started) / 2;
    let stage = s.world.stage("beta").expect("beta");
    let body = signer.alarm_notification_at(
        &stage.alarm_topic,
        &stage.alarm,
        &stage.account_id,
        REGION,
        AlarmState::Alarm,
        changed_at,
    );
    let answer = s
        .http
        .post(format!("{}/webhooks/sns", s.url))
        .header("content-type", "text/plain; charset=UTF-8")
        .header("x-amz-sns-message-type", "Notification")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200, "{}", answer.text().await.unwrap());
    s.wait(&bad, "beta", "rollback", |r| {
        r.status == RunStatus::RolledBack
    })
    .await;
    std::fs::remove_file(&hold).unwrap();
    s.wait(&bad, "gamma", "an end", |r| r.status.is_terminal())
        .await;

    let x = m
        .wait("the rollback counted", |x| {
            x.get("tollgate_releases_total", &[("outcome", "rolled_back")]) == 1.0
        })
        .await;
    let count = |name: &str, labels: &[(&str, &str)]| x.get(name, labels);
    assert_eq!(
        count("tollgate_releases_total", &[("outcome", "succeeded")]),
        2.0
    );
    assert_eq!(
        count(
            "tollgate_alarm_to_rollback_seconds_count",
            &[("stage", "beta")]
        ),
        1.0
    );
    assert_eq!(
        count(
            "tollgate_rollback_duration_seconds_count",
            &[("stage", "beta"), ("result", "succeeded")]
        ),
        1.0
    );
    assert_eq!(
        count(
            "tollgate_deploy_duration_seconds_count",
            &[("stage", "beta"), ("result", "succeeded")]
        ),
        3.0
    );
    assert_eq!(
        count(
            "tollgate_stage_run_duration_seconds_count",
            &[("stage", "beta"), ("status", "rolled_back")]
        ),
        1.0
    );
    let runs = |stage, status| {
        count(
            "tollgate_stage_run_duration_seconds_count",
            &[("stage", stage), ("status", status)],
        )
    };
    assert_eq!(runs("beta", "succeeded"), 3.0);
    assert_eq!(runs("prod", "succeeded"), 2.0);
    let deliveries = [("github", "recorded", 3.0), ("sns", "recorded", 1.0)];
    for (source, result, want) in deliveries {
        let got = count(
            "tollgate_webhook_deliveries_total",
            &[("source", source), ("result", result)],
        );
        assert_eq!(got, want, "{source} {result}");
    }
    let executes = s
        .moto
        .recorded_requests()
        .await
        .expect("moto recording")
        .iter()
        .filter(|r| r.action.as_deref() == Some("ExecuteChangeSet"))
        .count();
    assert!(executes >= 8, "{executes} ExecuteChangeSet calls");
    let counted = count(
        "tollgate_aws_calls_total",
        &[
            ("service", "CloudFormation"),
            ("operation", "ExecuteChangeSet"),
        ],
    );
    assert_eq!(counted, executes as f64);
    for op in ["AssumeRole", "CreateChangeSet", "DescribeStacks"] {
        let n = count(
            "tollgate_aws_calls_total",
            &[("operation", op), ("outcome", "success")],
        );
        assert!(n > 0.0, "no {op} counted");
    }
    let alarm_reads = |outcome| {
        let labels = [
            ("service", "CloudWatch"),
            ("operation", "DescribeAlarms"),
            ("outcome", outcome),
        ];
        count("tollgate_aws_calls_total", &labels)
    };
    assert_eq!(alarm_reads("throttled"), 2.0);
    assert!(alarm_reads("success") > 0.0);
    let retries = count(
        "tollgate_aws_retries_total",
        &[("operation", "DescribeAlarms")],
    );
    assert_eq!(retries, 2.0);
    assert!(count("tollgate_reconcile_lag_seconds_count", &[("pipeline", p)]) > 0.0);
    assert!(count("tollgate_github_calls_total", &[("outcome", "success")]) > 0.0);
    // The gauge holds the latest answer's header; the fake counts down with every request.
    let remaining = count("tollgate_github_rate_limit_remaining", &[]);
    let limit = f64::from(tollgate_testkit::github_fake::RATE_LIMIT);
    assert!(remaining < limit, "{remaining}");
    assert!(
        remaining >= f64::from(s.github.rate_remaining()),
        "{remaining}"
    );
}

/// A `command` test that passes once `hold` no longer exists.
fn held_while(hold: &Path) -> Vec<String> {
    let script = format!("while [ -e '{}' ]; do sleep 0.05; done", hold.display());
    vec!["sh".into(), "-c".into(), script]
}

/// Reads `/metrics` from the controller's metrics address.
struct Scraper {
    http: reqwest::Client,
    url: String,
}

impl Scraper {
    fn new(s: &Serve, port: u16) -> Scraper {
        Scraper {
            http: s.http.clone(),
            url: format!("http://127.0.0.1:{port}/metrics"),
        }
    }

    async fn scrape(&self) -> Samples {
        let r = self.http.get(&self.url).send().await.expect("GET /metrics");
        assert!(r.status().is_success(), "{}", r.status());
        Samples::parse(&r.text().await.unwrap())
    }

    /// Scrapes until `done` holds (bounded), and returns that scrape.
    async fn wait(&self, what: &str, done: impl Fn(&Samples) -> bool) -> Samples {
        let deadline = Instant::now() + LIMIT;
        loop {
            let x = self.scrape().await;
            if done(&x) {
                return x;
            }
            assert!(Instant::now() < deadline, "{what}: not seen in\n{}", x.text);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// One scrape as the Prometheus parser read it: (sample name, labels, value).
pub(crate) struct Samples {
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
    text: String,
}

/// Prints every sample of the exposition on stdin as a JSON list `[name, labels, value]`.
const PARSE: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = []
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        out.append([s.name, s.labels, s.value])
print(json.dumps(out))
"#;

impl Samples {
    pub(crate) fn parse(text: &str) -> Samples {
        let mut child = Command::new(python())
            .args(["-c", PARSE])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python runs");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "the Prometheus parser refused the exposition: {}\n{text}",
            String::from_utf8_lossy(&out.stderr)
        );
        let samples = serde_json::from_slice(&out.stdout).expect("the parser's JSON");
        Samples {
            samples,
            text: text.to_owned(),
        }
    }

    /// The sum of the samples named `name` whose labels include `labels`.
    pub(crate) fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, _, v)| v)
            .sum()
    }
}

/// `TOLLGATE_PYTHON`, else the workspace's `.venv/bin/python` (where `scripts/test` installs
/// `prometheus-client`); never skipped.
pub(crate) fn python() -> PathBuf {
    let path = std::env::var_os("TOLLGATE_PYTHON").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python"),
        PathBuf::from,
    );
    assert!(
        path.exists(),
        "{} not found: run scripts/test once (it installs prometheus-client into .venv), or set \
         TOLLGATE_PYTHON to a python with prometheus-client",
        path.display()
    );
    path
}

// ----- a metrics address in use --------------------------------------------------------------

#[test]
fn a_metrics_address_in_use_stops_the_start_before_anything_is_opened() {
    use crate::engine_support::ACCOUNTS;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("accounts")).unwrap();
    std::fs::write(dir.path().join("accounts/accounts.toml"), ACCOUNTS).unwrap();
    std::fs::write(dir.path().join("service.yaml"), "Resources: {}\n").unwrap();
    let stages = crate::edge_serve::stages_toml("");
    std::fs::write(dir.path().join("stages.toml"), stages).unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let state = dir.path().join("state.db");
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .arg("serve")
        .arg("--config")
        .arg(dir.path().join("stages.toml"))
        .arg("--state")
        .arg(format!("sqlite://{}", state.display()))
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", &addr])
        .env("TOLLGATE_GITHUB_WEBHOOK_SECRET", SECRET)
        .env_remove("TOLLGATE_GITHUB_WEBHOOK_SECRET_FILE")
        .env_remove("TOLLGATE_GITHUB_TOKEN")
        .env_remove("TOLLGATE_GITHUB_TOKEN_FILE")
        .env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
        .envs([("X_BETA", "x"), ("X_GAMMA", "x"), ("X_PROD", "x")])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen for metrics on {addr}")),
        "{stderr}"
    );
    assert!(!state.exists(), "the state database was not created");
    drop(taken);
}

//! The demo behind `scripts/demo`: tollgate promotes a release Beta → Gamma → Prod across three
//! AWS accounts emulated by moto on 127.0.0.1, then rolls Prod back when a second release's
//! alarm fires during its bake.
//!
//! Everything runs for real except AWS itself: the `tollgate serve` binary with its embedded
//! SQLite state, the AWS SDK talking to `moto_server`, a signed GitHub `push` webhook, the
//! approval email read from the emulator and answered by POST as a person would, and a signed
//! SNS alarm notification. moto's CloudWatch alarms never fire and the current SDK speaks a
//! protocol to CloudWatch moto does not serve, so the demo plays CloudWatch: a small stub
//! answers the controller's alarm polls, and the demo signs the alarm's SNS notification with a
//! certificate it placed in the controller's certificate cache.
//!
//! Exits 0 only if every step happened as narrated.
//!
//! ```text
//! cargo run -p tollgate --example demo -- --tollgate target/debug/tollgate \
//!     --smoke-tests target/debug/smoke-tests
//! ```
//! (`TOLLGATE_MOTO_SERVER` names the `moto_server` binary; `scripts/demo` sets it.)

mod support;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use axum::Router;
use axum::extract::{Path as UrlPath, State};
use axum::routing::get;
use support::{
    Controller, REPO, STEP_LIMIT, Story, deliver_push, free_port, random_secret, repo_root, say,
    serve_args, short, wait_ready,
};
use tollgate::domain::{ReleaseId, RunStatus};
use tollgate::http::sns_verify::AlarmState;
use tollgate::store::Store;
use tollgate_testkit::moto::MotoServer;
use tollgate_testkit::sns::TestSigner;
use tollgate_testkit::world::{APPROVER, World};

const FIRST_SHA: &str = "4f2a9c1e8b7d6a5f4e3d2c1b0a9f8e7d6c5b4a39";
const SECOND_SHA: &str = "9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a291807";

#[tokio::main]
async fn main() {
    let started = Instant::now();
    match run().await {
        Ok(()) => {
            println!(
                "\nDemo complete in {:.0} s: every step happened as narrated.",
                started.elapsed().as_secs_f64()
            );
        }
        Err(e) => {
            eprintln!("\nDEMO FAILED: {e:#}");
            std::process::exit(1);
        }
    }
}

struct Args {
    tollgate: PathBuf,
    smoke_tests: PathBuf,
}

fn args() -> Result<Args> {
    let mut tollgate = None;
    let mut smoke_tests = None;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--tollgate" => tollgate = it.next().map(PathBuf::from),
            "--smoke-tests" => smoke_tests = it.next().map(PathBuf::from),
            other => {
                bail!("unknown argument {other}; usage: demo --tollgate PATH --smoke-tests PATH")
            }
        }
    }
    let need = |p: Option<PathBuf>, what: &str| -> Result<PathBuf> {
        let p = p.ok_or_else(|| anyhow!("--{what} PATH is required"))?;
        ensure!(p.is_file(), "{what} binary not found at {}", p.display());
        Ok(std::fs::canonicalize(&p)?)
    };
    Ok(Args {
        tollgate: need(tollgate, "tollgate")?,
        smoke_tests: need(smoke_tests, "smoke-tests")?,
    })
}

fn chapter(title: &str) {
    println!("\n━━ {title}");
}

async fn run() -> Result<()> {
    let args = args()?;

    chapter("Setting the scene: three AWS accounts in a local emulator");
    let moto = std::sync::Arc::new(tokio::task::spawn_blocking(MotoServer::start).await??);
    say(format!("moto_server is listening on {}", moto.endpoint()));
    let port = free_port()?;
    let public_url = format!("http://127.0.0.1:{port}");
    let service = StageService::start(moto.clone()).await?;
    let smoke_suite = repo_root().join("smoke-tests/demo.toml");
    let smoke = |stage: &str| {
        vec![
            args.smoke_tests.display().to_string(),
            "run".into(),
            smoke_suite.display().to_string(),
            "--base-url".into(),
            format!("{}/{stage}", service.url),
        ]
    };
    let world = World::builder()
        .source(REPO)
        .public_url(&public_url)
        .bake("beta", Duration::from_secs(2))
        .bake("gamma", Duration::from_secs(2))
        .bake("prod", Duration::from_secs(6))
        .after_test("beta", "integration", smoke("beta"))
        .after_test("gamma", "smoke-gamma", smoke("gamma"))
        .after_test("prod", "smoke-prod", smoke("prod"))
        .build(&moto)
        .await?;
    service.set_world(&world);
    world
        .bootstrap_stacks(&moto, "bootstrap-placeholder")
        .await?;
    world.subscribe_approver().await?;
    say("build account 123456789012 runs the controller and holds the ECR repository `backend`");
    for s in world.stages() {
        say(format!(
            "{:<5} account {}: stack {}, alarm {} (topic {})",
            s.name, s.account_id, s.stack, s.alarm, s.alarm_topic
        ));
    }
    say("each stage's stack was created once by the platform team, before the pipeline runs it");
    let first_digest = world.push_image(FIRST_SHA).await?;
    say(format!(
        "CI built commit {} and pushed backend:{} = {first_digest}",
        short(FIRST_SHA),
        FIRST_SHA
    ));
    let cloudwatch = world.start_cloudwatch_stub().await?;
    let signer = TestSigner::new();
    let certs = world.seed_sns_certificates(&signer)?;
    say(format!(
        "pipeline configuration: {}",
        world.stages_path().display()
    ));

    chapter("Starting the controller: tollgate serve (embedded SQLite state)");
    let state_path = world.dir().join("tollgate.db");
    let state = format!("sqlite://{}", state_path.display());
    let webhook_secret = random_secret();
    let log_path = world.dir().join("tollgate.log");
    let mut controller = Controller::start(
        &args.tollgate,
        &serve_args(&world, &state, port, &certs),
        &world.serve_env(&moto, &cloudwatch),
        &webhook_secret,
        &log_path,
    )?;
    let http = reqwest::Client::builder()
        .no_proxy()
        .user_agent("Mozilla/5.0 (demo approver)")
        .build()?;
    wait_ready(&http, &public_url, &mut controller).await?;
    say(format!(
        "{public_url}/readyz answers: the state database is ready"
    ));
    say(format!("controller log: {}", log_path.display()));
    let store = Store::open(&state).await?;
    let mut story = Story::new(store.clone(), world.pipeline().to_owned());

    chapter(&format!(
        "Release 1: GitHub announces a push of {}",
        short(FIRST_SHA)
    ));
    let r1 = deliver_push(
        &http,
        &public_url,
        &webhook_secret,
        FIRST_SHA,
        "Add order history endpoint",
        "gh-1",
    )
    .await?;
    say(format!(
        "POST /webhooks/github (signed, delivery gh-1) → {r1}"
    ));
    let again = deliver_push(
        &http,
        &public_url,
        &webhook_secret,
        FIRST_SHA,
        "Add order history endpoint",
        "gh-1",
    )
    .await?;
    say(format!(
        "GitHub redelivers gh-1 → {again}; nothing is recorded twice"
    ));
    let first = story.release_of(FIRST_SHA).await?;
    story
        .until(
            first,
            "prod",
            |s| s == RunStatus::AwaitingApproval,
            &mut controller,
        )
        .await?;

    chapter("Prod needs an approval: the email, and a person acting on it");
    approve(&http, &moto, &world, first, &mut story).await?;
    story
        .until(
            first,
            "prod",
            |s| s == RunStatus::Succeeded,
            &mut controller,
        )
        .await?;
    for s in world.stages() {
        let image = world
            .deployed_image(&moto, &s.name)
            .await?
            .unwrap_or_default();
        ensure!(
            image.ends_with(&first_digest),
            "{} runs {image}, not release 1",
            s.name
        );
        say(format!("{:<5} ({}) runs {image}", s.name, s.account_id));
    }

    chapter(&format!(
        "Release 2: {} — and an alarm during its Prod bake",
        short(SECOND_SHA)
    ));
    let second_digest = world.push_image(SECOND_SHA).await?;
    say(format!("CI pushed backend:{SECOND_SHA} = {second_digest}"));
    let r2 = deliver_push(
        &http,
        &public_url,
        &webhook_secret,
        SECOND_SHA,
        "Cache order history",
        "gh-2",
    )
    .await?;
    say(format!("POST /webhooks/github (delivery gh-2) → {r2}"));
    let second = story.release_of(SECOND_SHA).await?;
    story
        .until(
            second,
            "prod",
            |s| s == RunStatus::AwaitingApproval,
            &mut controller,
        )
        .await?;
    approve(&http, &moto, &world, second, &mut story).await?;
    story
        .until(second, "prod", |s| s == RunStatus::Baking, &mut controller)
        .await?;
    let prod = world.stage("prod")?;
    say(format!(
        "Prod is baking release 2; the error rate climbs and CloudWatch alarm {} goes to ALARM",
        prod.alarm
    ));
    cloudwatch.set_alarm(&prod.alarm, "ALARM");
    let notification = world.alarm_notification(&signer, "prod", AlarmState::Alarm)?;
    let posted = Instant::now();
    let answer = http
        .post(format!("{public_url}/webhooks/sns"))
        .header("x-amz-sns-message-type", "Notification")
        .header("content-type", "text/plain; charset=UTF-8")
        .body(notification)
        .send()
        .await?;
    ensure!(
        answer.status().is_success(),
        "the SNS notification was refused: {}",
        answer.status()
    );
    say(format!(
        "SNS delivers the alarm to POST /webhooks/sns (signature verified) → {}",
        answer.status()
    ));
    story
        .until(
            second,
            "prod",
            |s| s == RunStatus::RolledBack,
            &mut controller,
        )
        .await?;
    let wall = posted.elapsed();
    let prod_image = world
        .deployed_image(&moto, "prod")
        .await?
        .unwrap_or_default();
    ensure!(
        prod_image.ends_with(&first_digest),
        "prod runs {prod_image} after the rollback"
    );
    let gamma_image = world
        .deployed_image(&moto, "gamma")
        .await?
        .unwrap_or_default();
    ensure!(
        gamma_image.ends_with(&second_digest),
        "gamma should keep release 2, runs {gamma_image}"
    );
    let release = store.release(second).await?.context("release 2 vanished")?;
    let bad = release.bad.context("release 2 was not marked bad")?;
    say(format!("prod runs release 1 again: {prod_image}"));
    say(format!(
        "gamma keeps release 2 (it was not the stage that alarmed): {gamma_image}"
    ));
    say(format!(
        "release 2 is marked bad in {}: {}",
        bad.stage,
        bad.reason.describe(chrono::Utc::now())
    ));
    for e in store.release_events(world.pipeline(), second).await? {
        if e.kind == "rollback-latency" {
            say(format!("measured: {}", e.detail));
        }
    }
    say(format!(
        "wall clock, SNS POST to rollback finished: {} ms",
        wall.as_millis()
    ));

    chapter("tollgate status, through the controller's API");
    // The first key is made on the controller's host, in the state database; every other
    // command goes through the API with it.
    let made = Command::new(&args.tollgate)
        .args([
            "keys", "create", "--name", "demo", "--role", "viewer", "--config",
        ])
        .arg(world.stages_path())
        .args(["--state", &state])
        .output()?;
    ensure!(
        made.status.success(),
        "tollgate keys create failed: {}",
        String::from_utf8_lossy(&made.stderr)
    );
    say(
        "tollgate keys create --name demo --role viewer: a viewer key, printed once, stored hashed",
    );
    let key = String::from_utf8_lossy(&made.stdout).trim().to_owned();
    let status = Command::new(&args.tollgate)
        .args(["status", "--server", &public_url])
        .env("TOLLGATE_API_KEY", &key)
        .output()?;
    ensure!(
        status.status.success(),
        "tollgate status failed: {}",
        String::from_utf8_lossy(&status.stderr)
    );
    for line in String::from_utf8_lossy(&status.stdout).lines() {
        say(line);
    }
    controller.stop()?;
    say("the controller stopped cleanly on SIGTERM");
    Ok(())
}

// ----- the approval -------------------------------------------------------------------------

/// Finds the approval email for `release` that SNS sent to the approver, opens the link as a
/// browser (and as a mail scanner before it: nothing may change), and approves by POST.
async fn approve(
    http: &reqwest::Client,
    moto: &MotoServer,
    world: &World,
    release: ReleaseId,
    story: &mut Story,
) -> Result<()> {
    let (subject, body) = approval_email(moto, world, release).await?;
    say(format!(
        "SNS email to {APPROVER}@example.com — subject: {subject}"
    ));
    for line in body.lines().filter(|l| !l.trim().is_empty()).take(14) {
        say(format!("  │ {line}"));
    }
    let link = body
        .split_whitespace()
        .find(|w| w.contains("/approvals/"))
        .context("the approval email has no link")?
        .to_owned();
    say(format!("the approve link: {link}"));
    let scanned = http.head(&link).send().await?.status();
    let prefetch = http
        .get(&link)
        .header("sec-purpose", "prefetch")
        .send()
        .await?
        .status();
    say(format!(
        "a mail scanner fetches the link first (HEAD → {scanned}, GET → {prefetch}): nothing changes"
    ));
    story.print_new().await?;
    let page = http.get(&link).send().await?;
    ensure!(
        page.status().is_success(),
        "the approval page answered {}",
        page.status()
    );
    let html = page.text().await?;
    let csrf = hidden_field(&html, "csrf").context("the approval page has no CSRF field")?;
    say(format!("{APPROVER} opens the page: {}", page_title(&html)));
    let form = [("csrf", csrf.as_str()), ("decision", "approve")];
    let posted = http.post(&link).form(&form).send().await?;
    let status = posted.status();
    let html = posted.text().await?;
    ensure!(
        status.is_success(),
        "approving answered {status}: {}",
        page_title(&html)
    );
    say(format!(
        "{APPROVER} clicks Approve (POST with the CSRF token) → {}",
        page_title(&html)
    ));
    let again = http.post(&link).form(&form).send().await?;
    let again_status = again.status();
    let again_html = again.text().await?;
    say(format!(
        "the same link again → {again_status}: {}",
        page_title(&again_html)
    ));
    Ok(())
}

/// The newest approval message published for `release` to the approver, from moto's record of
/// what the topic sent (`/moto-api/data.json`): (subject, body).
async fn approval_email(
    moto: &MotoServer,
    world: &World,
    release: ReleaseId,
) -> Result<(String, String)> {
    let deadline = Instant::now() + STEP_LIMIT;
    let topic = world.topics().approvals.clone();
    let marker = format!("{release}");
    loop {
        let data = moto.data().await?;
        let topics = data["sns"]["Topic"].as_array().cloned().unwrap_or_default();
        let sent = topics
            .iter()
            .filter(|t| t["arn"] == topic.as_str())
            .flat_map(|t| {
                t["sent_notifications"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .filter_map(|n| {
                let body = n[1].as_str()?.to_owned();
                let subject = n[2].as_str().unwrap_or_default().to_owned();
                let to = n[3]["approver"]["Value"]
                    .as_str()
                    .or(n[3]["approver"]["StringValue"].as_str());
                (to == Some(APPROVER) && body.contains(&marker)).then_some((subject, body))
            })
            .next_back();
        if let Some(found) = sent {
            return Ok(found);
        }
        ensure!(
            Instant::now() < deadline,
            "no approval email for {release} within {STEP_LIMIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn hidden_field(html: &str, name: &str) -> Option<String> {
    let at = html.find(&format!("name=\"{name}\""))?;
    let tag_start = html[..at].rfind('<')?;
    let tag_end = at + html[at..].find('>')?;
    let tag = &html[tag_start..tag_end];
    let v = tag.find("value=\"")? + "value=\"".len();
    let end = tag[v..].find('"')?;
    Some(tag[v..v + end].to_owned())
}

fn page_title(html: &str) -> String {
    let pick = |open: &str, close: &str| {
        let a = html.find(open)? + open.len();
        let b = html[a..].find(close)?;
        Some(html[a..a + b].trim().to_owned())
    };
    pick("<h1>", "</h1>")
        .or_else(|| pick("<title>", "</title>"))
        .unwrap_or_else(|| "(no title)".into())
}

// ----- the stage service --------------------------------------------------------------------

/// Plays the service each stage runs: `/<stage>/healthz` and `/<stage>/api/version`, which
/// reports the image the stage's stack holds in the emulator — so the smoke tests pass only when
/// the deploy really landed in that stage's account.
struct StageService {
    url: String,
    world: std::sync::Arc<std::sync::Mutex<BTreeMap<String, (String, String)>>>,
}

#[derive(Clone)]
struct ServiceState {
    moto: std::sync::Arc<MotoServer>,
    stages: std::sync::Arc<std::sync::Mutex<BTreeMap<String, (String, String)>>>,
}

impl StageService {
    async fn start(moto: std::sync::Arc<MotoServer>) -> Result<StageService> {
        let stages = std::sync::Arc::new(std::sync::Mutex::new(BTreeMap::new()));
        let state = ServiceState {
            moto,
            stages: stages.clone(),
        };
        let app = Router::new()
            .route("/{stage}/healthz", get(|| async { "ok" }))
            .route("/{stage}/api/version", get(version))
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(StageService { url, world: stages })
    }

    fn set_world(&self, world: &World) {
        let mut m = self.world.lock().unwrap_or_else(|p| p.into_inner());
        for s in world.stages() {
            m.insert(s.name.clone(), (s.account_id.clone(), s.parameter.clone()));
        }
    }
}

async fn version(
    State(state): State<ServiceState>,
    UrlPath(stage): UrlPath<String>,
) -> Result<axum::Json<serde_json::Value>, (axum::http::StatusCode, String)> {
    let not_found = || {
        (
            axum::http::StatusCode::NOT_FOUND,
            format!("no stage {stage}"),
        )
    };
    let (account, parameter) = state
        .stages
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&stage)
        .cloned()
        .ok_or_else(not_found)?;
    let image = state
        .moto
        .ssm_parameter(&account, &parameter)
        .await
        .map_err(|e| (axum::http::StatusCode::BAD_GATEWAY, e.to_string()))?;
    Ok(axum::Json(
        serde_json::json!({ "stage": stage, "image": image }),
    ))
}

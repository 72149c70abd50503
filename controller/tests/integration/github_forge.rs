//! The GitHub adapter (`GithubForge`) against the stateful GitHub REST fake.
//!
//! End to end: a real `push` payload from `@octokit/webhooks-examples`, signed and delivered
//! to `POST /webhooks/github`, becomes a release that the engine promotes through Beta, Gamma
//! and Prod, with every port faked in memory except the forge, which talks HTTP to the fake.
//! The fake's model then shows what GitHub would: one Deployment per stage and its statuses,
//! and the `tollgate/<pipeline>` commit status. The test runners (`checks_gate`,
//! `run_workflow`), retries and the contents read are exercised on the forge directly.
//!
//! Every test is bounded in time and talks to 127.0.0.1 only.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{Value, json};
use tokio::time::Instant;
use tower::ServiceExt;

use tollgate::backoff::Backoff;
use tollgate::config::{self, Config};
use tollgate::domain::{Decision, ReleaseId, ReportState, RunStatus, StageRun};
use tollgate::engine::{Delivery, NewApproval};
use tollgate::engine::{DeploymentReport, Engine, Forge, PortError, SystemClock, TestResult};
use tollgate::github::forge::GithubForge;
use tollgate::github::webhook::{WebhookSecrets, sign};
use tollgate::http::server::{AppState, router};
use tollgate::secret::Secret;
use tollgate::store::Store;
use tollgate_testkit::fakes::Fakes;
use tollgate_testkit::github_fake::{Deployment, DeploymentStatus, GithubFake, RunScript};

/// The longest any one test may take.
const TEST_LIMIT: Duration = Duration::from_secs(60);
/// The token the fake accepts. Distinctive, so a leak is easy to spot.
const TOKEN: &str = "ghp_tollgateTestToken0123456789abcdefXYZ";
const WEBHOOK_SECRET: &str = "webhook-secret-0123456789abcdef0123456789";
const PIPELINE: &str = "backend";
const REPO: &str = "acme/backend";
const PUBLIC_URL: &str = "https://tollgate.test";
const STAGE_NAMES: [&str; 3] = ["beta", "gamma", "prod"];

/// Fails the test if `work` does not finish within [`TEST_LIMIT`].
async fn bounded<T>(work: impl Future<Output = T>) -> T {
    tokio::time::timeout(TEST_LIMIT, work)
        .await
        .unwrap_or_else(|_| panic!("the test did not finish within {TEST_LIMIT:?}"))
}

fn sha(n: u32) -> String {
    format!("{n:040x}")
}

// ---------------------------------------------------------------------------------------------
// GitHub's example payloads
// ---------------------------------------------------------------------------------------------

const EXAMPLES_ENV: &str = "TOLLGATE_WEBHOOK_EXAMPLES";
const WORKSPACE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

static PUSHES: LazyLock<Vec<Value>> = LazyLock::new(load_pushes);

fn examples_dir() -> PathBuf {
    match std::env::var_os(EXAMPLES_ENV) {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(WORKSPACE).join(".cache/npm/node_modules/@octokit/webhooks-examples"),
    }
}

/// The `push` examples GitHub.com sends (`api.github.com/index.json` of the package).
fn load_pushes() -> Vec<Value> {
    let file = examples_dir().join("api.github.com/index.json");
    let text = std::fs::read(&file).unwrap_or_else(|e| {
        panic!(
            "GitHub webhook examples not found at {} ({e}): run scripts/test, which installs \
             @octokit/webhooks-examples into .cache/npm and sets {EXAMPLES_ENV}",
            file.display()
        )
    });
    let index: Vec<Value> = serde_json::from_slice(&text).unwrap();
    let push = index.iter().find(|e| e["name"] == "push").unwrap();
    push["examples"].as_array().unwrap().clone()
}

/// A real push to a branch, moved to the pipeline's repository and branch.
fn branch_push() -> Value {
    let found = PUSHES.iter().find(|e| {
        e["ref"]
            .as_str()
            .is_some_and(|r| r.starts_with("refs/heads/"))
            && !e["head_commit"].is_null()
    });
    let mut p = found
        .expect("a push to a branch among the examples")
        .clone();
    p["repository"]["full_name"] = REPO.into();
    p["ref"] = "refs/heads/main".into();
    p
}

/// The same push, for another commit.
fn push_of(commit: &str) -> Value {
    let mut p = branch_push();
    p["after"] = commit.into();
    p["head_commit"]["id"] = commit.into();
    p["head_commit"]["message"] = format!("change {}", &commit[34..]).into();
    p
}

// ---------------------------------------------------------------------------------------------
// A controller: real router, real store, real forge against the fake, fakes for the rest
// ---------------------------------------------------------------------------------------------

/// Beta → Gamma → Prod; Prod needs one approval.
const STAGES: &str = r#"
[controller]
public_url = "https://tollgate.test"

[[pipelines]]
name = "backend"
[pipelines.source]
repository = "acme/backend"
branch = "main"
[pipelines.artifact]
repository = "backend"
account = "build"
region = "eu-west-1"

[[pipelines.stages]]
name = "beta"
targets = [{ account = "beta" }]
[pipelines.stages.deploy]
kind = "cloudformation"
stack = "backend-beta"
template = "service.yaml"
image_parameter = "ImageUri"

[[pipelines.stages]]
name = "gamma"
targets = [{ account = "gamma" }]
[pipelines.stages.deploy]
kind = "cloudformation"
stack = "backend-gamma"
template = "service.yaml"
image_parameter = "ImageUri"

[[pipelines.stages]]
name = "prod"
targets = [{ account = "prod" }]
[pipelines.stages.deploy]
kind = "cloudformation"
stack = "backend-prod"
template = "service.yaml"
image_parameter = "ImageUri"
[pipelines.stages.approval]
topic = "arn:aws:sns:eu-west-1:111111111111:approvals"
approvers = [{ name = "alice", email = "alice@example.com", github = "alice" }]
"#;

const ACCOUNTS: &str = r#"
[accounts.build]
id = "111111111111"
region = "eu-west-1"
controller = true
[accounts.beta]
id = "222222222222"
role_arn = "arn:aws:iam::222222222222:role/deploy"
external_id = { env = "X_BETA" }
region = "eu-west-1"
[accounts.gamma]
id = "333333333333"
role_arn = "arn:aws:iam::333333333333:role/deploy"
external_id = { env = "X_GAMMA" }
region = "eu-west-1"
[accounts.prod]
id = "444444444444"
role_arn = "arn:aws:iam::444444444444:role/deploy"
external_id = { env = "X_PROD" }
region = "eu-west-1"
"#;

/// Writes the configuration into `dir` and loads it.
fn config_in(dir: &Path) -> Config {
    std::fs::create_dir_all(dir.join("accounts")).unwrap();
    std::fs::write(dir.join("accounts/accounts.toml"), ACCOUNTS).unwrap();
    std::fs::write(dir.join("service.yaml"), "Resources: {}\n").unwrap();
    std::fs::write(dir.join("stages.toml"), STAGES).unwrap();
    config::load(&dir.join("stages.toml")).unwrap().config
}

/// The production retry policy's shape, with delays short enough for a test on real time.
const QUICK: Backoff = Backoff {
    base: Duration::from_millis(2),
    cap: Duration::from_millis(20),
    max_attempts: 4,
};

/// A forge for the fake that knows the pipeline's stages.
fn forge_for(github: &GithubFake, config: &Config) -> GithubForge {
    GithubForge::new(&Secret::new(TOKEN), github.url())
        .unwrap()
        .with_backoff(QUICK)
        .with_pipelines(config)
}

/// How many requests the fake saw whose line contains `part`.
fn requests_to(fake: &GithubFake, part: &str) -> usize {
    fake.requests().iter().filter(|r| r.contains(part)).count()
}

struct Controller {
    _dir: tempfile::TempDir,
    engine: Engine,
    app: axum::Router,
    fakes: Fakes,
    github: GithubFake,
}

async fn controller() -> Controller {
    let dir = tempfile::tempdir().unwrap();
    let config = config_in(dir.path());
    let github = GithubFake::start(TOKEN).await.unwrap();
    let fakes = Fakes::new();
    let mut ports = fakes.ports();
    ports.forge = Arc::new(forge_for(&github, &config));
    let url = format!("sqlite://{}", dir.path().join("state.db").display());
    let store = Store::open(&url).await.unwrap();
    let engine = Engine::new(store, config, ports, Arc::new(SystemClock));
    let secrets = WebhookSecrets::from_env_value(WEBHOOK_SECRET).unwrap();
    let app = router(AppState::new(engine.clone(), secrets));
    Controller {
        _dir: dir,
        engine,
        app,
        fakes,
        github,
    }
}

impl Controller {
    /// Delivers `payload` as a signed `push` through the real route; returns the status and
    /// the answer's `result`.
    async fn push(&self, delivery: &str, payload: &Value) -> (StatusCode, String) {
        let body = serde_json::to_vec(payload).unwrap();
        let signature = sign(&Secret::new(WEBHOOK_SECRET), &body);
        let req = Request::post("/webhooks/github")
            .header("content-type", "application/json")
            .header("x-github-event", "push")
            .header("x-github-delivery", delivery)
            .header("x-hub-signature-256", signature)
            .body(Body::from(body))
            .unwrap();
        let response = self.app.clone().oneshot(req).await.unwrap();
        let status = response.status();
        let bytes = http_body_util::BodyExt::collect(response.into_body())
            .await
            .unwrap()
            .to_bytes();
        let json: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let result = json["result"].as_str().unwrap_or_default().to_owned();
        (status, result)
    }

    /// Reconciles until nothing changes and no effect is running.
    async fn settle(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            assert!(Instant::now() < deadline, "the engine did not settle");
            self.engine.reconcile(PIPELINE).await.unwrap();
            while self.engine.in_flight() > 0 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            let before = self.engine.reads().events(PIPELINE, 1).await.unwrap();
            self.engine.reconcile(PIPELINE).await.unwrap();
            let after = self.engine.reads().events(PIPELINE, 1).await.unwrap();
            if before == after && self.engine.in_flight() == 0 {
                return;
            }
        }
    }

    /// Reconciles, without waiting for effects, until the run reaches `status`.
    async fn drive_until(&self, release: ReleaseId, stage: &str, status: RunStatus) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.run(release, stage).await.status != status {
            assert!(
                Instant::now() < deadline,
                "{release} never reached {status:?} in {stage}"
            );
            self.engine.reconcile(PIPELINE).await.unwrap();
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Every release of the pipeline with its stage runs, oldest first.
    async fn releases(&self) -> Vec<(tollgate::domain::Release, Vec<StageRun>)> {
        let mut all = self.engine.reads().recent_runs(PIPELINE, 50).await.unwrap();
        all.reverse();
        all
    }

    async fn run(&self, release: ReleaseId, stage: &str) -> StageRun {
        let releases = self.releases().await;
        let runs = releases.into_iter().find(|(r, _)| r.id == release);
        let runs = runs.map(|(_, runs)| runs).unwrap_or_default();
        runs.into_iter()
            .find(|r| r.stage == stage)
            .unwrap_or_else(|| panic!("no run of {release} in {stage}"))
    }

    async fn approve(&self, release: ReleaseId) {
        let approval = NewApproval {
            pipeline: PIPELINE.into(),
            release,
            stage: "prod".into(),
            attempt: 1,
            approver: "alice".into(),
            decision: Decision::Approve,
            verified: true,
            actor: "approver:alice".into(),
            context: "test".into(),
        };
        let delivery = Delivery {
            source: "test".into(),
            id: format!("approval-{release}"),
        };
        self.engine
            .record_approval(&approval, &delivery)
            .await
            .unwrap();
    }

    /// The one Deployment of `sha` in `environment`.
    fn deployment(&self, sha: &str, environment: &str) -> Deployment {
        let all = self.github.deployments();
        let found: Vec<&Deployment> = all
            .iter()
            .filter(|d| d.sha == sha && d.environment == environment)
            .collect();
        assert_eq!(
            found.len(),
            1,
            "deployments of {sha} in {environment}: {all:#?}"
        );
        found[0].clone()
    }

    fn states_of(&self, deployment: &Deployment) -> Vec<String> {
        let statuses = self.github.statuses_of(deployment.id);
        statuses.into_iter().map(|s| s.state).collect()
    }

    /// The `tollgate/backend` commit statuses of `sha`, oldest first.
    fn summaries(&self, sha: &str) -> Vec<(String, String)> {
        let statuses = self.github.commit_statuses(sha);
        let ours = statuses
            .into_iter()
            .filter(|s| s.context == format!("tollgate/{PIPELINE}"));
        ours.map(|s| (s.state, s.description.unwrap_or_default()))
            .collect()
    }
}

fn release_page(release: ReleaseId) -> String {
    format!(
        "{PUBLIC_URL}/ui/pipelines/{PIPELINE}/releases/{}",
        release.0
    )
}

/// Checks the Deployment GitHub holds for one stage of one release.
fn assert_deployment_of(d: &Deployment, sha: &str, release: ReleaseId, stage: &str) {
    assert_eq!(d.repository, REPO);
    assert_eq!(d.environment, stage);
    assert_eq!(d.git_ref, sha, "the deployment's ref is the commit");
    assert_eq!(d.task, "deploy");
    assert_eq!(
        d.payload,
        json!({ "pipeline": PIPELINE, "release": release.0 }),
        "the payload names the pipeline and the release"
    );
    assert_eq!(d.required_contexts, Some(vec![]));
    assert!(!d.transient_environment);
    assert_eq!(d.production_environment, stage == "prod");
}

/// The states of a Deployment, exactly and in order.
fn assert_went_through(d: &Deployment, actual: &[String], full: &[&str]) {
    let states: Vec<&str> = actual.iter().map(String::as_str).collect();
    assert!(
        states == full,
        "deployment {} in {}: {states:?}, expected {full:?}",
        d.id,
        d.environment
    );
}

fn assert_links_to(statuses: &[DeploymentStatus], release: ReleaseId) {
    for s in statuses {
        assert_eq!(
            s.log_url.as_deref(),
            Some(release_page(release).as_str()),
            "{s:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// End to end: push → release → Deployments per stage
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_push_delivered_three_times_is_promoted_with_one_deployment_per_stage() {
    bounded(async {
        let c = controller().await;
        let push = branch_push();
        let sha = push["after"].as_str().unwrap().to_owned();
        let mut results = Vec::new();
        for _ in 0..3 {
            let (status, result) = c.push("d-push-1", &push).await;
            assert_eq!(status, StatusCode::OK);
            results.push(result);
        }
        assert_eq!(results, ["recorded", "duplicate", "duplicate"]);
        let releases = c.releases().await;
        assert_eq!(releases.len(), 1, "three deliveries, one release");
        let release = releases[0].0.id;
        assert_eq!(releases[0].0.sha, sha);

        c.settle().await;
        assert_eq!(
            c.run(release, "prod").await.status,
            RunStatus::AwaitingApproval
        );
        let prod = c.deployment(&sha, "prod");
        assert_eq!(c.states_of(&prod), ["queued"], "waiting for approval");
        c.approve(release).await;
        c.settle().await;

        for stage in STAGE_NAMES {
            assert_eq!(c.run(release, stage).await.status, RunStatus::Succeeded);
            let d = c.deployment(&sha, stage);
            assert_deployment_of(&d, &sha, release, stage);
            let statuses = c.github.statuses_of(d.id);
            let states: Vec<String> = statuses.iter().map(|s| s.state.clone()).collect();
            assert_went_through(&d, &states, &["queued", "in_progress", "success"]);
            assert_links_to(&statuses, release);
        }
        assert_eq!(c.github.deployments().len(), 3, "no other deployment");

        let commit = c.github.commit_statuses(&sha);
        assert!(!commit.is_empty());
        for s in &commit {
            assert_eq!(s.context, "tollgate/backend");
            assert_eq!(
                s.target_url.as_deref(),
                Some(release_page(release).as_str())
            );
        }
        let summaries = c.summaries(&sha);
        let (last, earlier) = summaries.split_last().unwrap();
        assert_eq!(last.0, "success", "{summaries:?}");
        assert_eq!(last.1, "released through prod");
        assert!(
            earlier.iter().all(|(state, _)| state == "pending"),
            "{summaries:?}"
        );

        // Issue 5: every stage's Deployment shows all three statuses, `queued` included.
        let shown: Vec<(&str, Vec<String>)> = STAGE_NAMES
            .iter()
            .map(|stage| (*stage, c.states_of(&c.deployment(&sha, stage))))
            .collect();
        for (stage, states) in &shown {
            assert_eq!(
                states,
                &["queued", "in_progress", "success"],
                "{stage}'s Deployment statuses; all stages: {shown:?}"
            );
        }
    })
    .await;
}

#[tokio::test]
async fn a_failing_stage_ends_its_deployment_and_the_commit_status_in_failure() {
    bounded(async {
        let c = controller().await;
        c.fakes.with(|w| w.failing_deploys.insert("gamma".into()));
        let push = branch_push();
        let sha = push["after"].as_str().unwrap().to_owned();
        assert_eq!(c.push("d-fail", &push).await.1, "recorded");
        c.settle().await;
        let release = c.releases().await[0].0.id;

        let gamma = c.run(release, "gamma").await;
        assert_eq!(gamma.status, RunStatus::Failed);
        let beta = c.deployment(&sha, "beta");
        let full = ["queued", "in_progress", "success"];
        assert_went_through(&beta, &c.states_of(&beta), &full);
        let d = c.deployment(&sha, "gamma");
        assert_deployment_of(&d, &sha, release, "gamma");
        let statuses = c.github.statuses_of(d.id);
        let states: Vec<String> = statuses.iter().map(|s| s.state.clone()).collect();
        assert_went_through(&d, &states, &["queued", "in_progress", "failure"]);
        assert_links_to(&statuses, release);
        let failure = &statuses.last().unwrap().description;
        assert!(
            failure.contains("failed to stabilize in gamma"),
            "the deployment status says why: {failure}"
        );

        let deployments = c.github.deployments();
        assert!(
            deployments.iter().all(|d| d.environment != "prod"),
            "GitHub hears nothing of a stage the release never reached: {deployments:#?}"
        );
        let summaries = c.summaries(&sha);
        let (state, description) = summaries.last().unwrap();
        assert_eq!(state, "failure", "{summaries:?}");
        assert!(
            description.starts_with("gamma failed: ")
                && description.contains("failed to stabilize in gamma"),
            "a readable reason: {description}"
        );
    })
    .await;
}

/// Issue 5 and invariant 4: the older release's pending approval in Prod is superseded, and
/// its waiting Deployment is marked `inactive`.
#[tokio::test]
async fn a_newer_release_marks_the_older_ones_waiting_deployment_inactive() {
    bounded(async {
        let c = controller().await;
        let (old_sha, new_sha) = (sha(0xa1), sha(0xb2));
        assert_eq!(c.push("d-old", &push_of(&old_sha)).await.1, "recorded");
        c.settle().await;
        let old = c.releases().await[0].0.id;
        assert_eq!(c.run(old, "prod").await.status, RunStatus::AwaitingApproval);

        assert_eq!(c.push("d-new", &push_of(&new_sha)).await.1, "recorded");
        c.settle().await;
        let new = c.releases().await[1].0.id;
        assert!(new > old);
        assert_eq!(c.run(old, "prod").await.status, RunStatus::Superseded);
        assert_eq!(c.run(new, "prod").await.status, RunStatus::AwaitingApproval);

        let waiting = c.deployment(&old_sha, "prod");
        let statuses = c.github.statuses_of(waiting.id);
        let states: Vec<&str> = statuses.iter().map(|s| s.state.as_str()).collect();
        assert_eq!(states, ["queued", "inactive"]);
        assert_links_to(&statuses, old);
        assert!(
            statuses[1].description.contains("superseded"),
            "{:?}",
            statuses[1]
        );
        let newer = c.deployment(&new_sha, "prod");
        assert_ne!(newer.id, waiting.id);
        assert_eq!(c.states_of(&newer), ["queued"]);

        let summaries = c.summaries(&old_sha);
        let (state, description) = summaries.last().unwrap();
        assert_eq!(
            (state.as_str(), description.as_str()),
            ("error", "superseded in prod by a newer release")
        );

        // GitHub's `auto_inactive`: the newer success in Beta and Gamma retires the older ones.
        for stage in ["beta", "gamma"] {
            let older = c.deployment(&old_sha, stage);
            let states = c.states_of(&older);
            assert_eq!(
                states.last().map(String::as_str),
                Some("inactive"),
                "{stage}"
            );
            let newer = c.deployment(&new_sha, stage);
            let full = ["queued", "in_progress", "success"];
            assert_went_through(&newer, &c.states_of(&newer), &full);
        }
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Retries: a report lands once
// ---------------------------------------------------------------------------------------------

fn report(release: i64, environment: &str, state: ReportState) -> DeploymentReport {
    let release = ReleaseId(release);
    DeploymentReport {
        key: format!(
            "{PIPELINE}/{release}/{environment}/report-{}",
            state.as_str()
        ),
        pipeline: PIPELINE.into(),
        repository: REPO.into(),
        sha: sha(7),
        release,
        environment: environment.into(),
        state,
        description: String::new(),
        log_url: release_page(release),
        summary: true,
    }
}

/// A fake and a forge that knows the pipeline.
async fn github() -> (GithubFake, GithubForge, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let config = config_in(dir.path());
    let fake = GithubFake::start(TOKEN).await.unwrap();
    let forge = forge_for(&fake, &config);
    (fake, forge, dir)
}

#[tokio::test]
async fn a_report_rides_out_server_errors_and_creates_one_deployment() {
    bounded(async {
        let (fake, forge, _dir) = github().await;
        let queued = report(1, "beta", ReportState::Queued);
        // The look-up fails twice; the forge tries again by itself.
        fake.fail_next(500, 2);
        forge.report(&queued).await.unwrap();
        assert_eq!(fake.deployments().len(), 1);
        assert_eq!(requests_to(&fake, "/deployments?"), 3);

        // The deployment exists; the status post fails once and is sent again: one status each.
        let running = report(1, "beta", ReportState::InProgress);
        fake.fail_next(502, 1);
        forge.report(&running).await.unwrap();
        forge.report(&running).await.unwrap();
        let d = &fake.deployments()[0];
        let states: Vec<String> = fake
            .statuses_of(d.id)
            .into_iter()
            .map(|s| s.state)
            .collect();
        assert_eq!(states, ["queued", "in_progress"]);
        assert_eq!(fake.deployments().len(), 1);
    })
    .await;
}

#[tokio::test]
async fn a_report_gives_up_as_temporary_once_its_retries_are_spent() {
    bounded(async {
        let (fake, forge, _dir) = github().await;
        let queued = report(1, "beta", ReportState::Queued);
        fake.fail_next(503, QUICK.max_attempts);
        let err = forge.report(&queued).await.unwrap_err();
        assert!(err.is_retryable(), "{err}");
        assert!(err.to_string().contains("HTTP 503"), "{err}");
        let tries = requests_to(&fake, "/deployments?");
        assert_eq!(tries, QUICK.max_attempts as usize, "bounded: {tries} tries");
        assert!(fake.deployments().is_empty());

        // A refusal is not retried.
        fake.fail_next(403, 1);
        let err = forge.report(&queued).await.unwrap_err();
        assert!(matches!(err, PortError::Denied(_)), "{err}");
        assert_eq!(requests_to(&fake, "/deployments?"), tries + 1);
    })
    .await;
}

#[tokio::test]
async fn a_long_failure_reason_is_cut_to_githubs_limit() {
    bounded(async {
        let (fake, forge, _dir) = github().await;
        let mut failure = report(5, "gamma", ReportState::Failure);
        failure.description = format!("stack backend-gamma rolled back: {}", "é".repeat(300));
        forge.report(&failure).await.unwrap();
        let d = &fake.deployments()[0];
        let status = fake.statuses_of(d.id).pop().unwrap();
        assert_eq!(status.state, "failure");
        assert_eq!(status.description.chars().count(), 140);
        assert!(
            status
                .description
                .starts_with("stack backend-gamma rolled back: ")
        );
        assert!(status.description.ends_with('…'));
        let summary = fake.commit_statuses(&sha(7)).pop().unwrap();
        assert_eq!(summary.state, "failure");
        let text = summary.description.unwrap_or_default();
        assert!(
            text.starts_with("gamma failed: stack backend-gamma"),
            "{text}"
        );
        assert_eq!(text.chars().count(), 140);
    })
    .await;
}

/// The report of a run a reload ended by removing its stage (`summary: false`) updates the
/// stage's deployment but leaves the commit's status to the stages the release goes on
/// through: it would otherwise read "error: superseded in prod by a newer release", which no
/// newer release did.
#[tokio::test]
async fn a_removed_stages_report_leaves_the_commit_status_alone() {
    bounded(async {
        let (fake, forge, _dir) = github().await;
        forge
            .report(&report(3, "prod", ReportState::Queued))
            .await
            .unwrap();
        let mut ended = report(3, "prod", ReportState::Inactive);
        ended.summary = false;
        forge.report(&ended).await.unwrap();
        let d = &fake.deployments()[0];
        let states: Vec<String> = fake
            .statuses_of(d.id)
            .into_iter()
            .map(|s| s.state)
            .collect();
        assert_eq!(states, ["queued", "inactive"]);
        let summaries = fake.commit_statuses(&sha(7));
        assert_eq!(summaries.len(), 1, "{summaries:?}");
        assert_eq!(summaries[0].state, "pending");
    })
    .await;
}

#[tokio::test]
async fn a_rate_limited_report_is_retried_and_lands_once() {
    bounded(async {
        let (fake, forge, _dir) = github().await;
        let queued = report(2, "gamma", ReportState::Queued);
        fake.fail_next(429, 1);
        forge.report(&queued).await.unwrap();
        forge.report(&queued).await.unwrap();
        let deployments = fake.deployments();
        assert_eq!(deployments.len(), 1);
        assert_eq!(fake.statuses_of(deployments[0].id).len(), 1);
        assert_eq!(fake.commit_statuses(&sha(7)).len(), 1);
    })
    .await;
}

#[tokio::test]
async fn a_restarted_controller_reuses_the_deployment_it_created_before() {
    bounded(async {
        let (fake, forge, dir) = github().await;
        forge
            .report(&report(3, "prod", ReportState::Queued))
            .await
            .unwrap();
        // Another release of the same commit in the same environment is not ours.
        forge
            .report(&report(4, "prod", ReportState::Queued))
            .await
            .unwrap();
        drop(forge);

        let config = config_in(dir.path());
        let restarted = forge_for(&fake, &config);
        restarted
            .report(&report(3, "prod", ReportState::InProgress))
            .await
            .unwrap();
        restarted
            .report(&report(3, "prod", ReportState::Success))
            .await
            .unwrap();
        let deployments = fake.deployments();
        assert_eq!(deployments.len(), 2, "{deployments:#?}");
        let ours = &deployments[0];
        assert_eq!(ours.payload["release"], 3);
        assert!(ours.production_environment, "prod is the last stage");
        let states: Vec<String> = fake
            .statuses_of(ours.id)
            .into_iter()
            .map(|s| s.state)
            .collect();
        assert_eq!(states, ["queued", "in_progress", "success"]);
        let summary = fake.commit_statuses(&sha(7)).pop().unwrap();
        assert_eq!(summary.state, "success");
    })
    .await;
}

/// The forge retries a report through GitHub's 5xx answers while the engine promotes; each
/// stage still gets one Deployment with its statuses in order.
#[tokio::test]
async fn reports_ride_out_server_errors_without_duplicates() {
    bounded(async {
        let c = controller().await;
        c.github.fail_next(500, 2);
        let push = branch_push();
        let sha = push["after"].as_str().unwrap().to_owned();
        assert_eq!(c.push("d-retry", &push).await.1, "recorded");
        c.settle().await;
        let release = c.releases().await[0].0.id;
        c.approve(release).await;
        c.settle().await;

        let requests = c.github.requests();
        let lookups = requests.iter().filter(|r| r.contains("/deployments?"));
        assert!(
            lookups.count() >= 5,
            "three lookups and the two that failed: {requests:#?}"
        );
        for stage in STAGE_NAMES {
            let d = c.deployment(&sha, stage);
            let full = ["queued", "in_progress", "success"];
            assert_went_through(&d, &c.states_of(&d), &full);
        }
        assert_eq!(c.github.deployments().len(), 3);
        assert_eq!(c.summaries(&sha).last().unwrap().0, "success");
    })
    .await;
}

/// The first call to GitHub (Beta's first report) fails once; the forge sends it again after
/// its backoff, while the in-memory deploys take the release on towards Prod. A late Beta
/// report must not turn the finished promotion's commit status back to `pending`.
#[tokio::test]
async fn a_report_delayed_by_a_retry_does_not_undo_the_final_commit_status() {
    bounded(async {
        let c = controller().await;
        c.github.fail_next(500, 1);
        let push = branch_push();
        let sha = push["after"].as_str().unwrap().to_owned();
        assert_eq!(c.push("d-late", &push).await.1, "recorded");
        let release = c.releases().await[0].0.id;
        c.drive_until(release, "prod", RunStatus::AwaitingApproval)
            .await;
        c.approve(release).await;
        c.drive_until(release, "prod", RunStatus::Succeeded).await;
        c.settle().await;
        let beta = c.deployment(&sha, "beta");
        let full = ["queued", "in_progress", "success"];
        assert_went_through(&beta, &c.states_of(&beta), &full);
        let summaries = c.summaries(&sha);
        let (state, description) = summaries.last().unwrap();
        assert_eq!(
            (state.as_str(), description.as_str()),
            ("success", "released through prod"),
            "{summaries:#?}"
        );
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// The checks gate
// ---------------------------------------------------------------------------------------------

const POLL: Duration = Duration::from_millis(20);

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn check_polls(fake: &GithubFake) -> usize {
    let requests = fake.requests();
    requests
        .iter()
        .filter(|r| r.contains("/check-runs"))
        .count()
}

#[tokio::test]
async fn checks_gate_waits_while_checks_run_and_passes_when_all_succeed() {
    bounded(async {
        let (fake, forge, _dir) = github().await;
        let commit = sha(11);
        fake.set_check_run(REPO, &commit, "unit-tests", "queued", None);
        fake.set_check_run(REPO, &commit, "lint", "in_progress", None);
        fake.set_check_run(REPO, &commit, "unrelated", "completed", Some("failure"));
        let wanted = names(&["unit-tests", "lint"]);
        let gate = forge.checks_gate(REPO, &commit, &wanted, Duration::from_secs(10), POLL);
        let script = async {
            while check_polls(&fake) < 3 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            fake.set_check_run(REPO, &commit, "lint", "completed", Some("success"));
            fake.set_check_run(REPO, &commit, "unit-tests", "in_progress", None);
            let seen = check_polls(&fake);
            while check_polls(&fake) < seen + 2 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            fake.set_check_run(REPO, &commit, "unit-tests", "completed", Some("success"));
        };
        let (result, ()) = tokio::join!(gate, script);
        let result = result.unwrap();
        assert!(result.passed, "{result:?}");
        assert_eq!(result.summary, "checks passed: unit-tests, lint");
        assert!(check_polls(&fake) >= 5, "it waited for the checks");
        assert!(
            result.output_tail.contains("unit-tests: completed success"),
            "{result:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn checks_gate_counts_neutral_and_skipped_as_passing() {
    bounded(async {
        let (fake, forge, _dir) = github().await;
        let commit = sha(12);
        fake.set_check_run(REPO, &commit, "docs", "completed", Some("neutral"));
        fake.set_check_run(REPO, &commit, "e2e", "completed", Some("skipped"));
        let wanted = names(&["docs", "e2e"]);
        let result = forge
            .checks_gate(REPO, &commit, &wanted, Duration::from_secs(5), POLL)
            .await
            .unwrap();
        assert!(result.passed, "{result:?}");
    })
    .await;
}

#[tokio::test]
async fn checks_gate_fails_fast_naming_the_failed_check() {
    bounded(async {
        let (fake, forge, _dir) = github().await;
        let commit = sha(13);
        fake.set_check_run(REPO, &commit, "unit-tests", "in_progress", None);
        let lint = fake.set_check_run(REPO, &commit, "lint", "completed", Some("failure"));
        let wanted = names(&["unit-tests", "lint"]);
        let started = Instant::now();
        let result = forge
            .checks_gate(REPO, &commit, &wanted, Duration::from_secs(30), POLL)
            .await
            .unwrap();
        assert!(started.elapsed() < Duration::from_secs(5), "fails fast");
        assert!(!result.passed);
        assert_eq!(
            result.summary,
            format!("check `lint` concluded failure: https://github.com/{REPO}/runs/{lint}")
        );

        for conclusion in ["cancelled", "timed_out", "action_required"] {
            let commit = sha(14);
            fake.set_check_run(REPO, &commit, "build", "completed", Some(conclusion));
            let result = forge
                .checks_gate(REPO, &commit, &names(&["build"]), TEST_LIMIT, POLL)
                .await
                .unwrap();
            assert!(!result.passed, "{conclusion}");
            assert!(
                result
                    .summary
                    .starts_with(&format!("check `build` concluded {conclusion}")),
                "{result:?}"
            );
        }
    })
    .await;
}

#[tokio::test]
async fn checks_gate_times_out_naming_what_it_waited_for() {
    bounded(async {
        let (fake, forge, _dir) = github().await;
        let commit = sha(15);
        fake.set_check_run(REPO, &commit, "unit-tests", "queued", None);
        fake.set_check_run(REPO, &commit, "lint", "completed", Some("success"));
        let wanted = names(&["unit-tests", "lint", "e2e"]);
        let started = Instant::now();
        let result = forge
            .checks_gate(REPO, &commit, &wanted, Duration::from_millis(300), POLL)
            .await
            .unwrap();
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_secs(5),
            "{took:?}"
        );
        assert!(!result.passed);
        assert_eq!(
            result.summary,
            "timed out after 300ms waiting for checks: unit-tests (queued), e2e (not started)"
        );
    })
    .await;
}

#[tokio::test]
async fn checks_gate_rides_out_transient_errors_but_not_a_missing_repository() {
    bounded(async {
        let (fake, forge, _dir) = github().await;
        let commit = sha(16);
        fake.set_check_run(REPO, &commit, "unit-tests", "completed", Some("success"));
        fake.fail_next(503, 2);
        let wanted = names(&["unit-tests"]);
        let result = forge
            .checks_gate(REPO, &commit, &wanted, Duration::from_secs(10), POLL)
            .await
            .unwrap();
        assert!(result.passed, "{result:?}");

        fake.fail_next(404, 1);
        let err = forge
            .checks_gate(REPO, &commit, &wanted, Duration::from_secs(10), POLL)
            .await
            .unwrap_err();
        assert!(matches!(err, PortError::NotFound(_)), "{err}");
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Workflow runs
// ---------------------------------------------------------------------------------------------

const WORKFLOW: &str = "integration.yml";

fn inputs() -> BTreeMap<String, String> {
    BTreeMap::from([
        ("stage".to_owned(), "beta".to_owned()),
        (
            "stage_url".to_owned(),
            "https://beta.example.test".to_owned(),
        ),
        ("release".to_owned(), "r7".to_owned()),
    ])
}

async fn run_workflow(forge: &GithubForge, timeout: Duration) -> Result<TestResult, PortError> {
    forge
        .run_workflow(REPO, WORKFLOW, "main", &inputs(), timeout, POLL)
        .await
}

/// GitHub answers the first two requests of a workflow test (the list of runs taken before
/// the dispatch) with 502: the forge asks again by itself and the test runs once.
#[tokio::test]
async fn run_workflow_rides_out_server_errors_and_dispatches_once() {
    bounded(async {
        let (fake, forge, _dir) = github().await;
        fake.add_workflow(
            REPO,
            WORKFLOW,
            &["stage", "stage_url", "release"],
            RunScript::concludes("success", 1),
        );
        fake.fail_next(502, 2);
        let result = run_workflow(&forge, Duration::from_secs(10)).await.unwrap();
        assert!(result.passed, "{result:?}");
        assert_eq!(fake.dispatches().len(), 1);
        assert_eq!(fake.runs().len(), 1);
    })
    .await;
}

#[tokio::test]
async fn run_workflow_dispatches_with_the_inputs_and_waits_for_success() {
    bounded(async {
        let (fake, forge, _dir) = github().await;
        let script = RunScript {
            hidden_for: 2,
            polls: 3,
            conclusion: Some("success".into()),
        };
        fake.add_workflow(REPO, WORKFLOW, &["stage", "stage_url", "release"], script);
        // Someone else's dispatch, still running: never taken for ours.
        let theirs = fake.add_run(REPO, WORKFLOW, "workflow_dispatch", "main");

        let result = run_workflow(&forge, Duration::from_secs(10)).await.unwrap();

        let dispatches = fake.dispatches();
        assert_eq!(dispatches.len(), 1);
        assert_eq!(dispatches[0].repository, REPO);
        assert_eq!(dispatches[0].workflow, WORKFLOW);
        assert_eq!(dispatches[0].git_ref, "main");
        assert_eq!(dispatches[0].inputs, inputs());
        let ours = fake.runs().into_iter().find(|r| r.id != theirs).unwrap();
        assert_eq!(ours.event, "workflow_dispatch");
        assert_eq!(ours.inputs, inputs());
        assert!(result.passed, "{result:?}");
        assert_eq!(
            result.summary,
            format!("workflow {WORKFLOW} run {} concluded success", ours.id)
        );
        assert_eq!(
            result.output_tail,
            format!("https://github.com/{REPO}/actions/runs/{}", ours.id)
        );
    })
    .await;
}

#[tokio::test]
async fn run_workflow_reports_a_failed_run() {
    bounded(async {
        let (fake, forge, _dir) = github().await;
        let inputs = ["stage", "stage_url", "release"];
        fake.add_workflow(REPO, WORKFLOW, &inputs, RunScript::concludes("failure", 2));
        let result = run_workflow(&forge, Duration::from_secs(10)).await.unwrap();
        assert!(!result.passed);
        let run = fake.runs().pop().unwrap();
        assert_eq!(
            result.summary,
            format!("workflow {WORKFLOW} run {} concluded failure", run.id)
        );
        assert!(result.output_tail.ends_with(&format!("/runs/{}", run.id)));
    })
    .await;
}

#[tokio::test]
async fn run_workflow_times_out_on_a_run_that_never_finishes() {
    bounded(async {
        let (fake, forge, _dir) = github().await;
        let forever = RunScript {
            hidden_for: 0,
            polls: 0,
            conclusion: None,
        };
        fake.add_workflow(REPO, WORKFLOW, &["stage", "stage_url", "release"], forever);
        let started = Instant::now();
        let result = run_workflow(&forge, Duration::from_millis(300))
            .await
            .unwrap();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(!result.passed);
        let run = fake.runs().pop().unwrap();
        assert_eq!(
            result.summary,
            format!(
                "workflow {WORKFLOW} run {} still in_progress after 300ms",
                run.id
            )
        );

        let never_shows = RunScript {
            hidden_for: u32::MAX,
            polls: 0,
            conclusion: Some("success".into()),
        };
        fake.add_workflow(REPO, "hidden.yml", &[], never_shows);
        let result = forge
            .run_workflow(
                REPO,
                "hidden.yml",
                "refs/heads/main",
                &BTreeMap::new(),
                Duration::from_millis(200),
                POLL,
            )
            .await
            .unwrap();
        assert!(!result.passed);
        assert_eq!(
            result.summary,
            "no run of hidden.yml appeared within 200ms of dispatching it on refs/heads/main"
        );
    })
    .await;
}

#[tokio::test]
async fn run_workflow_refuses_undeclared_inputs_and_unknown_workflows() {
    bounded(async {
        let (fake, forge, _dir) = github().await;
        fake.add_workflow(
            REPO,
            WORKFLOW,
            &["stage"],
            RunScript::concludes("success", 0),
        );
        let err = run_workflow(&forge, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, PortError::Invalid(m) if m.contains("Unexpected inputs provided")),
            "{err}"
        );
        assert!(fake.dispatches().is_empty());

        let err = forge
            .run_workflow(
                REPO,
                "missing.yml",
                "main",
                &BTreeMap::new(),
                Duration::from_secs(5),
                POLL,
            )
            .await
            .unwrap_err();
        assert!(matches!(err, PortError::NotFound(_)), "{err}");
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Contents and configuration status
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn fetch_file_reads_text_through_the_enterprise_prefix_too() {
    bounded(async {
        let fake = GithubFake::start(TOKEN).await.unwrap();
        let text = format!("# stages\n{}\nname = \"böse\"\n", "x = 1\n".repeat(200));
        let commit = sha(21);
        fake.put_file("acme/deploy-config", &commit, "config/stages.toml", &text);
        let enterprise = format!("{}/api/v3", fake.url());
        for url in [fake.url(), enterprise.as_str()] {
            let forge = GithubForge::new(&Secret::new(TOKEN), url).unwrap();
            let read = forge
                .fetch_file("acme/deploy-config", &commit, "config/stages.toml")
                .await
                .unwrap();
            assert_eq!(read, text, "via {url}");
        }
        let forge = GithubForge::new(&Secret::new(TOKEN), fake.url()).unwrap();
        let err = forge
            .fetch_file("acme/deploy-config", &commit, "absent.toml")
            .await
            .unwrap_err();
        assert!(matches!(err, PortError::NotFound(_)), "{err}");

        forge
            .post_config_status("acme/deploy-config", &commit, Err("\nstages.toml:3:1: bad"))
            .await
            .unwrap();
        let status = fake.commit_statuses(&commit).pop().unwrap();
        assert_eq!(
            (status.state.as_str(), status.context.as_str()),
            ("failure", "tollgate/config")
        );
        assert_eq!(
            status.description.as_deref(),
            Some("refused: stages.toml:3:1: bad")
        );
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// The token
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn the_token_never_appears_in_errors() {
    bounded(async {
        let (fake, forge, _dir) = github().await;
        let mut errors: Vec<String> = Vec::new();

        // A token GitHub does not accept: 401 on every call.
        let wrong = "ghp_wrongTokenForThisTest987654321";
        let stranger = GithubForge::new(&Secret::new(wrong), fake.url()).unwrap();
        let err = stranger
            .report(&report(1, "beta", ReportState::Queued))
            .await
            .unwrap_err();
        assert!(matches!(&err, PortError::Denied(m) if m.contains("Bad credentials")));
        errors.push(format!("{err}"));
        errors.push(format!("{err:?}"));
        errors.push(format!("{stranger:?}"));
        let err = stranger
            .checks_gate(REPO, &sha(1), &names(&["ci"]), TEST_LIMIT, POLL)
            .await
            .unwrap_err();
        assert!(matches!(err, PortError::Denied(_)), "{err}");
        errors.push(format!("{err}"));

        // Errors from the accepted token (a temporary one once the retries are spent).
        for status in [400, 401, 403, 404, 422, 429, 500, 503] {
            let temporary = matches!(status, 429 | 500 | 503);
            fake.fail_next(status, if temporary { QUICK.max_attempts } else { 1 });
            let err = forge
                .report(&report(1, "beta", ReportState::Queued))
                .await
                .unwrap_err();
            errors.push(format!("{err}"));
            errors.push(format!("{err:?}"));
        }
        let err = forge
            .fetch_file(REPO, "main", "missing.toml")
            .await
            .unwrap_err();
        errors.push(format!("{err}"));
        errors.push(format!("{forge:?}"));

        // Setup errors, from the environment.
        let bad_url = GithubForge::from_vars(|key| match key {
            "TOLLGATE_GITHUB_TOKEN" => Some(TOKEN.into()),
            "TOLLGATE_GITHUB_API_URL" => Some("ftp://github.example".into()),
            _ => None,
        })
        .unwrap_err();
        errors.push(format!("{bad_url}"));
        errors.push(format!("{bad_url:?}"));
        let bad_token =
            GithubForge::new(&Secret::new(format!("{TOKEN}\n")), fake.url()).unwrap_err();
        errors.push(format!("{bad_token}"));
        errors.push(format!("{bad_token:?}"));

        for text in &errors {
            assert!(!text.contains(TOKEN), "the token leaked: {text}");
            assert!(!text.contains(wrong), "the token leaked: {text}");
            assert!(!text.contains("ghp_"), "a token leaked: {text}");
        }
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// A GitHub App instead of a token
// ---------------------------------------------------------------------------------------------

/// An RSA key pair as GitHub hands an App's private key out (PEM), and its public half.
fn app_key() -> (String, String) {
    use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
    let key = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).unwrap();
    let private = key.to_pkcs8_pem(LineEnding::LF).unwrap().to_string();
    let public = key
        .to_public_key()
        .to_public_key_pem(LineEnding::LF)
        .unwrap();
    (private, public)
}

#[tokio::test]
async fn a_github_app_installation_reports_with_a_token_it_obtains_once() {
    bounded(async {
        let fake = GithubFake::start("ghs_installation_token").await.unwrap();
        let (private, public) = app_key();
        fake.enable_app(4242, 77, &public);
        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("app.pem");
        std::fs::write(&key_file, &private).unwrap();
        let vars = BTreeMap::from([
            ("TOLLGATE_GITHUB_APP_ID", "4242".to_string()),
            ("TOLLGATE_GITHUB_APP_INSTALLATION_ID", "77".to_string()),
            (
                "TOLLGATE_GITHUB_APP_KEY_FILE",
                key_file.display().to_string(),
            ),
            ("TOLLGATE_GITHUB_API_URL", fake.url().to_string()),
        ]);
        let forge = GithubForge::from_vars(|k| vars.get(k).map(std::ffi::OsString::from)).unwrap();
        for state in [
            ReportState::Queued,
            ReportState::InProgress,
            ReportState::Success,
        ] {
            let sent = forge.report(&report(1, "beta", state)).await;
            sent.unwrap_or_else(|e| panic!("{e}: {:?}", fake.requests()));
        }
        let deployments = fake.deployments();
        assert_eq!(deployments.len(), 1, "{deployments:?}");
        let states: Vec<String> = fake
            .statuses_of(deployments[0].id)
            .into_iter()
            .map(|s| s.state)
            .collect();
        assert_eq!(states, ["queued", "in_progress", "success"]);
        assert_eq!(
            fake.installation_tokens_issued(),
            1,
            "the installation token is cached, not fetched per call"
        );
    })
    .await;
}

#[tokio::test]
async fn a_github_app_with_a_wrong_key_or_incomplete_settings_is_refused_clearly() {
    bounded(async {
        let fake = GithubFake::start("ghs_installation_token").await.unwrap();
        let (_, public) = app_key();
        let (other_private, _) = app_key();
        fake.enable_app(4242, 77, &public);
        let forge = GithubForge::new_app(
            4242,
            &Secret::new(other_private.clone()),
            77,
            fake.url(),
            "app.pem",
        )
        .unwrap();
        let err = forge
            .report(&report(1, "beta", ReportState::Queued))
            .await
            .unwrap_err();
        assert!(fake.deployments().is_empty(), "{err}");
        assert_eq!(fake.installation_tokens_issued(), 0);
        assert!(!err.to_string().contains("BEGIN PRIVATE KEY"), "{err}");

        let setup = |pairs: &[(&str, &str)]| {
            let vars: BTreeMap<String, String> = pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            GithubForge::from_vars(|k| vars.get(k).map(std::ffi::OsString::from))
                .unwrap_err()
                .to_string()
        };
        let incomplete = setup(&[("TOLLGATE_GITHUB_APP_ID", "4242")]);
        assert!(
            incomplete.starts_with("a GitHub App needs all of")
                && incomplete.contains("is not set"),
            "{incomplete}"
        );
        let both = setup(&[
            ("TOLLGATE_GITHUB_TOKEN", "ghp_x"),
            ("TOLLGATE_GITHUB_APP_ID", "4242"),
        ]);
        assert!(both.contains("not both"), "{both}");
        let dir = tempfile::tempdir().unwrap();
        let not_pem = dir.path().join("key.pem");
        std::fs::write(&not_pem, "ghp_this_is_a_token_not_a_key").unwrap();
        let path = not_pem.display().to_string();
        let bad_key = setup(&[
            ("TOLLGATE_GITHUB_APP_ID", "4242"),
            ("TOLLGATE_GITHUB_APP_INSTALLATION_ID", "77"),
            ("TOLLGATE_GITHUB_APP_KEY_FILE", &path),
        ]);
        assert!(bad_key.contains("not an RSA private key"), "{bad_key}");
        assert!(!bad_key.contains("ghp_this_is"), "{bad_key}");
        let zero = setup(&[
            ("TOLLGATE_GITHUB_APP_ID", "0"),
            ("TOLLGATE_GITHUB_APP_INSTALLATION_ID", "77"),
            ("TOLLGATE_GITHUB_APP_KEY_FILE", &path),
        ]);
        assert!(
            zero.contains("TOLLGATE_GITHUB_APP_ID must be a positive number"),
            "{zero}"
        );
    })
    .await;
}

#[tokio::test]
async fn the_people_of_a_commits_pull_requests_are_their_authors_and_mergers() {
    use tollgate::domain::{Contributor, ContributorRole as R};
    bounded(async {
        let (fake, forge, _dir) = github().await;
        let (work, merge) = (sha(41), sha(42));
        let pr = fake.open_pull(REPO, "Pat-Author", &[&work]);
        let other = fake.open_pull(REPO, "someone", &[&sha(43)]);
        let people = |sha: String| {
            let forge = &forge;
            async move { forge.pull_request_people(REPO, &sha).await.unwrap() }
        };
        let author = Contributor::new(R::PullRequestAuthor, Some("Pat-Author"), None).unwrap();
        assert_eq!(people(work.clone()).await, Some(vec![author.clone()]));
        assert_eq!(people(merge.clone()).await, Some(vec![]), "not merged yet");

        fake.merge_pull(REPO, pr, "Mo-Merger", &merge);
        fake.merge_pull(REPO, other, "nobody-relevant", &sha(44));
        let merger = Contributor::new(R::PullRequestMerger, Some("Mo-Merger"), None).unwrap();
        // The merge commit belongs to the pull request: its author and who merged it.
        assert_eq!(
            people(merge.clone()).await,
            Some(vec![author.clone(), merger.clone()])
        );
        // `merged_by` is read from the pull request itself (the commit's list leaves it out).
        assert!(
            fake.requests()
                .iter()
                .any(|r| r.ends_with(&format!("/pulls/{pr}")))
        );

        // A temporary failure is ridden out; the answer is the same.
        fake.fail_next(502, 1);
        assert_eq!(people(work).await, Some(vec![author, merger]));
    })
    .await;
}

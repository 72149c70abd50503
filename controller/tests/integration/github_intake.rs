//! `POST /webhooks/github` end to end: GitHub's own example payloads (npm package
//! `@octokit/webhooks-examples`, installed by `scripts/test`), rewritten to name the test
//! pipelines' repositories, signed, and sent through the real router into a real engine and
//! a real SQLite store. Also the configuration self-update against the GitHub fake.

use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;
use tokio::sync::mpsc;
use tower::ServiceExt;

use tollgate::config::{self, Config, ConfigError};
use tollgate::engine::{Engine, Leadership, SystemClock, shared_config};
use tollgate::github::forge::GithubForge;
use tollgate::github::intake;
use tollgate::github::webhook::{WebhookSecrets, sign};
use tollgate::http::server::{AppState, router};
use tollgate::secret::Secret;
use tollgate::store::Store;
use tollgate_testkit::fakes::Fakes;
use tollgate_testkit::github_fake::GithubFake;

// ---------------------------------------------------------------------------------------------
// GitHub's example payloads
// ---------------------------------------------------------------------------------------------

const EXAMPLES_ENV: &str = "TOLLGATE_WEBHOOK_EXAMPLES";
const WORKSPACE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

struct Examples {
    ping: Vec<Value>,
    push: Vec<Value>,
    workflow_run: Vec<Value>,
}

static EXAMPLES: LazyLock<Examples> = LazyLock::new(load_examples);

fn examples_dir() -> PathBuf {
    match std::env::var_os(EXAMPLES_ENV) {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(WORKSPACE).join(".cache/npm/node_modules/@octokit/webhooks-examples"),
    }
}

/// The examples GitHub.com sends (`api.github.com/index.json` of the package).
fn load_examples() -> Examples {
    let file = examples_dir().join("api.github.com/index.json");
    let text = std::fs::read(&file).unwrap_or_else(|e| {
        panic!(
            "GitHub webhook examples not found at {} ({e}): run scripts/test, which installs \
             @octokit/webhooks-examples into .cache/npm and sets {EXAMPLES_ENV}",
            file.display()
        )
    });
    let index: Vec<Value> = serde_json::from_slice(&text).unwrap();
    let of = |name: &str| -> Vec<Value> {
        let event = index.iter().find(|e| e["name"] == name).unwrap();
        event["examples"].as_array().unwrap().clone()
    };
    Examples {
        ping: of("ping"),
        push: of("push"),
        workflow_run: of("workflow_run"),
    }
}

fn find(examples: &[Value], what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let found = examples.iter().find(|e| pred(e));
    found
        .unwrap_or_else(|| panic!("no example {what} in the package"))
        .clone()
}

/// A real push to a branch, moved to `repo` and `branch`.
fn branch_push(repo: &str, branch: &str) -> Value {
    let mut p = find(&EXAMPLES.push, "pushing a branch", |e| {
        e["ref"]
            .as_str()
            .is_some_and(|r| r.starts_with("refs/heads/"))
            && !e["head_commit"].is_null()
    });
    p["repository"]["full_name"] = repo.into();
    p["ref"] = format!("refs/heads/{branch}").into();
    p
}

/// A real completed, successful run, moved to `repo`, the workflow `file` and `branch`.
fn build_run(repo: &str, file: &str, branch: &str) -> Value {
    let mut p = find(&EXAMPLES.workflow_run, "of a successful run", |e| {
        e["action"] == "completed" && e["workflow_run"]["conclusion"] == "success"
    });
    let path = format!(".github/workflows/{file}");
    p["repository"]["full_name"] = repo.into();
    p["workflow_run"]["head_repository"]["full_name"] = repo.into();
    p["workflow_run"]["head_branch"] = branch.into();
    p["workflow_run"]["path"] = path.clone().into();
    p["workflow"]["path"] = path.into();
    p
}

fn bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap()
}

// ---------------------------------------------------------------------------------------------
// A controller with two pipelines
// ---------------------------------------------------------------------------------------------

const SECRET: &str = "webhook-secret-0123456789abcdef0123456789";

/// `backend` releases on push; `web` releases when its build workflow succeeds.
const STAGES: &str = r#"
[controller]
public_url = "https://tollgate.test"
config_repository = "acme/deploy-config"

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

[[pipelines]]
name = "web"
[pipelines.source]
repository = "acme/web"
branch = "main"
build_workflow = "build.yml"
[pipelines.artifact]
repository = "web"
account = "build"
region = "eu-west-1"
[[pipelines.stages]]
name = "beta"
targets = [{ account = "beta" }]
[pipelines.stages.deploy]
kind = "cloudformation"
stack = "web-beta"
template = "service.yaml"
image_parameter = "ImageUri"
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
"#;

fn load_config(dir: &Path, stages: &str) -> Result<Config, ConfigError> {
    let read = |_: &Path| -> Result<String, ConfigError> { Ok(ACCOUNTS.to_owned()) };
    let loaded = config::load_str(&dir.join("stages.toml"), stages, dir, &read)?;
    Ok(loaded.config)
}

struct Controller {
    dir: tempfile::TempDir,
    engine: Engine,
    app: axum::Router,
    config_changes: mpsc::Receiver<String>,
}

async fn controller() -> Controller {
    controller_with(None).await
}

/// A controller that asks `forge` (GitHub's compare API) when the pushes cannot order builds.
async fn controller_with(forge: Option<Arc<GithubForge>>) -> Controller {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("accounts")).unwrap();
    std::fs::write(dir.path().join("accounts/accounts.toml"), ACCOUNTS).unwrap();
    std::fs::write(dir.path().join("service.yaml"), "Resources: {}\n").unwrap();
    let config = load_config(dir.path(), STAGES).unwrap();
    let url = format!("sqlite://{}", dir.path().join("s.db").display());
    let store = Store::open(&url).await.unwrap();
    let engine = Engine::new(store, config, Fakes::new().ports(), Arc::new(SystemClock));
    let secrets =
        WebhookSecrets::from_env_value(&format!("old-secret-0123456789abcdef0123456789,{SECRET}"))
            .unwrap();
    let (tx, config_changes) = mpsc::channel(8);
    let mut state = AppState::new(engine.clone(), secrets).with_config_changes(tx);
    if let Some(forge) = forge {
        state = state.with_forge(forge);
    }
    Controller {
        dir,
        engine,
        app: router(state),
        config_changes,
    }
}

/// A delivery as GitHub sends it.
struct Delivery<'a> {
    event: Option<&'a str>,
    id: Option<&'a str>,
    signature: Option<String>,
    body: Vec<u8>,
}

impl<'a> Delivery<'a> {
    fn signed(event: &'a str, id: &'a str, body: Vec<u8>) -> Self {
        let signature = Some(sign(&Secret::new(SECRET), &body));
        Delivery {
            event: Some(event),
            id: Some(id),
            signature,
            body,
        }
    }

    fn of(event: &'a str, id: &'a str, payload: &Value) -> Self {
        Self::signed(event, id, bytes(payload))
    }
}

struct Answer {
    status: StatusCode,
    json: Value,
}

impl Controller {
    /// Another controller on this one's state, standing by (it never claims the lease), with
    /// the configuration this one runs.
    async fn standby(&self) -> Engine {
        let url = format!("sqlite://{}", self.dir.path().join("s.db").display());
        Engine::elected(
            Store::open(&url).await.unwrap(),
            shared_config((*self.engine.config()).clone()),
            Fakes::new().ports(),
            Arc::new(SystemClock),
            Leadership::elected("standby", std::time::Duration::from_secs(10)),
        )
    }

    async fn send(&self, d: Delivery<'_>) -> Answer {
        send_to(&self.app, d).await
    }

    async fn releases(&self, pipeline: &str) -> Vec<tollgate::domain::Release> {
        let runs = self.engine.reads().recent_runs(pipeline, 50).await.unwrap();
        runs.into_iter().map(|(r, _)| r).collect()
    }

    async fn deliveries(&self) -> i64 {
        sqlx::query_scalar("SELECT COUNT(*) FROM deliveries")
            .fetch_one(self.engine.reads().pool())
            .await
            .unwrap()
    }

    async fn events(&self, pipeline: &str, kind: &str) -> Vec<String> {
        let events = self.engine.reads().events(pipeline, 100).await.unwrap();
        events
            .into_iter()
            .filter(|e| e.kind == kind)
            .map(|e| e.detail)
            .collect()
    }
}

/// `d`, sent to `app` as GitHub sends it.
async fn send_to(app: &axum::Router, d: Delivery<'_>) -> Answer {
    let mut req = Request::post("/webhooks/github").header("content-type", "application/json");
    let headers = [
        ("x-github-event", d.event.map(str::to_owned)),
        ("x-github-delivery", d.id.map(str::to_owned)),
        ("x-hub-signature-256", d.signature),
    ];
    for (name, value) in headers {
        if let Some(v) = value {
            req = req.header(name, v);
        }
    }
    let response = app
        .clone()
        .oneshot(req.body(Body::from(d.body)).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&body)
        .unwrap_or(Value::String(String::from_utf8_lossy(&body).into()));
    Answer { status, json }
}

fn detail(a: &Answer) -> String {
    a.json["detail"].as_str().unwrap_or_default().to_owned()
}

// ---------------------------------------------------------------------------------------------
// Releases from pushes
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_push_delivered_three_times_creates_exactly_one_release() {
    let c = controller().await;
    let push = branch_push("acme/backend", "main");
    let mut results = Vec::new();
    for _ in 0..3 {
        let a = c.send(Delivery::of("push", "d-push-1", &push)).await;
        assert_eq!(a.status, StatusCode::OK, "{:?}", a.json);
        results.push(a.json["result"].as_str().unwrap().to_owned());
    }
    assert_eq!(results, ["recorded", "duplicate", "duplicate"]);

    let releases = c.releases("backend").await;
    assert_eq!(releases.len(), 1);
    let r = &releases[0];
    assert_eq!(r.sha.as_str(), push["after"]);
    assert_eq!(r.branch, "main");
    assert_eq!(r.author_name, push["head_commit"]["author"]["name"]);
    assert_eq!(r.author_email, push["head_commit"]["author"]["email"]);
    assert_eq!(
        r.author_login.as_deref(),
        push["head_commit"]["author"]["username"].as_str()
    );
    assert_eq!(r.message, push["head_commit"]["message"]);
    assert_eq!(r.url.as_deref(), push["compare"].as_str());
    assert!(c.releases("web").await.is_empty());
}

#[tokio::test]
async fn the_same_commit_in_a_new_delivery_changes_nothing() {
    let c = controller().await;
    let push = branch_push("acme/backend", "main");
    assert_eq!(
        c.send(Delivery::of("push", "d-a", &push)).await.status,
        StatusCode::OK
    );
    let again = c.send(Delivery::of("push", "d-b", &push)).await;
    assert_eq!(
        (again.status, again.json["result"].as_str()),
        (StatusCode::OK, Some("duplicate"))
    );
    assert_eq!(c.releases("backend").await.len(), 1);
}

#[tokio::test]
async fn pushes_that_are_not_releases_are_acknowledged_and_ignored() {
    let c = controller().await;
    let tag = find(&EXAMPLES.push, "creating a tag", |e| {
        e["ref"]
            .as_str()
            .is_some_and(|r| r.starts_with("refs/tags/"))
            && e["created"] == true
    });
    let deletion = find(&EXAMPLES.push, "deleting a ref", |e| e["deleted"] == true);
    let mut tag = tag.clone();
    tag["repository"]["full_name"] = "acme/backend".into();
    let mut deleted_branch = deletion.clone();
    deleted_branch["repository"]["full_name"] = "acme/backend".into();
    deleted_branch["ref"] = "refs/heads/main".into();
    let unknown_repo = find(&EXAMPLES.push, "pushing a branch", |e| {
        e["ref"] == "refs/heads/master"
    });
    let cases = [
        (
            "other branch",
            branch_push("acme/backend", "feature/x"),
            "push to feature/x",
        ),
        ("tag", tag, "is not a branch"),
        ("deletion", deleted_branch, "was deleted"),
        (
            "unknown repository",
            unknown_repo,
            "no pipeline follows Codertocat/Hello-World",
        ),
        (
            "pipeline with a build workflow",
            branch_push("acme/web", "main"),
            "waiting for build workflow build.yml",
        ),
    ];
    for (i, (what, payload, reason)) in cases.iter().enumerate() {
        let id = format!("d-ignored-{i}");
        let a = c.send(Delivery::of("push", &id, payload)).await;
        assert_eq!(a.status, StatusCode::ACCEPTED, "{what}: {:?}", a.json);
        assert!(detail(&a).contains(reason), "{what}: {}", detail(&a));
    }
    assert!(c.releases("backend").await.is_empty());
    assert!(c.releases("web").await.is_empty());
    assert_eq!(
        c.deliveries().await,
        cases.len() as i64,
        "each ignored delivery is recorded"
    );
}

// ---------------------------------------------------------------------------------------------
// Releases from builds
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_successful_build_workflow_run_creates_the_release() {
    let c = controller().await;
    let run = build_run("acme/web", "build.yml", "main");
    let a = c.send(Delivery::of("workflow_run", "d-run-1", &run)).await;
    assert_eq!(
        (a.status, a.json["result"].as_str()),
        (StatusCode::OK, Some("recorded")),
        "{:?}",
        a.json
    );
    let again = c.send(Delivery::of("workflow_run", "d-run-1", &run)).await;
    assert_eq!(again.json["result"], "duplicate");

    let releases = c.releases("web").await;
    assert_eq!(releases.len(), 1);
    let r = &releases[0];
    let wr = &run["workflow_run"];
    assert_eq!(r.sha.as_str(), wr["head_sha"]);
    assert_eq!(r.author_name, wr["head_commit"]["author"]["name"]);
    assert_eq!(r.message, wr["head_commit"]["message"]);
    assert_eq!(r.url.as_deref(), wr["html_url"].as_str());
    assert!(c.releases("backend").await.is_empty());
}

#[tokio::test]
async fn other_workflows_unfinished_runs_and_other_branches_are_ignored() {
    let c = controller().await;
    let mut requested = build_run("acme/web", "build.yml", "main");
    requested["action"] = "requested".into();
    requested["workflow_run"]["status"] = "queued".into();
    requested["workflow_run"]["conclusion"] = Value::Null;
    let cases = [
        (
            "another workflow",
            build_run("acme/web", "test.yml", "main"),
        ),
        (
            "another branch",
            build_run("acme/web", "build.yml", "feature/x"),
        ),
        ("not completed", requested),
        (
            "unknown repository",
            build_run("acme/other", "build.yml", "main"),
        ),
    ];
    for (i, (what, payload)) in cases.iter().enumerate() {
        let id = format!("d-run-ignored-{i}");
        let a = c.send(Delivery::of("workflow_run", &id, payload)).await;
        assert_eq!(a.status, StatusCode::ACCEPTED, "{what}: {:?}", a.json);
    }
    assert!(c.releases("web").await.is_empty());
}

#[tokio::test]
async fn a_run_from_a_fork_is_never_acted_on() {
    let c = controller().await;
    let mut fork = find(&EXAMPLES.workflow_run, "from another repository", |e| {
        e["repository"]["full_name"] != e["workflow_run"]["head_repository"]["full_name"]
    });
    fork["repository"]["full_name"] = "acme/web".into();
    fork["workflow_run"]["head_repository"]["full_name"] = "mallory/web".into();
    fork["workflow_run"]["head_branch"] = "main".into();
    fork["workflow_run"]["conclusion"] = "success".into();
    fork["workflow"]["path"] = ".github/workflows/build.yml".into();
    let a = c.send(Delivery::of("workflow_run", "d-fork", &fork)).await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{:?}", a.json);
    assert!(c.releases("web").await.is_empty());
    let notes = c.events("web", "not-promoted").await;
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert!(notes[0].contains("fork mallory/web"), "{}", notes[0]);
}

#[tokio::test]
async fn a_failed_build_is_written_to_the_event_log_once() {
    let c = controller().await;
    let mut run = build_run("acme/web", "build.yml", "main");
    run["workflow_run"]["conclusion"] = "failure".into();
    for _ in 0..2 {
        let a = c.send(Delivery::of("workflow_run", "d-failed", &run)).await;
        assert!(a.status.is_success(), "{:?}", a.json);
    }
    assert!(c.releases("web").await.is_empty());
    let notes = c.events("web", "not-promoted").await;
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert!(
        notes[0].contains("build build.yml concluded failure"),
        "{}",
        notes[0]
    );
    assert!(notes[0].contains("nothing promoted"), "{}", notes[0]);
}

// ---------------------------------------------------------------------------------------------
// The edge: signature, headers, size, JSON
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_wrong_or_missing_signature_is_refused_and_records_nothing() {
    let c = controller().await;
    let body = bytes(&branch_push("acme/backend", "main"));
    let wrong = sign(&Secret::new("not-the-secret"), &body);
    let cases = [
        ("wrong secret", Some(wrong), "does not match"),
        ("missing", None, "missing X-Hub-Signature-256"),
        (
            "sha1 only",
            Some(format!("sha1={}", "a".repeat(40))),
            "malformed",
        ),
    ];
    for (what, signature, reason) in cases {
        let d = Delivery {
            event: Some("push"),
            id: Some("d-unsigned"),
            signature,
            body: body.clone(),
        };
        let a = c.send(d).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{what}");
        assert!(detail(&a).contains(reason), "{what}: {}", detail(&a));
    }
    assert!(c.releases("backend").await.is_empty());
    assert_eq!(c.deliveries().await, 0);
}

#[tokio::test]
async fn the_previous_secret_is_still_accepted_during_a_rotation() {
    let c = controller().await;
    let body = bytes(&branch_push("acme/backend", "main"));
    let signature = Some(sign(
        &Secret::new("old-secret-0123456789abcdef0123456789"),
        &body,
    ));
    let d = Delivery {
        event: Some("push"),
        id: Some("d-rotated"),
        signature,
        body,
    };
    assert_eq!(c.send(d).await.status, StatusCode::OK);
    assert_eq!(c.releases("backend").await.len(), 1);
}

#[tokio::test]
async fn a_body_over_25_mib_is_refused_with_413() {
    let c = controller().await;
    let body = vec![b' '; 25 * 1024 * 1024 + 1];
    let a = c.send(Delivery::signed("push", "d-huge", body)).await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(c.deliveries().await, 0);
}

#[tokio::test]
async fn missing_headers_and_malformed_json_are_bad_requests() {
    let c = controller().await;
    let body = bytes(&branch_push("acme/backend", "main"));
    let mut no_event = Delivery::signed("push", "d-1", body.clone());
    no_event.event = None;
    let a = c.send(no_event).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert!(detail(&a).contains("X-GitHub-Event"));

    let mut no_id = Delivery::signed("push", "d-1", body.clone());
    no_id.id = None;
    let a = c.send(no_id).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert!(detail(&a).contains("X-GitHub-Delivery"));

    let a = c
        .send(Delivery::signed("push", "d-1", b"{\"ref\": ".to_vec()))
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert!(detail(&a).contains("not valid JSON"), "{}", detail(&a));

    let mut incomplete = branch_push("acme/backend", "main");
    incomplete.as_object_mut().unwrap().remove("after");
    let a = c.send(Delivery::of("push", "d-2", &incomplete)).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(detail(&a), "`push` payload is missing `after`");
    assert_eq!(c.deliveries().await, 0);
}

#[tokio::test]
async fn ping_is_answered_and_unused_events_are_accepted() {
    let c = controller().await;
    for (i, ping) in EXAMPLES.ping.iter().enumerate() {
        let id = format!("d-ping-{i}");
        let a = c.send(Delivery::of("ping", &id, ping)).await;
        assert_eq!(
            (a.status, a.json["result"].as_str()),
            (StatusCode::OK, Some("pong"))
        );
    }
    let a = c
        .send(Delivery::signed(
            "issues",
            "d-issues",
            b"{\"action\":\"opened\"}".to_vec(),
        ))
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
    assert!(detail(&a).contains("`issues` events are not used"));
    assert_eq!(c.deliveries().await, 1);
}

// ---------------------------------------------------------------------------------------------
// Configuration self-update
// ---------------------------------------------------------------------------------------------

fn config_push(files: &[&str]) -> Value {
    let mut p = branch_push("acme/deploy-config", "main");
    p["commits"][0]["modified"] = files.iter().map(|f| Value::from(*f)).collect();
    p["commits"][0]["added"] = Value::Array(vec![]);
    p["commits"][0]["removed"] = Value::Array(vec![]);
    p
}

#[tokio::test]
async fn a_push_touching_the_config_file_announces_the_change() {
    let mut c = controller().await;
    let push = config_push(&["stages.toml"]);
    let a = c.send(Delivery::of("push", "d-config", &push)).await;
    assert_eq!(
        (a.status, a.json["result"].as_str()),
        (StatusCode::OK, Some("recorded")),
        "{:?}",
        a.json
    );
    assert_eq!(
        c.config_changes.try_recv().ok().as_deref(),
        push["after"].as_str()
    );

    let other = config_push(&["README.md"]);
    let a = c.send(Delivery::of("push", "d-config-2", &other)).await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
    assert!(c.config_changes.try_recv().is_err());
}

#[tokio::test]
async fn a_valid_config_from_github_is_applied_and_an_invalid_one_refused() {
    let c = controller().await;
    let fake = GithubFake::start("gh-token").await.unwrap();
    let forge = GithubForge::new(&Secret::new("gh-token"), fake.url()).unwrap();
    let good = STAGES.replace("stack = \"web-beta\"", "stack = \"web-beta-v2\"");
    put_config(&fake, &"a".repeat(40), &good, &[]);
    fake.add_commit("acme/deploy-config", &"b".repeat(40), &[&"a".repeat(40)]);
    fake.put_file(
        "acme/deploy-config",
        &"b".repeat(40),
        "stages.toml",
        "[[pipelines]]\nname = 1\n",
    );

    intake::apply_config_change(&c.engine, &forge, &"a".repeat(40))
        .await
        .unwrap();
    let stack = |cfg: &Config| match &cfg.pipeline("web").unwrap().stages[0].deploy {
        tollgate::config::Deploy::CloudFormation { stack, .. } => stack.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(stack(&c.engine.config()), "web-beta-v2");

    let err = intake::apply_config_change(&c.engine, &forge, &"b".repeat(40))
        .await
        .unwrap_err();
    assert!(err.contains("stages.toml"), "{err}");
    assert_eq!(
        stack(&c.engine.config()),
        "web-beta-v2",
        "an invalid file changes nothing"
    );
    let notes = c.events("web", "config").await;
    assert_eq!(notes.len(), 2, "{notes:?}");
    assert!(notes[0].starts_with("configuration reloaded from acme/deploy-config@aaaaaaaaaaaa"));
    assert!(notes[1].contains("refused"), "{}", notes[1]);

    let reported = |sha: &str| {
        let s = fake.commit_statuses(sha);
        assert_eq!(s.len(), 1, "{s:?}");
        assert_eq!(s[0].context, "tollgate/config");
        (
            s[0].state.clone(),
            s[0].description.clone().unwrap_or_default(),
        )
    };
    assert_eq!(reported(&"a".repeat(40)).0, "success");
    let (state, description) = reported(&"b".repeat(40));
    assert_eq!(state, "failure");
    assert!(
        description.starts_with("refused: ")
            && description.contains("stages.toml")
            && !description.contains("tollgate-config-"),
        "the status carries the validation message, located in the repository: {description}"
    );
    // A file that parses but names an unknown account: located by its path in the repository.
    let unknown = good.replacen("account = \"beta\"", "account = \"nope\"", 1);
    put_config(&fake, &"c".repeat(40), &unknown, &[&"a".repeat(40)]);
    let err = intake::apply_config_change(&c.engine, &forge, &"c".repeat(40))
        .await
        .unwrap_err();
    assert!(
        err.starts_with("error: stages.toml:") && !err.contains("tollgate-config-"),
        "the refusal names the repository's file, not the directory it was written to: {err}"
    );
}

/// A configuration commit with a warning (an approval with no tests before it) is applied, and
/// its warning, located in the repository's file, reaches whoever looks: the event log's
/// `config` entry, the commit's status, and `GET /api/v1/config`; not only the log.
#[tokio::test]
async fn a_config_from_github_with_warnings_is_applied_and_its_warnings_shown() {
    let c = controller().await;
    let fake = GithubFake::start("gh-token").await.unwrap();
    let forge = GithubForge::new(&Secret::new("gh-token"), fake.url()).unwrap();
    let stack =
        "stack = \"web-beta\"\ntemplate = \"service.yaml\"\nimage_parameter = \"ImageUri\"\n";
    assert!(STAGES.contains(stack));
    let approval = "[pipelines.stages.approval]\n\
                    topic = \"arn:aws:sns:eu-west-1:111111111111:approvals\"\n\
                    approvers = [{ name = \"alice\", email = \"alice@example.com\" }]\n";
    let warned = STAGES.replace(stack, &format!("{stack}{approval}"));
    let line = warned
        .lines()
        .position(|l| l == "[pipelines.stages.approval]")
        .unwrap()
        + 1;
    put_config(&fake, &commit(1), &warned, &[]);
    intake::apply_config_change(&c.engine, &forge, &commit(1))
        .await
        .unwrap();
    assert!(
        c.engine.config().pipeline("web").unwrap().stages[0]
            .approval
            .is_some()
    );

    let wanted = format!(
        "warning: stages.toml:{line}:1: stage `beta` asks for approval but no tests run before it"
    );
    let notes = c.events("web", "config").await;
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert!(
        notes[0].starts_with(&format!(
            "configuration reloaded from acme/deploy-config@111111111111, with 1 warning:\n{wanted}"
        )),
        "{}",
        notes[0]
    );
    let statuses = fake.commit_statuses(&commit(1));
    assert_eq!(statuses.len(), 1, "{statuses:?}");
    assert_eq!(statuses[0].state, "success");
    assert!(
        statuses[0]
            .description
            .as_deref()
            .is_some_and(|d| d.starts_with("configuration applied with 1 warning")),
        "{statuses:?}"
    );

    let view = config_view(&c).await;
    assert_eq!(view.source, "repository");
    assert!(view.validation.valid);
    assert_eq!(view.validation.warnings.len(), 1, "{:?}", view.validation);
    assert!(
        view.validation.warnings[0].starts_with(&wanted),
        "{:?}",
        view.validation.warnings
    );
}

/// `GET /api/v1/config` answers what loading the applied commit found and writes none of its
/// files: the commit's directory, removed after the commit was applied, stays removed, and the
/// answer is the same.
#[tokio::test]
async fn reading_the_config_writes_none_of_the_commits_files() {
    let c = controller().await;
    let fake = GithubFake::start("gh-token").await.unwrap();
    let forge = GithubForge::new(&Secret::new("gh-token"), fake.url()).unwrap();
    // Files of their own: the commit's directory is shared by every test of this process that
    // applies the same files, and this one removes it.
    let own = format!("{STAGES}\n# reading the config writes nothing\n");
    put_config(&fake, &commit(1), &own, &[]);
    intake::apply_config_change(&c.engine, &forge, &commit(1))
        .await
        .unwrap();
    let before = serde_json::to_value(config_view(&c).await).unwrap();
    assert_eq!(before["source"], "repository");
    assert_eq!(before["validation"]["valid"], true);
    let dir = c
        .engine
        .config()
        .source_file
        .parent()
        .unwrap()
        .to_path_buf();
    assert!(dir.join("service.yaml").is_file(), "{}", dir.display());
    std::fs::remove_dir_all(&dir).unwrap();

    let after = serde_json::to_value(config_view(&c).await).unwrap();
    assert!(!dir.exists(), "written again: {}", dir.display());
    assert_eq!(after, before);
}

/// What `GET /api/v1/config` answers.
async fn config_view(c: &Controller) -> tollgate::http::api::views::ConfigView {
    engine_config_view(&c.engine).await
}

/// What `GET /api/v1/config` answers on `engine`'s controller.
async fn engine_config_view(engine: &Engine) -> tollgate::http::api::views::ConfigView {
    let api = tollgate::http::api::ApiState::new(
        engine.clone(),
        None,
        &tollgate::config::HttpSettings::default(),
    );
    let axum::Json(view) = tollgate::http::api::reads::config(axum::extract::State(api))
        .await
        .unwrap();
    view
}

/// A configuration commit that drops a stage while a release bakes there is refused, like an
/// invalid file: the run would stay unplanned there. The configuration in force stays, and the
/// commit's status and the event log say which run holds the stage.
#[tokio::test]
async fn a_config_dropping_a_stage_a_release_bakes_in_is_refused() {
    let c = controller().await;
    let fake = GithubFake::start("gh-token").await.unwrap();
    let forge = GithubForge::new(&Secret::new("gh-token"), fake.url()).unwrap();
    let beta = "name = \"beta\"\ntargets = [{ account = \"beta\" }]";
    assert!(STAGES.contains(beta));
    let baking = STAGES.replacen(beta, &format!("{beta}\nbake = \"1h\""), 1);
    put_config(&fake, &commit(1), &baking, &[]);
    intake::apply_config_change(&c.engine, &forge, &commit(1))
        .await
        .unwrap();

    let push = branch_push("acme/backend", "main");
    let a = c.send(Delivery::of("push", "d-release", &push)).await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.json);
    crate::engine_support::settle(&c.engine).await.unwrap();
    let runs = c.engine.reads().changing_runs().await.unwrap();
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0].1.status, tollgate::domain::RunStatus::Baking);

    let renamed = baking.replacen("name = \"beta\"", "name = \"staging\"", 1);
    put_config(&fake, &commit(2), &renamed, &[&commit(1)]);
    let err = intake::apply_config_change(&c.engine, &forge, &commit(2))
        .await
        .unwrap_err();
    let release = runs[0].1.release;
    let held = format!("backend/beta: {release} baking");
    assert!(
        err.contains("it drops a stage while a release is being deployed or rolled back there"),
        "{err}"
    );
    assert!(err.contains(&held), "{err}");
    let stages: Vec<String> = c
        .engine
        .config()
        .pipeline("backend")
        .unwrap()
        .stages
        .iter()
        .map(|s| s.name.to_string())
        .collect();
    assert_eq!(stages, ["beta"], "the configuration in force stays");
    let status = fake.commit_statuses(&commit(2));
    assert_eq!(status.len(), 1, "{status:?}");
    assert_eq!(status[0].state, "failure");
    assert!(
        status[0]
            .description
            .as_deref()
            .unwrap_or_default()
            .contains(&held),
        "{status:?}"
    );
    let notes = c.events("backend", "config").await;
    assert!(
        notes
            .last()
            .is_some_and(|n| n.contains("refused") && n.contains(&held)),
        "{notes:?}"
    );

    let applied = c.engine.reads().applied_config().await.unwrap().unwrap();
    assert_eq!(
        applied.sha,
        commit(1),
        "the refused commit is not recorded as applied"
    );
}

#[tokio::test]
async fn try_reload_refuses_an_invalid_file_with_the_validation_message() {
    let c = controller().await;
    let bad = STAGES.replace("account = \"beta\"", "account = \"nowhere\"");
    let err = intake::try_reload(&bad, c.dir.path(), "stages.toml").unwrap_err();
    assert!(err.contains("nowhere"), "{err}");
    assert!(
        err.contains("stages.toml:"),
        "the message points at the file: {err}"
    );
    let ok = intake::try_reload(STAGES, c.dir.path(), "stages.toml").unwrap();
    assert_eq!(ok.pipelines.len(), 2);
}

/// A configuration from the repository that adds a pipeline writes its `config` entry in the
/// added pipeline's event log too, and one that removes a pipeline in the removed one's.
#[tokio::test]
async fn a_pipeline_a_config_from_github_adds_or_removes_has_its_config_entry() {
    let c = controller().await;
    let fake = GithubFake::start("gh-token").await.unwrap();
    let forge = GithubForge::new(&Secret::new("gh-token"), fake.url()).unwrap();
    let web = web_pipeline();
    let api = api_pipeline();
    let with_api = format!("{STAGES}\n{api}");
    let without_web = STAGES.replace(web, "");
    put_config(&fake, &"a".repeat(40), &with_api, &[]);
    put_config(&fake, &"b".repeat(40), &without_web, &[&"a".repeat(40)]);

    intake::apply_config_change(&c.engine, &forge, &"a".repeat(40))
        .await
        .unwrap();
    assert!(c.engine.config().pipeline("api").is_some());
    let notes = c.events("api", "config").await;
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert!(notes[0].starts_with("configuration reloaded from acme/deploy-config@aaaaaaaaaaaa"));

    intake::apply_config_change(&c.engine, &forge, &"b".repeat(40))
        .await
        .unwrap();
    assert!(c.engine.config().pipeline("web").is_none());
    let notes = c.events("web", "config").await;
    assert_eq!(notes.len(), 2, "{notes:?}");
    assert!(notes[1].starts_with("configuration reloaded from acme/deploy-config@bbbbbbbbbbbb"));
}

/// A controller standing by (another one leads, or may take the lease) that the push to the
/// configuration repository reaches checks the commit, records it as applied and reports it to
/// GitHub, but does not put it in force: it records facts by the configuration the leader acts
/// with, and follows the commit once the leader does.
#[tokio::test]
async fn a_standby_records_a_config_from_github_and_follows_it_only_after_the_leader() {
    let c = controller().await;
    let fake = GithubFake::start("gh-token").await.unwrap();
    let forge = GithubForge::new(&Secret::new("gh-token"), fake.url()).unwrap();
    let good = STAGES.replace("stack = \"web-beta\"", "stack = \"web-beta-v2\"");
    put_config(&fake, &commit(1), &good, &[]);
    let standby = c.standby().await;
    assert!(!standby.leadership().may_act());

    intake::apply_config_change(&standby, &forge, &commit(1))
        .await
        .unwrap();
    assert_eq!(
        web_stack(&standby.config()),
        "web-beta",
        "not in force here"
    );
    let recorded = standby.reads().applied_config_version().await.unwrap();
    assert_eq!(recorded.map(|v| v.sha.to_string()), Some(commit(1)));
    let notes = c.events("web", "config").await;
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert!(
        notes[0].starts_with(
            "configuration from acme/deploy-config@111111111111 recorded as applied; \
             this controller stands by and puts it in force once the leader acts with it"
        ),
        "{}",
        notes[0]
    );
    let statuses = fake.commit_statuses(&commit(1));
    assert_eq!(statuses.len(), 1, "{statuses:?}");
    assert_eq!(statuses[0].state, "success");
}

/// A controller standing by that waits for the leader to act with a commit adding a pipeline
/// records that pipeline's releases meanwhile, with the commit's stages: a build reaching it is
/// not answered "no pipeline" and lost, and the release waits in the state for the leader to
/// plan once it acts with the commit.
#[tokio::test]
async fn a_standby_waiting_for_a_commit_records_releases_of_the_pipeline_it_adds() {
    let c = controller().await;
    let fake = GithubFake::start("gh-token").await.unwrap();
    let forge = GithubForge::new(&Secret::new("gh-token"), fake.url()).unwrap();
    let api = api_pipeline();
    // A commit of its own: what a controller loads for a commit it waits for is kept per
    // commit, for the whole process.
    put_config(&fake, &commit(0xd), &format!("{STAGES}\n{api}"), &[]);
    let standby = c.standby().await;
    let secrets = WebhookSecrets::from_env_value(SECRET).unwrap();
    let app = router(AppState::new(standby.clone(), secrets));
    let build = build_run("acme/api", "build.yml", "main");

    // Before the commit is recorded, no pipeline builds with it.
    let before = send_to(&app, Delivery::of("workflow_run", "d-0", &build)).await;
    assert_eq!(before.status, StatusCode::ACCEPTED, "{:?}", before.json);
    assert!(c.releases("api").await.is_empty());

    intake::apply_config_change(&standby, &forge, &commit(0xd))
        .await
        .unwrap();
    assert!(
        standby.config().pipeline("api").is_none(),
        "not in force here"
    );
    let answer = send_to(&app, Delivery::of("workflow_run", "d-1", &build)).await;
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.json);
    let releases = c.releases("api").await;
    assert_eq!(releases.len(), 1, "{releases:?}");
    let runs = c.engine.reads().recent_runs("api", 10).await.unwrap();
    let stages: Vec<String> = runs[0].1.iter().map(|r| r.stage.to_string()).collect();
    assert_eq!(stages, ["beta"], "the commit's stages");
    // The same build again is a duplicate, as for any pipeline.
    let again = send_to(&app, Delivery::of("workflow_run", "d-1", &build)).await;
    assert_eq!(c.releases("api").await.len(), 1, "{:?}", again.json);
    // The pipelines it runs still decide by the configuration in force.
    let web_build = build_run("acme/web", "build.yml", "main");
    let web = send_to(&app, Delivery::of("workflow_run", "d-2", &web_build)).await;
    assert_eq!(web.status, StatusCode::OK, "{:?}", web.json);
    assert_eq!(c.releases("web").await.len(), 1);
}

/// A controller standing by that keeps running the commit before the one recorded (it waits
/// for the leader to act with the newer) says so on `GET /api/v1/config`: the repository and
/// the commit it runs, not the file it was started with nor the commit it does not run yet.
#[tokio::test]
async fn the_config_read_names_the_commit_a_standby_runs_not_the_one_recorded() {
    let c = controller().await;
    let fake = GithubFake::start("gh-token").await.unwrap();
    let forge = GithubForge::new(&Secret::new("gh-token"), fake.url()).unwrap();
    put_config(&fake, &commit(1), STAGES, &[]);
    intake::apply_config_change(&c.engine, &forge, &commit(1))
        .await
        .unwrap();
    let v2 = STAGES.replace("stack = \"web-beta\"", "stack = \"web-beta-v2\"");
    put_config(&fake, &commit(2), &v2, &[&commit(1)]);
    let standby = c.standby().await;
    intake::apply_config_change(&standby, &forge, &commit(2))
        .await
        .unwrap();
    assert_eq!(
        web_stack(&standby.config()),
        "web-beta",
        "not in force here"
    );

    let view = serde_json::to_value(engine_config_view(&standby).await).unwrap();
    assert_eq!(view["source"], "repository", "{view}");
    assert_eq!(view["repository"], "acme/deploy-config", "{view}");
    assert_eq!(view["commit"], commit(1), "{view}");
    assert_eq!(view["validation"]["valid"], true, "{view}");
    let leader = serde_json::to_value(config_view(&c).await).unwrap();
    assert_eq!(
        leader["commit"],
        commit(1),
        "the sole controller runs commit 1 too"
    );
}

/// Puts a configuration commit `sha` (child of `parents`) into the fake: `stages` with the
/// accounts file and the template it names.
fn put_config(fake: &GithubFake, sha: &str, stages: &str, parents: &[&str]) {
    let repo = "acme/deploy-config";
    fake.add_commit(repo, sha, parents);
    fake.put_file(repo, sha, "stages.toml", stages);
    fake.put_file(repo, sha, "accounts/accounts.toml", ACCOUNTS);
    let template = format!("Resources: {{}}\n# template at {sha}\n");
    fake.put_file(repo, sha, "service.yaml", &template);
}

/// The `web` pipeline's section of [`STAGES`].
fn web_pipeline() -> &'static str {
    &STAGES[STAGES.find("[[pipelines]]\nname = \"web\"").unwrap()..]
}

/// A pipeline `api` like `web`, building `acme/api` into its own stack.
fn api_pipeline() -> String {
    web_pipeline()
        .replace("name = \"web\"", "name = \"api\"")
        .replace("acme/web", "acme/api")
        .replace("repository = \"web\"", "repository = \"api\"")
        .replace("web-beta", "api-beta")
}

fn web_stack(config: &Config) -> String {
    match &config.pipeline("web").unwrap().stages[0].deploy {
        tollgate::config::Deploy::CloudFormation { stack, .. } => stack.clone(),
        other => panic!("{other:?}"),
    }
}

fn commit(n: u8) -> String {
    format!("{n:x}").repeat(40)
}

#[tokio::test]
async fn a_config_commit_that_does_not_descend_from_the_applied_one_is_refused() {
    let c = controller().await;
    let fake = GithubFake::start("gh-token").await.unwrap();
    let forge = GithubForge::new(&Secret::new("gh-token"), fake.url()).unwrap();
    let version = |v: &str| STAGES.replace("stack = \"web-beta\"", &format!("stack = \"web-{v}\""));
    // 1 ← 2 ← 3, and 4 branching off 1.
    put_config(&fake, &commit(1), &version("one"), &[]);
    put_config(&fake, &commit(2), &version("two"), &[&commit(1)]);
    put_config(&fake, &commit(3), &version("three"), &[&commit(2)]);
    put_config(&fake, &commit(4), &version("four"), &[&commit(1)]);

    intake::apply_config_change(&c.engine, &forge, &commit(2))
        .await
        .unwrap();
    assert_eq!(web_stack(&c.engine.config()), "web-two");

    // An older push arriving late (or replayed) is refused; so is a diverged one.
    let older = intake::apply_config_change(&c.engine, &forge, &commit(1)).await;
    assert!(
        older
            .as_ref()
            .unwrap_err()
            .contains("older than the applied"),
        "{older:?}"
    );
    let diverged = intake::apply_config_change(&c.engine, &forge, &commit(4)).await;
    assert!(
        diverged.as_ref().unwrap_err().contains("diverged"),
        "{diverged:?}"
    );
    assert_eq!(
        web_stack(&c.engine.config()),
        "web-two",
        "nothing went backwards"
    );
    let applied = c.engine.reads().applied_config().await.unwrap().unwrap();
    assert_eq!(applied.sha, commit(2).as_str());
    assert!(
        fake.commit_statuses(&commit(1)).is_empty(),
        "a refused old commit is not fetched or reported"
    );

    // The applied commit again changes nothing; a descendant applies.
    intake::apply_config_change(&c.engine, &forge, &commit(2))
        .await
        .unwrap();
    intake::apply_config_change(&c.engine, &forge, &commit(3))
        .await
        .unwrap();
    assert_eq!(web_stack(&c.engine.config()), "web-three");
    let notes = c.events("web", "config").await;
    assert_eq!(notes.len(), 4, "{notes:?}");
    assert!(
        notes.iter().filter(|n| n.contains("refused")).count() == 2,
        "{notes:?}"
    );
}

#[tokio::test]
async fn a_config_commit_is_applied_with_the_files_of_that_commit() {
    let c = controller().await;
    let fake = GithubFake::start("gh-token").await.unwrap();
    let forge = GithubForge::new(&Secret::new("gh-token"), fake.url()).unwrap();
    put_config(&fake, &commit(5), STAGES, &[]);
    intake::apply_config_change(&c.engine, &forge, &commit(5))
        .await
        .unwrap();
    let config = c.engine.config();
    let template = match &config.pipeline("web").unwrap().stages[0].deploy {
        tollgate::config::Deploy::CloudFormation { template, .. } => template.clone(),
        other => panic!("{other:?}"),
    };
    let text = std::fs::read_to_string(&template).unwrap();
    assert!(
        text.contains(&format!("template at {}", commit(5))),
        "the template is the commit's, not the one on disk: {}: {text}",
        template.display()
    );
    let on_disk = std::fs::read_to_string(c.dir.path().join("service.yaml")).unwrap();
    assert_ne!(text, on_disk);

    // A file the commit lacks refuses the whole change.
    fake.add_commit("acme/deploy-config", &commit(6), &[&commit(5)]);
    let renamed = STAGES.replace("template = \"service.yaml\"", "template = \"missing.yaml\"");
    fake.put_file("acme/deploy-config", &commit(6), "stages.toml", &renamed);
    fake.put_file(
        "acme/deploy-config",
        &commit(6),
        "accounts/accounts.toml",
        ACCOUNTS,
    );
    let err = intake::apply_config_change(&c.engine, &forge, &commit(6))
        .await
        .unwrap_err();
    assert!(err.contains("missing.yaml"), "{err}");
    let applied = c.engine.reads().applied_config().await.unwrap().unwrap();
    assert_eq!(applied.sha, commit(5).as_str());

    // A restart keeps the applied configuration, not the file on disk.
    let disk = load_config(c.dir.path(), STAGES).unwrap();
    let wanted = STAGES.replace("stack = \"web-beta\"", "stack = \"web-beta-v5\"");
    fake.add_commit("acme/deploy-config", &commit(7), &[&commit(5)]);
    put_config(&fake, &commit(7), &wanted, &[&commit(5)]);
    intake::apply_config_change(&c.engine, &forge, &commit(7))
        .await
        .unwrap();
    let (in_force, note) = intake::config_in_force(c.engine.reads(), disk.clone()).await;
    assert_eq!(web_stack(&in_force), "web-beta-v5");
    let note = note.unwrap();
    assert!(
        note.contains(&format!("acme/deploy-config@{}", commit(7))),
        "{note}"
    );
    // With self-update turned off in the file on disk, the file wins, and says so.
    let off = load_config(
        c.dir.path(),
        &STAGES.replace("config_repository = \"acme/deploy-config\"\n", ""),
    )
    .unwrap();
    let (in_force, note) = intake::config_in_force(c.engine.reads(), off).await;
    assert_eq!(web_stack(&in_force), "web-beta");
    assert!(note.unwrap().contains("not used"));

    // /readyz names the applied commit.
    let response = c
        .app
        .clone()
        .oneshot(Request::get("/readyz").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = axum::body::to_bytes(response.into_body(), 1 << 16)
        .await
        .unwrap();
    let body = String::from_utf8_lossy(&body);
    assert!(
        body.contains(&format!("configuration acme/deploy-config@{}", commit(7))),
        "{body}"
    );
}

#[tokio::test]
async fn a_redelivered_config_push_announces_nothing() {
    let mut c = controller().await;
    let push = config_push(&["stages.toml"]);
    let first = c.send(Delivery::of("push", "d-config-again", &push)).await;
    assert_eq!(first.status, StatusCode::OK, "{:?}", first.json);
    assert!(c.config_changes.try_recv().is_ok());
    let again = c.send(Delivery::of("push", "d-config-again", &push)).await;
    assert_eq!(
        again.json["result"].as_str(),
        Some("duplicate"),
        "{:?}",
        again.json
    );
    assert!(c.config_changes.try_recv().is_err(), "announced once");
}

// ---------------------------------------------------------------------------------------------
// Newest by history, not by arrival
// ---------------------------------------------------------------------------------------------

const NO_COMMIT: &str = "0000000000000000000000000000000000000000";

/// A push to `repo`'s main moving it from `before` to `after`.
fn push_from(repo: &str, before: &str, after: &str) -> Value {
    let mut p = branch_push(repo, "main");
    p["before"] = before.into();
    p["after"] = after.into();
    p["forced"] = false.into();
    p["created"] = (before == NO_COMMIT).into();
    p["head_commit"]["id"] = after.into();
    p
}

/// A successful build of `sha` on acme/web's main.
fn build_of(sha: &str) -> Value {
    let mut run = build_run("acme/web", "build.yml", "main");
    run["workflow_run"]["head_sha"] = sha.into();
    run["workflow_run"]["head_commit"]["id"] = sha.into();
    run
}

async fn stale_notes(c: &Controller, pipeline: &str) -> Vec<String> {
    let notes = c.events(pipeline, "not-promoted").await;
    notes.into_iter().filter(|n| n.contains("stale")).collect()
}

#[tokio::test]
async fn builds_finishing_out_of_order_release_only_the_newer_commit_by_the_pushes() {
    let c = controller().await;
    let (a, b) = (commit(0xa), commit(0xb));
    for (n, (before, after)) in [(NO_COMMIT, a.as_str()), (a.as_str(), b.as_str())]
        .into_iter()
        .enumerate()
    {
        let push = push_from("acme/web", before, after);
        let answer = c
            .send(Delivery::of("push", &format!("d-push-{n}"), &push))
            .await;
        assert!(answer.status.is_success(), "{:?}", answer.json);
    }
    // The build of the newer commit finishes first, the older one last.
    let newer = c
        .send(Delivery::of("workflow_run", "d-build-b", &build_of(&b)))
        .await;
    assert_eq!(newer.json["result"], "recorded", "{:?}", newer.json);
    let older = c
        .send(Delivery::of("workflow_run", "d-build-a", &build_of(&a)))
        .await;
    assert_eq!(older.status, StatusCode::ACCEPTED, "{:?}", older.json);
    assert!(detail(&older).contains("stale"), "{}", detail(&older));

    let shas: Vec<String> = c
        .releases("web")
        .await
        .iter()
        .map(|r| r.sha.to_string())
        .collect();
    assert_eq!(
        shas,
        std::slice::from_ref(&b),
        "only the newer commit is a release"
    );
    let notes = stale_notes(&c, "web").await;
    assert_eq!(notes.len(), 1, "{notes:?}");
    // A re-run of the old build later is stale again, and recorded nothing.
    let rerun = c
        .send(Delivery::of(
            "workflow_run",
            "d-build-a-rerun",
            &build_of(&a),
        ))
        .await;
    assert!(detail(&rerun).contains("stale"), "{}", detail(&rerun));
    assert_eq!(c.releases("web").await.len(), 1);
}

#[tokio::test]
async fn a_late_push_of_an_older_commit_is_stale() {
    let c = controller().await;
    let (a, b) = (commit(0xa), commit(0xb));
    // The push of B (whose parent is A) arrives before the push of A.
    let pb = c
        .send(Delivery::of(
            "push",
            "d-b",
            &push_from("acme/backend", &a, &b),
        ))
        .await;
    assert_eq!(pb.json["result"], "recorded", "{:?}", pb.json);
    let pa = c
        .send(Delivery::of(
            "push",
            "d-a",
            &push_from("acme/backend", NO_COMMIT, &a),
        ))
        .await;
    assert!(detail(&pa).contains("stale"), "{}", detail(&pa));
    let shas: Vec<String> = c
        .releases("backend")
        .await
        .iter()
        .map(|r| r.sha.to_string())
        .collect();
    assert_eq!(shas, [b]);
}

#[tokio::test]
async fn without_pushes_the_compare_api_orders_the_builds() {
    let fake = GithubFake::start("gh-token").await.unwrap();
    let forge = GithubForge::new(&Secret::new("gh-token"), fake.url()).unwrap();
    let c = controller_with(Some(Arc::new(forge))).await;
    let (a, b, x) = (commit(0xa), commit(0xb), commit(0xc));
    fake.add_commit("acme/web", &a, &[]);
    fake.add_commit("acme/web", &b, &[&a]);
    fake.add_commit("acme/web", &x, &[]);

    let newer = c
        .send(Delivery::of("workflow_run", "d-b", &build_of(&b)))
        .await;
    assert_eq!(newer.json["result"], "recorded", "{:?}", newer.json);
    let older = c
        .send(Delivery::of("workflow_run", "d-a", &build_of(&a)))
        .await;
    assert!(detail(&older).contains("stale"), "{}", detail(&older));
    assert!(
        fake.requests().iter().any(|r| r.contains("/compare/")),
        "GitHub was asked: {:?}",
        fake.requests()
    );
    // A commit on a diverged history cannot be ordered: it is taken by arrival, as before.
    let diverged = c
        .send(Delivery::of("workflow_run", "d-x", &build_of(&x)))
        .await;
    assert_eq!(diverged.json["result"], "recorded", "{:?}", diverged.json);
    assert_eq!(c.releases("web").await.len(), 2);
}

#[tokio::test]
async fn a_release_built_by_a_workflow_knows_who_pushed_its_commit() {
    use tollgate::domain::ContributorRole as R;
    let c = controller().await;
    let run = build_run("acme/web", "build.yml", "main");
    let sha = run["workflow_run"]["head_sha"].as_str().unwrap().to_owned();
    // The push of that commit comes first (it starts the build); its pusher is dana.
    let mut push = branch_push("acme/web", "main");
    push["after"] = sha.clone().into();
    push["pusher"] = serde_json::json!({ "name": "dana", "email": "dana@example.com" });
    let a = c.send(Delivery::of("push", "d-push-web", &push)).await;
    assert!(a.status.is_success(), "{:?}", a.json);
    assert!(
        c.releases("web").await.is_empty(),
        "the build makes the release"
    );

    let a = c
        .send(Delivery::of("workflow_run", "d-run-web", &run))
        .await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.json);
    let releases = c.releases("web").await;
    let people = &releases[0].contributors;
    let has = |role: R, login: &str| {
        people
            .iter()
            .any(|p| p.role == role && p.login.as_deref() == Some(login))
    };
    assert!(has(R::Pusher, "dana"), "{people:?}");
    let actor = run["workflow_run"]["actor"]["login"].as_str().unwrap();
    assert!(has(R::WorkflowActor, actor), "{people:?}");
}

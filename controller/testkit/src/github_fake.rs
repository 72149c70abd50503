//! A stateful fake of the GitHub REST API, served over HTTP on loopback (tests and demo).
//!
//! Owns: an in-memory model of the parts of GitHub tollgate talks to — Deployments and their
//! statuses, commit statuses, check runs, workflow dispatches and runs, file contents — and an
//! axum server on `127.0.0.1:0` that speaks GitHub's JSON for them. Tests drive the real
//! [`tollgate::github::forge::GithubForge`] against it and read the model back through the
//! accessors (`deployments()`, `statuses_of()`, `commit_statuses()`, …).
//!
//! Guarantees:
//! - Request bodies are validated as GitHub does: a missing `ref`, an unknown `state`, a
//!   description over 140 characters, an undeclared workflow input → 422 with GitHub's error
//!   shape; unparseable JSON → 400; a wrong or missing token → 401.
//! - Creating a Deployment without `required_contexts` while a commit status of its sha is not
//!   `success` is refused with 409, as GitHub does (it checks every context by default).
//! - A `success` deployment status marks the older deployments of the same environment
//!   inactive (GitHub's `auto_inactive`).
//! - Served under `/` and under `/api/v3` (GitHub Enterprise's prefix).
//! - Every answer to an authenticated request carries GitHub's rate-limit headers, counting
//!   down from [`RATE_LIMIT`] (the limit itself is never enforced).
//!
//! Scripting: check runs are set by the test ([`GithubFake::set_check_run`]); a workflow
//! dispatch creates a run whose visibility, duration (in polls) and conclusion follow the
//! workflow's [`RunScript`]; [`GithubFake::fail_next`] answers the next requests with an error.
//!
//! Must never: be used by the controller at run time, or listen on anything but loopback.

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// GitHub's limit on deployment and commit status descriptions.
pub const DESCRIPTION_LIMIT: usize = 140;

const DEPLOYMENT_STATES: &[&str] = &[
    "error",
    "failure",
    "inactive",
    "in_progress",
    "queued",
    "pending",
    "success",
];
const COMMIT_STATES: &[&str] = &["error", "failure", "pending", "success"];
const DOCS: &str = "https://docs.github.com/rest";

// ---------------------------------------------------------------------------------------------
// The model
// ---------------------------------------------------------------------------------------------

/// A Deployment as created through the API.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Deployment {
    pub id: u64,
    pub repository: String,
    pub sha: String,
    #[serde(rename = "ref")]
    pub git_ref: String,
    pub task: String,
    pub environment: String,
    pub description: Option<String>,
    pub payload: Value,
    pub auto_merge: bool,
    /// `None` when the request left it out (GitHub then requires every context).
    pub required_contexts: Option<Vec<String>>,
    pub transient_environment: bool,
    pub production_environment: bool,
    pub created_at: DateTime<Utc>,
}

/// A status of a Deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeploymentStatus {
    pub id: u64,
    pub deployment_id: u64,
    pub state: String,
    pub description: String,
    pub log_url: Option<String>,
    pub environment_url: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// A commit status (`POST /repos/{owner}/{repo}/statuses/{sha}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CommitStatus {
    pub id: u64,
    pub repository: String,
    pub sha: String,
    pub state: String,
    pub context: String,
    pub description: Option<String>,
    pub target_url: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// A pull request, as scripted by the test: opened by `author` with `commits`, and once
/// merged, by whom and into which merge commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PullRequest {
    pub number: u64,
    pub repository: String,
    pub author: String,
    pub commits: Vec<String>,
    pub merged_by: Option<String>,
    pub merged_at: Option<DateTime<Utc>>,
    pub merge_commit_sha: Option<String>,
}

/// A check run on a commit, as scripted by the test.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckRun {
    pub id: u64,
    pub repository: String,
    pub head_sha: String,
    pub name: String,
    /// `queued`, `in_progress` or `completed`.
    pub status: String,
    pub conclusion: Option<String>,
}

/// How runs created by dispatching a workflow behave.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RunScript {
    /// How many run listings of the workflow miss the run before it shows (GitHub creates
    /// runs asynchronously after a dispatch).
    pub hidden_for: u32,
    /// How many reads of the run see it `in_progress` before it completes.
    pub polls: u32,
    /// The conclusion it completes with; `None`: it runs until [`GithubFake::complete_run`].
    pub conclusion: Option<String>,
}

impl RunScript {
    /// A run that shows at once and concludes `conclusion` after `polls` reads.
    pub fn concludes(conclusion: &str, polls: u32) -> Self {
        Self {
            hidden_for: 0,
            polls,
            conclusion: Some(conclusion.to_owned()),
        }
    }
}

/// A workflow file that can be dispatched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workflow {
    pub repository: String,
    pub file: String,
    /// The `workflow_dispatch` inputs it declares.
    pub inputs: Vec<String>,
    pub script: RunScript,
}

/// A `workflow_dispatch` request as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dispatch {
    pub repository: String,
    pub workflow: String,
    pub git_ref: String,
    pub inputs: BTreeMap<String, String>,
    pub at: DateTime<Utc>,
}

/// A workflow run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkflowRun {
    pub id: u64,
    pub repository: String,
    pub workflow: String,
    pub event: String,
    pub head_branch: String,
    pub status: String,
    pub conclusion: Option<String>,
    pub created_at: DateTime<Utc>,
    pub inputs: BTreeMap<String, String>,
    hidden_for: u32,
    polls_left: u32,
    scripted: Option<String>,
}

#[derive(Debug, Default)]
struct Model {
    token: String,
    next_id: u64,
    deployments: Vec<Deployment>,
    deployment_statuses: Vec<DeploymentStatus>,
    commit_statuses: Vec<CommitStatus>,
    check_runs: Vec<CheckRun>,
    workflows: Vec<Workflow>,
    dispatches: Vec<Dispatch>,
    runs: Vec<WorkflowRun>,
    files: BTreeMap<(String, String, String), String>,
    /// (repository, commit) → its parents: the history the compare API answers from.
    commits: BTreeMap<(String, String), Vec<String>>,
    pulls: Vec<PullRequest>,
    failures: VecDeque<u16>,
    requests: Vec<String>,
    /// Authenticated requests answered (the rate limit's `x-ratelimit-used`).
    rate_used: u32,
    app: Option<FakeApp>,
}

/// A GitHub App the fake knows: installation tokens (the fake's `token`) are issued for a JWT
/// signed with the App's key.
#[derive(Debug, Clone)]
struct FakeApp {
    app_id: u64,
    installation: u64,
    public_key_pem: String,
    issued: u32,
}

impl Model {
    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }
}

type Shared = Arc<Mutex<Model>>;

fn lock(state: &Shared) -> MutexGuard<'_, Model> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------------------------
// The handle
// ---------------------------------------------------------------------------------------------

/// A running fake; the server stops when this is dropped.
pub struct GithubFake {
    url: String,
    state: Shared,
    task: JoinHandle<()>,
}

impl Drop for GithubFake {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl GithubFake {
    /// The `x-ratelimit-remaining` of the latest answer to an authenticated request.
    pub fn rate_remaining(&self) -> u32 {
        RATE_LIMIT.saturating_sub(lock(&self.state).rate_used)
    }

    /// Starts the fake on `127.0.0.1:0`, accepting `token` as the only credential.
    pub async fn start(token: &str) -> std::io::Result<GithubFake> {
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let addr = listener.local_addr()?;
        let state: Shared = Arc::new(Mutex::new(Model {
            token: token.to_owned(),
            next_id: 1000,
            ..Model::default()
        }));
        let app = app(state.clone());
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "GitHub fake stopped");
            }
        });
        Ok(GithubFake {
            url: format!("http://{addr}"),
            state,
            task,
        })
    }

    /// Accepts GitHub App `app_id`: `POST /app/installations/{installation}/access_tokens`
    /// with a JWT (RS256, `iss` = the App id) that `public_key_pem` verifies answers the
    /// fake's token as the installation token, valid for an hour.
    pub fn enable_app(&self, app_id: u64, installation: u64, public_key_pem: &str) {
        self.model().app = Some(FakeApp {
            app_id,
            installation,
            public_key_pem: public_key_pem.to_owned(),
            issued: 0,
        });
    }

    /// How many installation tokens were issued.
    pub fn installation_tokens_issued(&self) -> u32 {
        self.model().app.as_ref().map_or(0, |a| a.issued)
    }

    /// The API's base URL (`http://127.0.0.1:PORT`); `<url>/api/v3` works too.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn model(&self) -> MutexGuard<'_, Model> {
        lock(&self.state)
    }

    // ----- scripting ----------------------------------------------------------------------

    /// Creates or updates the check run `name` on `sha`; returns its id.
    pub fn set_check_run(
        &self,
        repo: &str,
        sha: &str,
        name: &str,
        status: &str,
        conclusion: Option<&str>,
    ) -> u64 {
        let mut m = self.model();
        let found = m
            .check_runs
            .iter_mut()
            .find(|c| c.repository == repo && c.head_sha == sha && c.name == name);
        if let Some(run) = found {
            run.status = status.to_owned();
            run.conclusion = conclusion.map(str::to_owned);
            return run.id;
        }
        let id = m.id();
        m.check_runs.push(CheckRun {
            id,
            repository: repo.to_owned(),
            head_sha: sha.to_owned(),
            name: name.to_owned(),
            status: status.to_owned(),
            conclusion: conclusion.map(str::to_owned),
        });
        id
    }

    /// Declares a dispatchable workflow with its inputs and how its runs behave.
    pub fn add_workflow(&self, repo: &str, file: &str, inputs: &[&str], script: RunScript) {
        let mut m = self.model();
        m.workflows
            .retain(|w| !(w.repository == repo && w.file == file));
        m.workflows.push(Workflow {
            repository: repo.to_owned(),
            file: file.to_owned(),
            inputs: inputs.iter().map(|s| s.to_string()).collect(),
            script,
        });
    }

    /// Completes a run now with `conclusion`.
    pub fn complete_run(&self, run_id: u64, conclusion: &str) {
        if let Some(run) = self.model().runs.iter_mut().find(|r| r.id == run_id) {
            run.status = "completed".into();
            run.conclusion = Some(conclusion.to_owned());
        }
    }

    /// Adds a run of `file` that tollgate did not dispatch (someone else's).
    pub fn add_run(&self, repo: &str, file: &str, event: &str, branch: &str) -> u64 {
        let mut m = self.model();
        let id = m.id();
        m.runs.push(WorkflowRun {
            id,
            repository: repo.to_owned(),
            workflow: file.to_owned(),
            event: event.to_owned(),
            head_branch: branch.to_owned(),
            status: "in_progress".into(),
            conclusion: None,
            created_at: Utc::now(),
            inputs: BTreeMap::new(),
            hidden_for: 0,
            polls_left: u32::MAX,
            scripted: None,
        });
        id
    }

    /// Makes `path` at `git_ref` (a sha or a branch) of `repo` hold `text`.
    pub fn put_file(&self, repo: &str, git_ref: &str, path: &str, text: &str) {
        let key = (repo.to_owned(), git_ref.to_owned(), path.to_owned());
        self.model().files.insert(key, text.to_owned());
    }

    /// Adds commit `sha` with its `parents` to `repo`'s history (for the compare API).
    pub fn add_commit(&self, repo: &str, sha: &str, parents: &[&str]) {
        let parents = parents.iter().map(|p| (*p).to_owned()).collect();
        let mut m = self.model();
        m.commits.insert((repo.to_owned(), sha.to_owned()), parents);
    }

    /// Opens pull request of `author` in `repo` with `commits`; returns its number.
    pub fn open_pull(&self, repo: &str, author: &str, commits: &[&str]) -> u64 {
        let mut m = self.model();
        let number = m.pulls.iter().filter(|p| p.repository == repo).count() as u64 + 1;
        m.pulls.push(PullRequest {
            number,
            repository: repo.to_owned(),
            author: author.to_owned(),
            commits: commits.iter().map(|c| c.to_string()).collect(),
            merged_by: None,
            merged_at: None,
            merge_commit_sha: None,
        });
        number
    }

    /// `merger` merges pull request `number` of `repo` into the merge commit `merge_sha`.
    pub fn merge_pull(&self, repo: &str, number: u64, merger: &str, merge_sha: &str) {
        let mut m = self.model();
        if let Some(pr) = m
            .pulls
            .iter_mut()
            .find(|p| p.repository == repo && p.number == number)
        {
            pr.merged_by = Some(merger.to_owned());
            pr.merged_at = Some(Utc::now());
            pr.merge_commit_sha = Some(merge_sha.to_owned());
        }
    }

    /// Answers the next `count` requests with HTTP `status` and a GitHub error body.
    pub fn fail_next(&self, status: u16, count: u32) {
        let mut m = self.model();
        m.failures
            .extend(std::iter::repeat_n(status, count as usize));
    }

    // ----- assertions ---------------------------------------------------------------------

    /// Every deployment, oldest first.
    pub fn deployments(&self) -> Vec<Deployment> {
        self.model().deployments.clone()
    }

    /// The statuses of one deployment, oldest first.
    pub fn statuses_of(&self, deployment_id: u64) -> Vec<DeploymentStatus> {
        let m = self.model();
        let of = m.deployment_statuses.iter();
        of.filter(|s| s.deployment_id == deployment_id)
            .cloned()
            .collect()
    }

    /// The commit statuses of `sha`, oldest first.
    pub fn commit_statuses(&self, sha: &str) -> Vec<CommitStatus> {
        let m = self.model();
        let all = m.commit_statuses.iter();
        all.filter(|s| s.sha == sha).cloned().collect()
    }

    /// Every workflow dispatch received, oldest first.
    pub fn dispatches(&self) -> Vec<Dispatch> {
        self.model().dispatches.clone()
    }

    /// Every workflow run, oldest first.
    pub fn runs(&self) -> Vec<WorkflowRun> {
        self.model().runs.clone()
    }

    /// Every request received, as `METHOD /path?query`.
    pub fn requests(&self) -> Vec<String> {
        self.model().requests.clone()
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------------

fn app(state: Shared) -> Router {
    let api = api();
    Router::new()
        .merge(api.clone())
        .nest("/api/v3", api)
        .layer(middleware::from_fn_with_state(state.clone(), gatekeeper))
        .with_state(state)
}

fn api() -> Router<Shared> {
    let repo = "/repos/{owner}/{repo}";
    Router::new()
        .route(
            &format!("{repo}/deployments"),
            post(create_deployment).get(list_deployments),
        )
        .route(
            &format!("{repo}/deployments/{{id}}/statuses"),
            post(create_deployment_status).get(list_deployment_statuses),
        )
        .route(
            &format!("{repo}/statuses/{{sha}}"),
            post(create_commit_status),
        )
        .route(
            &format!("{repo}/commits/{{sha}}/check-runs"),
            get(list_check_runs),
        )
        .route(
            &format!("{repo}/actions/workflows/{{workflow}}/dispatches"),
            post(dispatch_workflow),
        )
        .route(
            &format!("{repo}/actions/workflows/{{workflow}}/runs"),
            get(list_runs),
        )
        .route(&format!("{repo}/actions/runs/{{id}}"), get(get_run))
        .route(&format!("{repo}/contents/{{*path}}"), get(get_contents))
        .route(
            &format!("{repo}/compare/{{basehead}}"),
            get(compare_commits),
        )
        .route(&format!("{repo}/commits/{{sha}}/pulls"), get(commit_pulls))
        .route(&format!("{repo}/pulls/{{number}}"), get(get_pull))
}

/// Logs the request, checks the token, and plays scripted failures.
async fn gatekeeper(State(state): State<Shared>, req: Request, next: Next) -> Response {
    let line = format!("{} {}", req.method(), req.uri());
    lock(&state).requests.push(line);
    if let Some(installation) = access_token_request(&req) {
        return issue_installation_token(&state, req.headers(), installation).into_response();
    }
    let (token, failure) = {
        let mut m = lock(&state);
        (m.token.clone(), m.failures.pop_front())
    };
    if let Err(rejected) = authorize(req.headers(), &token) {
        return rejected.into_response();
    }
    let used = {
        let mut m = lock(&state);
        m.rate_used += 1;
        m.rate_used
    };
    let mut response = match failure {
        Some(status) => scripted_failure(status).into_response(),
        None => next.run(req).await,
    };
    rate_limit_headers(response.headers_mut(), used);
    response
}

/// GitHub's primary rate limit for a token: 5,000 requests an hour.
pub const RATE_LIMIT: u32 = 5000;

/// The headers GitHub puts on every answer to an authenticated request ("Rate limits for the
/// REST API", docs.github.com/en/rest/using-the-rest-api/rate-limits-for-the-rest-api:
/// `x-ratelimit-limit`, `-remaining`, `-used`, `-reset` in epoch seconds, `-resource`).
fn rate_limit_headers(headers: &mut HeaderMap, used: u32) {
    let reset = (Utc::now() + chrono::Duration::hours(1)).timestamp();
    let remaining = RATE_LIMIT.saturating_sub(used);
    let values = [
        ("x-ratelimit-limit", RATE_LIMIT.to_string()),
        ("x-ratelimit-remaining", remaining.to_string()),
        ("x-ratelimit-used", used.to_string()),
        ("x-ratelimit-reset", reset.to_string()),
        ("x-ratelimit-resource", "core".to_string()),
    ];
    for (name, value) in values {
        if let Ok(v) = value.parse() {
            headers.insert(name, v);
        }
    }
}

/// `POST [/api/v3]/app/installations/{id}/access_tokens`: the installation id.
fn access_token_request(req: &Request) -> Option<u64> {
    if req.method() != axum::http::Method::POST {
        return None;
    }
    let path = req.uri().path();
    let path = path.strip_prefix("/api/v3").unwrap_or(path);
    path.strip_prefix("/app/installations/")?
        .strip_suffix("/access_tokens")?
        .parse()
        .ok()
}

fn issue_installation_token(
    state: &Shared,
    headers: &HeaderMap,
    installation: u64,
) -> Result<(StatusCode, Json<Value>), Reject> {
    let mut m = lock(state);
    let token = m.token.clone();
    let Some(app) = m.app.as_mut() else {
        return Err(Reject::new(StatusCode::NOT_FOUND, "Not Found"));
    };
    let bad = || {
        Reject::new(
            StatusCode::UNAUTHORIZED,
            "A JSON web token could not be decoded",
        )
    };
    let jwt = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(bad)?;
    let key = jsonwebtoken::DecodingKey::from_rsa_pem(app.public_key_pem.as_bytes())
        .map_err(|_| bad())?;
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    // `iss` is the App id as a number, which the library does not count as the spec claim.
    validation.set_required_spec_claims(&["exp"]);
    let claims = jsonwebtoken::decode::<Value>(jwt, &key, &validation).map_err(|_| bad())?;
    let iss = &claims.claims["iss"];
    let iss_matches =
        iss.as_u64() == Some(app.app_id) || iss.as_str() == Some(&app.app_id.to_string());
    if !iss_matches {
        return Err(bad());
    }
    if installation != app.installation {
        return Err(Reject::new(StatusCode::NOT_FOUND, "Not Found"));
    }
    app.issued += 1;
    let expires = Utc::now() + chrono::Duration::hours(1);
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "token": token,
            "expires_at": expires.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "permissions": { "deployments": "write", "statuses": "write", "checks": "read", "actions": "write", "contents": "read" },
            "repository_selection": "all"
        })),
    ))
}

fn authorize(headers: &HeaderMap, token: &str) -> Result<(), Reject> {
    let value = headers.get("authorization").and_then(|v| v.to_str().ok());
    let Some(value) = value else {
        return Err(Reject::new(
            StatusCode::UNAUTHORIZED,
            "Requires authentication",
        ));
    };
    let given = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("token "));
    match given {
        Some(t) if t == token => Ok(()),
        _ => Err(Reject::new(StatusCode::UNAUTHORIZED, "Bad credentials")),
    }
}

fn scripted_failure(status: u16) -> Reject {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let message = match status {
        401 => "Bad credentials",
        403 => "Resource not accessible by integration",
        404 => "Not Found",
        422 => "Validation Failed",
        429 => "API rate limit exceeded",
        _ => "Server Error",
    };
    Reject::new(code, message)
}

/// An error answer in GitHub's shape.
#[derive(Debug)]
struct Reject {
    status: StatusCode,
    message: String,
}

impl Reject {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, message)
    }

    fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "Not Found")
    }
}

impl IntoResponse for Reject {
    fn into_response(self) -> Response {
        let body = json!({ "message": self.message, "documentation_url": DOCS });
        (self.status, axum::Json(body)).into_response()
    }
}

type Answer = Result<Response, Reject>;

fn created(body: Value) -> Answer {
    Ok((StatusCode::CREATED, axum::Json(body)).into_response())
}

fn ok(body: Value) -> Answer {
    Ok(axum::Json(body).into_response())
}

fn full_name(owner: &str, repo: &str) -> String {
    format!("{owner}/{repo}")
}

fn timestamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

// ----- request body validation -----------------------------------------------------------------

/// A JSON object body, with GitHub's checks on its fields.
struct Body(Map<String, Value>);

impl Body {
    fn parse(bytes: &[u8]) -> Result<Body, Reject> {
        let value: Value = serde_json::from_slice(bytes)
            .map_err(|_| Reject::new(StatusCode::BAD_REQUEST, "Problems parsing JSON"))?;
        match value {
            Value::Object(map) => Ok(Body(map)),
            _ => Err(Reject::new(
                StatusCode::BAD_REQUEST,
                "Problems parsing JSON",
            )),
        }
    }

    fn opt_str(&self, key: &str) -> Result<Option<String>, Reject> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(Reject::invalid(format!("`{key}` is not a string"))),
        }
    }

    fn req_str(&self, key: &str) -> Result<String, Reject> {
        match self.opt_str(key)? {
            Some(s) if !s.is_empty() => Ok(s),
            _ => Err(Reject::invalid(format!("\"{key}\" wasn't supplied."))),
        }
    }

    fn opt_bool(&self, key: &str, default: bool) -> Result<bool, Reject> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(_) => Err(Reject::invalid(format!("`{key}` is not a boolean"))),
        }
    }

    fn state(&self, allowed: &[&str]) -> Result<String, Reject> {
        let state = self.req_str("state")?;
        if allowed.contains(&state.as_str()) {
            return Ok(state);
        }
        let list = allowed.join(", ");
        Err(Reject::invalid(format!(
            "state is not included in the list: `{state}` (one of {list})"
        )))
    }

    fn description(&self) -> Result<Option<String>, Reject> {
        let d = self.opt_str("description")?;
        match d {
            Some(s) if s.chars().count() > DESCRIPTION_LIMIT => Err(Reject::invalid(format!(
                "description is too long (maximum is {DESCRIPTION_LIMIT} characters)"
            ))),
            other => Ok(other),
        }
    }

    fn contexts(&self) -> Result<Option<Vec<String>>, Reject> {
        let Some(value) = self.0.get("required_contexts") else {
            return Ok(None);
        };
        let list = value
            .as_array()
            .ok_or_else(|| Reject::invalid("`required_contexts` is not an array"))?;
        let names = list.iter().map(|v| v.as_str().map(str::to_owned));
        let names: Option<Vec<String>> = names.collect();
        names
            .map(Some)
            .ok_or_else(|| Reject::invalid("`required_contexts` must list strings"))
    }

    fn payload(&self) -> Result<Value, Reject> {
        match self.0.get("payload") {
            None | Some(Value::Null) => Ok(json!({})),
            Some(Value::Object(o)) => Ok(Value::Object(o.clone())),
            Some(Value::String(s)) => serde_json::from_str(s)
                .map_err(|_| Reject::invalid("`payload` is not a JSON object")),
            Some(_) => Err(Reject::invalid("`payload` is not an object")),
        }
    }
}

// ----- deployments -----------------------------------------------------------------------------

async fn create_deployment(
    State(state): State<Shared>,
    Path((owner, repo)): Path<(String, String)>,
    body: Bytes,
) -> Answer {
    let body = Body::parse(&body)?;
    let repository = full_name(&owner, &repo);
    let git_ref = body.req_str("ref")?;
    let required_contexts = body.contexts()?;
    let mut m = lock(&state);
    if required_contexts.is_none() {
        check_contexts(&m, &repository, &git_ref)?;
    }
    let id = m.id();
    let environment = body.opt_str("environment")?.unwrap_or("production".into());
    let deployment = Deployment {
        id,
        sha: git_ref.clone(),
        task: body.opt_str("task")?.unwrap_or("deploy".into()),
        production_environment: body
            .opt_bool("production_environment", environment == "production")?,
        environment,
        description: body.description()?,
        payload: body.payload()?,
        auto_merge: body.opt_bool("auto_merge", true)?,
        required_contexts,
        transient_environment: body.opt_bool("transient_environment", false)?,
        created_at: Utc::now(),
        repository,
        git_ref,
    };
    m.deployments.push(deployment.clone());
    created(deployment_json(&deployment))
}

/// GitHub refuses a deployment whose commit has a non-successful status in any context,
/// unless `required_contexts` says which ones count.
fn check_contexts(m: &Model, repo: &str, sha: &str) -> Result<(), Reject> {
    let mut latest: BTreeMap<&str, &str> = BTreeMap::new();
    for s in m
        .commit_statuses
        .iter()
        .filter(|s| s.repository == repo && s.sha == sha)
    {
        latest.insert(&s.context, &s.state);
    }
    match latest.iter().find(|(_, state)| **state != "success") {
        Some((context, state)) => Err(Reject::new(
            StatusCode::CONFLICT,
            format!("Conflict: Commit status checks failed for {sha}: {context} is {state}."),
        )),
        None => Ok(()),
    }
}

fn deployment_json(d: &Deployment) -> Value {
    json!({
        "id": d.id,
        "node_id": format!("DE_{}", d.id),
        "sha": d.sha,
        "ref": d.git_ref,
        "task": d.task,
        "payload": d.payload,
        "original_environment": d.environment,
        "environment": d.environment,
        "description": d.description,
        "creator": { "login": "tollgate[bot]", "id": 1, "type": "Bot" },
        "created_at": timestamp(d.created_at),
        "updated_at": timestamp(d.created_at),
        "statuses_url": format!("https://api.github.com/repos/{}/deployments/{}/statuses", d.repository, d.id),
        "repository_url": format!("https://api.github.com/repos/{}", d.repository),
        "transient_environment": d.transient_environment,
        "production_environment": d.production_environment,
    })
}

async fn list_deployments(
    State(state): State<Shared>,
    Path((owner, repo)): Path<(String, String)>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Answer {
    let repository = full_name(&owner, &repo);
    let m = lock(&state);
    let matches = |d: &&Deployment| {
        d.repository == repository
            && q.get("sha").is_none_or(|s| *s == d.sha)
            && q.get("ref").is_none_or(|r| *r == d.git_ref)
            && q.get("environment").is_none_or(|e| *e == d.environment)
            && q.get("task").is_none_or(|t| *t == d.task)
    };
    let mut found: Vec<&Deployment> = m.deployments.iter().filter(matches).collect();
    found.reverse();
    let page: Vec<Value> = paginate(&found, &q)
        .iter()
        .map(|d| deployment_json(d))
        .collect();
    ok(Value::Array(page))
}

fn paginate<'a, T>(items: &'a [T], q: &BTreeMap<String, String>) -> &'a [T] {
    let per_page = q
        .get("per_page")
        .and_then(|p| p.parse::<usize>().ok())
        .unwrap_or(30)
        .clamp(1, 100);
    let page = q
        .get("page")
        .and_then(|p| p.parse::<usize>().ok())
        .unwrap_or(1)
        .max(1);
    let start = ((page - 1) * per_page).min(items.len());
    let end = (start + per_page).min(items.len());
    &items[start..end]
}

async fn create_deployment_status(
    State(state): State<Shared>,
    Path((owner, repo, id)): Path<(String, String, u64)>,
    body: Bytes,
) -> Answer {
    let body = Body::parse(&body)?;
    let repository = full_name(&owner, &repo);
    let mut m = lock(&state);
    let deployment = m
        .deployments
        .iter()
        .find(|d| d.id == id && d.repository == repository)
        .cloned()
        .ok_or_else(Reject::not_found)?;
    let state_name = body.state(DEPLOYMENT_STATES)?;
    let status = DeploymentStatus {
        id: m.id(),
        deployment_id: id,
        state: state_name,
        description: body.description()?.unwrap_or_default(),
        log_url: body.opt_str("log_url")?.or(body.opt_str("target_url")?),
        environment_url: body.opt_str("environment_url")?,
        created_at: Utc::now(),
    };
    if status.state == "success" && body.opt_bool("auto_inactive", true)? {
        deactivate_older(&mut m, &deployment);
    }
    m.deployment_statuses.push(status.clone());
    created(status_json(&status, &deployment))
}

/// `auto_inactive`: older deployments of the same environment become inactive.
fn deactivate_older(m: &mut Model, current: &Deployment) {
    let older: Vec<u64> = m
        .deployments
        .iter()
        .filter(|d| {
            d.id != current.id
                && d.repository == current.repository
                && d.environment == current.environment
                && !d.transient_environment
        })
        .map(|d| d.id)
        .collect();
    for id in older {
        let last = m
            .deployment_statuses
            .iter()
            .rev()
            .find(|s| s.deployment_id == id);
        if last.is_some_and(|s| s.state == "inactive") {
            continue;
        }
        let status_id = m.id();
        m.deployment_statuses.push(DeploymentStatus {
            id: status_id,
            deployment_id: id,
            state: "inactive".into(),
            description: String::new(),
            log_url: None,
            environment_url: None,
            created_at: Utc::now(),
        });
    }
}

fn status_json(s: &DeploymentStatus, d: &Deployment) -> Value {
    json!({
        "id": s.id,
        "node_id": format!("DES_{}", s.id),
        "state": s.state,
        "description": s.description,
        "environment": d.environment,
        "log_url": s.log_url.clone().unwrap_or_default(),
        "target_url": s.log_url.clone().unwrap_or_default(),
        "environment_url": s.environment_url.clone().unwrap_or_default(),
        "created_at": timestamp(s.created_at),
        "updated_at": timestamp(s.created_at),
        "deployment_url": format!("https://api.github.com/repos/{}/deployments/{}", d.repository, d.id),
    })
}

async fn list_deployment_statuses(
    State(state): State<Shared>,
    Path((owner, repo, id)): Path<(String, String, u64)>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Answer {
    let repository = full_name(&owner, &repo);
    let m = lock(&state);
    let deployment = m
        .deployments
        .iter()
        .find(|d| d.id == id && d.repository == repository)
        .ok_or_else(Reject::not_found)?;
    let mut statuses: Vec<&DeploymentStatus> = m
        .deployment_statuses
        .iter()
        .filter(|s| s.deployment_id == id)
        .collect();
    statuses.reverse();
    let page = paginate(&statuses, &q);
    ok(page.iter().map(|s| status_json(s, deployment)).collect())
}

// ----- commit statuses -------------------------------------------------------------------------

async fn create_commit_status(
    State(state): State<Shared>,
    Path((owner, repo, sha)): Path<(String, String, String)>,
    body: Bytes,
) -> Answer {
    let body = Body::parse(&body)?;
    if sha.len() != 40 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Reject::invalid(format!("No commit found for SHA: {sha}")));
    }
    let mut m = lock(&state);
    let status = CommitStatus {
        id: m.id(),
        repository: full_name(&owner, &repo),
        sha,
        state: body.state(COMMIT_STATES)?,
        context: body.opt_str("context")?.unwrap_or("default".into()),
        description: body.description()?,
        target_url: body.opt_str("target_url")?,
        created_at: Utc::now(),
    };
    m.commit_statuses.push(status.clone());
    created(json!({
        "id": status.id,
        "state": status.state,
        "context": status.context,
        "description": status.description,
        "target_url": status.target_url,
        "created_at": timestamp(status.created_at),
        "updated_at": timestamp(status.created_at),
    }))
}

// ----- check runs ------------------------------------------------------------------------------

async fn list_check_runs(
    State(state): State<Shared>,
    Path((owner, repo, sha)): Path<(String, String, String)>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Answer {
    let repository = full_name(&owner, &repo);
    let m = lock(&state);
    let runs: Vec<&CheckRun> = m
        .check_runs
        .iter()
        .filter(|c| c.repository == repository && c.head_sha == sha)
        .filter(|c| q.get("check_name").is_none_or(|n| *n == c.name))
        .filter(|c| q.get("status").is_none_or(|s| *s == c.status))
        .collect();
    let page: Vec<Value> = paginate(&runs, &q)
        .iter()
        .map(|c| check_run_json(c))
        .collect();
    ok(json!({ "total_count": runs.len(), "check_runs": page }))
}

fn check_run_json(c: &CheckRun) -> Value {
    json!({
        "id": c.id,
        "name": c.name,
        "head_sha": c.head_sha,
        "status": c.status,
        "conclusion": c.conclusion,
        "html_url": format!("https://github.com/{}/runs/{}", c.repository, c.id),
        "details_url": format!("https://github.com/{}/runs/{}", c.repository, c.id),
    })
}

// ----- pull requests ---------------------------------------------------------------------------

/// `GET /repos/{owner}/{repo}/commits/{sha}/pulls`: the pull requests the commit belongs to
/// (one of its commits, or its merge commit). As GitHub's list, the items are "simple" pull
/// requests: `user` and `merged_at`, no `merged_by`.
/// <https://docs.github.com/en/rest/commits/commits#list-pull-requests-associated-with-a-commit>
async fn commit_pulls(
    State(state): State<Shared>,
    Path((owner, repo, sha)): Path<(String, String, String)>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Answer {
    let repository = full_name(&owner, &repo);
    let m = lock(&state);
    let pulls: Vec<&PullRequest> = m
        .pulls
        .iter()
        .filter(|p| p.repository == repository)
        .filter(|p| p.commits.contains(&sha) || p.merge_commit_sha.as_deref() == Some(&sha))
        .collect();
    let page: Vec<Value> = paginate(&pulls, &q)
        .iter()
        .map(|p| pull_json(p, false))
        .collect();
    ok(Value::Array(page))
}

/// `GET /repos/{owner}/{repo}/pulls/{number}`: the full pull request, `merged_by` included.
/// <https://docs.github.com/en/rest/pulls/pulls#get-a-pull-request>
async fn get_pull(
    State(state): State<Shared>,
    Path((owner, repo, number)): Path<(String, String, String)>,
) -> Answer {
    let repository = full_name(&owner, &repo);
    let number: u64 = number.parse().map_err(|_| Reject::not_found())?;
    let m = lock(&state);
    let pr = m
        .pulls
        .iter()
        .find(|p| p.repository == repository && p.number == number)
        .ok_or_else(Reject::not_found)?;
    ok(pull_json(pr, true))
}

fn pull_json(p: &PullRequest, full: bool) -> Value {
    let mut v = json!({
        "number": p.number,
        "state": if p.merged_at.is_some() { "closed" } else { "open" },
        "user": { "login": p.author },
        "merged_at": p.merged_at.map(timestamp),
        "merge_commit_sha": p.merge_commit_sha,
        "html_url": format!("https://github.com/{}/pull/{}", p.repository, p.number),
    });
    if full {
        v["merged"] = json!(p.merged_at.is_some());
        v["merged_by"] = match &p.merged_by {
            Some(login) => json!({ "login": login }),
            None => Value::Null,
        };
    }
    v
}

// ----- workflows -------------------------------------------------------------------------------

async fn dispatch_workflow(
    State(state): State<Shared>,
    Path((owner, repo, file)): Path<(String, String, String)>,
    body: Bytes,
) -> Answer {
    let body = Body::parse(&body)?;
    let repository = full_name(&owner, &repo);
    let mut m = lock(&state);
    let workflow = m
        .workflows
        .iter()
        .find(|w| w.repository == repository && w.file == file)
        .cloned()
        .ok_or_else(Reject::not_found)?;
    let git_ref = body.req_str("ref")?;
    let inputs = dispatch_inputs(&body, &workflow)?;
    let now = Utc::now();
    m.dispatches.push(Dispatch {
        repository: repository.clone(),
        workflow: file.clone(),
        git_ref: git_ref.clone(),
        inputs: inputs.clone(),
        at: now,
    });
    let id = m.id();
    let script = workflow.script;
    m.runs.push(WorkflowRun {
        id,
        repository,
        workflow: file,
        event: "workflow_dispatch".into(),
        head_branch: git_ref,
        status: "queued".into(),
        conclusion: None,
        created_at: now,
        inputs,
        hidden_for: script.hidden_for,
        polls_left: script.polls,
        scripted: script.conclusion,
    });
    Ok(StatusCode::NO_CONTENT.into_response())
}

fn dispatch_inputs(body: &Body, workflow: &Workflow) -> Result<BTreeMap<String, String>, Reject> {
    let Some(given) = body.0.get("inputs").filter(|v| !v.is_null()) else {
        return Ok(BTreeMap::new());
    };
    let given = given
        .as_object()
        .ok_or_else(|| Reject::invalid("`inputs` is not an object"))?;
    let declared: HashSet<&str> = workflow.inputs.iter().map(String::as_str).collect();
    let unexpected: Vec<&str> = given
        .keys()
        .map(String::as_str)
        .filter(|k| !declared.contains(k))
        .collect();
    if !unexpected.is_empty() {
        return Err(Reject::invalid(format!(
            "Unexpected inputs provided: {unexpected:?}"
        )));
    }
    let mut inputs = BTreeMap::new();
    for (k, v) in given {
        let v = v
            .as_str()
            .ok_or_else(|| Reject::invalid(format!("input `{k}` is not a string")))?;
        inputs.insert(k.clone(), v.to_owned());
    }
    Ok(inputs)
}

async fn list_runs(
    State(state): State<Shared>,
    Path((owner, repo, file)): Path<(String, String, String)>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Answer {
    let repository = full_name(&owner, &repo);
    let mut m = lock(&state);
    if !m
        .workflows
        .iter()
        .any(|w| w.repository == repository && w.file == file)
    {
        return Err(Reject::not_found());
    }
    let mut shown = Vec::new();
    for run in m.runs.iter_mut().rev() {
        if run.repository != repository || run.workflow != file {
            continue;
        }
        if run.hidden_for > 0 {
            run.hidden_for -= 1;
            continue;
        }
        let wanted = q.get("event").is_none_or(|e| *e == run.event)
            && q.get("branch").is_none_or(|b| *b == run.head_branch);
        if wanted {
            shown.push(run_json(run));
        }
    }
    let total = shown.len();
    let page = paginate(&shown, &q).to_vec();
    ok(json!({ "total_count": total, "workflow_runs": page }))
}

async fn get_run(
    State(state): State<Shared>,
    Path((owner, repo, id)): Path<(String, String, u64)>,
) -> Answer {
    let repository = full_name(&owner, &repo);
    let mut m = lock(&state);
    let run = m
        .runs
        .iter_mut()
        .find(|r| r.id == id && r.repository == repository && r.hidden_for == 0)
        .ok_or_else(Reject::not_found)?;
    advance(run);
    ok(run_json(run))
}

/// One read of a run: it runs for `polls` reads, then concludes as scripted.
fn advance(run: &mut WorkflowRun) {
    if run.status == "completed" {
        return;
    }
    if run.polls_left > 0 || run.scripted.is_none() {
        run.polls_left = run.polls_left.saturating_sub(1);
        run.status = "in_progress".into();
        return;
    }
    run.status = "completed".into();
    run.conclusion = run.scripted.clone();
}

fn run_json(r: &WorkflowRun) -> Value {
    json!({
        "id": r.id,
        "name": r.workflow.trim_end_matches(".yml").trim_end_matches(".yaml"),
        "path": format!(".github/workflows/{}", r.workflow),
        "head_branch": r.head_branch,
        "event": r.event,
        "status": r.status,
        "conclusion": r.conclusion,
        "run_number": r.id,
        "created_at": timestamp(r.created_at),
        "updated_at": timestamp(r.created_at),
        "html_url": format!("https://github.com/{}/actions/runs/{}", r.repository, r.id),
    })
}

// ----- compare ---------------------------------------------------------------------------------

/// `GET /repos/{owner}/{repo}/compare/{base}...{head}`: as GitHub documents it
/// (https://docs.github.com/en/rest/commits/commits#compare-two-commits), `status` is
/// `identical`, `ahead` (head descends from base), `behind` (base descends from head) or
/// `diverged`, with `ahead_by` / `behind_by` counting the commits on each side; an unknown
/// commit is a 404. Answered from the history given with [`GithubFake::add_commit`].
async fn compare_commits(
    State(state): State<Shared>,
    Path((owner, repo, basehead)): Path<(String, String, String)>,
) -> Answer {
    let repository = full_name(&owner, &repo);
    let (base, head) = basehead
        .split_once("...")
        .ok_or_else(|| Reject::new(StatusCode::NOT_FOUND, "Not Found"))?;
    let m = lock(&state);
    let ancestors = |sha: &str| -> Option<BTreeSet<String>> {
        let mut seen = BTreeSet::new();
        let mut todo = vec![sha.to_owned()];
        m.commits.get(&(repository.clone(), sha.to_owned()))?;
        while let Some(c) = todo.pop() {
            if !seen.insert(c.clone()) {
                continue;
            }
            if let Some(parents) = m.commits.get(&(repository.clone(), c)) {
                todo.extend(parents.iter().cloned());
            }
        }
        Some(seen)
    };
    let of_base = ancestors(base).ok_or_else(Reject::not_found)?;
    let of_head = ancestors(head).ok_or_else(Reject::not_found)?;
    let ahead_by = of_head.difference(&of_base).count();
    let behind_by = of_base.difference(&of_head).count();
    let status = match (ahead_by, behind_by) {
        (0, 0) => "identical",
        (_, 0) => "ahead",
        (0, _) => "behind",
        _ => "diverged",
    };
    ok(json!({
        "status": status,
        "ahead_by": ahead_by,
        "behind_by": behind_by,
        "total_commits": ahead_by,
        "base_commit": { "sha": base },
        "commits": [],
        "files": [],
    }))
}

// ----- contents --------------------------------------------------------------------------------

async fn get_contents(
    State(state): State<Shared>,
    Path((owner, repo, path)): Path<(String, String, String)>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Answer {
    let repository = full_name(&owner, &repo);
    let git_ref = q.get("ref").cloned().unwrap_or("main".into());
    let m = lock(&state);
    let text = m
        .files
        .get(&(repository.clone(), git_ref, path.clone()))
        .ok_or_else(Reject::not_found)?;
    ok(contents_json(&repository, &path, text))
}

/// GitHub's answer: base64 with a line break every 60 characters.
fn contents_json(repository: &str, path: &str, text: &str) -> Value {
    let encoded = base64::engine::general_purpose::STANDARD.encode(text.as_bytes());
    let chunks: Vec<&str> = encoded
        .as_bytes()
        .chunks(60)
        .map(|c| std::str::from_utf8(c).unwrap_or_default())
        .collect();
    let name = path.rsplit('/').next().unwrap_or(path);
    json!({
        "type": "file",
        "encoding": "base64",
        "size": text.len(),
        "name": name,
        "path": path,
        "content": format!("{}\n", chunks.join("\n")),
        "sha": format!("{:040x}", text.len()),
        "html_url": format!("https://github.com/{repository}/blob/main/{path}"),
    })
}

//! Reporting back to GitHub (Deployments, commit statuses) and the GitHub-backed tests.
//!
//! Owns every call tollgate makes to the GitHub REST API, through one octocrab client with
//! token or GitHub App (installation token) auth. [`GithubForge`] implements the engine's [`Forge`] port and adds the two test
//! runners the gates use ([`GithubForge::checks_gate`], [`GithubForge::run_workflow`]) and the
//! contents read behind config self-update ([`GithubForge::fetch_file`]).
//!
//! # Guarantees
//! - One GitHub Deployment per release × stage: before creating one, the deployments of the
//!   commit in that environment are listed and ours (payload `pipeline` + `release`) is reused,
//!   so a report repeated after a crash never creates a second one. Ids are cached in memory.
//! - A report whose idempotency key was already delivered by this process is not sent again.
//! - HTTP failures map onto [`PortError`]: 401/403 → `Denied` (403 from a rate limit →
//!   `Retryable`), 404 → `NotFound`, 422 and other 4xx → `Invalid`, 429/5xx and transport
//!   failures → `Retryable`.
//! - Temporary failures are retried here, under the controller's one retry policy
//!   ([`Backoff`], set with [`GithubForge::with_backoff`]); `Retryable` reaches the caller
//!   only once that budget is spent. Reads are retried request by request; a report is
//!   retried as a whole (look up, then create), so a create that GitHub carried out before
//!   failing is found rather than made twice. octocrab's own retries are switched off, so
//!   attempts never multiply.
//! - Every wait is bounded by its timeout and polls on [`PollSettings`] (a look at once, then
//!   one every poll interval); a look that still fails after its retries is a missed round.
//! - Times compared with GitHub's (when a dispatch happened) come from the injected [`Clock`].
//!
//! # Must never
//! - log, return or store the token: it lives in a [`Secret`] and goes only into octocrab's
//!   `Authorization` header. Errors name the call (`POST /repos/…/deployments`) and GitHub's
//!   message, nothing else.
//!
//! # Caveats
//! - A workflow dispatch answered with a 5xx or a timeout is sent again; if GitHub had
//!   started the run anyway, two runs exist and the earlier one is the one awaited.
//! - GitHub returns no run id from a workflow dispatch. The run is found by listing the
//!   workflow's `workflow_dispatch` runs on that ref created after the dispatch that were not
//!   there before it; a dispatch by someone else at the same moment could be taken for ours.
//! - Whether a stage is the pipeline's last one (commit status `success`) comes from the
//!   configuration given to [`GithubForge::track_pipelines`]; an unknown pipeline's success
//!   stays `pending`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsString;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use axum::http::{HeaderMap, Method, StatusCode};
use base64::Engine as _;
use chrono::{DateTime, Utc};
use octocrab::Octocrab;
use octocrab::service::middleware::retry::RetryConfig;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::backoff::{Backoff, PollSettings};
use crate::config::Config;
use crate::domain::approval::contributor_set;
use crate::domain::{Contributor, ReportState};
use crate::engine::clock::{Clock, SystemClock};
use crate::engine::ports::{DeploymentReport, Forge, PortError, PortResult, TestResult};
use crate::gates::{GithubTests, failed, human, passed};
use crate::secret::Secret;

/// Environment variable holding the GitHub token.
pub const TOKEN_ENV: &str = "TOLLGATE_GITHUB_TOKEN";
/// Environment variable naming a file holding the GitHub token.
pub const TOKEN_FILE_ENV: &str = "TOLLGATE_GITHUB_TOKEN_FILE";
/// Environment variable holding a GitHub App's id (with [`APP_KEY_FILE_ENV`] and
/// [`APP_INSTALLATION_ENV`]: authenticate as that App's installation instead of a token).
pub const APP_ID_ENV: &str = "TOLLGATE_GITHUB_APP_ID";
/// Environment variable naming the file with the GitHub App's private key (PEM).
pub const APP_KEY_FILE_ENV: &str = "TOLLGATE_GITHUB_APP_KEY_FILE";
/// Environment variable holding the App's installation id (on the repositories' account).
pub const APP_INSTALLATION_ENV: &str = "TOLLGATE_GITHUB_APP_INSTALLATION_ID";
/// Environment variable overriding the API URL (GitHub Enterprise: `https://HOST/api/v3`).
pub const API_URL_ENV: &str = "TOLLGATE_GITHUB_API_URL";
/// github.com's API.
pub const DEFAULT_API_URL: &str = "https://api.github.com";

/// GitHub's limit on status descriptions.
const DESCRIPTION_LIMIT: usize = 140;
/// How far GitHub's clock (and its second-precision timestamps) may trail ours.
const CLOCK_SKEW: chrono::TimeDelta = chrono::TimeDelta::minutes(2);
/// Pages of 100 read at most when listing deployments or check runs.
const MAX_PAGES: u32 = 10;
/// The shortest polling interval accepted.
const MIN_POLL: Duration = Duration::from_millis(10);
/// Conclusions of a check run that count as passing (as branch protection counts them).
const PASSING: &[&str] = &["success", "neutral", "skipped"];

/// Why the GitHub client could not be set up. Never contains the token.
#[derive(Debug, thiserror::Error)]
pub enum ForgeSetupError {
    #[error(
        "set {TOKEN_ENV} or {TOKEN_FILE_ENV} (a GitHub token), or {APP_ID_ENV}, {APP_KEY_FILE_ENV} and {APP_INSTALLATION_ENV} (a GitHub App)"
    )]
    NotSet,
    #[error("set either a GitHub token or a GitHub App, not both")]
    TokenAndApp,
    #[error(
        "a GitHub App needs all of {APP_ID_ENV}, {APP_KEY_FILE_ENV} and {APP_INSTALLATION_ENV}; {missing} is not set"
    )]
    AppIncomplete { missing: &'static str },
    #[error("{var} must be a positive number")]
    AppNumber { var: &'static str },
    #[error("{origin}: not an RSA private key in PEM format")]
    AppKey { origin: String },
    #[error("set only one of {TOKEN_ENV} and {TOKEN_FILE_ENV}")]
    BothSet,
    #[error("{origin}: the GitHub token is empty")]
    Empty { origin: String },
    #[error("{origin}: the GitHub token has characters not allowed in an HTTP header")]
    BadCharacters { origin: String },
    #[error("{origin} is not valid UTF-8")]
    NotUnicode { origin: String },
    #[error("cannot read GitHub credential file {}: {source}", path.display())]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("`{url}` is not a usable GitHub API URL: {reason}")]
    Url { url: String, reason: String },
    #[error("cannot build the GitHub client: {0}")]
    Client(String),
}

/// The GitHub adapter: Deployments, commit statuses, check runs, workflow runs, contents.
pub struct GithubForge {
    client: Octocrab,
    api_url: String,
    /// Last stage of each pipeline, for the commit status summary.
    last_stages: RwLock<HashMap<String, String>>,
    /// Deployment ids by (repository, pipeline, release, environment). The async lock also
    /// keeps two reports from creating the same deployment at once.
    deployments: tokio::sync::Mutex<HashMap<DeploymentKey, u64>>,
    /// Idempotency keys of reports already delivered.
    reported: Mutex<HashSet<String>>,
    /// How temporary failures are retried.
    backoff: Backoff,
    clock: Arc<dyn Clock>,
}

type DeploymentKey = (String, String, i64, String);

impl std::fmt::Debug for GithubForge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GithubForge")
            .field("api_url", &self.api_url)
            .finish_non_exhaustive()
    }
}

impl GithubForge {
    /// A client for the API at `api_url` (`https://api.github.com`, a GitHub Enterprise
    /// `https://HOST/api/v3`, or a test fake) authenticating with `token`.
    pub fn new(token: &Secret, api_url: &str) -> Result<GithubForge, ForgeSetupError> {
        check_token(token, "the GitHub token")?;
        let api_url = api_url.trim_end_matches('/').to_owned();
        check_url(&api_url)?;
        install_crypto_provider();
        let client = Octocrab::builder()
            .personal_token(token.expose().to_owned())
            .add_retry_config(RetryConfig::None)
            .set_connect_timeout(Some(Duration::from_secs(10)))
            .set_read_timeout(Some(Duration::from_secs(30)))
            .base_uri(api_url.as_str())
            .map_err(|e| url_error(&api_url, &e.to_string()))?
            .build()
            .map_err(|e| ForgeSetupError::Client(first_line(&e.to_string())))?;
        Ok(GithubForge::with_client(client, api_url))
    }

    /// A client for the API at `api_url` authenticating as installation `installation` of the
    /// GitHub App `app_id`, with the App's private key `key_pem`: octocrab signs a short JWT
    /// with the key, exchanges it for an installation token and renews that before it expires.
    pub fn new_app(
        app_id: u64,
        key_pem: &Secret,
        installation: u64,
        api_url: &str,
        key_origin: &str,
    ) -> Result<GithubForge, ForgeSetupError> {
        let api_url = api_url.trim_end_matches('/').to_owned();
        check_url(&api_url)?;
        install_crypto_provider();
        let key =
            jsonwebtoken::EncodingKey::from_rsa_pem(key_pem.expose().as_bytes()).map_err(|_| {
                ForgeSetupError::AppKey {
                    origin: key_origin.to_owned(),
                }
            })?;
        let app = Octocrab::builder()
            .app(octocrab::models::AppId(app_id), key)
            .add_retry_config(RetryConfig::None)
            .set_connect_timeout(Some(Duration::from_secs(10)))
            .set_read_timeout(Some(Duration::from_secs(30)))
            .base_uri(api_url.as_str())
            .map_err(|e| url_error(&api_url, &e.to_string()))?
            .build()
            .map_err(|e| ForgeSetupError::Client(first_line(&e.to_string())))?;
        let client = app
            .installation(octocrab::models::InstallationId(installation))
            .map_err(|e| ForgeSetupError::Client(first_line(&e.to_string())))?;
        Ok(GithubForge::with_client(client, api_url))
    }

    fn with_client(client: Octocrab, api_url: String) -> GithubForge {
        GithubForge {
            client,
            api_url,
            last_stages: RwLock::default(),
            deployments: tokio::sync::Mutex::default(),
            reported: Mutex::default(),
            backoff: Backoff::default(),
            clock: Arc::new(SystemClock),
        }
    }

    /// Retries temporary failures under `backoff` instead of the default policy.
    pub fn with_backoff(mut self, backoff: Backoff) -> GithubForge {
        self.backoff = backoff;
        self
    }

    /// Reads the time from `clock` instead of the system clock.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> GithubForge {
        self.clock = clock;
        self
    }

    /// Reads the token from [`TOKEN_ENV`] or [`TOKEN_FILE_ENV`] — or a GitHub App from
    /// [`APP_ID_ENV`], [`APP_KEY_FILE_ENV`] and [`APP_INSTALLATION_ENV`] — and the URL from
    /// [`API_URL_ENV`] (default [`DEFAULT_API_URL`]).
    pub fn from_env() -> Result<GithubForge, ForgeSetupError> {
        Self::from_vars(|key| std::env::var_os(key))
    }

    /// Like [`GithubForge::from_env`], with the variables looked up through `var`.
    pub fn from_vars(
        var: impl Fn(&str) -> Option<OsString>,
    ) -> Result<GithubForge, ForgeSetupError> {
        let url = match var(API_URL_ENV) {
            Some(v) => unicode(v, API_URL_ENV)?,
            None => DEFAULT_API_URL.to_owned(),
        };
        let app_vars = [APP_ID_ENV, APP_KEY_FILE_ENV, APP_INSTALLATION_ENV];
        let app_set = app_vars.iter().any(|v| var(v).is_some());
        let token = match (var(TOKEN_ENV), var(TOKEN_FILE_ENV)) {
            (Some(_), Some(_)) => return Err(ForgeSetupError::BothSet),
            (Some(_), None) | (None, Some(_)) if app_set => {
                return Err(ForgeSetupError::TokenAndApp);
            }
            (None, None) if app_set => return Self::app_from_vars(&var, &url),
            (None, None) => return Err(ForgeSetupError::NotSet),
            (Some(value), None) => Secret::new(unicode(value, TOKEN_ENV)?.trim()),
            (None, Some(path)) => token_from_file(Path::new(&path))?,
        };
        Self::new(&token, &url)
    }

    fn app_from_vars(
        var: &impl Fn(&str) -> Option<OsString>,
        url: &str,
    ) -> Result<GithubForge, ForgeSetupError> {
        let get = |name: &'static str| {
            var(name)
                .ok_or(ForgeSetupError::AppIncomplete { missing: name })
                .and_then(|v| unicode(v, name))
        };
        let number = |name: &'static str| -> Result<u64, ForgeSetupError> {
            get(name)?
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or(ForgeSetupError::AppNumber { var: name })
        };
        let app_id = number(APP_ID_ENV)?;
        let installation = number(APP_INSTALLATION_ENV)?;
        let path = std::path::PathBuf::from(get(APP_KEY_FILE_ENV)?);
        let pem = std::fs::read_to_string(&path).map_err(|source| ForgeSetupError::Read {
            path: path.clone(),
            source,
        })?;
        let origin = path.display().to_string();
        Self::new_app(app_id, &Secret::new(pem), installation, url, &origin)
    }

    /// The same forge, knowing the pipelines' stages (see [`GithubForge::track_pipelines`]).
    pub fn with_pipelines(self, config: &Config) -> GithubForge {
        self.track_pipelines(config);
        self
    }

    /// Learns which stage is each pipeline's last; call again after a configuration reload.
    pub fn track_pipelines(&self, config: &Config) {
        let last = config.pipelines.iter().filter_map(|p| {
            let stage = p.stages.last()?;
            Some((p.name.to_string(), stage.name.to_string()))
        });
        let map: HashMap<String, String> = last.collect();
        match self.last_stages.write() {
            Ok(mut m) => *m = map,
            Err(e) => *e.into_inner() = map,
        }
    }

    fn last_stage(&self, pipeline: &str) -> Option<String> {
        let map = self.last_stages.read().unwrap_or_else(|e| e.into_inner());
        map.get(pipeline).cloned()
    }
}

// ---------------------------------------------------------------------------------------------
// Setup helpers
// ---------------------------------------------------------------------------------------------

fn check_token(token: &Secret, origin: &str) -> Result<(), ForgeSetupError> {
    let value = token.expose();
    if value.is_empty() {
        return Err(ForgeSetupError::Empty {
            origin: origin.to_owned(),
        });
    }
    if !value.bytes().all(|b| b.is_ascii_graphic()) {
        let origin = origin.to_owned();
        return Err(ForgeSetupError::BadCharacters { origin });
    }
    Ok(())
}

/// Both rustls back ends are linked (aws-lc-rs by the AWS SDK, ring by octocrab), so rustls
/// cannot choose one itself. Picks aws-lc-rs, like the AWS SDK, unless one was chosen already.
fn install_crypto_provider() {
    let _already_chosen = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

fn token_from_file(path: &Path) -> Result<Secret, ForgeSetupError> {
    let text = std::fs::read_to_string(path).map_err(|source| ForgeSetupError::Read {
        path: path.to_owned(),
        source,
    })?;
    let token = Secret::new(text.trim());
    check_token(&token, &path.display().to_string())?;
    Ok(token)
}

fn check_url(url: &str) -> Result<(), ForgeSetupError> {
    let parsed = url::Url::parse(url).map_err(|e| url_error(url, &e.to_string()))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(url_error(url, "use http or https"));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(url_error(url, "leave out the query and fragment"));
    }
    Ok(())
}

fn url_error(url: &str, reason: &str) -> ForgeSetupError {
    ForgeSetupError::Url {
        url: url.to_owned(),
        reason: reason.to_owned(),
    }
}

fn unicode(value: OsString, origin: &str) -> Result<String, ForgeSetupError> {
    value
        .into_string()
        .map_err(|_| ForgeSetupError::NotUnicode {
            origin: origin.to_owned(),
        })
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or_default().to_owned()
}

// ---------------------------------------------------------------------------------------------
// HTTP plumbing
// ---------------------------------------------------------------------------------------------

impl GithubForge {
    /// Sends one request once; a 2xx answer's JSON (`null` when empty), else the mapped error.
    async fn call(&self, method: Method, route: &str, body: Option<&Value>) -> PortResult<Value> {
        let what = format!("{method} {}", route.split('?').next().unwrap_or(route));
        let sent = match method {
            Method::POST => self.client._post(route, body).await,
            Method::PATCH => self.client._patch(route, body).await,
            _ => self.client._get(route).await,
        };
        let response = sent.map_err(|e| {
            count_call(&method, "transport_error");
            transport(&what, &e)
        })?;
        let status = response.status();
        let limited = rate_limited(response.headers());
        observe_answer(&method, status, limited, response.headers());
        let text = self
            .client
            .body_to_string(response)
            .await
            .map_err(|e| transport(&what, &e))?;
        if !status.is_success() {
            return Err(http_error(&what, status, limited, &text));
        }
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text)
            .map_err(|e| PortError::Retryable(format!("{what}: unreadable answer: {e}")))
    }

    /// A read, retried through temporary failures.
    async fn get<T: DeserializeOwned>(&self, route: &str) -> PortResult<T> {
        let what = format!("GitHub GET {}", route.split('?').next().unwrap_or(route));
        self.backoff.retry(&what, || self.get_once(route)).await
    }

    /// A read, tried once (for a step that is retried as a whole).
    async fn get_once<T: DeserializeOwned>(&self, route: &str) -> PortResult<T> {
        let value = self.call(Method::GET, route, None).await?;
        decode(route, value)
    }

    /// A write, tried once: the caller retries the step it belongs to.
    async fn post(&self, route: &str, body: &Value) -> PortResult<Value> {
        self.call(Method::POST, route, Some(body)).await
    }
}

fn decode<T: DeserializeOwned>(route: &str, value: Value) -> PortResult<T> {
    let path = route.split('?').next().unwrap_or(route);
    serde_json::from_value(value)
        .map_err(|e| PortError::Retryable(format!("GET {path}: unexpected answer: {e}")))
}

fn transport(what: &str, e: &octocrab::Error) -> PortError {
    PortError::Retryable(format!("{what}: {}", first_line(&e.to_string())))
}

/// Counts one answered request and keeps GitHub's remaining rate limit.
fn observe_answer(method: &Method, status: StatusCode, limited: bool, headers: &HeaderMap) {
    let outcome = match status.as_u16() {
        _ if status.is_success() => "success",
        429 => "rate_limited",
        403 if limited => "rate_limited",
        s if s >= 500 => "server_error",
        _ => "client_error",
    };
    count_call(method, outcome);
    let remaining = headers
        .get("x-ratelimit-remaining")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i64>().ok());
    if let Some(n) = remaining {
        crate::metrics::global().github_rate_remaining(n);
    }
}

fn count_call(method: &Method, outcome: &'static str) {
    let method = match *method {
        Method::POST => "POST",
        Method::PATCH => "PATCH",
        _ => "GET",
    };
    let labels = crate::metrics::GithubLabels { method, outcome };
    crate::metrics::global()
        .github_calls
        .get_or_create(&labels)
        .inc();
}

/// GitHub's primary and secondary rate limits answer 403 (or 429) with these headers.
fn rate_limited(headers: &HeaderMap) -> bool {
    let remaining = headers.get("x-ratelimit-remaining");
    remaining.is_some_and(|v| v.as_bytes() == b"0") || headers.contains_key("retry-after")
}

/// Maps an error answer onto the engine's [`PortError`].
pub fn http_error(what: &str, status: StatusCode, rate_limited: bool, body: &str) -> PortError {
    let message = github_message(body);
    let text = format!("{what}: HTTP {}: {message}", status.as_u16());
    let limited = rate_limited || message.to_ascii_lowercase().contains("rate limit");
    match status.as_u16() {
        403 if limited => PortError::Retryable(text),
        401 | 403 => PortError::Denied(text),
        404 => PortError::NotFound(text),
        429 => PortError::Retryable(text),
        s if s >= 500 => PortError::Retryable(text),
        _ => PortError::Invalid(text),
    }
}

/// The `message` of a GitHub error body, or the body's start.
fn github_message(body: &str) -> String {
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    let message = parsed.as_ref().and_then(|v| v["message"].as_str());
    match message {
        Some(m) => m.to_owned(),
        None => body.chars().take(200).collect::<String>().trim().to_owned(),
    }
}

/// `/repos/{owner}/{name}` with each part escaped.
fn repo_route(repo: &str) -> String {
    let parts: Vec<String> = repo
        .split('/')
        .map(|p| urlencoding::encode(p).into_owned())
        .collect();
    format!("/repos/{}", parts.join("/"))
}

fn esc(s: &str) -> String {
    urlencoding::encode(s).into_owned()
}

/// Cuts `text` to GitHub's 140 characters, marking the cut.
pub fn truncate_description(text: &str) -> String {
    if text.chars().count() <= DESCRIPTION_LIMIT {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(DESCRIPTION_LIMIT - 1).collect();
    cut.push('…');
    cut
}

// ---------------------------------------------------------------------------------------------
// Deployments and commit statuses
// ---------------------------------------------------------------------------------------------

#[async_trait]
impl Forge for GithubForge {
    async fn report(&self, r: &DeploymentReport) -> PortResult<()> {
        if self.was_reported(&r.key) {
            return Ok(());
        }
        let what = format!("GitHub report {} of {}", r.environment, r.pipeline);
        self.backoff.retry(&what, || self.report_once(r)).await
    }

    /// `GET /repos/{owner}/{repo}/commits/{sha}/pulls` lists the pull requests the commit
    /// belongs to (their authors); the list omits who merged, so each merged one is read
    /// with `GET /repos/{owner}/{repo}/pulls/{number}` for `merged_by`.
    async fn pull_request_people(
        &self,
        repository: &str,
        sha: &str,
    ) -> PortResult<Option<Vec<Contributor>>> {
        let base = format!(
            "{}/commits/{}/pulls?per_page=100",
            repo_route(repository),
            esc(sha)
        );
        let mut people = Vec::new();
        for page in 1..=MAX_PAGES {
            let pulls: Vec<PullInfo> = self.get(&format!("{base}&page={page}")).await?;
            let last = pulls.len() < 100;
            for pr in pulls {
                people.extend(self.people_of(repository, pr).await?);
            }
            if last {
                break;
            }
        }
        Ok(Some(contributor_set(people)))
    }
}

/// A pull request as the commit's list and the pull request itself give it.
#[derive(Debug, Deserialize)]
struct PullInfo {
    number: u64,
    #[serde(default)]
    user: Option<UserInfo>,
    #[serde(default)]
    merged_at: Option<String>,
    #[serde(default)]
    merged_by: Option<UserInfo>,
}

#[derive(Debug, Deserialize)]
struct UserInfo {
    login: String,
}

impl GithubForge {
    /// The author of a pull request and, once merged, who merged it.
    async fn people_of(&self, repository: &str, pr: PullInfo) -> PortResult<Vec<Contributor>> {
        use crate::domain::ContributorRole as R;
        let author = pr.user.as_ref().map(|u| u.login.as_str());
        let mut people: Vec<Contributor> = Contributor::new(R::PullRequestAuthor, author, None)
            .into_iter()
            .collect();
        let merger = match (pr.merged_by, pr.merged_at) {
            (Some(by), _) => Some(by),
            (None, Some(_)) => {
                let route = format!("{}/pulls/{}", repo_route(repository), pr.number);
                let full: PullInfo = self.get(&route).await?;
                full.merged_by
            }
            (None, None) => None,
        };
        if let Some(by) = merger {
            people.extend(Contributor::new(
                R::PullRequestMerger,
                Some(&by.login),
                None,
            ));
        }
        Ok(people)
    }
}

impl GithubForge {
    /// One try at a report: the deployment (found or created), its status, the commit status.
    async fn report_once(&self, r: &DeploymentReport) -> PortResult<()> {
        let id = self.deployment_for(r).await?;
        self.post_deployment_status(id, r).await?;
        if r.summary {
            self.post_commit_status(r).await?;
        }
        self.reported
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(r.key.clone());
        Ok(())
    }
}

#[derive(Debug, Deserialize)]
struct DeploymentInfo {
    id: u64,
    #[serde(default)]
    payload: Value,
}

impl GithubForge {
    fn was_reported(&self, key: &str) -> bool {
        self.reported
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(key)
    }

    /// The deployment of this release in this environment: cached, found, or created.
    async fn deployment_for(&self, r: &DeploymentReport) -> PortResult<u64> {
        let key = (
            r.repository.clone(),
            r.pipeline.clone(),
            r.release.0,
            r.environment.clone(),
        );
        let mut cache = self.deployments.lock().await;
        if let Some(id) = cache.get(&key) {
            return Ok(*id);
        }
        let id = match self.find_deployment(r).await? {
            Some(id) => id,
            None => self.create_deployment(r).await?,
        };
        cache.insert(key, id);
        Ok(id)
    }

    async fn find_deployment(&self, r: &DeploymentReport) -> PortResult<Option<u64>> {
        let base = format!(
            "{}/deployments?sha={}&environment={}&per_page=100",
            repo_route(&r.repository),
            esc(&r.sha),
            esc(&r.environment)
        );
        for page in 1..=MAX_PAGES {
            let route = format!("{base}&page={page}");
            let found: Vec<DeploymentInfo> = self.get_once(&route).await?;
            let ours = found
                .iter()
                .filter(|d| is_ours(&d.payload, r))
                .map(|d| d.id)
                .min();
            if ours.is_some() || found.len() < 100 {
                return Ok(ours);
            }
        }
        Ok(None)
    }

    async fn create_deployment(&self, r: &DeploymentReport) -> PortResult<u64> {
        let production = self.last_stage(&r.pipeline).as_deref() == Some(r.environment.as_str());
        let description = format!("{} {} to {}", r.pipeline, r.release, r.environment);
        let body = json!({
            "ref": r.sha,
            "task": "deploy",
            "environment": r.environment,
            "auto_merge": false,
            "required_contexts": [],
            "payload": { "pipeline": r.pipeline, "release": r.release.0 },
            "transient_environment": false,
            "production_environment": production,
            "description": truncate_description(&description),
        });
        let route = format!("{}/deployments", repo_route(&r.repository));
        let created: DeploymentInfo = decode(&route, self.post(&route, &body).await?)?;
        tracing::info!(pipeline = %r.pipeline, environment = %r.environment, deployment = created.id, "created GitHub deployment");
        Ok(created.id)
    }

    async fn post_deployment_status(&self, id: u64, r: &DeploymentReport) -> PortResult<()> {
        let description = match r.description.trim() {
            "" => format!("{}: {}", r.environment, r.state.as_str()),
            text => text.to_owned(),
        };
        let body = json!({
            "state": r.state.as_str(),
            "description": truncate_description(&description),
            "log_url": r.log_url,
            "auto_inactive": true,
        });
        let route = format!("{}/deployments/{id}/statuses", repo_route(&r.repository));
        self.post(&route, &body).await.map(drop)
    }

    async fn post_commit_status(&self, r: &DeploymentReport) -> PortResult<()> {
        let last = self.last_stage(&r.pipeline);
        let (state, description) = commit_summary(r, last.as_deref());
        let body = json!({
            "state": state,
            "context": format!("tollgate/{}", r.pipeline),
            "description": truncate_description(&description),
            "target_url": r.log_url,
        });
        let route = format!("{}/statuses/{}", repo_route(&r.repository), esc(&r.sha));
        self.post(&route, &body).await.map(drop)
    }
}

impl GithubForge {
    /// Reports on the configuration commit `sha` whether the controller took it: the
    /// `tollgate/config` commit status, `success` (saying how many warnings it has: `Ok(n)`) or
    /// `failure` with the first validation message (GitHub keeps 140 characters of a
    /// description).
    pub async fn post_config_status(
        &self,
        repo: &str,
        sha: &str,
        accepted: Result<usize, &str>,
    ) -> PortResult<()> {
        let (state, description) = match accepted {
            Ok(0) => ("success", "configuration applied".to_owned()),
            Ok(1) => (
                "success",
                "configuration applied with 1 warning (in the event log; tollgate validate shows it)"
                    .to_owned(),
            ),
            Ok(n) => (
                "success",
                format!(
                    "configuration applied with {n} warnings (in the event log; tollgate validate shows them)"
                ),
            ),
            Err(why) => ("failure", format!("refused: {}", first_message(why))),
        };
        let body = json!({
            "state": state,
            "context": "tollgate/config",
            "description": truncate_description(&description),
        });
        let route = format!("{}/statuses/{}", repo_route(repo), esc(sha));
        let what = format!("GitHub config status of {repo}");
        let post = || async { self.post(&route, &body).await.map(drop) };
        self.backoff.retry(&what, post).await
    }
}

/// The first validation message of a refusal, without the file's location prefix lines.
fn first_message(why: &str) -> &str {
    why.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or(why)
}

/// Is this deployment's payload ours for this pipeline and release?
fn is_ours(payload: &Value, r: &DeploymentReport) -> bool {
    let payload = match payload {
        Value::String(s) => serde_json::from_str(s).unwrap_or(Value::Null),
        other => other.clone(),
    };
    payload["pipeline"].as_str() == Some(r.pipeline.as_str())
        && payload["release"].as_i64() == Some(r.release.0)
}

/// The `tollgate/<pipeline>` commit status for a report: pending while in flight, success once
/// the last stage succeeded, failure on failure, error when superseded.
pub fn commit_summary(r: &DeploymentReport, last_stage: Option<&str>) -> (&'static str, String) {
    let env = &r.environment;
    let why = r.description.trim();
    match r.state {
        ReportState::Queued => ("pending", format!("{env}: queued")),
        ReportState::InProgress => ("pending", format!("{env}: in progress")),
        ReportState::Success if last_stage == Some(env.as_str()) => {
            ("success", format!("released through {env}"))
        }
        ReportState::Success => ("pending", format!("{env} succeeded; promoting")),
        ReportState::Failure if why.is_empty() => ("failure", format!("{env} failed")),
        ReportState::Failure => ("failure", format!("{env} failed: {why}")),
        ReportState::Inactive => ("error", format!("superseded in {env} by a newer release")),
    }
}

// ---------------------------------------------------------------------------------------------
// Contents
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
struct Contents {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    encoding: String,
    #[serde(default)]
    content: String,
}

impl GithubForge {
    /// The text of `path` at `git_ref` (a sha or branch) of `repo`, via the contents API.
    pub async fn fetch_file(&self, repo: &str, git_ref: &str, path: &str) -> PortResult<String> {
        let segments: Vec<String> = path.trim_start_matches('/').split('/').map(esc).collect();
        let route = format!(
            "{}/contents/{}?ref={}",
            repo_route(repo),
            segments.join("/"),
            esc(git_ref)
        );
        let contents: Contents = self.get(&route).await?;
        let place = format!("{repo}@{git_ref}:{path}");
        if contents.kind != "file" {
            return Err(PortError::Invalid(format!(
                "{place} is a {}, not a file",
                contents.kind
            )));
        }
        if contents.encoding != "base64" {
            return Err(PortError::Invalid(format!(
                "{place} is too large for the contents API"
            )));
        }
        decode_contents(&contents.content)
            .map_err(|why| PortError::Invalid(format!("{place}: {why}")))
    }
}

/// Where one commit stands in a repository's history relative to another (the compare API's
/// `status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Ancestry {
    /// The same commit.
    Identical,
    /// The head descends from the base.
    Ahead,
    /// The base descends from the head: the head is older.
    Behind,
    /// Neither descends from the other.
    Diverged,
}

#[derive(Deserialize)]
struct Comparison {
    status: Ancestry,
}

impl GithubForge {
    /// Where `head` stands relative to `base` in `repo`'s history
    /// (`GET /repos/{owner}/{repo}/compare/{base}...{head}`).
    pub async fn compare(&self, repo: &str, base: &str, head: &str) -> PortResult<Ancestry> {
        let route = format!("{}/compare/{}...{}", repo_route(repo), esc(base), esc(head));
        let comparison: Comparison = self.get(&route).await?;
        Ok(comparison.status)
    }
}

fn decode_contents(content: &str) -> Result<String, String> {
    let compact: String = content
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(compact)
        .map_err(|e| format!("invalid base64: {e}"))?;
    String::from_utf8(bytes).map_err(|_| "not UTF-8 text".to_owned())
}

// ---------------------------------------------------------------------------------------------
// Polling
// ---------------------------------------------------------------------------------------------

/// The schedule of a GitHub wait: a look at once, then one every `poll` (at least
/// [`MIN_POLL`]) until `deadline`.
fn schedule(poll: Duration, deadline: Instant) -> PollSettings {
    let left = deadline.saturating_duration_since(Instant::now());
    PollSettings::every(poll.max(MIN_POLL), left)
}

/// While waiting, a transient failure is only a missed round. The poll itself already goes on
/// past one ([`PollSettings::poll`]); here it also never becomes the wait's error at its
/// deadline, so a gate that runs out of time fails as a test does, naming what was pending.
fn tolerate<T>(result: PortResult<T>) -> PortResult<Option<T>> {
    match result {
        Ok(v) => Ok(Some(v)),
        Err(PortError::Retryable(why)) => {
            tracing::warn!(reason = %why, "GitHub call still failing after its retries; trying again at the next poll");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

// ---------------------------------------------------------------------------------------------
// Check runs
// ---------------------------------------------------------------------------------------------

/// A check run, as the checks gate sees it.
#[derive(Debug, Clone, Deserialize)]
pub struct CheckRunInfo {
    pub id: u64,
    pub name: String,
    pub status: String,
    pub conclusion: Option<String>,
    #[serde(default)]
    pub html_url: Option<String>,
}

#[derive(Debug, Deserialize)]
struct CheckRunPage {
    check_runs: Vec<CheckRunInfo>,
}

/// What the named checks of a commit say now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChecksVerdict {
    Passed,
    /// One check concluded badly: what it concluded, with its link.
    Failed(String),
    /// Still waiting for these (with their status).
    Pending(Vec<String>),
}

/// Judges the latest run of each named check (fail fast: one failure decides).
pub fn judge_checks(names: &[String], runs: &[CheckRunInfo]) -> ChecksVerdict {
    let mut pending = Vec::new();
    for name in names {
        let latest = runs.iter().filter(|r| &r.name == name).max_by_key(|r| r.id);
        let Some(run) = latest else {
            pending.push(format!("{name} (not started)"));
            continue;
        };
        if run.status != "completed" {
            pending.push(format!("{name} ({})", run.status));
            continue;
        }
        let conclusion = run.conclusion.as_deref().unwrap_or("unknown");
        if !PASSING.contains(&conclusion) {
            let link = run
                .html_url
                .as_deref()
                .map(|u| format!(": {u}"))
                .unwrap_or_default();
            return ChecksVerdict::Failed(format!("check `{name}` concluded {conclusion}{link}"));
        }
    }
    if pending.is_empty() {
        ChecksVerdict::Passed
    } else {
        ChecksVerdict::Pending(pending)
    }
}

impl GithubForge {
    /// Every check run of `sha` (the latest of each name, as GitHub filters them).
    pub async fn check_runs(&self, repo: &str, sha: &str) -> PortResult<Vec<CheckRunInfo>> {
        let base = format!(
            "{}/commits/{}/check-runs?filter=latest&per_page=100",
            repo_route(repo),
            esc(sha)
        );
        let mut all = Vec::new();
        for page in 1..=MAX_PAGES {
            let found: CheckRunPage = self.get(&format!("{base}&page={page}")).await?;
            let last = found.check_runs.len() < 100;
            all.extend(found.check_runs);
            if last {
                break;
            }
        }
        Ok(all)
    }

    /// Waits until every check named in `names` completed successfully on `sha`. Fails as soon
    /// as one concludes failure, cancelled or timed out (naming it); after `timeout`, fails
    /// listing the checks still pending. `Err` only for errors that waiting cannot fix.
    pub async fn checks_gate(
        &self,
        repo: &str,
        sha: &str,
        names: &[String],
        timeout: Duration,
        poll: Duration,
    ) -> PortResult<TestResult> {
        let waiting = Mutex::new(names.iter().map(|n| format!("{n} (not started)")).collect());
        let verdict = schedule(poll, Instant::now() + timeout)
            .poll(|| async {
                let Some(runs) = tolerate(self.check_runs(repo, sha).await)? else {
                    return Ok(None);
                };
                Ok(match judge_checks(names, &runs) {
                    ChecksVerdict::Passed => {
                        let summary = format!("checks passed: {}", names.join(", "));
                        Some(passed(summary, describe_runs(names, &runs)))
                    }
                    ChecksVerdict::Failed(why) => Some(failed(why, describe_runs(names, &runs))),
                    ChecksVerdict::Pending(list) => {
                        *waiting.lock().unwrap_or_else(|e| e.into_inner()) = list;
                        None
                    }
                })
            })
            .await?;
        Ok(verdict.unwrap_or_else(|| {
            let waiting: Vec<String> = waiting.into_inner().unwrap_or_else(|e| e.into_inner());
            let summary = format!(
                "timed out after {} waiting for checks: {}",
                human(timeout),
                waiting.join(", ")
            );
            failed(summary, waiting.join("\n"))
        }))
    }
}

fn describe_runs(names: &[String], runs: &[CheckRunInfo]) -> String {
    let line = |name: &String| {
        let run = runs.iter().filter(|r| &r.name == name).max_by_key(|r| r.id);
        match run {
            Some(r) => format!(
                "{name}: {} {}",
                r.status,
                r.conclusion.as_deref().unwrap_or("")
            ),
            None => format!("{name}: not started"),
        }
    };
    names
        .iter()
        .map(line)
        .map(|l| l.trim_end().to_owned())
        .collect::<Vec<_>>()
        .join("\n")
}

// ---------------------------------------------------------------------------------------------
// Workflow runs
// ---------------------------------------------------------------------------------------------

/// A workflow run, as the workflow test sees it.
#[derive(Debug, Clone, Deserialize)]
pub struct RunInfo {
    pub id: u64,
    pub status: String,
    pub conclusion: Option<String>,
    #[serde(default)]
    pub head_branch: Option<String>,
    pub created_at: DateTime<Utc>,
    #[serde(default)]
    pub html_url: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RunPage {
    workflow_runs: Vec<RunInfo>,
}

impl GithubForge {
    /// Dispatches `workflow_file` on `git_ref` with `inputs`, finds the run it created and
    /// waits for its conclusion; passes only on `success`. Bounded by `timeout` in all.
    pub async fn run_workflow(
        &self,
        repo: &str,
        workflow_file: &str,
        git_ref: &str,
        inputs: &BTreeMap<String, String>,
        timeout: Duration,
        poll: Duration,
    ) -> PortResult<TestResult> {
        let deadline = Instant::now() + timeout;
        let before: HashSet<u64> = self
            .dispatch_runs(repo, workflow_file)
            .await?
            .iter()
            .map(|r| r.id)
            .collect();
        let dispatched_at = self.clock.now();
        self.dispatch(repo, workflow_file, git_ref, inputs).await?;
        let branch = git_ref
            .strip_prefix("refs/heads/")
            .or(git_ref.strip_prefix("refs/tags/"))
            .unwrap_or(git_ref);
        let found = self
            .find_new_run(
                repo,
                workflow_file,
                branch,
                &before,
                dispatched_at,
                schedule(poll, deadline),
            )
            .await?;
        let Some(run) = found else {
            let why = format!(
                "no run of {workflow_file} appeared within {} of dispatching it on {git_ref}",
                human(timeout)
            );
            return Ok(failed(why, String::new()));
        };
        self.await_run(repo, workflow_file, run, timeout, schedule(poll, deadline))
            .await
    }

    async fn dispatch_runs(&self, repo: &str, workflow_file: &str) -> PortResult<Vec<RunInfo>> {
        let route = format!(
            "{}/actions/workflows/{}/runs?event=workflow_dispatch&per_page=50",
            repo_route(repo),
            esc(workflow_file)
        );
        let page: RunPage = self.get(&route).await?;
        Ok(page.workflow_runs)
    }

    async fn dispatch(
        &self,
        repo: &str,
        file: &str,
        git_ref: &str,
        inputs: &BTreeMap<String, String>,
    ) -> PortResult<()> {
        let route = format!(
            "{}/actions/workflows/{}/dispatches",
            repo_route(repo),
            esc(file)
        );
        let body = json!({ "ref": git_ref, "inputs": inputs });
        let what = format!("GitHub dispatch of {file}");
        let post = || async { self.post(&route, &body).await.map(drop) };
        self.backoff.retry(&what, post).await
    }

    /// Polls the workflow's runs for one that was not there before the dispatch.
    async fn find_new_run(
        &self,
        repo: &str,
        file: &str,
        branch: &str,
        before: &HashSet<u64>,
        dispatched_at: DateTime<Utc>,
        schedule: PollSettings,
    ) -> PortResult<Option<RunInfo>> {
        schedule
            .poll(|| async {
                let Some(runs) = tolerate(self.dispatch_runs(repo, file).await)? else {
                    return Ok(None);
                };
                let new = runs.into_iter().filter(|r| {
                    !before.contains(&r.id)
                        && r.created_at >= dispatched_at - CLOCK_SKEW
                        && r.head_branch.as_deref().is_none_or(|b| b == branch)
                });
                Ok(new.min_by_key(|r| r.id))
            })
            .await
    }

    /// Polls run `run` until it completes; its result, or a failure once the time is up.
    async fn await_run(
        &self,
        repo: &str,
        file: &str,
        run: RunInfo,
        timeout: Duration,
        schedule: PollSettings,
    ) -> PortResult<TestResult> {
        if run.status == "completed" {
            return Ok(run_result(file, &run));
        }
        let route = format!("{}/actions/runs/{}", repo_route(repo), run.id);
        let latest = Mutex::new(run);
        let done = schedule
            .poll(|| async {
                let Some(now) = tolerate(self.get::<RunInfo>(&route).await)? else {
                    return Ok(None);
                };
                let completed = now.status == "completed";
                *latest.lock().unwrap_or_else(|e| e.into_inner()) = now.clone();
                Ok(completed.then_some(now))
            })
            .await?;
        if let Some(run) = done {
            return Ok(run_result(file, &run));
        }
        let run = latest.into_inner().unwrap_or_else(|e| e.into_inner());
        let link = run.html_url.clone().unwrap_or_default();
        let why = format!(
            "workflow {file} run {} still {} after {}",
            run.id,
            run.status,
            human(timeout)
        );
        Ok(failed(why, link))
    }
}

fn run_result(file: &str, run: &RunInfo) -> TestResult {
    let conclusion = run.conclusion.as_deref().unwrap_or("unknown");
    let link = run.html_url.clone().unwrap_or_default();
    let summary = format!("workflow {file} run {} concluded {conclusion}", run.id);
    if conclusion == "success" {
        passed(summary, link)
    } else {
        failed(summary, link)
    }
}

/// How often GitHub is asked about check runs and workflow runs.
const GITHUB_POLL: std::time::Duration = std::time::Duration::from_secs(15);

#[async_trait::async_trait]
impl GithubTests for GithubForge {
    async fn checks_gate(
        &self,
        repo: &str,
        sha: &str,
        names: &[String],
        timeout: std::time::Duration,
    ) -> PortResult<TestResult> {
        GithubForge::checks_gate(self, repo, sha, names, timeout, GITHUB_POLL).await
    }

    async fn run_workflow(
        &self,
        repo: &str,
        workflow: &str,
        git_ref: &str,
        inputs: &BTreeMap<String, String>,
        timeout: std::time::Duration,
    ) -> PortResult<TestResult> {
        GithubForge::run_workflow(self, repo, workflow, git_ref, inputs, timeout, GITHUB_POLL).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptions_are_cut_at_140_characters() {
        let long = "é".repeat(200);
        let cut = truncate_description(&long);
        assert_eq!(cut.chars().count(), 140);
        assert!(cut.ends_with('…'));
        assert_eq!(truncate_description("short"), "short");
    }

    #[test]
    fn http_errors_map_onto_port_errors() {
        let e = |status: u16, limited: bool, body: &str| {
            http_error(
                "GET /x",
                StatusCode::from_u16(status).unwrap(),
                limited,
                body,
            )
        };
        assert!(
            matches!(e(401, false, r#"{"message":"Bad credentials"}"#), PortError::Denied(m) if m.contains("Bad credentials"))
        );
        assert!(matches!(e(403, false, "{}"), PortError::Denied(_)));
        assert!(matches!(e(403, true, "{}"), PortError::Retryable(_)));
        let secondary = r#"{"message":"You have exceeded a secondary rate limit"}"#;
        assert!(matches!(e(403, false, secondary), PortError::Retryable(_)));
        assert!(matches!(e(404, false, "{}"), PortError::NotFound(_)));
        assert!(matches!(e(422, false, "{}"), PortError::Invalid(_)));
        assert!(matches!(e(409, false, "{}"), PortError::Invalid(_)));
        assert!(matches!(e(429, false, "{}"), PortError::Retryable(_)));
        assert!(
            matches!(e(502, false, "<html>bad gateway</html>"), PortError::Retryable(m) if m.contains("bad gateway"))
        );
    }

    #[test]
    fn durations_read_like_config() {
        assert_eq!(human(Duration::from_secs(1800)), "30m");
        assert_eq!(human(Duration::from_secs(3725)), "1h2m5s");
        assert_eq!(human(Duration::from_millis(250)), "250ms");
    }

    #[test]
    fn tokens_with_header_breaking_characters_are_refused() {
        let err = GithubForge::new(&Secret::new("abc\ndef"), DEFAULT_API_URL).unwrap_err();
        assert!(matches!(err, ForgeSetupError::BadCharacters { .. }));
        assert!(!err.to_string().contains("abc"));
        let err = GithubForge::new(&Secret::new(""), DEFAULT_API_URL).unwrap_err();
        assert!(matches!(err, ForgeSetupError::Empty { .. }));
    }
}

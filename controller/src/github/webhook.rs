//! GitHub webhook intake: proving a delivery came from GitHub, and turning its JSON into
//! tollgate's own [`GithubEvent`].
//!
//! This module owns the first two steps of `POST /webhooks/github`: [`verify_signature`] and
//! [`parse_event`]. It is pure apart from [`WebhookSecrets::from_file`] reading the secrets file;
//! recording the fact and waking the reconciler belong to the HTTP layer and the store.
//!
//! # Guarantees
//! - Nothing is recorded unless [`verify_signature`] returned `Ok` for the raw body exactly as it
//!   was received: HMAC-SHA256 as sent in `X-Hub-Signature-256`, compared in constant time
//!   ([`Mac::verify_slice`]). Callers verify first and parse second.
//! - Several secrets are accepted at once, so a secret can be rotated without downtime: add the
//!   new one, change it on GitHub, then remove the old one.
//! - A bad header or payload gives an error that says what is wrong (which header rule, which
//!   JSON field). No input, however malformed, makes this module panic.
//!
//! # Must never
//! - print, log or return a secret or the MAC it expects: secrets stay [`Secret`]s, and no error
//!   carries a secret, a computed digest or the header's value;
//! - act on a delivery: it only produces values for the caller to record.
//!
//! # Caveats
//! - GitHub caps how many commits a `push` payload lists, so [`PushEvent::changed_files`] can be
//!   incomplete for very large pushes; the compare API has the full list.
//! - Events other than `ping`, `push` and `workflow_run` become [`GithubEvent::Ignored`] without
//!   their body being read.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use serde::Serialize;
use serde_json::{Map, Value};
use sha2::Sha256;

use crate::domain::approval::contributor_set;
use crate::domain::{Contributor, ContributorRole};
use crate::secret::Secret;

/// Header carrying the HMAC-SHA256 of the body (`sha256=<64 hex digits>`).
pub const SIGNATURE_HEADER: &str = "x-hub-signature-256";
/// Header naming the event (`push`, `workflow_run`, `ping`, …).
pub const EVENT_HEADER: &str = "x-github-event";
/// Header carrying the delivery's unique id, used to deduplicate redeliveries.
pub const DELIVERY_HEADER: &str = "x-github-delivery";

/// Environment variable holding the secrets, comma-separated.
pub const SECRET_ENV: &str = "TOLLGATE_GITHUB_WEBHOOK_SECRET";
/// Environment variable naming a file holding the secrets, one per line.
pub const SECRET_FILE_ENV: &str = "TOLLGATE_GITHUB_WEBHOOK_SECRET_FILE";

/// The shortest webhook secret accepted, in bytes (a guessable secret makes HMAC worthless).
pub const MIN_SECRET_BYTES: usize = 32;

const SIGNATURE_PREFIX: &str = "sha256=";
const DIGEST_HEX_LEN: usize = 64;

type HmacSha256 = Hmac<Sha256>;

// ---------------------------------------------------------------------------------------------
// Secrets
// ---------------------------------------------------------------------------------------------

/// The webhook secrets currently accepted: never empty, no entry empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookSecrets(Vec<Secret>);

/// Why the webhook secrets could not be loaded. Never contains a secret.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("set {SECRET_ENV} or {SECRET_FILE_ENV} (the GitHub webhook secret)")]
    NotSet,
    #[error("set only one of {SECRET_ENV} and {SECRET_FILE_ENV}")]
    BothSet,
    #[error("{origin} is not valid UTF-8")]
    NotUnicode { origin: String },
    #[error("{origin}: no webhook secret given")]
    NoSecrets { origin: String },
    #[error("{origin}: webhook secret #{position} is empty")]
    EmptyEntry { origin: String, position: usize },
    #[error(
        "{origin}: webhook secret #{position} is {length} bytes; at least {MIN_SECRET_BYTES} are required (generate one with `openssl rand -hex 32`)"
    )]
    TooShort {
        origin: String,
        position: usize,
        length: usize,
    },
    #[error("cannot read webhook secrets file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl WebhookSecrets {
    /// Accepts `secrets` if there is at least one, none is empty and each has at least
    /// [`MIN_SECRET_BYTES`] bytes.
    pub fn new(secrets: Vec<Secret>, origin: &str) -> Result<Self, SecretsError> {
        if secrets.is_empty() {
            return Err(SecretsError::NoSecrets {
                origin: origin.to_owned(),
            });
        }
        if let Some(i) = secrets.iter().position(|s| s.expose().is_empty()) {
            return Err(empty_entry(origin, i));
        }
        let short = secrets
            .iter()
            .position(|s| s.expose().len() < MIN_SECRET_BYTES);
        match short {
            Some(i) => Err(SecretsError::TooShort {
                origin: origin.to_owned(),
                position: i + 1,
                length: secrets[i].expose().len(),
            }),
            None => Ok(Self(secrets)),
        }
    }

    /// Parses `a,b`: comma-separated, each trimmed; an empty entry is an error.
    pub fn from_env_value(value: &str) -> Result<Self, SecretsError> {
        let secrets = value.split(',').map(|s| Secret::new(s.trim())).collect();
        Self::new(secrets, SECRET_ENV)
    }

    /// Reads one secret per line (trimmed); blank lines are skipped.
    pub fn from_file(path: &Path) -> Result<Self, SecretsError> {
        let text = std::fs::read_to_string(path).map_err(|source| SecretsError::Read {
            path: path.to_owned(),
            source,
        })?;
        let secrets = text
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty())
            .map(Secret::new)
            .collect();
        Self::new(secrets, &path.display().to_string())
    }

    /// Reads [`SECRET_ENV`] or [`SECRET_FILE_ENV`] (exactly one must be set).
    pub fn from_env() -> Result<Self, SecretsError> {
        Self::from_vars(|key| std::env::var_os(key))
    }

    /// Like [`WebhookSecrets::from_env`], with the variables looked up through `var`.
    pub fn from_vars(var: impl Fn(&str) -> Option<OsString>) -> Result<Self, SecretsError> {
        match (var(SECRET_ENV), var(SECRET_FILE_ENV)) {
            (Some(_), Some(_)) => Err(SecretsError::BothSet),
            (None, None) => Err(SecretsError::NotSet),
            (Some(value), None) => Self::from_env_value(&unicode(value, SECRET_ENV)?),
            (None, Some(path)) => Self::from_file(Path::new(&path)),
        }
    }

    /// How many secrets are accepted.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Always `false`: construction rejects an empty list.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn empty_entry(origin: &str, index: usize) -> SecretsError {
    SecretsError::EmptyEntry {
        origin: origin.to_owned(),
        position: index + 1,
    }
}

fn unicode(value: OsString, origin: &str) -> Result<String, SecretsError> {
    value.into_string().map_err(|_| SecretsError::NotUnicode {
        origin: origin.to_owned(),
    })
}

// ---------------------------------------------------------------------------------------------
// Signature
// ---------------------------------------------------------------------------------------------

/// Why a delivery's signature was refused. Carries neither the header's value nor any digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("missing X-Hub-Signature-256 header")]
    Missing,
    #[error("malformed X-Hub-Signature-256 header: {0}")]
    Malformed(Malformed),
    #[error("X-Hub-Signature-256 does not match the body under any configured secret")]
    Mismatch,
}

/// What is wrong with the shape of an `X-Hub-Signature-256` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("expected the prefix `sha256=`")]
    Prefix,
    #[error("the digest must be 64 hex digits")]
    Length,
    #[error("the digest is not hexadecimal")]
    NotHex,
}

/// Checks `header` (`X-Hub-Signature-256`) against the raw `body` under every accepted secret.
///
/// Every secret is tried, whichever matches, so the time taken does not depend on which one does.
pub fn verify_signature(
    secrets: &WebhookSecrets,
    header: Option<&str>,
    body: &[u8],
) -> Result<(), SignatureError> {
    let digest = decode_header(header.ok_or(SignatureError::Missing)?)?;
    let matched = secrets.0.iter().fold(false, |found, secret| {
        found | mac_matches(secret, body, &digest)
    });
    if matched {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

/// The `X-Hub-Signature-256` value GitHub would send for `body` under `secret`.
///
/// For senders (tests, the demo). Never compare its output to a received header: use
/// [`verify_signature`], which compares in constant time.
pub fn sign(secret: &Secret, body: &[u8]) -> String {
    let digest = hmac_for(secret)
        .map(|mac| mac.chain_update(body).finalize().into_bytes())
        .unwrap_or_default();
    format!("{SIGNATURE_PREFIX}{}", hex::encode(digest))
}

fn decode_header(header: &str) -> Result<Vec<u8>, SignatureError> {
    let malformed = SignatureError::Malformed;
    let hex_digest = header
        .strip_prefix(SIGNATURE_PREFIX)
        .ok_or(malformed(Malformed::Prefix))?;
    if hex_digest.len() != DIGEST_HEX_LEN {
        return Err(malformed(Malformed::Length));
    }
    hex::decode(hex_digest).map_err(|_| malformed(Malformed::NotHex))
}

fn mac_matches(secret: &Secret, body: &[u8], digest: &[u8]) -> bool {
    hmac_for(secret).is_some_and(|mac| mac.chain_update(body).verify_slice(digest).is_ok())
}

fn hmac_for(secret: &Secret) -> Option<HmacSha256> {
    // HMAC takes keys of any length, so this never fails in practice.
    HmacSha256::new_from_slice(secret.expose().as_bytes()).ok()
}

// ---------------------------------------------------------------------------------------------
// Events
// ---------------------------------------------------------------------------------------------

/// A webhook delivery, reduced to what tollgate acts on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum GithubEvent {
    /// Sent when the webhook is created; proves the secret is right.
    Ping,
    Push(PushEvent),
    WorkflowRun(WorkflowRunEvent),
    /// Any other event: acknowledged, not acted on.
    Ignored {
        event: String,
    },
}

/// A `push`: a ref was created, moved or deleted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PushEvent {
    /// `owner/name`.
    pub repository: String,
    /// The full ref, e.g. `refs/heads/main` or `refs/tags/v1`.
    pub git_ref: String,
    /// The branch name, only for `refs/heads/*`.
    pub branch: Option<String>,
    pub deleted: bool,
    pub created: bool,
    /// The sha the ref pointed at before the push (all zeros when created).
    pub before: String,
    /// The sha the ref now points at (all zeros when deleted).
    pub after: String,
    /// A force push: `after` need not descend from `before`.
    pub forced: bool,
    pub head_commit: Option<CommitInfo>,
    pub compare_url: Option<String>,
    /// Who pushed (git name).
    pub pusher: String,
    /// Union of added, modified and removed paths over the listed commits, sorted.
    pub changed_files: Vec<String>,
    /// Everyone the payload names as having brought the change besides the head commit's
    /// author: its committer, the pusher, the sender, and the author and committer of every
    /// listed commit.
    pub contributors: Vec<Contributor>,
}

/// A `workflow_run`: a GitHub Actions run was requested, started or completed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorkflowRunEvent {
    /// `requested`, `in_progress` or `completed`.
    pub action: String,
    /// `owner/name` of the repository the webhook belongs to.
    pub repository: String,
    pub workflow_name: String,
    /// e.g. `.github/workflows/build.yml`.
    pub workflow_path: String,
    pub run_id: u64,
    pub run_url: String,
    pub status: String,
    pub conclusion: Option<String>,
    pub head_branch: Option<String>,
    pub head_sha: String,
    /// `owner/name` of the repository the run's commit comes from.
    pub head_repository: String,
    /// The commit comes from another repository (a fork): never trust it to deploy.
    pub from_fork: bool,
    pub head_commit: Option<CommitInfo>,
    /// Everyone the payload names as having brought the change besides the head commit's
    /// author: its committer, the run's actor and triggering actor, and the sender.
    pub contributors: Vec<Contributor>,
}

/// A commit as described in a payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CommitInfo {
    pub sha: String,
    pub message: String,
    pub author_name: String,
    pub author_email: String,
    /// GitHub login, when the payload gives one (`push` does, `workflow_run` does not).
    pub author_login: Option<String>,
    pub url: String,
}

/// Why a payload could not be parsed; `field` is a dotted path such as `workflow_run.head_sha`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("`{event}` payload is not valid JSON: {reason}")]
    Json { event: &'static str, reason: String },
    #[error("`{event}` payload is missing `{field}`")]
    MissingField { event: &'static str, field: String },
    #[error("`{event}` payload field `{field}` must be {expected}")]
    InvalidField {
        event: &'static str,
        field: String,
        expected: &'static str,
    },
}

/// Parses the body of a delivery whose `X-GitHub-Event` is `event`. Verify the signature first.
pub fn parse_event(event: &str, body: &[u8]) -> Result<GithubEvent, ParseError> {
    match event {
        "ping" => parse_json("ping", body).map(|_| GithubEvent::Ping),
        "push" => parse_push(body).map(GithubEvent::Push),
        "workflow_run" => parse_workflow_run(body).map(GithubEvent::WorkflowRun),
        other => Ok(GithubEvent::Ignored {
            event: other.to_owned(),
        }),
    }
}

fn parse_json(event: &'static str, body: &[u8]) -> Result<Value, ParseError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| ParseError::Json {
        event,
        reason: e.to_string(),
    })?;
    Obj::new(event, String::new(), &value)?;
    Ok(value)
}

fn parse_push(body: &[u8]) -> Result<PushEvent, ParseError> {
    let value = parse_json("push", body)?;
    let root = Obj::new("push", String::new(), &value)?;
    let git_ref = root.str("ref")?;
    Ok(PushEvent {
        repository: repository_name(&root.obj("repository")?)?,
        branch: git_ref.strip_prefix("refs/heads/").map(str::to_owned),
        git_ref: git_ref.to_owned(),
        deleted: root.bool("deleted")?,
        created: root.bool("created")?,
        before: root.sha("before")?,
        after: root.sha("after")?,
        // GitHub always sends it; without it the push cannot vouch for `before`.
        forced: root.opt_bool("forced")?.unwrap_or(true),
        head_commit: root.opt_obj("head_commit")?.map(push_commit).transpose()?,
        compare_url: root.opt_str("compare")?.map(str::to_owned),
        pusher: root.obj("pusher")?.str("name")?.to_owned(),
        changed_files: changed_files(&root)?,
        contributors: push_contributors(&root)?,
    })
}

/// A person in a payload (`{"name", "email", "username"}` or `{"login"}`), in `role`.
fn person(
    o: Option<Obj<'_>>,
    role: ContributorRole,
    login_key: &str,
) -> Result<Option<Contributor>, ParseError> {
    let Some(o) = o else {
        return Ok(None);
    };
    Ok(Contributor::new(
        role,
        o.opt_str(login_key)?,
        o.opt_str("email")?,
    ))
}

/// The pusher, the sender, the head commit's committer, and the author and committer of
/// every listed commit.
fn push_contributors(root: &Obj<'_>) -> Result<Vec<Contributor>, ParseError> {
    use ContributorRole as R;
    let mut all = vec![
        person(root.opt_obj("pusher")?, R::Pusher, "name")?,
        person(root.opt_obj("sender")?, R::Sender, "login")?,
    ];
    if let Some(head) = root.opt_obj("head_commit")? {
        all.push(person(
            head.opt_obj("committer")?,
            R::Committer,
            "username",
        )?);
    }
    for commit in root.opt_array("commits")? {
        let commit = commit.into_obj()?;
        all.push(person(
            commit.opt_obj("author")?,
            R::CommitAuthor,
            "username",
        )?);
        all.push(person(
            commit.opt_obj("committer")?,
            R::CommitCommitter,
            "username",
        )?);
    }
    Ok(contributor_set(all.into_iter().flatten()))
}

/// The head commit's committer, the run's actor and triggering actor, and the sender.
fn run_contributors(root: &Obj<'_>, run: &Obj<'_>) -> Result<Vec<Contributor>, ParseError> {
    use ContributorRole as R;
    let mut all = vec![
        person(run.opt_obj("actor")?, R::WorkflowActor, "login")?,
        person(
            run.opt_obj("triggering_actor")?,
            R::TriggeringActor,
            "login",
        )?,
        person(root.opt_obj("sender")?, R::Sender, "login")?,
    ];
    if let Some(head) = run.opt_obj("head_commit")? {
        all.push(person(
            head.opt_obj("committer")?,
            R::Committer,
            "username",
        )?);
    }
    Ok(contributor_set(all.into_iter().flatten()))
}

fn push_commit(commit: Obj<'_>) -> Result<CommitInfo, ParseError> {
    let author = commit.obj("author")?;
    Ok(CommitInfo {
        sha: commit.sha("id")?,
        message: commit.str("message")?.to_owned(),
        author_name: author.str("name")?.to_owned(),
        author_email: author.str("email")?.to_owned(),
        author_login: author.opt_str("username")?.map(str::to_owned),
        url: commit.str("url")?.to_owned(),
    })
}

fn changed_files(root: &Obj<'_>) -> Result<Vec<String>, ParseError> {
    let mut files = BTreeSet::new();
    for commit in root.opt_array("commits")? {
        let commit = commit.into_obj()?;
        for list in ["added", "modified", "removed"] {
            for path in commit.opt_array(list)? {
                files.insert(path.as_str()?.to_owned());
            }
        }
    }
    Ok(files.into_iter().collect())
}

fn parse_workflow_run(body: &[u8]) -> Result<WorkflowRunEvent, ParseError> {
    let value = parse_json("workflow_run", body)?;
    let root = Obj::new("workflow_run", String::new(), &value)?;
    let run = root.obj("workflow_run")?;
    let workflow = root.opt_obj("workflow")?;
    let head_repo = run.obj("head_repository")?;
    let repository = repository_name(&root.obj("repository")?)?;
    let head_repository = repository_name(&head_repo)?;
    Ok(WorkflowRunEvent {
        action: root.str("action")?.to_owned(),
        from_fork: head_repository != repository,
        repository,
        workflow_name: workflow_field(workflow.as_ref(), &run, "name")?,
        workflow_path: workflow_field(workflow.as_ref(), &run, "path")?,
        run_id: run.u64("id")?,
        run_url: run.str("html_url")?.to_owned(),
        status: run.str("status")?.to_owned(),
        conclusion: run.opt_str("conclusion")?.map(str::to_owned),
        head_branch: run.opt_str("head_branch")?.map(str::to_owned),
        head_sha: run.sha("head_sha")?,
        head_commit: run_commit(&run, &head_repo)?,
        head_repository,
        contributors: run_contributors(&root, &run)?,
    })
}

/// `workflow.<key>` when the payload has it (it names the workflow file), else
/// `workflow_run.<key>`.
fn workflow_field(
    workflow: Option<&Obj<'_>>,
    run: &Obj<'_>,
    key: &str,
) -> Result<String, ParseError> {
    let from_workflow = match workflow {
        Some(w) => w.opt_str(key)?.filter(|s| !s.is_empty()),
        None => None,
    };
    match from_workflow {
        Some(value) => Ok(value.to_owned()),
        None => run.str(key).map(str::to_owned),
    }
}

fn run_commit(run: &Obj<'_>, head_repo: &Obj<'_>) -> Result<Option<CommitInfo>, ParseError> {
    let Some(commit) = run.opt_obj("head_commit")? else {
        return Ok(None);
    };
    let author = commit.obj("author")?;
    let sha = commit.sha("id")?;
    Ok(Some(CommitInfo {
        url: format!("{}/commit/{sha}", head_repo.str("html_url")?),
        message: commit.str("message")?.to_owned(),
        author_name: author.str("name")?.to_owned(),
        author_email: author.str("email")?.to_owned(),
        author_login: None,
        sha,
    }))
}

fn repository_name(repo: &Obj<'_>) -> Result<String, ParseError> {
    let name = repo.str("full_name")?;
    match name.split_once('/') {
        Some((owner, rest)) if !owner.is_empty() && !rest.is_empty() && !rest.contains('/') => {
            Ok(name.to_owned())
        }
        _ => Err(repo.invalid("full_name", "`owner/name`")),
    }
}

// ---------------------------------------------------------------------------------------------
// Path-aware JSON access: every error names the field it is about.
// ---------------------------------------------------------------------------------------------

/// A JSON object inside a payload, with its dotted path for error messages.
struct Obj<'a> {
    event: &'static str,
    path: String,
    map: &'a Map<String, Value>,
}

/// Any JSON value inside a payload, with its path.
struct Node<'a> {
    event: &'static str,
    path: String,
    value: &'a Value,
}

impl<'a> Obj<'a> {
    fn new(event: &'static str, path: String, value: &'a Value) -> Result<Self, ParseError> {
        match value.as_object() {
            Some(map) => Ok(Self { event, path, map }),
            None => Err(invalid(event, shown(&path), "an object")),
        }
    }

    fn field_path(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    /// The value at `key`, or `None` when absent or `null`.
    fn opt(&self, key: &str) -> Option<Node<'a>> {
        let value = self.map.get(key).filter(|v| !v.is_null())?;
        Some(Node {
            event: self.event,
            path: self.field_path(key),
            value,
        })
    }

    fn req(&self, key: &str) -> Result<Node<'a>, ParseError> {
        self.opt(key).ok_or_else(|| ParseError::MissingField {
            event: self.event,
            field: self.field_path(key),
        })
    }

    fn invalid(&self, key: &str, expected: &'static str) -> ParseError {
        invalid(self.event, self.field_path(key), expected)
    }

    fn str(&self, key: &str) -> Result<&'a str, ParseError> {
        self.req(key)?.as_str()
    }

    fn opt_str(&self, key: &str) -> Result<Option<&'a str>, ParseError> {
        self.opt(key).map(|n| n.as_str()).transpose()
    }

    fn opt_bool(&self, key: &str) -> Result<Option<bool>, ParseError> {
        self.opt(key)
            .map(|n| n.value.as_bool().ok_or_else(|| n.invalid("a boolean")))
            .transpose()
    }

    fn bool(&self, key: &str) -> Result<bool, ParseError> {
        let node = self.req(key)?;
        node.value
            .as_bool()
            .ok_or_else(|| node.invalid("a boolean"))
    }

    fn u64(&self, key: &str) -> Result<u64, ParseError> {
        let node = self.req(key)?;
        node.value
            .as_u64()
            .ok_or_else(|| node.invalid("a non-negative integer"))
    }

    /// A commit sha: 40 (SHA-1) or 64 (SHA-256) hex digits.
    fn sha(&self, key: &str) -> Result<String, ParseError> {
        let sha = self.str(key)?;
        let hex = sha.bytes().all(|b| b.is_ascii_hexdigit());
        if hex && matches!(sha.len(), 40 | 64) {
            Ok(sha.to_owned())
        } else {
            Err(self.invalid(key, "a commit sha (40 or 64 hex digits)"))
        }
    }

    fn obj(&self, key: &str) -> Result<Obj<'a>, ParseError> {
        self.req(key)?.into_obj()
    }

    fn opt_obj(&self, key: &str) -> Result<Option<Obj<'a>>, ParseError> {
        self.opt(key).map(|n| n.into_obj()).transpose()
    }

    /// The elements of the array at `key`; absent or `null` reads as empty.
    fn opt_array(&self, key: &str) -> Result<Vec<Node<'a>>, ParseError> {
        let Some(node) = self.opt(key) else {
            return Ok(Vec::new());
        };
        let items = node
            .value
            .as_array()
            .ok_or_else(|| node.invalid("an array"))?;
        Ok(items
            .iter()
            .enumerate()
            .map(|(i, value)| Node {
                event: self.event,
                path: format!("{}[{i}]", node.path),
                value,
            })
            .collect())
    }
}

impl<'a> Node<'a> {
    fn invalid(&self, expected: &'static str) -> ParseError {
        invalid(self.event, self.path.clone(), expected)
    }

    fn as_str(&self) -> Result<&'a str, ParseError> {
        self.value.as_str().ok_or_else(|| self.invalid("a string"))
    }

    fn into_obj(self) -> Result<Obj<'a>, ParseError> {
        Obj::new(self.event, self.path, self.value)
    }
}

fn invalid(event: &'static str, field: String, expected: &'static str) -> ParseError {
    ParseError::InvalidField {
        event,
        field,
        expected,
    }
}

fn shown(path: &str) -> String {
    if path.is_empty() {
        "(the payload)".to_owned()
    } else {
        path.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "first-secret-0123456789abcdef0123456789";
    const B: &str = "second-secret-0123456789abcdef012345678";
    const HUNTER: &str = "hunter2-hunter2-hunter2-hunter2-hunter2";

    fn secrets(list: &[&str]) -> WebhookSecrets {
        WebhookSecrets::new(list.iter().map(|s| Secret::new(*s)).collect(), "test").unwrap()
    }

    #[test]
    fn github_documented_vector_verifies() {
        // GitHub's documented example secret is shorter than tollgate accepts; built directly.
        let s = WebhookSecrets(vec![Secret::new("It's a Secret to Everybody")]);
        let header = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert_eq!(verify_signature(&s, Some(header), b"Hello, World!"), Ok(()));
        assert_eq!(
            sign(&Secret::new("It's a Secret to Everybody"), b"Hello, World!"),
            header
        );
    }

    #[test]
    fn header_shape_errors_are_distinct() {
        let s = secrets(&[A]);
        let verify = |h: &str| verify_signature(&s, Some(h), b"x");
        let zeros = "0".repeat(64);
        assert_eq!(
            verify(&format!("sha1={zeros}")),
            Err(SignatureError::Malformed(Malformed::Prefix))
        );
        assert_eq!(
            verify(&format!("sha256={}", &zeros[1..])),
            Err(SignatureError::Malformed(Malformed::Length))
        );
        assert_eq!(
            verify(&format!("sha256={}zz", &zeros[2..])),
            Err(SignatureError::Malformed(Malformed::NotHex))
        );
        assert_eq!(
            verify(&format!("sha256={zeros}")),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_signature(&s, None, b"x"),
            Err(SignatureError::Missing)
        );
    }

    #[test]
    fn errors_never_show_the_secret_or_the_expected_mac() {
        let s = secrets(&[HUNTER]);
        let expected = sign(&Secret::new(HUNTER), b"body");
        let err = verify_signature(&s, Some(&format!("sha256={}", "0".repeat(64))), b"body");
        let shown = format!("{err:?} {} {s:?}", err.unwrap_err());
        assert!(!shown.contains("hunter2"));
        let short = WebhookSecrets::from_env_value("hunter2")
            .unwrap_err()
            .to_string();
        assert!(!short.contains("hunter2"), "{short}");
        assert!(!shown.contains(&expected[SIGNATURE_PREFIX.len()..]));
    }

    #[test]
    fn env_value_is_split_trimmed_and_checked() {
        let s = WebhookSecrets::from_env_value(&format!(" {A} , {B} ")).unwrap();
        assert_eq!(s, secrets(&[A, B]));
        let err = WebhookSecrets::from_env_value(&format!("{A},,{B}")).unwrap_err();
        assert!(
            matches!(err, SecretsError::EmptyEntry { position: 2, .. }),
            "{err}"
        );
        assert!(WebhookSecrets::from_env_value("").is_err());
        assert!(WebhookSecrets::from_env_value(" , ").is_err());
    }

    #[test]
    fn file_has_one_secret_per_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets");
        std::fs::write(&path, format!("{A}\r\n  {B} \n\n")).unwrap();
        let s = WebhookSecrets::from_file(&path).unwrap();
        assert_eq!(s, secrets(&[A, B]));
        std::fs::write(&path, "\n \n").unwrap();
        let err = WebhookSecrets::from_file(&path).unwrap_err();
        assert!(matches!(err, SecretsError::NoSecrets { .. }), "{err}");
        let missing = WebhookSecrets::from_file(&dir.path().join("nope")).unwrap_err();
        assert!(missing.to_string().contains("nope"), "{missing}");
    }

    #[test]
    fn from_vars_needs_exactly_one_source() {
        let none = WebhookSecrets::from_vars(|_| None).unwrap_err();
        assert!(none.to_string().contains(SECRET_ENV), "{none}");
        let both = WebhookSecrets::from_vars(|_| Some("x".into())).unwrap_err();
        assert!(matches!(both, SecretsError::BothSet));
        let both_secrets = format!("{A},{B}");
        let env =
            WebhookSecrets::from_vars(|k| (k == SECRET_ENV).then(|| both_secrets.clone().into()));
        assert_eq!(env.unwrap().len(), 2);
    }

    #[test]
    fn from_vars_reads_the_file_variable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        std::fs::write(&path, format!("{A}\n")).unwrap();
        let file = path.clone().into_os_string();
        let s = WebhookSecrets::from_vars(|k| (k == SECRET_FILE_ENV).then(|| file.clone()));
        assert_eq!(s.unwrap(), secrets(&[A]));
    }

    #[test]
    fn secrets_shorter_than_32_bytes_are_refused_by_position() {
        let short = "s".repeat(MIN_SECRET_BYTES - 1);
        let err = WebhookSecrets::from_env_value(&format!("{A},{short}")).unwrap_err();
        assert!(
            matches!(
                err,
                SecretsError::TooShort {
                    position: 2,
                    length: 31,
                    ..
                }
            ),
            "{err}"
        );
        let message = err.to_string();
        assert!(message.contains("at least 32"), "{message}");
        assert!(!message.contains(&short), "{message}");
        assert!(WebhookSecrets::from_env_value(&"s".repeat(MIN_SECRET_BYTES)).is_ok());
    }

    #[test]
    fn changed_files_is_the_sorted_union_over_commits() {
        let body = serde_json::json!({
            "commits": [
                {"added": ["b.rs"], "modified": ["a.rs"], "removed": []},
                {"added": [], "modified": ["a.rs", "c.rs"], "removed": ["d.rs"]},
            ]
        });
        let root = Obj::new("push", String::new(), &body).unwrap();
        assert_eq!(
            changed_files(&root).unwrap(),
            ["a.rs", "b.rs", "c.rs", "d.rs"]
        );
    }

    #[test]
    fn errors_name_the_field_by_its_path() {
        let body = serde_json::json!({"commits": [{"added": [1]}]});
        let root = Obj::new("push", String::new(), &body).unwrap();
        let err = changed_files(&root).unwrap_err();
        assert_eq!(
            err.to_string(),
            "`push` payload field `commits[0].added[0]` must be a string"
        );
        let err = parse_event("push", b"{}").unwrap_err();
        assert_eq!(err.to_string(), "`push` payload is missing `ref`");
        let err = parse_event("ping", b"[1]").unwrap_err();
        assert!(err.to_string().contains("must be an object"), "{err}");
    }

    #[test]
    fn unknown_events_are_ignored_without_reading_the_body() {
        let event = parse_event("issues", b"not json").unwrap();
        assert_eq!(
            event,
            GithubEvent::Ignored {
                event: "issues".into()
            }
        );
    }
}

//! Turning verified webhook events into releases.
//!
//! Owns the decision what a `push` or `workflow_run` means for each pipeline, and records it
//! through the [`Engine`]'s ingest API. The HTTP layer verifies and parses first
//! ([`super::webhook`]); this module never sees an unverified delivery.
//!
//! # Rules
//! - A pipeline without `source.build_workflow` releases on a `push` to its branch of its
//!   repository. Tags, branch deletions, other branches and other repositories are ignored.
//! - A pipeline with a build workflow releases when that workflow (`build.yml`, matched
//!   against the end of the run's `workflow_path`) `completed` with `success` on its branch.
//!   A build that concluded otherwise is written to the pipeline's event log: nothing promoted.
//! - A `workflow_run` whose head repository is a fork is never acted on, whatever it claims;
//!   the refusal is written to the event log of the pipeline it targeted.
//! - Every release stores who brought it (the payload's pusher, sender, committers, commit
//!   authors, workflow actors). A push to the branch of a pipeline that releases on its build
//!   workflow keeps the people it names for the release that build makes (a `workflow_run`
//!   does not name them), before the delivery is acknowledged.
//! - A push to `controller.config_repository` / `config_branch` touching `config_path` yields
//!   [`Outcome::ConfigChanged`]; [`apply_config_change`] fetches, validates and applies it.
//!
//! # Guarantees
//! - Each fact is recorded in one transaction, deduplicated by delivery: a delivery that
//!   concerns several pipelines is recorded once per pipeline under `<delivery>#<pipeline>`,
//!   a delivery that concerns none under its own id. A redelivery changes nothing.
//! - Every ignored event gets a reason, logged and returned.
//!
//! # Caveats
//! - GitHub lists at most 20 commits in a `push`; a config change buried in a larger push
//!   is not seen until the next push touching the file (or a restart).
//! - A build-failure or fork note is written in the same transaction as its delivery's
//!   dedupe, so a crash can neither lose it nor write it twice.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::forge::{Ancestry, GithubForge};
use super::webhook::{CommitInfo, GithubEvent, PushEvent, WorkflowRunEvent};
use crate::config::{self, Config, ConfigError, Pipeline};
use crate::domain::{Contributor, ContributorRole, ReleaseId};
use crate::engine::{Delivery, Ingested, NewRelease};
use crate::engine::{Engine, EngineError};
use crate::store::{AppliedConfig, EventNote, Newest, PushLink};

pub use super::commit_files::load_applied;

/// What one delivery led to, per pipeline concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A `ping`.
    Pong,
    /// A new release was recorded.
    Released {
        pipeline: String,
        release: ReleaseId,
    },
    /// Seen before (the delivery, or the commit in that pipeline): nothing changed.
    Duplicate { pipeline: Option<String> },
    /// Concerned the pipeline but promotes nothing (failed build, fork); in its event log.
    NotPromoted { pipeline: String, reason: String },
    /// Nothing to do, and why.
    Ignored { reason: String },
    /// The controller's own configuration file changed in this commit.
    ConfigChanged { sha: String },
}

/// Everything a delivery led to.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IntakeOutcome {
    pub outcomes: Vec<Outcome>,
}

impl IntakeOutcome {
    /// The commit whose configuration should be loaded, if the delivery changed it.
    pub fn config_change(&self) -> Option<&str> {
        self.outcomes.iter().find_map(|o| match o {
            Outcome::ConfigChanged { sha } => Some(sha.as_str()),
            _ => None,
        })
    }

    /// One line for the HTTP answer and the log.
    pub fn summary(&self) -> String {
        let parts: Vec<String> = self.outcomes.iter().map(describe).collect();
        parts.join("; ")
    }
}

fn describe(o: &Outcome) -> String {
    match o {
        Outcome::Pong => "pong".into(),
        Outcome::Released { pipeline, release } => {
            format!("{pipeline}: release {release} recorded")
        }
        Outcome::Duplicate { pipeline: Some(p) } => format!("{p}: already recorded"),
        Outcome::Duplicate { pipeline: None } => "already recorded".into(),
        Outcome::NotPromoted { pipeline, reason } => format!("{pipeline}: not promoted: {reason}"),
        Outcome::Ignored { reason } => format!("ignored: {reason}"),
        Outcome::ConfigChanged { sha } => format!("configuration changed in {sha}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Decisions (pure)
// ---------------------------------------------------------------------------------------------

/// What an event means for one pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Not this pipeline's repository or workflow.
    NotMine,
    Release(Box<NewRelease>),
    /// Note in the pipeline's event log why nothing is promoted.
    Refuse(String),
    /// Nothing to do for this pipeline, and why.
    Skip(String),
}

fn same_repo(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

/// What a `push` means for `p`.
pub fn decide_push(p: &Pipeline, push: &PushEvent) -> Decision {
    if !same_repo(&push.repository, &p.source.repository) {
        return Decision::NotMine;
    }
    let Some(branch) = push.branch.as_deref() else {
        return Decision::Skip(format!("{} is not a branch", push.git_ref));
    };
    if push.deleted {
        return Decision::Skip(format!("branch {branch} was deleted"));
    }
    if branch != p.source.branch {
        return Decision::Skip(format!(
            "push to {branch}, pipeline follows {}",
            p.source.branch
        ));
    }
    if let Some(w) = &p.source.build_workflow {
        return Decision::Skip(format!("waiting for build workflow {w}"));
    }
    let url = push.compare_url.clone();
    Decision::Release(new_release(
        p,
        &push.after,
        push.head_commit.as_ref(),
        &push.pusher,
        url,
        &push.contributors,
    ))
}

/// Does `workflow_path` (`.github/workflows/build.yml`) name the workflow file `file`?
pub fn is_workflow(workflow_path: &str, file: &str) -> bool {
    let file = file.trim_start_matches("./");
    workflow_path == file || workflow_path.ends_with(&format!("/{file}"))
}

/// What a `workflow_run` means for `p`.
pub fn decide_run(p: &Pipeline, run: &WorkflowRunEvent) -> Decision {
    let Some(build) = &p.source.build_workflow else {
        return Decision::NotMine;
    };
    if !same_repo(&run.repository, &p.source.repository) || !is_workflow(&run.workflow_path, build)
    {
        return Decision::NotMine;
    }
    if run.from_fork {
        return Decision::Refuse(format!(
            "build run {} comes from the fork {}: never deployed",
            run.run_url, run.head_repository
        ));
    }
    if run.action != "completed" {
        return Decision::Skip(format!("build run {} is {}", run.run_id, run.action));
    }
    let branch = run.head_branch.as_deref().unwrap_or("");
    if branch != p.source.branch {
        return Decision::Skip(format!(
            "build on {branch}, pipeline follows {}",
            p.source.branch
        ));
    }
    match run.conclusion.as_deref() {
        Some("success") => {
            let url = Some(run.run_url.clone());
            Decision::Release(new_release(
                p,
                &run.head_sha,
                run.head_commit.as_ref(),
                "",
                url,
                &run.contributors,
            ))
        }
        other => Decision::Refuse(format!(
            "build {build} concluded {} for {}: nothing promoted ({})",
            other.unwrap_or("without a conclusion"),
            crate::domain::short_sha(&run.head_sha),
            run.run_url
        )),
    }
}

fn new_release(
    p: &Pipeline,
    sha: &str,
    commit: Option<&CommitInfo>,
    pusher: &str,
    url: Option<String>,
    contributors: &[Contributor],
) -> Box<NewRelease> {
    let (name, email, login, message) = match commit {
        Some(c) => (
            c.author_name.clone(),
            c.author_email.clone(),
            c.author_login.clone(),
            c.message.clone(),
        ),
        None => (pusher.to_owned(), String::new(), None, String::new()),
    };
    Box::new(NewRelease {
        pipeline: p.name.to_string(),
        sha: sha.to_owned(),
        branch: p.source.branch.clone(),
        author_name: name,
        author_email: email,
        author_login: login,
        contributors: contributors.to_vec(),
        message,
        url,
        alarm_override: None,
        window_override: None,
    })
}

/// Did this push change the controller's own configuration file?
pub fn config_change(config: &Config, push: &PushEvent) -> Option<String> {
    let c = &config.controller;
    let repo = c.config_repository.as_deref()?;
    let relevant = same_repo(&push.repository, repo)
        && push.branch.as_deref() == Some(c.config_branch.as_str())
        && !push.deleted
        && push.changed_files.iter().any(|f| f == &c.config_path);
    relevant.then(|| push.after.clone())
}

// ---------------------------------------------------------------------------------------------
// Recording
// ---------------------------------------------------------------------------------------------

/// Records what a verified delivery means, and says what happened.
///
/// `forge`, when GitHub access is configured, answers whether a build's commit is newer than
/// the pipeline's newest release when the pushes received cannot tell (see [`order`]).
pub async fn handle(
    engine: &Engine,
    forge: Option<&GithubForge>,
    delivery: &Delivery,
    event: GithubEvent,
) -> Result<IntakeOutcome, EngineError> {
    let config = engine.config();
    // A push's link is written in the same unit as the first release it makes (one durable
    // write per delivery), or on its own when it makes none.
    let link = match &event {
        GithubEvent::Push(push) => push_link(&config, push),
        _ => None,
    };
    let mut linked = false;
    let decisions: Vec<(String, Decision)> = match &event {
        GithubEvent::Ping => {
            return Ok(IntakeOutcome {
                outcomes: vec![Outcome::Pong],
            });
        }
        GithubEvent::Ignored { event } => {
            let reason = format!("`{event}` events are not used");
            return ignore(engine, delivery, vec![reason]).await;
        }
        GithubEvent::Push(push) => each(&config, |p| decide_push(p, push)),
        GithubEvent::WorkflowRun(run) => each(&config, |p| decide_run(p, run)),
    };
    // The pipelines only a commit this controller does not run yet has (it stands by until the
    // leader acts with it, or keeps its configuration over it) decide by that commit: their
    // releases are recorded now, and planned once the commit is in force.
    let waiting = waiting_config(engine, &config).await;
    let mut decisions = decisions;
    if let Some(w) = &waiting {
        let only_there = |p: &Pipeline| config.pipeline(&p.name).is_none();
        decisions.extend(match &event {
            GithubEvent::Push(push) => each(w, |p| match only_there(p) {
                true => decide_push(p, push),
                false => Decision::NotMine,
            }),
            GithubEvent::WorkflowRun(run) => each(w, |p| match only_there(p) {
                true => decide_run(p, run),
                false => Decision::NotMine,
            }),
            _ => vec![],
        });
    }
    let pipeline_of = |name: &str| {
        config
            .pipeline(name)
            .or_else(|| waiting.as_ref().and_then(|w| w.pipeline(name)))
            .cloned()
    };
    if let GithubEvent::Push(push) = &event {
        keep_push_people(engine, &config, push).await?;
    }
    let mut outcomes = Vec::new();
    let mut skipped = Vec::new();
    for (pipeline, decision) in decisions {
        match decision {
            Decision::NotMine => {}
            Decision::Skip(reason) => skipped.push(format!("{pipeline}: {reason}")),
            Decision::Release(r) => {
                let pending = link.as_ref().filter(|_| !linked);
                let p = pipeline_of(&pipeline)
                    .ok_or_else(|| EngineError::UnknownPipeline(pipeline.clone()))?;
                let (outcome, written) = release(engine, forge, delivery, &p, &r, pending).await?;
                linked |= written;
                outcomes.push(outcome);
            }
            Decision::Refuse(reason) => {
                outcomes.push(refuse(engine, delivery, &pipeline, reason).await?)
            }
        }
    }
    if let Some(link) = link.as_ref().filter(|_| !linked) {
        engine.record_push(link).await?;
    }
    if let GithubEvent::Push(push) = &event
        && let Some(sha) = config_change(&config, push)
    {
        // Deduplicated by delivery like every fact: a redelivered push announces nothing.
        let d = Delivery {
            source: delivery.source.clone(),
            id: format!("{}/config", delivery.id),
        };
        outcomes.push(match engine.acknowledge(&d, None).await? {
            Ingested::Recorded(()) => Outcome::ConfigChanged { sha },
            Ingested::Duplicate => Outcome::Duplicate { pipeline: None },
        });
    }
    if outcomes.is_empty() {
        let reasons = if skipped.is_empty() {
            vec![no_pipeline(&event)]
        } else {
            skipped
        };
        return ignore(engine, delivery, reasons).await;
    }
    Ok(IntakeOutcome { outcomes })
}

/// A push to the branch of a pipeline that releases on its build workflow: the people it names
/// are kept for the release the build makes (a `workflow_run` does not name the pusher or the
/// other commits' authors). Kept before the delivery is acknowledged.
async fn keep_push_people(
    engine: &Engine,
    config: &Config,
    push: &PushEvent,
) -> Result<(), EngineError> {
    let built = config.pipelines.iter().any(|p| {
        p.source.build_workflow.is_some()
            && same_repo(&push.repository, &p.source.repository)
            && push.branch.as_deref() == Some(p.source.branch.as_str())
    });
    if !built || push.deleted {
        return Ok(());
    }
    let author = push.head_commit.as_ref().and_then(|c| {
        Contributor::new(
            ContributorRole::Author,
            c.author_login.as_deref(),
            Some(&c.author_email),
        )
    });
    let people: Vec<Contributor> = author
        .into_iter()
        .chain(push.contributors.iter().cloned())
        .collect();
    engine.record_push_contributors(&push.after, &people).await
}

/// The configuration of the commit applied from the configuration repository when this
/// controller does not run it: it stands by until the leader acts with it, or keeps its
/// configuration over it ([`crate::engine::takeover`]). `None` on a controller that acts
/// without keeping (nothing is read), when it runs the commit recorded, or when the commit
/// cannot be loaded here. Loaded once per commit.
async fn waiting_config(engine: &Engine, config: &Config) -> Option<Arc<Config>> {
    type Loaded = (crate::config::ConfigCommit, Option<Arc<Config>>);
    // A commit that cannot be loaded here is tried once, not at every delivery.
    static LOADED: std::sync::Mutex<Option<Loaded>> = std::sync::Mutex::new(None);
    if engine.leadership().may_act() && !engine.keeps_config() {
        return None;
    }
    let version = engine.reads().applied_config_version().await.ok()??;
    if config.applied_from.as_ref() == Some(&version)
        || config.controller.config_repository.as_deref() != Some(version.repository.as_str())
    {
        return None;
    }
    let cached = LOADED.lock().unwrap_or_else(|p| p.into_inner()).clone();
    if let Some((_, loaded)) = cached.filter(|(c, _)| *c == version) {
        return loaded;
    }
    let applied = engine.reads().applied_config().await.ok()??;
    let loaded = load_applied(&applied).ok().map(|l| Arc::new(l.config));
    *LOADED.lock().unwrap_or_else(|p| p.into_inner()) = Some((applied.commit(), loaded.clone()));
    loaded
}

/// The decision of every pipeline the event concerns (those it is not about are left out:
/// with many pipelines, most of them).
fn each(config: &Config, decide: impl Fn(&Pipeline) -> Decision) -> Vec<(String, Decision)> {
    config
        .pipelines
        .iter()
        .filter_map(|p| match decide(p) {
            Decision::NotMine => None,
            d => Some((p.name.to_string(), d)),
        })
        .collect()
}

fn no_pipeline(event: &GithubEvent) -> String {
    match event {
        GithubEvent::Push(p) => format!("no pipeline follows {}", p.repository),
        GithubEvent::WorkflowRun(r) => format!(
            "no pipeline builds with {} in {}",
            r.workflow_path, r.repository
        ),
        _ => "nothing to do".into(),
    }
}

/// The delivery id under which a fact about one pipeline is deduplicated.
pub fn pipeline_delivery(delivery: &Delivery, pipeline: &str) -> Delivery {
    Delivery {
        source: delivery.source.clone(),
        id: format!("{}#{pipeline}", delivery.id),
    }
}

/// Records a release if its commit is newer, by the branch's history, than the pipeline's
/// newest release; a build of an older commit (finishing last, or re-run) is refused as stale.
/// `push`, the link of the push being received (not written yet), counts in that history and
/// is written with the release; the flag says whether it was.
async fn release(
    engine: &Engine,
    forge: Option<&GithubForge>,
    delivery: &Delivery,
    p: &Pipeline,
    r: &NewRelease,
    push: Option<&PushLink>,
) -> Result<(Outcome, bool), EngineError> {
    let d = pipeline_delivery(delivery, &r.pipeline);
    let pipeline = r.pipeline.clone();
    let repo = p.source.repository.clone();
    let mut recorded = None;
    for attempt in 0..RACE_RETRIES {
        // What this controller knows first; the database after a refusal.
        let newest = engine.reads().newest_of(&r.pipeline, attempt > 0).await?;
        if let Some(n) = newest.as_ref().filter(|n| n.sha != r.sha.as_str()) {
            match order(engine, forge, &repo, r, n, push).await {
                Order::Newer => {}
                Order::Older(why) => {
                    return Ok((refuse(engine, delivery, &pipeline, why).await?, false));
                }
                Order::Unknown(why) => {
                    tracing::warn!(%pipeline, sha = %r.sha, newest = %n.sha, %why, "release order unknown; taken as newer by arrival");
                }
            }
        }
        let newest = newest.map(|n| n.id);
        if let Some(out) = engine
            .record_release_after_in(p, r, &d, newest, push)
            .await?
        {
            recorded = Some(out);
            break;
        }
    }
    let (recorded, written) = match recorded {
        Some(out) => (out, push.is_some()),
        None => (engine.record_release_in(p, r, &d).await?, false),
    };
    let outcome = match recorded {
        Ingested::Recorded(release) => {
            tracing::info!(delivery = %delivery.id, %pipeline, %release, sha = %r.sha, "release recorded");
            Outcome::Released { pipeline, release }
        }
        Ingested::Duplicate => Outcome::Duplicate {
            pipeline: Some(pipeline),
        },
    };
    Ok((outcome, written))
}

/// Records a release of `sha` asked for by hand (`POST …/promote`), by the same path as a
/// push: the commit must be newer on the branch than the pipeline's newest release (a stale one
/// is refused), and the same commit twice is a duplicate. `who` is the person asking (kept as
/// the release's author until GitHub says more). The image is checked by the caller.
pub async fn promote(
    engine: &Engine,
    forge: Option<&GithubForge>,
    p: &Pipeline,
    sha: &str,
    who: &str,
) -> Result<Outcome, EngineError> {
    let r = new_release(p, sha, None, who, None, &[]);
    let delivery = Delivery {
        source: "api".into(),
        id: format!("promote/{sha}"),
    };
    Ok(release(engine, forge, &delivery, p, &r, None).await?.0)
}

/// How often a release is decided again when another was recorded meanwhile.
const RACE_RETRIES: usize = 3;

/// The longest the webhook answer waits for GitHub's compare API.
const COMPARE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// Where a build's commit stands relative to the pipeline's newest release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Order {
    /// It descends from the newest release's commit.
    Newer,
    /// The newest release's commit descends from it: stale, with the reason.
    Older(String),
    /// Nothing tells (no pushes linking them, no GitHub access, or the histories diverged).
    Unknown(String),
}

/// Decides [`Order`] from the pushes received for the branch (`before → after` links, with
/// `pending`, the link of the push being received), and, when they cannot tell, from GitHub's
/// compare API.
pub async fn order(
    engine: &Engine,
    forge: Option<&GithubForge>,
    repo: &str,
    r: &NewRelease,
    newest: &Newest,
    pending: Option<&PushLink>,
) -> Order {
    let reads = engine.reads();
    let (new, old) = (r.sha.as_str(), newest.sha.as_str());
    let stale = || {
        format!(
            "stale: commit {} is older than {} ({}), received before it on {}; a build of an older commit is not promoted",
            crate::domain::short_sha(new),
            newest.id,
            crate::domain::short_sha(old),
            r.branch
        )
    };
    // The pending link is the newest of the branch: it can only be the first step back from
    // `new` (a walk from `old` meets `new` before it would need `new`'s own link).
    let from = pending
        .filter(|l| {
            l.after == new && l.branch == r.branch && same_repo(&l.repository, repo) && !l.forced
        })
        .map_or(new, |l| l.before.as_str());
    if let Ok(Some(true)) = reads.push_descends(repo, &r.branch, from, old).await {
        return Order::Newer;
    }
    if let Ok(Some(true)) = reads.push_descends(repo, &r.branch, old, new).await {
        return Order::Older(stale());
    }
    let Some(forge) = forge else {
        return Order::Unknown("the pushes received do not link the two commits".into());
    };
    match tokio::time::timeout(COMPARE_TIMEOUT, forge.compare(repo, old, new)).await {
        Ok(Ok(Ancestry::Ahead)) => Order::Newer,
        Ok(Ok(Ancestry::Behind | Ancestry::Identical)) => Order::Older(stale()),
        Ok(Ok(Ancestry::Diverged)) => {
            Order::Unknown("the histories diverged (a force push?)".into())
        }
        Ok(Err(e)) => Order::Unknown(format!("GitHub compare failed: {e}")),
        Err(_) => Order::Unknown("GitHub compare did not answer in time".into()),
    }
}

/// The `before → after` link of a push to a branch some pipeline builds from, to keep (none
/// for a tag, a deleted branch or a repository no pipeline follows).
pub fn push_link(config: &Config, push: &PushEvent) -> Option<PushLink> {
    let branch = push.branch.as_deref()?;
    let tracked = config
        .pipelines
        .iter()
        .any(|p| same_repo(&push.repository, &p.source.repository));
    (tracked && !push.deleted).then(|| PushLink {
        repository: push.repository.clone(),
        branch: branch.to_owned(),
        before: push.before.clone(),
        after: push.after.clone(),
        forced: push.forced,
    })
}

async fn refuse(
    engine: &Engine,
    delivery: &Delivery,
    pipeline: &str,
    reason: String,
) -> Result<Outcome, EngineError> {
    // The delivery's dedupe and its event-log entry are one transaction: a crash between them
    // can neither lose the entry nor log it twice.
    let d = pipeline_delivery(delivery, pipeline);
    let note = EventNote {
        pipeline: pipeline.to_owned(),
        kind: "not-promoted".into(),
        detail: reason.clone(),
    };
    if engine.acknowledge(&d, Some(&note)).await? == Ingested::Duplicate {
        return Ok(Outcome::Duplicate {
            pipeline: Some(pipeline.to_owned()),
        });
    }
    tracing::warn!(delivery = %delivery.id, pipeline, %reason, "not promoted");
    Ok(Outcome::NotPromoted {
        pipeline: pipeline.to_owned(),
        reason,
    })
}

async fn ignore(
    engine: &Engine,
    delivery: &Delivery,
    reasons: Vec<String>,
) -> Result<IntakeOutcome, EngineError> {
    for reason in &reasons {
        tracing::info!(delivery = %delivery.id, %reason, "GitHub delivery ignored");
    }
    if engine.acknowledge(delivery, None).await? == Ingested::Duplicate {
        return Ok(IntakeOutcome {
            outcomes: vec![Outcome::Duplicate { pipeline: None }],
        });
    }
    let outcomes = reasons
        .into_iter()
        .map(|reason| Outcome::Ignored { reason })
        .collect();
    Ok(IntakeOutcome { outcomes })
}

// ---------------------------------------------------------------------------------------------
// Configuration self-update
// ---------------------------------------------------------------------------------------------

/// Validates `text` as `base_dir/<file_name>` (accounts and templates resolve from `base_dir`
/// on this machine). An invalid file is refused with every validation message.
pub fn try_reload(text: &str, base_dir: &Path, file_name: &str) -> Result<Config, String> {
    let source = base_dir.join(file_name);
    let read = |p: &Path| {
        std::fs::read_to_string(p).map_err(|source| ConfigError::Unreadable {
            path: p.to_path_buf(),
            source,
        })
    };
    let loaded = config::load_str(&source, text, base_dir, &read).map_err(|e| e.to_string())?;
    for w in &loaded.warnings {
        tracing::warn!(warning = %w, "configuration warning");
    }
    Ok(loaded.config)
}

/// Fetches the configuration at `sha` with every file it names (accounts, templates, smoke
/// suites) at that same commit, validates it and, if valid, records it in the state store and
/// makes the engine and the forge use it; a controller standing by only records it, and
/// follows it once the leader acts with it (`engine::takeover`). Either way the
/// outcome is written to every pipeline's event log.
///
/// Never goes backwards: once a commit has been applied, a commit that does not descend from
/// it (an older push redelivered or replayed, a build of a diverged branch) is refused, and so
/// is one whose ancestry cannot be checked. The applied commit itself again changes nothing.
pub async fn apply_config_change(
    engine: &Engine,
    forge: &GithubForge,
    sha: &str,
) -> Result<(), String> {
    let current = engine.config();
    let c = &current.controller;
    let Some(repo) = c.config_repository.as_deref() else {
        return Err("no controller.config_repository configured".into());
    };
    let short = crate::domain::short_sha(sha);
    let applied = engine
        .reads()
        .applied_config()
        .await
        .map_err(|e| format!("cannot read the applied configuration: {e}"))?;
    if let Some(before) = applied.as_ref().filter(|a| a.repository == repo) {
        let was = crate::domain::short_sha(&before.sha);
        let why = match forge.compare(repo, &before.sha, sha).await {
            Ok(Ancestry::Ahead) => None,
            Ok(Ancestry::Identical) => {
                tracing::info!(%sha, "configuration commit already applied");
                return Ok(());
            }
            Ok(Ancestry::Behind) => Some(format!(
                "it is older than the applied {repo}@{was} (the applied commit descends from it)"
            )),
            Ok(Ancestry::Diverged) => Some(format!(
                "it does not descend from the applied {repo}@{was} (the histories diverged)"
            )),
            Err(e) => Some(format!(
                "cannot tell whether it descends from the applied {repo}@{was}: {e}"
            )),
        };
        if let Some(why) = why {
            let detail = format!("configuration from {repo}@{short} refused: {why}");
            engine.note_config(&[&current], "controller", &detail).await;
            return Err(why);
        }
    }
    let validated = fetch_config(forge, repo, sha, &c.config_path)
        .await
        .and_then(|files| {
            let applied = AppliedConfig {
                repository: repo.to_owned(),
                sha: sha.into(),
                path: c.config_path.clone(),
                files,
                applied_at: engine.now(),
            };
            load_applied(&applied).map(|loaded| (loaded, applied))
        });
    // No effect starts between the check and the change (held from here until the change is
    // in force or refused).
    let held = engine.hold_starts().await;
    let loaded = match validated {
        Ok((loaded, applied)) => match engine.refuse_config(&loaded.config).await {
            Some(why) => Err(why),
            None => Ok((loaded, applied)),
        },
        Err(why) => Err(why),
    };
    // Applied as soon as it is recorded, before it is announced: no effect starts meanwhile.
    // A controller standing by only records it: it records facts (alarms, pushes) by the
    // configuration the leader acts with, and follows the commit once the leader does
    // ([`crate::engine::takeover`]).
    let standing_by = !engine.leadership().may_act();
    let loaded = match loaded {
        Ok((loaded, applied)) => match engine.record_applied_config(&applied).await {
            Ok(()) if standing_by => Ok(loaded.warnings),
            Ok(()) => {
                forge.track_pipelines(&loaded.config);
                engine.replace_config(loaded.config, &held);
                Ok(loaded.warnings)
            }
            Err(e) => Err(format!("cannot record it in the state database: {e}")),
        },
        Err(why) => Err(why),
    };
    drop(held);
    let detail = match &loaded {
        Ok(warnings) => {
            for w in warnings {
                tracing::warn!(warning = %w, "configuration warning");
            }
            let detail = match standing_by {
                true => format!(
                    "configuration from {repo}@{short} recorded as applied; this controller stands by and puts it in force once the leader acts with it"
                ),
                false => format!("configuration reloaded from {repo}@{short}"),
            };
            with_warnings(detail, warnings)
        }
        Err(why) => format!("configuration from {repo}@{short} refused: {why}"),
    };
    engine
        .note_config(&[&current, &engine.config()], "controller", &detail)
        .await;
    let outcome = loaded.as_ref().map(Vec::len).map_err(String::as_str);
    let reported = forge.post_config_status(repo, sha, outcome).await;
    if let Err(e) = reported {
        tracing::warn!(%sha, error = %e, "cannot report the configuration outcome to GitHub");
    }
    loaded.map(drop)
}

/// The configuration file at `sha` and every file it names, read at that same commit, by
/// repository path.
async fn fetch_config(
    forge: &GithubForge,
    repo: &str,
    sha: &str,
    config_path: &str,
) -> Result<BTreeMap<String, String>, String> {
    let text = forge
        .fetch_file(repo, sha, config_path)
        .await
        .map_err(|e| format!("cannot fetch {config_path}: {e}"))?;
    let dir = Path::new(config_path).parent().unwrap_or(Path::new(""));
    let mut files = BTreeMap::new();
    let names = config::referenced_files(&text).map_err(|why| format!("{config_path}: {why}"))?;
    for name in names {
        let path: std::path::PathBuf = dir
            .join(&name)
            .components()
            .filter(|c| matches!(c, std::path::Component::Normal(_)))
            .collect();
        let path = path.to_string_lossy().into_owned();
        let body = forge
            .fetch_file(repo, sha, &path)
            .await
            .map_err(|e| format!("cannot fetch {path}, named by {config_path}: {e}"))?;
        files.insert(path, body);
    }
    files.insert(config_path.to_owned(), text);
    Ok(files)
}

/// What the state says of the configuration in force, beside the file on disk.
pub enum InForce {
    /// The file's: no commit applied, or (with why) the file no longer names the repository a
    /// commit was applied from.
    File(Option<String>),
    /// The commit applied from the configuration repository the file names, loaded, with a
    /// note saying which.
    Applied(Box<Config>, String),
    /// A commit applied from the repository the file names that cannot be used here (the
    /// state unreadable, or the commit no longer validating), and why.
    Unusable(String),
}

/// Whether the commit last applied from the configuration repository is in force over
/// `from_disk` (the file, or the configuration the process runs standing for it).
pub async fn applied_in_force(reads: &crate::store::Reads, from_disk: &Config) -> InForce {
    let applied = match reads.applied_config().await {
        Ok(Some(a)) => a,
        Ok(None) => return InForce::File(None),
        Err(e) => return InForce::Unusable(format!("cannot read the applied configuration ({e})")),
    };
    let repo = applied.repository.as_str();
    let at = format!("{repo}@{}", applied.sha);
    if from_disk.controller.config_repository.as_deref() != Some(repo) {
        return InForce::File(Some(format!(
            "the configuration applied from {at} is not used: the file on disk no longer names {repo} as the configuration repository"
        )));
    }
    match load_applied(&applied) {
        Ok(loaded) => {
            for w in &loaded.warnings {
                tracing::warn!(warning = %w, "configuration warning");
            }
            let note = format!(
                "configuration from {at} (applied {}) in force; the file on disk is not read",
                applied.applied_at.format("%Y-%m-%d %H:%M:%S UTC")
            );
            InForce::Applied(Box::new(loaded.config), note)
        }
        Err(why) => InForce::Unusable(format!(
            "the configuration applied from {at} no longer validates ({why})"
        )),
    }
}

/// The configuration to run with, and what to log about it: the one applied from the
/// configuration repository when one was and that repository is still configured (a restart
/// or SIGHUP never goes back to the file on disk), else `from_disk`.
pub async fn config_in_force(
    reads: &crate::store::Reads,
    from_disk: Config,
) -> (Config, Option<String>) {
    match applied_in_force(reads, &from_disk).await {
        InForce::File(note) => (from_disk, note),
        InForce::Applied(config, note) => (*config, Some(note)),
        InForce::Unusable(why) => (from_disk, Some(format!("{why}; running the file on disk"))),
    }
}

/// The configuration a controller taking the lead acts with, and that every controller follows
/// when another applied it: [`config_in_force`], the one the process runs standing for the
/// file (a configuration applied from the repository since it started wins, as at start-up).
/// The GitHub forge, when there is one, learns the pipelines of each put in force.
#[derive(Default)]
pub struct AppliedConfigWins {
    pub forge: Option<Arc<GithubForge>>,
}

#[async_trait::async_trait]
impl crate::engine::ConfigSource for AppliedConfigWins {
    async fn in_force(
        &self,
        reads: &crate::store::Reads,
        current: Config,
    ) -> Result<(Config, Option<String>), String> {
        match applied_in_force(reads, &current).await {
            InForce::File(note) => Ok((current, note)),
            InForce::Applied(config, note) => Ok((*config, Some(note))),
            InForce::Unusable(why) => Err(why),
        }
    }

    fn putting_in_force(&self, config: &Config) {
        if let Some(f) = &self.forge {
            f.track_pipelines(config);
        }
    }
}

/// What a configuration's warnings add to the note of its change: nothing without any, else
/// each, on its own line, located in the repository (or the file on disk) with its help.
pub fn with_warnings(detail: String, warnings: &[config::diag::Diagnostic]) -> String {
    if warnings.is_empty() {
        return detail;
    }
    let n = warnings.len();
    let mut out = format!(
        "{detail}, with {n} warning{}:",
        if n == 1 { "" } else { "s" }
    );
    for w in warnings {
        out.push('\n');
        out.push_str(&w.to_string());
    }
    out
}

/// Applies configuration changes as they arrive on `changes` (shas), one at a time, until
/// the sender is dropped.
pub fn spawn_config_reloader(
    engine: Engine,
    forge: Arc<GithubForge>,
    mut changes: mpsc::Receiver<String>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(sha) = changes.recv().await {
            match apply_config_change(&engine, &forge, &sha).await {
                Ok(()) => tracing::info!(%sha, "configuration reloaded"),
                Err(why) => tracing::error!(%sha, reason = %why, "configuration change refused"),
            }
        }
    })
}

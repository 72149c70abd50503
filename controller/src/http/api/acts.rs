//! The act routes of `/api/v1`: approve, reject, pause, resume, rollback, retry, override and
//! promote. Each records the same typed facts as the command line (through
//! [`crate::cli::control::carry_out`], [`crate::gates::approval::decide`] and
//! [`crate::github::intake::promote`]) with the key as actor (`api-key:<name>`).
//!
//! | role | may |
//! |---|---|
//! | viewer | nothing here |
//! | approver | approve, reject: as the approver the key is bound to, under the approval link's rules |
//! | operator | pause, resume, rollback, retry, promote |
//! | admin | what an operator may, and override |
//!
//! # Guarantees
//! - An unknown pipeline or stage is a 404 before anything else; a role that may not is a 403
//!   written to the pipeline's event log (`api-forbidden`).
//! - Every call that reaches its pipeline, whatever its answer, is written to the event log
//!   (`api-call`): the act, the key's name and role, the source address, the request id and
//!   the status.

use std::time::Duration;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::ApiState;
use super::auth::Caller;
use super::problem::{Kind, Problem};
use super::reads::release_id;
use super::views::*;
use crate::cli::control::{Control, carry_out};
use crate::domain::{Decision, ReleaseId};
use crate::engine::Override;
use crate::gates::approval::{Outcome, Refusal, decide};
use crate::github::intake;
use crate::store::keys::Role;

/// The longest `promote` waits for the artifact repository to say whether the image exists.
pub const IMAGE_CHECK_TIMEOUT: Duration = Duration::from_secs(10);
/// The delivery source of what the API records.
pub const API_SOURCE: &str = "api";

/// What a call does (for roles and the event log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    Approve,
    Reject,
    Pause,
    Resume,
    Rollback,
    Retry,
    Override,
    Promote,
}

impl Act {
    pub const ALL: [Act; 8] = [
        Act::Approve,
        Act::Reject,
        Act::Pause,
        Act::Resume,
        Act::Rollback,
        Act::Retry,
        Act::Override,
        Act::Promote,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Act::Approve => "approve",
            Act::Reject => "reject",
            Act::Pause => "pause",
            Act::Resume => "resume",
            Act::Rollback => "rollback",
            Act::Retry => "retry",
            Act::Override => "override",
            Act::Promote => "promote",
        }
    }

    /// Whether `role` may do this.
    pub fn allowed(self, role: Role) -> bool {
        match self {
            Act::Approve | Act::Reject => role == Role::Approver,
            Act::Pause | Act::Resume | Act::Rollback | Act::Retry | Act::Promote => {
                matches!(role, Role::Operator | Role::Admin)
            }
            Act::Override => role == Role::Admin,
        }
    }
}

type Answer = Result<Done, Problem>;

/// Checks the pipeline (and stage), then the role; runs `work`; writes the call to the
/// event log; answers.
async fn act<F>(
    api: &ApiState,
    caller: &Caller,
    act: Act,
    pipeline: &str,
    stage: Option<&str>,
    work: F,
) -> Response
where
    F: std::future::Future<Output = Answer>,
{
    let config = api.engine.config();
    let found = api.pipeline(&config, pipeline).and_then(|p| match stage {
        Some(s) if p.stage(s).is_none() => {
            let known: Vec<&str> = p.stages.iter().map(|s| s.name.as_str()).collect();
            Err(Problem::new(
                Kind::NotFound,
                format!(
                    "pipeline `{pipeline}` has no stage `{s}` (stages: {})",
                    known.join(", ")
                ),
            ))
        }
        _ => Ok(()),
    });
    if let Err(p) = found {
        return p.into_response();
    }
    let out = if act.allowed(caller.role()) {
        work.await
    } else {
        let why = format!("a {} key may not {}", caller.role(), act.as_str());
        api.log(
            pipeline,
            caller,
            "api-forbidden",
            &format!("{} refused: {why}; {}", act.as_str(), caller.describe()),
        )
        .await;
        Err(Problem::new(Kind::Forbidden, why))
    };
    let status = match &out {
        Ok(_) => StatusCode::OK,
        Err(p) => p.status(),
    };
    let said = match &out {
        Ok(d) => d.detail.clone(),
        Err(p) => p.detail.clone(),
    };
    let detail = format!(
        "{} by {}: {} {said}",
        act.as_str(),
        caller.describe(),
        status.as_u16()
    );
    api.log(pipeline, caller, "api-call", &detail).await;
    match out {
        Ok(done) => (StatusCode::OK, Json(done)).into_response(),
        Err(p) => p.into_response(),
    }
}

fn body<T>(b: Result<Json<T>, JsonRejection>) -> Result<T, Problem> {
    b.map(|Json(t)| t)
        .map_err(|e| Problem::new(Kind::InvalidRequest, e.body_text()))
}

fn reason_needed(reason: &str, what: &str) -> Result<(), Problem> {
    if reason.trim().is_empty() {
        return Err(Problem::new(
            Kind::InvalidRequest,
            format!("{what} needs a `reason`: it is kept in the event log"),
        ));
    }
    Ok(())
}

/// Carries out a control command as the caller; a refusal is a 409.
async fn control(
    api: &ApiState,
    caller: &Caller,
    c: Control,
    release: Option<ReleaseId>,
) -> Answer {
    match carry_out(&api.engine, &c, &caller.actor(), API_SOURCE).await {
        Ok(Ok(detail)) => Ok(Done {
            detail,
            release: release.map(|r| r.to_string()),
        }),
        Ok(Err(why)) => Err(Problem::new(Kind::Refused, why)),
        Err(e) => Err(Problem::internal(e)),
    }
}

// ----- approve / reject -----------------------------------------------------------------------

/// Approve a release in a stage, as the key's approver.
#[utoipa::path(post, path = "/api/v1/pipelines/{pipeline}/releases/{release}/stages/{stage}/approve", tag = "act",
    params(("pipeline" = String, Path), ("release" = String, Path, description = "`r12` or `12`"), ("stage" = String, Path)),
    request_body(content = Option<DecideBody>, description = "optional"),
    responses((status = 200, description = "Recorded", body = Done)))]
pub async fn approve(
    State(api): State<ApiState>,
    caller: Caller,
    Path((pipeline, release, stage)): Path<(String, String, String)>,
    b: Result<Json<DecideBody>, JsonRejection>,
) -> Response {
    decide_route(
        api,
        caller,
        (pipeline, release, stage),
        b,
        Decision::Approve,
    )
    .await
}

/// Reject a release in a stage, as the key's approver.
#[utoipa::path(post, path = "/api/v1/pipelines/{pipeline}/releases/{release}/stages/{stage}/reject", tag = "act",
    params(("pipeline" = String, Path), ("release" = String, Path, description = "`r12` or `12`"), ("stage" = String, Path)),
    request_body(content = Option<DecideBody>, description = "optional"),
    responses((status = 200, description = "Recorded", body = Done)))]
pub async fn reject(
    State(api): State<ApiState>,
    caller: Caller,
    Path((pipeline, release, stage)): Path<(String, String, String)>,
    b: Result<Json<DecideBody>, JsonRejection>,
) -> Response {
    decide_route(api, caller, (pipeline, release, stage), b, Decision::Reject).await
}

async fn decide_route(
    api: ApiState,
    caller: Caller,
    (pipeline, release, stage): (String, String, String),
    b: Result<Json<DecideBody>, JsonRejection>,
    decision: Decision,
) -> Response {
    let which = if decision == Decision::Approve {
        Act::Approve
    } else {
        Act::Reject
    };
    let work = async {
        let b = match b {
            Err(JsonRejection::MissingJsonContentType(_)) => DecideBody::default(),
            other => body(other)?,
        };
        let id = release_id(&release)?;
        let own = caller.key.approver.clone().unwrap_or_default();
        if let Some(other) = b.approver.as_deref().filter(|a| a.trim() != own) {
            let why = format!(
                "the key `{}` decides as {own}, not as {}",
                caller.key.name,
                other.trim()
            );
            api.log(
                &pipeline,
                &caller,
                "api-forbidden",
                &format!("{} refused: {why}; {}", which.as_str(), caller.describe()),
            )
            .await;
            return Err(Problem::new(Kind::Forbidden, why));
        }
        let outcome = decide(
            &api.engine,
            &pipeline,
            id,
            &stage,
            &own,
            decision,
            &caller.actor(),
        )
        .await
        .map_err(Problem::internal)?;
        match outcome {
            Outcome::Recorded {
                approver, decision, ..
            } => {
                let comment = b
                    .comment
                    .as_deref()
                    .map(str::trim)
                    .filter(|c| !c.is_empty());
                let done = match decision {
                    Decision::Approve => "approved",
                    Decision::Reject => "rejected",
                };
                let mut detail = format!("{approver} {done} {id} in {stage}");
                if let Some(c) = comment {
                    detail.push_str(&format!(" (comment: {c})"));
                }
                Ok(Done {
                    detail,
                    release: Some(id.to_string()),
                })
            }
            Outcome::Refused(r) => Err(refusal(&r)),
        }
    };
    act(&api, &caller, which, &pipeline, Some(&stage), work).await
}

/// The API's answer to an approval rule's refusal.
fn refusal(r: &Refusal) -> Problem {
    let kind = match r {
        Refusal::UnknownRelease => Kind::NotFound,
        Refusal::Superseded { .. } => Kind::Superseded,
        Refusal::AlreadyDecided(_) => Kind::AlreadyDecided,
        Refusal::OwnChange { .. } => Kind::OwnChange,
        Refusal::NotAnApprover { .. } | Refusal::SharedLinkNotForListed { .. } => {
            Kind::NotAnApprover
        }
        Refusal::ContributorsUnknown { .. } => Kind::Unavailable,
        Refusal::BadName(_) => Kind::InvalidRequest,
        Refusal::NotRequested
        | Refusal::Used { .. }
        | Refusal::Replaced
        | Refusal::Expired { .. }
        | Refusal::Rejected { .. }
        | Refusal::MovedOn { .. }
        | Refusal::EarlierAttempt { .. } => Kind::ApprovalClosed,
    };
    Problem::new(kind, r.to_string())
}

// ----- pause / resume -------------------------------------------------------------------------

/// Pause a pipeline, or one stage: nothing new starts there.
#[utoipa::path(post, path = "/api/v1/pipelines/{pipeline}/pause", tag = "act",
    params(("pipeline" = String, Path)), request_body = PauseBody,
    responses((status = 200, description = "Paused", body = Done)))]
pub async fn pause(
    State(api): State<ApiState>,
    caller: Caller,
    Path(pipeline): Path<String>,
    b: Result<Json<PauseBody>, JsonRejection>,
) -> Response {
    pause_or_resume(api, caller, pipeline, b, Act::Pause).await
}

/// Resume a paused pipeline or stage.
#[utoipa::path(post, path = "/api/v1/pipelines/{pipeline}/resume", tag = "act",
    params(("pipeline" = String, Path)), request_body = PauseBody,
    responses((status = 200, description = "Resumed", body = Done)))]
pub async fn resume(
    State(api): State<ApiState>,
    caller: Caller,
    Path(pipeline): Path<String>,
    b: Result<Json<PauseBody>, JsonRejection>,
) -> Response {
    pause_or_resume(api, caller, pipeline, b, Act::Resume).await
}

async fn pause_or_resume(
    api: ApiState,
    caller: Caller,
    pipeline: String,
    b: Result<Json<PauseBody>, JsonRejection>,
    which: Act,
) -> Response {
    let stage = b.as_ref().ok().and_then(|Json(b)| b.stage.clone());
    let work = async {
        let b = body(b)?;
        reason_needed(&b.reason, which.as_str())?;
        let c = if which == Act::Pause {
            Control::Pause {
                pipeline: pipeline.clone(),
                stage: b.stage,
                reason: b.reason.trim().into(),
            }
        } else {
            Control::Resume {
                pipeline: pipeline.clone(),
                stage: b.stage,
                reason: Some(b.reason.trim().into()),
            }
        };
        control(&api, &caller, c, None).await
    };
    act(&api, &caller, which, &pipeline, stage.as_deref(), work).await
}

// ----- rollback, retry, override ----------------------------------------------------------

/// Return a stage to its last known-good release.
#[utoipa::path(post, path = "/api/v1/pipelines/{pipeline}/stages/{stage}/rollback", tag = "act",
    params(("pipeline" = String, Path), ("stage" = String, Path)),
    request_body(content = Option<ReasonBody>, description = "optional"),
    responses((status = 200, description = "Requested", body = Done)))]
pub async fn rollback(
    State(api): State<ApiState>,
    caller: Caller,
    Path((pipeline, stage)): Path<(String, String)>,
) -> Response {
    let c = Control::Rollback {
        pipeline: pipeline.clone(),
        stage: stage.clone(),
    };
    let work = control(&api, &caller, c, None);
    act(&api, &caller, Act::Rollback, &pipeline, Some(&stage), work).await
}

/// Send a failed or expired release through its stages again.
#[utoipa::path(post, path = "/api/v1/pipelines/{pipeline}/releases/{release}/retry", tag = "act",
    params(("pipeline" = String, Path), ("release" = String, Path, description = "`r12` or `12`")),
    responses((status = 200, description = "Requested", body = Done)))]
pub async fn retry(
    State(api): State<ApiState>,
    caller: Caller,
    Path((pipeline, release)): Path<(String, String)>,
) -> Response {
    let work = async {
        let id = release_id(&release)?;
        let c = Control::Retry {
            pipeline: pipeline.clone(),
            release: id.to_string(),
        };
        control(&api, &caller, c, Some(id)).await
    };
    act(&api, &caller, Act::Retry, &pipeline, None, work).await
}

/// Let one release past its stages' alarms or deployment windows.
#[utoipa::path(post, path = "/api/v1/pipelines/{pipeline}/releases/{release}/override", tag = "act",
    params(("pipeline" = String, Path), ("release" = String, Path, description = "`r12` or `12`")),
    request_body = OverrideBody,
    responses((status = 200, description = "Recorded", body = Done)))]
pub async fn override_rule(
    State(api): State<ApiState>,
    caller: Caller,
    Path((pipeline, release)): Path<(String, String)>,
    b: Result<Json<OverrideBody>, JsonRejection>,
) -> Response {
    let work = async {
        let b = body(b)?;
        reason_needed(&b.reason, "an override")?;
        let id = release_id(&release)?;
        let which = match b.which {
            OverrideWhich::Alarms => Override::Alarms,
            OverrideWhich::Window => Override::Window,
        };
        let c = Control::Override {
            pipeline: pipeline.clone(),
            release: id.to_string(),
            which,
            reason: b.reason.trim().into(),
        };
        control(&api, &caller, c, Some(id)).await
    };
    act(&api, &caller, Act::Override, &pipeline, None, work).await
}

// ----- promote --------------------------------------------------------------------------------

/// Start a release of a commit on the pipeline's branch by hand; its image must exist.
#[utoipa::path(post, path = "/api/v1/pipelines/{pipeline}/promote", tag = "act",
    params(("pipeline" = String, Path)), request_body = PromoteBody,
    responses((status = 200, description = "Release recorded (or the commit already had one)", body = Done)))]
pub async fn promote(
    State(api): State<ApiState>,
    caller: Caller,
    Path(pipeline): Path<String>,
    b: Result<Json<PromoteBody>, JsonRejection>,
) -> Response {
    let work = async {
        let b = body(b)?;
        let sha = b.sha.trim().to_ascii_lowercase();
        if sha.len() != 40 || !sha.bytes().all(|c| c.is_ascii_hexdigit()) {
            return Err(Problem::new(
                Kind::InvalidRequest,
                "`sha` is a full 40-character commit sha",
            ));
        }
        let config = api.engine.config();
        let p = api.pipeline(&config, &pipeline)?;
        image_exists(&api, p, &sha).await?;
        let who = format!("{} (API key)", caller.key.name);
        let out = intake::promote(&api.engine, api.forge.as_deref(), p, &sha, &who)
            .await
            .map_err(Problem::internal)?;
        match out {
            intake::Outcome::Released { release, .. } => Ok(Done {
                detail: format!(
                    "{release} of {pipeline} recorded for {sha}; the controller promotes it"
                ),
                release: Some(release.to_string()),
            }),
            intake::Outcome::Duplicate { .. } => Ok(Done {
                detail: format!("{pipeline} already has a release of {sha}; nothing changed"),
                release: None,
            }),
            intake::Outcome::NotPromoted { reason, .. } => {
                Err(Problem::new(Kind::StaleCommit, reason))
            }
            other => Err(Problem::new(Kind::Refused, format!("{other:?}"))),
        }
    };
    act(&api, &caller, Act::Promote, &pipeline, None, work).await
}

/// The commit's image is in the pipeline's artifact repository (asked for at most
/// [`IMAGE_CHECK_TIMEOUT`]).
async fn image_exists(
    api: &ApiState,
    p: &crate::config::Pipeline,
    sha: &str,
) -> Result<(), Problem> {
    let config = api.engine.config();
    let Some(account) = config.accounts.get(&p.artifact.account) else {
        return Err(Problem::internal(format!(
            "no account `{}`",
            p.artifact.account
        )));
    };
    let tag = p.artifact.tag_for(sha, &p.source.branch);
    let mut artifact = p.artifact.clone();
    artifact.wait = artifact.wait.min(IMAGE_CHECK_TIMEOUT);
    let ports = api.engine.ports();
    let looked = tokio::time::timeout(
        IMAGE_CHECK_TIMEOUT,
        ports.artifacts.resolve(&artifact, account, &tag),
    )
    .await;
    let image = format!("{}:{tag}", p.artifact.repository);
    match looked {
        Ok(Ok(_digest)) => Ok(()),
        Ok(Err(crate::engine::PortError::NotFound(_))) | Err(_) => Err(Problem::new(
            Kind::ImageNotFound,
            format!("the image {image} is not in the artifact repository; build it first"),
        )),
        Ok(Err(e)) if e.is_retryable() => Err(Problem::new(
            Kind::Unavailable,
            format!("the artifact repository did not answer about {image}: {e}"),
        )),
        Ok(Err(e)) => Err(Problem::new(
            Kind::ImageNotFound,
            format!("the image {image} could not be found: {e}"),
        )),
    }
}

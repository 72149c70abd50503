//! `tollgate pause`, `resume`, `rollback`, `retry` and `override`: an operator's hand on the
//! line.
//!
//! The command line sends a [`Control`] to a controller's API ([`crate::cli::remote`]); the
//! API checks the pipeline and stage against the configuration in force (`http::api::acts`,
//! a 404 naming the known stages) and records one fact through the engine's ingest API
//! ([`carry_out`]: one transaction, the key as actor in the event log), and answers with what
//! [`carry_out`] said, which the command prints. The leader's reconciler picks the fact up at
//! once (a follower's within `engine::FACT_WATCH`); what it does with it (a retry refused, say)
//! is in the event log.
//!
//! Must never: write the state database except through the ingest API, or decide what the
//! controller does with a fact (that is the planner's, at its next reconcile).

use crate::domain::ReleaseId;
use crate::engine::{Delivery, Ingest, Ingested, Override, RetryVerdict};

/// What an operator asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    Pause {
        pipeline: String,
        stage: Option<String>,
        reason: String,
    },
    Resume {
        pipeline: String,
        stage: Option<String>,
        /// Why, when given (the API requires one and keeps it in the event log with the call).
        reason: Option<String>,
    },
    Rollback {
        pipeline: String,
        stage: String,
    },
    /// Send a release that stopped (failed or expired) through its stages again.
    Retry {
        pipeline: String,
        release: String,
    },
    /// Lift one rule for one release, with a reason kept in the event log.
    Override {
        pipeline: String,
        release: String,
        which: Override,
        reason: String,
    },
}

/// Carries out a command whose pipeline and stage were checked through `ingest`, for `actor`;
/// `source` names where requests came from (`api`) for deduplication.
/// `Ok(Err(why))` when it is refused (nothing changed); `Err` when the store failed.
/// The API acts through here.
pub async fn carry_out(
    ingest: &Ingest,
    control: &Control,
    actor: &str,
    source: &str,
) -> anyhow::Result<Result<String, String>> {
    if let Some(why) = override_refusal(ingest, control).await? {
        return Ok(Err(why));
    }
    apply(ingest, control, actor, source).await
}

/// Why an override cannot be recorded: a malformed release, no reason, or a release of
/// another pipeline.
async fn override_refusal(ingest: &Ingest, control: &Control) -> anyhow::Result<Option<String>> {
    let Control::Override {
        pipeline,
        release,
        reason,
        ..
    } = control
    else {
        return Ok(None);
    };
    Ok(match release.parse::<ReleaseId>() {
        Err(e) => Some(e),
        Ok(_) if reason.trim().is_empty() => {
            Some("an override needs a reason (--reason): it is kept in the event log".into())
        }
        Ok(id) => match ingest.reads().release(id).await? {
            Some(r) if &r.pipeline == pipeline => None,
            _ => Some(format!("pipeline {pipeline} has no release {id}")),
        },
    })
}

/// Carries out a command: `Ok(Err(why))` when the state refuses it (nothing changed).
async fn apply(
    ingest: &Ingest,
    control: &Control,
    actor: &str,
    source: &str,
) -> anyhow::Result<Result<String, String>> {
    let place = |pipeline: &str, stage: &Option<String>| match stage {
        Some(s) => format!("stage {pipeline}/{s}"),
        None => format!("pipeline {pipeline}"),
    };
    Ok(Ok(match control {
        Control::Retry { pipeline, release } => {
            return retry(ingest, pipeline, release, actor, source).await;
        }
        Control::Override {
            pipeline,
            release,
            which,
            reason,
        } => {
            let id = release
                .parse::<ReleaseId>()
                .map_err(|e| anyhow::anyhow!(e))?;
            let found = ingest
                .set_override(pipeline, id, *which, reason.trim(), actor)
                .await?;
            anyhow::ensure!(found, "pipeline {pipeline} has no release {id}");
            let what = which.lifts();
            format!("{id} of {pipeline} {what} (logged: {reason})")
        }
        Control::Pause {
            pipeline,
            stage,
            reason,
        } => {
            ingest
                .pause(pipeline, stage.as_deref(), reason, actor)
                .await?;
            format!(
                "{} paused: nothing new starts there until `tollgate resume`",
                place(pipeline, stage)
            )
        }
        Control::Resume {
            pipeline,
            stage,
            reason,
        } => {
            ingest.resume(pipeline, stage.as_deref(), actor).await?;
            match reason.as_deref().map(str::trim).filter(|r| !r.is_empty()) {
                Some(why) => format!("{} resumed (reason: {why})", place(pipeline, stage)),
                None => format!("{} resumed", place(pipeline, stage)),
            }
        }
        Control::Rollback { pipeline, stage } => {
            // The request is bound to what the stage runs now: the same command repeated
            // before the controller acted is recognised and changes nothing more.
            let reads = ingest.reads();
            let good = reads.last_good(pipeline, stage).await?.map(|r| r.id);
            let flight = reads.in_flight(pipeline, stage).await?;
            let flight = flight
                .iter()
                .map(|(r, _)| r.id.to_string())
                .collect::<Vec<_>>();
            let id = format!(
                "rollback/{pipeline}/{stage}/good-{}/in-flight-{}",
                good.map(|r| r.to_string()).unwrap_or_else(|| "none".into()),
                if flight.is_empty() {
                    "none".into()
                } else {
                    flight.join("+")
                }
            );
            let d = Delivery {
                source: source.into(),
                id,
            };
            match ingest.request_rollback(pipeline, stage, actor, &d).await? {
                Ingested::Recorded(()) => format!(
                    "rollback of {pipeline}/{stage} requested: the controller returns the stage \
                     to its last known-good release"
                ),
                Ingested::Duplicate => format!(
                    "rollback of {pipeline}/{stage} was already requested for what the stage \
                     runs now; nothing more to do"
                ),
            }
        }
    }))
}

/// Records a retry request, bound to the release's current attempts (the same command
/// repeated before the controller acted changes nothing more), and says what will happen.
async fn retry(
    ingest: &Ingest,
    pipeline: &str,
    release: &str,
    actor: &str,
    source: &str,
) -> anyhow::Result<Result<String, String>> {
    let id = match release.parse::<ReleaseId>() {
        Ok(id) => id,
        Err(e) => return Ok(Err(e)),
    };
    // Each command is its own request; one still waiting for the controller makes a repeat
    // a duplicate (the store checks), and a refused one can be asked again later.
    let d = Delivery {
        source: source.into(),
        id: format!("retry/{pipeline}/{id}/{}", ingest.now().timestamp_millis()),
    };
    Ok(match ingest.request_retry(pipeline, id, actor, &d).await? {
        RetryVerdict::From(stage) => Ok(format!(
            "{id} sent again from {stage}; the controller picks it up within a second"
        )),
        RetryVerdict::Refused(why) => Err(why),
        RetryVerdict::Duplicate => Ok(format!(
            "retry of {id} was already requested; nothing more to do"
        )),
    })
}

//! The rules of `tollgate retry`: whether a stopped release may go again, and from where.
//!
//! Owns the one decision, used by the planner when it acts on a retry request and by the
//! engine to tell the person who asked what will happen. Must never: change anything (the
//! planner turns the verdict into an action), or read anything but the snapshot.

use super::types::{ReleaseId, RunStatus, Snapshot};
use crate::config::Pipeline;

/// The stage a retry of `release` starts from, or why it is refused. A release goes again
/// from the first stage where a run failed or expired; it is refused when it was rolled back
/// somewhere or never resolved, while a run of it is in flight, when nothing stopped, or when
/// a newer release already entered that stage (retrying would move the stage backwards).
pub fn retry_from(cfg: &Pipeline, snap: &Snapshot, release: ReleaseId) -> Result<String, String> {
    let Some(r) = snap.releases.get(&release) else {
        return Err(format!("pipeline {} has no release {release}", cfg.name));
    };
    if let Some(bad) = &r.bad {
        return Err(format!(
            "{release} was rolled back in {}: it is never promoted again; push a fix",
            bad.stage
        ));
    }
    if let Some(failed) = &r.failed {
        return Err(format!(
            "{release} was never promoted ({failed}); push a new commit"
        ));
    }
    let runs: Vec<_> = cfg
        .stages
        .iter()
        .filter_map(|s| snap.run(release, &s.name))
        .collect();
    if let Some(run) = runs.iter().find(|run| !run.status.is_terminal()) {
        return Err(format!(
            "{release} is still {} in {}: wait until it stops",
            run.status, run.stage
        ));
    }
    // The first stage where it did not succeed is where it stopped: a failure or an expired
    // approval there goes again; a rejection or a superseded run is final.
    let Some(from) = runs.iter().find(|run| run.status != RunStatus::Succeeded) else {
        let last = runs
            .last()
            .map(|run| format!("{} in {}", run.status, run.stage))
            .unwrap_or_else(|| "not in any stage".into());
        return Err(format!(
            "{release} has no failed or expired run to retry (it is {last})"
        ));
    };
    if !from.status.retryable() {
        return Err(format!(
            "{release} was {} in {}: that is not retried; push a new commit",
            from.status, from.stage
        ));
    }
    let stage = &from.stage;
    let newer_run = snap
        .runs
        .iter()
        .filter(|other| other.release > release && other.stage == *stage)
        .find(|other| other.status.entered())
        .map(|other| {
            format!(
                "{} is newer and is {} in {stage}",
                other.release, other.status
            )
        });
    let newer_good = snap.stage(stage).and_then(|s| {
        s.history
            .iter()
            .find(|id| **id > release)
            .map(|id| format!("{id} is newer and ran in {stage}"))
    });
    if let Some(why) = newer_run.or(newer_good) {
        return Err(format!(
            "{why}: retrying {release} would move {stage} backwards"
        ));
    }
    Ok(stage.to_string())
}

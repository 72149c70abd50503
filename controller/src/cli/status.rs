//! `tollgate status` and `tollgate history`: the state of every pipeline × stage, for people
//! (a table) and for scripts (`--json`).
//!
//! Owns reading the state for people and rendering it; reasons are rendered from their typed
//! value here, at the edge, with the time left counted from now. Must never: write the state
//! database (it uses the store's read-only face).

use std::io::Write;

use serde::Serialize;

use crate::config::Config;
use crate::domain::Release;
use chrono::{DateTime, Utc};

use crate::store::{Reads, StoreError};

/// One pipeline × stage.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct StageStatus {
    pub pipeline: String,
    pub stage: String,
    /// The release the stage trusts now: `r12 (abc123def456)`.
    pub known_good: Option<String>,
    /// The release being worked on in the stage, if any.
    pub in_flight: Option<String>,
    pub status: Option<String>,
    /// Why it waits, or what it is doing, for people.
    pub reason: Option<String>,
    /// The same, as typed data with its deadlines (for scripts).
    pub wait: Option<crate::domain::Reason>,
    pub paused: Option<String>,
}

fn label(r: &Release) -> String {
    format!("{} ({})", r.id, crate::domain::short_sha(&r.sha))
}

/// Collects the status of every stage of every pipeline.
pub async fn collect(
    store: &Reads,
    config: &Config,
    now: DateTime<Utc>,
) -> Result<Vec<StageStatus>, StoreError> {
    let mut out = Vec::new();
    for p in &config.pipelines {
        for s in &p.stages {
            let good = store.last_good(&p.name, &s.name).await?;
            let flight = store.in_flight(&p.name, &s.name).await?;
            let (pp, sp) = store.paused(&p.name, &s.name).await?;
            let current = flight.first();
            out.push(StageStatus {
                pipeline: p.name.to_string(),
                stage: s.name.to_string(),
                known_good: good.as_ref().map(label),
                in_flight: current.map(|(r, _)| label(r)),
                status: current.map(|(_, run)| run.status.to_string()),
                reason: current.map(|(_, run)| run.reason.describe(now)),
                wait: current.map(|(_, run)| run.reason.clone()),
                paused: pp
                    .map(|p| format!("pipeline: {p}"))
                    .or(sp.map(|s| format!("stage: {s}"))),
            });
        }
    }
    Ok(out)
}

/// Prints the status table (or JSON).
pub fn render(rows: &[StageStatus], json: bool, out: &mut dyn Write) -> std::io::Result<()> {
    if json {
        return writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(rows).unwrap_or_default()
        );
    }
    writeln!(
        out,
        "{:<12} {:<8} {:<24} {:<24} {:<18} WHY",
        "PIPELINE", "STAGE", "KNOWN-GOOD", "IN FLIGHT", "STATUS"
    )?;
    for r in rows {
        let why = match (&r.paused, &r.reason) {
            (Some(p), Some(reason)) => format!("paused ({p}); {reason}"),
            (Some(p), None) => format!("paused ({p})"),
            (None, Some(reason)) => reason.clone(),
            (None, None) => "idle".into(),
        };
        writeln!(
            out,
            "{:<12} {:<8} {:<24} {:<24} {:<18} {}",
            r.pipeline,
            r.stage,
            r.known_good.as_deref().unwrap_or("-"),
            r.in_flight.as_deref().unwrap_or("-"),
            r.status.as_deref().unwrap_or("-"),
            why
        )?;
    }
    Ok(())
}

/// Prints a pipeline's event log.
pub async fn history(
    store: &Reads,
    pipeline: &str,
    limit: i64,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), StoreError> {
    let events = store.events(pipeline, limit).await?;
    if json {
        let _ = writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&events).unwrap_or_default()
        );
        return Ok(());
    }
    for e in events {
        let release = e.release.map(|r| format!("r{r}")).unwrap_or_default();
        let stage = e.stage.unwrap_or_default();
        let _ = writeln!(
            out,
            "{} {:<22} {:<16} {:<5} {:<6} {}",
            e.at.format("%Y-%m-%d %H:%M:%S%.3f"),
            e.actor,
            e.kind,
            release,
            stage,
            e.detail
        );
    }
    Ok(())
}

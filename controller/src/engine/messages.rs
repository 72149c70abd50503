//! Text for people: notification subjects and bodies, the facts of a release.
//!
//! Plain text a person can act on from a phone: what happened, to which commit and image,
//! why, and where to look. Never includes a secret or a token.

use chrono::{DateTime, Utc};

use crate::config::{Pipeline, Stage};
use crate::domain::{NotifyEvent, Release, ReleaseId, RunStatus, Snapshot};

/// One line per stage: where this release stands ("beta: succeeded — deployed and baked").
pub fn progress(snap: &Snapshot, release: ReleaseId, now: DateTime<Utc>) -> String {
    let mut lines = Vec::new();
    for s in &snap.stages {
        if let Some(run) = snap.run(release, &s.name) {
            if run.status != RunStatus::Waiting {
                let why = run.reason.describe(now);
                lines.push(format!("  {}: {} — {why}", s.name, run.status));
            }
        }
    }
    let queued: Vec<String> = snap
        .releases
        .values()
        .filter(|r| r.id > release && r.bad.is_none() && r.failed.is_none())
        .map(|r| format!("{} ({})", r.id, crate::domain::short_sha(&r.sha)))
        .collect();
    if !queued.is_empty() {
        lines.push(format!(
            "  newer releases queued behind it: {}",
            queued.join(", ")
        ));
    }
    lines.join("\n")
}

/// The facts of a release: commit, author, message, image.
pub fn release_facts(p: &Pipeline, r: &Release, progress: &str, public_url: &str) -> String {
    let commit_url = r.url.clone().unwrap_or_else(|| {
        format!(
            "https://github.com/{}/commit/{}",
            p.source.repository, r.sha
        )
    });
    format!(
        "Pipeline: {}\nRelease:  {} — {}/ui/pipelines/{}/releases/{}\nCommit:   {} on {} by {} <{}>\n          {}\n          {}\nImage:    {}@{}\n\nProgress so far:\n{}\n",
        p.name,
        r.id,
        public_url,
        p.name,
        r.id.0,
        r.sha,
        r.branch,
        r.author_name,
        r.author_email,
        first_line(&r.message),
        commit_url,
        p.artifact.repository,
        r.digest.as_deref().unwrap_or("(not resolved)"),
        if progress.is_empty() {
            "  (nothing yet)"
        } else {
            progress
        },
    )
}

/// Subject and body of a halt or rollback notification.
pub fn notification(
    p: &Pipeline,
    s: &Stage,
    r: &Release,
    event: NotifyEvent,
    reason: &str,
    progress: &str,
    public_url: &str,
) -> (String, String) {
    let subject = match event {
        NotifyEvent::Halted => format!(
            "[tollgate] {} {}: {} stopped in {}",
            p.name,
            r.id,
            crate::domain::short_sha(&r.sha),
            s.name
        ),
        NotifyEvent::RolledBack => format!(
            "[tollgate] {} {}: {} ROLLED BACK",
            p.name,
            s.name,
            crate::domain::short_sha(&r.sha)
        ),
    };
    let what = match event {
        NotifyEvent::Halted => format!("Release {} stopped in stage {}.", r.id, s.name),
        NotifyEvent::RolledBack => format!(
            "Stage {} was rolled back: release {} was removed and the stage's last known-good release restored.",
            s.name, r.id
        ),
    };
    let body = format!(
        "{what}\n\nWhy: {reason}\n\n{}\nTo see the event log: tollgate history {}\n",
        release_facts(p, r, progress, public_url),
        p.name
    );
    (truncate(&subject, 99), body)
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

/// SNS subjects must be under 100 characters, printable ASCII.
fn truncate(s: &str, max: usize) -> String {
    let clean: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect();
    clean.chars().take(max).collect()
}

//! Text for people: notification subjects and bodies, the facts of a release.
//!
//! Plain text a person can act on from a phone: what happened, to which commit and image,
//! why, and where to look. Never includes a secret or a token.

use chrono::{DateTime, Utc};

use crate::config::{InsufficientData, Pipeline, Stage};
use crate::domain::approval::{FILTER_POLICY_SETTLE, only_settling};
use crate::domain::{NotifyEvent, Reason, Release, ReleaseId, RequestState, RunStatus, Snapshot};

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

/// What a halt or rollback notification is about.
pub struct Notice<'a> {
    pub pipeline: &'a Pipeline,
    pub stage: &'a Stage,
    pub release: &'a Release,
    pub event: NotifyEvent,
    /// Why the run ended where it did.
    pub reason: &'a Reason,
    /// What already passed, for people.
    pub progress: &'a str,
    pub public_url: &'a str,
    pub now: DateTime<Utc>,
}

/// Subject and body of a halt or rollback notification: what happened, where, why, and what
/// the operator can do next.
pub fn notification(n: &Notice<'_>) -> (String, String) {
    let (p, s, r) = (n.pipeline, n.stage, n.release);
    let sha = crate::domain::short_sha(&r.sha);
    let subject = match n.event {
        NotifyEvent::Halted => format!(
            "[tollgate] {} {}: {sha} stopped in {}",
            p.name, r.id, s.name
        ),
        NotifyEvent::RolledBack => format!("[tollgate] {} {}: {sha} ROLLED BACK", p.name, s.name),
        NotifyEvent::ApprovalWithheld if links_go_out_at(n.reason).is_some() => format!(
            "[tollgate] {} {}: approval request for {} delayed",
            p.name, r.id, s.name
        ),
        NotifyEvent::ApprovalWithheld => format!(
            "[tollgate] {} {}: approval request for {} NOT SENT",
            p.name, r.id, s.name
        ),
    };
    let what = match n.event {
        NotifyEvent::Halted => format!("Release {} stopped in stage {}.", r.id, s.name),
        NotifyEvent::RolledBack => format!(
            "Stage {} was rolled back: release {} was removed and the stage's last known-good release restored.",
            s.name, r.id
        ),
        NotifyEvent::ApprovalWithheld => match links_go_out_at(n.reason) {
            Some(at) => format!(
                "The approval request of release {} for stage {} was not sent yet: the filter policy of a subscription on the approval topic changed less than {} minutes ago, and SNS takes up to {} minutes to apply a filter policy, so until then it could receive other approvers' personal links. The links go out at {} without anyone doing anything.",
                r.id,
                s.name,
                FILTER_POLICY_SETTLE.as_secs() / 60,
                FILTER_POLICY_SETTLE.as_secs() / 60,
                at.format("%Y-%m-%d %H:%M UTC")
            ),
            None => format!(
                "The approval request of release {} for stage {} was not sent: a subscription on the approval topic would have received every approver's personal link.",
                r.id, s.name
            ),
        },
    };
    let targets: Vec<String> = s
        .targets
        .iter()
        .map(|t| format!("{}/{}", t.account, t.region))
        .collect();
    let next: String = next_steps(n)
        .iter()
        .map(|step| format!("  - {step}\n"))
        .collect();
    let body = format!(
        "{what}\n\nWhere: pipeline {}, stage {} ({})\nWhy: {}\n\nWhat you can do:\n{next}\n{}\nTo see the event log: tollgate history {}\n",
        p.name,
        s.name,
        targets.join(", "),
        n.reason.describe(n.now),
        release_facts(p, r, n.progress, n.public_url),
        p.name
    );
    (truncate(&subject, 99), body)
}

/// The operator's options after a halt or rollback, as commands to run.
fn next_steps(n: &Notice<'_>) -> Vec<String> {
    let (p, s, r) = (&n.pipeline.name, &n.stage.name, n.release.id);
    let retry = format!("`tollgate retry {p} {r}` sends it again from {s} once the cause is fixed");
    let fix = "push a fix: the new commit goes through the stages as usual".to_string();
    let override_alarms = format!(
        "if this release is the fix for a firing alarm: `tollgate override {p} {r} --alarms --reason \"…\"` lets it past the alarm gate"
    );
    match (n.event, n.reason.root()) {
        (NotifyEvent::ApprovalWithheld, _) if links_go_out_at(n.reason).is_some() => vec![
            "nothing: the request is checked again on its own and sent once SNS has applied the filter policies".into(),
            "`tollgate status` shows which subscriptions are settling, and until when".into(),
        ],
        (NotifyEvent::ApprovalWithheld, _) => vec![
            format!(
                "give each subscription on {s}'s approval topic the filter policy {{\"approver\":[\"<name>\"]}} of one listed approver, or remove it"
            ),
            "the request is checked and sent again on its own once the topic is safe".into(),
            "`tollgate status` shows which subscriptions are in the way".into(),
        ],
        (NotifyEvent::RolledBack, _) => vec![
            format!("{r} is marked bad and is never promoted again automatically; {fix}"),
            format!("`tollgate status` shows what {s} runs now"),
        ],
        (_, Reason::RollbackFailed { .. }) => vec![
            format!("{s} is PAUSED: nothing new starts there until a person resumes it"),
            "bring the stack back to a stable state (docs/operations.md, \"A stuck stack\")".into(),
            format!("then `tollgate resume {p} --stage {s}`"),
        ],
        (_, Reason::Drift { .. }) => vec![
            format!("{s} is PAUSED: nothing new starts there until a person resumes it"),
            "find out who changed the target (CloudTrail, the stack's events) and decide what it should run (docs/operations.md, \"Drift\")".into(),
            format!("then `tollgate resume {p} --stage {s}`, or `tollgate retry {p} {r}` to deploy this release again"),
        ],
        (_, Reason::Rejected { by }) => vec![format!(
            "{by} rejected it: a rejection is not retried; {fix}"
        )],
        (_, Reason::ApprovalExpired { .. }) => vec![format!(
            "nobody approved in time: `tollgate retry {p} {r}` asks the approvers again"
        )],
        // `roll_back` with no known-good release to return to: the stage's policy says an alarm
        // without data is a bad sign, so the steps are about the service, not the policy.
        (_, Reason::NotEnoughData { .. })
            if n.stage.insufficient_data == InsufficientData::RollBack =>
        {
            vec![
                format!(
                    "{s} keeps running {r}: an alarm had no data once the bake time was over \
                     (`insufficient_data = \"roll_back\"`), and {s} has no known-good release to \
                     return to"
                ),
                "check whether the service is down or stopped publishing its metrics".into(),
                retry,
                fix,
            ]
        }
        (_, Reason::NotEnoughData { .. }) => vec![
            format!(
                "{s} keeps running {r} but does not count it as known-good: no alarm found it bad, \
                 and the alarms had too little data to find it good"
            ),
            "check that the service gets traffic and publishes the alarms' metrics \
             (docs/operations.md); a stage that is always this quiet needs a lower \
             `min_datapoints` or `insufficient_data = \"pass\"`"
                .into(),
            retry,
            fix,
        ],
        (_, Reason::AlarmFired { .. } | Reason::AlarmPolled { .. }) => {
            vec![fix, override_alarms]
        }
        _ => vec![retry, fix, override_alarms],
    }
}

/// When a withheld request's links go out on their own: every subscription in their way only
/// waits for SNS to apply its changed filter policy.
fn links_go_out_at(reason: &Reason) -> Option<DateTime<Utc>> {
    match reason {
        Reason::AwaitingApproval {
            request: RequestState::Withheld { exposed, .. },
            ..
        } => only_settling(exposed),
        _ => None,
    }
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

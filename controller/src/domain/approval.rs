//! Who brought a change, and which approvals count (invariant 9).
//!
//! Owns the rule shared by the planner (counting approvals before a deploy) and the approval
//! gate (refusing a decision before it is recorded): an approval counts only for the attempt
//! it was given in, from an approver listed now, who did not bring the change — the head
//! commit's author or committer, the pusher or sender of the push, the author or committer of
//! any commit in the push, the workflow run's actor or triggering actor, or the author or
//! merger of a pull request the commit belongs to. People are compared by GitHub login and by
//! email, both without regard to case.
//!
//! Also owns the typed account of an approval request that was withheld because a
//! subscription on the approval topic would have received every approver's personal link, or
//! may still receive them under a filter policy that changed less than
//! [`FILTER_POLICY_SETTLE`] ago ([`PolicyHistory`]).
//!
//! Must never: do I/O, or match people by anything but login and email (a display name is
//! only compared for a name typed on a shared link, which is unverified anyway).

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::types::{ApprovalRecord, Decision, Release};
use crate::config::{Approval, Approver};

/// The part a person had in bringing a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContributorRole {
    /// The head commit's git author.
    Author,
    /// The head commit's git committer.
    Committer,
    /// Who pushed the commits (`push.pusher`).
    Pusher,
    /// The account whose action sent the webhook (`sender`).
    Sender,
    /// The author of another commit in the push.
    CommitAuthor,
    /// The committer of another commit in the push.
    CommitCommitter,
    /// The account the build run belongs to (`workflow_run.actor`).
    WorkflowActor,
    /// The account that started (or re-ran) the build run (`workflow_run.triggering_actor`).
    TriggeringActor,
    /// The author of a pull request the commit belongs to.
    PullRequestAuthor,
    /// Who merged a pull request the commit belongs to.
    PullRequestMerger,
}

impl ContributorRole {
    /// What the person did, said to them: "you merged this change".
    pub fn to_you(self) -> &'static str {
        match self {
            ContributorRole::Author => "you wrote this commit",
            ContributorRole::Committer => "you committed this commit",
            ContributorRole::Pusher => "you pushed this change",
            ContributorRole::Sender => "your action sent this change to tollgate",
            ContributorRole::CommitAuthor => "you wrote a commit in this change",
            ContributorRole::CommitCommitter => "you committed a commit in this change",
            ContributorRole::WorkflowActor => "the build of this change ran as you",
            ContributorRole::TriggeringActor => "you started the build of this change",
            ContributorRole::PullRequestAuthor => "you opened the pull request of this change",
            ContributorRole::PullRequestMerger => "you merged this change",
        }
    }
}

impl fmt::Display for ContributorRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            ContributorRole::Author => "author",
            ContributorRole::Committer => "committer",
            ContributorRole::Pusher => "pusher",
            ContributorRole::Sender => "sender",
            ContributorRole::CommitAuthor => "commit author",
            ContributorRole::CommitCommitter => "commit committer",
            ContributorRole::WorkflowActor => "workflow actor",
            ContributorRole::TriggeringActor => "triggering actor",
            ContributorRole::PullRequestAuthor => "pull request author",
            ContributorRole::PullRequestMerger => "pull request merger",
        };
        f.write_str(s)
    }
}

/// One person who brought a change, in one role: a GitHub login, an email, or both.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Contributor {
    pub role: ContributorRole,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub login: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
}

impl Contributor {
    /// A contributor from what a payload gives; blank values are left out, and `None` when
    /// nothing identifies the person.
    pub fn new(role: ContributorRole, login: Option<&str>, email: Option<&str>) -> Option<Self> {
        let clean = |s: Option<&str>| {
            s.map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
        };
        let (login, email) = (clean(login), clean(email));
        (login.is_some() || email.is_some()).then_some(Contributor { role, login, email })
    }

    /// Is this the person with `login` or `email` (either may be absent)?
    pub fn is(&self, login: Option<&str>, email: Option<&str>) -> bool {
        let same = |a: &Option<String>, b: Option<&str>| match (a, b.map(str::trim)) {
            (Some(a), Some(b)) if !b.is_empty() => a.eq_ignore_ascii_case(b),
            _ => false,
        };
        same(&self.login, login) || same(&self.email, email)
    }
}

/// Sorted, without repeats: the set a release stores.
pub fn contributor_set(people: impl IntoIterator<Item = Contributor>) -> Vec<Contributor> {
    let mut all: Vec<Contributor> = people.into_iter().collect();
    all.sort();
    all.dedup();
    all
}

/// The person deciding, as far as the rules know them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity<'a> {
    /// A listed approver (their configured login and email are what count), or `None`.
    pub approver: Option<&'a Approver>,
    /// The name recorded: the listed approver's name or what was typed on a shared link.
    pub name: &'a str,
}

impl Release {
    /// The first role in which the person brought this change, if they did. A listed
    /// approver is compared by their configured GitHub login and email; a name typed on a
    /// shared link (unverified) by login, email and the head commit's author name.
    pub fn brought_by(&self, who: Identity<'_>) -> Option<ContributorRole> {
        let found = match who.approver {
            Some(a) => self
                .contributors
                .iter()
                .find(|c| c.is(a.github.as_deref(), Some(&a.email))),
            None => self
                .contributors
                .iter()
                .find(|c| c.is(Some(who.name), Some(who.name))),
        };
        if let Some(c) = found {
            return Some(c.role);
        }
        let typed_author = who.approver.is_none()
            && !self.author_name.trim().is_empty()
            && self
                .author_name
                .trim()
                .eq_ignore_ascii_case(who.name.trim());
        typed_author.then_some(ContributorRole::Author)
    }
}

/// The listed approver recorded under `name` (approvals are recorded by approver name).
pub fn listed<'a>(approval: &'a Approval, name: &str) -> Option<&'a Approver> {
    approval.approvers.iter().find(|a| a.name == name)
}

/// Invariant 9: does this recorded approval count for the run's attempt `attempt` now?
/// Only approvals count here (a rejection is read by [`rejects`]).
pub fn counts(approval: &Approval, release: &Release, attempt: u32, a: &ApprovalRecord) -> bool {
    if a.decision != Decision::Approve || a.attempt != attempt || a.release != release.id {
        return false;
    }
    let who = if approval.approvers.is_empty() {
        Identity {
            approver: None,
            name: &a.approver,
        }
    } else {
        // Approvers dropped from the list no longer count; nor does a listed approver's name
        // typed on a shared link.
        match listed(approval, &a.approver) {
            Some(ap) if a.verified => Identity {
                approver: Some(ap),
                name: &a.approver,
            },
            _ => return false,
        }
    };
    approval.allow_author || release.brought_by(who).is_none()
}

/// Is this a rejection that ends the run's attempt `attempt`?
pub fn rejects(attempt: u32, a: &ApprovalRecord) -> bool {
    a.decision == Decision::Reject && a.attempt == attempt
}

/// Why a subscription on an approval topic would leak personal links.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Exposure {
    /// No filter policy: it receives every message on the topic.
    Unfiltered,
    /// A filter policy that does not select exactly one listed approver.
    NotOneApprover { policy: String },
    /// A filter policy scoped to the message body, which carries no approver attribute.
    BodyScoped { policy: String },
    /// Filtered to one approver, but delivering somewhere other than that approver's own email
    /// address (an HTTP endpoint, a queue, another address): whoever reads it gets their link.
    NotTheirInbox { approver: String },
    /// Filtered to its approver now, but its filter policy changed less than
    /// [`FILTER_POLICY_SETTLE`] ago: SNS may still deliver under the old one until `until`.
    PolicySettling { until: DateTime<Utc> },
}

/// How long SNS may go on delivering under a subscription's previous filter policy: "Additions
/// or changes to a subscription filter policy require up to 15 minutes to fully take effect."
/// (<https://docs.aws.amazon.com/sns/latest/dg/sns-subscription-filter-policies.html>)
pub const FILTER_POLICY_SETTLE: Duration = Duration::from_secs(15 * 60);

/// What tollgate knows of the last changes to one subscription's filter policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyHistory {
    /// The subscription's ARN.
    pub subscription: String,
    /// The topic's ARN.
    pub topic: String,
    /// When tollgate last set its filter policy (created it with one, or corrected it).
    pub policy_set_at: Option<DateTime<Utc>>,
    /// When an audit last saw it exposed: whatever made it safe since changed after that.
    pub exposed_seen_at: Option<DateTime<Utc>>,
}

/// A change to a subscription's filter policy, as tollgate learns of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyChange {
    /// Tollgate set the policy (or is about to: the time is taken before the call).
    Set,
    /// An audit saw the subscription exposed.
    SeenExposed,
}

impl PolicyHistory {
    /// When SNS has applied the subscription's current filter policy for sure.
    pub fn settled_at(&self) -> Option<DateTime<Utc>> {
        let changed = self.policy_set_at.max(self.exposed_seen_at)?;
        Some(changed + chrono::Duration::from_std(FILTER_POLICY_SETTLE).unwrap_or_default())
    }

    /// Until when the subscription may still deliver under an earlier policy, seen at `now`;
    /// `None` once settled.
    pub fn settling_until(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.settled_at().filter(|until| *until > now)
    }
}

/// A confirmed subscription that would receive approval links meant for others.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ExposedSubscription {
    pub arn: String,
    pub protocol: String,
    /// Where it delivers, as the adapter shows it: of an HTTP(S) URL only its scheme, the last
    /// two labels of its host name and its port (any other part can hold credentials).
    pub endpoint: String,
    pub exposure: Exposure,
}

impl fmt::Display for ExposedSubscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let why = match &self.exposure {
            Exposure::Unfiltered => "has no filter policy".to_string(),
            Exposure::NotOneApprover { policy } => {
                format!("has the filter policy {policy}, which is not one listed approver's")
            }
            Exposure::BodyScoped { policy } => {
                format!("filters on the message body ({policy}), not on the approver attribute")
            }
            Exposure::NotTheirInbox { approver } => {
                format!("receives {approver}'s links but is not {approver}'s own email address")
            }
            Exposure::PolicySettling { until } => format!(
                "had its filter policy changed less than {} minutes ago and may receive other \
                 approvers' links until {}",
                FILTER_POLICY_SETTLE.as_secs() / 60,
                until.format("%Y-%m-%d %H:%M:%S UTC")
            ),
        };
        write!(
            f,
            "subscription {} ({} {}) {why}",
            self.arn, self.protocol, self.endpoint
        )
    }
}

/// One sentence for people: which approvers were sent no link because their email subscription
/// awaits confirmation (`awaiting`), and who has theirs (`sent`). Names only (never email
/// addresses).
pub fn describe_unconfirmed(awaiting: &[String], sent: &[String]) -> String {
    let (subscriptions, are) = match awaiting.len() {
        1 => ("subscription", "is"),
        _ => ("subscriptions", "are"),
    };
    let pending = "pending confirmation, and SNS delivers nothing until the approver follows \
                   the link in AWS's confirmation email";
    let waiting = awaiting.join(", ");
    if sent.is_empty() {
        return format!(
            "no approver can receive the request yet: the email {subscriptions} of {waiting} to \
             the approval topic {are} {pending}"
        );
    }
    format!(
        "no link sent to {waiting}: their email {subscriptions} to the approval topic {are} \
         {pending}; sent to {}",
        sent.join(", ")
    )
}

/// One sentence naming every exposed subscription: those that would receive every
/// approver's link, and those whose filter policy SNS may not have applied yet.
pub fn describe_exposed(subs: &[ExposedSubscription]) -> String {
    let (settling, leaky): (Vec<&ExposedSubscription>, Vec<&ExposedSubscription>) = subs
        .iter()
        .partition(|s| matches!(s.exposure, Exposure::PolicySettling { .. }));
    let each = |subs: &[&ExposedSubscription]| {
        let each: Vec<String> = subs.iter().map(ToString::to_string).collect();
        each.join("; ")
    };
    let mut parts = Vec::new();
    if !leaky.is_empty() {
        parts.push(format!(
            "{} and would receive every approver's link; give it a filter policy \
             {{\"approver\":[\"<name>\"]}} for one listed approver, or remove it",
            each(&leaky)
        ));
    }
    if let Some(until) = settling_until(subs) {
        parts.push(format!(
            "{}: SNS takes up to {} minutes to apply a filter policy, so no link goes out \
             before {}",
            each(&settling),
            FILTER_POLICY_SETTLE.as_secs() / 60,
            until.format("%Y-%m-%d %H:%M:%S UTC")
        ));
    }
    format!("personal approval links withheld: {}", parts.join("; and "))
}

/// The latest time until which a subscription in `subs` may deliver under an earlier filter
/// policy (`None` when none may).
pub fn settling_until(subs: &[ExposedSubscription]) -> Option<DateTime<Utc>> {
    subs.iter()
        .filter_map(|s| match s.exposure {
            Exposure::PolicySettling { until } => Some(until),
            _ => None,
        })
        .max()
}

/// When the links go out on their own: `Some` when every subscription in `subs` only waits
/// for SNS to apply its filter policy (nothing for a person to fix).
pub fn only_settling(subs: &[ExposedSubscription]) -> Option<DateTime<Utc>> {
    let all = subs
        .iter()
        .all(|s| matches!(s.exposure, Exposure::PolicySettling { .. }));
    settling_until(subs).filter(|_| all)
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn at(minute: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 1, 10, minute, 0).unwrap()
    }

    fn history(set: Option<u32>, exposed: Option<u32>) -> PolicyHistory {
        PolicyHistory {
            subscription: "arn:aws:sns:eu-west-1:111111111111:approvals:1".into(),
            topic: "arn:aws:sns:eu-west-1:111111111111:approvals".into(),
            policy_set_at: set.map(at),
            exposed_seen_at: exposed.map(at),
        }
    }

    #[test]
    fn a_policy_settles_fifteen_minutes_after_its_last_known_change() {
        assert_eq!(history(None, None).settled_at(), None);
        assert_eq!(history(Some(5), None).settled_at(), Some(at(20)));
        assert_eq!(history(Some(5), Some(9)).settled_at(), Some(at(24)));
        assert_eq!(history(Some(9), Some(5)).settled_at(), Some(at(24)));
        let h = history(None, Some(9));
        assert_eq!(h.settling_until(at(23)), Some(at(24)));
        assert_eq!(h.settling_until(at(24)), None, "settled at the minute");
        assert_eq!(history(None, None).settling_until(at(0)), None);
    }

    fn sub(exposure: Exposure) -> ExposedSubscription {
        ExposedSubscription {
            arn: "arn:aws:sns:eu-west-1:111111111111:approvals:1".into(),
            protocol: "email".into(),
            endpoint: "alice@example.com".into(),
            exposure,
        }
    }

    #[test]
    fn a_settling_policy_is_explained_with_the_time_the_links_go_out() {
        let settling = [sub(Exposure::PolicySettling { until: at(20) })];
        let said = describe_exposed(&settling);
        assert!(
            said.contains("SNS takes up to 15 minutes to apply a filter policy")
                && said.contains("no link goes out before 2026-03-01 10:20:00 UTC")
                && !said.contains("remove it"),
            "{said}"
        );
        assert_eq!(only_settling(&settling), Some(at(20)));
        let both = [sub(Exposure::Unfiltered), settling[0].clone()];
        let said = describe_exposed(&both);
        assert!(
            said.contains("has no filter policy") && said.contains("10:20:00"),
            "{said}"
        );
        assert_eq!(only_settling(&both), None, "a person has to act");
        assert_eq!(settling_until(&both), Some(at(20)));
    }

    #[test]
    fn exposures_stored_before_settling_existed_still_read() {
        let old =
            r#"{"arn":"a","protocol":"email","endpoint":"e","exposure":{"kind":"unfiltered"}}"#;
        let read: ExposedSubscription = serde_json::from_str(old).unwrap();
        assert_eq!(read.exposure, Exposure::Unfiltered);
        let new = sub(Exposure::PolicySettling { until: at(20) });
        let json = serde_json::to_value(&new).unwrap();
        assert_eq!(json["exposure"]["kind"], "policy_settling");
        assert_eq!(
            serde_json::from_value::<ExposedSubscription>(json).unwrap(),
            new
        );
    }
}

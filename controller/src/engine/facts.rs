//! The facts that enter tollgate from outside, as the ingest API ([`super::Ingest`]) takes
//! them: who sent them ([`Delivery`]), and what they say.
//!
//! Owns the shape of incoming facts. Must never: hold a secret (a webhook's signature or an
//! approval token is checked before a fact is made), or be written to the store except through
//! the ingest API.

use crate::domain::approval::contributor_set;
use crate::domain::{Contributor, ContributorRole, Decision, ReleaseId};

/// Where a fact came from, for deduplication and the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// `github`, `sns`, `api`, `cli`…
    pub source: String,
    /// The delivery's own id (X-GitHub-Delivery, SNS MessageId, request id).
    pub id: String,
}

/// The outcome of recording a fact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ingested<T> {
    Recorded(T),
    /// The same delivery was recorded before: nothing changed.
    Duplicate,
}

/// A release as it arrives.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewRelease {
    pub pipeline: String,
    pub sha: String,
    pub branch: String,
    pub author_name: String,
    pub author_email: String,
    pub author_login: Option<String>,
    /// Everyone else the payload names as having brought the change (committer, pusher,
    /// sender, commit authors, workflow actors); the head commit's author is added from the
    /// fields above.
    pub contributors: Vec<Contributor>,
    pub message: String,
    pub url: Option<String>,
    pub alarm_override: Option<String>,
    pub window_override: Option<String>,
}

impl NewRelease {
    /// The set stored with the release: the head commit's author and everyone in
    /// `contributors`.
    pub fn all_contributors(&self) -> Vec<Contributor> {
        let author = Contributor::new(
            ContributorRole::Author,
            self.author_login.as_deref(),
            Some(&self.author_email),
        );
        contributor_set(author.into_iter().chain(self.contributors.iter().cloned()))
    }
}

/// An approval or rejection as it arrives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewApproval {
    pub pipeline: String,
    pub release: ReleaseId,
    pub stage: String,
    pub approver: String,
    pub decision: Decision,
    /// The run's attempt the decision is given in.
    pub attempt: u32,
    /// False when the approver's identity was only claimed (shared link).
    pub verified: bool,
    /// Who acted: `approver:alice`, `api-key:ops-1`.
    pub actor: String,
    /// Source address, user agent and the like, for the audit log.
    pub context: String,
}

/// Which rule an explicit override lifts for one release.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Override {
    /// Enter a stage even though one of its alarms is in ALARM (the fix for that alarm).
    Alarms,
    /// Deploy outside the stage's deployment windows.
    Window,
}

impl Override {
    /// What the release may do once the override is set, for people.
    pub fn lifts(self) -> &'static str {
        match self {
            Override::Alarms => "may enter stages whose alarms are in ALARM",
            Override::Window => "may deploy outside deployment windows",
        }
    }
}

/// An alarm notification as it arrives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAlarm {
    pub pipeline: String,
    pub stage: String,
    pub alarm: String,
    pub firing: bool,
    pub reason: String,
    /// CloudWatch's `StateChangeTime`; `None` when the message had none (arrival time then).
    pub changed_at: Option<chrono::DateTime<chrono::Utc>>,
}

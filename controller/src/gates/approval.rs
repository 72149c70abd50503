//! Approval requests: personal links by SNS email, tokens, and the rules for counting approvals.
//!
//! Owns the two halves of a human approval:
//! - **Asking**: [`SnsApprovalSender`], the real [`ApprovalSender`]. For each approver listed
//!   in the stage's `approval` it mints a token bound to that approver
//!   ([`Store::issue_approval_token`]) and publishes one message to the stage's topic with the
//!   message attribute `approver=<name>`, so that approver's subscription filter policy
//!   (`{"approver":["<name>"]}`, kept by [`SnsNotifier::ensure_approver_subscriptions`]) routes
//!   it to their inbox alone. An approver with no confirmed email subscription (pending
//!   confirmation: SNS would deliver nothing) gets no token and no message, and the outcome
//!   says so per approver ([`SendOutcome::Unconfirmed`]); a later send under the same key
//!   reaches them once confirmed. With no listed approvers it publishes one shared link, and
//!   the page asks for the approver's name (recorded, marked unverified).
//!   Nothing is published ([`SendOutcome::Withheld`]) while a confirmed subscription on the
//!   topic would receive others' links, or may still: SNS takes up to 15 minutes
//!   ([`rules::FILTER_POLICY_SETTLE`]) to apply a changed filter policy, so a subscription
//!   whose policy tollgate set (made it with one, or corrected it), or which an audit saw
//!   exposed, counts as settled only that long after the later of the two. Both times are
//!   kept in the store ([`Store::record_policy_change`]), so a restart does not forget them.
//! - **Deciding**: the rules every decision goes through, whether it comes from a link
//!   ([`decide_by_link`], used by `POST /approvals/{token}`) or from a caller that
//!   authenticated the approver itself ([`decide`], for the CLI and the dashboard). A decision
//!   is refused when the request is no longer open (superseded by a newer release, rejected,
//!   expired, or the stage moved on), when this approver (or this link) already decided, when
//!   the commit's author approves their own change (unless `allow_author`), and when the
//!   identity is not one of the stage's approvers. Only then is it recorded, through
//!   [`crate::engine::Ingest::record_approval`], which writes the approval and the event log in one
//!   transaction and wakes the reconciler. Counting approvals (`min_approvals` distinct
//!   approvers, one rejection ends the request) is the planner's.
//!
//! # Guarantees
//! - Temporary failures are the adapters' to retry: the store reads and writes of a send are
//!   retried here under the controller's one policy ([`Backoff`], set with
//!   [`SnsApprovalSender::with_backoff`]), the publishes by the [`Notifier`] itself (SNS goes
//!   through the AWS limiter), so no attempt is multiplied. `Retryable` is returned only once
//!   a budget is spent.
//! - Idempotent per request key: a send repeated under the same key (a retry, or the engine
//!   performing the effect again after a crash) publishes nothing for an approver whose link
//!   was already published, and mints a new link only for an approver whose link never went
//!   out; that new link replaces the unsent one in the same transaction, so each approver has
//!   at most one live link per request. A crash between SNS accepting a message and the
//!   link being marked published means a second email with a new link; the first link then
//!   answers "replaced by a newer email".
//! - A link is used once: the decision is recorded under the link's own delivery id (derived
//!   from the token's hash), which the store accepts once.
//! - Nothing here changes state before every rule passed.
//! - Tokens are issued and marked published at the injected [`Clock`]'s time.
//!
//! # Caveats
//! - The rules are checked just before the decision is recorded, not in its transaction: a
//!   newer release that supersedes this one in between leaves an approval of a release that
//!   will not deploy, which is harmless (the planner never deploys a superseded run).
//!
//! # Must never
//! - log a token or a message body (it carries the link).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::aws::sns::{SnsNotifier, SubscriptionAudit};
use crate::backoff::Backoff;
use crate::config::{Approval, Approver};
use crate::domain::approval::{self as rules, Identity};
use crate::domain::{
    ApprovalRecord, ContributorRole, Decision, PolicyChange, Release, ReleaseId, RunStatus,
    StageRun,
};
use crate::engine::clock::{Clock, SystemClock};
use crate::engine::ports::{
    ApprovalRequest, ApprovalSender, ApproverLink, Forge, LinkDelivery, Message, Notifier,
    PortError, PortResult, SendOutcome,
};
use crate::engine::{Delivery, Ingested, NewApproval};
use crate::engine::{Engine, EngineResult};
use crate::store::approvals::{Issued, NewToken, TokenRecord};
use crate::store::{Store, StoreError};

/// The message attribute the approvers' subscription filter policies match on.
pub const APPROVER_ATTRIBUTE: &str = "approver";
/// The `source` of decisions recorded through [`decide`].
pub const API_DELIVERY_SOURCE: &str = "approval-api";
/// The longest name accepted on a shared link's page.
pub const MAX_NAME_CHARS: usize = 64;

// ----- asking ----------------------------------------------------------------------------------

/// Sends approval requests as SNS messages carrying one personal link per approver.
pub struct SnsApprovalSender {
    store: Store,
    notifier: Arc<dyn Notifier>,
    public_url: String,
    subscriptions: Option<Arc<SnsNotifier>>,
    forge: Option<Arc<dyn Forge>>,
    backoff: Backoff,
    clock: Arc<dyn Clock>,
}

/// Who one message is for: a listed approver, or everyone on the topic (a shared link).
type Recipient<'a> = Option<&'a Approver>;

impl SnsApprovalSender {
    /// Links start with `public_url` (a trailing `/` is ignored).
    pub fn new(store: Store, notifier: Arc<dyn Notifier>, public_url: &str) -> SnsApprovalSender {
        SnsApprovalSender {
            store,
            notifier,
            public_url: public_url.trim_end_matches('/').to_string(),
            subscriptions: None,
            forge: None,
            backoff: Backoff::default(),
            clock: Arc::new(SystemClock),
        }
    }

    /// Retries temporary store failures under `backoff` instead of the default policy.
    pub fn with_backoff(mut self, backoff: Backoff) -> SnsApprovalSender {
        self.backoff = backoff;
        self
    }

    /// Stamps tokens with `clock`'s time instead of the system clock's (use the engine's).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> SnsApprovalSender {
        self.clock = clock;
        self
    }

    /// Before publishing, make sure each approver has their filtered email subscription.
    pub fn with_subscriptions(mut self, subs: Arc<SnsNotifier>) -> SnsApprovalSender {
        self.subscriptions = Some(subs);
        self
    }

    /// Before sending, looks up the authors and mergers of the commit's pull requests on
    /// GitHub (when configured) so that none of them can approve.
    pub fn with_forge(mut self, forge: Arc<dyn Forge>) -> SnsApprovalSender {
        self.forge = Some(forge);
        self
    }

    /// Subscribes the approvers, then checks that every confirmed subscription on the topic
    /// is one listed approver's (personal links go out only then) and has been so for
    /// [`rules::FILTER_POLICY_SETTLE`] (one whose policy changed since is in `exposed`,
    /// settling), and which approvers have no confirmed subscription yet. Any failure to
    /// manage or list the subscriptions, or to note their changes, stops the send (nothing is
    /// published).
    async fn check_subscriptions(&self, req: &ApprovalRequest) -> PortResult<SubscriptionAudit> {
        let Some(subs) = &self.subscriptions else {
            return Ok(SubscriptionAudit::default());
        };
        if req.approvers.is_empty() {
            return Ok(SubscriptionAudit::default());
        }
        self.fix_subscriptions(subs, req).await?;
        let mut audit = subs.audit_subscriptions(&req.topic, &req.approvers).await?;
        self.add_settling(&req.topic, &mut audit).await?;
        Ok(audit)
    }

    /// Makes the approvers' subscriptions theirs alone, noting each policy set: a correction
    /// before it is made (it may then be noted and not made, which only delays the links), a
    /// new subscription once SNS gave its ARN.
    async fn fix_subscriptions(&self, subs: &SnsNotifier, req: &ApprovalRequest) -> PortResult<()> {
        let fixes = subs.subscription_fixes(&req.topic, &req.approvers).await?;
        let known: Vec<String> = fixes
            .iter()
            .filter_map(|f| f.arn().map(str::to_string))
            .collect();
        self.note_policies(&req.topic, &known, PolicyChange::Set)
            .await?;
        for fix in &fixes {
            let set = subs.apply_fix(&req.topic, fix).await?;
            // SNS returns the ARN of a new subscription, pending or not (`ReturnSubscriptionArn`).
            if let (None, Some(arn)) = (fix.arn(), set) {
                self.note_policies(&req.topic, &[arn], PolicyChange::Set)
                    .await?;
            }
        }
        Ok(())
    }

    /// Notes the exposed subscriptions as seen exposed now, and adds to them every personal
    /// one whose filter policy changed less than [`rules::FILTER_POLICY_SETTLE`] ago: SNS
    /// may still deliver other approvers' links to it under its earlier policy.
    async fn add_settling(&self, topic: &str, audit: &mut SubscriptionAudit) -> PortResult<()> {
        let exposed: Vec<String> = audit.exposed.iter().map(|e| e.arn.clone()).collect();
        self.note_policies(topic, &exposed, PolicyChange::SeenExposed)
            .await?;
        let history = self
            .stored("reading when filter policies changed", || {
                self.store.policy_history(topic)
            })
            .await?;
        let now = self.clock.now();
        for sub in &audit.personal {
            let until = history
                .iter()
                .find(|h| h.subscription == sub.arn)
                .and_then(|h| h.settling_until(now));
            audit.exposed.extend(until.map(|until| sub.settling(until)));
        }
        Ok(())
    }

    /// Records that the filter policies of `arns` on `topic` changed now, as `change` says.
    async fn note_policies(
        &self,
        topic: &str,
        arns: &[String],
        change: PolicyChange,
    ) -> PortResult<()> {
        if arns.is_empty() {
            return Ok(());
        }
        self.stored("noting a filter policy change", || {
            self.store
                .record_policy_change(topic, arns, change, self.clock.now())
        })
        .await
    }

    /// Mints (or finds already sent) the link of one recipient and publishes it.
    async fn send_one(
        &self,
        req: &ApprovalRequest,
        release: &Release,
        to: Recipient<'_>,
    ) -> PortResult<()> {
        let new = NewToken {
            request_key: req.key.clone(),
            pipeline: req.pipeline.clone(),
            release: req.release,
            stage: req.stage.clone(),
            attempt: req.attempt,
            approver: to.map(|a| a.name.clone()),
            recipient: to.map(|a| a.email.clone()),
            expires_at: req.expires_at,
        };
        let issued = self
            .stored("issuing an approval token", || {
                self.store.issue_approval_token(&new, self.clock.now())
            })
            .await?;
        let Issued::New(issued) = issued else {
            return Ok(());
        };
        let link = format!("{}/approvals/{}", self.public_url, issued.token.expose());
        let msg = Message {
            key: format!(
                "{}/{}/{}",
                req.key,
                recipient_key(to),
                &issued.record.hash[..16]
            ),
            topic: req.topic.clone(),
            subject: subject(req, release),
            body: body(req, release, to, &link),
            attributes: to
                .map(|a| BTreeMap::from([(APPROVER_ATTRIBUTE.to_string(), a.name.clone())]))
                .unwrap_or_default(),
        };
        let id = self.notifier.publish(&msg).await?;
        let hash = &issued.record.hash;
        self.stored("marking an approval link sent", || {
            self.store
                .mark_approval_token_published(hash, self.clock.now())
        })
        .await?;
        tracing::info!(key = %req.key, approver = recipient_key(to), message_id = %id, "approval link sent");
        Ok(())
    }
}

#[async_trait]
impl ApprovalSender for SnsApprovalSender {
    /// Returns how many links are out for this request (those sent now and those an earlier
    /// attempt under the same key already sent), or which approvers were sent nothing because
    /// their subscription is not confirmed, or the subscriptions that withheld every link.
    async fn send(&self, req: &ApprovalRequest) -> PortResult<SendOutcome> {
        let release = self
            .stored("reading the release", || self.store.release(req.release))
            .await?
            .ok_or_else(|| PortError::NotFound(format!("release {}", req.release)))?;
        let release = self.with_pull_people(req, release).await?;
        // An approver whose address changed (a reload) loses the link sent to the old one at
        // once, whatever the subscriptions say; the new address gets one once it can.
        let addresses: Vec<(String, String)> = req
            .approvers
            .iter()
            .map(|a| (a.name.clone(), a.email.clone()))
            .collect();
        let retired = self
            .stored("replacing links sent to old addresses", || {
                self.store
                    .retire_links_sent_elsewhere(&req.key, &addresses, self.clock.now())
            })
            .await?;
        if !retired.is_empty() {
            tracing::warn!(key = %req.key, approvers = %retired.join(", "), "approval links sent to an approver's previous address replaced");
        }
        let audit = self.check_subscriptions(req).await?;
        if !audit.exposed.is_empty() {
            let exposed = audit.exposed;
            tracing::warn!(key = %req.key, topic = %req.topic, exposed = exposed.len(), "approval links withheld: the topic has subscriptions that would receive every link, or may until SNS applies their filter policy");
            return Ok(SendOutcome::Withheld(exposed));
        }
        // An approver who had their link and whose subscription is gone or pending again
        // (they unsubscribed, or it was made again) still has it: only those who never got
        // one are waiting.
        let sent = self
            .stored("reading the links sent", || {
                self.store.approvers_sent(&req.key)
            })
            .await?;
        let unconfirmed: Vec<String> = audit
            .unconfirmed
            .into_iter()
            .filter(|name| !sent.contains(name))
            .collect();
        self.send_reachable(req, &release, &unconfirmed).await
    }
}

impl SnsApprovalSender {
    /// Publishes the shared link, or the link of every listed approver but the `unconfirmed`
    /// (SNS would deliver them nothing), and says who has theirs.
    async fn send_reachable(
        &self,
        req: &ApprovalRequest,
        release: &Release,
        unconfirmed: &[String],
    ) -> PortResult<SendOutcome> {
        if req.approvers.is_empty() {
            self.send_one(req, release, None).await?;
            return Ok(SendOutcome::Sent(1));
        }
        for to in req
            .approvers
            .iter()
            .filter(|a| !unconfirmed.contains(&a.name))
        {
            self.send_one(req, release, Some(to)).await?;
        }
        if unconfirmed.is_empty() {
            return Ok(SendOutcome::Sent(req.approvers.len()));
        }
        let waiting = unconfirmed.join(", ");
        tracing::warn!(key = %req.key, topic = %req.topic, approvers = %waiting, "approval links not sent: these approvers' email subscriptions are pending confirmation");
        Ok(SendOutcome::Unconfirmed(links(req, unconfirmed)))
    }
}

/// Each listed approver and whether their link went out: all but the `unconfirmed` did.
fn links(req: &ApprovalRequest, unconfirmed: &[String]) -> Vec<ApproverLink> {
    let delivery = |name: &String| {
        if unconfirmed.contains(name) {
            LinkDelivery::AwaitingConfirmation
        } else {
            LinkDelivery::Sent
        }
    };
    req.approvers
        .iter()
        .map(|a| ApproverLink {
            approver: a.name.clone(),
            delivery: delivery(&a.name),
        })
        .collect()
}

impl SnsApprovalSender {
    /// The release with its pull requests' authors and mergers, looked up once.
    async fn with_pull_people(&self, req: &ApprovalRequest, r: Release) -> PortResult<Release> {
        let Some(forge) = &self.forge else {
            return Ok(r);
        };
        if r.pulls_checked {
            return Ok(r);
        }
        let Some(people) = forge.pull_request_people(&req.repository, &r.sha).await? else {
            return Ok(r);
        };
        let id = r.id;
        let updated = self
            .stored("recording pull request people", || {
                self.store.add_pull_contributors(id, &people)
            })
            .await?;
        Ok(updated.unwrap_or(r))
    }

    /// A store call, retried while the database is busy or unreachable.
    async fn stored<T, F, Fut>(&self, what: &str, mut op: F) -> PortResult<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        let attempt = || {
            let call = op();
            async move { call.await.map_err(store_error) }
        };
        self.backoff.retry(what, attempt).await
    }
}

/// A store failure: temporary when the database was busy, locked or unreachable.
fn store_error(e: StoreError) -> PortError {
    let text = e.to_string();
    match &e {
        StoreError::Db(db) if transient(db) => PortError::Retryable(text),
        _ => PortError::Failed(text),
    }
}

fn transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::WorkerCrashed => true,
        // SQLITE_BUSY (5) and SQLITE_LOCKED (6), with their extended codes.
        sqlx::Error::Database(d) => d
            .code()
            .and_then(|c| c.parse::<i64>().ok())
            .is_some_and(|c| matches!(c & 0xff, 5 | 6)),
        _ => false,
    }
}

fn recipient_key(to: Recipient<'_>) -> &str {
    to.map_or("shared", |a| a.name.as_str())
}

fn subject(req: &ApprovalRequest, r: &Release) -> String {
    format!(
        "[tollgate] Approve {} {} for {}? {} by {}",
        req.pipeline,
        r.id,
        req.stage,
        crate::domain::short_sha(&r.sha),
        r.author_name
    )
}

/// The plain-text message: what waits, the link, whose link it is and until when, then the
/// facts the engine summarised (commit, image, what passed, what is queued).
fn body(req: &ApprovalRequest, r: &Release, to: Recipient<'_>, link: &str) -> String {
    let hello = to.map_or("Hello,".to_string(), |a| format!("Hello {},", a.name));
    let whose = match to {
        Some(a) => format!(
            "This link is personal to {}: do not forward it. It can be used once.",
            a.name
        ),
        None => "This link is shared by everyone on this list: the page asks for your name, which is recorded as given (unverified). It can be used once.".to_string(),
    };
    let facts = if req.summary.trim().is_empty() {
        release_facts(r)
    } else {
        req.summary.clone()
    };
    format!(
        "{hello}\n\n\
         Release {} of pipeline {} is ready for stage {} and waits for approval.\n\
         Commit {} by {}: {}\n\n\
         Review it and approve or reject:\n  {link}\n\n\
         Opening the link changes nothing: the page shows what will ship and asks you to confirm.\n\
         {whose}\n\
         The request expires at {}.\n\n\
         {facts}",
        r.id,
        req.pipeline,
        req.stage,
        crate::domain::short_sha(&r.sha),
        r.author_name,
        first_line(&r.message),
        req.expires_at.format("%Y-%m-%d %H:%M UTC"),
    )
}

/// The facts of a release, when the engine gave no summary.
fn release_facts(r: &Release) -> String {
    format!(
        "Commit:  {} on {} by {} <{}>\n         {}\n{}Image:   {}\n",
        r.sha,
        r.branch,
        r.author_name,
        r.author_email,
        first_line(&r.message),
        r.url
            .as_ref()
            .map(|u| format!("         {u}\n"))
            .unwrap_or_default(),
        r.digest.as_deref().unwrap_or("(not resolved)"),
    )
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

// ----- deciding ----------------------------------------------------------------------------

/// Why a decision was not recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No such release in this pipeline.
    UnknownRelease,
    /// The stage has no approval (any more), or the release never reached it.
    NotRequested,
    /// This link was used before.
    Used {
        at: DateTime<Utc>,
        /// What the link's approver decided, when known.
        decision: Option<ApprovalRecord>,
    },
    /// A later email carried a new link for the same request.
    Replaced,
    Expired {
        at: DateTime<Utc>,
    },
    /// A newer release took the stage's place.
    Superseded {
        newer: Option<Box<Release>>,
    },
    Rejected {
        by: String,
        at: DateTime<Utc>,
    },
    /// The stage no longer waits for an approval of this release.
    MovedOn {
        status: RunStatus,
        reason: String,
    },
    /// This approver already decided.
    AlreadyDecided(ApprovalRecord),
    /// Someone who brought the change may not approve it.
    OwnChange {
        approver: String,
        role: ContributorRole,
    },
    /// The link was sent for an earlier attempt of this run; a newer email asked again.
    EarlierAttempt {
        link: u32,
        current: u32,
    },
    /// A shared link cannot decide for a listed approver (or once the stage lists approvers).
    SharedLinkNotForListed {
        name: Option<String>,
    },
    /// Who brought the change could not be read from GitHub; nothing was recorded.
    ContributorsUnknown {
        detail: String,
    },
    /// Not one of the stage's approvers.
    NotAnApprover {
        name: String,
    },
    /// A shared link needs a name.
    BadName(String),
}

impl Refusal {
    /// A short title for a page.
    pub fn title(&self) -> &'static str {
        match self {
            Refusal::UnknownRelease | Refusal::NotRequested => "No approval pending",
            Refusal::Used { .. } => "Link already used",
            Refusal::Replaced => "Link replaced",
            Refusal::Expired { .. } => "Request expired",
            Refusal::Superseded { .. } => "Superseded by a newer release",
            Refusal::Rejected { .. } => "Already rejected",
            Refusal::MovedOn { .. } => "No longer waiting for approval",
            Refusal::AlreadyDecided(_) => "Already decided",
            Refusal::OwnChange { .. } => "You cannot approve a change you brought",
            Refusal::EarlierAttempt { .. } => "Link for an earlier attempt",
            Refusal::SharedLinkNotForListed { .. } => "Use your personal link",
            Refusal::ContributorsUnknown { .. } => "Cannot check who brought this change",
            Refusal::NotAnApprover { .. } => "Not an approver",
            Refusal::BadName(_) => "Name needed",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let time = |t: &DateTime<Utc>| t.format("%Y-%m-%d %H:%M:%S UTC").to_string();
        match self {
            Refusal::UnknownRelease => write!(f, "there is no such release"),
            Refusal::NotRequested => {
                write!(
                    f,
                    "this stage is not waiting for an approval of this release"
                )
            }
            Refusal::Used {
                at,
                decision: Some(d),
            } => write!(
                f,
                "this link was already used: {} {}d at {}; nothing changed",
                d.approver,
                d.decision.as_str(),
                time(&d.at.max(*at))
            ),
            Refusal::Used { at, decision: None } => write!(
                f,
                "this link was already used at {}; nothing changed",
                time(at)
            ),
            Refusal::Replaced => write!(
                f,
                "this link was replaced by a newer email for the same request; use the link in that one"
            ),
            Refusal::Expired { at } => write!(
                f,
                "the approval request expired at {}; nothing changed",
                time(at)
            ),
            Refusal::Superseded { newer: Some(n) } => write!(
                f,
                "a newer release, {} ({} by {}: {}), took this one's place in the stage; this request is closed",
                n.id,
                crate::domain::short_sha(&n.sha),
                n.author_name,
                first_line(&n.message)
            ),
            Refusal::Superseded { newer: None } => write!(
                f,
                "a newer release took this one's place in the stage; this request is closed"
            ),
            Refusal::Rejected { by, at } => {
                write!(
                    f,
                    "{by} rejected this release at {}; it will not deploy",
                    time(at)
                )
            }
            Refusal::MovedOn { status, reason } => write!(
                f,
                "the stage no longer waits for an approval of this release: it is {status} ({reason})"
            ),
            Refusal::AlreadyDecided(d) => write!(
                f,
                "{} already {}d this release at {}; a decision cannot be changed",
                d.approver,
                d.decision.as_str(),
                time(&d.at)
            ),
            Refusal::OwnChange { approver, role } => write!(
                f,
                "{approver} may not approve this change: {} ({role}); ask another approver (rejecting is allowed)",
                role.to_you()
            ),
            Refusal::EarlierAttempt { link, current } => write!(
                f,
                "this link was sent for attempt {link}; the release was sent again (attempt {current}) and a new email asked again: use the link in that one"
            ),
            Refusal::SharedLinkNotForListed { name: Some(name) } => write!(
                f,
                "{name} is a listed approver and decides only through their personal link, not a shared one"
            ),
            Refusal::SharedLinkNotForListed { name: None } => write!(
                f,
                "this stage now lists its approvers: a shared link no longer decides; the approvers use their personal links"
            ),
            Refusal::ContributorsUnknown { detail } => write!(
                f,
                "who brought this change could not be read from GitHub ({detail}); try again shortly"
            ),
            Refusal::NotAnApprover { name } => {
                write!(f, "{name} is not an approver of this stage")
            }
            Refusal::BadName(why) => write!(f, "{why}"),
        }
    }
}

/// What became of a decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Recorded {
        approver: String,
        decision: Decision,
        /// False for a name typed on a shared link's page.
        verified: bool,
    },
    Refused(Refusal),
}

/// Everything the rules look at for one release in one stage, read at one moment.
#[derive(Debug, Clone)]
pub struct Facts {
    pub pipeline: String,
    pub stage: String,
    pub release: Release,
    pub run: Option<StageRun>,
    /// The stage's approval settings in the configuration in force.
    pub approval: Option<Approval>,
    /// Decisions recorded in the run's current attempt, oldest first.
    pub decisions: Vec<ApprovalRecord>,
    /// The newest release that entered the stage after this one.
    pub newer: Option<Release>,
    pub now: DateTime<Utc>,
}

impl Facts {
    /// Reads the facts; `None` when the release is not one of the pipeline's.
    pub async fn load(
        engine: &Engine,
        pipeline: &str,
        release: ReleaseId,
        stage: &str,
    ) -> EngineResult<Option<Facts>> {
        let store = engine.reads();
        let Some(rel) = store.release(release).await? else {
            return Ok(None);
        };
        if rel.pipeline != pipeline {
            return Ok(None);
        }
        let approval = engine
            .config()
            .pipeline(pipeline)
            .and_then(|p| p.stage(stage))
            .and_then(|s| s.approval.clone());
        let run = store.stage_run(release, stage).await?;
        let attempt = run.as_ref().map_or(1, |r| r.attempt);
        let decisions = store
            .approvals_of(release, stage)
            .await?
            .into_iter()
            .filter(|d| d.attempt == attempt)
            .collect();
        let mut newer = store.newer_in_stage(pipeline, stage, release).await?;
        if newer.is_none() && run.as_ref().map(|r| r.status) == Some(RunStatus::Superseded) {
            newer = store.newest_release_after(pipeline, release).await?;
        }
        let newer = match newer {
            Some(id) => store.release(id).await?,
            None => None,
        };
        Ok(Some(Facts {
            pipeline: pipeline.to_string(),
            stage: stage.to_string(),
            release: rel,
            decisions,
            run,
            approval,
            newer,
            now: engine.now(),
        }))
    }

    /// When the request expires (its run entered `awaiting_approval` plus the timeout).
    pub fn expires_at(&self) -> Option<DateTime<Utc>> {
        let (run, a) = (self.run.as_ref()?, self.approval.as_ref()?);
        Some(run.since + chrono::Duration::from_std(a.timeout).ok()?)
    }

    /// Why no decision can be taken now; `None` while the request is open.
    pub fn closed(&self) -> Option<Refusal> {
        let (Some(run), Some(_)) = (&self.run, &self.approval) else {
            return Some(Refusal::NotRequested);
        };
        if let Some(r) = self
            .decisions
            .iter()
            .find(|d| d.decision == Decision::Reject)
        {
            return Some(Refusal::Rejected {
                by: r.approver.clone(),
                at: r.at,
            });
        }
        let overtaken = run.status.supersedable() && self.newer.is_some();
        if run.status == RunStatus::Superseded || overtaken {
            return Some(Refusal::Superseded {
                newer: self.newer.clone().map(Box::new),
            });
        }
        match run.status {
            RunStatus::Expired => return Some(Refusal::Expired { at: run.since }),
            RunStatus::AwaitingApproval => {}
            status => {
                return Some(Refusal::MovedOn {
                    status,
                    reason: run.reason.describe(self.now),
                });
            }
        }
        match self.expires_at() {
            Some(at) if self.now >= at => Some(Refusal::Expired { at }),
            _ => None,
        }
    }

    /// The run's current attempt (1 before the release reached the stage).
    pub fn attempt(&self) -> u32 {
        self.run.as_ref().map_or(1, |r| r.attempt)
    }

    /// Approvals that count now (invariant 9: this attempt, listed approvers, none who
    /// brought the change) and how many are needed.
    pub fn tally(&self) -> (usize, u32) {
        let Some(a) = &self.approval else {
            return (0, 0);
        };
        let attempt = self.attempt();
        let approved = self
            .decisions
            .iter()
            .filter(|d| rules::counts(a, &self.release, attempt, d))
            .count();
        (approved, a.min_approvals)
    }

    /// The listed approver `identity` names: by name, GitHub login or email.
    pub fn approver(&self, identity: &str) -> Option<&Approver> {
        let listed = self.approval.as_ref()?.approvers.iter();
        let eq = |a: &str, b: &str| a.eq_ignore_ascii_case(b.trim());
        listed
            .clone()
            .find(|a| a.name == identity.trim())
            .or_else(|| {
                listed.clone().find(|a| {
                    a.github.as_deref().is_some_and(|g| eq(g, identity)) || eq(&a.email, identity)
                })
            })
    }

    fn decision_of(&self, name: &str) -> Option<&ApprovalRecord> {
        self.decisions.iter().find(|d| d.approver == name)
    }

    /// How the person deciding brought the change, if they did (by GitHub login or email).
    pub fn brought_by(&self, d: &Decider) -> Option<ContributorRole> {
        self.release.brought_by(Identity {
            approver: d.approver.as_ref(),
            name: &d.name,
        })
    }

    /// The rules about the person: one decision each, and no approving one's own change.
    pub fn check_decider(&self, d: &Decider, decision: Decision) -> Option<Refusal> {
        if let Some(prev) = self.decision_of(&d.name) {
            return Some(Refusal::AlreadyDecided(prev.clone()));
        }
        let allow_author = self.approval.as_ref().is_some_and(|a| a.allow_author);
        if decision == Decision::Approve && !allow_author {
            if let Some(role) = self.brought_by(d) {
                return Some(Refusal::OwnChange {
                    approver: d.name.clone(),
                    role,
                });
            }
        }
        None
    }
}

/// The person deciding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decider {
    /// The name recorded: a listed approver's name, or the name typed on a shared link's page.
    pub name: String,
    /// False when the identity was only claimed (a shared link).
    pub verified: bool,
    /// The listed approver, when there is one.
    pub approver: Option<Approver>,
}

/// Records `identity`'s decision on a release in a stage, for a caller that authenticated the
/// approver itself (an API key, the CLI's user). `identity` is a listed approver's name, GitHub
/// login or email (when the stage lists approvers); `actor` says who called (`api-key:ops-1`)
/// and goes into the event log. The same rules as an approval link apply.
pub async fn decide(
    engine: &Engine,
    pipeline: &str,
    release: ReleaseId,
    stage: &str,
    identity: &str,
    decision: Decision,
    actor: &str,
) -> EngineResult<Outcome> {
    engine.check_stage(pipeline, stage)?;
    let Some(mut facts) = Facts::load(engine, pipeline, release, stage).await? else {
        return Ok(Outcome::Refused(Refusal::UnknownRelease));
    };
    if let Some(r) = facts.closed() {
        return Ok(Outcome::Refused(r));
    }
    let decider = match identify(&facts, identity) {
        Ok(d) => d,
        Err(r) => return Ok(Outcome::Refused(r)),
    };
    if let Some(r) = pull_people(engine, &mut facts, decision).await? {
        return Ok(Outcome::Refused(r));
    }
    if let Some(r) = facts.check_decider(&decider, decision) {
        return Ok(Outcome::Refused(r));
    }
    let delivery = Delivery {
        source: API_DELIVERY_SOURCE.into(),
        id: format!(
            "{pipeline}/{release}/{stage}/a{}/{}",
            facts.attempt(),
            decider.name
        ),
    };
    let context = format!("decided through the API by {actor}");
    record(
        engine, &facts, &decider, decision, actor, &context, &delivery,
    )
    .await
}

/// Before an approval is recorded, the authors and mergers of the commit's pull requests are
/// looked up on GitHub if that was not done yet (the approval request does it first). A
/// lookup that fails refuses the approval: it is never recorded unchecked.
async fn pull_people(
    engine: &Engine,
    facts: &mut Facts,
    decision: Decision,
) -> EngineResult<Option<Refusal>> {
    let forge = engine.ports().forge.clone();
    if decision != Decision::Approve || facts.release.pulls_checked || !forge.enabled() {
        return Ok(None);
    }
    let config = engine.config();
    let Some(repo) = config
        .pipeline(&facts.pipeline)
        .map(|p| p.source.repository.clone())
    else {
        return Ok(None);
    };
    let people = match forge.pull_request_people(&repo, &facts.release.sha).await {
        Ok(Some(people)) => people,
        Ok(None) => return Ok(None),
        Err(e) => {
            return Ok(Some(Refusal::ContributorsUnknown {
                detail: e.to_string(),
            }));
        }
    };
    if let Some(r) = engine
        .record_pull_contributors(facts.release.id, &people)
        .await?
    {
        facts.release = r;
    }
    Ok(None)
}

/// An authenticated identity: one of the listed approvers, or anyone when none are listed.
fn identify(facts: &Facts, identity: &str) -> Result<Decider, Refusal> {
    let listed = facts
        .approval
        .as_ref()
        .is_some_and(|a| !a.approvers.is_empty());
    match facts.approver(identity) {
        Some(a) => Ok(Decider {
            name: a.name.clone(),
            verified: true,
            approver: Some(a.clone()),
        }),
        None if !listed => Ok(Decider {
            name: clean_name(identity)?,
            verified: true,
            approver: None,
        }),
        None => Err(Refusal::NotAnApprover {
            name: identity.trim().chars().take(MAX_NAME_CHARS).collect(),
        }),
    }
}

/// A name typed by a person: trimmed, non-empty, printable, at most [`MAX_NAME_CHARS`].
pub fn clean_name(raw: &str) -> Result<String, Refusal> {
    let name = raw.trim();
    if name.is_empty() {
        return Err(Refusal::BadName(
            "this link is shared: enter your name to decide".into(),
        ));
    }
    if name.chars().count() > MAX_NAME_CHARS || name.chars().any(char::is_control) {
        return Err(Refusal::BadName(format!(
            "a name is at most {MAX_NAME_CHARS} printable characters"
        )));
    }
    Ok(name.to_string())
}

#[allow(clippy::too_many_arguments)]
async fn record(
    engine: &Engine,
    facts: &Facts,
    d: &Decider,
    decision: Decision,
    actor: &str,
    context: &str,
    delivery: &Delivery,
) -> EngineResult<Outcome> {
    let a = NewApproval {
        pipeline: facts.pipeline.clone(),
        release: facts.release.id,
        stage: facts.stage.clone(),
        attempt: facts.attempt(),
        approver: d.name.clone(),
        decision,
        verified: d.verified,
        actor: actor.to_string(),
        context: context.to_string(),
    };
    match engine.record_approval(&a, delivery).await? {
        Ingested::Recorded(()) => Ok(Outcome::Recorded {
            approver: d.name.clone(),
            decision,
            verified: d.verified,
        }),
        Ingested::Duplicate => {
            let store = engine.reads();
            let decisions = store.approvals_of(facts.release.id, &facts.stage).await?;
            let prev = decisions.into_iter().find(|x| x.approver == d.name);
            Ok(Outcome::Refused(match prev {
                Some(p) => Refusal::AlreadyDecided(p),
                None => Refusal::Used {
                    at: engine.now(),
                    decision: None,
                },
            }))
        }
    }
}

// ----- links -----------------------------------------------------------------------------------

/// An approval link, looked up: its token record and the facts of its run.
#[derive(Debug, Clone)]
pub struct Link {
    pub token: TokenRecord,
    pub facts: Facts,
}

impl Link {
    /// The link a token belongs to; `None` for a malformed or unknown token (or one whose
    /// release is gone).
    pub async fn open(engine: &Engine, token: &str) -> EngineResult<Option<Link>> {
        let Some(t) = engine.reads().approval_token(token).await? else {
            return Ok(None);
        };
        let facts = Facts::load(engine, &t.pipeline, t.release, &t.stage).await?;
        Ok(facts.map(|facts| Link { token: t, facts }))
    }

    /// The listed approver the link is bound to (`None` for a shared link, or an approver no
    /// longer listed).
    pub fn approver(&self) -> Option<&Approver> {
        let name = self.token.approver.as_deref()?;
        self.facts
            .approval
            .as_ref()?
            .approvers
            .iter()
            .find(|a| a.name == name)
    }

    /// Why this link cannot be used now; `None` when it can.
    pub fn refusal(&self) -> Option<Refusal> {
        if let Some(at) = self.token.used_at {
            let decision = self
                .token
                .approver
                .as_deref()
                .and_then(|n| self.facts.decision_of(n))
                .cloned();
            return Some(Refusal::Used { at, decision });
        }
        if self.token.replaced_at.is_some() {
            return Some(Refusal::Replaced);
        }
        let current = self.facts.attempt();
        if self.token.attempt != current && self.facts.closed().is_none() {
            return Some(Refusal::EarlierAttempt {
                link: self.token.attempt,
                current,
            });
        }
        let listed = self
            .facts
            .approval
            .as_ref()
            .is_some_and(|a| !a.approvers.is_empty());
        if self.token.is_shared() && listed {
            return Some(Refusal::SharedLinkNotForListed { name: None });
        }
        if let Some(r) = self.facts.closed() {
            // The run's expiry time moved to when it was marked expired; the link's is exact.
            return Some(match r {
                Refusal::Expired { .. } => Refusal::Expired {
                    at: self.token.expires_at,
                },
                r => r,
            });
        }
        if self.token.is_expired(self.facts.now) {
            return Some(Refusal::Expired {
                at: self.token.expires_at,
            });
        }
        let name = self.token.approver.as_deref()?;
        let Some(approver) = self.approver() else {
            return Some(Refusal::NotAnApprover { name: name.into() });
        };
        // Sent to an address that is no longer this approver's (a reload changed it): the
        // next round replaces it with a link to the new one.
        let sent_to = self.token.recipient.as_deref();
        if sent_to.is_some_and(|to| !to.eq_ignore_ascii_case(&approver.email)) {
            return Some(Refusal::Replaced);
        }
        self.facts
            .decision_of(name)
            .map(|d| Refusal::AlreadyDecided(d.clone()))
    }

    /// The person deciding through this link: its approver, or the name typed on the page of a
    /// shared link (unverified).
    pub fn decider(&self, typed_name: Option<&str>) -> Result<Decider, Refusal> {
        if let Some(name) = &self.token.approver {
            return Ok(Decider {
                name: name.clone(),
                verified: true,
                approver: self.approver().cloned(),
            });
        }
        let name = clean_name(typed_name.unwrap_or(""))?;
        if self.facts.approver(&name).is_some() {
            return Err(Refusal::SharedLinkNotForListed { name: Some(name) });
        }
        Ok(Decider {
            approver: None,
            name,
            verified: false,
        })
    }
}

/// Records a decision made on an approval link's page. `client` describes where it came from
/// (source address, user agent) for the event log. The link is consumed by the recording.
pub async fn decide_by_link(
    engine: &Engine,
    link: &Link,
    typed_name: Option<&str>,
    decision: Decision,
    client: &str,
) -> EngineResult<Outcome> {
    if let Some(r) = link.refusal() {
        return Ok(Outcome::Refused(r));
    }
    let decider = match link.decider(typed_name) {
        Ok(d) => d,
        Err(r) => return Ok(Outcome::Refused(r)),
    };
    let mut facts = link.facts.clone();
    if let Some(r) = pull_people(engine, &mut facts, decision).await? {
        return Ok(Outcome::Refused(r));
    }
    if let Some(r) = facts.check_decider(&decider, decision) {
        return Ok(Outcome::Refused(r));
    }
    let kind = if link.token.is_shared() {
        "shared approval link, name as typed"
    } else {
        "personal approval link"
    };
    let actor = format!("approver:{}", decider.name);
    let context = format!("{client}; {kind}");
    let delivery = link.token.delivery();
    let out = record(
        engine, &facts, &decider, decision, &actor, &context, &delivery,
    )
    .await?;
    if let Outcome::Refused(Refusal::Used { decision: None, .. }) = &out {
        // The link was used concurrently: say when, from the store.
        if let Some(t) = engine
            .reads()
            .approval_token_by_hash(&link.token.hash)
            .await?
        {
            if let Some(at) = t.used_at {
                return Ok(Outcome::Refused(Refusal::Used { at, decision: None }));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_busy_or_unreachable_database_is_temporary() {
        assert!(store_error(StoreError::Db(sqlx::Error::PoolTimedOut)).is_retryable());
        let corrupt = StoreError::Corrupt {
            table: "approval_tokens",
            detail: "bad hash".into(),
        };
        assert!(matches!(store_error(corrupt), PortError::Failed(_)));
        let missing = StoreError::Db(sqlx::Error::RowNotFound);
        assert!(matches!(store_error(missing), PortError::Failed(_)));
    }
}

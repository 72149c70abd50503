//! Why a run is in its status, or what it waits for: typed facts with their deadlines.
//!
//! Owns [`Reason`], the one description of a run's situation that the planner writes and
//! every reader uses: the planner compares reasons as values (a run's reason changes, and is
//! logged, only when the situation or its facts change), and text for people is rendered
//! from it only at the edges (CLI, pages, emails, GitHub statuses) with [`Reason::describe`].
//! Deadlines are instants, never "time left", so a reason stays the same value while its
//! countdown moves.
//!
//! Must never: be parsed back from its text, or carry a secret.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::action::Phase;
use super::approval::{ExposedSubscription, describe_exposed, describe_unconfirmed};
use super::names::StageName;
use super::types::{ReleaseId, RunStatus};
use crate::config::values::format_duration;

/// What keeps a stage's alarms from letting a release in.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AlarmProblem {
    /// These alarms are in ALARM.
    InAlarm { alarms: Vec<String> },
    /// The alarms could not be read.
    Unreadable { detail: String },
}

impl fmt::Display for AlarmProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AlarmProblem::InAlarm { alarms } => {
                let s = if alarms.len() == 1 { "" } else { "s" };
                write!(f, "alarm{s} {} in ALARM", alarms.join(", "))
            }
            AlarmProblem::Unreadable { detail } => write!(f, "cannot read alarms: {detail}"),
        }
    }
}

/// What a bake lacks before it can pass: the first alarm, in the stage's order, short of data.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DataGap {
    /// The alarm's metric has had `have` of the `needed` data points since the deploy finished.
    Datapoints {
        alarm: String,
        have: u32,
        needed: u32,
    },
    /// The alarm is in `INSUFFICIENT_DATA`.
    InsufficientData { alarm: String },
    /// No read of the alarms during this bake has succeeded yet.
    Unread,
}

impl DataGap {
    /// `alarm X has 2 of 5 data points since 12:01 UTC`.
    fn describe(&self, since: DateTime<Utc>) -> String {
        match self {
            DataGap::Datapoints {
                alarm,
                have,
                needed,
            } => format!(
                "alarm {alarm} has {have} of {needed} data points since {}",
                since.format("%H:%M UTC")
            ),
            DataGap::InsufficientData { alarm } => {
                format!("alarm {alarm} is in INSUFFICIENT_DATA")
            }
            DataGap::Unread => "the alarms have not been read yet".into(),
        }
    }
}

/// Where an approval request's messages stand.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RequestState {
    /// Sent, or being sent.
    Sending,
    /// The last send failed; sent again at `retry_at`.
    Failed {
        detail: String,
        retry_at: DateTime<Utc>,
    },
    /// The last send failed and it is being sent again now.
    Resending,
    /// Nothing was sent: these subscriptions on the approval topic would have received every
    /// approver's personal link. Checked again at `retry_at`.
    Withheld {
        exposed: Vec<ExposedSubscription>,
        retry_at: DateTime<Utc>,
    },
    /// Not every listed approver has a link: `awaiting` have no confirmed email subscription
    /// (see [`super::EffectOutput::ApprovalUnconfirmed`]). Sent again at `retry_at`.
    Unconfirmed {
        awaiting: Vec<String>,
        sent: Vec<String>,
        retry_at: DateTime<Utc>,
    },
}

/// Why a run is where it is. Rendered for people by [`Reason::describe`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Reason {
    // ----- waiting to enter -------------------------------------------------------------
    /// Waits for the previous stage to succeed with this release.
    PreviousStage,
    /// The configuration no longer has the stage (dropped or renamed by a reload) and the run
    /// had not started deploying.
    StageRemoved,
    /// A person asked for the release to go again (`tollgate retry`).
    RetryRequested {
        by: String,
    },
    Queued,
    PipelinePaused {
        reason: String,
    },
    StagePaused {
        reason: String,
    },
    RunningChecks,
    /// The stage's alarms keep the release out; they are read again every `every_secs`
    /// (the next read is a wake-up, not part of the reason, so a long incident writes no
    /// entry per read).
    AlarmsBlockEntry {
        problem: AlarmProblem,
        every_secs: u64,
    },
    /// Enters although its alarms fire, under an explicit override.
    AlarmOverride {
        problem: AlarmProblem,
        override_reason: String,
    },
    AwaitingApproval {
        approved: u32,
        needed: u32,
        expires_at: DateTime<Utc>,
        request: RequestState,
    },
    /// The deploy waits: the previous stage no longer holds this release as succeeded.
    PreviousStageNotSucceeded,
    /// The deploy waits for enough approvals.
    ApprovalMissing,
    /// Another release changes the stage (invariant 3).
    StageBusy {
        release: ReleaseId,
        status: RunStatus,
    },
    /// Outside the stage's deployment windows; the next opens at `opens` (None: not within
    /// a year), shown in `timezone`.
    OutsideWindow {
        opens: Option<DateTime<Utc>>,
        timezone: String,
    },
    // ----- changing the stage -----------------------------------------------------------
    /// `wave` counts from 1.
    Deploying {
        wave: usize,
        waves: usize,
    },
    Verifying,
    Baking {
        until: DateTime<Utc>,
    },
    /// Bake time is over and the alarms lack data (`gap`) counted from `since` (when the
    /// deploy finished); the stage waits until `gives_up`.
    AwaitingData {
        gap: DataGap,
        since: DateTime<Utc>,
        gives_up: DateTime<Utc>,
    },
    Succeeded,
    // ----- why a run rolls back -----------------------------------------------------------
    ManualRollback {
        by: String,
    },
    /// A manual rollback found nothing to return to; the stage keeps what it runs.
    ManualRollbackImpossible {
        by: String,
    },
    /// An alarm notification arrived for the stage while the run was watched.
    AlarmFired {
        alarm: String,
        at: DateTime<Utc>,
    },
    /// A backstop poll found alarms in ALARM.
    AlarmPolled {
        alarms: Vec<String>,
        at: DateTime<Utc>,
    },
    TestFailed {
        test: String,
        phase: Phase,
        detail: String,
    },
    DeployFailed {
        account: String,
        region: String,
        detail: String,
    },
    /// The release was rolled back in an earlier stage.
    RolledBackUpstream {
        stage: StageName,
        cause: Box<Reason>,
    },
    // ----- how a run ended ---------------------------------------------------------------
    /// It had to roll back, and the stage had no known-good release to return to.
    NoKnownGood {
        cause: Box<Reason>,
    },
    RolledBack {
        cause: Box<Reason>,
        restored: ReleaseId,
    },
    RollbackFailed {
        account: String,
        region: String,
        detail: String,
    },
    /// Read back after a deploy (or a rollback, `rollback`), the target does not run what was
    /// asked: someone else changed it, or the update never ran. The stage is paused.
    Drift {
        account: String,
        region: String,
        expected: String,
        found: String,
        rollback: bool,
    },
    /// The bake ended without the data it needs: at once (`insufficient_data = "fail"` and an
    /// alarm in `INSUFFICIENT_DATA`), or after waiting `waited_secs` past the bake time.
    NotEnoughData {
        gap: DataGap,
        since: DateTime<Utc>,
        waited_secs: u64,
    },
    Rejected {
        by: String,
    },
    ApprovalExpired {
        after_secs: u64,
    },
    SupersededBy {
        release: ReleaseId,
    },
    SupersededIn {
        stage: StageName,
    },
    /// Rolled back in `stage`: never promoted again automatically.
    BadRelease {
        stage: StageName,
        cause: Box<Reason>,
    },
    /// The release could not be promoted at all.
    ReleaseFailed {
        why: String,
    },
    /// The previous stage ended without succeeding.
    PreviousStageEnded {
        stage: StageName,
        status: RunStatus,
    },
    /// A reason an earlier version of tollgate recorded as text (kept to be shown, never read).
    Recorded {
        text: String,
    },
}

impl Reason {
    /// The alarm notification or poll that caused a rollback, however deeply it is wrapped.
    pub fn root(&self) -> &Reason {
        match self {
            Reason::NoKnownGood { cause }
            | Reason::RolledBack { cause, .. }
            | Reason::RolledBackUpstream { cause, .. }
            | Reason::BadRelease { cause, .. } => cause.root(),
            other => other,
        }
    }

    /// The moment the wait this reason names ends by itself, if it has one: an approval
    /// request's expiry, the end of a bake, when waiting for alarm data gives up, when the
    /// next deployment window opens.
    pub fn deadline(&self) -> Option<DateTime<Utc>> {
        match self {
            Reason::AwaitingApproval { expires_at, .. } => Some(*expires_at),
            Reason::Baking { until } => Some(*until),
            Reason::AwaitingData { gives_up, .. } => Some(*gives_up),
            Reason::OutsideWindow { opens, .. } => *opens,
            _ => None,
        }
    }

    /// Text for people, with deadlines shown as time left from `now`.
    pub fn describe(&self, now: DateTime<Utc>) -> String {
        self.describe_wait(now)
            .or_else(|| self.describe_change(now))
            .or_else(|| self.describe_cause(now))
            .or_else(|| self.describe_end(now))
            .unwrap_or_default()
    }

    /// Waiting to enter, or to deploy.
    fn describe_wait(&self, now: DateTime<Utc>) -> Option<String> {
        use Reason as R;
        Some(match self {
            R::PreviousStage => "waiting for the previous stage".into(),
            R::StageRemoved => "the configuration no longer has this stage".into(),
            R::RetryRequested { by } => format!("retry requested by {by}"),
            R::Queued => "queued".into(),
            R::PipelinePaused { reason } => format!("pipeline paused: {reason}"),
            R::StagePaused { reason } => format!("stage paused: {reason}"),
            R::RunningChecks => "running pre-deploy checks".into(),
            R::AlarmsBlockEntry {
                problem,
                every_secs,
            } => format!(
                "waiting: {problem}; checking again every {}",
                format_duration(Duration::from_secs(*every_secs))
            ),
            R::AlarmOverride {
                problem,
                override_reason,
            } => format!("{problem}; entering anyway (override: {override_reason})"),
            R::AwaitingApproval {
                approved,
                needed,
                expires_at,
                request,
            } => {
                let sent = match request {
                    RequestState::Sending => String::new(),
                    RequestState::Resending => " (request not sent; sending again)".into(),
                    RequestState::Failed { detail, retry_at } => format!(
                        " (request not sent: {detail}; trying again in {})",
                        minutes_left(*retry_at, now)
                    ),
                    RequestState::Withheld { exposed, retry_at } => format!(
                        " (request not sent: {}; checking again in {})",
                        describe_exposed(exposed),
                        minutes_left(*retry_at, now)
                    ),
                    RequestState::Unconfirmed {
                        awaiting,
                        sent,
                        retry_at,
                    } => format!(
                        " ({}{}; trying again in {})",
                        if sent.is_empty() {
                            "request not sent: "
                        } else {
                            ""
                        },
                        describe_unconfirmed(awaiting, sent),
                        minutes_left(*retry_at, now)
                    ),
                };
                format!(
                    "awaiting approval: {approved} of {needed}, expires in {}{sent}",
                    minutes_left(*expires_at, now)
                )
            }
            R::PreviousStageNotSucceeded => {
                "waiting: the previous stage has not succeeded with this release".into()
            }
            R::ApprovalMissing => "waiting for approval".into(),
            R::StageBusy { release, status } => {
                format!("waiting for {release} to finish ({status})")
            }
            R::OutsideWindow { opens, timezone } => match opens {
                Some(at) => {
                    let tz: chrono_tz::Tz = timezone.parse().unwrap_or(chrono_tz::UTC);
                    let local = at.with_timezone(&tz);
                    format!(
                        "outside deployment window until {} {}",
                        local.format("%a %Y-%m-%d %H:%M"),
                        tz.name()
                    )
                }
                None => "outside deployment window; no window opens within a year".into(),
            },
            _ => return None,
        })
    }

    /// Changing the stage.
    fn describe_change(&self, now: DateTime<Utc>) -> Option<String> {
        use Reason as R;
        Some(match self {
            R::Deploying { wave, waves } => format!("deploying wave {wave} of {waves}"),
            R::Verifying => "running post-deploy tests".into(),
            R::Baking { until } => format!("baking, {} left", minutes_left(*until, now)),
            R::AwaitingData {
                gap,
                since,
                gives_up,
            } => format!(
                "baking: waiting for data: {}; giving up in {}",
                gap.describe(*since),
                minutes_left(*gives_up, now)
            ),
            R::Succeeded => "deployed and baked".into(),
            _ => return None,
        })
    }

    /// Why a run rolls back.
    fn describe_cause(&self, now: DateTime<Utc>) -> Option<String> {
        use Reason as R;
        Some(match self {
            R::ManualRollback { by } => format!("manual rollback requested by {by}"),
            R::ManualRollbackImpossible { by } => format!(
                "manual rollback requested by {by} not done: no known-good release to return to"
            ),
            R::AlarmFired { alarm, at } => format!("alarm {alarm} fired at {}", utc(*at)),
            R::AlarmPolled { alarms, at } => format!(
                "alarm {} in ALARM (poll at {})",
                alarms.join(", "),
                at.format("%H:%M:%S UTC")
            ),
            R::TestFailed {
                test,
                phase,
                detail,
            } => format!("{} test `{test}` failed: {detail}", phase.as_str()),
            R::DeployFailed {
                account,
                region,
                detail,
            } => format!("deploy to {account}/{region} failed: {detail}"),
            R::RolledBackUpstream { stage, cause } => format!(
                "release was rolled back in {stage}: {}",
                cause.describe(now)
            ),
            _ => return None,
        })
    }

    /// How a run ended.
    fn describe_end(&self, now: DateTime<Utc>) -> Option<String> {
        use Reason as R;
        Some(match self {
            R::NoKnownGood { cause } => format!(
                "{}; no known-good release to return to",
                cause.describe(now)
            ),
            R::RolledBack { cause, restored } => {
                format!("{}; restored {restored}", cause.describe(now))
            }
            R::RollbackFailed {
                account,
                region,
                detail,
            } => format!(
                "ROLLBACK FAILED for {account}/{region}: {detail}; stage paused until a person resumes it"
            ),
            R::Drift {
                account,
                region,
                expected,
                found,
                rollback,
            } => format!(
                "DRIFT in {account}/{region}: the {} asked for {expected}, but the target runs {}; \
                 someone else changed it or the update never ran; stage paused until a person \
                 checks it and resumes",
                if *rollback { "rollback" } else { "deploy" },
                if found.is_empty() {
                    "nothing readable"
                } else {
                    found
                }
            ),
            R::NotEnoughData {
                gap,
                since,
                waited_secs: 0,
            } => format!("bake failed: {}", gap.describe(*since)),
            R::NotEnoughData {
                gap,
                since,
                waited_secs,
            } => format!(
                "bake failed: {} after waiting {} past the bake time",
                gap.describe(*since),
                format_duration(Duration::from_secs(*waited_secs))
            ),
            R::Rejected { by } => format!("rejected by {by}"),
            R::ApprovalExpired { after_secs } => format!(
                "approval request expired after {}",
                format_duration(Duration::from_secs(*after_secs))
            ),
            R::SupersededBy { release } => format!("superseded by newer release {release}"),
            R::SupersededIn { stage } => format!("superseded in {stage}"),
            R::BadRelease { stage, cause } => format!(
                "not promoted: rolled back in {stage} ({})",
                cause.describe(now)
            ),
            R::ReleaseFailed { why } => format!("not promoted: {why}"),
            R::PreviousStageEnded { stage, status } => {
                format!("not promoted: {status} in {stage}")
            }
            R::Recorded { text } => text.clone(),
            _ => return None,
        })
    }
}

fn utc(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// A time left, for people, in whole minutes rounded up ("less than 1m" under a minute).
pub fn minutes_left(deadline: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let d = deadline - now;
    let secs = d.num_seconds().max(0) as u64 + u64::from(d.subsec_nanos() > 0);
    if secs < 60 {
        return "less than 1m".into();
    }
    format_duration(Duration::from_secs(secs.div_ceil(60) * 60))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn a_countdown_is_rendered_from_its_deadline_not_stored() {
        let r = Reason::AwaitingApproval {
            approved: 0,
            needed: 1,
            expires_at: at("2026-01-01T10:00:00Z"),
            request: RequestState::Sending,
        };
        assert_eq!(
            r.describe(at("2026-01-01T09:56:30Z")),
            "awaiting approval: 0 of 1, expires in 4m"
        );
        assert_eq!(
            r.describe(at("2026-01-01T09:59:30Z")),
            "awaiting approval: 0 of 1, expires in less than 1m"
        );
    }

    #[test]
    fn drift_names_both_images_and_what_it_did_to_the_stage() {
        let r = Reason::Drift {
            account: "prod".into(),
            region: "eu-west-1".into(),
            expected: "repo@sha256:aa".into(),
            found: "repo@sha256:bb".into(),
            rollback: true,
        };
        let now = at("2026-01-01T10:00:00Z");
        assert_eq!(
            r.describe(now),
            "DRIFT in prod/eu-west-1: the rollback asked for repo@sha256:aa, but the target runs \
             repo@sha256:bb; someone else changed it or the update never ran; stage paused until \
             a person checks it and resumes"
        );
        let unread = Reason::Drift {
            account: "prod".into(),
            region: "eu-west-1".into(),
            expected: "repo@sha256:aa".into(),
            found: String::new(),
            rollback: false,
        };
        assert!(
            unread.describe(now).contains(
                "the deploy asked for repo@sha256:aa, but the target runs nothing readable"
            ),
            "{}",
            unread.describe(now)
        );
    }

    #[test]
    fn waiting_for_data_names_the_alarm_its_count_and_since_when() {
        let r = Reason::AwaitingData {
            gap: DataGap::Datapoints {
                alarm: "api-5xx".into(),
                have: 2,
                needed: 5,
            },
            since: at("2026-01-01T12:01:30Z"),
            gives_up: at("2026-01-01T13:15:00Z"),
        };
        assert_eq!(
            r.describe(at("2026-01-01T12:15:00Z")),
            "baking: waiting for data: alarm api-5xx has 2 of 5 data points since 12:01 UTC; \
             giving up in 1h"
        );
        let failed = Reason::NotEnoughData {
            gap: DataGap::InsufficientData {
                alarm: "api-5xx".into(),
            },
            since: at("2026-01-01T12:01:30Z"),
            waited_secs: 0,
        };
        assert_eq!(
            failed.describe(at("2026-01-01T12:15:00Z")),
            "bake failed: alarm api-5xx is in INSUFFICIENT_DATA"
        );
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<Reason>(&text).unwrap(), r);
    }

    #[test]
    fn a_reason_round_trips_through_json() {
        let r = Reason::RolledBack {
            cause: Box::new(Reason::AlarmFired {
                alarm: "api-5xx".into(),
                at: at("2026-01-01T10:00:00Z"),
            }),
            restored: ReleaseId(3),
        };
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<Reason>(&text).unwrap(), r);
        assert!(matches!(r.root(), Reason::AlarmFired { alarm, .. } if alarm == "api-5xx"));
    }
}

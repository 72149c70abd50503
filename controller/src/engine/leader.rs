//! Who may reconcile and perform effects: the only controller on its state ([`Standing::Sole`],
//! SQLite, where the serve lock keeps a second one out), or, with several controllers on one
//! PostgreSQL state, the holder of the leader lease ([`crate::store::lease`]).
//!
//! Guarantees: an elected controller acts only while its last successful claim is younger
//! than the lease's length minus a margin ([`Leadership::may_act`]), and only once it has
//! checked, after taking the lease, the configuration it is to act with
//! ([`Standing::Taking`], [`Leadership::act`]); judged by the monotonic
//! clock, which runs on while the process is stopped: a leader paused past its lease stops
//! acting the moment it resumes, before its next claim. Its reconciler's writes are fenced by
//! the lease's epoch besides ([`Leadership::fence`]). Followers record facts (webhooks, SNS,
//! approvals, the API) like the leader; the leader's watch for other processes' facts picks
//! them up.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::store::lease::{Claim, Fence};

/// Where this controller stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    /// The only controller on its state: it always acts.
    Sole,
    /// Holds the lease at `epoch`; acts until `until` unless the lease is renewed first.
    Leading { epoch: i64, until: Instant },
    /// Has just taken the lease at `epoch` (held until `until`) and does not act yet: the
    /// configuration it is to act with is being checked against the work in flight
    /// ([`Leadership::act`] once it passes, [`Leadership::decline`] if it is refused).
    Taking { epoch: i64, until: Instant },
    /// Does not act: `leader` holds the lease at `epoch` (both `None` until the first claim).
    Following {
        leader: Option<String>,
        epoch: Option<i64>,
    },
}

/// This controller's standing, shared by the engine's tasks. Cheap to clone.
#[derive(Clone)]
pub struct Leadership {
    inner: Arc<Inner>,
}

struct Inner {
    holder: String,
    ttl: Duration,
    fence: Option<Fence>,
    standing: watch::Sender<Standing>,
}

impl std::fmt::Debug for Leadership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leadership")
            .field("holder", &self.inner.holder)
            .field("standing", &self.standing())
            .finish()
    }
}

impl Leadership {
    /// The only controller on its state.
    pub fn sole() -> Leadership {
        Self::build(String::new(), Duration::ZERO, None, Standing::Sole)
    }

    /// One of several controllers, known as `holder`, leading only while it holds a lease of
    /// `ttl` (renewed every fifth of it).
    pub fn elected(holder: impl Into<String>, ttl: Duration) -> Leadership {
        let following = Standing::Following {
            leader: None,
            epoch: None,
        };
        Self::build(holder.into(), ttl, Some(Fence::default()), following)
    }

    fn build(holder: String, ttl: Duration, fence: Option<Fence>, s: Standing) -> Leadership {
        Leadership {
            inner: Arc::new(Inner {
                holder,
                ttl,
                fence,
                standing: watch::channel(s).0,
            }),
        }
    }

    /// This controller's name in the lease (empty when sole).
    pub fn holder(&self) -> &str {
        &self.inner.holder
    }

    /// Whether a lease is held at all (several controllers may share the state).
    pub fn is_elected(&self) -> bool {
        self.inner.fence.is_some()
    }

    /// How long a lease lasts.
    pub fn ttl(&self) -> Duration {
        self.inner.ttl
    }

    /// How often the lease is claimed: renewed by the leader, tried by the others.
    pub fn claim_every(&self) -> Duration {
        (self.inner.ttl / 5).max(Duration::from_millis(100))
    }

    /// The fence for the reconciler's writes (`None` when sole).
    pub fn fence(&self) -> Option<Fence> {
        self.inner.fence.clone()
    }

    pub fn standing(&self) -> Standing {
        self.inner.standing.borrow().clone()
    }

    /// May this controller reconcile and perform effects now?
    pub fn may_act(&self) -> bool {
        match &*self.inner.standing.borrow() {
            Standing::Sole => true,
            Standing::Leading { until, .. } => Instant::now() < *until,
            Standing::Taking { .. } | Standing::Following { .. } => false,
        }
    }

    /// Waits until this controller may act.
    pub async fn until_may_act(&self) {
        let mut changes = self.inner.standing.subscribe();
        // Following, or leading on a lease that ran out before its renewal: only the next
        // claim can change that.
        while !self.may_act() {
            if changes.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// Completes once this controller may no longer act (never when sole): an effect running
    /// when the lead is lost is dropped there, so it makes no further AWS call.
    pub async fn lost(&self) {
        if !self.is_elected() {
            return std::future::pending().await;
        }
        while self.may_act() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Takes in a claim's outcome, `started` when the claim was sent. Returns true when this
    /// controller has just taken the lease: it is then [`Standing::Taking`], and acts only
    /// once [`Leadership::act`] says so. A leader that renews its lease in time leads on.
    pub fn record(&self, claim: &Claim, started: Instant) -> bool {
        let Some(fence) = &self.inner.fence else {
            return false;
        };
        let was_leading = self.may_act();
        match claim {
            Claim::Held { epoch, .. } => {
                fence.set(&self.inner.holder, *epoch);
                // A margin of a fifth of the lease: the leader stops before another may start.
                let until = started + self.inner.ttl - self.inner.ttl / 5;
                let epoch = *epoch;
                self.inner.standing.send_replace(if was_leading {
                    Standing::Leading { epoch, until }
                } else {
                    Standing::Taking { epoch, until }
                });
                !was_leading
            }
            Claim::Other(lease) => {
                fence.clear();
                self.inner.standing.send_replace(Standing::Following {
                    leader: Some(lease.holder.clone()),
                    epoch: Some(lease.epoch),
                });
                false
            }
        }
    }

    /// The configuration checked after taking the lease at `epoch` passed: this controller
    /// acts from now on (while the lease lasts). False, and nothing changes, unless it is
    /// still taking the lease at that epoch.
    pub fn act(&self, epoch: i64) -> bool {
        self.inner.standing.send_if_modified(|s| match *s {
            Standing::Taking { epoch: e, until } if e == epoch => {
                *s = Standing::Leading { epoch, until };
                true
            }
            _ => false,
        })
    }

    /// The configuration checked after taking the lease at `epoch` was refused: this
    /// controller does not act and stands by again (the caller gives the lease up).
    pub fn decline(&self, epoch: i64) {
        if let Some(fence) = &self.inner.fence {
            fence.clear();
        }
        self.inner.standing.send_replace(Standing::Following {
            leader: None,
            epoch: Some(epoch),
        });
    }

    /// A claim failed (the database unreachable): the standing stays, and a leader stops
    /// acting when its last claim runs out ([`Leadership::may_act`]).
    pub fn claim_failed(&self) {
        self.inner.standing.send_modify(|_| {});
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use super::*;
    use crate::store::lease::Lease;

    fn held(epoch: i64) -> Claim {
        Claim::Held {
            epoch,
            expires_at: Utc::now(),
            taken: true,
        }
    }

    #[test]
    fn a_sole_controller_always_acts_and_has_no_fence() {
        let l = Leadership::sole();
        assert!(l.may_act());
        assert!(l.fence().is_none());
        assert!(!l.is_elected());
    }

    #[test]
    fn an_elected_controller_acts_only_while_its_last_claim_is_fresh() {
        let l = Leadership::elected("a", Duration::from_secs(10));
        assert!(!l.may_act(), "nothing claimed yet");
        assert!(l.record(&held(3), Instant::now()), "just took the lease");
        assert!(!l.may_act(), "not before its configuration is checked");
        assert!(!l.act(2), "another epoch");
        assert!(l.act(3));
        assert!(l.may_act());
        assert_eq!(l.fence().unwrap().current(), Some(("a".into(), 3)));
        assert!(!l.record(&held(3), Instant::now()), "a renewal is no news");
        // A claim sent 9 s ago: past the lease less its margin (8 s).
        let stale = Instant::now() - Duration::from_secs(9);
        l.record(&held(3), stale);
        assert!(!l.may_act(), "a leader whose lease ran out stops acting");
        assert!(
            l.record(&held(3), Instant::now()),
            "retaking it is taking it again: the configuration is checked again"
        );
        assert!(!l.may_act());
        let other = Claim::Other(Lease {
            holder: "b".into(),
            epoch: 4,
            acquired_at: Utc::now(),
            renewed_at: Utc::now(),
            expires_at: Utc::now(),
        });
        l.record(&other, Instant::now());
        assert!(!l.may_act());
        assert_eq!(l.fence().unwrap().current(), None);
        assert_eq!(
            l.standing(),
            Standing::Following {
                leader: Some("b".into()),
                epoch: Some(4)
            }
        );
    }

    #[test]
    fn a_controller_declining_the_lease_it_took_stands_by_without_a_fence() {
        let l = Leadership::elected("a", Duration::from_secs(10));
        assert!(l.record(&held(5), Instant::now()));
        l.decline(5);
        assert!(!l.act(5), "declined: nothing to act on");
        assert!(!l.may_act());
        assert_eq!(l.fence().unwrap().current(), None);
        assert_eq!(
            l.standing(),
            Standing::Following {
                leader: None,
                epoch: Some(5)
            }
        );
    }

    #[tokio::test]
    async fn a_follower_waiting_to_act_starts_when_it_takes_the_lease() {
        let l = Leadership::elected("a", Duration::from_secs(10));
        let waiting = tokio::spawn({
            let l = l.clone();
            async move { l.until_may_act().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        l.record(&held(1), Instant::now());
        tokio::task::yield_now().await;
        assert!(
            !waiting.is_finished(),
            "not while its configuration is checked"
        );
        l.act(1);
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("woken")
            .unwrap();
    }
}

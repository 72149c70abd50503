//! The leader lease (migration 0013) and the fence on the reconciler's writes.
//!
//! Several controllers may share one PostgreSQL state. Each records facts (webhooks, SNS,
//! approvals, the API); only the holder of the lease reconciles and performs effects. A claim
//! ([`Store::claim_lease`]) renews the lease for its holder, takes it over once it expired, or
//! reports who holds it. Every change of holder adds one to the lease's epoch.
//!
//! Guarantees: a store given a [`Fence`] checks, in the same transaction, that the lease is
//! still at the fence's holder and epoch before each write of the reconciler (plan changes,
//! effect intents and outcomes, templates, approval links, and its own event-log entries,
//! [`Store::log_reconciler_event`]); otherwise the write is refused
//! with [`StoreError::Fenced`] and changes nothing. Writes are serialised across controllers
//! (the writer's lock), so a successor's takeover committed before the check is always seen:
//! a controller that was paused or partitioned past its lease records nothing afterwards.
//!
//! Caveat: expiry is judged by wall clocks (the holder's when it renews, the claimant's when
//! it takes over). Clock skew between controllers can shorten or lengthen a takeover, never
//! make two writes of two epochs both land: that is the fence's job, not the clock's.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::{Reads, Result, Store, StoreError, from_ms, ms};

/// What a claim found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The claimant holds the lease at `epoch` until `expires_at`; `taken` when it was not the
    /// holder before this claim.
    Held {
        epoch: i64,
        expires_at: DateTime<Utc>,
        taken: bool,
    },
    /// Another controller holds it.
    Other(Lease),
}

/// The lease as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub holder: String,
    pub epoch: i64,
    pub acquired_at: DateTime<Utc>,
    pub renewed_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// The holder and epoch a controller leads at, checked by its store's fenced writes. `None`
/// while it does not lead: every fenced write is refused.
#[derive(Debug, Clone, Default)]
pub struct Fence(Arc<RwLock<Option<(String, i64)>>>);

impl Fence {
    pub fn set(&self, holder: &str, epoch: i64) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Some((holder.to_string(), epoch));
    }

    pub fn clear(&self) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = None;
    }

    pub fn current(&self) -> Option<(String, i64)> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Store {
    /// This store, with its reconciler's writes fenced by `fence`.
    pub fn fenced(mut self, fence: Fence) -> Store {
        self.reads.fence = Some(fence);
        self
    }

    /// Renews the lease for `holder`, takes it over when it expired (or was never held), or
    /// reports the holder. `ttl`: how long the lease lasts from `now` when held.
    pub async fn claim_lease(
        &self,
        holder: &str,
        ttl: Duration,
        now: DateTime<Utc>,
    ) -> Result<Claim> {
        if holder.is_empty() {
            return Err(StoreError::Invalid("a lease holder needs a name".into()));
        }
        let until = ms(now).saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX));
        let mut tx = self.write().await?;
        let current = lease_row(&mut tx).await?;
        let claim = match current {
            None => {
                sqlx::query(
                    "INSERT INTO leader_lease (id, holder, epoch, acquired_at, renewed_at, expires_at) \
                     VALUES (1, $1, 1, $2, $2, $3)",
                )
                .bind(holder)
                .bind(ms(now))
                .bind(until)
                .execute(&mut *tx)
                .await?;
                Claim::Held {
                    epoch: 1,
                    expires_at: from_ms(until),
                    taken: true,
                }
            }
            Some(l) if l.holder == holder => {
                sqlx::query(
                    "UPDATE leader_lease SET renewed_at = $1, expires_at = $2 WHERE id = 1 AND epoch = $3",
                )
                .bind(ms(now))
                .bind(until)
                .bind(l.epoch)
                .execute(&mut *tx)
                .await?;
                Claim::Held {
                    epoch: l.epoch,
                    expires_at: from_ms(until),
                    taken: false,
                }
            }
            Some(l) if l.expires_at <= now => {
                let epoch = l.epoch + 1;
                sqlx::query(
                    "UPDATE leader_lease SET holder = $1, epoch = $2, acquired_at = $3, \
                     renewed_at = $3, expires_at = $4 WHERE id = 1 AND epoch = $5",
                )
                .bind(holder)
                .bind(epoch)
                .bind(ms(now))
                .bind(until)
                .bind(l.epoch)
                .execute(&mut *tx)
                .await?;
                Claim::Held {
                    epoch,
                    expires_at: from_ms(until),
                    taken: true,
                }
            }
            Some(l) => Claim::Other(l),
        };
        tx.commit().await?;
        Ok(claim)
    }

    /// Gives the lease up at once (a controller shutting down), so another takes over without
    /// waiting for it to expire. Nothing changes unless `holder` holds it at `epoch`.
    pub async fn release_lease(&self, holder: &str, epoch: i64, now: DateTime<Utc>) -> Result<()> {
        let mut tx = self.write().await?;
        sqlx::query(
            "UPDATE leader_lease SET expires_at = $1 WHERE id = 1 AND holder = $2 AND epoch = $3",
        )
        .bind(ms(now))
        .bind(holder)
        .bind(epoch)
        .execute(&mut *tx)
        .await?;
        tx.commit().await
    }
}

impl Reads {
    /// The lease as recorded, if any controller ever held it.
    pub async fn lease(&self) -> Result<Option<Lease>> {
        let mut conn = self.pool.acquire().await?;
        lease_row(&mut conn).await
    }

    /// A unit of the writer for a write of the reconciler: when this store is fenced, the
    /// lease is checked first, in the unit's transaction (see the module's guarantees).
    pub(super) async fn write_fenced(&self) -> Result<super::writer::WriteTx> {
        let mut tx = self.write().await?;
        let Some(fence) = &self.fence else {
            return Ok(tx);
        };
        let Some((holder, epoch)) = fence.current() else {
            return Err(StoreError::Fenced(
                "this controller does not hold the leader lease".into(),
            ));
        };
        let current = lease_row(&mut tx).await?;
        match current {
            Some(l) if l.holder == holder && l.epoch == epoch => Ok(tx),
            Some(l) => Err(StoreError::Fenced(format!(
                "the leader lease moved from epoch {epoch} to epoch {} ({})",
                l.epoch, l.holder
            ))),
            None => Err(StoreError::Fenced(
                "no controller holds the leader lease".into(),
            )),
        }
    }
}

pub(super) async fn lease_row(c: &mut sqlx::AnyConnection) -> Result<Option<Lease>> {
    let row = sqlx::query(
        "SELECT holder, epoch, acquired_at, renewed_at, expires_at FROM leader_lease WHERE id = 1",
    )
    .fetch_optional(&mut *c)
    .await?;
    Ok(row.map(|r| Lease {
        holder: r.get("holder"),
        epoch: r.get("epoch"),
        acquired_at: from_ms(r.get("acquired_at")),
        renewed_at: from_ms(r.get("renewed_at")),
        expires_at: from_ms(r.get("expires_at")),
    }))
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;
    use crate::domain::{
        Action, Effect, EffectKind, EffectStatus, Reason, ReleaseId, RunStatus, StageName,
    };
    use crate::engine::facts::{Delivery, Ingested, NewRelease};
    use crate::store::EffectOutcome;
    use crate::store::approvals::{Issued, NewToken};
    use crate::store::copy::checksum_tables;

    fn at(s: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 1, 9, 0, 0).unwrap() + chrono::Duration::seconds(s)
    }

    const TTL: Duration = Duration::from_secs(10);

    async fn store(dir: &tempfile::TempDir) -> Store {
        Store::open(&tollgate_testkit::state::url(dir.path()))
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn the_first_claimant_leads_renews_and_another_takes_over_only_after_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(&dir).await;
        let first = s.claim_lease("a", TTL, at(0)).await.unwrap();
        assert_eq!(
            first,
            Claim::Held {
                epoch: 1,
                expires_at: at(10),
                taken: true
            }
        );
        match s.claim_lease("b", TTL, at(5)).await.unwrap() {
            Claim::Other(l) => assert_eq!((l.holder.as_str(), l.epoch), ("a", 1)),
            other => panic!("b must not lead yet: {other:?}"),
        }
        let renewed = s.claim_lease("a", TTL, at(8)).await.unwrap();
        assert_eq!(
            renewed,
            Claim::Held {
                epoch: 1,
                expires_at: at(18),
                taken: false
            }
        );
        assert!(matches!(
            s.claim_lease("b", TTL, at(17)).await.unwrap(),
            Claim::Other(_)
        ));
        let taken = s.claim_lease("b", TTL, at(18)).await.unwrap();
        assert_eq!(
            taken,
            Claim::Held {
                epoch: 2,
                expires_at: at(28),
                taken: true
            }
        );
        // The old holder, back, finds it taken.
        match s.claim_lease("a", TTL, at(19)).await.unwrap() {
            Claim::Other(l) => assert_eq!((l.holder.as_str(), l.epoch), ("b", 2)),
            other => panic!("a lost the lease: {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_fenced_write_is_refused_once_the_lease_moved_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(&dir).await;
        s.claim_lease("a", TTL, at(0)).await.unwrap();
        let fence = Fence::default();
        fence.set("a", 1);
        let a = s.clone().fenced(fence.clone());
        let body = "Resources: {}\n";
        let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(body.as_bytes()));
        a.put_template(&sha, body, at(1)).await.unwrap();
        assert!(s.template(&sha).await.unwrap().is_some());

        // b takes over after a's lease expired; a still believes it leads at epoch 1.
        s.claim_lease("b", TTL, at(11)).await.unwrap();
        let other = "Resources: {X: {}}\n";
        let other_sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(other.as_bytes()));
        let refused = a.put_template(&other_sha, other, at(12)).await;
        assert!(
            matches!(refused, Err(StoreError::Fenced(ref why)) if why.contains("epoch 2")),
            "{refused:?}"
        );
        assert!(s.template(&other_sha).await.unwrap().is_none());

        // Not leading at all: refused without asking the database.
        fence.clear();
        assert!(matches!(
            a.put_template(&other_sha, other, at(13)).await,
            Err(StoreError::Fenced(_))
        ));
        // An unfenced store (a fact recorded by any controller) is not affected.
        s.put_template(&other_sha, other, at(14)).await.unwrap();
    }

    // ----- every fenced write, refused once the lease moved ---------------------------------

    /// Controller `a` leads at epoch 1 and writes through its fenced store (the second
    /// store); the first is unfenced, for reading back and for recording facts. `shop` has
    /// release 1 with a waiting run in `beta`.
    async fn leading(dir: &tempfile::TempDir) -> (Store, Store, ReleaseId) {
        let s = store(dir).await;
        s.claim_lease("a", TTL, at(0)).await.unwrap();
        let fence = Fence::default();
        fence.set("a", 1);
        let a = s.clone().fenced(fence);
        let release = NewRelease {
            pipeline: "shop".into(),
            sha: "a".repeat(40),
            branch: "main".into(),
            author_name: "A".into(),
            author_email: "a@x".into(),
            message: "m".into(),
            ..NewRelease::default()
        };
        let d = Delivery {
            source: "github".into(),
            id: "push-1".into(),
        };
        let stages = [StageName::from("beta")];
        let id = match s
            .record_release(&release, &stages, &d, at(1))
            .await
            .unwrap()
        {
            Ingested::Recorded(id) => id,
            Ingested::Duplicate => panic!("a fresh state has no release"),
        };
        (s, a, id)
    }

    /// `b` takes the lease over once `a`'s expired: epoch 2. `a` still believes it leads.
    async fn taken_over(s: &Store) {
        let claim = s.claim_lease("b", TTL, at(11)).await.unwrap();
        assert!(matches!(claim, Claim::Held { epoch: 2, .. }), "{claim:?}");
    }

    /// `write` (a fenced write of `a` at epoch 1) is refused with [`StoreError::Fenced`] for
    /// epoch 2, and every table of the state reads back as before.
    async fn refused<T: std::fmt::Debug>(
        s: &Store,
        write: impl std::future::Future<Output = Result<T>>,
    ) {
        let before = checksum_tables(s.reads()).await.unwrap();
        let r = write.await;
        assert!(
            matches!(r, Err(StoreError::Fenced(ref why)) if why.contains("epoch 2")),
            "{r:?}"
        );
        assert_eq!(checksum_tables(s.reads()).await.unwrap(), before);
    }

    async fn count(s: &Store, table: &str) -> i64 {
        sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(s.pool())
            .await
            .unwrap()
    }

    fn deploy(release: ReleaseId) -> Effect {
        Effect::new("shop", release, "beta", 1, EffectKind::Deploy { wave: 0 })
    }

    fn token(release: ReleaseId) -> NewToken {
        NewToken {
            request_key: "shop/1/beta/1/approval".into(),
            pipeline: "shop".into(),
            release,
            stage: "beta".into(),
            attempt: 1,
            approver: Some("ann".into()),
            recipient: None,
            expires_at: at(3600),
        }
    }

    #[tokio::test]
    async fn a_deposed_leaders_plan_changes_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (s, a, id) = leading(&dir).await;
        let to = |status| Action::Transition {
            release: id,
            stage: "beta".into(),
            to: status,
            reason: Reason::Queued,
            alarm: None,
        };
        a.apply("shop", &[to(RunStatus::Queued)], at(2))
            .await
            .unwrap();
        let run = s.stage_run(id, "beta").await.unwrap().unwrap();
        assert_eq!(run.status, RunStatus::Queued);
        let events = s.events("shop", 100).await.unwrap();
        assert!(events.iter().any(|e| e.kind == "transition"));

        taken_over(&s).await;
        refused(&s, a.apply("shop", &[to(RunStatus::Deploying)], at(12))).await;
        assert_eq!(s.stage_run(id, "beta").await.unwrap().unwrap(), run);
        assert_eq!(s.events("shop", 100).await.unwrap(), events);
    }

    #[tokio::test]
    async fn a_deposed_leaders_effect_intent_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (s, a, id) = leading(&dir).await;
        let e = deploy(id);

        taken_over(&s).await;
        refused(&s, a.begin_effect(&e, None, at(12))).await;
        assert_eq!(s.effects_of(id, "beta").await.unwrap(), vec![]);
        assert_eq!(count(&s, "effects").await, 0);
        // The same intent through the new leader's store is recorded.
        assert!(s.begin_effect(&e, None, at(13)).await.unwrap());
    }

    #[tokio::test]
    async fn a_deposed_leaders_effect_outcome_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (s, a, id) = leading(&dir).await;
        let e = deploy(id);
        assert!(a.begin_effect(&e, None, at(2)).await.unwrap());
        let pending = s.effects_of(id, "beta").await.unwrap();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].status, EffectStatus::Pending);
        let events = s.events("shop", 100).await.unwrap();

        taken_over(&s).await;
        let outcome = EffectOutcome::success("deployed");
        refused(&s, a.finish_effect(&e, &outcome, at(12))).await;
        assert_eq!(s.effects_of(id, "beta").await.unwrap(), pending);
        assert!(!s.effect_finished(&e.key).await.unwrap());
        assert_eq!(s.events("shop", 100).await.unwrap(), events);
    }

    #[tokio::test]
    async fn a_deposed_leaders_approval_link_is_not_issued() {
        let dir = tempfile::tempdir().unwrap();
        let (s, a, id) = leading(&dir).await;

        taken_over(&s).await;
        refused(&s, a.issue_approval_token(&token(id), at(12))).await;
        assert_eq!(count(&s, "approval_tokens").await, 0);
    }

    #[tokio::test]
    async fn a_deposed_leaders_approval_link_is_not_marked_published() {
        let dir = tempfile::tempdir().unwrap();
        let (s, a, id) = leading(&dir).await;
        let Issued::New(issued) = a.issue_approval_token(&token(id), at(2)).await.unwrap() else {
            panic!("a fresh request has no published link");
        };
        let hash = issued.record.hash.clone();
        let stored = s.approval_token_by_hash(&hash).await.unwrap().unwrap();
        assert_eq!(stored.published_at, None);

        taken_over(&s).await;
        refused(&s, a.mark_approval_token_published(&hash, at(12))).await;
        assert_eq!(
            s.approval_token_by_hash(&hash).await.unwrap().unwrap(),
            stored
        );
        assert_eq!(count(&s, "approval_tokens").await, 1);
    }

    #[tokio::test]
    async fn a_deposed_leaders_event_log_entries_are_refused_and_facts_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let (s, a, id) = leading(&dir).await;
        let scope = Some((id, "beta"));
        a.log_reconciler_event("shop", "rollback-latency", scope, "120 ms", at(2))
            .await
            .unwrap();
        let events = s.events("shop", 100).await.unwrap();
        let last = events.last().unwrap();
        assert_eq!(
            (last.actor.as_str(), last.kind.as_str()),
            ("controller", "rollback-latency")
        );

        taken_over(&s).await;
        for kind in ["rollback-latency", "rollback-fallback", "effect-deadline"] {
            refused(
                &s,
                a.log_reconciler_event("shop", kind, scope, "late", at(12)),
            )
            .await;
        }
        assert_eq!(s.events("shop", 100).await.unwrap(), events);

        // A fact recorded through the same store (the API, a webhook) is not the
        // reconciler's: any controller records it.
        a.log_event("shop", "ops", "note", None, "a person's note", at(13))
            .await
            .unwrap();
        let after = s.events("shop", 100).await.unwrap();
        assert_eq!(after.len(), events.len() + 1);
        assert_eq!(after.last().unwrap().kind, "note");
    }

    #[tokio::test]
    async fn a_released_lease_is_taken_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(&dir).await;
        s.claim_lease("a", TTL, at(0)).await.unwrap();
        s.release_lease("a", 1, at(1)).await.unwrap();
        assert!(matches!(
            s.claim_lease("b", TTL, at(1)).await.unwrap(),
            Claim::Held { epoch: 2, .. }
        ));
        // A release by a holder that no longer holds it changes nothing.
        s.release_lease("a", 1, at(2)).await.unwrap();
        assert_eq!(s.lease().await.unwrap().unwrap().holder, "b");
    }
}

//! The leader lease (migration 0013) and the fence on the reconciler's writes.
//!
//! Several controllers may share one PostgreSQL state. Each records facts (webhooks, SNS,
//! approvals, the API); only the holder of the lease reconciles and performs effects. A claim
//! ([`Store::claim_lease`]) renews the lease for its holder, takes it over once it expired, or
//! reports who holds it. Every change of holder adds one to the lease's epoch.
//!
//! Guarantees: a store given a [`Fence`] checks, in the same transaction, that the lease is
//! still at the fence's holder and epoch before each write of the reconciler (plan changes,
//! effect intents and outcomes, templates, approval links); otherwise the write is refused
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

async fn lease_row(c: &mut sqlx::AnyConnection) -> Result<Option<Lease>> {
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

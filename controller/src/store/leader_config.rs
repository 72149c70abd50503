//! The configuration the leader acts with (migration 0018), recorded for the controllers
//! standing by.
//!
//! The leader may keep its configuration over the commit last applied from the configuration
//! repository (one that would move a deploy in flight is refused, [`crate::engine::takeover`]).
//! A controller standing by records facts (alarms, pushes) by its own configuration, so it
//! follows an applied commit only once the leader says it acts with it: the leader writes here
//! what it acts with, typed, and a controller standing by reads it with the lease.
//!
//! Guarantees: a record is written only by the holder of the lease at its epoch (checked in
//! the write's transaction), and names that epoch: a record of another epoch than the lease's
//! says nothing about the leader now.

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::{Reads, Result, Store, StoreError, from_ms, lease, ms};
use crate::config::{Config, ConfigCommit};

/// The configuration a leader acts with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActsWith {
    /// The one applied from the configuration repository at this commit.
    Applied(ConfigCommit),
    /// Its file on disk (no commit applied, a commit refused, or a file naming no
    /// configuration repository).
    File,
}

impl ActsWith {
    /// What acting with `config` is.
    pub fn of(config: &Config) -> ActsWith {
        match &config.applied_from {
            Some(commit) => ActsWith::Applied(commit.clone()),
            None => ActsWith::File,
        }
    }
}

/// What a leader recorded it acts with, and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderConfig {
    pub holder: String,
    pub epoch: i64,
    pub acts_with: ActsWith,
    pub recorded_at: DateTime<Utc>,
}

impl Store {
    /// Records that `holder`, leading at `epoch`, acts with `acts_with`. False, and nothing
    /// written, when `holder` does not hold the lease at `epoch` (any more).
    pub async fn record_leader_config(
        &self,
        holder: &str,
        epoch: i64,
        acts_with: &ActsWith,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let mut tx = self.write().await?;
        let lease = lease::lease_row(&mut tx).await?;
        if !lease.is_some_and(|l| l.holder == holder && l.epoch == epoch) {
            return Ok(false);
        }
        let (kind, repository, sha) = match acts_with {
            ActsWith::Applied(c) => ("applied", Some(c.repository.as_str()), Some(&c.sha)),
            ActsWith::File => ("file", None, None),
        };
        sqlx::query(
            "INSERT INTO leader_config (id, holder, epoch, acts_with, repository, sha, recorded_at) \
             VALUES (1, $1, $2, $3, $4, $5, $6) \
             ON CONFLICT (id) DO UPDATE SET holder = excluded.holder, epoch = excluded.epoch, \
             acts_with = excluded.acts_with, repository = excluded.repository, \
             sha = excluded.sha, recorded_at = excluded.recorded_at",
        )
        .bind(holder)
        .bind(epoch)
        .bind(kind)
        .bind(repository)
        .bind(sha.map(|s| s.to_string()))
        .bind(ms(now))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }
}

impl Reads {
    /// What the leader last recorded it acts with, whatever its epoch.
    pub async fn leader_config(&self) -> Result<Option<LeaderConfig>> {
        let row = sqlx::query(
            "SELECT holder, epoch, acts_with, repository, sha, recorded_at \
             FROM leader_config WHERE id = 1",
        )
        .fetch_optional(&self.pool)
        .await?;
        let Some(r) = row else {
            return Ok(None);
        };
        let kind: String = r.get("acts_with");
        let repository: Option<String> = r.get("repository");
        let sha: Option<String> = r.get("sha");
        let acts_with = match (kind.as_str(), repository, sha) {
            ("applied", Some(repository), Some(sha)) => ActsWith::Applied(ConfigCommit {
                repository,
                sha: sha.into(),
            }),
            ("file", None, None) => ActsWith::File,
            (kind, ..) => {
                return Err(StoreError::Corrupt {
                    table: "leader_config",
                    detail: format!("acts_with `{kind}` with its commit missing or out of place"),
                });
            }
        };
        Ok(Some(LeaderConfig {
            holder: r.get("holder"),
            epoch: r.get("epoch"),
            acts_with,
            recorded_at: from_ms(r.get("recorded_at")),
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use chrono::TimeZone;

    use super::*;

    fn at(s: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 1, 9, 0, 0).unwrap() + chrono::Duration::seconds(s)
    }

    const TTL: Duration = Duration::from_secs(10);

    #[tokio::test]
    async fn only_the_holder_at_its_epoch_records_what_it_acts_with() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&tollgate_testkit::state::url(dir.path()))
            .await
            .unwrap();
        assert_eq!(s.leader_config().await.unwrap(), None);
        // No lease yet: nobody leads, nothing is recorded.
        assert!(
            !s.record_leader_config("a", 1, &ActsWith::File, at(0))
                .await
                .unwrap()
        );
        s.claim_lease("a", TTL, at(0)).await.unwrap();
        assert!(
            s.record_leader_config("a", 1, &ActsWith::File, at(1))
                .await
                .unwrap()
        );
        let applied = ActsWith::Applied(ConfigCommit {
            repository: "acme/config".into(),
            sha: "b5".repeat(20).into(),
        });
        assert!(
            s.record_leader_config("a", 1, &applied, at(2))
                .await
                .unwrap()
        );
        let want = LeaderConfig {
            holder: "a".into(),
            epoch: 1,
            acts_with: applied.clone(),
            recorded_at: at(2),
        };
        assert_eq!(s.leader_config().await.unwrap(), Some(want.clone()));

        // b takes over; a, deposed, records nothing, and neither does b at a's epoch.
        s.claim_lease("b", TTL, at(11)).await.unwrap();
        assert!(
            !s.record_leader_config("a", 1, &ActsWith::File, at(12))
                .await
                .unwrap()
        );
        assert!(
            !s.record_leader_config("b", 1, &ActsWith::File, at(12))
                .await
                .unwrap()
        );
        assert_eq!(s.leader_config().await.unwrap(), Some(want));
        assert!(
            s.record_leader_config("b", 2, &ActsWith::File, at(13))
                .await
                .unwrap()
        );
        let now = s.leader_config().await.unwrap().unwrap();
        assert_eq!((now.holder.as_str(), now.epoch), ("b", 2));
        assert_eq!(now.acts_with, ActsWith::File);
    }

    #[tokio::test]
    async fn a_record_with_its_commit_out_of_place_is_refused_by_the_schema() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&tollgate_testkit::state::url(dir.path()))
            .await
            .unwrap();
        let insert = |kind: &'static str, repository: Option<&'static str>, sha: Option<String>| {
            sqlx::query(
                "INSERT INTO leader_config (id, holder, epoch, acts_with, repository, sha, recorded_at) \
                 VALUES (1, 'a', 1, $1, $2, $3, 0)",
            )
            .bind(kind)
            .bind(repository)
            .bind(sha)
            .execute(s.pool())
        };
        let sha = || Some("b5".repeat(20));
        assert!(insert("applied", Some("acme/config"), None).await.is_err());
        assert!(insert("applied", None, sha()).await.is_err());
        assert!(
            insert("applied", Some("acme/config"), Some("b5".into()))
                .await
                .is_err()
        );
        assert!(insert("file", Some("acme/config"), sha()).await.is_err());
        assert!(insert("kept", None, None).await.is_err());
        assert!(insert("file", None, None).await.is_ok());
    }
}

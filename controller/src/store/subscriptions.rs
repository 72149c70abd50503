//! When the filter policies of approval-topic subscriptions last changed
//! (`subscription_policies`): written by the approval sender when it sets a policy or an audit
//! sees a subscription exposed, read before personal links are published.
//!
//! Rows are deleted once settled (both times older than [`FILTER_POLICY_SETTLE`]): a settled
//! subscription and one never changed read the same. Must never hold anything but the
//! subscription's and topic's ARNs and the times.

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::{Reads, Result, Store, from_ms, ms};
use crate::domain::approval::FILTER_POLICY_SETTLE;
use crate::domain::{PolicyChange, PolicyHistory};

impl Store {
    /// Records that the filter policies of `subscriptions` (ARNs, on `topic`) changed at
    /// `now` in the way `change` says, and forgets every subscription settled by then.
    pub async fn record_policy_change(
        &self,
        topic: &str,
        subscriptions: &[String],
        change: PolicyChange,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let sql = match change {
            PolicyChange::Set => {
                "INSERT INTO subscription_policies (subscription_arn, topic, policy_set_at) \
                 VALUES ($1, $2, $3) ON CONFLICT (subscription_arn) \
                 DO UPDATE SET topic = excluded.topic, policy_set_at = excluded.policy_set_at"
            }
            PolicyChange::SeenExposed => {
                "INSERT INTO subscription_policies (subscription_arn, topic, exposed_seen_at) \
                 VALUES ($1, $2, $3) ON CONFLICT (subscription_arn) \
                 DO UPDATE SET topic = excluded.topic, exposed_seen_at = excluded.exposed_seen_at"
            }
        };
        let mut tx = self.write_fenced().await?;
        let settle = chrono::Duration::from_std(FILTER_POLICY_SETTLE).unwrap_or_default();
        sqlx::query(
            "DELETE FROM subscription_policies \
             WHERE COALESCE(policy_set_at, 0) <= $1 AND COALESCE(exposed_seen_at, 0) <= $1",
        )
        .bind(ms(now - settle))
        .execute(&mut *tx)
        .await?;
        for arn in subscriptions {
            sqlx::query(sql)
                .bind(arn)
                .bind(topic)
                .bind(ms(now))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

impl Reads {
    /// What is known of the policy changes of `topic`'s subscriptions (those not yet deleted
    /// as settled), by subscription ARN.
    pub async fn policy_history(&self, topic: &str) -> Result<Vec<PolicyHistory>> {
        let rows = sqlx::query(
            "SELECT subscription_arn, topic, policy_set_at, exposed_seen_at \
             FROM subscription_policies WHERE topic = $1 ORDER BY subscription_arn",
        )
        .bind(topic)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|row| PolicyHistory {
                subscription: row.get(0),
                topic: row.get(1),
                policy_set_at: row.get::<Option<i64>, _>(2).map(from_ms),
                exposed_seen_at: row.get::<Option<i64>, _>(3).map(from_ms),
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use chrono::{Duration, TimeZone, Utc};

    use super::super::Store;
    use crate::domain::{PolicyChange, PolicyHistory};

    const TOPIC: &str = "arn:aws:sns:eu-west-1:111111111111:approvals";

    fn arn(n: u32) -> String {
        format!("{TOPIC}:{n}")
    }

    #[tokio::test]
    async fn policy_changes_are_kept_per_subscription_until_settled_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let url = tollgate_testkit::state::url(dir.path());
        let store = Store::open(&url).await.unwrap();
        let t0 = Utc.with_ymd_and_hms(2026, 3, 1, 10, 0, 0).unwrap();
        let min = Duration::minutes;
        assert!(store.policy_history(TOPIC).await.unwrap().is_empty());

        store
            .record_policy_change(TOPIC, &[arn(1), arn(2)], PolicyChange::Set, t0)
            .await
            .unwrap();
        store
            .record_policy_change(TOPIC, &[arn(2)], PolicyChange::SeenExposed, t0 + min(4))
            .await
            .unwrap();
        store
            .record_policy_change(
                "arn:aws:sns:eu-west-1:111111111111:other",
                &[arn(9)],
                PolicyChange::Set,
                t0,
            )
            .await
            .unwrap();
        let history = |n: u32, set: Option<i64>, seen: Option<i64>| PolicyHistory {
            subscription: arn(n),
            topic: TOPIC.into(),
            policy_set_at: set.map(|m| t0 + min(m)),
            exposed_seen_at: seen.map(|m| t0 + min(m)),
        };
        let want = vec![history(1, Some(0), None), history(2, Some(0), Some(4))];
        assert_eq!(store.policy_history(TOPIC).await.unwrap(), want);
        drop(store);
        let store = Store::open(&url).await.unwrap();
        assert_eq!(store.policy_history(TOPIC).await.unwrap(), want);

        // Setting the policy again moves its time; what is settled by then is forgotten.
        store
            .record_policy_change(TOPIC, &[arn(2)], PolicyChange::Set, t0 + min(16))
            .await
            .unwrap();
        assert_eq!(
            store.policy_history(TOPIC).await.unwrap(),
            vec![history(2, Some(16), Some(4))]
        );
    }
}

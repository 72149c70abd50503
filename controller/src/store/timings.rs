//! How long each stack's recent deploys took (`stack_timings`): written with the outcome of
//! the deploy or rollback that measured them, in its transaction; read before the next
//! deploy of the same stack, whose waits are shaped by them.
//!
//! Keeps the last [`STACK_TIMINGS_KEPT`] rows per stack: older ones are deleted as a new one
//! is written, so the table's size follows the number of stacks, not of deploys.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::{Reads, Result, ms};
use crate::domain::{STACK_TIMINGS_KEPT, StackHistory, StackKey, StackTiming};

/// Records `timing` for the effect `key`, and forgets the stack's oldest rows beyond the
/// kept number.
pub(super) async fn record(
    tx: &mut sqlx::AnyConnection,
    key: &str,
    timing: &StackTiming,
    now: DateTime<Utc>,
) -> Result<()> {
    let s = &timing.stack;
    let ms_of = |v: Option<u64>| v.map(|v| i64::try_from(v).unwrap_or(i64::MAX));
    sqlx::query(
        "INSERT INTO stack_timings (account, region, stack, change_set_ms, update_ms, effect_key, recorded_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&s.account)
    .bind(&s.region)
    .bind(&s.stack)
    .bind(ms_of(timing.change_set_ms))
    .bind(ms_of(timing.update_ms))
    .bind(key)
    .bind(ms(now))
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "DELETE FROM stack_timings WHERE account = $1 AND region = $2 AND stack = $3 AND id NOT IN \
         (SELECT id FROM stack_timings WHERE account = $1 AND region = $2 AND stack = $3 ORDER BY id DESC LIMIT $4)",
    )
    .bind(&s.account)
    .bind(&s.region)
    .bind(&s.stack)
    .bind(STACK_TIMINGS_KEPT as i64)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

impl Reads {
    /// The recent measurements of `stack`, newest first.
    pub async fn stack_history(&self, stack: &StackKey) -> Result<StackHistory> {
        let rows = sqlx::query(
            "SELECT change_set_ms, update_ms FROM stack_timings \
             WHERE account = $1 AND region = $2 AND stack = $3 ORDER BY id DESC LIMIT $4",
        )
        .bind(&stack.account)
        .bind(&stack.region)
        .bind(&stack.stack)
        .bind(STACK_TIMINGS_KEPT as i64)
        .fetch_all(&self.pool)
        .await?;
        let duration = |v: Option<i64>| v.map(|v| Duration::from_millis(v.max(0) as u64));
        let mut history = StackHistory::default();
        for row in rows {
            history
                .change_set
                .extend(duration(row.get::<Option<i64>, _>(0)));
            history
                .update
                .extend(duration(row.get::<Option<i64>, _>(1)));
        }
        Ok(history)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use chrono::Utc;

    use super::super::{EffectOutcome, Store};
    use crate::domain::*;

    fn key(stack: &str) -> StackKey {
        StackKey {
            account: "222222222222".into(),
            region: "us-east-1".into(),
            stack: stack.into(),
        }
    }

    /// A deploy of `stack` for attempt `attempt` that measured `change_set_ms` and `update_ms`.
    async fn deployed(store: &Store, stack: &str, attempt: u32, ok: bool, timing: StackTiming) {
        let kind = EffectKind::Deploy { wave: 0 };
        let e = Effect::new("shop", ReleaseId(1), "beta", attempt, kind);
        store.begin_effect(&e, None, Utc::now()).await.unwrap();
        let output = EffectOutput::Deployed {
            image_uri: format!("repo@sha256:{stack}"),
            outputs: BTreeMap::new(),
            applied: None,
            timing: Some(timing),
            to: None,
        };
        let outcome = EffectOutcome {
            ok,
            ..EffectOutcome::success("deployed").with(output)
        };
        store.finish_effect(&e, &outcome, Utc::now()).await.unwrap();
        // A second outcome for the same effect changes nothing (and records nothing).
        store.finish_effect(&e, &outcome, Utc::now()).await.unwrap();
    }

    #[tokio::test]
    async fn a_stacks_last_timings_are_kept_with_the_outcome_and_read_back_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let url = tollgate_testkit::state::url(dir.path());
        let store = Store::open(&url).await.unwrap();
        sqlx::query("INSERT INTO releases (id, pipeline, sha, branch, author_name, author_email, message, created_at) VALUES (1, 'shop', 'abc', 'main', 'A', 'a@x', 'm', 0)")
            .execute(store.pool())
            .await
            .unwrap();
        assert_eq!(
            store.stack_history(&key("app")).await.unwrap(),
            StackHistory::default()
        );
        for n in 1..=12u64 {
            let timing = StackTiming {
                stack: key("app"),
                change_set_ms: Some(20_000 + n),
                update_ms: (n != 12).then_some(180_000 + n),
            };
            deployed(&store, "app", n as u32, true, timing).await;
        }
        let other = StackTiming::new(key("other"), Some(std::time::Duration::from_secs(3)), None);
        deployed(&store, "other", 13, false, other).await;

        let history = store.stack_history(&key("app")).await.unwrap();
        let ms = |v: &[std::time::Duration]| v.iter().map(|d| d.as_millis()).collect::<Vec<_>>();
        assert_eq!(
            ms(&history.change_set),
            (3..=12).rev().map(|n| 20_000 + n).collect::<Vec<u128>>(),
            "the last ten, newest first"
        );
        assert_eq!(
            ms(&history.update),
            (3..=11).rev().map(|n| 180_000 + n).collect::<Vec<u128>>(),
            "the newest deploy ran no update"
        );
        let rows: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM stack_timings WHERE stack = 'app'")
                .fetch_one(store.pool())
                .await
                .unwrap();
        assert_eq!(rows, STACK_TIMINGS_KEPT as i64);
        let other = store.stack_history(&key("other")).await.unwrap();
        assert_eq!(ms(&other.change_set), [3_000]);
        assert!(other.update.is_empty());
    }
}

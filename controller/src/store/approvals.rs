//! Approval tokens: stored hashed, single use, expiring.
//!
//! Owns the `approval_tokens` table: minting the token carried by an approval link, finding a
//! token again by its hash, and the facts the approval pages read about the run a token is for
//! (its stage run, a newer release that took the stage, who rejected).
//!
//! # Guarantees
//! - A token is [`TOKEN_BYTES`] bytes (256 bits) from the operating system's CSPRNG, written in
//!   URL-safe base64. Only its SHA-256 is stored; the token itself is returned once, by
//!   [`Store::issue_approval_token`], to be put in the message that carries it.
//! - A token is bound to one pipeline, release and stage, and to one approver (or to nobody:
//!   a shared link), and expires at the approval request's `expires_at`.
//! - Single use: a token is consumed by recording the decision under its [`TokenRecord::delivery`]
//!   (`Ingest::record_approval` / [`Store::record_approval`]). That inserts the delivery in
//!   the same transaction as the approval, and a delivery is recorded at most once, so of two
//!   concurrent uses exactly one is recorded. [`TokenRecord::used_at`] reads that delivery back.
//! - At most one live (not replaced) token per approval request and approver (a unique index).
//!   [`Store::issue_approval_token`] mints a new one only when the live one was never marked
//!   published, and then replaces it in the same transaction.
//!
//! # Must never
//! - store, log or return (outside [`IssuedToken`]) a raw token.

use chrono::{DateTime, Utc};
use rand::RngCore;
use rand::rngs::OsRng;
use sha2::{Digest, Sha256};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use super::{Reads, Result, Store, from_ms, ms};
use crate::domain::{ReleaseId, RunStatus, StageRun};
use crate::engine::facts::Delivery;
use crate::secret::Secret;

/// Random bytes in a token: 256 bits.
pub const TOKEN_BYTES: usize = 32;
/// Random bytes in a form's anti-CSRF value: 128 bits.
const CSRF_BYTES: usize = 16;
/// Length of a token as written in a link (unpadded URL-safe base64 of [`TOKEN_BYTES`]).
pub const TOKEN_LEN: usize = 43;
/// The `source` of the delivery that consumes a token.
pub const DELIVERY_SOURCE: &str = "approval-link";

/// A token to mint for one approval request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewToken {
    /// The approval request's idempotency key.
    pub request_key: String,
    pub pipeline: String,
    pub release: ReleaseId,
    pub stage: String,
    /// The run's attempt the request belongs to.
    pub attempt: u32,
    /// The approver the link is for; `None` for a shared link.
    pub approver: Option<String>,
    /// The approver's email address the link goes to; `None` for a shared link.
    pub recipient: Option<String>,
    pub expires_at: DateTime<Utc>,
}

/// A stored token (never the token itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    /// Hex SHA-256 of the token.
    pub hash: String,
    pub request_key: String,
    pub pipeline: String,
    pub release: ReleaseId,
    pub stage: String,
    /// The run's attempt the link was issued for: it decides nothing in another attempt.
    pub attempt: u32,
    /// `None` for a shared link.
    pub approver: Option<String>,
    /// The approver's email address the link was sent to (`None` for a shared link, and for
    /// links sent before it was kept).
    pub recipient: Option<String>,
    /// The value the confirmation form must send back.
    pub csrf: Secret,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub published_at: Option<DateTime<Utc>>,
    /// Set when a later send replaced this link with a new one.
    pub replaced_at: Option<DateTime<Utc>>,
    /// When the token was used (its delivery was recorded).
    pub used_at: Option<DateTime<Utc>>,
}

impl TokenRecord {
    /// The delivery under which a decision through this token is recorded: recording it
    /// consumes the token.
    pub fn delivery(&self) -> Delivery {
        Delivery {
            source: DELIVERY_SOURCE.into(),
            id: self.hash.clone(),
        }
    }

    pub fn is_expired(&self, now: DateTime<Utc>) -> bool {
        now >= self.expires_at
    }

    pub fn is_shared(&self) -> bool {
        self.approver.is_none()
    }
}

/// A freshly minted token: the only place the raw token exists.
#[derive(Debug, Clone)]
pub struct IssuedToken {
    pub token: Secret,
    pub record: TokenRecord,
}

/// What [`Store::issue_approval_token`] did.
#[derive(Debug, Clone)]
pub enum Issued {
    /// A new token (replacing a live one that was never published, if any).
    New(IssuedToken),
    /// The live token of this request and approver was already published: nothing minted.
    AlreadyPublished(TokenRecord),
}

/// Hex SHA-256 of a token, as stored.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Could `token` be one of ours (length and alphabet)? Checked before anything is looked up.
pub fn well_formed(token: &str) -> bool {
    token.len() == TOKEN_LEN
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// `n` random bytes from the OS CSPRNG, in unpadded URL-safe base64.
pub(super) fn random(n: usize) -> String {
    use base64::Engine as _;
    let mut bytes = vec![0u8; n];
    OsRng.fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

const TOKEN_COLUMNS: &str = "t.token_hash, t.request_key, t.pipeline, t.release_id, t.stage, t.attempt, t.approver, t.recipient, t.csrf, t.created_at, t.expires_at, t.published_at, t.replaced_at, d.received_at AS used_at";

fn token_query(filter: &str) -> String {
    format!(
        "SELECT {TOKEN_COLUMNS} FROM approval_tokens t
         LEFT JOIN deliveries d ON d.source = '{DELIVERY_SOURCE}' AND d.id = t.token_hash
         WHERE {filter}"
    )
}

fn token_row(r: &AnyRow) -> TokenRecord {
    let opt = |c: &str| r.get::<Option<i64>, _>(c).map(from_ms);
    TokenRecord {
        hash: r.get("token_hash"),
        request_key: r.get("request_key"),
        pipeline: r.get("pipeline"),
        release: ReleaseId(r.get("release_id")),
        stage: r.get("stage"),
        attempt: r.get::<i64, _>("attempt") as u32,
        approver: r.get("approver"),
        recipient: r.get("recipient"),
        csrf: Secret::new(r.get::<String, _>("csrf")),
        created_at: from_ms(r.get("created_at")),
        expires_at: from_ms(r.get("expires_at")),
        published_at: opt("published_at"),
        replaced_at: opt("replaced_at"),
        used_at: opt("used_at"),
    }
}

impl Store {
    /// Mints the token of one approval request for one approver (or the shared link), unless
    /// the live one was already published. In one transaction: a live token never marked
    /// published (a send that crashed or failed before publishing) is replaced by the new one.
    /// A published one keeps its link, and takes the request's expiry when that changed (a
    /// reload changed the approval's `timeout`); one sent to another address than `t`'s is
    /// replaced ([`Store::retire_links_sent_elsewhere`] does that first).
    pub async fn issue_approval_token(&self, t: &NewToken, now: DateTime<Utc>) -> Result<Issued> {
        let mut tx = self.write_fenced().await?;
        if let Some(mut live) = live_token(&mut tx, &t.request_key, t.approver.as_deref()).await? {
            let elsewhere = live.used_at.is_none() && sent_elsewhere(&live, t.recipient.as_deref());
            if (live.published_at.is_some() || live.used_at.is_some()) && !elsewhere {
                if live.expires_at != t.expires_at {
                    sqlx::query("UPDATE approval_tokens SET expires_at = $1 WHERE token_hash = $2")
                        .bind(ms(t.expires_at))
                        .bind(&live.hash)
                        .execute(&mut *tx)
                        .await?;
                    live.expires_at = t.expires_at;
                }
                tx.commit().await?;
                return Ok(Issued::AlreadyPublished(live));
            }
            sqlx::query("UPDATE approval_tokens SET replaced_at = $1 WHERE token_hash = $2")
                .bind(ms(now))
                .bind(&live.hash)
                .execute(&mut *tx)
                .await?;
        }
        let token = Secret::new(random(TOKEN_BYTES));
        let record = TokenRecord {
            hash: hash_token(token.expose()),
            request_key: t.request_key.clone(),
            pipeline: t.pipeline.clone(),
            release: t.release,
            stage: t.stage.clone(),
            attempt: t.attempt,
            approver: t.approver.clone(),
            recipient: t.recipient.clone(),
            csrf: Secret::new(random(CSRF_BYTES)),
            created_at: now,
            expires_at: t.expires_at,
            published_at: None,
            replaced_at: None,
            used_at: None,
        };
        insert_token(&mut tx, &record).await?;
        tx.commit().await?;
        Ok(Issued::New(IssuedToken { token, record }))
    }

    /// Replaces the unused links of approval request `request_key` that went to another
    /// address than each approver's now (`approvers`: name and email): the old address no
    /// longer decides (its link answers that it was replaced), and the approver is no longer
    /// counted as sent ([`Reads::approvers_sent`]), so the new address gets a link of its own.
    /// Returns the approvers whose links were replaced.
    pub async fn retire_links_sent_elsewhere(
        &self,
        request_key: &str,
        approvers: &[(String, String)],
        now: DateTime<Utc>,
    ) -> Result<Vec<String>> {
        let mut tx = self.write_fenced().await?;
        let mut retired = Vec::new();
        for (name, email) in approvers {
            let Some(live) = live_token(&mut tx, request_key, Some(name)).await? else {
                continue;
            };
            if live.used_at.is_some() || !sent_elsewhere(&live, Some(email)) {
                continue;
            }
            sqlx::query("UPDATE approval_tokens SET replaced_at = $1 WHERE token_hash = $2")
                .bind(ms(now))
                .bind(&live.hash)
                .execute(&mut *tx)
                .await?;
            retired.push(name.clone());
        }
        tx.commit().await?;
        Ok(retired)
    }

    /// Notes that the message carrying the token went out.
    pub async fn mark_approval_token_published(
        &self,
        hash: &str,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let mut tx = self.write_fenced().await?;
        sqlx::query("UPDATE approval_tokens SET published_at = $1 WHERE token_hash = $2 AND published_at IS NULL")
            .bind(ms(now))
            .bind(hash)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }
}

impl Reads {
    /// The token a link carries, if it is well formed and known.
    pub async fn approval_token(&self, token: &str) -> Result<Option<TokenRecord>> {
        if !well_formed(token) {
            return Ok(None);
        }
        self.approval_token_by_hash(&hash_token(token)).await
    }

    /// The approvers whose link of approval request `request_key` went out: their live token
    /// was marked published (or has been used).
    pub async fn approvers_sent(&self, request_key: &str) -> Result<Vec<String>> {
        let sql = token_query(
            "t.request_key = $1 AND t.approver IS NOT NULL AND t.replaced_at IS NULL \
             AND (t.published_at IS NOT NULL OR d.received_at IS NOT NULL)",
        );
        Ok(sqlx::query(&sql)
            .bind(request_key)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .filter_map(|r| token_row(r).approver)
            .collect())
    }

    /// A token by its hash.
    pub async fn approval_token_by_hash(&self, hash: &str) -> Result<Option<TokenRecord>> {
        Ok(sqlx::query(&token_query("t.token_hash = $1"))
            .bind(hash)
            .fetch_optional(&self.pool)
            .await?
            .map(|r| token_row(&r)))
    }

    /// The run of a release in a stage.
    pub async fn stage_run(&self, release: ReleaseId, stage: &str) -> Result<Option<StageRun>> {
        let row = sqlx::query("SELECT * FROM stage_runs WHERE release_id = $1 AND stage = $2")
            .bind(release.0)
            .bind(stage)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| super::rows::run_row(&r)).transpose()
    }

    /// Every run of a release, in stage order of creation.
    pub async fn stage_runs_of(&self, release: ReleaseId) -> Result<Vec<StageRun>> {
        sqlx::query("SELECT * FROM stage_runs WHERE release_id = $1 ORDER BY rowid")
            .bind(release.0)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(super::rows::run_row)
            .collect()
    }

    /// The newest release after `release` that entered `stage` of `pipeline` (and so
    /// superseded it there), if any.
    pub async fn newer_in_stage(
        &self,
        pipeline: &str,
        stage: &str,
        release: ReleaseId,
    ) -> Result<Option<ReleaseId>> {
        let entered = RunStatus::sql_set(RunStatus::entered);
        let sql = format!(
            "SELECT r.id FROM stage_runs s JOIN releases r ON r.id = s.release_id
             WHERE r.pipeline = $1 AND s.stage = $2 AND r.id > $3 AND s.status IN ({entered})
             ORDER BY r.id DESC LIMIT 1"
        );
        Ok(sqlx::query(&sql)
            .bind(pipeline)
            .bind(stage)
            .bind(release.0)
            .fetch_optional(&self.pool)
            .await?
            .map(|r| ReleaseId(r.get(0))))
    }

    /// The newest release of `pipeline` after `release`, if any.
    pub async fn newest_release_after(
        &self,
        pipeline: &str,
        release: ReleaseId,
    ) -> Result<Option<ReleaseId>> {
        Ok(
            sqlx::query("SELECT MAX(id) FROM releases WHERE pipeline = $1 AND id > $2")
                .bind(pipeline)
                .bind(release.0)
                .fetch_one(&self.pool)
                .await?
                .get::<Option<i64>, _>(0)
                .map(ReleaseId),
        )
    }
}

async fn live_token(
    c: &mut AnyConnection,
    request_key: &str,
    approver: Option<&str>,
) -> Result<Option<TokenRecord>> {
    let sql = token_query(
        "t.request_key = $1 AND COALESCE(t.approver, '') = COALESCE($2, '') AND t.replaced_at IS NULL",
    );
    Ok(sqlx::query(&sql)
        .bind(request_key)
        .bind(approver)
        .fetch_optional(&mut *c)
        .await?
        .map(|r| token_row(&r)))
}

/// Whether `token` went to another address than `recipient` (a link sent before addresses
/// were kept went, as far as is known, to the approver's).
fn sent_elsewhere(token: &TokenRecord, recipient: Option<&str>) -> bool {
    match (token.recipient.as_deref(), recipient) {
        (Some(sent), Some(now)) => !sent.eq_ignore_ascii_case(now),
        _ => false,
    }
}

async fn insert_token(c: &mut AnyConnection, t: &TokenRecord) -> Result<()> {
    sqlx::query(
        "INSERT INTO approval_tokens (token_hash, request_key, pipeline, release_id, stage, approver, csrf, created_at, expires_at, attempt, recipient)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(&t.hash)
    .bind(&t.request_key)
    .bind(&t.pipeline)
    .bind(t.release.0)
    .bind(&t.stage)
    .bind(&t.approver)
    .bind(t.csrf.expose())
    .bind(ms(t.created_at))
    .bind(ms(t.expires_at))
    .bind(i64::from(t.attempt))
    .bind(&t.recipient)
    .execute(&mut *c)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_long_random_and_well_formed() {
        let a = random(TOKEN_BYTES);
        let b = random(TOKEN_BYTES);
        assert_eq!(a.len(), TOKEN_LEN);
        assert_ne!(a, b);
        assert!(well_formed(&a));
        assert!(!well_formed(&a[1..]));
        assert!(!well_formed(&format!("{}=", &a[1..])));
        assert_eq!(hash_token(&a).len(), 64);
        assert_ne!(hash_token(&a), hash_token(&b));
    }
}

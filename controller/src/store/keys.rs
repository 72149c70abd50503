//! API keys and the idempotency record of `/api/v1`.
//!
//! Owns the `api_keys` and `api_idempotency` tables. A key is `tg_` and 256 random bits from
//! the operating system's CSPRNG (unpadded URL-safe base64); only its SHA-256 is stored, and
//! the key itself is returned once, to the caller of [`Store::create_api_key`].
//!
//! # Guarantees
//! - A key is looked up by the hash of what was presented; a revoked or expired key is found
//!   with its state, so the caller can say which (and still answer 401).
//! - An idempotency record is claimed before the request runs and completed with its answer:
//!   a second request with the same key finds the claim and never runs.
//!
//! # Must never
//! - store, return (except at creation) or log a key.

use std::fmt;

use chrono::{DateTime, Utc};
use sqlx::Row;
use sqlx::any::AnyRow;

use super::approvals::{hash_token, random};
use super::{Reads, Result, Store, StoreError, from_ms, ms};
use crate::secret::Secret;

/// Random bytes in a key.
pub const KEY_BYTES: usize = 32;
/// What every key starts with (so a leaked one is recognisable in a scanner).
pub const KEY_PREFIX: &str = "tg_";
/// The longest key name.
pub const MAX_KEY_NAME: usize = 64;

/// What a key may do.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads.
    Viewer,
    /// Reads; pauses, resumes, rolls back, retries, promotes.
    Operator,
    /// Reads; approves or rejects as the approver it is bound to.
    Approver,
    /// Everything an operator may, and overrides.
    Admin,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Viewer, Role::Operator, Role::Approver, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Approver => "approver",
            Role::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == text)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A key as stored (never the key itself).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ApiKey {
    pub name: String,
    pub role: Role,
    /// The approver an approver key decides as.
    pub approver: Option<String>,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// Whether a key can be used now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    Active,
    Revoked(DateTime<Utc>),
    Expired(DateTime<Utc>),
}

impl ApiKey {
    pub fn state(&self, now: DateTime<Utc>) -> KeyState {
        if let Some(at) = self.revoked_at {
            return KeyState::Revoked(at);
        }
        match self.expires_at {
            Some(at) if now >= at => KeyState::Expired(at),
            _ => KeyState::Active,
        }
    }
}

/// A key to create.
#[derive(Debug, Clone)]
pub struct NewKey {
    pub name: String,
    pub role: Role,
    pub approver: Option<String>,
    pub expires_at: Option<DateTime<Utc>>,
}

/// Could `text` be one of our keys (prefix, length, alphabet)? Checked before any lookup.
pub fn key_well_formed(text: &str) -> bool {
    text.strip_prefix(KEY_PREFIX).is_some_and(|rest| {
        rest.len() == super::approvals::TOKEN_LEN
            && rest
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    })
}

/// A key name: 1 to 64 of `A-Z a-z 0-9 . _ -`.
pub fn check_key_name(name: &str) -> std::result::Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_KEY_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a key name: 1 to {MAX_KEY_NAME} letters, digits, `.`, `_` or `-`"
        ))
    }
}

fn key_row(r: &AnyRow) -> Result<ApiKey> {
    let role: String = r.get("role");
    let opt = |c: &str| r.get::<Option<i64>, _>(c).map(from_ms);
    Ok(ApiKey {
        name: r.get("name"),
        role: Role::parse(&role).ok_or_else(|| StoreError::Corrupt {
            table: "api_keys",
            detail: format!("role `{role}`"),
        })?,
        approver: r.get("approver"),
        created_at: from_ms(r.get("created_at")),
        expires_at: opt("expires_at"),
        revoked_at: opt("revoked_at"),
    })
}

const KEY_COLUMNS: &str = "name, role, approver, created_at, expires_at, revoked_at";

/// An idempotency record found for a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The first request with this key: run it, then [`Store::complete_idempotency`].
    Fresh,
    /// The first request is still running.
    InProgress,
    /// The key was used for a different request (method, path or body).
    Mismatch,
    /// The first answer, to replay.
    Done { status: u16, body: String },
}

/// The request an idempotency key is claimed for.
#[derive(Debug, Clone)]
pub struct IdempotentRequest<'a> {
    pub key_name: &'a str,
    pub idempotency_key: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    /// Hex SHA-256 of the body.
    pub body_sha256: &'a str,
}

impl Store {
    /// Creates a key; returns it (the only time it is seen). A name in use is refused.
    pub async fn create_api_key(&self, k: &NewKey, now: DateTime<Utc>) -> Result<Secret> {
        check_key_name(&k.name).map_err(StoreError::Invalid)?;
        if (k.role == Role::Approver) != k.approver.is_some() {
            return Err(StoreError::Invalid(
                "an approver key, and only an approver key, names the approver it decides as"
                    .into(),
            ));
        }
        let key = Secret::new(format!("{KEY_PREFIX}{}", random(KEY_BYTES)));
        let mut tx = self.write().await?;
        let inserted = sqlx::query(
            "INSERT INTO api_keys (name, key_hash, role, approver, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (name) DO NOTHING",
        )
        .bind(&k.name)
        .bind(hash_token(key.expose()))
        .bind(k.role.as_str())
        .bind(&k.approver)
        .bind(ms(now))
        .bind(k.expires_at.map(ms))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        if inserted.rows_affected() == 0 {
            return Err(StoreError::Invalid(format!(
                "a key named `{}` exists (names stay taken after revocation); choose another name",
                k.name
            )));
        }
        Ok(key)
    }

    /// Revokes a key; `None` when there is no such key, else whether it was active before.
    pub async fn revoke_api_key(&self, name: &str, now: DateTime<Utc>) -> Result<Option<bool>> {
        let mut tx = self.write().await?;
        let done = sqlx::query(
            "UPDATE api_keys SET revoked_at = $1 WHERE name = $2 AND revoked_at IS NULL",
        )
        .bind(ms(now))
        .bind(name)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        if done.rows_affected() == 1 {
            return Ok(Some(true));
        }
        Ok(self.api_key_named(name).await?.map(|_| false))
    }

    /// Claims `req`'s idempotency key, or finds what became of its first use.
    pub async fn claim_idempotency(
        &self,
        req: &IdempotentRequest<'_>,
        now: DateTime<Utc>,
    ) -> Result<Claim> {
        let mut tx = self.write().await?;
        let found = sqlx::query(
            "SELECT method, path, request_sha256, status, body FROM api_idempotency \
             WHERE key_name = $1 AND idempotency_key = $2",
        )
        .bind(req.key_name)
        .bind(req.idempotency_key)
        .fetch_optional(&mut *tx)
        .await?;
        let claim = match found {
            Some(r) => {
                let same = r.get::<String, _>("method") == req.method
                    && r.get::<String, _>("path") == req.path
                    && r.get::<String, _>("request_sha256") == req.body_sha256;
                match (same, r.get::<Option<i64>, _>("status")) {
                    (false, _) => Claim::Mismatch,
                    (true, None) => Claim::InProgress,
                    (true, Some(status)) => Claim::Done {
                        status: u16::try_from(status).unwrap_or(500),
                        body: r.get::<Option<String>, _>("body").unwrap_or_default(),
                    },
                }
            }
            None => {
                sqlx::query(
                    "INSERT INTO api_idempotency (key_name, idempotency_key, method, path, \
                     request_sha256, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(req.key_name)
                .bind(req.idempotency_key)
                .bind(req.method)
                .bind(req.path)
                .bind(req.body_sha256)
                .bind(ms(now))
                .execute(&mut *tx)
                .await?;
                Claim::Fresh
            }
        };
        tx.commit().await?;
        Ok(claim)
    }

    /// Keeps the first answer of a claimed request.
    pub async fn complete_idempotency(
        &self,
        key_name: &str,
        idempotency_key: &str,
        status: u16,
        body: &str,
    ) -> Result<()> {
        let mut tx = self.write().await?;
        sqlx::query(
            "UPDATE api_idempotency SET status = $1, body = $2 \
             WHERE key_name = $3 AND idempotency_key = $4",
        )
        .bind(i64::from(status))
        .bind(body)
        .bind(key_name)
        .bind(idempotency_key)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Drops a claim whose request failed before it had an answer (a retry may run again).
    pub async fn release_idempotency(&self, key_name: &str, idempotency_key: &str) -> Result<()> {
        let mut tx = self.write().await?;
        sqlx::query(
            "DELETE FROM api_idempotency WHERE key_name = $1 AND idempotency_key = $2 \
             AND status IS NULL",
        )
        .bind(key_name)
        .bind(idempotency_key)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }
}

impl Reads {
    /// The key whose SHA-256 matches the presented text (any state); `None` for a malformed
    /// or unknown one.
    pub async fn api_key_by_secret(&self, presented: &str) -> Result<Option<ApiKey>> {
        if !key_well_formed(presented) {
            return Ok(None);
        }
        let row = sqlx::query(&format!(
            "SELECT {KEY_COLUMNS} FROM api_keys WHERE key_hash = $1"
        ))
        .bind(hash_token(presented))
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(key_row).transpose()
    }

    /// A key by name.
    pub async fn api_key_named(&self, name: &str) -> Result<Option<ApiKey>> {
        let row = sqlx::query(&format!(
            "SELECT {KEY_COLUMNS} FROM api_keys WHERE name = $1"
        ))
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(key_row).transpose()
    }

    /// Every key, by name.
    pub async fn api_keys(&self) -> Result<Vec<ApiKey>> {
        let rows = sqlx::query(&format!("SELECT {KEY_COLUMNS} FROM api_keys ORDER BY name"))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(key_row).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 1, 9, 0, 0).unwrap()
    }

    async fn store(dir: &tempfile::TempDir) -> Store {
        let url = tollgate_testkit::state::url(dir.path());
        Store::open(&url).await.unwrap()
    }

    #[tokio::test]
    async fn a_key_is_found_by_what_was_presented_and_only_its_hash_is_stored() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(&dir).await;
        let new = NewKey {
            name: "ops-1".into(),
            role: Role::Operator,
            approver: None,
            expires_at: Some(now() + chrono::Duration::days(90)),
        };
        let key = s.create_api_key(&new, now()).await.unwrap();
        assert!(key_well_formed(key.expose()), "{}", key.expose().len());
        let found = s.api_key_by_secret(key.expose()).await.unwrap().unwrap();
        assert_eq!((found.name.as_str(), found.role), ("ops-1", Role::Operator));
        assert_eq!(found.state(now()), KeyState::Active);
        let later = now() + chrono::Duration::days(91);
        assert!(matches!(found.state(later), KeyState::Expired(_)));
        let stored: Vec<String> = sqlx::query_scalar("SELECT key_hash FROM api_keys")
            .fetch_all(s.pool())
            .await
            .unwrap();
        assert_eq!(stored, vec![hash_token(key.expose())]);
        let wrong = format!("{KEY_PREFIX}{}", "A".repeat(43));
        assert_eq!(s.api_key_by_secret(&wrong).await.unwrap(), None);
        // A second key of the same name is refused; revocation is seen.
        assert!(s.create_api_key(&new, now()).await.is_err());
        assert_eq!(s.revoke_api_key("ops-1", now()).await.unwrap(), Some(true));
        assert_eq!(s.revoke_api_key("ops-1", now()).await.unwrap(), Some(false));
        assert_eq!(s.revoke_api_key("nobody", now()).await.unwrap(), None);
        let found = s.api_key_by_secret(key.expose()).await.unwrap().unwrap();
        assert_eq!(found.state(now()), KeyState::Revoked(now()));
    }

    #[tokio::test]
    async fn an_approver_key_names_its_approver_and_no_other_does() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(&dir).await;
        let key = |role, approver: Option<&str>| NewKey {
            name: format!("k-{role}-{}", approver.is_some()),
            role,
            approver: approver.map(str::to_owned),
            expires_at: None,
        };
        assert!(
            s.create_api_key(&key(Role::Approver, None), now())
                .await
                .is_err()
        );
        assert!(
            s.create_api_key(&key(Role::Admin, Some("alice")), now())
                .await
                .is_err()
        );
        assert!(
            s.create_api_key(&key(Role::Approver, Some("alice")), now())
                .await
                .is_ok()
        );
        assert!(
            s.create_api_key(&key(Role::Viewer, None), now())
                .await
                .is_ok()
        );
        assert_eq!(s.api_keys().await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn an_idempotency_key_runs_once_and_replays_its_first_answer() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(&dir).await;
        let new = NewKey {
            name: "ops".into(),
            role: Role::Operator,
            approver: None,
            expires_at: None,
        };
        s.create_api_key(&new, now()).await.unwrap();
        let body = "0".repeat(64);
        let req = IdempotentRequest {
            key_name: "ops",
            idempotency_key: "k1",
            method: "POST",
            path: "/api/v1/pipelines/backend/pause",
            body_sha256: &body,
        };
        assert_eq!(
            s.claim_idempotency(&req, now()).await.unwrap(),
            Claim::Fresh
        );
        assert_eq!(
            s.claim_idempotency(&req, now()).await.unwrap(),
            Claim::InProgress
        );
        s.complete_idempotency("ops", "k1", 200, "{\"a\":1}")
            .await
            .unwrap();
        let done = Claim::Done {
            status: 200,
            body: "{\"a\":1}".into(),
        };
        assert_eq!(s.claim_idempotency(&req, now()).await.unwrap(), done);
        let other = IdempotentRequest {
            path: "/api/v1/pipelines/backend/resume",
            ..req.clone()
        };
        assert_eq!(
            s.claim_idempotency(&other, now()).await.unwrap(),
            Claim::Mismatch
        );
    }
}

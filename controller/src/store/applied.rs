//! The configuration applied from the configuration repository: its commit and the files it
//! read there. Written when a self-update is applied; read at start, on SIGHUP, by
//! `tollgate status` and `/readyz`.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::{Reads, Result, Store, StoreError, from_ms, ms};
use crate::config::ConfigCommit;
use crate::domain::CommitSha;

/// A configuration applied from a commit of the configuration repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedConfig {
    /// `owner/name` of the configuration repository.
    pub repository: String,
    pub sha: CommitSha,
    /// The configuration file's path in the repository.
    pub path: String,
    /// Every file the configuration read at `sha`, by repository path.
    pub files: BTreeMap<String, String>,
    pub applied_at: DateTime<Utc>,
}

impl AppliedConfig {
    /// The commit it was applied from.
    pub fn commit(&self) -> ConfigCommit {
        ConfigCommit {
            repository: self.repository.clone(),
            sha: self.sha.clone(),
        }
    }
}

impl Store {
    /// Records `applied` as the configuration in force (replacing the one before).
    pub async fn record_applied_config(&self, applied: &AppliedConfig) -> Result<()> {
        let files = serde_json::to_string(&applied.files).map_err(|e| StoreError::Corrupt {
            table: "applied_config",
            detail: format!("files: {e}"),
        })?;
        let mut tx = self.write().await?;
        sqlx::query(
            "INSERT INTO applied_config (id, repository, sha, path, files, applied_at) \
             VALUES (1, $1, $2, $3, $4, $5) \
             ON CONFLICT (id) DO UPDATE SET repository = excluded.repository, sha = excluded.sha, \
             path = excluded.path, files = excluded.files, applied_at = excluded.applied_at",
        )
        .bind(&applied.repository)
        .bind(&applied.sha)
        .bind(&applied.path)
        .bind(files)
        .bind(ms(applied.applied_at))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }
}

impl Reads {
    /// The repository and commit of the configuration applied from the configuration
    /// repository, if one ever was: what every controller looks at each lease claim, without
    /// its files.
    pub async fn applied_config_version(&self) -> Result<Option<ConfigCommit>> {
        let row = sqlx::query("SELECT repository, sha FROM applied_config WHERE id = 1")
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| ConfigCommit {
            repository: r.get("repository"),
            sha: r.get("sha"),
        }))
    }

    /// The configuration applied from the configuration repository, if one ever was.
    pub async fn applied_config(&self) -> Result<Option<AppliedConfig>> {
        let row = sqlx::query(
            "SELECT repository, sha, path, files, applied_at FROM applied_config WHERE id = 1",
        )
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let files: String = row.get("files");
        let files = serde_json::from_str(&files).map_err(|e| StoreError::Corrupt {
            table: "applied_config",
            detail: format!("files: {e}"),
        })?;
        Ok(Some(AppliedConfig {
            repository: row.get("repository"),
            sha: row.get("sha"),
            path: row.get("path"),
            files,
            applied_at: from_ms(row.get("applied_at")),
        }))
    }
}

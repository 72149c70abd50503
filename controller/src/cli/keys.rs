//! `tollgate keys create|list|revoke`: the API keys of `/api/v1`, managed on the controller's
//! host, directly in the state database (the way to bootstrap the first admin key).
//!
//! `create` prints the key once, on stdout, and nothing else there; the store keeps only its
//! SHA-256. Exit codes: 0 done, 1 refused (a bad name, role or approver, a name in use, an
//! unknown key), 2 the configuration or the state database cannot be read.
//!
//! Must never: print a key anywhere but `create`'s stdout, or write it to the store or a log.

use std::io::Write;
use std::path::Path;

use chrono::{DateTime, Utc};

use crate::config::{self, Config};
use crate::store::keys::{NewKey, Role, check_key_name};
use crate::store::{Store, StoreError};

/// What `keys create` was asked for.
#[derive(Debug, Clone)]
pub struct Create {
    pub name: String,
    pub role: String,
    pub approver: Option<String>,
    /// `90d`, `12h`: how long the key works; none for a key that does not expire.
    pub expires: Option<String>,
}

/// `keys create`: checks the request against the configuration, stores the key's hash and
/// prints the key.
pub async fn create(
    config_path: &Path,
    state: &str,
    c: &Create,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> i32 {
    let config = match config::load(config_path) {
        Ok(l) => l.config,
        Err(e) => {
            let _ = writeln!(err, "{e}");
            return 2;
        }
    };
    let now = Utc::now();
    let new = match check(&config, c, now) {
        Ok(n) => n,
        Err(why) => {
            let _ = writeln!(err, "error: {why}");
            return 1;
        }
    };
    let Some(store) = open(state, err).await else {
        return 2;
    };
    match store.create_api_key(&new, now).await {
        Ok(key) => {
            let _ = writeln!(out, "{}", key.expose());
            let until = new
                .expires_at
                .map(|t| format!("until {}", t.format("%Y-%m-%d %H:%M UTC")))
                .unwrap_or_else(|| "without expiry".into());
            let _ = writeln!(
                err,
                "key `{}` ({}) created, valid {until}; it is shown once, keep it now",
                new.name, new.role
            );
            0
        }
        Err(StoreError::Invalid(why)) => {
            let _ = writeln!(err, "error: {why}");
            1
        }
        Err(e) => {
            let _ = writeln!(err, "error: {e}");
            2
        }
    }
}

/// The key to create, or why not.
pub fn check(config: &Config, c: &Create, now: DateTime<Utc>) -> Result<NewKey, String> {
    check_key_name(&c.name)?;
    let role = Role::parse(&c.role).ok_or_else(|| {
        format!(
            "`{}` is not a role: viewer, operator, approver or admin",
            c.role
        )
    })?;
    let approver = match (role, c.approver.as_deref().map(str::trim)) {
        (Role::Approver, Some(name)) if !name.is_empty() => Some(listed_approver(config, name)?),
        (Role::Approver, _) => {
            return Err("an approver key decides as one approver: add --approver NAME".into());
        }
        (_, Some(_)) => return Err("--approver is for approver keys only".into()),
        (_, None) => None,
    };
    let expires_at = match c.expires.as_deref() {
        None => None,
        Some(text) => {
            let d = config::values::duration(text).map_err(|e| format!("--expires: {e}"))?;
            let d = chrono::Duration::from_std(d)
                .ok()
                .filter(|d| *d > chrono::Duration::zero())
                .ok_or_else(|| format!("--expires: `{text}` must be longer than zero"))?;
            Some(now + d)
        }
    };
    Ok(NewKey {
        name: c.name.clone(),
        role,
        approver,
        expires_at,
    })
}

/// The approver's configured name: one listed under some stage's approval (by name, GitHub
/// login or email); any printable name when no stage lists approvers.
fn listed_approver(config: &Config, name: &str) -> Result<String, String> {
    let listed: Vec<&config::Approver> = config
        .pipelines
        .iter()
        .flat_map(|p| &p.stages)
        .filter_map(|s| s.approval.as_ref())
        .flat_map(|a| &a.approvers)
        .collect();
    if listed.is_empty() {
        return crate::gates::approval::clean_name(name).map_err(|r| r.to_string());
    }
    let same = |a: &str| a.eq_ignore_ascii_case(name);
    listed
        .iter()
        .find(|a| a.name == name || a.github.as_deref().is_some_and(same) || same(&a.email))
        .map(|a| a.name.clone())
        .ok_or_else(|| {
            let mut names: Vec<&str> = listed.iter().map(|a| a.name.as_str()).collect();
            names.sort_unstable();
            names.dedup();
            format!(
                "`{name}` is not an approver of any stage (approvers: {})",
                names.join(", ")
            )
        })
}

/// `keys list`: every key, without the key itself.
pub async fn list(state: &str, json: bool, out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    let Some(store) = open(state, err).await else {
        return 2;
    };
    let keys = match store.api_keys().await {
        Ok(k) => k,
        Err(e) => {
            let _ = writeln!(err, "error: {e}");
            return 2;
        }
    };
    if json {
        let _ = writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&keys).unwrap_or_default()
        );
        return 0;
    }
    let now = Utc::now();
    let day = |t: DateTime<Utc>| t.format("%Y-%m-%d %H:%M").to_string();
    let _ = writeln!(
        out,
        "{:<24} {:<9} {:<16} {:<17} STATE",
        "NAME", "ROLE", "APPROVER", "CREATED"
    );
    for k in keys {
        let state = match k.state(now) {
            crate::store::keys::KeyState::Active => match k.expires_at {
                Some(t) => format!("active until {}", day(t)),
                None => "active".into(),
            },
            crate::store::keys::KeyState::Revoked(t) => format!("revoked {}", day(t)),
            crate::store::keys::KeyState::Expired(t) => format!("expired {}", day(t)),
        };
        let _ = writeln!(
            out,
            "{:<24} {:<9} {:<16} {:<17} {state}",
            k.name,
            k.role,
            k.approver.as_deref().unwrap_or("-"),
            day(k.created_at)
        );
    }
    0
}

/// `keys revoke NAME`: the key stops working at once (a running server checks every request).
pub async fn revoke(state: &str, name: &str, out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    let Some(store) = open(state, err).await else {
        return 2;
    };
    match store.revoke_api_key(name, Utc::now()).await {
        Ok(Some(true)) => {
            let _ = writeln!(out, "key `{name}` revoked");
            0
        }
        Ok(Some(false)) => {
            let _ = writeln!(out, "key `{name}` was already revoked; nothing changed");
            0
        }
        Ok(None) => {
            let _ = writeln!(err, "error: no key named `{name}`");
            1
        }
        Err(e) => {
            let _ = writeln!(err, "error: {e}");
            2
        }
    }
}

async fn open(state: &str, err: &mut dyn Write) -> Option<Store> {
    match Store::open(state).await {
        Ok(s) => Some(s),
        Err(e) => {
            let _ = writeln!(err, "error: state database: {e}");
            None
        }
    }
}

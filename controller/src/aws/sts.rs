//! Credentials per account: STS `AssumeRole` with ExternalId, cached until near expiry.
//!
//! Owns turning an [`Account`] into an [`SdkConfig`] for one region: the controller's own
//! account uses the base config as is; every other account gets the credentials of its
//! `role_arn`, assumed with the account's ExternalId and session duration.
//!
//! Must never log, store or put in an error the ExternalId or any credential.
//!
//! # Guarantees
//! - One session per (account id, role): concurrent callers share one `AssumeRole`; the
//!   session is reused until [`REFRESH_BEFORE`] its expiry.
//! - A config handed out never runs on an expired session: its credentials provider asks the
//!   cache on every call, so a client built before a long wait keeps working after its first
//!   session expired.
//! - Derived configs keep everything else of the base config (endpoint, HTTP client), and
//!   have the SDK's own retries off: every call retries through [`Limiter`] instead.
//! - Every derived config carries the limiter's [`super::retry::CallTimeouts`] (connect, read,
//!   attempt, operation), so no AWS call made through one can wait for ever.
//!
//! # Caveats
//! - A cached session keeps the session name of the call that created or renewed it, so
//!   CloudTrail names the first release and stage that used it, or the client that renewed
//!   it (often a long-lived one).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use aws_config::identity::IdentityCache;
use aws_config::retry::RetryConfig;
use aws_config::{Region, SdkConfig};
use aws_credential_types::provider::error::CredentialsError;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider, future};

use super::errors::{context, sdk, without_secret};
use super::observe::CallMetrics;
use super::retry::Limiter;
use crate::config::{Account, SecretRef};
use crate::engine::ports::{PortError, PortResult};
use crate::secret::Secret;

/// A session is renewed this long before it expires.
pub const REFRESH_BEFORE: Duration = Duration::from_secs(5 * 60);
/// The longest session of a role assumed with a role's credentials ("role chaining"), in
/// seconds (IAM user guide, "Methods to assume a role").
const CHAINED_MAX: i32 = 3600;
/// The limiter key for calls made with the controller's own credentials.
const CONTROLLER: &str = "controller";

/// Hands out SDK configs per account; share one per controller (`Arc<Credentials>`).
pub struct Credentials {
    inner: Arc<Inner>,
}

/// What the configs handed out share: each assumes its account's role again through it.
struct Inner {
    base: SdkConfig,
    cache: Mutex<HashMap<(String, String), SessionSlot>>,
    limiter: Arc<Limiter>,
    refresh_before: Duration,
}

/// One cached session per (account id, role); the inner lock serialises refreshes.
type SessionSlot = Arc<tokio::sync::Mutex<Option<Session>>>;

#[derive(Clone)]
struct Session {
    credentials: aws_credential_types::Credentials,
    expires: SystemTime,
    /// AWS refused a session over an hour for this role (role chaining): renewals ask for
    /// one hour at once.
    chained: bool,
    /// When it was assumed: a call refused as denied after that (see [`Limiter::denied_at`])
    /// retires it.
    obtained: tokio::time::Instant,
}

impl Session {
    fn fresh(&self, refresh_before: Duration) -> bool {
        SystemTime::now() + refresh_before < self.expires
    }
}

impl Credentials {
    /// `base`: the controller's own config (its credentials, and the endpoint in tests).
    pub fn new(base: SdkConfig, limiter: Arc<Limiter>) -> Credentials {
        Credentials::with_refresh_before(base, limiter, REFRESH_BEFORE)
    }

    /// Renews sessions `before` their expiry instead of [`REFRESH_BEFORE`] (tests, which
    /// cannot wait for a session's 15 minutes to run out).
    pub fn with_refresh_before(base: SdkConfig, limiter: Arc<Limiter>, before: Duration) -> Self {
        Credentials {
            inner: Arc::new(Inner {
                base,
                cache: Mutex::new(HashMap::new()),
                limiter,
                refresh_before: before,
            }),
        }
    }

    pub fn limiter(&self) -> &Arc<Limiter> {
        &self.inner.limiter
    }

    /// A config for `account` in `region`. Its credentials stay valid however long it is
    /// used: its provider is asked on every call and answers with the account's cached
    /// session, renewed [`REFRESH_BEFORE`] its expiry (so a stack update waited on for an
    /// hour never meets an expired token). An account whose role cannot be assumed is an
    /// error here, before any call.
    pub async fn config_for(
        &self,
        account: &Account,
        region: &str,
        session_name: &str,
    ) -> PortResult<SdkConfig> {
        let Some(provider) = self.role_session(account, session_name)? else {
            return Ok(self.inner.derive(region, None));
        };
        provider.current().await?;
        let provider = SharedCredentialsProvider::new(provider);
        Ok(self.inner.derive(region, Some(provider)))
    }

    /// The provider of `account`'s cached role session; `None` for the controller's own
    /// account, which assumes nothing.
    fn role_session(
        &self,
        account: &Account,
        session_name: &str,
    ) -> PortResult<Option<RoleSession>> {
        if account.controller {
            return Ok(None);
        }
        let role = account.role_arn.as_deref().ok_or_else(|| {
            PortError::Invalid(format!(
                "account {} ({}) has no role_arn and is not the controller's account",
                account.name, account.id
            ))
        })?;
        Ok(Some(RoleSession {
            inner: self.inner.clone(),
            slot: self.inner.slot(&account.id, role),
            account: account.clone(),
            role: role.to_string(),
            name: session_name.to_string(),
        }))
    }

    /// The account's session for a process that is handed its keys and cannot renew them (a
    /// `command` test with `stage_credentials`): the cached one when it lasts at least
    /// `lasting` more, else a new one. When even a new one ends sooner (the account's
    /// `session_duration`, or one hour for a controller that runs as a role, is shorter), it
    /// is returned with a warning: the process's calls after its end are refused. The
    /// controller's own account has no session: `None`, use its own credentials.
    pub async fn session_lasting(
        &self,
        account: &Account,
        session_name: &str,
        lasting: Duration,
    ) -> PortResult<Option<aws_credential_types::Credentials>> {
        let Some(provider) = self.role_session(account, session_name)? else {
            return Ok(None);
        };
        let role = provider.role.as_str();
        let wanted = lasting.max(self.inner.refresh_before);
        let (credentials, expires) = provider.lasting(wanted).await?;
        if expires < SystemTime::now() + lasting {
            let left = expires
                .duration_since(SystemTime::now())
                .unwrap_or_default()
                .as_secs();
            tracing::warn!(account = %account.name, %role, session_left_secs = left, needed_secs = lasting.as_secs(), "the role's session ends before the process handed it may: its AWS calls after that are refused (raise the account's session_duration, or shorten the test's timeout)");
        }
        Ok(Some(credentials))
    }
}

impl Inner {
    fn derive(&self, region: &str, provider: Option<SharedCredentialsProvider>) -> SdkConfig {
        let mut builder = self.base.to_builder();
        builder.set_region(Some(Region::new(region.to_string())));
        builder.set_retry_config(Some(RetryConfig::disabled()));
        builder.set_timeout_config(Some(self.limiter.settings().timeouts.sdk()));
        if let Some(p) = provider {
            builder.set_credentials_provider(Some(p));
            // The provider caches sessions itself and renews them REFRESH_BEFORE they expire;
            // the SDK's own cache would keep a partition per provider for ever and give a
            // renewal only 5 s.
            builder.set_identity_cache(Some(IdentityCache::no_cache()));
        }
        builder.build()
    }

    fn slot(&self, account_id: &str, role: &str) -> SessionSlot {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let key = (account_id.to_string(), role.to_string());
        cache.entry(key).or_default().clone()
    }

    /// `AssumeRole` for the account's `session_duration`. When AWS refuses a duration over an
    /// hour because the controller's own credentials are a role's ("The requested
    /// DurationSeconds exceeds the 1 hour session limit for roles assumed by role chaining"),
    /// the role is assumed again for one hour, with a warning: sessions are renewed anyway.
    ///
    /// `chained`: AWS refused the previous session of this account and role more than an hour,
    /// so a renewal asks for one hour at once. Otherwise each session asks for the account's
    /// `session_duration` as configured now (a reload may have changed it).
    async fn assume(
        &self,
        account: &Account,
        role: &str,
        name: &str,
        chained: bool,
    ) -> PortResult<Session> {
        let wanted = account.session_duration.as_secs().clamp(900, 43_200) as i32;
        let seconds = if chained {
            wanted.min(CHAINED_MAX)
        } else {
            wanted
        };
        let cut = |s: Session| Session {
            chained: wanted > CHAINED_MAX,
            ..s
        };
        match self.assume_for(account, role, name, seconds).await {
            Err(PortError::Invalid(m)) if seconds > CHAINED_MAX && m.contains("role chaining") => {
                tracing::warn!(account = %account.name, %role, session_duration = seconds, error = %m, "AWS refused a session over an hour (the controller runs as a role: role chaining); assuming it for one hour");
                self.assume_for(account, role, name, CHAINED_MAX)
                    .await
                    .map(cut)
            }
            Ok(session) if chained => Ok(cut(session)),
            other => other,
        }
    }

    async fn assume_for(
        &self,
        account: &Account,
        role: &str,
        name: &str,
        seconds: i32,
    ) -> PortResult<Session> {
        let external_id = external_id(account.external_id.as_ref())?;
        let conf = aws_sdk_sts::config::Builder::from(&self.derive_base()).interceptor(CallMetrics);
        let client = aws_sdk_sts::Client::from_conf(conf.build());
        let name = session_name(name);
        let out = self
            .limiter
            .call(CONTROLLER, "AssumeRole", || {
                let request = client.assume_role().role_arn(role).role_session_name(&name);
                let request =
                    request.set_external_id(external_id.as_ref().map(|s| s.expose().to_string()));
                sdk(request.duration_seconds(seconds).send())
            })
            .await
            .map_err(|e| match &external_id {
                Some(id) => without_secret(e, id.expose()),
                None => e,
            })?;
        let c = out
            .credentials()
            .ok_or_else(|| PortError::Failed("AssumeRole returned no credentials".into()))?;
        let fallback = SystemTime::now() + Duration::from_secs(seconds as u64);
        let expires = SystemTime::try_from(*c.expiration()).unwrap_or(fallback);
        let credentials = aws_credential_types::Credentials::new(
            c.access_key_id(),
            c.secret_access_key(),
            Some(c.session_token().to_string()),
            Some(expires),
            "tollgate-assume-role",
        );
        Ok(Session {
            credentials,
            expires,
            chained: false,
            obtained: tokio::time::Instant::now(),
        })
    }

    /// The base config with SDK retries off, the timeouts on (and a region, in case the base
    /// has none).
    fn derive_base(&self) -> SdkConfig {
        let region = self
            .base
            .region()
            .map_or("us-east-1".to_string(), |r| r.to_string());
        self.derive(&region, None)
    }
}

/// The credentials provider of a config for an assumed role: the account's cached session,
/// or a new one when there is none or it is about to expire.
struct RoleSession {
    inner: Arc<Inner>,
    /// The account and role's slot in the cache, looked up once (the provider is asked on
    /// every call).
    slot: SessionSlot,
    account: Account,
    role: String,
    name: String,
}

impl std::fmt::Debug for RoleSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoleSession")
            .field("account", &self.account.id)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

impl RoleSession {
    async fn current(&self) -> PortResult<aws_credential_types::Credentials> {
        let (credentials, _) = self.lasting(self.inner.refresh_before).await?;
        Ok(credentials)
    }

    /// The cached session when it lasts more than `wanted`, else a new one (cached in its
    /// place); with its expiry.
    async fn lasting(
        &self,
        wanted: Duration,
    ) -> PortResult<(aws_credential_types::Credentials, SystemTime)> {
        let (account, role) = (&self.account, self.role.as_str());
        let mut cached = self.slot.lock().await;
        // A call with it was denied since it was assumed: it may have been revoked (IAM's
        // "Revoke active sessions" denies only sessions issued before it), and a new one is
        // not. A role that really lacks a permission costs one AssumeRole per denied call.
        let denied = self.inner.limiter.denied_at(&account.id);
        let usable = |s: &&Session| s.fresh(wanted) && denied.is_none_or(|at| at < s.obtained);
        if let Some(s) = cached.as_ref().filter(usable) {
            return Ok((s.credentials.clone(), s.expires));
        }
        let what = format!(
            "cannot assume {role} for account {} ({})",
            account.name, account.id
        );
        let chained = cached.as_ref().is_some_and(|s| s.chained);
        let session = self
            .inner
            .assume(account, role, &self.name, chained)
            .await
            .map_err(|e| context(e, &what))?;
        let out = (session.credentials.clone(), session.expires);
        *cached = Some(session);
        Ok(out)
    }
}

impl ProvideCredentials for RoleSession {
    fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        future::ProvideCredentials::new(async move {
            self.current()
                .await
                .map_err(CredentialsError::provider_error)
        })
    }
}

/// Reads the ExternalId; errors name the variable or file, never the value.
fn external_id(source: Option<&SecretRef>) -> PortResult<Option<Secret>> {
    let value = match source {
        None => return Ok(None),
        Some(SecretRef::Env(var)) => std::env::var(var).map_err(|_| {
            PortError::Invalid(format!(
                "the ExternalId environment variable {var} is not set"
            ))
        })?,
        Some(SecretRef::File(path)) => std::fs::read_to_string(path).map_err(|e| {
            PortError::Invalid(format!(
                "cannot read the ExternalId file {}: {e}",
                path.display()
            ))
        })?,
    };
    let value = value.trim();
    let from = || match source {
        Some(SecretRef::Env(var)) => format!("environment variable {var}"),
        Some(SecretRef::File(path)) => format!("file {}", path.display()),
        None => String::new(),
    };
    if value.is_empty() {
        return Err(PortError::Invalid(format!(
            "the ExternalId {} is empty",
            from()
        )));
    }
    if let Some(problem) = external_id_problem(value) {
        return Err(PortError::Invalid(format!(
            "the ExternalId in {} {problem}: AssumeRole takes 2 to {EXTERNAL_ID_MAX} \
             characters, each a letter, a digit or one of _+=,.@:/-",
            from()
        )));
    }
    Ok(Some(Secret::new(value)))
}

/// The longest ExternalId AssumeRole takes.
const EXTERNAL_ID_MAX: usize = 1224;

/// Why AssumeRole would refuse `value` as an ExternalId (API_AssumeRole: length 2–1224,
/// pattern `[\w+=,.@:\/-]*`), told without the value: STS's own refusal quotes it.
fn external_id_problem(value: &str) -> Option<String> {
    let len = value.chars().count();
    if len < 2 {
        return Some("is 1 character long".to_string());
    }
    if len > EXTERNAL_ID_MAX {
        return Some(format!("is {len} characters long"));
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || "_+=,.@:/-".contains(c);
    let at = value.chars().position(|c| !allowed(c))?;
    Some(format!(
        "has a character AssumeRole refuses (character {} of {len})",
        at + 1
    ))
}

/// A valid `RoleSessionName`: `[\w+=,.@-]{2,64}`, other characters replaced by `-`.
pub fn session_name(raw: &str) -> String {
    let allowed = |c: char| c.is_ascii_alphanumeric() || "_+=,.@-".contains(c);
    let clean: String = raw
        .chars()
        .map(|c| if allowed(c) { c } else { '-' })
        .take(64)
        .collect();
    if clean.len() < 2 {
        format!("tollgate-{clean}")
    } else {
        clean
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_names_are_sanitised() {
        assert_eq!(
            session_name("tollgate-backend-r12-prod"),
            "tollgate-backend-r12-prod"
        );
        assert_eq!(session_name("a b/c:d"), "a-b-c-d");
        assert_eq!(session_name(""), "tollgate-");
        assert_eq!(session_name("x"), "tollgate-x");
        assert_eq!(session_name(&"é".repeat(100)).len(), 64);
    }

    #[test]
    fn an_external_id_is_checked_against_what_assume_role_takes() {
        assert_eq!(external_id_problem("ab"), None);
        assert_eq!(external_id_problem("Ext_id+=,.@:/-9"), None);
        assert_eq!(external_id_problem(&"a".repeat(1224)), None);
        assert_eq!(
            external_id_problem(&"a".repeat(1225)).as_deref(),
            Some("is 1225 characters long")
        );
        assert_eq!(
            external_id_problem("a").as_deref(),
            Some("is 1 character long")
        );
        assert_eq!(
            external_id_problem("abcé").as_deref(),
            Some("has a character AssumeRole refuses (character 4 of 4)")
        );
    }

    #[test]
    fn a_missing_file_names_the_file_not_a_value() {
        let err = external_id(Some(&SecretRef::File("/nonexistent/ext-id".into()))).unwrap_err();
        assert!(
            matches!(&err, PortError::Invalid(m) if m.contains("/nonexistent/ext-id")),
            "{err}"
        );
    }
}

//! The axum application: routes, shared state, health.
//!
//! Owns: [`AppState`] (what the GitHub and health handlers use), [`router`] (those routes) and
//! [`shutdown_signal`] (SIGINT/SIGTERM). `tollgate serve` merges the other areas — SNS
//! intake, approval pages, the release page — each a `Router` with its own state, and puts each
//! behind the guards of [`crate::http::edge`].
//!
//! Guarantees: `/healthz` answers while the process runs; `/readyz` answers 200 only while the
//! state database answers (within [`READY_TIMEOUT`]). Handlers only record facts and wake the
//! reconciler, so every answer is fast.
//! Must never: log request bodies or headers (they carry signatures, tokens and secrets).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use tokio::sync::mpsc;

use crate::engine::{Engine, Standing};
use crate::github::forge::GithubForge;
use crate::github::webhook::WebhookSecrets;

/// How long `/readyz` waits for the state database.
pub const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// What the handlers share. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub engine: Engine,
    /// The GitHub webhook secrets accepted now (several during a rotation).
    pub secrets: Arc<WebhookSecrets>,
    /// Where a changed controller configuration (its commit sha) is announced; see
    /// [`crate::github::intake::spawn_config_reloader`].
    pub config_changes: Option<mpsc::Sender<String>>,
    /// GitHub access, when configured: decides the order of builds the pushes cannot.
    pub forge: Option<Arc<GithubForge>>,
}

impl AppState {
    pub fn new(engine: Engine, secrets: WebhookSecrets) -> AppState {
        AppState {
            engine,
            secrets: Arc::new(secrets),
            config_changes: None,
            forge: None,
        }
    }

    /// Announces configuration changes from GitHub pushes on `sender`.
    pub fn with_config_changes(mut self, sender: mpsc::Sender<String>) -> AppState {
        self.config_changes = Some(sender);
        self
    }

    /// Asks GitHub (compare API) for the order of builds when the pushes cannot tell.
    pub fn with_forge(mut self, forge: Arc<GithubForge>) -> AppState {
        self.forge = Some(forge);
        self
    }

    /// Passes a changed configuration's sha to the reloader without waiting.
    pub fn announce_config_change(&self, sha: &str) {
        let Some(tx) = &self.config_changes else {
            tracing::warn!(%sha, "the configuration changed, but no reloader is running");
            return;
        };
        if let Err(e) = tx.try_send(sha.to_owned()) {
            tracing::warn!(%sha, error = %e, "configuration change not queued; it applies at the next change or restart");
        }
    }
}

/// The whole HTTP surface.
pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(health_routes())
        .merge(crate::http::github::routes())
        .with_state(state)
}

/// `/healthz` and `/readyz`.
pub fn health_routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
}

async fn healthz() -> &'static str {
    "ok"
}

/// `ready`, and where the configuration in force comes from: `configuration OWNER/NAME@SHA`
/// when applied from the configuration repository, else `configuration file PATH`.
async fn readyz(State(state): State<AppState>) -> (StatusCode, String) {
    let reads = state.engine.reads();
    let ping = tokio::time::timeout(READY_TIMEOUT, reads.ping()).await;
    if !matches!(ping, Ok(true)) {
        let down = "state database unreachable".to_owned();
        return (StatusCode::SERVICE_UNAVAILABLE, down);
    }
    // What this controller runs: a standby waiting for the leader to act with a newer commit,
    // or a leader keeping its configuration over one, does not run the commit recorded.
    let config = state.engine.config();
    let source = match &config.applied_from {
        Some(c) => format!("configuration {}@{}", c.repository, c.sha),
        None => format!("configuration file {}", config.source_file.display()),
    };
    let leadership = state.engine.leadership();
    let lead = match leadership.standing() {
        Standing::Sole => String::new(),
        Standing::Leading { epoch, .. } if leadership.may_act() => {
            format!("leader: this controller (epoch {epoch})\n")
        }
        Standing::Leading { epoch, .. } => {
            format!(
                "follower: the lease of this controller (epoch {epoch}) ran out before its renewal\n"
            )
        }
        Standing::Taking { epoch, .. } => format!(
            "taking the lead: this controller holds the lease (epoch {epoch}) and checks its configuration against the work in flight before it acts\n"
        ),
        Standing::Following {
            leader: Some(l),
            epoch: Some(e),
        } => format!("follower: {l} leads (epoch {e})\n"),
        Standing::Following { .. } => "follower: no leader known yet\n".to_string(),
    };
    let lead = match state.engine.lead_declined() {
        Some(why) => format!(
            "{lead}declines the lead: the configuration it would act with is refused ({why})\n"
        ),
        None => lead,
    };
    (StatusCode::OK, format!("ready\n{source}\n{lead}"))
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut s) => drop(s.recv().await),
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => {}
        _ = terminate => {}
    }
    tracing::info!("shutting down: finishing requests in flight");
}

//! `tollgate serve`: the controller process — the reconcilers, the real adapters and the HTTP
//! surface, over the state database.
//!
//! Fails fast at start-up, naming what is missing (a config error, an unreachable state
//! database, no webhook secret or one shorter than 32 bytes). Secrets come only from the
//! environment or files.
//!
//! Serves through [`http::edge::serve`]: every route sits behind the guards its exposure calls
//! for ([`http::edge::Exposure`]) under `[controller.http]`'s timeouts and limits.
//!
//! AWS endpoints are the AWS SDK's own settings: `AWS_ENDPOINT_URL` for every service, or a
//! service's own (`AWS_ENDPOINT_URL_CLOUDWATCH`, `AWS_ENDPOINT_URL_CODEPIPELINE`, … or
//! `endpoint_url` in a `[services]` section of the shared config file), which wins over it.
//!
//! Must never: start with a configuration or a secret it could not read (it exits with the
//! reason instead), or log a secret.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, anyhow};
use async_trait::async_trait;
use axum::Router;

use crate::aws::cloudformation::CloudFormationDeployer;
use crate::aws::cloudwatch::CloudWatchAlarms;
use crate::aws::codepipeline::{CodePipelineDeployer, Poll};
use crate::aws::deployer::{AwsDeployer, alarms_from_config};
use crate::aws::ecr::EcrArtifacts;
use crate::aws::retry::{Limiter, PollSettings};
use crate::aws::sns::SnsNotifier;
use crate::aws::stack_waiters::StackWaiters;
use crate::aws::sts::Credentials;
use crate::config::{self, Account, Config};
use crate::engine::Leadership;
use crate::engine::{
    self, DeploymentReport, Engine, Forge, PortResult, Ports, SharedConfig, SystemClock,
};
use crate::gates::GithubTests;
use crate::gates::approval::SnsApprovalSender;
use crate::gates::runner::StageTestRunner;
use crate::github::forge::GithubForge;
use crate::github::intake;
use crate::github::webhook::WebhookSecrets;
use crate::http;
use crate::http::edge::Edge;
use crate::http::server::AppState;
use crate::http::sns::SnsState;
use crate::http::sns_verify::CertCache;
use crate::store::lock::{Holder, ServeLock};
use crate::store::{Backend, Store};
use tokio::sync::mpsc;

/// What `serve` needs to start.
#[derive(Debug, Clone)]
pub struct ServeArgs {
    pub config: PathBuf,
    pub state: String,
    pub listen: SocketAddr,
    /// Pre-seeded SNS signing certificates (a directory keyed by URL), for closed networks.
    pub sns_cert_cache: Option<PathBuf>,
    /// Where `GET /metrics` is served; off when `None`.
    pub metrics_listen: Option<SocketAddr>,
    /// The leader lease's length, on a PostgreSQL state ([`crate::engine::leader`]).
    pub lease_ttl: std::time::Duration,
}

/// Runs the controller until SIGINT/SIGTERM. Returns the process exit code.
pub async fn run(args: ServeArgs) -> i32 {
    match start(args).await {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e:#}");
            2
        }
    }
}

async fn start(args: ServeArgs) -> Result<()> {
    let loaded = config::load(&args.config).map_err(|e| anyhow!("{e}"))?;
    for w in &loaded.warnings {
        tracing::warn!("{w}");
    }
    let secrets = WebhookSecrets::from_env().context("GitHub webhook secret")?;
    // Held until serve returns: a second controller on this state is refused before it opens it.
    let mut lock = ServeLock::acquire(&args.state, Holder::this_process())?;
    // Bound before anything starts, so an address in use stops the start-up, not a running
    // controller.
    let metrics_listener = match args.metrics_listen {
        Some(at) => Some(
            tokio::net::TcpListener::bind(at)
                .await
                .with_context(|| format!("cannot listen for metrics on {at}"))?,
        ),
        None => None,
    };
    let store = Store::open(&args.state).await.context("state database")?;
    let (config, in_force) = intake::config_in_force(store.reads(), loaded.config).await;
    if let Some(note) = &in_force {
        tracing::warn!("{note}");
    }
    let shared = engine::shared_config(config.clone());
    let waiters = StackWaiters::new();
    let leadership = match store.backend() {
        Backend::Sqlite => Leadership::sole(),
        Backend::Postgres => Leadership::elected(lease_holder(), args.lease_ttl),
    };
    let pruning = store.clone();
    // The ports write too (the approval sender issues and publishes links): they get the
    // fenced store, as the reconciler does.
    let store = match leadership.fence() {
        Some(fence) => store.fenced(fence),
        None => store,
    };
    let (ports, forge) = ports(&config, &shared, &store, waiters.clone()).await?;
    let engine = Engine::elected(store, shared, ports, Arc::new(SystemClock), leadership);
    // On taking the lead it acts with the configuration in force then, checked then; and it
    // follows a configuration another controller applied.
    let source = intake::AppliedConfigWins {
        forge: forge.clone(),
    };
    engine.take_lead_with(Arc::new(source));
    if let Some(why) = engine.refuse_config(&config).await {
        let from = match &in_force {
            // The repository's, or the file's with a note on why.
            Some(note) => format!("({note})"),
            None => format!("from {}", args.config.display()),
        };
        return Err(anyhow!("the configuration {from} is refused: {why}"));
    }
    // The reconcilers and effects run on their own runtime, so the deploys a burst of
    // webhooks starts never queue ahead of the next deliveries on the HTTP runtime.
    let background =
        crate::engine::runtime::Background::start().context("the reconcilers' runtime")?;
    let mut reconcilers = engine.spawn_on(background.handle());
    let leads = engine.leadership().clone();
    reconcilers.push(crate::store::retention::spawn_pruner(
        pruning,
        config.controller.retention.clone(),
        move || leads.may_act(),
    ));
    if let Some(note) = &in_force {
        engine
            .note_config(&[&engine.config()], "controller", note)
            .await;
    }

    let mut state = AppState::new(engine.clone(), secrets);
    if let Some(forge) = &forge {
        let (tx, rx) = mpsc::channel(16);
        state = state.with_config_changes(tx).with_forge(forge.clone());
        intake::spawn_config_reloader(engine.clone(), forge.clone(), rx);
    }
    spawn_sighup_reloader(engine.clone(), forge.clone(), args.config.clone());

    let certs = CertCache::new(args.sns_cert_cache.clone())
        .map_err(|e| anyhow!("SNS certificate cache: {e}"))?;
    let sns_settings = &config.controller.sns;
    let certs = certs.with_limits(
        sns_settings.cert_failure_ttl,
        sns_settings.cert_fetches_per_minute,
    );
    let sns = SnsState::new(engine.clone(), Arc::new(certs))
        .context("SNS intake")?
        .with_waiters(waiters);
    let edge = Edge::new(&config.controller.http);
    let api = http::api::ApiState::new(engine.clone(), forge.clone(), &config.controller.http);
    let sweeper = http::api::auth::spawn_sweeper(api.limits.clone());
    let app = guarded_routes(&edge, state, sns, &engine, api);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    if let Some(lock) = &mut lock {
        lock.listening(addr)
            .with_context(|| format!("cannot write {}", lock.path().display()))?;
    }
    tracing::info!(
        listen = %addr,
        pipelines = config.pipelines.len(),
        github = forge.is_some(),
        "tollgate is serving"
    );
    println!("tollgate serving on http://{addr}");
    let metrics = match metrics_listener {
        Some(listener) => Some(serve_metrics(listener, &edge)?),
        None => None,
    };
    let served = http::edge::serve(listener, app, &edge, http::server::shutdown_signal()).await;
    sweeper.abort();
    for r in reconcilers.into_iter().chain(metrics) {
        r.abort();
    }
    // Stopped on purpose: hand the lead over at once rather than when the lease runs out.
    engine.step_down().await;
    served.context("HTTP server")
}

/// Serves `GET /metrics` on its own listener, under the same edge settings, until aborted.
fn serve_metrics(
    listener: tokio::net::TcpListener,
    edge: &Edge,
) -> Result<tokio::task::JoinHandle<()>> {
    let addr = listener.local_addr()?;
    tracing::info!(listen = %addr, "serving metrics");
    println!("tollgate metrics on http://{addr}/metrics");
    let app = edge.with_request_timeout(http::metrics::routes());
    let edge = edge.clone();
    Ok(tokio::spawn(async move {
        let forever = std::future::pending::<()>();
        if let Err(e) = http::edge::serve(listener, app, &edge, forever).await {
            tracing::error!(error = %e, "the metrics server stopped");
        }
    }))
}

/// Every route, each behind the guards its exposure calls for, under the request timeout.
fn guarded_routes(
    edge: &Edge,
    state: AppState,
    sns: SnsState,
    engine: &Engine,
    api: http::api::ApiState,
) -> Router {
    use http::edge::Exposure::{Open, RateLimited, UnauthenticatedBody};
    let github = UnauthenticatedBody {
        cap: http::github::BODY_LIMIT,
    };
    let sns_body = UnauthenticatedBody {
        cap: http::sns::BODY_LIMIT,
    };
    let health = http::server::health_routes().with_state(state.clone());
    let app = Router::new()
        .merge(edge.guard("health", Open, health))
        .merge(edge.guard(
            "/webhooks/github",
            github,
            http::github::routes().with_state(state),
        ))
        .merge(edge.guard("/webhooks/sns", sns_body, http::sns::routes(sns)))
        .merge(edge.guard(
            "/approvals",
            RateLimited,
            http::approvals::routes(engine.clone()),
        ))
        .merge(edge.guard("/ui", Open, http::ui::routes(engine.clone())))
        // The API limits rates itself: per key and per source address ([controller.api]).
        .merge(edge.guard("/api/v1", Open, http::api::routes(api)));
    edge.with_request_timeout(app)
}

/// On SIGHUP, reloads the configuration file from disk. An invalid file is refused with its
/// validation messages and the configuration in force stays.
fn spawn_sighup_reloader(engine: Engine, forge: Option<Arc<GithubForge>>, path: PathBuf) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangups = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; reload by restarting");
            return;
        }
    };
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            let before = engine.config();
            let applied = engine.reads().applied_config().await;
            let managed = applied.ok().flatten().filter(|a| {
                engine.config().controller.config_repository.as_deref() == Some(&a.repository)
            });
            let detail = if let Some(a) = managed {
                let state = match engine.config().applied_from == Some(a.commit()) {
                    true => "the configuration in force is",
                    // A standby waiting for the leader to act with it, or a leader keeping its
                    // configuration over it while runs it would move are in flight.
                    false => "not yet in force here, the configuration last applied is",
                };
                format!(
                    "SIGHUP: {state} {}@{}, applied from the configuration repository; \
                     the file {} is not read (push a commit to change the configuration)",
                    a.repository,
                    a.sha,
                    path.display()
                )
            } else {
                match reload(&engine, forge.as_deref(), &path).await {
                    Ok(warnings) => intake::with_warnings(
                        format!("configuration reloaded from {} (SIGHUP)", path.display()),
                        &warnings,
                    ),
                    Err(why) => format!("configuration from {} refused: {why}", path.display()),
                }
            };
            tracing::info!("{detail}");
            let after = engine.config();
            engine
                .note_config(&[&before, &after], "signal:SIGHUP", &detail)
                .await;
        }
    });
}

/// Puts the file at `path` in force unless it is invalid or refused; its warnings, if any.
async fn reload(
    engine: &Engine,
    forge: Option<&GithubForge>,
    path: &Path,
) -> Result<Vec<config::diag::Diagnostic>, String> {
    let loaded = config::load(path).map_err(|e| e.to_string())?;
    for w in &loaded.warnings {
        tracing::warn!("{w}");
    }
    // No effect starts between the check and the change.
    let held = engine.hold_starts().await;
    if let Some(why) = engine.refuse_config(&loaded.config).await {
        return Err(why);
    }
    if let Some(f) = forge {
        f.track_pipelines(&loaded.config);
    }
    engine.replace_config(loaded.config, &held);
    Ok(loaded.warnings)
}

fn controller_account(config: &Config) -> Result<Account> {
    config
        .accounts
        .values()
        .find(|a| a.controller)
        .cloned()
        .ok_or_else(|| anyhow!("no account in the accounts file has `controller = true`; mark the account tollgate runs in"))
}

/// The real adapters, and the GitHub forge when a token is configured.
async fn ports(
    config: &Config,
    shared: &SharedConfig,
    store: &Store,
    waiters: Arc<StackWaiters>,
) -> Result<(Ports, Option<Arc<GithubForge>>)> {
    let own = controller_account(config)?;
    let base = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(own.region.clone()))
        .load()
        .await;
    let limiter = Arc::new(Limiter::default());
    let creds = Arc::new(Credentials::new(base, limiter.clone()));
    let codepipeline = CodePipelineDeployer::new(creds.clone(), limiter.clone(), Poll::default());
    let alarms = Arc::new(CloudWatchAlarms::new(creds.clone(), limiter.clone()));
    let deployer = AwsDeployer::new(
        CloudFormationDeployer::new(creds.clone(), PollSettings::default()).with_waiters(waiters),
        codepipeline,
        alarms_from_config(shared.clone()),
        alarms.clone(),
    );
    let notifier =
        Arc::new(SnsNotifier::new(creds.clone(), limiter.clone(), own).with_config(shared.clone()));
    let forge = match GithubForge::from_env() {
        Ok(f) => Some(Arc::new(f.with_pipelines(config))),
        Err(e) => {
            tracing::warn!(reason = %e, "GitHub reporting and GitHub-backed tests are off");
            None
        }
    };
    let github_tests = forge.clone().map(|f| f as Arc<dyn GithubTests>);
    let forge_port: Arc<dyn Forge> = match &forge {
        Some(f) => f.clone(),
        None => Arc::new(NoForge),
    };
    let approvals = SnsApprovalSender::new(
        store.clone(),
        notifier.clone(),
        &config.controller.public_url,
    )
    .with_subscriptions(notifier.clone())
    .with_forge(forge_port.clone());
    let ports = Ports {
        deployer: Arc::new(deployer),
        artifacts: Arc::new(EcrArtifacts::new(creds.clone(), PollSettings::default())),
        notifier,
        alarms,
        forge: forge_port,
        tests: Arc::new(
            StageTestRunner::new(github_tests)
                .with_stage_credentials(creds.clone(), shared.clone()),
        ),
        approvals: Arc::new(approvals),
    };
    Ok((ports, forge))
}

/// GitHub reporting when no token is configured: nothing is sent.
struct NoForge;

#[async_trait]
impl Forge for NoForge {
    fn enabled(&self) -> bool {
        false
    }

    async fn report(&self, r: &DeploymentReport) -> PortResult<()> {
        tracing::debug!(release = %r.release, stage = %r.environment, state = r.state.as_str(), "GitHub reporting is off");
        Ok(())
    }
}

/// This controller's name in the leader lease: host, process id and a random suffix (a
/// restarted controller is a new holder, even with the same process id).
fn lease_holder() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .unwrap_or_else(|| "controller".to_string());
    format!(
        "{host}/{}/{:04x}",
        std::process::id(),
        rand::random::<u16>()
    )
}

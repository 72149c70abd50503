//! The engine: a level-triggered reconciler over the durable store.
//!
//! Owns: the per-pipeline reconcile loop, dispatching effects to the ports, and the ingest
//! API that the HTTP and CLI layers call ([`Ingest`]: [`Ingest::record_release`] and
//! friends; an `Engine` dereferences to its `Ingest`). Nothing outside the engine writes the
//! store: readers get its read-only face ([`Ingest::reads`]).
//!
//! Guarantees:
//! - Events only record facts (one transaction, deduplicated by delivery id) and wake the
//!   pipeline; all decisions come from [`crate::domain::plan`].
//! - One pipeline is never reconciled concurrently with itself (one task per pipeline);
//!   different pipelines run in parallel, and long effects run as their own tasks, so a
//!   deploy in Beta never delays a rollback in Prod.
//! - Before a side effect its intent is recorded under an idempotency key (a deploy's with
//!   the place it goes to); after it, its outcome. After a crash, a pending effect is
//!   performed again under the same key, which the adapters make harmless; a deploy is
//!   performed again only where it began (else it fails, naming both places).
//! - No effect holds its stage for ever: one that runs past the effect deadline
//!   ([`Engine::set_effect_deadline`], by default [`default_effect_deadline`]) is cancelled,
//!   its record left pending, and it is started again under the same key, as after a crash.
//!   The cancelled attempt records nothing, so its outcome can never be recorded twice.
//!
//! Observability: each reconcile runs in a `reconcile` span (pipeline) and each effect in an
//! `effect` span (pipeline, stage, release, effect key, kind), so every log line written on their
//! behalf, adapters included, names them; run transitions, release outcomes, deploy and rollback
//! durations and the reconcile lag feed [`crate::metrics`] from the typed changes applied.
//!
//! Caveats: an SNS email sent just before a crash may be sent again after restart (SNS has no
//! idempotency token); GitHub statuses are idempotent by nature.

pub mod clock;
mod exec;
pub mod facts;
mod ingest;
pub mod leader;
pub mod messages;
pub mod ports;
pub mod runtime;
mod takeover;

use std::collections::HashSet;
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use tracing::Instrument;

use crate::backoff::PollSettings;
use crate::config::Config;
use crate::domain::{Action, DeployedTo, Effect, EffectKind, EffectStatus, StageName, plan};
use crate::store::{Store, StoreError};
pub use clock::{Clock, ManualClock, SystemClock};
pub use facts::*;
pub use ingest::{Ingest, ReceivingGuard, RetryVerdict};
pub use leader::{Leadership, Standing};
pub use ports::*;
pub use takeover::ConfigSource;

/// The configuration in force, replaceable while running (self-update, SIGHUP).
pub type SharedConfig = Arc<RwLock<Arc<Config>>>;

/// A new shared configuration cell.
pub fn shared_config(config: Config) -> SharedConfig {
    Arc::new(RwLock::new(Arc::new(config)))
}

/// The adapters the engine works through.
#[derive(Clone)]
pub struct Ports {
    pub deployer: Arc<dyn Deployer>,
    pub artifacts: Arc<dyn Artifacts>,
    pub notifier: Arc<dyn Notifier>,
    pub alarms: Arc<dyn Alarms>,
    pub forge: Arc<dyn Forge>,
    pub tests: Arc<dyn TestRunner>,
    pub approvals: Arc<dyn ApprovalSender>,
}

/// Errors of the engine's API.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("unknown pipeline `{0}`")]
    UnknownPipeline(String),
    #[error("unknown stage `{stage}` in pipeline `{pipeline}`")]
    UnknownStage { pipeline: String, stage: String },
    #[error("the engine was stopped")]
    Stopped,
}

pub type EngineResult<T> = Result<T, EngineError>;

/// Crash injection for tests: once [`CrashPoint::step`] says no, every store write and port
/// call fails, exactly as if the process had died at that point.
pub trait CrashPoint: Send + Sync {
    /// Counts a step; false once the process is to be considered dead.
    fn step(&self) -> bool;
    /// True once a step has been refused.
    fn blown(&self) -> bool;
}

/// The reconciler and its ingest API. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    ingest: Ingest,
    ports: Ports,
    running: Mutex<HashSet<String>>,
    /// Pipelines whose reconcile loop this process has started.
    looping: Mutex<HashSet<String>>,
    fuse: Option<Arc<dyn CrashPoint>>,
    /// The watch for facts from other processes runs ([`Engine::spawn`] starts it once).
    watching: AtomicBool,
    /// The effect deadline, in milliseconds.
    effect_deadline: AtomicU64,
    /// Whether this controller may reconcile and perform effects ([`leader`]).
    leadership: Leadership,
    /// Where the loops and their effects run: the runtime given to [`Engine::spawn_on`], or
    /// the caller's.
    background: std::sync::OnceLock<tokio::runtime::Handle>,
    /// Read while an effect takes its place from the configuration and records its intent,
    /// written while a configuration change is checked and put in force
    /// ([`Engine::hold_starts`]).
    starts: tokio::sync::RwLock<()>,
    /// Where the configuration to act with is found on taking the lead ([`takeover`]).
    config_source: std::sync::OnceLock<Arc<dyn ConfigSource>>,
    /// Why this controller last declined the lead, until it leads again ([`takeover`]).
    declined: Mutex<Option<String>>,
    /// Why this controller last kept its configuration over an applied one (refused on the
    /// leader, or unusable here), until it follows one: each reason is noted once.
    kept: Mutex<Option<String>>,
    /// The configurations this process ran before the one in force, newest first (at most
    /// [`EARLIER_CONFIGS`]): on taking the lead, the one a run in flight began under may be
    /// among them ([`takeover`]).
    earlier: Mutex<Vec<Arc<Config>>>,
}

/// How many configurations replaced in this process [`Engine::replace_config`] keeps.
const EARLIER_CONFIGS: usize = 4;

/// The start of effects held back while a configuration change is checked and put in force
/// ([`Engine::hold_starts`]).
pub struct StartsHeld<'a> {
    _held: tokio::sync::RwLockWriteGuard<'a, ()>,
}

/// How often the event log is checked for facts another process wrote into the state
/// database (a follower controller on a shared PostgreSQL state records the webhooks, alarms,
/// approvals and API calls it receives): they take effect within this.
/// One query for the whole controller, reading only entries newer than the last seen, whatever
/// the number of pipelines.
pub const FACT_WATCH: Duration = Duration::from_secs(1);

/// The longest a woken reconcile waits for the webhook deliveries being received to be
/// answered ([`Ingest::receiving`]): a burst of deliveries is answered first, and its
/// reconciles start together after it, never later than this after their wake-up.
pub const YIELD_TO_INTAKE: Duration = Duration::from_millis(100);

/// The longest a pipeline's loop sleeps towards one of its own deadlines (a bake end, an
/// approval expiry, a window opening, an alarm poll) before it looks again. Deadlines are
/// wall-clock times while the loop sleeps on the monotonic clock, which stands still while the
/// machine is suspended and does not follow a step of the system clock: this bounds how late
/// such a deadline can be met. A pipeline with nothing due sleeps until it is woken.
pub const DEADLINE_RECHECK: Duration = Duration::from_secs(60);

/// How long one attempt at an effect may run by default: three times the production poll
/// timeout (3 h). A legitimate slow deploy promotes its image, then waits for its change set
/// and for its stack update, each wait bounded by the poll timeout; every AWS call in it is
/// bounded by the call timeouts ([`crate::aws::retry::CallTimeouts`]). So only something
/// stuck outside the AWS calls ever reaches this deadline.
pub fn default_effect_deadline() -> Duration {
    PollSettings::default().timeout.saturating_mul(3)
}

/// How many plan/apply rounds one reconcile may take before it stops and tries later.
const MAX_ROUNDS: usize = 64;

impl Engine {
    pub fn new(store: Store, config: Config, ports: Ports, clock: Arc<dyn Clock>) -> Engine {
        Self::build(
            store,
            shared_config(config),
            ports,
            clock,
            None,
            Leadership::sole(),
        )
    }

    /// An engine over a configuration cell the adapters share (so they see reloads too).
    pub fn with_shared_config(
        store: Store,
        config: SharedConfig,
        ports: Ports,
        clock: Arc<dyn Clock>,
    ) -> Engine {
        Self::build(store, config, ports, clock, None, Leadership::sole())
    }

    /// An engine that is one of several controllers on one state: it reconciles and performs
    /// effects only while it holds the leader lease ([`Engine::spawn`] claims it), and its
    /// reconciler's writes are fenced by the lease.
    pub fn elected(
        store: Store,
        config: SharedConfig,
        ports: Ports,
        clock: Arc<dyn Clock>,
        leadership: Leadership,
    ) -> Engine {
        let store = match leadership.fence() {
            Some(fence) => store.fenced(fence),
            None => store,
        };
        crate::metrics::global().leadership(&leadership.standing());
        Self::build(store, config, ports, clock, None, leadership)
    }

    /// An engine that "crashes" after `fuse` steps (tests only).
    pub fn with_fuse(
        store: Store,
        config: Config,
        ports: Ports,
        clock: Arc<dyn Clock>,
        fuse: Arc<dyn CrashPoint>,
    ) -> Engine {
        let sole = Leadership::sole();
        Self::build(store, shared_config(config), ports, clock, Some(fuse), sole)
    }

    fn build(
        store: Store,
        config: SharedConfig,
        ports: Ports,
        clock: Arc<dyn Clock>,
        fuse: Option<Arc<dyn CrashPoint>>,
        leadership: Leadership,
    ) -> Engine {
        let ingest = Ingest::with_wakers(store, config, clock, Arc::default());
        Engine {
            inner: Arc::new(Inner {
                ingest,
                ports,
                running: Mutex::new(HashSet::new()),
                looping: Mutex::new(HashSet::new()),
                fuse,
                watching: AtomicBool::new(false),
                effect_deadline: AtomicU64::new(millis(default_effect_deadline())),
                leadership,
                background: std::sync::OnceLock::new(),
                starts: tokio::sync::RwLock::new(()),
                config_source: std::sync::OnceLock::new(),
                declined: Mutex::new(None),
                kept: Mutex::new(None),
                earlier: Mutex::new(Vec::new()),
            }),
        }
    }

    /// Sets how long one attempt at an effect may run before it is cancelled and performed
    /// again under the same key (for every effect started from now on).
    pub fn set_effect_deadline(&self, deadline: Duration) {
        let ms = millis(deadline).max(1);
        self.inner.effect_deadline.store(ms, Ordering::Relaxed);
    }

    fn effect_deadline(&self) -> Duration {
        Duration::from_millis(self.inner.effect_deadline.load(Ordering::Relaxed))
    }

    fn store(&self) -> &Store {
        self.inner.ingest.store()
    }

    /// Why `config` must not replace the one in force, if it must not: it drops a pipeline or
    /// stage that a run is deploying, verifying, baking or rolling back in, or puts a wave
    /// that run has deployed, or began deploying, somewhere else (another account or account
    /// id, region, stack or pipeline: a wave moved, replaced, dropped or inserted before it).
    /// The run would stay unplanned (a rollback never finished, its release never marked bad,
    /// and a later stage then following the one before it), or finish without reaching a
    /// target, or roll back where it never deployed; so the change waits until the run is
    /// done. A store that cannot be read refuses too.
    ///
    /// Where a deploy began is its intent's recorded place, not the configuration in force:
    /// at start-up the configuration in force is the new one, and a deploy interrupted by a
    /// crash began under the old. Only a deploy begun before places were recorded counts
    /// where the configuration in force puts it.
    pub async fn refuse_config(&self, config: &Config) -> Option<String> {
        let reads = self.store().reads();
        let unreadable = |e: StoreError| Some(format!("cannot read the runs in flight: {e}"));
        let runs = match reads.changing_runs().await {
            Ok(runs) => runs,
            Err(e) => return unreadable(e),
        };
        let dropped = dropped_changing(config, &runs);
        if !dropped.is_empty() {
            let which = if dropped.len() == 1 {
                "a stage"
            } else {
                "stages"
            };
            return Some(format!(
                "it drops {which} while a release is being deployed or rolled back there ({}); \
                 keep it until that run is done",
                dropped.join("; ")
            ));
        }
        let mut moved = Vec::new();
        for (pipeline, run) in &runs {
            let effects = match reads.effects_of(run.release, &run.stage).await {
                Ok(effects) => effects,
                Err(e) => return unreadable(e),
            };
            let stage = config.pipeline(pipeline).and_then(|p| p.stage(&run.stage));
            let in_force = self.config();
            let was = in_force
                .pipeline(pipeline)
                .and_then(|p| p.stage(&run.stage));
            for e in effects.iter().filter(|e| e.attempt == run.attempt) {
                let EffectKind::Deploy { wave } = &e.kind else {
                    continue;
                };
                // Where it went or, still running or failed, where its intent recorded it
                // began; a deploy begun before that was kept: where the configuration in
                // force puts it.
                let to = match e.deploy_place() {
                    Some(to) => Some(DeployedTo::clone(to)),
                    None => was.and_then(|s| place(&in_force, s, *wave)),
                };
                let Some(to) = to else {
                    continue;
                };
                let now = stage.and_then(|s| place(config, s, *wave));
                if now.as_ref().is_some_and(|now| now.same_place(&to)) {
                    continue;
                }
                let status = run.status.as_str().replace('_', " ");
                let now = now.map_or("nowhere".to_string(), |now| now.to_string());
                let went = if e.status == EffectStatus::Succeeded {
                    "deployed to"
                } else {
                    "began deploying to"
                };
                moved.push(format!(
                    "{pipeline}/{}: {} {status}, its wave {} {went} {to}, now {now}",
                    run.stage,
                    run.release,
                    wave + 1
                ));
            }
        }
        (!moved.is_empty()).then(|| {
            format!(
                "it changes where a release being deployed or rolled back has deployed ({}); \
                 change the stage's targets once that run is done",
                moved.join("; ")
            )
        })
    }

    /// Holds back the start of effects until the guard is dropped, and waits for those
    /// starting to have recorded their intent. A configuration change holds it from its
    /// [`Engine::refuse_config`] until its [`Engine::replace_config`]: a deploy that starts
    /// between the two would take its place from the configuration being replaced after the
    /// check had read the store without it, and go where the new configuration no longer puts
    /// its wave (the check cannot refuse what it did not see). With the guard, such a deploy
    /// either began before the check, which sees where, or starts under the new
    /// configuration. Hold it no longer than the change takes: no effect starts meanwhile.
    pub async fn hold_starts(&self) -> StartsHeld<'_> {
        StartsHeld {
            _held: self.inner.starts.write().await,
        }
    }

    /// Replaces the configuration (a validated one, which [`Engine::refuse_config`] did not
    /// refuse under the same `held`) and wakes every pipeline. Once
    /// [`Engine::spawn`] has run, pipelines the new configuration adds get their loops too.
    pub fn replace_config(&self, config: Config, _held: &StartsHeld<'_>) {
        let before = {
            let mut cell = match self.inner.ingest.config_cell().write() {
                Ok(c) => c,
                Err(e) => e.into_inner(),
            };
            std::mem::replace(&mut *cell, Arc::new(config))
        };
        {
            let mut earlier = self.inner.earlier.lock().unwrap_or_else(|p| p.into_inner());
            earlier.insert(0, before);
            earlier.truncate(EARLIER_CONFIGS);
        }
        let spawned = !self
            .inner
            .looping
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty();
        if spawned {
            self.spawn();
        }
        for p in self.config().pipelines.iter() {
            self.wake(&p.name);
        }
    }

    fn step(&self) -> EngineResult<()> {
        match &self.inner.fuse {
            Some(f) if !f.step() => Err(EngineError::Stopped),
            _ => Ok(()),
        }
    }

    // ----- the loop ------------------------------------------------------------------------

    /// Runs one reconciler task per pipeline, and the watch for facts written by other
    /// processes ([`FACT_WATCH`]), until the returned handles are aborted.
    ///
    /// Starts only the loops not already running, so calling it again after a configuration
    /// reload starts the pipelines the reload added.
    pub fn spawn(&self) -> Vec<tokio::task::JoinHandle<()>> {
        self.spawn_loops()
    }

    /// [`Engine::spawn`] onto `runtime` (see [`runtime::Background`]): the loops, the effects
    /// they start, and the loops a configuration reload adds later all run there.
    pub fn spawn_on(&self, runtime: tokio::runtime::Handle) -> Vec<tokio::task::JoinHandle<()>> {
        // The first runtime given stays (a second call spawns onto it too).
        let _ = self.inner.background.set(runtime);
        self.spawn_loops()
    }

    /// Runs a task of the engine on its runtime.
    fn run_task<F>(&self, task: F) -> tokio::task::JoinHandle<()>
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        match self.inner.background.get() {
            Some(rt) => rt.spawn(task),
            None => tokio::spawn(task),
        }
    }

    fn spawn_loops(&self) -> Vec<tokio::task::JoinHandle<()>> {
        let mut looping = self.inner.looping.lock().unwrap_or_else(|p| p.into_inner());
        let first = !self.inner.watching.swap(true, Ordering::Relaxed);
        let watch = first.then(|| {
            let engine = self.clone();
            self.run_task(async move { engine.watch_facts().await })
        });
        let lease = (first && self.inner.leadership.is_elected()).then(|| {
            let engine = self.clone();
            tokio::spawn(async move { engine.hold_lease().await })
        });
        let loops: Vec<_> = self
            .config()
            .pipelines
            .iter()
            .filter(|p| looping.insert(p.name.to_string()))
            .map(|p| {
                let engine = self.clone();
                let name = p.name.clone();
                self.run_task(async move { engine.pipeline_loop(&name).await })
            })
            .collect();
        loops.into_iter().chain(watch).chain(lease).collect()
    }

    /// Gives the leader lease up, if this controller holds it (it is stopping): another takes
    /// over at its next claim instead of when the lease runs out.
    pub async fn step_down(&self) {
        let l = &self.inner.leadership;
        if let Standing::Leading { epoch, .. } | Standing::Taking { epoch, .. } = l.standing() {
            if let Some(fence) = l.fence() {
                fence.clear();
            }
            match self
                .store()
                .release_lease(l.holder(), epoch, self.now())
                .await
            {
                Ok(()) => tracing::info!(epoch, "leader lease released"),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot release the leader lease; it runs out")
                }
            }
        }
    }

    /// This controller's standing: sole, leading or following.
    pub fn leadership(&self) -> &Leadership {
        &self.inner.leadership
    }

    /// Claims the leader lease every fifth of its length: renews it while leading, takes it
    /// over once it expired, and follows the configuration applied from the configuration
    /// repository by any controller ([`takeover`]). On taking it, the configuration to act with is checked first
    /// ([`takeover`]); once it passes every pipeline is woken, so effects the previous leader
    /// left pending are taken up at once. Declined, the next try waits a whole lease, so
    /// another controller can take the lease up.
    async fn hold_lease(&self) {
        let l = &self.inner.leadership;
        // The applied configuration's commit this controller last followed, and what it last
        // recorded it acts with while leading.
        let mut following = takeover::Following::default();
        loop {
            let started = std::time::Instant::now();
            let mut next = l.claim_every();
            match self
                .store()
                .claim_lease(l.holder(), l.ttl(), self.now())
                .await
            {
                Ok(claim) => {
                    // Renewed since it was taken: its holder passed its check and acts (one
                    // that declines gives the lease up without renewing it).
                    if let crate::store::lease::Claim::Other(lease) = &claim
                        && lease.renewed_at > lease.acquired_at
                    {
                        self.another_leads();
                    }
                    if l.record(&claim, started)
                        && let crate::store::lease::Claim::Held { epoch, .. } = claim
                    {
                        if self.take_lead(epoch).await {
                            tracing::info!(holder = l.holder(), epoch, "this controller leads");
                            for p in self.config().pipelines.iter() {
                                self.wake(&p.name);
                            }
                        } else {
                            next = l.ttl().max(next);
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot claim the leader lease");
                    l.claim_failed();
                }
            }
            crate::metrics::global().leadership(&l.standing());
            self.follow_applied(&mut following).await;
            self.record_acting(&mut following).await;
            tokio::time::sleep(next).await;
        }
    }

    /// Wakes the pipelines that another process recorded a fact for: every fact comes with its
    /// event-log entry in the same transaction, so new entries not written by this controller's
    /// reconciler name exactly the pipelines to look at again.
    async fn watch_facts(&self) {
        let mut seen = None;
        loop {
            if self.inner.fuse.as_ref().is_some_and(|f| f.blown()) {
                return;
            }
            match self.store().facts_after(seen).await {
                Ok((last, pipelines)) => {
                    seen = Some(last);
                    for p in pipelines {
                        self.wake(&p);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot read the event log for new facts"),
            }
            tokio::time::sleep(FACT_WATCH).await;
        }
    }

    async fn pipeline_loop(&self, name: &str) {
        let waker = self.inner.ingest.wakers().get(name);
        let mut woke = std::time::Instant::now();
        loop {
            if !self.inner.leadership.may_act() {
                self.inner.leadership.until_may_act().await;
                woke = std::time::Instant::now();
            }
            // The lag runs from the earliest wake-up this reconcile answers (a fact recorded,
            // an effect finished), or from the loop's own waking (a deadline).
            let since = waker.take().map_or(woke, |w| w.min(woke));
            self.inner.ingest.until_quiet(YIELD_TO_INTAKE).await;
            let span = tracing::info_span!("reconcile", pipeline = name);
            let reconciled = self.reconcile(name).instrument(span).await;
            crate::metrics::global().reconciled(name, since.elapsed());
            let next = match reconciled {
                Ok(next) => next,
                Err(EngineError::Stopped) => return,
                Err(EngineError::UnknownPipeline(_)) => {
                    tracing::info!(pipeline = name, "no longer configured; its loop stops");
                    self.inner
                        .looping
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(name);
                    return;
                }
                Err(e) => {
                    tracing::error!(pipeline = name, error = %e, "reconcile failed; retrying in 5 s");
                    Some(self.now() + chrono::Duration::seconds(5))
                }
            };
            let Some(at) = next else {
                // Nothing due: only a new fact, an effect's end or a reload changes anything.
                waker.notified().await;
                woke = std::time::Instant::now();
                continue;
            };
            let sleep = (at - self.now()).to_std().unwrap_or(Duration::ZERO);
            tokio::select! {
                _ = waker.notified() => {}
                _ = tokio::time::sleep(sleep.min(DEADLINE_RECHECK)) => {}
            }
            woke = std::time::Instant::now();
        }
    }

    /// One reconcile of one pipeline: plan and apply until nothing changes, start effects.
    /// Returns when to look again if nothing wakes the pipeline before.
    pub async fn reconcile(&self, name: &str) -> EngineResult<Option<DateTime<Utc>>> {
        if self.inner.fuse.as_ref().is_some_and(|f| f.blown()) {
            return Err(EngineError::Stopped);
        }
        let pipeline = self.pipeline(name)?;
        let stages: Vec<StageName> = pipeline.stages.iter().map(|s| s.name.clone()).collect();
        for _ in 0..MAX_ROUNDS {
            let since = self.now() - chrono::Duration::days(7);
            let snap = self.store().snapshot(name, &stages, since).await?;
            // The clock is read after the snapshot, so no fact in it is newer than `now`; at
            // the store's precision (ms), so a deadline planned from `now` is the same value
            // when planned again from a time the store kept.
            let now = self.now().trunc_subsecs(3);
            let plan = plan(&pipeline, &snap, now);
            crate::metrics::global().approvals(&pipeline, &snap.runs);
            let changes: Vec<Action> = plan
                .actions
                .iter()
                .filter(|a| a.is_state_change())
                .filter(|a| !matches!(a, Action::Abandon { key } if self.is_running(key)))
                .cloned()
                .collect();
            for a in &plan.actions {
                if let Action::Start(e) = a {
                    self.start_effect(e.clone(), &snap).await?;
                }
            }
            if changes.is_empty() {
                return Ok(plan.wake_at);
            }
            // A controller that does not act (its lease ran out, or it is checking the
            // configuration after taking it) applies nothing planned from this one.
            if !self.inner.leadership.may_act() {
                return Ok(None);
            }
            self.step()?;
            self.store().apply(name, &changes, now).await?;
            observe_changes(&pipeline, &snap, &changes, now);
        }
        tracing::warn!(
            pipeline = name,
            "reconcile did not settle in {MAX_ROUNDS} rounds; continuing shortly"
        );
        Ok(Some(self.now() + chrono::Duration::seconds(1)))
    }

    /// Records the intent (if new) and runs the effect in its own task, unless it already runs.
    async fn start_effect(&self, e: Effect, snap: &crate::domain::Snapshot) -> EngineResult<()> {
        if !self.inner.leadership.may_act() {
            return Ok(());
        }
        {
            let mut running = self.inner.running.lock().unwrap_or_else(|p| p.into_inner());
            if !running.insert(e.key.to_string()) {
                return Ok(());
            }
        }
        // The snapshot may predate this effect's finishing in another task of this process
        // (it leaves `running` only after its outcome is stored): ask the store, so a finished
        // effect is never performed again.
        match self.store().effect_finished(&e.key).await {
            Ok(false) => {}
            Ok(true) => {
                self.unmark(&e.key);
                return Ok(());
            }
            Err(err) => {
                self.unmark(&e.key);
                return Err(err.into());
            }
        }
        // Taken before the intent is recorded: a deploy's intent records the place this
        // context deploys to. No configuration change comes between the two (`hold_starts`).
        let starting = self.inner.starts.read().await;
        let ctx = exec::Context::capture(self, &e, snap);
        let recorded = snap.effect(&e.key).is_some();
        if !recorded {
            match self.begin(&e, ctx.place()).await {
                Ok(true) => {}
                // Recorded since the snapshot was read: performed from the next one, which
                // has its record (and where a deploy began).
                Ok(false) => {
                    self.unmark(&e.key);
                    self.wake(&e.pipeline);
                    return Ok(());
                }
                Err(err) => {
                    self.unmark(&e.key);
                    return Err(err);
                }
            }
        }
        drop(starting);
        let engine = self.clone();
        // Its own span, not the reconcile's: the effect outlives the reconcile that started it.
        let span = tracing::info_span!(
            parent: None,
            "effect",
            pipeline = %e.pipeline,
            stage = %e.stage,
            release = e.release.0,
            effect_key = %e.key,
            kind = e.kind.tag(),
        );
        self.run_task(async move { engine.run_effect(e, ctx).await }.instrument(span));
        Ok(())
    }

    /// Records the effect's intent (a deploy's with `place`, where it is about to go); false
    /// if it was recorded before.
    async fn begin(&self, e: &Effect, place: Option<&DeployedTo>) -> EngineResult<bool> {
        self.step()?;
        Ok(self.store().begin_effect(e, place, self.now()).await?)
    }

    fn unmark(&self, key: &str) {
        self.inner
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }

    async fn run_effect(&self, e: Effect, ctx: exec::Context) {
        // A controller that lost the lead since the effect was started (paused past its lease)
        // performs nothing: the record stays pending for the leader.
        let outcome = if self.step().is_err() || !self.inner.leadership.may_act() {
            None
        } else {
            let deadline = self.effect_deadline();
            tracing::info!("effect started");
            let started = std::time::Instant::now();
            let attempt = tokio::select! {
                // Checked first: a controller resumed after losing the lead stops here, before
                // the effect's next call.
                biased;
                () = self.inner.leadership.lost() => {
                    tracing::warn!("this controller lost the lead: the effect is left pending for the leader");
                    self.unmark(&e.key);
                    return;
                }
                attempt = tokio::time::timeout(deadline, exec::perform(self, &e, &ctx)) => attempt,
            };
            let Ok(outcome) = attempt else {
                return self.overran(&e, deadline).await;
            };
            tracing::info!(ok = outcome.ok, "effect finished");
            observe_effect(&e, outcome.ok, started.elapsed());
            Some(outcome)
        };
        if let Some(o) = outcome {
            if self.step().is_ok() {
                if let Err(err) = self.store().finish_effect(&e, &o, self.now()).await {
                    tracing::error!(key = %e.key, error = %err, "cannot record the effect's outcome; it stays pending and is performed again under its key");
                }
            }
        }
        self.unmark(&e.key);
        // Recorded or not, the pipeline looks again: at its outcome, or at the effect still
        // pending (performed again under the same key, as after a crash). A loop whose
        // process "crashed" (the test fuse) stops at that look.
        self.wake(&e.pipeline);
    }

    /// An attempt ran past its deadline and was cancelled: its record stays pending, and the
    /// wake has the reconciler start it again under the same key, from a fresh snapshot.
    async fn overran(&self, e: &Effect, deadline: Duration) {
        let detail = format!(
            "{} ran past its {} s deadline; cancelled, to be performed again under the same key",
            e.key,
            deadline.as_secs_f64()
        );
        tracing::warn!(pipeline = %e.pipeline, "{detail}");
        let scope = Some((e.release, e.stage.as_str()));
        let logged = self
            .store()
            .log_reconciler_event(&e.pipeline, "effect-deadline", scope, &detail, self.now())
            .await;
        if let Err(err) = logged {
            tracing::error!(error = %err, "cannot write the effect deadline to the event log");
        }
        self.unmark(&e.key);
        self.wake(&e.pipeline);
    }

    fn is_running(&self, key: &str) -> bool {
        self.inner
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(key)
    }

    /// How many effects are running in this process now.
    pub fn in_flight(&self) -> usize {
        self.inner
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    pub(crate) fn ports(&self) -> &Ports {
        &self.inner.ports
    }
}

/// Feeds the metrics from the changes just applied: run transitions (run durations) and the
/// outcomes releases reached, judged from the snapshot's typed runs before the changes.
fn observe_changes(
    pipeline: &crate::config::Pipeline,
    snap: &crate::domain::Snapshot,
    changes: &[Action],
    now: DateTime<Utc>,
) {
    use crate::metrics::{release_failed, release_outcome};
    let m = crate::metrics::global();
    let mut decided = HashSet::new();
    for change in changes {
        let outcome = match change {
            Action::Transition {
                release, stage, to, ..
            } => {
                if let Some(run) = snap.run(*release, stage) {
                    m.run_transition(&pipeline.name, run, *to, now);
                }
                release_outcome(pipeline, &snap.runs, *release, stage, *to).map(|o| (*release, o))
            }
            Action::FailRelease { release, .. } => {
                release_failed(&snap.runs, *release).map(|o| (*release, o))
            }
            _ => None,
        };
        // One outcome per release per batch: two of its runs may end in the same round.
        if let Some((release, outcome)) = outcome.filter(|(r, _)| decided.insert(*r)) {
            tracing::debug!(release = release.0, outcome, "release outcome");
            m.release_outcome(&pipeline.name, outcome);
        }
    }
}

/// A deploy's or rollback's duration and result.
fn observe_effect(e: &Effect, ok: bool, took: Duration) {
    let rollback = match e.kind {
        crate::domain::EffectKind::Deploy { .. } => false,
        crate::domain::EffectKind::Rollback { .. } => true,
        _ => return,
    };
    let labels = crate::metrics::EffectLabels {
        pipeline: e.pipeline.to_string(),
        stage: e.stage.to_string(),
        result: if ok { "succeeded" } else { "failed" },
    };
    crate::metrics::global().effect_finished(rollback, labels, took);
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Deref for Engine {
    type Target = Ingest;

    fn deref(&self) -> &Ingest {
        &self.inner.ingest
    }
}

/// Each run in `runs` (pipeline, run) whose pipeline or stage `config` does not have, for
/// people: `backend/gamma: r5 rolling back`.
fn dropped_changing(config: &Config, runs: &[(String, crate::domain::StageRun)]) -> Vec<String> {
    runs.iter()
        .filter(|(pipeline, run)| {
            config
                .pipeline(pipeline)
                .and_then(|p| p.stage(&run.stage))
                .is_none()
        })
        .map(|(pipeline, run)| {
            let status = run.status.as_str().replace('_', " ");
            format!("{pipeline}/{}: {} {status}", run.stage, run.release)
        })
        .collect()
}

/// Where `config` puts `stage`'s wave `wave`, as a deploy records it.
fn place(config: &Config, stage: &crate::config::Stage, wave: usize) -> Option<DeployedTo> {
    DeployedTo::of_wave(&config.accounts, stage, wave)
}

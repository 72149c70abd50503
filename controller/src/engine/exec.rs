//! Performs one effect through the ports and turns the result into a durable, typed outcome.
//!
//! Never decides anything: what to do was planned; this only does it, with the idempotency
//! key. Retrying temporary failures is each adapter's job (one policy, in the adapters): an
//! error that reaches here is final for this attempt and becomes a failed outcome.

use std::collections::BTreeMap;

use super::messages;
use super::ports::*;
use super::{Engine, Ports};
use crate::config::{Account, AlarmDelay, Deploy, Pipeline, Stage};
use crate::domain::Effect;
use crate::domain::approval::{describe_exposed, describe_unconfirmed};
use crate::domain::{
    AlarmFact, AppliedSpec, ApprovalSent, DeployedTo, EffectKind, EffectOutput, EffectStatus,
    Release, ReleaseId, Snapshot, StackHistory, StackKey, StageRun,
};
use crate::store::EffectOutcome;

/// What an effect needs to know, copied from the snapshot it was planned from.
pub(super) struct Context {
    pipeline: Option<Pipeline>,
    release: Option<Release>,
    run: Option<StageRun>,
    /// Releases by id (for a rollback target's digest).
    releases: BTreeMap<ReleaseId, Release>,
    /// What this run's deploys produced: the stack outputs, and the image they run.
    outputs: BTreeMap<String, String>,
    image_uri: String,
    /// Where this run's deploys went or, not succeeded, began, by wave (deploys recorded
    /// before either was kept: none).
    deployed: BTreeMap<usize, Reached>,
    /// A deploy: where the configuration in force puts its wave (what its intent records when
    /// it begins, and where it deploys).
    place: Option<DeployedTo>,
    /// A deploy resumed under its key (after a crash, or past its deadline): where its intent
    /// recorded it began (`None`: a new deploy, or one begun before that was kept).
    began: Option<DeployedTo>,
    /// What already passed, for people (approval requests, notifications).
    history: String,
    public_url: String,
    accounts: BTreeMap<String, Account>,
    /// The alarm notification that sent this run into rollback, if one did.
    trigger: Option<AlarmFact>,
    /// When the run's deploy finished: a bake counts data points from here.
    deploy_finished: Option<chrono::DateTime<chrono::Utc>>,
    /// When the context was taken, to render reasons for people.
    now: chrono::DateTime<chrono::Utc>,
}

/// Where a run's deploy of a wave went, or began.
struct Reached {
    to: DeployedTo,
    /// The deploy succeeded (else it failed, or is still running or interrupted).
    succeeded: bool,
}

impl Context {
    pub(super) fn capture(engine: &Engine, e: &Effect, snap: &Snapshot) -> Context {
        let config = engine.config();
        let mut outputs = BTreeMap::new();
        let mut image_uri = String::new();
        let mut deployed = BTreeMap::new();
        let run = snap.run(e.release, &e.stage);
        for rec in run.iter().flat_map(|run| snap.effects_of(run)) {
            let succeeded = rec.status == EffectStatus::Succeeded;
            if let (EffectKind::Deploy { wave }, Some(to)) = (&rec.kind, rec.deploy_place()) {
                let to = DeployedTo::clone(to);
                deployed.insert(*wave, Reached { to, succeeded });
            }
            if let (
                true,
                EffectOutput::Deployed {
                    image_uri: uri,
                    outputs: o,
                    ..
                },
            ) = (succeeded, &rec.output)
            {
                outputs.extend(o.clone());
                image_uri = uri.clone();
            }
        }
        let pipeline = config.pipeline(&e.pipeline);
        let place = match (&e.kind, pipeline.and_then(|p| p.stage(&e.stage))) {
            (EffectKind::Deploy { wave }, Some(s)) => {
                DeployedTo::of_wave(&config.accounts, s, *wave)
            }
            _ => None,
        };
        let began = snap.effect(&e.key).and_then(|rec| rec.place.clone());
        Context {
            pipeline: pipeline.cloned(),
            release: snap.releases.get(&e.release).cloned(),
            run: snap.run(e.release, &e.stage).cloned(),
            releases: snap.releases.clone(),
            outputs,
            image_uri,
            deployed,
            place,
            began,
            history: messages::progress(snap, e.release, engine.now()),
            public_url: config.controller.public_url.clone(),
            accounts: config.accounts.clone(),
            trigger: trigger(e, snap),
            deploy_finished: run.and_then(|run| snap.deploy_finished(run)),
            now: engine.now(),
        }
    }

    /// For a deploy, where the configuration in force puts its wave: the place its intent
    /// records ([`super::Engine`] begins it with this), and the one it deploys to.
    pub(super) fn place(&self) -> Option<&DeployedTo> {
        self.place.as_ref()
    }

    fn account(&self, name: &str) -> Result<&Account, PortError> {
        self.accounts
            .get(name)
            .ok_or_else(|| PortError::Invalid(format!("account `{name}` is not configured")))
    }

    /// The run's reason, for people.
    fn reason(&self) -> String {
        self.run
            .as_ref()
            .map(|run| run.reason.describe(self.now))
            .unwrap_or_default()
    }
}

/// The alarm event a rollback answers: the one its run recorded when it went into rollback.
fn trigger(e: &Effect, snap: &Snapshot) -> Option<AlarmFact> {
    if !matches!(e.kind, EffectKind::Rollback { .. }) {
        return None;
    }
    let id = snap.run(e.release, &e.stage)?.rollback_alarm?;
    snap.alarms.iter().find(|a| a.id == id).cloned()
}

/// One effect being performed: everything its steps read.
struct Op<'a> {
    engine: &'a Engine,
    effect: &'a Effect,
    pipeline: &'a Pipeline,
    release: &'a Release,
    ctx: &'a Context,
}

impl Op<'_> {
    fn ports(&self) -> &Ports {
        self.engine.ports()
    }
}

/// Performs the effect; every error becomes a failed outcome with a readable reason.
pub(super) async fn perform(engine: &Engine, e: &Effect, ctx: &Context) -> EffectOutcome {
    let (Some(p), Some(r)) = (&ctx.pipeline, &ctx.release) else {
        return EffectOutcome::failure("the pipeline or release is no longer configured");
    };
    let op = Op {
        engine,
        effect: e,
        pipeline: p,
        release: r,
        ctx,
    };
    let result = match (&e.kind, p.stage(&e.stage)) {
        (EffectKind::ResolveArtifact, _) => resolve(&op).await,
        (EffectKind::CheckAlarms { .. }, Some(s)) => alarms(&op, s).await,
        (EffectKind::PollAlarms { .. }, Some(s)) => bake_read(&op, s).await,
        (EffectKind::RunTest { test, .. }, Some(s)) => run_test(&op, s, test).await,
        (EffectKind::RequestApproval { .. }, Some(s)) => approval(&op, s).await,
        (EffectKind::Deploy { wave }, Some(s)) => deploy(&op, s, *wave).await,
        (EffectKind::Rollback { wave, target }, Some(s)) => rollback(&op, s, *wave, *target).await,
        (EffectKind::Notify { event }, Some(s)) => notify(&op, s, *event).await,
        // The stage's name is its environment: a run in a stage a reload removed (ended
        // superseded) still tells GitHub its deployment is over.
        (EffectKind::Report { state }, _) => report(&op, *state).await,
        (_, None) => Err(PortError::Invalid(format!(
            "stage `{}` is no longer configured",
            e.stage
        ))),
    };
    result.unwrap_or_else(|err| match err {
        PortError::Drift { expected, found } => {
            let detail = PortError::Drift {
                expected: expected.clone(),
                found: found.clone(),
            };
            EffectOutcome::failure(format!("drift: {detail}"))
                .with(EffectOutput::Drift { expected, found })
        }
        err => EffectOutcome::failure(err.to_string()),
    })
}

async fn resolve(op: &Op<'_>) -> PortResult<EffectOutcome> {
    let (p, r) = (op.pipeline, op.release);
    let account = op.ctx.account(&p.artifact.account)?;
    let tag = p.artifact.tag_for(&r.sha, &r.branch);
    let digest = op
        .ports()
        .artifacts
        .resolve(&p.artifact, account, &tag)
        .await?;
    let detail = format!("{}:{tag} is {digest}", p.artifact.repository);
    Ok(EffectOutcome::success(detail).with(EffectOutput::Resolved {
        digest: digest.into(),
    }))
}

async fn alarms(op: &Op<'_>, s: &Stage) -> PortResult<EffectOutcome> {
    let mut firing = Vec::new();
    for t in &s.targets {
        let account = op.ctx.account(&t.account)?;
        let names = op
            .ports()
            .alarms
            .in_alarm(account, &t.region, &s.alarms)
            .await?;
        firing.extend(names);
    }
    firing.sort();
    firing.dedup();
    let detail = if firing.is_empty() {
        "no alarm in ALARM".to_string()
    } else {
        format!("in ALARM: {}", firing.join(", "))
    };
    let output = EffectOutput::Alarms {
        in_alarm: firing,
        readings: Vec::new(),
    };
    Ok(EffectOutcome::success(detail).with(output))
}

/// A bake's poll: every alarm's state in every target and, when the stage asks for data
/// points, each metric's data points since the deploy finished.
async fn bake_read(op: &Op<'_>, s: &Stage) -> PortResult<EffectOutcome> {
    let run = op.ctx.run.as_ref();
    let window = (s.min_datapoints > 0).then(|| {
        let started = run.map(|r| r.since).unwrap_or(op.ctx.now);
        DataWindow {
            from: op.ctx.deploy_finished.unwrap_or(started),
            until: op.ctx.now,
        }
    });
    let asked = BakeRead {
        window,
        composite_delays: s.alarm_delay == AlarmDelay::Auto,
    };
    let mut readings = Vec::new();
    for t in &s.targets {
        let account = op.ctx.account(&t.account)?;
        let read = op
            .ports()
            .alarms
            .read(account, &t.region, &s.alarms, asked)
            .await?;
        readings.extend(read);
    }
    let detail = readings
        .iter()
        .map(|r| match r.datapoints {
            Some(n) => format!("{} {} ({n} data points)", r.alarm, r.state.as_str()),
            None => format!("{} {}", r.alarm, r.state.as_str()),
        })
        .collect::<Vec<_>>()
        .join(", ");
    Ok(EffectOutcome::success(detail).with(EffectOutput::alarms(readings)))
}

async fn run_test(op: &Op<'_>, s: &Stage, test: &str) -> PortResult<EffectOutcome> {
    let (p, r, ctx) = (op.pipeline, op.release, op.ctx);
    let def = p
        .tests
        .get(test)
        .ok_or_else(|| PortError::Invalid(format!("test `{test}` is no longer configured")))?;
    let target = s
        .targets
        .first()
        .ok_or_else(|| PortError::Invalid("stage has no target".into()))?;
    let account = ctx.account(&target.account)?;
    let tc = TestContext {
        key: op.effect.key.to_string(),
        pipeline: p.name.to_string(),
        stage: s.name.to_string(),
        release: r.id,
        repository: p.source.repository.clone(),
        branch: r.branch.clone(),
        sha: r.sha.to_string(),
        digest: r.digest.as_deref().unwrap_or_default().to_string(),
        image_uri: ctx.image_uri.clone(),
        account_id: account.id.to_string(),
        region: target.region.clone(),
        outputs: ctx.outputs.clone(),
    };
    let result = op.ports().tests.run(def, &tc).await?;
    let detail = if result.output_tail.is_empty() {
        result.summary.clone()
    } else {
        format!("{}\n{}", result.summary, result.output_tail)
    };
    Ok(EffectOutcome {
        ok: result.passed,
        detail,
        output: EffectOutput::None,
    })
}

async fn approval(op: &Op<'_>, s: &Stage) -> PortResult<EffectOutcome> {
    let (e, p, r, ctx) = (op.effect, op.pipeline, op.release, op.ctx);
    let Some(cfg) = &s.approval else {
        return Err(PortError::Invalid("stage has no approval".into()));
    };
    let since = ctx.run.as_ref().map_or(ctx.now, |run| run.since);
    // Every round of a request shares the first round's key: approvers whose link went out
    // keep it, and a later round sends only what an earlier one did not.
    let first = Effect::new(
        &e.pipeline,
        e.release,
        &e.stage,
        e.attempt,
        EffectKind::RequestApproval { round: 0 },
    );
    let req = ApprovalRequest {
        key: first.key.to_string(),
        pipeline: p.name.to_string(),
        repository: p.source.repository.clone(),
        stage: s.name.to_string(),
        release: r.id,
        attempt: e.attempt,
        topic: cfg.topic.to_string(),
        approvers: cfg.approvers.clone(),
        expires_at: since + chrono::Duration::from_std(cfg.timeout).unwrap_or_default(),
        summary: messages::release_facts(p, r, &ctx.history, &ctx.public_url),
    };
    let sent_for = ApprovalSent {
        approvers: req
            .approvers
            .iter()
            .map(|a| (a.name.clone(), a.email.clone()))
            .collect(),
        topic: req.topic.clone(),
        expires_at: req.expires_at,
    };
    match op.ports().approvals.send(&req).await? {
        SendOutcome::Sent(sent) => Ok(EffectOutcome::success(format!(
            "approval request sent ({sent} message(s))"
        ))
        .with(EffectOutput::ApprovalSent(Box::new(sent_for)))),
        // A failure: the planner sends the request again on its resend schedule, and each
        // approver who confirmed meanwhile gets their link then (the others keep theirs).
        SendOutcome::Unconfirmed(links) => {
            let (awaiting, sent) = awaiting_and_sent(&links);
            let detail = describe_unconfirmed(&awaiting, &sent);
            Ok(EffectOutcome::failure(detail)
                .with(EffectOutput::ApprovalUnconfirmed { awaiting, sent }))
        }
        SendOutcome::Withheld(exposed) => Ok(EffectOutcome::failure(describe_exposed(&exposed))
            .with(EffectOutput::ApprovalWithheld { exposed })),
    }
}

async fn deploy(op: &Op<'_>, s: &Stage, wave: usize) -> PortResult<EffectOutcome> {
    let r = op.release;
    let digest = r
        .digest
        .clone()
        .ok_or_else(|| PortError::Invalid("release has no digest".into()))?;
    if let Some(refused) = deploy_goes_where_it_began(op, s, wave) {
        return Ok(refused);
    }
    if s.targets.get(wave).is_none() {
        return Err(PortError::Invalid(format!(
            "the configuration no longer has a wave {} in {}",
            wave + 1,
            s.name
        )));
    }
    let req = deploy_request(op, s, r.id, &digest, wave).await?;
    let result = op.ports().deployer.deploy(&req).await?;
    let applied = match result.applied {
        Some(a) => keep_applied(op, a).await,
        None => None,
    };
    let to = deployed_to(&req);
    Ok(
        EffectOutcome::success(result.summary).with(EffectOutput::Deployed {
            image_uri: req.image_uri,
            outputs: result.outputs,
            applied,
            timing: result.timing,
            to: Some(Box::new(to)),
        }),
    )
}

/// Where a deploy request goes.
fn deployed_to(req: &DeployRequest) -> DeployedTo {
    DeployedTo::at(&req.target, &req.account, &req.deploy)
}

/// Refuses a deploy resumed under its key (after a crash, or past its deadline) whose intent
/// recorded that it began at a place the configuration in force no longer puts its wave at
/// (`Engine::refuse_config` refuses such a configuration, and no deploy starts between that
/// check and the change; this is the check of last resort, for a state written otherwise): part
/// of the release may have reached where it began, and deploying at the
/// new place would leave that part out of the run, its bake and its rollback. Nothing is done at either place; the error
/// names both and says what to do (the run's rollback then refuses the new place too, and the
/// stage halts).
fn deploy_goes_where_it_began(op: &Op<'_>, s: &Stage, wave: usize) -> Option<EffectOutcome> {
    let there = op.ctx.began.as_ref()?;
    let release = op.effect.release;
    let n = wave + 1;
    let began = format!(
        "{release}'s deploy of wave {n} of {} began at {there} and was interrupted",
        s.name
    );
    let todo = format!(
        "restore the configuration that puts wave {n} at {there}, or finish or undo the \
         deploy at {there} by hand, then resume the stage"
    );
    let here = op.ctx.place();
    let detail = match here {
        Some(here) if here.same_place(there) => return None,
        Some(here) => format!(
            "{began}, and the configuration now puts wave {n} at {here}: not deployed there; \
             {todo}"
        ),
        None => format!(
            "{began}, and the configuration no longer has a wave {n}: not deployed anywhere; \
             {todo}"
        ),
    };
    Some(
        EffectOutcome::failure(detail).with(EffectOutput::Misplaced {
            began: Box::new(there.clone()),
            now: here.cloned().map(Box::new),
        }),
    )
}

/// Refuses a rollback of `wave` that the configuration no longer puts where this run deployed
/// it, or where its deploy began when that did not succeed (a reload, or a restart with another
/// file, moved, replaced or dropped the wave, or gave its account another id): applied to
/// today's target, it would change a place the release never reached, and leave the one it did
/// reach running it. The stage is paused, and the error says what to restore by hand.
fn rollback_goes_where_deployed(
    op: &Op<'_>,
    s: &Stage,
    wave: usize,
    target: ReleaseId,
    here: Option<&DeployedTo>,
) -> PortResult<()> {
    let Some(Reached {
        to: there,
        succeeded,
    }) = op.ctx.deployed.get(&wave)
    else {
        return Ok(());
    };
    let release = op.effect.release;
    let n = wave + 1;
    let went = if *succeeded {
        format!(
            "{release} was deployed as wave {n} of {} to {there}",
            s.name
        )
    } else {
        format!(
            "{release}'s deploy of wave {n} of {} began at {there} and did not finish",
            s.name
        )
    };
    match here {
        Some(here) if here.same_place(there) => Ok(()),
        Some(here) => Err(PortError::Invalid(format!(
            "{went}, and the configuration now puts wave {n} at {here}: not rolled back there; \
             restore {there} to {target} by hand, then resume the stage"
        ))),
        None => Err(PortError::Invalid(format!(
            "{went}, and the configuration no longer has a wave {n}: restore {there} to \
             {target} by hand, then resume the stage"
        ))),
    }
}

/// Stores the template body (once, by its sha256) so the typed record can name it. The deploy
/// happened either way: when the body cannot be stored, the spec is not recorded (a rollback to
/// this release then falls back to the current configuration, and says so).
async fn keep_applied(op: &Op<'_>, a: Applied) -> Option<AppliedSpec> {
    if let (Some(sha), Some(body)) = (a.spec.template_sha256(), &a.template_body) {
        let stored = op.engine.store().put_template(sha, body, op.engine.now());
        if let Err(e) = stored.await {
            tracing::error!(key = %op.effect.key, error = %e, "cannot store the deployed template; its spec is not recorded");
            return None;
        }
    }
    Some(a.spec)
}

/// Exactly what the target release's deploy applied to this wave, with its template body;
/// `None` when it was deployed before that was recorded.
async fn known_good(
    op: &Op<'_>,
    s: &Stage,
    target: ReleaseId,
    wave: usize,
    here: &DeployedTo,
) -> PortResult<Option<Applied>> {
    let reads = op.engine.store().reads();
    let unreadable = |e: crate::store::StoreError| {
        PortError::Retryable(format!("cannot read the known-good deploy: {e}"))
    };
    let Some(deployed) = reads
        .deployed_wave(target, &s.name, wave)
        .await
        .map_err(unreadable)?
    else {
        return Ok(None);
    };
    if deployed.to.is_some_and(|to| !to.same_place(here)) {
        // The wave was elsewhere then: that spec was for another stack or account.
        return Ok(None);
    }
    let Some(spec) = deployed.applied else {
        return Ok(None);
    };
    let same_kind = matches!(
        (&spec, &s.deploy),
        (
            AppliedSpec::CloudFormation { .. },
            Deploy::CloudFormation { .. }
        ) | (
            AppliedSpec::CodePipeline { .. },
            Deploy::CodePipeline { .. }
        )
    );
    if !same_kind {
        // The stage changed how it deploys since: the record cannot be applied as it is.
        return Ok(None);
    }
    let template_body = match spec.template_sha256() {
        Some(sha) => Some(
            reads
                .template(sha)
                .await
                .map_err(unreadable)?
                .ok_or_else(|| {
                    PortError::Invalid(format!(
                        "the template {sha} of {target}'s deploy is missing from the store"
                    ))
                })?,
        ),
        None => None,
    };
    Ok(Some(Applied {
        spec,
        template_body,
    }))
}

async fn rollback(
    op: &Op<'_>,
    s: &Stage,
    wave: usize,
    target: ReleaseId,
) -> PortResult<EffectOutcome> {
    let (engine, p) = (op.engine, op.pipeline);
    let digest = op
        .ctx
        .releases
        .get(&target)
        .and_then(|t| t.digest.clone())
        .ok_or_else(|| PortError::Invalid(format!("rollback target {target} has no digest")))?;
    // Checked before anything is done at the wave's place now (the image promoted there, its
    // stack read): a wave the configuration moved or dropped is not touched at all.
    let here = DeployedTo::of_wave(&op.ctx.accounts, s, wave);
    rollback_goes_where_deployed(op, s, wave, target, here.as_ref())?;
    let mut req = deploy_request(op, s, target, &digest, wave).await?;
    let here = deployed_to(&req);
    req.restore = known_good(op, s, target, wave, &here).await?;
    let exact = req.restore.is_some();
    let latency = op.ctx.trigger.as_ref().map(|t| {
        let ms = (engine.now() - t.at).num_milliseconds().max(0);
        let detail = format!(
            "rollback of {} wave {} to {target} called the deployer {ms} ms after alarm {} arrived",
            s.name,
            wave + 1,
            t.alarm
        );
        (ms, detail)
    });
    let result = op.ports().deployer.rollback(&req).await;
    // Written after the call, so the disk write is not on the path from alarm to rollback.
    if let Some((ms, detail)) = &latency {
        let took = chrono::Duration::milliseconds(*ms);
        crate::metrics::global().alarm_to_rollback(&p.name, &s.name, took);
        tracing::info!(pipeline = %p.name, stage = %s.name, "{detail}");
        let scope = Some((op.effect.release, s.name.as_str()));
        let logged = engine
            .store()
            .log_reconciler_event(&p.name, "rollback-latency", scope, detail, engine.now())
            .await;
        if let Err(err) = logged {
            tracing::error!(error = %err, "cannot write the rollback latency to the event log");
        }
    }
    let result = result?;
    let how = if exact {
        "its recorded spec".to_string()
    } else {
        let note = format!(
            "{target} has no applicable recorded spec for {} wave {} (deployed before deploys \
             recorded what they applied, or the stage changed how it deploys since): restored \
             its image with the stage's current configuration",
            s.name,
            wave + 1
        );
        tracing::warn!(pipeline = %p.name, stage = %s.name, "{note}");
        let scope = Some((op.effect.release, s.name.as_str()));
        let logged = engine
            .store()
            .log_reconciler_event(&p.name, "rollback-fallback", scope, &note, engine.now())
            .await;
        if let Err(err) = logged {
            tracing::error!(error = %err, "cannot write the rollback fallback to the event log");
        }
        "its image with the current configuration (no applicable recorded spec)".to_string()
    };
    let detail = format!(
        "restored {target} ({digest}) from {how}: {}",
        result.summary
    );
    Ok(
        EffectOutcome::success(detail).with(EffectOutput::RolledBack {
            image_uri: req.image_uri,
            latency_ms: latency.map(|(ms, _)| ms),
            timing: result.timing,
        }),
    )
}

async fn deploy_request(
    op: &Op<'_>,
    s: &Stage,
    release: ReleaseId,
    digest: &str,
    wave: usize,
) -> PortResult<DeployRequest> {
    let (p, ctx) = (op.pipeline, op.ctx);
    let target = s.targets.get(wave).ok_or_else(|| {
        PortError::Invalid(format!(
            "{} has no wave {} in the configuration",
            s.name,
            wave + 1
        ))
    })?;
    let account = ctx.account(&target.account)?.clone();
    let promote = PromoteRequest {
        artifact: p.artifact.clone(),
        build_account: ctx.account(&p.artifact.account)?.clone(),
        digest: digest.to_string(),
        stage: s.name.to_string(),
        target: target.clone(),
        target_account: account.clone(),
        mode: s.promote,
    };
    let image_uri = op.ports().artifacts.promote(&promote).await?;
    let history = stack_history(op, &s.deploy, &account, &target.region).await;
    Ok(DeployRequest {
        key: op.effect.key.to_string(),
        pipeline: p.name.to_string(),
        stage: s.name.to_string(),
        release,
        target: target.clone(),
        account,
        deploy: s.deploy.clone(),
        image_uri,
        session_name: format!("tollgate-{}-{release}-{}", p.name, s.name),
        alarm_override: matches!(op.effect.kind, EffectKind::Deploy { .. })
            && op.release.alarm_override.is_some(),
        restore: None,
        history,
    })
}

/// The recent timings of the stack a CloudFormation deploy targets (empty for CodePipeline,
/// and when they cannot be read: the waits then follow the plain schedule).
async fn stack_history(
    op: &Op<'_>,
    deploy: &Deploy,
    account: &Account,
    region: &str,
) -> StackHistory {
    let Deploy::CloudFormation { stack, .. } = deploy else {
        return StackHistory::default();
    };
    let key = StackKey {
        account: account.id.to_string(),
        region: region.to_string(),
        stack: stack.clone(),
    };
    match op.engine.store().reads().stack_history(&key).await {
        Ok(history) => history,
        Err(e) => {
            tracing::warn!(stack = %key.stack, error = %e, "cannot read the stack's past timings; waiting on the plain schedule");
            StackHistory::default()
        }
    }
}

async fn notify(
    op: &Op<'_>,
    s: &Stage,
    event: crate::domain::NotifyEvent,
) -> PortResult<EffectOutcome> {
    let (p, r, ctx) = (op.pipeline, op.release, op.ctx);
    let Some(topic) = &p.notifications.topic else {
        return Ok(EffectOutcome::success("no notification topic configured"));
    };
    let Some(run) = &ctx.run else {
        return Err(PortError::Invalid("the run is gone".into()));
    };
    let (subject, body) = messages::notification(&messages::Notice {
        pipeline: p,
        stage: s,
        release: r,
        event,
        reason: &run.reason,
        progress: &ctx.history,
        public_url: &ctx.public_url,
        now: ctx.now,
    });
    let msg = Message {
        key: op.effect.key.to_string(),
        topic: topic.to_string(),
        subject,
        body,
        attributes: BTreeMap::new(),
    };
    let id = op.ports().notifier.publish(&msg).await?;
    Ok(EffectOutcome::success(format!("published message {id}")))
}

async fn report(op: &Op<'_>, state: crate::domain::ReportState) -> PortResult<EffectOutcome> {
    let (p, r, ctx) = (op.pipeline, op.release, op.ctx);
    let rep = DeploymentReport {
        key: op.effect.key.to_string(),
        pipeline: p.name.to_string(),
        repository: p.source.repository.clone(),
        sha: r.sha.to_string(),
        release: r.id,
        environment: op.effect.stage.to_string(),
        state,
        description: ctx.reason(),
        log_url: format!(
            "{}/ui/pipelines/{}/releases/{}",
            ctx.public_url, p.name, r.id.0
        ),
        summary: p.stage(&op.effect.stage).is_some(),
    };
    let forge = &op.ports().forge;
    if !forge.enabled() {
        return Ok(EffectOutcome::success(format!(
            "{} not reported: GitHub reporting is off (no token)",
            state.as_str()
        )));
    }
    forge.report(&rep).await?;
    Ok(EffectOutcome::success(format!(
        "reported {} to GitHub",
        state.as_str()
    )))
}

//! Performs one effect through the ports and turns the result into a durable outcome.
//!
//! Never decides anything: what to do was planned; this only does it, with the idempotency
//! key, and retries what the adapters call temporary.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use super::Engine;
use super::messages;
use super::ports::*;
use crate::config::{Account, Pipeline, Stage};
use crate::domain::Effect;
use crate::domain::{AlarmFact, EffectKind, EffectStatus, Release, ReleaseId, Snapshot, StageRun};
use crate::store::EffectOutcome;

/// What an effect needs to know, copied from the snapshot it was planned from.
pub(super) struct Context {
    pipeline: Option<Pipeline>,
    release: Option<Release>,
    run: Option<StageRun>,
    /// Releases by id (for a rollback target's digest).
    releases: BTreeMap<ReleaseId, Release>,
    /// Outputs of this run's deploys (stack outputs, the image URI).
    outputs: BTreeMap<String, String>,
    /// What already passed, for people (approval requests, notifications).
    history: String,
    public_url: String,
    accounts: BTreeMap<String, Account>,
    /// The alarm notification that sent this run into rollback, if one did.
    trigger: Option<AlarmFact>,
}

impl Context {
    pub(super) fn capture(engine: &Engine, e: &Effect, snap: &Snapshot) -> Context {
        let config = engine.config();
        let mut outputs = BTreeMap::new();
        for rec in snap.effects_of(e.release, &e.stage) {
            if rec.part().starts_with("deploy-") && rec.status == EffectStatus::Succeeded {
                outputs.extend(rec.output.clone());
            }
        }
        Context {
            pipeline: config.pipeline(&e.pipeline).cloned(),
            release: snap.releases.get(&e.release).cloned(),
            run: snap.run(e.release, &e.stage).cloned(),
            releases: snap.releases.clone(),
            outputs,
            history: messages::progress(snap, e.release),
            public_url: config.controller.public_url.clone(),
            accounts: config.accounts.clone(),
            trigger: trigger(e, snap),
        }
    }

    fn account(&self, name: &str) -> Result<&Account, PortError> {
        self.accounts
            .get(name)
            .ok_or_else(|| PortError::Invalid(format!("account `{name}` is not configured")))
    }
}

/// The alarm fact a rollback answers: the run went into rollback with its
/// [`AlarmFact::fired_reason`].
fn trigger(e: &Effect, snap: &Snapshot) -> Option<AlarmFact> {
    if !matches!(e.kind, EffectKind::Rollback { .. }) {
        return None;
    }
    let run = snap.run(e.release, &e.stage)?;
    snap.alarms
        .iter()
        .filter(|a| a.stage == e.stage && a.firing)
        .find(|a| run.reason == a.fired_reason())
        .cloned()
}

/// Performs the effect; every error becomes a failed outcome with a readable reason.
pub(super) async fn perform(engine: &Engine, e: &Effect, ctx: &Context) -> EffectOutcome {
    let (Some(p), Some(r)) = (&ctx.pipeline, &ctx.release) else {
        return EffectOutcome::failure("the pipeline or release is no longer configured");
    };
    let stage = p.stage(&e.stage);
    let result = match (&e.kind, stage) {
        (EffectKind::ResolveArtifact, _) => resolve(engine, p, r, ctx).await,
        (EffectKind::CheckAlarms { .. } | EffectKind::PollAlarms { .. }, Some(s)) => {
            alarms(engine, s, ctx).await
        }
        (EffectKind::RunTest { test, .. }, Some(s)) => {
            run_test(engine, e, p, s, r, test, ctx).await
        }
        (EffectKind::RequestApproval { .. }, Some(s)) => approval(engine, e, p, s, r, ctx).await,
        (EffectKind::Deploy { wave }, Some(s)) => deploy(engine, e, p, s, r, *wave, ctx).await,
        (EffectKind::Rollback { wave, target }, Some(s)) => {
            rollback(engine, e, p, s, *wave, *target, ctx).await
        }
        (EffectKind::Notify { event }, Some(s)) => notify(engine, e, p, s, r, *event, ctx).await,
        (EffectKind::Report { state }, Some(s)) => report(engine, e, p, s, r, *state, ctx).await,
        (_, None) => Err(PortError::Invalid(format!(
            "stage `{}` is no longer configured",
            e.stage
        ))),
    };
    result.unwrap_or_else(|err| EffectOutcome::failure(err.to_string()))
}

/// Retries temporary failures with exponential backoff (1 s … 30 s, about 90 s in all).
async fn retrying<T, F, Fut>(mut op: F) -> PortResult<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = PortResult<T>>,
{
    let mut delay = Duration::from_secs(1);
    for _ in 0..7 {
        match op().await {
            Err(e) if e.is_retryable() => {
                tracing::warn!(error = %e, "temporary failure; retrying in {delay:?}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
            }
            other => return other,
        }
    }
    op().await
}

async fn resolve(
    engine: &Engine,
    p: &Pipeline,
    r: &Release,
    ctx: &Context,
) -> PortResult<EffectOutcome> {
    let account = ctx.account(&p.artifact.account)?;
    let tag = p.artifact.tag_for(&r.sha, &r.branch);
    let digest = retrying(|| engine.ports().artifacts.resolve(&p.artifact, account, &tag)).await?;
    Ok(
        EffectOutcome::success(format!("{}:{tag} is {digest}", p.artifact.repository))
            .with("digest", digest),
    )
}

async fn alarms(engine: &Engine, s: &Stage, ctx: &Context) -> PortResult<EffectOutcome> {
    let mut firing = Vec::new();
    for t in &s.targets {
        let account = ctx.account(&t.account)?;
        let names = retrying(|| {
            engine
                .ports()
                .alarms
                .in_alarm(account, &t.region, &s.alarms)
        })
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
    Ok(EffectOutcome::success(detail).with("in_alarm", firing.join(",")))
}

#[allow(clippy::too_many_arguments)]
async fn run_test(
    engine: &Engine,
    e: &Effect,
    p: &Pipeline,
    s: &Stage,
    r: &Release,
    test: &str,
    ctx: &Context,
) -> PortResult<EffectOutcome> {
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
        key: e.key.clone(),
        pipeline: p.name.clone(),
        stage: s.name.clone(),
        release: r.id,
        repository: p.source.repository.clone(),
        branch: r.branch.clone(),
        sha: r.sha.clone(),
        digest: r.digest.clone().unwrap_or_default(),
        image_uri: ctx.outputs.get("image_uri").cloned().unwrap_or_default(),
        account_id: account.id.clone(),
        region: target.region.clone(),
        outputs: ctx.outputs.clone(),
    };
    let result = engine.ports().tests.run(def, &tc).await?;
    let detail = if result.output_tail.is_empty() {
        result.summary.clone()
    } else {
        format!("{}\n{}", result.summary, result.output_tail)
    };
    Ok(EffectOutcome {
        ok: result.passed,
        detail,
        output: BTreeMap::new(),
    })
}

async fn approval(
    engine: &Engine,
    e: &Effect,
    p: &Pipeline,
    s: &Stage,
    r: &Release,
    ctx: &Context,
) -> PortResult<EffectOutcome> {
    let Some(cfg) = &s.approval else {
        return Err(PortError::Invalid("stage has no approval".into()));
    };
    let since = ctx
        .run
        .as_ref()
        .map_or_else(|| engine.now(), |run| run.since);
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
        key: first.key,
        pipeline: p.name.clone(),
        stage: s.name.clone(),
        release: r.id,
        topic: cfg.topic.clone(),
        approvers: cfg.approvers.clone(),
        expires_at: since + chrono::Duration::from_std(cfg.timeout).unwrap_or_default(),
        summary: messages::release_facts(p, r, &ctx.history, &ctx.public_url),
    };
    let sent = retrying(|| engine.ports().approvals.send(&req)).await?;
    Ok(EffectOutcome::success(format!(
        "approval request sent ({sent} message(s))"
    )))
}

#[allow(clippy::too_many_arguments)]
async fn deploy(
    engine: &Engine,
    e: &Effect,
    p: &Pipeline,
    s: &Stage,
    r: &Release,
    wave: usize,
    ctx: &Context,
) -> PortResult<EffectOutcome> {
    let digest = r
        .digest
        .clone()
        .ok_or_else(|| PortError::Invalid("release has no digest".into()))?;
    let req = deploy_request(engine, e, p, s, r.id, &digest, wave, ctx).await?;
    let result = retrying(|| engine.ports().deployer.deploy(&req)).await?;
    let mut out = EffectOutcome::success(result.summary).with("image_uri", req.image_uri.clone());
    out.output.extend(result.outputs);
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
async fn rollback(
    engine: &Engine,
    e: &Effect,
    p: &Pipeline,
    s: &Stage,
    wave: usize,
    target: ReleaseId,
    ctx: &Context,
) -> PortResult<EffectOutcome> {
    let digest = ctx
        .releases
        .get(&target)
        .and_then(|t| t.digest.clone())
        .ok_or_else(|| PortError::Invalid(format!("rollback target {target} has no digest")))?;
    let req = deploy_request(engine, e, p, s, target, &digest, wave, ctx).await?;
    let latency = ctx.trigger.as_ref().map(|t| {
        let ms = (engine.now() - t.at).num_milliseconds().max(0);
        let detail = format!(
            "rollback of {} wave {} to {target} called the deployer {ms} ms after alarm {} arrived",
            s.name,
            wave + 1,
            t.alarm
        );
        (ms, detail)
    });
    let result = retrying(|| engine.ports().deployer.rollback(&req)).await;
    // Written after the call, so the disk write is not on the path from alarm to rollback.
    if let Some((_, detail)) = &latency {
        tracing::info!(pipeline = %p.name, stage = %s.name, "{detail}");
        let logged = engine
            .store()
            .log_event(
                &p.name,
                "controller",
                "rollback-latency",
                Some((e.release, s.name.as_str())),
                detail,
                engine.now(),
            )
            .await;
        if let Err(err) = logged {
            tracing::error!(error = %err, "cannot write the rollback latency to the event log");
        }
    }
    let result = result?;
    let mut outcome =
        EffectOutcome::success(format!("restored {target} ({digest}): {}", result.summary))
            .with("image_uri", req.image_uri);
    if let Some((ms, _)) = latency {
        outcome = outcome.with("rollback_latency_ms", ms.to_string());
    }
    Ok(outcome)
}

#[allow(clippy::too_many_arguments)]
async fn deploy_request(
    engine: &Engine,
    e: &Effect,
    p: &Pipeline,
    s: &Stage,
    release: ReleaseId,
    digest: &str,
    wave: usize,
    ctx: &Context,
) -> PortResult<DeployRequest> {
    let target = s
        .targets
        .get(wave)
        .ok_or_else(|| PortError::Invalid(format!("stage has no wave {wave}")))?;
    let account = ctx.account(&target.account)?.clone();
    let promote = PromoteRequest {
        artifact: p.artifact.clone(),
        build_account: ctx.account(&p.artifact.account)?.clone(),
        digest: digest.to_string(),
        stage: s.name.clone(),
        target: target.clone(),
        target_account: account.clone(),
        mode: s.promote,
    };
    let image_uri = retrying(|| engine.ports().artifacts.promote(&promote)).await?;
    Ok(DeployRequest {
        key: e.key.clone(),
        pipeline: p.name.clone(),
        stage: s.name.clone(),
        release,
        target: target.clone(),
        account,
        deploy: s.deploy.clone(),
        image_uri,
        session_name: format!("tollgate-{}-{release}-{}", p.name, s.name),
    })
}

#[allow(clippy::too_many_arguments)]
async fn notify(
    engine: &Engine,
    e: &Effect,
    p: &Pipeline,
    s: &Stage,
    r: &Release,
    event: crate::domain::NotifyEvent,
    ctx: &Context,
) -> PortResult<EffectOutcome> {
    let Some(topic) = &p.notifications.topic else {
        return Ok(EffectOutcome::success("no notification topic configured"));
    };
    let reason = ctx
        .run
        .as_ref()
        .map(|run| run.reason.clone())
        .unwrap_or_default();
    let (subject, body) =
        messages::notification(p, s, r, event, &reason, &ctx.history, &ctx.public_url);
    let msg = Message {
        key: e.key.clone(),
        topic: topic.clone(),
        subject,
        body,
        attributes: BTreeMap::new(),
    };
    let id = retrying(|| engine.ports().notifier.publish(&msg)).await?;
    Ok(EffectOutcome::success(format!("published message {id}")))
}

#[allow(clippy::too_many_arguments)]
async fn report(
    engine: &Engine,
    e: &Effect,
    p: &Pipeline,
    s: &Stage,
    r: &Release,
    state: crate::domain::ReportState,
    ctx: &Context,
) -> PortResult<EffectOutcome> {
    let description = ctx
        .run
        .as_ref()
        .map(|run| run.reason.clone())
        .unwrap_or_default();
    let rep = DeploymentReport {
        key: e.key.clone(),
        pipeline: p.name.clone(),
        repository: p.source.repository.clone(),
        sha: r.sha.clone(),
        release: r.id,
        environment: s.name.clone(),
        state,
        description,
        log_url: format!(
            "{}/ui/pipelines/{}/releases/{}",
            ctx.public_url, p.name, r.id.0
        ),
    };
    let forge = &engine.ports().forge;
    if !forge.enabled() {
        return Ok(EffectOutcome::success(format!(
            "{} not reported: GitHub reporting is off (no token)",
            state.as_str()
        )));
    }
    retrying(|| forge.report(&rep)).await?;
    Ok(EffectOutcome::success(format!(
        "reported {} to GitHub",
        state.as_str()
    )))
}

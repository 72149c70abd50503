//! The ingest API: the one way a fact enters the store.
//!
//! Owns recording facts from outside — releases, approvals, alarms, pauses, rollback and retry
//! requests, overrides, acknowledged deliveries and audit entries — each in one transaction
//! with its delivery's dedupe and its event-log entry, then waking the pipeline. The HTTP
//! routes, the GitHub intake, the SNS intake and the CLI's control commands all come through
//! here; the engine ([`super::Engine`]) dereferences to it.
//!
//! Must never: decide what happens next (a fact is recorded; the planner decides), perform a
//! side effect, or accept a fact for a pipeline or stage the configuration in force lacks.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use tokio::sync::Notify;

use super::clock::Clock;
use super::facts::*;
use super::{EngineError, EngineResult, SharedConfig};
use crate::config::{Config, Pipeline};
use crate::domain::{Contributor, Release, ReleaseId, StageName, retry::retry_from};
use crate::store::{AppliedConfig, EventNote, PushLink, Reads, Store};

/// The wake-up signal of each pipeline's reconcile loop.
#[derive(Default)]
pub(super) struct Wakers(Mutex<HashMap<String, Arc<Waker>>>);

impl Wakers {
    pub(super) fn get(&self, pipeline: &str) -> Arc<Waker> {
        let mut w = self.0.lock().unwrap_or_else(|e| e.into_inner());
        w.entry(pipeline.to_string()).or_default().clone()
    }
}

/// One pipeline's wake-up signal, and when the earliest wake-up not yet answered by a
/// reconcile was given (the start of the reconcile lag, [`crate::metrics`]).
#[derive(Default)]
pub(super) struct Waker {
    notify: Notify,
    since: Mutex<Option<std::time::Instant>>,
}

impl Waker {
    fn wake(&self) {
        self.since
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert_with(std::time::Instant::now);
        self.notify.notify_one();
    }

    /// Waits for the next wake-up.
    pub(super) async fn notified(&self) {
        self.notify.notified().await;
    }

    /// The earliest wake-up not answered yet, which the reconcile starting now answers.
    pub(super) fn take(&self) -> Option<std::time::Instant> {
        self.since.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// The webhook deliveries being received in this process, which the reconcile loops let finish
/// before they start ([`Ingest::receiving`], [`Ingest::until_quiet`]).
#[derive(Default)]
pub(super) struct Receiving {
    count: AtomicUsize,
    quiet: Notify,
}

impl Receiving {
    fn start(self: &Arc<Self>) -> ReceivingGuard {
        self.count.fetch_add(1, Ordering::AcqRel);
        ReceivingGuard(self.clone())
    }

    async fn until_quiet(&self, most: std::time::Duration) {
        let deadline = tokio::time::Instant::now() + most;
        loop {
            let quiet = self.quiet.notified();
            tokio::pin!(quiet);
            quiet.as_mut().enable();
            if self.count.load(Ordering::Acquire) == 0 {
                return;
            }
            tokio::select! {
                () = quiet => {}
                () = tokio::time::sleep_until(deadline) => return,
            }
        }
    }
}

/// A delivery being received; dropping it ends that.
pub struct ReceivingGuard(Arc<Receiving>);

impl Drop for ReceivingGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.quiet.notify_waiters();
        }
    }
}

/// Records facts and wakes the pipelines they concern. Cheap to clone.
#[derive(Clone)]
pub struct Ingest {
    store: Store,
    config: SharedConfig,
    clock: Arc<dyn Clock>,
    wakers: Arc<Wakers>,
    receiving: Arc<Receiving>,
}

/// What became of a `tollgate retry` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetryVerdict {
    /// Recorded; as things stand the release goes again from this stage.
    From(String),
    /// Recorded, and as things stand it will be refused (and logged) for this reason.
    Refused(String),
    /// The same delivery was recorded before: nothing changed.
    Duplicate,
}

impl Ingest {
    /// An ingest API over `store` without a reconcile loop in this process (the CLI): a running
    /// controller picks the facts up when it next looks.
    pub fn new(store: Store, config: SharedConfig, clock: Arc<dyn Clock>) -> Ingest {
        Self::with_wakers(store, config, clock, Arc::default())
    }

    pub(super) fn with_wakers(
        store: Store,
        config: SharedConfig,
        clock: Arc<dyn Clock>,
        wakers: Arc<Wakers>,
    ) -> Ingest {
        Ingest {
            store,
            config,
            clock,
            wakers,
            receiving: Arc::default(),
        }
    }

    /// Marks a webhook delivery as being received until the guard is dropped: the reconcile
    /// loops of this process hold back (at most [`super::YIELD_TO_INTAKE`]) until none is, so
    /// the deploys a burst of deliveries starts do not compete with the rest of the burst for
    /// the CPU and the store's writer. Recording is never delayed: a fact is written and its
    /// pipeline woken as before; only the reconcile that answers the wake-up waits.
    pub fn receiving(&self) -> ReceivingGuard {
        self.receiving.start()
    }

    /// Waits until no delivery is being received, or `most` has passed.
    pub(super) async fn until_quiet(&self, most: std::time::Duration) {
        self.receiving.until_quiet(most).await;
    }

    pub(super) fn store(&self) -> &Store {
        &self.store
    }

    pub(super) fn wakers(&self) -> &Arc<Wakers> {
        &self.wakers
    }

    pub(super) fn config_cell(&self) -> &SharedConfig {
        &self.config
    }

    /// The store's read-only face (pages, the CLI, tests).
    pub fn reads(&self) -> &Reads {
        self.store.reads()
    }

    /// The configuration in force.
    pub fn config(&self) -> Arc<Config> {
        self.config
            .read()
            .map(|c| c.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// Asks the pipeline's reconciler to look again (never lost: a pending wake is kept).
    pub fn wake(&self, pipeline: &str) {
        self.wakers.get(pipeline).wake();
    }

    pub(super) fn pipeline(&self, name: &str) -> EngineResult<Pipeline> {
        self.config()
            .pipeline(name)
            .cloned()
            .ok_or_else(|| EngineError::UnknownPipeline(name.to_string()))
    }

    /// `UnknownPipeline` or `UnknownStage` unless the configuration in force has both.
    pub fn check_stage(&self, pipeline: &str, stage: &str) -> EngineResult<()> {
        let p = self.pipeline(pipeline)?;
        if p.stage(stage).is_none() {
            return Err(EngineError::UnknownStage {
                pipeline: pipeline.into(),
                stage: stage.into(),
            });
        }
        Ok(())
    }

    /// A new release for a pipeline (from a push or a successful build).
    pub async fn record_release(
        &self,
        r: &NewRelease,
        d: &Delivery,
    ) -> EngineResult<Ingested<ReleaseId>> {
        let p = self.pipeline(&r.pipeline)?;
        self.record_release_in(&p, r, d).await
    }

    /// [`Ingest::record_release`] for `p` (see [`Ingest::record_release_after_in`]).
    pub async fn record_release_in(
        &self,
        p: &Pipeline,
        r: &NewRelease,
        d: &Delivery,
    ) -> EngineResult<Ingested<ReleaseId>> {
        let stages: Vec<StageName> = p.stages.iter().map(|s| s.name.clone()).collect();
        let out = self.store.record_release(r, &stages, d, self.now()).await?;
        self.wake(&r.pipeline);
        Ok(out)
    }

    /// [`Ingest::record_release`], only while the pipeline's newest release is still `newest`:
    /// `None` when another was recorded meanwhile (decide again). `push`, the link of the push
    /// that brought it, is recorded in the same write ([`Ingest::record_push`]).
    pub async fn record_release_after(
        &self,
        r: &NewRelease,
        d: &Delivery,
        newest: Option<ReleaseId>,
        push: Option<&PushLink>,
    ) -> EngineResult<Option<Ingested<ReleaseId>>> {
        let p = self.pipeline(&r.pipeline)?;
        self.record_release_after_in(&p, r, d, newest, push).await
    }

    /// [`Ingest::record_release_after`] for `p`, which need not be in the configuration in
    /// force: a pipeline of the applied commit a controller standing by waits to follow (its
    /// runs are those of `p`'s stages).
    pub async fn record_release_after_in(
        &self,
        p: &Pipeline,
        r: &NewRelease,
        d: &Delivery,
        newest: Option<ReleaseId>,
        push: Option<&PushLink>,
    ) -> EngineResult<Option<Ingested<ReleaseId>>> {
        let stages: Vec<StageName> = p.stages.iter().map(|s| s.name.clone()).collect();
        let now = self.now();
        let out = (self.store)
            .record_release_after(r, &stages, d, now, Some(newest), push)
            .await?;
        if out.is_some() {
            self.wake(&r.pipeline);
        }
        Ok(out)
    }

    /// Records a push's `before → after` link of its branch's history.
    pub async fn record_push(&self, push: &PushLink) -> EngineResult<()> {
        Ok(self.store.record_push(push, self.now()).await?)
    }

    /// An approval or rejection (the caller has authenticated the approver).
    pub async fn record_approval(
        &self,
        a: &NewApproval,
        d: &Delivery,
    ) -> EngineResult<Ingested<()>> {
        self.check_stage(&a.pipeline, &a.stage)?;
        let out = self.store.record_approval(a, d, self.now()).await?;
        self.wake(&a.pipeline);
        Ok(out)
    }

    /// Adds the authors and mergers of a release's pull requests to its contributors (they
    /// were looked up on GitHub); returns the release as it is now.
    pub async fn record_pull_contributors(
        &self,
        release: ReleaseId,
        people: &[Contributor],
    ) -> EngineResult<Option<Release>> {
        Ok(self.store.add_pull_contributors(release, people).await?)
    }

    /// The people a `push` of `sha` names, kept for the release its build makes later.
    pub async fn record_push_contributors(
        &self,
        sha: &str,
        people: &[Contributor],
    ) -> EngineResult<()> {
        Ok(self
            .store
            .record_push_contributors(sha, people, self.now())
            .await?)
    }

    /// A CloudWatch alarm notification for a stage.
    ///
    /// A change to ALARM whose state change falls in no watch window of the stage (no deploy,
    /// post-deploy test or bake of it was running then: a replay, or a change from long ago) is
    /// recorded as `alarm-ignored`: it changes nothing, and the log says so.
    pub async fn record_alarm(&self, a: &NewAlarm, d: &Delivery) -> EngineResult<Ingested<()>> {
        self.check_stage(&a.pipeline, &a.stage)?;
        let now = self.now();
        let watched = !a.firing || self.watched(a, now).await?;
        let out = self.store.record_alarm(a, d, now, watched).await?;
        self.wake(&a.pipeline);
        Ok(out)
    }

    /// Whether some run of the alarm's stage was watching when its state changed.
    async fn watched(&self, a: &NewAlarm, now: DateTime<Utc>) -> EngineResult<bool> {
        let at = a.changed_at.unwrap_or(now);
        let lead =
            chrono::Duration::from_std(crate::domain::plan::ALARM_GATE_FRESH).unwrap_or_default();
        Ok(self
            .store
            .stage_watched(&a.pipeline, &a.stage, at, lead)
            .await?)
    }

    /// Records the configuration applied from a commit of the configuration repository.
    pub async fn record_applied_config(&self, applied: &AppliedConfig) -> EngineResult<()> {
        Ok(self.store.record_applied_config(applied).await?)
    }

    /// A delivery that records no fact (ignored, or refused with `note` in the event log):
    /// its dedupe and its event-log entry in one transaction.
    pub async fn acknowledge(
        &self,
        d: &Delivery,
        note: Option<&EventNote>,
    ) -> EngineResult<Ingested<()>> {
        Ok(self.store.record_delivery(d, note, self.now()).await?)
    }

    /// Appends an entry to a pipeline's event log, about the pipeline as a whole (`scope`
    /// None) or about one release in one stage.
    pub async fn log_event(
        &self,
        pipeline: &str,
        actor: &str,
        kind: &str,
        scope: Option<(ReleaseId, &str)>,
        detail: &str,
    ) -> EngineResult<()> {
        Ok(self
            .store
            .log_event(pipeline, actor, kind, scope, detail, self.now())
            .await?)
    }

    /// Writes a configuration change (applied, refused, or put in force by a controller taking
    /// the lead) to the event log of every pipeline of `configs` (the one in force before it
    /// and, once applied, the new one: a pipeline it adds or removes has the entry too), once
    /// each, as `actor`. A pipeline whose log cannot be written is logged and skipped.
    pub async fn note_config(&self, configs: &[&Config], actor: &str, detail: &str) {
        let names: std::collections::BTreeSet<&str> = configs
            .iter()
            .flat_map(|c| c.pipelines.iter().map(|p| p.name.as_str()))
            .collect();
        for name in names {
            let logged = self.log_event(name, actor, "config", None, detail).await;
            if let Err(e) = logged {
                tracing::error!(pipeline = %name, error = %e, "cannot write the event log");
            }
        }
    }

    /// Claims an `Idempotency-Key` of an API request (see [`crate::store::keys`]).
    pub async fn claim_idempotency(
        &self,
        req: &crate::store::keys::IdempotentRequest<'_>,
    ) -> EngineResult<crate::store::keys::Claim> {
        Ok(self.store.claim_idempotency(req, self.now()).await?)
    }

    /// Keeps the first answer of a claimed API request; `None` drops the claim (the request
    /// failed without an answer worth repeating, and may run again).
    pub async fn finish_idempotency(
        &self,
        key_name: &str,
        idempotency_key: &str,
        answer: Option<(u16, &str)>,
    ) -> EngineResult<()> {
        match answer {
            Some((status, body)) => {
                self.store
                    .complete_idempotency(key_name, idempotency_key, status, body)
                    .await?;
            }
            None => {
                self.store
                    .release_idempotency(key_name, idempotency_key)
                    .await?;
            }
        }
        Ok(())
    }

    /// Pauses a pipeline (stage None) or a stage: nothing new starts there.
    pub async fn pause(
        &self,
        pipeline: &str,
        stage: Option<&str>,
        reason: &str,
        actor: &str,
    ) -> EngineResult<()> {
        self.set_paused(pipeline, stage, Some(reason), actor).await
    }

    /// Resumes a paused pipeline or stage.
    pub async fn resume(
        &self,
        pipeline: &str,
        stage: Option<&str>,
        actor: &str,
    ) -> EngineResult<()> {
        self.set_paused(pipeline, stage, None, actor).await
    }

    async fn set_paused(
        &self,
        pipeline: &str,
        stage: Option<&str>,
        reason: Option<&str>,
        actor: &str,
    ) -> EngineResult<()> {
        match stage {
            Some(s) => self.check_stage(pipeline, s)?,
            None => drop(self.pipeline(pipeline)?),
        }
        self.store
            .set_paused(pipeline, stage, reason, actor, self.now())
            .await?;
        self.wake(pipeline);
        Ok(())
    }

    /// Rolls a stage back to its previous known-good release.
    pub async fn request_rollback(
        &self,
        pipeline: &str,
        stage: &str,
        actor: &str,
        d: &Delivery,
    ) -> EngineResult<Ingested<()>> {
        self.check_stage(pipeline, stage)?;
        let out = self
            .store
            .request_rollback(pipeline, stage, actor, d, self.now())
            .await?;
        self.wake(pipeline);
        Ok(out)
    }

    /// Asks for a stopped release to go again. The planner decides (and logs) whether it
    /// does; the verdict returned is the same rule applied to the state as it is now.
    pub async fn request_retry(
        &self,
        pipeline: &str,
        release: ReleaseId,
        actor: &str,
        d: &Delivery,
    ) -> EngineResult<RetryVerdict> {
        let p = self.pipeline(pipeline)?;
        let recorded = self
            .store
            .request_retry(pipeline, release, actor, d, self.now())
            .await?;
        let Some(out) = recorded else {
            return Ok(RetryVerdict::Refused(format!(
                "pipeline {pipeline} has no release {release}"
            )));
        };
        if out == Ingested::Duplicate {
            return Ok(RetryVerdict::Duplicate);
        }
        // The verdict is read before the pipeline is woken, so it sees the state the planner
        // will decide on, not the retry already applied.
        let stages: Vec<StageName> = p.stages.iter().map(|s| s.name.clone()).collect();
        let since = self.now() - chrono::Duration::days(7);
        let snap = self.store.snapshot(pipeline, &stages, since).await?;
        self.wake(pipeline);
        Ok(match retry_from(&p, &snap, release) {
            Ok(stage) => RetryVerdict::From(stage.to_string()),
            Err(why) => RetryVerdict::Refused(why),
        })
    }

    /// Sets an explicit, logged override on a release. False when the release is not one of
    /// `pipeline`'s.
    pub async fn set_override(
        &self,
        pipeline: &str,
        release: ReleaseId,
        which: Override,
        reason: &str,
        actor: &str,
    ) -> EngineResult<bool> {
        drop(self.pipeline(pipeline)?);
        let set = self
            .store
            .set_override(pipeline, release, which, reason, actor, self.now())
            .await?;
        self.wake(pipeline);
        Ok(set)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// A reconcile woken during a burst of deliveries starts once the last of them is
    /// answered, and never later than its bound while deliveries keep arriving.
    #[tokio::test(start_paused = true)]
    async fn a_woken_reconcile_waits_for_the_deliveries_being_received_within_its_bound() {
        let receiving = Arc::new(Receiving::default());
        let start = tokio::time::Instant::now();
        receiving.until_quiet(Duration::from_millis(100)).await;
        assert_eq!(start.elapsed(), Duration::ZERO, "nothing received: at once");

        let (first, second) = (receiving.start(), receiving.start());
        let r = receiving.clone();
        let waiting = tokio::spawn(async move {
            r.until_quiet(Duration::from_millis(100)).await;
            start.elapsed()
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        drop(first);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            !waiting.is_finished(),
            "one delivery is still being received"
        );
        drop(second);
        assert_eq!(waiting.await.unwrap(), Duration::from_millis(30));

        let _endless = receiving.start();
        let bounded = tokio::time::Instant::now();
        receiving.until_quiet(Duration::from_millis(100)).await;
        assert_eq!(bounded.elapsed(), Duration::from_millis(100));
    }
}

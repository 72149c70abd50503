//! What a controller does with its configuration when it takes the leader lease, before it
//! acts ([`super::leader::Standing::Taking`]).
//!
//! A standby checked its configuration only at its own start-up. By the time it takes the
//! lease the leader may have begun deploys under the leader's configuration (a rolling
//! upgrade can give the two different files), and may have applied a newer configuration from
//! the configuration repository, which the standby never loaded. So on taking (or retaking) the
//! lease a controller first finds the configuration in force as the state says
//! ([`ConfigSource`]: a newer applied repository configuration wins, as at start-up), then
//! checks it against the work in flight ([`Engine::refuse_config`]), and only then puts it in
//! force and acts.
//!
//! Guarantees:
//! - No reconcile, effect or pruning runs before the check has passed: until then the
//!   controller is taking the lead, which does not act ([`super::Leadership::may_act`]).
//! - A configuration that is refused is never acted with. When one this process ran passes
//!   (the one in force, or one it ran before following the commit refused), it acts with that
//!   one and keeps it, as a leader keeps its configuration over a refused commit. Else it
//!   declines the lead,
//!   gives the lease up at once (another controller, whose configuration keeps the work in
//!   flight where it began, takes it over), and tries again only after a whole lease
//!   ([`Engine::hold_lease`]). Declining is written to the log (error), to every pipeline's
//!   event log (a `config` entry, once per reason), and to the `tollgate_lead_declined` gauge.
//!   This is the refusal a controller started with that configuration would meet at start-up.
//! - A configuration put in force on taking the lead that differs from the one this process
//!   ran (another source: another applied commit, or the file) gets a `config` entry too.
//! - Every controller follows the configuration applied from the configuration repository,
//!   whichever controller applied it (the one a push to the repository reached): at each lease
//!   claim it looks at the commit recorded ([`Engine::follow_applied`]) and, when it changed,
//!   puts the configuration in force as at start-up. The leader does so only once the
//!   configuration passes [`Engine::refuse_config`]: refused, it acts on with the one it has,
//!   logs an error, writes a `config` entry (once per reason) and tries again at each claim.
//! - A standby follows what the leader acts with, not merely the newest commit: it records
//!   facts by its configuration (an SNS alarm is matched against its stages' alarms, accounts
//!   and regions, a push against its pipelines), so a commit the leader keeps its
//!   configuration over must not decide them. The leader records what it acts with
//!   ([`Engine::record_acting`]: the applied commit, or its file, with its epoch, in
//!   [`crate::store::leader_config`]) at each claim where that changed; a standby puts an
//!   applied commit in force only once the live leader's record at the lease's epoch names it
//!   (with no live lease it waits for the next leader's record: whoever takes the lease checks
//!   the commit first, above, and may keep another configuration over it). Until then it keeps
//!   its configuration, and says why in its log once per commit. A standby that received the push itself only records the commit
//!   ([`crate::github::intake::apply_config_change`]) and follows it the same way.
//! - The sole controller (no lease) is unaffected: it puts a commit in force as it applies it.
//!
//! Caveats: when every controller's configuration is refused, none acts (nothing deploys,
//! nothing rolls back) until the runs' configuration is restored on one of them (SIGHUP with
//! the file they began under, or a controller started with it) or those runs are otherwise
//! done. Like a reload's, the check and the change hold back the start of effects
//! ([`Engine::hold_starts`]); a commit a standby applied, checked there against the state it
//! read, is checked again by the leader before the leader follows it. The leader records what
//! it acts with at its claims, and a standby follows the record at its own: for up to two
//! claims after the leader puts a commit in force, the standby still records facts by the
//! configuration before it. A pipeline a commit adds is
//! in force on a standby only once the leader acts with the commit; meanwhile its pushes and
//! builds are decided by the commit (`github::intake`), so none is lost.
//! A leader of an earlier version records nothing: standbys wait for it. A standby started
//! while the leader keeps its configuration over the applied commit starts with the commit, as
//! at start-up (it cannot know the leader's file, or an earlier commit whose files the state no
//! longer holds), and waits for the leader before it follows a newer one.

use async_trait::async_trait;

use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::Engine;
use super::leader::Standing;
use crate::config::{Config, ConfigCommit};
use crate::store::Reads;
use crate::store::leader_config::{ActsWith, LeaderConfig};
use crate::store::lease::Lease;

/// What the lease loop keeps between claims about the configuration applied from the
/// configuration repository ([`Engine::follow_applied`], [`Engine::record_acting`]).
#[derive(Default)]
pub(super) struct Following {
    /// The applied commit this controller last followed, and the configuration in force after
    /// it (its source file).
    followed: Option<(ConfigCommit, std::path::PathBuf)>,
    /// The applied commit this controller, standing by, waits to follow until the leader acts
    /// with it: logged once.
    waiting: Option<ConfigCommit>,
    /// What this controller, leading, last recorded it acts with, and at which epoch.
    recorded: Option<(i64, ActsWith)>,
}

/// Where a controller taking the lead finds the configuration to act with, given the one this
/// process runs (`current`): the configuration in force and, when it does not come from
/// `current` or `current` was passed over, a note on where it comes from.
#[async_trait]
pub trait ConfigSource: Send + Sync {
    /// Err: a configuration the state says is in force cannot be used here, and why.
    async fn in_force(
        &self,
        reads: &Reads,
        current: Config,
    ) -> Result<(Config, Option<String>), String>;

    /// `config` is about to be put in force: what else follows the configuration (the GitHub
    /// forge's pipelines) learns it here.
    fn putting_in_force(&self, _config: &Config) {}
}

impl Engine {
    /// Finds the configuration in force with `source` when this controller takes the lead and
    /// when it follows a commit another controller applied (without one: it takes the lead
    /// with the configuration this process runs, and follows nothing). Set before
    /// [`Engine::spawn`].
    pub fn take_lead_with(&self, source: std::sync::Arc<dyn ConfigSource>) {
        if self.inner.config_source.set(source).is_err() {
            tracing::warn!("the configuration source for taking the lead was set already");
        }
    }

    /// Whether this controller keeps the configuration it runs over the one applied from the
    /// configuration repository (refused while it leads, or unusable here), until it follows
    /// one.
    pub fn keeps_config(&self) -> bool {
        self.inner
            .kept
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// Why this controller declines the lead, while it does: where the configuration it would
    /// act with comes from, and why it is refused.
    pub fn lead_declined(&self) -> Option<String> {
        self.inner
            .declined
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Having just taken the lease at `epoch`: checks the configuration in force against the
    /// work in flight and, if it passes, puts it in force and acts; if not, declines the lead
    /// and gives the lease up. True when this controller now acts.
    pub(super) async fn take_lead(&self, epoch: i64) -> bool {
        let current = self.config();
        let (config, note) = match self.inner.config_source.get() {
            Some(source) => match source.in_force(self.reads(), (*current).clone()).await {
                Ok(found) => found,
                // Checked like any other: it acts with the one it runs if that passes.
                Err(why) => {
                    tracing::warn!("taking the lead with the configuration it runs: {why}");
                    let note = format!("{why}; the configuration this controller runs");
                    ((*current).clone(), Some(note))
                }
            },
            None => ((*current).clone(), None),
        };
        // No effect starts while Taking; held all the same, as every change is.
        let held = self.hold_starts().await;
        // A change this process put in force while the state was read (a SIGHUP reload; a
        // push received while taking the lead is only recorded, and followed after) is newer
        // than what it read: that is the configuration to check.
        let (current, config, note) = match self.config() {
            now if Arc::ptr_eq(&now, &current) => (current, config, note),
            now => (now.clone(), (*now).clone(), None),
        };
        if let Some(why) = self.refuse_config(&config).await {
            let from = note.unwrap_or_else(|| format!("from {}", config.source_file.display()));
            // One this process ran may still pass: the one it acts with (a leader that kept it
            // over a commit refused for a run it began, and lost the lease for a moment), or
            // one it ran before following that commit (a standby, now replacing the leader
            // that kept it). It acts with that one and keeps it, as the leader it replaces did:
            // declining would leave the run, and every other stage, with no controller.
            if let Some(kept) = self.passing_earlier(&config, &current).await {
                if !Arc::ptr_eq(&kept, &current) {
                    tracing::warn!(
                        "taking the lead with a configuration this controller ran before: {}",
                        kept.source_file.display()
                    );
                    self.put_in_force((*kept).clone(), &held);
                }
                drop(held);
                self.led_again();
                self.keep_config(&kept, &from, &why).await;
                return self.inner.leadership.act(epoch);
            }
            drop(held);
            self.decline_lead(epoch, &current, &from, &why).await;
            return false;
        }
        self.led_again();
        if config.source_file != current.source_file {
            let detail = format!(
                "this controller took the lead (epoch {epoch}) and put a configuration in force other than the one it ran ({}): {}",
                current.source_file.display(),
                note.as_deref().unwrap_or("the configuration from its file")
            );
            tracing::warn!("{detail}");
            let after = config.clone();
            // Before it acts: every loop waits for `act` below.
            self.put_in_force(config, &held);
            drop(held);
            self.note_config(&[&current, &after], "controller", &detail)
                .await;
        }
        self.inner.leadership.act(epoch)
    }

    /// Puts in force the configuration applied from the configuration repository since the
    /// commit this controller last followed (`f`), if it changed: on the leader once it passes
    /// [`Engine::refuse_config`] (refused: it is tried again at the next claim); on a standby
    /// once the live leader records that it acts with it.
    pub(super) async fn follow_applied(&self, f: &mut Following) {
        let Some(source) = self.inner.config_source.get() else {
            return;
        };
        let version = match self.reads().applied_config_version().await {
            Ok(Some(version)) => version,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the applied configuration");
                return;
            }
        };
        // Followed already, and still in force: a configuration put in force since by other
        // means (taking the lead with one it ran before, a push received) looks again.
        let current = self.config();
        if f.followed
            .as_ref()
            .is_some_and(|(v, source)| *v == version && *source == current.source_file)
        {
            return;
        }
        // A standby records facts (alarms, pushes) by its configuration: by the leader's, not
        // by a commit the leader keeps its configuration over.
        if !self.inner.leadership.may_act() && !self.leader_acts_with(&version, f).await {
            return;
        }
        let (config, note) = match source.in_force(self.reads(), (*current).clone()).await {
            Ok(found) => found,
            // Not marked as followed: tried again at the next claim.
            Err(why) => return self.cannot_follow(&current, &why).await,
        };
        // A newer commit recorded between the two reads: not the one checked above (a standby
        // may follow only what the leader acts with); looked at again at the next claim.
        if config.applied_from.as_ref().is_some_and(|c| *c != version) {
            return;
        }
        if config.source_file != current.source_file {
            let from = note.unwrap_or_else(|| format!("from {}", config.source_file.display()));
            let held = self.hold_starts().await;
            // A change put in force meanwhile (a push this process received) is newer than
            // the commit read: nothing is followed now (never backwards), and the commit
            // recorded is looked at again at the next claim.
            if !Arc::ptr_eq(&self.config(), &current) {
                return;
            }
            if self.inner.leadership.may_act()
                && let Some(why) = self.refuse_config(&config).await
            {
                drop(held);
                return self.keep_config(&current, &from, &why).await;
            }
            tracing::info!("configuration applied by another controller followed: {from}");
            let after = config.clone();
            self.put_in_force(config, &held);
            drop(held);
            // The leader's event log says when a commit another controller applied took
            // effect (followers say nothing: they act with it only once they lead).
            if self.inner.leadership.may_act() {
                let detail = format!(
                    "the leader {} put in force the configuration another controller applied: {from}",
                    self.inner.leadership.holder()
                );
                self.note_config(&[&current, &after], "controller", &detail)
                    .await;
            }
        }
        *self.inner.kept.lock().unwrap_or_else(|p| p.into_inner()) = None;
        f.waiting = None;
        f.followed = Some((version, self.config().source_file.clone()));
    }

    /// Whether this controller, standing by, may follow the applied commit `applied` now (see
    /// [`may_follow`]). When it may not, it says so in its log once per commit.
    async fn leader_acts_with(&self, applied: &ConfigCommit, f: &mut Following) -> bool {
        let reads = self.reads();
        let (lease, record) = match (reads.lease().await, reads.leader_config().await) {
            (Ok(lease), Ok(record)) => (lease, record),
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(error = %e, "cannot read what the leader acts with");
                return false;
            }
        };
        let Some(why) = may_follow(applied, lease.as_ref(), record.as_ref(), self.now()) else {
            return true;
        };
        if f.waiting.as_ref() != Some(applied) {
            tracing::info!(
                "the configuration applied from {}@{} is put in force here once the leader acts with it: {why}",
                applied.repository,
                applied.sha
            );
            f.waiting = Some(applied.clone());
        }
        false
    }

    /// Leading: records what this controller acts with (the configuration in force), for the
    /// controllers standing by, when it changed since it last did (`f`) or the epoch did.
    pub(super) async fn record_acting(&self, f: &mut Following) {
        let l = &self.inner.leadership;
        let Standing::Leading { epoch, .. } = l.standing() else {
            return;
        };
        let acts = ActsWith::of(&self.config());
        if !l.may_act() || f.recorded.as_ref() == Some(&(epoch, acts.clone())) {
            return;
        }
        let now = self.now();
        match self
            .store()
            .record_leader_config(l.holder(), epoch, &acts, now)
            .await
        {
            Ok(true) => f.recorded = Some((epoch, acts)),
            // The lease moved meanwhile: whoever holds it records its own.
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "cannot record what the leader acts with"),
        }
    }

    /// Puts `config` in force, telling what else follows the configuration (the GitHub forge's
    /// pipelines) first.
    fn put_in_force(&self, config: Config, held: &super::StartsHeld<'_>) {
        if let Some(source) = self.inner.config_source.get() {
            source.putting_in_force(&config);
        }
        self.replace_config(config, held);
    }

    /// The commit applied cannot be used here (`why`): this controller keeps the configuration
    /// it runs, says so once per reason (log and event log), and tries again at every claim.
    async fn cannot_follow(&self, current: &Config, why: &str) {
        let detail = format!(
            "this controller ({}) keeps the configuration it runs ({}): {why}; it tries again at every lease claim",
            self.inner.leadership.holder(),
            current.source_file.display()
        );
        self.note_kept(current, detail).await;
    }

    /// Logs and notes (once per reason: it is tried again at every claim) why this controller
    /// keeps the configuration it runs.
    async fn note_kept(&self, current: &Config, detail: String) {
        let new = {
            let mut last = self.inner.kept.lock().unwrap_or_else(|p| p.into_inner());
            let new = last.as_deref() != Some(detail.as_str());
            *last = Some(detail.clone());
            new
        };
        if new {
            tracing::error!("{detail}");
            self.note_config(&[current], "controller", &detail).await;
        }
    }

    /// The newest configuration this process ran, other than `refused` (by its source), that
    /// moves nothing in flight: the one in force, else one it ran before.
    async fn passing_earlier(
        &self,
        refused: &Config,
        current: &Arc<Config>,
    ) -> Option<Arc<Config>> {
        let earlier = self
            .inner
            .earlier
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for c in std::iter::once(current.clone()).chain(earlier) {
            if c.source_file != refused.source_file && self.refuse_config(&c).await.is_none() {
                return Some(c);
            }
        }
        None
    }

    /// This controller leads: it no longer declines (the gauge and `/readyz` say so).
    fn led_again(&self) {
        *self
            .inner
            .declined
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = None;
        crate::metrics::global().lead_declined(false);
    }

    /// Another controller leads (it renewed the lease it took): this one's refusal no longer
    /// leaves the stages without a leader, so it no longer counts as declining (the gauge and
    /// `/readyz`); a refusal at its next try is noted again.
    pub(super) fn another_leads(&self) {
        let declined = self
            .inner
            .declined
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if declined.is_some() {
            crate::metrics::global().lead_declined(false);
        }
    }

    /// The leader keeps acting with `current`: the configuration applied since, `from`, is
    /// refused (`why`).
    async fn keep_config(&self, current: &Config, from: &str, why: &str) {
        let detail = format!(
            "the leader keeps the configuration it acts with ({}): the one applied since ({from}) is refused: {why}; \
             it is put in force once that passes",
            current.source_file.display()
        );
        self.note_kept(current, detail).await;
    }

    /// The configuration to act with, `from` (where it comes from), is refused (`why`): this
    /// controller stands by again and releases the lease it took at `epoch`.
    async fn decline_lead(&self, epoch: i64, current: &Config, from: &str, why: &str) {
        let l = &self.inner.leadership;
        l.decline(epoch);
        crate::metrics::global().lead_declined(true);
        let detail = format!(
            "this controller ({}) declined the lead (epoch {epoch}): the configuration it would act with ({from}) is refused: {why}; \
             it stands by and tries again in {} s",
            l.holder(),
            l.ttl().as_secs_f64()
        );
        tracing::error!("{detail}");
        if let Err(e) = self
            .store()
            .release_lease(l.holder(), epoch, self.now())
            .await
        {
            tracing::warn!(error = %e, "cannot release the leader lease; it runs out");
        }
        let reason = format!("{from}: {why}");
        let new = {
            let mut last = self
                .inner
                .declined
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let new = last.as_deref() != Some(reason.as_str());
            *last = Some(reason);
            new
        };
        // Once per reason: a controller declining at every try writes it once.
        if new {
            self.note_config(&[current], "controller", &detail).await;
        }
    }
}

/// Whether a controller standing by may follow the applied commit `applied`, given the lease
/// and what its holder recorded it acts with, at `now`: `None` when the holder of a live lease
/// recorded, at its epoch, that it acts with `applied`; else why not. With no live lease it
/// waits too: whoever takes the lease next checks the commit, may keep another configuration
/// over it, and records which (a standby that followed the commit then would match facts by a
/// configuration nobody acts with, and would not go back).
fn may_follow(
    applied: &ConfigCommit,
    lease: Option<&Lease>,
    record: Option<&LeaderConfig>,
    now: DateTime<Utc>,
) -> Option<String> {
    let Some(lease) = lease.filter(|l| l.expires_at > now) else {
        return Some("no controller holds the lease now".into());
    };
    let leader = format!("the leader {} (epoch {})", lease.holder, lease.epoch);
    let record = record.filter(|r| r.holder == lease.holder && r.epoch == lease.epoch);
    match record.map(|r| &r.acts_with) {
        Some(ActsWith::Applied(c)) if c == applied => None,
        Some(ActsWith::Applied(c)) => Some(format!(
            "{leader} acts with the one applied from {}@{}",
            c.repository, c.sha
        )),
        Some(ActsWith::File) => Some(format!("{leader} acts with its file")),
        None => Some(format!("{leader} has not recorded what it acts with")),
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn at(s: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 1, 9, 0, 0).unwrap() + chrono::Duration::seconds(s)
    }

    fn commit(sha: &str) -> ConfigCommit {
        ConfigCommit {
            repository: "acme/config".into(),
            sha: sha.repeat(20).into(),
        }
    }

    fn lease(holder: &str, epoch: i64, expires: i64) -> Lease {
        Lease {
            holder: holder.into(),
            epoch,
            acquired_at: at(0),
            renewed_at: at(0),
            expires_at: at(expires),
        }
    }

    fn record(holder: &str, epoch: i64, acts_with: ActsWith) -> LeaderConfig {
        LeaderConfig {
            holder: holder.into(),
            epoch,
            acts_with,
            recorded_at: at(0),
        }
    }

    #[test]
    fn a_standby_follows_a_commit_once_the_live_leader_acts_with_it() {
        let y = commit("b5");
        let live = lease("a", 2, 10);
        let acts = |with| Some(record("a", 2, with));
        let follows = |r: Option<LeaderConfig>| may_follow(&y, Some(&live), r.as_ref(), at(5));
        assert_eq!(follows(acts(ActsWith::Applied(y.clone()))), None);
        let kept = follows(acts(ActsWith::File)).unwrap();
        assert!(
            kept.contains("the leader a (epoch 2) acts with its file"),
            "{kept}"
        );
        let earlier = follows(acts(ActsWith::Applied(commit("a4")))).unwrap();
        assert!(
            earlier.contains(&format!("acme/config@{}", "a4".repeat(20))),
            "{earlier}"
        );
        // Recorded at an earlier epoch, or by another holder: it says nothing of the leader now.
        let stale = follows(Some(record("a", 1, ActsWith::Applied(y.clone())))).unwrap();
        assert!(stale.contains("has not recorded"), "{stale}");
        let other = follows(Some(record("b", 2, ActsWith::Applied(y.clone()))));
        assert!(other.is_some());
        assert!(follows(None).is_some());
    }

    #[test]
    fn a_standby_waits_for_the_next_leader_when_none_leads() {
        let y = commit("b5");
        let acts = record("a", 2, ActsWith::Applied(y.clone()));
        let none = may_follow(&y, None, None, at(5)).unwrap();
        assert!(none.contains("no controller holds the lease"), "{none}");
        let expired = lease("a", 2, 5);
        let lapsed = may_follow(&y, Some(&expired), Some(&acts), at(5)).unwrap();
        assert!(lapsed.contains("no controller holds the lease"), "{lapsed}");
        assert_eq!(may_follow(&y, Some(&expired), Some(&acts), at(4)), None);
    }
}

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
//!   puts the configuration in force as at start-up. A standby does so at once (its intake and
//!   pages follow it; it is checked again before it acts); the leader only once the
//!   configuration passes [`Engine::refuse_config`]: refused, it acts on with the one it has,
//!   logs an error, writes a `config` entry (once per reason) and tries again at each claim.
//!
//! Caveats: when every controller's configuration is refused, none acts (nothing deploys,
//! nothing rolls back) until the runs' configuration is restored on one of them (SIGHUP with
//! the file they began under, or a controller started with it) or those runs are otherwise
//! done. Like a reload's, the check and the change hold back the start of effects
//! ([`Engine::hold_starts`]); a commit a standby applied, checked there against the state it
//! read, is checked again by the leader before the leader follows it.

use async_trait::async_trait;

use std::sync::Arc;

use super::Engine;
use crate::config::Config;
use crate::store::Reads;

/// The applied commit a controller last followed, and the configuration in force after it (its
/// source file).
pub(super) struct Followed {
    version: Option<(String, String)>,
    source: std::path::PathBuf,
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
        // A change this process put in force while the state was read (a push it received)
        // is newer than what it read: that is the configuration to check.
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

    /// Puts in force the configuration applied from the configuration repository since `seen`
    /// (the commit this controller last followed), if it changed: at once on a standby, once
    /// it passes [`Engine::refuse_config`] on the leader (refused: `seen` stays, so it is
    /// tried again at the next claim).
    pub(super) async fn follow_applied(&self, seen: &mut Option<Followed>) {
        let Some(source) = self.inner.config_source.get() else {
            return;
        };
        let version = match self.reads().applied_config_version().await {
            Ok(Some((repo, sha))) => Some((repo, sha.to_string())),
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the applied configuration");
                return;
            }
        };
        // Followed already, and still in force: a configuration put in force since by other
        // means (taking the lead with one it ran before, a push received) looks again.
        let current = self.config();
        if seen
            .as_ref()
            .is_some_and(|f| f.version == version && f.source == current.source_file)
        {
            return;
        }
        let (config, note) = match source.in_force(self.reads(), (*current).clone()).await {
            Ok(found) => found,
            // Not marked as followed: tried again at the next claim.
            Err(why) => return self.cannot_follow(&current, &why).await,
        };
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
            self.put_in_force(config, &held);
        }
        *self.inner.kept.lock().unwrap_or_else(|p| p.into_inner()) = None;
        *seen = Some(Followed {
            version,
            source: self.config().source_file.clone(),
        });
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

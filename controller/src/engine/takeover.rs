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
//! - A configuration that is refused is never acted with: the controller declines the lead,
//!   gives the lease up at once (another controller, whose configuration keeps the work in
//!   flight where it began, takes it over), and tries again only after a whole lease
//!   ([`Engine::hold_lease`]). Declining is written to the log (error), to every pipeline's
//!   event log (a `config` entry, once per reason), and to the `tollgate_lead_declined` gauge.
//!   This is the refusal a controller started with that configuration would meet at start-up.
//! - A configuration put in force on taking the lead that differs from the one this process
//!   ran (another source: another applied commit, or the file) gets a `config` entry too.
//!
//! Caveats: when every controller's configuration is refused, none acts (nothing deploys,
//! nothing rolls back) until the runs' configuration is restored on one of them (SIGHUP with
//! the file they began under, or a controller started with it).

use async_trait::async_trait;

use super::Engine;
use crate::config::Config;
use crate::store::Reads;

/// Where a controller taking the lead finds the configuration to act with, given the one this
/// process runs (`current`): the configuration in force and, when it does not come from
/// `current` or `current` was passed over, a note on where it comes from.
#[async_trait]
pub trait ConfigSource: Send + Sync {
    async fn in_force(&self, reads: &Reads, current: Config) -> (Config, Option<String>);
}

impl Engine {
    /// Finds the configuration in force with `source` when this controller takes the lead
    /// (without one: the configuration this process runs). Set before [`Engine::spawn`].
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
            Some(source) => source.in_force(self.reads(), (*current).clone()).await,
            None => ((*current).clone(), None),
        };
        if let Some(why) = self.refuse_config(&config).await {
            let from = note.unwrap_or_else(|| format!("from {}", config.source_file.display()));
            self.decline_lead(epoch, &current, &from, &why).await;
            return false;
        }
        *self
            .inner
            .declined
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = None;
        crate::metrics::global().lead_declined(false);
        if config.source_file != current.source_file {
            let detail = format!(
                "this controller took the lead (epoch {epoch}) and put a configuration in force other than the one it ran ({}): {}",
                current.source_file.display(),
                note.as_deref().unwrap_or("the configuration from its file")
            );
            tracing::warn!("{detail}");
            let after = config.clone();
            // Before it acts: every loop waits for `act` below.
            self.replace_config(config);
            self.note_config(&[&current, &after], "controller", &detail)
                .await;
        }
        self.inner.leadership.act(epoch)
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

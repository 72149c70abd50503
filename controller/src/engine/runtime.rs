//! The runtime the reconcilers and effects run on in `tollgate serve`, apart from the one that
//! answers HTTP.
//!
//! Owns the background runtime's threads: [`WORKERS`] workers named `tollgate-engine` (and
//! tokio's blocking threads). A burst of webhooks records its releases and wakes as many
//! reconciles, each of which plans, writes and calls AWS; on their own runtime, those tasks
//! never sit in the run queues of the HTTP runtime's workers ahead of the next deliveries.
//!
//! The threads keep the process's CPU priority on purpose: a reconcile holds the store's
//! writer while it writes, so a reconcile thread at a lower priority, starved by other work
//! on the machine, would hold up every delivery's write behind it (measured: a round of 200
//! deliveries answered after about a second instead of 0.1–0.2 s on a loaded machine).
//!
//! Must never: be dropped inside an async context without [`Background`]'s own shutdown (it
//! shuts down in the background, never blocking a runtime thread).

use std::io;

use tokio::runtime::{Builder, Handle, Runtime};

/// Worker threads of the background runtime: as many as the HTTP runtime's on a 2-core host;
/// reconciles mostly wait on AWS.
pub const WORKERS: usize = 2;

/// The name of the background runtime's threads.
pub const THREAD_NAME: &str = "tollgate-engine";

/// The background runtime; shuts down without blocking when dropped.
pub struct Background(Option<Runtime>);

impl Background {
    /// Starts it: [`WORKERS`] workers named [`THREAD_NAME`].
    pub fn start() -> io::Result<Background> {
        let rt = Builder::new_multi_thread()
            .worker_threads(WORKERS)
            .thread_name(THREAD_NAME)
            .enable_all()
            .build()?;
        Ok(Background(Some(rt)))
    }

    /// Where to spawn onto it.
    pub fn handle(&self) -> Handle {
        match &self.0 {
            Some(rt) => rt.handle().clone(),
            None => unreachable!("the runtime is only taken when dropped"),
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What is spawned onto it runs on its own threads, not the caller's runtime; dropping it
    /// inside an async context does not panic.
    #[tokio::test]
    async fn tasks_spawned_onto_it_run_on_its_own_threads() {
        let bg = Background::start().unwrap();
        let name = bg
            .handle()
            .spawn(async { std::thread::current().name().map(str::to_owned) })
            .await
            .unwrap();
        assert_eq!(name.as_deref(), Some(THREAD_NAME));
        assert_ne!(std::thread::current().name(), Some(THREAD_NAME));
        drop(bg);
    }
}

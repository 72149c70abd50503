//! The runtime the reconcilers and effects run on in `tollgate serve`: apart from the one that
//! answers HTTP, and at a lower CPU priority.
//!
//! Owns the background runtime's threads: [`WORKERS`] workers (and tokio's blocking threads),
//! each lowered to nice [`NICE`] when it starts (Linux keeps a nice value per thread). A burst
//! of webhooks records its releases and wakes as many reconciles, each of which plans, writes
//! and calls AWS; on their own runtime, at a lower priority, they take the CPU the HTTP
//! runtime leaves, so a delivery's answer does not wait behind the deploys it started. When
//! nothing else wants the CPU, the nice value changes nothing.
//!
//! Caveats: a thread started by a background thread inherits its nice value (a store
//! connection first opened from a reconcile runs its SQLite worker at the lower priority);
//! where the nice value cannot be set, the threads keep the process's and a warning is logged
//! once per thread.
//!
//! Must never: be dropped inside an async context without [`Background`]'s own shutdown (it
//! shuts down in the background, never blocking a runtime thread).

use std::io;

use tokio::runtime::{Builder, Handle, Runtime};

/// Worker threads of the background runtime: as many as the HTTP runtime's on a 2-core host;
/// reconciles mostly wait on AWS.
pub const WORKERS: usize = 2;

/// The nice value of the background threads (the HTTP runtime keeps the process's, normally
/// 0): under contention a nice-10 thread gets about a tenth of the CPU a nice-0 thread gets.
pub const NICE: i32 = 10;

/// The background runtime; shuts down without blocking when dropped.
pub struct Background(Option<Runtime>);

impl Background {
    /// Starts it: [`WORKERS`] workers named `tollgate-engine`, at nice [`NICE`].
    pub fn start() -> io::Result<Background> {
        let rt = Builder::new_multi_thread()
            .worker_threads(WORKERS)
            .thread_name("tollgate-engine")
            .on_thread_start(lower_priority)
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

/// Lowers the calling thread's CPU priority to [`NICE`].
fn lower_priority() {
    // With `PRIO_PROCESS` and a thread id, Linux sets that one thread's nice value.
    let tid = rustix::thread::gettid();
    if let Err(e) = rustix::process::setpriority_process(Some(tid), NICE) {
        tracing::warn!(error = %e, "cannot lower the priority of a reconcile thread; it keeps the process's");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nice() -> i32 {
        rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap()
    }

    /// The reconcilers' threads run at the lower priority, the caller's thread keeps its own.
    #[test]
    fn background_threads_run_at_the_lower_priority() {
        let own = nice();
        let bg = Background::start().unwrap();
        let theirs = bg
            .handle()
            .block_on(async { tokio::spawn(async { nice() }).await.unwrap() });
        assert_eq!(theirs, own.max(NICE));
        assert_eq!(nice(), own);
    }
}

//! Crash injection for engine tests: a [`Fuse`] handed to [`tollgate::engine::Engine::with_fuse`]
//! lets a fixed number of steps through, then fails every store write and port call, exactly as
//! if the process had died at that point.
//!
//! Must never: let a step through once it has blown (a restart gets a new engine).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tollgate::engine::CrashPoint;

/// After `limit` steps every step fails.
#[derive(Debug)]
pub struct Fuse {
    steps: AtomicU64,
    limit: u64,
}

impl Fuse {
    pub fn new(limit: u64) -> Arc<Fuse> {
        Arc::new(Fuse {
            steps: AtomicU64::new(0),
            limit,
        })
    }

    /// Steps counted so far (including the ones refused after the fuse blew).
    pub fn steps(&self) -> u64 {
        self.steps.load(Ordering::SeqCst)
    }
}

impl CrashPoint for Fuse {
    fn step(&self) -> bool {
        self.steps.fetch_add(1, Ordering::SeqCst) < self.limit
    }

    fn blown(&self) -> bool {
        self.steps.load(Ordering::SeqCst) > self.limit
    }
}

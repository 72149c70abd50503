//! A clock for end-to-end tests: real time plus an offset the test moves forward.
//!
//! Unlike [`tollgate::engine::ManualClock`] it keeps running, so the engine's own waits (polls,
//! short bakes) pass as they would in production, while a test can still jump over a day of
//! waiting for an approval. Latencies measured on it are real.

use std::sync::Mutex;

use chrono::{DateTime, Utc};
use tollgate::engine::Clock;

/// The system clock shifted by an offset that only grows.
#[derive(Debug, Default)]
pub struct ShiftedClock(Mutex<chrono::Duration>);

impl ShiftedClock {
    pub fn new() -> ShiftedClock {
        ShiftedClock::default()
    }

    /// Moves the clock forward by `by` (the offset never shrinks: time never runs back).
    pub fn advance(&self, by: chrono::Duration) {
        let mut offset = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *offset += by.max(chrono::Duration::zero());
    }
}

impl Clock for ShiftedClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now() + *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advancing_moves_the_clock_forward_and_never_back() {
        let clock = ShiftedClock::new();
        let before = clock.now();
        clock.advance(chrono::Duration::days(2));
        let after = clock.now();
        assert!(
            after - before >= chrono::Duration::days(2),
            "{before} -> {after}"
        );
        clock.advance(chrono::Duration::days(-5));
        assert!(clock.now() >= after, "a negative step is ignored");
    }
}

//! The waiters of stack operations in flight, by stack, so a push can wake them.
//!
//! Owns an in-process registry: the CloudFormation adapter registers for a stack before it
//! executes a change set and unregisters (by dropping its [`Registration`]) when its wait
//! ends; the SNS intake calls [`StackWaiters::hear`] for every verified stack event of the
//! stack from a configured stack-events topic (so the waiter knows pushes arrive and keeps
//! only backstop looks), and [`StackWaiters::wake`] when the event says the stack reached a
//! state a waiter waits for.
//!
//! # Guarantees
//! - A wake-up is only that: the waiter looks (`DescribeStacks`) at once and believes only
//!   what it reads there. Polling goes on as the backstop, so a lost or missing notification
//!   costs time, never correctness.
//! - A wake-up that arrives between two looks is not lost ([`Notify::notify_one`] keeps it for
//!   the next sleep).
//!
//! Must never: block, or hold its lock across an `.await`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::backoff::Push;
use crate::domain::StackKey;

/// One waiter's signals: woken (the stack may have ended its operation) and heard (a push
/// about the stack arrived).
#[derive(Debug, Default)]
struct Signals {
    wake: Notify,
    heard: AtomicBool,
    heard_changed: Notify,
}

impl Signals {
    fn hear(&self) {
        if !self.heard.swap(true, Ordering::AcqRel) {
            self.heard_changed.notify_one();
        }
    }
}

/// The waiters of each stack: an id (to unregister) and its signals.
type ByStack = HashMap<StackKey, Vec<(u64, Arc<Signals>)>>;

/// Waiters by stack; share one per controller.
#[derive(Debug, Default)]
pub struct StackWaiters {
    waiting: Mutex<ByStack>,
    next: AtomicU64,
}

/// One waiter's place in the registry; dropping it unregisters.
#[derive(Debug)]
pub struct Registration {
    waiters: Arc<StackWaiters>,
    stack: StackKey,
    id: u64,
    signals: Arc<Signals>,
}

impl Registration {
    /// Notified by [`StackWaiters::wake`] for this stack.
    pub fn notify(&self) -> &Notify {
        &self.signals.wake
    }

    /// Has a push about this stack arrived since the registration?
    pub fn heard(&self) -> bool {
        self.signals.heard.load(Ordering::Acquire)
    }

    /// The push a poll waits on ([`crate::backoff::PollSettings::poll_expecting`]).
    pub fn push(&self) -> Push<'_> {
        Push {
            wake: &self.signals.wake,
            heard: &self.signals.heard,
            heard_changed: &self.signals.heard_changed,
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut waiting = self.waiters.lock();
        if let Some(list) = waiting.get_mut(&self.stack) {
            list.retain(|(id, _)| *id != self.id);
            if list.is_empty() {
                waiting.remove(&self.stack);
            }
        }
    }
}

impl StackWaiters {
    pub fn new() -> Arc<StackWaiters> {
        Arc::new(StackWaiters::default())
    }

    /// Registers a waiter for `stack`.
    pub fn register(self: &Arc<Self>, stack: StackKey) -> Registration {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let signals = Arc::new(Signals::default());
        let entry = (id, signals.clone());
        self.lock().entry(stack.clone()).or_default().push(entry);
        Registration {
            waiters: self.clone(),
            stack,
            id,
            signals,
        }
    }

    /// Tells every waiter of `stack` that pushes about it arrive; how many there were.
    pub fn hear(&self, stack: &StackKey) -> usize {
        self.each(stack, Signals::hear)
    }

    /// Wakes every waiter of `stack` (which also hears it); how many there were.
    pub fn wake(&self, stack: &StackKey) -> usize {
        self.each(stack, |s| {
            s.hear();
            s.wake.notify_one();
        })
    }

    fn each(&self, stack: &StackKey, f: impl Fn(&Signals)) -> usize {
        let waiting = self.lock();
        let list = waiting.get(stack).map(Vec::as_slice).unwrap_or_default();
        for (_, signals) in list {
            f(signals);
        }
        list.len()
    }

    /// How many waiters `stack` has now.
    pub fn waiting(&self, stack: &StackKey) -> usize {
        self.lock().get(stack).map_or(0, Vec::len)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ByStack> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(stack: &str) -> StackKey {
        StackKey {
            account: "222222222222".into(),
            region: "us-east-1".into(),
            stack: stack.into(),
        }
    }

    #[tokio::test]
    async fn a_wake_reaches_only_the_waiters_of_that_stack_and_ends_with_them() {
        let waiters = StackWaiters::new();
        let app = waiters.register(key("app"));
        let other = waiters.register(key("other"));
        assert_eq!(waiters.hear(&key("app")), 1);
        assert!(app.heard() && !other.heard());
        assert_eq!(waiters.wake(&key("app")), 1);
        // The wake-up was kept for the next wait, even though nobody was waiting yet.
        app.notify().notified().await;
        assert_eq!(waiters.wake(&key("nobody")), 0);
        drop(app);
        assert_eq!(waiters.waiting(&key("app")), 0);
        assert_eq!(waiters.wake(&key("app")), 0);
        assert_eq!(waiters.waiting(&key("other")), 1);
        drop(other);
    }
}

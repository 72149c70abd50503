//! Waiting on other systems: the one retry policy and the one polling schedule.
//!
//! Owns how long tollgate waits before asking a remote system (AWS, GitHub) again, in the two
//! situations where it has to:
//! - [`Backoff`]: a call failed with [`PortError::Retryable`] (throttling, 5xx, a timeout).
//!   It is tried again after a full-jitter exponential delay, a bounded number of times; only
//!   when that budget is spent does the caller see `Retryable`. Every adapter uses it for its
//!   own temporary failures (the AWS adapters through [`crate::aws::retry::Limiter`], which
//!   adds rate limiting in front of each attempt).
//! - [`PollSettings`]: something is still in progress (a stack updating, a pipeline running,
//!   a workflow run queued). The waiter looks at once, then after `initial`, each interval the
//!   next step of the 1-2-5 series (0.1 s, 0.2 s, 0.5 s, 1 s, 2 s, 5 s, 10 s, …) up to `max`,
//!   until `timeout` has passed.
//!
//! # The production schedule ([`PollSettings::default`])
//! Looks at 0 s, then 0.1, 0.2, 0.5, 1, 2, 5, 10 s apart, then every 15 s: at 0, 0.1, 0.3,
//! 0.8, 1.8, 3.8, 8.8, 18.8, 33.8, 48.8 s, … An operation that is already over (the emulator,
//! an empty update) is seen at the first look; one that takes a few seconds is seen within
//! about half its duration; a long one within 15 s of finishing. A change set ready after
//! 20 s costs 9 looks; a 3-minute stack update about 19 (8 in the first 19 s, then one per
//! 15 s).
//!
//! # With history and pushes ([`PollSettings::poll_expecting`])
//! Given how long the same operation took before ([`Expected`], from the store's recent
//! timings of a stack), a waiter still looks at once, then sleeps until [`LEAD`] before the
//! shortest, looks every [`DENSE`] until well past the longest, then backs off as above: a
//! 3-minute update that took 3 minutes before is seen within about a second, in three or four
//! looks. Given a [`Push`] (stack notifications), it looks at once whenever the push wakes it,
//! and once a push about the operation has arrived it keeps only [`BACKSTOP`] looks. Each wait
//! reports how long the operation lasted at least ([`Waited`]), the next one's history.
//!
//! # Guarantees
//! - Bounded: a retried call sleeps at most [`Backoff::max_total`] in all; a poll returns once
//!   its timeout has passed (the last look happens at the deadline).
//! - A poll never sleeps before its first look.
//! - Only `Retryable` is retried; every other error is returned at once.
//!
//! # Must never
//! - retry around a call that already retries through this policy (attempts would multiply):
//!   each operation has exactly one retrying layer, the adapter's.
//! - read the system clock: delays use tokio's time, so tests run it paused.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rand::Rng;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::engine::ports::PortError;

/// How a temporary failure is retried: full jitter, uniform in
/// `[0, min(cap, base × 2^(retry-1))]`, at most `max_attempts` attempts in all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// First backoff ceiling; doubled on each retry.
    pub base: Duration,
    /// Largest backoff ceiling.
    pub cap: Duration,
    /// Attempts in all, the first included.
    pub max_attempts: u32,
}

impl Default for Backoff {
    /// About 25 s of sleeping at most over 8 attempts: long enough to ride out a burst of
    /// throttling, short enough that a real outage is reported while someone is watching.
    fn default() -> Self {
        Backoff {
            base: Duration::from_millis(200),
            cap: Duration::from_secs(20),
            max_attempts: 8,
        }
    }
}

impl Backoff {
    /// Runs `op`, trying again after a jittered delay while it fails with a temporary error.
    /// `what` names the call in the log.
    pub async fn retry<T, F, Fut>(&self, what: &str, mut op: F) -> Result<T, PortError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, PortError>>,
    {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match op().await {
                Err(e) if e.is_retryable() && attempt < self.max_attempts => {
                    let delay = self.delay(attempt);
                    tracing::warn!(call = what, attempt, error = %e, ?delay, "temporary failure; retrying");
                    tokio::time::sleep(delay).await;
                }
                other => return other,
            }
        }
    }

    /// The delay after failed attempt `attempt` (1-based): uniform up to its ceiling.
    pub fn delay(&self, attempt: u32) -> Duration {
        let millis = self.ceiling(attempt).as_millis() as u64;
        Duration::from_millis(rand::thread_rng().gen_range(0..=millis))
    }

    /// The longest delay after failed attempt `attempt`: `min(cap, base × 2^(attempt-1))`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(16));
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// The longest one call can spend sleeping between its attempts.
    pub fn max_total(&self) -> Duration {
        (1..self.max_attempts).map(|a| self.ceiling(a)).sum()
    }
}

/// How a waiter polls: a look at once, the next after `initial`, each interval the next step
/// of the 1-2-5 series up to `max`, giving up once `timeout` has passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PollSettings {
    pub initial: Duration,
    pub max: Duration,
    pub timeout: Duration,
}

impl Default for PollSettings {
    /// For real AWS, where an operation takes from nothing to minutes: short intervals first
    /// (0.1 s, 0.2 s, 0.5 s, …), so a quick one is seen at once, growing to 15 s, so a long one
    /// costs about four looks a minute (see the module's schedule).
    fn default() -> Self {
        PollSettings {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(15),
            timeout: Duration::from_secs(60 * 60),
        }
    }
}

impl PollSettings {
    /// For an emulator or a stub that answers at once.
    pub fn fast() -> Self {
        PollSettings {
            initial: Duration::from_millis(10),
            max: Duration::from_millis(100),
            timeout: Duration::from_secs(30),
        }
    }

    /// The same interval every time.
    pub fn every(interval: Duration, timeout: Duration) -> Self {
        PollSettings {
            initial: interval,
            max: interval,
            timeout,
        }
    }

    pub fn with_timeout(self, timeout: Duration) -> Self {
        PollSettings { timeout, ..self }
    }

    /// Calls `check` at once and then on the schedule until it returns `Some`; `Ok(None)` once
    /// `timeout` has passed. A look that failed with [`PortError::Retryable`] (its call's
    /// retries already spent) counts as one that saw nothing new: the wait goes on, and if the
    /// last look at the deadline failed so, that failure is the error. Any other error from
    /// `check` ends the wait.
    pub async fn poll<T, F, Fut>(&self, check: F) -> Result<Option<T>, PortError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<Option<T>, PortError>>,
    {
        let waited = self.poll_expecting(None, None, check).await?;
        Ok(waited.map(|w| w.value))
    }

    /// Like [`PollSettings::poll`], with the schedule shaped by what the same operation took
    /// before (`expected`, see [`Expected`]) and by a push (see [`Push`]): a look at once each
    /// time it wakes the waiter, and only backstop looks once it is known to arrive.
    /// Returns the value and how long the operation lasted at least (see [`Waited`]).
    pub async fn poll_expecting<T, F, Fut>(
        &self,
        expected: Option<Expected>,
        push: Option<Push<'_>>,
        mut check: F,
    ) -> Result<Option<Waited<T>>, PortError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<Option<T>, PortError>>,
    {
        let start = Instant::now();
        let deadline = start + self.timeout;
        let mut schedule = Schedule::new(*self, expected);
        let mut busy_at = Duration::ZERO;
        loop {
            let looked = start.elapsed();
            let failed = match check().await {
                Ok(Some(value)) => {
                    return Ok(Some(Waited {
                        value,
                        lasted: busy_at,
                        seen: looked,
                    }));
                }
                Ok(None) => {
                    busy_at = looked;
                    None
                }
                // Saw nothing: not evidence that the operation was still going on.
                Err(e) if e.is_retryable() => {
                    tracing::warn!(error = %e, "a look during a wait failed after its retries; looking again on the schedule");
                    Some(e)
                }
                Err(e) => return Err(e),
            };
            let now = Instant::now();
            if now >= deadline {
                return failed.map_or(Ok(None), Err);
            }
            loop {
                let heard = push.as_ref().is_some_and(Push::heard);
                let now = Instant::now();
                let delay = schedule.next(now - start, heard).min(deadline - now);
                match pause(delay, push.as_ref(), heard).await {
                    Woken::Yes => {
                        // The push says it moved: it is at least this old when found done.
                        busy_at = start.elapsed();
                        break;
                    }
                    Woken::No => break,
                    // Pushes arrive: plan the sleep again, with backstop looks only.
                    Woken::Heard => {}
                }
            }
        }
    }
}

/// What a poll found and how long the operation lasted at least: until the last look that
/// still saw it in progress, or until the wake-up that announced its end (0 when the first
/// look found it done). Never more than it really took, so a schedule built on it looks
/// early rather than late. `seen`: when the look that found it done started (it ended
/// between `lasted` and `seen`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Waited<T> {
    pub value: T,
    pub lasted: Duration,
    pub seen: Duration,
}

impl<T> Waited<T> {
    /// How far apart the last two looks were: how uncertain `lasted` is.
    pub fn uncertainty(&self) -> Duration {
        self.seen.saturating_sub(self.lasted)
    }
}

/// How long an operation took the last times it ran on the same target (a stack's change
/// set, a stack's update): the shortest and the longest.
///
/// With it, a waiter still looks at once, then sleeps until [`LEAD`] before the shortest,
/// looks every [`DENSE`] until well past the longest (a quarter of it plus 5 s), and then
/// backs off from [`DENSE`] as [`PollSettings`] does, up to its `max`. An operation that took
/// under 2 × [`DENSE`] keeps the plain schedule, whose first intervals are shorter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expected {
    pub shortest: Duration,
    pub longest: Duration,
}

/// A push that can end a wait early: `wake` is notified when the operation may have ended;
/// `heard` turns true once a push about this operation arrived (so pushes do arrive), and
/// `heard_changed` is notified when it does.
#[derive(Debug, Clone, Copy)]
pub struct Push<'a> {
    pub wake: &'a Notify,
    pub heard: &'a AtomicBool,
    pub heard_changed: &'a Notify,
}

impl Push<'_> {
    fn heard(&self) -> bool {
        self.heard.load(Ordering::Acquire)
    }
}

/// Once pushes are known to arrive, the looks that stay are a backstop for a lost one: one
/// this often (or at the schedule's `max`, if longer), and (with history) none before well
/// past the longest past duration.
///
/// "Known to arrive" means a push about this very operation has been received (for a stack,
/// one of its events since the execute): the channel is proven live, so the completion event
/// is expected the same way and the backstop can be long. A 3-minute update then costs the
/// look at once and the one the completion push brings; a lost completion push costs at most
/// this long, and the poll's timeout still bounds the whole wait.
pub const BACKSTOP: Duration = Duration::from_secs(300);

/// How long before the shortest past duration the dense looks start.
pub const LEAD: Duration = Duration::from_secs(1);
/// The interval of the dense looks: completion is seen within it (plus one call).
pub const DENSE: Duration = Duration::from_secs(1);

impl Expected {
    /// From past durations; `None` without any, or when they were all too short to plan
    /// around.
    pub fn from_past(past: &[Duration]) -> Option<Expected> {
        let shortest = *past.iter().min()?;
        let longest = *past.iter().max()?;
        (longest >= DENSE * 2).then_some(Expected { shortest, longest })
    }

    /// When the dense looks start, after the start of the wait.
    fn dense_from(&self) -> Duration {
        self.shortest.saturating_sub(LEAD)
    }

    /// When they stop: well past the longest.
    fn dense_until(&self) -> Duration {
        self.longest + self.longest / 4 + Duration::from_secs(5)
    }
}

/// The intervals of one wait.
struct Schedule {
    expected: Option<Expected>,
    /// The next back-off interval.
    delay: Duration,
    cap: Duration,
}

impl Schedule {
    fn new(settings: PollSettings, expected: Option<Expected>) -> Schedule {
        let delay = match expected {
            Some(_) => DENSE,
            None => settings.initial.max(Duration::from_millis(1)),
        };
        Schedule {
            expected,
            delay,
            cap: settings.max.max(settings.initial),
        }
    }

    /// How long to sleep after a look at `elapsed` into the wait; `heard`: pushes arrive.
    fn next(&mut self, elapsed: Duration, heard: bool) -> Duration {
        if heard {
            let backstop = BACKSTOP.max(self.cap);
            return match self.expected {
                Some(e) if elapsed < e.dense_until() => e.dense_until() - elapsed,
                _ => backstop,
            };
        }
        if let Some(e) = self.expected {
            if elapsed + DENSE < e.dense_from() {
                return e.dense_from() - elapsed;
            }
            if elapsed < e.dense_until() {
                return DENSE;
            }
        }
        let delay = self.delay;
        self.delay = next_step(delay).min(self.cap);
        delay
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Woken {
    Yes,
    No,
    /// Pushes were found to arrive (the sleep was planned without knowing it).
    Heard,
}

/// Sleeps for `delay`, or less when the push wakes the waiter or, if the sleep was planned
/// before pushes were `heard`, when they are.
async fn pause(delay: Duration, push: Option<&Push<'_>>, heard: bool) -> Woken {
    let Some(push) = push else {
        tokio::time::sleep(delay).await;
        return Woken::No;
    };
    tokio::select! {
        () = tokio::time::sleep(delay) => Woken::No,
        () = push.wake.notified() => Woken::Yes,
        () = push.heard_changed.notified(), if !heard => Woken::Heard,
    }
}

/// The next interval after `delay`: the smallest value of the 1-2-5 series (1, 2, 5, 10, 20,
/// 50, … ms) larger than it.
fn next_step(delay: Duration) -> Duration {
    let mut decade = Duration::from_millis(1);
    loop {
        for step in [1, 2, 5] {
            let candidate = decade.saturating_mul(step);
            if candidate > delay {
                return candidate;
            }
        }
        if decade >= Duration::from_secs(86_400) {
            return delay.saturating_mul(2);
        }
        decade = decade.saturating_mul(10);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_poll_looks_at_once_then_backs_off_until_the_timeout() {
        let settings = PollSettings {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(4),
            timeout: Duration::from_secs(20),
        };
        let start = Instant::now();
        let looks = Mutex::new(Vec::new());
        let got: Option<()> = settings
            .poll(|| async {
                looks.lock().unwrap().push(start.elapsed().as_secs());
                Ok(None)
            })
            .await
            .unwrap();
        assert_eq!(got, None);
        assert_eq!(start.elapsed(), Duration::from_secs(20));
        // At once, then 1, 2, 4 (5 capped at the max), 4, 4 s apart, and a last look at the
        // deadline.
        assert_eq!(*looks.lock().unwrap(), [0, 1, 3, 7, 11, 15, 19, 20]);
    }

    /// The production schedule: quick looks first, then one every 15 s, so a 3-minute stack
    /// update is seen within 15 s of finishing at the cost of about 19 looks.
    #[tokio::test(start_paused = true)]
    async fn the_default_schedule_looks_quickly_first_then_every_fifteen_seconds() {
        let start = Instant::now();
        let looks = Mutex::new(Vec::new());
        let done_at = Duration::from_secs(180);
        let seen = PollSettings::default()
            .poll(|| async {
                looks.lock().unwrap().push(start.elapsed().as_millis());
                Ok((start.elapsed() >= done_at).then_some(()))
            })
            .await
            .unwrap();
        assert_eq!(seen, Some(()));
        let looks = looks.into_inner().unwrap();
        assert_eq!(
            looks[..10],
            [
                0, 100, 300, 800, 1_800, 3_800, 8_800, 18_800, 33_800, 48_800
            ]
        );
        assert_eq!(looks.len(), 19);
        assert!(start.elapsed() - done_at <= Duration::from_secs(15));
    }

    /// The looks (ms into the wait) of a poll with `expected`, for an operation that ends
    /// `done_at` into it, and what the poll returned.
    async fn looks_with(expected: Option<Expected>, done_at: Duration) -> (Vec<u128>, Waited<()>) {
        let start = Instant::now();
        let looks = Mutex::new(Vec::new());
        let waited = PollSettings::default()
            .poll_expecting(expected, None, || async {
                looks.lock().unwrap().push(start.elapsed().as_millis());
                Ok((start.elapsed() >= done_at).then_some(()))
            })
            .await
            .unwrap()
            .unwrap();
        (looks.into_inner().unwrap(), waited)
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    /// A change set that was ready after 20 s before: a look at once, then from 19 s every
    /// second, so it is seen within a second at the cost of three looks.
    #[tokio::test(start_paused = true)]
    async fn with_history_the_waiter_sleeps_until_just_before_the_shortest_past_duration() {
        let expected = Expected::from_past(&[secs(20), secs(22)]);
        let (looks, waited) = looks_with(expected, Duration::from_millis(20_300)).await;
        assert_eq!(looks, [0, 19_000, 20_000, 21_000]);
        assert_eq!(waited.lasted, secs(20));

        // A 3-minute update seen within a second of finishing, in four looks (the plain
        // schedule takes 19 and sees it up to 15 s late).
        let expected = Expected::from_past(&[secs(180)]);
        let (looks, waited) = looks_with(expected, Duration::from_millis(180_400)).await;
        assert_eq!(looks, [0, 179_000, 180_000, 181_000]);
        assert_eq!(waited.lasted, secs(180));
    }

    /// Something already over (the emulator, an empty update) is still seen at the first look.
    #[tokio::test(start_paused = true)]
    async fn with_history_the_first_look_is_still_at_once() {
        let expected = Expected::from_past(&[secs(180)]);
        let (looks, waited) = looks_with(expected, Duration::ZERO).await;
        assert_eq!(looks, [0]);
        assert_eq!(waited.lasted, Duration::ZERO);
    }

    /// Running well past the longest past duration (a quarter of it plus 5 s), the waiter
    /// falls back to the back-off, from 1 s up to the 15 s cap.
    #[tokio::test(start_paused = true)]
    async fn past_the_longest_duration_the_waiter_backs_off_again() {
        let expected = Expected::from_past(&[secs(20)]);
        let (looks, _) = looks_with(expected, secs(120)).await;
        let dense: Vec<u128> = (19..=30).map(|s| s * 1_000).collect();
        assert_eq!(looks[1..13], dense[..]);
        assert_eq!(
            looks[13..],
            [
                31_000, 33_000, 38_000, 48_000, 63_000, 78_000, 93_000, 108_000, 123_000
            ]
        );
    }

    /// Past durations too short to plan around keep the plain schedule.
    #[tokio::test(start_paused = true)]
    async fn short_past_durations_keep_the_plain_schedule() {
        assert_eq!(Expected::from_past(&[]), None);
        let short = [Duration::from_millis(300), Duration::from_millis(1_500)];
        assert_eq!(Expected::from_past(&short), None);
        let (looks, waited) = looks_with(None, Duration::from_millis(1_000)).await;
        assert_eq!(looks, [0, 100, 300, 800, 1_800]);
        assert_eq!(waited.lasted, Duration::from_millis(800));
    }

    /// The looks of a wait ended at `ends` (ms) by a push that wakes the waiter, or never
    /// (`None`, a lost push: the operation is simply over then), with `heard` set from the
    /// start or not, and what the wait measured.
    async fn pushed(
        expected: Option<Expected>,
        heard: bool,
        ends: u64,
        woken: bool,
    ) -> (Vec<u128>, Duration) {
        let start = Instant::now();
        let wake = std::sync::Arc::new(Notify::new());
        let done = std::sync::Arc::new(AtomicBool::new(false));
        let (w, d) = (wake.clone(), done.clone());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(ends)).await;
            d.store(true, Ordering::SeqCst);
            if woken {
                w.notify_one();
            }
        });
        let heard = AtomicBool::new(heard);
        let heard_changed = Notify::new();
        let push = Push {
            wake: &wake,
            heard: &heard,
            heard_changed: &heard_changed,
        };
        let looks = Mutex::new(Vec::new());
        let waited = PollSettings::default()
            .poll_expecting(expected, Some(push), || async {
                looks.lock().unwrap().push(start.elapsed().as_millis());
                Ok(done.load(Ordering::SeqCst).then_some(()))
            })
            .await
            .unwrap()
            .unwrap();
        (looks.into_inner().unwrap(), waited.lasted)
    }

    /// A wake-up (a stack notification) makes the waiter look at once instead of at its next
    /// scheduled look, and the wait's measured duration is the moment of the wake-up.
    #[tokio::test(start_paused = true)]
    async fn a_wake_up_makes_the_waiter_look_at_once() {
        let (looks, lasted) = pushed(None, false, 172_500, true).await;
        assert_eq!(*looks.last().unwrap(), 172_500);
        assert_eq!(
            looks[looks.len() - 2],
            168_800,
            "the last scheduled look before it"
        );
        assert_eq!(lasted, Duration::from_millis(172_500));
    }

    /// Once pushes are known to arrive, only backstop looks stay: one every five minutes, and
    /// with history none before well past the longest past duration. A 3-minute update then
    /// costs the look at once and the one the push brings, with or without history; a lost
    /// push is still seen by a backstop look.
    #[tokio::test(start_paused = true)]
    async fn once_pushes_arrive_only_backstop_looks_stay() {
        let (looks, _) = pushed(None, true, 172_500, true).await;
        assert_eq!(looks, [0, 172_500]);
        // The completion push is lost: the backstop look sees it, five minutes in.
        let (looks, _) = pushed(None, true, 172_500, false).await;
        assert_eq!(looks, [0, 300_000]);
        let expected = Expected::from_past(&[secs(180)]);
        let (looks, lasted) = pushed(expected, true, 180_300, true).await;
        assert_eq!(looks, [0, 180_300]);
        assert_eq!(lasted, Duration::from_millis(180_300));
        // 180 s + a quarter + 5 s.
        let (looks, _) = pushed(expected, true, 190_000, false).await;
        assert_eq!(looks, [0, 230_000]);
    }

    /// Pushes found to arrive during a sleep planned without them (the stack's first event
    /// comes just after the execute): the sleep is planned again, with backstop looks only.
    #[tokio::test(start_paused = true)]
    async fn pushes_heard_during_a_sleep_plan_it_again() {
        use std::sync::Arc;
        let start = Instant::now();
        let (wake, heard, changed) = (
            Arc::new(Notify::new()),
            Arc::new(AtomicBool::new(false)),
            Arc::new(Notify::new()),
        );
        let done = Arc::new(AtomicBool::new(false));
        let (w, h, c, d) = (wake.clone(), heard.clone(), changed.clone(), done.clone());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            h.store(true, Ordering::SeqCst);
            c.notify_one();
            tokio::time::sleep(Duration::from_millis(179_800)).await;
            d.store(true, Ordering::SeqCst);
            w.notify_one();
        });
        let push = Push {
            wake: &wake,
            heard: &heard,
            heard_changed: &changed,
        };
        let looks = Mutex::new(Vec::new());
        PollSettings::default()
            .poll_expecting(Expected::from_past(&[secs(180)]), Some(push), || async {
                looks.lock().unwrap().push(start.elapsed().as_millis());
                Ok(done.load(Ordering::SeqCst).then_some(()))
            })
            .await
            .unwrap();
        // Without the new plan: 0, 179, 180, then the wake-up at 180.3 s.
        assert_eq!(looks.into_inner().unwrap(), [0, 180_300]);
    }

    #[test]
    fn steps_follow_the_one_two_five_series() {
        let ms = Duration::from_millis;
        assert_eq!(next_step(ms(10)), ms(20));
        assert_eq!(next_step(ms(100)), ms(200));
        assert_eq!(next_step(ms(200)), ms(500));
        assert_eq!(next_step(ms(500)), ms(1_000));
        assert_eq!(next_step(ms(3_000)), ms(5_000));
        assert_eq!(next_step(Duration::ZERO), ms(1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_poll_that_finds_it_done_at_once_does_not_sleep() {
        let start = Instant::now();
        let found = PollSettings::default()
            .poll(|| async { Ok(Some(7)) })
            .await
            .unwrap();
        assert_eq!(found, Some(7));
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn an_error_ends_the_poll() {
        let looks = AtomicU32::new(0);
        let got: Result<Option<()>, _> = PollSettings::default()
            .poll(|| async {
                looks.fetch_add(1, Ordering::SeqCst);
                Err(PortError::Failed("stack rolled back".into()))
            })
            .await;
        assert_eq!(got, Err(PortError::Failed("stack rolled back".into())));
        assert_eq!(looks.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_look_that_failed_after_its_retries_does_not_end_the_wait() {
        let looks = AtomicU32::new(0);
        let settings = PollSettings::every(Duration::from_secs(1), Duration::from_secs(60));
        let found = settings
            .poll_expecting(None, None, || async {
                match looks.fetch_add(1, Ordering::SeqCst) {
                    0 => Ok(None),
                    1..=3 => Err(PortError::Retryable("Throttling: Rate exceeded".into())),
                    _ => Ok(Some("UPDATE_COMPLETE")),
                }
            })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(found.value, "UPDATE_COMPLETE");
        assert_eq!(looks.load(Ordering::SeqCst), 5);
        // Only the look that saw it in progress counts towards how long it lasted.
        assert_eq!(found.lasted, Duration::ZERO);
        assert_eq!(found.seen, Duration::from_secs(4));
    }

    #[tokio::test(start_paused = true)]
    async fn a_look_still_failing_at_the_deadline_is_the_waits_error() {
        let looks = AtomicU32::new(0);
        let start = Instant::now();
        let settings = PollSettings::every(Duration::from_secs(1), Duration::from_secs(10));
        let got: Result<Option<()>, _> = settings
            .poll(|| async {
                looks.fetch_add(1, Ordering::SeqCst);
                Err(PortError::Retryable("Throttling: Rate exceeded".into()))
            })
            .await;
        assert_eq!(
            got,
            Err(PortError::Retryable("Throttling: Rate exceeded".into()))
        );
        assert_eq!(looks.load(Ordering::SeqCst), 11);
        assert_eq!(start.elapsed(), Duration::from_secs(10));

        // A wait whose last look succeeded times out as usual, even after failed looks.
        let looks = AtomicU32::new(0);
        let got: Result<Option<()>, _> = settings
            .poll(|| async {
                match looks.fetch_add(1, Ordering::SeqCst) {
                    0..=3 => Err(PortError::Retryable("HTTP 503".into())),
                    _ => Ok(None),
                }
            })
            .await;
        assert_eq!(got, Ok(None));
    }

    #[tokio::test(start_paused = true)]
    async fn temporary_failures_are_retried_within_the_budget() {
        let backoff = Backoff::default();
        let calls = AtomicU32::new(0);
        let start = Instant::now();
        let got = backoff
            .retry("op", || async {
                match calls.fetch_add(1, Ordering::SeqCst) {
                    0..3 => Err(PortError::Retryable("HTTP 503".into())),
                    n => Ok(n + 1),
                }
            })
            .await;
        assert_eq!(got, Ok(4));
        assert!(start.elapsed() <= backoff.max_total());

        let calls = AtomicU32::new(0);
        let start = Instant::now();
        let got: Result<(), _> = backoff
            .retry("op", || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(PortError::Retryable("HTTP 503".into()))
            })
            .await;
        assert!(got.unwrap_err().is_retryable());
        assert_eq!(calls.load(Ordering::SeqCst), backoff.max_attempts);
        assert!(start.elapsed() <= backoff.max_total());
    }

    #[tokio::test(start_paused = true)]
    async fn other_failures_are_returned_at_once() {
        let calls = AtomicU32::new(0);
        let got: Result<(), _> = Backoff::default()
            .retry("op", || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(PortError::Denied("AccessDenied".into()))
            })
            .await;
        assert!(matches!(got, Err(PortError::Denied(_))));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn backoff_ceilings_double_up_to_the_cap() {
        let b = Backoff::default();
        assert_eq!(b.ceiling(1), Duration::from_millis(200));
        assert_eq!(b.ceiling(2), Duration::from_millis(400));
        assert_eq!(b.ceiling(8), Duration::from_secs(20));
        assert_eq!(b.ceiling(40), Duration::from_secs(20));
        assert!(b.delay(3) <= Duration::from_millis(800));
        assert_eq!(b.max_total(), Duration::from_millis(25_400));
    }
}

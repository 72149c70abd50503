//! Deployment windows: is a stage allowed to start deploying now, and when next?
//!
//! Times are local to the window's IANA time zone, so a 09:00 start stays 09:00 across
//! daylight-saving changes; a local time that does not exist (spring forward) starts at the
//! first instant after the gap. Blackout dates close the whole local day.
//!
//! Must never: read the clock (the planner passes `now`) or open a window that the
//! configuration does not list.

use chrono::{DateTime, Datelike, Duration, NaiveDate, NaiveDateTime, TimeZone, Timelike, Utc};

use crate::config::Windows;

/// True when `now` falls inside an allowed range and not on a blackout date.
pub fn is_open(w: &Windows, now: DateTime<Utc>) -> bool {
    let local = now.with_timezone(&w.timezone);
    let date = local.date_naive();
    if w.blackouts.contains(&date) {
        return false;
    }
    let time = local.time();
    w.allow
        .iter()
        .any(|r| r.days.contains(&date.weekday()) && r.start <= time && time < r.end)
}

/// The next instant (strictly after `now` unless open now) at which a window opens, within a year.
pub fn next_open(w: &Windows, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    if is_open(w, now) {
        return Some(now);
    }
    let today = now.with_timezone(&w.timezone).date_naive();
    (0..=366)
        .filter_map(|d| today.checked_add_signed(Duration::days(d)))
        .filter(|date| !w.blackouts.contains(date))
        .flat_map(|date| starts_on(w, date))
        .filter(|t| *t > now)
        .min_by_key(|t| *t)
}

fn starts_on(w: &Windows, date: NaiveDate) -> Vec<DateTime<Utc>> {
    w.allow
        .iter()
        .filter(|r| r.days.contains(&date.weekday()))
        .filter_map(|r| resolve(w, date.and_time(r.start)))
        .collect()
}

/// Local wall-clock time → UTC; a time in a DST gap moves to the end of the gap: the first
/// whole local minute that exists (zones change offset on whole minutes).
fn resolve(w: &Windows, local: NaiveDateTime) -> Option<DateTime<Utc>> {
    let exists = |t: &NaiveDateTime| w.timezone.from_local_datetime(t).earliest();
    if let Some(dt) = exists(&local) {
        return Some(dt.with_timezone(&Utc));
    }
    let minute = local.with_second(0)?.with_nanosecond(0)?;
    (1..=26 * 60)
        .map(|m| minute + Duration::minutes(m))
        .find_map(|t| exists(&t))
        .map(|dt| dt.with_timezone(&Utc))
}

/// "outside deployment window until Mon 09:00 Europe/Berlin".
pub fn describe_wait(w: &Windows, next: Option<DateTime<Utc>>) -> String {
    match next {
        Some(at) => {
            let local = at.with_timezone(&w.timezone);
            format!(
                "outside deployment window until {} {}",
                local.format("%a %Y-%m-%d %H:%M"),
                w.timezone.name()
            )
        }
        None => "outside deployment window; no window opens within a year".into(),
    }
}

//! Deployment windows across daylight-saving changes (2026): Europe/Berlin springs forward on
//! Sunday 29 March and falls back on Sunday 25 October; America/New_York springs forward on
//! Sunday 8 March and falls back on Sunday 1 November.

use chrono::{DateTime, NaiveDate, NaiveTime, Offset, TimeZone, Utc, Weekday};
use chrono_tz::America::New_York;
use chrono_tz::Europe::Berlin;
use chrono_tz::Tz;

use super::sim::office_hours;
use crate::config::{Window, Windows};
use crate::domain::window::{describe_wait, is_open, next_open};

fn utc(y: i32, m: u32, d: u32, h: u32, min: u32, s: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, m, d, h, min, s).unwrap()
}

/// The UTC offset in hours that `tz` has at `at`.
fn offset_hours(tz: Tz, at: DateTime<Utc>) -> i32 {
    at.with_timezone(&tz).offset().fix().local_minus_utc() / 3600
}

fn date(y: i32, m: u32, d: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(y, m, d).unwrap()
}

/// A single Sunday range, for windows that start inside or around a change.
fn sundays(tz: Tz, start: (u32, u32), end: (u32, u32)) -> Windows {
    Windows {
        timezone: tz,
        allow: vec![Window {
            days: vec![Weekday::Sun],
            start: NaiveTime::from_hms_opt(start.0, start.1, 0).unwrap(),
            end: NaiveTime::from_hms_opt(end.0, end.1, 0).unwrap(),
        }],
        blackouts: vec![],
    }
}

/// Open from the local start (inclusive) to the local end (exclusive), whatever the offset.
fn assert_day_bounds(w: &Windows, nine_local_utc: DateTime<Utc>) {
    let second = chrono::Duration::seconds(1);
    let four_pm = nine_local_utc + chrono::Duration::hours(7);
    assert!(
        !is_open(w, nine_local_utc - second),
        "before {nine_local_utc}"
    );
    assert!(is_open(w, nine_local_utc), "at {nine_local_utc}");
    assert!(is_open(w, four_pm - second), "just before {four_pm}");
    assert!(!is_open(w, four_pm), "at {four_pm}");
}

#[test]
fn berlin_opens_at_nine_local_before_and_after_spring_forward() {
    let w = office_hours(Berlin);
    // Monday 23 March: CET, UTC+1.
    assert_day_bounds(&w, utc(2026, 3, 23, 8, 0, 0));
    // Monday 30 March: CEST, UTC+2.
    assert_day_bounds(&w, utc(2026, 3, 30, 7, 0, 0));
}

#[test]
fn berlin_opens_at_nine_local_before_and_after_fall_back() {
    let w = office_hours(Berlin);
    assert_day_bounds(&w, utc(2026, 10, 22, 7, 0, 0));
    assert_day_bounds(&w, utc(2026, 10, 26, 8, 0, 0));
}

#[test]
fn new_york_opens_at_nine_local_before_and_after_both_changes() {
    let w = office_hours(New_York);
    assert_day_bounds(&w, utc(2026, 3, 5, 14, 0, 0)); // Thu, EST
    assert_day_bounds(&w, utc(2026, 3, 9, 13, 0, 0)); // Mon, EDT
    assert_day_bounds(&w, utc(2026, 10, 29, 13, 0, 0)); // Thu, EDT
    assert_day_bounds(&w, utc(2026, 11, 2, 14, 0, 0)); // Mon, EST
}

#[test]
fn closed_on_friday_and_on_a_blackout_date() {
    let mut w = office_hours(Berlin);
    let thursday_ten = utc(2026, 3, 26, 9, 0, 0);
    let friday_ten = utc(2026, 3, 27, 9, 0, 0);
    assert!(is_open(&w, thursday_ten));
    assert!(!is_open(&w, friday_ten));

    let tuesday_ten = utc(2026, 3, 31, 8, 0, 0);
    assert!(is_open(&w, tuesday_ten));
    w.blackouts = vec![date(2026, 3, 31)];
    assert!(!is_open(&w, tuesday_ten));
    assert!(
        !is_open(&w, utc(2026, 3, 31, 7, 0, 0)),
        "closed from the start"
    );
    assert_eq!(
        next_open(&w, tuesday_ten),
        Some(utc(2026, 4, 1, 7, 0, 0)),
        "Wednesday 09:00 CEST"
    );
}

#[test]
fn a_blackout_is_a_day_in_the_window_time_zone_not_in_utc() {
    // Tuesday 10 March 09:00 in Auckland (UTC+13) is Monday 9 March 20:00 UTC.
    let mut w = office_hours(chrono_tz::Pacific::Auckland);
    let tuesday_nine = utc(2026, 3, 9, 20, 0, 0);
    assert!(is_open(&w, tuesday_nine));
    w.blackouts = vec![date(2026, 3, 9)];
    assert!(
        is_open(&w, tuesday_nine),
        "the UTC date is not the blackout"
    );
    w.blackouts = vec![date(2026, 3, 10)];
    assert!(!is_open(&w, tuesday_nine));
    assert_eq!(
        next_open(&w, tuesday_nine),
        Some(utc(2026, 3, 10, 20, 0, 0)),
        "Wednesday 09:00 local"
    );
}

#[test]
fn from_friday_evening_berlin_opens_monday_nine_across_spring_forward() {
    let w = office_hours(Berlin);
    let friday_six_pm = utc(2026, 3, 27, 17, 0, 0);
    let next = next_open(&w, friday_six_pm).unwrap();
    assert_eq!(next, utc(2026, 3, 30, 7, 0, 0));
    assert_eq!(offset_hours(Berlin, friday_six_pm), 1);
    assert_eq!(offset_hours(Berlin, next), 2);
    assert_eq!(
        next.with_timezone(&Berlin).naive_local(),
        date(2026, 3, 30).and_hms_opt(9, 0, 0).unwrap()
    );
}

#[test]
fn from_friday_evening_berlin_opens_monday_nine_across_fall_back() {
    let w = office_hours(Berlin);
    let friday_six_pm = utc(2026, 10, 23, 16, 0, 0);
    let next = next_open(&w, friday_six_pm).unwrap();
    assert_eq!(next, utc(2026, 10, 26, 8, 0, 0));
    assert_eq!(offset_hours(Berlin, friday_six_pm), 2);
    assert_eq!(offset_hours(Berlin, next), 1);
}

#[test]
fn from_friday_evening_new_york_opens_monday_nine_across_both_changes() {
    let w = office_hours(New_York);
    let spring = utc(2026, 3, 6, 23, 0, 0);
    assert_eq!(next_open(&w, spring), Some(utc(2026, 3, 9, 13, 0, 0)));
    assert_eq!(
        (
            offset_hours(New_York, spring),
            offset_hours(New_York, utc(2026, 3, 9, 13, 0, 0))
        ),
        (-5, -4)
    );
    let fall = utc(2026, 10, 30, 22, 0, 0);
    assert_eq!(next_open(&w, fall), Some(utc(2026, 11, 2, 14, 0, 0)));
    assert_eq!(
        (
            offset_hours(New_York, fall),
            offset_hours(New_York, utc(2026, 11, 2, 14, 0, 0))
        ),
        (-4, -5)
    );
}

#[test]
fn a_window_starting_in_the_spring_forward_gap_opens_when_the_gap_ends() {
    // 02:30 does not exist on these Sundays: clocks jump from 02:00 to 03:00.
    let berlin = sundays(Berlin, (2, 30), (5, 0));
    let opens = utc(2026, 3, 29, 1, 0, 0); // 03:00 CEST
    assert_eq!(next_open(&berlin, utc(2026, 3, 28, 12, 0, 0)), Some(opens));
    assert!(
        !is_open(&berlin, opens - chrono::Duration::seconds(1)),
        "01:59:59 CET"
    );
    assert!(is_open(&berlin, opens));
    assert_eq!(
        opens.with_timezone(&Berlin).naive_local(),
        date(2026, 3, 29).and_hms_opt(3, 0, 0).unwrap()
    );

    let new_york = sundays(New_York, (2, 30), (5, 0));
    let opens = utc(2026, 3, 8, 7, 0, 0); // 03:00 EDT
    assert_eq!(next_open(&new_york, utc(2026, 3, 7, 12, 0, 0)), Some(opens));
    assert!(is_open(&new_york, opens));
}

#[test]
fn any_start_inside_the_gap_opens_at_the_end_of_the_gap_not_later() {
    let opens = utc(2026, 3, 29, 1, 0, 0); // 03:00 CEST
    for start in [(2, 0), (2, 1), (2, 15), (2, 45), (2, 59)] {
        let w = sundays(Berlin, start, (5, 0));
        assert_eq!(
            next_open(&w, utc(2026, 3, 28, 12, 0, 0)),
            Some(opens),
            "start {start:?}"
        );
        // The wake-up it asks for is when is_open turns true.
        assert!(is_open(&w, opens));
    }
}

#[test]
fn a_window_starting_in_the_repeated_fall_back_hour_opens_the_first_time() {
    // 02:30 happens twice on 25 October in Berlin: 00:30 UTC (CEST) and 01:30 UTC (CET).
    let w = sundays(Berlin, (2, 30), (5, 0));
    assert_eq!(
        next_open(&w, utc(2026, 10, 24, 12, 0, 0)),
        Some(utc(2026, 10, 25, 0, 30, 0))
    );
}

#[test]
fn next_open_is_now_while_open_and_none_when_nothing_opens_within_a_year() {
    let w = office_hours(Berlin);
    let open = utc(2026, 3, 30, 10, 0, 0);
    assert_eq!(next_open(&w, open), Some(open));

    let never = Windows {
        timezone: Berlin,
        allow: vec![],
        blackouts: vec![],
    };
    assert_eq!(next_open(&never, open), None);
    assert_eq!(
        describe_wait(&never, None),
        "outside deployment window; no window opens within a year"
    );
}

#[test]
fn the_wait_is_described_in_the_window_time_zone() {
    let w = office_hours(Berlin);
    let next = next_open(&w, utc(2026, 3, 27, 17, 0, 0));
    assert_eq!(
        describe_wait(&w, next),
        "outside deployment window until Mon 2026-03-30 09:00 Europe/Berlin"
    );
    let w = office_hours(New_York);
    let next = next_open(&w, utc(2026, 10, 30, 22, 0, 0));
    assert_eq!(
        describe_wait(&w, next),
        "outside deployment window until Mon 2026-11-02 09:00 America/New_York"
    );
}

/// Open exactly on `open` (inclusive) to `close` (exclusive), checked a second either side.
fn assert_open_between(w: &Windows, open: DateTime<Utc>, close: DateTime<Utc>) {
    let second = chrono::Duration::seconds(1);
    assert!(!is_open(w, open - second), "before {open}");
    assert!(is_open(w, open), "at {open}");
    assert!(is_open(w, close - second), "just before {close}");
    assert!(!is_open(w, close), "at {close}");
}

#[test]
fn on_the_spring_forward_day_a_range_across_the_gap_is_open_on_both_sides_of_it() {
    // 01:00–04:00 local is only two real hours on these Sundays.
    let berlin = sundays(Berlin, (1, 0), (4, 0));
    assert_open_between(
        &berlin,
        utc(2026, 3, 29, 0, 0, 0),
        utc(2026, 3, 29, 2, 0, 0),
    );
    assert!(
        is_open(&berlin, utc(2026, 3, 29, 0, 59, 59)),
        "01:59:59 CET"
    );
    assert!(is_open(&berlin, utc(2026, 3, 29, 1, 0, 0)), "03:00 CEST");
    assert_eq!(
        next_open(&berlin, utc(2026, 3, 28, 12, 0, 0)),
        Some(utc(2026, 3, 29, 0, 0, 0))
    );

    let new_york = sundays(New_York, (1, 0), (4, 0));
    assert_open_between(
        &new_york,
        utc(2026, 3, 8, 6, 0, 0),
        utc(2026, 3, 8, 8, 0, 0),
    );
    assert!(is_open(&new_york, utc(2026, 3, 8, 7, 0, 0)), "03:00 EDT");
}

#[test]
fn on_the_fall_back_day_a_range_covering_the_repeated_hour_is_open_through_both() {
    // 01:00–04:00 local is four real hours on these Sundays.
    let berlin = sundays(Berlin, (1, 0), (4, 0));
    assert_open_between(
        &berlin,
        utc(2026, 10, 24, 23, 0, 0),
        utc(2026, 10, 25, 3, 0, 0),
    );
    assert!(is_open(&berlin, utc(2026, 10, 25, 0, 30, 0)), "02:30 CEST");
    assert!(is_open(&berlin, utc(2026, 10, 25, 1, 30, 0)), "02:30 CET");

    let new_york = sundays(New_York, (1, 0), (4, 0));
    assert_open_between(
        &new_york,
        utc(2026, 11, 1, 5, 0, 0),
        utc(2026, 11, 1, 9, 0, 0),
    );
    assert!(is_open(&new_york, utc(2026, 11, 1, 5, 30, 0)), "01:30 EDT");
    assert!(is_open(&new_york, utc(2026, 11, 1, 6, 30, 0)), "01:30 EST");
}

#[test]
fn a_new_york_window_starting_in_the_repeated_hour_opens_the_first_time() {
    // 01:30 happens twice on 1 November: 05:30 UTC (EDT) and 06:30 UTC (EST).
    let w = sundays(New_York, (1, 30), (5, 0));
    assert_eq!(
        next_open(&w, utc(2026, 10, 31, 12, 0, 0)),
        Some(utc(2026, 11, 1, 5, 30, 0))
    );
    assert!(
        !is_open(&w, utc(2026, 11, 1, 6, 0, 0)),
        "01:00 EST, again before the start"
    );
    assert!(is_open(&w, utc(2026, 11, 1, 6, 30, 0)), "01:30 EST");
}

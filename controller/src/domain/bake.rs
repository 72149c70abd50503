//! What a bake still lacks, from the latest read of the stage's alarms.
//!
//! Owns the rule "each alarm's metric has had `min_datapoints` data points since the deploy
//! finished, and no alarm sits in `INSUFFICIENT_DATA` (unless `insufficient_data = "pass"`)".
//! Alarms in ALARM are not looked at here: they roll the stage back before a bake is judged.
//! Must never: do I/O or read the clock.

use std::time::Duration;

use super::reason::DataGap;
use super::types::{AlarmReading, AlarmState};
use crate::config::{AlarmDelay, InsufficientData, MAX_ALARM_DELAY, Stage};

/// How long past its time the bake holds so the alarms can report a breach that began by its
/// end (`alarm_delay`): fixed, or with `auto` the longest `reports_within_secs` of the latest
/// read; nothing without alarms or before a read says.
pub fn hold(stage: &Stage, readings: Option<&[AlarmReading]>) -> Duration {
    if stage.alarms.is_empty() {
        return Duration::ZERO;
    }
    match stage.alarm_delay {
        AlarmDelay::Fixed(d) => d,
        AlarmDelay::Auto => readings
            .unwrap_or_default()
            .iter()
            .filter_map(|r| r.reports_within_secs)
            .max()
            .map_or(Duration::ZERO, Duration::from_secs)
            .min(MAX_ALARM_DELAY),
    }
}

/// The first alarm, in the stage's order, short of data; `None` when the bake has what it
/// needs. `readings` is the latest successful read (`None`: none yet). An alarm read in
/// several targets must have the data in each; a composite alarm (no metric of its own)
/// counts by its state only.
pub fn gap(stage: &Stage, readings: Option<&[AlarmReading]>) -> Option<DataGap> {
    if stage.alarms.is_empty() {
        return None;
    }
    let Some(readings) = readings.filter(|r| !r.is_empty()) else {
        return Some(DataGap::Unread);
    };
    stage
        .alarms
        .iter()
        .find_map(|alarm| alarm_gap(stage, alarm, readings))
}

/// The first alarm, in the stage's order, in `INSUFFICIENT_DATA` by the latest read (in any of
/// its targets), whatever the other alarms lack.
pub fn insufficient(stage: &Stage, readings: Option<&[AlarmReading]>) -> Option<DataGap> {
    let readings = readings?;
    stage.alarms.iter().find_map(|alarm| {
        quiet(alarm, readings).then(|| DataGap::InsufficientData {
            alarm: alarm.clone(),
        })
    })
}

/// Whether `alarm` read `INSUFFICIENT_DATA` in any of its targets.
fn quiet(alarm: &str, readings: &[AlarmReading]) -> bool {
    readings
        .iter()
        .any(|r| r.alarm == alarm && r.state == AlarmState::InsufficientData)
}

fn alarm_gap(stage: &Stage, alarm: &str, readings: &[AlarmReading]) -> Option<DataGap> {
    let needed = stage.min_datapoints;
    let mut of = readings.iter().filter(|r| r.alarm == alarm).peekable();
    if of.peek().is_none() {
        return (needed > 0).then(|| DataGap::Datapoints {
            alarm: alarm.to_string(),
            have: 0,
            needed,
        });
    }
    if quiet(alarm, readings) && stage.insufficient_data != InsufficientData::Pass {
        return Some(DataGap::InsufficientData {
            alarm: alarm.to_string(),
        });
    }
    let have = of.filter_map(|r| r.datapoints).min()?;
    (have < needed).then(|| DataGap::Datapoints {
        alarm: alarm.to_string(),
        have,
        needed,
    })
}

#[cfg(test)]
mod tests {
    use crate::domain::{AlarmReading, AlarmState, EffectOutput};

    #[test]
    fn a_bake_read_is_stored_typed_and_an_older_read_still_decodes() {
        let read = EffectOutput::alarms(vec![
            AlarmReading {
                alarm: "api-5xx".into(),
                state: AlarmState::InsufficientData,
                datapoints: Some(2),
                reports_within_secs: Some(180),
            },
            AlarmReading {
                alarm: "api-health".into(),
                state: AlarmState::Alarm,
                datapoints: None,
                reports_within_secs: None,
            },
        ]);
        let text = serde_json::to_string(&read).unwrap();
        assert!(text.contains(r#""state":"INSUFFICIENT_DATA""#), "{text}");
        assert_eq!(serde_json::from_str::<EffectOutput>(&text).unwrap(), read);
        assert_eq!(read.in_alarm(), ["api-health".to_string()]);

        let older = r#"{"kind":"alarms","in_alarm":["api-5xx"]}"#;
        let older: EffectOutput = serde_json::from_str(older).unwrap();
        assert_eq!(older.in_alarm(), ["api-5xx".to_string()]);
        assert!(older.readings().is_empty());
    }
}

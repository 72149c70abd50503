//! What a bake still lacks, from the latest read of the stage's alarms.
//!
//! Owns the rule "each alarm's metric has had `min_datapoints` data points since the deploy
//! finished, and no alarm sits in `INSUFFICIENT_DATA` (unless `insufficient_data = "pass"`)".
//! Alarms in ALARM are not looked at here: they roll the stage back before a bake is judged.
//! Must never: do I/O or read the clock.

use super::reason::DataGap;
use super::types::{AlarmReading, AlarmState};
use crate::config::{InsufficientData, Stage};

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
    let of: Vec<&AlarmReading> = of.collect();
    let quiet = of.iter().any(|r| r.state == AlarmState::InsufficientData);
    if quiet && stage.insufficient_data != InsufficientData::Pass {
        return Some(DataGap::InsufficientData {
            alarm: alarm.to_string(),
        });
    }
    let have = of.iter().filter_map(|r| r.datapoints).min()?;
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
            },
            AlarmReading {
                alarm: "api-health".into(),
                state: AlarmState::Alarm,
                datapoints: None,
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

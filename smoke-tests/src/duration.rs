//! Durations as written in suite files: a whole number and a unit, `ms`, `s`, `m` or `h`
//! (`250ms`, `5s`, `2m`, `1h`). Owns parsing only; no clock is read here.

use std::time::Duration;

use serde::{Deserialize, Deserializer, de::Error as _};

/// Parses `"500ms"`, `"5s"`, `"2m"` or `"1h"`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (digits, unit) = trimmed.split_at(split);
    if digits.is_empty() {
        return Err(format!(
            "invalid duration {text:?}: expected a whole number and a unit (ms, s, m, h), e.g. \"500ms\""
        ));
    }
    let millis_per_unit = unit_millis(unit).ok_or_else(|| match unit {
        "" => format!(
            "invalid duration {text:?}: missing unit; use ms, s, m or h, e.g. \"{digits}s\""
        ),
        _ => format!("invalid duration {text:?}: unknown unit {unit:?}; use ms, s, m or h"),
    })?;
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(millis_per_unit))
        .map(Duration::from_millis)
        .ok_or_else(|| format!("duration {text:?} is too large"))
}

fn unit_millis(unit: &str) -> Option<u64> {
    match unit {
        "ms" => Some(1),
        "s" => Some(1_000),
        "m" => Some(60_000),
        "h" => Some(3_600_000),
        _ => None,
    }
}

/// A [`Duration`] deserialized from a suite string such as `"5s"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse_duration(&text)
            .map(HumanDuration)
            .map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit() {
        let table = [
            ("0ms", 0),
            ("250ms", 250),
            ("5s", 5_000),
            ("2m", 120_000),
            ("1h", 3_600_000),
            (" 7s ", 7_000),
        ];
        for (text, millis) in table {
            assert_eq!(
                parse_duration(text),
                Ok(Duration::from_millis(millis)),
                "{text}"
            );
        }
    }

    #[test]
    fn rejects_malformed_text() {
        for text in ["", "s", "5", "5 s", "1.5s", "5d", "-1s", "5sec"] {
            assert!(parse_duration(text).is_err(), "{text:?} should be rejected");
        }
    }

    #[test]
    fn rejects_overflow() {
        let err = parse_duration("99999999999999999999h").unwrap_err();
        assert!(err.contains("too large"), "{err}");
    }
}

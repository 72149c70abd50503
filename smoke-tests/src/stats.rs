//! Latency statistics over a check's samples: nearest-rank percentiles, so every reported
//! figure is a latency that was actually observed. Pure: no clock, no I/O.

use std::time::Duration;

/// The `pct`-th percentile (0–100) of `samples` by the nearest-rank method; `None` when there
/// are no samples or `pct` is out of range.
pub fn percentile(samples: &[Duration], pct: f64) -> Option<Duration> {
    if samples.is_empty() || !(0.0..=100.0).contains(&pct) {
        return None;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    Some(nearest_rank(&sorted, pct))
}

/// Nearest rank in an already sorted, non-empty slice.
pub(crate) fn nearest_rank(sorted: &[Duration], pct: f64) -> Duration {
    let count = sorted.len();
    // `pct * count` is exact for whole percentiles, so an exact rank is never pushed up by rounding.
    let rank = (pct * count as f64 / 100.0).ceil() as usize;
    sorted[rank.clamp(1, count) - 1]
}

/// A duration in milliseconds, with sub-millisecond precision.
pub(crate) fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1_000.0
}

/// Milliseconds as a person reads them: `0.42 ms`, `3.1 ms`, `412 ms`.
pub(crate) fn format_ms(ms: f64) -> String {
    match ms {
        ms if ms < 1.0 => format!("{ms:.2} ms"),
        ms if ms < 10.0 => format!("{ms:.1} ms"),
        ms => format!("{ms:.0} ms"),
    }
}

/// A duration as a person reads it: `300 ms`, `5 s`, `1.5 s`.
pub(crate) fn format_duration(duration: Duration) -> String {
    let ms = duration.as_millis();
    if ms < 1_000 {
        format!("{ms} ms")
    } else if ms % 1_000 == 0 {
        format!("{} s", ms / 1_000)
    } else {
        format!("{:.1} s", duration.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(values: &[u64]) -> Vec<Duration> {
        values.iter().copied().map(Duration::from_millis).collect()
    }

    #[test]
    fn percentile_table() {
        let one_to_hundred: Vec<u64> = (1..=100).collect();
        let one_to_twenty: Vec<u64> = (1..=20).collect();
        let table: [(&[u64], f64, Option<u64>); 16] = [
            (&[], 50.0, None),
            (&[7], 50.0, Some(7)),
            (&[7], 99.0, Some(7)),
            (&[7], 0.0, Some(7)),
            (&one_to_hundred, 50.0, Some(50)),
            (&one_to_hundred, 95.0, Some(95)),
            (&one_to_hundred, 99.0, Some(99)),
            (&one_to_hundred, 100.0, Some(100)),
            (&one_to_twenty, 50.0, Some(10)),
            (&one_to_twenty, 95.0, Some(19)),
            (&one_to_twenty, 99.0, Some(20)),
            (&[30, 10, 20], 50.0, Some(20)),
            (&[30, 10, 20], 0.0, Some(10)),
            (&[15, 20, 35, 40, 50], 30.0, Some(20)),
            (&[15, 20, 35, 40, 50], 40.0, Some(20)),
            (&[1, 2, 3], 101.0, None),
        ];
        for (samples, pct, want) in table {
            let got = percentile(&ms(samples), pct);
            assert_eq!(
                got,
                want.map(Duration::from_millis),
                "p{pct} of {samples:?}"
            );
        }
    }

    #[test]
    fn formats_for_people() {
        assert_eq!(format_ms(0.4219), "0.42 ms");
        assert_eq!(format_ms(3.21), "3.2 ms");
        assert_eq!(format_ms(412.4), "412 ms");
        assert_eq!(format_duration(Duration::from_millis(300)), "300 ms");
        assert_eq!(format_duration(Duration::from_secs(5)), "5 s");
        assert_eq!(format_duration(Duration::from_millis(1_500)), "1.5 s");
    }
}

//! Judging what a stage answered against what a check expects. Pure: no I/O, no clock.
//! Every message says what was expected and what came back, so a log line alone explains
//! the failure.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use crate::stats::{self, format_duration, format_ms};

/// How much of a response body a message quotes.
const EXCERPT_CHARS: usize = 200;

/// What one check expects of every response.
#[derive(Debug, Clone)]
pub(crate) struct Expectations {
    pub status: u16,
    pub body_contains: Vec<String>,
    pub json: BTreeMap<String, Value>,
    pub max_latency: Option<Duration>,
}

/// One response as seen by the runner.
#[derive(Debug, Clone)]
pub(crate) struct Observed {
    pub status: u16,
    pub body: String,
}

/// Everything about `seen` that differs from `expect`, except latency; empty when it passes.
/// A wrong status is reported alone: the body of an error page would only add noise.
pub(crate) fn mismatches(expect: &Expectations, seen: &Observed) -> Vec<String> {
    if seen.status != expect.status {
        return vec![format!(
            "expected status {}, got {} ({})",
            expect.status,
            seen.status,
            excerpt(&seen.body)
        )];
    }
    let mut out: Vec<String> = expect
        .body_contains
        .iter()
        .filter(|needle| !seen.body.contains(needle.as_str()))
        .map(|needle| format!("body does not contain {needle:?} ({})", excerpt(&seen.body)))
        .collect();
    out.extend(json_mismatches(&expect.json, &seen.body));
    out
}

fn json_mismatches(expected: &BTreeMap<String, Value>, body: &str) -> Vec<String> {
    if expected.is_empty() {
        return Vec::new();
    }
    let document: Value = match serde_json::from_str(body) {
        Ok(document) => document,
        Err(err) => return vec![format!("body is not JSON ({err}; {})", excerpt(body))],
    };
    expected
        .iter()
        .filter_map(|(pointer, want)| pointer_mismatch(&document, pointer, want))
        .collect()
}

fn pointer_mismatch(document: &Value, pointer: &str, want: &Value) -> Option<String> {
    let shown = if pointer.is_empty() {
        "(whole body)"
    } else {
        pointer
    };
    match document.pointer(pointer) {
        None => Some(format!(
            "json {shown}: expected {}, but the response has no such field",
            render(want)
        )),
        Some(got) if same_json(want, got) => None,
        Some(got) => Some(format!(
            "json {shown}: expected {}, got {}",
            render(want),
            render(got)
        )),
    }
}

/// JSON equality where numbers compare by value (`1` equals `1.0`).
pub(crate) fn same_json(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x == y || x.as_f64() == y.as_f64(),
        (Value::Array(xs), Value::Array(ys)) => {
            xs.len() == ys.len() && xs.iter().zip(ys).all(|(x, y)| same_json(x, y))
        }
        (Value::Object(xs), Value::Object(ys)) => {
            xs.len() == ys.len()
                && xs
                    .iter()
                    .all(|(k, x)| ys.get(k).is_some_and(|y| same_json(x, y)))
        }
        _ => a == b,
    }
}

/// The latency failure of a round of samples, if any sample was slower than `max`.
pub(crate) fn latency_failure(max: Option<Duration>, latencies: &[Duration]) -> Option<String> {
    let max = max?;
    let slow = latencies.iter().filter(|latency| **latency > max).count();
    let slowest = latencies.iter().max().copied()?;
    if slow == 0 {
        return None;
    }
    let limit = format_duration(max);
    if latencies.len() == 1 {
        return Some(format!(
            "took {}, over max_latency {limit}",
            format_ms(stats::millis(slowest))
        ));
    }
    let mut sorted = latencies.to_vec();
    sorted.sort_unstable();
    let at = |pct| format_ms(stats::millis(stats::nearest_rank(&sorted, pct)));
    Some(format!(
        "{slow} of {} samples over max_latency {limit} (p50 {}, p95 {}, p99 {}, slowest {})",
        latencies.len(),
        at(50.0),
        at(95.0),
        at(99.0),
        format_ms(stats::millis(slowest))
    ))
}

/// A JSON value in a message, shortened when long.
fn render(value: &Value) -> String {
    shorten(&value.to_string())
}

/// The start of a body, quoted, for a message.
fn excerpt(body: &str) -> String {
    if body.is_empty() {
        return "empty body".to_string();
    }
    format!("body: {}", shorten(&format!("{:?}", body.trim())))
}

fn shorten(text: &str) -> String {
    match text.char_indices().nth(EXCERPT_CHARS) {
        None => text.to_string(),
        Some((cut, _)) => format!("{}…", &text[..cut]),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn expect() -> Expectations {
        Expectations {
            status: 200,
            body_contains: vec!["ok".into()],
            json: BTreeMap::from([("/version/major".to_string(), json!(1))]),
            max_latency: Some(Duration::from_millis(300)),
        }
    }

    fn seen(status: u16, body: &str) -> Observed {
        Observed {
            status,
            body: body.to_string(),
        }
    }

    #[test]
    fn passing_response_has_no_mismatch() {
        let got = mismatches(
            &expect(),
            &seen(200, r#"{"status":"ok","version":{"major":1.0}}"#),
        );
        assert!(got.is_empty(), "{got:?}");
    }

    #[test]
    fn wrong_status_is_reported_alone_with_the_body() {
        let got = mismatches(&expect(), &seen(503, "warming up"));
        assert_eq!(
            got,
            vec![r#"expected status 200, got 503 (body: "warming up")"#.to_string()]
        );
    }

    #[test]
    fn body_and_json_mismatches_are_all_reported() {
        let got = mismatches(&expect(), &seen(200, r#"{"version":{"minor":2}}"#));
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(
            got[0].starts_with(r#"body does not contain "ok""#),
            "{}",
            got[0]
        );
        assert!(
            got[1].contains("json /version/major: expected 1, but the response has no such field")
        );
    }

    #[test]
    fn non_json_body_is_explained() {
        let mut expect = expect();
        expect.body_contains.clear();
        let got = mismatches(&expect, &seen(200, "<html>"));
        assert!(got[0].starts_with("body is not JSON"), "{got:?}");
    }

    #[test]
    fn numbers_compare_by_value() {
        assert!(same_json(&json!(1), &json!(1.0)));
        assert!(same_json(
            &json!({"a": [1, "x"]}),
            &json!({"a": [1.0, "x"]})
        ));
        assert!(!same_json(&json!(1), &json!("1")));
        assert!(!same_json(&json!({"a": 1}), &json!({"a": 1, "b": 2})));
    }

    #[test]
    fn latency_failure_names_the_limit() {
        let max = Some(Duration::from_millis(300));
        assert_eq!(latency_failure(max, &[Duration::from_millis(200)]), None);
        let one = latency_failure(max, &[Duration::from_millis(412)]).unwrap();
        assert_eq!(one, "took 412 ms, over max_latency 300 ms");
        let many = latency_failure(
            max,
            &[Duration::from_millis(100), Duration::from_millis(400)],
        )
        .unwrap();
        assert!(
            many.starts_with("1 of 2 samples over max_latency 300 ms"),
            "{many}"
        );
    }

    #[test]
    fn long_bodies_are_shortened() {
        let body = "x".repeat(1_000);
        let text = excerpt(&body);
        assert!(text.chars().count() < 250 && text.ends_with('…'), "{text}");
    }
}

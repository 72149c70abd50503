//! Runs suites against a real HTTP server on 127.0.0.1 and checks what the report says.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use smoke_tests::{Report, RunError, RunOptions, Suite, percentile, run};

/// Parses `text` and runs it against `base_url` with `vars`.
async fn run_suite(text: &str, base_url: &str, vars: &[(&str, &str)]) -> Report {
    let suite = Suite::parse(text, "test.toml").expect("the test suite is valid");
    let env: BTreeMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let options = RunOptions {
        base_url: base_url.to_string(),
        env,
    };
    tokio::time::timeout(Duration::from_secs(30), run(&suite, &options))
        .await
        .expect("the run finishes")
}

fn only_failure(report: &Report) -> String {
    assert!(!report.passed, "{}", report.summary());
    let failures: Vec<_> = report.failures().collect();
    assert_eq!(failures.len(), 1, "{}", report.summary());
    failures[0]
        .failure
        .clone()
        .expect("a failed check says why")
}

#[tokio::test]
async fn a_healthy_stage_passes() {
    let stage = common::start().await;
    let suite = r#"
        name = "backend smoke"
        [defaults]
        headers = { "User-Agent" = "tollgate-smoke" }

        [[check]]
        name = "health"
        path = "/healthz"
        body_contains = ["ok"]

        [[check]]
        name = "version"
        path = "/api/version"
        headers = { Accept = "application/json" }
        body_contains = ["${COMMIT_SHA}"]
        json = { "/status" = "ok", "/version/major" = 1, "/commit" = "${COMMIT_SHA}" }

        [[check]]
        name = "echo"
        method = "POST"
        path = "/echo"
        headers = { X-Stage = "${STAGE}" }
        body_json = { release = "${COMMIT_SHA}" }
        json = { "/stage" = "gamma", "/user_agent" = "tollgate-smoke", "/content_type" = "application/json", "/body" = '{"release":"abc123def"}' }
    "#;
    let vars = [("COMMIT_SHA", common::COMMIT), ("STAGE", "gamma")];
    let report = run_suite(suite, &stage.base_url, &vars).await;
    assert!(report.passed, "{}", report.summary());
    assert_eq!(report.checks.len(), 3);
    assert!(
        report
            .checks
            .iter()
            .all(|c| c.passed && c.attempts == 1 && c.failure.is_none())
    );
    assert_eq!(
        report.checks[0].request,
        format!("GET {}/healthz", stage.base_url)
    );
    assert_eq!(
        report.summary().lines().last(),
        Some(&*format!(
            "PASSED: 3 checks in {:.1} s",
            report.elapsed_ms / 1000.0
        ))
    );
    assert_eq!(stage.requests(), 3);
}

#[tokio::test]
async fn a_wrong_status_names_expected_and_actual() {
    let stage = common::start().await;
    let suite = r#"
        name = "s"
        [[check]]
        name = "broken"
        path = "/status/500"
    "#;
    let report = run_suite(suite, &stage.base_url, &[]).await;
    let failure = only_failure(&report);
    let url = format!("{}/status/500", stage.base_url);
    assert_eq!(
        failure,
        format!(r#"check "broken": GET {url}: expected status 200, got 500 (body: "status 500")"#)
    );
    let summary = report.summary();
    assert_eq!(
        summary.lines().last(),
        Some(&*format!("  {failure}")),
        "{summary}"
    );
}

#[tokio::test]
async fn missing_body_text_is_named() {
    let stage = common::start().await;
    let suite = r#"
        name = "s"
        [[check]]
        name = "health"
        path = "/healthz"
        body_contains = ["ok", "healthy"]
    "#;
    let failure = only_failure(&run_suite(suite, &stage.base_url, &[]).await);
    assert!(failure.starts_with(r#"check "health": GET "#), "{failure}");
    assert!(
        failure.ends_with(r#"body does not contain "healthy" (body: "ok")"#),
        "{failure}"
    );
}

#[tokio::test]
async fn a_json_pointer_mismatch_shows_both_values() {
    let stage = common::start().await;
    let suite = r#"
        name = "s"
        [[check]]
        name = "version"
        path = "/api/version"
        json = { "/version/major" = 2, "/status" = "ok", "/build" = "x" }
    "#;
    let failure = only_failure(&run_suite(suite, &stage.base_url, &[]).await);
    assert!(
        failure.contains(r#"json /build: expected "x", but the response has no such field"#),
        "{failure}"
    );
    assert!(
        failure.contains("json /version/major: expected 2, got 1"),
        "{failure}"
    );
    assert!(!failure.contains("/status"), "{failure}");
}

#[tokio::test]
async fn retries_ride_out_a_warming_stage() {
    let stage = common::start().await;
    let suite = r#"
        name = "s"
        [defaults]
        retries = 5
        backoff = "10ms"
        [[check]]
        name = "warm"
        path = "/flaky"
    "#;
    let report = run_suite(suite, &stage.base_url, &[]).await;
    assert!(report.passed, "{}", report.summary());
    assert_eq!(report.checks[0].attempts, 3);
    assert_eq!(stage.flaky_calls(), 3);
    assert!(
        report.summary().contains("3 attempts"),
        "{}",
        report.summary()
    );
}

#[tokio::test]
async fn too_few_retries_report_the_last_failure() {
    let stage = common::start().await;
    let suite = r#"
        name = "s"
        [defaults]
        retries = 1
        backoff = "10ms"
        [[check]]
        name = "warm"
        path = "/flaky"
    "#;
    let report = run_suite(suite, &stage.base_url, &[]).await;
    let failure = only_failure(&report);
    assert!(
        failure.ends_with(r#"expected status 200, got 503 (body: "warming up")"#),
        "{failure}"
    );
    assert_eq!(report.checks[0].attempts, 2);
    assert_eq!(stage.flaky_calls(), 2);
    let last = report.summary().lines().last().unwrap().to_string();
    assert!(last.ends_with("[gave up after 2 attempts]"), "{last}");
}

#[tokio::test]
async fn a_slow_answer_fails_max_latency() {
    let stage = common::start().await;
    let suite = r#"
        name = "s"
        [[check]]
        name = "slow"
        path = "/slow"
        max_latency = "50ms"
    "#;
    let report = run_suite(suite, &stage.base_url, &[]).await;
    let failure = only_failure(&report);
    assert!(failure.contains("over max_latency 50 ms"), "{failure}");
    let latency = report.checks[0].latencies_ms[0];
    assert!(latency >= common::SLOW.as_millis() as f64, "{latency}");
}

#[tokio::test]
async fn slow_samples_are_counted_with_percentiles() {
    let stage = common::start().await;
    let suite = r#"
        name = "s"
        [[check]]
        name = "slow"
        path = "/slow"
        max_latency = "50ms"
        samples = 3
    "#;
    let failure = only_failure(&run_suite(suite, &stage.base_url, &[]).await);
    assert!(
        failure.contains("3 of 3 samples over max_latency 50 ms (p50 "),
        "{failure}"
    );
}

#[tokio::test]
async fn samples_report_percentiles() {
    let stage = common::start().await;
    let suite = r#"
        name = "s"
        [[check]]
        name = "health"
        path = "/healthz"
        max_latency = "5s"
        samples = 25
    "#;
    let report = run_suite(suite, &stage.base_url, &[]).await;
    assert!(report.passed, "{}", report.summary());
    let check = &report.checks[0];
    let stats = check.stats.expect("samples > 1 report percentiles");
    assert_eq!((stats.samples, check.latencies_ms.len()), (25, 25));
    assert!(stats.min_ms <= stats.p50_ms && stats.p50_ms <= stats.p95_ms);
    assert!(stats.p95_ms <= stats.p99_ms && stats.p99_ms <= stats.max_ms);
    let samples: Vec<Duration> = check
        .latencies_ms
        .iter()
        .map(|ms| Duration::from_secs_f64(ms / 1000.0))
        .collect();
    let p95 = percentile(&samples, 95.0).unwrap().as_secs_f64() * 1000.0;
    assert!(
        (p95 - stats.p95_ms).abs() < 0.001,
        "{p95} vs {}",
        stats.p95_ms
    );
    assert!(
        report.summary().contains("25 samples: p50 "),
        "{}",
        report.summary()
    );
    assert_eq!(stage.requests(), 25);
}

#[tokio::test]
async fn a_single_sample_has_no_percentiles() {
    let stage = common::start().await;
    let suite = "name = \"s\"\n[[check]]\nname = \"health\"\npath = \"/healthz\"\n";
    let report = run_suite(suite, &stage.base_url, &[]).await;
    assert!(report.checks[0].stats.is_none());
    assert_eq!(report.checks[0].latencies_ms.len(), 1);
}

#[tokio::test]
async fn an_unknown_variable_stops_the_run_before_any_request() {
    let stage = common::start().await;
    let suite = r#"
        name = "s"
        [[check]]
        name = "health"
        path = "/healthz"
        [[check]]
        name = "version"
        path = "/api/version"
        body_contains = ["${COMMIT_SHA}"]
    "#;
    let report = run_suite(suite, &stage.base_url, &[("STAGE_URL", "x")]).await;
    assert!(!report.passed && report.checks.is_empty());
    let reason = report.aborted.clone().expect("the run is aborted");
    assert_eq!(
        reason,
        RunError::UnknownVariable {
            origin: "test.toml".into(),
            check: "version".into(),
            field: "body_contains[0]".into(),
            name: "COMMIT_SHA".into(),
        }
    );
    let summary = report.summary();
    assert!(
        summary.contains(r#"check "version": unknown variable ${COMMIT_SHA} in body_contains[0]"#),
        "{summary}"
    );
    assert_eq!(stage.requests(), 0);
}

#[tokio::test]
async fn an_invalid_base_url_stops_the_run() {
    let suite = "name = \"s\"\n[[check]]\nname = \"health\"\npath = \"/healthz\"\n";
    let report = run_suite(suite, "127.0.0.1:1", &[]).await;
    assert!(
        matches!(report.aborted, Some(RunError::BaseUrl { .. })),
        "{}",
        report.summary()
    );
}

#[tokio::test]
async fn an_unreachable_stage_is_a_failed_check() {
    let base_url = common::closed_base_url().await;
    let suite = "name = \"s\"\n[[check]]\nname = \"health\"\npath = \"/healthz\"\n";
    let report = run_suite(suite, &base_url, &[]).await;
    let failure = only_failure(&report);
    assert!(
        failure.starts_with(&format!(r#"check "health": GET {base_url}/healthz: "#)),
        "{failure}"
    );
    assert!(failure.contains(": cannot connect: "), "{failure}");
}

#[tokio::test]
async fn a_request_timeout_is_a_failed_check() {
    let stage = common::start().await;
    let suite = "name = \"s\"\n[[check]]\nname = \"slow\"\npath = \"/slow\"\ntimeout = \"20ms\"\n";
    let failure = only_failure(&run_suite(suite, &stage.base_url, &[]).await);
    assert!(
        failure.ends_with("no complete response within the 20 ms timeout"),
        "{failure}"
    );
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let stage = common::start().await;
    let suite =
        "name = \"s\"\n[[check]]\nname = \"moved\"\npath = \"/redirect\"\nexpect_status = 302\n";
    let report = run_suite(suite, &stage.base_url, &[]).await;
    assert!(report.passed, "{}", report.summary());
    assert_eq!(stage.requests(), 1);
}

#[tokio::test]
async fn the_shipped_suites_pass_against_a_good_stage() {
    let stage = common::start().await;
    for file in ["backend-gamma.toml", "backend-prod.toml"] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
        let suite = Suite::load(&path).expect("shipped suite is valid");
        let mut options = RunOptions::new(&stage.base_url);
        options
            .env
            .insert("COMMIT_SHA".into(), common::COMMIT.into());
        let report = run(&suite, &options).await;
        assert!(report.passed, "{}", report.summary());
    }
}

//! Loading suites: the format's rules and where its errors point.

use std::collections::BTreeSet;
use std::time::Duration;

use smoke_tests::{RequestBody, Suite, SuiteError};

fn parse_error(text: &str) -> (usize, usize, String, String) {
    match Suite::parse(text, "suite.toml") {
        Err(err @ SuiteError::Invalid { .. }) => {
            let shown = err.to_string();
            let SuiteError::Invalid {
                location, message, ..
            } = err
            else {
                unreachable!()
            };
            let at = location.expect("the error has a location");
            (at.line, at.column, message, shown)
        }
        other => panic!("expected an invalid-suite error, got {other:?}"),
    }
}

#[test]
fn an_unknown_key_is_reported_with_line_and_column() {
    let text = "name = \"s\"\n\n[[check]]\nname = \"health\"\npath = \"/healthz\"\n  expect_stauts = 200\n";
    let (line, column, message, shown) = parse_error(text);
    assert_eq!((line, column), (6, 3));
    assert!(
        message.contains("unknown field `expect_stauts`"),
        "{message}"
    );
    assert!(
        shown.starts_with("suite.toml:6:3: unknown field `expect_stauts`"),
        "{shown}"
    );
    assert!(shown.contains("6 |   expect_stauts = 200"), "{shown}");
}

#[test]
fn an_unknown_top_level_key_is_rejected() {
    let (line, column, message, _) = parse_error("name = \"s\"\nchecks = []\n");
    assert_eq!((line, column), (2, 1));
    assert!(message.contains("unknown field `checks`"), "{message}");
}

#[test]
fn bad_values_point_at_the_value() {
    let base = "name = \"s\"\n[[check]]\nname = \"a\"\npath = \"/\"\n";
    let table = [
        ("timeout = \"5\"", "missing unit"),
        ("max_latency = \"1.5s\"", "invalid duration"),
        ("timeout = \"0s\"", "longer than zero"),
        ("samples = 0", "from 1 to 10000"),
        ("retries = 1000", "from 0 to 100"),
        ("expect_status = 42", "from 100 to 599"),
        ("method = \"FETCH\"", "unknown HTTP method \"FETCH\""),
        ("json = { \"status\" = \"ok\" }", "must start with \"/\""),
        ("body = \"${A\"", "unterminated"),
        ("headers = { \"X Y\" = \"1\" }", "invalid header name"),
    ];
    for (line_text, want) in table {
        let (line, column, message, _) = parse_error(&format!("{base}{line_text}\n"));
        assert_eq!(line, 5, "{line_text}: {message}");
        assert!(column > 1, "{line_text}: column {column}");
        assert!(message.contains(want), "{line_text}: {message}");
    }
}

#[test]
fn a_path_must_be_absolute() {
    let (line, _, message, _) =
        parse_error("name = \"s\"\n[[check]]\nname = \"a\"\npath = \"healthz\"\n");
    assert_eq!(line, 4);
    assert!(message.contains("must start with \"/\""), "{message}");
}

#[test]
fn cross_field_mistakes_point_at_the_check() {
    let duplicate = "name = \"s\"\n[[check]]\nname = \"a\"\npath = \"/\"\n[[check]]\nname = \"a\"\npath = \"/b\"\n";
    let (line, column, message, _) = parse_error(duplicate);
    assert_eq!(
        (line, column, message.as_str()),
        (6, 8, "duplicate check name \"a\"")
    );
    let both = "name = \"s\"\n[[check]]\nname = \"a\"\npath = \"/\"\nbody = \"x\"\nbody_json = { a = 1 }\n";
    let (line, _, message, _) = parse_error(both);
    assert_eq!(line, 3);
    assert!(message.contains("both body and body_json"), "{message}");
}

#[test]
fn a_suite_needs_checks() {
    let err = Suite::parse("name = \"s\"\n", "suite.toml").unwrap_err();
    assert!(err.to_string().contains("the suite has no checks"), "{err}");
}

#[test]
fn an_unreadable_file_is_a_read_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = Suite::load(dir.path().join("missing.toml")).unwrap_err();
    assert!(matches!(err, SuiteError::Read { .. }), "{err:?}");
    assert!(
        err.to_string().contains("missing.toml: cannot read suite"),
        "{err}"
    );
}

#[test]
fn defaults_apply_and_checks_override_them() {
    let text = r#"
        name = "s"
        [defaults]
        timeout = "2s"
        retries = 3
        backoff = "100ms"
        headers = { "User-Agent" = "tollgate-smoke", "X-Team" = "core" }

        [[check]]
        name = "plain"
        path = "/a"

        [[check]]
        name = "custom"
        method = "POST"
        path = "/b"
        timeout = "1m"
        retries = 0
        headers = { "user-agent" = "other" }
        body_json = { a = [1, 2] }
        expect_status = 201
        samples = 10
        max_latency = "250ms"
    "#;
    let suite = Suite::parse(text, "suite.toml").unwrap();
    let [plain, custom] = &suite.checks[..] else {
        panic!("two checks")
    };
    assert_eq!(
        (plain.method.as_str(), plain.expect_status, plain.samples),
        ("GET", 200, 1)
    );
    assert_eq!((plain.timeout, plain.retries), (Duration::from_secs(2), 3));
    assert_eq!(plain.backoff, Duration::from_millis(100));
    assert_eq!(plain.headers.len(), 2);
    assert_eq!(
        (custom.timeout, custom.retries, custom.expect_status),
        (Duration::from_secs(60), 0, 201)
    );
    assert_eq!(
        custom.headers.get("user-agent").map(String::as_str),
        Some("other")
    );
    assert!(!custom.headers.contains_key("User-Agent"));
    assert_eq!(
        custom.body,
        Some(RequestBody::Json(serde_json::json!({"a": [1, 2]})))
    );
    assert_eq!(
        (custom.samples, custom.max_latency),
        (10, Some(Duration::from_millis(250)))
    );
}

#[test]
fn variables_lists_every_reference() {
    let text = r#"
        name = "s"
        [defaults]
        headers = { Authorization = "Bearer ${TOKEN}" }
        [[check]]
        name = "a"
        path = "/${PREFIX}/x"
        body = "$${NOT_A_VAR}"
        json = { "/sha" = "${COMMIT_SHA}" }
    "#;
    let suite = Suite::parse(text, "suite.toml").unwrap();
    let want: BTreeSet<String> = ["COMMIT_SHA", "PREFIX", "TOKEN"].map(String::from).into();
    assert_eq!(suite.variables(), want);
}

#[test]
fn the_shipped_suites_are_valid() {
    for file in ["backend-gamma.toml", "backend-prod.toml"] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
        let suite = Suite::load(&path).unwrap_or_else(|err| panic!("{err}"));
        assert_eq!(
            suite.variables(),
            BTreeSet::from(["COMMIT_SHA".to_string()]),
            "{file}"
        );
        let paths: Vec<&str> = suite.checks.iter().map(|c| c.path.as_str()).collect();
        assert!(
            paths.contains(&"/healthz") && paths.contains(&"/api/version"),
            "{file}"
        );
    }
}

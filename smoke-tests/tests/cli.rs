//! The `smoke-tests` binary end to end: exit codes 0 (passed), 1 (a check failed) and
//! 2 (suite unreadable or invalid, or the run could not start), against a real server.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use tokio::process::Command;

const PASSING: &str =
    "name = \"s\"\n[[check]]\nname = \"health\"\npath = \"/healthz\"\nbody_contains = [\"ok\"]\n";
const FAILING: &str = "name = \"s\"\n[[check]]\nname = \"broken\"\npath = \"/status/503\"\n";
const NEEDS_SHA: &str = "name = \"s\"\n[[check]]\nname = \"version\"\npath = \"/api/version\"\nbody_contains = [\"${COMMIT_SHA}\"]\n";

fn write_suite(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("suite.toml");
    std::fs::write(&path, text).unwrap();
    path
}

async fn smoke(args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_smoke-tests"));
    command
        .args(args)
        .env_remove("COMMIT_SHA")
        .kill_on_drop(true);
    tokio::time::timeout(Duration::from_secs(30), command.output())
        .await
        .expect("the binary finishes")
        .expect("the binary starts")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test]
async fn exit_0_when_every_check_passes() {
    let stage = common::start().await;
    let dir = tempfile::tempdir().unwrap();
    let suite = write_suite(dir.path(), PASSING);
    let out = smoke(&[
        "run",
        suite.to_str().unwrap(),
        "--base-url",
        &stage.base_url,
    ])
    .await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(
        text(&out.stdout)
            .lines()
            .last()
            .unwrap()
            .starts_with("PASSED: 1 check")
    );
}

#[tokio::test]
async fn exit_1_when_a_check_fails_and_the_last_line_says_why() {
    let stage = common::start().await;
    let dir = tempfile::tempdir().unwrap();
    let suite = write_suite(dir.path(), FAILING);
    let out = smoke(&[
        "run",
        suite.to_str().unwrap(),
        "--base-url",
        &stage.base_url,
    ])
    .await;
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let stdout = text(&out.stdout);
    let last = stdout.lines().last().unwrap();
    assert!(
        last.contains(r#"check "broken""#) && last.contains("expected status 200, got 503"),
        "{stdout}"
    );
}

#[tokio::test]
async fn exit_2_when_the_suite_is_invalid() {
    let dir = tempfile::tempdir().unwrap();
    let suite = write_suite(
        dir.path(),
        "name = \"s\"\n[[check]]\nname = \"a\"\npath = \"/\"\nexpect = 200\n",
    );
    let out = smoke(&[
        "run",
        suite.to_str().unwrap(),
        "--base-url",
        "http://127.0.0.1:9",
    ])
    .await;
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("suite.toml:5:1: unknown field `expect`"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
}

#[tokio::test]
async fn exit_2_when_the_suite_is_unreadable() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.toml");
    let out = smoke(&[
        "run",
        missing.to_str().unwrap(),
        "--base-url",
        "http://127.0.0.1:9",
    ])
    .await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("nope.toml: cannot read suite"),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test]
async fn exit_2_for_an_unknown_variable_and_nothing_is_sent() {
    let stage = common::start().await;
    let dir = tempfile::tempdir().unwrap();
    let suite = write_suite(dir.path(), NEEDS_SHA);
    let out = smoke(&[
        "run",
        suite.to_str().unwrap(),
        "--base-url",
        &stage.base_url,
    ])
    .await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stdout).contains("unknown variable ${COMMIT_SHA}"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(stage.requests(), 0);
}

#[tokio::test]
async fn vars_fill_in_variables_and_json_prints_the_report() {
    let stage = common::start().await;
    let dir = tempfile::tempdir().unwrap();
    let suite = write_suite(dir.path(), NEEDS_SHA);
    let sha = format!("COMMIT_SHA={}", common::COMMIT);
    let args = [
        "run",
        suite.to_str().unwrap(),
        "--base-url",
        &stage.base_url,
        "--var",
        &sha,
        "--json",
    ];
    let out = smoke(&args).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    assert_eq!(report["passed"], true);
    assert_eq!(report["checks"][0]["name"], "version");
    assert_eq!(report["checks"][0]["attempts"], 1);
}

#[tokio::test]
async fn validate_lists_variables_without_sending() {
    let dir = tempfile::tempdir().unwrap();
    let suite = write_suite(dir.path(), NEEDS_SHA);
    let out = smoke(&["validate", suite.to_str().unwrap()]).await;
    assert_eq!(out.status.code(), Some(0));
    assert!(
        text(&out.stdout).contains("variables: COMMIT_SHA"),
        "{}",
        text(&out.stdout)
    );
}

#[tokio::test]
async fn exit_2_on_bad_arguments() {
    let out = smoke(&["run"]).await;
    assert_eq!(out.status.code(), Some(2));
}

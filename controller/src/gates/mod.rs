//! Stage tests: the real [`TestRunner`](crate::engine::ports::TestRunner) behind a stage's
//! `before` and `after` gates.
//!
//! Owns running one configured test against one deployed stage and turning whatever happened
//! into a [`TestResult`]: a local command ([`command`]), an HTTP smoke suite (the
//! `smoke-tests` crate), GitHub check runs or a GitHub Actions workflow (through
//! [`GithubTests`]). [`runner::StageTestRunner`] dispatches on the test's kind.
//!
//! # Variables
//! Every test sees the same variables, from [`test_variables`]: `TOLLGATE_PIPELINE`,
//! `TOLLGATE_STAGE`, `TOLLGATE_RELEASE` (`r12`), `COMMIT_SHA`, `IMAGE_DIGEST`, `IMAGE_URI`,
//! `AWS_ACCOUNT_ID`, `AWS_REGION`, each deploy output as `STACK_<NAME_IN_UPPER_SNAKE>`, and
//! `STAGE_URL` (the output `ServiceUrl`) when the deploy produced it. A command gets them as
//! environment variables, a smoke suite as `${NAME}` values, a workflow's inputs through
//! `${NAME}` substitution ([`substitute`]).
//!
//! # Guarantees
//! - A test that cannot run (no program, no suite, no output to test against, no GitHub token)
//!   is a failed [`TestResult`] saying why, never a panic.
//! - A result's `output_tail` is bounded: at most [`TAIL_LINES`] lines and [`TAIL_BYTES`] bytes.
//!
//! # Must never
//! - decide what a result means for the release: that is the engine's and the domain's job.

pub mod approval;
pub mod command;
pub mod runner;

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;

use crate::engine::ports::{PortError, TestContext, TestResult};

/// Lines of output kept in a result's `output_tail`.
pub const TAIL_LINES: usize = 20;
/// Bytes of output kept in a result's `output_tail`.
pub const TAIL_BYTES: usize = 4 * 1024;
/// The deploy output whose value becomes `STAGE_URL`.
pub const STAGE_URL_OUTPUT: &str = "ServiceUrl";

/// The GitHub-backed tests, implemented by the GitHub forge; a trait so the runner can be
/// built without a token and tested without GitHub.
#[async_trait]
pub trait GithubTests: Send + Sync {
    /// Waits (up to `timeout`) until the check runs `names` on `sha` have all passed.
    async fn checks_gate(
        &self,
        repo: &str,
        sha: &str,
        names: &[String],
        timeout: Duration,
    ) -> Result<TestResult, PortError>;

    /// Dispatches `workflow` on `git_ref` with `inputs` and waits (up to `timeout`) for its run.
    async fn run_workflow(
        &self,
        repo: &str,
        workflow: &str,
        git_ref: &str,
        inputs: &BTreeMap<String, String>,
        timeout: Duration,
    ) -> Result<TestResult, PortError>;
}

/// The variables every test of a stage sees (see the module documentation).
pub fn test_variables(ctx: &TestContext) -> BTreeMap<String, String> {
    let fixed = [
        ("TOLLGATE_PIPELINE", ctx.pipeline.clone()),
        ("TOLLGATE_STAGE", ctx.stage.clone()),
        ("TOLLGATE_RELEASE", ctx.release.to_string()),
        ("COMMIT_SHA", ctx.sha.clone()),
        ("IMAGE_DIGEST", ctx.digest.clone()),
        ("IMAGE_URI", ctx.image_uri.clone()),
        ("AWS_ACCOUNT_ID", ctx.account_id.clone()),
        ("AWS_REGION", ctx.region.clone()),
    ];
    let mut vars: BTreeMap<String, String> = fixed
        .into_iter()
        .map(|(name, value)| (name.to_string(), value))
        .collect();
    for (name, value) in &ctx.outputs {
        vars.insert(format!("STACK_{}", upper_snake(name)), value.clone());
    }
    if let Some(url) = ctx.outputs.get(STAGE_URL_OUTPUT) {
        vars.insert("STAGE_URL".into(), url.clone());
    }
    vars
}

/// `ServiceUrl` → `SERVICE_URL`, `DBHost` → `DB_HOST`, `api-endpoint` → `API_ENDPOINT`.
/// Anything but an ASCII letter or digit becomes one `_`.
pub fn upper_snake(name: &str) -> String {
    let chars: Vec<char> = name.chars().collect();
    let mut out = String::with_capacity(name.len() + 4);
    for (i, &c) in chars.iter().enumerate() {
        if !c.is_ascii_alphanumeric() {
            if !out.is_empty() && !out.ends_with('_') {
                out.push('_');
            }
            continue;
        }
        if c.is_ascii_uppercase() && i > 0 && starts_word(&chars, i) && !out.ends_with('_') {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out.trim_end_matches('_').to_string()
}

/// Whether the uppercase letter at `i` begins a new word (`aB`, `1B`, or `ABc` at the `B`).
fn starts_word(chars: &[char], i: usize) -> bool {
    let prev = chars[i - 1];
    let next_lower = chars.get(i + 1).is_some_and(char::is_ascii_lowercase);
    prev.is_ascii_lowercase() || prev.is_ascii_digit() || (prev.is_ascii_uppercase() && next_lower)
}

/// Replaces each `${NAME}` in `text` by its value in `vars`; `$$` is a literal `$` and any
/// other `$` is kept. An unknown name or an unclosed `${` is an error naming it.
pub fn substitute(text: &str, vars: &BTreeMap<String, String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(more) = after.strip_prefix('$') {
            out.push('$');
            rest = more;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body
                .find('}')
                .ok_or_else(|| format!("unclosed `${{` in {text:?}"))?;
            let name = &body[..end];
            let value = vars.get(name).ok_or_else(|| unknown_variable(name, vars))?;
            out.push_str(value);
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn unknown_variable(name: &str, vars: &BTreeMap<String, String>) -> String {
    let known: Vec<&str> = vars.keys().map(String::as_str).collect();
    format!("unknown variable ${{{name}}}; known: {}", known.join(", "))
}

/// The last [`TAIL_LINES`] lines of `text`, cut further to its last [`TAIL_BYTES`] bytes (on
/// a character boundary), without trailing blank lines.
pub fn output_tail(text: &str) -> String {
    let trimmed = text.trim_end();
    let start = trimmed
        .rmatch_indices('\n')
        .nth(TAIL_LINES - 1)
        .map_or(0, |(at, _)| at + 1);
    let mut tail = &trimmed[start..];
    if tail.len() > TAIL_BYTES {
        let mut cut = tail.len() - TAIL_BYTES;
        while !tail.is_char_boundary(cut) {
            cut += 1;
        }
        tail = &tail[cut..];
    }
    tail.to_string()
}

/// A duration as people write it in config: `5m`, `90s`, `1m30s`, `1h`, `250ms`.
pub fn human(d: Duration) -> String {
    let secs = d.as_secs();
    if secs == 0 {
        return format!("{}ms", d.as_millis());
    }
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let parts = [(h, "h"), (m, "m"), (s, "s")];
    parts
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, unit)| format!("{n}{unit}"))
        .collect()
}

/// A passing result.
pub(crate) fn passed(summary: String, output_tail: String) -> TestResult {
    TestResult {
        passed: true,
        summary,
        output_tail,
    }
}

/// A failing result.
pub(crate) fn failed(summary: String, output_tail: String) -> TestResult {
    TestResult {
        passed: false,
        summary,
        output_tail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upper_snake_splits_words_and_acronyms() {
        let cases = [
            ("ServiceUrl", "SERVICE_URL"),
            ("DBHost", "DB_HOST"),
            ("api-endpoint", "API_ENDPOINT"),
            ("Url2", "URL2"),
            ("Queue2Arn", "QUEUE2_ARN"),
            ("already_SNAKE", "ALREADY_SNAKE"),
            ("--x--", "X"),
            ("", ""),
        ];
        for (name, want) in cases {
            assert_eq!(upper_snake(name), want, "{name}");
        }
    }

    #[test]
    fn substitute_replaces_known_names_only() {
        let vars = BTreeMap::from([("A".to_string(), "1".to_string())]);
        assert_eq!(substitute("x${A}y$$z$w", &vars).unwrap(), "x1y$z$w");
        assert!(substitute("${B}", &vars).unwrap_err().contains("${B}"));
        assert!(substitute("${A", &vars).unwrap_err().contains("unclosed"));
    }

    #[test]
    fn output_tail_is_bounded_in_lines_and_bytes() {
        let text: String = (0..100).map(|i| format!("line {i}\n")).collect();
        let tail = output_tail(&text);
        assert_eq!(tail.lines().count(), TAIL_LINES);
        assert!(tail.ends_with("line 99"));
        let long = "é".repeat(10_000);
        assert!(output_tail(&long).len() <= TAIL_BYTES);
    }

    #[test]
    fn human_durations() {
        assert_eq!(human(Duration::from_secs(300)), "5m");
        assert_eq!(human(Duration::from_secs(90)), "1m30s");
        assert_eq!(human(Duration::from_millis(250)), "250ms");
    }
}

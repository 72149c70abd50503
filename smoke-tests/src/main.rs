//! The `smoke-tests` command: runs a suite against a base URL and prints the report.
//!
//! Exit codes: 0 every check passed, 1 a check failed, 2 the suite is unreadable or invalid
//! or the run could not start (unknown `${VAR}`, bad base URL, bad arguments).
//! Variables come from the process environment; `--var NAME=VALUE` overrides them.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use smoke_tests::{Report, RunOptions, Suite};

const EXIT_FAILED: u8 = 1;
const EXIT_INVALID: u8 = 2;

#[derive(Parser)]
#[command(
    name = "smoke-tests",
    version,
    about = "Run an HTTP smoke-test suite against a deployed stage"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run SUITE against --base-url.
    Run {
        /// The suite file (TOML).
        suite: PathBuf,
        /// The stage's base URL; each check's path is appended to it.
        #[arg(long)]
        base_url: String,
        /// Print the report as JSON instead of the summary.
        #[arg(long)]
        json: bool,
        /// A value for ${NAME} in the suite, overriding the environment. Repeatable.
        #[arg(long = "var", value_name = "NAME=VALUE", value_parser = parse_var)]
        vars: Vec<(String, String)>,
    },
    /// Check that SUITE is valid and list the variables it needs, without sending anything.
    Validate {
        /// The suite file (TOML).
        suite: PathBuf,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Run {
            suite,
            base_url,
            json,
            vars,
        } => run(suite, base_url, json, vars).await,
        Command::Validate { suite } => validate(suite),
    }
}

async fn run(path: PathBuf, base_url: String, json: bool, vars: Vec<(String, String)>) -> ExitCode {
    let suite = match Suite::load(&path) {
        Ok(suite) => suite,
        Err(err) => return invalid(&err),
    };
    let mut env: BTreeMap<String, String> = std::env::vars().collect();
    env.extend(vars);
    let report = smoke_tests::run(&suite, &RunOptions { base_url, env }).await;
    print_report(&report, json);
    match (&report.aborted, report.passed) {
        (Some(_), _) => ExitCode::from(EXIT_INVALID),
        (None, true) => ExitCode::SUCCESS,
        (None, false) => ExitCode::from(EXIT_FAILED),
    }
}

fn print_report(report: &Report, json: bool) {
    if !json {
        print!("{}", report.summary());
        return;
    }
    match serde_json::to_string_pretty(report) {
        Ok(text) => println!("{text}"),
        Err(err) => eprintln!("smoke-tests: cannot encode the report as JSON: {err}"),
    }
}

fn validate(path: PathBuf) -> ExitCode {
    match Suite::load(&path) {
        Ok(suite) => {
            let vars: Vec<String> = suite.variables().into_iter().collect();
            println!("{}: valid, {} checks", path.display(), suite.checks.len());
            if !vars.is_empty() {
                println!("variables: {}", vars.join(", "));
            }
            ExitCode::SUCCESS
        }
        Err(err) => invalid(&err),
    }
}

fn invalid(err: &smoke_tests::SuiteError) -> ExitCode {
    eprintln!("smoke-tests: {err}");
    ExitCode::from(EXIT_INVALID)
}

fn parse_var(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_string(), value.to_string())),
        _ => Err(format!("expected NAME=VALUE, got {text:?}")),
    }
}

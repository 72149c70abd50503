//! The `tollgate` command line: `serve`, `validate`, `schema`, `status`, `history`, `pause`,
//! `resume`, `rollback`, `retry`, `override`, `keys`, `openapi`, and `approve`, `reject`,
//! `promote`.
//!
//! Every read and control command — `status`, `history`, `pause`, `resume`, `rollback`,
//! `retry`, `override`, `approve`, `reject`, `promote` — talks to a running controller's API
//! (`--server URL` or `TOLLGATE_SERVER`, with the key in `TOLLGATE_API_KEY`; [`remote`]), so
//! every change is authenticated, rate limited and audited. Only `keys` opens the state
//! database directly (to make the first key), and `state copy` ([`state`]) copies a stopped
//! controller's state between databases.
//!
//! Owns argument parsing and rendering for people; the work is done by the library.
//! Must never: hold a rule of the controller (commands parse and render; the library decides),
//! or print a secret it was given through a flag or the environment.

pub mod control;
pub mod keys;
pub mod remote;
pub mod serve;
pub mod state;
pub mod status;
pub mod validate;
pub mod watch;

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// A multi-account staged deployment controller for AWS.
#[derive(Debug, Parser)]
#[command(name = "tollgate", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// How `serve` writes its log lines (to stderr).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line: timestamp, level, message, fields, and the enclosing spans.
    Json,
    /// Human-readable lines.
    Text,
}

impl LogFormat {
    /// The format asked for, or text when stderr is a terminal and JSON otherwise.
    pub fn or_default(asked: Option<LogFormat>) -> LogFormat {
        use std::io::IsTerminal;
        asked.unwrap_or(if std::io::stderr().is_terminal() {
            LogFormat::Text
        } else {
            LogFormat::Json
        })
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the controller: the reconcilers, the webhooks, the approval pages.
    Serve {
        #[command(flatten)]
        files: StateArgs,
        /// The address the HTTP server listens on.
        #[arg(long, env = "TOLLGATE_LISTEN", default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// A directory of pre-fetched SNS signing certificates (for networks that cannot reach
        /// sns.<region>.amazonaws.com); certificates are still verified.
        #[arg(long, env = "TOLLGATE_SNS_CERT_CACHE")]
        sns_cert_cache: Option<PathBuf>,
        /// Serve Prometheus metrics at `GET /metrics` on this address (for example
        /// 127.0.0.1:9090); off when not given.
        #[arg(long, env = "TOLLGATE_METRICS_LISTEN")]
        metrics_listen: Option<SocketAddr>,
        /// Log lines as JSON objects or as text; by default text when stderr is a terminal,
        /// JSON otherwise.
        #[arg(long, env = "TOLLGATE_LOG_FORMAT", value_enum)]
        log_format: Option<LogFormat>,
        /// With a PostgreSQL state shared by several controllers: how long the leader lease
        /// lasts (renewed every fifth of it). Another controller takes over within this and a
        /// fifth of it after the leader stops. Ignored on SQLite (one controller).
        #[arg(long, env = "TOLLGATE_LEASE_TTL", default_value = "10s", value_parser = lease_ttl)]
        lease_ttl: std::time::Duration,
    },
    /// Check stages.toml and the accounts file; exit 0 valid, 1 invalid, 2 unreadable.
    Validate {
        /// The pipeline file.
        #[arg(long = "config", default_value = "stages.toml")]
        config_flag: PathBuf,
        /// The pipeline file (positional form).
        config: Option<PathBuf>,
    },
    /// Show each pipeline × stage: known-good release, the run in flight, and why it waits.
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Keep the table up to date (every second) until Ctrl-C: redrawn in place with a
        /// live countdown to each wait's deadline on a terminal; plain blocks, one per change,
        /// otherwise.
        #[arg(long, conflicts_with = "json")]
        watch: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Print a pipeline's event log (oldest first).
    History {
        pipeline: String,
        /// How many of the newest events to show (at most 5000).
        #[arg(long, default_value_t = 200)]
        limit: i64,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Pause a pipeline, or one stage: nothing new starts there; runs in flight finish.
    Pause {
        pipeline: String,
        /// Pause only this stage.
        #[arg(long)]
        stage: Option<String>,
        /// Why (shown by `tollgate status` and kept in the event log).
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Resume a paused pipeline or stage.
    Resume {
        pipeline: String,
        #[arg(long)]
        stage: Option<String>,
        /// Why (kept in the event log with the call).
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Return a stage to its last known-good release; the release it runs is marked bad.
    Rollback {
        pipeline: String,
        stage: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Send a release that failed or whose approval expired through its stages again, from
    /// the stage where it stopped (tests, approval and deploy all run anew). Refused for a
    /// release that was rolled back, is still in flight, or that a newer release has passed.
    Retry {
        pipeline: String,
        /// The release: r12 or 12.
        release: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Let one release past an alarm already in ALARM (--alarms) or outside deployment windows
    /// (--window): the fix for the very problem must be able to ship. Logged with the reason.
    Override {
        pipeline: String,
        /// The release: r12 or 12.
        release: String,
        /// Enter stages even though their alarms are in ALARM.
        #[arg(long, conflicts_with = "window", required_unless_present = "window")]
        alarms: bool,
        /// Deploy outside the stages' deployment windows.
        #[arg(long)]
        window: bool,
        /// Why (kept in the event log).
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Manage the API keys of /api/v1 (directly in the state database, on the controller's host).
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Approve a release in a stage, through a running controller's API (as the approver the
    /// key in TOLLGATE_API_KEY is bound to).
    Approve {
        #[command(flatten)]
        decision: DecisionArgs,
    },
    /// Reject a release in a stage, through a running controller's API.
    Reject {
        #[command(flatten)]
        decision: DecisionArgs,
    },
    /// Start a release of a commit on the pipeline's branch by hand (a hotfix without waiting
    /// for a webhook), through a running controller's API; the commit's image must exist.
    Promote {
        pipeline: String,
        /// The full commit sha.
        #[arg(long)]
        sha: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Print the OpenAPI 3.1 document of /api/v1 (as `tollgate serve` serves it).
    Openapi,
    /// Print the JSON Schema of stages.toml (or accounts.toml) for editor completion.
    Schema {
        /// Print the schema of accounts.toml instead.
        #[arg(long)]
        accounts: bool,
    },
    /// Work on a stopped controller's state database as a whole (`state copy`).
    State {
        #[command(subcommand)]
        command: state::StateCommand,
    },
}

/// Where the API is; the key comes from `TOLLGATE_API_KEY` only.
#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    /// The controller's URL, e.g. https://tollgate.example.com.
    #[arg(long, env = "TOLLGATE_SERVER")]
    pub server: String,
}

/// `tollgate approve|reject PIPELINE RELEASE --stage STAGE [--comment TEXT]`.
#[derive(Debug, Clone, Args)]
pub struct DecisionArgs {
    pub pipeline: String,
    /// The release: r12 or 12.
    pub release: String,
    #[arg(long)]
    pub stage: String,
    /// Kept in the event log with the decision.
    #[arg(long)]
    pub comment: Option<String>,
    #[command(flatten)]
    pub server: ServerArgs,
}

/// `tollgate keys …`.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key; it is printed once (stdout) and only its hash is stored.
    Create {
        /// A name for the key (letters, digits, `.`, `_`, `-`); the event log names it.
        #[arg(long)]
        name: String,
        /// viewer (reads), operator (pause, resume, rollback, retry, promote), approver
        /// (approve or reject as --approver), admin (everything an operator may, and override).
        #[arg(long)]
        role: String,
        /// The approver (as listed in stages.toml) an approver key decides as.
        #[arg(long)]
        approver: Option<String>,
        /// How long the key works, e.g. `90d` (default: no expiry).
        #[arg(long)]
        expires: Option<String>,
        #[command(flatten)]
        files: StateArgs,
    },
    /// List the keys (never the keys themselves).
    List {
        #[arg(long, env = "TOLLGATE_STATE", default_value = "sqlite://tollgate.db")]
        state: String,
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key: it stops working at once.
    Revoke {
        name: String,
        #[arg(long, env = "TOLLGATE_STATE", default_value = "sqlite://tollgate.db")]
        state: String,
    },
}

/// The pipeline file and the state database: what `serve` and `keys create` take.
#[derive(Debug, Clone, Args)]
pub struct StateArgs {
    /// The pipeline file.
    #[arg(long, env = "TOLLGATE_CONFIG", default_value = "stages.toml")]
    pub config: PathBuf,
    /// The state database (created if absent).
    #[arg(long, env = "TOLLGATE_STATE", default_value = "sqlite://tollgate.db")]
    pub state: String,
}

/// A lease length: a duration such as `10s` or `1m`, from 1 s to 10 min.
fn lease_ttl(text: &str) -> Result<std::time::Duration, String> {
    let d = crate::config::values::duration(text)?;
    if d < std::time::Duration::from_secs(1) || d > std::time::Duration::from_secs(600) {
        return Err(format!("{text}: a lease lasts from 1s to 10m"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    #[test]
    fn serve_takes_a_metrics_address_and_a_log_format_and_refuses_others() {
        let argv = [
            "tollgate",
            "serve",
            "--metrics-listen",
            "127.0.0.1:9090",
            "--log-format",
            "json",
        ];
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Serve {
                metrics_listen,
                log_format,
                ..
            } => {
                assert_eq!(metrics_listen, Some("127.0.0.1:9090".parse().unwrap()));
                assert_eq!(log_format, Some(LogFormat::Json));
            }
            other => panic!("{other:?}"),
        }
        let bad_format = ["tollgate", "serve", "--log-format", "xml"];
        let err = Cli::try_parse_from(bad_format).unwrap_err().to_string();
        assert!(err.contains("json") && err.contains("text"), "{err}");
        let bad_address = ["tollgate", "serve", "--metrics-listen", "localhost"];
        assert!(Cli::try_parse_from(bad_address).is_err());
    }

    use clap::CommandFactory;

    use super::*;

    #[test]
    fn every_read_and_control_command_needs_a_server_and_watch_is_not_json() {
        let cases = [
            vec!["status"],
            vec!["status", "--watch"],
            vec!["history", "backend"],
            vec!["pause", "backend", "--reason", "why"],
            vec!["resume", "backend", "--reason", "why"],
            vec!["rollback", "backend", "beta"],
            vec!["retry", "backend", "r1"],
            vec!["override", "backend", "r1", "--window", "--reason", "why"],
        ];
        for case in cases {
            let argv = ["tollgate"].into_iter().chain(case.iter().copied());
            let argv = argv.chain(["--server", "https://tollgate.test"]);
            let server = match Cli::try_parse_from(argv).unwrap().command {
                Command::Status { server, .. }
                | Command::History { server, .. }
                | Command::Pause { server, .. }
                | Command::Resume { server, .. }
                | Command::Rollback { server, .. }
                | Command::Retry { server, .. }
                | Command::Override { server, .. } => server,
                other => panic!("{case:?} parsed as {other:?}"),
            };
            assert_eq!(server.server, "https://tollgate.test");
            // Without a server there is nothing to ask (a usage error, exit 2, whatever the
            // environment says), and the state database is not a way around the API.
            let command = Cli::command();
            let sub = command.find_subcommand(case[0]).unwrap();
            let flag = sub
                .get_arguments()
                .find(|a| a.get_id() == "server")
                .unwrap();
            assert!(flag.is_required_set(), "{case:?}: --server is required");
            assert_eq!(
                flag.get_env(),
                Some(std::ffi::OsStr::new("TOLLGATE_SERVER"))
            );
            let direct = ["tollgate"].into_iter().chain(case.iter().copied());
            let direct = direct.chain(["--server", "https://t.test", "--state", "sqlite://x.db"]);
            let e = Cli::try_parse_from(direct).unwrap_err();
            assert_eq!(
                e.kind(),
                clap::error::ErrorKind::UnknownArgument,
                "{case:?}"
            );
            assert_eq!(e.exit_code(), 2, "{case:?}");
        }
        // An override names exactly one rule.
        let neither = [
            "tollgate", "override", "b", "r1", "--reason", "x", "--server", "u",
        ];
        let e = Cli::try_parse_from(neither).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::MissingRequiredArgument);
        let both = [
            "tollgate", "override", "b", "r1", "--alarms", "--window", "--reason", "x", "--server",
            "u",
        ];
        let e = Cli::try_parse_from(both).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::ArgumentConflict);
        let both = ["tollgate", "status", "--watch", "--json"];
        assert!(Cli::try_parse_from(both).is_err());
        let no_key_flag = ["tollgate", "status", "--api-key", "tg_x"];
        assert!(Cli::try_parse_from(no_key_flag).is_err());
    }

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn the_config_and_state_flags_reach_every_command_that_takes_them() {
        let cases = [
            vec!["serve"],
            vec!["keys", "create", "--name", "k", "--role", "viewer"],
        ];
        for case in cases {
            let argv = ["tollgate"].into_iter().chain(case.iter().copied()).chain([
                "--config",
                "a/stages.toml",
                "--state",
                "sqlite://b.db",
            ]);
            let files = match Cli::try_parse_from(argv).unwrap().command {
                Command::Serve { files, .. }
                | Command::Keys {
                    command: KeysCommand::Create { files, .. },
                } => files,
                other => panic!("{case:?} parsed as {other:?}"),
            };
            assert_eq!(files.config, PathBuf::from("a/stages.toml"), "{case:?}");
            assert_eq!(files.state, "sqlite://b.db", "{case:?}");
        }
    }
}

//! The `tollgate` binary: the command line's entry point.
//!
//! Owns: parsing the arguments ([`tollgate::cli::Cli`]) and handing each command to the library
//! function that carries it out (`tollgate::cli::{serve, validate, status, control}`); setting
//! up logging for `serve` (`--log-format json|text`); the tokio runtime; and the process's exit code.
//!
//! Exit codes:
//! - 0: done. `serve` stopped on SIGINT or SIGTERM; `validate` found the files valid; a control
//!   command (`pause`, `resume`, `rollback`, `retry`, `override`) was done or already done;
//!   `keys` did what was asked; the API accepted `approve`, `reject` or `promote`.
//! - 1: refused. `validate` found the files invalid; a control command named an unknown
//!   pipeline, stage or release, or the state does not allow it (nothing changed); `keys`
//!   refused a name, role or approver; the API refused `approve`, `reject` or `promote` (4xx).
//! - 2: could not run. Bad arguments (clap's usage error), an unreadable configuration, a state
//!   database that cannot be opened, `serve` failing to start, no runtime; for the API's
//!   commands no `TOLLGATE_API_KEY`, an unreachable server or a 5xx.
//! - `state copy`: 0 copied and verified, 1 copied but a table does not match, 2 refused or
//!   failed (see `tollgate::cli::state`).
//!
//! Must never: decide anything about a pipeline or write to the state database itself (every
//! command's work lives in the library, where it is tested); print a secret; end the process
//! anywhere but at the end of [`main`], with the code the command returned.

use std::path::Path;

use clap::Parser;
use tollgate::cli::control::Control;
use tollgate::cli::{Cli, Command, KeysCommand, LogFormat, StateArgs};
use tollgate::config;
use tollgate::store::Store;

fn main() {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Serve {
            files: StateArgs { config, state },
            listen,
            sns_cert_cache,
            metrics_listen,
            log_format,
            lease_ttl,
        } => {
            init_logging(LogFormat::or_default(log_format));
            block_on(tollgate::cli::serve::run(tollgate::cli::serve::ServeArgs {
                config,
                state,
                listen,
                sns_cert_cache,
                metrics_listen,
                lease_ttl,
            }))
        }
        Command::Validate {
            config_flag,
            config,
        } => {
            let path = config.unwrap_or(config_flag);
            tollgate::cli::validate::run(&path, &mut std::io::stdout(), &mut std::io::stderr())
        }
        Command::Schema { accounts } => {
            tollgate::cli::validate::schema(accounts, &mut std::io::stdout())
        }
        Command::Status { files, json } => block_on(status(&files.config, &files.state, json)),
        Command::History {
            pipeline,
            state,
            limit,
            json,
        } => block_on(history(&pipeline, &state, limit, json)),
        Command::Pause {
            pipeline,
            stage,
            reason,
            files,
        } => control(
            &files,
            Control::Pause {
                pipeline,
                stage,
                reason,
            },
        ),
        Command::Resume {
            pipeline,
            stage,
            files,
        } => control(&files, Control::Resume { pipeline, stage }),
        Command::Rollback {
            pipeline,
            stage,
            files,
        } => control(&files, Control::Rollback { pipeline, stage }),
        Command::Retry {
            pipeline,
            release,
            files,
        } => control(&files, Control::Retry { pipeline, release }),
        Command::Override {
            pipeline,
            release,
            alarms,
            window: _,
            reason,
            files,
        } => {
            let which = if alarms {
                tollgate::engine::Override::Alarms
            } else {
                tollgate::engine::Override::Window
            };
            control(
                &files,
                Control::Override {
                    pipeline,
                    release,
                    which,
                    reason,
                },
            )
        }
        Command::Keys { command } => block_on(keys(command)),
        Command::Approve { decision } => remote(decision_request(decision, true)),
        Command::Reject { decision } => remote(decision_request(decision, false)),
        Command::Promote {
            pipeline,
            sha,
            server,
        } => remote((
            server.server,
            tollgate::cli::remote::Remote::Promote { pipeline, sha },
        )),
        Command::Openapi => {
            print!("{}", tollgate::http::api::openapi::document());
            0
        }
        Command::State { command } => block_on(tollgate::cli::state::run(command)),
    };
    std::process::exit(code);
}

/// Logs to stderr; `RUST_LOG` filters (default `info`). JSON lines carry the fields of the
/// enclosing span (`span`: a pipeline's reconcile, an effect, an HTTP request) and of every
/// span around it (`spans`).
fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .init(),
        LogFormat::Text => builder.init(),
    }
}

fn control(files: &StateArgs, c: Control) -> i32 {
    let actor = tollgate::cli::control::actor();
    block_on(async {
        tollgate::cli::control::run(
            &files.config,
            &files.state,
            &c,
            &actor,
            &mut std::io::stdout(),
            &mut std::io::stderr(),
        )
        .await
    })
}

fn block_on(f: impl std::future::Future<Output = i32>) -> i32 {
    match tokio::runtime::Runtime::new() {
        Ok(rt) => rt.block_on(f),
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            2
        }
    }
}

async fn open(state: &str) -> Option<Store> {
    match Store::open(state).await {
        Ok(s) => Some(s),
        Err(e) => {
            eprintln!("error: {e}");
            None
        }
    }
}

async fn status(config_path: &Path, state: &str, json: bool) -> i32 {
    let loaded = match config::load(config_path) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("{e}");
            return 2;
        }
    };
    let Some(store) = open(state).await else {
        return 2;
    };
    let now = tollgate::engine::Clock::now(&tollgate::engine::SystemClock);
    let (config, in_force) =
        tollgate::github::intake::config_in_force(store.reads(), loaded.config).await;
    if !json {
        let source =
            in_force.unwrap_or_else(|| format!("configuration file {}", config_path.display()));
        println!("{source}\n");
    }
    match tollgate::cli::status::collect(&store, &config, now).await {
        Ok(rows) => {
            let _ = tollgate::cli::status::render(&rows, json, &mut std::io::stdout());
            0
        }
        Err(e) => {
            eprintln!("error: {e}");
            2
        }
    }
}

async fn history(pipeline: &str, state: &str, limit: i64, json: bool) -> i32 {
    let Some(store) = open(state).await else {
        return 2;
    };
    match tollgate::cli::status::history(&store, pipeline, limit, json, &mut std::io::stdout())
        .await
    {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e}");
            2
        }
    }
}

async fn keys(command: KeysCommand) -> i32 {
    use tollgate::cli::keys;
    let (out, err) = (&mut std::io::stdout(), &mut std::io::stderr());
    match command {
        KeysCommand::Create {
            name,
            role,
            approver,
            expires,
            files,
        } => {
            let c = keys::Create {
                name,
                role,
                approver,
                expires,
            };
            keys::create(&files.config, &files.state, &c, out, err).await
        }
        KeysCommand::List { state, json } => keys::list(&state, json, out, err).await,
        KeysCommand::Revoke { name, state } => keys::revoke(&state, &name, out, err).await,
    }
}

fn decision_request(
    d: tollgate::cli::DecisionArgs,
    approve: bool,
) -> (String, tollgate::cli::remote::Remote) {
    let r = tollgate::cli::remote::Remote::Decide {
        pipeline: d.pipeline,
        release: d.release,
        stage: d.stage,
        approve,
        comment: d.comment,
    };
    (d.server.server, r)
}

fn remote((server, r): (String, tollgate::cli::remote::Remote)) -> i32 {
    let key = std::env::var("TOLLGATE_API_KEY").ok();
    block_on(async {
        tollgate::cli::remote::run(
            &server,
            key.as_deref(),
            &r,
            &mut std::io::stdout(),
            &mut std::io::stderr(),
        )
        .await
    })
}

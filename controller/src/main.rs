//! The `tollgate` binary: the command line's entry point.
//!
//! Owns: parsing the arguments ([`tollgate::cli::Cli`]) and handing each command to the library
//! function that carries it out (`tollgate::cli::{serve, validate, status, watch, keys, state,
//! remote}`; every read and control command goes through `remote`, the API); setting
//! up logging for `serve` (`--log-format json|text`); the tokio runtime; and the process's exit code.
//!
//! Exit codes:
//! - 0: done. `serve` stopped on SIGINT or SIGTERM; `validate` found the files valid; a control
//!   command (`pause`, `resume`, `rollback`, `retry`, `override`) was done or already done;
//!   `keys` did what was asked; the API accepted `approve`, `reject` or `promote`; `status`
//!   and `history` printed; `status --watch` was stopped with Ctrl-C.
//! - 1: refused. `validate` found the files invalid; a control command named an unknown
//!   pipeline, stage or release, or the state does not allow it (nothing changed); `keys`
//!   refused a name, role or approver; the API refused the call (4xx: the problem's title and
//!   detail are printed).
//! - 2: could not run. Bad arguments (clap's usage error, which includes a read or control
//!   command without `--server`/`TOLLGATE_SERVER`), an unreadable configuration, a state
//!   database that cannot be opened, `serve` failing to start, no runtime; no
//!   `TOLLGATE_API_KEY`, an unreachable server or a 5xx.
//! - `state copy`: 0 copied and verified, 1 copied but a table does not match, 2 refused or
//!   failed (see `tollgate::cli::state`).
//!
//! Must never: decide anything about a pipeline or write to the state database itself (every
//! command's work lives in the library, where it is tested); print a secret; end the process
//! anywhere but at the end of [`main`], with the code the command returned.

use clap::Parser;
use tollgate::cli::control::Control;
use tollgate::cli::{Cli, Command, KeysCommand, LogFormat, ServerArgs, StateArgs};

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
        Command::Status {
            json,
            watch,
            server,
        } => block_on(status(server, json, watch)),
        Command::History {
            pipeline,
            limit,
            json,
            server,
        } => block_on(async {
            let client = match client(&server) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let (out, err) = (&mut std::io::stdout(), &mut std::io::stderr());
            let what = (pipeline.as_str(), limit, json);
            tollgate::cli::status::run_history(&client, what, out, err).await
        }),
        Command::Pause {
            pipeline,
            stage,
            reason,
            server,
        } => control(
            server,
            Control::Pause {
                pipeline,
                stage,
                reason,
            },
        ),
        Command::Resume {
            pipeline,
            stage,
            reason,
            server,
        } => control(
            server,
            Control::Resume {
                pipeline,
                stage,
                reason: Some(reason),
            },
        ),
        Command::Rollback {
            pipeline,
            stage,
            server,
        } => control(server, Control::Rollback { pipeline, stage }),
        Command::Retry {
            pipeline,
            release,
            server,
        } => control(server, Control::Retry { pipeline, release }),
        Command::Override {
            pipeline,
            release,
            alarms,
            window: _,
            reason,
            server,
        } => {
            let which = if alarms {
                tollgate::engine::Override::Alarms
            } else {
                tollgate::engine::Override::Window
            };
            control(
                server,
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

/// A control command, through the API.
fn control(server: ServerArgs, c: Control) -> i32 {
    remote((server.server, tollgate::cli::remote::Remote::Control(c)))
}

/// The API client for `server` with the key in `TOLLGATE_API_KEY`, or the exit code of why
/// there is none (reported).
fn client(server: &ServerArgs) -> Result<tollgate::cli::remote::Client, i32> {
    let key = std::env::var("TOLLGATE_API_KEY").ok();
    tollgate::cli::remote::Client::new(&server.server, key.as_deref())
        .map_err(|f| f.report(&mut std::io::stderr()))
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

/// `tollgate status [--json | --watch]`, through the API.
async fn status(server: ServerArgs, json: bool, watch: bool) -> i32 {
    use std::io::IsTerminal;
    use tollgate::cli::status::Source;
    let (out, err) = (&mut std::io::stdout(), &mut std::io::stderr());
    let source = match client(&server) {
        Err(code) => return code,
        Ok(c) => match Source::remote(c).await {
            Ok(s) => s,
            Err(f) => return f.report(err),
        },
    };
    if watch {
        let tty = std::io::stdout().is_terminal();
        return tollgate::cli::watch::run(&source, tty, out, err).await;
    }
    tollgate::cli::status::run(&source, json, out, err).await
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

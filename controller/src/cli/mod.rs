//! The `tollgate` command line: `serve`, `validate`, `schema`, `status`, `history`.
//!
//! Owns argument parsing and rendering for people; the work is done by the library.

pub mod status;
pub mod validate;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// A multi-account staged deployment controller for AWS.
#[derive(Debug, Parser)]
#[command(name = "tollgate", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
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
        #[arg(long, default_value = "stages.toml")]
        config: PathBuf,
        /// The state database.
        #[arg(long, env = "TOLLGATE_STATE", default_value = "sqlite://tollgate.db")]
        state: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print a pipeline's event log (oldest first).
    History {
        pipeline: String,
        #[arg(long, env = "TOLLGATE_STATE", default_value = "sqlite://tollgate.db")]
        state: String,
        /// How many of the newest events to show.
        #[arg(long, default_value_t = 200)]
        limit: i64,
        #[arg(long)]
        json: bool,
    },
    /// Print the JSON Schema of stages.toml (or accounts.toml) for editor completion.
    Schema {
        /// Print the schema of accounts.toml instead.
        #[arg(long)]
        accounts: bool,
    },
}

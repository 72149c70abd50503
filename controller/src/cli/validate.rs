//! `tollgate validate` and `tollgate schema`.
//!
//! Owns the two commands a platform engineer runs before committing `stages.toml`:
//! `validate` loads the file (and the accounts it names) through [`crate::config::load`] and
//! prints either a one-line summary and the warnings, or every error with its
//! `file:line:col`; `schema` prints the JSON Schema of `stages.toml` or `accounts.toml` for
//! editors.
//!
//! # Guarantees
//! - The exit code says what happened: 0 valid, 1 invalid, 2 unreadable (missing file, no
//!   permission), so CI can tell a bad change from a broken checkout.
//! - Errors go to the error stream, the summary and the schema to the output stream.
//!
//! # Must never
//! - touch the network, AWS, GitHub or the state database: validation is of the files alone
//!   and is safe to run anywhere;
//! - write any file.

use std::io::Write;
use std::path::Path;

use crate::config::{self, ConfigError};

/// Validates and prints the outcome; returns the process exit code (0, 1 or 2).
pub fn run(path: &Path, out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    match config::load(path) {
        Ok(loaded) => {
            for w in &loaded.warnings {
                let _ = writeln!(err, "{w}");
            }
            let c = &loaded.config;
            let stages: usize = c.pipelines.iter().map(|p| p.stages.len()).sum();
            let _ = writeln!(
                out,
                "{} is valid: {} pipeline(s), {stages} stage(s), {} account(s), {} warning(s)",
                path.display(),
                c.pipelines.len(),
                c.accounts.len(),
                loaded.warnings.len()
            );
            0
        }
        Err(e @ ConfigError::Invalid(_)) => {
            let _ = writeln!(err, "{e}");
            1
        }
        Err(e @ ConfigError::Unreadable { .. }) => {
            let _ = writeln!(err, "error: {e}");
            2
        }
    }
}

/// Prints the JSON Schema.
pub fn schema(accounts: bool, out: &mut dyn Write) -> i32 {
    let schema = if accounts {
        config::accounts_schema()
    } else {
        config::stages_schema()
    };
    match serde_json::to_string_pretty(&schema) {
        Ok(text) => {
            let _ = writeln!(out, "{text}");
            0
        }
        Err(_) => 1,
    }
}

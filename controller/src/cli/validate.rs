//! `tollgate validate` and `tollgate schema`.

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

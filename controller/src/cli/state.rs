//! `tollgate state copy --from URL --to URL`: moves a stopped controller's state to another
//! database (SQLite → PostgreSQL, back, or PostgreSQL → PostgreSQL) and proves the copy.
//!
//! Exit codes: 0 copied and every table's rows and checksum match; 1 copied but a table does
//! not match (the table says which); 2 refused (source running, destination not empty, a URL
//! that does not parse) or failed, with nothing written.

use clap::Subcommand;

use crate::store::copy::{CopyError, copy_state};

/// `tollgate state …`.
#[derive(Debug, Subcommand)]
pub enum StateCommand {
    /// Copy a stopped controller's whole state into a new, empty database, then compare
    /// every table's row count and checksum on both sides.
    Copy {
        /// The state to copy (sqlite://PATH or postgres://…); no controller may be running on it.
        #[arg(long)]
        from: String,
        /// The empty state to fill (created if absent).
        #[arg(long)]
        to: String,
    },
}

/// Runs a `state` command; returns the exit code.
pub async fn run(command: StateCommand) -> i32 {
    match command {
        StateCommand::Copy { from, to } => {
            let (code, out, err) = copy(&from, &to).await;
            print!("{out}");
            eprint!("{err}");
            code
        }
    }
}

/// The copy's exit code, its table (stdout) and its error (stderr).
pub async fn copy(from: &str, to: &str) -> (i32, String, String) {
    match copy_state(from, to, chrono::Utc::now()).await {
        Ok(report) if report.matches() => (
            0,
            report.render(),
            format!(
                "copied {} tables from {} to {}; every table matches\n",
                report.tables.len(),
                crate::store::redact_url(from),
                crate::store::redact_url(to)
            ),
        ),
        Ok(report) => {
            let bad: Vec<&str> = report
                .tables
                .iter()
                .filter(|t| !t.matches())
                .map(|t| t.table.as_str())
                .collect();
            (
                1,
                report.render(),
                format!("error: {}\n", CopyError::Mismatch(bad.join(", "))),
            )
        }
        Err(e) => (2, String::new(), format!("error: {e}\n")),
    }
}

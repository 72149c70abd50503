//! HTTP smoke-test suites for a deployed stage.
//!
//! A suite is a TOML file of checks (see `README.md` beside this crate). This crate owns
//! loading and validating suites ([`Suite::load`], [`Suite::parse`]), running them against a
//! base URL ([`run`]) and reporting the outcome ([`Report`]). It is used by the `smoke-tests`
//! binary and by the tollgate controller's `http` test gate.
//!
//! # Guarantees
//! - A suite that loads is well-formed: no unknown keys, valid durations, methods, status codes,
//!   JSON pointers and `${VAR}` syntax. Errors point at `file:line:col`.
//! - [`run`] sends no request at all when a `${VAR}` is unknown or a request cannot be built;
//!   the [`Report`] then carries the reason in [`Report::aborted`].
//! - Every loop is bounded: samples and retries are capped when the suite is loaded.
//!
//! ```no_run
//! # async fn demo() -> Result<(), smoke_tests::SuiteError> {
//! let suite = smoke_tests::Suite::load("smoke-tests/backend-gamma.toml")?;
//! let mut options = smoke_tests::RunOptions::new("https://gamma.example.com");
//! options.env.insert("COMMIT_SHA".into(), "0123abc".into());
//! let report = smoke_tests::run(&suite, &options).await;
//! println!("{}", report.summary());
//! # Ok(()) }
//! ```

mod duration;
mod error;
mod expect;
mod fields;
mod prepare;
mod report;
mod runner;
mod stats;
mod suite;
mod vars;

pub use duration::parse_duration;
pub use error::{Location, RunError, SuiteError};
pub use report::{CheckOutcome, LatencyStats, Report};
pub use runner::{MAX_BACKOFF, MAX_BODY_BYTES, RunOptions, run};
pub use stats::percentile;
pub use suite::{Check, Defaults, RequestBody, Suite};

//! GitHub: everything tollgate receives from GitHub and everything it sends there.
//!
//! Owns the GitHub side of the controller, one concern per module:
//! - [`webhook`]: proving a delivery came from GitHub (HMAC over the raw body, several secrets
//!   for rotation) and parsing it into tollgate's own event type. Pure.
//! - [`intake`]: what a verified `push` or `workflow_run` means for each pipeline, recorded as
//!   a fact through the engine (a release, a refused fork build, a configuration change).
//! - [`commit_files`]: a commit of the configuration repository written out where only this
//!   process can change it, and loaded from there.
//! - [`forge`]: the REST API client behind the engine's `Forge` port (Deployments and commit
//!   statuses), the GitHub-backed tests (required checks, workflow dispatch) and reading the
//!   configuration file. It retries its own temporary failures under the controller's one
//!   policy ([`crate::backoff`]) and reads time through the injected clock.
//!
//! # Must never
//! - act on a delivery that was not verified, or on a build from a fork;
//! - perform a side effect while handling a webhook: intake only records facts and wakes the
//!   reconciler, which reports back to GitHub later through [`forge`];
//! - log, store or return the webhook secrets or the API token.

pub mod commit_files;
pub mod forge;
pub mod intake;
pub mod webhook;

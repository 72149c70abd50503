//! The HTTP surface (axum): webhooks, approval pages, the release page, health.
//!
//! Owns turning requests into calls on the [`crate::engine::Engine`]'s record-a-fact API and
//! its answers into responses: [`github`] (`POST /webhooks/github`), [`sns`] and
//! [`sns_verify`] (`POST /webhooks/sns`, with the full SNS signature check), [`approvals`]
//! (`GET`/`POST /approvals/{token}`), [`ui`] (the release page) and [`server`] (health,
//! readiness, the router, shutdown). `reply` is the webhooks' shared answer shape. [`edge`] is
//! the server loop and the guards in front of every route (timeouts, concurrency, body budget,
//! rate limits).
//!
//! # Guarantees
//! - Every input is verified at the edge (HMAC, SNS signature, token) before anything is
//!   recorded, and a bad one gets a clear 4xx and changes nothing.
//! - A webhook is answered as soon as its fact is durable; the work it causes happens later,
//!   in the reconciler.
//!
//! # Must never
//! - perform a side effect (deploy, publish, report) from a handler: handlers record facts and
//!   wake the engine;
//! - change state on a `GET` (mail scanners follow links);
//! - put a secret, a token or a signature it expected into a response or a log line.

pub mod api;
pub mod approvals;
pub mod edge;
pub mod github;
pub mod metrics;
mod reply;
pub mod server;
pub mod sns;
pub mod sns_verify;
pub mod stack_events;
pub mod ui;

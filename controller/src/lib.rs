//! tollgate: a multi-account staged deployment controller for AWS.
//!
//! A release (one commit, one container image pinned by digest) is promoted through an
//! ordered chain of stages (Beta → Gamma → Prod), each in its own AWS account. Events only
//! record facts in the [`store`]; the [`engine`] reconciles each pipeline by asking the pure
//! [`domain::plan`] what to do next and performing it through ports (see [`engine::ports`]).
//!
//! Must never: contain test scaffolding (fakes, stubs and world builders live in the
//! `tollgate-testkit` crate, a dev-dependency), or let a fact into the store around the
//! engine's ingest API.

pub mod aws;
pub mod backoff;
pub mod cli;
pub mod config;
pub mod domain;
pub mod engine;
pub mod gates;
pub mod github;
pub mod http;
pub mod metrics;
pub mod secret;
pub mod store;

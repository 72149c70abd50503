//! The HTTP surface (axum): webhooks, approvals, JSON API, health.

pub mod approvals;
pub mod github;
pub mod server;
pub mod sns;
pub mod sns_verify;

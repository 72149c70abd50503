//! The HTTP surface (axum): webhooks, approvals, JSON API, health.

pub mod github;
pub mod server;
pub mod sns_verify;

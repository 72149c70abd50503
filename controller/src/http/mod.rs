//! The HTTP surface (axum): webhooks, approvals, JSON API, health.

pub mod sns_verify;
pub mod github;
pub mod server;

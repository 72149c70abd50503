//! The HTTP surface (axum): webhooks, approval pages, the release page, health.

pub mod approvals;
pub mod github;
mod reply;
pub mod server;
pub mod sns;
pub mod sns_verify;
pub mod ui;

//! The HTTP surface (axum): webhooks, approvals, JSON API, health.

pub mod sns_verify;

//! The axum application: routes, shared state, health.

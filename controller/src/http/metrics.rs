//! `GET /metrics`: the controller's Prometheus metrics ([`crate::metrics`]) in the text
//! exposition format.
//!
//! Owns only the route: [`routes`] is a router that can be mounted on any server. `tollgate
//! serve --metrics-listen ADDR` serves it on its own address (off unless given), so it can be
//! bound to loopback or a monitoring network apart from the webhooks. The API's port serves
//! the same text at `GET /metrics` to any valid API key ([`crate::http::api`]).
//!
//! Must never: carry a label value that is not bounded by the configuration or a fixed set
//! (see [`crate::metrics`]), or change anything.

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

/// The `/metrics` route.
pub fn routes() -> Router {
    Router::new().route("/metrics", get(metrics))
}

/// The exposition, as of now.
pub async fn metrics() -> impl IntoResponse {
    let text = crate::metrics::render(chrono::Utc::now());
    ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text)
}

//! The webhooks' answer: a status plus `{"result": …, "detail": …}`.
//!
//! Owns the one response shape the GitHub and SNS webhook routes share: an HTTP status, a
//! short machine-readable `result` (`recorded`, `duplicate`, `bad-request`, …) and a
//! `detail` for the person reading the sender's delivery log. A 503 also carries
//! `Retry-After`, so a sender that retries (SNS) waits before trying again.
//!
//! # Must never
//! - carry a secret, a signature, a token or a request body in `detail`: senders show it in
//!   their delivery logs, which more people read than the controller's;
//! - decide anything: the routes choose the status and the result, this only renders them.

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// Seconds a sender is asked to wait before retrying a 503 (a certificate that could not be
/// fetched, say).
const RETRY_AFTER_SECS: &str = "30";

#[derive(Debug)]
pub(super) struct Reply {
    pub status: StatusCode,
    pub result: &'static str,
    pub detail: String,
}

impl Reply {
    pub fn new(status: StatusCode, result: &'static str, detail: impl Into<String>) -> Reply {
        Reply {
            status,
            result,
            detail: detail.into(),
        }
    }

    pub fn bad_request(detail: impl Into<String>) -> Reply {
        Reply::new(StatusCode::BAD_REQUEST, "bad-request", detail)
    }

    pub fn forbidden(detail: impl Into<String>) -> Reply {
        Reply::new(StatusCode::FORBIDDEN, "forbidden", detail)
    }

    /// Counts the delivery in `tollgate_webhook_deliveries_total` under its result.
    pub fn counted(self, source: crate::metrics::WebhookSource) -> Reply {
        crate::metrics::global().webhook(source, self.result);
        self
    }
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        let body = axum::Json(json!({ "result": self.result, "detail": self.detail }));
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            let retry = [(header::RETRY_AFTER, RETRY_AFTER_SECS)];
            return (self.status, retry, body).into_response();
        }
        (self.status, body).into_response()
    }
}

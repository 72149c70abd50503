//! The webhooks' answer: a status plus `{"result": …, "detail": …}`.

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

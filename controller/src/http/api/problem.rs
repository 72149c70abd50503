//! Errors of `/api/v1` as `application/problem+json` (RFC 9457): a stable `type` per kind of
//! error ([`Kind`]), the HTTP status, a short `title` and a `detail` for people.
//!
//! Must never: put a key, a token or a request body in `detail`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// The media type of every error answer.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Every kind of error the API answers; each has a stable `type` URI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// 401: no key, or a key that is unknown, revoked or expired.
    Unauthorized,
    /// 403: the key's role may not do this, or an approver key acting for someone else.
    Forbidden,
    /// 403: the approver brought the change (approving is refused; rejecting is allowed).
    OwnChange,
    /// 403: the key's approver is not an approver of this stage.
    NotAnApprover,
    /// 429: over the key's or the address's rate.
    RateLimited,
    /// 404: no such pipeline, stage, release or route.
    NotFound,
    /// 400: a malformed body, parameter or header.
    InvalidRequest,
    /// 409: the state refuses it (a retry of a release in flight, say); nothing changed.
    Refused,
    /// 409: a newer release took this one's place; the approval request is closed.
    Superseded,
    /// 409: the stage does not wait for an approval of this release (any more).
    ApprovalClosed,
    /// 409: this approver already decided.
    AlreadyDecided,
    /// 409: a commit older than the pipeline's newest release.
    StaleCommit,
    /// 409: the first request with this `Idempotency-Key` is still running.
    IdempotencyInProgress,
    /// 422: this `Idempotency-Key` was used for a different request.
    IdempotencyKeyReused,
    /// 422: the image of the commit is not in the artifact repository.
    ImageNotFound,
    /// 503: something the answer needs (GitHub, the artifact repository) did not answer.
    Unavailable,
    /// 500: the controller failed (the state database, say).
    Internal,
}

impl Kind {
    pub const ALL: [Kind; 17] = [
        Kind::Unauthorized,
        Kind::Forbidden,
        Kind::OwnChange,
        Kind::NotAnApprover,
        Kind::RateLimited,
        Kind::NotFound,
        Kind::InvalidRequest,
        Kind::Refused,
        Kind::Superseded,
        Kind::ApprovalClosed,
        Kind::AlreadyDecided,
        Kind::StaleCommit,
        Kind::IdempotencyInProgress,
        Kind::IdempotencyKeyReused,
        Kind::ImageNotFound,
        Kind::Unavailable,
        Kind::Internal,
    ];

    /// The slug at the end of the `type` URI.
    pub fn slug(self) -> &'static str {
        match self {
            Kind::Unauthorized => "unauthorized",
            Kind::Forbidden => "forbidden",
            Kind::OwnChange => "own-change",
            Kind::NotAnApprover => "not-an-approver",
            Kind::RateLimited => "rate-limited",
            Kind::NotFound => "not-found",
            Kind::InvalidRequest => "invalid-request",
            Kind::Refused => "refused",
            Kind::Superseded => "superseded",
            Kind::ApprovalClosed => "approval-closed",
            Kind::AlreadyDecided => "already-decided",
            Kind::StaleCommit => "stale-commit",
            Kind::IdempotencyInProgress => "idempotency-in-progress",
            Kind::IdempotencyKeyReused => "idempotency-key-reused",
            Kind::ImageNotFound => "image-not-found",
            Kind::Unavailable => "unavailable",
            Kind::Internal => "internal",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            Kind::Unauthorized => StatusCode::UNAUTHORIZED,
            Kind::Forbidden | Kind::OwnChange | Kind::NotAnApprover => StatusCode::FORBIDDEN,
            Kind::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Kind::NotFound => StatusCode::NOT_FOUND,
            Kind::InvalidRequest => StatusCode::BAD_REQUEST,
            Kind::Refused
            | Kind::Superseded
            | Kind::ApprovalClosed
            | Kind::AlreadyDecided
            | Kind::StaleCommit
            | Kind::IdempotencyInProgress => StatusCode::CONFLICT,
            Kind::IdempotencyKeyReused | Kind::ImageNotFound => StatusCode::UNPROCESSABLE_ENTITY,
            Kind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Kind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Kind::Unauthorized => "Authentication required",
            Kind::Forbidden => "Not allowed for this key",
            Kind::OwnChange => "You cannot approve a change you brought",
            Kind::NotAnApprover => "Not an approver of this stage",
            Kind::RateLimited => "Too many requests",
            Kind::NotFound => "Not found",
            Kind::InvalidRequest => "Invalid request",
            Kind::Refused => "Refused by the pipeline's state",
            Kind::Superseded => "Superseded by a newer release",
            Kind::ApprovalClosed => "No approval pending",
            Kind::AlreadyDecided => "Already decided",
            Kind::StaleCommit => "Older than the newest release",
            Kind::IdempotencyInProgress => "The first request with this key is still running",
            Kind::IdempotencyKeyReused => "Idempotency key used for another request",
            Kind::ImageNotFound => "Image not found",
            Kind::Unavailable => "Temporarily unavailable",
            Kind::Internal => "Internal error",
        }
    }

    /// The `type` URI.
    pub fn uri(self) -> String {
        format!("urn:tollgate:problem:{}", self.slug())
    }
}

/// An RFC 9457 problem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Problem {
    /// `urn:tollgate:problem:<slug>`: stable, one per kind of error.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// Seconds to wait, on a 429.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
}

impl Problem {
    pub fn new(kind: Kind, detail: impl Into<String>) -> Problem {
        Problem {
            kind: kind.uri(),
            title: kind.title().into(),
            status: kind.status().as_u16(),
            detail: detail.into(),
            retry_after: None,
        }
    }

    pub fn internal(e: impl std::fmt::Display) -> Problem {
        tracing::error!(error = %e, "API request failed");
        Problem::new(
            Kind::Internal,
            "the controller could not answer; see its log",
        )
    }

    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut r = (status, body).into_response();
        let h = r.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if status == StatusCode::UNAUTHORIZED {
            h.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"tollgate\""),
            );
        }
        if let Some(secs) = self.retry_after {
            h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_its_own_type() {
        let mut uris: Vec<String> = Kind::ALL.iter().map(|k| k.uri()).collect();
        uris.sort();
        uris.dedup();
        assert_eq!(uris.len(), Kind::ALL.len());
    }
}

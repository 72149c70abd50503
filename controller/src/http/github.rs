//! `POST /webhooks/github`.
//!
//! Owns the edge of GitHub intake: body cap, signature, headers, parsing; then hands the
//! verified event to [`crate::github::intake::handle`], which records it (one store
//! transaction per pipeline it concerns) and wakes the reconciler. Nothing slower happens before the answer.
//!
//! | case | answer |
//! |---|---|
//! | body over [`BODY_LIMIT`] | 413 |
//! | `X-Hub-Signature-256` missing, malformed or wrong | 401, nothing recorded |
//! | `X-GitHub-Event` or `X-GitHub-Delivery` missing or malformed | 400 |
//! | payload not valid for its event | 400 with the parse error |
//! | `ping` | 200 |
//! | an event or a ref tollgate does not use, a failed or forked build | 202 (delivery recorded) |
//! | recorded, or a redelivery (nothing changes) | 200 |
//! | the store failed | 500 (GitHub shows the failure; redeliver from its UI) |
//!
//! Must never: record anything before the signature is verified, or log a body or header.

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use tower_http::limit::RequestBodyLimitLayer;

use super::reply::Reply;
use super::server::AppState;
use crate::engine::Delivery;
use crate::github::intake::{self, IntakeOutcome, Outcome};
use crate::github::webhook::{
    DELIVERY_HEADER, EVENT_HEADER, SIGNATURE_HEADER, parse_event, verify_signature,
};
use crate::metrics::WebhookSource;

/// GitHub caps webhook payloads at 25 MiB.
pub const BODY_LIMIT: usize = 25 * 1024 * 1024;
/// The longest delivery id accepted (GitHub's are 36-character GUIDs).
const MAX_DELIVERY_ID: usize = 100;

/// The GitHub webhook route.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/webhooks/github", post(webhook))
        .layer(DefaultBodyLimit::disable())
        .layer(RequestBodyLimitLayer::new(BODY_LIMIT))
}

async fn webhook(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match receive(&state, &headers, body).await {
        Ok(reply) | Err(reply) => reply.counted(WebhookSource::Github).into_response(),
    }
}

async fn receive(
    state: &AppState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Reply, Reply> {
    let body = body.map_err(|r| Reply::new(r.status(), "rejected", r.body_text()))?;
    verify_signature(&state.secrets, header(headers, SIGNATURE_HEADER), &body).map_err(|e| {
        tracing::warn!(reason = %e, "GitHub webhook refused");
        Reply::new(StatusCode::UNAUTHORIZED, "unauthorized", e.to_string())
    })?;
    let event = header(headers, EVENT_HEADER)
        .filter(|e| !e.is_empty())
        .ok_or_else(|| Reply::bad_request("missing X-GitHub-Event header"))?;
    let delivery = delivery(headers)?;
    let parsed = parse_event(event, &body).map_err(|e| Reply::bad_request(e.to_string()))?;
    // The reconciles this delivery (and the others arriving with it) wake wait for the answers.
    let _receiving = state.engine.receiving();
    let outcome = intake::handle(&state.engine, state.forge.as_deref(), &delivery, parsed)
        .await
        .map_err(|e| {
            tracing::error!(delivery = %delivery.id, error = %e, "cannot record GitHub delivery");
            Reply::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "error",
                "could not record the delivery",
            )
        })?;
    if let Some(sha) = outcome.config_change() {
        state.announce_config_change(sha);
    }
    Ok(reply_for(&outcome))
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn delivery(headers: &HeaderMap) -> Result<Delivery, Reply> {
    let id = header(headers, DELIVERY_HEADER)
        .ok_or_else(|| Reply::bad_request("missing X-GitHub-Delivery header"))?;
    let valid = !id.is_empty()
        && id.len() <= MAX_DELIVERY_ID
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if !valid {
        return Err(Reply::bad_request("malformed X-GitHub-Delivery header"));
    }
    Ok(Delivery {
        source: "github".into(),
        id: id.to_owned(),
    })
}

fn reply_for(outcome: &IntakeOutcome) -> Reply {
    let detail = outcome.summary();
    let all = |f: fn(&Outcome) -> bool| outcome.outcomes.iter().all(f);
    let (status, result) = if all(|o| matches!(o, Outcome::Pong)) {
        (StatusCode::OK, "pong")
    } else if all(|o| matches!(o, Outcome::Duplicate { .. })) {
        (StatusCode::OK, "duplicate")
    } else if all(|o| {
        matches!(
            o,
            Outcome::Ignored { .. } | Outcome::NotPromoted { .. } | Outcome::Duplicate { .. }
        )
    }) {
        (StatusCode::ACCEPTED, "ignored")
    } else {
        (StatusCode::OK, "recorded")
    };
    Reply::new(status, result, detail)
}

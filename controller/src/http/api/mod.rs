//! `/api/v1`: the operators' JSON API, for the CLI, scripts and the dashboard.
//!
//! Owns the routes ([`routes`]), authentication and rate limits ([`auth`]), errors as RFC 9457
//! problems ([`problem`]), `Idempotency-Key` on every POST ([`idempotent`]), and the OpenAPI
//! 3.1 document generated from this code ([`openapi`], served at [`OPENAPI_PATH`]).
//!
//! | route | who |
//! |---|---|
//! | `GET /api/v1/pipelines`, `/pipelines/{p}`, `/pipelines/{p}/history`, `/releases`, `/releases/{r}`, `/events`, `/config` | every role |
//! | `GET /metrics` (Prometheus, as on `--metrics-listen`) | every role |
//! | `POST …/releases/{r}/stages/{s}/approve`, `…/reject` | approver (as its own approver) |
//! | `POST /api/v1/pipelines/{p}/pause`, `…/resume`, `…/stages/{s}/rollback`, `…/releases/{r}/retry`, `…/promote` | operator, admin |
//! | `POST …/releases/{r}/override` | admin |
//! | `GET /api/v1/openapi.json` | anyone (rate-limited by address) |
//!
//! # Guarantees
//! - Handlers record facts through the engine's ingest API and the same functions the
//!   command line uses; they never perform a side effect themselves.
//! - A POST repeated with the same `Idempotency-Key` (same key, method, path and body) gets
//!   the first answer again (`Idempotent-Replayed: true`) and changes nothing.
//!
//! # Must never
//! - log or answer with an API key, or a request body.

pub mod acts;
pub mod auth;
pub mod openapi;
pub mod problem;
pub mod reads;
pub mod views;

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use sha2::{Digest, Sha256};

use crate::config::{Config, HttpSettings, Pipeline};
use crate::engine::Engine;
use crate::github::forge::GithubForge;
use crate::store::keys::{Claim, IdempotentRequest};
use auth::{Caller, Limits};
use problem::{Kind, Problem};

/// Where the OpenAPI document is served.
pub const OPENAPI_PATH: &str = "/api/v1/openapi.json";
/// The largest body an act accepts.
pub const BODY_LIMIT: usize = 16 * 1024;
/// The longest `Idempotency-Key`.
pub const IDEMPOTENCY_KEY_MAX: usize = 255;

/// What the API's handlers share. Cheap to clone.
#[derive(Clone)]
pub struct ApiState {
    pub engine: Engine,
    pub forge: Option<Arc<GithubForge>>,
    pub limits: Arc<Limits>,
}

impl ApiState {
    /// The API over `engine`, with `[controller.api]`'s limits (and the HTTP edge's trusted
    /// proxies, to tell source addresses).
    pub fn new(engine: Engine, forge: Option<Arc<GithubForge>>, http: &HttpSettings) -> ApiState {
        let api = engine.config().controller.api;
        ApiState {
            engine,
            forge,
            limits: Arc::new(Limits::new(&api, http)),
        }
    }

    /// The pipeline named `name` in `config`, or a 404.
    pub fn pipeline<'c>(&self, config: &'c Config, name: &str) -> Result<&'c Pipeline, Problem> {
        config
            .pipeline(name)
            .ok_or_else(|| Problem::new(Kind::NotFound, format!("there is no pipeline `{name}`")))
    }

    /// Appends to a pipeline's event log as the caller; a failure is logged, not answered.
    pub async fn log(&self, pipeline: &str, caller: &Caller, kind: &str, detail: &str) {
        let written = self
            .engine
            .log_event(pipeline, &caller.actor(), kind, None, detail)
            .await;
        if let Err(e) = written {
            tracing::error!(error = %e, %pipeline, kind, "cannot write an API call to the event log");
        }
    }
}

/// The API's routes, with their state applied (merge into the main router).
pub fn routes(state: ApiState) -> Router {
    let reads = Router::new()
        .route("/api/v1/pipelines", get(reads::pipelines))
        .route("/api/v1/pipelines/{pipeline}", get(reads::pipeline))
        .route("/api/v1/releases", get(reads::releases))
        .route("/api/v1/releases/{release}", get(reads::release))
        .route("/api/v1/events", get(reads::events))
        .route("/api/v1/config", get(reads::config))
        .route("/api/v1/pipelines/{pipeline}/history", get(reads::history))
        .route("/metrics", get(reads::metrics));
    let p = "/api/v1/pipelines/{pipeline}";
    let acts = Router::new()
        .route(
            &format!("{p}/releases/{{release}}/stages/{{stage}}/approve"),
            post(acts::approve),
        )
        .route(
            &format!("{p}/releases/{{release}}/stages/{{stage}}/reject"),
            post(acts::reject),
        )
        .route(&format!("{p}/pause"), post(acts::pause))
        .route(&format!("{p}/resume"), post(acts::resume))
        .route(
            &format!("{p}/stages/{{stage}}/rollback"),
            post(acts::rollback),
        )
        .route(
            &format!("{p}/releases/{{release}}/retry"),
            post(acts::retry),
        )
        .route(
            &format!("{p}/releases/{{release}}/override"),
            post(acts::override_rule),
        )
        .route(&format!("{p}/promote"), post(acts::promote))
        .route_layer(middleware::from_fn_with_state(state.clone(), idempotent));
    let authenticated =
        reads
            .merge(acts)
            .fallback(not_found)
            .route_layer(middleware::from_fn_with_state(
                state.clone(),
                auth::authenticate,
            ));
    let document = Router::new()
        .route(OPENAPI_PATH, get(openapi::serve))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::address_only,
        ));
    document.merge(authenticated).with_state(state)
}

async fn not_found() -> Problem {
    Problem::new(
        Kind::NotFound,
        "no such route in /api/v1 (see /api/v1/openapi.json)",
    )
}

/// `Idempotency-Key` on a POST: runs the request once per (API key, idempotency key) and
/// replays its first answer to repeats. Without the header the request just runs.
async fn idempotent(State(api): State<ApiState>, request: Request, next: Next) -> Response {
    let Some(key) = request.headers().get("idempotency-key").cloned() else {
        return next.run(request).await;
    };
    if request.method() != Method::POST {
        return next.run(request).await;
    }
    let key = match key.to_str() {
        Ok(k)
            if (1..=IDEMPOTENCY_KEY_MAX).contains(&k.len())
                && k.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            k.to_owned()
        }
        _ => {
            let why = format!(
                "`Idempotency-Key` is 1 to {IDEMPOTENCY_KEY_MAX} printable ASCII characters"
            );
            return Problem::new(Kind::InvalidRequest, why).into_response();
        }
    };
    let Some(caller) = request.extensions().get::<Caller>().cloned() else {
        return Problem::internal("idempotency without authentication").into_response();
    };
    let (parts, body) = request.into_parts();
    let Ok(bytes) = to_bytes(body, BODY_LIMIT).await else {
        let why = format!("the body is larger than {BODY_LIMIT} bytes");
        return Problem::new(Kind::InvalidRequest, why).into_response();
    };
    let digest = hex::encode(Sha256::digest(&bytes));
    let path = parts.uri.path().to_owned();
    let claim = api
        .engine
        .claim_idempotency(&IdempotentRequest {
            key_name: &caller.key.name,
            idempotency_key: &key,
            method: parts.method.as_str(),
            path: &path,
            body_sha256: &digest,
        })
        .await;
    match claim {
        Ok(Claim::Fresh) => {}
        Ok(Claim::Done { status, body }) => return replay(status, body),
        Ok(Claim::InProgress) => {
            let why = "the first request with this `Idempotency-Key` has not answered yet; repeat it later";
            return Problem::new(Kind::IdempotencyInProgress, why).into_response();
        }
        Ok(Claim::Mismatch) => {
            let why = "this `Idempotency-Key` was used for a different request (method, path or body); use a new key";
            return Problem::new(Kind::IdempotencyKeyReused, why).into_response();
        }
        Err(e) => return Problem::internal(e).into_response(),
    }
    let response = next
        .run(Request::from_parts(parts, Body::from(bytes)))
        .await;
    let (parts, body) = response.into_parts();
    let bytes = to_bytes(body, usize::MAX).await.unwrap_or_default();
    let status = parts.status.as_u16();
    let text = String::from_utf8_lossy(&bytes);
    let keep = (!parts.status.is_server_error()).then_some((status, text.as_ref()));
    if let Err(e) = api
        .engine
        .finish_idempotency(&caller.key.name, &key, keep)
        .await
    {
        tracing::error!(error = %e, "cannot keep an API answer for its Idempotency-Key");
    }
    Response::from_parts(parts, Body::from(bytes))
}

/// The first answer to a request, again.
fn replay(status: u16, body: String) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    let kind = if status.is_success() {
        "application/json"
    } else {
        problem::PROBLEM_JSON
    };
    let mut r = (status, body).into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    r.headers_mut()
        .insert("idempotent-replayed", HeaderValue::from_static("true"));
    r
}

//! A real HTTP server on 127.0.0.1 standing in for a deployed stage, shared by the
//! integration tests. Each test starts its own, so counters never leak between tests.

#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

/// The commit the fake stage claims to serve.
pub const COMMIT: &str = "abc123def";
/// How long `/slow` takes to answer.
pub const SLOW: Duration = Duration::from_millis(150);

/// A running fake stage.
pub struct Stage {
    pub base_url: String,
    counters: Arc<Counters>,
}

#[derive(Default)]
struct Counters {
    requests: AtomicU32,
    flaky: AtomicU32,
}

impl Stage {
    /// Every request the stage received.
    pub fn requests(&self) -> u32 {
        self.counters.requests.load(Ordering::SeqCst)
    }

    /// Requests to `/flaky`.
    pub fn flaky_calls(&self) -> u32 {
        self.counters.flaky.load(Ordering::SeqCst)
    }
}

/// Starts the stage on 127.0.0.1 with an ephemeral port; it stops with the test's runtime.
pub async fn start() -> Stage {
    let counters = Arc::new(Counters::default());
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/api/version", get(version))
        .route("/flaky", get(flaky))
        .route("/slow", get(slow))
        .route("/status/{code}", get(status))
        .route("/echo", post(echo))
        .route("/redirect", get(redirect))
        .layer(middleware::from_fn_with_state(counters.clone(), count))
        .with_state(counters.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Stage {
        base_url: format!("http://{address}"),
        counters,
    }
}

/// A base URL on 127.0.0.1 where nothing listens.
pub async fn closed_base_url() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{address}")
}

async fn count(State(counters): State<Arc<Counters>>, request: Request, next: Next) -> Response {
    counters.requests.fetch_add(1, Ordering::SeqCst);
    next.run(request).await
}

async fn version() -> impl IntoResponse {
    axum::Json(json!({
        "status": "ok",
        "commit": COMMIT,
        "version": { "major": 1, "minor": 4 },
    }))
}

/// 503 twice, then 200: a stage that is still warming up.
async fn flaky(State(counters): State<Arc<Counters>>) -> impl IntoResponse {
    match counters.flaky.fetch_add(1, Ordering::SeqCst) {
        0 | 1 => (StatusCode::SERVICE_UNAVAILABLE, "warming up"),
        _ => (StatusCode::OK, "ok"),
    }
}

async fn slow() -> &'static str {
    tokio::time::sleep(SLOW).await;
    "ok"
}

async fn status(Path(code): Path<u16>) -> impl IntoResponse {
    let code = StatusCode::from_u16(code).unwrap();
    (code, format!("status {}", code.as_u16()))
}

/// Echoes what the check sent, so tests can see substituted headers and bodies.
async fn echo(headers: HeaderMap, body: String) -> impl IntoResponse {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    axum::Json(json!({
        "stage": text("x-stage"),
        "user_agent": text("user-agent"),
        "content_type": text("content-type"),
        "body": body,
    }))
}

async fn redirect() -> impl IntoResponse {
    (StatusCode::FOUND, [(header::LOCATION, "/healthz")])
}

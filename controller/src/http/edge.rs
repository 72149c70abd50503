//! The hardened HTTP edge: the server loop `tollgate serve` runs, and the guards put in front
//! of each route.
//!
//! Owns [`serve`] (accepting connections, HTTP/1.1 over hyper, per-connection timeouts and a
//! bounded graceful shutdown) and [`Edge`] (per-route guards: concurrency, each webhook route's budget
//! of unauthenticated body bytes, per-source-address rate limits, the request timeout). Settings
//! come from `[controller.http]` ([`HttpSettings`]) and apply from start to exit.
//!
//! | what | limit | answer |
//! |---|---|---|
//! | a request head not complete within `header_read_timeout` | per connection | connection closed |
//! | a keep-alive connection with no request for `idle_timeout` | per connection | connection closed |
//! | a request (body, handler and answer) longer than `request_timeout` | per request | 408 |
//! | more than `max_concurrent_requests` on one route | per route | 503 with `Retry-After` |
//! | a declared body over the route's cap | per request | 413, body not read |
//! | unauthenticated bodies over the route's budget in flight (`max_unauthenticated_body_mib`, at most the route's cap × `max_concurrent_requests`) | per route | 503 with `Retry-After`, body not read |
//! | more than `rate_limit_per_minute` (burst `rate_limit_burst`) from one address | per route and source address | 429 with `Retry-After` |
//!
//! # Guarantees
//! - A webhook body is counted against its route's budget *before* it is read: by its
//!   `Content-Length`, or by the route's whole cap when the length is not declared. So at most
//!   `max_unauthenticated_body_mib` per webhook route (GitHub 64 MiB, SNS 16 MiB with the
//!   defaults) of unauthenticated bodies are ever held at once, however many clients send, and
//!   a flood on the GitHub route never spends the budget SNS alarms arrive through.
//! - Refusals (413, 429, 503) are answered at once, without reading the body.
//! - On shutdown, no new connection is accepted; requests in flight get `shutdown_grace`, then
//!   the server returns even if a client is still sending.
//!
//! # Assumptions
//! - The source address is the TCP peer, unless the peer is one of `trusted_proxies`: then it
//!   is the rightmost `X-Forwarded-For` address that is not a trusted proxy. Without
//!   `trusted_proxies` the header is never read (anyone can write it).
//!
//! # Must never
//! - log a request's body, headers or URL (approval URLs carry tokens).

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::pin::pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tower::Service;

use crate::config::HttpSettings;

type KeyedLimiter = governor::DefaultKeyedRateLimiter<(&'static str, IpAddr)>;

/// How often idle entries are dropped from the rate limiter's table.
const LIMITER_SWEEP: Duration = Duration::from_secs(60);
/// Seconds a client is asked to wait after a 503 from a guard.
const BUSY_RETRY_SECS: u64 = 1;

/// The guards of one `serve`: shared by every route it wraps. Cheap to clone.
#[derive(Clone)]
pub struct Edge {
    settings: HttpSettings,
    limiter: Arc<KeyedLimiter>,
}

/// What a route needs from the edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exposure {
    /// Health, readiness, pages behind sign-in: a concurrency limit only.
    Open,
    /// Token-authenticated pages (approvals): rate-limited per source address too.
    RateLimited,
    /// Webhooks that read a body before authenticating it: rate-limited, and the body
    /// (at most `cap` bytes) counts against the shared budget.
    UnauthenticatedBody { cap: usize },
}

#[derive(Clone)]
struct Guard {
    route: &'static str,
    exposure: Exposure,
    concurrency: Arc<Semaphore>,
    /// The route's own budget of unauthenticated body bytes: a flood of large bodies on one
    /// webhook route cannot starve another (SNS alarms keep arriving while GitHub's route is
    /// full).
    body_budget: Option<Arc<Semaphore>>,
    edge: Edge,
}

impl Edge {
    pub fn new(settings: &HttpSettings) -> Edge {
        let per_minute = NonZeroU32::new(settings.rate_limit_per_minute).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(settings.rate_limit_burst).unwrap_or(NonZeroU32::MIN);
        let quota = governor::Quota::per_minute(per_minute).allow_burst(burst);
        Edge {
            settings: settings.clone(),
            limiter: Arc::new(governor::RateLimiter::keyed(quota)),
        }
    }

    pub fn settings(&self) -> &HttpSettings {
        &self.settings
    }

    /// `router` behind the guards its exposure calls for; `route` names it in answers and logs.
    pub fn guard(&self, route: &'static str, exposure: Exposure, router: Router) -> Router {
        let limit = self.settings.max_concurrent_requests as usize;
        let guard = Guard {
            route,
            exposure,
            concurrency: Arc::new(Semaphore::new(limit)),
            body_budget: match exposure {
                // At most the configured budget, and never more than the route's requests
                // in flight could hold.
                Exposure::UnauthenticatedBody { cap } => {
                    let configured = self.settings.max_unauthenticated_body_bytes as usize;
                    let bytes = configured.min(cap.saturating_mul(limit.max(1))).max(cap);
                    Some(Arc::new(Semaphore::new(bytes)))
                }
                _ => None,
            },
            edge: self.clone(),
        };
        router.route_layer(middleware::from_fn_with_state(guard, guarded))
    }

    /// `app` with every request bounded by `request_timeout` (408 past it), and given a
    /// request id ([`with_request_id`]).
    pub fn with_request_timeout(&self, app: Router) -> Router {
        let limit = self.settings.request_timeout;
        let app = app.layer(middleware::from_fn_with_state(limit, timed));
        with_request_id(app)
    }

    /// Drops rate-limiter entries of addresses that are back to a full allowance.
    fn sweep(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }
}

/// The response header that carries a request's id.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// A request's id, as [`with_request_id`] made it: 32 hex digits. The request carries it as an
/// extension, so a handler (the API's audit events) names the same id as the log lines and the
/// `X-Request-Id` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(pub String);

impl RequestId {
    /// A fresh, random id.
    pub fn new() -> RequestId {
        RequestId(format!("{:032x}", rand::random::<u128>()))
    }

    /// The id of `request` given by [`with_request_id`], if it went through it.
    pub fn of<B>(request: &axum::http::Request<B>) -> Option<&RequestId> {
        request.extensions().get::<RequestId>()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for RequestId {
    fn default() -> RequestId {
        RequestId::new()
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// `app` with a fresh id for every request ([`RequestId`], carried by the request as an
/// extension): every log line written while it is handled carries it (the `request` span,
/// with the method and the guarded route's name, never the URL), the handlers read it (the
/// API's audit events name it), and the answer returns it as `X-Request-Id`. An id sent by the
/// client is not used: anyone can write that header.
pub fn with_request_id(app: Router) -> Router {
    app.layer(middleware::from_fn(request_id))
}

async fn request_id(mut request: Request, next: Next) -> Response {
    let id = RequestId::new();
    request.extensions_mut().insert(id.clone());
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        method = %request.method(),
        route = tracing::field::Empty,
    );
    let mut response = tracing::Instrument::instrument(
        async move {
            let response = next.run(request).await;
            tracing::info!(status = response.status().as_u16(), "answered");
            response
        },
        span,
    )
    .await;
    if let Ok(value) = HeaderValue::from_str(id.as_str()) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    response
}

async fn timed(State(limit): State<Duration>, request: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => Refusal {
            status: StatusCode::REQUEST_TIMEOUT,
            result: "timeout",
            detail: format!(
                "the request took longer than {}",
                crate::config::values::format_duration(limit)
            ),
            retry_after: None,
        }
        .into_response(),
    }
}

async fn guarded(State(guard): State<Guard>, request: Request, next: Next) -> Response {
    tracing::Span::current().record("route", guard.route);
    match admit(&guard, &request) {
        Ok(permits) => {
            let response = next.run(request).await;
            drop(permits);
            response
        }
        Err(refused) => refused.into_response(),
    }
}

/// What a request holds while it runs: its place on the route and its share of the budget.
struct Permits {
    _route: OwnedSemaphorePermit,
    _body: Option<OwnedSemaphorePermit>,
}

fn admit(guard: &Guard, request: &Request) -> Result<Permits, Refusal> {
    if guard.exposure != Exposure::Open {
        rate_limit(guard, request)?;
    }
    let route = guard.concurrency.clone().try_acquire_owned().map_err(|_| {
        tracing::warn!(
            route = guard.route,
            "route at its concurrency limit; request refused"
        );
        busy(format!(
            "{} is handling as many requests as it accepts",
            guard.route
        ))
    })?;
    let body = match guard.exposure {
        Exposure::UnauthenticatedBody { cap } => Some(reserve_body(guard, request, cap)?),
        _ => None,
    };
    Ok(Permits {
        _route: route,
        _body: body,
    })
}

fn rate_limit(guard: &Guard, request: &Request) -> Result<(), Refusal> {
    let Some(ConnectInfo(peer)) = request.extensions().get::<ConnectInfo<SocketAddr>>() else {
        return Ok(());
    };
    let source = source_address(&guard.edge.settings, peer.ip(), request.headers());
    let limiter = &guard.edge.limiter;
    let Err(not_until) = limiter.check_key(&(guard.route, source)) else {
        return Ok(());
    };
    let wait = not_until.wait_time_from(DefaultClock::default().now());
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    tracing::warn!(route = guard.route, %source, "rate limit reached; request refused");
    Err(Refusal {
        status: StatusCode::TOO_MANY_REQUESTS,
        result: "rate-limited",
        detail: format!("too many requests to {} from this address", guard.route),
        retry_after: Some(secs.max(1)),
    })
}

/// The address a request is rate-limited by: the TCP peer, unless the peer is a trusted proxy;
/// then the rightmost `X-Forwarded-For` address that is not a trusted proxy (each proxy appends
/// the address it received the request from, so addresses left of that one are the client's
/// own claims). A header that cannot be read leaves the peer.
pub(crate) fn source_address(
    settings: &HttpSettings,
    peer: IpAddr,
    headers: &header::HeaderMap,
) -> IpAddr {
    if !settings.is_trusted_proxy(peer) {
        return peer;
    }
    let mut hops: Vec<Option<IpAddr>> = Vec::new();
    for value in headers.get_all("x-forwarded-for") {
        let Ok(text) = value.to_str() else {
            return peer;
        };
        hops.extend(text.split(',').map(|a| a.trim().parse::<IpAddr>().ok()));
    }
    for hop in hops.into_iter().rev() {
        match hop {
            Some(ip) if settings.is_trusted_proxy(ip) => continue,
            Some(ip) => return ip,
            None => return peer,
        }
    }
    peer
}

/// Reserves the body's bytes (declared length, or the whole cap) from the route's budget.
fn reserve_body(
    guard: &Guard,
    request: &Request,
    cap: usize,
) -> Result<OwnedSemaphorePermit, Refusal> {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > cap as u64) {
        return Err(Refusal {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            result: "rejected",
            detail: format!(
                "the body is larger than the {cap} bytes {} accepts",
                guard.route
            ),
            retry_after: None,
        });
    }
    let bytes = declared.map_or(cap as u64, |n| n.max(1));
    let bytes = u32::try_from(bytes).unwrap_or(u32::MAX);
    let Some(budget) = guard.body_budget.clone() else {
        return Err(busy("no body budget for this route".into()));
    };
    budget.try_acquire_many_owned(bytes).map_err(|_| {
        tracing::warn!(
            route = guard.route,
            bytes,
            "unauthenticated body budget spent; request refused"
        );
        busy("the controller is receiving as much unauthenticated data as it accepts".into())
    })
}

fn busy(detail: String) -> Refusal {
    Refusal {
        status: StatusCode::SERVICE_UNAVAILABLE,
        result: "busy",
        detail,
        retry_after: Some(BUSY_RETRY_SECS),
    }
}

/// A guard's refusal, answered in the webhooks' shape (`{"result", "detail"}`), with
/// `Retry-After` when given.
struct Refusal {
    status: StatusCode,
    result: &'static str,
    detail: String,
    retry_after: Option<u64>,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let body = axum::Json(json!({ "result": self.result, "detail": self.detail }));
        let mut response = (self.status, body).into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

// ----- the server loop ----------------------------------------------------------------------

/// Serves `app` on `listener` until `shutdown` completes, then gives requests in flight up to
/// `shutdown_grace` and returns.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    edge: &Edge,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let graceful = GracefulShutdown::new();
    let sweeper = spawn_sweeper(edge.clone());
    let mut shutdown = pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => connection(stream, peer, app.clone(), edge.settings(), &graceful),
                Err(e) => {
                    // Out of file descriptors, say: wait a moment rather than spin.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    sweeper.abort();
    let grace = edge.settings().shutdown_grace;
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            grace = %crate::config::values::format_duration(grace),
            "requests still in flight after the shutdown grace; closing them"
        );
    }
    Ok(())
}

fn spawn_sweeper(edge: Edge) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(LIMITER_SWEEP);
        loop {
            tick.tick().await;
            edge.sweep();
        }
    })
}

/// Serves one connection under its header-read and idle timeouts.
fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    app: Router,
    settings: &HttpSettings,
    graceful: &GracefulShutdown,
) {
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Tracked {
        inner: stream,
        activity: activity.clone(),
    });
    let requests = activity.clone();
    let service =
        hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            let in_flight = InFlight::start(requests.clone());
            let mut app = app.clone();
            async move {
                let response = app.call(request.map(axum::body::Body::new)).await;
                drop(in_flight);
                response
            }
        });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.keep_alive(true).header_read_timeout(None);
    let conn = graceful.watch(builder.serve_connection(io, service));
    let limits = Limits {
        header: settings.header_read_timeout,
        idle: settings.idle_timeout,
        recheck: settings.request_timeout,
    };
    tokio::spawn(watch_connection(conn, activity, limits));
}

#[derive(Clone, Copy)]
struct Limits {
    header: Duration,
    idle: Duration,
    recheck: Duration,
}

/// Runs the connection until it ends, or drops it (closing the socket) when a head is not
/// complete in time or the connection stays idle too long.
async fn watch_connection<F>(conn: F, activity: Arc<Activity>, limits: Limits)
where
    F: Future<Output = Result<(), hyper::Error>>,
{
    let mut conn = pin!(conn);
    loop {
        let changed = activity.changed.notified();
        let (deadline, phase) = activity.deadline(limits);
        tokio::select! {
            _ = &mut conn => return,
            () = changed => {}
            () = tokio::time::sleep_until(deadline) => {
                if activity.deadline(limits) == (deadline, phase) && phase != Phase::InFlight {
                    tracing::debug!(?phase, "closing a connection past its timeout");
                    return;
                }
            }
        }
    }
}

/// Where a connection is, for its timeouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// No request in flight and no byte of the next one: `idle_timeout` runs.
    Idle(Instant),
    /// The first byte of a head arrived at this instant: `header_read_timeout` runs.
    Head(Instant),
    /// A request is in flight (the request timeout bounds it).
    InFlight,
}

struct Activity {
    state: Mutex<(Phase, usize)>,
    changed: Notify,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            state: Mutex::new((Phase::Idle(Instant::now()), 0)),
            changed: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, (Phase, usize)> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set(&self, phase: Phase) {
        self.lock().0 = phase;
        self.changed.notify_one();
    }

    /// Bytes arrived: an idle connection starts a head.
    fn read(&self) {
        let mut state = self.lock();
        if matches!(state.0, Phase::Idle(_)) && state.1 == 0 {
            state.0 = Phase::Head(Instant::now());
            drop(state);
            self.changed.notify_one();
        }
    }

    /// Bytes were written: an idle connection is still answering.
    fn wrote(&self) {
        let mut state = self.lock();
        if matches!(state.0, Phase::Idle(_)) {
            state.0 = Phase::Idle(Instant::now());
        }
    }

    fn deadline(&self, limits: Limits) -> (Instant, Phase) {
        let phase = self.lock().0;
        let deadline = match phase {
            Phase::Idle(since) => since + limits.idle,
            Phase::Head(since) => since + limits.header,
            Phase::InFlight => Instant::now() + limits.recheck,
        };
        (deadline, phase)
    }
}

/// A request in flight on a connection; dropping it makes the connection idle again.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn start(activity: Arc<Activity>) -> InFlight {
        activity.lock().1 += 1;
        activity.set(Phase::InFlight);
        InFlight(activity)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.1 = state.1.saturating_sub(1);
        if state.1 == 0 {
            state.0 = Phase::Idle(Instant::now());
        }
        drop(state);
        self.0.changed.notify_one();
    }
}

/// A socket that tells its [`Activity`] when bytes move.
struct Tracked {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.read();
        }
        polled
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.wrote();
        }
        polled
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod source_tests {
    use super::*;

    fn settings(proxies: &[(&str, u8)]) -> HttpSettings {
        HttpSettings {
            trusted_proxies: proxies
                .iter()
                .map(|(ip, len)| (ip.parse().unwrap(), *len))
                .collect(),
            ..HttpSettings::default()
        }
    }

    fn forwarded(values: &[&str]) -> header::HeaderMap {
        let mut headers = header::HeaderMap::new();
        for v in values {
            headers.append("x-forwarded-for", v.parse().unwrap());
        }
        headers
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn without_trusted_proxies_the_header_is_never_read() {
        let s = settings(&[]);
        let h = forwarded(&["203.0.113.9"]);
        assert_eq!(source_address(&s, ip("10.0.0.5"), &h), ip("10.0.0.5"));
    }

    #[test]
    fn behind_trusted_proxies_the_rightmost_untrusted_hop_is_the_source() {
        let s = settings(&[("10.0.0.0", 8), ("fd00::", 8)]);
        // The client claims 1.2.3.4; the edge proxy saw 203.0.113.9; an inner proxy 10.1.1.1.
        let h = forwarded(&["1.2.3.4, 203.0.113.9", "10.1.1.1"]);
        assert_eq!(source_address(&s, ip("10.0.0.5"), &h), ip("203.0.113.9"));
        let v6 = forwarded(&["2001:db8::7, fd00::1"]);
        assert_eq!(source_address(&s, ip("fd00::2"), &v6), ip("2001:db8::7"));
    }

    #[test]
    fn a_peer_that_is_not_a_trusted_proxy_cannot_choose_its_address() {
        let s = settings(&[("10.0.0.0", 8)]);
        let h = forwarded(&["203.0.113.9"]);
        assert_eq!(
            source_address(&s, ip("198.51.100.1"), &h),
            ip("198.51.100.1")
        );
    }

    #[test]
    fn a_missing_or_unreadable_header_leaves_the_peer() {
        let s = settings(&[("10.0.0.0", 8)]);
        let peer = ip("10.0.0.5");
        assert_eq!(source_address(&s, peer, &forwarded(&[])), peer);
        assert_eq!(source_address(&s, peer, &forwarded(&["not-an-ip"])), peer);
        assert_eq!(
            source_address(&s, peer, &forwarded(&["10.2.2.2"])),
            peer,
            "only proxies"
        );
    }
}

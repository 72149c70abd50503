//! Who is calling `/api/v1`, and how often: bearer keys and token buckets.
//!
//! [`authenticate`] runs before every route but the OpenAPI document: it charges the source
//! address's bucket, then reads `Authorization: Bearer <key>`, finds the key by its hash and
//! charges the key's bucket. Every answer carries `X-Request-Id` and
//! `X-RateLimit-Limit`/`-Remaining`/`-Reset` (of the tighter bucket); a 429 also `Retry-After`.
//!
//! The request id is the one the HTTP edge gave the request ([`RequestId`], made once per
//! request by [`crate::http::edge::with_request_id`]): the [`Caller`] carries it, so the audit
//! events (`api-call`, `api-forbidden`) name the id the log lines and `X-Request-Id` show.
//! Only a request that did not pass the edge (the API router served on its own) gets an id
//! made here.
//!
//! | request | answer |
//! |---|---|
//! | over the address's or the key's rate | 429 `rate-limited`, `Retry-After` |
//! | no `Authorization: Bearer`, or a key that is unknown, revoked or expired | 401 `unauthorized`, `WWW-Authenticate: Bearer` |
//!
//! A POST refused with 401, 403 (by the route) or 429 is counted in
//! `tollgate_api_refused_total{route,status}` (`route` is the route's template, so the label
//! set is bounded).
//!
//! Buckets are `governor`'s (GCRA): `per_*_per_minute` refill, `per_*_burst` size, from
//! `[controller.api]`.
//!
//! # Must never
//! - log or answer with the key presented; say which of missing, unknown, revoked or expired
//!   only (an unknown key is not echoed).

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;

use super::ApiState;
use super::problem::{Kind, Problem};
use crate::config::{ApiSettings, HttpSettings};
use crate::http::edge::RequestId;
use crate::store::keys::{ApiKey, KeyState, Role};

type Keyed<K> = governor::DefaultKeyedRateLimiter<K, StateInformationMiddleware>;

/// The API's token buckets.
pub struct Limits {
    by_key: Keyed<String>,
    by_address: Keyed<IpAddr>,
    http: HttpSettings,
}

/// What one bucket says about a request: for the `X-RateLimit-*` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub limit: u32,
    pub remaining: u32,
    /// Seconds until the bucket is full again.
    pub reset: u64,
    /// On a refusal: seconds until one request is allowed.
    pub retry_after: Option<u64>,
}

fn quota(per_minute: u32, burst: u32) -> governor::Quota {
    let rate = NonZeroU32::new(per_minute).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
    governor::Quota::per_minute(rate).allow_burst(burst)
}

fn keyed<K: Clone + std::hash::Hash + Eq>(q: governor::Quota) -> Keyed<K> {
    governor::RateLimiter::keyed(q).with_middleware::<StateInformationMiddleware>()
}

fn ceil_secs(d: std::time::Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

impl Limits {
    pub fn new(api: &ApiSettings, http: &HttpSettings) -> Limits {
        Limits {
            by_key: keyed(quota(api.per_key_per_minute, api.per_key_burst)),
            by_address: keyed(quota(api.per_address_per_minute, api.per_address_burst)),
            http: http.clone(),
        }
    }

    fn charge<K: Clone + std::hash::Hash + Eq>(limiter: &Keyed<K>, key: &K) -> Budget {
        match limiter.check_key(key) {
            Ok(s) => {
                let q = s.quota();
                let limit = q.burst_size().get();
                let remaining = s.remaining_burst_capacity();
                let empty = limit.saturating_sub(remaining);
                Budget {
                    limit,
                    remaining,
                    reset: ceil_secs(q.replenish_interval() * empty),
                    retry_after: None,
                }
            }
            Err(not_until) => {
                let q = not_until.quota();
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                let limit = q.burst_size().get();
                let refill = q.replenish_interval() * limit.saturating_sub(1);
                Budget {
                    limit,
                    remaining: 0,
                    reset: ceil_secs(wait + refill),
                    retry_after: Some(ceil_secs(wait).max(1)),
                }
            }
        }
    }

    /// Drops bucket entries that are full again.
    pub fn sweep(&self) {
        self.by_key.retain_recent();
        self.by_address.retain_recent();
    }
}

/// The caller of a request that passed [`authenticate`].
#[derive(Debug, Clone)]
pub struct Caller {
    pub key: ApiKey,
    pub source: IpAddr,
    /// The edge's id of the request: the one in `X-Request-Id` and in the request's log span.
    pub request_id: String,
}

impl Caller {
    /// The actor the event log names: `api-key:<name>`.
    pub fn actor(&self) -> String {
        format!("api-key:{}", self.key.name)
    }

    /// `key ops-1 (operator) from 127.0.0.1, request 1f2e…`.
    pub fn describe(&self) -> String {
        format!(
            "key {} ({}) from {}, request {}",
            self.key.name, self.key.role, self.source, self.request_id
        )
    }

    pub fn role(&self) -> Role {
        self.key.role
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| Problem::internal("a route ran without authentication"))
    }
}

/// The request's id: the edge's ([`RequestId`]), or a fresh one if it did not pass the edge.
fn request_id(request: &Request) -> String {
    RequestId::of(request)
        .cloned()
        .unwrap_or_default()
        .to_string()
}

fn source(limits: &Limits, request: &Request) -> Option<IpAddr> {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()?
        .0
        .ip();
    Some(crate::http::edge::source_address(
        &limits.http,
        peer,
        request.headers(),
    ))
}

/// Charges the request's source address's bucket: the request's id, the address and the
/// bucket's state, or the answer (429, or 500 without a peer address).
fn admit_address(
    api: &ApiState,
    request: &Request,
) -> Result<(String, IpAddr, Budget), Box<Response>> {
    let id = request_id(request);
    let Some(addr) = source(&api.limits, request) else {
        let failed = Problem::internal("no peer address").into_response();
        return Err(Box::new(finish(failed, &id, None)));
    };
    let budget = Limits::charge(&api.limits.by_address, &addr);
    if budget.retry_after.is_some() {
        let refused = too_many(budget, "this address").into_response();
        return Err(Box::new(finish(refused, &id, Some(budget))));
    }
    Ok((id, addr, budget))
}

/// Rate limits by source address only (the OpenAPI document).
pub async fn address_only(State(api): State<ApiState>, request: Request, next: Next) -> Response {
    match admit_address(&api, &request) {
        Ok((id, _, budget)) => finish(next.run(request).await, &id, Some(budget)),
        Err(refused) => *refused,
    }
}

/// Authenticates and rate-limits a request (see the module's table), and counts a mutating
/// call refused with 401, 403 or 429 in `tollgate_api_refused_total` by route and status.
pub async fn authenticate(State(api): State<ApiState>, request: Request, next: Next) -> Response {
    let mutating = request.method() == axum::http::Method::POST;
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|m| m.as_str().to_owned());
    let response = admit(api, request, next).await;
    if let (true, Some(route)) = (mutating, route) {
        crate::metrics::global().api_refused(&route, response.status());
    }
    response
}

async fn admit(api: ApiState, mut request: Request, next: Next) -> Response {
    let (id, addr, by_address) = match admit_address(&api, &request) {
        Ok(admitted) => admitted,
        Err(refused) => return *refused,
    };
    let key = match identify(&api, request.headers()).await {
        Ok(key) => key,
        Err(p) => return finish(p.into_response(), &id, Some(by_address)),
    };
    let by_key = Limits::charge(&api.limits.by_key, &key.name);
    if by_key.retry_after.is_some() {
        return finish(
            too_many(by_key, "this key").into_response(),
            &id,
            Some(by_key),
        );
    }
    let tighter = if by_key.remaining <= by_address.remaining {
        by_key
    } else {
        by_address
    };
    request.extensions_mut().insert(Caller {
        key,
        source: addr,
        request_id: id.clone(),
    });
    finish(next.run(request).await, &id, Some(tighter))
}

async fn identify(api: &ApiState, headers: &HeaderMap) -> Result<ApiKey, Problem> {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
    let Some(presented) = presented else {
        return Err(Problem::new(
            Kind::Unauthorized,
            "send an API key as `Authorization: Bearer <key>` (created with `tollgate keys create`)",
        ));
    };
    let found = api.engine.reads().api_key_by_secret(presented).await;
    let key = match found {
        Ok(Some(key)) => key,
        Ok(None) => return Err(Problem::new(Kind::Unauthorized, "the API key is not known")),
        Err(e) => return Err(Problem::internal(e)),
    };
    let when = |t: chrono::DateTime<chrono::Utc>| t.format("%Y-%m-%d %H:%M:%S UTC").to_string();
    match key.state(api.engine.now()) {
        KeyState::Active => Ok(key),
        KeyState::Revoked(at) => Err(Problem::new(
            Kind::Unauthorized,
            format!("the API key `{}` was revoked at {}", key.name, when(at)),
        )),
        KeyState::Expired(at) => Err(Problem::new(
            Kind::Unauthorized,
            format!("the API key `{}` expired at {}", key.name, when(at)),
        )),
    }
}

fn too_many(b: Budget, whose: &str) -> Problem {
    let secs = b.retry_after.unwrap_or(1);
    let mut p = Problem::new(
        Kind::RateLimited,
        format!(
            "{whose} made more than its {} requests at once allow; try again in {secs} s",
            b.limit
        ),
    );
    p.retry_after = Some(secs);
    p
}

/// Adds the request id (the same the edge answers with) and the rate-limit headers.
fn finish(mut response: Response, id: &str, budget: Option<Budget>) -> Response {
    let h = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(id) {
        h.insert("x-request-id", v);
    }
    if let Some(b) = budget {
        h.insert("x-ratelimit-limit", HeaderValue::from(b.limit));
        h.insert("x-ratelimit-remaining", HeaderValue::from(b.remaining));
        h.insert("x-ratelimit-reset", HeaderValue::from(b.reset));
    }
    response
}

/// The API's shared limiter, swept every minute while `serve` runs.
pub fn spawn_sweeper(limits: Arc<Limits>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
        loop {
            tick.tick().await;
            limits.sweep();
        }
    })
}

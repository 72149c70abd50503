//! A loopback HTTP proxy in front of an emulated AWS endpoint (moto, the CloudWatch stub):
//! it notes every call (operation, when it was in flight) and, when given [`Faults`], answers a
//! seeded share of the calls itself with the service's throttling error or a server error,
//! without forwarding them.
//!
//! How the injected answers look follows each wire protocol (AWS "Common Errors":
//! https://docs.aws.amazon.com/AWSCloudFormation/latest/APIReference/CommonErrors.html — the same
//! list for every service: `ThrottlingException` 400, `InternalFailure` 500, `ServiceUnavailable`
//! 503):
//! - query protocol (CloudFormation, STS, SNS): an XML `<ErrorResponse>` whose code is
//!   `Throttling` (what CloudFormation and STS return when a rate is exceeded), HTTP 400;
//! - JSON protocols (ECR, CodePipeline, marked by `X-Amz-Target`): a JSON body whose `__type`
//!   is `ThrottlingException`, HTTP 400;
//! - RPCv2 CBOR (CloudWatch, path `/service/…/operation/<Op>`): a CBOR map with `__type`
//!   `ThrottlingException`, HTTP 400, and the `smithy-protocol: rpc-v2-cbor` header;
//! - server errors: `InternalFailure` 500 or `ServiceUnavailable` 503 in the same shapes.
//!
//! Never injects on moto's own `/moto-api` (the benchmarks' bookkeeping, not an AWS call).
//!
//! Given a [`Divert`], it forwards the calls that function picks to another endpoint (a
//! scripted stub standing in for one service) and the rest to its target.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// One call seen by a proxy: its operation and when it was in flight.
#[derive(Clone, Debug)]
pub struct Call {
    pub action: String,
    pub start: Instant,
    pub end: Instant,
    /// Answered by the proxy itself (an injected fault), not forwarded.
    pub injected: bool,
}

/// Which share of calls the proxy answers itself, drawn from a seeded generator.
pub struct Faults {
    /// Share answered with the protocol's throttling error (0.0–1.0).
    pub throttle: f64,
    /// Share answered with a server error, 500 or 503 (0.0–1.0).
    pub server_error: f64,
    rng: Mutex<StdRng>,
    pub throttled: AtomicUsize,
    pub server_errors: AtomicUsize,
}

impl Faults {
    pub fn new(throttle: f64, server_error: f64, seed: u64) -> Faults {
        Faults {
            throttle,
            server_error,
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
            throttled: AtomicUsize::new(0),
            server_errors: AtomicUsize::new(0),
        }
    }

    fn draw(&self) -> Option<Fault> {
        let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
        let p: f64 = rng.r#gen();
        if p < self.throttle {
            self.throttled.fetch_add(1, Ordering::Relaxed);
            Some(Fault::Throttle)
        } else if p < self.throttle + self.server_error {
            self.server_errors.fetch_add(1, Ordering::Relaxed);
            Some(if rng.gen_bool(0.5) {
                Fault::Internal
            } else {
                Fault::Unavailable
            })
        } else {
            None
        }
    }
}

#[derive(Clone, Copy)]
enum Fault {
    Throttle,
    Internal,
    Unavailable,
}

impl Fault {
    fn status_and_code(self) -> (StatusCode, &'static str, &'static str) {
        match self {
            Fault::Throttle => (StatusCode::BAD_REQUEST, "Throttling", "ThrottlingException"),
            Fault::Internal => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalFailure",
                "InternalFailure",
            ),
            Fault::Unavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                "ServiceUnavailable",
            ),
        }
    }
}

/// Picks, from a call's headers and body, the endpoint to forward it to instead of the
/// proxy's target (`None`: the target).
pub type Divert = Arc<dyn Fn(&Uri, &HeaderMap, &Bytes) -> Option<String> + Send + Sync>;

#[derive(Clone)]
pub struct Proxy {
    target: String,
    http: reqwest::Client,
    calls: Arc<Mutex<Vec<Call>>>,
    faults: Option<Arc<Faults>>,
    divert: Option<Divert>,
}

impl Proxy {
    /// Starts a proxy on 127.0.0.1 in front of `target`; returns it and its URL.
    pub async fn start(target: String) -> Result<(Proxy, String)> {
        Proxy::start_with(target, None).await
    }

    /// A proxy that answers a share of the calls itself ([`Faults`]).
    pub async fn start_with(
        target: String,
        faults: Option<Arc<Faults>>,
    ) -> Result<(Proxy, String)> {
        Proxy::launch(target, faults, None).await
    }

    /// A proxy that forwards the calls `divert` picks to the endpoint it names.
    pub async fn start_diverting(target: String, divert: Divert) -> Result<(Proxy, String)> {
        Proxy::launch(target, None, Some(divert)).await
    }

    async fn launch(
        target: String,
        faults: Option<Arc<Faults>>,
        divert: Option<Divert>,
    ) -> Result<(Proxy, String)> {
        let proxy = Proxy {
            target,
            http: reqwest::Client::builder()
                .no_proxy()
                .pool_max_idle_per_host(64)
                .build()?,
            calls: Arc::default(),
            faults,
            divert,
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let app = axum::Router::new()
            .fallback(forward)
            .with_state(proxy.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok((proxy, url))
    }

    /// The calls that started in `[from, to]`.
    pub fn calls_between(&self, from: Instant, to: Instant) -> Vec<Call> {
        let calls = self.calls.lock().unwrap_or_else(|p| p.into_inner());
        calls
            .iter()
            .filter(|c| c.start >= from && c.start <= to)
            .cloned()
            .collect()
    }

    /// Every call seen so far.
    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn note(&self, call: Call) {
        self.calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(call);
    }
}

const HOP_BY_HOP: [&str; 4] = ["host", "content-length", "connection", "transfer-encoding"];

async fn forward(State(proxy): State<Proxy>, request: Request) -> Response {
    let start = Instant::now();
    let (parts, body) = request.into_parts();
    let Ok(body) = axum::body::to_bytes(body, 64 * 1024 * 1024).await else {
        return StatusCode::PAYLOAD_TOO_LARGE.into_response();
    };
    let action = action_of(&parts.uri, &parts.headers, &body);
    let fault = match &proxy.faults {
        Some(f) if !parts.uri.path().starts_with("/moto-api") => f.draw(),
        _ => None,
    };
    if let Some(fault) = fault {
        let answer = injected(fault, &parts.uri, &parts.headers);
        let end = Instant::now();
        proxy.note(Call {
            action,
            start,
            end,
            injected: true,
        });
        return answer;
    }
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let target = match &proxy.divert {
        Some(divert) => divert(&parts.uri, &parts.headers, &body),
        None => None,
    };
    let target = target.as_deref().unwrap_or(&proxy.target);
    let mut outbound = proxy
        .http
        .request(parts.method.clone(), format!("{target}{path}"));
    for (k, v) in &parts.headers {
        if !HOP_BY_HOP.contains(&k.as_str()) {
            outbound = outbound.header(k, v);
        }
    }
    let answer = match outbound.body(body).send().await {
        Ok(a) => a,
        Err(e) => return (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    };
    let status = answer.status();
    let mut headers = HeaderMap::new();
    for (k, v) in answer.headers() {
        if !HOP_BY_HOP.contains(&k.as_str()) {
            headers.insert(k, v.clone());
        }
    }
    let bytes = answer.bytes().await.unwrap_or_default();
    proxy.note(Call {
        action,
        start,
        end: Instant::now(),
        injected: false,
    });
    (status, headers, bytes).into_response()
}

/// The error answer of `fault` in the request's wire protocol.
fn injected(fault: Fault, uri: &Uri, headers: &HeaderMap) -> Response {
    let (status, query_code, json_code) = fault.status_and_code();
    let message = "Rate exceeded (injected by the benchmark proxy)";
    if uri.path().contains("/operation/") {
        let mut r = (status, cbor_error(json_code)).into_response();
        let h = r.headers_mut();
        h.insert("content-type", HeaderValue::from_static("application/cbor"));
        h.insert("smithy-protocol", HeaderValue::from_static("rpc-v2-cbor"));
        return r;
    }
    if headers.contains_key("x-amz-target") {
        let content_type = headers
            .get("content-type")
            .cloned()
            .unwrap_or(HeaderValue::from_static("application/x-amz-json-1.1"));
        let body = serde_json::json!({ "__type": json_code, "message": message }).to_string();
        let mut r = (status, body).into_response();
        r.headers_mut().insert("content-type", content_type);
        r.headers_mut()
            .insert("x-amzn-errortype", HeaderValue::from_static(json_code));
        return r;
    }
    let kind = if fault_is_sender(status) {
        "Sender"
    } else {
        "Receiver"
    };
    let body = format!(
        "<ErrorResponse><Error><Type>{kind}</Type><Code>{query_code}</Code><Message>{message}</Message></Error><RequestId>00000000-0000-0000-0000-000000000000</RequestId></ErrorResponse>"
    );
    let mut r = (status, body).into_response();
    r.headers_mut()
        .insert("content-type", HeaderValue::from_static("text/xml"));
    r
}

fn fault_is_sender(status: StatusCode) -> bool {
    status.is_client_error()
}

/// `{"__type": code}` in CBOR (RFC 8949): a map of one pair of short text strings.
fn cbor_error(code: &str) -> Vec<u8> {
    let mut out = vec![0xA1];
    for text in ["__type", code] {
        // Text strings (major type 3) shorter than 256 bytes: 0x78 + one length byte.
        out.push(0x78);
        out.push(u8::try_from(text.len()).unwrap_or(u8::MAX));
        out.extend_from_slice(&text.as_bytes()[..text.len().min(255)]);
    }
    out
}

/// The operation: `Action=` of a query-protocol form, the JSON protocol's `X-Amz-Target`, or
/// the RPCv2 CBOR path's `/operation/<Op>`.
pub fn action_of(uri: &Uri, headers: &HeaderMap, body: &Bytes) -> String {
    let form = form_value(uri, body, "Action");
    let target = || {
        headers
            .get("x-amz-target")
            .and_then(|t| t.to_str().ok())
            .and_then(|t| t.rsplit('.').next())
            .map(str::to_owned)
    };
    let cbor = || {
        uri.path()
            .split_once("/operation/")
            .map(|(_, op)| op.to_owned())
    };
    form.or_else(target)
        .or_else(cbor)
        .unwrap_or_else(|| format!("{} {}", "other", uri.path()))
}

/// The service a SigV4-signed call is for: the fourth part of its `Authorization` header's
/// credential scope (`Credential=AKID/DATE/REGION/SERVICE/aws4_request`).
pub fn service_of(headers: &HeaderMap) -> Option<String> {
    let auth = headers.get("authorization")?.to_str().ok()?;
    let (_, scope) = auth.split_once("Credential=")?;
    scope.split(['/', ',']).nth(3).map(str::to_owned)
}

/// The value of `name` in a query-protocol call: its form body, then its URL's query.
pub fn form_value(uri: &Uri, body: &Bytes, name: &str) -> Option<String> {
    url::form_urlencoded::parse(body)
        .chain(url::form_urlencoded::parse(
            uri.query().unwrap_or_default().as_bytes(),
        ))
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// The time covered by at least one call, clipped to `[from, to]`.
pub fn union(calls: &[Call], from: Instant, to: Instant) -> Duration {
    let mut spans: Vec<(Instant, Instant)> = calls
        .iter()
        .map(|c| (c.start.max(from), c.end.min(to)))
        .filter(|(s, e)| s < e)
        .collect();
    spans.sort();
    let mut total = Duration::ZERO;
    let mut current: Option<(Instant, Instant)> = None;
    for (s, e) in spans {
        current = match current {
            Some((cs, ce)) if s <= ce => Some((cs, ce.max(e))),
            Some((cs, ce)) => {
                total += ce - cs;
                Some((s, e))
            }
            None => Some((s, e)),
        };
    }
    if let Some((cs, ce)) = current {
        total += ce - cs;
    }
    total
}

//! `/api/v1` through the real `tollgate serve` binary (launched as the edge tests launch it),
//! with keys made by the real `tollgate keys` command over the same SQLite file.
//!
//! - `keys create` prints a key once and stores only its hash; `keys revoke` ends it.
//! - The 401/403 matrix: every route × every role, and missing, unknown, revoked and expired
//!   keys; every 403 is in the event log. The matrix's routes are the OpenAPI document's, one
//!   for one; the document itself needs no key.
//! - One request id per request: the `X-Request-Id` answered is the id the log lines and the
//!   `api-call` / `api-forbidden` events name.
//! - The rate-limit headers count down per key and per address, a 429 carries `Retry-After`,
//!   and the bucket is full again after `X-RateLimit-Reset` seconds.
//! - Approval through the API obeys the approval link's rules: superseded → 409, the author
//!   may not approve (403), an approver key cannot act for another approver (403), one
//!   decision each (409).
//! - `Idempotency-Key`: a repeat gets the first answer and changes nothing.
//! - `/api/v1/openapi.json` equals `docs/openapi.json`, and passes openapi-spec-validator.
//! - The command line against a server: approve, reject, and promote (refused for a bad sha;
//!   a new release for a commit whose image is in ECR).
//!
//! The releases the approval test needs are brought to Prod's approval by the engine with
//! in-memory fakes over the same state file, before the binary starts. AWS is never reached
//! there (the endpoint is a closed loopback port); the command line's promote and reject run
//! against a controller on moto (`approvals_serve`'s rig). Nothing leaves 127.0.0.1.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use tollgate::domain::{Decision, RunStatus};
use tollgate::engine::Ingested;
use tollgate_testkit::world::APPROVER;

use crate::approvals_serve::{Serve, nothing_more, quick, sha};
use crate::edge_serve::Served;
use crate::engine_support::{Harness, STAGES, delivery, release, settle, status};

const PUBLIC_URL_LINE: &str = r#"public_url = "https://tollgate.test""#;

/// The engine tests' pipeline with `api` as the body of `[controller.api]`.
pub(crate) fn stages(api: &str) -> String {
    let with_api = format!("{PUBLIC_URL_LINE}\n\n[controller.api]\n{api}\n");
    STAGES.replace(PUBLIC_URL_LINE, &with_api)
}

/// Runs `tollgate keys …` on `state`: (exit code, stdout, stderr).
fn keys(served_state: &str, config: &PathBuf, args: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tollgate"));
    cmd.arg("keys")
        .args(args)
        .env("TOLLGATE_STATE", served_state);
    if args.first() == Some(&"create") {
        cmd.arg("--config").arg(config);
    }
    outcome(cmd)
}

/// Runs `cmd`: (exit code, stdout, stderr).
pub(crate) fn outcome(mut cmd: Command) -> (i32, String, String) {
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A key made with `tollgate keys create`.
pub(crate) fn key(served: &Served, name: &str, role: &str, extra: &[&str]) -> String {
    let config = served.dir.path().join("stages.toml");
    let mut args = vec!["create", "--name", name, "--role", role];
    args.extend_from_slice(extra);
    let (code, out, err) = keys(&served.state(), &config, &args);
    assert_eq!(code, 0, "keys create {name}: {err}");
    out.trim().to_owned()
}

pub(crate) struct Call {
    pub(crate) status: StatusCode,
    headers: reqwest::header::HeaderMap,
    pub(crate) body: Value,
}

impl Call {
    fn header(&self, name: &str) -> Option<u64> {
        self.headers.get(name)?.to_str().ok()?.parse().ok()
    }

    /// The answer's `X-Request-Id`.
    fn request_id(&self) -> String {
        let id = self.headers.get("x-request-id").expect("X-Request-Id");
        id.to_str().unwrap().to_owned()
    }

    fn problem_type(&self) -> &str {
        self.body["type"].as_str().unwrap_or_default()
    }

    /// Asserts the answer is the problem `slug` with `status`.
    pub(crate) fn is_problem(&self, status: u16, slug: &str) {
        let expected = (status, format!("urn:tollgate:problem:{slug}"));
        let got = (self.status.as_u16(), self.problem_type().to_owned());
        assert_eq!(got, expected, "{}", self.body);
    }
}

pub(crate) async fn call(
    served: &Served,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<Value>,
    idempotency: Option<&str>,
) -> Call {
    let http = reqwest::Client::new();
    let url = served.url(path);
    let mut req = match method {
        "GET" => http.get(url),
        _ => http.post(url),
    };
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    if let Some(i) = idempotency {
        req = req.header("idempotency-key", i);
    }
    let r = req.send().await.unwrap();
    let (status, headers) = (r.status(), r.headers().clone());
    let text = r.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    if !status.is_success() {
        let kind = headers.get("content-type").and_then(|v| v.to_str().ok());
        assert_eq!(
            kind,
            Some("application/problem+json"),
            "{method} {path}: {body}"
        );
    }
    Call {
        status,
        headers,
        body,
    }
}

/// Generous limits: the matrix must never meet them.
pub(crate) const ROOMY: &str = "per_key_burst = 10000\nper_key_per_minute = 100000\nper_address_burst = 10000\nper_address_per_minute = 100000";

#[tokio::test]
async fn api_serve_keys_are_printed_once_stored_hashed_and_revoked_at_once() {
    let served = Served::launch(tempfile::tempdir().unwrap(), &stages(ROOMY));
    let config = served.dir.path().join("stages.toml");
    let viewer = key(&served, "dash", "viewer", &["--expires", "90d"]);
    assert!(
        viewer.starts_with("tg_") && !viewer.contains('\n'),
        "{viewer}"
    );
    let (code, list, _) = keys(&served.state(), &config, &["list"]);
    assert_eq!(code, 0);
    assert!(list.contains("dash") && list.contains("viewer") && list.contains("active until"));
    assert!(!list.contains(&viewer), "the key is never listed");
    let hashed = served
        .count("SELECT COUNT(*) FROM api_keys WHERE key_hash NOT LIKE 'tg_%' AND length(key_hash) = 64")
        .await;
    assert_eq!(hashed, 1);
    // Bad requests change nothing.
    for bad in [
        vec!["create", "--name", "dash", "--role", "viewer"],
        vec!["create", "--name", "x", "--role", "root"],
        vec!["create", "--name", "x", "--role", "approver"],
        vec![
            "create",
            "--name",
            "x",
            "--role",
            "approver",
            "--approver",
            "mallory",
        ],
        vec![
            "create",
            "--name",
            "x",
            "--role",
            "viewer",
            "--expires",
            "soon",
        ],
    ] {
        let (code, out, err) = keys(&served.state(), &config, &bad);
        assert_eq!(code, 1, "{bad:?}: {out}{err}");
        assert!(
            out.is_empty() && err.starts_with("error:"),
            "{bad:?}: {err}"
        );
    }
    assert_eq!(served.count("SELECT COUNT(*) FROM api_keys").await, 1);
    let ok = call(
        &served,
        "GET",
        "/api/v1/pipelines",
        Some(&viewer),
        None,
        None,
    )
    .await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.body[0]["name"], "backend");
    assert_eq!(ok.body[0]["stages"][2]["name"], "prod");
    let (code, out, _) = keys(&served.state(), &config, &["revoke", "dash"]);
    assert_eq!((code, out.trim()), (0, "key `dash` revoked"));
    let gone = call(
        &served,
        "GET",
        "/api/v1/pipelines",
        Some(&viewer),
        None,
        None,
    )
    .await;
    assert_eq!(gone.status, 401);
    assert!(
        gone.body["detail"].as_str().unwrap().contains("revoked"),
        "{}",
        gone.body
    );
    let (code, _, err) = keys(&served.state(), &config, &["revoke", "nobody"]);
    assert_eq!(code, 1, "{err}");
}

/// Every route of the API: (method, path, body).
fn routes() -> Vec<(
    &'static str,
    &'static str,
    Option<Value>,
    Option<&'static str>,
)> {
    // (method, path, body, the act it is, or None for a read)
    vec![
        ("GET", "/api/v1/pipelines", None, None),
        ("GET", "/api/v1/pipelines/backend", None, None),
        (
            "GET",
            "/api/v1/releases?pipeline=backend&limit=5",
            None,
            None,
        ),
        ("GET", "/api/v1/releases/r999", None, None),
        ("GET", "/api/v1/events?pipeline=backend", None, None),
        ("GET", "/api/v1/config", None, None),
        (
            "GET",
            "/api/v1/pipelines/backend/history?limit=5",
            None,
            None,
        ),
        ("GET", "/metrics", None, None),
        (
            "POST",
            "/api/v1/pipelines/backend/releases/r999/stages/prod/approve",
            Some(json!({})),
            Some("approve"),
        ),
        (
            "POST",
            "/api/v1/pipelines/backend/releases/r999/stages/prod/reject",
            Some(json!({})),
            Some("reject"),
        ),
        (
            "POST",
            "/api/v1/pipelines/backend/pause",
            Some(json!({"stage": "beta", "reason": "matrix"})),
            Some("pause"),
        ),
        (
            "POST",
            "/api/v1/pipelines/backend/resume",
            Some(json!({"stage": "beta", "reason": "matrix"})),
            Some("resume"),
        ),
        (
            "POST",
            "/api/v1/pipelines/backend/stages/beta/rollback",
            None,
            Some("rollback"),
        ),
        (
            "POST",
            "/api/v1/pipelines/backend/releases/r999/retry",
            None,
            Some("retry"),
        ),
        (
            "POST",
            "/api/v1/pipelines/backend/releases/r999/override",
            Some(json!({"which": "alarms", "reason": "matrix"})),
            Some("override"),
        ),
        (
            "POST",
            "/api/v1/pipelines/backend/promote",
            Some(json!({"sha": "not-a-sha"})),
            Some("promote"),
        ),
    ]
}

/// The route template (as the OpenAPI document names it) that `method path` (its query left
/// off) is a request to: the one whose segments match, `{…}` matching any.
fn template_of<'t>(method: &str, path: &str, templates: &'t BTreeSet<(String, String)>) -> &'t str {
    let path = path.split('?').next().unwrap();
    let segments: Vec<&str> = path.split('/').collect();
    let fits = |t: &str| {
        let ts: Vec<&str> = t.split('/').collect();
        ts.len() == segments.len()
            && ts
                .iter()
                .zip(&segments)
                .all(|(t, s)| t == s || (t.starts_with('{') && t.ends_with('}')))
    };
    let found: Vec<&str> = templates
        .iter()
        .filter(|(m, t)| m == method && fits(t))
        .map(|(_, t)| t.as_str())
        .collect();
    assert_eq!(found.len(), 1, "{method} {path}: {found:?}");
    found[0]
}

/// The (method, path template) of every operation in the served OpenAPI document.
async fn documented_routes(served: &Served) -> BTreeSet<(String, String)> {
    let doc = reqwest::get(served.url("/api/v1/openapi.json"))
        .await
        .unwrap();
    assert_eq!(doc.status(), 200, "the document needs no key");
    let doc: Value = doc.json().await.unwrap();
    let mut routes = BTreeSet::new();
    for (path, operations) in doc["paths"].as_object().unwrap() {
        for method in operations.as_object().unwrap().keys() {
            routes.insert((method.to_ascii_uppercase(), path.clone()));
        }
    }
    routes
}

/// Which acts each role may do.
fn may(role: &str, act: &str) -> bool {
    match act {
        "approve" | "reject" => role == "approver",
        "override" => role == "admin",
        _ => matches!(role, "operator" | "admin"),
    }
}

#[tokio::test]
async fn api_serve_every_route_answers_401_and_403_by_key_and_role() {
    let served = Served::launch(tempfile::tempdir().unwrap(), &stages(ROOMY));
    let roles = [
        ("viewer", key(&served, "v", "viewer", &[])),
        ("operator", key(&served, "o", "operator", &[])),
        (
            "approver",
            key(&served, "a", "approver", &["--approver", "bob"]),
        ),
        ("admin", key(&served, "ad", "admin", &[])),
    ];
    let revoked = key(&served, "old", "admin", &[]);
    let config = served.dir.path().join("stages.toml");
    assert_eq!(keys(&served.state(), &config, &["revoke", "old"]).0, 0);
    let expired = key(&served, "short", "admin", &["--expires", "1s"]);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let unknown = format!("tg_{}", "A".repeat(43));
    // The matrix covers every route of the API (the OpenAPI document lists them all but
    // itself, which anyone may read), each once.
    let documented = documented_routes(&served).await;
    let covered: BTreeSet<(String, String)> = routes()
        .iter()
        .map(|(m, p, _, _)| (m.to_string(), template_of(m, p, &documented).to_owned()))
        .collect();
    assert_eq!(covered, documented, "the matrix's routes are the API's");
    assert_eq!(covered.len(), routes().len(), "each route once");
    let mut forbidden = 0;
    for (method, path, body, act) in routes() {
        for (presented, why) in [
            (None, "missing"),
            (Some(unknown.as_str()), "unknown"),
            (Some(revoked.as_str()), "revoked"),
            (Some(expired.as_str()), "expired"),
            (Some("Basic dXNlcjpwYXNz"), "unknown"),
        ] {
            let c = call(&served, method, path, presented, body.clone(), None).await;
            assert_eq!(c.status, 401, "{method} {path} with a {why} key");
            assert_eq!(c.problem_type(), "urn:tollgate:problem:unauthorized");
            let challenge = c.headers.get("www-authenticate").unwrap().to_str().unwrap();
            assert!(challenge.starts_with("Bearer"), "{challenge}");
            assert!(
                c.header("x-ratelimit-remaining").is_some(),
                "{method} {path}"
            );
        }
        for (role, k) in &roles {
            let c = call(&served, method, path, Some(k), body.clone(), None).await;
            let allowed = act.is_none_or(|a| may(role, a));
            assert!(
                c.header("x-ratelimit-limit").is_some() && c.headers.contains_key("x-request-id")
            );
            if allowed {
                assert!(
                    ![401, 403, 429].contains(&c.status.as_u16()),
                    "{role} {method} {path}: {} {}",
                    c.status,
                    c.body
                );
            } else {
                forbidden += 1;
                assert_eq!(c.status, 403, "{role} {method} {path}: {}", c.body);
                assert_eq!(c.problem_type(), "urn:tollgate:problem:forbidden");
            }
        }
    }
    let logged = served
        .count("SELECT COUNT(*) FROM events WHERE kind = 'api-forbidden'")
        .await;
    assert_eq!(logged, forbidden, "every 403 is in the event log");
    let audited = served
        .count("SELECT COUNT(*) FROM events WHERE kind = 'api-call' AND actor = 'api-key:o' AND detail LIKE '%key o (operator) from 127.0.0.1, request %'")
        .await;
    assert_eq!(audited, 8, "each of the operator's 8 acts is audited");
    // An unknown pipeline is a 404 before the role is looked at.
    let c = call(
        &served,
        "POST",
        "/api/v1/pipelines/nope/pause",
        Some(&roles[0].1),
        Some(json!({"reason": "x"})),
        None,
    )
    .await;
    c.is_problem(404, "not-found");
}

/// The request id an audit event's detail names (`…, request <32 hex digits>…`).
fn request_named(detail: &str) -> &str {
    let at = detail.find(", request ").expect("a request id") + ", request ".len();
    let id = &detail[at..];
    let end = id
        .find(|c: char| !c.is_ascii_hexdigit())
        .unwrap_or(id.len());
    &id[..end]
}

/// The events of `kind` in backend's log, read through the API.
async fn events_of(served: &Served, key: &str, kind: &str) -> Vec<Value> {
    let path = format!("/api/v1/events?pipeline=backend&kind={kind}");
    let page = call(served, "GET", &path, Some(key), None, None).await;
    assert_eq!(page.status, 200, "{}", page.body);
    page.body["events"].as_array().unwrap().clone()
}

#[tokio::test]
async fn api_serve_the_request_id_answered_is_the_one_in_the_log_and_the_audit_events() {
    let served = Served::launch(tempfile::tempdir().unwrap(), &stages(ROOMY));
    let op = key(&served, "o", "operator", &[]);
    let viewer = key(&served, "v", "viewer", &[]);
    let pause = json!({"stage": "beta", "reason": "request ids"});
    let path = "/api/v1/pipelines/backend/pause";

    let done = call(&served, "POST", path, Some(&op), Some(pause.clone()), None).await;
    assert_eq!(done.status, 200, "{}", done.body);
    let done_id = done.request_id();
    assert_eq!(done_id.len(), 32, "{done_id}");
    let calls = events_of(&served, &viewer, "api-call").await;
    assert_eq!(calls.len(), 1, "{calls:?}");
    let detail = calls[0]["detail"].as_str().unwrap();
    assert_eq!(request_named(detail), done_id, "{detail}");

    let refused = call(&served, "POST", path, Some(&viewer), Some(pause), None).await;
    refused.is_problem(403, "forbidden");
    let refused_id = refused.request_id();
    assert_ne!(refused_id, done_id, "one id per request");
    let forbidden = events_of(&served, &viewer, "api-forbidden").await;
    assert_eq!(forbidden.len(), 1, "{forbidden:?}");
    let detail = forbidden[0]["detail"].as_str().unwrap();
    assert_eq!(request_named(detail), refused_id, "{detail}");
    let calls = events_of(&served, &viewer, "api-call").await;
    assert_eq!(calls.len(), 2, "{calls:?}");
    let detail = calls[1]["detail"].as_str().unwrap();
    assert!(detail.contains(" 403 "), "{detail}");
    assert_eq!(request_named(detail), refused_id, "{detail}");

    // The log lines of both requests carry the same ids (the `request` span).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = served.log();
        if log.contains(&done_id) && log.contains(&refused_id) {
            break;
        }
        assert!(Instant::now() < deadline, "ids not in the log:\n{log}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn api_serve_rate_limit_headers_count_down_refuse_and_reset() {
    // One token per 5 s: nothing refills between the requests of one step.
    let limits = "per_key_burst = 3\nper_key_per_minute = 12\nper_address_burst = 6\nper_address_per_minute = 12";
    let served = Served::launch(tempfile::tempdir().unwrap(), &stages(limits));
    let k = key(&served, "v", "viewer", &[]);
    let path = "/api/v1/pipelines";
    let mut left = Vec::new();
    for _ in 0..3 {
        let c = call(&served, "GET", path, Some(&k), None, None).await;
        assert_eq!(c.status, 200);
        assert_eq!(
            c.header("x-ratelimit-limit"),
            Some(3),
            "the key's bucket is the tighter"
        );
        left.push(c.header("x-ratelimit-remaining").unwrap());
    }
    assert_eq!(left, vec![2, 1, 0]);
    let refused = call(&served, "GET", path, Some(&k), None, None).await;
    assert_eq!(refused.status, 429);
    assert_eq!(refused.problem_type(), "urn:tollgate:problem:rate-limited");
    let retry = refused.header("retry-after").unwrap();
    assert!((1..=5).contains(&retry), "Retry-After {retry}");
    assert_eq!(refused.header("x-ratelimit-remaining"), Some(0));
    let reset = refused.header("x-ratelimit-reset").unwrap();
    assert!((11..=15).contains(&reset), "Reset {reset}");
    // The address's own bucket: 4 of 6 spent; without a key, 401s count it down, then 429.
    let a = call(&served, "GET", path, None, None, None).await;
    let b = call(&served, "GET", path, None, None, None).await;
    assert_eq!((a.status.as_u16(), b.status.as_u16()), (401, 401));
    assert_eq!(a.header("x-ratelimit-limit"), Some(6));
    assert_eq!(
        (
            a.header("x-ratelimit-remaining"),
            b.header("x-ratelimit-remaining")
        ),
        (Some(1), Some(0))
    );
    let c = call(&served, "GET", path, None, None, None).await;
    assert_eq!(
        c.status, 429,
        "the address is refused before its key is read"
    );
    assert!(c.header("retry-after").is_some());
    // After the key's reset the key's bucket is full again (the address's refills too).
    let wait = reset.max(c.header("x-ratelimit-reset").unwrap().min(30));
    tokio::time::sleep(Duration::from_secs(wait + 1)).await;
    let again = call(&served, "GET", path, Some(&k), None, None).await;
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.header("x-ratelimit-remaining"), Some(2));
}

#[tokio::test]
async fn api_serve_idempotent_posts_answer_once_and_change_nothing_on_repeat() {
    let served = Served::launch(tempfile::tempdir().unwrap(), &stages(ROOMY));
    let op = key(&served, "o", "operator", &[]);
    let pause = json!({"reason": "change freeze"});
    let path = "/api/v1/pipelines/backend/pause";
    let first = call(
        &served,
        "POST",
        path,
        Some(&op),
        Some(pause.clone()),
        Some("k-1"),
    )
    .await;
    assert_eq!(first.status, 200, "{}", first.body);
    let events = served.count("SELECT COUNT(*) FROM events").await;
    let resume = json!({"reason": "freeze over"});
    let r = call(
        &served,
        "POST",
        "/api/v1/pipelines/backend/resume",
        Some(&op),
        Some(resume),
        Some("k-2"),
    )
    .await;
    assert_eq!(r.status, 200);
    let after_resume = served.count("SELECT COUNT(*) FROM events").await;
    let again = call(
        &served,
        "POST",
        path,
        Some(&op),
        Some(pause.clone()),
        Some("k-1"),
    )
    .await;
    assert_eq!((again.status, &again.body), (first.status, &first.body));
    assert_eq!(again.headers.get("idempotent-replayed").unwrap(), "true");
    assert_eq!(
        served.count("SELECT COUNT(*) FROM events").await,
        after_resume,
        "the repeat wrote nothing"
    );
    assert!(after_resume > events);
    let p = call(
        &served,
        "GET",
        "/api/v1/pipelines/backend",
        Some(&op),
        None,
        None,
    )
    .await;
    assert_eq!(
        p.body["paused"],
        Value::Null,
        "the repeat did not pause again"
    );
    let other = call(
        &served,
        "POST",
        path,
        Some(&op),
        Some(json!({"reason": "other"})),
        Some("k-1"),
    )
    .await;
    other.is_problem(422, "idempotency-key-reused");
    // Without the header every POST runs.
    let p1 = call(&served, "POST", path, Some(&op), Some(pause.clone()), None).await;
    assert_eq!(p1.status, 200);
    let p = call(
        &served,
        "GET",
        "/api/v1/pipelines/backend",
        Some(&op),
        None,
        None,
    )
    .await;
    assert_eq!(p.body["paused"], "change freeze");
}

/// Release 1 (by carol) reaches Prod's approval, then release 2 (by alice) supersedes it
/// there; both on the engine with fakes, over `dir`'s state file at the real time.
pub(crate) async fn two_releases_at_prod_approval() -> tempfile::TempDir {
    let h = Harness::sqlite_at(chrono::Utc::now());
    let engine = h.engine(None).await;
    let mut by_alice = release(2);
    by_alice.author_name = "Alice".into();
    by_alice.author_email = "alice@example.com".into();
    by_alice.author_login = Some("alice".into());
    let mut ids = Vec::new();
    for (n, r) in [(1, release(1)), (2, by_alice)] {
        let Ingested::Recorded(id) = engine
            .record_release(&r, &delivery(&format!("push-{n}")))
            .await
            .unwrap()
        else {
            panic!("release {n} not recorded");
        };
        settle(&engine).await.unwrap();
        ids.push(id);
    }
    assert_eq!(status(&engine, ids[0], "prod").await, RunStatus::Superseded);
    assert_eq!(
        status(&engine, ids[1], "prod").await,
        RunStatus::AwaitingApproval
    );
    drop(engine);
    h.dir
}

#[tokio::test]
async fn api_serve_approval_obeys_the_links_rules() {
    let dir = two_releases_at_prod_approval().await;
    let served = Served::launch(dir, &stages(ROOMY));
    let bob = key(&served, "bob-key", "approver", &["--approver", "bob"]);
    let alice = key(
        &served,
        "alice-key",
        "approver",
        &["--approver", "alice@example.com"],
    );
    let at =
        |r: &str, what: &str| format!("/api/v1/pipelines/backend/releases/{r}/stages/prod/{what}");
    let p = call(
        &served,
        "GET",
        "/api/v1/pipelines/backend",
        Some(&bob),
        None,
        None,
    )
    .await;
    let prod = &p.body["stages"][2]["current"];
    assert_eq!(prod["release"]["id"], "r2", "{}", p.body);
    assert_eq!(
        p.body["stages"][0]["known_good"]["id"], "r2",
        "beta trusts r2"
    );
    assert_eq!(
        p.body["stages"][2]["known_good"],
        Value::Null,
        "prod trusts nothing yet"
    );
    let all = call(&served, "GET", "/api/v1/pipelines", Some(&bob), None, None).await;
    assert_eq!(
        all.body[0], p.body,
        "the list and the single pipeline agree"
    );
    assert_eq!(prod["run"]["status"], "awaiting_approval");
    assert_eq!(prod["run"]["wait"]["kind"], "awaiting_approval");
    assert_eq!(prod["run"]["deadline"], prod["run"]["wait"]["expires_at"]);

    let stale = call(
        &served,
        "POST",
        &at("r1", "approve"),
        Some(&bob),
        None,
        None,
    )
    .await;
    stale.is_problem(409, "superseded");
    let own = call(
        &served,
        "POST",
        &at("r2", "approve"),
        Some(&alice),
        None,
        None,
    )
    .await;
    own.is_problem(403, "own-change");
    let proxy = call(
        &served,
        "POST",
        &at("r2", "approve"),
        Some(&bob),
        Some(json!({"approver": "alice"})),
        None,
    )
    .await;
    proxy.is_problem(403, "forbidden");
    assert_eq!(
        served.count("SELECT COUNT(*) FROM approvals").await,
        0,
        "nothing recorded yet"
    );

    let ok = call(
        &served,
        "POST",
        &at("r2", "approve"),
        Some(&bob),
        Some(json!({"comment": "looks good"})),
        Some("i-1"),
    )
    .await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(ok.body["release"], "r2");
    let replay = call(
        &served,
        "POST",
        &at("r2", "approve"),
        Some(&bob),
        Some(json!({"comment": "looks good"})),
        Some("i-1"),
    )
    .await;
    assert_eq!((replay.status, &replay.body), (ok.status, &ok.body));
    // One decision each: bob's second is refused, as already decided, or, once the
    // controller moved on to deploy, as no longer pending. Nothing more is recorded.
    let twice = call(&served, "POST", &at("r2", "reject"), Some(&bob), None, None).await;
    assert_eq!(twice.status, 409, "{}", twice.body);
    assert!(
        [
            "urn:tollgate:problem:already-decided",
            "urn:tollgate:problem:approval-closed"
        ]
        .contains(&twice.problem_type()),
        "{}",
        twice.body
    );
    assert_eq!(served.count("SELECT COUNT(*) FROM approvals").await, 1);
    let recorded = served
        .count("SELECT COUNT(*) FROM approvals WHERE approver = 'bob' AND decision = 'approve' AND actor = 'api-key:bob-key'")
        .await;
    assert_eq!(recorded, 1, "{}", served.log());
    let audit = served
        .count("SELECT COUNT(*) FROM events WHERE kind = 'api-call' AND detail LIKE 'approve by key bob-key (approver)%200 bob approved r2 in prod (comment: looks good)'")
        .await;
    assert_eq!(audit, 1);
    assert_eq!(
        served
            .count("SELECT COUNT(*) FROM events WHERE kind = 'api-forbidden'")
            .await,
        1
    );
    let detail = call(
        &served,
        "GET",
        "/api/v1/releases/r2",
        Some(&bob),
        None,
        None,
    )
    .await;
    let prod = detail.body["runs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["stage"] == "prod")
        .unwrap()
        .clone();
    assert_eq!(prod["decisions"][0]["approver"], "bob", "{}", detail.body);
    assert_eq!(prod["decisions"][0]["decision"], Decision::Approve.as_str());
    let list = call(
        &served,
        "GET",
        "/api/v1/releases?pipeline=backend&status=superseded",
        Some(&bob),
        None,
        None,
    )
    .await;
    let ids: Vec<&str> = list.body["releases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["r1"], "{}", list.body);
    let page = call(
        &served,
        "GET",
        "/api/v1/releases?limit=1",
        Some(&bob),
        None,
        None,
    )
    .await;
    assert_eq!(page.body["releases"][0]["id"], "r2");
    let cursor = page.body["next_cursor"].as_str().unwrap().to_owned();
    let next = call(
        &served,
        "GET",
        &format!("/api/v1/releases?limit=1&cursor={cursor}"),
        Some(&bob),
        None,
        None,
    )
    .await;
    assert_eq!(next.body["releases"][0]["id"], "r1");
}

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[tokio::test]
async fn api_serve_the_served_openapi_document_is_the_committed_one_and_valid() {
    let served = Served::launch(tempfile::tempdir().unwrap(), &stages(ROOMY));
    let served_doc = reqwest::get(served.url("/api/v1/openapi.json"))
        .await
        .unwrap();
    assert_eq!(served_doc.status(), 200);
    assert!(served_doc.headers().contains_key("x-ratelimit-remaining"));
    let served_doc = served_doc.text().await.unwrap();
    let committed = std::fs::read_to_string(workspace_root().join("docs/openapi.json")).unwrap();
    assert!(
        served_doc == committed,
        "docs/openapi.json is out of date: run `tollgate openapi > docs/openapi.json`"
    );
    let doc: Value = serde_json::from_str(&served_doc).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let validator = std::env::var_os("TOLLGATE_OPENAPI_VALIDATOR")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".venv/bin/openapi-spec-validator"));
    assert!(
        validator.is_file(),
        "openapi-spec-validator not at {} (scripts/test installs it)",
        validator.display()
    );
    let out = Command::new(&validator)
        .arg(workspace_root().join("docs/openapi.json"))
        .output()
        .unwrap();
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("OK"), "{said}");
}

/// `tollgate <args> --server URL` with `TOLLGATE_API_KEY` (and no `TOLLGATE_SERVER`).
fn at_server(url: &str, key: &str, args: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tollgate"));
    cmd.args(args)
        .args(["--server", url])
        .env_remove("TOLLGATE_SERVER")
        .env("TOLLGATE_API_KEY", key);
    outcome(cmd)
}

/// A key made with `tollgate keys create` on the configuration and state of `s`.
pub(crate) fn key_on(s: &Serve, name: &str, role: &str, extra: &[&str]) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tollgate"));
    cmd.args(["keys", "create", "--name", name, "--role", role])
        .args(extra)
        .arg("--config")
        .arg(s.world.stages_path())
        .args(["--state", &s.state]);
    let (code, out, err) = outcome(cmd);
    assert_eq!(code, 0, "keys create {name}: {err}");
    out.trim().to_owned()
}

/// `GET url path` with `key`: the JSON answer (a 200).
async fn read_at(s: &Serve, key: &str, path: &str) -> Value {
    let r = s
        .http
        .get(format!("{}{path}", s.url))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "GET {path}");
    r.json().await.unwrap()
}

/// `tollgate approve|reject|promote` with `TOLLGATE_SERVER` and `TOLLGATE_API_KEY`.
pub(crate) fn remote(served: &Served, key: Option<&str>, args: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tollgate"));
    cmd.args(args)
        .env("TOLLGATE_SERVER", served.url(""))
        .env_remove("TOLLGATE_API_KEY");
    if let Some(k) = key {
        cmd.env("TOLLGATE_API_KEY", k);
    }
    outcome(cmd)
}

#[tokio::test]
async fn api_serve_the_command_line_decides_and_promotes_through_the_api() {
    let dir = two_releases_at_prod_approval().await;
    let served = Served::launch(dir, &stages(ROOMY));
    let bob = key(&served, "bob-key", "approver", &["--approver", "bob"]);
    let ops = key(&served, "ops", "operator", &[]);
    let (code, _, err) = remote(
        &served,
        None,
        &["approve", "backend", "r2", "--stage", "prod"],
    );
    assert_eq!(code, 2, "no key: {err}");
    assert!(err.contains("TOLLGATE_API_KEY"), "{err}");
    let (code, _, err) = remote(
        &served,
        Some(&bob),
        &["approve", "backend", "r1", "--stage", "prod"],
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.starts_with("error: Superseded by a newer release: "),
        "{err}"
    );
    let (code, _, err) = remote(
        &served,
        Some(&ops),
        &["approve", "backend", "r2", "--stage", "prod"],
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("Not allowed for this key"), "{err}");
    let args = [
        "approve",
        "backend",
        "r2",
        "--stage",
        "prod",
        "--comment",
        "ship it",
    ];
    let (code, out, err) = remote(&served, Some(&bob), &args);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "bob approved r2 in prod (comment: ship it)");
    assert_eq!(
        served
            .count("SELECT COUNT(*) FROM approvals WHERE approver = 'bob'")
            .await,
        1
    );
    let (code, _, err) = remote(&served, Some(&ops), &["promote", "backend", "--sha", "abc"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("a full 40-character commit sha"), "{err}");
    let releases = served.count("SELECT COUNT(*) FROM releases").await;
    assert_eq!(releases, 2, "a refused promote records nothing");
    drop(served);

    // On a controller whose AWS is moto: a commit whose image is in ECR is promoted from the
    // command line, and an approver rejects it at Prod from the command line.
    let s = Serve::start_with(quick(), nothing_more, |_| Vec::new()).await;
    let pipeline = s.world.pipeline().to_owned();
    let ops = key_on(&s, "ops", "operator", &[]);
    let approver = key_on(&s, "approver-key", "approver", &["--approver", APPROVER]);
    let listed = format!("/api/v1/releases?pipeline={pipeline}");
    let before = read_at(&s, &ops, &listed).await;
    assert_eq!(before["releases"], json!([]), "{before}");
    let built = sha(21);
    s.world.push_image(&built).await.expect("image pushed");
    let (code, out, err) = at_server(&s.url, &ops, &["promote", &pipeline, "--sha", &built]);
    assert_eq!(code, 0, "{err}\n{}", s.log());
    let id = out.split_whitespace().next().unwrap_or_default().to_owned();
    assert_eq!(
        out.trim(),
        format!("{id} of {pipeline} recorded for {built}; the controller promotes it")
    );
    let after = read_at(&s, &ops, &listed).await;
    let new = after["releases"].as_array().unwrap();
    assert_eq!(new.len(), 1, "{after}");
    assert_eq!((&new[0]["id"], &new[0]["sha"]), (&json!(id), &json!(built)));

    s.wait(&built, "prod", "approval request", |r| {
        r.status == RunStatus::AwaitingApproval
    })
    .await;
    let args = [
        "reject",
        &pipeline,
        &id,
        "--stage",
        "prod",
        "--comment",
        "not today",
    ];
    let (code, out, err) = at_server(&s.url, &approver, &args);
    assert_eq!(code, 0, "{err}\n{}", s.log());
    assert_eq!(
        out.trim(),
        format!("{APPROVER} rejected {id} in prod (comment: not today)")
    );
    let (_, prod) = s
        .wait(&built, "prod", "rejection", |r| {
            r.status == RunStatus::Rejected
        })
        .await;
    assert_eq!(prod.status, RunStatus::Rejected);
    let detail = read_at(&s, &ops, &format!("/api/v1/releases/{id}")).await;
    let runs = detail["runs"].as_array().unwrap();
    let prod = runs.iter().find(|r| r["stage"] == "prod").unwrap();
    assert_eq!(prod["status"], "rejected", "{detail}");
    assert_eq!(prod["decisions"][0]["approver"], APPROVER, "{detail}");
    assert_eq!(prod["decisions"][0]["decision"], "reject", "{detail}");
    let (code, out, err) = at_server(&s.url, &approver, &args);
    assert_eq!(code, 1, "one decision each: {out}");
    assert!(err.starts_with("error: "), "{err}");
}

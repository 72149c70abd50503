//! Approval by email links, end to end over the real engine and store: the
//! [`SnsApprovalSender`] publishes one personal link per approver (through the in-memory
//! notifier), the approval pages are driven through the router, and the reconciler decides
//! what happens next.
//!
//! Covers: a simulated mail scanner (HEAD, repeated GETs, prefetch GETs) changes nothing; a
//! POST approves once and the run proceeds; a second POST says already used; a wrong anti-CSRF
//! value, an expired link, a superseded link (naming the newer release), self-approval, 2 of 3,
//! one rejection, a shared link, repeated sends, windows, the library API, and that tokens never
//! reach the logs or the store.

use crate::engine_support;

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Method, Request, StatusCode, header};
use engine_support::{ACCOUNTS, delivery, release, settle, start_time, status};
use http_body_util::BodyExt;
use sqlx::Row;
use tollgate::config::{self, Config};
use tollgate::domain::{Decision, Reason, ReleaseId, RequestState, RunStatus};
use tollgate::engine::Ingested;
use tollgate::engine::ports::{ApprovalRequest, ApprovalSender, Message, Notifier, SendOutcome};
use tollgate::engine::{Engine, ManualClock, Ports};
use tollgate::gates::approval::{Outcome, Refusal, SnsApprovalSender, decide};
use tollgate::store::Store;
use tollgate::store::approvals::NewToken;
use tollgate_testkit::fakes::Fakes;
use tower::ServiceExt;

const PUBLIC_URL: &str = "https://tollgate.test";
const APPROVAL_TOPIC: &str = "arn:aws:sns:eu-west-1:111111111111:approvals";
const BROWSER: &str = "Mozilla/5.0 (approver's browser)";

/// Beta (with a `before` test) then Prod with an approval by alice, bob or carol, who is also
/// the author of every test release (GitHub login `carol`, carol@example.com).
fn stages(min_approvals: u32, allow_author: bool, prod_extra: &str) -> String {
    format!(
        r#"
[controller]
public_url = "{PUBLIC_URL}"

[[pipelines]]
name = "backend"
[pipelines.source]
repository = "acme/backend"
[pipelines.artifact]
repository = "backend"
account = "build"
region = "eu-west-1"
[pipelines.notifications]
topic = "arn:aws:sns:eu-west-1:111111111111:tollgate"

[pipelines.tests.unit]
kind = "command"
argv = ["true"]

[[pipelines.stages]]
name = "beta"
targets = [{{ account = "beta" }}]
before = ["unit"]
[pipelines.stages.deploy]
kind = "cloudformation"
stack = "backend-beta"
template = "service.yaml"
image_parameter = "ImageUri"

[[pipelines.stages]]
name = "prod"
targets = [{{ account = "prod" }}]
[pipelines.stages.deploy]
kind = "cloudformation"
stack = "backend-prod"
template = "service.yaml"
image_parameter = "ImageUri"
[pipelines.stages.approval]
topic = "{APPROVAL_TOPIC}"
min_approvals = {min_approvals}
allow_author = {allow_author}
timeout = "24h"
approvers = [
  {{ name = "alice", email = "alice@example.com", github = "alice" }},
  {{ name = "bob", email = "bob@example.com" }},
  {{ name = "carol", email = "carol@example.com", github = "carol" }},
]
{prod_extra}
"#
    )
}

fn load(dir: &std::path::Path, stages_toml: &str) -> Config {
    std::fs::create_dir_all(dir.join("accounts")).unwrap();
    std::fs::write(dir.join("accounts/accounts.toml"), ACCOUNTS).unwrap();
    std::fs::write(dir.join("service.yaml"), "Resources: {}\n").unwrap();
    std::fs::write(dir.join("stages.toml"), stages_toml).unwrap();
    config::load(&dir.join("stages.toml")).unwrap().config
}

struct Rig {
    _dir: tempfile::TempDir,
    fakes: Fakes,
    clock: Arc<ManualClock>,
    engine: Engine,
    /// The store the approval sender writes its tokens to (the engine keeps its own handle).
    store: Store,
    sender: Arc<SnsApprovalSender>,
    app: Router,
}

struct Answer {
    status: StatusCode,
    headers: header::HeaderMap,
    body: String,
}

impl Rig {
    async fn new(min_approvals: u32, allow_author: bool) -> Rig {
        Rig::with_config(|dir| load(dir, &stages(min_approvals, allow_author, ""))).await
    }

    async fn with_config(config: impl FnOnce(&std::path::Path) -> Config) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path());
        let url = format!("sqlite://{}", dir.path().join("state.db").display());
        let store = Store::open(&url).await.unwrap();
        let fakes = Fakes::new();
        let notifier: Arc<dyn Notifier> = Arc::new(fakes.clone());
        let clock = Arc::new(ManualClock::new(start_time()));
        let sender = Arc::new(
            SnsApprovalSender::new(store.clone(), notifier, PUBLIC_URL).with_clock(clock.clone()),
        );
        let ports = Ports {
            approvals: sender.clone(),
            ..fakes.ports()
        };
        let engine = Engine::new(store.clone(), cfg, ports, clock.clone());
        let app = tollgate::http::approvals::routes(engine.clone());
        Rig {
            _dir: dir,
            fakes,
            clock,
            engine,
            store,
            sender,
            app,
        }
    }

    /// Records release `n` and settles: it then waits for approval in prod.
    async fn awaiting(&self, n: u32) -> ReleaseId {
        self.release_with(n, release(n)).await
    }

    async fn release_with(&self, n: u32, r: tollgate::engine::NewRelease) -> ReleaseId {
        let Ingested::Recorded(id) = self
            .engine
            .record_release(&r, &delivery(&format!("push-{n}")))
            .await
            .unwrap()
        else {
            panic!("release {n} not recorded");
        };
        settle(&self.engine).await.unwrap();
        assert_eq!(
            status(&self.engine, id, "prod").await,
            RunStatus::AwaitingApproval
        );
        id
    }

    /// The approval messages published so far.
    fn messages(&self) -> Vec<Message> {
        self.fakes.with(|w| {
            w.published
                .iter()
                .filter(|m| m.topic == APPROVAL_TOPIC)
                .cloned()
                .collect()
        })
    }

    /// The token in the newest link sent to `approver` about release `id`.
    fn token(&self, approver: &str, id: ReleaseId) -> String {
        let mine: Vec<Message> = self
            .messages()
            .into_iter()
            .filter(|m| m.attributes.get("approver").map(String::as_str) == Some(approver))
            .filter(|m| m.subject.contains(&format!(" {id} ")))
            .collect();
        let last = mine
            .last()
            .unwrap_or_else(|| panic!("no link for {approver} about {id}"));
        link_token(&last.body)
    }

    async fn request(&self, req: Request<Body>) -> Answer {
        let mut req = req;
        let peer: SocketAddr = "192.0.2.7:50123".parse().unwrap();
        req.extensions_mut().insert(ConnectInfo(peer));
        let response = self.app.clone().oneshot(req).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        Answer {
            status,
            headers,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }

    async fn get(&self, token: &str) -> Answer {
        self.get_with(token, &[]).await
    }

    async fn get_with(&self, token: &str, headers: &[(&str, &str)]) -> Answer {
        let mut req = Request::get(format!("/approvals/{token}"));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        self.request(req.body(Body::empty()).unwrap()).await
    }

    async fn post(&self, token: &str, fields: &[(&str, &str)]) -> Answer {
        let body: String = fields
            .iter()
            .map(|(k, v)| format!("{k}={}", urlencoding::encode(v)))
            .collect::<Vec<_>>()
            .join("&");
        let req = Request::post(format!("/approvals/{token}"))
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::USER_AGENT, BROWSER)
            .body(Body::from(body))
            .unwrap();
        self.request(req).await
    }

    /// Opens the page, then posts its form with `decision`.
    async fn decide(&self, token: &str, decision: &str) -> Answer {
        let page = self.get(token).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        let csrf = csrf_of(&page.body);
        self.post(token, &[("csrf", &csrf), ("decision", decision)])
            .await
    }

    /// Every row of every table that a decision could touch, as text.
    /// [`Self::dump`] without the audit entries of refused clicks.
    async fn dump_decisions(&self) -> String {
        self.dump()
            .await
            .lines()
            .filter(|l| !l.contains("| approval-refused |"))
            .map(|l| format!("{l}\n"))
            .collect()
    }

    async fn dump(&self) -> String {
        let mut out = String::new();
        let tables = [
            "approvals",
            "approval_tokens",
            "deliveries",
            "events",
            "stage_runs",
            "effects",
        ];
        for table in tables {
            let rows = sqlx::query(&format!("SELECT * FROM {table} ORDER BY rowid"))
                .fetch_all(self.engine.reads().pool())
                .await
                .unwrap();
            for r in rows {
                let cells: Vec<String> = (0..r.len())
                    .map(|i| {
                        r.try_get::<Option<String>, _>(i)
                            .ok()
                            .flatten()
                            .or_else(|| {
                                r.try_get::<Option<i64>, _>(i)
                                    .ok()
                                    .flatten()
                                    .map(|v| v.to_string())
                            })
                            .unwrap_or_else(|| "NULL".into())
                    })
                    .collect();
                out.push_str(&format!("{table}: {}\n", cells.join(" | ")));
            }
        }
        out
    }

    async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sql)
            .fetch_one(self.engine.reads().pool())
            .await
            .unwrap()
    }

    async fn approval_events(&self) -> Vec<tollgate::store::EventRow> {
        let all = self.engine.reads().events("backend", 1000).await.unwrap();
        all.into_iter().filter(|e| e.kind == "approval").collect()
    }
}

/// The token of the approval link in a message body.
fn link_token(body: &str) -> String {
    let prefix = format!("{PUBLIC_URL}/approvals/");
    let at = body.find(&prefix).expect("the message has a link") + prefix.len();
    body[at..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .collect()
}

fn csrf_of(page: &str) -> String {
    let marker = "name=\"csrf\" value=\"";
    let at = page.find(marker).expect("the page has a CSRF field") + marker.len();
    page[at..].chars().take_while(|c| *c != '"').collect()
}

// ----- mail scanners and the confirmation page -----------------------------------------------

#[tokio::test]
async fn a_mail_scanner_fetching_the_link_changes_nothing() {
    let rig = Rig::new(1, false).await;
    let id = rig.awaiting(1).await;
    let token = rig.token("alice", id);
    let before = rig.dump().await;

    let head = rig
        .request(
            Request::builder()
                .method(Method::HEAD)
                .uri(format!("/approvals/{token}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(head.status, StatusCode::OK);
    assert!(head.body.is_empty(), "HEAD has no body");
    for _ in 0..3 {
        let page = rig.get(&token).await;
        assert_eq!(page.status, StatusCode::OK);
        assert!(page.body.contains("Approve backend r1 for prod?"));
    }
    for prefetch in [("Purpose", "prefetch"), ("Sec-Purpose", "prefetch")] {
        let page = rig.get_with(&token, &[prefetch]).await;
        assert_eq!(page.status, StatusCode::OK);
    }

    assert_eq!(
        rig.dump().await,
        before,
        "reading the link changed the store"
    );
    settle(&rig.engine).await.unwrap();
    assert_eq!(
        status(&rig.engine, id, "prod").await,
        RunStatus::AwaitingApproval
    );
    assert!(rig.approval_events().await.is_empty());
    // The link still works for the person.
    let answer = rig.decide(&token, "approve").await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
}

#[tokio::test]
async fn the_confirmation_page_shows_the_release_escaped_with_the_token_only_in_the_form_action() {
    let rig = Rig::new(1, false).await;
    let mut r = release(1);
    r.message = "Fix <script>alert('x')</script> & \"quotes\"\n\nLonger body.".into();
    let id = rig.release_with(1, r).await;
    let token = rig.token("alice", id);
    let page = rig.get(&token).await;
    assert_eq!(page.status, StatusCode::OK);
    let body = &page.body;
    for shown in [
        "backend",
        "prod",
        "r1",
        &engine_support::sha(1),
        "Carol &lt;carol@example.com&gt; (@carol)",
        "https://github.com/acme/backend/commit/",
        "sha256:",
        "beta: succeeded",
        "0 of 1 needed",
        "alice (this link is yours alone)",
        "Fix &lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;quotes&quot;",
        "value=\"approve\"",
        "value=\"reject\"",
        "name=\"csrf\"",
    ] {
        assert!(body.contains(shown), "page lacks {shown:?}:\n{body}");
    }
    assert!(!body.contains("<script>"));
    assert_eq!(body.matches(&token).count(), 1, "token once");
    // Relative to the page's URL: with `public_url = "https://host/tollgate"` the page is
    // `https://host/tollgate/approvals/<token>` and the form posts back there.
    assert!(body.contains(&format!("action=\"{token}\"")));
    let h = |name: &str| {
        page.headers
            .get(name)
            .unwrap()
            .to_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(h("referrer-policy"), "no-referrer");
    assert_eq!(h("cache-control"), "no-store");
    assert!(h("content-security-policy").contains("default-src 'none'"));
    assert!(h("content-type").starts_with("text/html"));

    // The email: facts for a person and the link.
    let msg = rig
        .messages()
        .into_iter()
        .find(|m| m.attributes.get("approver").map(String::as_str) == Some("alice"))
        .unwrap();
    for fact in [
        "Release r1 of pipeline backend is ready for stage prod",
        &format!("{PUBLIC_URL}/approvals/{token}"),
        "personal to alice",
        "expires at 2026-11-24 10:00 UTC",
        "Image:",
        "Progress so far:",
        "beta: succeeded",
        "https://github.com/acme/backend/commit/",
    ] {
        assert!(
            msg.body.contains(fact),
            "email lacks {fact:?}:\n{}",
            msg.body
        );
    }
}

#[tokio::test]
async fn unknown_and_malformed_links_are_not_found() {
    let rig = Rig::new(1, false).await;
    rig.awaiting(1).await;
    let before = rig.dump().await;
    for token in ["nope", &"A".repeat(43), "%3Cscript%3E"] {
        let page = rig.get(token).await;
        assert_eq!(page.status, StatusCode::NOT_FOUND, "{token}");
        assert!(page.body.contains("Unknown approval link"));
        let post = rig
            .post(token, &[("csrf", "x"), ("decision", "approve")])
            .await;
        assert_eq!(post.status, StatusCode::NOT_FOUND);
    }
    assert_eq!(rig.dump().await, before);
}

// ----- deciding ----------------------------------------------------------------------------------

#[tokio::test]
async fn a_post_approves_once_and_the_run_proceeds() {
    let rig = Rig::new(1, false).await;
    let id = rig.awaiting(1).await;
    let token = rig.token("alice", id);

    let answer = rig.decide(&token, "approve").await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert!(answer.body.contains("alice approved backend r1"));
    assert!(
        !answer.body.contains(&token),
        "the result page has no token"
    );

    settle(&rig.engine).await.unwrap();
    assert_eq!(status(&rig.engine, id, "prod").await, RunStatus::Succeeded);

    let events = rig.approval_events().await;
    assert_eq!(events.len(), 1);
    let e = &events[0];
    assert_eq!(e.actor, "approver:alice");
    assert_eq!(e.stage.as_deref(), Some("prod"));
    for part in [
        "alice approves",
        "source 192.0.2.7",
        BROWSER,
        "personal approval link",
    ] {
        assert!(e.detail.contains(part), "{part:?} not in {:?}", e.detail);
    }

    let again = rig.decide_again(&token).await;
    assert_eq!(again.status, StatusCode::CONFLICT, "{}", again.body);
    assert!(again.body.contains("already used"), "{}", again.body);
    assert_eq!(rig.approval_events().await.len(), 1);
    let page = rig.get(&token).await;
    assert!(page.body.contains("already used"));
    assert!(!page.body.contains(&token));
}

impl Rig {
    /// Posts a decision on a link whose page no longer offers the form (the CSRF value is read
    /// from the store, as a browser that kept the old page would still have it).
    async fn decide_again(&self, token: &str) -> Answer {
        let t = self
            .engine
            .reads()
            .approval_token(token)
            .await
            .unwrap()
            .unwrap();
        self.post(token, &[("csrf", t.csrf.expose()), ("decision", "approve")])
            .await
    }
}

#[tokio::test]
async fn a_real_listener_records_the_peer_address_and_user_agent() {
    let rig = Rig::new(1, false).await;
    let id = rig.awaiting(1).await;
    let token = rig.token("bob", id);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = rig.app.clone();
    let server = tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap()
    });
    let http = reqwest::Client::builder()
        .no_proxy()
        .user_agent("approver-phone/1.0")
        .build()
        .unwrap();
    let url = format!("http://{addr}/approvals/{token}");
    let page = http.get(&url).send().await.unwrap().text().await.unwrap();
    let csrf = csrf_of(&page);
    let answer = http
        .post(&url)
        .form(&[("csrf", csrf.as_str()), ("decision", "approve")])
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), reqwest::StatusCode::OK);
    server.abort();
    let events = rig.approval_events().await;
    assert_eq!(events.len(), 1);
    assert!(
        events[0].detail.contains("source 127.0.0.1"),
        "{}",
        events[0].detail
    );
    assert!(events[0].detail.contains("approver-phone/1.0"));
    assert_eq!(events[0].actor, "approver:bob");
}

#[tokio::test]
async fn a_wrong_or_missing_csrf_value_or_decision_is_refused_and_changes_nothing() {
    let rig = Rig::new(1, false).await;
    let id = rig.awaiting(1).await;
    let token = rig.token("alice", id);
    let csrf = csrf_of(&rig.get(&token).await.body);
    let before = rig.dump().await;

    let wrong = rig
        .post(&token, &[("csrf", "forged"), ("decision", "approve")])
        .await;
    assert_eq!(wrong.status, StatusCode::FORBIDDEN);
    assert!(
        wrong.body.contains("nothing was recorded"),
        "{}",
        wrong.body
    );
    let missing = rig.post(&token, &[("decision", "approve")]).await;
    assert_eq!(missing.status, StatusCode::FORBIDDEN);
    // Another link's CSRF value does not fit this one.
    let bobs = csrf_of(&rig.get(&rig.token("bob", id)).await.body);
    let other = rig
        .post(&token, &[("csrf", &bobs), ("decision", "approve")])
        .await;
    assert_eq!(other.status, StatusCode::FORBIDDEN);
    let no_choice = rig.post(&token, &[("csrf", &csrf)]).await;
    assert_eq!(no_choice.status, StatusCode::BAD_REQUEST);
    assert!(no_choice.body.contains("Choose Approve or Reject"));
    let odd = rig
        .post(&token, &[("csrf", &csrf), ("decision", "yes")])
        .await;
    assert_eq!(odd.status, StatusCode::BAD_REQUEST);
    let not_a_form = rig
        .request(
            Request::post(format!("/approvals/{token}"))
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from("{}"))
                .unwrap(),
        )
        .await;
    assert_eq!(not_a_form.status, StatusCode::BAD_REQUEST);

    assert_eq!(rig.dump_decisions().await, before, "no decision recorded");
    // Each refused click with a form is in the event log, token-free, naming the link's owner.
    let refused: Vec<String> = rig
        .engine
        .reads()
        .events("backend", 500)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == "approval-refused")
        .map(|e| format!("{}: {}", e.actor, e.detail))
        .collect();
    assert_eq!(refused.len(), 3, "{refused:?}");
    assert!(
        refused.iter().all(|r| r.starts_with(
            "approver:alice: alice's click refused: the form's CSRF value did not match; source"
        )),
        "{refused:?}"
    );
    assert!(refused.iter().all(|r| !r.contains(&token)));
    let ok = rig
        .post(&token, &[("csrf", &csrf), ("decision", "approve")])
        .await;
    assert_eq!(ok.status, StatusCode::OK);
}

#[tokio::test]
async fn an_expired_link_says_so_and_records_nothing() {
    let rig = Rig::new(1, false).await;
    let id = rig.awaiting(1).await;
    let token = rig.token("alice", id);
    let csrf = csrf_of(&rig.get(&token).await.body);
    rig.clock.advance(chrono::Duration::hours(24));

    let page = rig.get(&token).await;
    assert_eq!(page.status, StatusCode::GONE);
    assert!(
        page.body.contains("expired at 2026-11-24 10:00:00 UTC"),
        "{}",
        page.body
    );
    let post = rig
        .post(&token, &[("csrf", &csrf), ("decision", "approve")])
        .await;
    assert_eq!(post.status, StatusCode::GONE);
    assert!(rig.approval_events().await.is_empty());

    settle(&rig.engine).await.unwrap();
    assert_eq!(status(&rig.engine, id, "prod").await, RunStatus::Expired);
    let page = rig.get(&token).await;
    assert!(
        page.body.contains("expired at 2026-11-24 10:00:00 UTC"),
        "{}",
        page.body
    );
}

#[tokio::test]
async fn a_day_long_wait_shows_a_current_countdown_without_a_log_entry_per_minute() {
    let rig = Rig::new(1, false).await;
    let id = rig.awaiting(1).await;
    let notes = || async {
        let events = rig
            .engine
            .reads()
            .release_events("backend", id)
            .await
            .unwrap();
        events
            .into_iter()
            .filter(|e| e.kind == "note" && e.stage.as_deref() == Some("prod"))
            .map(|e| e.detail)
            .collect::<Vec<_>>()
    };
    let at_start = notes().await;

    // Every 5 minutes for 23 h 50 min, as the engine's own resync would see it.
    for _ in 0..286 {
        rig.clock.advance(chrono::Duration::minutes(5));
        rig.engine.reconcile("backend").await.unwrap();
    }
    let run = engine_support::run(&rig.engine, id, "prod").await;
    assert!(matches!(
        run.reason,
        Reason::AwaitingApproval { expires_at, .. } if expires_at == start_time() + chrono::Duration::hours(24)
    ));
    assert_eq!(
        run.reason.describe(rig.engine.now()),
        "awaiting approval: 0 of 1, expires in 10m",
        "the countdown is rendered from the deadline"
    );
    assert_eq!(notes().await, at_start, "a countdown step was logged");

    // What changes in substance is logged: an approval, then the deploy.
    let token = rig.token("alice", id);
    assert_eq!(rig.decide(&token, "approve").await.status, StatusCode::OK);
    settle(&rig.engine).await.unwrap();
    assert_eq!(status(&rig.engine, id, "prod").await, RunStatus::Succeeded);
}

#[tokio::test]
async fn a_failed_request_is_sent_again_later_to_those_it_did_not_reach() {
    let rig = Rig::new(1, false).await;
    rig.fakes.with(|w| w.refused_approvers.insert("bob".into()));
    let id = rig.awaiting(1).await;
    let sent_to = |who: &str| {
        rig.messages()
            .iter()
            .filter(|m| m.attributes.get("approver").map(String::as_str) == Some(who))
            .count()
    };
    assert_eq!(
        (sent_to("alice"), sent_to("bob"), sent_to("carol")),
        (1, 0, 0)
    );
    let run = engine_support::run(&rig.engine, id, "prod").await;
    assert!(
        matches!(&run.reason, Reason::AwaitingApproval {
            request: RequestState::Failed { detail, retry_at }, ..
        } if detail.contains("access denied: AuthorizationError")
            && *retry_at == rig.engine.now() + chrono::Duration::minutes(5)),
        "{:?}",
        run.reason
    );
    let alice = rig.token("alice", id);

    // Five minutes on, bob is still refused: the next try waits twice as long.
    rig.clock.advance(chrono::Duration::minutes(5));
    settle(&rig.engine).await.unwrap();
    let run = engine_support::run(&rig.engine, id, "prod").await;
    assert!(
        matches!(&run.reason, Reason::AwaitingApproval {
            request: RequestState::Failed { retry_at, .. }, ..
        } if *retry_at == rig.engine.now() + chrono::Duration::minutes(10)),
        "{:?}",
        run.reason
    );
    rig.clock.advance(chrono::Duration::minutes(9));
    settle(&rig.engine).await.unwrap();
    assert_eq!(sent_to("bob"), 0, "no try before the 10 minutes are up");

    rig.fakes.with(|w| w.refused_approvers.clear());
    rig.clock.advance(chrono::Duration::minutes(1));
    settle(&rig.engine).await.unwrap();
    assert_eq!(
        (sent_to("alice"), sent_to("bob"), sent_to("carol")),
        (1, 1, 1),
        "each approver has exactly one link"
    );
    let run = engine_support::run(&rig.engine, id, "prod").await;
    assert_eq!(
        run.reason.describe(rig.engine.now()),
        "awaiting approval: 0 of 1, expires in 23h45m"
    );
    assert_eq!(
        rig.token("alice", id),
        alice,
        "alice's first link still stands"
    );

    let answer = rig.decide(&rig.token("bob", id), "approve").await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    settle(&rig.engine).await.unwrap();
    assert_eq!(status(&rig.engine, id, "prod").await, RunStatus::Succeeded);
}

#[tokio::test]
async fn an_expired_request_retried_sends_new_links_and_the_old_ones_stay_dead() {
    let rig = Rig::new(1, false).await;
    let id = rig.awaiting(1).await;
    let old = rig.token("alice", id);
    rig.clock.advance(chrono::Duration::hours(24));
    settle(&rig.engine).await.unwrap();
    assert_eq!(status(&rig.engine, id, "prod").await, RunStatus::Expired);

    let asked = tollgate::engine::Delivery {
        source: "api".into(),
        id: "retry-1".into(),
    };
    let verdict = rig
        .engine
        .request_retry("backend", id, "api-key:dana", &asked)
        .await
        .unwrap();
    assert_eq!(verdict, tollgate::engine::RetryVerdict::From("prod".into()));
    settle(&rig.engine).await.unwrap();
    let run = engine_support::run(&rig.engine, id, "prod").await;
    assert_eq!(run.status, RunStatus::AwaitingApproval);
    assert_eq!(
        run.reason.describe(rig.engine.now()),
        "awaiting approval: 0 of 1, expires in 24h"
    );

    let new = rig.token("alice", id);
    assert_ne!(new, old);
    assert_eq!(rig.get(&old).await.status, StatusCode::GONE);
    let answer = rig.decide(&new, "approve").await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    settle(&rig.engine).await.unwrap();
    assert_eq!(status(&rig.engine, id, "prod").await, RunStatus::Succeeded);
}

#[tokio::test]
async fn a_superseded_link_names_the_newer_release() {
    let rig = Rig::new(1, false).await;
    let old = rig.awaiting(1).await;
    let token = rig.token("alice", old);
    let csrf = csrf_of(&rig.get(&token).await.body);
    let new = rig.awaiting(2).await;
    assert_eq!(
        status(&rig.engine, old, "prod").await,
        RunStatus::Superseded
    );

    let page = rig.get(&token).await;
    assert_eq!(page.status, StatusCode::GONE);
    assert!(page.body.contains("Superseded by a newer release"));
    assert!(
        page.body.contains(&format!("a newer release, {new}")),
        "{}",
        page.body
    );
    assert!(page.body.contains(&engine_support::sha(2)[..12]));
    assert!(page.body.contains("change 2"));
    let post = rig
        .post(&token, &[("csrf", &csrf), ("decision", "approve")])
        .await;
    assert_eq!(post.status, StatusCode::GONE);
    assert!(rig.approval_events().await.is_empty());

    // The newer release has its own links, which work.
    let answer = rig.decide(&rig.token("alice", new), "approve").await;
    assert_eq!(answer.status, StatusCode::OK);
    settle(&rig.engine).await.unwrap();
    assert_eq!(status(&rig.engine, new, "prod").await, RunStatus::Succeeded);
}

#[tokio::test]
async fn the_author_may_reject_but_not_approve_their_own_change() {
    let rig = Rig::new(1, false).await;
    let id = rig.awaiting(1).await;
    let token = rig.token("carol", id);
    let page = rig.get(&token).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(
        !page.body.contains("value=\"approve\""),
        "no approve button"
    );
    assert!(page.body.contains("value=\"reject\""));
    assert!(
        page.body
            .contains("carol may not approve this change: you wrote this commit (author)"),
        "{}",
        page.body
    );

    let csrf = csrf_of(&page.body);
    let approve = rig
        .post(&token, &[("csrf", &csrf), ("decision", "approve")])
        .await;
    assert_eq!(approve.status, StatusCode::FORBIDDEN);
    assert!(approve.body.contains("may not approve this change"));
    assert!(rig.approval_events().await.is_empty());

    let reject = rig
        .post(&token, &[("csrf", &csrf), ("decision", "reject")])
        .await;
    assert_eq!(reject.status, StatusCode::OK, "{}", reject.body);
    settle(&rig.engine).await.unwrap();
    assert_eq!(status(&rig.engine, id, "prod").await, RunStatus::Rejected);
}

#[tokio::test]
async fn the_author_is_recognised_by_email_too_and_may_approve_with_allow_author() {
    // bob's email is the author's: he is the author, whatever his login.
    let rig = Rig::new(1, false).await;
    let mut r = release(1);
    r.author_email = "BOB@example.com".into();
    r.author_login = Some("someone-else".into());
    let id = rig.release_with(1, r).await;
    let answer = rig.decide(&rig.token("bob", id), "approve").await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);

    let rig = Rig::new(1, true).await;
    let id = rig.awaiting(1).await;
    let answer = rig.decide(&rig.token("carol", id), "approve").await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    settle(&rig.engine).await.unwrap();
    assert_eq!(status(&rig.engine, id, "prod").await, RunStatus::Succeeded);
}

#[tokio::test]
async fn two_of_three_approvals_deploy() {
    let rig = Rig::new(2, false).await;
    let id = rig.awaiting(1).await;
    assert_eq!(rig.messages().len(), 3, "one message per approver");

    let first = rig.decide(&rig.token("alice", id), "approve").await;
    assert_eq!(first.status, StatusCode::OK);
    assert!(first.body.contains("1 of 2 needed"), "{}", first.body);
    settle(&rig.engine).await.unwrap();
    let run = engine_support::run(&rig.engine, id, "prod").await;
    assert_eq!(run.status, RunStatus::AwaitingApproval);
    assert!(
        matches!(
            run.reason,
            Reason::AwaitingApproval {
                approved: 1,
                needed: 2,
                ..
            }
        ),
        "{:?}",
        run.reason
    );

    // The author's approval does not count (and is refused).
    let own = rig.decide(&rig.token("carol", id), "approve").await;
    assert_eq!(own.status, StatusCode::FORBIDDEN);

    let second = rig.decide(&rig.token("bob", id), "approve").await;
    assert_eq!(second.status, StatusCode::OK);
    assert!(second.body.contains("2 of 2 needed"));
    settle(&rig.engine).await.unwrap();
    assert_eq!(status(&rig.engine, id, "prod").await, RunStatus::Succeeded);

    let late = rig.get(&rig.token("carol", id)).await;
    assert_eq!(late.status, StatusCode::CONFLICT);
    assert!(late.body.contains("no longer waits"), "{}", late.body);
}

#[tokio::test]
async fn one_rejection_ends_the_request_and_says_by_whom() {
    let rig = Rig::new(2, false).await;
    let id = rig.awaiting(1).await;
    let ok = rig.decide(&rig.token("alice", id), "approve").await;
    assert_eq!(ok.status, StatusCode::OK);
    let csrf = csrf_of(&rig.get(&rig.token("carol", id)).await.body);
    let no = rig.decide(&rig.token("bob", id), "reject").await;
    assert_eq!(no.status, StatusCode::OK);
    assert!(no.body.contains("bob rejected backend r1"));

    // Before the reconciler even looked, the other links say who rejected.
    let page = rig.get(&rig.token("carol", id)).await;
    assert_eq!(page.status, StatusCode::CONFLICT);
    assert!(
        page.body.contains("bob rejected this release"),
        "{}",
        page.body
    );
    let carol = rig
        .post(
            &rig.token("carol", id),
            &[("csrf", &csrf), ("decision", "approve")],
        )
        .await;
    assert_eq!(carol.status, StatusCode::CONFLICT);

    settle(&rig.engine).await.unwrap();
    let run = engine_support::run(&rig.engine, id, "prod").await;
    assert_eq!(run.status, RunStatus::Rejected);
    assert_eq!(run.reason, Reason::Rejected { by: "bob".into() });
    assert_eq!(rig.approval_events().await.len(), 2);
}

#[tokio::test]
async fn an_approval_does_not_open_a_closed_deployment_window() {
    // Monday 23 November 2026, 10:00 UTC: the window is Saturdays only.
    let windows = r#"
[pipelines.stages.windows]
timezone = "Europe/Berlin"
[[pipelines.stages.windows.allow]]
days = ["sat"]
start = "09:00"
end = "16:00"
"#;
    let rig = Rig::with_config(|dir| load(dir, &stages(1, false, windows))).await;
    let id = rig.awaiting(1).await;
    let answer = rig.decide(&rig.token("alice", id), "approve").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert!(answer.body.contains("deployment windows still apply"));
    settle(&rig.engine).await.unwrap();
    let run = engine_support::run(&rig.engine, id, "prod").await;
    assert_eq!(run.status, RunStatus::AwaitingApproval);
    assert_eq!(
        run.reason.describe(rig.engine.now()),
        "outside deployment window until Sat 2026-11-28 09:00 Europe/Berlin"
    );
    assert!(matches!(
        run.reason,
        Reason::OutsideWindow { opens: Some(_), .. }
    ));
}

// ----- who brought the change, who is listed -------------------------------------------------

#[tokio::test]
async fn nobody_who_brought_the_change_may_approve_it_by_login_or_email_in_any_case() {
    use tollgate::domain::{Contributor, ContributorRole as R};
    let rig = Rig::new(1, false).await;
    let mut r = release(1);
    // alice pushed it (by login, in another case), bob committed it (by email).
    r.contributors = vec![
        Contributor::new(R::Pusher, Some("ALICE"), None).unwrap(),
        Contributor::new(R::Committer, None, Some("Bob@Example.com")).unwrap(),
    ];
    let id = rig.release_with(1, r).await;
    let alice = rig.decide(&rig.token("alice", id), "approve").await;
    assert_eq!(alice.status, StatusCode::FORBIDDEN);
    assert!(
        alice.body.contains("you pushed this change"),
        "{}",
        alice.body
    );
    let bob = rig.decide(&rig.token("bob", id), "approve").await;
    assert_eq!(bob.status, StatusCode::FORBIDDEN);
    assert!(
        bob.body.contains("you committed this commit"),
        "{}",
        bob.body
    );
    assert!(rig.approval_events().await.is_empty());
    // The API applies the same rule.
    let api = decide(
        &rig.engine,
        "backend",
        id,
        "prod",
        "alice",
        Decision::Approve,
        "api-key:ops",
    )
    .await
    .unwrap();
    assert!(
        matches!(
            api,
            Outcome::Refused(Refusal::OwnChange {
                role: R::Pusher,
                ..
            })
        ),
        "{api:?}"
    );
}

#[tokio::test]
async fn an_approval_from_an_approver_dropped_from_the_list_stops_counting() {
    let rig = Rig::new(2, false).await;
    let id = rig.awaiting(1).await;
    let first = rig.decide(&rig.token("alice", id), "approve").await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    // The configuration is reloaded without alice (and with one approval needed).
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = load(dir.path(), &stages(1, false, ""));
    let prod = cfg.pipelines[0]
        .stages
        .iter_mut()
        .find(|s| s.name == "prod");
    let approval = prod.unwrap().approval.as_mut().unwrap();
    approval.approvers.retain(|a| a.name != "alice");
    rig.engine
        .replace_config(cfg, &rig.engine.hold_starts().await);
    settle(&rig.engine).await.unwrap();
    let run = engine_support::run(&rig.engine, id, "prod").await;
    assert_eq!(run.status, RunStatus::AwaitingApproval, "{:?}", run.reason);
    assert!(
        matches!(
            run.reason,
            Reason::AwaitingApproval {
                approved: 0,
                needed: 1,
                ..
            }
        ),
        "{:?}",
        run.reason
    );
    let bob = rig.decide(&rig.token("bob", id), "approve").await;
    assert_eq!(bob.status, StatusCode::OK, "{}", bob.body);
    settle(&rig.engine).await.unwrap();
    assert_eq!(status(&rig.engine, id, "prod").await, RunStatus::Succeeded);
}

/// A reload that changes an approver's address while the request waits: the link sent to
/// the old address stops deciding at once, the new address gets a link of its own, and nobody
/// else is sent anything again.
#[tokio::test]
async fn an_approver_whose_address_changes_gets_a_new_link_and_the_old_one_stops() {
    let rig = Rig::new(1, false).await;
    let id = rig.awaiting(1).await;
    let old = rig.token("alice", id);
    let sent_before = rig.messages().len();
    let csrf = csrf_of(&rig.get(&old).await.body);

    let dir = tempfile::tempdir().unwrap();
    let moved = stages(1, false, "").replace("alice@example.com", "alice@new.example.com");
    let held = rig.engine.hold_starts().await;
    rig.engine.replace_config(load(dir.path(), &moved), &held);
    drop(held);
    // Until the next round, the old link already refuses: it went to another address.
    let page = rig.get(&old).await;
    assert_eq!(page.status, StatusCode::GONE, "{}", page.body);
    settle(&rig.engine).await.unwrap();

    let sent: Vec<Message> = rig.messages()[sent_before..].to_vec();
    let to: Vec<&str> = sent
        .iter()
        .filter_map(|m| m.attributes.get("approver").map(String::as_str))
        .collect();
    assert_eq!(to, ["alice"], "only alice is sent a link again");
    let new = rig.token("alice", id);
    assert_ne!(new, old);
    let refused = rig
        .post(&old, &[("csrf", &csrf), ("decision", "approve")])
        .await;
    assert_eq!(refused.status, StatusCode::GONE, "{}", refused.body);
    let answer = rig.decide(&new, "approve").await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    settle(&rig.engine).await.unwrap();
    assert_eq!(status(&rig.engine, id, "prod").await, RunStatus::Succeeded);
}

/// A reload that adds an approver while the request waits sends them a link; one that
/// lengthens the timeout keeps every link usable until the new expiry, without sending again.
#[tokio::test]
async fn a_reload_reaches_an_added_approver_and_a_longer_timeout_reaches_the_links() {
    let rig = Rig::new(1, false).await;
    let id = rig.awaiting(1).await;
    let bob = rig.token("bob", id);
    let sent_before = rig.messages().len();

    let dir = tempfile::tempdir().unwrap();
    let dana = r#"  {{ name = "dana", email = "dana@example.com" }},
]"#
    .replace("{{", "{")
    .replace("}}", "}");
    let added = stages(1, false, "")
        .replacen("\n]\n", &format!("\n{dana}\n"), 1)
        .replace(r#"timeout = "24h""#, r#"timeout = "48h""#);
    assert!(
        added.contains("dana@example.com") && added.contains("48h"),
        "{added}"
    );
    let held = rig.engine.hold_starts().await;
    rig.engine.replace_config(load(dir.path(), &added), &held);
    drop(held);
    settle(&rig.engine).await.unwrap();
    let sent: Vec<String> = rig.messages()[sent_before..]
        .iter()
        .filter_map(|m| m.attributes.get("approver").cloned())
        .collect();
    assert_eq!(sent, ["dana"], "only the approver added is sent a link");

    rig.clock.advance(chrono::Duration::hours(30));
    settle(&rig.engine).await.unwrap();
    assert_eq!(
        status(&rig.engine, id, "prod").await,
        RunStatus::AwaitingApproval
    );
    let page = rig.get(&bob).await;
    assert_eq!(
        page.status,
        StatusCode::OK,
        "past the old expiry: {}",
        page.body
    );
    let answer = rig.decide(&bob, "approve").await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
}

#[tokio::test]
async fn a_shared_link_never_decides_for_a_listed_approver() {
    let rig = Rig::with_config(|dir| {
        let mut cfg = load(dir, &stages(1, false, ""));
        let prod = cfg.pipelines[0]
            .stages
            .iter_mut()
            .find(|s| s.name == "prod");
        prod.unwrap().approval.as_mut().unwrap().approvers.clear();
        cfg
    })
    .await;
    let id = rig.awaiting(1).await;
    let token = link_token(&rig.messages()[0].body);
    let csrf = csrf_of(&rig.get(&token).await.body);
    // Approvers are listed now: the shared link no longer decides, whatever name is typed.
    let dir = tempfile::tempdir().unwrap();
    let held = rig.engine.hold_starts().await;
    rig.engine
        .replace_config(load(dir.path(), &stages(1, false, "")), &held);
    drop(held);
    let page = rig.get(&token).await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
    assert!(page.body.contains("personal links"), "{}", page.body);
    for name in ["alice", "Dave"] {
        let answer = rig
            .post(
                &token,
                &[("csrf", &csrf), ("decision", "approve"), ("name", name)],
            )
            .await;
        assert_eq!(
            answer.status,
            StatusCode::FORBIDDEN,
            "{name}: {}",
            answer.body
        );
    }
    assert!(rig.approval_events().await.is_empty());
    assert_eq!(
        status(&rig.engine, id, "prod").await,
        RunStatus::AwaitingApproval
    );
}

// ----- shared links, repeated sends ------------------------------------------------------------

#[tokio::test]
async fn with_no_listed_approvers_one_shared_link_asks_for_a_name_recorded_unverified() {
    let rig = Rig::with_config(|dir| {
        let mut cfg = load(dir, &stages(1, false, ""));
        let prod = cfg.pipelines[0]
            .stages
            .iter_mut()
            .find(|s| s.name == "prod");
        prod.unwrap().approval.as_mut().unwrap().approvers.clear();
        cfg
    })
    .await;
    let id = rig.awaiting(1).await;
    let messages = rig.messages();
    assert_eq!(messages.len(), 1, "one shared message");
    assert!(messages[0].attributes.is_empty());
    assert!(messages[0].body.contains("shared by everyone"));
    let token = link_token(&messages[0].body);

    let page = rig.get(&token).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("name=\"name\""));
    // Enter in the name box submits the form with its default button, the first submit button
    // in tree order (HTML, "Implicit submission"): a disabled one submits nothing, so no
    // decision is made without pressing Approve or Reject.
    let default = first_submit_button(&page.body);
    assert!(
        default.contains("disabled") && !default.contains("decision"),
        "{default}"
    );
    let csrf = csrf_of(&page.body);
    let undecided = rig.post(&token, &[("csrf", &csrf), ("name", "Dave")]).await;
    assert_eq!(
        undecided.status,
        StatusCode::BAD_REQUEST,
        "{}",
        undecided.body
    );
    let nameless = rig
        .post(&token, &[("csrf", &csrf), ("decision", "approve")])
        .await;
    assert_eq!(nameless.status, StatusCode::BAD_REQUEST);
    assert!(nameless.body.contains("enter your name"));
    let author = rig
        .post(
            &token,
            &[("csrf", &csrf), ("decision", "approve"), ("name", "Carol")],
        )
        .await;
    assert_eq!(author.status, StatusCode::FORBIDDEN, "the author by name");
    assert!(rig.approval_events().await.is_empty());

    let ok = rig
        .post(
            &token,
            &[("csrf", &csrf), ("decision", "approve"), ("name", " Dave ")],
        )
        .await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.body);
    let events = rig.approval_events().await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].actor, "approver:Dave");
    assert!(events[0].detail.contains("identity not verified"));
    assert!(events[0].detail.contains("shared approval link"));
    let again = rig
        .post(
            &token,
            &[("csrf", &csrf), ("decision", "approve"), ("name", "Erin")],
        )
        .await;
    assert_eq!(again.status, StatusCode::CONFLICT, "single use");
    settle(&rig.engine).await.unwrap();
    assert_eq!(status(&rig.engine, id, "prod").await, RunStatus::Succeeded);
}

/// The form's first submit button, as its tag.
fn first_submit_button(page: &str) -> &str {
    let form = &page[page.find("<form").expect("a form")..];
    let at = form.find("type=\"submit\"").expect("a submit button");
    let start = form[..at].rfind('<').unwrap();
    let end = at + form[at..].find('>').unwrap();
    &form[start..=end]
}

fn request_for(id: ReleaseId, key: &str) -> ApprovalRequest {
    let approver = |name: &str| tollgate::config::Approver {
        name: name.into(),
        email: format!("{name}@example.com"),
        github: None,
    };
    ApprovalRequest {
        key: key.into(),
        pipeline: "backend".into(),
        repository: "acme/backend".into(),
        stage: "prod".into(),
        release: id,
        attempt: if key.contains("/a2/") { 2 } else { 1 },
        topic: APPROVAL_TOPIC.into(),
        approvers: vec![approver("alice"), approver("bob")],
        expires_at: start_time() + chrono::Duration::hours(24),
        summary: "Pipeline: backend\n".into(),
    }
}

#[tokio::test]
async fn a_repeated_send_for_the_same_key_mints_no_second_live_link() {
    let rig = Rig::new(1, false).await;
    let id = rig.awaiting(1).await;
    let key = "backend/r1/prod/a1/approval-request";
    let sent = rig.messages().len();
    let tokens = rig.count("SELECT COUNT(*) FROM approval_tokens").await;
    assert_eq!((sent, tokens), (3, 3));

    // The engine performing the effect again (after a crash) sends nothing more.
    let again = rig.sender.send(&request_for(id, key)).await.unwrap();
    assert_eq!(again, SendOutcome::Sent(2), "both links are out");
    assert_eq!(rig.messages().len(), 3);
    assert_eq!(rig.count("SELECT COUNT(*) FROM approval_tokens").await, 3);

    // A crash after minting alice's link but before publishing it: the next send replaces it.
    let other = "backend/r1/prod/a2/approval-request";
    let unsent = NewToken {
        request_key: other.into(),
        pipeline: "backend".into(),
        release: id,
        stage: "prod".into(),
        attempt: 2,
        approver: Some("alice".into()),
        recipient: None,
        expires_at: start_time() + chrono::Duration::hours(24),
    };
    let tollgate::store::approvals::Issued::New(lost) = rig
        .store
        .issue_approval_token(&unsent, start_time())
        .await
        .unwrap()
    else {
        panic!("a fresh token was expected");
    };
    let sent = SendOutcome::Sent(2);
    assert_eq!(
        rig.sender.send(&request_for(id, other)).await.unwrap(),
        sent
    );
    assert_eq!(
        rig.sender.send(&request_for(id, other)).await.unwrap(),
        sent
    );
    assert_eq!(rig.messages().len(), 5, "one more per approver, once");
    let live = rig
        .count(&format!(
            "SELECT COUNT(*) FROM approval_tokens WHERE request_key = '{other}' AND replaced_at IS NULL"
        ))
        .await;
    assert_eq!(live, 2, "one live link per approver");
    let page = rig.get(lost.token.expose()).await;
    assert_eq!(page.status, StatusCode::GONE);
    assert!(page.body.contains("replaced by a newer email"));
}

// ----- the library API ---------------------------------------------------------------------------

#[tokio::test]
async fn the_library_api_applies_the_same_rules_and_records_the_caller() {
    let rig = Rig::new(2, false).await;
    let id = rig.awaiting(1).await;
    let e = &rig.engine;
    let call =
        |who: &'static str, d: Decision| decide(e, "backend", id, "prod", who, d, "api-key:ops-1");

    let own = call("carol", Decision::Approve).await.unwrap();
    assert!(
        matches!(own, Outcome::Refused(Refusal::OwnChange { .. })),
        "{own:?}"
    );
    let stranger = call("mallory", Decision::Approve).await.unwrap();
    assert!(matches!(
        stranger,
        Outcome::Refused(Refusal::NotAnApprover { .. })
    ));
    // By GitHub login, recorded under the approver's name.
    let ok = call("ALICE", Decision::Approve).await.unwrap();
    assert_eq!(
        ok,
        Outcome::Recorded {
            approver: "alice".into(),
            decision: Decision::Approve,
            verified: true
        }
    );
    let twice = call("alice", Decision::Reject).await.unwrap();
    assert!(matches!(
        twice,
        Outcome::Refused(Refusal::AlreadyDecided(_))
    ));
    let events = rig.approval_events().await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].actor, "api-key:ops-1");
    assert!(events[0].detail.contains("alice approves"));
    assert!(events[0].detail.contains("api-key:ops-1"));

    // alice's link now says she already decided.
    let page = rig.get(&rig.token("alice", id)).await;
    assert_eq!(page.status, StatusCode::CONFLICT);
    assert!(page.body.contains("alice already approved"));

    let by_email = call("bob@example.com", Decision::Approve).await.unwrap();
    assert!(matches!(by_email, Outcome::Recorded { .. }));
    settle(e).await.unwrap();
    assert_eq!(status(e, id, "prod").await, RunStatus::Succeeded);
    let late = call("carol", Decision::Reject).await.unwrap();
    assert!(matches!(
        late,
        Outcome::Refused(Refusal::MovedOn {
            status: RunStatus::Succeeded,
            ..
        })
    ));

    assert!(
        decide(e, "backend", id, "staging", "alice", Decision::Approve, "x")
            .await
            .is_err()
    );
    let unknown = decide(
        e,
        "backend",
        ReleaseId(99),
        "prod",
        "alice",
        Decision::Approve,
        "x",
    );
    assert_eq!(
        unknown.await.unwrap(),
        Outcome::Refused(Refusal::UnknownRelease)
    );
}

// ----- secrets -----------------------------------------------------------------------------------

/// A log sink for the test's tracing subscriber.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Every log line of this test binary from the first call on (a global subscriber: a
/// thread-local one would miss what other threads' tests register meanwhile).
fn captured_logs() -> &'static Captured {
    static LOGS: OnceLock<Captured> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Captured::default();
        let sink = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(move || sink.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::set_global_default(subscriber).unwrap();
        logs
    })
}

#[tokio::test]
async fn tokens_and_csrf_values_never_reach_the_logs_or_the_store() {
    let logs = captured_logs();
    let rig = Rig::new(2, false).await;
    let id = rig.awaiting(1).await;
    let mut secrets = Vec::new();
    for who in ["alice", "bob", "carol"] {
        let token = rig.token(who, id);
        let csrf = csrf_of(&rig.get(&token).await.body);
        let decision = if who == "carol" { "reject" } else { "approve" };
        rig.post(&token, &[("csrf", &csrf), ("decision", decision)])
            .await;
        rig.post(&token, &[("csrf", "forged"), ("decision", decision)])
            .await;
        secrets.push(token);
        secrets.push(csrf);
    }
    settle(&rig.engine).await.unwrap();

    let logs = String::from_utf8_lossy(&logs.0.lock().unwrap()).into_owned();
    assert!(logs.contains("approval link sent"), "the capture works");
    let dump = rig.dump().await;
    let dump_without_csrf: String = dump
        .lines()
        .filter(|l| !l.starts_with("approval_tokens:"))
        .collect();
    for (i, s) in secrets.iter().enumerate() {
        assert!(!logs.contains(s.as_str()), "secret {i} in the logs");
        if i % 2 == 0 {
            assert!(!dump.contains(s.as_str()), "token {i} in the store");
        } else {
            assert!(
                !dump_without_csrf.contains(s.as_str()),
                "csrf {i} outside its row"
            );
        }
    }
}

//! `GET`/`POST /approvals/{token}`: the approval pages.
//!
//! Owns the edge of an approval link: the confirmation page, the form it posts, and a page for
//! every outcome. The rules themselves are [`crate::gates::approval`]'s.
//!
//! | request | answer |
//! |---|---|
//! | `GET` (and `HEAD`), link open | 200, confirmation page: release, commit, image, progress, approver, approve / reject buttons, hidden anti-CSRF field |
//! | `GET`, link no longer usable | the page saying why (status as for `POST`) |
//! | malformed or unknown token | 404 |
//! | `POST`, form unreadable | 400 |
//! | `POST`, anti-CSRF value missing or wrong | 403, nothing recorded |
//! | `POST`, no `decision=approve\|reject`, or a shared link without a name | 400, the confirmation page again |
//! | `POST`, recorded | 200, "approved" / "rejected" |
//! | link already used, or this approver already decided | 409 |
//! | another approver rejected, the stage moved on | 409 |
//! | request expired, link replaced by a newer email, superseded by a newer release (named) | 410 |
//! | the commit's author approving (without `allow_author`), not an approver | 403 |
//! | the store failed | 500 |
//!
//! # Guarantees
//! - A `GET` or `HEAD` only reads: mail scanners and link previews that fetch a link, however
//!   often and with whatever `Purpose`/`Sec-Purpose` header, change nothing.
//! - A decision needs a `POST` with the link's anti-CSRF value and an explicit choice; every
//!   recorded click carries the approver, source address and user agent into the event log.
//! - Everything shown is HTML-escaped. The token appears in a page only in the form's
//!   `action`; pages are sent with `Referrer-Policy: no-referrer`, `Cache-Control: no-store`
//!   and a CSP that allows no script, so the link does not leak through links on the page.
//!
//! # Must never
//! - change state on `GET`/`HEAD`, or log a token, an anti-CSRF value or a form body.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;

use axum::Router;
use axum::extract::rejection::FormRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Form, FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use subtle::ConstantTimeEq;

use crate::domain::{Decision, Release, RunStatus, StageRun};
use crate::engine::{Engine, EngineError};
use crate::gates::approval::{Link, Outcome, Refusal, decide_by_link};

/// The route's path.
pub const PATH: &str = "/approvals/{token}";
/// The form is three short fields.
pub const FORM_LIMIT: usize = 4 * 1024;
/// Characters of a user agent or forwarded-for header kept for the event log.
const CLIENT_FIELD_CHARS: usize = 200;

/// The approval pages, with their state applied (merge into the main router).
pub fn routes(engine: Engine) -> Router {
    Router::new()
        .route(PATH, get(show).post(submit))
        .layer(DefaultBodyLimit::max(FORM_LIMIT))
        .with_state(engine)
}

/// The confirmation form's fields.
#[derive(Debug, Default, Deserialize)]
pub struct DecisionForm {
    pub csrf: Option<String>,
    pub decision: Option<String>,
    /// The approver's name, on a shared link's page.
    pub name: Option<String>,
}

/// Where a request came from, for the event log (never a header that carries a secret).
#[derive(Debug, Clone, Default)]
pub struct Client {
    pub addr: Option<String>,
    pub forwarded_for: Option<String>,
    pub user_agent: Option<String>,
}

impl Client {
    /// `source 192.0.2.7 (X-Forwarded-For: 198.51.100.1); user agent "Mozilla/5.0 …"`.
    pub fn describe(&self) -> String {
        let mut s = format!("source {}", self.addr.as_deref().unwrap_or("unknown"));
        if let Some(f) = &self.forwarded_for {
            let _ = write!(s, " (X-Forwarded-For: {f})");
        }
        let ua = self.user_agent.as_deref().unwrap_or("none");
        let _ = write!(s, "; user agent \"{ua}\"");
        s
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Client {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let header = |name: header::HeaderName| {
            parts
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(printable)
        };
        Ok(Client {
            addr: parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip().to_string()),
            forwarded_for: header(header::HeaderName::from_static("x-forwarded-for")),
            user_agent: header(header::USER_AGENT),
        })
    }
}

/// Printable characters only, bounded.
fn printable(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .take(CLIENT_FIELD_CHARS)
        .collect()
}

async fn show(State(engine): State<Engine>, Path(token): Path<String>) -> Response {
    let link = match Link::open(&engine, &token).await {
        Ok(Some(link)) => link,
        Ok(None) => return unknown_link(),
        Err(e) => return failure(&e),
    };
    match link.refusal() {
        Some(r) => refusal_page(&link, &r),
        None => confirmation(&engine, &link, &token, None).await,
    }
}

async fn submit(
    State(engine): State<Engine>,
    Path(token): Path<String>,
    client: Client,
    form: Result<Form<DecisionForm>, FormRejection>,
) -> Response {
    let link = match Link::open(&engine, &token).await {
        Ok(Some(link)) => link,
        Ok(None) => return unknown_link(),
        Err(e) => return failure(&e),
    };
    let Ok(Form(form)) = form else {
        let text = "The form could not be read. Open the link in your email again.";
        return page(StatusCode::BAD_REQUEST, "Form not understood", para(text));
    };
    if !csrf_matches(&link, form.csrf.as_deref()) {
        refused_click(
            &engine,
            &link,
            "the form's CSRF value did not match",
            &client,
        )
        .await;
        let text = "This form is out of date or did not come from the approval page, so nothing \
                    was recorded. Open the link in your email again and choose there.";
        return page(StatusCode::FORBIDDEN, "Form not accepted", para(text));
    }
    if let Some(r) = link.refusal() {
        refused_click(&engine, &link, &r.to_string(), &client).await;
        return refusal_page(&link, &r);
    }
    let decision = match form.decision.as_deref().and_then(Decision::parse) {
        Some(d) => d,
        None => {
            let notice = "Choose Approve or Reject.";
            return with_status(
                StatusCode::BAD_REQUEST,
                confirmation(&engine, &link, &token, Some(notice)).await,
            );
        }
    };
    let name = form.name.as_deref();
    match decide_by_link(&engine, &link, name, decision, &client.describe()).await {
        Ok(Outcome::Recorded {
            approver, decision, ..
        }) => {
            tracing::info!(pipeline = %link.facts.pipeline, release = %link.facts.release.id, stage = %link.facts.stage, %approver, decision = decision.as_str(), "decision recorded from an approval link");
            recorded_page(&engine, &link, &approver, decision).await
        }
        Ok(Outcome::Refused(r @ Refusal::BadName(_))) => with_status(
            StatusCode::BAD_REQUEST,
            confirmation(&engine, &link, &token, Some(&r.to_string())).await,
        ),
        Ok(Outcome::Refused(r)) => {
            refused_click(&engine, &link, &r.to_string(), &client).await;
            refusal_page(&link, &r)
        }
        Err(e) => failure(&e),
    }
}

/// Writes a refused POST to the event log (kind `approval-refused`): who the link belongs
/// to, why nothing was recorded, and where the click came from. The token never appears.
async fn refused_click(engine: &Engine, link: &Link, why: &str, client: &Client) {
    let f = &link.facts;
    let who = link.token.approver.as_deref().unwrap_or("shared link");
    let actor = format!("approver:{who}");
    let detail = format!("{who}'s click refused: {why}; {}", client.describe());
    let logged = engine
        .log_event(
            &f.pipeline,
            &actor,
            "approval-refused",
            Some((f.release.id, f.stage.as_str())),
            &detail,
        )
        .await;
    if let Err(e) = logged {
        tracing::error!(error = %e, "cannot write a refused approval click to the event log");
    }
}

fn csrf_matches(link: &Link, sent: Option<&str>) -> bool {
    let expected = link.token.csrf.expose().as_bytes();
    sent.is_some_and(|s| bool::from(s.as_bytes().ct_eq(expected)))
}

// ----- pages -----------------------------------------------------------------------------------

async fn confirmation(engine: &Engine, link: &Link, token: &str, notice: Option<&str>) -> Response {
    let f = &link.facts;
    let r = &f.release;
    let mut runs = engine.reads().stage_runs_of(r.id).await.unwrap_or_default();
    if let Some(p) = engine.config().pipeline(&f.pipeline) {
        p.sort_runs(&mut runs);
    }
    let mut html = String::new();
    if let Some(n) = notice {
        let _ = write!(html, "<p class=\"notice\">{}</p>", esc(n));
    }
    html.push_str(&para(
        "Opening this page changed nothing. Read what is about to ship, then choose: your \
         choice is recorded once and cannot be changed.",
    ));
    html.push_str(&facts_table(engine, link, &runs));
    html.push_str(&form(link, token));
    let title = format!("Approve {} {} for {}?", f.pipeline, r.id, f.stage);
    page(StatusCode::OK, &title, html)
}

fn facts_table(engine: &Engine, link: &Link, runs: &[StageRun]) -> String {
    let f = &link.facts;
    let r = &f.release;
    let (approved, needed) = f.tally();
    let mut rows: Vec<(&str, String)> = vec![
        ("Pipeline", esc(&f.pipeline)),
        ("Stage", esc(&f.stage)),
        ("Release", esc(&r.id.to_string())),
        ("Commit", commit_html(engine, r)),
        ("Branch", esc(&r.branch)),
        ("Author", esc(&author(r))),
        ("Message", format!("<pre>{}</pre>", esc(&r.message))),
        (
            "Image digest",
            format!(
                "<code>{}</code>",
                esc(r.digest.as_deref().unwrap_or("(not resolved)"))
            ),
        ),
        ("Progress", progress_html(runs, engine.now())),
        ("Approvals", esc(&format!("{approved} of {needed} needed"))),
    ];
    let expires = f
        .expires_at()
        .map_or(link.token.expires_at, |e| e.min(link.token.expires_at));
    rows.push(("Expires", esc(&time(expires))));
    let who = match &link.token.approver {
        Some(name) => format!("{name} (this link is yours alone)"),
        None => "shared link: enter your name below (recorded as given, unverified)".into(),
    };
    rows.push(("Approver", esc(&who)));
    let mut html = String::from("<table>");
    for (k, v) in rows {
        let _ = write!(html, "<tr><th>{}</th><td>{v}</td></tr>", esc(k));
    }
    html.push_str("</table>");
    html
}

pub(crate) fn commit_html(engine: &Engine, r: &Release) -> String {
    let url = r.url.clone().or_else(|| {
        let config = engine.config();
        let repo = &config.pipeline(&r.pipeline)?.source.repository;
        Some(format!("https://github.com/{repo}/commit/{}", r.sha))
    });
    let sha = format!("<code>{}</code>", esc(&r.sha));
    match url.filter(|u| u.starts_with("https://") || u.starts_with("http://")) {
        Some(u) => format!(
            "{sha} <a href=\"{}\" rel=\"noreferrer noopener\">view</a>",
            esc(&u)
        ),
        None => sha,
    }
}

fn author(r: &Release) -> String {
    let login = r
        .author_login
        .as_deref()
        .map(|l| format!(" (@{l})"))
        .unwrap_or_default();
    format!("{} <{}>{login}", r.author_name, r.author_email)
}

fn progress_html(runs: &[StageRun], now: chrono::DateTime<chrono::Utc>) -> String {
    let started: Vec<&StageRun> = runs
        .iter()
        .filter(|r| r.status != RunStatus::Waiting)
        .collect();
    if started.is_empty() {
        return "(nothing yet)".into();
    }
    let mut html = String::from("<ul>");
    for run in started {
        let why = run.reason.describe(now);
        let line = format!("{}: {} — {why}", run.stage, run.status);
        let _ = write!(html, "<li>{}</li>", esc(&line));
    }
    html.push_str("</ul>");
    html
}

fn form(link: &Link, token: &str) -> String {
    let f = &link.facts;
    let allow_author = f.approval.as_ref().is_some_and(|a| a.allow_author);
    let own = match (&link.token.approver, link.decider(None)) {
        (Some(_), Ok(d)) if !allow_author => f.brought_by(&d).map(|role| (d, role)),
        _ => None,
    };
    // Enter in a text field submits a form with its default button, the first submit button
    // in tree order, and does nothing when that button is disabled (HTML, "Implicit
    // submission"): so typing a name and pressing Enter never approves (or rejects).
    // The action is relative to the page's own URL (`…/approvals/<token>`), so the form posts
    // back to where the page came from even when `public_url` has a path behind a proxy.
    let mut html = format!(
        "<form method=\"post\" action=\"{}\">\
         <button type=\"submit\" disabled hidden aria-hidden=\"true\" tabindex=\"-1\"></button>\
         <input type=\"hidden\" name=\"csrf\" value=\"{}\">",
        esc(token),
        esc(link.token.csrf.expose())
    );
    if link.token.is_shared() {
        html.push_str(
            "<p><label>Your name <input name=\"name\" required maxlength=\"64\" autocomplete=\"name\"></label></p>",
        );
    }
    html.push_str("<p>");
    match own {
        Some((d, role)) => {
            let text = Refusal::OwnChange {
                approver: d.name,
                role,
            }
            .to_string();
            let _ = write!(html, "{} ", esc(&text));
        }
        None => html.push_str(
            "<button type=\"submit\" name=\"decision\" value=\"approve\">Approve</button> ",
        ),
    }
    html.push_str(
        "<button type=\"submit\" name=\"decision\" value=\"reject\">Reject</button></p></form>",
    );
    html
}

async fn recorded_page(
    engine: &Engine,
    link: &Link,
    approver: &str,
    decision: Decision,
) -> Response {
    let f = &link.facts;
    let r = &f.release;
    let what = format!(
        "{} {} ({})",
        f.pipeline,
        r.id,
        crate::domain::short_sha(&r.sha)
    );
    let (title, text) = match decision {
        Decision::Approve => {
            let mut now = f.clone();
            if let Ok(all) = engine.reads().approvals_of(r.id, &f.stage).await {
                now.decisions = all
                    .into_iter()
                    .filter(|a| a.attempt == f.attempt())
                    .collect();
            }
            let (approved, needed) = now.tally();
            (
                "Approved",
                format!(
                    "{approver} approved {what} for {} at {}. Approvals so far: {approved} of {needed} needed. The stage deploys once enough approvals are in and it may deploy (deployment windows still apply).",
                    f.stage,
                    time(f.now)
                ),
            )
        }
        Decision::Reject => (
            "Rejected",
            format!(
                "{approver} rejected {what} for {} at {}. It will not deploy there.",
                f.stage,
                time(f.now)
            ),
        ),
    };
    page(StatusCode::OK, title, para(&text))
}

fn refusal_page(link: &Link, r: &Refusal) -> Response {
    let f = &link.facts;
    let status = match r {
        Refusal::UnknownRelease => StatusCode::NOT_FOUND,
        Refusal::NotRequested
        | Refusal::Replaced
        | Refusal::Expired { .. }
        | Refusal::Superseded { .. } => StatusCode::GONE,
        Refusal::Used { .. }
        | Refusal::AlreadyDecided(_)
        | Refusal::Rejected { .. }
        | Refusal::MovedOn { .. } => StatusCode::CONFLICT,
        Refusal::OwnChange { .. }
        | Refusal::NotAnApprover { .. }
        | Refusal::SharedLinkNotForListed { .. } => StatusCode::FORBIDDEN,
        Refusal::EarlierAttempt { .. } => StatusCode::GONE,
        Refusal::ContributorsUnknown { .. } => StatusCode::SERVICE_UNAVAILABLE,
        Refusal::BadName(_) => StatusCode::BAD_REQUEST,
    };
    let about = format!(
        "{} {} ({}) in stage {}",
        f.pipeline,
        f.release.id,
        crate::domain::short_sha(&f.release.sha),
        f.stage
    );
    let html = format!(
        "{}{}",
        para(&format!("{}: {r}.", about)),
        para("Nothing was recorded.")
    );
    page(status, r.title(), html)
}

fn unknown_link() -> Response {
    let text = "This approval link is not known here. Check that it was copied whole, from the \
                newest email about this release.";
    page(StatusCode::NOT_FOUND, "Unknown approval link", para(text))
}

fn failure(e: &EngineError) -> Response {
    tracing::error!(error = %e, "approval page failed");
    let text = "The controller could not complete this request. Try again in a minute; if it \
                keeps failing, tell the platform team.";
    page(
        StatusCode::INTERNAL_SERVER_ERROR,
        "Something went wrong",
        para(text),
    )
}

fn with_status(status: StatusCode, mut r: Response) -> Response {
    *r.status_mut() = status;
    r
}

/// A whole page with the headers every approval page carries.
pub(crate) fn page(status: StatusCode, title: &str, body: String) -> Response {
    let html = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta name=\"robots\" content=\"noindex, nofollow\">\
         <title>{t} · tollgate</title><style>{STYLE}</style></head>\
         <body><main><h1>{t}</h1>{body}</main></body></html>\n",
        t = esc(title)
    );
    let headers: [(header::HeaderName, &'static str); 7] = [
        (header::CONTENT_TYPE, "text/html; charset=utf-8"),
        (header::CACHE_CONTROL, "no-store"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
        (
            header::HeaderName::from_static("x-robots-tag"),
            "noindex, nofollow",
        ),
    ];
    let mut response = (status, html).into_response();
    for (name, value) in headers {
        response
            .headers_mut()
            .insert(name, HeaderValue::from_static(value));
    }
    response
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2em auto;max-width:46em;padding:0 1em;line-height:1.4}\
th{text-align:left;vertical-align:top;padding-right:1em}pre{white-space:pre-wrap;margin:0}\
.notice{background:#fff3cd;padding:.5em}button{font-size:1.1em;padding:.4em 1.2em;margin-right:1em}";

fn para(text: &str) -> String {
    format!("<p>{}</p>", esc(text))
}

/// Escapes text for HTML element content and quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

pub(crate) fn time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_covers_markup_and_quotes() {
        assert_eq!(
            esc(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }

    #[test]
    fn client_fields_are_printable_and_bounded() {
        assert_eq!(printable("a\nb\u{7}"), "a?b?");
        assert_eq!(printable(&"x".repeat(500)).len(), CLIENT_FIELD_CHARS);
    }
}

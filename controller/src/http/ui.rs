//! `GET /ui/pipelines/{pipeline}/releases/{id}`: the page a release's notifications, approval
//! emails and GitHub deployment statuses link to.
//!
//! Read-only: shows the release (commit, author, image digest, whether it was marked bad), each
//! stage's run with its status and reason, and the release's entries in the event log. Every
//! value is HTML-escaped; nothing secret is stored, so nothing secret can show.
//!
//! Must never: change state (a GET is safe) or render a value unescaped.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;

use crate::domain::ReleaseId;
use crate::engine::Engine;
use crate::http::approvals::{commit_html, esc, page, time};

pub fn routes(engine: Engine) -> Router {
    Router::new()
        .route("/ui/pipelines/{pipeline}/releases/{id}", get(release_page))
        .with_state(engine)
}

async fn release_page(
    State(engine): State<Engine>,
    Path((pipeline, id)): Path<(String, String)>,
) -> Response {
    let Ok(id) = id.parse::<ReleaseId>() else {
        return page(StatusCode::NOT_FOUND, "No such release", String::new());
    };
    match render(&engine, &pipeline, id).await {
        Ok(Some(html)) => page(StatusCode::OK, &format!("{pipeline} {id}"), html),
        Ok(None) => page(
            StatusCode::NOT_FOUND,
            "No such release",
            format!("<p>Pipeline {} has no release {id}.</p>", esc(&pipeline)),
        ),
        Err(e) => {
            tracing::error!(error = %e, "release page failed");
            page(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Something went wrong",
                "<p>The state database could not be read; try again in a minute.</p>".into(),
            )
        }
    }
}

async fn render(
    engine: &Engine,
    pipeline: &str,
    id: ReleaseId,
) -> Result<Option<String>, crate::store::StoreError> {
    let store = engine.reads();
    let now = engine.now();
    let Some(r) = store.release(id).await?.filter(|r| r.pipeline == pipeline) else {
        return Ok(None);
    };
    let mut html = String::new();
    let commit = commit_html(engine, &r);
    html.push_str(&format!(
        "<p>Commit {commit} on {} by {} &lt;{}&gt;<br>{}</p>",
        esc(&r.branch),
        esc(&r.author_name),
        esc(&r.author_email),
        esc(&r.message)
    ));
    html.push_str(&format!(
        "<p>Image: <code>{}</code></p>",
        esc(r.digest.as_deref().unwrap_or("not resolved yet"))
    ));
    if let Some(bad) = &r.bad {
        html.push_str(&format!(
            "<p><strong>Marked bad in {}</strong>: {}. It is never promoted again \
             automatically.</p>",
            esc(&bad.stage),
            esc(&bad.reason.describe(now))
        ));
    }
    if let Some(why) = &r.failed {
        html.push_str(&format!(
            "<p><strong>Not promoted</strong>: {}</p>",
            esc(why)
        ));
    }
    html.push_str(
        "<h2>Stages</h2><table><tr><th>stage</th><th>status</th><th>since</th><th>why</th></tr>",
    );
    let mut runs = store.stage_runs_of(id).await?;
    if let Some(p) = engine.config().pipeline(pipeline) {
        p.sort_runs(&mut runs);
    }
    for run in runs {
        html.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&run.stage),
            esc(run.status.as_str()),
            time(run.since),
            esc(&run.reason.describe(now))
        ));
    }
    html.push_str("</table><h2>Event log</h2><table><tr><th>time</th><th>stage</th><th>kind</th><th>who</th><th>what</th></tr>");
    for e in store.release_events(pipeline, id).await? {
        html.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            e.at.format("%H:%M:%S%.3f"),
            esc(e.stage.as_deref().unwrap_or("")),
            esc(&e.kind),
            esc(&e.actor),
            esc(&e.detail)
        ));
    }
    html.push_str("</table>");
    Ok(Some(html))
}

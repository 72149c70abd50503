//! `GET /ui/pipelines/{pipeline}/releases/{id}`, the page notifications and GitHub link to,
//! over a real SQLite store after a promotion with the engine's fakes.

use crate::engine_support;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use engine_support::*;
use http_body_util::BodyExt;
use tollgate::domain::{Decision, RunStatus};
use tollgate::engine::{Ingested, NewRelease};
use tower::ServiceExt;

async fn get(app: &axum::Router, uri: &str) -> (StatusCode, String) {
    let r = app
        .clone()
        .oneshot(Request::get(uri).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = r.status();
    let body = r.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn the_release_page_shows_each_stage_and_the_event_log_escaped() {
    let h = Harness::new();
    let engine = h.engine(None).await;
    let mut r = release(1);
    r.message = "Fix <script>alert(1)</script> & more".into();
    let Ingested::Recorded(id) = engine
        .record_release(&NewRelease { ..r }, &delivery("push-1"))
        .await
        .unwrap()
    else {
        panic!()
    };
    settle(&engine).await.unwrap();
    engine
        .record_approval(&approval(id, "alice", Decision::Approve), &delivery("a1"))
        .await
        .unwrap();
    settle(&engine).await.unwrap();
    assert_eq!(status(&engine, id, "prod").await, RunStatus::Baking);

    let app = tollgate::http::ui::routes(engine.clone());
    let (code, html) = get(&app, &format!("/ui/pipelines/backend/releases/{}", id.0)).await;
    assert_eq!(code, StatusCode::OK);
    assert!(
        html.contains("<title>backend r1 · tollgate</title>"),
        "{html}"
    );
    assert!(html.contains("Fix &lt;script&gt;alert(1)&lt;/script&gt; &amp; more"));
    assert!(!html.contains("<script>"));
    for (stage, status) in [
        ("beta", "succeeded"),
        ("gamma", "succeeded"),
        ("prod", "baking"),
    ] {
        assert!(
            html.contains(&format!("<tr><td>{stage}</td><td>{status}</td>")),
            "{stage} {status}: {html}"
        );
    }
    assert!(
        html.contains("alice approves"),
        "the event log is on the page"
    );
    assert!(html.contains(&sha(1)));
}

#[tokio::test]
async fn unknown_releases_and_other_pipelines_are_not_found() {
    let h = Harness::new();
    let engine = h.engine(None).await;
    engine
        .record_release(&release(1), &delivery("push-1"))
        .await
        .unwrap();
    let app = tollgate::http::ui::routes(engine);
    for uri in [
        "/ui/pipelines/backend/releases/99",
        "/ui/pipelines/frontend/releases/1",
        "/ui/pipelines/backend/releases/x%3Cb%3E",
    ] {
        let (code, html) = get(&app, uri).await;
        assert_eq!(code, StatusCode::NOT_FOUND, "{uri}");
        assert!(!html.contains("<b>"), "{uri}");
    }
    let (code, _) = get(&app, "/ui/pipelines/backend/releases/r1").await;
    assert_eq!(code, StatusCode::OK, "r1 and 1 both name release 1");
}

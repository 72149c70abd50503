//! The command line against a running controller's API: `--server URL` (`TOLLGATE_SERVER`)
//! with the key in `TOLLGATE_API_KEY`: the only way `status`, `history`, `pause`, `resume`,
//! `rollback`, `retry`, `override`, `approve`, `reject` and `promote` run.
//!
//! Owns the HTTP client ([`Client`]), the request of each act ([`Remote`]) and what a failed
//! call means for the exit code ([`Failure`]). On success, acts print the detail the API's
//! shared code ([`crate::cli::control::carry_out`]) wrote; reads are rendered by
//! [`crate::cli::status`] from the API's views.
//!
//! Exit codes: 0 done, 1 refused (the API answered 4xx: the problem's title and detail are
//! printed), 2 could not run (no key, the server unreachable or failing).
//!
//! Must never: take the key from a flag (it would be in the shell history and `ps`), or print it.

use std::io::Write;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::cli::control::Control;
use crate::engine::Override;
use crate::http::api::views::Done;

/// How long one request may take.
const TIMEOUT: Duration = Duration::from_secs(30);

/// Why a call did not succeed, with the line to print (already prefixed `error:`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The request was refused (a 4xx from the API, or a local check): exit 1.
    Refused(String),
    /// The command could not run (no key, unreachable, a 5xx, an unreadable file): exit 2.
    CannotRun(String),
}

impl Failure {
    pub fn code(&self) -> i32 {
        match self {
            Failure::Refused(_) => 1,
            Failure::CannotRun(_) => 2,
        }
    }

    pub fn message(&self) -> &str {
        match self {
            Failure::Refused(m) | Failure::CannotRun(m) => m,
        }
    }

    /// Prints the message on `err`; returns the exit code.
    pub fn report(&self, err: &mut dyn Write) -> i32 {
        let _ = writeln!(err, "{}", self.message());
        self.code()
    }
}

/// A client of one controller's API with one key.
#[derive(Clone)]
pub struct Client {
    server: String,
    key: String,
    http: reqwest::Client,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

/// A path segment, percent-encoded.
fn seg(s: &str) -> String {
    urlencoding::encode(s).into_owned()
}

impl Client {
    /// A client of `server` with `key` (from `TOLLGATE_API_KEY`); no key is a [`Failure::CannotRun`].
    pub fn new(server: &str, key: Option<&str>) -> Result<Client, Failure> {
        let Some(key) = key.filter(|k| !k.is_empty()) else {
            return Err(Failure::CannotRun(
                "error: set TOLLGATE_API_KEY to an API key (made with `tollgate keys create`)"
                    .into(),
            ));
        };
        let http = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .build()
            .map_err(|e| Failure::CannotRun(format!("error: {e}")))?;
        Ok(Client {
            server: server.trim_end_matches('/').to_owned(),
            key: key.to_owned(),
            http,
        })
    }

    /// `GET path` (with its query), decoded.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, Failure> {
        let sent = self
            .http
            .get(format!("{}{path}", self.server))
            .bearer_auth(&self.key)
            .send()
            .await;
        self.answer(sent).await
    }

    /// `POST path` with `body` and a fresh `Idempotency-Key`.
    pub async fn post(&self, path: &str, body: Option<Value>) -> Result<Done, Failure> {
        // One idempotency key per invocation: a retry inside the client cannot act twice.
        let mut request = self
            .http
            .post(format!("{}{path}", self.server))
            .bearer_auth(&self.key)
            .header("idempotency-key", format!("cli-{}", uuid_like()));
        if let Some(body) = body {
            request = request.json(&body);
        }
        self.answer(request.send().await).await
    }

    async fn answer<T: DeserializeOwned>(
        &self,
        sent: reqwest::Result<reqwest::Response>,
    ) -> Result<T, Failure> {
        let answer = sent.map_err(|e| {
            Failure::CannotRun(format!(
                "error: cannot reach {}: {}",
                self.server,
                e.without_url()
            ))
        })?;
        let status = answer.status();
        let text = answer.text().await.unwrap_or_default();
        if status.is_success() {
            return serde_json::from_str(&text).map_err(|e| {
                Failure::CannotRun(format!(
                    "error: {} answered what is not the API: {e}",
                    self.server
                ))
            });
        }
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let field = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
        let line = match (field("title"), field("detail")) {
            (t, d) if t.is_empty() && d.is_empty() => {
                format!("error: {} answered {status}", self.server)
            }
            (t, d) => format!("error: {t}: {d}"),
        };
        Err(if status.is_client_error() {
            Failure::Refused(line)
        } else {
            Failure::CannotRun(line)
        })
    }
}

/// An act to ask the server for.
#[derive(Debug, Clone)]
pub enum Remote {
    Decide {
        pipeline: String,
        release: String,
        stage: String,
        approve: bool,
        comment: Option<String>,
    },
    Promote {
        pipeline: String,
        sha: String,
    },
    /// `pause`, `resume`, `rollback`, `retry`, `override`: the request the API carries out
    /// with [`crate::cli::control::carry_out`].
    Control(Control),
}

impl Remote {
    /// The route and the body.
    fn request(&self) -> (String, Option<Value>) {
        let p = |pipeline: &str| format!("/api/v1/pipelines/{}", seg(pipeline));
        match self {
            Remote::Decide {
                pipeline,
                release,
                stage,
                approve,
                comment,
            } => (
                format!(
                    "{}/releases/{}/stages/{}/{}",
                    p(pipeline),
                    seg(release),
                    seg(stage),
                    if *approve { "approve" } else { "reject" }
                ),
                Some(json!({ "comment": comment })),
            ),
            Remote::Promote { pipeline, sha } => (
                format!("{}/promote", p(pipeline)),
                Some(json!({ "sha": sha })),
            ),
            Remote::Control(c) => control_request(c, p),
        }
    }
}

fn control_request(c: &Control, p: impl Fn(&str) -> String) -> (String, Option<Value>) {
    match c {
        Control::Pause {
            pipeline,
            stage,
            reason,
        } => (
            format!("{}/pause", p(pipeline)),
            Some(json!({ "stage": stage, "reason": reason })),
        ),
        Control::Resume {
            pipeline,
            stage,
            reason,
        } => (
            format!("{}/resume", p(pipeline)),
            // The API requires a reason: without one it answers 400 and says so.
            Some(json!({ "stage": stage, "reason": reason.clone().unwrap_or_default() })),
        ),
        Control::Rollback { pipeline, stage } => (
            format!("{}/stages/{}/rollback", p(pipeline), seg(stage)),
            None,
        ),
        Control::Retry { pipeline, release } => (
            format!("{}/releases/{}/retry", p(pipeline), seg(release)),
            None,
        ),
        Control::Override {
            pipeline,
            release,
            which,
            reason,
        } => {
            let which = match which {
                Override::Alarms => "alarms",
                Override::Window => "window",
            };
            (
                format!("{}/releases/{}/override", p(pipeline), seg(release)),
                Some(json!({ "which": which, "reason": reason })),
            )
        }
    }
}

/// Sends `r` to `server` with `key` and prints what the server did; returns the exit code.
pub async fn run(
    server: &str,
    key: Option<&str>,
    r: &Remote,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> i32 {
    let client = match Client::new(server, key) {
        Ok(c) => c,
        Err(f) => return f.report(err),
    };
    let (path, body) = r.request();
    match client.post(&path, body).await {
        Ok(done) => {
            let _ = writeln!(out, "{}", done.detail);
            0
        }
        Err(f) => f.report(err),
    }
}

fn uuid_like() -> String {
    use rand::RngCore;
    let mut b = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_control_goes_to_its_route_with_its_body_and_names_are_encoded() {
        let c = |c: Control| Remote::Control(c).request();
        let (path, body) = c(Control::Pause {
            pipeline: "a b".into(),
            stage: Some("prod".into()),
            reason: "freeze".into(),
        });
        assert_eq!(path, "/api/v1/pipelines/a%20b/pause");
        assert_eq!(body, Some(json!({"stage": "prod", "reason": "freeze"})));
        let (path, body) = c(Control::Resume {
            pipeline: "p".into(),
            stage: None,
            reason: None,
        });
        assert_eq!(path, "/api/v1/pipelines/p/resume");
        assert_eq!(body, Some(json!({"stage": null, "reason": ""})));
        let (path, body) = c(Control::Rollback {
            pipeline: "p".into(),
            stage: "prod".into(),
        });
        assert_eq!(
            (path.as_str(), body),
            ("/api/v1/pipelines/p/stages/prod/rollback", None)
        );
        let (path, _) = c(Control::Retry {
            pipeline: "p".into(),
            release: "r3".into(),
        });
        assert_eq!(path, "/api/v1/pipelines/p/releases/r3/retry");
        let (path, body) = c(Control::Override {
            pipeline: "p".into(),
            release: "4".into(),
            which: Override::Window,
            reason: "hotfix".into(),
        });
        assert_eq!(path, "/api/v1/pipelines/p/releases/4/override");
        assert_eq!(body, Some(json!({"which": "window", "reason": "hotfix"})));
    }

    /// A loopback server that answers every request with `status` and `body`, as a problem.
    async fn answering(status: &'static str, body: &'static str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let mut buf = [0u8; 4096];
                let _ = socket.read(&mut buf).await;
                let answer = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/problem+json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(answer.as_bytes()).await;
            }
        });
        url
    }

    #[tokio::test]
    async fn a_4xx_is_refused_and_a_5xx_or_no_server_cannot_run_each_with_the_problem() {
        let problem = r#"{"title":"Temporarily unavailable","detail":"GitHub did not answer"}"#;
        let url = answering("503 Service Unavailable", problem).await;
        let c = Client::new(&url, Some("tg_k")).unwrap();
        let f = c
            .post("/api/v1/pipelines/p/promote", None)
            .await
            .unwrap_err();
        let said = "error: Temporarily unavailable: GitHub did not answer";
        assert_eq!(f, Failure::CannotRun(said.into()));
        let problem = r#"{"title":"Not found","detail":"there is no pipeline `p`"}"#;
        let url = answering("404 Not Found", problem).await;
        let c = Client::new(&url, Some("tg_k")).unwrap();
        let f = c.get::<Value>("/api/v1/pipelines/p").await.unwrap_err();
        let said = "error: Not found: there is no pipeline `p`";
        assert_eq!((f.code(), f.message()), (1, said));
        let url = answering("502 Bad Gateway", "<html>proxy</html>").await;
        let c = Client::new(&url, Some("tg_k")).unwrap();
        let f = c.get::<Value>("/api/v1/pipelines").await.unwrap_err();
        assert_eq!(f.code(), 2);
        assert!(f.message().contains("answered 502 Bad Gateway"), "{f:?}");
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", closed.local_addr().unwrap());
        drop(closed);
        let c = Client::new(&url, Some("tg_k")).unwrap();
        let f = c.get::<Value>("/api/v1/pipelines").await.unwrap_err();
        assert_eq!(f.code(), 2);
        assert!(
            f.message()
                .starts_with("error: cannot reach http://127.0.0.1:"),
            "{f:?}"
        );
        assert!(!f.message().contains("tg_k"));
    }

    #[test]
    fn no_key_cannot_run_and_says_where_the_key_comes_from() {
        for key in [None, Some("")] {
            let f = Client::new("http://127.0.0.1:9", key).unwrap_err();
            assert_eq!(f.code(), 2);
            assert!(f.message().contains("TOLLGATE_API_KEY"), "{f:?}");
        }
    }
}

//! The command line against a running controller's API: `tollgate approve`, `reject` and
//! `promote` with `--server URL` (`TOLLGATE_SERVER`) and the key in `TOLLGATE_API_KEY`.
//!
//! Exit codes: 0 done, 1 refused (the API answered 4xx: the problem's title and detail are
//! printed), 2 could not run (no key, the server unreachable or failing).
//!
//! Must never: take the key from a flag (it would be in the shell history and `ps`), or print it.

use std::io::Write;
use std::time::Duration;

use serde_json::{Value, json};

/// How long one request may take.
const TIMEOUT: Duration = Duration::from_secs(30);

/// What to ask the server for.
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
}

impl Remote {
    fn request(&self) -> (String, Value) {
        let seg = |s: &str| urlencoding::encode(s).into_owned();
        match self {
            Remote::Decide {
                pipeline,
                release,
                stage,
                approve,
                comment,
            } => (
                format!(
                    "/api/v1/pipelines/{}/releases/{}/stages/{}/{}",
                    seg(pipeline),
                    seg(release),
                    seg(stage),
                    if *approve { "approve" } else { "reject" }
                ),
                json!({ "comment": comment }),
            ),
            Remote::Promote { pipeline, sha } => (
                format!("/api/v1/pipelines/{}/promote", seg(pipeline)),
                json!({ "sha": sha }),
            ),
        }
    }
}

/// Sends `r` to `server` with `key`; returns the exit code.
pub async fn run(
    server: &str,
    key: Option<&str>,
    r: &Remote,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> i32 {
    let Some(key) = key.filter(|k| !k.is_empty()) else {
        let _ = writeln!(
            err,
            "error: set TOLLGATE_API_KEY to an API key (made with `tollgate keys create`)"
        );
        return 2;
    };
    let (path, body) = r.request();
    let url = format!("{}{path}", server.trim_end_matches('/'));
    let http = match reqwest::Client::builder().timeout(TIMEOUT).build() {
        Ok(h) => h,
        Err(e) => {
            let _ = writeln!(err, "error: {e}");
            return 2;
        }
    };
    // One idempotency key per invocation: a retry inside the client cannot act twice.
    let idempotency = format!("cli-{}", uuid_like());
    let sent = http
        .post(&url)
        .bearer_auth(key)
        .header("idempotency-key", idempotency)
        .json(&body)
        .send()
        .await;
    let answer = match sent {
        Ok(a) => a,
        Err(e) => {
            let _ = writeln!(err, "error: cannot reach {server}: {}", e.without_url());
            return 2;
        }
    };
    let status = answer.status();
    let text = answer.text().await.unwrap_or_default();
    let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    let field = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
    if status.is_success() {
        let _ = writeln!(out, "{}", field("detail"));
        return 0;
    }
    let _ = writeln!(err, "error: {}: {}", field("title"), field("detail"));
    if status.is_client_error() { 1 } else { 2 }
}

fn uuid_like() -> String {
    use rand::RngCore;
    let mut b = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

//! A loopback proxy in front of moto that keeps new `email` subscriptions pending
//! confirmation, as SNS does.
//!
//! Covers a moto 5.2 gap (`moto/sns/models.py`, `SNSBackend.subscribe`): moto confirms
//! every subscription at once. Its attributes say `PendingConfirmation` `false`, and
//! `ListSubscriptionsByTopic` lists it with its ARN. SNS does not: an `email` subscription
//! stays pending until the address's owner follows the link in AWS's confirmation email;
//! until then `ListSubscriptionsByTopic` lists it with the `SubscriptionArn`
//! `PendingConfirmation`, and SNS delivers nothing to it ("Email notifications",
//! <https://docs.aws.amazon.com/sns/latest/dg/sns-email-notifications.html>; `Subscribe`,
//! <https://docs.aws.amazon.com/sns/latest/api/API_Subscribe.html>: with
//! `ReturnSubscriptionArn`, the ARN is returned while the subscription is still pending).
//!
//! So the proxy forwards every request to moto unchanged, remembers the endpoint of every
//! `email` `Subscribe` it forwards as pending, and answers `ListSubscriptionsByTopic` with
//! `PendingConfirmation` as the `SubscriptionArn` of that endpoint's `email` subscriptions
//! until [`SnsProxy::confirm`] (the owner clicked the link). Subscriptions made on moto
//! directly are confirmed. Not modelled: a pending subscription's attributes
//! (`GetSubscriptionAttributes` answers as moto does) and delivery: moto keeps every message
//! published to a topic, whoever its subscribers are. Never used by the controller at run
//! time; binds 127.0.0.1 only, forwards to loopback only.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

use super::proxy::{Upstream, listen};

/// What `ListSubscriptionsByTopic` says instead of the ARN of a pending subscription.
pub const PENDING: &str = "PendingConfirmation";

struct Shared {
    upstream: Upstream,
    /// `email` endpoints subscribed through the proxy and not confirmed, lowercased.
    pending: Mutex<BTreeSet<String>>,
}

/// The proxy; stopped when dropped.
pub struct SnsProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

impl SnsProxy {
    /// Listens on a free loopback port, in the current tokio runtime, and forwards to
    /// `upstream` (`http://127.0.0.1:<port>`, moto).
    pub async fn start(upstream: &str) -> anyhow::Result<Self> {
        let shared = Arc::new(Shared {
            upstream: Upstream::new(upstream)?,
            pending: Mutex::new(BTreeSet::new()),
        });
        let app = Router::new().fallback(forward).with_state(shared.clone());
        let (addr, server) = listen(app, "SNS").await?;
        Ok(Self {
            addr,
            shared,
            server,
        })
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The owner of `email` followed the link in AWS's confirmation email: its
    /// subscriptions are listed with their ARNs from now on.
    pub fn confirm(&self, email: &str) {
        self.shared
            .pending
            .lock()
            .unwrap()
            .remove(&email.to_ascii_lowercase());
    }

    /// The `email` endpoints whose subscriptions are pending confirmation, lowercased.
    pub fn pending(&self) -> Vec<String> {
        self.shared
            .pending
            .lock()
            .unwrap()
            .iter()
            .cloned()
            .collect()
    }
}

impl Drop for SnsProxy {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn forward(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match answer(&shared, method, &uri, &headers, body).await {
        Ok(response) => response,
        Err(e) => (StatusCode::BAD_GATEWAY, format!("SNS proxy: {e:#}")).into_response(),
    }
}

async fn answer(
    shared: &Shared,
    method: Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Bytes,
) -> anyhow::Result<Response> {
    let form: Vec<(String, String)> = url::form_urlencoded::parse(&body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let param = |name: &str| {
        form.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let action = param("Action").unwrap_or_default().to_owned();
    let email = (action == "Subscribe" && param("Protocol") == Some("email"))
        .then(|| param("Endpoint").map(str::to_ascii_lowercase))
        .flatten();
    let (status, out, answer) = shared
        .upstream
        .send(method, uri, headers, body.clone())
        .await?;
    if let Some(email) = email.filter(|_| status.is_success()) {
        shared.pending.lock().unwrap().insert(email);
    }
    if action != "ListSubscriptionsByTopic" || !status.is_success() {
        return Ok((status, out, answer).into_response());
    }
    let pending = shared.pending.lock().unwrap().clone();
    let listed = mark_pending(&String::from_utf8_lossy(&answer), &pending);
    Ok((status, out, listed).into_response())
}

/// The listing with `PendingConfirmation` as the `SubscriptionArn` of each `email`
/// subscription whose endpoint is pending.
fn mark_pending(xml: &str, pending: &BTreeSet<String>) -> String {
    let mut out = String::with_capacity(xml.len());
    let mut rest = xml;
    while let Some(start) = rest.find("<member>") {
        let Some(len) = rest[start..].find("</member>") else {
            break;
        };
        let (before, member) = (&rest[..start], &rest[start..start + len]);
        out.push_str(before);
        let email = element(member, "Protocol") == Some("email");
        let endpoint = element(member, "Endpoint").map(str::to_ascii_lowercase);
        match (email, endpoint, element(member, "SubscriptionArn")) {
            (true, Some(e), Some(arn)) if pending.contains(&e) => {
                out.push_str(&member.replacen(arn, PENDING, 1));
            }
            _ => out.push_str(member),
        }
        rest = &rest[start + len..];
    }
    out.push_str(rest);
    out
}

/// The text of `<name>…</name>` in `xml`, if there is one.
fn element<'a>(xml: &'a str, name: &str) -> Option<&'a str> {
    let open = format!("<{name}>");
    let from = xml.find(&open)? + open.len();
    let len = xml[from..].find(&format!("</{name}>"))?;
    Some(&xml[from..from + len])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_pending_email_endpoints_lose_their_arn() {
        let member = |arn: &str, protocol: &str, endpoint: &str| {
            format!(
                "<member><SubscriptionArn>{arn}</SubscriptionArn><Protocol>{protocol}</Protocol><Endpoint>{endpoint}</Endpoint></member>"
            )
        };
        let xml = format!(
            "<Subscriptions>{}{}{}</Subscriptions>",
            member("arn:a", "email", "Bob@Example.com"),
            member("arn:b", "email", "alice@example.com"),
            member("arn:c", "http", "bob@example.com"),
        );
        let pending = BTreeSet::from(["bob@example.com".to_string()]);
        assert_eq!(
            mark_pending(&xml, &pending),
            format!(
                "<Subscriptions>{}{}{}</Subscriptions>",
                member(PENDING, "email", "Bob@Example.com"),
                member("arn:b", "email", "alice@example.com"),
                member("arn:c", "http", "bob@example.com"),
            )
        );
    }
}

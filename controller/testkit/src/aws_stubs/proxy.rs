//! What the loopback proxies in front of moto share ([`super::ecr::EcrProxy`],
//! [`super::sns::SnsProxy`]): the upstream they forward to, and their listener.
//!
//! Must never: forward beyond loopback, or listen beyond it.

use std::net::{Ipv4Addr, SocketAddr};

use anyhow::{Context as _, ensure};
use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};

/// moto, as a proxy forwards to it.
pub(crate) struct Upstream {
    url: String,
    http: reqwest::Client,
}

impl Upstream {
    /// `url`: `http://127.0.0.1:<port>`; anything else is refused.
    pub(crate) fn new(url: &str) -> anyhow::Result<Upstream> {
        ensure!(
            url.starts_with("http://127.0.0.1:"),
            "the proxy forwards to loopback only, not {url}"
        );
        Ok(Upstream {
            url: url.trim_end_matches('/').to_owned(),
            http: reqwest::Client::builder().no_proxy().build()?,
        })
    }

    /// Sends the request on as it came (without its hop-by-hop headers) and returns moto's
    /// answer, ready to be answered in turn.
    pub(crate) async fn send(
        &self,
        method: Method,
        uri: &Uri,
        headers: &HeaderMap,
        body: Bytes,
    ) -> anyhow::Result<(StatusCode, HeaderMap, Bytes)> {
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.url))
            .body(body);
        for (name, value) in headers {
            if !matches!(name.as_str(), "host" | "content-length" | "connection") {
                request = request.header(name, value);
            }
        }
        let response = request.send().await.context("forwarding to moto")?;
        let status = response.status();
        let mut out = response.headers().clone();
        for name in ["content-length", "transfer-encoding", "connection"] {
            out.remove(name);
        }
        Ok((status, out, response.bytes().await?))
    }
}

/// Serves `app` on a free loopback port, in the current tokio runtime: the address, and the
/// server task (aborted by the proxy when dropped). `what` names the proxy in errors.
pub(crate) async fn listen(
    app: Router,
    what: &str,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .with_context(|| format!("binding the {what} proxy"))?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((addr, server))
}

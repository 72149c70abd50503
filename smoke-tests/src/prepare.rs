//! Turning a suite and run options into ready-to-send requests before anything is sent:
//! `${VAR}` substitution, URL joining and header building. Any problem here stops the run
//! with a [`RunError`], so a half-configured suite never reaches a stage.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, Url};

use crate::error::RunError;
use crate::expect::Expectations;
use crate::suite::{Check, RequestBody, Suite};
use crate::vars::VarError;

/// One check, fully resolved and ready to send.
#[derive(Debug, Clone)]
pub(crate) struct Prepared {
    pub name: String,
    pub method: Method,
    pub url: Url,
    pub headers: HeaderMap,
    pub body: Option<Vec<u8>>,
    pub timeout: Duration,
    pub retries: u32,
    pub backoff: Duration,
    pub samples: u32,
    pub expect: Expectations,
}

impl Prepared {
    /// `GET https://host/path`, for messages.
    pub fn request_line(&self) -> String {
        format!("{} {}", self.method, self.url)
    }
}

/// Resolves every check of `suite`, or says why the run cannot start.
pub(crate) fn prepare(
    suite: &Suite,
    base_url: &str,
    env: &BTreeMap<String, String>,
) -> Result<Vec<Prepared>, RunError> {
    let base = normalize_base_url(base_url)?;
    suite
        .checks
        .iter()
        .map(|check| prepare_check(check, &base, env, &suite.origin))
        .collect()
}

/// Checks that `text` is an absolute http(s) URL and drops a trailing `/`.
fn normalize_base_url(text: &str) -> Result<String, RunError> {
    let invalid = |reason: &str| RunError::BaseUrl {
        url: text.to_string(),
        reason: reason.to_string(),
    };
    let url = Url::parse(text).map_err(|err| invalid(&err.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid("the scheme must be http or https"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid("a base URL takes no query or fragment"));
    }
    Ok(text.trim_end_matches('/').to_string())
}

fn prepare_check(
    check: &Check,
    base: &str,
    env: &BTreeMap<String, String>,
    origin: &str,
) -> Result<Prepared, RunError> {
    let resolved = check
        .substituted(&mut |name| env.get(name).cloned())
        .map_err(|(field, err)| variable_error(origin, check, field, err))?;
    let request_error = |message: String| RunError::Request {
        origin: origin.to_string(),
        check: check.name.clone(),
        message,
    };
    let url = Url::parse(&format!("{base}{}", resolved.path))
        .map_err(|err| request_error(format!("invalid URL {base}{}: {err}", resolved.path)))?;
    let (headers, body) = headers_and_body(&resolved).map_err(request_error)?;
    Ok(Prepared {
        name: resolved.name,
        method: resolved.method,
        url,
        headers,
        body,
        timeout: resolved.timeout,
        retries: resolved.retries,
        backoff: resolved.backoff,
        samples: resolved.samples,
        expect: Expectations {
            status: resolved.expect_status,
            body_contains: resolved.body_contains,
            json: resolved.json,
            max_latency: resolved.max_latency,
        },
    })
}

fn variable_error(origin: &str, check: &Check, field: String, err: VarError) -> RunError {
    match err {
        VarError::Unknown(name) => RunError::UnknownVariable {
            origin: origin.to_string(),
            check: check.name.clone(),
            field,
            name,
        },
        VarError::Syntax(message) => RunError::Request {
            origin: origin.to_string(),
            check: check.name.clone(),
            message: format!("{field}: {message}"),
        },
    }
}

/// The request headers and encoded body; a JSON body gets its content type unless one is set.
fn headers_and_body(check: &Check) -> Result<(HeaderMap, Option<Vec<u8>>), String> {
    let mut headers = HeaderMap::new();
    for (name, value) in &check.headers {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("invalid header name {name:?}"))?;
        let value = HeaderValue::from_str(value)
            .map_err(|_| format!("header {name}: {value:?} is not a valid header value"))?;
        headers.insert(name, value);
    }
    let body = match &check.body {
        None => None,
        Some(RequestBody::Text(text)) => Some(text.clone().into_bytes()),
        Some(RequestBody::Json(value)) => {
            if !headers.contains_key(CONTENT_TYPE) {
                headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            }
            Some(value.to_string().into_bytes())
        }
    };
    Ok((headers, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_are_checked_and_normalized() {
        let table = [
            ("http://127.0.0.1:8080", Ok("http://127.0.0.1:8080")),
            ("http://127.0.0.1:8080/", Ok("http://127.0.0.1:8080")),
            ("https://h.example/stage/", Ok("https://h.example/stage")),
            ("ftp://h.example", Err(())),
            ("127.0.0.1:8080", Err(())),
            ("http://h.example/?a=1", Err(())),
        ];
        for (text, want) in table {
            let got = normalize_base_url(text);
            assert_eq!(got.as_deref().map_err(|_| ()), want, "{text}");
        }
    }
}

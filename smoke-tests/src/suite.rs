//! The suite file: its TOML shape, the rules that span several fields, and the checked
//! [`Suite`] the runner executes. Reads the suite file; never touches the network.
//!
//! Per-value rules (ranges, methods, durations, `${VAR}` syntax) are enforced while parsing by
//! the types in `fields`, so their errors carry the value's own `line:col`.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use reqwest::Method;
use serde::Deserialize;
use serde_json::Value;
use toml::Spanned;

use crate::duration::HumanDuration;
use crate::error::{Location, SuiteError};
use crate::fields::{
    Bounded, Headers, JsonTemplate, MethodName, NonZeroDuration, PathTemplate, Pointer, Template,
};
use crate::vars::{self, VarError};

/// A loaded, valid smoke-test suite.
#[derive(Debug, Clone)]
pub struct Suite {
    pub name: String,
    /// The file (or label) the suite came from, used in every message.
    pub origin: String,
    pub defaults: Defaults,
    pub checks: Vec<Check>,
}

/// `[defaults]`: what every check uses unless it says otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Defaults {
    /// Per request. Default 5s.
    pub timeout: Duration,
    /// Extra attempts for a failing check. Default 0.
    pub retries: u32,
    /// Wait before the first retry; doubles each time, capped at 10s. Default 500ms.
    pub backoff: Duration,
    pub headers: BTreeMap<String, String>,
}

impl Default for Defaults {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(5),
            retries: 0,
            backoff: Duration::from_millis(500),
            headers: BTreeMap::new(),
        }
    }
}

/// A request body.
#[derive(Debug, Clone, PartialEq)]
pub enum RequestBody {
    /// `body = "..."`, sent as is.
    Text(String),
    /// `body_json = { ... }`, sent with `Content-Type: application/json` unless a header says otherwise.
    Json(Value),
}

/// One `[[check]]`, with the defaults already applied.
#[derive(Debug, Clone)]
pub struct Check {
    pub name: String,
    pub method: Method,
    /// Starts with `/`; joined to the base URL.
    pub path: String,
    /// The default headers merged with the check's own (the check wins, names compared without case).
    pub headers: BTreeMap<String, String>,
    pub body: Option<RequestBody>,
    pub expect_status: u16,
    pub body_contains: Vec<String>,
    /// JSON pointer → expected JSON value.
    pub json: BTreeMap<String, Value>,
    pub max_latency: Option<Duration>,
    pub samples: u32,
    pub timeout: Duration,
    pub retries: u32,
    pub backoff: Duration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSuite {
    name: Spanned<String>,
    #[serde(default)]
    defaults: RawDefaults,
    #[serde(default, rename = "check")]
    checks: Vec<RawCheck>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDefaults {
    timeout: Option<NonZeroDuration>,
    retries: Option<Bounded<0, 100>>,
    backoff: Option<HumanDuration>,
    #[serde(default)]
    headers: Headers,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCheck {
    name: Spanned<String>,
    method: Option<MethodName>,
    path: PathTemplate,
    #[serde(default)]
    headers: Headers,
    body: Option<Template>,
    body_json: Option<JsonTemplate>,
    expect_status: Option<Bounded<100, 599>>,
    #[serde(default)]
    body_contains: Vec<Template>,
    #[serde(default)]
    json: BTreeMap<Pointer, JsonTemplate>,
    max_latency: Option<NonZeroDuration>,
    samples: Option<Bounded<1, 10_000>>,
    timeout: Option<NonZeroDuration>,
    retries: Option<Bounded<0, 100>>,
}

/// The suite text being parsed, for turning spans into located errors.
struct Source<'a> {
    text: &'a str,
    origin: &'a str,
}

impl Source<'_> {
    fn error(&self, span: Option<Range<usize>>, message: impl Into<String>) -> SuiteError {
        SuiteError::Invalid {
            origin: self.origin.to_string(),
            location: span.map(|span| Location::of_span(self.text, span)),
            message: message.into(),
        }
    }
}

impl Suite {
    /// Reads and parses a suite file.
    pub fn load(path: impl AsRef<Path>) -> Result<Suite, SuiteError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| SuiteError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Suite::parse(&text, path)
    }

    /// Parses suite text; `origin` names it in messages (usually the file path).
    pub fn parse(text: &str, origin: impl AsRef<Path>) -> Result<Suite, SuiteError> {
        let origin = origin.as_ref().display().to_string();
        let source = Source {
            text,
            origin: &origin,
        };
        let raw: RawSuite =
            toml::from_str(text).map_err(|err| source.error(err.span(), err.message()))?;
        build_suite(raw, &source)
    }

    /// Every `${NAME}` the suite refers to.
    pub fn variables(&self) -> BTreeSet<String> {
        let mut names = BTreeSet::new();
        for check in &self.checks {
            let mut record = |name: &str| {
                names.insert(name.to_string());
                Some(String::new())
            };
            // Syntax was checked at load time and every name is known here, so this cannot fail.
            let _ = check.substituted(&mut record);
        }
        names
    }
}

fn build_suite(raw: RawSuite, source: &Source<'_>) -> Result<Suite, SuiteError> {
    if raw.name.get_ref().trim().is_empty() {
        return Err(source.error(Some(raw.name.span()), "the suite name must not be empty"));
    }
    if raw.checks.is_empty() {
        return Err(source.error(None, "the suite has no checks; add at least one [[check]]"));
    }
    let defaults = build_defaults(raw.defaults);
    let mut seen = BTreeSet::new();
    let mut checks = Vec::with_capacity(raw.checks.len());
    for check in raw.checks {
        if !seen.insert(check.name.get_ref().clone()) {
            let message = format!("duplicate check name {:?}", check.name.get_ref());
            return Err(source.error(Some(check.name.span()), message));
        }
        checks.push(build_check(check, &defaults, source)?);
    }
    let name = raw.name.into_inner();
    Ok(Suite {
        name,
        origin: source.origin.to_string(),
        defaults,
        checks,
    })
}

fn build_defaults(raw: RawDefaults) -> Defaults {
    let fallback = Defaults::default();
    Defaults {
        timeout: raw.timeout.map_or(fallback.timeout, |d| d.0),
        retries: raw.retries.map_or(fallback.retries, |n| n.0),
        backoff: raw.backoff.map_or(fallback.backoff, |d| d.0),
        headers: raw.headers.0,
    }
}

fn build_check(
    raw: RawCheck,
    defaults: &Defaults,
    source: &Source<'_>,
) -> Result<Check, SuiteError> {
    let span = raw.name.span();
    if raw.name.get_ref().trim().is_empty() {
        return Err(source.error(Some(span), "a check name must not be empty"));
    }
    let body = match (raw.body, raw.body_json) {
        (Some(_), Some(_)) => {
            let message = format!(
                "check {:?} sets both body and body_json; keep one",
                raw.name.get_ref()
            );
            return Err(source.error(Some(span), message));
        }
        (Some(Template(text)), None) => Some(RequestBody::Text(text)),
        (None, Some(JsonTemplate(value))) => Some(RequestBody::Json(value)),
        (None, None) => None,
    };
    Ok(Check {
        name: raw.name.into_inner(),
        method: raw.method.map_or(Method::GET, |m| m.0),
        path: raw.path.0,
        headers: merge_headers(&defaults.headers, raw.headers.0),
        body,
        expect_status: raw.expect_status.map_or(200, |s| s.0 as u16),
        body_contains: raw.body_contains.into_iter().map(|t| t.0).collect(),
        json: raw.json.into_iter().map(|(p, v)| (p.0, v.0)).collect(),
        max_latency: raw.max_latency.map(|d| d.0),
        samples: raw.samples.map_or(1, |n| n.0),
        timeout: raw.timeout.map_or(defaults.timeout, |d| d.0),
        retries: raw.retries.map_or(defaults.retries, |n| n.0),
        backoff: defaults.backoff,
    })
}

/// The defaults overlaid with a check's own headers; names are compared without case.
fn merge_headers(
    defaults: &BTreeMap<String, String>,
    own: BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut merged: BTreeMap<String, String> = defaults
        .iter()
        .filter(|(name, _)| !own.keys().any(|k| k.eq_ignore_ascii_case(name)))
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect();
    merged.extend(own);
    merged
}

impl Check {
    /// A copy with every `${NAME}` filled in through `lookup`; on failure, the field and why.
    pub(crate) fn substituted(
        &self,
        lookup: &mut dyn FnMut(&str) -> Option<String>,
    ) -> Result<Check, (String, VarError)> {
        let text = |field: &str, value: &str, lookup: &mut dyn FnMut(&str) -> Option<String>| {
            vars::expand(value, lookup).map_err(|err| (field.to_string(), err))
        };
        let mut out = self.clone();
        out.path = text("path", &self.path, lookup)?;
        for (name, value) in &mut out.headers {
            *value = text(&format!("header {name:?}"), value, lookup)?;
        }
        out.body = substituted_body(self.body.as_ref(), lookup)?;
        for (index, needle) in out.body_contains.iter_mut().enumerate() {
            *needle = text(&format!("body_contains[{index}]"), needle, lookup)?;
        }
        for (pointer, value) in &mut out.json {
            *value = vars::expand_json(value, lookup)
                .map_err(|err| (format!("json {pointer:?}"), err))?;
        }
        Ok(out)
    }
}

fn substituted_body(
    body: Option<&RequestBody>,
    lookup: &mut dyn FnMut(&str) -> Option<String>,
) -> Result<Option<RequestBody>, (String, VarError)> {
    Ok(match body {
        None => None,
        Some(RequestBody::Text(text)) => Some(RequestBody::Text(
            vars::expand(text, lookup).map_err(|err| ("body".to_string(), err))?,
        )),
        Some(RequestBody::Json(value)) => Some(RequestBody::Json(
            vars::expand_json(value, lookup).map_err(|err| ("body_json".to_string(), err))?,
        )),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_headers_override_defaults_ignoring_case() {
        let defaults = BTreeMap::from([
            ("User-Agent".to_string(), "a".to_string()),
            ("X-Keep".to_string(), "k".to_string()),
        ]);
        let own = BTreeMap::from([("user-agent".to_string(), "b".to_string())]);
        let merged = merge_headers(&defaults, own);
        assert_eq!(merged.len(), 2);
        assert_eq!(merged["user-agent"], "b");
        assert_eq!(merged["X-Keep"], "k");
    }
}

//! Suite field types that validate themselves while being deserialized, so that a bad value is
//! reported by the TOML parser at its own `line:col`. Owns the per-value rules (ranges, HTTP
//! methods, header names, JSON pointers, `${VAR}` syntax); cross-field rules live in `suite`.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::Method;
use reqwest::header::{HeaderName, HeaderValue};
use serde::{Deserialize, Deserializer, de::Error as _};
use serde_json::Value;

use crate::duration::HumanDuration;
use crate::vars::{self, VarError};

/// An integer that must lie in `MIN..=MAX`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bounded<const MIN: u32, const MAX: u32>(pub u32);

impl<'de, const MIN: u32, const MAX: u32> Deserialize<'de> for Bounded<MIN, MAX> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = i64::deserialize(deserializer)?;
        u32::try_from(value)
            .ok()
            .filter(|n| (MIN..=MAX).contains(n))
            .map(Bounded)
            .ok_or_else(|| {
                D::Error::custom(format!(
                    "expected a number from {MIN} to {MAX}, got {value}"
                ))
            })
    }
}

/// A duration that must be longer than zero.
#[derive(Debug, Clone, Copy)]
pub(crate) struct NonZeroDuration(pub Duration);

impl<'de> Deserialize<'de> for NonZeroDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let HumanDuration(duration) = HumanDuration::deserialize(deserializer)?;
        if duration.is_zero() {
            return Err(D::Error::custom("duration must be longer than zero"));
        }
        Ok(Self(duration))
    }
}

/// One of the usual HTTP methods, written in upper case.
#[derive(Debug, Clone)]
pub(crate) struct MethodName(pub Method);

const METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

impl<'de> Deserialize<'de> for MethodName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        if !METHODS.contains(&text.as_str()) {
            let known = METHODS.join(", ");
            return Err(D::Error::custom(format!(
                "unknown HTTP method {text:?}; use one of {known}"
            )));
        }
        Method::from_bytes(text.as_bytes())
            .map(MethodName)
            .map_err(D::Error::custom)
    }
}

/// A string that may hold `${NAME}` references, checked for syntax.
#[derive(Debug, Clone)]
pub(crate) struct Template(pub String);

impl<'de> Deserialize<'de> for Template {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        check_syntax(&text).map_err(D::Error::custom)?;
        Ok(Self(text))
    }
}

/// A request path: a template that starts with `/`.
#[derive(Debug, Clone)]
pub(crate) struct PathTemplate(pub String);

impl<'de> Deserialize<'de> for PathTemplate {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let Template(text) = Template::deserialize(deserializer)?;
        if !text.starts_with('/') {
            return Err(D::Error::custom(format!(
                "path {text:?} must start with \"/\"; it is joined to the base URL"
            )));
        }
        Ok(Self(text))
    }
}

/// A JSON value whose strings may hold `${NAME}` references.
#[derive(Debug, Clone)]
pub(crate) struct JsonTemplate(pub Value);

impl<'de> Deserialize<'de> for JsonTemplate {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        vars::expand_json(&value, &mut |_| Some(String::new())).map_err(|err| match err {
            VarError::Syntax(message) | VarError::Unknown(message) => D::Error::custom(message),
        })?;
        Ok(Self(value))
    }
}

/// A JSON pointer (RFC 6901): `""` for the whole document or `/a/b/0`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Pointer(pub String);

impl<'de> Deserialize<'de> for Pointer {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        if !text.is_empty() && !text.starts_with('/') {
            return Err(D::Error::custom(format!(
                "JSON pointer {text:?} must start with \"/\" (e.g. \"/status\"), or be \"\" for the whole body"
            )));
        }
        Ok(Self(text))
    }
}

/// Request headers: valid names, values that are valid once variables are filled in.
#[derive(Debug, Clone, Default)]
pub(crate) struct Headers(pub BTreeMap<String, String>);

impl<'de> Deserialize<'de> for Headers {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let table = BTreeMap::<String, Template>::deserialize(deserializer)?;
        for (name, Template(value)) in &table {
            check_header(name, value).map_err(D::Error::custom)?;
        }
        Ok(Self(
            table.into_iter().map(|(k, Template(v))| (k, v)).collect(),
        ))
    }
}

fn check_header(name: &str, value: &str) -> Result<(), String> {
    HeaderName::from_bytes(name.as_bytes()).map_err(|_| format!("invalid header name {name:?}"))?;
    let sample = vars::expand(value, &mut |_| Some("x".to_string()))
        .map_err(|_| format!("invalid header value {value:?}"))?;
    HeaderValue::from_str(&sample)
        .map(|_| ())
        .map_err(|_| format!("invalid value for header {name:?}: {value:?}"))
}

fn check_syntax(text: &str) -> Result<(), String> {
    match vars::expand(text, &mut |_| Some(String::new())) {
        Ok(_) => Ok(()),
        Err(VarError::Syntax(message) | VarError::Unknown(message)) => Err(message),
    }
}

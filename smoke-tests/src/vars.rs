//! `${NAME}` substitution in check strings.
//!
//! `${NAME}` is replaced by a variable's value, `$$` stands for a literal `$`, and any other
//! `$` is kept as it is. Names are ASCII letters, digits and `_`, not starting with a digit.
//! Owns the syntax only; which strings of a check are substituted is decided in `suite`.

use serde_json::Value;

/// A piece of a template: literal text or a variable reference.
#[derive(Debug, PartialEq, Eq)]
enum Piece<'a> {
    Literal(&'a str),
    Var(&'a str),
}

/// Why a template could not be expanded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum VarError {
    Syntax(String),
    Unknown(String),
}

/// Expands `text`, asking `lookup` for each variable's value.
pub(crate) fn expand(
    text: &str,
    lookup: &mut dyn FnMut(&str) -> Option<String>,
) -> Result<String, VarError> {
    let mut out = String::with_capacity(text.len());
    for piece in pieces(text)? {
        match piece {
            Piece::Literal(literal) => out.push_str(literal),
            Piece::Var(name) => {
                let value = lookup(name).ok_or_else(|| VarError::Unknown(name.to_string()))?;
                out.push_str(&value);
            }
        }
    }
    Ok(out)
}

/// Expands every string inside a JSON value (object keys are left as they are).
pub(crate) fn expand_json(
    value: &Value,
    lookup: &mut dyn FnMut(&str) -> Option<String>,
) -> Result<Value, VarError> {
    Ok(match value {
        Value::String(text) => Value::String(expand(text, lookup)?),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|item| expand_json(item, lookup))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(key, item)| Ok((key.clone(), expand_json(item, lookup)?)))
                .collect::<Result<_, VarError>>()?,
        ),
        other => other.clone(),
    })
}

fn pieces(text: &str) -> Result<Vec<Piece<'_>>, VarError> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(dollar) = rest.find('$') {
        out.push(Piece::Literal(&rest[..dollar]));
        let after = &rest[dollar + 1..];
        rest = if let Some(tail) = after.strip_prefix('$') {
            out.push(Piece::Literal("$"));
            tail
        } else if let Some(tail) = after.strip_prefix('{') {
            let (name, tail) = reference(text, tail)?;
            out.push(Piece::Var(name));
            tail
        } else {
            out.push(Piece::Literal("$"));
            after
        };
    }
    out.push(Piece::Literal(rest));
    Ok(out)
}

/// Splits `NAME}rest` into the validated name and the rest.
fn reference<'a>(text: &str, tail: &'a str) -> Result<(&'a str, &'a str), VarError> {
    let end = tail.find('}').ok_or_else(|| {
        VarError::Syntax(format!(
            "unterminated \"${{\" in {text:?} (write $$ for a literal $)"
        ))
    })?;
    let name = &tail[..end];
    if !is_valid_name(name) {
        return Err(VarError::Syntax(format!(
            "invalid variable name {name:?} in {text:?}: use letters, digits and _, not starting with a digit"
        )));
    }
    Ok((name, &tail[end + 1..]))
}

fn is_valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|first| first.is_ascii_alphabetic() || first == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn with_env(text: &str) -> Result<String, VarError> {
        let env = BTreeMap::from([("SHA", "abc123"), ("STAGE_URL", "http://x")]);
        expand(text, &mut |name| env.get(name).map(|v| v.to_string()))
    }

    #[test]
    fn expands_templates() {
        let table = [
            ("plain", "plain"),
            ("", ""),
            ("${SHA}", "abc123"),
            ("/v/${SHA}/x", "/v/abc123/x"),
            ("${SHA}${SHA}", "abc123abc123"),
            ("$$", "$"),
            ("$${SHA}", "${SHA}"),
            ("cost $5", "cost $5"),
            ("end $", "end $"),
            ("${STAGE_URL}/a", "http://x/a"),
        ];
        for (text, want) in table {
            assert_eq!(with_env(text).as_deref(), Ok(want), "{text:?}");
        }
    }

    #[test]
    fn reports_unknown_and_malformed_references() {
        assert_eq!(with_env("${NOPE}"), Err(VarError::Unknown("NOPE".into())));
        for text in ["${SHA", "${}", "${1A}", "${A-B}"] {
            assert!(
                matches!(with_env(text), Err(VarError::Syntax(_))),
                "{text:?}"
            );
        }
    }

    #[test]
    fn expands_strings_inside_json() {
        let value = serde_json::json!({"sha": "${SHA}", "list": ["${SHA}", 1], "n": true});
        let env = BTreeMap::from([("SHA", "abc")]);
        let out = expand_json(&value, &mut |name| env.get(name).map(|v| v.to_string()));
        assert_eq!(
            out,
            Ok(serde_json::json!({"sha": "abc", "list": ["abc", 1], "n": true}))
        );
    }
}

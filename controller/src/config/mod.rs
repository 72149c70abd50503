//! Configuration: `stages.toml` and `accounts/accounts.toml`, parsed and validated.
//!
//! [`load`] reads both files and returns the typed [`model::Config`] plus warnings, or every
//! problem found, each located at `file:line:col` with the offending text and a fix.
//! Guarantees: a `Config` exists only when both files are valid; unknown keys are errors.
//! This module never touches the network, the store or AWS.

mod controller;
pub mod diag;
pub mod model;
mod raw;
mod validate;
pub mod values;

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

pub use diag::{Diagnostic, Severity};
pub use model::*;

use diag::{Locator, Seg};
use validate::Ctx;

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file could not be read at all (exit code 2 of `tollgate validate`).
    #[error("cannot read {path}: {source}")]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The files were read but are invalid; every problem is listed (exit code 1).
    #[error("{}", render(.0))]
    Invalid(Vec<Diagnostic>),
}

fn render(diags: &[Diagnostic]) -> String {
    let errors = diags
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .count();
    let body: Vec<String> = diags.iter().map(ToString::to_string).collect();
    format!(
        "{}\n{errors} error(s) in the configuration",
        body.join("\n")
    )
}

/// A valid configuration and the warnings found on the way.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<Diagnostic>,
}

/// Reads and validates `stages.toml` (and the accounts file it names).
pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
    let text = read(path)?;
    let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    load_str(path, &text, &base, &|p| read(p))
}

/// Validates text as if it were the file at `path`; `read_file` reads the accounts file.
pub fn load_str(
    path: &Path,
    text: &str,
    base: &Path,
    read_file: &dyn Fn(&Path) -> Result<String, ConfigError>,
) -> Result<Loaded, ConfigError> {
    let mut diags = Vec::new();
    let stages_loc = Locator::new(path, text);
    let raw: Option<raw::RawStages> = parse(&stages_loc, text, &mut diags);
    let accounts_rel = raw
        .as_ref()
        .and_then(|r| r.accounts.clone())
        .unwrap_or_else(|| "accounts/accounts.toml".into());
    let accounts_path = base.join(&accounts_rel);
    let accounts_text = match (read_file(&accounts_path), &raw) {
        (Ok(text), _) => text,
        // Without a parsed stages.toml the accounts path is a guess: report the syntax error.
        (Err(_), None) => return Err(ConfigError::Invalid(diags)),
        (Err(e), Some(_)) => return Err(e),
    };
    let accounts_loc = Locator::new(&accounts_path, &accounts_text);
    let raw_accounts: Option<raw::RawAccountsFile> =
        parse(&accounts_loc, &accounts_text, &mut diags);
    let accounts = raw_accounts.map(|r| {
        let mut cx = Ctx {
            loc: &accounts_loc,
            diags: &mut diags,
        };
        validate::accounts(r, &mut cx)
    });
    let (Some(raw), Some(accounts)) = (raw, accounts) else {
        return Err(ConfigError::Invalid(diags));
    };
    let mut cx = Ctx {
        loc: &stages_loc,
        diags: &mut diags,
    };
    let controller = controller::settings(&raw.controller, &mut cx);
    let pipelines = validate::pipelines(raw.pipelines, &accounts, base, &mut cx);
    if diags.iter().any(|d| d.severity == Severity::Error) {
        return Err(ConfigError::Invalid(diags));
    }
    let config = Config {
        pipelines,
        accounts,
        controller,
        source_file: path.to_path_buf(),
        applied_from: None,
    };
    Ok(Loaded {
        config,
        warnings: diags,
    })
}

/// The files a configuration text names, relative to its own directory: the accounts file,
/// every CloudFormation template and every smoke-test suite. A path that is absolute or climbs
/// out of the configuration's directory (`..`) is refused: the configuration's files are read
/// from one tree (a commit of the configuration repository), never from elsewhere.
pub fn referenced_files(text: &str) -> Result<Vec<String>, String> {
    let raw: raw::RawStages =
        toml::from_str(text).map_err(|e| format!("not a valid configuration: {}", e.message()))?;
    let mut names = vec![
        raw.accounts
            .clone()
            .unwrap_or_else(|| "accounts/accounts.toml".into()),
    ];
    for p in &raw.pipelines {
        names.extend(p.tests.values().filter_map(|t| t.suite.clone()));
        names.extend(p.stages.iter().filter_map(|s| s.deploy.template.clone()));
    }
    names.sort();
    names.dedup();
    for name in &names {
        let path = Path::new(name);
        let inside = path.components().all(|c| {
            matches!(
                c,
                std::path::Component::Normal(_) | std::path::Component::CurDir
            )
        });
        if !inside || name.is_empty() {
            return Err(format!(
                "`{name}` is outside the configuration's directory; name files relative to it, without `..`"
            ));
        }
    }
    Ok(names)
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Unreadable {
        path: path.to_path_buf(),
        source,
    })
}

/// Parses TOML into `T`, reporting a syntax or type error and every unknown key.
fn parse<T: DeserializeOwned>(loc: &Locator, text: &str, diags: &mut Vec<Diagnostic>) -> Option<T> {
    let mut unknown: Vec<Vec<Seg>> = Vec::new();
    let de = toml::Deserializer::new(text);
    let result = serde_ignored::deserialize(de, |path| unknown.push(segments(&path)));
    for path in unknown {
        let key = match path.last() {
            Some(Seg::Key(k)) => k.clone(),
            _ => String::from("?"),
        };
        diags.push(loc.at_key(
            &path,
            format!("unknown key `{key}`"),
            "remove it or check its spelling (docs/configuration.md lists every key)",
        ));
    }
    match result {
        Ok(v) => Some(v),
        Err(e) => {
            let message = match e.message().trim() {
                "" => unexpected_char(text, e.span()),
                m => m.to_string(),
            };
            diags.push(loc.at_span(e.span(), message, "fix the TOML at this place"));
            None
        }
    }
}

/// A message for a parser error that came without one (a control character in a comment).
fn unexpected_char(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    let c = span.and_then(|s| text.get(s.start..)?.chars().next());
    match c {
        Some(c) => format!("character U+{:04X} is not allowed here", u32::from(c)),
        None => "invalid TOML".into(),
    }
}

fn segments(path: &serde_ignored::Path) -> Vec<Seg> {
    let mut out = Vec::new();
    collect(path, &mut out);
    out
}

fn collect(path: &serde_ignored::Path, out: &mut Vec<Seg>) {
    use serde_ignored::Path as P;
    match path {
        P::Root => {}
        P::Seq { parent, index } => {
            collect(parent, out);
            out.push(Seg::Index(*index));
        }
        P::Map { parent, key } => {
            collect(parent, out);
            out.push(Seg::Key(key.clone()));
        }
        P::Some { parent } | P::NewtypeStruct { parent } | P::NewtypeVariant { parent } => {
            collect(parent, out)
        }
    }
}

/// The JSON Schema of stages.toml, for editor completion.
pub fn stages_schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(raw::RawStages)).unwrap_or_default()
}

/// The JSON Schema of accounts.toml.
pub fn accounts_schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(raw::RawAccountsFile)).unwrap_or_default()
}

#[cfg(test)]
mod referenced_tests {
    use super::referenced_files;

    const STAGES: &str = r#"
accounts = "accts/accounts.toml"

[[pipelines]]
name = "web"
source = { repository = "acme/web" }
artifact = { repository = "web", account = "build", region = "us-east-1" }
tests.smoke = { kind = "http", suite = "smoke-tests/web.toml" }

[[pipelines.stages]]
name = "beta"
targets = [{ account = "beta" }]
deploy = { kind = "cloudformation", stack = "web-beta", template = "templates/web.yaml", image_parameter = "Image" }

[[pipelines.stages]]
name = "prod"
targets = [{ account = "prod" }]
deploy = { kind = "cloudformation", stack = "web-prod", template = "templates/web.yaml", image_parameter = "Image" }
"#;

    #[test]
    fn lists_the_accounts_file_templates_and_suites_once() {
        let files = referenced_files(STAGES).unwrap();
        assert_eq!(
            files,
            [
                "accts/accounts.toml",
                "smoke-tests/web.toml",
                "templates/web.yaml"
            ]
        );
    }

    #[test]
    fn the_default_accounts_file_is_listed() {
        let files = referenced_files("").unwrap();
        assert_eq!(files, ["accounts/accounts.toml"]);
    }

    #[test]
    fn paths_leaving_the_configuration_directory_are_refused() {
        for bad in ["../secrets.toml", "/etc/passwd", "a/../../b"] {
            let text = format!("accounts = \"{bad}\"\n");
            let err = referenced_files(&text).unwrap_err();
            assert!(
                err.contains("outside the configuration's directory"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn text_that_is_not_toml_is_refused() {
        let err = referenced_files("[[pipelines]\n").unwrap_err();
        assert!(err.contains("not a valid configuration"), "{err}");
    }
}

//! Errors a caller can act on: a suite that cannot be loaded ([`SuiteError`]) and a run that
//! cannot start ([`RunError`]). Owns turning byte offsets into `line:col` with the offending
//! source line. Check failures are not errors; they live in the [`crate::Report`].

use std::fmt;
use std::ops::Range;
use std::path::PathBuf;

/// Where in a suite file something is wrong (1-based line and column).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub line: usize,
    pub column: usize,
    /// The whole source line, for showing under the message.
    pub source_line: String,
}

impl Location {
    /// Locates a byte offset in `text`; offsets past the end point at the end.
    pub fn at(text: &str, offset: usize) -> Self {
        let mut offset = offset.min(text.len());
        while !text.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = &text[..offset];
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let source_line = text[line_start..].lines().next().unwrap_or("").to_string();
        Self {
            line: before.matches('\n').count() + 1,
            column: before[line_start..].chars().count() + 1,
            source_line,
        }
    }

    /// Locates the start of a span.
    pub fn of_span(text: &str, span: Range<usize>) -> Self {
        Self::at(text, span.start)
    }
}

/// A suite file that cannot be read or is not a valid suite.
#[derive(Debug, thiserror::Error)]
pub enum SuiteError {
    #[error("{}: cannot read suite: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}", invalid_message(origin, location.as_ref(), message))]
    Invalid {
        /// The file name (or other label) the suite was parsed from.
        origin: String,
        location: Option<Location>,
        message: String,
    },
}

fn invalid_message(origin: &str, location: Option<&Location>, message: &str) -> String {
    match location {
        None => format!("{origin}: {message}"),
        Some(at) => {
            let gutter = " ".repeat(at.line.to_string().len());
            let caret = " ".repeat(at.column.saturating_sub(1));
            format!(
                "{origin}:{}:{}: {message}\n{gutter} |\n{} | {}\n{gutter} | {caret}^",
                at.line, at.column, at.line, at.source_line
            )
        }
    }
}

/// Why a run stopped before sending any request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunError {
    /// A `${NAME}` in a check has no value in [`crate::RunOptions::env`].
    #[error(
        "{origin}: check \"{check}\": unknown variable ${{{name}}} in {field}; no value was provided for it"
    )]
    UnknownVariable {
        origin: String,
        check: String,
        field: String,
        name: String,
    },
    /// The base URL is not an absolute http(s) URL.
    #[error("invalid base URL {url:?}: {reason}")]
    BaseUrl { url: String, reason: String },
    /// A check's request cannot be built once variables are substituted.
    #[error("{origin}: check \"{check}\": {message}")]
    Request {
        origin: String,
        check: String,
        message: String,
    },
    /// The HTTP client could not be created.
    #[error("cannot create the HTTP client: {0}")]
    Client(String),
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locates_lines_and_columns() {
        let text = "a = 1\nbé = 2\n\nlast";
        let table = [
            (0, 1, 1, "a = 1"),
            (4, 1, 5, "a = 1"),
            (6, 2, 1, "bé = 2"),
            (9, 2, 3, "bé = 2"),
            (14, 3, 1, ""),
            (15, 4, 1, "last"),
            (999, 4, 5, "last"),
        ];
        for (offset, line, column, source) in table {
            let at = Location::at(text, offset);
            assert_eq!(
                (at.line, at.column, at.source_line.as_str()),
                (line, column, source),
                "offset {offset}"
            );
        }
    }

    #[test]
    fn invalid_error_shows_position_and_caret() {
        let err = SuiteError::Invalid {
            origin: "s.toml".into(),
            location: Some(Location::at("x = 1\nfoo = 2\n", 6)),
            message: "unknown field `foo`".into(),
        };
        let text = err.to_string();
        assert!(
            text.starts_with("s.toml:2:1: unknown field `foo`"),
            "{text}"
        );
        assert!(text.contains("2 | foo = 2"), "{text}");
    }
}

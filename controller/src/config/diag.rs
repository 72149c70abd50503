//! Located diagnostics: every configuration problem names `file:line:col`, quotes the
//! offending text and says how to fix it.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml_edit::{ImDocument, Item};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

/// One problem found in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    pub file: PathBuf,
    pub line: usize,
    pub col: usize,
    /// The offending text as written (first line only).
    pub snippet: String,
    pub message: String,
    pub help: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        let file = self.file.display();
        writeln!(
            f,
            "{level}: {file}:{}:{}: {}",
            self.line, self.col, self.message
        )?;
        if !self.snippet.is_empty() {
            writeln!(f, "    | {}", self.snippet)?;
        }
        write!(f, "    = help: {}", self.help)
    }
}

/// One segment of a path into a TOML document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    Key(String),
    Index(usize),
}

impl From<&str> for Seg {
    fn from(s: &str) -> Self {
        Seg::Key(s.to_string())
    }
}

impl From<String> for Seg {
    fn from(s: String) -> Self {
        Seg::Key(s)
    }
}

impl From<usize> for Seg {
    fn from(i: usize) -> Self {
        Seg::Index(i)
    }
}

/// Builds a path: `path!["pipelines", 0, "stages"]`.
#[macro_export]
macro_rules! cfg_path {
    ($($seg:expr),* $(,)?) => {
        vec![$($crate::config::diag::Seg::from($seg)),*]
    };
}

/// Maps paths in one parsed file back to text positions.
pub struct Locator {
    file: PathBuf,
    text: String,
    doc: Option<ImDocument<String>>,
}

impl Locator {
    pub fn new(file: &Path, text: &str) -> Self {
        let doc = ImDocument::parse(text.to_string()).ok();
        Self {
            file: file.to_path_buf(),
            text: text.to_string(),
            doc,
        }
    }

    pub fn file(&self) -> &Path {
        &self.file
    }

    /// A diagnostic at the value found at `path` (or the nearest existing parent).
    pub fn at(&self, path: &[Seg], severity: Severity, message: String, help: &str) -> Diagnostic {
        let span = self.span_of(path, false);
        self.diagnostic(span, severity, message, help)
    }

    /// A diagnostic at the key (not the value) that ends `path`.
    pub fn at_key(&self, path: &[Seg], message: String, help: &str) -> Diagnostic {
        let span = self.span_of(path, true);
        self.diagnostic(span, Severity::Error, message, help)
    }

    /// A diagnostic at a byte range reported by the TOML parser. The parser's message may span
    /// several lines; they are joined. Its range is often one character or empty: then the
    /// snippet quotes the whole line, unless that line sets an `external_id` (a secret may be
    /// written there).
    pub fn at_span(&self, span: Option<Range<usize>>, message: String, help: &str) -> Diagnostic {
        let message: Vec<&str> = message
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        let mut d = self.diagnostic(span, Severity::Error, message.join(": "), help);
        let line = self.text.lines().nth(d.line - 1).unwrap_or("").trim();
        if d.snippet.chars().count() <= 1 && !line.contains("external_id") {
            d.snippet = truncate(line, 120);
        }
        d
    }

    fn diagnostic(
        &self,
        span: Option<Range<usize>>,
        severity: Severity,
        message: String,
        help: &str,
    ) -> Diagnostic {
        let start = floor_char(&self.text, span.as_ref().map_or(0, |s| s.start));
        let end = floor_char(&self.text, span.map_or(start, |s| s.end)).max(start);
        let (line, col) = line_col(&self.text, start);
        let snippet = self.text[start..end]
            .lines()
            .next()
            .unwrap_or("")
            .trim_end();
        Diagnostic {
            severity,
            file: self.file.clone(),
            line,
            col,
            snippet: truncate(snippet, 120),
            message,
            help: help.to_string(),
        }
    }

    fn span_of(&self, path: &[Seg], key: bool) -> Option<Range<usize>> {
        let doc = self.doc.as_ref()?;
        let mut best = None;
        let mut item: Option<&Item> = None;
        for (i, seg) in path.iter().enumerate() {
            let last = i + 1 == path.len();
            let next = match (item, seg) {
                (None, Seg::Key(k)) => {
                    if last && key {
                        return doc.as_table().key(k).and_then(|k| k.span()).or(best);
                    }
                    doc.as_table().get(k)
                }
                (Some(it), Seg::Key(k)) => {
                    if last && key {
                        return key_span(it, k).or(best);
                    }
                    it.get(k.as_str())
                }
                (Some(it), Seg::Index(n)) => it.get(*n),
                (None, Seg::Index(_)) => None,
            };
            let Some(next) = next else { break };
            best = item_span(next).or(best);
            item = Some(next);
        }
        best
    }
}

fn key_span(item: &Item, key: &str) -> Option<Range<usize>> {
    match item {
        Item::Table(t) => t.key(key).and_then(|k| k.span()),
        Item::Value(v) => v.as_inline_table()?.key(key).and_then(|k| k.span()),
        _ => None,
    }
}

fn item_span(item: &Item) -> Option<Range<usize>> {
    match item {
        Item::Table(t) => t.span(),
        Item::ArrayOfTables(a) => a.span(),
        Item::Value(v) => v.span(),
        Item::None => None,
    }
}

/// The largest character boundary in `text` at or before `offset`.
fn floor_char(text: &str, offset: usize) -> usize {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    offset
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..floor_char(text, offset)];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// At most `max` characters of `s`, control characters escaped so a terminal shows them.
fn truncate(s: &str, max: usize) -> String {
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i == max {
            out.push('…');
            break;
        }
        if c.is_control() && c != '\t' {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_from_one() {
        assert_eq!(line_col("ab\ncd", 0), (1, 1));
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
        assert_eq!(line_col("é\nx", 3), (2, 1));
    }

    #[test]
    fn locates_nested_values_and_keys() {
        let text =
            "[[pipelines]]\nname = \"a\"\n[[pipelines.stages]]\nname = \"beta\"\nbake = \"1x\"\n";
        let loc = Locator::new(Path::new("s.toml"), text);
        let path = cfg_path!["pipelines", 0, "stages", 0, "bake"];
        let d = loc.at(&path, Severity::Error, "bad".into(), "fix");
        assert_eq!((d.line, d.col, d.snippet.as_str()), (5, 8, "\"1x\""));
        let k = loc.at_key(&path, "bad".into(), "fix");
        assert_eq!((k.line, k.col, k.snippet.as_str()), (5, 1, "bake"));
    }
}

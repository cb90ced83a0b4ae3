//! Config errors that say where they are: file, line, column and the key.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// One problem in a config file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The file, as it was named to sluice.
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    /// The dotted key the problem is at, e.g. `route[1].upstream` (empty for the whole file).
    pub key: String,
    /// What is wrong, in lowercase, with the offending value in backticks.
    pub message: String,
    /// The `[middleware.NAME]` the problem is in, if any: the admin API shows it beside that
    /// middleware.
    pub middleware: Option<String>,
}

impl ConfigError {
    /// This error, as one in `[middleware.NAME]`.
    pub fn in_middleware(mut self, name: &str) -> Self {
        self.middleware = Some(name.to_owned());
        self
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file.display(), self.line, self.column)?;
        if !self.key.is_empty() {
            write!(f, "`{}`: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

/// Every problem found in one config file; never empty.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            e.fmt(f)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Turns byte spans into `ConfigError`s with line, column and key path.
pub(crate) struct Locator<'a> {
    file: &'a Path,
    source: &'a str,
    doc: Option<&'a DeTable<'a>>,
}

impl<'a> Locator<'a> {
    pub(crate) fn new(file: &'a Path, source: &'a str, doc: Option<&'a DeTable<'a>>) -> Self {
        Locator { file, source, doc }
    }

    /// An error at `span`; the key path is found from the document tree.
    pub(crate) fn error(&self, span: Option<Range<usize>>, message: impl Into<String>) -> ConfigError {
        let span = span.unwrap_or(0..0);
        let key = self.doc.map(|doc| key_path(doc, span.start)).unwrap_or_default();
        let middleware = self.doc.and_then(|doc| middleware_at(doc, span.start));
        ConfigError {
            middleware,
            ..self.error_with_key(span, key, message)
        }
    }

    /// An error at `span` with a key path the caller knows better than the tree does.
    pub(crate) fn error_with_key(&self, span: Range<usize>, key: String, message: impl Into<String>) -> ConfigError {
        let (line, column) = line_column(self.source, span.start);
        ConfigError {
            file: self.file.to_owned(),
            line,
            column,
            key,
            message: message.into(),
            middleware: None,
        }
    }
}

fn line_column(source: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(source.len());
    let before = &source[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// The dotted path of the innermost key whose key or value span holds `offset`.
fn key_path(doc: &DeTable<'_>, offset: usize) -> String {
    let mut path = String::new();
    walk_table(doc, offset, &mut path);
    path
}

/// The name of the `[middleware.NAME]` table that holds `offset`, if one does.
fn middleware_at(doc: &DeTable<'_>, offset: usize) -> Option<String> {
    let DeValue::Table(middleware) = doc.get("middleware")?.get_ref() else {
        return None;
    };
    middleware
        .iter()
        .find(|(name, value)| name.span().contains(&offset) || walk_value(value, offset, &mut String::new()))
        .map(|(name, _)| name.get_ref().to_string())
}

fn walk_table(table: &DeTable<'_>, offset: usize, path: &mut String) -> bool {
    for (key, value) in table.iter() {
        let in_key = key.span().contains(&offset);
        let mark = path.len();
        if !path.is_empty() {
            path.push('.');
        }
        path.push_str(key.get_ref());
        if in_key || walk_value(value, offset, path) {
            return true;
        }
        path.truncate(mark);
    }
    false
}

fn walk_value(value: &Spanned<DeValue<'_>>, offset: usize, path: &mut String) -> bool {
    match value.get_ref() {
        // Tables and arrays of tables may have spans that do not cover their children
        // (`[a.b]` headers, `[[route]]`), so search the children first.
        DeValue::Table(t) => walk_table(t, offset, path) || value.span().contains(&offset),
        DeValue::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let mark = path.len();
                path.push_str(&format!("[{i}]"));
                if walk_value(item, offset, path) {
                    return true;
                }
                path.truncate(mark);
            }
            value.span().contains(&offset)
        }
        _ => value.span().contains(&offset),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_columns_are_one_based() {
        assert_eq!(line_column("a = 1\nbc = 2\n", 0), (1, 1));
        assert_eq!(line_column("a = 1\nbc = 2\n", 6), (2, 1));
        assert_eq!(line_column("a = 1\nbc = 2\n", 11), (2, 6));
        assert_eq!(line_column("é = 1\nx", 4), (1, 4));
    }

    #[test]
    fn key_paths_descend_into_tables_and_arrays() {
        let src = "[server]\nthreads = 2\n\n[[route]]\nname = \"a\"\n\n[[route]]\nname = \"b\"\nupstream = \"u\"\n";
        let doc = DeTable::parse(src).unwrap();
        let at = |needle: &str| key_path(doc.get_ref(), src.find(needle).unwrap());
        assert_eq!(at("2"), "server.threads");
        assert_eq!(at("\"b\""), "route[1].name");
        assert_eq!(at("\"u\""), "route[1].upstream");
    }

    #[test]
    fn an_error_inside_a_middleware_table_names_the_middleware() {
        let src =
            "[server]\nthreads = 2\n\n[middleware.jwt]\ntimeout = \"soon\"\n\n[middleware.limit]\nconfig = { n = 1 }\n";
        let doc = DeTable::parse(src).unwrap();
        let at = |needle: &str| middleware_at(doc.get_ref(), src.find(needle).unwrap());
        assert_eq!(at("\"soon\""), Some("jwt".to_owned()));
        assert_eq!(at("n = 1"), Some("limit".to_owned()));
        assert_eq!(at("2"), None);
    }
}

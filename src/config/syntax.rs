//! toml's syntax errors as diagnostics: its messages, each at its span, except where a better
//! one exists (the cascade after a bracket that never closes becomes one error at the bracket;
//! `key =` with nothing after it; a dotted key past toml's nesting limit, which toml reports
//! without a location), and never more than a screenful of them.

use std::ops::Range;

use toml::de::Error as TomlError;

use crate::diag::{Diagnostic, Errors, FileId, Loc};

/// toml refuses a dotted key of more parts than this ("recursion limit", with no span).
const MAX_KEY_PARTS: usize = 80;

/// toml refuses arrays and inline tables nested deeper than this ("cannot recurse further").
const MAX_NESTING: usize = 80;

/// The diagnostics for the syntax errors toml found in `text`, at most a screenful (plus a
/// line that counts the rest); only the ones shown are built.
pub(super) fn diagnose(text: &str, file: FileId, errors: &[TomlError]) -> Errors {
    // After an array or inline table that is never closed, the parser reads the rest of the
    // file as its elements and reports a cascade of errors: report its opening instead.
    let unclosed = unclosed_value(text);
    let cut = unclosed.map_or(usize::MAX, |(at, _)| at);
    let kept = || {
        errors
            .iter()
            .filter(move |e| e.span().is_none_or(|s| s.start < cut))
    };
    let mut long_keys = long_dotted_keys(text).into_iter();
    let located = kept().map(|e| {
        let message = e.message().trim_end();
        match e.span() {
            // toml's "string values must be quoted" for `key =` with nothing after it.
            Some(span) if missing_value(text, span.start) => {
                Diagnostic::new("TOML syntax error: missing value after `=`")
                    .at(Loc::new(file, span), "here")
            }
            Some(span) if message.starts_with("cannot recurse further") => {
                Diagnostic::new(format!(
                    "TOML syntax error: arrays and inline tables nest more than {MAX_NESTING} deep"
                ))
                .at(Loc::new(file, span), "too deep")
            }
            Some(span) => Diagnostic::new(format!("TOML syntax error: {message}"))
                .at(Loc::new(file, span), "here"),
            None if message == "recursion limit" => too_many_parts(file, long_keys.next()),
            None => Diagnostic::new(format!("TOML syntax error: {message}")),
        }
    });
    let unclosed = unclosed.map(|(at, open)| unclosed_diagnostic(file, errors, at, open));
    let total = kept().count() + usize::from(unclosed.is_some());
    // The unclosed bracket is the error that explains the others: always shown.
    let room = crate::diag::MAX_SHOWN - usize::from(unclosed.is_some());
    Errors::capped(located.take(room).chain(unclosed), total)
}

fn too_many_parts(file: FileId, key: Option<(Range<usize>, usize)>) -> Diagnostic {
    let limit = format!("a dotted key has at most {MAX_KEY_PARTS} parts");
    match key {
        Some((span, parts)) => Diagnostic::new(format!(
            "TOML syntax error: this dotted key has {parts} parts; {limit}"
        ))
        .at(Loc::new(file, span), format!("{parts} parts")),
        None => Diagnostic::new(format!(
            "TOML syntax error: a dotted key nests too deep; {limit}"
        )),
    }
}

fn unclosed_diagnostic(file: FileId, errors: &[TomlError], at: usize, open: char) -> Diagnostic {
    let (what, close) = match open {
        '[' => ("array", ']'),
        _ => ("inline table", '}'),
    };
    let mut d = Diagnostic::new(format!(
        "TOML syntax error: unclosed {what}: this `{open}` has no matching `{close}`"
    ))
    .at(Loc::new(file, at..at + 1), format!("{what} opened here"));
    let first = errors
        .iter()
        .filter_map(|e| e.span())
        .find(|s| s.start > at);
    if let Some(span) = first {
        d = d.also(
            Loc::new(file, span),
            format!("expected `{close}` before this"),
        );
    }
    d
}

/// What [`scan`] sees outside comments: a byte, or a whole string (quotes included).
enum Piece {
    Byte(usize),
    Str(Range<usize>),
}

/// Calls `f` for each byte of `text` outside comments and strings, and once for each string,
/// in order. False when it stopped at a multi-line string that never ends.
fn scan(text: &str, mut f: impl FnMut(Piece)) -> bool {
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'#' => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            q @ (b'"' | b'\'') => {
                let start = i;
                let triple = if q == b'"' { "\"\"\"" } else { "'''" };
                if text[i..].starts_with(triple) {
                    match text[i + 3..].find(triple) {
                        Some(end) => i += end + 6,
                        None => return false,
                    }
                } else {
                    // One-line string: ends after its quote or, unterminated, at the line's end.
                    i += 1;
                    while i < b.len() && b[i] != q && b[i] != b'\n' {
                        let escape = q == b'"' && b[i] == b'\\' && b.get(i + 1) != Some(&b'\n');
                        i += if escape { 2 } else { 1 };
                    }
                    if i < b.len() && b[i] == q {
                        i += 1;
                    }
                }
                f(Piece::Str(start..i.min(b.len())));
                continue;
            }
            _ => f(Piece::Byte(i)),
        }
        i += 1;
    }
    true
}

/// The first `[` or `{` of a value (not a `[table]` header) that is never closed, with the
/// bracket.
fn unclosed_value(text: &str) -> Option<(usize, char)> {
    let b = text.as_bytes();
    let mut open: Vec<usize> = Vec::new();
    let complete = scan(text, |p| match p {
        Piece::Byte(i) if matches!(b[i], b'[' | b'{') => open.push(i),
        Piece::Byte(i) if matches!(b[i], b']' | b'}') => {
            open.pop();
        }
        _ => {}
    });
    let at = *open.first().filter(|_| complete)?;
    let line_start = text[..at].rfind('\n').map_or(0, |n| n + 1);
    let header = text[line_start..at].trim().is_empty();
    (!header).then(|| (at, b[at] as char))
}

/// A run of key parts separated by dots: `a.b."c d"`.
struct KeyRun {
    span: Range<usize>,
    parts: usize,
    /// A dot was seen after the last part: the next part continues the key.
    dot: bool,
}

/// The spans of dotted keys of more than [`MAX_KEY_PARTS`] parts (bare or quoted, separated by
/// dots and spaces), with their part counts, in order: where toml's "recursion limit" errors
/// come from.
fn long_dotted_keys(text: &str) -> Vec<(Range<usize>, usize)> {
    let b = text.as_bytes();
    let bare = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b'-';
    let mut found = Vec::new();
    let mut run: Option<KeyRun> = None;
    let mut close = |run: &mut Option<KeyRun>| {
        if let Some(r) = run.take().filter(|r| r.parts > MAX_KEY_PARTS) {
            found.push((r.span, r.parts));
        }
    };
    scan(text, |p| {
        let part = match p {
            Piece::Str(span) => Some(span),
            Piece::Byte(i) if bare(b[i]) => Some(i..i + 1),
            Piece::Byte(i) => {
                match (&mut run, b[i]) {
                    (Some(r), b'.') if !r.dot => r.dot = true,
                    (Some(_), b' ' | b'\t') => {}
                    _ => close(&mut run),
                }
                None
            }
        };
        let Some(part) = part else { return };
        match &mut run {
            // The next byte of the same bare part.
            Some(r) if !r.dot && r.span.end == part.start && part.len() == 1 => {
                r.span.end = part.end
            }
            Some(r) if r.dot => {
                r.parts += 1;
                r.dot = false;
                r.span.end = part.end;
            }
            _ => {
                close(&mut run);
                run = Some(KeyRun {
                    span: part,
                    parts: 1,
                    dot: false,
                });
            }
        }
    });
    close(&mut run);
    found
}

/// Whether `at` is the end of a line (or a comment) right after `key =`.
fn missing_value(text: &str, at: usize) -> bool {
    let (Some(before), Some(after)) = (text.get(..at), text.get(at..)) else {
        return false;
    };
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let rest = after.lines().next().unwrap_or("").trim_start();
    before[line_start..].trim_end().ends_with('=') && (rest.is_empty() || rest.starts_with('#'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(parts: usize, sep: &str) -> String {
        vec!["a"; parts].join(sep)
    }

    #[test]
    fn finds_long_dotted_keys_only() {
        let long = key(MAX_KEY_PARTS + 1, ".");
        let text = format!(
            "x = 1.5\n{}\n{long} = 1\n# {long}\n",
            key(MAX_KEY_PARTS, ".")
        );
        let found = long_dotted_keys(&text);
        let start = text.find(&format!("{long} =")).unwrap();
        assert_eq!(found, vec![(start..start + long.len(), MAX_KEY_PARTS + 1)]);
        // Spaces around dots and quoted parts count as the same key.
        let spaced = format!("[{} . \"q.q\"]\n", key(MAX_KEY_PARTS, " . "));
        assert_eq!(long_dotted_keys(&spaced)[0].1, MAX_KEY_PARTS + 1);
        // Two parts side by side without a dot are two keys.
        assert!(long_dotted_keys(&format!("{} {}", key(50, "."), key(50, "."))).is_empty());
    }

    #[test]
    fn strings_and_comments_hide_brackets() {
        assert_eq!(unclosed_value("a = \"[\"\n# {\nb = [1,\n"), Some((16, '[')));
        assert_eq!(unclosed_value("[table]\na = [1, 2]\n"), None);
    }
}

//! User-facing diagnostics: a message, labelled source locations, notes. Rendered like rustc
//! (`--> file:line:col`, the offending line, a caret) through codespan-reporting.

use std::ops::Range;

use codespan_reporting::diagnostic as cs;
use codespan_reporting::files::SimpleFiles;
use codespan_reporting::term;

/// Index of a source in [`Sources`]: a config file or one `--set` argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId(pub u32);

/// A byte range in one source. Every config value carries one, so any later stage (shape
/// inference, planning) can point back at the line that caused it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Loc {
    pub file: FileId,
    pub start: u32,
    pub end: u32,
}

impl Loc {
    pub fn new(file: FileId, span: Range<usize>) -> Loc {
        Loc {
            file,
            start: span.start as u32,
            end: span.end as u32,
        }
    }
    fn range(&self) -> Range<usize> {
        self.start as usize..self.end as usize
    }
}

/// Every text a config was read from, so diagnostics can quote it.
#[derive(Default)]
pub struct Sources {
    files: SimpleFiles<String, String>,
    count: u32,
}

impl Sources {
    pub fn add(&mut self, name: impl Into<String>, text: impl Into<String>) -> FileId {
        self.files.add(name.into(), text.into());
        self.count += 1;
        FileId(self.count - 1)
    }
    pub fn name(&self, file: FileId) -> &str {
        self.files
            .get(file.0 as usize)
            .map(|f| f.name().as_str())
            .unwrap_or("?")
    }
    pub fn text(&self, file: FileId) -> &str {
        self.files
            .get(file.0 as usize)
            .map(|f| f.source().as_str())
            .unwrap_or("")
    }
    /// `file:line:col` (1-based), as editors and terminals link it.
    pub fn position(&self, loc: Loc) -> String {
        use codespan_reporting::files::Files;
        match self.files.location(loc.file.0 as usize, loc.start as usize) {
            Ok(l) => format!(
                "{}:{}:{}",
                self.name(loc.file),
                l.line_number,
                l.column_number
            ),
            Err(_) => self.name(loc.file).to_string(),
        }
    }
    /// The length in bytes of the line a location starts on.
    fn line_len(&self, loc: Loc) -> usize {
        let text = self.text(loc.file);
        let at = (loc.start as usize).min(text.len());
        let start = text[..at].rfind('\n').map_or(0, |i| i + 1);
        let end = text[at..].find('\n').map_or(text.len(), |i| at + i);
        end - start
    }
    /// 1-based line number of a location (for tables and JSON output).
    pub fn line(&self, loc: Loc) -> usize {
        use codespan_reporting::files::Files;
        self.files
            .line_index(loc.file.0 as usize, loc.start as usize)
            .map(|l| l + 1)
            .unwrap_or(0)
    }
    /// 1-based line and column (in characters, as `position` counts them).
    pub fn line_column(&self, loc: Loc) -> Option<(usize, usize)> {
        use codespan_reporting::files::Files;
        let l = self
            .files
            .location(loc.file.0 as usize, loc.start as usize)
            .ok()?;
        Some((l.line_number, l.column_number))
    }
}

#[derive(Clone, Debug)]
pub struct Label {
    pub loc: Loc,
    pub text: String,
    pub primary: bool,
}

/// One user error. `labels[0]`, when present, is where it happened.
#[derive(Clone, Debug)]
pub struct Diagnostic {
    pub message: String,
    pub labels: Vec<Label>,
    pub notes: Vec<String>,
    /// Not an error itself: the count of errors `Errors::capped` left out.
    left_out: usize,
}

impl Diagnostic {
    pub fn new(message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            message: message.into(),
            labels: Vec::new(),
            notes: Vec::new(),
            left_out: 0,
        }
    }
    /// The main location, with a short text under the caret.
    pub fn at(mut self, loc: Loc, text: impl Into<String>) -> Diagnostic {
        self.labels.push(Label {
            loc,
            text: text.into(),
            primary: true,
        });
        self
    }
    /// A related location (the other operand, the block's use site, ...).
    pub fn also(mut self, loc: Loc, text: impl Into<String>) -> Diagnostic {
        self.labels.push(Label {
            loc,
            text: text.into(),
            primary: false,
        });
        self
    }
    pub fn note(mut self, note: impl Into<String>) -> Diagnostic {
        self.notes.push(note.into());
        self
    }
    pub fn help_did_you_mean<'a>(
        self,
        word: &str,
        candidates: impl IntoIterator<Item = &'a str>,
    ) -> Diagnostic {
        match did_you_mean(word, candidates) {
            Some(s) => self.note(format!("help: did you mean `{s}`?")),
            None => self,
        }
    }

    pub fn render(&self, sources: &Sources) -> String {
        // A quoted line of a megabyte (a minified or binary file) would be the whole screen.
        if self
            .labels
            .iter()
            .any(|l| sources.line_len(l.loc) > MAX_QUOTED_LINE)
        {
            return self.render_unquoted(sources);
        }
        let mut labels: Vec<cs::Label<usize>> = Vec::new();
        for l in &self.labels {
            let style = if l.primary {
                cs::LabelStyle::Primary
            } else {
                cs::LabelStyle::Secondary
            };
            labels.push(
                cs::Label::new(style, l.loc.file.0 as usize, l.loc.range()).with_message(&l.text),
            );
        }
        let d = cs::Diagnostic::error()
            .with_message(&self.message)
            .with_labels(labels)
            .with_notes(self.notes.clone());
        let config = term::Config {
            chars: term::Chars::ascii(),
            ..Default::default()
        };
        // A label outside its file would be our bug; still show the message.
        term::emit_into_string(&config, &sources.files, &d)
            .unwrap_or_else(|_| format!("error: {}\n", self.message))
    }

    /// Each label as `--> file:line:col` and its text, without quoting the lines.
    fn render_unquoted(&self, sources: &Sources) -> String {
        let mut out = format!("error: {}\n", self.message);
        for l in &self.labels {
            let arrow = if l.primary { "-->" } else { ":::" };
            out += &format!(
                "  {arrow} {}\n   | {} (a line of {} bytes: not quoted)\n",
                sources.position(l.loc),
                l.text,
                sources.line_len(l.loc)
            );
        }
        for n in &self.notes {
            out += &format!("   = {n}\n");
        }
        out
    }
}

/// Source lines longer than this are not quoted under a diagnostic.
const MAX_QUOTED_LINE: usize = 400;

/// Diagnostics made at most from one source of many (a file of garbage gives millions of
/// syntax errors): the rest are only counted.
pub const MAX_SHOWN: usize = 10;

/// Lines of diagnostics printed at most (a screenful, as rustc stops early); the errors that
/// do not fit are counted in one more line.
const SCREEN_LINES: usize = 50;

/// One or more user errors (a config may have several syntax errors at once).
#[derive(Clone, Debug)]
pub struct Errors(pub Vec<Diagnostic>);

impl From<Diagnostic> for Errors {
    fn from(d: Diagnostic) -> Errors {
        Errors(vec![d])
    }
}

impl Errors {
    /// The first [`MAX_SHOWN`] of `first`, which need not yield more (so a file of garbage
    /// makes ten diagnostics, not millions), and one that counts the rest of `total`.
    pub fn capped(first: impl IntoIterator<Item = Diagnostic>, total: usize) -> Errors {
        let mut shown: Vec<Diagnostic> = first.into_iter().take(MAX_SHOWN).collect();
        let left_out = total.saturating_sub(shown.len());
        if left_out > 0 {
            shown.push(Diagnostic {
                left_out,
                ..Diagnostic::new(format!("{left_out} more errors not shown"))
            });
        }
        Errors(shown)
    }

    /// The diagnostics in order while they fit a screen (the first always), then one line
    /// that counts the others and those `capped` left out.
    pub fn render(&self, sources: &Sources) -> String {
        let mut parts: Vec<String> = Vec::new();
        let (mut lines, mut left_out, mut full) = (0, 0, false);
        for d in &self.0 {
            if d.left_out > 0 {
                left_out += d.left_out;
                continue;
            }
            let text = d.render(sources);
            let n = text.lines().count() + 1;
            full |= !parts.is_empty() && lines + n > SCREEN_LINES;
            if full {
                left_out += 1;
                continue;
            }
            lines += n;
            parts.push(text);
        }
        if left_out > 0 {
            let s = if left_out == 1 { "" } else { "s" };
            let shown = parts.len();
            let more = Diagnostic::new(format!(
                "{left_out} more error{s} not shown (the first {shown} are above)"
            ));
            parts.push(more.render(sources));
        }
        parts.join("\n")
    }
}

/// `a -> b -> c` for a chain of files or blocks, or for a long one its first and last three
/// with a count between, so that a chain thousands long is one line.
pub fn chain(names: &[String]) -> String {
    let n = names.len();
    if n <= 8 {
        return names.join(" -> ");
    }
    format!(
        "{} -> ... ({} more) -> {}",
        names[..3].join(" -> "),
        n - 6,
        names[n - 3..].join(" -> ")
    )
}

/// The JSON form of diagnostics, for scripts (`trainer check --json`).
impl Diagnostic {
    /// `message`, the primary location as `file`, `line`, `column` (null when the error has
    /// none, as for a file that cannot be read), every label and the notes.
    pub fn to_json(&self, sources: &Sources) -> serde_json::Value {
        let place = |loc: Loc| {
            let (line, column) = sources.line_column(loc).unzip();
            (sources.name(loc.file).to_string(), line, column)
        };
        let primary = self
            .labels
            .iter()
            .find(|l| l.primary)
            .or(self.labels.first());
        let (file, line, column) = match primary {
            Some(l) => {
                let (file, line, column) = place(l.loc);
                (Some(file), line, column)
            }
            None => (None, None, None),
        };
        let labels: Vec<serde_json::Value> = self
            .labels
            .iter()
            .map(|l| {
                let (file, line, column) = place(l.loc);
                serde_json::json!({
                    "file": file, "line": line, "column": column,
                    "text": l.text, "primary": l.primary,
                })
            })
            .collect();
        serde_json::json!({
            "message": self.message,
            "file": file,
            "line": line,
            "column": column,
            "labels": labels,
            "notes": self.notes,
        })
    }
}

/// The closest candidate to a misspelled word, if it is close enough to be a plausible typo.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let lower = word.to_lowercase();
    let mut best: Option<(f64, &str)> = None;
    for c in candidates {
        let score = strsim::jaro_winkler(&lower, &c.to_lowercase());
        let close = strsim::damerau_levenshtein(&lower, &c.to_lowercase())
            <= (c.len().max(3) / 3).max(1)
            || score >= 0.85;
        if close && best.is_none_or(|(s, _)| score > s) {
            best = Some((score, c));
        }
    }
    best.map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_words_only() {
        let keys = ["stride", "padding", "kernel", "out"];
        assert_eq!(did_you_mean("strid", keys), Some("stride"));
        assert_eq!(did_you_mean("paddin", keys), Some("padding"));
        assert_eq!(did_you_mean("kernal", keys), Some("kernel"));
        assert_eq!(did_you_mean("zzzzzz", keys), None);
    }

    #[test]
    fn many_errors_fill_one_screen_and_count_the_rest() {
        let mut s = Sources::default();
        let f = s.add("a.toml", "x = = 1\n".repeat(100));
        let each =
            (0..100).map(|i| Diagnostic::new("bad").at(Loc::new(f, i * 8 + 4..i * 8 + 5), "here"));
        let text = Errors::capped(each, 5000).render(&s);
        let shown = text.matches("error: bad").count();
        assert!(shown > 1 && shown <= MAX_SHOWN, "{text}");
        assert!(text.lines().count() <= SCREEN_LINES + 2, "{text}");
        let more = format!(
            "error: {} more errors not shown (the first {shown} are above)",
            5000 - shown
        );
        assert!(text.contains(&more), "{text}");
        // A line too long to quote is located, not printed.
        let long = s.add("b.toml", format!("x = {}", "=".repeat(10_000)));
        let text = Diagnostic::new("bad")
            .at(Loc::new(long, 4..5), "here")
            .render(&s);
        assert!(
            text.contains("--> b.toml:1:5") && text.len() < 200,
            "{text}"
        );
    }

    #[test]
    fn renders_file_line_col_and_caret() {
        let mut s = Sources::default();
        let f = s.add("a.toml", "[run]\nsed = 1\n");
        let d = Diagnostic::new("unknown key `sed`").at(Loc::new(f, 6..9), "not a key of [run]");
        let text = d.render(&s);
        assert!(text.contains("a.toml:2:1"), "{text}");
        assert!(text.contains("sed = 1"), "{text}");
        assert!(text.contains("^^^"), "{text}");
    }
}

//! The config as a tree of values that remember where they came from. `extends` merging and
//! `--set` overrides happen on this tree, so a value keeps its own file and span whichever file
//! or command-line argument it came from.

use indexmap::IndexMap;
use toml::de::{DeTable, DeValue};

use crate::diag::{Diagnostic, Errors, FileId, Loc, Sources};

#[derive(Clone, Debug)]
pub struct Value {
    pub kind: Kind,
    pub loc: Loc,
}

#[derive(Clone, Debug)]
pub enum Kind {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Datetime(String),
    Array(Vec<Value>),
    Table(Table),
}

/// A table in document order. Each entry keeps the location of its key.
pub type Table = IndexMap<String, Entry>;

#[derive(Clone, Debug)]
pub struct Entry {
    pub key: Loc,
    pub value: Value,
}

impl Value {
    /// What a type mismatch calls this value: "integer `3`", "a table", ...
    pub fn describe(&self) -> String {
        match &self.kind {
            Kind::Str(s) => format!("string \"{s}\""),
            Kind::Int(i) => format!("integer `{i}`"),
            Kind::Float(f) => format!("float `{}`", short_float(*f)),
            Kind::Bool(b) => format!("boolean `{b}`"),
            Kind::Datetime(d) => format!("datetime `{d}`"),
            Kind::Array(_) => "an array".into(),
            Kind::Table(_) => "a table".into(),
        }
    }
    pub fn as_table(&self) -> Option<&Table> {
        match &self.kind {
            Kind::Table(t) => Some(t),
            _ => None,
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match &self.kind {
            Kind::Str(s) => Some(s),
            _ => None,
        }
    }
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.as_table()?.get(key).map(|e| &e.value)
    }
}

/// A float as a person would write it: `1e308`, not its 309 digits.
pub fn short_float(f: f64) -> String {
    let magnitude = f.abs();
    if magnitude != 0.0 && magnitude.is_finite() && !(1e-4..1e16).contains(&magnitude) {
        format!("{f:e}")
    } else {
        format!("{f}")
    }
}

/// Parses one TOML text into a located tree, reporting every syntax error at once (a
/// screenful of them at most: `syntax::diagnose`).
pub fn parse(sources: &Sources, file: FileId) -> Result<Value, Errors> {
    let text = sources.text(file);
    let (table, errors) = DeTable::parse_recoverable(text);
    if !errors.is_empty() {
        return Err(super::syntax::diagnose(text, file, &errors));
    }
    let span = 0..text.len();
    convert_table(file, table.get_ref(), Loc::new(file, span))
}

/// Parses a single TOML value (the right-hand side of `--set key=value`).
pub fn parse_value(sources: &Sources, file: FileId, offset: usize) -> Option<Value> {
    let text = &sources.text(file)[offset..];
    let v = DeValue::parse(text).ok()?;
    let span = v.span();
    let mut value = convert(file, v.get_ref(), Loc::new(file, span)).ok()?;
    shift(&mut value, offset as u32);
    Some(value)
}

fn shift(v: &mut Value, by: u32) {
    v.loc.start += by;
    v.loc.end += by;
    match &mut v.kind {
        Kind::Array(items) => items.iter_mut().for_each(|i| shift(i, by)),
        Kind::Table(t) => t.values_mut().for_each(|e| {
            e.key.start += by;
            e.key.end += by;
            shift(&mut e.value, by)
        }),
        _ => {}
    }
}

fn convert_table(file: FileId, t: &DeTable, loc: Loc) -> Result<Value, Errors> {
    let mut out = Table::new();
    for (k, v) in t.iter() {
        let value = convert(file, v.get_ref(), Loc::new(file, v.span()))?;
        out.insert(
            k.get_ref().to_string(),
            Entry {
                key: Loc::new(file, k.span()),
                value,
            },
        );
    }
    Ok(Value {
        kind: Kind::Table(out),
        loc,
    })
}

fn convert(file: FileId, v: &DeValue, loc: Loc) -> Result<Value, Errors> {
    let out_of_range =
        || Diagnostic::new("number out of range").at(loc, "does not fit a 64-bit value");
    let kind = match v {
        DeValue::String(s) => Kind::Str(s.to_string()),
        DeValue::Integer(i) => {
            Kind::Int(i64::from_str_radix(i.as_str(), i.radix()).map_err(|_| out_of_range())?)
        }
        DeValue::Float(f) => {
            let s = f.as_str();
            let x = match s.trim_start_matches(['+', '-']) {
                "inf" => f64::INFINITY,
                "nan" => f64::NAN,
                _ => s.parse::<f64>().map_err(|_| out_of_range())?.abs(),
            };
            Kind::Float(if s.starts_with('-') { -x } else { x })
        }
        DeValue::Boolean(b) => Kind::Bool(*b),
        DeValue::Datetime(d) => Kind::Datetime(d.to_string()),
        DeValue::Array(a) => Kind::Array(
            a.iter()
                .map(|e| convert(file, e.get_ref(), Loc::new(file, e.span())))
                .collect::<Result<_, _>>()?,
        ),
        DeValue::Table(t) => return convert_table(file, t, loc),
    };
    Ok(Value { kind, loc })
}

/// Deep merge for `extends`: tables merge key by key, anything else in `over` replaces `base`.
pub fn merge(base: &mut Value, over: Value) {
    match (&mut base.kind, over.kind) {
        (Kind::Table(b), Kind::Table(o)) => {
            // The overriding file is where a reader looks: point there.
            base.loc = over.loc;
            for (k, e) in o {
                match b.get_mut(&k) {
                    Some(existing) => {
                        existing.key = e.key;
                        merge(&mut existing.value, e.value);
                    }
                    None => {
                        b.insert(k, e);
                    }
                }
            }
        }
        (_, kind) => {
            base.kind = kind;
            base.loc = over.loc;
        }
    }
}

/// A table at the top of a config that is none of `sections` (a typo, in a file or a `--set`
/// path).
pub fn unknown_section(name: &str, key: Loc, sections: &[&str]) -> Diagnostic {
    Diagnostic::new(format!("unknown section `{name}`"))
        .at(key, "not a section of a config")
        .help_did_you_mean(name, sections.iter().copied())
        .note(format!("sections: {}", sections.join(", ")))
}

/// One `--set a.b.c=value` argument: sets a value at a dotted path. The last key may be new
/// (schema validation then rejects unknown names with this argument's location), and so may
/// one of the top-level `sections` (another is refused here, with did-you-mean, however long
/// the path); any other missing table on the way is an error (a typo);
/// a path through an array needs an index that exists; a path through a scalar is an error.
pub fn set_path(
    root: &mut Value,
    sources: &mut Sources,
    arg: &str,
    index: usize,
    sections: &[&str],
) -> Result<(), Errors> {
    let file = sources.add(format!("--set #{}", index + 1), arg.to_string());
    let whole = Loc::new(file, 0..arg.len());
    let Some(eq) = arg.find('=') else {
        return Err(Diagnostic::new(format!("`--set {arg}` has no `=`"))
            .at(whole, "expected key.path=value")
            .note("example: --set optimizer.lr=0.05")
            .into());
    };
    let path = &arg[..eq];
    let raw = &arg[eq + 1..];
    let value = match parse_value(sources, file, eq + 1) {
        Some(v) => v,
        // Bare words (`--set run.device=cpu`) are strings, as in Hydra.
        None if !raw.is_empty()
            && raw
                .chars()
                .all(|c| c.is_alphanumeric() || "-_./:".contains(c)) =>
        {
            Value {
                kind: Kind::Str(raw.to_string()),
                loc: Loc::new(file, eq + 1..arg.len()),
            }
        }
        None if raw.trim().is_empty() => {
            return Err(Diagnostic::new(format!("`--set {arg}` has no value"))
                .at(Loc::new(file, eq..arg.len()), "expected a value after `=`")
                .note("example: --set optimizer.lr=0.05")
                .into());
        }
        None => {
            return Err(
                Diagnostic::new(format!("cannot read the value of `--set {arg}`"))
                    .at(Loc::new(file, eq + 1..arg.len()), "not a TOML value")
                    .note("quote strings with spaces or symbols: --set 'run.name=\"my run\"'")
                    .into(),
            );
        }
    };
    if path.is_empty() || path.split('.').any(str::is_empty) {
        return Err(Diagnostic::new(format!("bad key path `{path}` in --set"))
            .at(
                Loc::new(file, 0..eq),
                "expected names separated by dots, like optimizer.lr",
            )
            .into());
    }
    let mut node = root;
    let mut start = 0;
    let parts: Vec<&str> = path.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        let key_loc = Loc::new(file, start..start + part.len());
        start += part.len() + 1;
        let last = i + 1 == parts.len();
        let here = node.loc;
        let described = node.describe();
        node = match &mut node.kind {
            Kind::Table(t) => {
                if last {
                    t.insert(
                        part.to_string(),
                        Entry {
                            key: key_loc,
                            value,
                        },
                    );
                    return Ok(());
                }
                // Only a whole section may be new on the way (`--set train.epochs=9` without a
                // [train]); a missing table deeper down is a typo (`model.blocks.basci.body`).
                if i == 0 && !t.contains_key(*part) && !sections.contains(part) {
                    return Err(unknown_section(part, key_loc, sections).into());
                }
                if i > 0 && !t.contains_key(*part) {
                    let d = Diagnostic::new(format!(
                        "`--set` path `{path}`: there is no `{part}` in `{}`",
                        parts[..i].join(".")
                    ))
                    .at(key_loc, "no such table")
                    .help_did_you_mean(part, t.keys().map(String::as_str))
                    .note(format!(
                        "to add a whole table, set it at once: --set '{}={{ ... }}'",
                        parts[..=i].join(".")
                    ));
                    return Err(d.into());
                }
                let empty = Value {
                    kind: Kind::Table(Table::new()),
                    loc: key_loc,
                };
                &mut t
                    .entry(part.to_string())
                    .or_insert(Entry {
                        key: key_loc,
                        value: empty,
                    })
                    .value
            }
            Kind::Array(items) => {
                let len = items.len();
                let Some(item) = part.parse::<usize>().ok().and_then(|i| items.get_mut(i)) else {
                    return Err(Diagnostic::new(format!(
                        "`{}` is an array of {len} items: `{part}` is not an index in it",
                        parts[..i].join(".")
                    ))
                    .at(
                        key_loc,
                        format!("expected an index 0..{}", len.saturating_sub(1)),
                    )
                    .also(here, "the array")
                    .into());
                };
                if last {
                    *item = value;
                    return Ok(());
                }
                item
            }
            _ => {
                return Err(Diagnostic::new(format!(
                    "`{}` is {}, not a table: cannot set `{part}` inside it",
                    parts[..i].join("."),
                    described
                ))
                .at(key_loc, "no such key")
                .also(here, "defined here")
                .into());
            }
        };
    }
    Ok(())
}

impl Value {
    /// The plain TOML value (spans dropped), for `config.resolved.toml`.
    pub fn to_toml(&self) -> toml::Value {
        match &self.kind {
            Kind::Str(s) => toml::Value::String(s.clone()),
            Kind::Int(i) => toml::Value::Integer(*i),
            Kind::Float(f) => toml::Value::Float(*f),
            Kind::Bool(b) => toml::Value::Boolean(*b),
            Kind::Datetime(d) => d
                .parse()
                .map(toml::Value::Datetime)
                .unwrap_or_else(|_| toml::Value::String(d.clone())),
            Kind::Array(a) => toml::Value::Array(a.iter().map(Value::to_toml).collect()),
            Kind::Table(t) => toml::Value::Table(
                t.iter()
                    .map(|(k, e)| (k.clone(), e.value.to_toml()))
                    .collect(),
            ),
        }
    }
}

/// Every leaf of a TOML value as `dotted.path = value` (array items as `path[i]`), in document
/// order: the unit in which two configs are compared (`trainer resume` lists the differences).
pub fn leaves(v: &toml::Value) -> Vec<(String, String)> {
    fn walk(v: &toml::Value, path: String, out: &mut Vec<(String, String)>) {
        match v {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    walk(v, p, out);
                }
            }
            toml::Value::Array(a) => {
                for (i, v) in a.iter().enumerate() {
                    walk(v, format!("{path}[{i}]"), out);
                }
            }
            leaf => out.push((path, leaf.to_string())),
        }
    }
    let mut out = Vec::new();
    walk(v, String::new(), &mut out);
    out
}

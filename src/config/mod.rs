//! Reading a config: TOML files (with `extends`) and `--set` overrides become one located
//! tree, then typed sections. The only module that knows TOML spans; it builds no graph nodes.

pub mod de;
pub mod model;
pub mod sections;
pub mod tree;
pub mod values;

use std::path::{Path, PathBuf};

pub use model::ModelDecl;
pub use sections::*;

use crate::diag::{Diagnostic, Errors, Loc, Sources};
use de::from_value;
use tree::{Kind, Value};

/// The top-level sections, in the order the reference documents them.
pub const SECTIONS: &[&str] = &[
    "run",
    "data",
    "model",
    "loss",
    "optimizer",
    "schedule",
    "train",
    "log",
];

/// A whole config, checked section by section.
#[derive(Clone, Debug)]
pub struct Config {
    pub run: Run,
    pub data: Data,
    pub model: ModelDecl,
    pub loss: Loss,
    pub optimizer: Optimizer,
    pub schedule: Schedule,
    pub train: Train,
    pub log: Log,
    /// The merged tree (after extends and --set), for `config.resolved.toml` and semantic checks.
    pub tree: Value,
}

/// Everything read for one config: the texts (for diagnostics) and the result.
pub struct Loaded {
    pub sources: Sources,
    pub result: Result<Config, Errors>,
}

/// Reads `path`, follows `extends`, applies `--set` overrides in order, checks every section.
pub fn load(path: &Path, sets: &[String]) -> Loaded {
    let mut sources = Sources::default();
    let result = load_tree(&mut sources, path, sets)
        .and_then(|tree| Config::from_tree(tree).map_err(Errors::from));
    Loaded { sources, result }
}

/// The merged tree of a config, before section checks.
pub fn load_tree(sources: &mut Sources, path: &Path, sets: &[String]) -> Result<Value, Errors> {
    let mut tree = read_with_extends(sources, path, None, &mut Vec::new())?;
    for (i, s) in sets.iter().enumerate() {
        tree::set_path(&mut tree, sources, s, i)?;
    }
    Ok(tree)
}

fn read_with_extends(
    sources: &mut Sources,
    path: &Path,
    from: Option<Loc>,
    chain: &mut Vec<PathBuf>,
) -> Result<Value, Errors> {
    let text = std::fs::read(path).map_err(|e| {
        let d = Diagnostic::new(format!(
            "cannot read config file {}: {}",
            path.display(),
            io_reason(&e)
        ));
        match from {
            Some(loc) => d.at(loc, "extended here"),
            None => d,
        }
    })?;
    let text = String::from_utf8(text).map_err(|e| {
        Diagnostic::new(format!(
            "{} is not UTF-8 text (bad byte at offset {})",
            path.display(),
            e.utf8_error().valid_up_to()
        ))
    })?;
    let canonical = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    if let Some(pos) = chain.iter().position(|p| p == &canonical) {
        let cycle: Vec<String> = chain[pos..]
            .iter()
            .chain([&canonical])
            .map(|p| p.display().to_string())
            .collect();
        let mut d = Diagnostic::new("`extends` forms a cycle");
        if let Some(loc) = from {
            d = d.at(loc, "this file is already being extended");
        }
        return Err(d.note(format!("cycle: {}", cycle.join(" -> "))).into());
    }
    chain.push(canonical);
    let file = sources.add(path.display().to_string(), text);
    let mut value = tree::parse(sources, file)?;
    let Kind::Table(t) = &mut value.kind else {
        unreachable!("a document is a table")
    };
    let result = match t.shift_remove("extends") {
        None => Ok(value),
        Some(e) => {
            let Some(base_name) = e.value.as_str() else {
                return Err(Diagnostic::new("`extends` must be a file path string")
                    .at(e.value.loc, format!("found {}", e.value.describe()))
                    .into());
            };
            let base_path = path.parent().unwrap_or(Path::new(".")).join(base_name);
            let mut base = read_with_extends(sources, &base_path, Some(e.value.loc), chain)?;
            tree::merge(&mut base, value);
            Ok(base)
        }
    };
    chain.pop();
    result
}

fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => e.to_string(),
    }
}

impl Config {
    pub fn from_tree(tree: Value) -> Result<Config, Diagnostic> {
        let t = tree.as_table().expect("a document is a table");
        for (k, e) in t {
            if !SECTIONS.contains(&k.as_str()) {
                let mut d = Diagnostic::new(format!("unknown section `{k}`"))
                    .at(e.key, "not a section of a config")
                    .help_did_you_mean(k, SECTIONS.iter().copied());
                if !matches!(e.value.kind, Kind::Table(_)) {
                    d = d.note("top-level keys belong in a section, e.g. [run] seed = 1");
                }
                return Err(d.note(format!("sections: {}", SECTIONS.join(", "))));
            }
        }
        let section = |name: &str| t.get(name).map(|e| &e.value);
        let required = |name: &str, example: &str| {
            section(name).ok_or_else(|| {
                Diagnostic::new(format!("missing required section [{name}]"))
                    .at(
                        Loc {
                            end: tree.loc.start,
                            ..tree.loc
                        },
                        "expected in this file",
                    )
                    .note(format!("example:\n[{name}]\n{example}"))
            })
        };
        fn or_default<T: serde::de::DeserializeOwned + Default>(
            v: Option<&Value>,
        ) -> Result<T, Diagnostic> {
            v.map(from_value).transpose().map(Option::unwrap_or_default)
        }
        let run: Run = or_default(section("run"))?;
        let data: Data = from_value(required(
            "data",
            "dataset = \"fashion-mnist\"\nbatch_size = 128",
        )?)?;
        let model_tree = required(
            "model",
            "input = { shape = [1, 28, 28] }\n[[model.layers]]\n...",
        )?;
        let model = model::parse_model(model_tree)?;
        let loss: Loss = from_value(required("loss", "kind = \"cross_entropy\"")?)?;
        let optimizer = parse_optimizer(required("optimizer", "kind = \"sgd\"\nlr = 0.1")?)?;
        let schedule: Schedule = or_default(section("schedule"))?;
        let train: Train = or_default(section("train"))?;
        let log: Log = or_default(section("log"))?;
        let config = Config {
            run,
            data,
            model,
            loss,
            optimizer,
            schedule,
            train,
            log,
            tree: tree.clone(),
        };
        config.check_semantics()?;
        Ok(config)
    }

    /// The location of the value at a dotted path, or of its nearest existing ancestor.
    pub fn loc(&self, path: &[&str]) -> Loc {
        let mut v = &self.tree;
        for p in path {
            match v.get(p) {
                Some(next) => v = next,
                None => break,
            }
        }
        v.loc
    }

    /// Checks that need more than one key: schedule options per kind, label smoothing only
    /// for cross entropy, `save_every`'s format.
    fn check_semantics(&self) -> Result<(), Diagnostic> {
        let at = |path: &[&str]| self.loc(path);
        let s = &self.schedule;
        let need = |ok: bool, key: &str| -> Result<(), Diagnostic> {
            if ok {
                return Ok(());
            }
            Err(Diagnostic::new(format!(
                "schedule kind \"{}\" needs `{key}`",
                kind_name(s.kind)
            ))
            .at(
                at(&["schedule", "kind"]),
                format!("add `{key}` to [schedule]"),
            ))
        };
        match s.kind {
            ScheduleKind::Step => need(s.step_size.is_some(), "step_size")?,
            ScheduleKind::Multistep => need(s.milestones.is_some(), "milestones")?,
            _ => {}
        }
        let allowed: &[&str] = match s.kind {
            ScheduleKind::Constant => &[],
            ScheduleKind::Step => &["step_size", "gamma"],
            ScheduleKind::Multistep => &["milestones", "gamma"],
            ScheduleKind::Cosine => &["min_lr"],
            ScheduleKind::Onecycle => &["max_lr", "pct_start"],
        };
        let per_kind = [
            "step_size",
            "milestones",
            "gamma",
            "min_lr",
            "max_lr",
            "pct_start",
        ];
        if let Some(t) = self.tree.get("schedule").and_then(Value::as_table) {
            for (k, e) in t {
                if per_kind.contains(&k.as_str()) && !allowed.contains(&k.as_str()) {
                    return Err(Diagnostic::new(format!(
                        "`{k}` does not apply to schedule kind \"{}\"",
                        kind_name(s.kind)
                    ))
                    .at(e.key, "not used by this schedule")
                    .also(at(&["schedule", "kind"]), "kind chosen here"));
                }
            }
        }
        if self.loss.kind == LossKind::Mse && self.loss.label_smoothing.0 > 0.0 {
            return Err(
                Diagnostic::new("`label_smoothing` applies only to cross_entropy")
                    .at(at(&["loss", "label_smoothing"]), "remove it for mse"),
            );
        }
        if parse_every(&self.train.save_every).is_none() {
            return Err(Diagnostic::new(format!(
                "cannot read save_every = \"{}\"",
                self.train.save_every
            ))
            .at(
                at(&["train", "save_every"]),
                "expected \"N epoch(s)\" or \"N step(s)\"",
            )
            .note("examples: \"1 epoch\", \"500 steps\""));
        }
        Ok(())
    }
}

fn kind_name(k: ScheduleKind) -> String {
    serde_json::to_value(k)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default()
}

/// "3 epochs" / "500 steps" → (count, is_epochs).
pub fn parse_every(s: &str) -> Option<(u64, bool)> {
    let mut parts = s.split_whitespace();
    let n: u64 = parts.next()?.parse().ok().filter(|&n| n > 0)?;
    let unit = parts.next()?;
    if parts.next().is_some() {
        return None;
    }
    match unit {
        "epoch" | "epochs" => Some((n, true)),
        "step" | "steps" => Some((n, false)),
        _ => None,
    }
}

pub const OPTIMIZERS: &[&str] = &["sgd", "adam", "adamw"];

/// `[optimizer]` is read into the struct of its `kind`, so a key of another kind is an error.
fn parse_optimizer(v: &Value) -> Result<Optimizer, Diagnostic> {
    let kind = match v.get("kind") {
        Some(k) => k,
        None => {
            return Err(
                Diagnostic::new("missing required key `kind` in [optimizer]")
                    .at(v.loc, "say which optimizer")
                    .note(format!("one of: {}", OPTIMIZERS.join(", "))),
            );
        }
    };
    match kind.as_str() {
        Some("sgd") => Ok(Optimizer::Sgd(from_value(v)?)),
        Some("adam") => Ok(Optimizer::Adam(from_value(v)?)),
        Some("adamw") => Ok(Optimizer::Adamw(from_value(v)?)),
        Some(other) => Err(Diagnostic::new(format!("unknown optimizer \"{other}\""))
            .at(kind.loc, "not an optimizer")
            .help_did_you_mean(other, OPTIMIZERS.iter().copied())
            .note(format!("one of: {}", OPTIMIZERS.join(", ")))),
        None => Err(Diagnostic::new("`kind` must be a string")
            .at(kind.loc, format!("found {}", kind.describe()))),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_every;

    #[test]
    fn every_units() {
        assert_eq!(parse_every("1 epoch"), Some((1, true)));
        assert_eq!(parse_every("500 steps"), Some((500, false)));
        assert_eq!(parse_every("0 steps"), None);
        assert_eq!(parse_every("fortnightly"), None);
    }
}

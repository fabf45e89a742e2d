//! Reading a config: TOML files (with `extends`) and `--set` overrides become one located
//! tree, then typed sections. The only module that knows TOML spans; it builds no graph nodes.

pub mod de;
pub mod model;
pub mod optimizer;
pub mod sections;
mod syntax;
pub mod tree;
pub mod values;

use std::path::{Path, PathBuf};

pub use model::ModelDecl;
pub use optimizer::Optimizer;
pub use sections::*;

use crate::diag::{Diagnostic, Errors, Loc, Sources};
use de::from_value_in;
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

impl Config {
    /// `config.resolved.toml`: every section with its defaults filled in, after `extends` and
    /// `--set` (and any change made in code to the typed sections), the model as written.
    /// Loading it gives back this config.
    pub fn resolved_toml(&self) -> Result<String, String> {
        fn section<T: serde::Serialize>(name: &str, v: &T) -> Result<toml::Value, String> {
            toml::Value::try_from(v).map_err(|e| format!("[{name}] cannot be written as TOML: {e}"))
        }
        let mut t = toml::Table::new();
        t.insert("run".into(), section("run", &self.run)?);
        t.insert("data".into(), section("data", &self.data)?);
        if let Some(model) = self.tree.get("model") {
            t.insert("model".into(), model.to_toml());
        }
        t.insert("loss".into(), section("loss", &self.loss)?);
        t.insert("optimizer".into(), section("optimizer", &self.optimizer)?);
        let mut schedule = section("schedule", &self.schedule)?;
        if let toml::Value::Table(t) = &mut schedule {
            let kind = self.schedule.kind;
            t.retain(|k, _| !ScheduleKind::KIND_KEYS.contains(&k) || kind.keys().contains(&k));
        }
        t.insert("schedule".into(), schedule);
        t.insert("train".into(), section("train", &self.train)?);
        t.insert("log".into(), section("log", &self.log)?);
        toml::to_string(&t).map_err(|e| format!("the resolved config cannot be written: {e}"))
    }
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
        tree::set_path(&mut tree, sources, s, i, SECTIONS)?;
    }
    Ok(tree)
}

/// One file of an `extends` chain: who it is and which `extends` line read it.
struct Link {
    canonical: PathBuf,
    name: String,
    from: Option<Loc>,
}

/// A config file larger than this is refused unread: a model is a page of TOML (blocks and
/// `repeat` keep even ResNet-152 short), and parsing costs memory in proportion to the text,
/// far more for text full of syntax errors.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// The longest `extends` chain (the config itself included), far beyond any real layering.
pub const MAX_EXTENDS_DEPTH: usize = 64;

/// How many of the `extends` lines that led to a file a diagnostic inside it shows.
const EXTENDS_LABELS: usize = 3;

fn read_with_extends(
    sources: &mut Sources,
    path: &Path,
    from: Option<Loc>,
    chain: &mut Vec<Link>,
) -> Result<Value, Errors> {
    let located = |d: Diagnostic| match from {
        Some(loc) => d.at(loc, "extended here"),
        None => d,
    };
    if chain.len() >= MAX_EXTENDS_DEPTH {
        let names: Vec<String> = chain
            .iter()
            .map(|l| l.name.clone())
            .chain([path.display().to_string()])
            .collect();
        return Err(located(Diagnostic::new(format!(
            "`extends` chain is more than {MAX_EXTENDS_DEPTH} files deep"
        )))
        .note(format!("chain: {}", crate::diag::chain(&names)))
        .note("help: extend a shorter chain; a config rarely needs more than two levels")
        .into());
    }
    let text = read_config_file(path).map_err(|reason| {
        located(Diagnostic::new(format!(
            "cannot read config file {}: {reason}",
            path.display()
        )))
    })?;
    let text = String::from_utf8(text).map_err(|e| {
        Diagnostic::new(format!(
            "{} is not UTF-8 text (bad byte at offset {})",
            path.display(),
            e.utf8_error().valid_up_to()
        ))
    })?;
    let canonical = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    if let Some(pos) = chain.iter().position(|l| l.canonical == canonical) {
        let cycle: Vec<String> = chain[pos..]
            .iter()
            .map(|l| l.name.clone())
            .chain([path.display().to_string()])
            .collect();
        let mut d = Diagnostic::new("`extends` forms a cycle");
        if let Some(loc) = from {
            d = d.at(loc, "this file is already being extended");
        }
        // The other links of the cycle, so each file's `extends` line is shown (the first few).
        for l in chain[pos + 1..].iter().take(EXTENDS_LABELS) {
            if let Some(loc) = l.from {
                d = d.also(loc, format!("extends {}", l.name));
            }
        }
        return Err(d
            .note(format!("cycle: {}", crate::diag::chain(&cycle)))
            .note("help: remove one of these `extends` lines")
            .into());
    }
    chain.push(Link {
        canonical,
        name: path.display().to_string(),
        from,
    });
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
            let from = e.value.loc;
            // An error inside the base file also shows the line that pulled it in.
            let mut base =
                read_with_extends(sources, &base_path, Some(from), chain).map_err(|mut es| {
                    for d in &mut es.0 {
                        // The innermost few: a chain 64 files deep would fill the screen.
                        let shown = d.labels.iter().filter(|l| l.text == EXTENDED_HERE).count();
                        if shown < EXTENDS_LABELS && d.labels.iter().all(|l| l.loc != from) {
                            // Primary when the error has no location of its own (bad UTF-8).
                            d.labels.push(crate::diag::Label {
                                loc: from,
                                text: EXTENDED_HERE.into(),
                                primary: d.labels.is_empty(),
                            });
                        }
                    }
                    es
                })?;
            tree::merge(&mut base, value);
            Ok(base)
        }
    };
    chain.pop();
    result
}

const EXTENDED_HERE: &str = "in the file extended here";

/// The bytes of a config file, read only up to [`MAX_CONFIG_BYTES`] (a FIFO or /dev/zero
/// included), or why not.
fn read_config_file(path: &Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| io_reason(&e))?;
    let mut bytes = Vec::new();
    file.take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| io_reason(&e))?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        let size = std::fs::metadata(path)
            .ok()
            .filter(|m| m.is_file())
            .map_or_else(String::new, |m| {
                format!(" {},", crate::config::values::human(m.len()))
            });
        return Err(format!(
            "it is{size} larger than the {} a config may be (is it the right file?)",
            crate::config::values::human(MAX_CONFIG_BYTES)
        ));
    }
    Ok(bytes)
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
            if SECTIONS.contains(&k.as_str()) {
                continue;
            }
            if matches!(e.value.kind, Kind::Table(_)) {
                return Err(tree::unknown_section(k, e.key, SECTIONS));
            }
            // A key above the first [section] header: usually a key of a section written
            // before its header, or a misspelled `extends`.
            let d = Diagnostic::new(format!("key `{k}` is outside any section"))
                .at(e.key, "not inside a [section]");
            let owners = sections_with_key(k);
            return Err(if k == "extends" {
                d.note("`extends` is read from a config file before any --set applies")
            } else if owners.is_empty() {
                d.help_did_you_mean(k, SECTIONS.iter().copied().chain(["extends"]))
                    .note(format!("sections: {}", SECTIONS.join(", ")))
            } else {
                let full: Vec<String> = owners.iter().map(|o| format!("`{o}.{k}`")).collect();
                d.note(format!(
                    "help: `{k}` is a key of [{}] ({}): put it below that section's header",
                    owners.join("] or ["),
                    full.join(", ")
                ))
            });
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
            t: &tree::Table,
            name: &str,
        ) -> Result<T, Diagnostic> {
            t.get(name)
                .map(|e| from_value_in(&e.value, &format!("[{name}]")))
                .transpose()
                .map(Option::unwrap_or_default)
        }
        let run: Run = or_default(t, "run")?;
        let data: Data = from_value_in(
            required("data", "dataset = \"fashion-mnist\"\nbatch_size = 128")?,
            "[data]",
        )?;
        let model_tree = required(
            "model",
            "input = { shape = [1, 28, 28] }\n[[model.layers]]\n...",
        )?;
        let model = model::parse_model(model_tree)?;
        let loss: Loss = from_value_in(required("loss", "kind = \"cross_entropy\"")?, "[loss]")?;
        let optimizer = optimizer::parse(required("optimizer", "kind = \"sgd\"\nlr = 0.1")?)?;
        let schedule: Schedule = or_default(t, "schedule")?;
        let train: Train = or_default(t, "train")?;
        let log: Log = or_default(t, "log")?;
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

    /// Checks `[optimizer] no_decay` against the model's trainable parameter names (known
    /// once the model is built): each pattern must match one, or it is an error at it.
    pub fn check_param_groups(&self, names: &[&str]) -> Result<(), Diagnostic> {
        let list = self.tree.get("optimizer").and_then(|o| o.get("no_decay"));
        self.optimizer
            .check_groups(names, |i| match list.map(|v| &v.kind) {
                Some(Kind::Array(items)) if i < items.len() => items[i].loc,
                _ => self.loc(&["optimizer", "no_decay"]),
            })
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
        if s.milestones.as_ref().is_some_and(Vec::is_empty) {
            return Err(Diagnostic::new("`milestones` is empty")
                .at(at(&["schedule", "milestones"]), "for example [30, 60, 90]"));
        }
        // Steps are epochs × steps per epoch: bounded like every other count, so that no
        // command accepts a value `fit` cannot compute with.
        if s.warmup_epochs.0 > values::MAX_INT as f64 {
            return Err(Diagnostic::new(format!(
                "`warmup_epochs` is too large: at most {} epochs",
                values::MAX_INT
            ))
            .at(at(&["schedule", "warmup_epochs"]), "too large"));
        }
        if s.warmup_steps.is_some() && s.warmup_epochs.0 > 0.0 {
            return Err(
                Diagnostic::new("`warmup_steps` and `warmup_epochs` are both set")
                    .at(at(&["schedule", "warmup_steps"]), "warmup counted in steps")
                    .also(at(&["schedule", "warmup_epochs"]), "and in epochs")
                    .note("keep one of them (`warmup_epochs = 0` turns the epoch count off)"),
            );
        }
        let lr = self.optimizer.lr();
        if let (ScheduleKind::Onecycle, Some(max_lr)) = (s.kind, s.max_lr)
            && max_lr.0 < lr
        {
            return Err(Diagnostic::new(format!(
                "onecycle `max_lr` = {} is below [optimizer] lr = {}",
                tree::short_float(max_lr.0),
                tree::short_float(lr)
            ))
            .at(at(&["schedule", "max_lr"]), "the peak learning rate")
            .also(at(&["optimizer", "lr"]), "the optimizer's lr")
            .note("lr is the peak unless max_lr is given; max_lr must be at least lr"));
        }
        let (allowed, per_kind) = (s.kind.keys(), ScheduleKind::KIND_KEYS);
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
        if self.loss.kind == LossKind::Mse && self.loss.ignore_index.is_some() {
            return Err(
                Diagnostic::new("`ignore_index` applies only to cross_entropy")
                    .at(at(&["loss", "ignore_index"]), "remove it for mse"),
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
        self.optimizer.check(|key| at(&["optimizer", key]))?;
        if let Some(m) = &self.schedule.milestones
            && m.windows(2).any(|w| w[0].0 >= w[1].0)
        {
            return Err(Diagnostic::new("`milestones` must be increasing epochs")
                .at(at(&["schedule", "milestones"]), "for example [30, 60, 90]"));
        }
        self.check_data()
    }

    /// The data section against the model's input: paths, channels, crop sizes, dtype.
    fn check_data(&self) -> Result<(), Diagnostic> {
        let at = |path: &[&str]| self.loc(path);
        let d = &self.data;
        if matches!(
            d.dataset,
            Dataset::Idx | Dataset::ImageFolder | Dataset::Text
        ) && d.path.is_none()
        {
            return Err(Diagnostic::new("this dataset format needs `path`")
                .at(at(&["data", "dataset"]), "add path = \"...\" to [data]"));
        }
        self.check_text()?;
        let input = &self.model.input;
        if d.dataset.known_layout().is_some() && input.dtype != crate::tensor::DType::F32 {
            return Err(Diagnostic::new("image datasets give f32 samples")
                .at(input.loc, "remove dtype = \"i32\"")
                .also(at(&["data", "dataset"]), "dataset chosen here"));
        }
        self.check_sizes()?;
        let image =
            (input.shape.len() == 3).then(|| (input.shape[0], input.shape[1], input.shape[2]));
        if let Some(n) = &d.normalize {
            let channels = image.map(|(c, _, _)| c);
            if n.mean.len() != n.std.len() || channels.is_some_and(|c| n.mean.len() != c) {
                return Err(Diagnostic::new(format!(
                    "`normalize` needs one mean and one std per channel: {} channels, {} means, {} stds",
                    channels.map_or("?".into(), |c| c.to_string()),
                    n.mean.len(),
                    n.std.len()
                ))
                .at(at(&["data", "normalize"]), "here")
                .also(input.loc, "the model input"));
            }
        }
        for a in &d.augment {
            let problem = match (a, image) {
                (_, None) => {
                    Some("augmentation needs image samples [channels, height, width]".to_string())
                }
                (Augment::RandomCrop { size, padding }, Some((_, h, w)))
                    if size.0 > h.min(w) + 2 * padding.0 =>
                {
                    Some(format!(
                        "random_crop of {} does not fit a {h}x{w} sample padded by {}",
                        size.0, padding.0
                    ))
                }
                _ => None,
            };
            if let Some(p) = problem {
                return Err(Diagnostic::new(p)
                    .at(at(&["data", "augment"]), "here")
                    .also(input.loc, "the model input"));
            }
        }
        Ok(())
    }

    /// `text` data: its own keys (`tokenizer`, `block_size`, only there), an i32 input of
    /// `[block_size]` ids, a held-out tail (`val_split`), no image keys.
    fn check_text(&self) -> Result<(), Diagnostic> {
        let at = |path: &[&str]| self.loc(path);
        let d = &self.data;
        let dataset = at(&["data", "dataset"]);
        if d.dataset != Dataset::Text {
            let set = [
                ("tokenizer", d.tokenizer.is_some()),
                ("block_size", d.block_size.is_some()),
            ];
            if let Some((key, _)) = set.iter().find(|(_, on)| *on) {
                return Err(
                    Diagnostic::new(format!("`{key}` applies only to dataset = \"text\""))
                        .at(at(&["data", key]), "remove it")
                        .also(dataset, "dataset chosen here"),
                );
            }
            return Ok(());
        }
        let image_keys = [
            ("augment", !d.augment.is_empty()),
            ("normalize", d.normalize.is_some()),
            ("classes", d.classes.is_some()),
            ("samples", d.samples.is_some()),
        ];
        if let Some((key, _)) = image_keys.iter().find(|(_, on)| *on) {
            let why = match *key {
                "classes" => "the vocabulary, read from the text, gives the classes",
                _ => "text samples are token ids",
            };
            return Err(
                Diagnostic::new(format!("`{key}` does not apply to dataset = \"text\""))
                    .at(at(&["data", key]), "remove it")
                    .also(dataset, "dataset chosen here")
                    .note(why),
            );
        }
        let Some(block) = d.block_size else {
            return Err(Diagnostic::new("dataset = \"text\" needs `block_size`")
                .at(dataset, "add block_size = <tokens per window> to [data]")
                .note("the model input is then { shape = [block_size], dtype = \"i32\" }"));
        };
        let input = &self.model.input;
        if input.shape != [block.0] || input.dtype != crate::tensor::DType::I32 {
            let shape = crate::tensor::fmt_shape(&input.shape);
            return Err(Diagnostic::new(format!(
                "text windows are {} i32 token ids, but the model input is {shape} {}",
                block.0,
                input.dtype.name()
            ))
            .at(
                input.loc,
                format!("expected {{ shape = [{}], dtype = \"i32\" }}", block.0),
            )
            .also(at(&["data", "block_size"]), "the window length"));
        }
        if d.val_split.0 == 0.0 {
            return Err(Diagnostic::new(
                "text data has no test split: set `val_split` to hold out the end of the text",
            )
            .at(dataset, "add val_split = 0.1 (the last 10%) to [data]"));
        }
        Ok(())
    }

    /// Sizes that depend on the model's input: a batch (training or evaluation) must fit one
    /// tensor, synthetic data must fit its store. Checked here, at the key, so `check` and
    /// `plan` refuse what `fit` or `eval` would.
    fn check_sizes(&self) -> Result<(), Diagnostic> {
        let at = |path: &[&str]| self.loc(path);
        let d = &self.data;
        let input = &self.model.input;
        let sample = input
            .shape
            .iter()
            .try_fold(1usize, |n, &x| n.checked_mul(x))
            .unwrap_or(usize::MAX);
        let shape = crate::tensor::fmt_shape(&input.shape);
        let batches = [
            ("batch_size", Some(d.batch_size)),
            ("eval_batch_size", d.eval_batch_size),
        ];
        for (key, batch) in batches {
            let Some(batch) = batch else { continue };
            if batch
                .0
                .checked_mul(sample)
                .is_none_or(|n| n > crate::tensor::MAX_ELEMENTS)
            {
                return Err(Diagnostic::new(format!(
                    "`{key}` is too large: a batch of {} samples of {shape} is more than the \
                     2^36 elements a tensor may hold",
                    batch.0
                ))
                .at(at(&["data", key]), "too large for this sample shape")
                .also(input.loc, "the sample shape"));
            }
        }
        if d.dataset == Dataset::Synthetic
            && let Some(samples) = d.samples
        {
            // Train and test samples, or a prototype per class when there are more classes.
            let classes = d.classes.map_or(10, |c| c.0);
            let rows = (samples.0 + samples.0.div_ceil(4)).max(classes);
            if rows
                .checked_mul(sample)
                .is_none_or(|n| n > values::MAX_SYNTHETIC_ELEMENTS)
            {
                return Err(Diagnostic::new(format!(
                    "`samples` is too large: {} synthetic samples of {shape} (and a test split of \
                     a quarter of that) are more than the {} elements synthetic data may hold",
                    samples.0,
                    values::MAX_SYNTHETIC_ELEMENTS
                ))
                .at(at(&["data", "samples"]), "too many for this sample shape")
                .also(input.loc, "the sample shape"));
            }
        }
        Ok(())
    }
}

/// The sections that have a key named `key`.
fn sections_with_key(key: &str) -> Vec<&'static str> {
    use de::field_names;
    let keys: [(&str, &[&str]); 9] = [
        ("run", field_names::<Run>()),
        ("data", field_names::<Data>()),
        ("model", model::MODEL_KEYS),
        ("loss", field_names::<Loss>()),
        ("optimizer", Optimizer::all_keys()[0]),
        ("optimizer", Optimizer::all_keys()[1]),
        ("schedule", field_names::<Schedule>()),
        ("train", field_names::<Train>()),
        ("log", field_names::<Log>()),
    ];
    let mut out: Vec<&str> = Vec::new();
    for (section, fields) in keys {
        if fields.contains(&key) && !out.contains(&section) {
            out.push(section);
        }
    }
    out
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

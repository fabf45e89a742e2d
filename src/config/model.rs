//! The `[model]` section as declarations that keep their locations: the input, reusable blocks
//! and the layer list. Block instances are made here by `$param` substitution on the located
//! tree; the graph builder turns declarations into nodes.

use indexmap::IndexMap;
use serde::Deserialize;

use super::de::{from_value, from_value_in};
use super::tree::{Entry, Kind, Table, Value};
use super::values::Positive;
use crate::diag::{Diagnostic, Loc};
use crate::tensor::DType;

/// A name written in the config, with where it was written.
#[derive(Clone, Debug)]
pub struct Named {
    pub name: String,
    pub loc: Loc,
}

#[derive(Clone, Debug)]
pub struct ModelDecl {
    pub loc: Loc,
    pub input: InputDecl,
    /// The tensor the loss reads (default: the last layer).
    pub output: Option<Named>,
    pub blocks: IndexMap<String, BlockDef>,
    /// Raw layer tables; parsed by [`parse_layer`] once block parameters are substituted.
    pub layers: Vec<Value>,
}

#[derive(Clone, Debug)]
pub struct InputDecl {
    pub shape: Vec<usize>,
    pub dtype: DType,
    pub loc: Loc,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputKeys {
    /// Shape of one sample, without the batch dim: [channels, height, width] for images.
    pub shape: Vec<Positive>,
    #[serde(default)]
    pub dtype: InputDType,
}

#[derive(Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "lowercase")]
pub enum InputDType {
    #[default]
    F32,
    I32,
}

#[derive(Clone, Debug)]
pub struct BlockDef {
    pub name: Named,
    pub loc: Loc,
    pub params: Vec<Named>,
    pub defaults: Table,
    pub body: Vec<Value>,
    pub output: Option<Named>,
    pub shortcut: Option<ShortcutDecl>,
    /// A layer applied after the residual sum (`after = "relu"`).
    pub after: Option<Value>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShortcutKind {
    Identity,
    Projection,
    ProjectionIfShapeChanges,
}

#[derive(Clone, Debug)]
pub struct ShortcutDecl {
    pub kind: ShortcutKind,
    /// Name of the projection sub-layers: `<name>.0` (1x1 conv), `<name>.1` (batchnorm).
    pub name: String,
    pub loc: Loc,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShortcutKeys {
    pub kind: ShortcutKind,
    #[serde(default = "downsample")]
    pub name: String,
}

fn downsample() -> String {
    "downsample".into()
}

/// The keys of `[model]`, of a block definition, of a block use and common to every layer:
/// the lists the reference documentation is checked against.
pub const MODEL_KEYS: &[&str] = &["input", "output", "blocks", "layers"];
pub const BLOCK_KEYS: &[&str] = &["params", "defaults", "body", "output", "shortcut", "after"];
pub const LAYER_KEYS: &[&str] = &["name", "op", "inputs"];
pub const BLOCK_USE_KEYS: &[&str] = &["name", "block", "with", "first", "repeat", "inputs"];

/// One layer table, its op (`Op`, what the caller's op parser made of `op` and the
/// attributes) or its block use.
#[derive(Clone, Debug)]
pub struct LayerDecl<Op> {
    pub name: Option<Named>,
    pub inputs: Option<Vec<Named>>,
    /// The whole layer table.
    pub loc: Loc,
    pub what: What<Op>,
}

#[derive(Clone, Debug)]
pub enum What<Op> {
    /// Boxed: an op's attributes are much larger than a block use.
    Op {
        op: Box<Op>,
        op_loc: Loc,
        /// Where each attribute's value is, for errors about one attribute.
        attr_locs: Vec<(String, Loc)>,
    },
    Block(BlockUse),
}

#[derive(Clone, Debug)]
pub struct BlockUse {
    pub block: Named,
    pub with: Table,
    pub first: Table,
    /// Some: instances are numbered `<name>.0`, `<name>.1`, ...
    pub repeat: Option<(usize, Loc)>,
}

fn table<'a>(v: &'a Value, what: &str) -> Result<&'a Table, Diagnostic> {
    v.as_table().ok_or_else(|| {
        Diagnostic::new(format!("{what} must be a table"))
            .at(v.loc, format!("found {}", v.describe()))
    })
}

fn check_keys(t: &Table, allowed: &[&str], what: &str) -> Result<(), Diagnostic> {
    for (k, e) in t {
        if !allowed.contains(&k.as_str()) {
            return Err(Diagnostic::new(format!("unknown key `{k}` in {what}"))
                .at(e.key, "not a known key here")
                .help_did_you_mean(k, allowed.iter().copied())
                .note(format!("expected one of: {}", quoted(allowed))));
        }
    }
    Ok(())
}

/// `a`, `b`, `c`: a list of names for a message.
pub fn quoted(words: &[&str]) -> String {
    words
        .iter()
        .map(|w| format!("`{w}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn named(v: &Value, what: &str) -> Result<Named, Diagnostic> {
    match v.as_str() {
        Some(s) => Ok(Named {
            name: s.to_string(),
            loc: v.loc,
        }),
        None => Err(Diagnostic::new(format!("{what} must be a string"))
            .at(v.loc, format!("found {}", v.describe()))),
    }
}

fn names(v: &Value, what: &str) -> Result<Vec<Named>, Diagnostic> {
    match &v.kind {
        Kind::Str(_) => Ok(vec![named(v, what)?]),
        Kind::Array(items) => items.iter().map(|i| named(i, what)).collect(),
        _ => Err(
            Diagnostic::new(format!("{what} must be a string or an array of strings"))
                .at(v.loc, format!("found {}", v.describe())),
        ),
    }
}

fn array<'a>(v: &'a Value, what: &str) -> Result<&'a [Value], Diagnostic> {
    match &v.kind {
        Kind::Array(items) => Ok(items),
        _ => Err(Diagnostic::new(format!("{what} must be an array"))
            .at(v.loc, format!("found {}", v.describe()))),
    }
}

/// Reads `[model]`. Layers stay raw until the builder parses them (after substitution).
pub fn parse_model(v: &Value) -> Result<ModelDecl, Diagnostic> {
    let t = table(v, "[model]")?;
    check_keys(t, MODEL_KEYS, "[model]")?;
    let input = match t.get("input") {
        Some(e) => {
            let keys: InputKeys = from_value_in(&e.value, "`model.input`")?;
            let dtype = match keys.dtype {
                InputDType::F32 => DType::F32,
                InputDType::I32 => DType::I32,
            };
            InputDecl {
                shape: keys.shape.iter().map(|p| p.0).collect(),
                dtype,
                loc: e.value.loc,
            }
        }
        None => {
            return Err(Diagnostic::new("missing required key `input` in [model]")
                .at(v.loc, "add the shape of one sample here")
                .note("example: input = { shape = [1, 28, 28] }"));
        }
    };
    let output = t
        .get("output")
        .map(|e| named(&e.value, "`output`"))
        .transpose()?;
    let mut blocks = IndexMap::new();
    if let Some(e) = t.get("blocks") {
        for (name, b) in table(&e.value, "`blocks`")? {
            let def = parse_block(
                Named {
                    name: name.clone(),
                    loc: b.key,
                },
                &b.value,
            )?;
            blocks.insert(name.clone(), def);
        }
    }
    let layers = match t.get("layers") {
        Some(e) => array(&e.value, "`layers`")?.to_vec(),
        None => {
            return Err(Diagnostic::new("missing required key `layers` in [model]")
                .at(v.loc, "the model has no layers")
                .note("add layers with [[model.layers]] tables"));
        }
    };
    if layers.is_empty() {
        let e = &t["layers"];
        return Err(Diagnostic::new("the model has no layers").at(e.value.loc, "empty"));
    }
    Ok(ModelDecl {
        loc: v.loc,
        input,
        output,
        blocks,
        layers,
    })
}

fn parse_block(name: Named, v: &Value) -> Result<BlockDef, Diagnostic> {
    let what = format!("block `{}`", name.name);
    let t = table(v, &what)?;
    check_keys(t, BLOCK_KEYS, &what)?;
    let params = t
        .get("params")
        .map(|e| names(&e.value, "`params`"))
        .transpose()?
        .unwrap_or_default();
    for (i, p) in params.iter().enumerate() {
        if params[..i].iter().any(|q| q.name == p.name) {
            return Err(Diagnostic::new(format!(
                "parameter `{}` is listed twice in {what}",
                p.name
            ))
            .at(p.loc, "again here"));
        }
    }
    let defaults = match t.get("defaults") {
        Some(e) => {
            let d = table(&e.value, "`defaults`")?.clone();
            for (k, de) in &d {
                if !params.iter().any(|p| &p.name == k) {
                    return Err(Diagnostic::new(format!(
                        "`defaults` names `{k}`, which is not a parameter of {what}"
                    ))
                    .at(de.key, "not in `params`")
                    .help_did_you_mean(k, params.iter().map(|p| p.name.as_str())));
                }
            }
            d
        }
        None => Table::new(),
    };
    let body = match t.get("body") {
        Some(e) => array(&e.value, "`body`")?.to_vec(),
        None => {
            return Err(
                Diagnostic::new(format!("missing required key `body` in {what}"))
                    .at(name.loc, "defined here"),
            );
        }
    };
    if body.is_empty() {
        return Err(
            Diagnostic::new(format!("{what} has an empty body")).at(t["body"].value.loc, "empty")
        );
    }
    let shortcut = match t.get("shortcut") {
        None => None,
        Some(e) => {
            let v = &e.value;
            let keys: ShortcutKeys = match &v.kind {
                Kind::Str(_) => ShortcutKeys {
                    kind: from_value(v)?,
                    name: downsample(),
                },
                _ => from_value_in(v, "`shortcut`")?,
            };
            Some(ShortcutDecl {
                kind: keys.kind,
                name: keys.name,
                loc: v.loc,
            })
        }
    };
    let output = t
        .get("output")
        .map(|e| named(&e.value, "`output`"))
        .transpose()?;
    let after = t.get("after").map(|e| e.value.clone());
    Ok(BlockDef {
        name,
        loc: v.loc,
        params,
        defaults,
        body,
        output,
        shortcut,
        after,
    })
}

/// Reads one layer table (after substitution): `op` and its attributes, which `parse_op` turns
/// into an op (the config layer does not know the ops), or a block use.
pub fn parse_layer<Op>(
    v: &Value,
    parse_op: &impl Fn(&Named, &Value) -> Result<Op, Diagnostic>,
) -> Result<LayerDecl<Op>, Diagnostic> {
    // `after = "relu"` is shorthand for a layer table with just an op.
    if let Kind::Str(s) = &v.kind {
        let mut t = Table::new();
        t.insert(
            "op".into(),
            Entry {
                key: v.loc,
                value: Value {
                    kind: Kind::Str(s.clone()),
                    loc: v.loc,
                },
            },
        );
        return parse_layer(
            &Value {
                kind: Kind::Table(t),
                loc: v.loc,
            },
            parse_op,
        );
    }
    let t = table(v, "a layer")?;
    let name = t
        .get("name")
        .map(|e| named(&e.value, "`name`"))
        .transpose()?;
    if let Some(n) = &name {
        check_layer_name(n)?;
    }
    let inputs = t
        .get("inputs")
        .map(|e| names(&e.value, "`inputs`"))
        .transpose()?;
    let what = match (t.get("op"), t.get("block")) {
        (Some(op), Some(block)) => {
            return Err(
                Diagnostic::new("a layer has either `op` or `block`, not both")
                    .at(block.key, "remove this")
                    .also(op.key, "or this"),
            );
        }
        (Some(op), None) => {
            let op_name = named(&op.value, "`op`")?;
            let mut attrs = Table::new();
            let mut attr_locs = Vec::new();
            for (k, e) in t {
                if !LAYER_KEYS.contains(&k.as_str()) {
                    attr_locs.push((k.clone(), e.value.loc));
                    attrs.insert(k.clone(), e.clone());
                }
            }
            let attrs = Value {
                kind: Kind::Table(attrs),
                loc: v.loc,
            };
            let op = Box::new(parse_op(&op_name, &attrs)?);
            What::Op {
                op,
                op_loc: op_name.loc,
                attr_locs,
            }
        }
        (None, Some(block)) => {
            check_keys(t, BLOCK_USE_KEYS, "a block use")?;
            let block = named(&block.value, "`block`")?;
            let with = t
                .get("with")
                .map(|e| table(&e.value, "`with`").cloned())
                .transpose()?
                .unwrap_or_default();
            let first = t
                .get("first")
                .map(|e| table(&e.value, "`first`").cloned())
                .transpose()?
                .unwrap_or_default();
            let repeat = match t.get("repeat") {
                Some(e) => Some((from_value::<Positive>(&e.value)?.0, e.value.loc)),
                None => None,
            };
            What::Block(BlockUse {
                block,
                with,
                first,
                repeat,
            })
        }
        (None, None) => {
            return Err(Diagnostic::new("a layer needs `op` (or `block`)")
                .at(v.loc, "this layer has neither")
                .help_did_you_mean_keys(t)
                .note("example: { op = \"relu\" }"));
        }
    };
    Ok(LayerDecl {
        name,
        inputs,
        loc: v.loc,
        what,
    })
}

trait HelpKeys {
    fn help_did_you_mean_keys(self, t: &Table) -> Self;
}

impl HelpKeys for Diagnostic {
    /// When `op` is missing, a misspelled `op`/`block` key is the likely cause.
    fn help_did_you_mean_keys(self, t: &Table) -> Diagnostic {
        for k in t.keys() {
            if let Some(s) = crate::diag::did_you_mean(k, ["op", "block"]) {
                return self.note(format!("help: `{k}` looks like a misspelling of `{s}`"));
            }
        }
        self
    }
}

/// Letters, digits, `_` and `-`, in segments joined by single dots (`transformer.wte`, so that
/// parameter names can equal a PyTorch model's nested module names); never `input`.
fn check_layer_name(n: &Named) -> Result<(), Diagnostic> {
    let segment = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    };
    let ok = n.name.split('.').all(segment) && n.name != "input";
    if ok {
        Ok(())
    } else {
        Err(Diagnostic::new(format!("bad layer name \"{}\"", n.name))
            .at(
                n.loc,
                "names use letters, digits, `_` and `-`, in parts joined by single dots",
            )
            .note("`input` is reserved for the input of the model or block"))
    }
}

impl BlockDef {
    /// The arguments of instance `index` of a use: defaults, then `with`, then `first` for
    /// instance 0. Every name must be a parameter; every parameter must get a value.
    pub fn arguments(
        &self,
        u: &BlockUse,
        index: usize,
    ) -> Result<IndexMap<String, Value>, Diagnostic> {
        let mut args: IndexMap<String, Value> = IndexMap::new();
        let sources: [(&Table, bool); 3] = [
            (&self.defaults, true),
            (&u.with, true),
            (&u.first, index == 0),
        ];
        for (t, applies) in sources {
            for (k, e) in t {
                if !self.params.iter().any(|p| &p.name == k) {
                    return Err(Diagnostic::new(format!(
                        "block `{}` has no parameter `{k}`",
                        self.name.name
                    ))
                    .at(e.key, "not a parameter of this block")
                    .also(self.name.loc, "block defined here")
                    .help_did_you_mean(k, self.params.iter().map(|p| p.name.as_str()))
                    .note(format!(
                        "its parameters: {}",
                        quoted(
                            &self
                                .params
                                .iter()
                                .map(|p| p.name.as_str())
                                .collect::<Vec<_>>()
                        )
                    )));
                }
                if applies {
                    args.insert(k.clone(), e.value.clone());
                }
            }
        }
        for p in &self.params {
            if !args.contains_key(&p.name) {
                return Err(Diagnostic::new(format!(
                    "block `{}` needs a value for parameter `{}`",
                    self.name.name, p.name
                ))
                .at(u.block.loc, format!("add `{}` to `with`", p.name))
                .also(p.loc, "parameter declared here"));
            }
        }
        Ok(args)
    }

    /// A copy of `v` with every `"$param"` string replaced by its argument.
    pub fn substitute(
        &self,
        v: &Value,
        args: &IndexMap<String, Value>,
    ) -> Result<Value, Diagnostic> {
        Ok(match &v.kind {
            Kind::Str(s) if s.starts_with('$') => {
                let p = &s[1..];
                match args.get(p) {
                    Some(a) => a.clone(),
                    None => {
                        return Err(Diagnostic::new(format!(
                            "undefined parameter `${p}` in block `{}`",
                            self.name.name
                        ))
                        .at(v.loc, "not a parameter of this block")
                        .also(self.name.loc, "block defined here")
                        .help_did_you_mean(p, self.params.iter().map(|p| p.name.as_str()))
                        .note("declare it in the block's `params` list"));
                    }
                }
            }
            Kind::Array(items) => Value {
                kind: Kind::Array(
                    items
                        .iter()
                        .map(|i| self.substitute(i, args))
                        .collect::<Result<_, _>>()?,
                ),
                loc: v.loc,
            },
            Kind::Table(t) => {
                let mut out = Table::new();
                for (k, e) in t {
                    out.insert(
                        k.clone(),
                        Entry {
                            key: e.key,
                            value: self.substitute(&e.value, args)?,
                        },
                    );
                }
                Value {
                    kind: Kind::Table(out),
                    loc: v.loc,
                }
            }
            _ => v.clone(),
        })
    }
}

/// A `"$param"` outside any block is an error: there is nothing to substitute.
pub fn reject_params(v: &Value) -> Result<(), Diagnostic> {
    match &v.kind {
        Kind::Str(s) if s.starts_with('$') => {
            Err(Diagnostic::new(format!("`{s}` is used outside a block"))
                .at(v.loc, "block parameters exist only inside a block's body"))
        }
        Kind::Array(items) => items.iter().try_for_each(reject_params),
        Kind::Table(t) => t.values().try_for_each(|e| reject_params(&e.value)),
        _ => Ok(()),
    }
}
